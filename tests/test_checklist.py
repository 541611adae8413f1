"""The production checklist's host-side items against real files, a real backup,
a real restore drill and real logrotate. Items 7 and 9 ask a live Prometheus and
Alertmanager: test_checklist_monitoring.py runs them against real ones."""

import datetime
import json
import os
import subprocess

import pytest
import yaml

from forge.checklist import ITEMS, Checklist, report

from helpers import REPO, backups_in, manifest_of, run_backup_script, signing_passphrase_file
from servers import load_sample_data

DSN = "https://0123456789abcdef@o1.ingest.sentry.io/4242"


def check(number, clock=None, **settings):
    checklist = Checklist(settings) if clock is None else Checklist(settings, clock=clock)
    return checklist.run(number)


@pytest.fixture
def env_file(tmp_path):
    def write(text):
        path = tmp_path / ".env"
        path.write_text(text)
        return str(path)
    return write


def test_item_1_sentry_dsn_passes_without_showing_the_key(env_file):
    path = env_file(f"DATABASE_URL=x\nSENTRY_DSN={DSN}\n")
    result = check(1, env_file=path)
    assert result["status"] == "PASS"
    assert result["evidence"] == [f"SENTRY_DSN=https://***@o1.ingest.sentry.io/4242 in {path}"]
    assert "0123456789abcdef" not in json.dumps(result)
    assert result["label"] == "Nastavit SENTRY_DSN v .env"


@pytest.mark.parametrize("line, evidence", [
    ("SENTRY_DSN=\n", "SENTRY_DSN is empty or missing"),
    ("SENTRY_DSN=not-a-dsn\n", "SENTRY_DSN is not a valid DSN (expected https://KEY@HOST/PROJECT_ID)"),
])
def test_item_1_fails_for_an_empty_or_invalid_dsn(env_file, line, evidence):
    result = check(1, env_file=env_file(line))
    assert result["status"] == "FAIL" and result["evidence"][0].startswith(evidence)


def test_item_1_fails_when_the_env_file_is_missing(tmp_path):
    result = check(1, env_file=str(tmp_path / "nope.env"))
    assert result["status"] == "FAIL" and result["evidence"] == [f"{tmp_path / 'nope.env'} does not exist"]


@pytest.mark.parametrize("value, environment, status", [
    ("production", "production", "PASS"),
    ("development", "production", "FAIL"),
    ("lab", "lab", "WARN"),
])
def test_item_2_environment(env_file, value, environment, status):
    result = check(2, env_file=env_file(f"ENVIRONMENT={value}\n"), environment=environment)
    assert result["status"] == status
    assert result["evidence"][0].startswith(f"ENVIRONMENT={value} in ")


@pytest.fixture
def backup(pg, fresh_db, backup_dir):
    load_sample_data(pg, fresh_db, customers=10, orders=100)
    assert run_backup_script(pg, fresh_db, backup_dir).returncode == 0
    [path] = backups_in(backup_dir)
    return fresh_db, path


def cron_line(database):
    return (f"0 2 * * * infer BACKUP_CONFIG=/etc/infer-forge/backup-{database}.env "
            "/opt/infer-forge/scripts/backup_db.sh >> /var/log/infer-backup.log 2>&1\n")


def test_item_3_scheduled_and_fresh_passes_then_fails_when_stale(backup, backup_dir, tmp_path):
    database, path = backup
    cron = tmp_path / "cron"
    cron.write_text("# other\n" + cron_line(database))
    settings = dict(databases=[database], backup_dir=backup_dir, cron_file=str(cron),
                    compose_file=str(tmp_path / "none.yml"),
                    config_dir=os.path.dirname(signing_passphrase_file()))  # where backup.pass lives
    result = check(3, **settings)
    assert result["status"] == "PASS", result
    expected = f"{database}: scheduled (cron 0 2 * * *); newest {os.path.basename(path)}, "
    assert result["evidence"][0].startswith(expected)
    # Without the passphrase the signatures cannot be checked: never better than a WARN.
    blind = check(3, **dict(settings, config_dir=str(tmp_path)))
    assert blind["status"] == "WARN"
    assert blind["evidence"][-1] == (f"manifest signatures not checked: passphrase file {tmp_path}/backup.pass "
                                     "does not exist")
    later = datetime.datetime.now().timestamp() + 27 * 3600
    stale = check(3, clock=lambda: later, **settings)
    assert stale["status"] == "FAIL" and stale["evidence"][0].endswith("old (older than 26 h)")
    # The boundary, to the second, from the backup's own end time.
    ended = datetime.datetime.fromisoformat(manifest_of(path)["ended_at"]).timestamp()
    assert check(3, clock=lambda: ended + 26 * 3600 - 1, **settings)["status"] == "PASS"
    assert check(3, clock=lambda: ended + 26 * 3600 + 1, **settings)["status"] == "FAIL"


