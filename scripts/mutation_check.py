#!/usr/bin/env python3
"""Break each core promise on purpose and check that the suite notices.

For every mutant in tests/mutants.py: copy the working tree to a scratch
directory, apply the mutant's edits there (never here), run the tests named for
it, and expect at least one of them to fail. A mutant that survives means a
README or docs/ promise has no test that can fail; the stage fails and names it.

Usage: scripts/mutation_check.py [--jobs N] [--baseline | --passed-in JUNIT] [--list] [NAME ...]
  --baseline   first run every named test on the unmutated copy (use it when
               running this alone)
  --passed-in  take the pytest stage's JUnit report as the baseline instead
               (make test): a mutant whose tests did not all pass there, or
               are not there at all, is an ERROR, never a kill
"""

import argparse
import concurrent.futures
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from mutants import MUTANTS  # noqa: E402

PER_MUTANT_TIMEOUT = 300


def tracked_files():
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                         capture_output=True).stdout.decode()
    return [path for path in out.split("\0") if path and not path.startswith(".venv/")]


def scratch_copy(files):
    root = tempfile.mkdtemp(prefix="forge-mutant-")
    # Some tests run the engine as another user (nobody): the copy must be readable, as the repo is.
    os.chmod(root, 0o755)  # noqa: S103 - a scratch copy of a public repository
    for path in files:
        source = os.path.join(REPO, path)
        if not os.path.lexists(source):
            continue  # deleted in the work tree, not yet in git
        target = os.path.join(root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return root


def apply(root, mutant):
    for path, text, replacement in mutant["edits"]:
        full = os.path.join(root, path)
        with open(full, encoding="utf-8") as handle:
            source = handle.read()
        found = source.count(text)
        if found != 1:
            raise ValueError(f"mutant {mutant['name']} is stale: its text appears {found} times in {path}, "
                             f"not once: {text.strip()[:80]!r}")
        with open(full, "w", encoding="utf-8") as handle:
            handle.write(source.replace(text, replacement))


def run_tests(root, tests):
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-rfE", "-p", "no:cacheprovider",
               f"--basetemp={os.path.join(root, '.pytest-tmp')}", *tests]
    # A skip is a failure under make test (tests/conftest.py); here it would pass for a kill.
    env = {k: v for k, v in os.environ.items() if k != "FORGE_TESTS_MAY_SKIP"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # A session of its own: on a timeout the servers and engines the tests started die with it.
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=PER_MUTANT_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, f"timed out after {PER_MUTANT_TIMEOUT} s"
    return proc.returncode, output


def killers(output):
    """The tests that failed in their call phase: a setup error (a server that did not start) or a
    test that would have skipped proves nothing about the mutant."""
    if "would be skipped (" in output:
        return []
    return re.findall(r"^FAILED (\S+::\S+)", output, re.M)


def check(mutant, files, baseline):
    started = time.monotonic()
    root = scratch_copy(files)
    try:
        if not mutant["tests"]:
            return "UNGUARDED", "no test is named for it", time.monotonic() - started
        if baseline:
            status, output = run_tests(root, mutant["tests"])
            if status != 0:
                return "ERROR", "its tests fail on the real code:\n" + _tail(output), time.monotonic() - started
        try:
            apply(root, mutant)
        except ValueError as exc:
            return "STALE", str(exc), time.monotonic() - started
        status, output = run_tests(root, mutant["tests"])
        elapsed = time.monotonic() - started
        failed = killers(output)
        if status == 1 and failed and not re.search(r"^ERROR ", output, re.M):
            return "KILLED", ", ".join(failed), elapsed
        if status == 0:
            return "SURVIVED", f"all {len(mutant['tests'])} test(s) passed", elapsed
        return "ERROR", f"pytest exit {status}:\n" + _tail(output), elapsed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def passed_tests(junit_path):
    """Node ids (tests/test_x.py::test_y[param]) of the tests that passed in a pytest JUnit report."""
    import xml.etree.ElementTree as ElementTree  # noqa: S405 - our own pytest's report

    passed = set()
    for case in ElementTree.parse(junit_path).getroot().iter("testcase"):  # noqa: S314 - our own report
        if any(child.tag in ("failure", "error", "skipped") for child in case):
            continue
        module = case.get("classname", "").replace(".", "/")
        passed.add(f"{module}.py::{case.get('name')}")
    return passed


def guard_tests_not_passed(mutant, passed):
    """The mutant's tests that did not pass on the real code (a name without parameters stands
    for each of its parametrized cases, and needs at least one)."""
    missing = []
    for test in mutant["tests"]:
        cases = [node for node in passed if node == test or node.startswith(test + "[")]
        if not cases:
            missing.append(test)
    return missing


def _tail(text, lines=15):
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--passed-in", metavar="JUNIT", help="the pytest stage's JUnit report, as the baseline")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()

    known = {mutant["name"]: mutant for mutant in MUTANTS}
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"no such mutant: {', '.join(unknown)} (see --list)")
    chosen = [known[name] for name in args.names] or MUTANTS
    if args.list:
        for mutant in chosen:
            print(f"{mutant['name']:48} {mutant['promise']}")
        return 0

    files = tracked_files()
    started = time.monotonic()
    results = {}
    if args.passed_in:
        passed = passed_tests(args.passed_in)
        for mutant in list(chosen):
            missing = guard_tests_not_passed(mutant, passed)
            if missing:
                results[mutant["name"]] = "ERROR"
                print(f"{'ERROR':9} {mutant['name']:48}     -  its test(s) did not pass in the pytest stage: "
                      f"{', '.join(missing)}", flush=True)
                chosen.remove(mutant)
    # A mutant that makes its test wait out a deadline (a stall, a hung read) spends most of its time
    # asleep: those run in a pool of their own beside the CPU-bound ones instead of holding a job slot.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool, \
            concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as waiting:
        futures = {(waiting if mutant.get("waits") else pool).submit(check, mutant, files, args.baseline):
                   mutant["name"] for mutant in chosen}
        for future in concurrent.futures.as_completed(futures):
            name = futures[future]
            verdict, detail, elapsed = future.result()
            results[name] = verdict
            print(f"{verdict:9} {name:48} {elapsed:5.0f} s  {detail if verdict == 'KILLED' else ''}".rstrip(),
                  flush=True)
            if verdict != "KILLED":
                print(f"          {detail}", flush=True)
    survivors = [name for name, verdict in results.items() if verdict != "KILLED"]
    print(f"mutants: {len(results) - len(survivors)} killed, {len(survivors)} not killed "
          f"in {time.monotonic() - started:.0f} s")
    if survivors:
        print("not killed (a promise no test can fail): " + ", ".join(sorted(survivors)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
