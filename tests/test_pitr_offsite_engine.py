"""The off-site PITR engine's refusals that need no restic server, on this host: a repository URL
that would leak the REST password or name a login, a NAS whose TLS certificate is not the
pinned one (a real TLS server on loopback, with certificates openssl makes here), a restic that
another user could have replaced, and a restore into a directory that holds anything.
molecule/pitr runs the copies, checks and restores against restic and rest-server."""

import datetime
import json
import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from forge.errors import ForgeError
from forge.pitr_offsite import OffsiteOptions, PitrOffsite, Restic, parse_repository, probe_tls


@pytest.mark.parametrize("repository, said", [
    ("rest:http://nas.infer.local:8000/db1/", "over http the REST password crosses the network in clear"),
    ("rest:https://db1:secret@nas:8000/db1/", "the off-site repository URL carries a login"),
    ("sftp:nas:/srv/restic", "the off-site repository must be a rest-server"),
    ("rest:https://nas:port/db1/", "the off-site repository's port is not a number"),
])
def test_a_repository_url_that_would_leak_or_mislead_is_refused_in_one_line(repository, said):
    with pytest.raises(ForgeError) as refused:
        parse_repository(repository)
    assert said in refused.value.message and "secret" not in refused.value.message


def test_https_and_plain_http_on_loopback_are_taken():
    assert parse_repository("rest:https://nas.infer.local:8000/db1/") == ("https", "nas.infer.local", 8000)
    assert parse_repository("rest:http://127.0.0.1:8000/db1/") == ("http", "127.0.0.1", 8000)


def make_certificate(directory, name, cn="localhost"):
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={cn}",
                    "-addext", f"subjectAltName=DNS:{cn}"], check=True, capture_output=True)
    return key, cert


@pytest.fixture
def tls_server(tmp_path):
    """A TLS server on a free loopback port, presenting the certificate 'nas'."""
    key, cert = make_certificate(tmp_path, "nas")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]

    def serve():
        for _ in range(4):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, cert
    listener.close()


def test_the_pinned_certificate_is_taken_and_another_is_refused_before_anything_is_sent(tmp_path, tls_server):
    port, pinned = tls_server
    assert probe_tls("localhost", port, str(pinned)) is True
    _, other = make_certificate(tmp_path, "other")
    with pytest.raises(ForgeError) as refused:
        probe_tls("localhost", port, str(other))
    assert refused.value.message == (f"the NAS at localhost:{port} does not present the pinned certificate "
                                     "(self-signed certificate); nothing was sent")


def test_a_nas_that_does_not_answer_is_one_line():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(ForgeError) as refused:
        probe_tls("127.0.0.1", port, None, timeout=5)
    assert refused.value.message.startswith(f"cannot reach the NAS at 127.0.0.1:{port}: ")
    assert refused.value.message.endswith("; nothing was sent")


def options(tmp_path, **extra):
    return OffsiteOptions("infer-forge", "rest:https://localhost:8000/db1/", "repository-password",
                          state_dir=str(tmp_path / "state"), **extra)


def test_a_restic_another_user_could_have_replaced_is_never_run(tmp_path, monkeypatch):
    planted = tmp_path / "restic"
    planted.write_text("#!/bin/sh\ntouch canary\n")
    planted.chmod(0o775)  # group-writable
    monkeypatch.setattr("forge.pitr_offsite.RESTIC_PATHS", (str(planted),))
    with pytest.raises(ForgeError) as refused:
        Restic(options(tmp_path))
    assert refused.value.message == f"no root-owned restic in {planted}; install Debian's restic"


def test_restic_is_handed_the_secrets_in_its_environment_never_on_its_command_line(tmp_path):
    shown = tmp_path / "shown"
    fake = tmp_path / "restic"
    # Stands in for restic (this host's Debian 12 has no rest-server); it only records what it was given.
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {shown}.args\nenv > {shown}.env\n")
    fake.chmod(0o755)
    restic = Restic(options(tmp_path, rest_user="db1", rest_password="rest-secret", restic=str(fake)))
    restic.run("snapshots", "--json")
    args = (tmp_path / "shown.args").read_text()
    env = dict(line.split("=", 1) for line in (tmp_path / "shown.env").read_text().splitlines() if "=" in line)
    assert "secret" not in args and "password" not in args
    assert env["RESTIC_PASSWORD"] == "repository-password" and env["RESTIC_REST_PASSWORD"] == "rest-secret"
    assert env["PATH"] == "/usr/bin:/bin" and "PGPASSWORD" not in env


