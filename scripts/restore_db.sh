#!/usr/bin/env bash
# Verify, restore or drill INFER FORGE backups on the host, without the Ansible
# controller: the same engine and checks as the forge_restore module.
#   scripts/restore_db.sh verify  [FILE|latest]
#   scripts/restore_db.sh restore FILE|latest TARGET_DB [--force [--drop-previous]] [--jobs N]
#   scripts/restore_db.sh drill   [FILE|latest] [--keep] [--check 'SELECT COUNT(*) FROM orders']
# Connection and BACKUP_DIR come from the runbook's environment variables or
# /etc/infer-forge/backup.env (BACKUP_CONFIG), like scripts/backup_db.sh.
set -euo pipefail
exec "$(dirname "$(readlink -f "$0")")/forge" "$@"
