"""Off-site copies of encrypted backups: to the company NAS over SSH (rsync), or
to a mounted encrypted USB disk.

The runbook: copies go to the NAS or to USB disks in the safe, and unencrypted
backups never leave the host. So only files that are encrypted (openssl's
``Salted__`` header, not merely an ``.enc`` name) are copied, each with its
manifest and ``.sha256``. A copy counts only once the far side has checked it
against the manifest's checksum.

The NAS is reached through a gate (farside.py): the host's key may only add new
files and ask the NAS to verify; the NAS verifies, keeps its own retention and
answers with a receipt, so a compromised backup host cannot delete or replace
a single copy there. On a USB disk this host verifies and applies retention
itself, only to our file names, and sends the manifest last (a manifest there
means "verified").
"""

import datetime
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import time

from .catalog import CHECKSUM_SUFFIX, MANIFEST_SUFFIX, TrustPolicy, file_stem, parse_name, scan
from .errors import ForgeError, last_line
from .fsutil import ensure_private_dir, fsync_dir, read_json_object, write_atomic
from .outcome import report_failure, write_metrics, write_report
from .pgconn import tool_env
from .records import OFFSITE_METRIC_PREFIX as METRIC_PREFIX
from .records import offsite_metrics_filename, offsite_state_path
from .signing import load_keyring, load_passphrase, offsite_check_key, sign_for_offsite

OPENSSL_MAGIC = b"Salted__"
CHUNK = 1024 * 1024


