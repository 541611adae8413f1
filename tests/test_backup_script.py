"""scripts/backup_db.sh against a real PostgreSQL: the runbook's interface and our guarantees."""

import gzip
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
import zlib

import pytest

from forge import opensslenc

from helpers import (
    BACKUP_SCRIPT,
    REPO,
    SentryStub,
    StalledDump,
    TableLock,
    all_cmdlines,
    backups_in,
    descendants,
    directory_contents,
    manifest_of,
    open_files,
    partials_in,
    process_facts,
    process_named,
    psql_pipe,
    run_backup_script,
    signing_passphrase_file,
    take_backup,
    textfile_value,
    wait_until,
)
from servers import PostgresServer, load_sample_data, table_counts


def _restore_target(pg, name):
    pg.create_database(name)
    return name


def test_output_lines_and_exit_code_match_the_runbook(pg, sample_db, backup_dir):
    result = run_backup_script(pg, sample_db, backup_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(rf"Starting backup: {re.escape(backup_dir)}/{sample_db}_\d{{8}}_\d{{6}}\.sql\.gz", lines[0])
    assert re.fullmatch(r"Backup complete: \d+(\.\d)?[KMG]?", lines[1])
    assert lines[2] == "Removing backups older than 30 days..."
    assert lines[3] == "Done. Remaining backups:"
    assert re.fullmatch(rf"  {sample_db}_\d{{8}}_\d{{6}}\.sql\.gz \(\d+(\.\d)?[KMG]?\)", lines[4])


def test_plain_backup_restores_with_the_runbooks_gunzip_psql(pg, sample_db, backup_dir):
    assert run_backup_script(pg, sample_db, backup_dir).returncode == 0
    [path] = backups_in(backup_dir)
    target = _restore_target(pg, sample_db + "_restore")
    restored = psql_pipe(pg, target, f"gunzip < {path}")
    assert restored.returncode == 0, restored.stderr
    assert table_counts(pg, target) == manifest_of(path)["snapshot_row_counts"] == table_counts(pg, sample_db)
    pg.drop_database(target)


def test_encrypted_backup_restores_with_the_runbooks_openssl_command(pg, sample_db, backup_dir, passphrase_file):
    result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_PASSPHRASE_FILE": passphrase_file})
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    assert path.endswith(".sql.gz.enc")
    with open(path, "rb") as handle:
        assert handle.read(8) == b"Salted__"
    target = _restore_target(pg, sample_db + "_restore")
    restored = psql_pipe(pg, target,
                         f"openssl enc -aes-256-cbc -d -pbkdf2 -pass file:{passphrase_file} -in {path} | gunzip")
    assert restored.returncode == 0, restored.stderr
    assert table_counts(pg, target) == manifest_of(path)["snapshot_row_counts"]
    pg.drop_database(target)


def _openssl_decrypts(path, passphrase_file, *options):
    """The runbook's manual restore pipeline, up to gunzip: its exit status and the SQL it printed."""
    command = (f"set -o pipefail; openssl enc -d -aes-256-cbc -pbkdf2 {' '.join(options)} "
               f"-pass file:{passphrase_file} -in {path} | gunzip")
    result = subprocess.run(["bash", "-c", command], capture_output=True, timeout=120)
    return result.returncode, result.stdout, result.stderr.decode("utf-8", "replace")


def test_kdf_iterations_are_configurable_recorded_and_what_openssl_needs(pg, sample_db, backup_dir,
                                                                        passphrase_file):
    result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_PASSPHRASE_FILE": passphrase_file,
                                                          "BACKUP_KDF_ITER": "200000"})
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    assert manifest_of(path)["encryption"]["kdf_iterations"] == 200000
    status, sql, error = _openssl_decrypts(path, passphrase_file, "-iter", "200000")
    assert status == 0, error
    assert b"-- PostgreSQL database dump complete" in sql
    # openssl's default count derives another key: bad decrypt, or noise that is not gzip.
    status, sql, error = _openssl_decrypts(path, passphrase_file)
    assert status != 0 and b"-- PostgreSQL database dump complete" not in sql
    assert "bad decrypt" in error or "not in gzip format" in error, error


def test_the_default_kdf_iterations_are_openssls_own(pg, sample_db, backup_dir, passphrase_file):
    result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_PASSPHRASE_FILE": passphrase_file})
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    assert manifest_of(path)["encryption"]["kdf_iterations"] == 10000
    status, sql, error = _openssl_decrypts(path, passphrase_file)
    assert status == 0 and b"-- PostgreSQL database dump complete" in sql, error


