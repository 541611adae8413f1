#!/usr/bin/env bash
# `make demo`: what this repository does, on this machine, in a minute.
# A throwaway PostgreSQL on loopback with the runbook's data (customers, orders),
# an encrypted backup through playbooks/backup.yml, and proof that it restores
# with the runbook's own manual commands. `make demo-down` removes it all.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$repo/.venv/bin:$PATH" ANSIBLE_CONFIG="$repo/ansible.cfg"
state="$repo/.cache/demo"

if [ "${1:-}" = down ]; then
    python scripts/demo_db.py stop "$state" 2>/dev/null || true
    rm -rf "$state"
    echo "demo removed (.cache/demo)"
    exit 0
fi

step() { printf '\n== %s\n' "$*"; }

step "1/4 Database: a throwaway PostgreSQL 15 on 127.0.0.1 with sample customers and orders"
eval "$(python scripts/demo_db.py start "$state")"
password=$(cd tests && python -c 'import servers; print(servers.APP_PASSWORD)')
install -d -m 0700 "$state/secrets" "$state/metrics"
printf 'demo backup passphrase\n' >"$state/secrets/backup.pass"
chmod 0600 "$state/secrets/backup.pass"
python - "$state" "$PGPORT" "$password" <<'PY'
import json, os, sys
state, port, password = sys.argv[1], int(sys.argv[2]), sys.argv[3]
path = os.path.join(state, "secrets", "vars.json")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as handle:
    json.dump({"backup_postgres_host": "127.0.0.1", "backup_postgres_port": port,
               "backup_postgres_user": "infer", "backup_postgres_password": password,
               "backup_dir": os.path.join(state, "backups"), "backup_databases": ["infer_forge"],
               "backup_encrypt": True, "backup_passphrase": "demo backup passphrase",
               "backup_textfile_dir": os.path.join(state, "metrics"), "backup_environment": "lab"}, handle)
PY
echo "   PostgreSQL on 127.0.0.1:$PGPORT, database infer_forge, role infer (password only in $state/secrets)"

step "2/4 Backup: ansible-playbook playbooks/backup.yml (encrypted, manifest, checksum, metrics)"
ansible-playbook playbooks/backup.yml -e "@$state/secrets/vars.json" | grep -vE '^\s*$' | sed 's/^/   /'
newest=$(ls -1t "$state"/backups/*.sql.gz.enc | head -1)
python - "$newest" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + ".manifest.json"))
print(f"   file      {m['file']} ({m['size']} bytes, sha256 {m['sha256'][:16]}...)")
print(f"   snapshot  {m['tables']} tables, {m['rows']} rows: " +
      ", ".join(f"{t}={n}" for t, n in sorted(m['snapshot_row_counts'].items())))
print(f"   crypto    {m['encryption']['cipher']} pbkdf2/{m['encryption']['kdf_iterations']} + HMAC in manifest")
PY

step "3/4 Restore: the runbook's manual commands on our file (createdb, openssl | gunzip | psql)"
export PGHOST=127.0.0.1 PGPORT PGUSER=infer PGPASSWORD="$password"
dropdb --if-exists infer_forge_restore 2>/dev/null
createdb infer_forge_restore
openssl enc -aes-256-cbc -d -pbkdf2 -pass "file:$state/secrets/backup.pass" -in "$newest" \
    | gunzip | psql -q -v ON_ERROR_STOP=1 -d infer_forge_restore >/dev/null
restored=$(psql -tA -d infer_forge_restore -c "SELECT COUNT(*) FROM orders;")
expected=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['snapshot_row_counts']['public.orders'])" "$newest.manifest.json")
echo "   SELECT COUNT(*) FROM orders -> $restored (manifest says $expected)"
[ "$restored" = "$expected" ] || { echo "   MISMATCH"; exit 1; }
(cd "$(dirname "$newest")" && sha256sum -c "$(basename "$newest").sha256" | sed 's/^/   sha256sum -c: /')
dropdb infer_forge_restore

step "4/4 Metrics for Prometheus (node_exporter textfile collector)"
grep -hE '^infer_forge_backup_(last_run_success|size_bytes|retained_backups)' "$state"/metrics/*.prom | sed 's/^/   /'

printf '\nDone. Backups are in %s; run `make demo` again to add one, `make demo-down` to remove everything.\n' "$state/backups"
