"""Off-site copies of Barman's base backups and WAL with restic, to a rest-server on the NAS.

restic encrypts on the Barman host (AES-256 in counter mode with a Poly1305 MAC) before a byte
leaves it, so the NAS holds only ciphertext and never the repository password. The NAS runs
``rest-server --append-only --private-repos`` over TLS: the Barman host's login can add
snapshots to its own repository but cannot delete or rewrite one, so a compromised Barman host
cannot wipe the off-site history. ``restic check --read-data-subset`` re-reads part of the
stored data on schedule and proves it still decrypts and matches its hashes.

Runs as the barman user (``forge pitr offsite``, ``forge pitr offsite-check``, the forge_pitr
module). Secrets reach restic through its environment, never its command line: the repository
password as RESTIC_PASSWORD, the REST login as RESTIC_REST_USERNAME/RESTIC_REST_PASSWORD.
"""

import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import time
import urllib.parse

from . import records
from .barman import check_server_name
from .errors import ForgeError
from .fsutil import DirectoryLock, human_size, read_small_file, trusted_program, write_atomic
from .outcome import report_failure, write_metrics

# Only root's own restic: the engine runs as barman, and a directory barman can write to
# must not choose the program that is handed the repository password.
RESTIC_PATHS = ("/usr/bin/restic",)
SNAPSHOT_TAG = "infer-forge-pitr"
# restic's exit codes (0.17 and later).
EXIT_NO_REPOSITORY = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12
SUBSET_RE = re.compile(r"^(?:(?:100|[1-9]?[0-9])(?:\.[0-9]+)?%|[1-9][0-9]*/[1-9][0-9]*|[1-9][0-9]*[KMGT]?)\Z")


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_repository(repository):
    """(scheme, host, port) of a ``rest:`` repository; refuses what would leak or mislead.

    Only ``rest:https://`` crosses the network: over plain http the REST password travels in
    clear with every request (loopback alone is allowed, for a tunnel). The login belongs in
    PITR_OFFSITE_REST_USER/PASSWORD, never in the URL, where it would show in logs."""
    if not repository.startswith("rest:"):
        raise ForgeError(f"the off-site repository must be a rest-server (rest:https://nas:8000/<user>/), "
                         f"got {repository.split('@')[-1]!r}")
    url = urllib.parse.urlsplit(repository[len("rest:"):])
    if url.username or url.password or "@" in url.netloc:
        raise ForgeError("the off-site repository URL carries a login; set PITR_OFFSITE_REST_USER and "
                         "PITR_OFFSITE_REST_PASSWORD (role: pitr_offsite_rest_user/_password) instead")
    if url.scheme not in ("https", "http") or not url.hostname:
        raise ForgeError(f"the off-site repository must be rest:https://<host>:<port>/<user>/, got {repository!r}")
    if url.scheme == "http" and not _is_loopback(url.hostname):
        raise ForgeError(f"refusing {repository}: over http the REST password crosses the network in clear; "
                         "use https with the NAS's certificate pinned (pitr_offsite_cacert)")
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        raise ForgeError(f"the off-site repository's port is not a number: {repository!r}") from None
    return url.scheme, url.hostname, port


def probe_tls(host, port, cacert=None, timeout=15):
    """Fail fast, in one line, when the NAS does not present the pinned certificate: restic
    itself retries a certificate it does not trust for many minutes before it gives up."""
    try:
        context = ssl.create_default_context(cafile=cacert) if cacert else ssl.create_default_context()
    except (ssl.SSLError, OSError) as exc:
        raise ForgeError(f"the pinned certificate {cacert} is not a PEM certificate ({exc}); "
                         "nothing was sent") from None
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                return True
    except ssl.SSLCertVerificationError as exc:
        raise ForgeError(f"the NAS at {host}:{port} does not present the pinned certificate "
                         f"({exc.verify_message}); nothing was sent") from None
    except ssl.SSLError as exc:
        raise ForgeError(f"TLS with the NAS at {host}:{port} failed ({exc.reason or exc}); nothing was sent") from None
    except OSError as exc:
        raise ForgeError(f"cannot reach the NAS at {host}:{port}: {exc.strerror or exc}; nothing was sent") from None


