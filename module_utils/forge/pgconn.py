"""PostgreSQL connection settings shared by backup, restore and health checks."""

import os
import subprocess

from .errors import ForgeError

CONNECT_TIMEOUT = 10

# The secrets the engine itself reads from its environment (the runbook's POSTGRES_PASSWORD, the
# Sentry DSN): a child tool never needs them. Others (a wrapper's cloud token) are the wrapper's.
SECRET_VARIABLES = frozenset({"POSTGRES_PASSWORD", "SENTRY_DSN"})
# What a tool the engine itself starts (igzip, ssh, rsync, barman, docker, logrotate) may need of ours:
# where to find programs and files, who and where it is, its language. Nothing else passes,
# so no secret of the runbook's (POSTGRES_PASSWORD, SENTRY_DSN, BACKUP_* settings) reaches it.
CHILD_VARIABLES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM"})


def child_env():
    """The environment for a client the operator chose (BACKUP_DUMP_COMMAND and the like, whose
    wrapper may need a variable of its own): the engine's own, without its secrets."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}


def tool_env():
    """The environment for a tool the engine itself starts: the few variables any tool needs."""
    return {k: v for k, v in os.environ.items() if k in CHILD_VARIABLES or k.startswith("LC_")}


class PgSettings:
    """Where and as whom to connect. The password never leaves this object
    except through a 0600 passfile or the environment of a child process."""

    def __init__(self, host="localhost", port=5432, user=None, password=None, database=None,
                 connect_timeout=CONNECT_TIMEOUT, sslmode=None):
        self.host = host or "localhost"
        self.port = int(port or 5432)
        self.user = user
        self.password = password
        self.database = database
        self.connect_timeout = connect_timeout
        self.sslmode = sslmode

    def target(self):
        return f"{self.host}:{self.port}"

    def with_database(self, database):
        return PgSettings(self.host, self.port, self.user, self.password, database,
                          self.connect_timeout, self.sslmode)

    def connect(self, autocommit=True, database=None, timeout=None, options=None,
                application_name="infer-forge-ops"):
        """Open a psycopg connection or raise a one-line ForgeError.

        ``timeout`` (seconds, may be fractional) overrides connect_timeout; libpq
        counts whole seconds and at least 2, so callers that need an exact bound
        enforce it themselves and pass theirs for the error message.
        """
        import math

        import psycopg

        kwargs = {
            "host": self.host,
            "port": self.port,
            "dbname": database or self.database,
            "connect_timeout": self.connect_timeout if timeout is None else max(2, math.ceil(timeout)),
            "application_name": application_name,
        }
        if options:
            kwargs["options"] = options
        if self.user:
            kwargs["user"] = self.user
        if self.password:
            kwargs["password"] = self.password
        if self.sslmode:
            kwargs["sslmode"] = self.sslmode
        try:
            return psycopg.connect(autocommit=autocommit, **kwargs)
        except psycopg.OperationalError as exc:
            raise ForgeError(describe_connect_error(exc, self, database or self.database, timeout)) from None

    def libpq_env(self, passfile=None):
        """Environment for libpq tools (pg_dump, psql, pg_restore).

        PGDATABASE is taken literally, so database names with spaces, quotes
        or '=' never get parsed as a connection string. The password reaches
        the tool only as ``passfile``: the runbook's POSTGRES_PASSWORD and the
        Sentry DSN stay in the engine's environment.
        """
        env = {k: v for k, v in child_env().items() if not k.startswith("PG")}
        env.update({
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGCONNECT_TIMEOUT": str(self.connect_timeout),
            "PGAPPNAME": "infer-forge-ops",
        })
        if self.user:
            env["PGUSER"] = self.user
        if self.database:
            env["PGDATABASE"] = self.database
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        if passfile:
            env["PGPASSFILE"] = passfile
        return env


def describe_connect_error(exc, settings, database, timeout=None):
    """Boil libpq's multi-line message down to one line that names the cause."""
    text = " ".join(str(exc).split())
    lowered = text.lower()
    where = f"{settings.target()}"
    timeout = settings.connect_timeout if timeout is None else timeout
    if "server does not support ssl" in lowered:
        return f"database: TLS required but {where} does not offer it"
    if "password authentication failed" in lowered:
        return f"database: password authentication failed for user {settings.user!r} at {where}"
    if "no password supplied" in lowered:
        return f"database: the server at {where} asks for a password and none was given"
    if "does not exist" in lowered and "database" in lowered:
        return f"database: database {database!r} does not exist at {where}"
    if "timeout" in lowered:
        return f"database: timeout after {float(timeout):.1f} s connecting to {where}"
    if "connection refused" in lowered:
        return f"database: connection refused at {where} (is PostgreSQL running?)"
    if "could not translate host name" in lowered:
        return f"database: unknown host {settings.host!r}"
    if settings.password:
        text = text.replace(settings.password, "********")
    return f"database: cannot connect to {where}: {text}"


