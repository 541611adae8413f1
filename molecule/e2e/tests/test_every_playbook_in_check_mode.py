"""Every playbook the lab can run, in --check, after the story's real runs: nothing changes on any
host, and nothing says it did what it only would have done.

Runs after test_e2e.py (file order), when the hosts hold backups, a drill report, off-site
copies and a checklist: each playbook then has real work it would do. Before and after the
check runs, each host's state is fingerprinted: every file (path, size, mode, owner, mtime)
where our roles and jobs write (backups, config, cron, reports, metrics, the NAS's copies),
the databases of the Compose server, and a digest of every row of the app's tables. The two
must be equal.
"""

import os
import re
import sys

import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import playbook  # noqa: E402

testinfra_hosts = ["docker://e2e-db"]

HOSTS = ("e2e-db", "e2e-app", "e2e-monitoring", "e2e-nas")
# Where anything of ours is written: the roles' files, the jobs' backups, reports, metrics and
# state, the NAS's copies and receipts. Prometheus's own TSDB and the journals change by themselves.
WATCHED = ("/backups", "/etc/infer-forge", "/etc/cron.d", "/etc/logrotate.d", "/etc/prometheus", "/etc/grafana",
           "/etc/filebeat", "/opt/infer-forge", "/var/lib/infer-forge", "/var/lib/infer-forge-metrics",
           "/var/lib/grafana/dashboards", "/srv/infer-forge-offsite", "/var/log/infer-backup.log")
# Not here: pitr*.yml and dr_*.yml need a Barman host (molecule/pitr/tests/test_pitr_check_mode.py
# runs them in --check); lab_services.yml is the lab's own stand-ins.
CHECK_RUNS = [
    ("deploy.yml", ["--diff"]),
    ("health.yml", []),
    ("backup.yml", []),
    ("restore_drill.yml", []),
    ("restore.yml", ["-e", "backup_restore_target=infer_forge_from_check",
                     "-e", "backup_restore_confirm=infer_forge_from_check"]),
    ("offsite.yml", []),
    ("offsite_restore.yml", ["-e", "backup_restore_target=infer_forge_from_check",
                             "-e", "backup_restore_confirm=infer_forge_from_check"]),
    ("checklist.yml", []),
]
# What each run, had it only said what it would do, must never print: the real run's result line.
CLAIMS = {
    "backup.yml": re.compile(r"\.sql\.gz(\.enc)?: [\d.]+ [KMG]?B, \d+ tables"),
    "restore_drill.yml": re.compile(r"\bPASS \S+: \S+\.sql"),
    "restore.yml": re.compile(r"\brestored \S+ into\b"),
    "offsite.yml": re.compile(r"\b\d+ copied and verified\b"),
    "offsite_restore.yml": re.compile(r"\brestored \S+ into\b"),
}


def fingerprint():
    state = {}
    for name in HOSTS:
        host = testinfra.get_host(f"docker://{name}")
        # find exits 1 for the watched paths a host has not got; what it lists is the point.
        listing = host.run("find " + " ".join(WATCHED) + " -xdev -printf '%p %s %m %u %T@\\n' 2>/dev/null | sort")
        state[name] = listing.stdout.splitlines()
        assert state[name], f"nothing of ours found on {name}: {listing.stderr}"
    db = testinfra.get_host("docker://e2e-db")
    container = db.check_output("docker compose -p forge-e2e-db ps -q db")
    listing = "psql -U infer -d postgres -Atc 'SELECT datname FROM pg_database ORDER BY 1'"
    state["databases"] = db.check_output(f"docker exec {container} {listing}").splitlines()
    # And what the app's database holds, row by row (the stand-in app only reads it).
    contents = ("psql -U infer -d infer_forge -Atc \"SELECT (SELECT md5(string_agg(c::text, ',' ORDER BY c.id)) "
                "FROM customers c), (SELECT md5(string_agg(o::text, ',' ORDER BY o.id)) FROM orders o)\"")
    state["contents"] = db.check_output(f"docker exec {container} {contents}").splitlines()
    assert len(state["contents"]) == 1 and state["contents"][0].count("|") == 1, state["contents"]
    return state


def test_every_playbook_in_check_mode_changes_nothing_on_any_host_and_claims_nothing_it_did_not_do():
    before = fingerprint()
    assert len(before["e2e-db"]) > 20 and any(line.startswith("/backups/infer_forge_") for line in before["e2e-db"])
    said = {}
    for name, args in CHECK_RUNS:
        result = playbook(name, "--check", *args)
        assert result.returncode == 0, f"{name} --check failed:\n{result.stdout[-3000:]}"
        said[name] = result.stdout
    after = fingerprint()
    for key in before:
        if before[key] != after[key]:
            gone, new = set(before[key]) - set(after[key]), set(after[key]) - set(before[key])
            raise AssertionError(f"--check changed {key}: gone {sorted(gone)[:10]}, new {sorted(new)[:10]}")
    claims = [f"{name}: {line.strip()}" for name, claim in CLAIMS.items() for line in said[name].splitlines()
              if claim.search(line)]
    assert claims == [], "check mode printed results it never computed:\n" + "\n".join(claims)
    for name in ("backup.yml", "restore_drill.yml", "restore.yml", "offsite.yml", "offsite_restore.yml"):
        assert "would" in said[name], f"{name} --check does not say what it would do:\n{said[name][-2000:]}"
