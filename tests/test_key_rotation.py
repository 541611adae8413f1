"""Key rotation (issue 33, item 5): a new passphrase writes, retired ones still read.

After the passphrase is switched, the backups made under the old one must keep the promises
of any backup: they restore and drill PASS, leave by retention, go off site, and the reports
name them. A backup that no configured key proves is never deleted, and that is said aloud
(a log line, a metric, a checklist WARN), not left to be found in a full disk.

Real PostgreSQL, the real scripts and module; the retired key is a second passphrase file.
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from forge import catalog, signing
from forge.checklist import Checklist

from helpers import REPO, backups_in, manifest_of, resign_manifest, run_backup_script, runbook_backup, textfile_value
from servers import load_sample_data

RESTORE_SCRIPT = os.path.join(REPO, "scripts", "restore_db.sh")
OFFSITE_SCRIPT = os.path.join(REPO, "scripts", "offsite_copy.sh")
OLD = "the passphrase of last year, retired now"
NEW = "the passphrase of this year, current now"


def secret_file(directory, name, *lines, mode=0o600):
    path = os.path.join(directory, name)
    with open(path, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))
    os.chmod(path, mode)
    return path


@pytest.fixture
def keys(tmp_path):
    """Both passphrase files, and the keyring file that names the old one as retired."""
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    return {"old": secret_file(str(directory), "old.pass", OLD),
            "new": secret_file(str(directory), "backup.pass", NEW),
            "retired": secret_file(str(directory), "backup-retired.pass", OLD)}


def backup(pg, database, backup_dir, passphrase_file, tmp_path, **extra):
    env = {"BACKUP_PASSPHRASE_FILE": passphrase_file, "BACKUP_TEXTFILE_DIR": str(tmp_path)}
    env.update({key.upper(): str(value) for key, value in extra.items()})
    result = run_backup_script(pg, database, backup_dir, env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def restore_db_sh(pg, database, backup_dir, keys, *args, retired=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_"))}
    env.update(pg.app_env(database), BACKUP_DIR=backup_dir, BACKUP_CONFIG="", BACKUP_PASSPHRASE_FILE=keys["new"])
    if retired:
        env["BACKUP_RETIRED_PASSPHRASES_FILE"] = keys["retired"]
    return subprocess.run([RESTORE_SCRIPT, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def rotated(pg, fresh_db, backup_dir, keys, tmp_path):
    """One encrypted backup under the old passphrase, then the rotation: the new one current."""
    load_sample_data(pg, fresh_db, customers=20, orders=300)
    backup(pg, fresh_db, backup_dir, keys["old"], tmp_path)
    [made] = backups_in(backup_dir)
    return fresh_db, backdated(made, days=40, passphrase=OLD)


def backdated(path, days, passphrase):
    """The backup at ``path`` under a name ``days`` older, its manifest signed again with the
    key that made it (as if it had been made then): retention's age comes from the name."""
    directory, name = os.path.split(path)
    stamp = (datetime.datetime.now() - datetime.timedelta(days=days)).strftime("%Y%m%d_%H%M%S")
    older = re.sub(r"_\d{8}_\d{6}(?=\.)", "_" + stamp, name)
    manifest = manifest_of(path)
    manifest["file"] = older
    os.rename(path, os.path.join(directory, older))
    resign_manifest(os.path.join(directory, older), manifest, passphrase=passphrase)
    os.unlink(path + ".manifest.json")
    with open(os.path.join(directory, older + ".sha256"), "w") as handle:
        handle.write(f"{manifest['sha256']}  {older}\n")
    os.unlink(path + ".sha256")
    return os.path.join(directory, older)


def key_id_of(passphrase):
    return signing.key_id(signing.signing_key(passphrase.encode()))


def test_the_manifest_names_the_key_that_signed_it(rotated):
    _, old = rotated
    assert manifest_of(old)["signature"]["key_id"] == key_id_of(OLD)


@pytest.mark.parametrize("door", ["restore_db.sh", "forge_restore"])
def test_an_old_key_backup_drills_pass_after_the_rotation_with_the_old_key_retired(
        pg, rotated, backup_dir, keys, run_module, door):
    database, old = rotated
    if door == "restore_db.sh":
        result = restore_db_sh(pg, database, backup_dir, keys, "drill", os.path.basename(old))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"PASS: {old}: 3 tables, 350 rows checked" in result.stdout
    else:
        with open(keys["new"]) as handle:
            current = handle.read().strip()
        outcome = run_module("forge_restore", {
            "mode": "drill", "database": database, "login_host": pg.host, "port": pg.port,
            "login_user": pg.app_user, "login_password": pg.app_password, "backup_dir": backup_dir,
            "passphrase": current, "retired_passphrases": [OLD]})
        assert not outcome.get("failed"), outcome.get("msg")
        assert outcome["verdict"] == "PASS" and outcome["backup"] == old
        assert OLD not in outcome["_raw"] and current not in outcome["_raw"]


