/*
 * The pruning pipeline (prune.h) and Hugging Face output (hfout.h) on the tiny golden models of
 * tests/data/golden: exact pruned counts for every method, group and pattern; Wanda's masks
 * against the float64 reference statistics; sequential vs non-sequential processing;
 * magnitude's independence of data; the written model directory (zeros, untouched bytes,
 * dtypes, copied files, mask file, report, reload and perplexity), sharded input and output;
 * `apply`; global / LAMP allocation; and hostile inputs.
 */
#include "test.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "alloc_sparsity.h"
#include "data.h"
#include "dtype.h"
#include "err.h"
#include "eval.h"
#include "hfout.h"
#include "mask.h"
#include "model.h"
#include "prune.h"
#include "safetensors.h"
#include "select.h"

static const char *const MODELS[] = { "llama_gqa", "qwen2_bias", "llama3_bf16" };
#define NMODELS (sizeof(MODELS) / sizeof(MODELS[0]))

/* ---- fixtures ---- */

struct fx {
	char *dir;
	struct fp_model *m;
	struct fp_st_file *g; /* golden.safetensors */
	struct fp_dataset ds; /* its "tokens" */
};

static void fx_open(struct fx *f, const char *name)
{
	char *rel = NULL, *path = NULL;

	memset(f, 0, sizeof(*f));
	assert_true(asprintf(&rel, "golden/%s", name) > 0);
	f->dir = fp_test_data_path(rel);
	free(rel);
	if (fp_model_open(f->dir, &f->m) < 0)
		fail_msg("open %s: %s", f->dir, fp_err_last());
	assert_true(asprintf(&path, "%s/golden.safetensors", f->dir) > 0);
	if (fp_st_open(path, &f->g) < 0)
		fail_msg("open %s: %s", path, fp_err_last());
	free(path);
	fp_test_golden_dataset(f->g, &f->ds);
}

static void fx_close(struct fx *f)
{
	fp_test_dataset_clear(&f->ds);
	fp_st_close(f->g);
	fp_model_close(f->m);
	free(f->dir);
}

/* Source weights of tensor `name` as f32 (caller frees). */
static float *src_f32(struct fp_model *m, const char *name, size_t *ret_numel)
{
	const struct fp_st_tensor *t = fp_st_model_find(fp_model_source(m), name);
	float *w;

	if (!t)
		fail_msg("tensor '%s' missing", name);
	w = malloc(t->numel * sizeof(float));
	assert_non_null(w);
	assert_int_equal(fp_st_to_f32(t, w), 0);
	if (ret_numel)
		*ret_numel = t->numel;
	return w;
}

/* ---- capturing a run ---- */

struct cap {
	const struct fp_prune_opts *o;
	size_t nmats;
	uint8_t **mask; /* (nmats) */
	float **w;	/* (nmats) pruned weights */
	uint32_t next_block;
	unsigned nprogress;
};

static int cap_sink(void *ctx, const struct fp_prune_block *b)
{
	struct cap *c = ctx;
	char name[96];

	assert_int_equal(b->index, c->next_block);
	c->next_block++;
	if (fp_prune_needs_data(c->o->method))
		assert_non_null(b->stats);
	else
		assert_null(b->stats);
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		size_t idx = (size_t)b->index * FP_LIN_COUNT + (size_t)w, rows, cols;
		const float *wt = fp_block_linear(b->blk, (enum fp_linear)w, &rows, &cols);

		snprintf(name, sizeof(name), "model.layers.%u.%s.weight", b->index,
			 fp_linear_name((enum fp_linear)w));
		assert_string_equal(b->mat[w]->name, name);
		assert_int_equal(b->mat[w]->rows, rows);
		assert_int_equal(b->mat[w]->cols, cols);
		assert_true(idx < c->nmats);
		c->mask[idx] = malloc(fp_mask_bytes(rows * cols));
		c->w[idx] = malloc(rows * cols * sizeof(float));
		assert_true(c->mask[idx] && c->w[idx]);
		memcpy(c->mask[idx], b->mask[w], fp_mask_bytes(rows * cols));
		memcpy(c->w[idx], wt, rows * cols * sizeof(float));
	}
	return 0;
}

static void cap_progress(void *ctx, const struct fp_prune_progress *p)
{
	struct cap *c = ctx;

	if (p->phase == FP_PRUNE_PHASE_BLOCK) {
		assert_int_equal(p->block, c->nprogress);
		c->nprogress++;
	}
}

static void cap_free(struct cap *c)
{
	for (size_t i = 0; i < c->nmats; i++) {
		free(c->mask[i]);
		free(c->w[i]);
	}
	free(c->mask);
	free(c->w);
	memset(c, 0, sizeof(*c));
}

/* Run o on f (data: the golden tokens or none), capturing every block. */
static void run_cap(struct fx *f, struct fp_prune_opts *o, const struct fp_dataset *ds,
		    struct cap *c, struct fp_prune_result *res)
{
	const struct fp_model_cfg *cfg = fp_model_config(f->m);
	int r;

	memset(c, 0, sizeof(*c));
	c->o = o;
	c->nmats = (size_t)cfg->nlayers * FP_LIN_COUNT;
	c->mask = calloc(c->nmats, sizeof(*c->mask));
	c->w = calloc(c->nmats, sizeof(*c->w));
	assert_true(c->mask && c->w);
	o->progress = cap_progress;
	o->progress_ctx = c;
	fp_err_clear();
	r = fp_prune_run(f->m, ds, o, cap_sink, c, res);
	if (r < 0)
		fail_msg("%s: fp_prune_run: %s", f->dir, fp_err_last());
	o->progress = NULL;
	assert_int_equal(c->next_block, cfg->nlayers);
	assert_int_equal(c->nprogress, cfg->nlayers);
	assert_int_equal(res->nmats, c->nmats);
}

/* ---- expected counts ---- */

static uint64_t floor_k(uint64_t size, double s)
{
	return (uint64_t)((double)size * s); /* Python's int(size * s) */
}

static uint64_t expect_pruned(const struct fp_prune_opts *o, size_t rows, size_t cols)
{
	uint64_t k = 0;

	if (o->nm_m)
		return (uint64_t)rows * (cols / o->nm_m) * o->nm_n;
	if (o->method == FP_PRUNE_SPARSEGPT) {
		for (size_t c0 = 0; c0 < cols; c0 += o->sgpt_blocksize) {
			size_t bc = cols - c0 < o->sgpt_blocksize ? cols - c0 : o->sgpt_blocksize;

			k += floor_k((uint64_t)rows * bc, o->sparsity);
		}
		return k;
	}
	switch (o->group) {
	case FP_GROUP_ROW:
		return rows * floor_k(cols, o->sparsity);
	case FP_GROUP_COLUMN:
		return cols * floor_k(rows, o->sparsity);
	default:
		return floor_k((uint64_t)rows * cols, o->sparsity);
	}
}

