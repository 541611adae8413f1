"""A scratch cluster: a recovery from Barman into a new data directory under the scratch root,
started by the right major's binaries on a side port with its socket in a private directory
and no TCP listener, running nothing the source configured, and removed afterwards."""

import os
import shutil
import subprocess
import time

from .barman import SHELL_SAFE_PATH_RE, plain_wal_archive
from .errors import ForgeError, database_error
from .pgconn import count_rows, user_tables
from .walstage import WalStager

SCRATCH_MARKER = ".infer-forge-pitr-scratch"


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
        archive = plain_wal_archive(barman)
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
