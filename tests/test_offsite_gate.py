"""A compromised backup host cannot wipe the NAS.

Whoever holds the backup host holds its key to the NAS. With that key, and a
real sshd on loopback whose authorized_keys binds it to `forge nas-gate` as the
offsite_target role does, these tests try what an attacker would (a shell
command, rm, rsync --delete, an overwrite under an existing name, a download)
and check that every existing copy is still there, byte for byte. They also
check the gate's own work: verification against the manifest, quarantine
instead of deletion, retention by arrival on the NAS, and the receipt.
"""

import hashlib
import json
import os
import shlex
import subprocess
import time

import pytest
from test_offsite import encrypted_backups, metric, offsite, ssh_extra  # noqa: F401 - fixtures reused

from helpers import REPO, sign_for_nas, write_nas_check_keys

FORGE = os.path.join(REPO, "scripts", "forge")


@pytest.fixture
def nas(sshd, tmp_path):
    directory = tmp_path / "nas" / "backups"
    directory.mkdir(parents=True, mode=0o700)
    state = tmp_path / "nas" / "state"
    sshd.gate(directory, state, retention_days=30, min_keep=2)
    return {"dir": directory, "state": state, "target": f"root@127.0.0.1:{directory}"}


def ssh(sshd, command, stdin=None):
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o",
            f"UserKnownHostsFile={sshd.known_hosts}", "-i", sshd.client_key, "-o", "IdentitiesOnly=yes",
            "-p", str(sshd.port), "root@127.0.0.1", command]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


def rsync(sshd, *args):
    transport = shlex.join(["ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={sshd.known_hosts}",
                            "-i", sshd.client_key, "-o", "IdentitiesOnly=yes", "-p", str(sshd.port)])
    return subprocess.run(["rsync", "-e", transport, *args], capture_output=True, text=True, timeout=60)


def digests(directory):
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in sorted(os.listdir(directory))}


@pytest.fixture
def copied(sshd, nas, encrypted_backups, backup_dir, tmp_path):  # noqa: F811 - the fixture imported above
    database, names = encrypted_backups
    result = offsite(database, backup_dir, nas["target"], tmp_path, **ssh_extra(sshd))
    assert result.returncode == 0, result.stdout + result.stderr
    before = digests(nas["dir"])
    assert set(names) <= set(before)
    return database, names, before


def test_the_key_runs_no_shell_command_on_the_nas(sshd, nas, copied):
    _, names, before = copied
    for command in (f"rm -f {nas['dir']}/{names[0]}", f"sh -c 'rm -rf {nas['dir']}'", "cat /etc/shadow",
                    f"find {nas['dir']} -delete", "infer-forge verify; rm -rf /", "true; id"):
        result = ssh(sshd, command)
        assert result.returncode != 0, command
        assert "refused: this key may only upload new copies" in result.stderr, command
    assert digests(nas["dir"]) == before


def test_rsync_with_the_key_cannot_delete_overwrite_or_read_copies(sshd, nas, copied, tmp_path):
    _, names, before = copied
    empty = tmp_path / "empty"
    empty.mkdir()
    deleting = rsync(sshd, "-r", "--delete", f"{empty}/", f"root@127.0.0.1:{nas['dir']}/")
    assert deleting.returncode != 0
    removing = rsync(sshd, "--remove-source-files", "-r", f"{empty}/", f"root@127.0.0.1:{nas['dir']}/")
    assert digests(nas["dir"]) == before, removing.stderr
    # A doctored file under an existing copy's name, with every trick rsync has for replacing.
    doctored = tmp_path / names[0]
    doctored.write_bytes(b"Salted__" + os.urandom(4096))
    for extra in ([], ["--inplace"], ["--backup", "--suffix=.old"], ["--ignore-times"], ["--append"]):
        rsync(sshd, *extra, str(doctored), f"root@127.0.0.1:{nas['dir']}/")
        assert digests(nas["dir"]) == before, extra
    download = rsync(sshd, f"root@127.0.0.1:{nas['dir']}/{names[0]}", str(tmp_path / "stolen"))
    assert download.returncode != 0 and not (tmp_path / "stolen").exists()


