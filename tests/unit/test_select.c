/*
 * Mask selection: the hand-worked vectors of fedprllm.md §10 (Wanda row and 2:4 masks,
 * magnitude, the server's vote counts per layer/row/column), tie and sign rules, edge cases
 * (k = 0, k = group size, 1x1, odd N:M), refusals (NaN, bad specs), and the fast path
 * against the stable-sort reference on random matrices with many ties, for every group, every
 * metric kind and several thread counts.
 */
#include "test.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc_sparsity.h"
#include "err.h"
#include "mask.h"
#include "par.h"
#include "select.h"

/* mask bits of a (rows, cols) matrix as 0/1 ints, row-major */
static void assert_mask(const uint8_t *m, const int *want, size_t rows, size_t cols)
{
	for (size_t p = 0; p < rows * cols; p++) {
		if (fp_mask_get(m, p) != (want[p] != 0))
			fail_msg("bit (%zu, %zu): got %d want %d", p / cols, p % cols,
				 fp_mask_get(m, p), want[p]);
	}
	if ((rows * cols) % 8)
		assert_int_equal(m[rows * cols / 8] >> (rows * cols % 8), 0);
}

/* Run fast and naive selection; both must succeed and agree; result in m. */
static void sel_both(uint8_t *m, const struct fp_metric_src *src, const struct fp_select_spec *sp)
{
	size_t nb = fp_mask_bytes(src->rows * src->cols);
	uint8_t *ref = malloc(nb ? nb : 1);

	assert_non_null(ref);
	memset(m, 0xa5, nb);
	assert_int_equal(fp_select(m, src, sp), 0);
	assert_int_equal(fp_select_naive(ref, src, sp), 0);
	assert_memory_equal(m, ref, nb);
	assert_int_equal(fp_mask_count(m, src->rows * src->cols),
			 fp_select_pruned(sp, src->rows, src->cols));
	free(ref);
}

static struct fp_select_spec spec_k(enum fp_group g, uint64_t k)
{
	struct fp_select_spec s = { .group = g, .k = k };

	return s;
}

static struct fp_select_spec spec_nm(unsigned n, unsigned m)
{
	struct fp_select_spec s = { .group = FP_GROUP_NM, .n = n, .m = m };

	return s;
}

/* fedprllm.md §10 B: Wanda toy, both clients; row masks at s = 0.5 and client 0's 2:4 mask. */
static void test_wanda_toy(void **state)
{
	static const float W[8] = { 1, -2, 0.5f, 4, -3, 1, 2, -0.25f };
	/* scaler_row = sum over the 2 tokens of x^2, one sequence */
	static const float X0[2][4] = { { 1, 0, 2, 0.1f }, { 1, 1, 0, 0.1f } };
	static const float X1[2][4] = { { 0, 3, 1, 0 }, { 2, 0, 1, 0.2f } };
	static const int row0[8] = { 0, 0, 1, 1, 0, 1, 0, 1 };
	static const int row1[8] = { 0, 0, 1, 1, 0, 0, 1, 1 };
	static const int nm0[8] = { 0, 0, 1, 1, 0, 1, 0, 1 };
	float s0[4], s1[4];
	struct fp_metric_src src = { .kind = FP_METRIC_WANDA, .x = W, .rows = 2, .cols = 4 };
	struct fp_select_spec sp;
	uint8_t m[1];

	(void)state;
	for (int j = 0; j < 4; j++) {
		s0[j] = X0[0][j] * X0[0][j] + X0[1][j] * X0[1][j];
		s1[j] = X1[0][j] * X1[0][j] + X1[1][j] * X1[1][j];
	}
	assert_int_equal(fp_select_spec_init(&sp, FP_GROUP_ROW, 0.5, 2, 4), 0);
	assert_int_equal(sp.k, 2);
	src.scaler = s0;
	sel_both(m, &src, &sp);
	assert_mask(m, row0, 2, 4);
	src.scaler = s1;
	sel_both(m, &src, &sp);
	assert_mask(m, row1, 2, 4);
	src.scaler = s0;
	sp = spec_nm(2, 4);
	sel_both(m, &src, &sp);
	assert_mask(m, nm0, 2, 4);
	assert_int_equal(fp_mask_check_nm(m, 2, 4, 2, 4), 0);
}

