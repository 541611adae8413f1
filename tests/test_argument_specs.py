"""The roles' meta/argument_specs.yml stop a play on a mistyped setting before any task runs,
and let the right value through. One real ansible-playbook run includes each role once per case
(one inventory host per case, so a failing case stops only its own host); --tags with a tag no
task has leaves only Ansible's argument validation, which is tagged `always`, to run."""

import glob
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import HOST_PYTHON

from helpers import REPO, dependents_of, is_settings_role, own_role_defaults, role_defaults, role_dependencies

# (case id, role, entry point, variable, value, how the validation's complaint starts; None: it passes)
CASES = [
    ("backup-retention-days-as-a-word", "backup", "main", "backup_retention_days", "seven",
     "argument 'backup_retention_days' is of type str and we were unable to convert to int"),
    ("backup-retention-days-as-a-number", "backup", "main", "backup_retention_days", 14, None),
    # -e backup_retention_days=14 hands the role a string.
    ("backup-retention-days-from-the-command-line", "backup", "main", "backup_retention_days", "14", None),
    ("backup-format-not-among-its-choices", "backup", "main", "backup_format", "tar",
     "value of backup_format must be one of: plain, custom, got: tar"),
    ("backup-format-custom", "backup", "main", "backup_format", "custom", None),
    ("backup-as-backup-user-neither-true-nor-false", "backup_operations", "run", "backup_operate_as_backup_user",
     "sometimes",
     "argument 'backup_operate_as_backup_user' is of type str and we were unable to convert to bool"),
    ("prometheus-node-port-as-a-word", "prometheus", "main", "prometheus_node_port", "node-exporter",
     "argument 'prometheus_node_port' is of type str and we were unable to convert to int"),
    ("prometheus-node-port-as-a-number", "prometheus", "main", "prometheus_node_port", 9100, None),
    ("alertmanager-require-tls-neither-true-nor-false", "alertmanager", "main", "alertmanager_smtp_require_tls",
     "maybe", "argument 'alertmanager_smtp_require_tls' is of type str and we were unable to convert to bool"),
    ("filebeat-output-not-among-its-choices", "filebeat", "main", "filebeat_output", "kafka",
     "value of filebeat_output must be one of: logstash, elasticsearch, got: kafka"),
    ("filebeat-output-elasticsearch", "filebeat", "main", "filebeat_output", "elasticsearch", None),
    ("health-checks-with-a-misspelt-check", "health", "check", "health_checks", ["database", "redsi"],
     "value of health_checks must be one or more of: database, redis, app. Got no match for: redsi"),
    ("health-checks-database-alone", "health", "check", "health_checks", ["database"], None),
    # The operations' entry points check what they use, as the installing role's main does.
    ("backup-run-min-keep-as-a-word", "backup_operations", "run", "backup_min_keep", "all",
     "argument 'backup_min_keep' is of type str and we were unable to convert to int"),
    ("backup-run-format-custom", "backup_operations", "run", "backup_format", "custom", None),
    ("backup-drill-keep-neither-true-nor-false", "backup_operations", "drill", "backup_drill_keep", "later",
     "argument 'backup_drill_keep' is of type str and we were unable to convert to bool"),
    ("backup-restore-force-neither-true-nor-false", "backup_operations", "restore", "backup_restore_force", "please",
     "argument 'backup_restore_force' is of type str and we were unable to convert to bool"),
    ("backup-restore-jobs-as-a-word", "backup_operations", "restore", "backup_restore_jobs", "four",
     "argument 'backup_restore_jobs' is of type str and we were unable to convert to int"),
    ("backup-offsite-run-retention-as-a-word", "backup_operations", "offsite_run", "backup_offsite_retention_days",
     "long",
     "argument 'backup_offsite_retention_days' is of type str and we were unable to convert to int"),
    ("backup-offsite-trust-port-as-a-word", "backup", "offsite_trust", "backup_offsite_ssh_port", "ssh",
     "argument 'backup_offsite_ssh_port' is of type str and we were unable to convert to int"),
]

VALIDATION_TASK = "Validating arguments against arg spec"


