#!/usr/bin/env bash
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
