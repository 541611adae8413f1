"""The engine against a real PostgreSQL 17 server in a container (the Compose stack's `db`
image, molecule/image/build_stack.sh), from this Debian 12 host whose own client is 15.

A pg_dump older than the server is refused in one line that says what to do, and the
`docker exec` dump command the role derives for a Compose database makes a verified,
encrypted backup that the drill restores with exact counts and that the runbook's own
`openssl | gunzip | docker exec -i <db> psql` restores too."""

import json
import os
import re
import socket
import subprocess
import time
import uuid

import pytest

from helpers import (
    REPO,
    backups_in,
    directory_contents,
    docker,
    manifest_of,
    require_docker_image,
    run_backup_script,
    signing_passphrase_file,
)
from servers import SAMPLE_SCHEMA, table_counts

IMAGE = "infer-forge-stack:latest"
RESTORE_SCRIPT = os.path.join(REPO, "scripts", "restore_db.sh")
PASSWORD = "pg17-test-password"



def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres17Container:
    """One throwaway container of the stack image, published on a free loopback port only."""

    superuser = app_user = "infer"
    superuser_password = app_password = PASSWORD
    host = "127.0.0.1"

    def __init__(self):
        self.name = f"forge-test-pg17-{uuid.uuid4().hex[:8]}"
        self.port = _free_port()

    def start(self):
        # Compose's labels, as `docker compose up` puts them: root's client wrapper finds it by them.
        docker("run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:5432",
                "--label", f"com.docker.compose.project={self.name}", "--label", "com.docker.compose.service=db",
                "-e", "POSTGRES_USER=infer", "-e", "POSTGRES_PASSWORD", "-e", "POSTGRES_DB=postgres_app",
                IMAGE, env=dict(os.environ, POSTGRES_PASSWORD=PASSWORD))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = docker("exec", self.name, "pg_isready", "-q", "-U", "infer", check=False)
            if ready.returncode == 0:
                import psycopg

                try:
                    self.execute("SELECT 1")
                    return self
                except psycopg.OperationalError:
                    time.sleep(0.3)  # the published port may lag the server's own socket
                    continue
            time.sleep(0.3)
        raise RuntimeError(f"PostgreSQL 17 in {self.name} did not start: {docker('logs', self.name).stderr}")

    def connect(self, database="postgres", superuser=True, autocommit=True):
        import psycopg

        return psycopg.connect(host=self.host, port=self.port, dbname=database, autocommit=autocommit,
                               user=self.app_user, password=self.app_password)

    def execute(self, sql, database="postgres", superuser=True, params=None):
        with self.connect(database) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def app_env(self, database):
        return {"POSTGRES_HOST": self.host, "POSTGRES_PORT": str(self.port), "POSTGRES_USER": self.app_user,
                "POSTGRES_PASSWORD": self.app_password, "POSTGRES_DB": database}

    def destroy(self):
        docker("rm", "-f", "-v", self.name, check=False)


@pytest.fixture(scope="module")
def pg17():
    require_docker_image(IMAGE)
    server = Postgres17Container().start()
    yield server
    server.destroy()


@pytest.fixture
def orders17(pg17, request):
    name = "o17_" + uuid.uuid4().hex[:8]
    pg17.execute(f'CREATE DATABASE "{name}"')
    with pg17.connect(name) as conn:
        conn.execute(SAMPLE_SCHEMA)
        conn.execute("INSERT INTO customers (name, email) SELECT 'Zákazník ' || g, 'c' || g || '@example.cz' "
                     "FROM generate_series(1, 120) g")
        conn.execute("INSERT INTO orders (customer_id, amount, status, details) "
                     "SELECT 1 + g % 120, g * 12.5, 'new', jsonb_build_object('line', g) "
                     "FROM generate_series(1, 3000) g")
        conn.execute("INSERT INTO audit.\"Order Events\" (order_id, note) SELECT g, 'created' "
                     "FROM generate_series(1, 300) g")
    yield name
    pg17.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _host_client_major(tool="pg_dump"):
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+)\.\d+", out).group(1))


