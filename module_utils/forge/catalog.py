"""What is in a backup directory: names, manifests, and which files are good.

Naming follows the runbook: ``<db>_<YYYYMMDD_HHMMSS>.sql.gz`` (``.sql.gz.enc``
when encrypted); ours adds ``.sql.zst`` and ``.dump`` (pg_dump custom format).
Beside each of our backups: ``<file>.manifest.json`` and ``<file>.sha256``.

One trust rule for every reader (selection, drill, retention, off-site): a
backup is *good* only when its manifest is signed with the key of the
configured passphrase (see signing.py), names the exact database, matches the
file's size, is not dated in the future, and, where encryption is required,
describes an encrypted file. A file without such a manifest is never chosen,
counted or deleted automatically; an operator may still name it, and it is
then restored as UNVERIFIED. Manifests written before signing existed
(version 1) count when their HMAC over the whole encrypted file verifies.
"""

import datetime
import hashlib
import hmac
import json
import os
import re
import stat
import time

from . import signing
from .errors import ForgeError

MANIFEST_SUFFIX = ".manifest.json"
CHECKSUM_SUFFIX = ".sha256"
MANIFEST_VERSION = 2
LEGACY_MANIFEST_VERSION = 1
# Clocks of the backup host and the restoring host may differ a little; a
# backup dated further ahead than this was not made by a sane clock.
FUTURE_TOLERANCE_SECONDS = 300

EXTENSIONS = {
    ".sql.gz": ("plain", "gzip"),
    ".sql.zst": ("plain", "zstd"),
    ".dump": ("custom", "none"),
}
_NAME_RE = re.compile(r"^(?P<stem>.+)_(?P<ts>\d{8}_\d{6})(?P<ext>\.sql\.gz|\.sql\.zst|\.dump)(?P<enc>\.enc)?\Z")
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"


def sanitized(database):
    return re.sub(r"[^A-Za-z0-9_.-]", "_", database)


def file_stem(database):
    """The database name as it appears in file, lock and metrics names.

    A name that needs no replacement is used as it is (the runbook's
    ``infer_forge_20260207_143215.sql.gz``). Any other gets a short hash of the
    exact name, so ``we"ird db`` and ``we_ird_db`` never share a file name, a
    lock or a retention list.
    """
    clean = sanitized(database)
    if clean == database:
        return clean
    return f"{clean}-{hashlib.sha256(database.encode('utf-8')).hexdigest()[:8]}"


def extension_for(dump_format, compression, encrypted):
    for ext, pair in EXTENSIONS.items():
        if pair == (dump_format, compression):
            return ext + (".enc" if encrypted else "")
    raise ValueError(f"no file name for format {dump_format} with compression {compression}")


_SUFFIX_RE = re.compile(r"(?P<ext>\.sql\.gz|\.sql\.zst|\.dump)(?P<enc>\.enc)?\Z")


class TrustPolicy:
    """What this reader accepts as a good backup.

    ``passphrase`` (bytes) checks manifest signatures and the HMAC of version 1
    manifests; without it no manifest can be authenticated, so nothing is good.
    ``require_encryption``: unencrypted files are never good.
    ``check_signatures=False`` is for read-only reports on hosts without the
    passphrase (the checklist): a signed manifest counts without its signature
    being checked, and nothing is ever deleted or restored on that basis.
    """

    def __init__(self, passphrase=None, require_encryption=False, now=None, check_signatures=True, retired=()):
        self.passphrase = passphrase
        self.require_encryption = require_encryption
        self.now = now
        self.check_signatures = check_signatures
        # Key rotation: passphrases of earlier keys. They prove and decrypt the backups they
        # signed (so those restore, leave by retention and go off site); nothing new uses them.
        self.retired = tuple(p for p in retired if p and p != passphrase)

    @classmethod
    def unchecked(cls):
        return cls(check_signatures=False)

    @property
    def key(self):
        return signing.signing_key(self.passphrase) if self.passphrase else None

    def retired_key(self, key_id):
        """(key, passphrase) of the retired key with this id, or None."""
        for passphrase in self.retired:
            key = signing.signing_key(passphrase)
            if signing.key_id(key) == key_id:
                return key, passphrase
        return None

    def like(self, **changes):
        """This policy with some rules changed (a file named by hand is judged on its own)."""
        values = dict(passphrase=self.passphrase, require_encryption=self.require_encryption, now=self.now,
                      check_signatures=self.check_signatures, retired=self.retired)
        values.update(changes)
        return TrustPolicy(**values)

    def current_time(self):
        return time.time() if self.now is None else self.now