/* Every comparison group of the mask holds exactly its k. */
static void check_groups(const struct fp_prune_opts *o, const uint8_t *mask, size_t rows,
			 size_t cols, const char *name)
{
	uint64_t *cnt = calloc(rows > cols ? rows : cols, sizeof(uint64_t));

	assert_non_null(cnt);
	if (o->nm_m) {
		if (fp_mask_check_nm(mask, rows, cols, o->nm_n, o->nm_m) != 0)
			fail_msg("%s: not %u:%u: %s", name, o->nm_n, o->nm_m, fp_err_last());
	} else if (o->method == FP_PRUNE_SPARSEGPT) {
		fp_mask_count_cols(mask, rows, cols, cnt);
		for (size_t c0 = 0; c0 < cols; c0 += o->sgpt_blocksize) {
			size_t bc = cols - c0 < o->sgpt_blocksize ? cols - c0 : o->sgpt_blocksize;
			uint64_t sum = 0;

			for (size_t j = c0; j < c0 + bc; j++)
				sum += cnt[j];
			if (sum != floor_k((uint64_t)rows * bc, o->sparsity))
				fail_msg("%s: block at column %zu prunes %lu", name, c0,
					 (unsigned long)sum);
		}
	} else if (o->group == FP_GROUP_ROW) {
		fp_mask_count_rows(mask, rows, cols, cnt);
		for (size_t i = 0; i < rows; i++)
			assert_int_equal(cnt[i], floor_k(cols, o->sparsity));
	} else if (o->group == FP_GROUP_COLUMN) {
		fp_mask_count_cols(mask, rows, cols, cnt);
		for (size_t j = 0; j < cols; j++)
			assert_int_equal(cnt[j], floor_k(rows, o->sparsity));
	}
	free(cnt);
}

struct cfgcase {
	enum fp_prune_method method;
	enum fp_group group;
	double s;
	unsigned n, m;
};

static const struct cfgcase CASES[] = {
	{ FP_PRUNE_MAGNITUDE, FP_GROUP_ROW, 0.5, 0, 0 },
	{ FP_PRUNE_MAGNITUDE, FP_GROUP_LAYER, 0.5, 0, 0 },
	{ FP_PRUNE_MAGNITUDE, FP_GROUP_COLUMN, 0.3, 0, 0 },
	{ FP_PRUNE_MAGNITUDE, FP_GROUP_ROW, 0, 2, 4 },
	{ FP_PRUNE_MAGNITUDE, FP_GROUP_ROW, 0, 4, 8 },
	{ FP_PRUNE_WANDA, FP_GROUP_ROW, 0.5, 0, 0 },
	{ FP_PRUNE_WANDA, FP_GROUP_ROW, 0.0, 0, 0 },
	{ FP_PRUNE_WANDA, FP_GROUP_ROW, 1.0, 0, 0 },
	{ FP_PRUNE_WANDA, FP_GROUP_LAYER, 0.3, 0, 0 },
	{ FP_PRUNE_WANDA, FP_GROUP_COLUMN, 0.5, 0, 0 },
	{ FP_PRUNE_WANDA, FP_GROUP_ROW, 0, 2, 4 },
	{ FP_PRUNE_WANDA, FP_GROUP_ROW, 0, 4, 8 },
	{ FP_PRUNE_SPARSEGPT, FP_GROUP_ROW, 0.5, 0, 0 },
	{ FP_PRUNE_SPARSEGPT, FP_GROUP_ROW, 0.3, 0, 0 },
	{ FP_PRUNE_SPARSEGPT, FP_GROUP_ROW, 0, 2, 4 },
};

static void counts_one(struct fx *f, const struct cfgcase *cc)
{
	struct fp_prune_opts o;
	struct fp_prune_result res;
	struct cap c;
	uint64_t total = 0;

	fp_prune_opts_init(&o, cc->method);
	o.group = cc->group;
	o.sparsity = cc->s;
	o.nm_n = cc->n;
	o.nm_m = cc->m;
	run_cap(f, &o, &f->ds, &c, &res);
	for (size_t i = 0; i < res.nmats; i++) {
		const struct fp_prune_mat *pm = &res.mats[i];
		size_t n = pm->rows * pm->cols;
		float *src = src_f32(f->m, pm->name, NULL);
		uint64_t want = expect_pruned(&o, pm->rows, pm->cols);
		size_t changed = 0;

		if (pm->pruned != want)
			fail_msg("%s %s: %s pruned %lu, want %lu", f->dir,
				 fp_prune_method_name(o.method), pm->name,
				 (unsigned long)pm->pruned, (unsigned long)want);
		assert_int_equal(fp_mask_count(c.mask[i], n), want);
		assert_true(fabs(pm->sparsity - (double)want / (double)n) < 1e-12);
		check_groups(&o, c.mask[i], pm->rows, pm->cols, pm->name);
		for (size_t p = 0; p < n; p++) {
			if (fp_mask_get(c.mask[i], p)) {
				assert_true(c.w[i][p] == 0.0f);
			} else if (o.method != FP_PRUNE_SPARSEGPT) {
				/* no update: kept weights untouched */
				assert_memory_equal(&c.w[i][p], &src[p], sizeof(float));
			} else {
				changed += c.w[i][p] != src[p];
			}
		}
		if (o.method == FP_PRUNE_SPARSEGPT) {
			assert_true(pm->has_sgpt);
			assert_int_equal(pm->sgpt.pruned, want);
			assert_int_equal(pm->sgpt.retries, 0);
			assert_true(pm->sgpt.percdamp == 0.01);
			if (want)
				assert_true(changed > 0); /* the OBS update moved kept weights */
		}
		total += want;
		free(src);
	}
	assert_int_equal(res.pruned, total);
	assert_int_equal(res.nsamples, fp_prune_needs_data(o.method) ? f->ds.nsamples : 0);
	cap_free(&c);
	fp_prune_result_done(&res);
}

static void test_counts(void **state)
{
	(void)state;
	for (size_t mi = 0; mi < NMODELS; mi++) {
		struct fx f;

		fx_open(&f, MODELS[mi]);
		for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++)
			counts_one(&f, &CASES[i]);
		fx_close(&f);
	}
}

/*
 * Wanda without sequential processing sees the dense model's activations, whose statistics
 * golden.safetensors holds (sumsq.{i}.{lin}, float64 reference). The masks must be the
 * selection on |W| * sqrt(sumsq / nseq) up to f32-vs-f64 near-ties: every pruned metric <=
 * every kept one in its row, within a relative 1e-5.
 */
