"""Off-site copies to a USB disk that really is a mounted file system: an ext4 image on a loop
device, mounted as the safe's disk would be. docs/offsite.md: to a USB path the copy is written
atomically and verified, and a path that is not on a mounted disk is refused, so a missing
disk never fills /."""

import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from helpers import REPO, backups_in, flip_byte, manifest_of, run_backup_script, signing_passphrase_file
from servers import load_sample_data

OFFSITE_SCRIPT = os.path.join(REPO, "scripts", "offsite_copy.sh")
FORGE = os.path.join(REPO, "scripts", "forge")


class UsbDisk:
    """A 64 MiB ext4 image, mounted on an empty directory of the root file system."""

    def __init__(self, image_dir):
        assert os.geteuid() == 0, "a USB disk is stood in for by a loop-mounted image, which needs root " \
                                  "(make test runs as root)"
        for tool in ("mkfs.ext4", "mount", "umount"):
            assert shutil.which(tool), f"{tool} is missing; make test installs it (e2fsprogs, mount)"
        # /var/tmp, not the test's own directory: an unplugged disk must leave an empty mount point on
        # the root file system itself, as /media/usb-safe would be.
        assert os.stat("/var/tmp").st_dev == os.stat("/").st_dev, "precondition: /var/tmp is on the root file system"
        self.image = os.path.join(image_dir, "usb.img")
        self.parent = tempfile.mkdtemp(prefix="forge-usb.", dir="/var/tmp")
        self.mountpoint = os.path.join(self.parent, "usb-safe")

    def create(self):
        os.mkdir(self.mountpoint)
        subprocess.run(["truncate", "-s", "64M", self.image], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", self.image], check=True, capture_output=True)
        self.mount()
        return self

    def mount(self):
        subprocess.run(["mount", "-o", "loop", self.image, self.mountpoint], check=True, capture_output=True)
        assert os.path.ismount(self.mountpoint)

    def unmount(self):
        subprocess.run(["umount", self.mountpoint], check=True, capture_output=True)

    def remove(self):
        try:
            if os.path.ismount(self.mountpoint):
                self.unmount()
        finally:
            shutil.rmtree(self.parent, ignore_errors=True)


@pytest.fixture
def usb(tmp_path):
    disk = UsbDisk(str(tmp_path))
    try:
        yield disk.create()
    finally:
        disk.remove()


@pytest.fixture
def encrypted_backup(pg, fresh_db, backup_dir, passphrase_file):
    load_sample_data(pg, fresh_db, customers=20, orders=300)
    result = run_backup_script(pg, fresh_db, backup_dir, {"BACKUP_PASSPHRASE_FILE": passphrase_file})
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    return fresh_db, path


def engine_env(database, backup_dir, tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "OFFSITE_", "PG"))}
    env.update({"BACKUP_CONFIG": "", "POSTGRES_DB": database, "BACKUP_DIR": backup_dir,
                "BACKUP_TEXTFILE_DIR": str(tmp_path), "DRILL_REPORT_DIR": str(tmp_path / "state"),
                "BACKUP_PASSPHRASE_FILE": signing_passphrase_file()})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def offsite(database, backup_dir, target, tmp_path):
    # OFFSITE_REQUIRE_MOUNT is on by default; said here so that the test does not depend on it.
    env = engine_env(database, backup_dir, tmp_path, OFFSITE_TARGET=target, OFFSITE_REQUIRE_MOUNT=1)
    return subprocess.run([OFFSITE_SCRIPT], env=env, capture_output=True, text=True, timeout=120)


