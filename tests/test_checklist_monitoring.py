"""Checklist items 7 (Prometheus probes the app's /health) and 9 (alert rules, Alertmanager)
against a real Prometheus, blackbox exporter and Alertmanager on loopback, each configured
from its role's own template, passing and failing the way a broken deployment would."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request

import pytest
import yaml
from stub_app import StubApp

from forge.checklist import Checklist

from helpers import REPO, render
from servers import free_port, wait_for_port

# Debian's packages; scripts/bootstrap.sh installs them for `make test`.
TOOLS = ("prometheus", "prometheus-blackbox-exporter", "prometheus-alertmanager", "amtool")
RULES_DIR = os.path.join(REPO, "roles", "prometheus", "files")
HEALTH_JOB = "infer-forge-health"
# The one-host job above, plus the same job (renamed) for hosts whose probes fail, so one
# Prometheus serves every case.
FAILING_PROBES_JOB = HEALTH_JOB + "-failing-probes"
EXPORTER_DOWN_JOB = HEALTH_JOB + "-exporter-down"


def prometheus_config(blackbox_port, apps, alertmanagers):
    """The prometheus role's config for app hosts ``apps`` ({host: (monitoring address, health URL)}),
    reduced to its /health job (the other jobs scrape exporters these tests do not run)."""
    text = render("prometheus", "prometheus.yml.j2", groups={"app": list(apps)},
                  hostvars={host: {"monitoring_address": address, "health_app_url": url}
                            for host, (address, url) in apps.items()},
                  prometheus_config_dir=RULES_DIR, prometheus_blackbox_port=blackbox_port,
                  prometheus_alertmanager_targets=alertmanagers,
                  prometheus_scrape_interval="1s", prometheus_evaluation_interval="1s")
    config = yaml.safe_load(text)
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] == HEALTH_JOB]
    return config


class Daemon:
    """One of Debian's monitoring binaries on a loopback port, logging to its work directory."""

    def __init__(self, name, port, args, workdir):
        self.name, self.port, self.args, self.workdir = name, port, args, workdir
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def launch(self):
        with open(os.path.join(self.workdir, f"{self.name}.log"), "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        return self

    def wait(self):
        wait_for_port("127.0.0.1", self.port, self.name, seconds=30)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def api(base, path):
    with urllib.request.urlopen(base + path, timeout=5) as response:  # noqa: S310 - loopback test server
        return json.load(response)["data"]


def wait_until(what, condition, seconds=30):
    """Poll ``condition`` until it holds; a deadline, not a sleep, bounds the wait for scrapes."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {seconds} s")
        time.sleep(0.2)


class Stack:
    """The app's /health (a stand-in), blackbox exporter, Alertmanager, and two Prometheus servers:
    ``prometheus`` as the roles deploy it, ``bare`` deployed with no app hosts and no Alertmanager."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.app = StubApp()
        self.healthy, self.unhealthy, self.liar = (self.app.url(p) for p in ("/health", "/unhealthy", "/liar"))
        blackbox_port, alertmanager_port = free_port(), free_port()
        blackbox_config = self.write("blackbox.yml", render("exporters", "blackbox.yml.j2"))
        self.alertmanager_config = self.write("alertmanager.yml", render(
            "alertmanager", "alertmanager.yml.j2", alertmanager_webhook_url=f"http://127.0.0.1:{free_port()}/alerts"))

        main = prometheus_config(blackbox_port, {"app1": ("127.0.0.1", self.healthy)},
                                 [f"127.0.0.1:{alertmanager_port}"])
        failing = prometheus_config(blackbox_port, {"app1": ("127.0.0.1", self.healthy),
                                                    "app2": ("127.0.0.1", self.unhealthy),
                                                    "app3": ("127.0.0.1", self.liar)}, [])
        # 127.0.0.2 is loopback too, but nothing listens there: the exporter's port is closed.
        unreachable = prometheus_config(blackbox_port, {"app4": ("127.0.0.2", self.healthy)}, [])
        for config, name in ((failing, FAILING_PROBES_JOB), (unreachable, EXPORTER_DOWN_JOB)):
            [job] = config["scrape_configs"]
            main["scrape_configs"].append(dict(job, job_name=name))

        self.blackbox = Daemon("blackbox", blackbox_port, [
            "prometheus-blackbox-exporter", f"--config.file={blackbox_config}",
            f"--web.listen-address=127.0.0.1:{blackbox_port}"], workdir)
        self.alertmanager = Daemon("alertmanager", alertmanager_port, [
            "prometheus-alertmanager", f"--config.file={self.alertmanager_config}",
            f"--storage.path={workdir}/alertmanager", f"--web.listen-address=127.0.0.1:{alertmanager_port}",
            "--cluster.listen-address="], workdir)
        self.prometheus = self.prometheus_daemon("prometheus", main)
        self.bare = self.prometheus_daemon("bare", prometheus_config(blackbox_port, {}, []))
        self.daemons = [self.blackbox, self.alertmanager, self.prometheus, self.bare]

    def write(self, name, text):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def prometheus_daemon(self, name, config):
        port = free_port()
        path = self.write(f"{name}.yml", yaml.safe_dump(config))
        return Daemon(name, port, ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={self.workdir}/{name}",
                                   f"--web.listen-address=127.0.0.1:{port}"], self.workdir)

    def start(self):
        for daemon in self.daemons:
            daemon.launch()
        for daemon in self.daemons:
            daemon.wait()
        wait_until("Prometheus scraped every /health target and found its Alertmanager", self.scraped)
        return self

    def scraped(self):
        try:
            targets = api(self.prometheus.url, "/api/v1/targets")["activeTargets"]
            probes = api(self.prometheus.url, "/api/v1/query?query=probe_success")["result"]
            alertmanagers = api(self.prometheus.url, "/api/v1/alertmanagers")["activeAlertmanagers"]
        except OSError:  # still starting
            return False
        return len(targets) == 5 and all(t["health"] != "unknown" for t in targets) and len(probes) == 4 \
            and bool(alertmanagers)

    def close(self):
        for daemon in self.daemons:
            daemon.stop()
        self.app.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: scripts/bootstrap.sh installs the Debian packages "
                    "(prometheus, prometheus-alertmanager, prometheus-blackbox-exporter)")
    stack = Stack(str(tmp_path_factory.mktemp("monitoring")))
    try:
        yield stack.start()
    finally:
        stack.close()


