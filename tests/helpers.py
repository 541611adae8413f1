"""Small helpers shared by the test modules."""

import functools
import glob
import json
import os
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKUP_SCRIPT = os.path.join(REPO, "scripts", "backup_db.sh")


# The passphrase of the tests' backups. Unencrypted backups are signed with it too
# (BACKUP_ENCRYPT=0): restore and drill trust only signed manifests.
PASSPHRASE = "correct horse battery staple"
_signing_file = None


def signing_passphrase_file():
    """A 0600 file with PASSPHRASE, made once per test process in a private directory."""
    global _signing_file
    if _signing_file is None:
        import atexit
        import shutil

        directory = tempfile.mkdtemp(prefix="forge-signing.")
        atexit.register(shutil.rmtree, directory, True)
        _signing_file = os.path.join(directory, "backup.pass")
        fd = os.open(_signing_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(PASSPHRASE + "\n")
    return _signing_file


@functools.lru_cache
def _signing_key(passphrase):
    import hashlib

    return hashlib.pbkdf2_hmac("sha256", passphrase.encode(), b"infer-forge manifest signing key v2", 100000, 32)


def resign_manifest(path, manifest, passphrase=PASSPHRASE):
    """Write ``manifest`` for the backup at ``path``, signed as signing.py's docstring specifies.

    Written from that specification with hashlib and hmac, not with the engine's
    code, so a drift between the two fails the tests that use it. It stands for a
    backup that was signed by a tool that wrote wrong content (a buggy pg_dump).
    """
    import hashlib
    import hmac

    key = _signing_key(passphrase)
    body = {name: value for name, value in manifest.items() if name != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    body["signature"] = {
        "scheme": "hmac-sha256",
        "key_id": hmac.new(key, b"infer-forge key id", hashlib.sha256).hexdigest()[:16],
        "value": hmac.new(key, b"infer-forge manifest v2\n" + canonical, hashlib.sha256).hexdigest(),
    }
    with open(path + ".manifest.json", "w") as handle:
        json.dump(body, handle)


def run_backup_script(pg, database, backup_dir, extra=None, user=None, timeout=300, wait=True, sign=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "PG"))}
    env.update(pg.app_env(database))
    # An empty BACKUP_CONFIG means "no config file": the test sees only its own settings.
    env.update({"BACKUP_DIR": backup_dir, "RETENTION_DAYS": "30", "BACKUP_CONFIG": ""})
    if sign and not user and "BACKUP_PASSPHRASE_FILE" not in (extra or {}):
        env.update({"BACKUP_PASSPHRASE_FILE": signing_passphrase_file(), "BACKUP_ENCRYPT": "0"})
    env.update(extra or {})
    command = [BACKUP_SCRIPT]
    if user:
        command = ["runuser", "-u", user, "--"] + command
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def backups_in(directory, pattern="*"):
    return sorted(p for p in glob.glob(os.path.join(directory, pattern))
                  if not p.endswith((".manifest.json", ".sha256", ".prom")))


def manifest_of(path):
    with open(path + ".manifest.json") as handle:
        return json.load(handle)


def psql_pipe(pg, database, shell_pipeline, cwd=None):
    """Run ``<shell_pipeline> | psql`` exactly like the runbook, as the app role."""
    env = dict(os.environ, PGPASSWORD=pg.app_password)
    command = (f"set -o pipefail; {shell_pipeline} | psql -q -v ON_ERROR_STOP=1 -h {pg.host} -p {pg.port} "
               f"-U {pg.app_user} -d {database} >/dev/null")
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, cwd=cwd)


