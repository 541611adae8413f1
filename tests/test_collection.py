"""The infer.forge collection as another repository gets it: the tarball from
scripts/build_collection.py, installed with ansible-galaxy into a throwaway path,
and a playbook that calls infer.forge.forge_health by its FQCN with neither this
checkout's ansible.cfg nor its library/ and module_utils/ in reach."""

import json
import os
import subprocess
import sys

import pytest
from conftest import HOST_PYTHON, REPO

BIN = os.path.dirname(sys.executable)
# Everything that would let Ansible find the checkout's own modules instead.
CHECKOUT_SETTINGS = ("ANSIBLE_CONFIG", "ANSIBLE_LIBRARY", "ANSIBLE_MODULE_UTILS", "ANSIBLE_COLLECTIONS_PATH",
                     "ANSIBLE_COLLECTIONS_PATHS", "ANSIBLE_ROLES_PATH")


def run(command, **kwargs):
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{command[:3]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(work directory, environment) in which only the installed collection provides infer.forge."""
    work = tmp_path_factory.mktemp("collection")
    built = run([sys.executable, os.path.join(REPO, "scripts", "build_collection.py"),
                 "--tarball", str(work / "dist")])
    tarball = built.stdout.strip().splitlines()[-1]
    assert os.path.basename(tarball) == "infer-forge-1.0.0.tar.gz" and os.path.isfile(tarball)
    collections = work / "collections"
    env = {key: value for key, value in os.environ.items() if key not in CHECKOUT_SETTINGS}
    config = work / "ansible.cfg"
    config.write_text(f"[defaults]\ncollections_path = {collections}\n")
    env.update(ANSIBLE_CONFIG=str(config), ANSIBLE_COLLECTIONS_PATH=str(collections), ANSIBLE_NOCOLOR="1")
    # --force: install into this path even when another path already holds an infer.forge.
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", "--force",
         "-p", str(collections), tarball], env=env, cwd=work)
    return work, env


def test_the_installed_collection_provides_the_module(installed):
    work, env = installed
    doc = json.loads(run([os.path.join(BIN, "ansible-doc"), "--json", "infer.forge.forge_health"],
                         env=env, cwd=work).stdout)["infer.forge.forge_health"]["doc"]
    assert doc["filename"] == str(work / "collections/ansible_collections/infer/forge/plugins/modules/forge_health.py")


def test_a_playbook_checks_postgresql_health_with_the_fqcn(installed, pg):
    work, env = installed
    playbook = work / "health.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "Check PostgreSQL", "infer.forge.forge_health": {
            "checks": ["database"], "database_host": pg.host, "database_port": pg.port,
            "database_user": pg.app_user, "database_password": pg.app_password,
            "database_name": "postgres", "timeout": 5.0}}],
    }]))
    inventory = work / "inventory.ini"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={HOST_PYTHON}\n")
    proc = run([os.path.join(BIN, "ansible-playbook"), "-i", str(inventory), str(playbook)],
               env=dict(env, ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1"), cwd=work)
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    assert result.get("failed") is not True, result.get("msg")
    assert result["status"] == "healthy" and result["changed"] is False
    [database] = result["services"]
    assert database["service"] == "database" and database["healthy"] is True
    assert database["target"] == f"{pg.host}:{pg.port}"
    assert database["version"].startswith("15.")  # the throwaway PostgreSQL 15 answered
    assert isinstance(database["latency_ms"], (int, float)) and database["latency_ms"] >= 0


def test_a_role_of_the_collection_installs_the_engine_from_the_collection_alone(installed):
    """The NAS role's engine step, by FQCN: forge_engine ships the engine from its own payload,
    so the role needs no path into this checkout."""
    work, env = installed
    dest = work / "nas-install"
    playbook = work / "engine.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False,
        "tasks": [{"name": "Install the engine", "ansible.builtin.include_role": {
            "name": "infer.forge.offsite_target", "tasks_from": "engine"},
            "vars": {"offsite_target_install_dir": str(dest)}}],
    }]))
    inventory = work / "inventory.ini"
    inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={HOST_PYTHON}\n")
    run([os.path.join(BIN, "ansible-playbook"), "-i", str(inventory), str(playbook)], env=env, cwd=work)
    engine = sorted(name for name in os.listdir(os.path.join(REPO, "module_utils", "forge")) if name.endswith(".py"))
    assert sorted(os.listdir(dest / "lib" / "forge")) == engine
    assert os.listdir(dest / "scripts") == ["forge"]
    helped = subprocess.run([str(dest / "scripts" / "forge"), "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: forge {backup|verify|restore|drill|offsite|pitr|dr}")


def test_the_collection_ships_no_lab_content_and_a_readme_of_its_own(installed):
    """lab_services runs the lab's stand-ins from this checkout's scripts/ (a path the installed
    collection has not got); the collection's README describes the collection, naming every
    module and role it ships, not this repository's make targets."""
    work, _env = installed
    root = work / "collections" / "ansible_collections" / "infer" / "forge"
    roles = sorted(os.listdir(root / "roles"))
    assert "lab_services" not in roles and "backup" in roles
    readme = (root / "README.md").read_text()
    assert readme.startswith("# infer.forge")
    assert "make test" not in readme and "make demo" not in readme
    modules = sorted(name[:-3] for name in os.listdir(root / "plugins" / "modules") if name.endswith(".py"))
    for name in modules:
        assert f"`infer.forge.{name}`" in readme, name
    for name in roles:
        assert f"`infer.forge.{name}`" in readme, name
