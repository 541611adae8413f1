"""Point-in-time recovery with Barman against PostgreSQL 17 in Docker Compose: WAL streams
through the replication slot, a base backup is in the catalog, the PITR drill passes with
exact counts while the app writes, a recovery to a time between two commits holds the first
and not the second, and a `docker kill` of the database loses at most seconds of acknowledged
rows with async streaming and none with synchronous streaming (RPO), recovered in seconds
(RTO). The figures are printed for the closing note."""

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import REPO, ansible, compose_container, playbook  # noqa: E402

testinfra_hosts = ["docker://pitr-barman"]

PROJECT = "forge-pitr"
SERVER = "infer-forge"
PSQL = "psql -X -q -v ON_ERROR_STOP=1 -U infer -d infer_forge"


def db_container(host):
    return compose_container(host, PROJECT, "db")


def sql(host, statement):
    return host.check_output(f"docker exec -i {db_container(host)} {PSQL} -Atc \"{statement}\"")


def barman(host, *args):
    return host.run("runuser -u barman -- barman " + " ".join(args))


class Writer(threading.Thread):
    """The app at work: one INSERT every ``interval`` s on its own connection, from this machine
    through docker exec; the ids the server acknowledged (committed, returned) are kept."""

    def __init__(self, container, interval=0.1):
        super().__init__(daemon=True)
        self.container, self.interval = container, interval
        self.acknowledged = []
        self.stop = threading.Event()

    def run(self):
        proc = subprocess.Popen(["docker", "exec", "-i", self.container, "psql", "-X", "-q", "-At", "-U", "infer",
                                 "-d", "infer_forge"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, bufsize=1)
        try:
            while not self.stop.is_set():
                proc.stdin.write("INSERT INTO pitr_ticks DEFAULT VALUES RETURNING id, "
                                 "extract(epoch FROM clock_timestamp());\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    break  # the server is gone
                ident, at = line.strip().split("|")
                self.acknowledged.append((int(ident), float(at)))
                time.sleep(self.interval)
        except (BrokenPipeError, ValueError):
            pass
        finally:
            proc.kill()
            proc.wait()


def test_wal_streams_through_the_slot_and_barman_check_passes(host):
    check = barman(host, "check", SERVER)
    assert check.rc == 0, check.stdout
    assert re.search(r"receive-wal running: OK", check.stdout)
    assert re.search(r"replication slot: OK", check.stdout)
    slot = sql(host, "SELECT slot_name, active FROM pg_replication_slots")
    assert slot == "barman|t"
    assert sql(host, "SELECT usename, state FROM pg_stat_replication") == "barman|streaming"


def test_the_replication_login_has_no_superuser_and_its_password_is_not_in_barmans_config(host):
    assert sql(host, "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = 'barman'") == "f|t"
    config = host.file(f"/etc/barman.d/{SERVER}.conf")
    assert config.mode == 0o640 and "pitr-replication-password" not in config.content_string
    pgpass = host.file("/var/lib/barman/.pgpass")
    assert pgpass.user == "barman" and pgpass.mode == 0o600


def test_the_replication_login_is_accepted_from_the_barman_host_alone(host):
    """The review's finding: `host replication barman all` let anyone with the login's password
    stream the whole database from anywhere (and the image's `host all all all` admits a login to
    a `replication=database` walsender and to SQL). The Barman hosts' logins are accepted from the
    Barman host's address alone, rejected from anywhere else ahead of any broader line: the same
    logins and passwords from another host on the same network (the NAS) are refused."""
    address = host.check_output("hostname -I").split()[0]
    hba = sql(host, "SELECT type, database, user_name, address, auth_method FROM pg_hba_file_rules "
                    "WHERE 'barman' = ANY(user_name) OR 'infer_forge_pitr_drill' = ANY(user_name) ORDER BY line_number")
    assert hba.splitlines() == [
        f"host|{{replication}}|{{barman}}|{address}|scram-sha-256",
        f"host|{{all}}|{{barman}}|{address}|scram-sha-256",
        f"host|{{all}}|{{infer_forge_pitr_drill}}|{address}|scram-sha-256",
        "host|{replication}|{barman}|all|reject",
        "host|{all}|{barman}|all|reject",
        "host|{all}|{infer_forge_pitr_drill}|all|reject"], hba
    probes = {
        "physical streaming": ("pitr-replication-password", "user=barman replication=true", "IDENTIFY_SYSTEM"),
        "a database walsender": ("pitr-replication-password", "user=barman dbname=postgres replication=database",
                                 "IDENTIFY_SYSTEM"),
        "Barman's SQL login": ("pitr-replication-password", "user=barman dbname=postgres", "SELECT 1"),
        "the drill's login": ("pitr-drill-password", "user=infer_forge_pitr_drill dbname=infer_forge", "SELECT 1"),
    }
    for what, (password, conninfo, command) in probes.items():
        probe = f"env PGPASSWORD={password} psql -X -At 'host=db connect_timeout=5 {conninfo}' -c '{command}'"
        from_barman = host.run(probe)
        assert from_barman.rc == 0, (what, from_barman.stderr)
        from_nas = ansible("pitr-nas", "-m", "ansible.builtin.command", "-a", probe)
        assert from_nas.returncode != 0, (what, from_nas.stdout)
        assert "pg_hba.conf rejects" in from_nas.stdout, (what, from_nas.stdout)


def test_the_drill_login_is_no_superuser_and_the_barman_host_holds_no_superuser_password(host):
    """The review's finding: the drill logged in as `infer`, the database's superuser, so the Barman
    host held a password that owns the database. Its own login reads, locks and creates restore
    points, and can change nothing; the superuser's password is in none of barman's files."""
    assert sql(host, "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication FROM pg_roles "
                     "WHERE rolname = 'infer_forge_pitr_drill'") == "f|f|f|f"
    login = "PGPASSWORD=pitr-drill-password psql -X -At -h db -U infer_forge_pitr_drill -d infer_forge"
    assert host.run(login + " -c 'SELECT count(*) > 0 FROM orders'").stdout.strip() == "t"  # noqa: S608 - fixed text
    for statement in ("DELETE FROM orders", "ALTER ROLE infer_forge_pitr_drill SUPERUSER",
                      "COPY orders TO PROGRAM 'id'"):
        refused = host.run(f"{login} -c \"{statement}\"")
        assert refused.rc != 0 and "permission denied" in refused.stderr, (statement, refused.stderr)
    held = host.run("grep -rlF pitr-db-password /var/lib/barman /etc/barman.conf /etc/barman.d "
                    "/etc/infer-forge/pitr.env /etc/cron.d")
    assert held.stdout.strip() == "", held.stdout


def test_barman_itself_rejects_a_server_file_it_cannot_use_in_one_line(host):
    host.check_output("printf '[bad]\\nconninfo = host=db\\nbackup_method = rsnyc\\n' > /tmp/bad-server.conf")
    checked = host.run("/opt/infer-forge/scripts/forge pitr check-config /tmp/bad-server.conf")
    assert checked.rc != 0
    assert checked.stderr.strip().splitlines() == [checked.stderr.strip()]
    assert checked.stderr.startswith("ERROR: barman rejects /tmp/bad-server.conf: ") and "rsnyc" in checked.stderr
    good = host.run(f"/opt/infer-forge/scripts/forge pitr check-config /etc/barman.d/{SERVER}.conf")
    assert good.rc == 0, good.stderr


def test_the_status_metrics_say_streaming_up_and_a_recent_base_backup(host):
    host.check_output("runuser -u barman -- env PITR_CONFIG=/etc/infer-forge/pitr.env "
                      "/opt/infer-forge/scripts/forge pitr metrics")
    text = host.file("/var/lib/infer-forge-metrics/pitr/infer_forge_pitr_infer-forge.prom").content_string
    values = dict(re.findall(r'^(infer_forge_pitr_\w+)\{server="infer-forge"\} (\S+)$', text, re.M))
    assert values["infer_forge_pitr_streaming_up"] == "1"
    assert values["infer_forge_pitr_checks_failed"] == "0"
    assert values["infer_forge_pitr_base_backups"] == "1"
    assert abs(float(values["infer_forge_pitr_last_base_backup_timestamp_seconds"]) - time.time()) < 3600
    assert abs(float(values["infer_forge_pitr_status_timestamp_seconds"]) - time.time()) < 120
    assert abs(float(values["infer_forge_pitr_last_wal_archived_timestamp_seconds"]) - time.time()) < 3600
    # The slot's cap (pitr_max_slot_wal_keep_size, 16GB) as the server reports it through Barman's login.
    assert sql(host, "SHOW max_slot_wal_keep_size") == "16GB"
    assert values["infer_forge_pitr_slot_wal_lost"] == "0"
    assert 15 * 2**30 < float(values["infer_forge_pitr_slot_safe_wal_bytes"]) <= 17 * 2**30
    assert "*/2 * * * * barman PITR_CONFIG=/etc/infer-forge/pitr.env /opt/infer-forge/scripts/forge pitr metrics" in \
        host.file("/etc/cron.d/infer-forge-pitr").content_string


def test_a_base_backup_is_in_the_catalog(host):
    backups = json.loads(barman(host, "-f", "json", "list-backups", SERVER).stdout)[SERVER]
    assert [b["status"] for b in backups] == ["DONE"]
    cron = host.file("/etc/cron.d/infer-forge-pitr").content_string
    assert re.search(rf"^0 1 \* \* 0 barman \{{ barman -q backup --immediate-checkpoint {SERVER} ", cron, re.M)


def test_the_pitr_drill_passes_with_exact_counts_while_the_app_writes(host):
    sql(host, "CREATE TABLE IF NOT EXISTS pitr_ticks (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
    writer = Writer(db_container(host), interval=0.05)
    writer.start()
    try:
        time.sleep(1)
        result = playbook("pitr_drill.yml")
    finally:
        writer.stop.set()
        writer.join(10)
    assert result.returncode == 0, result.stdout[-3000:]
    report = json.loads(host.check_output("cat /var/lib/barman/infer-forge-reports/pitr_drill_infer-forge.json"))
    assert report["verdict"] == "PASS", report
    assert report["checks"] == {"restore_point": "passed", "row_counts": "passed", "amcheck": "passed"}
    # The writer kept going through the drill: its rows before and after the restore point differ.
    assert len(writer.acknowledged) > 20
    tables = int(sql(host, "SELECT count(*) FROM pg_tables "
                           "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"))
    assert report["tables_checked"] == tables >= 3 and report["rows_checked"] > 5200
    print(f"\nPITR drill: {report['reason']}; recovery {report['recovery_seconds']} s, "
          f"{len(writer.acknowledged)} rows written meanwhile")
    metrics = host.file("/var/lib/infer-forge-metrics/pitr/infer_forge_pitr_drill_infer-forge.prom").content_string
    assert re.search(r'^infer_forge_pitr_drill_last_run_success\{server="infer-forge"\} 1$', metrics, re.M)
    assert not host.run("ls /var/lib/barman/infer-forge-scratch/").stdout.strip(), "the scratch cluster stayed"


def test_the_weekly_cron_entry_of_the_drill_passes_too(host):
    cron = host.file("/etc/cron.d/infer-forge-pitr").content_string
    [entry] = [line for line in cron.splitlines() if "forge pitr drill" in line and not line.startswith("#")]
    fields = entry.split()
    assert fields[:6] == ["30", "4", "*", "*", "0", "barman"]
    command = " ".join(fields[6:]).split(" >>")[0]
    result = host.run(f"runuser -u barman -- sh -c {shlex.quote(command)}")
    assert result.rc == 0, result.stdout + result.stderr
    assert re.search(r"^PASS: PITR drill of infer-forge: 3 tables, \d+ rows at restore point forge_pitr_drill_\S+ "
                     r"recovered exactly \(", result.stdout, re.M), result.stdout


def test_checklist_item_12_passes_on_the_barman_host_after_the_drill(host):
    run = ansible("pitr-barman", "--become", "-m", "forge_checklist", "-a", "item=12", "-o", timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout.split("=>", 1)[1])
    assert result["status"] == "PASS", (result["evidence"], host.run(
        "tail -20 /var/log/barman/infer-forge-pitr.log; cat /var/lib/infer-forge-metrics/pitr/"
        "infer_forge_pitr_infer-forge.prom").stdout)
    assert result["evidence"][0] == "infer-forge: WAL streaming up, 0 barman checks failed"


def test_the_dashboards_pitr_row_has_data_from_this_hosts_metrics(host):
    """Each panel of the Grafana row, queried in a Prometheus that scrapes this host's textfile
    metrics (the status cron's and the drill's) through node_exporter, both on loopback."""
    import yaml

    with open(os.path.join(REPO, "roles", "grafana_dashboards", "defaults", "main.yml")) as handle:
        rows = yaml.safe_load(handle)["grafana_dashboards_rows"]
    [row] = [row for row in rows if row["title"] == "Point-in-time recovery"]
    expressions = [panel["expr"] for panel in row["panels"]]
    assert len(expressions) == 6
    config = ("global: {scrape_interval: 1s}\n"
              "scrape_configs: [{job_name: node, static_configs: [{targets: ['127.0.0.1:19100']}]}]\n")
    host.check_output(f"mkdir -p /tmp/pitr-prom && printf %s {shlex.quote(config)} > /tmp/pitr-prom/prometheus.yml")
    host.check_output("setsid nohup prometheus-node-exporter --web.listen-address=127.0.0.1:19100 "
                      "--collector.disable-defaults --collector.textfile "
                      "--collector.textfile.directory='/var/lib/infer-forge-metrics/*' >/dev/null 2>&1 &")
    host.check_output("setsid nohup prometheus --config.file=/tmp/pitr-prom/prometheus.yml "
                      "--storage.tsdb.path=/tmp/pitr-prom/data --web.listen-address=127.0.0.1:19090 "
                      ">/tmp/pitr-prom/log 2>&1 &")
    try:
        deadline = time.monotonic() + 60
        empty = expressions
        while empty and time.monotonic() < deadline:
            time.sleep(2)
            still = []
            for expr in empty:
                answer = host.run("curl -sf -G --data-urlencode " + shlex.quote("query=" + expr)
                                  + " http://127.0.0.1:19090/api/v1/query")
                if answer.rc != 0 or not json.loads(answer.stdout)["data"]["result"]:
                    still.append(expr)
            empty = still
        assert empty == [], f"no data for: {empty}"
    finally:
        host.run("pkill -f 'prometheus --config.file=/tmp/pitr-prom' ; pkill -f 'web.listen-address=127.0.0.1:19100'")


def test_a_recovery_to_a_time_between_two_commits_holds_the_first_and_not_the_second(host):
    sql(host, "CREATE TABLE IF NOT EXISTS pitr_marks (name text PRIMARY KEY)")
    sql(host, "INSERT INTO pitr_marks VALUES ('first')")
    between = sql(host, "SELECT clock_timestamp()")
    time.sleep(1.5)
    sql(host, "INSERT INTO pitr_marks VALUES ('second')")
    # No WAL switch: both commits are in the segment still being streamed.
    result = playbook("pitr_restore.yml", "-e", f"pitr_target_time='{between}'", "-e", "pitr_keep=true",
                      ANSIBLE_STDOUT_CALLBACK="json")
    assert result.returncode == 0, result.stdout[-3000:]
    tasks = json.loads(result.stdout)["plays"][0]["tasks"]
    [recovered] = [t["hosts"]["pitr-barman"] for t in tasks if "data_directory" in t["hosts"]["pitr-barman"]]
    assert recovered["counts"]["public.pitr_marks"] == 1
    socket_dir = recovered["socket_directory"]
    query = "SELECT name FROM pitr_marks ORDER BY name"
    marks = host.check_output(f"runuser -u barman -- psql -h {socket_dir} -p 55432 -U infer -d infer_forge "
                              f"-Atc '{query}'")
    assert marks.splitlines() == ["first"]
    print(f"\nPITR to {between}: pitr_marks holds 'first' only; recovery {recovered['recovery_seconds']} s")
    # Kept for reading, on its socket only: no TCP listener on the side port.
    assert not host.run("ss -Htln 'sport = :55432'").stdout.strip()
    data = os.path.dirname(socket_dir) + "/data"
    host.check_output(f"runuser -u barman -- /usr/lib/postgresql/17/bin/pg_ctl -D {data} -m fast -w stop")
    host.check_output(f"rm -rf {os.path.dirname(socket_dir)}")


def forge_pitr(host, *args):
    return host.run("runuser -u barman -- env PITR_CONFIG=/etc/infer-forge/pitr.env /opt/infer-forge/scripts/forge "
                    "pitr " + " ".join(shlex.quote(arg) for arg in args))


def test_undo_a_delete_two_seconds_after_the_noted_time_with_no_wal_switch(host):
    """The accident PITR exists for, on a quiet database: rows written, the time noted, the rows
    deleted two seconds later, and nothing switches the WAL; the recovery to that time holds
    exactly the rows of that time, read from the segment Barman is still receiving."""
    sql(host, "CREATE TABLE IF NOT EXISTS pitr_accident (id serial PRIMARY KEY, note text)")
    sql(host, "INSERT INTO pitr_accident (note) SELECT 'order ' || n FROM generate_series(1, 12) AS n")
    expected = int(sql(host, "SELECT count(*) FROM pitr_accident"))
    noted = sql(host, "SELECT clock_timestamp()")
    time.sleep(2)
    sql(host, "DELETE FROM pitr_accident")
    time.sleep(1)  # pg_receivewal has it within milliseconds; this is not a switch
    recovered = forge_pitr(host, "recover", "--time", noted)
    assert recovered.rc == 0, recovered.stdout + recovered.stderr
    assert "Traceback" not in recovered.stderr
    [(seconds, data)] = re.findall(r"in ([\d.]+) s into (\S+);", recovered.stdout)
    socket_dir = os.path.join(os.path.dirname(data), "socket")
    count = "SELECT count(*) FROM pitr_accident"
    try:
        rows = host.check_output(f"runuser -u barman -- psql -X -h {socket_dir} -p 55432 -U infer -d infer_forge "
                                 f"-Atc '{count}'")
    finally:
        host.run(f"runuser -u barman -- /usr/lib/postgresql/17/bin/pg_ctl -D {data} -m fast -w stop")
        host.run(f"rm -rf {os.path.dirname(data)}")
    assert int(rows) == expected
    print(f"\nUndo a DELETE 2 s after {noted}, no WAL switch: {rows} of {expected} rows back; recovery {seconds} s")


def test_a_time_after_the_last_commit_received_is_refused_in_one_line_naming_it(host):
    sql(host, "CREATE TABLE IF NOT EXISTS pitr_marks (name text PRIMARY KEY)")
    sql(host, "INSERT INTO pitr_marks VALUES ('the last commit') ON CONFLICT DO NOTHING")
    later = sql(host, "SELECT clock_timestamp() + interval '1 hour'")
    before = set(host.check_output("ls /var/lib/barman/infer-forge-scratch").split())
    refused = forge_pitr(host, "recover", "--time", later)
    assert refused.rc == 1 and refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"ERROR: no WAL of infer-forge reaches {later}: the last commit Barman received is at ")
    assert line.endswith("; nothing was changed")
    assert set(host.check_output("ls /var/lib/barman/infer-forge-scratch").split()) == before


def test_a_recovery_that_ends_in_a_fatal_keeps_its_directory_and_quotes_postgresql(host):
    failed = forge_pitr(host, "recover", "--name", "no_such_restore_point")
    assert failed.rc == 1 and "Traceback" not in failed.stderr
    [line] = failed.stderr.splitlines()
    assert "FATAL: recovery ended before configured recovery target was reached" in line, line
    kept = re.search(r"kept for inspection in (\S+) ", line).group(1)
    assert host.file(f"{kept}/postgresql.log").contains("recovery ended before configured recovery target")
    assert not host.file(f"{kept}/data/postmaster.pid").exists
    host.check_output(f"rm -rf {kept}")


def test_a_login_event_trigger_a_production_superuser_planted_never_runs_on_the_barman_host(host):
    """PostgreSQL 17's login event trigger travels in the WAL: a recovery's every connection
    would run it as the superuser the scratch cluster trusts, COPY TO PROGRAM as barman."""
    marker = "/tmp/forge-planted-login-trigger"
    # Quoted with '' rather than $$, which the shell that runs psql would expand.
    sql(host, "CREATE OR REPLACE FUNCTION forge_planted() RETURNS event_trigger LANGUAGE plpgsql AS "
              f"'BEGIN COPY (SELECT 1) TO PROGRAM ''touch {marker}''; END'")
    sql(host, "CREATE EVENT TRIGGER forge_planted ON login EXECUTE FUNCTION forge_planted()")
    try:
        recovered = forge_pitr(host, "recover")
        assert recovered.rc == 0, recovered.stdout + recovered.stderr
        [data] = re.findall(r"s into (\S+);", recovered.stdout)
        socket_dir = os.path.join(os.path.dirname(data), "socket")
        query = "SELECT count(*) FROM pg_event_trigger"
        psql = f"runuser -u barman -- psql -X -h {socket_dir} -p 55432 -U infer -d infer_forge"
        count = host.run(f"{psql} -Atc '{query}'")
        host.run(f"runuser -u barman -- /usr/lib/postgresql/17/bin/pg_ctl -D {data} -m fast -w stop")
        host.run(f"rm -rf {os.path.dirname(data)}")
        assert count.stdout.strip() == "1"  # the trigger is in the copy, and never fired
        assert not host.file(marker).exists
    finally:
        sql(host, "DROP EVENT TRIGGER IF EXISTS forge_planted")
        sql(host, "DROP FUNCTION IF EXISTS forge_planted()")


def test_a_recovery_to_a_time_before_the_newest_base_backup_starts_from_the_backup_before_it(host):
    """A weekly base backup must not shorten the window: a time before the newest base backup is
    recovered from the one before it (Barman's own choice of backup for the time)."""
    sql(host, "CREATE TABLE IF NOT EXISTS pitr_marks (name text PRIMARY KEY)")
    sql(host, "INSERT INTO pitr_marks VALUES ('before-the-new-base-backup')")
    expected = int(sql(host, "SELECT count(*) FROM pitr_marks"))
    between = sql(host, "SELECT clock_timestamp()")
    time.sleep(1.5)
    sql(host, "INSERT INTO pitr_marks VALUES ('after')")
    before = {b["backup_id"] for b in json.loads(barman(host, "-f", "json", "list-backups", SERVER).stdout)[SERVER]}
    newest = barman(host, "-q", "backup", "--immediate-checkpoint", SERVER)
    assert newest.rc == 0, newest.stdout + newest.stderr
    # Done once the segment it ends in is filed: closed by a switch, filed by barman cron.
    assert barman(host, "-q", "switch-wal", "--force", "--archive", "--archive-timeout", "60", SERVER).rc == 0
    for _ in range(30):
        barman(host, "-q", "cron")
        listed = json.loads(barman(host, "-f", "json", "list-backups", SERVER).stdout)[SERVER]
        if any(b["status"] == "DONE" and b["backup_id"] not in before for b in listed):
            break
        time.sleep(2)
    else:
        raise AssertionError(f"the new base backup never completed: {listed}")
    result = playbook("pitr_restore.yml", "-e", f"pitr_target_time='{between}'", "-e", "pitr_keep=false",
                      ANSIBLE_STDOUT_CALLBACK="json")
    assert result.returncode == 0, result.stdout[-3000:]
    tasks = json.loads(result.stdout)["plays"][0]["tasks"]
    [recovered] = [t["hosts"]["pitr-barman"] for t in tasks if "counts" in t["hosts"]["pitr-barman"]]
    assert recovered["counts"]["public.pitr_marks"] == expected
    print(f"\nPITR to {between}, before the newest base backup: pitr_marks holds {expected} rows as then; "
          f"recovery {recovered['recovery_seconds']} s")


def crash_and_recover(host, label):
    """A row every 100 ms, a WAL switch, `docker kill` of the db 2 s later (no shutdown, no
    restart), then recovery to latest; returns (missing acknowledged rows, acknowledged rows, recovery seconds)."""
    container = db_container(host)
    # A lost server stays lost: no restart policy brings it back to send Barman what it had.
    subprocess.run(["docker", "update", "--restart=no", container], check=True, capture_output=True, timeout=60)
    writer = Writer(container, interval=0.1)
    writer.start()
    time.sleep(3)
    # A bad day: a segment completes two seconds before the crash and barman cron (each minute)
    # has not filed it yet; the recovery must replay it and the next one's streamed part.
    subprocess.run(["docker", "exec", container, "psql", "-X", "-U", "infer", "-d", "postgres", "-tAc",
                    "SELECT pg_switch_wal()"], check=True, capture_output=True, timeout=60)
    time.sleep(2)
    subprocess.run(["docker", "kill", container], check=True, capture_output=True, timeout=60)
    killed_at = time.time()
    writer.join(10)
    acknowledged = writer.acknowledged
    assert len(acknowledged) > 20
    try:
        recovered = host.run("runuser -u barman -- env PITR_CONFIG=/etc/infer-forge/pitr.env "
                             "/opt/infer-forge/scripts/forge pitr recover")
        assert recovered.rc == 0, recovered.stdout + recovered.stderr
        [(rto, data)] = re.findall(r"in ([\d.]+) s into (\S+);", recovered.stdout)
        socket_dir = os.path.join(os.path.dirname(data), "socket")
        # By id, not by count: a crash makes a sequence skip values (it logs 32 ahead), so
        # after the first crash test the ids have gaps.
        first = int(min(i for i, _ in acknowledged))
        query = f"SELECT id FROM pitr_ticks WHERE id >= {first}"  # noqa: S608 - an int we read
        present = {int(line) for line in host.check_output(
            f"runuser -u barman -- psql -X -h {socket_dir} -p 55432 -U infer -d infer_forge -Atc '{query}'").split()}
        host.check_output(f"runuser -u barman -- /usr/lib/postgresql/17/bin/pg_ctl -D {data} -m fast -w stop")
        host.check_output(f"rm -rf {os.path.dirname(data)}")
        missing = [(ident, at) for ident, at in acknowledged if ident not in present]
        window = (missing[-1][1] - missing[0][1]) if missing else 0.0
        print(f"\nRPO ({label}, docker kill): {len(missing)} of {len(acknowledged)} acknowledged rows missing "
              f"(window {window:.2f} s; acknowledged ids {acknowledged[0][0]}..{acknowledged[-1][0]}, "
              f"{len(present)} of them recovered); RTO: recovery to latest {rto} s; killed "
              f"{killed_at - acknowledged[-1][1]:.2f} s after the last ack")
        return missing, acknowledged, float(rto), window
    finally:
        subprocess.run(["docker", "start", container], check=False, capture_output=True, timeout=60)
        subprocess.run(["docker", "update", "--restart=unless-stopped", container], check=False, capture_output=True,
                       timeout=60)


def test_a_killed_database_loses_at_most_seconds_of_acknowledged_rows_with_async_streaming(host):
    missing, _acknowledged, rto, window = crash_and_recover(host, "async streaming")
    assert len(missing) == 0 or window <= 5.0
    assert rto < 60


def receiver_command_line(host):
    return host.run("pgrep -u barman -a -f 'pg_receivewal .*--slot'").stdout


def test_with_synchronous_streaming_a_killed_database_loses_no_acknowledged_row(host):
    """Last, as it kills the database again: pitr_synchronous=true makes Barman's receiver the
    synchronous standby; then the deploy switches back, with the receiver still reconnecting."""
    # No commit may wait for a receiver that is not there: a name nobody streams under is refused.
    refused = ansible("pitr-barman", "--become", "-m", "ansible.builtin.include_role",
                      "-a", "name=pitr tasks_from=synchronous",
                      "-e", "pitr_synchronous=true", "-e", "pitr_streaming_archiver_name=nobody_streams")
    assert refused.returncode != 0 and "does not stream from this server" in refused.stdout, refused.stdout[-3000:]
    assert sql(host, "SHOW synchronous_standby_names") == ""
    switched = playbook("pitr.yml", "-e", "pitr_synchronous=true")
    assert switched.returncode == 0, switched.stdout[-4000:]
    assert sql(host, "SHOW synchronous_standby_names") == "barman_receive_wal"
    assert "--synchronous" in receiver_command_line(host)
    missing, acknowledged, rto, _window = crash_and_recover(host, "synchronous streaming")
    assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged rows lost with synchronous streaming"
    assert rto < 60
    # Back to async while the restarted server's commits may still wait for the receiver:
    # the role's own statements commit locally, so the deploy cannot hang on it.
    back = playbook("pitr.yml", "-e", "pitr_synchronous=false")
    assert back.returncode == 0, back.stdout[-4000:]
    assert sql(host, "SHOW synchronous_standby_names") == ""
    assert "--synchronous" not in receiver_command_line(host) and "pg_receivewal" in receiver_command_line(host)