@pytest.fixture(scope="module")
def validated(tmp_path_factory):
    """{case id: ([(task name, result) ...], the host's recap)} of one run per entry point name:
    within one play Ansible reuses a role it has loaded, with the first entry point's spec."""
    workdir = tmp_path_factory.mktemp("argument-specs")
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    playbook = workdir / "include_each_role.yml"
    playbook.write_text(json.dumps([{
        "name": "Include each case's role", "hosts": "all", "gather_facts": False,
        "tasks": [{"name": "Include the role", "tags": ["always"], "ansible.builtin.include_role": {
            "name": "{{ case_role }}", "tasks_from": "{{ case_entry_point }}"}}],
    }]))
    runs = {}
    for entry in sorted({case[2] for case in CASES}):
        hosts = {case: {"ansible_connection": "local", "ansible_python_interpreter": HOST_PYTHON,
                        "case_role": role, "case_entry_point": entry_point, variable: value}
                 for case, role, entry_point, variable, value, _ in CASES if entry_point == entry}
        inventory = workdir / f"inventory-{entry}.yml"
        inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
        command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory),
                   str(playbook), "--tags", "argument-validation-only"]
        runs[entry] = (hosts, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                               env=env, cwd=REPO, stdin=subprocess.DEVNULL))
    validated = {}
    try:
        outputs = [(hosts, *process.communicate(timeout=300)) for hosts, process in runs.values()]
    finally:
        for _, process in runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for hosts, stdout, stderr in outputs:
        try:
            report = json.loads(stdout)
        except ValueError:
            raise AssertionError(f"ansible-playbook printed no JSON:\n{stdout}\n{stderr}") from None
        ran = {case: [] for case in hosts}
        for play in report["plays"]:
            for task in play["tasks"]:
                for case, outcome in task["hosts"].items():
                    ran[case].append((task["task"]["name"], outcome))
        validated.update({case: (tasks, report["stats"][case]) for case, tasks in ran.items()})
    return validated


@pytest.mark.parametrize(("case", "role", "entry_point", "variable", "value", "message"),
                         [pytest.param(*case, id=case[0]) for case in CASES])
def test_role_argument_spec_stops_a_mistyped_setting_and_lets_a_right_one_through(
        validated, case, role, entry_point, variable, value, message):
    ran, recap = validated[case]
    validations = [(name, outcome) for name, outcome in ran if VALIDATION_TASK in name]
    assert [name.split(" : ", 1)[0] for name, _ in validations] == [role], ran
    [(name, outcome)] = validations
    # Nothing but the validation ran on this machine.
    assert [task for task, _ in ran] == ["Include the role", name]
    assert f"arg spec '{entry_point}'" in name
    if message is None:
        assert not outcome.get("failed"), outcome["msg"]
        assert outcome["msg"] == "The arg spec validation passed"
        assert recap["failures"] == 0
    else:
        assert outcome.get("failed"), f"{variable}={value!r} passed validation"
        # Only that setting is named: the role's defaults pass their own spec.
        assert outcome["msg"].splitlines()[0] == "Validation of arguments failed:"
        [reason] = outcome["msg"].splitlines()[1:]
        assert reason.startswith(message)
        # The host has failed: the play goes no further on it.
        assert recap["failures"] == 1