static void test_wanda_vs_reference_stats(void **state)
{
	(void)state;
	for (size_t mi = 0; mi < NMODELS; mi++) {
		struct fp_prune_opts o;
		struct fp_prune_result res;
		struct cap c;
		struct fx f;
		size_t diff = 0, bits = 0;

		fx_open(&f, MODELS[mi]);
		fp_prune_opts_init(&o, FP_PRUNE_WANDA);
		o.sequential = false;
		run_cap(&f, &o, &f.ds, &c, &res);
		for (size_t i = 0; i < res.nmats; i++) {
			const struct fp_prune_mat *pm = &res.mats[i];
			char key[64];
			const struct fp_st_tensor *ss;
			float *w = src_f32(f.m, pm->name, NULL);
			float *sc = malloc(pm->cols * sizeof(float));
			float *metric = malloc(pm->rows * pm->cols * sizeof(float));
			uint8_t *ref = malloc(fp_mask_bytes(pm->rows * pm->cols));
			struct fp_metric_src src = { .kind = FP_METRIC_WANDA,
						     .x = w,
						     .scaler = sc,
						     .rows = pm->rows,
						     .cols = pm->cols };
			struct fp_select_spec sp;

			assert_true(sc && metric && ref);
			snprintf(key, sizeof(key), "sumsq.%u.%s", pm->block,
				 fp_linear_short_name(pm->lin));
			ss = fp_st_find(f.g, key);
			assert_non_null(ss);
			assert_int_equal(ss->numel, pm->cols);
			assert_int_equal(fp_st_to_f32(ss, sc), 0);
			for (size_t j = 0; j < pm->cols; j++)
				sc[j] = (float)((double)sc[j] / (double)f.ds.nsamples);
			assert_int_equal(fp_score_compute(metric, &src), 0);
			for (size_t r = 0; r < pm->rows; r++) {
				float maxp = 0, mink = INFINITY;

				for (size_t j = 0; j < pm->cols; j++) {
					float v = metric[r * pm->cols + j];

					if (fp_mask_get(c.mask[i], r * pm->cols + j))
						maxp = v > maxp ? v : maxp;
					else
						mink = v < mink ? v : mink;
				}
				if (!(maxp <= mink * (1 + 1e-5f)))
					fail_msg("%s row %zu: pruned metric %g > kept %g", pm->name,
						 r, (double)maxp, (double)mink);
			}
			fp_select_spec_init(&sp, FP_GROUP_ROW, 0.5, pm->rows, pm->cols);
			assert_int_equal(fp_select_naive(ref, &src, &sp), 0);
			for (size_t p = 0; p < pm->rows * pm->cols; p++)
				diff += fp_mask_get(ref, p) != fp_mask_get(c.mask[i], p);
			bits += pm->rows * pm->cols;
			free(w);
			free(sc);
			free(metric);
			free(ref);
		}
		printf("%s: wanda (non-sequential) vs float64 reference statistics: %zu of %zu "
		       "mask bits differ\n",
		       MODELS[mi], diff, bits);
		assert_true(diff * 1000 <= bits);
		cap_free(&c);
		fp_prune_result_done(&res);
		fx_close(&f);
	}
}

/* Sequential and non-sequential agree on block 0 and differ afterwards. */
static void seq_case(enum fp_prune_method m)
{
	struct fp_prune_opts o;
	struct fp_prune_result r1, r2;
	struct cap c1, c2;
	struct fx f;
	size_t differ = 0;

	fx_open(&f, "llama_gqa");
	fp_prune_opts_init(&o, m);
	run_cap(&f, &o, &f.ds, &c1, &r1);
	o.sequential = false;
	run_cap(&f, &o, &f.ds, &c2, &r2);
	for (size_t i = 0; i < r1.nmats; i++) {
		size_t n = r1.mats[i].rows * r1.mats[i].cols;
		bool same = memcmp(c1.mask[i], c2.mask[i], fp_mask_bytes(n)) == 0 &&
			    memcmp(c1.w[i], c2.w[i], n * sizeof(float)) == 0;

		if (r1.mats[i].block == 0 && !same)
			fail_msg("%s: %s differs between sequential and not in block 0",
				 fp_prune_method_name(m), r1.mats[i].name);
		differ += r1.mats[i].block > 0 && !same;
	}
	printf("%s: %zu of 7 matrices of block 1 differ (sequential vs not)\n",
	       fp_prune_method_name(m), differ);
	assert_true(differ > 0);
	cap_free(&c1);
	cap_free(&c2);
	fp_prune_result_done(&r1);
	fp_prune_result_done(&r2);
	fx_close(&f);
}

static void test_sequential(void **state)
{
	(void)state;
	seq_case(FP_PRUNE_WANDA);
	seq_case(FP_PRUNE_SPARSEGPT);
}

/* Block range with fixed masks (iterative FedPrLLM): block b alone, its input computed through
 * blocks < b pruned with given masks, equals block b of a sequential run with those masks. */
struct range_cap {
	struct cap *full; /* masks of the sequential run */
	uint32_t block;	  /* the one block expected */
	uint8_t *got[FP_LIN_COUNT];
	int calls, fixed_calls;
};

static int range_fixed(void *ctx, uint32_t block, enum fp_linear lin, uint8_t *bits, size_t nbytes)
{
	struct range_cap *rc = ctx;

	assert_true(block < rc->block);
	memcpy(bits, rc->full->mask[(size_t)block * FP_LIN_COUNT + lin], nbytes);
	rc->fixed_calls++;
	return 0;
}

static int range_sink(void *ctx, const struct fp_prune_block *b)
{
	struct range_cap *rc = ctx;

	assert_int_equal(b->index, rc->block);
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		size_t n = fp_mask_bytes(b->mat[w]->rows * b->mat[w]->cols);

		rc->got[w] = malloc(n);
		assert_non_null(rc->got[w]);
		memcpy(rc->got[w], b->mask[w], n);
	}
	rc->calls++;
	return 0;
}

static void test_block_range(void **state)
{
	struct fp_prune_opts o;
	struct fp_prune_result full, part;
	struct cap c;
	struct fx f;
	uint32_t nl;

	(void)state;
	fx_open(&f, "llama_gqa");
	nl = fp_model_config(f.m)->nlayers;
	assert_true(nl >= 2);
	fp_prune_opts_init(&o, FP_PRUNE_WANDA);
	run_cap(&f, &o, &f.ds, &c, &full);
	for (int with_masks = 1; with_masks >= 0; with_masks--) {
		struct range_cap rc = { .full = &c, .block = nl - 1 };
		size_t differ = 0;

		o.first_block = nl - 1;
		o.num_blocks = 1;
		o.fixed_mask = with_masks ? range_fixed : NULL;
		o.fixed_ctx = &rc;
		assert_int_equal(fp_prune_run(f.m, &f.ds, &o, range_sink, &rc, &part), 0);
		assert_int_equal(rc.calls, 1);
		assert_int_equal(rc.fixed_calls, with_masks ? (int)(nl - 1) * FP_LIN_COUNT : 0);
		for (int w = 0; w < FP_LIN_COUNT; w++) {
			size_t idx = (size_t)(nl - 1) * FP_LIN_COUNT + (size_t)w;
			size_t n = fp_mask_bytes(full.mats[idx].rows * full.mats[idx].cols);

			differ += memcmp(rc.got[w], c.mask[idx], n) != 0;
			free(rc.got[w]);
		}
		if (with_masks)
			assert_int_equal(differ, 0); /* bit for bit the sequential run's block */
		else
			assert_true(differ > 0); /* dense inputs: not the same statistics */
		fp_prune_result_done(&part);
	}
	/* out of range, and a range with non-uniform allocation, are refused */
	o.first_block = nl;
	assert_int_equal(fp_prune_run(f.m, &f.ds, &o, NULL, NULL, &part), -EINVAL);
	o.first_block = 0;
	o.allocation = FP_SPARSITY_GLOBAL;
	assert_int_equal(fp_prune_run(f.m, &f.ds, &o, NULL, NULL, &part), -EINVAL);
	cap_free(&c);
	fp_prune_result_done(&full);
	fx_close(&f);
}

