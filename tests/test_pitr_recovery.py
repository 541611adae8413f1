"""`forge pitr recover` end to end with real PostgreSQL: a base backup, the WAL Barman would
have filed (the archive) and the WAL it is still receiving (the streaming directory, the
current segment as ``.partial``), and a recovery by the CLI as an operator runs it, as a
non-root user. Barman itself is the one stand-in here (a script that answers show-servers and
copies the base backup as `barman restore` does, writing the same recovery settings): it does
not run on Debian 12; molecule/pitr runs the real one on the Compose stack.

What these hold: every target up to the last byte received works with no WAL switch (the
accident of a DELETE two seconds after the time an operator noted, on a quiet database);
a time the received WAL does not reach is refused in one line before anything is copied; a
replay that ends in PostgreSQL's FATAL is one line quoting it, with the directory and its log
kept for inspection (or removed when asked); no traceback reaches the operator."""

import datetime
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import pytest

from helpers import REPO
from servers import PG_BIN, PostgresServer, free_port

FORGE = os.path.join(REPO, "scripts", "forge")
DATABASE = "infer_forge"

STAND_IN_BARMAN = r'''#!/usr/bin/python3
"""Barman as forge pitr calls it (show-servers, list-backups, show-backup, restore), over a
base backup made by pg_basebackup; restore writes the recovery settings Barman writes."""
import json, os, shutil, sys
LAB = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:]
if args[:1] == ["show-servers"]:
    print(f"  wals_directory: {LAB}/wals\n  compression: None\n  streaming_wals_directory: {LAB}/streaming")
elif "list-backups" in args:
    print(json.dumps({"infer-forge": [{"backup_id": "20261207T000000", "status": "DONE",
                                       "end_time_timestamp": os.stat(f"{LAB}/base").st_mtime}]}))
elif "show-backup" in args:
    print(json.dumps({"infer-forge": {"base_backup_information": {"begin_wal": open(f"{LAB}/begin_wal").read()}}}))
elif args[:1] == ["restore"]:
    dest = args[-1]
    shutil.copytree(f"{LAB}/base", dest, symlinks=True)
    os.chmod(dest, 0o700)
    settings = ["recovery_target_action = 'promote'"] if ("--target-time" in args or "--target-name" in args) else []
    for flag, name in (("--target-time", "recovery_target_time"), ("--target-name", "recovery_target_name")):
        if flag in args:
            settings.append(f"{name} = '{args[args.index(flag) + 1]}'")
    # As Barman's restore does: the file as the base backup had it kept as .origin, then changed.
    auto = os.path.join(dest, "postgresql.auto.conf")
    shutil.copyfile(auto, auto + ".origin")
    with open(auto, "a") as handle:
        handle.write("archive_command = false\n# The following parameters were added by the stand-in Barman\n"
                     + "\n".join(settings) + "\n")
    open(os.path.join(dest, "recovery.signal"), "w").close()
else:
    sys.exit(f"stand-in barman: {args} is not part of this test")
'''


def _as_postgres_owned(path):
    uid = pwd.getpwnam("postgres").pw_uid
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, uid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, uid)


