"""No plaintext on disk and flat memory while an encrypted backup restores
(docs/restore-and-drill.md, "What a restore does").

The restore runs as on the host (scripts/restore_db.sh) with a psql on its PATH that
pauses the stream twice, after its first MiB and at its end, so the test can look
while the restore is under way: at every file that could hold a spilled dump (the
backup directory, TMPDIR, the working directory, /tmp, /var/tmp, /dev/shm, every
file the restoring processes hold open, deleted ones included) for a marker planted
in the rows, and at the engine's peak resident memory (VmHWM). The same database is
restored at two sizes, the second four times the first; only their ratio is judged.
"""

import os
import shutil
import stat
import subprocess
import time
import uuid

import pytest

from helpers import REPO, children_of, take_backup
from servers import table_counts

RESTORE_SCRIPT = os.path.join(REPO, "scripts", "restore_db.sh")
ROW_BYTES = 2048
SMALL_ROWS = 2000  # about 4 MB of dump text; the large restore has four times as many rows
MIB = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
# Where a spilled dump could land besides the test's own directories. The servers' data
# directories (forge-pg.*) hold restored rows by design and are left out.
SHARED_TEMP = ("/tmp", "/var/tmp", "/dev/shm")

PAUSING_PSQL = r'''#!/usr/bin/python3
"""psql as the restore runs it, paused after the first MiB of the stream and at its end
(before the real psql sees end of input) until the test says go."""
import os
import sys
import time

REAL = {real!r}
CONTROL = os.environ["FORGE_TEST_PSQL_CONTROL"]


def pause(name):
    with open(os.path.join(CONTROL, name + ".tmp"), "w") as handle:
        handle.write(str(child))
    os.rename(os.path.join(CONTROL, name + ".tmp"), os.path.join(CONTROL, name))
    deadline = time.monotonic() + 600
    while not os.path.exists(os.path.join(CONTROL, name + ".go")) and time.monotonic() < deadline:
        time.sleep(0.02)


read_end, write_end = os.pipe()
child = os.fork()
if child == 0:
    os.close(write_end)
    os.dup2(read_end, 0)
    os.close(read_end)
    os.execv(REAL, [REAL] + sys.argv[1:])
os.close(read_end)
forwarded = 0
paused = False
while True:
    data = os.read(0, 1 << 16)
    if not data:
        break
    view = memoryview(data)
    while view:
        view = view[os.write(write_end, view):]
    forwarded += len(data)
    if not paused and forwarded >= 1 << 20:
        paused = True
        pause("mid")
pause("end")
os.close(write_end)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
'''