class OffsiteOptions:
    def __init__(self, server, repository, password, rest_user=None, rest_password=None, cacert=None,
                 check_subset="5%", state_dir=records.PITR_REPORT_DIR, textfile_dir=None, sentry_dsn=None,
                 environment=None, cache_dir=None, timeout=6 * 3600, restic=None, lock_wait=600):
        check_server_name(server)
        if not repository:
            raise ForgeError("no off-site repository: set PITR_OFFSITE_REPOSITORY (role: pitr_offsite_host)")
        if not password:
            raise ForgeError("no repository password: set PITR_OFFSITE_PASSWORD (role: pitr_offsite_password, "
                             "from the vault)")
        if not SUBSET_RE.match(str(check_subset)):
            raise ForgeError(f"check subset must be like 5%, 1/7 or 500M (restic --read-data-subset), "
                             f"got {check_subset!r}")
        self.scheme, self.host, self.port = parse_repository(repository)
        if cacert and not os.path.isfile(cacert):
            raise ForgeError(f"the NAS's certificate {cacert} does not exist (role: pitr_offsite_cacert)")
        self.server = server
        self.repository = repository
        self.password = password
        self.rest_user = rest_user
        self.rest_password = rest_password
        self.cacert = cacert or None
        self.check_subset = str(check_subset)
        self.state_dir = state_dir
        self.textfile_dir = textfile_dir
        self.sentry_dsn = sentry_dsn
        self.environment = environment
        self.cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "restic")
        self.timeout = int(timeout)
        self.restic = restic
        # How long a copy or check waits for the one before it (the weekly check can be long).
        self.lock_wait = lock_wait


