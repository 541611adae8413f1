"""Outside the Compose wrapper too, a file nothing proves never runs as a superuser (issue 32,
item 3).

A host whose own psql or pg_restore restores over TCP logs in as the configured login, often the
database superuser. A file without a signed manifest may hold any SQL, and a role set for the
session is no guard (the file's `SET ROLE NONE` returns to the login), so a superuser login
refuses such a file before any database is touched, with or without RESTORE_OWNER; a login that
is no superuser restores it as UNVERIFIED and its program is refused by the server. With
RESTORE_OWNER the clients' sessions take that role as they start, so the owner owns what a
proven restore makes. Real PostgreSQL and the real restore_db.sh."""

import os
import subprocess

import pytest

from helpers import PLAIN_DUMP_END, REPO, databases_like, signing_passphrase_file, take_backup, write_gzip

RESTORE_SCRIPT = os.path.join(REPO, "scripts", "restore_db.sh")
OWNER = "forge_restore_owner"


@pytest.fixture(scope="module")
def owner_role(pg):
    """A role that is no superuser and may create databases, as the Compose wrapper's restore role."""
    pg.execute(f"DROP ROLE IF EXISTS {OWNER}")
    pg.execute(f"CREATE ROLE {OWNER} NOLOGIN CREATEDB")
    yield OWNER


def as_superuser(pg, database, backup_dir, *args, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_", "RESTORE_"))}
    env.update(pg.app_env(database), POSTGRES_USER=pg.superuser, POSTGRES_PASSWORD=pg.superuser_password,
               BACKUP_DIR=backup_dir, BACKUP_CONFIG="", BACKUP_PASSPHRASE_FILE=signing_passphrase_file(),
               BACKUP_ENCRYPT="0")
    env.update({key: str(value) for key, value in extra.items()})
    return subprocess.run([RESTORE_SCRIPT, *args], env=env, capture_output=True, text=True, timeout=120)


def planted(backup_dir, name, sql):
    return os.path.basename(write_gzip(backup_dir, name, sql + PLAIN_DUMP_END))


def refusal(pg, name, target):
    return (f"ERROR: {name} has no signed manifest, and its SQL would run where the superuser {pg.superuser} is "
            "logged in: restore it with a login that is no superuser (POSTGRES_USER), or through the Compose "
            f"wrapper; {target} was not touched")


@pytest.mark.parametrize("owner", [None, OWNER], ids=["no-owner", "owner"])
@pytest.mark.parametrize("sql", [
    "CREATE TABLE x (line text);\nCOPY x FROM PROGRAM 'touch {canary}';\n",
    "CREATE TABLE x (id int);\nCOMMIT;\nDROP DATABASE t_victim_of_a_file;\nBEGIN;\n",
    # RESTORE_OWNER alone is no guard: the file takes the session back to the superuser login.
    "SET ROLE NONE;\nCREATE TABLE x (line text);\nCOPY x FROM PROGRAM 'touch {canary}';\n",
], ids=["program", "drop-another-database", "set-role-none"])
def test_a_superuser_login_never_runs_a_file_nothing_proves(pg, fresh_db, backup_dir, tmp_path, owner_role, owner,
                                                             sql):
    canary = tmp_path / "program-ran"
    pg.create_database("t_victim_of_a_file")
    name = planted(backup_dir, "unproven.sql.gz", sql.format(canary=canary))
    extra = {"RESTORE_OWNER": owner} if owner else {}
    try:
        result = as_superuser(pg, fresh_db, backup_dir, "restore", name, "t_unproven_target", **extra)
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.strip() == refusal(pg, name, "t_unproven_target")
        assert not canary.exists()
        assert databases_like(pg, "t_victim_of_a_file") == ["t_victim_of_a_file"]
        assert databases_like(pg, "t_unproven_target") == []
    finally:
        pg.drop_database("t_victim_of_a_file")


def test_a_login_that_is_no_superuser_restores_a_file_nothing_proves_and_it_runs_no_program(
        pg, fresh_db, backup_dir, tmp_path):
    """The app role (no superuser): the file is restored as UNVERIFIED, and its program refused."""
    canary = tmp_path / "program-ran"
    name = planted(backup_dir, "unproven.sql.gz", f"SET ROLE NONE;\nCREATE TABLE x (line text);\n"
                                                   f"COPY x FROM PROGRAM 'touch {canary}';\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_", "RESTORE_"))}
    env.update(pg.app_env(fresh_db), BACKUP_DIR=backup_dir, BACKUP_CONFIG="",
               BACKUP_PASSPHRASE_FILE=signing_passphrase_file(), BACKUP_ENCRYPT="0")
    result = subprocess.run([RESTORE_SCRIPT, "restore", name, "t_app_target"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "to COPY to or from an external program" in result.stderr
    assert result.stderr.strip().endswith("; t_app_target was not created")
    assert not canary.exists() and databases_like(pg, "t_app_target") == []


@pytest.mark.parametrize("backup_format", ["plain", "custom"])
def test_a_proven_backup_restores_as_the_owner_and_the_owner_owns_what_it_made(
        pg, sample_db, backup_dir, owner_role, backup_format):
    take_backup(pg, sample_db, backup_dir, backup_format=backup_format)
    target = f"t_owned_{backup_format}"
    result = as_superuser(pg, sample_db, backup_dir, "restore", "latest", target, RESTORE_OWNER=owner_role)
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        owners = pg.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'", database=target)
        assert owners == [(owner_role,)]
        assert pg.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                          params=(target,)) == [(owner_role,)]
    finally:
        pg.drop_database(target)
