#!/bin/sh
# End-to-end federated rounds with the real daemons over mutually authenticated TLS on
# loopback, on the bundled demo model and its three client shards:
#   1. three clients, one-shot FedPrLLM: the published global mask equals, byte for byte, the
#      one `fedprune aggregate` computes offline from the clients' own mask files with the same
#      rule; report.json carries every participant and the federated evaluation;
#   2. the server is killed (SIGKILL) in the middle of the uploads and restarted: the round
#      resumes from the state directory and publishes the same mask;
#   3. one client gone (SIGSTOP after it got the spec): completes when the quorum is met, fails
#      cleanly with a clear message when it is not;
#   4. a client submitting a mask of the wrong density is refused and the round still completes;
#   5. iterative mode: every block's global mask equals the offline aggregation of the clients'
#      masks of that block, the final model holds all of them, the clients evaluated it;
#   6. local DP required: debiased votes equal the offline weighted aggregation;
#   7. magnitude (no calibration tokens);
#   8. a client killed mid-upload resumes after its restart.
# Usage: test_round.sh SERVER CLIENT TOOL ROGUE   (meson passes the built executables;
# ROGUE is tests/integration/rogue_client.c, a client that submits a mask file it is given)
set -eu
server=$1
client=$2
tool=$3
rogue=$4
src=$(cd "$(dirname "$0")/../.." && pwd)
model=$src/deploy/demo/model
data=$src/deploy/demo/data
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fp-round.XXXXXX")
pids=""

