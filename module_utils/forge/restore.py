"""The restore engine: pick a backup, verify it, stream it into a database.

Verification happens before any database is touched: the file's SHA-256
against its manifest and, for encrypted files, the HMAC (which tells a wrong
passphrase from a damaged file). The restore then streams file -> decrypt ->
decompress -> psql/pg_restore with bounded memory and no plaintext on disk.
Plain dumps run in one transaction with ON_ERROR_STOP; if the stream turns out
damaged at its end, psql is killed before it can commit, so nothing is kept.
"""

import hashlib
import os
import subprocess
import threading
import time

from . import catalog, compress, opensslenc
from .errors import ForgeError
from .fsutil import pin_malloc_mmap_threshold
from .pgconn import PassFile, user_tables

READ_SIZE = 1 << 20
# Compressed input per step while streaming: pg_dump output compresses about
# 9:1, so this keeps each decompressed step near 600 KiB.
STREAM_READ_SIZE = 1 << 16
PLAIN_DUMP_MARKER = b"-- PostgreSQL database dump complete"
DEFAULT_SESSION_SETTINGS = {"maintenance_work_mem": "256MB", "synchronous_commit": "off"}


def select_backup(backup_dir, database=None, path=None):
    """The backup to restore: ``path`` (which must lie inside ``backup_dir``), or
    the newest good backup of ``database`` by its manifest."""
    if path:
        if not os.path.isabs(path):
            path = os.path.join(backup_dir, path)
        real_dir = os.path.realpath(backup_dir)
        real_path = os.path.realpath(path)
        if os.path.commonpath([real_dir, real_path]) != real_dir:
            raise ForgeError(f"{path} is outside the backup directory {backup_dir}; refusing to restore it")
        if not os.path.isfile(real_path):
            raise ForgeError(f"backup file {path} does not exist")
        backup = catalog.open_backup(real_path)
        if backup is None:
            raise ForgeError(f"{os.path.basename(path)} is not a backup we can restore "
                             "(expected .sql.gz, .sql.zst or .dump, optionally .enc)")
        return backup
    if not database:
        raise ForgeError("give either a backup file or a database whose newest backup to restore")
    if not os.path.isdir(backup_dir):
        raise ForgeError(f"backup directory {backup_dir} does not exist")
    backups = catalog.scan(backup_dir, database)
    good = [b for b in backups if b.good]
    if not good:
        damaged = next((b for b in backups if b.manifest_error), None)
        detail = f"; newest {damaged.name}: {damaged.manifest_error}" if damaged else ""
        raise ForgeError(f"no good backup of {database!r} in {backup_dir}{detail}")
    chosen = max(good, key=lambda b: b.manifest["ended_at"] if b.manifest else b.timestamp.isoformat())
    # Newer files that are not good are reported: a drill that silently tested
    # an older backup would hide that last night's one is broken.
    chosen.skipped_newer = [f"{b.name}: {b.manifest_error or 'no manifest'}" for b in backups
                            if not b.good and b.timestamp > chosen.timestamp]
    return chosen


class VerifyReport(dict):
    def passed(self, name):
        self.setdefault("checks", {})[name] = "passed"

    def skipped(self, name, why):
        self.setdefault("checks", {})[name] = "skipped"
        self.setdefault("skipped_checks", []).append(f"{name}: {why}")


def expected_database(backup):
    if backup.manifest:
        return backup.manifest["database"]
    return None


def verify_file(backup, passphrase=None, database=None):
    """Check a backup without touching any database. Raises ForgeError on the first problem."""
    report = VerifyReport(file=backup.path, format=backup.dump_format, compression=backup.compression,
                          encrypted=backup.encrypted, has_manifest=backup.manifest is not None)
    if backup.manifest_error:
        raise ForgeError(f"{backup.name}: {backup.manifest_error}")
    if backup.encrypted and not passphrase:
        raise ForgeError(f"{backup.name} is encrypted; a passphrase file is needed to restore it")
    if database:
        recorded = expected_database(backup)
        if recorded is not None and recorded != database:
            raise ForgeError(f"{backup.name} is a backup of database {recorded!r}, not {database!r}")
        if recorded is None and backup.stem is not None and backup.stem != catalog.file_stem(database):
            raise ForgeError(f"{backup.name} is named for database {backup.stem!r}, not {database!r}")
    if backup.manifest is None:
        report.skipped("sha256", "no manifest (a runbook-made file)")
        if backup.encrypted:
            report.skipped("hmac", "no manifest; a wrong passphrase shows only as a decryption error")
        return report

    digest = hashlib.sha256()
    mac = None
    expected_mac = (backup.manifest.get("encryption") or {}).get("hmac_sha256")
    if backup.encrypted and expected_mac:
        mac = opensslenc.new_mac(opensslenc.file_mac_key(passphrase, backup.path))
    with open(backup.path, "rb") as handle:
        for chunk in iter(lambda: handle.read(READ_SIZE), b""):
            digest.update(chunk)
            if mac is not None:
                mac.update(chunk)
    if digest.hexdigest() != backup.manifest["sha256"]:
        raise ForgeError(f"{backup.name}: checksum mismatch; the file is damaged or was changed after the backup")
    report.passed("sha256")
    if backup.encrypted:
        if mac is None:
            report.skipped("hmac", "manifest has no HMAC")
        elif mac.hexdigest() != expected_mac:
            raise ForgeError(f"{backup.name}: wrong passphrase (the file is intact but its HMAC does not match "
                             "the passphrase)")
        else:
            report.passed("hmac")
    return report