def test_item_3_fails_without_a_schedule(backup, backup_dir, tmp_path):
    database, _ = backup
    result = check(3, databases=[database], backup_dir=backup_dir, cron_file=str(tmp_path / "missing"),
                   compose_file=str(tmp_path / "none.yml"), config_dir=os.path.dirname(signing_passphrase_file()))
    assert result["status"] == "FAIL"
    assert result["evidence"] == [f"{database}: no cron entry in {tmp_path / 'missing'} and no sidecar "
                                  f"{tmp_path / 'none.yml'}"]


def test_item_4_reads_a_real_drill_and_fails_once_it_is_stale(pg, backup, backup_dir, tmp_path):
    database, path = backup
    reports, metrics_dir = tmp_path / "reports", tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "DRILL_"))}
    env.update(pg.app_env(database), BACKUP_DIR=backup_dir, BACKUP_CONFIG="", DRILL_REPORT_DIR=str(reports),
               BACKUP_TEXTFILE_DIR=str(metrics_dir), BACKUP_PASSPHRASE_FILE=signing_passphrase_file(),
               BACKUP_ENCRYPT="0")
    drill = subprocess.run([os.path.join(REPO, "scripts", "restore_db.sh"), "drill"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    settings = dict(databases=[database], report_dir=str(reports), textfile_dir=str(metrics_dir))
    result = check(4, **settings)
    assert result["status"] == "PASS", result
    manifest = manifest_of(path)
    assert f"({manifest['tables']} tables, {manifest['rows']} rows matched {os.path.basename(path)})" \
        in result["evidence"][0]

    eight_days_later = datetime.datetime.now().timestamp() + 8 * 86400
    stale = check(4, clock=lambda: eight_days_later, **settings)
    assert stale["status"] == "FAIL" and "8.0 days ago (" in stale["evidence"][0]
    assert stale["evidence"][0].endswith(") - older than 7 days")


def test_item_4_without_any_passed_drill_says_why_the_last_one_failed(tmp_path):
    (tmp_path / "restore_drill_shop.json").write_text(json.dumps({"passed": False, "reason": "row counts differ"}))
    result = check(4, databases=["shop"], report_dir=str(tmp_path), textfile_dir=str(tmp_path))
    assert result["status"] == "FAIL"
    assert result["evidence"] == ["shop: no passed restore drill on record; last drill failed: row counts differ"]


def test_item_4_fails_on_a_failed_drill_even_with_a_finish_time_and_an_earlier_pass(tmp_path):
    """A drill that ended (finished_at) but failed is no pass; and when the latest drill failed, an
    earlier pass within the week does not make the item PASS: the newest backup does not restore."""
    from forge import metrics

    now = datetime.datetime.now().timestamp()
    finished = datetime.datetime.fromtimestamp(now - 60, datetime.UTC).isoformat()
    reason = "public.orders: 4999 rows restored, 5000 in the snapshot"
    (tmp_path / "restore_drill_shop.json").write_text(json.dumps(
        {"passed": False, "finished_at": finished, "reason": reason}))
    alone = check(4, databases=["shop"], report_dir=str(tmp_path), textfile_dir=str(tmp_path))
    assert alone["status"] == "FAIL"
    assert alone["evidence"] == ["shop: no passed restore drill on record; last drill failed: public.orders: 4999 "
                                 "rows restored, 5000 in the snapshot"]
    metrics.write_run(str(tmp_path), "infer_forge_restore_drill_shop.prom", "infer_forge_restore_drill_",
                      {"database": "shop"}, [], True, now - 86400, "h")
    after_a_pass = check(4, databases=["shop"], report_dir=str(tmp_path), textfile_dir=str(tmp_path))
    assert after_a_pass["status"] == "FAIL"
    assert after_a_pass["evidence"][0].endswith("24.0 h ago; the latest drill FAILED: public.orders: 4999 rows "
                                                "restored, 5000 in the snapshot")


@pytest.mark.parametrize("past", [-1, 1], ids=["a-second-inside-the-week", "a-second-past-the-week"])
def test_item_4_holds_a_passed_drill_exactly_seven_days(tmp_path, past):
    """The boundary, to the second: a drill that passed 7 days less a second ago passes the item,
    7 days and a second ago fails it."""
    from forge import metrics

    passed_at = 1_800_000_000.0
    metrics.write_run(str(tmp_path), "infer_forge_restore_drill_shop.prom", "infer_forge_restore_drill_",
                      {"database": "shop"}, [], True, passed_at, "h")
    result = check(4, clock=lambda: passed_at + 7 * 86400 + past, databases=["shop"], report_dir=str(tmp_path),
                   textfile_dir=str(tmp_path))
    assert result["status"] == ("FAIL" if past > 0 else "PASS"), result
    assert result["evidence"][0].endswith(" - older than 7 days") == (past > 0), result["evidence"]


def test_item_5_permissions(backup, backup_dir):
    _, path = backup
    assert check(5, backup_dir=backup_dir, backup_user="root")["status"] == "PASS"
    wrong_owner = check(5, backup_dir=backup_dir, backup_user="infer")
    assert wrong_owner["status"] == "FAIL" and "(must be owned by infer)" in wrong_owner["evidence"][0]
    os.chmod(path, 0o644)
    os.chmod(backup_dir, 0o755)
    loose = check(5, backup_dir=backup_dir, backup_user="root")
    assert loose["status"] == "FAIL"
    assert loose["evidence"][0] == f"{backup_dir}: mode 0755, owner root (must be 0700)"
    assert f"{os.path.basename(path)} (0644)" in loose["evidence"][1]


def test_item_6_offsite(tmp_path):
    config_dir, reports = tmp_path / "etc", tmp_path / "reports"
    config_dir.mkdir()
    reports.mkdir()
    settings = dict(databases=["shop"], config_dir=str(config_dir), report_dir=str(reports))
    assert check(6, **settings)["evidence"] == [f"shop: no OFFSITE_TARGET in {config_dir / 'backup-shop.env'}"]
    (config_dir / "backup-shop.env").write_text("POSTGRES_DB=shop\nOFFSITE_TARGET=infer-offsite@nas:/srv/b\n")
    now = datetime.datetime.now().timestamp()
    (reports / "offsite_shop.json").write_text(json.dumps({"passed": True, "last_success": now - 1800,
                                                            "remote_backups": 4, "verified": True}))
    result = check(6, **settings)
    assert result["status"] == "PASS"
    assert result["evidence"] == ["shop: infer-offsite@nas:/srv/b, last verified copy 30 min ago, "
                                  "4 verified backup(s) there"]
    (reports / "offsite_shop.json").write_text(json.dumps({"passed": False, "last_success": now - 30 * 3600,
                                                            "reason": "ssh to infer-offsite@nas failed"}))
    failed = check(6, **settings)
    assert failed["status"] == "FAIL"
    assert "the latest run FAILED: ssh to infer-offsite@nas failed - older than 26 h" in failed["evidence"][0]


def test_item_6_reads_the_nas_receipt_and_fails_on_a_quarantined_copy(tmp_path):
    config_dir, reports = tmp_path / "etc", tmp_path / "reports"
    config_dir.mkdir()
    reports.mkdir()
    settings = dict(databases=["shop"], config_dir=str(config_dir), report_dir=str(reports))
    (config_dir / "backup-shop.env").write_text("POSTGRES_DB=shop\nOFFSITE_TARGET=infer-offsite@nas:/srv/b\n")
    now = datetime.datetime.now().timestamp()
    receipt = {"verified_at": "2026-12-01T03:31:00+00:00", "copies": 4, "quarantined": [], "ok": True}
    state = {"passed": True, "last_success": now - 1800, "remote_backups": 4, "verified": True, "receipt": receipt}
    (reports / "offsite_shop.json").write_text(json.dumps(state))
    good = check(6, **settings)
    assert good["status"] == "PASS"
    assert good["evidence"][0].endswith("; NAS receipt 2026-12-01T03:31:00+00:00: 4 verified there, 0 quarantined")
    receipt.update(quarantined=["shop_20261130_020000.sql.gz.enc: sha256 does not match its manifest"], ok=False)
    (reports / "offsite_shop.json").write_text(json.dumps(state))
    bad = check(6, **settings)
    assert bad["status"] == "FAIL"
    assert bad["evidence"][0].endswith("4 verified there, 1 quarantined")


def test_item_10_sentry_record(tmp_path):
    record = tmp_path / "sentry.json"
    assert check(10, sentry_record=str(record))["status"] == "FAIL"
    record.write_text(json.dumps({"accepted_at": datetime.datetime.now().timestamp() - 7200, "event_id": "abc",
                                  "status": 200, "endpoint": "https://***@o1.ingest.sentry.io/4242",
                                  "environment": "production"}))
    result = check(10, sentry_record=str(record))
    assert result["status"] == "PASS"
    assert result["evidence"] == ["event abc accepted (HTTP 200) 2.0 h ago by https://***@o1.ingest.sentry.io/4242, "
                                  "environment production"]
    later = datetime.datetime.now().timestamp() + 31 * 86400
    assert check(10, clock=lambda: later, sentry_record=str(record))["status"] == "FAIL"


def test_item_10_reads_the_record_forge_sentry_event_writes_and_a_damaged_one_fails_in_one_line(tmp_path):
    from forge import records

    record = tmp_path / "sentry.json"
    written = records.sentry_test_event_record(datetime.datetime.now().timestamp() - 60, "e1", 200,
                                               "https://***@o1.ingest.sentry.io/4242", "production", "f" * 16, "app1")
    record.write_text(json.dumps(written))
    assert check(10, sentry_record=str(record))["status"] == "PASS"
    record.write_text('{"event_id": "e1"')
    damaged = check(10, sentry_record=str(record))
    assert damaged["status"] == "FAIL" and len(damaged["evidence"]) == 1
    assert damaged["evidence"][0].startswith(f"{record} is not a readable record: ")
    record.write_text('{"event_id": "e1"}')
    assert check(10, sentry_record=str(record))["evidence"] == [f"{record} records no acceptance time"]


def test_the_sentry_record_path_is_the_one_records_names_everywhere():
    from forge import records

    sentry_defaults = yaml.safe_load(open(os.path.join(REPO, "roles", "sentry", "defaults", "main.yml")))
    checklist_defaults = yaml.safe_load(open(os.path.join(REPO, "roles", "checklist", "defaults", "main.yml")))
    module_doc = open(os.path.join(REPO, "library", "forge_checklist.py")).read()
    assert sentry_defaults["sentry_test_event_record"] == records.SENTRY_TEST_EVENT_RECORD
    assert f"default('{records.SENTRY_TEST_EVENT_RECORD}')" in checklist_defaults["checklist_sentry_record"]
    assert f"default: {records.SENTRY_TEST_EVENT_RECORD}\n" in module_doc


def test_item_11_logrotate_is_validated_with_logrotate_itself(tmp_path):
    good = tmp_path / "infer-forge-app"
    good.write_text("/var/log/infer-forge/*.log {\n    daily\n    rotate 14\n    missingok\n    copytruncate\n}\n")
    os.chmod(good, 0o644)
    result = check(11, logrotate_files=[str(good)])
    assert result["status"] == "PASS"
    assert result["evidence"] == [f"{good}: valid (logrotate --debug), rotates /var/log/infer-forge/*.log"]
    good.write_text("/var/log/infer-forge/*.log {\n    rotate-every-full-moon\n}\n")
    bad = check(11, logrotate_files=[str(good)])
    assert bad["status"] == "FAIL" and "logrotate --debug failed" in bad["evidence"][0]
    assert check(11, logrotate_files=[str(tmp_path / "missing")])["status"] == "FAIL"


def test_the_module_is_read_only_and_works_in_check_mode(run_module, backup, backup_dir):
    result = run_module("forge_checklist", {"item": 5, "backup_dir": backup_dir, "backup_user": "root"}, check=True)
    assert result["changed"] is False and result["status"] == "PASS" and result["item"] == 5
    assert run_module("forge_checklist", {"item": 13})["msg"] == "checklist item must be 1-12, got 13"


def test_item_8_dashboards_must_be_provisioned_and_valid(tmp_path):
    dashboards, provisioning = tmp_path / "dashboards", tmp_path / "provisioning"
    (provisioning / "dashboards").mkdir(parents=True)
    dashboards.mkdir()
    settings = dict(dashboards_dir=str(dashboards), provisioning_dir=str(provisioning))
    missing = check(8, **settings)
    assert missing["status"] == "FAIL" and missing["evidence"][-1] == f"no dashboard JSON in {dashboards}"
    provider = provisioning / "dashboards" / "infer-forge.yml"
    provider.write_text(f"providers:\n  - options:\n      path: {dashboards}\n")
    (dashboards / "overview.json").write_text(json.dumps(
        {"title": "INFER FORGE overview", "panels": [{"type": "row"}, {"type": "timeseries"}, {"type": "stat"}]}))
    result = check(8, **settings)
    assert result["status"] == "PASS"
    assert result["evidence"] == [f"provisioned by {provisioning / 'dashboards' / 'infer-forge.yml'}",
                                  "overview.json: 'INFER FORGE overview', 2 panels"]
    (dashboards / "broken.json").write_text("{not json")
    assert check(8, **settings)["status"] == "FAIL"


def checklist_fixes():
    with open(os.path.join(REPO, "roles", "checklist", "vars", "main.yml")) as handle:
        return yaml.safe_load(handle)["checklist_fixes"]


def test_every_fix_the_checklist_prints_names_a_playbook_tag_and_variable_that_exist():
    """The fixes are command lines an operator pastes: a renamed playbook, tag or variable
    would send them nowhere."""
    import glob
    import re
    import sys

    playbook_command = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    listed = subprocess.run([playbook_command, "-i", os.path.join(REPO, "inventories", "lab"), "--list-tags",
                             os.path.join(REPO, "playbooks", "deploy.yml")],
                            capture_output=True, text=True, check=True, cwd=REPO).stdout
    tags = {tag.strip() for line in re.findall(r"TASK TAGS: \[([^\]]*)\]", listed) for tag in line.split(",")}
    variables = set()
    for path in glob.glob(os.path.join(REPO, "roles", "*", "defaults", "main.yml")):
        variables |= set(yaml.safe_load(open(path)) or {})
    problems = []
    fixes = checklist_fixes()
    assert sorted(fixes) == sorted(ITEMS), "one fix line per checklist item"
    for number, fix in fixes.items():
        for playbook in re.findall(r"playbooks/([a-z_]+\.yml)", fix):
            if not os.path.exists(os.path.join(REPO, "playbooks", playbook)):
                problems.append(f"item {number}: no playbooks/{playbook}")
        for tag in re.findall(r"--tags ([a-z_]+)", fix):
            if tag not in tags:
                problems.append(f"item {number}: deploy.yml has no tag {tag}")
        for name in re.findall(r"\b((?:sentry|backup|logrotate)_[a-z_]+)\b", fix):
            if name not in variables:
                problems.append(f"item {number}: no role variable {name}")
    assert problems == [] and len(tags) > 3


def test_the_engine_knows_checks_not_this_repositorys_playbooks():
    """What fixes an item (a playbook, a tag, a variable) belongs to the deployment that
    runs the engine; the engine's checklist must work from any repository."""
    with open(os.path.join(REPO, "module_utils", "forge", "checklist.py")) as handle:
        engine = handle.read()
    assert "playbooks/" not in engine and "ansible-playbook" not in engine and "deploy.yml" not in engine


def row(item, status="PASS", evidence=("looked",), **extra):
    return dict({"item": item, "label": f"label {item}", "label_en": f"english {item}", "status": status,
                 "evidence": list(evidence)}, **extra)


GROUPS = {"all": ["app1", "db1", "db2", "mon1"], "app": ["app1"], "backup": ["db1", "db2"],
          "monitoring": ["mon1"]}


def test_the_report_has_a_row_per_item_and_host_in_item_order_and_fixes_only_what_did_not_pass():
    hosts = [{"host": "db2", "environment": "staging", "results": [row(5, "FAIL", ["0755"]), row(3)]},
             {"host": "db1", "environment": "staging", "results": [row(5), row(3, "WARN")]}]
    built = report(hosts, GROUPS, {3: "deploy --tags backup", "5": "chmod it"}, full_run=False,
                   environment="unknown", now=0)
    assert built["environment"] == "staging" and built["generated_at"] == "1970-01-01T00:00:00Z"
    assert built["hosts"] == ["db1", "db2"]
    rows = [(r["item"], r["host"], r["status"], r["fix"]) for r in built["rows"] if r["status"] != "SKIP"]
    assert rows == [(3, "db1", "WARN", "deploy --tags backup"), (3, "db2", "PASS", ""),
                        (5, "db1", "PASS", ""), (5, "db2", "FAIL", "chmod it")]
    assert built["counts"] == {"PASS": 2, "WARN": 1, "FAIL": 1, "SKIP": 10}
    skipped = [r for r in built["rows"] if r["status"] == "SKIP"]
    assert [r["item"] for r in skipped] == [1, 2, 4, 6, 7, 8, 9, 10, 11, 12] and {r["host"] for r in skipped} == {"-"}
    assert skipped[0]["evidence"] == ["not checked in this run (--tags/--limit, or no reachable host in group app)"]
    assert skipped[0]["label"] == "Nastavit SENTRY_DSN v .env" and skipped[0]["fix"] == ""


def test_a_full_run_fails_an_item_whose_group_has_no_host_and_production_wins():
    hosts = [{"host": "app1", "environment": "staging", "results": [row(1)]},
             {"host": "db1", "environment": "production", "results": [row(3)]},
             {"host": "mon1", "environment": "staging", "results": []}]
    groups = dict(GROUPS, monitoring=[])
    built = report(hosts, groups, {}, full_run=True, environment="unknown")
    assert built["environment"] == "production" and built["hosts"] == ["app1", "db1"]
    by_item = {r["item"]: r for r in built["rows"]}
    assert by_item[7]["status"] == "FAIL" and by_item[7]["evidence"] == ["no host in inventory group 'monitoring'"]
    assert by_item[7]["fix"] == "add the host that runs it to the group `monitoring` and deploy"
    assert by_item[4]["status"] == "SKIP"  # the backup group has hosts; they just did not report item 4
    assert report([], GROUPS, {}, full_run=False, environment="lab")["environment"] == "lab"


def checklist_yml_on_this_host(tmp_path, *args):
    """ansible-playbook playbooks/checklist.yml on this host as the one backup host of a lab
    inventory (no app, monitoring or pitr host): the command and its environment."""
    import sys

    from conftest import HOST_PYTHON

    inventory = tmp_path / "inventory.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": HOST_PYTHON, "ansible_become": False}
    inventory.write_text(json.dumps({"all": {"vars": {"infer_forge_environment": "lab"}},
                                     "backup": {"hosts": {"db-local": host}}}))
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
               os.path.join(REPO, "playbooks", "checklist.yml"), *args]
    return command, dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")


