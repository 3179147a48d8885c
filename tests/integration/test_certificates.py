# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""CA certificates through real ``ansible-playbook`` runs: the ``certificate``, ``certificate_info`` and
``certificate_registry`` modules, the ``certificates`` role and the upload/revoke playbooks.

Real parts: ``keytool`` on JKS and PKCS12 keystores that hold the agent's own private key entry, a private CA made
with ``cryptography``, a loopback HTTPS server signed by it, and the ``download`` module that must refuse the server
before the upload, accept it after, and refuse it again after the revocation. Several "KVM hosts" are inventory
hosts with the local connection, each with its own keystore, agent.properties and trust directory.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible_collections.directdownload.kvm.plugins.module_utils import _certs
from ansible_collections.directdownload.kvm.tests.integration.conftest import REPO_ROOT, VENV_PYTHON
from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.require import require_tool
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer
from ansible_collections.directdownload.kvm.tests.unit.lib.tls import TestCA, days_from_now, make_ca_certificate_pem

KEYTOOL = _certs.find_keytool()


@pytest.fixture(autouse=True)
def _keytool():
    """Every test here runs the real keytool (a Java runtime): skipped without one, failed under CI=true."""
    require_tool("keytool", _certs.find_keytool)


UPLOAD = REPO_ROOT / "playbooks" / "upload_certificate.yml"
REVOKE = REPO_ROOT / "playbooks" / "revoke_certificate.yml"
PASSWORD = "agent-Pass-4c1b-not-in-output"
HOST_KEY_ALIAS = "kvm-host-key"


def make_agent_dir(path, store_type="JKS", password=PASSWORD, keystore_name="cloud.jks"):
    """A CloudStack agent configuration directory: keystore with the host's key pair, agent.properties."""
    path.mkdir(parents=True, exist_ok=True)
    keystore = path / keystore_name
    subprocess.run(
        [KEYTOOL, "-genkeypair", "-alias", HOST_KEY_ALIAS, "-keyalg", "EC", "-groupname", "secp256r1",
         "-dname", "CN=%s" % path.name, "-validity", "30", "-keystore", str(keystore), "-storetype", store_type,
         "-storepass:env", "KSPASS", "-keypass:env", "KSPASS"],
        env=dict(os.environ, KSPASS=password), check=True, capture_output=True,
    )
    (path / "agent.properties").write_text("host=192.0.2.1\nkeystore.passphrase=%s\n" % password)
    return keystore


def keystore_entries(keystore, password=PASSWORD):
    return {e.alias: e for e in _certs.Keytool(KEYTOOL, password).list(str(keystore))}


def fingerprint_of(pem):
    return _certs.fingerprint(_certs.load_certificate(pem))


def assert_no_password(run, password=PASSWORD):
    assert password not in run.stdout and password not in run.stderr
    assert password not in json.dumps(run.results)


@pytest.fixture
def agent(tmp_path):
    """One KVM host's agent directory with a JKS cloud.jks, and its trust directory (not created yet)."""
    directory = tmp_path / "agent"
    keystore = make_agent_dir(directory)
    return {"dir": directory, "keystore": keystore, "properties": directory / "agent.properties",
            "trust_dir": tmp_path / "trust.d"}


def certificate_args(agent, alias, content=None, **extra):
    args = {"alias": alias, "keystore": str(agent["keystore"]), "agent_properties": str(agent["properties"]),
            "trust_dir": str(agent["trust_dir"])}
    if content is not None:
        args["content"] = content
    args.update(extra)
    return args


def task(name, module, args, **keywords):
    """A task that never stops the play: every step of a scenario is one task of one ansible-playbook run
    (each run costs seconds), and the test reads each task's own result."""
    entry = {"name": name, module: args, "ignore_errors": True}
    entry.update(keywords)
    return entry


def run_tasks(run_playbook, tasks, hosts="all", inventory=None, env=None, expect_rc=0):
    return run_playbook([{"hosts": hosts, "gather_facts": False, "tasks": tasks}], inventory=inventory, env=env,
                        expect_rc=expect_rc)