def test_the_manifest_is_signed_and_never_holds_the_passphrase(pg, sample_db, backup_dir, passphrase_file):
    result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_PASSPHRASE_FILE": passphrase_file})
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    passphrase = open(passphrase_file, "rb").read().strip()
    assert passphrase == b"correct horse battery staple"
    key = hashlib.pbkdf2_hmac("sha256", passphrase, b"infer-forge manifest signing key v2", 100000, 32)
    # Neither the passphrase, nor a word of it, nor the key derived from it, in anything the run wrote.
    written = {"manifest": open(path + ".manifest.json", "rb").read(),
               "checksum file": open(path + ".sha256", "rb").read(),
               "log": (result.stdout + result.stderr).encode()}
    for what, data in written.items():
        for secret in [passphrase, key.hex().encode(), *passphrase.split()]:
            assert secret not in data, f"{secret!r} is in the {what}"
    manifest = json.loads(written["manifest"])
    assert manifest["manifest_version"] == 2 and manifest["database"] == sample_db
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == manifest["sha256"]
    # The signature, recomputed from the documented format (not the engine's code).
    body = {k: v for k, v in manifest.items() if k != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert manifest["signature"]["value"] == hmac.new(key, b"infer-forge manifest v2\n" + canonical,
                                                      hashlib.sha256).hexdigest()
    body["rows"] += 1
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert manifest["signature"]["value"] != hmac.new(key, b"infer-forge manifest v2\n" + canonical,
                                                      hashlib.sha256).hexdigest()


def test_our_decryptor_reads_files_made_by_the_runbooks_openssl_pipeline(pg, sample_db, passphrase_file, tmp_path):
    made = tmp_path / "backup_encrypted.sql.gz.enc"
    env = dict(os.environ, PGPASSWORD=pg.app_password)
    subprocess.run(["bash", "-c", f"set -o pipefail; pg_dump -h {pg.host} -p {pg.port} -U {pg.app_user} "
                    f"-d {sample_db} --no-owner --no-privileges | gzip | openssl enc -aes-256-cbc -salt -pbkdf2 "
                    f"-pass file:{passphrase_file} -out {made}"], env=env, check=True)
    decryptor = opensslenc.Decryptor(opensslenc.read_passphrase(passphrase_file))
    plain = b""
    with open(made, "rb") as handle:
        for chunk in iter(lambda: handle.read(7777), b""):
            plain += decryptor.update(chunk)
    plain += decryptor.finalize()
    assert b"-- PostgreSQL database dump complete" in gzip.decompress(plain)


def test_sha256_file_passes_sha256sum_check(pg, sample_db, backup_dir):
    assert run_backup_script(pg, sample_db, backup_dir).returncode == 0
    [path] = backups_in(backup_dir)
    check = subprocess.run(["sha256sum", "-c", os.path.basename(path) + ".sha256"], cwd=backup_dir,
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip().endswith(": OK")


def test_files_are_0600_in_a_0700_directory_whatever_the_umask(pg, sample_db, tmp_path):
    directory = str(tmp_path / "loose")
    os.mkdir(directory)
    os.chmod(directory, 0o777)
    old = os.umask(0)
    try:
        assert run_backup_script(pg, sample_db, directory).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    names = [n for n in os.listdir(directory) if not n.startswith(".")]
    assert len(names) == 3  # backup, manifest, checksum
    for name in names:
        assert stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode) == 0o600, name


def test_row_counts_come_from_the_dump_snapshot_while_writes_continue(pg, sample_db, backup_dir):
    stop = threading.Event()

    def writer():
        with pg.connect(sample_db, superuser=False) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1)")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        assert run_backup_script(pg, sample_db, backup_dir).returncode == 0
    finally:
        stop.set()
        thread.join()
    [path] = backups_in(backup_dir)
    manifest = manifest_of(path)
    target = _restore_target(pg, sample_db + "_restore")
    assert psql_pipe(pg, target, f"gunzip < {path}").returncode == 0
    restored = table_counts(pg, target)
    assert restored == manifest["snapshot_row_counts"]
    # The writer kept going after the snapshot: the live table has moved on.
    assert table_counts(pg, sample_db)["public.orders"] > manifest["snapshot_row_counts"]["public.orders"]
    pg.drop_database(target)


@pytest.mark.parametrize("fmt, compression, suffix", [
    ("custom", "gzip", ".dump"),
    ("plain", "zstd", ".sql.zst"),
])
def test_other_formats_round_trip(pg, sample_db, backup_dir, fmt, compression, suffix):
    result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_FORMAT": fmt, "BACKUP_COMPRESSION": compression})
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    assert path.endswith(suffix)
    target = _restore_target(pg, sample_db + "_restore")
    if fmt == "custom":
        env = dict(os.environ, PGPASSWORD=pg.app_password)
        subprocess.run(["pg_restore", "-h", pg.host, "-p", str(pg.port), "-U", pg.app_user, "-d", target,
                        "--no-owner", "--exit-on-error", "--jobs=2", path], env=env, check=True)
    else:
        assert psql_pipe(pg, target, f"zstd -dc {path}").returncode == 0
    assert table_counts(pg, target) == manifest_of(path)["snapshot_row_counts"]
    pg.drop_database(target)


@pytest.mark.parametrize("level, named, header", [(None, "gzip:1", "1"), ("0", "none", "0"), ("4", "gzip:4", "4")])
def test_a_custom_dump_of_an_older_pg_dump_is_zlib_at_the_level_asked_or_its_fastest_and_says_so(
        pg, sample_db, backup_dir, level, named, header):
    """Before pg_dump 16 the archive can only be zlib inside: at level 1, not pg_dump's default 6,
    which ran in pg_dump's one thread at a third of the dump's speed; the manifest names it, and
    pg_restore of that major reads it (the round trip above)."""
    settings = {"BACKUP_FORMAT": "custom", **({"BACKUP_COMPRESSION_LEVEL": level} if level else {})}
    result = run_backup_script(pg, sample_db, backup_dir, settings)
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    manifest = manifest_of(path)
    assert manifest["pg_dump_major_version"] < 16, "this host's pg_dump is Debian 12's 15"
    assert manifest["archive_compression"] == named
    listed = subprocess.run(["pg_restore", "--list", path], capture_output=True, text=True, check=True)
    assert re.search(rf"^;\s+Compression: {header}$", listed.stdout, re.M), listed.stdout[:800]
    plain = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_FORMAT": "plain"})
    assert plain.returncode == 0, plain.stderr
    assert "archive_compression" not in manifest_of(max(backups_in(backup_dir), key=os.path.getmtime))


