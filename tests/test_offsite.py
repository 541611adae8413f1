"""Off-site copies (scripts/offsite_copy.sh and the forge_offsite module) to a real
sshd on loopback and to a local directory standing in for the USB disk."""

import datetime
import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from helpers import (
    REPO,
    SentryStub,
    backups_in,
    flip_byte,
    manifest_of,
    resign_manifest,
    run_backup_script,
    signing_passphrase_file,
)
from servers import load_sample_data

OFFSITE_SCRIPT = os.path.join(REPO, "scripts", "offsite_copy.sh")


@pytest.fixture
def encrypted_backups(pg, fresh_db, backup_dir, passphrase_file):
    """One real encrypted backup plus two older copies of it under older names."""
    load_sample_data(pg, fresh_db, customers=20, orders=300)
    result = run_backup_script(pg, fresh_db, backup_dir, {"BACKUP_PASSPHRASE_FILE": passphrase_file})
    assert result.returncode == 0, result.stderr
    [newest] = backups_in(backup_dir)
    names = [os.path.basename(newest)]
    for days_ago in (3, 40):
        stamp = (datetime.datetime.now() - datetime.timedelta(days=days_ago)).strftime("%Y%m%d_%H%M%S")
        names.append(clone_backup(newest, f"{fresh_db}_{stamp}.sql.gz.enc"))
    return fresh_db, names


def clone_backup(path, name):
    """A copy of a backup under another name, with its manifest and checksum file renamed to match."""
    directory = os.path.dirname(path)
    shutil.copy(path, os.path.join(directory, name))
    manifest = manifest_of(path)
    manifest["file"] = name
    resign_manifest(os.path.join(directory, name), manifest)
    with open(os.path.join(directory, name + ".sha256"), "w") as handle:
        handle.write(f"{manifest['sha256']}  {name}\n")
    return name


def offsite(database, backup_dir, target, tmp_path, *args, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "OFFSITE_"))}
    env.update({"BACKUP_CONFIG": "", "POSTGRES_DB": database, "BACKUP_DIR": backup_dir, "OFFSITE_TARGET": target,
                "OFFSITE_REQUIRE_MOUNT": "0", "BACKUP_TEXTFILE_DIR": str(tmp_path),
                "DRILL_REPORT_DIR": str(tmp_path / "state"), "BACKUP_PASSPHRASE_FILE": signing_passphrase_file()})
    env.update({k: str(v) for k, v in extra.items()})
    return subprocess.run([OFFSITE_SCRIPT, *args], env=env, capture_output=True, text=True, timeout=120)


def ssh_extra(sshd):
    return {"OFFSITE_SSH_PORT": sshd.port, "OFFSITE_SSH_KEY": sshd.client_key, "OFFSITE_KNOWN_HOSTS": sshd.known_hosts}