def test_a_doctored_upload_under_an_existing_name_is_quarantined_and_the_copy_kept(sshd, nas, copied, tmp_path):
    """The gate's own path: a self-consistent forgery (file and a manifest with its sha256)
    under the name of a copy already on the NAS never replaces that copy."""
    _, names, before = copied
    forged = tmp_path / "forged"
    forged.mkdir()
    data = b"Salted__" + os.urandom(4096)
    (forged / names[0]).write_bytes(data)
    (forged / (names[0] + ".manifest.json")).write_text(json.dumps(
        {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "database": "x"}))
    upload = rsync(sshd, str(forged / names[0]), str(forged / (names[0] + ".manifest.json")), "root@127.0.0.1:")
    assert upload.returncode == 0, upload.stderr
    receipt = json.loads(ssh(sshd, "infer-forge verify").stdout)
    assert [(q["name"], q["reason"]) for q in receipt["quarantined"]] == [
        (names[0], "a different file under the name of a copy already here; that copy was kept")]
    assert receipt["ok"] is False
    assert digests(nas["dir"]) == before


def test_a_new_name_still_uploads_and_the_gate_verifies_it(sshd, nas, copied):
    database, names, _ = copied
    receipt = json.loads(ssh(sshd, "infer-forge receipt").stdout)
    assert set(names) <= set(receipt["copies"])
    assert all(receipt["copies"][n]["verified"] for n in names)
    assert receipt["ok"] is True and receipt["quarantined"] == []


def test_a_copy_damaged_on_the_nas_is_quarantined_not_deleted_and_fails_the_next_run(
        sshd, nas, copied, backup_dir, tmp_path):
    database, names, _ = copied
    damaged = nas["dir"] / names[0]
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0x01
    damaged.write_bytes(bytes(data))
    result = offsite(database, backup_dir, nas["target"], tmp_path, **ssh_extra(sshd))
    assert result.returncode == 1
    assert f"the NAS quarantined 1 copy(ies) of {database} that did not match their manifests: {names[0]}: " \
           "sha256 does not match its manifest" in result.stdout
    moved = sorted(os.listdir(nas["state"] / "quarantine"))
    assert len(moved) == 3  # the copy, its checksum and its manifest, each with the time they were moved
    quarantined = [n for n in moved if n.startswith(names[0] + ".2")]
    assert len(quarantined) == 1 and bytes(data) == (nas["state"] / "quarantine" / quarantined[0]).read_bytes()
    assert metric(tmp_path, database, "far_verify_success") == 0
    assert metric(tmp_path, database, "far_quarantined") == 1
    # The next run sends the good copy again under its name, and the NAS verifies it.
    again = offsite(database, backup_dir, nas["target"], tmp_path, **ssh_extra(sshd))
    assert again.returncode == 0, again.stdout + again.stderr
    assert (nas["dir"] / names[0]).read_bytes() == open(os.path.join(backup_dir, names[0]), "rb").read()
    assert metric(tmp_path, database, "far_verify_success") == 1


def test_nas_retention_counts_arrival_days_on_the_nas_not_names_the_host_chose(nas, copied):
    """Arrival is the NAS's clock at acceptance; the names' dates (which the host chose,
    here 3 and 40 days old) do not matter. Copies past the retention go, except those of
    the newest min_keep arrival days."""
    database, names, _ = copied
    incoming = nas["state"] / "incoming"
    day = 86400
    start = time.time()
    for offset in (10, 20):  # two more arrivals on later days (their names are in the far future)
        plant(incoming, f"{database}_2099010{offset // 10}_020000.sql.gz.enc")
        receipt = run_gate(nas, "verify", now=start + offset * day)
    assert receipt["expired"] == []
    # 31 days after the first three arrived: they are past the retention, but min_keep (2 days)
    # keeps the two later days; the first day goes.
    receipt = run_gate(nas, "verify", now=start + 31 * day)
    assert sorted(receipt["expired"]) == sorted(names)
    assert sorted(receipt["copies"]) == [f"{database}_20990101_020000.sql.gz.enc",
                                         f"{database}_20990102_020000.sql.gz.enc"]
    assert sorted(os.listdir(nas["dir"])) == sorted(n + s for n in receipt["copies"] for s in ("", ".manifest.json"))


