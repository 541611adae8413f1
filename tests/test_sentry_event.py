"""forge_sentry_event against a loopback server that speaks Sentry's envelope endpoint.

sentry.io is out of reach here; the stub records what it receives, so the
tests assert on the event Sentry would have stored.
"""

import json
import os

import pytest

from forge import sentry

from helpers import SentryStub
from servers import free_port


@pytest.fixture
def stub():
    server = SentryStub()
    yield server
    server.close()


def test_the_test_event_arrives_with_the_runbooks_tags(stub, run_module):
    result = run_module("forge_sentry_event", {"dsn": stub.dsn(789), "environment": "production",
                                               "release": "infer-forge@0.1.0", "tags": {"checklist_item": "10"}})
    assert result.get("failed") is not True, result.get("msg")
    assert result["accepted"] is True and result["status"] == 200 and result["changed"] is True
    assert result["sdk"] != "none"  # Debian's python3-sentry-sdk built it
    [event] = stub.events()
    assert stub.received[0]["path"] == "/api/789/envelope/"
    assert event["event_id"].replace("-", "") == result["event_id"].replace("-", "")
    assert event["tags"]["component"] == "ops-checklist"
    assert event["tags"]["environment"] == "production"
    assert event["tags"]["host"] == os.uname().nodename
    assert event["tags"]["checklist_item"] == "10"
    assert event["environment"] == "production" and event["release"] == "infer-forge@0.1.0"
    assert "INFER FORGE test event" in str(event.get("message") or event.get("logentry"))
    assert "publickey" not in result["_raw"].replace(f"'{stub.dsn(789)}'", "")


def test_without_the_sdk_the_engine_builds_the_same_event(stub, run_module):
    result = run_module("forge_sentry_event", {"dsn": stub.dsn(), "use_sdk": False})
    assert result["accepted"] is True and result["sdk"] == "none"
    [event] = stub.events()
    assert event["tags"]["component"] == "ops-checklist"


@pytest.mark.parametrize("use_sdk", [True, False])
def test_event_message_is_the_events_message(stub, run_module, use_sdk):
    """`message` is reserved by Ansible, so the option is `event_message`; both builders send it."""
    result = run_module("forge_sentry_event", {"dsn": stub.dsn(), "use_sdk": use_sdk,
                                               "event_message": "drill 42 finished"})
    assert result["accepted"] is True, result.get("msg")
    [event] = stub.events()
    assert "drill 42 finished" in json.dumps(event.get("message") or event.get("logentry"))
    assert "INFER FORGE test event" not in json.dumps(event)


def test_the_current_sentry_sdk_builds_an_event_the_server_accepts(stub):
    """The module runs with Debian's sentry-sdk 1.x; this runs the same code with 2.x."""
    status, event_id, version = sentry.send_with_sentry_sdk(
        stub.dsn(), "hello", {"component": "backup"}, {"order": {"order_id": 123}}, environment="staging")
    assert status == 200 and int(version.split(".")[0]) >= 2
    [event] = stub.events()
    assert event["tags"]["component"] == "backup" and event["contexts"]["order"] == {"order_id": 123}
    assert event["event_id"] == event_id


@pytest.mark.parametrize("code, message", [
    (429, "refused the event: HTTP 429 (rate limited)"),
    (500, "refused the event: HTTP 500"),
])
def test_server_errors_fail_the_task_with_the_status(run_module, code, message):
    stub = SentryStub(status=code)
    try:
        result = run_module("forge_sentry_event", {"dsn": stub.dsn()})
    finally:
        stub.close()
    assert result["failed"] is True and result["accepted"] is False
    assert result["status"] == code
    assert result["msg"] == f"Sentry at 127.0.0.1:{stub.port} {message}"


def test_unreachable_sentry(run_module):
    port = free_port()
    result = run_module("forge_sentry_event", {"dsn": f"http://key@127.0.0.1:{port}/1", "timeout": 2})
    assert result["failed"] is True
    assert result["msg"].startswith(f"Sentry at 127.0.0.1:{port} is unreachable")


@pytest.mark.parametrize("dsn", ["not a dsn", "ftp://key@host/1", "https://host/1", "https://key@host/project"])
def test_invalid_dsn(run_module, dsn):
    result = run_module("forge_sentry_event", {"dsn": dsn})
    assert result["failed"] is True
    assert result["msg"] == "SENTRY_DSN is not a valid DSN (expected https://KEY@HOST/PROJECT_ID)"


def test_check_mode_sends_nothing(stub, run_module):
    result = run_module("forge_sentry_event", {"dsn": stub.dsn()}, check=True)
    assert result["changed"] is True and result["sent"] is False and result["endpoint"] == f"http://***@127.0.0.1:{stub.port}/42"
    assert stub.received == []


def test_an_accepted_event_is_recorded_and_not_resent_within_the_interval(stub, run_module, tmp_path):
    record = tmp_path / "sentry-test-event.json"
    args = {"dsn": stub.dsn(), "record_file": str(record), "min_interval_days": 7}
    first = run_module("forge_sentry_event", args)
    assert first["changed"] is True and first["sent"] is True
    saved = json.loads(record.read_text())
    assert saved["event_id"] == first["event_id"] and saved["status"] == 200
    assert "publickey" not in record.read_text()  # the record is evidence, not a secret
    second = run_module("forge_sentry_event", args)
    assert second["changed"] is False and second["sent"] is False and second["event_id"] == first["event_id"]
    assert len(stub.events()) == 1
    # Another DSN (another project) is tested again, as is a record older than the interval.
    third = run_module("forge_sentry_event", dict(args, dsn=stub.dsn(43)))
    assert third["sent"] is True
    saved = json.loads(record.read_text())
    saved["accepted_at"] -= 8 * 86400
    record.write_text(json.dumps(saved))
    assert run_module("forge_sentry_event", dict(args, dsn=stub.dsn(43)))["sent"] is True
    assert len(stub.events()) == 3


def test_a_rejected_event_leaves_no_record(run_module, tmp_path):
    server = SentryStub(status=500)
    try:
        record = tmp_path / "sentry-test-event.json"
        result = run_module("forge_sentry_event", {"dsn": server.dsn(), "record_file": str(record),
                                                   "min_interval_days": 7})
        assert result["failed"] is True and not record.exists()
    finally:
        server.close()
