"""gzip backups written by ISA-L's igzip: the runbook still reads them, the engine runs only
root's own igzip, and an igzip that fails costs nothing."""

import os
import subprocess

import pytest

from forge import compress
from forge.backup import BackupOptions, BackupRunner
from forge.drill import DrillOptions, run_action
from forge.errors import ForgeError
from forge.pgconn import PgSettings
from forge.restore import RestoreOptions

from helpers import (
    PASSPHRASE,
    backups_in,
    directory_contents,
    manifest_of,
    psql_pipe,
    run_backup_script,
    signing_passphrase_file,
    take_backup,
)
from servers import table_counts


def settings(pg, database):
    return PgSettings(host=pg.host, port=pg.port, user=pg.app_user, password=pg.app_password, database=database)


def test_an_encrypted_igzip_backup_restores_with_the_runbooks_openssl_gunzip_psql_and_drills(pg, sample_db,
                                                                                          backup_dir):
    assert compress.find_igzip() == "/usr/bin/igzip", "Debian's isal package is part of the test machine"
    path = take_backup(pg, sample_db, backup_dir, backup_passphrase_file=signing_passphrase_file())
    manifest = manifest_of(path)
    assert manifest["compression"] == {"algorithm": "gzip", "level": 2, "tool": "igzip"}
    assert manifest["encryption"]["cipher"] == "aes-256-cbc"
    target = f"{sample_db}_by_hand"
    pg.create_database(target)
    try:
        restored = psql_pipe(pg, target, f"openssl enc -d -aes-256-cbc -pbkdf2 -in {path} "
                                         f"-pass file:{signing_passphrase_file()} | gunzip")
        assert restored.returncode == 0, restored.stderr
        assert table_counts(pg, target) == manifest["snapshot_row_counts"]
    finally:
        pg.drop_database(target)
    drill = run_action("drill", RestoreOptions(backup_dir=backup_dir, passphrase=PASSPHRASE),
                       settings(pg, sample_db), database=sample_db, drill=DrillOptions(database=sample_db))
    assert drill["passed"] is True and drill["verdict"] == "PASS", drill["reason"]


def test_the_engine_never_runs_an_igzip_found_on_path(pg, sample_db, backup_dir, tmp_path):
    planted = tmp_path / "bin"
    planted.mkdir()
    canary = tmp_path / "ran"
    (planted / "igzip").write_text(f"#!/bin/sh\ntouch {canary}\nexec /usr/bin/igzip \"$@\"\n")
    (planted / "igzip").chmod(0o755)
    result = run_backup_script(pg, sample_db, backup_dir,
                               {"PATH": f"{planted}:{os.environ['PATH']}", "BACKUP_GZIP_TOOL": "igzip"})
    assert result.returncode == 0, result.stderr
    assert not canary.exists()
    [path] = backups_in(backup_dir)
    assert manifest_of(path)["compression"]["tool"] == "igzip"


@pytest.mark.parametrize("planted", ["owned by nobody", "group-writable", "not executable", "a directory"])
def test_an_igzip_another_user_could_have_replaced_is_not_used(tmp_path, planted):
    path = tmp_path / "igzip"
    if planted == "a directory":
        path.mkdir()
    else:
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod({"group-writable": 0o775, "not executable": 0o644}.get(planted, 0o755))
        if planted == "owned by nobody":
            os.chown(path, 65534, 65534)
    assert compress.find_igzip([str(path)]) is None
    os.chmod(path, 0o755)
    os.chown(path, 0, 0)
    assert compress.find_igzip([str(path)]) == (None if planted == "a directory" else str(path))


def test_gzip_tool_igzip_without_igzip_installed_stops_before_writing(pg, sample_db, backup_dir, monkeypatch,
                                                                       tmp_path):
    monkeypatch.setattr(compress, "IGZIP_PATHS", (str(tmp_path / "no-igzip"),))
    kept = directory_contents(backup_dir) if os.path.isdir(backup_dir) else {}
    with pytest.raises(ForgeError, match=r"^gzip_tool is igzip, but no root-owned igzip is in .*no-igzip; "
                                         r"install Debian's isal package$"):
        BackupRunner(BackupOptions(backup_dir=backup_dir, gzip_tool="igzip"), settings(pg, sample_db)).run()
    assert directory_contents(backup_dir) == kept
    # auto falls back to zlib, and says so in the manifest.
    result = BackupRunner(BackupOptions(backup_dir=backup_dir, passphrase=PASSPHRASE, encrypt=False),
                          settings(pg, sample_db)).run()
    assert manifest_of(result["path"])["compression"]["tool"] == "zlib"


@pytest.mark.parametrize("script, message", [
    ("head -c 100000 > /dev/null; echo 'igzip: disk on fire' >&2; exit 3", r"igzip (failed \(exit 3\)|stopped): "
                                                                           r"igzip: disk on fire"),
    ("head -c 100000 > /dev/null; kill -9 $$", r"igzip (failed \(exit -9\)|stopped): no error output"),
])
def test_an_igzip_that_fails_mid_dump_fails_the_backup_and_leaves_the_directory_as_it_was(
        pg, sample_db, backup_dir, monkeypatch, tmp_path, script, message):
    good = take_backup(pg, sample_db, backup_dir)
    before = directory_contents(backup_dir)
    broken = tmp_path / "igzip"
    broken.write_text(f"#!/bin/sh\n{script}\n")
    broken.chmod(0o755)
    monkeypatch.setattr(compress, "IGZIP_PATHS", (str(broken),))
    options = BackupOptions(backup_dir=backup_dir, gzip_tool="igzip", passphrase_file=signing_passphrase_file(),
                            encrypt=False)
    with pytest.raises(ForgeError, match=message):
        BackupRunner(options, settings(pg, sample_db)).run()
    assert directory_contents(backup_dir) == before
    assert os.path.exists(good)
    assert not subprocess.run(["pgrep", "-f", str(broken)], capture_output=True).stdout


def test_igzip_gets_no_secret_of_the_engines_environment(tmp_path, monkeypatch):
    """The review's finding: igzip inherited POSTGRES_PASSWORD and SENTRY_DSN. A tool the engine
    starts gets the few variables any tool needs (PATH, HOME, the locale), nothing else."""
    record = tmp_path / "environ"
    program = tmp_path / "igzip"
    program.write_text(f"#!/bin/sh\nenv > {record}\nexec /usr/bin/igzip \"$@\"\n")
    program.chmod(0o755)
    for name, value in (("POSTGRES_PASSWORD", "pg-secret"), ("SENTRY_DSN", "https://k@sentry.invalid/1"),
                        ("BACKUP_PASSPHRASE", "passphrase-secret"), ("PGPASSWORD", "libpq-secret"),
                        ("LC_ALL", "C.UTF-8")):
        monkeypatch.setenv(name, value)
    compressor = compress.IsalGzip(str(program), 4, 1)
    data = compressor.feed(b"rows " * 1000) + compressor.finish()
    import gzip

    assert gzip.decompress(data) == b"rows " * 1000
    seen = dict(line.split("=", 1) for line in record.read_text().splitlines() if "=" in line)
    assert not {"POSTGRES_PASSWORD", "SENTRY_DSN", "BACKUP_PASSPHRASE", "PGPASSWORD"} & set(seen), sorted(seen)
    assert "secret" not in record.read_text()
    assert seen["LC_ALL"] == "C.UTF-8" and seen["PATH"] == os.environ["PATH"]