class Restic:
    """The restic command for one repository; its failures as one line."""

    def __init__(self, options):
        self.options = options
        self.program = options.restic or trusted_program(RESTIC_PATHS)
        if self.program is None:
            raise ForgeError(f"no root-owned restic in {' or '.join(RESTIC_PATHS)}; install Debian's restic")

    def environment(self):
        o = self.options
        env = {"PATH": "/usr/bin:/bin", "HOME": os.path.expanduser("~"), "LC_ALL": "C.UTF-8",
               "RESTIC_REPOSITORY": o.repository, "RESTIC_PASSWORD": o.password, "RESTIC_PROGRESS_FPS": "0.0001"}
        if o.cache_dir:
            env["RESTIC_CACHE_DIR"] = o.cache_dir
        if o.rest_user:
            env["RESTIC_REST_USERNAME"] = o.rest_user
            env["RESTIC_REST_PASSWORD"] = o.rest_password or ""
        if o.cacert:
            env["RESTIC_CACERT"] = o.cacert
        return env

    def run(self, *args, timeout=None):
        timeout = timeout or self.options.timeout
        try:
            return subprocess.run([self.program, *args], env=self.environment(), capture_output=True, text=True,
                                  timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ForgeError(f"restic {args[0]} did not finish within {timeout} s") from None

    def explain(self, proc, action):
        """restic's failure, as the one line an operator can act on."""
        o = self.options
        said = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        if proc.returncode == EXIT_NO_REPOSITORY:
            return f"no restic repository at {o.repository}"
        if proc.returncode == EXIT_WRONG_PASSWORD:
            return f"the repository password does not open {o.repository} (PITR_OFFSITE_PASSWORD)"
        if proc.returncode == EXIT_LOCKED:
            return f"{o.repository} is locked by another restic ({(said or ['?'])[-1]})"
        if any("401" in line for line in said):
            return f"the NAS refused the REST login {o.rest_user!r} (401); check PITR_OFFSITE_REST_PASSWORD"
        if any("403" in line for line in said):
            return f"the NAS forbids {action} in {o.repository} (403)"
        fatal = [line for line in said if line.startswith("Fatal:")]
        return (fatal or said or [f"exit {proc.returncode}"])[-1]

    def config_id(self):
        """The repository's id, or None when there is no repository there."""
        proc = self.run("cat", "config", "--no-lock", timeout=300)
        if proc.returncode == EXIT_NO_REPOSITORY:
            return None
        if proc.returncode != 0:
            raise ForgeError(f"cannot open the off-site repository: {self.explain(proc, 'reading')}")
        try:
            return json.loads(proc.stdout)["id"]
        except (ValueError, KeyError, TypeError):
            raise ForgeError("restic cat config returned no repository id") from None


def copy_paths(barman):
    """What a copy holds, named one by one: the base backups Barman lists as DONE and the
    filed WAL. A base backup that starts while restic reads is not among them, and neither is
    the receiver's segment in progress nor Barman's incoming and errors directories.
    Returns (paths, base backups)."""
    base = barman.directory("basebackups_directory")
    # Barman 3.13 keeps a backup's backup.info in <server>/meta, older ones in base/<id>.
    meta = os.path.join(barman.directory("backup_directory"), "meta")
    done = sorted(b["backup_id"] for b in barman.backups() if b.get("status") == "DONE")
    backups = [ident for ident in done if os.path.isdir(os.path.join(base, ident))]
    paths = [os.path.join(base, ident) for ident in backups]
    infos = [os.path.join(meta, f"{ident}-backup.info") for ident in backups]
    paths += [info for info in infos if os.path.isfile(info)]
    identity = os.path.join(barman.directory("backup_directory"), "identity.json")
    paths += [identity] if os.path.isfile(identity) else []
    return paths + [barman.directory("wals_directory")], len(backups)


class PitrOffsite:
    """``init``: the repository once, recorded; ``copy``: a snapshot of Barman's server
    directory; ``check``: restic check with a part of the data read back."""

    def __init__(self, options, barman=None, log=None, clock=time.time):
        self.options = options
        self.restic = Restic(options)
        self.barman = barman
        self.log = log or (lambda line: None)
        self.clock = clock

    # -- the repository's identity ------------------------------------------------------------
    def _state(self):
        """This host's record of its repository: {} before the first one; a record that is
        there but damaged stops every run, since it is what tells a lost repository apart."""
        path = records.pitr_offsite_state_path(self.options.state_dir, self.options.server)
        if not os.path.lexists(path):
            return {}
        text = read_small_file(path)
        try:
            state = json.loads(text) if text is not None else None
        except ValueError:
            state = None
        if not isinstance(state, dict) or not isinstance(state.get("repository_id", ""), str):
            raise ForgeError(f"the off-site record {path} is damaged; nothing was sent (it holds the id of the "
                             f"repository this host made: rewrite it from restic cat config only if "
                             f"{self.options.repository} is that repository)")
        return state

    def _record(self, **fields):
        os.makedirs(self.options.state_dir, mode=0o750, exist_ok=True)
        state = dict(self._state(), **fields)
        write_atomic(records.pitr_offsite_state_path(self.options.state_dir, self.options.server),
                     json.dumps(state, indent=2, sort_keys=True) + "\n", mode=0o640)

    def _reach(self):
        if self.options.scheme == "https":
            probe_tls(self.options.host, self.options.port, self.options.cacert)

    def _known_repository(self, record=True, read=None):
        """The repository id, checked against the one this host recorded when it made it
        (``read``: the (recorded, found) ids when the caller has read them already)."""
        recorded, found = read or (self._state().get("repository_id"), self.restic.config_id())
        if found is None and recorded:
            raise ForgeError(f"the off-site repository {recorded[:10]} that this host made is gone from "
                             f"{self.options.repository}; a new one is not made over a lost history (remove "
                             f"{records.pitr_offsite_state_path(self.options.state_dir, self.options.server)} "
                             "to start afresh)")
        if found is None:
            raise ForgeError(f"no restic repository at {self.options.repository}; "
                             "forge pitr offsite --init (the pitr role does it at deploy) makes it")
        if recorded and recorded != found:
            raise ForgeError(f"{self.options.repository} holds repository {found[:10]}, not {recorded[:10]} "
                             "that this host made; nothing was sent")
        if not recorded and record:
            self._record(repository_id=found, repository=self.options.repository)
        return found

    def init(self, check_mode=False):
        """Make the repository when there is none and none was ever recorded. (created, id)."""
        self._reach()
        recorded = self._state().get("repository_id")
        found = self.restic.config_id()
        if found is not None or recorded:
            return False, self._known_repository(record=not check_mode, read=(recorded, found))
        if check_mode:
            return True, None
        proc = self.restic.run("init", timeout=300)
        if proc.returncode != 0:
            raise ForgeError(f"restic init failed: {self.restic.explain(proc, 'creating a repository')}")
        found = self.restic.config_id()
        self._record(repository_id=found, repository=self.options.repository)
        self.log(f"Created the off-site repository {found[:10]} at {self.options.repository}")
        return True, found

    def snapshots(self):
        proc = self.restic.run("snapshots", "--json", "--no-lock", "--tag", SNAPSHOT_TAG, "--host",
                               self.options.server, timeout=600)
        if proc.returncode != 0:
            raise ForgeError(f"restic snapshots failed: {self.restic.explain(proc, 'listing')}")
        try:
            return json.loads(proc.stdout or "[]") or []
        except ValueError:
            raise ForgeError("restic snapshots returned no JSON") from None

    # -- the copy -----------------------------------------------------------------------------
    def _lock(self):
        os.makedirs(self.options.state_dir, mode=0o750, exist_ok=True)
        return DirectoryLock(os.path.join(self.options.state_dir, f".pitr_offsite_{self.options.server}.lock"),
                             wait_seconds=self.options.lock_wait, what="off-site PITR copy or check", log=self.log)

    def _locked(self, what, work, samples, success_help):
        """One copy or check under this host's lock, recorded (state, metrics, Sentry) while
        the lock is held. A run that finds another still going records nothing: a copy
        waiting for the weekly check is no failure, and must not page anyone."""
        started = time.monotonic()
        result = {"server": self.options.server, "repository": self.options.repository, "passed": False}
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self._lock())
            except ForgeError as exc:
                if not exc.details.get("locked"):
                    raise
                return dict(result, locked=True, verdict="SKIP", duration=round(time.monotonic() - started, 3),
                            reason=f"{exc.message}; this run did nothing")
            try:
                work(result)
                result["passed"] = True
            except ForgeError as exc:
                result["reason"] = exc.message
            result["duration"] = round(time.monotonic() - started, 3)
            filename, prefix = ((records.pitr_offsite_copy_metrics_filename, records.PITR_OFFSITE_COPY_PREFIX)
                                if what == "copy" else
                                (records.pitr_offsite_check_metrics_filename, records.PITR_OFFSITE_CHECK_PREFIX))
            self._finish(result, what, filename, prefix, [(n, h, result.get(key, 0)) for n, h, key in samples],
                         success_help)
        return result

    def copy(self):
        def work(result):
            self._reach()
            result["repository_id"] = self._known_repository()
            paths, done = copy_paths(self.barman)
            if not done:
                raise ForgeError(f"Barman holds no finished base backup of {self.options.server}; "
                                 "nothing worth copying yet")
            proc = self.restic.run("backup", "--json", "--host", self.options.server, "--tag", SNAPSHOT_TAG,
                                   "--retry-lock", "10m", *paths)
            summary = self._summary(proc.stdout)
            # Exit 3: some files could not be read (a segment Barman moved meanwhile); the
            # snapshot exists but is incomplete, so it is no success.
            if proc.returncode != 0 or summary is None:
                raise ForgeError(f"restic backup failed: {self.restic.explain(proc, 'adding a snapshot')}")
            result.update(snapshot=summary.get("snapshot_id", "")[:8], base_backups=done,
                          files_new=summary.get("files_new", 0), files=summary.get("total_files_processed", 0),
                          bytes_added=summary.get("data_added_packed", summary.get("data_added", 0)),
                          bytes=summary.get("total_bytes_processed", 0))
            result["reason"] = (f"snapshot {result['snapshot']}: {done} base backup(s) and the WAL, "
                                f"{result['files_new']} new of {result['files']} files, "
                                f"{human_size(result['bytes_added'])} added")

        return self._locked("copy", work, [
            ("bytes_added", "Bytes the last off-site PITR copy added to the repository (after compression).",
             "bytes_added"),
            ("files", "Files in the last off-site PITR snapshot.", "files"),
            ("base_backups", "Base backups in the last off-site PITR snapshot.", "base_backups"),
        ], "When an off-site PITR copy last succeeded.")

    @staticmethod
    def _summary(stdout):
        for line in reversed((stdout or "").splitlines()):
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and message.get("message_type") == "summary":
                return message
        return None

    # -- the check ----------------------------------------------------------------------------
    def check(self):
        def work(result):
            result["subset"] = self.options.check_subset
            self._reach()
            result["repository_id"] = self._known_repository()
            result["snapshots"] = len(self.snapshots())
            proc = self.restic.run("check", "--retry-lock", "10m", "--read-data-subset", self.options.check_subset)
            if proc.returncode != 0:
                damage = [line.strip() for line in (proc.stdout + "\n" + proc.stderr).splitlines()
                          if re.match(r"\s*(pack [0-9a-f]+|error for|error:|.*ciphertext verification)", line)]
                raise ForgeError("restic check found the repository damaged: " + damage[0] if damage else
                                 f"restic check failed: {self.restic.explain(proc, 'checking')}")
            result["reason"] = (f"{result['snapshots']} snapshot(s), {self.options.check_subset} of the data "
                                "read back and verified, no errors")

        return self._locked("check", work, [
            ("snapshots", "Snapshots of this server in the off-site repository at the last check.", "snapshots"),
        ], "When a check of the off-site PITR repository last passed.")

    # -- the way back -------------------------------------------------------------------------
    def restore(self, target, snapshot="latest"):
        """Bring a snapshot back into ``target``, a directory that must not exist yet or be
        empty: a restore never writes over anything. Barman's server directory comes back at
        its own path below ``target`` (``<target>/var/lib/barman/<server>``); every file's
        content is read back and compared (restic restore --verify)."""
        if not re.match(r"^(latest|[0-9a-f]{8,64})\Z", snapshot or ""):
            raise ForgeError(f"snapshot must be latest or a snapshot id, got {snapshot!r}")
        if os.path.islink(target) or (os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target))):
            raise ForgeError(f"{target} exists and is not an empty directory; a restore never writes over "
                             "anything, nothing was changed")
        started = time.monotonic()
        self._reach()
        self._known_repository()
        created = not os.path.exists(target)
        os.makedirs(target, mode=0o700, exist_ok=True)
        proc = self.restic.run("restore", snapshot, "--target", target, "--verify", "--host", self.options.server,
                               "--tag", SNAPSHOT_TAG)
        if proc.returncode != 0:
            if created:
                shutil.rmtree(target, ignore_errors=True)
            raise ForgeError(f"restic restore of {snapshot} failed: {self.restic.explain(proc, 'reading')}; "
                             f"{'nothing was kept' if created else target + ' may hold part of it'}")
        return {"target": target, "snapshot": snapshot, "duration": round(time.monotonic() - started, 3)}

    def restore_into_barman(self, snapshot="latest"):
        """A rebuilt Barman host takes its history back: the snapshot is restored and verified
        into a new directory in Barman's home (the same file system), then its WAL, base
        backups and their backup.info are moved into the server's own directories, each only
        where no file of that name is (what this host already streamed or backed up is never
        replaced), WAL first and each backup.info last, so Barman lists no backup before its
        files are in place; ``barman rebuild-xlogdb`` then catalogs the WAL. A snapshot of
        another database (its identity.json names another system) is refused and nothing moves.
        Returns the counts."""
        server_dir = self.barman.directory("backup_directory").rstrip("/")
        home = os.path.dirname(server_dir)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        stage = os.path.join(home, f"offsite-restore-{self.options.server}-{stamp}")
        result = self.restore(stage, snapshot)
        try:
            restored = os.path.join(stage, server_dir.lstrip("/"))
            if not os.path.isdir(restored):
                raise ForgeError(f"snapshot {snapshot} holds no {server_dir}; nothing was moved into Barman's catalog")
            _same_system(os.path.join(restored, "identity.json"), os.path.join(server_dir, "identity.json"))
            moved = {"wal_files": 0, "base_backups": 0, "already_there": 0}
            wals = self.barman.directory("wals_directory")
            for source, name in _files_below(os.path.join(restored, "wals")):
                if os.path.basename(name) != "xlog.db":
                    moved["wal_files" if _move_new(source, os.path.join(wals, name)) else "already_there"] += 1
            if moved["wal_files"]:
                self.barman.run("rebuild-xlogdb", self.options.server, timeout=3600)
            base = self.barman.directory("basebackups_directory")
            restored_base = os.path.join(restored, "base")
            for ident in sorted(os.listdir(restored_base)) if os.path.isdir(restored_base) else []:
                info = os.path.join(restored, "meta", f"{ident}-backup.info")
                target = os.path.join(base, ident)
                source = os.path.join(restored_base, ident)
                if os.path.islink(source) or not os.path.isdir(source):
                    continue  # a link in a snapshot is not a base backup, and is never followed
                if os.path.lexists(target):
                    moved["already_there"] += 1
                    continue
                os.makedirs(base, mode=0o700, exist_ok=True)
                os.rename(source, target)
                if os.path.isfile(info):
                    _move_new(info, os.path.join(server_dir, "meta", f"{ident}-backup.info"))
                moved["base_backups"] += 1
            identity = os.path.join(restored, "identity.json")
            if os.path.isfile(identity):
                _move_new(identity, os.path.join(server_dir, "identity.json"))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return dict(result, target=server_dir, **moved)

    # -- records ------------------------------------------------------------------------------
    def _finish(self, result, what, filename, prefix, samples, success_help):
        now = self.clock()
        result["verdict"] = "PASS" if result["passed"] else "FAIL"
        try:
            self._record(**{f"last_{what}": dict(result, at=now)})
        except (OSError, ForgeError) as exc:
            result["report_error"] = str(exc)
        if self.options.textfile_dir:
            samples = [("last_run_timestamp_seconds", f"When the last off-site PITR {what} ended.", now),
                       ("last_run_success", f"1 if the last off-site PITR {what} succeeded, else 0.",
                        1 if result["passed"] else 0),
                       ("duration_seconds", f"Wall time of the last off-site PITR {what}.", result["duration"]),
                       *samples]
            write_metrics(result, self.options.textfile_dir, filename(self.options.server), prefix,
                          {"server": self.options.server}, samples, now, success_help)
        if not result["passed"]:
            report_failure(result, self.options.sentry_dsn,
                           f"Off-site PITR {what} of {self.options.server} failed: {result['reason']}",
                           f"pitr-offsite-{what}", self.options.server, socket.gethostname(), self.options.environment)


