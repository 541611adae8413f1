"""Point-in-time recovery with Barman, the job: restore points with exact row counts, a
recovery into a scratch cluster, and the PITR drill that compares the two.

Barman (the pitr role) streams the WAL of the Compose database with pg_receivewal and takes
base backups with pg_basebackup. Everything here runs on the Barman host as the barman user
and never writes to the live server beyond one restore point. Barman itself is driven by
barman.py, the scratch cluster a recovery goes into is scratch.py, and the WAL staged ahead of
its replay walstage.py; the records a drill leaves are named in records.py.
"""

import datetime
import os
import re
import socket
import time

from . import records
from .barman import Barman, check_server_name
from .errors import ForgeError, database_error, unexpected
from .outcome import report_failure, write_metrics, write_report
from .pgconn import check_btree_indexes, count_rows, user_tables
from .scratch import SCRATCH_MARKER, ScratchCluster

RESTORE_POINT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,63}\Z")
TARGETS = ("latest", "time", "name")


class PitrOptions:
    def __init__(self, server, barman_command=None, postgres_bin="/usr/lib/postgresql/17/bin",
                 scratch_root="/var/lib/barman/infer-forge-scratch", scratch_port=55432, login_user="infer",
                 keep=False, amcheck=True, lock_timeout=5, start_timeout=600, wal_timeout=120,
                 textfile_dir=None, report_dir=None, sentry_dsn=None, environment=None, jobs=None):
        check_server_name(server)
        self.server = server
        self.barman_command = list(barman_command or ["barman"])
        self.postgres_bin = postgres_bin
        self.scratch_root = scratch_root
        self.scratch_port = int(scratch_port)
        self.login_user = login_user
        self.keep = keep
        self.amcheck = amcheck
        self.lock_timeout = lock_timeout
        self.start_timeout = start_timeout
        self.wal_timeout = wal_timeout
        self.textfile_dir = textfile_dir
        self.report_dir = report_dir
        self.sentry_dsn = sentry_dsn
        self.environment = environment
        # barman restore copies the base backup with this many rsync processes (one per core
        # by default: a 2 GB copy took 9.1 s with one and 2.3 s with two on a 2-core host).
        self.jobs = max(1, int(jobs or os.cpu_count() or 1))


def check_target(target, value):
    """``value`` when Barman may write it as the recovery target into the scratch cluster's
    postgresql.auto.conf (between single quotes): printable, no quote, backslash or line break
    that could end the quotes and add a setting (a command) of the caller's, and no longer than
    PostgreSQL keeps (restore point names: 63 bytes). Names the app chose (spaces and all) pass."""
    limit = 63 if target == "name" else 64
    if (not value or len(value.encode()) > limit or any(ch in value for ch in "'\\")
            or any(not ch.isprintable() for ch in value)):
        raise ForgeError(f"a recovery target {target} must be 1-{limit} printable characters without a quote or "
                         f"backslash, got {value[:80]!r}; nothing was changed")
    return value


def create_restore_point(settings, name, lock_timeout=5):
    """A named restore point at which every user table's row count is known exactly, with
    the app's writers held for milliseconds, not for the length of the counts.

    One session locks every user table IN SHARE MODE (writers wait, readers do not; the lock
    waits for writers already inside their transaction, and a lock not granted within
    ``lock_timeout`` seconds fails the drill instead of stalling the app). While the locks
    are held, a second session takes a REPEATABLE READ snapshot: it holds exactly the commits
    made before them. The first writes the restore point and commits, releasing the writers.
    No commit falls between that snapshot and the restore point, so the counts, taken
    afterwards in the snapshot, are what a recovery to the point must show."""
    import psycopg
    from psycopg import sql

    if not RESTORE_POINT_RE.match(name):
        raise ForgeError(f"restore point name must be 1-63 letters, digits, '_', '.' or '-', got {name!r}")
    try:
        with settings.connect(autocommit=False) as locker, settings.connect(autocommit=False) as counter:
            lock = locker.cursor()
            lock.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout * 1000)}ms")))
            tables = user_tables(lock)
            if tables:
                lock.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(schema, table) for schema, table in tables)))
            started = time.monotonic()  # from here until the commit, writers wait
            counter.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            counter.read_only = True
            count = counter.cursor()
            count.execute("SELECT 1")  # the snapshot is taken here, while the writers wait
            lock.execute("SELECT pg_create_restore_point(%s)::text, now()", (name,))
            lsn, at = lock.fetchone()
            locker.commit()
            held = time.monotonic() - started
            counts = count_rows(count, tables)
            counter.rollback()
    except psycopg.Error as exc:
        raise ForgeError(f"restore point {name} not created: {database_error(exc)}") from None
    return {"name": name, "lsn": lsn, "created_at": at.isoformat(), "counts": counts,
            "writers_held_seconds": round(held, 4)}


