"""Compressors that keep memory bounded and use every core.

Each compressor takes raw chunks with ``feed()`` and returns the compressed
bytes that are ready, in order; ``finish()`` returns the rest.

gzip is written by ISA-L's ``igzip`` (Debian's ``isal`` package) when it is
installed: at its levels 1-3 it compresses several times faster than zlib,
with files about the size of ``gzip -6``. Without it, parallel zlib writes one
gzip member per chunk. RFC 1952 allows a file to be a series of members and
``gunzip``, ``zcat`` and Python's gzip module read it as one stream, so the
runbook's ``gunzip < file | psql`` reads what either writes. The manifest
records which tool wrote the file.
"""

import collections
import fcntl
import os
import subprocess
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

from .errors import ForgeError
from .fsutil import trusted_program
from .pgconn import tool_env

CHUNK_SIZE = 1 << 20
# Linux's F_SETPIPE_SZ (the fcntl module names it from Python 3.10 on).
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def enlarge_pipe(fd, size=CHUNK_SIZE):
    """Give a pipe a 1 MiB buffer instead of 64 KiB: a gigabyte of dump then passes in
    sixteen times fewer wake-ups of the processes on either side. Best effort: an
    unprivileged user may be held to a smaller size, which only costs speed."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        pass


def default_workers():
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _gzip_member(data, level):
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31, 9)
    return compressor.compress(data) + compressor.flush()


class ParallelGzip:
    suffix = ".gz"
    name = "gzip"
    tool = "zlib"

    def __init__(self, level=6, workers=None):
        if not 1 <= int(level) <= 9:
            raise ForgeError(f"gzip compression level must be 1..9, got {level}")
        self.level = int(level)
        self.workers = workers or default_workers()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="gzip")
        self._pending = collections.deque()
        # Two chunks per worker keep every core busy; more would only cost memory.
        self._max_pending = self.workers * 2
        # Reads from a pipe come in pieces of any size; each member is a whole chunk,
        # so small reads cost neither ratio nor a member per read.
        self._buffer = bytearray()

    def feed(self, data):
        self._buffer += data
        while len(self._buffer) >= CHUNK_SIZE:
            self._submit(bytes(self._buffer[:CHUNK_SIZE]))
            del self._buffer[:CHUNK_SIZE]
        return self._ready()

    def _submit(self, data):
        self._pending.append(self._pool.submit(_gzip_member, data, self.level))

    def _ready(self):
        out = []
        while len(self._pending) > self._max_pending or (self._pending and self._pending[0].done()):
            out.append(self._pending.popleft().result())
        return b"".join(out)

    def finish(self):
        if self._buffer:
            self._submit(bytes(self._buffer))
            self._buffer.clear()
        out = b"".join(future.result() for future in self._pending)
        self._pending.clear()
        self._pool.shutdown(wait=True)
        return out

    def abort(self):
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._buffer.clear()
        self._pool.shutdown(wait=True)


# Only root's own igzip, never one found on PATH: the engine also runs as root
# (the modules), and a directory the backup user can write to must not choose
# the program it runs.
IGZIP_PATHS = ("/usr/bin/igzip", "/bin/igzip")
# zlib's levels 1-9 on ISA-L's 1-3: the default 4 -> 2 (the size of gzip -6, at the
# speed of pg_dump), the runbook's 6 and above -> 3.
ISAL_LEVELS = {1: 1, 2: 1, 3: 2, 4: 2, 5: 2, 6: 3, 7: 3, 8: 3, 9: 3}


def find_igzip(paths=None):
    """The path of a root-owned igzip nobody else can write to, or None."""
    return trusted_program(paths or IGZIP_PATHS)


class IsalGzip:
    """gzip by an ``igzip`` process: raw chunks go to its stdin, a thread collects its output."""

    suffix = ".gz"
    name = "gzip"
    tool = "igzip"

    def __init__(self, program, level=4, workers=None):
        if not 1 <= int(level) <= 9:
            raise ForgeError(f"gzip compression level must be 1..9, got {level}")
        self.level = ISAL_LEVELS[int(level)]
        self.workers = workers or default_workers()
        self._out = collections.deque()
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([program, "-c", f"-{self.level}", "-T", str(self.workers)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      env=tool_env())
        enlarge_pipe(self._proc.stdin.fileno())
        enlarge_pipe(self._proc.stdout.fileno())
        self._reader = threading.Thread(target=self._collect, name="igzip-out", daemon=True)
        self._reader.start()

    def _collect(self):
        read = self._proc.stdout.read1
        while True:
            data = read(CHUNK_SIZE)
            if not data:
                return
            with self._lock:
                self._out.append(data)

    def _ready(self):
        with self._lock:
            out = b"".join(self._out)
            self._out.clear()
        return out

    def feed(self, data):
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError:
            raise ForgeError(f"igzip stopped: {self._said()}") from None
        return self._ready()

    def finish(self):
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        self._reader.join()
        code = self._proc.wait()
        if code != 0:
            raise ForgeError(f"igzip failed (exit {code}): {self._said()}")
        self._proc.stderr.close()
        return self._ready()

    def _said(self):
        self._proc.wait()
        text = self._proc.stderr.read().decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else "no error output"

    def kill(self):
        """From the stall watch's thread: a stopped igzip is ended, and the write to it fails."""
        if self._proc.poll() is None:
            self._proc.kill()

    def abort(self):
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._reader.join()
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            try:
                stream.close()
            except BrokenPipeError:
                pass
        self._out.clear()


