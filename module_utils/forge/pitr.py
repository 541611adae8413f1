"""Point-in-time recovery with Barman: restore points with exact row counts, recovery into a
scratch cluster, and the PITR drill.

Barman (the pitr role) streams the WAL of the Compose database with pg_receivewal and takes
base backups with pg_basebackup. Everything here runs on the Barman host as the barman user
and never writes to the live server beyond one restore point: recoveries go into a new data
directory under the scratch root, started by the right major's binaries on a side port with
its socket in a private directory and no TCP listener, and removed afterwards.
"""

import contextlib
import datetime
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time

from . import metrics, sentry
from .errors import ForgeError, database_error, last_line, unexpected
from .fsutil import write_atomic
from .pgconn import check_btree_indexes, count_rows, user_tables

METRIC_PREFIX = "infer_forge_pitr_drill_"
SCRATCH_MARKER = ".infer-forge-pitr-scratch"
RESTORE_POINT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,63}\Z")
TARGETS = ("latest", "time", "name")
SEGMENT_NAME_RE = re.compile(r"^[0-9A-F]{24}\Z")
# What pg_receivewal writes into Barman's streaming directory: whole segments barman cron has
# not filed yet, and the one still being received (.partial).
# A directory of Barman's WAL archive: a segment name's first sixteen characters (a history
# file beside them, 00000002.history, is sixteen characters too).
WAL_BUCKET_RE = re.compile(r"^[0-9A-F]{16}\Z")
RECEIVED_WAL_RE = re.compile(r"^([0-9A-F]{24})(\.partial)?\Z")
# pg_waldump's record of a commit or an abort (the records a time target stops at), with
# TZ=UTC: "desc: COMMIT 2026-12-07 04:40:04.541896 UTC" (COMMIT_PREPARED puts its xid first).
# Anchored to the Transaction resource manager: a restore point's name (which a database
# superuser chooses) also shows in a record's desc.
WAL_TIME_RE = re.compile(r"^rmgr: Transaction .*?, desc: (?:COMMIT|ABORT)(?:_PREPARED \d+:)? "
                         r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC", re.MULTILINE)
# How many of the newest segments are read for the last commit before giving up: a quiet
# database's last commit may lie a few switched segments back.
WAL_TIME_SEGMENTS = 8
# A path a shell word in restore_command can hold as it is.
SHELL_SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9_./-]+\Z")
# What the stager keeps ready ahead of the replay on the scratch disk, however much WAL the
# archive holds: 32 segments of the default 16 MiB (16 made no difference in the bench).
STAGE_BYTES = 512 << 20
# Staging stops before it leaves less free than this on the scratch file system (often Barman's
# own, where a full disk would stop the WAL streaming).
STAGE_KEEP_FREE = 1 << 30
# barman's own, apart from the backup role's /var/lib/infer-forge/reports (a host may run both).
DEFAULT_REPORT_DIR = "/var/lib/barman/infer-forge-reports"


def check_server_name(server):
    if not re.match(r"^[A-Za-z0-9_.-]+\Z", server or ""):
        raise ForgeError(f"Barman server name must be letters, digits, '_', '.' or '-', got {server!r}")


def pitr_report_path(report_dir, server):
    return os.path.join(report_dir, f"pitr_drill_{server}.json")


def pitr_metrics_filename(server):
    return f"infer_forge_pitr_drill_{server}.prom"


class PitrOptions:
    def __init__(self, server, barman_command=None, postgres_bin="/usr/lib/postgresql/17/bin",
                 scratch_root="/var/lib/barman/infer-forge-scratch", scratch_port=55432, login_user="infer",
                 keep=False, amcheck=True, lock_timeout=5, start_timeout=600, wal_timeout=120,
                 textfile_dir=None, report_dir=None, sentry_dsn=None, environment=None, jobs=None):
        check_server_name(server)
        self.server = server
        self.barman_command = list(barman_command or ["barman"])
        self.postgres_bin = postgres_bin
        self.scratch_root = scratch_root
        self.scratch_port = int(scratch_port)
        self.login_user = login_user
        self.keep = keep
        self.amcheck = amcheck
        self.lock_timeout = lock_timeout
        self.start_timeout = start_timeout
        self.wal_timeout = wal_timeout
        self.textfile_dir = textfile_dir
        self.report_dir = report_dir
        self.sentry_dsn = sentry_dsn
        self.environment = environment
        # barman restore copies the base backup with this many rsync processes (one per core
        # by default: a 2 GB copy took 9.1 s with one and 2.3 s with two on a 2-core host).
        self.jobs = max(1, int(jobs or os.cpu_count() or 1))


