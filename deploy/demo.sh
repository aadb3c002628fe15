#!/bin/sh
# The main job of this checkout: a local federation on the bundled demo model.
#
# Installs the build dependencies (root or sudo) on a fresh Debian 12 machine, builds, creates
# a federation CA with certificates for a server and three clients, then runs one
# fedprune-server and three fedprune-client processes on loopback over mutually authenticated
# TLS 1.3. Each client holds one non-IID text shard of deploy/demo/data (its "private" data),
# prunes the demo model (deploy/demo/model, a byte-level Llama) locally with Wanda at 50 %,
# and sends only its mask; the server votes the masks into one global mask (FedPrLLM: layer
# groups, one-shot, no weight scaling), publishes the pruned model, and the clients report
# held-out perplexity of the global model back (federated evaluation).
#
# Then it prints held-out perplexity for: the dense model, centralized Wanda (all shards pooled:
# the baseline no real federation could run), each client's local-only mask, FedPrLLM, and
# magnitude pruning. The pruned global model stays in the directory printed at the end.
#
# Environment: FP_BUILD_DIR (default build-demo), FP_DEMO_DIR (default build-demo/federation).
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
build=${FP_BUILD_DIR:-$top/build-demo}
work=${FP_DEMO_DIR:-$build/federation}
model=$top/deploy/demo/model
data=$top/deploy/demo/data
nsamples=32
seqlen=256
evalwin=160 # held-out windows evaluated, drawn at random with seed 1 (40,800 of 168,300 tokens)
sparsity=0.5
pids=""

cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

die() {
	echo "demo: $*" >&2
	for f in "$work"/*.log; do
		[ -f "$f" ] || continue
		echo "---- $f (last 20 lines)" >&2
		tail -n 20 "$f" >&2
	done
	exit 1
}

start=$(date +%s)
"$top/deploy/install-deps.sh"
if [ ! -d "$build" ]; then
	meson setup "$build" --buildtype=release -Dtests=disabled -Dfuzz=disabled >/dev/null
fi
ninja -C "$build" >/dev/null
fp=$build/client/fedprune

rm -rf "$work"
mkdir -p "$work"
"$top/deploy/gen-certs.sh" "$work/certs" --server-ip 127.0.0.1 \
	--clients client1,client2,client3 >/dev/null 2>&1 || die "cannot create certificates"

cat >"$work/server.ini" <<EOF
[server]
listen = 127.0.0.1
port = 0
[tls]
cert = $work/certs/server.crt
key = $work/certs/server.key
ca = $work/certs/ca.crt
[round]
model = $model
state_dir = $work/server-state
output = $work/published
method = wanda
sparsity = $sparsity
local_group = row
group = layer
tie_break = magnitude
nsamples = $nsamples
seqlen = $seqlen
min_clients = 3
deadline = 5m
grace = 10s
eval_timeout = 5m
exit_when_done = true
EOF

echo "== federation: 1 server + 3 clients on 127.0.0.1, mTLS 1.3, Wanda $sparsity, FedPrLLM"
"$build/server/fedprune-server" --config "$work/server.ini" >"$work/server.log" 2>&1 &
spid=$!
pids="$spid"
port=""
i=0
while [ -z "$port" ]; do
	i=$((i + 1))
	[ "$i" -le 200 ] || die "the server did not start"
	kill -0 "$spid" 2>/dev/null || die "the server exited at start"
	port=$(sed -n 's/.*msg=listening.* port=\([0-9]*\).*/\1/p' "$work/server.log")
	[ -n "$port" ] || sleep 0.05
done

for c in client1 client2 client3; do
	cat >"$work/$c.ini" <<EOF
[client]
server = 127.0.0.1
port = $port
reconnect_min = 100ms
reconnect_max = 2s
[tls]
cert = $work/certs/$c.crt
key = $work/certs/$c.key
ca = $work/certs/ca.crt
[job]
model = $model
calib = $data/$c.txt
heldout = $data/heldout.txt
state_dir = $work/$c-state
eval_seqlen = $seqlen
eval_nsamples = $evalwin
eval_seed = 1
eval_dense = false
exit_when_done = true
EOF
	"$build/client/fedprune-client" --config "$work/$c.ini" >"$work/$c.log" 2>&1 &
	pids="$pids $!"
done

rc=0
wait "$spid" || rc=$?
[ "$rc" = 0 ] || die "the server failed (exit status $rc)"
for p in $pids; do wait "$p" 2>/dev/null || true; done
pids=""
result=$work/published/round-1
[ -f "$result/mask.fpmask" ] || die "no published result"
grep 'msg="submission accepted"\|msg="global model published"\|msg="federated evaluation"' \
	"$work/server.log" | sed 's/^ts=[^ ]* level=[a-z]* //'
echo

# held-out perplexity of a model directory
ppl() {
	"$fp" eval --model "$1" --data "$data/heldout.txt" --seqlen "$seqlen" --nsamples "$evalwin" --seed 1 |
		sed -n 's/.*perplexity=\([^ ]*\).*/\1/p'
}

echo "== baselines (offline, same calibration budget: $nsamples samples x $seqlen tokens per client)"
cat "$data/client1.txt" "$data/client2.txt" "$data/client3.txt" >"$work/pooled.txt"
"$fp" prune --model "$model" --method wanda --calib "$work/pooled.txt" --sparsity "$sparsity" \
	--nsamples $((3 * nsamples)) --seqlen "$seqlen" --out "$work/centralized" \
	>"$work/centralized.log" 2>&1 || die "centralized Wanda failed"
"$fp" prune --model "$model" --method magnitude --sparsity "$sparsity" \
	--out "$work/magnitude" >"$work/magnitude.log" 2>&1 || die "magnitude pruning failed"
for c in client1 client2 client3; do
	"$fp" apply --model "$model" --mask "$work/$c-state/round-1/local.fpmask" \
		--out "$work/local-$c" >"$work/local-$c.log" 2>&1 || die "applying $c's mask failed"
done

echo
echo "== held-out perplexity ($evalwin random windows of $seqlen tokens of deploy/demo/data/heldout.txt), sparsity $sparsity"
printf '%-40s %12s\n' "model" "perplexity"
printf '%-40s %12s\n' "dense" "$(ppl "$model")"
printf '%-40s %12s\n' "centralized Wanda (all shards pooled)" "$(ppl "$work/centralized")"
for c in client1 client2 client3; do
	printf '%-40s %12s\n' "$c local-only Wanda mask" "$(ppl "$work/local-$c")"
done
printf '%-40s %12s\n' "FedPrLLM (layer, one-shot, no scaling)" "$(ppl "$result")"
printf '%-40s %12s\n' "magnitude (layer)" "$(ppl "$work/magnitude")"
echo
fed=$(tr -d ' \n\t' <"$result/report.json" |
	sed -n 's/.*"federated_eval":{.*"tokens":\([0-9]*\),"perplexity":\([0-9.]*\).*/\2 over \1 tokens/p')
echo "federated evaluation reported by the clients (token-weighted): ${fed:-none}"
echo "global pruned model (Hugging Face directory): $result"
echo "report: $result/report.json   logs: $work/*.log"
echo "time: $(($(date +%s) - start)) s"
