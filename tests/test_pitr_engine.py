"""The PITR engine's parts that need no Barman, against a real PostgreSQL: the drill's
restore point (exact counts, writers held only while the point is written, a lock it cannot
get within the timeout fails in one line and leaves the writer alone), and the scratch
cluster's refusal to reuse or remove a directory that is not its own. molecule/pitr runs the
whole drill and the recoveries against Barman and PostgreSQL 17."""

import os
import subprocess
import threading
import time

import pytest

from forge.errors import ForgeError
from forge.pgconn import PgSettings
from forge.pitr import SCRATCH_MARKER, PitrOptions, PitrRecovery, ScratchCluster, create_restore_point


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
    plain = ScratchCluster._plain_wal_archive
    assert plain(BarmanSettings(wals_directory="/var/lib/barman/infer-forge/wals", compression="None")) == \
        "/var/lib/barman/infer-forge/wals"
    assert plain(BarmanSettings(wals_directory="/var/lib/barman/infer-forge/wals", compression="gzip")) is None
    assert plain(BarmanSettings(wals_directory="/srv/barman's wals", compression="None")) is None
    assert plain(BarmanSettings(compression="None")) is None


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
    with open(os.path.join(scratch.data, "postgresql.auto.conf")) as handle:
        [line] = [line for line in handle if line.startswith("restore_command = ")]
    command = line.split("= ", 1)[1].strip()[1:-1]
    for name, expected in (("000000010000000000000003", "segment 3"), ("00000002.history", "timeline 2"),
                           ("000000010000000000000009", None)):
        target = tmp_path / "RECOVERYXLOG"
        target.unlink(missing_ok=True)
        shell = command.replace("%f", name).replace("%p", str(target)).replace("%%", "%")
        ran = subprocess.run(["/bin/sh", "-c", shell], capture_output=True, text=True, check=False)
        if expected is None:
            assert ran.returncode != 0 and not target.exists()  # not archived: the end of the archive
        else:
            assert ran.returncode == 0 and target.read_text() == expected, ran.stderr
    assert (archive / "0000000100000000" / "000000010000000000000003").read_text() == "segment 3"