class RestoreOptions:
    def __init__(self, backup_dir="/backups", passphrase_file=None, jobs=None, force=False, create=True,
                 owner=None, session_settings=None, psql_command=None, pg_restore_command=None, verify=True,
                 comment=None):
        self.backup_dir = backup_dir
        self.passphrase_file = passphrase_file
        self.jobs = jobs
        self.force = force
        self.create = create
        self.owner = owner
        self.session_settings = DEFAULT_SESSION_SETTINGS if session_settings is None else session_settings
        self.psql_command = list(psql_command or ["psql"])
        self.pg_restore_command = list(pg_restore_command or ["pg_restore"])
        self.verify = verify
        self.comment = comment
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise ForgeError(f"jobs must be a whole number >= 1, got {jobs!r}")


class Restorer:
    def __init__(self, options, settings, log=None):
        self.options = options
        self.settings = settings
        self.log = log or (lambda line: None)

    @property
    def jobs(self):
        """pg_restore jobs for an unencrypted custom-format dump: one per CPU unless set."""
        return self.options.jobs or compress.default_workers()

    def passphrase(self, backup):
        if not backup.encrypted:
            return None
        return opensslenc.read_passphrase(self.options.passphrase_file)

    # -- target database ------------------------------------------------------
    def prepare_target(self, target, check_mode=False):
        """Make sure ``target`` exists and is empty; returns 'created', 'recreated' or 'empty'."""
        from psycopg import sql

        with self.settings.connect(database="postgres") as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
            if exists:
                tables = self._user_table_count(target)
                if tables == 0:
                    return "empty"
                if not self.options.force:
                    raise ForgeError(f"target database {target!r} already has {tables} tables; restoring would "
                                     "overwrite data (force: true, or --force, drops and recreates it)")
                if check_mode:
                    return "recreated"
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(target)))
                state = "recreated"
            else:
                if not self.options.create:
                    raise ForgeError(f"target database {target!r} does not exist (set create to make it)")
                if check_mode:
                    return "created"
                state = "created"
            query = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(target))
            if self.options.owner:
                query = query + sql.SQL(" OWNER {}").format(sql.Identifier(self.options.owner))
            try:
                conn.execute(query)
                if self.options.comment:
                    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(target), sql.Literal(self.options.comment)))
            except Exception as exc:  # noqa: BLE001 - psycopg errors become one line
                raise ForgeError(f"cannot create database {target!r}: {' '.join(str(exc).split())}") from None
            return state

    def _user_table_count(self, target):
        with self.settings.connect(database=target) as conn:
            return len(user_tables(conn.cursor()))

    # -- the restore ----------------------------------------------------------
    def restore(self, backup, target, database=None, check_mode=False):
        # Before the first large buffer (verification reads 1 MiB blocks), not after.
        pin_malloc_mmap_threshold()
        started = time.monotonic()
        passphrase = self.passphrase(backup)
        report = verify_file(backup, passphrase, database) if self.options.verify else VerifyReport()
        report["target"] = target
        if check_mode:
            report["target_state"] = self.prepare_target(target, check_mode=True)
            report["changed"] = True
            return report
        report["target_state"] = self.prepare_target(target)
        self.log(f"Restoring {backup.name} into {target}")
        try:
            if backup.dump_format == "custom" and not backup.encrypted and self.jobs > 1:
                self._pg_restore_file(backup, target)
            else:
                self._stream(backup, target, passphrase)
        except ForgeError:
            if report["target_state"] in ("created", "recreated"):
                self._drop_quietly(target)
                report["target_state"] = "dropped after failure"
            raise
        report["changed"] = True
        report["duration"] = round(time.monotonic() - started, 3)
        return report

    def _drop_quietly(self, target):
        from psycopg import sql

        try:
            with self.settings.connect(database="postgres") as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
        except ForgeError:
            pass

    def _env(self, target, passfile):
        env = self.settings.with_database(target).libpq_env(passfile)
        if self.options.session_settings:
            env["PGOPTIONS"] = " ".join(f"-c {key}={value}" for key, value in self.options.session_settings.items())
        return env

    def _pg_restore_file(self, backup, target):
        command = self.options.pg_restore_command + [
            "--no-owner", "--no-privileges", "--exit-on-error", f"--jobs={self.jobs}",
            f"--dbname={dbname_conninfo(target)}", backup.path]
        with PassFile(self.settings.password) as passfile:
            proc = subprocess.run(command, env=self._env(target, passfile), capture_output=True, text=True,
                                  check=False)
        if proc.returncode != 0:
            raise ForgeError(f"pg_restore failed: {_first_error(proc.stderr)}")

    def _stream(self, backup, target, passphrase):
        if backup.dump_format == "plain":
            command = self.options.psql_command + ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                                                   "-o", "/dev/null", "-f", "-"]
        else:
            command = self.options.pg_restore_command + ["--no-owner", "--no-privileges", "--exit-on-error",
                                                         "--single-transaction", f"--dbname={dbname_conninfo(target)}"]
        decryptor = opensslenc.Decryptor(passphrase) if backup.encrypted else None
        decompressor = compress.decompressor_for(backup.compression)
        tail = b""
        with PassFile(self.settings.password) as passfile:
            env = self._env(target, passfile)
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env)
            errors = []
            reader = threading.Thread(target=_collect, args=(proc.stderr, errors), daemon=True)
            reader.start()
            try:
                with open(backup.path, "rb") as handle:
                    for chunk in iter(lambda: handle.read(STREAM_READ_SIZE), b""):
                        if decryptor is not None:
                            chunk = decryptor.update(chunk)
                        data = decompressor.decompress(chunk)
                        if data:
                            tail = (tail + data[-256:])[-256:]
                            proc.stdin.write(data)
                if decryptor is not None:
                    data = decompressor.decompress(decryptor.finalize())
                    if data:
                        tail = (tail + data[-256:])[-256:]
                        proc.stdin.write(data)
                _check_stream_end(backup, decompressor, tail)
            except BrokenPipeError:
                proc.wait()
                reader.join()
                raise ForgeError(f"restore stopped: {_first_error(''.join(errors)) or 'the client exited early'}") \
                    from None
            except (ForgeError, Exception) as exc:
                # Kill before closing stdin: psql must not commit a damaged stream.
                proc.kill()
                proc.wait()
                reader.join()
                if isinstance(exc, ForgeError):
                    raise
                raise ForgeError(_describe_stream_error(backup, exc)) from None
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            proc.wait()
            reader.join()
        if proc.returncode != 0:
            raise ForgeError(f"restore stopped: {_first_error(''.join(errors)) or f'exit {proc.returncode}'}")


