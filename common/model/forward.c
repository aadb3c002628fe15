/*
 * Block-by-block forward pass over a whole dataset (see forward.h).
 *
 * Per group of samples ("chunk") of n tokens, with X (n, max(hidden, qd, inter)) and
 * Y (n, max(qd + 2 kvd, 2 inter)) scratch:
 *   X = rmsnorm(in)            hook(ATTN, X)
 *   Y = X · [Wq; Wk; Wv]ᵀ + b  RoPE on the q and k columns of Y
 *   X = attention(Y)           hook(O, X)           per (sample, head), threads
 *   out = in + X · Woᵀ (+ b)                         sgemm with beta = 1
 *   X = rmsnorm(out)           hook(MLP, X)
 *   Y = X · [Wgate; Wup]ᵀ (+ b)
 *   X = silu(Y_gate) * Y_up    hook(DOWN, X)
 *   out += X · Wdownᵀ (+ b)
 */
#include "forward.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "alloc.h"
#include "err.h"
#include "kernels.h"
#include "par.h"

#define ROW_GRAIN 8 /* rows per thread at least, for row-parallel loops */

enum fp_input fp_linear_input(enum fp_linear which)
{
	switch (which) {
	case FP_LIN_Q:
	case FP_LIN_K:
	case FP_LIN_V:
		return FP_IN_ATTN;
	case FP_LIN_O:
		return FP_IN_O;
	case FP_LIN_GATE:
	case FP_LIN_UP:
		return FP_IN_MLP;
	default:
		return FP_IN_DOWN;
	}
}

size_t fp_input_dim(const struct fp_model_cfg *cfg, enum fp_input input)
{
	switch (input) {
	case FP_IN_ATTN:
	case FP_IN_MLP:
		return cfg->hidden;
	case FP_IN_O:
		return (size_t)cfg->nheads * cfg->head_dim;
	default:
		return cfg->intermediate;
	}
}

int fp_dataset_check(const struct fp_dataset *ds)
{
	uint64_t pos = 0;

	if (!ds || (ds->nsamples && (!ds->len || !ds->off || !ds->ids)))
		return fp_err_detail(-EINVAL, "dataset: missing arrays");
	for (size_t i = 0; i < ds->nsamples; i++) {
		if (ds->len[i] == 0)
			return fp_err_detail(-EINVAL, "dataset: sample %zu is empty", i);
		if (ds->off[i] != pos)
			return fp_err_detail(-EINVAL,
					     "dataset: sample %zu does not follow sample %zu", i,
					     i ? i - 1 : 0);
		pos += ds->len[i];
	}
	if (pos != ds->ntokens)
		return fp_err_detail(
			-EINVAL, "dataset: samples hold %" PRIu64 " tokens, ntokens is %" PRIu64,
			pos, ds->ntokens);
	if (ds->ntokens > SIZE_MAX / 4)
		return fp_err_detail(-EINVAL, "dataset: too many tokens");
	return 0;
}

/*
 * Tokens gathered between two releases of the embedding's mapped pages. A fault maps more
 * than the page it needs (fault-around of already-cached pages; about 300 KiB per token
 * measured on kernel 6.18), so gathering rows in token order would leave most of the
 * (vocab, hidden) matrix resident for the rest of the pass (250 MiB of a 32000 x 2048 f32
 * embedding after 4096 tokens). Releasing every 128 tokens kept it at 41 MiB; each release
 * is one madvise over the tensor.
 */
#define EMBED_RELEASE_TOKENS 128

