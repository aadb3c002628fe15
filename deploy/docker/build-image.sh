#!/bin/sh
# Build the fedprune image (deploy/Dockerfile) from this checkout.
#
#   deploy/docker/build-image.sh [TAG]      (default fedprune:latest)
#
# The build context is only what git tracks or would track (git ls-files: committed and new,
# not ignored files), streamed as a tar, so build directories and local outputs are never sent.
# Makes the base images first if they are missing (deploy/docker/base-image.sh). Extra
# arguments for docker build can be given in FP_DOCKER_BUILD_ARGS.
set -eu
cd "$(dirname "$0")/../.."
tag=${1:-fedprune:latest}
case "$tag" in -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; -*) echo "build-image.sh: unknown option '$tag'" >&2; exit 2 ;; esac

deploy/docker/base-image.sh
# The legacy builder: it needs no buildx plugin and works with every engine version.
export DOCKER_BUILDKIT=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT INT TERM
start=$(date +%s)
if git rev-parse --git-dir >/dev/null 2>&1; then
	# shellcheck disable=SC2086 # FP_DOCKER_BUILD_ARGS is a word list on purpose
	git ls-files -z --cached --others --exclude-standard |
		xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
		tar --null -T - -c |
		docker build --network host -f deploy/Dockerfile -t "$tag" ${FP_DOCKER_BUILD_ARGS:-} - \
			>"$log" 2>&1 || { tail -n 60 "$log" >&2; echo "build-image.sh: docker build failed" >&2; exit 1; }
else
	# shellcheck disable=SC2086
	docker build --network host -f deploy/Dockerfile -t "$tag" ${FP_DOCKER_BUILD_ARGS:-} . \
		>"$log" 2>&1 || { tail -n 60 "$log" >&2; echo "build-image.sh: docker build failed" >&2; exit 1; }
fi
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "build-image.sh: built $tag ($(echo "$size" | awk '{ printf "%.1f MB", $1 / 1e6 }')) in $(( $(date +%s) - start )) s"
