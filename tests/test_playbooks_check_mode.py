"""The operating playbooks in check mode: they say what they would do, change nothing,
and never fail because nothing ran. Run with ansible-playbook against this host
(the `backup` group is localhost) and the real PostgreSQL of the tests."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import HOST_PYTHON

from helpers import (
    PASSPHRASE,
    REPO,
    backups_in,
    manifest_of,
    resign_manifest,
    run_backup_script,
    signing_passphrase_file,
)
from servers import load_sample_data, table_counts


@pytest.fixture
def live(pg, fresh_db):
    load_sample_data(pg, fresh_db, customers=20, orders=100)
    return fresh_db


def playbook_command(name, pg, database, tmp_path, backup_dir, check=True, extra_vars=None, **variables):
    """The ansible-playbook command line and environment that run playbooks/<name> on this host,
    against ``database`` of ``pg``; ``variables`` go to the inventory, ``extra_vars`` to -e."""
    settings = {
        "backup_dir": backup_dir, "backup_databases": [database], "backup_postgres_host": pg.host,
        "backup_postgres_port": pg.port, "backup_postgres_user": pg.app_user,
        "backup_postgres_password": pg.app_password, "backup_passphrase": PASSPHRASE, "backup_encrypt": False,
        # What the backup role installed on the host; the operating playbooks read it.
        "backup_passphrase_file": signing_passphrase_file(),
        "backup_report_dir": str(tmp_path / "reports"), "backup_textfile_dir": "",
        # The tests run as root against root's own temporary directories; there is no `infer` here.
        "backup_operate_as_backup_user": False,
    }
    settings.update(variables)
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"backup": {
        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": HOST_PYTHON}},
        "vars": settings}}))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
               os.path.join(REPO, "playbooks", name)]
    if check:
        command.append("--check")
    if extra_vars:
        command += ["-e", json.dumps(extra_vars)]
    return command, env


def playbook(name, pg, database, tmp_path, backup_dir, check=True, extra_vars=None, **variables):
    """Run playbooks/<name> (in check mode unless ``check=False``), stdin not a terminal."""
    command, env = playbook_command(name, pg, database, tmp_path, backup_dir, check, extra_vars, **variables)
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
                            stdin=subprocess.DEVNULL)
    result.said = said(result.stdout)
    return result


def said(stdout):
    """Every message the play printed (debug tasks, loop items), whitespace folded, one string."""
    found = []

    def walk(value):
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "msg":
                    found.extend(item if isinstance(item, list) else [item])
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    try:
        walk(json.loads(stdout))
    except ValueError:
        return stdout
    return "\n".join(" ".join(str(text).split()) for text in found)


def test_backup_playbook_in_check_mode_says_would_and_writes_nothing(pg, live, backup_dir, tmp_path):
    os.makedirs(backup_dir, mode=0o700)
    result = playbook("backup.yml", pg, live, tmp_path, backup_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"would write {live}_" in result.said and "nothing was written" in result.said
    assert backups_in(backup_dir) == []


def test_the_backup_playbook_signs_with_the_passphrase_file_the_role_installed(pg, live, backup_dir, tmp_path):
    """A backup now must be signed as cron's are: with the host's installed file, whatever the
    vault on this controller holds, so the drill and retention trust it the same way."""
    assert run_backup_script(pg, live, backup_dir).returncode == 0  # as cron runs it
    [by_cron] = backups_in(backup_dir)
    result = playbook("backup.yml", pg, live, tmp_path, backup_dir, check=False,
                      backup_passphrase="a vault value this host never received")
    assert result.returncode == 0, result.stdout + result.stderr
    [by_playbook] = [path for path in backups_in(backup_dir) if path != by_cron]
    assert manifest_of(by_playbook)["signature"]["key_id"] == manifest_of(by_cron)["signature"]["key_id"]


def test_drill_playbook_in_check_mode_says_would_and_restores_nothing(pg, live, backup_dir, tmp_path):
    assert run_backup_script(pg, live, backup_dir).returncode == 0
    [path] = backups_in(backup_dir)
    result = playbook("restore_drill.yml", pg, live, tmp_path, backup_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"would drill {live}: {os.path.basename(path)} (check mode: would drill" in result.said
    # A verdict, not the letters: "PASS <db>: <file>" / "FAIL <db>: ..." as the drill play words them.
    assert not re.search(r"(^|\s)(PASS|FAIL) \S+: ", result.said), result.said
    assert not pg.execute("SELECT 1 FROM pg_database WHERE starts_with(datname, %s)", params=(f"{live}_",))
    assert not (tmp_path / "reports" / f"restore_drill_{live}.json").exists()


def test_restore_playbook_in_check_mode_names_the_swap_and_changes_nothing(pg, live, backup_dir, tmp_path):
    assert run_backup_script(pg, live, backup_dir).returncode == 0
    before = table_counts(pg, live)
    result = playbook("restore.yml", pg, live, tmp_path, backup_dir, backup_restore_target=live,
                      backup_restore_confirm=live, backup_restore_force=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"would restore {live}_" in result.said
    assert "(would restore beside it and swap it in, VERIFIED, previous would be kept as " in result.said
    assert table_counts(pg, live) == before
    assert [row[0] for row in pg.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                                         params=(live,))] == [live]


def test_offsite_playbook_in_check_mode_says_would_and_copies_nothing(pg, live, backup_dir, tmp_path):
    result = run_backup_script(pg, live, backup_dir, {"BACKUP_PASSPHRASE_FILE": signing_passphrase_file()})
    assert result.returncode == 0, result.stderr
    usb = tmp_path / "usb"
    result = playbook("offsite.yml", pg, live, tmp_path, backup_dir, backup_encrypt=True,
                      backup_offsite_target=str(usb), backup_offsite_require_mount=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"would copy 1 and expire 0 on {usb} for {live}; nothing was copied" in result.said
    assert not usb.exists()


def test_pitr_yml_on_an_inventory_without_a_barman_host_leaves_the_nas_alone(tmp_path):
    """molecule/e2e shares the lab's group_vars (rest-server on) but has no pitr host: the NAS
    play has no login to serve and must skip, not fail the deploy."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"nas": {
        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": HOST_PYTHON}},
        "vars": {"offsite_target_restic_enabled": True}}}))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                             os.path.join(REPO, "playbooks", "pitr.yml"), "--check"], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "rest-server needs a login" not in result.stdout


def test_the_drill_playbook_fails_when_the_drill_finds_one_row_off(pg, live, backup_dir, tmp_path):
    """The playbook door of the exact-count promise: the drill's FAIL line, and a failed play."""
    assert run_backup_script(pg, live, backup_dir).returncode == 0
    [path] = backups_in(backup_dir)
    manifest = manifest_of(path)
    manifest["snapshot_row_counts"]["public.orders"] += 1
    resign_manifest(path, manifest)
    result = playbook("restore_drill.yml", pg, live, tmp_path, backup_dir, check=False)
    assert result.returncode != 0, result.said
    assert re.search(rf"(^|\s)FAIL {live}: {re.escape(os.path.basename(path))}, age [0-9.]+ h, 3 tables, \d+ rows, "
                     rf"[0-9.]+ s - public.orders: 100 rows restored, 101 in the snapshot", result.said), result.said
    assert "restore drill failed: public.orders: 100 rows restored, 101 in the snapshot" in result.said
