"""On-host commands: ``python3 -m forge.cli backup`` is what scripts/backup_db.sh runs.

Configuration comes from the runbook's environment variables. A config file
(``BACKUP_CONFIG``, default ``/etc/infer-forge/backup.env``, empty for none) in KEY=VALUE form
provides defaults; variables set in the environment win, so the runbook's
``export POSTGRES_HOST=... ./scripts/backup_db.sh`` works unchanged.
The file is parsed, never sourced, so a password may contain any character.
"""

import os
import signal
import sys

from .errors import ForgeError

DEFAULT_CONFIG = "/etc/infer-forge/backup.env"
EXIT_FAILURE = 1
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the lock


def read_env_file(path):
    values = {}
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export "):].lstrip()
            key, sep, value = line.partition("=")
            if not sep or not key.strip().isidentifier():
                raise ForgeError(f"{path}:{number}: expected KEY=VALUE")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key.strip()] = value
    return values


def load_config(environ):
    path = environ.get("BACKUP_CONFIG", DEFAULT_CONFIG)
    config = {}
    if path == "":
        pass  # explicitly no config file
    elif os.path.exists(path):
        try:
            config = read_env_file(path)
        except PermissionError:
            raise ForgeError(f"config file {path} is not readable by this user") from None
    elif "BACKUP_CONFIG" in environ:
        raise ForgeError(f"config file {path} does not exist")
    config.update({key: value for key, value in environ.items() if value != ""})
    return config


def _int(config, key, default):
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ForgeError(f"{key} must be a whole number, got {raw!r}") from None


def _flag(config, key, default=False):
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def backup_from_config(config):
    import shlex

    from .backup import BackupOptions, BackupRunner
    from .pgconn import PgSettings

    settings = PgSettings(
        host=config.get("POSTGRES_HOST", "localhost"),
        port=_int(config, "POSTGRES_PORT", 5432),
        user=config.get("POSTGRES_USER"),
        password=config.get("POSTGRES_PASSWORD"),
        database=config.get("POSTGRES_DB"),
        sslmode=config.get("POSTGRES_SSLMODE"),
    )
    passphrase_file = config.get("BACKUP_PASSPHRASE_FILE")
    dump_command = shlex.split(config["BACKUP_DUMP_COMMAND"]) if config.get("BACKUP_DUMP_COMMAND") else None
    options = BackupOptions(
        backup_dir=config.get("BACKUP_DIR", "/backups"),
        retention_days=_int(config, "RETENTION_DAYS", 30),
        min_keep=_int(config, "BACKUP_MIN_KEEP", 7),
        keep_daily=_int(config, "BACKUP_KEEP_DAILY", 0),
        keep_weekly=_int(config, "BACKUP_KEEP_WEEKLY", 0),
        keep_monthly=_int(config, "BACKUP_KEEP_MONTHLY", 0),
        dump_format=config.get("BACKUP_FORMAT", "plain"),
        compression=config.get("BACKUP_COMPRESSION", "gzip"),
        compression_level=_int(config, "BACKUP_COMPRESSION_LEVEL", None),
        jobs=_int(config, "BACKUP_JOBS", None),
        passphrase_file=passphrase_file,
        encrypt=_flag(config, "BACKUP_ENCRYPT", bool(passphrase_file)),
        dump_command=dump_command,
        lock_wait=_int(config, "BACKUP_LOCK_WAIT", 0),
        textfile_dir=config.get("BACKUP_TEXTFILE_DIR"),
        sentry_dsn=config.get("SENTRY_DSN"),
        environment=config.get("ENVIRONMENT"),
        space_check=_flag(config, "BACKUP_SPACE_CHECK", True),
    )
    return BackupRunner(options, settings, log=lambda line: print(line, flush=True))


def _terminate(signum, frame):
    # Turn SIGTERM into an exception so the partial file is cleaned up on the way out.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("backup",):
        print("usage: python3 -m forge.cli backup   (configured by environment variables, see README)",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        runner = backup_from_config(load_config(os.environ))
        runner.run()
    except ForgeError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr, flush=True)
        return EXIT_LOCKED if exc.details.get("locked") else EXIT_FAILURE
    except KeyboardInterrupt as exc:
        print(f"ERROR: backup interrupted ({exc or 'SIGINT'}); no backup was written", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
