#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_restore
short_description: Verify a backup, restore it, or run a restore drill with exact row-count checks
description:
  - Picks a backup (a given file inside O(backup_dir), or the newest good backup of O(database) by its
    manifest) and verifies it before touching any database, with the SHA-256 from its manifest and,
    for encrypted files, the HMAC, which tells a wrong passphrase from a damaged file.
  - Backups made by the runbook's own commands (C(.sql.gz), or C(openssl enc) C(.sql.gz.enc), without a
    manifest) are accepted; the result lists the checks that could not be made.
  - O(mode=restore) streams the backup (decrypt, decompress) into C(psql) in one transaction with
    C(ON_ERROR_STOP), or into C(pg_restore) (C(--jobs) for unencrypted custom-format dumps), without a
    plaintext copy on disk. It refuses a target that has tables unless O(force=true), which drops and
    recreates it.
  - O(mode=drill) restores into a scratch database, compares every table's row count with the counts
    recorded in the dump's snapshot, runs optional C(amcheck) and SQL checks, records metrics and a JSON
    report, and drops the scratch database, also when a check failed.
  - A backup is chosen automatically only when its manifest is signed with the passphrase's key, names the
    database, matches the file and is not dated in the future. A named file without a signed manifest (made by
    the runbook's own commands) is restored or drilled as UNVERIFIED, never as a PASS.
  - O(mode=verify) only verifies the file.
version_added: "0.1.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
extends_documentation_fragment:
  - forge.connection
  - forge.backup_store
options:
  mode:
    description: What to do.
    type: str
    choices: [restore, drill, verify]
    default: drill
  database:
    description:
      - The source database the backup was taken of. Picks the newest good backup when O(backup_file) is
        not given, and a backup of another database is refused.
    type: str
  backup_file:
    description: The backup to use, a name in or a path inside O(backup_dir). Paths outside it are refused.
    type: path
  target_database:
    description: For O(mode=restore), the database to restore into.
    type: str
  scratch_database:
    description: For O(mode=drill), the scratch database. Defaults to C(<database>_restore_drill). Never the source.
    type: str
  force:
    description:
      - For O(mode=restore), replace a target that already has tables. The backup is restored into a side
        database and checked (stream complete, row counts equal to the manifest's); only then are the target
        and the side database swapped by two renames in one transaction. Sessions connected to the target are
        listed (also in check mode) and ended just before the swap. On any failure the target is untouched.
    type: bool
    default: false
  allow_unverified:
    description:
      - For O(mode=restore), restore a named file without a signed manifest (made by the runbook's own
        commands, say) as V(UNVERIFIED). Without it such a file is refused before any database is touched,
        so an ok restore always means a proven backup.
    type: bool
    default: false
  keep_previous:
    description:
      - With O(force=true), keep the replaced database as C(<target>_before_restore_<YYYYMMDD_HHMMSS>) (returned
        as RV(previous_database)). With V(false) it is dropped after the swap.
    type: bool
    default: true
  require_encryption:
    description:
      - Never choose an unencrypted backup automatically (as the newest, for a drill or a restore).
      - Defaults to V(true) when a passphrase is given, like the backup side.
    type: bool
  kdf_iter:
    description:
      - PBKDF2 iterations for an encrypted file whose manifest does not record them (a runbook file made
        with C(openssl enc -pbkdf2 -iter N), named in O(backup_file)); C(BACKUP_KDF_ITER) on the host.
      - Our backups record the count in their signed manifest, which always wins.
    type: int
    default: 10000
  create:
    description: For O(mode=restore), create the target when it does not exist (template0, UTF8).
    type: bool
    default: true
  owner:
    description: Owner of a database this module creates.
    type: str
  jobs:
    description: Parallel jobs for C(pg_restore) of an unencrypted custom-format dump.
    type: int
  psql_command:
    description:
      - The C(psql) that restores a plain-format backup, as a list, e.g. V([docker, exec, -i, infer-forge-db-1, psql])
        to use the database container's own client (C(RESTORE_PSQL_COMMAND) on the host).
      - A C(docker exec) client gets the libpq variables by name, the password in its environment, never in argv.
    type: list
    elements: str
    default: [psql]
  pg_restore_command:
    description:
      - The C(pg_restore) that restores a custom-format backup (C(RESTORE_PG_RESTORE_COMMAND) on the host). It must
        be at least as new as the C(pg_dump) that wrote the file; an older one is refused before any database is
        touched, in one line that names this option.
      - Through C(docker exec) the file is streamed, so O(jobs) does not apply.
    type: list
    elements: str
    default: [pg_restore]
  keep:
    description: For O(mode=drill), keep the scratch database for inspection.
    type: bool
    default: false
  sql_checks:
    description:
      - For O(mode=drill), queries run in the scratch database. Each returns one value; the check fails on
        an error, or when the value differs from C(expect) or is below C(min).
    type: list
    elements: dict
    default: []
  amcheck:
    description: For O(mode=drill), check every B-tree index with C(amcheck) (needs a superuser login).
    type: bool
    default: false
  stall_timeout:
    description:
      - Seconds C(psql) or C(pg_restore) may take no input while none of its sessions works on the server, or one
        of its sessions may wait for a lock, before the restore is stopped and the failure names it
        (C(BACKUP_STALL_TIMEOUT)).
      - A long step the server works on, such as an index build, is progress.
    type: int
    default: 300
  passphrase_file:
    description:
      - File whose first line is the backup passphrase (read as C(openssl enc -pass file:) reads it). It decrypts
        encrypted backups and checks every manifest's signature; without it no backup counts as good and only
        a named file can be restored, as UNVERIFIED.
    type: path
  textfile_dir:
    description: For O(mode=drill), node_exporter textfile directory for C(infer_forge_restore_drill_*) metrics.
    type: path
  report_dir:
    description: For O(mode=drill), directory for the JSON report C(restore_drill_<db>.json).
    type: path
  sentry_dsn:
    description: For O(mode=drill), report a failed drill to this Sentry DSN.
    type: str
  environment:
    description: Environment name sent with Sentry events.
    type: str
  fail_on_error:
    description: For O(mode=drill), fail the task when the drill fails. With V(false) the outcome is returned as data.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Verifies the backup and reports whether the target would be created or recreated; changes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - python3-psycopg and python3-cryptography on the host that runs the module
  - the PostgreSQL client (C(psql), C(pg_restore))
seealso:
  - module: infer.forge.forge_backup
"""

EXAMPLES = r"""
- name: Prove that last night's backup restores (scratch database, exact row counts, then dropped)
  forge_restore:
    mode: drill
    database: infer_forge
    login_user: infer
    login_password: "{{ vault_postgres_password }}"
    passphrase_file: /etc/infer-forge/backup.pass
    sql_checks:
      - name: orders
        sql: SELECT COUNT(*) FROM orders
        min: 1
    textfile_dir: /var/lib/infer-forge-metrics/backup
    report_dir: /var/lib/infer-forge/reports

- name: Restore a chosen backup into a new database
  forge_restore:
    mode: restore
    backup_file: infer_forge_20260207_143215.sql.gz
    target_database: infer_forge_restore
    login_user: infer
    login_password: "{{ vault_postgres_password }}"

- name: Only check that a backup is intact and the passphrase is right
  forge_restore:
    mode: verify
    database: infer_forge
    passphrase: "{{ vault_backup_passphrase }}"
"""

RETURN = r"""
backup:
  description: Path of the backup used.
  returned: always
  type: str
checks:
  description: Each check and its outcome (passed, failed or skipped).
  returned: always
  type: dict
  sample: {"sha256": "passed", "hmac": "passed", "row_counts": "passed"}
skipped_checks:
  description: Checks that could not be made, with the reason (for example a runbook-made file has no manifest).
  returned: when any was skipped
  type: list
  elements: str
passed:
  description: For O(mode=drill), whether every check passed.
  returned: drill
  type: bool
reason:
  description: For O(mode=drill), why it failed, or C(all checks passed).
  returned: drill
  type: str
tables_checked:
  description: Tables whose row counts were compared.
  returned: drill
  type: int
rows_checked:
  description: Rows counted in the scratch database.
  returned: drill
  type: int
row_count_mismatches:
  description: Tables whose restored count differs from the snapshot count.
  returned: drill
  type: dict
backup_age_seconds:
  description: Age of the backup when the drill ran.
  returned: drill
  type: float
duration:
  description: Wall time in seconds.
  returned: always
  type: float
target_state:
  description:
    - For O(mode=restore), V(created), V(replaced) (force, by swap) or V(empty) (an existing empty database
      restored into). In check mode it says what would happen, for example V(would restore beside it and swap it in).
  returned: restore
  type: str
verdict:
  description:
    - V(VERIFIED) when the file's signed manifest and checksum were checked, V(UNVERIFIED) for a named file
      without a signed manifest. For O(mode=drill) V(PASS), V(FAIL) or V(UNVERIFIED); only V(PASS) is a pass.
  returned: always
  type: str
previous_database:
  description: For a forced restore, the name the replaced database is kept under (null when it was dropped).
  returned: when a target was replaced
  type: str
sessions_ended:
  description: Sessions on the target that were ended just before the swap.
  returned: when a target was replaced
  type: list
  elements: str
sessions:
  description: In check mode, the sessions on the target that a forced restore would end.
  returned: check mode, restore
  type: list
  elements: str
"""

import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from ansible.module_utils.forge.drill import DrillOptions, run_action
    from ansible.module_utils.forge.errors import ForgeError
    from ansible.module_utils.forge.pgconn import PgSettings
    from ansible.module_utils.forge.privileges import call_as_directory_owner
    from ansible.module_utils.forge.requirements import POSTGRES, first_missing
    from ansible.module_utils.forge.restore import RestoreOptions
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc


ARGUMENT_SPEC = dict(
    mode=dict(type="str", choices=["restore", "drill", "verify"], default="drill"),
    database=dict(type="str"),
    backup_file=dict(type="path"),
    backup_dir=dict(type="path", default="/backups"),
    target_database=dict(type="str"),
    scratch_database=dict(type="str"),
    force=dict(type="bool", default=False),
    create=dict(type="bool", default=True),
    owner=dict(type="str"),
    jobs=dict(type="int"),
    psql_command=dict(type="list", elements="str", default=["psql"]),
    pg_restore_command=dict(type="list", elements="str", default=["pg_restore"]),
    keep=dict(type="bool", default=False),
    keep_previous=dict(type="bool", default=True),
    allow_unverified=dict(type="bool", default=False),
    require_encryption=dict(type="bool"),
    kdf_iter=dict(type="int", default=10000),
    sql_checks=dict(type="list", elements="dict", default=[]),
    amcheck=dict(type="bool", default=False),
    stall_timeout=dict(type="int", default=300),
    passphrase_file=dict(type="path", no_log=False),
    passphrase=dict(type="str", no_log=True),
    retired_passphrases_file=dict(type="path", no_log=False),
    retired_passphrases=dict(type="list", elements="str", no_log=True, default=[]),
    login_host=dict(type="str", default="localhost"),
    port=dict(type="int", default=5432),
    login_user=dict(type="str"),
    login_password=dict(type="str", no_log=True),
    textfile_dir=dict(type="path"),
    report_dir=dict(type="path"),
    sentry_dsn=dict(type="str", no_log=True),
    environment=dict(type="str"),
    fail_on_error=dict(type="bool", default=True),
)


class RestoreModule:
    def __init__(self, module):
        self.module = module
        self.params = module.params

    def run(self):
        p = self.params
        started = time.monotonic()
        try:
            settings = PgSettings(host=p["login_host"], port=p["port"], user=p["login_user"],
                                  password=p["login_password"], database=p["database"])
            options = RestoreOptions(backup_dir=p["backup_dir"], passphrase_file=p["passphrase_file"],
                                     passphrase=p["passphrase"], retired_passphrases=p["retired_passphrases"],
                                     retired_passphrases_file=p["retired_passphrases_file"],
                                     stall_timeout=p["stall_timeout"],
                                     jobs=p["jobs"], force=p["force"], create=p["create"], owner=p["owner"],
                                     keep_previous=p["keep_previous"], require_encryption=p["require_encryption"],
                                     kdf_iterations=p["kdf_iter"], psql_command=p["psql_command"],
                                     allow_unverified=p["allow_unverified"] or p["mode"] != "restore",
                                     pg_restore_command=p["pg_restore_command"])
            drill = None
            if p["mode"] == "drill":
                drill = DrillOptions(
                    database=p["database"], scratch_database=p["scratch_database"], backup_file=p["backup_file"],
                    keep=p["keep"], sql_checks=p["sql_checks"], amcheck=p["amcheck"], textfile_dir=p["textfile_dir"],
                    report_dir=p["report_dir"], sentry_dsn=p["sentry_dsn"], environment=p["environment"])
            result = dict(run_action(p["mode"], options, settings, database=p["database"],
                                     backup_file=p["backup_file"], target=p["target_database"], drill=drill,
                                     check_mode=self.module.check_mode))
        except ForgeError as exc:
            return dict(failed=True, msg=exc.message, changed=False)
        if p["mode"] == "verify" or (p["mode"] == "drill" and self.module.check_mode):
            result["changed"] = False
        if p["mode"] == "drill" and result["passed"] is False and p["fail_on_error"]:
            result["failed"] = True
            result["msg"] = f"restore drill of {p['database']} failed: {result['reason']}"
        if p["mode"] != "drill":
            result["duration"] = round(time.monotonic() - started, 3)
        return result


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
        required_if=[("mode", "drill", ("database",)), ("mode", "restore", ("target_database",))],
        required_one_of=[("database", "backup_file")],
    )
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    if first_missing(POSTGRES):
        module.fail_json(msg=missing_required_lib(POSTGRES))
    try:
        # Root never works in the backup user's directory: the engine runs as its owner.
        result = call_as_directory_owner(module.params["backup_dir"], RestoreModule(module).run)
    except ForgeError as exc:
        result = dict(failed=True, msg=exc.message, changed=False)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
