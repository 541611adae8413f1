"""The infer.forge collection outside this repository: the built tarball installed into an
empty collections path, and a playbook that names everything by its FQCN, run against the
scenario's Compose host from a directory where neither this checkout's ansible.cfg nor its
roles/, library/ and module_utils/ are in reach. The backup role from the collection finds
the host as the deploy left it (no change), its operation takes a verified backup through
the db container, and forge_health reaches the database.
"""

import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import collection_playbook, failed_tasks, installed_collection, results_of, task_name  # noqa: E402

testinfra_hosts = ["docker://compose-db"]

BACKUPS = "/srv/infer-forge-molecule-compose/backups"


def test_the_installed_collection_backs_up_and_checks_health_by_fqcn(host, tmp_path):
    env, collection = installed_collection(str(tmp_path))
    assert os.path.isdir(os.path.join(collection, "roles", "backup_settings"))
    before = set(host.check_output(f"ls -1 {BACKUPS}").split())
    run = collection_playbook(str(tmp_path), env, [{
        "name": "Backups from the installed collection",
        "hosts": "backup", "become": True, "gather_facts": False,
        "roles": [{"role": "infer.forge.backup"}],
        "tasks": [
            {"name": "Take a verified backup now",
             "ansible.builtin.include_role": {"name": "infer.forge.backup_operations", "tasks_from": "run"}},
            {"name": "Check the database by the module's FQCN",
             "infer.forge.forge_health": {
                 "checks": ["database"], "database_host": "{{ health_database_host }}",
                 "database_user": "{{ health_database_user | default('infer') }}",
                 "database_password": "{{ health_database_password }}",
                 "database_name": "infer_forge", "timeout": 10.0}},
        ]}])
    assert run.returncode == 0, failed_tasks(run)
    stats = json.loads(run.stdout)["stats"]["compose-db"]
    # The role's tasks from the collection change nothing on a host the checkout's role deployed;
    # the backup now is the run's only change.
    changed = [task_name(task) for play in json.loads(run.stdout)["plays"]
               for task in play["tasks"] if task["hosts"].get("compose-db", {}).get("changed")]
    assert set(changed) <= {"Back up each database now"}, changed
    assert stats["failures"] == 0 and stats["unreachable"] == 0
    [backed_up] = results_of(run, "Back up each database now")["compose-db"]["results"]
    assert backed_up.get("failed") is not True and backed_up["tables"] == 2 and backed_up["rows"] == 5200
    made = set(host.check_output(f"ls -1 {BACKUPS}").split()) - before
    assert {name for name in made if re.fullmatch(r"infer_forge_.+\.sql\.gz\.enc", name)}, made
    health = results_of(run, "Check the database by the module's FQCN")["compose-db"]
    [database] = health["services"]
    assert health["status"] == "healthy" and database["healthy"] is True
    assert database["version"].startswith("17.")  # the Compose db service answered
