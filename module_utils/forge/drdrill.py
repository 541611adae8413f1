"""The DR drill's database side: lose the database while the app writes, then judge the
put-back (playbooks/dr_drill.yml runs playbooks/dr_restore.yml between the two).

``crash``: a writer inserts a row every ``interval`` seconds through the db container and keeps
the ids the server acknowledged (committed and returned); after ``writes_for`` seconds the db
container is killed (SIGKILL, no shutdown, its restart policy off so nothing brings it back to
send Barman what it had). What it knew is kept in a state file.

``judge``: after the put-back, the ids present are read back: RPO is the acknowledged rows that
are missing, judged by id (a crash makes a sequence skip values, so a count would lie); RTO is
from the kill until the app was healthy again. Both go to a JSON report, node_exporter metrics
and, on a failure, Sentry."""

import json
import os
import re
import socket
import subprocess
import threading
import time

from . import records
from .errors import ForgeError
from .fsutil import read_small_file, write_atomic
from .outcome import report_failure, write_metrics
from .putback import ComposeService, Docker

TABLE = "infer_forge_dr_drill"
INSERT = f"INSERT INTO {TABLE} DEFAULT VALUES RETURNING id;\n"  # noqa: S608 - a constant name
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


class AckWriter(threading.Thread):
    """The app at work: one INSERT every ``interval`` s on one connection through docker exec;
    the ids the server acknowledged are kept. It ends when the server goes."""

    def __init__(self, docker, db, user, database, interval):
        super().__init__(name="forge-dr-writer", daemon=True)
        self.command = docker.command + db.psql(user, database)
        self.interval = interval
        self.acknowledged = []
        self.stop = threading.Event()

    def run(self):
        proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, bufsize=1)
        try:
            while not self.stop.is_set():
                proc.stdin.write(INSERT)
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line.strip().isdigit():
                    break  # the server is gone
                self.acknowledged.append(int(line))
                self.stop.wait(self.interval)
        except (BrokenPipeError, OSError):
            pass
        finally:
            proc.kill()
            proc.wait()