cleanup() {
	for p in $pids; do
		kill -CONT "$p" 2>/dev/null || true
		kill -KILL "$p" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

fail() {
	echo "FAIL: $*" >&2
	for f in "$tmp"/*/*.log; do
		[ -f "$f" ] || continue
		echo "---- $f (last 30 lines)" >&2
		tail -n 30 "$f" >&2
	done
	exit 1
}

"$src/deploy/gen-certs.sh" "$tmp/certs" --server-ip 127.0.0.1 \
	--clients client1,client2,client3,client4 >/dev/null 2>&1 || fail "gen-certs.sh"

# server_cfg DIR ["key = value" ...]: [round] settings replacing or adding to the defaults
server_cfg() {
	dir=$1
	shift
	mkdir -p "$dir"
	{
		printf '[server]\nlisten = 127.0.0.1\nport = 0\nchunk = 4KiB\n'
		printf '[tls]\ncert = %s\nkey = %s\nca = %s\n' "$tmp/certs/server.crt" \
			"$tmp/certs/server.key" "$tmp/certs/ca.crt"
		printf '[round]\nmodel = %s\nstate_dir = %s\noutput = %s\n' "$model" "$dir/state" \
			"$dir/out"
		printf 'method = wanda\nsparsity = 0.5\nnsamples = 8\nseqlen = 128\nseed = 7\n'
		printf 'min_clients = 3\ndeadline = 90s\ngrace = 1s\neval_timeout = 120s\n'
		printf 'exit_when_done = true\n'
	} >"$dir/server.ini"
	for l in "$@"; do # "key = value": replace the key's line or add it
		k=${l%% =*}
		if grep -q "^$k = " "$dir/server.ini"; then
			sed -i "s|^$k = .*|$l|" "$dir/server.ini"
		else
			printf '%s\n' "$l" >>"$dir/server.ini"
		fi
	done
}

# client_cfg DIR NAME PORT
client_cfg() {
	{
		printf '[client]\nserver = 127.0.0.1\nport = %s\nreconnect_min = 100ms\n' "$3"
		printf 'reconnect_max = 1s\n'
		printf '[tls]\ncert = %s\nkey = %s\nca = %s\n' "$tmp/certs/$2.crt" \
			"$tmp/certs/$2.key" "$tmp/certs/ca.crt"
		printf '[job]\nmodel = %s\ncalib = %s\nheldout = %s\nstate_dir = %s\n' "$model" \
			"$data/$2.txt" "$data/heldout.txt" "$1/$2"
		printf 'eval_seqlen = 128\neval_nsamples = 32\neval_dense = false\n'
		printf 'exit_when_done = true\n'
	} >"$1/$2.ini"
}

# start_server DIR: starts it in the background, sets spid and port
start_server() {
	"$server" --config "$1/server.ini" >>"$1/server.log" 2>&1 &
	spid=$!
	pids="$pids $spid"
	port=""
	i=0
	while [ -z "$port" ]; do
		i=$((i + 1))
		[ "$i" -le 200 ] || fail "server did not start listening"
		kill -0 "$spid" 2>/dev/null || fail "server exited at start"
		port=$(sed -n 's/.*msg=listening.* port=\([0-9]*\).*/\1/p' "$1/server.log" | tail -n 1)
		[ -n "$port" ] || sleep 0.05
	done
}

# start_client DIR NAME ["key = value" ...]: extra [job] lines; sets cpid
start_client() {
	client_cfg "$1" "$2" "$port"
	cdir=$1
	cname=$2
	shift 2
	for l in "$@"; do printf '%s\n' "$l" >>"$cdir/$cname.ini"; done
	set -- "$cdir" "$cname"
	"$client" --config "$1/$2.ini" >>"$1/$2.log" 2>&1 &
	cpid=$!
	pids="$pids $cpid"
}

# wait_exit PID SECONDS: sets rc to its exit status
wait_exit() {
	i=0
	while kill -0 "$1" 2>/dev/null; do
		i=$((i + 1))
		[ "$i" -le $(($2 * 10)) ] || fail "process $1 still running after $2 s"
		sleep 0.1
	done
	rc=0
	wait "$1" || rc=$?
}

# wait_log FILE PATTERN SECONDS
wait_log() {
	i=0
	until grep -q "$2" "$1" 2>/dev/null; do
		i=$((i + 1))
		[ "$i" -le $(($3 * 20)) ] || fail "no '$2' in $1 after $3 s"
		sleep 0.05
	done
}

json_num() { # FILE KEY: first number after "KEY":
	tr -d ' \n\t' <"$1" | sed -n "s/.*\"$2\":\([0-9.eE+-]*\).*/\1/p" | head -n 1
}

# ---- 1. three clients; global mask == offline aggregation of the clients' masks ----
d=$tmp/one
server_cfg "$d"
start_server "$d"
for c in client1 client2 client3; do start_client "$d" "$c"; done
wait_exit "$spid" 120
[ "$rc" = 0 ] || fail "server exit status $rc in the three-client round"
res=$d/out/round-1
for f in config.json mask.fpmask report.json; do
	[ -f "$res/$f" ] || fail "published result lacks $f"
done
ls "$res"/*.safetensors >/dev/null 2>&1 || fail "published result has no safetensors"
"$tool" aggregate --model "$model" --mask "$d/client1/round-1/local.fpmask" \
	--mask "$d/client2/round-1/local.fpmask" --mask "$d/client3/round-1/local.fpmask" \
	--sparsity 0.5 --group layer --tie-break magnitude --out "$d/offline" >"$d/offline.log" 2>&1 ||
	fail "offline fedprune aggregate"
cmp "$res/mask.fpmask" "$d/offline/mask.fpmask" ||
	fail "global mask differs from the offline aggregation"
grep -q '"accepted":[[:space:]]*3' "$res/report.json" || fail "report.json: not 3 accepted"
ppl=$(tr -d ' \n\t' <"$res/report.json" | sed -n 's/.*"federated_eval":{.*"tokens":[0-9]*,"perplexity":\([0-9.]*\).*/\1/p')
[ -n "$ppl" ] || fail "report.json has no federated perplexity"
grep -q 'msg="federated evaluation"' "$d/server.log" || fail "no federated evaluation log line"
for c in client1 client2 client3; do
	grep -q "identity=$c" "$d/server.log" || fail "$c never joined"
done
echo "ok 1 three clients: global mask == offline aggregation; federated perplexity $ppl"

# ---- 2. server killed in the middle of the uploads, restarted: same result ----
d=$tmp/kill
server_cfg "$d"
export FP_TEST_KILL_AFTER_CHUNKS=100
start_server "$d"
unset FP_TEST_KILL_AFTER_CHUNKS
for c in client1 client2 client3; do start_client "$d" "$c"; done
wait_exit "$spid" 120
[ "$rc" = 137 ] || fail "server was expected to die by SIGKILL mid-upload, status $rc"
grep -q "FP_TEST_KILL_AFTER_CHUNKS reached" "$d/server.log" || fail "kill hook not reached"
# the clients keep reconnecting to the same address: restart on the same port
sed -i "s/^port = 0$/port = $port/" "$d/server.ini"
start_server "$d"
wait_exit "$spid" 120
[ "$rc" = 0 ] || fail "restarted server exit status $rc"
grep -q 'msg="state restored"' "$d/server.log" || fail "restart did not restore state"
grep -q 'msg="upload restored from the state directory"' "$d/server.log" ||
	fail "no partial upload was restored after the restart"
cmp "$d/out/round-1/mask.fpmask" "$tmp/one/out/round-1/mask.fpmask" ||
	fail "result after a crash differs from the uninterrupted round"
echo "ok 2 server killed mid-upload and restarted: same global mask"

# ---- 3. one client gone: quorum met -> completes; quorum not met -> fails cleanly ----
d=$tmp/quorum
server_cfg "$d" "quorum = 2"
start_server "$d"
start_client "$d" client1
start_client "$d" client2
start_client "$d" client3
gone=$cpid
wait_log "$d/server.log" 'round spec sent" identity=client3' 30
kill -STOP "$gone"
wait_exit "$spid" 120
[ "$rc" = 0 ] || fail "quorum 2 of 3: server exit status $rc"
grep -q '"accepted":[[:space:]]*2' "$d/out/round-1/report.json" || fail "quorum: not 2 accepted"
echo "ok 3a one client gone, quorum 2: round completes with 2"

d=$tmp/noquorum
server_cfg "$d" "quorum = 3" "deadline = 6s"
start_server "$d"
start_client "$d" client1
start_client "$d" client2
start_client "$d" client3
gone=$cpid
wait_log "$d/server.log" 'round spec sent" identity=client3' 30
kill -STOP "$gone"
wait_exit "$spid" 60
[ "$rc" = 1 ] || fail "quorum 3 with a client gone: expected exit status 1, got $rc"
grep -q 'quorum is 3' "$d/server.log" || fail "no clear quorum message"
[ ! -e "$d/out/round-1" ] || fail "a failed round published a result"
echo "ok 3b one client gone, quorum 3: fails cleanly ($(grep -o 'reason="round 1 failed[^"]*' "$d/server.log" | head -n 1 | cut -c9-))"

# ---- 4. a client with a mask of the wrong density is refused; a client whose bytes do not
# match the digest it declared is refused when the server stores them (the one place the server
# hashes a submission); the round completes with the other two ----
d=$tmp/density
server_cfg "$d" "quorum = 2" "min_clients = 4"
"$tool" prune --model "$model" --calib "$data/client3.txt" --method wanda --sparsity 0.4 \
	--nsamples 8 --seqlen 128 --out "$d/wrong" >"$d/prune.log" 2>&1 || fail "offline prune"
start_server "$d"
start_client "$d" client1
start_client "$d" client2
"$rogue" 127.0.0.1 "$port" "$tmp/certs/ca.crt" "$tmp/certs/client4.crt" \
	"$tmp/certs/client4.key" "$tmp/one/client3/round-1/local.fpmask" --lie-digest \
	>"$d/liar.log" 2>&1 &
liar=$!
rc=0
"$rogue" 127.0.0.1 "$port" "$tmp/certs/ca.crt" "$tmp/certs/client3.crt" \
	"$tmp/certs/client3.key" "$d/wrong/mask.fpmask" >"$d/rogue.log" 2>&1 || rc=$?
[ "$rc" = 3 ] || fail "the wrong-density submission was not refused (rogue client status $rc)"
grep -q 'receipt accepted=0 reason=.*SPEC_MISMATCH' "$d/rogue.log" ||
	fail "the refusal does not say SPEC_MISMATCH: $(cat "$d/rogue.log")"
grep -q 'error code=SPEC_MISMATCH message=.*has [0-9]* pruned, required' "$d/rogue.log" ||
	fail "the client was not told which group is wrong: $(cat "$d/rogue.log")"
rc=0
wait "$liar" || rc=$?
[ "$rc" = 3 ] || fail "the submission with a wrong digest was not refused (status $rc): $(cat "$d/liar.log")"
grep -q "receipt accepted=0 reason=.*do not match the digest.*DIGEST_MISMATCH" "$d/liar.log" ||
	fail "the refusal does not say DIGEST_MISMATCH: $(cat "$d/liar.log")"
grep -q 'submission refused" identity=client4 .*code=DIGEST_MISMATCH' "$d/server.log" ||
	fail "the server did not log the digest refusal"
[ ! -e "$d/state/round-1/up/client4" ] || fail "the refused upload was kept"
wait_exit "$spid" 120
[ "$rc" = 0 ] || fail "wrong-density round: server exit status $rc"
grep -q '"accepted":[[:space:]]*2' "$d/out/round-1/report.json" ||
	fail "wrong density: not 2 accepted"
echo "ok 4 wrong-density submission refused ($(grep -m 1 "^error code" "$d/rogue.log")); wrong digest refused at store ($(grep -o 'tensor .*declared' "$d/liar.log" | head -n 1)); round completed with the other two"

# ---- 5. iterative FedPrLLM: one round per block; each block's global mask equals the
# offline aggregation of the clients' masks of that block; the final model holds them all ----
d=$tmp/iterative
server_cfg "$d" "mode = iterative"
start_server "$d"
for c in client1 client2 client3; do start_client "$d" "$c"; done
wait_exit "$spid" 180
[ "$rc" = 0 ] || fail "iterative: server exit status $rc"
nblocks=$(tr -d ' \n' <"$model/config.json" | sed -n 's/.*"num_hidden_layers":\([0-9]*\).*/\1/p')
r=1
while [ "$r" -le "$nblocks" ]; do
	"$tool" aggregate --model "$model" --mask-only \
		--mask "$d/client1/round-$r/local.fpmask" --mask "$d/client2/round-$r/local.fpmask" \
		--mask "$d/client3/round-$r/local.fpmask" --sparsity 0.5 --group layer \
		--tie-break magnitude --out "$d/offline-$r" >"$d/offline-$r.log" 2>&1 ||
		fail "iterative: offline aggregation of block $((r - 1))"
	cmp "$d/out/round-$r/mask.fpmask" "$d/offline-$r/mask.fpmask" ||
		fail "iterative: block $((r - 1)) differs from the offline aggregation"
	r=$((r + 1))
done
for f in config.json mask.fpmask report.json; do
	[ -f "$d/out/final/$f" ] || fail "iterative: final result lacks $f"
done
for c in client1 client2 client3; do
	cmp "$d/$c/round-$nblocks/final.fpmask" "$d/out/final/mask.fpmask" ||
		fail "iterative: $c evaluated another final mask than the server's"
done
grep -q '"federated_eval"' "$d/out/final/report.json" || fail "iterative: no federated evaluation"
echo "ok 5 iterative: $nblocks block rounds, each equal to the offline aggregation; final model published"

# ---- 6. local DP required: privatized masks are debiased with weights 1/(p-q) (equal to the
# offline weighted aggregation of what the clients sent); a client without local DP is out ----
d=$tmp/ldp
server_cfg "$d" "ldp = required" "ldp_max_epsilon = 4" "quorum = 2"
start_server "$d"
start_client "$d" client1 "ldp_epsilon = 2"
start_client "$d" client2 "ldp_epsilon = 1"
start_client "$d" client3
wait_exit "$spid" 120
[ "$rc" = 0 ] || fail "local DP round: server exit status $rc"
grep -q 'msg="round spec refused".*PRIVACY_REQUIRED' "$d/client3.log" ||
	fail "local DP: client3 without ldp_epsilon did not refuse the round"
rep=$(tr -d ' \n\t' <"$d/out/round-1/report.json")
w1=$(printf '%s' "$rep" | sed -n 's/.*"id":"client1","accepted":true[^}]*"vote_weight":\([0-9.eE+-]*\).*/\1/p')
w2=$(printf '%s' "$rep" | sed -n 's/.*"id":"client2","accepted":true[^}]*"vote_weight":\([0-9.eE+-]*\).*/\1/p')
[ -n "$w1" ] && [ -n "$w2" ] || fail "local DP: report.json lacks the clients' vote weights"
# epsilon 2 per bit: p = e^2/(1+e^2), q = 1-p, 1/(p-q) = 1.3130...; epsilon 1: 2.1639...
case "$w1" in 1.313*) ;; *) fail "local DP: client1 vote weight $w1, expected 1.313..." ;; esac
case "$w2" in 2.163*) ;; *) fail "local DP: client2 vote weight $w2, expected 2.163..." ;; esac
"$tool" aggregate --model "$model" --mask "$d/client1/round-1/local-ldp.fpmask" \
	--mask "$d/client2/round-1/local-ldp.fpmask" --weights "$w1,$w2" --sparsity 0.5 \
	--group layer --tie-break magnitude --out "$d/offline" >"$d/offline.log" 2>&1 ||
	fail "local DP: offline aggregation"
