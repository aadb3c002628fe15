/*
 * The local pruning pipeline (see prune.h).
 */
#include "prune.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>
#include <sodium.h>

#include "alloc.h"
#include "err.h"
#include "fileio.h"
#include "forward.h"
#include "fp_config.h"
#include "hfout.h"
#include "mask.h"
#include "score.h"

static const char *const method_names[FP_PRUNE_METHOD_COUNT] = {
	[FP_PRUNE_MAGNITUDE] = "magnitude",
	[FP_PRUNE_WANDA] = "wanda",
	[FP_PRUNE_SPARSEGPT] = "sparsegpt",
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void fp_prune_opts_init(struct fp_prune_opts *o, enum fp_prune_method m)
{
	memset(o, 0, sizeof(*o));
	o->method = m;
	o->sparsity = 0.5;
	o->group = m == FP_PRUNE_MAGNITUDE ? FP_GROUP_LAYER : FP_GROUP_ROW;
	o->allocation = FP_SPARSITY_UNIFORM;
	o->min_keep = FP_PRUNE_MIN_KEEP;
	o->sequential = true;
	o->sgpt_blocksize = FP_SPARSEGPT_BLOCKSIZE;
	o->sgpt_percdamp = FP_SPARSEGPT_PERCDAMP;
	o->sgpt_max_retries = FP_SPARSEGPT_RETRIES;
}

const char *fp_prune_method_name(enum fp_prune_method m)
{
	return (unsigned)m < FP_PRUNE_METHOD_COUNT ? method_names[m] : "?";
}

int fp_prune_method_parse(const char *s, enum fp_prune_method *ret)
{
	for (int i = 0; i < FP_PRUNE_METHOD_COUNT; i++) {
		if (strcmp(s, method_names[i]) == 0) {
			*ret = (enum fp_prune_method)i;
			return 0;
		}
	}
	return -EINVAL;
}

bool fp_prune_needs_data(enum fp_prune_method m)
{
	return m == FP_PRUNE_WANDA || m == FP_PRUNE_SPARSEGPT;
}

int fp_prune_check_opts(const struct fp_prune_opts *o, const struct fp_model_cfg *cfg)
{
	bool nm = o->nm_n || o->nm_m;

	if ((unsigned)o->method >= FP_PRUNE_METHOD_COUNT)
		return fp_err_detail(-EINVAL, "unknown pruning method %d", (int)o->method);
	if (o->first_block >= cfg->nlayers)
		return fp_err_detail(-EINVAL, "first block %u: the model has %u blocks",
				     o->first_block, cfg->nlayers);
	if ((o->first_block || o->num_blocks) && o->allocation != FP_SPARSITY_UNIFORM)
		return fp_err_detail(-EINVAL, "a block range needs uniform allocation, not %s",
				     fp_sparsity_scheme_name(o->allocation));
	if (nm) {
		if (!o->nm_n || !o->nm_m || o->nm_n > o->nm_m || o->nm_m > FP_SPARSEGPT_MAX_M)
			return fp_err_detail(-EINVAL, "N:M pattern %u:%u: need 0 < N <= M <= %u",
					     o->nm_n, o->nm_m, FP_SPARSEGPT_MAX_M);
		if (o->allocation != FP_SPARSITY_UNIFORM)
			return fp_err_detail(-EINVAL,
					     "N:M pattern %u:%u fixes every matrix's sparsity: "
					     "allocation must be uniform, not %s",
					     o->nm_n, o->nm_m,
					     fp_sparsity_scheme_name(o->allocation));
		for (int w = 0; w < FP_LIN_COUNT; w++) {
			size_t rows, cols;

			fp_linear_shape(cfg, (enum fp_linear)w, &rows, &cols);
			if (cols % o->nm_m)
				return fp_err_detail(-EINVAL,
						     "N:M pattern %u:%u: %s has %zu input columns, "
						     "not a multiple of %u",
						     o->nm_n, o->nm_m,
						     fp_linear_name((enum fp_linear)w), cols,
						     o->nm_m);
		}
	} else if (!(o->sparsity >= 0.0 && o->sparsity <= 1.0)) {
		return fp_err_detail(-EINVAL, "sparsity %g out of range [0, 1]", o->sparsity);
	}
	if (!nm && o->method != FP_PRUNE_SPARSEGPT && o->group != FP_GROUP_ROW &&
	    o->group != FP_GROUP_LAYER && o->group != FP_GROUP_COLUMN)
		return fp_err_detail(-EINVAL, "comparison group must be row, layer or column");
	if ((unsigned)o->allocation > FP_SPARSITY_LAMP)
		return fp_err_detail(-EINVAL, "unknown sparsity allocation %d", (int)o->allocation);
	if (!(o->min_keep >= 0.0 && o->min_keep <= 1.0))
		return fp_err_detail(-EINVAL, "min_keep %g out of range [0, 1]", o->min_keep);
	if (o->method == FP_PRUNE_SPARSEGPT) {
		if (!o->sgpt_blocksize)
			return fp_err_detail(-EINVAL, "SparseGPT blocksize must be > 0");
		if (nm && o->sgpt_blocksize % o->nm_m)
			return fp_err_detail(-EINVAL,
					     "SparseGPT blocksize %zu is not a multiple of M = %u",
					     o->sgpt_blocksize, o->nm_m);
		if (!(o->sgpt_percdamp >= 0.0 && isfinite(o->sgpt_percdamp)))
			return fp_err_detail(-EINVAL, "SparseGPT damping %g must be >= 0",
					     o->sgpt_percdamp);
		if (o->sgpt_max_retries > FP_SPARSEGPT_MAX_RETRIES)
			return fp_err_detail(-EINVAL, "SparseGPT retries %u above %u",
					     o->sgpt_max_retries, FP_SPARSEGPT_MAX_RETRIES);
	}
	return 0;
}

void fp_prune_result_done(struct fp_prune_result *res)
{
	if (!res)
		return;
	free(res->mats);
	for (size_t i = 0; i < res->nskipped; i++)
		free(res->skipped[i]);
	free(res->skipped);
	memset(res, 0, sizeof(*res));
}

/* ---- the run ---- */

struct run {
	struct fp_model *m;
	const struct fp_model_cfg *cfg;
	const struct fp_prune_opts *o;
	const struct fp_dataset *ds; /* NULL for magnitude */
	struct fp_prune_result *res;
	struct fp_sparsity_out *alloc; /* (nmats) for global / LAMP, else NULL */
	uint8_t *mask[FP_LIN_COUNT];   /* each fp_mask_bytes(rows * cols) */
	float *scaler;		       /* (max cols) Wanda's scaler_row */
	float *a, *b;		       /* (ntokens, hidden) activations */
	double t0;
};

static void mat_name(char *buf, size_t len, uint32_t block, enum fp_linear w)
{
	snprintf(buf, len, "model.layers.%" PRIu32 ".%s.weight", block, fp_linear_name(w));
}

static void progress(struct run *R, enum fp_prune_phase ph, uint32_t block, uint64_t pruned,
		     uint64_t numel)
{
	struct fp_prune_progress p = {
		.phase = ph,
		.block = block,
		.nblocks = R->cfg->nlayers,
		.elapsed = now() - R->t0,
		.pruned = pruned,
		.numel = numel,
	};

	if (R->o->progress)
		R->o->progress(R->o->progress_ctx, &p);
}

/* Global / LAMP: per-matrix sparsities from every magnitude of the model. */
static int alloc_pass(struct run *R)
{
	const struct fp_st_model *src = fp_model_source(R->m);
	size_t n = R->res->nmats;
	struct fp_sparsity_mat *mats = fp_callocarray(n, sizeof(*mats));
	float **bufs = fp_callocarray(n, sizeof(*bufs));
	struct fp_sparsity_opts so = {
		.scheme = R->o->allocation,
		.sparsity = R->o->sparsity,
		.min_keep = R->o->min_keep,
	};
	int r = 0;

	R->alloc = fp_callocarray(n, sizeof(*R->alloc));
	if (!mats || !bufs || !R->alloc) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const struct fp_prune_mat *pm = &R->res->mats[i];
		const struct fp_st_tensor *t = fp_st_model_find(src, pm->name);

		if (!t) { /* fp_model_open checked every linear */
			r = fp_err_detail(-EINVAL, "tensor '%s' missing", pm->name);
			goto out;
		}
		bufs[i] = fp_mallocarray(t->numel, sizeof(float));
		if (!bufs[i]) {
			r = fp_err_detail(-ENOMEM,
					  "%s allocation needs every prunable matrix in f32: out "
					  "of memory at '%s'",
					  fp_sparsity_scheme_name(R->o->allocation), pm->name);
			goto out;
		}
		r = fp_st_to_f32(t, bufs[i]);
		fp_st_release(t);
		if (r < 0)
			goto out;
		mats[i].name = pm->name;
		mats[i].w = bufs[i];
		mats[i].rows = pm->rows;
		mats[i].cols = pm->cols;
	}
	r = fp_sparsity_alloc(mats, n, &so, R->alloc);
out:
	for (size_t i = 0; bufs && i < n; i++)
		free(bufs[i]);
	free(bufs);
	free(mats);
	return r;
}

