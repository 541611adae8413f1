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
    details: Shows each file that would be written, before and after, and each file that would be removed.
notes:
  - Runs as root. The install directory, its subdirectories and files are root's, and every existing
    directory above it must be root's and writable by nobody else (or sticky, as C(/tmp)); otherwise
    the module refuses and changes nothing, because whoever could rename a directory on that path
    could swap what cron runs as the backup user or what root runs.
  - Missing directories above O(dest) are created, root's, C(0755).
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
  description:
    - Files removed, relative to O(dest) - engine files no longer part of the engine, stray compiled files,
      temporary files of an interrupted install, and caches after a directory had to be closed to others.
  returned: always
  type: list
  elements: str
  sample: [lib/forge/old_name.py]
directories_fixed:
  description: Install directories created, or whose owner or mode was put back to root's C(0755).
  returned: always
  type: list
  elements: str
  sample: ["lib/forge: owner 0:0 mode 0777 -> root:root 0755"]
files:
  description: Number of files the install consists of.
  returned: always
  type: int
  sample: 25
"""

import os
import shutil
import stat

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.forge import onhost
    from ansible.module_utils.forge.fsutil import write_atomic
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc


def _packed():  # pragma: no cover - never called
    """Names every module of the engine so that Ansible packs each into this module's payload.
    Never run: the installer reads their sources without importing them, so a host without the
    engine's dependencies (the NAS has no psycopg) can still receive the engine."""
    from ansible.module_utils.forge import (  # noqa: F401
        backup,
        barman,
        catalog,
        checklist,
        cli,
        clientwatch,
        compose,
        compress,
        dbclient,
        drdrill,
        drill,
        errors,
        farside,
        fsutil,
        health,
        metrics,
        offsite,
        opensslenc,
        outcome,
        pgconn,
        pitr,
        pitr_offsite,
        pitr_serve,
        privileges,
        putback,
        records,
        requirements,
        restore,
        scratch,
        sentry,
        settings,
        signing,
        verify,
        walstage,
    )


ENGINE_MODULES = ("__init__", "backup", "barman", "catalog", "checklist", "cli", "clientwatch", "compose",
                  "compress", "dbclient", "drdrill", "drill", "errors", "farside", "fsutil", "health", "metrics",
                  "offsite", "onhost", "opensslenc", "outcome", "pgconn", "pitr", "pitr_offsite", "pitr_serve",
                  "privileges", "putback", "records", "requirements", "restore", "scratch", "sentry", "settings",
                  "signing", "verify", "walstage")

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


def _interrupted_write(name):
    """The temporary file of a write_atomic that was killed before its rename (".<name>.<random>.tmp")."""
    return name.startswith(".") and name.endswith(".tmp")


class InstallRefused(Exception):
    """A reason not to write anything, in one line."""


def _trusted_directory(path, info):
    """Only root can change what is in it: root's, and writable by group or others only with
    the sticky bit (as /tmp), where nobody else can rename root's entries."""
    if info.st_uid != 0:
        raise InstallRefused(f"{path} is not owned by root; anyone owning it could swap what root installs")
    if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
        raise InstallRefused(f"{path} is writable by group or others; anyone who can write it could swap "
                             "what root installs")


