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
# The example configurations in deploy/config/ are the daemons' own --print-config-template
# output for an install with sysconfdir /etc and localstatedir /var (the build's directories,
# read from the [tls] ca and state_dir defaults, are written as /etc/fedprune and /var/lib), so
# they cannot drift from the key tables.
examples=$(dirname "$0")/../../deploy/config
for pair in "$1:server.ini" "$2:client.ini"; do
	bin=${pair%%:*}
	file=$examples/${pair#*:}
	name=$(basename "$bin")
	confdir=$("$bin" --print-config | sed -n 's|^;ca = \(.*\)/tls/ca\.crt$|\1|p')
	gen=/tmp/fp-cli-tmpl.$$
	if [ -z "$confdir" ]; then
		echo "FAIL: $name --print-config shows no [tls] ca default"; fail=1; continue
	fi
	if ! "$bin" --print-config-template >"$gen.raw"; then
		echo "FAIL: $name --print-config-template exited non-zero"; fail=1; continue
	fi
	statedir=$("$bin" --print-config | sed -n 's|^;state_dir = \(.*\)/fedprune-[a-z]*$|\1|p')
	if [ -n "$statedir" ]; then
		sed "s|$confdir/|/etc/fedprune/|g; s|$statedir/fedprune-|/var/lib/fedprune-|g" \
			"$gen.raw" >"$gen"
	else
		sed "s|$confdir/|/etc/fedprune/|g" "$gen.raw" >"$gen"
	fi
	if [ ! -f "$file" ]; then
		echo "FAIL: $file is missing"; fail=1
	elif ! diff -u "$file" "$gen" >/tmp/fp-cli-diff.$$; then
		echo "FAIL: $file differs from '$name --print-config-template' (regenerate it):"
		head -n 40 /tmp/fp-cli-diff.$$; fail=1
	else
		echo "ok: $file equals $name --print-config-template"
	fi
	# The template is a valid configuration file: with every required key set it loads.
	req=$(grep -c '^;   .*required: no default$' "$gen")
	keys=$(grep -c '^;[a-z_0-9]* =' "$gen")
	nhelp=$("$bin" --print-config | grep -c '^;[a-z_0-9]* =')
	if [ "$keys" -ne "$nhelp" ] || [ "$keys" -eq 0 ]; then
		echo "FAIL: $name template lists $keys keys, --print-config $nhelp"; fail=1
	fi
	# Every key uncommented (required text keys given a value) must load: each printed
	# default parses back.
	awk '/^;   text: .*required: no default$/ { req = 1; print; next }
		/^;[a-z_0-9]* =/ { sub(/^;/, ""); if (req) $0 = $0 " x"; req = 0; print; next }
		{ req = 0; print }' "$gen.raw" >"$gen.all"
	check 0 "$name template with every key set parses ($keys keys, $req required)" \
		"$bin" -c "$gen.all" --check-config
	rm -f "$gen.all"
	rm -f "$gen" "$gen.raw" /tmp/fp-cli-diff.$$
done
# fedprune split: every input byte in exactly one output, deterministic per seed, Dirichlet
# with a small alpha more skewed than IID, usage errors exit 2.
demo=$(dirname "$0")/../../deploy/demo/data
sp=/tmp/fp-cli-split.$$
mkdir -p "$sp"
cat "$demo/client1.txt" "$demo/client2.txt" >"$sp/in.txt"
skew() { sed -n 's/.*mean_top_class_share=\([0-9.]*\).*/\1/p' "$1"; }
check 0 "split --alpha 0.1" "$3" split --in "$sp/in.txt" --clients 6 --alpha 0.1 --seed 7 --out "$sp/a"
printf '%s\n' "$out" >"$sp/a.log"
check 0 "split again, same seed" "$3" split --in "$sp/in.txt" --clients 6 --alpha 0.1 --seed 7 --out "$sp/b"
check 0 "split, other seed" "$3" split --in "$sp/in.txt" --clients 6 --alpha 0.1 --seed 8 --out "$sp/c"
check 0 "split --iid" "$3" split --in "$sp/in.txt" --clients 6 --iid --out "$sp/d"
printf '%s\n' "$out" >"$sp/d.log"
for dir in a d; do
	n=0
	for f in "$sp/$dir"/client-[1-6].txt; do [ -f "$f" ] && n=$((n + 1)); done
	[ "$n" -eq 6 ] || { echo "FAIL: split $dir wrote $n of 6 files"; fail=1; }
	if [ "$(cat "$sp/$dir"/client-*.txt | wc -c)" -ne "$(wc -c <"$sp/in.txt")" ] ||
		[ "$(cat "$sp/$dir"/client-*.txt | sort | cksum)" != "$(sort "$sp/in.txt" | cksum)" ]; then
		echo "FAIL: split $dir: the outputs are not the input's lines exactly once"; fail=1
	fi
	for f in "$sp/$dir"/client-*.txt; do
		[ "$(wc -c <"$f")" -ge 4096 ] || { echo "FAIL: split: $f below --min-bytes"; fail=1; }
	done
done
cmp -s "$sp/a/client-3.txt" "$sp/b/client-3.txt" || { echo "FAIL: split not deterministic"; fail=1; }
cmp -s "$sp/a/client-3.txt" "$sp/c/client-3.txt" && { echo "FAIL: split ignores --seed"; fail=1; }
if ! awk -v a="$(skew "$sp/a.log")" -v d="$(skew "$sp/d.log")" 'BEGIN { exit !(a > d + 0.2) }'; then
	echo "FAIL: split: Dirichlet 0.1 skew $(skew "$sp/a.log") not above IID $(skew "$sp/d.log") + 0.2"
	fail=1
fi
NEEDLE="--iid"; check 2 "split without --iid/--alpha" "$3" split --in "$sp/in.txt" --clients 2 --out "$sp/e"
NEEDLE="--alpha"; check 2 "split bad --alpha" "$3" split --in "$sp/in.txt" --clients 2 --alpha 0 --out "$sp/e"
check 1 "split more clients than bytes allow" "$3" split --in "$sp/in.txt" --clients 5000 --iid --out "$sp/e"
case "$err" in *"in.txt"*) ;; *) echo "FAIL: split error names no file: $err"; fail=1;; esac
rm -rf "$sp"
# The tool: unknown command, missing command.
NEEDLE="frobnicate"; check 2 "fedprune unknown command" "$3" frobnicate
NEEDLE="missing command"; check 2 "fedprune without command" "$3"
rm -f /tmp/fp-cli-err.$$
exit $fail
