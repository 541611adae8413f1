"""Each promise at its edge, on every backup format: one row, one byte, one character.

A slip that compares with a tolerance, hashes all but the last block, or checks a
signature only for the format its first test used passes every test that removes ten
rows from a plain gzip file. These change the least that can be changed, on each format
the engine writes (plain gzip, plain zstd, custom; encrypted or not), through the
command cron and operators run (scripts/forge, as restore_db.sh calls it):

- a manifest that says one row more, or one row fewer, than the dump holds fails the
  drill naming the table, and a forced restore of it leaves the target as it was;
- one flipped bit in the first, the middle or the last byte fails verify before any
  database is touched;
- a passphrase one character off proves nothing: verify refuses the file.
"""

import os
import re
import subprocess

import pytest

from helpers import (
    PASSPHRASE,
    REPO,
    backups_in,
    flip_byte,
    manifest_of,
    resign_manifest,
    run_backup_script,
    signing_passphrase_file,
)
from servers import table_counts

FORMATS = {
    "plain-gzip": {},
    "plain-gzip-encrypted": {"BACKUP_ENCRYPT": "1"},
    "plain-zstd": {"BACKUP_COMPRESSION": "zstd"},
    "plain-zstd-encrypted": {"BACKUP_COMPRESSION": "zstd", "BACKUP_ENCRYPT": "1"},
    "custom": {"BACKUP_FORMAT": "custom"},
    "custom-encrypted": {"BACKUP_FORMAT": "custom", "BACKUP_ENCRYPT": "1"},
}


@pytest.fixture(params=sorted(FORMATS))
def made(request, pg, sample_db, backup_dir):
    """(database, backup path, settings) of one backup of the sample data in the format."""
    settings = dict(FORMATS[request.param], BACKUP_PASSPHRASE_FILE=signing_passphrase_file())
    settings.setdefault("BACKUP_ENCRYPT", "0")
    result = run_backup_script(pg, sample_db, backup_dir, settings)
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    return sample_db, path, settings