/* The selection spec and target sparsity of matrix idx. */
static int mat_spec(struct run *R, size_t idx, struct fp_select_spec *sp)
{
	const struct fp_prune_opts *o = R->o;
	struct fp_prune_mat *pm = &R->res->mats[idx];
	double s = R->alloc ? R->alloc[idx].sparsity : o->sparsity;

	memset(sp, 0, sizeof(*sp));
	if (o->nm_m) {
		sp->group = FP_GROUP_NM;
		sp->n = o->nm_n;
		sp->m = o->nm_m;
		pm->target = (double)o->nm_n / (double)o->nm_m;
		return 0;
	}
	pm->target = s;
	if (R->alloc && o->method == FP_PRUNE_MAGNITUDE && o->group == FP_GROUP_LAYER) {
		/* reproduces the global selection exactly (alloc_sparsity.h) */
		sp->group = FP_GROUP_LAYER;
		sp->k = R->alloc[idx].k;
		return 0;
	}
	return fp_select_spec_init(sp, o->group, s, pm->rows, pm->cols);
}

static int prune_matrix(struct run *R, struct fp_block *blk, struct fp_stats *st, size_t idx,
			enum fp_linear lin)
{
	struct fp_prune_mat *pm = &R->res->mats[idx];
	uint8_t *mask = R->mask[lin];
	struct fp_select_spec sp;
	size_t rows, cols;
	float *w = fp_block_linear(blk, lin, &rows, &cols); /* (rows, cols) */
	int r;

