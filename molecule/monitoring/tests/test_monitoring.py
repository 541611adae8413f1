"""The live monitoring stack, asked through Prometheus's and Alertmanager's HTTP APIs."""

import json
import os
import time

import pytest

PROMETHEUS = "http://127.0.0.1:9090"
JOBS = {"prometheus", "node", "postgres", "redis", "blackbox", "infer-forge-health"}


def api(host, path, **params):
    query = " ".join(f"--data-urlencode {json.dumps(f'{k}={v}')}" for k, v in params.items())
    out = host.check_output(f"curl -sf -G {query} {PROMETHEUS}{path}")
    body = json.loads(out)
    assert body["status"] == "success", body
    return body["data"]


def query(host, expr):
    return api(host, "/api/v1/query", query=expr)["result"]


@pytest.fixture(scope="module")
def targets(host):
    """Wait (bounded) until every target has been scraped successfully."""
    deadline = time.monotonic() + 90
    while True:
        active = api(host, "/api/v1/targets")["activeTargets"]
        if {t["labels"]["job"] for t in active} >= JOBS and all(t["health"] == "up" for t in active):
            return active
        if time.monotonic() > deadline:
            down = [(t["labels"]["job"], t["scrapeUrl"], t["lastError"]) for t in active if t["health"] != "up"]
            raise AssertionError(f"targets not up after 90 s: {down}")
        time.sleep(3)


def test_config_files_pass_promtool_and_amtool(host):
    assert host.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    assert host.run("promtool check rules /etc/prometheus/infer_forge_alerts.yml").rc == 0
    assert host.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0


def test_secrets_are_in_private_files(host):
    password = host.file("/etc/prometheus/postgres_exporter.pass")
    assert password.mode == 0o600 and password.user == "prometheus"
    assert host.file("/etc/default/prometheus-redis-exporter").mode == 0o600
    assert host.file("/etc/prometheus/alertmanager.yml").mode == 0o640
    assert "molecule-monitor-pw" not in host.file("/etc/default/prometheus-postgres-exporter").content_string


def test_every_target_is_up(targets):
    assert {t["labels"]["job"] for t in targets} == JOBS
    assert all(t["health"] == "up" for t in targets)


def test_the_health_probe_succeeds(host, targets):
    [probe] = query(host, 'probe_success{job="infer-forge-health"}')
    assert probe["value"][1] == "1"
    assert probe["metric"]["instance"] == "http://localhost:8000/health"


def test_the_exporter_sees_the_database_with_pg_monitor_only(host, targets):
    assert query(host, "pg_up")[0]["value"][1] == "1"
    superuser = host.check_output(
        "su postgres -c \"psql -tAc \\\"SELECT rolsuper FROM pg_roles WHERE rolname = 'infer_monitor'\\\"\"")
    assert superuser == "f"


def test_backup_and_drill_metrics_come_through_the_textfile_collector(host, targets):
    deadline = time.monotonic() + 30
    while not query(host, "infer_forge_restore_drill_last_run_success") and time.monotonic() < deadline:
        time.sleep(2)
    [backup] = query(host, "infer_forge_backup_last_success_timestamp_seconds")
    assert backup["metric"]["database"] == "infer_forge" and backup["metric"]["job"] == "node"
    assert abs(float(backup["value"][1]) - time.time()) < 3600
    assert query(host, "infer_forge_backup_last_run_success")[0]["value"][1] == "1"
    assert query(host, "infer_forge_restore_drill_last_run_success")[0]["value"][1] == "1"


def test_the_alert_rules_are_loaded_and_quiet(host, targets):
    groups = api(host, "/api/v1/rules")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    import yaml

    rules_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "prometheus",
                              "files", "infer_forge_alerts.yml")
    with open(rules_file) as handle:
        ours = {rule["alert"] for group in yaml.safe_load(handle)["groups"] for rule in group["rules"]}
    assert set(rules) == ours
    firing = [name for name, rule in rules.items() if rule["state"] == "firing"]
    assert firing == []


def test_every_dashboard_expression_parses_and_returns_data(host, targets):
    dashboard = json.loads(host.file("/var/lib/grafana/dashboards/infer-forge/infer-forge-overview.json")
                           .content_string)
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(expressions) == 23
    # The NAS's receipt needs a NAS: the e2e scenario checks that panel against its live Prometheus;
    # the point-in-time recovery row needs a Barman host: molecule/pitr checks it against its own.
    here = [expr for expr in expressions if "offsite_far_" not in expr and "infer_forge_pitr_" not in expr]
    assert len(here) == 16
    # The side effect's off-site copy writes its metrics last: give the textfile collector a
    # few scrapes to bring them in before calling an expression empty.
    deadline = time.monotonic() + 60
    empty = [expr for expr in here if not query(host, expr)]
    while empty and time.monotonic() < deadline:
        time.sleep(3)
        empty = [expr for expr in empty if not query(host, expr)]
    assert empty == [], f"no data for: {empty}"


def test_grafana_provisioning_points_at_the_dashboards_and_prometheus(host):
    import yaml

    providers = yaml.safe_load(host.file("/etc/grafana/provisioning/dashboards/infer-forge.yml").content_string)
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/infer-forge"
    sources = yaml.safe_load(host.file("/etc/grafana/provisioning/datasources/infer-forge.yml").content_string)
    assert sources["datasources"][0]["url"] == "http://localhost:9090"


