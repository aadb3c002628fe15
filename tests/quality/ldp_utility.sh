#!/bin/sh
# Utility of local differential privacy for FedPrLLM on the demo model (docs/privacy.md):
# for N clients (default 3, 16, 64; the demo's three shards pooled and re-split non-IID with
# `fedprune split --alpha 0.5`) each client prunes with Wanda at 50 % on its shard, then for
# each epsilon (default 1 2 4 8, and off) every client's mask is randomized exactly as
# fedprune-client does (`fedprune privatize`, randomized response, epsilon per bit), the
# server's vote aggregation runs (`fedprune aggregate`: layer groups, magnitude ties; all
# clients use the same epsilon, so the debiasing weights 1/(p-q) are equal and the plain vote
# is the debiased one), and the script prints, per (N, epsilon):
#   jaccard   overlap of the global pruned set with the non-private global mask (fedprune compare)
#   ppl       held-out perplexity of the global model (160 windows of 256 tokens, seed 1)
# Usage: tests/quality/ldp_utility.sh [BUILD_DIR] (default build); FP_LDP_N, FP_LDP_EPS
# override the lists. Takes a few minutes on 2 cores (64 local prunes per N = 64).
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$src/build}
fp=$build/client/fedprune
model=$src/deploy/demo/model
data=$src/deploy/demo/data
ns=${FP_LDP_N:-3 16 64}
epss=${FP_LDP_EPS:-1 2 4 8}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fp-ldp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
[ -x "$fp" ] || { echo "ldp_utility.sh: $fp not built" >&2; exit 1; }

ppl() {
	"$fp" eval --model "$1" --data "$data/heldout.txt" --seqlen 256 --nsamples 160 --seed 1 |
		sed -n 's/.*perplexity=\([^ ]*\).*/\1/p'
}
jac() {
	"$fp" compare --json "$1" "$2" | tr -d ' \n\t' |
		sed -n 's/.*"totals":{[^}]*"jaccard":\([0-9.eE+-]*\).*/\1/p'
}

cat "$data/client1.txt" "$data/client2.txt" "$data/client3.txt" >"$tmp/pooled.txt"
printf '%-4s %-6s %10s %10s\n' N epsilon jaccard ppl
for n in $ns; do
	d=$tmp/n$n
	mkdir -p "$d"
	"$fp" split --in "$tmp/pooled.txt" --clients "$n" --alpha 0.5 --seed 1 --out "$d/shards" \
		>/dev/null
	masks=""
	i=1
	while [ "$i" -le "$n" ]; do
		"$fp" prune --model "$model" --method wanda --calib "$d/shards/client-$i.txt" \
			--sparsity 0.5 --nsamples 16 --seqlen 128 --seed "$i" --threads 1 \
			--out "$d/local-$i" >/dev/null 2>&1
		masks="$masks --mask $d/local-$i/mask.fpmask"
		i=$((i + 1))
	done
	# shellcheck disable=SC2086 # one --mask per client
	"$fp" aggregate --model "$model" $masks --sparsity 0.5 --no-agreement \
		--out "$d/global-off" >/dev/null 2>&1
	for eps in $epss off; do
		if [ "$eps" != off ]; then
			pm=""
			i=1
			while [ "$i" -le "$n" ]; do
				"$fp" privatize --mask "$d/local-$i/mask.fpmask" \
					--out "$d/priv-$eps-$i.fpmask" --epsilon "$eps" \
					--state "$d/ldp-$i" >/dev/null
				pm="$pm --mask $d/priv-$eps-$i.fpmask"
				i=$((i + 1))
			done
			# shellcheck disable=SC2086
			"$fp" aggregate --model "$model" $pm --sparsity 0.5 --no-agreement \
				--out "$d/global-$eps" >/dev/null 2>&1
		fi
		printf '%-4s %-6s %10.4f %10s\n' "$n" "$eps" \
			"$(jac "$d/global-$eps/mask.fpmask" "$d/global-off/mask.fpmask")" \
			"$(ppl "$d/global-$eps")"
	done
done
printf '%-4s %-6s %10s %10s\n' - dense - "$(ppl "$model")"