def role_task(run, name, host=None):
    return run.task("directdownload.kvm.certificates : " + name, host=host)


# --------------------------------------------------------------------------------------------------------------
# The modules


def test_certificate_check_mode_diff_idempotence_rotation_and_revocation(run_playbook, agent):
    ca_one = make_ca_certificate_pem(common_name="Mirror CA 2026")
    ca_two = make_ca_certificate_pem(common_name="Mirror CA 2027")
    host_key = keystore_entries(agent["keystore"])[HOST_KEY_ALIAS]
    module = "directdownload.kvm.certificate"
    stat = {"path": str(agent["keystore"]), "checksum_algorithm": "sha256"}

    run = run_tasks(run_playbook, [
        task("Keystore before", "ansible.builtin.stat", stat),
        task("Plan", module, certificate_args(agent, "Mirror-CA", ca_one), check_mode=True, diff=True),
        task("Keystore after plan", "ansible.builtin.stat", stat),
        task("Trust dir after plan", "ansible.builtin.stat", {"path": str(agent["trust_dir"])}),
        task("Import", module, certificate_args(agent, "Mirror-CA", ca_one), diff=True),
        task("Import again", module, certificate_args(agent, "mirror-ca", ca_one)),
        task("Plan again", module, certificate_args(agent, "mirror-ca", ca_one), check_mode=True),
        task("Rotate", module, certificate_args(agent, "mirror-ca", ca_two), diff=True),
        task("Revoke", module, certificate_args(agent, "mirror-ca", state="absent")),
        task("Revoke again", module, certificate_args(agent, "mirror-ca", state="absent")),
    ])
    assert_no_password(run)
    assert run.failed_tasks() == [] and not any(r["ignored"] for r in run.results), run.output_tail()

    planned = run.task("Plan")
    assert planned["status"] == "changed"
    assert (planned["result"]["keystore"], planned["result"]["trust_dir"]) == ("imported", "imported")
    assert planned["result"]["diff"]["after"]["keystore"] == fingerprint_of(ca_one)
    assert run.task("Keystore after plan")["result"]["stat"]["checksum"] == run.task("Keystore before")["result"]["stat"]["checksum"]
    assert run.task("Trust dir after plan")["result"]["stat"]["exists"] is False

    imported = run.task("Import")
    result = imported["result"]
    assert imported["status"] == "changed" and (result["keystore"], result["trust_dir"]) == ("imported", "imported")
    assert result["alias"] == "mirror-ca" and result["fingerprint"] == fingerprint_of(ca_one)
    assert result["subject"].startswith("CN=Mirror CA 2026") and result["issuer"] == result["subject"]
    assert result["not_before"].endswith("Z") and result["not_after"].endswith("Z") and result["serial"]
    assert result["keystore_path"] == str(agent["keystore"])
    assert "--- before" in run.stdout  # the diff is shown

    for name in ("Import again", "Plan again"):
        assert run.task(name)["status"] == "ok"
        assert (run.task(name)["result"]["keystore"], run.task(name)["result"]["trust_dir"]) == ("unchanged", "unchanged")

    rotated = run.task("Rotate")["result"]
    assert run.task("Rotate")["status"] == "changed" and rotated["keystore"] == "replaced"
    assert rotated["diff"]["before"] == {"keystore": fingerprint_of(ca_one), "trust_dir": fingerprint_of(ca_one)}
    assert rotated["diff"]["after"] == {"keystore": fingerprint_of(ca_two), "trust_dir": fingerprint_of(ca_two)}

    revoked = run.task("Revoke")
    assert revoked["status"] == "changed" and (revoked["result"]["keystore"], revoked["result"]["trust_dir"]) == ("removed", "removed")
    again = run.task("Revoke again")
    assert again["status"] == "ok" and (again["result"]["keystore"], again["result"]["trust_dir"]) == ("absent", "absent")

    entries = keystore_entries(agent["keystore"])
    assert "mirror-ca" not in entries
    assert entries[HOST_KEY_ALIAS].entry_type == "private_key" and entries[HOST_KEY_ALIAS].fingerprint == host_key.fingerprint
    assert os.listdir(agent["trust_dir"]) == []


