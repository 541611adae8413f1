"""Rendered logrotate files are valid, and a forced rotation does what they say."""

import pytest


def test_every_file_is_valid(host):
    for name in ("app", "worker"):
        result = host.run("logrotate -d /etc/logrotate.d/infer-forge-%s", name)
        assert result.rc == 0, result.stderr
        assert "error" not in result.stderr.lower()


def test_the_rendered_settings(host):
    app = host.file("/etc/logrotate.d/infer-forge-app").content_string
    assert "/var/log/infer-forge/*.log {" in app
    for directive in ("daily", "rotate 7", "maxsize 50M", "compress", "delaycompress", "copytruncate"):
        assert f"    {directive}\n" in app
    worker = host.file("/etc/logrotate.d/infer-forge-worker").content_string
    assert "    create 0640 root adm\n" in worker and "copytruncate" not in worker
    assert "touch /var/tmp/worker-reopened" in worker


@pytest.fixture(scope="module")
def rotated(host):
    inode_before = host.check_output("stat -c %i /var/log/infer-forge/app.log")
    for name in ("app", "worker"):
        result = host.run("logrotate -f /etc/logrotate.d/infer-forge-%s", name)
        assert result.rc == 0, result.stderr
    return inode_before


def test_copytruncate_keeps_the_open_file_and_empties_it(host, rotated):
    app_log = host.file("/var/log/infer-forge/app.log")
    assert app_log.size == 0
    assert host.check_output("stat -c %i /var/log/infer-forge/app.log") == rotated
    old = host.check_output("ls /var/log/infer-forge/ | grep '^app.log-'").split()
    assert len(old) == 1
    assert "status=201" in host.file(f"/var/log/infer-forge/{old[0]}").content_string


def test_create_and_postrotate_for_a_log_that_is_reopened(host, rotated):
    new = host.file("/var/log/infer-forge/worker/celery.log")
    assert new.exists and new.size == 0 and new.mode == 0o640 and new.group == "adm"
    assert host.file("/var/tmp/worker-reopened").exists
