"""A host without a Python library a module needs gets Ansible's own missing_required_lib
message before anything runs, naming the library: not an ImportError found halfway through.

The host here is a Python of its own with no site packages (a venv of the system Python,
which has psycopg and redis through Debian's packages): what a fresh host has."""

import json
import os
import subprocess
import sys

import pytest
from conftest import HOST_PYTHON

from helpers import REPO


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([HOST_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    for library in ("psycopg", "redis"):
        assert subprocess.run([python, "-c", f"import {library}"], capture_output=True).returncode != 0
    return python


def run_module(tmp_path, python, module, args):
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False,
                                     "tasks": [{"name": "run", module: args, "register": "out",
                                                "ignore_errors": True},
                                               {"ansible.builtin.debug": {"var": "out"}}]}]))
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={python}\n")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                             str(playbook)], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    [task] = [t for t in json.loads(result.stdout)["plays"][0]["tasks"] if t["task"]["name"] == "run"]
    return task["hosts"]["localhost"]


@pytest.mark.parametrize("module, args, library", [
    ("forge_backup", {"database": "shop", "backup_dir": "/nonexistent/backups", "login_password": "x"}, "psycopg"),
    ("forge_restore", {"mode": "drill", "database": "shop", "backup_dir": "/nonexistent/backups"}, "psycopg"),
    ("forge_health", {"checks": ["database"], "database_password": "x"}, "psycopg"),
    ("forge_health", {"checks": ["redis"]}, "redis"),
], ids=["forge_backup", "forge_restore", "forge_health-database", "forge_health-redis"])
def test_a_host_without_the_library_is_told_which_one_before_anything_runs(tmp_path, bare_python, module, args,
                                                                         library):
    result = run_module(tmp_path, bare_python, module, args)
    assert result["failed"] is True
    assert result["msg"].startswith(f"Failed to import the required Python library ({library}) on "), result["msg"]
    assert "Traceback" not in json.dumps(result)


def test_a_health_check_that_needs_neither_library_runs_without_them(tmp_path, bare_python):
    result = run_module(tmp_path, bare_python, "forge_health", {"checks": ["app"], "app_url": "http://127.0.0.1:9/",
                                                                "timeout": 1.0, "fail_on_unhealthy": False})
    assert result.get("failed") is not True, result
    assert result["services"][0]["error"].startswith("app: ")
