"""Check mode changes nothing: every command a role or playbook runs in check mode
(``check_mode: false``) only reads.

Ansible skips a command in check mode unless the task says ``check_mode: false``, which
a task says to read something the check needs (a container's name, Barman's catalog).
A command that writes must never carry it, or ``--check`` starts what a deploy would
(a streaming receiver, a replication slot) and reports no change. Each such command
must match one of the read-only forms below; a new one is added here with its reason.
"""

import glob
import os
import re

import yaml

from helpers import REPO

READ_ONLY = [
    (r"^htpasswd -v ", "verifies a password, writes nothing"),
    (r"^cut ", "reads a file"),
    (r"^systemd-detect-virt ", "says what the host is"),
    (r"^getfacl ", "reads access lists"),
    (r"^id -nG ", "reads a user's groups"),
    (r"^docker ps ", "lists containers"),
    (r"^docker inspect ", "reads a container"),
    (r"^docker exec .+ psql [^;]* -c (SELECT|SHOW) [^;]*$", "one SELECT or SHOW in the database container"),
    (r"^barman -f json list-backups ", "reads Barman's catalog"),
    (r"^barman check ", "Barman's own read-only check"),
    (r"^pgrep ", "lists processes"),
    (r"^\{\{ backup_install_dir \}\}/scripts/forge nas-check-keys ",
     "derives the NAS's keys from the passphrase files, writes nothing"),
]


def tasks_in(node):
    if isinstance(node, list):
        for item in node:
            yield from tasks_in(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always", "tasks", "pre_tasks", "post_tasks", "handlers"):
            if key in node:
                yield from tasks_in(node[key])


def command_of(task):
    for module in ("ansible.builtin.command", "ansible.builtin.shell", "command", "shell"):
        if module in task:
            value = task[module]
            if isinstance(value, dict):
                value = value.get("argv") or value.get("cmd") or ""
            if isinstance(value, list):
                value = " ".join(str(word) for word in value)
            return " ".join(str(value).split())
    return None


def commands_run_in_check_mode():
    found = []
    files = glob.glob(os.path.join(REPO, "roles", "*", "tasks", "*.yml")) + \
        glob.glob(os.path.join(REPO, "playbooks", "*.yml"))
    for path in sorted(files):
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
        for task in tasks_in(content):
            command = command_of(task)
            if command is not None and task.get("check_mode") is False:
                found.append((os.path.relpath(path, REPO), task.get("name", "?"), command))
    return found


def test_every_command_that_runs_in_check_mode_only_reads():
    found = commands_run_in_check_mode()
    assert len(found) >= 10, "the scan found too few commands: is it reading the tasks?"
    writers = [f"{path}: {name}: {command[:100]}" for path, name, command in found
               if not any(re.search(pattern, command) for pattern, _why in READ_ONLY)]
    assert writers == [], "\n".join(writers)