	r = mat_spec(R, idx, &sp);
	if (r < 0)
		return r;
	if (R->o->method == FP_PRUNE_SPARSEGPT) {
		struct fp_sparsegpt_opts so;
		size_t n;
		const float *xtx = fp_stats_xtx(st, lin, &n); /* (cols, cols) */

		fp_sparsegpt_opts_init(&so);
		so.sparsity = pm->target;
		so.prune_n = R->o->nm_n;
		so.prune_m = R->o->nm_m;
		so.blocksize = R->o->sgpt_blocksize;
		so.percdamp = R->o->sgpt_percdamp;
		so.max_retries = R->o->sgpt_max_retries;
		so.name = pm->name;
		if (!xtx || n != cols)
			return fp_err_detail(-EINVAL, "%s: no XᵀX statistics", pm->name);
		r = fp_sparsegpt_prune(w, rows, cols, xtx, fp_stats_nseq(st, lin), &so, mask,
				       &pm->sgpt);
		if (r < 0)
			return r;
		pm->has_sgpt = true;
	} else {
		struct fp_metric_src src = {
			.kind = FP_METRIC_MAGNITUDE,
			.x = w,
			.rows = rows,
			.cols = cols,
			.name = pm->name,
		};

		if (R->o->method == FP_PRUNE_WANDA) {
			r = fp_stats_scaler_row(st, lin, R->scaler);
			if (r < 0)
				return fp_err_detail(r, "%s: no activation statistics", pm->name);
			src.kind = FP_METRIC_WANDA;
			src.scaler = R->scaler;
		}
		r = fp_select(mask, &src, &sp);
		if (r < 0)
			return r;
		fp_mask_apply(w, mask, rows, cols);
	}
	pm->pruned = fp_mask_count(mask, rows * cols);
	pm->sparsity = rows && cols ? (double)pm->pruned / (double)(rows * cols) : 0.0;
	return 0;
}

