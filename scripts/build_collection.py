#!/usr/bin/env python3
"""Assemble the infer.forge collection from this checkout, and optionally build its tarball.

The checkout stays an ordinary Ansible repository (ansible.cfg points at library/
and module_utils/); the collection is a copy laid out the way ansible-galaxy and
ansible-test expect:

  library/*.py               -> plugins/modules/
  plugins/doc_fragments/     -> plugins/doc_fragments/
  module_utils/forge/        -> plugins/module_utils/forge/
  roles/                     -> roles/ (not the lab's lab_services)
  galaxy.yml                 -> the collection's root
  docs/collection-README.md  -> README.md, the collection's own
  tests/sanity/ignore-*.txt  -> tests/sanity/ (the documented sanity ignores)
  meta/runtime.yml           -> written here

In the copied modules, `ansible.module_utils.forge` becomes
`ansible_collections.infer.forge.plugins.module_utils.forge`, and a doc fragment
`forge.<part>` becomes `infer.forge.forge.<part>`; the engine itself imports its
parts relatively and needs no rewrite.

Usage: scripts/build_collection.py [DIR] [--tarball OUTDIR]
  DIR        where the layout goes (default build/ansible_collections/infer/forge, or with
             --tarball alone a scratch directory removed afterwards, so no copy of the
             roles is left for the linters to find); replaced when it exists.
             ansible-test needs it to end in ansible_collections/infer/forge.
  --tarball  also run `ansible-galaxy collection build` into OUTDIR and print the tarball's path
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DEST = os.path.join(REPO, "build", "ansible_collections", "infer", "forge")
COLLECTION_UTILS = "ansible_collections.infer.forge.plugins.module_utils.forge"
REQUIRES_ANSIBLE = ">=2.19"
# Matches the package name only where it is imported, never a longer name.
LEGACY_IMPORT = re.compile(r"\bansible\.module_utils\.forge\b")
# A doc fragment named in a module's extends_documentation_fragment list.
LOCAL_FRAGMENT = re.compile(r"^(  - )(forge\.[a-z_]+)$", re.MULTILINE)
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "molecule", ".pytest_cache")
LAB_ONLY_ROLES = ("lab_services",)


def rewrite_imports(text):
    return LOCAL_FRAGMENT.sub(r"\1infer.forge.\2", LEGACY_IMPORT.sub(COLLECTION_UTILS, text))


def copy_rewritten(src, dst):
    with open(src, encoding="utf-8") as handle:
        text = handle.read()
    with open(dst, "w", encoding="utf-8") as handle:
        handle.write(rewrite_imports(text))
    shutil.copymode(src, dst)


MARKER = ".built-by-build_collection"


def build_layout(dest):
    """Write the layout into ``dest``, which must end in ansible_collections/infer/forge and be
    new, empty or an earlier build of this script: nothing else is ever deleted."""
    if os.path.normpath(dest).split(os.sep)[-3:] != ["ansible_collections", "infer", "forge"]:
        raise SystemExit(f"refusing to build into {dest}: the path must end in ansible_collections/infer/forge")
    if os.path.exists(dest):
        if os.listdir(dest) and not os.path.exists(os.path.join(dest, MARKER)):
            raise SystemExit(f"refusing to replace {dest}: it is not empty and not an earlier build")
        shutil.rmtree(dest)
    modules = os.path.join(dest, "plugins", "modules")
    os.makedirs(modules)
    with open(os.path.join(dest, MARKER), "w", encoding="utf-8"):
        pass
    for name in sorted(os.listdir(os.path.join(REPO, "library"))):
        if name.endswith(".py"):
            copy_rewritten(os.path.join(REPO, "library", name), os.path.join(modules, name))
    shutil.copytree(os.path.join(REPO, "plugins", "doc_fragments"), os.path.join(dest, "plugins", "doc_fragments"),
                    ignore=SKIPPED)
    shutil.copytree(os.path.join(REPO, "module_utils", "forge"),
                    os.path.join(dest, "plugins", "module_utils", "forge"), ignore=SKIPPED)
    # lab_services runs the lab's stand-ins from this checkout's scripts/: not for a collection.
    shutil.copytree(os.path.join(REPO, "roles"), os.path.join(dest, "roles"),
                    ignore=shutil.ignore_patterns(*LAB_ONLY_ROLES, "__pycache__", "*.pyc", "molecule", ".pytest_cache"))
    shutil.copy2(os.path.join(REPO, "galaxy.yml"), os.path.join(dest, "galaxy.yml"))
    shutil.copy2(os.path.join(REPO, "docs", "collection-README.md"), os.path.join(dest, "README.md"))
    os.makedirs(os.path.join(dest, "meta"))
    with open(os.path.join(dest, "meta", "runtime.yml"), "w", encoding="utf-8") as handle:
        handle.write(f'---\nrequires_ansible: "{REQUIRES_ANSIBLE}"\n')
    sanity = os.path.join(REPO, "tests", "sanity")
    ignores = sorted(name for name in os.listdir(sanity) if name.startswith("ignore-")) \
        if os.path.isdir(sanity) else []
    if ignores:
        os.makedirs(os.path.join(dest, "tests", "sanity"))
        for name in ignores:
            shutil.copy2(os.path.join(sanity, name), os.path.join(dest, "tests", "sanity", name))
    return dest


def galaxy_executable():
    """ansible-galaxy beside this Python (the .venv's), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
    return beside if os.access(beside, os.X_OK) else "ansible-galaxy"


def build_tarball(layout, outdir):
    os.makedirs(outdir, exist_ok=True)
    done = subprocess.run([galaxy_executable(), "collection", "build", layout, "--output-path", outdir, "--force"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"ansible-galaxy collection build failed with exit code {done.returncode}")
    # "Created collection for infer.forge at /path/infer-forge-1.0.0.tar.gz"
    found = re.search(r" at (\S+\.tar\.gz)\s*$", done.stdout.strip())
    if not found:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit("ansible-galaxy collection build named no tarball")
    return os.path.abspath(found.group(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", help="where the collection layout goes")
    parser.add_argument("--tarball", metavar="OUTDIR", help="also build the tarball into OUTDIR and print its path")
    args = parser.parse_args(argv)
    if args.tarball and not args.dest:
        with tempfile.TemporaryDirectory(prefix="infer-forge-collection-") as scratch:
            layout = build_layout(os.path.join(scratch, "ansible_collections", "infer", "forge"))
            print(build_tarball(layout, os.path.abspath(args.tarball)))
        return
    layout = build_layout(os.path.abspath(args.dest or DEFAULT_DEST))
    if args.tarball:
        print(build_tarball(layout, os.path.abspath(args.tarball)))
    else:
        print(layout)


if __name__ == "__main__":
    main()