/* Magnitude: no data needed, none used; the masks are the selection on |W| of the file. */
static void test_magnitude_ignores_data(void **state)
{
	(void)state;
	for (size_t mi = 0; mi < NMODELS; mi++) {
		struct fp_prune_opts o;
		struct fp_prune_result r1, r2;
		struct cap c1, c2;
		struct fx f;

		fx_open(&f, MODELS[mi]);
		fp_prune_opts_init(&o, FP_PRUNE_MAGNITUDE);
		assert_int_equal(o.group, FP_GROUP_LAYER);
		run_cap(&f, &o, NULL, &c1, &r1);
		for (size_t t = 0; t < f.ds.ntokens; t++) /* other data */
			f.ds.ids[t] = (int32_t)((t * 7 + 3) % 200);
		run_cap(&f, &o, &f.ds, &c2, &r2);
		assert_int_equal(r1.nsamples, 0);
		assert_int_equal(r2.nsamples, 0);
		assert_memory_equal(r1.data_digest, r2.data_digest, 32);
		for (size_t i = 0; i < r1.nmats; i++) {
			const struct fp_prune_mat *pm = &r1.mats[i];
			size_t n = pm->rows * pm->cols;
			float *w = src_f32(f.m, pm->name, NULL);
			uint8_t *ref = malloc(fp_mask_bytes(n));
			struct fp_metric_src src = { .kind = FP_METRIC_MAGNITUDE,
						     .x = w,
						     .rows = pm->rows,
						     .cols = pm->cols };
			struct fp_select_spec sp;

			assert_non_null(ref);
			assert_memory_equal(c1.mask[i], c2.mask[i], fp_mask_bytes(n));
			fp_select_spec_init(&sp, FP_GROUP_LAYER, 0.5, pm->rows, pm->cols);
			assert_int_equal(fp_select_naive(ref, &src, &sp), 0);
			assert_memory_equal(c1.mask[i], ref, fp_mask_bytes(n));
			free(ref);
			free(w);
		}
		cap_free(&c1);
		cap_free(&c2);
		fp_prune_result_done(&r1);
		fp_prune_result_done(&r2);
		fx_close(&f);
	}
}

/* ---- written model directories ---- */

static const char *base_name_of(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

static char *read_all(const char *path, size_t *ret_len)
{
	FILE *fp = fopen(path, "rb");
	char *buf;
	long n;

	if (!fp)
		fail_msg("%s: cannot open", path);
	assert_int_equal(fseek(fp, 0, SEEK_END), 0);
	n = ftell(fp);
	assert_true(n >= 0);
	rewind(fp);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
	buf[n] = '\0';
	fclose(fp);
	if (ret_len)
		*ret_len = (size_t)n;
	return buf;
}

static bool exists(const char *dir, const char *name)
{
	char *p = NULL;
	struct stat st;
	bool r;

	assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
	r = lstat(p, &st) == 0;
	free(p);
	return r;
}

static void same_file(const char *a_dir, const char *b_dir, const char *name)
{
	char *a = NULL, *b = NULL, *da, *db;
	size_t la, lb;

	assert_true(asprintf(&a, "%s/%s", a_dir, name) > 0);
	assert_true(asprintf(&b, "%s/%s", b_dir, name) > 0);
	da = read_all(a, &la);
	db = read_all(b, &lb);
	if (la != lb || memcmp(da, db, la) != 0)
		fail_msg("%s and %s differ", a, b);
	free(da);
	free(db);
	free(a);
	free(b);
}

/* Number of entries of dir whose name starts with prefix. */
static size_t count_prefix(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	size_t n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL)
		n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
	closedir(d);
	return n;
}

/* Bytes of f32 value v in dtype dt (little-endian host). */
static void to_dtype(float v, enum fp_dtype dt, uint8_t *out)
{
	if (dt == FP_DT_F32) {
		uint32_t u = fp_f32_bits(v);

		memcpy(out, &u, 4);
	} else {
		uint16_t h = dt == FP_DT_F16 ? fp_f32_to_f16(v) : fp_f32_to_bf16(v);

		memcpy(out, &h, 2);
	}
}

static long find_mat(const struct fp_prune_result *res, const char *name)
{
	for (size_t i = 0; i < res->nmats; i++)
		if (strcmp(res->mats[i].name, name) == 0)
			return (long)i;
	return -1;
}

/*
 * out: written by fp_prune_write from f with o; c/res: a capture of the same run. Checks the
 * tensors (zeros, untouched bytes, dtypes), the mask file, report.json, copied files, reload.
 */
