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


@functools.lru_cache
def nas_check_key(passphrase=PASSPHRASE):
    """The NAS's check key of ``passphrase``, in hex, from signing.py's docstring (not its code)."""
    import hashlib

    return hashlib.pbkdf2_hmac("sha256", passphrase.encode(), b"infer-forge off-site check key v1", 100000,
                               32).hex()


def sign_for_nas(manifest, passphrase=PASSPHRASE):
    """``manifest`` with the off-site signature a backup host adds to the copy it sends the NAS
    (signing.py's docstring): an upload of someone who holds the passphrase."""
    import hashlib
    import hmac

    key = bytes.fromhex(nas_check_key(passphrase))
    body = {name: value for name, value in manifest.items() if name not in ("signature", "offsite_signature")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return dict(manifest, offsite_signature={
        "scheme": "hmac-sha256",
        "key_id": hmac.new(key, b"infer-forge key id", hashlib.sha256).hexdigest()[:16],
        "value": hmac.new(key, b"infer-forge off-site check v1\n" + canonical, hashlib.sha256).hexdigest()})


def write_nas_check_keys(path, passphrases=(PASSPHRASE,)):
    """The NAS's check keys file for ``passphrases``, as the offsite_target role writes it (0640)."""
    with open(path, "w") as handle:
        handle.writelines(f"{nas_check_key(p)}  # a test key\n" for p in passphrases)
    os.chmod(path, 0o640)
    return str(path)


def run_backup_script(pg, database, backup_dir, extra=None, user=None, timeout=300, wait=True, sign=True,
                      prefix=None, args=()):
    """Run scripts/backup_db.sh with the runbook's variables; ``prefix`` is a command put in
    front of it (strace, say), ``args`` its arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "PG"))}
    env.update(pg.app_env(database))
    # An empty BACKUP_CONFIG means "no config file": the test sees only its own settings.
    env.update({"BACKUP_DIR": backup_dir, "RETENTION_DAYS": "30", "BACKUP_CONFIG": ""})
    if sign and not user and "BACKUP_PASSPHRASE_FILE" not in (extra or {}):
        env.update({"BACKUP_PASSPHRASE_FILE": signing_passphrase_file(), "BACKUP_ENCRYPT": "0"})
    env.update(extra or {})
    command = [BACKUP_SCRIPT, *args]
    if user:
        command = ["runuser", "-u", user, "--"] + command
    command = list(prefix or []) + command
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def partials_in(directory):
    """The half-written files of running or killed backups in ``directory`` (none when it is not there)."""
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory) if ".partial-" in name)


def textfile_value(path, name):
    """The value of metric ``name`` (with labels) in a node_exporter textfile, or None."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


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


# How pg_dump ends a plain dump; a restore refuses a stream without it as truncated.
PLAIN_DUMP_END = "\n--\n-- PostgreSQL database dump complete\n--\n\n"


def write_gzip(backup_dir, name, sql):
    """A gzip file of ``sql`` in ``backup_dir`` (made 0700 when missing); returns its path."""
    import gzip

    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    path = os.path.join(backup_dir, name)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(sql.encode()))
    return path


def databases_like(server, prefix):
    """The names of the databases that start with ``prefix`` (literally: no LIKE wildcards), sorted."""
    rows = server.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", params=(prefix,))
    return sorted(row[0] for row in rows)


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


def wait_until(predicate, what, timeout=60):
    """Poll ``predicate`` until it returns something true and return that; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"gave up after {timeout} s waiting for {what}")


def descendants(pid):
    """Every live descendant of ``pid``, parents before children."""
    found, stack = [], [pid]
    while stack:
        for child in children_of(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def process_facts(pid):
    """(comm, argv, environment, executable) of a process as /proc shows them; None when it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as handle:
            comm = handle.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = [item for item in handle.read().split(b"\0") if item]
        executable = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    return comm, argv, environ, executable


def open_files(pid):
    """Paths of the files ``pid`` has open."""
    paths = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return paths
    for fd in fds:
        try:
            paths.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return paths


def directory_contents(directory):
    """{name: bytes} of every file in ``directory`` except the engine's lock files:
    what a failed or killed run must leave exactly as it was."""
    contents = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".lock") or not os.path.isfile(path):
            continue
        with open(path, "rb") as handle:
            contents[name] = handle.read()
    return contents


