"""The NAS's host key for off-site copies: a wrong pinned key is refused by a real sshd's
client, the backup role pins the key it is given (a known_hosts line or the key alone),
and refuses off-site copies over SSH when no host key is given."""

import json
import os
import subprocess
import sys

import pytest
from conftest import HOST_PYTHON

from helpers import PASSPHRASE, REPO, backups_in, run_backup_script, signing_passphrase_file
from servers import load_sample_data

OFFSITE_SCRIPT = os.path.join(REPO, "scripts", "offsite_copy.sh")
REFUSAL = "backup: off-site copies over SSH need backup_offsite_host_key"


@pytest.fixture
def encrypted_backup(pg, fresh_db, backup_dir, passphrase_file):
    load_sample_data(pg, fresh_db, customers=5, orders=20)
    result = run_backup_script(pg, fresh_db, backup_dir, {"BACKUP_PASSPHRASE_FILE": passphrase_file})
    assert result.returncode == 0, result.stderr
    assert len(backups_in(backup_dir)) == 1
    return fresh_db


def offsite(database, backup_dir, target, tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "OFFSITE_"))}
    env.update({"BACKUP_CONFIG": "", "POSTGRES_DB": database, "BACKUP_DIR": backup_dir, "OFFSITE_TARGET": target,
                "OFFSITE_REQUIRE_MOUNT": "0", "BACKUP_TEXTFILE_DIR": str(tmp_path),
                "DRILL_REPORT_DIR": str(tmp_path / "state"), "BACKUP_PASSPHRASE_FILE": signing_passphrase_file()})
    env.update({k: str(v) for k, v in extra.items()})
    return subprocess.run([OFFSITE_SCRIPT], env=env, capture_output=True, text=True, timeout=120)


def other_host_key(tmp_path):
    path = tmp_path / "other_host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join((tmp_path / "other_host_ed25519.pub").read_text().split()[:2])


def sshd_host_key(sshd):
    """The sshd's own host key, "ssh-ed25519 AAAA...", as an operator reads it on the NAS."""
    with open(sshd.known_hosts) as handle:
        return " ".join(handle.read().split()[1:3])