class Zstd:
    suffix = ".zst"
    name = "zstd"
    tool = "zstandard"

    def __init__(self, level=3, workers=None):
        try:
            import zstandard
        except ImportError:
            raise ForgeError("zstd compression needs python3-zstandard (Debian) or the zstandard package") from None
        if not 1 <= int(level) <= 19:
            raise ForgeError(f"zstd compression level must be 1..19, got {level}")
        self.level = int(level)
        # One zstd thread at the default level outruns pg_dump, and zstd's worker
        # threads each hold their own buffers; use them only when asked for.
        self.workers = workers or 1
        params = zstandard.ZstdCompressor(level=self.level, threads=self.workers if self.workers > 1 else 0)
        self._compressor = params.compressobj()

    def feed(self, data):
        return self._compressor.compress(data)

    def finish(self):
        return self._compressor.flush()

    def abort(self):
        pass


class NoCompression:
    """For pg_dump's custom format, which compresses by itself."""

    suffix = ""
    name = "none"
    tool = None
    level = None
    workers = 1

    def feed(self, data):
        return data

    def finish(self):
        return b""

    def abort(self):
        pass


# Defaults measured on the benchmark's dump (bench/bench.py): zlib's gzip level 4
# is within 2% of gzip -6's size at 1.4x its speed (levels 1-3 switch to a faster
# strategy and grow files by a fifth), and maps to ISA-L's level 2, which is
# smaller than gzip -6 at the speed of pg_dump; zstd level 1 is both smaller and
# twice as fast as level 3 on pg_dump output.
DEFAULT_LEVELS = {"gzip": 4, "zstd": 1}


def make_compressor(name, level=None, workers=None, gzip_tool="auto"):
    """``gzip_tool``: igzip, zlib, or auto (igzip when root's own is installed, else zlib)."""
    if name == "gzip":
        level = DEFAULT_LEVELS["gzip"] if level is None else level
        program = None if gzip_tool == "zlib" else find_igzip()
        if program is None and gzip_tool == "igzip":
            raise ForgeError(f"gzip_tool is igzip, but no root-owned igzip is in {' or '.join(IGZIP_PATHS)}; "
                             "install Debian's isal package")
        return IsalGzip(program, level, workers) if program else ParallelGzip(level, workers)
    if name == "zstd":
        return Zstd(DEFAULT_LEVELS["zstd"] if level is None else level, workers)
    if name == "none":
        return NoCompression()
    raise ForgeError(f"unknown compression {name!r}; use gzip, zstd or none")


def decompressor_for(name):
    """An object whose ``pieces(data)`` yields the plaintext of the next compressed bytes of a
    streamed read, in pieces of about CHUNK_SIZE at most however far the data expands."""
    if name == "gzip":
        return _MultiMemberGunzip()
    if name == "zstd":
        return _ZstdStream()
    if name == "none":
        return _Identity()
    raise ForgeError(f"unknown compression {name!r}")


class _Identity:
    def pieces(self, data):
        if data:
            yield data


# zstd's densest block is 4 bytes for 128 KiB, so 256 bytes of input are at most 8 MiB out;
# python-zstandard's decompressobj has no output bound of its own. Slices this small cost
# nothing measurable (234 MB of SQL: 0.136 s in 256-byte slices, 0.128 s in 64 KiB ones).
_ZSTD_SLICE = 256


class _ZstdStream:
    def __init__(self):
        import zstandard

        self._inner = zstandard.ZstdDecompressor().decompressobj()

    def pieces(self, data):
        view = memoryview(data)
        pending, size = [], 0
        for start in range(0, len(view), _ZSTD_SLICE):
            out = self._inner.decompress(view[start:start + _ZSTD_SLICE])
            if not out:
                continue
            pending.append(out)
            size += len(out)
            if size >= CHUNK_SIZE:
                joined = b"".join(pending)
                pending, size = [], 0
                for offset in range(0, len(joined), CHUNK_SIZE):
                    yield joined[offset:offset + CHUNK_SIZE]
        if pending:
            yield b"".join(pending)

    @property
    def eof(self):
        return self._inner.eof


class _MultiMemberGunzip:
    """Streaming gunzip that, like gunzip(1), reads every member of the file.

    Output is bounded: blank filler columns compress a thousandfold, so 64 KiB of
    file can be 60 MB of SQL, which is handed on a CHUNK_SIZE at a time."""

    def __init__(self):
        self._inner = zlib.decompressobj(31)
        self._in_member = False

    def pieces(self, data):
        # A full piece may leave output inside zlib with no input left: ask again.
        full = False
        while data or full:
            self._in_member = True
            piece = self._inner.decompress(data, CHUNK_SIZE)
            full = len(piece) == CHUNK_SIZE
            if piece:
                yield piece
            if self._inner.eof:
                data = self._inner.unused_data
                self._inner = zlib.decompressobj(31)
                self._in_member = full = False
            else:
                data = self._inner.unconsumed_tail

    @property
    def truncated(self):
        """True when the input stopped inside a gzip member."""
        return self._in_member
