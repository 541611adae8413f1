#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_checklist
short_description: Check one item of the INFER FORGE production checklist on this host, read-only
description:
  - The runbook ends with an 11-item checklist before going to production. This module checks one
    item on the host that owns it and returns V(PASS), V(FAIL) or V(WARN) with the evidence it looked
    at and the playbook or variable that fixes it. It never changes anything.
  - Items 1, 2, 10 and 11 belong to app hosts (C(.env), Sentry test event record, logrotate);
    3 to 6 to backup hosts (schedule and age of the last backup, restore drill, permissions,
    off-site copy); 7 to 9 to the monitoring host (Prometheus targets and rules, Grafana
    provisioning, Alertmanager); 12, beyond the runbook, to the Barman host (WAL streaming, base backup,
    PITR drill, from the pitr role's metrics and report).
  - With O(report), it checks nothing and puts the results every host collected into one report
    (RV(report)); C(playbooks/checklist.yml) runs every item on the right hosts and then does that.
version_added: "0.1.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
options:
  item:
    description:
      - Checklist item, 1 to 11 in the runbook's order, or 12, beyond the runbook (point-in-time recovery, on the
        pitr host). Required unless O(report) is set.
    type: int
  report:
    description:
      - Check nothing; build the report from what the hosts collected, one row per item and host, in item order.
      - An item no host checked is V(SKIP), or V(FAIL) in a full run whose inventory group for it is empty.
    type: dict
    suboptions:
      hosts:
        description: One entry per host that checked items, C({host, environment, results}).
        type: list
        elements: dict
        required: true
      groups:
        description: The inventory's groups and their hosts (C(groups)).
        type: dict
        required: true
      fixes:
        description: What fixes each item, by item number; shown on every row that did not pass.
        type: dict
        default: {}
      full_run:
        description: Every item was meant to run (no C(--tags), no C(--limit)).
        type: bool
        default: false
      environment:
        description: The report's environment when no host says; V(production) wins when any host is in it.
        type: str
        default: unknown
  environment:
    description: The inventory's environment; item 2 only warns outside production.
    type: str
    default: production
  env_file:
    description: The app's C(.env) (items 1 and 2).
    type: path
    default: /opt/infer-forge/.env
  app_compose_project:
    description:
      - The app runs in this Docker Compose project. Items 1 and 2 then read the environment its running
        O(app_compose_service) container was started with (C(docker inspect)), found by the Compose labels;
        that is what the app sees. An O(env_file) that says otherwise makes a line of evidence (and a V(WARN)
        where the container would pass), since Compose reads the file only when it recreates the container.
      - Empty reads O(env_file) alone.
    type: str
    default: ""
  app_compose_service:
    description: The app's Compose service (with O(app_compose_project)).
    type: str
    default: app
  databases:
    description: Databases that must be backed up (items 3, 4 and 6).
    type: list
    elements: str
    default: [infer_forge]
  backup_dir:
    description: Backup directory (items 3 and 5).
    type: path
    default: /backups
  backup_user:
    description: Owner the backup directory must have (item 5).
    type: str
    default: infer
  config_dir:
    description: Where the backup role keeps C(backup-<db>.env) (item 6 reads C(OFFSITE_TARGET)).
    type: path
    default: /etc/infer-forge
  cron_file:
    description: The backup role's cron file (item 3).
    type: path
    default: /etc/cron.d/infer-forge-backup
  compose_file:
    description: The Compose sidecar file, the runbook's other way to schedule backups (item 3).
    type: path
    default: /opt/infer-forge/docker-compose.backup.yml
  report_dir:
    description: Where drill reports and off-site state files are written (items 4 and 6).
    type: path
    default: /var/lib/infer-forge/reports
  textfile_dir:
    description: node_exporter textfile directory; the drill's metrics are a second source for item 4.
    type: path
    default: /var/lib/infer-forge-metrics/backup
  backup_max_age_hours:
    description: The newest good backup must be younger than this (item 3).
    type: float
    default: 26
  drill_max_age_days:
    description: A restore drill must have passed within this many days (item 4).
    type: float
    default: 7
  offsite_max_age_hours:
    description: The last verified off-site copy must be younger than this (item 6).
    type: float
    default: 26
  prometheus_url:
    description: Prometheus's HTTP API, from the monitoring host (items 7 and 9).
    type: str
    default: http://localhost:9090
  health_job:
    description: The Prometheus job that probes the app's C(/health) (item 7).
    type: str
    default: infer-forge-health
  dashboards_dir:
    description: Dashboard JSON directory (item 8).
    type: path
    default: /var/lib/grafana/dashboards/infer-forge
  provisioning_dir:
    description: Grafana's provisioning directory (item 8).
    type: path
    default: /etc/grafana/provisioning
  alertmanager_config:
    description: alertmanager.yml, checked with C(amtool check-config) (item 9).
    type: path
    default: /etc/prometheus/alertmanager.yml
  alertmanager_url:
    description: Alertmanager's API (item 9).
    type: str
    default: http://localhost:9093
  sentry_record:
    description: The record C(forge_sentry_event) writes for an accepted test event (item 10).
    type: path
    default: /var/lib/infer-forge/sentry-test-event.json
  sentry_max_age_days:
    description: The accepted test event must be younger than this (item 10).
    type: float
    default: 30
  logrotate_files:
    description: logrotate configs for the app's logs, globs allowed (item 11).
    type: list
    elements: str
    default: [/etc/logrotate.d/infer-forge-app]
  timeout:
    description: Seconds for each HTTP request.
    type: float
    default: 5.0
  pitr_server:
    description: The Barman server name whose C(infer_forge_pitr_*) metrics and drill report item 12 reads.
    type: str
    default: infer-forge
  pitr_report_dir:
    description: Directory of the PITR drill's C(pitr_drill_<server>.json) (item 12).
    type: path
    default: /var/lib/barman/infer-forge-reports
  pitr_base_backup_max_age_days:
    description: How old the newest base backup may be (item 12).
    type: float
    default: 8
  pitr_drill_max_age_days:
    description: How old the last passed PITR drill may be (item 12).
    type: float
    default: 8
  pitr_offsite_max_age_hours:
    description: How old the last off-site copy of the PITR data may be (item 12; it runs hourly).
    type: float
    default: 6
  pitr_offsite_check_max_age_days:
    description: How old the last passed check of the off-site PITR repository may be (item 12).
    type: float
    default: 8
  dr_drill_report_dir:
    description: Directory of the DR drill's C(dr_drill_<project>.json) reports (item 4's evidence, where it ran).
    type: path
    default: /var/lib/infer-forge/dr-drill
  dr_drill_textfile_dir:
    description: Root's own textfile directory of the DR drill's metrics (item 4's evidence, where it ran).
    type: path
    default: /var/lib/infer-forge-metrics/dr-drill
  pitr_textfile_dir:
    description: Barman's own textfile directory on the Barman host (item 12's status, drill and off-site metrics).
    type: path
    default: /var/lib/infer-forge-metrics/pitr
  dr_drill_max_age_days:
    description: How old the last passed DR drill may be before item 4 WARNs (where a DR drill ran).
    type: float
    default: 35
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The module is read-only; it runs the same in check mode.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - logrotate (item 11) and amtool (item 9) on the hosts that own those items
"""

EXAMPLES = r"""
- name: "4 Ověřit restore procesu na test databázi (restore drill within 7 days)"
  forge_checklist:
    item: 4
    databases: [infer_forge]
  register: checklist_item

