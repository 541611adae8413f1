"""Every setting of every use case, declared once.

A setting has one name (the module option and the engine's keyword), a type, the engine's
default, the environment variable the on-host commands read (the runbook's names), the role
variable that sets it on a host, the role's default where a deployed host wants another value
than the engine (a user name, a metrics directory), and one line of documentation.

What follows from these declarations: the on-host commands' configuration
(:func:`from_config`) and ``backup_db.sh --help``. What is checked against them by
tests/test_settings.py, and fails on any drift: each module's argument spec and documented
default, each role's ``defaults/main.yml`` and ``meta/argument_specs.yml``, and the defaults of
the engine's option classes.
"""

import os
import stat

from .errors import ForgeError

SAME = object()  # role_default: the role ships the engine's default


class Setting:
    """One setting of one use case."""

    __slots__ = ("name", "kind", "default", "env", "role_var", "role_default", "doc", "choices", "secret", "reader")

    def __init__(self, name, kind, default, doc, env=None, role_var=None, role_default=SAME, choices=(),
                 secret=False, reader=None):
        self.name = name
        self.kind = kind
        self.default = default
        self.env = env
        self.role_var = role_var
        self.role_default = default if role_default is SAME else role_default
        self.doc = doc
        self.choices = tuple(choices)
        self.secret = secret
        self.reader = reader  # for a setting with rules of its own: reader(raw, env) -> value

    def parse(self, raw):
        """The value of an environment variable or config-file line, as this setting's type."""
        if self.reader:
            return self.reader(raw or None, self.env)
        if raw is None:
            return self.default
        if raw == "" and self.kind in ("str", "path"):
            # Set, to nothing: the engine judges it (BACKUP_DIR= is no directory, not /backups).
            return raw
        if raw == "":
            return self.default
        if self.kind == "int":
            try:
                value = int(raw)
            except ValueError:
                raise ForgeError(f"{self.env} must be a whole number, got {raw!r}") from None
        elif self.kind == "bool":
            value = raw.strip().lower() in ("1", "true", "yes", "on")
        else:
            value = raw  # choices are the engine's to check: a custom dump ignores compression
        return value


def read_env_file(path, root_trusts=False):
    """KEY=VALUE lines of a config file such as /etc/infer-forge/backup.env: parsed, never
    sourced, so a password may hold any character. ``export`` and matching quotes are allowed.

    With ``root_trusts`` and this process root, the file's settings decide what root runs
    (BACKUP_DUMP_COMMAND, BACKUP_DIR): it is read only when root alone can write it and the
    directory it sits in, and never through a link or from anything but a regular file."""
    values = {}
    with _open_config(path, root_trusts and os.geteuid() == 0) as handle:
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