def test_certificate_info_lists_both_stores_read_only(run_playbook, agent, tmp_path):
    pkcs12 = make_agent_dir(tmp_path / "p12", store_type="PKCS12", keystore_name="cloud.p12")
    ca = make_ca_certificate_pem(common_name="Mirror CA", not_after=days_from_now(20))
    # The stores are filled by the engine directly (the module is tested above): fewer ansible-playbook runs.
    cert = _certs.load_certificate(ca)
    for keystore in (agent["keystore"], pkcs12):
        _certs.ensure_certificate("mirror", cert, keystore=_certs.KeystoreTarget(str(keystore), PASSWORD),
                                  trust_dir=str(agent["trust_dir"]))
    stray = make_ca_certificate_pem(common_name="Stray CA")  # only in the trust directory: the keystore lost it
    _certs.ensure_certificate("stray", _certs.load_certificate(stray), trust_dir=str(agent["trust_dir"]))
    keystore_bytes = agent["keystore"].read_bytes()
    args = {"keystore": str(agent["keystore"]), "agent_properties": str(agent["properties"]), "trust_dir": str(agent["trust_dir"])}

    run = run_tasks(run_playbook, [
        task("List", "directdownload.kvm.certificate_info", args),
        task("List in check mode", "directdownload.kvm.certificate_info", args, check_mode=True),
        task("List one alias of a PKCS12 keystore", "directdownload.kvm.certificate_info",
             {"keystore": str(pkcs12), "keystore_password": PASSWORD, "include_trust_dir": False,
              "aliases": ["MIRROR"], "expiry_warning_days": 5}),
    ])
    assert_no_password(run)
    assert agent["keystore"].read_bytes() == keystore_bytes
    for name in ("List", "List in check mode"):
        record = run.task(name)
        assert record["status"] == "ok", record["result"]
        info = record["result"]
        assert info["keystore"]["type"] == "JKS" and info["keystore"]["exists"] is True
        entries = {e["alias"]: e for e in info["keystore"]["entries"]}
        assert entries[HOST_KEY_ALIAS]["entry_type"] == "private_key"
        view = {line["alias"]: line for line in info["certificates"]}
        assert view["mirror"]["in_sync"] is True and view["mirror"]["fingerprint"] == fingerprint_of(ca)
        assert view["mirror"]["expiring_soon"] is True and view["mirror"]["expired"] is False  # 20 days < 30
        assert 18 <= view["mirror"]["days_until_expiry"] <= 20
        assert view["stray"]["in_keystore"] is False and view["stray"]["in_sync"] is False
        assert view[HOST_KEY_ALIAS]["in_sync"] is None
        assert "mirror" in info["expiring_soon"] and info["expired"] == []

    info = run.task("List one alias of a PKCS12 keystore")["result"]
    assert info["keystore"]["type"] == "PKCS12" and "trust_dir" not in info
    assert [line["alias"] for line in info["certificates"]] == ["mirror"]
    assert info["certificates"][0]["expiring_soon"] is False and info["certificates"][0]["in_sync"] is None


