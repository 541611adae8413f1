"""On-host commands: ``python3 -m forge.cli backup`` is what scripts/backup_db.sh runs;
``verify``, ``restore`` and ``drill`` are scripts/restore_db.sh; ``offsite`` is scripts/offsite_copy.sh.

Configuration comes from the runbook's environment variables. A config file
(``BACKUP_CONFIG``, default ``/etc/infer-forge/backup.env``, empty for none) in KEY=VALUE form
provides defaults; variables set in the environment win, so the runbook's
``export POSTGRES_HOST=... ./scripts/backup_db.sh`` works unchanged.
The file is parsed, never sourced, so a password may contain any character.
"""

import os
import signal
import sys

from . import settings as declarations
from .errors import ForgeError, unexpected
from .privileges import become_directory_owner
from .settings import read_env_file

# This file is the on-host `forge` command, never an Ansible module: print and sys.exit are
# its interface.
# pylint: disable=ansible-bad-function

DEFAULT_CONFIG = "/etc/infer-forge/backup.env"
EXIT_FAILURE = 1
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock
EXIT_UNVERIFIED = 3  # restored or read through, but no signed manifest proves what it holds
COMMANDS = ("backup", "verify", "restore", "drill", "offsite")
USAGE = ("usage: forge {backup|verify|restore|drill|offsite|pitr|dr} [--help]  (settings from the environment and "
         "BACKUP_CONFIG, see docs/backup.md; pitr: PITR_CONFIG, see docs/pitr.md)")
DEFAULT_PITR_CONFIG = "/etc/infer-forge/pitr.env"


def load_config(environ):
    path = environ.get("BACKUP_CONFIG", DEFAULT_CONFIG)
    config = {}
    if path == "":
        pass  # explicitly no config file
    elif os.path.exists(path):
        try:
            config = read_env_file(path, root_trusts=True)
        except PermissionError:
            raise ForgeError(f"config file {path} is not readable by this user") from None
    elif "BACKUP_CONFIG" in environ:
        raise ForgeError(f"config file {path} does not exist")
    config.update({key: value for key, value in environ.items() if value != ""})
    return config


def _encrypt(config, passphrase_file):
    """BACKUP_ENCRYPT, which the runbook leaves out: a passphrase file alone turns encryption on."""
    raw = config.get("BACKUP_ENCRYPT")
    return declarations.BACKUP["encrypt"].parse(raw) if raw else bool(passphrase_file)


def backup_from_config(config):
    import shlex

    from .backup import BackupOptions, BackupRunner

    store = declarations.from_config(declarations.STORE, config)
    backup = declarations.from_config(declarations.BACKUP, config)
    passphrase_file = store["passphrase_file"]
    dump_command = shlex.split(config["BACKUP_DUMP_COMMAND"]) if config.get("BACKUP_DUMP_COMMAND") else None
    options = BackupOptions(
        backup_dir=store["backup_dir"],
        retention_days=backup["retention_days"],
        min_keep=backup["min_keep"],
        keep_daily=backup["keep_daily"],
        keep_weekly=backup["keep_weekly"],
        keep_monthly=backup["keep_monthly"],
        dump_format=backup["format"],
        compression=backup["compression"],
        compression_level=backup["compression_level"],
        jobs=backup["jobs"],
        gzip_tool=backup["gzip_tool"],
        passphrase_file=passphrase_file,
        retired_passphrases_file=store["retired_passphrases_file"],
        encrypt=_encrypt(config, passphrase_file),
        dump_command=dump_command,
        lock_wait=backup["lock_wait"],
        stall_timeout=backup["stall_timeout"],
        textfile_dir=store["textfile_dir"],
        sentry_dsn=store["sentry_dsn"],
        environment=store["environment"],
        space_check=backup["space_check"],
        kdf_iterations=store["kdf_iter"],
    )
    return BackupRunner(options, pg_settings_from_config(config), log=log_line)


def pg_settings_from_config(config):
    from .pgconn import PgSettings

    connection = declarations.from_config(declarations.CONNECTION, config)
    return PgSettings(host=connection["login_host"], port=connection["port"], user=connection["login_user"],
                      password=connection["login_password"], database=connection["database"],
                      sslmode=connection["sslmode"])


