"""Putting a recovered copy back into production (playbooks/dr_restore.yml) on the Compose
stack: "undo the last minutes" after a bad DELETE, recovered to the time noted before it, into
the db service's own volume with the app stopped and started around it. Proves the refusal
without a confirmation, a failed copy that puts the old database back by itself, the put-back
with the app's /health green and the RTO printed, Barman streaming from the new timeline with a
new base backup and checklist item 12 passing, and `forge dr undo` bringing the old contents
back. Runs after test_pitr*.py (it replaces the database those use)."""

import json
import os
import re
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import REPO, ansible, ansible_env, compose_container, playbook, task_result  # noqa: E402

testinfra_hosts = ["docker://pitr-barman"]

PROJECT = "forge-pitr"
SERVER = "infer-forge"
VOLUME = f"{PROJECT}_db-data"
PSQL = "psql -X -q -v ON_ERROR_STOP=1 -U infer -d infer_forge"
# What one test leaves the next: the time noted before the accident, the volume moved aside.
pytest_state = {}


def sql(host, statement):
    container = compose_container(host, PROJECT, "db")
    return host.check_output(f"docker exec -i {container} {PSQL} -Atc {shlex.quote(statement)}")


def subnet():
    """The scenario's network, where the put-back's throwaway container gets its address."""
    out = subprocess.run(["docker", "network", "inspect", "infer-forge-pitr", "-f",
                          "{{(index .IPAM.Config 0).Subnet}}"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def volumes(prefix):
    out = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"name={prefix}"], capture_output=True,
                         text=True, check=True)
    return set(out.stdout.split())


def app_health(host):
    return host.run(f"docker exec {compose_container(host, PROJECT, 'app')} curl -fsS http://127.0.0.1:8000/health")


def dr_restore(*args):
    return playbook("dr_restore.yml", "-e", f"pitr_putback_client={subnet()}", *args,
                    ANSIBLE_STDOUT_CALLBACK="json", timeout=1800)


