"""The restore drill's promises, through both doors (the forge_restore module and restore_db.sh):
the scratch database is kept only when asked, every missing or extra table is named, and a
newer backup that is broken fails the drill instead of an older good one passing in its place."""

import json
import os
import subprocess

import pytest

from helpers import (
    REPO,
    flip_byte,
    manifest_of,
    resign_manifest,
    signing_passphrase_file,
    take_backup,
)
from servers import load_sample_data, table_counts

RESTORE_SCRIPT = os.path.join(REPO, "scripts", "restore_db.sh")
DRILL_COMMENT = "infer-forge restore drill scratch database"


@pytest.fixture
def source(pg, fresh_db):
    """The database the drill proves a backup of: 3 tables, 5700 rows."""
    load_sample_data(pg, fresh_db)
    return fresh_db


def drill(run_module, pg, backup_dir, database, **extra):
    args = {"mode": "drill", "database": database, "login_host": pg.host, "port": pg.port,
            "login_user": pg.app_user, "login_password": pg.app_password, "backup_dir": backup_dir,
            "passphrase_file": signing_passphrase_file(), "require_encryption": False}
    args.update(extra)
    return run_module("forge_restore", args)


def restore_db_sh(pg, database, backup_dir, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_"))}
    env.update(pg.app_env(database), BACKUP_DIR=backup_dir, BACKUP_CONFIG="",
               BACKUP_PASSPHRASE_FILE=signing_passphrase_file(), BACKUP_ENCRYPT="0")
    return subprocess.run([RESTORE_SCRIPT, *args], env=env, capture_output=True, text=True, timeout=300)


def comment_of(pg, database):
    rows = pg.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                      params=(database,))
    return rows[0][0] if rows else None


# -- keep -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("door", ["forge_restore", "restore_db.sh"])
def test_the_scratch_database_is_kept_only_when_asked_and_the_next_drill_replaces_it(
        pg, source, backup_dir, run_module, door):
    take_backup(pg, source, backup_dir)

    def run(keep):
        """The drill's outcome: the module's result, or the JSON report restore_db.sh leaves."""
        if door == "forge_restore":
            result = drill(run_module, pg, backup_dir, source, keep=keep)
        else:
            done = restore_db_sh(pg, source, backup_dir, "drill", *(["--keep"] if keep else []))
            assert done.returncode == 0, done.stdout + done.stderr
            with open(os.path.join(backup_dir, f"restore_drill_{source}.json")) as handle:
                result = json.load(handle)
        assert result["passed"] is True, result.get("reason")
        return result

    kept = run(keep=True)
    # The name is cut to PostgreSQL's 63 bytes, so it is read from the report, not rebuilt here.
    scratch = kept["scratch_database"]
    try:
        assert kept["scratch_dropped"] is False
        # Kept for inspection: the restored rows, marked as the drill's own.
        assert table_counts(pg, scratch) == table_counts(pg, source)
        assert comment_of(pg, scratch) == DRILL_COMMENT
        # Not asked to keep: the kept one is cleared first, the new one dropped after.
        again = run(keep=False)
        assert again["scratch_database"] == scratch and again["scratch_dropped"] is True
        assert not pg.database_exists(scratch)
    finally:
        pg.drop_database(scratch)