def test_a_compression_the_dump_options_set_is_the_one_the_manifest_names():
    """pg_dump takes the last --compress on its command line, and forge_backup's dump_options come
    after ours: the manifest names theirs, never one the archive was not written with."""
    from forge.backup import archive_compression

    assert archive_compression(17) == ("lz4", "lz4")
    assert archive_compression(17, 9) == ("9", "gzip:9")  # an explicit level keeps its zlib meaning
    assert archive_compression(17, None, ["--no-owner", "-Z", "5"])[1] == "as the dump options set it: -Z 5"
    assert archive_compression(15, None, ["--compress=0"])[1] == "as the dump options set it: --compress=0"


@pytest.fixture
def digests_db(pg, fresh_db):
    """About 7 MB of md5 text (compresses about 2:1): a plain dump of several 1 MiB gzip members."""
    with pg.connect(fresh_db, superuser=False) as conn:
        conn.execute("CREATE TABLE digests (id int PRIMARY KEY, payload text NOT NULL)")
        conn.execute("INSERT INTO digests SELECT g, md5(g::text) || md5((-g)::text) FROM generate_series(1, 100000) g")
    return fresh_db


def _gzip_members(data):
    """The decompressed members of a gzip file, in file order."""
    members = []
    while data:
        inflater = zlib.decompressobj(31)
        members.append(inflater.decompress(data))
        assert inflater.eof, f"the file ends inside gzip member {len(members)}"
        data = inflater.unused_data
    return members


def _digests_fingerprint(pg, database):
    [row] = pg.execute("SELECT count(*), md5(string_agg(id || ':' || payload, ',' ORDER BY id)) FROM digests",
                       database)
    return row


@pytest.mark.parametrize("tool, level, least_members", [("zlib", 4, 3), ("igzip", 2, 1)])
def test_a_gzip_backup_restores_with_the_runbooks_gunzip_psql(pg, digests_db, backup_dir, tool, level, least_members):
    """zlib writes one member per chunk on every core; igzip (ISA-L) writes its own members.
    gunzip reads both as one stream, and the manifest says which tool wrote the file."""
    result = run_backup_script(pg, digests_db, backup_dir, {"BACKUP_GZIP_TOOL": tool})
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    assert manifest_of(path)["compression"] == {"algorithm": "gzip", "level": level, "tool": tool}
    members = _gzip_members(open(path, "rb").read())
    # Written in the dump's order: its header first, its completion marker last.
    assert len(members) >= least_members, len(members)
    assert members[0].startswith(b"--\n-- PostgreSQL database dump\n")
    assert b"-- PostgreSQL database dump complete" in members[-1]
    target = _restore_target(pg, digests_db + "_restore")
    restored = psql_pipe(pg, target, f"gunzip < {path}")
    assert restored.returncode == 0, restored.stderr
    assert _digests_fingerprint(pg, target) == _digests_fingerprint(pg, digests_db)
    assert _digests_fingerprint(pg, target)[0] == 100000
    pg.drop_database(target)


def test_database_name_with_quotes_and_spaces(pg, backup_dir):
    name = "Infer's \"forge\" db"
    pg.create_database(name)
    try:
        with pg.connect(name, superuser=False) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t SELECT generate_series(1, 10)")
        result = run_backup_script(pg, name, backup_dir)
        assert result.returncode == 0, result.stderr
        [path] = backups_in(backup_dir)
        # Not a name the file system takes as it is: sanitised, plus a hash of the exact name.
        assert os.path.basename(path).startswith("Infer_s__forge__db-")
        manifest = manifest_of(path)
        assert manifest["database"] == name
        assert manifest["snapshot_row_counts"] == {"public.t": 10}
    finally:
        pg.drop_database(name)


# -- failures: clear one-line error, exit != 0, nothing lost ------------------------------------------

def _assert_failed_cleanly(result, backup_dir, message_regex, keep=()):
    """One ERROR line matching ``message_regex``, a failure status, and the directory as it was:
    ``keep`` names what may be there, or (from _good_backup) holds what it must hold, byte for byte."""
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR: ")]
    assert len(error_lines) == 1, result.stderr
    assert re.search(message_regex, error_lines[0]), error_lines[0]
    if os.path.isdir(backup_dir):
        left = directory_contents(backup_dir)
        assert sorted(left) == sorted(keep), sorted(left)
        if isinstance(keep, dict):
            changed = [name for name in keep if left[name] != keep[name]]
            assert not changed, f"the failed run changed {changed}"


def _good_backup(pg, database, backup_dir, **settings):
    """One complete backup, and the directory's files with their bytes: what a failed run must leave."""
    take_backup(pg, database, backup_dir, **settings)
    contents = directory_contents(backup_dir)
    assert len(contents) == 3, sorted(contents)  # backup, manifest, checksum file
    return contents


def test_unreachable_server(pg, sample_db, backup_dir):
    from servers import free_port

    keep = _good_backup(pg, sample_db, backup_dir)
    result = run_backup_script(pg, sample_db, backup_dir, {"POSTGRES_PORT": str(free_port())})
    _assert_failed_cleanly(result, backup_dir, r"connection refused at 127\.0\.0\.1:\d+", keep=keep)


def test_wrong_password_is_reported_without_revealing_it(pg, sample_db, backup_dir):
    keep = _good_backup(pg, sample_db, backup_dir)
    result = run_backup_script(pg, sample_db, backup_dir, {"POSTGRES_PASSWORD": "not-the-password-xyz"})
    _assert_failed_cleanly(result, backup_dir, r"password authentication failed for user 'infer'", keep=keep)
    assert "not-the-password-xyz" not in result.stderr + result.stdout


