"""Proving a backup file before anything trusts it: choosing the newest good backup, its
checksum and signed manifest, the passphrase that opens it, and the plaintext it streams (each
chunk checked as it passes, the file's end proven), without touching any database."""

import hashlib
import hmac
import os
import re
import tempfile

from . import catalog, compress, opensslenc
from .errors import ForgeError

READ_SIZE = 1 << 20
# Compressed input per step while streaming: pg_dump output compresses about
# 9:1, so this keeps each decompressed step near 600 KiB.
STREAM_READ_SIZE = 1 << 16
PLAIN_DUMP_MARKER = b"-- PostgreSQL database dump complete"


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


def opening_passphrase(backup, candidates, kdf_iterations=None):
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
