"""Root never works inside a directory that belongs to the backup user.

The backup user can write into its own backup directory, so it can swap any
file there for a symlink at any moment. Whatever root does by path in that
directory (chown, chmod, open) can be redirected to a file of root's. So the
engine, started as root (an ad-hoc playbook, an operator's sudo), becomes the
directory's owner before it touches anything, and every tool it runs (pg_dump,
psql, pg_restore) runs as that user too. These tests use the real second user
`nobody` and a real PostgreSQL; they need root, as `make test` runs.
"""

import os
import pwd
import shutil
import stat
import subprocess
import tempfile

import pytest

from helpers import PASSPHRASE, REPO, backups_in, run_backup_script
from servers import load_sample_data

NOBODY = pwd.getpwnam("nobody")
RESTORE_SCRIPT = os.path.join(REPO, "scripts", "restore_db.sh")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it runs the engine as root against another "
                                                          "user's directory (make test runs as root)")


@pytest.fixture
def owned(pg, fresh_db):
    """A backup directory and passphrase file that belong to `nobody`, as /backups and
    /etc/infer-forge/backup.pass belong to `infer`, and a root-owned canary beside them."""
    load_sample_data(pg, fresh_db, customers=10, orders=50)
    base = tempfile.mkdtemp(prefix="forge-owned.", dir="/var/tmp")
    os.chmod(base, 0o755)  # noqa: S103 - the second user must reach what lies inside
    backup_dir = os.path.join(base, "backups")
    os.mkdir(backup_dir, 0o700)
    os.chown(backup_dir, NOBODY.pw_uid, NOBODY.pw_gid)
    passphrase = os.path.join(base, "backup.pass")
    with open(passphrase, "w") as handle:
        handle.write(PASSPHRASE + "\n")
    os.chmod(passphrase, 0o600)
    os.chown(passphrase, NOBODY.pw_uid, NOBODY.pw_gid)
    canary = os.path.join(base, "root-only-canary")
    with open(canary, "w") as handle:
        handle.write("root's secret\n")
    os.chmod(canary, 0o600)
    yield {"db": fresh_db, "base": base, "dir": backup_dir, "passphrase": passphrase, "canary": canary}
    shutil.rmtree(base, ignore_errors=True)


def recording_wrapper(base, tool, record):
    """A stand-in for `tool`, in a directory of its own (put it first on PATH), that writes
    the uid it runs as to `record`, then runs the real one. Returns the stand-in's path."""
    directory = os.path.join(base, "bin")
    os.makedirs(directory, mode=0o755, exist_ok=True)
    with open(record, "a"):
        pass
    os.chmod(record, 0o666)  # noqa: S103 - whoever runs the tool must be able to say so
    path = os.path.join(directory, tool)
    with open(path, "w") as handle:
        handle.write(f"#!/bin/sh\nid -u >> {record}\nexec {shutil.which(tool)} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def assert_canary_untouched(canary):
    info = os.lstat(canary)
    assert stat.S_ISREG(info.st_mode)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600)
    with open(canary) as handle:
        assert handle.read() == "root's secret\n"


def test_a_symlink_planted_mid_backup_never_hands_a_root_file_to_the_backup_user(pg, owned):
    """The review's race, made deterministic: while pg_dump runs, the directory's owner
    replaces the partial file with a symlink to a root-owned file. A root engine that
    chowns by path gives that file away; the engine must never act as root in here."""
    plant = f"for p in {owned['dir']}/.*.partial-*; do ln -sfn {owned['canary']} \"$p\"; done"
    as_owner = f"setpriv --reuid={NOBODY.pw_uid} --regid={NOBODY.pw_gid} --clear-groups"
    attacker = os.path.join(owned["base"], "pg_dump-attacker")
    with open(attacker, "w") as handle:
        handle.write(
            "#!/bin/sh\n"
            "# The backup user's move, whoever this script runs as: swap the partial for a link.\n"
            f"if [ \"$(id -u)\" = 0 ]; then {as_owner} /bin/sh -c '{plant}'; else /bin/sh -c '{plant}'; fi\n"
            f"exec {shutil.which('pg_dump')} \"$@\"\n")
    os.chmod(attacker, 0o755)
    run_backup_script(pg, owned["db"], owned["dir"], {"BACKUP_PASSPHRASE_FILE": owned["passphrase"],
                                                      "BACKUP_ENCRYPT": "0", "BACKUP_DUMP_COMMAND": attacker})
    assert_canary_untouched(owned["canary"])