def test_the_gate_refuses_a_state_directory_inside_the_upload_directory(tmp_path):
    result = subprocess.run([FORGE, "nas-gate", "--dir", str(tmp_path), "--state", str(tmp_path / "state")],
                            capture_output=True, text=True, env=dict(os.environ), timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"ERROR: the state directory {tmp_path / 'state'} must not lie inside the "
                                     f"upload directory {tmp_path}")


# -- what an attacker with the key can leave in incoming (written there directly, as rrsync would)

def check_keys(nas):
    """The NAS's check keys file (the key of the tests' passphrase), beside its state directory."""
    path = nas["state"].parent / "nas-check.keys"
    return str(path) if path.exists() else write_nas_check_keys(path)


def run_gate(nas, *args, now=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    if now is not None:
        env["FORGE_NAS_GATE_NOW"] = str(now)
    gate = [FORGE, "nas-gate", "--dir", str(nas["dir"]), "--state", str(nas["state"]), "--retention-days", "30",
            "--min-keep", "2", "--check-keys", check_keys(nas), *args]
    result = subprocess.run(gate, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def plant(directory, name, data=None, signed=True):
    """An upload: the file and a manifest with its real sha256, signed for the NAS as a backup
    host signs it (``signed``: by someone who holds the passphrase) or not (anyone with the key)."""
    data = b"Salted__" + os.urandom(256) if data is None else data
    (directory / name).write_bytes(data)
    manifest = {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (directory / (name + ".manifest.json")).write_text(json.dumps(sign_for_nas(manifest) if signed else manifest))


def test_odd_entries_in_incoming_are_quarantined_and_never_stop_the_verification(nas, copied):
    database, names, before = copied
    incoming = nas["state"] / "incoming"
    (incoming / "somedir").mkdir()
    os.mkfifo(incoming / f"{database}_20270101_020000.sql.gz.enc")
    (incoming / f"{database}_20270101_020000.sql.gz.enc.manifest.json").write_text("{}")
    plant(incoming, f"{database}_20270102_020000.sql.gz.enc")
    os.link(incoming / f"{database}_20270102_020000.sql.gz.enc", incoming / "second-name")
    plant(incoming, f"{database}_20270103_020000.sql.gz", data=b"-- plain SQL, not encrypted\n")
    os.chmod(incoming, 0)
    receipt = run_gate(nas, "verify")
    reasons = {q["name"]: q["reason"] for q in receipt["quarantined"]}
    assert reasons == {
        "somedir": "not a regular file",
        f"{database}_20270101_020000.sql.gz.enc": "not a regular file",
        f"{database}_20270102_020000.sql.gz.enc": "has another name (a hard link) or is not a regular file",
        f"{database}_20270103_020000.sql.gz": "not an encrypted backup (only encrypted backups go off-site)",
    }
    assert digests(nas["dir"]) == before
    assert set(names) <= set(receipt["copies"])


def test_a_flood_of_junk_uploads_in_one_day_cannot_expire_the_last_good_copies(nas, copied):
    """min_keep counts arrival days: whoever sends a hundred copies today still fills one day."""
    database, names, before = copied
    incoming = nas["state"] / "incoming"
    for number in range(1, 6):
        plant(incoming, f"{database}_2099010{number}_020000.sql.gz.enc")
    plant(incoming, f"{database}_20990100_020000.sql.gz.enc")  # day 0: no date at all, never a backup
    later = time.time() + 100 * 86400
    receipt = run_gate(nas, "verify", now=later)
    assert receipt["expired"] == []
    assert set(names) <= set(receipt["copies"])


def test_a_session_without_a_command_is_refused(sshd, nas):
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-i", sshd.client_key,
            "-o", "IdentitiesOnly=yes", "-p", str(sshd.port), "root@127.0.0.1"]
    result = subprocess.run(argv, input="id\n", capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "refused: this key may only upload new copies" in result.stderr
    assert not (nas["state"] / "receipt.json").exists()


def test_a_forgery_sent_ahead_under_a_backups_name_fails_the_run_instead_of_hiding_it(
        sshd, nas, encrypted_backups, backup_dir, tmp_path):  # noqa: F811 - the fixture imported above
    """Cron names are predictable: whoever has the key can send tomorrow's name first. The
    host must not take that file for its own backup; it says so, and the NAS keeps both apart."""
    database, names = encrypted_backups
    (nas["state"] / "incoming").mkdir(parents=True)
    plant(nas["state"] / "incoming", names[0])
    run_gate(nas, "verify")
    result = offsite(database, backup_dir, nas["target"], tmp_path, **ssh_extra(sshd))
    assert result.returncode == 1
    assert (f"the NAS holds a different file under the name of {names[0]}; it is not this backup and cannot be "
            "replaced from here") in result.stdout
    assert metric(tmp_path, database, "last_run_success") == 0


# -- the way back: the newest copy the NAS verified, read again now (forge nas-newest)

def nas_newest(nas, database):
    return subprocess.run([FORGE, "nas-newest", "--dir", str(nas["dir"]), "--state", str(nas["state"]),
                           "--check-keys", check_keys(nas), "--database", database],
                          capture_output=True, text=True, timeout=60)


def test_the_way_back_takes_the_newest_verified_copy_and_passes_over_one_damaged_since(tmp_path):
    nas = {"dir": tmp_path / "backups", "state": tmp_path / "state"}
    nas["dir"].mkdir(mode=0o700)
    (nas["state"] / "incoming").mkdir(parents=True, mode=0o700)
    before = nas_newest(nas, "infer_forge")
    assert before.returncode == 1 and before.stderr.startswith("ERROR: no receipt of a verification in ")
    for day in ("20261205", "20261206", "20261207"):
        plant(nas["state"] / "incoming", f"infer_forge_{day}_020000.sql.gz.enc")
    plant(nas["state"] / "incoming", "infer_forge_src_20261208_020000.sql.gz.enc")  # another database
    run_gate(nas, "verify")
    found = nas_newest(nas, "infer_forge")
    assert found.returncode == 0, found.stderr
    newest = nas["dir"] / "infer_forge_20261207_020000.sql.gz.enc"
    digest = hashlib.sha256(newest.read_bytes()).hexdigest()
    assert found.stdout.splitlines() == [
        f"NEWEST: {newest.name} ({newest.stat().st_size} bytes, sha256 {digest}) read again now",
        str(newest), f"{newest}.manifest.json"]
    # Damaged after the verification: read again, it no longer matches, and the one before it comes back.
    data = bytearray(newest.read_bytes())
    data[50] ^= 0x01
    newest.write_bytes(bytes(data))
    found = nas_newest(nas, "infer_forge")
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0].startswith("NEWEST: infer_forge_20261206_020000.sql.gz.enc (")
    assert found.stdout.splitlines()[0].endswith(
        f"read again now; passed over: {newest.name}: sha256 does not match its manifest")
    assert bytes(data) == newest.read_bytes()  # nothing on the NAS changed
    (nas["dir"] / "infer_forge_20261206_020000.sql.gz.enc").unlink()
    (nas["dir"] / "infer_forge_20261205_020000.sql.gz.enc").write_bytes(b"Salted__ damaged")
    refused = nas_newest(nas, "infer_forge")
    assert refused.returncode == 1 and refused.stdout == ""
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"ERROR: no verified copy of infer_forge on this NAS in {nas['dir']} (passed over: ")
    assert line.endswith("; nothing was read")


# -- what the NAS counts: only copies whose manifest it can check (the off-site signature)

def test_a_made_up_upload_under_a_new_name_is_kept_but_never_counted_as_verified(sshd, nas, copied, backup_dir,
                                                                                   tmp_path):
    """Anyone with the upload key can send a file and a manifest with its sha256. Without the
    off-site signature the NAS keeps it (evidence) but says "unverified", never counts it, and
    the way back passes it over."""
    database, names, before = copied
    forged = f"{database}_20991231_020000.sql.gz.enc"
    plant(nas["state"] / "incoming", forged, signed=False)
    receipt = run_gate(nas, "verify")
    assert receipt["copies"][forged]["verified"] is False
    assert receipt["copies"][forged]["unverified"] == "no off-site signature: not sent by a host that holds the key"
    assert receipt["unverified"] == [forged]
    assert all(receipt["copies"][n]["verified"] for n in names)
    found = nas_newest(nas, database)
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines()[0].startswith(f"NEWEST: {names[0]} (")
    assert found.stdout.splitlines()[0].endswith(f"passed over: {forged}: unverified (no off-site signature: "
                                                 "not sent by a host that holds the key)")
    # The host counts only what the NAS verified, and names the rest.
    result = offsite(database, backup_dir, nas["target"], tmp_path, **ssh_extra(sshd))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(names)} verified backup(s) there; 1 there unverified ({forged})" in result.stdout, result.stdout
    assert metric(tmp_path, database, "far_unverified") == 1
    assert metric(tmp_path, database, "remote_backups") == len(names)


