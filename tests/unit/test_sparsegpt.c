/*
 * SparseGPT solver (sparsegpt.h): the fast path against the naive double reference on random
 * problems, exact counts (k per block, N per M-group), H = identity equals per-block magnitude
 * pruning, dead inputs, the damping retry on a Hessian that is not positive definite, the loss
 * identity, lower reconstruction error than magnitude pruning on correlated inputs, argument
 * checks, and the float64 torch goldens of tests/numeric/gen_sparsegpt.py.
 */
#include "test.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mask.h"
#include "par.h"
#include "parse.h"
#include "safetensors.h"
#include "sparsegpt.h"

static uint64_t rng = 0x5eed5eedULL;

static double urand(void) /* [0, 1) */
{
	return (double)(fp_test_rand(&rng) >> 11) / 9007199254740992.0;
}

static double nrand(void)
{
	double u = urand(), v = urand();

	return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	assert_non_null(p);
	return p;
}

static float *dupf(const float *a, size_t n)
{
	float *b = xmalloc(n * sizeof(float));

	memcpy(b, a, n * sizeof(float));
	return b;
}

static int bit(const uint8_t *mask, size_t i)
{
	return fp_mask_get(mask, i);
}

/* xtx (cols, cols) = Σ_t x[t]ᵀ x[t], accumulated in double. x (T, cols). */
static void xtx_from_x(const float *x, size_t T, size_t cols, float *xtx)
{
	for (size_t i = 0; i < cols; i++)
		for (size_t j = i; j < cols; j++) {
			double s = 0;

			for (size_t t = 0; t < T; t++)
				s += (double)x[t * cols + i] * x[t * cols + j];
			xtx[i * cols + j] = xtx[j * cols + i] = (float)s;
		}
}

/*
 * Correlated inputs x (T, cols): shared factors, an AR(1) chain along the columns and uneven
 * column scales, like LLM activations with outlier features. dead columns are all zero.
 */
static float *make_x(size_t T, size_t cols, double rho)
{
	size_t nf = cols / 8 + 1;
	double *mix = xmalloc(nf * cols * sizeof(double));
	float *x = xmalloc(T * cols * sizeof(float));

	for (size_t i = 0; i < nf * cols; i++)
		mix[i] = nrand();
	for (size_t t = 0; t < T; t++) {
		double f[64], prev = 0;

		for (size_t k = 0; k < nf && k < 64; k++)
			f[k] = nrand();
		for (size_t c = 0; c < cols; c++) {
			double v = 0.3 * nrand();

			for (size_t k = 0; k < nf && k < 64; k++)
				v += f[k] * mix[k * cols + c] / sqrt((double)nf);
			prev = rho * prev + v;
			x[t * cols + c] = (float)(prev * (c % 7 == 0 ? 4.0 : 1.0));
		}
	}
	free(mix);
	return x;
}

static float *make_w(size_t rows, size_t cols)
{
	float *w = xmalloc(rows * cols * sizeof(float));

	for (size_t i = 0; i < rows * cols; i++)
		w[i] = (float)nrand();
	return w;
}

/* ---- fast vs naive reference ----------------------------------------------------------- */

struct cfg {
	size_t rows, cols, T;
	double s;
	unsigned n, m;
	size_t bs;
	double percdamp;
};

static void check_fast_vs_ref(const struct cfg *c)
{
	size_t nw = c->rows * c->cols, mb = fp_sparsegpt_mask_bytes(c->rows, c->cols);
	float *x = make_x(c->T, c->cols, 0.6), *w = make_w(c->rows, c->cols);
	float *xtx = xmalloc(c->cols * c->cols * sizeof(float)), *wf = dupf(w, nw);
	float *wr = dupf(w, nw), *xtx_copy;
	uint8_t *mf = xmalloc(mb), *mr = xmalloc(mb);
	struct fp_sparsegpt_opts o;
	struct fp_sparsegpt_report rf, rr;
	double nmse;

	xtx_from_x(x, c->T, c->cols, xtx);
	xtx_copy = dupf(xtx, c->cols * c->cols);
	fp_sparsegpt_opts_init(&o);
	o.sparsity = c->s;
	o.prune_n = c->n;
	o.prune_m = c->m;
	o.blocksize = c->bs;
	o.percdamp = c->percdamp;
	o.name = "rand";
	assert_int_equal(fp_sparsegpt_prune(wf, c->rows, c->cols, xtx, 7, &o, mf, &rf), 0);
	assert_int_equal(fp_sparsegpt_prune_ref(wr, c->rows, c->cols, xtx, 7, &o, mr, &rr), 0);
	assert_memory_equal(xtx, xtx_copy, c->cols * c->cols * sizeof(float)); /* not modified */
	assert_memory_equal(mf, mr, mb);
	nmse = fp_test_nmse(wf, wr, nw);
	if (nmse > 1e-8)
		print_message("%zux%zu s=%g %u:%u bs=%zu: NMSE %.3g\n", c->rows, c->cols, c->s,
			      c->n, c->m, c->bs, nmse);
	assert_true(nmse <= 1e-8);
	assert_int_equal(rf.pruned, rr.pruned);
	assert_int_equal(rf.retries, rr.retries);
	assert_int_equal(rf.dead, rr.dead);
	assert_true(fabs(rf.loss - rr.loss) <= 1e-4 * rr.loss + 1e-30);
	assert_true(fabs(rf.damp - rr.damp) <= 1e-6 * rr.damp);
	for (size_t i = 0; i < nw; i++) {
		assert_true(isfinite(wf[i]));
		if (bit(mf, i))
			assert_true(wf[i] == 0);
	}
	free(x);
	free(w);
	free(xtx);
	free(xtx_copy);
	free(wf);
	free(wr);
	free(mf);
	free(mr);
}

