"""playbooks/health.yml for real: healthy, then unhealthy with Redis stopped."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
from controller import playbook  # noqa: E402


def health_playbook():
    return playbook("health.yml", timeout=300)


def test_python_libraries_are_installed(host):
    for package in ("python3-psycopg", "python3-redis"):
        assert host.package(package).is_installed


def test_healthy_host_prints_the_table_and_exits_zero(host):
    result = health_playbook()
    assert result.returncode == 0, result.stdout[-3000:]
    table = result.stdout
    for service in ("database", "redis", "app"):
        assert f"health-db  {service.ljust(8)}  healthy" in table, table[-2000:]
    major = host.check_output("ls /etc/postgresql")  # Debian's one cluster: 15 on Debian 12, 17 on 13
    assert f"{major}." in table  # server version in the detail column


@pytest.fixture
def redis_stopped(host):
    host.run("systemctl stop redis-server")
    yield
    host.run("systemctl start redis-server")


def test_with_redis_stopped_the_playbook_fails_naming_the_cause(host, redis_stopped):
    result = health_playbook()
    assert result.returncode != 0
    assert "health-db  redis     unhealthy" in result.stdout
    assert "redis: connection refused at localhost:6379" in result.stdout
    assert "app: http://localhost:8000/health answered HTTP 503 (redis unhealthy)" in result.stdout
    assert "health-db  database  healthy" in result.stdout
