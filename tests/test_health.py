"""forge_health against real PostgreSQL and Redis and a stand-in app, through ansible-playbook."""

import pytest
from stub_app import BlackHole, StubApp

from servers import free_port


@pytest.fixture(scope="module")
def app():
    stub = StubApp()
    yield stub
    stub.close()


@pytest.fixture
def black_hole():
    hole = BlackHole()
    yield hole
    hole.close()


def health_args(pg, redis_server, app, **extra):
    args = {
        "database_host": pg.host, "database_port": pg.port, "database_user": pg.app_user,
        "database_password": pg.app_password, "database_name": "postgres",
        "redis_host": redis_server.host, "redis_port": redis_server.port, "redis_password": redis_server.password,
        "app_url": app.url(), "timeout": 2.0,
    }
    args.update(extra)
    return args


def by_service(result):
    return {s["service"]: s for s in result["services"]}


def test_all_healthy_in_the_runbooks_shape(pg, redis_server, app, run_module):
    result = run_module("forge_health", health_args(pg, redis_server, app, redis_queues=["celery"]))
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is False
    assert result["status"] == "healthy"
    assert result["version"] == {"app": "INFER FORGE", "version": "0.1.0"}
    services = by_service(result)
    assert set(services) == {"database", "redis", "app"}
    for entry in services.values():
        assert entry["healthy"] is True and entry["latency_ms"] >= 0 and "error" not in entry
    db = services["database"]
    assert db["version"].startswith("15.") and db["replica"] is False
    assert 1 <= db["connections"] <= db["max_connections"] == 50
    assert db["database_size_bytes"] > 0
    redis = services["redis"]
    assert redis["role"] == "master" and redis["queues"] == {"celery": 0}
    assert services["app"]["services"][0] == {"healthy": True, "service": "database", "latency_ms": 2.3}


def test_check_mode_runs_the_checks(pg, redis_server, app, run_module):
    result = run_module("forge_health", health_args(pg, redis_server, app), check=True)
    assert result["status"] == "healthy" and len(result["services"]) == 3


def test_celery_backlog_turns_redis_degraded(pg, redis_server, app, run_module):
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port, password=redis_server.password)
    client.delete("celery")
    client.rpush("celery", *[f"task-{i}" for i in range(25)])
    try:
        result = run_module("forge_health", health_args(
            pg, redis_server, app, checks=["redis"], redis_queues=["celery"],
            thresholds={"redis": {"queue_length": 10}}))
        assert result["status"] == "degraded"
        redis_entry = by_service(result)["redis"]
        assert redis_entry["healthy"] is True and redis_entry["queues"] == {"celery": 25}
        assert redis_entry["reasons"] == ["queue 'celery' has 25 tasks waiting (limit 10)"]
        failed = run_module("forge_health", health_args(
            pg, redis_server, app, checks=["redis"], redis_queues=["celery"],
            thresholds={"redis": {"queue_length": 10}}, fail_on_degraded=True))
        assert failed["failed"] is True and "25 tasks waiting" in failed["msg"]
    finally:
        client.delete("celery")


def test_connection_usage_threshold(pg, redis_server, app, run_module):
    result = run_module("forge_health", health_args(pg, redis_server, app, checks=["database"],
                                                    thresholds={"database": {"connection_usage": 0.01}}))
    assert result["status"] == "degraded"
    assert "of max_connections" in by_service(result)["database"]["reasons"][0]


@pytest.mark.parametrize("path, message", [
    ("/unhealthy", r"answered HTTP 503 \(redis unhealthy\)"),
    ("/broken", r"answered HTTP 500"),
    ("/invalid", r"returned invalid JSON"),
    ("/liar", r"reports status 'unhealthy'"),
])
def test_unhealthy_app_answers(pg, redis_server, app, run_module, path, message):
    import re

    result = run_module("forge_health", health_args(pg, redis_server, app, checks=["app"], app_url=app.url(path)))
    assert result["failed"] is True
    assert re.search(message, result["msg"]), result["msg"]
    assert result["msg"].startswith("app: ")
    assert result["status"] == "unhealthy"