def play(tmp_path, tasks, variables, check=False):
    """Runs tasks on localhost with ansible-playbook, as the suite runs the playbooks."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{"hosts": "backup", "gather_facts": False, "tasks": tasks}]))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(json.dumps({"backup": {
        "hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": HOST_PYTHON}},
        "vars": variables}}))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
               str(playbook)] + (["--check"] if check else [])
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def gated_nas(sshd, tmp_path):
    """The NAS directory with the client key bound to the NAS gate, as the offsite_target role makes it."""
    nas = tmp_path / "nas" / "infer-forge"
    nas.mkdir(parents=True, mode=0o700)
    sshd.gate(nas, tmp_path / "nas" / "state")
    return nas


def pin(tmp_path, sshd, host_key):
    known_hosts = tmp_path / "offsite_known_hosts"
    result = play(tmp_path, [{"name": "Pin", "ansible.builtin.import_role": {
        "name": "backup", "tasks_from": "offsite_trust.yml"}}], {
        "backup_offsite_enabled": True, "backup_offsite_target": f"root@{sshd.host}:/srv/offsite",
        "backup_offsite_ssh_port": sshd.port, "backup_offsite_known_hosts": str(known_hosts),
        "backup_offsite_host_key": host_key, "backup_group": "root"})
    return result, known_hosts


def test_a_wrong_pinned_host_key_is_refused(sshd, encrypted_backup, backup_dir, tmp_path):
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{sshd.host}]:{sshd.port} {other_host_key(tmp_path)}\n")
    result = offsite(encrypted_backup, backup_dir, f"root@{sshd.host}:{tmp_path / 'nas'}", tmp_path,
                     OFFSITE_SSH_PORT=sshd.port, OFFSITE_SSH_KEY=sshd.client_key, OFFSITE_KNOWN_HOSTS=wrong)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"ssh to root@{sshd.host} failed" in result.stdout and "Host key verification failed." in result.stdout
    assert not (tmp_path / "nas").exists()


@pytest.mark.parametrize("form", ["key", "known_hosts line"])
def test_the_role_pins_the_given_host_key_and_the_copy_checks_it(sshd, encrypted_backup, backup_dir, tmp_path,
                                                                 form):
    host_key = sshd_host_key(sshd)
    if form == "known_hosts line":
        host_key = f"nas.example.invalid {host_key} root@nas"
    result, known_hosts = pin(tmp_path, sshd, host_key)
    assert result.returncode == 0, result.stdout + result.stderr
    assert known_hosts.read_text().split() == [f"[{sshd.host}]:{sshd.port}", *sshd_host_key(sshd).split()]
    nas = gated_nas(sshd, tmp_path)
    result = offsite(encrypted_backup, backup_dir, f"root@{sshd.host}:{nas}", tmp_path,
                     OFFSITE_SSH_PORT=sshd.port, OFFSITE_SSH_KEY=sshd.client_key, OFFSITE_KNOWN_HOSTS=known_hosts)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(backups_in(str(nas), "*.enc")) == 1


def test_the_role_pins_a_wrong_key_only_to_be_refused(sshd, encrypted_backup, backup_dir, tmp_path):
    result, known_hosts = pin(tmp_path, sshd, other_host_key(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    result = offsite(encrypted_backup, backup_dir, f"root@{sshd.host}:{tmp_path / 'nas'}", tmp_path,
                     OFFSITE_SSH_PORT=sshd.port, OFFSITE_SSH_KEY=sshd.client_key, OFFSITE_KNOWN_HOSTS=known_hosts)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Host key verification failed." in result.stdout
    assert not (tmp_path / "nas").exists()


@pytest.mark.parametrize("host_key", ["", "ssh-ed25519 CHANGE-ME-the-NAS-host-key"], ids=["empty", "placeholder"])
def test_the_backup_role_refuses_offsite_over_ssh_without_a_host_key(tmp_path, host_key):
    variables = {
        "backup_passphrase": PASSPHRASE, "backup_encrypt": True, "backup_install_packages": False,
        "backup_dir": str(tmp_path / "backups"), "backup_config_dir": str(tmp_path / "etc"),
        "backup_install_dir": str(tmp_path / "opt"), "backup_report_dir": str(tmp_path / "reports"),
        "backup_textfile_dir": "", "backup_offsite_enabled": True,
        "backup_offsite_target": "infer-offsite@nas.example.invalid:/srv/infer-forge-offsite/backups",
        "backup_offsite_host_key": host_key}
    result = play(tmp_path, [{"name": "Role", "ansible.builtin.include_role": {"name": "backup"}}], variables,
                  check=True)
    assert result.returncode != 0, "the backup role went on without the NAS's host key:\n" + result.stdout[-3000:]
    assert REFUSAL in result.stdout, result.stdout[-3000:]
    failed = [line for line in result.stdout.splitlines() if line.startswith("fatal:")]
    assert len(failed) == 1 and "changed=0" in result.stdout.split("PLAY RECAP")[-1], result.stdout[-3000:]


def test_the_role_renders_the_known_hosts_file_whole_so_no_other_key_survives(sshd, encrypted_backup, backup_dir,
                                                                              tmp_path):
    """The review's finding: the role only appended the NAS's key, so a key pinned earlier (an old
    NAS, or one planted under another name or as a wildcard) stayed trusted. The file is now
    exactly the one line of the given key."""
    known_hosts = tmp_path / "offsite_known_hosts"
    planted = other_host_key(tmp_path)
    known_hosts.write_text(f"* {planted}\n[{sshd.host}]:{sshd.port} {planted}\nold-nas.example.invalid {planted}\n")
    result, known_hosts = pin(tmp_path, sshd, sshd_host_key(sshd))
    assert result.returncode == 0, result.stdout + result.stderr
    assert known_hosts.read_text() == f"[{sshd.host}]:{sshd.port} {sshd_host_key(sshd)}\n"
    again, _ = pin(tmp_path, sshd, sshd_host_key(sshd))
    assert again.returncode == 0 and "changed=0" in again.stdout.split("PLAY RECAP")[-1], again.stdout[-2000:]
