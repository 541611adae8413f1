"""The NAS authorizes only single, well-formed public keys: a key comes from the backup
host, which may be the compromised one, and a second line in its .pub would become a
second, unrestricted key in authorized_keys (a full shell on the NAS)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import HOST_PYTHON

from helpers import REPO

GOOD = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq7zqJ2yDq1m0Y1d3uSxw2nO8sOa7b5m2kH3vQ9xYzA infer@db1 infer-forge off-site"


def check_keys(tmp_path, keys):
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "keys",
                   "ansible.builtin.include_role": {"name": "offsite_target", "tasks_from": "keys.yml"}}],
        "vars": {"offsite_target_authorized_keys": keys}}]))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={HOST_PYTHON}\n")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                           str(playbook)], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_a_single_public_key_is_accepted(tmp_path):
    result = check_keys(tmp_path, [GOOD])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("key", [
    GOOD + "\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBadBadBadBadBadBadBadBadBadBadBadBadBadBadBad attacker",
    'command="/bin/sh" ' + GOOD,
    "ssh-ed25519 not-base64",
    "",
], ids=["second-line", "own-options", "no-blob", "empty"])
def test_anything_else_is_refused(tmp_path, key):
    result = check_keys(tmp_path, [key])
    assert result.returncode != 0
    assert "offsite_target: refusing to authorize" in result.stdout
    assert "nothing was changed on this NAS" in result.stdout


def write_check_keys(tmp_path, derived, explicit=()):
    """The role's check_keys.yml on localhost, as main.yml runs it after the backup hosts derived keys."""
    playbook = tmp_path / "check_keys.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "check keys",
                   "ansible.builtin.include_role": {"name": "offsite_target", "tasks_from": "check_keys"}}],
        "vars": {"offsite_target_keys_to_check": list(explicit) or list(derived),
                 "offsite_target_check_keys": list(explicit),
                 "offsite_target_check_keys_file": str(tmp_path / "etc" / "nas-check.keys"),
                 "offsite_target_group": "root"}}]))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={HOST_PYTHON}\n")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                             str(playbook)], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_check_keys_derived_in_a_limited_run_are_added_to_those_the_nas_holds(tmp_path):
    """A deploy limited to one backup host must not drop another host's key (its copies would turn
    unverified); an explicit offsite_target_check_keys is the whole list."""
    first, second = "a" * 64, "b" * 64
    keys = tmp_path / "etc" / "nas-check.keys"
    write_check_keys(tmp_path, [first])
    assert keys.read_text() == f"{first}\n" and oct(keys.stat().st_mode & 0o777) == "0o640"
    write_check_keys(tmp_path, [second])
    assert keys.read_text().split() == [first, second]
    result = write_check_keys(tmp_path, [first])  # nothing new: nothing changes
    assert "changed=0" in result.stdout
    write_check_keys(tmp_path, [], explicit=[second])
    assert keys.read_text().split() == [second]
    for secret in (first, second):
        assert secret not in result.stdout
