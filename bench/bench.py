"""Backup (and restore) benchmark: the runbook's pipelines and ours, side by side, in one run.

Generates a database like the one the issues measure (pgbench scale 50 plus a
2-million-row table with text, numeric and jsonb: about 2 GB) on a throwaway
PostgreSQL, then times each variant on the same data and prints ratios.
Timings on a shared machine are noisy; only the ratios within one run matter.

    make bench                      # full size (a few minutes to generate)
    BENCH_SCALE=5 BENCH_ROWS=200000 make bench   # quick look
    BENCH_ONLY=pitr make bench      # only Barman's base backup and PITR recovery vs the runbook's,
                                    # paired in the Debian 13 container (PostgreSQL 17)
    BENCH_RUNS=3 BENCH_ONLY=pitr make bench   # three containers; the verdict is on the median
    BENCH_ONLY=scale make bench     # cost as the work grows: 1,000 to 100,000 tables, 100 databases
    BENCH_ONLY=restore make bench   # the restore pairs alone (runbook, best hand pipe, our plain drill),
                                    # BENCH_RUNS rounds (default 5)
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, os.path.join(REPO, "module_utils"))

from forge import compress, health  # noqa: E402
from forge.pgconn import PgSettings  # noqa: E402

from servers import PostgresServer, RedisServer, free_port, wait_for_port  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dataset import DOCUMENTS_ROWS_SQL, DOCUMENTS_TABLE_SQL  # noqa: E402

HOST_PYTHON = "/usr/bin/python3"
PASSPHRASE = "bench passphrase, twenty characters or more"
CPUS = compress.default_workers()
# The targets (issue 16): (what, numerator, denominator, at most). Paired in one run.
TARGETS = (
    ("encrypted gzip backup vs pg_dump > /dev/null", "engine_gzip_encrypted", "pg_dump_devnull", 1.15),
    ("encrypted gzip backup vs pg_dump | igzip -2 | openssl enc", "engine_gzip_encrypted", "igzip_pipeline", 1.10),
    ("zstd backup vs pg_dump > /dev/null", "engine_zstd", "pg_dump_devnull", 1.05),
    ("plain drill (verify, restore, exact counts, drop) vs runbook gunzip | psql", "drill_plain_encrypted",
     "runbook_restore", 0.90),
    # Issue 36: and against the best restore pipe a shell can make of the tools at hand.
    ("plain drill vs openssl enc -d | igzip -d | psql (our encrypted file)", "drill_plain_encrypted",
     "hand_restore_igzip", 1.05),
    ("custom-format drill with --jobs vs runbook gunzip | psql", "drill_custom_parallel", "runbook_restore", 0.70),
    # Issue 18, in the Debian 13 container (PostgreSQL 17, Barman), both sides on the same data there.
    ("PITR recovery to latest (barman restore, replay, promoted) vs runbook gunzip | psql", "pitr_recovery",
     "pitr_runbook_restore", 0.50),
    # Issue 31: the put-back to latest until the database accepts connections (recovery, then the
    # copy served and pulled over TLS, verified, started), same container.
    ("put-back to latest until the database accepts connections vs runbook gunzip | psql", "pitr_putback_total",
     "pitr_runbook_restore", 0.60),
)
REFERENCES = (
    ("encrypted gzip backup vs runbook pg_dump | gzip | openssl enc", "engine_gzip_encrypted", "runbook_backup"),
    ("encrypted gzip backup at the runbook's level 6 vs runbook pipeline", "engine_gzip6_encrypted", "runbook_backup"),
    ("encrypted gzip backup at level 1 vs runbook pipeline", "engine_gzip1_encrypted", "runbook_backup"),
    ("pg_dump | pigz | openssl enc vs pg_dump > /dev/null", "pigz_pipeline", "pg_dump_devnull"),
    ("pg_dump | igzip -2 | openssl enc vs pg_dump > /dev/null", "igzip_pipeline", "pg_dump_devnull"),
    ("bare pg_restore -j 2 vs runbook gunzip | psql", "pg_restore_j2", "runbook_restore"),
    ("forced restore by swap (old one kept) vs the former forced restore, drop first (target <= 1.05)",
     "restore_forced_swap", "restore_forced_drop_first"),
    ("forced restore by swap, old one dropped, vs the former drop first", "restore_forced_swap_drop_previous",
     "restore_forced_drop_first"),
    ("forced restore by swap (old one kept) vs restore into a new database", "restore_forced_swap", "restore_new"),
    ("Barman base backup vs runbook pg_dump | gzip | openssl enc (Debian 13 container)", "pitr_base_backup",
     "pitr_runbook_backup"),
    ("PITR recovery and its row counts, wall time, vs runbook gunzip | psql (Debian 13 container)",
     "pitr_recovery_with_counts_wall", "pitr_runbook_restore"),
    ("put-back's pg_basebackup over TLS and pg_verifybackup vs runbook gunzip | psql (Debian 13 container)",
     "pitr_putback_copy_and_verify", "pitr_runbook_restore"),
)
ENGINE_COMMANDS = ("engine_gzip_encrypted", "engine_gzip6_encrypted", "engine_gzip1_encrypted", "engine_zstd",
                   "engine_custom", "drill_plain_encrypted", "drill_custom_parallel", "restore_forced_swap")
PEAK_RSS_TARGET_MB = 48


def run(command, env=None, shell=False):
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, shell=shell, capture_output=True, text=True,
                          executable="/bin/bash" if shell else None)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {command}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed, proc


def generate(server, database, scale, rows):
    # Everything is owned by the application role, as in production.
    env = dict(os.environ, PGPASSWORD=server.app_password)
    server.create_database(database)
    t0 = time.perf_counter()
    run(["pgbench", "-i", "-q", "-s", str(scale), "-h", server.host, "-p", str(server.port), "-U", server.app_user,
         database], env=env)
    with server.connect(database, superuser=False) as conn:
        conn.execute(DOCUMENTS_TABLE_SQL)
        conn.execute(DOCUMENTS_ROWS_SQL, (rows,))
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    conn = None
    return size, time.perf_counter() - t0


def engine(server, database, backup_dir, command, extra):
    """Run one engine command (backup, drill) through bench/measure.py; return (seconds, peak RSS in KiB)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_", "DRILL_"))}
    env.update(server.app_env(database))
    env.update({"BACKUP_DIR": backup_dir, "BACKUP_CONFIG": "", "RETENTION_DAYS": "30"})
    env.update(extra)
    elapsed, proc = run([HOST_PYTHON, os.path.join(REPO, "bench", "measure.py"), *command], env=env)
    return elapsed, int(re.search(r"peak_rss_kb=(\d+)", proc.stderr).group(1))


