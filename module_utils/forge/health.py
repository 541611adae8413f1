"""Health checks of the INFER FORGE services: PostgreSQL, Redis and the app's /health.

Each check runs in its own thread with its own deadline, so the whole run
returns within the largest timeout even when every service hangs, and the
answer has the runbook's shape: ``status``, ``services`` (``healthy``,
``service``, ``latency_ms``, ``error``), ``version``.
"""

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from . import __version__
from .errors import ForgeError

DEFAULT_TIMEOUT = 3.0
THRESHOLD_KEYS = {
    "database": ("latency_ms", "connection_usage", "replay_lag_seconds"),
    "redis": ("latency_ms", "memory_usage", "queue_length", "connected_clients"),
    "app": ("latency_ms",),
}


def _ms(seconds):
    return round(seconds * 1000, 2)


def validate_thresholds(thresholds):
    """thresholds: {"database": {"latency_ms": 50, ...}, ...}; every value a number > 0."""
    for service, limits in (thresholds or {}).items():
        if service not in THRESHOLD_KEYS:
            raise ForgeError(f"unknown service {service!r} in thresholds; use {', '.join(THRESHOLD_KEYS)}")
        if not isinstance(limits, dict):
            raise ForgeError(f"thresholds.{service} must be a mapping")
        for key, value in limits.items():
            if key not in THRESHOLD_KEYS[service]:
                raise ForgeError(f"unknown threshold {service}.{key}; use {', '.join(THRESHOLD_KEYS[service])}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ForgeError(f"threshold {service}.{key} must be a number > 0, got {value!r}")
            if key.endswith("_usage") and value > 1:
                raise ForgeError(f"threshold {service}.{key} is a fraction of the limit (0-1], got {value!r}")


def _degrade(entry, limits, key, value, text):
    limit = (limits or {}).get(key)
    if limit is not None and value is not None and value > limit:
        entry["status"] = "degraded"
        entry.setdefault("reasons", []).append(text.format(value=value, limit=limit))


# -- PostgreSQL -----------------------------------------------------------------

def check_database(settings, timeout=DEFAULT_TIMEOUT, limits=None):
    import psycopg

    entry = {"service": "database", "target": settings.target()}
    started = time.perf_counter()
    try:
        # run_checks' deadline holds the exact bound; libpq's own timeout is whole seconds.
        conn = settings.connect(database=settings.database or "postgres", timeout=timeout,
                                options=f"-c statement_timeout={int(timeout * 1000)}",
                                application_name="infer-forge-health")
    except ForgeError as exc:
        return _fail(entry, exc.message, started)
    try:
        entry["connect_ms"] = _ms(time.perf_counter() - started)
        query_started = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        entry["latency_ms"] = _ms(time.perf_counter() - query_started)
        row = conn.execute(
            "SELECT current_setting('server_version'), "
            "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'), "
            "current_setting('max_connections')::int, pg_is_in_recovery(), "
            "EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), "
            "pg_database_size(current_database())").fetchone()
    except psycopg.Error as exc:
        conn.close()
        return _fail(entry, f"database: {' '.join(str(exc).split())}", started)
    conn.close()
    version, connections, max_connections, replica, lag, size = row
    entry.update(healthy=True, status="healthy", version=version, connections=connections,
                 max_connections=max_connections, connection_usage=round(connections / max_connections, 3),
                 replica=bool(replica), replay_lag_seconds=float(lag) if replica and lag is not None else None,
                 database_size_bytes=size)
    _degrade(entry, limits, "latency_ms", entry["latency_ms"], "latency {value} ms over {limit} ms")
    _degrade(entry, limits, "connection_usage", entry["connection_usage"],
             "connections at {value:.0%} of max_connections (limit {limit:.0%})")
    _degrade(entry, limits, "replay_lag_seconds", entry["replay_lag_seconds"],
             "replica replay lag {value:.1f} s over {limit} s")
    return entry


# -- Redis ------------------------------------------------------------------------

class RedisSettings:
    def __init__(self, host="localhost", port=6379, password=None, username=None, db=0, tls=False,
                 tls_ca_file=None, tls_verify=True, queues=None):
        self.host = host
        self.port = int(port)
        self.password = password
        self.username = username
        self.db = int(db)
        self.tls = tls
        self.tls_ca_file = tls_ca_file
        self.tls_verify = tls_verify
        self.queues = list(queues or [])

    def target(self):
        return f"{self.host}:{self.port}"


def check_redis(settings, timeout=DEFAULT_TIMEOUT, limits=None):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    entry = {"service": "redis", "target": settings.target()}
    started = time.perf_counter()
    # Current redis-py retries three times by default; one try keeps the timeout a bound.
    kwargs = {"host": settings.host, "port": settings.port, "db": settings.db, "socket_timeout": timeout,
              "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
    if settings.password:
        kwargs["password"] = settings.password
    if settings.username:
        kwargs["username"] = settings.username
    if settings.tls:
        kwargs["ssl"] = True
        kwargs["ssl_cert_reqs"] = "required" if settings.tls_verify else "none"
        if settings.tls_ca_file:
            kwargs["ssl_ca_certs"] = settings.tls_ca_file
    client = redis.Redis(**kwargs)
    try:
        ping_started = time.perf_counter()
        client.ping()
        entry["latency_ms"] = _ms(time.perf_counter() - ping_started)
        info = client.info()
        queues = {name: client.llen(name) for name in settings.queues}
    except redis.exceptions.AuthenticationError as exc:
        text = str(exc).lower()
        if "authentication required" in text or "noauth" in text:
            return _fail(entry, "redis: the server requires a password and none was given", started)
        return _fail(entry, "redis: AUTH failed", started)
    except redis.exceptions.ResponseError as exc:
        text = str(exc).lower()
        if "noauth" in text:
            return _fail(entry, "redis: the server requires a password and none was given", started)
        if "wrongpass" in text or "invalid password" in text:  # redis-py 4.x raises these as ResponseError
            return _fail(entry, "redis: AUTH failed", started)
        return _fail(entry, f"redis: {exc}", started)
    except redis.exceptions.TimeoutError:
        return _fail(entry, f"redis: timeout after {timeout:.1f} s connecting to {settings.target()}", started)
    except redis.exceptions.ConnectionError as exc:
        text = str(exc)
        # redis-py reports the error of the last address it tried: for "localhost" that is
        # often ::1 in a host without IPv6 (errno 99) after 127.0.0.1 refused.
        if "refused" in text.lower() or "Error 99 " in text or "cannot assign requested address" in text.lower():
            return _fail(entry, f"redis: connection refused at {settings.target()}", started)
        if "timeout" in text.lower() or "timed out" in text.lower():
            return _fail(entry, f"redis: timeout after {timeout:.1f} s connecting to {settings.target()}", started)
        if settings.tls and ("ssl" in text.lower() or "tls" in text.lower() or "EOF" in text):
            return _fail(entry, f"redis: TLS handshake with {settings.target()} failed; does it offer TLS?", started)
        return _fail(entry, f"redis: {' '.join(text.split())}", started)
    finally:
        client.close()
    maxmemory = int(info.get("maxmemory", 0) or 0)
    used = int(info.get("used_memory", 0))
    entry.update(healthy=True, status="healthy", version=info.get("redis_version"), role=info.get("role"),
                 used_memory_bytes=used, maxmemory_bytes=maxmemory,
                 memory_usage=round(used / maxmemory, 3) if maxmemory else None,
                 connected_clients=info.get("connected_clients"), queues=queues)
    _degrade(entry, limits, "latency_ms", entry["latency_ms"], "latency {value} ms over {limit} ms")
    _degrade(entry, limits, "memory_usage", entry["memory_usage"], "memory at {value:.0%} of maxmemory "
             "(limit {limit:.0%})")
    _degrade(entry, limits, "connected_clients", entry["connected_clients"], "{value} clients over {limit}")
    for name, length in queues.items():
        _degrade(entry, limits, "queue_length", length, f"queue {name!r} has {{value}} tasks waiting (limit {{limit}})")
    return entry


# -- the app's /health ---------------------------------------------------------------

def url_password(url):
    try:
        password = urllib.parse.urlsplit(url or "").password
    except ValueError:
        return None
    return urllib.parse.unquote(password) if password else None


def redact_url(url):
    parts = urllib.parse.urlsplit(url)
    if parts.password or parts.username:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc="***@" + netloc))
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 3xx answer is the result: "answered HTTP 302"


