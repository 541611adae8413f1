"""The engine takes the passphrase as a value (a module's vault value) as well as by its file.

A value never touches a file, not even a temporary or in-memory one; it must act exactly as
the same passphrase read from the runbook's file: the same openssl-readable encryption, the
same manifest signing key, the same trust when the other form reads it back.
"""

import os
import subprocess

import pytest

from forge.backup import BackupOptions, BackupRunner
from forge.drill import DrillOptions, run_action
from forge.errors import ForgeError
from forge.offsite import OffsiteCopy, OffsiteOptions
from forge.pgconn import PgSettings
from forge.restore import RestoreOptions

from helpers import PASSPHRASE, manifest_of, signing_passphrase_file, take_backup
from servers import table_counts


def settings(pg, database):
    return PgSettings(host=pg.host, port=pg.port, user=pg.app_user, password=pg.app_password, database=database)


def open_fds():
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


def test_a_backup_encrypted_with_the_value_reads_with_the_runbooks_openssl_and_is_signed_as_by_the_file(
        pg, sample_db, tmp_path):
    backup_dir = str(tmp_path / "backups")
    by_file = take_backup(pg, sample_db, backup_dir, backup_passphrase_file=signing_passphrase_file())
    before = open_fds()
    result = BackupRunner(BackupOptions(backup_dir=backup_dir, passphrase=PASSPHRASE),
                          settings(pg, sample_db)).run()
    assert not [fd for fd in open_fds() - before if "passphrase" in fd]
    path = result["path"]
    assert manifest_of(path)["signature"]["key_id"] == manifest_of(by_file)["signature"]["key_id"]
    # The runbook's manual restore command, with the passphrase from its file.
    plain = subprocess.run(["openssl", "enc", "-d", "-aes-256-cbc", "-pbkdf2", "-iter", "10000", "-in", path,
                            "-pass", f"file:{signing_passphrase_file()}"], capture_output=True, check=True).stdout
    assert subprocess.run(["gunzip", "-t"], input=plain, capture_output=True).returncode == 0


def test_a_restore_and_a_drill_given_the_value_trust_and_restore_what_the_file_signed(pg, sample_db, tmp_path):
    backup_dir = str(tmp_path / "backups")
    path = take_backup(pg, sample_db, backup_dir, backup_passphrase_file=signing_passphrase_file())
    options = RestoreOptions(backup_dir=backup_dir, passphrase=PASSPHRASE)
    assert options.require_encryption is True  # as with a passphrase file
    report = run_action("verify", options, settings(pg, sample_db), database=sample_db)
    assert report["verdict"] == "VERIFIED" and report["backup"] == path
    drill = run_action("drill", options, settings(pg, sample_db), database=sample_db,
                       drill=DrillOptions(database=sample_db))
    assert drill["passed"] is True and drill["verdict"] == "PASS", drill["reason"]
    target = sample_db + "_copy"
    try:
        restored = run_action("restore", options, settings(pg, sample_db), database=sample_db, target=target)
        assert restored["target_state"] == "created"
        assert table_counts(pg, target) == table_counts(pg, sample_db)
    finally:
        pg.drop_database(target)


def test_a_wrong_value_is_refused_as_a_wrong_passphrase_and_changes_nothing(pg, sample_db, tmp_path):
    backup_dir = str(tmp_path / "backups")
    take_backup(pg, sample_db, backup_dir, backup_passphrase_file=signing_passphrase_file())
    options = RestoreOptions(backup_dir=backup_dir, passphrase="not the passphrase")
    with pytest.raises(ForgeError, match="no good backup"):
        run_action("restore", options, settings(pg, sample_db), database=sample_db, target=sample_db + "_copy")
    with pg.connect() as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (sample_db + "_copy",)).fetchone() is None


def test_offsite_takes_the_value_for_its_trust_check(tmp_path):
    options = OffsiteOptions(backup_dir=str(tmp_path), target=str(tmp_path / "usb"), database="infer_forge",
                             passphrase=PASSPHRASE, require_mount=False)
    assert OffsiteCopy(options).plan(str(tmp_path / "usb"), []) is not None
    without = OffsiteOptions(backup_dir=str(tmp_path), target=str(tmp_path / "usb"), database="infer_forge",
                             require_mount=False)
    with pytest.raises(ForgeError, match="off-site copies need the backup passphrase"):
        OffsiteCopy(without).plan(str(tmp_path / "usb"), [])


def test_an_empty_value_falls_back_to_the_file_and_with_neither_encryption_is_refused(tmp_path):
    assert BackupOptions(backup_dir=str(tmp_path), passphrase="").encrypt is False
    with pytest.raises(ForgeError, match="encryption is on but no passphrase file is configured"):
        BackupOptions(backup_dir=str(tmp_path), passphrase="", encrypt=True).validate()


@pytest.mark.parametrize("door", ["value", "file"])
def test_a_new_backup_with_a_passphrase_under_20_characters_is_refused_and_writes_nothing(
        pg, sample_db, tmp_path, door):
    """A short passphrase is guessed offline from any stolen copy, whatever the KDF: no new
    backup is written with one. Reading old backups made with one still works (restores)."""
    backup_dir = str(tmp_path / "backups")
    short = "nineteen characters"[:19]
    if door == "file":
        path = tmp_path / "short.pass"
        path.write_text(short + "\n")
        path.chmod(0o600)
        options = BackupOptions(backup_dir=backup_dir, passphrase_file=str(path))
    else:
        options = BackupOptions(backup_dir=backup_dir, passphrase=short)
    with pytest.raises(ForgeError) as caught:
        BackupRunner(options, settings(pg, sample_db)).run()
    assert caught.value.message == ("the backup passphrase has 19 characters; a new backup needs at least 20 (make "
                                    "one with: openssl rand -base64 48); nothing was written")
    assert not os.path.exists(backup_dir) or os.listdir(backup_dir) == []
