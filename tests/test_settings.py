"""Each setting is declared once, in module_utils/forge/settings.py. Everything that repeats a
default, a type or a choice (a module's argument spec and its documentation, a role's
defaults/main.yml and meta/argument_specs.yml, the engine's option classes, the on-host
commands) must say what the declaration says: edit one alone and this fails."""

import functools
import importlib.util
import inspect
import os

import pytest
import yaml

from forge import cli, opensslenc
from forge import settings as declarations
from forge.backup import BackupOptions
from forge.offsite import OffsiteOptions
from forge.pitr import PitrOptions
from forge.pitr_offsite import OffsiteOptions as PitrOffsiteOptions
from forge.restore import RestoreOptions

from helpers import REPO, own_role_defaults, role_defaults, role_dependencies

# The backup_ and pitr_ variables configure two roles each: one installs, the other operates.
ROLE_PREFIXES = {"offsite_target_": ("offsite_target",), "backup_": ("backup", "backup_operations"),
                 "health_": ("health",), "pitr_": ("pitr", "pitr_operations")}
PATH_TYPES = {"path": ("path", "str"), "str": ("str",), "int": ("int",), "bool": ("bool",), "float": ("float",)}


def load_module(name):
    """A module file as Python, for its ARGUMENT_SPEC and DOCUMENTATION (the engine import inside
    may fail here; both are plain literals)."""
    spec = importlib.util.spec_from_file_location(f"library_{name}", os.path.join(REPO, "library", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def doc_fragments():
    """plugins/doc_fragments/forge.py's ModuleDocFragment, loaded once."""
    spec = importlib.util.spec_from_file_location("forge_doc_fragment",
                                                  os.path.join(REPO, "plugins", "doc_fragments", "forge.py"))
    fragments = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fragments)
    return fragments.ModuleDocFragment


def documented_options(module):
    """A module's documented options with its doc fragments merged in, as ansible-doc shows them."""
    documentation = yaml.safe_load(load_module(module).DOCUMENTATION)
    options = dict(documentation.get("options", {}))
    for name in documentation.get("extends_documentation_fragment", []):
        family, part = name.split(".")
        assert family == "forge", f"{module} extends an unknown fragment {name}"
        shared = yaml.safe_load(getattr(doc_fragments(), part.upper()))["options"]
        assert not set(shared) & set(options), f"{module} documents {set(shared) & set(options)} twice"
        options.update(shared)
    return options


def roles_of(variable):
    """The roles whose defaults set ``variable`` (at least its prefix's first role)."""
    roles = next(roles for prefix, roles in ROLE_PREFIXES.items() if variable.startswith(prefix))
    holding = [role for role in roles if variable in role_defaults(role)]
    return holding or roles[:1]


def read_yaml(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def declared_role_variables():
    tables = [declarations.CONNECTION, declarations.STORE, declarations.BACKUP, declarations.RESTORE,
              declarations.DRILL, declarations.OFFSITE, declarations.NAS, declarations.HEALTH, declarations.PITR,
              declarations.PITR_OFFSITE]
    return [pytest.param(setting, id=setting.role_var) for table in tables for setting in table.values()
            if setting.role_var]


def module_options():
    return [pytest.param(module, setting, id=f"{module}-{setting.name}")
            for module, tables in declarations.MODULES.items() for table in tables for setting in table.values()
            if setting.name in load_module(module).ARGUMENT_SPEC]


@pytest.mark.parametrize("setting", declared_role_variables())
def test_a_role_default_is_the_declared_one(setting):
    for role in roles_of(setting.role_var):
        defaults = role_defaults(role)
        assert setting.role_var in defaults, f"{setting.role_var} is declared but roles/{role} has no default for it"
        assert defaults[setting.role_var] == setting.role_default, (
            f"roles/{role}/defaults/main.yml sets {setting.role_var}: {defaults[setting.role_var]!r}; "
            f"module_utils/forge/settings.py declares {setting.role_default!r}")


@pytest.mark.parametrize("setting", declared_role_variables())
def test_a_role_argument_spec_agrees_with_the_declaration(setting):
    roles = roles_of(setting.role_var)
    entries = [entry["options"][setting.role_var] for role in roles
               for entry in read_yaml("roles", role, "meta", "argument_specs.yml")["argument_specs"].values()
               if setting.role_var in entry.get("options", {})]
    assert entries, f"no entry point of roles/{'/'.join(roles)} declares {setting.role_var}"
    for option in entries:
        assert option.get("type", "str") in PATH_TYPES[setting.kind], (setting.role_var, option)
        if "default" in option:
            assert option["default"] == setting.role_default, (setting.role_var, option["default"])
        if setting.choices:
            assert tuple(option.get("choices", ())) == setting.choices, setting.role_var


def test_the_backup_and_operations_roles_read_one_set_of_defaults():
    """One inventory configures both roles under the same names; a default written in each would
    drift and make a playbook's backup differ from the cron entry's. Both take theirs from
    backup_settings, and their argument specs agree on every variable they share."""
    assert role_dependencies("backup") == role_dependencies("backup_operations") == ["backup_settings"]
    shared = own_role_defaults("backup_settings")
    assert not set(shared) & set(own_role_defaults("backup")) and not set(shared) & set(own_role_defaults(
        "backup_operations"))
    options = {}
    for role in ("backup", "backup_operations"):
        for entry in read_yaml("roles", role, "meta", "argument_specs.yml")["argument_specs"].values():
            for name, option in entry.get("options", {}).items():
                options.setdefault(name, set()).add((option.get("type", "str"), repr(option.get("default"))))
    assert {name: seen for name, seen in options.items() if len(seen) > 1} == {}
    # The operations' own variables live there alone.
    assert not {"backup_restore_target", "backup_drill_file", "backup_operate_as_backup_user"} & set(shared)


@pytest.mark.parametrize(("module", "setting"), module_options())
def test_a_module_option_agrees_with_the_declaration(module, setting):
    loaded = load_module(module)
    option = loaded.ARGUMENT_SPEC[setting.name]
    assert option.get("type", "str") == setting.kind
    assert option.get("default") == setting.default
    assert tuple(option.get("choices", ())) == setting.choices
    assert bool(option.get("no_log")) == setting.secret
    documented = documented_options(module)[setting.name]
    assert documented.get("default") == setting.default, f"{module}'s DOCUMENTATION of {setting.name}"
    assert documented.get("type", "str") == setting.kind


def test_every_module_names_its_declared_options():
    """A declaration a module does not take is a typo in one or the other."""
    for module, tables in declarations.MODULES.items():
        spec = load_module(module).ARGUMENT_SPEC
        taken = [name for table in tables for name in table if name in spec]
        assert len(taken) >= len(tables), f"{module} takes almost none of its declared settings: {taken}"


def test_the_engine_options_default_to_the_declarations():
    backup = BackupOptions()
    for name, attribute in (("retention_days", "retention_days"), ("min_keep", "min_keep"),
                            ("keep_daily", "keep_daily"), ("keep_weekly", "keep_weekly"),
                            ("keep_monthly", "keep_monthly"), ("format", "dump_format"),
                            ("compression", "compression"), ("lock_wait", "lock_wait"),
                            ("space_check", "space_check"), ("encrypt", "encrypt")):
        assert getattr(backup, attribute) == declarations.BACKUP[name].default, name
    assert backup.backup_dir == declarations.STORE["backup_dir"].default
    assert backup.kdf_iterations == opensslenc.PBKDF2_ITERATIONS == declarations.STORE["kdf_iter"].default
    offsite = inspect.signature(OffsiteOptions).parameters
    for name in ("retention_days", "min_keep", "ssh_port", "require_mount", "skip_unencrypted"):
        assert offsite[name].default == declarations.OFFSITE[name].default, name
    restore = RestoreOptions()
    for name in ("force", "keep_previous", "create"):
        assert getattr(restore, name) == declarations.RESTORE[name].default, name
    assert restore.backup_dir == declarations.STORE["backup_dir"].default
    pitr = inspect.signature(PitrOptions).parameters
    for name in ("postgres_bin", "scratch_root", "scratch_port", "login_user", "jobs", "textfile_dir", "report_dir",
                 "sentry_dsn", "environment"):
        assert pitr[name].default == declarations.PITR[name].default, name
    assert inspect.signature(PitrOffsiteOptions).parameters["check_subset"].default == \
        declarations.PITR_OFFSITE["offsite_check_subset"].default


def test_the_on_host_commands_read_the_declared_variables_and_defaults():
    runner = cli.backup_from_config({"POSTGRES_DB": "db"})
    assert runner.options.retention_days == declarations.BACKUP["retention_days"].default
    assert runner.options.backup_dir == declarations.STORE["backup_dir"].default
    runner = cli.backup_from_config({"POSTGRES_DB": "db", "RETENTION_DAYS": "12", "BACKUP_MIN_KEEP": "3",
                                     "POSTGRES_PORT": "6543"})
    assert (runner.options.retention_days, runner.options.min_keep, runner.settings.port) == (12, 3, 6543)
    offsite = cli.offsite_from_config({"OFFSITE_TARGET": "/mnt/usb/x", "POSTGRES_DB": "db"}).options
    assert (offsite.retention_days, offsite.min_keep) == (declarations.OFFSITE["retention_days"].default,
                                                          declarations.OFFSITE["min_keep"].default)
    assert f"RETENTION_DAYS ({declarations.BACKUP['retention_days'].default})" in cli.BACKUP_HELP


def test_a_bad_number_names_its_variable():
    with pytest.raises(Exception) as caught:
        cli.backup_from_config({"RETENTION_DAYS": "thirty"})
    assert caught.value.message == "RETENTION_DAYS must be a whole number, got 'thirty'"


@pytest.mark.parametrize("module", ["forge_backup", "forge_restore", "forge_health"])
def test_every_module_that_connects_to_postgresql_takes_the_same_connection_names(module):
    spec = load_module(module).ARGUMENT_SPEC
    names = {name for name, option in spec.items() for name in [name, *option.get("aliases", [])]}
    assert {"login_host", "port", "login_user", "login_password"} <= names


@pytest.mark.parametrize("module", ["forge_restore", "forge_offsite"])
def test_the_reports_and_state_directory_has_one_name(module):
    assert "report_dir" in load_module(module).ARGUMENT_SPEC


def test_a_setting_given_as_nothing_in_the_config_file_is_not_taken_for_its_default():
    """BACKUP_DIR= in backup.env is a mistake to name, never a quiet /backups on the root disk."""
    with pytest.raises(Exception) as caught:
        cli.backup_from_config({"POSTGRES_DB": "db", "BACKUP_DIR": ""})
    assert caught.value.message == "backup_dir must be an absolute path, got ''"


def test_a_command_never_stops_on_a_setting_it_does_not_use():
    offsite = cli.offsite_from_config({"OFFSITE_TARGET": "/mnt/usb/x", "POSTGRES_DB": "db",
                                       "BACKUP_KDF_ITER": "many"})
    assert offsite.options.backup_dir == declarations.STORE["backup_dir"].default


def _backup_config_settings():
    return [pytest.param(setting, id=setting.env) for table in (declarations.CONNECTION, declarations.STORE,
                                                                 declarations.BACKUP)
            for setting in table.values() if setting.env and setting.role_var]


@pytest.mark.parametrize("setting", _backup_config_settings())
def test_a_role_variable_of_an_on_host_setting_reaches_the_hosts_config_file(setting):
    """A variable the role declares but never writes into backup-<db>.env would set the
    playbooks' runs and leave cron's at the engine's default (the way BACKUP_STALL_TIMEOUT was)."""
    from helpers import render

    value = {"int": 4242, "bool": True, "path": "/srv/forge-drift-check", "str": "forge-drift-check"}[setting.kind]
    if setting.choices:
        value = setting.choices[-1]
    values = {"backup_compose_sidecar": False, setting.role_var: value}
    text = render("backup", "backup.env.j2", item="infer_forge", sidecar=False, **values)
    expected = {True: "1"}.get(value, str(value))
    assert f"{setting.env}={expected}" in text.splitlines(), (
        f"roles/backup/templates/backup.env.j2 does not write {setting.env} from {setting.role_var}")


def test_forge_pitr_reads_the_declared_variables_and_defaults():
    options = cli.pitr_options_from_config({})
    for name in ("server", "postgres_bin", "scratch_root", "scratch_port", "login_user"):
        assert getattr(options, name) == declarations.PITR[name].default, name
    options = cli.pitr_options_from_config({"PITR_SERVER": "pg-main", "PITR_SCRATCH_PORT": "6000",
                                            "POSTGRES_USER": "drill", "PITR_POSTGRES_BIN": ""})
    assert (options.server, options.scratch_port, options.login_user, options.postgres_bin) == (
        "pg-main", 6000, "drill", declarations.PITR["postgres_bin"].default)
    offsite = cli.pitr_offsite_options_from_config({"PITR_OFFSITE_CHECK_SUBSET": "",
                                                    "PITR_OFFSITE_REPOSITORY": "rest:https://nas:8000/db/",
                                                    "PITR_OFFSITE_PASSWORD": "a-repository-password"}, options)
    assert offsite.check_subset == declarations.PITR_OFFSITE["offsite_check_subset"].default
    with pytest.raises(Exception) as caught:
        cli.pitr_options_from_config({"PITR_SCRATCH_PORT": "many"})
    assert caught.value.message == "PITR_SCRATCH_PORT must be a whole number, got 'many'"


def _pitr_config_settings():
    return [pytest.param(setting, id=setting.env) for table in (declarations.PITR, declarations.PITR_OFFSITE)
            for setting in table.values() if setting.env and setting.role_var]


@pytest.mark.parametrize("setting", _pitr_config_settings())
def test_a_pitr_role_variable_reaches_the_barman_hosts_config_file(setting):
    from helpers import render

    value = {"int": 4242, "path": "/srv/forge-drift-check", "str": "forge-drift-check"}[setting.kind]
    text = render("pitr", "pitr.env.j2", **{"pitr_offsite_enabled": True, "inventory_hostname": "db1", "groups": {},
                                            setting.role_var: value})
    assert f"{setting.env}={value}" in text.splitlines(), (
        f"roles/pitr/templates/pitr.env.j2 does not write {setting.env} from {setting.role_var}")


def _fallback(value):
    """What a checklist default falls back to: the ``default(...)`` of a role's variable, or itself."""
    import ast
    import re

    if isinstance(value, str) and "{{" in value:
        found = re.fullmatch(r"\{\{ \w+ \| default\((.+?)\) \}\}(.*)", value)
        if not found:
            return None  # an expression, not one role's variable
        fallback = ast.literal_eval(found.group(1))
        return fallback + found.group(2) if found.group(2) else fallback
    return value


def test_the_checklist_looks_where_the_roles_put_things():
    """The checklist role falls back to each role's default when that role is not on the host,
    and the engine's DEFAULTS say the same; the module's documentation repeats them (sanity
    checks that). One value each, and where it is declared, the declaration's."""
    from forge.checklist import DEFAULTS

    role = read_yaml("roles", "checklist", "defaults", "main.yml")
    renamed = {"checklist_backup_report_dir": "report_dir"}
    compared = []
    for variable, value in role.items():
        key = renamed.get(variable, variable[len("checklist_"):])
        fallback = _fallback(value)
        if key in DEFAULTS and fallback is not None:
            compared.append(key)
            assert fallback == DEFAULTS[key], f"roles/checklist {variable}: {fallback!r}; checklist.DEFAULTS {key}: " \
                                              f"{DEFAULTS[key]!r}"
    assert len(compared) >= 20, compared
    assert DEFAULTS["backup_dir"] == declarations.STORE["backup_dir"].default
    assert DEFAULTS["pitr_server"] == declarations.PITR["server"].default
    assert (DEFAULTS["report_dir"], DEFAULTS["textfile_dir"]) == (declarations.STORE["report_dir"].role_default,
                                                                  declarations.STORE["textfile_dir"].role_default)
