"""The PITR engine's parts that need no Barman, against a real PostgreSQL: the drill's
restore point (exact counts, writers held only while the point is written, a lock it cannot
get within the timeout fails in one line and leaves the writer alone), and the scratch
cluster's refusal to reuse or remove a directory that is not its own. molecule/pitr runs the
whole drill and the recoveries against Barman and PostgreSQL 17."""

import datetime
import os
import subprocess
import threading
import time

import pytest

from forge.barman import plain_wal_archive
from forge.errors import ForgeError
from forge.pgconn import PgSettings
from forge.pitr import PitrOptions, PitrRecovery, create_restore_point
from forge.scratch import SCRATCH_MARKER, ScratchCluster
from forge.walstage import WalStager


def superuser(pg, database):
    return PgSettings(pg.host, pg.port, pg.superuser, pg.superuser_password, database)


def test_the_restore_point_counts_every_user_table_exactly(pg, sample_db):
    expected = {"public.customers": pg.execute("SELECT count(*) FROM customers", database=sample_db)[0][0],
                "public.orders": pg.execute("SELECT count(*) FROM orders", database=sample_db)[0][0]}
    point = create_restore_point(superuser(pg, sample_db), "forge_test_point")
    assert {t: point["counts"][t] for t in expected} == expected
    assert point["name"] == "forge_test_point" and "/" in point["lsn"]
    assert 0 <= point["writers_held_seconds"] < 5


def test_rows_committed_after_the_point_are_not_in_its_counts_while_the_app_keeps_writing(pg, sample_db):
    """The counts run after the locks are gone, in the snapshot taken while they were held:
    what a writer commits after the point, during the counts too, is not counted."""
    pg.execute("CREATE TABLE ticks (id bigserial PRIMARY KEY)", database=sample_db)
    pg.execute("INSERT INTO ticks SELECT FROM generate_series(1, 300000)", database=sample_db)
    stop, committed = threading.Event(), []

    def writer():
        with pg.connect(sample_db) as conn:
            while not stop.is_set():
                committed.append(conn.execute("INSERT INTO ticks DEFAULT VALUES RETURNING id").fetchone()[0])
                time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        point = create_restore_point(superuser(pg, sample_db), "forge_test_busy")
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(10)
    total = pg.execute("SELECT count(*) FROM ticks", database=sample_db)[0][0]
    # Rows committed after the point exist but are not in its counts.
    assert 300000 < point["counts"]["public.ticks"] < total
    assert len(committed) > 20


def test_a_lock_not_granted_in_time_fails_in_one_line_and_leaves_the_writer_alone(pg, sample_db):
    with pg.connect(sample_db, autocommit=False) as writer:
        writer.execute("INSERT INTO customers (name, email) VALUES ('in flight', 'x@example.cz')")
        with pytest.raises(ForgeError) as caught:
            create_restore_point(superuser(pg, sample_db), "forge_test_blocked", lock_timeout=0.5)
        writer.commit()
    message = caught.value.message
    assert message.startswith("restore point forge_test_blocked not created: ") and "lock timeout" in message
    assert "\n" not in message
    assert pg.execute("SELECT count(*) FROM customers WHERE name = 'in flight'", database=sample_db)[0][0] == 1


@pytest.mark.parametrize("name", ["", "x" * 64, "drill'; DROP TABLE orders; --", "a b"])
def test_a_restore_point_name_outside_the_safe_set_is_refused(pg, sample_db, name):
    with pytest.raises(ForgeError, match="restore point name must be"):
        create_restore_point(superuser(pg, sample_db), name)


