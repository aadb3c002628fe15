#!/bin/sh
# Command-line conventions of every program: --help and --version exit 0 and print to stdout;
# an unknown flag, a missing value or a bad value prints ONE line naming it and exits 2.
set -u
fail=0
check() { # expected_status description command...
	want=$1; what=$2; shift 2
	out=$("$@" 2>/tmp/fp-cli-err.$$); got=$?
	err=$(cat /tmp/fp-cli-err.$$)
	if [ "$got" -ne "$want" ]; then
		echo "FAIL: $what: exit $got, want $want (stderr: $err)"; fail=1; return
	fi
	if [ "$want" -eq 2 ]; then
		lines=$(printf '%s\n' "$err" | wc -l)
		if [ "$lines" -ne 1 ] || [ -z "$err" ]; then
			echo "FAIL: $what: want one line on stderr, got: $err"; fail=1; return
		fi
		case "$err" in *"$NEEDLE"*) ;; *) echo "FAIL: $what: '$err' lacks '$NEEDLE'"; fail=1; return;; esac
	fi
	echo "ok: $what"
}
for bin in "$@"; do
	name=$(basename "$bin")
	check 0 "$name --help" "$bin" --help
	case "$out" in *Usage:*) ;; *) echo "FAIL: $name --help printed no usage"; fail=1;; esac
	check 0 "$name --version" "$bin" --version
	case "$out" in *"$name (fedprune)"*) ;; *) echo "FAIL: $name --version: $out"; fail=1;; esac
	NEEDLE="--no-such-flag"; check 2 "$name unknown long flag" "$bin" --no-such-flag
	NEEDLE="-Z"; check 2 "$name unknown short flag" "$bin" -Z
done
# Daemons: missing value, bad value, bad config file.
for bin in "$1" "$2"; do
	name=$(basename "$bin")
	NEEDLE="--config"; check 2 "$name --config without value" "$bin" --config
	NEEDLE="loud"; check 2 "$name bad --log-level" "$bin" --log-level loud
	NEEDLE="extra"; check 2 "$name stray argument" "$bin" extra
	cfg=/tmp/fp-cli-cfg.$$
	printf '[log]\nlevel = chatty\n' > "$cfg"
	check 1 "$name bad config value" "$bin" -c "$cfg" --check-config
	case "$err" in *"$cfg:2: level = 'chatty'"*) ;; *) echo "FAIL: $name config error: $err"; fail=1;; esac
	printf '[log]\nlevel = warn\n' > "$cfg"
	check 0 "$name good config" "$bin" -c "$cfg" --check-config
	rm -f "$cfg"
done
# The tool: unknown command, missing command.
NEEDLE="frobnicate"; check 2 "fedprune unknown command" "$3" frobnicate
NEEDLE="missing command"; check 2 "fedprune without command" "$3"
rm -f /tmp/fp-cli-err.$$
exit $fail