def test_a_slow_app_times_out_within_the_bound(pg, redis_server, app, run_module):
    result = run_module("forge_health", health_args(pg, redis_server, app, checks=["app"], app_url=app.url("/slow"),
                                                    timeout=1.0, fail_on_unhealthy=False))
    entry = by_service(result)["app"]
    assert entry["error"] == f"app: timeout after 1.0 s waiting for {app.url('/slow')}"
    assert entry["latency_ms"] < 1100


def test_an_app_that_trickles_its_answer_times_out_within_the_bound(pg, redis_server, app, run_module):
    """Each read gets a byte in time, so no socket timeout ever fires: the run's own deadline
    must end the check, at the timeout, not when the app finishes its answer seconds later."""
    result = run_module("forge_health", health_args(pg, redis_server, app, checks=["app", "database"],
                                                    app_url=app.url("/trickle"), timeout=1.0,
                                                    fail_on_unhealthy=False))
    services = by_service(result)
    assert services["app"]["error"] == f"app: timeout after 1.0 s waiting for {app.url('/trickle')}"
    assert services["app"]["latency_ms"] < 1100
    assert services["database"]["healthy"] is True


def test_every_bad_input_is_a_clear_message_as_data(pg, redis_server, app, run_module, black_hole):
    closed = free_port()
    result = run_module("forge_health", {
        "database_host": "127.0.0.1", "database_port": black_hole.port, "database_user": "infer",
        "database_password": "x", "redis_host": "127.0.0.1", "redis_port": closed,
        "app_url": f"http://127.0.0.1:{closed}/health", "timeout": 2.0, "fail_on_unhealthy": False})
    services = by_service(result)
    assert result["status"] == "unhealthy"
    assert services["database"]["error"] == f"database: timeout after 2.0 s connecting to 127.0.0.1:{black_hole.port}"
    assert services["redis"]["error"] == f"redis: connection refused at 127.0.0.1:{closed}"
    assert services["app"]["error"] == f"app: connection refused at http://127.0.0.1:{closed}/health"


def test_wrong_passwords_never_show(pg, redis_server, app, run_module):
    result = run_module("forge_health", health_args(pg, redis_server, app, database_password="Db-Wr0ng-pw",
                                                    redis_password="Rd-Wr0ng-pw"))
    assert result["failed"] is True
    services = by_service(result)
    assert services["database"]["error"] == (f"database: password authentication failed for user 'infer' "
                                             f"at {pg.host}:{pg.port}")
    assert services["redis"]["error"] == "redis: AUTH failed"
    assert "database: password authentication failed" in result["msg"] and "redis: AUTH failed" in result["msg"]
    for secret in ("Db-Wr0ng-pw", "Rd-Wr0ng-pw", pg.app_password, redis_server.password):
        assert secret not in result["_raw"]


def test_passwords_in_urls_never_show(pg, redis_server, app, run_module):
    db_url = f"postgresql://{pg.app_user}:Url-Secret-1@{pg.host}:{pg.port}/postgres"
    redis_url = f"redis://:Url-Secret-2@{redis_server.host}:{redis_server.port}/0"
    app_url = f"http://admin:Url-Secret-3@127.0.0.1:{app.port}/unhealthy"
    result = run_module("forge_health", {"database_url": db_url, "redis_url": redis_url, "app_url": app_url,
                                         "timeout": 2.0, "fail_on_unhealthy": False})
    services = by_service(result)
    assert services["database"]["error"].startswith("database: password authentication failed")
    assert services["redis"]["error"] == "redis: AUTH failed"
    assert services["app"]["target"] == f"http://***@127.0.0.1:{app.port}/unhealthy"
    for secret in ("Url-Secret-1", "Url-Secret-2", "Url-Secret-3"):
        assert secret not in result["_raw"]


def test_redis_with_requirepass_and_no_password(pg, redis_server, app, run_module):
    result = run_module("forge_health", health_args(pg, redis_server, app, checks=["redis"], redis_password=None,
                                                    fail_on_unhealthy=False))
    assert by_service(result)["redis"]["error"] == "redis: the server requires a password and none was given"


