/*
 * Calibration statistics of one decoder block: for each distinct linear input (forward.h,
 * enum fp_input) the per-column sum of squares over every token of every sample (Wanda), and
 * optionally X^T X (SparseGPT), plus how many samples and tokens went in.
 *
 * Use a struct fp_stats as the hook context of fp_block_forward:
 *
 *   fp_stats_new(cfg, i, FP_STATS_XTX, &st);
 *   fp_block_forward(m, blk, ds, in, out, fp_stats_hook, st);
 *   ... fp_stats_scaler_row(st, FP_LIN_Q, row) ... prune ...
 *   fp_stats_free(st);
 *
 * Only the block being pruned needs its statistics alive; free them after pruning it.
 * Memory: sums of squares are (hidden + qd + hidden + intermediate) doubles; X^T X adds
 * hidden² + qd² + hidden² + intermediate² floats (676 MB for LLaMA-7B).
 *
 * Accuracy: sums of squares accumulate in double; X^T X in f32 via cblas_ssyrk with beta = 1
 * (SparseGPT accumulates in f32 too).
 */
#ifndef FP_STATS_H
#define FP_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "forward.h"
#include "model.h"

enum {
	FP_STATS_XTX = 1u << 0, /* also accumulate X^T X */
};

struct fp_stats;

/*
 * New zeroed statistics for block `block` of a model with config cfg (copied). On success
 * *ret is owned by the caller (fp_stats_free). Returns 0, -ENOMEM or -EINVAL.
 */
int fp_stats_new(const struct fp_model_cfg *cfg, uint32_t block, unsigned flags,
		 struct fp_stats **ret);

/* Free; NULL is fine. */
void fp_stats_free(struct fp_stats *st);

/* Zero every sum and count (reuse for another pass over the same block). */
void fp_stats_reset(struct fp_stats *st);

/*
 * The fp_hook_fn: ctx is a struct fp_stats *. Adds b's rows into the sums of b->input.
 * Returns -EINVAL if b is for another block or has the wrong width.
 */
int fp_stats_hook(void *ctx, const struct fp_hook_batch *b);

/*
 * Per-input-column sum over all tokens of x_j² for the input of `which` (linears sharing an
 * input share the array). *ret_n = in_features. Borrowed, valid until free or reset.
 */
const double *fp_stats_sumsq(const struct fp_stats *st, enum fp_linear which, size_t *ret_n);

/*
 * Sum over all tokens of xᵀx (in_features, in_features), full symmetric matrix row-major, or
 * NULL without FP_STATS_XTX. Not const: the lower triangle is filled from the accumulated
 * upper one on each call. Borrowed, valid until free or reset.
 */
const float *fp_stats_xtx(struct fp_stats *st, enum fp_linear which, size_t *ret_n);

/* Samples (sequences) and tokens accumulated for the input of `which`. */
uint64_t fp_stats_nseq(const struct fp_stats *st, enum fp_linear which);
uint64_t fp_stats_ntokens(const struct fp_stats *st, enum fp_linear which);

/*
 * Wanda's scaler_row (fedprllm.md §3.1): out[j] = sumsq[j] / nseq, in_features floats.
 * Returns 0, or -ENODATA when no sample was accumulated.
 */
int fp_stats_scaler_row(const struct fp_stats *st, enum fp_linear which, float *out);

#endif
