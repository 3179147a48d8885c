#!/usr/bin/python
# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: download
short_description: Download a VM image straight into a KVM primary storage pool, verified and installed atomically
version_added: 0.1.0
description:
  - Downloads a template or ISO from O(url) (HTTP, HTTPS, NFS or a Metalink document) directly into a primary
    storage pool directory on the KVM host, as Apache CloudStack's direct download (bypass secondary storage) does.
  - Bytes are hashed while they stream to a hidden C(.NAME.part) file in the pool (one pass, constant memory,
    all-zero blocks left as holes so sparse images stay sparse), then verified, extracted when compressed (detected
    by content; gzip, bzip2, xz, zip with one member, zstd), inspected with C(qemu-img info) and renamed into place.
  - Every downloaded image is untrusted and passes a safety gate before it reaches the pool (see the
    C(Safety gate) section of C(docs/download.md)). The format is established from the bytes (a declared O(format)
    that differs is refused), C(qemu-img) never probes and only reads a qcow2 that names no other file, only qcow2,
    raw and ISO images install, a qcow2 with a backing file or an external data file is refused (CVE-2024-50386
    class), and sizes and decompression are bounded by O(max_size), O(max_virtual_size) and O(max_expansion). ISOs
    are never extracted.
  - On any failure the pool holds no new image. A transfer that failed on the network keeps its C(.part) and a
    sidecar C(.NAME.part.json); the next run resumes it with C(Range) and C(If-Range), or starts over when the
    server cannot resume or the file changed. The sidecar also shows progress (bytes, total, rate, ETA).
  - An installed image is recognised by its record C(.NAME.ddinfo.json) (size, mtime, inode, checksums, URL), so
    a second run transfers nothing and hashes nothing.
  - Concurrent runs for the same image in the same pool download it once; the others wait and then report it
    installed.
extends_documentation_fragment:
  - directdownload.kvm._attributes
  - directdownload.kvm._attributes.FLOW
  - directdownload.kvm._transport
  - directdownload.kvm._limits
attributes:
  action:
    support: full
    details:
      - The action plugin runs the module on the host as an async job, prints a progress line (host, percent, bytes
        done of total, rate, ETA, source) every C(directdownload_progress_interval) seconds (default V(5); V(0)
        turns it off), and returns the module's own result. See the notes.
  async:
    support: full
    details:
      - With the task's own C(async), the module runs as that job, as any module does (no progress lines).
  check_mode:
    details:
      - Check mode decides from the pool and the image record alone, without network access. When an image exists
        without a valid record and a checksum is given, the file is hashed once to decide.
  diff_mode:
    details:
      - Shows the facts of the destination file before, and what it will be after.
requirements:
  - Python C(lxml) for Metalink sources.
  - C(qemu-img) (package C(qemu-utils) on Debian and Ubuntu, C(qemu-img) on RHEL).
  - Python C(zstandard) to extract zstd images (optional).
  - The libvirt Python bindings or C(virsh) when O(pool) names a libvirt pool.
  - C(nfs-common) (kernel mount) or C(libnfs-utils) (userspace) for NFS sources.
