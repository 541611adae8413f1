"""No secret reaches a client the restore starts, on any format or path.

The backup side's children (pg_dump, the compressors) are held by test_backup_script.py
and test_igzip.py. A restore starts psql (plain dumps, any compression), pg_restore on a
stream (custom) or pg_restore reading the proven file itself (custom, --jobs): each gets
the database password as an in-memory file (PGPASSFILE=/dev/fd/N), never as PGPASSWORD
and never on its command line, and never the backup passphrase. Each client here is a
spy that records its own argv and environment as it starts, then execs the real one.
"""

import os
import shutil
import subprocess

import pytest

from helpers import PASSPHRASE, REPO, backups_in, run_backup_script, signing_passphrase_file
from servers import table_counts

CASES = {
    "plain-gzip": ({}, []),
    "plain-zstd-encrypted": ({"BACKUP_COMPRESSION": "zstd", "BACKUP_ENCRYPT": "1"}, []),
    "custom-streamed": ({"BACKUP_FORMAT": "custom"}, ["--jobs", "1"]),  # one job: pg_restore reads our stream
    "custom-encrypted": ({"BACKUP_FORMAT": "custom", "BACKUP_ENCRYPT": "1"}, []),
    "custom-jobs-2-reads-the-file": ({"BACKUP_FORMAT": "custom"}, ["--jobs", "2"]),
}


def spy(directory, tool):
    """A client that records its argv and environment (NUL-separated) and execs ``tool``."""
    path = directory / f"spy-{tool}"
    path.write_text("#!/bin/sh\n"
                    f"printf '%s\\0' \"$@\" > {directory}/$$.{tool}.argv\n"
                    f"cat /proc/$$/environ > {directory}/$$.{tool}.environ\n"
                    f"exec {shutil.which(tool)} \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def recorded(directory):
    """[(tool, argv items, environ items)] of every client the spies saw start."""
    seen = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".argv"):
            stem = name[:-len(".argv")]
            with open(directory / name, "rb") as handle:
                argv = handle.read().split(b"\0")
            with open(directory / f"{stem}.environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            seen.append((stem.split(".")[1], argv, environ))
    return seen


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_restore_hands_its_clients_no_secret_on_their_command_line_or_in_their_environment(
        pg, sample_db, backup_dir, tmp_path, case):
    settings, extra_args = CASES[case]
    settings = dict(settings, BACKUP_PASSPHRASE_FILE=signing_passphrase_file())
    settings.setdefault("BACKUP_ENCRYPT", "0")
    result = run_backup_script(pg, sample_db, backup_dir, settings)
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    spies = tmp_path / "spies"
    spies.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_", "RESTORE_"))}
    env.update(pg.app_env(sample_db), BACKUP_DIR=backup_dir, BACKUP_CONFIG="", **settings,
               RESTORE_PSQL_COMMAND=spy(spies, "psql"), RESTORE_PG_RESTORE_COMMAND=spy(spies, "pg_restore"))
    target = f"copy_{case.replace('-', '_')}"
    try:
        restore = subprocess.run([os.path.join(REPO, "scripts", "restore_db.sh"), "restore", os.path.basename(path),
                                  target, *extra_args], env=env, capture_output=True, text=True, timeout=300)
        assert restore.returncode == 0, restore.stdout + restore.stderr
        assert table_counts(pg, target) == table_counts(pg, sample_db)
    finally:
        pg.drop_database(target)
    clients = recorded(spies)
    expected_tool = "psql" if settings.get("BACKUP_FORMAT") != "custom" else "pg_restore"
    assert {tool for tool, _argv, _environ in clients} == {expected_tool}
    secrets = [pg.app_password.encode(), PASSPHRASE.encode()]
    for tool, argv, environ in clients:
        assert not any(secret in item for item in argv + environ for secret in secrets), tool
        assert not any(item.startswith(b"PGPASSWORD=") for item in environ), tool
        passfiles = [item for item in environ if item.startswith(b"PGPASSFILE=")]
        assert all(item.startswith(b"PGPASSFILE=/dev/fd/") for item in passfiles), (tool, passfiles)
    # The clients that log in (psql; pg_restore into the database) read the password from that file.
    connecting = [environ for tool, argv, environ in clients if tool == "psql" or any(
        item.startswith(b"--dbname=") for item in argv)]
    assert connecting and all(any(item.startswith(b"PGPASSFILE=/dev/fd/") for item in environ)
                              for environ in connecting)
