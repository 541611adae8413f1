"""Cost as the work grows (issue 33, items 1 and 8): `BENCH_ONLY=scale make bench`.

On one throwaway PostgreSQL 15 (max_locks_per_transaction sized for the widest schema):

- 1,000, 10,000 and 100,000 tables (BENCH_TABLES to change): our backup (encrypted gzip, signed
  manifest with every table's exact row count), our verify and our drill (restore into a scratch
  database, every table's count compared exactly, dropped), each with the engine's peak RSS;
  beside them the runbook's `pg_dump | gzip` of the same database. The drill must PASS with
  every table checked: a backup that says complete is one our own verify and drill accept.
- 100 small databases on the same server (BENCH_DATABASES): one `playbooks/backup.yml` run
  over all of them, a loop of `backup_db.sh` (what cron runs) and a loop of `pg_dump | gzip`;
  the per-database overhead is (ours - loop of pg_dump | gzip) / databases.

Prints one table; BENCH_RUNS (default 1) repeats each measurement and reports the median.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from servers import PostgresServer  # noqa: E402

HOST_PYTHON = "/usr/bin/python3"
PASSPHRASE = "scale bench passphrase, long enough"
MEASURE = os.path.join(REPO, "bench", "measure.py")
ROWS_PER_TABLE = 3  # in every tenth table; the counts are what the drill compares


def timed(command, env, shell=False, timeout=7200):
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, shell=shell, capture_output=True, text=True, timeout=timeout,
                          executable="/bin/bash" if shell else None)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {command}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return elapsed, proc


def wide_database(server, name, tables):
    """``tables`` tables owned by the app role; every tenth holds ROWS_PER_TABLE rows."""
    server.create_database(name)
    with server.connect(name, superuser=False) as conn:
        for first in range(0, tables, 1000):
            last = min(first + 999, tables - 1)
            conn.execute(f"""DO $$ BEGIN FOR i IN {first}..{last} LOOP
                EXECUTE format('CREATE TABLE %I (id int)', 't_' || i);
                IF i % 10 = 0 THEN EXECUTE format('INSERT INTO %I SELECT generate_series(1, {ROWS_PER_TABLE})',
                                                  't_' || i); END IF;
                END LOOP; END $$""")


def engine_env(server, database, backup_dir, passfile):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_", "DRILL_"))}
    env.update(server.app_env(database))
    env.update({"BACKUP_DIR": backup_dir, "BACKUP_CONFIG": "", "RETENTION_DAYS": "30",
                "BACKUP_PASSPHRASE_FILE": passfile, "BACKUP_STALL_TIMEOUT": "3600"})
    return env


def engine(env, *command):
    elapsed, proc = timed([HOST_PYTHON, MEASURE, *command], env)
    return elapsed, int(re.search(r"peak_rss_kb=(\d+)", proc.stderr).group(1)), proc


def median_of(runs, measure):
    values = [measure() for _ in range(runs)]
    if isinstance(values[0], tuple):
        return tuple(statistics.median(v[i] for v in values) for i in range(len(values[0])))
    return statistics.median(values)


def wide(server, workdir, tables, runs, passfile):
    name = f"wide_{tables}"
    started = time.perf_counter()
    wide_database(server, name, tables)
    made = time.perf_counter() - started
    env = dict(os.environ, PGPASSWORD=server.app_password)
    conn = f"-h {server.host} -p {server.port} -U {server.app_user}"
    runbook = os.path.join(workdir, f"{name}.sql.gz")
    pg_dump_gzip = median_of(runs, lambda: timed(
        f"set -o pipefail; pg_dump {conn} -d {name} --no-owner --no-privileges | gzip > {runbook}",
        env, shell=True)[0])
    backup_dir = os.path.join(workdir, name)
    ours = engine_env(server, name, backup_dir, passfile)

    def backup():
        shutil.rmtree(backup_dir, ignore_errors=True)
        elapsed, rss, _ = engine(ours, "backup")
        return elapsed, rss

    backup_s, backup_rss = median_of(runs, backup)
    verify_s, verify_rss = median_of(runs, lambda: engine(ours, "verify")[:2])
    drill_s, drill_rss, proc = engine(ours, "drill")
    passed = re.search(rf"^PASS: .*: {tables} tables, (\d+) rows checked", proc.stdout, re.M)
    if not passed:
        raise SystemExit(f"the drill of {tables} tables did not PASS with every table checked:\n{proc.stdout[-2000:]}")
    manifest = [n for n in os.listdir(backup_dir) if n.endswith(".manifest.json")][0]
    figures = {"tables": tables, "generate_s": round(made, 1), "pg_dump_gzip_s": round(pg_dump_gzip, 2),
               "backup_s": round(backup_s, 2), "verify_s": round(verify_s, 2), "drill_s": round(drill_s, 2),
               "backup_rss_mb": round(backup_rss / 1024, 1), "verify_rss_mb": round(verify_rss / 1024, 1),
               "drill_rss_mb": round(drill_rss / 1024, 1), "rows_checked": int(passed.group(1)),
               "manifest_mb": round(os.path.getsize(os.path.join(backup_dir, manifest)) / 1e6, 2)}
    server.drop_database(name)
    return figures


def many_databases(server, workdir, count, runs, passfile):
    names = [f"small_{i:03d}" for i in range(count)]
    for name in names:
        server.create_database(name)
        with server.connect(name, superuser=False) as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 100) AS g")
    env = dict(os.environ, PGPASSWORD=server.app_password)
    conn = f"-h {server.host} -p {server.port} -U {server.app_user}"
    loop_dir = os.path.join(workdir, "loop")
    os.makedirs(loop_dir, exist_ok=True)
    pg_dump_loop = median_of(runs, lambda: timed(
        "set -o pipefail; for db in " + " ".join(names) + f"; do pg_dump {conn} -d $db --no-owner --no-privileges "
        f"| gzip > {loop_dir}/$db.sql.gz || exit 1; done", env, shell=True)[0])

    def cron_loop():
        backup_dir = os.path.join(workdir, "cron")
        shutil.rmtree(backup_dir, ignore_errors=True)
        started = time.perf_counter()
        for name in names:
            timed([os.path.join(REPO, "scripts", "backup_db.sh")], engine_env(server, name, backup_dir, passfile))
        return time.perf_counter() - started

    cron_s = median_of(runs, cron_loop)

    def one_playbook_run():
        backup_dir = os.path.join(workdir, "playbook")
        shutil.rmtree(backup_dir, ignore_errors=True)
        inventory = os.path.join(workdir, "inventory.json")
        with open(inventory, "w") as handle:
            json.dump({"backup": {"hosts": {"localhost": {"ansible_connection": "local",
                                                          "ansible_python_interpreter": HOST_PYTHON}},
                                  "vars": {"backup_dir": backup_dir, "backup_databases": names,
                                           "backup_postgres_host": server.host, "backup_postgres_port": server.port,
                                           "backup_postgres_user": server.app_user,
                                           "backup_postgres_password": server.app_password,
                                           "backup_passphrase_file": passfile, "backup_encrypt": True,
                                           "backup_textfile_dir": "", "backup_report_dir": workdir,
                                           "backup_operate_as_backup_user": False}}}, handle)
        env_ = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
        playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
        return timed([playbook, "-i", inventory, os.path.join(REPO, "playbooks", "backup.yml")], env_)[0]

    playbook_s = median_of(runs, one_playbook_run)
    for name in names:
        server.drop_database(name)
    return {"databases": count, "pg_dump_gzip_loop_s": round(pg_dump_loop, 2), "backup_db_sh_loop_s": round(cron_s, 2),
            "backup_yml_s": round(playbook_s, 2),
            "overhead_per_db_cron_s": round((cron_s - pg_dump_loop) / count, 3),
            "overhead_per_db_playbook_s": round((playbook_s - pg_dump_loop) / count, 3)}


def main():
    sizes = [int(n) for n in os.environ.get("BENCH_TABLES", "1000,10000,100000").split(",") if n]
    databases = int(os.environ.get("BENCH_DATABASES", "100"))
    runs = int(os.environ.get("BENCH_RUNS", "1"))
    workdir = tempfile.mkdtemp(prefix="forge-scale-bench.")
    passfile = os.path.join(workdir, "pass")
    with open(os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write(PASSPHRASE + "\n")
    server = PostgresServer().init()
    with open(os.path.join(server.data_dir, "postgresql.conf"), "a", encoding="utf-8") as conf:
        # pg_dump locks every table in one transaction: room for the widest schema here.
        conf.write(f"max_locks_per_transaction = {max(64, max(sizes, default=0) // 50)}\n")
    server.start().setup_app()
    try:
        print(f"[scale] PostgreSQL on port {server.port}, work in {workdir}, {runs} run(s) each", flush=True)
        rows = []
        for tables in sizes:
            figures = wide(server, workdir, tables, runs, passfile)
            rows.append(figures)
            print("[scale] " + json.dumps(figures), flush=True)
        many = many_databases(server, workdir, databases, runs, passfile) if databases else None
        if many:
            print("[scale] " + json.dumps(many), flush=True)
        print("\n=== cost as the schema grows (seconds; RSS of the engine process)")
        print(f"{'tables':>8} {'pg_dump|gzip':>13} {'backup':>8} {'verify':>8} {'drill':>8} "
              f"{'backup RSS':>11} {'verify RSS':>11} {'drill RSS':>10} {'manifest':>9}")
        for f in rows:
            print(f"{f['tables']:>8} {f['pg_dump_gzip_s']:>13} {f['backup_s']:>8} {f['verify_s']:>8} "
                  f"{f['drill_s']:>8} {f['backup_rss_mb']:>9}MB {f['verify_rss_mb']:>9}MB "
                  f"{f['drill_rss_mb']:>8}MB {f['manifest_mb']:>7}MB")
        if len(rows) > 1:
            first, last = rows[0], rows[-1]
            grow = last["tables"] / first["tables"]
            print(f"growth {first['tables']} -> {last['tables']} tables (x{grow:g}): backup x"
                  f"{last['backup_s'] / first['backup_s']:.1f}, verify x{last['verify_s'] / first['verify_s']:.1f}, "
                  f"drill x{last['drill_s'] / first['drill_s']:.1f}, pg_dump|gzip x"
                  f"{last['pg_dump_gzip_s'] / first['pg_dump_gzip_s']:.1f}; backup RSS "
                  f"{first['backup_rss_mb']} -> {last['backup_rss_mb']} MB")
        if many:
            print(f"\n=== {many['databases']} small databases on one server: pg_dump | gzip loop "
                  f"{many['pg_dump_gzip_loop_s']} s, backup_db.sh loop {many['backup_db_sh_loop_s']} s "
                  f"({many['overhead_per_db_cron_s']} s more per database), one backup.yml run "
                  f"{many['backup_yml_s']} s ({many['overhead_per_db_playbook_s']} s more per database; target 0.5)")
    finally:
        server.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