def test_a_restore_into_a_directory_that_holds_anything_writes_nothing(tmp_path):
    target = tmp_path / "restore"
    target.mkdir()
    (target / "keep").write_text("the operator's file")
    offsite = PitrOffsite(options(tmp_path, restic="/bin/false"))
    with pytest.raises(ForgeError) as refused:
        offsite.restore(str(target))
    assert refused.value.message.endswith("exists and is not an empty directory; a restore never writes over "
                                          "anything, nothing was changed")
    assert os.listdir(target) == ["keep"] and (target / "keep").read_text() == "the operator's file"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ForgeError):
        offsite.restore(str(link))
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("subset", ["5%", "100%", "2.5%", "1/7", "500M"])
def test_the_check_subset_takes_restics_forms(tmp_path, subset):
    assert options(tmp_path, check_subset=subset).check_subset == subset


@pytest.mark.parametrize("subset", ["101%", "all", "5% --no-lock", "0/7"])
def test_a_check_subset_restic_would_misread_is_refused(tmp_path, subset):
    with pytest.raises(ForgeError, match="check subset must be like"):
        options(tmp_path, check_subset=subset)


def test_a_run_that_finds_another_still_going_records_nothing_and_pages_nobody(tmp_path):
    from forge.fsutil import DirectoryLock

    textfile = tmp_path / "textfile"
    textfile.mkdir()
    offsite = PitrOffsite(options(tmp_path, restic="/bin/false", lock_wait=0, textfile_dir=str(textfile)))
    os.makedirs(tmp_path / "state")
    with DirectoryLock(str(tmp_path / "state" / ".pitr_offsite_infer-forge.lock")):
        result = offsite.copy()
    assert result["locked"] and result["verdict"] == "SKIP" and not result["passed"]
    assert result["reason"].startswith("another off-site PITR copy or check is already running")
    assert result["reason"].endswith("; this run did nothing")
    assert os.listdir(textfile) == [] and not (tmp_path / "state" / "pitr_offsite_infer-forge.json").exists()


def test_a_damaged_record_of_the_repository_stops_the_run_instead_of_forgetting_it(tmp_path):
    os.makedirs(tmp_path / "state")
    record = tmp_path / "state" / "pitr_offsite_infer-forge.json"
    offsite = PitrOffsite(options(tmp_path, restic="/bin/false"))
    for damaged in ("{", '{"repository_id": 7}', "[]"):
        record.write_text(damaged)
        with pytest.raises(ForgeError) as stopped:
            offsite._state()
        assert stopped.value.message.startswith(f"the off-site record {record} is damaged; nothing was sent")
    record.unlink()
    assert offsite._state() == {}


def test_root_reading_a_record_barman_wrote_neither_hangs_nor_follows_nor_overflows(tmp_path):
    from forge import metrics
    from forge.fsutil import read_json_object

    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    assert read_json_object(str(fifo)) == {}  # returns at once: a FIFO is not opened for reading
    (tmp_path / "secret.json").write_text('{"reason": "root only"}')
    (tmp_path / "link.json").symlink_to(tmp_path / "secret.json")
    assert read_json_object(str(tmp_path / "link.json")) == {}
    (tmp_path / "big.json").write_text('{"a": "' + "x" * (2 << 20) + '"}')
    assert read_json_object(str(tmp_path / "big.json")) == {}
    prom = tmp_path / "m.prom"
    for doctored in ("nan", "inf", "1e300"):
        prom.write_text(f'infer_forge_pitr_offsite_last_success_timestamp_seconds{{server="s"}} {doctored}\n')
        assert metrics.read_sample(str(prom), "infer_forge_pitr_offsite_last_success_timestamp_seconds") is None


class RecordingBarman:
    """Barman's view of one server's directories, and the commands the engine asked of it.
    Barman does not run on Debian 12: molecule/pitr runs this against Barman 3.13 and restic."""

    def __init__(self, server_dir):
        self.server_dir = str(server_dir)
        self.ran = []

    def directory(self, key):
        return {"backup_directory": self.server_dir, "wals_directory": os.path.join(self.server_dir, "wals"),
                "basebackups_directory": os.path.join(self.server_dir, "base")}[key]

    def run(self, *args, timeout=None):
        self.ran.append(args)
        return ""


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def snapshot_of(server_dir, systemid):
    """What restic restore puts in the target: the server's directory at its own path."""
    def restore(target, snapshot="latest"):
        restored = os.path.join(target, str(server_dir).lstrip("/"))
        base = os.path.join(restored, "base", "20261201T000000")
        os.makedirs(os.path.join(base, "data"))
        write(Path(base, "data", "PG_VERSION"), "17\n")
        write(Path(restored, "meta", "20261201T000000-backup.info"), "status=DONE\n")
        write(Path(restored, "identity.json"), json.dumps({"systemid": systemid}))
        write(Path(restored, "wals", "0000000100000000", "000000010000000000000004"), "restored 4")
        write(Path(restored, "wals", "0000000100000000", "000000010000000000000005"), "restored 5")
        write(Path(restored, "wals", "xlog.db"), "restored catalog")
        # A link a compromised Barman host put into its copy: never followed into the catalog.
        os.symlink("/etc/hostname", os.path.join(restored, "wals", "0000000100000000", "000000010000000000000006"))
        os.symlink("/etc", os.path.join(restored, "base", "20261202T000000"))
        return {"target": target, "snapshot": snapshot, "duration": 0.1}
    return restore