def metric(tmp_path, database, name):
    with open(tmp_path / f"infer_forge_offsite_{database}.prom") as handle:
        for line in handle:
            if line.startswith(f"infer_forge_offsite_{name}{{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def gated_nas(sshd, tmp_path, name="nas"):
    """The NAS directory, made as the offsite_target role makes it, with the client key
    bound to the NAS gate for it."""
    nas = tmp_path / name / "infer-forge"
    nas.mkdir(parents=True, mode=0o700)
    sshd.gate(nas, tmp_path / name / "state")
    return nas


def test_copies_to_the_nas_over_ssh_verifies_and_keeps_files_private(sshd, encrypted_backups, backup_dir, tmp_path):
    database, names = encrypted_backups
    nas = gated_nas(sshd, tmp_path)
    result = offsite(database, backup_dir, f"root@127.0.0.1:{nas}", tmp_path, **ssh_extra(sshd))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Off-site copy OK" in result.stdout and "3 copied and verified" in result.stdout
    for name in names:
        copy = nas / name
        assert copy.read_bytes() == open(os.path.join(backup_dir, name), "rb").read()
        assert (nas / (name + ".manifest.json")).exists() and (nas / (name + ".sha256")).exists()
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        check = subprocess.run(["sha256sum", "-c", name + ".sha256"], cwd=nas, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
    assert metric(tmp_path, database, "last_run_success") == 1
    assert metric(tmp_path, database, "files_copied") == 3
    assert metric(tmp_path, database, "far_verify_success") == 1
    assert metric(tmp_path, database, "far_verified_timestamp_seconds") > 0
    state = json.loads((tmp_path / "state" / f"offsite_{database}.json").read_text())
    assert state["verified"] is True and state["last_success"] > 0
    assert state["receipt"]["copies"] == 3 and state["receipt"]["ok"] is True

    again = offsite(database, backup_dir, f"root@127.0.0.1:{nas}", tmp_path, **ssh_extra(sshd))
    assert again.returncode == 0 and "0 copied and verified" in again.stdout, again.stdout


def test_a_copy_that_does_not_match_its_manifest_is_quarantined_there_and_fails(
        sshd, encrypted_backups, backup_dir, tmp_path):
    database, names = encrypted_backups
    # The file is damaged after its (signed) manifest was written: same size, one byte flipped.
    flip_byte(os.path.join(backup_dir, names[0]), offset=100)
    nas = gated_nas(sshd, tmp_path)
    result = offsite(database, backup_dir, f"root@127.0.0.1:{nas}", tmp_path, **ssh_extra(sshd))
    assert result.returncode == 1
    assert (f"the NAS refused the copy of {names[0]} (sha256 does not match its manifest) and moved it to its "
            "quarantine; nothing else changed") in result.stdout
    assert not (nas / names[0]).exists() and not (nas / (names[0] + ".manifest.json")).exists()
    assert any(n.startswith(names[0] + ".2") for n in os.listdir(tmp_path / "nas" / "state" / "quarantine"))
    assert metric(tmp_path, database, "last_run_success") == 0
    assert metric(tmp_path, database, "last_success_timestamp_seconds") is None


def test_an_unknown_host_key_is_refused(sshd, encrypted_backups, backup_dir, tmp_path):
    database, _ = encrypted_backups
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    extra = dict(ssh_extra(sshd), OFFSITE_KNOWN_HOSTS=empty_known_hosts)
    result = offsite(database, backup_dir, f"root@127.0.0.1:{tmp_path / 'nas'}", tmp_path, **extra)
    assert result.returncode == 1
    assert "ssh to root@127.0.0.1 failed while reading its last receipt: Host key verification failed." \
        in result.stdout
    assert not (tmp_path / "nas").exists()


def test_retention_on_the_target_removes_only_old_copies_beyond_min_keep(encrypted_backups, backup_dir, tmp_path):
    database, names = encrypted_backups
    usb = tmp_path / "usb"
    assert offsite(database, backup_dir, str(usb), tmp_path, OFFSITE_MIN_KEEP=10).returncode == 0
    stranger = usb / "notes.txt"
    stranger.write_text("not ours")
    for name in names[1:]:  # the old clones leave the host; only the target still has them
        for suffix in ("", ".manifest.json", ".sha256"):
            os.unlink(os.path.join(backup_dir, name + suffix))
    result = offsite(database, backup_dir, str(usb), tmp_path, OFFSITE_MIN_KEEP=2, OFFSITE_RETENTION_DAYS=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 expired, 2 verified backup(s) there" in result.stdout
    remaining = sorted(p.name for p in usb.iterdir())
    assert remaining == sorted([names[0], names[0] + ".manifest.json", names[0] + ".sha256",
                                names[1], names[1] + ".manifest.json", names[1] + ".sha256", "notes.txt"])


def test_unencrypted_backups_never_leave_the_host(pg, fresh_db, backup_dir, tmp_path):
    load_sample_data(pg, fresh_db, customers=5, orders=20)
    assert run_backup_script(pg, fresh_db, backup_dir).returncode == 0
    [plain] = backups_in(backup_dir)
    usb = tmp_path / "usb"
    result = offsite(fresh_db, backup_dir, str(usb), tmp_path)
    assert result.returncode == 1
    assert f"refusing to copy unencrypted backup {os.path.basename(plain)} off-site" in result.stdout
    assert not usb.exists() or not any(usb.iterdir())
    # Named .enc is not enough: the bytes must be openssl's.
    disguised = clone_backup(plain, f"{fresh_db}_20200101_000000.sql.gz.enc")
    os.unlink(plain)
    result = offsite(fresh_db, backup_dir, str(usb), tmp_path)
    assert f"refusing to copy unencrypted backup {disguised} off-site" in result.stdout
    assert not any(usb.iterdir())


def test_with_skip_unencrypted_only_the_encrypted_backups_leave_and_the_others_are_named(
        pg, encrypted_backups, backup_dir, tmp_path):
    """OFFSITE_SKIP_UNENCRYPTED=1 (the option's other value): the run passes, copies only what is
    encrypted by its bytes, and names what stayed. The plan is the same for the NAS and USB."""
    database, names = encrypted_backups
    assert run_backup_script(pg, database, backup_dir, {"BACKUP_ENCRYPT": "0"}).returncode == 0
    [plain] = [p for p in backups_in(backup_dir) if p.endswith(".sql.gz")]
    disguised = clone_backup(plain, f"{database}_20200101_000000.sql.gz.enc")
    usb = tmp_path / "usb"
    result = offsite(database, backup_dir, str(usb), tmp_path, OFFSITE_SKIP_UNENCRYPTED=1)
    assert result.returncode == 0, result.stdout + result.stderr
    copied = sorted(p.name for p in usb.iterdir())
    assert copied == sorted(n + s for n in names for s in ("", ".manifest.json", ".sha256"))
    for name in names:
        assert (usb / name).read_bytes()[:8] == b"Salted__"
    assert os.path.basename(plain) not in copied and disguised not in copied
    skipped = sorted([os.path.basename(plain), disguised], reverse=True)  # newest first, as the plan lists them
    assert f"; 2 unencrypted kept on this host ({', '.join(skipped)})" in result.stdout, result.stdout


@pytest.fixture
def not_a_mount():
    """A directory of its own on the root file system, where an unplugged disk's mount point would be."""
    path = tempfile.mkdtemp(prefix="forge-not-a-mount.", dir="/var/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_usb_path_must_be_a_mounted_disk(encrypted_backups, backup_dir, tmp_path, not_a_mount):
    database, _ = encrypted_backups
    target = os.path.join(not_a_mount, "infer-forge")
    assert os.stat("/var/tmp").st_dev == os.stat("/").st_dev, "precondition: /var/tmp is on the root file system"
    result = offsite(database, backup_dir, target, tmp_path, OFFSITE_REQUIRE_MOUNT=1)
    assert result.returncode == 1
    assert f"{target} is not on a mounted disk" in result.stdout
    assert not os.path.exists(target)


def test_module_check_mode_plans_without_copying(run_module, encrypted_backups, backup_dir, tmp_path):
    database, names = encrypted_backups
    usb = tmp_path / "usb"
    args = {"database": database, "backup_dir": backup_dir, "target": str(usb), "require_mount": False,
            "passphrase_file": signing_passphrase_file()}
    planned = run_module("forge_offsite", args, check=True)
    assert planned["changed"] is True
    assert sorted(planned["copied"]) == sorted(names)
    assert not usb.exists()
    done = run_module("forge_offsite", args)
    assert done["changed"] is True and done["verified"] is True and done["remote_backups"] == 3
    again = run_module("forge_offsite", args)
    assert again["changed"] is False and again["copied"] == []


def test_module_fails_with_one_line_for_a_bad_target(run_module, encrypted_backups, backup_dir):
    database, _ = encrypted_backups
    result = run_module("forge_offsite", {"database": database, "backup_dir": backup_dir, "target": "nas:relative"})
    assert result["failed"] is True
    assert result["msg"].endswith("must be user@host:/absolute/path or an absolute path")


def test_a_failed_run_keeps_the_time_of_the_last_verified_copy(encrypted_backups, backup_dir, tmp_path):
    database, _ = encrypted_backups
    assert offsite(database, backup_dir, str(tmp_path / "usb"), tmp_path).returncode == 0
    last_success = metric(tmp_path, database, "last_success_timestamp_seconds")
    assert last_success is not None
    failed = offsite(database, backup_dir, "nas:relative/path", tmp_path)
    assert failed.returncode == 1 and "must be user@host:/absolute/path" in failed.stdout
    assert metric(tmp_path, database, "last_run_success") == 0
    assert metric(tmp_path, database, "last_success_timestamp_seconds") == last_success
    state = json.loads((tmp_path / "state" / f"offsite_{database}.json").read_text())
    assert state["passed"] is False and state["last_success"] == pytest.approx(last_success)


def test_a_failed_offsite_copy_is_reported_to_sentry(encrypted_backups, backup_dir, tmp_path, not_a_mount):
    database, _ = encrypted_backups
    stub = SentryStub()
    try:
        result = offsite(database, backup_dir, os.path.join(not_a_mount, "x"), tmp_path, OFFSITE_REQUIRE_MOUNT=1,
                         SENTRY_DSN=stub.dsn(), ENVIRONMENT="production")
    finally:
        stub.close()
    assert result.returncode == 1
    [event] = stub.events()
    assert event["tags"] == {"component": "offsite-copy", "database": database, "host": os.uname().nodename}
    assert event["environment"] == "production"
    assert "is not on a mounted disk" in event["message"]["formatted"]
