"""The restore drill: prove that a backup restores, exactly.

1. Restore the chosen backup into a scratch database.
2. Compare every table's row count with the counts the manifest recorded in
   the dump's snapshot (no table missing, none extra, no count off); optional
   amcheck of every B-tree index; optional SQL checks.
3. Record the outcome: Prometheus textfile metrics, a JSON report, Sentry on failure.
4. Drop the scratch database, also after a failure, unless asked to keep it.
"""

import datetime
import socket
import time

from .compress import default_workers
from .errors import ForgeError, database_error
from .outcome import report_failure, write_metrics, write_report
from .pgconn import check_btree_indexes, count_rows_in_parallel, drop_database
from .records import DRILL_METRIC_PREFIX as METRIC_PREFIX
from .records import drill_metrics_filename, drill_report_path
from .restore import Restorer, derived_name, describe_count_mismatches
from .verify import verify_file

DRILL_COMMENT = "infer-forge restore drill scratch database"


class DrillOptions:
    def __init__(self, database, scratch_database=None, backup_file=None, keep=False, sql_checks=None,
                 amcheck=False, textfile_dir=None, report_dir=None, sentry_dsn=None, environment=None):
        if not database:
            raise ForgeError("the drill needs the source database name")
        self.database = database
        # Cut to PostgreSQL's 63 bytes, as the server would, but on our side and on purpose.
        self.scratch_database = scratch_database or derived_name(database, "_restore_drill")
        self.backup_file = backup_file
        self.keep = keep
        self.sql_checks = list(sql_checks or [])
        for check in self.sql_checks:
            if not isinstance(check, dict) or not check.get("sql"):
                raise ForgeError(f"each SQL check needs a 'sql' key, got {check!r}")
        self.amcheck = amcheck
        self.textfile_dir = textfile_dir
        self.report_dir = report_dir
        self.sentry_dsn = sentry_dsn
        self.environment = environment
        if self.scratch_database == self.database:
            raise ForgeError(f"the scratch database {self.scratch_database!r} is the live database; "
                             "refusing to restore over it")


