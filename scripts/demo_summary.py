#!/usr/bin/env python3
"""Turn one ansible-playbook run (json callback output) into a few readable lines.

    demo_summary.py RUN.json [TASK-NAME ...]

Prints the recap (hosts, ok, changed, failed), then the message of every task
named on the command line (the tables and one-line summaries the playbooks
print), then the first failure, if any. Exits 1 when a host failed.
"""

import json
import sys


def main(path, wanted):
    with open(path, encoding="utf-8") as handle:
        run = json.load(handle)
    failures = []
    printed = []
    for play in run.get("plays", []):
        for task in play.get("tasks", []):
            # Tasks of roles are named "role : task".
            name = task["task"]["name"].split(" : ", 1)[-1]
            for host, result in task.get("hosts", {}).items():
                if result.get("failed") or result.get("unreachable"):
                    if not result.get("ignore_errors"):
                        failures.append(f"{host}: {name}: {result.get('msg', 'failed')}")
                if name in wanted and "msg" in result and not result.get("skipped"):
                    for item in result.get("results") or [result]:
                        message = item.get("msg")
                        if message is None or (name, str(message)) in printed:
                            continue
                        printed.append((name, str(message)))
                        text = "\n".join(message) if isinstance(message, list) else str(message)
                        for line in text.rstrip().splitlines():
                            print(f"   {line}")
    stats = run.get("stats", {})
    totals = {key: sum(host.get(key, 0) for host in stats.values()) for key in ("ok", "changed", "failures",
                                                                               "unreachable")}
    print(f"   recap: {len(stats)} host(s), ok={totals['ok']} changed={totals['changed']} "
          f"failed={totals['failures']} unreachable={totals['unreachable']}")
    for line in failures[:3]:
        print(f"   FAILED {line}")
    return 1 if totals["failures"] or totals["unreachable"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], set(sys.argv[2:])))
