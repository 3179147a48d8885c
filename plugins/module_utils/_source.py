# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""The base class of every Source (docs/architecture.md, "Source"): the defaults of one plain source, so the engine
calls every method directly, whatever the source (one URL, or several sources of one file: _transfer.MultiSource).
"""

from __future__ import annotations

from typing import Any, Optional

from ansible_collections.directdownload.kvm.plugins.module_utils._checksum import Checksum


class Source:
    """Defaults for one plain source (http, https, nfs). Subclasses implement ``open``, ``probe``, ``read_head``."""

    # The answer of this source may turn out to be a Metalink document (http: by its Content-Type).
    may_answer_metalink = False
    # Fetched in verified ranges from several sources at once (_transfer.segmented_download) rather than streamed.
    segmented = False
    connections = 1
    size = None

    @property
    def mirror_errors(self) -> list[dict[str, str]]:
        """``[{"url": redacted, "error": message}]`` of the sources set aside; one plain source has none."""
        return []

    @property
    def notes(self) -> list[str]:
        """Operator notes about the description of the file (a Metalink's skipped parts); none for a URL."""
        return []

    def expected_checksums(self, user_checksum: Optional[Checksum] = None) -> list[Checksum]:
        """The digests the bytes must match: the user's checksum, when given."""
        return [user_checksum] if user_checksum is not None else []

    def next_mirror_after_mismatch(self, served_url: Optional[str] = None,  # pylint: disable=unused-argument
                                   expected: Optional[str] = None, actual: Optional[str] = None) -> Optional[bool]:
        """The bytes failed the checksum: True when another source is left to download them from, False when none
        is; None (one plain source): the engine's mismatch retries decide."""
        return None

    def set_aside_slow_mirror(self, served_url: Optional[str] = None) -> None:
        """The ``lowest_speed`` watchdog closed the connection: another source first, when there is one."""

    def discover_size(self) -> Optional[int]:
        """The size of the file, when it is known before the transfer (a description's); None for one URL."""
        return self.size

    def source_report(self, bytes_served: int) -> Optional[list[dict[str, Any]]]:  # pylint: disable=unused-argument
        """The ``sources`` result: one entry per source; None lets the engine describe its one URL itself."""
        return None

    def close(self) -> None:
        """Release what the source holds (connections, mounts)."""
