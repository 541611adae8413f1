"""The backup story against PostgreSQL 17 in Docker Compose, on a Debian 13 host that the
deploy reached as the unprivileged `deploy` user: the stack runs, the host's cron entry
dumps with the db container's own pg_dump through root's client wrapper (the backup user has
no Docker socket), the sidecar's own cron dumps from
beside it, the drill restores each with exact counts, the runbook's manual restore
works through `docker exec -i <db> psql`, and health and the exporters reach the services.
"""

import json
import os
import re
import shlex
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import ansible, compose_container, playbook  # noqa: E402

testinfra_hosts = ["docker://compose-db"]

DB = "compose-db"
ROOT = "/srv/infer-forge-molecule-compose"
BACKUPS = f"{ROOT}/backups"
PROJECT = "forge-compose"
SAMPLE = {"public.customers": 200, "public.orders": 5000}
CLIENT = "/usr/local/sbin/infer-forge-db-client"


def db_container(host):
    return compose_container(host, PROJECT, "db")


def drill(host, name):
    """restore_db.sh drill of one named backup, as the backup user, with the host's config."""
    config = f"{ROOT}/etc/backup-infer_forge.env"
    return host.run(f"runuser -u infer -- env BACKUP_CONFIG={config} {ROOT}/opt/scripts/restore_db.sh drill {name}")


def test_the_stack_runs_postgresql_17_redis_and_the_app_in_compose(host):
    services = host.check_output(f"docker compose -p {PROJECT} ps --format '{{{{.Service}}}} {{{{.State}}}}'")
    assert sorted(services.splitlines()) == ["app running", "db running", "redis running"]
    version = host.check_output(f"docker exec {db_container(host)} psql -U infer -d infer_forge -Atc "
                                "'SHOW server_version'")
    assert version.startswith("17.")
    assert host.check_output(". /etc/os-release && echo $VERSION_ID") == "13"


def test_ansible_connects_as_the_unprivileged_deploy_user_and_becomes_root_only_when_asked():
    base = ["-m", "ansible.builtin.command", "-a", "id -un"]
    plain = ansible(DB, *base, timeout=120)
    assert plain.returncode == 0 and plain.stdout.strip().endswith("deploy"), plain.stdout + plain.stderr
    become = ansible(DB, *base, "--become", timeout=120)
    assert become.returncode == 0 and become.stdout.strip().endswith("root"), become.stdout + become.stderr


def test_the_role_derived_the_container_clients_from_the_project(host):
    config = host.file(f"{ROOT}/etc/backup-infer_forge.env")
    assert (config.user, config.mode) == ("root", 0o640)
    lines = [entry for entry in host.check_output(f"cat {ROOT}/etc/backup-infer_forge.env").splitlines()
             if entry.startswith(("BACKUP_DUMP_COMMAND=", "RESTORE_"))]
    assert lines == [f"BACKUP_DUMP_COMMAND=sudo -n {CLIENT} pg_dump",
                     f"RESTORE_PSQL_COMMAND=sudo -n {CLIENT} psql",
                     f"RESTORE_PG_RESTORE_COMMAND=sudo -n {CLIENT} pg_restore",
                     "RESTORE_OWNER=infer_forge_restore"]