def documented_command(section, **site):
    """The first command of a section of docs/disaster-recovery.md, as written, with this site's
    values in place of the page's examples (``site``: example -> value)."""
    with open(os.path.join(REPO, "docs", "disaster-recovery.md")) as handle:
        page = handle.read()
    text = page.split(f"## {section}\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    words = shlex.split(text.replace("\\\n", " "))
    assert words[:2] == ["ansible-playbook", "-i"] and "--ask-vault-pass" in words, words
    words = [word for word in words if word != "--ask-vault-pass"]  # the lab's inventory has no vault
    words[2] = os.environ["MOLECULE_INVENTORY_FILE"]
    for example, value in site.items():
        words = [word.replace(example, value) for word in words]
    return words


def failure_messages(run):
    return [result.get("msg", "") for play in json.loads(run.stdout)["plays"] for task in play["tasks"]
            for result in task["hosts"].values() if result.get("failed")]


def test_the_accident_then_a_put_back_nobody_confirmed_is_refused_in_one_line(host):
    sql(host, "CREATE TABLE dr_orders (id serial PRIMARY KEY, note text)")
    sql(host, "INSERT INTO dr_orders (note) SELECT 'order ' || n FROM generate_series(1, 30) AS n")
    pytest_state["noted"] = sql(host, "SELECT clock_timestamp()")
    time.sleep(2)
    sql(host, "DELETE FROM dr_orders WHERE id > 20")  # the accident
    time.sleep(1)
    before = volumes(VOLUME)
    refused = dr_restore("-e", f"pitr_target_time='{pytest_state['noted']}'")
    assert refused.returncode != 0
    [message] = failure_messages(refused)
    assert message == ("dr_restore replaces the database of pitr-barman (the volume's contents are moved aside, "
                       "not deleted); run again with -e dr_confirm=<that host>; nothing was changed")
    assert sql(host, "SELECT count(*) FROM dr_orders") == "20" and volumes(VOLUME) == before
    assert not host.run("ls /var/lib/barman/infer-forge-scratch | grep .").stdout.strip()


def test_a_copy_that_fails_puts_the_old_database_back_by_itself_and_says_so_in_one_line(host):
    """The copied database does not come up in time (a 1 s limit here): the old one comes back."""
    before = volumes(VOLUME)
    failed = dr_restore("-e", "dr_confirm=pitr-barman", "-e", f"pitr_target_time='{pytest_state['noted']}'",
                        "-e", "pitr_putback_timeout=1")
    assert failed.returncode != 0
    [message] = set(failure_messages(failed))  # the rescued task's and the last play's, the same line
    assert message.startswith(f"put-back into {VOLUME} failed: db ("), message
    assert "was not healthy 1 s after it was started" in message, message
    assert re.search(rf"the database is back as it was and running, the failed copy is kept in volume "
                     rf"{VOLUME}-failed-dr-\d{{8}}T\d{{6}}Z$", message), message
    assert sql(host, "SELECT count(*) FROM dr_orders") == "20"
    assert app_health(host).rc == 0
    added = volumes(VOLUME) - before
    assert [name for name in added if "-failed-dr-" in name] and [name for name in added if "-before-dr-" in name]
    # The Barman host removed the copy it served, and did not rejoin a server that was not put back.
    assert not host.run("ls /var/lib/barman/infer-forge-scratch | grep .").stdout.strip()
    assert "moved_to_forensics" not in failed.stdout


def test_undo_the_last_minutes_into_production_with_the_app_healthy_and_barman_streaming_the_new_timeline(host):
    """The runbook's command as docs/disaster-recovery.md writes it, with the lab's values."""
    command = documented_command("Undo the last minutes", **{
        "forge-db1.infer.local": "pitr-barman", "10.0.0.5": subnet(),
        "2026-12-07 14:05:00+01": pytest_state["noted"]})
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800,
                          env=ansible_env(ANSIBLE_STDOUT_CALLBACK="json"))
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:]
    putback = task_result(done, "aside_volume")
    rejoined = task_result(done, "moved_to_forensics")
    pytest_state["aside"] = putback["aside_volume"]
    # Exactly the rows of the noted time, in production, read by the app's database.
    assert sql(host, "SELECT count(*) FROM dr_orders") == "30"
    assert sql(host, "SELECT timeline_id FROM pg_control_checkpoint()") != "1"
    assert app_health(host).rc == 0
    assert putback["aside_volume"] in volumes(VOLUME)
    # Barman streams from the new timeline through a new slot, with a base backup of it.
    assert rejoined["timeline"] != "00000001"
    checks = json.loads(host.check_output(f"runuser -u barman -- barman -f json check {SERVER}"))[SERVER]
    assert all(check["status"] == "OK" for check in checks.values()), checks
    backups = json.loads(host.check_output(f"runuser -u barman -- barman -f json list-backups {SERVER}"))[SERVER]
    assert backups[0]["backup_id"] == rejoined["base_backup"] and backups[0]["status"] == "DONE"
    # What the old timeline received after the noted time (the accident) is kept, not deleted.
    assert rejoined["moved_to_forensics"] and all(host.file(path).exists for path in rejoined["moved_to_forensics"])
    assert not host.run("ls /var/lib/barman/infer-forge-scratch | grep .").stdout.strip()
    # The status metrics as the cron entry writes them every few minutes, then the checklist's item.
    host.check_output("runuser -u barman -- env PITR_CONFIG=/etc/infer-forge/pitr.env "
                      "/opt/infer-forge/scripts/forge pitr metrics")
    run = ansible("pitr-barman", "--become", "-m", "forge_checklist", "-a", "item=12", "-o", timeout=120)
    assert json.loads(run.stdout.split("=>", 1)[1])["status"] == "PASS", run.stdout
    print(f"\nPut-back to {pytest_state['noted']}: 30 rows back in production; database healthy "
          f"{putback['seconds_to_database']} s and app healthy {putback['seconds_to_app']} s after the services "
          f"stopped (copy {putback['seconds_to_copy']} s); Barman rejoined timeline {rejoined['timeline']} in "
          f"{rejoined['seconds']} s; the whole playbook {took:.1f} s")


def test_a_dr_drill_whose_copy_is_not_served_starts_the_killed_database_again_and_fails_in_one_line(host):
    failed = playbook("dr_drill.yml", "-e", "dr_confirm=pitr-barman", "-e", "pitr_putback_client=not-an-address",
                      ANSIBLE_STDOUT_CALLBACK="json", timeout=1800)
    assert failed.returncode != 0
    [message] = [m for m in failure_messages(failed) if m.startswith("DR drill of")]
    assert message.startswith("DR drill of forge-pitr failed: the put-back failed: the Barman host did not serve a "
                              "copy: the put-back client must be an address or network"), message
    assert message.endswith("; the killed database was started again as it was"), message
    assert sql(host, "SELECT count(*) FROM dr_orders") == "30"  # as the put-back before left it
    assert app_health(host).rc == 0
    prom = host.file("/var/lib/infer-forge-metrics/dr-drill/infer_forge_dr_drill_forge-pitr.prom").content_string
    assert 'infer_forge_dr_drill_last_run_success{project="forge-pitr"} 0' in prom.splitlines()
    assert not host.run("ls /var/lib/barman/infer-forge-scratch | grep .").stdout.strip()
    # The database restarted on the timeline Barman streams: barman cron's receiver takes it up again.
    for _ in range(45):
        host.run("runuser -u barman -- barman -q cron")
        # barman check exits 1 while a check fails, as receive_wal_running does until cron's receiver runs.
        checks = json.loads(host.run(f"runuser -u barman -- barman -f json check {SERVER}").stdout)[SERVER]
        if checks["receive_wal_running"]["status"] == "OK" and checks["replication_slot"]["status"] == "OK":
            break
        time.sleep(2)
    else:
        raise AssertionError(f"Barman does not stream again after the failed drill: {checks}")