/*
 * Magnitude, one threshold per matrix, on §10's W: |W| sorted is 0.25, 0.5, 1, 1, 2, 2, 3, 4
 * and k = 4 takes 0.25, 0.5 and both 1s. The reference's `|W| <= sorted[k]` (= 2) would also
 * prune both 2s (6 weights): we prune exactly k.
 */
static void test_magnitude_toy(void **state)
{
	static const float W[8] = { 1, -2, 0.5f, 4, -3, 1, 2, -0.25f };
	static const int want[8] = { 1, 0, 1, 0, 0, 1, 0, 1 };
	static const int want3[8] = { 1, 0, 1, 0, 0, 0, 0, 1 }; /* k = 3: tie 1 vs 1, lower index */
	struct fp_metric_src src = { .kind = FP_METRIC_MAGNITUDE, .x = W, .rows = 2, .cols = 4 };
	struct fp_select_spec sp;
	uint8_t m[1];

	(void)state;
	assert_int_equal(fp_select_spec_init(&sp, FP_GROUP_LAYER, 0.5, 2, 4), 0);
	assert_int_equal(sp.k, 4);
	sel_both(m, &src, &sp);
	assert_mask(m, want, 2, 4);
	sp.k = 3;
	sel_both(m, &src, &sp);
	assert_mask(m, want3, 2, 4);
}

/* fedprllm.md §10 A and B: the server's selection on vote counts, metric = -G. */
static void test_vote_counts(void **state)
{
	static const float GA[16] = { 2, 2, 1, 1, 3, 1, 2, 0, 0, 3, 1, 2, 2, 1, 2, 1 };
	static const int layerA[16] = { 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0 };
	static const int colA[16] = { 1, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0 };
	static const float GB[8] = { 0, 0, 2, 2, 0, 1, 1, 2 };
	static const int rowB[8] = { 0, 0, 1, 1, 0, 1, 0, 1 };
	static const int colB[8] = { 1, 0, 1, 1, 0, 1, 0, 0 };
	/* layer k = 4: the three 2s, then the tie (1,1)/(1,2) goes to the lower index (1,1) */
	static const int layerB[8] = { 0, 0, 1, 1, 0, 1, 0, 1 };
	float a[16], b[8];
	struct fp_metric_src src = { .kind = FP_METRIC_GIVEN, .x = a, .rows = 4, .cols = 4 };
	struct fp_select_spec sp;
	uint8_t m[2];

	(void)state;
	for (int i = 0; i < 16; i++)
		a[i] = -GA[i];
	for (int i = 0; i < 8; i++)
		b[i] = -GB[i];
	sp = spec_k(FP_GROUP_LAYER, 8);
	sel_both(m, &src, &sp);
	assert_mask(m, layerA, 4, 4);
	sp = spec_k(FP_GROUP_ROW, 2);
	sel_both(m, &src, &sp);
	assert_mask(m, layerA, 4, 4);
	sp = spec_k(FP_GROUP_COLUMN, 2);
	sel_both(m, &src, &sp);
	assert_mask(m, colA, 4, 4);

	src.x = b;
	src.rows = 2;
	sp = spec_k(FP_GROUP_ROW, 2);
	sel_both(m, &src, &sp);
	assert_mask(m, rowB, 2, 4);
	sp = spec_k(FP_GROUP_COLUMN, 1);
	sel_both(m, &src, &sp);
	assert_mask(m, colB, 2, 4);
	sp = spec_k(FP_GROUP_LAYER, 4);
	sel_both(m, &src, &sp);
	assert_mask(m, layerB, 2, 4);
}

/* -0 ties with +0 (lower index first), negatives and infinities order as floats. */
static void test_signs_and_inf(void **state)
{
	const float x[8] = { 0.0f, -0.0f, -1.0f, 1.0f, INFINITY, -INFINITY, 2.0f, -0.0f };
	static const int k2[8] = { 0, 0, 1, 0, 0, 1, 0, 0 };
	static const int k3[8] = { 1, 0, 1, 0, 0, 1, 0, 0 };
	static const int k5[8] = { 1, 1, 1, 0, 0, 1, 0, 1 };
	static const int k7[8] = { 1, 1, 1, 1, 0, 1, 1, 1 };
	struct fp_metric_src src = { .kind = FP_METRIC_GIVEN, .x = x, .rows = 1, .cols = 8 };
	struct fp_select_spec sp = spec_k(FP_GROUP_ROW, 2);
	uint8_t m[1];

	(void)state;
	sel_both(m, &src, &sp);
	assert_mask(m, k2, 1, 8);
	sp.k = 3;
	sel_both(m, &src, &sp);
	assert_mask(m, k3, 1, 8);
	sp.k = 5;
	sel_both(m, &src, &sp);
	assert_mask(m, k5, 1, 8);
	sp.k = 7;
	sel_both(m, &src, &sp);
	assert_mask(m, k7, 1, 8);
}

