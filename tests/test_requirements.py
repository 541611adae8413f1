"""requirements.yml names exactly the collections the repository uses, at the versions the
tests run; every role asks for the same Ansible."""

import glob
import json
import os
import re
import subprocess

import yaml

from helpers import REPO

# Collections used by tools rather than by our YAML: Molecule's docker driver.
USED_BY_TOOLS = {"community.docker"}
FQCN = re.compile(r"\b([a-z_]+\.[a-z_]+)\.[a-z0-9_]+\b")
BUILTIN = {"ansible.builtin"}


def collections_used():
    used = set()
    files = [path for pattern in ("roles/**/*.yml", "playbooks/**/*.yml", "molecule/**/*.yml")
             for path in glob.glob(os.path.join(REPO, pattern), recursive=True)]
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for task_key in re.findall(r"^\s*-?\s*([a-z_]+\.[a-z_]+\.[a-z0-9_]+):", handle.read(), re.MULTILINE):
                collection = FQCN.match(task_key).group(1)
                if collection not in BUILTIN:
                    used.add(collection)
    return used


def listed():
    with open(os.path.join(REPO, "requirements.yml"), encoding="utf-8") as handle:
        return {item["name"]: item["version"] for item in yaml.safe_load(handle)["collections"]}


def test_requirements_list_exactly_the_collections_used():
    assert set(listed()) == collections_used() | USED_BY_TOOLS


def test_requirements_pin_the_versions_the_tests_run():
    installed = json.loads(subprocess.run(
        ["ansible-galaxy", "collection", "list", "--format", "json"], capture_output=True, text=True,
        check=True).stdout)
    versions = {name: info["version"] for path in installed.values() for name, info in path.items()}
    for name, version in listed().items():
        assert versions.get(name) == version, f"{name}: requirements.yml pins {version}, tests run {versions.get(name)}"


def test_every_role_asks_for_the_same_ansible():
    wanted = set()
    for path in glob.glob(os.path.join(REPO, "roles", "*", "meta", "main.yml")):
        with open(path, encoding="utf-8") as handle:
            wanted.add(str(yaml.safe_load(handle)["galaxy_info"]["min_ansible_version"]))
    assert wanted == {"2.19"}


def roles_collections_used():
    """The collections the roles' own tasks call (what the built collection ships and needs)."""
    used = set()
    for path in glob.glob(os.path.join(REPO, "roles", "**", "*.yml"), recursive=True):
        with open(path, encoding="utf-8") as handle:
            for task_key in re.findall(r"^\s*-?\s*([a-z_]+\.[a-z_]+\.[a-z0-9_]+):", handle.read(), re.MULTILINE):
                collection = FQCN.match(task_key).group(1)
                if collection not in BUILTIN | {"infer.forge"}:
                    used.add(collection)
    return used


def test_the_collection_declares_each_collection_its_roles_use_from_the_pinned_version_on():
    """galaxy.yml's dependencies: without them, a clean controller that installs infer.forge gets
    roles that fail on their first community.* task. Each from the version requirements.yml pins
    (the tests run it) up to the next major."""
    with open(os.path.join(REPO, "galaxy.yml"), encoding="utf-8") as handle:
        dependencies = yaml.safe_load(handle)["dependencies"]
    pinned = listed()
    assert set(dependencies) == roles_collections_used()
    for name, wanted in dependencies.items():
        major = int(pinned[name].split(".")[0])
        assert wanted == f">={pinned[name]},<{major + 1}.0.0", name
