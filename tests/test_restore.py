"""Restore and restore drill through the forge_restore module, against real PostgreSQL."""

import gzip
import json
import os
import pwd
import subprocess

import pytest

from helpers import (
    SentryStub,
    drop_order_rows,
    flip_byte,
    runbook_backup,
    signing_passphrase_file,
    stop_server_once_a_database_appears,
    take_backup,
)
from servers import PostgresServer, load_sample_data, table_counts


def restore_args(pg, backup_dir, **extra):
    """The module's arguments as a restore on the backup host passes them: the passphrase
    (which checks every manifest's signature) and unencrypted backups allowed unless said."""
    args = {"login_host": pg.host, "port": pg.port, "login_user": pg.app_user, "login_password": pg.app_password,
            "backup_dir": backup_dir, "passphrase_file": signing_passphrase_file(), "require_encryption": False}
    args.update({key: value for key, value in extra.items() if value is not None})
    return args


@pytest.mark.parametrize("fmt, compression, encrypted, jobs", [
    ("plain", "gzip", False, None),
    ("plain", "gzip", True, None),
    ("plain", "zstd", False, None),
    ("plain", "zstd", True, None),
    ("custom", "gzip", False, 2),
    ("custom", "gzip", True, None),
])
def test_drill_round_trip_for_every_format(pg, sample_db, backup_dir, passphrase_file, run_module,
                                          fmt, compression, encrypted, jobs):
    extra = {"backup_format": fmt, "backup_compression": compression}
    if encrypted:
        extra["backup_passphrase_file"] = passphrase_file
    path = take_backup(pg, sample_db, backup_dir, **extra)
    args = restore_args(pg, backup_dir, mode="drill", database=sample_db, passphrase_file=passphrase_file)
    if jobs:
        args["jobs"] = jobs
    result = run_module("forge_restore", args)
    assert result.get("failed") is not True, result.get("msg")
    assert result["passed"] is True, result["reason"]
    assert result["backup"] == path
    assert result["checks"]["sha256"] == "passed" and result["checks"]["row_counts"] == "passed"
    assert result["checks"]["signature"] == "passed" and result["verdict"] == "PASS"
    assert result["tables_checked"] == 3 and result["rows_checked"] == 5700
    # The scratch name is cut to PostgreSQL's 63 bytes: ask the server about the name the drill used.
    assert result["scratch_dropped"] is True
    assert not pg.database_exists(result["scratch_database"])


def test_runbook_made_files_restore_and_say_which_checks_were_skipped(pg, sample_db, backup_dir, passphrase_file,
                                                                     run_module):
    os.makedirs(backup_dir, mode=0o700)
    plain = os.path.join(backup_dir, f"{sample_db}_20260207_143215.sql.gz")
    runbook_backup(pg, sample_db, plain)
    encrypted = os.path.join(backup_dir, "backup_encrypted.sql.gz.enc")
    runbook_backup(pg, sample_db, encrypted, passphrase_file)
    for path in (plain, encrypted):
        result = run_module("forge_restore", restore_args(
            pg, backup_dir, mode="restore", backup_file=path, target_database="runbook_target", force=True,
            keep_previous=False, passphrase_file=passphrase_file, allow_unverified=True))
        assert result.get("failed") is not True, result.get("msg")
        assert table_counts(pg, "runbook_target") == table_counts(pg, sample_db)
        assert result["verdict"] == "UNVERIFIED"
        assert "signature: no manifest" in result["skipped_checks"]
    pg.drop_database("runbook_target")


def test_drill_counts_are_the_snapshots_not_todays(pg, sample_db, backup_dir, run_module):
    take_backup(pg, sample_db, backup_dir)
    with pg.connect(sample_db, superuser=False) as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) SELECT 1, 1 FROM generate_series(1, 321)")
        conn.execute("DELETE FROM customers WHERE id > 150 AND id NOT IN (SELECT customer_id FROM orders)")
    result = run_module("forge_restore", restore_args(pg, backup_dir, mode="drill", database=sample_db))
    assert result["passed"] is True, result["reason"]


