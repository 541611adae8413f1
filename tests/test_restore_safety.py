"""Fault injection: a restore never costs data, and nothing unauthenticated is trusted.

Real PostgreSQL, real openssl, real files. Every failing case asserts the exact
one-line message and that the database the restore was aimed at still holds
every row it had, with no side database or renamed copy left behind.
"""

import datetime
import gzip
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time

import pytest

from forge import catalog
from forge.errors import ForgeError
from forge.pgconn import PgSettings
from forge.restore import RestoreOptions, Restorer, derived_name

from helpers import (
    PASSPHRASE,
    REPO,
    backups_in,
    databases_like,
    drop_order_rows,
    flip_byte,
    manifest_of,
    resign_manifest,
    run_backup_script,
    runbook_backup,
    signing_passphrase_file,
    stop_server_once_a_database_appears,
    take_backup,
    write_gzip,
)
from servers import PostgresServer, load_sample_data, table_counts

SCRIPTS = os.path.join(REPO, "scripts")


@pytest.fixture
def live(pg, fresh_db):
    """The database a careless restore would destroy: 3 tables, 5700 rows."""
    load_sample_data(pg, fresh_db)
    return fresh_db


def restorer(server, backup_dir, log=None, **options):
    options.setdefault("passphrase_file", signing_passphrase_file())
    options.setdefault("require_encryption", False)
    settings = PgSettings(host=server.host, port=server.port, user=server.app_user, password=server.app_password)
    return Restorer(RestoreOptions(backup_dir=backup_dir, **options), settings, log=log)


def restore(server, backup_dir, target, path=None, database=None, log=None, **options):
    engine = restorer(server, backup_dir, log=log, **options)
    return engine.restore(engine.select(database, path), target, database=database)


def failed_restore(server, backup_dir, target, path=None, database=None, **options):
    with pytest.raises(ForgeError) as caught:
        restore(server, backup_dir, target, path=path, database=database, **options)
    return caught.value.message


def assert_untouched(server, database, before):
    assert table_counts(server, database) == before
    assert databases_like(server, database) == [database], "a side or renamed database was left behind"


def unchanged(target):
    return f"; {target} is unchanged (3 tables, as before)"


# -- a forced restore that fails leaves the target exactly as it was -------------------------------------

def test_forced_restore_failing_at_the_start_wrong_passphrase_on_a_runbook_file(pg, live, backup_dir,
                                                                             passphrase_file, tmp_path):
    os.makedirs(backup_dir, mode=0o700)
    path = os.path.join(backup_dir, "backup_encrypted.sql.gz.enc")
    runbook_backup(pg, live, path, passphrase_file)
    wrong = tmp_path / "wrong.pass"
    wrong.write_text("not the passphrase\n")
    wrong.chmod(0o600)
    before = table_counts(pg, live)
    message = failed_restore(pg, backup_dir, live, path=path, force=True, passphrase_file=str(wrong))
    assert message == ("backup_encrypted.sql.gz.enc: wrong passphrase: the decrypted start is not gzip data"
                       + unchanged(live))
    assert_untouched(pg, live, before)


def test_forced_restore_failing_in_the_middle_sql_error(pg, live, backup_dir):
    sql = ("CREATE TABLE a (x int);\nINSERT INTO a VALUES (1);\nINSERT INTO missing_table VALUES (2);\n"
           "CREATE TABLE b (y int);\n-- PostgreSQL database dump complete\n\n")
    path = write_gzip(backup_dir, f"{live}_20260207_143215.sql.gz", sql)
    before = table_counts(pg, live)
    message = failed_restore(pg, backup_dir, live, path=path, force=True)
    expected = ('restore stopped: psql:<stdin>:3: ERROR: relation "missing_table" does not exist '
                "LINE 1: INSERT INTO missing_table VALUES ... (rest hidden)")
    assert message == expected + unchanged(live)
    assert_untouched(pg, live, before)


def test_forced_restore_failing_in_the_middle_damaged_gzip(pg, live, backup_dir):
    os.makedirs(backup_dir, mode=0o700)
    path = os.path.join(backup_dir, f"{live}_20260207_143215.sql.gz")
    runbook_backup(pg, live, path)
    flip_byte(path, mask=0xFF)
    before = table_counts(pg, live)
    message = failed_restore(pg, backup_dir, live, path=path, force=True)
    # zlib names the damage (an invalid code, a bad distance, or a CRC); the rest is ours.
    assert message.startswith(f"{os.path.basename(path)}: damaged file: gzip data is corrupt (") \
        or message.startswith("restore stopped: psql:<stdin>:"), message
    assert message.endswith(unchanged(live))
    assert_untouched(pg, live, before)


def test_forced_restore_failing_at_the_very_end_no_completion_marker(pg, live, backup_dir):
    os.makedirs(backup_dir, mode=0o700)
    path = os.path.join(backup_dir, f"{live}_20260207_143215.sql.gz")
    runbook_backup(pg, live, path)
    text = gzip.decompress(open(path, "rb").read()).replace(b"-- PostgreSQL database dump complete", b"--")
    with open(path, "wb") as handle:
        handle.write(gzip.compress(text))
    before = table_counts(pg, live)
    message = failed_restore(pg, backup_dir, live, path=path, force=True)
    assert message == (f"{os.path.basename(path)}: the dump has no 'dump complete' marker; it is truncated"
                       + unchanged(live))
    assert_untouched(pg, live, before)


def test_forced_restore_whose_rows_do_not_match_the_manifest_is_never_swapped_in(pg, live, backup_dir):
    drop_order_rows(take_backup(pg, live, backup_dir))
    before = table_counts(pg, live)
    message = failed_restore(pg, backup_dir, live, database=live, force=True)
    assert message == ("the restored copy does not match the backup's manifest: public.orders: 4990 rows restored, "
                       "5000 in the snapshot" + unchanged(live))
    assert_untouched(pg, live, before)


def test_a_doctored_unencrypted_file_runs_none_of_its_sql_before_its_checksum_is_checked(pg, live, backup_dir):
    # Anyone who can write to the backup directory can rewrite an unencrypted dump; the signed
    # manifest still names the original's SHA-256. psql's --single-transaction ends at the file's
    # own COMMIT, so SQL after it would run for good, as the restoring role, before the stream's
    # end could show the mismatch: here it drops another database that role owns.
    victim = f"{live[:40]}_victim"
    pg.create_database(victim, owner=pg.app_user)
    pg.execute("CREATE TABLE kept AS SELECT 1 AS id", database=victim, superuser=False)
    path = take_backup(pg, live, backup_dir)
    assert not manifest_of(path)["encryption"], "the test needs an unencrypted backup"
    original = open(path, "rb").read()
    payload = f'COMMIT;\nDROP DATABASE "{victim}" WITH (FORCE);\nSET statement_timeout = 0;'.encode()
    doctored = gzip.compress(gzip.decompress(original).replace(b"SET statement_timeout = 0;", payload, 1), 9)
    # The manifest's size still holds: zeros after the last member fill the file up to it.
    assert len(doctored) <= len(original)
    with open(path, "wb") as handle:
        handle.write(doctored + bytes(len(original) - len(doctored)))
    before = table_counts(pg, live)
    target = f"{live[:40]}_copy"
    message = failed_restore(pg, backup_dir, target, path=path, database=live)
    assert pg.database_exists(victim), "SQL from the doctored file ran before its checksum was checked"
    assert message == (f"{os.path.basename(path)}: checksum mismatch; the file is damaged or was changed after "
                       f"the backup; {target} was not created")
    assert table_counts(pg, victim) == {"public.kept": 1}
    assert table_counts(pg, live) == before
    assert databases_like(pg, target) == []
    pg.drop_database(victim)


