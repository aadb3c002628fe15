/*
 * Server-side aggregation of FedPrLLM (fedprllm.md §6.3, §6.4; docs/aggregation.md): vote counts
 * over N client masks, then exactly k = floor(group size * sparsity) weights with the most
 * prune votes per comparison group, ties at the boundary count broken by a documented rule,
 * optional weight scaling. The same code serves the server's rounds and `fedprune aggregate`.
 *
 * Streaming, one tensor at a time:
 *
 *   fp_agg_new(&opts)                       once per round
 *   for each tensor (rows, cols):
 *       fp_agg_begin(a, name, rows, cols)
 *       fp_agg_add(a, first, n, bits)       clients [first, first + n), in order, each once;
 *                                           any batch size (1 .. N) per call
 *       fp_agg_select(a, w, mask, &stats)   mask = the global mask of the tensor
 *       fp_agg_scale(a, mask, w, f16)       optional: zero pruned, scale kept weights
 *   fp_agg_free(a)
 *
 * Memory (bytes per weight of the LARGEST tensor seen, kept between tensors): B/8 for the
 * bit-sliced counters (B = bits of N: 7 for 64 clients); + 1 (N <= 255) or 2 for byte counts
 * once materialised (rows, columns, scaling, fp_agg_counts, fp_agg_histogram; a layer
 * selection does without); weighted: + 4 (f32 weighted counts) and + 4 for a layer group (a
 * copy of the vote keys); row/column groups: one group of scratch per thread; 16 bytes per
 * tied weight when the tie rule must decide. The caller holds the client masks it passes
 * (one client's bits at a time is enough), the output mask and, for magnitude ties or
 * scaling, the dense f32 weights of the tensor. Nothing is kept for the whole model.
 *
 * Vote counting. Unweighted: bit-sliced vertical counters over 256-bit vectors (a Harley-Seal
 * carry-save tree per 16 clients, ripple adds for the rest; AVX2 and AVX-512 VPOPCNTQ when the
 * CPU has them, portable vector code otherwise), plus each client's pruned count. Byte counts
 * (u8 for N <= 255, else u16) and the vote histogram are made from the counters on first use.
 * Weighted: in addition a f32 sum of the weights of the clients pruning each weight, added in
 * client order (so it is deterministic; exact when the weights are integers with a total
 * below 2^24). fp_agg_count_naive is the bit-by-bit reference.
 *
 * Selection, per group (layer = the whole matrix, row = one output row, column = one input
 * column): the boundary vote c* is the k-th largest vote in the group; every weight with more
 * votes than c* is pruned, and of the `tied` weights with exactly c* votes the `need` = k -
 * (number above) with the smallest tie key are pruned. Tie keys (64 bits, unique in a group):
 *   magnitude  (|W| as f32 bits) << 32 | index     smallest |W| first, then lower index
 *   index      index                                lower index first
 *   random     (SipHash-2-4 of the flat index, keyed by BLAKE2b-128(u64le(seed) || name),
 *              high 32 bits) << 32 | index           uniformly random, reproducible
 * where index is the position inside the group (flat row-major index for layer, column for
 * row, row for column), i.e. lower index = lower flat index in every case. Everything is O(size):
 * the boundary of an unweighted layer comes from a radix select on the bit planes (or the
 * histogram when it exists), of other groups from an MSB radix select on their counts; the
 * tie threshold from a radix select over the tied entries only. fp_agg_select_naive is the
 * sort-based reference.
 *
 * Threads: one struct fp_agg is used by one thread; the heavy loops run on fp_par_for
 * (par.h), so do not call these inside another fp_par_for region.
 */
#ifndef FP_AGGREGATE_H
#define FP_AGGREGATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "select.h"

#define FP_AGG_MAX_CLIENTS 65535u      /* counts fit u16 */
#define FP_AGG_MAX_NUMEL   0xffffffffu /* weights per tensor: indexes fit 32 bits */
#define FP_AGG_MAX_PAIRS   256u	       /* pairwise agreement for N up to this */
#define FP_AGG_HIST_MAX	   256u	       /* per-tensor histograms in report.json up to N */

/* How to break ties at the boundary vote count (see above). */
enum fp_agg_tie {
	FP_AGG_TIE_MAGNITUDE, /* default */
	FP_AGG_TIE_INDEX,
	FP_AGG_TIE_RANDOM,
};

/* "magnitude", "index", "random". */
const char *fp_agg_tie_name(enum fp_agg_tie t);

/* Parse one of the names above into *ret. Returns 0 or -EINVAL. */
int fp_agg_tie_parse(const char *s, enum fp_agg_tie *ret);

