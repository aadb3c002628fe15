#!/bin/sh
# The container deployment, end to end (CI runs it after tests/run-all.sh): a Docker engine
# (started here if none answers), the base images made offline from the Debian archive
# (deploy/docker/base-image.sh), the image (deploy/Dockerfile), then deploy/docker-compose.yml
# with a server and three clients running one federated round. Passes when every client exited
# 0 and the published model directory holds config.json, the safetensors weights, mask.fpmask
# and report.json naming 3 participants. Everything it created is removed on exit, pass or
# fail; on failure the logs of every container are printed first.
#
# Environment: FP_DOCKER_TIMEOUT  seconds to wait for the round (default 900)
#              FP_DOCKER_KEEP=1   keep the images it built (faster reruns; not for CI)
#              FP_COMPOSE         compose command (default: "docker compose" if it works,
#                                 else docker-compose)
# Needs root (it may install docker.io, docker-compose and debootstrap with apt-get and start
# dockerd). Ends with the line "docker: N passed, N failed".
set -eu
cd "$(dirname "$0")/../.."
top=$(pwd)
prog=tests/docker/run.sh
timeout_s=${FP_DOCKER_TIMEOUT:-900}
project=fpci$$
tag=fedprune:ci-$$
work=$(mktemp -d /var/tmp/fedprune-docker.XXXXXX)
started_dockerd=""
made_base=0
status=1
start=$(date +%s)

say() { printf '%s: [%4ss] %s\n' "$prog" "$(( $(date +%s) - start ))" "$*"; }
die() { say "FAIL: $*"; exit 1; }

compose() {
	FP_IMAGE=$tag FP_PUBLISH_DIR=$work/published $COMPOSE -p "$project" \
		-f "$top/deploy/docker-compose.yml" "$@"
}

