#!/usr/bin/env bash
# INFER FORGE database backup, as in the runbook:
#   export POSTGRES_HOST=localhost POSTGRES_USER=infer POSTGRES_PASSWORD=... \
#          POSTGRES_DB=infer_forge BACKUP_DIR=/backups RETENTION_DAYS=30
#   ./scripts/backup_db.sh
# Prints "Starting backup: ...", "Backup complete: 2.3M", the retention lines,
# and exits 0 only when a complete, verified backup was written.
# Settings may also come from /etc/infer-forge/backup.env (or BACKUP_CONFIG);
# see README "Backups" for every variable.
set -euo pipefail

here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
# In the repository the engine sits in ../module_utils; installed by the
# backup role it sits in ../lib.
for candidate in "$here/../module_utils" "$here/../lib"; do
    if [ -f "$candidate/forge/backup.py" ]; then
        engine_path=$(cd "$candidate" && pwd)
        break
    fi
done
if [ -z "${engine_path:-}" ]; then
    echo "ERROR: backup engine not found next to $0 (expected ../module_utils/forge or ../lib/forge)" >&2
    exit 1
fi
# Debian's python3 carries python3-psycopg and python3-cryptography.
python=${FORGE_PYTHON:-/usr/bin/python3}
[ -x "$python" ] || python=python3
PYTHONPATH="$engine_path${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m forge.cli backup "$@"