def test_drill_fails_when_a_backup_restores_but_rows_are_missing(pg, sample_db, backup_dir, run_module, tmp_path):
    drop_order_rows(take_backup(pg, sample_db, backup_dir))
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    stub = SentryStub()
    try:
        result = run_module("forge_restore", restore_args(pg, backup_dir, mode="drill", database=sample_db,
                                                          textfile_dir=str(textfile), report_dir=str(tmp_path / "r"),
                                                          sentry_dsn=stub.dsn(), environment="production"))
    finally:
        stub.close()
    [event] = stub.events()
    assert event["tags"]["component"] == "restore-drill" and event["tags"]["database"] == sample_db
    assert "public.orders: 4990 rows restored" in event["message"]["formatted"]
    assert result["failed"] is True
    assert result["passed"] is False
    assert "public.orders: 4990 rows restored, 5000 in the snapshot" in result["msg"]
    assert result["row_count_mismatches"] == {"public.orders": {"expected": 5000, "restored": 4990}}
    assert result["scratch_dropped"] is True and not pg.database_exists(result["scratch_database"])
    prom = (textfile / f"infer_forge_restore_drill_{sample_db}.prom").read_text()
    assert f'infer_forge_restore_drill_last_run_success{{database="{sample_db}"}} 0' in prom
    report = json.loads((tmp_path / "r" / f"restore_drill_{sample_db}.json").read_text())
    assert report["passed"] is False


def test_drill_records_metrics_and_report_on_success(pg, sample_db, backup_dir, run_module, tmp_path):
    take_backup(pg, sample_db, backup_dir)
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    result = run_module("forge_restore", restore_args(
        pg, backup_dir, mode="drill", database=sample_db, textfile_dir=str(textfile),
        report_dir=str(tmp_path / "reports"),
        sql_checks=[{"name": "orders", "sql": "SELECT COUNT(*) FROM orders", "min": 1},
                    {"name": "shipped", "sql": "SELECT COUNT(*) FROM orders WHERE status = 'shipped'",
                     "expect": 1666}]))
    assert result["passed"] is True, result["reason"]
    assert [c["value"] for c in result["sql_checks"]] == [5000, 1666]
    prom = (textfile / f"infer_forge_restore_drill_{sample_db}.prom").read_text()
    assert f'infer_forge_restore_drill_last_run_success{{database="{sample_db}"}} 1' in prom
    assert "infer_forge_restore_drill_last_success_timestamp_seconds" in prom
    assert "infer_forge_restore_drill_backup_age_seconds" in prom
    report = json.loads((tmp_path / "reports" / f"restore_drill_{sample_db}.json").read_text())
    assert report["passed"] is True and report["tables_checked"] == 3


def test_a_failing_sql_check_fails_the_drill(pg, sample_db, backup_dir, run_module):
    take_backup(pg, sample_db, backup_dir)
    result = run_module("forge_restore", restore_args(
        pg, backup_dir, mode="drill", database=sample_db, fail_on_error=False,
        sql_checks=[{"name": "invoices", "sql": "SELECT COUNT(*) FROM invoices"}]))
    assert result.get("failed") is not True
    assert result["passed"] is False
    assert 'SQL check invoices: relation "invoices" does not exist' in result["reason"]


def test_amcheck_verifies_the_restored_indexes(pg, sample_db, backup_dir, run_module):
    take_backup(pg, sample_db, backup_dir)
    result = run_module("forge_restore", {**restore_args(pg, backup_dir, mode="drill", database=sample_db,
                                                         amcheck=True),
                                          "login_user": pg.superuser, "login_password": pg.superuser_password})
    assert result["passed"] is True, result["reason"]
    assert result["checks"]["amcheck"] == "passed" and result["indexes_checked"] >= 3


