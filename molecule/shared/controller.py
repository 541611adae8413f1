"""What the verifiers run from the controller against the scenario's instances: ansible-playbook
and ad-hoc ansible with the repository's ansible.cfg and plain output, and the running container
of a Compose service. Each scenario's tests import it (sys.path: molecule/shared)."""

import json
import os
import subprocess

REPO = os.environ.get("MOLECULE_PROJECT_DIRECTORY") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))


def ansible_env(**extra):
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_FORCE_COLOR="0", **extra)


def playbook(name, *args, timeout=900, **env):
    """ansible-playbook of playbooks/<name> (or of a path) on the scenario's inventory; ``env``
    adds to the environment (ANSIBLE_STDOUT_CALLBACK="json", say)."""
    command = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
               os.path.join(REPO, "playbooks", name), *args]
    return subprocess.run(command, capture_output=True, text=True, env=ansible_env(**env), cwd=REPO,
                          timeout=timeout)


def ansible(pattern, *args, timeout=300):
    """Ad-hoc ansible on the scenario's inventory (``-m MODULE -a ARGS ...`` in ``args``)."""
    return subprocess.run(["ansible", "-i", os.environ["MOLECULE_INVENTORY_FILE"], pattern, *args],
                          capture_output=True, text=True, env=ansible_env(), cwd=REPO, timeout=timeout)


def compose_container(host, project, service):
    """The running container of ``service`` in Compose project ``project``, found by its labels."""
    return host.check_output(f"docker ps --filter label=com.docker.compose.project={project} "
                             f"--filter label=com.docker.compose.service={service} --format '{{{{.Names}}}}'")


def task_result(run, key):
    """The first task result that carries ``key``, in a run with ANSIBLE_STDOUT_CALLBACK=json."""
    for play in json.loads(run.stdout)["plays"]:
        for task in play["tasks"]:
            for result in task["hosts"].values():
                if key in result:
                    return result
    raise AssertionError(f"no task returned {key}: {run.stdout[-3000:]}")