NO_MANIFEST = "no manifest"


class BackupFile:
    """One backup on disk and what we know about it.

    ``match`` is a match of our naming scheme; files named otherwise (the
    runbook's ``backup_encrypted.sql.gz.enc``) are described by their suffix
    alone and have no timestamp or database stem.

    ``manifest`` is set only once the manifest is authenticated; ``raw_manifest``
    is what the file says; ``problem`` says why the backup is not good.
    """

    def __init__(self, directory, name, match, policy=None):
        self.directory = directory
        self.name = name
        self.path = os.path.join(directory, name)
        named = "stem" in match.re.groupindex
        self.stem = match.group("stem") if named else None
        self.timestamp = datetime.datetime.strptime(match.group("ts"), TIMESTAMP_FORMAT) if named else None
        self.extension = match.group("ext")
        self.encrypted = bool(match.group("enc"))
        self.dump_format, self.compression = EXTENSIONS[self.extension]
        self.size = os.lstat(self.path).st_size
        self.policy = policy or TrustPolicy()
        self.manifest = None
        self.raw_manifest = None
        self.problem = None
        self.content_verified = False
        # Set when a retired key proved the manifest: its passphrase decrypts the file.
        self.retired_key_id = None
        self.key_passphrase = None
        # Set when the manifest is signed with a key no configured passphrase has.
        self.unknown_key_id = None
        self._evaluate()

    @property
    def manifest_path(self):
        return self.path + MANIFEST_SUFFIX

    @property
    def checksum_path(self):
        return self.path + CHECKSUM_SUFFIX

    @property
    def finished_at(self):
        """When the backup was finished (epoch): the manifest's end, else the name's time, else mtime."""
        ended = _ended_at(self.manifest or self.raw_manifest)
        if ended is not None:
            return ended
        if self.timestamp is not None:
            return self.timestamp.timestamp()
        return os.path.getmtime(self.path)

    @property
    def runbook_format(self):
        """Made by the runbook's own commands: gzip SQL, maybe openssl-encrypted."""
        return self.extension == ".sql.gz"

    @property
    def manifest_error(self):
        """Why the manifest is not trusted; None when it is or when there is none."""
        return None if self.problem in (None, NO_MANIFEST) else self.problem

    @property
    def may_restore_unverified(self):
        """Named by an operator, may this file be restored as UNVERIFIED?

        Yes when nothing can be proven about it up front (no manifest, or one
        written before signing); never when its signed manifest contradicts it
        (changed, wrong key, other size or database).
        """
        return self.problem == NO_MANIFEST or self.legacy or self.signature_unchecked

    @property
    def good(self):
        """Counts for selection, retention and off-site: see the module docstring."""
        return self.problem is None and self.manifest is not None

    def _evaluate(self):
        policy = self.policy
        self.legacy = False
        # Signed, but no passphrase here to check it: not good, yet nothing contradicts the file.
        self.signature_unchecked = False
        # Version 1 only: the HMAC over the whole encrypted file, checked when the file is named.
        self.legacy_hmac = None
        raw = _load_manifest(self.manifest_path)
        if raw is None:
            self.problem = NO_MANIFEST
            return
        if isinstance(raw, str):
            self.problem = raw
            return
        problem = manifest_problem(raw, self)
        if problem:
            self.problem = problem
            return
        self.raw_manifest = raw
        if raw["manifest_version"] == LEGACY_MANIFEST_VERSION:
            # Its HMAC covers the file's bytes but not the manifest: name, database, date and row
            # counts could be replayed from any other old backup. Never chosen automatically.
            self.legacy = True
            expected = raw.get("encryption") if self.encrypted else None
            expected = expected.get("hmac_sha256") if isinstance(expected, dict) else None
            self.legacy_hmac = expected if signing.is_hex(expected, 64) else None
            self.problem = ("manifest predates signing (version 1): it proves at most the file, not what the "
                            "manifest says")
            return
        problem = self._signature_problem(raw, policy)
        if problem:
            self.problem = problem
            return
        if policy.require_encryption and not self.encrypted:
            self.problem = "not encrypted, and encryption is required here"
            return
        now = policy.current_time()
        dated = max(filter(None, [_ended_at(raw), self.timestamp.timestamp() if self.timestamp else None]),
                    default=None)
        if dated is not None and dated > now + FUTURE_TOLERANCE_SECONDS:
            when = datetime.datetime.fromtimestamp(dated).strftime("%Y-%m-%d %H:%M:%S")
            self.problem = f"dated in the future ({when}); never taken as the latest"
            return
        self.manifest = raw

    def _signature_problem(self, raw, policy):
        if not policy.check_signatures:
            return None if isinstance(raw.get("signature"), dict) else "manifest is not signed; it cannot be trusted"
        if not policy.passphrase:
            self.signature_unchecked = True
            return "manifest signature not checked: no passphrase given"
        outcome = signing.check(raw, policy.key)
        if outcome == signing.SIGNATURE_WRONG_KEY:
            retired = policy.retired_key(raw["signature"]["key_id"])
            if retired is not None:
                outcome = signing.check(raw, retired[0])
                if outcome == signing.SIGNATURE_OK:
                    self.retired_key_id, self.key_passphrase = raw["signature"]["key_id"], retired[1]
        if outcome == signing.SIGNATURE_MISSING:
            return "manifest is not signed; it cannot be trusted (a signature removed is a manifest changed)"
        if outcome == signing.SIGNATURE_WRONG_KEY:
            self.unknown_key_id = raw["signature"]["key_id"]
            return (f"wrong passphrase: the manifest was signed with key {raw['signature']['key_id']}, "
                    f"this passphrase is key {signing.key_id(policy.key)}"
                    + (", and no retired passphrase has that key" if policy.retired else
                       f" (after a key rotation, put the old passphrase in {signing.RETIRED_ENV})"))
        if outcome == signing.SIGNATURE_MISMATCH:
            return "manifest was changed after the backup: its signature does not match"
        return None

    def check_legacy_hmac(self, passphrase):
        """Prove a version 1 file by its HMAC (one full read); returns the passphrase that
        proved it. The reader of old code dropped a trailing CR from the passphrase file,
        openssl keeps it: a file written then is tried both ways."""
        if not self.legacy_hmac:
            return None
        encryption = self.raw_manifest.get("encryption") or {}
        iterations = encryption.get("kdf_iterations", 10000)
        if not isinstance(iterations, int) or isinstance(iterations, bool) or not 1 <= iterations <= 10_000_000:
            raise ForgeError(f"{self.name}: manifest has an impossible kdf_iterations {iterations!r}")
        candidates = [passphrase] + ([passphrase.rstrip(b"\r")] if passphrase.endswith(b"\r") else [])
        try:
            with open(self.path, "rb") as handle:
                header = handle.read(16)
                if len(header) < 16 or not header.startswith(b"Salted__"):
                    raise ForgeError(f"{self.name}: not in openssl enc format, but its manifest says it is encrypted")
                macs = [hmac.new(signing.legacy_file_mac_key(candidate, header[8:16], iterations),
                                 digestmod=hashlib.sha256) for candidate in candidates]
                digest = hashlib.sha256()
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    header, chunk = b"", header + chunk
                    digest.update(chunk)
                    for mac in macs:
                        mac.update(chunk)
        except OSError as exc:
            raise ForgeError(f"{self.name}: cannot read the file: {exc.strerror}") from None
        if not hmac.compare_digest(digest.hexdigest(), self.raw_manifest["sha256"]):
            raise ForgeError(f"{self.name}: checksum mismatch; the file is damaged or was changed after the backup")
        for candidate, mac in zip(candidates, macs, strict=True):
            if hmac.compare_digest(mac.hexdigest(), self.legacy_hmac):
                self.content_verified = True
                return candidate
        raise ForgeError(f"{self.name}: HMAC does not match: wrong passphrase, or the file and its (version 1, "
                         "unsigned) manifest were changed together")

    def as_dict(self):
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "timestamp": self.timestamp.strftime(TIMESTAMP_FORMAT) if self.timestamp else None,
            "encrypted": self.encrypted,
            "format": self.dump_format,
            "compression": self.compression,
            "has_manifest": self.manifest is not None,
        }