def check(number, **settings):
    return Checklist(settings).run(number)


def alerting_rules():
    with open(os.path.join(RULES_DIR, "infer_forge_alerts.yml")) as handle:
        groups = yaml.safe_load(handle)["groups"]
    return sum(len(group["rules"]) for group in groups), len(groups)


def test_item_7_passes_when_prometheus_probes_the_health_endpoint_through_the_blackbox_exporter(stack):
    result = check(7, prometheus_url=stack.prometheus.url)
    assert result["status"] == "PASS", result
    assert result["evidence"] == [f"{stack.healthy} (app1): scrape up, probe_success 1"]


def test_item_7_fails_when_any_app_hosts_health_answers_503_or_says_unhealthy(stack):
    result = check(7, prometheus_url=stack.prometheus.url, health_job=FAILING_PROBES_JOB)
    assert result["status"] == "FAIL"
    # The healthy host does not hide the others; each line names the probed URL and its host.
    assert sorted(result["evidence"]) == [f"{stack.healthy} (app1): scrape up, probe_success 1",
                                          f"{stack.liar} (app3): scrape up, probe_success 0",
                                          f"{stack.unhealthy} (app2): scrape up, probe_success 0"]


def test_item_7_fails_when_prometheus_cannot_scrape_the_blackbox_exporter(stack):
    result = check(7, prometheus_url=stack.prometheus.url, health_job=EXPORTER_DOWN_JOB)
    assert result["status"] == "FAIL"
    [line] = result["evidence"]
    assert line.startswith(f"{stack.healthy} (app4): scrape down, probe_success None "), line
    assert line.endswith("connect: connection refused"), line


def test_item_7_fails_when_prometheus_probes_no_health_endpoint_or_does_not_answer(stack):
    bare = check(7, prometheus_url=stack.bare.url)
    assert bare["status"] == "FAIL"
    assert bare["evidence"] == [f"Prometheus at {stack.bare.url} has no target probing /health (job {HEALTH_JOB})"]
    gone = f"http://127.0.0.1:{free_port()}"
    silent = check(7, prometheus_url=gone)
    assert silent["status"] == "FAIL"
    assert silent["evidence"] == [f"cannot ask {gone}/api/v1/targets: [Errno 111] Connection refused"]