@pytest.mark.parametrize("leaves", [True, False], ids=["leaves-when-asked", "stays"])
def test_a_scratch_session_the_login_may_not_end_never_leaves_the_scratch_database_behind_unsaid(
        pg, source, backup_dir, run_module, leaves):
    """The benchmark's finding: autovacuum, working on the big tables a drill just loaded, is a
    session the app login may not end, so DROP DATABASE ... WITH (FORCE) failed; the drill still
    passed, left its scratch database, and the next week's drill failed on it. A plain DROP
    DATABASE ends autovacuum workers itself and waits a few seconds for any other session.
    Here another login's session stands in for the worker: one that goes away once a plain DROP
    DATABASE waits for it (as autovacuum's worker does when that DROP ends it), and one that stays
    (then the drill says so, and the scratch database is still the drill's, which the next drill
    clears)."""
    import threading
    import time

    import psycopg
    from psycopg import sql

    take_backup(pg, source, backup_dir)
    kept = drill(run_module, pg, backup_dir, source, keep=True)
    scratch = kept["scratch_database"]
    role = "drill_onlooker"
    pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    pg.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'onlooker'").format(sql.Identifier(role)))
    onlooker = psycopg.connect(host=pg.host, port=pg.port, dbname=scratch, user=role, password="onlooker")
    asked = threading.Event()

    def leave_when_asked():
        """Only a plain DROP DATABASE waits for the session; FORCE fails at once."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not asked.is_set():
            waiting = pg.execute("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'DROP DATABASE%%' "
                                 "AND query NOT ILIKE '%%FORCE%%' AND usename = %s", params=(pg.app_user,))
            if waiting[0][0]:
                asked.set()
            time.sleep(0.05)
        onlooker.close()

    leaving = None
    if leaves:
        leaving = threading.Thread(target=leave_when_asked)
        leaving.start()
    try:
        again = drill(run_module, pg, backup_dir, source, keep=False)
        asked.set()
        if leaves:
            assert again["passed"] is True, again.get("reason")
            assert again["scratch_dropped"] is True and not pg.database_exists(scratch)
        else:
            assert again["passed"] is False
            assert again["reason"].count("\n") == 0 and "must be a member of the role" in again["reason"], \
                again["reason"]
            assert comment_of(pg, scratch) == DRILL_COMMENT
    finally:
        asked.set()
        if leaving is not None:
            leaving.join()
        onlooker.close()
        pg.drop_database(scratch)
        pg.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- missing and extra tables are named ---------------------------------------------------------------------

def test_a_table_the_dump_left_out_is_named_as_missing(pg, source, backup_dir, run_module, tmp_path):
    # A site's dump command that leaves out a table (say, an audit log thought too big): the snapshot
    # still counted it, so the signed manifest lists it, and the drill must say it is not there.
    wrapper = tmp_path / "pg_dump_without_audit"
    wrapper.write_text("#!/bin/sh\nexec pg_dump \"$@\" '--exclude-table=audit.\"Order Events\"'\n")
    wrapper.chmod(0o755)
    path = take_backup(pg, source, backup_dir, backup_dump_command=str(wrapper))
    assert manifest_of(path)["snapshot_row_counts"]["audit.Order Events"] == 500
    result = drill(run_module, pg, backup_dir, source)
    assert result["failed"] is True and result["passed"] is False
    assert result["msg"] == f"restore drill of {source} failed: table audit.Order Events missing after restore"
    assert result["checks"]["row_counts"] == "failed"
    assert result["scratch_dropped"] is True and not pg.database_exists(result["scratch_database"])


def test_a_restored_table_the_manifest_does_not_list_is_named_as_extra(pg, source, backup_dir, run_module):
    path = take_backup(pg, source, backup_dir)
    # Signed as the engine signs (helpers.resign_manifest follows signing.py's documented format):
    # a manifest that authenticates, written by a tool that forgot one table.
    manifest = manifest_of(path)
    del manifest["snapshot_row_counts"]["public.customers"]
    resign_manifest(path, manifest)
    result = drill(run_module, pg, backup_dir, source)
    assert result["failed"] is True and result["passed"] is False
    assert result["msg"] == f"restore drill of {source} failed: table public.customers not in the backup's manifest"
    assert result["checks"]["signature"] == "passed" and result["checks"]["row_counts"] == "failed"
    assert result["scratch_dropped"] is True and not pg.database_exists(result["scratch_database"])


# -- a newer broken backup is never hidden by an older good one ------------------------------------------------

def _truncate(path):
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 100)


def _flip_a_byte(path):
    flip_byte(path, mask=0x10)


def _edit_the_manifest(path):
    manifest = manifest_of(path)
    manifest["rows"] += 1
    with open(path + ".manifest.json", "w") as handle:
        json.dump(manifest, handle)


def _remove_the_manifest(path):
    os.unlink(path + ".manifest.json")


@pytest.mark.parametrize("damage, chosen, reason", [
    (_truncate, "older", "newer backup skipped as not good: {newer}: file is {size} bytes but its manifest says "),
    (_edit_the_manifest, "older", "newer backup skipped as not good: {newer}: manifest was changed after the "
                                  "backup: its signature does not match"),
    (_remove_the_manifest, "older", "newer backup skipped as not good: {newer}: no manifest"),
    # Same size, signed manifest intact: it is the newest good backup by the trust rule, so it is the
    # one drilled, and its checksum fails.
    (_flip_a_byte, "newer", "{newer}: checksum mismatch; the file is damaged or was changed after the backup"),
], ids=["truncated", "manifest-edited", "manifest-removed", "flipped-byte"])
def test_a_newer_broken_backup_fails_the_drill_although_an_older_one_is_good(
        pg, source, backup_dir, run_module, damage, chosen, reason):
    older = take_backup(pg, source, backup_dir)
    newer = take_backup(pg, source, backup_dir)
    damage(newer)
    result = drill(run_module, pg, backup_dir, source, fail_on_error=False)
    assert result["passed"] is False and result["verdict"] == "FAIL"
    expected = reason.format(newer=os.path.basename(newer), size=os.path.getsize(newer))
    assert expected in result["reason"], result["reason"]
    assert result["backup"] == {"older": older, "newer": newer}[chosen]
    if chosen == "older":
        # The older backup itself restored exactly: the FAIL is the newer one's, and says so.
        assert result["checks"]["row_counts"] == "passed"
    assert result["scratch_dropped"] is True and not pg.database_exists(result["scratch_database"])


def test_counts_over_several_connections_are_exact_with_or_without_spare_slots_and_stop_at_an_error(pg, fresh_db):
    from psycopg import sql

    from forge.errors import ForgeError
    from forge.pgconn import PgSettings, count_rows_in_parallel

    with pg.connect(fresh_db, superuser=False) as conn:
        for number, rows in enumerate((0, 1, 7, 5000, 120000, 33)):
            conn.execute(sql.SQL("CREATE TABLE {} AS SELECT g FROM generate_series(1, %s) g").format(
                sql.Identifier(f"t{number}")), (rows,))
    settings = PgSettings(pg.host, pg.port, pg.app_user, pg.app_password, fresh_db)
    expected = table_counts(pg, fresh_db)
    for jobs in (1, 3, 20):
        counts = count_rows_in_parallel(lambda: settings.connect(), jobs)
        assert counts == expected and list(counts) == sorted(counts), jobs
    # A server with no slot to spare: the first connection counts everything by itself.
    opened = []

    def one_slot():
        opened.append(True)
        if len(opened) > 1:
            raise ForgeError("FATAL: sorry, too many clients already")
        return settings.connect()

    assert count_rows_in_parallel(one_slot, 3) == expected
    pg.execute("CREATE TABLE private_rows AS SELECT 1 AS g", database=fresh_db)
    import psycopg

    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="private_rows"):
        count_rows_in_parallel(lambda: settings.connect(), 3)
