#!/bin/sh
# Every test of fedprune, as CI runs it (.ci/run calls exactly this). Works on a fresh Debian 12
# machine: installs what it needs first (root or sudo). Stages:
#   1. format and banned-function checks over the tracked C sources
#   2. release-like build with -Werror, every meson test (unit, cli, fuzz corpus replay, ...)
#   3. the unit suite again under AddressSanitizer + UndefinedBehaviorSanitizer
#   4. the unit suite under valgrind (FP_VALGRIND=0 skips it)
#   5. each libFuzzer target for FP_FUZZ_SECONDS seconds (default 30; 0 skips), clang only
# Ends with one line "N passed, N failed" summing every stage; exit status 0 only if all passed.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)

"$top/deploy/install-deps.sh"

FUZZ_SECONDS=${FP_FUZZ_SECONDS:-30}
VALGRIND=${FP_VALGRIND:-1}
JOBS=$(nproc 2>/dev/null || echo 2)
passed=0
failed=0
failures=""

stage() { printf '\n=== %s\n' "$*"; }
ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); failures="$failures
  $1"; }

# meson test summary lines "Ok: N" / "Fail: N" / "Timeout: N" are added to the totals.
count_meson() { # logfile stage-name
	n_ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$1" | tail -n 1)
	n_fail=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$1" | tail -n 1)
	n_to=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$1" | tail -n 1)
	n_ok=${n_ok:-0}
	n_fail=$(( ${n_fail:-0} + ${n_to:-0} ))
	passed=$((passed + n_ok))
	failed=$((failed + n_fail))
	if [ "$n_fail" -gt 0 ] || [ "$n_ok" -eq 0 ]; then
		[ "$n_ok" -eq 0 ] && [ "$n_fail" -eq 0 ] && failed=$((failed + 1))
		failures="$failures
  $2: $(grep -E '^ *[0-9]+/[0-9]+ .*(FAIL|TIMEOUT)' "$1" | sed 's/  */ /g' | tr '\n' ';')"
	fi
}

sources() {
	if git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
		git -C "$top" ls-files '*.c' '*.h'
	else
		find common server client proto tests -name '*.[ch]'
	fi
}

stage "format (clang-format --dry-run --Werror)"
unformatted=""
for f in $(sources); do
	clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || unformatted="$unformatted $f"
done
if [ -z "$unformatted" ]; then
	echo "all C sources formatted"
	ok
else
	echo "not formatted (run: clang-format -i$unformatted)"
	bad "format:$unformatted"
fi

stage "banned functions"
banned=$(sources | xargs grep -nE '\<(atoi|atol|atof|sprintf|vsprintf|strcpy|strcat|gets|strtok)\s*\(' || true)
if [ -z "$banned" ]; then
	echo "none"
	ok
else
	echo "$banned"
	bad "banned functions"
fi

stage "build (-Dwerror=true) and meson test"
if [ -d build-ci ]; then
	meson setup --reconfigure build-ci -Dwerror=true >/dev/null
else
	meson setup build-ci -Dwerror=true -Dfuzz=disabled >/dev/null
fi
if ninja -C build-ci >build-ci/ninja.log 2>&1; then
	meson test -C build-ci --print-errorlogs --num-processes "$JOBS" >build-ci/test.log 2>&1 || true
	cat build-ci/test.log
	count_meson build-ci/test.log "meson test"
else
	tail -n 60 build-ci/ninja.log
	bad "build"
fi

stage "unit tests under AddressSanitizer + UndefinedBehaviorSanitizer"
if [ ! -d build-asan ]; then
	meson setup build-asan -Dwerror=true -Db_sanitize=address,undefined -Db_lundef=false \
		-Dfuzz=disabled -Dbuildtype=debug >/dev/null
fi
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
if ninja -C build-asan >build-asan/ninja.log 2>&1; then
	meson test -C build-asan --suite unit --suite fuzz --print-errorlogs -t 4 \
		--num-processes "$JOBS" >build-asan/test.log 2>&1 || true
	tail -n 30 build-asan/test.log
	count_meson build-asan/test.log "sanitizers"
else
	tail -n 60 build-asan/ninja.log
	bad "sanitizer build"
fi

if [ "$VALGRIND" != 0 ]; then
	stage "unit tests under valgrind (meson test --setup=valgrind)"
	meson test -C build-ci --setup=valgrind --suite unit --no-suite slow --print-errorlogs \
		--num-processes "$JOBS" >build-ci/valgrind.log 2>&1 || true
	tail -n 30 build-ci/valgrind.log
	count_meson build-ci/valgrind.log "valgrind"
fi

if [ "$FUZZ_SECONDS" != 0 ] && command -v clang >/dev/null 2>&1; then
	stage "libFuzzer targets, ${FUZZ_SECONDS}s each"
	if [ ! -d build-fuzz ]; then
		CC=clang meson setup build-fuzz -Dfuzz=enabled -Dtests=disabled >/dev/null
	fi
	if ninja -C build-fuzz >build-fuzz/ninja.log 2>&1; then
		for fz in build-fuzz/tests/fuzz/fuzz_*; do
			case "$fz" in *-replay|*.p) continue ;; esac
			[ -x "$fz" ] || continue
			name=${fz##*/fuzz_}
			work=$(mktemp -d)
			cp -r "tests/fuzz/corpus/$name/." "$work/" 2>/dev/null || true
			if "$fz" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=10 \
				-artifact_prefix="build-fuzz/crash-$name-" "$work" \
				>"build-fuzz/$name.log" 2>&1; then
				echo "fuzz $name: $(grep -c . "$work"/* 2>/dev/null | wc -l) corpus files, no crash"
				ok
			else
				tail -n 40 "build-fuzz/$name.log"
				bad "fuzz $name (see build-fuzz/$name.log)"
			fi
			rm -rf "$work"
		done
	else
		tail -n 60 build-fuzz/ninja.log
		bad "fuzz build"
	fi
fi

stage "summary"
[ -n "$failures" ] && printf 'failed:%s\n' "$failures"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