class Drill:
    def __init__(self, options, restore_options, settings, log=None, clock=time.time):
        self.options = options
        self.restore_options = restore_options
        self.restore_options.comment = DRILL_COMMENT
        self.restore_options.force = False
        self.restore_options.create = True
        # The drill compares counts itself and reports every mismatch as a FAIL.
        self.restore_options.check_counts = False
        self.settings = settings
        self.log = log or (lambda line: None)
        self.clock = clock
        self._drop_error = None

    def run(self):
        import psycopg

        started = self.clock()
        result = {"database": self.options.database, "scratch_database": self.options.scratch_database,
                  "passed": False, "verdict": "FAIL", "changed": True, "host": socket.gethostname()}
        restorer = Restorer(self.restore_options, self.settings, self.log)
        try:
            backup = restorer.select(self.options.database, self.options.backup_file)
            result["backup"] = backup.path
            result["backup_age_seconds"] = round(started - backup.finished_at, 1)
            self._clear_previous_scratch()
            report = restorer.restore(backup, self.options.scratch_database, database=self.options.database)
            result["checks"] = report.get("checks", {})
            result["skipped_checks"] = report.get("skipped_checks", [])
            result["restore_seconds"] = report.get("duration")
            self._verify(backup, result)
            for skipped in getattr(backup, "skipped_newer", []):
                result["problems"].insert(0, f"newer backup skipped as not good: {skipped}")
            if result["problems"]:
                result["reason"] = "; ".join(result["problems"][:5])
            elif not report.verified:
                # Restored and read to its end, but nothing proves what it should hold.
                result["verdict"] = "UNVERIFIED"
                result["reason"] = ("restored, but UNVERIFIED: no signed manifest, so the file's checksum and "
                                    "row counts could not be checked")
            else:
                result["passed"] = True
                result["verdict"] = "PASS"
                result["reason"] = "all checks passed"
        except (ForgeError, psycopg.Error) as exc:
            message = exc.message if isinstance(exc, ForgeError) else database_error(exc)
            result["reason"] = message
            result.setdefault("problems", []).append(message)
        finally:
            result["scratch_dropped"] = False if self.options.keep else self._drop_scratch()
        result["duration"] = round(self.clock() - started, 3)
        result["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._record(result)
        return result

    # -- steps ----------------------------------------------------------------
    def _scratch_comment(self, conn):
        """The scratch database's comment; None when it does not exist."""
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (self.options.scratch_database,)).fetchone()
        return None if row is None else (row[0] or "")

    def _clear_previous_scratch(self):
        """A scratch database left by a kept drill is ours to drop; any other database of that name is not."""
        with self.settings.connect(database="postgres") as conn:
            comment = self._scratch_comment(conn)
        if comment is not None and comment != DRILL_COMMENT:
            raise ForgeError(f"database {self.options.scratch_database!r} exists and was not made by a drill; "
                             "drop it yourself or choose another scratch_database")
        if comment is not None and not self._drop_scratch():
            # Restoring on top of it would only fail later with a misleading "target has tables".
            raise ForgeError(f"cannot drop the scratch database {self.options.scratch_database!r} a kept drill "
                             f"left: {self._drop_error or 'it is still there'}; nothing was restored")

    def _drop_scratch(self):
        """Drop the scratch database if it is the drill's; True when none is left afterwards."""
        import psycopg

        self._drop_error = None
        try:
            with self.settings.connect(database="postgres") as conn:
                if self._scratch_comment(conn) == DRILL_COMMENT:
                    drop_database(conn, self.options.scratch_database)
                return self._scratch_comment(conn) is None
        except (ForgeError, psycopg.Error) as exc:
            self._drop_error = " ".join(str(exc).split())
            self.log(f"could not drop the scratch database: {self._drop_error}")
            return False

    def _verify(self, backup, result):
        problems = []
        actual = count_rows_in_parallel(lambda: self.settings.connect(database=self.options.scratch_database),
                                        self.restore_options.jobs or default_workers())
        with self.settings.connect(database=self.options.scratch_database) as conn:
            result["tables_checked"] = len(actual)
            result["rows_checked"] = sum(actual.values())
            expected = (backup.manifest or {}).get("snapshot_row_counts")
            if expected is None:
                result.setdefault("skipped_checks", []).append(
                    "row_counts: no signed manifest, so no snapshot counts to compare with")
                result["checks"]["row_counts"] = "skipped"
            else:
                mismatches = describe_count_mismatches(expected, actual)
                problems += mismatches
                result["row_count_mismatches"] = {
                    t: {"expected": expected[t], "restored": actual[t]}
                    for t in sorted(set(expected) & set(actual)) if expected[t] != actual[t]}
                result["checks"]["row_counts"] = "failed" if mismatches else "passed"
            if self.options.amcheck:
                problems += self._amcheck(conn, result)
            result["sql_checks"] = []
            for check in self.options.sql_checks:
                outcome = self._sql_check(conn, check)
                result["sql_checks"].append(outcome)
                if not outcome["passed"]:
                    problems.append(f"SQL check {outcome['name']}: {outcome['detail']}")
        result["problems"] = problems

    def _amcheck(self, conn, result):
        try:
            checked = check_btree_indexes(conn)
        except Exception as exc:  # noqa: BLE001 - reported as one line
            result["checks"]["amcheck"] = "failed"
            return [f"amcheck: {database_error(exc)}"]
        result["checks"]["amcheck"] = "passed"
        result["indexes_checked"] = checked
        return []

    def _sql_check(self, conn, check):
        name = check.get("name") or check["sql"]
        outcome = {"name": name, "sql": check["sql"], "passed": False}
        try:
            row = conn.execute(check["sql"]).fetchone()
        except Exception as exc:  # noqa: BLE001 - reported as one line
            outcome["detail"] = database_error(exc)
            return outcome
        value = row[0] if row else None
        outcome["value"] = value
        if "expect" in check and value != check["expect"]:
            outcome["detail"] = f"returned {value!r}, expected {check['expect']!r}"
        elif "min" in check and (value is None or value < check["min"]):
            outcome["detail"] = f"returned {value!r}, expected at least {check['min']!r}"
        else:
            outcome["passed"] = True
            outcome["detail"] = f"returned {value!r}"
        return outcome

    # -- reporting --------------------------------------------------------------
    def _record(self, result):
        # The report is written by default, beside the backups when no report directory is set.
        report_dir = self.options.report_dir or self.restore_options.backup_dir
        if report_dir:
            write_report(result, drill_report_path(report_dir, self.options.database))
        if self.options.textfile_dir:
            self._write_metrics(result)
        if not result["passed"]:
            report_failure(result, self.options.sentry_dsn,
                           f"restore drill of {self.options.database} failed: {result['reason']}", "restore-drill",
                           self.options.database, result["host"], self.options.environment)

    def _write_metrics(self, result):
        now = self.clock()
        samples = [
            ("last_run_timestamp_seconds", "When the last restore drill ended.", now),
            ("last_run_success", "1 if the last restore drill passed, else 0.", 1 if result["passed"] else 0),
            ("duration_seconds", "Wall time of the last restore drill.", result["duration"]),
            ("tables_checked", "Tables whose row counts the last drill compared.", result.get("tables_checked", 0)),
            ("rows_checked", "Rows the last drill counted.", result.get("rows_checked", 0)),
        ]
        if "backup_age_seconds" in result:
            samples.append(("backup_age_seconds", "Age of the backup at the last drill.", result["backup_age_seconds"]))
        write_metrics(result, self.options.textfile_dir, drill_metrics_filename(self.options.database), METRIC_PREFIX,
                      {"database": self.options.database}, samples, now, "When a restore drill last passed.")


ACTIONS = ("verify", "restore", "drill")


def run_action(action, options, settings, database=None, backup_file=None, target=None, drill=None,
               check_mode=False, log=None):
    """verify, restore or drill: the one flow scripts/restore_db.sh and forge_restore both call.

    ``options`` are RestoreOptions, ``settings`` the PgSettings of the server; ``database``
    picks the newest good backup when ``backup_file`` is None. ``target`` is the database a
    restore writes into; ``drill`` the DrillOptions of a drill. In check mode a restore
    says what it would do and a drill verifies the file only; nothing is written.
    Returns the report, with the chosen backup's path under ``backup``.
    """
    if action not in ACTIONS:
        raise ForgeError(f"unknown action {action!r}; choose one of {', '.join(ACTIONS)}")
    if action == "drill" and not check_mode:
        if drill is None:
            raise ForgeError("a drill needs its drill options")
        return Drill(drill, options, settings, log=log).run()
    if action == "restore" and not target:
        raise ForgeError("a restore needs the target database")
    restorer = Restorer(options, settings, log=log)
    backup = restorer.select(database, backup_file)
    if action == "restore":
        report = restorer.restore(backup, target, database=database, check_mode=check_mode)
    else:
        report = verify_file(backup, restorer.passphrase(backup), database, kdf_iterations=options.kdf_iterations)
    report["backup"] = backup.path
    if action == "drill":
        report.update(passed=None, reason=f"check mode: would drill {backup.name} "
                                          f"(file {report['verdict'].lower()}); nothing restored")
    return report
