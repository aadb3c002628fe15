#!/bin/sh
# A whole federation on this machine: one fedprune-server and N fedprune-client processes on
# the loopback address, mutually authenticated with fresh certificates, each client with its
# own share of a text file (IID or Dirichlet non-IID, `fedprune split`), running one round to
# the end. Prints the round's summary (participants, sparsity, federated evaluation) and where
# everything is. For experiments with many clients: 64 run on 2 cores with the demo model.
#
#   deploy/simulate.sh [--clients N] [--iid | --alpha A] [--seed S] [--method M]
#                      [--sparsity X] [--data FILE] [--heldout FILE] [--model DIR] ...
# See --help. Needs the programs built (it builds them into build-demo if missing, like
# deploy/demo.sh) and the openssl command (certificates).
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
prog=deploy/simulate.sh

clients=8
mode=alpha
alpha=0.5
seed=0
method=wanda
sparsity=0.5
pattern=unstructured
data=""
heldout=""
model=$top/deploy/demo/model
out=$top/out/simulate
nsamples=32
seqlen=256
eval_windows=32
port=""
timeout_s=1800
build=${FP_BUILD_DIR:-$top/build-demo}

usage() {
	cat <<USAGE
Usage: $prog [OPTIONS]

Run one federated pruning round with N local clients and print its summary.

Options:
  -n, --clients N     number of clients (default $clients; 1..1000)
      --iid           split the data IID (documents shuffled, dealt round-robin)
      --alpha A       split non-IID, Dirichlet(A) over 10 topic classes (default $alpha)
      --seed S        seed of the split and of the round's calibration sampling (default 0)
      --method M      magnitude, wanda or sparsegpt (default $method; magnitude is fastest)
      --sparsity X    fraction of weights pruned (default $sparsity)
      --pattern P     unstructured or N:M such as 2:4 (default $pattern)
      --data FILE     text to split among the clients (default: the demo shards together)
      --heldout FILE  text each client evaluates the result on (default: the demo's held-out
                      text with the demo data, none otherwise)
      --model DIR     Hugging Face model directory (default deploy/demo/model)
      --nsamples N    calibration samples per client (default $nsamples)
      --seqlen L      tokens per sample (default $seqlen)
      --eval-windows W
                      held-out windows each client evaluates (default $eval_windows; 0: the
                      whole file, slow with many clients on few cores)
      --port P        server port on 127.0.0.1 (default: a free one)
      --out DIR       working directory, emptied first (default out/simulate)
      --timeout S     give up after S seconds (default $timeout_s)
  -h, --help          show this help
Environment: FP_BUILD_DIR (build directory, default build-demo).
Outputs in DIR: published/round-1/ (pruned model, mask.fpmask, report.json), data/ (the
shares), certs/, logs/ (one log per process), server/ and client-K/ (state directories).
USAGE
}
fail() { echo "$prog: $* (see '$prog --help')" >&2; exit 2; }
need() { [ $# -ge 2 ] || fail "$1 needs a value"; }
while [ $# -gt 0 ]; do
	case "$1" in
	-h | --help) usage; exit 0 ;;
	-n | --clients) need "$@"; clients=$2; shift 2 ;;
	--iid) mode=iid; shift ;;
	--alpha) need "$@"; mode=alpha; alpha=$2; shift 2 ;;
	--seed) need "$@"; seed=$2; shift 2 ;;
	--method) need "$@"; method=$2; shift 2 ;;
	--sparsity) need "$@"; sparsity=$2; shift 2 ;;
	--pattern) need "$@"; pattern=$2; shift 2 ;;
	--data) need "$@"; data=$2; shift 2 ;;
	--heldout) need "$@"; heldout=$2; shift 2 ;;
	--model) need "$@"; model=$2; shift 2 ;;
	--nsamples) need "$@"; nsamples=$2; shift 2 ;;
	--seqlen) need "$@"; seqlen=$2; shift 2 ;;
	--eval-windows) need "$@"; eval_windows=$2; shift 2 ;;
	--port) need "$@"; port=$2; shift 2 ;;
	--out) need "$@"; out=$2; shift 2 ;;
	--timeout) need "$@"; timeout_s=$2; shift 2 ;;
	*) fail "unknown option '$1'" ;;
	esac