def newest_backup(directory):
    return max((os.path.join(directory, n) for n in os.listdir(directory)
                if not n.endswith((".json", ".sha256", ".lock"))), key=os.path.getmtime)


def measure(server, database, workdir, label):
    env = dict(os.environ, PGPASSWORD=server.app_password)
    conn = f"-h {server.host} -p {server.port} -U {server.app_user}"
    passfile = os.path.join(workdir, "pass")
    with open(os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(PASSPHRASE + "\n")
    results = {}

    # -- backups -----------------------------------------------------------
    results["pg_dump_devnull"], _ = run(f"pg_dump {conn} -d {database} --no-owner --no-privileges > /dev/null",
                                        env=env, shell=True)
    runbook_file = os.path.join(workdir, "runbook.sql.gz.enc")
    results["runbook_backup"], _ = run(
        f"set -o pipefail; pg_dump {conn} -d {database} --no-owner --no-privileges | gzip | "
        f"openssl enc -aes-256-cbc -salt -pbkdf2 -pass file:{passfile} -out {runbook_file}", env=env, shell=True)
    results["runbook_backup_bytes"] = os.path.getsize(runbook_file)
    # The same pipeline with faster compressors: what a shell could do with the tools at hand.
    for name, compressor in (("pigz_pipeline", shutil.which("pigz")),
                             ("igzip_pipeline", compress.find_igzip() and f"{compress.find_igzip()} -2 -T {CPUS} -c")):
        if not compressor:
            print(f"  {name}: not measured ({name.split('_')[0]} is not installed)")
            continue
        results[name], _ = run(
            f"set -o pipefail; pg_dump {conn} -d {database} --no-owner --no-privileges | {compressor} | "
            f"openssl enc -aes-256-cbc -salt -pbkdf2 -pass file:{passfile} -out {runbook_file}", env=env, shell=True)
        results[name + "_bytes"] = os.path.getsize(runbook_file)
    # The passphrase signs every manifest; BACKUP_ENCRYPT=0 keeps the unencrypted variants unencrypted.
    signed = {"BACKUP_PASSPHRASE_FILE": passfile, "BACKUP_ENCRYPT": "0"}
    variants = {
        "engine_gzip_encrypted": {"BACKUP_PASSPHRASE_FILE": passfile},
        "engine_gzip6_encrypted": {"BACKUP_PASSPHRASE_FILE": passfile, "BACKUP_COMPRESSION_LEVEL": "6"},
        "engine_gzip1_encrypted": {"BACKUP_PASSPHRASE_FILE": passfile, "BACKUP_COMPRESSION_LEVEL": "1"},
        "engine_zstd": {**signed, "BACKUP_COMPRESSION": "zstd"},
        "engine_custom": {**signed, "BACKUP_FORMAT": "custom"},
    }
    dirs = {}
    for name, extra in variants.items():
        dirs[name] = os.path.join(workdir, name)
        results[name], peak = engine(server, database, dirs[name], ["backup"], extra)
        results[name + "_peak_rss_mb"] = round(peak / 1024, 1)
        results[name + "_bytes"] = os.path.getsize(newest_backup(dirs[name]))

    # -- restores: the runbook's by hand, then our drills (restore + verify + drop) ----------
    target = f"{database}_runbook_restore"
    server.create_database(target)
    # The runbook restores an unencrypted `pg_dump | gzip` file; make one (untimed), then
    # time exactly `gunzip < f | psql`.
    run(f"set -o pipefail; pg_dump {conn} -d {database} | gzip > {workdir}/runbook.sql.gz", env=env, shell=True)
    results["runbook_restore"], _ = run(
        f"set -o pipefail; gunzip < {workdir}/runbook.sql.gz | psql -q {conn} -d {target} > /dev/null",
        env=env, shell=True)
    server.drop_database(target)
    igzip = compress.find_igzip()
    if igzip:
        server.create_database(target)
        encrypted_file = newest_backup(dirs["engine_gzip_encrypted"])
        results["hand_restore_igzip"], _ = run(
            f"set -o pipefail; openssl enc -d -aes-256-cbc -pbkdf2 -pass file:{passfile} -in {encrypted_file} | "
            f"{igzip} -d -c | psql -q {conn} -d {target} > /dev/null", env=env, shell=True)
        server.drop_database(target)
    server.create_database(target)
    results["pg_restore_j2"], _ = run(
        f"pg_restore {conn} -d {target} --no-owner --no-privileges --jobs=2 {newest_backup(dirs['engine_custom'])}",
        env=env, shell=True)
    server.drop_database(target)
    for name, source, extra in (
        ("drill_plain_encrypted", "engine_gzip_encrypted", {"BACKUP_PASSPHRASE_FILE": passfile}),
        ("drill_custom_parallel", "engine_custom", signed),
    ):
        results[name], peak = engine(server, database, dirs[source], ["drill"], extra)
        results[name + "_peak_rss_mb"] = round(peak / 1024, 1)
    # Forced restores over a target that has data, paired. Before the swap existed, --force dropped
    # the target and restored into a new one ("drop first"); now the backup is restored beside it
    # and swapped in, the old one kept (default) or dropped. A checkpoint before each step starts
    # them from the same clean buffers.
    encrypted = {"BACKUP_PASSPHRASE_FILE": passfile}
    source = dirs["engine_gzip_encrypted"]

    def checkpoint():
        server.execute("CHECKPOINT")

    checkpoint()
    results["restore_new"], _ = engine(server, database, source, ["restore", "latest", target], encrypted)
    checkpoint()
    dropped, _ = run(f"psql {conn} -d postgres -qc 'DROP DATABASE \"{target}\" WITH (FORCE)'", env=env, shell=True)
    restored, _ = engine(server, database, source, ["restore", "latest", target], encrypted)
    results["restore_forced_drop_first"] = dropped + restored
    checkpoint()
    results["restore_forced_swap"], peak = engine(server, database, source,
                                                  ["restore", "latest", target, "--force"], encrypted)
    results["restore_forced_swap_peak_rss_mb"] = round(peak / 1024, 1)
    for (name,) in server.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                  params=(f"{target}_before_restore_%",)):
        server.drop_database(name)
    checkpoint()
    results["restore_forced_swap_drop_previous"], _ = engine(
        server, database, source, ["restore", "latest", target, "--force", "--drop-previous"], encrypted)
    server.drop_database(target)
    for directory in dirs.values():
        shutil.rmtree(directory)
    os.unlink(runbook_file)
    os.unlink(f"{workdir}/runbook.sql.gz")

    print(f"\n[{label}]")
    for key, value in results.items():
        print(f"  {key:38s} {value:>14.2f}" if isinstance(value, float) else f"  {key:38s} {value:>14}")
    return results