def test_the_hosts_older_pg_dump_is_refused_in_one_line_that_names_the_fix(pg17, orders17, tmp_path):
    assert _host_client_major() < 17, "this test needs a host pg_dump older than the container's PostgreSQL 17"
    backup_dir = str(tmp_path / "backups")
    os.mkdir(backup_dir, 0o700)
    result = run_backup_script(pg17, orders17, backup_dir)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(
        rf"ERROR: pg_dump {_host_client_major()} on this host cannot dump a PostgreSQL 17 server; set "
        r"BACKUP_DUMP_COMMAND \(role: backup_dump_command\) to a pg_dump 17 such as 'docker exec -i <db container> "
        r"pg_dump', or run the backup as the Compose sidecar \(backup_compose_sidecar\)", lines[0]), lines[0]
    # pg_dump's own "server version mismatch" never reaches the operator, and nothing is written.
    assert "mismatch" not in result.stderr
    assert directory_contents(backup_dir) == {}


def test_a_docker_exec_backup_is_verified_and_restores_by_the_drill_and_by_the_runbook(
        pg17, orders17, tmp_path, passphrase_file):
    backup_dir = str(tmp_path / "backups")
    os.mkdir(backup_dir, 0o700)
    expected = table_counts(pg17, orders17)
    dump_command = f"docker exec -i {pg17.name} pg_dump"
    result = run_backup_script(pg17, orders17, backup_dir, {
        "BACKUP_DUMP_COMMAND": dump_command, "BACKUP_PASSPHRASE_FILE": passphrase_file, "BACKUP_ENCRYPT": "1"})
    assert result.returncode == 0, result.stderr
    [backup] = backups_in(backup_dir)
    assert backup.endswith(".sql.gz.enc")
    manifest = manifest_of(backup)
    assert manifest["pg_dump_major_version"] == 17
    assert manifest["server"]["version"].startswith("17.")
    assert manifest["snapshot_row_counts"] == expected

    # The drill restores it into a scratch database on the 17 server with this host's psql.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "PG"))}
    env.update(pg17.app_env(orders17), BACKUP_DIR=backup_dir, BACKUP_CONFIG="", BACKUP_PASSPHRASE_FILE=passphrase_file)
    drill = subprocess.run([RESTORE_SCRIPT, "drill", os.path.basename(backup)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert drill.returncode == 0, drill.stderr
    rows = sum(expected.values())
    assert re.search(rf"PASS: .*{re.escape(os.path.basename(backup))}: 3 tables, {rows} rows checked", drill.stdout), \
        drill.stdout
    # And with the container's own psql 17 (RESTORE_PSQL_COMMAND), the way the role sets it up for Compose.
    env["RESTORE_PSQL_COMMAND"] = f"docker exec -i {pg17.name} psql"
    drill = subprocess.run([RESTORE_SCRIPT, "drill", os.path.basename(backup)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert f"3 tables, {rows} rows checked" in drill.stdout

    # The runbook's manual restore, through the container's own psql, into a new database.
    pg17.execute('CREATE DATABASE "runbook_target"')
    try:
        manual = subprocess.run(["bash", "-o", "pipefail", "-c",
            f"openssl enc -d -aes-256-cbc -pbkdf2 -pass file:{passphrase_file} -in {backup} | gunzip | "
            f"docker exec -i -e PGPASSWORD {pg17.name} psql -v ON_ERROR_STOP=1 -q -U infer -d runbook_target"],
            env=dict(os.environ, PGPASSWORD=PASSWORD), capture_output=True, text=True, timeout=300)
        assert manual.returncode == 0, manual.stderr
        assert table_counts(pg17, "runbook_target") == expected
    finally:
        pg17.execute('DROP DATABASE IF EXISTS "runbook_target" WITH (FORCE)')


def _restore_env(pg17, database, backup_dir, extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "RESTORE_", "PG"))}
    env.update(pg17.app_env(database), BACKUP_DIR=backup_dir, BACKUP_CONFIG="",
               BACKUP_PASSPHRASE_FILE=signing_passphrase_file(), BACKUP_ENCRYPT="0", **(extra or {}))
    return env


def _databases(pg17):
    return {row[0] for row in pg17.execute("SELECT datname FROM pg_database")}


@pytest.fixture
def custom_backup17(pg17, orders17, tmp_path):
    """A custom-format dump of the 17 server, made by its own pg_dump through docker exec."""
    backup_dir = str(tmp_path / "backups")
    os.mkdir(backup_dir, 0o700)
    result = run_backup_script(pg17, orders17, backup_dir, {
        "BACKUP_DUMP_COMMAND": f"docker exec -i {pg17.name} pg_dump", "BACKUP_FORMAT": "custom"})
    assert result.returncode == 0, result.stderr
    [backup] = backups_in(backup_dir)
    assert backup.endswith(".dump") and manifest_of(backup)["pg_dump_major_version"] == 17
    return backup_dir, os.path.basename(backup)


def test_the_hosts_older_pg_restore_is_refused_in_one_line_before_any_database_is_touched(
        pg17, orders17, custom_backup17):
    assert _host_client_major("pg_restore") < 17
    backup_dir, backup = custom_backup17
    before = _databases(pg17)
    for action in (["drill", backup], ["restore", backup, "o17_new_target"]):
        result = subprocess.run([RESTORE_SCRIPT, *action], env=_restore_env(pg17, orders17, backup_dir),
                                capture_output=True, text=True, timeout=300)
        assert result.returncode != 0, result.stdout
        expected = (rf"pg_restore {_host_client_major('pg_restore')} on this host cannot read a custom-format dump "
                    r"of pg_dump 17; set RESTORE_PG_RESTORE_COMMAND \(role: backup_restore_pg_restore_command\) to "
                    r"a pg_restore 17 such as 'docker exec -i <db container> pg_restore'")
        assert re.search(expected, result.stdout + result.stderr), result.stdout + result.stderr
        # pg_restore's own "unsupported version in file header" never reaches the operator.
        assert "unsupported version" not in result.stdout + result.stderr
        assert _databases(pg17) == before


def test_a_custom_dump_restores_through_the_containers_own_pg_restore(pg17, orders17, custom_backup17):
    backup_dir, backup = custom_backup17
    expected = table_counts(pg17, orders17)
    env = _restore_env(pg17, orders17, backup_dir,
                       {"RESTORE_PG_RESTORE_COMMAND": f"docker exec -i {pg17.name} pg_restore"})
    drill = subprocess.run([RESTORE_SCRIPT, "drill", backup], env=env, capture_output=True, text=True, timeout=300)
    assert drill.returncode == 0, drill.stdout + drill.stderr
    rows = sum(expected.values())
    assert re.search(rf"PASS: .*{re.escape(backup)}: 3 tables, {rows} rows checked", drill.stdout), drill.stdout

    # A forced restore over a database that has tables swaps the restored copy in.
    target = orders17 + "_copy"
    pg17.execute(f'CREATE DATABASE "{target}"')
    try:
        pg17.execute("CREATE TABLE stale (id int)", database=target)
        restore = subprocess.run([RESTORE_SCRIPT, "restore", backup, target, "--force", "--drop-previous"], env=env,
                                 capture_output=True, text=True, timeout=300)
        assert restore.returncode == 0, restore.stdout + restore.stderr
        assert table_counts(pg17, target) == expected
    finally:
        pg17.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


# Root's wrapper of the container's clients (forge.dbclient), as the backup role installs it
# for a Compose database: tested here as root runs it (sudo's part is molecule/compose's).

@pytest.fixture(scope="module")
def db_client(pg17, tmp_path_factory):
    """The wrapper's launcher and root's settings for it, root-owned, finding pg17 by its labels."""
    base = tmp_path_factory.mktemp("db-client")
    os.chmod(base, 0o755)
    config = base / "db-client.env"
    # The roles the backup role makes: one reads everything, one owns what it restores; no superuser.
    pg17.execute("DO $$ BEGIN CREATE ROLE forge_dump LOGIN; CREATE ROLE forge_restore LOGIN; "
                 "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    pg17.execute("GRANT pg_read_all_data TO forge_dump")
    config.write_text(f"DB_CLIENT_PROJECT={pg17.name}\nDB_CLIENT_SERVICE=db\n"
                      "DB_CLIENT_DUMP_ROLE=forge_dump\nDB_CLIENT_RESTORE_ROLE=forge_restore\n")
    os.chmod(config, 0o644)
    launcher = base / "infer-forge-db-client"
    # The role's template (roles/backup/templates/db-client.sh.j2) rendered for this repository.
    template = open(os.path.join(REPO, "roles", "backup", "templates", "db-client.sh.j2")).read()
    launcher.write_text(template.replace("{{ ansible_managed | comment }}", "#")
                        .replace("{{ backup_user }}", "the backup user")
                        .replace("{{ (backup_install_dir ~ '/lib') | to_json }}",
                                 json.dumps(os.path.join(REPO, "module_utils")))
                        .replace("{{ backup_compose_db_client_config | to_json }}", json.dumps(str(config))))
    os.chmod(launcher, 0o755)
    return {"launcher": str(launcher), "config": str(config)}


def _in_container(pg17, path):
    return docker("exec", pg17.name, "test", "-e", path, check=False).returncode == 0


def test_a_backup_through_roots_client_wrapper_restores_exactly_with_its_psql_and_pg_restore(
        pg17, orders17, tmp_path, db_client):
    """The commands the role sets for Compose: backup, then drills of a plain and a custom dump."""
    expected = table_counts(pg17, orders17)
    rows = sum(expected.values())
    for fmt, client in (("plain", "RESTORE_PSQL_COMMAND"), ("custom", "RESTORE_PG_RESTORE_COMMAND")):
        backup_dir = str(tmp_path / fmt)
        os.mkdir(backup_dir, 0o700)
        result = run_backup_script(pg17, orders17, backup_dir, {
            "BACKUP_DUMP_COMMAND": f"{db_client['launcher']} pg_dump", "BACKUP_FORMAT": fmt})
        assert result.returncode == 0, result.stderr
        [backup] = backups_in(backup_dir)
        assert manifest_of(backup)["pg_dump_major_version"] == 17
        tool = "psql" if fmt == "plain" else "pg_restore"
        drill = subprocess.run([RESTORE_SCRIPT, "drill", os.path.basename(backup)], capture_output=True, text=True,
                               timeout=300, env=_restore_env(pg17, orders17, backup_dir,
                                                             {client: f"{db_client['launcher']} {tool}",
                                                              "RESTORE_OWNER": "forge_restore"}))
        assert drill.returncode == 0, drill.stdout + drill.stderr
        assert f"3 tables, {rows} rows checked" in drill.stdout


@pytest.mark.parametrize("argv, env, reason", [
    (["psql", "-c", "\\! touch /tmp/forge-pwned"], {}, "psql runs only as a restore reads a plain dump"),
    (["psql", "-X", "-f", "/etc/passwd"], {}, "psql runs only as a restore reads a plain dump"),
    (["pg_dump", "--file=/tmp/forge-pwned"], {}, "pg_dump option '--file' is not one the backup makes"),
    (["pg_dump", "-h", "127.0.0.1"], {}, "pg_dump option '-h' is not one the backup makes"),
    (["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
      "--dbname=dbname='x' user='postgres'"], {}, "pg_restore runs only as a restore streams into one database"),
    (["pg_restore", "-f", "/tmp/forge-pwned"], {}, "pg_restore runs only as a restore streams into one database"),
    (["sh", "-c", "touch /tmp/forge-pwned"], {}, "the first argument must be one of pg_dump, psql, pg_restore"),
    (["pg_dump", "--format=plain"], {"PGOPTIONS": "-c x=1 \\; y"}, "PGOPTIONS holds something other than"),
])
def test_roots_client_wrapper_refuses_any_other_invocation_in_one_line(pg17, db_client, argv, env, reason):
    result = subprocess.run([db_client["launcher"], *argv], capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ["PATH"], "PGPASSWORD": PASSWORD, **env})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"ERROR: infer-forge-db-client refuses: {reason}" + result.stderr.split(reason, 1)[1].rstrip("\n")]
    assert result.stderr.rstrip().endswith("; nothing was run")
    assert not _in_container(pg17, "/tmp/forge-pwned")


@pytest.fixture
def restore_owned(pg17, db_client):
    """A database the wrapper's restore role owns, as each one a restore or drill creates."""
    name = "owned_" + uuid.uuid4().hex[:8]
    pg17.execute(f'CREATE DATABASE "{name}" OWNER forge_restore')
    yield name
    pg17.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_stream_through_roots_psql_runs_sql_never_a_shell_in_the_container(pg17, restore_owned, db_client):
    """A plain dump's `\\!` (or one that tries its own \\restrict/\\unrestrict pair) fails the
    restore inside its transaction: no file appears in the container and nothing is committed."""
    stream = ("CREATE TABLE forge_planted (x int);\n"
              "\\restrict abc\n\\unrestrict abc\n"
              "\\! touch /tmp/forge-pwned\n")
    result = subprocess.run([db_client["launcher"], "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                             "--single-transaction", "-o", "/dev/null", "-f", "-"],
                            input=stream, capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ["PATH"], "PGPASSWORD": PASSWORD, "PGDATABASE": restore_owned})
    assert result.returncode != 0
    assert "restricted" in result.stderr, result.stderr
    assert not _in_container(pg17, "/tmp/forge-pwned")
    assert pg17.execute("SELECT to_regclass('forge_planted') IS NULL", database=restore_owned) == [(True,)]


def test_roots_client_wrapper_refuses_settings_anyone_else_could_write(pg17, db_client, tmp_path):
    os.chmod(db_client["config"], 0o666)  # noqa: S103 - the loose file under test
    try:
        result = subprocess.run([db_client["launcher"], "pg_dump", "--version"], capture_output=True, text=True,
                                timeout=60, env={"PATH": os.environ["PATH"]})
    finally:
        os.chmod(db_client["config"], 0o644)
    assert result.returncode == 2
    assert result.stderr.startswith(f"ERROR: config file {db_client['config']} is writable by others (mode 0666)")
    ok = subprocess.run([db_client["launcher"], "pg_dump", "--version"], capture_output=True, text=True, timeout=60,
                        env={"PATH": os.environ["PATH"]})
    assert ok.returncode == 0 and "pg_dump (PostgreSQL) 17." in ok.stdout


def _wrapper_psql(db_client, database, stream):
    return subprocess.run([db_client["launcher"], "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                           "-o", "/dev/null", "-f", "-"], input=stream, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "PGDATABASE": database, "PGUSER": "infer"})


def test_sql_through_roots_wrapper_runs_no_program_and_the_callers_pguser_counts_for_nothing(pg17, restore_owned,
                                                                                             db_client):
    """The review's finding: the wrapper's role was the superuser, so a dump's SQL alone
    (COPY ... TO PROGRAM) ran a shell in the container. It connects as root's restore role, whatever
    PGUSER the caller sets, and that role may run no program: the restore stops, nothing stays."""
    result = _wrapper_psql(db_client, restore_owned, "CREATE TABLE forge_out (x int);\n"
                                                    "COPY forge_out TO PROGRAM 'touch /tmp/forge-pwned';\n")
    assert result.returncode != 0
    assert "permission denied to COPY to or from an external program" in result.stderr, result.stderr
    assert not _in_container(pg17, "/tmp/forge-pwned")
    assert pg17.execute("SELECT to_regclass('forge_out') IS NULL", database=restore_owned) == [(True,)]
    # The caller's PGUSER=infer (the superuser) counted for nothing: the table it made is the restore role's.
    made = _wrapper_psql(db_client, restore_owned, "CREATE TABLE forge_owned (x int);\n")
    assert made.returncode == 0, made.stderr
    assert pg17.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'forge_owned'",
                        database=restore_owned) == [("forge_restore",)]


def test_roots_wrapper_refuses_a_superuser_role_even_in_roots_own_settings(pg17, orders17, db_client):
    original = open(db_client["config"]).read()
    with open(db_client["config"], "w") as handle:
        handle.write(original.replace("DB_CLIENT_RESTORE_ROLE=forge_restore", "DB_CLIENT_RESTORE_ROLE=infer"))
    try:
        result = _wrapper_psql(db_client, orders17, "SELECT 1;\n")
    finally:
        with open(db_client["config"], "w") as handle:
            handle.write(original)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "ERROR: infer-forge-db-client refuses: role 'infer' is a superuser or may run programs or touch the "
        "server's files; the wrapper runs clients only as a role that can do neither (the backup role makes "
        "them); nothing was run")


def test_a_custom_dump_of_pg_dump_17_is_lz4_inside_which_its_pg_restore_reads(pg17, orders17, custom_backup17):
    """pg_dump's own zlib at level 6 made a custom-format backup take 2.9 times as long as the dump:
    from pg_dump 16 on the archive is lz4 inside, named in the signed manifest, and the drill above
    restores it through the container's pg_restore."""
    backup_dir, backup = custom_backup17
    path = os.path.join(backup_dir, backup)
    assert manifest_of(path)["archive_compression"] == "lz4"
    with open(path, "rb") as handle:
        listed = subprocess.run(["docker", "exec", "-i", pg17.name, "pg_restore", "--list"], stdin=handle,
                                capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^;\s+Compression: lz4$", listed.stdout, re.M), listed.stdout[:800]