static void check_output(struct fx *f, const char *out, const struct fp_prune_opts *o,
			 const struct cap *c, const struct fp_prune_result *res)
{
	const struct fp_st_model *src = fp_model_source(f->m);
	struct fp_st_model *dst = NULL;
	struct fp_model *m2 = NULL;
	struct fp_mask_set *ms = NULL;
	struct fp_eval_result ev;
	char *path = NULL, *text;
	cJSON *rep, *x;
	uint8_t dig[32];
	char hexd[65];

	if (fp_st_model_open(out, &dst) < 0)
		fail_msg("open %s: %s", out, fp_err_last());
	assert_int_equal(fp_st_model_count(dst), fp_st_model_count(src));
	assert_int_equal(fp_st_model_shard_count(dst), fp_st_model_shard_count(src));
	for (size_t i = 0; i < fp_st_model_count(src); i++) {
		const struct fp_st_tensor *s = fp_st_model_at(src, i);
		const struct fp_st_tensor *d = fp_st_model_find(dst, s->name);
		long mi = find_mat(res, s->name);
		size_t es;

		assert_non_null(d);
		assert_int_equal(d->dtype, s->dtype);
		assert_int_equal(d->ndim, s->ndim);
		assert_memory_equal(d->shape, s->shape, sizeof(s->shape));
		assert_string_equal(base_name_of(fp_st_path(d->file)),
				    base_name_of(fp_st_path(s->file)));
		if (mi < 0) {
			assert_memory_equal(d->data, s->data, s->nbytes); /* byte for byte */
			continue;
		}
		es = fp_dtype_size(s->dtype);
		for (size_t p = 0; p < s->numel; p++) {
			const uint8_t *db = (const uint8_t *)d->data + p * es;
			const uint8_t *sb = (const uint8_t *)s->data + p * es;
			uint8_t want[4];

			if (fp_mask_get(c->mask[mi], p)) {
				static const uint8_t zero[4];

				if (memcmp(db, zero, es) != 0)
					fail_msg("%s: pruned weight %zu is not +0", s->name, p);
				continue;
			}
			if (o->method != FP_PRUNE_SPARSEGPT) {
				assert_memory_equal(db, sb, es);
			} else {
				to_dtype(c->w[mi][p], s->dtype, want);
				assert_memory_equal(db, want, es);
			}
		}
	}

	/* the mask file */
	assert_true(asprintf(&path, "%s/%s", out, FP_PRUNE_MASK_FILE) > 0);
	if (fp_mask_set_load(path, &ms) < 0)
		fail_msg("%s: %s", path, fp_err_last());
	free(path);
	assert_int_equal(ms->count, res->nmats);
	for (size_t i = 0; i < ms->count; i++) {
		assert_string_equal(ms->info[i].name, res->mats[i].name);
		assert_int_equal(ms->info[i].ndim, 2);
		assert_int_equal(ms->info[i].dims[0], res->mats[i].rows);
		assert_int_equal(ms->info[i].dims[1], res->mats[i].cols);
		assert_memory_equal(ms->bits[i], c->mask[i], ms->info[i].nbytes);
	}

	/* report.json */
	assert_true(asprintf(&path, "%s/%s", out, FP_PRUNE_REPORT_FILE) > 0);
	text = read_all(path, NULL);
	free(path);
	rep = cJSON_Parse(text);
	assert_non_null(rep);
	assert_string_equal(cJSON_GetObjectItem(rep, "method")->valuestring,
			    fp_prune_method_name(o->method));
	x = cJSON_GetObjectItem(rep, "totals");
	assert_true(cJSON_GetObjectItem(x, "pruned")->valuedouble == (double)res->pruned);
	assert_true(cJSON_GetObjectItem(x, "weights")->valuedouble == (double)res->numel);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(rep, "matrices")), res->nmats);
	x = cJSON_GetArrayItem(cJSON_GetObjectItem(rep, "matrices"), 0);
	assert_string_equal(cJSON_GetObjectItem(x, "name")->valuestring, res->mats[0].name);
	assert_true(cJSON_GetObjectItem(x, "pruned")->valuedouble == (double)res->mats[0].pruned);
	assert_true(cJSON_IsObject(cJSON_GetObjectItem(x, "sparsegpt")) ==
		    (o->method == FP_PRUNE_SPARSEGPT));
	x = cJSON_GetObjectItem(rep, "calibration");
	if (fp_prune_needs_data(o->method)) {
		assert_true(cJSON_GetObjectItem(x, "samples")->valuedouble ==
			    (double)f->ds.nsamples);
		fp_data_digest(&f->ds, dig);
		for (int i = 0; i < 32; i++)
			snprintf(hexd + 2 * i, 3, "%02x", dig[i]);
		assert_string_equal(cJSON_GetObjectItem(x, "digest")->valuestring, hexd);
	} else {
		assert_true(cJSON_IsNull(x));
	}
	assert_int_equal(fp_hfout_source_digest(src, dig), 0);
	for (int i = 0; i < 32; i++)
		snprintf(hexd + 2 * i, 3, "%02x", dig[i]);
	assert_string_equal(
		cJSON_GetObjectItem(cJSON_GetObjectItem(rep, "model"), "safetensors_header_digest")
			->valuestring,
		hexd);
	assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(rep, "timings_seconds"), "total"));
	cJSON_Delete(rep);
	free(text);

	/* small files copied, other weights not */
	same_file(f->dir, out, "config.json");
	same_file(f->dir, out, "generation_config.json");
	assert_false(exists(out, "golden.safetensors"));

	/* reloads; perplexity finite */
	if (fp_model_open(out, &m2) < 0)
		fail_msg("reopen %s: %s", out, fp_err_last());
	assert_int_equal(fp_eval_perplexity(m2, &f->ds, NULL, &ev), 0);
	assert_true(isfinite(ev.ppl) && ev.ppl > 1.0);
	fp_model_close(m2);
	fp_mask_set_free(ms);
	fp_st_model_close(dst);
}

static void write_one(struct fx *f, struct fp_prune_opts *o, const char *tmp, const char *tag)
{
	struct fp_prune_info info = { .model_dir = f->dir, .seqlen = f->ds.seqlen, .threads = 1 };
	struct fp_prune_result res, rw;
	struct cap c;
	char *out = NULL;

	run_cap(f, o, &f->ds, &c, &res);
	assert_true(asprintf(&out, "%s/%s", tmp, tag) > 0);
	fp_err_clear();
	if (fp_prune_write(f->m, f->dir, &f->ds, o, &info, out, &rw) < 0)
		fail_msg("fp_prune_write %s: %s", out, fp_err_last());
	assert_int_equal(rw.pruned, res.pruned);
	/* golden.safetensors is a .safetensors that is not the model: listed, not copied */
	assert_true(rw.nskipped >= 1);
	check_output(f, out, o, &c, &rw);
	assert_int_equal(count_prefix(tmp, "out"), 0); /* no temporary directory left */
	cap_free(&c);
	fp_prune_result_done(&res);
	fp_prune_result_done(&rw);
	free(out);
}

static void test_write(void **state)
{
	char *tmp = fp_test_mkdtemp();

	(void)state;
	for (size_t mi = 0; mi < NMODELS; mi++) {
		struct fp_prune_opts o;
		struct fx f;
		char tag[64];

		fx_open(&f, MODELS[mi]);
		fp_prune_opts_init(&o, FP_PRUNE_WANDA);
		snprintf(tag, sizeof(tag), "%s-wanda", MODELS[mi]);
		write_one(&f, &o, tmp, tag);
		fp_prune_opts_init(&o, FP_PRUNE_SPARSEGPT);
		snprintf(tag, sizeof(tag), "%s-sparsegpt", MODELS[mi]);
		write_one(&f, &o, tmp, tag);
		fp_prune_opts_init(&o, FP_PRUNE_MAGNITUDE);
		o.nm_n = 2;
		o.nm_m = 4;
		snprintf(tag, sizeof(tag), "%s-magnitude24", MODELS[mi]);
		write_one(&f, &o, tmp, tag);
		fx_close(&f);
	}
	fp_test_rmtree(tmp);
	free(tmp);
}

/* ---- sharded models ---- */

static void write_text_file(const char *dir, const char *name, const char *text)
{
	free(fp_test_write_file(dir, name, text, strlen(text)));
}

/*
 * A two-shard copy of the model in src_dir in dst: layer 1's MLP and the final norm in shard
 * 2 (so layer 1 straddles both), everything else in shard 1, each written in reverse order;
 * the index, config files and extra files a hub directory holds.
 */