def _without_userinfo(parts):
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_app(url, timeout=DEFAULT_TIMEOUT, limits=None, validate_certs=True):
    shown = redact_url(url)
    entry = {"service": "app", "target": shown}
    started = time.perf_counter()
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return _fail(entry, f"app: {shown} is not an http(s) URL", started)
    headers = {"Accept": "application/json", "User-Agent": "infer-forge-health"}
    handlers = []
    if parts.username is not None or parts.password is not None:
        # user:password@ in the URL is not part of the host: it goes in an Authorization header,
        # never to the resolver, and the credentials do not follow a redirect to another place.
        credentials = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")
        handlers.append(_NoRedirect())
    if parts.scheme == "https" and not validate_certs:
        import ssl

        context = ssl._create_unverified_context()  # noqa: S323 - the operator turned verification off
        handlers.append(urllib.request.HTTPSHandler(context=context))
    # Only http and https get here (checked just above).
    try:
        target = _without_userinfo(parts)
    except ValueError:
        return _fail(entry, f"app: {shown} is not a valid URL", started)
    request = urllib.request.Request(target, headers=headers)  # noqa: S310
    status = None
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
            status = response.status
            body = response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        status = exc.code
        body = exc.read(1 << 20)
    except TimeoutError:
        return _fail(entry, f"app: timeout after {timeout:.1f} s waiting for {shown}", started)
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return _fail(entry, f"app: timeout after {timeout:.1f} s waiting for {shown}", started)
        if isinstance(reason, ConnectionRefusedError):
            return _fail(entry, f"app: connection refused at {shown}", started)
        return _fail(entry, f"app: cannot reach {shown}: {reason}", started)
    except OSError as exc:
        return _fail(entry, f"app: cannot reach {shown}: {exc}", started)
    entry["latency_ms"] = _ms(time.perf_counter() - started)
    entry["http_status"] = status
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        document = None
    if isinstance(document, dict):
        entry["body"] = document
        if isinstance(document.get("services"), list):
            entry["services"] = document["services"]
        if isinstance(document.get("version"), dict):
            entry["version"] = document["version"]
    if status != 200:
        failing = [s.get("service") for s in entry.get("services", []) if isinstance(s, dict) and not s.get("healthy")]
        detail = f" ({', '.join(map(str, failing))} unhealthy)" if failing else ""
        return _fail(entry, f"app: {shown} answered HTTP {status}{detail}", started, keep_latency=True)
    if document is None:
        return _fail(entry, f"app: {shown} returned invalid JSON", started, keep_latency=True)
    if document.get("status") != "healthy":
        return _fail(entry, f"app: {shown} reports status {document.get('status')!r}", started, keep_latency=True)
    entry.update(healthy=True, status="healthy")
    _degrade(entry, limits, "latency_ms", entry["latency_ms"], "latency {value} ms over {limit} ms")
    return entry