def test_without_the_retired_key_the_old_backup_is_refused_naming_its_key(pg, rotated, backup_dir, keys):
    database, old = rotated
    result = restore_db_sh(pg, database, backup_dir, keys, "drill", os.path.basename(old), retired=False)
    assert result.returncode != 0
    assert f"signed with key {key_id_of(OLD)}" in result.stdout + result.stderr
    assert "BACKUP_RETIRED_PASSPHRASES_FILE" in result.stdout + result.stderr


def test_retention_removes_old_key_backups_it_can_prove_and_counts_them_until_then(
        pg, rotated, backup_dir, keys, tmp_path):
    database, old = rotated
    stem = catalog.file_stem(database)
    prom = str(tmp_path / f"infer_forge_backup_{stem}.prom")
    backup(pg, database, backup_dir, keys["new"], tmp_path, backup_min_keep=2,
           backup_retired_passphrases_file=keys["retired"])
    assert len(backups_in(backup_dir)) == 2
    assert textfile_value(prom, "infer_forge_backup_retired_key_backups") == 1
    assert textfile_value(prom, "infer_forge_backup_unproven_backups") == 0
    assert textfile_value(prom, "infer_forge_backup_retained_backups") == 2
    # Past its retention, the old-key backup goes like any proven one; the new one stays (min_keep).
    result = backup(pg, database, backup_dir, keys["new"], tmp_path, backup_min_keep=1,
                    backup_retired_passphrases_file=keys["retired"])
    assert f"Removed: {os.path.basename(old)}" in result.stdout
    assert not os.path.exists(old) and not os.path.exists(old + ".manifest.json")
    assert textfile_value(prom, "infer_forge_backup_retired_key_backups") == 0


def test_a_backup_no_configured_key_proves_is_kept_and_said_so(pg, rotated, backup_dir, keys, tmp_path):
    database, old = rotated
    stem = catalog.file_stem(database)
    result = backup(pg, database, backup_dir, keys["new"], tmp_path, backup_min_keep=1)
    assert os.path.exists(old), "a backup nobody can prove is never deleted"
    line = (f"Kept, no configured key proves it: {os.path.basename(old)} (signed with key {key_id_of(OLD)}; "
            "add its passphrase to BACKUP_RETIRED_PASSPHRASES_FILE to restore it and let retention remove it)")
    assert line in result.stdout.splitlines()
    prom = str(tmp_path / f"infer_forge_backup_{stem}.prom")
    assert textfile_value(prom, "infer_forge_backup_unproven_backups") == 1
    assert textfile_value(prom, "infer_forge_backup_retired_key_backups") == 0


