"""Passphrases and manifest signatures (stdlib only).

A manifest says what a backup file holds: its database, size, SHA-256 and the
exact row counts of the dump's snapshot. Anyone who can write into the backup
directory can also write a manifest, so a manifest counts only when it is
signed: HMAC-SHA256 over its canonical JSON (every field but ``signature``),
with a key derived from the backup passphrase. The data file's SHA-256 and
size are fields of the manifest, so the signature covers the data too.

Signature format (manifest_version 2)::

    key       = PBKDF2-HMAC-SHA256(passphrase, "infer-forge manifest signing key v2", 100000, 32 bytes)
    key_id    = HMAC-SHA256(key, "infer-forge key id")[:16 hex]
    canonical = json.dumps(manifest without "signature", sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    value     = HMAC-SHA256(key, "infer-forge manifest v2\\n" + canonical)

``key_id`` lets a wrong passphrase be told apart from a manifest that was
changed: the same passphrase always gives the same key id.

The NAS cannot hold the signing key (whoever holds it could sign a backup every
host would trust), yet it must tell a copy a backup host sent from one that
anyone with the upload key made up. So the copy of a manifest that goes off-site
carries a second MAC, ``offsite_signature``, under a key of its own that the NAS
holds (the *check key*); it covers every field but the two signatures, the file
name among them. Neither key can be computed from the other::

    check key = PBKDF2-HMAC-SHA256(passphrase, "infer-forge off-site check key v1", 100000, 32 bytes)
    value     = HMAC-SHA256(check key, "infer-forge off-site check v1\n" + canonical)
"""

import hashlib
import hmac
import json
import os
import stat

from .errors import ForgeError

# openssl's app_get_pass reads a "file:" passphrase with BIO_gets into a
# 1024-byte buffer: at most 1023 bytes, up to and without the first "\n".
OPENSSL_PASS_MAX = 1023
SIGNING_KDF_SALT = b"infer-forge manifest signing key v2"
SIGNING_KDF_ITERATIONS = 100000
SIGNATURE_SCHEME = "hmac-sha256"
_KEY_ID_LABEL = b"infer-forge key id"
_SIGNED_PREFIX = b"infer-forge manifest v2\n"
OFFSITE_KDF_SALT = b"infer-forge off-site check key v1"
OFFSITE_SIGNATURE_FIELD = "offsite_signature"
_OFFSITE_SIGNED_PREFIX = b"infer-forge off-site check v1\n"
_UNSIGNED_FIELDS = ("signature", OFFSITE_SIGNATURE_FIELD)

SIGNATURE_OK = "ok"
SIGNATURE_MISSING = "missing"
SIGNATURE_WRONG_KEY = "wrong key"
SIGNATURE_MISMATCH = "mismatch"


