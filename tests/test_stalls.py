"""Every stage of a backup has a deadline: a pg_dump or compressor that stops (kill -STOP, a hung
container) or a table lock held by another session ends the run in one line that names what
stalled, with the failure metric written, instead of hanging until the next run says
"already running". Real pg_dump, igzip and PostgreSQL; the stalls are real stopped processes
and a real ACCESS EXCLUSIVE lock."""

import os
import re
import signal
import time

import pytest

from helpers import (
    StalledDump,
    TableLock,
    backups_in,
    partials_in,
    process_named,
    run_backup_script,
    textfile_value,
)

STALL = 4


def _last_run_success(directory, database):
    return textfile_value(os.path.join(directory, f"infer_forge_backup_{database}.prom"),
                          "infer_forge_backup_last_run_success")


def test_a_dump_that_gives_no_output_is_stopped_and_named_in_one_line(pg, sample_db, backup_dir, tmp_path):
    dump = StalledDump(str(tmp_path / "dump"))
    started = time.monotonic()
    try:
        result = run_backup_script(pg, sample_db, backup_dir, {
            "BACKUP_DUMP_COMMAND": dump.command, "BACKUP_STALL_TIMEOUT": str(STALL),
            "BACKUP_TEXTFILE_DIR": str(tmp_path)}, timeout=45)
    finally:
        dump.release(timeout=2)  # the stopped dump's reader is gone with it
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (f"ERROR: pg_dump made no progress for {STALL} s and was stopped "
                                     "(BACKUP_STALL_TIMEOUT); nothing was kept")
    assert took < STALL + 30
    assert backups_in(backup_dir) == [] and partials_in(backup_dir) == []
    assert _last_run_success(str(tmp_path), sample_db) == 0


@pytest.fixture
def thirty_megabytes(pg, fresh_db):
    pg.execute("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS text "
               "FROM generate_series(1, 400000) AS g", database=fresh_db)
    pg.execute(f"ALTER TABLE bulk OWNER TO {pg.app_user}", database=fresh_db)
    return fresh_db


def test_a_compressor_that_stops_is_stopped_and_named_in_one_line(pg, thirty_megabytes, backup_dir, tmp_path):
    """igzip stopped while pg_dump still has megabytes to give: the engine's write to it blocks."""
    dump = StalledDump(str(tmp_path / "dump"))
    proc = run_backup_script(pg, thirty_megabytes, backup_dir, {
        "BACKUP_DUMP_COMMAND": dump.command, "BACKUP_STALL_TIMEOUT": str(STALL), "BACKUP_GZIP_TOOL": "igzip",
        "BACKUP_TEXTFILE_DIR": str(tmp_path)}, wait=False)
    try:
        dump.wait_until_stalled(proc)
        igzip = process_named("igzip", proc.pid, argument="-c")
        os.kill(igzip, signal.SIGSTOP)
        dump.release()
        stdout, stderr = proc.communicate(timeout=45)
    finally:
        dump.release(timeout=2)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stdout + stderr
    assert stderr.strip() == (f"ERROR: igzip made no progress for {STALL} s and was stopped "
                              "(BACKUP_STALL_TIMEOUT); nothing was kept")
    assert backups_in(backup_dir) == [] and partials_in(backup_dir) == []
    assert _last_run_success(str(tmp_path), thirty_megabytes) == 0


def test_a_table_lock_held_by_another_session_ends_the_wait_naming_table_and_session(pg, sample_db, backup_dir,
                                                                                    tmp_path):
    lock = TableLock(pg, sample_db, "orders")
    holder = lock.conn.info.backend_pid
    try:
        result = run_backup_script(pg, sample_db, backup_dir, {
            "BACKUP_STALL_TIMEOUT": str(STALL), "BACKUP_TEXTFILE_DIR": str(tmp_path)}, timeout=45)
    finally:
        lock.release()
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert re.fullmatch(rf"ERROR: (pg_dump|the row count) waited {STALL // 2} s for a lock on public\.orders, held by "
                        rf"pid {holder} \(user postgres, AccessExclusiveLock\); nothing was kept", line), line
    assert backups_in(backup_dir) == [] and partials_in(backup_dir) == []
    assert _last_run_success(str(tmp_path), sample_db) == 0
