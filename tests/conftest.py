"""Shared fixtures: real servers, the engine on sys.path, and a real Ansible module runner."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "module_utils"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from servers import PostgresServer, RedisServer, load_sample_data  # noqa: E402

# The engine runs on hosts with Debian's python3 and its packaged libraries;
# the module and script tests use exactly that interpreter.
HOST_PYTHON = os.environ.get("FORGE_HOST_PYTHON", "/usr/bin/python3")

# `make test` installs every tool these tests need and runs as root, so a skipped
# test is a test that silently vanished: it fails instead. Running a few tests by
# hand on another machine, FORGE_TESTS_MAY_SKIP=1 lets skips be skips.
MAY_SKIP = os.environ.get("FORGE_TESTS_MAY_SKIP") == "1"


def _fail_the_skip(report, nodeid):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"{nodeid} would be skipped ({reason.removeprefix('Skipped: ')}); make test "
                       "needs it to run (FORGE_TESTS_MAY_SKIP=1 allows skips outside make test)")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module that skips itself whole (importorskip, allow_module_level) fails the same way."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not MAY_SKIP:
        _fail_the_skip(report, collector.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not MAY_SKIP and not hasattr(report, "wasxfail"):
        _fail_the_skip(report, item.nodeid)


@pytest.fixture(scope="session")
def pg():
    server = PostgresServer().init().start().setup_app()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def sshd():
    """A throwaway sshd on loopback, the NAS side of off-site copies (see SshServer.gate)."""
    from servers import SshServer

    server = SshServer().start()
    yield server
    server.destroy()


@pytest.fixture
def fresh_db(pg, request):
    """An empty database owned by the app role, dropped after the test."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:50]
    pg.create_database(name)
    yield name
    pg.drop_database(name)


@pytest.fixture
def sample_db(pg, fresh_db):
    """fresh_db holding the sample customers and orders (servers.load_sample_data)."""
    load_sample_data(pg, fresh_db)
    return fresh_db


class ModuleRunner:
    """Runs a module from library/ through ansible-playbook, as a playbook would."""

    def __init__(self, workdir):
        self.workdir = workdir

    def __call__(self, module, args, check=False, diff=False, extra_env=None, become_user=None):
        playbook = os.path.join(self.workdir, "play.yml")
        task = {"name": "run", module: args}
        if become_user:
            # su, since this machine has no sudo; -s: a system account's shell is nologin.
            task.update(become=True, become_user=become_user, become_method="ansible.builtin.su",
                        become_flags="-s /bin/sh")
        with open(playbook, "w") as handle:
            json.dump([{"hosts": "localhost", "gather_facts": False, "tasks": [task]}], handle)
        inventory = os.path.join(self.workdir, "inventory.ini")
        with open(inventory, "w") as handle:
            handle.write(f"localhost ansible_connection=local ansible_python_interpreter={HOST_PYTHON}\n")
        env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
                   ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
                   ANSIBLE_LIBRARY=os.path.join(REPO, "library"),
                   ANSIBLE_MODULE_UTILS=os.path.join(REPO, "module_utils"))
        env.update(extra_env or {})
        command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory, playbook]
        if check:
            command.append("--check")
        if diff:
            command.append("--diff")
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"ansible-playbook printed no JSON:\n{proc.stdout}\n{proc.stderr}") from None
        result = report["plays"][0]["tasks"][0]["hosts"]["localhost"]
        result["_raw"] = proc.stdout
        return result


@pytest.fixture
def run_module(tmp_path):
    return ModuleRunner(str(tmp_path))


@pytest.fixture
def passphrase_file(tmp_path):
    """The backup passphrase in a 0600 file, as the backup role stores it."""
    path = tmp_path / "backup.pass"
    path.write_text("correct horse battery staple\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def backup_dir(tmp_path):
    path = tmp_path / "backups"
    return str(path)


@pytest.fixture
def shared_tmp():
    """A directory other users can traverse (pytest's tmp_path is private to root),
    for tests that run the script as another user or give files to postgres."""
    import shutil

    path = tempfile.mkdtemp(prefix="forge-shared.", dir="/var/tmp")
    os.chmod(path, 0o755)  # noqa: S103 - other users must reach what lies inside
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def session_tmp():
    with tempfile.TemporaryDirectory(prefix="forge-tests.") as path:
        yield path