def _fail(entry, error, started, keep_latency=False):
    entry.update(healthy=False, status="unhealthy", error=error)
    if not keep_latency:
        entry["latency_ms"] = _ms(time.perf_counter() - started)
    return entry


# -- all together ----------------------------------------------------------------------

def plan(database=None, redis=None, app_url=None, timeout=DEFAULT_TIMEOUT, limits=None, validate_certs=True):
    """The checks for run_checks, in the runbook's order: the database (PgSettings), Redis
    (RedisSettings) and the app's /health URL, each only when given. ``limits`` are the
    thresholds by service (see validate_thresholds); an app URL's credentials never show."""
    limits = limits or {}
    planned = []
    if database is not None:
        planned.append(("database", database.target(),
                        lambda: check_database(database, timeout, limits.get("database"))))
    if redis is not None:
        planned.append(("redis", redis.target(), lambda: check_redis(redis, timeout, limits.get("redis"))))
    if app_url is not None:
        planned.append(("app", redact_url(app_url),
                        lambda: check_app(app_url, timeout, limits.get("app"), validate_certs)))
    return planned


def run_checks(checks, timeout=DEFAULT_TIMEOUT):
    """``checks``: list of (name, target, callable). Runs them in parallel; a check
    still running at ``timeout`` (+ 5% for its own timeout error to arrive) is
    reported as a timeout and left behind."""
    results = {}
    threads = []
    targets = {}
    for name, target_text, func in checks:
        targets[name] = target_text

        def target(name=name, func=func):
            try:
                results[name] = func()
            except Exception as exc:  # noqa: BLE001 - one line per service, never a traceback
                results[name] = {"service": name, "healthy": False, "status": "unhealthy",
                                 "error": f"{name}: {' '.join(str(exc).split())}"}
        thread = threading.Thread(target=target, name=f"health-{name}", daemon=True)
        thread.start()
        threads.append((name, thread))
    started = time.perf_counter()
    deadline = started + timeout * 1.05
    services = []
    for name, thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()))
        if name in results:
            services.append(results[name])
        else:
            services.append({"service": name, "target": targets[name], "healthy": False, "status": "unhealthy",
                             "latency_ms": _ms(time.perf_counter() - started),
                             "error": f"{name}: timeout after {timeout:.1f} s "
                                      f"{'waiting for' if name == 'app' else 'connecting to'} {targets[name]}"})
    return summarize(services)