def test_a_scratch_database_the_drill_cannot_drop_is_reported_as_left_behind(pg, sample_db, backup_dir, run_module):
    """keep leaves the scratch database for inspection. A superuser looking at it holds a session the
    drill's role may not end, so the next drill can drop it neither before nor after: it must say so."""
    take_backup(pg, sample_db, backup_dir)
    kept = run_module("forge_restore", restore_args(pg, backup_dir, mode="drill", database=sample_db, keep=True))
    assert kept["passed"] is True, kept.get("reason")
    scratch = kept["scratch_database"]
    try:
        with pg.connect(scratch) as inspector:
            result = run_module("forge_restore", restore_args(pg, backup_dir, mode="drill", database=sample_db,
                                                              fail_on_error=False))
            assert result["passed"] is False and repr(scratch) in result["reason"]
            # The reason is the real one, not "the target already has tables".
            assert result["reason"].startswith(f"cannot drop the scratch database {scratch!r} a kept drill left: ")
            assert "superuser" in result["reason"] and result["reason"].endswith("; nothing was restored")
            assert result["scratch_dropped"] is False
            assert pg.database_exists(scratch)
            # Nothing was done to the inspector or to what it looks at.
            assert inspector.execute("SELECT count(*) FROM orders").fetchone()[0] == 5000
    finally:
        pg.drop_database(scratch)


# -- bad input: a clear error, nothing lost ---------------------------------------------------------

def _restore(run_module, pg, backup_dir, **extra):
    return run_module("forge_restore", restore_args(pg, backup_dir, **extra))


def test_missing_file(pg, backup_dir, run_module):
    os.makedirs(backup_dir)
    result = _restore(run_module, pg, backup_dir, mode="verify", backup_file="infer_forge_20260101_020000.sql.gz")
    assert result["msg"].startswith("backup file ") and result["msg"].endswith("does not exist")


def test_truncated_file_is_caught_by_its_manifest(pg, sample_db, backup_dir, run_module):
    path = take_backup(pg, sample_db, backup_dir)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)
    result = _restore(run_module, pg, backup_dir, mode="restore", database=sample_db, target_database="t_trunc")
    assert result["failed"] is True
    assert "bytes but its manifest says" in result["msg"]
    assert not pg.database_exists("t_trunc")


def test_truncated_runbook_file_commits_nothing(pg, sample_db, backup_dir, run_module):
    os.makedirs(backup_dir, mode=0o700)
    path = os.path.join(backup_dir, f"{sample_db}_20260207_143215.sql.gz")
    runbook_backup(pg, sample_db, path)
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) * 2 // 3)
    pg.create_database("t_trunc_rb")
    result = _restore(run_module, pg, backup_dir, mode="restore", backup_file=path, target_database="t_trunc_rb")
    assert result["failed"] is True
    assert "truncated" in result["msg"]
    assert table_counts(pg, "t_trunc_rb") == {}  # the single transaction was never committed
    pg.drop_database("t_trunc_rb")


@pytest.mark.parametrize("encrypted", [False, True])
def test_one_flipped_byte_in_the_middle(pg, sample_db, backup_dir, passphrase_file, run_module, encrypted):
    extra = {"backup_passphrase_file": passphrase_file} if encrypted else {}
    path = take_backup(pg, sample_db, backup_dir, **extra)
    flip_byte(path, mask=0x10)
    result = _restore(run_module, pg, backup_dir, mode="drill", database=sample_db, passphrase_file=passphrase_file)
    assert result["failed"] is True
    assert "checksum mismatch; the file is damaged or was changed after the backup" in result["msg"]
    assert not pg.database_exists(f"{sample_db}_restore_drill")  # refused before any database was made


def test_flipped_byte_in_a_runbook_file_is_caught_while_streaming(pg, sample_db, backup_dir, run_module):
    os.makedirs(backup_dir, mode=0o700)
    path = os.path.join(backup_dir, f"{sample_db}_20260207_143215.sql.gz")
    runbook_backup(pg, sample_db, path)
    flip_byte(path, mask=0xFF)
    result = _restore(run_module, pg, backup_dir, mode="restore", backup_file=path, target_database="t_flip",
                      allow_unverified=True)
    assert result["failed"] is True
    assert "gzip data is corrupt" in result["msg"] or "restore stopped" in result["msg"]
    assert not pg.database_exists("t_flip")


