#!/usr/bin/env bash
# Brings this machine to the state `make test` and `make demo` need:
#   Debian packages, a pinned .venv, a running Docker engine, the Molecule base image.
# Each step is skipped when already done, so a second run takes seconds.
# Usage: scripts/bootstrap.sh [packages] [venv] [docker] [image]   (default: all)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

APT_PACKAGES=(
    docker.io debootstrap
    postgresql postgresql-contrib redis-server
    cron logrotate openssl gzip isal pigz zstd rsync openssh-client openssh-server strace
    prometheus prometheus-alertmanager prometheus-blackbox-exporter
    python3 python3-venv python3-psycopg python3-cryptography python3-zstandard python3-redis
    python3-sentry-sdk
)

say() { printf '[bootstrap] %s\n' "$*"; }

need_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages: all present"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages; install them with: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Install without starting the packages' services (PostgreSQL, Redis, sshd,
    # Prometheus): tests start their own throwaway servers on loopback.
    local guard=/usr/sbin/policy-rc.d
    if [ ! -e "$guard" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod 0755 "$guard"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

need_venv() {
    local stamp=.venv/.requirements.sha256 want
    want=$(sha256sum requirements.txt | cut -d' ' -f1)
    if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        say ".venv: up to date"
        return
    fi
    say "creating .venv from requirements.txt (log: .venv/pip-install.log)"
    python3 -m venv .venv
    if ! .venv/bin/pip install --disable-pip-version-check -r requirements.txt >.venv/pip-install.log 2>&1; then
        grep -v '^WARNING: Location' .venv/pip-install.log | tail -20 >&2
        echo "pip install failed; full log in .venv/pip-install.log" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
}

need_docker() {
    if docker info >/dev/null 2>&1; then
        say "Docker engine: running"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "the Docker engine is not running and this user cannot start it; run: sudo systemctl start docker" >&2
        exit 1
    fi
    if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then
        :
    else
        say "starting dockerd (log: /var/log/infer-forge-dockerd.log)"
        nohup dockerd >/var/log/infer-forge-dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && { say "Docker engine: started"; return; }
        sleep 0.5
    done
    echo "dockerd did not come up within 30 s; see /var/log/infer-forge-dockerd.log" >&2
    exit 1
}

# Debian 12 and 13 Molecule images from one recipe, then the Compose stack's
# image (PostgreSQL 17, Redis, the stand-in app) on the Debian 13 one.
need_image() {
    local suite
    for suite in bookworm trixie; do
        if [ "$(id -u)" -ne 0 ] && ! docker image inspect "infer-forge-debian$([ $suite = bookworm ] && echo 12 || echo 13):latest" \
            >/dev/null 2>&1; then
            echo "building the Molecule images needs root (debootstrap); run: sudo make bootstrap" >&2
            exit 1
        fi
        bash molecule/image/build.sh "$suite" | sed 's/^/[bootstrap] /'
        [ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
    done
    bash molecule/image/build_stack.sh 2>&1 | grep -v -e DEPRECATED -e 'BuildKit is' -e 'environment-variable' -e '^ *$' |
        sed 's/^/[bootstrap] /'
    [ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(packages venv docker image)
for step in "${steps[@]}"; do
    case "$step" in
        packages) need_packages ;;
        venv) need_venv ;;
        docker) need_docker ;;
        image) need_image ;;
        *) echo "unknown bootstrap step: $step" >&2; exit 2 ;;
    esac
done
