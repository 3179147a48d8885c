# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The fleet decisions of a deployment, as pure functions over the registry document (no I/O, no Ansible).

One deployment of a template onto one pool, as the ``deploy`` role runs it for each host x pool::

    decision = acquire(doc, template_id, host, pool, shared, run_id=..., ttl=...)   # one registry transaction
    #   "present"   a copy is recorded: check it on the host (a no-op download re-fetches a vanished file)
    #   "download"  this host holds the claim: try the candidate hosts in turn
    #   "busy"      another run holds the claim: wait (template_copy polls acquire) and acquire again
    #   "same_run"  another host of this run holds it: it downloads now; look for its copy afterwards
    outcome = finish(doc, template, host, pool, shared, decision, attempts)         # one registry transaction
    #   records the copy from the attempt that succeeded and releases the claim, or releases it; returns the
    #   report row (see :func:`report_row`), with the error summary of a pool that could not be deployed

``attempts`` are the per-item results of the one download task that loops over the candidate hosts (as Ansible
registers them: ``item`` or the loop variable named by ``ansible_loop_var`` is the host; ``failed``, ``unreachable``,
``msg``, ``retry_elsewhere`` on failure; ``changed``, ``path``, ``size``, ``bytes_downloaded``... on success).

The run is a field of the claim (``run_id``), never parsed out of the free-text ``holder``.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, Optional, Sequence

from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.module_utils._fanout import byte_split

PRESENT = "present"
DOWNLOAD = "download"
BUSY = "busy"
SAME_RUN = "same_run"
ACTIONS = (PRESENT, DOWNLOAD, BUSY, SAME_RUN)

# Report statuses (one row per host x pool)
DOWNLOADED = "downloaded"
WOULD_DOWNLOAD = "would download"
FAILED = "failed"
UNREACHABLE = "unreachable"
STATUSES = (DOWNLOADED, PRESENT, WOULD_DOWNLOAD, FAILED, UNREACHABLE)

MB = 1000 * 1000
MiB = 1024 * 1024


# --------------------------------------------------------------------------------------------------------------
# acquire: present / download / busy / same run
# --------------------------------------------------------------------------------------------------------------

def acquire(doc: dict[str, Any], template_id: str, host: str, pool: str, shared: bool = False,
            run_id: Optional[str] = None, holder: Optional[str] = None, ttl: int = reg.DEFAULT_CLAIM_TTL,
            now: Optional[datetime] = None, token: Optional[str] = None) -> dict[str, Any]:
    """Decide what ``host`` does about the template on ``pool``, taking the claim when it downloads.

    Returns ``{"action", "claim", "copy"}``: ``action`` one of :data:`ACTIONS`; ``claim`` the claim taken (download)
    or held by another host (busy, same_run), else None; ``copy`` the recorded copy (present), else None.
    A claim whose ``run_id`` is ``run_id`` belongs to another host of the same run: ``same_run``, never waited for.
    An expired claim (its run died) is taken over; ``token`` re-grants the caller's own claim."""
    status, record = reg.claim_copy(doc, template_id, host, pool, shared=shared, holder=holder, ttl=ttl, now=now,
                                    token=token)
    if status == "exists":
        return {"action": PRESENT, "claim": None, "copy": record}
    if status == "busy":
        same = bool(run_id) and record.get("run_id") == run_id
        return {"action": SAME_RUN if same else BUSY, "claim": record, "copy": None}
    if run_id:
        for live in doc["claims"]:
            if live.get("token") == record["token"]:
                live["run_id"] = run_id
        record["run_id"] = run_id
    return {"action": DOWNLOAD, "claim": record, "copy": None}


def wait_over(decision: dict[str, Any]) -> bool:
    """Whether a waiter stops polling: anything but a claim of another run."""
    return decision["action"] != BUSY


# --------------------------------------------------------------------------------------------------------------
# attempts: the results of the download loop
# --------------------------------------------------------------------------------------------------------------

def attempt_host(result: dict[str, Any]) -> Optional[str]:
    """The candidate host of one loop item result."""
    loop_var = result.get("ansible_loop_var") or "item"
    return str(result.get(loop_var) if result.get(loop_var) is not None else result.get("item", ""))


def attempt_outcome(result: dict[str, Any]) -> str:
    """``ok``, ``failed``, ``unreachable`` or ``skipped`` for one loop item result. A probe (url_check) that ran but
    could not reach the URL (``reachable: false``) failed."""
    if result.get("unreachable"):
        return "unreachable"
    if result.get("failed") or result.get("reachable") is False:
        return "failed"
    if result.get("skipped"):
        return "skipped"
    return "ok"