class DrDrill:
    def __init__(self, project, db_service="db", user="infer", database="infer_forge", state_dir=None,
                 docker=None, clock=time.time):
        for name in (user, database):
            if not NAME_RE.match(name or ""):
                raise ForgeError(f"user and database must be plain names, got {user!r} and {database!r}")
        self.docker = docker or Docker()
        self.project, self.db_service = project, db_service
        self.user, self.database = user, database
        self.state_dir = state_dir or "/var/lib/infer-forge/dr-drill"
        self.clock = clock

    @property
    def state_path(self):
        return os.path.join(self.state_dir, f"state_{self.project}.json")

    def _sql(self, db, statement):
        return self.docker.run(*db.psql(self.user, self.database), "-c", statement, timeout=120)

    def crash(self, writes_for=3.0, interval=0.1):
        db = ComposeService(self.docker, self.project, self.db_service)
        if not db.running():
            raise ForgeError(f"{db.container} is not running: a DR drill loses a running database; nothing was "
                             "changed")
        self._sql(db, f"CREATE TABLE IF NOT EXISTS {TABLE} "
                      "(id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
        policy = (db.inspect().get("HostConfig", {}).get("RestartPolicy") or {}).get("Name") or "no"
        self.docker.run("update", "--restart=no", db.container, timeout=60)
        writer = AckWriter(self.docker, db, self.user, self.database, interval)
        writer.start()
        time.sleep(writes_for)
        self.docker.run("kill", db.container, timeout=60)
        killed_at = self.clock()
        writer.join(30)
        writer.stop.set()
        if len(writer.acknowledged) < 2:
            raise ForgeError(f"the drill's writer had {len(writer.acknowledged)} rows acknowledged before the kill; "
                             f"the database was killed all the same: put it back (playbooks/dr_restore.yml)")
        state = {"project": self.project, "container": db.container, "killed_at": killed_at,
                 "restart_policy": policy, "acknowledged": writer.acknowledged}
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        write_atomic(self.state_path, json.dumps(state) + "\n", mode=0o600)
        return {"killed_at": killed_at, "acknowledged_rows": len(writer.acknowledged),
                "last_acknowledged": writer.acknowledged[-1]}

    def judge(self, app_healthy_at, rpo_max_rows=10, rto_max_seconds=600, report_dir=None, textfile_dir=None,
              sentry_dsn=None, environment=None, host=None, put_back=True, reason=None):
        try:
            state = json.loads(read_small_file(self.state_path) or "")
            acknowledged = [int(ident) for ident in state["acknowledged"]]
            killed_at = float(state["killed_at"])
        except (ValueError, KeyError, TypeError):
            raise ForgeError(f"no DR drill state at {self.state_path}: run the crash first") from None
        result = {"project": self.project, "host": host or socket.gethostname(), "killed_at": killed_at,
                  "acknowledged_rows": len(acknowledged), "passed": False}
        db = ComposeService(self.docker, self.project, self.db_service)
        self.docker.run("update", f"--restart={state.get('restart_policy') or 'no'}", db.container, timeout=60)
        if put_back:
            present = {int(line) for line in self._sql(
                db, f"SELECT id FROM {TABLE} WHERE id >= {min(acknowledged)}").split()}  # noqa: S608
            lost = [ident for ident in acknowledged if ident not in present]
            rto = round(float(app_healthy_at) - killed_at, 3)
            result.update(rpo_rows_lost=len(lost), rto_seconds=rto, first_lost=lost[0] if lost else None)
            problems = []
            if len(lost) > rpo_max_rows:
                problems.append(f"{len(lost)} acknowledged rows lost (at most {rpo_max_rows})")
            if rto > rto_max_seconds:
                problems.append(f"the app was healthy {rto} s after the loss (at most {rto_max_seconds} s)")
            result["passed"] = not problems
            result["reason"] = "; ".join(problems) if problems else (
                f"{len(lost)} of {len(acknowledged)} acknowledged rows lost, app healthy {rto} s after the database "
                "was lost")
        else:
            result["reason"] = f"the put-back failed: {reason or 'see the play'}; {self._start_again(db)}"
        result["verdict"] = "PASS" if result["passed"] else "FAIL"
        self._record(result, report_dir, textfile_dir, sentry_dsn, environment)
        os.unlink(self.state_path)
        return result

    def _start_again(self, db):
        """After a failed put-back the killed database comes back as it was (crash recovery)."""
        if db.running():
            return "the database runs"
        try:
            db.start()
            db.wait_healthy(600)
        except ForgeError as exc:
            return f"starting the killed database again failed too ({exc.message}): docker start {db.container}"
        return "the killed database was started again as it was"

    def _record(self, result, report_dir, textfile_dir, sentry_dsn, environment):
        now = self.clock()
        if report_dir:
            os.makedirs(report_dir, mode=0o750, exist_ok=True)
            path = records.dr_drill_report_path(report_dir, self.project)
            write_atomic(path, json.dumps(result, indent=2, sort_keys=True) + "\n", mode=0o640)
            result["report"] = path
        if textfile_dir:
            samples = [("last_run_timestamp_seconds", "When the last DR drill ended.", now),
                       ("last_run_success", "1 if the last DR drill passed, else 0.", 1 if result["passed"] else 0),
                       ("acknowledged_rows", "Rows the app had acknowledged when the database was lost.",
                        result["acknowledged_rows"])]
            if "rto_seconds" in result:
                samples += [("rto_seconds", "From the loss of the database until the app was healthy again.",
                             result["rto_seconds"]),
                            ("rpo_rows_lost", "Acknowledged rows the put-back database does not hold.",
                             result["rpo_rows_lost"])]
            write_metrics(result, textfile_dir, records.dr_drill_metrics_filename(self.project),
                          records.DR_DRILL_METRIC_PREFIX, {"project": self.project}, samples, now,
                          "When a DR drill last passed.")
        if not result["passed"]:
            report_failure(result, sentry_dsn, f"DR drill of {self.project} failed: {result['reason']}", "dr-drill",
                           self.database, result.get("host"), environment)