class Barman:
    """The barman command for one server, its failures as Barman's own last words."""

    def __init__(self, options):
        self.options = options
        self._settings = None

    def run(self, *args, timeout=3600):
        command = self.options.barman_command + list(args)
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise ForgeError(f"{command[0]} not found; install Barman (Debian: barman)") from None
        except subprocess.TimeoutExpired:
            raise ForgeError(f"barman {args[0]} did not finish within {timeout} s") from None
        if proc.returncode != 0:
            said = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
            errors = [line for line in said if "ERROR" in line] or said
            raise ForgeError(f"barman {args[0]} failed: {errors[-1].strip() if errors else f'exit {proc.returncode}'}")
        return proc.stdout

    def backups(self):
        """Barman's catalog for the server, newest first: [{"backup_id", "status", "end_time", ...}]."""
        raw = self.run("-f", "json", "list-backups", self.options.server, timeout=120)
        try:
            body = json.loads(raw)
        except ValueError:
            raise ForgeError("barman list-backups returned no JSON") from None
        return list(body.get(self.options.server) or [])

    def check(self):
        """(passed, failed): ``barman check``'s failed lines, in its own words."""
        command = self.options.barman_command + ["check", self.options.server]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        failed = [" ".join(line.split()) for line in proc.stdout.splitlines() if "FAILED" in line]
        if proc.returncode != 0 and not failed:
            failed = [last_line(proc.stderr) or f"barman check exited {proc.returncode}"]
        return proc.returncode == 0 and not failed, failed

    def switch_wal(self):
        """Close the current WAL segment and wait until Barman has it, so a target just written is recoverable."""
        self.run("switch-wal", "--force", "--archive", "--archive-timeout", str(self.options.wal_timeout),
                 self.options.server, timeout=self.options.wal_timeout + 60)

    def first_wal(self, backup_id):
        """The first WAL segment a base backup's recovery replays (``show-backup``'s begin_wal)."""
        if backup_id is None:
            return None
        raw = self.run("-f", "json", "show-backup", self.options.server, backup_id, timeout=120)
        try:
            shown = json.loads(raw)[self.options.server]
            return shown["base_backup_information"]["begin_wal"]
        except (ValueError, KeyError, TypeError):
            raise ForgeError("barman show-backup named no begin_wal") from None

    def backup_before(self, value):
        """The base backup a recovery to the time ``value`` starts from, as Barman's ``auto``
        chooses it: of the backups in id order, the last that ended at or before it (a time
        without a zone is the Barman host's local time, as Barman reads it). None when the time
        does not parse here or no backup qualifies; only the staging relies on this guess."""
        try:
            when = datetime.datetime.fromisoformat(value).astimezone().timestamp()
        except (TypeError, ValueError, OverflowError, OSError):
            return None
        chosen = None
        for backup in sorted(self.backups(), key=lambda backup: str(backup.get("backup_id"))):
            end = _backup_end(backup)
            if backup.get("status") in ("DONE", "WAITING_FOR_WALS") and end is not None and end <= when:
                chosen = backup.get("backup_id")
        return chosen

    def earliest_recovery_time(self):
        """When the oldest usable base backup ended: the earliest time a recovery reaches."""
        ends = _backup_ends(backup for backup in self.backups() if backup.get("status") == "DONE")
        return datetime.datetime.fromtimestamp(min(ends), datetime.UTC).isoformat(sep=" ") if ends else None

    def settings(self, fresh=False):
        """Barman's view of the server (``show-servers``), read once (``fresh``: read anew, as
        when the server changed under Barman): {setting: value}."""
        if self._settings is None or fresh:
            out = self.run("show-servers", self.options.server, timeout=120)
            self._settings = {}
            for line in out.splitlines():
                name, separator, value = line.strip().partition(":")
                if separator:
                    self._settings.setdefault(name, value.strip())
        return self._settings

    def directory(self, key):
        """A directory from Barman's view of the server (streaming_wals_directory, wals_directory)."""
        try:
            return self.settings()[key]
        except KeyError:
            raise ForgeError(f"barman show-servers names no {key}") from None

    def streaming_dir(self):
        return self.directory("streaming_wals_directory")

    def received_wal(self):
        """What pg_receivewal has written and barman cron has not filed yet, oldest first:
        [(segment name, path)], the segment still being received (.partial) included. The
        archive ends where these begin, so every recovery target needs them."""
        streaming = self.streaming_dir()
        found = []
        for entry in os.listdir(streaming) if os.path.isdir(streaming) else []:
            match = RECEIVED_WAL_RE.match(entry)
            if match:
                found.append((match.group(1), os.path.join(streaming, entry)))
        return sorted(found)

    def last_commit_time(self):
        """The time of the last commit (or abort) in the WAL Barman received, as pg_waldump of
        the server's major reads it from the newest segments (the one still being streamed
        first); None when there is none in the newest WAL_TIME_SEGMENTS or pg_waldump cannot
        run. A time target must lie before it: PostgreSQL stops a time recovery only at a
        commit after the target, and ends any other one with "recovery ended before configured
        recovery target was reached"."""
        import tempfile

        newest = [path for _name, path in reversed(self.received_wal())]
        archive = self.settings().get("wals_directory", "")
        if ScratchCluster._plain_wal_archive(self) and os.path.isdir(archive):
            buckets = sorted((b for b in os.listdir(archive) if WAL_BUCKET_RE.match(b)
                              and os.path.isdir(os.path.join(archive, b))), reverse=True)[:2]
            for bucket in buckets:
                newest += [os.path.join(archive, bucket, name) for name in
                           sorted(os.listdir(os.path.join(archive, bucket)), reverse=True)
                           if SEGMENT_NAME_RE.match(name)]
        waldump = os.path.join(self.options.postgres_bin, "pg_waldump")
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"}
        for path in newest[:WAL_TIME_SEGMENTS]:
            name = os.path.basename(path).split(".")[0]
            # pg_waldump reads the segment's position from its name: a .partial is read through a link.
            with tempfile.TemporaryDirectory(prefix="forge-waldump-") as view:
                os.symlink(path, os.path.join(view, name))
                try:
                    proc = subprocess.run([waldump, os.path.join(view, name)], capture_output=True, text=True,
                                          env=environment, timeout=120, check=False)
                except (OSError, subprocess.TimeoutExpired):
                    return None
            times = WAL_TIME_RE.findall(proc.stdout)
            if times:
                return max(datetime.datetime.fromisoformat(when).replace(tzinfo=datetime.UTC) for when in times)
        return None

    def checks(self):
        """``barman -f json check``: {check: {"status": "OK"|"FAILED", "hint": ...}}."""
        command = self.options.barman_command + ["-f", "json", "check", self.options.server]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        try:
            return json.loads(proc.stdout).get(self.options.server) or {}
        except ValueError:
            raise ForgeError(f"barman check returned no JSON: {last_line(proc.stderr) or proc.stdout[:200]}") from None