def role_includes(node):
    """Every include_role/import_role in a playbook or task file, as its arguments."""
    if isinstance(node, list):
        for item in node:
            yield from role_includes(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key.rsplit(".", 1)[-1] in ("include_role", "import_role") and isinstance(value, dict):
                yield value
            else:
                yield from role_includes(value)


def test_playbooks_include_role_entry_points_by_name_so_their_argument_specs_are_checked():
    # Ansible looks the argument spec up by tasks_from as written: `tasks_from: check.yml` asks for
    # an entry point "check.yml", finds none, and validates nothing, though the spec says `check`.
    unchecked = []
    files = (glob.glob(os.path.join(REPO, "playbooks", "*.yml"))
             + glob.glob(os.path.join(REPO, "molecule", "**", "*.yml"), recursive=True))
    for path in sorted(files):
        with open(path) as handle:
            content = yaml.safe_load(handle)
        for include in role_includes(content):
            tasks_from = include.get("tasks_from", "")
            if not tasks_from.endswith((".yml", ".yaml")):
                continue
            spec_file = os.path.join(REPO, "roles", include["name"], "meta", "argument_specs.yml")
            if not os.path.exists(spec_file):
                continue
            with open(spec_file) as handle:
                entry_points = set(yaml.safe_load(handle)["argument_specs"])
            stem = tasks_from.rsplit(".", 1)[0]
            # A templated name ("{{ lab_service }}.yml") may be any entry point the role has.
            if stem in entry_points or ("{{" in stem and entry_points - {"main"}):
                unchecked.append(f"{os.path.relpath(path, REPO)}: {include['name']} tasks_from: {tasks_from}"
                                 f" (write tasks_from: {stem})")
    assert unchecked == [], "\n".join(unchecked)


def test_every_entry_point_a_playbook_includes_has_an_argument_spec():
    """A role entry point without a spec takes any value of any variable unchecked: whether a
    playbook or another role (backup_operations borrows the backup role's compose_clients) includes it."""
    missing = []
    for path in sorted(glob.glob(os.path.join(REPO, "playbooks", "*.yml"))
                       + glob.glob(os.path.join(REPO, "roles", "*", "tasks", "*.yml"))):
        with open(path) as handle:
            content = yaml.safe_load(handle)
        for include in role_includes(content):
            entry_point = include.get("tasks_from", "main")
            spec_file = os.path.join(REPO, "roles", include["name"], "meta", "argument_specs.yml")
            if "{{" in entry_point:
                continue
            if not os.path.exists(spec_file):
                missing.append(f"{os.path.relpath(path, REPO)}: role {include['name']} has no meta/argument_specs.yml")
                continue
            with open(spec_file) as handle:
                if entry_point not in yaml.safe_load(handle)["argument_specs"]:
                    missing.append(f"{os.path.relpath(path, REPO)}: {include['name']} tasks_from: {entry_point}")
    assert missing == [], "\n".join(missing)


@pytest.mark.parametrize(("role", "entry_point"), [("backup_operations", "run"), ("backup_operations", "drill"),
                                                  ("backup_operations", "restore"),
                                                  ("backup_operations", "offsite_run"), ("backup", "offsite_trust"),
                                                  ("backup", "compose_clients")])
def test_an_operating_entry_point_checks_only_what_its_tasks_use(role, entry_point):
    """Ansible resolves every variable a spec lists: one the tasks never use could only stop a run
    (an undefined vault value behind it), never protect one."""
    with open(os.path.join(REPO, "roles", role, "meta", "argument_specs.yml")) as handle:
        declared = set(yaml.safe_load(handle)["argument_specs"][entry_point]["options"])
    with open(os.path.join(REPO, "roles", role, "tasks", f"{entry_point}.yml")) as handle:
        tasks = handle.read()
    defaults = "\n".join(f"{name}: {value}" for name, value in  # a default built from another variable uses it too
                         role_defaults(role).items())
    unused = sorted(name for name in declared if name not in tasks
                    and not any(name in line and used in line for used in declared if used in tasks
                                for line in defaults.splitlines() if line.startswith(used + ":")))
    assert unused == []


def settings_roles():
    return sorted(role for role in os.listdir(os.path.join(REPO, "roles")) if is_settings_role(role))


@pytest.mark.parametrize("role", sorted(os.listdir(os.path.join(REPO, "roles"))))
def test_every_role_default_is_declared_in_an_argument_spec_with_the_same_default(role):
    """A default no entry point declares is a setting no play checks; one declared with another
    default says two things. (The specs' headers promise exactly this check.) A settings role's
    defaults are declared by the roles that depend on it."""
    defaults = own_role_defaults(role)
    declaring = dependents_of(role) if is_settings_role(role) else [role]
    assert declaring, f"no role depends on the settings role {role}"
    declared = {}
    for other in declaring:
        with open(os.path.join(REPO, "roles", other, "meta", "argument_specs.yml")) as handle:
            specs = yaml.safe_load(handle)["argument_specs"]
        for entry_point in specs.values():
            for name, option in (entry_point.get("options") or {}).items():
                declared.setdefault(name, []).append(option)
    assert sorted(set(defaults) - set(declared)) == []
    differ = sorted(name for name, options in declared.items() if name in defaults
                    for option in options if "default" in option and option["default"] != defaults[name])
    assert differ == []


def test_no_two_roles_set_a_default_for_the_same_variable():
    """A default written twice drifts: the installing and the operating role of a capability read
    theirs from one settings role they both depend on."""
    setters = {}
    for role in sorted(os.listdir(os.path.join(REPO, "roles"))):
        for name in own_role_defaults(role):
            setters.setdefault(name, []).append(role)
    assert {name: roles for name, roles in setters.items() if len(roles) > 1} == {}


@pytest.mark.parametrize("role", settings_roles())
def test_a_settings_role_holds_defaults_and_nothing_that_runs(role):
    assert sorted(os.listdir(os.path.join(REPO, "roles", role))) == ["README.md", "defaults", "meta"]
    assert role_dependencies(role) == []
