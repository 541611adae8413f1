"""forge_engine installs the engine and the on-host commands from its own payload: what lands on
the host is exactly module_utils/forge and scripts/, a second run changes nothing, check mode
writes nothing, and a file the engine no longer has is removed. Real ansible-playbook runs."""

import ast
import glob
import json
import os
import subprocess
import sys

import pytest
from conftest import HOST_PYTHON

from forge import onhost

from helpers import REPO

ENGINE = os.path.join(REPO, "module_utils", "forge")
INSTALLER = os.path.join(REPO, "library", "forge_engine.py")


def install(tmp_path, dest, check=False, diff=False, **options):
    """One forge_engine task on this host; its result."""
    playbook = tmp_path / "install.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Install the engine", "forge_engine": dict(dest=str(dest), **options)}]}]))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
               "-e", f"ansible_python_interpreter={HOST_PYTHON}", str(playbook)]
    command += ["--check"] * check + ["--diff"] * diff
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
                            stdin=subprocess.DEVNULL)
    report = json.loads(result.stdout)
    return report["plays"][0]["tasks"][0]["hosts"]["localhost"]


def engine_files():
    return sorted(os.path.basename(path) for path in glob.glob(os.path.join(ENGINE, "*.py")))


def tree(root):
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, encoding="utf-8") as handle:
                found[os.path.relpath(path, root)] = (handle.read(), os.stat(path).st_mode & 0o777)
    return found


def expected(scripts=tuple(onhost.SCRIPTS)):
    files = {}
    for name in engine_files():
        with open(os.path.join(ENGINE, name), encoding="utf-8") as handle:
            files[os.path.join("lib", "forge", name)] = (handle.read(), 0o644)
    for name in scripts:
        with open(os.path.join(REPO, "scripts", name), encoding="utf-8") as handle:
            files[os.path.join("scripts", name)] = (handle.read(), 0o755)
    return files


def test_the_commands_it_installs_are_the_repositorys_scripts():
    for name, text in onhost.SCRIPTS.items():
        with open(os.path.join(REPO, "scripts", name), encoding="utf-8") as handle:
            assert handle.read() == text, f"scripts/{name} and forge/onhost.py differ"


def test_the_installer_names_every_engine_module_so_ansible_packs_it():
    with open(INSTALLER, encoding="utf-8") as handle:
        tree_ = ast.parse(handle.read())
    imported = {alias.name for node in ast.walk(tree_) if isinstance(node, ast.ImportFrom)
                and node.module == "ansible.module_utils.forge" for alias in node.names}
    listed = next(node.value for node in tree_.body if isinstance(node, ast.Assign)
                  and node.targets[0].id == "ENGINE_MODULES")
    names = {name[:-3] for name in engine_files()}
    assert imported == names - {"__init__"}
    assert set(ast.literal_eval(listed)) == names


def test_an_install_is_the_engine_and_the_scripts_and_a_second_run_changes_nothing(tmp_path):
    dest = tmp_path / "opt"
    first = install(tmp_path, dest)
    assert not first.get("failed"), first
    assert first["changed"] and first["files"] == len(expected())
    assert tree(dest) == expected()
    assert all(os.stat(dest / path).st_uid == 0 for path in expected())
    second = install(tmp_path, dest)
    assert (second["changed"], second["written"], second["removed"]) == (False, [], [])
    # The installed commands find the installed engine.
    helped = subprocess.run([str(dest / "scripts" / "backup_db.sh"), "--help"], capture_output=True, text=True,
                            check=False)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: backup_db.sh")


def test_check_mode_writes_nothing_and_says_what_it_would(tmp_path):
    dest = tmp_path / "opt"
    result = install(tmp_path, dest, check=True, diff=True)
    assert result["changed"] and sorted(result["written"]) == sorted(expected())
    shown = {item["after_header"]: item for item in result["diff"]}
    assert shown["scripts/backup_db.sh"]["before"] == "" and shown["scripts/backup_db.sh"]["after"] == \
        onhost.SCRIPTS["backup_db.sh"]
    assert not dest.exists()


