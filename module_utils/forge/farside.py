"""The NAS side of off-site copies: the only command the backup hosts' key may run.

The off-site copy is the one that must survive a lost backup host. So whoever
holds that host (and its key) may add files to the NAS and nothing more: the key
is bound in ``authorized_keys`` to ``forge nas-gate``, which allows exactly

- ``rsync --server ...`` (an upload), handed to Debian's ``rrsync -wo -no-del``
  and confined to an *incoming* directory inside the state directory: the
  copies themselves are never reachable by rsync, so no rsync option (delete,
  backup, in-place, append) can touch one;
- ``infer-forge verify``: accept what came in (each file checked against its
  manifest, then hard-linked into the store only under a name not taken, so an
  existing copy is never replaced), re-check the store, apply this NAS's
  retention, write the receipt and print it;
- ``infer-forge receipt``: print the last receipt.

Anything else is refused. Verification and retention run here, with settings
that live here (in the forced command), never with numbers a backup host sends.
Retention counts a copy's age from its arrival on this NAS (when the gate
accepted it, by this NAS's clock, kept in the receipt), not from its name or
mtime, both of which the uploader chooses; and the newest ``min_keep`` arrival
*days* are always kept, so a flood of uploads cannot push good copies out.
A copy that does not match its manifest is moved to the quarantine beside the
state (never deleted), so the host can send it again.

Anyone with the upload key can send a file with a manifest that matches it, so a
matching checksum says nothing about who made the copy. A copy counts as verified
only when its manifest carries the off-site signature of a key in this NAS's check
keys file (signing.py: derived from the backup passphrase, proving nothing to a
restore); one without it is kept, marked "unverified", never counted by retention's
min_keep and never taken by the way back. The signature covers the file name, so a
real copy sent again under a newer name is quarantined, as is a manifest changed
after it was signed.
The same command runs from this NAS's cron with ``--full`` to re-read every copy.
"""

import argparse
import datetime
import hashlib
import json
import os
import socket
import stat
import sys
import time

from .catalog import CHECKSUM_SUFFIX, MANIFEST_SUFFIX, _load_manifest, file_stem, parse_name
from .errors import ForgeError
from .fsutil import fsync_dir, read_json_object, write_atomic
from .signing import SIGNATURE_MISMATCH, SIGNATURE_OK, SIGNATURE_WRONG_KEY, check_offsite, read_check_keys

RECEIPT_NAME = "receipt.json"
QUARANTINE_NAME = "quarantine"
INCOMING_NAME = "incoming"
RRSYNC = "/usr/bin/rrsync"
RECEIPT_VERSION = 1
# A copy without its manifest this long after arrival is not an upload in progress.
PENDING_GRACE_SECONDS = 6 * 3600
CHUNK = 1024 * 1024
OPENSSL_MAGIC = b"Salted__"
SIDE_SUFFIXES = (CHECKSUM_SUFFIX, MANIFEST_SUFFIX)
# Where the offsite_target role writes the keys this NAS checks copies with (root's, the account reads it).
DEFAULT_CHECK_KEYS = "/etc/infer-forge/nas-check.keys"
NO_SIGNATURE = "no off-site signature: not sent by a host that holds the key"


