#!/bin/sh
# Cross build for 64-bit ARM (deploy/cross/aarch64-linux-gnu.ini) with -Dwerror=true, then the
# unit suite run under qemu user-mode emulation. CI runs it after tests/run-all.sh.
#
# Needs root on Debian 12: adds the arm64 architecture to dpkg, installs the cross compiler,
# the arm64 development packages and qemu-user-static with apt-get (skipped when present), and
# registers qemu for aarch64 programs in binfmt_misc (the daemon tests exec the daemons
# directly, so the exe_wrapper alone is not enough). Build directory: build-aarch64 (or
# FP_CROSS_BUILD_DIR). Ends with the line "cross: N passed, N failed".
set -eu
cd "$(dirname "$0")/../.."
build=${FP_CROSS_BUILD_DIR:-build-aarch64}
prog=tests/cross/run.sh
start=$(date +%s)
say() { printf '%s: [%4ss] %s\n' "$prog" "$(( $(date +%s) - start ))" "$*"; }
die() { say "FAIL: $*"; echo "cross: 0 passed, 1 failed"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (dpkg --add-architecture, apt-get, binfmt_misc)"

PKGS="gcc-aarch64-linux-gnu qemu-user-static binfmt-support protobuf-c-compiler meson
ninja-build pkg-config libc6-dev:arm64 libuv1-dev:arm64 libprotobuf-c-dev:arm64 libssl-dev:arm64
libsodium-dev:arm64 libopenblas-dev:arm64 libcjson-dev:arm64 libinih-dev:arm64
libcmocka-dev:arm64"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	say "installing$missing"
	dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null || die "apt-get update failed"
	# shellcheck disable=SC2086 # a word list
	apt-get install -y -qq --no-install-recommends $missing >/tmp/fp-cross-apt.$$ 2>&1 ||
		{ tail -n 20 /tmp/fp-cross-apt.$$; rm -f /tmp/fp-cross-apt.$$; die "apt-get install failed"; }
	rm -f /tmp/fp-cross-apt.$$
fi

# aarch64 programs run through qemu when exec'd (binfmt_misc).
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
	mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null ||
		die "binfmt_misc cannot be mounted: aarch64 programs cannot be exec'd"
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 ||
	die "cannot register qemu-aarch64 in binfmt_misc"

if [ -d "$build" ]; then
	meson setup --reconfigure "$build" --cross-file deploy/cross/aarch64-linux-gnu.ini \
		-Dwerror=true >"/tmp/fp-cross-setup.$$" 2>&1 || { tail -n 30 "/tmp/fp-cross-setup.$$"; die "meson setup"; }
else
	meson setup "$build" --cross-file deploy/cross/aarch64-linux-gnu.ini -Dwerror=true \
		>"/tmp/fp-cross-setup.$$" 2>&1 || { tail -n 30 "/tmp/fp-cross-setup.$$"; die "meson setup"; }
fi
rm -f "/tmp/fp-cross-setup.$$"
ninja -C "$build" >"$build/ninja.log" 2>&1 || { tail -n 60 "$build/ninja.log"; die "cross build"; }
for b in server/fedprune-server client/fedprune-client client/fedprune; do
	file -b "$build/$b" 2>/dev/null | grep -q 'ARM aarch64' || [ ! -x /usr/bin/file ] ||
		die "$build/$b is not an aarch64 program"
done
say "cross build done; unit tests under qemu-aarch64"
"$build/client/fedprune" --version | head -n 1
meson test -C "$build" --suite unit --print-errorlogs --num-processes "$(nproc 2>/dev/null || echo 2)" \
	-t 4 >"$build/test.log" 2>&1 || true
tail -n 12 "$build/test.log"
n_ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$build/test.log" | tail -n 1)
n_fail=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$build/test.log" | tail -n 1)
n_to=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$build/test.log" | tail -n 1)
n_ok=${n_ok:-0}
n_fail=$(( ${n_fail:-0} + ${n_to:-0} ))
[ "$n_ok" -gt 0 ] || n_fail=$((n_fail + 1))
say "done"
echo "cross: $n_ok passed, $n_fail failed"
[ "$n_fail" -eq 0 ]