def compare_counts(expected, actual):
    problems = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            problems.append(f"{table} missing from the recovered copy")
        elif table not in expected:
            problems.append(f"{table} in the recovered copy but not at the restore point")
        elif expected[table] != actual[table]:
            problems.append(f"{table}: {actual[table]} rows recovered, {expected[table]} at the restore point")
    return problems


def _stamp(now):
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


class PitrRecovery:
    """Recover to latest, a time or a restore point into a scratch cluster (``recover``), or
    drill: a restore point with exact counts, recovered and compared (``drill``)."""

    def __init__(self, options, settings, log=None, clock=time.time):
        self.options = options
        self.settings = settings
        self.barman = Barman(options)
        self.log = log or (lambda line: None)
        self.clock = clock

    def recover(self, target="latest", value=None, database=None, keep=True, remove_failed=False):
        """Recover into a new scratch cluster. A failure before PostgreSQL ran (a refusal,
        Barman's restore) leaves nothing behind; one after it (the replay ends in a FATAL, the
        counts fail) stops the server and keeps the directory and its log for inspection,
        unless ``remove_failed``: either way the error is one line that says which."""
        if target not in TARGETS:
            raise ForgeError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if target != "latest" and not value:
            raise ForgeError(f"a recovery to a {target} needs its value")
        if target != "latest":
            check_target(target, value)
        if target == "time":
            self.check_time_reachable(value)
        to = f"{target} {value}" if value else target
        started = time.monotonic()
        scratch = ScratchCluster(self.options, f"recover-{_stamp(self.clock())}")
        scratch.prepare()
        try:
            self.log(f"Recovering {self.options.server} to {to} into {scratch.data}")
            scratch.restore(self.barman, target, value)
        except BaseException:
            scratch.remove()
            raise
        try:
            scratch.start()
            result = {"target": target, "value": value, "data_directory": scratch.data,
                      "socket_directory": scratch.socket_dir, "port": self.options.scratch_port,
                      "recovery_seconds": round(time.monotonic() - started, 3)}
            if database:
                result["counts"] = scratch.counts(database)
        except Exception as exc:  # noqa: BLE001 - every failure here ends as one line
            reason = unexpected(exc)
            if "recovery ended before configured recovery target was reached" in reason:
                reason += (f"; restore point {value} is not in the WAL Barman received" if target == "name"
                           else "; the WAL Barman received ends before the target")
            scratch.stop()
            if remove_failed:
                scratch.remove()
                raise ForgeError(f"recovery of {self.options.server} to {to} failed: {reason}; the scratch "
                                 "directory was removed") from None
            raise ForgeError(f"recovery of {self.options.server} to {to} failed: {reason}; kept for inspection in "
                             f"{scratch.path} "
                             f"(remove it with: rm -rf {scratch.path})") from None
        except BaseException:
            scratch.remove()
            raise
        if not keep:
            scratch.remove()
            result["removed"] = True
        return result

    def check_time_reachable(self, value):
        """Refuse, before anything is copied, a time the WAL Barman received does not reach:
        PostgreSQL would replay all of it and then stop with a FATAL. A time that does not
        parse here is left to Barman and PostgreSQL, which say so themselves."""
        try:
            when = datetime.datetime.fromisoformat(value).astimezone()
        except (TypeError, ValueError, OverflowError, OSError):
            return
        last = self.barman.last_commit_time()
        if last is not None and when >= last:
            raise ForgeError(f"no WAL of {self.options.server} reaches {value}: the last commit Barman received is "
                             f"at {last.isoformat(sep=' ')}, so a time target must lie before it (recover to latest "
                             "for everything received); nothing was changed")

    def clear_stale_drills(self):
        """A drill killed half-way leaves its scratch cluster (maybe running) behind; the next
        drill stops and removes it. Recoveries an operator kept (recover-*) are left alone."""
        root = self.options.scratch_root
        removed = []
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            if name.startswith("drill-") and os.path.isfile(os.path.join(root, name, SCRATCH_MARKER)):
                stale = ScratchCluster(self.options, name)
                stale.started = os.path.exists(os.path.join(stale.data, "postmaster.pid"))
                stale.remove()
                removed.append(name)
        return removed

    def drill(self, database):
        started = time.monotonic()
        now = self.clock()
        name = f"forge_pitr_drill_{_stamp(now)}"
        result = {"server": self.options.server, "database": database, "restore_point": name,
                  "host": socket.gethostname(), "started_at": _stamp(now), "passed": False, "checks": {}}
        scratch = None
        try:
            stale = self.clear_stale_drills()
            if stale:
                result["removed_stale"] = stale
            point = create_restore_point(self.settings.with_database(database), name, self.options.lock_timeout)
            result["restore_point_lsn"] = point["lsn"]
            result["writers_held_seconds"] = point["writers_held_seconds"]
            result["checks"]["restore_point"] = "passed"
            self.barman.switch_wal()
            scratch = ScratchCluster(self.options, f"drill-{_stamp(now)}")
            scratch.prepare()
            restore_started = time.monotonic()
            scratch.restore(self.barman, "name", name)
            scratch.start()
            result["recovery_seconds"] = round(time.monotonic() - restore_started, 3)
            actual = scratch.counts(database)
            problems = compare_counts(point["counts"], actual)
            result["checks"]["row_counts"] = "failed" if problems else "passed"
            result["tables_checked"] = len(point["counts"])
            result["rows_checked"] = sum(actual.get(t, 0) for t in point["counts"])
            if self.options.amcheck and not problems:
                with scratch.connect_as_owner(database) as conn:
                    try:
                        result["indexes_checked"] = check_btree_indexes(conn)
                        result["checks"]["amcheck"] = "passed"
                    except Exception as exc:  # noqa: BLE001 - reported as one line
                        result["checks"]["amcheck"] = "failed"
                        problems.append(f"amcheck: {database_error(exc)}")
            result["passed"] = not problems
            result["reason"] = "; ".join(problems) if problems else (
                f"{result['tables_checked']} tables, {result['rows_checked']} rows at restore point {name} "
                "recovered exactly")
        except ForgeError as exc:
            result["reason"] = exc.message
        except Exception as exc:  # noqa: BLE001 - a drill reports, it does not crash
            result["reason"] = unexpected(exc)
        finally:
            if scratch is not None and not self.options.keep:
                scratch.remove()
            elif scratch is not None:
                scratch.stop_staging()
                result["kept"] = scratch.data
        result["verdict"] = "PASS" if result["passed"] else "FAIL"
        result["duration"] = round(time.monotonic() - started, 3)
        self._record(result)
        return result

    def _record(self, result):
        if self.options.report_dir:
            write_report(result, records.pitr_drill_report_path(self.options.report_dir, self.options.server))
        if self.options.textfile_dir:
            now = self.clock()
            samples = [
                ("last_run_timestamp_seconds", "When the last PITR drill ended.", now),
                ("last_run_success", "1 if the last PITR drill passed, else 0.", 1 if result["passed"] else 0),
                ("duration_seconds", "Wall time of the last PITR drill.", result["duration"]),
                ("recovery_seconds", "Recovery time of the last PITR drill's scratch cluster.",
                 result.get("recovery_seconds", 0)),
                ("tables_checked", "Tables whose row counts the last PITR drill compared.",
                 result.get("tables_checked", 0)),
                ("rows_checked", "Rows the last PITR drill counted.", result.get("rows_checked", 0)),
            ]
            write_metrics(result, self.options.textfile_dir, records.pitr_drill_metrics_filename(self.options.server),
                          records.PITR_DRILL_METRIC_PREFIX, {"server": self.options.server}, samples, now,
                          "When a PITR drill last passed.")
        if not result["passed"]:
            report_failure(result, self.options.sentry_dsn, f"PITR drill of {self.options.server} failed: "
                           f"{result['reason']}", "pitr-drill", result["database"], result["host"],
                           self.options.environment)
