# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""What the registry modules do to the registry document, as plain functions (no Ansible, unit-tested):

* :func:`copy_state` - the states of ``template_copy`` (present, absent, released, claimed, finished), one
  ``state_<name>`` function each (the community.general ``StateMixin`` idea), and :func:`claim_waiting`, the
  ``state=claimed`` poll while another run holds the claim;
* :func:`certificate_state` - ``certificate_registry``: record or remove a certificate, record a host status;
* :func:`select` - the filtered view that ``template_info`` returns.

``params`` are the module's parameters (a dict with every option of the module). The functions change ``doc`` in
place; the caller runs them through ``_registry.Registry.apply`` (one transaction, or a read copy in check mode).
The claims and reports themselves are ``_fleet``'s decisions; the record tables are ``_registry``'s.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

from ansible_collections.directdownload.kvm.plugins.module_utils import _certs
from ansible_collections.directdownload.kvm.plugins.module_utils import _fleet
from ansible_collections.directdownload.kvm.plugins.module_utils import _registry as reg
from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput

# template_copy state=claimed: the claim_status word of each _fleet decision.
CLAIM_STATUS = {_fleet.PRESENT: "exists", _fleet.DOWNLOAD: "granted", _fleet.BUSY: "busy", _fleet.SAME_RUN: "busy"}
COPY_STATES = ("present", "absent", "claimed", "released", "finished")


# --------------------------------------------------------------------------------------------------------------
# template_copy
# --------------------------------------------------------------------------------------------------------------

def find_template(doc: dict, params: dict, required: bool = True) -> dict | None:
    """The template named by ``template`` or ``template_id``; InvalidInput when it is required and missing."""
    record = reg.get_template(doc, name=params["template"], template_id=params["template_id"])
    if record is None and required:
        wanted = params["template"] if params["template"] is not None else params["template_id"]
        raise InvalidInput("no template %s in the registry: register it first with directdownload.kvm.template" % wanted)
    return record


def copy_record(params: dict, template: dict) -> dict:
    """The copy record that ``state=present`` writes."""
    return {
        "template_id": template["id"],
        "template_name": template["name"],
        "host": params["host"],
        "pool": params["pool"],
        "shared": params["shared"],
        "install_path": params["install_path"],
        "size": params["size"],
        "virtual_size": params["virtual_size"],
        "checksum": params["checksum"],
        "format": params["format"] or template.get("format"),
    }


def state_claimed(doc: dict, params: dict, check_mode: bool = False) -> dict:
    """One look at the registry for ``state=claimed``: the decision of ``_fleet.acquire``, as a result dict."""
    del check_mode  # the caller decides whether the claim is written
    template = find_template(doc, params)
    decision = _fleet.acquire(doc, template["id"], params["host"], params["pool"], shared=params["shared"],
                              run_id=params["run_id"], holder=params["holder"], ttl=params["claim_ttl"],
                              token=params["claim_token"])
    action = decision["action"]
    result = {"template": reg.public_template(template), "action": action, "claim_status": CLAIM_STATUS[action],
              "changed": action == _fleet.DOWNLOAD and decision["claim"]["token"] != params["claim_token"]}
    if decision["copy"] is not None:
        result["template_copy"] = decision["copy"]
    if decision["claim"] is not None:
        result["claim"] = decision["claim"]
    return result


def state_finished(doc: dict, params: dict, check_mode: bool = False) -> dict:
    """``state=finished``: record the copy from the attempt that succeeded, or release the claim (``_fleet.finish``)."""
    template = find_template(doc, params)
    acquired = params["acquired"] or {}
    decision = {"action": acquired.get("action"), "claim": acquired.get("claim"),
                "copy": acquired.get("template_copy")}
    if decision["action"] not in _fleet.ACTIONS:
        raise InvalidInput("state=finished needs acquired: the registered result of the state=claimed task")
    outcome = _fleet.finish(doc, template, params["host"], params["pool"], params["shared"], decision,
                            params["attempts"], check_mode=check_mode,
                            wait_timed_out=bool(acquired.get("timed_out")))
    result = {"template": reg.public_template(template), "changed": outcome["changed"], "report": outcome["row"]}
    if outcome["copy"]:
        result["template_copy"] = outcome["copy"]
    if outcome["released"] is not None:
        result["claim"] = outcome["released"]
    return result


def _copy_result(template: dict | None) -> dict:
    result = {"changed": False}
    if template is not None:
        result["template"] = reg.public_template(template)
    return result


