"""The backup role on a real host: files, modes, cron, and a backup taken by the
exact command line cron would run, as the backup user."""

import json
import re

import pytest

CRON_FILE = "/etc/cron.d/infer-forge-backup"
TEXTFILE = "/var/lib/infer-forge-metrics/backup/infer_forge_backup_infer_forge.prom"


def cron_command(host):
    lines = [line for line in host.file(CRON_FILE).content_string.splitlines()
             if line and not line.startswith("#") and "backup-infer_forge.env" in line and "backup_db.sh" in line]
    assert len(lines) == 1, lines
    fields = lines[0].split(None, 6)
    assert fields[:5] == ["0", "2", "*", "*", "*"], "daily at 02:00, as in the runbook"
    assert fields[5] == "infer"
    return fields[6]


def test_backup_directory_is_private_to_the_backup_user(host):
    directory = host.file("/backups")
    assert directory.is_directory
    assert directory.user == "infer" and directory.group == "infer"
    assert directory.mode == 0o700


def test_existing_files_were_tightened_to_0600(host):
    assert host.file("/backups/infer_forge_20200101_020000.sql.gz.note").mode == 0o600


def test_config_and_passphrase_are_readable_only_by_the_backup_user(host):
    passphrase = host.file("/etc/infer-forge/backup.pass")
    assert passphrase.user == "infer" and passphrase.mode == 0o600
    # The config decides what runs, as root too under `sudo backup_db.sh`: only root writes it.
    config = host.file("/etc/infer-forge/backup-infer_forge.env")
    assert (config.user, config.group, config.mode) == ("root", "infer", 0o640)
    assert host.run("runuser -u infer -- sh -c ': >> /etc/infer-forge/backup-infer_forge.env'").rc != 0
    assert "POSTGRES_DB=infer_forge" in host.file("/etc/infer-forge/backup-infer_forge.env").content_string


def test_cron_entry_matches_the_runbook(host):
    command = cron_command(host)
    assert command.endswith(">> /var/log/infer-backup.log 2>&1")
    assert "/opt/infer-forge/scripts/backup_db.sh" in command
    assert host.service("cron").is_running


def test_logrotate_config_is_valid(host):
    assert host.run("logrotate -d /etc/logrotate.d/infer-forge-backup").rc == 0


@pytest.fixture(scope="module")
def scheduled_run(host):
    """Run the cron entry's command exactly, as the backup user, like cron would."""
    command = cron_command(host)
    result = host.run("su -s /bin/sh infer -c %s", command)
    assert result.rc == 0, result.stderr
    newest = host.check_output("ls -1t /backups/*.sql.gz.enc | head -1")
    return newest


def test_scheduled_run_writes_an_encrypted_backup_with_manifest(host, scheduled_run):
    assert re.search(r"/backups/infer_forge_\d{8}_\d{6}\.sql\.gz\.enc$", scheduled_run)
    for path in (scheduled_run, scheduled_run + ".manifest.json", scheduled_run + ".sha256"):
        item = host.file(path)
        assert item.user == "infer" and item.group == "infer" and item.mode == 0o600, path
    manifest = json.loads(host.file(scheduled_run + ".manifest.json").content_string)
    assert manifest["snapshot_row_counts"] == {"public.customers": 50, "public.orders": 1000}
    assert manifest["encryption"]["cipher"] == "aes-256-cbc"
    assert host.run("cd /backups && sha256sum -c %s", scheduled_run.split("/")[-1] + ".sha256").rc == 0


def test_runbook_openssl_restore_works_on_the_scheduled_backup(host, scheduled_run):
    count = host.check_output(
        "su postgres -c 'createdb -O infer drill_check' && "
        "openssl enc -aes-256-cbc -d -pbkdf2 -pass file:/etc/infer-forge/backup.pass -in %s | gunzip "
        "| PGPASSWORD=molecule-db-pw psql -q -h 127.0.0.1 -U infer -d drill_check >/dev/null && "
        "PGPASSWORD=molecule-db-pw psql -tA -h 127.0.0.1 -U infer -d drill_check -c 'SELECT COUNT(*) FROM orders'",
        scheduled_run)
    host.run("su postgres -c 'dropdb drill_check'")
    assert count.strip() == "1000"


def test_scheduled_run_logs_the_runbook_lines(host, scheduled_run):
    log = host.file("/var/log/infer-backup.log").content_string
    assert f"Starting backup: {scheduled_run}" in log
    assert re.search(r"^Backup complete: \d", log, re.M)
    assert "Done. Remaining backups:" in log


def test_scheduled_run_writes_metrics(host, scheduled_run):
    metrics = host.file(TEXTFILE).content_string
    assert 'infer_forge_backup_last_run_success{database="infer_forge"} 1' in metrics
    assert re.search(r'infer_forge_backup_last_success_timestamp_seconds\{database="infer_forge"\} \d+', metrics)


DRILL_TEXTFILE = "/var/lib/infer-forge-metrics/backup/infer_forge_restore_drill_infer_forge.prom"


