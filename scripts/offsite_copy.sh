#!/usr/bin/env bash
# Copy encrypted backups, with their manifests, to the off-site target and
# verify them there (the runbook's NAS or a mounted encrypted USB disk).
#   OFFSITE_TARGET=infer@nas:/volume1/infer-forge scripts/offsite_copy.sh
#   OFFSITE_TARGET=/media/usb-safe/infer-forge     scripts/offsite_copy.sh [--check]
# Settings come from the environment or BACKUP_CONFIG, like scripts/backup_db.sh.
set -euo pipefail
exec "$(dirname "$(readlink -f "$0")")/forge" offsite "$@"