def test_a_copy_on_a_mounted_usb_disk_is_the_backup_verified_private_and_survives_a_remount(
        usb, encrypted_backup, backup_dir, tmp_path):
    database, path = encrypted_backup
    name = os.path.basename(path)
    target = os.path.join(usb.mountpoint, "infer-forge")
    result = offsite(database, backup_dir, target, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == (f"Off-site copy OK: {database} -> {target}: 1 copied and verified, "
                                              "0 expired, 1 verified backup(s) there")
    assert sorted(os.listdir(target)) == sorted([name, name + ".manifest.json", name + ".sha256"])
    assert os.stat(os.path.join(target, name)).st_dev == os.stat(usb.mountpoint).st_dev != os.stat("/").st_dev
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(os.path.join(target, n)).st_mode) == 0o600 for n in os.listdir(target))

    # Read back from the device itself, not from the page cache of the write.
    usb.unmount()
    usb.mount()
    with open(os.path.join(target, name), "rb") as copy, open(path, "rb") as original:
        assert copy.read() == original.read()
    with open(os.path.join(target, name + ".manifest.json")) as handle:
        assert json.load(handle) == manifest_of(path)
    check = subprocess.run(["sha256sum", "-c", name + ".sha256"], cwd=target, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout == f"{name}: OK\n", check.stdout + check.stderr
    # The engine itself takes the disk's copy as a good backup: signed manifest, checksum of every byte.
    verify = subprocess.run([FORGE, "verify", "latest"], env=engine_env(database, target, tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads(verify.stdout)
    assert report["verdict"] == "VERIFIED" and report["checks"] == {"signature": "passed", "sha256": "passed"}


@pytest.mark.parametrize("on_the_disk", ["the-mount-point", "a-directory-on-it"])
def test_an_unplugged_usb_disk_is_refused_in_one_line_and_nothing_lands_on_the_root_file_system(
        usb, encrypted_backup, backup_dir, tmp_path, on_the_disk):
    database, _ = encrypted_backup
    usb.unmount()  # the disk is not plugged in: its mount point is an empty directory on /
    target = usb.mountpoint if on_the_disk == "the-mount-point" else os.path.join(usb.mountpoint, "infer-forge")
    result = offsite(database, backup_dir, target, tmp_path)
    assert result.returncode == 1
    assert result.stdout == (f"Off-site copy FAILED: {database} -> {target}: {target} is not on a mounted disk (it "
                             "would land on the root file system): mount the USB disk first, or set "
                             "OFFSITE_REQUIRE_MOUNT=0\n")
    assert result.stderr == ""
    assert os.listdir(usb.mountpoint) == []


def test_a_copy_that_does_not_match_its_manifest_never_stays_on_the_usb_disk(usb, encrypted_backup, backup_dir,
                                                                            tmp_path):
    database, path = encrypted_backup
    name = os.path.basename(path)
    flip_byte(path, offset=100)  # damaged on the host after its signed manifest was written; same size
    target = os.path.join(usb.mountpoint, "infer-forge")
    result = offsite(database, backup_dir, target, tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (f"Off-site copy FAILED: {database} -> {target}: the copy of {name} on "
                                              f"{target} does not match its manifest's sha256; it was removed there, "
                                              "nothing else changed")
    # Neither the damaged copy nor a manifest that would call it verified.
    assert os.listdir(target) == []


def test_an_unplugged_usb_disk_whose_mount_point_is_on_the_backups_disk_is_refused(pg, fresh_db, usb, tmp_path,
                                                                                   passphrase_file):
    """The backups on a data disk of their own (here the loop-mounted image stands in for it), and
    the USB disk's mount point a directory on that same disk: unplugged, a copy would land beside
    the backups, which is no off-site copy at all."""
    load_sample_data(pg, fresh_db, customers=5, orders=20)
    backup_dir = os.path.join(usb.mountpoint, "backups")
    result = run_backup_script(pg, fresh_db, backup_dir, {"BACKUP_PASSPHRASE_FILE": passphrase_file})
    assert result.returncode == 0, result.stderr
    mountpoint = os.path.join(usb.mountpoint, "usb-safe")
    os.mkdir(mountpoint)
    target = os.path.join(mountpoint, "infer-forge")
    result = offsite(fresh_db, backup_dir, target, tmp_path)
    assert result.returncode == 1
    assert result.stdout == (f"Off-site copy FAILED: {fresh_db} -> {target}: {target} is on the same file system "
                             f"as the backups ({usb.mountpoint}), so no USB disk is mounted there: mount the USB "
                             "disk first, or set OFFSITE_REQUIRE_MOUNT=0\n")
    assert os.listdir(mountpoint) == []
