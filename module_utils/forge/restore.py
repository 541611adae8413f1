"""The restore engine: pick a backup, verify it, stream it into a database.

Before any database is touched the manifest's signature is checked (see
catalog.py). The file is then opened once and streamed: bytes -> SHA-256 ->
decrypt -> decompress -> psql/pg_restore, with bounded memory and no plaintext
on disk. The SHA-256 of exactly the bytes that were streamed is compared with
the manifest at the end, so a file swapped or changed after the check is
caught. Everything lands in a side database that takes the target's name only
when complete and checked; a failure at any point leaves the target as it was.
"""

import hashlib
import hmac
import json
import os
import re
import subprocess
import tempfile
import threading
import time

from . import catalog, compress, opensslenc, signing
from .errors import ForgeError, database_error, hide_values, statement_line
from .fsutil import pin_malloc_mmap_threshold
from .pgconn import (
    PassFile,
    client_major_version,
    count_rows_in_parallel,
    passed_fds,
    runs_in_container,
    runs_through_wrapper,
    with_container_env,
)

READ_SIZE = 1 << 20
# Compressed input per step while streaming: pg_dump output compresses about
# 9:1, so this keeps each decompressed step near 600 KiB.
STREAM_READ_SIZE = 1 << 16
PLAIN_DUMP_MARKER = b"-- PostgreSQL database dump complete"
DEFAULT_SESSION_SETTINGS = {"maintenance_work_mem": "256MB", "synchronous_commit": "off"}


def select_backup(backup_dir, database=None, path=None, policy=None):
    """The backup to restore: ``path`` (which must lie inside ``backup_dir``), or
    the newest good backup of ``database`` (see catalog's trust rule)."""
    policy = policy or catalog.TrustPolicy()
    if path:
        if not os.path.isabs(path):
            path = os.path.join(backup_dir, path)
        real_dir = os.path.realpath(backup_dir)
        real_path = os.path.realpath(path)
        if os.path.commonpath([real_dir, real_path]) != real_dir:
            raise ForgeError(f"{path} is outside the backup directory {backup_dir}; refusing to restore it")
        if not os.path.isfile(real_path):
            raise ForgeError(f"backup file {path} does not exist")
        # A file the operator names is judged on its own: the policy's rules for
        # automatic choice (encryption required, not in the future) do not apply.
        by_name = policy.like(require_encryption=False, now=float("inf"))
        backup = catalog.open_backup(real_path, by_name)
        if backup is None:
            raise ForgeError(f"{os.path.basename(path)} is not a backup we can restore "
                             "(expected .sql.gz, .sql.zst or .dump, optionally .enc)")
        backup.skipped_newer = []
        return backup
    if not database:
        raise ForgeError("give either a backup file or a database whose newest backup to restore")
    if not os.path.isdir(backup_dir):
        raise ForgeError(f"backup directory {backup_dir} does not exist")
    backups = catalog.scan(backup_dir, database, policy)
    good = [b for b in backups if b.good]
    if not good:
        detail = f"; newest {backups[0].name}: {backups[0].problem}" if backups else ""
        hint = " (name a file to restore it as UNVERIFIED)" if backups and backups[0].may_restore_unverified else ""
        raise ForgeError(f"no good backup of {database!r} in {backup_dir}{detail}{hint}")
    # A retired key only reads: whoever still holds it could sign a file dated tonight, so a backup
    # under the current key is always chosen over one under a retired key, whatever their dates.
    current = [b for b in good if not b.retired_key_id]
    chosen = max(current or good, key=lambda b: (b.finished_at, b.name))
    # Newer files that are not good are reported: a drill that silently tested
    # an older backup would hide that last night's one is broken.
    chosen.skipped_newer = [f"{b.name}: {b.problem}" for b in backups
                            if not b.good and b.timestamp > chosen.timestamp]
    return chosen


VERIFIED = "VERIFIED"
UNVERIFIED = "UNVERIFIED"


class VerifyReport(dict):
    def passed(self, name):
        self.setdefault("checks", {})[name] = "passed"

    def skipped(self, name, why):
        self.setdefault("checks", {})[name] = "skipped"
        self.setdefault("skipped_checks", []).append(f"{name}: {why}")

    @property
    def verified(self):
        return self.get("verdict") == VERIFIED


def verify_file(backup, passphrase=None, database=None, read=True, kdf_iterations=None):
    """Check a backup without touching any database. Raises ForgeError on the first problem.

    A backup with an authenticated manifest: its SHA-256 is compared (every byte
    read) when ``read``, verdict VERIFIED. A file without one, named by the
    operator: read through (decrypt, decompress, completion marker) when
    ``read``, verdict UNVERIFIED, since it is intact but nothing proves what it
    should hold. A version 1 manifest's HMAC is always checked (one full read).
    With ``read`` off, the restore's stream makes the same checks. ``kdf_iterations`` decrypts
    a file whose manifest does not record its count (see kdf_iterations_of).
    """
    report = VerifyReport(file=backup.path, format=backup.dump_format, compression=backup.compression,
                          encrypted=backup.encrypted, has_manifest=backup.raw_manifest is not None)
    if backup.encrypted and not passphrase:
        raise ForgeError(f"{backup.name} is encrypted; a passphrase file is needed to restore it")
    if not backup.good and not backup.may_restore_unverified:
        raise ForgeError(f"{backup.name}: {backup.problem}")
    if database:
        recorded = (backup.manifest or backup.raw_manifest or {}).get("database")
        if recorded is not None and recorded != database:
            raise ForgeError(f"{backup.name} is a backup of database {recorded!r}, not {database!r}")
        if recorded is None and backup.stem is not None and backup.stem != catalog.file_stem(database):
            raise ForgeError(f"{backup.name} is named for database {backup.stem!r}, not {database!r}")
    if not backup.good:
        report["verdict"] = UNVERIFIED
        report.skipped("signature", backup.problem)
        if backup.legacy_hmac:
            # The passphrase that proved it decrypts it (see check_legacy_hmac).
            backup.legacy_passphrase = passphrase = backup.check_legacy_hmac(passphrase)
            report.passed("hmac")
            report.passed("sha256")
        if read:
            read_through(backup, passphrase, kdf_iterations)
            report.passed("decrypt" if backup.encrypted else "readable")
            report.passed("decompress")
            if backup.dump_format == "plain":
                report.passed("completion_marker")
        else:
            report.skipped("content", "checked while streaming into the database")
        return report
    report["verdict"] = VERIFIED
    report.passed("signature")
    if read:
        prove_checksum(backup, report)
    return report


