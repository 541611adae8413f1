"""The promises through the doors other than the script: the forge_restore module and
playbooks/restore.yml.

tests/test_boundaries.py holds each promise on every format through scripts/forge, the
command restore_db.sh and cron run. A door has code of its own between the user and the
engine (the module maps its options, the playbook its variables and defaults), and a slip
there breaks the promise for that door alone: a default that allows unverified restores, an
option dropped on its way to the engine. These run each door end to end against the real
PostgreSQL of the tests; tests/guarantees.py names them in the matrix's door cells.
"""

import json
import os
import subprocess
import time

import pytest
from test_playbooks_check_mode import playbook
from test_restore import restore_args
from test_restore_playbook import all_databases, tasks_run

from helpers import (
    PASSPHRASE,
    REPO,
    backups_in,
    flip_byte,
    manifest_of,
    resign_manifest,
    run_backup_script,
    runbook_backup,
    signing_passphrase_file,
)
from servers import load_sample_data, table_counts


def backed_up(pg, database, backup_dir, **settings):
    """One backup of ``database`` by the script; its path."""
    before = set(backups_in(backup_dir)) if os.path.isdir(backup_dir) else set()
    result = run_backup_script(pg, database, backup_dir, settings)
    assert result.returncode == 0, result.stderr
    [path] = set(backups_in(backup_dir)) - before
    return path


class Scene:
    """A database of 100 orders backed up by the script, and a target that holds other data."""

    def __init__(self, database, backup, target, kept, databases):
        self.database, self.backup, self.target, self.kept, self.databases = database, backup, target, kept, databases

    def one_row_off(self, delta):
        manifest = manifest_of(self.backup)
        manifest["snapshot_row_counts"]["public.orders"] += delta
        resign_manifest(self.backup, manifest)

    def untouched(self, pg):
        """The target as it was, and no database made or renamed away beside it."""
        return table_counts(pg, self.target) == self.kept and all_databases(pg) == self.databases


@pytest.fixture
def scene(pg, fresh_db, backup_dir):
    load_sample_data(pg, fresh_db, customers=20, orders=100)
    backup = backed_up(pg, fresh_db, backup_dir)
    target = f"{fresh_db[:40]}_tgt"
    pg.create_database(target)
    pg.execute("CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1), (2), (3)", database=target)
    yield Scene(fresh_db, backup, target, {"public.keep_me": 3}, all_databases(pg))
    pg.drop_database(target)


def encrypted_then_unencrypted(pg, database, backup_dir):
    """An encrypted backup, then a newer unencrypted one; their paths."""
    load_sample_data(pg, database, customers=20, orders=100)
    encrypted = backed_up(pg, database, backup_dir, BACKUP_ENCRYPT="1")
    time.sleep(1.1)  # names carry the second: the unencrypted one is the newer
    unencrypted = backed_up(pg, database, backup_dir, BACKUP_ENCRYPT="0")
    assert sorted([encrypted, unencrypted]) == [encrypted, unencrypted]
    return encrypted, unencrypted


def restore_playbook(pg, database, tmp_path, backup_dir, target, **extra_vars):
    return playbook("restore.yml", pg, database, tmp_path, backup_dir, check=False, extra_vars=dict(
        backup_restore_target=target, backup_restore_force=True, backup_restore_confirm=target, **extra_vars))


# -- the module door -------------------------------------------------------------------------------

def test_the_module_refuses_a_forced_restore_one_row_off_and_the_target_stays_as_it_was(
        pg, scene, backup_dir, run_module):
    scene.one_row_off(-1)
    result = run_module("forge_restore", restore_args(pg, backup_dir, mode="restore", backup_file=scene.backup,
                                                      target_database=scene.target, force=True))
    assert result.get("failed") is True and result.get("changed") is not True, result
    assert "public.orders: 100 rows restored, 99 in the snapshot" in result["msg"], result["msg"]
    assert scene.untouched(pg)


