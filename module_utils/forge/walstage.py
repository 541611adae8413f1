"""Staging WAL segments from Barman's archive into a scratch directory ahead of a replay."""

import contextlib
import os
import shutil
import stat
import threading

from .barman import SEGMENT_NAME_RE, WAL_BUCKET_RE
from .errors import ForgeError

# What the stager keeps ready ahead of the replay on the scratch disk, however much WAL the
# archive holds: 32 segments of the default 16 MiB (16 made no difference in the bench).
STAGE_BYTES = 512 << 20
# Staging stops before it leaves less free than this on the scratch file system (often Barman's
# own, where a full disk would stop the WAL streaming).
STAGE_KEEP_FREE = 1 << 30


class WalStager:
    """Copies the WAL segments a recovery replays from Barman's archive into the scratch
    directory in a thread: while Barman copies the base backup, then ahead of the replay. Each
    is written under a temporary name, fsynced, then renamed, so a staged name always holds a
    whole segment and PostgreSQL's own fsync of it finds nothing left to write.

    The replay takes a staged segment with one rename and copies any other from the archive
    itself (ScratchCluster._read_wal_from), so the stager only ever saves time: it never decides
    what is replayed, and when it fails it stops and the replay reads the archive.
    restore_command leaves the name it was last asked for in ``.asked``: the stager drops what
    the replay has passed and skips ahead to it, so a stager that fell behind catches up
    instead of staging segments nobody reads. It holds at most STAGE_BYTES (``ahead``
    segments at most) and stops before the disk gets short."""

    def __init__(self, archive, directory, first, ahead=None):
        self.archive = archive
        self.directory = directory
        self.first = first  # a callable: the base backup's first segment (asked in the thread)
        self.ahead = ahead
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        os.mkdir(self.directory, 0o700)
        self._thread = threading.Thread(target=self._run, name="forge-wal-stager", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
        shutil.rmtree(self.directory, ignore_errors=True)

    def segments(self, first):
        """The archive's segments from ``first`` on, on its timeline, in replay order."""
        timeline = first[:8]
        names = []
        for bucket in sorted(os.listdir(self.archive)):
            if WAL_BUCKET_RE.match(bucket) and bucket.startswith(timeline) and bucket >= first[:16]:
                names += [name for name in os.listdir(os.path.join(self.archive, bucket))
                          if SEGMENT_NAME_RE.match(name) and name.startswith(bucket) and name >= first]
        return sorted(names)

    def _source(self, name):
        return os.path.join(self.archive, name[:16], name)

    def _run(self):
        try:
            first = self.first()
            if not SEGMENT_NAME_RE.match(first or ""):
                return
            names = self.segments(first)
            if not names:
                return
            size = max(1, os.stat(self._source(names[0])).st_size)
            limit = max(2, STAGE_BYTES // size)
            limit = min(limit, self.ahead) if self.ahead else limit
            for name in names:
                step = self._next_step(name, limit, size)
                if step is None:
                    return
                if step == "stage":
                    self._stage(name)
        except (OSError, ForgeError):
            return  # the replay copies from the archive whatever is not staged

    def _asked(self):
        try:
            with open(os.path.join(self.directory, ".asked")) as handle:
                asked = handle.read(64).strip()
        except OSError:
            return None
        return asked if SEGMENT_NAME_RE.match(asked) else None

    @staticmethod
    def _passed(name, asked, or_at=False):
        """Whether the replay has gone past ``name`` (or is at it). A name on another timeline
        says nothing: PostgreSQL asks for a newer timeline's segment first when one exists."""
        if asked is None or asked[:8] != name[:8]:
            return False
        return name <= asked if or_at else name < asked

    def _next_step(self, name, limit, size):
        """"skip" once the replay has asked for ``name`` (it copies it from the archive itself),
        "stage" when there is room for it, None when stopped or short of disk."""
        while not self._stop.is_set():
            asked = self._asked()
            if self._passed(name, asked, or_at=True):
                return "skip"
            staged = []
            for entry in os.listdir(self.directory):
                if not SEGMENT_NAME_RE.match(entry):
                    continue
                if self._passed(entry, asked):  # behind the replay: never read
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.directory, entry))
                else:
                    staged.append(entry)
            if len(staged) < limit:
                disk = os.statvfs(self.directory)
                return "stage" if disk.f_bavail * disk.f_frsize >= size + STAGE_KEEP_FREE else None
            self._stop.wait(0.05)
        return None

    def _stage(self, name):
        partial = os.path.join(self.directory, f".{name}.partial")  # never a name PostgreSQL asks for
        source = os.open(self._source(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            status = os.fstat(source)
            size = status.st_size
            if not stat.S_ISREG(status.st_mode):
                raise OSError(f"{name} in Barman's archive is not a regular file")
            copy = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                offset = 0
                while offset < size:  # in the kernel: the segment never passes through Python
                    sent = os.sendfile(copy, source, offset, size - offset)
                    if sent == 0:
                        raise OSError(f"{name} shrank while it was staged")
                    offset += sent
                os.fsync(copy)
            finally:
                os.close(copy)
        finally:
            os.close(source)
        os.rename(partial, os.path.join(self.directory, name))
