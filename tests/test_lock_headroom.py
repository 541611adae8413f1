"""Many tables against PostgreSQL's lock table, on a real server with a small one.

pg_dump takes an ACCESS SHARE lock on every table it dumps and holds them all to the end; the
server's lock table holds max_locks_per_transaction x (max_connections +
max_prepared_transactions) of them (plus an undocumented slack). A backup that runs out fails
late with "out of shared memory", so the engine refuses before dumping, in one line that names
the setting to raise, and PostgreSQL's own HINT reaches the message when it fails anyway."""

import os

import pytest

from helpers import backups_in, run_backup_script
from servers import PostgresServer

LOCKS, CONNECTIONS = 10, 20  # a lock table of 200


@pytest.fixture(scope="module")
def small_lock_table():
    server = PostgresServer().init()
    with open(os.path.join(server.data_dir, "postgresql.conf"), "a", encoding="utf-8") as conf:
        conf.write(f"max_locks_per_transaction = {LOCKS}\nmax_connections = {CONNECTIONS}\n")
    server.start().setup_app()
    yield server
    server.destroy()


def _database_with_tables(server, name, count):
    server.create_database(name)
    with server.connect(name, superuser=False) as conn:  # autocommit: no lock outlives its CREATE
        for number in range(count):
            conn.execute(f"CREATE TABLE t{number} (id int)")
    return name


def test_more_tables_than_the_lock_table_holds_is_refused_before_the_dump(small_lock_table, tmp_path):
    database = _database_with_tables(small_lock_table, "wide", 250)
    backup_dir = str(tmp_path / "backups")
    result = run_backup_script(small_lock_table, database, backup_dir, {"BACKUP_TEXTFILE_DIR": str(tmp_path)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        "ERROR: wide has 250 tables and pg_dump locks every one, more than the server's lock table holds "
        f"(max_locks_per_transaction {LOCKS} x (max_connections {CONNECTIONS} + max_prepared_transactions 0) "
        "= 200); raise max_locks_per_transaction to at least 25 and restart PostgreSQL; nothing was written")
    assert "Starting backup" not in result.stdout
    assert backups_in(backup_dir) == []
    assert 'infer_forge_backup_last_run_success{database="wide"} 0' in \
        (tmp_path / "infer_forge_backup_wide.prom").read_text()


def test_postgresqls_hint_reaches_the_message_when_the_lock_table_runs_out_anyway(small_lock_table, tmp_path):
    """Another session holds most of the lock table: the check passes (180 tables of 200), pg_dump
    runs out, and the operator reads PostgreSQL's hint, not only 'out of shared memory'."""
    database = _database_with_tables(small_lock_table, "narrow", 180)
    hog = _database_with_tables(small_lock_table, "hog", 700)
    with small_lock_table.connect(hog, superuser=False, autocommit=False) as holder:
        held = 0
        for number in range(700):
            try:
                holder.execute(f"LOCK TABLE t{number} IN ACCESS SHARE MODE")
                held += 1
            except Exception:  # noqa: BLE001 - the lock table is full: exactly what this test wants
                holder.rollback()
                for again in range(held - 120):
                    holder.execute(f"LOCK TABLE t{again} IN ACCESS SHARE MODE")
                break
        result = run_backup_script(small_lock_table, database, str(tmp_path / "backups"))
        holder.rollback()
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "out of shared memory" in line
    assert line.endswith("(HINT: You might need to increase max_locks_per_transaction.)"), line