def test_old_key_backups_go_off_site_with_the_new_ones(pg, rotated, backup_dir, keys, tmp_path):
    database, old = rotated
    backup(pg, database, backup_dir, keys["new"], tmp_path)
    usb = tmp_path / "usb"
    usb.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "BACKUP_", "OFFSITE_"))}
    env.update({"BACKUP_CONFIG": "", "POSTGRES_DB": database, "BACKUP_DIR": backup_dir, "OFFSITE_TARGET": str(usb),
                "OFFSITE_REQUIRE_MOUNT": "0", "BACKUP_TEXTFILE_DIR": str(tmp_path),
                "DRILL_REPORT_DIR": str(tmp_path / "state"), "BACKUP_PASSPHRASE_FILE": keys["new"],
                "BACKUP_RETIRED_PASSPHRASES_FILE": keys["retired"]})
    result = subprocess.run([OFFSITE_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 copied and verified" in result.stdout
    assert (usb / os.path.basename(old)).read_bytes() == open(old, "rb").read()


def test_the_checklist_warns_naming_backups_under_a_retired_key(pg, rotated, backup_dir, keys, tmp_path):
    database, old = rotated
    backup(pg, database, backup_dir, keys["new"], tmp_path)
    cron = tmp_path / "cron"
    cron.write_text(f"0 2 * * * infer BACKUP_CONFIG=/etc/infer-forge/backup-{catalog.file_stem(database)}.env "
                    "/opt/infer-forge/scripts/backup_db.sh\n")
    settings = dict(databases=[database], backup_dir=backup_dir, cron_file=str(cron),
                    compose_file=str(tmp_path / "none.yml"), config_dir=os.path.dirname(keys["new"]))
    result = Checklist(settings).run(3)
    assert result["status"] == "WARN", result
    assert (f"{database}: 1 backup under a retired key ({key_id_of(OLD)}): {os.path.basename(old)}; it restores with "
            "the retired passphrase and leaves by retention") in result["evidence"]
    os.unlink(keys["retired"])
    blind = Checklist(settings).run(3)
    assert blind["status"] == "WARN", blind
    assert (f"{database}: 1 backup no configured key proves, kept until its passphrase is in backup-retired.pass: "
            f"{os.path.basename(old)} (key {key_id_of(OLD)})") in blind["evidence"]


@pytest.mark.parametrize("problem", ["group-readable", "link", "fifo"])
def test_a_retired_keyring_that_is_not_private_is_refused_in_one_line(pg, rotated, backup_dir, keys, problem):
    database, old = rotated
    if problem == "group-readable":
        os.chmod(keys["retired"], 0o640)
    elif problem == "fifo":
        os.unlink(keys["retired"])
        os.mkfifo(keys["retired"], 0o600)  # a FIFO must not hang the reader
    else:
        os.rename(keys["retired"], keys["retired"] + ".real")
        os.symlink(keys["retired"] + ".real", keys["retired"])
    result = restore_db_sh(pg, database, backup_dir, keys, "verify", os.path.basename(old))
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and keys["retired"] in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_manifest_that_names_a_retired_key_but_was_changed_is_refused(pg, rotated, backup_dir, keys):
    """A retired key proves only what it signed: naming its key id is not enough."""
    database, old = rotated
    manifest = manifest_of(old)
    manifest["rows"] += 1
    with open(old + ".manifest.json", "w") as handle:
        json.dump(manifest, handle)  # its signature (key id and value) kept as it was
    result = restore_db_sh(pg, database, backup_dir, keys, "drill", os.path.basename(old))
    assert result.returncode != 0
    assert "manifest was changed after the backup: its signature does not match" in result.stdout + result.stderr
    assert "PASS" not in [line.split(":", 1)[0] for line in result.stdout.splitlines()]


def test_a_backup_under_a_retired_key_is_never_chosen_over_one_under_the_current_key(
        pg, rotated, backup_dir, keys, tmp_path):
    """Whoever still holds a retired key can sign a file dated after the rotation: latest is
    always the newest backup under the current key."""
    database, old = rotated
    backup(pg, database, backup_dir, keys["new"], tmp_path)
    [current] = [path for path in backups_in(backup_dir) if path != old]
    # The old file under a name one second after the current backup's, its manifest saying it
    # ended when the current one did, signed with the retired key.
    stamp = re.search(r"_(\d{8}_\d{6})\.", os.path.basename(current)).group(1)
    later = (datetime.datetime.strptime(stamp, "%Y%m%d_%H%M%S") + datetime.timedelta(seconds=1))
    forged = os.path.join(backup_dir, os.path.basename(current).replace(stamp, later.strftime("%Y%m%d_%H%M%S")))
    manifest = manifest_of(old)
    manifest.update(file=os.path.basename(forged), ended_at=manifest_of(current)["ended_at"])
    shutil.copy(old, forged)
    resign_manifest(forged, manifest, passphrase=OLD)
    time.sleep(2)  # the forged name is not in the future any more
    assert catalog.open_backup(forged, catalog.TrustPolicy(NEW.encode(), retired=[OLD.encode()])).good
    result = restore_db_sh(pg, database, backup_dir, keys, "drill")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"PASS: {current}: 3 tables" in result.stdout, result.stdout
    assert forged not in result.stdout


def test_a_file_without_a_manifest_made_under_the_old_key_restores_with_the_retired_passphrase(
        pg, sample_db, backup_dir, keys):
    """The runbook's own `pg_dump | gzip | openssl enc` under last year's passphrase: no manifest
    names its key, so the retired passphrase that opens it is the one used (as UNVERIFIED)."""
    os.makedirs(backup_dir, mode=0o700)
    name = "backup_encrypted.sql.gz.enc"
    runbook_backup(pg, sample_db, os.path.join(backup_dir, name), passphrase_file=keys["old"])
    target = "t_key_rotation_from_runbook"
    refused = restore_db_sh(pg, sample_db, backup_dir, keys, "restore", name, target, retired=False)
    assert refused.returncode == 1 and "wrong passphrase" in refused.stderr, refused.stdout + refused.stderr
    restored = restore_db_sh(pg, sample_db, backup_dir, keys, "restore", name, target)
    try:
        assert restored.returncode == 3, restored.stdout + restored.stderr  # UNVERIFIED: nothing proves it
        assert pg.execute("SELECT count(*) FROM orders", database=target) == \
            pg.execute("SELECT count(*) FROM orders", database=sample_db)
    finally:
        pg.drop_database(target)
