"""No secret of the lab inventory reaches the output of `deploy.yml --check --diff -vvv`.

The secrets are the variables of inventories/lab/group_vars whose name says password,
passphrase, dsn, secret, token or key and whose value is a string, as Ansible renders
them for each host. The run gives every one of them a fresh canary value (and sets the
secrets the lab leaves empty, such as the Elasticsearch password, with what makes a role
render them), so each task that writes a secret into a file has a diff to show, while the
files on the hosts still hold the lab's values: both the canaries and the lab's values
are looked for. A leak names the variable, never its value.
"""

import glob
import json
import os
import re
import secrets
import sys

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import REPO, playbook  # noqa: E402

LAB_GROUP_VARS = os.path.join(REPO, "inventories", "lab", "group_vars")
SECRET_NAME = re.compile(r"password|passphrase|dsn|secret|token|key", re.IGNORECASE)
# The run is told once, from the controller.
testinfra_hosts = ["docker://e2e-db"]


def lab_secret_variables():
    """{name: raw value} of every string variable of the lab inventory that names a secret."""
    found = {}
    for path in sorted(glob.glob(os.path.join(LAB_GROUP_VARS, "*.yml"))):
        with open(path) as handle:
            for name, value in (yaml.safe_load(handle) or {}).items():
                if SECRET_NAME.search(name) and isinstance(value, str) and value.strip():
                    found[name] = value
    assert found, f"no secret variables in {LAB_GROUP_VARS}"
    return found


def rendered(names, tmp_path, extra_vars=None):
    """{value: [names]} of the variables as Ansible renders them on each host of the inventory."""
    play = tmp_path / "render.yml"
    play.write_text(json.dumps([{
        "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "render", "ansible.builtin.debug": {"msg": "{{ lookup('ansible.builtin.vars', item, "
                                                                      "default='') }}"},
                   "loop": sorted(names)}]}]))
    # An absolute path: os.path.join in playbook() keeps it as it is.
    result = playbook(str(play), *(["-e", f"@{extra_vars}"] if extra_vars else []), timeout=300,
                      ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    assert result.returncode == 0, "rendering the lab's secrets failed: " + result.stderr[-2000:]
    values = {}
    for task in json.loads(result.stdout)["plays"][0]["tasks"]:
        for host_result in task["hosts"].values():
            for item in host_result["results"]:
                value = item.get("msg")
                if isinstance(value, str) and len(value) >= 6:
                    values.setdefault(value, set()).add(item["item"])
    return values


def deploy_check(extra_vars=None):
    return playbook("deploy.yml", "--check", "--diff", "-vvv", *(["-e", f"@{extra_vars}"] if extra_vars else []))


def redacted(text, values):
    for value, names in values.items():
        text = text.replace(value, f"<{'|'.join(sorted(names))}>")
    return text


def assert_no_leak(result, values):
    output = result.stdout + result.stderr
    assert result.returncode == 0, redacted(result.stdout[-3000:] + result.stderr[-2000:], values)
    leaked = sorted({name for value, names in values.items() if value in output for name in names})
    assert not leaked, f"deploy.yml --check --diff -vvv printed the value of: {', '.join(leaked)}"


def canaries(tmp_path):
    """Fresh values for the lab's secrets, plus the secrets the lab leaves unset."""
    overrides = {}
    for name, raw in lab_secret_variables().items():
        canary = f"canary0{secrets.token_hex(8)}"
        if "dsn" in name.lower():
            # A DSN keeps its shape: only the key in the userinfo part changes.
            overrides[name] = re.sub(r"//[^@/]+@", f"//{canary}@", raw, count=1)
        elif "{{" not in raw:
            overrides[name] = f"{canary}-{name}"
        # Other templated values follow the variables they are made of.
    overrides.update({
        # Filebeat writes its Elasticsearch password only with that output and a username.
        "filebeat_output": "elasticsearch",
        "filebeat_elasticsearch_username": "lab_writer",
        "filebeat_elasticsearch_password": f"canary0{secrets.token_hex(8)}-es-password",
        # Alertmanager writes the SMTP password with an e-mail receiver and a username.
        "alertmanager_email_to": "ops@lab.invalid",
        "alertmanager_smtp_username": "alertmanager@lab.invalid",
        "alertmanager_smtp_password": f"canary0{secrets.token_hex(8)}-smtp-password",
        "alertmanager_pagerduty_routing_key": f"canary0{secrets.token_hex(8)}",
    })
    path = tmp_path / "canaries.json"
    path.write_text(json.dumps(overrides))
    names = set(lab_secret_variables()) | {name for name in overrides if SECRET_NAME.search(name)}
    return path, names


def test_deploy_check_diff_prints_no_secret(tmp_path):
    extra_vars, names = canaries(tmp_path)
    values = rendered(lab_secret_variables(), tmp_path)
    for value, found in rendered(names, tmp_path, extra_vars).items():
        values.setdefault(value, set()).update(found)
    assert_no_leak(deploy_check(extra_vars), values)
