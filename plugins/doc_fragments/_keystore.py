# Copyright (c) directdownload.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Note that this doc fragment is PRIVATE to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!
"""The keystore options of ``certificate`` and ``certificate_info``: which Java keystore, its password, keytool.

With the ``action_group`` attribute of the ``certificates`` group. Their argument spec is
``_certs.keystore_argument_spec()``; the default paths are ``_settings.DEFAULT_KEYSTORE`` and
``_settings.DEFAULT_AGENT_PROPERTIES``. Keep them in step.
"""

from __future__ import annotations


class ModuleDocFragment:

    DOCUMENTATION = r"""
options:
  keystore:
    description:
      - The Java keystore (JKS or PKCS12) of the CloudStack agent.
    type: path
    default: /etc/cloudstack/agent/cloud.jks
  keystore_password:
    description:
      - The keystore password. Never shown.
      - Default is C(keystore.passphrase) from O(agent_properties), as the CloudStack agent reads it.
    type: str
  agent_properties:
    description:
      - The CloudStack agent properties file that holds C(keystore.passphrase), used when O(keystore_password) is
        not given.
    type: path
    default: /etc/cloudstack/agent/agent.properties
  keytool:
    description:
      - The C(keytool) executable. Default is C(keytool) on the C(PATH), else C($JAVA_HOME/bin/keytool), else
        C(/usr/lib/jvm/*/bin/keytool).
    type: path
attributes:
  action_group:
    description:
      - Use C(group/directdownload.kvm.certificates) in C(module_defaults) to set defaults for this module and the
        other module that reads the KVM host's keystore and trust directory (for example O(keystore) or
        O(trust_dir)).
    support: full
    membership:
      - directdownload.kvm.certificates
"""