static int prune_block(struct run *R, uint32_t i, fp_prune_sink_fn sink, void *sink_ctx)
{
	const struct fp_prune_opts *o = R->o;
	struct fp_prune_timing *t = &R->res->t;
	struct fp_block *blk = NULL;
	struct fp_stats *st = NULL;
	struct fp_prune_block pb = { .index = i };
	double t1 = now();
	int r;

	r = fp_block_load(R->m, i, &blk);
	if (r < 0)
		goto out;
	t->load += now() - t1;
	if (R->ds) {
		t1 = now();
		r = fp_stats_new(R->cfg, i, o->method == FP_PRUNE_SPARSEGPT ? FP_STATS_XTX : 0,
				 &st);
		if (r < 0)
			goto out;
		/* statistics of the dense block; b = its output */
		r = fp_block_forward(R->m, blk, R->ds, R->a, R->b, fp_stats_hook, st);
		if (r < 0)
			goto out;
		t->stats += now() - t1;
	}
	t1 = now();
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		size_t idx = (size_t)i * FP_LIN_COUNT + (size_t)w;

		r = prune_matrix(R, blk, st, idx, (enum fp_linear)w);
		if (r < 0)
			goto out;
		pb.mask[w] = R->mask[w];
		pb.mat[w] = &R->res->mats[idx];
		R->res->pruned += R->res->mats[idx].pruned;
	}
	t->select += now() - t1;
	if (R->ds && o->sequential && i + 1 < R->cfg->nlayers) {
		/* next block's input from the pruned block (the last block's output is unused) */
		t1 = now();
		r = fp_block_forward(R->m, blk, R->ds, R->a, R->b, NULL, NULL);
		if (r < 0)
			goto out;
		t->seq_forward += now() - t1;
	}
	if (sink) {
		t1 = now();
		pb.blk = blk;
		pb.stats = st;
		r = sink(sink_ctx, &pb);
		if (r < 0)
			goto out;
		t->sink += now() - t1;
	}
	if (R->ds) {
		float *tmp = R->a;

		R->a = R->b;
		R->b = tmp;
	}
out:
	fp_stats_free(st);
	fp_block_free(blk);
	fp_block_release_source(R->m, i);
	return r;
}

/*
 * A block before the pruned range: apply the fixed masks (if any) and run it forward so its
 * output is the next block's calibration input.
 */
static int pass_block(struct run *R, uint32_t i)
{
	const struct fp_prune_opts *o = R->o;
	struct fp_block *blk = NULL;
	double t1 = now();
	int r;

	r = fp_block_load(R->m, i, &blk);
	if (r < 0)
		goto out;
	R->res->t.load += now() - t1;
	if (o->fixed_mask) {
		for (int w = 0; w < FP_LIN_COUNT; w++) {
			size_t rows = blk->rows[w], cols = blk->cols[w];

			r = o->fixed_mask(o->fixed_ctx, i, (enum fp_linear)w, R->mask[w],
					  fp_mask_bytes(rows * cols));
			if (r < 0)
				goto out;
			fp_mask_apply(blk->w[w], R->mask[w], rows, cols);
		}
	}
	t1 = now();
	r = fp_block_forward(R->m, blk, R->ds, R->a, R->b, NULL, NULL);
	if (r < 0)
		goto out;
	R->res->t.seq_forward += now() - t1;
	{
		float *tmp = R->a;

		R->a = R->b;
		R->b = tmp;
	}
out:
	fp_block_free(blk);
	fp_block_release_source(R->m, i);
	return r;
}

static int setup(struct run *R)
{
	const struct fp_model_cfg *c = R->cfg;
	size_t maxcols = 0;

	R->res->nblocks = c->nlayers;
	R->res->arch = fp_arch_name(c->arch);
	R->res->nmats = (size_t)c->nlayers * FP_LIN_COUNT;
	R->res->mats = fp_callocarray(R->res->nmats ? R->res->nmats : 1, sizeof(*R->res->mats));
	if (!R->res->mats)
		return -ENOMEM;
	for (uint32_t i = 0; i < c->nlayers; i++) {
		for (int w = 0; w < FP_LIN_COUNT; w++) {
			struct fp_prune_mat *pm = &R->res->mats[(size_t)i * FP_LIN_COUNT + w];

			pm->block = i;
			pm->lin = (enum fp_linear)w;
			fp_linear_shape(c, pm->lin, &pm->rows, &pm->cols);
			mat_name(pm->name, sizeof(pm->name), i, pm->lin);
			R->res->numel += (uint64_t)pm->rows * pm->cols;
		}
	}
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		size_t rows, cols, n;

		fp_linear_shape(c, (enum fp_linear)w, &rows, &cols);
		if (!fp_mul_ok(rows, cols, &n))
			return -EOVERFLOW;
		R->mask[w] = malloc(fp_mask_bytes(n) ? fp_mask_bytes(n) : 1);
		if (!R->mask[w])
			return -ENOMEM;
		maxcols = cols > maxcols ? cols : maxcols;
	}
	R->scaler = fp_mallocarray(maxcols ? maxcols : 1, sizeof(float));
	return R->scaler ? 0 : -ENOMEM;
}

