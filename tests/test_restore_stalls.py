"""Every stage of a restore has a deadline too (issue 33, item 3): a psql or pg_restore that stops
(kill -STOP, a hung container) and a lock another session holds end the restore or drill in one
line naming what stalled, the side database gone, the target as it was; a long step the server
is working on (an index build) is progress and never stopped. Real psql, pg_restore and
PostgreSQL; the stalled client is a real process held on a FIFO, the lock a real advisory lock."""

import os
import subprocess
import threading
import time

import pytest

from helpers import PLAIN_DUMP_END, REPO, databases_like, signing_passphrase_file, take_backup, write_gzip

RESTORE_SCRIPT = os.path.join(REPO, "scripts", "restore_db.sh")
STALL = 4


class StalledClient:
    """A client command (RESTORE_PSQL_COMMAND / RESTORE_PG_RESTORE_COMMAND) that answers
    --version at once and otherwise waits on a FIFO before it runs the real tool: it takes no
    input, opens no connection, and nothing polls while it waits."""

    def __init__(self, directory, tool):
        os.makedirs(directory, exist_ok=True)
        self.command = os.path.join(directory, f"stalled_{tool}")
        self.fifo = self.command + ".release"
        os.mkfifo(self.fifo, 0o600)
        with open(self.command, "w") as handle:
            handle.write("#!/bin/bash\n"
                         f'[ "${{1:-}}" = --version ] && exec {tool} --version\n'
                         f"read -r _ < {self.fifo}\n"
                         f'exec {tool} "$@"\n')
        os.chmod(self.command, 0o755)

    def release(self):
        """Open the FIFO's write end once without blocking (nobody may be reading any more)."""
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return
        os.write(fd, b"\n")
        os.close(fd)