def test_a_real_copy_sent_again_under_a_newer_name_is_quarantined(nas, copied):
    """A replay: last month's backup and its signed manifest under tomorrow's name would be
    'the newest' on the way back. The signature covers the file name, so the NAS refuses it."""
    database, names, before = copied
    incoming = nas["state"] / "incoming"
    replay = f"{database}_20991231_020000.sql.gz.enc"
    (incoming / replay).write_bytes((nas["dir"] / names[-1]).read_bytes())
    (incoming / (replay + ".manifest.json")).write_bytes((nas["dir"] / (names[-1] + ".manifest.json")).read_bytes())
    receipt = run_gate(nas, "verify")
    assert {q["name"]: q["reason"] for q in receipt["quarantined"]} == {
        replay: f"its manifest was signed for {names[-1]}, not for this name"}
    assert replay not in receipt["copies"]
    assert digests(nas["dir"]) == before


def test_a_manifest_changed_after_signing_is_quarantined(nas, copied):
    database, names, before = copied
    incoming = nas["state"] / "incoming"
    plant(incoming, f"{database}_20991231_020000.sql.gz.enc")
    path = incoming / f"{database}_20991231_020000.sql.gz.enc.manifest.json"
    manifest = json.loads(path.read_text())
    manifest["database"] = "someone_else"
    path.write_text(json.dumps(manifest))
    receipt = run_gate(nas, "verify")
    assert {q["name"]: q["reason"] for q in receipt["quarantined"]} == {
        f"{database}_20991231_020000.sql.gz.enc": "its off-site signature does not match its manifest"}


