"""What is in a backup directory: names, manifests, and which files are good.

Naming follows the runbook: ``<db>_<YYYYMMDD_HHMMSS>.sql.gz`` (``.sql.gz.enc``
when encrypted); ours adds ``.sql.zst`` and ``.dump`` (pg_dump custom format).
Beside each of our backups: ``<file>.manifest.json`` and ``<file>.sha256``.
"""

import datetime
import json
import os
import re
import stat

MANIFEST_SUFFIX = ".manifest.json"
CHECKSUM_SUFFIX = ".sha256"
MANIFEST_VERSION = 1

EXTENSIONS = {
    ".sql.gz": ("plain", "gzip"),
    ".sql.zst": ("plain", "zstd"),
    ".dump": ("custom", "none"),
}
_NAME_RE = re.compile(r"^(?P<stem>.+)_(?P<ts>\d{8}_\d{6})(?P<ext>\.sql\.gz|\.sql\.zst|\.dump)(?P<enc>\.enc)?$")
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"


def file_stem(database):
    """The database name as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", database)


def extension_for(dump_format, compression, encrypted):
    for ext, pair in EXTENSIONS.items():
        if pair == (dump_format, compression):
            return ext + (".enc" if encrypted else "")
    raise ValueError(f"no file name for format {dump_format} with compression {compression}")


_SUFFIX_RE = re.compile(r"(?P<ext>\.sql\.gz|\.sql\.zst|\.dump)(?P<enc>\.enc)?$")


class BackupFile:
    """One backup on disk and what we know about it.

    ``match`` is a match of our naming scheme; files named otherwise (the
    runbook's ``backup_encrypted.sql.gz.enc``) are described by their suffix
    alone and have no timestamp or database stem.
    """

    def __init__(self, directory, name, match):
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
        self.manifest = None
        self.manifest_error = None
        self._load_manifest()

    @property
    def manifest_path(self):
        return self.path + MANIFEST_SUFFIX

    @property
    def checksum_path(self):
        return self.path + CHECKSUM_SUFFIX

    @property
    def finished_at(self):
        """When the backup was finished (epoch): the manifest's end, else the name's time, else mtime."""
        if self.manifest and self.manifest.get("ended_at"):
            return datetime.datetime.fromisoformat(self.manifest["ended_at"]).timestamp()
        if self.timestamp is not None:
            return self.timestamp.timestamp()
        return os.path.getmtime(self.path)

    @property
    def runbook_format(self):
        """Made by the runbook's own commands: gzip SQL, maybe openssl-encrypted."""
        return self.extension == ".sql.gz"

    @property
    def good(self):
        """Counts for retention and restore: a valid manifest, or a runbook-format file."""
        if self.manifest is not None:
            return True
        return self.runbook_format and self.manifest_error is None

    def _load_manifest(self):
        try:
            with open(self.manifest_path, encoding="utf-8") as handle:
                manifest = json.load(handle)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.manifest_error = f"unreadable manifest: {exc}"
            return
        problem = manifest_problem(manifest, self)
        if problem:
            self.manifest_error = problem
        else:
            self.manifest = manifest

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
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
        return "manifest has an unknown version"
    if manifest.get("file") != backup.name:
        return f"manifest describes {manifest.get('file')!r}, not {backup.name!r}"
    if manifest.get("size") != backup.size:
        return f"file is {backup.size} bytes but its manifest says {manifest.get('size')}"
    if not isinstance(manifest.get("sha256"), str) or len(manifest["sha256"]) != 64:
        return "manifest has no sha256"
    return None


def scan(directory, database=None):
    """Backups in ``directory`` (of ``database`` if given), newest first.

    Only regular files count: a symlink is never a backup, so retention can
    never be tricked into deleting something outside the directory.
    """
    stem = file_stem(database) if database is not None else None
    found = []
    for name in os.listdir(directory):
        match = _NAME_RE.match(name)
        if not match or (stem is not None and match.group("stem") != stem):
            continue
        try:
            mode = os.lstat(os.path.join(directory, name)).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            continue
        found.append(BackupFile(directory, name, match))
    found.sort(key=lambda backup: (backup.timestamp, backup.name), reverse=True)
    return found


def parse_name(name):
    """(stem, timestamp) of a name in our scheme, or None: for listings of files that are
    not on this host, such as an off-site target's."""
    match = _NAME_RE.match(name)
    if match is None:
        return None
    return match.group("stem"), datetime.datetime.strptime(match.group("ts"), TIMESTAMP_FORMAT)


def open_backup(path):
    """Describe one backup file given by path, whatever its name, or return None
    when its suffix is not one we can restore."""
    directory, name = os.path.split(os.path.abspath(path))
    match = _NAME_RE.match(name) or _SUFFIX_RE.search(name)
    if match is None:
        return None
    return BackupFile(directory, name, match)


def is_partial_name(name, stem):
    """Temporary files of an unfinished run: ``.<stem>_<ts>.<ext>.partial-<pid>`` and
    the atomic-write temporaries of manifests and checksums."""
    if not name.startswith("." + stem + "_"):
        return False
    return ".partial-" in name or name.endswith(".tmp")


class RetentionPlan:
    def __init__(self):
        self.keep = {}
        self.remove = []

    def as_dict(self):
        return {
            "keep": [{"name": name, "reasons": reasons} for name, reasons in self.keep.items()],
            "remove": [backup.name for backup in self.remove],
        }


def plan_retention(backups, now, retention_days, min_keep=7, keep_daily=0, keep_weekly=0, keep_monthly=0):
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