def _drill_checks(config):
    """DRILL_SQL_CHECKS: a JSON list of {"name", "sql", optional "expect"/"min"} in the config file."""
    import json

    raw = config.get("DRILL_SQL_CHECKS")
    if not raw:
        return []
    try:
        checks = json.loads(raw)
    except ValueError:
        raise ForgeError("DRILL_SQL_CHECKS must be a JSON list of {\"name\": ..., \"sql\": ...}") from None
    if not isinstance(checks, list):
        raise ForgeError("DRILL_SQL_CHECKS must be a JSON list")
    return checks


def _restore_clients(config):
    """RESTORE_PSQL_COMMAND / RESTORE_PG_RESTORE_COMMAND: the clients that restore, e.g.
    'docker exec -i infer-forge-db-1 pg_restore' when the host's own is older than the server;
    RESTORE_OWNER: the owner of each database a restore or drill creates (the Compose wrapper's
    restore role, which is no superuser and must own what it restores into)."""
    import shlex

    clients = {key: shlex.split(config[name]) if config.get(name) else None
               for key, name in (("psql_command", "RESTORE_PSQL_COMMAND"),
                                 ("pg_restore_command", "RESTORE_PG_RESTORE_COMMAND"))}
    return dict(clients, owner=config.get("RESTORE_OWNER") or None)


def restore_command(args, config):
    """verify / restore / drill, for scripts/restore_db.sh."""
    import argparse
    import json

    from .drill import DrillOptions, run_action
    from .restore import RestoreOptions

    parser = argparse.ArgumentParser(prog="restore_db.sh", description="Verify, restore or drill INFER FORGE backups.")
    sub = parser.add_subparsers(dest="action", required=True)
    for name, text in (("verify", "check a backup without touching any database"),
                       ("restore", "restore a backup into a database"),
                       ("drill", "restore into a scratch database, check row counts, drop it")):
        command = sub.add_parser(name, help=text)
        command.add_argument("backup", nargs="?", default="latest",
                             help="backup file in BACKUP_DIR, or 'latest' (newest good backup of POSTGRES_DB)")
        if name == "restore":
            command.add_argument("target", help="database to restore into")
            command.add_argument("--force", action="store_true",
                                 help="replace a target that has tables: restore beside it, swap it in when complete")
            command.add_argument("--drop-previous", action="store_true",
                                 help="with --force, drop the replaced database instead of keeping it as "
                                      "<target>_before_restore_<time>")
            command.add_argument("--jobs", type=int, default=None, help="pg_restore jobs (custom format)")
        if name == "drill":
            command.add_argument("--scratch", default=None, help="scratch database (default <db>_restore_drill)")
            command.add_argument("--keep", action="store_true", help="keep the scratch database for inspection")
            command.add_argument("--jobs", type=int, default=None, help="pg_restore jobs (custom format)")
            command.add_argument("--check", action="append", default=[], metavar="SQL",
                                 help="extra SQL check returning one value, e.g. 'SELECT COUNT(*) FROM orders'")
    parsed = parser.parse_args(args)
    settings = pg_settings_from_config(config)
    backup_file = None if parsed.backup == "latest" else parsed.backup
    store = declarations.from_config(declarations.STORE, config)
    passphrase_file = store["passphrase_file"]
    options = RestoreOptions(backup_dir=store["backup_dir"], passphrase_file=passphrase_file,
                             retired_passphrases_file=store["retired_passphrases_file"],
                             jobs=getattr(parsed, "jobs", None), force=getattr(parsed, "force", False),
                             keep_previous=not getattr(parsed, "drop_previous", False),
                             require_encryption=_encrypt(config, passphrase_file),
                             kdf_iterations=store["kdf_iter"],
                             stall_timeout=declarations.from_config(declarations.RESTORE, config,
                                                                    ["stall_timeout"])["stall_timeout"],
                             **_restore_clients(config))
    drill = None
    if parsed.action == "drill":
        drill = DrillOptions(
            database=settings.database,
            scratch_database=parsed.scratch or declarations.from_config(declarations.DRILL, config)["scratch_database"],
            backup_file=backup_file, keep=parsed.keep,
            sql_checks=_drill_checks(config) + [{"name": sql, "sql": sql} for sql in parsed.check],
            textfile_dir=store["textfile_dir"], report_dir=store["report_dir"],
            sentry_dsn=store["sentry_dsn"], environment=store["environment"])
    report = run_action(parsed.action, options, settings, database=settings.database, backup_file=backup_file,
                        target=getattr(parsed, "target", None), drill=drill, log=log_line)
    if parsed.action == "drill":
        counted = "counted" if report["verdict"] == "UNVERIFIED" else "checked"
        log_line(f"{report['verdict']}: {report.get('backup', '-')}: "
                 f"{report.get('tables_checked', 0)} tables, {report.get('rows_checked', 0)} rows {counted} in "
                 f"{report['duration']:.1f} s; {report['reason']}")
        return {"PASS": 0, "UNVERIFIED": EXIT_UNVERIFIED}.get(report["verdict"], EXIT_FAILURE)
    log_line(json.dumps(report, indent=2, sort_keys=True))
    return 0 if report.verified else EXIT_UNVERIFIED


