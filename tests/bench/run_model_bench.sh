#!/bin/bash
# Model-core benchmarks of issue 3, end to end (results go to docs/benchmarks.md,
# section "Model core (issue 3)").
#
#   tests/bench/run_model_bench.sh [--build DIR] [--reps N] [--rss-blocks N]
#                                  [--rss-dtype F32|BF16] [--no-torch] [--quick] [--keep]
#
# Run from anywhere inside the repository. Steps:
#   1. Build DIR (default build-bench; created with --buildtype=release if missing).
#   2. Generate into a temporary directory (under $TMPDIR, default /tmp; removed on exit
#      unless --keep) the forward-pass model of issue 3: Llama, hidden 2048, intermediate
#      5632, 32 heads, 4 KV heads, 4 blocks, vocab 32000, F32 (1.23 GB), and 8 x 512 random
#      tokens. Run bench_forward with reps N (default 5): fp_block_forward vs bare sgemm of
#      the same shapes vs PyTorch (tests/bench/torch_forward.py), interleaved block by block.
#      Two torch processes are compared: the default environment, and OMP_WAIT_POLICY=PASSIVE
#      (torch's OpenMP threads then sleep instead of spinning while OpenBLAS's threads run).
#   3. Delete that model, generate the RSS model (same shapes, --rss-blocks blocks, default
#      8, untied lm_head, --rss-dtype default F32: 1.93 GB on disk) and run bench_rss, the
#      statistics pass (sums of squares of every linear input, block by block), under
#      /usr/bin/time -v; then again with --release-early --release-embed (the driver releases
#      each block's mapped pages right after fp_block_load rather than after the block, and
#      the embedding's after fp_embed), to show what the mapped pages cost.
#   4. Print a summary table.
# Threads: 2 everywhere (fp_par, OpenBLAS via OPENBLAS_NUM_THREADS=2, torch.set_num_threads).
# OPENBLAS_CORETYPE is passed through unchanged; both programs print the kernel in use.
# --quick runs tiny shapes (hidden 256, 2 blocks, 1 rep) to check the script itself.
# Needs: /usr/bin/python3 with numpy and torch (Debian python3-torch), /usr/bin/time
# (apt-get install time), meson and ninja. Takes about 15-30 minutes on 2 busy cores.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
build=build-bench
reps=5
rss_blocks=8
rss_dtype=F32
torch=1
quick=0
keep=0
py=/usr/bin/python3

while [ $# -gt 0 ]; do
	case "$1" in
	--build) build=$2; shift 2 ;;
	--reps) reps=$2; shift 2 ;;
	--rss-blocks) rss_blocks=$2; shift 2 ;;
	--rss-dtype) rss_dtype=$2; shift 2 ;;
	--no-torch) torch=0; shift ;;
	--quick) quick=1; shift ;;
	--keep) keep=1; shift ;;
	-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "run_model_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
	esac
