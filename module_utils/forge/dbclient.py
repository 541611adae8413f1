"""The Compose database container's own pg_dump, psql and pg_restore for the backup user,
without the Docker socket.

Whoever may talk to the Docker socket is root on the Docker host (``docker run -v /:/h``)
and reads every container's secrets (``docker inspect``). So the backup user is never in
its group. Root runs this instead, allowed by one sudoers rule, and this runs only the
invocations the engine makes, in the one running container of the Compose service that
root's own configuration names:

- ``pg_dump`` with the engine's options (format, compression, snapshot and a fixed set of
  what-to-dump options), never ``--file``, a host, a port or a user of the caller's choosing;
- ``psql`` exactly as the restore streams a plain dump into it (``-f -``), its input put in
  psql's restricted mode with a key the caller cannot know, so ``\\!`` and every other
  backslash command fails: psql in the container runs SQL, never a shell;
- ``pg_restore`` of the stream into one database (``--dbname=dbname='...'``);
- ``--version`` of each, which the engine asks to match the server's major.

The database role is root's choice, never the caller's: pg_dump connects as the dump role
(``pg_read_all_data``: it reads everything and can change nothing), psql and pg_restore as the
restore role (it owns the database it restores into and nothing else). The container's socket
trusts local connections, so the role is the whole of the right: before each call the wrapper
asks the server whether that role is a superuser or may run programs or touch the server's
files (``COPY ... TO PROGRAM``), and refuses if so. Everything else is refused in one line before
the client runs. The caller's environment reaches the container only through the libpq
variables named here, each checked.
"""

import os
import re
import subprocess
import sys

# This file is the on-host wrapper, never an Ansible module: print to stderr is its interface.
# pylint: disable=ansible-bad-function
from .compose import running_container
from .errors import ForgeError
from .settings import read_env_file