def test_wrong_passphrase_is_told_apart_from_damage(pg, sample_db, backup_dir, passphrase_file, run_module):
    take_backup(pg, sample_db, backup_dir, backup_passphrase_file=passphrase_file)
    result = _restore(run_module, pg, backup_dir, mode="drill", database=sample_db, passphrase="not it")
    assert result["failed"] is True
    assert "wrong passphrase: the manifest was signed with key " in result["msg"]
    assert "not it" not in result["_raw"]


def test_wrong_passphrase_on_a_runbook_file(pg, sample_db, backup_dir, passphrase_file, run_module):
    os.makedirs(backup_dir, mode=0o700)
    path = os.path.join(backup_dir, f"{sample_db}_20260207_143215.sql.gz.enc")
    runbook_backup(pg, sample_db, path, passphrase_file)
    result = _restore(run_module, pg, backup_dir, mode="restore", backup_file=path, target_database="t_wrongpw",
                      allow_unverified=True,
                      passphrase="not it")
    assert result["failed"] is True
    assert result["msg"] == f"{os.path.basename(path)}: wrong passphrase: the decrypted start is not gzip data; " \
                            "t_wrongpw was not created"
    assert not pg.database_exists("t_wrongpw")


def test_a_backup_of_a_different_database_is_refused(pg, sample_db, backup_dir, run_module):
    path = take_backup(pg, sample_db, backup_dir)
    result = _restore(run_module, pg, backup_dir, mode="drill", database="infer_forge", backup_file=path)
    assert result["failed"] is True
    assert f"is a backup of database '{sample_db}', not 'infer_forge'" in result["msg"]


def test_a_target_with_data_is_refused_without_force(pg, sample_db, backup_dir, run_module):
    take_backup(pg, sample_db, backup_dir)
    result = _restore(run_module, pg, backup_dir, mode="restore", database=sample_db, target_database=sample_db)
    assert result["failed"] is True
    assert f"target database '{sample_db}' already has 3 tables" in result["msg"]
    assert table_counts(pg, sample_db)["public.orders"] == 5000


def test_force_recreates_a_target_that_has_data(pg, sample_db, backup_dir, run_module):
    take_backup(pg, sample_db, backup_dir)
    pg.create_database("t_forced")
    with pg.connect("t_forced", superuser=False) as conn:
        conn.execute("CREATE TABLE leftovers (x int)")
    result = _restore(run_module, pg, backup_dir, mode="restore", database=sample_db, target_database="t_forced",
                      force=True)
    assert result["target_state"] == "replaced"
    assert table_counts(pg, "t_forced") == table_counts(pg, sample_db)
    assert result["previous_database"].startswith("t_forced_before_restore_")
    assert table_counts(pg, result["previous_database"]) == {"public.leftovers": 0}
    pg.drop_database("t_forced")
    pg.drop_database(result["previous_database"])


def test_check_mode_verifies_and_changes_nothing(pg, sample_db, backup_dir, run_module):
    take_backup(pg, sample_db, backup_dir)
    result = run_module("forge_restore", restore_args(pg, backup_dir, mode="restore", database=sample_db,
                                                      target_database="t_check"), check=True)
    assert result["target_state"] == "would create it" and result["checks"]["sha256"] == "passed"
    assert not pg.database_exists("t_check")


def test_scratch_equal_to_the_source_is_refused(pg, sample_db, backup_dir, run_module):
    take_backup(pg, sample_db, backup_dir)
    result = _restore(run_module, pg, backup_dir, mode="drill", database=sample_db, scratch_database=sample_db)
    assert result["failed"] is True
    assert "is the live database; refusing to restore over it" in result["msg"]
    assert table_counts(pg, sample_db)["public.orders"] == 5000