def _doctored_like(path, victim):
    original = open(path, "rb").read()
    payload = f'COMMIT;\nDROP DATABASE "{victim}" WITH (FORCE);\nSET statement_timeout = 0;'.encode()
    doctored = gzip.compress(gzip.decompress(original).replace(b"SET statement_timeout = 0;", payload, 1), 9)
    return original, doctored


def test_a_file_renamed_over_the_proven_one_before_the_stream_changes_nothing(pg, live, backup_dir):
    # The same attack, timed: the file is proven, then a doctored one of the same size is renamed
    # over it before the stream starts (here, when the engine says it starts restoring). What is
    # restored is the proven copy, never the file now under that name.
    victim = f"{live[:40]}_victim"
    pg.create_database(victim, owner=pg.app_user)
    path = take_backup(pg, live, backup_dir)
    original, doctored = _doctored_like(path, victim)
    planted = path + ".planted"
    with open(planted, "wb") as handle:
        handle.write(doctored + bytes(len(original) - len(doctored)))

    def swap_when_restoring(line):
        if line.startswith("Restoring "):
            os.replace(planted, path)

    target = f"{live[:40]}_copy"
    restore(pg, backup_dir, target, path=path, database=live, log=swap_when_restoring)
    assert pg.database_exists(victim), "SQL from the file renamed over the proven one ran"
    assert table_counts(pg, target) == table_counts(pg, live)
    pg.drop_database(target)
    pg.drop_database(victim)


@pytest.mark.parametrize("how", ["appended", "rewritten in place"])
def test_a_proven_file_changed_in_place_while_it_restores_runs_none_of_the_change(pg, live, backup_dir, how):
    # Same inode, so no stat of the file can tell: a gzip member with a COMMIT and a DROP is appended,
    # or the doctored dump is written over the file's own bytes, once the proof has read it.
    victim = f"{live[:40]}_victim"
    pg.create_database(victim, owner=pg.app_user)
    path = take_backup(pg, live, backup_dir)
    original, doctored = _doctored_like(path, victim)
    payload = gzip.compress(f'COMMIT;\nDROP DATABASE "{victim}" WITH (FORCE);\n'.encode())

    def change_when_restoring(line):
        if line.startswith("Restoring "):
            with open(path, "r+b") as handle:
                if how == "appended":
                    handle.seek(0, os.SEEK_END)
                    handle.write(payload)
                else:
                    handle.write(doctored + bytes(len(original) - len(doctored)))

    target = f"{live[:40]}_copy"
    restore(pg, backup_dir, target, path=path, database=live, log=change_when_restoring)
    assert pg.database_exists(victim), f"SQL {how} after the proof ran"
    assert table_counts(pg, target) == table_counts(pg, live)
    pg.drop_database(target)
    pg.drop_database(victim)


def test_a_custom_dump_cut_short_after_its_proof_still_restores_what_was_proven(pg, live, backup_dir):
    # pg_restore --jobs reads the file itself: it must read the bytes that were proven.
    path = take_backup(pg, live, backup_dir, backup_format="custom", backup_compression="none")

    def cut_when_restoring(line):
        if line.startswith("Restoring "):
            os.truncate(path, 100)

    target = f"{live[:40]}_copy"
    restore(pg, backup_dir, target, path=path, database=live, jobs=2, log=cut_when_restoring)
    assert table_counts(pg, target) == table_counts(pg, live)
    pg.drop_database(target)


def test_server_stopped_mid_restore_leaves_the_target_and_the_next_run_clears_the_side_database(backup_dir):
    server = PostgresServer().init().start().setup_app()
    try:
        server.create_database("shop")
        load_sample_data(server, "shop", orders=200000)
        take_backup(server, "shop", backup_dir)
        before = table_counts(server, "shop")

        stopper = stop_server_once_a_database_appears(server, "shop_restoring_")
        with pytest.raises(ForgeError) as caught:
            restore(server, backup_dir, "shop", database="shop", force=True)
        stopper.join()
        assert caught.value.message.endswith(unchanged("shop")), caught.value.message
        server.start()
        assert table_counts(server, "shop") == before
        [side] = databases_like(server, "shop_restoring_")  # the crash left it; the next run clears it
        log = []
        report = restore(server, backup_dir, "shop", database="shop", force=True, keep_previous=False, log=log.append)
        assert f"Dropping {side}, left by an interrupted restore into shop" in log
        assert report["target_state"] == "replaced" and table_counts(server, "shop") == before
        assert databases_like(server, "shop") == ["shop"]
    finally:
        server.destroy()


def test_a_swap_that_cannot_finish_leaves_the_target_under_its_name_with_its_data(pg, live, backup_dir):
    """The two renames of a swap are one transaction. Here the second cannot happen: as the swap
    ends the target's sessions, another session opens the restored copy and holds it. The target
    must never be left renamed away, and the run says so in one line."""
    take_backup(pg, live, backup_dir)
    keeper = pg.connect(live, superuser=False)
    keeper.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1)")  # and stays connected
    before = table_counts(pg, live)
    holders = []

    def hold_the_copy_as_the_swap_begins(line):
        if line.startswith(f"Ending session on {live}: ") and not holders:
            [side] = databases_like(pg, derived_name(live, "_restoring_00000000")[:-len("00000000")])
            holders.append(pg.connect(side))

    try:
        message = failed_restore(pg, backup_dir, live, database=live, force=True,
                                 log=hold_the_copy_as_the_swap_begins)
    finally:
        for connection in holders + [keeper]:
            connection.close()
    assert holders, "the swap never began"
    assert message.startswith("cannot swap the restored copy in after 5 attempts: database "), message
    assert message.endswith(unchanged(live)), message
    assert table_counts(pg, live) == before
    assert databases_like(pg, live) == [live], "a side or renamed database was left behind"


def test_connected_sessions_are_named_in_check_mode_and_before_they_are_ended(pg, live, backup_dir):
    take_backup(pg, live, backup_dir)
    with pg.connect(live, superuser=False) as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1)")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        engine = restorer(pg, backup_dir, force=True)
        plan = engine.restore(engine.select(live), live, database=live, check_mode=True)
        assert plan["target_state"] == "would restore beside it and swap it in"
        assert any(item.startswith(f"pid {pid} user {pg.app_user} ") for item in plan["sessions"])
        assert table_counts(pg, live)["public.orders"] == 5001  # check mode changed nothing
        log = []
        report = restore(pg, backup_dir, live, database=live, force=True, log=log.append)
        assert any(line.startswith(f"Ending session on {live}: pid {pid} ") for line in log)
        assert report["sessions_ended"] and report["target_state"] == "replaced"
    assert table_counts(pg, live)["public.orders"] == 5000
    previous = report["previous_database"]
    assert table_counts(pg, previous)["public.orders"] == 5001  # the replaced data is kept, by name
    pg.drop_database(previous)


def test_another_roles_session_on_the_target_is_named_and_the_forced_restore_stops_unchanged(pg, live, backup_dir):
    """The restore logs in as the app role, which sees a superuser's session with most columns
    NULL: it must still be named in the plan, and the restore, which may not end it, must stop
    before the swap and leave the target as it was."""
    take_backup(pg, live, backup_dir)
    engine = restorer(pg, backup_dir, force=True)
    backup = engine.select(live)
    with pg.connect(live) as dba:  # a DBA's psql, as the superuser
        pid = dba.execute("SELECT pg_backend_pid()").fetchone()[0]
        plan = engine.restore(backup, live, database=live, check_mode=True)
        assert [item for item in plan["sessions"] if item.startswith(f"pid {pid} user {pg.superuser} ")], plan
        with pytest.raises(ForgeError) as failed:
            restore(pg, backup_dir, live, database=live, force=True)
        assert str(failed.value).startswith(f"cannot end session pid {pid} user {pg.superuser} ")
        assert str(failed.value).endswith(f"{live} is unchanged (3 tables, as before)")
    assert table_counts(pg, live)["public.orders"] == 5000
    with pg.connect() as admin:
        left = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (live + "_%",)).fetchall()
    assert left == []


