#!/usr/bin/env bash
# Builds a local Molecule base image (Debian with systemd as PID 1) with
# debootstrap + `docker import`, since no image registry is reachable.
# Usage: build.sh [bookworm|trixie]   (default bookworm: Debian 12, PostgreSQL 15;
#        trixie: Debian 13, PostgreSQL 17, the Docker CLI and Compose v2)
# The image is tagged with a hash of its recipe and suite; a second run with an
# unchanged recipe only re-tags it and returns in well under a second.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
suite=${1:-bookworm}
case "$suite" in
    bookworm) release=12 pg_major=15 ;;
    trixie) release=13 pg_major=17 ;;
    *) echo "unknown suite $suite; use bookworm or trixie" >&2; exit 2 ;;
esac
name=${MOLECULE_IMAGE_NAME:-infer-forge-debian$release}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
recipe_hash=$( (echo "$suite"; cat "$here/build.sh" "$here/packages.txt" "$here/packages-$suite.txt" "$here"/files/* \
    2>/dev/null) | sha256sum | cut -c1-12)
tag="$name:$recipe_hash"

if docker image inspect "$tag" >/dev/null 2>&1; then
    docker tag "$tag" "$name:latest"
    echo "image $tag is up to date"
    exit 0
fi

# packages.txt is for every suite ({pg} is the suite's PostgreSQL major);
# packages-<suite>.txt adds what only that suite has or needs.
packages=$(cat "$here/packages.txt" "$here/packages-$suite.txt" 2>/dev/null | grep -vE '^\s*(#|$)' |
    sed "s/{pg}/$pg_major/g" | tr '\n' ' ')
rootfs=$(mktemp -d /var/tmp/infer-forge-rootfs.XXXXXX)
# mktemp makes it 0700; it becomes the image's /, which every user must traverse.
chmod 0755 "$rootfs"

echo "building $tag with debootstrap (a few minutes on a cold cache)"
log="$rootfs.log"
# Never remove the tree while anything is still mounted inside it (/dev is bound there).
cleanup() { umount_all; grep -q " $rootfs/" /proc/mounts || rm -rf "$rootfs"; }
trap cleanup EXIT
umount_all() { for m in proc sys dev/pts dev; do umount -l "$rootfs/$m" 2>/dev/null || true; done; }
fail() { tail -30 "$log" >&2; echo "$1; full log in $log" >&2; exit 1; }

debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$log" 2>&1 || fail "debootstrap failed"
printf '%s\n' "deb $mirror $suite main" >"$rootfs/etc/apt/sources.list"
# Packages must not start services inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod +x "$rootfs/usr/sbin/policy-rc.d"
mount -t proc proc "$rootfs/proc"
mount --bind /dev "$rootfs/dev"
mount --bind /dev/pts "$rootfs/dev/pts"
chroot "$rootfs" apt-get update >>"$log" 2>&1 || fail "apt-get update in the image failed"
# shellcheck disable=SC2086  # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive chroot "$rootfs" apt-get install -y --no-install-recommends $packages \
    >>"$log" 2>&1 || fail "installing the image's packages failed"
# Debian's postinst skips the default cluster in a chroot; create it stopped.
[ -d "$rootfs/etc/postgresql/$pg_major/main" ] || chroot "$rootfs" pg_createcluster "$pg_major" main >>"$log" 2>&1 \
    || fail "creating the PostgreSQL cluster failed"
umount_all
rm -f "$rootfs/usr/sbin/policy-rc.d" "$log"
install -D -m 0644 "$here/files/redis-container.conf" \
    "$rootfs/etc/systemd/system/redis-server.service.d/10-container.conf"
# The operator Ansible connects as: unprivileged, sudo for the tasks that say
# `become: true`, as on the production hosts. Nothing connects as root.
chroot "$rootfs" useradd --create-home --shell /bin/bash deploy
install -m 0440 "$here/files/sudoers-deploy" "$rootfs/etc/sudoers.d/deploy"

# Services the tests start themselves must not start at boot: each scenario
# decides what runs. Masking getty and friends keeps systemd quiet in a container.
chroot "$rootfs" systemctl disable postgresql redis-server ssh prometheus prometheus-alertmanager \
    prometheus-node-exporter prometheus-postgres-exporter prometheus-redis-exporter \
    prometheus-blackbox-exporter >/dev/null 2>&1 || true
for unit in getty@tty1.service console-getty.service systemd-logind.service \
            systemd-udevd.service systemd-remount-fs.service sys-kernel-debug.mount; do
    chroot "$rootfs" systemctl mask "$unit" >/dev/null 2>&1 || true
done
# Debian creates a default cluster at install time; keep it, but let the roles
# decide whether it runs.
echo 'en_US.UTF-8 UTF-8' >"$rootfs/etc/locale.gen"
chroot "$rootfs" locale-gen >/dev/null 2>&1 || true
printf '%s\n' "deb $mirror $suite main" >"$rootfs/etc/apt/sources.list"
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
: >"$rootfs/etc/machine-id"

tar -C "$rootfs" -c . | docker import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change 'ENV container=docker' \
    - "$tag" >/dev/null
docker tag "$tag" "$name:latest"
echo "built $tag"