static void make_sharded(const char *src_dir, const char *dst)
{
	static const char *const shard[2] = { "model-00001-of-00002.safetensors",
					      "model-00002-of-00002.safetensors" };
	struct fp_st_model *src = NULL;
	cJSON *idx = cJSON_CreateObject(), *map = cJSON_CreateObject(), *meta;
	char *text, *sub = NULL;
	uint64_t total = 0;

	assert_int_equal(fp_st_model_open(src_dir, &src), 0);
	for (int s = 0; s < 2; s++) {
		struct fp_st_decl decls[64];
		const struct fp_st_tensor *ts[64];
		const char *kv[] = { "format", "pt", NULL };
		struct fp_st_writer *w = NULL;
		char *path = NULL;
		size_t n = 0;

		for (size_t i = fp_st_model_count(src); i-- > 0;) {
			const struct fp_st_tensor *t = fp_st_model_at(src, i);
			int in2 = strstr(t->name, "layers.1.mlp") ||
				  strcmp(t->name, "model.norm.weight") == 0;

			if (in2 != s)
				continue;
			assert_true(n < 64);
			ts[n] = t;
			decls[n].name = t->name;
			decls[n].dtype = t->dtype;
			decls[n].ndim = t->ndim;
			memcpy(decls[n].shape, t->shape, sizeof(t->shape));
			cJSON_AddStringToObject(map, t->name, shard[s]);
			total += t->nbytes;
			n++;
		}
		assert_true(asprintf(&path, "%s/%s", dst, shard[s]) > 0);
		assert_int_equal(fp_st_writer_open(path, decls, n, kv, &w), 0);
		for (size_t i = 0; i < n; i++)
			assert_int_equal(fp_st_writer_write(w, ts[i]->data, ts[i]->nbytes), 0);
		assert_int_equal(fp_st_writer_close(w), 0);
		free(path);
	}
	meta = cJSON_AddObjectToObject(idx, "metadata");
	cJSON_AddNumberToObject(meta, "total_size", (double)total);
	cJSON_AddItemToObject(idx, "weight_map", map);
	text = cJSON_Print(idx);
	write_text_file(dst, "model.safetensors.index.json", text);
	cJSON_free(text);
	cJSON_Delete(idx);
	fp_st_model_close(src);

	for (int i = 0; i < 2; i++) {
		const char *name = i ? "generation_config.json" : "config.json";
		char *p = NULL, *data;
		size_t len;

		assert_true(asprintf(&p, "%s/%s", src_dir, name) > 0);
		data = read_all(p, &len);
		free(fp_test_write_file(dst, name, data, len));
		free(data);
		free(p);
	}
	write_text_file(dst, "tokenizer.json", "{\"version\": \"1.0\", \"model\": {}}\n");
	write_text_file(dst, "tokenizer_config.json", "{\"bos_token\": \"<s>\"}\n");
	write_text_file(dst, "special_tokens_map.json", "{}\n");
	/* as in the hub cache: a symlink to a blob elsewhere (copied as a file), and a broken one */
	assert_true(asprintf(&sub, "%s/../blobs", dst) > 0);
	assert_int_equal(mkdir(sub, 0777), 0);
	free(fp_test_write_file(sub, "b1", "\x0a\x05hello\x00\xff", 9));
	free(sub);
	assert_true(asprintf(&sub, "%s/tokenizer.model", dst) > 0);
	assert_int_equal(symlink("../blobs/b1", sub), 0);
	free(sub);
	assert_true(asprintf(&sub, "%s/dangling.json", dst) > 0);
	assert_int_equal(symlink("../blobs/none", sub), 0);
	free(sub);
	write_text_file(dst, "pytorch_model.bin", "stale weights\n");
	write_text_file(dst, ".gitattributes", "*.bin filter=lfs\n");
	assert_true(asprintf(&sub, "%s/original", dst) > 0);
	assert_int_equal(mkdir(sub, 0777), 0);
	write_text_file(sub, "consolidated.00.pth", "x");
	free(sub);
}

static void test_sharded(void **state)
{
	char *tmp = fp_test_mkdtemp(), *sh = NULL, *o1 = NULL, *o2 = NULL;
	struct fp_prune_info info = { .threads = 1 };
	struct fp_prune_opts o;
	struct fp_prune_result r1, r2;
	struct fp_st_model *a = NULL, *b = NULL;
	struct fp_model *ms = NULL, *m1 = NULL, *m2 = NULL;
	struct fp_eval_result e1, e2;
	struct fx f;
	static const char *const expect[] = { "config.json",
					      "generation_config.json",
					      "tokenizer.json",
					      "tokenizer_config.json",
					      "special_tokens_map.json",
					      "tokenizer.model",
					      "model.safetensors.index.json",
					      "model-00001-of-00002.safetensors",
					      "model-00002-of-00002.safetensors",
					      FP_PRUNE_MASK_FILE,
					      FP_PRUNE_REPORT_FILE };

	(void)state;
	fx_open(&f, "llama3_bf16");
	assert_true(asprintf(&sh, "%s/sharded", tmp) > 0);
	assert_true(asprintf(&o1, "%s/out-single", tmp) > 0);
	assert_true(asprintf(&o2, "%s/out-sharded", tmp) > 0);
	assert_int_equal(mkdir(sh, 0777), 0);
	make_sharded(f.dir, sh);
	if (fp_model_open(sh, &ms) < 0)
		fail_msg("open %s: %s", sh, fp_err_last());
	fp_prune_opts_init(&o, FP_PRUNE_WANDA);
	info.model_dir = f.dir;
	assert_int_equal(fp_prune_write(f.m, f.dir, &f.ds, &o, &info, o1, &r1), 0);
	info.model_dir = sh;
	if (fp_prune_write(ms, sh, &f.ds, &o, &info, o2, &r2) < 0)
		fail_msg("prune %s: %s", sh, fp_err_last());

	/* exactly the expected files: small ones copied, shards rewritten, the rest skipped */
	assert_int_equal(count_prefix(o2, ""), sizeof(expect) / sizeof(expect[0]) + 2);
	for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++)
		if (!exists(o2, expect[i]))
			fail_msg("%s/%s missing", o2, expect[i]);
	same_file(sh, o2, "model.safetensors.index.json");
	same_file(sh, o2, "tokenizer.model");
	same_file(sh, o2, "tokenizer.json");
	/* .gitattributes, dangling.json, original/, pytorch_model.bin */
	assert_int_equal(r2.nskipped, 4);
	{
		char *p = NULL;
		struct stat st;

		assert_true(asprintf(&p, "%s/tokenizer.model", o2) > 0);
		assert_int_equal(lstat(p, &st), 0);
		assert_true(S_ISREG(st.st_mode)); /* the content, not the link */
		free(p);
	}

	/* same tensor -> file map, same bytes as pruning the single-file model */
	assert_int_equal(fp_st_model_open(sh, &a), 0);
	assert_int_equal(fp_st_model_open(o2, &b), 0);
	assert_int_equal(fp_st_model_shard_count(b), 2);
	for (size_t i = 0; i < fp_st_model_count(a); i++) {
		const struct fp_st_tensor *s = fp_st_model_at(a, i);
		const struct fp_st_tensor *d = fp_st_model_find(b, s->name);

		assert_non_null(d);
		assert_string_equal(base_name_of(fp_st_path(d->file)),
				    base_name_of(fp_st_path(s->file)));
		assert_int_equal(d->dtype, FP_DT_BF16);
	}
	fp_st_model_close(a);
	assert_int_equal(fp_st_model_open(o1, &a), 0);
	for (size_t i = 0; i < fp_st_model_count(a); i++) {
		const struct fp_st_tensor *s = fp_st_model_at(a, i);
		const struct fp_st_tensor *d = fp_st_model_find(b, s->name);

		assert_non_null(d);
		assert_int_equal(d->nbytes, s->nbytes);
		assert_memory_equal(d->data, s->data, s->nbytes);
	}
	same_file(o1, o2, FP_PRUNE_MASK_FILE);
	assert_int_equal(fp_model_open(o1, &m1), 0);
	assert_int_equal(fp_model_open(o2, &m2), 0);
	assert_int_equal(fp_eval_perplexity(m1, &f.ds, NULL, &e1), 0);
	assert_int_equal(fp_eval_perplexity(m2, &f.ds, NULL, &e2), 0);
	assert_true(isfinite(e1.ppl) && e1.ppl == e2.ppl);

	fp_model_close(m1);
	fp_model_close(m2);
	fp_model_close(ms);
	fp_st_model_close(a);
	fp_st_model_close(b);
	fp_prune_result_done(&r1);
	fp_prune_result_done(&r2);
	fx_close(&f);
	fp_test_rmtree(tmp);
	free(tmp);
	free(sh);
	free(o1);
	free(o2);
}

