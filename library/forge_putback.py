#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_putback
short_description: Put a recovered INFER FORGE database back into the Compose db service's volume, or undo it
description:
  - Runs as root on the database host (it drives Docker), after the Barman host serves a recovered copy
    (C(forge_pitr) O(mode=serve); C(playbooks/dr_restore.yml) runs both).
  - O(mode=putback) first proves the copy answers on the db service's network, then stops the O(app_services)
    and the db service, moves the volume's contents aside into a new volume C(<volume>-before-dr-<stamp>) (a
    rename inside Docker's volume directory, nothing copied or deleted), runs C(pg_basebackup) of the copy into
    the emptied volume in a throwaway container of the db service's own image, checks it with
    C(pg_verifybackup), and starts the db service and the app services, each waited for until healthy.
  - A failure while copying or starting puts the old contents back, keeps the failed copy in
    C(<volume>-failed-dr-<stamp>), starts the services as they were, and fails in one line.
  - O(mode=undo) swaps the contents of O(aside_volume) back in; the current ones are kept in
    C(<volume>-after-dr-<stamp>). The same as C(forge dr undo --project P --aside V) on the host.
  - Only a local named volume mounted at C(/var/lib/postgresql/data) is handled; anything else is refused before
    anything stops.
version_added: "0.3.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
options:
  mode:
    description: What to do.
    type: str
    choices: [putback, undo]
    default: putback
  project:
    description: The Compose project of the db service.
    type: str
    required: true
  db_service:
    description: The database service.
    type: str
    default: db
  app_services:
    description: Services of the same project that read the database; stopped first, started last.
    type: list
    elements: str
    default: []
  source_host:
    description: Where the served copy answers, as the db service's network resolves it (the Barman host).
    type: str
  source_port:
    description: Its port.
    type: int
    default: 55433
  source_certificate:
    description: The certificate the served copy presents (PEM, C(forge_pitr) O(mode=serve) returns it); every
      connection is TLS to exactly it, with SCRAM bound to the channel.
    type: str
  login_user:
    description: The copy's one-time replication login (C(forge_pitr) O(mode=serve) made it); dropped from the
      put-back database before the app starts.
    type: str
    default: infer_forge_putback
  login_password:
    description: Its one-time password; it reaches pg_basebackup on stdin only.
    type: str
  superuser:
    description: A superuser of the put-back database that drops the one-time login, over the container's socket.
    type: str
    default: infer
  aside_volume:
    description: For O(mode=undo), the volume the put-back moved the old contents into.
    type: str
  timeout:
    description: Seconds each service may take to become healthy after it is started.
    type: int
    default: 900
notes:
  - Supports check mode (nothing stops; the containers and the volume are found and named).
"""

EXAMPLES = r"""
- name: Put the recovered copy back into the db service's volume
  forge_putback:
    project: infer-forge
    app_services: [app]
    source_host: forge-pitr1.infer.local
    source_certificate: "{{ hostvars['forge-pitr1.infer.local'].served.certificate }}"
    login_password: "{{ hostvars['forge-pitr1.infer.local'].putback_password }}"
  register: putback

- name: Undo it
  forge_putback:
    mode: undo
    project: infer-forge
    app_services: [app]
    aside_volume: "{{ putback.aside_volume }}"
"""

RETURN = r"""
volume:
  description: The db service's volume.
  returned: always
  type: str
aside_volume:
  description: Where O(mode=putback) moved the old contents (kept; O(mode=undo) brings them back).
  returned: mode putback
  type: str
seconds_to_database:
  description: From stopping the services until the put-back database was healthy.
  returned: mode putback
  type: float
configuration:
  description: Whose configuration files the put-back database has, C(the volume's own) (the cluster moved aside
    was the same one) or C(the base backup's) (a new volume).
  returned: mode putback
  type: str
seconds_to_app:
  description: From stopping the services until every app service was healthy again (the RTO on this host).
  returned: mode putback
  type: float
undo:
  description: The command that swaps the old contents back.
  returned: mode putback
  type: str
kept_in:
  description: For O(mode=undo), the volume that keeps the contents it replaced.
  returned: mode undo
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.forge.errors import ForgeError, unexpected
    from ansible.module_utils.forge.putback import PutBack
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc

ARGUMENT_SPEC = dict(
    mode=dict(type="str", choices=["putback", "undo"], default="putback"),
    project=dict(type="str", required=True),
    db_service=dict(type="str", default="db"),
    app_services=dict(type="list", elements="str", default=[]),
    source_host=dict(type="str"),
    source_port=dict(type="int", default=55433),
    source_certificate=dict(type="str"),
    login_user=dict(type="str", default="infer_forge_putback"),
    login_password=dict(type="str", no_log=True),
    superuser=dict(type="str", default="infer"),
    aside_volume=dict(type="str"),
    timeout=dict(type="int", default=900),
)


def run(module):
    p = module.params
    putback = PutBack(p["project"], p["db_service"], p["app_services"], timeout=p["timeout"])
    if module.check_mode:
        what = (f"swap {p['aside_volume']} back into {putback.volume}" if p["mode"] == "undo" else
                f"move {putback.volume} aside and put the copy at {p['source_host']}:{p['source_port']} in its place")
        return dict(changed=True, volume=putback.volume, msg=f"would {what}")
    if p["mode"] == "undo":
        return dict(changed=True, **putback.undo(p["aside_volume"]))
    return dict(changed=True, **putback.run(p["source_host"], p["source_port"], p["login_user"], p["login_password"],
                                            p["source_certificate"], superuser=p["superuser"]))


def main():
    required_if = [("mode", "putback", ("source_host", "source_certificate", "login_password")),
                   ("mode", "undo", ("aside_volume",))]
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, required_if=required_if)
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    failure, details = None, {}
    try:
        result = run(module)
    except ForgeError as exc:
        # A put-back that is done but whose app did not come back still says where the old
        # contents are (and the playbook still lets Barman rejoin it).
        failure, details = exc.message, exc.details
    except Exception as exc:  # noqa: BLE001 - one line for the operator, never a traceback
        failure = f"forge_putback {module.params['mode']} stopped: {unexpected(exc)}"
    if failure:
        module.fail_json(msg=failure, **details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
