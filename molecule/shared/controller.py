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


def installed_collection(work):
    """The infer.forge collection as another repository gets it: the tarball built, installed
    into an empty collections path under ``work``, and an environment for ansible-playbook in
    which that path alone provides infer.forge (neither this checkout's ansible.cfg nor its
    roles/, library/ and module_utils/ are in reach; community.docker still comes from the
    ansible package, for the scenario's connections). Returns (environment, collection dir)."""
    import sys

    built = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "build_collection.py"),
                            "--tarball", os.path.join(work, "dist")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    tarball = built.stdout.strip().splitlines()[-1]
    collections = os.path.join(work, "collections")
    config = os.path.join(work, "ansible.cfg")
    with open(config, "w") as handle:
        handle.write(f"[defaults]\ncollections_path = {collections}\nhost_key_checking = False\n")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("ANSIBLE_LIBRARY", "ANSIBLE_MODULE_UTILS", "ANSIBLE_ROLES_PATH",
                                  "ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_CONFIG", "ANSIBLE_FILTER_PLUGINS"))}
    env.update(ANSIBLE_CONFIG=config, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0")
    installed = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-galaxy"), "collection",
                                "install", "--offline", "--force", "--no-deps", "-p", collections, tarball],
                               capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return env, os.path.join(collections, "ansible_collections", "infer", "forge")


def collection_playbook(work, env, plays, timeout=900):
    """ansible-playbook of ``plays`` (written to ``work``) on the scenario's inventory, from ``work``,
    with the JSON callback: the run only the installed collection can serve."""
    path = os.path.join(work, "playbook.yml")
    with open(path, "w") as handle:
        json.dump(plays, handle)
    return subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], path],
                          capture_output=True, text=True, cwd=work, timeout=timeout,
                          env=dict(env, ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1"))


def failed_tasks(run):
    """'task: msg' of every failed task in a JSON-callback run (or the run's last output)."""
    try:
        plays = json.loads(run.stdout)["plays"]
    except (ValueError, KeyError):
        return [run.stdout[-3000:] + run.stderr[-2000:]]
    return [f"{task['task']['name']}: {result.get('msg', '')}"[:1500] for play in plays for task in play["tasks"]
            for result in task["hosts"].values() if result.get("failed")] or [run.stderr[-2000:]]


def task_name(task):
    """A task's name in a JSON-callback run, without the "<role> : " a role's task carries."""
    return task["task"]["name"].rpartition(" : ")[2]


def results_of(run, name):
    """{host: result} of the task named ``name`` in a JSON-callback run."""
    for play in json.loads(run.stdout)["plays"]:
        for task in play["tasks"]:
            if task_name(task) == name:
                return task["hosts"]
    raise AssertionError(f"no task {name!r} ran: {run.stdout[-3000:]}")
