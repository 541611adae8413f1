"""The backup engine: one consistent, verified, atomic backup of one database.

Flow of one run:
  lock -> clean stale partials -> connect, export a snapshot -> check client
  version and free space -> pg_dump --snapshot (its stdout streamed through
  compression, encryption and SHA-256 into a hidden partial file) while
  the exporting transaction counts every table's rows -> check pg_dump's exit
  status, stderr and completion marker -> fsync -> manifest and checksum file
  -> rename the partial to its final name -> retention -> metrics.
Any failure removes the partial file, deletes nothing, writes failure
metrics, reports to Sentry when configured, and raises ForgeError.
"""

import datetime
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

from . import catalog, compress, metrics, opensslenc, records, signing
from .errors import ForgeError, database_error, hide_values, unexpected
from .fsutil import (
    PRIVATE_FILE_MODE,
    DirectoryLock,
    ensure_private_dir,
    explain_os_error,
    free_bytes,
    fsync_dir,
    human_size,
    pin_malloc_mmap_threshold,
    write_atomic,
)
from .outcome import report_failure
from .pgconn import (
    PassFile,
    client_major_version,
    count_rows,
    passed_fds,
    runs_in_container,
    user_tables,
    with_container_env,
)

PLAIN_DUMP_MARKER = b"-- PostgreSQL database dump complete"
CUSTOM_DUMP_MAGIC = b"PGDMP"
FORMATS = ("plain", "custom")
COMPRESSIONS = ("gzip", "zstd")
GZIP_TOOLS = ("auto", "igzip", "zlib")


class BackupOptions:
    """Everything one backup run needs besides the connection."""

    def __init__(self, backup_dir="/backups", retention_days=30, min_keep=7, keep_daily=0, keep_weekly=0,
                 keep_monthly=0, dump_format="plain", compression="gzip", compression_level=None, jobs=None,
                 passphrase_file=None, encrypt=None, dump_command=None, dump_options=None, lock_wait=0,
                 textfile_dir=None, sentry_dsn=None, environment=None, space_check=True,
                 space_margin_bytes=16 << 20, kdf_iterations=None, passphrase=None, gzip_tool="auto",
                 stall_timeout=300, retired_passphrases_file=None, retired_passphrases=()):
        self.backup_dir = backup_dir
        self.retention_days = retention_days
        self.min_keep = min_keep
        self.keep_daily = keep_daily
        self.keep_weekly = keep_weekly
        self.keep_monthly = keep_monthly
        self.dump_format = dump_format
        self.compression = compression
        self.compression_level = compression_level
        self.jobs = jobs
        self.gzip_tool = gzip_tool
        self.passphrase_file = passphrase_file
        # The passphrase itself, instead of its file (a module's vault value); it wins over the file.
        self.passphrase = passphrase
        # Key rotation: earlier passphrases. They prove the backups they made, so retention, the
        # space estimate and the metrics treat those like any proven backup; they never sign.
        self.retired_passphrases_file = retired_passphrases_file
        self.retired_passphrases = list(retired_passphrases or ())
        self.encrypt = bool(passphrase_file or passphrase) if encrypt is None else bool(encrypt)
        self.dump_command = list(dump_command or ["pg_dump"])
        self.dump_options = list(["--no-owner", "--no-privileges"] if dump_options is None else dump_options)
        self.lock_wait = lock_wait
        # No progress from pg_dump or the compressor for this long stops the run; a wait for a
        # table lock (pg_dump's and the row count's) ends at half of it, naming who holds it.
        self.stall_timeout = stall_timeout
        self.textfile_dir = textfile_dir
        self.sentry_dsn = sentry_dsn
        self.environment = environment
        self.space_check = space_check
        self.space_margin_bytes = space_margin_bytes
        # PBKDF2 iterations of the encryption; openssl's own default keeps `openssl enc -d -pbkdf2` working.
        self.kdf_iterations = opensslenc.kdf_iterations(kdf_iterations)
        self.validate()

    def validate(self):
        for name in ("retention_days", "min_keep", "keep_daily", "keep_weekly", "keep_monthly", "lock_wait",
                     "stall_timeout"):
            value = getattr(self, name)
            least = {"retention_days": 1, "stall_timeout": 2}.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ForgeError(f"{name} must be a whole number >= {least}, got {value!r}")
        if self.dump_format not in FORMATS:
            raise ForgeError(f"format must be one of {', '.join(FORMATS)}, got {self.dump_format!r}")
        if self.dump_format == "plain" and self.compression not in COMPRESSIONS:
            raise ForgeError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        if self.gzip_tool not in GZIP_TOOLS:
            raise ForgeError(f"gzip_tool must be one of {', '.join(GZIP_TOOLS)}, got {self.gzip_tool!r}")
        if self.jobs is not None and (not isinstance(self.jobs, int) or self.jobs < 1):
            raise ForgeError(f"jobs must be a whole number >= 1, got {self.jobs!r}")
        if not self.backup_dir or not os.path.isabs(self.backup_dir):
            raise ForgeError(f"backup_dir must be an absolute path, got {self.backup_dir!r}")
        if self.encrypt and not (self.passphrase_file or self.passphrase):
            raise ForgeError("encryption is on but no passphrase file is configured")

    @property
    def effective_compression(self):
        return self.compression if self.dump_format == "plain" else "none"