def test_a_scratch_directory_is_never_reused_and_only_our_own_is_removed(tmp_path):
    options = PitrOptions("infer-forge", scratch_root=str(tmp_path / "scratch"))
    first = ScratchCluster(options, "drill-1")
    first.prepare()
    assert oct(os.stat(options.scratch_root).st_mode & 0o777) == "0o700"
    with pytest.raises(ForgeError, match="exists already; nothing was changed"):
        ScratchCluster(options, "drill-1").prepare()
    # A directory without our marker (someone's data) is left as it is.
    foreign = tmp_path / "scratch" / "foreign"
    (foreign / "data").mkdir(parents=True)
    ScratchCluster(options, "foreign").remove()
    assert (foreign / "data").is_dir()
    assert (tmp_path / "scratch" / "drill-1" / SCRATCH_MARKER).is_file()
    first.remove()
    assert not (tmp_path / "scratch" / "drill-1").exists()


def test_the_next_drill_removes_a_killed_drills_scratch_cluster_but_keeps_an_operators_recovery(tmp_path):
    options = PitrOptions("infer-forge", scratch_root=str(tmp_path / "scratch"))
    for label in ("drill-20261201T043000Z", "recover-20261202T101500Z"):
        cluster = ScratchCluster(options, label)
        cluster.prepare()
        os.makedirs(cluster.data)
    assert PitrRecovery(options, None).clear_stale_drills() == ["drill-20261201T043000Z"]
    assert sorted(os.listdir(options.scratch_root)) == ["recover-20261202T101500Z"]


def test_forge_pitr_refuses_to_run_as_root_in_one_line():
    import subprocess

    from helpers import REPO

    assert os.geteuid() == 0, "make test runs as root"
    result = subprocess.run([os.path.join(REPO, "scripts", "forge"), "pitr", "drill"], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "PITR_CONFIG": ""}, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip() == ("ERROR: forge pitr runs as the barman user: sudo -u barman env PITR_CONFIG=... "
                                     "forge pitr drill; nothing was changed")


def test_a_commit_between_the_point_and_the_counts_is_not_counted(pg, sample_db, monkeypatch):
    """Deterministically what the writer test shows by chance: a row committed after the restore
    point, just before the counts start, is not in them (the counts use the earlier snapshot)."""
    import forge.pitr

    real_count_rows = forge.pitr.count_rows

    def a_writer_commits_first(cursor, tables):
        with pg.connect(sample_db) as writer:
            writer.execute("INSERT INTO customers (name, email) VALUES ('after the point', 'late@example.cz')")
        return real_count_rows(cursor, tables)

    before = pg.execute("SELECT count(*) FROM customers", database=sample_db)[0][0]
    monkeypatch.setattr(forge.pitr, "count_rows", a_writer_commits_first)
    point = create_restore_point(superuser(pg, sample_db), "forge_test_late_commit")
    assert point["counts"]["public.customers"] == before
    assert pg.execute("SELECT count(*) FROM customers", database=sample_db)[0][0] == before + 1


def test_pitr_jobs_come_from_the_config_one_per_core_by_default_and_a_bad_value_is_one_line():
    from forge.cli import pitr_options_from_config

    assert pitr_options_from_config({"PITR_JOBS": "3"}).jobs == 3
    assert pitr_options_from_config({}).jobs == (os.cpu_count() or 1)
    with pytest.raises(ForgeError, match="PITR_JOBS must be a whole number, got 'many'"):
        pitr_options_from_config({"PITR_JOBS": "many"})


class BarmanSettings:
    """What `barman show-servers` says, without Barman (the recoveries run in molecule/pitr)."""

    def __init__(self, **settings):
        self._values = settings

    def settings(self):
        return self._values


def test_a_recovery_reads_the_wal_straight_from_an_uncompressed_archive_and_leaves_any_other_to_barman():
    plain = plain_wal_archive
    assert plain(BarmanSettings(wals_directory="/var/lib/barman/infer-forge/wals", compression="None")) == \
        "/var/lib/barman/infer-forge/wals"
    assert plain(BarmanSettings(wals_directory="/var/lib/barman/infer-forge/wals", compression="gzip")) is None
    assert plain(BarmanSettings(wals_directory="/srv/barman's wals", compression="None")) is None
    assert plain(BarmanSettings(compression="None")) is None