/* ---- apply ---- */

/* A one-tensor mask file at dir/name (all bits clear). */
static char *one_mask(const char *dir, const char *name, const char *tensor, uint64_t d0,
		      uint64_t d1)
{
	struct fp_mask_info in = { .name = tensor, .ndim = 2, .dims = { d0, d1 } };
	struct fp_mask_writer *w = NULL;
	uint8_t *bits = calloc(fp_mask_bytes(d0 * d1), 1);
	char *path = NULL;

	assert_non_null(bits);
	assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
	assert_int_equal(fp_mask_writer_open(path, &in, 1, &w), 0);
	assert_int_equal(fp_mask_writer_add(w, bits, fp_mask_bytes(d0 * d1)), 0);
	assert_int_equal(fp_mask_writer_close(w), 0);
	free(bits);
	return path;
}

static void apply_refused(const char *model_dir, const char *mask_path, const char *out,
			  const char *needle)
{
	struct fp_mask_set *ms = NULL;
	struct fp_hfout_apply_stats st;
	int r;

	assert_int_equal(fp_mask_set_load(mask_path, &ms), 0);
	fp_err_clear();
	r = fp_hfout_apply_mask(model_dir, ms, mask_path, out, &st);
	assert_int_equal(r, -EINVAL);
	if (!strstr(fp_err_last(), needle))
		fail_msg("error '%s' lacks '%s'", fp_err_last(), needle);
	assert_false(exists(out, "")); /* nothing written */
	fp_mask_set_free(ms);
}

static void test_apply(void **state)
{
	char *tmp = fp_test_mkdtemp(), *oa = NULL, *ob = NULL, *oq = NULL, *oc = NULL;
	char *mpath = NULL, *qmask = NULL, *bad;
	struct fp_prune_info info = { .threads = 1 };
	struct fp_prune_opts o;
	struct fp_prune_result res, rq;
	struct fp_mask_set *ms = NULL;
	struct fp_hfout_apply_stats st;
	struct fx f, q;

	(void)state;
	fx_open(&f, "llama_gqa");
	fx_open(&q, "qwen2_bias");
	assert_true(asprintf(&oa, "%s/pruned", tmp) > 0);
	assert_true(asprintf(&ob, "%s/applied", tmp) > 0);
	assert_true(asprintf(&oq, "%s/qwen", tmp) > 0);
	assert_true(asprintf(&oc, "%s/refused", tmp) > 0);
	fp_prune_opts_init(&o, FP_PRUNE_WANDA);
	info.model_dir = f.dir;
	assert_int_equal(fp_prune_write(f.m, f.dir, &f.ds, &o, &info, oa, &res), 0);
	info.model_dir = q.dir;
	assert_int_equal(fp_prune_write(q.m, q.dir, &q.ds, &o, &info, oq, &rq), 0);

	/* applying prune's own mask to the original gives the same weights, byte for byte */
	assert_true(asprintf(&mpath, "%s/%s", oa, FP_PRUNE_MASK_FILE) > 0);
	assert_int_equal(fp_mask_set_load(mpath, &ms), 0);
	if (fp_hfout_apply_mask(f.dir, ms, mpath, ob, &st) < 0)
		fail_msg("apply: %s", fp_err_last());
	assert_int_equal(st.masked, res.nmats);
	assert_int_equal(st.pruned, res.pruned);
	assert_int_equal(st.numel, res.numel);
	assert_int_equal(st.zeros, res.pruned); /* random F32 weights: no zero before */
	same_file(oa, ob, "model.safetensors");
	same_file(f.dir, ob, "config.json");
	assert_false(exists(ob, FP_PRUNE_MASK_FILE));
	fp_mask_set_free(ms);

	/* hostile masks are refused before anything is written */
	assert_true(asprintf(&qmask, "%s/%s", oq, FP_PRUNE_MASK_FILE) > 0);
	apply_refused(f.dir, qmask, oc, "does not match"); /* qwen2's shapes on llama */
	bad = one_mask(tmp, "extra.fpmask", "model.layers.7.mlp.up_proj.weight", 176, 64);
	apply_refused(f.dir, bad, oc, "not in the model");
	free(bad);
	bad = one_mask(tmp, "transposed.fpmask", "model.layers.0.mlp.up_proj.weight", 64, 176);
	apply_refused(f.dir, bad, oc, "[64, 176] does not match the model's [176, 64]");
	free(bad);
	bad = one_mask(tmp, "esc.fpmask", "model.\x1b[2Jevil", 2, 2);
	apply_refused(f.dir, bad, oc, "model.?[2Jevil");
	free(bad);
	assert_int_equal(count_prefix(tmp, "refused"), 0); /* no temporary directory left */

	fp_prune_result_done(&res);
	fp_prune_result_done(&rq);
	fx_close(&f);
	fx_close(&q);
	fp_test_rmtree(tmp);
	free(tmp);
	free(oa);
	free(ob);
	free(oq);
	free(oc);
	free(mpath);
	free(qmask);
}

/* ---- allocation ---- */

static void alloc_case(struct fx *f, enum fp_prune_method m, enum fp_sparsity_scheme sch)
{
	struct fp_prune_opts o;
	struct fp_prune_result res;
	struct cap c;
	size_t n;
	struct fp_sparsity_mat *mats;
	struct fp_sparsity_out *want;
	struct fp_sparsity_opts so = { .scheme = sch, .sparsity = 0.5, .min_keep = 0.01 };
	float **ws;
	bool varied = false;
	float maxp = 0, mink = INFINITY;

	fp_prune_opts_init(&o, m);
	o.allocation = sch;
	run_cap(f, &o, &f->ds, &c, &res);
	n = res.nmats;
	mats = calloc(n, sizeof(*mats));
	want = calloc(n, sizeof(*want));
	ws = calloc(n, sizeof(*ws));
	assert_true(mats && want && ws);
	for (size_t i = 0; i < n; i++) {
		ws[i] = src_f32(f->m, res.mats[i].name, NULL);
		mats[i].w = ws[i];
		mats[i].rows = res.mats[i].rows;
		mats[i].cols = res.mats[i].cols;
	}
	assert_int_equal(fp_sparsity_alloc(mats, n, &so, want), 0);
	for (size_t i = 0; i < n; i++) {
		const struct fp_prune_mat *pm = &res.mats[i];

		assert_true(pm->target == want[i].sparsity);
		varied |= fabs(pm->sparsity - res.mats[0].sparsity) > 1e-3;
		if (m == FP_PRUNE_MAGNITUDE) {
			assert_int_equal(pm->pruned, want[i].k);
			for (size_t p = 0; p < pm->rows * pm->cols; p++) {
				float a = fabsf(ws[i][p]);

				if (fp_mask_get(c.mask[i], p))
					maxp = a > maxp ? a : maxp;
				else
					mink = a < mink ? a : mink;
			}
		} else {
			assert_int_equal(pm->pruned,
					 pm->rows * floor_k(pm->cols, want[i].sparsity));
		}
		free(ws[i]);
	}
	if (m == FP_PRUNE_MAGNITUDE) {
		assert_int_equal(res.pruned, floor_k(res.numel, 0.5));
		if (sch == FP_SPARSITY_GLOBAL) /* one threshold over all matrices */
			assert_true(maxp <= mink);
	}
	assert_true(varied);
	free(ws);
	free(mats);
	free(want);
	cap_free(&c);
	fp_prune_result_done(&res);
}

