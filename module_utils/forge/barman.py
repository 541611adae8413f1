"""Barman for one server: its command and its failures in its own words, the catalog, the WAL
it has received and archived, its configuration checked by Barman itself, and the status
metrics (streaming, slot, base backups) the PITR alerts read."""

import datetime
import json
import os
import re
import subprocess
import time

from . import metrics, records
from .errors import ForgeError, last_line

SEGMENT_NAME_RE = re.compile(r"^[0-9A-F]{24}\Z")
# A directory of Barman's WAL archive: a segment name's first sixteen characters (a history
# file beside them, 00000002.history, is sixteen characters too).
WAL_BUCKET_RE = re.compile(r"^[0-9A-F]{16}\Z")
# What pg_receivewal writes into Barman's streaming directory: whole segments barman cron has
# not filed yet, and the one still being received (.partial).
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


def check_server_name(server):
    if not re.match(r"^[A-Za-z0-9_.-]+\Z", server or ""):
        raise ForgeError(f"Barman server name must be letters, digits, '_', '.' or '-', got {server!r}")


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
        if plain_wal_archive(self) and os.path.isdir(archive):
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


def plain_wal_archive(barman):
    """Barman's WAL directory when its segments are stored as PostgreSQL wrote them
    (no compression) under a path a shell word can hold as it is; else None, and Barman
    copies the WAL itself."""
    wals = barman.settings().get("wals_directory", "")
    plain = barman.settings().get("compression", "None") in ("None", "", "none")
    return wals if plain and SHELL_SAFE_PATH_RE.match(wals) else None


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
    rendered = [(records.PITR_STATUS_PREFIX + name, "gauge", text, labels, value) for name, text, value in samples]
    # Which checks failed, by name: the alert and the checklist say what is wrong, not only how much.
    rendered += [(records.PITR_STATUS_PREFIX + "check_failed", "gauge", "1 for each check of barman check that failed.",
                  dict(labels, check=name), 1) for name in failed]
    metrics.write_textfile(options.textfile_dir, records.pitr_status_metrics_filename(options.server), rendered)
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
