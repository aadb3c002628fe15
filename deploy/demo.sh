#!/bin/sh
# The main job of this checkout, on the bundled demo model (deploy/demo/model, a byte-level
# Llama) and its three non-IID client text shards. Works on a fresh Debian 12 machine:
# installs the build dependencies (root or sudo), builds, then runs the newest end-to-end path.
#
# Today that path is the numeric core every client runs: load the Hugging Face model, stream
# the evaluation text through it block by block, and report perplexity on the held-out text
# and on each client's shard, against the uniform baseline of a 256-symbol vocabulary.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)
build=${FP_BUILD_DIR:-$top/build-demo}
model=$top/deploy/demo/model
data=$top/deploy/demo/data

"$top/deploy/install-deps.sh"
if [ ! -d "$build" ]; then
	meson setup "$build" --buildtype=release -Dtests=disabled -Dfuzz=disabled >/dev/null
fi
ninja -C "$build" >/dev/null
fp=$build/client/fedprune

echo "== model"
"$fp" inspect "$model" | tail -n 4
echo
echo "== perplexity of the dense demo model (seqlen 256, non-overlapping windows)"
printf '%-10s %12s %10s %10s\n' text perplexity windows tokens
for name in heldout client1 client2 client3; do
	out=$("$fp" eval --model "$model" --data "$data/$name.txt" --seqlen 256)
	ppl=$(printf '%s\n' "$out" | sed -n 's/.*perplexity=\([^ ]*\).*/\1/p')
	win=$(printf '%s\n' "$out" | sed -n 's/.*windows=\([^ ]*\).*/\1/p')
	tok=$(printf '%s\n' "$out" | sed -n 's/.*tokens=\([^ ]*\).*/\1/p')
	printf '%-10s %12s %10s %10s\n' "$name" "$ppl" "$win" "$tok"
done
printf '%-10s %12s\n' uniform 256
