"""The Molecule containers are defined once (molecule/shared/platform.yml): a scenario that
repeats a shared key would drift from the others the day that key changes."""

import glob
import os

import yaml

from helpers import REPO


def read(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_scenarios_name_their_hosts_and_only_what_differs_from_the_shared_platform():
    shared = set(read("molecule", "shared", "platform.yml")["forge_platform"])
    repeated = []
    for path in sorted(glob.glob(os.path.join(REPO, "molecule", "*", "molecule.yml"))):
        for platform in read(path)["platforms"]:
            repeated += [f"{os.path.relpath(path, REPO)}: {platform['name']}: {key}" for key in shared & set(platform)]
    assert repeated == []


def test_every_scenario_creates_its_containers_with_the_shared_playbook():
    config = read(".config", "molecule", "config.yml")
    assert config["provisioner"]["playbooks"]["create"] == "../shared/create.yml"
    assert "platforms" not in config  # unused there: each scenario lists its own hosts
    for path in glob.glob(os.path.join(REPO, "molecule", "*", "molecule.yml")):
        assert "create" not in read(path).get("provisioner", {}).get("playbooks", {}), path