static int embed(struct run *R)
{
	size_t n;
	double t1 = now();
	int r;

	r = fp_dataset_check(R->ds);
	if (r < 0)
		return r;
	if (!R->ds->nsamples || !R->ds->ntokens)
		return fp_err_detail(-EINVAL, "calibration data holds no sample");
	if (R->ds->ntokens > SIZE_MAX || !fp_mul_ok((size_t)R->ds->ntokens, R->cfg->hidden, &n))
		return fp_err_detail(-EOVERFLOW, "calibration data too large");
	R->a = fp_aligned_array(n, sizeof(float));
	R->b = fp_aligned_array(n, sizeof(float));
	if (!R->a || !R->b)
		return fp_err_detail(-ENOMEM,
				     "out of memory for the activations (2 x %" PRIu64
				     " tokens x %" PRIu32 " floats)",
				     R->ds->ntokens, R->cfg->hidden);
	r = fp_embed(R->m, R->ds, R->a);
	R->res->t.embed = now() - t1;
	return r;
}

int fp_prune_run(struct fp_model *m, const struct fp_dataset *ds, const struct fp_prune_opts *o,
		 fp_prune_sink_fn sink, void *sink_ctx, struct fp_prune_result *res)
{
	struct run R = {
		.m = m,
		.cfg = fp_model_config(m),
		.o = o,
		.res = res,
		.t0 = now(),
	};
	uint64_t numel_done = 0;
	double t1;
	int r;

	memset(res, 0, sizeof(*res));
	r = fp_prune_check_opts(o, R.cfg);
	if (r < 0)
		goto out;
	if (fp_prune_needs_data(o->method)) {
		if (!ds) {
			r = fp_err_detail(-EINVAL, "%s needs calibration data",
					  fp_prune_method_name(o->method));
			goto out;
		}
		R.ds = ds;
	}
	r = setup(&R);
	if (r < 0)
		goto out;
	if (o->allocation != FP_SPARSITY_UNIFORM && !o->nm_m) {
		t1 = now();
		r = alloc_pass(&R);
		if (r < 0)
			goto out;
		res->t.alloc = now() - t1;
		progress(&R, FP_PRUNE_PHASE_ALLOC, 0, 0, 0);
	}
	if (R.ds) {
		r = embed(&R);
		if (r < 0)
			goto out;
		res->nsamples = ds->nsamples;
		res->ntokens = ds->ntokens;
		progress(&R, FP_PRUNE_PHASE_EMBED, 0, 0, 0);
	}
	fp_data_digest(R.ds, res->data_digest);
	for (uint32_t i = 0; R.ds && i < o->first_block; i++) {
		r = pass_block(&R, i);
		if (r < 0)
			goto out;
	}
	for (uint32_t i = o->first_block; i < R.cfg->nlayers; i++) {
		if (o->num_blocks && i - o->first_block >= o->num_blocks)
			break;
		r = prune_block(&R, i, sink, sink_ctx);
		if (r < 0)
			goto out;
		for (int w = 0; w < FP_LIN_COUNT; w++) {
			const struct fp_prune_mat *pm = &res->mats[(size_t)i * FP_LIN_COUNT + w];

			numel_done += (uint64_t)pm->rows * pm->cols;
		}
		progress(&R, FP_PRUNE_PHASE_BLOCK, i, res->pruned, numel_done);
	}
	res->t.total = now() - R.t0;
out:
	if (r < 0)
		fp_prune_result_done(res);
	for (int w = 0; w < FP_LIN_COUNT; w++)
		free(R.mask[w]);
	free(R.scaler);
	free(R.alloc);
	free(R.a);
	free(R.b);
	return r;
}

/* ---- report ---- */

/* out (2 n + 1 bytes) = lowercase hex of d (n bytes). */
static void hex(const uint8_t *d, size_t n, char *out)
{
	sodium_bin2hex(out, 2 * n + 1, d, n);
}