def test_alertmanager_routes_critical_alerts_to_pagerduty(host):
    status = json.loads(host.check_output("curl -sf http://127.0.0.1:9093/api/v2/status"))
    config = status["config"]["original"]
    assert "routing_key: <secret>" in config
    # The team's webhook is configured; Alertmanager 0.28 (Debian 13) masks webhook URLs in
    # its status as it masks the routing key, 0.25 (Debian 12) shows them.
    assert "http://127.0.0.1:9999/alerts" in host.file("/etc/prometheus/alertmanager.yml").content_string
    assert "http://127.0.0.1:9999/alerts" in config or "url: <secret>" in config
    def receiver(labels):
        routed = host.run("amtool config routes test --config.file=/etc/prometheus/alertmanager.yml %s", labels)
        assert routed.rc == 0, routed.stderr
        return routed.stdout.strip()

    # The team is told about critical alerts too, not only the pager.
    assert receiver("severity=critical") == "pager,team"
    assert receiver("severity=warning") == "team"
    import yaml

    route = yaml.safe_load(host.file("/etc/prometheus/alertmanager.yml").content_string)["route"]
    assert route["receiver"] == "team" and route["routes"][0]["continue"] is True


# The tests below stop Redis on purpose, as an outage would, and start it again afterwards;
# they come last because every test above needs the stack up and quiet.
WEBHOOK_LOG = "/var/tmp/alert-webhook.jsonl"


def notifications(host):
    """What Alertmanager posted to the team's webhook (prepare.yml's receiver), oldest first."""
    log = host.file(WEBHOOK_LOG)
    return [json.loads(line) for line in log.content_string.splitlines()] if log.exists else []


def wait_for(what, condition, seconds):
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds} s")
        time.sleep(2)
    return result


@pytest.fixture(scope="module")
def redis_stopped(host, targets):
    """Redis down: the app's /health answers 503 and redis_exporter reports redis_up 0.
    Yields how many notifications the webhook had before; afterwards Redis runs again
    and the stack is quiet, so verify can run again."""
    before = len(notifications(host))
    host.check_output("systemctl stop redis-server")
    yield before
    host.check_output("systemctl start redis-server")
    wait_for("probe_success back to 1 and no alert firing",
             lambda: query(host, 'probe_success{job="infer-forge-health"} == 1')
             and not query(host, 'ALERTS{alertstate="firing"}'), 60)


def test_a_health_endpoint_answering_503_fails_the_blackbox_probe(host, redis_stopped):
    status = host.check_output("curl -s -o /dev/null -w '%{http_code}' http://localhost:8000/health")
    assert status == "503"
    [probe] = wait_for("probe_success 0", lambda: query(host, 'probe_success{job="infer-forge-health"} == 0'), 30)
    assert probe["metric"]["instance"] == "http://localhost:8000/health"


def test_a_firing_alert_reaches_the_team_webhook(host, redis_stopped):
    def redis_down():
        return [(note, alert) for note in notifications(host)[redis_stopped:]
                for alert in note["body"]["alerts"]
                if alert["labels"]["alertname"] == "InferForgeRedisDown" and alert["status"] == "firing"]

    # for: 1m, then one evaluation (5 s) and group_wait (1 s).
    [(note, alert), *_] = wait_for("InferForgeRedisDown notified to the webhook", redis_down, 120)
    assert note["path"] == "/alerts"
    # Critical alerts page and, through continue: true, still reach the team.
    assert note["body"]["receiver"] == "team"
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["environment"] == "lab"
    assert alert["annotations"]["summary"] == "Redis on 127.0.0.1:9121 is down"


def test_root_never_writes_textfiles_where_another_account_can(host):
    """Debian's root-run collectors write into node_exporter's own directory: no other account may
    plant a link there. Each of our writers has a directory of its own under a root-only parent,
    and node_exporter reads them all through one glob. prepare.yml left the old layout behind
    (a world-writable directory with an ACL and a stale backup textfile): the deploy undoes it."""
    debian = host.file("/var/lib/prometheus/node-exporter")
    assert (debian.user, debian.group, debian.mode) == ("root", "root", 0o755)
    assert "user:nobody" not in host.check_output("getfacl -p /var/lib/prometheus/node-exporter")
    assert not host.file("/var/lib/prometheus/node-exporter/infer_forge_backup_infer_forge.prom").exists
    parent = host.file("/var/lib/infer-forge-metrics")
    assert (parent.user, parent.group, parent.mode) == ("root", "root", 0o755)
    mine = host.file("/var/lib/infer-forge-metrics/backup")
    assert (mine.user, mine.mode) == ("infer", 0o755)
    for target in ("/var/lib/prometheus/node-exporter/apt.prom", "/var/lib/infer-forge-metrics/planted.prom"):
        planted = host.run(f"su infer -s /bin/sh -c 'ln -s /etc/shadow {target}'")
        assert planted.rc != 0 and "Permission denied" in planted.stderr, target
    assert host.file("/var/lib/infer-forge-metrics/backup/infer_forge_backup_infer_forge.prom").exists
    assert "--collector.textfile.directory=/var/lib/infer-forge-metrics/*" in \
        host.file("/etc/default/prometheus-node-exporter").content_string


def test_the_stale_textfile_of_the_old_layout_is_not_scraped_twice(host, targets):
    """The old directory is read through the new glob too: a file left there would give node_exporter
    the same series twice, and its textfile collector fails the whole scrape on a duplicate."""
    assert query(host, "node_textfile_scrape_error")[0]["value"][1] == "0"
    assert len(query(host, "infer_forge_backup_last_run_success")) == 1