def _restore_command(scratch):
    with open(os.path.join(scratch.data, "postgresql.auto.conf")) as handle:
        [line] = [line for line in handle if line.startswith("restore_command = ")]
    return line.split("= ", 1)[1].strip()[1:-1]


def _run_restore_command(command, name, target):
    target.unlink(missing_ok=True)
    shell = command.replace("%f", name).replace("%p", str(target)).replace("%%", "%")
    return subprocess.run(["/bin/sh", "-c", shell], capture_output=True, text=True, check=False)


def _archive(tmp_path, names):
    archive = tmp_path / "wals"
    for name in names:
        (archive / name[:16]).mkdir(parents=True, exist_ok=True)
        (archive / name[:16] / name).write_text(f"segment {name}")
    return archive


def test_the_restore_command_fetches_segments_and_history_files_as_barman_files_them(tmp_path):
    """The command as PostgreSQL runs it: %f and %p replaced, %% made a percent sign, by /bin/sh."""
    archive = tmp_path / "wals"
    (archive / "0000000100000000").mkdir(parents=True)
    (archive / "0000000100000000" / "000000010000000000000003").write_text("segment 3")
    (archive / "00000002.history").write_text("timeline 2")
    options = PitrOptions("infer-forge", scratch_root=str(tmp_path / "scratch"))
    scratch = ScratchCluster(options, "recover-test")
    os.makedirs(scratch.data)
    scratch._read_wal_from(str(archive))
    command = _restore_command(scratch)
    for name, expected in (("000000010000000000000003", "segment 3"), ("00000002.history", "timeline 2"),
                           ("000000010000000000000009", None)):
        target = tmp_path / "RECOVERYXLOG"
        ran = _run_restore_command(command, name, target)
        if expected is None:
            assert ran.returncode != 0 and not target.exists()  # not archived: the end of the archive
        else:
            assert ran.returncode == 0 and target.read_text() == expected, ran.stderr
    assert (archive / "0000000100000000" / "000000010000000000000003").read_text() == "segment 3"


def test_a_staged_segment_is_taken_with_a_rename_and_one_not_staged_yet_is_copied_from_the_archive(tmp_path):
    """The stager only saves time: whatever it has not staged, the replay copies from Barman's
    archive as before, so a slow, stopped or failed stager never changes what is replayed."""
    archive = _archive(tmp_path, ["000000010000000000000003", "000000010000000000000004"])
    (archive / "00000002.history").write_text("timeline 2")
    scratch = ScratchCluster(PitrOptions("infer-forge", scratch_root=str(tmp_path / "scratch")), "recover-test")
    os.makedirs(scratch.data)
    os.makedirs(scratch.wal_stage)
    (tmp_path / "scratch" / "recover-test" / "wal" / "000000010000000000000003").write_text("staged 3")
    scratch._read_wal_from(str(archive), scratch.wal_stage)
    command = _restore_command(scratch)
    target = tmp_path / "RECOVERYXLOG"
    ran = _run_restore_command(command, "000000010000000000000003", target)
    assert ran.returncode == 0 and target.read_text() == "staged 3", ran.stderr
    # Moved, not copied: the stager's budget is freed; the name asked for is left for the stager.
    assert os.listdir(scratch.wal_stage) == [".asked"]
    assert (tmp_path / "scratch" / "recover-test" / "wal" / ".asked").read_text().strip() == "000000010000000000000003"
    for name, expected in (("000000010000000000000004", "segment 000000010000000000000004"),
                           ("00000002.history", "timeline 2"), ("000000010000000000000009", None)):
        ran = _run_restore_command(command, name, target)
        if expected is None:
            assert ran.returncode == 1 and not target.exists()  # not archived: the end of the WAL
        else:
            assert ran.returncode == 0 and target.read_text() == expected, ran.stderr
    assert sorted(os.listdir(archive / "0000000100000000")) == ["000000010000000000000003", "000000010000000000000004"]