cleanup() {
	trap - EXIT INT TERM
	if [ -n "${COMPOSE:-}" ] && docker info >/dev/null 2>&1; then
		if [ "$status" -ne 0 ]; then
			echo "---- logs of every container ----"
			compose ps -a 2>&1 || compose ps 2>&1 || true
			compose logs --no-color --timestamps 2>&1 | tail -n 400 || true
			echo "---- end of logs ----"
		fi
		compose down -v --remove-orphans -t 20 >/dev/null 2>&1 || true
		if [ "${FP_DOCKER_KEEP:-0}" != 1 ]; then
			docker image rm -f "$tag" >/dev/null 2>&1 || true
			docker image prune -f >/dev/null 2>&1 || true
			if [ "$made_base" = 1 ]; then
				docker image rm -f fedprune/bookworm:base fedprune/bookworm:slim \
					>/dev/null 2>&1 || true
			fi
		fi
	fi
	if [ -n "$started_dockerd" ]; then
		kill "$started_dockerd" 2>/dev/null || true
		i=0
		while kill -0 "$started_dockerd" 2>/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
		[ "$status" -eq 0 ] || { echo "---- dockerd log (tail) ----"; tail -n 30 "$work/dockerd.log"; }
	fi
	rm -rf "$work"
	if [ "$status" -eq 0 ]; then
		echo "docker: 1 passed, 0 failed"
	else
		echo "docker: 0 passed, 1 failed"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

[ "$(id -u)" -eq 0 ] || die "needs root (dockerd, debootstrap)"

# 1. Tools: Docker engine, compose, debootstrap (Debian packages).
missing=""
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v docker-compose >/dev/null 2>&1 || missing="$missing docker-compose"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
if [ -n "$missing" ]; then
	say "installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	# shellcheck disable=SC2086 # a word list
	apt-get install -y -qq --no-install-recommends $missing >"$work/apt.log" 2>&1 ||
		{ tail -n 20 "$work/apt.log"; die "apt-get install$missing failed"; }
fi

# 2. The engine: this machine has no bridge/iptables set-up, so dockerd runs without them
#    (containers use user-defined networks) and with the vfs storage driver (works anywhere).
if ! docker info >/dev/null 2>&1; then
	say "starting dockerd"
	dockerd --iptables=false --bridge=none --storage-driver=vfs >"$work/dockerd.log" 2>&1 &
	started_dockerd=$!
	i=0
	until docker info >/dev/null 2>&1; do
		kill -0 "$started_dockerd" 2>/dev/null || { tail -n 30 "$work/dockerd.log"; die "dockerd exited"; }
		i=$((i + 1))
		[ $i -le 60 ] || { tail -n 30 "$work/dockerd.log"; die "dockerd did not answer within 60 s"; }
		sleep 1
	done
fi
if [ -n "${FP_COMPOSE:-}" ]; then
	COMPOSE=$FP_COMPOSE
elif docker compose version >/dev/null 2>&1; then
	COMPOSE="docker compose"
else
	COMPOSE=docker-compose
fi
say "engine $(docker version -f '{{.Server.Version}}'), compose: $COMPOSE"
compose config -q || die "deploy/docker-compose.yml does not validate"

# 3. Images.
docker image inspect fedprune/bookworm:base >/dev/null 2>&1 || made_base=1
deploy/docker/base-image.sh || die "base images"
say "base images ready"
deploy/docker/build-image.sh "$tag" || die "image build"
say "image $tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
for b in fedprune-server fedprune-client fedprune; do
	docker run --rm --network none "$tag" "$b" --version >/dev/null || die "$b does not run in the image"
done
[ "$(docker run --rm --network none "$tag" id -u):$(docker run --rm --network none "$tag" id -g)" = 10001:10001 ] ||
	die "the image does not run as uid/gid 10001"

# 4. The federation.
mkdir -p "$work/published"
chown 10001:10001 "$work/published"
compose up -d >"$work/up.log" 2>&1 || { cat "$work/up.log"; die "compose up failed"; }
say "federation up; waiting for the round (at most ${timeout_s} s)"
deadline=$(( $(date +%s) + timeout_s ))
state() { # service -> "status exitcode restarts"
	id=$(compose ps -q "$1" 2>/dev/null | head -n 1)
	[ -n "$id" ] || { echo "missing 0 0"; return; }
	docker inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$id"
}
while :; do
	done_n=0
	for c in client1 client2 client3; do
		# shellcheck disable=SC2046 # three words on purpose
		set -- $(state "$c")
		case "$1 $2" in
		"exited 0") done_n=$((done_n + 1)) ;;
		exited*|restarting*) [ "$3" -lt 3 ] || die "$c failed (exit $2, restarted $3 times)" ;;
		esac
	done
	# shellcheck disable=SC2046
	set -- $(state server)
	case "$1" in exited|dead) die "the server stopped (exit $2)" ;; esac
	[ "$done_n" -eq 3 ] && [ -f "$work/published/round-1/report.json" ] && break
	[ "$(date +%s)" -lt "$deadline" ] ||
		die "the round did not finish within ${timeout_s} s ($done_n of 3 clients done)"
	sleep 5
done
say "round finished: 3 clients exited 0"

# 5. The published model: <output>/round-1/.
pub=$work/published/round-1
for f in config.json mask.fpmask report.json; do
	[ -s "$pub/$f" ] || die "published directory lacks $f: $(ls "$pub")"
done
ls "$pub"/*.safetensors >/dev/null 2>&1 || die "published directory has no .safetensors: $(ls "$pub")"
/usr/bin/python3 - "$pub/report.json" <<'PY' || die "report.json check failed"
import json, sys
r = json.load(open(sys.argv[1]))
parts = r.get("participants")
if not isinstance(parts, list) or len(parts) != 3:
    sys.exit("report.json: participants %r, want a list of 3" % (parts,))
ids = sorted(p.get("id") for p in parts)
if ids != ["client1", "client2", "client3"]:
    sys.exit("report.json: participants %r, want client1..3" % (ids,))
if r.get("round", {}).get("participants") != 3:
    sys.exit("report.json: round.participants %r" % (r.get("round", {}).get("participants"),))
sp = r.get("overall", {}).get("sparsity")
if not isinstance(sp, (int, float)) or abs(sp - 0.5) > 0.01:
    sys.exit("report.json: overall sparsity %r, want 0.5" % (sp,))
print("report.json: participants client1, client2, client3; sparsity %.4f" % sp)
PY
hc=$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q server)")
[ "$hc" = healthy ] || [ "$hc" = starting ] || die "server health check: $hc"
say "published: $(ls "$pub" | tr '\n' ' ')(server health: $hc)"
status=0