def summarize(services):
    statuses = {s["status"] for s in services}
    status = "unhealthy" if "unhealthy" in statuses else "degraded" if "degraded" in statuses else "healthy"
    version = next((s["version"] for s in services if s.get("service") == "app" and isinstance(s.get("version"), dict)),
                   {"app": "INFER FORGE", "checker": f"infer-forge-ops {__version__}"})
    return {"status": status, "services": services, "version": version}


def failure_message(report):
    """One line naming every unhealthy service and its cause."""
    return "; ".join(s["error"] for s in report["services"] if not s.get("healthy"))


def database_settings_from_url(url, timeout=DEFAULT_TIMEOUT):
    """postgresql://user:password@host:port/dbname?sslmode=require"""
    from .pgconn import PgSettings

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ForgeError("database_url must start with postgresql://")
    query = urllib.parse.parse_qs(parts.query)
    return PgSettings(host=parts.hostname or "localhost", port=parts.port or 5432,
                      user=urllib.parse.unquote(parts.username) if parts.username else None,
                      password=urllib.parse.unquote(parts.password) if parts.password else None,
                      database=urllib.parse.unquote(parts.path.lstrip("/")) or None,
                      sslmode=(query.get("sslmode") or [None])[0])


def redis_settings_from_url(url, **extra):
    """redis://[user]:password@host:port/db, rediss:// for TLS."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ForgeError("redis_url must start with redis:// or rediss://")
    db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise ForgeError("redis_url: the database after the host must be a number")
    return RedisSettings(host=parts.hostname or "localhost", port=parts.port or 6379,
                         password=urllib.parse.unquote(parts.password) if parts.password else None,
                         username=urllib.parse.unquote(parts.username) if parts.username else None,
                         db=int(db), tls=parts.scheme == "rediss", **extra)
