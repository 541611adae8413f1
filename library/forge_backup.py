#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_backup
short_description: Take a verified, atomic, optionally encrypted PostgreSQL backup
description:
  - Dumps one PostgreSQL database with C(pg_dump) in a snapshot, streams it through parallel
    compression and optional AES-256-CBC encryption, and writes it atomically into O(backup_dir)
    with a JSON manifest and a C(sha256sum -c) compatible checksum file.
  - The manifest records the exact row count of every table taken in the same snapshot as the dump,
    so a restore can be checked exactly.
  - File names follow the runbook, C(<db>_<YYYYMMDD_HHMMSS>.sql.gz), with C(.enc) when encrypted.
    Encrypted files use the format of C(openssl enc -aes-256-cbc -salt -pbkdf2), so the runbook's
    manual C(openssl enc -d) restore works on them; an HMAC-SHA256 in the manifest detects tampering.
  - After a successful backup only, applies retention (O(retention_days), O(min_keep) and optional GFS
    counts). A failed run never deletes anything and never leaves a file that looks finished.
  - Writes Prometheus textfile metrics after every run when O(textfile_dir) is set, and reports
    failures to Sentry when O(sentry_dsn) is set.
  - Uses the same engine as the on-host C(scripts/backup_db.sh) that cron runs.
version_added: "0.1.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
extends_documentation_fragment:
  - forge.connection
  - forge.backup_store