def test_missing_database(pg, backup_dir):
    result = run_backup_script(pg, "no_such_db", backup_dir)
    _assert_failed_cleanly(result, backup_dir, r"database 'no_such_db' does not exist")


def test_pg_dump_killed_mid_dump_leaves_no_backup(pg, sample_db, backup_dir):
    keep = _good_backup(pg, sample_db, backup_dir)
    lock = TableLock(pg, sample_db, "orders")
    try:
        proc = run_backup_script(pg, sample_db, backup_dir, wait=False)
        dump_pid = process_named("pg_dump", proc.pid)
        os.kill(dump_pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        lock.release()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    _assert_failed_cleanly(result, backup_dir, r"pg_dump was killed by signal 9", keep=keep)
    assert "Backup complete" not in stdout


def test_truncated_dump_without_completion_marker_fails(pg, sample_db, backup_dir, tmp_path):
    keep = _good_backup(pg, sample_db, backup_dir)
    # A dump command whose output is cut short but which exits 0, as `pg_dump | head` would.
    wrapper = tmp_path / "truncating_pg_dump"
    wrapper.write_text('#!/bin/sh\n[ "$1" = --version ] && exec pg_dump --version\npg_dump "$@" | head -c 20000\n')
    wrapper.chmod(0o755)
    result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_DUMP_COMMAND": str(wrapper)})
    _assert_failed_cleanly(result, backup_dir, r"without PostgreSQL's 'dump complete' marker", keep=keep)


def test_a_complete_dump_from_a_pg_dump_that_exits_1_is_not_kept(pg, sample_db, backup_dir, tmp_path):
    keep = _good_backup(pg, sample_db, backup_dir)
    # pg_dump's whole output, completion marker included, then a failure status (as when closing
    # the output fails): only the exit status tells this dump from a good one.
    wrapper = tmp_path / "failing_pg_dump"
    wrapper.write_text('#!/bin/sh\n[ "$1" = --version ] && exec pg_dump --version\npg_dump "$@" || exit 2\n'
                       'echo "pg_dump: error: could not close output file" >&2\nexit 1\n')
    wrapper.chmod(0o755)
    result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_DUMP_COMMAND": str(wrapper)})
    _assert_failed_cleanly(result, backup_dir, r"pg_dump failed \(exit 1\): pg_dump: error: could not close output",
                           keep=keep)
    assert "Backup complete" not in result.stdout


def test_row_values_in_pg_dumps_detail_lines_reach_neither_the_message_nor_sentry(pg, sample_db, backup_dir,
                                                                                    tmp_path):
    """pg_dump's DETAIL/HINT/CONTEXT lines can quote a row; the error line's quoted value is hidden."""
    wrapper = tmp_path / "quoting_pg_dump"
    wrapper.write_text('#!/bin/sh\n[ "$1" = --version ] && exec pg_dump --version\n'
                       'echo \'pg_dump: error: query failed: ERROR:  invalid input syntax for type integer: '
                       '"row-canary-1"\' >&2\n'
                       'echo "pg_dump: detail: Key (email)=(row-canary-2@example.cz) already exists." >&2\n'
                       'echo "pg_dump: hint: row-canary-3" >&2\nexit 1\n')
    wrapper.chmod(0o755)
    stub = SentryStub()
    try:
        result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_DUMP_COMMAND": str(wrapper),
                                                               "SENTRY_DSN": stub.dsn()})
    finally:
        stub.close()
    assert result.returncode == 1
    [event] = stub.events()
    assert result.stderr == ('ERROR: pg_dump failed (exit 1): pg_dump: error: query failed: ERROR: invalid input '
                             'syntax for type integer: "(value hidden)"\n')
    for text in (result.stdout + result.stderr, json.dumps(event)):
        assert "row-canary" not in text


def test_server_stopped_mid_dump(backup_dir):
    server = PostgresServer().init().start().setup_app()
    try:
        server.create_database("victim")
        load_sample_data(server, "victim")
        keep = _good_backup(server, "victim", backup_dir)
        lock = TableLock(server, "victim", "orders")
        proc = run_backup_script(server, "victim", backup_dir, wait=False)
        process_named("pg_dump", proc.pid)
        time.sleep(0.3)
        server.stop("immediate")
        stdout, stderr = proc.communicate(timeout=60)
        lock.conn.close()
        result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        _assert_failed_cleanly(result, backup_dir, r"pg_dump failed \(exit 1\)|counting rows|connection", keep=keep)
    finally:
        server.destroy()


@pytest.fixture
def tiny_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)], check=True)
    yield str(mount_point)
    subprocess.run(["umount", str(mount_point)], check=True)


def _grow_blobs(pg, database):
    """About 6 MB of poorly compressible text: more than the 1 MB tmpfs can hold."""
    with pg.connect(database, superuser=False) as conn:
        conn.execute("INSERT INTO blobs SELECT g, string_agg(md5(random()::text), '') "
                     "FROM generate_series(1, 3000) g, generate_series(1, 60) h GROUP BY g")


@pytest.fixture
def blobs_db(pg, fresh_db):
    """One small table, its backup a few hundred bytes; _grow_blobs makes it too big for tiny_fs."""
    with pg.connect(fresh_db, superuser=False) as conn:
        conn.execute("CREATE TABLE blobs (id int, payload text)")
        conn.execute("INSERT INTO blobs VALUES (0, 'small so far')")
    return fresh_db


def test_disk_full_during_the_dump(pg, blobs_db, tiny_fs):
    # The free-space check (with its 16 MiB margin) would refuse any run on 1 MiB: off, for both.
    keep = _good_backup(pg, blobs_db, tiny_fs, backup_space_check=0)
    _grow_blobs(pg, blobs_db)
    result = run_backup_script(pg, blobs_db, tiny_fs, {"BACKUP_SPACE_CHECK": "0"})
    _assert_failed_cleanly(result, tiny_fs, r"disk full while writing", keep=keep)