static void test_k_rule(void **state)
{
	struct fp_select_spec sp;

	(void)state;
	assert_int_equal(fp_select_k(2048, 0.5), 1024);
	assert_int_equal(fp_select_k(10, 0.7), 7);    /* 7.000000000000001 */
	assert_int_equal(fp_select_k(100, 0.29), 28); /* 28.999999999999996, Python int() too */
	assert_int_equal(fp_select_k(5632, 0.6), 3379);
	assert_int_equal(fp_select_k(7, 0.0), 0);
	assert_int_equal(fp_select_k(7, 1.0), 7);
	assert_int_equal(fp_select_k(0, 0.5), 0);
	assert_int_equal(fp_select_spec_init(&sp, FP_GROUP_COLUMN, 0.5, 9, 4), 0);
	assert_int_equal(sp.k, 4);
	assert_int_equal(fp_select_pruned(&sp, 9, 4), 16);
	assert_int_equal(fp_select_spec_init(&sp, FP_GROUP_ROW, 1.5, 9, 4), -EINVAL);
	assert_int_equal(fp_select_spec_init(&sp, FP_GROUP_ROW, NAN, 9, 4), -EINVAL);
	assert_int_equal(fp_select_spec_init(&sp, FP_GROUP_ROW, -0.1, 9, 4), -EINVAL);
	assert_int_equal(fp_select_spec_init(&sp, FP_GROUP_NM, 0.5, 9, 4), -EINVAL);
}

/* sparsity 0 and 1, k = group size, 1x1 matrices for every group. */
static void test_edges(void **state)
{
	static const float one = 3.0f;
	float x[35];
	struct fp_metric_src src = { .kind = FP_METRIC_MAGNITUDE, .x = &one, .rows = 1, .cols = 1 };
	const enum fp_group groups[3] = { FP_GROUP_ROW, FP_GROUP_LAYER, FP_GROUP_COLUMN };
	struct fp_select_spec sp;
	uint8_t m[8];

	(void)state;
	for (int g = 0; g < 3; g++) {
		for (uint64_t k = 0; k <= 1; k++) {
			sp = spec_k(groups[g], k);
			sel_both(m, &src, &sp);
			assert_int_equal(m[0], k);
		}
		sp = spec_k(groups[g], 2);
		assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	}
	sp = spec_nm(1, 1);
	sel_both(m, &src, &sp);
	assert_int_equal(m[0], 1);
	sp = spec_nm(0, 1);
	sel_both(m, &src, &sp);
	assert_int_equal(m[0], 0);

	for (int i = 0; i < 35; i++)
		x[i] = (float)((i * 7) % 5);
	src.x = x;
	src.rows = 5;
	src.cols = 7;
	for (int g = 0; g < 3; g++) {
		assert_int_equal(fp_select_spec_init(&sp, groups[g], 0.0, 5, 7), 0);
		sel_both(m, &src, &sp);
		assert_int_equal(fp_mask_count(m, 35), 0);
		assert_int_equal(fp_select_spec_init(&sp, groups[g], 1.0, 5, 7), 0);
		sel_both(m, &src, &sp);
		assert_int_equal(fp_mask_count(m, 35), 35);
		assert_int_equal(m[4], 0x07); /* padding bits stay 0 */
	}
	sp = spec_nm(7, 7);
	sel_both(m, &src, &sp);
	assert_int_equal(fp_mask_count(m, 35), 35);
	/* an empty matrix is fine and writes nothing */
	src.rows = 0;
	sp = spec_k(FP_GROUP_ROW, 3);
	assert_int_equal(fp_select(m, &src, &sp), 0);
}