def restore_db_sh(pg, database, backup_dir, *args, timeout=STALL + 30, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_", "RESTORE_"))}
    env.update(pg.app_env(database), BACKUP_DIR=backup_dir, BACKUP_CONFIG="",
               BACKUP_PASSPHRASE_FILE=signing_passphrase_file(), BACKUP_ENCRYPT="0",
               BACKUP_STALL_TIMEOUT=str(STALL))
    env.update({key: str(value) for key, value in extra.items()})
    return subprocess.run([RESTORE_SCRIPT, *args], env=env, capture_output=True, text=True, timeout=timeout)




@pytest.mark.parametrize("tool,backup_format", [("psql", "plain"), ("pg_restore", "custom")])
def test_a_client_that_stops_ends_the_drill_in_one_line_and_leaves_no_scratch_database(
        pg, sample_db, backup_dir, tmp_path, tool, backup_format):
    take_backup(pg, sample_db, backup_dir, backup_format=backup_format)
    client = StalledClient(str(tmp_path / "client"), tool)
    setting = {"psql": "RESTORE_PSQL_COMMAND", "pg_restore": "RESTORE_PG_RESTORE_COMMAND"}[tool]
    started = time.monotonic()
    try:
        result = restore_db_sh(pg, sample_db, backup_dir, "drill", **{setting: client.command})
    finally:
        client.release()
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert line.startswith("FAIL: "), line
    reason = line.split(" s; ", 1)[1]
    assert reason.startswith(f"restore stopped: {tool} made no progress for {STALL} s and was stopped "
                             f"(BACKUP_STALL_TIMEOUT); {sample_db[:40]}"), line
    assert reason.endswith("_restore_drill was not created"), line
    assert took < STALL + 20  # the client was stopped at the deadline, not by the test's timeout
    assert databases_like(pg, sample_db[:40]) == [sample_db]


def test_a_client_whose_child_keeps_the_pipe_open_still_ends_the_restore(pg, sample_db, backup_dir, tmp_path):
    """The client is killed at the deadline but a child of it keeps its stdin and stderr open
    without reading (root's wrapper under sudo: killing sudo does not reach it): the restore still
    ends in one line, and the side database is dropped."""
    take_backup(pg, sample_db, backup_dir)
    pidfile = tmp_path / "orphan.pid"
    client = tmp_path / "client_with_a_child"
    client.write_text("#!/bin/bash\n"
                      '[ "${1:-}" = --version ] && exec psql --version\n'
                      # <&0: a background job's stdin would otherwise be /dev/null.
                      f"setsid sleep 600 <&0 & echo $! > {pidfile}\n"
                      "exec sleep 600\n")
    client.chmod(0o755)
    # More than a pipe holds, so the engine's write blocks once nobody reads.
    pg.execute("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS text FROM generate_series(1, 20000) AS g",
               database=sample_db)
    pg.execute(f"ALTER TABLE bulk OWNER TO {pg.app_user}", database=sample_db)
    take_backup(pg, sample_db, backup_dir)
    started = time.monotonic()
    try:
        result = restore_db_sh(pg, sample_db, backup_dir, "drill", RESTORE_PSQL_COMMAND=str(client))
    finally:
        if pidfile.exists():
            subprocess.run(["kill", "-9", pidfile.read_text().strip()], check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert f"restore stopped: psql made no progress for {STALL} s and was stopped (BACKUP_STALL_TIMEOUT)" in line
    assert time.monotonic() - started < STALL + 20
    assert databases_like(pg, sample_db[:40]) == [sample_db]


def test_a_lock_held_by_another_session_ends_the_restore_naming_the_session(pg, fresh_db, backup_dir):
    """A file (named, no manifest: restored as UNVERIFIED) whose SQL waits for an advisory lock that
    another session took in the side database as soon as it appeared: the wait is bounded like any
    stall and names who holds the lock."""
    path = write_gzip(backup_dir, "waits_on_a_lock.sql.gz",
                      "CREATE TABLE before_the_lock (id int);\nSELECT pg_sleep(2);\n"
                      "SELECT pg_advisory_lock(424242);\nINSERT INTO before_the_lock VALUES (1);\n" + PLAIN_DUMP_END)
    target = f"{fresh_db}_new"
    holder = LockInTheSideDatabase(pg, target[:20])
    holder.start()
    try:
        result = restore_db_sh(pg, fresh_db, backup_dir, "restore", os.path.basename(path), target)
    finally:
        holder.release()
    assert holder.pid is not None, "the side database never appeared"
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"ERROR: restore stopped: it waited {STALL} s for a lock held by pid {holder.pid} "
        f"(user {pg.app_user}) (BACKUP_STALL_TIMEOUT); {target} was not created"), result.stderr
    assert databases_like(pg, target[:20]) == [fresh_db]


class LockInTheSideDatabase(threading.Thread):
    """Waits for a restore's side database (``prefix``..._restoring_...) and takes advisory
    lock 424242 in it as the app role (another session of the restoring role, which the
    restore's DROP DATABASE ... WITH (FORCE) may end), held until release()."""

    def __init__(self, pg, prefix):
        super().__init__(daemon=True)
        self.pg, self.prefix = pg, prefix
        self.pid, self.conn = None, None
        self._done = threading.Event()

    def run(self):
        deadline = time.monotonic() + 30
        while not self._done.is_set() and time.monotonic() < deadline:
            names = [name for name in databases_like(self.pg, self.prefix) if "_restoring_" in name]
            if names:
                self.conn = self.pg.connect(names[0], superuser=False, autocommit=True)
                self.conn.execute("SELECT pg_advisory_lock(424242)")
                self.pid = self.conn.info.backend_pid
                self._done.wait(60)
                return
            time.sleep(0.05)

    def release(self):
        self._done.set()
        self.join(timeout=10)
        if self.conn is not None:
            self.conn.close()


@pytest.mark.parametrize("configured", ["existing", "gone"])
def test_a_long_step_the_server_is_working_on_is_progress_not_a_stall(pg, fresh_db, backup_dir, configured):
    """Nothing reaches psql for longer than the stall timeout while the server works (an index
    build, here a sleep): the restore completes. Also when the configured database (POSTGRES_DB) is
    the one that was lost: the watch looks from the maintenance database."""
    sql = f"CREATE TABLE slow (id int);\nSELECT pg_sleep({STALL + 3});\nINSERT INTO slow VALUES (1);\n"  # noqa: S608
    path = write_gzip(backup_dir, "a_slow_step.sql.gz", sql + PLAIN_DUMP_END)
    target = f"{fresh_db}_slow"
    configured_database = fresh_db if configured == "existing" else f"{fresh_db}_lost"
    result = restore_db_sh(pg, configured_database, backup_dir, "restore", os.path.basename(path), target)
    try:
        assert result.returncode == 3, result.stdout + result.stderr  # UNVERIFIED (no manifest), complete
        assert pg.execute("SELECT count(*) FROM slow", database=target) == [(1,)]
    finally:
        pg.drop_database(target)
