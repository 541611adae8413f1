#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_dr_drill
short_description: The DR drill's database side, lose the database while the app writes, then judge RPO and RTO
description:
  - Runs as root on the database host; C(playbooks/dr_drill.yml) runs O(mode=crash), then C(playbooks/dr_restore.yml)
    to latest, then O(mode=judge). For a lab or a throwaway copy of the stack, never for production's own database.
  - O(mode=crash) makes the table C(infer_forge_dr_drill), starts a writer that inserts a row every O(interval)
    seconds through the db container and keeps the ids the server acknowledged, and after O(writes_for) seconds
    kills the db container (SIGKILL, its restart policy off); what it knew goes to a 0600 state file.
  - O(mode=judge) reads back which acknowledged ids the put-back database holds (RPO, by id) and takes the time from
    the kill until the app was healthy again (RTO, O(app_healthy_at)); PASS when at most O(rpo_max_rows) rows are
    lost and the RTO is at most O(rto_max_seconds). It writes a JSON report, C(infer_forge_dr_drill_*) metrics and,
    on a failure, a Sentry event, and puts the container's restart policy back.
version_added: "0.3.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
options:
  mode:
    description: What to do.
    type: str
    choices: [crash, judge]
    required: true
  project:
    description: The Compose project of the db service.
    type: str
    required: true
  db_service:
    description: The database service.
    type: str
    default: db
  login_user:
    description: The role the writer inserts as, over the container's socket.
    type: str
    default: infer
  database:
    description: The database the writer inserts into.
    type: str
    default: infer_forge
  writes_for:
    description: For O(mode=crash), seconds of writes before the kill.
    type: float
    default: 3.0
  interval:
    description: For O(mode=crash), seconds between two inserts.
    type: float
    default: 0.1
  app_healthy_at:
    description: For O(mode=judge), when the app was healthy again (epoch seconds, C(forge_putback) returns it).
    type: float
  put_back:
    description: For O(mode=judge), false when the put-back failed (the drill then fails with O(reason)).
    type: bool
    default: true
  reason:
    description: For O(mode=judge), why the put-back failed.
    type: str
  rpo_max_rows:
    description: Acknowledged rows the drill may lose and still pass.
    type: int
    default: 10
  rto_max_seconds:
    description: Seconds from the loss until the app is healthy that the drill may take and still pass.
    type: int
    default: 600
  state_dir:
    description: Where the crash leaves what the judge reads (0700).
    type: path
    default: /var/lib/infer-forge/dr-drill
  report_dir:
    description: Where the JSON report goes.
    type: path
    default: /var/lib/infer-forge/dr-drill
  textfile_dir:
    description: node_exporter's textfile directory for the metrics; none written when unset.
    type: path
  sentry_dsn:
    description: Where a failed drill is reported.
    type: str
  environment:
    description: The Sentry environment.
    type: str
notes:
  - Supports check mode (nothing is killed or written).
"""

EXAMPLES = r"""
- name: Lose the database while the app writes
  forge_dr_drill:
    mode: crash
    project: infer-forge

- name: Judge the put-back
  forge_dr_drill:
    mode: judge
    project: infer-forge
    app_healthy_at: "{{ putback.app_healthy_at }}"
    textfile_dir: /var/lib/infer-forge-metrics/dr-drill
"""

RETURN = r"""
acknowledged_rows:
  description: Rows the app had acknowledged when the database was lost.
  returned: success
  type: int
verdict:
  description: For O(mode=judge), PASS or FAIL.
  returned: mode judge
  type: str
reason:
  description: For O(mode=judge), one line on what passed or failed.
  returned: mode judge
  type: str
rpo_rows_lost:
  description: For O(mode=judge), acknowledged rows the put-back database does not hold.
  returned: mode judge and the put-back worked
  type: int
rto_seconds:
  description: For O(mode=judge), from the kill until the app was healthy again.
  returned: mode judge and the put-back worked
  type: float
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.forge.drdrill import DrDrill
    from ansible.module_utils.forge.errors import ForgeError, unexpected
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc

ARGUMENT_SPEC = dict(
    mode=dict(type="str", choices=["crash", "judge"], required=True),
    project=dict(type="str", required=True),
    db_service=dict(type="str", default="db"),
    login_user=dict(type="str", default="infer"),
    database=dict(type="str", default="infer_forge"),
    writes_for=dict(type="float", default=3.0),
    interval=dict(type="float", default=0.1),
    app_healthy_at=dict(type="float"),
    put_back=dict(type="bool", default=True),
    reason=dict(type="str"),
    rpo_max_rows=dict(type="int", default=10),
    rto_max_seconds=dict(type="int", default=600),
    state_dir=dict(type="path", default="/var/lib/infer-forge/dr-drill"),
    report_dir=dict(type="path", default="/var/lib/infer-forge/dr-drill"),
    textfile_dir=dict(type="path"),
    sentry_dsn=dict(type="str", no_log=True),
    environment=dict(type="str"),
)


def run(module):
    p = module.params
    drill = DrDrill(p["project"], p["db_service"], p["login_user"], p["database"], state_dir=p["state_dir"])
    if module.check_mode:
        return dict(changed=True, msg=f"would {p['mode']} the DR drill of {p['project']}")
    if p["mode"] == "crash":
        return dict(changed=True, **drill.crash(p["writes_for"], p["interval"]))
    if p["put_back"] and p["app_healthy_at"] is None:
        raise ForgeError("mode=judge needs app_healthy_at (forge_putback returns it) or put_back=false")
    result = drill.judge(p["app_healthy_at"], p["rpo_max_rows"], p["rto_max_seconds"], report_dir=p["report_dir"],
                         textfile_dir=p["textfile_dir"], sentry_dsn=p["sentry_dsn"], environment=p["environment"],
                         put_back=p["put_back"], reason=p["reason"])
    result["changed"] = True
    if not result["passed"]:
        result.update(failed=True, msg=f"DR drill of {p['project']} failed: {result['reason']}")
    return result


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    failure = None
    try:
        result = run(module)
    except ForgeError as exc:
        failure = exc.message
    except Exception as exc:  # noqa: BLE001 - one line for the operator, never a traceback
        failure = f"forge_dr_drill {module.params['mode']} stopped: {unexpected(exc)}"
    if failure:
        module.fail_json(msg=failure)
    if result.get("failed"):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