/* cJSON calls fail only when out of memory; *ok records the first failure. */
static cJSON *add(cJSON *parent, const char *key, cJSON *item, bool *ok)
{
	if (!item || !parent) {
		*ok = false;
		cJSON_Delete(item);
		return NULL;
	}
	if (cJSON_IsArray(parent))
		cJSON_AddItemToArray(parent, item);
	else
		cJSON_AddItemToObject(parent, key, item);
	return item;
}

static cJSON *num(double v)
{
	return cJSON_CreateNumber(v);
}

static cJSON *str_or_null(const char *s)
{
	return s ? cJSON_CreateString(s) : cJSON_CreateNull();
}

static void report_settings(cJSON *root, const struct fp_prune_info *info,
			    const struct fp_prune_opts *o, bool *ok)
{
	cJSON *s = add(root, "settings", cJSON_CreateObject(), ok);
	char pat[32];
	bool data = fp_prune_needs_data(o->method);

	if (o->nm_m) {
		snprintf(pat, sizeof(pat), "%u:%u", o->nm_n, o->nm_m);
		add(s, "sparsity", num((double)o->nm_n / (double)o->nm_m), ok);
		add(s, "pattern", cJSON_CreateString(pat), ok);
	} else {
		add(s, "sparsity", num(o->sparsity), ok);
		add(s, "pattern", cJSON_CreateString("unstructured"), ok);
	}
	if (o->method == FP_PRUNE_SPARSEGPT) {
		cJSON *g = add(s, "sparsegpt", cJSON_CreateObject(), ok);

		add(s, "group",
		    cJSON_CreateString(o->nm_m ? "nm" : "sparsegpt column blocks (all rows)"), ok);
		add(g, "blocksize", num((double)o->sgpt_blocksize), ok);
		add(g, "percdamp", num(o->sgpt_percdamp), ok);
		add(g, "max_retries", num(o->sgpt_max_retries), ok);
	} else {
		add(s, "group", cJSON_CreateString(fp_group_name(o->nm_m ? FP_GROUP_NM : o->group)),
		    ok);
	}
	add(s, "allocation", cJSON_CreateString(fp_sparsity_scheme_name(o->allocation)), ok);
	if (o->allocation != FP_SPARSITY_UNIFORM)
		add(s, "min_keep", num(o->min_keep), ok);
	add(s, "sequential", data ? cJSON_CreateBool(o->sequential) : cJSON_CreateNull(), ok);
	add(s, "nsamples", data ? num(info->nsamples) : cJSON_CreateNull(), ok);
	add(s, "seqlen", data ? num(info->seqlen) : cJSON_CreateNull(), ok);
	add(s, "sampling",
	    data ? cJSON_CreateString(info->shuffle ? "random" : "first") : cJSON_CreateNull(), ok);
	add(s, "seed", data && info->shuffle ? num((double)info->seed) : cJSON_CreateNull(), ok);
	add(s, "threads", num(info->threads), ok);
	add(s, "tie_rule",
	    cJSON_CreateString("exactly k = floor(group size x sparsity) per group; equal "
			       "metrics: lower index pruned first"),
	    ok);
}

static void report_matrices(cJSON *root, const struct fp_prune_result *res, bool *ok)
{
	cJSON *arr = add(root, "matrices", cJSON_CreateArray(), ok);

	for (size_t i = 0; i < res->nmats && *ok; i++) {
		const struct fp_prune_mat *pm = &res->mats[i];
		cJSON *e = add(arr, NULL, cJSON_CreateObject(), ok);

		add(e, "name", cJSON_CreateString(pm->name), ok);
		add(e, "block", num(pm->block), ok);
		add(e, "rows", num((double)pm->rows), ok);
		add(e, "cols", num((double)pm->cols), ok);
		add(e, "target", num(pm->target), ok);
		add(e, "pruned", num((double)pm->pruned), ok);
		add(e, "sparsity", num(pm->sparsity), ok);
		if (pm->has_sgpt) {
			cJSON *g = add(e, "sparsegpt", cJSON_CreateObject(), ok);

			add(g, "percdamp", num(pm->sgpt.percdamp), ok);
			add(g, "damp", num(pm->sgpt.damp), ok);
			add(g, "retries", num(pm->sgpt.retries), ok);
			add(g, "dead_columns", num((double)pm->sgpt.dead), ok);
			add(g, "loss", num(pm->sgpt.loss), ok);
		}
	}
}

