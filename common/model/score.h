/*
 * Importance metrics of one weight matrix (fedprllm.md §3.2, §4): the lower the metric, the
 * earlier a weight is pruned.
 *
 *   magnitude:  metric[i][j] = |W[i][j]|
 *   Wanda:      metric[i][j] = |W[i][j]| * sqrtf(scaler_row[j])      (one f32 multiply)
 *
 * Wanda's reference multiplies an fp16 |W| by the fp32 sqrt of its fp32 scaler_row, which
 * PyTorch promotes to fp32; sqrtf and the single multiply are correctly rounded, so for the
 * same W (widened to f32, exact) and the same scaler_row the metric here is bit-identical.
 *
 * A struct fp_metric_src describes where the metric of a matrix comes from without computing
 * it: the selection (select.h) computes it row by row in cache-sized pieces and never
 * materialises the (rows, cols) metric unless the caller does (fp_score_compute), e.g. for
 * SparseGPT's own metric or the server's negated vote counts (FP_METRIC_GIVEN).
 */
#ifndef FP_SCORE_H
#define FP_SCORE_H

#include <math.h>
#include <stddef.h>

enum fp_metric_kind {
	FP_METRIC_GIVEN,     /* x is the metric itself, any float except NaN */
	FP_METRIC_MAGNITUDE, /* x is W; metric = |W| */
	FP_METRIC_WANDA,     /* x is W; metric = |W| * sqrtf(scaler[col]) */
};

/* A weight matrix and how to score it. Plain data; every pointer is borrowed. */
struct fp_metric_src {
	enum fp_metric_kind kind;
	const float *x;	     /* (rows, cols) row-major: the metric (GIVEN) or W = (out, in) */
	const float *scaler; /* (cols): Wanda's scaler_row (stats.h), FP_METRIC_WANDA only */
	size_t rows, cols;
	const char *name; /* names the matrix in error messages; may be NULL */
};

/* Metric of one weight under magnitude pruning. */
static inline float fp_score_magnitude1(float w)
{
	return fabsf(w);
}

/* Wanda metric of one weight given sqrtf(scaler_row[col]) (see fp_score_sqrt_scaler). */
static inline float fp_score_wanda1(float w, float sqrt_scaler)
{
	return fabsf(w) * sqrt_scaler;
}

/* The name used for src in messages: src->name or "matrix". Borrowed. */
const char *fp_score_name(const struct fp_metric_src *src);

/*
 * Validate src: known kind, non-NULL pointers, rows * cols without overflow, and for Wanda a
 * scaler that is finite and >= 0 in every column. Returns 0 or -EINVAL with a detail naming
 * the matrix (and the column). Does not look at x (NaN metrics are refused by the selection).
 */
int fp_score_check(const struct fp_metric_src *src);

/*
 * out (cols) = sqrtf(scaler (cols)), refusing negative, NaN and infinite entries with -EINVAL
 * (detail names `name` and the column). out may alias scaler.
 */
int fp_score_sqrt_scaler(float *out, const float *scaler, size_t cols, const char *name);

/*
 * Materialise the metric: metric (rows, cols) from src, which fp_score_check must accept
 * (for FP_METRIC_GIVEN the values are copied). Returns 0 or -EINVAL. Any thread.
 */
int fp_score_compute(float *metric, const struct fp_metric_src *src);

#endif