def test_a_segment_the_archive_holds_but_cannot_be_copied_stops_the_recovery_instead_of_ending_it(tmp_path):
    """Exit 1 would tell PostgreSQL the WAL ends there, and a recovery to latest would promote
    early and report success; above 125 it stops the recovery."""
    archive = _archive(tmp_path, ["000000010000000000000003"])
    scratch = ScratchCluster(PitrOptions("infer-forge", scratch_root=str(tmp_path / "scratch")), "recover-test")
    os.makedirs(scratch.data)
    for stage in (None, scratch.wal_stage):
        with open(os.path.join(scratch.data, "postgresql.auto.conf"), "w"):
            pass
        scratch._read_wal_from(str(archive), stage)
        ran = _run_restore_command(_restore_command(scratch), "000000010000000000000003",
                                   tmp_path / "no-such-directory" / "RECOVERYXLOG")
        assert ran.returncode > 125, (stage, ran.returncode, ran.stderr)


def test_a_staged_segment_that_cannot_be_moved_into_place_is_never_reported_as_restored(tmp_path):
    """The staged copy is there, but the move into pg_wal fails (here: no such directory). The
    command must not say 0, or PostgreSQL would replay a file that is not there; it tries the
    archive, and when that copy fails too it stops the recovery."""
    archive = _archive(tmp_path, ["000000010000000000000003"])
    scratch = ScratchCluster(PitrOptions("infer-forge", scratch_root=str(tmp_path / "scratch")), "recover-test")
    os.makedirs(scratch.data)
    os.makedirs(scratch.wal_stage)
    staged = os.path.join(scratch.wal_stage, "000000010000000000000003")
    with open(staged, "w") as handle:
        handle.write("staged 3")
    scratch._read_wal_from(str(archive), scratch.wal_stage)
    ran = _run_restore_command(_restore_command(scratch), "000000010000000000000003",
                               tmp_path / "no-such-directory" / "RECOVERYXLOG")
    assert ran.returncode > 125, (ran.returncode, ran.stderr)
    with open(staged) as handle:
        assert handle.read() == "staged 3"  # still staged for the next try


def test_the_stager_copies_the_base_backups_segments_on_its_timeline_in_order_and_stays_a_bounded_way_ahead(tmp_path):
    names = [f"0000000100000000000000{n:02X}" for n in range(3, 10)] + ["000000010000000100000000",
                                                                       "000000020000000000000009"]
    archive = _archive(tmp_path, names)
    stage = tmp_path / "stage"
    stager = WalStager(str(archive), str(stage), first=lambda: "000000010000000000000005", ahead=3)
    stager.start()
    try:
        deadline = time.monotonic() + 10
        while sorted(os.listdir(stage)) != names[2:5] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # three staged: it waits for the replay to take one
        assert sorted(os.listdir(stage)) == names[2:5]
        assert (stage / names[2]).read_text() == f"segment {names[2]}"
        (stage / names[2]).unlink()  # the replay took the first
        (stage / names[3]).unlink()
        (stage / names[4]).unlink()
        while sorted(os.listdir(stage)) != names[5:8] and time.monotonic() < deadline:
            time.sleep(0.01)
        # 000000010000000100000000 comes after 00000001000000000000000FF; timeline 2's is not taken
        assert sorted(os.listdir(stage)) == names[5:8]
        for name in names[5:8]:
            (stage / name).unlink()
        stager._thread.join(timeout=10)
        assert not stager._thread.is_alive() and os.listdir(stage) == []
    finally:
        stager.stop()
    assert not stage.exists()
    assert all((archive / name[:16] / name).read_text() == f"segment {name}" for name in names)


