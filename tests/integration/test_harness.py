# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The integration harness itself: a real ansible-playbook run and its captured results."""

from __future__ import annotations

PING_AND_FRIENDS = """
- hosts: all
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:

    - name: Report a change
      ansible.builtin.command: "true"
      changed_when: true

    - name: Skipped on purpose
      ansible.builtin.debug:
        msg: never
      when: false

    - name: Fail but carry on
      ansible.builtin.fail:
        msg: expected failure
      ignore_errors: true
"""


def test_ping_and_statuses_are_captured(run_playbook, venv_python):
    run = run_playbook(PING_AND_FRIENDS)

    assert run.rc == 0
    ping = run.task("Ping")
    assert ping["host"] == "localhost"
    assert ping["action"] == "ansible.builtin.ping"
    assert ping["status"] == "ok"
    assert ping["result"]["ping"] == "pong"
    assert [r["task"] for r in run.changed_tasks()] == ["Report a change"]
    assert run.task("Skipped on purpose")["status"] == "skipped"
    failed = run.task("Fail but carry on")
    assert failed["status"] == "failed" and failed["ignored"] is True
    assert run.failed_tasks() == []
    assert "PLAY RECAP" in run.stdout


def test_check_mode_extra_vars_and_expected_failure(run_playbook):
    play = [{
        "hosts": "all",
        "gather_facts": False,
        "tasks": [{"name": "Fail with a var", "ansible.builtin.fail": {"msg": "{{ reason }}"}}],
    }]
    run = run_playbook(play, extra_vars={"reason": "told to"}, check=True, expect_rc=2)

    record = run.task("Fail with a var")
    assert record["status"] == "failed"
    assert record["result"]["msg"] == "told to"
    assert len(run.failed_tasks()) == 1


def test_run_module_uses_venv_python(run_module, venv_python):
    record, run = run_module("ansible.builtin.setup", {"gather_subset": ["!all", "!min", "python"]})

    assert run.rc == 0
    assert record["status"] == "ok"
    assert record["result"]["ansible_facts"]["ansible_python"]["executable"] == venv_python


def test_role_tasks_are_found_by_bare_and_full_name(run_playbook, tmp_path):
    tasks_dir = tmp_path / "roles" / "harness_role" / "tasks"
    tasks_dir.mkdir(parents=True)
    (tasks_dir / "main.yml").write_text("- name: Inside the role\n  ansible.builtin.debug:\n    msg: hi\n")
    playbook = tmp_path / "roles_play.yml"
    playbook.write_text("- hosts: all\n  gather_facts: false\n  roles:\n    - harness_role\n")

    run = run_playbook(str(playbook))

    record = run.task("Inside the role")
    assert record is run.task("harness_role : Inside the role")
    assert record["role"] == "harness_role" and record["name"] == "Inside the role"