def offsite_from_config(config):
    """OFFSITE_* settings (in the same BACKUP_CONFIG file) for ``forge offsite``."""
    from .offsite import OffsiteCopy, OffsiteOptions

    store = declarations.from_config(declarations.STORE, config, [
        "backup_dir", "textfile_dir", "report_dir", "sentry_dsn", "environment", "passphrase_file",
        "retired_passphrases_file"])
    offsite = declarations.from_config(declarations.OFFSITE, config)
    options = OffsiteOptions(
        backup_dir=store["backup_dir"],
        target=config.get("OFFSITE_TARGET"),
        database=config.get("POSTGRES_DB"),
        retention_days=offsite["retention_days"],
        min_keep=offsite["min_keep"],
        ssh_port=offsite["ssh_port"],
        ssh_identity=config.get("OFFSITE_SSH_KEY"),
        known_hosts=config.get("OFFSITE_KNOWN_HOSTS"),
        require_mount=offsite["require_mount"],
        skip_unencrypted=offsite["skip_unencrypted"],
        textfile_dir=store["textfile_dir"],
        state_dir=store["report_dir"],
        sentry_dsn=store["sentry_dsn"],
        environment=store["environment"],
        passphrase_file=store["passphrase_file"],
        retired_passphrases_file=store["retired_passphrases_file"],
    )
    return OffsiteCopy(options, log=log_line)


def offsite_command(args, config):
    """``forge offsite [--check]``: copy encrypted backups to OFFSITE_TARGET and verify them there."""
    check_mode = "--check" in args
    result = offsite_from_config(config).run(check_mode=check_mode)
    verdict = "PLAN" if check_mode and result["passed"] else ("OK" if result["passed"] else "FAILED")
    log_line(f"Off-site copy {verdict}: {result['database']} -> {result.get('target') or '-'}: {result['reason']}")
    return 0 if result["passed"] else EXIT_FAILURE


def _terminate(signum, frame):
    # Turn SIGTERM into an exception so the partial file is cleaned up on the way out.
    raise KeyboardInterrupt(f"signal {signum}")


BACKUP_HELP = f"""usage: backup_db.sh [--help]

Take one verified backup of POSTGRES_DB into BACKUP_DIR, then apply retention.
Settings come from the environment and from BACKUP_CONFIG (default
/etc/infer-forge/backup.env); the environment wins. The main ones:
  POSTGRES_HOST POSTGRES_PORT POSTGRES_USER POSTGRES_PASSWORD POSTGRES_DB
  {declarations.STORE["backup_dir"].env} ({declarations.STORE["backup_dir"].default})  \
{declarations.help_line(declarations.BACKUP, "retention_days", "min_keep")}
  BACKUP_PASSPHRASE_FILE  encrypts (AES-256, openssl enc format) and signs the manifest
  BACKUP_ENCRYPT (on when a passphrase file is set)  BACKUP_FORMAT (plain|custom)
  BACKUP_COMPRESSION (gzip|zstd)  BACKUP_KDF_ITER ({declarations.STORE["kdf_iter"].default}, openssl's default)
  BACKUP_TEXTFILE_DIR  SENTRY_DSN
Exit status: 0 done, 1 failed (nothing deleted), 75 another backup holds the lock."""