def test_unverified_uploads_never_keep_a_day_that_retention_would_end(nas, copied):
    """min_keep counts the days of verified copies first: a flood of made-up uploads, on
    later days, does not make the NAS keep them instead of (or beside) the last real ones."""
    database, names, _ = copied
    incoming = nas["state"] / "incoming"
    day = 86400
    start = time.time()
    for offset in (10, 20):
        plant(incoming, f"{database}_2099010{offset // 10}_020000.sql.gz.enc", signed=False)
        run_gate(nas, "verify", now=start + offset * day)
    receipt = run_gate(nas, "verify", now=start + 31 * day)
    # The real copies' day is the only verified one: kept past the retention. The made-up ones
    # are younger than it.
    assert receipt["expired"] == []
    receipt = run_gate(nas, "verify", now=start + 41 * day)
    assert receipt["expired"] == [f"{database}_20990101_020000.sql.gz.enc"]  # 31 days after it arrived
    assert set(names) <= set(receipt["copies"])


def test_a_nas_without_check_keys_verifies_nothing_and_the_host_says_so(
        sshd, tmp_path, encrypted_backups, backup_dir):  # noqa: F811 - the fixture imported above
    database, names = encrypted_backups
    directory = tmp_path / "bare" / "backups"
    directory.mkdir(parents=True, mode=0o700)
    sshd.gate(directory, tmp_path / "bare" / "state", check_keys=str(tmp_path / "bare" / "no-such.keys"))
    result = offsite(database, backup_dir, f"root@127.0.0.1:{directory}", tmp_path, **ssh_extra(sshd))
    assert result.returncode == 1
    assert (f"the NAS took {names[0]} but cannot check its signature (this NAS holds no check key: "
            "--check-keys") in result.stdout, result.stdout
    assert metric(tmp_path, database, "last_run_success") == 0