char *fp_prune_report(const struct fp_prune_info *info, const struct fp_prune_opts *o,
		      const struct fp_prune_result *res)
{
	cJSON *root = cJSON_CreateObject(), *x;
	char digest[65];
	bool ok = root != NULL;
	uint32_t retried = 0;
	char *text = NULL;

	add(root, "tool", cJSON_CreateString("fedprune prune"), &ok);
	add(root, "version", cJSON_CreateString(FP_VERSION), &ok);
	add(root, "method", cJSON_CreateString(fp_prune_method_name(o->method)), &ok);
	report_settings(root, info, o, &ok);

	x = add(root, "model", cJSON_CreateObject(), &ok);
	add(x, "path", str_or_null(info->model_dir), &ok);
	hex(info->model_digest, 32, digest);
	add(x, "safetensors_header_digest", cJSON_CreateString(digest), &ok);
	add(x, "architecture", str_or_null(res->arch), &ok);
	add(x, "blocks", num(res->nblocks), &ok);

	if (fp_prune_needs_data(o->method)) {
		x = add(root, "calibration", cJSON_CreateObject(), &ok);
		add(x, "path", str_or_null(info->calib_path), &ok);
		hex(res->data_digest, 32, digest);
		add(x, "digest", cJSON_CreateString(digest), &ok);
		add(x, "samples", num((double)res->nsamples), &ok);
		add(x, "tokens", num((double)res->ntokens), &ok);
	} else {
		add(root, "calibration", cJSON_CreateNull(), &ok);
	}
	report_matrices(root, res, &ok);

	for (size_t i = 0; i < res->nmats; i++)
		retried += res->mats[i].sgpt.retries > 0;
	x = add(root, "totals", cJSON_CreateObject(), &ok);
	add(x, "matrices", num((double)res->nmats), &ok);
	add(x, "weights", num((double)res->numel), &ok);
	add(x, "pruned", num((double)res->pruned), &ok);
	add(x, "sparsity", num(res->numel ? (double)res->pruned / (double)res->numel : 0.0), &ok);
	if (o->method == FP_PRUNE_SPARSEGPT)
		add(x, "sparsegpt_matrices_retried", num(retried), &ok);

	x = add(root, "timings_seconds", cJSON_CreateObject(), &ok);
	add(x, "allocation", num(res->t.alloc), &ok);
	add(x, "embed", num(res->t.embed), &ok);
	add(x, "load", num(res->t.load), &ok);
	add(x, "statistics_forward", num(res->t.stats), &ok);
	add(x, "select", num(res->t.select), &ok);
	add(x, "sequential_forward", num(res->t.seq_forward), &ok);
	add(x, "write", num(res->t.sink), &ok);
	add(x, "total", num(res->t.total), &ok);

	x = add(root, "files_not_copied", cJSON_CreateArray(), &ok);
	for (size_t i = 0; i < res->nskipped; i++)
		add(x, NULL, cJSON_CreateString(res->skipped[i]), &ok);

	if (ok)
		text = cJSON_Print(root);
	cJSON_Delete(root);
	return text;
}

/* ---- writing an output directory ---- */

struct write_ctx {
	struct fp_hfout *ho;
	struct fp_mask_writer *mw;
	const struct fp_prune_block *b; /* block being written */
	size_t replaced;		/* tensors replaced so far */
};

static int write_fn(void *ctx, const struct fp_st_tensor *t, const float **ret)
{
	struct write_ctx *c = ctx;

	for (int w = 0; w < FP_LIN_COUNT; w++) {
		if (strcmp(t->name, c->b->mat[w]->name) == 0) {
			size_t rows, cols;

			*ret = fp_block_linear(c->b->blk, (enum fp_linear)w, &rows, &cols);
			if ((uint64_t)rows * cols != t->numel)
				return fp_err_detail(-EINVAL, "tensor '%s': size changed", t->name);
			c->replaced++;
			return 0;
		}
	}
	return 0;
}

static int write_sink(void *ctx, const struct fp_prune_block *b)
{
	struct write_ctx *c = ctx;
	int r;

	c->b = b;
	r = fp_hfout_write(c->ho, (long)b->index, write_fn, c);
	for (int w = 0; w < FP_LIN_COUNT && r == 0; w++)
		r = fp_mask_writer_add(c->mw, b->mask[w],
				       fp_mask_bytes(b->mat[w]->rows * b->mat[w]->cols));
	return r;
}

