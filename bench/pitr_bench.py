"""Point-in-time recovery next to the runbook's logical backup, on the same database, in one run.

Runs inside the Debian 13 image (PostgreSQL 17, Barman 3.13), started by bench.py with the
repository mounted read-only at /repo and a work directory at /bench. One throwaway server
(trust on loopback: nothing else can reach this container's server), the same generated data
as bench.py, then, paired:

  runbook_backup    pg_dump | gzip | openssl enc   (the runbook's backup_db.sh)
  base_backup       barman backup --wait           (pg_basebackup, and the WAL it needs)
  runbook_restore   gunzip < dump.sql.gz | psql    (the runbook's restore, into a new database)
  recovery          forge pitr recover             (barman restore into a scratch cluster, WAL
                                                    replayed to the latest segment, promoted)
  putback           the put-back's data path after it: the copy served (one-time login, TLS),
                    pg_basebackup -X stream of it over TLS with SCRAM bound to the channel into
                    a new data directory, pg_verifybackup, that server started until it accepts
                    connections (what forge_putback does inside the db volume, without Docker's
                    stop/start of the services: molecule/pitr measures those around it)

Prints one JSON line last: seconds and bytes.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dataset import documents_sql  # noqa: E402

BIN = "/usr/lib/postgresql/17/bin"
WORK = "/bench"
DATA = f"{WORK}/pg"
SERVER = "bench"
BARMAN_CONF = f"""[{SERVER}]
description = "bench: PostgreSQL 17 on loopback"
conninfo = host=127.0.0.1 port=5432 user=postgres dbname=postgres
streaming_conninfo = host=127.0.0.1 port=5432 user=postgres
backup_method = postgres
streaming_archiver = on
slot_name = barman
create_slot = auto
path_prefix = {BIN}
"""


def sh(command, user=None, timeout=7200):
    """Run a shell command (as ``user``), fail loudly, return (seconds, stdout)."""
    argv = ["bash", "-o", "pipefail", "-c", command]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {command}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def psql(sql, database="postgres"):
    return sh(f"psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d {database} -tAc {shlex.quote(sql)}",
              user="postgres")[1].strip()


def start_server():
    os.makedirs(WORK, exist_ok=True)
    os.chmod(WORK, 0o755)
    os.makedirs(DATA, mode=0o700)
    sh(f"chown postgres: {DATA}")
    sh(f"{BIN}/initdb --no-instructions -D {DATA} -A trust -U postgres", user="postgres")
    with open(f"{DATA}/postgresql.conf", "a") as conf:
        # As bench.py's host server; WAL for streaming as the pitr role requires.
        conf.write("listen_addresses = '127.0.0.1'\nshared_buffers = 512MB\nmaintenance_work_mem = 512MB\n"
                   "max_wal_size = 4GB\nwal_level = replica\nmax_wal_senders = 4\nmax_replication_slots = 4\n")
    sh(f"{BIN}/pg_ctl -D {DATA} -l /tmp/pg.log -w start", user="postgres")


def generate(scale, rows):
    psql("CREATE DATABASE bench")
    started = time.perf_counter()
    sh(f"{BIN}/pgbench -i -q -s {scale} -h 127.0.0.1 -U postgres bench", user="postgres")
    psql(documents_sql(rows), database="bench")
    return int(psql("SELECT pg_database_size('bench')")), time.perf_counter() - started


def start_barman():
    sh("chown barman: /var/lib/barman")  # bench.py mounts its work directory there
    with open(f"/etc/barman.d/{SERVER}.conf", "w") as handle:
        handle.write(BARMAN_CONF)
    sh("barman -q cron", user="barman")
    # Streaming is up once a switched segment arrives (the slot is created by the first cron).
    for _ in range(30):
        try:
            sh(f"barman -q switch-wal --force --archive --archive-timeout 30 {SERVER}", user="barman")
            return
        except SystemExit:
            time.sleep(2)
            sh("barman -q cron", user="barman")
    raise SystemExit("Barman never received a WAL segment")


def base_backup():
    """Seconds until the base backup is usable (DONE: copied, and the WAL segment it ends in
    filed, which a forced switch closes on an idle server), and Barman's list of backups."""
    started = time.perf_counter()
    sh(f"barman -q backup --immediate-checkpoint {SERVER}", user="barman")
    while True:
        sh(f"barman -q switch-wal --force --archive --archive-timeout 60 {SERVER}; barman -q cron", user="barman")
        listed = json.loads(sh(f"barman -f json list-backups {SERVER}", user="barman")[1])[SERVER]
        if any(entry.get("status") == "DONE" for entry in listed):
            return time.perf_counter() - started, listed
        if time.perf_counter() - started > 3600:
            raise SystemExit(f"the base backup is not DONE after an hour: {listed}")
        time.sleep(1)