def state_present(doc: dict, params: dict, check_mode: bool = False) -> dict:
    """``state=present``: record the copy (and release ``claim_token`` in the same write). ``before`` is the old
    record, for the diff."""
    del check_mode
    template = find_template(doc, params)
    if not params["install_path"]:
        raise InvalidInput("state=present needs install_path: the path of the image on the host")
    before, after = reg.record_copy(doc, copy_record(params, template))
    if params["claim_token"]:
        reg.release_claim(doc, params["claim_token"])
    result = _copy_result(template)
    result.update(changed=before != after, template_copy=after, before=before)
    return result


def state_absent(doc: dict, params: dict, check_mode: bool = False) -> dict:
    """``state=absent``: forget the copy (the file is not touched); an unregistered template's id still finds it."""
    del check_mode
    template = find_template(doc, params, required=False)
    template_id = template["id"] if template is not None else params["template_id"]
    before = reg.remove_copy(doc, template_id, params["host"], params["pool"]) if template_id else None
    result = _copy_result(template)
    result.update(changed=before is not None, before=before)
    if before is not None:
        result["template_copy"] = before
    return result


def state_released(doc: dict, params: dict, check_mode: bool = False) -> dict:
    """``state=released``: drop the claim held with ``claim_token``."""
    del check_mode
    template = find_template(doc, params, required=False)
    if not params["claim_token"]:
        raise InvalidInput("state=released needs claim_token")
    released = reg.release_claim(doc, params["claim_token"])
    result = _copy_result(template)
    result.update(changed=released is not None, claim=released or {})
    return result


_COPY_STATE_FUNCTIONS = {"present": state_present, "absent": state_absent, "released": state_released,
                         "claimed": state_claimed, "finished": state_finished}


def copy_state(doc: dict, params: dict, check_mode: bool = False) -> dict:
    """Apply ``params["state"]`` of ``template_copy`` to ``doc``. Returns the result dict (without ``registry``;
    ``before`` holds the old copy record for the diff of present/absent)."""
    state = params["state"]
    if state not in _COPY_STATE_FUNCTIONS:
        raise InvalidInput("state must be one of %s, got %r" % (", ".join(COPY_STATES), state))
    return _COPY_STATE_FUNCTIONS[state](doc, params, check_mode)


def copy_diff(state: str, result: dict) -> dict:
    """The diff of ``template_copy`` for present/absent: the copy record before and after."""
    after = result.get("template_copy") if state == "present" else None
    return {"before": result.get("before") or {}, "after": after or {}}


def claim_waiting(registry: reg.Registry, params: dict, check_mode: bool, sleep: Callable = time.sleep,
                  clock: Callable = time.monotonic) -> dict:
    """``state=claimed``, polling every ``wait_delay`` seconds while another run holds the claim, at most
    ``wait_timeout`` seconds (never in check mode). Each look is one transaction: a look that finds the claim busy
    changes nothing and writes nothing. Adds ``waited`` and ``timed_out`` to the result."""
    started = clock()
    timeout = 0 if check_mode else max(params["wait_timeout"], 0)
    while True:
        result = registry.apply(lambda doc: state_claimed(doc, params), check_mode)
        waited = clock() - started
        if result["action"] != _fleet.BUSY or waited >= timeout:
            result.update(waited=round(waited, 1), timed_out=result["action"] == _fleet.BUSY and timeout > 0)
            return result
        sleep(max(min(params["wait_delay"], timeout - waited), 0.05))


# --------------------------------------------------------------------------------------------------------------
# certificate_registry
# --------------------------------------------------------------------------------------------------------------

def hypervisor(value: str | None) -> str:
    """``kvm``, ``KVM``, `` Kvm `` -> ``KVM``; anything else is refused (direct download is KVM only)."""
    if (value or "").strip().upper() != "KVM":
        raise InvalidInput("only the KVM hypervisor supports direct download, got hypervisor %r" % value)
    return "KVM"


def public_certificate(record: dict | None) -> dict | None:
    """A certificate record for results and diffs: everything but the PEM (public, but long)."""
    if record is None:
        return None
    shown = copy.deepcopy(record)
    shown.pop("pem", None)
    shown["fingerprint"] = shown.pop("fingerprint_sha256", None)  # the name certificate and certificate_info use
    return shown