cmp "$d/out/round-1/mask.fpmask" "$d/offline/mask.fpmask" ||
	fail "local DP: global mask differs from the offline debiased aggregation"
cmp -s "$d/client1/round-1/local-ldp.fpmask" "$d/client1/round-1/local.fpmask" &&
	fail "local DP: client1 sent its true mask"
echo "ok 6 local DP required: votes debiased (weights $w1, $w2), equal to offline; client without DP refused the round"

# ---- 7. magnitude (no calibration data, no tokens) completes and equals the offline vote ----
d=$tmp/magnitude
server_cfg "$d" "method = magnitude" "local_group = layer"
start_server "$d"
for c in client1 client2 client3; do start_client "$d" "$c"; done
wait_exit "$spid" 120
[ "$rc" = 0 ] || fail "magnitude round: server exit status $rc"
"$tool" aggregate --model "$model" --mask "$d/client1/round-1/local.fpmask" \
	--mask "$d/client2/round-1/local.fpmask" --mask "$d/client3/round-1/local.fpmask" \
	--sparsity 0.5 --out "$d/offline" >"$d/offline.log" 2>&1 || fail "magnitude: offline"
cmp "$d/out/round-1/mask.fpmask" "$d/offline/mask.fpmask" ||
	fail "magnitude: global mask differs from the offline aggregation"
