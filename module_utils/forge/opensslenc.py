"""Streaming AES-256-CBC in the exact format of ``openssl enc -aes-256-cbc -salt -pbkdf2``.

File layout: ``Salted__`` + 8-byte salt + AES-256-CBC ciphertext (PKCS#7
padding). Key and IV are the first 48 bytes of PBKDF2-HMAC-SHA256(passphrase,
salt, 10000 iterations), which is what OpenSSL 1.1.1 and 3.x use for
``-pbkdf2`` without ``-iter``/``-md``. So ``openssl enc -d -aes-256-cbc -pbkdf2``
decrypts our files and we decrypt files made by that command. Another count
(``BACKUP_KDF_ITER``) is recorded in the signed manifest; openssl then needs
``-iter N``. The file itself does not say its count.

That format has no integrity check. Integrity comes from the signed manifest
(signing.py), which records the file's SHA-256. Manifests of version 1 carried
an HMAC-SHA256 over the whole file instead, keyed with 32 more bytes of the same
PBKDF2 stream (prefix-stable, so key and IV are unchanged); catalog.py still
checks those.
"""

import hashlib
import os

from .errors import ForgeError

# Re-exported: the tests call opensslenc.read_passphrase.
from .signing import read_passphrase  # noqa: F401  # pylint: disable=unused-import

# The engine loads without cryptography (it is needed only to encrypt or decrypt),
# so a host without it gets a clear error from Encryptor/Decryptor, not an ImportError
# from every module that imports the engine.
try:
    from cryptography.hazmat.backends import default_backend
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
except ImportError as exc:
    CRYPTOGRAPHY_IMPORT_ERROR = exc
else:
    CRYPTOGRAPHY_IMPORT_ERROR = None

MAGIC = b"Salted__"
SALT_LEN = 8
HEADER_LEN = len(MAGIC) + SALT_LEN
PBKDF2_ITERATIONS = 10000  # openssl's default for -pbkdf2
MIN_KDF_ITERATIONS = 1000
MAX_KDF_ITERATIONS = 10_000_000
PBKDF2_DIGEST = "sha256"
CIPHER_NAME = "aes-256-cbc"


def kdf_iterations(value, name="kdf_iter"):
    """A configured PBKDF2 iteration count as an int; None gives openssl's default."""
    if value is None or value == "":
        return PBKDF2_ITERATIONS
    text = str(value).strip()
    count = int(text) if not isinstance(value, bool) and text.isascii() and text.isdigit() else None
    if count is None or not MIN_KDF_ITERATIONS <= count <= MAX_KDF_ITERATIONS:
        raise ForgeError(f"{name} must be a whole number from {MIN_KDF_ITERATIONS} to {MAX_KDF_ITERATIONS}, "
                         f"got {value!r}")
    return count


def derive(passphrase, salt, iterations=PBKDF2_ITERATIONS):
    """Return (key, iv, mac_key) from one PBKDF2 run."""
    material = hashlib.pbkdf2_hmac(PBKDF2_DIGEST, passphrase, salt, iterations, 80)
    return material[:32], material[32:48], material[48:80]


def require_cryptography():
    if CRYPTOGRAPHY_IMPORT_ERROR is not None:
        raise ForgeError("encryption needs the Python cryptography library (Debian: python3-cryptography), "
                         f"which is not importable here: {CRYPTOGRAPHY_IMPORT_ERROR}")


def _cipher(key, iv):
    return Cipher(algorithms.AES(key), modes.CBC(iv), backend=default_backend())


class Encryptor:
    """Turns plaintext chunks into the openssl-enc byte stream, header first."""

    def __init__(self, passphrase, salt=None, iterations=PBKDF2_ITERATIONS):
        require_cryptography()
        self.salt = salt or os.urandom(SALT_LEN)
        self.iterations = iterations
        key, iv, self.mac_key = derive(passphrase, self.salt, iterations)
        self._encryptor = _cipher(key, iv).encryptor()
        self._padder = padding.PKCS7(128).padder()
        self._header_sent = False

    def update(self, data):
        out = self._encryptor.update(self._padder.update(data))
        if not self._header_sent:
            self._header_sent = True
            return MAGIC + self.salt + out
        return out

    def finalize(self):
        out = self._encryptor.update(self._padder.finalize()) + self._encryptor.finalize()
        if not self._header_sent:
            self._header_sent = True
            return MAGIC + self.salt + out
        return out

    def parameters(self):
        """What the manifest records about the encryption (never the key)."""
        return {
            "cipher": CIPHER_NAME,
            "kdf": "pbkdf2",
            "kdf_digest": PBKDF2_DIGEST,
            "kdf_iterations": self.iterations,
            "salt_hex": self.salt.hex(),
            "format": "openssl-enc",
        }


class Decryptor:
    """Reverse of :class:`Encryptor`; feed it the file bytes from the start."""

    def __init__(self, passphrase, iterations=PBKDF2_ITERATIONS):
        require_cryptography()
        self._passphrase = passphrase
        self._iterations = iterations
        self._header = b""
        self._decryptor = None
        self._unpadder = padding.PKCS7(128).unpadder()
        self.mac_key = None

    def update(self, data):
        if self._decryptor is None:
            self._header += data
            if len(self._header) < HEADER_LEN:
                return b""
            if not self._header.startswith(MAGIC):
                raise ForgeError("file is not in openssl enc format (no 'Salted__' header)")
            salt = self._header[len(MAGIC):HEADER_LEN]
            key, iv, self.mac_key = derive(self._passphrase, salt, self._iterations)
            self._decryptor = _cipher(key, iv).decryptor()
            data, self._header = self._header[HEADER_LEN:], b""
        return self._unpadder.update(self._decryptor.update(data))

    def finalize(self):
        if self._decryptor is None:
            raise ForgeError("encrypted file is shorter than its header")
        try:
            return self._unpadder.update(self._decryptor.finalize()) + self._unpadder.finalize()
        except ValueError:
            raise ForgeError("decryption failed: wrong passphrase or damaged file") from None