def check_server_config(path, barman_home="/var/lib/barman", barman_command=None):
    """Let Barman itself read a server configuration file (the role's template ``validate``).

    Barman keeps going on a value it cannot use (it warns and disables the server, or drops
    the setting), so any warning or error it prints fails the check, with its own words."""
    import tempfile

    with open(path) as handle:
        server = handle.read()
    with tempfile.NamedTemporaryFile("w", suffix=".conf", prefix="barman-check-") as config:
        config.write(f"[barman]\nbarman_home = {barman_home}\nbarman_user = barman\nlog_level = WARNING\n\n{server}")
        config.flush()
        command = list(barman_command or ["barman"]) + ["-c", config.name, "list-servers"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    # Barman's reasons are on stderr; stdout's list only says the server ended up disabled.
    said = [line.strip() for line in (proc.stderr + "\n" + proc.stdout).splitlines() if line.strip()]
    bad = [line for line in said if re.search(r"WARNING|ERROR|disabled", line)]
    if proc.returncode != 0 or bad:
        raise ForgeError(f"barman rejects {path}: {(bad or said or [f'exit {proc.returncode}'])[0]}")
    return said


def check_target(target, value):
    """``value`` when Barman may write it as the recovery target into the scratch cluster's
    postgresql.auto.conf (between single quotes): printable, no quote, backslash or line break
    that could end the quotes and add a setting (a command) of the caller's, and no longer than
    PostgreSQL keeps (restore point names: 63 bytes). Names the app chose (spaces and all) pass."""
    limit = 63 if target == "name" else 64
    if (not value or len(value.encode()) > limit or any(ch in value for ch in "'\\")
            or any(not ch.isprintable() for ch in value)):
        raise ForgeError(f"a recovery target {target} must be 1-{limit} printable characters without a quote or "
                         f"backslash, got {value[:80]!r}; nothing was changed")
    return value


def create_restore_point(settings, name, lock_timeout=5):
    """A named restore point at which every user table's row count is known exactly, with
    the app's writers held for milliseconds, not for the length of the counts.

    One session locks every user table IN SHARE MODE (writers wait, readers do not; the lock
    waits for writers already inside their transaction, and a lock not granted within
    ``lock_timeout`` seconds fails the drill instead of stalling the app). While the locks
    are held, a second session takes a REPEATABLE READ snapshot: it holds exactly the commits
    made before them. The first writes the restore point and commits, releasing the writers.
    No commit falls between that snapshot and the restore point, so the counts, taken
    afterwards in the snapshot, are what a recovery to the point must show."""
    import psycopg
    from psycopg import sql

    if not RESTORE_POINT_RE.match(name):
        raise ForgeError(f"restore point name must be 1-63 letters, digits, '_', '.' or '-', got {name!r}")
    try:
        with settings.connect(autocommit=False) as locker, settings.connect(autocommit=False) as counter:
            lock = locker.cursor()
            lock.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout * 1000)}ms")))
            tables = user_tables(lock)
            if tables:
                lock.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                    sql.SQL(", ").join(sql.Identifier(schema, table) for schema, table in tables)))
            started = time.monotonic()  # from here until the commit, writers wait
            counter.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            counter.read_only = True
            count = counter.cursor()
            count.execute("SELECT 1")  # the snapshot is taken here, while the writers wait
            lock.execute("SELECT pg_create_restore_point(%s)::text, now()", (name,))
            lsn, at = lock.fetchone()
            locker.commit()
            held = time.monotonic() - started
            counts = count_rows(count, tables)
            counter.rollback()
    except psycopg.Error as exc:
        raise ForgeError(f"restore point {name} not created: {database_error(exc)}") from None
    return {"name": name, "lsn": lsn, "created_at": at.isoformat(), "counts": counts,
            "writers_held_seconds": round(held, 4)}