def test_bad_inputs_fail_clearly_and_touch_nothing(run_playbook, agent, tmp_path):
    valid = make_ca_certificate_pem()
    expired = make_ca_certificate_pem(not_before=days_from_now(-60), not_after=days_from_now(-2))
    keystore_bytes = agent["keystore"].read_bytes()
    wrong = "Wr0ng-agent-passphrase-51c2"
    wrong_properties = tmp_path / "wrong.properties"
    wrong_properties.write_text("keystore.passphrase=%s\n" % wrong)
    no_password = tmp_path / "nopass.properties"
    no_password.write_text("host=192.0.2.1\n")
    module = "directdownload.kvm.certificate"
    bad_aliases = ("cloud", "cloudca-root", "-bad", "has_underscore", "x" * 64)

    run = run_tasks(run_playbook, [
        task("Expired", module, certificate_args(agent, "old-ca", expired)),
        task("Not a certificate", module, certificate_args(agent, "mirror", "not a certificate")),
    ] + [task("Alias %s" % alias, module, certificate_args(agent, alias, valid)) for alias in bad_aliases] + [
        task("Wrong password", module, certificate_args(agent, "mirror", valid, agent_properties=str(wrong_properties))),
        task("No password", module, certificate_args(agent, "mirror", valid, agent_properties=str(no_password))),
        task("Missing keystore", module, certificate_args(agent, "mirror", valid, keystore=str(tmp_path / "none.jks"))),
        task("No keytool", module, certificate_args(agent, "mirror", valid, keytool=str(tmp_path / "nope"))),
    ])

    def message(name):
        record = run.task(name)
        assert record["status"] == "failed", (name, record["result"])
        return record["result"]["msg"]

    assert "expired on" in message("Expired")
    assert "cannot parse the certificate" in message("Not a certificate")
    for alias in bad_aliases:
        assert "alias" in message("Alias %s" % alias)
    # keytool's message, said plainly; the password nowhere.
    assert "wrong keystore password" in message("Wrong password") and "keytool -list failed" in message("Wrong password")
    assert_no_password(run, wrong)
    assert_no_password(run)
    assert "no keystore password" in message("No password")
    assert "create_keystore=true" in message("Missing keystore")
    assert "openjdk-17-jre-headless" in message("No keytool")
    assert agent["keystore"].read_bytes() == keystore_bytes
    assert not agent["trust_dir"].exists()


def test_certificate_registry_module(run_playbook, tmp_path):
    registry = str(tmp_path / "reg.json")
    ca_pem = make_ca_certificate_pem(common_name="Registry CA")
    other_pem = make_ca_certificate_pem(common_name="Other CA")
    module = "directdownload.kvm.certificate_registry"
    record = {"registry": registry, "alias": "Reg-CA", "content": ca_pem}
    status = {"registry": registry, "alias": "reg-ca", "host": "kvm1", "status": "UPLOADED"}

    run = run_tasks(run_playbook, [
        task("Plan", module, record, check_mode=True),
        task("Registry after plan", "ansible.builtin.stat", {"path": registry}),
        task("Record", module, record, diff=True),
        task("Record again", module, dict(record, alias="reg-ca", hypervisor="kvm")),
        task("Status for another certificate", module, dict(status, fingerprint=fingerprint_of(other_pem))),
        task("Status", module, dict(status, fingerprint=fingerprint_of(ca_pem))),
        task("Status again", module, dict(status, fingerprint=fingerprint_of(ca_pem))),
        task("Look up an unknown alias", module, {"registry": registry, "alias": "nothing-here"}),
        task("Rotate", module, dict(record, content=other_pem)),
        task("Remove", module, {"registry": registry, "alias": "reg-ca", "state": "absent"}),
    ])
    assert run.task("Plan")["status"] == "changed"
    assert run.task("Registry after plan")["result"]["stat"]["exists"] is False
    recorded = run.task("Record")
    cert = recorded["result"]["certificate"]
    assert recorded["status"] == "changed" and cert["alias"] == "reg-ca" and "pem" not in cert
    # one fingerprint name across the certificate modules (the registry's field name is not shown)
    assert cert["fingerprint"] == fingerprint_of(ca_pem) and "fingerprint_sha256" not in cert
    assert cert["hypervisor"] == "KVM"
    assert cert["validity"] == "From: [%s] - To: [%s]" % (cert["not_before"], cert["not_after"])
    assert run.task("Record again")["status"] == "ok"
    refused = run.task("Status for another certificate")
    assert refused["status"] == "failed" and "status not recorded" in refused["result"]["msg"]
    assert run.task("Status")["status"] == "changed"
    assert run.task("Status")["result"]["host_status"]["status"] == "UPLOADED"
    assert run.task("Status again")["status"] == "ok"
    unknown = run.task("Look up an unknown alias")
    assert unknown["status"] == "ok" and unknown["result"]["exists"] is False
    rotated = run.task("Rotate")
    assert rotated["status"] == "changed" and rotated["result"]["certificate"]["hosts"] == {}  # on no host yet
    removed = run.task("Remove")
    assert removed["status"] == "changed" and removed["result"]["exists"] is False
    assert json.loads(open(registry, encoding="utf-8").read())["certificates"] == {}


