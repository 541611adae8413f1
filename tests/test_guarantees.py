"""The guarantee matrix (tests/guarantees.py) and the tests agree.

Every cell names a test that exists (parameters included) or says why it cannot occur,
every cell's test is named by a mutant that must kill it, every generated mutant still
finds its text in the code, and docs/testing.md shows the matrix as it is.
"""

import os
import subprocess
import sys

import pytest
from guarantees import MATRIX, NA, Door, cells, generated_mutants, table
from mutants import MUTANTS

from helpers import REPO


@pytest.fixture(scope="module")
def collected():
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             "tests"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return {line.strip() for line in result.stdout.splitlines() if "::" in line}


def test_every_cell_names_a_test_that_exists_or_says_why_it_cannot_occur(collected):
    def exists(test):  # a name without parameters stands for each of its cases
        return test in collected or any(node.startswith(test + "[") for node in collected)

    missing = [f"{promise} / {cell}: {test}" for promise, cell, test in cells()
               if not isinstance(test, NA) and not exists(str(test))]
    assert missing == [], "\n".join(missing)
    reasons = [(promise, cell) for promise, cell, test in cells() if isinstance(test, NA) and len(test.why) < 20]
    assert reasons == [], "an NA cell must say why it cannot occur"


def test_every_cell_is_guarded_by_a_mutant_that_names_its_test():
    named = {test for mutant in MUTANTS for test in mutant["tests"]}
    unguarded = [f"{promise} / {cell}: {test}" for promise, cell, test in cells()
                 if not isinstance(test, NA) and str(test) not in named]
    assert unguarded == [], "\n".join(unguarded)


def test_a_promise_with_a_bypass_has_a_generated_mutant_for_each_format_and_door_cell_whose_text_is_in_the_code():
    generated = generated_mutants()
    for promise, entry in MATRIX.items():
        if "bypass" not in entry:
            continue
        path, _variable, text, _replacement = entry["bypass"]
        with open(os.path.join(REPO, path), encoding="utf-8") as handle:
            assert handle.read().count(text) == 1, f"{promise}: its bypass text is not once in {path}"
        format_cells = [cell for cell, test in entry["cells"].items()
                        if cell.startswith("format=") and not isinstance(test, NA)]
        door_cells = [cell for cell, test in entry["cells"].items() if isinstance(test, Door)]
        mine = [m for m in generated if m["promise"].startswith(promise + " (")]
        assert len(mine) == len(format_cells) + len(door_cells), promise
    doors_without_bypass = [f"{promise} / {cell}" for promise, cell, test in cells()
                            if isinstance(test, Door) and "bypass" not in MATRIX[promise]]
    assert doors_without_bypass == [], "a Door cell needs its promise's bypass to generate its mutant"
    assert {m["name"] for m in generated} <= {m["name"] for m in MUTANTS}


def test_docs_show_the_matrix_as_it_is():
    with open(os.path.join(REPO, "docs", "testing.md"), encoding="utf-8") as handle:
        text = handle.read()
    assert table() in text, "docs/testing.md: paste the output of python tests/guarantees.py"


def test_every_mutant_still_finds_its_text_once():
    """A mutant whose text moved is reported STALE by the mutation stage, minutes into make test;
    this says so in the pytest stage, in a second."""
    stale = []
    for mutant in MUTANTS:
        for path, text, _replacement in mutant["edits"]:
            with open(os.path.join(REPO, path), encoding="utf-8") as handle:
                found = handle.read().count(text)
            if found != 1:
                stale.append(f"{mutant['name']}: {found} times in {path}")
    assert stale == [], "\n".join(stale)
