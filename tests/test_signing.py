"""Manifest signatures and version 1 HMACs, checked against their documented format.

Every expected value here is computed from the format in signing.py's docstring
with Python's hashlib and hmac (and openssl itself), never with
the engine's functions: an engine that changed its key derivation, its prefix
or its canonical JSON would still agree with itself, and old backups would stop
verifying.
"""

import hashlib
import hmac
import json
import os
import subprocess

import pytest

from forge import catalog, signing
from forge.errors import ForgeError

PASSPHRASE = b"correct horse battery staple"


def documented_key(passphrase):
    return hashlib.pbkdf2_hmac("sha256", passphrase, b"infer-forge manifest signing key v2", 100000, 32)


def documented_signature(manifest, passphrase):
    key = documented_key(passphrase)
    body = {name: value for name, value in manifest.items() if name != "signature"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return {"scheme": "hmac-sha256",
            "key_id": hmac.new(key, b"infer-forge key id", hashlib.sha256).hexdigest()[:16],
            "value": hmac.new(key, b"infer-forge manifest v2\n" + canonical, hashlib.sha256).hexdigest()}


def a_manifest():
    """A version 2 manifest as a backup writes it; the database name is not ASCII, so the
    canonical JSON's escaping is part of what is compared."""
    return {"manifest_version": 2, "file": "zakaznici_20260207_143215.sql.gz.enc", "database": "Zákazníci 'CZ'",
            "size": 50576, "sha256": hashlib.sha256(b"the file").hexdigest(), "format": "plain",
            "compression": {"algorithm": "gzip", "level": 4}, "tables": 2, "rows": 5200,
            "snapshot_row_counts": {"public.customers": 200, "public.orders": 5000},
            "encryption": {"cipher": "aes-256-cbc", "kdf": "pbkdf2-sha256", "kdf_iterations": 10000},
            "ended_at": "2026-02-07T14:32:15+00:00"}


def test_the_engine_signs_a_manifest_exactly_as_the_documented_format_says():
    manifest = a_manifest()
    signed = signing.sign(manifest, signing.signing_key(PASSPHRASE))
    assert signed["signature"] == documented_signature(manifest, PASSPHRASE)
    assert {k: v for k, v in signed.items() if k != "signature"} == manifest


def test_a_manifest_signed_from_the_documentation_is_accepted_and_any_change_is_refused():
    manifest = a_manifest()
    manifest["signature"] = documented_signature(manifest, PASSPHRASE)
    key = signing.signing_key(PASSPHRASE)
    assert signing.check(manifest, key) == signing.SIGNATURE_OK
    for field, value in (("database", "other"), ("size", 50577), ("snapshot_row_counts", {"public.orders": 1}),
                         ("ended_at", "2099-01-01T00:00:00+00:00")):
        assert signing.check(dict(manifest, **{field: value}), key) == signing.SIGNATURE_MISMATCH, field
    # A signature value of the right shape that is not the MAC of this manifest.
    forged = dict(manifest, signature=dict(manifest["signature"], value="0" * 64))
    assert signing.check(forged, key) == signing.SIGNATURE_MISMATCH
    assert signing.check(manifest, signing.signing_key(b"another passphrase")) == signing.SIGNATURE_WRONG_KEY
    assert signing.check({k: v for k, v in manifest.items() if k != "signature"}, key) == signing.SIGNATURE_MISSING


def test_the_key_id_names_the_passphrase_as_documented():
    for passphrase in (PASSPHRASE, b"secret\r", "heslo žluťoučký".encode()):
        key = documented_key(passphrase)
        assert signing.signing_key(passphrase) == key
        assert signing.key_id(key) == hmac.new(key, b"infer-forge key id", hashlib.sha256).hexdigest()[:16]


def openssl_file(path, passphrase, data):
    """Encrypt ``data`` with openssl itself, as the runbook and version 1 backups did."""
    pass_file = path + ".pass"
    with open(os.open(pass_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(passphrase + b"\n")
    subprocess.run(["openssl", "enc", "-aes-256-cbc", "-salt", "-pbkdf2", "-pass", f"file:{pass_file}",
                    "-out", path], input=data, check=True)
    os.unlink(pass_file)
    with open(path, "rb") as handle:
        return handle.read()


def write_version_1_manifest(path, data, hmac_key):
    """The old manifest: no signature, an HMAC-SHA256 over the whole encrypted file."""
    manifest = {"manifest_version": 1, "file": os.path.basename(path), "database": "infer_forge",
                "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "encryption": {"cipher": "aes-256-cbc", "kdf_iterations": 10000,
                               "hmac_sha256": hmac.new(hmac_key, data, hashlib.sha256).hexdigest()}}
    with open(path + catalog.MANIFEST_SUFFIX, "w") as handle:
        json.dump(manifest, handle)


def test_the_version_1_hmac_key_follows_openssls_key_and_iv_in_one_pbkdf2_stream(tmp_path):
    """signing.py: the HMAC key is bytes 48..80 of the PBKDF2 stream whose first 48 bytes are
    openssl's key and IV. openssl -P prints its key and IV for a salt; the rest must follow them."""
    salt = bytes.fromhex("0102030405060708")
    printed = subprocess.run(["openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-S", salt.hex(), "-pass",
                              "pass:" + PASSPHRASE.decode(), "-P"], capture_output=True, text=True, check=True)
    values = dict(line.replace(" ", "").split("=", 1) for line in printed.stdout.splitlines())
    stream = hashlib.pbkdf2_hmac("sha256", PASSPHRASE, salt, 10000, 80)
    assert (stream[:32].hex().upper(), stream[32:48].hex().upper()) == (values["key"], values["iv"])
    assert signing.legacy_file_mac_key(PASSPHRASE, salt) == stream[48:80]


def test_a_version_1_file_is_proven_by_its_hmac_and_refused_without_it(tmp_path):
    path = str(tmp_path / "infer_forge_20200101_020000.sql.gz.enc")
    data = openssl_file(path, PASSPHRASE, b"\x1f\x8b not really a dump, only bytes to prove")
    salt = data[8:16]
    write_version_1_manifest(path, data, hashlib.pbkdf2_hmac("sha256", PASSPHRASE, salt, 10000, 80)[48:80])
    backup = catalog.open_backup(path, catalog.TrustPolicy(PASSPHRASE))
    assert backup.legacy and not backup.good  # never chosen automatically, only by name
    assert backup.check_legacy_hmac(PASSPHRASE) == PASSPHRASE

    # The same file with an HMAC made by another passphrase: nothing proves it.
    other = hashlib.pbkdf2_hmac("sha256", b"another passphrase", salt, 10000, 80)[48:80]
    write_version_1_manifest(path, data, other)
    backup = catalog.open_backup(path, catalog.TrustPolicy(PASSPHRASE))
    with pytest.raises(ForgeError) as caught:
        backup.check_legacy_hmac(PASSPHRASE)
    assert caught.value.message == (f"{os.path.basename(path)}: HMAC does not match: wrong passphrase, or the file "
                                    "and its (version 1, unsigned) manifest were changed together")
    assert not backup.content_verified
