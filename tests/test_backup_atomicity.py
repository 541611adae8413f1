"""A backup appears under its final name only when it is complete and on disk.

The engine itself (the process scripts/backup_db.sh execs) is killed mid-dump, and a real run
is traced with strace: the promises of docs/backup.md's "atomic" and "durable" hold for the
process a power cut or the OOM killer would hit, not only for a failing pg_dump.
"""

import os
import re
import signal

from helpers import (
    StalledDump,
    backups_in,
    descendants,
    directory_contents,
    manifest_of,
    run_backup_script,
    take_backup,
    wait_until,
)


def _partial_name_re(database, pid):
    return re.compile(rf"\.{re.escape(database)}_\d{{8}}_\d{{6}}\.sql\.gz\.partial-{pid}\Z")


def test_a_killed_engine_leaves_only_a_hidden_partial_and_the_earlier_backup_untouched(
        pg, sample_db, backup_dir, tmp_path):
    earlier = take_backup(pg, sample_db, backup_dir)
    before = directory_contents(backup_dir)
    assert sorted(before) == sorted(os.path.basename(earlier) + suffix
                                    for suffix in ("", ".manifest.json", ".sha256"))

    dump = StalledDump(str(tmp_path / "dump"))
    proc = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_DUMP_COMMAND": dump.command}, wait=False)
    try:
        dump.wait_until_stalled(proc)
        # Mid-dump: the earlier backup as it was, one hidden partial of this run, nothing else.
        during = directory_contents(backup_dir)
        new = sorted(set(during) - set(before))
        assert len(new) == 1 and _partial_name_re(sample_db, proc.pid).match(new[0]), \
            f"mid-dump, a run may add only its own hidden partial file, found {new}"
        assert {name: during[name] for name in before} == before
        assert backups_in(backup_dir) == [earlier]

        dump_processes = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the scripts exec the engine: this is the engine itself
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
        # The orphaned dump writes into a pipe nobody reads once released, and ends.
        dump.release()
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in dump_processes),
               "the killed run's dump processes to end")

    after = directory_contents(backup_dir)
    assert {name: after[name] for name in before} == before
    [stale] = sorted(set(after) - set(before))
    assert _partial_name_re(sample_db, proc.pid).match(stale)
    assert backups_in(backup_dir) == [earlier]

    # The next run removes what the killed one left and writes a complete backup.
    latest = take_backup(pg, sample_db, backup_dir)
    final = directory_contents(backup_dir)
    assert stale not in final
    assert {name: final[name] for name in before} == before
    assert sorted(set(final) - set(before)) == sorted(os.path.basename(latest) + suffix
                                                      for suffix in ("", ".manifest.json", ".sha256"))
    assert manifest_of(latest)["rows"] == manifest_of(earlier)["rows"]


_SYSCALL_RE = re.compile(r"^(?P<pid>\d+)\s+(?:<\.\.\. )?(?P<name>[a-z0-9_]+)(?: resumed>)?\((?P<args>.*)")
_FD_PATH_RE = re.compile(r"^\d+<(?P<path>[^>]*)>")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _trace_events(path):
    """(line number, syscall, args) of each syscall's entry in an ``strace -f -y`` log."""
    events = []
    with open(path) as handle:
        for number, line in enumerate(handle):
            match = _SYSCALL_RE.match(line)
            if match and " resumed>" not in line:
                events.append((number, match.group("name"), match.group("args")))
    return events


def test_the_data_is_fsynced_before_its_rename_and_the_directory_after_it(pg, sample_db, backup_dir, tmp_path):
    trace = str(tmp_path / "backup.strace")
    strace = ["strace", "-f", "-qq", "-y", "-s", "4096", "-o", trace,
              "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,openat"]
    result = run_backup_script(pg, sample_db, backup_dir, prefix=strace)
    assert result.returncode == 0, result.stderr
    [final] = backups_in(backup_dir)
    directory = os.path.dirname(final)
    events = _trace_events(trace)

    renames = [(number, _QUOTED_RE.findall(args)) for number, name, args in events
               if name in ("rename", "renameat", "renameat2")]
    [(renamed_at, (partial, _))] = [(number, paths) for number, paths in renames
                                    if len(paths) == 2 and paths[1] == final]
    assert _partial_name_re(sample_db, r"\d+").match(os.path.basename(partial)), partial

    def synced(path):
        return [number for number, name, args in events
                if name in ("fsync", "fdatasync") and (m := _FD_PATH_RE.match(args)) and m.group("path") == path]

    # The manifest and the checksum get their names first: a backup is never visible under its
    # name without the manifest that proves it (a crash in between leaves only a hidden partial).
    for suffix in (".manifest.json", ".sha256"):
        [side_renamed_at] = [number for number, paths in renames if len(paths) == 2 and paths[1] == final + suffix]
        assert side_renamed_at < renamed_at, f"{suffix} got its name after the backup did"

    data_syncs = synced(partial)
    assert data_syncs and min(data_syncs) < renamed_at, "the data file was not fsynced before its rename"
    assert any(number > renamed_at for number in synced(directory)), \
        "the backup directory was not fsynced after the rename that gave the backup its name"