- name: Show it
  ansible.builtin.debug:
    msg: "{{ checklist_item.status }}: {{ checklist_item.evidence | join('; ') }}"
"""

RETURN = r"""
item:
  description: The item's number.
  returned: when item is given
  type: int
label:
  description: The item as the runbook words it (Czech).
  returned: when item is given
  type: str
  sample: Ověřit restore procesu na test databázi
label_en:
  description: What was checked, in English.
  returned: when item is given
  type: str
  sample: Restore drill passed within 7 days
status:
  description: V(PASS), V(FAIL) or V(WARN).
  returned: when item is given
  type: str
evidence:
  description: What the check looked at, one line per fact.
  returned: when item is given
  type: list
  elements: str
report:
  description:
    - With O(report), the report; C(rows) hold C(item), C(host), C(label), C(label_en), C(status),
      C(evidence) and C(fix).
  returned: when report is given
  type: dict
  contains:
    environment:
      description: The environment the hosts are in.
      type: str
    generated_at:
      description: When the report was built, UTC, ISO 8601.
      type: str
    hosts:
      description: The hosts that checked at least one item.
      type: list
      elements: str
    counts:
      description: Rows per status (V(PASS), V(WARN), V(FAIL), V(SKIP)).
      type: dict
    rows:
      description: One row per item and host.
      type: list
      elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.forge.checklist import DEFAULTS, Checklist, report
    from ansible.module_utils.forge.errors import ForgeError
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc

# Defaults live once, in the engine's DEFAULTS (DOCUMENTATION repeats them for ansible-doc).
OPTION_TYPES = dict(
    environment="str", env_file="path", app_compose_project="str", app_compose_service="str", databases="list",
    backup_dir="path", backup_user="str",
    config_dir="path", cron_file="path", compose_file="path", report_dir="path", textfile_dir="path",
    backup_max_age_hours="float", drill_max_age_days="float", offsite_max_age_hours="float",
    prometheus_url="str", health_job="str", dashboards_dir="path", provisioning_dir="path",
    alertmanager_config="path", alertmanager_url="str", sentry_record="path", sentry_max_age_days="float",
    logrotate_files="list", timeout="float", pitr_server="str", pitr_report_dir="path",
    pitr_base_backup_max_age_days="float", pitr_drill_max_age_days="float", pitr_offsite_max_age_hours="float",
    pitr_offsite_check_max_age_days="float", dr_drill_report_dir="path", dr_drill_textfile_dir="path",
    pitr_textfile_dir="path",
    dr_drill_max_age_days="float",
)


def argument_spec():
    spec = dict(item=dict(type="int"), report=dict(type="dict", options=dict(
        hosts=dict(type="list", elements="dict", required=True), groups=dict(type="dict", required=True),
        fixes=dict(type="dict", default={}), full_run=dict(type="bool", default=False),
        environment=dict(type="str", default="unknown"))))
    for key, kind in OPTION_TYPES.items():
        spec[key] = dict(type=kind, default=DEFAULTS[key])
        if kind == "list":
            spec[key]["elements"] = "str"
    return spec


def main():
    if ENGINE_IMPORT_ERROR is not None:
        AnsibleModule(argument_spec={}, bypass_checks=True).fail_json(
            msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           required_one_of=[("item", "report")], mutually_exclusive=[("item", "report")])
    settings = {key: value for key, value in module.params.items() if key not in ("item", "report")}
    if module.params["report"]:
        built = module.params["report"]
        module.exit_json(changed=False, report=report(built["hosts"], built["groups"], built["fixes"],
                                                      built["full_run"], built["environment"], settings))
    try:
        result = Checklist(settings).run(module.params["item"])
    except ForgeError as exc:
        module.fail_json(msg=exc.message)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
