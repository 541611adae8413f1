#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_engine
short_description: Install the backup engine and its on-host commands from the module itself
description:
  - Writes the engine (the C(forge) Python package) to O(dest)C(/lib/forge/) and the on-host commands
    (C(forge), C(backup_db.sh), C(restore_db.sh), C(offsite_copy.sh)) to O(dest)C(/scripts/), as
    cron runs them and as the runbook calls them.
  - The files come from this module's own payload (Ansible packs the engine into every module that
    imports it), so a role that installs the engine needs no path outside itself and works the same
    from this repository and from the installed C(infer.forge) collection.
  - Each file is written atomically (a temporary file in the same directory, then a rename), owned
    by root, C(0644) for the engine and C(0755) for the commands. Engine files that are no longer
    part of the engine are removed, so a renamed module never lingers on the host.
version_added: "0.1.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
options:
  dest:
    description: The install directory (the backup role's C(backup_install_dir)).
    type: path
    required: true
  scripts:
    description: The on-host commands to install; the NAS needs only C(forge).
    type: list
    elements: str
    choices: [forge, backup_db.sh, restore_db.sh, offsite_copy.sh]
    default: [forge, backup_db.sh, restore_db.sh, offsite_copy.sh]
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reports the files it would write or remove.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Lists the installed files before and after.
notes:
  - Runs as root (the install directory and its files are root's, so the backup user cannot change
    what cron runs).
"""

EXAMPLES = r"""
- name: Install the backup engine and the on-host commands
  forge_engine:
    dest: /opt/infer-forge

- name: Install only the forge command (the NAS's gate)
  forge_engine:
    dest: /opt/infer-forge
    scripts: [forge]
"""

RETURN = r"""
written:
  description: Files written (or, in check mode, that would be), relative to O(dest).
  returned: always
  type: list
  elements: str
  sample: [lib/forge/backup.py, scripts/backup_db.sh]
removed:
  description: Engine files removed because they are no longer part of the engine, relative to O(dest).
  returned: always
  type: list
  elements: str
  sample: [lib/forge/old_name.py]
files:
  description: Number of files the install consists of.
  returned: always
  type: int
  sample: 25
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.forge import onhost
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc


def _packed():  # pragma: no cover - never called
    """Names every module of the engine so that Ansible packs each into this module's payload.
    Never run: the installer reads their sources without importing them, so a host without the
    engine's dependencies (the NAS has no psycopg) can still receive the engine."""
    from ansible.module_utils.forge import (  # noqa: F401
        backup,
        catalog,
        checklist,
        cli,
        compress,
        drill,
        errors,
        farside,
        fsutil,
        health,
        metrics,
        offsite,
        opensslenc,
        pgconn,
        privileges,
        records,
        restore,
        sentry,
        settings,
        signing,
    )


ENGINE_MODULES = ("__init__", "backup", "catalog", "checklist", "cli", "compress", "drill", "errors",
                  "farside", "fsutil", "health", "metrics", "offsite", "onhost", "opensslenc", "pgconn",
                  "privileges", "records", "restore", "sentry", "settings", "signing")

ARGUMENT_SPEC = dict(
    dest=dict(type="path", required=True),
    scripts=dict(type="list", elements="str", choices=["forge", "backup_db.sh", "restore_db.sh", "offsite_copy.sh"],
                 default=["forge", "backup_db.sh", "restore_db.sh", "offsite_copy.sh"]),
)


def engine_sources():
    """{file name: source text} of the engine, read from the payload it was packed into."""
    import importlib.util

    package = onhost.__name__.rsplit(".", 1)[0]
    sources = {}
    for name in ENGINE_MODULES:
        fullname = package if name == "__init__" else f"{package}.{name}"
        spec = importlib.util.find_spec(fullname)
        source = spec.loader.get_source(fullname) if spec else None
        if source is None:
            raise RuntimeError(f"the source of {fullname} is not in the module's payload")
        sources[f"{name}.py"] = source
    return sources


class EngineInstaller:
    """Compares what the host holds with the payload and writes only what differs."""

    def __init__(self, module):
        self.module = module
        self.dest = module.params["dest"]

    def wanted(self):
        files = {os.path.join("lib", "forge", name): (text, 0o644) for name, text in engine_sources().items()}
        for name in self.module.params["scripts"]:
            files[os.path.join("scripts", name)] = (onhost.SCRIPTS[name], 0o755)
        return files

    def current(self, relative):
        path = os.path.join(self.dest, relative)
        if os.path.islink(path) or not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8", errors="replace") as handle:
            content = handle.read()
        info = os.stat(path)
        return content, info.st_mode & 0o7777, info.st_uid, info.st_gid

    def stale(self, wanted):
        directory = os.path.join(self.dest, "lib", "forge")
        if not os.path.isdir(directory):
            return []
        return sorted(os.path.join("lib", "forge", name) for name in os.listdir(directory)
                      if name.endswith(".py") and os.path.join("lib", "forge", name) not in wanted)

    def run(self):
        wanted = self.wanted()
        written = sorted(relative for relative, (text, mode) in wanted.items()
                         if self.current(relative) != (text, mode, 0, 0))
        removed = self.stale(wanted)
        before = sorted(relative for relative in wanted if self.current(relative)) + removed
        if not self.module.check_mode:
            for directory in (self.dest, os.path.join(self.dest, "lib"), os.path.join(self.dest, "lib", "forge"),
                              os.path.join(self.dest, "scripts")):
                self.directory(directory)
            for relative in written:
                text, mode = wanted[relative]
                self.write(os.path.join(self.dest, relative), text, mode)
            for relative in removed:
                os.unlink(os.path.join(self.dest, relative))
        result = dict(changed=bool(written or removed), written=written, removed=removed, files=len(wanted))
        if self.module._diff:
            result["diff"] = dict(before={"files": before}, after={"files": sorted(wanted)})
        return result

    @staticmethod
    def directory(path):
        if os.path.islink(path):
            raise OSError(f"{path} is a symbolic link; refusing to install through it")
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)
        os.chown(path, 0, 0)
        os.chmod(path, 0o755)  # noqa: S103 - root's; the backup user must read and run, never write

    @staticmethod
    def write(path, text, mode):
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".forge-install-")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.chown(temporary, 0, 0)
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    try:
        result = EngineInstaller(module).run()
    except (OSError, RuntimeError) as exc:
        module.fail_json(msg=f"cannot install the engine in {module.params['dest']}: {exc} "
                             "(each file is replaced whole by a rename, never left half-written)")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