def test_free_space_is_checked_before_dumping(pg, blobs_db, tiny_fs):
    _grow_blobs(pg, blobs_db)
    result = run_backup_script(pg, blobs_db, tiny_fs)
    _assert_failed_cleanly(result, tiny_fs,
                           r"not enough free space in .*free, about .* needed \(estimated from the database size\)")


def test_free_space_is_estimated_from_the_last_backup_and_a_refused_run_keeps_it(pg, blobs_db, tiny_fs):
    keep = _good_backup(pg, blobs_db, tiny_fs, backup_space_check=0)
    _grow_blobs(pg, blobs_db)
    result = run_backup_script(pg, blobs_db, tiny_fs)
    _assert_failed_cleanly(result, tiny_fs,
                           r"not enough free space in .*free, about .* needed \(estimated from the last backup\)",
                           keep=keep)


def test_unwritable_directory(pg, sample_db, shared_tmp):
    if os.geteuid() != 0:
        pytest.skip("needs root to run the script as another user")
    directory = os.path.join(shared_tmp, "backups")
    os.mkdir(directory, 0o700)
    result = run_backup_script(pg, sample_db, directory, user="nobody")
    _assert_failed_cleanly(result, directory, r"backup directory .* is not writable by this user")


@pytest.mark.parametrize("content, message", [
    (None, r"passphrase file .* does not exist"),
    ("", r"passphrase file .* is empty"),
])
def test_missing_or_empty_passphrase_file(pg, sample_db, backup_dir, tmp_path, content, message):
    path = tmp_path / "pass"
    if content is not None:
        path.write_text(content)
        path.chmod(0o600)
    result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_PASSPHRASE_FILE": str(path)})
    _assert_failed_cleanly(result, backup_dir, message)


@pytest.mark.parametrize("variable, value, message", [
    ("RETENTION_DAYS", "thirty", r"RETENTION_DAYS must be a whole number, got 'thirty'"),
    ("RETENTION_DAYS", "0", r"retention_days must be a whole number >= 1, got 0"),
    ("BACKUP_MIN_KEEP", "-1", r"min_keep must be a whole number >= 0"),
    ("BACKUP_FORMAT", "tar", r"format must be one of plain, custom"),
    ("BACKUP_KDF_ITER", "999", r"BACKUP_KDF_ITER must be a whole number from 1000 to 10000000, got '999'"),
    ("BACKUP_KDF_ITER", "many", r"BACKUP_KDF_ITER must be a whole number from 1000 to 10000000, got 'many'"),
])
def test_invalid_settings(pg, sample_db, backup_dir, variable, value, message):
    result = run_backup_script(pg, sample_db, backup_dir, {variable: value})
    _assert_failed_cleanly(result, backup_dir, message)