static void test_refusals(void **state)
{
	float x[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
	float sc[4] = { 1, 1, 0, 1 };
	struct fp_metric_src src = { .kind = FP_METRIC_GIVEN,
				     .x = x,
				     .rows = 3,
				     .cols = 4,
				     .name = "model.layers.0.mlp.up_proj" };
	struct fp_select_spec sp = spec_nm(2, 3);
	uint8_t m[2];

	(void)state;
	/* N:M needs cols % M == 0 */
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "up_proj"));
	assert_non_null(strstr(fp_err_last(), "multiple of M"));
	assert_int_equal(fp_select_naive(m, &src, &sp), -EINVAL);
	sp = spec_nm(5, 4);
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	sp = spec_nm(0, 0);
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	sp = spec_k(FP_GROUP_ROW, 5);
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "group size"));
	sp = spec_k((enum fp_group)9, 1);
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);

	/* NaN metrics are refused, naming the matrix and the first NaN (row-major) */
	x[9] = NAN;
	x[6] = -NAN;
	const enum fp_group groups[3] = { FP_GROUP_ROW, FP_GROUP_LAYER, FP_GROUP_COLUMN };
	for (int g = 0; g < 3; g++) {
		sp = spec_k(groups[g], 1);
		fp_err_clear();
		assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
		assert_non_null(strstr(fp_err_last(), "up_proj"));
		assert_non_null(strstr(fp_err_last(), "NaN at (1, 2)"));
		assert_int_equal(fp_select_naive(m, &src, &sp), -EINVAL);
		assert_non_null(strstr(fp_err_last(), "NaN at (1, 2)"));
		sp.k = 0; /* even when nothing is pruned */
		assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	}
	sp = spec_nm(2, 4);
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "NaN at (1, 2)"));

	/* Wanda: inf * sqrt(0) is NaN; bad scalers are refused up front */
	x[6] = 1;
	x[9] = 1;
	x[2] = INFINITY;
	src.kind = FP_METRIC_WANDA;
	src.scaler = sc;
	sp = spec_k(FP_GROUP_ROW, 2);
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "NaN at (0, 2)"));
	x[2] = 3;
	sel_both(m, &src, &sp);
	sc[1] = -1;
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "scaler_row[1]"));
	sc[1] = NAN;
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	sc[1] = INFINITY;
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	src.scaler = NULL;
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	src.kind = (enum fp_metric_kind)7;
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	src.kind = FP_METRIC_GIVEN;
	src.rows = SIZE_MAX / 2;
	assert_int_equal(fp_select(m, &src, &sp), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "overflows"));
}

/* Random matrices; levels > 0 quantises the values to that many levels (heavy ties). */
static void fill(float *x, size_t n, uint64_t *rng, int levels, bool negative)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t r = fp_test_rand(rng);
		double u = (double)(r >> 11) / 9007199254740992.0;

		if (levels > 0)
			u = floor(u * levels) / levels;
		x[i] = (float)(negative ? u * 2 - 1 : u);
		if (negative && levels > 0 && (r & 1))
			x[i] = -x[i]; /* also -0 */
	}
}

struct shape {
	size_t rows, cols;
};

/* Fast path == stable-sort reference for one matrix, every group and pattern that fits. */
static void compare_all(const float *x, const float *sc, size_t rows, size_t cols)
{
	static const double sparsities[] = { 0.0, 0.1, 0.5, 0.6, 0.77, 0.999, 1.0 };
	static const unsigned nm[][2] = { { 2, 4 }, { 4, 8 },  { 1, 4 },   { 3, 4 }, { 0, 4 },
					  { 4, 4 }, { 5, 20 }, { 13, 32 }, { 1, 1 }, { 1, 2 } };
	const enum fp_group groups[3] = { FP_GROUP_ROW, FP_GROUP_LAYER, FP_GROUP_COLUMN };
	const enum fp_metric_kind kinds[3] = { FP_METRIC_GIVEN, FP_METRIC_MAGNITUDE,
					       FP_METRIC_WANDA };
	uint8_t *m = malloc(fp_mask_bytes(rows * cols) + 1);

	assert_non_null(m);
	for (int kd = 0; kd < 3; kd++) {
		struct fp_metric_src src = {
			.kind = kinds[kd], .x = x, .scaler = sc, .rows = rows, .cols = cols
		};

		for (int g = 0; g < 3; g++)
			for (size_t s = 0; s < sizeof(sparsities) / sizeof(*sparsities); s++) {
				struct fp_select_spec sp;

				assert_int_equal(fp_select_spec_init(&sp, groups[g], sparsities[s],
								     rows, cols),
						 0);
				sel_both(m, &src, &sp);
			}
		for (size_t p = 0; p < sizeof(nm) / sizeof(*nm); p++) {
			struct fp_select_spec sp = spec_nm(nm[p][0], nm[p][1]);

			if (cols % nm[p][1])
				continue;
			sel_both(m, &src, &sp);
			assert_int_equal(fp_mask_check_nm(m, rows, cols, nm[p][0], nm[p][1]), 0);
		}
	}
	free(m);
}

