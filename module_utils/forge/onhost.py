"""The on-host commands, as text the forge_engine module writes next to the engine.

scripts/ in the repository holds the same four files (the runbook calls
``./scripts/backup_db.sh``); tests/test_engine_install.py fails when they differ. They live here
as well because a module can carry only Python to a host: Ansible packs this package into every
module that imports it, so the installer needs no path outside its own payload.
"""

SCRIPTS = {
    'forge': r"""#!/usr/bin/env bash
# Runs the INFER FORGE engine on a host: forge {backup|verify|restore|drill|offsite|pitr|dr} ...
# backup_db.sh and restore_db.sh are the runbook-facing names for these commands.
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
    echo "ERROR: engine not found next to $0 (expected ../module_utils/forge or ../lib/forge)" >&2
    exit 1
fi
# Debian's python3 carries python3-psycopg and python3-cryptography.
python=${FORGE_PYTHON:-/usr/bin/python3}
[ -x "$python" ] || python=python3
# -P: never the current directory first on the import path (`sudo backup_db.sh` run from
# inside /backups must not import a forge/ the backup user planted there); -s: no user site.
PYTHONPATH="$engine_path${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -P -s -m forge.cli "$@"
""",
    'backup_db.sh': r"""#!/usr/bin/env bash
# INFER FORGE database backup, as in the runbook:
#   export POSTGRES_HOST=localhost POSTGRES_USER=infer POSTGRES_PASSWORD=... \
#          POSTGRES_DB=infer_forge BACKUP_DIR=/backups RETENTION_DAYS=30
#   ./scripts/backup_db.sh
# Prints "Starting backup: ...", "Backup complete: 2.3M", the retention lines,
# and exits 0 only when a complete, verified backup was written.
# Settings may also come from /etc/infer-forge/backup.env (or BACKUP_CONFIG);
# see docs/backup.md, "Environment variables", for every variable.
set -euo pipefail
exec "$(dirname "$(readlink -f "$0")")/forge" backup "$@"
""",
    'restore_db.sh': r"""#!/usr/bin/env bash
# Verify, restore or drill INFER FORGE backups on the host, without the Ansible
# controller: the same engine and checks as the forge_restore module.
#   scripts/restore_db.sh verify  [FILE|latest]
#   scripts/restore_db.sh restore FILE|latest TARGET_DB [--force [--drop-previous]] [--jobs N]
#   scripts/restore_db.sh drill   [FILE|latest] [--keep] [--check 'SELECT COUNT(*) FROM orders']
# Connection and BACKUP_DIR come from the runbook's environment variables or
# /etc/infer-forge/backup.env (BACKUP_CONFIG), like scripts/backup_db.sh.
set -euo pipefail
exec "$(dirname "$(readlink -f "$0")")/forge" "$@"
""",
    'offsite_copy.sh': r"""#!/usr/bin/env bash
# Copy encrypted backups, with their manifests, to the off-site target and
# verify them there (the runbook's NAS or a mounted encrypted USB disk).
#   OFFSITE_TARGET=infer@nas:/volume1/infer-forge scripts/offsite_copy.sh
#   OFFSITE_TARGET=/media/usb-safe/infer-forge     scripts/offsite_copy.sh [--check]
# Settings come from the environment or BACKUP_CONFIG, like scripts/backup_db.sh.
set -euo pipefail
exec "$(dirname "$(readlink -f "$0")")/forge" offsite "$@"
""",
}
