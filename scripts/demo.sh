#!/usr/bin/env bash
# `make demo`: the whole story on this machine, in local containers.
# Four containers from the locally built images on their own Docker network:
#   lab-db (Debian 13, running the INFER FORGE stack in Docker Compose on this
#   machine's engine through its socket: db with PostgreSQL 17, redis, app),
#   lab-app (stand-in app serving the runbook's /health), lab-monitoring
#   (Prometheus, Alertmanager, dashboards, stand-in Sentry) and lab-nas (the
#   off-site target over SSH).
# Then deploy (with Barman streaming from the stack), health, a backup, the restore drill, an
# off-site copy, a PITR drill and the production checklist, each summed up in a few lines. Re-running reuses the
# containers; `make demo-down` removes them.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$repo/.venv/bin:$PATH" ANSIBLE_CONFIG="$repo/ansible.cfg"
export ANSIBLE_NOCOLOR=1 PY_COLORS=0
image=infer-forge-debian12:latest
db_image=infer-forge-debian13:latest
stack_project=forge-lab-db
network=infer-forge-lab
hosts=(lab-db lab-app lab-monitoring lab-nas)
logs="$repo/.cache/lab"

stack_containers() { docker ps -aq --filter "label=com.docker.compose.project=$stack_project"; }

if [ "${1:-}" = down ]; then
    containers=$(stack_containers)
    if [ -n "$containers" ]; then
        # shellcheck disable=SC2086  # one id per word
        docker rm -f $containers >/dev/null && echo "removed the Compose stack $stack_project"
    fi
    docker volume rm "${stack_project}_db-data" >/dev/null 2>&1 || true
    for host in "${hosts[@]}"; do
        docker rm -f "$host" >/dev/null 2>&1 && echo "removed container $host" || true
    done
    docker network rm "$network" >/dev/null 2>&1 && echo "removed network $network" || true
    rm -rf "$logs"
    exit 0
fi

mkdir -p "$logs"
step_number=0
step_times=()
# Each step's wall time, printed at the end: where the demo's minutes go.
finish_step() {
    [ "$step_number" -gt 0 ] && step_times+=("$(printf '%5d s  %d %s' $((SECONDS - step_started)) "$step_number" "$step_title")")
    return 0
}
step() {
    finish_step
    step_number=$((step_number + 1)); step_title=${*%%:*}; step_started=$SECONDS
    printf '\n== %d/9 %s\n' "$step_number" "$*"
}

# Run a playbook with the json callback; the full output stays in .cache/lab/<name>.json.
play() {
    local name=$1 playbook=$2; shift 2
    local tasks=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do tasks+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    local rc=0
    ANSIBLE_STDOUT_CALLBACK=json ansible-playbook "$playbook" "$@" >"$logs/$name.json" 2>"$logs/$name.err" || rc=$?
    python3 scripts/demo_summary.py "$logs/$name.json" "${tasks[@]}" || true
    echo "   full output: .cache/lab/$name.json"
    return $rc
}

step "Lab: four containers on Docker network $network"
docker network inspect "$network" >/dev/null 2>&1 || docker network create "$network" >/dev/null
for host in "${hosts[@]}"; do
    want=$image
    # The db host runs the Compose stack and Barman; the NAS, rest-server for the PITR copy:
    # both Debian 13 only.
    case "$host" in lab-db | lab-nas) want=$db_image ;; esac
    # A container of an older lab (another image) is made anew rather than reused.
    if docker container inspect "$host" >/dev/null 2>&1 &&
        [ "$(docker container inspect -f '{{.Config.Image}}' "$host")" != "$want" ]; then
        docker rm -f "$host" >/dev/null
    fi
    if docker container inspect "$host" >/dev/null 2>&1; then
        docker start "$host" >/dev/null
        state=reused
    else
        extra=()
        # The database host drives this machine's Docker engine (Docker outside of Docker).
        [ "$host" = lab-db ] && extra=(-v /var/run/docker.sock:/var/run/docker.sock)
        docker run -d --name "$host" --hostname "$host" --network "$network" --label infer-forge-lab=1 \
            --cap-add SYS_ADMIN --cgroupns host -v /sys/fs/cgroup:/sys/fs/cgroup:rw "${extra[@]}" \
            --tmpfs /run --tmpfs /run/lock --tmpfs /tmp "$want" /lib/systemd/systemd >/dev/null
        state=created
    fi
    # systemd is up when it answers; "degraded" is fine for the lab.
    for _ in $(seq 1 60); do
        docker exec "$host" systemctl is-system-running 2>/dev/null | grep -qE 'running|degraded' && break
        sleep 1
    done
    printf '   %-15s %-8s %s\n' "$host" "$state" \
        "$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$host")"
done

step "Stand-ins: the Compose stack on lab-db (PostgreSQL 17 with customers and orders, Redis, app), the app's /health, Sentry (playbooks/lab_services.yml)"
play lab_services playbooks/lab_services.yml
docker ps --filter "label=com.docker.compose.project=$stack_project" \
    --format '   {{.Label "com.docker.compose.service"}}\t{{.Names}}\t{{.Image}}\t{{.Status}}' | sort

step "Deploy: ansible-playbook playbooks/deploy.yml (every role on its group)"
play deploy playbooks/deploy.yml

step "Health: ansible-playbook playbooks/health.yml"
play health playbooks/health.yml "Show the health of every host"

step "Backup: ansible-playbook playbooks/backup.yml (encrypted, manifest, checksum, metrics)"
play backup playbooks/backup.yml "Show what each backup wrote"

step "Restore drill: ansible-playbook playbooks/restore_drill.yml (scratch database, exact row counts)"
play drill playbooks/restore_drill.yml "Summarize the drill"

step "Off-site: ansible-playbook playbooks/offsite.yml (rsync over SSH to lab-nas, verified there)"
play offsite playbooks/offsite.yml "Summarize the off-site copies"
docker exec lab-nas sh -c 'ls -l /srv/infer-forge-offsite/backups | tail -n +2 | tail -3' | sed 's/^/   lab-nas: /'

step "PITR: ansible-playbook playbooks/pitr_drill.yml (a restore point with exact counts, recovered into a scratch cluster) and playbooks/pitr_offsite.yml (restic, encrypted, to lab-nas)"
play pitr_drill playbooks/pitr_drill.yml "Show the drill"
play pitr_offsite playbooks/pitr_offsite.yml "Show the off-site copy"

step "Checklist: ansible-playbook playbooks/checklist.yml (the runbook's 11 items, and 12: point-in-time recovery)"
play checklist playbooks/checklist.yml "Show the checklist" "Fail when an item failed in production"

finish_step
echo
echo "Step times (wall, $SECONDS s in all):"
printf '   %s\n' "${step_times[@]}"

monitoring_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' lab-monitoring)
cat <<EOT

Where to look next:
   reports/checklist-lab.md, .json, .junit.xml   the checklist report
   http://$monitoring_ip:9090/targets              Prometheus (alerts: /alerts), Alertmanager on :9093
   docker exec -it lab-db bash                      then: ls -l /backups; cat /etc/cron.d/infer-forge-backup
   .cache/lab/*.json                                every playbook's full output
Run \`make demo\` again to reuse the lab (a new backup, drill and copy); \`make demo-down\` removes it.
EOT