static void test_fast_vs_ref(void **state)
{
	static const struct cfg cases[] = {
		{ 16, 48, 100, 0.5, 0, 0, 16, 0.01 },	 /* 3 full blocks */
		{ 13, 200, 400, 0.5, 0, 0, 128, 0.01 },	 /* partial last block */
		{ 7, 37, 20, 0.37, 0, 0, 8, 0.01 },	 /* rank-deficient H, odd shapes */
		{ 96, 160, 300, 0.6, 0, 0, 64, 0.01 },	 /* several threads */
		{ 5, 64, 80, 0.9, 0, 0, 128, 0.05 },	 /* one block (blocksize > cols) */
		{ 20, 96, 150, 0.0, 0, 0, 32, 0.01 },	 /* nothing pruned: unchanged */
		{ 20, 96, 150, 1.0, 0, 0, 32, 0.01 },	 /* everything pruned */
		{ 24, 128, 200, 0.0, 2, 4, 128, 0.01 },	 /* 2:4 */
		{ 70, 96, 150, 0.0, 4, 8, 32, 0.01 },	 /* 4:8 with threads */
		{ 9, 72, 50, 0.0, 1, 3, 36, 0.01 },	 /* 1:3 */
		{ 11, 128, 300, 0.0, 8, 16, 64, 0.002 }, /* 8:16 spanning sub-blocks */
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_fast_vs_ref(&cases[i]);
}

/* The row split over threads changes nothing but the order of the loss sum. */
static void test_threads_agree(void **state)
{
	size_t rows = 80, cols = 128, nw = rows * cols, mb = fp_sparsegpt_mask_bytes(rows, cols);
	float *x = make_x(256, cols, 0.5), *w = make_w(rows, cols), *xtx = xmalloc(cols * cols * 4);
	float *w1 = dupf(w, nw), *w2 = dupf(w, nw);
	uint8_t *m1 = xmalloc(mb), *m2 = xmalloc(mb);
	struct fp_sparsegpt_opts o;
	unsigned saved = fp_par_threads();

	(void)state;
	xtx_from_x(x, 256, cols, xtx);
	fp_sparsegpt_opts_init(&o);
	o.blocksize = 64;
	fp_par_set_threads(1);
	assert_int_equal(fp_sparsegpt_prune(w1, rows, cols, xtx, 3, &o, m1, NULL), 0);
	fp_par_set_threads(3);
	assert_int_equal(fp_sparsegpt_prune(w2, rows, cols, xtx, 3, &o, m2, NULL), 0);
	fp_par_set_threads(saved);
	assert_memory_equal(m1, m2, mb);
	assert_true(fp_test_nmse(w1, w2, nw) <= 1e-12);
	free(x);
	free(w);
	free(xtx);
	free(w1);
	free(w2);
	free(m1);
	free(m2);
}

/* ---- exact counts ---------------------------------------------------------------------- */

static void test_exact_k_per_block(void **state)
{
	static const double sp[] = { 0.0, 0.1, 0.25, 0.37, 0.5, 0.7, 0.9, 1.0 };
	size_t rows = 30, cols = 100, bs = 32, nw = rows * cols;
	float *x = make_x(60, cols, 0.7), *w0 = make_w(rows, cols), *xtx = xmalloc(cols * cols * 4);
	uint8_t *mask = xmalloc(fp_sparsegpt_mask_bytes(rows, cols));

	(void)state;
	xtx_from_x(x, 60, cols, xtx);
	/* many exact ties among the weights: quantized values */
	for (size_t i = 0; i < nw; i += 3)
		w0[i] = (float)((int)(w0[i] * 4)) / 4;
	for (size_t t = 0; t < sizeof(sp) / sizeof(sp[0]); t++) {
		float *w = dupf(w0, nw);
		struct fp_sparsegpt_opts o;
		struct fp_sparsegpt_report rep;
		size_t total = 0;

		fp_sparsegpt_opts_init(&o);
		o.sparsity = sp[t];
		o.blocksize = bs;
		assert_int_equal(fp_sparsegpt_prune(w, rows, cols, xtx, 1, &o, mask, &rep), 0);
		for (size_t i1 = 0; i1 < cols; i1 += bs) {
			size_t cnt = cols - i1 < bs ? cols - i1 : bs, got = 0;
			size_t k = (size_t)floor((double)(rows * cnt) * sp[t]);

			for (size_t r = 0; r < rows; r++)
				for (size_t c = i1; c < i1 + cnt; c++)
					got += bit(mask, r * cols + c);
			assert_int_equal(got, k);
			total += k;
		}
		assert_int_equal(rep.pruned, total);
		assert_int_equal(fp_mask_count(mask, nw), total);
		free(w);
	}
	free(x);
	free(w0);
	free(xtx);
	free(mask);
}

static void test_exact_nm(void **state)
{
	static const unsigned nm[][2] = { { 2, 4 }, { 4, 8 }, { 1, 4 }, { 3, 4 } };
	size_t rows = 40, cols = 64, nw = rows * cols;
	float *x = make_x(128, cols, 0.7), *w0 = make_w(rows, cols),
	      *xtx = xmalloc(cols * cols * 4);
	uint8_t *mask = xmalloc(fp_sparsegpt_mask_bytes(rows, cols));

	(void)state;
	xtx_from_x(x, 128, cols, xtx);
	for (size_t t = 0; t < sizeof(nm) / sizeof(nm[0]); t++) {
		float *w = dupf(w0, nw);
		struct fp_sparsegpt_opts o;
		struct fp_sparsegpt_report rep;

		fp_sparsegpt_opts_init(&o);
		o.prune_n = nm[t][0];
		o.prune_m = nm[t][1];
		o.blocksize = 32;
		assert_int_equal(fp_sparsegpt_prune(w, rows, cols, xtx, 2, &o, mask, &rep), 0);
		for (size_t r = 0; r < rows; r++)
			for (size_t g = 0; g < cols; g += nm[t][1]) {
				unsigned got = 0;

				for (size_t c = g; c < g + nm[t][1]; c++) {
					got += (unsigned)bit(mask, r * cols + c);
					if (bit(mask, r * cols + c))
						assert_true(w[r * cols + c] == 0);
				}
				assert_int_equal(got, nm[t][0]);
			}
		assert_int_equal(rep.pruned, nw / nm[t][1] * nm[t][0]);
		assert_int_equal(fp_mask_check_nm(mask, rows, cols, nm[t][0], nm[t][1]), 0);
		assert_int_equal(fp_mask_count(mask, nw), rep.pruned);
		free(w);
	}
	free(x);
	free(w0);
	free(xtx);
	free(mask);
}

/* ---- H = identity: per-block magnitude pruning ----------------------------------------- */

struct mag {
	float a;
	size_t i;
};

static int cmp_mag(const void *pa, const void *pb)
{
	const struct mag *x = pa, *y = pb;

	if (x->a != y->a)
		return x->a < y->a ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

/*
 * Per-block magnitude pruning with the same budget: in each block of bs columns, the
 * floor(rows · cnt · s) smallest |w| (ties: lower row-major index inside the block) are set
 * to 0 and marked in pm (rows · cols bytes).
 */
static void magnitude_blocks(float *w, size_t rows, size_t cols, size_t bs, double s, uint8_t *pm)
{
	struct mag *v = xmalloc(rows * bs * sizeof(*v));

	memset(pm, 0, rows * cols);
	for (size_t i1 = 0; i1 < cols; i1 += bs) {
		size_t cnt = cols - i1 < bs ? cols - i1 : bs, ne = rows * cnt;
		size_t k = (size_t)floor((double)ne * s);

		for (size_t e = 0; e < ne; e++) {
			v[e].a = fabsf(w[(e / cnt) * cols + i1 + e % cnt]);
			v[e].i = e;
		}
		qsort(v, ne, sizeof(*v), cmp_mag);
		for (size_t e = 0; e < k; e++) {
			size_t at = (v[e].i / cnt) * cols + i1 + v[e].i % cnt;

			pm[at] = 1;
			w[at] = 0;
		}
	}
	free(v);
}

static void test_identity_is_magnitude(void **state)
{
	size_t rows = 24, cols = 70, bs = 32, nw = rows * cols;
	uint64_t nseq = 6;
	float *xtx = calloc(cols * cols, sizeof(float)), *w0 = xmalloc(nw * sizeof(float));
	uint8_t *mask = xmalloc(fp_sparsegpt_mask_bytes(rows, cols)), *pm = xmalloc(nw);

	(void)state;
	assert_non_null(xtx);
	for (size_t i = 0; i < cols; i++)
		xtx[i * cols + i] = (float)nseq * 2.0f; /* H = (2 / nseq) · xtx = 4 I */
	/* quantized weights: lots of exact |w| ties to exercise the lower-index rule */
	for (size_t i = 0; i < nw; i++)
		w0[i] = (float)((int)(fp_test_rand(&rng) % 41) - 20) / 16;
	for (int fast = 0; fast <= 1; fast++) {
		static const double sp[] = { 0.3, 0.5, 0.77 };

		for (size_t t = 0; t < 3; t++) {
			float *w = dupf(w0, nw), *wm = dupf(w0, nw);
			struct fp_sparsegpt_opts o;
			struct fp_sparsegpt_report rep;

			fp_sparsegpt_opts_init(&o);
			o.sparsity = sp[t];
			o.blocksize = bs;
			assert_int_equal((fast ? fp_sparsegpt_prune : fp_sparsegpt_prune_ref)(
						 w, rows, cols, xtx, nseq, &o, mask, &rep),
					 0);
			magnitude_blocks(wm, rows, cols, bs, sp[t], pm);
			for (size_t i = 0; i < nw; i++)
				assert_int_equal(bit(mask, i), pm[i]);
			/* no off-diagonal coupling: kept weights are untouched, bit for bit */
			assert_memory_equal(w, wm, nw * sizeof(float));
			assert_true(fabs(rep.damp - 0.04) < 1e-6);
			assert_int_equal(rep.retries, 0);
			free(w);
			free(wm);
		}
	}
	/* N:M: the N smallest |w| of each group, lower column first on ties */
	for (int fast = 0; fast <= 1; fast++) {
		static const unsigned nm[][2] = { { 2, 4 }, { 4, 8 }, { 3, 5 } };

		for (size_t t = 0; t < 3; t++) {
			unsigned n = nm[t][0], m = nm[t][1];
			size_t c2 = cols / m * m, nw2 = rows * c2;
			float *w = xmalloc(nw2 * sizeof(float));
			float *xtx2 = calloc(c2 * c2, sizeof(float));
			struct fp_sparsegpt_opts o;

			assert_non_null(xtx2);
			for (size_t i = 0; i < c2; i++)
				xtx2[i * c2 + i] = 3;
			for (size_t i = 0; i < nw2; i++)
				w[i] = w0[i];
			fp_sparsegpt_opts_init(&o);
			o.prune_n = n;
			o.prune_m = m;
			o.blocksize = 8 * m;
			assert_int_equal((fast ? fp_sparsegpt_prune : fp_sparsegpt_prune_ref)(
						 w, rows, c2, xtx2, 1, &o, mask, NULL),
					 0);
			for (size_t g = 0; g < nw2; g += m) {
				struct mag v[8];

				for (size_t q = 0; q < m; q++) {
					v[q].a = fabsf(w0[g + q]);
					v[q].i = q;
				}
				qsort(v, m, sizeof(v[0]), cmp_mag);
				for (size_t q = 0; q < m; q++) {
					size_t at = g + v[q].i;

					assert_int_equal(bit(mask, at), q < n);
					assert_true(w[at] == (q < n ? 0.0f : w0[at]));
				}
			}
			free(w);
			free(xtx2);
		}
	}
	free(xtx);
	free(w0);
	free(mask);
	free(pm);
}

/* ---- dead inputs ----------------------------------------------------------------------- */

static void test_dead_columns(void **state)
{
	static const size_t dead[] = { 0, 5, 6, 31, 47 };
	size_t rows = 12, cols = 48, T = 90, nw = rows * cols, nd = 5;
	float *x = make_x(T, cols, 0.5), *w = make_w(rows, cols), *xtx = xmalloc(cols * cols * 4);
	uint8_t *mask = xmalloc(fp_sparsegpt_mask_bytes(rows, cols));

	(void)state;
	for (size_t t = 0; t < T; t++)
		for (size_t d = 0; d < nd; d++)
			x[t * cols + dead[d]] = 0;
	xtx_from_x(x, T, cols, xtx);
	for (int nmode = 0; nmode <= 1; nmode++) {
		for (int fast = 0; fast <= 1; fast++) {
			float *wc = dupf(w, nw);
			struct fp_sparsegpt_opts o;
			struct fp_sparsegpt_report rep;

			fp_sparsegpt_opts_init(&o);
			o.blocksize = 16;
			o.sparsity = 0.25;
			if (nmode) {
				o.prune_n = 2;
				o.prune_m = 4;
			}
			assert_int_equal((fast ? fp_sparsegpt_prune : fp_sparsegpt_prune_ref)(
						 wc, rows, cols, xtx, 3, &o, mask, &rep),
					 0);
			assert_int_equal(rep.dead, nd);
			for (size_t i = 0; i < nw; i++)
				assert_true(isfinite(wc[i]));
			for (size_t r = 0; r < rows; r++)
				for (size_t d = 0; d < nd; d++) {
					size_t at = r * cols + dead[d];

					assert_true(wc[at] == 0);
					/* a dead weight scores 0: unstructured picks them first */
					if (!nmode)
						assert_int_equal(bit(mask, at), 1);
				}
			free(wc);
		}
	}
	free(x);
	free(w);
	free(xtx);
	free(mask);
}

/* ---- Hessians that are not positive definite ------------------------------------------- */

/* Raw xtx (cols, cols) for nseq = 2 (scale 1): identity plus a 2x2 coupling at (p, p + 1). */
static float *coupled_identity(size_t cols, size_t p, float off)
{
	float *xtx = calloc(cols * cols, sizeof(float));

	assert_non_null(xtx);
	for (size_t i = 0; i < cols; i++)
		xtx[i * cols + i] = 1;
	xtx[p * cols + p + 1] = xtx[(p + 1) * cols + p] = off;
	return xtx;
}

static void test_retry_negative_eigenvalue(void **state)
{
	size_t rows = 6, cols = 20, nw = rows * cols;
	/* eigenvalue 1 - 1.05 = -0.05: 1 % damping (+0.01) is not enough, 10 % (+0.1) is */
	float *xtx = coupled_identity(cols, 9, 1.05f), *w = make_w(rows, cols);
	uint8_t *mask = xmalloc(fp_sparsegpt_mask_bytes(rows, cols));

	(void)state;
	for (int fast = 0; fast <= 1; fast++) {
		float *wc = dupf(w, nw);
		struct fp_sparsegpt_opts o;
		struct fp_sparsegpt_report rep;

		fp_sparsegpt_opts_init(&o);
		o.blocksize = 8;
		assert_int_equal((fast ? fp_sparsegpt_prune : fp_sparsegpt_prune_ref)(
					 wc, rows, cols, xtx, 2, &o, mask, &rep),
				 0);
		assert_int_equal(rep.retries, 1);
		assert_true(fabs(rep.percdamp - 0.1) < 1e-12);
		assert_true(fabs(rep.damp - 0.1) < 1e-6);
		assert_int_equal(rep.pruned, nw / 2);
		for (size_t i = 0; i < nw; i++)
			assert_true(isfinite(wc[i]));
		free(wc);
	}
	free(xtx);
	free(w);
	free(mask);
}

static void test_retry_singular_zero_damping(void **state)
{
	size_t rows = 5, cols = 12, nw = rows * cols;
	float *xtx = coupled_identity(cols, 4, 1.0f),
	      *w = make_w(rows, cols); /* exactly singular */
	uint8_t *mask = xmalloc(fp_sparsegpt_mask_bytes(rows, cols));

	(void)state;
	for (int fast = 0; fast <= 1; fast++) {
		float *wc = dupf(w, nw);
		struct fp_sparsegpt_opts o;
		struct fp_sparsegpt_report rep;

		fp_sparsegpt_opts_init(&o);
		o.percdamp = 0;
		assert_int_equal((fast ? fp_sparsegpt_prune : fp_sparsegpt_prune_ref)(
					 wc, rows, cols, xtx, 2, &o, mask, &rep),
				 0);
		assert_int_equal(rep.retries, 1);
		assert_true(rep.percdamp == FP_SPARSEGPT_PERCDAMP);
		for (size_t i = 0; i < nw; i++)
			assert_true(isfinite(wc[i]));
		free(wc);
	}
	free(xtx);
	free(w);
	free(mask);
}

static void test_hopeless_hessian(void **state)
{
	size_t rows = 4, cols = 10, nw = rows * cols, mb = fp_sparsegpt_mask_bytes(rows, cols);
	float *xtx = coupled_identity(cols, 2, 1e6f), *w = make_w(rows, cols);
	uint8_t *mask = xmalloc(mb), *mask0 = xmalloc(mb);

	(void)state;
	memset(mask0, 0xa5, mb);
	for (int fast = 0; fast <= 1; fast++) {
		for (unsigned retries = 0; retries <= FP_SPARSEGPT_RETRIES; retries += 3) {
			float *wc = dupf(w, nw);
			struct fp_sparsegpt_opts o;
			struct fp_sparsegpt_report rep = { .retries = 77 };

			fp_sparsegpt_opts_init(&o);
			o.max_retries = retries;
			o.name = "layers.3.mlp.up_proj";
			memcpy(mask, mask0, mb);
			fp_err_clear();
			assert_int_equal((fast ? fp_sparsegpt_prune : fp_sparsegpt_prune_ref)(
						 wc, rows, cols, xtx, 2, &o, mask, &rep),
					 -EDOM);
			assert_non_null(strstr(fp_err_last(), "layers.3.mlp.up_proj"));
			assert_non_null(strstr(fp_err_last(), "not positive definite"));
			/* nothing touched */
			assert_memory_equal(wc, w, nw * sizeof(float));
			assert_memory_equal(mask, mask0, mb);
			assert_int_equal(rep.retries, 77);
			free(wc);
		}
	}
	free(xtx);
	free(w);
	free(mask);
	free(mask0);
}

/* ---- the point of SparseGPT: lower reconstruction error -------------------------------- */

/* Σ over rows and tokens of (x · (a - b)ᵀ)², a, b (rows, cols), x (T, cols). */
static double recon_err(const float *a, const float *b, const float *x, size_t rows, size_t cols,
			size_t T)
{
	double tot = 0;

	for (size_t r = 0; r < rows; r++)
		for (size_t t = 0; t < T; t++) {
			double s = 0;

			for (size_t c = 0; c < cols; c++)
				s += ((double)a[r * cols + c] - b[r * cols + c]) * x[t * cols + c];
			tot += s * s;
		}
	return tot;
}

static void test_beats_magnitude_and_loss_identity(void **state)
{
	size_t rows = 32, cols = 96, T = 400, nw = rows * cols, bs = 32;
	uint64_t nseq = 5;
	float *x = make_x(T, cols, 0.8), *w = make_w(rows, cols), *xtx = xmalloc(cols * cols * 4);
	uint8_t *mask = xmalloc(fp_sparsegpt_mask_bytes(rows, cols)), *pm = xmalloc(nw);

	(void)state;
	xtx_from_x(x, T, cols, xtx);
	for (int nmode = 0; nmode <= 1; nmode++) {
		float *ws = dupf(w, nw), *wm = dupf(w, nw);
		struct fp_sparsegpt_opts o;
		struct fp_sparsegpt_report rep;
		double es, em, quad = 0;

		fp_sparsegpt_opts_init(&o);
		o.blocksize = bs;
		if (nmode) {
			o.prune_n = 2;
			o.prune_m = 4;
		}
		assert_int_equal(fp_sparsegpt_prune(ws, rows, cols, xtx, nseq, &o, mask, &rep), 0);
		if (nmode) { /* magnitude 2:4: the 2 smallest |w| of each group */
			for (size_t g = 0; g < nw; g += 4) {
				struct mag v[4];

				for (size_t t = 0; t < 4; t++) {
					v[t].a = fabsf(wm[g + t]);
					v[t].i = t;
				}
				qsort(v, 4, sizeof(v[0]), cmp_mag);
				wm[g + v[0].i] = wm[g + v[1].i] = 0;
			}
		} else {
			magnitude_blocks(wm, rows, cols, bs, 0.5, pm);
		}
		es = recon_err(w, ws, x, rows, cols, T);
		em = recon_err(w, wm, x, rows, cols, T);
		print_message(
			"%s: reconstruction error SparseGPT %.4g, magnitude %.4g (ratio %.3f)\n",
			nmode ? "2:4" : "50%", es, em, es / em);
		assert_true(es < 0.5 * em);

		/* loss = ½ Σ_r Δw (H + damp I) Δwᵀ, H = (2 / nseq) xtx */
		for (size_t r = 0; r < rows; r++) {
			const float *a = w + r * cols, *b = ws + r * cols;

			for (size_t i = 0; i < cols; i++)
				for (size_t j = 0; j < cols; j++) {
					double h = 2.0 / (double)nseq * xtx[i * cols + j];

					if (i == j)
						h += rep.damp;
					quad += ((double)a[i] - b[i]) * h * ((double)a[j] - b[j]);
				}
		}
		quad /= 2;
		assert_true(fabs(rep.loss - quad) <= 1e-3 * quad);
		free(ws);
		free(wm);
	}
	free(x);
	free(w);
	free(xtx);
	free(mask);
	free(pm);
}

/* ---- argument checks ------------------------------------------------------------------- */

static void test_bad_args(void **state)
{
	size_t rows = 4, cols = 8, nw = rows * cols;
	float *xtx = coupled_identity(cols, 0, 0.5f), *w = make_w(rows, cols), *wc;
	struct fp_sparsegpt_opts o;

	(void)state;
	wc = dupf(w, nw);
	assert_int_equal(fp_sparsegpt_mask_bytes(3, 3), 2);
	assert_int_equal(fp_sparsegpt_mask_bytes(8, 1), 1);
	assert_int_equal(fp_sparsegpt_mask_bytes(SIZE_MAX / 2, 4), 0);
	fp_sparsegpt_opts_init(&o);
	o.name = "blk0.q";
	assert_int_equal(fp_sparsegpt_prune(NULL, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, NULL, 1, &o, NULL, NULL), -EINVAL);
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(fp_sparsegpt_prune(wc, 0, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	assert_int_equal(fp_sparsegpt_prune(wc, rows, 0, xtx, 1, &o, NULL, NULL), -EINVAL);
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 0, &o, NULL, NULL), -EINVAL);
	assert_int_equal(fp_sparsegpt_prune(wc, SIZE_MAX / 2, cols, xtx, 1, &o, NULL, NULL),
			 -EOVERFLOW);
	o.sparsity = 1.01;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	o.sparsity = NAN;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	o.sparsity = 0.5;
	o.blocksize = 0;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	o.blocksize = 128;
	o.percdamp = -0.01;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	o.percdamp = INFINITY;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	o.percdamp = 0.01;
	o.max_retries = FP_SPARSEGPT_MAX_RETRIES + 1;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	o.max_retries = 2;
	o.prune_n = 3; /* 3:2 */
	o.prune_m = 2;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	o.prune_n = 2;
	o.prune_m = 0;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	o.prune_m = 128;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	o.prune_m = 3; /* cols 8 not a multiple of 3 */
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	o.prune_m = 4;
	o.blocksize = 6; /* blocksize not a multiple of 4 */
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "blk0.q"));
	o.blocksize = 8;
	o.prune_n = o.prune_m = 0;
	wc[2 * cols + 5] = NAN;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "blk0.q: weight [2, 5]"));
	assert_int_equal(fp_sparsegpt_prune_ref(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	wc[2 * cols + 5] = 1;
	xtx[1 * cols + 6] = INFINITY;
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "blk0.q: xtx [1, 6]"));
	xtx[1 * cols + 6] = 0;
	/* after all the refusals a valid call works, without a mask or a report */
	assert_int_equal(fp_sparsegpt_prune(wc, rows, cols, xtx, 1, &o, NULL, NULL), 0);
	free(xtx);
	free(w);
	free(wc);
}