int fp_embed(struct fp_model *m, const struct fp_dataset *ds, float *hidden)
{
	const struct fp_model_cfg *c = fp_model_config(m);
	struct fp__model_tensors mt;
	size_t done = 0;
	int r = fp_dataset_check(ds);

	if (r < 0)
		return r;
	fp__model_tensors(m, &mt);
	for (size_t i = 0; i < ds->nsamples; i++) {
		for (uint32_t t = 0; t < ds->len[i]; t++) {
			int32_t id = ds->ids[ds->off[i] + t];

			if (id < 0 || (uint32_t)id >= c->vocab)
				return fp_err_detail(-EINVAL,
						     "dataset: sample %zu position %" PRIu32
						     ": token id %" PRId32
						     " is not below vocab_size %" PRIu32,
						     i, t, id, c->vocab);
			fp__tensor_rows_f32(mt.embed, (size_t)id, 1,
					    hidden + (ds->off[i] + t) * (size_t)c->hidden);
			if (++done % EMBED_RELEASE_TOKENS == 0)
				fp_st_release(mt.embed);
		}
	}
	fp_st_release(mt.embed);
	return 0;
}

/* ---- block forward ---- */

struct fwd {
	const struct fp_model_cfg *c;
	const struct fp_block *blk;
	const struct fp_dataset *ds;
	size_t s0, s1;	      /* samples of the current chunk */
	size_t t0, n;	      /* its first token and token count */
	size_t qd, kvd;	      /* nheads * head_dim, nkv_heads * head_dim */
	size_t ldqkv;	      /* qd + 2 kvd */
	size_t window;	      /* of this layer; 0 = none */
	const float *in;      /* (n, hidden) rows of the chunk */
	float *out;	      /* (n, hidden) */
	float *x;	      /* (n, max(hidden, qd, inter)) scratch */
	float *y;	      /* (n, max(ldqkv, 2 inter)) scratch */
	float *att;	      /* (threads, FP_ATTN_TILE * max_len) attention scratch */
	size_t max_len;	      /* longest sample of the dataset */
	const float *cos;     /* (max_len, head_dim / 2) */
	const float *sin;     /* (max_len, head_dim / 2) */
	const float *norm;    /* (hidden) weight of the current rmsnorm */
	const float *norm_in; /* (n, hidden) input of the current rmsnorm */
};

static void norm_rows(void *p, size_t b, size_t e, unsigned tid)
{
	struct fwd *f = p;
	size_t h = f->c->hidden;

	(void)tid;
	fp_k_rmsnorm(f->x + b * h, f->norm_in + b * h, f->norm, e - b, h, f->c->rms_eps);
}