def prove_checksum(backup, report, keep_copy=False):
    """Read the whole file and compare its SHA-256 with the manifest's. With ``keep_copy`` the bytes
    are copied, as they are hashed, into an unnamed file of our own beside it: every later read
    (open_backup_file) reads that copy, so nothing done to the file once it was read, renamed over,
    rewritten in place or appended to, can reach the database."""
    with open_backup_file(backup) as handle:
        if not keep_copy:
            check_digest(backup, handle)
        else:
            try:
                copy = tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(backup.path)))
                try:
                    check_digest(backup, handle, sink=copy)
                    copy.flush()
                except BaseException:
                    copy.close()
                    raise
            except OSError as exc:
                raise ForgeError(f"{backup.name}: cannot make a private copy to restore from: "
                                 f"{exc.strerror}") from None
            release_private_copy(backup)
            backup.private_copy = copy
    report.passed("sha256")


def release_private_copy(backup):
    copy = getattr(backup, "private_copy", None)
    if copy is not None:
        copy.close()
        backup.private_copy = None


def open_backup_file(backup):
    """The backup file, opened (never through a symlink) for everything that reads it; once its
    checksum was proven with a private copy, that copy, read from its start."""
    copy = getattr(backup, "private_copy", None)
    if copy is not None:
        return os.fdopen(os.open(f"/proc/self/fd/{copy.fileno()}", os.O_RDONLY), "rb")
    try:
        return os.fdopen(os.open(backup.path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
    except OSError as exc:
        raise ForgeError(f"{backup.name}: cannot open it: {exc.strerror}") from None


def check_digest(backup, handle, digest=None, sink=None):
    """Read the rest of ``handle`` into ``digest`` (a new SHA-256 by default), and into ``sink``
    when given, and compare it with the manifest's; a mismatch is the one message for a damaged
    or changed file."""
    digest = digest or hashlib.sha256()
    for chunk in iter(lambda: handle.read(READ_SIZE), b""):
        digest.update(chunk)
        if sink is not None:
            sink.write(chunk)
    expected = (backup.manifest or {}).get("sha256")
    if expected and not hmac.compare_digest(digest.hexdigest(), expected):
        raise ForgeError(f"{backup.name}: checksum mismatch; the file is damaged or was changed after the backup")


_MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd", "none": b"PGDMP"}


class _StartCheck:
    """Looks at the first plaintext bytes: after decryption with a wrong
    passphrase they are noise, not the compressor's magic number."""

    def __init__(self, backup):
        self.backup = backup
        self.head = b""
        self.done = False

    def feed(self, data):
        if self.done:
            return
        self.head += data[:8]
        magic = _MAGIC[self.backup.compression]
        if len(self.head) < len(magic):
            return
        self.done = True
        if not self.head.startswith(magic):
            kind = {"none": "a custom-format dump"}.get(self.backup.compression, f"{self.backup.compression} data")
            if self.backup.encrypted:
                raise ForgeError(f"{self.backup.name}: wrong passphrase: the decrypted start is not {kind}")
            raise ForgeError(f"{self.backup.name}: not {kind}; the file is damaged or is not a backup")

    def finish(self):
        if not self.done:
            raise ForgeError(f"{self.backup.name}: the file is too short to be a backup")


def kdf_iterations_of(backup, configured=None):
    """The PBKDF2 iterations that decrypt ``backup``: the count its manifest records (signed, or
    for version 1 proven by the HMAC), else the configured one (BACKUP_KDF_ITER), else openssl's."""
    manifest = backup.manifest or (backup.raw_manifest if backup.legacy else None) or {}
    encryption = manifest.get("encryption")
    recorded = encryption.get("kdf_iterations") if isinstance(encryption, dict) else None
    if recorded is None:
        return configured or opensslenc.PBKDF2_ITERATIONS
    if isinstance(recorded, bool) or not isinstance(recorded, int) \
            or not 1 <= recorded <= opensslenc.MAX_KDF_ITERATIONS:
        raise ForgeError(f"{backup.name}: manifest has an impossible kdf_iterations {recorded!r}")
    return recorded


def _opening_passphrase(backup, candidates, kdf_iterations=None):
    """The first of ``candidates`` under which the file decrypts to its format's magic number;
    the first candidate when none does (its restore then fails with "wrong passphrase")."""
    magic = _MAGIC[backup.compression]
    iterations = kdf_iterations_of(backup, kdf_iterations)
    with open_backup_file(backup) as handle:
        head = handle.read(64)
    for passphrase in candidates:
        try:
            if opensslenc.Decryptor(passphrase, iterations).update(head).startswith(magic):
                return passphrase
        except ForgeError:
            continue
    return candidates[0]


def plaintext_chunks(backup, passphrase, read_size=None, report=None, kdf_iterations=None):
    """The file's dump bytes, decrypted and decompressed, checked on the way: a wrong
    passphrase, damage and truncation each raise a one-line ForgeError. For a file with
    an authenticated manifest the SHA-256 of exactly these bytes is compared at the end
    (and, when decoding failed half way, over the whole file: a changed file is named as
    such rather than as a decoding error)."""
    decryptor = (opensslenc.Decryptor(passphrase, kdf_iterations_of(backup, kdf_iterations))
                 if backup.encrypted else None)
    decompressor = compress.decompressor_for(backup.compression)
    start = _StartCheck(backup)
    digest = hashlib.sha256() if backup.manifest else None
    tail = b""
    with open_backup_file(backup) as handle:
        try:
            for chunk in iter(lambda: handle.read(read_size or STREAM_READ_SIZE), b""):
                if digest is not None:
                    digest.update(chunk)
                if decryptor is not None:
                    chunk = decryptor.update(chunk)
                start.feed(chunk)
                for data in decompressor.pieces(chunk):
                    tail = (tail + data[-256:])[-256:]
                    yield data
            if decryptor is not None:
                try:
                    last = decryptor.finalize()
                except ForgeError:
                    raise ForgeError(f"{backup.name}: damaged file: decryption failed at its end (truncated or "
                                     "changed)") from None
                start.feed(last)
                for data in decompressor.pieces(last):
                    tail = (tail + data[-256:])[-256:]
                    yield data
            start.finish()
        except Exception as exc:
            if digest is not None:
                check_digest(backup, handle, digest)
            if isinstance(exc, ForgeError):
                raise
            raise ForgeError(_describe_stream_error(backup, exc)) from None
        if digest is not None:
            check_digest(backup, handle, digest)  # the handle is at its end: this only compares
            if report is not None:
                report.passed("sha256")
    _check_stream_end(backup, decompressor, tail)


def restricted(chunks):
    """A plain dump may run SQL, never psql commands such as ``\\!``.

    The stream is put in psql's restricted mode (``\\restrict``, psql 15.14 and later) with a key
    the file cannot know, so any backslash command in it fails the restore. pg_dump's own
    ``\\restrict KEY``/``\\unrestrict KEY`` lines (whole lines only) become empty lines: psql
    does not nest them, and an empty line keeps psql's line numbers (see _restricted_error).
    """
    # Our line ends with the newline the buffer starts with, so every pg_dump line,
    # the first included, is found as "\n" + line.
    yield b"\\restrict " + os.urandom(16).hex().encode()
    chunks = iter(chunks)
    buffer = b"\n"
    for data in chunks:
        buffer += data
        if len(buffer) >= 65536:
            break
    own = re.search(rb"\n\\restrict ([A-Za-z0-9]+)(\r?\n)", buffer)
    lines = []
    if own:
        key, end = own.group(1), own.group(2)
        lines = [b"\n\\restrict " + key + end, b"\n\\unrestrict " + key + end]
    hold = max((len(line) for line in lines), default=1)

    def clean(data):
        for line in lines:
            data = data.replace(line, b"\n\n")
        return data

    buffer = clean(buffer)
    for data in chunks:
        buffer = clean(buffer + data)
        # Keep the last bytes back: one of the lines may continue in the next chunk.
        if len(buffer) > hold:
            yield buffer[:len(buffer) - hold]
            buffer = buffer[len(buffer) - hold:]
    yield buffer


def read_through(backup, passphrase, kdf_iterations=None):
    """Read every byte of a file without a manifest: decrypt, decompress, completion marker."""
    for _chunk in plaintext_chunks(backup, passphrase, READ_SIZE, kdf_iterations=kdf_iterations):
        pass


class RestoreOptions:
    def __init__(self, backup_dir="/backups", passphrase_file=None, jobs=None, force=False, create=True,
                 owner=None, session_settings=None, psql_command=None, pg_restore_command=None, verify=True,
                 comment=None, keep_previous=True, require_encryption=None, check_counts=True,
                 kdf_iterations=None, passphrase=None, allow_unverified=True, retired_passphrases_file=None,
                 retired_passphrases=(), stall_timeout=300):
        self.backup_dir = backup_dir
        self.passphrase_file = passphrase_file
        # The passphrase itself, instead of its file (a module's vault value); it wins over the file.
        self.passphrase = passphrase
        # Key rotation: earlier passphrases, which read (prove and decrypt) the backups they made.
        self.retired_passphrases_file = retired_passphrases_file
        self.retired_passphrases = list(retired_passphrases or ())
        self.jobs = jobs
        self.force = force
        self.create = create
        self.owner = owner
        self.session_settings = DEFAULT_SESSION_SETTINGS if session_settings is None else session_settings
        self.psql_command = list(psql_command or ["psql"])
        self.pg_restore_command = list(pg_restore_command or ["pg_restore"])
        self.verify = verify
        self.comment = comment
        # A forced restore renames the database it replaces instead of dropping it.
        self.keep_previous = keep_previous
        # Like the backup side: with a passphrase, encrypted backups are expected.
        self.require_encryption = (bool(passphrase_file or passphrase) if require_encryption is None
                                   else bool(require_encryption))
        # Compare the restored copy's row counts with the manifest before it goes live.
        self.check_counts = check_counts
        # A named file without a signed manifest restores as UNVERIFIED (the CLI's exit 3); the
        # module refuses it unless asked, so a playbook's "ok" always means a proven backup.
        self.allow_unverified = allow_unverified
        # PBKDF2 iterations for an encrypted file whose manifest does not record them (BACKUP_KDF_ITER).
        self.kdf_iterations = opensslenc.kdf_iterations(kdf_iterations)
        if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
            raise ForgeError(f"jobs must be a whole number >= 1, got {jobs!r}")
        # psql or pg_restore taking no input and none of its sessions working on the server for this
        # long (or one waiting this long for a lock) is stopped, and the restore ends naming it.
        if isinstance(stall_timeout, bool) or not isinstance(stall_timeout, int) or stall_timeout < 2:
            raise ForgeError(f"stall_timeout must be a whole number >= 2, got {stall_timeout!r}")
        self.stall_timeout = stall_timeout


IN_PROGRESS_COMMENT = "infer-forge restore in progress into "
PREVIOUS_COMMENT = "infer-forge: {target} as it was before the restore of {file} at {when}"
MAX_IDENTIFIER_BYTES = 63
SWAP_ATTEMPTS = 5


class Restorer:
    """Restores a verified backup without ever putting the target at risk.

    Every restore goes into a side database first. Only when the stream ended
    complete and the row counts match the manifest does the side database take
    the target's name: for a new target by one rename, for a target that has
    tables (force) by two renames in one transaction, the old database keeping
    a ``_before_restore_<time>`` name (or dropped when keep_previous is off).
    Any failure before that drops the side database; the target is untouched.
    An existing empty target is restored into directly, in one transaction.
    """

    def __init__(self, options, settings, log=None):
        self.options = options
        self.settings = settings
        self.log = log or (lambda line: None)
        self._passphrase = None
        self._retired = None
        # The client's sessions carry a name of this restore alone: the stall watch finds them by it.
        self._client_name = f"infer-forge-restore-{os.urandom(6).hex()}"

    @property
    def jobs(self):
        """pg_restore jobs for an unencrypted custom-format dump: one per CPU unless set."""
        return self.options.jobs or compress.default_workers()

    def configured_passphrase(self):
        if self._passphrase is None:
            self._passphrase = signing.load_passphrase(self.options.passphrase, self.options.passphrase_file)
        return self._passphrase

    def retired_passphrases(self):
        if self._retired is None:
            self._retired = signing.load_keyring(self.options.retired_passphrases,
                                                 self.options.retired_passphrases_file)
        return self._retired

    def policy(self):
        return catalog.TrustPolicy(self.configured_passphrase(), require_encryption=self.options.require_encryption,
                                   retired=self.retired_passphrases())

    def select(self, database=None, path=None):
        return select_backup(self.options.backup_dir, database, path, self.policy())

    def passphrase(self, backup):
        if not backup.encrypted:
            return None
        if getattr(backup, "legacy_passphrase", None):
            return backup.legacy_passphrase
        if getattr(backup, "key_passphrase", None):
            return backup.key_passphrase  # a retired key proved its manifest: that key made the file
        if not (self.options.passphrase_file or self.options.passphrase):
            raise ForgeError(f"{backup.name} is encrypted; a passphrase file is needed to restore it")
        if backup.manifest is None and not backup.legacy and self.retired_passphrases():
            # No manifest names the key (a file the runbook's commands made, or a copy brought back
            # without its manifest): the passphrase whose decryption starts like the file's format.
            return _opening_passphrase(backup, [self.configured_passphrase(), *self.retired_passphrases()],
                                       self.options.kdf_iterations)
        return self.configured_passphrase()

    # -- the restore ----------------------------------------------------------
    def restore(self, backup, target, database=None, check_mode=False):
        import psycopg

        # Before the first large buffer, not after.
        pin_malloc_mmap_threshold()
        started = time.monotonic()
        check_target_name(target)
        self._check_client(backup)
        if self.options.verify:
            # The file's SHA-256 (or a file without a manifest) is proven while it streams; check
            # mode streams nothing, so it reads the file here.
            report = verify_file(backup, self.passphrase(backup), database, read=check_mode,
                                 kdf_iterations=self.options.kdf_iterations)
        else:
            report = VerifyReport(verdict=UNVERIFIED)
        if report.get("verdict") == UNVERIFIED and not self.options.allow_unverified:
            raise ForgeError(f"{backup.name} has no signed manifest that proves what it holds, so its restore would be "
                             "UNVERIFIED; set allow_unverified (playbooks: backup_restore_allow_unverified) to restore "
                             f"it anyway; {target} was not touched")
        passphrase = self.passphrase(backup)
        report["target"] = target
        try:
            with self.settings.connect(database=_maintenance_db(target)) as control:
                if report.get("verdict") == UNVERIFIED:
                    self._refuse_unverified_as_superuser(control, backup, target)
                if not check_mode:
                    self._lock(control, target)
                plan, objects = self._plan(control, target)
                sessions = _sessions(control, target) if plan != "new" else []
                if check_mode:
                    report.update(changed=True, target_state=f"would {_PLAN_WORDS[plan]}",
                                  sessions=[_describe_session(item) for item in sessions])
                    if plan == "replace":
                        report["previous_database"] = (_previous_name(target) if self.options.keep_previous
                                                       else None)
                    return report
                where = {"new": f"{target} was not created",
                         "empty": f"{target} is unchanged (still empty)",
                         "replace": f"{target} is unchanged ({objects}, as before)"}[plan]
                if self.options.verify and self._proven_before_streaming(backup):
                    try:
                        prove_checksum(backup, report, keep_copy=True)
                    except ForgeError as exc:
                        raise ForgeError(f"{exc.message}; {where}") from None
                self._drop_stale_sides(control, target)
                side = self._create_side(control, target, plan != "new")
                try:
                    self.log(f"Restoring {backup.name} into {side} (the side database for {target})")
                    try:
                        self._into(backup, side, passphrase, report)
                    finally:
                        release_private_copy(backup)
                    self._compare_counts(backup, side, report)
                    if plan == "new":
                        self._rename_new(control, side, target)
                        report["target_state"] = "created"
                    else:
                        # An empty target holds nothing to keep.
                        keep = self.options.keep_previous and plan == "replace"
                        report.update(self._swap(control, side, target, backup, keep))
                        if plan == "empty":
                            report["target_state"] = "replaced the empty database"
                except BaseException as exc:
                    self._drop(control, side)
                    if isinstance(exc, (ForgeError, psycopg.Error)):
                        raise ForgeError(f"{_one_line(exc)}; {where}") from None
                    raise
        except psycopg.Error as exc:
            raise ForgeError(f"{_one_line(exc)}; nothing was changed") from None
        report["changed"] = True
        report["duration"] = round(time.monotonic() - started, 3)
        return report

    # -- steps ------------------------------------------------------------------
    def _refuse_unverified_as_superuser(self, control, backup, target):
        """A file nothing proves may hold any SQL (COPY ... FROM PROGRAM, DROP DATABASE of another
        database): it never runs where a superuser logged in. Root's wrapper logs in as a role that
        is none. RESTORE_OWNER does not make a superuser login safe: the file's own `SET ROLE NONE`
        takes the session back to the login."""
        client = self.options.psql_command if backup.dump_format == "plain" else self.options.pg_restore_command
        if runs_through_wrapper(client):
            return
        row = control.execute("SELECT rolname FROM pg_roles WHERE rolname IN (current_user, %s) AND rolsuper "
                              "ORDER BY rolname = current_user DESC", (self.options.owner,)).fetchone()
        if row is not None:
            raise ForgeError(f"{backup.name} has no signed manifest, and its SQL would run where the superuser "
                             f"{row[0]} is logged in: restore it with a login that is no superuser (POSTGRES_USER), "
                             f"or through the Compose wrapper; {target} was not touched")

    def _check_client(self, backup):
        """A pg_restore older than the pg_dump that wrote a custom-format file cannot read its
        header; say what to do before any database is touched, not pg_restore's own words after."""
        if backup.dump_format != "custom" or not isinstance(backup.manifest, dict):
            return
        dump_major = backup.manifest.get("pg_dump_major_version")
        if not isinstance(dump_major, int):
            return
        command = self.options.pg_restore_command
        client_major = client_major_version(command)
        if client_major < dump_major:
            where = "on this host" if command == ["pg_restore"] else f"of {' '.join(command)!r}"
            raise ForgeError(
                f"pg_restore {client_major} {where} cannot read a custom-format dump of pg_dump {dump_major}; set "
                f"RESTORE_PG_RESTORE_COMMAND (role: backup_restore_pg_restore_command) to a pg_restore {dump_major} "
                "such as 'docker exec -i <db container> pg_restore'; nothing was changed")

    def _plan(self, control, target):
        """'new', 'empty' or 'replace', and what the target holds, in words."""
        exists = control.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
        if not exists:
            if not self.options.create:
                raise ForgeError(f"target database {target!r} does not exist (set create to make it)")
            return "new", "nothing"
        with self.settings.connect(database=target) as conn:
            tables, others = conn.execute(_CONTENTS_QUERY).fetchone()
            ours = conn.info.backend_pid
        _wait_until_gone(control, ours)
        if tables == 0 and others == 0:
            return "empty", "empty"
        held = f"{tables} tables" if tables else f"{others} objects (views, sequences, functions or large objects)"
        if not self.options.force:
            raise ForgeError(f"target database {target!r} already has {held}; restoring would "
                             "overwrite data (force: true, or --force, restores beside it and swaps it in "
                             "only when complete)")
        return "replace", held

    def _lock(self, control, target):
        """One restore into a target at a time, across hosts (a session-level advisory lock)."""
        held = control.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                               ("infer-forge restore into " + target,)).fetchone()[0]
        if not held:
            raise ForgeError(f"another restore into {target!r} is running; nothing was changed")

    def _drop_stale_sides(self, control, target):
        """Side databases of a restore into ``target`` that died (server crash, kill -9).
        Safe under the advisory lock: no living restore owns them. A side is marked by its
        comment; one that died between CREATE DATABASE and COMMENT (two statements: CREATE
        DATABASE cannot run in a transaction) has no comment, only the side's exact name."""
        rows = control.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE shobj_description(oid, 'pg_database') = %s OR (shobj_description(oid, 'pg_database') IS NULL "
            "AND datname ~ '_restoring_[0-9a-f]{8}$')",
            (_in_progress_comment(target),)).fetchall()
        for name, comment in rows:
            if comment is None and name != derived_name(target, name[-len(_SIDE_SUFFIX_EXAMPLE):]):
                continue
            self.log(f"Dropping {name}, left by an interrupted restore into {target}")
            self._drop(control, name)

    def _create_side(self, control, target, exists):
        from psycopg import sql

        side = derived_name(target, f"_restoring_{os.urandom(4).hex()}")
        query = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(side))
        if self.options.owner:
            query = query + sql.SQL(" OWNER {}").format(sql.Identifier(self.options.owner))
        if exists:
            # Where the operator put the target (a tablespace of its own) is where its data goes.
            space = control.execute("SELECT t.spcname FROM pg_database d JOIN pg_tablespace t "
                                    "ON t.oid = d.dattablespace WHERE d.datname = %s", (target,)).fetchone()
            if space and space[0] != "pg_default":
                query = query + sql.SQL(" TABLESPACE {}").format(sql.Identifier(space[0]))
        try:
            control.execute(query)
            control.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(side), sql.Literal(_in_progress_comment(target))))
        except Exception as exc:  # noqa: BLE001 - psycopg errors become one line
            self._drop(control, side)
            raise ForgeError(f"cannot create database {side!r}: {' '.join(str(exc).split())}") from None
        return side

    def _compare_counts(self, backup, side, report):
        expected = (backup.manifest or {}).get("snapshot_row_counts")
        if not self.options.check_counts or expected is None:
            return
        actual = count_rows_in_parallel(lambda: self.settings.connect(database=side), self.jobs)
        problems = describe_count_mismatches(expected, actual)
        if problems:
            raise ForgeError("the restored copy does not match the backup's manifest: " + "; ".join(problems[:5]))
        report.passed("row_counts")
        report["tables_checked"] = len(actual)
        report["rows_checked"] = sum(actual.values())

    def _rename_new(self, control, side, target):
        from psycopg import sql

        try:
            with control.transaction():
                control.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(side), sql.Identifier(target)))
                control.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    sql.Identifier(target), sql.Literal(self.options.comment)))
        except Exception as exc:  # noqa: BLE001 - psycopg errors become one line
            raise ForgeError(f"cannot rename {side!r} to {target!r}: {' '.join(str(exc).split())}") from None

    def _swap(self, control, side, target, backup, keep):
        """Ends the target's sessions (saying which) and renames old away and new in, atomically."""
        import psycopg
        from psycopg import sql

        when = time.strftime("%Y%m%d_%H%M%S")
        previous = _previous_name(target, when)
        ended = []
        in_use = None
        for _attempt in range(SWAP_ATTEMPTS):
            sessions = _sessions(control, target)
            for session in sessions:
                text = _describe_session(session)
                self.log(f"Ending session on {target}: {text}")
                try:
                    control.execute("SELECT pg_terminate_backend(%s, 5000)", (session[0],))
                except psycopg.Error as exc:
                    raise ForgeError(f"cannot end session {text} on {target!r}: "
                                     f"{' '.join(str(exc).split())}") from None
                ended.append(text)
            try:
                with control.transaction():
                    control.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(target), sql.Identifier(previous)))
                    control.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(side), sql.Identifier(target)))
                    control.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(target), sql.Literal(self.options.comment)))
                    control.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(previous), sql.Literal(PREVIOUS_COMMENT.format(
                            target=target, file=backup.name, when=when))))
                break
            except psycopg.errors.ObjectInUse as exc:
                # A client reconnected between the terminate and the rename, or holds the copy open;
                # both renames rolled back together.
                in_use = " ".join(str(exc).split())
                continue
            except psycopg.Error as exc:
                raise ForgeError(f"cannot swap the restored copy in: {' '.join(str(exc).split())}") from None
        else:
            raise ForgeError(f"cannot swap the restored copy in after {SWAP_ATTEMPTS} attempts: {in_use}")
        result = {"target_state": "replaced", "sessions_ended": ended}
        if keep:
            self.log(f"Restored {backup.name} into {target}; the previous database is kept as {previous}")
            result["previous_database"] = previous
        else:
            self._drop(control, previous)
            self.log(f"Restored {backup.name} into {target}; the previous database was dropped")
            result["previous_database"] = None
        return result

    def _drop(self, control, name):
        from psycopg import sql

        try:
            control.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        except Exception as exc:  # noqa: BLE001 - the caller's error is the one to report
            self.log(f"could not drop {name}: {' '.join(str(exc).split())}")

    def _proven_before_streaming(self, backup):
        """An unencrypted file with a manifest is read whole and its SHA-256 compared before any
        byte reaches psql or pg_restore: whoever can write to the backup directory can rewrite it,
        and SQL after the file's own COMMIT would run for good before the stream's end showed the
        mismatch. The bytes proven are copied, and only the copy is restored, pg_restore --jobs
        included. An encrypted one cannot be rewritten without the passphrase, so it is proven
        while it streams (one read)."""
        return backup.manifest is not None and not backup.encrypted

    def _reads_the_file(self, backup):
        """pg_restore --jobs reads the file itself; everything else is streamed through us.
        A pg_restore in the database's container cannot open our file: it gets the stream."""
        if runs_in_container(self.options.pg_restore_command):
            return False
        return backup.dump_format == "custom" and not backup.encrypted and self.jobs > 1

    def _into(self, backup, database, passphrase, report):
        if self._reads_the_file(backup):
            self._pg_restore_file(backup, database, report)
        else:
            self._stream(backup, database, passphrase, report)

    def _env(self, target, passfile, command=None):
        env = self.settings.with_database(target).libpq_env(passfile)
        if command is not None and runs_in_container(command) and self.settings.password:
            # `docker exec -e PGPASSWORD` copies the value from our environment, never argv;
            # the in-memory password file is on this host, out of the container's reach.
            env.pop("PGPASSFILE", None)
            env["PGPASSWORD"] = self.settings.password
        settings = dict(self.options.session_settings or {})
        if self.options.owner and not runs_through_wrapper(command):
            # The dump's SQL runs with the owner's rights, not the login's (often the superuser):
            # the session takes the role as it starts, before the first statement of the file.
            settings["role"] = self.options.owner.replace("\\", "\\\\").replace(" ", "\\ ")
        if settings:
            env["PGOPTIONS"] = " ".join(f"-c {key}={value}" for key, value in settings.items())
        env["PGAPPNAME"] = self._client_name
        return env

    def _watch(self, tool, database, stop):
        return _ClientWatch(self.settings, self._client_name, database, tool, self.options.stall_timeout, stop)

    def _pg_restore_file(self, backup, target, report):
        """pg_restore --jobs needs a seekable file: it reads, through our open descriptor, the private
        copy proven before the restore, or (with verification off) the file hashed just before."""
        with open_backup_file(backup) as handle:
            if backup.manifest and getattr(backup, "private_copy", None) is None:
                check_digest(backup, handle)
                handle.seek(0)
                report.passed("sha256")
            fd = handle.fileno()
            command = self.options.pg_restore_command + [
                "--no-owner", "--no-privileges", "--exit-on-error", f"--jobs={self.jobs}",
                f"--dbname={dbname_conninfo(target)}", f"/dev/fd/{fd}"]
            with PassFile(self.settings.password) as passfile:
                proc = subprocess.Popen(command, env=self._env(target, passfile), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, pass_fds=(fd, *passed_fds(passfile)))
                watch = self._watch("pg_restore", target, proc.kill)
                watch.start()
                watch.waiting()
                try:
                    stderr = proc.communicate()[1]
                finally:
                    watch.end()
        if watch.stalled:
            raise ForgeError(f"restore stopped: {watch.stalled}")
        if proc.returncode != 0:
            raise ForgeError(f"pg_restore failed: {_first_error(stderr)}")

    def _stream(self, backup, target, passphrase, report):
        if backup.dump_format == "plain":
            command = self.options.psql_command + ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                                                   "-o", "/dev/null", "-f", "-"]
        else:
            command = self.options.pg_restore_command + ["--no-owner", "--no-privileges", "--exit-on-error",
                                                         "--single-transaction", f"--dbname={dbname_conninfo(target)}"]
        with PassFile(self.settings.password) as passfile:
            env = self._env(target, passfile, command)
            proc = subprocess.Popen(with_container_env(command), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=env, pass_fds=passed_fds(passfile))
            errors = []
            reader = threading.Thread(target=_collect, args=(proc.stderr, errors), daemon=True)
            reader.start()
            chunks = plaintext_chunks(backup, passphrase, report=report, kdf_iterations=self.options.kdf_iterations)
            restrict = backup.dump_format == "plain"
            if restrict:
                chunks = restricted(chunks)

            def psql_error(default):
                text = "".join(errors)
                return _first_error(_restricted_error(text) if restrict else text) or default

            tool = "psql" if backup.dump_format == "plain" else "pg_restore"
            watch = self._watch(tool, target, proc.kill)
            watch.start()
            # The stream is fed from a thread of its own, so that a write the watch cannot free (a
            # client whose process was killed while a child of it still holds the pipe, as root's
            # wrapper does under sudo) never holds the restore: this thread stops waiting instead.
            feeder = _Feeder(chunks, proc, watch)
            try:
                feeder.start()
                while feeder.is_alive() and not (watch.stalled and feeder.wait_seconds() > 2):
                    feeder.join(timeout=0.5)
                if not feeder.is_alive() and feeder.error is None:
                    watch.waiting()
                    try:
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
                _wait_for(proc, watch)
                reader.join(timeout=2 if watch.stalled else None)
            except BaseException:
                # Kill before closing stdin: psql must not commit a damaged stream.
                proc.kill()
                raise
            finally:
                watch.end()
        if watch.stalled:
            raise ForgeError(f"restore stopped: {watch.stalled}")
        if isinstance(feeder.error, BrokenPipeError):
            raise _stopped(backup, psql_error("the client exited early"))
        if feeder.error is not None:
            raise feeder.error
        if proc.returncode != 0:
            raise _stopped(backup, psql_error(f"exit {proc.returncode}"))


