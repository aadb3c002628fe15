/*
 * Importance metrics (see score.h).
 */
#include "score.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"

const char *fp_score_name(const struct fp_metric_src *src)
{
	return src && src->name ? src->name : "matrix";
}

int fp_score_sqrt_scaler(float *out, const float *scaler, size_t cols, const char *name)
{
	for (size_t j = 0; j < cols; j++) {
		float s = scaler[j];

		if (!(s >= 0.0f) || isinf(s))
			return fp_err_detail(-EINVAL,
					     "%s: scaler_row[%zu] = %g is not a finite number >= 0",
					     name ? name : "matrix", j, (double)s);
		out[j] = sqrtf(s);
	}
	return 0;
}

int fp_score_check(const struct fp_metric_src *src)
{
	const char *name = fp_score_name(src);
	size_t n;

	if (!src)
		return fp_err_detail(-EINVAL, "no metric source");
	if (src->kind != FP_METRIC_GIVEN && src->kind != FP_METRIC_MAGNITUDE &&
	    src->kind != FP_METRIC_WANDA)
		return fp_err_detail(-EINVAL, "%s: unknown metric kind %d", name, (int)src->kind);
	if (!fp_mul_ok(src->rows, src->cols, &n) || !fp_mul_ok(n, sizeof(float), &n))
		return fp_err_detail(-EINVAL, "%s: shape (%zu, %zu) overflows", name, src->rows,
				     src->cols);
	if (n && !src->x)
		return fp_err_detail(-EINVAL, "%s: no data", name);
	if (src->kind != FP_METRIC_WANDA)
		return 0;
	if (src->cols && !src->scaler)
		return fp_err_detail(-EINVAL, "%s: Wanda needs scaler_row", name);
	for (size_t j = 0; j < src->cols; j++) {
		float s = src->scaler[j];

		if (!(s >= 0.0f) || isinf(s))
			return fp_err_detail(-EINVAL,
					     "%s: scaler_row[%zu] = %g is not a finite number >= 0",
					     name, j, (double)s);
	}
	return 0;
}

int fp_score_compute(float *metric, const struct fp_metric_src *src)
{
	size_t rows, cols;
	float *sq = NULL;
	int r;

	r = fp_score_check(src);
	if (r < 0)
		return r;
	rows = src->rows;
	cols = src->cols;
	if (src->kind == FP_METRIC_GIVEN) {
		if (rows && cols)
			memmove(metric, src->x, rows * cols * sizeof(float));
		return 0;
	}
	if (src->kind == FP_METRIC_MAGNITUDE) {
		for (size_t i = 0; i < rows * cols; i++)
			metric[i] = fp_score_magnitude1(src->x[i]);
		return 0;
	}
	sq = fp_mallocarray(cols ? cols : 1, sizeof(float));
	if (!sq)
		return fp_err_detail(-ENOMEM, "%s: out of memory", fp_score_name(src));
	r = fp_score_sqrt_scaler(sq, src->scaler, cols, src->name);
	for (size_t i = 0; r == 0 && i < rows; i++) {
		const float *w = src->x + i * cols; /* (cols) */
		float *m = metric + i * cols;	    /* (cols) */

		for (size_t j = 0; j < cols; j++)
			m[j] = fp_score_wanda1(w[j], sq[j]);
	}
	free(sq);
	return r;
}
