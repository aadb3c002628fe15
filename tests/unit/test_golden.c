/*
 * The forward pass against float64 references from tests/numeric/gen_golden.py: for each tiny
 * model in tests/data/golden/<name>/, embed -> every block (with the statistics hook) -> head,
 * compared by NMSE with the block outputs, per-linear sums of squares and X^T X, logits,
 * per-window NLL, and the perplexity. Then the same numbers must come out when the work is
 * split differently: one thread vs several, the forward scratch limit forcing one sample per
 * group, and eval running in groups of windows.
 *
 * Tolerance: NMSE <= 1e-8 (relative RMS error 1e-4) for every model, the BF16 one included:
 * its reference uses the stored bf16 values exactly (upcast), and bf16 -> f32 is exact, so the
 * only difference left is f32 rounding of activations, the same as for the F32 models.
 */
#include "test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "err.h"
#include "eval.h"
#include "forward.h"
#include "model.h"
#include "par.h"
#include "safetensors.h"
#include "stats.h"

#define NMSE_TOL 1e-8
#define PPL_RTOL 1e-5

struct golden {
	char *dir;
	struct fp_model *m;
	struct fp_st_file *g;
	struct fp_dataset ds;
	size_t nsamples, seqlen;
};

/* Golden tensor name as f32 (caller frees), checking its element count. */
static float *gold(const struct golden *gd, const char *name, size_t numel)
{
	const struct fp_st_tensor *t = fp_st_find(gd->g, name);
	float *out;

	if (!t)
		fail_msg("%s: golden tensor '%s' missing", gd->dir, name);
	assert_int_equal(t->numel, numel);
	out = malloc(numel * sizeof(float));
	assert_non_null(out);
	assert_int_equal(fp_st_to_f32(t, out), 0);
	return out;
}

static void check_nmse(const char *what, const float *got, const float *want, size_t n)
{
	double e = fp_test_nmse(got, want, n);

	if (!(e <= NMSE_TOL))
		fail_msg("%s: NMSE %.3g > %g", what, e, NMSE_TOL);
}

static void golden_open(struct golden *gd, const char *name)
{
	char *path = NULL, *rel = NULL;

	memset(gd, 0, sizeof(*gd));
	assert_true(asprintf(&rel, "golden/%s", name) > 0);
	gd->dir = fp_test_data_path(rel);
	free(rel);
	if (fp_model_open(gd->dir, &gd->m) < 0)
		fail_msg("open %s: %s", gd->dir, fp_err_last());
	assert_true(asprintf(&path, "%s/golden.safetensors", gd->dir) > 0);
	if (fp_st_open(path, &gd->g) < 0)
		fail_msg("open %s: %s", path, fp_err_last());
	free(path);
	fp_test_golden_dataset(gd->g, &gd->ds);
	gd->nsamples = gd->ds.nsamples;
	gd->seqlen = gd->ds.seqlen;
}

static void golden_close(struct golden *gd)
{
	fp_test_dataset_clear(&gd->ds);
	fp_st_close(gd->g);
	fp_model_close(gd->m);
	free(gd->dir);
}

/* Check block i's statistics against sumsq.{i}.{lin} and xtx.{i}.{lin}. */
static void check_stats(const struct golden *gd, struct fp_stats *st, uint32_t i)
{
	char name[96];

	for (int w = 0; w < FP_LIN_COUNT; w++) {
		size_t n, nx;
		const double *ss = fp_stats_sumsq(st, (enum fp_linear)w, &n);
		const float *xtx = fp_stats_xtx(st, (enum fp_linear)w, &nx);
		float *want, *got = malloc(n * sizeof(float));

		assert_non_null(got);
		assert_int_equal(n, nx);
		for (size_t j = 0; j < n; j++)
			got[j] = (float)ss[j];
		snprintf(name, sizeof(name), "sumsq.%u.%s", i, fp_linear_short_name(w));
		want = gold(gd, name, n);
		check_nmse(name, got, want, n);
		free(want);
		free(got);
		snprintf(name, sizeof(name), "xtx.%u.%s", i, fp_linear_short_name(w));
		want = gold(gd, name, n * n);
		assert_non_null(xtx);
		check_nmse(name, xtx, want, n * n);
		free(want);
		assert_int_equal(fp_stats_nseq(st, (enum fp_linear)w), gd->nsamples);
		assert_int_equal(fp_stats_ntokens(st, (enum fp_linear)w), gd->ds.ntokens);
	}
}

/*
 * Full pass; returns the final hidden state (ntokens, hidden), caller frees. With
 * check set, compares every intermediate against the golden file.
 */