done
case "$build" in /*) ;; *) build=$root/$build ;; esac

[ -x /usr/bin/time ] || { echo "run_model_bench.sh: /usr/bin/time missing (apt-get install time)" >&2; exit 1; }
if [ ! -d "$build" ]; then
	meson setup "$build" "$root" --buildtype=release
fi
ninja -C "$build" tests/bench/bench_forward tests/bench/bench_rss >/dev/null

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fp-model-bench.XXXXXX")
cleanup() { [ "$keep" = 1 ] && echo "kept $tmp" || rm -rf "$tmp"; }
trap cleanup EXIT

if [ "$quick" = 1 ]; then
	shape=(--hidden 256 --intermediate 704 --heads 8 --kv-heads 2 --vocab 1000)
	nsamples=4 seqlen=128 fwd_blocks=2 rss_blocks=2 reps=1
else
	shape=()
	nsamples=8 seqlen=512 fwd_blocks=4
fi
export OPENBLAS_NUM_THREADS=2

echo "== machine"
echo "nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
echo "torch: $($py -c 'import torch; c = torch.__config__.show(); print(torch.__version__, "BLAS_INFO=" + c.split("BLAS_INFO=")[1].split(",")[0])' 2>/dev/null || echo unavailable)"

echo "== 1. forward pass ($fwd_blocks blocks F32, $nsamples x $seqlen tokens, $reps reps)"
$py "$root/tests/bench/gen_bench_model.py" --out "$tmp/fwd" --blocks "$fwd_blocks" "${shape[@]}" \
	--tokens "$tmp/tokens.u32" --nsamples "$nsamples" --seqlen "$seqlen"
torch_args=()
if [ "$torch" = 1 ]; then
	torch_args=(--torch "$root/tests/bench/torch_forward.py" --torch-env "OMP_WAIT_POLICY=PASSIVE")
fi
"$build/tests/bench/bench_forward" --model "$tmp/fwd" --data "$tmp/tokens.u32" \
	--nsamples "$nsamples" --seqlen "$seqlen" --threads 2 --reps "$reps" "${torch_args[@]}" \
	| tee "$tmp/forward.log"
echo "load average after the forward benchmark: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$tmp/fwd"

echo "== 2. peak RSS of the statistics pass ($rss_blocks blocks $rss_dtype)"
$py "$root/tests/bench/gen_bench_model.py" --out "$tmp/rss" --blocks "$rss_blocks" "${shape[@]}" \
	--dtype "$rss_dtype"
/usr/bin/time -v -o "$tmp/time.txt" "$build/tests/bench/bench_rss" --model "$tmp/rss" \
	--data "$tmp/tokens.u32" --nsamples "$nsamples" --seqlen "$seqlen" --threads 2 \
	| tee "$tmp/rss.log"
time_kb=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$tmp/time.txt")
echo "/usr/bin/time -v: Maximum resident set size $time_kb kB"
echo "== 2b. the same pass, mapped pages released early (--release-early --release-embed)"
/usr/bin/time -v -o "$tmp/time2.txt" "$build/tests/bench/bench_rss" --model "$tmp/rss" \
	--data "$tmp/tokens.u32" --nsamples "$nsamples" --seqlen "$seqlen" --threads 2 \
	--release-early --release-embed | tee "$tmp/rss2.log"
time2_kb=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$tmp/time2.txt")
echo "/usr/bin/time -v: Maximum resident set size $time2_kb kB"
rm -rf "$tmp/rss"

# "result key=value" lines -> value of key
val() { grep -h '^result ' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }
f=$tmp/forward.log r=$tmp/rss.log
need=$(val "$r" need_bytes)
echo
echo "== summary"
printf '%-58s %s\n' "(a) linear GFLOP/s in fp_block_forward / bare sgemm" \
	"$(val "$f" ratio_e2e) end to end, $(val "$f" ratio_insitu) in situ (target >= 0.7)"
printf '%-58s %s\n' "    the same per CPU-second" "$(val "$f" ratio_e2e_cpu)"
printf '%-58s %s\n' "    GFLOP/s: bare / forward / inside linear sgemms" \
	"$(val "$f" bare_gflops) / $(val "$f" fwd_gflops) / $(val "$f" lin_gflops)"
if [ "$torch" = 1 ]; then
	printf '%-58s %s\n' "(b) tokens/s ours / torch (default env)" \
		"$(val "$f" ratio_torch0) (ours $(val "$f" fwd_tok_s), torch $(val "$f" torch0_tok_s); target >= 1.0, aim 1.5)"
	printf '%-58s %s\n' "    the same per CPU-second" "$(val "$f" ratio_torch0_cpu)"
	printf '%-58s %s\n' "    tokens/s ours / torch (OMP_WAIT_POLICY=PASSIVE)" \
		"$(val "$f" ratio_torch1) (torch $(val "$f" torch1_tok_s)), per CPU-second $(val "$f" ratio_torch1_cpu)"
	printf '%-58s %s\n' "    NMSE of the last block's output, ours vs torch" "$(val "$f" nmse_torch)"
fi
printf '%-58s %s\n' "    CPU/wall of fp_block_forward, bare sgemm" "$(val "$f" cpu_fwd), $(val "$f" cpu_bare)"
printf '%-58s %s\n' "(2) model on disk ($rss_blocks blocks $rss_dtype)" \
	"$(awk -v b="$(val "$r" disk_bytes)" 'BEGIN {printf "%.3f GB", b / 1e9}')"
printf '%-58s %s\n' "    peak RSS (/usr/bin/time -v)" "$(awk -v k="$time_kb" 'BEGIN {printf "%.1f MiB", k / 1024}')"
printf '%-58s %s\n' "    needed: largest f32 block + activations + scratch" \
	"$(awk -v b="$need" 'BEGIN {printf "%.1f MiB", b / 1048576}')"
printf '%-58s %s\n' "    ratio (target <= 1.5)" \
	"$(awk -v k="$time_kb" -v b="$need" 'BEGIN {printf "%.3f", k * 1024 / b}')"
printf '%-58s %s\n' "    peak RSS, ratio with pages released early (2b)" \
	"$(awk -v k="$time2_kb" -v b="$need" 'BEGIN {printf "%.1f MiB, %.3f", k / 1024, k * 1024 / b}')"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