/* Sample of chunk row `row` (binary search in the chunk's samples). */
static size_t sample_of_row(const struct fwd *f, size_t row)
{
	size_t lo = f->s0, hi = f->s1, abs = f->t0 + row;

	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;

		if (f->ds->off[mid] <= abs)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* q/k/v bias and RoPE on rows [b, e) of Y; rope runs per run of rows of one sample. */
static void qkv_rows(void *p, size_t b, size_t e, unsigned tid)
{
	struct fwd *f = p;
	const struct fp_model_cfg *c = f->c;
	size_t s = sample_of_row(f, b);

	(void)tid;
	if (f->blk->qkv_bias)
		fp_k_add_bias(f->y + b * f->ldqkv, f->ldqkv, f->blk->b[FP_LIN_Q], e - b, f->ldqkv);
	while (b < e) {
		size_t send = f->ds->off[s] + f->ds->len[s] - f->t0; /* chunk row after sample s */
		size_t stop = send < e ? send : e;
		size_t pos0 = f->t0 + b - f->ds->off[s];
		float *row = f->y + b * f->ldqkv;

		fp_k_rope(row, f->ldqkv, stop - b, c->nheads, c->head_dim, pos0, f->cos, f->sin);
		fp_k_rope(row + f->qd, f->ldqkv, stop - b, c->nkv_heads, c->head_dim, pos0, f->cos,
			  f->sin);
		b = stop;
		s++;
	}
}

/* One (sample, head) pair per item. */
static void attn_items(void *p, size_t b, size_t e, unsigned tid)
{
	struct fwd *f = p;
	const struct fp_model_cfg *c = f->c;
	size_t hd = c->head_dim, group = c->nheads / c->nkv_heads;
	float scale = (float)(1.0 / sqrt((double)hd));
	float *scratch = f->att + (size_t)tid * FP_ATTN_TILE * f->max_len;

	for (size_t i = b; i < e; i++) {
		size_t s = f->s0 + i / c->nheads, h = i % c->nheads, kvh = h / group;
		size_t row0 = f->ds->off[s] - f->t0;
		const float *base = f->y + row0 * f->ldqkv;

		fp_k_attention(f->x + row0 * f->qd + h * hd, f->qd, base + h * hd, f->ldqkv,
			       base + f->qd + kvh * hd, base + f->qd + f->kvd + kvh * hd, f->ldqkv,
			       f->ds->len[s], hd, f->window, scale, scratch);
	}
}

static void silu_rows(void *p, size_t b, size_t e, unsigned tid)
{
	struct fwd *f = p;
	size_t inter = f->c->intermediate;
	const float *g = f->y + b * 2 * inter;

	(void)tid;
	if (f->blk->gate_up_bias)
		fp_k_add_bias(f->y + b * 2 * inter, 2 * inter, f->blk->b[FP_LIN_GATE], e - b,
			      2 * inter);
	fp_k_silu_mul(f->x + b * inter, inter, g, g + inter, 2 * inter, e - b, inter);
}

static int call_hook(const struct fwd *f, fp_hook_fn hook, void *ctx, enum fp_input in, size_t cols)
{
	struct fp_hook_batch hb = {
		.block = f->blk->index,
		.input = in,
		.x = f->x,
		.rows = f->n,
		.cols = cols,
		.nseq = f->s1 - f->s0,
	};

	return hook ? hook(ctx, &hb) : 0;
}

static void rmsnorm_par(struct fwd *f, const float *in, const float *w)
{
	f->norm_in = in;
	f->norm = w;
	fp_par_for(f->n, ROW_GRAIN, norm_rows, f);
}

static int attention_half(struct fwd *f, fp_hook_fn hook, void *ctx)
{
	const struct fp_model_cfg *c = f->c;
	const struct fp_block *blk = f->blk;
	size_t H = c->hidden;
	int saved, r;

	rmsnorm_par(f, f->in, blk->attn_norm);
	r = call_hook(f, hook, ctx, FP_IN_ATTN, H);
	if (r < 0)
		return r;
	fp_k_linear(f->y, f->x, blk->w[FP_LIN_Q], f->n, H, f->ldqkv, 0);
	fp_par_for(f->n, ROW_GRAIN, qkv_rows, f);
	/* each thread's sgemms run single-threaded: two BLAS pools would fight for cores */
	saved = fp_blas_single_begin();
	fp_par_dyn((f->s1 - f->s0) * c->nheads, attn_items, f);
	fp_blas_single_end(saved);
	r = call_hook(f, hook, ctx, FP_IN_O, f->qd);
	if (r < 0)
		return r;
	memcpy(f->out, f->in, f->n * H * sizeof(float));
	fp_k_linear(f->out, f->x, blk->w[FP_LIN_O], f->n, f->qd, H, 1);
	if (blk->b[FP_LIN_O])
		fp_k_add_bias(f->out, H, blk->b[FP_LIN_O], f->n, H);
	return 0;
}

static int mlp_half(struct fwd *f, fp_hook_fn hook, void *ctx)
{
	const struct fp_model_cfg *c = f->c;
	const struct fp_block *blk = f->blk;
	size_t H = c->hidden, inter = c->intermediate;
	int r;

	rmsnorm_par(f, f->out, blk->mlp_norm);
	r = call_hook(f, hook, ctx, FP_IN_MLP, H);
	if (r < 0)
		return r;
	fp_k_linear(f->y, f->x, blk->w[FP_LIN_GATE], f->n, H, 2 * inter, 0);
	fp_par_for(f->n, ROW_GRAIN, silu_rows, f);
	r = call_hook(f, hook, ctx, FP_IN_DOWN, inter);
	if (r < 0)
		return r;
	fp_k_linear(f->out, f->x, blk->w[FP_LIN_DOWN], f->n, inter, H, 1);
	if (blk->b[FP_LIN_DOWN])
		fp_k_add_bias(f->out, H, blk->b[FP_LIN_DOWN], f->n, H);
	return 0;
}

static size_t max3(size_t a, size_t b, size_t c)
{
	size_t m = a > b ? a : b;

	return m > c ? m : c;
}

/* Next chunk: samples [s0, *s1) whose tokens fit max_tokens (at least one sample). */
static size_t next_chunk(const struct fp_dataset *ds, size_t s0, size_t max_tokens, size_t *ntok)
{
	size_t s = s0, n = 0;

	while (s < ds->nsamples && (s == s0 || n + ds->len[s] <= max_tokens))
		n += ds->len[s++];
	*ntok = n;
	return s;
}

int fp_block_forward(struct fp_model *m, const struct fp_block *blk, const struct fp_dataset *ds,
		     const float *in, float *out, fp_hook_fn hook, void *ctx)
{
	const struct fp_model_cfg *c = fp_model_config(m);
	struct fwd f = { .c = c, .blk = blk, .ds = ds };
	size_t per_tok, ldx, ldy, att_bytes, limit, max_tokens, chunk_max = 0, bytes, ntok, n_in;
	char *mem;
	int r;

	r = fp_dataset_check(ds);
	if (r < 0 || ds->nsamples == 0)
		return r;
	if (blk->index >= c->nlayers)
		return -EINVAL;
	if (!fp_mul_ok(ds->ntokens, (size_t)c->hidden * sizeof(float), &n_in))
		return -EOVERFLOW;
	if ((uintptr_t)in < (uintptr_t)out + n_in && (uintptr_t)out < (uintptr_t)in + n_in)
		return fp_err_detail(-EINVAL, "block forward: input and output buffers overlap");
	f.qd = (size_t)c->nheads * c->head_dim;
	f.kvd = (size_t)c->nkv_heads * c->head_dim;
	f.ldqkv = f.qd + 2 * f.kvd;
	f.window = fp_layer_window(c, blk->index);
	for (size_t i = 0; i < ds->nsamples; i++)
		f.max_len = ds->len[i] > f.max_len ? ds->len[i] : f.max_len;
	ldx = max3(c->hidden, f.qd, c->intermediate);
	ldy = f.ldqkv > 2 * (size_t)c->intermediate ? f.ldqkv : 2 * (size_t)c->intermediate;
	per_tok = (ldx + ldy) * sizeof(float);
	att_bytes = (size_t)fp_par_threads() * FP_ATTN_TILE * f.max_len * sizeof(float);
	limit = fp__model_scratch_limit(m);
	max_tokens = limit > att_bytes ? (limit - att_bytes) / per_tok : 1;
	for (size_t s = 0; s < ds->nsamples;) {
		s = next_chunk(ds, s, max_tokens, &ntok);
		chunk_max = ntok > chunk_max ? ntok : chunk_max;
	}
	/* BLAS takes int dimensions */
	if (chunk_max > INT_MAX / 2 || !fp_mul_ok(chunk_max, per_tok, &bytes) ||
	    !fp_add_ok(bytes, att_bytes + 64, &bytes))
		return fp_err_detail(-EOVERFLOW, "dataset: %zu tokens in one group is too many",
				     chunk_max);
	mem = fp__model_scratch(m, bytes);
	r = fp__model_rope(m, f.max_len, &f.cos, &f.sin);
	if (!mem || r < 0)
		return r < 0 ? r : -ENOMEM;
	f.att = (float *)mem;
	f.x = (float *)(mem + ((att_bytes + 63) & ~(size_t)63));
	f.y = f.x + chunk_max * ldx;
	for (f.s0 = 0; f.s0 < ds->nsamples; f.s0 = f.s1) {
		f.s1 = next_chunk(ds, f.s0, max_tokens, &f.n);
		f.t0 = ds->off[f.s0];
		f.in = in + f.t0 * c->hidden;
		f.out = out + f.t0 * c->hidden;
		r = attention_half(&f, hook, ctx);
		if (r >= 0)
			r = mlp_half(&f, hook, ctx);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ---- head ---- */

struct head {
	size_t n;	       /* rows in this tile */
	size_t vc;	       /* vocab columns in this tile */
	size_t v0;	       /* first vocab id of the tile */
	const float *logits;   /* (n, vc) */
	const int32_t *target; /* (n) target id per row, -1 for none */
	double *mx;	       /* (n) running max */
	double *sum;	       /* (n) running sum of exp(l - mx) */
	double *tl;	       /* (n) target logit */
	const float *hidden;   /* (n, H) rows to normalise */
	float *xn;	       /* (n, H) normalised */
	const float *norm;     /* (H) */
	size_t H;
	double eps;
};

static void head_norm_rows(void *p, size_t b, size_t e, unsigned tid)
{
	struct head *h = p;

	(void)tid;
	fp_k_rmsnorm(h->xn + b * h->H, h->hidden + b * h->H, h->norm, e - b, h->H, h->eps);
}

/* Online log-sum-exp over the tile's columns for rows [b, e). */
static void head_lse_rows(void *p, size_t b, size_t e, unsigned tid)
{
	struct head *h = p;

	(void)tid;
	for (size_t r = b; r < e; r++) {
		const float *row = h->logits + r * h->vc;
		double mx = row[0], s = 0;
		int32_t tg = h->target[r];

		if (tg < 0)
			continue;
		for (size_t j = 1; j < h->vc; j++)
			mx = row[j] > mx ? row[j] : mx;
		if (mx > h->mx[r]) {
			h->sum[r] *= exp(h->mx[r] - mx);
			h->mx[r] = mx;
		}
		for (size_t j = 0; j < h->vc; j++)
			s += exp((double)row[j] - h->mx[r]);
		h->sum[r] += s;
		if ((size_t)tg >= h->v0 && (size_t)tg < h->v0 + h->vc)
			h->tl[r] = row[(size_t)tg - h->v0];
	}
}

/* Tile sizes: at most 16 Mi floats for the normalised rows and for a weight tile. */
static void head_tiles(const struct fp_model_cfg *c, size_t *tok, size_t *voc)
{
	size_t cap = (size_t)16 << 20;

	*tok = cap / c->hidden < 1024 ? cap / c->hidden : 1024;
	*voc = cap / c->hidden < 4096 ? cap / c->hidden : 4096;
	if (*voc > c->vocab)
		*voc = c->vocab;
}

/* W rows [v0, v0 + vc) of lm_head as f32: the mapping itself or a converted copy in wbuf. */
static const float *head_weight(const struct fp__model_tensors *mt, size_t v0, size_t vc, size_t H,
				float *wbuf)
{
	const float *direct = fp__tensor_f32_direct(mt->head);

	if (direct)
		return direct + v0 * H;
	fp__tensor_rows_f32(mt->head, v0, vc, wbuf);
	return wbuf;
}

int fp_head_nll(struct fp_model *m, const float *hidden, const struct fp_dataset *ds, double *nll)
{
	const struct fp_model_cfg *c = fp_model_config(m);
	struct fp__model_tensors mt;
	struct head h = { .H = c->hidden, .eps = c->rms_eps };
	size_t tok, voc, s = 0;
	int32_t *target = NULL;
	double *acc = NULL;
	float *xn = NULL, *logits = NULL, *wbuf = NULL;
	int r = fp_dataset_check(ds);

	if (r < 0 || ds->nsamples == 0)
		return r;
	fp__model_tensors(m, &mt);
	head_tiles(c, &tok, &voc);
	h.norm = mt.final_norm;
	target = fp_mallocarray(tok, sizeof(*target));
	acc = fp_mallocarray(3 * tok, sizeof(*acc));
	xn = fp_aligned_array(tok * c->hidden, sizeof(float));
	logits = fp_aligned_array(tok * voc, sizeof(float));
	wbuf = fp__tensor_f32_direct(mt.head) ? NULL : fp_aligned_array(voc * c->hidden, 4);
	if (!target || !acc || !xn || !logits || (!wbuf && !fp__tensor_f32_direct(mt.head))) {
		r = -ENOMEM;
		goto out;
	}
	memset(nll, 0, ds->nsamples * sizeof(*nll));
	h.mx = acc;
	h.sum = acc + tok;
	h.tl = acc + 2 * tok;
	h.target = target;
	h.xn = xn;
	h.logits = logits;
	for (size_t t0 = 0; t0 < ds->ntokens; t0 += h.n) {
		h.n = ds->ntokens - t0 < tok ? ds->ntokens - t0 : tok;
		h.hidden = hidden + t0 * c->hidden;
		for (size_t i = 0, ss = s; i < h.n; i++) {
			size_t abs = t0 + i;

			while (abs >= ds->off[ss] + ds->len[ss])
				ss++;
			target[i] = abs + 1 < ds->off[ss] + ds->len[ss] ? ds->ids[abs + 1] : -1;
			h.mx[i] = -INFINITY;
			h.sum[i] = 0;
			h.tl[i] = 0;
		}
		fp_par_for(h.n, ROW_GRAIN, head_norm_rows, &h);
		for (h.v0 = 0; h.v0 < c->vocab; h.v0 += h.vc) {
			h.vc = c->vocab - h.v0 < voc ? c->vocab - h.v0 : voc;
			fp_k_linear(logits, xn, head_weight(&mt, h.v0, h.vc, c->hidden, wbuf), h.n,
				    c->hidden, h.vc, 0);
			fp_par_for(h.n, ROW_GRAIN, head_lse_rows, &h);
		}
		for (size_t i = 0; i < h.n; i++) {
			size_t abs = t0 + i;

			while (abs >= ds->off[s] + ds->len[s])
				s++;
			if (target[i] >= 0)
				nll[s] += log(h.sum[i]) + h.mx[i] - h.tl[i];
		}
	}
	for (size_t i = 0; i < ds->nsamples; i++)
		nll[i] = ds->len[i] > 1 ? nll[i] / (double)(ds->len[i] - 1) : 0;
out:
	free(target);
	free(acc);
	free(xn);
	free(logits);
	free(wbuf);
	return r;
}

int fp_head_logits(struct fp_model *m, const float *hidden, size_t n, float *logits)
{
	const struct fp_model_cfg *c = fp_model_config(m);
	struct fp__model_tensors mt;
	struct head h = { .H = c->hidden, .eps = c->rms_eps };
	size_t tok, voc;
	float *xn = NULL, *wbuf = NULL;
	int r = 0;

	fp__model_tensors(m, &mt);
	head_tiles(c, &tok, &voc);
	h.norm = mt.final_norm;
	xn = fp_aligned_array(tok * c->hidden, sizeof(float));
	wbuf = fp__tensor_f32_direct(mt.head) ? NULL : fp_aligned_array(voc * c->hidden, 4);
	if (!xn || (!wbuf && !fp__tensor_f32_direct(mt.head))) {
		r = -ENOMEM;
		goto out;
	}
	h.xn = xn;
	for (size_t t0 = 0; t0 < n; t0 += h.n) {
		h.n = n - t0 < tok ? n - t0 : tok;
		h.hidden = hidden + t0 * c->hidden;
		fp_par_for(h.n, ROW_GRAIN, head_norm_rows, &h);
		for (size_t v0 = 0; v0 < c->vocab; v0 += voc) {
			size_t vc = c->vocab - v0 < voc ? c->vocab - v0 : voc;

			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)h.n, (int)vc,
				    (int)c->hidden, 1.0f, xn, (int)c->hidden,
				    head_weight(&mt, v0, vc, c->hidden, wbuf), (int)c->hidden, 0.0f,
				    logits + t0 * c->vocab + v0, (int)c->vocab);
		}
	}
out:
	free(xn);
	free(wbuf);
	return r;
}
