/*
 * Sparsity allocation across the pruned matrices of a model: how many weights each matrix
 * loses, before the per-matrix selection (select.h) runs.
 *
 *   FP_SPARSITY_UNIFORM  every matrix gets the target sparsity s (the reference behaviour).
 *   FP_SPARSITY_GLOBAL   Global MP: one magnitude threshold over all matrices together; the
 *                        min_keep fraction caps each matrix so none collapses (every matrix
 *                        keeps at least ceil(numel * min_keep) weights).
 *   FP_SPARSITY_LAMP     LAMP (Lee et al., ICLR 2021): within a matrix sort |w| ascending
 *                        (ties by flat index), score(u) = w_u^2 / sum_{v >= u} w_v^2 with the
 *                        suffix sum accumulated in double from the largest weight down (0 if
 *                        that sum is 0); then one global threshold on the scores. The largest
 *                        weight of every matrix scores 1, so no matrix empties unless forced;
 *                        min_keep applies too.
 *
 * GLOBAL and LAMP prune exactly K = floor(N * s) of the N weights of all matrices: the K
 * first in the global order of (score, matrix index, position in the matrix's (|w|, index)
 * order), skipping weights of a matrix that already reached its cap. A matrix's pruned set
 * is then a prefix of its own magnitude order, so applying k[i] with FP_GROUP_LAYER and the
 * magnitude metric reproduces the global selection exactly; for other methods or groups pass
 * sparsity[i] to fp_select_spec_init.
 *
 * Exact without holding all scores: four passes at most, each histogramming the next 16 bits
 * of the 64-bit score keys per matrix and picking the bucket where the capped cumulative count
 * reaches K (LAMP re-sorts each matrix in each pass; memory: 256 KiB per matrix plus 8 bytes
 * per weight of the largest matrix).
 */
#ifndef FP_ALLOC_SPARSITY_H
#define FP_ALLOC_SPARSITY_H

#include <stddef.h>
#include <stdint.h>

enum fp_sparsity_scheme {
	FP_SPARSITY_UNIFORM,
	FP_SPARSITY_GLOBAL,
	FP_SPARSITY_LAMP,
};

/* One prunable matrix. Borrowed. */
struct fp_sparsity_mat {
	const char *name; /* for messages; may be NULL */
	const float *w;	  /* (rows, cols) weights; may be NULL for UNIFORM */
	size_t rows, cols;
};

struct fp_sparsity_opts {
	enum fp_sparsity_scheme scheme;
	double sparsity; /* in [0, 1]: per matrix (UNIFORM) or over all weights (GLOBAL, LAMP) */
	double min_keep; /* in [0, 1]: GLOBAL, LAMP: fraction of each matrix always kept */
};

/* Result for one matrix. */
struct fp_sparsity_out {
	uint64_t numel;	 /* rows * cols */
	uint64_t k;	 /* weights to prune: floor(numel * s) for UNIFORM */
	double sparsity; /* s for UNIFORM, k / numel otherwise (0 for an empty matrix) */
};

/*
 * Allocate: out (n) receives one entry per matrix of mats (n). Returns 0, or -EINVAL (bad
 * options, a non-finite weight, a matrix of more than 2^32 - 1 weights, or a target the
 * min_keep floor makes unreachable; detail names the matrix), -ENOMEM. Single-threaded.
 */
int fp_sparsity_alloc(const struct fp_sparsity_mat *mats, size_t n,
		      const struct fp_sparsity_opts *o, struct fp_sparsity_out *out);

/* "uniform", "global", "lamp". */
const char *fp_sparsity_scheme_name(enum fp_sparsity_scheme s);

/* Parse a scheme name into *ret. Returns 0 or -EINVAL. */
int fp_sparsity_scheme_parse(const char *s, enum fp_sparsity_scheme *ret);

#endif