def is_encrypted_file(path):
    """True when the file starts with openssl enc's salt header (what our backups and
    the runbook's ``openssl enc -salt`` write)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(OPENSSL_MAGIC)) == OPENSSL_MAGIC
    except OSError:
        return False


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class OffsiteOptions:
    def __init__(self, backup_dir, target, database, retention_days=90, min_keep=7, ssh_port=22,
                 ssh_identity=None, known_hosts=None, ssh_timeout=20, require_mount=True,
                 skip_unencrypted=False, textfile_dir=None, state_dir=None, sentry_dsn=None, environment=None,
                 passphrase_file=None, passphrase=None, retired_passphrases_file=None, retired_passphrases=()):
        if not target:
            raise ForgeError("no off-site target: set OFFSITE_TARGET (user@nas:/path or a mounted USB path)")
        if not database:
            raise ForgeError("no database: set POSTGRES_DB")
        if retention_days < 1 or min_keep < 1:
            raise ForgeError("off-site retention must keep at least one day and one backup")
        self.backup_dir = backup_dir
        self.target = target
        self.database = database
        self.retention_days = retention_days
        self.min_keep = min_keep
        self.ssh_port = ssh_port
        self.ssh_identity = ssh_identity
        self.known_hosts = known_hosts
        self.ssh_timeout = ssh_timeout
        self.require_mount = require_mount
        self.skip_unencrypted = skip_unencrypted
        self.textfile_dir = textfile_dir
        self.state_dir = state_dir
        self.sentry_dsn = sentry_dsn
        self.environment = environment
        self.passphrase_file = passphrase_file
        # The passphrase itself, instead of its file (a module's vault value); it wins over the file.
        self.passphrase = passphrase
        # Key rotation: backups a retired key proves go off site like the new ones.
        self.retired_passphrases_file = retired_passphrases_file
        self.retired_passphrases = list(retired_passphrases or ())


def open_target(options):
    """``user@host:/path`` is the NAS over SSH; an absolute path is a mounted disk."""
    target = options.target
    if target.startswith("/"):
        return PathTarget(target, options.require_mount, options.backup_dir)
    userhost, sep, path = target.partition(":")
    if not sep or not path.startswith("/") or not userhost or userhost.startswith("-"):
        raise ForgeError(f"off-site target {target!r} must be user@host:/absolute/path or an absolute path")
    return SshTarget(userhost, path, options)


class PathTarget:
    """A mounted disk (the runbook's encrypted USB disks)."""

    kind = "usb"

    def __init__(self, path, require_mount, backup_dir=None):
        self.path = os.path.normpath(path)
        self.require_mount = require_mount
        self.backup_dir = backup_dir

    def describe(self):
        return self.path

    def prepare(self, create):
        if self.require_mount:
            mount = self.path
            while not os.path.ismount(mount):
                mount = os.path.dirname(mount)
            if mount == "/":
                raise ForgeError(f"{self.path} is not on a mounted disk (it would land on the root file "
                                 "system): mount the USB disk first, or set OFFSITE_REQUIRE_MOUNT=0")
            # An unplugged disk whose mount point is a directory on the backups' own disk (a data
            # disk on /srv, say): the copy would land beside the backups, which is no off-site copy.
            if self.backup_dir and os.path.isdir(self.backup_dir) and \
                    os.stat(mount).st_dev == os.stat(self.backup_dir).st_dev:
                raise ForgeError(f"{self.path} is on the same file system as the backups ({mount}), so no USB "
                                 "disk is mounted there: mount the USB disk first, or set OFFSITE_REQUIRE_MOUNT=0")
        if not os.path.isdir(self.path) and not create:
            return False
        ensure_private_dir(self.path, create=create)
        return True

    def list(self):
        return set(os.listdir(self.path)) if os.path.isdir(self.path) else set()

    def put(self, paths):
        for source in paths:
            destination = os.path.join(self.path, os.path.basename(source))
            temporary = os.path.join(self.path, f".{os.path.basename(source)}.partial-{os.getpid()}")
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with open(source, "rb") as reader, os.fdopen(fd, "wb") as writer:
                    shutil.copyfileobj(reader, writer, CHUNK)
                    writer.flush()
                    os.fsync(writer.fileno())
                os.replace(temporary, destination)
            except OSError as exc:
                _remove_quietly(temporary)
                raise ForgeError(f"copying {os.path.basename(source)} to {self.path} failed: "
                                 f"{exc.strerror or exc}") from None
        fsync_dir(self.path)

    def verify(self, checksums):
        """``checksums``: name -> sha256. Returns the names that do not match."""
        bad = []
        for name, expected in checksums.items():
            try:
                if sha256_of(os.path.join(self.path, name)) != expected:
                    bad.append(name)
            except OSError:
                bad.append(name)
        return bad

    def remove(self, names):
        for name in names:
            _remove_quietly(os.path.join(self.path, name))
        fsync_dir(self.path)

    def remote_sha256(self, name):
        return None  # a disk this host verifies itself, copy by copy

    def copy_verified(self, backup, digest, check_key=None):
        """Copy, verify here, then the manifest (``check_key`` is the NAS's alone: a disk this host
        verifies itself needs no off-site signature)."""
        self.put([backup.path, backup.checksum_path] if os.path.exists(backup.checksum_path) else [backup.path])
        if self.verify({backup.name: digest}):
            self.remove([backup.name, backup.name + CHECKSUM_SUFFIX])
            raise ForgeError(f"the copy of {backup.name} on {self.describe()} does not match its "
                             "manifest's sha256; it was removed there, nothing else changed")
        # The manifest last: on the disk, a manifest means "copied and verified".
        self.put([backup.manifest_path])

    def expire(self, names):
        self.remove([n + s for n in names for s in ("", CHECKSUM_SUFFIX, MANIFEST_SUFFIX)])
        return list(names)


class SshTarget:
    """The NAS over SSH (BatchMode, strict host keys). The backup host's key is bound on
    the NAS to ``forge nas-gate`` (see farside.py): it can upload files with rsync into the
    NAS's incoming directory and ask the NAS to verify them, nothing else. It cannot list, read, delete or overwrite
    anything there; the NAS checks each copy against its manifest, applies its own
    retention and answers with a receipt, the only view of the far side a host gets."""

    kind = "ssh"

    def __init__(self, userhost, path, options):
        self.userhost = userhost
        self.path = os.path.normpath(path)
        self.options = options
        self.receipt = None

    def describe(self):
        return f"{self.userhost}:{self.path}"

    def _ssh_argv(self):
        argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.options.ssh_timeout}",
                "-o", "StrictHostKeyChecking=yes", "-p", str(self.options.ssh_port)]
        if self.options.ssh_identity:
            argv += ["-i", self.options.ssh_identity, "-o", "IdentitiesOnly=yes"]
        if self.options.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.options.known_hosts}"]
        return argv

    def _gate(self, verb, what):
        argv = self._ssh_argv() + [self.userhost, f"infer-forge {verb}"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.options.ssh_timeout + 3600,
                              check=False, env=tool_env())
        if proc.returncode == 255:
            raise ForgeError(f"ssh to {self.userhost} failed while {what}: {last_line(proc.stderr)}")
        if proc.returncode != 0:
            raise ForgeError(f"the NAS refused {what} (exit {proc.returncode}): {last_line(proc.stderr)}; is its "
                             "offsite_target role (the nas-gate forced command) installed?")
        try:
            receipt = json.loads(proc.stdout or "{}")
        except ValueError:
            raise ForgeError(f"the NAS answered {what} with something that is not a receipt: "
                             f"{last_line(proc.stdout)[:80]!r}") from None
        if not isinstance(receipt, dict):
            raise ForgeError(f"the NAS answered {what} with something that is not a receipt")
        self.receipt = receipt
        return receipt

    def prepare(self, create):
        self._gate("receipt", "reading its last receipt")
        return True

    def list(self):
        """Names as the receipt knows them: a verified copy counts with its manifest; a
        pending one (file without manifest yet) gets its manifest sent again."""
        copies = self.receipt.get("copies") if isinstance(self.receipt.get("copies"), dict) else {}
        pending = self.receipt.get("pending") if isinstance(self.receipt.get("pending"), list) else []
        # An unverified copy of ours (sent before the NAS had its check key) gets its signed
        # manifest sent again, which the NAS then takes.
        verified = {str(n) for n, entry in copies.items() if isinstance(entry, dict) and entry.get("verified")}
        return {str(n) for n in copies} | {n + MANIFEST_SUFFIX for n in verified} | {str(n) for n in pending}

    def remote_sha256(self, name):
        """The sha256 of the NAS's copy under ``name`` when the NAS verified it; a copy it cannot
        check is no copy of ours (a signed one sent now takes its name there)."""
        entry = (self.receipt.get("copies") or {}).get(name) if isinstance(self.receipt.get("copies"), dict) else None
        return entry.get("sha256") if isinstance(entry, dict) and entry.get("verified") else None

    def put(self, paths):
        # rsync writes to a temporary name and renames, so a cut connection leaves no half file
        # under a backup's name; --chmod keeps customer data 0600 on the NAS as well. The gate
        # puts uploads in its incoming directory; only its verification moves them among the copies.
        argv = ["rsync", "--times", "--perms", "--chmod=D0700,F0600", "--ignore-existing",
                f"--timeout={self.options.ssh_timeout + 60}", "-e", shlex.join(self._ssh_argv()),
                *paths, f"{self.userhost}:"]  # the gate decides where uploads land
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=tool_env())
        if proc.returncode != 0:
            raise ForgeError(f"rsync to {self.describe()} failed (exit {proc.returncode}): {last_line(proc.stderr)}")

    def copy_verified(self, backup, digest, check_key=None):
        """Send the file, its checksum and its manifest signed for the NAS with ``check_key``
        (the copy of the manifest only: the one here stays as the backup wrote it); the NAS
        verifies and says so."""
        paths = [backup.path] + ([backup.checksum_path] if os.path.exists(backup.checksum_path) else [])
        with _ManifestForTheNas(backup, check_key) as manifest_path:
            self.put(paths + [manifest_path])
        receipt = self._gate("verify", "verifying the copy")
        entry = (receipt.get("copies") or {}).get(backup.name)
        if isinstance(entry, dict) and entry.get("verified") and entry.get("sha256") == digest:
            displaced = any(isinstance(d, dict) and d.get("name") == backup.name
                            for d in receipt.get("displaced") or [])
            return "; it took its name from a file there the NAS could not check (moved to its quarantine)" \
                if displaced else ""
        if isinstance(entry, dict) and entry.get("sha256") == digest:
            raise ForgeError(f"the NAS took {backup.name} but cannot check its signature ({entry.get('unverified')}); "
                             "it keeps the copy as unverified: give the NAS this host's check key (offsite_target "
                             "role, or docs/offsite.md, \"The NAS gate\")")
        moved = [q for q in receipt.get("quarantined") or [] if isinstance(q, dict) and q.get("name") == backup.name]
        if moved:
            raise ForgeError(f"the NAS refused the copy of {backup.name} ({moved[0].get('reason')}) and moved it to "
                             "its quarantine; nothing else changed")
        if isinstance(entry, dict):
            raise ForgeError(f"{backup.name} on {self.describe()} is not the file sent now (sha256 "
                             f"{str(entry.get('sha256'))[:16]}..., here {digest[:16]}...); an older copy under its "
                             "name stays there untouched")
        raise ForgeError(f"the NAS's receipt does not list {backup.name} as verified after the copy "
                         f"(pending: {backup.name in (receipt.get('pending') or [])})")

    def expire(self, names):
        """Retention on the NAS is the NAS's: a fresh verification applies it, and its
        receipt says what it expired (``names``, the host's estimate, is for check mode)."""
        receipt = self._gate("verify", "asking it to verify its copies and apply its retention")
        return sorted(str(n) for n in receipt.get("expired") or [])