class _Feeder(threading.Thread):
    """Writes the restore stream into the client's stdin. A failure to produce the stream (a
    checksum that does not match, a wrong passphrase) kills the client before anything closes its
    stdin, so psql never commits a damaged stream; the error is kept for the restore to raise."""

    def __init__(self, chunks, proc, watch):
        super().__init__(name="restore-feeder", daemon=True)
        self.chunks = chunks
        self.proc = proc
        self.watch = watch
        self.error = None
        self._writing_since = None

    def wait_seconds(self):
        """How long the current write has been blocked (0 when none is)."""
        since = self._writing_since
        return 0 if since is None else time.monotonic() - since

    def run(self):
        try:
            for data in _timed(self.chunks, self.watch):
                self._writing_since = time.monotonic()
                self.proc.stdin.write(data)
                self._writing_since = None
        except BaseException as exc:  # noqa: BLE001 - handed to the restoring thread, which raises it
            if not isinstance(exc, BrokenPipeError):
                self.proc.kill()
            self.error = exc


def _timed(chunks, watch):
    """The stream's chunks; the time spent making each (reading, decrypting, decompressing) is the
    engine's own and never counted against the client."""
    chunks = iter(chunks)
    while True:
        watch.busy()
        data = next(chunks, None)
        if data is None:
            return
        watch.waiting()
        yield data