def manifest_problem(manifest, backup):
    """What is structurally wrong with a manifest (before any signature check)."""
    known_versions = (MANIFEST_VERSION, LEGACY_MANIFEST_VERSION)
    if not isinstance(manifest, dict) or manifest.get("manifest_version") not in known_versions:
        return "manifest has an unknown version"
    if manifest.get("file") != backup.name:
        return f"manifest describes {manifest.get('file')!r}, not {backup.name!r}"
    if manifest.get("size") != backup.size:
        return (f"file is {backup.size} bytes but its manifest says {manifest.get('size')}: the file is damaged, "
                "truncated or was replaced")
    if not signing.is_hex(manifest.get("sha256"), 64):
        return "manifest has no sha256"
    if not isinstance(manifest.get("database"), str):
        return "manifest names no database"
    return None


# A planted manifest is read only up to this size. About 75 bytes a table: 64 MiB holds the
# row counts of some 800,000 tables (100,008 tables took 2.19 MB), and a backup whose manifest
# would not fit fails instead of writing what verify, restore and drill would then refuse.
MAX_MANIFEST_BYTES = 64 << 20


def _load_manifest(path):
    """The manifest's JSON object; None when there is none; a string saying why it is unusable.

    A planted manifest may be a FIFO, a link to /dev/zero, huge or absurdly nested:
    only a regular file of reasonable size is read, and no parse error escapes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unreadable manifest: {exc.strerror}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "manifest is not a regular file"
        if info.st_size > MAX_MANIFEST_BYTES:
            return f"manifest is {info.st_size} bytes; no manifest of ours is that large"
        data = os.read(fd, MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        return f"unreadable manifest: {exc.strerror}"
    finally:
        os.close(fd)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        return f"unreadable manifest: {' '.join(str(exc).split())[:200]}"
    return manifest if isinstance(manifest, dict) else "manifest is not a JSON object"


def _ended_at(manifest):
    try:
        return datetime.datetime.fromisoformat(manifest["ended_at"]).timestamp()
    except (TypeError, KeyError, ValueError):
        return None


def scan(directory, database, policy):
    """Backups of ``database`` in ``directory``, newest first, judged by ``policy``.

    Files are matched by name, then by the exact database their manifest
    records: a file whose manifest names another database is not listed.
    Only regular files count: a symlink is never a backup, so retention can
    never be tricked into deleting something outside the directory.
    """
    stems = {file_stem(database), sanitized(database)}
    found = []
    for name in os.listdir(directory):
        match = match_name(name)
        if not match or match.group("stem") not in stems:
            continue
        try:
            mode = os.lstat(os.path.join(directory, name)).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            continue
        backup = BackupFile(directory, name, match, policy)
        recorded = (backup.raw_manifest or {}).get("database")
        if recorded is not None and recorded != database:
            continue
        if recorded is None and match.group("stem") != file_stem(database):
            continue
        found.append(backup)
    found.sort(key=lambda backup: (backup.timestamp, backup.name), reverse=True)
    return found


def match_name(name):
    """The name's parts when it is in our scheme with a real date and time, else None.
    A planted ``db_20260100_000000.sql.gz`` (day 0) is no backup: it must not stop a scan."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    try:
        datetime.datetime.strptime(match.group("ts"), TIMESTAMP_FORMAT)
    except ValueError:
        return None
    return match