def test_an_autovacuum_worker_on_the_target_is_no_session_and_does_not_stop_a_forced_restore(pg, live, backup_dir):
    """Autovacuum works in the target whenever it likes, as a backend with no user. It is
    nobody's session: the plan must not name it, and the restore, which runs as the app role,
    must not try to end it (only a superuser may signal it). PostgreSQL itself ends it when
    the database is renamed. A throttled vacuum of a table full of dead rows keeps one there."""
    take_backup(pg, live, backup_dir)
    engine = restorer(pg, backup_dir, force=True)
    backup = engine.select(live)
    with pg.connect(live) as conn:
        conn.execute("CREATE TABLE dead_rows (n int) WITH (autovacuum_vacuum_threshold = 0, "
                     "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_cost_delay = 100, "
                     "autovacuum_vacuum_cost_limit = 1)")
        conn.execute("INSERT INTO dead_rows SELECT generate_series(1, 200000)")
        conn.execute("DELETE FROM dead_rows")
    with pg.connect() as admin:
        admin.execute("ALTER SYSTEM SET autovacuum_naptime = 1")
        admin.execute("SELECT pg_reload_conf()")
        try:
            deadline = time.monotonic() + 60
            while not admin.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s "
                                    "AND backend_type = 'autovacuum worker'", (live,)).fetchone():
                assert time.monotonic() < deadline, "no autovacuum worker came to the target"
                time.sleep(0.1)
            plan = engine.restore(backup, live, database=live, check_mode=True)
            assert plan["sessions"] == []
            log = []
            report = restore(pg, backup_dir, live, database=live, force=True, log=log.append)
        finally:
            admin.execute("ALTER SYSTEM RESET autovacuum_naptime")
            admin.execute("SELECT pg_reload_conf()")
    assert report["target_state"] == "replaced" and report["sessions_ended"] == []
    assert not any(line.startswith("Ending session") for line in log)
    assert table_counts(pg, live)["public.orders"] == 5000
    pg.drop_database(report["previous_database"])


def test_with_nobody_connected_no_session_is_named_not_even_the_restores_own(pg, live, backup_dir):
    """The plan reads the target through a connection of its own, and a closed connection's
    backend leaves pg_stat_activity a moment later: it must never be named as a session to end.
    The window is short (1 plan in 200 to 400 hit it here), so the plan runs 300 times."""
    take_backup(pg, live, backup_dir)
    engine = restorer(pg, backup_dir, force=True)
    backup = engine.select(live)
    named = [engine.restore(backup, live, database=live, check_mode=True)["sessions"] for _ in range(300)]
    assert [sessions for sessions in named if sessions] == []
    log = []
    report = restore(pg, backup_dir, live, database=live, force=True, log=log.append)
    assert report["sessions_ended"] == [] and not any(line.startswith("Ending session") for line in log)
    pg.drop_database(report["previous_database"])


def test_a_failed_restore_into_a_new_database_leaves_nothing(pg, live, backup_dir):
    sql = "CREATE TABLE a (x int);\nSELECT 1/0;\n-- PostgreSQL database dump complete\n"
    path = write_gzip(backup_dir, f"{live}_20260207_143215.sql.gz", sql)
    message = failed_restore(pg, backup_dir, "t_never_made", path=path)
    assert message == "restore stopped: psql:<stdin>:2: ERROR: division by zero; t_never_made was not created"
    assert databases_like(pg, "t_never_made") == []


# -- one trust rule: what is picked, drilled, kept and deleted ------------------------------------------

def test_a_planted_manifest_less_file_is_never_picked_nor_run(pg, live, backup_dir, tmp_path):
    good = take_backup(pg, live, backup_dir)
    canary = tmp_path / "planted-ran"
    write_gzip(backup_dir, f"{live}_20991231_235959.sql.gz",
               f"\\! touch {canary}\nCREATE TABLE planted (x int);\n-- PostgreSQL database dump complete\n")
    report = restore(pg, backup_dir, "t_from_latest", database=live)
    assert report["file"] == good and report["verdict"] == "VERIFIED"
    assert not canary.exists()
    assert "public.planted" not in table_counts(pg, "t_from_latest")
    pg.drop_database("t_from_latest")


def test_a_named_unverified_file_may_run_sql_but_never_psql_commands(pg, live, backup_dir, tmp_path):
    canary = tmp_path / "planted-ran"
    for name, text in (
        ("bang", f"CREATE TABLE planted (x int);\n\\! touch {canary}\n"),
        ("mid-line", f"SELECT 1; \\! touch {canary}\n"),
        # A key of its own does not help: the file cannot know the restore's key.
        ("own-key", f"\\restrict abc\nSELECT 1;\n\\unrestrict abc\n\\! touch {canary}\n"),
    ):
        path = write_gzip(backup_dir, f"{live}_2026020{len(name) % 9}_14321{len(name) % 9}.sql.gz",
                          text + "-- PostgreSQL database dump complete\n")
        message = failed_restore(pg, backup_dir, "t_planted", path=path)
        assert message.startswith("restore stopped: psql:<stdin>:"), (name, message)
        assert message.endswith("; t_planted was not created")
        assert "backslash commands are restricted" in message or "wrong key" in message, (name, message)
        assert not canary.exists(), name
        assert databases_like(pg, "t_planted") == []


def test_only_planted_files_means_no_good_backup(pg, live, backup_dir):
    write_gzip(backup_dir, f"{live}_20260207_143215.sql.gz", "SELECT 1;\n-- PostgreSQL database dump complete\n")
    engine = restorer(pg, backup_dir)
    with pytest.raises(ForgeError) as caught:
        engine.select(live)
    assert caught.value.message == (f"no good backup of {live!r} in {backup_dir}; newest {live}_20260207_143215"
                                    ".sql.gz: no manifest (name a file to restore it as UNVERIFIED)")


def test_a_future_dated_backup_is_never_latest(pg, live, backup_dir):
    older = take_backup(pg, live, backup_dir)
    future_name = f"{live}_20991231_235959.sql.gz"
    future = os.path.join(backup_dir, future_name)
    shutil.copyfile(older, future)
    manifest = dict(manifest_of(older), file=future_name, ended_at="2099-12-31T23:59:59+00:00")
    resign_manifest(future, manifest)
    backup = restorer(pg, backup_dir).select(live)
    assert backup.path == older
    assert backup.skipped_newer == [f"{future_name}: dated in the future (2099-12-31 23:59:59); "
                                    "never taken as the latest"]


def test_with_encryption_required_an_unencrypted_backup_is_not_picked(pg, live, backup_dir):
    take_backup(pg, live, backup_dir)
    with pytest.raises(ForgeError) as caught:
        restorer(pg, backup_dir, require_encryption=True).select(live)
    assert caught.value.message.startswith(f"no good backup of {live!r} in {backup_dir}; newest {live}_")
    assert caught.value.message.endswith(".sql.gz: not encrypted, and encryption is required here")


def _age(path, days):
    """Rename a backup (and its manifest) as if it had been made ``days`` ago, re-signed."""
    manifest = manifest_of(path)
    when = datetime.datetime.now() - datetime.timedelta(days=days)
    name = os.path.basename(path).rsplit("_", 2)[0] + when.strftime("_%Y%m%d_%H%M%S") + ".sql.gz"
    new = os.path.join(os.path.dirname(path), name)
    os.rename(path, new)
    os.unlink(path + ".manifest.json")
    os.unlink(path + ".sha256")
    manifest.update(file=name, ended_at=when.astimezone(datetime.UTC).isoformat(timespec="seconds"))
    resign_manifest(new, manifest)
    return name


