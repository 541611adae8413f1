"""The Barman host is gone, rebuilt from the off-site copy alone: its container destroyed and made
again as Molecule made it, docs/disaster-recovery.md's two commands run as written (deploy.yml
--tags pitr, then pitr_offsite.yml -e pitr_offsite_action=restore), and the database put back
into production to a time only the off-site copy covers (the new host's own base backup is newer):
the put-back holds exactly the rows of that time and the app's /health is green.
Runs after test_pitr_offsite.py and before test_putback.py, which then works on the rebuilt host."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid

import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import REPO, ansible, ansible_env, compose_container, playbook, task_result  # noqa: E402

testinfra_hosts = ["docker://pitr-barman"]

PROJECT = "forge-pitr"
SERVER = "infer-forge"
BARMAN_HOST = "pitr-barman"
PSQL = "psql -X -q -v ON_ERROR_STOP=1 -U infer -d infer_forge"
SCENARIO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def sql(host, statement):
    container = compose_container(host, PROJECT, "db")
    return host.check_output(f"docker exec -i {container} {PSQL} -Atc {shlex.quote(statement)}")


def forge_pitr(host, *args):
    return host.run("runuser -u barman -- env PITR_CONFIG=/etc/infer-forge/pitr.env /opt/infer-forge/scripts/forge "
                    "pitr " + " ".join(shlex.quote(arg) for arg in args))


def documented_commands(section, **site):
    """Every command of the first bash block of a section of docs/disaster-recovery.md, as
    written, with this site's values in place of the page's examples (``site``: example -> value)."""
    with open(os.path.join(REPO, "docs", "disaster-recovery.md")) as handle:
        page = handle.read()
    block = page.split(f"## {section}\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        assert words[:2] == ["ansible-playbook", "-i"] and "--ask-vault-pass" in words, words
        words = [word for word in words if word != "--ask-vault-pass"]  # the lab's inventory has no vault
        words[2] = os.environ["MOLECULE_INVENTORY_FILE"]
        for example, value in site.items():
            words = [word.replace(example, value) for word in words]
        commands.append(words)
    return commands


def run_as_written(words):
    done = subprocess.run(words, capture_output=True, text=True, cwd=REPO, timeout=1800,
                          env=ansible_env(ANSIBLE_STDOUT_CALLBACK="json"))
    assert done.returncode == 0, f"{' '.join(words)}\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
    return done


def destroy_and_make_again():
    """The Barman host's container removed with everything in it, and a new one made from the
    same platform, as Molecule's create step makes it."""
    with open(os.path.join(SCENARIO, "molecule.yml")) as handle:
        [platform] = [p for p in yaml.safe_load(handle)["platforms"] if p["name"] == BARMAN_HOST]
    subprocess.run(["docker", "rm", "-f", "-v", BARMAN_HOST], check=True, capture_output=True)
    made = playbook(os.path.join(REPO, "molecule", "shared", "create.yml"), "-e",
                    json.dumps({"molecule_yml": {"platforms": [platform]}}))
    assert made.returncode == 0, made.stdout[-3000:]
    for _ in range(60):  # systemd up, so cron and Barman's services can start
        state = subprocess.run(["docker", "exec", BARMAN_HOST, "systemctl", "is-system-running"],
                               capture_output=True, text=True)
        if state.stdout.strip() in ("running", "degraded"):
            return
        time.sleep(1)
    raise AssertionError(f"systemd in the new {BARMAN_HOST} did not come up: {state.stdout}")