def parse_name(name):
    """(stem, timestamp) of a name in our scheme, or None: for listings of files that are
    not on this host, such as an off-site target's."""
    match = match_name(name)
    if match is None:
        return None
    return match.group("stem"), datetime.datetime.strptime(match.group("ts"), TIMESTAMP_FORMAT)


def open_backup(path, policy):
    """Describe one backup file given by path, whatever its name, or return None
    when its suffix is not one we can restore."""
    directory, name = os.path.split(os.path.abspath(path))
    match = match_name(name) or _SUFFIX_RE.search(name)
    if match is None:
        return None
    return BackupFile(directory, name, match, policy)


def is_partial_name(name, stem):
    """Temporary files of an unfinished run of the database whose stem is ``stem``:
    ``.<stem>_<ts>.<ext>.partial-<pid>`` and the atomic-write temporaries of its manifest and
    checksum. The whole name is matched, stem included: `.acc_src_<ts>...` is another database's
    running backup, never a leftover of `acc`."""
    match = _PARTIAL_NAME.fullmatch(name)
    backup = _NAME_RE.match(match.group("backup")) if match else None
    return backup is not None and backup.group("stem") == stem


# A run's own temporaries: `.<backup name>.partial-<pid>` and write_atomic's
# `.<backup name>[.manifest.json|.sha256].<random>.tmp`; nothing else.
_PARTIAL_NAME = re.compile(r"\.(?P<backup>.+_\d{8}_\d{6}(?:\.sql\.gz|\.sql\.zst|\.dump)(?:\.enc)?)"
                           r"(?:\.partial-\d+|(?:\.manifest\.json|\.sha256)?\.[^.]+\.tmp)")