def test_checklist_yml_writes_the_report_with_the_roles_fix_lines(tmp_path):
    """The whole playbook, one item on this host: the row, the SKIPs, the three reports, the verdict."""
    backups = tmp_path / "backups"
    backups.mkdir(mode=0o755)
    backups.chmod(0o755)
    report_dir = tmp_path / "reports"
    command, env = checklist_yml_on_this_host(tmp_path, "--tags", "checklist_5", "-e", json.dumps(
        {"checklist_backup_dir": str(backups), "checklist_backup_user": "root",
         "checklist_report_dir": str(report_dir), "checklist_fail_environments": ["lab"]}))
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0, result.stdout
    assert "1 checklist item(s) FAIL in lab: 5" in result.stdout
    written = json.loads((report_dir / "checklist-lab.json").read_text())
    assert written["counts"] == {"PASS": 0, "WARN": 0, "FAIL": 1, "SKIP": 11} and written["hosts"] == ["db-local"]
    item_5 = next(r for r in written["rows"] if r["item"] == 5)
    assert item_5["host"] == "db-local" and item_5["fix"] == checklist_fixes()[5]
    assert any("0755" in line for line in item_5["evidence"]), item_5
    assert "fix: " + checklist_fixes()[5] in result.stdout
    assert checklist_fixes()[5].replace("|", "\\|") in (report_dir / "checklist-lab.md").read_text()
    assert 'failures="1"' in (report_dir / "checklist-lab.junit.xml").read_text()

    backups.chmod(0o700)
    passed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
                            stdin=subprocess.DEVNULL)
    assert passed.returncode == 0, passed.stdout
    assert "0 FAIL" in passed.stdout and "checklist-lab" not in passed.stderr
    item_5 = next(r for r in json.loads((report_dir / "checklist-lab.json").read_text())["rows"] if r["item"] == 5)
    assert item_5["status"] == "PASS" and item_5["fix"] == ""


