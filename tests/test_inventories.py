"""Host key checking per inventory: production and staging verify host keys, the lab
alone turns checking off (in its own inventory), and the NAS host key that off-site
copies pin is a variable of production and staging, never read over the connection."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, role_defaults

BIN = os.path.dirname(sys.executable)
FALSE = (False, "false", "False", "no", "0", 0)


def ansible(tool, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    result = subprocess.run([os.path.join(BIN, tool), *args], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def hostvars(inventory):
    listing = ansible("ansible-inventory", "-i", os.path.join(REPO, "inventories", inventory), "--list")
    return listing["_meta"]["hostvars"]


def host_key_checking(variables):
    for name in ("ansible_ssh_host_key_checking", "ansible_host_key_checking"):
        if name in variables:
            return variables[name] not in FALSE
    return None


def test_ansible_cfg_leaves_host_key_checking_on():
    dump = ansible("ansible-config", "dump", "--format", "json")
    [setting] = [item for item in dump if item.get("name") == "HOST_KEY_CHECKING"]
    assert setting["value"] is True, f"ansible.cfg turns host key checking off ({setting['origin']})"
    plugins = {name: options for plugin in ansible("ansible-config", "dump", "-t", "connection", "--format", "json")
               for name, options in plugin.items()}
    [setting] = [item for item in plugins["ssh"] if item.get("name") == "host_key_checking"]
    assert setting["value"] is True, f"the ssh connection does not check host keys ({setting['origin']})"


@pytest.mark.parametrize("inventory", ["production", "staging"])
def test_production_and_staging_verify_host_keys(inventory):
    found = hostvars(inventory)
    assert found
    for host, variables in found.items():
        assert host_key_checking(variables) in (None, True), f"{inventory}: {host} turns host key checking off"
        assert variables.get("ansible_connection", "ssh") in ("ssh", "ansible.builtin.ssh")


def test_the_lab_alone_turns_host_key_checking_off():
    found = hostvars("lab")
    assert found
    for host, variables in found.items():
        assert host_key_checking(variables) is False, f"lab: {host} still checks host keys"


@pytest.mark.parametrize("inventory", ["production", "staging"])
def test_production_and_staging_give_the_nas_host_key_as_a_variable(inventory):
    found = hostvars(inventory)
    backup_hosts = [host for host, variables in found.items() if "backup_offsite_target" in variables]
    assert backup_hosts, f"{inventory}: no host with off-site copies"
    for host in backup_hosts:
        variables = found[host]
        assert str(variables.get("backup_offsite_host_key", "")).strip(), \
            f"{inventory}: {host} copies off-site over SSH without backup_offsite_host_key"
        assert variables.get("backup_offsite_host_key_from_nas", False) in FALSE, \
            f"{inventory}: {host} takes the NAS host key over the Ansible connection"


@pytest.mark.parametrize("inventory", ["production", "staging", "lab"])
def test_every_inventory_connects_as_an_unprivileged_user(inventory):
    """Nothing relies on logging in as root: plays that need it say `become: true`."""
    users = {host: variables.get("ansible_user") for host, variables in hostvars(inventory).items()}
    assert users and all(user and user != "root" for user in users.values()), users


def test_every_play_that_changes_a_host_becomes_root_or_says_whom_it_runs_as():
    """A play that runs roles or writes files as the connecting user would fail as `deploy`:
    each play either says `become` or runs only read-only checks and modules that become
    the backup user themselves (backup_operations' tasks, health checks, the checklist)."""
    import glob

    import yaml

    without = []
    for path in sorted(glob.glob(os.path.join(REPO, "playbooks", "*.yml"))):
        with open(path, encoding="utf-8") as handle:
            plays = yaml.safe_load(handle)
        for play in plays:
            if "import_playbook" in play or play.get("connection") == "local" or "become" in play:
                continue
            roles = [task.get("ansible.builtin.include_role", {}).get("name") for task in play.get("tasks", [])]
            if play.get("roles") or any(role not in (None, "backup_operations", "health", "checklist")
                                        for role in roles):
                without.append(f"{os.path.basename(path)}: {play['name']}")
    assert without == []


def test_a_host_in_both_backup_and_pitr_keeps_each_roles_report_directory_apart():
    """The lab's db host is in both groups. The pitr role made the backup role's report
    directory barman's (0750), so the backup user could no longer write its off-site record,
    and `make demo`'s checklist failed item 6 right after a verified copy."""
    backup_dir = role_defaults("backup")["backup_report_dir"]
    pitr_dir = role_defaults("pitr")["pitr_report_dir"]
    assert not (pitr_dir + "/").startswith(backup_dir + "/") and not (backup_dir + "/").startswith(pitr_dir + "/")
    # barman must reach its own directory without being in the backup user's group.
    assert not (pitr_dir + "/").startswith(os.path.dirname(backup_dir) + "/")
    for inventory in ("lab", "production", "staging"):
        for host, variables in hostvars(inventory).items():
            if "pitr_report_dir" in variables and "backup_report_dir" in variables:
                assert variables["pitr_report_dir"] != variables["backup_report_dir"], (inventory, host)


def _groups(inventory):
    listing = ansible("ansible-inventory", "-i", os.path.join(REPO, "inventories", inventory), "--list")

    def hosts(group):
        entry = listing.get(group, {})
        found = set(entry.get("hosts", []))
        for child in entry.get("children", []):
            found |= hosts(child)
        return found

    return hosts, listing["_meta"]["hostvars"]


@pytest.mark.parametrize("inventory", ["production", "staging", "lab"])
def test_the_barman_host_is_monitored_in_every_inventory_with_only_what_runs_there(inventory):
    """The review's finding: production's Barman host was not in `monitored`, so node_exporter never
    read its PITR metrics and every PITR alert (slot, streaming, drill, off-site) had no data there.
    It is monitored everywhere; a Barman host that is not also a db host runs no postgres, redis
    or blackbox exporter (it has no such service to watch)."""
    hosts, variables = _groups(inventory)
    assert hosts("pitr"), f"{inventory} has no Barman host"
    assert hosts("pitr") <= hosts("monitored"), f"{inventory}: {hosts('pitr') - hosts('monitored')} not monitored"
    for host in hosts("pitr") - hosts("db"):
        for exporter in ("postgres", "redis", "blackbox"):
            assert variables[host].get(f"exporters_{exporter}_enabled") in FALSE, (inventory, host, exporter)