class RetentionPlan:
    def __init__(self):
        self.keep = {}
        self.remove = []

    def as_dict(self):
        return {
            "keep": [{"name": name, "reasons": reasons} for name, reasons in self.keep.items()],
            "remove": [backup.name for backup in self.remove],
        }


def plan_retention(backups, now, retention_days, min_keep, keep_daily=0, keep_weekly=0, keep_monthly=0):
    """Decide which good backups to delete.

    A backup is deleted only when it is older than ``retention_days`` (the
    runbook's rule) and no keep rule holds it: the ``min_keep`` newest good
    backups are always kept, and GFS keeps the newest backup of each of the
    last ``keep_daily`` days, ``keep_weekly`` ISO weeks and ``keep_monthly``
    months that have a backup. Files that are not good are never touched.
    """
    plan = RetentionPlan()
    good = [backup for backup in backups if backup.good]
    good.sort(key=lambda backup: backup.timestamp, reverse=True)

    def hold(backup, reason):
        plan.keep.setdefault(backup.name, []).append(reason)

    for backup in good[:min_keep]:
        hold(backup, "min_keep")
    for count, reason, key in (
        (keep_daily, "daily", lambda ts: ts.date()),
        (keep_weekly, "weekly", lambda ts: ts.isocalendar()[:2]),
        (keep_monthly, "monthly", lambda ts: (ts.year, ts.month)),
    ):
        seen = set()
        for backup in good:
            period = key(backup.timestamp)
            if period in seen:
                continue
            if len(seen) >= count:
                break
            seen.add(period)
            hold(backup, reason)
    cutoff = now - datetime.timedelta(days=retention_days)
    for backup in good:
        if backup.name in plan.keep:
            continue
        if backup.timestamp < cutoff:
            plan.remove.append(backup)
        else:
            hold(backup, f"younger than {retention_days} days")
    return plan
