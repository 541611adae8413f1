"""The Barman host's side of putting a recovered copy back into production.

``serve``: a copy recovered into a scratch cluster (pitr.PitrRecovery.recover) gets its
configuration files back as the base backup had them (Barman's .origin, then without any
recovery setting), a one-time replication login, and a restart with TLS (a certificate made
for this put-back) that lets only that login take a base backup of it, only from the database
host's address; the database host pulls it with pg_basebackup (putback.py) and drops the login.
No password of the database crosses: the one-time password is made for the run.

``rejoin``: once the put-back server runs (on a new timeline, with no replication slot),
Barman streams from it again: the receiver is stopped, what it received on the old timeline
is filed or moved to a forensics directory (never deleted: it holds the minutes after the
recovery target, the accident itself), the slot is created, the receiver starts at the new
server's position, a WAL switch proves the new timeline reaches the archive, and a new base
backup starts the new timeline's recovery window."""

import datetime
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import time

from .barman import RECEIVED_WAL_RE
from .errors import ForgeError, unexpected
from .fsutil import write_atomic
from .scratch import SCRATCH_MARKER, ScratchCluster

# Settings a recovery writes into postgresql.auto.conf: none of them belongs to production.
RECOVERY_SETTINGS = ("restore_command", "recovery_end_command", "archive_cleanup_command", "recovery_target",
                     "recovery_target_action", "recovery_target_inclusive", "recovery_target_lsn",
                     "recovery_target_name", "recovery_target_time", "recovery_target_timeline",
                     "recovery_target_xid")
LOGIN_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
MIN_PASSWORD = 20
FORENSICS_DIR = "infer-forge-forensics"


def _allowed_network(value):
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ForgeError(f"the put-back client must be an address or network (10.0.0.5, 10.0.0.0/24), got "
                         f"{value!r}; nothing was changed") from None