class _ManifestForTheNas:
    """The backup's manifest with its off-site signature, under its own name in a private
    directory of its own (rsync sends it under that name), removed afterwards."""

    def __init__(self, backup, check_key):
        self.backup = backup
        self.check_key = check_key
        self.directory = None

    def __enter__(self):
        import tempfile

        if self.check_key is None:
            return self.backup.manifest_path
        self.directory = tempfile.mkdtemp(prefix="infer-forge-nas.")
        path = os.path.join(self.directory, os.path.basename(self.backup.manifest_path))
        write_atomic(path, json.dumps(sign_for_offsite(self.backup.manifest, self.check_key), indent=2,
                                      sort_keys=True) + "\n", mode=0o600)
        return path

    def __exit__(self, *exc):
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
        return False


class OffsiteCopy:
    def __init__(self, options, log=None, clock=time.time):
        self.options = options
        self.log = log or (lambda line: None)
        self.clock = clock

    def plan(self, target, remote_names):
        """What to copy and what to delete on the target."""
        now = datetime.datetime.fromtimestamp(self.clock())
        cutoff = now - datetime.timedelta(days=self.options.retention_days)
        # The same trust rule as restore and retention: only backups with a signed manifest leave the host.
        passphrase = load_passphrase(self.options.passphrase, self.options.passphrase_file)
        if passphrase is None:
            raise ForgeError("off-site copies need the backup passphrase (BACKUP_PASSPHRASE_FILE) to check that "
                             "each manifest is signed before it is copied")
        retired = load_keyring(self.options.retired_passphrases, self.options.retired_passphrases_file)
        policy = TrustPolicy(passphrase, now=self.clock(), retired=retired)
        local = [b for b in scan(self.options.backup_dir, self.options.database, policy) if b.good]
        # The window the target keeps: younger than its retention, or among the min_keep newest.
        wanted = [b for i, b in enumerate(local) if i < self.options.min_keep or b.timestamp >= cutoff]
        unencrypted = [b.name for b in wanted if not (b.encrypted and is_encrypted_file(b.path))]
        if unencrypted and not self.options.skip_unencrypted:
            raise ForgeError(
                f"refusing to copy unencrypted backup {unencrypted[0]} off-site"
                f"{f' (and {len(unencrypted) - 1} more)' if len(unencrypted) > 1 else ''}: unencrypted backups "
                "never leave the host; turn on backup encryption (BACKUP_PASSPHRASE_FILE / backup_encrypt), "
                "or set OFFSITE_SKIP_UNENCRYPTED=1 to copy only the encrypted ones")
        wanted = [b for b in wanted if b.name not in unencrypted]
        # A name there that holds another file (a forgery sent ahead under tomorrow's name) is
        # never taken for our copy: the NAS keeps what it has, so this is for a human to see.
        impostors = [b.name for b in wanted if target.remote_sha256(b.name) not in (None, b.manifest.get("sha256"))]
        if impostors:
            raise ForgeError(f"the NAS holds a different file under the name of {impostors[0]}"
                             f"{f' (and {len(impostors) - 1} more)' if len(impostors) > 1 else ''}; it is not this "
                             "backup and cannot be replaced from here: look at the NAS (someone with this host's key "
                             "sent it)")
        to_copy = [b for b in wanted if b.name + MANIFEST_SUFFIX not in remote_names]
        remote = _remote_backups(remote_names, file_stem(self.options.database))
        keep = {name for name, _stamp in remote[:self.options.min_keep]} | {b.name for b in wanted}
        expired = [name for name, ts in remote if name not in keep and ts < cutoff]
        return {"copy": to_copy, "expire": expired, "skipped_unencrypted": unencrypted, "remote": remote,
                "passphrase": passphrase}

    def run(self, check_mode=False):
        started = self.clock()
        result = {"target": None, "database": self.options.database, "copied": [], "expired": [],
                  "bytes_copied": 0, "verified": False, "check_mode": check_mode, "host": socket.gethostname()}
        target = None
        try:
            target = open_target(self.options)
            result["target"] = target.describe()
            result["kind"] = target.kind
            exists = target.prepare(create=not check_mode)
            plan = self.plan(target, target.list() if exists else set())
            result["copied"] = [b.name for b in plan["copy"]]
            result["expired"] = plan["expire"]
            result["skipped_unencrypted"] = plan["skipped_unencrypted"]
            result["bytes_copied"] = sum(b.size for b in plan["copy"])
            if not check_mode:
                self._copy(target, plan["copy"], plan["passphrase"])
                result["expired"] = target.expire(plan["expire"])
                result["verified"] = True
            kept = len(plan["remote"]) - len(plan["expire"]) + len(plan["copy"])
            if target.kind == "ssh":
                kept = self._read_receipt(target, result)
            result["remote_backups"] = kept
            result["passed"] = True
            result["reason"] = (f"{len(plan['copy'])} copied and verified, {len(result['expired'])} expired, "
                                f"{kept} verified backup(s) there")
            unverified = (result.get("receipt") or {}).get("unverified") or []
            if unverified:
                result["reason"] += f"; {len(unverified)} there unverified ({', '.join(unverified)})"
            if plan["skipped_unencrypted"]:
                result["reason"] += (f"; {len(plan['skipped_unencrypted'])} unencrypted kept on this host "
                                     f"({', '.join(plan['skipped_unencrypted'])})")
        except ForgeError as exc:
            result["passed"] = False
            result["reason"] = exc.message
        except (OSError, subprocess.SubprocessError) as exc:
            result["passed"] = False
            result["reason"] = f"off-site copy failed: {exc}"
        if not result["passed"] and getattr(target, "receipt", None) and "receipt" not in result:
            self._summarize_receipt(target, result)
        result["duration"] = self.clock() - started
        if not check_mode:
            self._record(result)
        return result

    def _copy(self, target, backups, passphrase):
        # The passphrase plan() read; its check key only for the NAS, which checks copies with it.
        check_key = offsite_check_key(passphrase) if backups and target.kind == "ssh" else None
        for backup in backups:
            digest = backup.manifest["sha256"]
            self.log(f"Copying {backup.name} ({backup.size} bytes) to {target.describe()}")
            note = target.copy_verified(backup, digest, check_key)
            self.log(f"Verified {backup.name} on {target.describe()} (sha256 {digest[:16]}...){note or ''}")

    def _read_receipt(self, target, result):
        """This database's part of the NAS's receipt, in the result (and so in the state
        file the checklist reads). Fails the run when the NAS quarantined one of ours."""
        summary = self._summarize_receipt(target, result)
        if not summary["ok"]:
            raise ForgeError(f"the NAS quarantined {len(summary['quarantined'])} copy(ies) of "
                             f"{self.options.database} that did not match their manifests: {summary['quarantined'][0]}")
        return summary["copies"]

    def _summarize_receipt(self, target, result):
        receipt = getattr(target, "receipt", None) or {}
        stem = file_stem(self.options.database)
        copies = receipt.get("copies") if isinstance(receipt.get("copies"), dict) else {}
        ours = sorted(n for n in copies if (parse_name(str(n)) or ("",))[0] == stem)
        unverified = [n for n in ours if not (isinstance(copies[n], dict) and copies[n].get("verified"))]
        ours = [n for n in ours if n not in unverified]
        quarantined = [q for q in receipt.get("quarantined") or []
                       if isinstance(q, dict) and (parse_name(str(q.get("name"))) or ("",))[0] == stem]
        result["receipt"] = {
            "verified_at": receipt.get("verified_at"), "verified_at_epoch": receipt.get("verified_at_epoch"),
            "copies": len(ours), "newest": ours[-1] if ours else None, "unverified": unverified,
            "quarantined": [f"{q.get('name')}: {q.get('reason')}" for q in quarantined], "ok": not quarantined}
        return result["receipt"]

    def _record(self, result):
        now = self.clock()
        if result["passed"]:
            result["finished_at"] = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()
        if self.options.state_dir:
            path = offsite_state_path(self.options.state_dir, self.options.database)
            try:
                previous = read_json_object(path)
                if result["passed"]:
                    state = dict(result, last_success=now)
                else:
                    state = dict(result, last_success=previous.get("last_success"))
            except OSError as exc:
                result["state_error"] = str(exc)
            else:
                write_report(result, path, state, key="state_file", error_key="state_error")
        if self.options.textfile_dir:
            passed = result["passed"]
            samples = [
                ("last_run_timestamp_seconds", "When the last off-site copy ended.", now),
                ("last_run_success", "1 if the last off-site copy succeeded and verified, else 0.",
                 1 if passed else 0),
                ("files_copied", "Backups copied by the last off-site run.", len(result["copied"]) if passed else 0),
                ("bytes_copied", "Bytes copied by the last off-site run.", result["bytes_copied"] if passed else 0),
            ]
            if "remote_backups" in result:
                samples.append(("remote_backups", "Verified backups on the off-site target.", result["remote_backups"]))
            receipt = result.get("receipt")
            if receipt:
                samples.append(("far_verify_success", "1 if the NAS's own verification found every copy of this "
                                "database intact (its receipt), else 0.", 1 if receipt["ok"] else 0))
                samples.append(("far_quarantined", "Copies the NAS's last verification moved to its quarantine.",
                                len(receipt["quarantined"])))
                samples.append(("far_unverified", "Copies of this database on the NAS without an off-site signature "
                                "it can check (not counted).", len(receipt.get("unverified") or [])))
                if isinstance(receipt.get("verified_at_epoch"), (int, float)):
                    samples.append(("far_verified_timestamp_seconds", "When the NAS last verified its copies "
                                    "(its receipt).", receipt["verified_at_epoch"]))
            labels = {"database": self.options.database, "target": result["target"] or self.options.target}
            filename = offsite_metrics_filename(self.options.database)
            write_metrics(result, self.options.textfile_dir, filename, METRIC_PREFIX, labels, samples, now,
                          "When an off-site copy last succeeded and verified.")
        if not result["passed"]:
            report_failure(result, self.options.sentry_dsn,
                           f"off-site copy of {self.options.database} failed: {result['reason']}", "offsite-copy",
                           self.options.database, result["host"], self.options.environment)


def _remote_backups(names, stem):
    """Verified backups on the target (file and manifest present), newest first."""
    found = []
    for name in names:
        parsed = parse_name(name)
        if parsed and parsed[0] == stem and name + MANIFEST_SUFFIX in names:
            found.append((name, parsed[1]))
    found.sort(key=lambda pair: pair[1], reverse=True)
    return found


def _remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