def memory_file(name, data):
    """A 0600 file that exists only in memory (memfd), named ``/dev/fd/N``.

    Secrets (the database password for libpq, a passphrase given as a value)
    live here instead of in /tmp: nothing reaches a disk, and nothing is left
    behind when the process is killed, SIGKILL included. A child process reads
    it when the descriptor is passed on (``pass_fds``, see :func:`passed_fds`).
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.fchmod(fd, 0o600)  # libpq refuses a password file that others could read
    os.write(fd, data)
    return fd, f"/dev/fd/{fd}"


def passed_fds(*paths):
    """The descriptors behind memory files, for ``subprocess``'s ``pass_fds``."""
    return tuple(int(path.rsplit("/", 1)[1]) for path in paths if path and path.startswith("/dev/fd/"))


class PassFile:
    """A PGPASSFILE in memory (see :func:`memory_file`), closed on exit.

    Keeps the password out of argv (visible in ``ps``), out of the environment
    and off the disk.
    """

    def __init__(self, password):
        self.password = password
        self.fd = None

    def __enter__(self):
        if not self.password:
            return None
        escaped = self.password.replace("\\", "\\\\").replace(":", "\\:")
        self.fd, path = memory_file("infer-forge-pgpass", f"*:*:*:*:{escaped}\n".encode())
        return path

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return False


_LIBPQ_TOOLS = {"pg_dump", "pg_restore", "psql", "pg_dumpall"}


def client_major_version(command):
    """Major version of a libpq client tool, e.g. 15 for ``pg_dump (PostgreSQL) 15.18``.

    The tools take --version only as their first argument, so options after the tool's own
    name (``docker exec -i db pg_dump --exclude-table=x``) are left out of the question."""
    command = list(command)
    tool = next((i for i, word in enumerate(command) if os.path.basename(word) in _LIBPQ_TOOLS), None)
    probe = command[:tool + 1] if tool is not None else command
    try:
        out = subprocess.run(probe + ["--version"], capture_output=True, text=True, env=child_env(),
                             timeout=30, check=False)
    except FileNotFoundError:
        raise ForgeError(f"{command[0]} not found; install the PostgreSQL client "
                         "(Debian: postgresql-client)") from None
    words = out.stdout.split()
    for word in reversed(words):
        head = word.split(".")[0]
        if head.isdigit():
            return int(head)
    raise ForgeError(f"cannot tell the version of {' '.join(command)}: {out.stdout.strip() or out.stderr.strip()}")


CONTAINER_CLIENTS = ("docker", "podman")
# Root's wrapper (forge.dbclient), run as `sudo -n /usr/local/sbin/infer-forge-db-client pg_dump`.
DB_CLIENT_WRAPPER = "infer-forge-db-client"


def runs_in_container(command):
    """True for ``docker exec ... pg_dump``-style commands and root's wrapper of them: the client
    runs in the database's container, so it cannot read a file of this host."""
    return bool(command) and (os.path.basename(command[0]) in CONTAINER_CLIENTS or runs_through_wrapper(command))


def runs_through_wrapper(command):
    """True for root's wrapper (forge.dbclient), which chooses the role itself."""
    return bool(command) and any(os.path.basename(word) == DB_CLIENT_WRAPPER for word in command[:4])


def with_container_env(command):
    """For `docker exec`, forward the libpq variables by name (values stay in the environment).

    PGHOST and PGPORT stay behind: they say where this host reaches the server (a published
    port, a Compose network name), while a client inside the database container reaches it
    through the container's own socket. PGPASSFILE stays behind too: the file is on this host."""
    if not runs_in_container(command) or runs_through_wrapper(command):
        return list(command)  # the wrapper hands the container the libpq variables itself
    names = ["PGUSER", "PGDATABASE", "PGPASSWORD", "PGCONNECT_TIMEOUT", "PGAPPNAME", "PGOPTIONS"]
    exec_at = command.index("exec") + 1 if "exec" in command else 1
    forwarded = [arg for name in names for arg in ("-e", name)]
    return list(command[:exec_at]) + forwarded + list(command[exec_at:])


