# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this module util is PRIVATE to the collection. It can have breaking changes at any time.
"""Host-side defaults, and the one home of the default paths (trust directory, keystore, agent properties,
registry) that argument specs, doc fragments and engines share. The ``agent`` role writes ``/etc/directdownload/agent.json``; modules read it so that an
operator sets timeouts and the trust directory once per host instead of on every task.

Precedence: a module option the user set > the agent settings file > the built-in default below.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ansible_collections.directdownload.kvm.plugins.module_utils._errors import InvalidInput

SETTINGS_PATH_ENV = "DIRECTDOWNLOAD_SETTINGS"
DEFAULT_SETTINGS_PATH = "/etc/directdownload/agent.json"

# The PEM directory that ``certificate`` writes and ``download``/``url_check`` trust by default.
DEFAULT_TRUST_DIR = "/etc/directdownload/trust.d"
# CloudStack's agent keystore and its properties file (keystore.passphrase).
DEFAULT_KEYSTORE = "/etc/cloudstack/agent/cloud.jks"
DEFAULT_AGENT_PROPERTIES = "/etc/cloudstack/agent/agent.properties"
# The registry state file, on the host that runs the registry modules (expanded for the user running them).
DEFAULT_REGISTRY_PATH = "~/.local/state/directdownload/registry.json"

BUILTIN_DEFAULTS = {
    "connect_timeout": 10,
    "read_timeout": 60,
    "retries": 3,
    "trust_dir": DEFAULT_TRUST_DIR,
    "block_size": 64 * 1024,
}


def load_settings(path: str | None = None) -> dict:
    """Return the built-in defaults updated with the agent settings file, if there is one.

    A settings file that exists but cannot be read is an error (a silently ignored typo would be worse): InvalidInput.
    """
    path = path or os.environ.get(SETTINGS_PATH_ENV) or DEFAULT_SETTINGS_PATH
    settings = dict(BUILTIN_DEFAULTS)
    try:
        with open(path, "rb") as handle:
            loaded = json.load(handle)
    except FileNotFoundError:
        return settings
    except (OSError, ValueError) as exc:
        raise InvalidInput("cannot read the agent settings file %s: %s" % (path, exc), path=path) from exc
    if not isinstance(loaded, dict):
        raise InvalidInput("the agent settings file %s must hold a JSON object" % path, path=path)
    settings.update({key: value for key, value in loaded.items() if value is not None})
    return settings


def option_or_setting(params: dict, name: str, settings: dict) -> Any:
    """The module option ``name`` when the user gave one, else the host setting."""
    value = params.get(name)
    return settings.get(name) if value is None else value
