"""The documentation stays short, linked and true to the roles.

README.md stays a page a newcomer reads (at most 12 KB, a table of contents that works); every
page in docs/ is reachable from it; every relative link in README.md, docs/*.md and the roles'
READMEs reaches an existing file and heading; and every role variable the documentation names
is one a role declares, so a renamed or removed variable fails here instead of misleading a
reader. Each checker is also run on a made-up page, to prove it can fail."""

import glob
import json
import os
import re

import pytest
import yaml

from helpers import REPO, dependents_of, is_settings_role, role_defaults

README = os.path.join(REPO, "README.md")
README_MAX_BYTES = 12 * 1024
ROLES = sorted(os.path.basename(os.path.dirname(path)) for path in glob.glob(os.path.join(REPO, "roles", "*", "")))
DOC_PAGES = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
ROLE_READMES = sorted(glob.glob(os.path.join(REPO, "roles", "*", "README.md")))
ALL_PAGES = [README] + DOC_PAGES + ROLE_READMES

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`]+)`")
# A whole code span that looks like a variable; `*` stands for any part of a name (`backup_postgres_*`).
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_*]*$")


def rel(path):
    return os.path.relpath(path, REPO)


def prose_lines(text):
    """(line number, line) of every line outside fenced code blocks."""
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            yield number, line


