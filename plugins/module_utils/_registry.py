# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The registry: one JSON state file holding templates, their copies on pools, certificates and their per-host
status. It never touches image bytes.

The document (``schema_version`` 1), written with sorted keys and two-space indentation so that people can read
it and ``diff`` two versions::

    {
      "certificates": {"<alias>": {"alias", "pem", "fingerprint_sha256", ..., "hosts": {"<host>": {"status",
                                   "details", "updated_at"}}, "created_at", "updated_at"}},
      "claims": [{"template_id", "pool", "host", "shared", "token", "holder", "claimed_at", "expires_at"}],
      "copies": [{"template_id", "template_name", "host", "pool", "shared", "install_path", "size",
                  "virtual_size", "checksum", "format", "state", "download_state", "downloaded_at"}],
      "schema_version": 1,
      "templates": {"<name>": {"id", "name", "url", "format", "type", "checksum", "http_headers", "size", ...}}
    }

Templates are keyed by name (the idempotence key of the ``template`` module), certificates by alias. Copies are
a list sorted by (template_id, pool, host): a copy on a host-local pool is identified by (template, host, pool);
a copy on a shared pool (``shared: true``) by (template, pool), its ``host`` being the host that downloaded it.
Claims mark a (template, pool) download in progress so that concurrent deployments download once.

Writers::

    with Registry(path).transaction() as doc:      # exclusive lock, read, yield, atomic write if doc changed
        upsert_template(doc, record)

Readers: ``Registry(path).read()`` (no lock: every write is an atomic rename, a reader sees the old or the new
file, never half of one).

Every write: ``fcntl.flock`` on ``<path>.lock`` (a separate file, so the rename never swaps the lock away), read the
current file under the lock, modify, write ``.<name>.tmp.<pid>.<random>`` in the same directory with mode 0600,
fsync it, rename it over the file, fsync the directory. The lock is released by the kernel when a writer dies, and
temporary files left by a killed writer are removed by the next writer. The parent directory is created 0700. A
symbolic link at the path is resolved once (``Registry.path`` is the real path); the lock file is never followed.

HTTP header values are stored (downloads need them), which is why the file is 0600; results and diffs show them as
``MASK`` (see :func:`public_template`).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import glob
import json
import os
import uuid
from typing import Any, Callable, Iterator
from datetime import datetime, timedelta, timezone

from ansible_collections.directdownload.kvm.plugins.module_utils import _fs
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import DirectDownloadError, InvalidInput
from ansible_collections.directdownload.kvm.plugins.module_utils._settings import DEFAULT_REGISTRY_PATH
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import redact_url

SCHEMA_VERSION = 1
MASK = "********"

FILE_MODE = 0o600
DIR_MODE = 0o700

TABLES = {"templates": dict, "copies": list, "certificates": dict, "claims": list}

CERTIFICATE_HOST_STATUSES = ("UPLOADED", "FAILED", "REVOKED", "SKIPPED")

# Registry documents nest 5 levels (certificates -> alias -> hosts -> host -> status); anything much deeper is not a
# registry, and a document nested 100,000 deep would otherwise crash the parser or the writer (RecursionError).
MAX_DEPTH = 64

# Claims older than this are considered abandoned (a deployment killed without releasing its claim).
DEFAULT_CLAIM_TTL = 3 * 3600


class RegistryError(DirectDownloadError):
    """The registry file cannot be used: unreadable, corrupt, newer schema, not writable. Never retryable."""

    retry_here = False
    retry_elsewhere = False


# --------------------------------------------------------------------------------------------------------------
# Paths, time
# --------------------------------------------------------------------------------------------------------------

def registry_argument_spec() -> dict:
    """The ``registry`` option of every registry module; documented once in the doc fragment
    ``directdownload.kvm._registry`` (keep both in step)."""
    return {"registry": dict(type="path", default=DEFAULT_REGISTRY_PATH)}


def default_registry_path() -> str:
    """The documented default, expanded for the user running the module (on the host that runs it)."""
    return os.path.expanduser(DEFAULT_REGISTRY_PATH)


