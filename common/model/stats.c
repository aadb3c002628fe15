/*
 * Per-block calibration statistics (see stats.h).
 */
#include "stats.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "alloc.h"
#include "err.h"
#include "par.h"

struct input_stats {
	size_t dim;
	double *sumsq; /* (dim) */
	float *xtx;    /* (dim, dim) upper triangle accumulated; NULL without FP_STATS_XTX */
	uint64_t nseq;
	uint64_t ntokens;
};

struct fp_stats {
	uint32_t block;
	unsigned flags;
	struct input_stats in[FP_IN_COUNT];
};

int fp_stats_new(const struct fp_model_cfg *cfg, uint32_t block, unsigned flags,
		 struct fp_stats **ret)
{
	struct fp_stats *st = calloc(1, sizeof(*st));
	int r = 0;

	if (!st)
		return -ENOMEM;
	st->block = block;
	st->flags = flags;
	for (int i = 0; i < FP_IN_COUNT; i++) {
		struct input_stats *s = &st->in[i];
		size_t sq;

		s->dim = fp_input_dim(cfg, (enum fp_input)i);
		s->sumsq = fp_callocarray(s->dim, sizeof(double));
		if (!s->sumsq) {
			r = -ENOMEM;
			goto out;
		}
		if (!(flags & FP_STATS_XTX))
			continue;
		if (!fp_mul_ok(s->dim, s->dim, &sq)) {
			r = -EOVERFLOW;
			goto out;
		}
		s->xtx = fp_aligned_array(sq, sizeof(float));
		if (!s->xtx) {
			r = -ENOMEM;
			goto out;
		}
		memset(s->xtx, 0, sq * sizeof(float));
	}
	*ret = st;
	st = NULL;
out:
	fp_stats_free(st);
	return r;
}

void fp_stats_free(struct fp_stats *st)
{
	if (!st)
		return;
	for (int i = 0; i < FP_IN_COUNT; i++) {
		free(st->in[i].sumsq);
		free(st->in[i].xtx);
	}
	free(st);
}

void fp_stats_reset(struct fp_stats *st)
{
	for (int i = 0; i < FP_IN_COUNT; i++) {
		struct input_stats *s = &st->in[i];

		memset(s->sumsq, 0, s->dim * sizeof(double));
		if (s->xtx)
			memset(s->xtx, 0, s->dim * s->dim * sizeof(float));
		s->nseq = 0;
		s->ntokens = 0;
	}
}

struct sumsq_job {
	const float *x; /* (rows, dim) */
	size_t rows, dim;
	double *sumsq; /* (dim) */
};

/* Columns [b, e): each thread owns its columns, so no reduction is needed. */
static void sumsq_cols(void *p, size_t b, size_t e, unsigned tid)
{
	struct sumsq_job *j = p;
	double *acc = j->sumsq;

	(void)tid;
	for (size_t t = 0; t < j->rows; t++) {
		const float *row = j->x + t * j->dim;

		for (size_t c = b; c < e; c++)
			acc[c] += (double)row[c] * row[c];
	}
}

int fp_stats_hook(void *ctx, const struct fp_hook_batch *b)
{
	struct fp_stats *st = ctx;
	struct input_stats *s;
	struct sumsq_job job;

	if (b->block != st->block || (unsigned)b->input >= FP_IN_COUNT)
		return fp_err_detail(-EINVAL, "statistics of block %" PRIu32 " got block %" PRIu32,
				     st->block, b->block);
	s = &st->in[b->input];
	if (b->cols != s->dim)
		return fp_err_detail(-EINVAL, "statistics: input width %zu, expected %zu", b->cols,
				     s->dim);
	job = (struct sumsq_job){ .x = b->x, .rows = b->rows, .dim = s->dim, .sumsq = s->sumsq };
	fp_par_for(s->dim, 64, sumsq_cols, &job);
	if (s->xtx && b->rows)
		cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)s->dim, (int)b->rows, 1.0f,
			    b->x, (int)s->dim, 1.0f, s->xtx, (int)s->dim);
	s->nseq += b->nseq;
	s->ntokens += b->rows;
	return 0;
}

static const struct input_stats *input_of(const struct fp_stats *st, enum fp_linear which)
{
	return &st->in[fp_linear_input(which)];
}

const double *fp_stats_sumsq(const struct fp_stats *st, enum fp_linear which, size_t *ret_n)
{
	const struct input_stats *s = input_of(st, which);

	if (ret_n)
		*ret_n = s->dim;
	return s->sumsq;
}

const float *fp_stats_xtx(struct fp_stats *st, enum fp_linear which, size_t *ret_n)
{
	struct input_stats *s = &st->in[fp_linear_input(which)];

	if (ret_n)
		*ret_n = s->dim;
	if (!s->xtx)
		return NULL;
	for (size_t i = 1; i < s->dim; i++)
		for (size_t j = 0; j < i; j++)
			s->xtx[i * s->dim + j] = s->xtx[j * s->dim + i];
	return s->xtx;
}

uint64_t fp_stats_nseq(const struct fp_stats *st, enum fp_linear which)
{
	return input_of(st, which)->nseq;
}

uint64_t fp_stats_ntokens(const struct fp_stats *st, enum fp_linear which)
{
	return input_of(st, which)->ntokens;
}

int fp_stats_scaler_row(const struct fp_stats *st, enum fp_linear which, float *out)
{
	const struct input_stats *s = input_of(st, which);

	if (!s->nseq)
		return -ENODATA;
	for (size_t j = 0; j < s->dim; j++)
		out[j] = (float)(s->sumsq[j] / (double)s->nseq);
	return 0;
}
