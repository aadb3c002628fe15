/*
 * Mask selection: prune exactly k lowest-metric weights in every comparison group
 * (fedprllm.md §3.3, §3.4, §4, §6.3; docs/pruning.md).
 *
 *   FP_GROUP_ROW     each output row (cols weights), Wanda's default
 *   FP_GROUP_LAYER   the whole matrix (rows * cols weights), magnitude's default
 *   FP_GROUP_COLUMN  each input column (rows weights)
 *   FP_GROUP_NM      every m consecutive columns of a row (columns [g*m, g*m+m)); n pruned
 *
 * Order: ascending metric; among equal metrics the lower index is pruned first (column index
 * in a row or N:M group, row index in a column, flat row-major index in a layer). -0 equals
 * +0. This is exactly a stable ascending sort followed by taking the first k, as the
 * reference does for rows and columns. The reference magnitude pruner instead prunes every
 * weight <= the k-th value (at least k+1, all ties); we prune exactly k.
 *
 * A NaN metric (NaN weight, or 0 * inf) is refused: -EINVAL naming the matrix and the first
 * NaN position in row-major order; the mask contents are then unspecified. Infinities are
 * ordered normally.
 *
 * The mask is bit-packed as in mask.h (bit = 1: pruned) and fully overwritten.
 *
 * Speed: no sort. The k-th smallest key of each group is found by sampling + one branch-free
 * pass (Floyd-Rivest) and a radix select on the small remainder, then one pass emits the bits
 * (SSE2). Blocks of rows (ROW, NM, LAYER) or of columns (COLUMN, after a tiled transpose of
 * the keys) are spread over fp_par_threads() threads. Scratch memory: 8 bytes per weight for
 * LAYER, 4 for COLUMN, a few rows per thread otherwise. fp_select_naive is the plain
 * stable-sort reference the fast path is tested against.
 */
#ifndef FP_SELECT_H
#define FP_SELECT_H

#include <stddef.h>
#include <stdint.h>

#include "score.h"

enum fp_group {
	FP_GROUP_ROW,
	FP_GROUP_LAYER,
	FP_GROUP_COLUMN,
	FP_GROUP_NM,
};

/* What to prune in one matrix. */
struct fp_select_spec {
	enum fp_group group;
	uint64_t k;    /* ROW, LAYER, COLUMN: weights pruned in every group (<= group size) */
	unsigned n, m; /* NM: n pruned (n <= m) in every m consecutive columns; cols % m == 0 */
};

/*
 * k = floor(group_size * sparsity) computed in double, bit-identical to Python's
 * int(group_size * s) for group sizes below 2^53. sparsity must be in [0, 1].
 */
uint64_t fp_select_k(uint64_t group_size, double sparsity);

/* Weights per group: cols (ROW), rows * cols (LAYER), rows (COLUMN), m (NM). */
uint64_t fp_select_group_size(const struct fp_select_spec *spec, size_t rows, size_t cols);

/*
 * *ret = the spec pruning `sparsity` of every group of kind g (not FP_GROUP_NM) of a
 * (rows, cols) matrix. Returns 0 or -EINVAL (sparsity outside [0, 1] or NaN, bad group).
 */
int fp_select_spec_init(struct fp_select_spec *ret, enum fp_group g, double sparsity, size_t rows,
			size_t cols);

/* Total weights the spec prunes in a (rows, cols) matrix (the spec must be valid). */
uint64_t fp_select_pruned(const struct fp_select_spec *spec, size_t rows, size_t cols);

/*
 * Validate spec for a (rows, cols) matrix: known group, k <= group size, for N:M m >= 1,
 * n <= m and cols % m == 0. Returns 0 or -EINVAL with a detail naming `name` (may be NULL).
 */
int fp_select_check(const struct fp_select_spec *spec, size_t rows, size_t cols, const char *name);

/*
 * mask (fp_mask_bytes(rows * cols) bytes) = the weights of src (see score.h) that spec
 * prunes. src and spec are borrowed. Returns 0, -EINVAL (bad src or spec, NaN metric; detail
 * names the matrix) or -ENOMEM. Call from one thread at a time and not inside a fp_par_for
 * region (it runs its own).
 */
int fp_select(uint8_t *mask, const struct fp_metric_src *src, const struct fp_select_spec *spec);

/* The same by materialising the metric and stable-sorting every group (reference for tests). */
int fp_select_naive(uint8_t *mask, const struct fp_metric_src *src,
		    const struct fp_select_spec *spec);

/* "row", "layer", "column", "nm". */
const char *fp_group_name(enum fp_group g);

/* Parse "row", "layer" or "column" into *ret. Returns 0 or -EINVAL. */
int fp_group_parse(const char *s, enum fp_group *ret);

#endif