def test_a_barman_host_rebuilt_from_the_off_site_copy_puts_the_database_back_to_a_time_only_the_copy_holds(host):
    run = uuid.uuid4().hex[:8]
    sql(host, "CREATE TABLE IF NOT EXISTS rebuild_marks (id serial PRIMARY KEY, name text)")
    sql(host, f"INSERT INTO rebuild_marks (name) VALUES ('before the copy {run}')")  # noqa: S608 - our marker
    kept = sql(host, "SELECT count(*) FROM rebuild_marks")
    noted = sql(host, "SELECT clock_timestamp()")
    time.sleep(1)
    # The hourly off-site copy, with the noted time's segment filed.
    host.check_output(f"runuser -u barman -- barman switch-wal --force --archive {SERVER}")
    copied = forge_pitr(host, "offsite")
    assert copied.rc == 0, copied.stderr
    sql(host, f"INSERT INTO rebuild_marks (name) VALUES ('after the copy {run}')")  # noqa: S608 - our marker
    time.sleep(1)

    destroy_and_make_again()
    assert not host.file("/var/lib/barman/infer-forge").exists
    deploy, restore, drill = documented_commands("The Barman host is gone")
    started = time.monotonic()
    deployed = run_as_written(deploy)
    took = time.monotonic() - started
    # The deploy took the history back before streaming, then a base backup of its own.
    came_back = task_result(deployed, "base_backups")
    assert came_back["changed"] and came_back["base_backups"] >= 1 and came_back["wal_files"] >= 1, came_back
    backups = json.loads(host.check_output(f"runuser -u barman -- barman -f json list-backups {SERVER}"))[SERVER]
    assert len(backups) == came_back["base_backups"] + 1 and all(b["status"] == "DONE" for b in backups), backups
    # The restore on demand adds nothing now, and replaces nothing the new host holds.
    again = run_as_written(restore)
    assert (task_result(again, "base_backups")["base_backups"], task_result(again, "wal_files")["wal_files"]) == (0, 0)
    assert len(json.loads(host.check_output(f"runuser -u barman -- barman -f json list-backups {SERVER}"))[SERVER]) \
        == len(backups)

    # The PITR drill on the rebuilt host: what came back recovers, and item 12 has its evidence.
    drilled = run_as_written(drill)
    assert task_result(drilled, "verdict")["verdict"] == "PASS"
    host.check_output("runuser -u barman -- env PITR_CONFIG=/etc/infer-forge/pitr.env "
                      "/opt/infer-forge/scripts/forge pitr metrics")
    item = ansible("pitr-barman", "--become", "-m", "forge_checklist", "-a", "item=12", "-o", timeout=120)
    assert json.loads(item.stdout.split("=>", 1)[1])["status"] == "PASS", item.stdout

    # Put the database back to the noted time, in production, as in "Undo the last minutes".
    subnet = subprocess.run(["docker", "network", "inspect", "infer-forge-pitr", "-f",
                             "{{(index .IPAM.Config 0).Subnet}}"], capture_output=True, text=True,
                            check=True).stdout.strip()
    put = playbook("dr_restore.yml", "-e", f"dr_confirm={BARMAN_HOST}", "-e", f"pitr_putback_client={subnet}",
                   "-e", f"pitr_target_time='{noted}'", ANSIBLE_STDOUT_CALLBACK="json", timeout=1800)
    assert put.returncode == 0, put.stdout[-4000:]
    putback = task_result(put, "aside_volume")
    marks = sql(host, "SELECT name FROM rebuild_marks ORDER BY id").splitlines()
    assert f"before the copy {run}" in marks and f"after the copy {run}" not in marks, marks
    assert sql(host, "SELECT count(*) FROM rebuild_marks") == kept
    health = host.run(f"docker exec {compose_container(host, PROJECT, 'app')} curl -fsS http://127.0.0.1:8000/health")
    assert health.rc == 0, health.stdout + health.stderr
    checks = json.loads(host.check_output(f"runuser -u barman -- barman -f json check {SERVER}"))[SERVER]
    assert all(check["status"] == "OK" for check in checks.values()), checks
    assert re.match(r"forge-pitr_db-data-before-dr-\d{8}T\d{6}Z$", putback["aside_volume"])
    print(f"\nBarman host rebuilt from off site: deploy with the history back {took:.1f} s "
          f"({came_back['base_backups']} base backup(s), {came_back['wal_files']} WAL file(s)); database put back "
          f"to {noted}: healthy {putback['seconds_to_database']} s, app {putback['seconds_to_app']} s")