def test_a_changed_file_is_put_back_and_a_file_the_engine_dropped_is_removed(tmp_path):
    dest = tmp_path / "opt"
    install(tmp_path, dest, scripts=["forge"])
    (dest / "lib" / "forge" / "backup.py").write_text("# doctored\n")
    (dest / "lib" / "forge" / "renamed_long_ago.py").write_text("OLD = True\n")
    result = install(tmp_path, dest, scripts=["forge"])
    assert result["written"] == [os.path.join("lib", "forge", "backup.py")]
    assert result["removed"] == [os.path.join("lib", "forge", "renamed_long_ago.py")]
    assert tree(dest) == expected(scripts=["forge"])


def test_a_symlink_in_the_install_path_is_refused(tmp_path):
    dest = tmp_path / "opt"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest.mkdir()
    (dest / "lib").symlink_to(elsewhere)
    for check in (True, False):
        result = install(tmp_path, dest, check=check)
        assert result["failed"]
        assert result["msg"] == (f"refusing to install the engine in {dest}: {dest}/lib is a symbolic link; "
                                 "refusing to install through it; nothing was changed")
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("scripts", [["forge"], list(onhost.SCRIPTS)])
def test_only_the_named_commands_are_installed(tmp_path, scripts):
    dest = tmp_path / "opt"
    install(tmp_path, dest, scripts=scripts)
    assert sorted(os.listdir(dest / "scripts")) == sorted(scripts)


def test_a_symlinked_install_directory_is_refused_even_written_with_a_trailing_slash(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    result = install(tmp_path, f"{tmp_path / 'link'}/")
    assert result["failed"] and "link is a symbolic link" in result["msg"]
    assert os.listdir(real) == []


def test_a_directory_above_the_install_that_others_may_write_is_refused(tmp_path):
    """Whoever can rename an entry on the path could swap the engine cron runs."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = install(tmp_path, shared / "opt")
    assert result["failed"]
    assert result["msg"] == (f"refusing to install the engine in {shared / 'opt'}: {shared} is writable by group "
                             "or others; anyone who can write it could swap what root installs; nothing was changed")
    assert os.listdir(shared) == []
    owned = tmp_path / "owned"
    owned.mkdir()
    os.chown(owned, 65534, 65534)
    result = install(tmp_path, owned / "opt")
    assert result["failed"] and f"{owned} is not owned by root" in result["msg"]


def test_missing_directories_above_the_install_are_created_roots(tmp_path):
    dest = tmp_path / "a" / "b" / "opt"
    result = install(tmp_path, dest)
    assert not result.get("failed"), result
    assert tree(dest) == expected()
    for directory in (tmp_path / "a", tmp_path / "a" / "b", dest, dest / "lib" / "forge"):
        info = os.stat(directory)
        assert (info.st_uid, info.st_mode & 0o777) == (0, 0o755), directory


def test_an_opened_directory_is_closed_again_and_what_may_have_been_planted_is_removed(tmp_path):
    dest = tmp_path / "opt"
    install(tmp_path, dest)
    forge = dest / "lib" / "forge"
    forge.chmod(0o777)
    (forge / "__pycache__").mkdir()
    (forge / "__pycache__" / "backup.cpython-311.pyc").write_bytes(b"planted")
    (forge / "restore.pyc").write_bytes(b"planted")
    (dest / "scripts" / "backup_db.sh").write_bytes(onhost.SCRIPTS["backup_db.sh"].replace("\n", "\r\n").encode())
    checked = install(tmp_path, dest, check=True)
    assert checked["changed"] and checked["directories_fixed"] == ["lib/forge: owner 0:0 mode 0777 -> root:root 0755"]
    assert (forge / "restore.pyc").exists()  # check mode removed nothing
    result = install(tmp_path, dest)
    assert result["changed"] and result["written"] == ["scripts/backup_db.sh"]  # CRLF is a change
    assert sorted(result["removed"]) == ["lib/forge/__pycache__", "lib/forge/restore.pyc"]
    assert os.stat(forge).st_mode & 0o777 == 0o755
    assert tree(dest) == expected()
    assert install(tmp_path, dest)["changed"] is False
