/*
 * Streaming perplexity (see eval.h).
 */
#include "eval.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "forward.h"

#define DEFAULT_ACT_BYTES ((size_t)2 << 30)

/* Samples [s0, s1) of ds as a dataset of their own; off rebased into the caller's buffer. */
static void sub_dataset(const struct fp_dataset *ds, size_t s0, size_t s1, size_t *off,
			struct fp_dataset *sub)
{
	size_t base = ds->off[s0];

	sub->nsamples = s1 - s0;
	sub->len = ds->len + s0;
	sub->off = off;
	sub->ids = ds->ids + base;
	sub->ntokens = 0;
	sub->seqlen = ds->seqlen;
	for (size_t i = s0; i < s1; i++) {
		off[i - s0] = ds->off[i] - base;
		sub->ntokens += ds->len[i];
	}
}

/* Embed, run every block, head: nll (sub->nsamples) mean CE per window. */
static int run_group(struct fp_model *m, const struct fp_dataset *sub,
		     const struct fp_eval_opts *opts, float *a, float *b, double *nll)
{
	const struct fp_model_cfg *c = fp_model_config(m);
	struct fp_block *blk = NULL;
	int r;

	r = fp_embed(m, sub, a);
	for (uint32_t i = 0; r >= 0 && i < c->nlayers; i++) {
		float *t;

		r = fp_block_load(m, i, &blk);
		if (r < 0)
			break;
		r = fp_block_forward(m, blk, sub, a, b, NULL, NULL);
		fp_block_free(blk);
		blk = NULL;
		fp_block_release_source(m, i);
		t = a;
		a = b;
		b = t;
		if (opts && opts->progress)
			opts->progress(opts->progress_ctx, i, c->nlayers);
	}
	if (r >= 0)
		r = fp_head_nll(m, a, sub, nll);
	return r;
}

int fp_eval_perplexity(struct fp_model *m, const struct fp_dataset *ds,
		       const struct fp_eval_opts *opts, struct fp_eval_result *ret)
{
	const struct fp_model_cfg *c = fp_model_config(m);
	size_t limit = opts && opts->max_act_bytes ? opts->max_act_bytes : DEFAULT_ACT_BYTES;
	size_t per_tok = 2 * (size_t)c->hidden * sizeof(float);
	size_t max_tok = limit / per_tok ? limit / per_tok : 1, group_max = 0;
	struct fp_eval_result res = { 0 };
	float *a = NULL, *b = NULL;
	double *nll = NULL;
	size_t *off = NULL;
	int r = fp_dataset_check(ds);

	if (r < 0)
		return r;
	for (size_t i = 0; i < ds->nsamples; i++) {
		res.tokens += ds->len[i] - 1;
		group_max = ds->len[i] > group_max ? ds->len[i] : group_max;
	}
	if (res.tokens == 0)
		return fp_err_detail(-EINVAL,
				     "dataset: no window has two or more tokens to predict");
	if (ds->ntokens < max_tok)
		max_tok = ds->ntokens;
	if (group_max < max_tok)
		group_max = max_tok;
	a = fp_aligned_array(group_max * (size_t)c->hidden, sizeof(float));
	b = fp_aligned_array(group_max * (size_t)c->hidden, sizeof(float));
	nll = fp_mallocarray(ds->nsamples, sizeof(*nll));
	off = fp_mallocarray(ds->nsamples, sizeof(*off));
	if (!a || !b || !nll || !off) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t s0 = 0, s1; s0 < ds->nsamples; s0 = s1) {
		struct fp_dataset sub;
		size_t n = 0;

		for (s1 = s0; s1 < ds->nsamples && (s1 == s0 || n + ds->len[s1] <= max_tok); s1++)
			n += ds->len[s1];
		sub_dataset(ds, s0, s1, off, &sub);
		r = run_group(m, &sub, opts, a, b, nll + s0);
		if (r < 0)
			goto out;
	}
	for (size_t i = 0; i < ds->nsamples; i++)
		res.nll += nll[i] * (double)(ds->len[i] - 1);
	res.windows = ds->nsamples;
	res.ppl = exp(res.nll / (double)res.tokens);
	*ret = res;
out:
	free(a);
	free(b);
	free(nll);
	free(off);
	return r;
}