class StalledDump:
    """A dump command (BACKUP_DUMP_COMMAND) that runs the real pg_dump but holds its output
    after ``after_bytes`` bytes until release().

    The hold is a read on a FIFO, so nothing polls and no short-lived process comes and goes
    while a test reads /proc. Once ``stalled()`` is true the real pg_dump has written output,
    so it is past its exec, connected and running, blocked on the full pipe (the tests' dumps
    are larger than a pipe holds). The held bytes pass on unchanged after release(): a
    released dump is a complete, real pg_dump stream, exit status included (pipefail).
    """

    def __init__(self, directory, name="stalled_pg_dump", after_bytes=1):
        import shlex

        os.makedirs(directory, exist_ok=True)
        self.command = os.path.join(directory, name)
        self.marker = os.path.join(directory, name + ".stalled")
        self.fifo = os.path.join(directory, name + ".release")
        os.mkfifo(self.fifo, 0o600)
        with open(self.command, "w") as handle:
            handle.write(
                "#!/bin/bash\n"
                '[ "${1:-}" = --version ] && exec pg_dump --version\n'
                "set -o pipefail\n"
                'pg_dump "$@" | {\n'
                f"    head -c {int(after_bytes)}\n"
                f"    : > {shlex.quote(self.marker)}\n"
                f"    read -r _ < {shlex.quote(self.fifo)}\n"
                "    exec cat\n"
                "}\n")
        os.chmod(self.command, 0o755)
        self.released = False

    def stalled(self):
        return os.path.exists(self.marker)

    def wait_until_stalled(self, proc=None, timeout=60):
        def ready():
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the backup ended (exit {proc.returncode}) before its dump stalled: "
                                     f"{proc.stderr.read() if proc.stderr else ''}")
            return self.stalled()

        wait_until(ready, f"{self.command} to stall", timeout)

    def release(self, timeout=30):
        """Let the dump go on (once; later calls do nothing). A missing reader (the wrapper is not
        there yet, or is gone) is retried until ``timeout``, then the dump is taken as gone."""
        import errno

        if self.released:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
                continue
            try:
                os.write(fd, b"go\n")
            finally:
                os.close(fd)
            self.released = True
            return True


def role_dependencies(role):
    """The roles ``role``'s meta/main.yml depends on, by name."""
    import yaml

    with open(os.path.join(REPO, "roles", role, "meta", "main.yml")) as handle:
        meta = yaml.safe_load(handle) or {}
    return [entry["role"] if isinstance(entry, dict) else entry for entry in meta.get("dependencies") or []]


def own_role_defaults(role):
    """What ``role``'s own defaults/main.yml sets (nothing when it has none)."""
    import yaml

    path = os.path.join(REPO, "roles", role, "defaults", "main.yml")
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return yaml.safe_load(handle) or {}


def is_settings_role(role):
    """A role of defaults alone: it has no tasks, the roles that depend on it declare its variables."""
    return not os.path.isdir(os.path.join(REPO, "roles", role, "tasks"))


def dependents_of(role):
    """The roles whose meta/main.yml depends on ``role``."""
    return [other for other in sorted(os.listdir(os.path.join(REPO, "roles"))) if role in role_dependencies(other)]


def role_defaults(role):
    """The defaults a role's tasks see, as Ansible merges them: its dependencies' first, its own on top."""
    merged = {}
    for dependency in role_dependencies(role):
        merged.update(role_defaults(dependency))
    merged.update(own_role_defaults(role))
    return merged


def render(role, template, **values):
    """The role's template with its defaults and ``values``, as Ansible's template module renders it."""
    import jinja2

    context = role_defaults(role)
    context.update(values, ansible_managed="Ansible managed")
    env = jinja2.Environment(  # noqa: S701 - YAML, not HTML: Ansible does not escape either
        loader=jinja2.FileSystemLoader(os.path.join(REPO, "roles", role, "templates")),
        undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)
    env.filters.update(to_json=json.dumps, comment=lambda text: f"# {text}", dirname=os.path.dirname,
                       basename=os.path.basename, ternary=lambda value, yes, no: yes if value else no)
    # Ansible templates a variable's value when it is used, so a default may name another variable
    # (backup_retired_passphrases_file does): resolve those the same way, a few levels deep.
    for _depth in range(5):
        templated = {name: value for name, value in context.items() if isinstance(value, str) and "{{" in value}
        if not templated:
            break
        for name, value in templated.items():
            context[name] = env.from_string(value).render(context)
    return env.get_template(template).render(context)


def docker(*args, check=True, **kwargs):
    """The docker CLI, output captured, failing the test on a non-zero exit unless ``check`` is off."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=120, **kwargs)


def require_docker_image(image):
    """Skip the test unless Docker runs and has ``image`` (make bootstrap builds ours)."""
    import shutil

    import pytest

    if shutil.which("docker") is None or docker("image", "inspect", image, check=False).returncode != 0:
        pytest.skip(f"needs Docker and the {image} image (make bootstrap builds it)")
    return image