def resolve_path(path: str | None = None) -> str:
    return os.path.abspath(os.path.expanduser(path or DEFAULT_REGISTRY_PATH))


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def timestamp(when: datetime | None = None) -> str:
    """``2025-01-31T12:00:00Z``: second precision, UTC, sortable as text."""
    return (when or utc_now()).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------------------------
# The document
# --------------------------------------------------------------------------------------------------------------

def empty_document() -> dict:
    return {"schema_version": SCHEMA_VERSION, "templates": {}, "copies": [], "certificates": {}, "claims": []}


def serialize(doc: dict) -> str:
    """Stable text: sorted keys, 2-space indent, trailing newline. Copies and claims are kept sorted."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _migrate_v0(doc):
    """Version 0: a document without ``schema_version`` (hand-written, or seeded by an operator from a list).

    Templates may be a list of records with a ``name``; missing tables are added; records get their defaults
    through :func:`normalize`.
    """
    templates = doc.get("templates") or {}
    if isinstance(templates, list):
        by_name = {}
        for record in templates:
            if not isinstance(record, dict) or not record.get("name"):
                raise ValueError("a template in the list has no name")
            by_name[record["name"]] = record
        templates = by_name
    doc["templates"] = templates
    doc["schema_version"] = 1
    return doc


# version found in the file -> function returning the document at the next version
MIGRATIONS = {0: _migrate_v0}


def _copy_sort_key(record):
    return (str(record.get("template_id", "")), str(record.get("pool", "")), str(record.get("host", "")))


def _claim_sort_key(record):
    return (str(record.get("template_id", "")), str(record.get("pool", "")), str(record.get("host", "")))


def normalize(doc: dict) -> dict:
    """Fill missing tables and template defaults, sort the lists. Returns ``doc`` (modified in place)."""
    for table, kind in TABLES.items():
        if doc.get(table) is None:
            doc[table] = kind()
    for name, record in doc["templates"].items():
        record.setdefault("name", name)
        record.setdefault("id", str(uuid.uuid4()))
        record.setdefault("http_headers", {})
    doc["copies"].sort(key=_copy_sort_key)
    doc["claims"].sort(key=_claim_sort_key)
    return doc


def load_document(text: str, path: str = "<registry>") -> dict:
    """Parse, check and migrate a registry document. Raises RegistryError with the reason and the path."""
    if not text.strip():
        raise RegistryError(
            "the registry %s is empty: it was left untouched; restore it from a backup or move it away to start a new "
            "registry" % path, path=path)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise RegistryError(
            "the registry %s is not valid JSON (%s): it was left untouched; restore it from a backup or move it away "
            "to start a new registry" % (path, exc), path=path) from exc
    except RecursionError:
        doc = None  # nested too deep for the parser: the same answer as for a deep document that parses
    if doc is None or _nesting_exceeds(doc, MAX_DEPTH):
        raise RegistryError(
            "the registry %s has an unexpected structure (nested deeper than %d levels): it was left untouched; "
            "restore it from a backup or move it away to start a new registry" % (path, MAX_DEPTH), path=path)
    if not isinstance(doc, dict):
        raise RegistryError("the registry %s must hold a JSON object, found %s: it was left untouched"
                            % (path, type(doc).__name__), path=path)
    version = doc.get("schema_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise RegistryError("the registry %s has an invalid schema_version %r: it was left untouched" % (path, version),
                            path=path)
    if version > SCHEMA_VERSION:
        raise RegistryError(
            "the registry %s has schema_version %d, newer than this collection understands (%d): upgrade the "
            "directdownload.kvm collection; the file was left untouched" % (path, version, SCHEMA_VERSION),
            path=path, schema_version=version)
    try:
        while version < SCHEMA_VERSION:
            doc = MIGRATIONS[version](doc)
            version = doc["schema_version"]
        for table, kind in TABLES.items():
            if doc.get(table) is not None and not isinstance(doc[table], kind):
                raise ValueError("%r must be a JSON %s" % (table, "object" if kind is dict else "array"))
        for name, record in doc.get("templates", {}).items():
            if not isinstance(record, dict):
                raise ValueError("template %r is not a JSON object" % name)
            if not isinstance(record.get("http_headers", {}), (dict, type(None))):
                raise ValueError("the http_headers of template %r are not a JSON object" % name)
        for alias, record in (doc.get("certificates") or {}).items():
            if not isinstance(record, dict) or not isinstance(record.get("hosts", {}), (dict, type(None))):
                raise ValueError("certificate %r is not a JSON object with a hosts object" % alias)
        for table in ("copies", "claims"):
            for record in doc.get(table) or []:
                if not isinstance(record, dict):
                    raise ValueError("an entry of %r is not a JSON object" % table)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RegistryError("the registry %s has an unexpected structure (%s): it was left untouched" % (path, exc),
                            path=path) from exc
    return normalize(doc)


def _nesting_exceeds(value, limit):
    """True when ``value`` nests lists/objects deeper than ``limit`` (iterative: a deep document cannot crash it)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class Registry:
    """The state file at ``path`` (default :data:`DEFAULT_REGISTRY_PATH`).

    A symbolic link at ``path`` (or in its directories) is resolved once, here: reads, the lock and the atomic
    rename all use the real path, so the link is kept and two paths to one file share one lock.
    """

    def __init__(self, path=None):
        self.path = os.path.realpath(resolve_path(path))
        self.lock_path = self.path + ".lock"
        self.directory = os.path.dirname(self.path)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def _read_text(self):
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError as exc:
            raise RegistryError("the registry %s is not UTF-8 text (%s): it was left untouched" % (self.path, exc),
                                path=self.path) from exc
        except OSError as exc:
            raise RegistryError("cannot read the registry %s: %s" % (self.path, exc.strerror or exc),
                                path=self.path) from exc

    def read(self) -> dict:
        """The current document (migrated in memory); an empty document when the file does not exist yet."""
        text = self._read_text()
        if text is None:
            return empty_document()
        return load_document(text, self.path)

    def _ensure_directory(self):
        try:
            os.makedirs(self.directory, mode=DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise RegistryError("cannot create the registry directory %s: %s" % (self.directory, exc.strerror or exc),
                                path=self.path) from exc

    @contextlib.contextmanager
    def _locked(self):
        self._ensure_directory()
        try:
            fd = _fs.open_regular(self.lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise RegistryError("cannot open the registry lock %s: %s" % (self.lock_path, exc.strerror or exc),
                                path=self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _remove_stale_temporaries(self):
        """Under the lock only the lock holder writes a temporary file: any other one was left by a killed writer
        (``_fs.create_temp`` names; ``.<name>.tmp.*`` were the names of earlier releases)."""
        name = os.path.basename(self.path)
        patterns = ("%s.%s%s" % (name, "[0-9a-f]" * _fs.TEMP_RANDOM_HEX, _fs.TEMP_SUFFIX), ".%s.tmp.*" % name)
        for pattern in patterns:
            for leftover in glob.glob(os.path.join(glob.escape(self.directory), pattern)):
                _fs.unlink_if_present(leftover)

    def _write(self, text):
        try:
            _fs.write_atomic(self.path, text.encode("utf-8"), durable=True, mode=FILE_MODE)  # exactly 0600
        except OSError as exc:
            raise RegistryError("cannot write the registry %s: %s" % (self.path, exc.strerror or exc),
                                path=self.path, errno=exc.errno) from exc

    def apply(self, change: Callable[[dict], Any], check_mode: bool = False) -> Any:
        """``change(doc)`` in one transaction, or on a read copy that is never written (``check_mode``: what would
        happen). Returns what ``change`` returns. The one place where check mode meets the registry."""
        if check_mode:
            return change(self.read())
        with self.transaction() as doc:
            return change(doc)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict]:
        """Exclusive read-modify-write. Yields the document; writes it back atomically when the block ends without
        an exception and the document changed (an unchanged document is not rewritten: idempotent runs leave the
        file and its mtime alone). A corrupt file raises RegistryError before the block runs and is never
        overwritten."""
        with self._locked():
            self._remove_stale_temporaries()
            text = self._read_text()
            doc = empty_document() if text is None else load_document(text, self.path)
            # Change detection with the compact C encoder; the indented (pure Python) encoder runs only to write.
            before = _fingerprint(doc) if text is not None else None
            yield doc
            normalize(doc)
            if _fingerprint(doc) != before:
                self._write(serialize(doc))


def _fingerprint(doc):
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------------------------------------------
# Secrets in output
# --------------------------------------------------------------------------------------------------------------

def mask_headers(headers: dict | None, previous: dict | None = None) -> dict | None:
    """Header names with masked values. With ``previous`` (the other side of a diff), a value that differs is
    shown as ``******** (changed)`` so that a diff still tells that a secret changed, without showing it."""
    masked = {}
    for name, value in (headers or {}).items():
        if previous is not None and (name not in previous or previous[name] != value):
            masked[name] = MASK + " (changed)"
        else:
            masked[name] = MASK
    return masked


def public_template(record: dict | None, previous: dict | None = None) -> dict | None:
    """A template record fit for module output and diffs: header values masked, URL credentials and query values
    redacted. ``previous`` is the other side of a diff (see :func:`mask_headers`)."""
    if record is None:
        return None
    shown = copy.deepcopy(record)
    shown["http_headers"] = mask_headers(record.get("http_headers"),
                                         None if previous is None else previous.get("http_headers") or {})
    if shown.get("url"):
        shown["url"] = redact_url(shown["url"])
    for mirror in shown.get("mirrors") or ():
        mirror["url"] = redact_url(mirror["url"])
    return shown


# --------------------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------------------

def get_template(doc: dict, name: str | None = None, template_id: str | None = None) -> dict | None:
    """A template by name, or by id. Returns the stored record (a live reference into ``doc``) or None."""
    templates = doc["templates"]
    if name is not None:
        record = templates.get(name)
        if record is not None and (template_id is None or record.get("id") == template_id):
            return record
        if template_id is None:
            return None
    if template_id is not None:
        for record in templates.values():
            if record.get("id") == template_id:
                return record
    return None


def upsert_template(doc: dict, record: dict, now: datetime | None = None) -> tuple:
    """Insert or replace the template named ``record['name']``.

    The id and ``created_at`` of an existing record are kept; a new record gets a UUID4 unless ``record`` has an
    ``id``. ``updated_at`` is set only when something else changed. Returns ``(before, after)`` copies (before is
    None for a new template)."""
    name = record["name"]
    current = doc["templates"].get(name)
    before = copy.deepcopy(current) if current is not None else None
    stamp = timestamp(now)
    new = copy.deepcopy(record)
    if current is not None:
        new["id"] = current["id"]
        new["created_at"] = current.get("created_at", stamp)
        comparable = {k: v for k, v in current.items() if k != "updated_at"}
        if {k: v for k, v in new.items() if k != "updated_at"} == comparable:
            return before, copy.deepcopy(current)
    else:
        new.setdefault("id", str(uuid.uuid4()))
        new["created_at"] = stamp
    new["updated_at"] = stamp
    new.setdefault("http_headers", {})
    doc["templates"][name] = new
    return before, copy.deepcopy(new)


def remove_template(doc: dict, name: str | None = None, template_id: str | None = None) -> dict | None:
    """Remove a template (its copies and claims are left alone: see :func:`remove_copies_of`). Returns it or None."""
    record = get_template(doc, name=name, template_id=template_id)
    if record is None:
        return None
    del doc["templates"][record["name"]]
    return record


def list_templates(doc: dict, name: str | None = None) -> list:
    return [copy.deepcopy(doc["templates"][key]) for key in sorted(doc["templates"]) if name in (None, key)]


# --------------------------------------------------------------------------------------------------------------
# Copies (template_spool_ref)
# --------------------------------------------------------------------------------------------------------------

def _copy_matches(record, template_id, host, pool):
    if record.get("template_id") != template_id or record.get("pool") != pool:
        return False
    return bool(record.get("shared")) or host is None or record.get("host") == host


def find_copy(doc: dict, template_id: str, host: str, pool: str) -> dict | None:
    """The copy of ``template_id`` on ``pool`` as seen from ``host``: the host's own copy on a host-local pool, or
    the copy on a shared pool whoever downloaded it. ``host=None`` matches any host. Live reference or None."""
    for record in doc["copies"]:
        if _copy_matches(record, template_id, host, pool):
            return record
    return None


def record_copy(doc: dict, record: dict, now: datetime | None = None) -> tuple:
    """Insert or replace a copy; ``record`` needs template_id, host, pool (and usually install_path, size,
    virtual_size, checksum, format, shared). ``downloaded_at`` defaults to now for a new or changed copy; state is
    ``Ready`` and download_state ``DOWNLOADED`` unless given. Returns ``(before, after)``."""
    for key in ("template_id", "host", "pool"):
        if not record.get(key):
            raise InvalidInput("a copy needs %s" % key)
    new = copy.deepcopy(record)
    new["shared"] = bool(new.get("shared"))
    new.setdefault("state", "Ready")
    new.setdefault("download_state", "DOWNLOADED")
    existing = find_copy(doc, new["template_id"], new["host"], new["pool"])
    before = copy.deepcopy(existing) if existing is not None else None
    if existing is not None:
        if "downloaded_at" not in record:
            # The same copy recorded again (an idempotent re-run) keeps its download time.
            if {k: v for k, v in existing.items() if k != "downloaded_at"} == new:
                return before, copy.deepcopy(existing)
            new["downloaded_at"] = timestamp(now)
        elif new == existing:
            return before, copy.deepcopy(existing)
        doc["copies"].remove(existing)
    elif not new.get("downloaded_at"):
        new["downloaded_at"] = timestamp(now)
    doc["copies"].append(new)
    doc["copies"].sort(key=_copy_sort_key)
    return before, copy.deepcopy(new)


def remove_copy(doc: dict, template_id: str, host: str, pool: str) -> dict | None:
    """Remove the copy :func:`find_copy` returns. Returns the removed record or None."""
    record = find_copy(doc, template_id, host, pool)
    if record is not None:
        doc["copies"].remove(record)
    return record


def remove_copies_of(doc: dict, template_id: str) -> list:
    """Remove every copy and claim of a template (unregister with purge). Returns the removed copies."""
    removed = [r for r in doc["copies"] if r.get("template_id") == template_id]
    doc["copies"] = [r for r in doc["copies"] if r.get("template_id") != template_id]
    doc["claims"] = [r for r in doc["claims"] if r.get("template_id") != template_id]
    return removed


def list_copies(doc: dict, template_id: str | None = None, host: str | None = None, pool: str | None = None) -> list:
    """Copies filtered by template id, host (the ``host`` field as recorded) and pool; sorted."""
    return [copy.deepcopy(r) for r in doc["copies"]
            if template_id in (None, r.get("template_id")) and host in (None, r.get("host"))
            and pool in (None, r.get("pool"))]


# --------------------------------------------------------------------------------------------------------------
# Claims: one download per (template, pool) at a time
# --------------------------------------------------------------------------------------------------------------

def _claim_matches(record, template_id, host, pool, shared):
    if record.get("template_id") != template_id or record.get("pool") != pool:
        return False
    return shared or record.get("shared") or record.get("host") == host


def claim_copy(doc: dict, template_id: str, host: str, pool: str, shared: bool = False, holder: str | None = None,
               ttl: int = DEFAULT_CLAIM_TTL, now: datetime | None = None, token: str | None = None) -> tuple[str, dict]:
    """Claim the download of ``template_id`` onto ``pool`` (for ``host`` when the pool is host-local).

    Returns ``(status, record)``:

    - ``("exists", copy)`` a copy is already recorded: nothing to download;
    - ``("granted", claim)`` the caller owns the claim (its ``token`` releases it); also when ``token`` is the
      token of the claim in place (a retry of the same claimant);
    - ``("busy", claim)`` someone else holds an unexpired claim: wait and call again.

    An expired claim (older than ``ttl`` seconds: its holder died) is replaced."""
    now = now or utc_now()
    existing_copy = find_copy(doc, template_id, host, pool)
    if existing_copy is not None:
        return "exists", copy.deepcopy(existing_copy)
    for record in list(doc["claims"]):
        if not _claim_matches(record, template_id, host, pool, shared):
            continue
        if token is not None and record.get("token") == token:
            return "granted", copy.deepcopy(record)
        try:
            expired = parse_timestamp(record["expires_at"]) <= now
        except (KeyError, ValueError):
            expired = True
        if not expired:
            return "busy", copy.deepcopy(record)
        doc["claims"].remove(record)
    claim = {
        "template_id": template_id,
        "pool": pool,
        "host": host,
        "shared": bool(shared),
        "token": token or uuid.uuid4().hex,
        "holder": holder or host,
        "claimed_at": timestamp(now),
        "expires_at": timestamp(now + timedelta(seconds=ttl)),
    }
    doc["claims"].append(claim)
    doc["claims"].sort(key=_claim_sort_key)
    return "granted", copy.deepcopy(claim)


def release_claim(doc: dict, token: str) -> dict | None:
    """Drop the claim with ``token``. Returns it, or None when there was none (already released or expired)."""
    for record in doc["claims"]:
        if record.get("token") == token:
            doc["claims"].remove(record)
            return record
    return None


# --------------------------------------------------------------------------------------------------------------
# Certificates and their per-host status
# --------------------------------------------------------------------------------------------------------------

def get_certificate(doc: dict, alias: str) -> dict | None:
    return doc["certificates"].get(alias)


def upsert_certificate(doc: dict, alias: str, pem: str, now: datetime | None = None,
                       **metadata: Any) -> tuple[dict | None, dict]:
    """Insert or replace the certificate ``alias`` with ``pem`` and any metadata (subject, issuer, not_before,
    not_after, serial, fingerprint_sha256, zone ...). Per-host statuses are kept when the PEM is unchanged and
    dropped when it changes (a new certificate has been pushed nowhere yet). Returns ``(before, after)``."""
    current = doc["certificates"].get(alias)
    before = copy.deepcopy(current) if current is not None else None
    stamp = timestamp(now)
    new = dict(metadata)
    new["alias"] = alias
    new["pem"] = pem
    if current is not None:
        new["created_at"] = current.get("created_at", stamp)
        new["hosts"] = copy.deepcopy(current.get("hosts", {})) if current.get("pem") == pem else {}
        if {k: v for k, v in new.items() if k != "updated_at"} == \
                {k: v for k, v in current.items() if k != "updated_at"}:
            return before, copy.deepcopy(current)
    else:
        new["created_at"] = stamp
        new["hosts"] = {}
    new["updated_at"] = stamp
    doc["certificates"][alias] = new
    return before, copy.deepcopy(new)


def set_certificate_host_status(doc: dict, alias: str, host: str, status: str, details: str | None = None,
                                now: datetime | None = None) -> tuple:
    """Record the outcome for ``host``: UPLOADED, FAILED, REVOKED or SKIPPED, with details and a timestamp.
    The timestamp is refreshed only when the status or details change. Returns ``(before, after)``."""
    if status not in CERTIFICATE_HOST_STATUSES:
        raise InvalidInput("certificate host status must be one of %s, got %r"
                           % (", ".join(CERTIFICATE_HOST_STATUSES), status))
    record = doc["certificates"].get(alias)
    if record is None:
        raise InvalidInput("no certificate with alias %r in the registry" % alias, alias=alias)
    hosts = record.setdefault("hosts", {})
    current = hosts.get(host)
    before = copy.deepcopy(current) if current is not None else None
    if current is not None and current.get("status") == status and current.get("details") == details:
        return before, copy.deepcopy(current)
    hosts[host] = {"status": status, "details": details, "updated_at": timestamp(now)}
    return before, copy.deepcopy(hosts[host])


def remove_certificate(doc: dict, alias: str) -> dict | None:
    return doc["certificates"].pop(alias, None)


def list_certificates(doc: dict, alias: str | None = None, host: str | None = None) -> list:
    """Certificates sorted by alias; with ``host``, only those with a status for that host, and only that host's
    status in ``hosts``."""
    found = []
    for key in sorted(doc["certificates"]):
        if alias not in (None, key):
            continue
        record = copy.deepcopy(doc["certificates"][key])
        if host is not None:
            if host not in record.get("hosts", {}):
                continue
            record["hosts"] = {host: record["hosts"][host]}
        found.append(record)
    return found
