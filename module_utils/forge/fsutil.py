"""Atomic, private file writes and the helpers around them."""

import errno
import json
import math
import os
import tempfile

from .errors import ForgeError

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def pin_malloc_mmap_threshold(threshold=128 * 1024):
    """Keep glibc from raising its mmap threshold as the stream runs.

    glibc raises the threshold each time a large mmapped block is freed; the
    multi-megabyte buffers of a stream then come from the heap and fragment
    it, so resident memory grows with the size of the backup (measured: a
    drill's peak went from 54 to 76 MB between a 0.2 and a 2 GB database).
    Setting the threshold once turns that adjustment off and keeps memory flat.
    """
    try:
        import ctypes

        m_mmap_threshold = -3
        ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, threshold)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to pin


def human_size(num_bytes):
    """Size as ``du -h`` prints it: 2.3M, 17M, 4.0K (rounded up, base 1024)."""
    value = float(num_bytes)
    for unit in ("", "K", "M", "G", "T", "P"):
        if value < 1024 or unit == "P":
            if unit == "":
                return str(int(value))
            if value < 10:
                return f"{math.ceil(value * 10) / 10:.1f}{unit}"
            return f"{math.ceil(value)}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data, mode=PRIVATE_FILE_MODE):
    """Write bytes or text to ``path`` via a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def explain_os_error(exc, action, path):
    """Turn an OSError into a one-line ForgeError."""
    if exc.errno == errno.ENOSPC:
        return ForgeError(f"disk full while {action} {path}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ForgeError(f"permission denied while {action} {path}")
    return ForgeError(f"{exc.strerror or exc} while {action} {path}")


def ensure_private_dir(path, create=True):
    """Check that ``path`` is a real, writable directory with mode 0700.

    A symlink is refused: an operator who points BACKUP_DIR at a link to
    somewhere else would otherwise write customer data to a place no
    permission check covers. Returns a note when the mode was tightened.
    """
    if os.path.islink(path):
        raise ForgeError(f"backup directory {path} is a symlink to {os.path.realpath(path)}; "
                         "point it at the real directory")
    if not os.path.exists(path):
        if not create:
            raise ForgeError(f"backup directory {path} does not exist")
        try:
            os.makedirs(path, mode=PRIVATE_DIR_MODE)
        except OSError as exc:
            raise explain_os_error(exc, "creating", path) from None
        os.chmod(path, PRIVATE_DIR_MODE)
        return f"created {path} with mode 0700"
    if not os.path.isdir(path):
        raise ForgeError(f"backup directory {path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ForgeError(f"backup directory {path} is not writable by this user")
    mode = os.stat(path).st_mode & 0o777
    if mode != PRIVATE_DIR_MODE:
        try:
            os.chmod(path, PRIVATE_DIR_MODE)
        except PermissionError:
            raise ForgeError(f"backup directory {path} has mode {mode:04o} and cannot be "
                             "tightened to 0700 by this user") from None
        return f"tightened {path} from {mode:04o} to 0700"
    return None


def trusted_program(paths):
    """The first of ``paths`` that is a root-owned executable nobody else can write to, or
    None: a program the engine runs must not be one a less privileged user could replace."""
    import stat

    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_uid == 0 and not info.st_mode & 0o022 \
                and info.st_mode & 0o111:
            return path
    return None


def free_bytes(path):
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


class DirectoryLock:
    """An exclusive ``flock`` on a lock file; released when the process dies."""

    def __init__(self, path, wait_seconds=0, what="backup", log=None):
        self.path = path
        self.wait_seconds = wait_seconds
        self.what = what
        self.log = log
        self._fd = None

    def __enter__(self):
        import fcntl
        import time

        fd = _open_lock_file(self.path)
        deadline = time.monotonic() + max(0, self.wait_seconds)
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said and self.log and self.wait_seconds > 0:
                    # A run that waits says so, or a slow night looks like a hang.
                    self.log(f"Waiting up to {self.wait_seconds} s for another {self.what} to finish "
                             f"({_read_holder(fd)}lock {self.path})")
                    said = True
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise ForgeError(f"another {self.what} is already running ({holder}lock {self.path})",
                                     locked=True) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return False


def _open_lock_file(path):
    """The lock file, opened without following a link and refused unless it is a plain file: a
    link, FIFO or directory someone planted there is no lock, and is never written through."""
    import stat

    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, PRIVATE_FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ForgeError(f"the lock {path} is a link; nothing was done") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise ForgeError(f"the lock {path} is not a plain file; nothing was done") from None
        raise ForgeError(f"cannot open the lock {path}: {exc.strerror}; nothing was done") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ForgeError(f"the lock {path} is not a plain file; nothing was done")
    return fd


def _read_holder(fd):
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f"pid {pid}, " if pid.isdigit() else ""


def read_small_file(path, limit=1 << 20):
    """The text of a record another user may have written (a report, a metrics file), or
    None: never through a link, never from a FIFO or device that would block or never end,
    and at most ``limit`` bytes, so root reading it cannot be made to hang or fill memory."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = handle.read(limit + 1)
    if len(data) > limit:
        return None
    return data.decode("utf-8", errors="replace")


def read_json_object(path):
    """A JSON object from ``path``, or {} when it is missing, unreadable or not an object
    (state and report files that a previous run may not have written)."""
    text = read_small_file(path)
    try:
        data = json.loads(text) if text is not None else None
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