def live_server(tmp_path, systemid="7400000000000000001"):
    server_dir = tmp_path / "barman" / "infer-forge"
    write(server_dir / "identity.json", json.dumps({"systemid": systemid}))
    write(server_dir / "wals" / "0000000100000000" / "000000010000000000000005", "streamed here 5")
    write(server_dir / "wals" / "xlog.db", "this host's catalog")
    return server_dir


def test_a_snapshot_taken_back_into_barman_adds_what_is_missing_and_replaces_nothing(tmp_path, monkeypatch):
    server_dir = live_server(tmp_path)
    barman = RecordingBarman(server_dir)
    offsite = PitrOffsite(options(tmp_path, restic="/bin/false"), barman)
    monkeypatch.setattr(offsite, "restore", snapshot_of(server_dir, "7400000000000000001"))
    result = offsite.restore_into_barman()
    assert (result["base_backups"], result["wal_files"]) == (1, 1)
    wals = server_dir / "wals" / "0000000100000000"
    assert not os.path.lexists(wals / "000000010000000000000006")
    assert not os.path.lexists(server_dir / "base" / "20261202T000000")
    assert (wals / "000000010000000000000004").read_text() == "restored 4"
    assert (wals / "000000010000000000000005").read_text() == "streamed here 5"
    assert (server_dir / "wals" / "xlog.db").read_text() == "this host's catalog"
    assert (server_dir / "base" / "20261201T000000" / "data" / "PG_VERSION").read_text() == "17\n"
    assert (server_dir / "meta" / "20261201T000000-backup.info").read_text() == "status=DONE\n"
    assert barman.ran == [("rebuild-xlogdb", "infer-forge")]
    assert os.listdir(server_dir.parent) == ["infer-forge"]  # the staging directory is gone


def test_a_snapshot_of_another_database_is_refused_and_nothing_moves(tmp_path, monkeypatch):
    server_dir = live_server(tmp_path)
    before = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    barman = RecordingBarman(server_dir)
    offsite = PitrOffsite(options(tmp_path, restic="/bin/false"), barman)
    monkeypatch.setattr(offsite, "restore", snapshot_of(server_dir, "7499999999999999999"))
    with pytest.raises(ForgeError) as refused:
        offsite.restore_into_barman()
    assert refused.value.message == ("the snapshot is of PostgreSQL system 7499999999999999999, Barman streams "
                                     "7400000000000000001; nothing was moved into Barman's catalog")
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == before
    assert barman.ran == []


def _snapshot(ident, when):
    return {"id": ident, "time": when}


NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)


def test_the_nas_prune_forgets_only_what_is_older_than_its_window_by_the_nas_clock():
    from forge.pitr_offsite import choose_expired

    snapshots = [_snapshot("old1", "2026-10-01T03:00:00.123456789+00:00"),
                 _snapshot("old2", "2026-10-20T03:00:00Z"),
                 _snapshot("recent", "2026-12-01T03:00:00.5+01:00"),
                 _snapshot("today", "2026-12-07T11:00:00+00:00")]
    assert choose_expired(snapshots, keep_days=30, keep_last=1, now=NOW) == ["old1", "old2"]
    # Never one of the newest keep_last, however old.
    assert choose_expired(snapshots, keep_days=30, keep_last=3, now=NOW) == ["old1"]
    assert choose_expired(snapshots[:2], keep_days=30, keep_last=3, now=NOW) == []


def test_a_snapshot_dated_in_the_future_expires_nothing_and_is_kept():
    """A Barman host sets any time it likes on its snapshots: restic's --keep-within counts from
    the newest, so one dated 2099 would expire every real copy. Ours counts from the NAS's clock,
    keeps the future one and does not let it fill a keep_last place."""
    from forge.pitr_offsite import choose_expired

    snapshots = [_snapshot("real-1", "2026-12-05T03:00:00+00:00"), _snapshot("real-2", "2026-12-06T03:00:00+00:00"),
                 *[_snapshot(f"future-{n}", f"2099-01-0{n}T00:00:00+00:00") for n in range(1, 4)],
                 _snapshot("undated", "not a time")]
    assert choose_expired(snapshots, keep_days=1, keep_last=1, now=NOW) == ["real-1"]
    assert choose_expired(snapshots, keep_days=1, keep_last=2, now=NOW) == []


