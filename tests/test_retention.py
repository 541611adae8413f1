"""Retention decisions on real files: what is kept, what is deleted, what is never touched."""

import datetime
import hashlib
import json
import os

import pytest

from forge import catalog

from helpers import PASSPHRASE, resign_manifest

NOW = datetime.datetime(2026, 2, 7, 14, 32, 15)
# A day after NOW, so the GFS test's evening backups of NOW's day are not "in the future".
POLICY = catalog.TrustPolicy(PASSPHRASE.encode(), now=NOW.timestamp() + 86400)


def make_backup(directory, when, db="infer_forge", ext=".sql.gz", manifest=True, payload=b"data"):
    name = f"{db}_{when.strftime('%Y%m%d_%H%M%S')}{ext}"
    path = os.path.join(directory, name)
    with open(path, "wb") as handle:
        handle.write(payload)
    if manifest:
        resign_manifest(path, {"manifest_version": 2, "file": name, "size": len(payload), "database": db,
                               "sha256": hashlib.sha256(payload).hexdigest()})
    return name


def daily(directory, days, **kwargs):
    return [make_backup(directory, NOW - datetime.timedelta(days=d), **kwargs) for d in range(days)]


def plan(directory, **kwargs):
    settings = dict(retention_days=30, min_keep=7)
    settings.update(kwargs)
    return catalog.plan_retention(catalog.scan(directory, "infer_forge", POLICY), NOW, **settings)


def test_the_runbooks_rule_deletes_only_backups_older_than_retention_days(tmp_path):
    names = daily(str(tmp_path), 40)
    result = plan(str(tmp_path), min_keep=0)
    assert sorted(b.name for b in result.remove) == sorted(names[31:])


def test_min_keep_holds_the_newest_backups_even_when_all_are_old(tmp_path):
    names = [make_backup(str(tmp_path), NOW - datetime.timedelta(days=100 + d)) for d in range(10)]
    result = plan(str(tmp_path), min_keep=7)
    assert sorted(b.name for b in result.remove) == sorted(names[7:])
    assert all("min_keep" in result.keep[name] for name in names[:7])


def test_gfs_keeps_one_per_day_week_and_month(tmp_path):
    # Four backups a day for 120 days.
    for day in range(120):
        for hour in (2, 8, 14, 20):
            make_backup(str(tmp_path), (NOW - datetime.timedelta(days=day)).replace(hour=hour, minute=0, second=0))
    result = plan(str(tmp_path), retention_days=1, min_keep=0, keep_daily=7, keep_weekly=4, keep_monthly=3)
    kept = {name: reasons for name, reasons in result.keep.items()}
    daily_kept = [n for n, r in kept.items() if "daily" in r]
    weekly_kept = [n for n, r in kept.items() if "weekly" in r]
    monthly_kept = [n for n, r in kept.items() if "monthly" in r]
    assert len(daily_kept) == 7 and len(weekly_kept) == 4 and len(monthly_kept) == 3
    # The newest backup of each day is the one kept.
    assert all("_200000." in name for name in daily_kept)
    assert len({n[len("infer_forge_"):][:8] for n in daily_kept}) == 7
    assert len(kept) + len(result.remove) == 480


def test_files_without_a_valid_manifest_are_never_deleted(tmp_path):
    directory = str(tmp_path)
    old = NOW - datetime.timedelta(days=90)
    ours_without_manifest = make_backup(directory, old, ext=".sql.zst", manifest=False)
    runbook_made = make_backup(directory, old - datetime.timedelta(days=1), manifest=False)
    damaged = make_backup(directory, old - datetime.timedelta(days=2))
    with open(os.path.join(directory, damaged), "ab") as handle:
        handle.write(b"grown since the manifest was written")
    other_db = make_backup(directory, old, db="other_db")
    result = plan(directory, min_keep=0)
    removed = [b.name for b in result.remove]
    assert removed == []  # not even the runbook-made file: nothing proves what it holds
    assert runbook_made not in removed and ours_without_manifest not in removed
    assert damaged not in removed and other_db not in removed


def test_min_keep_counts_only_backups_proven_good(tmp_path):
    directory = str(tmp_path)
    old = NOW - datetime.timedelta(days=100)
    good = [make_backup(directory, old - datetime.timedelta(days=d)) for d in range(3)]
    # Newer than every good backup, and none of them proves anything: no manifest, a damaged
    # file, an unsigned manifest, one signed with another passphrase.
    newer = [old + datetime.timedelta(hours=h) for h in range(1, 5)]
    make_backup(directory, newer[0], manifest=False)
    damaged = make_backup(directory, newer[1])
    with open(os.path.join(directory, damaged), "ab") as handle:
        handle.write(b"grown since the manifest was written")
    unsigned = make_backup(directory, newer[2])
    manifest_path = os.path.join(directory, unsigned + ".manifest.json")
    with open(manifest_path) as handle:
        body = json.load(handle)
    del body["signature"]
    with open(manifest_path, "w") as handle:
        json.dump(body, handle)
    foreign = make_backup(directory, newer[3])
    resign_manifest(os.path.join(directory, foreign), {"manifest_version": 2, "file": foreign, "size": 4,
                                                       "database": "infer_forge",
                                                       "sha256": hashlib.sha256(b"data").hexdigest()},
                    passphrase="another passphrase")
    assert [b.name for b in catalog.scan(directory, "infer_forge", POLICY) if b.good] == good

    result = plan(directory, min_keep=2)
    # The two newest GOOD backups are held; the four newer files fill no min_keep place.
    assert [b.name for b in result.remove] == [good[2]]
    assert result.keep == {good[0]: ["min_keep"], good[1]: ["min_keep"]}


def test_symlinks_are_never_backups(tmp_path):
    directory = tmp_path / "backups"
    directory.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("not a backup")
    (directory / "infer_forge_20200101_020000.sql.gz").symlink_to(target)
    assert catalog.scan(str(directory), "infer_forge", POLICY) == []


@pytest.mark.parametrize("kwargs", [{"min_keep": 3}, {"min_keep": 0, "keep_daily": 5}])
def test_nothing_younger_than_retention_is_deleted(tmp_path, kwargs):
    daily(str(tmp_path), 20)
    assert plan(str(tmp_path), **kwargs).remove == []