static void test_fast_vs_reference(void **state)
{
	static const struct shape shapes[] = { { 1, 1 },    { 3, 5 },	  { 7, 13 },   { 9, 64 },
					       { 17, 100 }, { 33, 1032 }, { 5, 3000 }, { 2, 4096 },
					       { 300, 7 },  { 41, 40 } };
	static const int levels[] = { 0, 16, 3, 1 };
	uint64_t rng = 42;

	(void)state;
	for (size_t s = 0; s < sizeof(shapes) / sizeof(*shapes); s++) {
		size_t rows = shapes[s].rows, cols = shapes[s].cols;
		float *x = malloc(rows * cols * sizeof(float)), *sc = malloc(cols * sizeof(float));

		assert_non_null(x);
		assert_non_null(sc);
		for (size_t l = 0; l < sizeof(levels) / sizeof(*levels); l++) {
			fill(x, rows * cols, &rng, levels[l], true);
			fill(sc, cols, &rng, levels[l] ? 4 : 0, false);
			compare_all(x, sc, rows, cols);
		}
		free(x);
		free(sc);
	}
}

/* Big groups (sampling path), many ties, different thread counts give the same mask. */
static void test_large_and_threads(void **state)
{
	const size_t rows = 96, cols = 5632, n = rows * cols;
	static const int levels[] = { 0, 16, 2 };
	static const unsigned threads[] = { 1, 2, 3, 7 };
	float *x = malloc(n * sizeof(float)), *sc = malloc(cols * sizeof(float));
	uint8_t *m = malloc(fp_mask_bytes(n)), *m1 = malloc(fp_mask_bytes(n));
	unsigned saved = fp_par_threads();
	uint64_t rng = 7;

	(void)state;
	assert_non_null(x);
	assert_non_null(sc);
	assert_non_null(m);
	assert_non_null(m1);
	fill(sc, cols, &rng, 0, false);
	for (size_t l = 0; l < sizeof(levels) / sizeof(*levels); l++) {
		fill(x, n, &rng, levels[l], true);
		for (int g = 0; g < 4; g++) {
			struct fp_metric_src src = { .kind = g == 1 ? FP_METRIC_MAGNITUDE
								    : FP_METRIC_WANDA,
						     .x = x,
						     .scaler = sc,
						     .rows = rows,
						     .cols = cols };
			struct fp_select_spec sp = spec_nm(2, 4);

			if (g < 3)
				assert_int_equal(
					fp_select_spec_init(&sp, (enum fp_group)g, 0.5, rows, cols),
					0);
			fp_par_set_threads(1);
			sel_both(m1, &src, &sp);
			for (size_t t = 1; t < sizeof(threads) / sizeof(*threads); t++) {
				fp_par_set_threads(threads[t]);
				assert_int_equal(fp_select(m, &src, &sp), 0);
				assert_memory_equal(m, m1, fp_mask_bytes(n));
			}
		}
	}
	/* odd columns: rows share mask bytes across thread boundaries */
	fill(x, n, &rng, 16, false);
	for (size_t c = 5625; c < 5632; c++) {
		struct fp_metric_src src = {
			.kind = FP_METRIC_MAGNITUDE, .x = x, .rows = rows, .cols = c
		};
		struct fp_select_spec sp = spec_k(FP_GROUP_ROW, c / 3);

		fp_par_set_threads(1);
		sel_both(m1, &src, &sp);
		fp_par_set_threads(3);
		assert_int_equal(fp_select(m, &src, &sp), 0);
		assert_memory_equal(m, m1, fp_mask_bytes(rows * c));
	}
	fp_par_set_threads(saved);
	free(x);
	free(sc);
	free(m);
	free(m1);
}

/*
 * A row built so the sampled bracket of the selection ends right next to the k-th value:
 * every 16th element (offset 8) counts 0..127, 942 others are -1, the rest 1000. With
 * k = 1024 the 1024th smallest is 81, the first value above the bracket [46, 80] the fast
 * path derives from the sample. Every k around it must still match the reference.
 */
