"""Outside the Compose wrapper too, a dump's SQL never runs as a superuser (issue 32, item 3).

A host whose own psql or pg_restore restores over TCP logs in as the configured login, often the
database superuser. With RESTORE_OWNER set, the clients' sessions take that role at connection
(`-c role=...`), so what a file holds runs with the owner's rights: `COPY ... FROM PROGRAM` and
`DROP DATABASE` of another database fail in one line and nothing else changes. Without an owner,
a superuser login restores only what its own key proves: a file nothing proves is refused before
any database is touched. Real PostgreSQL and the real restore_db.sh, logged in as the superuser.
"""

import gzip
import os
import subprocess

import pytest

from helpers import REPO, signing_passphrase_file, take_backup

RESTORE_SCRIPT = os.path.join(REPO, "scripts", "restore_db.sh")
OWNER = "forge_restore_owner"
COMPLETE = "\n--\n-- PostgreSQL database dump complete\n--\n\n"


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
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    path = os.path.join(backup_dir, name)
    with gzip.open(path, "wb") as handle:
        handle.write((sql + COMPLETE).encode())
    return os.path.basename(path)


def databases_like(pg, prefix):
    return [row[0] for row in pg.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                         params=(prefix + "%",))]


def test_a_program_in_a_file_never_runs_when_an_owner_is_set(pg, fresh_db, backup_dir, tmp_path, owner_role):
    canary = tmp_path / "program-ran"
    name = planted(backup_dir, "runs_a_program.sql.gz",
                   f"CREATE TABLE x (line text);\nCOPY x FROM PROGRAM 'touch {canary}';\n")
    result = as_superuser(pg, fresh_db, backup_dir, "restore", name, "t_program_target", RESTORE_OWNER=owner_role)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("ERROR: restore stopped: psql:<stdin>:2: ERROR: must be superuser or have privileges "
                           "of the pg_execute_server_program role to COPY to or from an external program"), line
    assert line.endswith("; t_program_target was not created"), line
    assert not canary.exists()
    assert databases_like(pg, "t_program_target") == []


def test_a_file_cannot_drop_another_database_when_an_owner_is_set(pg, fresh_db, backup_dir, owner_role):
    pg.create_database("t_victim_of_a_file")
    name = planted(backup_dir, "drops_another.sql.gz",
                   "CREATE TABLE x (id int);\nCOMMIT;\nDROP DATABASE t_victim_of_a_file;\nBEGIN;\n")
    try:
        result = as_superuser(pg, fresh_db, backup_dir, "restore", name, "t_drop_target", RESTORE_OWNER=owner_role)
        assert result.returncode == 1, result.stdout + result.stderr
        [line] = result.stderr.strip().splitlines()
        assert "must be owner of database t_victim_of_a_file" in line, line
        assert databases_like(pg, "t_victim_of_a_file") == ["t_victim_of_a_file"]
    finally:
        pg.drop_database("t_victim_of_a_file")
        pg.drop_database("t_drop_target")


def test_without_an_owner_a_superuser_login_never_restores_a_file_nothing_proves(pg, fresh_db, backup_dir):
    name = planted(backup_dir, "unproven.sql.gz", "CREATE TABLE x (id int);\n")
    result = as_superuser(pg, fresh_db, backup_dir, "restore", name, "t_unproven_target")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"ERROR: {name} has no signed manifest, and its SQL would run as the superuser {pg.superuser}: set "
        "RESTORE_OWNER (role: backup_restore_owner) to a role that is not a superuser; t_unproven_target was "
        "not touched")
    assert databases_like(pg, "t_unproven_target") == []


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
