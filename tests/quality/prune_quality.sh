#!/bin/sh
# Held-out perplexity of the bundled demo model pruned to 50 % by each local pruner
# (issue 4, "Quality on the demo model"; the table in docs/pruning.md comes from this script).
#
#   tests/quality/prune_quality.sh [--why] [BUILD_DIR [MODEL_DIR]]
#       (defaults: build, deploy/demo/model; another MODEL_DIR needs a 256-byte vocabulary)
#
# --why adds what explains the table: magnitude and Wanda in each other's comparison group,
# 60 % and 70 %, the overlap of the Wanda and magnitude masks (`fedprune compare`), and the
# spread of the activation column norms Wanda weighs by (activation_spread.py, torch).
#
# Model: deploy/demo/model (byte-level Llama, max_position_embeddings 256).
# Calibration: deploy/demo/data/client{1,2,3}.txt pooled (concatenated) into one .txt file;
#   `fedprune prune` cuts it into windows of seqlen = min(max_position_embeddings, 2048) = 256
#   bytes and draws its default 128 of them at random with seed 0 (the reference's nsamples).
# Evaluation: deploy/demo/data/heldout.txt in non-overlapping 256-byte windows, every window
#   (`fedprune eval`: exp(mean next-token cross-entropy), fedprllm.md §7).
# Runs: dense, magnitude (per matrix), Wanda (per row), SparseGPT (blocks of 128 columns),
#   each unstructured 50 %, and Wanda 2:4; all with the defaults of `fedprune prune`
#   (sequential processing, uniform allocation). Also magnitude 2:4 and SparseGPT 2:4, for
#   completeness. Nothing is asserted: the numbers are printed as a markdown table.
set -eu
why=0
if [ "${1:-}" = "--why" ]; then
	why=1
	shift
fi
cd "$(dirname "$0")/../.."
top=$(pwd)
build=${1:-build}
case "$build" in /*) ;; *) build="$top/$build" ;; esac
fp="$build/client/fedprune"
model=${2:-$top/deploy/demo/model}
data="$top/deploy/demo/data"

[ -x "$fp" ] || { echo "$0: $fp not built (run ninja -C $build)" >&2; exit 1; }
[ -f "$model/model.safetensors" ] || { echo "$0: $model/model.safetensors missing" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fp-quality-XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
cat "$data/client1.txt" "$data/client2.txt" "$data/client3.txt" > "$tmp/calib.txt"

ppl() { # model_dir -> held-out perplexity
	"$fp" eval --model "$1" --data "$data/heldout.txt" --json | jq -r '.perplexity'
}

row() { # label args...
	label=$1
	shift
	out="$tmp/run$#$(printf '%s' "$*" | tr -c 'a-z0-9' '_')"
	"$fp" prune --model "$model" --calib "$tmp/calib.txt" --out "$out" "$@" 2>"$tmp/log" >/dev/null ||
		{ cat "$tmp/log" >&2; exit 1; }
	secs=$(jq -r '.timings_seconds.total' "$out/report.json")
	sp=$(jq -r '.totals.sparsity' "$out/report.json")
	printf '| %s | %.4f | %.3f | %.1f |\n' "$label" "$sp" "$(ppl "$out")" "$secs"
	if [ -n "${keep:-}" ]; then
		mv "$out" "$tmp/$keep"
	else
		rm -rf "$out"
	fi
}

windows=$("$fp" eval --model "$model" --data "$data/heldout.txt" --json | jq -r '.windows')
echo "Held-out perplexity of ${2:-deploy/demo/model} (heldout.txt, $windows windows of 256 bytes);"
echo "calibration: 128 windows of 256 bytes drawn (seed 0) from client1-3.txt pooled."
echo
echo "| method | sparsity | held-out perplexity | pruning time (s) |"
echo "|---|---|---|---|"
printf '| dense | 0.0000 | %.3f | - |\n' "$(ppl "$model")"
row "magnitude 50 % (per matrix)" --method magnitude --sparsity 0.5
keep=wanda row "Wanda 50 % (per row)" --method wanda --sparsity 0.5
row "SparseGPT 50 %" --method sparsegpt --sparsity 0.5
row "Wanda 2:4" --method wanda --pattern 2:4
row "magnitude 2:4" --method magnitude --pattern 2:4
row "SparseGPT 2:4" --method sparsegpt --pattern 2:4
[ "$why" -eq 1 ] || exit 0

echo
echo "| method | sparsity | held-out perplexity | pruning time (s) |"
echo "|---|---|---|---|"
keep=magrow row "magnitude 50 % (per row)" --method magnitude --sparsity 0.5 --group row
row "Wanda 50 % (per matrix)" --method wanda --sparsity 0.5 --group layer
for s in 0.6 0.7; do
	row "magnitude $s (per matrix)" --method magnitude --sparsity $s
	row "Wanda $s (per row)" --method wanda --sparsity $s
	row "SparseGPT $s" --method sparsegpt --sparsity $s
done
echo
echo "Overlap of the Wanda and the per-row magnitude masks at 50 % (fedprune compare):"
echo
"$fp" compare "$tmp/magrow/mask.fpmask" "$tmp/wanda/mask.fpmask" |
	awk '$1 ~ /down_proj|TOTAL/ { printf "    %s  Jaccard %s\n", $1, $7 }'
echo
echo "Spread of the activation column norms ||X_j|| (activation_spread.py):"
echo
/usr/bin/python3 "$top/tests/quality/activation_spread.py" "$model" "$tmp/calib.txt"