# -- item 12: point-in-time recovery, from the files the pitr role's engine writes -------------
NOW = 1_800_000_000.0


def write_pitr_records(directory, streaming=1, base_backup_age=3600.0, drill_age=86400.0, drill_passed=True,
                       status_age=60.0, offsite_age=1800.0, offsite_passed=True, check_age=86400.0, check_passed=True,
                       check_ran=True, drill_passed_before=False):
    from forge import metrics
    from forge.records import pitr_offsite_state_path as state_path

    labels = {"server": "infer-forge"}
    samples = [("infer_forge_pitr_streaming_up", "gauge", "h", labels, streaming),
               ("infer_forge_pitr_checks_failed", "gauge", "h", labels, 0 if streaming else 2),
               ("infer_forge_pitr_status_timestamp_seconds", "gauge", "h", labels, NOW - status_age)]
    if base_backup_age is not None:
        samples.append(("infer_forge_pitr_last_base_backup_timestamp_seconds", "gauge", "h", labels,
                        NOW - base_backup_age))
    metrics.write_textfile(str(directory), "infer_forge_pitr_infer-forge.prom", samples)
    if drill_age is not None:
        if drill_passed_before:
            metrics.write_run(str(directory), "infer_forge_pitr_drill_infer-forge.prom", "infer_forge_pitr_drill_",
                              labels, [], True, NOW - drill_age - 86400, "h")
        metrics.write_run(str(directory), "infer_forge_pitr_drill_infer-forge.prom", "infer_forge_pitr_drill_",
                          labels, [], drill_passed, NOW - drill_age, "h")
    (directory / "pitr_drill_infer-forge.json").write_text(json.dumps(
        {"passed": drill_passed, "reason": "3 tables, 5242 rows at restore point p recovered exactly"
         if drill_passed else "public.orders: 4999 rows recovered, 5000 at the restore point"}))
    if offsite_age is None:
        return
    # As forge pitr offsite and offsite-check leave them: metrics, and the record with the reasons.
    for what, passed, age in (("", offsite_passed, offsite_age), ("check_", check_passed, check_age))[
            :2 if check_ran else 1]:
        # A passed run an hour before the latest, so a failed latest run keeps its last success.
        for ran, outcome in ((NOW - age - 3600, True), (NOW - age, passed)):
            metrics.write_run(str(directory), f"infer_forge_pitr_offsite_{what}infer-forge.prom",
                              f"infer_forge_pitr_offsite_{what}", labels, [], outcome, ran, "h")
    with open(state_path(str(directory), "infer-forge"), "w") as handle:
        json.dump({"last_copy": {"passed": offsite_passed, "reason": "snapshot 1a2b3c4d: 1 base backup(s) and the WAL"
                                 if offsite_passed else "the NAS refused the REST login 'pitr' (401)"},
                   "last_check": {"passed": check_passed, "reason": "3 snapshot(s), 10% of the data read back"
                                  if check_passed else "restic check found the repository damaged: pack 5e1f"}},
                  handle)


