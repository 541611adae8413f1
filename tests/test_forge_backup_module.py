"""The forge_backup module through ansible-playbook: arguments, check mode, diff, results, secrets."""

import datetime
import json
import os

from test_retention import make_backup

from helpers import backups_in, signing_passphrase_file
from servers import load_sample_data


def module_args(pg, database, backup_dir, **extra):
    args = {"database": database, "login_host": pg.host, "port": pg.port, "login_user": pg.app_user,
            "login_password": pg.app_password, "backup_dir": backup_dir,
            "passphrase_file": signing_passphrase_file()}
    args.update(extra)
    return args


def test_backup_returns_what_it_wrote(pg, fresh_db, backup_dir, run_module):
    load_sample_data(pg, fresh_db)
    result = run_module("forge_backup", module_args(pg, fresh_db, backup_dir))
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True
    [path] = backups_in(backup_dir)
    assert result["path"] == path
    assert result["size"] == os.path.getsize(path)
    with open(path + ".sha256") as handle:
        assert handle.read().split()[0] == result["sha256"]
    assert result["row_counts"] == {"audit.Order Events": 500, "public.customers": 200, "public.orders": 5000}
    assert result["rows"] == 5700 and result["tables"] == 3
    assert result["duration"] > 0


def test_check_mode_writes_nothing_and_reports_what_retention_would_delete(pg, fresh_db, backup_dir, run_module):
    os.makedirs(backup_dir, mode=0o700)
    old = make_backup(backup_dir, datetime.datetime.now() - datetime.timedelta(days=60), db=fresh_db)
    before = sorted(os.listdir(backup_dir))
    result = run_module("forge_backup", module_args(pg, fresh_db, backup_dir, min_keep=0), check=True, diff=True)
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True
    assert result["would_remove"] == [old]
    assert sorted(os.listdir(backup_dir)) == before
    assert result["diff"]["before"]["backups"] == [old]
    assert old not in result["diff"]["after"]["backups"]


def test_retention_after_success_and_never_after_failure(pg, fresh_db, backup_dir, run_module):
    os.makedirs(backup_dir, mode=0o700)
    now = datetime.datetime.now()
    old = [make_backup(backup_dir, now - datetime.timedelta(days=40 + d), db=fresh_db) for d in range(3)]
    failed = run_module("forge_backup", module_args(pg, fresh_db, backup_dir, login_password="wrong", min_keep=0))
    assert failed["failed"] is True
    assert "password authentication failed" in failed["msg"]
    assert all(os.path.exists(os.path.join(backup_dir, name)) for name in old)

    result = run_module("forge_backup", module_args(pg, fresh_db, backup_dir, min_keep=1))
    assert sorted(result["removed"]) == sorted(old)
    assert [os.path.basename(p) for p in backups_in(backup_dir)] == [result["file"]]
    for name in old:
        assert not os.path.exists(os.path.join(backup_dir, name + ".manifest.json"))


def test_secrets_never_appear_in_module_output(pg, fresh_db, backup_dir, run_module):
    result = run_module("forge_backup", module_args(pg, fresh_db, backup_dir, encrypt=True,
                                                    passphrase="vault-held passphrase 42"), diff=True)
    assert result["encrypted"] is True
    assert pg.app_password not in result["_raw"]
    assert "vault-held passphrase 42" not in result["_raw"]
    failed = run_module("forge_backup", module_args(pg, "no_such_db", backup_dir, login_password="Wr0ng-Secret!"))
    assert "Wr0ng-Secret!" not in failed["_raw"]


def test_encrypt_without_a_passphrase_is_a_clear_error(pg, fresh_db, backup_dir, run_module):
    args = module_args(pg, fresh_db, backup_dir, encrypt=True)
    del args["passphrase_file"]
    result = run_module("forge_backup", args)
    assert result["failed"] is True
    assert result["msg"] == "encrypt is true but neither passphrase_file nor passphrase is set"


def test_invalid_argument_types_are_rejected_by_the_argument_spec(pg, fresh_db, backup_dir, run_module):
    result = run_module("forge_backup", module_args(pg, fresh_db, backup_dir, retention_days="a month"))
    assert result["failed"] is True
    assert "retention_days" in result["msg"]
    assert not os.path.exists(backup_dir)


def test_negative_retention_is_rejected_with_a_one_line_message(pg, fresh_db, backup_dir, run_module):
    result = run_module("forge_backup", module_args(pg, fresh_db, backup_dir, min_keep=-2))
    assert result["failed"] is True
    assert result["msg"] == "min_keep must be a whole number >= 0, got -2"
    assert json.dumps(result["msg"]).count("\\n") == 0


def test_kdf_iter_is_used_and_recorded_and_a_bad_one_is_a_one_line_error(pg, fresh_db, backup_dir, run_module):
    load_sample_data(pg, fresh_db)
    result = run_module("forge_backup", module_args(pg, fresh_db, backup_dir, encrypt=True, kdf_iter=200000))
    assert result.get("failed") is not True, result.get("msg")
    with open(result["manifest"]) as handle:
        assert json.load(handle)["encryption"]["kdf_iterations"] == 200000
    bad = run_module("forge_backup", module_args(pg, fresh_db, backup_dir, encrypt=True, kdf_iter=999))
    assert bad["failed"] is True
    assert bad["msg"] == "kdf_iter must be a whole number from 1000 to 10000000, got 999"
