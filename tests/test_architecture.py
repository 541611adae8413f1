"""The import rules docs/architecture.md states, enforced on the code.

The engine's layers are read from the page's table, so the page and the code cannot drift:
every engine module is on one layer, imports only its own layer or lower ones, and nothing in
the engine imports Ansible. The doors stay thin: a module imports the engine and Ansible's
basic module utilities, never another module; scripts/forge imports only the command line.
"""

import ast
import os
import re

import yaml

from helpers import REPO

ENGINE = os.path.join(REPO, "module_utils", "forge")
PAGE = os.path.join(REPO, "docs", "architecture.md")


def layers():
    """{engine module: layer number} from the page's table of layers."""
    with open(PAGE, encoding="utf-8") as handle:
        text = handle.read().split("## The engine's layers", 1)[1].split("\n## ", 1)[0]
    found = {}
    for number, modules in re.findall(r"^\| (\d)\. [^|]+\| ([^|]+) \|", text, re.M):
        for name in re.findall(r"`(\w+)\.py`", modules):
            assert name not in found, f"{name} is on two layers of docs/architecture.md"
            found[name] = int(number)
    return found


def engine_modules():
    return sorted(name[:-3] for name in os.listdir(ENGINE) if name.endswith(".py") and name != "__init__.py")


def imports_of(path):
    """(absolute imports, engine modules imported relatively) of one Python file, wherever they sit
    (a function's local import counts as much as one at the top)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    absolute, engine = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                engine.update(name.split(".")[0] for name in names)
            else:
                absolute.add(node.module)
    return absolute, engine


def test_every_engine_module_is_on_exactly_one_layer_of_the_page():
    placed = layers()
    assert sorted(placed) == engine_modules(), (
        f"docs/architecture.md's layers name {sorted(set(placed) - set(engine_modules()))} that do not exist and "
        f"miss {sorted(set(engine_modules()) - set(placed))}")


def test_the_engine_imports_only_its_own_layer_or_lower_ones_and_never_ansible():
    placed = layers()
    upward, ansible = [], []
    for name in engine_modules():
        absolute, engine = imports_of(os.path.join(ENGINE, name + ".py"))
        ansible += [f"{name} imports {module}" for module in absolute if module.split(".")[0] == "ansible"]
        upward += [f"{name} (layer {placed[name]}) imports {other} (layer {placed[other]})"
                   for other in sorted(engine) if other in placed and placed[other] > placed[name]]
    assert ansible == [], "the engine runs without Ansible on the hosts: " + "; ".join(ansible)
    assert upward == [], "an import goes up a layer: " + "; ".join(upward)


def test_the_engine_has_no_import_cycle():
    graph = {name: imports_of(os.path.join(ENGINE, name + ".py"))[1] & set(engine_modules()) for name in
             engine_modules()}
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for other in sorted(graph[name]):
            visit(other)
        path.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_modules_import_the_engine_and_ansibles_basics_never_another_module():
    library = os.path.join(REPO, "library")
    modules = {name[:-3] for name in os.listdir(library) if name.endswith(".py")}
    wrong = []
    for name in sorted(modules):
        absolute, _ = imports_of(os.path.join(library, name + ".py"))
        for module in sorted(absolute):
            if module.split(".")[0] in modules:
                wrong.append(f"{name} imports the module {module}")
            elif module.startswith("ansible.") and not (module == "ansible.module_utils.forge" or module.startswith((
                    "ansible.module_utils.basic", "ansible.module_utils.forge.", "ansible.module_utils.common."))):
                wrong.append(f"{name} imports {module}")
    assert wrong == [], "; ".join(wrong)


def test_the_on_host_command_imports_only_the_command_line():
    with open(os.path.join(REPO, "scripts", "forge"), encoding="utf-8") as handle:
        source = handle.read()
    # It is a shell script that runs one engine module with python -m.
    engine = set(re.findall(r"-m forge\.(\w+)", source)) | set(re.findall(r"\bimport forge\.(\w+)", source))
    assert engine <= {"cli"}, f"scripts/forge imports {sorted(engine - {'cli'})} beside the command line"
    assert "cli" in engine, "scripts/forge no longer runs forge.cli: update docs/architecture.md"


def test_the_name_of_every_record_a_job_leaves_is_built_in_records_only():
    """A report, a metrics file or a state file named in two places drifts apart (the checklist
    once read a name the job no longer wrote): records.py names each, and every writer and reader
    asks it. Here no other engine module spells a metrics prefix or builds a record's file name."""
    spelled = re.compile(r"""["']infer_forge_\w*_["']|f["']infer_forge_\w*\{|"""
                         r"""f["'](?:pitr_drill|pitr_offsite|dr_drill|restore_drill|offsite)_\{[^}]*\}\.json""")
    found = []
    for name in engine_modules():
        if name == "records":
            continue
        with open(os.path.join(ENGINE, name + ".py"), encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if spelled.search(line):
                    found.append(f"{name}.py:{number}: {line.strip()}")
    assert found == [], "name these in records.py:\n" + "\n".join(found)


# Values the registry (settings.py) or records.py declares, which the rest of the engine must
# take from there rather than spell again.
DECLARED_LITERALS = ("/backups", "infer-forge", "/var/lib/infer-forge/reports", "/usr/lib/postgresql/17/bin",
                     "/var/lib/infer-forge-metrics/backup", "/var/lib/infer-forge-metrics/pitr",
                     "/var/lib/barman/infer-forge-reports", "/var/lib/barman/infer-forge-scratch")
# Where one may stand anyway, and why.
SPELLED_ON_PURPOSE = {
    ("farside.py", "infer-forge"): "the NAS gate's command word (`infer-forge verify`), not the Barman server name",
}


def options_signature_defaults(tree):
    """The ids of the default values in the signatures of a file's option classes' __init__, which
    tests/test_settings.py holds to their declarations."""
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name.endswith("Options"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    allowed |= {id(default) for default in item.args.defaults + item.args.kw_defaults if default}
    return allowed


def test_a_declared_value_is_spelled_only_in_the_registry_or_an_options_signature_it_is_tested_against():
    """The engine's option classes repeat their defaults in their signatures, and
    tests/test_settings.py holds each to the declaration; anywhere else a declared value must be
    derived (the checklist spelled /backups, infer-forge and three directories of its own)."""
    found = []
    for name in engine_modules():
        if name in ("settings", "records"):
            continue
        path = os.path.join(ENGINE, name + ".py")
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        allowed = options_signature_defaults(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and node.value in DECLARED_LITERALS and id(node) not in allowed
                    and (f"{name}.py", node.value) not in SPELLED_ON_PURPOSE):
                found.append(f"{name}.py:{node.lineno}: {node.value!r}")
    assert found == [], "derive these from settings.py or records.py:\n" + "\n".join(found)


def test_every_job_records_its_outcome_through_one_helper():
    """A job's report, run metrics and Sentry event go through outcome.py, so each job records
    the same way (a failed step noted in the result, never hiding the verdict): no other engine
    module calls Sentry's failure report or writes run metrics itself."""
    direct = []
    for name in engine_modules():
        if name in ("outcome", "sentry", "metrics"):
            continue
        with open(os.path.join(ENGINE, name + ".py"), encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if re.search(r"\bsentry\.report_failure\b|\bmetrics\.write_run\b|"
                             r"from \.(sentry|metrics) import .*\b(report_failure|write_run)\b", line):
                    direct.append(f"{name}.py:{number}: {line.strip()}")
    assert direct == [], "record it with outcome.write_report, write_metrics and report_failure:\n" + "\n".join(direct)


# What an installing role may run of the modules that operate: the Barman host's off-site
# repository made at deploy, and on a rebuilt Barman host its history taken back before
# streaming starts (Barman deletes the WAL older than its first base backup, and with it what
# the slot kept since the old host's last byte, so this cannot wait for an operator's
# playbook); on the NAS, the prune of the PITR repositories, the NAS's own retention.
INSTALL_MAY_RUN = {("pitr", "forge_pitr", "offsite_init"), ("pitr", "forge_pitr", "offsite_restore"),
                   ("offsite_target", "forge_pitr", "offsite_prune")}
OPERATING_MODULES = {"forge_backup", "forge_restore", "forge_offsite", "forge_nas_newest", "forge_pitr",
                     "forge_putback", "forge_dr_drill"}


def module_calls(role):
    """(task file, module, mode) of every engine module a role's tasks call."""
    calls = []
    tasks_dir = os.path.join(REPO, "roles", role, "tasks")
    for name in sorted(os.listdir(tasks_dir)) if os.path.isdir(tasks_dir) else []:
        with open(os.path.join(tasks_dir, name), encoding="utf-8") as handle:
            pending = list(yaml.safe_load(handle) or [])
        while pending:
            task = pending.pop()
            for key in ("block", "rescue", "always"):
                pending.extend(task.get(key) or [])
            for key, arguments in task.items():
                module = key.rsplit(".", 1)[-1]
                if module.startswith("forge_"):
                    calls.append((name, module, (arguments or {}).get("mode", "")))
    return calls


def test_roles_install_and_playbooks_operate():
    """No installing role runs a backup, a drill, a recovery, a put-back or a copy: those are the
    operating roles' entry points, which playbooks call. (roles/pitr ran the drill, recoveries, the
    put-back and the off-site copy until both had roles of their own.)"""
    roles = [role for role in sorted(os.listdir(os.path.join(REPO, "roles"))) if not role.endswith("_operations")]
    operating = [f"roles/{role}/tasks/{name}: {module} {mode}".rstrip() for role in roles
                 for name, module, mode in module_calls(role)
                 if module in OPERATING_MODULES and (role, module, mode) not in INSTALL_MAY_RUN]
    assert operating == []
    assert module_calls("pitr_operations") and module_calls("backup_operations")
    # Nor through an operating role: included, imported, or a dependency.
    reaching = []
    for role in roles:
        meta = os.path.join(REPO, "roles", role, "meta", "main.yml")
        with open(meta, encoding="utf-8") as handle:
            for entry in (yaml.safe_load(handle) or {}).get("dependencies") or []:
                name = entry["role"] if isinstance(entry, dict) else entry
                if name.rsplit(".", 1)[-1].endswith("_operations"):
                    reaching.append(f"roles/{role}/meta/main.yml: depends on {name}")
        tasks_dir = os.path.join(REPO, "roles", role, "tasks")
        for name in sorted(os.listdir(tasks_dir)) if os.path.isdir(tasks_dir) else []:
            with open(os.path.join(tasks_dir, name), encoding="utf-8") as handle:
                for included in re.findall(r"^\s+name: ([\w.]+_operations)\s*$", handle.read(), re.M):
                    reaching.append(f"roles/{role}/tasks/{name}: includes {included}")
    assert reaching == []


# A number is spelled everywhere; a retention is one where it is named as one.
RETENTION_NAMES = re.compile(r"retention|keep_days|keep_last|min_keep|window_days|recovery_window")


def numbers_named_as_retentions(tree):
    """(node, name, number) of every int given to a name that says retention: a keyword argument,
    an assignment, a dict key or a function parameter's default."""
    found = []
    for node in ast.walk(tree):
        pairs = []
        if isinstance(node, ast.keyword) and node.arg:
            pairs.append((node.arg, node.value))
        elif isinstance(node, ast.Assign):
            pairs += [(target.id, node.value) for target in node.targets if isinstance(target, ast.Name)]
        elif isinstance(node, ast.Dict):
            pairs += [(key.value, value) for key, value in zip(node.keys, node.values, strict=True)
                      if isinstance(key, ast.Constant) and isinstance(key.value, str)]
        elif isinstance(node, ast.FunctionDef):
            args = node.args.args[len(node.args.args) - len(node.args.defaults):]
            pairs += list(zip((arg.arg for arg in args), node.args.defaults, strict=True))
            pairs += [(arg.arg, default) for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults,
                                                                  strict=True) if default is not None]
        for name, value in pairs:
            if (RETENTION_NAMES.search(name.lower()) and isinstance(value, ast.Constant)
                    and isinstance(value.value, int) and not isinstance(value.value, bool)):
                found.append((value, name, value.value))
    return found


RETENTION_NUMBERS_ON_PURPOSE = {
    ("module_utils/forge/backup.py", "retention_days", 1): "the least value validation accepts, not a retention",
}


def test_a_retention_is_never_a_bare_number_outside_the_registry():
    """Four retentions (backup 30 days, off-site 90, the NAS 90, Barman's window 7) are declared
    in settings.py; a `retention_days=30` written anywhere else in the engine, the modules or the
    on-host command would be a fifth that drifts. An option class's signature may repeat its
    declaration (tests/test_settings.py holds it)."""
    found = []
    paths = [os.path.join(ENGINE, name + ".py") for name in engine_modules() if name != "settings"]
    paths += [os.path.join(REPO, "library", name) for name in os.listdir(os.path.join(REPO, "library"))
              if name.endswith(".py")]
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        allowed = options_signature_defaults(tree)
        where = os.path.relpath(path, REPO)
        for value, name, number in numbers_named_as_retentions(tree):
            if id(value) not in allowed and (where, name, number) not in RETENTION_NUMBERS_ON_PURPOSE:
                found.append(f"{where}:{value.lineno}: {name}={number}")
    assert found == [], "derive these from settings.py:\n" + "\n".join(found)
