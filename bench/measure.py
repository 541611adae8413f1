"""Run one engine command in this process and report its peak memory.

    python3 measure.py backup      (configured by the same environment as backup_db.sh)

Prints ``peak_rss_kb=N`` on stderr after the command: VmHWM of this process,
which is the engine's own peak resident memory (pg_dump is a separate process).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "module_utils"))

from forge import cli  # noqa: E402


def peak_rss_kb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


if __name__ == "__main__":
    code = cli.main(sys.argv[1:])
    print(f"peak_rss_kb={peak_rss_kb()}", file=sys.stderr)
    sys.exit(code)
