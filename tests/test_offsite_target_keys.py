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