def _require_free_port(port):
    """A copy an interrupted put-back left serving holds the port: refuse, rather than let the
    database host copy that one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))  # noqa: S104 - a probe, closed at once
        except OSError:
            raise ForgeError(f"port {port} is in use (a copy an interrupted put-back still serves? stop it: pg_ctl -D "
                             "<its data directory> stop); nothing was changed") from None


def _listen_address(value):
    if value == "*":
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ForgeError(f"the put-back listen address must be an IP address or '*', got {value!r}; "
                         "nothing was changed") from None


class ScratchServer:
    """A kept scratch cluster (its directory under the scratch root) served for a put-back."""

    def __init__(self, options, data_directory):
        self.options = options
        path = os.path.dirname(os.path.abspath(data_directory))
        root = os.path.abspath(options.scratch_root)
        if os.path.dirname(path) != root or not os.path.isfile(os.path.join(path, SCRATCH_MARKER)):
            raise ForgeError(f"{data_directory} is not a scratch cluster under {root}; nothing was changed")
        self.cluster = ScratchCluster(options, os.path.basename(path))
        # A running copy answers on the port its postmaster.pid names (its 4th line).
        try:
            with open(os.path.join(self.cluster.data, "postmaster.pid")) as handle:
                lines = handle.read(4096).splitlines()
            self.cluster.started = True
            self.cluster.port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else self.cluster.port
        except OSError:
            self.cluster.started = False

    def serve(self, login, client, password, listen="*", port=55433):
        """Put the copy's configuration back as the base backup had it, create the one-time
        replication login ``login`` with ``password``, and restart listening on TCP with TLS
        (a certificate made for this put-back) for that login's base backup from ``client``
        only (SCRAM); returns where to connect and the certificate to pin."""
        if not LOGIN_RE.match(login or ""):
            raise ForgeError(f"the put-back login must be a lower-case role name, got {login!r}; nothing was changed")
        network = _allowed_network(client)
        address = _listen_address(listen)
        port = int(port)
        if len(password or "") < MIN_PASSWORD:
            raise ForgeError(f"the put-back's one-time password must have at least {MIN_PASSWORD} characters; "
                             "nothing was changed")
        if not self.cluster.running():
            raise ForgeError(f"the scratch cluster in {self.cluster.path} is not running: recover it first "
                             "(forge pitr recover keeps it running)")
        _require_free_port(port)
        try:
            self._create_login(login, password)
        except ForgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - psycopg's errors, one line
            raise ForgeError(f"the scratch cluster in {self.cluster.path} refused the put-back login: "
                             f"{unexpected(exc)}") from None
        self._reset_recovery_settings()
        certificate, key = self._make_certificate()
        hba = os.path.join(self.cluster.path, "serve_hba.conf")
        with open(hba, "w") as handle:
            handle.write("# infer-forge put-back: barman on the private socket, one login's base backup from one "
                         "address, over TLS\nlocal all all trust\n"
                         f"hostssl replication {login} {network} scram-sha-256\n")
        self.cluster.start(listen=address, port=port, hba_file=hba,
                           settings={"ssl": "on", "ssl_cert_file": certificate, "ssl_key_file": key})
        with open(certificate) as handle:
            pem = handle.read()
        return {"data_directory": self.cluster.data, "listen": address, "port": port, "login": login,
                "client": network, "scratch": self.cluster.path, "certificate": pem}

    def _create_login(self, login, password):
        """The login exists in the copy only for its base backup; the database host drops it
        once the put-back server runs. Created by the copy's bootstrap superuser, on the socket."""
        from psycopg import sql

        with self.cluster.connect("postgres") as conn:
            if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                raise ForgeError(f"the scratch cluster in {self.cluster.path} is still recovering; nothing was "
                                 "changed")
            [owner] = conn.execute("SELECT rolname FROM pg_roles WHERE oid = 10").fetchone()
        with self.cluster.connect("postgres", user=owner) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(login)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION PASSWORD {}").format(
                sql.Identifier(login), sql.Literal(password)))

    def _make_certificate(self):
        """A self-signed certificate for this put-back alone; the database host pins it."""
        certificate = os.path.join(self.cluster.path, "serve.crt")
        key = os.path.join(self.cluster.path, "serve.key")
        command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                   "-days", "2", "-subj", "/CN=infer-forge-putback", "-keyout", key, "-out", certificate]
        old = os.umask(0o077)
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        except FileNotFoundError:
            raise ForgeError("openssl not found; install it (Debian: openssl)") from None
        finally:
            os.umask(old)
        if proc.returncode != 0:
            raise ForgeError(f"openssl could not make the put-back's certificate: {proc.stderr.strip()[-200:]}")
        return certificate, key

    def _reset_recovery_settings(self):
        """postgresql.auto.conf without what Barman's restore and our restore_command wrote; read
        at the restart that follows, and copied as it is on disk by the base backup. A file edit,
        not ALTER SYSTEM: the copy's login need not be a superuser."""
        # Barman's restore keeps each configuration file it changed (archive_command = false,
        # #BARMAN# lines, its recovery settings) as <file>.origin: the file as the base backup had it.
        for name in ("postgresql.conf", "postgresql.auto.conf"):
            origin = os.path.join(self.cluster.data, name + ".origin")
            if os.path.isfile(origin) and not os.path.islink(origin):
                os.replace(origin, os.path.join(self.cluster.data, name))
        path = os.path.join(self.cluster.data, "postgresql.auto.conf")
        with open(path) as handle:
            lines = handle.read().splitlines()
        kept = [line for line in lines
                if line.split("=", 1)[0].strip() not in RECOVERY_SETTINGS and not line.startswith("# infer-forge:")
                and "added by Barman" not in line]
        write_atomic(path, "\n".join(kept) + "\n", mode=0o600)

    def remove(self):
        self.cluster.remove()
        return {"removed": self.cluster.path}