done
isnum() { case "$1" in '' | *[!0-9]*) return 1 ;; esac; }
isnum "$clients" && [ "$clients" -ge 1 ] && [ "$clients" -le 1000 ] || fail "--clients '$clients' is not in 1..1000"
isnum "$eval_windows" || fail "--eval-windows '$eval_windows' is not a whole number"
isnum "$timeout_s" && [ "$timeout_s" -ge 1 ] || fail "--timeout '$timeout_s' is not a whole number of seconds"
[ -z "$port" ] || { isnum "$port" && [ "$port" -ge 1 ] && [ "$port" -le 65535 ]; } || fail "--port '$port' is not in 1..65535"
case "$method" in magnitude | wanda | sparsegpt) ;; *) fail "--method '$method' is not magnitude, wanda or sparsegpt" ;; esac
[ -d "$model" ] || fail "--model '$model' is not a directory"
case "$out" in /*) ;; *) out=$top/$out ;; esac
case "$model" in /*) ;; *) model=$top/$model ;; esac

# Programs.
if [ ! -x "$build/server/fedprune-server" ] || [ ! -x "$build/client/fedprune-client" ] ||
	[ ! -x "$build/client/fedprune" ]; then
	echo "$prog: building into $build"
	[ -d "$build" ] || meson setup "$build" --buildtype=release -Dtests=disabled -Dfuzz=disabled >/dev/null
	ninja -C "$build" >/dev/null
fi
server_bin=$build/server/fedprune-server
client_bin=$build/client/fedprune-client
tool_bin=$build/client/fedprune

# A free port: from a start derived from the process id, the first that refuses connections.
if [ -z "$port" ]; then
	port=$((20000 + $$ % 20000))
	while bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$port" 2>/dev/null; do
		port=$((port + 1))
	done
fi

rm -rf "$out"
mkdir -p "$out/logs"
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 1' INT TERM
start=$(date +%s)
say() { printf '%s: [%4ss] %s\n' "$prog" "$(( $(date +%s) - start ))" "$*"; }

# Data.
if [ -z "$data" ]; then
	data=$out/demo-text.txt
	cat "$top/deploy/demo/data/client1.txt" "$top/deploy/demo/data/client2.txt" \
		"$top/deploy/demo/data/client3.txt" >"$data"
	[ -n "$heldout" ] || heldout=$top/deploy/demo/data/heldout.txt
fi
if [ "$mode" = iid ]; then
	"$tool_bin" split --in "$data" --clients "$clients" --iid --seed "$seed" --out "$out/data" \
		>"$out/logs/split.log" || { cat "$out/logs/split.log"; exit 1; }
else
	"$tool_bin" split --in "$data" --clients "$clients" --alpha "$alpha" --seed "$seed" \
		--out "$out/data" >"$out/logs/split.log" || { cat "$out/logs/split.log"; exit 1; }
fi
say "$(tail -n 1 "$out/logs/split.log" | sed 's/ out=.*//')"

# Certificates: the CA, the server (127.0.0.1) and client-1 ... client-N.
"$top/deploy/gen-certs.sh" "$out/certs" --server-ip 127.0.0.1 --clients "$clients" \
	>"$out/logs/certs.log" || { cat "$out/logs/certs.log"; exit 1; }

# Configurations.
cat >"$out/server.ini" <<INI
[server]
listen = 127.0.0.1
port = $port
max_clients = $((clients + 16))
[tls]
cert = $out/certs/server.crt
key = $out/certs/server.key
ca = $out/certs/ca.crt
[round]
model = $model
state_dir = $out/server
output = $out/published
method = $method
sparsity = $sparsity
pattern = $pattern
seed = $seed
nsamples = $nsamples
seqlen = $seqlen
min_clients = $clients
wait_clients = 5m
grace = 10s
exit_when_done = true
INI
"$server_bin" --config "$out/server.ini" --check-config >/dev/null
i=1
while [ "$i" -le "$clients" ]; do
	{
		printf '[client]\nserver = 127.0.0.1\nport = %s\nid = client-%s\n' "$port" "$i"
		printf '[tls]\ncert = %s\nkey = %s\nca = %s\n' "$out/certs/client-$i.crt" \
			"$out/certs/client-$i.key" "$out/certs/ca.crt"
		printf '[job]\nmodel = %s\ncalib = %s\nstate_dir = %s\n' "$model" \
			"$out/data/client-$i.txt" "$out/client-$i"
		[ -z "$heldout" ] || printf 'heldout = %s\n' "$heldout"
		printf 'eval_dense = false\neval_nsamples = %s\nexit_when_done = true\n' "$eval_windows"
	} >"$out/client-$i.ini"
	i=$((i + 1))
done
"$client_bin" --config "$out/client-1.ini" --check-config >/dev/null

# Run: the server, then the clients (one BLAS thread each: N processes share the cores).
export OPENBLAS_NUM_THREADS=1
"$server_bin" --config "$out/server.ini" >"$out/logs/server.log" 2>&1 &
server_pid=$!
pids=$server_pid
n=0
until grep -q 'msg=listening' "$out/logs/server.log" 2>/dev/null; do
	kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$out/logs/server.log"; echo "$prog: the server exited" >&2; exit 1; }
	n=$((n + 1))
	[ "$n" -le 100 ] || { tail -n 20 "$out/logs/server.log"; echo "$prog: the server did not listen within 10 s" >&2; exit 1; }
	sleep 0.1