def test_a_scratch_name_that_is_someone_elses_database_is_not_dropped(pg, sample_db, backup_dir, run_module):
    take_backup(pg, sample_db, backup_dir)
    pg.create_database("precious")
    result = _restore(run_module, pg, backup_dir, mode="drill", database=sample_db, scratch_database="precious")
    assert result["failed"] is True
    assert "exists and was not made by a drill" in result["msg"]
    assert pg.database_exists("precious")
    pg.drop_database("precious")


def test_a_sql_error_in_the_dump_stops_the_restore_and_names_the_statement(pg, sample_db, backup_dir, run_module):
    os.makedirs(backup_dir, mode=0o700)
    path = os.path.join(backup_dir, f"{sample_db}_20260207_143215.sql.gz")
    sql = ("CREATE TABLE a (x int);\nINSERT INTO a VALUES (1);\nINSERT INTO missing_table VALUES (2);\n"
           "CREATE TABLE b (y int);\n-- PostgreSQL database dump complete\n\n")
    with open(path, "wb") as handle:
        handle.write(gzip.compress(sql.encode()))
    pg.create_database("t_sqlerr")
    result = _restore(run_module, pg, backup_dir, mode="restore", backup_file=path, target_database="t_sqlerr",
                      allow_unverified=True)
    assert result["failed"] is True
    assert 'psql:<stdin>:3: ERROR: relation "missing_table" does not exist' in result["msg"]
    assert "LINE 1: INSERT INTO missing_table VALUES ... (rest hidden)" in result["msg"]
    assert table_counts(pg, "t_sqlerr") == {}  # ON_ERROR_STOP in one transaction: table a was rolled back
    pg.drop_database("t_sqlerr")


def test_a_path_outside_the_backup_directory_is_refused(pg, sample_db, backup_dir, run_module, tmp_path):
    take_backup(pg, sample_db, backup_dir)
    outside = tmp_path / f"{sample_db}_20260101_000000.sql.gz"
    outside.write_bytes(b"")
    for given in (str(outside), "../" + outside.name):
        result = _restore(run_module, pg, backup_dir, mode="verify", backup_file=given)
        assert result["failed"] is True
        assert "is outside the backup directory" in result["msg"], result["msg"]


def test_postgres_stopped_mid_restore(backup_dir, run_module, tmp_path):
    server = PostgresServer().init().start().setup_app()
    try:
        server.create_database("src")
        load_sample_data(server, "src", orders=200000)
        take_backup(server, "src", backup_dir)
        # The drill restores into a side database first: src_restore_drill_restoring_<hex>.
        stopper = stop_server_once_a_database_appears(server, "src_restore_drill")
        result = run_module("forge_restore", restore_args(server, backup_dir, mode="drill", database="src"))
        stopper.join()
        assert result["failed"] is True
        assert "restore stopped" in result["msg"] or "connection" in result["msg"]
    finally:
        server.destroy()


def test_disk_full_during_restore(pg, fresh_db, backup_dir, run_module, shared_tmp):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    sample_db = fresh_db
    with pg.connect(sample_db, superuser=False) as conn:  # about 11 MB of poorly compressible data
        conn.execute("CREATE TABLE blobs AS SELECT g AS id, string_agg(md5(random()::text), '') AS payload "
                     "FROM generate_series(1, 6000) g, generate_series(1, 60) h GROUP BY g")
    take_backup(pg, sample_db, backup_dir)
    space = os.path.join(shared_tmp, "tablespace")  # the postgres user must reach it
    os.mkdir(space)
    # Room for an empty database's catalogs (about 8 MB) but not for the restored table.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", space], check=True)
    try:
        postgres = pwd.getpwnam("postgres")
        os.chown(space, postgres.pw_uid, postgres.pw_gid)
        pg.execute(f"CREATE TABLESPACE tiny LOCATION '{space}'")
        # The restore builds its side database where the target lives, as the app role.
        pg.execute("GRANT CREATE ON TABLESPACE tiny TO infer")
        pg.execute("CREATE DATABASE t_full OWNER infer TABLESPACE tiny")
        result = _restore(run_module, pg, backup_dir, mode="restore", database=sample_db, target_database="t_full")
        assert result["failed"] is True
        assert "No space left on device" in result["msg"] or "could not extend" in result["msg"], result["msg"]
        assert table_counts(pg, "t_full") == {}
    finally:
        pg.drop_database("t_full")
        pg.execute("DROP TABLESPACE IF EXISTS tiny")
        subprocess.run(["umount", space], check=True)