class Rejoin:
    """Barman streams again from the server put back on a new timeline (see the module text)."""

    def __init__(self, barman, clock=time.time, log=None):
        self.barman = barman
        self.clock = clock
        self.log = log or (lambda line: None)

    def run(self, base_backup=True, timeout=300, backup_timeout=24 * 3600):
        server = self.barman.options.server
        started = time.monotonic()
        try:
            self.barman.run("receive-wal", "--stop", server, timeout=120)
        except ForgeError as exc:
            if "no such process" not in exc.message:  # none runs: barman cron's last start failed
                raise
        # Complete segments into the archive, so only the partial ones are left to move.
        self.barman.run("archive-wal", server, timeout=600)
        timeline = self._server_timeline()
        moved = self._move_older_timelines(timeline)
        try:
            self.barman.run("receive-wal", "--create-slot", server, timeout=120)
        except ForgeError as exc:
            if "already exists" not in exc.message:
                raise
        deadline = time.monotonic() + timeout
        while True:
            self.barman.run("cron", timeout=300)
            checks = self.barman.checks()
            if all(checks.get(name, {}).get("status") == "OK" for name in ("receive_wal_running", "replication_slot")):
                break
            if time.monotonic() > deadline:
                failed = sorted(name for name, check in checks.items() if check.get("status") != "OK")
                raise ForgeError(f"barman does not stream from the put-back server of {server} after {timeout} s: "
                                 f"barman check fails {', '.join(failed) or 'nothing, yet no receiver runs'}")
            time.sleep(2)
        self.barman.switch_wal()
        result = {"timeline": timeline, "moved_to_forensics": moved, "streaming": True}
        if base_backup:
            result["base_backup"] = self._base_backup(backup_timeout)
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    def _base_backup(self, timeout):
        """A base backup of the new timeline, done: its last WAL segment is closed by a switch
        (a quiet server would leave it open for hours) and filed by barman cron."""
        server = self.barman.options.server
        before = {backup.get("backup_id") for backup in self.barman.backups()}
        self.barman.run("backup", "--immediate-checkpoint", server, timeout=timeout)
        self.barman.switch_wal()
        deadline = time.monotonic() + 600
        while True:
            new = [backup for backup in self.barman.backups() if backup.get("backup_id") not in before]
            if new and new[0].get("status") == "DONE":
                return new[0].get("backup_id")
            if new and new[0].get("status") == "FAILED" or time.monotonic() > deadline:
                raise ForgeError(f"the new timeline's base backup of {server} is "
                                 f"{new[0].get('status') if new else 'missing'}: barman list-backups {server}")
            self.barman.run("cron", timeout=300)
            time.sleep(1)

    def _server_timeline(self):
        """The put-back server's timeline, as Barman's view of it says (show-servers'
        current_xlog names its segment)."""
        current = self.barman.settings(fresh=True).get("current_xlog", "")  # the server changed under Barman
        if not re.match(r"^[0-9A-F]{24}\Z", current):
            raise ForgeError(f"barman cannot read the put-back server of {self.barman.options.server}'s position "
                             f"(show-servers current_xlog: {current or 'none'}); is it running and reachable?")
        return current[:8]

    def _move_older_timelines(self, timeline):
        """What pg_receivewal received on an older timeline and Barman did not file (the
        segment it was receiving when the old server went) goes to the forensics directory:
        pg_receivewal would resume from it on the old timeline and be refused for ever."""
        streaming = self.barman.streaming_dir()
        stamp = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        target = os.path.join(os.path.dirname(os.path.dirname(streaming.rstrip("/"))), FORENSICS_DIR,
                              f"{self.barman.options.server}-{stamp}")
        moved = []
        for name in sorted(os.listdir(streaming)) if os.path.isdir(streaming) else []:
            match = RECEIVED_WAL_RE.match(name)
            # Only the segment it was receiving: complete ones are barman cron's to file (moving
            # one while cron holds its lock would leave a hole in the archive).
            if match and match.group(2) and match.group(1)[:8] < timeline:
                os.makedirs(target, mode=0o700, exist_ok=True)
                shutil.move(os.path.join(streaming, name), os.path.join(target, name))
                moved.append(os.path.join(target, name))
        if moved:
            self.log(f"moved {len(moved)} WAL file(s) of the old timeline to {target}")
        return moved