def summarize_attempts(
        attempts: Optional[Sequence[dict[str, Any]]]) -> tuple[list[dict[str, Any]], Optional[dict[str, Any]]]:
    """The tried hosts in order: ``[{"host", "outcome", "error", "retry_elsewhere"}]`` (skipped items left out),
    and the successful result (the last ``ok`` one) or None. Used for downloads (deploy) and probes (registration)."""
    tried, success = [], None
    for result in attempts or []:
        outcome = attempt_outcome(result)
        if outcome == "skipped":
            continue
        entry = {"host": attempt_host(result), "outcome": outcome, "error": None, "retry_elsewhere": True}
        if outcome == "ok":
            success = result
        else:
            message = result.get("error") or result.get("msg") or ("it failed" if outcome == "failed" else "")
            entry["error"] = ("host unreachable: %s" % message).rstrip(": ") if outcome == "unreachable" else message
            entry["retry_elsewhere"] = outcome == "unreachable" or bool(result.get("retry_elsewhere", True))
        tried.append(entry)
    return tried, success


def failure_summary(template_name: str, host: str, pool: str, tried: Sequence[dict[str, Any]]) -> str:
    """The message of a pool that no candidate could deploy."""
    if not tried:
        return "Template %s could not be downloaded on pool %s of %s: no host was tried" % (template_name, pool, host)
    stopped = not tried[-1]["retry_elsewhere"]
    return "Template %s could not be downloaded on pool %s of %s, after trying %s%s. Details: %s" % (
        template_name, pool, host, ", ".join(t["host"] for t in tried),
        " (stopped: the error is not retryable on another host)" if stopped else "",
        "; ".join("%s: %s" % (t["host"], t["error"]) for t in tried))


# --------------------------------------------------------------------------------------------------------------
# finish: record or release, and the report row
# --------------------------------------------------------------------------------------------------------------

def copy_from_result(template: dict[str, Any], downloaded_on: str, pool: str, shared: bool,
                     result: dict[str, Any]) -> dict[str, Any]:
    """The copy record (see :func:`_registry.record_copy`) for a successful download result."""
    return {
        "template_id": template["id"],
        "template_name": template.get("name"),
        "host": downloaded_on,
        "pool": pool,
        "shared": bool(shared),
        "install_path": result.get("path"),
        "size": result.get("size"),
        "virtual_size": result.get("virtual_size"),
        "checksum": result.get("checksum"),
        "format": result.get("format") or template.get("format"),
    }


def finish(doc: dict[str, Any], template: dict[str, Any], host: str, pool: str, shared: bool, decision: dict[str, Any],
           attempts: Optional[Sequence[dict[str, Any]]] = None, check_mode: bool = False,
           now: Optional[datetime] = None, wait_timed_out: bool = False) -> dict[str, Any]:
    """Close one host x pool after the download loop. Modifies ``doc`` (the caller writes it unless in check mode).

    - a successful attempt that downloaded (or a ``download`` decision whose file was already in place): record the
      copy with the host that served it, releasing the claim in the same write;
    - ``present`` and the check found the file in place: nothing changes;
    - no attempt succeeded: release the claim (so that another deployment can try);
    - ``busy`` / ``same_run`` without attempts: the copy another run or host recorded meanwhile, if any.

    Returns ``{"changed", "copy", "released", "row"}``."""
    action = decision.get("action")
    claim = decision.get("claim") or {}
    token = claim.get("token") if action == DOWNLOAD else None
    tried, success = summarize_attempts(attempts)
    changed, recorded, released = False, None, None
    row = report_row(host, pool, template, tried=tried)

    if success is not None:
        downloaded_on = attempt_host(success)
        moved = bool(success.get("changed"))
        if action == DOWNLOAD or moved:
            before, recorded = reg.record_copy(doc, copy_from_result(template, downloaded_on, pool, shared, success),
                                               now=now)
            changed = before != recorded
        else:
            recorded = copy.deepcopy(reg.find_copy(doc, template["id"], host, pool) or decision.get("copy") or {})
        if token:
            released = reg.release_claim(doc, token)
            changed = changed or released is not None
        if check_mode:
            status = WOULD_DOWNLOAD if moved else PRESENT
        else:
            status = DOWNLOADED if moved and success.get("bytes_downloaded") else PRESENT
        row.update(status=status, downloaded_on=(downloaded_on if moved else (recorded or {}).get("host")
                                                 or downloaded_on),
                   path=success.get("path"), bytes=int(success.get("bytes_downloaded") or 0),
                   seconds=success.get("elapsed"), resumed_from=int(success.get("resumed_from") or 0),
                   source=success.get("source") or success.get("url"), checksum=success.get("checksum"))
        row["origin_bytes"], row["peer_bytes"] = byte_split(success.get("sources"), row["bytes"])
        row["rate_mb_s"] = rate_mb_s(row["bytes"], success.get("rate"), row["seconds"])
        return {"changed": changed, "copy": recorded, "released": released, "row": row}

    if token:
        released = reg.release_claim(doc, token)
        changed = released is not None
    if tried:
        everyone_down = all(t["outcome"] == "unreachable" for t in tried)
        row.update(status=UNREACHABLE if everyone_down else FAILED,
                   error=failure_summary(template.get("name"), host, pool, tried))
        return {"changed": changed, "copy": None, "released": released, "row": row}

    found = reg.find_copy(doc, template["id"], host, pool)
    if found is not None:
        row.update(status=PRESENT, downloaded_on=found.get("host"), path=found.get("install_path"))
        return {"changed": changed, "copy": copy.deepcopy(found), "released": released, "row": row}
    if action in (BUSY, SAME_RUN) and check_mode:
        # Nothing is claimed or recorded in check mode: another run holds a real claim, or a host of this run
        # would download it.
        row.update(status=WOULD_DOWNLOAD, downloaded_on=claim.get("host"))
        return {"changed": changed, "copy": None, "released": released, "row": row}
    if action == BUSY and wait_timed_out:
        error = ("Template %s is not on pool %s of %s: timed out waiting for the claim of another run (%s, run %s)"
                 % (template.get("name"), pool, host, claim.get("holder") or claim.get("host"),
                    claim.get("run_id") or "unknown"))
    elif action in (BUSY, SAME_RUN):
        error = ("Template %s is not on pool %s of %s: %s claimed its download%s and did not record a copy (see the "
                 "errors of that host)" % (template.get("name"), pool, host, claim.get("host") or "another host",
                                           " in this run" if action == SAME_RUN else ""))
    else:
        error = failure_summary(template.get("name"), host, pool, tried)
    row.update(status=FAILED, error=error)
    return {"changed": changed, "copy": None, "released": released, "row": row}