def _same_system(restored, live):
    """Refuse a snapshot whose identity.json names another PostgreSQL system than the one
    this Barman server already streams: mixing two databases' WAL corrupts every recovery."""
    def systemid(path):
        text = read_small_file(path) if os.path.isfile(path) else None
        try:
            return str(json.loads(text)["systemid"]) if text else None
        except (ValueError, KeyError, TypeError):
            return None
    ours, theirs = systemid(live), systemid(restored)
    if ours and theirs and ours != theirs:
        raise ForgeError(f"the snapshot is of PostgreSQL system {theirs}, Barman streams {ours}; "
                         "nothing was moved into Barman's catalog")


def _files_below(top):
    """(path, path relative to ``top``) of every regular file below ``top``."""
    for directory, _dirs, files in os.walk(top):
        for name in sorted(files):
            path = os.path.join(directory, name)
            if os.path.isfile(path) and not os.path.islink(path):
                yield path, os.path.relpath(path, top)


def _move_new(source, target):
    """Move ``source`` to ``target`` only when nothing is there: a hard link fails on an
    existing name instead of replacing it (a rename would replace it silently). False when
    the name was taken."""
    if not stat.S_ISREG(os.lstat(source).st_mode):
        return False  # only regular files; a link is never followed into Barman's catalog
    os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        return False
    os.unlink(source)
    return True