def test_junk_in_the_directory_never_counts_towards_min_keep(pg, live, backup_dir):
    real = [_age(take_backup(pg, live, backup_dir), 100 + day) for day in range(3)]
    # Planted today: an empty dump, junk that is not gzip, an unsigned copy, a forged manifest.
    write_gzip(backup_dir, f"{live}_20260101_000001.sql.gz", "")
    with open(os.path.join(backup_dir, f"{live}_20260101_000002.sql.gz"), "wb") as handle:
        handle.write(b"this is not a backup")
    forged = os.path.join(backup_dir, f"{live}_20260101_000003.sql.gz")
    with open(forged, "wb") as handle:
        handle.write(b"\x1f\x8b junk")
    with open(forged + ".manifest.json", "w") as handle:
        json.dump({"manifest_version": 2, "file": os.path.basename(forged), "size": 10, "database": live,
                   "sha256": hashlib.sha256(b"\x1f\x8b junk").hexdigest(),
                   "signature": {"scheme": "hmac-sha256", "key_id": "0" * 16, "value": "0" * 64}}, handle)
    junk = sorted(n for n in os.listdir(backup_dir) if n.startswith(f"{live}_20260101_"))
    assert len(junk) == 4  # three planted files and the forged manifest
    result = run_backup_script(pg, live, backup_dir, {"BACKUP_MIN_KEEP": "3"})
    assert result.returncode == 0, result.stderr
    left = sorted(os.listdir(backup_dir))
    # Three real old backups plus tonight's: min_keep 3 keeps tonight's and the two newest old ones.
    assert real[0] in left and real[1] in left and real[2] not in left
    assert all(name in left for name in junk), "retention touched a file it does not trust"
    assert f"Removed: {real[2]}" in result.stdout


def test_a_planted_directory_does_not_fail_a_complete_backup_during_retention(pg, live, backup_dir):
    old = _age(take_backup(pg, live, backup_dir), 100)
    os.mkdir(os.path.join(backup_dir, old + ".sha256"))
    result = run_backup_script(pg, live, backup_dir, {"BACKUP_MIN_KEEP": "1"})
    assert result.returncode == 0, result.stderr
    assert f"Could not remove {old}.sha256: Is a directory" in result.stdout
    assert f"Removed: {old}" in result.stdout and not os.path.exists(os.path.join(backup_dir, old))


def test_a_second_restore_into_the_same_target_waits_for_nothing_and_changes_nothing(pg, live, backup_dir):
    take_backup(pg, live, backup_dir)
    before = table_counts(pg, live)
    with pg.connect(superuser=False) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (f"infer-forge restore into {live}",))
        message = failed_restore(pg, backup_dir, live, database=live, force=True)
    assert message == f"another restore into {live!r} is running; nothing was changed"
    assert_untouched(pg, live, before)


@pytest.mark.parametrize("sql, error", [
    ("CREATE TABLE customers (email text UNIQUE);\n"
     "INSERT INTO customers VALUES ('unique-canary@example.com'), ('unique-canary@example.com');\n",
     'ERROR: duplicate key value violates unique constraint "customers_email_key"'),
    ("CREATE TABLE customers (email text PRIMARY KEY);\nCREATE TABLE orders (email text REFERENCES customers);\n"
     "COPY orders (email) FROM stdin;\nfk-canary@example.com\n\\.\n",
     'ERROR: insert or update on table "orders" violates foreign key constraint "orders_email_fkey"'),

    # The value is quoted in the ERROR line itself, and the statement in the LINE line.
    ("CREATE TABLE customers (id int);\nINSERT INTO customers VALUES ('int-canary@example.com');\n",
     'psql:<stdin>:2: ERROR: invalid input syntax for type integer: "(value hidden)" '
     "LINE 1: INSERT INTO customers VALUES ... (rest hidden)"),
    # An INSERT-format dump: the ERROR line names a table, the LINE line shows the row.
    ("CREATE TABLE a (x int);\nINSERT INTO missing_table VALUES ('line-canary@example.com', 5);\n",
     'psql:<stdin>:2: ERROR: relation "missing_table" does not exist '
     "LINE 1: INSERT INTO missing_table VALUES ... (rest hidden)"),
    ("CREATE TABLE a (x int);\nINSERT INTO a VALUES ('syntax-canary@example.com' 'oops');\n",
     'psql:<stdin>:2: ERROR: syntax error at or near "(value hidden)" '
     "LINE 1: INSERT INTO a VALUES ... (rest hidden)"),
], ids=["unique-violation", "foreign-key", "invalid-input", "insert-line", "syntax-error"])
def test_row_values_never_reach_the_message_or_sentry(pg, live, backup_dir, sql, error):
    """DETAIL/CONTEXT lines (the key and row of a violation), values quoted in the ERROR line,
    and the statement text of LINE lines all stay on the host."""
    from helpers import SentryStub

    name = f"{live}_20260207_143215.sql.gz"
    write_gzip(backup_dir, name, sql + "-- PostgreSQL database dump complete\n")
    stub = SentryStub()
    try:
        result = forge("drill", name, pg=pg, database=live, backup_dir=backup_dir,
                       extra={"SENTRY_DSN": stub.dsn(), "ENVIRONMENT": "production"})
    finally:
        stub.close()
    assert result.returncode == 1
    [event] = stub.events()
    # What failed and where stays: the error class, the dump's line, the statement's head.
    assert error in result.stdout and error in event["message"]["formatted"]
    for text in (result.stdout + result.stderr, json.dumps(event)):
        assert "canary" not in text and "Key (" not in text and "^" not in text


@pytest.mark.parametrize("line, shown", [
    ('ERROR:  invalid input value for enum mood: "canary"',
     'ERROR:  invalid input value for enum mood: "(value hidden)"'),
    ('ERROR:  date/time field value out of range: "31-02-canary"',
     'ERROR:  date/time field value out of range: "(value hidden)"'),
    ('ERROR:  unterminated quoted string at or near "\'canary@example.cz);',
     'ERROR:  unterminated quoted string at or near "(value hidden)"'),
    ('ERROR:  value "9999canary" is out of range for type integer',
     'ERROR:  value "(value hidden)" is out of range for type integer'),
    ('ERROR:  invalid input syntax for type integer: "say "canary" twice"',
     'ERROR:  invalid input syntax for type integer: "(value hidden)"'),
    ('ERROR:  invalid byte sequence for encoding "UTF8": 0xe9 0x80',
     'ERROR:  invalid byte sequence for encoding "UTF8": (bytes hidden)'),
    ('ERROR:  column "email" of relation "customers" does not exist',
     'ERROR:  column "email" of relation "customers" does not exist'),
    ('ERROR:  null value in column "email" of relation "customers" violates not-null constraint',
     'ERROR:  null value in column "email" of relation "customers" violates not-null constraint'),
    # libpq's connection failures: where it connected is a name, and the server's reason must stay
    # readable (it read 'connection to server on socket "(value hidden)" does not exist').
    ('connection failed: connection to server on socket "/scratch/socket/.s.PGSQL.55432" failed: FATAL:  '
     'role "infer" does not exist',
     'connection failed: connection to server on socket "/scratch/socket/.s.PGSQL.55432" failed: FATAL:  '
     'role "infer" does not exist'),
    ('connection to server at "db" (172.18.0.3), port 5432 failed: FATAL:  password authentication failed for '
     'user "barman"',
     'connection to server at "db" (172.18.0.3), port 5432 failed: FATAL:  password authentication failed for '
     'user "barman"'),
], ids=["enum", "datetime", "unterminated", "out-of-range", "quotes-inside", "bytes", "names", "not-null",
        "socket", "server-at"])
