"""Cron itself runs the scheduled jobs, in cron's own environment.

Every other test runs a cron entry's command by hand. Here the backup role is converged
again with only the time fields of its entries moved to the next minute (the same template
and variables otherwise, plus one database that does not exist), the test waits for cron,
and then reads what the runs left: the backup, the drill's report and the off-site copy's
metrics, each with its runbook lines in /var/log/infer-backup.log; the failing job's
one-line error, its metric at 0 and its event at the lab's stand-in Sentry. The proof that
cron ran them, and nobody else, is cron's own CMD lines in the journal, inside the window.
Then the real schedule is converged back, and a second run changes nothing.
"""

import json
import os
import re
import sys
import time

import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import REPO, playbook  # noqa: E402

testinfra_hosts = ["docker://e2e-db"]

DB, MONITORING = "e2e-db", "e2e-monitoring"
LOG = "/var/log/infer-backup.log"
TEXTFILES = "/var/lib/infer-forge-metrics/backup"
MISSING = "no_such_db"
# Cron's granularity is a minute; the role's converge must be done before the minute starts.
CONVERGE_MARGIN = 75


def keep_evidence(text):
    """Append to .cache/test-logs/cron-fired.txt on the controller, next to the stage logs."""
    path = os.path.join(REPO, ".cache", "test-logs", "cron-fired.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:
        handle.write(text + "\n")


def on(name):
    return testinfra.get_host(f"docker://{name}")


def converge_backup_role(extra=None):
    args = ["--tags", "backup", "-l", DB] + (["-e", json.dumps(extra)] if extra else [])
    result = playbook("deploy.yml", *args, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    [recap] = [line for line in result.stdout.splitlines() if re.match(rf"^{DB}\s+: ok=", line)]
    return int(re.search(r"changed=(\d+)", recap).group(1))


def metric(host, name, database, job):
    text = host.file(f"{TEXTFILES}/infer_forge_{job}_{database}.prom").content_string
    found = re.search(rf'^infer_forge_{job}_{name}\{{database="{database}"[^}}]*\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def test_cron_fires_the_backup_the_drill_and_the_offsite_copy_and_a_failing_job_is_reported():
    db, monitoring = on(DB), on(MONITORING)
    started = time.monotonic()
    now = int(db.check_output("date +%s"))
    fire = (now + CONVERGE_MARGIN + 59) // 60 * 60
    minute, hour = db.check_output(f"date -d @{fire} '+%-M %-H'").split()
    schedule = {"backup_cron_minute": minute, "backup_cron_hour": hour, "backup_cron_weekday": "*",
                "backup_drill_cron_minute": minute, "backup_drill_cron_hour": hour, "backup_drill_cron_weekday": "*",
                "backup_offsite_cron_minute": minute, "backup_offsite_cron_hour": hour,
                "backup_databases": ["infer_forge", MISSING]}
    backups_before = set(db.check_output("ls /backups").split())
    log_offset = db.file(LOG).size if db.file(LOG).exists else 0
    sentry_offset = monitoring.file("/var/tmp/sentry-envelopes").size
    last_runs = {job: metric(db, "last_run_timestamp_seconds", "infer_forge", job)
                 for job in ("backup", "restore_drill", "offsite")}
    try:
        assert converge_backup_role(schedule) > 0
        assert int(db.check_output("date +%s")) < fire, "the converge ended after the minute it scheduled"
        entries = [line for line in db.file("/etc/cron.d/infer-forge-backup").content_string.splitlines()
                   if line.startswith(f"{minute} {hour} ")]
        assert len(entries) == 6, entries  # backup, drill and off-site copy of each database
        deadline = fire + 150
        while int(db.check_output("date +%s")) < deadline:
            done = [metric(db, "last_run_timestamp_seconds", "infer_forge", job) or 0 for job in last_runs]
            failed = db.file(f"{TEXTFILES}/infer_forge_backup_{MISSING}.prom").exists
            if failed and all(value >= fire for value in done):
                break
            time.sleep(3)
        window_end = int(db.check_output("date +%s"))
        appended = db.check_output(f"tail -c +{log_offset + 1} {LOG}")
        keep_evidence(f"--- {LOG}, appended between {fire} and {window_end} (epoch seconds):\n{appended}")

        # Cron ran each command, in the window, and nothing else did.
        journal = db.check_output(f"journalctl -u cron -o short-unix --no-pager --since @{fire - 1}")
        keep_evidence(f"--- journalctl -u cron since {fire - 1}:\n{journal}")
        commands = re.findall(r"^(\d+)\.\d+ \S+ CRON\[\d+\]: \(infer\) CMD \((.*)\)$", journal, re.M)
        fired = {command for stamp, command in commands if fire <= int(stamp) <= window_end}
        for script in ("backup-infer_forge.env /opt/infer-forge/scripts/backup_db.sh",
                       "backup-infer_forge.env /opt/infer-forge/scripts/restore_db.sh drill",
                       "backup-infer_forge.env /opt/infer-forge/scripts/offsite_copy.sh",
                       f"backup-{MISSING}.env /opt/infer-forge/scripts/backup_db.sh"):
            assert any(script in command for command in fired), f"cron did not run {script}: {sorted(fired)}"

        # The backup: a new verified file, the runbook's lines, the metrics moved.
        [new] = [name for name in set(db.check_output("ls /backups").split()) - backups_before
                 if name.endswith(".sql.gz.enc")]
        stamp = time.mktime(time.strptime(re.search(r"_(\d{8}_\d{6})\.", new).group(1), "%Y%m%d_%H%M%S"))
        assert fire <= stamp <= window_end, (new, fire, window_end)
        assert db.run(f"cd /backups && sha256sum -c {new}.sha256").rc == 0
        assert f"Starting backup: /backups/{new}" in appended
        assert re.search(r"^Backup complete: \d", appended, re.M) and "Done. Remaining backups:" in appended
        for job in last_runs:
            assert metric(db, "last_run_success", "infer_forge", job) == 1, job
            assert metric(db, "last_run_timestamp_seconds", "infer_forge", job) > (last_runs[job] or 0), job

        # The drill: a new report that passed, and its verdict line in the log.
        report = json.loads(db.file("/var/lib/infer-forge/reports/restore_drill_infer_forge.json").content_string)
        assert report["verdict"] == "PASS" and report["checks"]["row_counts"] == "passed"
        assert re.search(r"^PASS: /backups/infer_forge_\d{8}_\d{6}\.sql\.gz\.enc: 2 tables, 5200 rows checked",
                         appended, re.M), appended
        # The off-site copy: its line in the log, and the NAS's receipt in the metrics.
        assert re.search(r"^Off-site copy \S+: infer_forge -> infer-offsite@", appended, re.M), appended
        assert metric(db, "far_verify_success", "infer_forge", "offsite") == 1

        # The job that must fail: one line in the log, its metric at 0, an event at Sentry, nothing deleted.
        # (The drill and the off-site copy of that database have no backup to work on and fail too.)
        errors = [line for line in appended.splitlines() if line.startswith("ERROR: ") and MISSING in line]
        assert errors, appended
        assert metric(db, "last_run_success", MISSING, "backup") == 0
        events = monitoring.check_output(f"tail -c +{sentry_offset + 1} /var/tmp/sentry-envelopes")
        assert MISSING in events and '"level":"error"' in events.replace(" ", ""), events[-2000:]
        assert backups_before <= set(db.check_output("ls /backups").split()), "a failing run deleted something"
    finally:
        # The real schedule again; a database that does not exist leaves nothing the next run would read.
        db.run(f"rm -f /etc/infer-forge/backup-{MISSING}.env {TEXTFILES}/infer_forge_*_{MISSING}.prom "
               f"/var/lib/infer-forge/reports/*_{MISSING}.json")
        assert converge_backup_role() > 0
    assert converge_backup_role() == 0, "the real schedule is not idempotent"
    fields = [line.split()[:5] for line in db.file("/etc/cron.d/infer-forge-backup").content_string.splitlines()
              if "backup_db.sh" in line and not line.startswith("#")]
    assert fields == [["0", "2", "*", "*", "*"]]
    keep_evidence(f"--- added time: {time.monotonic() - started:.0f} s")
