"""Reading a gzip backup through ISA-L's igzip (a process of its own, where root's igzip is
installed) or through zlib in the engine (where it is not): the same plaintext, the same checks
and the same one-line refusals, for every kind of damage. The restore and drill tests run the
igzip path (this machine has Debian's isal); these hold the zlib path to it."""

import gzip
import os
import shutil

import pytest

from forge import catalog, compress
from forge.drill import DrillOptions, run_action
from forge.errors import ForgeError
from forge.pgconn import PgSettings
from forge.restore import RestoreOptions
from forge.verify import plaintext_chunks

from helpers import PASSPHRASE, signing_passphrase_file, take_backup
from servers import table_counts

MARKER = b"\n--\n-- PostgreSQL database dump complete\n--\n"


@pytest.fixture(params=["igzip", "zlib"])
def reader(request, monkeypatch):
    """Which decompressor reads: root's igzip, or zlib in the engine when no igzip is installed."""
    created = []
    original = compress.IsalGunzip

    class Recorded(original):
        def __init__(self, program):
            created.append(program)
            super().__init__(program)

    monkeypatch.setattr(compress, "IsalGunzip", Recorded)
    if request.param == "zlib":
        monkeypatch.setattr(compress, "IGZIP_PATHS", ("/nonexistent/igzip",))
    yield request.param, created


def policy():
    return catalog.TrustPolicy(PASSPHRASE.encode())


def read_all(path):
    backup = catalog.open_backup(path, policy())
    return b"".join(plaintext_chunks(backup, PASSPHRASE))


def refusal(path):
    backup = catalog.open_backup(path, policy())
    with pytest.raises(ForgeError) as caught:
        for _ in plaintext_chunks(backup, PASSPHRASE):
            pass
    return caught.value.message


def runbook_file(tmp_path, members):
    path = tmp_path / "infer_forge_20261208_010000.sql.gz"
    path.write_bytes(b"".join(gzip.compress(member) for member in members))
    return str(path)


def test_both_read_every_member_of_a_runbook_file_and_only_root_s_igzip_runs(tmp_path, reader):
    name, created = reader
    sql = b"".join(b"INSERT INTO t VALUES (%d);\n" % n for n in range(200000))
    path = runbook_file(tmp_path, [sql[:1000000], sql[1000000:] + MARKER])
    assert read_all(path) == sql + MARKER
    assert created == (["/usr/bin/igzip"] if name == "igzip" else [])


@pytest.mark.parametrize("damage", ["truncated", "a byte changed", "no marker"])
def test_both_refuse_a_damaged_runbook_file_in_the_same_line(tmp_path, reader, damage):
    sql = b"".join(b"INSERT INTO t VALUES (%d);\n" % n for n in range(200000)) + MARKER
    data = bytearray(gzip.compress(sql))
    if damage == "truncated":
        data = data[:len(data) // 2]
    elif damage == "a byte changed":
        data[len(data) // 2] ^= 0x55
    else:
        data = bytearray(gzip.compress(sql[:-len(MARKER)]))
    path = tmp_path / "infer_forge_20261208_010000.sql.gz"
    path.write_bytes(bytes(data))
    message = refusal(str(path))
    assert message.startswith("infer_forge_20261208_010000.sql.gz: "), message
    assert {"truncated": "gzip data is truncated; the file is incomplete",
            "a byte changed": "damaged file: gzip data is corrupt",
            "no marker": "the dump has no 'dump complete' marker; it is truncated"}[damage] in message, message


@pytest.mark.parametrize("damage", ["a byte flipped", "cut short", "wrong passphrase"])
def test_both_refuse_a_changed_signed_encrypted_backup_naming_the_same_cause(pg, sample_db, backup_dir, tmp_path,
                                                                          damage):
    """Read once through each path (the fixture is not used: both must give the same line)."""
    path = take_backup(pg, sample_db, backup_dir, backup_passphrase_file=signing_passphrase_file())
    data = bytearray(open(path, "rb").read())
    if damage == "a byte flipped":
        data[len(data) // 2] ^= 0x01
    elif damage == "cut short":
        data = data[:len(data) - 4096]
    with open(path, "wb") as handle:
        handle.write(bytes(data))
    messages = {}
    for name in ("igzip", "zlib"):
        saved = compress.IGZIP_PATHS
        compress.IGZIP_PATHS = saved if name == "igzip" else ("/nonexistent/igzip",)
        try:
            backup = catalog.open_backup(path, policy())
            with pytest.raises(ForgeError) as caught:
                for _ in plaintext_chunks(backup, b"not the passphrase" if damage == "wrong passphrase"
                                          else PASSPHRASE.encode()):
                    pass
            messages[name] = caught.value.message
        finally:
            compress.IGZIP_PATHS = saved
    assert messages["igzip"] == messages["zlib"], messages
    expected = {"a byte flipped": "changed", "cut short": "changed", "wrong passphrase": "wrong passphrase"}[damage]
    assert expected in messages["igzip"], messages


def test_a_drill_through_either_reader_passes_with_exact_counts(pg, sample_db, backup_dir, reader):
    name, created = reader
    scratch = f"reader_drill_{name}"
    take_backup(pg, sample_db, backup_dir, backup_passphrase_file=signing_passphrase_file())
    settings = PgSettings(host=pg.host, port=pg.port, user=pg.app_user, password=pg.app_password,
                          database=sample_db)
    restore_options = RestoreOptions(backup_dir=backup_dir, passphrase_file=signing_passphrase_file())
    report = run_action("drill", restore_options, settings, database=sample_db,
                        drill=DrillOptions(sample_db, scratch_database=scratch, keep=True))
    assert report["verdict"] == "PASS", report.get("reason")
    assert table_counts(pg, scratch) == table_counts(pg, sample_db)
    assert len(created) == (1 if name == "igzip" else 0)
    pg.drop_database(scratch)


def test_an_unreadable_igzip_output_stops_the_read_and_leaves_no_igzip_behind(tmp_path, monkeypatch):
    """A reader that stops half way (psql failed) ends igzip at once: nothing keeps reading the file."""
    sql = b"".join(b"INSERT INTO t VALUES (%d);\n" % n for n in range(400000)) + MARKER
    path = runbook_file(tmp_path, [sql])
    backup = catalog.open_backup(path, policy())
    chunks = plaintext_chunks(backup, PASSPHRASE)
    first = next(chunks)
    assert first and sql.startswith(first)
    children_before = set(os.listdir("/proc"))
    chunks.close()
    leftover = [pid for pid in set(os.listdir("/proc")) & children_before if pid.isdigit()
                and _cmdline(pid).startswith("/usr/bin/igzip\0-d")]
    assert leftover == []
    assert shutil.which("igzip")


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as handle:
            return handle.read()
    except OSError:
        return ""