def pitr_check(directory):
    return check(12, clock=lambda: NOW, pitr_textfile_dir=str(directory), pitr_report_dir=str(directory))


def test_item_12_passes_on_streaming_a_recent_base_backup_and_a_recent_passed_drill(tmp_path):
    write_pitr_records(tmp_path)
    result = pitr_check(tmp_path)
    assert result["status"] == "PASS", result
    assert result["evidence"][0] == "infer-forge: WAL streaming up, 0 barman checks failed"
    assert result["evidence"][1].startswith("infer-forge: newest base backup ")
    assert "recovered exactly" in result["evidence"][2]
    assert result["evidence"][3].startswith("infer-forge: last off-site PITR copy ") and "snapshot 1a2b3c4d" in \
        result["evidence"][3]
    assert result["evidence"][4].startswith("infer-forge: last off-site PITR check ")


def test_item_12_warns_while_the_pitr_data_is_not_copied_off_site(tmp_path):
    write_pitr_records(tmp_path, offsite_age=None)
    result = pitr_check(tmp_path)
    assert result["status"] == "WARN", result
    assert result["evidence"][-1] == ("infer-forge: the PITR data is not copied off site (pitr_offsite_enabled); "
                                      "only the logical dumps leave the host")


@pytest.mark.parametrize("records, evidence", [
    ({"streaming": 0}, "infer-forge: WAL streaming is down (2 barman checks failed)"),
    ({"base_backup_age": 9 * 86400}, "older than 8 days"),
    ({"base_backup_age": None}, "infer-forge: no base backup"),
    ({"drill_age": None, "drill_passed": False}, "no passed PITR drill on record; last drill failed: public.orders"),
    ({"drill_age": 9 * 86400}, "older than 8 days"),
    ({"status_age": 3600}, "the PITR status is 1.0 h old"),
    ({"offsite_age": 7 * 3600}, "last off-site PITR copy"),
    ({"offsite_passed": False}, "the latest copy FAILED: the NAS refused the REST login 'pitr' (401)"),
    ({"check_passed": False}, "the latest check FAILED: restic check found the repository damaged: pack 5e1f"),
    ({"check_age": 9 * 86400}, "older than 8 days"),
    ({"check_ran": False}, "infer-forge: no successful off-site PITR check on record"),
    ({"drill_passed": False, "drill_passed_before": True},
     "; the latest PITR drill FAILED: public.orders: 4999 rows recovered, 5000 at the restore point"),
])
def test_item_12_fails_on_what_point_in_time_recovery_lacks(tmp_path, records, evidence):
    write_pitr_records(tmp_path, **records)
    result = pitr_check(tmp_path)
    assert result["status"] == "FAIL"
    assert any(evidence in line for line in result["evidence"]), result["evidence"]


