"""Throwaway PostgreSQL and Redis servers on free loopback ports.

Real servers, started from Debian's binaries for the test session and torn
down afterwards. PostgreSQL uses scram-sha-256 password authentication and a
non-superuser application role, as production does.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
APP_ROLE = "infer"
# Characters that break naive passfile or shell quoting, on purpose.
APP_PASSWORD = "in:fer\\pw 'x\"#"
SUPERUSER_PASSWORD = "super-secret-pw"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host, port, what, seconds=10):
    """Return once something accepts connections on host:port; a server that never does fails the test."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start on {host}:{port}")


def _as_postgres(command, **kwargs):
    """initdb and postgres refuse to run as root: drop to the postgres user."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--"] + command
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)


class PostgresServer:
    def __init__(self, base_dir=None):
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="forge-pg.")
        self.data_dir = os.path.join(self.base_dir, "data")
        self.socket_dir = self.base_dir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.superuser = "postgres"
        self.superuser_password = SUPERUSER_PASSWORD
        self.app_user = APP_ROLE
        self.app_password = APP_PASSWORD
        self.log_path = os.path.join(self.base_dir, "server.log")

    def init(self):
        if os.geteuid() == 0:
            uid = pwd.getpwnam("postgres").pw_uid
            os.chown(self.base_dir, uid, -1)
        pwfile = os.path.join(self.base_dir, "pw")
        with open(pwfile, "w") as handle:
            handle.write(self.superuser_password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        _as_postgres([f"{PG_BIN}/initdb", "-D", self.data_dir, "-U", self.superuser, "-A", "scram-sha-256",
                      f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"])
        os.unlink(pwfile)
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as conf:
            conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 50\nshared_buffers = 128MB\n")
        return self

    def start(self):
        _as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.data_dir, "-w", "-t", "60", "-l", self.log_path,
                      "-o", f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1", "start"])
        return self

    def stop(self, mode="fast"):
        _as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.data_dir, "-w", "-m", mode, "stop"])

    def running(self):
        result = subprocess.run(
            (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
            + [f"{PG_BIN}/pg_ctl", "-D", self.data_dir, "status"], capture_output=True)
        return result.returncode == 0

    def destroy(self):
        if os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            try:
                self.stop("immediate")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- SQL helpers ------------------------------------------------------
    def connect(self, database="postgres", superuser=True, autocommit=True):
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, dbname=database, autocommit=autocommit,
            user=self.superuser if superuser else self.app_user,
            password=self.superuser_password if superuser else self.app_password)

    def execute(self, sql, database="postgres", superuser=True, params=None):
        with self.connect(database, superuser) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def setup_app(self):
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(self.app_user), sql.Literal(self.app_password)))
        return self

    def create_database(self, name, owner=None):
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner or self.app_user)))

    def drop_database(self, name):
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def database_exists(self, name):
        return bool(self.execute("SELECT 1 FROM pg_database WHERE datname = %s", params=(name,)))

    def app_env(self, database):
        """The runbook's environment variables for this server."""
        return {
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.app_user,
            "POSTGRES_PASSWORD": self.app_password,
            "POSTGRES_DB": database,
        }


SAMPLE_SCHEMA = """
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text,
    country text DEFAULT 'CZ'
);
CREATE TABLE orders (
    id serial PRIMARY KEY,
    customer_id int REFERENCES customers(id),
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL DEFAULT 'new',
    details jsonb,
    created_at timestamptz DEFAULT now()
);
CREATE SCHEMA audit;
CREATE TABLE audit."Order Events" (id bigserial PRIMARY KEY, order_id int, note text);
"""


def load_sample_data(server, database, customers=200, orders=5000):
    """The runbook's world in small: customers, orders (with jsonb), an odd-named table."""
    with server.connect(database, superuser=False) as conn:
        conn.execute(SAMPLE_SCHEMA)
        conn.execute("INSERT INTO customers (name, email) SELECT 'Zákazník ' || g, 'c' || g || '@example.cz' "
                     "FROM generate_series(1, %s) g", (customers,))
        conn.execute("INSERT INTO orders (customer_id, amount, status, details) "
                     "SELECT 1 + g %% %s, g * 12.5, CASE WHEN g %% 3 = 0 THEN 'shipped' ELSE 'new' END, "
                     "jsonb_build_object('line', g, 'steel', 'S235', 'note', md5(g::text)) "
                     "FROM generate_series(1, %s) g", (customers, orders))
        conn.execute("INSERT INTO audit.\"Order Events\" (order_id, note) "
                     "SELECT g, 'created' FROM generate_series(1, %s) g", (orders // 10,))


def table_counts(server, database):
    from psycopg import sql

    with server.connect(database) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%%' ORDER BY 1, 2").fetchall()
        return {f"{s}.{t}": conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(s), sql.Identifier(t))).fetchone()[0] for s, t in tables}


class RedisServer:
    def __init__(self, password="redis-test-pw"):
        self.base_dir = tempfile.mkdtemp(prefix="forge-redis.")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.password = password
        self.proc = None

    def start(self):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.base_dir]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.host, self.port, "redis-server")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    def destroy(self):
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)


class SshServer:
    """A throwaway sshd on 127.0.0.1 (the NAS side of off-site copies), with its
    own host key, one client key and a known_hosts file for that key."""

    def __init__(self):
        self.base_dir = tempfile.mkdtemp(prefix="forge-sshd.")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = "root"
        self.client_key = os.path.join(self.base_dir, "client_ed25519")
        self.known_hosts = os.path.join(self.base_dir, "known_hosts")
        self.proc = None

    def start(self):
        host_key = os.path.join(self.base_dir, "host_ed25519")
        for key in (host_key, self.client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        authorized = self.authorized_keys = os.path.join(self.base_dir, "authorized_keys")
        shutil.copy(self.client_key + ".pub", authorized)
        os.chmod(authorized, 0o600)
        with open(host_key + ".pub") as handle:
            host_public = " ".join(handle.read().split()[:2])
        with open(self.known_hosts, "w") as handle:
            handle.write(f"[{self.host}]:{self.port} {host_public}\n")
        config = os.path.join(self.base_dir, "sshd_config")
        with open(config, "w") as handle:
            handle.write(f"ListenAddress {self.host}\nPort {self.port}\nHostKey {host_key}\n"
                         f"PidFile {self.base_dir}/sshd.pid\nAuthorizedKeysFile {authorized}\n"
                         "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
                         "PermitRootLogin prohibit-password\nStrictModes no\n")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.host, self.port, "sshd")
        return self

    def gate(self, directory, state_dir, retention_days=90, min_keep=7, check_keys=None):
        """Bind the client key to the NAS gate for ``directory`` (sshd reads authorized_keys
        at every login), as the offsite_target role writes it on a real NAS. The NAS checks
        copies with the key of the tests' passphrase, or the keys file ``check_keys``."""
        from helpers import write_nas_check_keys

        forge = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "forge")
        check_keys = check_keys or write_nas_check_keys(os.path.join(self.base_dir, "nas-check.keys"))
        command = (f"{forge} nas-gate --dir {directory} --state {state_dir} --retention-days {retention_days} "
                   f"--min-keep {min_keep} --check-keys {check_keys}")
        with open(self.client_key + ".pub") as handle:
            key = " ".join(handle.read().split()[:2])
        with open(self.authorized_keys, "w") as handle:
            handle.write(f'restrict,command="{command}" {key}\n')

    def destroy(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.base_dir, ignore_errors=True)
