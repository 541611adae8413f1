#!/usr/bin/env python3
"""A stand-in for the INFER FORGE backend's health endpoints, for the lab and Molecule.

Serves what the runbook documents, from real checks of the configured
PostgreSQL and Redis (the same engine as forge_health):
  /health        200 {"status": "healthy", "services": [...], "version": {...}} or 503
  /health/db     the database alone
  /health/redis  Redis alone
Settings come from the environment: POSTGRES_HOST/PORT/USER/PASSWORD/DB,
REDIS_HOST/PORT/PASSWORD, APP_PORT (default 8000). Listens on APP_BIND
(default 127.0.0.1). It is not the real app and does nothing else.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "module_utils"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))

from forge import health  # noqa: E402
from forge.pgconn import PgSettings  # noqa: E402

VERSION = {"app": "INFER FORGE", "version": "0.1.0"}


def checks(names):
    env = os.environ
    database = PgSettings(env.get("POSTGRES_HOST", "localhost"), env.get("POSTGRES_PORT", "5432"),
                          env.get("POSTGRES_USER"), env.get("POSTGRES_PASSWORD"), env.get("POSTGRES_DB"))
    redis = health.RedisSettings(env.get("REDIS_HOST", "localhost"), env.get("REDIS_PORT", "6379"),
                                 env.get("REDIS_PASSWORD") or None)
    return health.plan(database=database if "database" in names else None,
                       redis=redis if "redis" in names else None, timeout=2.0)


def runbook_entry(entry):
    """The app reports only healthy/service/latency_ms (and error), as the runbook shows."""
    shown = {"healthy": entry["healthy"], "service": entry["service"], "latency_ms": entry.get("latency_ms")}
    if not entry["healthy"]:
        shown["error"] = entry.get("error")
    return shown


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        wanted = {"/health": ("database", "redis"), "/health/db": ("database",), "/health/redis": ("redis",)}
        names = wanted.get(self.path.rstrip("/") or "/")
        if names is None:
            self.reply(404, {"detail": "Not Found"})
            return
        report = health.run_checks(checks(names), 2.0)
        body = {"status": "healthy" if report["status"] != "unhealthy" else "unhealthy",
                "services": [runbook_entry(s) for s in report["services"]], "version": VERSION}
        self.reply(200 if body["status"] == "healthy" else 503, body)

    def reply(self, code, body):
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt, *args):
        # The runbook's request log line.
        sys.stderr.write("INFO request method=GET path=%s status=%s\n" % (self.path, args[1] if len(args) > 1 else "-"))


def main():
    server = ThreadingHTTPServer((os.environ.get("APP_BIND", "127.0.0.1"), int(os.environ.get("APP_PORT", "8000"))),
                                 Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