def test_item_12_without_any_pitr_records_fails_in_one_line(tmp_path):
    result = pitr_check(tmp_path)
    assert result["status"] == "FAIL"
    assert result["evidence"] == [f"no PITR status at {tmp_path}/infer_forge_pitr_infer-forge.prom "
                                  "(forge pitr metrics has not run)"]


def test_a_full_run_without_a_pitr_host_warns_on_item_12_and_fails_on_a_runbook_item():
    built = report([], {"app": [], "backup": [], "monitoring": [], "pitr": []}, {}, full_run=True,
                   environment="production", now=0)
    status = {r["item"]: r["status"] for r in built["rows"]}
    assert status[12] == "WARN" and status[3] == "FAIL"


def test_a_full_run_of_checklist_yml_names_the_groups_nobody_runs(tmp_path):
    """No --tags, no --limit: the playbook itself must see a full run (ansible-core hands
    ansible_run_tags over as a tuple), so items whose group is empty FAIL and 12 WARNs."""
    report_dir = tmp_path / "reports"
    command, env = checklist_yml_on_this_host(tmp_path, "-e", json.dumps(
        {"checklist_backup_dir": str(tmp_path / "absent"), "checklist_backup_user": "root",
         "checklist_report_dir": str(report_dir)}))
    subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600, stdin=subprocess.DEVNULL)
    rows = {r["item"]: r for r in json.loads((report_dir / "checklist-lab.json").read_text())["rows"]}
    for item, group in ((1, "app"), (7, "monitoring"), (11, "app")):
        assert rows[item]["status"] == "FAIL", rows[item]
        assert rows[item]["evidence"] == [f"no host in inventory group '{group}'"]
    assert rows[12]["status"] == "WARN" and rows[12]["evidence"] == ["no host in inventory group 'pitr'"]
    assert {rows[item]["host"] for item in (3, 4, 5, 6)} == {"db-local"}  # the backup host's own items ran


