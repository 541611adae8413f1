"""The rendered filebeat.yml: structure, and that the runbook's log lines would be parsed.

Filebeat cannot be installed here, so its two processors that matter are
applied to the runbook's sample lines by small stand-ins that follow their
documented semantics (decode_json_fields with target "" merges the decoded
object into the event; dissect splits on the tokenizer's literal text).
`filebeat test config` runs on real hosts (filebeat_install: true).
"""

import json
import re

import yaml

STRUCTLOG_LINE = json.dumps({
    "timestamp": "2026-02-07T14:32:15.123Z", "level": "info", "event": "order_created", "order_id": 123,
    "customer_id": 456, "amount": 125000.0, "user_id": 1, "request_id": "abc-123-def"})
REQUEST_LINE = "2026-02-07 14:32:15 INFO request method=POST path=/api/v1/orders status=201 duration=45.3ms"


def config(host):
    item = host.file("/etc/filebeat/filebeat.yml")
    assert item.mode == 0o600 and item.user == "root"
    return yaml.safe_load(item.content_string)


def inputs_by_id(cfg):
    return {i["id"]: i for i in cfg["filebeat.inputs"]}


def processor(entry, name):
    return next(p[name] for p in entry["processors"] if name in p)


def decode_json_fields(event, settings):
    for field in settings["fields"]:
        decoded = json.loads(event[field])
        if settings["target"] == "":
            for key, value in decoded.items():
                if settings.get("overwrite_keys") or key not in event:
                    event[key] = value
        else:
            event[settings["target"]] = decoded
    return event


def dissect(event, settings):
    parts = re.split(r"(%\{[^}]+\})", settings["tokenizer"])
    pattern = "".join(f"(?P<k{i}>.+?)" if p.startswith("%{") else re.escape(p) for i, p in enumerate(parts))
    match = re.fullmatch(pattern, event[settings["field"]])
    assert match, "dissect would fail on the runbook's line"
    prefix = settings.get("target_prefix", "dissect")
    for i, part in enumerate(parts):
        if part.startswith("%{"):
            key = part[2:-1]
            event[f"{prefix}.{key}" if prefix else key] = match.group(f"k{i}")
    return event


def test_every_input_is_there_with_the_environment(host):
    cfg = config(host)
    inputs = inputs_by_id(cfg)
    assert set(inputs) == {"infer-forge-containers", "infer-forge-requests", "infer-forge-backup"}
    assert inputs["infer-forge-containers"]["type"] == "container"
    assert inputs["infer-forge-containers"]["paths"] == ["/var/lib/docker/containers/*/*.log"]
    assert inputs["infer-forge-backup"]["paths"] == ["/var/log/infer-backup.log"]
    assert cfg["fields"] == {"environment": "production"}


def test_a_structlog_line_from_the_runbook_is_decoded_into_fields(host):
    settings = processor(inputs_by_id(config(host))["infer-forge-containers"], "decode_json_fields")
    event = decode_json_fields({"message": STRUCTLOG_LINE}, settings)
    assert event["event"] == "order_created" and event["level"] == "info"
    assert event["request_id"] == "abc-123-def" and event["order_id"] == 123


def test_a_request_log_line_from_the_runbook_is_dissected(host):
    settings = processor(inputs_by_id(config(host))["infer-forge-requests"], "dissect")
    event = dissect({"message": REQUEST_LINE}, settings)
    assert event["http.request.method"] == "POST"
    assert event["url.path"] == "/api/v1/orders"
    assert event["http.response.status_code"] == "201"
    assert event["request_duration_ms"] == "45.3"


def test_output_matches_the_host(host):
    cfg = config(host)
    if host.backend.get_hostname() == "filebeat-logstash":
        assert cfg["output.logstash"] == {"hosts": ["logstash.infer.local:5044"]}
        assert "output.elasticsearch" not in cfg
    else:
        out = cfg["output.elasticsearch"]
        assert out["hosts"] == ["https://es.infer.local:9200"]
        assert out["username"] == "filebeat_writer" and out["password"] == "molecule-es-pw"
        assert out["ssl.enabled"] is True and out["ssl.verification_mode"] == "full"
        assert out["ssl.certificate_authorities"] == ["/etc/ssl/certs/infer-ca.pem"]
        assert "output.logstash" not in cfg
