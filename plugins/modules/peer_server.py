#!/usr/bin/python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: peer_server
short_description: Serve verified template copies of a KVM host to the other hosts of a deployment (fan-out)
version_added: 0.2.0
description:
  - Starts or stops a small HTTPS file server on a KVM host that already holds verified copies of the templates
    being deployed, so that the other hosts fetch them from it (and from other peers) instead of from the origin.
    See C(docs/fanout.md).
  - Read-only. It serves only the files named in O(files), by their file name, and nothing else. There is no
    listing, and a path with C(..), percent-encoding, an extra C(/) or any other name is answered 404.
  - Each file is opened without following symbolic links and must be the same regular file (device, inode, size
    and modification time) as when the server started. A file replaced since then (by a symbolic link, another
    file renamed over it, or a change in place) is answered 410, so receivers set this peer aside.
  - Every request must carry the per-deployment O(token) in its C(Authorization) header (C(Bearer) scheme). Without it the
    answer is 401, with a wrong one 403, before anything else is looked at. The token is compared in constant time
    and is never logged or printed. The server process gets it from a file (mode 0600) in O(state_dir), not on its
    command line or in its environment.
  - TLS only, with a self-signed certificate made for this deployment (EC P-256, key mode 0600 in O(state_dir)).
    Receivers pin it by the SHA-256 RV(fingerprint) this module returns (M(directdownload.kvm.download) options
    O(directdownload.kvm.download#module:peer_fingerprint) and O(directdownload.kvm.download#module:peer_token)).
  - Serves C(GET) and C(HEAD), with a single byte C(Range) (206 and C(Content-Range); 416 past the end),
    C(Accept-Ranges), C(ETag) (the C(sha256) digest of a file when given, else inode, size and time) and C(If-Range),
    so receivers can resume and fetch pieces from several peers at once. At most O(max_uploads) bodies go out at
    once; beyond that the answer is 503 with C(Retry-After).
  - The server runs in the background with the module's Python and exits by itself O(lifetime) seconds after it
    started. Its PID file, log and private state are in O(state_dir).
  - O(state=started) with a server already serving the same files with the same token, address, port, cap and
    lifetime changes nothing and returns the same fingerprint. Any other server of O(state_dir) (another
    deployment, or one left by a killed play) is stopped first, and a new certificate is made.
  - O(state=stopped) stops every server of O(state_dir). It finds them by the PID file and by their command line
    in C(/proc) (a server whose PID file was lost is found too) and checks C(/proc/PID/cmdline) is really this
    server for this state directory before it signals anything. It then removes the deployment's token, key,
    certificate and configuration; the access log stays. Run it at the end of the play, also when the play fails
    (an C(always) section), and at the start of the next one.
extends_documentation_fragment:
  - directdownload.kvm._attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports whether a server would be started or stopped, and starts, stops and writes nothing.
  diff_mode:
    support: full
    details:
      - Shows whether a server is running, its PID and the files it serves, before and after.
  idempotent:
    support: full
    details:
      - A second O(state=started) with the same options keeps the running server; a second O(state=stopped)
        finds nothing to do.
requirements:
  - Python C(cryptography) on the KVM host (for the certificate), with O(state=started).
  - Linux (C(/proc)).
options:
  state:
    description:
      - V(started) makes sure a server serves O(files); V(stopped) stops it and removes its secrets.
    type: str
    default: started
    choices: [started, stopped]
  files:
    description:
      - The files to serve, each an absolute path of a regular file (not a symbolic link), or a dictionary.
      - A dictionary has C(path), and optionally C(name) (the name in the URL; default the file name of C(path)) and
        C(sha256) (the verified digest, 64 hex digits, used as the C(ETag)).
      - Names must be unique and use letters, digits, C(.), C(_), C(+) and C(-) only.
      - Required with O(state=started).
    type: list
    elements: raw
  token:
    description:
      - The per-deployment bearer token, at least 16 characters, no white space. Generate a random one per
        deployment (for example C(lookup('ansible.builtin.password', '/dev/null', length=32, chars=['ascii_letters',
        'digits']))) and give the same to the receivers.
      - Required with O(state=started).
    type: str
  address:
    description:
      - The address to listen on. The deploy role passes C(directdownload_peer_address) (default C(ansible_host)).
      - Required with O(state=started).
    type: str
  port:
    description:
      - The TCP port to listen on. The deploy role passes C(directdownload_peer_port).
    type: int
    default: 8473
  max_uploads:
    description:
      - How many bodies the server sends at once. More requests get 503 with C(Retry-After).
    type: int
    default: 4
  lifetime:
    description:
      - Seconds after which the server exits by itself, whatever happens to the play.
    type: int
    default: 3600
  state_dir:
    description:
      - The peer's private state directory (mode 0700, created when missing). It holds the token, key and certificate,
        the PID file, the access log, and the copy of the server's code that runs there.
      - Use one state directory per concurrent deployment on a host.
    type: path
    default: /var/lib/directdownload/peer
notes:
  - The server is single-purpose and short-lived. It is not a general file server; it does not follow the
    agent settings file.
  - Put the O(token) in a variable with C(no_log) tasks around it, or in Ansible Vault; this module marks it
    C(no_log).
seealso:
  - module: directdownload.kvm.download
  - name: Fan-out design
    description: How peers serve and receivers pin, and the wave shape the deploy role uses.
    link: https://github.com/directdownload/kvm/blob/main/docs/fanout.md
"""

EXAMPLES = r"""
- name: Serve the verified template to the other hosts of this deployment
  directdownload.kvm.peer_server:
    files:
      - path: /var/lib/libvirt/images/debian-12.qcow2
        sha256: "{{ template_sha256 }}"
    token: "{{ fanout_token }}"
    address: "{{ directdownload_peer_address | default(ansible_host) }}"
    port: "{{ directdownload_peer_port | default(8473) }}"
    lifetime: 1800
  register: peer

- name: A receiver fetches the copy from that peer, pinned and authenticated
  directdownload.kvm.download:
    url: "{{ hostvars[groups['kvm'][0]].peer.urls['debian-12.qcow2'] }}"
    url_is_peer: true
    peer_token: "{{ fanout_token }}"
    peer_fingerprint: "{{ hostvars[groups['kvm'][0]].peer.fingerprint }}"
    checksum: "sha256:{{ template_sha256 }}"
    pool_path: /var/lib/libvirt/images

- name: Stop the peer server at the end of the play, also when it failed
  directdownload.kvm.peer_server:
    state: stopped
"""

RETURN = r"""
fingerprint:
  description:
    - The SHA-256 fingerprint of the server's certificate (colon-separated hex), for the receivers to pin.
    - V(null) in check mode when a new server would start.
  returned: O(state=started)
  type: str
  sample: "3A:1F:...:9C"
urls:
  description: The URL of each served file, by name.
  returned: O(state=started)
  type: dict
  sample: {"debian-12.qcow2": "https://10.0.0.11:8473/debian-12.qcow2"}
pid:
  description: The server's process ID (V(null) in check mode when a new server would start).
  returned: O(state=started)
  type: int
  sample: 4242
address:
  description: The address the server listens on.
  returned: O(state=started)
  type: str
  sample: 10.0.0.11
port:
  description: The port the server listens on.
  returned: O(state=started)
  type: int
  sample: 8473
expires_at:
  description: When the server exits by itself (seconds since the epoch).
  returned: O(state=started)
  type: float
  sample: 1767300000.5
stopped:
  description: The process IDs of the servers stopped (with O(state=started), servers of another deployment).
  returned: always
  type: list
  elements: int
  sample: [4242]
removed:
  description: The private files removed from O(state_dir).
  returned: O(state=stopped)
  type: list
  elements: str
  sample: [config.json, token, cert.pem, key.pem]
state_dir:
  description: The state directory.
  returned: always
  type: str
  sample: /var/lib/directdownload/peer
msg:
  description: What happened.
  returned: always
  type: str
  sample: started the peer server (1 file(s), 3600s)
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.directdownload.kvm.plugins.module_utils import _peer


def _diff(before, after):
    return {"before": before, "after": after}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="started", choices=["started", "stopped"]),
            files=dict(type="list", elements="raw"),
            token=dict(type="str", no_log=True),
            address=dict(type="str"),
            port=dict(type="int", default=_peer.DEFAULT_PORT),
            max_uploads=dict(type="int", default=_peer.DEFAULT_MAX_UPLOADS),
            lifetime=dict(type="int", default=_peer.DEFAULT_LIFETIME),
            state_dir=dict(type="path", default=_peer.DEFAULT_STATE_DIR),
        ),
        required_if=[("state", "started", ("files", "token", "address"))],
        supports_check_mode=True,
    )
    params = module.params
    state_dir = params["state_dir"]
    try:
        before = _peer.status(state_dir)
        if params["state"] == "stopped":
            result = _peer.stop(state_dir, check_mode=module.check_mode)
            after = {"running": False, "pid": None}
        else:
            if params["max_uploads"] < 1:
                module.fail_json(msg="max_uploads must be at least 1", state_dir=state_dir)
            result = _peer.start(state_dir, params["address"], params["port"], params["files"], params["token"],
                                 max_uploads=params["max_uploads"], lifetime=params["lifetime"],
                                 check_mode=module.check_mode)
            after = {"running": True, "pid": result["pid"], "files": sorted(result["urls"])}
    except _peer.PeerError as exc:
        module.fail_json(msg=exc.msg, state_dir=state_dir, **exc.details)
    except OSError as exc:
        module.fail_json(msg="I/O error: %s" % exc, state_dir=state_dir)
    if module._diff:
        result["diff"] = _diff({"running": before["running"], "pid": before["pid"]}, after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