def slug(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(text):
    """[(level, title, anchor)] of a page's headings, with GitHub's -1, -2 for repeated anchors."""
    found, seen = [], {}
    for _, line in prose_lines(text):
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        anchor = slug(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.append((len(match.group(1)), match.group(2), anchor if count == 0 else f"{anchor}-{count}"))
    return found


def anchors_of(path):
    with open(path, encoding="utf-8") as handle:
        return {anchor for _, _, anchor in headings(handle.read())}


def links(text):
    """(line number, target) of each Markdown link outside code."""
    for number, line in prose_lines(text):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            yield number, target


def broken_links(path, text):
    """Relative links of a page that reach no file, or no heading of it."""
    problems = []
    for number, target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        file_part, _, anchor = target.partition("#")
        destination = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        where = f"{rel(path)}:{number}: {target}"
        if not os.path.exists(destination):
            problems.append(f"{where}: no such file {rel(destination)}")
        elif anchor and (not destination.endswith(".md") or anchor not in anchors_of(destination)):
            problems.append(f"{where}: {rel(destination)} has no heading with the anchor #{anchor}")
    return problems


def load_yaml(path):
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def role_spec_options(role):
    """Every top-level option of every entry point of a role's meta/argument_specs.yml."""
    specs = load_yaml(os.path.join(REPO, "roles", role, "meta", "argument_specs.yml")).get("argument_specs") or {}
    options = {}
    for entry_point in specs.values():
        options.update((entry_point or {}).get("options") or {})
    return options


def declared_variables():
    names = set()
    for role in ROLES:
        names |= set(role_defaults(role)) | set(role_spec_options(role))
    return names


ROLE_PREFIXES = tuple(f"{role}_" for role in ROLES)


def named_role_variables(text):
    """(line number, name) of each code span that is a whole identifier with a role's prefix."""
    for number, line in prose_lines(text):
        for span in CODE_SPAN.findall(line):
            if IDENTIFIER.match(span) and span.startswith(ROLE_PREFIXES):
                yield number, span


def unknown_variables(path, text, declared):
    problems = []
    roles = set(os.listdir(os.path.join(REPO, "roles")))
    for number, name in named_role_variables(text):
        if name in roles:  # `backup_operations` names a role, not a variable
            continue
        pattern = re.compile("^" + ".+".join(re.escape(part) for part in name.split("*")) + "$")
        if not any(pattern.match(variable) for variable in declared):
            problems.append(f"{rel(path)}:{number}: `{name}` is no role's variable "
                            "(not in any roles/*/defaults/main.yml or meta/argument_specs.yml)")
    return problems


def render_default(value):
    """A default as a role README's table shows it in a code span."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(", ", ": "))


def table_cells(line):
    """The cells of a Markdown table row, with escaped pipes kept inside their cell."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [cell.strip().replace("\\|", "|") for cell in cells]


def variable_table_rows(text):
    """(line number, name, default cell) of each row of the tables whose first column is `variable`."""
    in_table = False
    for number, line in prose_lines(text):
        if not line.lstrip().startswith("|"):
            in_table = False
            continue
        cells = table_cells(line)
        if cells[0] == "variable":
            in_table = True
        elif in_table and not set(cells[0]) <= set("-: "):
            name = cells[0].strip("`")
            yield number, name, cells[1] if len(cells) > 1 else ""


def role_table_problems(role, path, text):
    """A role README's variables table: each variable is in the role's argument_specs, and a default
    shown as code is the one in its defaults/main.yml."""
    options, defaults, problems = role_spec_options(role), role_defaults(role), []
    for number, name, default_cell in variable_table_rows(text):
        where = f"{rel(path)}:{number}: `{name}`"
        if name not in options:
            problems.append(f"{where} is not an option of roles/{role}/meta/argument_specs.yml")
            continue
        shown = re.fullmatch(r"`([^`]*)`", default_cell)
        if shown and name in defaults and shown.group(1) != render_default(defaults[name]):
            problems.append(f"{where}: the table says `{shown.group(1)}`, roles/{role}/defaults/main.yml "
                            f"says `{render_default(defaults[name])}`")
    return problems


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def test_readme_is_at_most_12_kb():
    size = os.path.getsize(README)
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move reference material to docs/ (limit 12 KB)"


def test_readme_has_a_table_of_contents_near_the_top_that_reaches_every_section():
    text = read(README)
    found = headings(text)
    titles = [title for _, title, _ in found]
    assert "Contents" in titles[:3], f"README.md needs a '## Contents' heading near the top, has {titles[:3]}"
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    targets = [target for _, target in links(contents)]
    assert targets, "README.md's table of contents has no links"
    anchors = {anchor for _, _, anchor in found}
    assert [t for t in targets if not t.startswith("#") or t[1:] not in anchors] == []
    sections = [anchor for level, title, anchor in found if level == 2 and title != "Contents"]
    assert sorted(t[1:] for t in targets) == sorted(sections), "every ## section of README.md belongs in its contents"


def test_every_docs_page_and_role_readme_is_linked_from_readme():
    targets = {os.path.normpath(os.path.join(REPO, target.partition("#")[0])) for _, target in links(read(README))}
    assert DOC_PAGES, "docs/ has no pages"
    assert [rel(page) for page in DOC_PAGES + ROLE_READMES if page not in targets] == []


def test_every_role_has_a_readme():
    assert [role for role in ROLES if not os.path.exists(os.path.join(REPO, "roles", role, "README.md"))] == []


@pytest.mark.parametrize("path", ALL_PAGES, ids=rel)
def test_relative_links_reach_a_file_and_heading(path):
    assert broken_links(path, read(path)) == []


@pytest.mark.parametrize("path", ALL_PAGES, ids=rel)
def test_every_role_variable_named_exists(path):
    assert unknown_variables(path, read(path), declared_variables()) == []


@pytest.mark.parametrize("path", ROLE_READMES, ids=rel)
def test_role_readme_tables_follow_argument_specs_and_defaults(path):
    role = os.path.basename(os.path.dirname(path))
    text = read(path)
    if is_settings_role(role):  # its dependents document it
        dependents = dependents_of(role)
        assert dependents and all(f"(../{other}/README.md" in text for other in dependents), rel(path)
        return
    assert list(variable_table_rows(text)), f"{rel(path)} has no variables table"
    assert role_table_problems(role, path, text) == []


def test_the_checkers_fail_on_a_made_up_page(tmp_path):
    """Each checker names what is wrong on a page with a made-up variable, link and default."""
    page = tmp_path / "page.md"
    page.write_text("# Page\n\nSet `backup_retention_dayz` and `backup_postgres_*`, see [x](missing.md)"
                    " and [y](#nowhere).\n\n```\n`backup_only_in_code` [z](in-code.md)\n```\n")
    text = page.read_text()
    assert [p.split(": ", 1)[1] for p in unknown_variables(str(page), text, declared_variables())] == [
        "`backup_retention_dayz` is no role's variable "
        "(not in any roles/*/defaults/main.yml or meta/argument_specs.yml)"]
    assert len(broken_links(str(page), text)) == 2

    table = ("| variable | default | meaning |\n|---|---|---|\n| `backup_retention_days` | `31` | x |\n"
             "| `backup_made_up` | `1` | x |\n| `backup_databases` | `[\"infer_forge\"]` | x |\n")
    problems = role_table_problems("backup", str(page), table)
    assert len(problems) == 2, problems
    assert "says `30`" in problems[0] and "backup_made_up" in problems[1]


def test_readme_names_every_module_and_every_molecule_scenario():
    text = read(README)
    modules = sorted(name[:-3] for name in os.listdir(os.path.join(REPO, "library")) if name.endswith(".py"))
    scenarios = sorted(name for name in os.listdir(os.path.join(REPO, "molecule"))
                       if os.path.exists(os.path.join(REPO, "molecule", name, "molecule.yml")))
    assert [name for name in modules + scenarios if f"`{name}`" not in text] == []


def test_the_testing_page_describes_every_molecule_scenario():
    text = read(os.path.join(REPO, "docs", "testing.md"))
    described = set(re.findall(r"^\| `(\w+)` \|", text.split("## Molecule scenarios", 1)[1], re.M))
    scenarios = {name for name in os.listdir(os.path.join(REPO, "molecule"))
                 if os.path.exists(os.path.join(REPO, "molecule", name, "molecule.yml"))}
    assert sorted(scenarios - described) == [] and sorted(described - scenarios) == []


def test_the_demo_transcript_shows_the_steps_the_demo_takes():
    """The transcript in docs/testing.md is pasted from a real run; its step lines must still be the
    ones scripts/demo.sh prints: the same number of steps, in the same order, the same titles."""
    with open(os.path.join(REPO, "scripts", "demo.sh"), encoding="utf-8") as handle:
        script = handle.read()
    [total] = set(re.findall(r"'\\n== %d/(\d+) %s\\n'", script))
    titles = [title.split(":", 1)[0] for title in re.findall(r'^step "([^"]+)"', script, re.M)]
    assert len(titles) == int(total), f"scripts/demo.sh prints /{total} but has {len(titles)} steps"
    shown = re.findall(r"^== (\d+)/(\d+) ([^:\n]+)", read(os.path.join(REPO, "docs", "testing.md")), re.M)
    assert [(int(number), int(of), title) for number, of, title in shown] == [
        (number, len(titles), title) for number, title in enumerate(titles, 1)], \
        "paste a fresh `make demo` transcript into docs/testing.md"
