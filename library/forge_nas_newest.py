#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_nas_newest
short_description: Find the newest signed off-site copy of a database on the NAS, read again in full
description:
  - The way back from the NAS alone (C(playbooks/offsite_restore.yml)), when the backup host lost its backups.
    Of the copies of O(database) that the NAS's last verification (C(forge nas-gate ... verify)) accepted, the
    newest is read in full again now and compared with its manifest's SHA-256; a copy that no longer matches is
    passed over and named, and the next newer one taken.
  - Runs on the NAS as root or its own user, never through the gate the backup hosts' key is bound to (that key
    cannot read anything back). Reads only; the copy stays encrypted (the NAS never holds the passphrase), and
    the backup host's restore checks it again with its own key and passphrase before it touches a database.
version_added: "0.3.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
options:
  database:
    description: The database whose copy is wanted, as the backup host names it.
    type: str
    required: true
  directory:
    description: The NAS's directory of copies (the offsite_target role's C(offsite_target_dir)).
    type: path
    default: /srv/infer-forge-offsite/backups
  state_dir:
    description: The NAS's state directory, where the verification's receipt is (C(offsite_target_state_dir)).
    type: path
    default: /srv/infer-forge-offsite/state
  check_keys_file:
    description:
      - The keys this NAS checks copies' off-site signatures with (C(offsite_target_check_keys_file)). A copy
        whose manifest carries no signature under one of them (anyone with the upload key could have sent it)
        is passed over and named.
    type: path
    default: /etc/infer-forge/nas-check.keys
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: It only reads, in check mode as in a real run.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Find the newest verified copy of infer_forge on the NAS
  forge_nas_newest:
    database: infer_forge
  register: newest

- name: Carry it and its manifest to the controller
  ansible.builtin.fetch:
    src: "{{ item }}"
    dest: /root/restore/
    flat: true
  loop: "{{ newest.files }}"
"""

RETURN = r"""
backup:
  description: The copy's file name.
  returned: success
  type: str
  sample: infer_forge_20261207_031500.sql.gz.enc
files:
  description: Absolute paths on the NAS of the copy, then its manifest and checksum files.
  returned: success
  type: list
  elements: str
sha256:
  description: The copy's SHA-256, as its manifest states it and as it was read again now.
  returned: success
  type: str
size:
  description: The copy's size in bytes.
  returned: success
  type: int
arrived:
  description: When the NAS accepted the copy (epoch seconds, the NAS's clock).
  returned: success
  type: float
passed_over:
  description: Newer copies that were not taken, each with the reason.
  returned: success
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.forge.errors import ForgeError, unexpected
    from ansible.module_utils.forge.farside import newest_copy
    from ansible.module_utils.forge.signing import read_check_keys
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc


ARGUMENT_SPEC = dict(
    database=dict(type="str", required=True),
    directory=dict(type="path", default="/srv/infer-forge-offsite/backups"),
    state_dir=dict(type="path", default="/srv/infer-forge-offsite/state"),
    check_keys_file=dict(type="path", default="/etc/infer-forge/nas-check.keys"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    p = module.params
    try:
        result = newest_copy(p["directory"], p["state_dir"], p["database"],
                             check_keys=read_check_keys(p["check_keys_file"]))
    except ForgeError as exc:
        module.fail_json(msg=exc.message)
    except Exception as exc:  # noqa: BLE001 - one line for the operator, never a traceback
        module.fail_json(msg=f"finding the newest copy of {p['database']} stopped: {unexpected(exc)}")
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