/* Settings of one aggregation (one round). */
struct fp_agg_opts {
	size_t nclients;       /* N, 1 .. FP_AGG_MAX_CLIENTS */
	const double *weights; /* (nclients) or NULL (1 each): finite, > 0, float-representable */
	double sparsity;       /* [0, 1]: k = floor(group size * sparsity) */
	enum fp_group group;   /* FP_GROUP_LAYER (FedPrLLM default), _ROW or _COLUMN */
	enum fp_agg_tie tie;
	uint64_t seed; /* FP_AGG_TIE_RANDOM only */
	bool pairwise; /* accumulate client-pair intersections (fp_agg_pairs) */
};

/* Validate opts. Returns 0 or -EINVAL with a detail naming the bad field. */
int fp_agg_opts_check(const struct fp_agg_opts *o);

struct fp_agg;

/*
 * Start an aggregation with the settings o (copied, weights included). On success *ret is
 * owned by the caller (fp_agg_free). Returns 0, -EINVAL (see fp_agg_opts_check) or -ENOMEM.
 */
int fp_agg_new(const struct fp_agg_opts *o, struct fp_agg **ret);

/* Free; NULL is fine. */
void fp_agg_free(struct fp_agg *a);

/*
 * Start the tensor `name` (copied) of shape (rows, cols): zero its counts. Returns 0,
 * -EINVAL (empty shape, more than FP_AGG_MAX_NUMEL weights; detail names the tensor) or
 * -ENOMEM.
 */
int fp_agg_begin(struct fp_agg *a, const char *name, size_t rows, size_t cols);

/*
 * Add the masks of clients [first, first + n) of the current tensor: bits[i] (borrowed) is the
 * fp_mask_bytes(rows * cols)-byte mask of client first + i (set bit = that client prunes the
 * weight; padding bits must be 0). Clients must come in order, each exactly once: first is
 * the number added so far. When the last client is added the counters are final (byte counts
 * and histogram follow on first use). Client-pair intersections (opts.pairwise) are exact only
 * if all N come in ONE call. Returns 0, -EINVAL (order, range, padding bits set; detail names
 * the tensor and the client) or -ENOMEM.
 */
int fp_agg_add(struct fp_agg *a, size_t first, size_t n, const uint8_t *const *bits);

/* What happened in one tensor. */
struct fp_agg_tensor_stats {
	uint64_t rows, cols, numel;
	uint64_t groups;       /* 1 (layer), rows (row) or cols (column) */
	uint64_t group_size;   /* numel, cols or rows */
	uint64_t k;	       /* pruned per group */
	uint64_t pruned;       /* groups * k: bits set in the mask */
	uint64_t tied;	       /* weights whose vote equals their group's boundary vote */
	uint64_t tied_pruned;  /* of those, pruned */
	uint64_t split_groups; /* groups where the tie rule decided (0 < tied_pruned < tied) */
	double boundary_min;   /* boundary vote (count, or weighted count) over groups with k > 0 */
	double boundary_max;   /* (both 0 when k == 0) */
	double count_seconds;  /* wall time in fp_agg_add and making byte counts, this tensor */
	double select_seconds; /* wall time in fp_agg_select */
};

/*
 * Select the global mask of the current tensor once every client is added: mask
 * (fp_mask_bytes(rows * cols) bytes, caller-owned) is fully overwritten. w (rows, cols) is the
 * dense f32 weight, borrowed; required for FP_AGG_TIE_MAGNITUDE, ignored otherwise (may be
 * NULL). *ret (optional) gets the statistics. Returns 0, -EINVAL (clients missing, w missing,
 * a NaN weight among the tied ones; detail names the tensor and position) or -ENOMEM.
 */
int fp_agg_select(struct fp_agg *a, const float *w, uint8_t *mask, struct fp_agg_tensor_stats *ret);

/*
 * Weight scaling (fedprllm.md §6.4), after fp_agg_select: pruned weights of w (rows, cols,
 * modified in place) become 0 and each kept weight is multiplied by the share of the clients
 * that kept it, f = (N - count) / N in f32 (weighted: (total - wcount) / total, computed in
 * double, rounded to f32). f16_factor rounds f to IEEE half first, as the reference does when
 * the model is fp16: then, for an F16 tensor, w * f in f32 rounded back to F16 is bit-identical
 * to the reference. Returns 0, -EINVAL (counts not final) or -ENOMEM.
 */
int fp_agg_scale(struct fp_agg *a, const uint8_t *mask, float *w, bool f16_factor);

/*
 * Vote counts of the current tensor (rows * cols), once all clients are in (else NULL);
 * borrowed, valid until the next fp_agg_begin. With N <= 255 the counts are kept as u8 and
 * this makes a u16 copy on first use (NULL if that allocation fails).
 */