def test_the_dr_drill_loses_the_database_while_the_app_writes_and_measures_rpo_by_id_and_rto(host):
    """playbooks/dr_drill.yml: writes until the db container is killed, the put-back to latest,
    RPO (acknowledged rows lost, by id) and RTO (until the app is healthy), recorded."""
    drilled = playbook("dr_drill.yml", "-e", "dr_confirm=pitr-barman", "-e", f"pitr_putback_client={subnet()}",
                       ANSIBLE_STDOUT_CALLBACK="json", timeout=1800)
    assert drilled.returncode == 0, drilled.stdout[-4000:]
    judged = task_result(drilled, "verdict")
    crashed = task_result(drilled, "last_acknowledged")
    assert judged["verdict"] == "PASS" and judged["rpo_rows_lost"] <= 10, judged
    assert judged["acknowledged_rows"] == crashed["acknowledged_rows"] > 10
    assert 0 < judged["rto_seconds"] < 600
    assert app_health(host).rc == 0
    report = json.loads(host.file("/var/lib/infer-forge/dr-drill/dr_drill_forge-pitr.json").content_string)
    assert report["rpo_rows_lost"] == judged["rpo_rows_lost"] and report["passed"] is True
    prom = host.file("/var/lib/infer-forge-metrics/dr-drill/infer_forge_dr_drill_forge-pitr.prom").content_string
    assert 'infer_forge_dr_drill_last_run_success{project="forge-pitr"} 1' in prom.splitlines()
    assert not host.file("/var/lib/infer-forge/dr-drill/state_forge-pitr.json").exists
    # Barman streams the drill's timeline: the next drill (and the checklist) start from a sound state.
    checks = json.loads(host.check_output(f"runuser -u barman -- barman -f json check {SERVER}"))[SERVER]
    assert all(check["status"] == "OK" for check in checks.values()), checks
    print(f"\nDR drill (docker kill while writing, put-back to latest): RPO {judged['rpo_rows_lost']} of "
          f"{judged['acknowledged_rows']} acknowledged rows lost; RTO {judged['rto_seconds']} s until the app's "
          "/health was green")


def test_forge_dr_undo_brings_the_contents_moved_aside_back_and_keeps_the_put_back_ones(host):
    aside = pytest_state["aside"]
    pytest_state["before_undo"] = sql(host, "SELECT count(*) FROM dr_orders")  # what Barman received last
    undone = host.run(f"/opt/infer-forge/scripts/forge dr undo --project {PROJECT} --aside {aside} --app-service app")
    assert undone.rc == 0, undone.stderr
    [line] = undone.stdout.splitlines()
    kept = re.search(r"kept in volume (\S+)$", line).group(1)
    assert sql(host, "SELECT count(*) FROM dr_orders") == "20"  # the state before the first put-back
    assert app_health(host).rc == 0
    assert kept in volumes(VOLUME) and aside not in volumes(VOLUME)
    refused = host.run(f"/opt/infer-forge/scripts/forge dr undo --project {PROJECT} --aside {VOLUME}")
    assert refused.rc == 1 and refused.stderr.strip() == (
        f"ERROR: '{VOLUME}' is not a volume the put-back of {VOLUME} moved aside; nothing was changed")