options:
  database:
    description: Database to back up (the runbook's C(POSTGRES_DB)). Any name, including quotes or spaces.
    type: str
    required: true
    aliases: [db]
  retention_days:
    description: Delete good backups older than this many days (C(RETENTION_DAYS)), unless a keep rule holds them.
    type: int
    default: 30
  min_keep:
    description: The newest this many good backups are never deleted, whatever their age.
    type: int
    default: 7
  keep_daily:
    description: Also keep the newest backup of each of the last N days that have one.
    type: int
    default: 0
  keep_weekly:
    description: Also keep the newest backup of each of the last N ISO weeks that have one.
    type: int
    default: 0
  keep_monthly:
    description: Also keep the newest backup of each of the last N months that have one.
    type: int
    default: 0
  format:
    description:
      - V(plain) is the runbook's SQL dump, restorable with C(gunzip | psql).
      - V(custom) is C(pg_dump -Fc), restorable in parallel with C(pg_restore --jobs).
    type: str
    choices: [plain, custom]
    default: plain
  compression:
    description: Compression of plain dumps. V(gzip) stays C(gunzip)-compatible; V(zstd) is faster.
    type: str
    choices: [gzip, zstd]
    default: gzip
  compression_level:
    description:
      - Compression level. gzip 1-9, default 4 (within 2% of C(gzip -6)'s size, 1.4x faster);
        zstd 1-19, default 1; custom format 0-9, default 6.
    type: int
  jobs:
    description: Compression threads. Defaults to the number of CPUs.
    type: int
  gzip_tool:
    description:
      - What writes gzip. V(igzip) is ISA-L (Debian's C(isal) package), several times faster than zlib at a
        size close to C(gzip -6); V(auto) takes it when a root-owned C(/usr/bin/igzip) is installed, else
        V(zlib). Either way the file is read by C(gunzip). The manifest names the tool.
      - With igzip, levels 1-9 map to ISA-L's 1-3 (the default 4 is 2; 6 and above is 3).
    type: str
    choices: [auto, igzip, zlib]
    default: auto
  encrypt:
    description: Encrypt with AES-256-CBC (openssl enc format). Needs O(passphrase_file) or O(passphrase).
    type: bool
    default: false
  passphrase_file:
    description:
      - File whose first line is the passphrase, read exactly as C(openssl enc -pass file:) reads it.
      - The passphrase encrypts the backup (with O(encrypt=true)) and always signs its manifest; restores and
        drills trust only signed manifests. Without a passphrase the manifest is unsigned and the backup can
        be restored only by naming it, as UNVERIFIED.
      - A file that group or others can read is refused.
    type: path
  kdf_iter:
    description:
      - PBKDF2 iterations that derive the encryption key (C(BACKUP_KDF_ITER)), 1000 to 10000000.
      - The count is recorded in the signed manifest, so restores and drills need not be told it.
      - The default is openssl's own, so the runbook's C(openssl enc -d -aes-256-cbc -pbkdf2) decrypts the
        file as it is; with another count that command needs C(-iter N).
    type: int
    default: 10000
  dump_command:
    description:
      - The C(pg_dump) to run, as a list. Use it when the server is newer than the local client, for
        example V([docker, exec, -i, infer-forge-db-1, pg_dump]) to run the container's own C(pg_dump).
    type: list
    elements: str
    default: [pg_dump]
  dump_options:
    description: Extra C(pg_dump) options. The runbook's encrypted backup uses C(--no-owner --no-privileges).
    type: list
    elements: str
    default: [--no-owner, --no-privileges]
  lock_wait:
    description: Seconds to wait for another backup of the same database to finish; V(0) fails at once.
    type: int
    default: 0
  stall_timeout:
    description:
      - Seconds without progress from C(pg_dump) or the compressor before the run is stopped, in one line
        naming what stalled. A wait for a table lock ends at half of it, naming the table and who holds it.
    type: int
    default: 300
  textfile_dir:
    description: node_exporter textfile-collector directory for C(infer_forge_backup_*) metrics.
    type: path
  sentry_dsn:
    description: When set, a failed backup is reported to this Sentry DSN (tags component, database, host).
    type: str
  environment:
    description: Environment name sent with Sentry events (the runbook's C(ENVIRONMENT)).
    type: str
  space_check:
    description: Refuse to start when the directory has less free space than the backup is estimated to need.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Connects, checks the client version, the directory and free space, and reports the file it
      would write and the backups retention would delete.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Shows the list of backup files before and after.
requirements:
  - python3-psycopg (psycopg 3) and python3-cryptography on the host that runs the module
  - the PostgreSQL client (C(pg_dump)) of the server's major version or newer
notes:
  - Exit is a failure whenever C(pg_dump) fails, is killed, or its output lacks PostgreSQL's completion marker.
seealso:
  - module: infer.forge.forge_restore
"""

EXAMPLES = r"""
- name: Back up infer_forge as the runbook's backup_db.sh does
  forge_backup:
    database: infer_forge
    login_user: infer
    login_password: "{{ vault_postgres_password }}"
    backup_dir: /backups
    retention_days: 30

- name: Encrypted backup for off-site copies, with metrics for Prometheus
  forge_backup:
    database: infer_forge
    login_user: infer
    login_password: "{{ vault_postgres_password }}"
    encrypt: true
    passphrase_file: /etc/infer-forge/backup.pass
    textfile_dir: /var/lib/infer-forge-metrics/backup
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 6

- name: Back up a PostgreSQL 16 server running in Docker Compose with its own pg_dump
  forge_backup:
    database: infer_forge
    login_user: infer
    login_password: "{{ vault_postgres_password }}"
    dump_command: [docker, exec, -i, infer-forge-db-1, pg_dump]
    format: custom
"""

RETURN = r"""
path:
  description: Absolute path of the new backup (in check mode, the path it would have).
  returned: success
  type: str
  sample: /backups/infer_forge_20260207_143215.sql.gz
size:
  description: Size of the backup file in bytes.
  returned: changed
  type: int
  sample: 2411724
sha256:
  description: SHA-256 of the backup file, as in its C(.sha256) file.
  returned: changed
  type: str
manifest:
  description: Path of the JSON manifest.
  returned: changed
  type: str
duration:
  description: Wall time of the run in seconds.
  returned: always
  type: float
row_counts:
  description: Exact rows per table (C(schema.table)), counted in the dump's snapshot.
  returned: changed
  type: dict
  sample: {"public.orders": 123, "public.customers": 45}
tables:
  description: Number of tables in the backup.
  returned: changed
  type: int
rows:
  description: Total rows in the backup.
  returned: changed
  type: int
removed:
  description: Backups deleted by retention.
  returned: changed
  type: list
  elements: str
retained:
  description: Good backups kept in the directory after retention.
  returned: changed
  type: list
  elements: str
would_remove:
  description: In check mode, the backups retention would delete.
  returned: check mode
  type: list
  elements: str
encrypted:
  description: Whether the backup is encrypted.
  returned: changed
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from ansible.module_utils.forge import catalog
    from ansible.module_utils.forge.backup import BackupOptions, BackupRunner
    from ansible.module_utils.forge.errors import ForgeError
    from ansible.module_utils.forge.pgconn import PgSettings
    from ansible.module_utils.forge.privileges import call_as_directory_owner
    from ansible.module_utils.forge.requirements import POSTGRES, first_missing
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc


ARGUMENT_SPEC = dict(
    database=dict(type="str", required=True, aliases=["db"]),
    login_host=dict(type="str", default="localhost"),
    port=dict(type="int", default=5432),
    login_user=dict(type="str"),
    login_password=dict(type="str", no_log=True),
    backup_dir=dict(type="path", default="/backups"),
    retention_days=dict(type="int", default=30),
    min_keep=dict(type="int", default=7),
    keep_daily=dict(type="int", default=0),
    keep_weekly=dict(type="int", default=0),
    keep_monthly=dict(type="int", default=0),
    format=dict(type="str", choices=["plain", "custom"], default="plain"),
    compression=dict(type="str", choices=["gzip", "zstd"], default="gzip"),
    compression_level=dict(type="int"),
    jobs=dict(type="int"),
    gzip_tool=dict(type="str", choices=["auto", "igzip", "zlib"], default="auto"),
    encrypt=dict(type="bool", default=False),
    passphrase_file=dict(type="path", no_log=False),
    kdf_iter=dict(type="int", default=10000),
    passphrase=dict(type="str", no_log=True),
    retired_passphrases_file=dict(type="path", no_log=False),
    retired_passphrases=dict(type="list", elements="str", no_log=True, default=[]),
    dump_command=dict(type="list", elements="str", default=["pg_dump"]),
    dump_options=dict(type="list", elements="str", default=["--no-owner", "--no-privileges"]),
    lock_wait=dict(type="int", default=0),
    stall_timeout=dict(type="int", default=300),
    textfile_dir=dict(type="path"),
    sentry_dsn=dict(type="str", no_log=True),
    environment=dict(type="str"),
    space_check=dict(type="bool", default=True),
)


class BackupModule:
    """Maps module parameters onto the engine and the engine's result onto exit_json."""

    def __init__(self, module):
        self.module = module
        self.params = module.params

    def listing(self):
        directory = self.params["backup_dir"]
        if not os.path.isdir(directory) or os.path.islink(directory):
            return []
        # The diff lists files by name; whether each is trusted does not matter here.
        return [b.name for b in catalog.scan(directory, self.params["database"], catalog.TrustPolicy())]

    def run(self):
        p = self.params
        if p["encrypt"] and not (p["passphrase"] or p["passphrase_file"]):
            return dict(failed=True, msg="encrypt is true but neither passphrase_file nor passphrase is set")
        try:
            options = BackupOptions(
                backup_dir=p["backup_dir"], retention_days=p["retention_days"], min_keep=p["min_keep"],
                keep_daily=p["keep_daily"], keep_weekly=p["keep_weekly"], keep_monthly=p["keep_monthly"],
                dump_format=p["format"], compression=p["compression"], compression_level=p["compression_level"],
                jobs=p["jobs"], gzip_tool=p["gzip_tool"], passphrase_file=p["passphrase_file"],
                passphrase=p["passphrase"], retired_passphrases_file=p["retired_passphrases_file"],
                retired_passphrases=p["retired_passphrases"],
                encrypt=p["encrypt"], dump_command=p["dump_command"], dump_options=p["dump_options"],
                lock_wait=p["lock_wait"], stall_timeout=p["stall_timeout"], textfile_dir=p["textfile_dir"],
                sentry_dsn=p["sentry_dsn"],
                environment=p["environment"], space_check=p["space_check"], kdf_iterations=p["kdf_iter"])
            settings = PgSettings(host=p["login_host"], port=p["port"], user=p["login_user"],
                                  password=p["login_password"], database=p["database"])
            log = []
            before = self.listing()
            result = dict(BackupRunner(options, settings, log=log.append).run(check_mode=self.module.check_mode))
            result["log"] = log
            if self.module._diff:
                after = self.listing()
                if self.module.check_mode:
                    kept = [n for n in before if n not in result.get("would_remove", [])]
                    after = [result["path"].rsplit("/", 1)[-1]] + kept
                result["diff"] = dict(before={"backups": before}, after={"backups": after})
            return result
        except ForgeError as exc:
            return dict(failed=True, msg=exc.message, changed=False, **_safe_details(exc.details))


def _safe_details(details):
    return {key: value for key, value in details.items() if key in ("locked", "sentry", "metrics_error")}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    if first_missing(POSTGRES):
        module.fail_json(msg=missing_required_lib(POSTGRES))
    try:
        # Root never works in the backup user's directory: the engine runs as its owner.
        result = call_as_directory_owner(module.params["backup_dir"], BackupModule(module).run)
    except ForgeError as exc:
        result = dict(failed=True, msg=exc.message, changed=False)
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