def _wait_for(proc, watch):
    """Wait for the client to exit; once the watch has stopped it, a few seconds at most (a child
    it left behind may hold its pipes, but never the restore)."""
    while True:
        try:
            proc.wait(timeout=0.5)
            return
        except subprocess.TimeoutExpired:
            if watch.stalled and watch.stopped_for() > 5:
                return


# The sessions of one restore's client (its name, in its side database), and for each that waits
# for a lock held outside the restore, who holds it: pg_restore --jobs workers wait on each other.
_CLIENT_SESSIONS = """
    SELECT a.pid, a.state, a.wait_event_type,
           (SELECT string_agg(format('pid %%s (user %%s)', b.pid, coalesce(b.usename, '?')), ', ' ORDER BY b.pid)
              FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(a.pid))
               AND b.application_name IS DISTINCT FROM %s)
      FROM pg_stat_activity a WHERE a.application_name = %s AND a.datname = %s
"""


class _ClientWatch(threading.Thread):
    """Stops a restore's client (psql, pg_restore) once nothing has moved for ``seconds``: the
    client took no input and none of its sessions worked on the server, or one of its sessions
    waited that long for a lock. A long step the server works on (an index build) is progress;
    time the engine spends reading the backup (``busy``) is never counted against the client.
    The client is killed and its sessions terminated, so its transaction rolls back."""

    def __init__(self, settings, client_name, database, tool, seconds, stop):
        super().__init__(name="restore-stall-watch", daemon=True)
        self.settings = settings
        self.client_name = client_name
        self.database = database
        self.tool = tool
        self.seconds = seconds
        self.stop = stop
        self.stalled = None
        self._stopped_at = None
        self._ours = False
        self._moved_at = time.monotonic()
        self._ended = threading.Event()

    def busy(self):
        self._ours = True

    def stopped_for(self):
        return 0 if self._stopped_at is None else time.monotonic() - self._stopped_at

    def waiting(self):
        self._moved_at = time.monotonic()
        self._ours = False

    def end(self):
        self._ended.set()
        if self.is_alive():
            self.join(timeout=10)

    def run(self):
        interval = max(0.2, min(2.0, self.seconds / 8))
        conn, lock_since = None, None
        try:
            while not self._ended.wait(interval):
                now = time.monotonic()
                try:
                    conn = conn or self.settings.connect(database=_maintenance_db(self.database),
                                                         application_name="infer-forge-restore-watch")
                    sessions = conn.execute(_CLIENT_SESSIONS, (self.client_name, self.client_name,
                                                               self.database)).fetchall()
                except Exception:  # noqa: BLE001 - no view of the server now: no judgment either
                    conn, sessions = _closed(conn), []
                    self._moved_at = now
                if any(session[1] == "active" and (session[2] not in ("Lock", "Client")
                                                   or session[2] == "Lock" and not session[3])
                       for session in sessions):
                    self._moved_at = now  # working, or waiting on another session of this restore
                holders = [session[3] for session in sessions if session[2] == "Lock" and session[3]]
                lock_since = (lock_since or now) if holders else None
                if holders:
                    self._moved_at = now  # a lock wait is bounded by its own rule, and names the holder
                if lock_since is not None and now - lock_since >= self.seconds:
                    self.stalled = f"it waited {self.seconds} s for a lock held by {holders[0]} (BACKUP_STALL_TIMEOUT)"
                elif not self._ours and now - self._moved_at >= self.seconds:
                    self.stalled = f"{self.tool} made no progress for {self.seconds} s and was stopped " \
                                   "(BACKUP_STALL_TIMEOUT)"
                if self.stalled:
                    self._stopped_at = time.monotonic()
                    self.stop()
                    _terminate(conn, self.client_name)
                    return
        finally:
            _closed(conn)