class BarmanLab:
    """A source server, its base backup, and the WAL as Barman would hold it at one moment."""

    def __init__(self, before_backup=()):
        """``before_backup``: statements the source's superuser runs before the base backup
        (ALTER SYSTEM: what then travels in the base backup)."""
        self.dir = tempfile.mkdtemp(prefix="forge-pitr-lab.")
        os.chmod(self.dir, 0o755)
        self.source = PostgresServer().init()
        with open(os.path.join(self.source.data_dir, "postgresql.conf"), "a") as conf:
            # Every commit on disk when it returns, and no commit but ours (a quiet database).
            conf.write("synchronous_commit = on\nautovacuum = off\n")
        self.source.start().setup_app()
        self.source.create_database(DATABASE)
        self.sql("CREATE TABLE orders (id serial PRIMARY KEY, note text)", superuser=False)
        self.sql("INSERT INTO orders (note) SELECT 'before the base backup' FROM generate_series(1, 20)",
                 superuser=False)
        for statement in before_backup:
            self.sql(statement.format(lab=self.dir))
        base = os.path.join(self.dir, "base")
        subprocess.run([f"{PG_BIN}/pg_basebackup", "-h", self.source.host, "-p", str(self.source.port),
                        "-U", self.source.superuser, "-D", base, "-X", "none", "-c", "fast", "--no-sync"],
                       env=dict(os.environ, PGPASSWORD=self.source.superuser_password), check=True,
                       capture_output=True, timeout=120)
        with open(os.path.join(base, "backup_label")) as label:
            begin = next(line for line in label if line.startswith("START WAL LOCATION"))
        with open(os.path.join(self.dir, "begin_wal"), "w") as handle:
            handle.write(begin.split("file ")[1].strip(" )\n"))
        with open(os.path.join(self.dir, "barman"), "w") as handle:
            handle.write(STAND_IN_BARMAN)
        os.chmod(os.path.join(self.dir, "barman"), 0o755)
        _as_postgres_owned(self.dir)

    def sql(self, statement, superuser=True):
        return self.source.execute(statement, database=DATABASE, superuser=superuser)

    def receive(self, unfiled=0):
        """The WAL as Barman holds it now: complete segments filed in the archive, the current
        one still being received (no WAL switch, as on a quiet database); the newest ``unfiled``
        complete segments still in the streaming directory, as before barman cron files them."""
        [(current,)] = self.source.execute("SELECT pg_walfile_name(pg_current_wal_lsn())")
        wals, streaming = os.path.join(self.dir, "wals"), os.path.join(self.dir, "streaming")
        for directory in (wals, streaming):
            shutil.rmtree(directory, ignore_errors=True)
            os.mkdir(directory)
        pg_wal = os.path.join(self.source.data_dir, "pg_wal")
        complete = sorted(name for name in os.listdir(pg_wal) if len(name) == 24 and name < current)
        for name in sorted(os.listdir(pg_wal)):
            if len(name) != 24 or name > current:
                continue  # status files; recycled segments waiting under future names
            if name in complete[len(complete) - unfiled:] and unfiled:
                shutil.copyfile(os.path.join(pg_wal, name), os.path.join(streaming, name))
            elif name < current:
                os.makedirs(os.path.join(wals, name[:16]), exist_ok=True)
                shutil.copyfile(os.path.join(pg_wal, name), os.path.join(wals, name[:16], name))
            else:
                shutil.copyfile(os.path.join(pg_wal, name), os.path.join(streaming, name + ".partial"))
        _as_postgres_owned(self.dir)
        return current

    def forge(self, *args, scratch="scratch"):
        """forge pitr as an operator runs it, as a non-root user (PostgreSQL refuses root)."""
        env = {"PATH": f"{self.dir}:/usr/bin:/bin", "PITR_CONFIG": "", "PITR_POSTGRES_BIN": PG_BIN,
               "PITR_SCRATCH_ROOT": os.path.join(self.dir, scratch), "PITR_SCRATCH_PORT": str(free_port()),
               "POSTGRES_USER": self.source.app_user, "POSTGRES_DB": DATABASE, "PITR_JOBS": "1"}
        return subprocess.run(["runuser", "-u", "postgres", "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
                               FORGE, "pitr", *args], capture_output=True, text=True, timeout=300, check=False)

    def scratch_dirs(self, scratch="scratch"):
        root = os.path.join(self.dir, scratch)
        return sorted(os.listdir(root)) if os.path.isdir(root) else []

    def read(self, out, query):
        """Read the kept scratch cluster the recovery's last lines name, then stop and remove it."""
        [line] = [line for line in out.splitlines() if line.startswith("Recovered ")]
        socket_dir = line.split("psql -h ")[1].split()[0]
        port = line.split(" -p ")[1].split()[0]
        try:
            return subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/psql", "-X", "-h", socket_dir,
                                   "-p", port, "-U", self.source.app_user, "-d", DATABASE, "-Atc", query],
                                  capture_output=True, text=True, check=True, timeout=60).stdout.split()
        finally:
            data = os.path.join(os.path.dirname(socket_dir), "data")
            subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate",
                            "-w", "stop"], capture_output=True, check=False, timeout=60)
            shutil.rmtree(os.path.dirname(socket_dir))

    def destroy(self):
        self.source.destroy()
        subprocess.run(["pkill", "-u", "postgres", "-f", self.dir], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def lab():
    made = BarmanLab()
    yield made
    made.destroy()


def one_error_line(result):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
    return lines[0]


def test_a_time_two_seconds_before_a_delete_is_recovered_from_the_segment_still_being_received(lab):
    lab.sql("INSERT INTO orders (note) SELECT 'the morning' FROM generate_series(1, 7)", superuser=False)
    [(expected,)] = lab.sql("SELECT count(*) FROM orders")
    [(noted,)] = lab.sql("SELECT clock_timestamp()::text")
    time.sleep(2)
    lab.sql("DELETE FROM orders WHERE id % 2 = 0", superuser=False)  # the accident
    lab.receive()
    result = lab.forge("recover", "--time", noted)
    assert result.returncode == 0, result.stderr
    assert lab.read(result.stdout, "SELECT count(*) FROM orders") == [str(expected)]


def test_a_segment_received_whole_but_not_filed_yet_is_replayed_for_every_target(lab):
    """A bad day: a segment completed seconds ago and barman cron (each minute) has not moved
    it to the archive; the rows in it and in the one still being received are recovered."""
    lab.sql("INSERT INTO orders (note) SELECT 'in the closed segment' FROM generate_series(1, 5)", superuser=False)
    lab.sql("SELECT pg_switch_wal()")
    lab.sql("INSERT INTO orders (note) VALUES ('in the open segment')", superuser=False)
    [(expected,)] = lab.sql("SELECT count(*) FROM orders")
    [(noted,)] = lab.sql("SELECT clock_timestamp()::text")
    time.sleep(1)
    lab.sql("DELETE FROM orders", superuser=False)
    lab.receive(unfiled=1)
    assert len(os.listdir(os.path.join(lab.dir, "streaming"))) == 2
    result = lab.forge("recover", "--time", noted)
    assert result.returncode == 0, result.stderr
    assert lab.read(result.stdout, "SELECT count(*) FROM orders") == [str(expected)]
    latest = lab.forge("recover")
    assert latest.returncode == 0, latest.stderr
    assert lab.read(latest.stdout, "SELECT count(*) FROM orders") == ["0"]


def test_a_restore_point_and_latest_inside_the_segment_still_being_received(lab):
    lab.sql("INSERT INTO orders (note) VALUES ('kept')", superuser=False)
    [(at_point,)] = lab.sql("SELECT count(*) FROM orders")
    lab.sql("SELECT pg_create_restore_point('before_cleanup')")
    lab.sql("INSERT INTO orders (note) VALUES ('after the point')", superuser=False)
    [(at_latest,)] = lab.sql("SELECT count(*) FROM orders")
    lab.receive()
    named = lab.forge("recover", "--name", "before_cleanup")
    assert named.returncode == 0, named.stderr
    assert lab.read(named.stdout, "SELECT count(*) FROM orders") == [str(at_point)]
    latest = lab.forge("recover")
    assert latest.returncode == 0, latest.stderr
    assert lab.read(latest.stdout, "SELECT count(*) FROM orders") == [str(at_latest)]


def test_a_time_at_or_after_the_last_commit_received_is_refused_in_one_line_before_anything_is_copied(lab):
    lab.sql("INSERT INTO orders (note) VALUES ('the last commit')", superuser=False)
    lab.receive()
    # The last commit's own time, read back as PostgreSQL replays it: pg_xact_commit_timestamp
    # needs track_commit_timestamp, so the newest commit is found from the server's clock bounds.
    [(after,)] = lab.sql("SELECT clock_timestamp()::text")
    line = one_error_line(lab.forge("recover", "--time", after, scratch="refused"))
    assert line.startswith(f"ERROR: no WAL of infer-forge reaches {after}: the last commit Barman received is at ")
    assert line.endswith("so a time target must lie before it (recover to latest for everything received); "
                         "nothing was changed")
    last = line.split("received is at ")[1].split(",")[0]
    # Exactly that time is refused too (PostgreSQL stops only at a commit after the target) ...
    assert one_error_line(lab.forge("recover", "--time", last, scratch="refused")).startswith(
        f"ERROR: no WAL of infer-forge reaches {last}:")
    assert lab.scratch_dirs("refused") == []
    # ... and one microsecond before it recovers everything up to the commit before it.
    before = (datetime.datetime.fromisoformat(last) - datetime.timedelta(microseconds=1)).isoformat(sep=" ")
    result = lab.forge("recover", "--time", before)
    assert result.returncode == 0, result.stderr
    assert lab.read(result.stdout, "SELECT count(*) FROM orders WHERE note = 'the last commit'") == ["0"]


def test_a_replay_that_ends_in_a_fatal_is_one_line_quoting_it_and_keeps_the_directory_and_its_log(lab):
    lab.receive()
    line = one_error_line(lab.forge("recover", "--name", "no_such_point", scratch="failed"))
    assert line.startswith("ERROR: recovery of infer-forge to name no_such_point failed: "), line
    assert "FATAL: recovery ended before configured recovery target was reached" in line, line
    assert "restore point no_such_point is not in the WAL Barman received" in line, line
    [kept] = lab.scratch_dirs("failed")
    path = os.path.join(lab.dir, "failed", kept)
    assert f"(log: {path}/postgresql.log)" in line and line.endswith(f"(remove it with: rm -rf {path})")
    with open(os.path.join(path, "postgresql.log")) as log:
        assert "recovery ended before configured recovery target was reached" in log.read()
    assert not os.path.exists(os.path.join(path, "data", "postmaster.pid"))  # stopped, not running
    removed = one_error_line(lab.forge("recover", "--name", "no_such_point", "--remove-failed", scratch="removed"))
    assert removed.endswith("the scratch directory was removed"), removed
    assert lab.scratch_dirs("removed") == []


def test_the_module_refuses_to_run_as_root_in_one_line(run_module, tmp_path):
    """As root, a recovery would leave root-owned files in Barman's home and run a scratch
    PostgreSQL from root's session: the module runs as the barman user (become_user: barman)."""
    assert os.geteuid() == 0, "make test runs as root"
    scratch = tmp_path / "scratch"
    result = run_module("forge_pitr", {"mode": "recover", "scratch_root": str(scratch)})
    assert result.get("failed") is True
    assert result["msg"] == ("forge_pitr runs as the Barman user (become: true, become_user: barman), never as "
                             "root; nothing was changed"), result["msg"]
    assert not scratch.exists()


def test_the_module_reports_an_unexpected_failure_in_one_line_without_a_traceback(run_module, shared_tmp):
    blocker = os.path.join(shared_tmp, "not-a-directory")
    with open(blocker, "w") as handle:
        handle.write("a file where the scratch root should be\n")
    workdir = os.path.join(shared_tmp, "play")
    os.mkdir(workdir)
    result = run_module.__class__(workdir)("forge_pitr", {"mode": "recover", "scratch_root": f"{blocker}/scratch"},
                                           become_user="postgres")
    assert result.get("failed") is True
    assert result["msg"] == f"forge_pitr recover stopped: Not a directory: {blocker}/scratch", result["msg"]
    # A crash would show as MODULE FAILURE with the traceback in module_stderr.
    assert "module_stderr" not in result and "Traceback" not in result["_raw"]


def test_the_cli_reports_an_unexpected_failure_in_one_line_without_a_traceback(lab):
    """Any exception nobody raised on purpose, here a scratch root under a file."""
    blocker = os.path.join(lab.dir, "not-a-directory")
    with open(blocker, "w") as handle:
        handle.write("a file where the scratch root should be\n")
    result = subprocess.run(["runuser", "-u", "postgres", "--", "env", "-i", "PATH=/usr/bin:/bin", "PITR_CONFIG=",
                             f"PITR_SCRATCH_ROOT={blocker}/scratch", FORGE, "pitr", "recover"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert one_error_line(result) == f"ERROR: forge pitr recover stopped: Not a directory: {blocker}/scratch"


SERVE = """
import json, sys
sys.path.insert(0, {engine!r})
from forge.pitr import PitrOptions
from forge.pitr_serve import ScratchServer
options = PitrOptions("infer-forge", postgres_bin={bin!r}, scratch_root={root!r})
print(json.dumps(ScratchServer(options, {data!r}).{call}))
"""


def test_a_served_copy_gives_one_login_a_base_backup_that_carries_the_sources_own_configuration(lab):
    """The put-back's Barman side with real PostgreSQL: the copy that goes back to production has
    production's pg_hba.conf and none of the recovery's settings, and only a replication login
    from the one allowed address gets in."""
    lab.sql("INSERT INTO orders (note) VALUES ('served')", superuser=False)
    lab.receive()
    recovered = lab.forge("recover", scratch="served")
    assert recovered.returncode == 0, recovered.stderr
    [line] = [line for line in recovered.stdout.splitlines() if line.startswith("Recovered ")]
    data = line.split(" into ")[1].split(";")[0]
    port = free_port()

    def engine(call):
        script = SERVE.format(engine=os.path.join(REPO, "module_utils"), bin=PG_BIN,
                              root=os.path.join(lab.dir, "served"), data=data, call=call)
        return subprocess.run(["runuser", "-u", "postgres", "--", "/usr/bin/python3", "-c", script],
                              capture_output=True, text=True, timeout=300, check=False)

    once = "a-one-time-password-made-for-this-run-0123"
    served = engine(f"serve('infer_forge_putback', '127.0.0.1', {once!r}, listen='127.0.0.1', port={port})")
    assert served.returncode == 0, served.stderr
    answer = json.loads(served.stdout)
    assert answer["client"] == "127.0.0.1/32" and "BEGIN CERTIFICATE" in answer["certificate"]
    root = os.path.join(lab.dir, "served-root.crt")
    with open(root, "w") as handle:
        handle.write(answer["certificate"])
    copy = os.path.join(lab.dir, "copy")
    tls = dict(os.environ, PGPASSWORD=once, PGSSLMODE="verify-ca", PGSSLROOTCERT=root, PGCHANNELBINDING="require")
    try:
        subprocess.run([f"{PG_BIN}/pg_basebackup", "-h", "127.0.0.1", "-p", str(port), "-U", "infer_forge_putback",
                        "-D", copy, "-X", "stream", "--no-sync"], env=tls, check=True, capture_output=True, timeout=120)

        def refused(env, *args):
            proc = subprocess.run([f"{PG_BIN}/psql", "-X", "-h", "127.0.0.1", "-p", str(port), *args, "-c", "SELECT 1"],
                                  env=env, capture_output=True, text=True, timeout=60, check=False)
            return proc.returncode != 0 and "no pg_hba.conf entry" in proc.stderr

        # Not a replication connection, another login, or no TLS: refused, whoever asks.
        assert refused(tls, "-U", "infer_forge_putback", "-d", DATABASE)
        superuser = dict(tls, PGPASSWORD=lab.source.superuser_password)
        assert refused(superuser, "-U", lab.source.superuser, "-d", "replication=true dbname=replication")
        assert refused(dict(tls, PGSSLMODE="disable", PGCHANNELBINDING="prefer"), "-U", "infer_forge_putback",
                       "-d", "replication=true dbname=replication")
    finally:
        removed = engine("remove()")
    assert removed.returncode == 0, removed.stderr
    assert lab.scratch_dirs("served") == []
    with open(os.path.join(lab.source.data_dir, "pg_hba.conf")) as source, \
            open(os.path.join(copy, "pg_hba.conf")) as copied:
        assert copied.read() == source.read()
    with open(os.path.join(copy, "postgresql.auto.conf")) as auto:
        settings = auto.read()
    for barmans in ("restore_command", "recovery_target", "archive_command"):
        assert barmans not in settings, settings
    assert not [name for name in os.listdir(copy) if name.endswith(".origin")]
    shutil.rmtree(copy)


def test_only_a_scratch_cluster_is_served_and_only_to_an_address(lab, tmp_path):
    from forge.errors import ForgeError
    from forge.pitr import PitrOptions
    from forge.pitr_serve import ScratchServer

    options = PitrOptions("infer-forge", postgres_bin=PG_BIN, scratch_root=str(tmp_path / "scratch"))
    with pytest.raises(ForgeError, match=r"^/var/lib/postgresql is not a scratch cluster under .*; nothing was"):
        ScratchServer(options, "/var/lib/postgresql")
    scratch = tmp_path / "scratch" / "recover-x"
    (scratch / "data").mkdir(parents=True)
    (scratch / ".infer-forge-pitr-scratch").write_text("")
    server = ScratchServer(options, str(scratch / "data"))
    with pytest.raises(ForgeError, match=r"^the put-back client must be an address or network .* got 'all'"):
        server.serve("infer", "all", "x" * 20)
    with pytest.raises(ForgeError, match=r"^the put-back login must be a lower-case role name, got 'infer x'"):
        server.serve("infer x", "10.0.0.5", "x" * 20)
    with pytest.raises(ForgeError, match=r"^the put-back's one-time password must have at least 20 characters"):
        server.serve("infer", "10.0.0.5", "x" * 19)


def test_a_history_file_in_the_archive_does_not_stop_a_time_recovery(lab):
    """After a put-back Barman files the new timeline's history (00000002.history, sixteen
    characters like a segment directory's name) beside the segment directories; reading the
    newest commit must not take it for one."""
    lab.sql("INSERT INTO orders (note) VALUES ('before the history')", superuser=False)
    [(noted,)] = lab.sql("SELECT clock_timestamp()::text")
    time.sleep(0.2)
    lab.sql("INSERT INTO orders (note) VALUES ('after the noted time')", superuser=False)
    lab.receive()
    with open(os.path.join(lab.dir, "wals", "00000002.history"), "w") as history:
        history.write("1\t0/3000000\tno recovery target specified\n")
    result = lab.forge("recover", "--time", noted)
    assert result.returncode == 0, result.stderr
    assert lab.read(result.stdout, "SELECT count(*) FROM orders WHERE note = 'after the noted time'") == ["0"]


# What a superuser of the production database can put into the base backup with ALTER SYSTEM, and
# what would then run as the Barman host's user when a scratch cluster starts from it: commands,
# libraries, files written outside the scratch directory. {lab} is the lab's directory.
PLANTED = (
    "ALTER SYSTEM SET recovery_end_command = 'touch {lab}/planted/recovery_end_command'",
    "ALTER SYSTEM SET archive_cleanup_command = 'touch {lab}/planted/archive_cleanup_command'",
    "ALTER SYSTEM SET archive_mode = 'always'",
    "ALTER SYSTEM SET archive_command = 'touch {lab}/planted/archive_command'",
    "ALTER SYSTEM SET shared_preload_libraries = 'forge_planted_library'",
    "ALTER SYSTEM SET session_preload_libraries = 'forge_planted_library'",
    "ALTER SYSTEM SET dynamic_library_path = '{lab}/planted'",
    "ALTER SYSTEM SET logging_collector = on",
    "ALTER SYSTEM SET log_directory = '{lab}/planted'",
    "ALTER SYSTEM SET log_filename = 'logging_collector'",
    "ALTER SYSTEM SET external_pid_file = '{lab}/planted/external_pid_file'",
    "ALTER SYSTEM SET primary_conninfo = 'host=192.0.2.1 port=5432'",
)


def test_a_scratch_cluster_runs_nothing_the_source_configured_and_still_recovers():
    """Planted in the source with ALTER SYSTEM before its base backup: a recovery runs none of
    it (no command, no library, no file outside the scratch directory) and still recovers."""
    lab = BarmanLab(before_backup=PLANTED)
    try:
        planted = os.path.join(lab.dir, "planted")
        os.mkdir(planted)
        _as_postgres_owned(planted)
        lab.sql("INSERT INTO orders (note) VALUES ('after the base backup')", superuser=False)
        lab.receive()
        result = lab.forge("recover")
        assert result.returncode == 0, result.stdout + result.stderr
        assert lab.read(result.stdout, "SELECT count(*) FROM orders") == ["21"]
        assert os.listdir(planted) == []
    finally:
        lab.sql("ALTER SYSTEM RESET ALL")
        lab.destroy()