class FarSide:
    def __init__(self, directory, state_dir, retention_days, min_keep, clock=time.time, check_keys=()):
        if retention_days < 1 or min_keep < 1:
            raise ForgeError("off-site retention must keep at least one day and one copy")
        directory, state_dir = os.path.abspath(directory), os.path.abspath(state_dir)
        if os.path.commonpath([directory, state_dir]) == directory:
            raise ForgeError(f"the state directory {state_dir} must not lie inside the upload directory {directory}")
        self.directory = directory
        self.state_dir = state_dir
        self.retention_days = retention_days
        self.min_keep = min_keep
        self.clock = clock
        self.check_keys = list(check_keys)
        self._displaced = []

    @property
    def incoming(self):
        return os.path.join(self.state_dir, INCOMING_NAME)

    @property
    def receipt_path(self):
        return os.path.join(self.state_dir, RECEIPT_NAME)

    def last_receipt(self):
        return read_json_object(self.receipt_path)

    def verify(self, full=False):
        """Accept new copies, check the store, expire old ones; write and return the receipt."""
        now = self.clock()
        os.makedirs(self.incoming, mode=0o700, exist_ok=True)
        quarantined = []
        self._displaced = []
        with _IncomingLock(self.incoming):
            accepted, pending = self._accept_incoming(now, quarantined)
        known = self.last_receipt().get("copies", {})
        known = known if isinstance(known, dict) else {}
        previous = {} if full else known
        names = set(os.listdir(self.directory))
        copies, groups = {}, {}
        for name in sorted(names):
            parsed = parse_name(name)
            if parsed is None:
                continue  # not ours: manifests and checksums are read with their backup, the rest left alone
            path = os.path.join(self.directory, name)
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                quarantined.append(self._quarantine(self.directory, name, "not a regular file", now))
                continue
            if name + MANIFEST_SUFFIX not in names:
                quarantined.append(self._quarantine(self.directory, name, "no manifest beside it", now))
                continue
            entry = self._check(name, path, info, previous.get(name))
            if entry.get("problem"):
                quarantined.append(self._quarantine(self.directory, name, entry["problem"], now))
                continue
            # Arrival is the NAS's own clock when it accepted the copy (kept in its receipt);
            # the inode's change time only for a copy the receipt does not know.
            earlier = known.get(name) if isinstance(known.get(name), dict) else {}
            if name in accepted:
                entry["arrived"] = now
            elif isinstance(earlier.get("arrived"), (int, float)):
                entry["arrived"] = earlier["arrived"]
            copies[name] = entry
            groups.setdefault(parsed[0], []).append(name)
        expired, held = self._expire(copies, groups, now)
        receipt = {
            "version": RECEIPT_VERSION, "host": socket.gethostname(), "directory": self.directory,
            "verified_at": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(),
            "verified_at_epoch": now, "full": full,
            "retention_days": self.retention_days, "min_keep": self.min_keep,
            "copies": copies, "accepted": accepted, "pending": pending, "quarantined": quarantined,
            "expired": expired, "ok": not quarantined,
            "unverified": sorted(name for name, entry in copies.items() if not entry.get("verified")),
            "displaced": self._displaced, "retention_held": held,
        }
        write_atomic(self.receipt_path, json.dumps(receipt, indent=2, sort_keys=True) + "\n", mode=0o600)
        return receipt

    def _accept_incoming(self, now, quarantined):
        """Move complete, matching uploads from incoming into the store, never over a name
        that exists there. Returns (accepted names, names still waiting for their manifest).

        Runs under the incoming directory's lock (the one rrsync takes), so no upload
        changes anything while it looks. Whatever is odd (a directory, a link, a file
        with a second name, a FIFO) is moved to the quarantine, never followed or read
        through; one bad entry never stops the others."""
        os.chmod(self.incoming, 0o700)  # an upload may have tried --chmod on it
        listing = set(os.listdir(self.incoming))
        accepted, pending = [], []
        for name in sorted(listing):
            try:
                outcome = self._accept_one(name, listing, now)
            except OSError as exc:
                outcome = f"could not be accepted: {exc.strerror or exc}"
            if outcome == "accepted":
                accepted.append(name)
            elif outcome == "pending":
                pending.append(name)
            elif outcome:
                try:
                    quarantined.append(self._quarantine(self.incoming, name, outcome, now))
                except OSError as exc:
                    quarantined.append({"name": name, "reason": f"{outcome}; not movable: {exc.strerror}", "at": now})
        if accepted:
            fsync_dir(self.directory)
        return accepted, pending

    def _accept_one(self, name, listing, now):
        """'accepted', 'pending', None (nothing to do) or the reason to quarantine it."""
        path = os.path.join(self.incoming, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None  # a checksum or manifest already moved with its backup
        stale = now - info.st_ctime > PENDING_GRACE_SECONDS
        parsed = parse_name(name)
        if parsed is None:
            if not stat.S_ISREG(info.st_mode):
                return "not a regular file"
            base = next((name[:-len(x)] for x in SIDE_SUFFIXES if name.endswith(x)), None)
            if stale and (base is None or base not in listing):
                _remove_quietly(path)  # rsync's leftovers, and side files whose backup never came
            return None
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if name + MANIFEST_SUFFIX not in listing:
            return "no manifest arrived with it" if stale else "pending"
        for suffix in SIDE_SUFFIXES:
            if os.path.lexists(path + suffix) and not stat.S_ISREG(os.lstat(path + suffix).st_mode):
                return f"its {suffix} is not a regular file"
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or opened.st_nlink != 1:
                return "has another name (a hard link) or is not a regular file"
            entry = self._check(name, path, opened, None, fd=fd)
            if entry.get("problem"):
                return entry["problem"]
            target = os.path.join(self.directory, name)
            if os.path.lexists(target):
                kept = _load_manifest(target + MANIFEST_SUFFIX)
                kept_verified = isinstance(kept, dict) and self._verdict(name, kept)[0] is True
                if isinstance(kept, dict) and kept.get("sha256") == entry["sha256"]:
                    if entry.get("verified") and not kept_verified:
                        # The same bytes, now with a signature this NAS checks (a copy sent before
                        # it had its keys): only the manifest changes, and only to a checked one.
                        os.replace(path + MANIFEST_SUFFIX, target + MANIFEST_SUFFIX)
                    for suffix in ("",) + SIDE_SUFFIXES:
                        _remove_quietly(path + suffix)  # the same copy again
                    return None
                if not entry.get("verified") or kept_verified:
                    return "a different file under the name of a copy already here; that copy was kept"
                # A copy nobody can vouch for (a name sent ahead by whoever holds only an upload key)
                # gives way to one signed for its name: moved to the quarantine, never deleted.
                self._displaced.append(self._quarantine(
                    self.directory, name, "unverified, and a copy signed for its name came", now))
            # Link the name (a link cannot replace), check that it is the very inode that was hashed
            # (the lock keeps uploads out meanwhile), then the side files; any failure takes back
            # what this step linked.
            linked = []
            try:
                os.link(path, target, follow_symlinks=False)
                linked.append(target)
                now_there = os.lstat(target)
                if (now_there.st_dev, now_there.st_ino) != (opened.st_dev, opened.st_ino):
                    raise OSError(0, "the file changed while it was accepted")
                for suffix in SIDE_SUFFIXES:
                    if os.path.lexists(path + suffix):
                        os.link(path + suffix, target + suffix, follow_symlinks=False)
                        linked.append(target + suffix)
            except OSError:
                for done in linked:
                    _remove_quietly(done)
                raise
            for suffix in ("",) + SIDE_SUFFIXES:
                _remove_quietly(path + suffix)
            return "accepted"
        finally:
            os.close(fd)

    def _check(self, name, path, info, known, fd=None):
        manifest = _load_manifest(path + MANIFEST_SUFFIX)
        if not isinstance(manifest, dict):
            return {"problem": f"manifest unusable: {manifest or 'missing'}"}
        expected, size = manifest.get("sha256"), manifest.get("size")
        if not isinstance(expected, str) or len(expected) != 64:
            return {"problem": "manifest has no sha256"}
        if isinstance(size, int) and size != info.st_size:
            return {"problem": f"size {info.st_size} bytes, the manifest says {size}"}
        identity = [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
        if known and known.get("identity") == identity and known.get("sha256") == expected:
            # The same inode, unchanged since it was last read in full; the signature is checked
            # again (cheap), since the keys or the manifest may have changed.
            return self._signed(name, manifest, dict(known))
        own = fd is None
        if own:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return {"problem": "not a regular file"}
            digest = hashlib.sha256()
            head = os.pread(fd, len(OPENSSL_MAGIC), 0)
            offset = 0
            while True:
                chunk = os.pread(fd, CHUNK, offset)
                if not chunk:
                    break
                digest.update(chunk)
                offset += len(chunk)
        finally:
            if own:
                os.close(fd)
        if digest.hexdigest() != expected:
            return {"problem": "sha256 does not match its manifest"}
        if head != OPENSSL_MAGIC:
            return {"problem": "not an encrypted backup (only encrypted backups go off-site)"}
        return self._signed(name, manifest, {
            "sha256": expected, "size": info.st_size, "arrived": info.st_ctime, "identity": identity,
            "database": manifest.get("database") if isinstance(manifest.get("database"), str) else None})

    def _verdict(self, name, manifest):
        """(True, key id), (False, why it is unverified) or (None, why it is quarantined)."""
        if not self.check_keys:
            return False, "this NAS holds no check key: --check-keys"
        verdict, their_key = check_offsite(manifest, self.check_keys)
        if verdict == SIGNATURE_MISMATCH:
            return None, "its off-site signature does not match its manifest"
        if verdict == SIGNATURE_WRONG_KEY:
            return False, f"signed with key {their_key}, which this NAS does not hold"
        if verdict != SIGNATURE_OK:
            return False, NO_SIGNATURE
        if manifest.get("file") != name:
            shown = "".join(c if c.isprintable() else "?" for c in str(manifest.get("file"))[:120])
            return None, f"its manifest was signed for {shown}, not for this name"
        return True, their_key

    def _signed(self, name, manifest, entry):
        entry.pop("unverified", None)
        entry.pop("key_id", None)
        verified, detail = self._verdict(name, manifest)
        if verified is None:
            return {"problem": detail}
        entry["verified"] = verified
        entry["key_id" if verified else "unverified"] = detail
        return entry

    def _expire(self, copies, groups, now):
        """Copies older than the retention go, except those of the newest ``min_keep``
        arrival *days* of each database: a flood of uploads in one day, whoever sends it,
        counts as one day and cannot push the last good copies out."""
        cutoff = now - self.retention_days * 86400
        expired, held = [], []
        for stem, names in sorted(groups.items()):
            if not any(copies[n].get("verified") for n in names):
                # Nothing here can be checked (the keys not installed yet, or none of ours): age
                # alone must not empty the NAS of a database, so its retention waits.
                held.append(stem)
                continue
            # Only verified copies count: an unverified one (anyone with the upload key could have
            # sent it) goes at its age, and never keeps a day for itself or for another.
            days = sorted({_day(copies[n]["arrived"]) for n in names if copies[n].get("verified")}, reverse=True)
            kept_days = set(days[:self.min_keep])
            for name in names:
                kept = copies[name].get("verified") and _day(copies[name]["arrived"]) in kept_days
                if copies[name]["arrived"] < cutoff and not kept:
                    for suffix in ("",) + SIDE_SUFFIXES:
                        _remove_quietly(os.path.join(self.directory, name + suffix))
                    del copies[name]
                    expired.append(name)
        if expired:
            fsync_dir(self.directory)
        return sorted(expired), held

    def _quarantine(self, directory, name, reason, now):
        """Move a copy aside (never delete it): the host may send it again under its name."""
        stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        where = os.path.join(self.state_dir, QUARANTINE_NAME)
        os.makedirs(where, mode=0o700, exist_ok=True)
        for suffix in ("", CHECKSUM_SUFFIX, MANIFEST_SUFFIX):
            source = os.path.join(directory, name + suffix)
            if os.path.lexists(source):
                destination = os.path.join(where, f"{name}{suffix}.{stamp}")
                number = 1
                while os.path.lexists(destination):  # never over earlier evidence
                    destination = os.path.join(where, f"{name}{suffix}.{stamp}-{number}")
                    number += 1
                os.rename(source, destination)
        fsync_dir(directory)
        return {"name": name, "reason": reason, "at": now}


def newest_copy(directory, state_dir, database, check_keys=()):
    """The way back from the NAS alone: the newest copy of ``database`` that this NAS's last
    verification accepted, read in full again now against its manifest (a copy that no longer
    matches is passed over and named). Run by root or the NAS's own user, never through the
    gate: the backup hosts' key cannot read anything back. Returns {"backup", "files" (the
    copy, then its manifest and checksum), "sha256", "size", "arrived", "passed_over"}."""
    far = FarSide(directory, state_dir, 1, 1, check_keys=check_keys)
    receipt = far.last_receipt()
    copies = receipt.get("copies") if isinstance(receipt, dict) else None
    if not isinstance(copies, dict):
        raise ForgeError(f"no receipt of a verification in {far.state_dir}; run forge nas-gate --dir {far.directory} "
                         f"--state {far.state_dir} verify first; nothing was read")
    stem = file_stem(database)
    candidates = []
    for name, entry in copies.items():
        parsed = parse_name(name)
        if parsed and parsed[0] == stem and isinstance(entry, dict):
            candidates.append((parsed[1], name))
    candidates.sort()
    passed_over = []
    for _when, name in reversed(candidates):
        path = os.path.join(far.directory, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            passed_over.append(f"{name}: gone since the last verification")
            continue
        if not stat.S_ISREG(info.st_mode):
            passed_over.append(f"{name}: not a regular file")
            continue
        entry = far._check(name, path, info, None)  # pylint: disable=protected-access
        if entry.get("problem"):
            passed_over.append(f"{name}: {entry['problem']}")
            continue
        if not entry["verified"]:
            passed_over.append(f"{name}: unverified ({entry['unverified']})")
            continue
        files = [path] + [path + suffix for suffix in (MANIFEST_SUFFIX, CHECKSUM_SUFFIX)
                          if os.path.isfile(path + suffix) and not os.path.islink(path + suffix)]
        return {"backup": name, "files": files, "sha256": entry["sha256"], "size": entry["size"],
                "arrived": (copies[name] or {}).get("arrived"), "passed_over": passed_over}
    raise ForgeError(f"no verified copy of {database} on this NAS in {far.directory}"
                     f"{' (passed over: ' + '; '.join(passed_over) + ')' if passed_over else ''}; nothing was read")


def gate_main(argv, environ=None, out=None):
    """``forge nas-gate --dir D --state S [--retention-days N] [--min-keep K] [verify [--full]]``.

    Under sshd (SSH_ORIGINAL_COMMAND set) the client's command decides what runs,
    within the three allowed; without it (cron, an operator) the arguments do."""
    # A command sshd runs on the NAS, not an Ansible module: it answers on stdout and stderr.
    # pylint: disable=ansible-bad-function
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="forge nas-gate", description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--dir", required=True, help="the directory the backup hosts upload into")
    parser.add_argument("--state", required=True, help="receipt and quarantine (outside --dir)")
    parser.add_argument("--retention-days", type=int, default=90)
    parser.add_argument("--min-keep", type=int, default=7)
    parser.add_argument("--check-keys", default=DEFAULT_CHECK_KEYS,
                        help="the keys copies are checked with (only signed copies count as verified)")
    parser.add_argument("action", nargs="?", choices=("verify", "receipt"), default=None)
    parser.add_argument("--full", action="store_true", help="re-read every copy, not only new ones")
    args = parser.parse_args(argv)
    requested = environ.get("SSH_ORIGINAL_COMMAND")
    under_sshd = "SSH_CONNECTION" in environ or requested is not None
    if under_sshd and requested is None:
        print("refused: this key may only upload new copies (rsync) and ask for 'infer-forge verify' or "
              "'infer-forge receipt', not a session", file=sys.stderr)
        return 1
    clock = time.time
    if not under_sshd and environ.get("FORGE_NAS_GATE_NOW"):
        # Tests of retention move the clock; never under sshd, where a client might set it.
        def clock():
            return float(environ["FORGE_NAS_GATE_NOW"])
    far = FarSide(args.dir, args.state, args.retention_days, args.min_keep, clock=clock,
                  check_keys=read_check_keys(args.check_keys))
    if requested is None:
        action, full = args.action or "verify", args.full
    else:
        words = requested.split()
        if words[:2] == ["rsync", "--server"] and "--sender" not in words:
            # rrsync reads the client's command from SSH_ORIGINAL_COMMAND itself. Uploads land in
            # incoming, never among the copies (rrsync of rsync 3.2.7 has no -no-overwrite).
            os.makedirs(far.incoming, mode=0o700, exist_ok=True)
            os.execv(RRSYNC, [RRSYNC, "-wo", "-no-del", "-munge", far.incoming])  # noqa: S606
        if words == ["infer-forge", "verify"]:
            action, full = "verify", False
        elif words == ["infer-forge", "receipt"]:
            action, full = "receipt", False
        else:
            print(f"refused: this key may only upload new copies (rsync) and ask for 'infer-forge verify' or "
                  f"'infer-forge receipt', not {requested[:80]!r}", file=sys.stderr)
            return 1
    receipt = far.verify(full=full) if action == "verify" else far.last_receipt()
    print(json.dumps(receipt, sort_keys=True), file=out)
    return 0


class _IncomingLock:
    """rrsync's own single-run lock (flock on the directory it writes into): while the
    gate accepts uploads, no upload runs, and an upload that finds it taken is refused."""

    def __init__(self, directory, wait_seconds=3600):
        self.directory = directory
        self.wait_seconds = wait_seconds
        self.fd = None

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise ForgeError(f"an upload has held {self.directory} for over {self.wait_seconds} s; "
                                     "nothing was verified or removed") from None
                time.sleep(1)

    def __exit__(self, *exc):
        os.close(self.fd)
        return False


def _day(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).date().isoformat()


def _remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
