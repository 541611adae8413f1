"""Alert rules: valid for promtool, unit-tested with firing and non-firing cases, documented."""

import os
import shutil
import subprocess

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(REPO, "roles", "prometheus", "files", "infer_forge_alerts.yml")
RULE_TESTS = os.path.join(REPO, "tests", "prometheus", "alerts_test.yml")


@pytest.fixture
def promtool():
    """The Debian prometheus package's promtool; `make test` installs it, so missing is a failure."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool missing: scripts/bootstrap.sh installs it (Debian package prometheus)")
    return path


def alerts():
    with open(RULES) as handle:
        return [rule for group in yaml.safe_load(handle)["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules(promtool):
    result = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool):
    result = subprocess.run([promtool, "test", "rules", RULE_TESTS], capture_output=True, text=True,
                            cwd=os.path.dirname(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_a_test_and_stays_quiet_in_another():
    with open(RULE_TESTS) as handle:
        cases = [case for test in yaml.safe_load(handle)["tests"] for case in test.get("alert_rule_test", [])]
    for rule in alerts():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires in a test"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} has no non-firing case"


def test_every_alert_has_severity_summary_and_a_runbook_hint_naming_a_playbook_or_setting():
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        hint = rule["annotations"]["runbook"]
        assert "playbooks/" in hint or "backup_" in hint, f"{rule['alert']}: runbook hint names no playbook"