static void test_bracket_edges(void **state)
{
	const size_t n = 2048;
	float x[2048];
	struct fp_metric_src src = { .kind = FP_METRIC_GIVEN, .x = x, .rows = 1, .cols = n };
	uint8_t m[256];
	size_t low = 0;

	(void)state;
	for (size_t i = 0; i < n; i++) {
		if (i % 16 == 8)
			x[i] = (float)(i / 16);
		else
			x[i] = low++ < 942 ? -1.0f : 1000.0f;
	}
	for (uint64_t k = 900; k <= 1100; k++) {
		struct fp_select_spec sp = spec_k(FP_GROUP_ROW, k);

		sel_both(m, &src, &sp);
	}
	struct fp_select_spec sp = spec_k(FP_GROUP_ROW, 1024);

	sel_both(m, &src, &sp);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(fp_mask_get(m, i), x[i] <= 81.0f);
}

static void test_group_names(void **state)
{
	enum fp_group g;

	(void)state;
	assert_int_equal(fp_group_parse("row", &g), 0);
	assert_int_equal(g, FP_GROUP_ROW);
	assert_int_equal(fp_group_parse("layer", &g), 0);
	assert_int_equal(g, FP_GROUP_LAYER);
	assert_int_equal(fp_group_parse("column", &g), 0);
	assert_int_equal(g, FP_GROUP_COLUMN);
	assert_int_equal(fp_group_parse("Row", &g), -EINVAL);
	assert_int_equal(fp_group_parse("nm", &g), -EINVAL);
	assert_int_equal(fp_group_parse(NULL, &g), -EINVAL);
	assert_string_equal(fp_group_name(FP_GROUP_COLUMN), "column");
}

/* ---- sparsity allocation ---- */

struct bf_item {
	double score;
	size_t mat, pos;
};

static int cmp_bf(const void *a, const void *b)
{
	const struct bf_item *x = a, *y = b;

	if (x->score != y->score)
		return x->score < y->score ? -1 : 1;
	if (x->mat != y->mat)
		return x->mat < y->mat ? -1 : 1;
	return (x->pos > y->pos) - (x->pos < y->pos);
}

struct bf_abs {
	float a;
	size_t i;
};

static int cmp_abs(const void *a, const void *b)
{
	const struct bf_abs *x = a, *y = b;

	if (x->a != y->a)
		return x->a < y->a ? -1 : 1;
	return (x->i > y->i) - (x->i < y->i);
}

/*
 * Brute force: every weight gets its score (|w| for Global MP, the LAMP score from a full
 * sort and a suffix sum otherwise), one global stable sort, then the first K that do not
 * exceed their matrix's cap.
 */
static void brute_alloc(const struct fp_sparsity_mat *m, size_t n, bool lamp, double s,
			double min_keep, uint64_t *k)
{
	size_t total = 0, t = 0;

	for (size_t i = 0; i < n; i++)
		total += m[i].rows * m[i].cols;
	struct bf_item *all = malloc(total * sizeof(*all));
	uint64_t K = (uint64_t)((double)total * s), cap[8];

	assert_non_null(all);
	for (size_t i = 0; i < n; i++) {
		size_t numel = m[i].rows * m[i].cols;
		struct bf_abs *v = malloc(numel * sizeof(*v));
		double S = 0;

		assert_non_null(v);
		cap[i] = numel - (uint64_t)ceil((double)numel * min_keep);
		for (size_t j = 0; j < numel; j++) {
			v[j].a = fabsf(m[i].w[j]);
			v[j].i = j;
		}
		qsort(v, numel, sizeof(*v), cmp_abs);
		for (size_t p = numel; p-- > 0;) {
			double w2 = (double)v[p].a * (double)v[p].a;

			S += w2;
			all[t + p].score = lamp ? (S > 0 ? w2 / S : 0.0) : (double)v[p].a;
			all[t + p].mat = i;
			all[t + p].pos = p;
		}
		t += numel;
		free(v);
	}
	qsort(all, total, sizeof(*all), cmp_bf);
	for (size_t i = 0; i < n; i++)
		k[i] = 0;
	for (size_t j = 0; j < total && K; j++)
		if (k[all[j].mat] < cap[all[j].mat]) {
			k[all[j].mat]++;
			K--;
		}
	free(all);
}