OFFSITE_HELP = """usage: offsite_copy.sh [--check] [--help]

Copy the verified, encrypted backups of POSTGRES_DB in BACKUP_DIR to OFFSITE_TARGET (the NAS,
user@nas:/path, or a mounted USB path) and verify each copy there; --check says what it would copy.
Settings come from the environment and BACKUP_CONFIG, like backup_db.sh; see docs/offsite.md.
Exit status: 0 done, 1 failed."""

# The arguments each script takes; anything else is refused before a setting is read.
ARGUMENTS = {"backup": ("backup_db.sh", BACKUP_HELP, ()), "offsite": ("offsite_copy.sh", OFFSITE_HELP, ("--check",))}


def refuse_unknown_arguments(argv):
    """Help (exit 0) or usage and one line (exit 2) for backup and offsite, or None to go on:
    `backup_db.sh --dry-run` must never run a real backup and retention."""
    script, text, known = ARGUMENTS[argv[0]]
    if any(arg in ("-h", "--help") for arg in argv[1:]):
        print(text)
        return 0
    unknown = [arg for arg in argv[1:] if arg not in known]
    if unknown:
        print(f"{text}\n{script}: error: unknown argument {unknown[0]!r}; nothing was done", file=sys.stderr)
        return 2
    return None


class OutputThatNeverStopsARun:
    """stdout or stderr of a run: `backup_db.sh | head` closes it early, and cron's log on a full
    /var/log fails every write (ENOSPC). Neither may stop a backup or turn it into a traceback:
    after the first failed write the stream goes to /dev/null and the run goes on; its metrics
    and Sentry say how it went."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError:
            self._to_devnull()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except OSError:
            self._to_devnull()

    def _to_devnull(self):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            self._stream.flush()  # what was buffered goes nowhere now
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def log_line(line):
    print(line, flush=True)


def pitr_options_from_config(config):
    from .pitr import PitrOptions

    pitr = declarations.from_config(declarations.PITR, config, [
        "server", "postgres_bin", "scratch_root", "scratch_port", "login_user", "textfile_dir", "report_dir",
        "sentry_dsn", "environment", "jobs"])

    def given(name):  # a setting left empty in pitr.env takes the declared default
        return pitr[name] or declarations.PITR[name].default

    return PitrOptions(
        server=pitr["server"], postgres_bin=given("postgres_bin"), scratch_root=given("scratch_root"),
        scratch_port=pitr["scratch_port"], login_user=given("login_user"),
        textfile_dir=given("textfile_dir"), report_dir=given("report_dir"), sentry_dsn=given("sentry_dsn"),
        environment=given("environment"), jobs=pitr["jobs"] or None,
        # Another Barman configuration (a Barman home brought back from the off-site copy, say).
        barman_command=["barman", "-c", config["PITR_BARMAN_CONFIG"]] if config.get("PITR_BARMAN_CONFIG") else None)


def pitr_offsite_options_from_config(config, options):
    from .pitr_offsite import OffsiteOptions
    from .records import PITR_REPORT_DIR

    offsite = declarations.from_config(declarations.PITR_OFFSITE, config)
    return OffsiteOptions(
        server=options.server,
        repository=offsite["offsite_repository"] or "",
        password=offsite["offsite_password"] or "",
        rest_user=offsite["offsite_rest_user"] or None,
        rest_password=offsite["offsite_rest_password"] or None,
        cacert=offsite["offsite_cacert"] or None,
        check_subset=offsite["offsite_check_subset"] or declarations.PITR_OFFSITE["offsite_check_subset"].default,
        state_dir=options.report_dir or PITR_REPORT_DIR,
        textfile_dir=options.textfile_dir,
        sentry_dsn=options.sentry_dsn,
        environment=options.environment)


def pitr_offsite_command(parsed, config, barman):
    """forge pitr offsite [--init] | offsite-check: one line, PASS/FAIL, exit 1 on failure."""
    from .pitr_offsite import PitrOffsite

    offsite = PitrOffsite(pitr_offsite_options_from_config(config, barman.options), barman, log=log_line)
    if parsed.action == "offsite-restore" and parsed.into_barman:
        if parsed.target:
            raise ForgeError("offsite-restore takes a directory or --into-barman, not both; nothing was restored")
        result = offsite.restore_into_barman(parsed.snapshot)
        log_line(f"Restored off-site snapshot {result['snapshot']} of {barman.options.server} into Barman's catalog "
                 f"in {result['duration']:.1f} s, every file verified: {result['base_backups']} base backup(s) and "
                 f"{result['wal_files']} WAL file(s) added, {result['already_there']} already there")
        return 0
    if parsed.action == "offsite-restore":
        if not parsed.target:
            raise ForgeError("offsite-restore needs a directory (new or empty) or --into-barman; nothing was restored")
        result = offsite.restore(parsed.target, parsed.snapshot)
        log_line(f"Restored off-site snapshot {result['snapshot']} of {barman.options.server} into {result['target']} "
                 f"in {result['duration']:.1f} s, every file verified; Barman's directory is at "
                 f"{result['target']}{os.path.dirname(barman.directory('basebackups_directory').rstrip('/'))}")
        return 0
    if parsed.action == "offsite-check":
        result = offsite.check()
        if result.get("locked"):
            log_line(f"SKIP: off-site PITR check of {barman.options.server}: {result['reason']}")
            return EXIT_LOCKED
        log_line(f"{result['verdict']}: off-site PITR check of {barman.options.server}: {result['reason']} "
                 f"({result['duration']:.1f} s)")
        return 0 if result["passed"] else EXIT_FAILURE
    if parsed.init:
        offsite.init()
    result = offsite.copy()
    if result.get("locked"):
        log_line(f"SKIP: off-site PITR copy of {barman.options.server}: {result['reason']}")
        return EXIT_LOCKED
    if not result["passed"]:
        raise ForgeError(f"off-site PITR copy of {barman.options.server} failed: {result['reason']}")
    log_line(f"Off-site PITR copy OK: {barman.options.server} -> {offsite.options.repository}: {result['reason']} "
             f"({result['duration']:.1f} s)")
    return 0


def pitr_command(args, environ):
    """forge pitr drill | recover [--time T | --name N] [--remove] | metrics | offsite [--init] |
    offsite-check: on the Barman host, as barman."""
    import argparse

    from .pitr import PitrRecovery

    parser = argparse.ArgumentParser(prog="forge pitr", description="Point-in-time recovery with Barman.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("drill", help="restore point with exact counts, recovered into a scratch cluster, compared, removed")
    recover = sub.add_parser("recover", help="recover into a new scratch cluster (never over the live server)")
    target = recover.add_mutually_exclusive_group()
    target.add_argument("--time", help="recover to this time, e.g. '2026-12-03 14:05:00+00'")
    target.add_argument("--name", help="recover to this restore point")
    recover.add_argument("--remove", action="store_true", help="stop and remove the scratch cluster afterwards")
    recover.add_argument("--remove-failed", action="store_true",
                         help="remove the scratch directory of a failed recovery (kept for inspection by default)")
    sub.add_parser("metrics", help="barman check, list-backups and the WAL archive as node_exporter metrics")
    offsite = sub.add_parser("offsite", help="copy Barman's base backups and WAL off site with restic (encrypted)")
    offsite.add_argument("--init", action="store_true", help="make the repository first when there is none")
    sub.add_parser("offsite-check", help="restic check of the off-site repository, PITR_OFFSITE_CHECK_SUBSET read back")
    offsite_restore = sub.add_parser("offsite-restore", help="bring an off-site snapshot back into a new directory")
    offsite_restore.add_argument("target", nargs="?", help="a directory that does not exist yet, or an empty one")
    offsite_restore.add_argument("--into-barman", action="store_true",
                                 help="put the snapshot's base backups and WAL back into Barman's own catalog "
                                      "(a rebuilt Barman host); nothing there is replaced")
    offsite_restore.add_argument("--snapshot", default="latest", help="a snapshot id (default: latest)")
    check = sub.add_parser("check-config", help="let Barman read a server configuration file (template validate)")
    check.add_argument("file")
    parsed = parser.parse_args(args)
    if os.geteuid() == 0 and parsed.action != "check-config":
        # Barman's files and the scratch clusters are barman's; PostgreSQL refuses to run as root.
        raise ForgeError("forge pitr runs as the barman user: sudo -u barman env PITR_CONFIG=... forge pitr "
                         f"{parsed.action}; nothing was changed")
    if parsed.action == "check-config":
        from .barman import check_server_config

        for line in check_server_config(parsed.file):
            log_line(line)
        return 0
    path = environ.get("PITR_CONFIG", DEFAULT_PITR_CONFIG)
    config = read_env_file(path) if path and os.path.exists(path) else {}
    # The environment wins over the file, as for the backup commands.
    config.update({name: setting for name, setting in environ.items() if setting != ""})
    options = pitr_options_from_config(config)
    settings = pg_settings_from_config(config)
    engine = PitrRecovery(options, settings, log=log_line)
    if parsed.action == "metrics":
        from .barman import status_metrics

        if not options.textfile_dir:
            raise ForgeError("PITR_TEXTFILE_DIR is not set; nowhere to write the metrics")
        status = status_metrics(options)
        if status["failed_checks"]:
            log_line(f"barman check {options.server}: FAILED {', '.join(status['failed_checks'])}")
        return 0
    if parsed.action in ("offsite", "offsite-check", "offsite-restore"):
        return pitr_offsite_command(parsed, config, engine.barman)
    if parsed.action == "drill":
        report = engine.drill(settings.database)
        log_line(f"{report['verdict']}: PITR drill of {options.server}: {report['reason']} "
                 f"({report['duration']:.1f} s, recovery {report.get('recovery_seconds', 0):.1f} s)")
        return 0 if report["passed"] else EXIT_FAILURE
    kind, value = ("time", parsed.time) if parsed.time else (("name", parsed.name) if parsed.name else ("latest", None))
    result = engine.recover(kind, value, database=settings.database, keep=not parsed.remove,
                            remove_failed=parsed.remove_failed)
    where = "removed" if result.get("removed") else (
        f"running: psql -h {result['socket_directory']} -p {result['port']} -U {options.login_user} "
        f"-d {settings.database}")
    to = f"{kind} {value}" if value else kind
    log_line(f"Recovered {options.server} to {to} in {result['recovery_seconds']:.1f} s "
             f"into {result['data_directory']}; {where}")
    if "counts" in result:
        log_line("rows: " + ", ".join(f"{table} {count}" for table, count in sorted(result["counts"].items())))
    return 0


def dr_command(args):
    """forge dr undo --project P --aside V: on the database host, as root, swap the contents a
    put-back moved aside back into the db service's volume (docs/disaster-recovery.md)."""
    import argparse

    from .putback import PutBack

    parser = argparse.ArgumentParser(prog="forge dr", description="Undo a put-back of the database.")
    sub = parser.add_subparsers(dest="action", required=True)
    undo = sub.add_parser("undo", help="swap the volume's contents the put-back moved aside back in")
    undo.add_argument("--project", required=True, help="the Compose project of the db service")
    undo.add_argument("--aside", required=True, help="the volume the put-back named (<volume>-before-dr-<stamp>)")
    undo.add_argument("--db-service", default="db", help="the database service (default: db)")
    undo.add_argument("--app-service", action="append", default=[],
                      help="a service that reads the database, stopped first and started last (repeat)")
    parsed = parser.parse_args(args)
    result = PutBack(parsed.project, parsed.db_service, parsed.app_service, log=log_line).undo(parsed.aside)
    log_line(f"The database of {parsed.project} is back from {result['restored_from']} in {result['volume']}; "
             f"the contents it replaced are kept in volume {result['kept_in']}")
    return 0