def test_the_backup_user_is_not_root_through_the_docker_socket(host):
    """The review's finding: production put the backup user in the Docker socket's group, and
    `docker run -v /:/h` is a root shell. Now it has no docker group, the socket refuses it,
    and sudo gives it root's client wrapper alone, which runs nothing but the engine's calls."""
    groups = host.check_output("id -nG infer").split()
    socket_group = host.check_output("stat -c %G /var/run/docker.sock")
    assert socket_group not in groups and "docker" not in groups, groups
    as_infer = "runuser -u infer -- "
    for attempt in ("docker run --rm -v /:/h infer-forge-stack:latest true",
                    f"docker inspect --format '{{{{json .Config.Env}}}}' {db_container(host)}",
                    f"docker exec {db_container(host)} true"):
        result = host.run(as_infer + attempt)
        assert result.rc != 0 and "permission denied" in result.stderr.lower(), (attempt, result.stderr)
    # sudo allows the wrapper, and nothing else: not docker, not a shell.
    for command in ("sudo -n docker ps", "sudo -n /bin/sh -c id", "sudo -n -u postgres true"):
        result = host.run(as_infer + command)
        assert result.rc != 0 and "password is required" in result.stderr, (command, result.stderr)
    # The wrapper itself runs no other invocation.
    for command, reason in (
            ("psql -c '\\! id'", "psql runs only as a restore reads a plain dump"),
            ("pg_dump --file=/tmp/forge-pwned", "pg_dump option '--file'")):
        result = host.run(f"{as_infer} sudo -n {CLIENT} {command}")
        assert result.rc == 2 and reason in result.stderr and result.stderr.rstrip().endswith("nothing was run"), \
            (command, result.stderr)
    # Its roles are no superusers, whatever PGUSER the caller sets: SQL alone runs no program.
    query = "SELECT rolname, rolsuper FROM pg_roles WHERE rolname LIKE 'infer_forge_%' ORDER BY 1"
    roles = host.check_output(f"docker exec {db_container(host)} psql -U infer -d postgres -XAtc \"{query}\"")
    assert roles.splitlines() == ["infer_forge_backup|f", "infer_forge_restore|f"]
    copy = host.run(f"echo \"COPY (SELECT 1) TO PROGRAM 'touch /tmp/forge-pwned'\" | {as_infer} env PGUSER=infer "
                    "PGDATABASE=postgres sudo -n " + CLIENT + " psql -X -q -v ON_ERROR_STOP=1 --single-transaction "
                    "-o /dev/null -f -")
    assert copy.rc != 0 and "permission denied to COPY to or from an external program" in copy.stderr, copy.stderr
    assert host.run(f"docker exec {db_container(host)} test -e /tmp/forge-pwned").rc != 0
    sudoers = host.file("/etc/sudoers.d/infer-forge-db-client")
    assert (sudoers.user, sudoers.mode) == ("root", 0o440)
    rules = [line for line in sudoers.content_string.splitlines() if line and not line.startswith(("#", "Defaults"))]
    assert rules == [f"infer ALL=(root) NOPASSWD: {CLIENT}"]


def test_the_operating_playbooks_back_up_and_drill_a_custom_dump_through_the_container(host):
    """backup.yml and restore_drill.yml find the db container again by its labels: a custom-format
    dump made by its pg_dump 17 is restored by its pg_restore 17."""
    made = playbook("backup.yml", "-e", "backup_format=custom")
    assert made.returncode == 0, made.stdout[-3000:]
    newest = host.check_output(f"sh -c 'ls -1t {BACKUPS}/infer_forge_*.dump.enc | head -1'")
    body = json.loads(host.check_output(f"cat {newest}.manifest.json"))
    assert body["format"] == "custom" and body["pg_dump_major_version"] == 17
    drilled = playbook("restore_drill.yml", "-e", f"backup_drill_file={newest}")
    assert drilled.returncode == 0, drilled.stdout[-3000:]
    assert re.search(rf"PASS.*{re.escape(os.path.basename(newest))}", drilled.stdout), drilled.stdout[-3000:]
    assert re.search(r"2 tables, 5200\s+rows", drilled.stdout), drilled.stdout[-3000:]