def test_error_lines_keep_names_and_hide_values(line, shown):
    from forge.errors import hide_values

    assert hide_values(line) == shown


@pytest.mark.parametrize("line, shown", [
    ("LINE 1: INSERT INTO public.\"Customers\" VALUES ('canary@example.cz', 5);",
     'LINE 1: INSERT INTO public."Customers" VALUES ... (rest hidden)'),
    ("LINE 1: ...ary@example.cz', 5);", "LINE 1: ... (rest hidden)"),
    ("LINE 2: canary words inside a multi-line string');", "LINE 2: ... (rest hidden)"),
    ("LINE 1: DROP TABLE orders;", "LINE 1: DROP TABLE orders"),
    ("DETAIL:  Key (email)=(canary@example.cz) already exists.", None),
], ids=["insert", "cut-by-psql", "later-line", "no-values", "not-a-line"])
def test_statement_lines_keep_only_the_head_of_the_first_line(line, shown):
    from forge.errors import statement_line

    assert statement_line(line) == shown


def test_a_drill_sql_check_error_quoting_a_value_keeps_it_out_of_sentry(pg, live, backup_dir):
    from helpers import SentryStub

    name = f"{live}_20260207_143215.sql.gz"
    write_gzip(backup_dir, name, "CREATE TABLE customers (email text);\n"
               "INSERT INTO customers VALUES ('check-canary@example.com');\n-- PostgreSQL database dump complete\n")
    stub = SentryStub()
    try:
        result = forge("drill", name, "--check", "SELECT email::int FROM customers", pg=pg, database=live,
                       backup_dir=backup_dir, extra={"SENTRY_DSN": stub.dsn()})
    finally:
        stub.close()
    assert result.returncode == 1
    [event] = stub.events()
    error = 'SQL check SELECT email::int FROM customers: invalid input syntax for type integer: "(value hidden)"'
    assert error in result.stdout and error in event["message"]["formatted"]
    for text in (result.stdout + result.stderr, json.dumps(event)):
        assert "canary" not in text


def test_a_restore_error_quoting_a_value_keeps_it_out_of_the_forge_error(pg, live, backup_dir):
    sql = ("CREATE TABLE customers (id int);\nINSERT INTO customers VALUES ('restore-canary@example.com');\n"
           "-- PostgreSQL database dump complete\n")
    path = write_gzip(backup_dir, f"{live}_20260207_143215.sql.gz", sql)
    before = table_counts(pg, live)
    message = failed_restore(pg, backup_dir, live, path=path, force=True)
    expected = ('restore stopped: psql:<stdin>:2: ERROR: invalid input syntax for type integer: '
                '"(value hidden)" LINE 1: INSERT INTO customers VALUES ... (rest hidden)')
    assert message == expected + unchanged(live)
    assert_untouched(pg, live, before)


# -- verify reads every byte of a file without a manifest ----------------------------------------------------

@pytest.mark.parametrize("damage, message", [
    ("empty", "{name}: the file is too short to be a backup"),
    ("not_gzip", "{name}: not gzip data; the file is damaged or is not a backup"),
    ("truncated", "{name}: gzip data is truncated; the file is incomplete"),
], ids=["zero-bytes", "not-gzip", "truncated"])
def test_verify_of_a_runbook_file_reads_it_through(pg, live, backup_dir, damage, message):
    os.makedirs(backup_dir, mode=0o700)
    name = f"{live}_20260207_143215.sql.gz"
    path = os.path.join(backup_dir, name)
    runbook_backup(pg, live, path)
    if damage == "empty":
        open(path, "wb").close()
    elif damage == "not_gzip":
        with open(path, "wb") as handle:
            handle.write(b"CREATE TABLE x (y int);\n" * 100)
    else:
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) * 2 // 3)
    result = forge("verify", name, pg=pg, database=live, backup_dir=backup_dir)
    assert result.returncode == 1
    assert result.stderr.strip() == "ERROR: " + message.format(name=name)


def test_verify_of_a_good_runbook_file_says_unverified_and_what_ran(pg, live, backup_dir, passphrase_file):
    os.makedirs(backup_dir, mode=0o700)
    name = f"{live}_20260207_143215.sql.gz.enc"
    runbook_backup(pg, live, os.path.join(backup_dir, name), passphrase_file)
    result = forge("verify", name, pg=pg, database=live, backup_dir=backup_dir, passphrase_file=passphrase_file)
    assert result.returncode == 3, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == "UNVERIFIED"
    assert report["checks"] == {"signature": "skipped", "decrypt": "passed", "decompress": "passed",
                                "completion_marker": "passed"}


def test_a_backup_with_more_kdf_iterations_restores_and_drills_without_being_told(pg, live, backup_dir,
                                                                                passphrase_file):
    path = take_backup(pg, live, backup_dir, backup_passphrase_file=passphrase_file, backup_kdf_iter=200000)
    name = os.path.basename(path)
    assert manifest_of(path)["encryption"]["kdf_iterations"] == 200000
    drill = forge("drill", "latest", pg=pg, database=live, backup_dir=backup_dir, passphrase_file=passphrase_file)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert drill.stdout.splitlines()[-1].startswith(f"PASS: {path}: 3 tables")
    target = f"{live}_iter"
    restored = forge("restore", name, target, pg=pg, database=live, backup_dir=backup_dir,
                     passphrase_file=passphrase_file)
    try:
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert table_counts(pg, target) == table_counts(pg, live)
    finally:
        pg.drop_database(target)


def test_a_runbook_file_made_with_more_kdf_iterations_is_read_with_backup_kdf_iter(pg, live, backup_dir,
                                                                                  passphrase_file, run_module):
    os.makedirs(backup_dir, mode=0o700)
    name = f"{live}_20260207_143215.sql.gz.enc"
    env = dict(os.environ, PGPASSWORD=pg.app_password)
    subprocess.run(["bash", "-c", f"set -o pipefail; pg_dump -h {pg.host} -p {pg.port} -U {pg.app_user} -d {live} "
                    f"| gzip | openssl enc -aes-256-cbc -salt -pbkdf2 -iter 200000 -pass file:{passphrase_file} "
                    f"-out {os.path.join(backup_dir, name)}"], env=env, check=True)
    untold = forge("verify", name, pg=pg, database=live, backup_dir=backup_dir, passphrase_file=passphrase_file)
    assert untold.returncode == 1
    assert untold.stderr.strip() == f"ERROR: {name}: wrong passphrase: the decrypted start is not gzip data"
    told = forge("verify", name, pg=pg, database=live, backup_dir=backup_dir, passphrase_file=passphrase_file,
                 extra={"BACKUP_KDF_ITER": "200000"})
    assert told.returncode == 3, told.stderr
    assert json.loads(told.stdout)["checks"]["decrypt"] == "passed"
    # The module says the same with kdf_iter.
    args = {"mode": "verify", "database": live, "backup_file": name, "backup_dir": backup_dir,
            "passphrase_file": passphrase_file}
    assert "wrong passphrase" in run_module("forge_restore", args)["msg"]
    module = run_module("forge_restore", dict(args, kdf_iter=200000))
    assert module["verdict"] == "UNVERIFIED" and module["checks"]["decrypt"] == "passed", module.get("msg")