echo "ok 7 magnitude round (no calibration tokens) completes, equal to offline"

# ---- 8. a client killed (SIGKILL) in the middle of its upload resumes after its restart and
# sends only what the server does not hold; the result equals the uninterrupted round ----
d=$tmp/clientkill
server_cfg "$d"
start_server "$d"
export FP_TEST_CLIENT_KILL_AFTER_BYTES=65536
# a small write queue, so the upload is still in flight when the hook fires
start_client "$d" client1 "[net]" "write_high_water = 16KiB" "write_low_water = 4KiB"
unset FP_TEST_CLIENT_KILL_AFTER_BYTES
victim=$cpid
start_client "$d" client2
start_client "$d" client3
wait_exit "$victim" 60
[ "$rc" = 137 ] || fail "client1 was expected to die by SIGKILL mid-upload, status $rc"
grep -q "FP_TEST_CLIENT_KILL_AFTER_BYTES reached" "$d/client1.log" || fail "client kill hook"
mv "$d/client1.log" "$d/client1-killed.log"
"$client" --config "$d/client1.ini" >>"$d/client1.log" 2>&1 &
pids="$pids $!"
wait_exit "$spid" 120
[ "$rc" = 0 ] || fail "client killed mid-upload: server exit status $rc"
held=$(sed -n 's/.*msg="upload resumed".*held_by_server=\([0-9]*\).*/\1/p' "$d/client1.log" | head -n 1)
[ -n "$held" ] && [ "$held" -gt 0 ] || fail "restarted client1 did not resume from what the server held"
cmp "$d/out/round-1/mask.fpmask" "$tmp/one/out/round-1/mask.fpmask" ||
	fail "result after a client crash differs from the uninterrupted round"
echo "ok 8 client killed mid-upload: restarted, resumed with $held bytes already held; same global mask"