def forge(pg, database, backup_dir, settings, *args, passphrase_file=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_"))}
    env.update(pg.app_env(database), BACKUP_DIR=backup_dir, BACKUP_CONFIG="", **settings)
    if passphrase_file:
        env["BACKUP_PASSPHRASE_FILE"] = passphrase_file
    return subprocess.run([os.path.join(REPO, "scripts", "forge"), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]


@pytest.mark.parametrize("delta", [1, -1], ids=["one-row-more", "one-row-fewer"])
def test_a_manifest_one_row_off_fails_the_drill_naming_the_table(pg, made, backup_dir, delta):
    database, path, settings = made
    manifest = manifest_of(path)
    restored = manifest["snapshot_row_counts"]["public.orders"]
    manifest["snapshot_row_counts"]["public.orders"] = restored + delta
    resign_manifest(path, manifest)
    result = forge(pg, database, backup_dir, settings, "drill", os.path.basename(path))
    assert result.returncode == 1, result.stdout + result.stderr
    verdicts = [line for line in result.stdout.splitlines() if line.split(":", 1)[0] in ("PASS", "FAIL")]
    assert len(verdicts) == 1 and verdicts[0].startswith(f"FAIL: {path}: "), result.stdout
    assert f"public.orders: {restored} rows restored, {restored + delta} in the snapshot" in verdicts[0]
    assert not pg.execute("SELECT 1 FROM pg_database WHERE datname <> %s AND starts_with(datname, %s)",
                          params=(database, f"{database}_"))


@pytest.mark.parametrize("delta", [1, -1], ids=["one-row-more", "one-row-fewer"])
def test_a_forced_restore_one_row_off_leaves_the_target_as_it_was(pg, made, backup_dir, delta):
    database, path, settings = made
    with pg.connect(database, superuser=False) as conn:
        conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1)")  # today's data, not the backup's
    before = table_counts(pg, database)
    manifest = manifest_of(path)
    manifest["snapshot_row_counts"]["public.customers"] += delta
    resign_manifest(path, manifest)
    result = forge(pg, database, backup_dir, settings, "restore", os.path.basename(path), database, "--force")
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = error_lines(result)
    assert "the restored copy does not match the backup's manifest: public.customers: " in line, line
    assert table_counts(pg, database) == before
    assert not pg.execute("SELECT 1 FROM pg_database WHERE datname <> %s AND starts_with(datname, %s)",
                          params=(database, f"{database}_"))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_flipped_bit_anywhere_fails_verify(pg, made, backup_dir, where):
    database, path, settings = made
    size = os.path.getsize(path)
    flip_byte(path, offset={"first": 0, "middle": size // 2, "last": size - 1}[where])
    result = forge(pg, database, backup_dir, settings, "verify", os.path.basename(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert error_lines(result) == [f"ERROR: {os.path.basename(path)}: checksum mismatch; the file is damaged or was "
                                   "changed after the backup"]


def test_a_passphrase_one_character_off_proves_nothing(pg, made, backup_dir, tmp_path):
    database, path, settings = made
    wrong = tmp_path / "one-off.pass"
    wrong.write_text(PASSPHRASE[:-1] + chr(ord(PASSPHRASE[-1]) + 1) + "\n")
    wrong.chmod(0o600)
    result = forge(pg, database, backup_dir, settings, "verify", os.path.basename(path), passphrase_file=str(wrong))
    assert result.returncode != 0, result.stdout + result.stderr
    [line] = error_lines(result)
    found = re.fullmatch(rf"ERROR: {re.escape(os.path.basename(path))}: wrong passphrase: the manifest was signed "
                         r"with key ([0-9a-f]{16}), this passphrase is key ([0-9a-f]{16}) \(after a key rotation, put "
                         r"the old passphrase in BACKUP_RETIRED_PASSPHRASES_FILE\)", line)
    assert found and found.group(1) != found.group(2), line


# -- the bytes proven are the bytes restored, on every format (a file cut short once proven)

def _restore_in_process(pg, backup_dir, path, database, target, log, **options):
    from forge.pgconn import PgSettings
    from forge.restore import RestoreOptions, Restorer

    settings = PgSettings(host=pg.host, port=pg.port, user=pg.app_user, password=pg.app_password)
    options.setdefault("require_encryption", False)
    engine = Restorer(RestoreOptions(backup_dir=backup_dir, passphrase_file=signing_passphrase_file(), **options),
                      settings, log=log)
    return engine.restore(engine.select(database, path), target, database=database)


def _cut_when_restoring(path):
    def log(line):
        if line.startswith("Restoring "):
            os.truncate(path, 100)
    return log


@pytest.mark.parametrize("fmt, jobs", [("plain-gzip", None), ("plain-zstd", None), ("custom", None), ("custom", 2)],
                         ids=["plain-gzip", "plain-zstd", "custom", "custom-jobs-2"])
def test_an_unencrypted_file_cut_short_once_proven_still_restores_what_was_proven(pg, sample_db, backup_dir, fmt,
                                                                                   jobs):
    """Unencrypted files are proven in full before a byte reaches the database, and only the
    copy proven is restored: whatever happens to the file afterwards cannot reach the target."""
    result = run_backup_script(pg, sample_db, backup_dir, dict(FORMATS[fmt]))
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    target = f"{sample_db[:40]}_copy"
    _restore_in_process(pg, backup_dir, path, sample_db, target, _cut_when_restoring(path), jobs=jobs)
    assert table_counts(pg, target) == table_counts(pg, sample_db)
    pg.drop_database(target)


@pytest.mark.parametrize("fmt", ["plain-gzip-encrypted", "plain-zstd-encrypted", "custom-encrypted"])
def test_an_encrypted_file_cut_short_while_it_streams_leaves_the_target_as_it_was(pg, sample_db, backup_dir, fmt):
    """An encrypted file is proven while it streams (one read): cut short, the restore fails at
    its end and the target it would have replaced is untouched."""
    from forge.errors import ForgeError

    settings = dict(FORMATS[fmt], BACKUP_PASSPHRASE_FILE=signing_passphrase_file())
    result = run_backup_script(pg, sample_db, backup_dir, settings)
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    before = table_counts(pg, sample_db)
    with pytest.raises(ForgeError) as caught:
        _restore_in_process(pg, backup_dir, path, sample_db, sample_db, _cut_when_restoring(path), force=True,
                            require_encryption=True)
    assert caught.value.message.endswith(f"{sample_db} is unchanged (3 tables, as before)"), caught.value.message
    assert table_counts(pg, sample_db) == before