def _terminate(conn, client_name):
    """End the stalled client's sessions on the server (a client stopped in a container keeps its
    connection after its `docker exec` is killed): their transactions roll back."""
    if conn is None:
        return
    try:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s "
                     "AND usename = current_user", (client_name,))
    except Exception:  # noqa: BLE001, S110 - the side database is dropped WITH (FORCE) after this anyway
        pass


def _closed(conn):
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001, S110 - closing a broken connection
            pass
    return None


def _stopped(backup, client_error):
    """The error for a client that stopped before the stream's end. A damaged file can decompress
    into SQL that psql rejects before our checksum is reached: then the damage is the cause to name."""
    if backup.manifest:
        try:
            with open_backup_file(backup) as handle:
                check_digest(backup, handle)
        except ForgeError as exc:
            return exc
    return ForgeError(f"restore stopped: {client_error}")


def _restricted_error(text):
    """psql's messages for a stream that starts with our ``\\restrict`` line: line numbers of the file."""
    if "invalid command \\restrict" in text:
        return ("error: this psql has no \\restrict (psql 15.14, 16.10, 17.6 or later is needed to restore a file "
                "without a signed manifest safely)")
    return re.sub(r"psql:<stdin>:(\d+):", lambda match: f"psql:<stdin>:{int(match.group(1)) - 1}:", text)