def recovery_phases(scratch):
    """Where the recovery's time went, from Barman's log and the scratch cluster's: the base
    backup's copy, the WAL's copy, PostgreSQL's fsync of the copy, its replay and its
    end-of-recovery checkpoint."""
    def stamps(path, pattern, form):
        with open(path) as handle:
            return [time.mktime(time.strptime(line[:19], form)) + float("0." + line[20:23])
                    for line in handle if re.search(pattern, line)]

    barman_log = "/var/log/barman/barman.log"
    form = "%Y-%m-%d %H:%M:%S"
    [copy_start] = stamps(barman_log, "Copying the base backup", form)[-1:]
    [copy_end] = stamps(barman_log, "Copy finished", form)[-1:]
    # Barman copies the WAL first only when PostgreSQL cannot read it from the archive itself
    # (forge pitr's restore_command, for an uncompressed archive); then the replay reads it.
    wal_start = stamps(barman_log, "Copying required WAL segments", form)[-1:]
    wal_end = stamps(barman_log, "Finished copying .* WAL files", form)[-1:]
    wal_copy = round(wal_end[0] - wal_start[0], 1) if wal_start and wal_end and wal_end[0] >= copy_end else 0.0
    pg_log = f"{scratch}/postgresql.log"
    with open(pg_log) as handle:
        said = handle.read()
    replay = re.search(r"redo done at .* elapsed: ([\d.]+) s", said)
    # PostgreSQL's own steps: the fsync of the copied data directory before the replay, and the
    # end-of-recovery checkpoint after it.
    interrupted = stamps(pg_log, "database system was interrupted", form)[-1:]
    starting = stamps(pg_log, "starting backup recovery|starting archive recovery", form)[:1]
    checkpoint = re.findall(r"end-of-recovery.*?checkpoint complete: [^\n]*? total=([\d.]+) s", said, re.S)
    return {"recovery_copy_base": round(copy_end - copy_start, 1), "recovery_copy_wal": wal_copy,
            "recovery_sync_data": round(starting[0] - interrupted[0], 2) if interrupted and starting else 0.0,
            "recovery_replay": float(replay.group(1)) if replay else 0.0,
            "recovery_checkpoint": float(checkpoint[-1]) if checkpoint else 0.0}


SERVE = """import json, sys
sys.path.insert(0, "/repo/module_utils")
from forge.pitr import PitrOptions
from forge.pitr_serve import ScratchServer
options = PitrOptions("bench", postgres_bin="{bin}", scratch_root="{scratch}", login_user="postgres")
served = ScratchServer(options, "{data}").serve("infer_forge_putback", "127.0.0.1/32", sys.stdin.read().strip(),
                                                listen="127.0.0.1", port=55433)
print(json.dumps(served))
"""