def test_a_stager_that_cannot_read_the_archive_stops_and_leaves_the_replay_to_the_archive(tmp_path):
    stage = tmp_path / "stage"
    stager = WalStager(str(tmp_path / "no-such-archive"), str(stage), first=lambda: "000000010000000000000005")
    stager.start()
    stager._thread.join(timeout=10)
    assert not stager._thread.is_alive() and os.listdir(stage) == []
    failing = WalStager(str(tmp_path), str(tmp_path / "stage2"), first=lambda: (_ for _ in ()).throw(ForgeError("x")))
    failing.start()
    failing._thread.join(timeout=10)
    assert not failing._thread.is_alive()
    failing.stop()
    stager.stop()


def test_the_stager_starts_a_time_recovery_at_the_backup_barman_chooses_for_that_time():
    from forge.barman import Barman

    class Catalog(Barman):
        def backups(self):
            return [{"backup_id": "20261205T060000", "status": "DONE", "end_time_timestamp": "2000"},
                    {"backup_id": "20261204T060000", "status": "FAILED", "end_time_timestamp": "1500"},
                    {"backup_id": "20261203T060000", "status": "DONE", "end_time_timestamp": "1000"}]

    catalog = Catalog(PitrOptions("infer-forge"))
    at = lambda epoch: datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(sep=" ")  # noqa: E731
    assert catalog.backup_before(at(1800)) == "20261203T060000"  # before the newest: the one before it
    assert catalog.backup_before(at(2500)) == "20261205T060000"
    assert catalog.backup_before(at(500)) is None  # before every backup: nothing to stage
    # No zone: the Barman host's local time, as Barman reads it.
    assert catalog.backup_before(datetime.datetime.fromtimestamp(1800).isoformat(sep=" ")) == "20261203T060000"
    assert catalog.backup_before(at(2000)) == "20261205T060000"  # ended exactly then: Barman takes it
    assert catalog.backup_before("yesterday") is None
    assert catalog.first_wal(None) is None


def test_a_staged_name_only_ever_holds_a_whole_segment(tmp_path):
    """restore_command takes whatever stands under a segment's name: a segment half written
    there would be replayed as the end of the WAL, and the recovery would stop short."""
    from forge.barman import SEGMENT_NAME_RE

    size = 16 << 20
    bucket = tmp_path / "wals" / "0000000100000000"
    bucket.mkdir(parents=True)
    names = [f"0000000100000000000000{n:02X}" for n in range(1, 9)]
    content = os.urandom(1 << 20) * 16
    for name in names:
        (bucket / name).write_bytes(content)
    stage = tmp_path / "stage"
    stager = WalStager(str(tmp_path / "wals"), str(stage), first=lambda: names[0])
    torn = []
    stager.start()
    try:
        while stager._thread.is_alive():
            for entry in os.scandir(stage):
                if SEGMENT_NAME_RE.match(entry.name):
                    try:
                        seen = entry.stat().st_size
                    except FileNotFoundError:
                        continue
                    if seen != size:
                        torn.append((entry.name, seen))
        assert sorted(os.listdir(stage)) == names
        assert all((stage / name).read_bytes() == content for name in names)
    finally:
        stager.stop()
    assert not torn, f"names that held part of a segment: {torn[:3]}"