DEFAULT_CONFIG = "/etc/infer-forge/db-client.env"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLIENTS = ("pg_dump", "psql", "pg_restore")
# What sudo keeps (env_keep in the sudoers rule) and the container gets, each checked below.
# PGUSER and PGPASSWORD are the caller's and never pass: root's settings name the role.
PASSED_ENV = ("PGDATABASE", "PGCONNECT_TIMEOUT", "PGAPPNAME", "PGOPTIONS")
# A role in any of these, or a superuser, runs programs or reads and writes the server's files.
POWERFUL_ROLES = ("pg_execute_server_program", "pg_read_server_files", "pg_write_server_files")
PSQL_RESTORE = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-o", "/dev/null", "-f", "-"]
PG_RESTORE_STREAM = ["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
_PG_DUMP_FLAGS = {"--no-owner", "--no-privileges", "--no-comments", "--no-publications", "--no-subscriptions",
                  "--no-security-labels", "--no-tablespaces", "--no-unlogged-table-data", "--quote-all-identifiers",
                  "--serializable-deferrable", "--load-via-partition-root", "--enable-row-security",
                  "--large-objects", "--no-large-objects", "--no-toast-compression", "--no-table-access-method"}
_PG_DUMP_VALUES = {
    "--format": re.compile(r"plain|custom"),
    "--compress": re.compile(r"[0-9]|gzip(:[0-9])?|lz4(:[0-9]+)?|zstd(:[0-9]+)?|none"),
    "--snapshot": re.compile(r"[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?"),
    "--lock-wait-timeout": re.compile(r"[0-9]+(ms|s|min)?"),
    "--encoding": re.compile(r"[A-Za-z0-9_-]+"),
    **{name: re.compile(r"[^\x00-\x1f]+") for name in (
        "--exclude-table", "--exclude-table-data", "--exclude-schema", "--schema", "--table",
        "--extension", "--exclude-extension", "--exclude-table-and-children", "--table-and-children")},
}
_NAME = re.compile(r"[^\x00-\x1f]{1,63}")
_PGOPTIONS = re.compile(r"(-c [A-Za-z_][A-Za-z0-9_.]*=[^\s\\]*)( -c [A-Za-z_][A-Za-z0-9_.]*=[^\s\\]*)*")
_DBNAME_ARG = re.compile(r"--dbname=dbname='((?:[^'\\]|\\.)*)'")


def _refuse(message):
    raise ForgeError(f"infer-forge-db-client refuses: {message}; nothing was run")


def check_invocation(argv):
    """(client, args) when ``argv`` is one of the invocations the engine makes, else ForgeError."""
    if not argv or argv[0] not in CLIENTS:
        _refuse(f"the first argument must be one of {', '.join(CLIENTS)}")
    client, args = argv[0], list(argv[1:])
    if args == ["--version"]:
        return client, args
    if client == "psql":
        if args != PSQL_RESTORE:
            _refuse("psql runs only as a restore reads a plain dump: " + " ".join(PSQL_RESTORE))
    elif client == "pg_restore":
        if args[:-1] != PG_RESTORE_STREAM or not args or not _dbname_argument(args[-1]):
            _refuse("pg_restore runs only as a restore streams into one database: "
                    + " ".join(PG_RESTORE_STREAM) + " --dbname=dbname='<name>'")
    else:
        for arg in args:
            name, sep, value = arg.partition("=")
            pattern = _PG_DUMP_VALUES.get(name) if sep else None
            if (arg in _PG_DUMP_FLAGS) if not sep else (pattern is not None and pattern.fullmatch(value)):
                continue
            _refuse(f"pg_dump option {name!r} is not one the backup makes (never a file, host, port or user)")
    return client, args


def _dbname_argument(arg):
    """--dbname=dbname='<name>' exactly as restore.dbname_conninfo quotes one database name."""
    match = _DBNAME_ARG.fullmatch(arg)
    if not match:
        return False
    name = re.sub(r"\\(.)", r"\1", match.group(1))
    quoted = "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return arg == "--dbname=" + quoted and bool(_NAME.fullmatch(name))


def check_environment(environ, role):
    """The libpq variables to hand to the container, each checked; PGUSER is ``role``, root's."""
    passed = {name: environ[name] for name in PASSED_ENV if environ.get(name)}
    passed["PGUSER"] = role
    if "PGDATABASE" in passed and not _NAME.fullmatch(passed["PGDATABASE"]):
        _refuse("PGDATABASE is not a database name")
    if "PGCONNECT_TIMEOUT" in passed and not passed["PGCONNECT_TIMEOUT"].isdigit():
        _refuse("PGCONNECT_TIMEOUT is not a number of seconds")
    if "PGAPPNAME" in passed and not re.fullmatch(r"[\x20-\x7e]{1,63}", passed["PGAPPNAME"]):
        _refuse("PGAPPNAME is not a short printable name")
    if "PGOPTIONS" in passed and not _PGOPTIONS.fullmatch(passed["PGOPTIONS"]):
        _refuse("PGOPTIONS holds something other than -c name=value settings")
    return passed


def read_config(path):
    """Root's own settings: which Compose project and service, which roles, as which OS user."""
    config = read_env_file(path, root_trusts=True)
    keys = ("DB_CLIENT_PROJECT", "DB_CLIENT_SERVICE", "DB_CLIENT_DUMP_ROLE", "DB_CLIENT_RESTORE_ROLE")
    missing = [key for key in keys if not config.get(key)]
    if missing:
        raise ForgeError(f"{path} lacks {', '.join(missing)}")
    return {"project": config["DB_CLIENT_PROJECT"], "service": config["DB_CLIENT_SERVICE"],
            "roles": {"pg_dump": config["DB_CLIENT_DUMP_ROLE"], "psql": config["DB_CLIENT_RESTORE_ROLE"],
                      "pg_restore": config["DB_CLIENT_RESTORE_ROLE"]},
            "exec_user": config.get("DB_CLIENT_EXEC_USER") or "postgres"}


def check_role_is_powerless(container, exec_user, role):
    """Refuse ``role`` when the server says it is a superuser or may run programs or touch the
    server's files: through this wrapper it would run a shell in the container with SQL alone."""
    checks = " OR ".join(f"pg_has_role(current_user, '{name}', 'MEMBER')" for name in POWERFUL_ROLES)
    query = f"SELECT rolsuper OR {checks} FROM pg_roles WHERE rolname = current_user"  # noqa: S608 - fixed names
    proc = subprocess.run(["docker", "exec", "-u", exec_user, "-e", "PGUSER", container, "psql", "-X", "-At",
                           "-d", "postgres", "-c", query], capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": SAFE_PATH, "HOME": "/root", "PGUSER": role})
    if proc.returncode != 0:
        said = [line for line in proc.stderr.splitlines() if line.strip()]
        _refuse(f"cannot check role {role!r} in {container}: {(said or ['exit ' + str(proc.returncode)])[-1]}")
    if proc.stdout.strip() != "f":
        _refuse(f"role {role!r} is a superuser or may run programs or touch the server's files; the wrapper runs "
                "clients only as a role that can do neither (the backup role makes them)")


def docker_command(container, exec_user, client, args, passed):
    """`docker exec` of the checked invocation; the values travel in the environment, never argv."""
    names = [word for name in sorted(passed) for word in ("-e", name)]
    return ["docker", "exec", "-i", "-u", exec_user, *names, container, client, *args]


def _pump_restricted(command, env, stdin):
    """psql with its input in restricted mode (restore.restricted): SQL only, never a backslash command."""
    from .verify import restricted

    def chunks():
        while True:
            data = stdin.read(1 << 20)
            if not data:
                return
            yield data

    proc = subprocess.Popen(command, stdin=subprocess.PIPE, env=env)
    try:
        for data in restricted(chunks()):
            proc.stdin.write(data)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc.wait()


def main(argv, config_path=DEFAULT_CONFIG):
    try:
        if os.geteuid() != 0:
            raise ForgeError("infer-forge-db-client runs as root, through its sudoers rule "
                             "(sudo -n infer-forge-db-client ...)")
        config = read_config(config_path)
        client, args = check_invocation(argv)
        passed = check_environment(os.environ, config["roles"][client])
        container = running_container(config["project"], config["service"])
        if args != ["--version"]:
            check_role_is_powerless(container, config["exec_user"], passed["PGUSER"])
        command = docker_command(container, config["exec_user"], client, args, passed)
        env = {"PATH": SAFE_PATH, "HOME": "/root", **passed}
        sys.stdout.flush()
        if client == "psql" and args != ["--version"]:
            return _pump_restricted(command, env, sys.stdin.buffer)
        os.execvpe("docker", command, env)  # noqa: S606 - an argv, checked above, never a shell
    except ForgeError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - execvpe does not return