const uint16_t *fp_agg_counts(struct fp_agg *a);

/* Weighted counts (rows * cols), or NULL when unweighted; borrowed, like fp_agg_counts. */
const float *fp_agg_wcounts(const struct fp_agg *a);

/*
 * Histogram of the counts of the current tensor: N + 1 entries, once all clients are in (else
 * NULL); borrowed, valid until the next fp_agg_begin. Computed on first use (see "Vote
 * counting" above).
 */
const uint64_t *fp_agg_histogram(struct fp_agg *a);

/* Pruned weights of each client in the current tensor: N entries; borrowed. */
const uint64_t *fp_agg_client_pruned(const struct fp_agg *a);

/*
 * Client-pair intersections of the current tensor as an N x N row-major matrix: entry
 * (i, j), i < j, = weights both i and j prune; (i, i) = pruned by i; below the diagonal 0.
 * NULL unless opts.pairwise, N <= FP_AGG_MAX_PAIRS and all N clients came in one fp_agg_add.
 * Borrowed, valid until the next fp_agg_begin.
 */
const uint64_t *fp_agg_pairs(const struct fp_agg *a);

/*
 * Internal, for tests: limit the kernels to level 0 (portable), 1 (AVX2 + POPCNT, no AVX-512)
 * or 2 (the best the CPU has). Never raises the level above what the CPU supports.
 */
void fp__agg_isa(struct fp_agg *a, int level);

/*
 * Reference counting, one bit at a time: counts (nbits) = number of the n masks with each bit
 * set; wcounts (nbits, may be NULL) = sum of weights[c] (in client order, f32) over those masks.
 */
void fp_agg_count_naive(uint16_t *counts, float *wcounts, size_t nbits, const uint8_t *const *masks,
			size_t n, const double *weights);

/*
 * Reference selection by sorting every group on (vote descending, tie key ascending) and
 * taking the first k: same arguments as fp_agg_select with the votes given explicitly
 * (counts, and wcounts when o->weights is set; w for magnitude ties). mask is overwritten.
 * Returns 0, -EINVAL or -ENOMEM.
 */
int fp_agg_select_naive(uint8_t *mask, const uint16_t *counts, const float *wcounts, const float *w,
			size_t rows, size_t cols, const char *name, const struct fp_agg_opts *o);

/* ---- the file-level driver: what `fedprune aggregate` and the server run ---- */

struct cJSON;

/* An aggregation over mask files on disk. */
struct fp_agg_job {
	const char *model_dir;	       /* dense model (HF directory) */
	const char *const *mask_paths; /* (opts.nclients) mask files, one per client */
	const char *const *client_ids; /* (opts.nclients) names in the report, or NULL: paths */
	struct fp_agg_opts opts;       /* opts.pairwise is set from `agreement` below */
	bool scale;		       /* weight scaling in the output model */
	bool agreement;		       /* mean pairwise Jaccard per block (costs N^2/2 ANDs) */
	bool require_all;	       /* every model.layers.*.{linear}.weight must be covered */
	size_t batch_mem;	       /* bytes of client masks held at once (0: 512 MiB) */
	const char *out_dir;	       /* must not exist, or be an empty directory */
	bool mask_only; /* write only mask.fpmask and report.json, no model files (e.g. the
			 * per-block rounds of iterative FedPrLLM) */
};

/*
 * Run the whole aggregation: check every mask file (same tensors, order and shapes as each
 * other, each present in the model with that shape, 2-D, float dtype; with require_all also
 * covering every decoder linear of the model), then tensor by tensor read tensor i of every
 * mask (in batches of at most batch_mem bytes), count, select, append tensor i to the global
 * mask, zero (and with job->scale, scale) the weights in f32 and hand each finished decoder
 * layer to the model writer (hfout.h). OUT (which must not exist or be an empty directory)
 * becomes a Hugging Face model directory holding the pruned model in the source's dtypes and
 * sharding, plus mask.fpmask and report.json (docs/aggregation.md). Everything is written into
 * a temporary directory renamed to OUT at the end: on failure OUT does not appear. If
 * ret_report is not NULL it receives the report (caller frees with cJSON_Delete), e.g. for a
 * server to add fields and rewrite it with fp_agg_report_write. Returns 0 or a negative errno
 * with fp_err_last() naming the file and the tensor.
 */
int fp_agg_run(const struct fp_agg_job *job, struct cJSON **ret_report);

/* Write report as DIR/report.json atomically (temp file, fsync, rename). Returns 0 or -errno. */
int fp_agg_report_write(const char *dir, const struct cJSON *report);

#endif