_PLAN_WORDS = {"new": "create it", "empty": "restore beside the empty database and swap it in",
               "replace": "restore beside it and swap it in"}
# What a target holds: tables, and anything else a restore would replace.
_CONTENTS_QUERY = """
    SELECT count(*) FILTER (WHERE c.relkind IN ('r', 'p')),
           count(*) FILTER (WHERE c.relkind NOT IN ('r', 'p'))
           + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
           + (SELECT count(*) FROM pg_largeobject_metadata)
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg_toast%%' AND n.nspname NOT LIKE 'pg_temp%%'
"""


def check_target_name(target):
    """PostgreSQL cuts names at 63 bytes, so a longer one would name another database;
    the templates are copied into every new database."""
    if not target:
        raise ForgeError("no target database given")
    if len(target.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise ForgeError(f"target database name {target!r} is longer than PostgreSQL's 63 bytes")
    if target in ("template0", "template1"):
        raise ForgeError(f"refusing to restore into {target}: every new database is copied from it")


def _one_line(exc):
    return exc.message if isinstance(exc, ForgeError) else database_error(exc)


def describe_count_mismatches(expected, actual):
    """One line per table that is missing, extra, or has another row count than the snapshot."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = [t for t in sorted(set(expected) & set(actual)) if expected[t] != actual[t]]
    return ([f"table {t} missing after restore" for t in missing]
            + [f"table {t} not in the backup's manifest" for t in extra]
            + [f"{t}: {actual[t]} rows restored, {expected[t]} in the snapshot" for t in wrong])


def _maintenance_db(target):
    # A database cannot be renamed from a session connected to it.
    return "template1" if target == "postgres" else "postgres"


def _sessions(control, target):
    """The target's sessions: every backend a role runs there, not autovacuum, which has no role,
    which only a superuser may signal, and which PostgreSQL ends itself when the database is
    renamed; nor a parallel worker, which goes with its leader's session. The filter reads only
    columns any login sees: another role's session shows NULL in most (backend_type too), and
    must still be named."""
    return control.execute(
        "SELECT pid, usename, application_name, coalesce(client_addr::text, 'local') FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() AND usesysid IS NOT NULL "
        "AND leader_pid IS NULL ORDER BY pid", (target,)).fetchall()


def _wait_until_gone(control, pid, seconds=5.0):
    """A closed connection's backend stays in pg_stat_activity until it has finished exiting:
    wait for it, so a restore never names (or ends) its own finished session as the target's."""
    deadline = time.monotonic() + seconds
    while control.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
        if time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _describe_session(session):
    pid, user, application, client = session
    return f"pid {pid} user {user} from {client}" + (f" ({application})" if application else "")


# A side database's suffix: "_restoring_" and 8 hex digits (see _create_side).
_SIDE_SUFFIX_EXAMPLE = "_restoring_00000000"


def _in_progress_comment(target):
    return IN_PROGRESS_COMMENT + json.dumps(target)


def derived_name(target, suffix):
    """``target`` + ``suffix``, cut to PostgreSQL's 63-byte identifier limit on a character boundary."""
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode("utf-8"))
    head = target.encode("utf-8")[:room].decode("utf-8", "ignore")
    return head + suffix