options:
  url:
    description:
      - Where the image is. Schemes C(http), C(https) and C(nfs) (C(nfs://server[:port]/export/path/file[?version=3|4])).
      - A URL whose path ends in C(.metalink) or C(.meta4), or whose server answers with a Metalink content type, is
        read as a Metalink document listing mirrors.
      - Credentials in the URL are never shown; they are redacted in every message and result.
      - Never logged on the host (journal, syslog). In results, the echoed module arguments included, its password
        and the values of its secret query parameters (signatures, tokens, keys) are masked; see C(docs/download.md).
    type: str
    required: true
  checksum:
    description:
      - The expected digest of the bytes as downloaded (before extraction).
      - CloudStack form C({SHA-256}hex), Ansible form C(sha256:hex), or bare hex (see O(checksum_algorithm)).
        Algorithms MD5, SHA-1, SHA-224, SHA-256, SHA-384 and SHA-512; hex in upper or lower case. A pasted line of
        C(sha256sum) output (C(hex  file)) counts as bare hex; a BSD line (C(SHA256 (file\) = hex)) names its
        algorithm.
      - C(<algorithm>:<URL>), as in M(ansible.builtin.get_url), for example
        C(sha256:https://images.example.com/SHA256SUMS), reads a checksum file (GNU C(sha256sum) or BSD format,
        or a file with a single digest such as C(image.qcow2.sha256)) and takes the line for the file name of O(url).
        The file is read over the same transport as the image (same O(headers), O(url_username), CA, proxy and
        timeouts), also in check mode, and may be at most 1 MiB.
      - Empty means no verification; a SHA-256 digest is still computed and returned.
      - On a mismatch the image is downloaded again O(mismatch_retries) times (once by default), then the task fails
        showing the expected and actual digests, with nothing left in the pool.
    type: str
    default: ''
  checksum_algorithm:
    description:
      - The algorithm of a bare hex O(checksum). CloudStack reads a bare hex digest as MD5, which is the default.
    type: str
    default: md5
    choices: [md5, sha1, sha224, sha256, sha384, sha512]
  pool_path:
    description:
      - The directory of the primary storage pool. It must exist.
      - Exactly one of O(pool_path) and O(pool) is required.
    type: path
  pool:
    description:
      - The name of an active libvirt storage pool of type C(dir), C(fs) or C(netfs). Its target directory is used
        and the pool is refreshed after the install, so C(virsh vol-list) shows the image at once.
    type: str
  libvirt_uri:
    description:
      - The libvirt connection used with O(pool).
    type: str
    default: qemu:///system
  name:
    description:
      - The file name of the image in the pool. A plain name, no directories.
      - At most the pool file system's name limit minus 26 characters (229 on ext4 and XFS), the room its hidden
        helper files (C(.NAME.ddinfo.json) and its temporary file) need; a longer name is refused up front.
      - Default is the last segment of the URL path without a compression suffix (C(.gz), C(.bz2), C(.xz), C(.zip),
        C(.zst)) or a Metalink suffix.
    type: str
  format:
    description:
      - The expected image format, V(qcow2), V(raw) or V(iso), in any case (V(QCOW2) as CloudStack writes it is
        V(qcow2)). When given and the image is something else, the task fails.
      - The format is always established from the bytes (the qcow2 magic, the signatures of the formats C(qemu-img)
        probes, the ISO 9660 signature; none of them is V(raw)), never from this option or the name. V(raw) hides
        nothing - a "raw" image whose bytes are a qcow2, a VMDK descriptor or a LUKS header is refused, because
        the next C(qemu-img convert) without C(-f) would read it as that.
    type: str
  extract:
    description:
      - Extract a compressed image (detected by content, not by suffix). ISOs are never extracted.
    type: bool
    default: true
  retries:
    description:
      - How many more attempts after a failed transfer that may succeed later (HTTP 408, 429, 5xx, connection
        refused or reset, timeouts, truncated body, a connection closed by O(lowest_speed)). Each attempt resumes
        where the previous one stopped. HTTP 400, 401, 403, 404, 410 (and other 4xx) are not retried. Bounded by
        O(timeout) as well. Default from the agent settings file, else 3.
      - From 0 to 100.
    type: int
  retry_delay:
    description:
      - Seconds before the first retry; doubled for each further one, at most 30, with jitter (a random point in
        the upper half of the delay). A C(Retry-After) answer (seconds or an HTTP date) is waited for instead when
        it is longer and fits O(timeout) (without O(timeout), at most 600 seconds); the wait is logged.
      - From 0 to 3600.
    type: float
    default: 1.0
  resume:
    description:
      - Resume an interrupted transfer from its C(.part) file. When false a leftover C(.part) is discarded.
    type: bool
    default: true
  force:
    description:
      - Download and replace the image even when it is installed and current.
    type: bool
    default: false
  connections:
    description:
      - For a Metalink source or a URL with O(mirrors), whose sources accept ranges, how many parallel connections to
        split the download over (several sources at once, each range verified by piece hashes when the Metalink has
        them). V(1) downloads from one source at a time with failover.
      - From 1 to 16. A Metalink 3 C(maxconnections) caps it for the file and per server.
    type: int
    default: 1
  mirrors:
    description:
      - Further URLs of the same file as O(url) (http, https or nfs), tried in turn when a source fails, and with
        O(connections) above 1 downloaded from in parallel ranges.
      - Each item is a URL, or a dict with C(url) and optional C(priority) (1 to 999999, lower first, after O(url))
        and C(location) (a country code, ordered by O(metalink_locations)).
      - The same file means the same bytes; give a O(checksum) to verify bytes joined from several sources. A
        source whose bytes fail the checksum is not used again for this download.
      - A dict may also carry C(peer=true) and C(fingerprint), for a fan-out peer (an https URL from
        RV(directdownload.kvm.peer_server#module:urls)). A peer is reached with O(peer_token) and its own
        C(fingerprint) (or O(peer_fingerprint)), never with the origin's headers, credentials or proxy. A peer
        that answers 401, 403, 404 or 410, or whose certificate is not the pinned one, is set aside; a busy one
        (503) is asked again after its C(Retry-After). When bytes from the origin and from peers fail the
        checksum together, the peers are the sources set aside.
      - Never logged; in results only their passwords and signatures are masked, as for O(url).
    type: list
    version_added: 0.2.0
    elements: raw
    default: []
  block_size:
    description:
      - The I/O block size in bytes. All-zero blocks of this size are skipped (left as holes). 64 KiB was measured
        fastest; change it only after measuring on your kernel.
    type: int
  progress_interval:
    description:
      - Seconds between updates of the progress sidecar C(.NAME.part.json).
    type: float
    default: 2.0
  max_size:
    description:
      - The largest file accepted, in bytes or with a unit (V(50G), V(2T)), for the file as downloaded and for what
        extraction produces (its apparent size). A larger image is refused, nothing is kept; a server that announces
        a larger size is refused before the transfer.
      - Default 1 TiB. CloudStack's own C(max.template.iso.size) defaults to 50 GiB; set the size of the template
        (with a margin) when it is known.
    type: bytes
  max_virtual_size:
    description:
      - The largest virtual disk accepted, in bytes or with a unit, from the qcow2 header (for raw and ISO, the file
        size). Default 16 TiB.
    type: bytes
  max_expansion:
    description:
      - Extraction may produce at most this many times the compressed size (and always at least 64 MiB). A
        decompression bomb (kilobytes that expand to gigabytes) is refused as soon as it passes the ratio, with
        nothing kept. Default 100. Raise it for very sparse raw images (mostly holes) that compress better.
    type: float
  allow_encrypted:
    description:
      - Accept an encrypted qcow2 image. The hosts need its key to use it; by default it is refused.
    type: bool
    default: false
  mode:
    description:
      - The permissions of the installed image, as in M(ansible.builtin.file) (octal like V('0640'), or symbolic
        like V(u=rw,g=r,o=)). Quote octal values.
      - When omitted, a newly installed image gets V('0644'), downloaded or extracted alike, and an installed
        image keeps its mode.
      - Changing only O(mode), O(owner) or O(group) of an installed image changes nothing else (nothing is
        downloaded); the task reports V(changed) with a diff.
    type: raw
  owner:
    description:
      - The user that should own the installed image (a name or a uid). Set after the image is renamed into place.
        Root needed to change it.
    type: str
  group:
    description:
      - The group of the installed image (a name or a gid), set like O(owner).
    type: str
  peer_token:
    description:
      - The per-deployment bearer token of the fan-out peers (M(directdownload.kvm.peer_server)). Sent in
        the C(Authorization) header (C(Bearer) scheme) to peer sources only, never to the origin.
    type: str
    version_added: 0.2.0
  peer_fingerprint:
    description:
      - The SHA-256 fingerprint of the peers' certificate (RV(directdownload.kvm.peer_server#module:fingerprint)),
        colon-separated or plain hex. A peer source is accepted only when its certificate has this fingerprint,
        instead of CA and host name validation; the origin is validated as usual. Needs O(peer_token).
      - The fingerprint of the peer O(url) with O(url_is_peer=true), and of every peer source that does not name
        its own.
    type: str
    version_added: 0.2.0
  url_is_peer:
    description:
      - O(url) is a peer (a URL from RV(directdownload.kvm.peer_server#module:urls)), not the origin. It is
        reached with O(peer_token) and O(peer_fingerprint) and none of the origin's headers, credentials, CA
        options or proxy. Needs O(peer_token) and O(peer_fingerprint).
    type: bool
    version_added: 0.2.0
    default: false
notes:
  - "Progress in the play output: while the image downloads, a line such as
    C([kvm1] debian-12.qcow2: 45.2%, 1.1 GiB of 2.4 GiB, 112.0 MB/s, ETA 12 s, from https://mirror/debian-12.qcow2)
    appears every C(directdownload_progress_interval) seconds (a variable, or the controller's environment variable
    E(DIRECTDOWNLOAD_PROGRESS_INTERVAL)), default V(5); V(0) runs the module without a job and prints nothing. The
    module runs as an async job for that; in check mode, with the task's own C(async), or on a connection without
    async jobs it runs as usual."
  - Ctrl-C of C(ansible-playbook) stops the download at once (the plugin sends the signal on to the module). One
    whose controller stops watching otherwise (a killed C(ansible-playbook), a lost connection) stops by itself
    after C(directdownload_progress_lease) seconds (default 60). Both keep the C(.part) for the next run.
  - On the host, the sidecar C(.NAME.part.json) shows the same figures (and a C(progress) line); it is mode 0640,
    readable by the group C(progress_group) of the agent settings (the agent role's C(agent_progress_group)), for
    example C(watch cat /var/lib/libvirt/images/.NAME.part.json).
  - The checksum covers the bytes as downloaded, so the checksum of a compressed image is the checksum of the
    compressed file, as in CloudStack.
  - SIGINT (Ctrl-C) or SIGTERM to the module process stops the download, keeps the C(.part) and its sidecar, and
    fails with C(interrupted ... at 41% (...); run again to resume); the next run resumes with C(Range). SIGKILL
    keeps them too (without a result). See C(docs/download.md) for what each stage leaves.
seealso:
  - module: directdownload.kvm.url_check
  - module: directdownload.kvm.template
  - module: ansible.builtin.get_url
"""

EXAMPLES = r"""
- name: Download a qcow2 template into a pool directory, checked with SHA-256
  directdownload.kvm.download:
    url: https://images.example.com/debian-12.qcow2
    checksum: "{SHA-256}0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
    pool_path: /var/lib/libvirt/images

- name: Download a compressed image into the libvirt pool "primary", named after the template
  directdownload.kvm.download:
    url: https://images.example.com/alma-9.qcow2.xz?token=secret
    checksum: sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0
    pool: primary
    name: 3f6c2a7e-8d41-4b7e-9a51-0f2f0d5e2b11
    format: qcow2
    headers:
      Authorization: "Bearer {{ image_token }}"

- name: Download an ISO from NFS
  directdownload.kvm.download:
    url: nfs://nfs.example.com/export/isos/netinst.iso?version=4
    pool_path: /var/lib/libvirt/images
    format: iso

- name: Download from the mirrors of a Metalink, two connections at once
  directdownload.kvm.download:
    url: https://images.example.com/debian-12.qcow2.meta4
    pool_path: /var/lib/libvirt/images
    connections: 2

- name: Download from two further mirrors of the same file, in parallel ranges
  directdownload.kvm.download:
    url: https://images.example.com/debian-12.qcow2
    mirrors:
      - https://mirror-a.example.com/debian-12.qcow2
      - url: https://mirror-b.example.com/debian-12.qcow2
        priority: 2
        location: de
    checksum: "sha256:{{ debian_sha256 }}"
    pool_path: /var/lib/libvirt/images
    connections: 4

- name: A large raw image, with the caps of the safety gate raised for it
  directdownload.kvm.download:
    url: https://images.example.com/warehouse-4t.raw.zst
    pool_path: /var/lib/libvirt/images
    format: raw
    max_size: 4T
    max_virtual_size: 4T
    max_expansion: 5000

- name: Verify against the SHA256SUMS file published next to the image, as get_url does
  directdownload.kvm.download:
    url: https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    checksum: sha256:https://cloud.debian.org/images/cloud/bookworm/latest/SHA256SUMS
    pool_path: /var/lib/libvirt/images
    mode: "0640"
    owner: libvirt-qemu
    group: kvm

- name: A mirror behind HTTP Basic authentication
  directdownload.kvm.download:
    url: https://mirror.example.com/private/alma-9.qcow2
    checksum: sha256:https://mirror.example.com/private/alma-9.qcow2.sha256
    url_username: deploy
    url_password: "{{ mirror_password }}"
    force_basic_auth: true
    pool_path: /var/lib/libvirt/images

- name: Spare a shared origin - at most 50 MiB/s, recycle connections slower than 1 MiB/s for 20 s, give up after 2 h
  directdownload.kvm.download:
    url: https://images.example.com/debian-12.qcow2
    checksum: sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0
    pool_path: /var/lib/libvirt/images
    max_rate: 50M
    lowest_speed: 1M
    lowest_speed_time: 20
    timeout: 7200
    mismatch_retries: 0

- name: A long download, with a progress line every 30 seconds in the play output
  directdownload.kvm.download:
    url: https://images.example.com/big.raw
    pool_path: /var/lib/libvirt/images
  vars:
    directdownload_progress_interval: 30
"""

RETURN = r"""
path:
  description: The installed image.
  returned: success
  type: str
  sample: /var/lib/libvirt/images/debian-12.qcow2
name:
  description: The file name of the image in the pool.
  returned: success
  type: str
  sample: debian-12.qcow2
size:
  description: The apparent size of the installed file in bytes.
  returned: success
  type: int
  sample: 2147483648
disk_usage:
  description: The bytes the installed file takes on disk (less than RV(size) when it is sparse).
  returned: success
  type: int
  sample: 537395200
virtual_size:
  description: The virtual disk size in bytes, from C(qemu-img info) (for an ISO, its size).
  returned: success
  type: int
  sample: 21474836480
format:
  description: The image format; when the safety gate refused the image, the format its bytes showed.
  returned: success, or when the image was refused
  type: str
  sample: qcow2
checksum:
  description:
    - The digest verified over the downloaded bytes, in the form O(checksum) was written (C({SHA-256}hex),
      C(sha256:hex), or bare hex; C(sha256:hex) for a checksum file URL), hex in lower case, so that it compares
      equal to a lower-case O(checksum).
    - Without O(checksum), the SHA-256 computed while downloading (or recorded at install), as C({SHA-256}hex).
  returned: success
  type: str
  sample: "{SHA-256}0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
url:
  description: O(url) as given, credentials redacted, as in M(directdownload.kvm.url_check).
  returned: always
  type: str
  sample: https://images.example.com/debian-12.qcow2
final_url:
  description:
    - The URL that served the bytes (after redirects; the mirror for a Metalink), credentials redacted, as
      RV(directdownload.kvm.url_check#module:final_url). For an image already installed, the one recorded at install.
  returned: success
  type: str
  sample: https://mirror-a.example.com/debian-12.qcow2
bytes_downloaded:
  description: Bytes received by this run (0 when the image was already installed); on failure, the bytes
    transferred in all (every attempt and every download after a checksum mismatch).
  returned: success and failure (not in check mode)
  type: int
  sample: 2147483648
resumed_from:
  description: The byte offset a resumed transfer started from, 0 when none was resumed.
  returned: success
  type: int
  sample: 0
elapsed:
  description: Seconds the task took.
  returned: success
  type: float
  sample: 3.2
extracted_from:
  description: The compression of the downloaded bytes that was extracted (C(gzip), C(bzip2), C(xz), C(zip),
    C(zstd)), or null when the image was installed as downloaded.
  returned: when bytes were transferred
  type: str
  sample: gzip
attempts:
  description: Transfer attempts made (0 when nothing was transferred).
  returned: success
  type: int
  sample: 1
rate:
  description: Average transfer rate of this run in bytes per second.
  returned: when bytes were transferred
  type: int
  sample: 671088640
restarted_from:
  description: The byte offset at which the server refused to resume (no ranges, or the file changed), so the
    transfer started again from byte 0 (once per run); null when that did not happen.
  returned: success
  type: int
  sample: null
mirror_errors:
  description: For a Metalink, the mirrors that failed before one served the image, with their errors.
  returned: success
  type: list
  elements: dict
  sample: [{"url": "http://mirror-b.example.com/debian-12.qcow2", "error": "HTTP 404"}]
metalink_notes:
  description:
    - For a Metalink, what its parser set aside (unknown hash types, malformed weaker hashes, other schemes,
      torrents, unusable piece lists, a document without any hash), one sentence each. Each is also shown as a
      warning.
  returned: when O(url) is a Metalink
  type: list
  elements: str
  sample: ["ignored a hash of unknown type 'adler32'", "skipped 1 URL(s) with scheme 'ftp'"]
sources:
  description:
    - One entry per source of the file (the URL, a Metalink's mirrors, or O(mirrors)), URL redacted, with the bytes it
      served in this run, the pieces of it rejected by a piece hash, and the error that set it aside (null if none).
    - A source that served a corrupt piece or bytes failing the checksum is named here, with that error.
    - C(peer) is true for a fan-out peer (a O(mirrors) entry with C(peer=true)), so origin and peer bytes can be
      told apart.
  returned: when the image was downloaded
  type: list
  elements: dict
  sample: [{"url": "http://mirror-a.example.com/debian-12.qcow2", "bytes": 536870912, "pieces_rejected": 0,
            "error": null, "peer": false}]
pool:
  description: The libvirt pool that was refreshed, when O(pool) was given.
  returned: when O(pool) is given
  type: str
  sample: primary
rule:
  description:
    - When the safety gate refused the image, the rule that refused it (each is listed in the C(Safety gate)
      section of C(docs/download.md)), for example V(backing_file), V(data_file), V(format), V(format_mismatch),
      V(one_format), V(encrypted), V(max_size), V(max_virtual_size), V(max_expansion), V(trailing_data),
      V(corrupt), V(qemu_img), V(zip_one_member), V(zip_member_name).
  returned: when the image was refused
  type: str
  sample: backing_file
backing_file:
  description: The backing file a refused qcow2 names (non-printable characters escaped).
  returned: when the image was refused for its backing file
  type: str
  sample: /etc/shadow
expected:
  description: On a checksum mismatch, the digest expected, C({ALG}hex).
  returned: failure (checksum mismatch)
  type: str
  sample: "{SHA-256}0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
actual:
  description: On a checksum mismatch, the digest of the bytes received, C({ALG}hex).
  returned: failure (checksum mismatch)
  type: str
  sample: "{SHA-256}9e8d7c6b5a49382716f5e4d3c2b1a0f99e8d7c6b5a49382716f5e4d3c2b1a0f9"
retry_stopped:
  description: On a transfer failure, why no further attempt was made on this host (a permanent failure, no
    retries left, the O(timeout) spent, a C(Retry-After) beyond the budget).
  returned: failure (transfer)
  type: str
  sample: "a permanent failure: not retried on this host"
signal:
  description: When the run was interrupted, the signal (C(SIGINT) or C(SIGTERM)). The C(.part) named in RV(part)
    is kept; run the task again to resume.
  returned: failure (interrupted)
  type: str
  sample: SIGTERM
part:
  description: When the run was interrupted, the resumable file kept in the pool.
  returned: failure (interrupted, after bytes were kept)
  type: str
  sample: /var/lib/libvirt/images/.debian-12.qcow2.part
bytes_done:
  description: When the run was interrupted, the bytes in RV(part) that the next run resumes from.
  returned: failure (interrupted, after bytes were kept)
  type: int
  sample: 880803840
retry_here:
  description:
    - On failure, whether running the task again on this host, later, may succeed (V(true) for a timeout or an HTTP
      503; V(false) for a bad option, an HTTP 404, an untrusted certificate, an NFS export or permission that leaves
      out this host, a missing C(qemu-img), a checksum mismatch, a refused image).
    - Every module of the collection fails with the same keys, C(msg), RV(retry_here), RV(retry_elsewhere) and the
      details of the error.
  returned: failure
  type: bool
  sample: false
retry_elsewhere:
  description:
    - On failure, whether another host or mirror may succeed (V(true) for a transport failure, an untrusted
      certificate, which another host may trust, or an NFS export that leaves out this host; V(false) for a bad
      option, a missing file, a checksum mismatch or an image refused by policy, which every host would meet). The
      C(deploy) role stops trying hosts when it is V(false).
    - Replaces C(retryable) (removed).
  returned: failure
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.directdownload.kvm.plugins.module_utils import _download, _progress, _signals
from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import (
    ALGORITHMS,
    MAX_CHECKSUM_FILE_SIZE,
    as_given,
    checksum_from_file,
    parse_checksum,
    split_checksum_url,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._http import SourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._formats import canonical_format
from ansible_collections.directdownload.kvm.plugins.module_utils._module import failures
from ansible_collections.directdownload.kvm.plugins.module_utils._description import protect_mirrors
from ansible_collections.directdownload.kvm.plugins.module_utils._probe import PlainSourceOptions
from ansible_collections.directdownload.kvm.plugins.module_utils._rate import LIMITS_ARGUMENT_SPEC
from ansible_collections.directdownload.kvm.plugins.module_utils._settings import load_settings, option_or_setting
from ansible_collections.directdownload.kvm.plugins.module_utils._sources import (
    TRANSPORT_ARGUMENT_SPEC,
    open_source,
    read_small_file,
    source_options_from_params,
)
from ansible_collections.directdownload.kvm.plugins.module_utils._urls import (
    file_name_from_url,
    protect_url_options,
    redact_url,
    url_secret_values,
)


def build_request(module, settings):
    params = module.params
    pool_path = params["pool_path"]
    if params["pool"]:
        from ansible_collections.directdownload.kvm.plugins.module_utils import _libvirt  # pylint: disable=import-outside-toplevel
        pool_path = _libvirt.pool_target_path(params["pool"], params["libvirt_uri"])
    # Built for every scheme: NFS reads its timeouts from it, a metalink passes it to its mirrors.
    source_options = origin_options = source_options_from_params(params, settings)
    # Fan-out peers: their own options (pinned certificate, bearer token, nothing of the origin's). Sources marked
    # as peers use request.peer_source_options; the origin never sees the token.
    peer_source_options = None
    if params["peer_token"] and params["peer_fingerprint"]:
        peer_source_options = SourceOptions.for_peer(source_options, params["peer_token"], params["peer_fingerprint"])
    if params["url_is_peer"]:
        source_options = peer_source_options
    request = _download.DownloadRequest(
        url=params["url"],
        pool_path=pool_path,
        name=params["name"],
        checksum=resolve_checksum(params, origin_options),  # a checksum URL is never a peer
        image_format=params["format"],
        extract=params["extract"],
        source_options=source_options,
        retries=option_or_setting(params, "retries", settings),
        retry_delay=params["retry_delay"],
        resume=params["resume"],
        force=params["force"],
        block_size=option_or_setting(params, "block_size", settings),
        progress_interval=params["progress_interval"],
        connections=params["connections"],
        mirrors=params["mirrors"],
        metalink_name=params["metalink_name"],
        metalink_locations=params["metalink_locations"],
        nfs_transport=params["nfs_transport"],
        max_size=params["max_size"],
        max_virtual_size=params["max_virtual_size"],
        max_expansion=params["max_expansion"],
        allow_encrypted=params["allow_encrypted"],
        mode=octal_mode(params["mode"]),
        progress_group=settings.get("progress_group"),
        lease=_progress.Lease.from_environment(),  # set when the download action plugin runs this as a job
        max_rate=params["max_rate"],
        lowest_speed=params["lowest_speed"],
        lowest_speed_time=params["lowest_speed_time"],
        mismatch_retries=params["mismatch_retries"],
        timeout=params["timeout"],
    )
    # For the multi-source engine: a mirror entry with peer: true is opened with peer_source_options, or with
    # SourceOptions.for_peer(origin_options, request.peer_token, entry["fingerprint"]) when it names its own.
    request.peer_source_options = peer_source_options
    request.peer_token = params["peer_token"]
    request.origin_source_options = origin_options
    return request


def resolve_checksum(params, source_options):
    """The expected Checksum: the option itself, or (``sha256:<URL>``) the line for the image's file name in the
    checksum file at that URL, read with the image's transport options (at most MAX_CHECKSUM_FILE_SIZE bytes)."""
    by_url = split_checksum_url(params["checksum"])
    if by_url is None:
        return parse_checksum(params["checksum"], params["checksum_algorithm"])
    algorithm, checksum_url = by_url
    data = read_small_file(checksum_url, PlainSourceOptions(source_options, params["nfs_transport"]),
                           MAX_CHECKSUM_FILE_SIZE)
    return checksum_from_file(data.decode("utf-8", "replace"), file_name_from_url(params["url"]), algorithm,
                              source=redact_url(checksum_url))


def octal_mode(mode):
    """An octal ``mode`` option as an int, to install the image with it; None for symbolic modes (applied after
    the rename, by AnsibleModule) and when no mode is given (the engine's default)."""
    if mode is None:
        return None
    if isinstance(mode, int):
        return mode
    text = str(mode).strip()
    return int(text, 8) if text and all(char in "01234567" for char in text) else None


def apply_file_attributes(module, path, changed, diff):
    """The mode, owner and group options on the installed image; True when something changed (or would)."""
    params = module.params
    if not any(params[name] is not None for name in ("mode", "owner", "group")):
        return changed
    changed = module.set_owner_if_different(path, params["owner"], changed, diff)
    changed = module.set_group_if_different(path, params["group"], changed, diff)
    return module.set_mode_if_different(path, params["mode"], changed, diff)


def diff_for(decision, request):
    after = {"path": request.final_path, "exists": True, "url": redact_url(request.url)}
    if request.checksum is not None:
        after["checksum"] = request.checksum.cloudstack
    before = dict(decision.before)
    if decision.record:
        before.update(checksum=decision.record.get("checksum"), url=decision.record.get("url"))
    if not decision.changes:
        after = dict(before)
    return {"before": before, "after": after}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True, no_log=True),  # never logged; secrets masked, see below
            checksum=dict(type="str", default=""),
            checksum_algorithm=dict(type="str", default="md5", choices=list(ALGORITHMS)),
            pool_path=dict(type="path"),
            pool=dict(type="str"),
            libvirt_uri=dict(type="str", default="qemu:///system"),
            name=dict(type="str"),
            format=dict(type="str"),  # any case: _formats.canonical_format
            extract=dict(type="bool", default=True),
            retries=dict(type="int"),
            retry_delay=dict(type="float", default=1.0),
            resume=dict(type="bool", default=True),
            force=dict(type="bool", default=False),
            connections=dict(type="int", default=1),
            mirrors=dict(type="list", elements="raw", default=[], no_log=True),  # secrets masked, see protect_mirrors
            block_size=dict(type="int"),
            progress_interval=dict(type="float", default=2.0),
            max_size=dict(type="bytes"),
            max_virtual_size=dict(type="bytes"),
            max_expansion=dict(type="float"),
            allow_encrypted=dict(type="bool", default=False),
            mode=dict(type="raw"),
            owner=dict(type="str"),
            group=dict(type="str"),
            peer_token=dict(type="str", no_log=True),
            peer_fingerprint=dict(type="str"),
            url_is_peer=dict(type="bool", default=False),
            **dict(TRANSPORT_ARGUMENT_SPEC, **LIMITS_ARGUMENT_SPEC)
        ),
        required_by={"peer_fingerprint": "peer_token"},
        required_if=[("url_is_peer", True, ("peer_token", "peer_fingerprint"))],
        required_one_of=[("pool_path", "pool")],
        mutually_exclusive=[("pool_path", "pool")],
        supports_check_mode=True,
    )
    params = module.params
    # url and proxy are no_log (never in the host's log); in results only their passwords and signatures are masked.
    protect_url_options(module, ("url", "proxy"))
    protect_mirrors(module)
    if not params["validate_certs"]:
        module.warn("validate_certs is false: the server certificate and host name are not verified, anyone on the "
                    "path can serve these bytes; the image record says so")
    with failures(module, before_fail=lambda failure: warn_metalink_notes(module, failure), url=redact_url(params["url"])):
        params["format"] = canonical_format(params["format"])
        checksum_url = split_checksum_url(params["checksum"])
        if checksum_url:
            module.no_log_values.update(url_secret_values(checksum_url[1]))
        settings = load_settings()
        request = build_request(module, settings)
        decision = _download.plan(request)
        diff = diff_for(decision, request) if module._diff else None
        if module.check_mode:
            changed = decision.changes
            msg = "would %s: %s" % (decision.action, decision.reason) if changed else decision.reason
            if not changed and apply_file_attributes(module, request.final_path, False, diff):
                changed, msg = True, "would change the file attributes"
            module.exit_json(changed=changed, path=request.final_path, name=request.name, msg=msg, diff=diff,
                             url=redact_url(params["url"]))
        with _signals.interruptible():  # SIGINT/SIGTERM: a resumable failure with a result, not a dead process
            result = _download.run(request, open_source, log=module.log)
        if apply_file_attributes(module, request.final_path, False, diff) and not result["changed"]:
            result.update(changed=True, msg="changed the file attributes")
        result["final_url"] = result.get("url")
        result["url"] = redact_url(params["url"])
        if request.checksum is not None:
            result["checksum"] = as_given(params["checksum"], request.checksum)
        if params["pool"] and result["changed"]:
            from ansible_collections.directdownload.kvm.plugins.module_utils import _libvirt  # pylint: disable=import-outside-toplevel
            _libvirt.refresh_pool(params["pool"], params["libvirt_uri"])
        if params["pool"]:
            result["pool"] = params["pool"]
        result.pop("before", None)
        if module._diff:
            result["diff"] = diff
        warn_metalink_notes(module, result)
        module.exit_json(**result)


def warn_metalink_notes(module, result):
    """Show each note of the Metalink parser (RV(metalink_notes)) as a warning: what it set aside is never silent."""
    for note in result.get("metalink_notes") or ():
        module.warn("metalink: %s" % note)


if __name__ == "__main__":
    main()