def test_restore_drill_passed_and_recorded_its_metrics(host):
    metrics = host.file(DRILL_TEXTFILE).content_string
    assert 'infer_forge_restore_drill_last_run_success{database="infer_forge"} 1' in metrics
    assert 'infer_forge_restore_drill_tables_checked{database="infer_forge"} 2' in metrics
    assert 'infer_forge_restore_drill_rows_checked{database="infer_forge"} 1050' in metrics
    report = json.loads(host.file("/var/lib/infer-forge/reports/restore_drill_infer_forge.json").content_string)
    assert report["passed"] is True
    assert report["checks"] == {"signature": "passed", "row_counts": "passed", "sha256": "passed"}
    assert report["verdict"] == "PASS"
    assert report["sql_checks"][0]["value"] == 1000


def test_the_drills_scratch_database_is_gone(host):
    databases = host.check_output("su postgres -c \"psql -tAc 'SELECT datname FROM pg_database'\"").split()
    assert "infer_forge" in databases
    assert "infer_forge_restore_drill" not in databases


def test_cron_also_schedules_a_weekly_drill(host):
    lines = [line for line in host.file(CRON_FILE).content_string.splitlines()
             if "restore_db.sh drill" in line and "backup-infer_forge.env" in line]
    assert len(lines) == 1
    assert lines[0].split()[:6] == ["30", "4", "*", "*", "0", "infer"]


def test_compose_sidecar_runs_the_same_backup_from_its_own_cron(host):
    """The runbook's sidecar, rendered (the compose scenario runs it): cron inside it runs the
    host's backup_db.sh as the backup user, with the same settings but the container's paths."""
    import yaml

    compose = yaml.safe_load(host.file("/opt/infer-forge/docker-compose.backup.yml").content_string)
    backup = compose["services"]["backup"]
    assert compose["name"] == "infer-forge-backup"
    assert backup["build"]["dockerfile_inline"].startswith("FROM postgres:17-bookworm")
    assert backup["environment"]["BACKUP_USER"] == "infer"
    assert backup["environment"]["BACKUP_UID"] == host.check_output("id -u infer")
    assert "/backups:/backups" in backup["volumes"]
    assert "/etc/infer-forge/backup.pass:/run/secrets/backup_passphrase:ro" in backup["volumes"]
    assert "cron" in [line.strip() for line in backup["entrypoint"][-1].splitlines()]
    cron = host.file("/etc/infer-forge/sidecar/cron")
    assert cron.user == "root" and cron.mode == 0o644
    entries = [line for line in cron.content_string.splitlines() if "backup_db.sh" in line]
    # One line per database, each with its own config (the two similar names included).
    assert len(entries) == 3 and len({line.split("BACKUP_CONFIG=")[1].split()[0] for line in entries}) == 3
    [entry] = [line for line in entries if "backup-infer_forge.env " in line]
    assert entry.split()[:6] == ["0", "2", "*", "*", "*", "infer"]
    assert "BACKUP_CONFIG=/etc/infer-forge/backup-infer_forge.env /opt/infer-forge/scripts/backup_db.sh" in entry
    config = host.file("/etc/infer-forge/sidecar/backup-infer_forge.env")
    assert (config.user, config.group, config.mode) == ("root", "infer", 0o640)
    settings = dict(line.split("=", 1) for line in config.content_string.splitlines() if "=" in line
                    and not line.startswith("#"))
    assert settings["POSTGRES_HOST"] == "db" and settings["POSTGRES_PORT"] == "5432"
    assert settings["BACKUP_DIR"] == "/backups" and settings["RETENTION_DAYS"] == "30"
    assert settings["BACKUP_PASSPHRASE_FILE"] == "/run/secrets/backup_passphrase"
    assert "BACKUP_DUMP_COMMAND" not in settings and "OFFSITE_TARGET" not in settings


SIMILAR = {'we"ird db': 3, "we_ird_db": 5}


def test_two_names_that_sanitise_alike_get_two_configs_two_schedules_two_backups_and_pass_item_3(host):
    """`we"ird db` sanitises to `we_ird_db`, another database's own name: once they shared a config
    file, so one was never backed up, and checklist item 3 failed for the one needing a hash."""
    import hashlib
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
    from controller import ansible

    stems = {'we"ird db': "we_ird_db-" + hashlib.sha256(b'we"ird db').hexdigest()[:8], "we_ird_db": "we_ird_db"}
    cron = host.file(CRON_FILE).content_string
    for name, stem in stems.items():
        config = host.file(f"/etc/infer-forge/backup-{stem}.env").content_string
        assert f"POSTGRES_DB={name}\n" in config
        [entry] = [line for line in cron.splitlines() if f"backup-{stem}.env " in line and "backup_db.sh" in line]
        command = entry.split(None, 6)[6]
        ran = host.run("su -s /bin/sh infer -c %s", command)
        assert ran.rc == 0, ran.stderr
        newest = host.check_output(f"ls -1t /backups/{stem}_*.sql.gz.enc | head -1")
        manifest = json.loads(host.file(newest + ".manifest.json").content_string)
        assert manifest["database"] == name
        assert manifest["snapshot_row_counts"] == {"public.orders": SIMILAR[name]}
    run = ansible("backup-db", "--become", "-m", "forge_checklist", "-a",
                  json.dumps({"item": 3, "databases": list(stems), "environment": "lab"}), "-o", timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.split("=>", 1)[1])
    assert result["status"] == "PASS", result["evidence"]
    assert [line.split(":")[0] for line in result["evidence"]] == list(stems)