def children_of(pid):
    """PIDs whose parent is ``pid`` (walks one level of /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def process_named(name, ancestor, timeout=20, argument="--snapshot"):
    """Wait for a descendant of ``ancestor`` whose command is ``name`` and whose
    arguments include ``argument`` (the real dump, not a ``--version`` probe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack = [ancestor]
        while stack:
            pid = stack.pop()
            for child in children_of(pid):
                try:
                    with open(f"/proc/{child}/comm") as handle:
                        comm = handle.read().strip()
                    with open(f"/proc/{child}/cmdline", "rb") as handle:
                        args = handle.read().decode("utf-8", "replace").split("\0")
                    if comm == name and any(arg.startswith(argument) for arg in args):
                        return child
                except OSError:
                    continue
                stack.append(child)
        time.sleep(0.05)
    raise AssertionError(f"no {name} process appeared under pid {ancestor}")


def blocked_pg_dump(pg, database, ancestor, timeout=30):
    """The pid of the real pg_dump under ``ancestor``, once it waits on a lock (see TableLock).

    Debian's /usr/bin/pg_dump is a wrapper that execs the real binary: a process found
    by name may still be mid-exec, and /proc/<pid>/environ reads empty then. A
    backend waiting in pg_dump's LOCK TABLE means the real binary runs, connected and
    blocked, so its environment can be read at leisure."""
    deadline = time.monotonic() + timeout
    with pg.connect(database) as conn:
        while time.monotonic() < deadline:
            # pg_dump's own first statement (the engine's row counts wait on the lock too, as SELECTs).
            waiting = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LOCK TABLE %' "
                                   "AND wait_event_type = 'Lock'").fetchone()[0]
            if waiting:
                return process_named("pg_dump", ancestor)
            time.sleep(0.05)
    raise AssertionError(f"no pg_dump under pid {ancestor} came to wait on the table lock")


def all_cmdlines():
    lines = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    lines.append(handle.read().replace(b"\0", b" ").decode("utf-8", "replace"))
            except OSError:
                continue
    return lines


class TableLock:
    """Hold ACCESS EXCLUSIVE on a table so pg_dump blocks at its start: a
    deterministic way to have a running pg_dump to kill or to inspect."""

    def __init__(self, pg, database, table):
        self.conn = pg.connect(database, autocommit=False)
        self.conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def release(self):
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


class SentryStub:
    """A loopback HTTP server that speaks Sentry's envelope endpoint and keeps what it got.
    It stands in for sentry.io, which this machine cannot reach."""

    def __init__(self, status=200):
        self.received = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.received.append({"path": self.path, "auth": self.headers.get("X-Sentry-Auth", ""),
                                       "lines": body.split(b"\n")})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"id": "stub"}')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def dsn(self, project=42):
        return f"http://publickey@127.0.0.1:{self.port}/{project}"

    def events(self):
        return [json.loads(item["lines"][2]) for item in self.received]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def runbook_backup(pg, database, path, passphrase_file=None):
    """A backup made by the runbook's own commands: no manifest."""
    env = dict(os.environ, PGPASSWORD=pg.app_password)
    dump = f"pg_dump -h {pg.host} -p {pg.port} -U {pg.app_user} -d {database} --no-owner --no-privileges | gzip"
    if passphrase_file:
        dump += f" | openssl enc -aes-256-cbc -salt -pbkdf2 -pass file:{passphrase_file}"
    subprocess.run(["bash", "-c", f"set -o pipefail; {dump} > {path}"], env=env, check=True)
    os.chmod(path, 0o600)


def take_backup(pg, database, backup_dir, **extra):
    """Run backup_db.sh (settings as lower-case keywords); return the path of the backup it wrote."""
    before = set(backups_in(backup_dir)) if os.path.isdir(backup_dir) else set()
    result = run_backup_script(pg, database, backup_dir, {k.upper(): str(v) for k, v in extra.items()})
    assert result.returncode == 0, result.stderr
    [made] = set(backups_in(backup_dir)) - before
    return made


def drop_order_rows(path, count=10):
    """Doctor a plain gzip backup: drop ``count`` order rows from its COPY data and re-seal it
    with a matching checksum and signature, as a buggy dump tool would have produced it."""
    import gzip
    import hashlib

    lines = gzip.decompress(open(path, "rb").read()).decode().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("COPY public.orders "))
    del lines[start + 1:start + 1 + count]
    doctored = gzip.compress("\n".join(lines).encode())
    with open(path, "wb") as handle:
        handle.write(doctored)
    manifest = manifest_of(path)
    manifest.update(size=len(doctored), sha256=hashlib.sha256(doctored).hexdigest())
    resign_manifest(path, manifest)


def flip_byte(path, offset=None, mask=0x01):
    """Damage a file in place without changing its size: XOR one byte (the middle one by default)."""
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2 if offset is None else offset)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ mask]))


def stop_server_once_a_database_appears(server, prefix, timeout=60):
    """A started thread that stops ``server`` (immediate mode) 0.3 s after a database whose name
    starts with ``prefix`` exists: the restore is then streaming into it. join() it afterwards."""
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.execute("SELECT 1 FROM pg_database WHERE starts_with(datname, %s)", params=(prefix,)):
                time.sleep(0.3)
                server.stop("immediate")
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher
