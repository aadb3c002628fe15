#!/bin/sh
# Install what fedprune needs to build and test on Debian 12, with apt-get, as root (or via
# sudo). Idempotent: when every package is already present it prints nothing and exits 0.
#
#   deploy/install-deps.sh            build + test dependencies
#   deploy/install-deps.sh --runtime  only the shared libraries the binaries load
set -eu

BUILD_PKGS="build-essential meson ninja-build pkg-config protobuf-c-compiler
libuv1-dev libprotobuf-c-dev libssl-dev libsodium-dev libopenblas-dev libcjson-dev libinih-dev
libcmocka-dev clang libclang-rt-14-dev clang-format valgrind openssl ca-certificates"
RUNTIME_PKGS="libuv1 libprotobuf-c1 libssl3 libsodium23 libopenblas0-pthread libcjson1 libinih1"

case "${1:-}" in
--runtime) PKGS=$RUNTIME_PKGS ;;
"") PKGS=$BUILD_PKGS ;;
-h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "install-deps.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac

missing=""
for p in $PKGS; do
	# dpkg-query prints "install ok installed" only for a fully installed package (one line
	# per architecture when foreign architectures such as arm64 are enabled).
	if ! dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		exec sudo "$0" "$@"
	fi
	echo "install-deps.sh: missing packages:$missing; run as root to install them" >&2
	exit 1
fi

echo "install-deps.sh: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing >/dev/null