def certificate_record(data: str | bytes | None, allow_non_ca: bool = False,
                       hypervisor_name: str | None = "KVM") -> tuple | None:
    """``(pem, metadata)`` of the certificate ``data`` (PEM, base64 body or DER), validated as ``certificate``
    validates it (in date, can sign unless ``allow_non_ca``); None when ``data`` is None."""
    if data is None:
        return None
    cert = _certs.load_certificate(data)
    _certs.check_validity(cert)
    _certs.check_can_sign(cert, allow_non_ca)
    info = _certs.describe(cert)
    metadata = {key: info[key] for key in ("subject", "issuer", "serial", "not_before", "not_after", "is_ca")}
    metadata["fingerprint_sha256"] = info["fingerprint"]
    metadata["validity"] = "From: [%s] - To: [%s]" % (info["not_before"], info["not_after"])
    metadata["hypervisor"] = hypervisor(hypervisor_name)
    return _certs.to_pem(cert).decode("ascii"), metadata


def certificate_state(doc: dict, params: dict, alias: str, record: tuple | None) -> tuple:
    """Change ``doc`` as the ``certificate_registry`` parameters say: remove the certificate (``state=absent``), or
    record ``record`` (``(pem, metadata)``, None when no certificate is given) and the status of ``host``.
    Returns the (before, after) views for the diff (:func:`public_certificate`)."""
    before = public_certificate(doc["certificates"].get(alias))
    if params["state"] == "absent":
        reg.remove_certificate(doc, alias)
        return before, None
    if record is not None:
        reg.upsert_certificate(doc, alias, record[0], **record[1])
    if params["host"] is not None:
        current = doc["certificates"].get(alias)
        if current is None:
            raise InvalidInput("no certificate %r in the registry: record it (content or src) before a host status" % alias)
        confirmed = params["fingerprint"]
        if confirmed is not None and confirmed.upper() != (current.get("fingerprint_sha256") or "").upper():
            raise InvalidInput(
                "host %s confirmed the certificate %s under %r, but the registry holds %s: status not recorded"
                % (params["host"], confirmed, alias, current.get("fingerprint_sha256")), host=params["host"])
        details = params["details"]
        if details is None and params["status"] != "FAILED":
            details = "OK"
        reg.set_certificate_host_status(doc, alias, params["host"], params["status"], details)
    return before, public_certificate(doc["certificates"].get(alias))


def certificate_writes(params: dict, record: tuple | None) -> bool:
    """Does this ``certificate_registry`` call change the registry at all? (``state=present`` with neither a
    certificate nor a host status only reads.)"""
    return not (params["state"] == "present" and record is None and params["host"] is None)


# --------------------------------------------------------------------------------------------------------------
# template_info
# --------------------------------------------------------------------------------------------------------------

def _public_certificate(record: dict) -> dict:
    """One fingerprint name across the certificate modules: the registry's ``fingerprint_sha256`` is shown as
    ``fingerprint``."""
    shown = dict(record)
    shown["fingerprint"] = shown.pop("fingerprint_sha256", None)
    return shown


def select(doc: dict, name: str | None = None, template_id: str | None = None, host: str | None = None,
           pool: str | None = None, alias: str | None = None, reveal_secrets: bool = False) -> dict:
    """The filtered view of ``doc`` that ``template_info`` returns: templates (header values masked unless
    ``reveal_secrets``), copies, claims, certificates and the schema version; ``template`` too when the filter
    names one template. A ``template_id`` whose template was unregistered still selects its copies and claims."""
    show = (lambda record: record) if reveal_secrets else reg.public_template
    templates = [t for t in reg.list_templates(doc, name=name) if template_id in (None, t.get("id"))]
    template_ids = None
    if name is not None or template_id is not None:
        template_ids = {t["id"] for t in templates}
        if template_id is not None:
            template_ids.add(template_id)
    copies = [c for c in reg.list_copies(doc, host=host, pool=pool)
              if template_ids is None or c.get("template_id") in template_ids]
    claims = [dict(c) for c in doc["claims"]
              if (template_ids is None or c.get("template_id") in template_ids)
              and pool in (None, c.get("pool")) and host in (None, c.get("host"))]
    result = {
        "templates": [show(t) for t in templates],
        "copies": copies,
        "claims": claims,
        "certificates": [_public_certificate(c)
                         for c in reg.list_certificates(doc, alias=alias, host=host)],
        "schema_version": doc["schema_version"],
    }
    if (name is not None or template_id is not None) and len(templates) == 1:
        result["template"] = show(templates[0])
    return result


__all__ = ["CLAIM_STATUS", "COPY_STATES", "certificate_record", "certificate_state", "certificate_writes", "claim_waiting", "copy_diff",
           "copy_record", "copy_state", "find_template", "hypervisor", "public_certificate", "select",
           "state_absent", "state_claimed", "state_finished", "state_present", "state_released"]