def add_rows(pg, database, rows, marker):
    """Rows of poorly compressible text; every 500th carries the marker."""
    with pg.connect(database, superuser=False) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS blobs (id serial PRIMARY KEY, payload text)")
        conn.execute("INSERT INTO blobs (payload) SELECT CASE WHEN g %% 500 = 0 THEN %s ELSE '' END "
                     "|| string_agg(md5(g::text || h::text || random()::text), '') "
                     "FROM generate_series(1, %s) g, generate_series(1, %s) h GROUP BY g",
                     (marker, rows, ROW_BYTES // 32))


def process_tree(pid):
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children_of(current))
    return found


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def candidate_files(roots, pids, since):
    """(label, path, ours) of every regular file that could hold a spilled dump; ``ours``: in this
    restore's own directories or open in its processes, where no gzip stream belongs either."""
    for root, ours in roots:
        for directory, subdirs, files in os.walk(root):
            # Shared directories hold other tests' trees: a spill lands at their top or in a directory
            # made or changed since the restore started, so only such directories are entered.
            subdirs[:] = [d for d in subdirs if not d.startswith("forge-pg.")
                          and (ours or _changed_since(os.path.join(directory, d), since))]
            for name in files:
                path = os.path.join(directory, name)
                try:
                    info = os.lstat(path)
                except OSError:
                    continue
                # Shared directories: only what appeared since this restore started.
                if stat.S_ISREG(info.st_mode) and (ours or info.st_mtime >= since):
                    yield path, path, ours
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            path = f"/proc/{pid}/fd/{fd}"
            try:
                if stat.S_ISREG(os.stat(path).st_mode):
                    yield f"pid {pid} fd {fd} ({os.readlink(path)})", path, True
            except OSError:
                continue


def _changed_since(path, since):
    try:
        return os.lstat(path).st_mtime >= since
    except OSError:
        return False


def plaintext_holders(roots, pids, since, marker):
    """Files holding the marker; of this restore's own, also any that starts like gzip (decrypted,
    still compressed). Other tests' unencrypted backups in the shared directories are theirs."""
    found = []
    for label, path, ours in candidate_files(roots, pids, since):
        try:
            with open(path, "rb") as handle:
                previous = handle.read(MIB)
                if ours and previous.startswith(GZIP_MAGIC):
                    found.append(f"{label}: decrypted gzip")
                    continue
                while previous:
                    if marker in previous:
                        found.append(f"{label}: the planted marker")
                        break
                    chunk = handle.read(MIB)
                    if not chunk:
                        break
                    previous = previous[-len(marker):] + chunk
        except OSError:
            continue  # gone, or not readable: nothing to read there
    return found


def wait_for(path, proc, output):
    deadline = time.monotonic() + 600
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"the restore ended (exit {proc.returncode}) before {os.path.basename(path)}: "
                                 f"{output.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the restore never reached {os.path.basename(path)}")
        time.sleep(0.05)