# -- the NAS side: a prune the Barman host cannot make ----------------------------------------------

class PruneOptions:
    """restic on the repository's own directory on the NAS (never through rest-server, whose
    append-only mode stays whole for the Barman hosts), run as the directory's owner. The
    password comes for the run only (the module's no_log option) and is never stored there."""

    def __init__(self, path, password, keep_days=30, keep_last=3, timeout=6 * 3600, restic=None):
        if not path or not os.path.isabs(path):
            raise ForgeError(f"the repository to prune is a directory on this host, got {path!r}")
        if not password:
            raise ForgeError("no repository password for the prune (role: the pitr hosts' pitr_offsite_password)")
        if int(keep_days) < 1 or int(keep_last) < 1:
            raise ForgeError(f"a prune keeps at least 1 day and 1 snapshot, got {keep_days} days and {keep_last}")
        self.repository = path
        self.password = password
        self.keep_days = int(keep_days)
        self.keep_last = int(keep_last)
        self.timeout = int(timeout)
        self.restic = restic
        # What Restic reads of a repository's options; the prune runs every command with --no-cache.
        self.rest_user = self.rest_password = self.cacert = self.cache_dir = None


def _snapshot_time(snapshot):
    """A snapshot's time as restic wrote it (nanoseconds cut to what Python reads), or None."""
    raw = str(snapshot.get("time", ""))
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", raw)
    if not match:
        return None
    fraction = (match.group(2) or "")[:7]
    try:
        return datetime.datetime.fromisoformat(match.group(1) + fraction + match.group(3).replace("Z", "+00:00"))
    except ValueError:
        return None