done
say "server listening on 127.0.0.1:$port; starting $clients clients"
client_pids=""
i=1
while [ "$i" -le "$clients" ]; do
	"$client_bin" --config "$out/client-$i.ini" >"$out/logs/client-$i.log" 2>&1 &
	pids="$pids $!"
	client_pids="$client_pids $!:$i"
	i=$((i + 1))
done

# The server exits when the round is complete (exit_when_done), each client after its report.
# A client that fails (killed, out of memory, ...) ends the simulation at once.
deadline=$(( $(date +%s) + timeout_s ))
running=$client_pids
while kill -0 "$server_pid" 2>/dev/null; do
	still=""
	for entry in $running; do
		p=${entry%%:*}
		if kill -0 "$p" 2>/dev/null; then
			still="$still $entry"
			continue
		fi
		st=0
		wait "$p" || st=$?
		if [ "$st" -ne 0 ]; then
			c=${entry#*:}
			tail -n 5 "$out/logs/client-$c.log" >&2
			[ "$st" -gt 128 ] && echo "$prog: client-$c was killed by signal $((st - 128))" \
				"(9: perhaps the out-of-memory killer; try fewer clients or --eval-windows)" >&2
			echo "$prog: client-$c exited with status $st; logs in $out/logs" >&2
			exit 1
		fi
	done
	running=$still
	if [ "$(date +%s)" -ge "$deadline" ]; then
		echo "$prog: the round did not finish within $timeout_s s; logs in $out/logs" >&2
		tail -n 15 "$out/logs/server.log" >&2
		exit 1
	fi
	sleep 1
done
server_status=0
wait "$server_pid" || server_status=$?
failed_clients=0
for entry in $running; do
	p=${entry%%:*}
	n=0
	while kill -0 "$p" 2>/dev/null && [ $n -lt 60 ]; do sleep 1; n=$((n + 1)); done
	wait "$p" 2>/dev/null || failed_clients=$((failed_clients + 1))
done
pids=""
if [ "$server_status" -ne 0 ]; then
	tail -n 20 "$out/logs/server.log" >&2
	echo "$prog: the server exited with status $server_status; logs in $out/logs" >&2
	exit 1
fi
say "round complete"

dir=$(ls -d "$out/published"/round-* 2>/dev/null | tail -n 1)
[ -n "$dir" ] && [ -f "$dir/report.json" ] || { echo "$prog: no published round in $out/published" >&2; exit 1; }
if [ -x /usr/bin/python3 ]; then
	/usr/bin/python3 - "$dir/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ro, ov, fe = r.get("round", {}), r.get("overall", {}), r.get("federated_eval") or {}
parts = r.get("participants") or []
print("participants:  %d (accepted %s of %s that received the round)" % (
    len(parts), ro.get("accepted"), len(ro.get("clients") or [])))
nm = "%s:%s" % (ro.get("nm_n"), ro.get("nm_m")) if ro.get("nm_m") else "unstructured"
print("round:         %s, target sparsity %s, %s, %s samples x %s tokens per client" % (
    ro.get("method"), ro.get("sparsity"), nm, ro.get("nsamples"), ro.get("seqlen")))
if ov:
    print("global mask:   %s of %s weights pruned (sparsity %.4f), tied votes %s" % (
        ov.get("pruned"), ov.get("weights"), ov.get("sparsity", 0), ov.get("tied")))
ag = r.get("agreement") or {}
if ag:
    print("agreement:     %s" % ", ".join("%s %s" % (k, v) for k, v in sorted(ag.items())
                                         if not isinstance(v, (list, dict))))
if fe:
    ppl = [c.get("perplexity") for c in fe.get("clients", []) if c.get("perplexity")]
    line = "evaluation:    perplexity %s over %s tokens from %s reports" % (
        fe.get("perplexity"), fe.get("tokens"), fe.get("reports"))
    if fe.get("dense_perplexity"):
        line += " (dense %s)" % fe.get("dense_perplexity")
    if ppl:
        line += "; per client %.3f..%.3f" % (min(ppl), max(ppl))
    print(line)
else:
    print("evaluation:    none (no held-out text)")
print("times:         collect %.1f s, aggregate %.1f s" % (
    ro.get("collect_seconds", 0), ro.get("aggregate_seconds", 0)))
PY
else
	echo "report: $dir/report.json"
fi
[ "$failed_clients" -eq 0 ] || echo "$prog: warning: $failed_clients clients did not exit 0 (see $out/logs)"
echo "output: $dir"
echo "logs:   $out/logs"
