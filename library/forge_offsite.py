#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_offsite
short_description: Copy encrypted INFER FORGE backups off-site and verify them there
description:
  - Copies the encrypted backups of one database, each with its C(.sha256) and manifest, to the
    company NAS over SSH (rsync) or to a mounted encrypted USB disk, as the runbook recommends.
  - Only files that really are openssl-encrypted (C(Salted__) header) are copied. An unencrypted backup
    in the window stops the run with a clear error before anything is sent, because unencrypted
    backups must never leave the host.
  - Each copy is checked on the far side with C(sha256sum --check) against the manifest's checksum; the
    manifest is sent last, so on the target a manifest means "copied and verified".
  - The target keeps its own retention (O(retention_days), O(min_keep)); only files named like our
    backups are ever deleted there.
  - Writes C(infer_forge_offsite_*) metrics (last success timestamp among them) and a JSON state file
    that the production checklist reads.
version_added: "0.1.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
extends_documentation_fragment:
  - forge.backup_store
options:
  database:
    description: Database whose backups are copied (the runbook's C(POSTGRES_DB)).
    type: str
    required: true
  target:
    description:
      - C(user@host:/absolute/path) for the NAS over SSH, or an absolute path on a mounted disk.
    type: str
    required: true
  retention_days:
    description: Copies older than this many days are removed from the target.
    type: int
    default: 90
  min_keep:
    description: The newest verified copies always kept on the target, whatever their age.
    type: int
    default: 7
  ssh_port:
    description: SSH port of the NAS.
    type: int
    default: 22
  ssh_identity:
    description: Private key file for the NAS.
    type: path
  known_hosts:
    description: Known-hosts file holding the NAS's host key (host keys are always checked).
    type: path
  require_mount:
    description: For a path target, refuse a path that is not on a mounted disk.
    type: bool
    default: true
  skip_unencrypted:
    description: Skip unencrypted backups instead of failing.
    type: bool
    default: false
  textfile_dir:
    description: node_exporter textfile directory for the metrics; empty for none.
    type: path
  report_dir:
    description:
      - Directory for the C(offsite_<db>.json) state file; the same directory as
        O(infer.forge.forge_restore#module:report_dir) (the backup role's C(backup_report_dir),
        the on-host commands' C(DRILL_REPORT_DIR)).
    type: path
    aliases: [state_dir]
  sentry_dsn:
    description: Where to report a failed copy.
    type: str
  environment:
    description: Environment reported to Sentry.
    type: str
  fail_on_error:
    description: Fail the task when the copy fails (else return C(passed=false)).
    type: bool
    default: true
  passphrase_file:
    description:
      - The backup passphrase file. Only backups whose manifest is signed with its key are copied; one of
        O(passphrase_file) and O(passphrase) is required.
    type: path
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Connects, lists the target and reports what would be copied and expired; changes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - rsync and ssh on the host; sha256sum on the NAS
notes:
  - Run it as the user who owns the backups and the SSH key (the backup role's C(backup_user)).
"""

EXAMPLES = r"""
- name: Copy last night's encrypted backups to the NAS
  forge_offsite:
    database: infer_forge
    backup_dir: /backups
    target: infer-backup@nas.infer.local:/volume1/infer-forge
    ssh_identity: /home/infer/.ssh/id_ed25519_offsite
    known_hosts: /etc/infer-forge/offsite_known_hosts
    textfile_dir: /var/lib/infer-forge-metrics/backup
  become: true
  become_user: infer

- name: Export to the encrypted USB disk of the safe
  forge_offsite:
    database: infer_forge
    target: /media/usb-safe/infer-forge
"""

RETURN = r"""
target:
  description: Where the copies went (no secrets).
  returned: always
  type: str
  sample: infer-backup@nas.infer.local:/volume1/infer-forge
copied:
  description: Backups copied (and verified) by this run, or that would be in check mode.
  returned: always
  type: list
  elements: str
expired:
  description: Backups removed from the target by its retention.
  returned: always
  type: list
  elements: str
bytes_copied:
  description: Size of the copied backups.
  returned: always
  type: int
remote_backups:
  description: Verified backups on the target after the run.
  returned: success
  type: int
verified:
  description: Whether every copy was checked on the target.
  returned: always
  type: bool
passed:
  description: Whether the run succeeded.
  returned: always
  type: bool
reason:
  description: One line saying what happened.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.forge.errors import ForgeError
    from ansible.module_utils.forge.offsite import OffsiteCopy, OffsiteOptions
    from ansible.module_utils.forge.privileges import call_as_directory_owner
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc


ARGUMENT_SPEC = dict(
    database=dict(type="str", required=True),
    backup_dir=dict(type="path", default="/backups"),
    target=dict(type="str", required=True),
    retention_days=dict(type="int", default=90),
    min_keep=dict(type="int", default=7),
    ssh_port=dict(type="int", default=22),
    ssh_identity=dict(type="path", no_log=False),
    known_hosts=dict(type="path"),
    require_mount=dict(type="bool", default=True),
    skip_unencrypted=dict(type="bool", default=False),
    textfile_dir=dict(type="path"),
    report_dir=dict(type="path", aliases=["state_dir"]),
    sentry_dsn=dict(type="str", no_log=True),
    environment=dict(type="str"),
    fail_on_error=dict(type="bool", default=True),
    passphrase_file=dict(type="path", no_log=False),
    passphrase=dict(type="str", no_log=True),
    retired_passphrases_file=dict(type="path", no_log=False),
    retired_passphrases=dict(type="list", elements="str", no_log=True, default=[]),
)


def copy_offsite(module):
    p = module.params
    try:
        options = OffsiteOptions(
            backup_dir=p["backup_dir"], target=p["target"], database=p["database"],
            retention_days=p["retention_days"], min_keep=p["min_keep"], ssh_port=p["ssh_port"],
            ssh_identity=p["ssh_identity"], known_hosts=p["known_hosts"], require_mount=p["require_mount"],
            skip_unencrypted=p["skip_unencrypted"], textfile_dir=p["textfile_dir"], state_dir=p["report_dir"],
            sentry_dsn=p["sentry_dsn"], environment=p["environment"], passphrase_file=p["passphrase_file"],
            passphrase=p["passphrase"], retired_passphrases_file=p["retired_passphrases_file"],
            retired_passphrases=p["retired_passphrases"])
    except ForgeError as exc:
        return dict(failed=True, msg=exc.message)
    return OffsiteCopy(options).run(check_mode=module.check_mode)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    p = module.params
    try:
        # Root never works in the backup user's directory: the engine runs as its owner.
        result = call_as_directory_owner(p["backup_dir"], lambda: copy_offsite(module))
    except ForgeError as exc:
        module.fail_json(msg=exc.message)
    if result.get("failed"):
        module.fail_json(**result)
    result["changed"] = bool(result["passed"] and (result["copied"] or result["expired"]))
    if not result["passed"] and p["fail_on_error"]:
        module.fail_json(msg=f"off-site copy of {p['database']} failed: {result['reason']}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