static void test_allocation(void **state)
{
	struct fx f;

	(void)state;
	fx_open(&f, "llama_gqa");
	alloc_case(&f, FP_PRUNE_MAGNITUDE, FP_SPARSITY_GLOBAL);
	alloc_case(&f, FP_PRUNE_MAGNITUDE, FP_SPARSITY_LAMP);
	alloc_case(&f, FP_PRUNE_WANDA, FP_SPARSITY_GLOBAL);
	fx_close(&f);
}

/* ---- hostile ---- */

static void refused(struct fx *f, const struct fp_prune_opts *o, const struct fp_dataset *ds,
		    const char *needle)
{
	struct fp_prune_result res;

	fp_err_clear();
	memset(&res, 0xa5, sizeof(res));
	assert_true(fp_prune_run(f->m, ds, o, NULL, NULL, &res) < 0);
	if (needle && !strstr(fp_err_last(), needle))
		fail_msg("error '%s' lacks '%s'", fp_err_last(), needle);
	assert_null(res.mats);
	assert_int_equal(res.nmats, 0);
}

static void test_hostile(void **state)
{
	char *tmp = fp_test_mkdtemp(), *out = NULL, *file = NULL;
	struct fp_prune_info info = { .threads = 1 };
	struct fp_prune_opts o;
	struct fp_prune_result res;
	struct fx f;

	(void)state;
	fx_open(&f, "llama_gqa");

	fp_prune_opts_init(&o, FP_PRUNE_WANDA);
	o.nm_n = 16;
	o.nm_m = 32; /* down_proj has 176 input columns */
	refused(&f, &o, &f.ds, "down_proj");
	o.nm_n = 5;
	o.nm_m = 4;
	refused(&f, &o, &f.ds, "N:M");
	fp_prune_opts_init(&o, FP_PRUNE_MAGNITUDE);
	o.sparsity = 1.5;
	refused(&f, &o, NULL, "sparsity");
	o.sparsity = -0.1;
	refused(&f, &o, NULL, "sparsity");
	o.sparsity = NAN;
	refused(&f, &o, NULL, "sparsity");
	fp_prune_opts_init(&o, FP_PRUNE_MAGNITUDE);
	o.group = FP_GROUP_NM; /* N:M needs a pattern */
	refused(&f, &o, NULL, "group");
	o.group = FP_GROUP_LAYER;
	o.allocation = FP_SPARSITY_GLOBAL;
	o.nm_n = 2;
	o.nm_m = 4;
	refused(&f, &o, NULL, "allocation");
	o.nm_n = o.nm_m = 0;
	o.min_keep = 0.6; /* every matrix keeps 60 %: 50 % overall is unreachable */
	refused(&f, &o, NULL, NULL);
	fp_prune_opts_init(&o, FP_PRUNE_WANDA);
	refused(&f, &o, NULL, "calibration data");
	fp_prune_opts_init(&o, FP_PRUNE_SPARSEGPT);
	o.nm_n = 2;
	o.nm_m = 4;
	o.sgpt_blocksize = 30;
	refused(&f, &o, &f.ds, "blocksize");
	fp_prune_opts_init(&o, FP_PRUNE_WANDA);
	f.ds.ids[5] = 256; /* vocab_size is 256 */
	refused(&f, &o, &f.ds, NULL);
	f.ds.ids[5] = 3;

	/* the output directory: never overwritten */
	assert_true(asprintf(&out, "%s/full", tmp) > 0);
	assert_int_equal(mkdir(out, 0777), 0);
	free(fp_test_write_file(out, "keep.txt", "mine", 4));
	info.model_dir = f.dir;
	fp_err_clear();
	assert_int_equal(fp_prune_write(f.m, f.dir, &f.ds, &o, &info, out, &res), -EEXIST);
	assert_non_null(strstr(fp_err_last(), "not empty"));
	assert_int_equal(count_prefix(out, ""), 3);
	assert_null(res.mats);
	file = fp_test_write_file(tmp, "afile", "x", 1);
	assert_int_equal(fp_prune_write(f.m, f.dir, &f.ds, &o, &info, file, &res), -EEXIST);
	free(out);
	/* an empty directory is fine, and so is a trailing slash */
	assert_true(asprintf(&out, "%s/empty/", tmp) > 0);
	assert_int_equal(mkdir(out, 0777), 0);
	assert_int_equal(fp_prune_write(f.m, f.dir, &f.ds, &o, &info, out, &res), 0);
	assert_true(exists(out, "model.safetensors"));
	fp_prune_result_done(&res);
	/* a bad option is refused before anything is created */
	o.sparsity = 2;
	free(out);
	assert_true(asprintf(&out, "%s/never", tmp) > 0);
	assert_int_equal(fp_prune_write(f.m, f.dir, &f.ds, &o, &info, out, &res), -EINVAL);
	assert_false(exists(out, ""));
	assert_int_equal(count_prefix(tmp, "never"), 0);

	fx_close(&f);
	fp_test_rmtree(tmp);
	free(tmp);
	free(out);
	free(file);
}

static void test_layer_of(void **state)
{
	(void)state;
	assert_int_equal(fp_hfout_layer_of("model.layers.0.mlp.up_proj.weight"), 0);
	assert_int_equal(fp_hfout_layer_of("model.layers.31.input_layernorm.weight"), 31);
	assert_int_equal(fp_hfout_layer_of("model.layers.007.x"), FP_HFOUT_OTHER);
	assert_int_equal(fp_hfout_layer_of("model.layers.7"), FP_HFOUT_OTHER);
	assert_int_equal(fp_hfout_layer_of("model.layers..x"), FP_HFOUT_OTHER);
	assert_int_equal(fp_hfout_layer_of("model.layers.99999999999.x"), FP_HFOUT_OTHER);
	assert_int_equal(fp_hfout_layer_of("model.embed_tokens.weight"), FP_HFOUT_OTHER);
	assert_int_equal(fp_hfout_layer_of("lm_head.weight"), FP_HFOUT_OTHER);
}

static void test_names(void **state)
{
	enum fp_prune_method m;

	(void)state;
	for (int i = 0; i < FP_PRUNE_METHOD_COUNT; i++) {
		assert_int_equal(
			fp_prune_method_parse(fp_prune_method_name((enum fp_prune_method)i), &m),
			0);
		assert_int_equal(m, i);
	}
	assert_int_equal(fp_prune_method_parse("Wanda", &m), -EINVAL);
	assert_false(fp_prune_needs_data(FP_PRUNE_MAGNITUDE));
	assert_true(fp_prune_needs_data(FP_PRUNE_SPARSEGPT));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_layer_of),
		cmocka_unit_test(test_counts),
		cmocka_unit_test(test_wanda_vs_reference_stats),
		cmocka_unit_test(test_sequential),
		cmocka_unit_test(test_block_range),
		cmocka_unit_test(test_magnitude_ignores_data),
		cmocka_unit_test(test_allocation),
		cmocka_unit_test(test_write),
		cmocka_unit_test(test_sharded),
		cmocka_unit_test(test_apply),
		cmocka_unit_test(test_hostile),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
