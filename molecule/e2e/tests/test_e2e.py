"""The operator's story across the four lab hosts, in order: health, the cron
entry's backup, the restore drill, the off-site copy, the checklist, and a
stale drill that the checklist must catch. Each test builds on the previous one.
"""

import datetime
import json
import os
import re
import shlex
import sys
import time
import xml.etree.ElementTree as ET

import pytest
import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import playbook  # noqa: E402

# The story is told once, from the controller; hosts are reached by name below.
testinfra_hosts = ["docker://e2e-db"]

DB, APP, MONITORING, NAS = "e2e-db", "e2e-app", "e2e-monitoring", "e2e-nas"
OFFSITE_DIR = "/srv/infer-forge-offsite/backups"


def on(name):
    return testinfra.get_host(f"docker://{name}")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("checklist")


def test_deploy_left_every_service_running():
    expected = {DB: ["cron", "prometheus-node-exporter",
                     "prometheus-postgres-exporter", "prometheus-redis-exporter"],
                APP: ["standin-app", "prometheus-node-exporter", "prometheus-blackbox-exporter"],
                MONITORING: ["prometheus", "prometheus-alertmanager"],
                NAS: ["ssh"]}
    for name, units in expected.items():
        for unit in units:
            assert on(name).service(unit).is_running, f"{unit} is not running on {name}"
    # PostgreSQL and Redis are the database host's Compose project, not its own services.
    project = f"forge-{DB}"
    services = on(DB).check_output(f"docker compose -p {project} ps --format '{{{{.Service}}}} {{{{.Health}}}}'")
    assert sorted(services.splitlines()) == ["app healthy", "db healthy", "redis healthy"], services
    db = on(DB).check_output(f"docker compose -p {project} ps -q db")
    assert on(DB).check_output(f"docker exec {db} psql -U infer -d infer_forge -Atc 'SHOW server_version'"
                               ).startswith("17.")
    assert not on(DB).service("postgresql").is_running


def test_deploy_in_check_mode_after_a_deploy_finds_nothing_to_change():
    result = playbook("deploy.yml", "--check", "--diff")
    assert result.returncode == 0, result.stdout[-3000:]
    recap = [line for line in result.stdout.splitlines() if re.match(r"^e2e-\S+\s+: ok=", line)]
    assert len(recap) == 4, result.stdout[-2000:]
    assert all(" changed=0 " in line and " failed=0 " in line for line in recap), "\n".join(recap)