class WalStager:
    """Copies the WAL segments a recovery replays from Barman's archive into the scratch
    directory in a thread: while Barman copies the base backup, then ahead of the replay. Each
    is written under a temporary name, fsynced, then renamed, so a staged name always holds a
    whole segment and PostgreSQL's own fsync of it finds nothing left to write.

    The replay takes a staged segment with one rename and copies any other from the archive
    itself (ScratchCluster._read_wal_from), so the stager only ever saves time: it never decides
    what is replayed, and when it fails it stops and the replay reads the archive.
    restore_command leaves the name it was last asked for in ``.asked``: the stager drops what
    the replay has passed and skips ahead to it, so a stager that fell behind catches up
    instead of staging segments nobody reads. It holds at most STAGE_BYTES (``ahead``
    segments at most) and stops before the disk gets short."""

    def __init__(self, archive, directory, first, ahead=None):
        self.archive = archive
        self.directory = directory
        self.first = first  # a callable: the base backup's first segment (asked in the thread)
        self.ahead = ahead
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        os.mkdir(self.directory, 0o700)
        self._thread = threading.Thread(target=self._run, name="forge-wal-stager", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        shutil.rmtree(self.directory, ignore_errors=True)

    def segments(self, first):
        """The archive's segments from ``first`` on, on its timeline, in replay order."""
        timeline = first[:8]
        names = []
        for bucket in sorted(os.listdir(self.archive)):
            if WAL_BUCKET_RE.match(bucket) and bucket.startswith(timeline) and bucket >= first[:16]:
                names += [name for name in os.listdir(os.path.join(self.archive, bucket))
                          if SEGMENT_NAME_RE.match(name) and name.startswith(bucket) and name >= first]
        return sorted(names)

    def _source(self, name):
        return os.path.join(self.archive, name[:16], name)

    def _run(self):
        try:
            first = self.first()
            if not SEGMENT_NAME_RE.match(first or ""):
                return
            names = self.segments(first)
            if not names:
                return
            size = max(1, os.stat(self._source(names[0])).st_size)
            limit = max(2, STAGE_BYTES // size)
            limit = min(limit, self.ahead) if self.ahead else limit
            for name in names:
                step = self._next_step(name, limit, size)
                if step is None:
                    return
                if step == "stage":
                    self._stage(name)
        except (OSError, ForgeError):
            return  # the replay copies from the archive whatever is not staged

    def _asked(self):
        try:
            with open(os.path.join(self.directory, ".asked")) as handle:
                asked = handle.read(64).strip()
        except OSError:
            return None
        return asked if SEGMENT_NAME_RE.match(asked) else None

    @staticmethod
    def _passed(name, asked, or_at=False):
        """Whether the replay has gone past ``name`` (or is at it). A name on another timeline
        says nothing: PostgreSQL asks for a newer timeline's segment first when one exists."""
        if asked is None or asked[:8] != name[:8]:
            return False
        return name <= asked if or_at else name < asked

    def _next_step(self, name, limit, size):
        """"skip" once the replay has asked for ``name`` (it copies it from the archive itself),
        "stage" when there is room for it, None when stopped or short of disk."""
        while not self._stop.is_set():
            asked = self._asked()
            if self._passed(name, asked, or_at=True):
                return "skip"
            staged = []
            for entry in os.listdir(self.directory):
                if not SEGMENT_NAME_RE.match(entry):
                    continue
                if self._passed(entry, asked):  # behind the replay: never read
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.directory, entry))
                else:
                    staged.append(entry)
            if len(staged) < limit:
                disk = os.statvfs(self.directory)
                return "stage" if disk.f_bavail * disk.f_frsize >= size + STAGE_KEEP_FREE else None
            self._stop.wait(0.05)
        return None

    def _stage(self, name):
        partial = os.path.join(self.directory, f".{name}.partial")  # never a name PostgreSQL asks for
        source = os.open(self._source(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            status = os.fstat(source)
            size = status.st_size
            if not stat.S_ISREG(status.st_mode):
                raise OSError(f"{name} in Barman's archive is not a regular file")
            copy = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                offset = 0
                while offset < size:  # in the kernel: the segment never passes through Python
                    sent = os.sendfile(copy, source, offset, size - offset)
                    if sent == 0:
                        raise OSError(f"{name} shrank while it was staged")
                    offset += sent
                os.fsync(copy)
            finally:
                os.close(copy)
        finally:
            os.close(source)
        os.rename(partial, os.path.join(self.directory, name))


# What a scratch cluster never takes from the source. A superuser of the production database
# can put any setting into the base backup (ALTER SYSTEM writes postgresql.auto.conf, which
# travels in it); a scratch cluster runs as the Barman host's user, so a command, a library or a
# file it writes would be that user's. The command line wins over postgresql.conf, its includes
# and postgresql.auto.conf: each is set there to a harmless value. (major, setting, value): the
# setting exists from that PostgreSQL major on. restore_command stays: Barman's and ours are the
# last lines of postgresql.auto.conf, after anything the source wrote there.
NEUTRALISED_SETTINGS = (
    (12, "archive_mode", "off"),
    (12, "archive_command", ""),
    (15, "archive_library", ""),
    (12, "archive_cleanup_command", ""),
    (12, "recovery_end_command", ""),
    (12, "shared_preload_libraries", ""),
    (12, "session_preload_libraries", ""),
    (12, "local_preload_libraries", ""),
    (12, "dynamic_library_path", "$libdir"),
    (12, "jit", "off"),
    (12, "ssl", "off"),
    (12, "ssl_passphrase_command", ""),
    (12, "logging_collector", "off"),
    (12, "log_destination", "stderr"),
    (12, "external_pid_file", ""),
    (12, "primary_conninfo", ""),
    (12, "primary_slot_name", ""),
    (12, "synchronous_standby_names", ""),
    (17, "event_triggers", "off"),
    (17, "sync_replication_slots", "off"),
)


def neutralised_settings(data_directory):
    """NEUTRALISED_SETTINGS for the data directory's PostgreSQL major (its PG_VERSION)."""
    try:
        with open(os.path.join(data_directory, "PG_VERSION")) as handle:
            major = int(handle.read(16).strip().split(".")[0])
    except (OSError, ValueError):
        major = 12
    return {name: value for since, name, value in NEUTRALISED_SETTINGS if major >= since}


class ScratchCluster:
    """A recovered copy of the server in a new data directory, on a side port, socket only."""

    def __init__(self, options, label):
        self.options = options
        self.path = os.path.join(options.scratch_root, label)
        self.socket_dir = os.path.join(self.path, "socket")
        self.data = os.path.join(self.path, "data")
        self.wal_stage = os.path.join(self.path, "wal")
        self.hba_file = os.path.join(self.path, "scratch_hba.conf")
        self.port = options.scratch_port
        self.stager = None
        self.started = False
        self._owner = None

    def prepare(self):
        root = self.options.scratch_root
        os.makedirs(root, mode=0o700, exist_ok=True)
        if os.path.islink(root) or not os.path.isdir(root):
            raise ForgeError(f"scratch root {root} is not a directory")
        os.chmod(root, 0o700)
        if os.path.lexists(self.path):
            raise ForgeError(f"{self.path} exists already; nothing was changed")
        os.mkdir(self.path, 0o700)
        with open(os.path.join(self.path, SCRATCH_MARKER), "w") as handle:
            handle.write("a scratch cluster of infer-forge PITR; safe to remove when no postgres runs here\n")
        os.mkdir(self.socket_dir, 0o700)

    def restore(self, barman, target, value=None):
        args = ["restore", "--jobs", str(self.options.jobs)]
        # A time may lie before the newest base backup (a weekly one would otherwise shorten the
        # recovery window to days): Barman then starts from the newest backup that ended by it.
        backup = "auto" if target == "time" else "latest"
        archive = self._plain_wal_archive(barman)
        if archive:
            # PostgreSQL reads each segment from Barman's archive while it replays, instead of
            # waiting for Barman to copy all of them first (the serial copy was a quarter of a
            # recovery's time).
            args.append("--get-wal")
            if SHELL_SAFE_PATH_RE.match(self.wal_stage):
                # Staged while Barman copies the base backup: the replay then renames instead
                # of waiting on a copy and an fsync per segment.
                def first_segment():  # asked in the stager's thread, while Barman copies
                    return barman.first_wal(barman.backup_before(value) if target == "time" else "latest")

                self.stager = WalStager(archive, self.wal_stage, first=first_segment)
                self.stager.start()
        if target == "time":
            args += ["--target-time", value]
        elif target == "name":
            args += ["--target-name", value]
        if target != "latest":
            args += ["--target-action", "promote"]
        try:
            barman.run(*args, self.options.server, backup, self.data)
        except ForgeError as exc:
            if target == "time" and "candidate backup" in exc.message:
                earliest = barman.earliest_recovery_time()
                raise ForgeError(f"no base backup of {self.options.server} ended by {value}, so no recovery "
                                 f"reaches it{'; the earliest time one reaches is ' + earliest if earliest else ''}"
                                 "; nothing was changed") from None
            raise
        if archive:
            self._read_wal_from(archive, self.wal_stage if self.stager else None)
        # Every target, not only latest: a time or a restore point minutes old lies in the
        # segment still being streamed, which on a quiet database fills in hours.
        self._add_received_wal(barman)
        # The copy answers only on its own socket, in a directory only we can enter. Its own
        # pg_hba.conf stays as it came: a copy put back into production keeps production's.
        with open(self.hba_file, "w") as handle:
            handle.write("local all all trust\n")

    @staticmethod
    def _plain_wal_archive(barman):
        """Barman's WAL directory when its segments are stored as PostgreSQL wrote them
        (no compression) under a path a shell word can hold as it is; else None, and Barman
        copies the WAL itself."""
        wals = barman.settings().get("wals_directory", "")
        plain = barman.settings().get("compression", "None") in ("None", "", "none")
        return wals if plain and SHELL_SAFE_PATH_RE.match(wals) else None

    def _read_wal_from(self, archive, stage=None):
        """restore_command takes a segment the stager has ready (one rename), or else copies it
        from Barman's archive (read only: cp never writes there). Barman files a segment under
        the first 16 characters of its name, a timeline history file at the top; ``%%`` is
        PostgreSQL's escape for a percent sign."""
        staged = (f'{{ echo "$f" > "{stage}/.asked"; }} 2>/dev/null; '
                  f'if [ -f "{stage}/$f" ] && mv -f "{stage}/$f" "%p"; then exit 0; fi; ') if stage else ""
        # Exit 1 only for a file the archive does not hold: PostgreSQL reads it as the end of the
        # WAL and, recovering to latest, promotes there. A copy that fails (a full disk, a read
        # error) exits above 125, which makes PostgreSQL stop the recovery instead of ending it short.
        command = (f'f=%f; {staged}case "$f" in *.history) d= ;; *) d=$(printf %%.16s "$f")/ ;; esac; '
                   f's="{archive}/$d$f"; [ -f "$s" ] || exit 1; cp "$s" "%p" || exit 128')
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as handle:
            handle.write(f"# infer-forge: WAL straight from Barman's archive\nrestore_command = '{command}'\n")

    def _add_received_wal(self, barman):
        """The WAL Barman received and has not filed yet goes into pg_wal, where PostgreSQL
        reads it once restore_command has no more: the segments barman cron has not moved
        to the archive and the one still being streamed (.partial), up to its last byte."""
        target = os.path.join(self.data, "pg_wal")
        copied = set()
        for _round in range(5):
            # A file that went away meanwhile was completed (.partial renamed) or filed by barman
            # cron: list again until every file listed was copied, so none is left out.
            vanished = False
            for name, path in barman.received_wal():
                if path in copied:
                    continue
                try:
                    shutil.copyfile(path, os.path.join(target, name))
                    copied.add(path)
                except FileNotFoundError:
                    vanished = True
            if not vanished:
                return
        raise ForgeError("Barman's streaming directory kept changing while the recovery read it; nothing was "
                         "recovered, try again")

    def start(self, listen="", port=None, hba_file=None, settings=None):
        """Start the copy (socket only, our own pg_hba) and wait until its recovery ends; a
        copy already running is restarted with the new listener and pg_hba (a put-back)."""
        self.port = int(port or self.options.scratch_port)
        # Ours last: the put-back's TLS settings (ssl=on, its certificate) win over the neutral ones.
        chosen = dict(neutralised_settings(self.data), listen_addresses=listen, unix_socket_directories=self.socket_dir,
                      hba_file=hba_file or self.hba_file, hot_standby="on", **(settings or {}))
        options = f"-p {self.port}" + "".join(f" -c {name}='{value}'" for name, value in chosen.items())
        action = ["-m", "fast", "restart"] if self.started and self.running() else ["start"]
        command = [os.path.join(self.options.postgres_bin, "pg_ctl"), "-D", self.data, "-o", options,
                   "-l", self.log_path, "-w", "-t", str(self.options.start_timeout), *action]
        proc = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=self.options.start_timeout + 30)
        self.started = True
        if proc.returncode != 0:
            raise ForgeError(f"the scratch cluster did not start: {self._log_tail()}")
        deadline = time.monotonic() + self.options.start_timeout
        refused = None
        while True:
            try:
                with self.connect("postgres") as conn:
                    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        self.stop_staging()
                        return
            except Exception as exc:  # noqa: BLE001 - psycopg's errors: is the server still there?
                if not hasattr(exc, "sqlstate"):
                    raise
                # pg_ctl returns once a hot standby takes connections; the replay may still
                # end in a FATAL after that, and the server with it.
                if not self.running():
                    raise ForgeError(f"the scratch cluster stopped during recovery: {self._log_tail()}") from None
                refused = database_error(exc)
            if time.monotonic() > deadline:
                raise ForgeError(f"the scratch cluster was still recovering after {self.options.start_timeout} s"
                                 + (f" ({refused})" if refused else "") + f"; log: {self.log_path}")
            time.sleep(0.1)

    def running(self):
        """Whether the scratch cluster's postmaster is alive (pg_ctl status)."""
        proc = subprocess.run([os.path.join(self.options.postgres_bin, "pg_ctl"), "-D", self.data, "status"],
                              capture_output=True, text=True, check=False, timeout=60)
        return proc.returncode == 0

    @property
    def log_path(self):
        return os.path.join(self.path, "postgresql.log")

    def connect(self, database, user=None):
        import psycopg

        return psycopg.connect(host=self.socket_dir, port=self.port, dbname=database,
                               user=user or self.options.login_user, autocommit=True, connect_timeout=10)

    def connect_as_owner(self, database):
        """The copy's bootstrap superuser, on the copy's own socket (trust, ours alone): the drill's
        login on the live server is no superuser, and amcheck needs one in the copy."""
        if self._owner is None:
            with self.connect("postgres") as conn:
                [self._owner] = conn.execute("SELECT rolname FROM pg_roles WHERE oid = 10").fetchone()
        return self.connect(database, user=self._owner)

    def counts(self, database):
        with self.connect_as_owner(database) as conn:
            cursor = conn.cursor()
            return count_rows(cursor, user_tables(cursor))

    def _log_tail(self):
        """PostgreSQL's own last word (its last FATAL or PANIC line, else its last ERROR) and
        where its whole log is."""
        try:
            with open(self.log_path, errors="replace") as handle:
                said = [" ".join(line.split()) for line in handle]
        except OSError:
            return f"no server log at {self.log_path}"
        fatal = [line for line in said if "FATAL:" in line or "PANIC:" in line]
        errors = [line for line in said if "ERROR:" in line]
        last = (fatal or errors or [None])[-1]
        return f"{last} (log: {self.log_path})" if last else f"see its log: {self.log_path}"

    def stop(self):
        """Stop the server (if it still runs) and the staging; the directory stays."""
        if self.started:
            subprocess.run([os.path.join(self.options.postgres_bin, "pg_ctl"), "-D", self.data, "-m", "immediate",
                            "-w", "stop"], capture_output=True, text=True, check=False, timeout=120)
            self.started = False
        self.stop_staging()  # after the server: a replay still running never finds the stage gone

    def stop_staging(self):
        if self.stager is not None:
            self.stager.stop()
            self.stager = None

    def remove(self):
        self.stop()
        if os.path.isfile(os.path.join(self.path, SCRATCH_MARKER)):
            shutil.rmtree(self.path, ignore_errors=True)


STATUS_PREFIX = "infer_forge_pitr_"


def status_metrics(options, barman=None, now=None):
    """What `barman check`, `list-backups` and the WAL archive say, as node_exporter
    textfile metrics (``forge pitr metrics``, every few minutes from cron)."""
    barman = barman or Barman(options)
    now = time.time() if now is None else now
    checks = barman.checks()
    failed = sorted(name for name, check in checks.items() if check.get("status") != "OK")
    streaming_checks = ("receive_wal_running", "replication_slot", "postgresql_streaming")
    streaming = all(checks.get(name, {}).get("status") == "OK" for name in streaming_checks)
    done = [b for b in barman.backups() if b.get("status") == "DONE"]
    ends = _backup_ends(done)
    samples = [
        ("streaming_up", "1 when pg_receivewal streams through the replication slot.", 1 if streaming else 0),
        ("checks_failed", "Checks of barman check that failed.", len(failed)),
        ("base_backups", "Base backups Barman holds (status DONE).", len(done)),
        ("status_timestamp_seconds", "When these PITR metrics were read.", now),
    ]
    if ends:
        samples.append(("last_base_backup_timestamp_seconds", "When the newest base backup ended.", max(ends)))
    archived = _last_archived_wal_time(barman)
    if archived is not None:
        samples.append(("last_wal_archived_timestamp_seconds", "When Barman last filed a complete WAL segment.",
                        archived))
    settings = barman.settings()
    slot = slot_health(settings.get("conninfo", ""), settings.get("slot_name", ""))
    if slot is not None:
        wal_status, safe_wal_size = slot
        samples.append(("slot_wal_lost", "1 when the replication slot lost WAL Barman had not received "
                        "(max_slot_wal_keep_size reached): recovery past it needs a new base backup.",
                        1 if wal_status == "lost" else 0))
        if safe_wal_size is not None:
            samples.append(("slot_safe_wal_bytes", "WAL the server may still write before the slot loses WAL "
                            "Barman has not received (max_slot_wal_keep_size).", int(safe_wal_size)))
    labels = {"server": options.server}
    rendered = [(STATUS_PREFIX + name, "gauge", text, labels, value) for name, text, value in samples]
    # Which checks failed, by name: the alert and the checklist say what is wrong, not only how much.
    rendered += [(STATUS_PREFIX + "check_failed", "gauge", "1 for each check of barman check that failed.",
                  dict(labels, check=name), 1) for name in failed]
    metrics.write_textfile(options.textfile_dir, f"infer_forge_pitr_{options.server}.prom", rendered)
    return {"streaming_up": streaming, "failed_checks": failed, "base_backups": len(done),
            "last_base_backup": max(ends) if ends else None, "last_wal_archived": archived}


def slot_health(conninfo, slot_name, timeout=10):
    """(wal_status, safe_wal_size) of Barman's replication slot, as the server reports it
    (pg_replication_slots; safe_wal_size is None while max_slot_wal_keep_size is unlimited), read
    through Barman's own conninfo and .pgpass; None when the server or the slot cannot be read
    (the streaming metrics say why)."""
    if not conninfo or not slot_name:
        return None
    try:
        import psycopg

        with psycopg.connect(conninfo, connect_timeout=timeout, autocommit=True,
                             application_name="forge-pitr-metrics") as conn:
            row = conn.execute("SELECT wal_status, safe_wal_size FROM pg_replication_slots WHERE slot_name = %s",
                               (slot_name,)).fetchone()
    except Exception:  # noqa: BLE001 - any failure means no reading; the streaming checks report it
        return None
    return (row[0], row[1]) if row else None


def _backup_ends(backups):
    """When each of ``backups`` ended, leaving out those that do not say."""
    return [end for end in map(_backup_end, backups) if end is not None]


def _backup_end(backup):
    if isinstance(backup.get("end_time_timestamp"), (int, float, str)):
        try:
            return float(backup["end_time_timestamp"])
        except ValueError:
            pass
    try:
        return datetime.datetime.strptime(backup.get("end_time", ""), "%a %b %d %H:%M:%S %Y").replace(
            tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


def _last_archived_wal_time(barman):
    """The time field of the last line of Barman's WAL catalog (name size time compression)."""
    try:
        directory = barman.directory("xlogdb_directory")
    except ForgeError:
        return None
    # Barman 3.13 names it <server>-xlog.db; older ones xlog.db in the WAL directory.
    for name in (f"{barman.options.server}-xlog.db", "xlog.db"):
        try:
            with open(os.path.join(directory, name)) as handle:
                lines = [line.split() for line in handle if line.strip()]
            break
        except OSError:
            continue
    else:
        return None
    for fields in reversed(lines):
        if len(fields) >= 3:
            try:
                return float(fields[2])
            except ValueError:
                continue
    return None


def compare_counts(expected, actual):
    problems = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            problems.append(f"{table} missing from the recovered copy")
        elif table not in expected:
            problems.append(f"{table} in the recovered copy but not at the restore point")
        elif expected[table] != actual[table]:
            problems.append(f"{table}: {actual[table]} rows recovered, {expected[table]} at the restore point")
    return problems


def _stamp(now):
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


class PitrRecovery:
    """Recover to latest, a time or a restore point into a scratch cluster (``recover``), or
    drill: a restore point with exact counts, recovered and compared (``drill``)."""

    def __init__(self, options, settings, log=None, clock=time.time):
        self.options = options
        self.settings = settings
        self.barman = Barman(options)
        self.log = log or (lambda line: None)
        self.clock = clock

    def recover(self, target="latest", value=None, database=None, keep=True, remove_failed=False):
        """Recover into a new scratch cluster. A failure before PostgreSQL ran (a refusal,
        Barman's restore) leaves nothing behind; one after it (the replay ends in a FATAL, the
        counts fail) stops the server and keeps the directory and its log for inspection,
        unless ``remove_failed``: either way the error is one line that says which."""
        if target not in TARGETS:
            raise ForgeError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if target != "latest" and not value:
            raise ForgeError(f"a recovery to a {target} needs its value")
        if target != "latest":
            check_target(target, value)
        if target == "time":
            self.check_time_reachable(value)
        to = f"{target} {value}" if value else target
        started = time.monotonic()
        scratch = ScratchCluster(self.options, f"recover-{_stamp(self.clock())}")
        scratch.prepare()
        try:
            self.log(f"Recovering {self.options.server} to {to} into {scratch.data}")
            scratch.restore(self.barman, target, value)
        except BaseException:
            scratch.remove()
            raise
        try:
            scratch.start()
            result = {"target": target, "value": value, "data_directory": scratch.data,
                      "socket_directory": scratch.socket_dir, "port": self.options.scratch_port,
                      "recovery_seconds": round(time.monotonic() - started, 3)}
            if database:
                result["counts"] = scratch.counts(database)
        except Exception as exc:  # noqa: BLE001 - every failure here ends as one line
            reason = unexpected(exc)
            if "recovery ended before configured recovery target was reached" in reason:
                reason += (f"; restore point {value} is not in the WAL Barman received" if target == "name"
                           else "; the WAL Barman received ends before the target")
            scratch.stop()
            if remove_failed:
                scratch.remove()
                raise ForgeError(f"recovery of {self.options.server} to {to} failed: {reason}; the scratch "
                                 "directory was removed") from None
            raise ForgeError(f"recovery of {self.options.server} to {to} failed: {reason}; kept for inspection in "
                             f"{scratch.path} "
                             f"(remove it with: rm -rf {scratch.path})") from None
        except BaseException:
            scratch.remove()
            raise
        if not keep:
            scratch.remove()
            result["removed"] = True
        return result

    def check_time_reachable(self, value):
        """Refuse, before anything is copied, a time the WAL Barman received does not reach:
        PostgreSQL would replay all of it and then stop with a FATAL. A time that does not
        parse here is left to Barman and PostgreSQL, which say so themselves."""
        try:
            when = datetime.datetime.fromisoformat(value).astimezone()
        except (TypeError, ValueError, OverflowError, OSError):
            return
        last = self.barman.last_commit_time()
        if last is not None and when >= last:
            raise ForgeError(f"no WAL of {self.options.server} reaches {value}: the last commit Barman received is "
                             f"at {last.isoformat(sep=' ')}, so a time target must lie before it (recover to latest "
                             "for everything received); nothing was changed")

    def clear_stale_drills(self):
        """A drill killed half-way leaves its scratch cluster (maybe running) behind; the next
        drill stops and removes it. Recoveries an operator kept (recover-*) are left alone."""
        root = self.options.scratch_root
        removed = []
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            if name.startswith("drill-") and os.path.isfile(os.path.join(root, name, SCRATCH_MARKER)):
                stale = ScratchCluster(self.options, name)
                stale.started = os.path.exists(os.path.join(stale.data, "postmaster.pid"))
                stale.remove()
                removed.append(name)
        return removed

    def drill(self, database):
        started = time.monotonic()
        now = self.clock()
        name = f"forge_pitr_drill_{_stamp(now)}"
        result = {"server": self.options.server, "database": database, "restore_point": name,
                  "host": socket.gethostname(), "started_at": _stamp(now), "passed": False, "checks": {}}
        scratch = None
        try:
            stale = self.clear_stale_drills()
            if stale:
                result["removed_stale"] = stale
            point = create_restore_point(self.settings.with_database(database), name, self.options.lock_timeout)
            result["restore_point_lsn"] = point["lsn"]
            result["writers_held_seconds"] = point["writers_held_seconds"]
            result["checks"]["restore_point"] = "passed"
            self.barman.switch_wal()
            scratch = ScratchCluster(self.options, f"drill-{_stamp(now)}")
            scratch.prepare()
            restore_started = time.monotonic()
            scratch.restore(self.barman, "name", name)
            scratch.start()
            result["recovery_seconds"] = round(time.monotonic() - restore_started, 3)
            actual = scratch.counts(database)
            problems = compare_counts(point["counts"], actual)
            result["checks"]["row_counts"] = "failed" if problems else "passed"
            result["tables_checked"] = len(point["counts"])
            result["rows_checked"] = sum(actual.get(t, 0) for t in point["counts"])
            if self.options.amcheck and not problems:
                with scratch.connect_as_owner(database) as conn:
                    try:
                        result["indexes_checked"] = check_btree_indexes(conn)
                        result["checks"]["amcheck"] = "passed"
                    except Exception as exc:  # noqa: BLE001 - reported as one line
                        result["checks"]["amcheck"] = "failed"
                        problems.append(f"amcheck: {database_error(exc)}")
            result["passed"] = not problems
            result["reason"] = "; ".join(problems) if problems else (
                f"{result['tables_checked']} tables, {result['rows_checked']} rows at restore point {name} "
                "recovered exactly")
        except ForgeError as exc:
            result["reason"] = exc.message
        except Exception as exc:  # noqa: BLE001 - a drill reports, it does not crash
            result["reason"] = unexpected(exc)
        finally:
            if scratch is not None and not self.options.keep:
                scratch.remove()
            elif scratch is not None:
                scratch.stop_staging()
                result["kept"] = scratch.data
        result["verdict"] = "PASS" if result["passed"] else "FAIL"
        result["duration"] = round(time.monotonic() - started, 3)
        self._record(result)
        return result

    def _record(self, result):
        if self.options.report_dir:
            try:
                os.makedirs(self.options.report_dir, mode=0o750, exist_ok=True)
                path = pitr_report_path(self.options.report_dir, self.options.server)
                write_atomic(path, json.dumps(result, indent=2, sort_keys=True, default=str) + "\n", mode=0o640)
                result["report"] = path
            except OSError as exc:
                result["report_error"] = str(exc)
        if self.options.textfile_dir:
            now = self.clock()
            samples = [
                ("last_run_timestamp_seconds", "When the last PITR drill ended.", now),
                ("last_run_success", "1 if the last PITR drill passed, else 0.", 1 if result["passed"] else 0),
                ("duration_seconds", "Wall time of the last PITR drill.", result["duration"]),
                ("recovery_seconds", "Recovery time of the last PITR drill's scratch cluster.",
                 result.get("recovery_seconds", 0)),
                ("tables_checked", "Tables whose row counts the last PITR drill compared.",
                 result.get("tables_checked", 0)),
                ("rows_checked", "Rows the last PITR drill counted.", result.get("rows_checked", 0)),
            ]
            error = metrics.write_run(self.options.textfile_dir, pitr_metrics_filename(self.options.server),
                                      METRIC_PREFIX, {"server": self.options.server}, samples, result["passed"],
                                      now, "When a PITR drill last passed.")
            if error:
                result["metrics_error"] = error
        if not result["passed"]:
            report = sentry.report_failure(
                self.options.sentry_dsn, f"PITR drill of {self.options.server} failed: {result['reason']}",
                "pitr-drill", result["database"], result["host"], self.options.environment)
            if report:
                result["sentry"] = report
