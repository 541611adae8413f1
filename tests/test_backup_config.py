"""BACKUP_CONFIG: a KEY=VALUE file gives scripts/backup_db.sh its defaults, and the environment wins.

The backup role writes that file and cron runs the script with nothing else set; an operator
running the runbook's `export ...; ./scripts/backup_db.sh` by hand on the same host must get what
they exported, whatever the file says.
"""

import gzip
import os
import subprocess

from helpers import BACKUP_SCRIPT, REPO, backups_in, manifest_of, run_backup_script, signing_passphrase_file
from servers import table_counts


def _write_config(path, settings):
    lines = ["# written by the backup role", ""] + [f"{key}={value}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return str(path)


def _config_settings(pg, database, backup_dir):
    """Everything a backup needs, as the role writes it. The app role's password holds a colon,
    a backslash, quotes, a space and '#': a file that were sourced by a shell would mangle it."""
    return {
        "POSTGRES_HOST": pg.host, "POSTGRES_PORT": pg.port, "POSTGRES_USER": pg.app_user,
        "POSTGRES_PASSWORD": pg.app_password, "POSTGRES_DB": database,
        "BACKUP_DIR": backup_dir, "BACKUP_COMPRESSION": "zstd", "RETENTION_DAYS": "30",
        "BACKUP_PASSPHRASE_FILE": signing_passphrase_file(), "BACKUP_ENCRYPT": "0",
    }


def _run(config_path, **environment):
    """backup_db.sh with only BACKUP_CONFIG and ``environment`` among its settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POSTGRES_", "BACKUP_", "RETENTION_", "PG", "SENTRY_"))}
    env["BACKUP_CONFIG"] = config_path
    env.update(environment)
    return subprocess.run([BACKUP_SCRIPT], env=env, capture_output=True, text=True, timeout=300)


def test_the_config_files_settings_apply_when_the_environment_sets_none(pg, sample_db, tmp_path):
    backup_dir = str(tmp_path / "from-config")
    config = _write_config(tmp_path / "backup.env", _config_settings(pg, sample_db, backup_dir))
    result = _run(config)
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    assert path.endswith(".sql.zst")
    manifest = manifest_of(path)
    assert manifest["database"] == sample_db
    assert manifest["compression"]["algorithm"] == "zstd"
    assert manifest["snapshot_row_counts"] == table_counts(pg, sample_db)


def test_a_variable_set_in_the_environment_wins_over_the_config_file(pg, sample_db, tmp_path):
    config_dir = str(tmp_path / "from-config")
    env_dir = str(tmp_path / "from-environment")
    settings = _config_settings(pg, sample_db, config_dir)
    settings["POSTGRES_PASSWORD"] = "an old password"
    config = _write_config(tmp_path / "backup.env", settings)
    result = _run(config, BACKUP_DIR=env_dir, BACKUP_COMPRESSION="gzip", POSTGRES_PASSWORD=pg.app_password)
    assert result.returncode == 0, result.stderr
    [path] = backups_in(env_dir)
    assert path.endswith(".sql.gz")
    assert manifest_of(path)["database"] == sample_db
    assert not os.path.exists(config_dir)


def test_an_empty_environment_variable_leaves_the_config_files_value(pg, sample_db, tmp_path):
    backup_dir = str(tmp_path / "from-config")
    config = _write_config(tmp_path / "backup.env", _config_settings(pg, sample_db, backup_dir))
    # `BACKUP_COMPRESSION= ./scripts/backup_db.sh`: set, but to nothing, which is no choice.
    result = _run(config, BACKUP_COMPRESSION="", BACKUP_DIR="")
    assert result.returncode == 0, result.stderr
    [path] = backups_in(backup_dir)
    assert path.endswith(".sql.zst")


def test_a_named_config_file_that_does_not_exist_is_a_one_line_error(pg, sample_db, tmp_path):
    missing = str(tmp_path / "no-such.env")
    result = _run(missing, **{key: str(value) for key, value in
                              _config_settings(pg, sample_db, str(tmp_path / "backups")).items()})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"ERROR: config file {missing} does not exist"]
    assert not os.path.exists(tmp_path / "backups")


def test_a_dump_command_that_carries_pg_dump_options_backs_up_with_them(pg, sample_db, backup_dir):
    """BACKUP_DUMP_COMMAND may add pg_dump's own options; its version is still asked of pg_dump alone
    (pg_dump takes --version only as its first argument)."""
    result = run_backup_script(pg, sample_db, backup_dir, {"BACKUP_DUMP_COMMAND": "pg_dump --exclude-table=orders"})
    assert result.returncode == 0, result.stdout + result.stderr
    [path] = backups_in(backup_dir)
    with gzip.open(path, "rt") as handle:
        sql = handle.read()
    assert "CREATE TABLE public.customers" in sql and "CREATE TABLE public.orders" not in sql


def test_the_roles_config_files_and_cron_entries_are_named_by_the_engines_file_stem(tmp_path):
    """The role once named config files and cron entries by the sanitised name alone, so `we"ird db`
    and `we_ird_db` shared one config file and one database was never backed up. The role's
    naming task, run as written, must give each database the engine's own stem."""
    import json
    import sys

    import yaml

    from forge.catalog import file_stem

    with open(os.path.join(REPO, "roles", "backup", "tasks", "main.yml"), encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    [naming] = [task for task in tasks if task["name"] == "Name each database's files as the engine does"]
    names = ["infer_forge", 'we"ird db', "we_ird_db", "we ird db", "sklad.2026-x", "účetnictví"]
    out = tmp_path / "stems.json"
    playbook = tmp_path / "stems.yml"
    playbook.write_text(json.dumps([{"hosts": "all", "gather_facts": False, "vars": {"backup_databases": names},
                                     "tasks": [naming, {"name": "Write the stems", "ansible.builtin.copy": {
                                         "content": "{{ backup_file_stems | to_json }}", "dest": str(out),
                                         "mode": "0600"}}]}]))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,",
                           "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    stems = json.loads(out.read_text())
    assert stems == {name: file_stem(name) for name in names}
    assert len(set(stems.values())) == len(names)