def dbname_conninfo(name):
    """pg_restore takes --dbname as a connection string when it contains '=';
    quoting it as one always keeps any database name literal."""
    return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _check_stream_end(backup, decompressor, tail):
    if getattr(decompressor, "truncated", False):
        raise ForgeError(f"{backup.name}: gzip data is truncated; the file is incomplete")
    if backup.compression == "zstd" and not getattr(decompressor, "eof", True):
        raise ForgeError(f"{backup.name}: zstd data is truncated; the file is incomplete")
    if backup.dump_format == "plain" and PLAIN_DUMP_MARKER not in tail:
        raise ForgeError(f"{backup.name}: the dump has no 'dump complete' marker; it is truncated")


def _describe_stream_error(backup, exc):
    text = " ".join(str(exc).split())
    if backup.encrypted and isinstance(exc, ValueError):
        return f"{backup.name}: decryption failed: wrong passphrase or damaged file"
    if "zlib" in type(exc).__module__ or "Error -3" in text or "invalid" in text.lower():
        if backup.encrypted:
            return f"{backup.name}: decrypted data is not valid {backup.compression}: wrong passphrase or damaged file"
        return f"{backup.name}: {backup.compression} data is corrupt ({text})"
    return f"{backup.name}: {text}"


def _collect(stream, sink):
    for raw in stream:
        sink.append(raw.decode("utf-8", "replace"))
        if len(sink) > 200:
            del sink[50:150]


def _first_error(text):
    """The first ERROR/FATAL line with its statement context, as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "ERROR:" in line or "FATAL:" in line or "error:" in line:
            context = [item for item in lines[index + 1:index + 3] if item.startswith(("LINE", "CONTEXT", "DETAIL"))]
            return " ".join([line] + context)[:500]
    return (lines[-1] if lines else "")[:500]