def restore_watched(pg, database, backup_dir, backup, target, passphrase_file, tmp_path, marker):
    """Restore ``backup`` into ``target`` on the host; return (peak RSS in KiB, plaintext found)."""
    work = tmp_path / target
    control, temp, cwd, bin_dir = (work / name for name in ("control", "tmp", "cwd", "bin"))
    for directory in (control, temp, cwd, bin_dir):
        directory.mkdir(parents=True)
    psql = bin_dir / "psql"
    psql.write_text(PAUSING_PSQL.format(real=shutil.which("psql")))
    psql.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_", "TMP"))}
    env.update(pg.app_env(database), BACKUP_DIR=backup_dir, BACKUP_CONFIG="", BACKUP_PASSPHRASE_FILE=passphrase_file,
               PATH=f"{bin_dir}:{os.environ['PATH']}", TMPDIR=str(temp), FORGE_TEST_PSQL_CONTROL=str(control))
    output = work / "output"
    since = time.time() - 1
    roots = [(backup_dir, True), (str(temp), True), (str(cwd), True)] + [(path, False) for path in SHARED_TEMP]
    found = []
    with open(output, "w") as sink:
        proc = subprocess.Popen([RESTORE_SCRIPT, "restore", os.path.basename(backup), target], env=env, cwd=cwd,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        for stage in ("mid", "end"):
            wait_for(control / stage, proc, output)
            found += [f"{stage}: {item}" for item in plaintext_holders(roots, process_tree(proc.pid), since,
                                                                       marker)]
            if stage == "end":
                # The whole stream has passed through the engine; it now waits for psql to finish.
                with open(f"/proc/{proc.pid}/comm") as handle:
                    assert handle.read().startswith("python"), "the pid is not the engine's"
                peak = peak_rss_kib(proc.pid)
            (control / f"{stage}.go").touch()
        assert proc.wait(timeout=600) == 0, output.read_text()
    finally:
        for stage in ("mid", "end"):
            (control / f"{stage}.go").touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return peak, found


def test_an_encrypted_restore_spills_no_plaintext_and_its_memory_does_not_grow_with_the_dump(
        pg, fresh_db, backup_dir, passphrase_file, tmp_path):
    marker = f"plaintext-marker-{uuid.uuid4().hex}".encode()
    add_rows(pg, fresh_db, SMALL_ROWS, marker.decode())
    small = take_backup(pg, fresh_db, backup_dir, backup_passphrase_file=passphrase_file)
    add_rows(pg, fresh_db, 3 * SMALL_ROWS, marker.decode())
    large = take_backup(pg, fresh_db, backup_dir, backup_passphrase_file=passphrase_file)
    assert os.path.getsize(small) > 2 * MIB and os.path.getsize(large) > 3 * os.path.getsize(small), \
        "the backups are not the sizes this test is about"
    peaks = {}
    try:
        for label, backup, rows in (("small", small, SMALL_ROWS), ("large", large, 4 * SMALL_ROWS)):
            target = f"{fresh_db[:40]}_{label}"
            peaks[label], found = restore_watched(pg, fresh_db, backup_dir, backup, target, passphrase_file,
                                                  tmp_path, marker)
            assert found == [], f"plaintext on disk while restoring the {label} backup: {found}"
            assert table_counts(pg, target) == {"public.blobs": rows}
    finally:
        for label in ("small", "large"):
            pg.drop_database(f"{fresh_db[:40]}_{label}")
    print(f"peak RSS: small {peaks['small']} KiB, large {peaks['large']} KiB")
    # Four times the data: a restore that buffers any part of the dump in proportion to its size
    # grows by tens of MB here; a streaming one stays where it was, give or take the allocator.
    assert peaks["large"] <= peaks["small"] * 1.25 + 8 * 1024, peaks


PEAK_OF_CHILD = ("import resource, subprocess, sys\n"
                 "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
                 "sys.exit(code)\n")


def restore_peak_kib(pg, database, backup_dir, passphrase_file, backup, target):
    """Peak resident memory (KiB) of the engine restoring ``backup`` with restore_db.sh."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_", "BACKUP_"))}
    env.update(pg.app_env(database), BACKUP_DIR=backup_dir, BACKUP_CONFIG="", BACKUP_PASSPHRASE_FILE=passphrase_file)
    proc = subprocess.run(["/usr/bin/python3", "-c", PEAK_OF_CHILD, RESTORE_SCRIPT, "restore",
                           os.path.basename(backup), target], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_dump_that_expands_a_thousandfold_restores_in_the_memory_of_a_small_one(
        pg, fresh_db, backup_dir, passphrase_file, compression):
    # Rows of blanks, like pgbench's filler column, only more so: 64 KiB of this gzip file are
    # some 60 MB of SQL. A restore that decompresses each read whole holds all of it at once.
    with pg.connect(fresh_db, superuser=False) as conn:
        conn.execute("CREATE TABLE blanks (id int PRIMARY KEY, filler text)")
        conn.execute("INSERT INTO blanks SELECT g, repeat(' ', 100000) FROM generate_series(1, 10) g")
    small = take_backup(pg, fresh_db, backup_dir, backup_passphrase_file=passphrase_file,
                        backup_compression=compression)
    with pg.connect(fresh_db, superuser=False) as conn:
        conn.execute("INSERT INTO blanks SELECT g, repeat(' ', 100000) FROM generate_series(11, 2500) g")
    large = take_backup(pg, fresh_db, backup_dir, backup_passphrase_file=passphrase_file,
                        backup_compression=compression)
    assert os.path.getsize(large) < 2 * MIB, "the dump does not compress as this test needs"
    peaks = {}
    try:
        for label, backup in (("small", small), ("large", large)):
            target = f"{fresh_db[:40]}_{label}"
            peaks[label] = restore_peak_kib(pg, fresh_db, backup_dir, passphrase_file, backup, target)
        assert table_counts(pg, f"{fresh_db[:40]}_large") == {"public.blanks": 2500}
    finally:
        for label in ("small", "large"):
            pg.drop_database(f"{fresh_db[:40]}_{label}")
    print(f"{compression} peak RSS: small {peaks['small']} KiB, large (250 MB of SQL) {peaks['large']} KiB")
    assert peaks["large"] <= peaks["small"] + 16 * 1024, peaks
