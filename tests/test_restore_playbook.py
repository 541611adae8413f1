"""playbooks/restore.yml for real: it restores only once the target's name is typed back
exactly, and a run without that confirmation leaves the target as it was. Run with
ansible-playbook against this host and the real PostgreSQL of the tests."""

import fcntl
import json
import os
import subprocess
import termios
import time

import pytest
from test_playbooks_check_mode import playbook, playbook_command, said

from helpers import REPO, run_backup_script
from servers import load_sample_data, table_counts


@pytest.fixture
def changed_since_backup(pg, fresh_db, backup_dir):
    """A database backed up with 100 orders, of which 40 have since been deleted:
    a restore shows as the 40 orders coming back. Databases a restore leaves are dropped."""
    load_sample_data(pg, fresh_db, customers=20, orders=100)
    assert run_backup_script(pg, fresh_db, backup_dir).returncode == 0
    backed_up = table_counts(pg, fresh_db)
    pg.execute("DELETE FROM orders WHERE id > 60", database=fresh_db)
    existing = all_databases(pg)
    yield fresh_db, backed_up
    for name in set(all_databases(pg)) - set(existing):
        pg.drop_database(name)


def all_databases(pg):
    return [name for (name,) in pg.execute("SELECT datname FROM pg_database ORDER BY 1")]


def tasks_run(result):
    """{task name (without its role's prefix): its result on localhost} for every task the play got to."""
    report = json.loads(result.stdout)
    return {task["task"]["name"].split(" : ", 1)[-1]: task["hosts"]["localhost"]
            for play in report["plays"] for task in play["tasks"] if "localhost" in task["hosts"]}


def restore(pg, database, tmp_path, backup_dir, **extra_vars):
    return playbook("restore.yml", pg, database, tmp_path, backup_dir, check=False,
                    extra_vars=dict(backup_restore_target=database, backup_restore_force=True, **extra_vars))


def restore_typing(pg, database, tmp_path, backup_dir, typed):
    """Run the restore as an operator does: on a terminal, with ``typed`` and Enter typed at its prompt."""
    command, env = playbook_command("restore.yml", pg, database, tmp_path, backup_dir, check=False, extra_vars={
        "backup_restore_target": database, "backup_restore_force": True})
    terminal, operator_side = os.openpty()
    output = tmp_path / "playbook.out"
    with open(output, "w") as stdout:
        # Its own session with the terminal as controlling tty: the prompt reads only from a
        # foreground terminal, and takes input only once it has set the terminal raw.
        process = subprocess.Popen(command, stdin=operator_side, stdout=stdout, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO, start_new_session=True,
                                   preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(operator_side)
    try:
        deadline = time.monotonic() + 300
        while process.poll() is None and time.monotonic() < deadline:
            if not termios.tcgetattr(terminal)[3] & termios.ICANON:
                # The prompt flushes pending input right after going raw, so type again until
                # it takes the line (and puts the terminal back the way it was).
                os.write(terminal, typed.encode() + b"\r")
                answered = time.monotonic() + 5
                while process.poll() is None and time.monotonic() < answered:
                    if termios.tcgetattr(terminal)[3] & termios.ICANON:
                        break
                    time.sleep(0.05)
                else:
                    continue
                break
            time.sleep(0.05)
        process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(terminal)
    # The prompt shares stdout with the JSON report that follows it: split where the report parses.
    text = output.read_text()
    start = next((at for at in range(len(text)) if text[at] == "{" and parses(text[at:])), len(text))
    result = subprocess.CompletedProcess(command, process.returncode, text[start:], text[:start])
    result.said = said(result.stdout)
    return result


def parses(text):
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def refusal(database):
    return (f"confirmation does not match {database}; nothing was restored "
            f"(non-interactive runs: -e backup_restore_confirm={database})")


def assert_refused_and_untouched(pg, database, result, before, databases):
    ran = tasks_run(result)
    assert "Restore the backup" not in ran, f"the play went on to restore: {result.said}"
    check = ran["Check the confirmation"]
    assert check["failed"] and check["msg"] == refusal(database)
    assert result.returncode != 0
    assert table_counts(pg, database) == before
    assert all_databases(pg) == databases  # not even a side database was made


def test_restore_playbook_without_a_confirmation_restores_nothing_and_says_what_to_type(
        pg, changed_since_backup, backup_dir, tmp_path):
    database, _ = changed_since_backup
    before, databases = table_counts(pg, database), all_databases(pg)
    assert before["public.orders"] == 60
    result = restore(pg, database, tmp_path, backup_dir)
    # With no terminal to type on, the prompt takes nothing, and nothing matches.
    assert tasks_run(result)["Ask for the target's name to be typed back"]["user_input"] == ""
    assert_refused_and_untouched(pg, database, result, before, databases)


@pytest.mark.parametrize("typed", [
    pytest.param(lambda name: name + "_restore", id="another-database-name"),
    pytest.param(str.upper, id="the-name-in-upper-case"),
    pytest.param(lambda name: name + " yes", id="the-name-with-trailing-text"),
    pytest.param(lambda name: name + " ", id="the-name-with-a-trailing-space"),
    pytest.param(lambda name: name[:-1], id="the-name-cut-short"),
])
def test_restore_playbook_with_a_wrong_confirmation_restores_nothing_and_says_what_to_type(
        pg, changed_since_backup, backup_dir, tmp_path, typed):
    database, _ = changed_since_backup
    before, databases = table_counts(pg, database), all_databases(pg)
    result = restore(pg, database, tmp_path, backup_dir, backup_restore_confirm=typed(database))
    assert_refused_and_untouched(pg, database, result, before, databases)


def test_restore_playbook_with_the_target_name_confirmed_restores_the_backup_and_keeps_the_previous(
        pg, changed_since_backup, backup_dir, tmp_path):
    database, backed_up = changed_since_backup
    before = table_counts(pg, database)
    result = restore(pg, database, tmp_path, backup_dir, backup_restore_confirm=database)
    assert result.returncode == 0, result.said + result.stderr
    assert f"restored {database}_" in result.said and f"into {database} (replaced, VERIFIED" in result.said
    assert table_counts(pg, database) == backed_up
    previous = tasks_run(result)["Restore the backup"]["previous_database"]
    assert f"previous kept as {previous})" in result.said
    assert table_counts(pg, previous) == before


def test_restore_playbook_restores_once_the_target_name_is_typed_at_its_prompt(
        pg, changed_since_backup, backup_dir, tmp_path):
    database, backed_up = changed_since_backup
    result = restore_typing(pg, database, tmp_path, backup_dir, database)
    assert result.returncode == 0, result.stderr + result.said
    prompt = " ".join(result.stderr.split())
    assert f"into {database}: would restore beside it and swap it in. Type the database name to confirm:" in prompt
    assert tasks_run(result)["Ask for the target's name to be typed back"]["user_input"] == database
    assert f"restored {database}_" in result.said and f"into {database} (replaced, VERIFIED" in result.said
    assert table_counts(pg, database) == backed_up


def test_restore_playbook_typed_the_target_name_in_upper_case_restores_nothing(
        pg, changed_since_backup, backup_dir, tmp_path):
    database, _ = changed_since_backup
    before, databases = table_counts(pg, database), all_databases(pg)
    result = restore_typing(pg, database, tmp_path, backup_dir, database.upper())
    assert tasks_run(result)["Ask for the target's name to be typed back"]["user_input"] == database.upper()
    assert_refused_and_untouched(pg, database, result, before, databases)