static void test_alloc_vs_brute_force(void **state)
{
	static const struct shape shapes[4] = { { 16, 24 }, { 8, 8 }, { 33, 5 }, { 1, 40 } };
	static const double sparsities[] = { 0.0, 0.1, 0.5, 0.73, 0.9, 1.0 };
	static const double keeps[] = { 0.0, 0.05, 0.3 };
	static const int levels[] = { 0, 16, 3 };
	float *w[4];
	struct fp_sparsity_mat m[4];
	struct fp_sparsity_out out[4];
	uint64_t rng = 5, k[4];

	(void)state;
	for (int i = 0; i < 4; i++) {
		w[i] = malloc(shapes[i].rows * shapes[i].cols * sizeof(float));
		assert_non_null(w[i]);
		m[i] = (struct fp_sparsity_mat){
			.name = "m", .w = w[i], .rows = shapes[i].rows, .cols = shapes[i].cols
		};
	}
	for (size_t l = 0; l < sizeof(levels) / sizeof(*levels); l++) {
		for (int i = 0; i < 4; i++) {
			fill(w[i], shapes[i].rows * shapes[i].cols, &rng, levels[l], true);
			/* matrices of different scales, one of them tiny (Global MP collapses it) */
			for (size_t j = 0; j < shapes[i].rows * shapes[i].cols; j++)
				w[i][j] *= i == 1 ? 1e-3f : (float)(i + 1);
		}
		for (int lamp = 0; lamp < 2; lamp++)
			for (size_t s = 0; s < sizeof(sparsities) / sizeof(*sparsities); s++)
				for (size_t f = 0; f < sizeof(keeps) / sizeof(*keeps); f++) {
					struct fp_sparsity_opts o = {
						.scheme = lamp ? FP_SPARSITY_LAMP
							       : FP_SPARSITY_GLOBAL,
						.sparsity = sparsities[s],
						.min_keep = keeps[f]
					};
					uint64_t caps = 0, total = 0, sum = 0;

					for (int i = 0; i < 4; i++) {
						uint64_t ne = shapes[i].rows * shapes[i].cols;

						total += ne;
						caps += ne - (uint64_t)ceil((double)ne * keeps[f]);
					}
					int r = fp_sparsity_alloc(m, 4, &o, out);

					if (fp_select_k(total, sparsities[s]) > caps) {
						assert_int_equal(r, -EINVAL);
						assert_non_null(
							strstr(fp_err_last(), "unreachable"));
						continue;
					}
					assert_int_equal(r, 0);
					brute_alloc(m, 4, lamp, sparsities[s], keeps[f], k);
					for (int i = 0; i < 4; i++) {
						uint64_t ne = shapes[i].rows * shapes[i].cols;

						assert_int_equal(out[i].k, k[i]);
						assert_int_equal(out[i].numel, ne);
						assert_true(
							out[i].k <=
							ne - (uint64_t)ceil((double)ne * keeps[f]));
						assert_float_equal(out[i].sparsity,
								   (double)out[i].k / (double)ne,
								   1e-15);
						sum += out[i].k;
					}
					assert_int_equal(sum, fp_select_k(total, sparsities[s]));
				}
	}
	for (int i = 0; i < 4; i++)
		free(w[i]);
}

/*
 * Global MP: the tiny matrix would lose everything at 50 %; the floor keeps 20 % of it, and
 * the per-matrix layer selection with k[i] reproduces the global magnitude order exactly.
 */
static void test_global_floor_and_masks(void **state)
{
	const size_t rows = 20, cols = 30, ne = rows * cols;
	float *w[3];
	struct fp_sparsity_mat m[3];
	struct fp_sparsity_out out[3];
	struct fp_sparsity_opts o = { .scheme = FP_SPARSITY_GLOBAL, .sparsity = 0.5 };
	uint64_t rng = 11;
	uint8_t mask[3][75]; /* 600 bits each */
	float thr = 0;

	(void)state;
	for (int i = 0; i < 3; i++) {
		w[i] = malloc(ne * sizeof(float));
		assert_non_null(w[i]);
		fill(w[i], ne, &rng, 0, true);
		for (size_t j = 0; j < ne; j++)
			w[i][j] *= i == 0 ? 1e-4f : 1.0f;
		m[i] = (struct fp_sparsity_mat){
			.name = "m", .w = w[i], .rows = rows, .cols = cols
		};
	}
	assert_int_equal(fp_sparsity_alloc(m, 3, &o, out), 0);
	assert_int_equal(out[0].k, ne); /* collapses without a floor */
	o.min_keep = 0.2;
	assert_int_equal(fp_sparsity_alloc(m, 3, &o, out), 0);
	assert_int_equal(out[0].k, ne - 120);
	assert_int_equal(out[0].k + out[1].k + out[2].k, 900);
	/* the matrices not capped share one threshold: every kept |w| >= every pruned |w| */
	for (int i = 0; i < 3; i++) {
		struct fp_metric_src src = {
			.kind = FP_METRIC_MAGNITUDE, .x = w[i], .rows = rows, .cols = cols
		};
		struct fp_select_spec sp = spec_k(FP_GROUP_LAYER, out[i].k);

		sel_both(mask[i], &src, &sp);
	}
	for (int i = 1; i < 3; i++)
		for (size_t j = 0; j < ne; j++)
			if (fp_mask_get(mask[i], j) && fabsf(w[i][j]) > thr)
				thr = fabsf(w[i][j]);
	for (int i = 1; i < 3; i++)
		for (size_t j = 0; j < ne; j++)
			if (!fp_mask_get(mask[i], j))
				assert_true(fabsf(w[i][j]) >= thr);
	/* LAMP keeps every matrix's largest weight even at 99 % */
	o.scheme = FP_SPARSITY_LAMP;
	o.min_keep = 0;
	o.sparsity = 0.99;
	assert_int_equal(fp_sparsity_alloc(m, 3, &o, out), 0);
	for (int i = 0; i < 3; i++)
		assert_true(out[i].k < ne);
	for (int i = 0; i < 3; i++)
		free(w[i]);
}