def test_a_time_recovery_lets_barman_choose_the_backup_and_the_others_start_from_the_newest(tmp_path):
    """A time before the newest base backup is recovered from the backup before it (Barman's
    ``auto``); latest and a restore point start from the newest."""
    calls = tmp_path / "calls"
    fake = tmp_path / "barman"
    fake.write_text("#!/bin/sh\n"
                    f'echo "$*" >> {calls}\n'
                    'case "$1" in show-servers) echo "  wals_directory: /srv/wals"; echo "  compression: gzip"; '
                    'echo "  streaming_wals_directory: /srv/streaming";; '
                    'restore) for last; do :; done; mkdir -p "$last";; esac\n')
    fake.chmod(0o755)
    options = PitrOptions("infer-forge", scratch_root=str(tmp_path / "scratch"), barman_command=[str(fake)])
    from forge.barman import Barman

    for label, target, value in (("recover-time", "time", "2026-12-03 14:05:00+01"),
                                 ("recover-name", "name", "before_upgrade")):
        scratch = ScratchCluster(options, label)
        scratch.prepare()
        scratch.restore(Barman(options), target, value)
    restores = [line.split() for line in calls.read_text().splitlines() if line.startswith("restore")]
    assert [words[-3:-1] for words in restores] == [["infer-forge", "auto"], ["infer-forge", "latest"]]
    assert "--target-time" in restores[0] and "--target-name" in restores[1]


def test_the_stager_drops_what_the_replay_passed_and_skips_ahead_to_it(tmp_path):
    """A stager that fell behind the replay catches up instead of staging segments nobody reads."""
    names = [f"0000000100000000000000{n:02X}" for n in range(3, 10)]
    archive = _archive(tmp_path, names)
    stage = tmp_path / "stage"
    stager = WalStager(str(archive), str(stage), first=lambda: names[0], ahead=2)
    stager.start()
    try:
        deadline = time.monotonic() + 10
        while sorted(os.listdir(stage)) != names[:2] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(os.listdir(stage)) == names[:2]
        # The replay copied 03 to 06 from the archive itself and now asks for 06; a request on
        # another timeline (PostgreSQL probes a newer one first) moves nothing.
        (stage / ".asked").write_text("000000020000000000000009\n")
        time.sleep(0.3)
        assert sorted(os.listdir(stage)) == [".asked"] + names[:2]
        (stage / ".asked").write_text(names[3] + "\n")
        while sorted(os.listdir(stage)) != [".asked"] + names[4:6] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(os.listdir(stage)) == [".asked"] + names[4:6]  # 07 and 08 staged, 03 and 04 dropped
    finally:
        stager.stop()


def _stand_in_barman(tmp_path, archive, show_backup="", restore="sleep 1"):
    """Barman as a recovery calls it, a stand-in script: only our side of the command line is
    under test here (molecule/pitr runs the real one)."""
    streaming = tmp_path / "streaming"
    streaming.mkdir(exist_ok=True)
    fake = tmp_path / "barman"
    fake.write_text("#!/bin/sh\n"
                    'case "$*" in\n'
                    f'  show-servers*) echo "  wals_directory: {archive}"; echo "  compression: None"; '
                    f'echo "  streaming_wals_directory: {streaming}";;\n'
                    f'  *show-backup*) {show_backup or ":"}; echo \'{{"infer-forge": {{"base_backup_information": '
                    '{"begin_wal": "000000010000000000000004"}}}\';;\n'
                    f'  restore*) for last; do :; done; mkdir -p "$last/pg_wal"; {restore};;\n'
                    "esac\n")
    fake.chmod(0o755)
    return PitrOptions("infer-forge", scratch_root=str(tmp_path / "scratch"), barman_command=[str(fake)])


def test_a_scratch_cluster_stages_from_a_plain_archive_while_barman_copies(tmp_path):
    from forge.barman import Barman

    names = [f"0000000100000000000000{n:02X}" for n in range(3, 8)]
    options = _stand_in_barman(tmp_path, _archive(tmp_path, names))
    scratch = ScratchCluster(options, "recover-wired")
    scratch.prepare()
    scratch.restore(Barman(options), "latest")
    stage = scratch.wal_stage
    deadline = time.monotonic() + 10
    while sorted(os.listdir(stage)) != names[1:] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(os.listdir(stage)) == names[1:]  # from the backup's first segment on
    assert f'"{stage}/$f"' in _restore_command(scratch)
    scratch.remove()
    assert not os.path.exists(scratch.path)