def choose_expired(snapshots, keep_days, keep_last, now):
    """The ids of the snapshots a prune forgets: older than ``keep_days`` before ``now``, never
    one of the ``keep_last`` newest. The times given are when each snapshot arrived on the NAS
    (prune_repository): a Barman host writes any time it likes into a snapshot, and restic's own
    --keep-within counts from the newest, so one dated 2099 would have expired every real copy.
    One dated after now (a clock set back) is kept and counts for nothing."""
    dated = [(when, s["id"]) for s in snapshots for when in [_snapshot_time(s)] if when is not None and "id" in s]
    past = sorted((entry for entry in dated if entry[0] <= now), reverse=True)
    kept = {entry[1] for entry in past[:keep_last]}
    horizon = now - datetime.timedelta(days=keep_days)
    return [ident for when, ident in sorted(past) if when < horizon and ident not in kept]


def _arrivals(path, snapshots):
    """Each snapshot dated by when its file arrived on the NAS (rest-server writes it once and
    nothing rewrites it), never by the time its client wrote into it. A snapshot whose file is
    not a regular file of the repository is left out: never forgotten on a guess."""
    dated = []
    for snapshot in snapshots:
        ident = str(snapshot.get("id", ""))
        if not re.fullmatch(r"[0-9a-f]{64}", ident):
            continue
        try:
            info = os.lstat(os.path.join(path, "snapshots", ident))
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            when = datetime.datetime.fromtimestamp(info.st_mtime, datetime.UTC)
            dated.append({"id": ident, "time": when.isoformat()})
    return dated