def test_item_4_names_the_dr_drill_where_it_ran_and_warns_once_it_failed_or_is_stale(tmp_path):
    """The records the DR drill's judge writes (report and metrics, by the engine itself)."""
    from forge.drdrill import DrDrill

    now = datetime.datetime.now().timestamp()
    reports, metrics_dir = tmp_path / "dr-drill", tmp_path / "metrics"
    metrics_dir.mkdir()
    drill = DrDrill("forge-lab", state_dir=str(reports), clock=lambda: now)
    passed = {"project": "forge-lab", "host": "lab-db", "acknowledged_rows": 29, "passed": True,
              "rpo_rows_lost": 0, "rto_seconds": 9.4, "reason": "0 of 29 acknowledged rows lost"}
    drill._record(dict(passed), str(reports), str(metrics_dir), None, "lab")
    # Root's DR drill writes its metrics in a directory of its own, never the backup user's.
    settings = dict(databases=[], report_dir=str(tmp_path), textfile_dir=str(tmp_path / "backup-metrics"),
                    dr_drill_report_dir=str(reports), dr_drill_textfile_dir=str(metrics_dir))
    result = check(4, **settings)
    assert result["status"] == "PASS", result
    assert result["evidence"] == [
        f"DR drill forge-lab: last passed {datetime.datetime.fromtimestamp(now, datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        "0 min ago (RPO 0 of 29 acknowledged rows lost, RTO 9.4 s until the app was healthy)"]
    stale = check(4, clock=lambda: now + 36 * 86400, **settings)
    assert stale["status"] == "WARN" and stale["evidence"][0].endswith(" - older than 35 days")
    drill._record({"project": "forge-lab", "acknowledged_rows": 30, "passed": False,
                   "reason": "the put-back failed: no copy served"}, str(reports), str(metrics_dir), None, "lab")
    failed = check(4, **settings)
    assert failed["status"] == "WARN"
    assert failed["evidence"][0].endswith("; the latest DR drill FAILED: the put-back failed: no copy served")
    # A host where no DR drill ran: the runbook's drill alone decides, no line is added.
    (tmp_path / "restore_drill_shop.json").write_text(json.dumps({"passed": False, "reason": "row counts differ"}))
    alone = check(4, databases=["shop"], report_dir=str(tmp_path), textfile_dir=str(tmp_path),
                  dr_drill_report_dir=str(tmp_path / "none"))
    assert alone["evidence"] == ["shop: no passed restore drill on record; last drill failed: row counts differ"]


@pytest.mark.parametrize("planted", ["fifo", "link to a root file"])
def test_item_12_never_hangs_on_or_follows_what_barman_planted_for_its_status(tmp_path, planted):
    """The review's finding: item 12, run as root, opened the barman-writable status file with a
    plain open(), and a FIFO under its name hung the checklist. It reads it as every record:
    never through a link, never from a FIFO, at most 1 MB; and says it found nothing usable."""
    import threading

    write_pitr_records(tmp_path)
    prom = tmp_path / "infer_forge_pitr_infer-forge.prom"
    prom.unlink()
    if planted == "fifo":
        os.mkfifo(prom)
    else:
        secret = tmp_path / "root-only"
        secret.write_text('infer_forge_pitr_check_failed{server="infer-forge",check="root secret"} 1\n')
        os.symlink(secret, prom)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(pitr_check(tmp_path)), daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "item 12 hangs on a FIFO planted under the PITR status file"
    assert outcome["status"] == "FAIL"
    assert not any("root secret" in line for line in outcome["evidence"]), outcome["evidence"]