def test_a_failed_barman_restore_stops_the_stager_and_leaves_nothing_behind(tmp_path):
    from forge.barman import Barman

    names = [f"0000000100000000000000{n:02X}" for n in range(3, 8)]
    options = _stand_in_barman(tmp_path, _archive(tmp_path, names), show_backup="sleep 2",
                               restore="echo 'ERROR: the disk is full' >&2; exit 1")
    scratch = ScratchCluster(options, "recover-failed")
    scratch.prepare()
    with pytest.raises(ForgeError, match="barman restore failed: ERROR: the disk is full"):
        scratch.restore(Barman(options), "latest")
    thread = scratch.stager._thread
    assert thread.is_alive()  # still asking Barman for the first segment
    scratch.remove()  # as PitrRecovery.recover does on any failure
    assert not thread.is_alive() and not os.path.exists(scratch.path)


def test_the_slot_says_how_much_wal_it_may_still_hold_and_when_it_lost_some(pg):
    """Barman's slot on a real server: unlimited, then capped by max_slot_wal_keep_size, then
    past the cap after a checkpoint (the WAL the receiver never got is gone: 'lost')."""
    from forge.barman import slot_health

    conninfo = (f"host={pg.host} port={pg.port} user={pg.superuser} password={pg.superuser_password} "
                "dbname=postgres")
    slot = f"forge_slot_{os.getpid()}"
    pg.execute(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
    try:
        assert slot_health(conninfo, slot) == ("reserved", None)
        pg.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '64MB'")
        pg.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while slot_health(conninfo, slot)[1] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        status, safe = slot_health(conninfo, slot)
        assert status == "reserved" and 0 < safe <= (64 + 16) * 2**20  # the cap, counted from its segment
        pg.execute("CREATE TABLE forge_wal_filler AS SELECT repeat(md5(n::text), 40) AS x "
                   "FROM generate_series(1, 100000) AS n")
        pg.execute("CHECKPOINT")
        assert slot_health(conninfo, slot)[0] == "lost"
    finally:
        pg.execute(f"SELECT pg_drop_replication_slot('{slot}')")
        pg.execute("DROP TABLE IF EXISTS forge_wal_filler")
        pg.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        pg.execute("SELECT pg_reload_conf()")
    assert slot_health(conninfo, slot) is None  # no such slot
    assert slot_health("host=127.0.0.1 port=1 connect_timeout=1", slot) is None  # no server


@pytest.mark.parametrize("target, value", [
    ("name", "x'\nrestore_command = 'touch /tmp/forge-pwned'\n#"),
    ("name", "before migration\\' 42"),
    ("name", "x" * 64),
    ("time", "2026-12-07 10:00:00'\nrecovery_end_command = 'id'"),
    ("time", "2026-12-07 10:00:00" + " " * 60),
])
def test_a_recovery_target_that_could_reach_the_scratch_configuration_is_refused(tmp_path, target, value):
    """Barman writes the target into the scratch cluster's postgresql.auto.conf, between quotes:
    a quote, backslash or line break in it would add a setting of the caller's (a command)."""
    options = PitrOptions("infer-forge", scratch_root=str(tmp_path / "scratch"))
    with pytest.raises(ForgeError) as caught:
        PitrRecovery(options, None).recover(target, value)
    assert caught.value.message.endswith("; nothing was changed"), caught.value.message
    assert "\n" not in caught.value.message
    assert not (tmp_path / "scratch").exists()


def test_a_restore_point_named_by_the_app_with_spaces_is_still_a_target(tmp_path):
    """pg_create_restore_point('before migration 42') is the app's to name: the check refuses only
    what could leave the quotes, so the recovery goes on to Barman (absent here)."""
    from forge.pitr import check_target

    assert check_target("name", "before migration 42") == "before migration 42"
    assert check_target("time", "2026-12-07T10:00:00+00:00") == "2026-12-07T10:00:00+00:00"