def alerting(stack, **settings):
    return check(9, **dict(dict(prometheus_url=stack.prometheus.url, alertmanager_url=stack.alertmanager.url,
                                alertmanager_config=stack.alertmanager_config), **settings))


def test_item_9_passes_with_the_roles_rules_and_config_and_a_running_alertmanager(stack):
    rules, groups = alerting_rules()
    result = alerting(stack)
    assert result["status"] == "PASS", result
    assert result["evidence"] == [
        f"Prometheus: {rules} alerting rules loaded in {groups} group(s), none firing",
        f"{stack.alertmanager_config}: valid (amtool check-config), 1 inhibit rules, 1 receivers",
        f"Alertmanager at {stack.alertmanager.url}: up, cluster disabled",
    ]


def test_item_9_fails_when_the_alertmanager_config_routes_to_a_receiver_that_does_not_exist(stack, tmp_path):
    with open(stack.alertmanager_config) as handle:
        config = yaml.safe_load(handle)
    config["route"]["receiver"] = "pager"
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(yaml.safe_dump(config))
    # The running Alertmanager still has the good config: only amtool sees the broken file.
    result = alerting(stack, alertmanager_config=str(broken))
    assert result["status"] == "FAIL"
    # The evidence says why, not only that amtool failed.
    assert result["evidence"][1] == f"{broken}: amtool check-config failed: undefined receiver \"pager\" used in route"
    assert result["evidence"][2] == f"Alertmanager at {stack.alertmanager.url}: up, cluster disabled"


def test_item_9_fails_when_alertmanager_is_stopped(stack):
    stack.alertmanager.stop()
    try:
        result = alerting(stack)
    finally:
        stack.alertmanager.launch().wait()
    assert result["status"] == "FAIL"
    assert result["evidence"] == [f"cannot ask {stack.alertmanager.url}/api/v2/status: [Errno 111] Connection refused"]


def test_item_9_fails_when_prometheus_sends_alerts_to_no_alertmanager(stack):
    rules, groups = alerting_rules()
    result = alerting(stack, prometheus_url=stack.bare.url)
    assert result["status"] == "FAIL"
    # Rules, config and Alertmanager are fine: the missing alerting target alone fails the item.
    assert result["evidence"][0] == f"Prometheus: {rules} alerting rules loaded in {groups} group(s), none firing"
    assert result["evidence"][-1] == "Prometheus sends alerts to no Alertmanager"
    assert len(result["evidence"]) == 4


@pytest.mark.parametrize("labels, receivers", [
    (["severity=critical"], "pager,team"),
    (["severity=warning"], "team"),
], ids=["critical-pages-and-reaches-the-team", "warning-reaches-the-team"])
def test_alertmanager_routes_critical_alerts_to_the_pager_and_every_alert_to_the_team(tmp_path, labels, receivers):
    """amtool walks the role's rendered routing tree as Alertmanager would."""
    config = tmp_path / "alertmanager.yml"
    config.write_text(render("alertmanager", "alertmanager.yml.j2", alertmanager_webhook_url="http://127.0.0.1:9/alerts",
                             alertmanager_pagerduty_routing_key="routing-key"))
    out = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={config}", *labels],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == receivers


def test_item_9_never_copies_a_webhook_url_from_a_broken_config_into_the_report(stack, tmp_path):
    """A webhook URL is a secret; a vault value with a trailing newline makes amtool quote it."""
    with open(stack.alertmanager_config) as handle:
        config = yaml.safe_load(handle)
    config["receivers"][0]["webhook_configs"] = [{"url": "https://hooks.example.com/T0SECRET/TOKENSECRET\n"}]
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(yaml.safe_dump(config))
    result = alerting(stack, alertmanager_config=str(broken))
    assert result["status"] == "FAIL"
    assert result["evidence"][1] == (f"{broken}: amtool check-config failed: (URL hidden) net/url: invalid control "
                                     "character in URL"), result
    assert "SECRET" not in json.dumps(result)
