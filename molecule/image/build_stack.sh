#!/usr/bin/env bash
# Builds infer-forge-stack, the image of the lab's Compose services (db:
# PostgreSQL 17, redis, the stand-in app), on the Debian 13 base image of
# build.sh. Tagged with a hash of its recipe, the base's tag and the files it
# copies in, so it is rebuilt only when one of them changes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
name=${STACK_IMAGE_NAME:-infer-forge-stack}
base=$(docker image inspect --format '{{range .RepoTags}}{{println .}}{{end}}' infer-forge-debian13:latest |
    grep -v ':latest$' | head -1)
[ -n "$base" ] || { echo "no infer-forge-debian13 image; run molecule/image/build.sh trixie first" >&2; exit 1; }
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$here/stack/Dockerfile" "$here/stack/postgres-entrypoint.sh" "$repo/scripts/standin_app.py" "$context/"
cp -r "$repo/module_utils/forge" "$context/forge"
find "$context/forge" -name __pycache__ -prune -exec rm -rf {} +
recipe_hash=$( (echo "$base"; cd "$context" && find . -type f | sort | xargs cat) | sha256sum | cut -c1-12)
tag="$name:$recipe_hash"
if docker image inspect "$tag" >/dev/null 2>&1; then
    docker tag "$tag" "$name:latest"
    echo "image $tag is up to date"
    exit 0
fi
# The classic builder: it uses the local base image as it is, and needs no buildx.
DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE=$base" -t "$tag" "$context" >/dev/null
docker tag "$tag" "$name:latest"
echo "built $tag"