def test_the_checklist_reads_sentry_dsn_and_environment_from_the_running_app_container(host):
    app = compose_container(host, PROJECT, "app")
    results = {}
    for item in (1, 2):
        run = ansible(DB, "--become", "-m", "forge_checklist", "-a",
                      f"item={item} app_compose_project={PROJECT} env_file=/opt/forge-compose/app.env environment=lab",
                      "-o", timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        results[item] = json.loads(run.stdout.split("=>", 1)[1])
    where = f"in the running container {app} (service app of Compose project {PROJECT})"
    assert results[1]["status"] == "PASS"
    assert results[1]["evidence"] == [f"SENTRY_DSN=https://***@sentry.example.invalid/7 {where}"]
    # The lab's app runs with ENVIRONMENT=lab: outside production that is a warning, not a failure.
    assert results[2]["status"] == "WARN" and results[2]["evidence"][0] == f"ENVIRONMENT=lab {where}"


def _run_host_cron_job(host):
    cron = host.file("/etc/cron.d/infer-forge-backup").content_string
    [entry] = [e for e in cron.splitlines() if "backup_db.sh" in e and not e.startswith("#")]
    command = " ".join(entry.split()[6:]).split(" >>")[0]
    for _ in range(20):
        result = host.run(f"runuser -u infer -- sh -c {shlex.quote(command)}")
        # The sidecar backs up every minute here; a run that meets its lock waits its turn.
        if result.rc != 75:
            return result
        time.sleep(3)
    return result


def test_the_host_cron_entry_dumps_through_the_containers_client_and_the_drill_restores_it_exactly(host):
    result = _run_host_cron_job(host)
    assert result.rc == 0, result.stdout + result.stderr
    [started] = re.findall(r"^Starting backup: (\S+)$", result.stdout, re.MULTILINE)
    assert host.run(f"head -c 8 {started}").stdout == "Salted__"
    body = json.loads(host.check_output(f"cat {started}.manifest.json"))
    assert body["pg_dump_major_version"] == 17 and body["server"]["version"].startswith("17.")
    assert body["snapshot_row_counts"] == SAMPLE
    outcome = drill(host, os.path.basename(started))
    assert outcome.rc == 0, outcome.stdout + outcome.stderr
    assert re.search(rf"PASS: {re.escape(started)}: 2 tables, 5200 rows checked", outcome.stdout), outcome.stdout


def test_the_sidecars_own_cron_takes_a_verified_backup_that_the_drill_restores_exactly(host):
    deadline = time.monotonic() + 150
    started = []
    while time.monotonic() < deadline and not started:
        logs = host.check_output(f"docker compose -p {PROJECT}-backup logs --no-color backup")
        started = [line.split("Starting backup: ")[1].strip() for line in logs.splitlines()
                   if "Starting backup: " in line]
        complete = "Backup complete:" in logs
        if not (started and complete):
            started = []
            time.sleep(5)
    assert started, "the sidecar's cron took no backup within 150 s:\n" + logs
    inside = started[0]
    assert inside.startswith("/backups/infer_forge_") and inside.endswith(".sql.gz.enc")
    on_host = f"{BACKUPS}/{os.path.basename(inside)}"
    stat = host.check_output(f"stat -c '%U %a' {on_host} {BACKUPS}").splitlines()
    assert stat == ["infer 600", "infer 700"]
    body = json.loads(host.check_output(f"cat {on_host}.manifest.json"))
    assert body["pg_dump_major_version"] == 17 and body["snapshot_row_counts"] == SAMPLE
    outcome = drill(host, os.path.basename(on_host))
    assert outcome.rc == 0, outcome.stdout + outcome.stderr
    assert re.search(rf"PASS: {re.escape(on_host)}: 2 tables, 5200 rows checked", outcome.stdout), outcome.stdout


def test_the_runbooks_manual_restore_works_through_docker_exec_psql(host):
    newest = host.check_output(f"sh -c 'ls -1t {BACKUPS}/infer_forge_*.sql.gz.enc | head -1'")
    db = db_container(host)
    psql = f"docker exec -i {db} psql -v ON_ERROR_STOP=1 -q -U infer"
    host.check_output(f"{psql} -d postgres -c 'DROP DATABASE IF EXISTS runbook_check' "
                      "-c 'CREATE DATABASE runbook_check'")
    restore = host.run(f"sh -c 'openssl enc -d -aes-256-cbc -pbkdf2 -pass file:{ROOT}/etc/backup.pass "
                       f"-in {newest} | gunzip | {psql} -d runbook_check'")
    assert restore.rc == 0, restore.stderr
    count_both = "'SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders)'"
    counts = host.check_output(psql + " -d runbook_check -Atc " + count_both)
    assert counts == "200|5000"
    host.check_output(f"{psql} -d postgres -c 'DROP DATABASE runbook_check'")


def test_health_reaches_the_db_redis_and_app_services():
    result = playbook("health.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    for service in ("database", "redis", "app"):
        assert re.search(rf"{DB}\s+{service}\s+healthy", result.stdout), result.stdout[-2000:]
    assert re.search(r"database\s+healthy\s+\S+\s+.*17\.", result.stdout), result.stdout[-2000:]


def test_the_exporters_scrape_the_containers(host):
    postgres = host.check_output("curl -fsS http://127.0.0.1:9187/metrics")
    assert re.search(r"^pg_up 1$", postgres, re.MULTILINE), postgres[-1500:]
    assert re.search(r'^pg_static\{[^}]*short_version="17\.', postgres, re.MULTILINE)
    redis = host.check_output("curl -fsS http://127.0.0.1:9121/metrics")
    assert re.search(r"^redis_up 1$", redis, re.MULTILINE), redis[-1500:]