def test_restore_db_sh_runs_the_same_drill_and_restore_on_the_host(pg, sample_db, backup_dir, passphrase_file):
    take_backup(pg, sample_db, backup_dir, backup_passphrase_file=passphrase_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_"))}
    env.update(pg.app_env(sample_db), BACKUP_DIR=backup_dir, BACKUP_PASSPHRASE_FILE=passphrase_file, BACKUP_CONFIG="")
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "restore_db.sh")

    def run(*args):
        return subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=300)

    drill = run("drill", "--check", "SELECT COUNT(*) FROM orders")
    assert drill.returncode == 0, drill.stderr
    assert drill.stdout.splitlines()[-1].startswith("PASS: ")
    assert "3 tables, 5700 rows checked" in drill.stdout
    restored = run("restore", "latest", "t_script")
    assert restored.returncode == 0, restored.stderr
    assert table_counts(pg, "t_script") == table_counts(pg, sample_db)
    again = run("restore", "latest", "t_script")
    assert again.returncode == 1
    assert again.stderr.strip() == ("ERROR: target database 't_script' already has 3 tables; restoring would "
                                    "overwrite data (force: true, or --force, restores beside it and swaps it in "
                                    "only when complete)")
    pg.drop_database("t_script")


@pytest.mark.parametrize("fmt", ["plain", "custom"])
def test_drill_of_a_database_whose_name_has_quotes_spaces_and_equals(pg, backup_dir, run_module, fmt):
    name = "Infer's = odd db"
    pg.create_database(name)
    try:
        load_sample_data(pg, name)
        take_backup(pg, name, backup_dir, backup_format=fmt)
        result = run_module("forge_restore", restore_args(pg, backup_dir, mode="drill", database=name))
        assert result["passed"] is True, result.get("reason")
        assert result["rows_checked"] == 5700
        assert result["scratch_database"] == f"{name}_restore_drill"
        assert not pg.database_exists(result["scratch_database"])
    finally:
        pg.drop_database(name)


def test_an_unverified_restore_is_refused_unless_asked_and_touches_nothing(pg, sample_db, backup_dir, passphrase_file,
                                                                        run_module):
    """forge_restore once reported a plain "ok" for a file nothing proved: an ok restore must mean
    a proven backup. Without allow_unverified a manifest-less file is refused, the target as it was."""
    os.makedirs(backup_dir, mode=0o700)
    plain = os.path.join(backup_dir, f"{sample_db}_20260207_143215.sql.gz")
    runbook_backup(pg, sample_db, plain)
    pg.create_database("kept_target")
    pg.execute("CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1), (2)", database="kept_target")
    result = run_module("forge_restore", restore_args(
        pg, backup_dir, mode="restore", backup_file=plain, target_database="kept_target", force=True,
        passphrase_file=passphrase_file))
    assert result.get("failed") is True and result.get("changed") is not True
    assert result["msg"] == (f"{os.path.basename(plain)} has no signed manifest that proves what it holds, so its "
                             "restore would be UNVERIFIED; set allow_unverified (playbooks: "
                             "backup_restore_allow_unverified) to restore it anyway; kept_target was not touched")
    assert table_counts(pg, "kept_target") == {"public.keep_me": 2}
    pg.drop_database("kept_target")