def test_a_root_backup_runs_pg_dump_and_writes_every_file_as_the_directory_owner(pg, owned):
    record = os.path.join(owned["base"], "uids")
    wrapper = recording_wrapper(owned["base"], "pg_dump", record)
    result = run_backup_script(pg, owned["db"], owned["dir"], {"BACKUP_PASSPHRASE_FILE": owned["passphrase"],
                                                               "BACKUP_DUMP_COMMAND": wrapper})
    assert result.returncode == 0, result.stderr
    assert f"running as nobody, the owner of {owned['dir']}" in result.stderr
    with open(record) as handle:
        assert set(handle.read().split()) == {str(NOBODY.pw_uid)}
    names = os.listdir(owned["dir"])
    assert any(name.endswith(".sql.gz.enc") for name in names)
    for name in names:
        info = os.lstat(os.path.join(owned["dir"], name))
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (NOBODY.pw_uid, 0o600), name
    # The scheduled run as the owner finds everything usable: lock, manifests, retention.
    second = run_backup_script(pg, owned["db"], owned["dir"], {"BACKUP_PASSPHRASE_FILE": owned["passphrase"]},
                               user="nobody")
    assert second.returncode == 0, second.stderr
    assert len(backups_in(owned["dir"])) == 2


def restore_env(pg, owned, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "PG", "DRILL_"))}
    env.update(pg.app_env(owned["db"]))
    env.update({"BACKUP_DIR": owned["dir"], "BACKUP_CONFIG": "", "BACKUP_PASSPHRASE_FILE": owned["passphrase"]})
    env.update(extra)
    return env


def test_a_root_drill_runs_psql_as_the_directory_owner(pg, owned):
    """Restores read files the backup user could have planted: psql must not run as root."""
    assert run_backup_script(pg, owned["db"], owned["dir"], {"BACKUP_PASSPHRASE_FILE": owned["passphrase"]},
                             user="nobody").returncode == 0
    record = os.path.join(owned["base"], "uids")
    wrapper = recording_wrapper(owned["base"], "psql", record)
    path = os.path.dirname(wrapper) + ":" + os.environ["PATH"]
    reports = os.path.join(owned["base"], "reports")
    os.mkdir(reports, 0o750)
    os.chown(reports, NOBODY.pw_uid, NOBODY.pw_gid)
    result = subprocess.run([RESTORE_SCRIPT, "drill"], capture_output=True, text=True, timeout=300,
                            env=restore_env(pg, owned, PATH=path, DRILL_REPORT_DIR=reports))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS" in result.stdout
    with open(record) as handle:
        uids = set(handle.read().split())
    assert uids == {str(NOBODY.pw_uid)}
    for name in os.listdir(reports):
        assert os.lstat(os.path.join(reports, name)).st_uid == NOBODY.pw_uid, name


def test_the_modules_run_the_engine_as_the_directory_owner(pg, owned, run_module):
    """forge_backup started as root (an ad-hoc playbook) writes nothing as root in there."""
    record = os.path.join(owned["base"], "uids")
    wrapper = recording_wrapper(owned["base"], "pg_dump", record)
    result = run_module("forge_backup", {
        "database": owned["db"], "backup_dir": owned["dir"], "login_host": pg.host, "port": pg.port,
        "login_user": pg.app_user, "login_password": pg.app_password, "passphrase_file": owned["passphrase"],
        "encrypt": True, "dump_command": [wrapper], "textfile_dir": ""})
    assert not result.get("failed"), result.get("msg")
    with open(record) as handle:
        assert set(handle.read().split()) == {str(NOBODY.pw_uid)}
    for name in os.listdir(owned["dir"]):
        assert os.lstat(os.path.join(owned["dir"], name)).st_uid == NOBODY.pw_uid, name
    verified = run_module("forge_restore", {"mode": "verify", "database": owned["db"], "backup_dir": owned["dir"],
                                            "passphrase_file": owned["passphrase"]})
    assert not verified.get("failed"), verified.get("msg")
    assert verified["verdict"] == "VERIFIED"


def test_root_refuses_a_backup_directory_whose_owner_has_no_account(pg, owned):
    os.chown(owned["dir"], 54321, 54321)
    result = run_backup_script(pg, owned["db"], owned["dir"], {"BACKUP_PASSPHRASE_FILE": owned["passphrase"]})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"ERROR: {owned['dir']} belongs to uid 54321, which has no account here; refusing to work in it as "
        "root (chown it to the backup user)")
    assert os.listdir(owned["dir"]) == []