@pytest.mark.parametrize("arguments, message", [
    (("relative/path", "pw"), "the repository to prune is a directory on this host"),
    (("/srv/repo", ""), "no repository password for the prune"),
    (("/srv/repo", "pw", 0), "a prune keeps at least 1 day and 1 snapshot"),
])
def test_a_prune_without_what_it_needs_is_refused_in_one_line(arguments, message):
    from forge.pitr_offsite import PruneOptions

    with pytest.raises(ForgeError, match=message):
        PruneOptions(*arguments)


def test_a_prune_of_a_directory_without_a_repository_prunes_nothing(tmp_path):
    from forge.pitr_offsite import PruneOptions, prune_repository

    with pytest.raises(ForgeError) as caught:
        prune_repository(PruneOptions(str(tmp_path), "pw", restic="/bin/true"))
    assert caught.value.message == f"no restic repository at {tmp_path}; nothing was pruned"


def test_the_prune_dates_each_snapshot_by_its_arrival_on_the_nas_not_by_what_its_client_wrote(tmp_path):
    """A Barman host writes any time into its snapshots; the NAS dates them by their files'
    arrival. One that claims 2026-09-01 but arrived today stays; one that arrived 40 days ago goes;
    an id that is not a snapshot file of the repository is never forgotten on a guess."""
    from forge.pitr_offsite import _arrivals, choose_expired

    (tmp_path / "snapshots").mkdir()
    arrived_old, claims_old, missing = "a" * 64, "b" * 64, "c" * 64
    for ident in (arrived_old, claims_old):
        (tmp_path / "snapshots" / ident).write_bytes(b"ciphertext")
    forty_days_ago = NOW.timestamp() - 40 * 86400
    os.utime(tmp_path / "snapshots" / arrived_old, (forty_days_ago, forty_days_ago))
    os.utime(tmp_path / "snapshots" / claims_old, (NOW.timestamp(), NOW.timestamp()))
    listed = [_snapshot(arrived_old, "2026-12-06T00:00:00Z"), _snapshot(claims_old, "2026-09-01T00:00:00Z"),
              _snapshot(missing, "2020-01-01T00:00:00Z"), _snapshot("../../etc", "2020-01-01T00:00:00Z")]
    assert choose_expired(_arrivals(str(tmp_path), listed), keep_days=30, keep_last=1, now=NOW) == [arrived_old]


def test_a_prune_forgets_by_arrival_and_prunes_with_the_password_in_its_environment_only(tmp_path):
    """prune_repository end to end, with a stand-in for restic (the real one runs in molecule/pitr):
    the snapshot that arrived 40 days ago is forgotten though it claims to be new, the one that
    claims 2026-09-01 but arrived now is kept, then prune runs; the password never reaches argv."""
    from forge.pitr_offsite import PruneOptions, prune_repository

    repository = tmp_path / "repo"
    (repository / "snapshots").mkdir(parents=True)
    (repository / "config").write_bytes(b"ciphertext")
    arrived_old, claims_old = "d" * 64, "e" * 64
    for ident in (arrived_old, claims_old):
        (repository / "snapshots" / ident).write_bytes(b"ciphertext")
    old = NOW.timestamp() - 40 * 86400
    os.utime(repository / "snapshots" / arrived_old, (old, old))
    os.utime(repository / "snapshots" / claims_old, (NOW.timestamp(), NOW.timestamp()))  # arrived "now"
    calls = tmp_path / "calls"
    listing = json.dumps([_snapshot(arrived_old, "2026-12-07T00:00:00Z"),
                          _snapshot(claims_old, "2026-09-01T00:00:00Z")])
    stand_in = tmp_path / "restic"
    stand_in.write_text(f"#!/bin/sh\necho \"$* password=$RESTIC_PASSWORD\" >> {calls}\n"
                        f"[ \"$1\" = snapshots ] && echo '{listing}'\nexit 0\n")
    stand_in.chmod(0o755)
    result = prune_repository(PruneOptions(str(repository), "the-password", keep_days=30, keep_last=1,
                                           restic=str(stand_in)), clock=lambda: NOW.timestamp())
    assert result["expired"] == [arrived_old] and result["changed"] is True
    lines = calls.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["snapshots", "forget", "prune"]
    assert lines[1] == f"forget --no-cache {arrived_old} password=the-password"
