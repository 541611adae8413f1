"""The sentry role: .env edited in place, private, and a test event Sentry accepted."""

import json


def env_lines(host):
    return host.file("/opt/infer-forge/.env").content_string.splitlines()


def test_sentry_keys_are_set(host):
    lines = env_lines(host)
    assert "SENTRY_DSN=http://molecule0key@127.0.0.1:9000/789" in lines
    assert "ENVIRONMENT=production" in lines
    assert "SENTRY_TRACES_SAMPLE_RATE=0.1" in lines
    assert "SENTRY_PROFILES_SAMPLE_RATE=0.1" in lines
    assert "SENTRY_RELEASE=infer-forge@0.1.0" in lines
    assert "ENVIRONMENT=development" not in lines
    assert sum(line.startswith("SENTRY_DSN=") for line in lines) == 1


def test_other_keys_of_the_env_file_are_kept(host):
    lines = env_lines(host)
    assert "DATABASE_URL=postgresql://infer:secret@db:5432/infer_forge" in lines
    assert "REDIS_URL=redis://redis:6379/0" in lines
    assert "# comment the role must keep" in lines


def test_the_env_file_is_private(host):
    env = host.file("/opt/infer-forge/.env")
    assert env.mode == 0o600 and env.user == "root"


def test_sentry_received_the_test_event_with_the_runbooks_tags(host):
    raw = host.file("/var/tmp/sentry-envelopes").content_string
    envelopes = [chunk for chunk in raw.split("\n---\n") if chunk.strip()]
    assert envelopes, "no event reached the stand-in Sentry"
    path, *lines = envelopes[-1].splitlines()
    assert path == "/api/789/envelope/"
    event = json.loads(lines[2])
    assert event["tags"]["component"] == "ops-checklist"
    assert event["tags"]["environment"] == "production"
    assert event["tags"]["host"] == "sentry-app"
    assert event["release"] == "infer-forge@0.1.0"


def test_the_accepted_event_is_recorded_and_the_idempotence_run_did_not_resend(host):
    raw = host.file("/var/tmp/sentry-envelopes").content_string
    envelopes = [chunk for chunk in raw.split("\n---\n") if chunk.strip()]
    assert len(envelopes) == 1, "converge sends one event; the idempotence run must not send another"
    record = json.loads(host.file("/var/lib/infer-forge/sentry-test-event.json").content_string)
    assert record["status"] == 200 and record["environment"] == "production"
    assert "***@" in record["endpoint"]
