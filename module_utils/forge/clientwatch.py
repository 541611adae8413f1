"""Feeding a restore client (psql, pg_restore) and watching it on the server: a client that
takes no input while none of its sessions works (or one waits for a lock) is named and stopped
at its deadline, instead of hanging the restore."""

import subprocess
import threading
import time


class Feeder(threading.Thread):
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


def wait_for(proc, watch):
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


class ClientWatch(threading.Thread):
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
                    conn = conn or self.settings.connect(database=maintenance_db(self.database),
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


def maintenance_db(target):
    # A database cannot be renamed from a session connected to it.
    return "template1" if target == "postgres" else "postgres"