class EngineInstaller:
    """Compares what the host holds with the payload and writes only what differs."""

    def __init__(self, module):
        self.module = module
        self.dest = os.path.normpath(os.path.abspath(module.params["dest"]))
        self.directories = [self.dest, os.path.join(self.dest, "lib"), os.path.join(self.dest, "lib", "forge"),
                            os.path.join(self.dest, "scripts")]

    def wanted(self):
        files = {os.path.join("lib", "forge", name): (text.encode("utf-8"), 0o644)
                 for name, text in engine_sources().items()}
        for name in self.module.params["scripts"]:
            files[os.path.join("scripts", name)] = (onhost.SCRIPTS[name].encode("utf-8"), 0o755)
        return files

    def check_parents(self):
        """Every directory above dest that exists must be root's alone (checked on the real path);
        the missing ones are created first, root's."""
        parent, missing = os.path.dirname(self.dest), []
        while not os.path.lexists(parent):
            parent, missing = os.path.dirname(parent), [parent] + missing
        real = os.path.realpath(parent)
        parts = real.split(os.sep)
        for ancestor in [os.sep] + [os.sep.join(parts[:index]) for index in range(2, len(parts) + 1)]:
            _trusted_directory(ancestor, os.stat(ancestor))
        self.directories = missing + self.directories

    def directory_fix(self, path):
        """None when ``path`` is root's 0755 directory; otherwise what must be done to it."""
        if os.path.islink(path):
            raise InstallRefused(f"{path} is a symbolic link; refusing to install through it")
        if not os.path.lexists(path):
            return "create"
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode):
            raise InstallRefused(f"{path} is not a directory")
        if (info.st_uid, info.st_gid, info.st_mode & 0o7777) != (0, 0, 0o755):
            return f"owner {info.st_uid}:{info.st_gid} mode {info.st_mode & 0o7777:04o} -> root:root 0755"
        return None

    def current(self, relative):
        """(bytes, mode, uid, gid) of an installed file, None when absent or not a regular file."""
        path = os.path.join(self.dest, relative)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        with open(path, "rb") as handle:
            content = handle.read()
        return content, info.st_mode & 0o7777, info.st_uid, info.st_gid

    def stale(self, wanted, purge_caches):
        """Engine files no longer part of the engine, compiled files next to the sources (never
        Python's own), temporary files of an interrupted install and, after a directory was open
        to others, every cache (a planted .pyc is code root would run)."""
        found = []
        for directory in (os.path.join("lib", "forge"), "scripts"):
            absolute = os.path.join(self.dest, directory)
            if not os.path.isdir(absolute) or os.path.islink(absolute):
                continue
            for name in sorted(os.listdir(absolute)):
                relative = os.path.join(directory, name)
                info = os.lstat(os.path.join(absolute, name))
                if stat.S_ISDIR(info.st_mode):
                    if name == "__pycache__" and purge_caches:
                        found.append(relative)
                    continue
                dropped = directory != "scripts" and relative not in wanted and name.endswith((".py", ".pyc"))
                if dropped or _interrupted_write(name):
                    found.append(relative)
        return found

    def run(self):
        self.check_parents()
        fixes = {path: fix for path in self.directories for fix in [self.directory_fix(path)] if fix}
        wanted = self.wanted()
        states = {relative: self.current(relative) for relative in wanted}
        written = sorted(relative for relative, (data, mode) in wanted.items()
                         if states[relative] != (data, mode, 0, 0))
        removed = self.stale(wanted, purge_caches=bool(fixes))
        if not self.module.check_mode:
            for path in self.directories:
                if path in fixes:
                    self.directory(path)
            for relative in written:
                data, mode = wanted[relative]
                # As root, in a directory just made root's 0755: the file is root's from the start.
                write_atomic(os.path.join(self.dest, relative), data, mode)
            for relative in removed:
                path = os.path.join(self.dest, relative)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
        result = dict(changed=bool(written or removed or fixes), written=written, removed=removed,
                      directories_fixed=[f"{os.path.relpath(path, self.dest)}: {fix}" for path, fix in fixes.items()],
                      files=len(wanted))
        if self.module._diff:
            result["diff"] = [self.file_diff(relative, states.get(relative), wanted[relative][0])
                              for relative in written]
            result["diff"] += [dict(before_header=relative, after_header=relative, before=f"{relative}\n",
                                    after="") for relative in removed]
        return result

    @staticmethod
    def file_diff(relative, state, data):
        before = state[0].decode("utf-8", "replace") if state else ""
        return dict(before_header=relative, after_header=relative, before=before, after=data.decode("utf-8"))

    @staticmethod
    def directory(path):
        if not os.path.lexists(path):
            os.mkdir(path, 0o700)  # opened up only once it is root's
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o755)
        finally:
            os.close(fd)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    try:
        result = EngineInstaller(module).run()
    except InstallRefused as exc:
        module.fail_json(msg=f"refusing to install the engine in {module.params['dest']}: {exc}; nothing was changed")
    except (OSError, RuntimeError) as exc:
        module.fail_json(msg=f"cannot install the engine in {module.params['dest']}: {exc} "
                             "(each file is replaced whole by a rename, never left half-written)")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
