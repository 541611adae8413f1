#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_health
short_description: Check PostgreSQL, Redis and the app's /health, with latency, as the runbook's /health does
description:
  - Runs the health checks of INFER FORGE from the outside and answers in the shape of the app's own
    C(/health) endpoint, so operators recognise it, C(status) (V(healthy), V(degraded) or V(unhealthy)),
    C(services) (one entry per check with C(healthy), C(service), C(latency_ms) and C(error)), C(version).
  - C(database) connects with psycopg, runs C(SELECT 1) and reports its latency, the server version,
    connections in use against C(max_connections), whether it is a replica and its replay lag, and the
    database size.
  - C(redis) sends C(PING) and reports its latency, version, role, used memory against C(maxmemory),
    connected clients and, optionally, the length of Celery queues, a growing backlog being the first
    sign of stuck workers.
  - C(app) fetches the app's C(/health); HTTP 503, any non-200 answer, invalid JSON or a body whose
    C(status) is not C(healthy) make it unhealthy; the services the app reports are included.
  - The checks run in parallel, each with its own timeout, so a host whose services all hang answers
    within the timeout.
  - C(changed) is always false; check mode runs the checks too.
version_added: "0.1.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
options:
  checks:
    description: Which checks to run.
    type: list
    elements: str
    choices: [database, redis, app]
    default: [database, redis, app]
  timeout:
    description: Seconds each check may take; a check never hangs past it.
    type: float
    default: 3.0
  fail_on_unhealthy:
    description: Fail the task when any check is unhealthy. With V(false) the outcome is returned as data.
    type: bool
    default: true
  fail_on_degraded:
    description: Also fail when a check is only degraded (over a threshold).
    type: bool
    default: false
  thresholds:
    description:
      - Limits that turn a healthy check V(degraded) with a reason.
      - C(database) keys C(latency_ms), C(connection_usage) (fraction of C(max_connections)), C(replay_lag_seconds).
      - C(redis) keys C(latency_ms), C(memory_usage) (fraction of C(maxmemory)), C(queue_length), C(connected_clients).
      - C(app) key C(latency_ms).
    type: dict
    default: {}
  database_url:
    description: C(postgresql://user:password@host:port/dbname?sslmode=...). Overrides the other database options.
    type: str
  database_host:
    description: PostgreSQL host. O(login_host) is the name the other forge modules use.
    type: str
    default: localhost
    aliases: [login_host]
  database_port:
    description: PostgreSQL port. O(port) is the name the other forge modules use.
    type: int
    default: 5432
    aliases: [port]
  database_user:
    description: Role to connect as. O(login_user) is the name the other forge modules use.
    type: str
    aliases: [login_user]
  database_password:
    description: Password of O(database_user). O(login_password) is the name the other forge modules use.
    type: str
    aliases: [login_password]
  database_name:
    description: Database to connect to.
    type: str
    default: postgres
  database_sslmode:
    description: libpq C(sslmode), for example V(require) when the server must offer TLS.
    type: str
  redis_url:
    description: C(redis://[user]:password@host:port/db), C(rediss://) for TLS. Overrides the other redis options.
    type: str
  redis_host:
    description: Redis host.
    type: str
    default: localhost
  redis_port:
    description: Redis port.
    type: int
    default: 6379
  redis_username:
    description: ACL user for C(AUTH).
    type: str
  redis_password:
    description: Password for C(AUTH) (C(requirepass) or the ACL user's).
    type: str
  redis_db:
    description: Redis database number (the Celery broker's).
    type: int
    default: 0
  redis_tls:
    description: Connect with TLS.
    type: bool
    default: false
  redis_tls_ca_file:
    description: CA bundle to verify the Redis server's certificate.
    type: path
  redis_tls_verify:
    description: Verify the Redis server's certificate.
    type: bool
    default: true
  redis_queues:
    description: Celery queues (Redis lists) whose length to report, for example V([celery]).
    type: list
    elements: str
    default: []
  app_url:
    description:
      - URL of the app's health endpoint. When it carries credentials (C(user:password@)), the password is
        masked in the task's output and the results show the URL as C(http://***@host/health).
    type: str
    default: http://localhost:8000/health
  app_validate_certs:
    description: Verify the app's TLS certificate for https URLs.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The checks only read, so they run in check mode too.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - python3-psycopg for the database check, python3-redis for the redis check (both Debian 12 and current releases)
"""

EXAMPLES = r"""
- name: Check the database, Redis and the app as the runbook's /health does
  forge_health:
    database_host: 127.0.0.1
    database_user: infer
    database_password: "{{ vault_postgres_password }}"
    database_name: infer_forge
    redis_password: "{{ vault_redis_password }}"
    redis_queues: [celery]
    app_url: http://localhost:8000/health
    thresholds:
      database: {latency_ms: 50, connection_usage: 0.8}
      redis: {memory_usage: 0.9, queue_length: 1000}

- name: Collect health as data, without failing, for a report
  forge_health:
    checks: [redis]
    redis_url: "redis://:{{ vault_redis_password }}@10.0.0.6:6379/0"
    fail_on_unhealthy: false
  register: health

- name: Only the app's endpoint, from the controller
  forge_health:
    checks: [app]
    app_url: "https://forge.example.cz/health"
  delegate_to: localhost
"""

RETURN = r"""
status:
  description: V(healthy), V(degraded) (a threshold was crossed) or V(unhealthy).
  returned: always
  type: str
  sample: healthy
services:
  description: One entry per check, in the runbook's shape plus details.
  returned: always
  type: list
  elements: dict
  sample:
    - {"healthy": true, "service": "database", "status": "healthy", "latency_ms": 2.3, "version": "15.18",
       "connections": 4, "max_connections": 100, "replica": false}
    - {"healthy": true, "service": "redis", "status": "healthy", "latency_ms": 1.1, "queues": {"celery": 0}}
    - {"healthy": false, "service": "app", "status": "unhealthy", "latency_ms": 12.0,
       "error": "app: http://localhost:8000/health answered HTTP 503 (redis unhealthy)"}
version:
  description: The app's version block from its /health body, or the checker's.
  returned: always
  type: dict
  sample: {"app": "INFER FORGE", "version": "0.1.0"}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from ansible.module_utils.forge import health
    from ansible.module_utils.forge.errors import ForgeError
    from ansible.module_utils.forge.pgconn import PgSettings
    from ansible.module_utils.forge.requirements import POSTGRES, REDIS, first_missing
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc


ARGUMENT_SPEC = dict(
    checks=dict(type="list", elements="str", choices=["database", "redis", "app"],
                default=["database", "redis", "app"]),
    timeout=dict(type="float", default=3.0),
    fail_on_unhealthy=dict(type="bool", default=True),
    fail_on_degraded=dict(type="bool", default=False),
    thresholds=dict(type="dict", default={}),
    database_url=dict(type="str", no_log=True),
    database_host=dict(type="str", default="localhost", aliases=["login_host"]),
    database_port=dict(type="int", default=5432, aliases=["port"]),
    database_user=dict(type="str", aliases=["login_user"]),
    database_password=dict(type="str", no_log=True, aliases=["login_password"]),
    database_name=dict(type="str", default="postgres"),
    database_sslmode=dict(type="str"),
    redis_url=dict(type="str", no_log=True),
    redis_host=dict(type="str", default="localhost"),
    redis_port=dict(type="int", default=6379),
    redis_username=dict(type="str"),
    redis_password=dict(type="str", no_log=True),
    redis_db=dict(type="int", default=0),
    redis_tls=dict(type="bool", default=False),
    redis_tls_ca_file=dict(type="path"),
    redis_tls_verify=dict(type="bool", default=True),
    redis_queues=dict(type="list", elements="str", default=[]),
    # May carry user:password@; main() masks that password everywhere, results show the URL redacted.
    app_url=dict(type="str", default="http://localhost:8000/health", no_log=False),
    app_validate_certs=dict(type="bool", default=True),
)


class HealthModule:
    def __init__(self, module):
        self.params = module.params

    def checks(self):
        p = self.params
        db = rs = None
        if "database" in p["checks"]:
            if p["database_url"]:
                db = health.database_settings_from_url(p["database_url"])
            else:
                db = PgSettings(host=p["database_host"], port=p["database_port"], user=p["database_user"],
                                password=p["database_password"], database=p["database_name"],
                                sslmode=p["database_sslmode"])
        if "redis" in p["checks"]:
            tls_extra = dict(tls_ca_file=p["redis_tls_ca_file"], tls_verify=p["redis_tls_verify"],
                             queues=p["redis_queues"])
            if p["redis_url"]:
                rs = health.redis_settings_from_url(p["redis_url"], **tls_extra)
            else:
                rs = health.RedisSettings(host=p["redis_host"], port=p["redis_port"], password=p["redis_password"],
                                          username=p["redis_username"], db=p["redis_db"], tls=p["redis_tls"],
                                          **tls_extra)
        return health.plan(database=db, redis=rs, app_url=p["app_url"] if "app" in p["checks"] else None,
                           timeout=p["timeout"], limits=p["thresholds"], validate_certs=p["app_validate_certs"])

    def run(self):
        p = self.params
        if p["timeout"] <= 0:
            return dict(failed=True, msg=f"timeout must be > 0 seconds, got {p['timeout']}")
        try:
            health.validate_thresholds(p["thresholds"])
            report = health.run_checks(self.checks(), p["timeout"])
        except ForgeError as exc:
            return dict(failed=True, msg=exc.message)
        result = dict(report, changed=False)
        if report["status"] == "unhealthy" and p["fail_on_unhealthy"]:
            result.update(failed=True, msg=health.failure_message(report))
        elif report["status"] == "degraded" and p["fail_on_degraded"]:
            reasons = [f"{s['service']}: {'; '.join(s.get('reasons', []))}" for s in report["services"]
                       if s["status"] == "degraded"]
            result.update(failed=True, msg="; ".join(reasons))
        return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    # Only what the chosen checks use: an app-only check runs on a host with neither library.
    needed = [name for check, name in (("database", POSTGRES), ("redis", REDIS)) if check in module.params["checks"]]
    missing = first_missing(*needed)
    if missing:
        module.fail_json(msg=missing_required_lib(missing))
    app_password = health.url_password(module.params["app_url"])
    if app_password:
        module.no_log_values.add(app_password)
    result = HealthModule(module).run()
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