def test_a_key_file_others_may_write_is_refused_in_one_line(nas, tmp_path):
    path = tmp_path / "loose.keys"
    write_nas_check_keys(path)
    path.chmod(0o666)
    result = subprocess.run([FORGE, "nas-gate", "--dir", str(nas["dir"]), "--state", str(nas["state"]),
                             "--check-keys", str(path), "verify"], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if not k.startswith("SSH_")})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"ERROR: check keys file {path} has mode 0666; only its owner may write it (chmod 640 {path}); "
        "nothing was verified"]


def test_a_nas_without_its_check_keys_expires_nothing_it_cannot_check(nas, copied):
    """Keys not (yet) installed: every copy is unverified, and retention must not take that for
    'nothing worth keeping'. A database without one verified copy keeps all of its copies."""
    database, names, before = copied
    (nas["state"].parent / "nas-check.keys").write_text("")  # an empty keys file: no key at all
    receipt = run_gate(nas, "verify", now=time.time() + 100 * 86400)
    assert receipt["expired"] == []
    assert receipt["retention_held"] == [database]
    assert digests(nas["dir"]) == before


def test_a_signed_copy_takes_its_name_back_from_a_made_up_upload_sent_ahead(
        sshd, nas, encrypted_backups, backup_dir, tmp_path):  # noqa: F811 - the fixture imported above
    """Cron names are predictable: whoever has only the upload key sends tomorrow's name first.
    The NAS cannot check that file, so the host's signed copy takes the name and the made-up
    one moves to the quarantine (kept, never deleted); the run passes."""
    database, names = encrypted_backups
    (nas["state"] / "incoming").mkdir(parents=True)
    plant(nas["state"] / "incoming", names[0], signed=False)
    run_gate(nas, "verify")
    result = offsite(database, backup_dir, nas["target"], tmp_path, **ssh_extra(sshd))
    assert result.returncode == 0, result.stdout + result.stderr
    assert (f"Verified {names[0]} on {nas['target']} (sha256 ") in result.stdout
    assert ("; it took its name from a file there the NAS could not check (moved to its quarantine)"
            in result.stdout), result.stdout
    receipt = run_gate(nas, "receipt")
    assert receipt["copies"][names[0]]["verified"] is True and receipt["ok"] is True
    assert (nas["dir"] / names[0]).read_bytes() == open(os.path.join(backup_dir, names[0]), "rb").read()
    moved = sorted(os.listdir(nas["state"] / "quarantine"))
    assert len(moved) == 2 and moved[0].startswith(names[0] + ".2") and moved[1].startswith(names[0] + ".manifest")