def test_health_playbook_reports_every_service_healthy():
    result = playbook("health.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    for host, service in ((DB, "database"), (DB, "redis"), (APP, "app")):
        assert re.search(rf"{host}\s+{service}\s+healthy", result.stdout), result.stdout[-2000:]


def newest_backup(db):
    return db.check_output("ls -1t /backups/infer_forge_*.sql.gz.enc | head -1")


def test_the_cron_entry_takes_an_encrypted_backup_as_the_backup_user():
    db = on(DB)
    cron = db.file("/etc/cron.d/infer-forge-backup").content_string
    [line] = [entry for entry in cron.splitlines() if "backup_db.sh" in entry and not entry.startswith("#")]
    fields = line.split()
    assert fields[:5] == ["0", "2", "*", "*", "*"] and fields[5] == "infer"
    command = " ".join(fields[6:]).split(" >>")[0]
    before = db.run("ls /backups").stdout.split()
    result = db.run(f"runuser -u infer -- sh -c {shlex.quote(command)}")
    assert result.rc == 0, result.stdout + result.stderr
    path = newest_backup(db)
    assert os.path.basename(path) not in before
    assert db.check_output(f"head -c 8 {path}") == "Salted__"
    manifest = json.loads(db.file(path + ".manifest.json").content_string)
    assert manifest["snapshot_row_counts"] == {"public.customers": 200, "public.orders": 5000}
    # Dumped by the db container's own pg_dump, the command the role derived from the project.
    assert manifest["pg_dump_major_version"] == 17 and manifest["server"]["version"].startswith("17.")
    assert db.file(path).user == "infer" and db.file(path).mode == 0o600


def test_the_restore_drill_restores_that_backup_with_exact_counts():
    db = on(DB)
    path = newest_backup(db)
    result = playbook("restore_drill.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"PASS infer_forge: {os.path.basename(path)}" in result.stdout
    report = json.loads(db.file("/var/lib/infer-forge/reports/restore_drill_infer_forge.json").content_string)
    assert report["passed"] is True and report["backup"] == path
    assert report["checks"]["row_counts"] == "passed"
    assert report["tables_checked"] == 2 and report["rows_checked"] == 5200


def test_the_offsite_copy_is_on_the_nas_encrypted_and_verified():
    db, nas = on(DB), on(NAS)
    result = playbook("offsite.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "OK infer_forge -> infer-offsite@e2e-nas:/srv/infer-forge-offsite/backups" in result.stdout
    name = os.path.basename(newest_backup(db))
    copy = nas.file(f"{OFFSITE_DIR}/{name}")
    assert copy.exists and copy.user == "infer-offsite" and copy.mode == 0o600
    assert nas.file(OFFSITE_DIR).mode == 0o700
    assert nas.check_output(f"head -c 8 {OFFSITE_DIR}/{name}") == "Salted__"
    manifest = json.loads(nas.file(f"{OFFSITE_DIR}/{name}.manifest.json").content_string)
    assert nas.check_output(f"sha256sum {OFFSITE_DIR}/{name}").split()[0] == manifest["sha256"]
    # Nothing but encrypted backups and their checksums and manifests left the host.
    names = nas.check_output(f"ls {OFFSITE_DIR}").split()
    assert names and all(n.endswith((".enc", ".enc.sha256", ".enc.manifest.json")) for n in names), names
    metrics = db.file("/var/lib/infer-forge-metrics/backup/infer_forge_offsite_infer_forge.prom").content_string
    # The sample's value, not only its name: a failed run writes the same line ending in 0.
    success = r'^infer_forge_offsite_last_run_success\{database="infer_forge"(,[^}]*)?\} 1$'
    assert re.search(success, metrics, re.MULTILINE), metrics
    assert re.search(r"infer_forge_offsite_last_success_timestamp_seconds\{[^}]+\} \d+", metrics)


def test_the_backup_hosts_key_cannot_delete_or_overwrite_a_copy_on_the_nas():
    """What whoever takes the backup host can do with its key: nothing to what is there."""
    db, nas = on(DB), on(NAS)
    name = os.path.basename(newest_backup(db))
    listing = f"cd {OFFSITE_DIR} && sha256sum * | sort"
    before = nas.check_output(listing)
    ssh = ("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes "
           "-o UserKnownHostsFile=/etc/infer-forge/offsite_known_hosts "
           "-i /etc/infer-forge/offsite_ed25519 -o IdentitiesOnly=yes")
    as_backup_user = "runuser -u infer -- "
    for command in (f"rm -f {OFFSITE_DIR}/{name}", f"sh -c 'rm -rf {OFFSITE_DIR}'", "id"):
        attempt = db.run(as_backup_user + f"{ssh} infer-offsite@{NAS} {shlex.quote(command)}")
        assert attempt.rc != 0 and "refused: this key may only upload new copies" in attempt.stderr, command
    db.run("mkdir -p /tmp/empty && head -c 4096 /dev/urandom > /tmp/" + name)
    delete = db.run(as_backup_user + f"rsync -r --delete -e {shlex.quote(ssh)} /tmp/empty/ "
                    f"infer-offsite@{NAS}:{OFFSITE_DIR}/")
    assert delete.rc != 0
    for extra in ("", "--inplace", "--ignore-times", "--backup --suffix=.old"):
        db.run(as_backup_user + f"rsync {extra} -e {shlex.quote(ssh)} /tmp/{name} infer-offsite@{NAS}:{OFFSITE_DIR}/")
    assert nas.check_output(listing) == before
    # The account cannot edit its own authorized_keys either.
    keys = nas.file("/srv/infer-forge-offsite/.ssh/authorized_keys")
    assert keys.user == "root" and keys.mode == 0o644 and 'command="/opt/infer-forge/scripts/forge nas-gate' in \
        keys.content_string
    # The NAS's receipt says every copy there is verified, and the host keeps it as evidence.
    receipt = json.loads(nas.file("/srv/infer-forge-offsite/state/receipt.json").content_string)
    assert receipt["ok"] is True and receipt["copies"][name]["verified"] is True
    # Verified means signed under the check key the backup host derives from its passphrase,
    # which the deploy put on the NAS (root's file, the account reads it).
    keys = nas.file("/etc/infer-forge/nas-check.keys")
    assert keys.user == "root" and keys.group == "infer-offsite" and keys.mode == 0o640
    derived = db.check_output("/opt/infer-forge/scripts/forge nas-check-keys --passphrase-file "
                              "/etc/infer-forge/backup.pass")
    key, _hash, _check, _key, key_id = derived.splitlines()[0].split()[:5]
    assert nas.check_output("cat /etc/infer-forge/nas-check.keys").split() == [key]
    assert receipt["copies"][name]["key_id"] == key_id
    # A copy made up by whoever holds only the upload key is kept but never counted.
    forged = "infer_forge_20991231_020000.sql.gz.enc"
    db.run(f"{{ printf Salted__; head -c 4096 /dev/urandom; }} > /tmp/{forged}"
           f" && printf '{{\"file\": \"{forged}\", \"sha256\": \"%s\"}}' $(sha256sum /tmp/{forged} | cut -c1-64)"
           f" > /tmp/{forged}.manifest.json")
    db.run(as_backup_user + f"rsync -e {shlex.quote(ssh)} /tmp/{forged} /tmp/{forged}.manifest.json "
           f"infer-offsite@{NAS}:")
    verify = db.run(as_backup_user + f"{ssh} infer-offsite@{NAS} 'infer-forge verify'")
    assert verify.rc == 0, verify.stderr
    after = json.loads(verify.stdout)
    assert after["copies"][forged]["verified"] is False and after["unverified"] == [forged]
    assert after["copies"][name]["verified"] is True
    metrics = db.file("/var/lib/infer-forge-metrics/backup/infer_forge_offsite_infer_forge.prom").content_string
    assert re.search(r'infer_forge_offsite_far_verify_success\{[^}]+\} 1', metrics), metrics


def test_the_offsite_panels_have_data_in_the_lab_prometheus():
    """The Grafana row for off-site copies, the NAS's receipt included, against live data."""
    mon = on(MONITORING)
    dashboard = json.loads(mon.file("/var/lib/grafana/dashboards/infer-forge/infer-forge-overview.json")
                           .content_string)
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "offsite" in t["expr"]]
    assert len(expressions) == 3
    deadline = time.monotonic() + 120  # node_exporter's textfile is read at the next scrape
    while True:
        empty = []
        for expr in expressions:
            body = json.loads(mon.check_output(
                f"curl -sf -G --data-urlencode {shlex.quote('query=' + expr)} http://127.0.0.1:9090/api/v1/query"))
            if not body["data"]["result"]:
                empty.append(expr)
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert empty == [], f"no data for: {empty}"


def load_report(report_dir):
    with open(report_dir / "checklist-lab.json") as handle:
        return json.load(handle)


def test_the_checklist_passes_every_item_the_lab_can_satisfy(report_dir):
    result = playbook("checklist.yml", "-e", f"checklist_report_dir={report_dir}")
    assert result.returncode == 0, result.stdout[-4000:]
    report = load_report(report_dir)
    status = {row["item"]: row["status"] for row in report["rows"]}
    # Item 2 wants ENVIRONMENT=production; the lab is honestly ENVIRONMENT=lab.
    # 12, beyond the runbook (point-in-time recovery), WARNs: this story has no pitr host (molecule/pitr has).
    assert status == {**{n: "PASS" for n in range(1, 12)}, 2: "WARN", 12: "WARN"}, json.dumps(report["rows"], indent=1)
    hosts = {row["item"]: row["host"] for row in report["rows"]}
    assert hosts[1] == APP and hosts[4] == DB and hosts[7] == MONITORING
    assert "Checklist před nasazením do produkce - lab" in result.stdout
    suite = ET.parse(report_dir / "checklist-lab.junit.xml").getroot()  # noqa: S314 - our own report
    assert suite.get("tests") == "12" and suite.get("failures") == "0"  # a WARN is no failure
    markdown = (report_dir / "checklist-lab.md").read_text()
    assert markdown.count("\n| ") == 13  # the header and 12 items


def test_a_stale_drill_fails_item_4_with_its_evidence(report_dir):
    db = on(DB)
    stale = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=8)
    # Backdate the last drill in both places the checklist reads: the report and the metric.
    backdate = (
        "import json, re, sys; stale = sys.argv[1]; epoch = sys.argv[2]\n"
        "path = '/var/lib/infer-forge/reports/restore_drill_infer_forge.json'\n"
        "report = json.load(open(path)); report['finished_at'] = stale; json.dump(report, open(path, 'w'))\n"
        "path = '/var/lib/infer-forge-metrics/backup/infer_forge_restore_drill_infer_forge.prom'\n"
        "text = re.sub(r'^(infer_forge_restore_drill_last_success_timestamp_seconds\\{[^}]*\\}) .*$',\n"
        "              lambda m: m.group(1) + ' ' + epoch, open(path).read(), flags=re.M)\n"
        "open(path, 'w').write(text)\n")
    db.run_expect([0], f"python3 -c {shlex.quote(backdate)} {stale.isoformat()} {int(stale.timestamp())}")
    # One item on one host, and a verdict as strict as production's.
    result = playbook("checklist.yml", "--tags", "checklist_4", "-l", DB,
                      "-e", f"checklist_report_dir={report_dir}", "-e", '{"checklist_fail_environments": ["lab"]}')
    assert result.returncode != 0
    assert "1 checklist item(s) FAIL in lab: 4" in result.stdout
    rows = {row["item"]: row for row in load_report(report_dir)["rows"]}
    assert rows[4]["status"] == "FAIL" and rows[4]["host"] == DB
    assert f"last passed drill {stale.strftime('%Y-%m-%d %H:%M')} UTC, 8.0 days ago" in rows[4]["evidence"][0]
    assert rows[4]["evidence"][0].endswith("older than 7 days")
    assert "playbooks/restore_drill.yml" in rows[4]["fix"]
    assert {row["status"] for number, row in rows.items() if number != 4} == {"SKIP"}