def test_verify_latest_never_picks_a_zero_byte_file(pg, live, backup_dir):
    good = take_backup(pg, live, backup_dir)
    open(os.path.join(backup_dir, f"{live}_20991231_000000.sql.gz"), "wb").close()
    result = forge("verify", "latest", pg=pg, database=live, backup_dir=backup_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["backup"] == good


def test_a_drill_of_a_runbook_file_says_unverified_never_pass(pg, live, backup_dir):
    os.makedirs(backup_dir, mode=0o700)
    name = f"{live}_20260207_143215.sql.gz"
    runbook_backup(pg, live, os.path.join(backup_dir, name))
    result = forge("drill", name, pg=pg, database=live, backup_dir=backup_dir)
    assert result.returncode == 3, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.startswith(f"UNVERIFIED: {os.path.join(backup_dir, name)}: 3 tables, 5700 rows counted in ")
    assert last.endswith("s; restored, but UNVERIFIED: no signed manifest, so the file's checksum and row counts "
                         "could not be checked")
    # Whole lines: a path or a database name may contain "PASS"; a verdict line starts with it.
    assert [line for line in result.stdout.splitlines() if line.split(":", 1)[0] == "PASS"] == []


# -- each manifest field edited, the signature removed, data swapped ----------------------------------------

@pytest.mark.parametrize("field, value", [
    ("database", "other_db"), ("sha256", "0" * 64), ("snapshot_row_counts", {"public.orders": 1}),
    ("rows", 1), ("tables", 9), ("format", "custom"), ("ended_at", "2020-01-01T00:00:00+00:00"),
    ("compression", {"algorithm": "zstd", "level": 3}), ("dump_options", ["--data-only"]),
], ids=["database", "sha256", "snapshot_row_counts", "rows", "tables", "format", "ended_at", "compression",
        "dump_options"])
def test_every_manifest_field_is_covered_by_the_signature(pg, live, backup_dir, field, value):
    path = take_backup(pg, live, backup_dir)
    manifest = manifest_of(path)
    manifest[field] = value
    with open(path + ".manifest.json", "w") as handle:
        json.dump(manifest, handle)
    backup = catalog.open_backup(path, catalog.TrustPolicy(PASSPHRASE.encode()))
    assert not backup.good
    assert backup.problem == "manifest was changed after the backup: its signature does not match"


def test_without_the_passphrase_a_signed_backup_restores_only_by_name_as_unverified(pg, live, backup_dir):
    path = take_backup(pg, live, backup_dir)
    with pytest.raises(ForgeError) as caught:
        restorer(pg, backup_dir, passphrase_file=None).select(live)
    assert caught.value.message.endswith("manifest signature not checked: no passphrase given (name a file to "
                                         "restore it as UNVERIFIED)")
    report = restore(pg, backup_dir, "t_no_key", path=path, database=live, passphrase_file=None)
    assert report["verdict"] == "UNVERIFIED"
    assert table_counts(pg, "t_no_key") == table_counts(pg, live)
    pg.drop_database("t_no_key")


def test_a_removed_signature_is_refused_not_downgraded(pg, live, backup_dir):
    path = take_backup(pg, live, backup_dir)
    manifest = manifest_of(path)
    del manifest["signature"]
    with open(path + ".manifest.json", "w") as handle:
        json.dump(manifest, handle)
    message = failed_restore(pg, backup_dir, "t_unsigned", path=path, database=live)
    assert message == (f"{os.path.basename(path)}: manifest is not signed; it cannot be trusted (a signature "
                       "removed is a manifest changed)")
    # Rewritten as a version 1 manifest without an HMAC, it is no better than a runbook file.
    manifest["manifest_version"] = 1
    with open(path + ".manifest.json", "w") as handle:
        json.dump(manifest, handle)
    backup = catalog.open_backup(path, catalog.TrustPolicy(PASSPHRASE.encode()))
    assert not backup.good and backup.may_restore_unverified


def test_swapped_data_with_a_recomputed_checksum_is_a_changed_manifest_not_a_wrong_passphrase(
        pg, live, backup_dir, passphrase_file):
    first = take_backup(pg, live, backup_dir, backup_passphrase_file=passphrase_file)
    with pg.connect(live, superuser=False) as conn:
        conn.execute("DELETE FROM orders WHERE id > 100")
    second = take_backup(pg, live, backup_dir, backup_passphrase_file=passphrase_file)
    data = open(second, "rb").read()
    shutil.copyfile(second, first)
    manifest = manifest_of(first)
    manifest.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    with open(first + ".manifest.json", "w") as handle:
        json.dump(manifest, handle)
    backup = catalog.open_backup(first, catalog.TrustPolicy(PASSPHRASE.encode()))
    assert backup.problem == "manifest was changed after the backup: its signature does not match"


@pytest.mark.parametrize("where", ["early", "middle", "trailer"])
def test_a_flipped_byte_with_the_manifest_intact_is_damage(pg, live, backup_dir, where):
    """Wherever the damage lands (psql may reject the garbled SQL first, or gzip its CRC),
    the message names the damage, not its symptom."""
    path = take_backup(pg, live, backup_dir)
    size = os.path.getsize(path)
    for offset in {"early": range(60, 400, 20), "middle": [size // 2], "trailer": [size - 6]}[where]:
        flip_byte(path, offset=offset)
    message = failed_restore(pg, backup_dir, "t_flipped", database=live)
    assert message == (f"{os.path.basename(path)}: checksum mismatch; the file is damaged or was changed after "
                       "the backup; t_flipped was not created")
    assert databases_like(pg, "t_flipped") == []


def gzip_member_offsets(data):
    """Where each gzip member of a file starts (parallel gzip writes one per MiB of dump)."""
    import zlib

    offsets, position = [], 0
    while position < len(data):
        offsets.append(position)
        member = zlib.decompressobj(31)
        member.decompress(data[position:])
        position = len(data) - len(member.unused_data)
    return offsets


def test_a_byte_changed_late_where_only_the_checksum_can_see_it_is_refused(pg, fresh_db, backup_dir):
    """The last gzip member's OS byte: gunzip ignores it, the dump decompresses to exactly the
    same SQL, and the signed manifest is intact. Only the SHA-256 of the streamed bytes can
    refuse this file; a forced restore over the live database must leave it as it was."""
    load_sample_data(pg, fresh_db, orders=30000)  # a dump of several MiB: several zlib gzip members
    path = take_backup(pg, fresh_db, backup_dir, backup_gzip_tool="zlib")
    original = open(path, "rb").read()
    offsets = gzip_member_offsets(original)
    assert len(offsets) >= 3, offsets
    flip_byte(path, offset=offsets[-1] + 9, mask=0x01)
    changed = open(path, "rb").read()
    assert changed != original and gzip.decompress(changed) == gzip.decompress(original)
    before = table_counts(pg, fresh_db)
    message = failed_restore(pg, backup_dir, fresh_db, database=fresh_db, force=True)
    assert message == (f"{os.path.basename(path)}: checksum mismatch; the file is damaged or was changed after "
                       "the backup" + unchanged(fresh_db))
    assert_untouched(pg, fresh_db, before)


def test_a_changed_file_that_still_decompresses_is_named_as_changed_not_by_psqls_error(pg, live, backup_dir):
    """Same size, valid gzip, signed manifest untouched, one COPY row garbled: psql stops first,
    and the message still names the cause."""
    import struct
    import zlib

    path = take_backup(pg, live, backup_dir)
    text = gzip.decompress(open(path, "rb").read())
    start = text.index(b"COPY public.customers ")
    row = text.index(b"\n", start) + 1
    text = text[:row] + b"x" + text[row + 1:]  # the first customer's id is no longer a number
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(text) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(text), len(text) & 0xFFFFFFFF)
    padding = os.path.getsize(path) - (10 + len(body) + len(trailer)) - 1
    assert padding >= 0
    # FCOMMENT in the header takes up the difference, so the size still matches the manifest.
    header = b"\x1f\x8b\x08\x10" + b"\0\0\0\0" + b"\x00\xff" + b"c" * padding + b"\0"
    with open(path, "wb") as handle:
        handle.write(header + body + trailer)
    message = failed_restore(pg, backup_dir, "t_changed", database=live)
    assert message == (f"{os.path.basename(path)}: checksum mismatch; the file is damaged or was changed after "
                       "the backup; t_changed was not created")
    assert databases_like(pg, "t_changed") == []


def test_a_wrong_passphrase_is_named_with_both_key_ids(pg, live, backup_dir, tmp_path):
    path = take_backup(pg, live, backup_dir)
    other = tmp_path / "other.pass"
    other.write_text("another passphrase\n")
    other.chmod(0o600)
    backup = catalog.open_backup(path, catalog.TrustPolicy(b"another passphrase"))
    key = hashlib.pbkdf2_hmac("sha256", b"another passphrase", b"infer-forge manifest signing key v2", 100000, 32)
    theirs = manifest_of(path)["signature"]["key_id"]
    ours = hmac.new(key, b"infer-forge key id", hashlib.sha256).hexdigest()[:16]
    assert backup.problem == (f"wrong passphrase: the manifest was signed with key {theirs}, this passphrase is "
                              f"key {ours} (after a key rotation, put the old passphrase in "
                              "BACKUP_RETIRED_PASSPHRASES_FILE)")


def _as_version_1(path, passphrase=PASSPHRASE, **changes):
    """Rewrite a backup's manifest as the old format: no signature, an HMAC over the whole file."""
    manifest = manifest_of(path)
    data = open(path, "rb").read()
    mac_key = hashlib.pbkdf2_hmac("sha256", passphrase.encode(), data[8:16], 10000, 80)[48:80]
    legacy = {k: v for k, v in manifest.items() if k != "signature"}
    legacy.update(manifest_version=1, **changes)
    legacy["encryption"] = dict(manifest["encryption"], hmac_sha256=hmac.new(mac_key, data, hashlib.sha256).hexdigest())
    with open(path + ".manifest.json", "w") as handle:
        json.dump(legacy, handle)
    return legacy


def test_a_version_1_manifest_is_restored_by_name_only_and_its_hmac_is_checked(pg, live, backup_dir,
                                                                               passphrase_file):
    path = take_backup(pg, live, backup_dir, backup_passphrase_file=passphrase_file)
    legacy = _as_version_1(path)
    # Its HMAC proves the bytes, not the manifest: a replayed old file under a new name and date
    # must never become "latest".
    with pytest.raises(ForgeError) as caught:
        restorer(pg, backup_dir).select(live)
    assert caught.value.message.endswith("manifest predates signing (version 1): it proves at most the file, not "
                                         "what the manifest says (name a file to restore it as UNVERIFIED)")
    report = restore(pg, backup_dir, "t_legacy", path=path, database=live)
    assert report["verdict"] == "UNVERIFIED" and report["checks"]["hmac"] == "passed"
    assert table_counts(pg, "t_legacy") == table_counts(pg, live)
    pg.drop_database("t_legacy")
    legacy["encryption"]["hmac_sha256"] = "0" * 64
    with open(path + ".manifest.json", "w") as handle:
        json.dump(legacy, handle)
    message = failed_restore(pg, backup_dir, "t_legacy", path=path, database=live)
    assert message == (f"{os.path.basename(path)}: HMAC does not match: wrong passphrase, or the file and its "
                       "(version 1, unsigned) manifest were changed together")
    assert databases_like(pg, "t_legacy") == []


def test_an_old_backup_made_before_the_crlf_rule_still_restores(pg, live, backup_dir, tmp_path):
    """The old reader dropped a trailing CR from the passphrase file; openssl keeps it."""
    stripped = tmp_path / "stripped.pass"
    stripped.write_text("an old backup secret\n")
    stripped.chmod(0o600)
    path = take_backup(pg, live, backup_dir, backup_passphrase_file=str(stripped))
    _as_version_1(path, passphrase="an old backup secret")
    crlf = tmp_path / "crlf.pass"
    crlf.write_bytes(b"an old backup secret\r\n")
    crlf.chmod(0o600)
    report = restore(pg, backup_dir, "t_crlf", path=path, database=live, passphrase_file=str(crlf))
    assert report["checks"]["hmac"] == "passed"
    assert table_counts(pg, "t_crlf") == table_counts(pg, live)
    pg.drop_database("t_crlf")


def test_a_planted_manifest_never_crashes_or_hangs_a_scan(pg, live, backup_dir):
    good = take_backup(pg, live, backup_dir)
    planted = {
        "nested": "[" * 100000,
        "non-ascii-signature": json.dumps({**manifest_of(good), "signature": {
            "scheme": "hmac-sha256", "key_id": "é" * 16, "value": "é" * 64}}),
        "not-an-object": "[1, 2]",
    }
    for index, (_, text) in enumerate(planted.items()):
        name = f"{live}_2026010{index + 1}_000000.sql.gz"
        shutil.copyfile(good, os.path.join(backup_dir, name))
        with open(os.path.join(backup_dir, name + ".manifest.json"), "w") as handle:
            handle.write(text.replace(os.path.basename(good), name))
    fifo = os.path.join(backup_dir, f"{live}_20260109_000000.sql.gz")
    shutil.copyfile(good, fifo)
    os.mkfifo(fifo + ".manifest.json")
    os.symlink("/dev/zero", os.path.join(backup_dir, f"{live}_20260108_000000.sql.gz.manifest.json"))
    shutil.copyfile(good, os.path.join(backup_dir, f"{live}_20260108_000000.sql.gz"))
    backups = catalog.scan(backup_dir, live, catalog.TrustPolicy(PASSPHRASE.encode()))
    assert [b.path for b in backups if b.good] == [good]
    problems = {b.name[len(live) + 1:]: b.problem for b in backups if not b.good}
    assert problems["20260109_000000.sql.gz"] == "manifest is not a regular file"
    assert problems["20260108_000000.sql.gz"].startswith("unreadable manifest: ")
    assert problems["20260101_000000.sql.gz"].startswith("unreadable manifest: ")
    assert problems["20260102_000000.sql.gz"] == "manifest was changed after the backup: its signature does not match"
    assert problems["20260103_000000.sql.gz"] == "manifest is not a JSON object"


@pytest.mark.parametrize("target, message", [
    ("template1", "refusing to restore into template1: every new database is copied from it"),
    ("x" * 64, f"target database name {'x' * 64!r} is longer than PostgreSQL's 63 bytes"),
], ids=["template1", "64-bytes"])
def test_targets_postgres_would_misread_are_refused(pg, live, backup_dir, target, message):
    take_backup(pg, live, backup_dir)
    assert failed_restore(pg, backup_dir, target, database=live) == message


def test_a_commit_inside_the_dump_never_reaches_an_empty_target(pg, backup_dir):
    """psql's --single-transaction does not hold against a COMMIT in the script itself."""
    pg.create_database("t_empty_target")
    try:
        sql = ("CREATE TABLE early (x int);\nCOMMIT;\nBEGIN;\nCREATE TABLE late (y int);\n"
               "SELECT 1/0;\n-- PostgreSQL database dump complete\n")
        path = write_gzip(backup_dir, "t_empty_target_20260207_143215.sql.gz", sql)
        message = failed_restore(pg, backup_dir, "t_empty_target", path=path)
        assert message == ("restore stopped: psql:<stdin>:5: ERROR: division by zero; t_empty_target is unchanged "
                           "(still empty)")
        assert table_counts(pg, "t_empty_target") == {}
        assert databases_like(pg, "t_empty_target") == ["t_empty_target"]
    finally:
        pg.drop_database("t_empty_target")


# -- passphrase files, exactly as openssl reads them ---------------------------------------------------------

@pytest.mark.parametrize("content", [
    b"twenty characters ok\r\n", b"twenty characters ok", b"twenty characters ok  \n",
    b"the first line is it\nsecond line\n", b"x" * 1500 + b"\n",
], ids=["crlf", "no-newline", "trailing-spaces", "several-lines", "longer-than-openssl-reads"])
def test_passphrase_files_mean_the_same_to_us_and_to_openssl(pg, live, backup_dir, tmp_path, content):
    pass_file = tmp_path / "backup.pass"
    pass_file.write_bytes(content)
    pass_file.chmod(0o600)
    # Ours -> openssl.
    path = take_backup(pg, live, backup_dir, backup_passphrase_file=str(pass_file))
    decrypted = subprocess.run(["openssl", "enc", "-d", "-aes-256-cbc", "-pbkdf2", "-pass", f"file:{pass_file}",
                                "-in", path], capture_output=True)
    assert decrypted.returncode == 0, decrypted.stderr
    assert b"-- PostgreSQL database dump complete" in gzip.decompress(decrypted.stdout)
    # openssl -> ours.
    made = os.path.join(backup_dir, "backup_encrypted.sql.gz.enc")
    subprocess.run(["openssl", "enc", "-aes-256-cbc", "-salt", "-pbkdf2", "-pass", f"file:{pass_file}",
                    "-in", "/dev/stdin", "-out", made], input=gzip.compress(b"SELECT 1;\n-- PostgreSQL database "
                                                                             b"dump complete\n"), check=True)
    engine = restorer(pg, backup_dir, passphrase_file=str(pass_file))
    report = engine.restore(engine.select(path=made), "t_from_openssl")
    assert report["verdict"] == "UNVERIFIED"
    pg.drop_database("t_from_openssl")


def test_a_passphrase_file_others_can_read_is_refused(pg, live, backup_dir, tmp_path):
    pass_file = tmp_path / "backup.pass"
    pass_file.write_text("secret\n")
    pass_file.chmod(0o640)
    result = run_backup_script(pg, live, backup_dir, {"BACKUP_PASSPHRASE_FILE": str(pass_file)})
    assert result.returncode == 1
    assert result.stderr.strip() == (f"ERROR: passphrase file {pass_file} has mode 0640; it must be readable by its "
                                     f"owner only (chmod 600 {pass_file})")
    assert not os.path.exists(backup_dir) or backups_in(backup_dir) == []


# -- two databases whose names sanitise alike never share anything -----------------------------------------

def test_databases_that_sanitise_alike_keep_their_own_backups(pg, backup_dir):
    names = ['we"ird db', "we_ird_db"]
    try:
        for name in names:
            pg.create_database(name)
            load_sample_data(pg, name, orders=10 if name == "we_ird_db" else 20)
            take_backup(pg, name, backup_dir)
        stems = {catalog.file_stem(name) for name in names}
        assert len(stems) == 2
        for name in names:
            backup = restorer(pg, backup_dir).select(name)
            assert backup.manifest["database"] == name
            assert backup.name.startswith(catalog.file_stem(name) + "_2")
            assert [b.name for b in catalog.scan(backup_dir, name, catalog.TrustPolicy(PASSPHRASE.encode()))] \
                == [backup.name]
        locks = sorted(n for n in os.listdir(backup_dir) if n.endswith(".lock"))
        assert len(locks) == 2
    finally:
        for name in names:
            pg.drop_database(name)


# -- the small ones -------------------------------------------------------------------------------------------

def forge(*args, pg, database, backup_dir, passphrase_file=None, extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_"))}
    env.update(pg.app_env(database), BACKUP_DIR=backup_dir, BACKUP_CONFIG="",
               BACKUP_PASSPHRASE_FILE=passphrase_file or signing_passphrase_file())
    if not passphrase_file:
        env["BACKUP_ENCRYPT"] = "0"
    env.update(extra or {})
    return subprocess.run([os.path.join(SCRIPTS, "forge"), *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("drop", [False, True], ids=["keeps-the-previous", "drop-previous"])
def test_a_forced_restore_by_the_script_keeps_or_drops_the_previous_database_as_asked(pg, live, backup_dir, drop):
    """restore_db.sh restore --force keeps the replaced database by name; --drop-previous (the
    option's other value) drops it, and only once the restored copy has its name."""
    path = take_backup(pg, live, backup_dir)
    backup_counts = table_counts(pg, live)
    with pg.connect(live, superuser=False) as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1)")
    result = forge("restore", os.path.basename(path), live, "--force", *(["--drop-previous"] if drop else []),
                   pg=pg, database=live, backup_dir=backup_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert table_counts(pg, live) == backup_counts
    previous = databases_like(pg, derived_name(live, "_before_restore_20000101_000000")[:-len("20000101_000000")])
    try:
        if drop:
            assert previous == []
        else:
            [kept] = previous
            assert table_counts(pg, kept)["public.orders"] == backup_counts["public.orders"] + 1
    finally:
        for name in previous:
            pg.drop_database(name)


def test_backup_help_prints_help():
    result = subprocess.run([os.path.join(SCRIPTS, "backup_db.sh"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: backup_db.sh [--help]")
    assert "RETENTION_DAYS (30)" in result.stdout


def test_a_closed_stdout_does_not_fail_a_complete_backup(pg, live, backup_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_"))}
    env.update(pg.app_env(live), BACKUP_DIR=backup_dir, BACKUP_CONFIG="",
               BACKUP_PASSPHRASE_FILE=signing_passphrase_file(), BACKUP_ENCRYPT="0")
    result = subprocess.run(["bash", "-c", f"set -o pipefail; {SCRIPTS}/backup_db.sh | head -1"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Starting backup: ")
    assert "Traceback" not in result.stderr and result.stderr == ""
    assert len(backups_in(backup_dir)) == 1


@pytest.mark.parametrize("days", ["0", "-3"], ids=["zero", "negative"])
def test_retention_errors_agree_for_zero_and_negative(pg, live, backup_dir, days):
    result = run_backup_script(pg, live, backup_dir, {"RETENTION_DAYS": days})
    assert result.returncode == 1
    assert result.stderr.strip() == f"ERROR: retention_days must be a whole number >= 1, got {int(days)}"


def test_a_drill_writes_its_json_report_by_default(pg, live, backup_dir):
    take_backup(pg, live, backup_dir)
    result = forge("drill", pg=pg, database=live, backup_dir=backup_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(open(os.path.join(backup_dir, f"restore_drill_{live}.json")).read())
    assert report["passed"] is True and report["verdict"] == "PASS" and report["rows_checked"] == 5700


def test_a_side_database_left_between_create_and_comment_is_cleared_by_the_next_restore(pg, live, backup_dir):
    """A crash right after CREATE DATABASE leaves a side without its in-progress comment (the
    stopped-server test hits this now and then): the next restore clears it by its exact name,
    and a database that only looks alike is left alone."""
    take_backup(pg, live, backup_dir)
    before = table_counts(pg, live)

    orphan = derived_name(live, "_restoring_0badc0de")
    # Not ours: not a side's name, or another target's side (which the SQL pattern alone would take).
    strangers = [derived_name(live, "_restoring_notmine"), "other_shop_restoring_0badc0de"]
    for name in (orphan, *strangers):
        pg.create_database(name)
    try:
        log = []
        report = restore(pg, backup_dir, live, database=live, force=True, keep_previous=False, log=log.append)
        assert f"Dropping {orphan}, left by an interrupted restore into {live}" in log
        assert not pg.database_exists(orphan) and all(pg.database_exists(name) for name in strangers)
        assert report["target_state"] == "replaced" and table_counts(pg, live) == before
    finally:
        for name in (orphan, *strangers):
            pg.drop_database(name)