def nas_newest_command(argv):
    """forge nas-newest --dir D --state S --database DB: on the NAS, the newest copy its last
    verification accepted, read again now; one line, the files after it."""
    import argparse

    from .farside import DEFAULT_CHECK_KEYS, newest_copy
    from .signing import read_check_keys

    parser = argparse.ArgumentParser(prog="forge nas-newest",
                                     description="the newest copy of a database the NAS verified, read again now")
    parser.add_argument("--dir", required=True, help="the NAS's directory of copies")
    parser.add_argument("--state", required=True, help="the NAS's state directory (the receipt)")
    parser.add_argument("--database", required=True)
    parser.add_argument("--check-keys", default=DEFAULT_CHECK_KEYS,
                        help="the keys copies are checked with (an unsigned copy is passed over)")
    args = parser.parse_args(argv)
    found = newest_copy(args.dir, args.state, args.database, check_keys=read_check_keys(args.check_keys))
    skipped = f"; passed over: {'; '.join(found['passed_over'])}" if found["passed_over"] else ""
    print(f"NEWEST: {found['backup']} ({found['size']} bytes, sha256 {found['sha256']}) read again now{skipped}")
    for path in found["files"]:
        print(path)
    return 0


def nas_check_keys_command(argv):
    """forge nas-check-keys: on a backup host, the keys its NAS checks copies with (one line
    each, the current passphrase's first, then each retired one's), for the NAS's check keys
    file. They prove who sent a copy and nothing else: no restore trusts a manifest by them."""
    import argparse

    from .signing import key_id, load_keyring, load_passphrase, offsite_check_key

    parser = argparse.ArgumentParser(prog="forge nas-check-keys",
                                     description="print the keys the NAS checks this host's copies with")
    parser.add_argument("--passphrase-file", help="default: BACKUP_PASSPHRASE_FILE (environment or BACKUP_CONFIG)")
    parser.add_argument("--retired-passphrases-file", help="default: BACKUP_RETIRED_PASSPHRASES_FILE")
    args = parser.parse_args(argv)
    store = declarations.from_config(declarations.STORE, load_config(os.environ),
                                     ["passphrase_file", "retired_passphrases_file"])
    passphrase_file = args.passphrase_file or store["passphrase_file"]
    if not passphrase_file:
        raise ForgeError("no passphrase file: give --passphrase-file or set BACKUP_PASSPHRASE_FILE")
    current = load_passphrase(None, passphrase_file)
    retired = load_keyring(None, args.retired_passphrases_file or store["retired_passphrases_file"])
    for passphrase, which in [(current, "current")] + [(p, "retired") for p in retired if p != current]:
        key = offsite_check_key(passphrase)
        print(f"{key.hex()}  # check key {key_id(key)} ({which} passphrase)")
    return 0


