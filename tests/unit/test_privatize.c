/* client/privatize.c: the permanent randomized response of a mask file, and the account. */
#include "test.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "err.h"
#include "fileio.h"
#include "ldp.h"
#include "mask.h"

#include "../../client/privatize.h"

#define ROWS 64
#define COLS 300 /* not a multiple of 8: padding bits in the last byte */

static char *make_mask(const char *dir, const char *name, uint64_t seed, uint8_t *bits)
{
	struct fp_mask_info d = { .name = "model.layers.0.mlp.up_proj.weight",
				  .ndim = 2,
				  .dims = { ROWS, COLS } };
	struct fp_mask_writer *w = NULL;
	uint64_t st = seed;
	char *path = NULL;

	memset(bits, 0, fp_mask_bytes(ROWS * COLS));
	for (size_t i = 0; i < ROWS * COLS; i++)
		fp_mask_put(bits, i, fp_test_rand(&st) & 1);
	assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
	assert_int_equal(fp_mask_writer_open(path, &d, 1, &w), 0);
	assert_int_equal(fp_mask_writer_add(w, bits, fp_mask_bytes(ROWS * COLS)), 0);
	assert_int_equal(fp_mask_writer_close(w), 0);
	return path;
}

static void load_bits(const char *path, uint8_t *out)
{
	struct fp_mask_set *s = NULL;

	assert_int_equal(fp_mask_set_load(path, &s), 0); /* also checks digests and padding */
	assert_int_equal(s->count, 1);
	assert_int_equal(s->info[0].nbits, ROWS * COLS);
	memcpy(out, s->bits[0], fp_mask_bytes(ROWS * COLS));
	fp_mask_set_free(s);
}

static void test_privatize(void **state)
{
	static uint8_t truth[ROWS * COLS / 8 + 1], other[ROWS * COLS / 8 + 1];
	static uint8_t y1[ROWS * COLS / 8 + 1], y2[ROWS * COLS / 8 + 1];
	char *dir = fp_test_mkdtemp(), *ldp = NULL, *out = NULL, *in, *in2;
	uint8_t model[32] = { 1, 2, 3 };
	struct fp_privatize_result res;
	size_t n = ROWS * COLS, stay1 = 0, ones1 = 0, stay0 = 0, ones0 = 0;
	double p, sd;

	(void)state;
	in = make_mask(dir, "true.fpmask", 7, truth);
	in2 = make_mask(dir, "true2.fpmask", 8, other);
	assert_true(asprintf(&ldp, "%s/ldp", dir) > 0);
	assert_true(asprintf(&out, "%s/sent.fpmask", dir) > 0);

	/* first submission: a fresh response, flips at the randomized-response rates */
	assert_int_equal(fp_privatize_mask(in, out, ldp, model, FP_LDP_RR_SYM, 1.0, &res), 0);
	assert_true(res.fresh);
	assert_int_equal(res.rounds, 1);
	assert_true(fabs(res.total_eps - 1.0) < 1e-12);
	p = exp(1.0) / (1.0 + exp(1.0));
	assert_true(fabs(res.p - p) < 1e-9 && fabs(res.q - (1 - p)) < 1e-9);
	load_bits(out, y1);
	for (size_t i = 0; i < n; i++) {
		bool x = fp_mask_get(truth, i), y = fp_mask_get(y1, i);

		ones1 += x;
		ones0 += !x;
		stay1 += x && y;
		stay0 += !x && !y;
	}
	/* keep rate p in each direction, within 5 binomial standard deviations */
	sd = sqrt(p * (1 - p) / (double)ones1);
	assert_true(fabs((double)stay1 / (double)ones1 - p) < 5 * sd);
	sd = sqrt(p * (1 - p) / (double)ones0);
	assert_true(fabs((double)stay0 / (double)ones0 - p) < 5 * sd);
	assert_true(memcmp(y1, truth, sizeof(truth)) != 0);

	/* the same true mask again: the memo's bits, nothing more spent */
	assert_int_equal(fp_privatize_mask(in, out, ldp, model, FP_LDP_RR_SYM, 1.0, &res), 0);
	assert_false(res.fresh);
	assert_int_equal(res.rounds, 2);
	assert_true(fabs(res.total_eps - 1.0) < 1e-12);
	load_bits(out, y2);
	assert_memory_equal(y1, y2, sizeof(y1));

	/* another true mask: a fresh response, the account composes */
	assert_int_equal(fp_privatize_mask(in2, out, ldp, model, FP_LDP_RR_OUE, 2.0, &res), 0);
	assert_true(res.fresh);
	assert_int_equal(res.rounds, 3);
	assert_true(fabs(res.total_eps - 3.0) < 1e-12);
	assert_true(fabs(res.p - 0.5) < 1e-12);

	/* a bad mechanism, a bad epsilon, a corrupt memo are refused */
	assert_int_equal(fp_privatize_mask(in, out, ldp, model, 9, 1.0, &res), -EINVAL);
	assert_int_equal(fp_privatize_mask(in, out, ldp, model, FP_LDP_RR_SYM, -1, &res), -EINVAL);
	{
		char *memo = NULL, hex[65];
		uint8_t md[32];
		FILE *f = fopen(in, "rb");

		assert_non_null(f);
		assert_int_equal(fseek(f, -32, SEEK_END), 0);
		assert_int_equal(fread(md, 1, 32, f), 32);
		fclose(f);
		sodium_bin2hex(hex, sizeof(hex), md, 32);
		assert_true(asprintf(&memo, "%s/memo-%.16s.fpldp", ldp, hex) > 0);
		free(fp_test_write_file(ldp, strrchr(memo, '/') + 1, "garbage", 7));
		assert_int_equal(fp_privatize_mask(in, out, ldp, model, FP_LDP_RR_SYM, 1.0, &res),
				 -EINVAL);
		free(memo);
	}
	fp_test_rmtree(dir);
	free(dir);
	free(ldp);
	free(out);
	free(in);
	free(in2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_privatize),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