/* ---- float64 torch goldens ------------------------------------------------------------- */

static const char *const goldens[] = {
	"u16x48_bs16", "u12x256_bs128", "nm2of4_16x64_bs32", "nm4of8_12x128_bs64", "dead_8x40_bs16",
};

static const struct fp_st_tensor *need(const struct fp_st_file *f, const char *name,
				       enum fp_dtype dt, uint64_t d0, uint64_t d1)
{
	const struct fp_st_tensor *t = fp_st_find(f, name);

	assert_non_null(t);
	assert_int_equal(t->dtype, dt);
	assert_int_equal(t->ndim, 2);
	if (d0)
		assert_int_equal(t->shape[0], d0);
	assert_int_equal(t->shape[1], d1);
	return t;
}

static double meta_num(const struct fp_st_file *f, const char *key)
{
	const char *s = fp_st_metadata(f, key);
	double v;

	assert_non_null(s);
	assert_int_equal(fp_parse_double(s, -1e300, 1e300, &v), 0);
	return v;
}

static void test_golden(void **state)
{
	size_t bits = 0, bits_diff = 0;

	(void)state;
	for (size_t g = 0; g < sizeof(goldens) / sizeof(goldens[0]); g++) {
		char rel[128];
		char *path;
		struct fp_st_file *f = NULL;
		const struct fp_st_tensor *tw, *tx, *two, *tm;
		size_t rows, cols, T, nw;
		float *w, *wexp, *x, *xtx;
		uint8_t *mexp, *mask;
		struct fp_sparsegpt_opts o;

		snprintf(rel, sizeof(rel), "sparsegpt/%s.safetensors", goldens[g]);
		path = fp_test_data_path(rel);
		assert_int_equal(fp_st_open(path, &f), 0);
		tw = fp_st_find(f, "W");
		assert_non_null(tw);
		rows = tw->shape[0];
		cols = tw->shape[1];
		nw = rows * cols;
		tw = need(f, "W", FP_DT_F32, rows, cols);
		two = need(f, "W_out", FP_DT_F32, rows, cols);
		tm = need(f, "mask", FP_DT_U8, rows, cols);
		tx = need(f, "X", FP_DT_I8, 0, cols);
		T = tx->shape[0];
		w = xmalloc(nw * sizeof(float));
		wexp = xmalloc(nw * sizeof(float));
		mexp = xmalloc(nw);
		x = xmalloc(T * cols * sizeof(float));
		xtx = xmalloc(cols * cols * sizeof(float));
		mask = xmalloc(fp_sparsegpt_mask_bytes(rows, cols));
		memcpy(w, tw->data, nw * sizeof(float));
		memcpy(wexp, two->data, nw * sizeof(float));
		memcpy(mexp, tm->data, nw);
		for (size_t i = 0; i < T * cols; i++)
			x[i] = (float)((const int8_t *)tx->data)[i];
		xtx_from_x(x, T, cols, xtx); /* integer sums below 2^24: exact */

		fp_sparsegpt_opts_init(&o);
		o.sparsity = meta_num(f, "sparsity");
		o.prune_n = (unsigned)meta_num(f, "prune_n");
		o.prune_m = (unsigned)meta_num(f, "prune_m");
		o.blocksize = (size_t)meta_num(f, "blocksize");
		o.percdamp = meta_num(f, "percdamp");
		o.name = goldens[g];
		for (int fast = 0; fast <= 1; fast++) {
			float *wc = dupf(w, nw);
			struct fp_sparsegpt_report rep;
			size_t diff = 0, nexp = 0;
			double nmse, loss = meta_num(f, "loss");

			assert_int_equal((fast ? fp_sparsegpt_prune : fp_sparsegpt_prune_ref)(
						 wc, rows, cols, xtx, (uint64_t)meta_num(f, "nseq"),
						 &o, mask, &rep),
					 0);
			for (size_t i = 0; i < nw; i++) {
				diff += (unsigned)bit(mask, i) != mexp[i];
				nexp += mexp[i];
			}
			nmse = fp_test_nmse(wc, wexp, nw);
			print_message("golden %s (%s): %zu/%zu mask bits differ, NMSE %.3g, loss "
				      "%.8g vs %.8g\n",
				      goldens[g], fast ? "fast" : "ref", diff, nw, nmse, rep.loss,
				      loss);
			assert_true((double)diff <= 0.001 * (double)nw);
			assert_true(nmse <= 1e-6);
			assert_int_equal(rep.pruned, nexp); /* exact counts never depend on ties */
			assert_int_equal(rep.dead, (size_t)meta_num(f, "dead"));
			assert_true(fabs(rep.loss - loss) <= 1e-4 * loss);
			assert_true(fabs(rep.damp - meta_num(f, "damp")) <=
				    1e-5 * meta_num(f, "damp"));
			bits += nw;
			bits_diff += diff;
			free(wc);
		}
		fp_st_close(f);
		free(path);
		free(w);
		free(wexp);
		free(mexp);
		free(x);
		free(xtx);
		free(mask);
	}
	print_message("golden total: %zu of %zu mask bits differ (%.4f %% equal)\n", bits_diff,
		      bits, 100.0 * (double)(bits - bits_diff) / (double)bits);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fast_vs_ref),
		cmocka_unit_test(test_threads_agree),
		cmocka_unit_test(test_exact_k_per_block),
		cmocka_unit_test(test_exact_nm),
		cmocka_unit_test(test_identity_is_magnitude),
		cmocka_unit_test(test_dead_columns),
		cmocka_unit_test(test_retry_negative_eigenvalue),
		cmocka_unit_test(test_retry_singular_zero_damping),
		cmocka_unit_test(test_hopeless_hessian),
		cmocka_unit_test(test_beats_magnitude_and_loss_identity),
		cmocka_unit_test(test_bad_args),
		cmocka_unit_test(test_golden),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