def read_passphrase(path):
    """The passphrase exactly as ``openssl enc -pass file:PATH`` reads it.

    openssl keeps the first line up to (not including) its ``\\n``, at most
    1023 bytes, and stops at a NUL byte; a ``\\r`` before the ``\\n`` and
    trailing spaces are part of the passphrase. A file that group or others
    can read is refused: it holds the key to every backup.
    """
    if not path:
        raise ForgeError("encryption is on but no passphrase file is configured")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ForgeError(f"passphrase file {path} does not exist") from None
    except PermissionError:
        raise ForgeError(f"passphrase file {path} is not readable by this user") from None
    except OSError as exc:
        raise ForgeError(f"passphrase file {path} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode & 0o777
        if mode & 0o077:
            raise ForgeError(f"passphrase file {path} has mode {mode:04o}; it must be readable by its owner only "
                             f"(chmod 600 {path})")
        data = handle.read(OPENSSL_PASS_MAX)
    passphrase = data.split(b"\n", 1)[0].split(b"\0", 1)[0]
    if not passphrase:
        raise ForgeError(f"passphrase file {path} is empty")
    return passphrase


def load_passphrase(value=None, path=None):
    """The passphrase as bytes: ``value`` itself (an Ansible Vault value, kept in memory
    only) when given, else read from the file at ``path`` as openssl reads it; None when
    neither is configured."""
    if value:
        return passphrase_bytes(value)
    return read_passphrase(path) if path else None


RETIRED_ENV = "BACKUP_RETIRED_PASSPHRASES_FILE"


def _read_guarded(path, what, forbidden_mode, fix, nothing, limit):
    """The bytes of the small file at ``path``, opened without following a link and refused
    unless it is a regular file with none of ``forbidden_mode``'s bits (``fix`` says what to do); None
    when it does not exist. Every refusal is one line ending in ``nothing``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ForgeError(f"{what} cannot be opened without following a link ({exc.strerror}); {nothing}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ForgeError(f"{what} is not a regular file; {nothing}")
        if info.st_mode & forbidden_mode:
            raise ForgeError(f"{what} has mode {info.st_mode & 0o777:04o}; {fix}; {nothing}")
        os.set_blocking(handle.fileno(), True)
        return handle.read(limit)


def read_keyring(path):
    """The retired passphrases in ``path``: one per line, each read as openssl reads a
    passphrase file's first line (a NUL ends it, a ``\\r`` is part of it); blank lines are
    skipped; a file that does not exist retires nothing. They only ever read (decrypt and prove
    old backups), never write. The file holds keys to every old backup, so it must be a regular
    file its owner alone can read, reached without a link."""
    data = _read_guarded(path, f"retired passphrases file {path}", 0o077,
                         f"it must be readable by its owner only (chmod 600 {path})", "nothing was read", 1 << 20)
    if data is None:
        # Nothing retired (a host the backup role has not deployed since rotation came). Not silent
        # where it matters: a backup no key proves is named in the log, a metric and the checklist.
        return []
    passphrases = []
    for line in data.split(b"\n"):
        passphrase = line[:OPENSSL_PASS_MAX].split(b"\0", 1)[0]
        if passphrase and passphrase not in passphrases:
            passphrases.append(passphrase)
    return passphrases


def load_keyring(values=None, path=None):
    """Retired passphrases as bytes: ``values`` (Ansible Vault values, in memory only) and
    those in the file at ``path``; an empty list when neither is configured."""
    ring = [passphrase_bytes(value) for value in values or () if value]
    for passphrase in read_keyring(path) if path else ():
        if passphrase not in ring:
            ring.append(passphrase)
    return ring


def passphrase_bytes(value):
    """A passphrase given as a value (Ansible Vault), read as openssl would read it from a file."""
    if value is None:
        return None
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    raw = raw[:OPENSSL_PASS_MAX].split(b"\n", 1)[0].split(b"\0", 1)[0]
    if not raw:
        raise ForgeError("the passphrase is empty")
    return raw


MIN_PASSPHRASE_LENGTH = 20


def require_strength(passphrase):
    """A new backup is never encrypted or signed with a passphrase short enough to guess offline
    from a stolen copy (old backups made with one still restore: only writing checks this)."""
    if passphrase is not None:
        length = len(passphrase.decode("utf-8", "replace"))
        if length < MIN_PASSPHRASE_LENGTH:
            raise ForgeError(f"the backup passphrase has {length} characters; a new backup needs at least "
                             f"{MIN_PASSPHRASE_LENGTH} (make one with: openssl rand -base64 48); nothing was written")


_KEYS = {}


def _derived(passphrase, salt):
    if (passphrase, salt) not in _KEYS:
        _KEYS[passphrase, salt] = hashlib.pbkdf2_hmac("sha256", passphrase, salt, SIGNING_KDF_ITERATIONS, 32)
    return _KEYS[passphrase, salt]


def signing_key(passphrase):
    """The manifest signing key of a passphrase (derived once per process)."""
    return _derived(passphrase, SIGNING_KDF_SALT)


def offsite_check_key(passphrase):
    """The key a NAS checks off-site copies with: it proves who sent a copy, and proves
    nothing to a restore (derived once per process)."""
    return _derived(passphrase, OFFSITE_KDF_SALT)


def key_id(key):
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def canonical(manifest):
    body = {name: value for name, value in manifest.items() if name not in _UNSIGNED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _mac(key, manifest, prefix=_SIGNED_PREFIX):
    return hmac.new(key, prefix + canonical(manifest), hashlib.sha256).hexdigest()


def sign(manifest, key):
    """Return ``manifest`` with its signature."""
    signed = dict(manifest)
    signed.pop("signature", None)
    signed["signature"] = {"scheme": SIGNATURE_SCHEME, "key_id": key_id(key), "value": _mac(key, signed)}
    return signed


def check(manifest, key):
    """One of SIGNATURE_OK, SIGNATURE_MISSING, SIGNATURE_WRONG_KEY, SIGNATURE_MISMATCH."""
    return _verdict(manifest, manifest.get("signature"), [key], _SIGNED_PREFIX)[0]


def sign_for_offsite(manifest, check_key):
    """Return ``manifest`` with its off-site signature (the signing one is left as it is)."""
    signed = dict(manifest)
    signed[OFFSITE_SIGNATURE_FIELD] = {"scheme": SIGNATURE_SCHEME, "key_id": key_id(check_key),
                                       "value": _mac(check_key, signed, _OFFSITE_SIGNED_PREFIX)}
    return signed


def check_offsite(manifest, check_keys):
    """(verdict, key id) of a copy's off-site signature under any of ``check_keys``."""
    return _verdict(manifest, manifest.get(OFFSITE_SIGNATURE_FIELD), check_keys, _OFFSITE_SIGNED_PREFIX)


def _verdict(manifest, signature, keys, prefix):
    if not isinstance(signature, dict) or signature.get("scheme") != SIGNATURE_SCHEME:
        return SIGNATURE_MISSING, None
    value, their_key = signature.get("value"), signature.get("key_id")
    # Compared as ASCII bytes: compare_digest refuses non-ASCII str, and a planted
    # manifest must never turn into an exception.
    if not (is_hex(value, 64) and is_hex(their_key, 16)):
        return SIGNATURE_MISMATCH, None
    key = next((k for k in keys if hmac.compare_digest(their_key.encode(), key_id(k).encode())), None)
    if key is None:
        return SIGNATURE_WRONG_KEY, their_key
    try:
        expected = _mac(key, manifest, prefix)
    except (TypeError, ValueError, RecursionError):
        return SIGNATURE_MISMATCH, their_key
    if not hmac.compare_digest(value.encode(), expected.encode()):
        return SIGNATURE_MISMATCH, their_key
    return SIGNATURE_OK, their_key


def read_check_keys(path):
    """The NAS's check keys in ``path``: one 64-hex-digit key per line, ``#`` starts a
    comment. A file that does not exist holds none (every copy is then unverified). Root
    writes it and the NAS account reads it, so it must not be writable by anyone else."""
    what = f"check keys file {path}"
    data = _read_guarded(path, what, 0o022, f"only its owner may write it (chmod 640 {path})", "nothing was verified",
                         1 << 16)
    if data is None:
        return []
    keys = []
    for number, line in enumerate(data.decode("ascii", "replace").splitlines(), 1):
        word = line.split("#", 1)[0].strip()
        if not word:
            continue
        if not is_hex(word, 64):
            raise ForgeError(f"line {number} of {what} is not a key of 64 lower-case hex digits; nothing was verified")
        if bytes.fromhex(word) not in keys:
            keys.append(bytes.fromhex(word))
    return keys


def is_hex(value, length):
    """A lower-case hex string of exactly ``length`` characters (what our digests look like)."""
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value)


def legacy_file_mac_key(passphrase, salt, iterations=10000):
    """The HMAC key of a manifest_version 1 encrypted file: bytes 48..80 of the
    PBKDF2 stream whose first 48 bytes are openssl's key and IV."""
    return hashlib.pbkdf2_hmac("sha256", passphrase, salt, iterations, 80)[48:80]