def _open_config(path, as_root):
    if not as_root:
        return open(path, encoding="utf-8")
    refusal = (f"config file {path} {{}}: root reads settings only from a file and directory that root alone "
               "can write (chown root:<backup group>, chmod 0640, in a root-owned 0750 directory); nothing was run")
    try:
        # O_NONBLOCK: a FIFO planted under the name must not hang root before fstat refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ForgeError(refusal.format(f"cannot be opened without following a link ({exc.strerror})")) from None
    try:
        info = os.fstat(fd)
        parent = os.stat(os.path.dirname(os.path.abspath(path)))
        if not stat.S_ISREG(info.st_mode):
            raise ForgeError(refusal.format("is not a regular file"))
        for what, owner in (("belongs to", info), ("is in a directory that belongs to", parent)):
            if owner.st_uid != 0:
                raise ForgeError(refusal.format(f"{what} uid {owner.st_uid}"))
        for what, mode in (("is", info.st_mode), ("is in a directory", parent.st_mode)):
            if mode & 0o022 and not (what != "is" and mode & stat.S_ISVTX):
                raise ForgeError(refusal.format(f"{what} writable by others (mode {mode & 0o7777:04o})"))
        os.set_blocking(fd, True)
        return os.fdopen(fd, encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def _kdf_iterations(raw, env):
    from .opensslenc import kdf_iterations

    return kdf_iterations(raw, env)


def _table(*settings):
    return {setting.name: setting for setting in settings}


# How every use case reaches PostgreSQL (POSTGRES_* as in the runbook).
CONNECTION = _table(
    Setting("login_host", "str", "localhost", "PostgreSQL host.", env="POSTGRES_HOST",
            role_var="backup_postgres_host"),
    Setting("port", "int", 5432, "PostgreSQL port.", env="POSTGRES_PORT", role_var="backup_postgres_port"),
    Setting("login_user", "str", None, "PostgreSQL user.", env="POSTGRES_USER", role_var="backup_postgres_user",
            role_default="infer"),
    Setting("login_password", "str", None, "PostgreSQL password.", env="POSTGRES_PASSWORD",
            role_var="backup_postgres_password", role_default="", secret=True),
    Setting("database", "str", None, "The database to back up.", env="POSTGRES_DB"),
    Setting("sslmode", "str", None, "libpq sslmode.", env="POSTGRES_SSLMODE"),
)

# Shared by backup, restore, drill and off-site: where the backups are and how they are keyed.
STORE = _table(
    Setting("backup_dir", "path", "/backups", "Where backups go; mode 0700, files 0600.", env="BACKUP_DIR",
            role_var="backup_dir"),
    Setting("passphrase_file", "path", None, "File holding the passphrase that encrypts and signs.",
            env="BACKUP_PASSPHRASE_FILE", role_var="backup_passphrase_file",
            role_default="/etc/infer-forge/backup.pass"),
    Setting("retired_passphrases_file", "path", None, "File of retired passphrases, one per line (key rotation): "
            "they prove and decrypt the backups they made, never sign or encrypt a new one.",
            env="BACKUP_RETIRED_PASSPHRASES_FILE", role_var="backup_retired_passphrases_file",
            # Beside the passphrase file, wherever a host keeps it (the checklist reads both there).
            role_default="{{ backup_passphrase_file | dirname }}/backup-retired.pass"),
    Setting("kdf_iter", "int", 10000, "PBKDF2 iterations of the encryption key (openssl's default).",
            env="BACKUP_KDF_ITER", role_var="backup_kdf_iter", reader=_kdf_iterations),
    Setting("textfile_dir", "path", None, "node_exporter textfile directory for metrics; unset for none.",
            env="BACKUP_TEXTFILE_DIR", role_var="backup_textfile_dir",
            role_default="/var/lib/infer-forge-metrics/backup"),
    Setting("report_dir", "path", None, "Where drill reports and off-site state are kept.",
            env="DRILL_REPORT_DIR", role_var="backup_report_dir", role_default="/var/lib/infer-forge/reports"),
    Setting("sentry_dsn", "str", None, "Sentry DSN failures are reported to.", env="SENTRY_DSN",
            role_var="backup_sentry_dsn", role_default="", secret=True),
    Setting("environment", "str", None, "Sentry environment.", env="ENVIRONMENT", role_var="backup_environment",
            role_default="production"),
)

BACKUP = _table(
    Setting("retention_days", "int", 30, "Delete good backups older than this many days, unless a keep rule "
            "holds them.", env="RETENTION_DAYS", role_var="backup_retention_days"),
    Setting("min_keep", "int", 7, "Always keep at least this many good backups.", env="BACKUP_MIN_KEEP",
            role_var="backup_min_keep"),
    Setting("keep_daily", "int", 0, "Keep the newest backup of each of the last N days.",
            env="BACKUP_KEEP_DAILY", role_var="backup_keep_daily"),
    Setting("keep_weekly", "int", 0, "Keep the newest backup of each of the last N weeks.",
            env="BACKUP_KEEP_WEEKLY", role_var="backup_keep_weekly"),
    Setting("keep_monthly", "int", 0, "Keep the newest backup of each of the last N months.",
            env="BACKUP_KEEP_MONTHLY", role_var="backup_keep_monthly"),
    Setting("format", "str", "plain", "plain (gunzip | psql, as the runbook) or custom (pg_restore --jobs).",
            env="BACKUP_FORMAT", role_var="backup_format", choices=("plain", "custom")),
    Setting("compression", "str", "gzip", "gzip or zstd.", env="BACKUP_COMPRESSION",
            role_var="backup_compression", choices=("gzip", "zstd")),
    Setting("compression_level", "int", None, "Compression level; the compressor's default when unset (a custom "
            "archive: zlib at this level, 0 for none; unset, lz4 from pg_dump 16 and zlib 1 before).",
            env="BACKUP_COMPRESSION_LEVEL"),
    Setting("jobs", "int", None, "Parallel compression threads; one per core when unset.", env="BACKUP_JOBS"),
    Setting("gzip_tool", "str", "auto", "What writes gzip: igzip (ISA-L, several times faster) or zlib; auto "
            "takes igzip when Debian's isal package is installed.", env="BACKUP_GZIP_TOOL",
            choices=("auto", "igzip", "zlib")),
    # The on-host commands turn encryption on by themselves when a passphrase file is set (cli._encrypt).
    Setting("encrypt", "bool", False, "Encrypt with AES-256 (openssl enc format).", env="BACKUP_ENCRYPT",
            role_var="backup_encrypt"),
    Setting("lock_wait", "int", 0, "Seconds to wait for another backup of the database to finish.",
            env="BACKUP_LOCK_WAIT"),
    Setting("stall_timeout", "int", 300, "Seconds without progress from pg_dump or the compressor before the run "
            "is stopped; a wait for a table lock ends at half of it.", env="BACKUP_STALL_TIMEOUT",
            role_var="backup_stall_timeout"),
    Setting("space_check", "bool", True, "Refuse to start when the disk cannot hold another backup.",
            env="BACKUP_SPACE_CHECK"),
)

RESTORE = _table(
    Setting("force", "bool", False, "Replace a target that has tables (restored beside it, swapped in).",
            role_var="backup_restore_force"),
    Setting("keep_previous", "bool", True, "Keep a replaced database as <target>_before_restore_<time>."),
    Setting("create", "bool", True, "Create the target when it does not exist."),
    Setting("stall_timeout", "int", 300, "Seconds psql or pg_restore may take no input while none of its sessions "
            "works on the server (or one waits for a lock) before the restore is stopped and named.",
            env="BACKUP_STALL_TIMEOUT", role_var="backup_stall_timeout"),
)

DRILL = _table(
    Setting("keep", "bool", False, "Keep the drill's scratch database for inspection.", role_var="backup_drill_keep"),
    Setting("amcheck", "bool", False, "Also run amcheck on the restored copy's indexes.",
            role_var="backup_drill_amcheck"),
    Setting("scratch_database", "str", None, "Scratch database of the drill (default <db>_restore_drill).",
            env="DRILL_SCRATCH_DB", role_var="backup_drill_scratch_database", role_default=""),
)

OFFSITE = _table(
    Setting("retention_days", "int", 90, "Days the off-site target keeps our backups.",
            env="OFFSITE_RETENTION_DAYS", role_var="backup_offsite_retention_days"),
    Setting("min_keep", "int", 7, "Backups the off-site target always keeps.", env="OFFSITE_MIN_KEEP",
            role_var="backup_offsite_min_keep"),
    Setting("ssh_port", "int", 22, "SSH port of the NAS.", env="OFFSITE_SSH_PORT", role_var="backup_offsite_ssh_port"),
    Setting("require_mount", "bool", True, "A USB path must be below a mount point, so a missing disk never "
            "fills /.", env="OFFSITE_REQUIRE_MOUNT", role_var="backup_offsite_require_mount"),
    Setting("skip_unencrypted", "bool", False, "Skip unencrypted backups instead of failing.",
            env="OFFSITE_SKIP_UNENCRYPTED"),
)

# The NAS side of off-site copies (roles/offsite_target): what it keeps of what it receives.
NAS = _table(
    Setting("retention_days", "int", OFFSITE["retention_days"].default, "Days the NAS keeps received backups.",
            role_var="offsite_target_retention_days"),
)

HEALTH = _table(
    Setting("timeout", "float", 3.0, "Seconds each check may take.", role_var="health_timeout"),
    Setting("database_host", "str", "localhost", "PostgreSQL host.", role_var="health_database_host"),
    Setting("database_port", "int", 5432, "PostgreSQL port.", role_var="health_database_port"),
    Setting("redis_host", "str", "localhost", "Redis host.", role_var="health_redis_host"),
    Setting("redis_port", "int", 6379, "Redis port.", role_var="health_redis_port"),
    Setting("redis_db", "int", 0, "Redis database number.", role_var="health_redis_db"),
    Setting("redis_tls", "bool", False, "Connect to Redis over TLS.", role_var="health_redis_tls"),
    Setting("app_url", "str", "http://localhost:8000/health", "The app's /health URL.", role_var="health_app_url"),
)

# Point-in-time recovery on the Barman host (roles/pitr, forge_pitr, forge pitr with PITR_CONFIG).
# The drill's own login reaches the live server under the runbook's POSTGRES_* names.
PITR = _table(
    Setting("server", "str", "infer-forge", "Barman's name for the database server: its configuration section, "
            "and the name in every PITR record and metric.", env="PITR_SERVER", role_var="pitr_server_name"),
    Setting("postgres_bin", "path", "/usr/lib/postgresql/17/bin", "The PostgreSQL binaries a scratch cluster "
            "starts with (the live server's major).", env="PITR_POSTGRES_BIN", role_var="pitr_postgres_bin",
            role_default="/usr/lib/postgresql/{{ pitr_postgres_major }}/bin"),
    Setting("scratch_root", "path", "/var/lib/barman/infer-forge-scratch", "Where each recovery gets a new "
            "directory of its own.", env="PITR_SCRATCH_ROOT", role_var="pitr_scratch_root",
            role_default="{{ pitr_barman_home }}/infer-forge-scratch"),
    Setting("scratch_port", "int", 55432, "Port of a scratch cluster's socket (it has no TCP listener).",
            env="PITR_SCRATCH_PORT", role_var="pitr_scratch_port"),
    Setting("jobs", "int", None, "rsync processes barman restore copies the base backup with; one per core when "
            "unset.", env="PITR_JOBS"),
    Setting("textfile_dir", "path", None, "node_exporter textfile directory for the PITR metrics; unset for none.",
            env="PITR_TEXTFILE_DIR", role_var="pitr_textfile_dir", role_default="/var/lib/infer-forge-metrics/pitr"),
    Setting("report_dir", "path", None, "Where the PITR drill's report and the off-site copy's state are kept "
            "(barman's own /var/lib/barman/infer-forge-reports when unset).", env="PITR_REPORT_DIR",
            role_var="pitr_report_dir", role_default="{{ pitr_barman_home }}/infer-forge-reports"),
    Setting("login_host", "str", "db", "The live server, as the Barman host reaches it.", env="POSTGRES_HOST",
            role_var="pitr_postgres_host"),
    Setting("port", "int", 5432, "The live server's port.", env="POSTGRES_PORT", role_var="pitr_postgres_port"),
    Setting("login_user", "str", "infer", "The drill's login on the live server: it locks, counts and creates a "
            "restore point, and is no superuser.", env="POSTGRES_USER", role_var="pitr_drill_login_user",
            role_default="infer_forge_pitr_drill"),
    Setting("login_password", "str", None, "Its password.", env="POSTGRES_PASSWORD",
            role_var="pitr_drill_login_password", role_default="", secret=True),
    Setting("database", "str", "infer_forge", "The database the drill counts.", env="POSTGRES_DB",
            role_var="pitr_drill_database"),
    Setting("sentry_dsn", "str", None, "Sentry DSN failures are reported to.", env="SENTRY_DSN",
            role_var="pitr_sentry_dsn", role_default="", secret=True),
    Setting("environment", "str", None, "Sentry environment.", env="ENVIRONMENT", role_var="pitr_environment",
            role_default="production"),
)

# The encrypted restic copy of Barman's data on the NAS (forge pitr offsite, offsite-check).
PITR_OFFSITE = _table(
    Setting("offsite_repository", "str", None, "The restic repository: rest:https://<nas>:<port>/<login>/.",
            env="PITR_OFFSITE_REPOSITORY", role_var="pitr_offsite_repository",
            role_default="rest:https://{{ pitr_offsite_host }}:{{ pitr_offsite_port }}/{{ pitr_offsite_rest_user }}/"),
    Setting("offsite_password", "str", None, "The repository's encryption password.", env="PITR_OFFSITE_PASSWORD",
            role_var="pitr_offsite_password", role_default="", secret=True),
    Setting("offsite_rest_user", "str", None, "This host's login on the NAS's rest-server.",
            env="PITR_OFFSITE_REST_USER", role_var="pitr_offsite_rest_user", role_default="{{ inventory_hostname }}"),
    Setting("offsite_rest_password", "str", None, "Its password.", env="PITR_OFFSITE_REST_PASSWORD",
            role_var="pitr_offsite_rest_password", role_default="", secret=True),
    Setting("offsite_cacert", "path", None, "The NAS's pinned certificate.", env="PITR_OFFSITE_CACERT",
            role_var="pitr_offsite_cacert_file", role_default="/etc/infer-forge/pitr-offsite-ca.pem"),
    Setting("offsite_check_subset", "str", "5%", "How much of the data the off-site check reads back.",
            env="PITR_OFFSITE_CHECK_SUBSET", role_var="pitr_offsite_check_subset", role_default="10%"),
)

# Which declarations each module's options follow.
MODULES = {
    "forge_backup": (CONNECTION, STORE, BACKUP),
    "forge_restore": (CONNECTION, STORE, RESTORE, DRILL),
    "forge_offsite": (STORE, OFFSITE),
    "forge_health": (HEALTH,),
    "forge_pitr": (PITR, PITR_OFFSITE),
}


def from_config(table, config, names=None):
    """{name: value} of ``table``'s settings (or only ``names``) from a KEY=VALUE config
    (environment wins, see cli). Only the settings asked for are read, so a bad value of one
    a command does not use never stops it."""
    chosen = [table[name] for name in names] if names else table.values()
    return {setting.name: setting.parse(config.get(setting.env)) if setting.env else setting.default
            for setting in chosen}


def help_line(table, *names):
    """``ENV (default)`` for each name, as backup_db.sh --help lists them."""
    return "  ".join(f"{table[name].env} ({table[name].default})" if table[name].default is not None
                     else table[name].env for name in names)
