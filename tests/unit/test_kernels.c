/*
 * Fast kernels (kernels.h) against their naive double-precision references on random odd
 * shapes, by NMSE; strided layouts check that columns outside a kernel's view stay untouched.
 * Also the parallel-for (every item exactly once, any thread count) and RoPE frequencies.
 */
#include "test.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "model.h"
#include "par.h"

#define TOL 1e-10 /* f32 kernels vs double references: errors near 1e-7 relative */

static uint64_t rng = 0x1234567;

static float rnd(void)
{
	return (float)((double)(fp_test_rand(&rng) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float *rnd_array(size_t n, float scale)
{
	float *a = malloc((n ? n : 1) * sizeof(float));

	assert_non_null(a);
	for (size_t i = 0; i < n; i++)
		a[i] = rnd() * scale;
	return a;
}

static float *dup_array(const float *a, size_t n)
{
	float *b = malloc((n ? n : 1) * sizeof(float));

	assert_non_null(b);
	memcpy(b, a, n * sizeof(float));
	return b;
}

static void test_linear(void **state)
{
	static const size_t shapes[][3] = {
		{ 1, 1, 1 }, { 37, 29, 53 }, { 3, 301, 5 }, { 129, 64, 17 }
	};

	(void)state;
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
		size_t n = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
		float *x = rnd_array(n * in, 1), *w = rnd_array(out * in, 1);

		for (int beta = 0; beta <= 1; beta++) {
			float *y = rnd_array(n * out, 1), *yr = dup_array(y, n * out);

			fp_k_linear(y, x, w, n, in, out, (float)beta);
			fp_k_linear_ref(yr, x, w, n, in, out, (float)beta);
			assert_true(fp_test_nmse(y, yr, n * out) < TOL);
			free(y);
			free(yr);
		}
		free(x);
		free(w);
	}
}

static void test_linear_known(void **state)
{
	/* y = x · Wᵀ by hand: x = [1 2], W = [[1 0], [0 1], [1 1]] -> [1 2 3] */
	const float x[2] = { 1, 2 }, w[6] = { 1, 0, 0, 1, 1, 1 };
	float y[3] = { 10, 10, 10 };

	(void)state;
	fp_k_linear(y, x, w, 1, 2, 3, 0);
	assert_true(y[0] == 1 && y[1] == 2 && y[2] == 3);
	fp_k_linear(y, x, w, 1, 2, 3, 1);
	assert_true(y[0] == 2 && y[1] == 4 && y[2] == 6);
}

static void test_rmsnorm(void **state)
{
	size_t n = 13, dim = 67;
	float *x = rnd_array(n * dim, 3), *w = rnd_array(dim, 1);
	float *y = rnd_array(n * dim, 1), *yr = rnd_array(n * dim, 1);
	float one = 1, x1[1] = { 2 };

	(void)state;
	fp_k_rmsnorm(y, x, w, n, dim, 1e-5);
	fp_k_rmsnorm_ref(yr, x, w, n, dim, 1e-5);
	assert_true(fp_test_nmse(y, yr, n * dim) < TOL);
	/* in place */
	fp_k_rmsnorm(x, x, w, n, dim, 1e-5);
	assert_true(fp_test_nmse(x, yr, n * dim) < TOL);
	/* one element: x / sqrt(x² + eps) */
	fp_k_rmsnorm(x1, x1, &one, 1, 1, 0);
	assert_true(fabsf(x1[0] - 1.0f) < 1e-7f);
	free(x);
	free(w);
	free(y);
	free(yr);
}

static void test_rope(void **state)
{
	size_t n = 11, nh = 3, hd = 10, half = hd / 2, ld = nh * hd + 7, pos0 = 5;
	size_t npos = pos0 + n;
	double inv[5];
	float *cs = malloc(npos * half * sizeof(float)), *sn = malloc(npos * half * sizeof(float));
	float *x = rnd_array(n * ld, 1), *xr = dup_array(x, n * ld), *orig = dup_array(x, n * ld);

	(void)state;
	for (size_t j = 0; j < half; j++)
		inv[j] = pow(10000.0, -2.0 * (double)j / (double)hd);
	for (size_t p = 0; p < npos; p++)
		for (size_t j = 0; j < half; j++) {
			cs[p * half + j] = (float)cos((double)p * inv[j]);
			sn[p * half + j] = (float)sin((double)p * inv[j]);
		}
	fp_k_rope(x, ld, n, nh, hd, pos0, cs, sn);
	fp_k_rope_ref(xr, ld, n, nh, hd, pos0, inv);
	assert_true(fp_test_nmse(x, xr, n * ld) < TOL);
	for (size_t t = 0; t < n; t++) {
		/* padding columns untouched; rotation keeps each pair's norm */
		for (size_t c = nh * hd; c < ld; c++)
			assert_true(x[t * ld + c] == orig[t * ld + c]);
		for (size_t h = 0; h < nh; h++)
			for (size_t j = 0; j < half; j++) {
				const float *a = x + t * ld + h * hd, *o = orig + t * ld + h * hd;
				double r0 = (double)o[j] * o[j] + (double)o[j + half] * o[j + half];
				double r1 = (double)a[j] * a[j] + (double)a[j + half] * a[j + half];

				assert_true(fabs(r0 - r1) < 1e-5);
			}
	}
	/* position 0 is the identity */
	memcpy(x, orig, n * ld * sizeof(float));
	fp_k_rope(x, ld, 1, nh, hd, 0, cs, sn);
	assert_memory_equal(x, orig, nh * hd * sizeof(float));
	free(cs);
	free(sn);
	free(x);
	free(xr);
	free(orig);
}

static void test_softmax(void **state)
{
	static const size_t sizes[] = { 1, 7, 1001 };

	(void)state;
	for (size_t s = 0; s < 3; s++) {
		size_t n = sizes[s];
		float *x = rnd_array(n, 40), *xr = dup_array(x, n);
		double sum = 0;

		fp_k_softmax(x, n);
		fp_k_softmax_ref(xr, n);
		assert_true(fp_test_nmse(x, xr, n) < TOL);
		for (size_t i = 0; i < n; i++)
			sum += x[i];
		assert_true(fabs(sum - 1) < 1e-5);
		free(x);
		free(xr);
	}
}

static void test_silu_mul(void **state)
{
	size_t n = 9, dim = 41, ldgu = 2 * dim + 3, ldh = dim + 2;
	float *gu = rnd_array(n * ldgu, 8), *h = rnd_array(n * ldh, 1);
	float *hr = dup_array(h, n * ldh), *h0 = dup_array(h, n * ldh);

	(void)state;
	fp_k_silu_mul(h, ldh, gu, gu + dim, ldgu, n, dim);
	fp_k_silu_mul_ref(hr, ldh, gu, gu + dim, ldgu, n, dim);
	assert_true(fp_test_nmse(h, hr, n * ldh) < TOL);
	for (size_t t = 0; t < n; t++)
		for (size_t c = dim; c < ldh; c++)
			assert_true(h[t * ldh + c] == h0[t * ldh + c]);
	free(gu);
	free(h);
	free(hr);
	free(h0);
}

static void check_attention(size_t T, size_t hd, size_t window)
{
	size_t ldq = 2 * hd + 1, ldkv = 3 * hd + 5, ldo = hd + 3;
	float *q = rnd_array(T * ldq, 2), *kv = rnd_array(T * ldkv, 2);
	float *o = rnd_array(T * ldo, 1), *orf = dup_array(o, T * ldo), *o0 = dup_array(o, T * ldo);
	float *scratch = malloc(FP_ATTN_TILE * T * sizeof(float));
	float scale = (float)(1 / sqrt((double)hd));

	assert_non_null(scratch);
	fp_k_attention(o, ldo, q + 1, ldq, kv + 2, kv + 2 + hd, ldkv, T, hd, window, scale,
		       scratch);
	fp_k_attention_ref(orf, ldo, q + 1, ldq, kv + 2, kv + 2 + hd, ldkv, T, hd, window, scale);
	assert_true(fp_test_nmse(o, orf, T * ldo) < TOL);
	for (size_t t = 0; t < T; t++)
		for (size_t c = hd; c < ldo; c++)
			assert_true(o[t * ldo + c] == o0[t * ldo + c]);
	/* query 0 sees only key 0: its output is v[0] */
	for (size_t j = 0; j < hd; j++)
		assert_true(fabsf(o[j] - kv[2 + hd + j]) < 1e-6f);
	/* window 1: every query sees only itself */
	if (window == 1)
		for (size_t t = 0; t < T; t++)
			for (size_t j = 0; j < hd; j++)
				assert_true(fabsf(o[t * ldo + j] - kv[t * ldkv + 2 + hd + j]) <
					    1e-6f);
	free(q);
	free(kv);
	free(o);
	free(orf);
	free(o0);
	free(scratch);
}

static void test_attention(void **state)
{
	static const size_t Ts[] = { 1, 5, 128, 130, 300 };
	static const size_t hds[] = { 8, 13 };
	static const size_t windows[] = { 0, 1, 7, 129 };

	(void)state;
	for (size_t a = 0; a < 5; a++)
		for (size_t b = 0; b < 2; b++)
			for (size_t c = 0; c < 4; c++)
				check_attention(Ts[a], hds[b], windows[c]);
}

struct visit {
	atomic_int *count;
	atomic_int bad_tid;
};

static void visit_fn(void *p, size_t b, size_t e, unsigned tid)
{
	struct visit *v = p;

	if (tid >= fp_par_threads())
		atomic_fetch_add(&v->bad_tid, 1);
	for (size_t i = b; i < e; i++)
		atomic_fetch_add(&v->count[i], 1);
}

static void test_par(void **state)
{
	static const unsigned threads[] = { 1, 2, 3, 7 };
	static const size_t sizes[] = { 0, 1, 5, 1000 };
	atomic_int count[1000];
	unsigned saved = fp_par_threads();

	(void)state;
	for (size_t t = 0; t < 4; t++) {
		fp_par_set_threads(threads[t]);
		for (size_t s = 0; s < 4; s++) {
			for (int dyn = 0; dyn <= 1; dyn++) {
				struct visit v = { .count = count };

				atomic_init(&v.bad_tid, 0);
				for (size_t i = 0; i < 1000; i++)
					atomic_init(&count[i], 0);
				if (dyn)
					fp_par_dyn(sizes[s], visit_fn, &v);
				else
					fp_par_for(sizes[s], 3, visit_fn, &v);
				for (size_t i = 0; i < 1000; i++)
					assert_int_equal(atomic_load(&count[i]), i < sizes[s]);
				assert_int_equal(atomic_load(&v.bad_tid), 0);
			}
		}
	}
	fp_par_set_threads(saved);
	/* BLAS knob round trip */
	int b = fp_blas_single_begin();

	assert_int_equal(fp_blas_threads(), 1);
	fp_blas_single_end(b);
	assert_int_equal(fp_blas_threads(), b);
}

static void test_inv_freq(void **state)
{
	struct fp_model_cfg c = { .head_dim = 16, .rope_theta = 10000 };
	double inv[8], base[8];
	const double pi = 3.14159265358979323846;
	int kept = 0, scaled = 0, smooth = 0;

	(void)state;
	c.rope.kind = FP_ROPE_DEFAULT;
	fp_rope_inv_freq(&c, base);
	for (int j = 0; j < 8; j++)
		assert_true(fabs(base[j] - 1 / pow(10000.0, 2.0 * j / 16)) < 1e-15 * (1 + base[j]));
	c.rope.kind = FP_ROPE_LINEAR;
	c.rope.factor = 4;
	fp_rope_inv_freq(&c, inv);
	for (int j = 0; j < 8; j++)
		assert_true(fabs(inv[j] - base[j] / 4) < 1e-15);
	c.rope.kind = FP_ROPE_LLAMA3;
	c.rope.factor = 8;
	c.rope.low_freq_factor = 1;
	c.rope.high_freq_factor = 4;
	c.rope.orig_max_pos = 128;
	fp_rope_inv_freq(&c, inv);
	for (int j = 0; j < 8; j++) {
		double wl = 2 * pi / base[j];

		if (wl < 128 / 4.0) {
			assert_true(inv[j] == base[j]);
			kept++;
		} else if (wl > 128 / 1.0) {
			assert_true(fabs(inv[j] - base[j] / 8) < 1e-15);
			scaled++;
		} else {
			double sm = (128 / wl - 1) / (4 - 1);

			assert_true(fabs(inv[j] - ((1 - sm) * base[j] / 8 + sm * base[j])) < 1e-15);
			assert_true(inv[j] < base[j] && inv[j] > base[j] / 8);
			smooth++;
		}
	}
	/* the three regimes all occur with these numbers */
	assert_true(kept > 0 && scaled > 0 && smooth > 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_linear),	  cmocka_unit_test(test_linear_known),
		cmocka_unit_test(test_rmsnorm),	  cmocka_unit_test(test_rope),
		cmocka_unit_test(test_softmax),	  cmocka_unit_test(test_silu_mul),
		cmocka_unit_test(test_attention), cmocka_unit_test(test_par),
		cmocka_unit_test(test_inv_freq),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