def report_row(host: str, pool: str, template: Optional[dict[str, Any]] = None,
               tried: Optional[Sequence[dict[str, Any]]] = None) -> dict[str, Any]:
    """An empty row of the deployment report; :func:`finish` fills it."""
    return {
        "host": host,
        "pool": pool,
        "template": (template or {}).get("name"),
        "status": FAILED,
        "downloaded_on": None,
        "path": None,
        "bytes": 0,
        "seconds": None,
        "rate_mb_s": None,
        "resumed_from": 0,
        "source": None,
        "checksum": None,
        "origin_bytes": 0,
        "peer_bytes": 0,
        "attempts": [{"host": t["host"], "outcome": t["outcome"], "error": t["error"]} for t in (tried or [])],
        "error": None,
    }


def rate_mb_s(moved: Optional[int], rate: Optional[float] = None, seconds: Optional[float] = None) -> Optional[float]:
    """MB/s (10^6 bytes) of a transfer: from the engine's rate (bytes/s), else bytes over seconds; None for none."""
    if not moved:
        return None
    if rate:
        return round(float(rate) / MB, 3)
    if seconds:
        return round(moved / float(seconds) / MB, 3)
    return None


# --------------------------------------------------------------------------------------------------------------
# The report as a table
# --------------------------------------------------------------------------------------------------------------

COLUMNS = ("HOST", "POOL", "STATUS", "ON", "MOVED", "TIME", "RATE", "RESUMED", "SOURCE / ATTEMPTS")


def human_bytes(count: Optional[int]) -> str:
    if not count:
        return "-"
    if count < MiB:
        return "%.1f KiB" % (count / 1024.0)
    if count < 1024 * MiB:
        return "%.1f MiB" % (count / float(MiB))
    return "%.2f GiB" % (count / float(1024 * MiB))


def _cells(row):
    failed = [a for a in row.get("attempts") or [] if a.get("outcome") != "ok"]
    if row.get("status") in (FAILED, UNREACHABLE):
        notes = "; ".join("%s: %s" % (a["host"], a["error"]) for a in failed) or row.get("error") or ""
    else:
        notes = row.get("source") or ""
        if row.get("peer_bytes"):
            notes += " (origin %s, peers %s)" % (human_bytes(row.get("origin_bytes")), human_bytes(row["peer_bytes"]))
        if failed:
            notes += " (after %s)" % "; ".join("%s: %s" % (a["host"], a["error"]) for a in failed)
    seconds = row.get("seconds")
    return [
        str(row.get("host") or ""),
        str(row.get("pool") or ""),
        str(row.get("status") or ""),
        str(row.get("downloaded_on") or "-"),
        human_bytes(row.get("bytes")),
        "-" if seconds is None or not row.get("bytes") else "%.1f s" % float(seconds),
        "-" if row.get("rate_mb_s") is None else "%.1f MB/s" % row["rate_mb_s"],
        human_bytes(row.get("resumed_from")) if row.get("resumed_from") else "-",
        notes.strip(),
    ]


def report_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The rows as aligned text lines (a header, then one line per row, sorted by host and pool)."""
    table = [list(COLUMNS)] + [_cells(r) for r in sorted(rows or [], key=lambda r: (str(r.get("host")),
                                                                                    str(r.get("pool"))))]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS) - 1)]
    return ["  ".join([cell.ljust(width) for cell, width in zip(line[:-1], widths)] + [line[-1]]).rstrip()
            for line in table]
