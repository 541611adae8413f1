#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: INFER FORGE ops team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: forge_sentry_event
short_description: Send a real test event to Sentry and report whether it was accepted
description:
  - The runbook's checklist asks to test Sentry error capturing in production. This module sends one
    event through sentry-sdk with the runbook's tags and context (C(component), C(environment), host)
    and waits for Sentry's answer, so the task fails when the DSN is wrong, the project is rate
    limited or the server cannot be reached.
  - sentry-sdk builds the event (Debian 12's 1.9 and current 2.x both work); the module delivers it
    itself, synchronously, to learn the HTTP status. Without sentry-sdk the event is built by the engine.
version_added: "0.1.0"
author:
  - Infer DevOps <devops@infer.cz> (!UNKNOWN)
options:
  dsn:
    description: The project's DSN, C(https://KEY@HOST/PROJECT_ID). Never shown in output.
    type: str
    required: true
  event_message:
    description: The event's message (C(message) is a name Ansible reserves for itself).
    type: str
    default: INFER FORGE test event (production checklist, Sentry error capturing)
  component:
    description: Value of the C(component) tag, as the runbook tags events.
    type: str
    default: ops-checklist
  environment:
    description: The event's environment (the runbook's C(ENVIRONMENT)).
    type: str
    default: production
  release:
    description: Release to attach to the event.
    type: str
  tags:
    description: More tags.
    type: dict
    default: {}
  timeout:
    description: Seconds to wait for Sentry.
    type: float
    default: 5.0
  use_sdk:
    description: Build the event with sentry-sdk when it is installed.
    type: bool
    default: true
  record_file:
    description:
      - Where to record an accepted event (time, event id, endpoint without the key), as evidence
        for the production checklist's item 10. Written atomically, holds no secret.
    type: path
  min_interval_days:
    description:
      - With O(record_file), send only when the recorded acceptance is older than this (or was for
        another DSN), so re-running a deploy does not send an event each time. 0 always sends.
    type: float
    default: 0
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Validates the DSN and reports where the event would go; sends nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
requirements:
  - python3-sentry-sdk (optional; the engine builds the event without it)
"""

EXAMPLES = r"""
- name: Test Sentry error capturing in production (checklist item 10)
  forge_sentry_event:
    dsn: "{{ vault_sentry_dsn }}"
    environment: production
  register: sentry_test

- name: Show the event id to look up in Sentry
  ansible.builtin.debug:
    msg: "Sentry accepted event {{ sentry_test.event_id }} (HTTP {{ sentry_test.status }})"
"""

RETURN = r"""
accepted:
  description: Whether Sentry answered with a 2xx status.
  returned: always
  type: bool
status:
  description: HTTP status of Sentry's answer.
  returned: when sent
  type: int
  sample: 200
event_id:
  description: The event's id, to look it up in Sentry.
  returned: when sent
  type: str
endpoint:
  description: Where the event went, without the key.
  returned: always
  type: str
  sample: https://***@o123456.ingest.sentry.io/789
sdk:
  description: The sentry-sdk version that built the event, or C(none).
  returned: when sent
  type: str
sent:
  description: Whether an event was sent by this run (false when a recent one is on record).
  returned: always
  type: bool
recorded_at:
  description: When the event on record was accepted (epoch seconds).
  returned: when a record exists or was written
  type: float
"""

import hashlib
import json
import socket
import time

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.forge import records, sentry
    from ansible.module_utils.forge.errors import ForgeError
    from ansible.module_utils.forge.fsutil import write_atomic
    ENGINE_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported to the user below
    ENGINE_IMPORT_ERROR = exc


ARGUMENT_SPEC = dict(
    dsn=dict(type="str", required=True, no_log=True),
    event_message=dict(type="str", default="INFER FORGE test event (production checklist, Sentry error capturing)"),
    component=dict(type="str", default="ops-checklist"),
    environment=dict(type="str", default="production"),
    release=dict(type="str"),
    tags=dict(type="dict", default={}),
    timeout=dict(type="float", default=5.0),
    use_sdk=dict(type="bool", default=True),
    record_file=dict(type="path"),
    min_interval_days=dict(type="float", default=0),
)


class SentryEventModule:
    def __init__(self, module):
        self.module = module
        self.params = module.params

    def run(self):
        p = self.params
        try:
            dsn = sentry.Dsn(p["dsn"])
        except ForgeError as exc:
            return dict(failed=True, msg=exc.message, accepted=False, changed=False)
        host = socket.gethostname()
        tags = dict(p["tags"], component=p["component"], environment=p["environment"], host=host)
        contexts = {"infer_forge": {"purpose": "checklist test event", "host": host}}
        result = dict(endpoint=dsn.redacted(), accepted=False, changed=False, sent=False)
        fingerprint = hashlib.sha256(p["dsn"].encode()).hexdigest()[:16]
        record = self.recent_record(fingerprint)
        if record is not None:
            result.update(accepted=True, event_id=record.get("event_id"), recorded_at=record["accepted_at"])
            return result
        if self.module.check_mode:
            result["changed"] = True
            return result
        try:
            if p["use_sdk"] and _sdk_available():
                status, event_id, sdk = sentry.send_with_sentry_sdk(
                    p["dsn"], p["event_message"], tags, contexts, p["environment"], p["release"], p["timeout"])
            else:
                event = sentry.build_event(p["event_message"], tags=tags, contexts=contexts,
                                           environment=p["environment"], release=p["release"])
                status, event_id = sentry.send_event(p["dsn"], event, p["timeout"])
                sdk = "none"
        except ForgeError as exc:
            result.update(failed=True, msg=exc.message, changed=True)
            if "status" in exc.details:
                result["status"] = exc.details["status"]
            return result
        result.update(accepted=200 <= status < 300, status=status, event_id=event_id, sdk=sdk, changed=True, sent=True)
        if result["accepted"] and p["record_file"]:
            now = time.time()
            record = records.sentry_test_event_record(now, event_id, status, result["endpoint"], p["environment"],
                                                      fingerprint, host)
            try:
                write_atomic(p["record_file"], json.dumps(record, indent=2, sort_keys=True) + "\n", mode=0o644)
            except OSError as exc:
                return dict(result, failed=True, msg=f"event accepted but {p['record_file']} not written: {exc}")
            result["recorded_at"] = now
        return result

    def recent_record(self, fingerprint):
        """The recorded acceptance, when it is for this DSN and younger than min_interval_days."""
        p = self.params
        if not p["record_file"] or p["min_interval_days"] <= 0:
            return None
        try:
            record = records.read_sentry_test_event(p["record_file"])
        except ValueError:
            return None  # a damaged record is no evidence: send again
        if record is None:
            return None
        age = time.time() - record["accepted_at"]
        if record.get("dsn_fingerprint") != fingerprint or not 0 <= age < p["min_interval_days"] * 86400:
            return None
        return record


def _sdk_available():
    try:
        import sentry_sdk  # noqa: F401
    except ImportError:
        return False
    return True


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if ENGINE_IMPORT_ERROR is not None:
        module.fail_json(msg=f"forge engine not importable: {ENGINE_IMPORT_ERROR}")
    result = SentryEventModule(module).run()
    if result.pop("failed", False):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