def test_the_module_drops_the_previous_database_only_when_keep_previous_is_false(pg, scene, backup_dir, run_module):
    result = run_module("forge_restore", restore_args(pg, backup_dir, mode="restore", backup_file=scene.backup,
                                                      target_database=scene.target, force=True, keep_previous=False))
    assert result.get("failed") is not True, result
    assert result["previous_database"] is None
    assert table_counts(pg, scene.target)["public.orders"] == 100
    assert all_databases(pg) == scene.databases  # the replaced database is gone, nothing beside it


def test_the_module_with_encryption_required_never_picks_an_unencrypted_backup(
        pg, fresh_db, backup_dir, passphrase_file, run_module):
    """require_encryption reaches the engine through the module: the newest backup, unencrypted,
    is passed over for the older encrypted one."""
    encrypted, unencrypted = encrypted_then_unencrypted(pg, fresh_db, backup_dir)
    result = run_module("forge_restore", restore_args(pg, backup_dir, mode="verify", database=fresh_db,
                                                      passphrase_file=passphrase_file, require_encryption=True))
    assert result.get("failed") is not True, result
    assert result["backup"] == encrypted


# -- the playbook door -----------------------------------------------------------------------------

def test_the_restore_playbook_refuses_a_backup_with_one_flipped_byte_before_touching_any_database(
        pg, scene, backup_dir, tmp_path):
    flip_byte(scene.backup, mask=0x10)
    result = restore_playbook(pg, scene.database, tmp_path, backup_dir, scene.target)
    assert result.returncode != 0, result.said
    verify = tasks_run(result)["Verify the backup before touching any database"]
    assert verify["failed"] and "checksum mismatch; the file is damaged or was changed after the backup" \
        in verify["msg"], verify
    assert "Restore the backup" not in tasks_run(result)
    assert scene.untouched(pg)


def test_the_restore_playbook_refuses_a_forced_restore_one_row_off_and_keeps_the_target(
        pg, scene, backup_dir, tmp_path):
    scene.one_row_off(+1)
    result = restore_playbook(pg, scene.database, tmp_path, backup_dir, scene.target)
    assert result.returncode != 0, result.said
    restored = tasks_run(result)["Restore the backup"]
    assert restored["failed"] and "public.orders: 100 rows restored, 101 in the snapshot" in restored["msg"]
    assert scene.untouched(pg)


def test_the_restore_playbook_refuses_a_file_nothing_proves_unless_asked(pg, scene, backup_dir, tmp_path):
    """The playbook's default is the module's: a manifest-less file is refused, in one line naming
    the variable that allows it, and the target is as it was."""
    name = f"{scene.database}_20260207_143215.sql.gz"
    runbook_backup(pg, scene.database, os.path.join(backup_dir, name))
    databases = all_databases(pg)
    result = restore_playbook(pg, scene.database, tmp_path, backup_dir, scene.target, backup_restore_file=name)
    assert result.returncode != 0, result.said
    refused = [task for task in tasks_run(result).values() if task.get("failed")]
    assert len(refused) == 1 and refused[0]["msg"].startswith(
        f"{name} has no signed manifest that proves what it holds"), refused
    assert "backup_restore_allow_unverified" in refused[0]["msg"]
    assert table_counts(pg, scene.target) == scene.kept and all_databases(pg) == databases
    assert PASSPHRASE not in result.stdout + result.stderr


# -- the script door -------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [{"BACKUP_ENCRYPT": "1"}, {}], ids=["BACKUP_ENCRYPT=1", "a-passphrase-file-alone"])
def test_the_script_with_encryption_required_never_picks_an_unencrypted_backup(pg, fresh_db, backup_dir, settings):
    """restore_db.sh reads BACKUP_ENCRYPT (or, as the runbook's setup has it, a passphrase file
    alone) and passes it on: its newest backup, unencrypted, is passed over for the older encrypted one."""
    encrypted, _ = encrypted_then_unencrypted(pg, fresh_db, backup_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_"))}
    env.update(pg.app_env(fresh_db), BACKUP_DIR=backup_dir, BACKUP_CONFIG="",
               BACKUP_PASSPHRASE_FILE=signing_passphrase_file(), **settings)
    result = subprocess.run([os.path.join(REPO, "scripts", "restore_db.sh"), "verify", "latest"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["backup"] == encrypted