static float *run_model(struct golden *gd, bool check)
{
	const struct fp_model_cfg *c = fp_model_config(gd->m);
	size_t n = gd->ds.ntokens * c->hidden;
	float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float));
	char name[64];

	assert_true(a && b);
	assert_int_equal(fp_embed(gd->m, &gd->ds, a), 0);
	for (uint32_t i = 0; i < c->nlayers; i++) {
		struct fp_block *blk = NULL;
		struct fp_stats *st = NULL;
		float *t;

		assert_int_equal(fp_block_load(gd->m, i, &blk), 0);
		assert_int_equal(fp_stats_new(c, i, FP_STATS_XTX, &st), 0);
		assert_int_equal(fp_block_forward(gd->m, blk, &gd->ds, a, b, fp_stats_hook, st), 0);
		if (check) {
			float *want;

			snprintf(name, sizeof(name), "hidden.%u", i);
			want = gold(gd, name, n);
			check_nmse(name, b, want, n);
			free(want);
			check_stats(gd, st, i);
		}
		fp_stats_free(st);
		fp_block_free(blk);
		fp_block_release_source(gd->m, i);
		t = a;
		a = b;
		b = t;
	}
	free(b);
	return a;
}

static void check_head(struct golden *gd, const float *hidden)
{
	const struct fp_model_cfg *c = fp_model_config(gd->m);
	size_t nl = gd->ds.ntokens * c->vocab;
	float *logits = malloc(nl * sizeof(float)), *want, *want_nll;
	double *nll = calloc(gd->nsamples, sizeof(double));
	float *nllf = calloc(gd->nsamples, sizeof(float));

	assert_true(logits && nll && nllf);
	assert_int_equal(fp_head_logits(gd->m, hidden, gd->ds.ntokens, logits), 0);
	want = gold(gd, "logits", nl);
	check_nmse("logits", logits, want, nl);
	assert_int_equal(fp_head_nll(gd->m, hidden, &gd->ds, nll), 0);
	want_nll = gold(gd, "nll", gd->nsamples);
	for (size_t i = 0; i < gd->nsamples; i++)
		nllf[i] = (float)nll[i];
	check_nmse("nll", nllf, want_nll, gd->nsamples);
	free(logits);
	free(want);
	free(want_nll);
	free(nll);
	free(nllf);
}

static void check_ppl(struct golden *gd, const struct fp_eval_opts *opts)
{
	struct fp_eval_result res;
	float *ppl = gold(gd, "ppl", 1);

	assert_int_equal(fp_eval_perplexity(gd->m, &gd->ds, opts, &res), 0);
	if (!(fabs(res.ppl - ppl[0]) <= PPL_RTOL * ppl[0]))
		fail_msg("%s: ppl %.8g, golden %.8g", gd->dir, res.ppl, (double)ppl[0]);
	assert_int_equal(res.windows, gd->nsamples);
	assert_int_equal(res.tokens, gd->nsamples * (gd->seqlen - 1));
	assert_true(fabs(res.nll / (double)res.tokens - log(res.ppl)) < 1e-12);
	free(ppl);
}

static void golden_model(const char *name)
{
	const struct fp_model_cfg *c;
	struct fp_eval_opts small = { 0 };
	struct golden gd;
	float *h, *h2;
	size_t n;
	unsigned threads = fp_par_threads();

	golden_open(&gd, name);
	c = fp_model_config(gd.m);
	n = gd.ds.ntokens * c->hidden;
	h = run_model(&gd, true);
	check_head(&gd, h);
	check_ppl(&gd, NULL);

	/* single thread, and forward groups of one sample: same numbers */
	fp_par_set_threads(1);
	fp_model_set_scratch_limit(gd.m, 1);
	h2 = run_model(&gd, false);
	check_nmse("hidden (1 thread, 1 sample per group)", h2, h, n);
	free(h2);
	fp_par_set_threads(threads > 1 ? threads : 3);
	/* eval in groups of one window */
	small.max_act_bytes = 1;
	check_ppl(&gd, &small);
	fp_par_set_threads(threads);
	fp_model_set_scratch_limit(gd.m, (size_t)1 << 30);
	free(h);
	golden_close(&gd);
}

static void test_llama_gqa(void **state)
{
	(void)state;
	golden_model("llama_gqa");
}

static void test_qwen2_bias(void **state)
{
	(void)state;
	golden_model("qwen2_bias");
}

static void test_llama3_bf16(void **state)
{
	(void)state;
	golden_model("llama3_bf16");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_llama_gqa),
		cmocka_unit_test(test_qwen2_bias),
		cmocka_unit_test(test_llama3_bf16),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