def test_root_never_imports_an_engine_planted_in_the_current_directory(pg, owned):
    """`sudo backup_db.sh` from inside /backups: python -m would put the current
    directory first on the import path, before any privilege is dropped."""
    planted = os.path.join(owned["dir"], "forge")
    os.mkdir(planted)
    marker = os.path.join(owned["base"], "planted-code-ran")
    with open(os.path.join(planted, "__init__.py"), "w") as handle:
        handle.write(f"open({marker!r}, 'w').write('ran')\n")
    open(os.path.join(planted, "cli.py"), "w").close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_"))}
    result = subprocess.run([os.path.join(REPO, "scripts", "backup_db.sh"), "--help"], cwd=owned["dir"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: backup_db.sh" in result.stdout
    assert not os.path.exists(marker)


def test_root_closes_its_own_loose_directory_first_and_follows_nothing_planted_in_it(pg, owned):
    """root:root 2775 (the backup user's group may write): closed to 0700 before the work,
    and a link planted beforehand under a backup's name is never followed nor removed."""
    shared = os.path.join(owned["base"], "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o2775)  # noqa: S103 - the loose directory under test
    planted = os.path.join(shared, f"{owned['db']}_20200101_000000.sql.gz")
    os.symlink(owned["canary"], planted)
    result = run_backup_script(pg, owned["db"], shared, {"BACKUP_PASSPHRASE_FILE": owned["passphrase"]})
    assert result.returncode == 0, result.stderr
    assert f"NOTE: tightened {shared} from 2775 to 0700 before working in it as root" in result.stderr
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o700
    assert os.path.islink(planted)
    assert_canary_untouched(owned["canary"])


def _config_file(owned, directory, owner, mode, record):
    """A config file in ``directory`` whose BACKUP_DUMP_COMMAND records the uid it runs as."""
    wrapper = recording_wrapper(owned["base"], "pg_dump", record)
    path = os.path.join(directory, "backup-owned.env")
    with open(path, "w") as handle:
        handle.write(f"BACKUP_DUMP_COMMAND={wrapper}\nBACKUP_DIR={owned['dir']}\n"
                     f"BACKUP_PASSPHRASE_FILE={owned['passphrase']}\n")
    os.chown(path, owner.pw_uid, owner.pw_gid)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("case", ["owned-by-the-backup-user", "group-writable", "in-the-backup-users-directory"])
def test_root_never_takes_a_setting_from_a_file_another_account_can_write(pg, owned, case):
    """The review's finding: /etc/infer-forge/backup-<db>.env belonged to the backup user and
    root read it before dropping privileges, so its BACKUP_DUMP_COMMAND ran as root under the
    runbook's `sudo backup_db.sh`. Root now refuses such a file in one line and runs nothing."""
    record = os.path.join(owned["base"], "uids")
    root = pwd.getpwuid(0)
    directory = owned["base"]
    if case == "in-the-backup-users-directory":
        directory = os.path.join(owned["base"], "infer-etc")
        os.mkdir(directory, 0o755)
        os.chown(directory, NOBODY.pw_uid, NOBODY.pw_gid)
    owner, mode = {"owned-by-the-backup-user": (NOBODY, 0o600), "group-writable": (root, 0o660),
                   "in-the-backup-users-directory": (root, 0o640)}[case]
    config = _config_file(owned, directory, owner, mode, record)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "PG"))}
    env.update(pg.app_env(owned["db"]))
    env["BACKUP_CONFIG"] = config
    result = subprocess.run([os.path.join(REPO, "scripts", "backup_db.sh")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ERROR: config file {config} ")
    assert "root reads settings only from a file and directory that root alone can write" in last
    with open(record) as handle:
        assert handle.read() == ""
    assert os.listdir(owned["dir"]) == []


def test_root_takes_its_settings_from_a_root_owned_config_readable_by_the_backup_group(pg, owned):
    """What the backup role writes (root:<backup group> 0640 in root's 0750 directory) still works
    for root, which then runs the dump command as the backup directory's owner."""
    record = os.path.join(owned["base"], "uids")
    config = _config_file(owned, owned["base"], pwd.getpwuid(0), 0o640, record)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "PG"))}
    env.update(pg.app_env(owned["db"]))
    env.update({"BACKUP_CONFIG": config, "BACKUP_ENCRYPT": "0"})
    result = subprocess.run([os.path.join(REPO, "scripts", "backup_db.sh")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    with open(record) as handle:
        assert set(handle.read().split()) == {str(NOBODY.pw_uid)}