def measure_restores(server, database, workdir, rounds):
    """The restore targets alone, paired in each of ``rounds`` rounds on one backup of each kind:
    the runbook's gunzip | psql, the best pipe of the tools at hand, and our plain drill."""
    env = dict(os.environ, PGPASSWORD=server.app_password)
    conn = f"-h {server.host} -p {server.port} -U {server.app_user}"
    passfile = os.path.join(workdir, "pass")
    with open(os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(PASSPHRASE + "\n")
    backups = os.path.join(workdir, "restore-bench")
    encrypted = {"BACKUP_PASSPHRASE_FILE": passfile}
    engine(server, database, backups, ["backup"], encrypted)
    encrypted_file = newest_backup(backups)
    runbook = os.path.join(workdir, "runbook.sql.gz")
    run(f"set -o pipefail; pg_dump {conn} -d {database} | gzip > {runbook}", env=env, shell=True)
    target = f"{database}_restore_bench"
    igzip = compress.find_igzip()
    pipes = {"runbook_restore": f"gunzip < {runbook} | psql -q {conn} -d {target} > /dev/null"}
    if igzip:
        pipes["hand_restore_igzip"] = (f"openssl enc -d -aes-256-cbc -pbkdf2 -pass file:{passfile} -in "
                                       f"{encrypted_file} | {igzip} -d -c | psql -q {conn} -d {target} > /dev/null")
    else:
        print("  hand_restore_igzip: not measured (igzip is not installed)")
    runs = []
    for number in range(rounds):
        results = {}
        for name, pipe in pipes.items():
            server.execute("CHECKPOINT")
            server.create_database(target)
            results[name], _ = run("set -o pipefail; " + pipe, env=env, shell=True)
            server.drop_database(target)
        server.execute("CHECKPOINT")
        results["drill_plain_encrypted"], peak = engine(server, database, backups, ["drill"], encrypted)
        results["drill_plain_encrypted_peak_rss_mb"] = round(peak / 1024, 1)
        print(f"  round {number + 1}: " + ", ".join(f"{key} {value:.2f}" for key, value in results.items()))
        runs.append(results)
    shutil.rmtree(backups)
    os.unlink(runbook)
    return runs


def measure_pitr_runs(scale, rows, workdir):
    """measure_pitr BENCH_RUNS times, each in a new container on newly generated data (a
    recovery right after another reads a warm copy of the base backup, so repeats inside one
    container would flatter it); one dict of figures per run."""
    runs = []
    for number in range(1, int(os.environ.get("BENCH_RUNS", "1")) + 1):
        figures = measure_pitr(scale, rows, workdir, f"pitr-{number}")
        if not figures:
            break
        runs.append(figures)
    return runs


def measure_pitr(scale, rows, workdir, name="pitr"):
    """Base backup and point-in-time recovery with Barman, next to the runbook's backup and
    restore, on one generated database in the Debian 13 image (PostgreSQL 17 and Barman are
    not on this Debian 12 host). bench/pitr_bench.py does the work; returns its figures."""
    image = os.environ.get("BENCH_PITR_IMAGE", "infer-forge-debian13:latest")
    if os.environ.get("BENCH_PITR", "1") == "0":
        return {}
    if not shutil.which("docker") or subprocess.run(["docker", "image", "inspect", image],
                                                    capture_output=True).returncode != 0:
        print(f"  PITR: not measured (no docker or no image {image}; scripts/bootstrap.sh docker image)")
        return {}
    directory = os.path.join(workdir, name)
    os.makedirs(os.path.join(directory, "barman"))
    started = time.perf_counter()
    proc = subprocess.run(["docker", "run", "--rm", "--name", f"forge-bench-pitr-{os.getpid()}",
                           "-v", f"{REPO}:/repo:ro", "-v", f"{directory}:/bench",
                           "-v", f"{directory}/barman:/var/lib/barman", image,
                           "python3", "/repo/bench/pitr_bench.py", "--scale", str(scale), "--rows", str(rows)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"PITR bench failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    *lines, last = proc.stdout.strip().splitlines()
    figures = json.loads(last)
    print("\n[PITR, Debian 13 container, PostgreSQL 17 + Barman]" + "".join(f"\n  {line}" for line in lines))
    for key, value in figures.items():
        print(f"  {key:38s} {value:>14.2f}" if isinstance(value, float) else f"  {key:38s} {value:>14}")
    print(f"  (whole PITR bench, generation included: {time.perf_counter() - started:.0f} s)")
    shutil.rmtree(directory, ignore_errors=True)  # its 2 GB database and Barman's copies of it
    return figures


def standin_app(server, redis_server):
    """The lab's stand-in app (scripts/standin_app.py): its /health checks the same
    PostgreSQL and Redis for real, as the app does."""
    port = free_port()
    env = dict(os.environ, POSTGRES_HOST=server.host, POSTGRES_PORT=str(server.port), POSTGRES_USER=server.app_user,
               POSTGRES_PASSWORD=server.app_password, POSTGRES_DB="postgres", REDIS_HOST=redis_server.host,
               REDIS_PORT=str(redis_server.port), REDIS_PASSWORD=redis_server.password or "", APP_PORT=str(port))
    app = subprocess.Popen([HOST_PYTHON, os.path.join(REPO, "scripts", "standin_app.py")], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, "the stand-in app")
    return app, f"http://127.0.0.1:{port}/health"


def measure_health(server, rounds=20):
    """Cost of a full forge_health check (database + Redis + the app's /health, which checks
    both again) on loopback, in process."""
    redis_server = RedisServer().start()
    app, app_url = standin_app(server, redis_server)
    try:
        db = PgSettings(server.host, server.port, server.app_user, server.app_password, "postgres")
        rs = health.RedisSettings(redis_server.host, redis_server.port, redis_server.password)
        checks = health.plan(database=db, redis=rs, app_url=app_url)
        totals, latencies = [], {"database": [], "redis": [], "app": []}
        for _ in range(rounds):
            started = time.perf_counter()
            report = health.run_checks(checks)
            totals.append((time.perf_counter() - started) * 1000)
            assert report["status"] == "healthy", report
            for entry in report["services"]:
                latencies[entry["service"]].append(entry["latency_ms"])
    finally:
        app.terminate()
        app.wait()
        redis_server.destroy()
    totals.sort()
    result = {"health_check_median_ms": round(totals[len(totals) // 2], 1), "health_check_max_ms": round(totals[-1], 1)}
    for service, values in latencies.items():
        values.sort()
        result[f"health_{service}_latency_median_ms"] = values[len(values) // 2]
    print("\n=== health check, database + Redis + app on loopback (target < 50 ms), "
          f"{rounds} rounds")
    for key, value in result.items():
        print(f"  {key:38s} {value:>10}")
    return result


def start_server(server):
    """The bench's throwaway server, tuned as the issues measured it, with the app's role."""
    server.init()
    with open(os.path.join(server.data_dir, "postgresql.conf"), "a") as conf:
        conf.write("shared_buffers = 512MB\nmaintenance_work_mem = 512MB\nmax_wal_size = 4GB\n")
    server.start().setup_app()


def print_verdicts(rows, runs):
    """One line per (name, numerator, denominator, at most or None) measured in ``runs``: the
    ratios in run order, their median and, for a target, PASS or MISS on the median."""
    for name, numerator, denominator, limit in rows:
        values = [value for value in (ratio(results, numerator, denominator) for results in runs)
                  if value is not None]
        if not values:
            continue
        median = sorted(values)[len(values) // 2]
        verdict = ("PASS" if median <= limit else "MISS") if limit else "    "
        print(f"  {verdict}  " + "  ".join(f"{value:5.2f}" for value in values) + f"  median {median:5.2f}"
              + (f"  <= {limit:.2f}" if limit else "") + f"  {name}")


def ratio(results, numerator, denominator):
    if numerator in results and denominator in results:
        return results[numerator] / results[denominator]
    return None


def print_targets(runs, small):
    """The targets table, one column per run; a row passes when its median meets the target."""
    def row(values):
        return "  ".join("  n/a" if value is None else f"{value:5.2f}" for value in values)

    verdicts = []
    print(f"\n=== targets (paired ratios in each of {len(runs)} run(s); the verdict is on the median)")
    for name, numerator, denominator, limit in TARGETS:
        values = [ratio(results, numerator, denominator) for results in runs]
        measured = sorted(value for value in values if value is not None)
        median = measured[len(measured) // 2] if measured else None
        verdict = "n/a " if median is None else ("PASS" if median <= limit else "MISS")
        verdicts.append({"target": name, "at_most": limit, "ratios": values, "verdict": verdict.strip()})
        print(f"  {verdict}  {row(values)}  <= {limit:.2f}  {name}")
    peaks = {name: [small[name + "_peak_rss_mb"]] + [results[name + "_peak_rss_mb"] for results in runs]
             for name in ENGINE_COMMANDS}
    highest = max(max(values) for values in peaks.values())
    # Flat: the largest growth from the small database to the full one, median over the runs as for
    # the ratios (the allocator moves one run's figure by a few MB either way).
    growths = sorted(max(values[1 + run] - values[0] for values in peaks.values()) for run in range(len(runs)))
    growth = growths[len(growths) // 2]
    verdict = "PASS" if highest <= PEAK_RSS_TARGET_MB and growth <= 2 else "MISS"
    verdicts.append({"target": "peak RSS of any engine command", "at_most_mb": PEAK_RSS_TARGET_MB,
                     "highest_mb": highest, "growth_small_to_full_mb": [round(g, 1) for g in growths],
                     "verdict": verdict})
    print(f"  {verdict}  highest {highest:.1f} MB; growth from the small database to the full one "
          f"{', '.join(f'{g:+.1f}' for g in growths)} MB  <= {PEAK_RSS_TARGET_MB} MB, flat (median <= +2)  "
          "peak RSS of any engine command")
    print("\n=== references (same runs)")
    for name, numerator, denominator in REFERENCES:
        print(f"        {row([ratio(results, numerator, denominator) for results in runs])}  {name}")
    print("\n=== engine peak memory, MB (the small database, then the full one in each run)")
    for name, values in peaks.items():
        print(f"  {name:28s} " + "  ".join(f"{value:6.1f}" for value in values))
    return verdicts


def main():
    if os.environ.get("BENCH_ONLY") == "scale":
        # Cost as the work grows: 1,000 to 100,000 tables, and 100 small databases (scale_bench.py).
        import scale_bench

        return scale_bench.main()
    scale = int(os.environ.get("BENCH_SCALE", "50"))
    rows = int(os.environ.get("BENCH_ROWS", "2000000"))
    small_scale, small_rows = max(1, scale // 10), max(1000, rows // 10)
    workdir = tempfile.mkdtemp(prefix="forge-bench.", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    os.chmod(workdir, 0o755)
    if os.environ.get("BENCH_ONLY") == "pitr":
        # Only the point-in-time recovery pairs: both sides of each run in the container.
        try:
            runs = [{"pitr_" + key: value for key, value in figures.items()}
                    for figures in measure_pitr_runs(scale, rows, workdir)]
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"\n=== PITR targets and references (paired in each of {len(runs)} container run(s); "
              "the verdict is on the median)")
        print_verdicts([(name, numerator, denominator, limit[0] if limit else None)
                        for name, numerator, denominator, *limit in TARGETS + REFERENCES
                        if numerator.startswith("pitr_")], runs)
        return
    server = PostgresServer(base_dir=os.path.join(workdir, "pg"))
    os.makedirs(server.base_dir)
    report = {"machine": {"cpus": os.cpu_count()}, "sizes": {}}
    if os.environ.get("BENCH_ONLY") == "restore":
        try:
            start_server(server)
            size, gen_time = generate(server, "bench_full", scale, rows)
            print(f"generated bench_full: {size / 2**30:.2f} GiB in {gen_time:.0f} s (scale {scale}, {rows} rows)")
            runs = measure_restores(server, "bench_full", workdir, int(os.environ.get("BENCH_RUNS", "5")))
        finally:
            server.destroy()
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"\n=== restore targets (paired in each of {len(runs)} round(s); the verdict is on the median)")
        print_verdicts([row for row in TARGETS if row[1] == "drill_plain_encrypted"]
                       + [("best hand pipe vs runbook gunzip | psql (reference)", "hand_restore_igzip",
                           "runbook_restore", None)], runs)
        return
    try:
        start_server(server)
        report["health"] = measure_health(server)
        for label, (s, r) in (("small", (small_scale, small_rows)), ("full", (scale, rows))):
            database = f"bench_{label}"
            size, gen_time = generate(server, database, s, r)
            print(f"generated {database}: {size / 2**30:.2f} GiB in {gen_time:.0f} s (scale {s}, {r} rows)")
            report["sizes"][label] = {"database_bytes": size, **measure(server, database, workdir, label)}
            if label == "small":
                server.drop_database(database)
        small = report["sizes"]["small"]
        # More runs of the full size on the same data, for the spread the note quotes.
        runs = [report["sizes"]["full"]]
        for number in range(2, int(os.environ.get("BENCH_RUNS", "1")) + 1):
            runs.append(measure(server, "bench_full", workdir, f"full, run {number}"))
        report["pitr"] = measure_pitr_runs(scale, rows, workdir)
        for results, pitr in zip(runs, report["pitr"], strict=False):  # none without docker
            results.update({"pitr_" + key: value for key, value in pitr.items()})
        report["runs"] = runs
        report["targets"] = print_targets(runs, small)
        os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
        out = os.path.join(REPO, "bench", "results", time.strftime("bench_%Y%m%d_%H%M%S.json"))
        with open(out, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"\nfull results: {out}")
    finally:
        server.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