def test_backup_dir_that_is_a_symlink_is_refused(pg, sample_db, tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    link = tmp_path / "backups"
    link.symlink_to(real)
    result = run_backup_script(pg, sample_db, str(link))
    _assert_failed_cleanly(result, str(real), r"is a symlink to .*elsewhere; point it at the real directory")


def test_client_older_than_server_is_refused(pg, sample_db, backup_dir, tmp_path):
    # Debian 12 ships only PostgreSQL 15, so a genuinely older client cannot run here;
    # this stand-in reports version 14 and otherwise is never called.
    old = tmp_path / "pg_dump14"
    old.write_text('#!/bin/sh\necho "pg_dump (PostgreSQL) 14.11"\n')
    old.chmod(0o755)
    keep = _good_backup(pg, sample_db, backup_dir)
    result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_DUMP_COMMAND": str(old)})
    _assert_failed_cleanly(result, backup_dir, r"pg_dump 14 of '.*pg_dump14' cannot dump a PostgreSQL 15 server; set "
                           r"BACKUP_DUMP_COMMAND", keep=keep)


# -- lock, partials, secrets, metrics, Sentry ---------------------------------------------------------

def _stop(procs, dumps):
    """Clean-up of a test that failed half way: no run or stalled dump outlives it."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    for dump in dumps:
        dump.release(timeout=2)


def test_a_second_backup_of_the_same_database_fails_in_one_line_and_the_first_completes(
        pg, sample_db, backup_dir, tmp_path):
    dump = StalledDump(str(tmp_path / "first"))
    first = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_DUMP_COMMAND": dump.command}, wait=False)
    try:
        dump.wait_until_stalled(first)
        during = directory_contents(backup_dir)
        [partial] = partials_in(backup_dir)
        assert partial.endswith(f".partial-{first.pid}")
        second = run_backup_script(pg, sample_db, backup_dir)
        assert second.returncode == 75, second.stderr
        [line] = second.stderr.splitlines()
        assert re.fullmatch(rf"ERROR: another backup of {sample_db} is already running \(pid {first.pid}, lock .*\)",
                            line), line
        # The running backup's partial is not a crashed run's leftover: the refused run left it alone.
        assert directory_contents(backup_dir) == during
        dump.release()
        stdout, stderr = first.communicate(timeout=120)
    finally:
        _stop([first], [dump])
    assert first.returncode == 0, stderr
    [made] = backups_in(backup_dir)
    assert manifest_of(made)["rows"] == sum(table_counts(pg, sample_db).values())
    assert partials_in(backup_dir) == []


def test_with_lock_wait_a_second_backup_starts_its_dump_only_after_the_first_is_complete(
        pg, sample_db, backup_dir, tmp_path):
    first_dump = StalledDump(str(tmp_path / "first"))
    second_dump = StalledDump(str(tmp_path / "second"))
    first = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_DUMP_COMMAND": first_dump.command}, wait=False)
    second = None
    try:
        first_dump.wait_until_stalled(first)
        [first_partial] = partials_in(backup_dir)
        second = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_DUMP_COMMAND": second_dump.command,
                                                               "BACKUP_LOCK_WAIT": "120"}, wait=False)

        def waiting_or_dumping():
            at_the_lock = any(path.startswith(backup_dir + "/") and path.endswith(".lock")
                              for path in open_files(second.pid))
            return at_the_lock or second_dump.stalled() or second.poll() is not None

        wait_until(waiting_or_dumping, "the second run to reach the lock")
        assert second.poll() is None, second.communicate()
        assert not second_dump.stalled(), "the second backup began dumping while the first one was dumping"
        assert partials_in(backup_dir) == [first_partial]

        first_dump.release()
        first_out, first_err = first.communicate(timeout=120)
        assert first.returncode == 0, first_err
        [first_backup] = backups_in(backup_dir)
        first_files = directory_contents(backup_dir)

        second_dump.wait_until_stalled(second)
        # The second run dumps now, and only now: the first's backup was complete before it began.
        [second_partial] = partials_in(backup_dir)
        assert second_partial.endswith(f".partial-{second.pid}")
        assert {name: data for name, data in directory_contents(backup_dir).items() if name != second_partial} \
            == first_files
        second_dump.release()
        second_out, second_err = second.communicate(timeout=120)
    finally:
        _stop([first, second], [first_dump, second_dump])
    assert second.returncode == 0, second_err
    # The second says it waits, and for whom; then each starts its own file.
    assert f"Waiting up to 120 s for another backup of {sample_db} to finish (pid {first.pid}, lock " in second_out
    starts = [[line for line in out.splitlines() if line.startswith("Starting backup: ")]
              for out in (first_out, second_out)]
    assert len(starts[0]) == len(starts[1]) == 1 and starts[0] != starts[1]
    [older, newer] = backups_in(backup_dir)
    assert older == first_backup
    final = directory_contents(backup_dir)
    assert {name: final[name] for name in first_files} == first_files
    assert manifest_of(newer)["rows"] == manifest_of(older)["rows"] == sum(table_counts(pg, sample_db).values())
    assert partials_in(backup_dir) == []


def test_stale_partial_files_from_a_crashed_run_are_removed(pg, sample_db, backup_dir):
    os.makedirs(backup_dir, mode=0o700)
    stale = os.path.join(backup_dir, f".{sample_db}_20200101_020000.sql.gz.partial-99999")
    with open(stale, "wb") as handle:
        handle.write(b"\x1f\x8b half a dump")
    assert run_backup_script(pg, sample_db, backup_dir).returncode == 0
    assert not os.path.exists(stale)


def _real_pg_dumps(engine_pid, tree=None):
    """(comm, argv, environ) of each real pg_dump binary dumping under the engine (Debian's
    /usr/bin/pg_dump is a script that execs it): by executable, not by name."""
    if tree is None:
        tree = {pid: process_facts(pid) for pid in descendants(engine_pid)}
    return [(comm, argv, environ) for comm, argv, environ, executable in filter(None, tree.values())
            if os.path.basename(executable) == "pg_dump" and any(arg.startswith(b"--snapshot=") for arg in argv)]


def test_secrets_never_appear_in_the_process_list(pg, sample_db, backup_dir, passphrase_file, tmp_path):
    # The dump holds its output until every process of the run has been read: the real pg_dump
    # is then past its exec, connected, and alive throughout (blocked on its full pipe).
    dump = StalledDump(str(tmp_path / "dump"))
    proc = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_PASSPHRASE_FILE": passphrase_file,
                                                          "BACKUP_DUMP_COMMAND": dump.command}, wait=False)
    try:
        dump.wait_until_stalled(proc)
        tree = {pid: process_facts(pid) for pid in [proc.pid] + descendants(proc.pid)}
        cmdlines = all_cmdlines()
        dump.release()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        _stop([proc], [dump])
    assert proc.returncode == 0, stderr
    assert None not in tree.values(), tree  # every process of the run was read while it ran
    assert not any(pg.app_password in line for line in cmdlines)
    assert not any("correct horse" in line for line in cmdlines)
    for comm, argv, environ, _executable in tree.values():
        assert not any(b"correct horse" in item for item in argv + environ), comm
        assert not any(item.startswith(b"PGPASSWORD=") for item in environ), comm
    [dump_env] = [environ for _comm, _argv, environ in _real_pg_dumps(proc.pid, tree)]
    assert [item for item in dump_env if item.startswith(b"PGPASSFILE=")] != []
    assert all(item.startswith(b"PGPASSFILE=/dev/fd/") for item in dump_env if item.startswith(b"PGPASSFILE="))
    # The runbook's POSTGRES_PASSWORD reaches the engine; pg_dump gets the password only as that file.
    assert not [item.split(b"=")[0] for item in dump_env if pg.app_password.encode() in item]


def test_no_secret_file_survives_a_killed_run(pg, sample_db, backup_dir, tmp_path):
    """The password reaches pg_dump as a 0600 file in memory (/dev/fd/N), never in /tmp."""
    import glob
    import tempfile

    def leftovers():
        return glob.glob(os.path.join(tempfile.gettempdir(), "infer-forge-*"))

    before = leftovers()
    dump = StalledDump(str(tmp_path / "dump"))
    proc = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_DUMP_COMMAND": dump.command}, wait=False)
    try:
        dump.wait_until_stalled(proc)
        [dump_env] = [environ for _comm, _argv, environ in _real_pg_dumps(proc.pid)]
        passfile = next(item for item in dump_env if item.startswith(b"PGPASSFILE="))
        assert passfile.startswith(b"PGPASSFILE=/dev/fd/")
        os.kill(proc.pid, signal.SIGKILL)  # the scripts exec the engine: this is the engine itself
        proc.communicate(timeout=60)
    finally:
        _stop([proc], [dump])
    assert proc.returncode == -signal.SIGKILL
    assert leftovers() == before
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "*")):
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as handle:
                assert pg.app_password.encode() not in handle.read(), path


def test_metrics_after_success_and_after_failure(pg, sample_db, backup_dir, tmp_path):
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    extra = {"BACKUP_TEXTFILE_DIR": str(textfile_dir)}
    assert run_backup_script(pg, sample_db, backup_dir, extra).returncode == 0
    prom = textfile_dir / f"infer_forge_backup_{sample_db}.prom"
    text = prom.read_text()
    assert f'infer_forge_backup_last_run_success{{database="{sample_db}"}} 1' in text
    size = os.path.getsize(backups_in(backup_dir)[0])
    assert f'infer_forge_backup_size_bytes{{database="{sample_db}"}} {size}' in text
    assert f'infer_forge_backup_retained_backups{{database="{sample_db}"}} 1' in text
    # promtool is part of the test kit (scripts/bootstrap.sh installs it): missing, the lint fails, never passes.
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/bootstrap.sh installs it (Debian package prometheus)"
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    success_ts = re.search(r"last_success_timestamp_seconds\{[^}]*\} (\d+)", text).group(1)

    extra["POSTGRES_PASSWORD"] = "wrong"
    assert run_backup_script(pg, sample_db, backup_dir, extra).returncode != 0
    text = prom.read_text()
    assert f'infer_forge_backup_last_run_success{{database="{sample_db}"}} 0' in text
    # The last success is still the earlier backup: an alert on its age keeps working.
    assert re.search(r"last_success_timestamp_seconds\{[^}]*\} (\d+)", text).group(1) == success_ts


def test_a_failed_backup_is_reported_to_sentry(pg, backup_dir):
    stub = SentryStub()
    try:
        result = run_backup_script(pg, "no_such_db", backup_dir,
                                   {"SENTRY_DSN": stub.dsn(), "ENVIRONMENT": "production"})
    finally:
        stub.close()
    assert result.returncode == 1
    [event] = stub.events()
    assert stub.received[0]["path"] == "/api/42/envelope/"
    assert "sentry_key=publickey" in stub.received[0]["auth"]
    assert event["tags"]["component"] == "backup"
    assert event["tags"]["database"] == "no_such_db"
    assert event["tags"]["host"]
    assert event["environment"] == "production"
    assert "does not exist" in event["message"]["formatted"]


def test_a_server_that_dies_with_the_dump_is_one_error_line_not_a_failed_cancel(backup_dir, tmp_path):
    """The dump fails because the server died; stopping the row count then cannot connect
    either. The dump's error is reported in one line, not the cancel's traceback."""
    server = PostgresServer().init().start().setup_app()
    try:
        server.create_database("victim")
        load_sample_data(server, "victim")
        keep = _good_backup(server, "victim", backup_dir)
        dies = tmp_path / "pg_dump_as_the_server_dies"
        dies.write_text(
            "#!/bin/sh\n"
            f'[ "$1" = --version ] && exec {shutil.which("pg_dump")} --version\n'
            f"kill -9 $(head -1 {server.data_dir}/postmaster.pid)\n"
            f"while pg_isready -q -h {server.host} -p {server.port}; do sleep 0.1; done\n"
            'echo "pg_dump: error: server closed the connection unexpectedly" >&2\n'
            "exit 1\n")
        dies.chmod(0o755)
        result = run_backup_script(server, "victim", backup_dir, extra={"BACKUP_DUMP_COMMAND": str(dies)})
        _assert_failed_cleanly(result, backup_dir, r"pg_dump failed \(exit 1\): .*server closed", keep=keep)
    finally:
        server.destroy()


@pytest.mark.parametrize("argv", [["--dry-run"], ["--check"], ["now"], ["--help-me"]])
def test_an_unknown_argument_is_refused_with_usage_and_nothing_is_done(pg, sample_db, backup_dir, argv):
    """`backup_db.sh --dry-run` once ran a real backup and retention: a backup past RETENTION_DAYS
    must still be there, and no new one written."""
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    old = os.path.join(backup_dir, f"{sample_db}_20200101_000000.sql.gz")
    with gzip.open(old, "wb") as handle:
        handle.write(b"-- an old backup\n")
    os.chmod(old, 0o600)
    os.utime(old, (1577836800, 1577836800))
    before = directory_contents(backup_dir)
    result = run_backup_script(pg, sample_db, backup_dir, args=argv)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("usage: backup_db.sh [--help]")
    last = result.stderr.rstrip().splitlines()[-1]
    assert last == f"backup_db.sh: error: unknown argument {argv[0]!r}; nothing was done"
    assert directory_contents(backup_dir) == before


@pytest.mark.parametrize("script", ["backup_db.sh", "offsite_copy.sh", "restore_db.sh"])
def test_every_scripts_help_exits_0_with_its_usage_and_needs_no_settings(script, tmp_path):
    env = {"PATH": os.environ["PATH"], "BACKUP_CONFIG": "", "BACKUP_DIR": str(tmp_path / "absent")}
    result = subprocess.run([os.path.join(REPO, "scripts", script), "--help"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ") and result.stderr == ""
    assert not os.path.exists(tmp_path / "absent")


def test_offsite_copy_refuses_an_unknown_argument_before_it_copies_anything(tmp_path):
    target = tmp_path / "usb"
    target.mkdir()
    env = {"PATH": os.environ["PATH"], "BACKUP_CONFIG": "", "BACKUP_DIR": str(tmp_path), "OFFSITE_TARGET": str(target)}
    result = subprocess.run([os.path.join(REPO, "scripts", "offsite_copy.sh"), "--chek"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("usage: offsite_copy.sh [--check] [--help]")
    assert os.listdir(target) == []


def test_the_sweep_of_stale_partials_never_touches_another_databases_running_backup(pg, sample_db, backup_dir):
    """A backup of `acc` once deleted the half-written file of a running `acc_src` backup: the sweep
    matched by name prefix. Only this database's own leftovers (its stem, then a timestamp) go."""
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    others = [f".{sample_db}_src_20261207_120000.sql.gz.partial-4242",
              f".{sample_db}_2_20261207_120000.sql.gz.manifest.json.x1.tmp"]
    own = f".{sample_db}_20261207_120000.sql.gz.partial-4242"
    for name in [*others, own]:
        with open(os.path.join(backup_dir, name), "wb") as handle:
            handle.write(b"half written")
    result = run_backup_script(pg, sample_db, backup_dir)
    assert result.returncode == 0, result.stderr
    assert sorted(name for name in os.listdir(backup_dir) if name.startswith(".") and ".lock" not in name) == \
        sorted(others)


@pytest.mark.parametrize("planted", ["link", "fifo", "directory"])
def test_a_lock_path_that_is_not_a_plain_file_is_refused_in_one_line(pg, sample_db, backup_dir, tmp_path, planted):
    """A link planted at the lock path gave a traceback; a FIFO or a directory there is no lock either."""
    os.makedirs(backup_dir, mode=0o700, exist_ok=True)
    lock = os.path.join(backup_dir, f".{sample_db}.lock")
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    {"link": lambda: os.symlink(victim, lock), "fifo": lambda: os.mkfifo(lock, 0o600),
     "directory": lambda: os.mkdir(lock, 0o700)}[planted]()
    result = run_backup_script(pg, sample_db, backup_dir, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    expected = rf"ERROR: the lock {re.escape(lock)} is (a link|not a plain file); nothing was done"
    assert re.fullmatch(expected, line), line
    assert victim.read_text() == "root's file\n"
    assert backups_in(backup_dir) == []


def _on_a_full_log_disk(pg, database, backup_dir, tmp_path, extra=None):
    """The backup as cron runs it with its log on a full /var/log: both streams into /dev/full."""
    metrics = tmp_path / "metrics"
    metrics.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_"))}
    env.update(pg.app_env(database), BACKUP_DIR=backup_dir, BACKUP_CONFIG="", RETENTION_DAYS="30",
               BACKUP_TEXTFILE_DIR=str(metrics), BACKUP_PASSPHRASE_FILE=signing_passphrase_file(), BACKUP_ENCRYPT="0")
    env.update(extra or {})
    with open("/dev/full", "w") as full:
        result = subprocess.run([BACKUP_SCRIPT], env=env, stdout=full, stderr=full, timeout=300, check=False)
    return result.returncode, str(metrics / f"infer_forge_backup_{database}.prom")


def test_a_full_log_disk_never_stops_a_backup_and_it_is_recorded(pg, sample_db, backup_dir, tmp_path):
    """With cron's log on a full file system every backup once aborted with a traceback before it
    started, and no failure metric was written. The backup goes on; its metrics say how it went."""
    returncode, prom = _on_a_full_log_disk(pg, sample_db, backup_dir, tmp_path)
    assert returncode == 0
    assert len(backups_in(backup_dir, "*.sql.gz")) == 1
    assert textfile_value(prom, "infer_forge_backup_last_run_success") == 1


def test_a_failed_backup_on_a_full_log_disk_still_writes_its_failure_metric(pg, sample_db, backup_dir, tmp_path):
    returncode, prom = _on_a_full_log_disk(pg, sample_db, backup_dir, tmp_path, {"POSTGRES_PASSWORD": "wrong"})
    assert returncode == 1
    assert backups_in(backup_dir, "*.sql.gz") == []
    assert textfile_value(prom, "infer_forge_backup_last_run_success") == 0


def test_an_exception_nobody_raised_on_purpose_is_recorded_as_a_failure(pg, sample_db, backup_dir, tmp_path):
    """A bug (here a stand-in: PgSettings.connect raising a plain RuntimeError, which no real part
    can be made to do on cue) must still write last_run_success 0 and give one line, no traceback."""
    from forge.backup import BackupOptions, BackupRunner
    from forge.errors import ForgeError
    from forge.pgconn import PgSettings

    class Broken(PgSettings):
        def connect(self, *args, **kwargs):
            raise RuntimeError("a bug\nwith a second line")

    settings = Broken(host=pg.host, port=pg.port, user=pg.app_user, password=pg.app_password, database=sample_db)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    runner = BackupRunner(BackupOptions(backup_dir=backup_dir, textfile_dir=str(metrics),
                                        passphrase_file=signing_passphrase_file(), encrypt=False), settings)
    with pytest.raises(ForgeError) as raised:
        runner.run()
    assert raised.value.message == f"backup of {sample_db} stopped: RuntimeError: a bug"
    prom = str(metrics / f"infer_forge_backup_{sample_db}.prom")
    assert textfile_value(prom, "infer_forge_backup_last_run_success") == 0