def putback(scratch, data):
    """The put-back's data path, timed from the recovered copy to a server on the copy that
    accepts connections: serve, pg_basebackup over TLS pinned to the served certificate with
    SCRAM bound to the channel (as forge_putback's container runs it), pg_verifybackup, start."""
    password = os.urandom(18).hex()
    target, secrets = f"{WORK}/putback", f"{WORK}/putback-secrets"
    for directory in (target, secrets):
        os.makedirs(directory, mode=0o700)
        sh(f"chown postgres: {directory}")
    started = time.perf_counter()
    proc = subprocess.run(["runuser", "-u", "barman", "--", "python3", "-c",
                           SERVE.format(bin=BIN, scratch=scratch, data=data)],
                          input=password, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"serving the copy failed: {proc.stderr[-2000:]}")
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    serve = time.perf_counter() - started
    with open(f"{secrets}/root.crt", "w") as handle:
        handle.write(served["certificate"])
    with open(f"{secrets}/pgpass", "w") as handle:
        handle.write(f"127.0.0.1:55433:*:infer_forge_putback:{password}\n")
    sh(f"chown -R postgres: {secrets} && chmod 0600 {secrets}/pgpass {secrets}/root.crt")
    client = (f"env PGPASSFILE={secrets}/pgpass PGSSLMODE=verify-ca PGSSLROOTCERT={secrets}/root.crt "
              "PGCHANNELBINDING=require PGREQUIREAUTH=scram-sha-256")
    copy, _ = sh(f"{client} {BIN}/pg_basebackup --no-password -h 127.0.0.1 -p 55433 -U infer_forge_putback "
                 f"-D {target} -X stream -c fast", user="postgres")
    verify, _ = sh(f"{BIN}/pg_verifybackup -q {target}", user="postgres")
    begin = time.perf_counter()
    sh(f"{BIN}/pg_ctl -D {target} -o '-p 55434 -c listen_addresses=127.0.0.1' -l {secrets}/server.log start",
       user="postgres")
    while subprocess.run(["runuser", "-u", "postgres", "--", f"{BIN}/pg_isready", "-q", "-h", "127.0.0.1",
                          "-p", "55434"]).returncode != 0:
        time.sleep(0.05)
    up = time.perf_counter() - begin
    total = time.perf_counter() - started
    sh(f"{BIN}/pg_ctl -D {target} -m fast -w stop", user="postgres")
    sh(f"rm -rf {target} {secrets}")
    return {"putback_serve": round(serve, 2), "putback_copy": round(copy, 2), "putback_verify": round(verify, 2),
            "putback_start": round(up, 2), "putback_to_connections": round(total, 2),
            "putback_copy_and_verify": round(copy + verify, 2)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--rows", type=int, default=2000000)
    args = parser.parse_args()
    start_server()
    size, generated = generate(args.scale, args.rows)
    print(f"generated bench in the Debian 13 container: {size / 2**30:.2f} GiB in {generated:.0f} s", flush=True)
    start_barman()
    result = {"database_bytes": size}
    with open(f"{WORK}/pass", "w") as handle:
        handle.write("bench passphrase\n")
    result["runbook_backup"], _ = sh(
        f"pg_dump -h 127.0.0.1 -U postgres -d bench | gzip | openssl enc -aes-256-cbc -salt -pbkdf2 "
        f"-pass file:{WORK}/pass -out {WORK}/runbook.sql.gz.enc")
    result["runbook_backup_bytes"] = os.path.getsize(f"{WORK}/runbook.sql.gz.enc")
    result["base_backup"], listed = base_backup()
    result["base_backup_bytes"] = int(listed[0].get("size_bytes") or 0) if listed else 0
    # Commits after the base backup, so the recovery replays WAL as it would on a bad day (a
    # 100,000-row update touching every page of the largest table: ~800 MB of WAL).
    psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = 0", database="bench")
    sh(f"barman -q switch-wal --force --archive --archive-timeout 60 {SERVER}", user="barman")

    scratch = "/var/lib/barman/bench-scratch"
    with open(f"{WORK}/pitr.env", "w") as handle:
        handle.write(f"PITR_SERVER={SERVER}\nPITR_POSTGRES_BIN={BIN}\nPITR_SCRATCH_ROOT={scratch}\n"
                     "PITR_SCRATCH_PORT=55432\nPOSTGRES_HOST=127.0.0.1\nPOSTGRES_USER=postgres\nPOSTGRES_DB=bench\n")
    wall, out = sh(f"env PITR_CONFIG={WORK}/pitr.env /repo/scripts/forge pitr recover", user="barman")
    result["recovery"] = float(re.search(r"in ([\d.]+) s into", out).group(1))
    result["recovery_with_counts_wall"] = wall
    print(out.strip(), flush=True)
    data = re.search(r"s into (\S+);", out).group(1)
    result.update(recovery_phases(os.path.dirname(data)))
    result.update(putback(scratch, data))
    result["putback_total"] = round(result["recovery"] + result["putback_to_connections"], 2)
    sh(f"{BIN}/pg_ctl -D {data} -m fast -w stop && rm -rf {os.path.dirname(data)}", user="barman")
    # After the recovery: the runbook's restore writes its own 2 GB of WAL, which a recovery to
    # latest would otherwise replay too. It takes the unencrypted `pg_dump | gzip` file it
    # documents (made untimed).
    sh(f"pg_dump -h 127.0.0.1 -U postgres -d bench | gzip > {WORK}/runbook.sql.gz")
    psql("CREATE DATABASE bench_runbook_restore")
    result["runbook_restore"], _ = sh(
        f"gunzip < {WORK}/runbook.sql.gz | psql -X -q -h 127.0.0.1 -U postgres -d bench_runbook_restore > /dev/null")
    psql("DROP DATABASE bench_runbook_restore")
    os.unlink(f"{WORK}/runbook.sql.gz")
    os.unlink(f"{WORK}/runbook.sql.gz.enc")

    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