# --------------------------------------------------------------------------------------------------------------
# Trust, end to end: download refuses, upload, download accepts, revoke, download refuses


def test_upload_makes_https_download_work_and_revoke_undoes_it(run_playbook, agent, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    images.qcow2(str(www / "disk.qcow2"), size=8 * images.MiB, writes=[(0, images.MiB, 0x5A)])
    pool = tmp_path / "pool"
    pool.mkdir()
    registry = tmp_path / "registry" / "registry.json"
    # Neither module is given a trust directory: both take it from the agent settings file. That link is under test.
    settings = tmp_path / "agent.json"
    settings.write_text(json.dumps({"trust_dir": str(agent["trust_dir"])}))
    inventory = ("[kvm_hosts]\nkvm1 ansible_connection=local ansible_python_interpreter=%s "
                 "certificates_keystore=%s certificates_agent_properties=%s\n"
                 % (VENV_PYTHON, agent["keystore"], agent["properties"]))
    ca = TestCA(common_name="Private Mirror CA")
    ca_file = tmp_path / "mirror-ca.pem"
    ca_file.write_text(ca.cert_pem)

    def download(name, server):
        return {"name": name, "directdownload.kvm.download": {
            "url": server.url("/disk.qcow2"), "pool_path": str(pool), "name": name + ".qcow2", "retries": 0},
            "ignore_errors": True}

    with ImageServer(www, ssl_context=ca.server_context()) as https, \
            ImageServer(www, ssl_context=ca.server_context(hostnames=("wrong.example.com",))) as wrong_host:
        # One ansible-playbook run: the real upload and revoke playbooks, with downloads between them.
        scenario = tmp_path / "scenario.yml"
        scenario.write_text(json.dumps([
            {"hosts": "kvm_hosts", "gather_facts": False, "tasks": [download("before", https)]},
            {"import_playbook": str(UPLOAD)},
            {"hosts": "kvm_hosts", "gather_facts": False, "tasks": [download("after", https), download("wrong-host", wrong_host)]},
            {"import_playbook": str(REVOKE)},
            {"hosts": "kvm_hosts", "gather_facts": False, "tasks": [download("revoked", https)]},
        ]))
        run = run_playbook(scenario, inventory=inventory, env={"DIRECTDOWNLOAD_SETTINGS": str(settings)},
                           extra_vars={"certificate_alias": "private-mirror", "certificate_src": str(ca_file),
                                       "certificates_registry": str(registry)})

    assert_no_password(run)
    before = run.task("before")
    assert before["status"] == "failed" and "certificate" in before["result"]["msg"].lower(), before["result"]
    uploaded, revoked = run.tasks("directdownload.kvm.certificates : Import or revoke on the KVM host: private-mirror")
    assert uploaded["status"] == "changed" and uploaded["result"]["keystore"] == "imported"
    assert uploaded["result"]["trust_dir_path"] == str(agent["trust_dir"])
    recorded = run.tasks("directdownload.kvm.certificates : Record the outcome in the registry: private-mirror")
    assert [r["result"]["host_status"]["status"] for r in recorded] == ["UPLOADED", "REVOKED"]
    assert run.task("after")["status"] == "changed", run.task("after")["result"]
    # Trusting the CA does not mean trusting any name: the host name is still checked.
    wrong = run.task("wrong-host")
    assert wrong["status"] == "failed" and "host" in wrong["result"]["msg"].lower(), wrong["result"]["msg"]
    assert revoked["result"]["keystore"] == "removed" and revoked["result"]["trust_dir"] == "removed"
    gone = run.task("revoked")
    assert gone["status"] == "failed" and "certificate" in gone["result"]["msg"].lower(), gone["result"]

    assert sorted(name for name in os.listdir(pool) if not name.startswith(".")) == ["after.qcow2"]
    assert json.loads(registry.read_text())["certificates"]["private-mirror"]["hosts"]["kvm1"]["status"] == "REVOKED"
    assert keystore_entries(agent["keystore"])[HOST_KEY_ALIAS].entry_type == "private_key"


# --------------------------------------------------------------------------------------------------------------
# The role across several hosts: a failed host, provisioning, drift, revocation


def multi_host_inventory(hosts_dir, registry, names):
    lines = ["[kvm_hosts]"]
    lines += ["%s certificates_keystore=%s certificates_agent_properties=%s certificates_trust_dir=%s"
              % (name, hosts_dir / name / "cloud.jks", hosts_dir / name / "agent.properties", hosts_dir / name / "trust.d")
              for name in names]
    lines += ["[kvm_hosts:vars]", "ansible_connection=local", "ansible_python_interpreter=%s" % VENV_PYTHON,
              "certificates_registry=%s" % registry, ""]
    return "\n".join(lines)


def summary_of(run):
    """{host: outcome} from the summary the role prints."""
    record = role_task(run, "Summary of every host's outcome")
    return {row["host"]: row for row in record["result"]["msg"]["results"]}


def registry_hosts(registry, alias):
    return {host: entry["status"] for host, entry in json.loads(registry.read_text())["certificates"][alias]["hosts"].items()}


def test_role_failed_host_provision_drift_and_revoke(run_playbook, tmp_path):
    hosts_dir = tmp_path / "hosts"
    make_agent_dir(hosts_dir / "kvm1", store_type="JKS")
    make_agent_dir(hosts_dir / "kvm2", store_type="PKCS12")   # a PKCS12 file named cloud.jks (the JDK 9+ default type)
    make_agent_dir(hosts_dir / "kvm3", store_type="JKS")
    broken_properties = hosts_dir / "kvm3" / "agent.properties"
    broken_properties.write_text("keystore.passphrase=Not-The-Right-One-77\n")
    kvm3_bytes = (hosts_dir / "kvm3" / "cloud.jks").read_bytes()
    registry = tmp_path / "registry.json"
    inventory = multi_host_inventory(hosts_dir, registry, ["kvm1", "kvm2", "kvm3"])
    ca_pem = make_ca_certificate_pem(common_name="Fleet Mirror CA")
    upload_vars = {"certificate_alias": "fleet-ca", "certificate_content": ca_pem}

    # kvm3 fails; kvm1 and kvm2 are done anyway, the summary tells all, and the play fails for kvm3 only.
    first = run_playbook(UPLOAD, inventory=inventory, extra_vars=upload_vars, expect_rc=2)
    summary = summary_of(first)
    assert {h: s["status"] for h, s in summary.items()} == {"kvm1": "UPLOADED", "kvm2": "UPLOADED", "kvm3": "FAILED"}
    assert "wrong keystore password" in summary["kvm3"]["details"]
    assert [(r["host"], r["task"]) for r in first.failed_tasks()] == [
        ("kvm3", "directdownload.kvm.certificates : Fail the hosts where a certificate could not be imported or revoked")]
    assert registry_hosts(registry, "fleet-ca") == {"kvm1": "UPLOADED", "kvm2": "UPLOADED", "kvm3": "FAILED"}
    assert (hosts_dir / "kvm3" / "cloud.jks").read_bytes() == kvm3_bytes
    assert not (hosts_dir / "kvm3" / "trust.d").exists()
    assert _certs.detect_store_type(str(hosts_dir / "kvm2" / "cloud.jks")) == "PKCS12"

    # Fix kvm3 and provision that one host.
    broken_properties.write_text("keystore.passphrase=%s\n" % PASSWORD)
    provision = run_playbook(UPLOAD, inventory=inventory, extra_vars=upload_vars, extra_args=["--limit", "kvm3"])
    assert set(summary_of(provision)) == {"kvm3"}
    assert registry_hosts(registry, "fleet-ca") == {"kvm1": "UPLOADED", "kvm2": "UPLOADED", "kvm3": "UPLOADED"}

    # Drift: kvm1's keystore loses the certificate (as when CloudStack re-creates cloud.jks). The host view and the
    # registry view disagree; a check-mode upload reports it and changes nothing; a real one heals it.
    subprocess.run([KEYTOOL, "-delete", "-alias", "fleet-ca", "-keystore", str(hosts_dir / "kvm1" / "cloud.jks"),
                    "-storepass:env", "KSPASS"], env=dict(os.environ, KSPASS=PASSWORD), check=True, capture_output=True)
    views = run_tasks(run_playbook, [
        task("Host view", "directdownload.kvm.certificate_info",
             {"keystore": str(hosts_dir / "kvm1" / "cloud.jks"), "keystore_password": PASSWORD,
              "trust_dir": str(hosts_dir / "kvm1" / "trust.d"), "aliases": ["fleet-ca"]}),
        task("Registry view", "directdownload.kvm.template_info", {"registry": str(registry), "alias": "fleet-ca"}),
    ], hosts="localhost", inventory="localhost ansible_connection=local ansible_python_interpreter=%s\n" % VENV_PYTHON)
    line = views.task("Host view")["result"]["certificates"][0]
    assert (line["in_keystore"], line["in_trust_dir"], line["in_sync"]) == (False, True, False)
    assert views.task("Registry view")["result"]["certificates"][0]["hosts"]["kvm1"]["status"] == "UPLOADED"

    checked = run_playbook(UPLOAD, inventory=inventory, extra_vars=upload_vars, check=True)
    assert {h: s["drift"] for h, s in summary_of(checked).items()} == {"kvm1": True, "kvm2": False, "kvm3": False}
    assert "fleet-ca" not in keystore_entries(hosts_dir / "kvm1" / "cloud.jks")

    healed = run_playbook(UPLOAD, inventory=inventory, extra_vars=upload_vars)
    assert summary_of(healed)["kvm1"]["drift"] is True and summary_of(healed)["kvm1"]["keystore"] == "imported"
    assert keystore_entries(hosts_dir / "kvm1" / "cloud.jks")["fleet-ca"].fingerprint == fingerprint_of(ca_pem)
    steady = run_playbook(UPLOAD, inventory=inventory, extra_vars=upload_vars)
    assert steady.changed_tasks() == []
    assert not any(s["drift"] for s in summary_of(steady).values())

    # Revoke everywhere; again changes nothing; the agent key survived every step on every host.
    revoke = run_playbook(REVOKE, inventory=inventory, extra_vars={"certificate_alias": "fleet-ca"})
    assert {h: s["status"] for h, s in summary_of(revoke).items()} == {"kvm1": "REVOKED", "kvm2": "REVOKED", "kvm3": "REVOKED"}
    assert registry_hosts(registry, "fleet-ca") == {"kvm1": "REVOKED", "kvm2": "REVOKED", "kvm3": "REVOKED"}
    again = run_playbook(REVOKE, inventory=inventory, extra_vars={"certificate_alias": "fleet-ca"})
    assert again.changed_tasks() == []
    for name in ("kvm1", "kvm2", "kvm3"):
        entries = keystore_entries(hosts_dir / name / "cloud.jks")
        assert "fleet-ca" not in entries and entries[HOST_KEY_ALIAS].entry_type == "private_key"


def test_invalid_certificate_stops_the_upload_before_any_host(run_playbook, tmp_path):
    hosts_dir = tmp_path / "hosts"
    make_agent_dir(hosts_dir / "kvm1")
    registry = tmp_path / "registry.json"
    expired = make_ca_certificate_pem(not_before=days_from_now(-90), not_after=days_from_now(-1))
    run = run_playbook(UPLOAD, inventory=multi_host_inventory(hosts_dir, registry, ["kvm1"]), expect_rc=2,
                       extra_vars={"certificate_alias": "old-ca", "certificate_content": expired})
    failed = run.failed_tasks()
    assert [r["task"] for r in failed] == ["directdownload.kvm.certificates : Validate and record in the registry: old-ca"]
    assert "expired on" in failed[0]["result"]["msg"]
    assert run.tasks("directdownload.kvm.certificates : Import or revoke on the KVM host: old-ca") == []
    assert not registry.exists() or "old-ca" not in json.loads(registry.read_text())["certificates"]
    assert not (hosts_dir / "kvm1" / "trust.d").exists()