def _previous_name(target, when=None):
    return derived_name(target, f"_before_restore_{when or time.strftime('%Y%m%d_%H%M%S')}")


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
        return f"{backup.name}: damaged file: decryption failed"
    if "zlib" in type(exc).__module__ or "zstd" in type(exc).__module__ or "Error -3" in text \
            or "invalid" in text.lower():
        # The passphrase was already proven by the plaintext's start (see _StartCheck).
        return f"{backup.name}: damaged file: {backup.compression} data is corrupt ({text})"
    return f"{backup.name}: {text}"


def _collect(stream, sink):
    for raw in stream:
        sink.append(raw.decode("utf-8", "replace"))
        if len(sink) > 200:
            del sink[50:150]


def _first_error(text):
    """The first ERROR/FATAL line with the statement's position, as one line.

    Row values must not reach logs or Sentry, so DETAIL, HINT and CONTEXT lines are
    left out (``Key (email)=(...)``, ``COPY orders, line 5: "..."``), values quoted in
    the error line are hidden (``invalid input syntax for type integer: "..."``), and
    of the statement's LINE only its head is kept (see errors.statement_line).
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "ERROR:" in line or "FATAL:" in line or "error:" in line:
            context = [item for item in map(statement_line, lines[index + 1:index + 3]) if item]
            return " ".join([hide_values(line)] + context)[:500]
    return hide_values(lines[-1] if lines else "")[:500]