def test_the_database_host_is_gone_and_the_put_back_fills_its_new_empty_volume(host):
    """docs/disaster-recovery.md's "The database host is gone", step 2 as written: the db service
    starts on an empty volume (a new host; the image makes a new, empty database), and the
    put-back to latest fills it from Barman, with the base backup's configuration."""
    db = compose_container(host, PROJECT, "db")
    image = host.check_output(f"docker inspect -f '{{{{.Config.Image}}}}' {db}")
    host.check_output(f"docker stop {db}")
    host.check_output(f"docker run --rm -v {VOLUME}:/data --entrypoint sh {image} -c 'rm -rf /data/* /data/.[!.]*'")
    host.check_output(f"docker start {db}")
    for _ in range(60):
        if host.run(f"docker exec {db} pg_isready -q -U infer -d infer_forge").rc == 0:
            break
        time.sleep(1)
    assert sql(host, "SELECT to_regclass('dr_orders') IS NULL") == "t"  # a new, empty database
    command = documented_command("The database host is gone", **{
        "forge-db1.infer.local": "pitr-barman", "10.0.0.5": subnet()})
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800,
                          env=ansible_env(ANSIBLE_STDOUT_CALLBACK="json"))
    assert done.returncode == 0, done.stdout[-4000:]
    putback = task_result(done, "aside_volume")
    assert sql(host, "SELECT count(*) FROM dr_orders") == pytest_state["before_undo"]
    assert app_health(host).rc == 0
    checks = json.loads(host.check_output(f"runuser -u barman -- barman -f json check {SERVER}"))[SERVER]
    assert all(check["status"] == "OK" for check in checks.values()), checks
    pytest_state["host_gone_put_back"] = True
    print(f"\nThe database host is gone: put back to latest into an empty volume, "
          f"{pytest_state['before_undo']} rows; database healthy {putback['seconds_to_database']} s, "
          f"app {putback['seconds_to_app']} s")


def test_the_database_host_is_gone_step_3_deploys_pitr_again_and_the_checklist_passes_item_12(host):
    """Step 3 of "The database host is gone", both commands as written (the lab's inventory, no
    vault): the PITR deploy runs clean on the put-back database (and replaces, never follows, a
    link planted at barman's .pgpass), and the checklist's item 12
    (point-in-time recovery) PASSes on the Barman host. The scenario deploys no backup, app or
    monitoring host, so only item 12 has evidence here."""
    assert pytest_state.get("host_gone_put_back"), "step 2 did not run"
    with open(os.path.join(REPO, "docs", "disaster-recovery.md")) as handle:
        page = handle.read()
    section = page.split("## The database host is gone\n", 1)[1].split("\n## ", 1)[0]
    step = section.split("\n3. ", 1)[1]
    block = step.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line.strip()) for line in block.splitlines() if line.strip()]
    assert [words[3] for words in commands] == ["playbooks/deploy.yml", "playbooks/checklist.yml"], commands
    # A link barman planted where root once wrote barman's .pgpass (a truncated root-only file was
    # the reproduction): the deploy writes it as barman, so the link is replaced, never followed.
    host.check_output("install -m 0600 /dev/null /root/forge-canary && echo 'root only' > /root/forge-canary")
    host.check_output("runuser -u barman -- ln -sfn /root/forge-canary /var/lib/barman/.pgpass")
    runs, started = [], time.time()
    for words in commands:
        assert words[:3] == ["ansible-playbook", "-i", "inventories/production"] and "--ask-vault-pass" in words
        words = [word for word in words if word != "--ask-vault-pass"]
        words[2] = os.environ["MOLECULE_INVENTORY_FILE"]
        runs.append(subprocess.run(words, capture_output=True, text=True, cwd=REPO, timeout=1800,
                                   env=ansible_env(ANSIBLE_STDOUT_CALLBACK="json")))
    deployed, checked = runs
    assert deployed.returncode == 0, deployed.stdout[-4000:]
    assert not failure_messages(deployed)
    assert host.file("/root/forge-canary").content_string == "root only\n"
    pgpass = host.file("/var/lib/barman/.pgpass")
    assert not pgpass.is_symlink and (pgpass.user, pgpass.mode) == ("barman", 0o600)
    with open(checklist_report_written_since(started)) as handle:
        rows = json.load(handle)["rows"]
    [item_12] = [row for row in rows if row["item"] == 12 and row["host"] == "pitr-barman"]
    assert item_12["status"] == "PASS", item_12


def checklist_report_written_since(started):
    """The JSON report checklist.yml wrote (reports/checklist-<environment>.json) during this test."""
    reports = os.path.join(REPO, "reports")
    names = [os.path.join(reports, name) for name in os.listdir(reports)
             if name.startswith("checklist-") and name.endswith(".json")]
    written = [name for name in names if os.path.getmtime(name) >= started]
    assert written, f"checklist.yml wrote no report in {reports}"
    return max(written, key=os.path.getmtime)