def main(argv=None):
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = OutputThatNeverStopsARun(sys.stdout), OutputThatNeverStopsARun(sys.stderr)
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv):
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv and argv[0] in ("nas-gate", "nas-newest", "nas-check-keys"):
        # The NAS side of off-site copies: the forced command of the backup hosts' key, the
        # operator's way back (never reachable through that key), and the keys it checks with.
        from .farside import gate_main

        commands = {"nas-gate": gate_main, "nas-newest": nas_newest_command, "nas-check-keys": nas_check_keys_command}
        try:
            return commands[argv[0]](argv[1:])
        except ForgeError as exc:
            print(f"ERROR: {exc.message}", file=sys.stderr, flush=True)
            return EXIT_FAILURE
        except OSError as exc:
            print(f"ERROR: {argv[0]} stopped: {exc.strerror or exc}: {exc.filename or '-'}",
                  file=sys.stderr, flush=True)
            return EXIT_FAILURE
    if argv and argv[0] in ("pitr", "dr"):
        try:
            return pitr_command(argv[1:], os.environ) if argv[0] == "pitr" else dr_command(argv[1:])
        except ForgeError as exc:
            print(f"ERROR: {exc.message}", file=sys.stderr, flush=True)
            return EXIT_FAILURE
        except KeyboardInterrupt:
            print(f"ERROR: forge {argv[0]} interrupted", file=sys.stderr, flush=True)
            return EXIT_FAILURE
        except Exception as exc:  # noqa: BLE001 - an operator gets one line, never a traceback
            print(f"ERROR: forge {' '.join(argv[0:2])} stopped: {unexpected(exc)}", file=sys.stderr, flush=True)
            return EXIT_FAILURE
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] in ARGUMENTS:
        refused = refuse_unknown_arguments(argv)
        if refused is not None:
            return refused
    signal.signal(signal.SIGTERM, _terminate)
    try:
        config = load_config(os.environ)
        # Before anything is opened: root never works in the backup user's directory.
        become_directory_owner(declarations.from_config(declarations.STORE, config, ["backup_dir"])["backup_dir"],
                               log=lambda line: print(f"NOTE: {line}", file=sys.stderr, flush=True))
        if argv[0] == "offsite":
            return offsite_command(argv[1:], config)
        if argv[0] != "backup":
            return restore_command(argv, config)
        runner = backup_from_config(config)
        runner.run()
    except ForgeError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr, flush=True)
        return EXIT_LOCKED if exc.details.get("locked") else EXIT_FAILURE
    except KeyboardInterrupt as exc:
        print(f"ERROR: {argv[0]} interrupted ({exc or 'SIGINT'}); nothing was kept", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