def prune_repository(options, check_mode=False, clock=None):
    """Forget the expired snapshots (choose_expired, by arrival on the NAS) and prune the data
    only they held, so an erasure in the database reaches the off-site copy within ``keep_days``.
    One line on failure."""
    path = options.repository
    if not os.path.isfile(os.path.join(path, "config")):
        raise ForgeError(f"no restic repository at {path}; nothing was pruned")
    restic = Restic(options)
    # In check mode the listing takes no lock either: a lock is a file written into the repository.
    listed = restic.run("snapshots", "--json", "--no-cache", *(["--no-lock"] if check_mode else []), timeout=600)
    if listed.returncode != 0:
        raise ForgeError(f"cannot list the snapshots of {path}: {restic.explain(listed, 'listing')}; nothing was "
                         "pruned")
    try:
        snapshots = json.loads(listed.stdout or "[]") or []
    except ValueError:
        raise ForgeError("restic snapshots returned no JSON; nothing was pruned") from None
    now = datetime.datetime.fromtimestamp((clock or time.time)(), datetime.UTC)
    expired = choose_expired(_arrivals(path, snapshots), options.keep_days, options.keep_last, now)
    result = {"repository": path, "snapshots": len(snapshots), "expired": expired, "keep_days": options.keep_days,
              "keep_last": options.keep_last, "changed": bool(expired)}
    if check_mode or not expired:
        return result
    forgot = restic.run("forget", "--no-cache", *expired)
    if forgot.returncode != 0:
        raise ForgeError(f"restic forget in {path} stopped: {restic.explain(forgot, 'forgetting')}; restic keeps the "
                         "repository consistent, some of the expired snapshots may be forgotten; run the prune again")
    pruned = restic.run("prune", "--no-cache")
    if pruned.returncode != 0:
        raise ForgeError(f"restic prune of {path} stopped: {restic.explain(pruned, 'pruning')}; the "
                         f"{len(expired)} expired snapshot(s) are forgotten, their data stays until the next prune")
    return result