static void test_alloc_uniform_and_refusals(void **state)
{
	float w[6] = { 1, 2, 3, 4, 5, 6 };
	struct fp_sparsity_mat m[2] = { { .name = "a", .rows = 7, .cols = 3 },
					{ .name = "b", .w = w, .rows = 2, .cols = 3 } };
	struct fp_sparsity_out out[2];
	struct fp_sparsity_opts o = { .scheme = FP_SPARSITY_UNIFORM, .sparsity = 0.5 };
	enum fp_sparsity_scheme sc;

	(void)state;
	assert_int_equal(fp_sparsity_alloc(m, 2, &o, out), 0);
	assert_int_equal(out[0].k, 10);
	assert_int_equal(out[0].numel, 21);
	assert_true(out[0].sparsity == 0.5);
	assert_int_equal(out[1].k, 3);
	o.sparsity = 1.5;
	assert_int_equal(fp_sparsity_alloc(m, 2, &o, out), -EINVAL);
	o.sparsity = 0.5;
	o.min_keep = -1;
	assert_int_equal(fp_sparsity_alloc(m, 2, &o, out), -EINVAL);
	o.min_keep = 0;
	o.scheme = FP_SPARSITY_GLOBAL; /* matrix a has no weights */
	assert_int_equal(fp_sparsity_alloc(m, 2, &o, out), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "a: no weights"));
	m[0].rows = 0;
	assert_int_equal(fp_sparsity_alloc(m, 2, &o, out), 0);
	assert_int_equal(out[0].k, 0);
	assert_int_equal(out[1].k, 3);
	w[4] = NAN;
	o.scheme = FP_SPARSITY_LAMP;
	assert_int_equal(fp_sparsity_alloc(m, 2, &o, out), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "b: weight (1, 1)"));
	o.scheme = (enum fp_sparsity_scheme)9;
	assert_int_equal(fp_sparsity_alloc(m, 2, &o, out), -EINVAL);
	assert_int_equal(fp_sparsity_scheme_parse("lamp", &sc), 0);
	assert_int_equal(sc, FP_SPARSITY_LAMP);
	assert_int_equal(fp_sparsity_scheme_parse("global", &sc), 0);
	assert_int_equal(sc, FP_SPARSITY_GLOBAL);
	assert_int_equal(fp_sparsity_scheme_parse("uniform", &sc), 0);
	assert_int_equal(sc, FP_SPARSITY_UNIFORM);
	assert_int_equal(fp_sparsity_scheme_parse("owl", &sc), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wanda_toy),
		cmocka_unit_test(test_magnitude_toy),
		cmocka_unit_test(test_vote_counts),
		cmocka_unit_test(test_signs_and_inf),
		cmocka_unit_test(test_k_rule),
		cmocka_unit_test(test_edges),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_fast_vs_reference),
		cmocka_unit_test(test_large_and_threads),
		cmocka_unit_test(test_bracket_edges),
		cmocka_unit_test(test_group_names),
		cmocka_unit_test(test_alloc_vs_brute_force),
		cmocka_unit_test(test_global_floor_and_masks),
		cmocka_unit_test(test_alloc_uniform_and_refusals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
