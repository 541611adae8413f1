"""The infer.forge collection outside this repository, on the Barman host: the built tarball
installed into an empty collections path, and a playbook that names everything by its FQCN,
run from a directory where neither this checkout's ansible.cfg nor its roles/, library/ and
module_utils/ are in reach. The pitr role from the collection finds the host as the deploy
left it (no change, barman check green), its operations role runs the PITR drill with exact
counts, and forge_health reaches the database Barman streams from.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import collection_playbook, failed_tasks, installed_collection, results_of, task_name  # noqa: E402

testinfra_hosts = ["docker://pitr-barman"]

REPORT = "/var/lib/barman/infer-forge-reports/pitr_drill_infer-forge.json"
DRILL = "Recover a fresh restore point into a scratch cluster and compare the counts exactly"


def test_the_installed_collection_runs_the_pitr_role_the_drill_and_a_health_check_by_fqcn(host, tmp_path):
    env, collection = installed_collection(str(tmp_path))
    assert os.path.isdir(os.path.join(collection, "roles", "pitr_operations"))
    # As production does: the NAS's certificate given (read on the NAS, compared out of band), not
    # the lab's pin of what the NAS play published in the same run (this playbook has no NAS play).
    pinned = host.file("/etc/infer-forge/pitr-offsite-ca.pem").content_string
    assert pinned.startswith("-----BEGIN CERTIFICATE-----")
    run = collection_playbook(str(tmp_path), env, [{
        "name": "Point-in-time recovery from the installed collection",
        "hosts": "pitr", "become": True, "gather_facts": False,
        "vars": {"pitr_offsite_cacert_from_nas": False, "pitr_offsite_cacert": pinned},
        "roles": [{"role": "infer.forge.pitr"}],
        "tasks": [
            {"name": "Run the PITR drill",
             "ansible.builtin.include_role": {"name": "infer.forge.pitr_operations", "tasks_from": "drill"}},
            {"name": "Check the database by the module's FQCN",
             "infer.forge.forge_health": {
                 "checks": ["database"], "database_host": "{{ pitr_postgres_host }}", "database_user": "infer",
                 "database_password": "{{ pitr_test_postgres_password }}", "database_name": "infer_forge",
                 "timeout": 10.0}},
        ]}])
    assert run.returncode == 0, failed_tasks(run)
    outcome = json.loads(run.stdout)
    assert outcome["stats"]["pitr-barman"]["failures"] == 0
    # The role from the collection changes nothing on the host the checkout's role deployed
    # (the drill is the one task that reports a change: it made a restore point).
    changed = [task_name(task) for play in outcome["plays"] for task in play["tasks"]
               if task["hosts"].get("pitr-barman", {}).get("changed")]
    assert set(changed) <= {DRILL}, changed
    drill = results_of(run, DRILL)
    assert drill["pitr-barman"]["verdict"] == "PASS", drill["pitr-barman"].get("reason")
    report = json.loads(host.check_output(f"cat {REPORT}"))
    assert report["verdict"] == "PASS" and report["checks"]["row_counts"] == "passed", report
    health = results_of(run, "Check the database by the module's FQCN")["pitr-barman"]
    [database] = health["services"]
    assert health["status"] == "healthy" and database["healthy"] is True
    assert database["version"].startswith("17.")