def drop_database(conn, name, if_exists=False):
    """DROP DATABASE ... WITH (FORCE), which ends the sessions in it. Where one of them is a session
    the login may not end (autovacuum's worker on tables a restore just loaded runs as no role the
    login is a member of, and FORCE then refuses), a plain DROP DATABASE: it ends autovacuum's
    workers itself and waits a few seconds for any other session to leave. When one stays, FORCE's
    error, which says whose session it is. ``conn`` is in autocommit mode."""
    import psycopg
    from psycopg import sql

    if_exists_sql = sql.SQL("IF EXISTS ") if if_exists else sql.SQL("")
    statement = sql.SQL("DROP DATABASE {}{}").format(if_exists_sql, sql.Identifier(name))
    try:
        conn.execute(statement + sql.SQL(" WITH (FORCE)"))
    except psycopg.errors.InsufficientPrivilege as refused:
        try:
            conn.execute(statement)
        except psycopg.Error:
            raise refused from None  # whose session it is says more than "being accessed by other users"


def check_btree_indexes(conn):
    """amcheck's bt_index_check (with heapallindexed) on every user B-tree index; returns how many.
    Raises the first index's error."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    indexes = conn.execute(
        "SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_am a ON a.oid = c.relam JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE a.amname = 'btree' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%'").fetchall()
    for (index,) in indexes:
        conn.execute("SELECT bt_index_check(%s::regclass, true)", (index,))
    return len(indexes)


def user_tables(cursor):
    """(schema, table) of every ordinary table outside the system schemas."""
    cursor.execute(
        """
        SELECT n.nspname, c.relname
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg_toast%'
           AND n.nspname NOT LIKE 'pg_temp%'
         ORDER BY 1, 2
        """
    )
    return [(row[0], row[1]) for row in cursor.fetchall()]


def count_rows(cursor, tables, into=None):
    """Exact row counts, keyed ``schema.table``, in the cursor's snapshot; ``into`` is filled as
    they come, so a count that fails leaves the ones before it."""
    from psycopg import sql

    counts = {} if into is None else into
    for schema, table in tables:
        cursor.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))
        counts[f"{schema}.{table}"] = cursor.fetchone()[0]
    return counts


def count_rows_in_parallel(connect, jobs):
    """Exact row counts, keyed ``schema.table``, of every user table of a database that
    nobody writes to (a restored copy), over up to ``jobs`` connections from ``connect()``.

    Each count is a full scan on one core; largest tables first, side by side, they end
    together. The first connection counts too, so a server with no slot to spare for the
    others still gets every count, one after another. Raises the first error a count met."""
    import threading

    from psycopg import sql

    with connect() as first:
        cursor = first.cursor()
        tables = user_tables(cursor)
        cursor.execute("""
            SELECT n.nspname, c.relname, pg_relation_size(c.oid)
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'""")
        sizes = {(schema, table): size for schema, table, size in cursor.fetchall()}
        pending = sorted(tables, key=lambda item: sizes.get(item, 0))
        counts, errors, lock = {}, [], threading.Lock()

        def count_with(conn):
            try:
                while True:
                    with lock:
                        if not pending or errors:
                            return
                        schema, table = pending.pop()
                    row = conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(table))).fetchone()
                    with lock:
                        counts[f"{schema}.{table}"] = row[0]
            except Exception as exc:  # noqa: BLE001 - raised again by the caller's thread
                with lock:
                    errors.append(exc)

        def helper():
            try:
                conn = connect()
            except Exception:  # noqa: BLE001 - no slot for a helper: the first connection counts on
                return
            with conn:
                count_with(conn)

        helpers = [threading.Thread(target=helper, name=f"row-count-{number}", daemon=True)
                   for number in range(1, min(jobs, len(tables)))]
        for thread in helpers:
            thread.start()
        count_with(first)
        for thread in helpers:
            thread.join()
    if errors:
        raise errors[0]
    return {f"{schema}.{table}": counts[f"{schema}.{table}"] for schema, table in tables}
