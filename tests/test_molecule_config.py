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


def test_molecule_never_installs_this_checkout_into_the_users_collections(tmp_path):
    """Molecule's prerun installs a checkout with a galaxy.yml into ~/.ansible/collections
    (`ansible-galaxy collection install --force`). The two Molecule lanes of `make test` would
    then delete and rewrite the same directory side by side; a scenario failed on it with
    `FileExistsError: .../ansible_collections/infer/forge`. And an operator's home is no
    place for a test run's copy."""
    import subprocess
    import sys

    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, HOME=str(tmp_path), ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
               PATH=bin_dir + os.pathsep + os.environ["PATH"])
    for name in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_COLLECTIONS_PATHS", "XDG_CACHE_HOME"):
        env.pop(name, None)
    molecule = os.path.join(bin_dir, "molecule")
    result = subprocess.run([molecule, "syntax", "-s", "sentry"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert list(tmp_path.glob("**/ansible_collections/infer")) == []
