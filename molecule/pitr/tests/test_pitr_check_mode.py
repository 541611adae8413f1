"""Every PITR and DR playbook in --check, on the scenario's hosts after the real runs of
test_pitr.py (file order): nothing changes on the Barman host, the NAS or the database, and no
run prints a result it only would have had.

Before and after the check runs, the hosts are fingerprinted: every file of ours (path, size,
mode, owner, mtime) on the Barman host and the NAS, Barman's catalog of base backups, the scratch
clusters, the scenario's Docker volumes and containers (a put-back moves a volume aside; the DR
drill kills the database), and on the database its roles, replication slots, databases,
postgresql.auto.conf (what ALTER SYSTEM writes), pg_hba.conf and a digest of the table the tests
write. The two
must be equal. Cron is stopped on both hosts meanwhile, so that nothing but the check runs could
change a file; Barman's own WAL streaming goes on and is not watched.
"""

import os
import re
import subprocess
import sys

import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import compose_container, playbook  # noqa: E402

testinfra_hosts = ["docker://pitr-barman"]

PROJECT = "forge-pitr"
WATCHED = {
    "pitr-barman": ("/etc/barman.d", "/etc/infer-forge", "/etc/cron.d", "/opt/infer-forge",
                    "/var/lib/barman/infer-forge-reports", "/var/lib/barman/infer-forge-scratch",
                    "/var/lib/barman/infer-forge/base", "/var/lib/infer-forge-metrics", "/var/lib/infer-forge",
                    "/var/lib/barman/.pgpass"),
    "pitr-nas": ("/srv/infer-forge-pitr", "/etc/infer-forge", "/etc/cron.d", "/opt/infer-forge"),
}
PSQL = "psql -X -q -U infer -d infer_forge -Atc"
DATABASE_STATE = {
    "roles": "SELECT string_agg(rolname || ':' || rolsuper || rolreplication || rolcanlogin, ',' ORDER BY rolname) "
             "FROM pg_roles",
    "slots": "SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') FROM pg_replication_slots",
    "databases": "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database",
    # The file ALTER SYSTEM writes, not what the server has loaded (a change needs no reload to be one).
    "settings": "SELECT md5(pg_read_file('postgresql.auto.conf'))",
    "hba": "SELECT md5(string_agg(type || database::text || user_name::text || coalesce(address, '') || "
           "auth_method, ',' ORDER BY line_number)) FROM pg_hba_file_rules",
    "ticks": "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t.id)), '') FROM pitr_ticks t",
}


def subnet():
    out = subprocess.run(["docker", "network", "inspect", "infer-forge-pitr", "-f",
                          "{{(index .IPAM.Config 0).Subnet}}"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.split("\n")


CHECK_RUNS = [
    ("pitr.yml", ["--diff"]),
    ("pitr_drill.yml", []),
    ("pitr_restore.yml", []),
    ("pitr_restore.yml", ["-e", "pitr_target_name=before_nothing"]),
    ("pitr_offsite.yml", []),
    ("pitr_offsite.yml", ["-e", "pitr_offsite_action=check"]),
    ("pitr_offsite.yml", ["-e", "pitr_offsite_action=prune"]),
    ("dr_restore.yml", ["-e", "dr_confirm=pitr-barman"]),
    ("dr_drill.yml", ["-e", "dr_confirm=pitr-barman"]),
]
# What each run, had it only said what it would do, must never print: the real run's result line.
CLAIMS = {
    "pitr_drill.yml": re.compile(r"\b(PASS|FAIL) infer-forge: "),
    "pitr_restore.yml": re.compile(r"\brecovered in [\d.]+ s into\b"),
    "pitr_offsite.yml": re.compile(r"\b(PASS|FAIL) infer-forge -> |\bpruned \d+ snapshot"),
    "dr_restore.yml": re.compile(r"\bserved on port \d+|\bdatabase back in [\d.]+ s|\bBarman streams timeline\b"),
    "dr_drill.yml": re.compile(r"\b(PASS|FAIL) forge-pitr: |\bserved on port \d+|\bdatabase back in [\d.]+ s"),
}


def fingerprint(barman):
    state = {}
    for name, paths in WATCHED.items():
        host = testinfra.get_host(f"docker://{name}")
        # find exits 1 for the watched paths a host has not got; what it lists is the point.
        listing = host.run("find " + " ".join(paths) + " -xdev -printf '%p %s %m %u %T@\\n' 2>/dev/null | sort")
        state[name] = listing.stdout.splitlines()
        assert state[name], f"nothing of ours found on {name}: {listing.stderr}"
    state["catalog"] = barman.check_output("runuser -u barman -- barman -f json list-backups infer-forge")
    # This scenario's alone: the other lane's scenarios make and remove theirs meanwhile.
    state["volumes"] = sorted(name for name in docker("volume", "ls", "-q") if "pitr" in name)
    state["containers"] = sorted(line for line in docker("ps", "-a", "--format", "{{.Names}} {{.State}} {{.Image}}")
                                 if "pitr" in line.split(" ", 1)[0])
    assert state["volumes"] and len(state["containers"]) >= 4, (state["volumes"], state["containers"])
    container = compose_container(barman, PROJECT, "db")
    for key, query in DATABASE_STATE.items():
        state[key] = barman.check_output(f"docker exec {container} {PSQL} \"{query}\"")
    return state


def test_every_pitr_and_dr_playbook_in_check_mode_changes_nothing_and_claims_nothing(host):
    pitr_nas = testinfra.get_host("docker://pitr-nas")
    # The table the tests write (test_pitr.py makes it too): rows whose digest must not move.
    container = compose_container(host, PROJECT, "db")
    host.check_output(f"docker exec {container} {PSQL} \"CREATE TABLE IF NOT EXISTS pitr_ticks (id bigserial "
                      "PRIMARY KEY, at timestamptz DEFAULT now()); INSERT INTO pitr_ticks DEFAULT VALUES\"")
    for each in (host, pitr_nas):
        each.check_output("systemctl stop cron")
    try:
        before = fingerprint(host)
        assert any("/base/" in line for line in before["pitr-barman"]), "no base backup to watch"
        said = {}
        for name, args in CHECK_RUNS:
            if name.startswith("dr_"):
                args = [*args, "-e", f"pitr_putback_client={subnet()}"]
            result = playbook(name, "--check", *args, timeout=900)
            assert result.returncode == 0, f"{name} {args} --check failed:\n{result.stdout[-3000:]}"
            said[name] = said.get(name, "") + result.stdout
        after = fingerprint(host)
    finally:
        for each in (host, pitr_nas):
            each.run("systemctl start cron")
    for key in before:
        if before[key] != after[key]:
            if isinstance(before[key], list):
                gone, new = set(before[key]) - set(after[key]), set(after[key]) - set(before[key])
                raise AssertionError(f"--check changed {key}: gone {sorted(gone)[:10]}, new {sorted(new)[:10]}")
            raise AssertionError(f"--check changed {key}: {before[key]!r} -> {after[key]!r}")
    claims = [f"{name}: {line.strip()}" for name, claim in CLAIMS.items() for line in said[name].splitlines()
              if claim.search(line) and "would" not in line]
    assert claims == [], "check mode printed results it never computed:\n" + "\n".join(claims)
    for name in ("pitr_drill.yml", "pitr_restore.yml", "pitr_offsite.yml", "dr_restore.yml", "dr_drill.yml"):
        assert "would" in said[name], f"{name} --check does not say what it would do:\n{said[name][-2000:]}"