static int write_text(const char *dir, const char *name, const char *text)
{
	char *path = NULL;
	int r;

	if (asprintf(&path, "%s/%s", dir, name) < 0)
		return -ENOMEM;
	r = fp_write_file_atomic(path, text, strlen(text), 0666);
	free(path);
	return r;
}

static int keep_skipped(const struct fp_hfout *ho, struct fp_prune_result *res)
{
	size_t n = fp_hfout_skipped_count(ho);

	if (!n)
		return 0;
	res->skipped = fp_callocarray(n, sizeof(*res->skipped));
	if (!res->skipped)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const char *why = NULL, *name = fp_hfout_skipped(ho, i, &why);

		if (asprintf(&res->skipped[i], "%s: %s", name, why) < 0) {
			res->skipped[i] = NULL;
			return -ENOMEM;
		}
		res->nskipped = i + 1;
	}
	return 0;
}

int fp_prune_write(struct fp_model *m, const char *model_dir, const struct fp_dataset *ds,
		   const struct fp_prune_opts *o, struct fp_prune_info *info, const char *out_dir,
		   struct fp_prune_result *res)
{
	const struct fp_model_cfg *cfg = fp_model_config(m);
	const struct fp_st_model *src = fp_model_source(m);
	struct write_ctx c = { 0 };
	struct fp_mask_info *decls = NULL;
	size_t n = (size_t)cfg->nlayers * FP_LIN_COUNT;
	char *path = NULL, *report = NULL;
	char(*names)[96] = NULL;
	bool ran = false;
	int r;

	memset(res, 0, sizeof(*res));
	r = fp_prune_check_opts(o, cfg);
	if (r < 0)
		goto out;
	r = fp_hfout_source_digest(src, info->model_digest);
	if (r < 0)
		goto out;
	decls = fp_callocarray(n ? n : 1, sizeof(*decls));
	names = fp_callocarray(n ? n : 1, sizeof(*names));
	if (!decls || !names) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		size_t rows, cols;

		mat_name(names[i], sizeof(names[i]), (uint32_t)(i / FP_LIN_COUNT),
			 (enum fp_linear)(i % FP_LIN_COUNT));
		fp_linear_shape(cfg, (enum fp_linear)(i % FP_LIN_COUNT), &rows, &cols);
		decls[i].name = names[i];
		decls[i].ndim = 2;
		decls[i].dims[0] = rows;
		decls[i].dims[1] = cols;
	}
	r = fp_hfout_open(src, model_dir, out_dir, &c.ho);
	if (r < 0)
		goto out;
	if (asprintf(&path, "%s/%s", fp_hfout_tmpdir(c.ho), FP_PRUNE_MASK_FILE) < 0) {
		path = NULL;
		r = -ENOMEM;
		goto out;
	}
	r = fp_mask_writer_open(path, decls, n, &c.mw);
	if (r < 0)
		goto out;
	r = fp_prune_run(m, ds, o, write_sink, &c, res);
	if (r < 0)
		goto out;
	ran = true;
	r = fp_mask_writer_close(c.mw);
	c.mw = NULL;
	if (r < 0)
		goto out;
	r = fp_hfout_finish(c.ho, NULL, NULL);
	if (r < 0)
		goto out;
	if (c.replaced != n) {
		r = fp_err_detail(-EINVAL, "%s: wrote %zu pruned matrices, expected %zu", out_dir,
				  c.replaced, n);
		goto out;
	}
	r = keep_skipped(c.ho, res);
	if (r < 0)
		goto out;
	report = fp_prune_report(info, o, res);
	if (!report) {
		r = -ENOMEM;
		goto out;
	}
	r = write_text(fp_hfout_tmpdir(c.ho), FP_PRUNE_REPORT_FILE, report);
	if (r < 0)
		goto out;
	r = fp_hfout_commit(c.ho);
	c.ho = NULL;
out:
	if (r < 0 && ran)
		fp_prune_result_done(res);
	fp_mask_writer_abort(c.mw);
	fp_hfout_abort(c.ho);
	free(report);
	free(path);
	free(names);
	free(decls);
	return r;
}
