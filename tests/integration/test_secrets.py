# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A pre-signed URL and a proxy with credentials through a real ``ansible-playbook -vvv`` run: what reaches the
operator's screen and AWX job output (the echoed ``invocation`` included), and whether results stay intact.

What Ansible logs to the host's journal/syslog cannot be read back here; ``tests/unit/plugins/modules/
test_module_secrets.py`` checks that text with the real ``AnsibleModule``."""

from __future__ import annotations

import json

from ansible_collections.directdownload.kvm.tests.unit.lib import images
from ansible_collections.directdownload.kvm.tests.unit.lib.servers import ImageServer

SIGNATURE = "c2lnbmF0dXJlLXZhbHVlLTk4NzY1NDMyMQ"
PROXY_PASSWORD = "pr0xy-pa55-77aa"
SIZE = 16 * images.MiB  # 8 digits, as long as a signature: the old masking turned it into a no_log placeholder


def test_signed_url_and_proxy_credentials_at_vvv(run_playbook, www, pool):
    images.sparse_raw(www / "disk.raw", SIZE)
    with ImageServer(www) as srv:
        url = srv.url("disk.raw") + "?limit=%d&X-Amz-Signature=%s" % (SIZE, SIGNATURE)
        common = {"url": url, "proxy": "http://ops:%s@127.0.0.1:9/" % PROXY_PASSWORD, "use_proxy": False}
        play = [{"hosts": "all", "gather_facts": False, "tasks": [
            {"name": "Probe", "directdownload.kvm.url_check": dict(common, format="raw")},
            {"name": "Download", "directdownload.kvm.download": dict(common, pool_path=str(pool), format="raw")},
        ]}]
        run = run_playbook(play, extra_args=("-vvv",))
    probe, fetched = run.task("Probe"), run.task("Download")
    assert fetched["status"] == "changed", fetched["result"]
    shown = run.stdout + run.stderr + json.dumps(run.results)
    assert SIGNATURE not in shown and PROXY_PASSWORD not in shown
    assert "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" not in shown
    assert probe["result"]["size"] == SIZE
    assert fetched["result"]["size"] == SIZE and fetched["result"]["bytes_downloaded"] == SIZE
    echoed = fetched["result"]["invocation"]["module_args"]
    assert "limit=%d" % SIZE in echoed["url"] and "X-Amz-Signature=********" in echoed["url"]
    assert echoed["proxy"] == "http://ops:********@127.0.0.1:9/"
