/*
 * Importance metrics: the Wanda toy of fedprllm.md §10 B (scaler_row and metric for both
 * clients), bit-exactness of the f32 metric against a double-computed correctly rounded
 * product (what PyTorch's fp32 multiply gives), magnitude, and refusals of bad scalers and
 * shapes.
 */
#include "test.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "score.h"

static void test_wanda_toy(void **state)
{
	static const float W[8] = { 1, -2, 0.5f, 4, -3, 1, 2, -0.25f };
	static const float X[2][2][4] = { { { 1, 0, 2, 0.1f }, { 1, 1, 0, 0.1f } },
					  { { 0, 3, 1, 0 }, { 2, 0, 1, 0.2f } } };
	static const double want_s[2][4] = { { 2, 1, 4, 0.02 }, { 4, 9, 2, 0.04 } };
	static const double want_m[2][8] = {
		{ 1.414214, 2, 1, 0.565685, 4.242641, 1, 4, 0.035355 },
		{ 2, 6, 0.707107, 0.8, 6, 3, 2.828427, 0.05 },
	};
	float s[4], m[8];

	(void)state;
	for (int c = 0; c < 2; c++) {
		struct fp_metric_src src = {
			.kind = FP_METRIC_WANDA, .x = W, .scaler = s, .rows = 2, .cols = 4
		};

		/* scaler_row: sum over the sequence's tokens of x^2, divided by 1 sequence */
		for (int j = 0; j < 4; j++) {
			s[j] = X[c][0][j] * X[c][0][j] + X[c][1][j] * X[c][1][j];
			assert_float_equal(s[j], want_s[c][j], 1e-6);
		}
		assert_int_equal(fp_score_compute(m, &src), 0);
		for (int i = 0; i < 8; i++)
			assert_float_equal(m[i], want_m[c][i], 1e-6);
	}
}

static uint32_t bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

/* |w| * sqrtf(s) in f32 is the correctly rounded product: check against double. */
static void test_wanda_bit_exact(void **state)
{
	const size_t rows = 37, cols = 301;
	float *w = malloc(rows * cols * sizeof(float)), *m = malloc(rows * cols * sizeof(float));
	float *s = malloc(cols * sizeof(float));
	uint64_t rng = 99;

	(void)state;
	assert_non_null(w);
	assert_non_null(m);
	assert_non_null(s);
	for (size_t i = 0; i < rows * cols; i++) {
		uint64_t r = fp_test_rand(&rng);

		w[i] = ldexpf((float)(r >> 40) / (float)(1 << 24) - 0.5f, (int)(r % 9) - 4);
	}
	for (size_t j = 0; j < cols; j++)
		s[j] = j % 17 ? (float)(fp_test_rand(&rng) >> 40) / 4096.0f : 0.0f;
	struct fp_metric_src src = {
		.kind = FP_METRIC_WANDA, .x = w, .scaler = s, .rows = rows, .cols = cols
	};

	assert_int_equal(fp_score_compute(m, &src), 0);
	for (size_t i = 0; i < rows * cols; i++) {
		float sq = (float)sqrt((double)s[i % cols]); /* correctly rounded, like sqrtf */
		float want = (float)(fabs((double)w[i]) * (double)sq);

		assert_int_equal(bits(m[i]), bits(want));
		assert_int_equal(bits(m[i]), bits(fp_score_wanda1(w[i], sqrtf(s[i % cols]))));
	}
	free(w);
	free(m);
	free(s);
}

static void test_magnitude_and_given(void **state)
{
	const float w[6] = { -0.0f, 0.0f, -3.5f, INFINITY, -INFINITY, 1e-40f };
	float m[6];
	struct fp_metric_src src = { .kind = FP_METRIC_MAGNITUDE, .x = w, .rows = 2, .cols = 3 };

	(void)state;
	assert_int_equal(fp_score_compute(m, &src), 0);
	assert_int_equal(bits(m[0]), 0);
	assert_int_equal(bits(m[1]), 0);
	assert_true(m[2] == 3.5f);
	assert_true(isinf(m[3]) && m[3] > 0);
	assert_true(isinf(m[4]) && m[4] > 0);
	assert_true(m[5] == 1e-40f);
	src.kind = FP_METRIC_GIVEN;
	assert_int_equal(fp_score_compute(m, &src), 0);
	assert_memory_equal(m, w, sizeof(w));
	assert_string_equal(fp_score_name(&src), "matrix");
	src.name = "q_proj";
	assert_string_equal(fp_score_name(&src), "q_proj");
}

static void test_refusals(void **state)
{
	const float w[4] = { 1, 2, 3, 4 };
	float s[2] = { 1, 2 }, m[4];
	struct fp_metric_src src = { .kind = FP_METRIC_WANDA,
				     .x = w,
				     .scaler = s,
				     .rows = 2,
				     .cols = 2,
				     .name = "blk.3.down" };

	(void)state;
	assert_int_equal(fp_score_check(&src), 0);
	s[1] = -1e-30f;
	assert_int_equal(fp_score_compute(m, &src), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "blk.3.down"));
	assert_non_null(strstr(fp_err_last(), "scaler_row[1]"));
	s[1] = NAN;
	assert_int_equal(fp_score_check(&src), -EINVAL);
	s[1] = INFINITY;
	assert_int_equal(fp_score_check(&src), -EINVAL);
	s[1] = 0.0f; /* zero is fine: the column's metric is 0 */
	assert_int_equal(fp_score_compute(m, &src), 0);
	assert_true(m[1] == 0.0f && m[3] == 0.0f);
	assert_int_equal(fp_score_sqrt_scaler(m, s, 2, NULL), 0);
	assert_true(m[0] == 1.0f && m[1] == 0.0f);
	s[0] = -1;
	assert_int_equal(fp_score_sqrt_scaler(m, s, 2, NULL), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "matrix"));
	src.scaler = NULL;
	assert_int_equal(fp_score_check(&src), -EINVAL);
	src.kind = FP_METRIC_MAGNITUDE;
	assert_int_equal(fp_score_check(&src), 0);
	src.x = NULL;
	assert_int_equal(fp_score_check(&src), -EINVAL);
	src.x = w;
	src.rows = SIZE_MAX / 4;
	src.cols = 8;
	assert_int_equal(fp_score_check(&src), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "overflows"));
	src.rows = 2;
	src.cols = 2;
	src.kind = (enum fp_metric_kind)42;
	assert_int_equal(fp_score_check(&src), -EINVAL);
	assert_int_equal(fp_score_check(NULL), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_wanda_toy),
		cmocka_unit_test(test_wanda_bit_exact),
		cmocka_unit_test(test_magnitude_and_given),
		cmocka_unit_test(test_refusals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