class BackupResult(dict):
    """What a run did, as the Ansible module returns it."""


class BackupRunner:
    def __init__(self, options, settings, log=None, clock=time.time):
        self.options = options
        self.settings = settings
        self.log = log or (lambda line: None)
        self.clock = clock
        self.stem = catalog.file_stem(settings.database or "")
        self.hostname = socket.gethostname()
        self.passphrase = None
        self.retired = ()
        if not settings.database:
            raise ForgeError("no database given (POSTGRES_DB)")

    def _policy(self):
        """The trust rule for this run's reads of the directory (retention, space estimate, metrics)."""
        return catalog.TrustPolicy(self.passphrase, require_encryption=self.options.encrypt, now=self.clock(),
                                   retired=self.retired)

    def _scan(self):
        return catalog.scan(self.options.backup_dir, self.settings.database, self._policy())

    # -- public ---------------------------------------------------------
    def run(self, check_mode=False):
        started = self.clock()
        result = BackupResult(changed=False, database=self.settings.database, backup_dir=self.options.backup_dir)
        try:
            # The passphrase encrypts (when encryption is on) and signs the manifest.
            self.passphrase = signing.load_passphrase(self.options.passphrase, self.options.passphrase_file)
            signing.require_strength(self.passphrase)
            self.retired = signing.load_keyring(self.options.retired_passphrases,
                                                self.options.retired_passphrases_file)
            note = None if check_mode else ensure_private_dir(self.options.backup_dir)
            if check_mode and not os.path.isdir(self.options.backup_dir):
                ensure_private_dir(self.options.backup_dir, create=False)
            if note:
                result["directory_note"] = note
            lock_path = os.path.join(self.options.backup_dir, f".{self.stem}.lock")
            if check_mode:
                return self._plan(result, started)
            with DirectoryLock(lock_path, self.options.lock_wait, what=f"backup of {self.settings.database}",
                               log=self.log):
                result["removed_partials"] = self._remove_stale_partials()
                self._backup(result, started)
                self._apply_retention(result)
            result["duration"] = round(self.clock() - started, 3)
            self._write_metrics(success=True, result=result, started=started)
            return result
        except ForgeError as exc:
            self._after_failure(exc, started)
            raise
        except KeyboardInterrupt:
            self._after_failure(ForgeError(f"backup of {self.settings.database} interrupted"), started)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug is recorded like any failure, in one line
            error = ForgeError(f"backup of {self.settings.database} stopped: {unexpected(exc)}")
            self._after_failure(error, started)
            raise error from None

    # -- steps ------------------------------------------------------------
    def _plan(self, result, started):
        """Check mode: connect, check version and space, say what would happen."""
        with self.settings.connect() as conn:
            server_major = conn.info.server_version // 10000
            db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        self._check_client_version(server_major)
        backups = self._scan()
        self._check_space(backups, db_size)
        name = self._final_name(datetime.datetime.fromtimestamp(self.clock()))
        result["path"] = os.path.join(self.options.backup_dir, name)
        plan = self._retention_plan(backups)
        result["would_remove"] = [backup.name for backup in plan.remove]
        result["changed"] = True
        result["duration"] = round(self.clock() - started, 3)
        return result

    def _final_name(self, when):
        ext = catalog.extension_for(self.options.dump_format, self.options.effective_compression,
                                    self.options.encrypt)
        return f"{self.stem}_{when.strftime(catalog.TIMESTAMP_FORMAT)}{ext}"

    def _remove_stale_partials(self):
        removed = []
        for name in os.listdir(self.options.backup_dir):
            if catalog.is_partial_name(name, self.stem):
                path = os.path.join(self.options.backup_dir, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    os.unlink(path)
                    removed.append(name)
        return removed

    def _check_client_version(self, server_major):
        client_major = client_major_version(self.options.dump_command)
        if client_major < server_major:
            # pg_dump's own "server version mismatch" says what broke, not what to do about it.
            where = "on this host" if self.options.dump_command == ["pg_dump"] else \
                f"of {' '.join(self.options.dump_command)!r}"
            raise ForgeError(
                f"pg_dump {client_major} {where} cannot dump a PostgreSQL {server_major} server; set "
                f"BACKUP_DUMP_COMMAND (role: backup_dump_command) to a pg_dump {server_major} such as "
                "'docker exec -i <db container> pg_dump', or run the backup as the Compose sidecar "
                "(backup_compose_sidecar)")
        return client_major

    def _counter_failure(self, counter):
        if counter.waited_for is not None:
            schema, name = counter.waited_for
            return ForgeError(self._lock_wait_message("the row count", f"{schema}.{name}", (schema, name)))
        return ForgeError(f"counting rows in the dump snapshot failed: {counter.error}")

    def _lock_wait_seconds(self):
        return max(1, self.options.stall_timeout // 2)

    def _raise_if_dump_waited_for_a_lock(self, returncode, stderr_lines):
        """pg_dump's --lock-wait-timeout ended its wait: name the table (from its own LOCK TABLE
        statement) and the sessions that hold a lock in its way."""
        if returncode == 0 or not any("canceling statement due to statement timeout" in line for line in stderr_lines):
            return
        table = next((match.group(1) for match in map(_LOCK_STATEMENT.search, stderr_lines) if match), None)
        if table is not None:
            raise ForgeError(self._lock_wait_message("pg_dump", table))

    def _lock_wait_message(self, who, table, schema_and_name=None):
        waited = self._lock_wait_seconds() if who == "pg_dump" else self.options.stall_timeout
        return (f"{who} waited {waited} s for a lock on {table}, held by "
                f"{lock_holders(self.settings, table, schema_and_name)}; nothing was kept")

    def _check_lock_headroom(self, cursor, tables):
        """pg_dump locks every table it dumps and holds the locks to the end (the row count here
        takes its own in the same snapshot); the server's lock table holds max_locks_per_transaction
        x (max_connections + max_prepared_transactions). Past that a dump fails late, or only on
        some nights, with "out of shared memory": refuse now, naming the setting to raise."""
        cursor.execute("SELECT current_setting('max_locks_per_transaction')::int, "
                       "current_setting('max_connections')::int, current_setting('max_prepared_transactions')::int")
        per_transaction, connections, prepared = cursor.fetchone()
        capacity = per_transaction * (connections + prepared)
        if tables > capacity:
            needed = -(-2 * tables // (connections + prepared))
            raise ForgeError(
                f"{self.settings.database} has {tables} tables and pg_dump locks every one, more than the server's "
                f"lock table holds (max_locks_per_transaction {per_transaction} x (max_connections {connections} + "
                f"max_prepared_transactions {prepared}) = {capacity}); raise max_locks_per_transaction to at least "
                f"{needed} and restart PostgreSQL; nothing was written")

    def _check_space(self, backups, db_size):
        if not self.options.space_check:
            return
        previous = next((b for b in backups if b.good), None)
        if previous is not None:
            needed, basis = int(previous.size * 1.25), "the last backup"
        else:
            needed, basis = int(db_size * 0.5), "the database size"
        needed += self.options.space_margin_bytes
        available = free_bytes(self.options.backup_dir)
        if available < needed:
            raise ForgeError(f"not enough free space in {self.options.backup_dir}: {human_size(available)} free, "
                             f"about {human_size(needed)} needed (estimated from {basis})")

    def _retention_plan(self, backups):
        return catalog.plan_retention(
            backups, datetime.datetime.fromtimestamp(self.clock()), self.options.retention_days,
            self.options.min_keep, self.options.keep_daily, self.options.keep_weekly, self.options.keep_monthly)

    def _backup(self, result, started):
        options = self.options
        passphrase = self.passphrase if options.encrypt else None
        snapshot_conn = self.settings.connect(autocommit=False)
        try:
            import psycopg

            snapshot_conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            snapshot_conn.read_only = True
            cursor = snapshot_conn.cursor()
            cursor.execute("SELECT pg_export_snapshot(), current_setting('server_version'), "
                           "pg_database_size(current_database())")
            snapshot, server_version, db_size = cursor.fetchone()
            server_major = snapshot_conn.info.server_version // 10000
            client_major = self._check_client_version(server_major)
            existing = self._scan()
            self._check_space(existing, db_size)
            tables = user_tables(cursor)
            self._check_lock_headroom(cursor, len(tables))

            when = datetime.datetime.fromtimestamp(self.clock())
            name = self._final_name(when)
            while os.path.exists(os.path.join(options.backup_dir, name)):
                time.sleep(0.2)
                when = datetime.datetime.fromtimestamp(self.clock())
                name = self._final_name(when)
            final_path = os.path.join(options.backup_dir, name)
            partial_path = os.path.join(options.backup_dir, f".{name}.partial-{os.getpid()}")
            self.log(f"Starting backup: {final_path}")

            # pg_dump gives up a held lock first (at half the stall timeout) and names it; the count
            # waits the whole stall timeout, so DDL queued behind pg_dump's locks is waited out.
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", (f"{self.options.stall_timeout}s",))
            counter = _RowCounter(cursor, tables)
            counter.start()
            try:
                stream = self._dump(snapshot, partial_path, passphrase, client_major)
            except ForgeError as dump_error:
                # A count that failed first (out of locks, say) ended the exporting transaction,
                # and pg_dump then only says it "could not import the requested snapshot": the
                # count's error is the cause. Any other dump error (the server died under both)
                # is pg_dump's own, and its line is the one to read.
                counter.join(timeout=0.5)
                if not counter.is_alive() and counter.error is not None and "snapshot" in str(dump_error):
                    raise self._counter_failure(counter) from None
                _cancel_quietly(snapshot_conn)
                raise
            except BaseException:
                _cancel_quietly(snapshot_conn)
                raise
            finally:
                counter.join()
            if counter.error is not None:
                raise self._counter_failure(counter)
            snapshot_conn.rollback()
        except BaseException:
            _unlink_quietly(locals().get("partial_path"))
            raise
        finally:
            snapshot_conn.close()

        ended = self.clock()
        manifest = {
            "manifest_version": catalog.MANIFEST_VERSION,
            "file": name,
            "database": self.settings.database,
            "host": self.hostname,
            "server": {"host": self.settings.host, "port": self.settings.port, "version": server_version},
            "pg_dump_major_version": client_major,
            "started_at": _iso(started),
            "ended_at": _iso(ended),
            "duration_seconds": round(ended - started, 3),
            "size": stream["size"],
            "sha256": stream["sha256"],
            "format": options.dump_format,
            "compression": {"algorithm": options.effective_compression, "level": stream["compression_level"],
                            "tool": stream["compression_tool"]},
            "encryption": stream["encryption"],
            **({"archive_compression": stream["archive_compression"]} if stream["archive_compression"] else {}),
            "snapshot_row_counts": counter.counts,
            "tables": len(counter.counts),
            "rows": sum(counter.counts.values()),
            "dump_options": options.dump_options,
            "tool": "infer-forge-ops",
        }
        if self.passphrase:
            manifest = signing.sign(manifest, signing.signing_key(self.passphrase))
        else:
            self.log("WARNING: manifest not signed (no BACKUP_PASSPHRASE_FILE): restore and drill take this "
                     "backup only when it is named, as UNVERIFIED")
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        size = len(text.encode("utf-8"))
        if size > catalog.MAX_MANIFEST_BYTES:
            _unlink_quietly(partial_path)
            raise ForgeError(f"the manifest of {len(counter.counts)} tables would be {size} bytes, more than "
                             f"verify, restore and drill accept ({catalog.MAX_MANIFEST_BYTES}); nothing was kept")
        try:
            write_atomic(final_path + catalog.MANIFEST_SUFFIX, text)
            write_atomic(final_path + catalog.CHECKSUM_SUFFIX, f"{stream['sha256']}  {name}\n")
            os.rename(partial_path, final_path)
            fsync_dir(options.backup_dir)
        except OSError as exc:
            for leftover in (partial_path, final_path + catalog.MANIFEST_SUFFIX, final_path + catalog.CHECKSUM_SUFFIX):
                _unlink_quietly(leftover)
            raise explain_os_error(exc, "finishing", final_path) from None
        self.log(f"Backup complete: {human_size(stream['size'])}")
        result.update(
            changed=True, path=final_path, file=name, size=stream["size"], sha256=stream["sha256"],
            manifest=final_path + catalog.MANIFEST_SUFFIX, encrypted=options.encrypt, format=options.dump_format,
            compression=options.effective_compression, row_counts=counter.counts,
            tables=len(counter.counts), rows=manifest["rows"], server_version=server_version,
        )

    def _dump(self, snapshot, partial_path, passphrase, client_major):
        """Run pg_dump and stream its output into ``partial_path``; return what was written."""
        pin_malloc_mmap_threshold()
        options = self.options
        compress_option, inside = archive_compression(client_major, options.compression_level, options.dump_options)
        fmt = ["--format=plain"] if options.dump_format == "plain" else [
            "--format=custom", f"--compress={compress_option}"]
        command = options.dump_command + fmt + options.dump_options + [
            f"--lock-wait-timeout={self._lock_wait_seconds()}s", f"--snapshot={snapshot}"]
        docker = runs_in_container(options.dump_command)
        compressor = compress.make_compressor(options.effective_compression, options.compression_level, options.jobs,
                                              options.gzip_tool)
        encryptor = opensslenc.Encryptor(passphrase, iterations=options.kdf_iterations) if passphrase else None
        digest = hashlib.sha256()
        size = 0
        tail = b""
        head = b""

        with PassFile(None if docker else self.settings.password) as passfile:
            env = self.settings.libpq_env(passfile)
            if docker and self.settings.password:
                # `docker exec -e PGPASSWORD` copies the value from our environment,
                # so it never appears in argv.
                env["PGPASSWORD"] = self.settings.password
            fd = os.open(partial_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
            out = os.fdopen(fd, "wb", buffering=0)
            try:
                # A session of its own: a stall stops the dump command and everything it started
                # (a wrapper's pg_dump), or a child still holding the pipe would keep it open.
                proc = subprocess.Popen(with_container_env(command), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                        pass_fds=passed_fds(passfile), start_new_session=True)
            except FileNotFoundError:
                out.close()
                compressor.abort()
                raise ForgeError(f"dump command {options.dump_command[0]!r} not found") from None
            compress.enlarge_pipe(proc.stdout.fileno())
            stderr_lines = []
            stderr_reader = threading.Thread(target=_drain, args=(proc.stderr, stderr_lines), daemon=True)
            stderr_reader.start()

            def emit(data):
                nonlocal size
                if encryptor is not None:
                    data = encryptor.update(data)
                if not data:
                    return
                digest.update(data)
                out.write(data)
                size += len(data)

            watch = _StallWatch(options.stall_timeout, lambda what: _stop_stalled(what, proc, compressor))
            # Only a compressor of its own process can be stopped, so only that one is watched.
            stoppable_compressor = compressor.tool if hasattr(compressor, "kill") else None
            watch.start()
            try:
                while True:
                    # What the pipe holds, not a full chunk: waiting to fill one would idle
                    # the compressor while pg_dump writes.
                    watch.waiting_on("pg_dump")
                    chunk = proc.stdout.read1(compress.CHUNK_SIZE)
                    if not chunk:
                        break
                    if len(head) < 16:
                        head += chunk[:16]
                    # Only the last bytes: joining the whole chunk would copy every byte of the dump again.
                    tail = (tail + chunk[-256:])[-256:]
                    watch.waiting_on(stoppable_compressor)
                    compressed = compressor.feed(chunk)
                    watch.waiting_on(None)  # the write to disk: slow is not stalled, and nothing to stop
                    emit(compressed)
                proc.wait()
                stderr_reader.join()
                watch.raise_if_stalled()
                self._raise_if_dump_waited_for_a_lock(proc.returncode, stderr_lines)
                _check_dump_exit(proc.returncode, stderr_lines, options.dump_format, head, tail)
                watch.waiting_on(stoppable_compressor)
                compressed = compressor.finish()
                watch.end()
                emit(compressed)
                if encryptor is not None:
                    last = encryptor.finalize()
                    digest.update(last)
                    out.write(last)
                    size += len(last)
                os.fsync(out.fileno())
            except OSError as exc:
                watch.end()
                _stop(proc)
                compressor.abort()
                watch.raise_if_stalled()
                raise explain_os_error(exc, "writing", partial_path) from None
            except BaseException:
                watch.end()
                _stop(proc)
                compressor.abort()
                watch.raise_if_stalled()
                raise
            finally:
                out.close()
        return {
            "size": size,
            "sha256": digest.hexdigest(),
            "archive_compression": inside if options.dump_format == "custom" else None,
            "compression_level": getattr(compressor, "level", None),
            "compression_tool": compressor.tool,
            "encryption": encryptor.parameters() if encryptor else None,
        }

    def _apply_retention(self, result):
        options = self.options
        self.log(f"Removing backups older than {options.retention_days} days...")
        backups = self._scan()
        plan = self._retention_plan(backups)
        removed = []
        for backup in plan.remove:
            for path in (backup.path, backup.manifest_path, backup.checksum_path):
                try:
                    _unlink_quietly(path)
                except OSError as exc:
                    # Something planted under a backup's side-file name (a directory, say) must not
                    # turn a complete backup into a failed run.
                    self.log(f"Could not remove {os.path.basename(path)}: {exc.strerror}")
            removed.append(backup.name)
            self.log(f"Removed: {backup.name}")
        # What is left is what was scanned minus what was removed; no second read of every manifest.
        remaining = [backup for backup in backups if backup not in plan.remove]
        for backup in remaining:
            if backup.unknown_key_id:
                # Never deleted (nothing proves what it is), so it would stay for ever unseen.
                self.log(f"Kept, no configured key proves it: {backup.name} (signed with key {backup.unknown_key_id}; "
                         f"add its passphrase to {signing.RETIRED_ENV} to restore it and let retention remove it)")
        self.log("Done. Remaining backups:")
        for backup in remaining:
            self.log(f"  {backup.name} ({human_size(backup.size)})")
        result["removed"] = removed
        result["retained"] = [backup.name for backup in remaining if backup.good]

    # -- reporting ------------------------------------------------------------
    def _after_failure(self, exc, started):
        try:
            self._write_metrics(success=False, result=None, started=started)
        except Exception as metrics_exc:  # noqa: BLE001 - the run's own error is the one to report
            exc.details["metrics_error"] = unexpected(metrics_exc)
        if exc.details.get("locked"):
            return
        report_failure(exc.details, self.options.sentry_dsn,
                       f"backup of {self.settings.database} failed: {exc.message}", "backup", self.settings.database,
                       self.hostname, self.options.environment)

    def _write_metrics(self, success, result, started):
        if not self.options.textfile_dir:
            return
        now = self.clock()
        labels = {"database": self.settings.database}
        good, unproven = [], []
        if os.path.isdir(self.options.backup_dir) and not os.path.islink(self.options.backup_dir):
            scanned = self._scan()
            good = [b for b in scanned if b.good]
            unproven = [b for b in scanned if b.unknown_key_id]
        managed = [b for b in good if b.manifest is not None]
        last = managed[0] if managed else None
        previous = managed[1] if len(managed) > 1 else None
        samples = [
            ("last_run_timestamp_seconds", "gauge", "When the last backup run ended.", now),
            ("last_run_success", "gauge", "1 if the last backup run succeeded, else 0.", 1 if success else 0),
            ("last_run_duration_seconds", "gauge", "Wall time of the last backup run.", round(now - started, 3)),
            ("retained_backups", "gauge", "Good backups kept in the backup directory.", len(good)),
            ("retired_key_backups", "gauge", "Good backups whose manifest a retired key signed (key rotation).",
             sum(1 for b in good if b.retired_key_id)),
            ("unproven_backups", "gauge", "Backups signed with a key no configured passphrase has: never deleted, "
             "not restorable until their passphrase is retired here.", len(unproven)),
        ]
        if last is not None:
            samples.append(("last_success_timestamp_seconds", "gauge", "When the newest good backup finished.",
                            _parse_iso(last.manifest["ended_at"])))
            samples.append(("size_bytes", "gauge", "Size of the newest good backup.", last.size))
            samples.append(("duration_seconds", "gauge", "How long the newest good backup took.",
                            last.manifest["duration_seconds"]))
            samples.append(("rows", "gauge", "Rows in the newest good backup (snapshot count).", last.manifest["rows"]))
        if previous is not None:
            samples.append(("previous_size_bytes", "gauge", "Size of the good backup before the newest.",
                            previous.size))
        metrics.write_textfile(
            self.options.textfile_dir, records.backup_metrics_filename(self.settings.database or ""),
            [(records.BACKUP_METRIC_PREFIX + name, kind, text, labels, value) for name, kind, text, value in samples])


_LOCK_STATEMENT = re.compile(r"Query was: LOCK TABLE (.+) IN ACCESS SHARE MODE")


def lock_holders(settings, table, schema_and_name=None):
    """Who holds a lock on ``table`` that a reader waits behind, as "pid N (user U, mode)";
    "another session" when the server will not say."""
    import psycopg

    name_sql = "format('%%I.%%I', %s::text, %s::text)" if schema_and_name else "%s"
    query = (f"SELECT l.pid, coalesce(a.usename, '?'), l.mode FROM pg_locks l "  # noqa: S608 - fixed text
             f"LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'relation' AND l.granted "
             f"AND l.mode = 'AccessExclusiveLock' AND l.relation = to_regclass({name_sql}) "
             f"AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY l.pid")
    try:
        with settings.connect() as conn:
            rows = conn.execute(query, tuple(schema_and_name) if schema_and_name else (table,)).fetchall()
    except (ForgeError, psycopg.Error):  # no connection to spare, say: the wait is still the news
        rows = []
    return ", ".join(f"pid {pid} (user {user}, {mode})" for pid, user, mode in rows) or "another session"


class _StallWatch(threading.Thread):
    """Stops the process a run waits on when it has made no progress for ``seconds``: a stopped
    pg_dump or compressor, a hung container. The run then ends in one line naming it."""

    def __init__(self, seconds, stop):
        super().__init__(name="stall-watch", daemon=True)
        self.seconds = seconds
        self.stop = stop
        self.stalled = None
        self._waiting = ("pg_dump", time.monotonic())
        self._ended = threading.Event()

    def waiting_on(self, what):
        """``what`` the run now waits on; None for a stage nothing can stop (an in-process
        compressor, the write to disk), which is never called stalled."""
        self._waiting = (what, time.monotonic())

    def run(self):
        while not self._ended.wait(min(1.0, self.seconds / 4)):
            what, since = self._waiting
            if what is not None and time.monotonic() - since >= self.seconds:
                self.stalled = what
                self.stop(what)
                return

    def end(self):
        self._ended.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()

    def raise_if_stalled(self):
        if self.stalled is not None:
            raise ForgeError(f"{self.stalled} made no progress for {self.seconds:g} s and was stopped "
                             "(BACKUP_STALL_TIMEOUT); nothing was kept")


def archive_compression(client_major, level=None, dump_options=()):
    """(pg_dump's --compress, how the manifest names it) for a custom-format archive.

    Unset, lz4 from pg_dump 16 on (a pg_restore of that major reads it, and it keeps up with the
    dump) and zlib at level 1 before; zlib at pg_dump's default level 6 runs in pg_dump's one
    thread and made a custom-format backup take 2.9 times as long as the dump itself. A level
    set by BACKUP_COMPRESSION_LEVEL keeps its meaning on every major: zlib at that level, 0 for
    none. A --compress among the dump options (forge_backup's dump_options) comes later on
    pg_dump's command line and wins: the manifest then names that one."""
    words = list(dump_options)
    given = [" ".join(words[at:at + (2 if word in ("-Z", "--compress") else 1)])
             for at, word in enumerate(words) if word.startswith(("-Z", "--compress"))]
    if level is not None:
        option, named = str(level), ("none" if level == 0 else f"gzip:{level}")
    elif client_major >= 16:
        option, named = "lz4", "lz4"
    else:
        option, named = "1", "gzip:1"  # before 16, --compress takes a zlib level alone
    return option, (f"as the dump options set it: {given[-1]}" if given else named)


def _stop_stalled(what, proc, compressor):
    """pg_dump: its whole session, politely first (sudo passes SIGTERM on to root's wrapper, which
    cannot be killed from here), then for good; the compressor: its own process."""
    if what != "pg_dump":
        kill = getattr(compressor, "kill", None)
        if kill is not None:
            kill()
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _cancel_quietly(conn):
    """Stop a count that may be waiting on a lock: the dump failed. A server that died refuses
    the cancel's connection too; the dump's error is the one to report."""
    import psycopg

    try:
        conn.cancel()
    except psycopg.Error:
        pass


class _RowCounter(threading.Thread):
    """Counts rows in the exporting transaction while pg_dump runs: same snapshot, no extra wall time."""

    def __init__(self, cursor, tables):
        super().__init__(name="row-counter", daemon=True)
        self.cursor = cursor
        self.tables = tables
        self.counts = {}
        self.error = None
        # (schema, table) whose lock the count gave up waiting for.
        self.waited_for = None

    def run(self):
        import psycopg

        try:
            count_rows(self.cursor, self.tables, into=self.counts)
        except psycopg.errors.LockNotAvailable:
            self.waited_for = next(table for table in self.tables if f"{table[0]}.{table[1]}" not in self.counts)
            self.error = "lock timeout"
        except Exception as exc:  # noqa: BLE001 - reported by the caller as one line
            # PostgreSQL's first line with its values hidden, and its hint: what to change, never a row.
            self.error = database_error(exc) or type(exc).__name__
            hint = getattr(getattr(exc, "diag", None), "message_hint", None)
            if hint:
                self.error += f" (HINT: {hide_values(hint)})"


_QUOTING_LINES = ("pg_dump: detail:", "pg_dump: hint:", "detail:", "hint:", "context:", "line ")


def _check_dump_exit(returncode, stderr_lines, dump_format, head, tail):
    # DETAIL, HINT and CONTEXT lines can quote row values: they never reach a message, nor a quoted value.
    said = [line for line in stderr_lines if not line.lower().startswith(_QUOTING_LINES)]
    last = hide_values(said[-1]) if said else ""
    # PostgreSQL's hints name what to change ("increase max_locks_per_transaction"), not rows.
    hints = [line.split(":", 1)[1].strip() for line in stderr_lines if line.lower().startswith("hint:")]
    if hints and last:
        last += f" (HINT: {hide_values(hints[-1])})"
    if returncode < 0:
        raise ForgeError(f"pg_dump was killed by signal {-returncode}" + (f": {last}" if last else ""))
    if returncode != 0:
        raise ForgeError(f"pg_dump failed (exit {returncode}): {last or 'no error output'}")
    if dump_format == "plain" and PLAIN_DUMP_MARKER not in tail:
        raise ForgeError("pg_dump output ended without PostgreSQL's 'dump complete' marker; the dump is truncated")
    if dump_format == "custom" and not head.startswith(CUSTOM_DUMP_MAGIC):
        raise ForgeError("pg_dump output is not a custom-format archive")


def _drain(stream, lines):
    for raw in stream:
        text = raw.decode("utf-8", "replace").strip()
        if text:
            lines.append(text)
            del lines[:-20]


def _stop(proc):
    """The dump command and what it started: it runs in a session of its own."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()


def _unlink_quietly(path):
    if not path:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _iso(timestamp):
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


def _parse_iso(text):
    return datetime.datetime.fromisoformat(text).timestamp()