def test_tls_required_but_not_offered(pg, redis_server, app, run_module):
    result = run_module("forge_health", health_args(pg, redis_server, app, checks=["database", "redis"],
                                                    database_sslmode="require", redis_tls=True,
                                                    fail_on_unhealthy=False))
    services = by_service(result)
    assert services["database"]["error"] == f"database: TLS required but {pg.host}:{pg.port} does not offer it"
    assert services["redis"]["error"].startswith("redis: ")
    assert services["redis"]["healthy"] is False


@pytest.mark.parametrize("thresholds, message", [
    ({"database": {"latency_ms": -5}}, "threshold database.latency_ms must be a number > 0, got -5"),
    ({"redis": {"memory_usage": 1.5}}, "threshold redis.memory_usage is a fraction of the limit (0-1], got 1.5"),
    ({"cache": {"latency_ms": 5}}, "unknown service 'cache' in thresholds; use database, redis, app"),
    ({"app": {"p99": 5}}, "unknown threshold app.p99; use latency_ms"),
], ids=["negative-latency", "memory-over-one", "unknown-service", "unknown-threshold"])
def test_invalid_thresholds(pg, redis_server, app, run_module, thresholds, message):
    result = run_module("forge_health", health_args(pg, redis_server, app, thresholds=thresholds))
    assert result["failed"] is True and result["msg"] == message


def test_everything_down_is_checked_at_once_each_within_its_timeout(black_hole):
    """Three hanging services: each check gives up at the timeout, and they wait side by side
    (every check starts before any gives up), so the report takes one timeout, not three.
    Recorded as the order of events, not as a wall-clock margin that a busy machine could break."""
    from forge import health
    from forge.pgconn import PgSettings

    hole = f"127.0.0.1:{black_hole.port}"
    timeout = 2.0
    events = []

    def recorded(name, check):
        def run():
            events.append(("start", name))
            try:
                return check()
            finally:
                events.append(("end", name))
        return run

    checks = [
        ("database", hole, recorded("database", lambda: health.check_database(
            PgSettings("127.0.0.1", black_hole.port, "infer", "x"), timeout))),
        ("redis", hole, recorded("redis", lambda: health.check_redis(
            health.RedisSettings("127.0.0.1", black_hole.port), timeout))),
        ("app", f"http://{hole}/health", recorded("app", lambda: health.check_app(f"http://{hole}/health", timeout))),
    ]
    report = health.run_checks(checks, timeout)
    assert report["status"] == "unhealthy"
    assert [s["error"] for s in report["services"]] == [
        f"database: timeout after 2.0 s connecting to {hole}",
        f"redis: timeout after 2.0 s connecting to {hole}",
        f"app: timeout after 2.0 s waiting for http://{hole}/health",
    ]
    kinds = [kind for kind, _ in events]
    assert sorted(name for kind, name in events if kind == "start") == ["app", "database", "redis"]
    assert kinds[:3] == ["start"] * 3, f"a check gave up before the others started: {events}"


def test_credentials_in_the_app_url_go_in_a_header_never_to_the_resolver(app, monkeypatch):
    """A resolver stub records every name looked up: the userinfo part must never be one."""
    import json
    import socket
    import urllib.parse

    from forge import health

    looked_up = []
    real = socket.getaddrinfo

    def recording(host, *args, **kwargs):
        looked_up.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    user, password = StubApp.PRIVATE_CREDENTIALS.split(":", 1)
    url = f"http://{user}:{urllib.parse.quote(password, safe='')}@127.0.0.1:{app.port}/private"
    entry = health.check_app(url, timeout=2)
    assert entry["healthy"] is True, entry
    assert looked_up and set(looked_up) == {"127.0.0.1"}
    assert password not in json.dumps(entry) and entry["target"] == f"http://***@127.0.0.1:{app.port}/private"
    wrong = health.check_app(f"http://{user}:nope@127.0.0.1:{app.port}/private", timeout=2)
    assert wrong["healthy"] is False
    assert wrong["error"] == f"app: http://***@127.0.0.1:{app.port}/private answered HTTP 401"
