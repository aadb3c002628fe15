/*
 * Streaming mask rule check (maskcheck.h): masks built to pass for every group kind and many
 * shapes (cols not a multiple of 8 or 64, single rows and columns) fed with random chunk
 * splits including 1-byte chunks; single-bit flips failing with the right group and counts in
 * the message; padding bits; lengths; bad arguments; agreement with the bit-by-bit reference
 * (same code, same message) on random valid and invalid masks; and masks made by fp_select,
 * the selection the pruners use, passing. Shapes with more than 255 rows and at least 64
 * columns exercise the flushes of COLUMN's bit-sliced counters.
 */
#include "test.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "mask.h"
#include "maskcheck.h"
#include "select.h"

/* One rule: a group kind with a sparsity, or an N:M pattern. */
struct rule {
	enum fp_group g;
	double s;
	unsigned n, m;
};

struct shape {
	size_t rows, cols;
};

static const struct shape shapes[] = {
	{ 1, 1 },   { 1, 7 },	{ 3, 5 },   { 7, 13 },	  { 2, 64 },   { 5, 128 },
	{ 9, 100 }, { 33, 67 }, { 4, 200 }, { 17, 24 },	  { 64, 8 },   { 3, 1000 },
	{ 130, 3 }, { 6, 192 }, { 11, 96 }, { 40, 1024 }, { 300, 70 }, { 520, 128 },
};
#define NSHAPES (sizeof(shapes) / sizeof(*shapes))

static const double sparsities[] = { 0.0, 1.0 / 3.0, 0.3, 0.5, 0.7, 0.29, 1.0 };
#define NSP (sizeof(sparsities) / sizeof(*sparsities))

static const unsigned nm_pats[][2] = {
	{ 1, 1 },  { 1, 2 },   { 2, 4 },   { 4, 8 }, { 3, 6 },	{ 8, 16 },
	{ 5, 16 }, { 16, 32 }, { 20, 64 }, { 2, 3 }, { 7, 12 },
};
#define NPATS (sizeof(nm_pats) / sizeof(*nm_pats))

static size_t rnd(uint64_t *rng, size_t n)
{
	return (size_t)(fp_test_rand(rng) % n);
}

/* All rules that apply to a (rows, cols) matrix; returns how many were written to out. */
static size_t rules_for(size_t cols, struct rule *out)
{
	static const enum fp_group gs[] = { FP_GROUP_ROW, FP_GROUP_LAYER, FP_GROUP_COLUMN };
	size_t n = 0;

	for (size_t g = 0; g < 3; g++)
		for (size_t s = 0; s < NSP; s++)
			out[n++] = (struct rule){ .g = gs[g], .s = sparsities[s] };
	for (size_t p = 0; p < NPATS; p++)
		if (cols % nm_pats[p][1] == 0)
			out[n++] = (struct rule){ .g = FP_GROUP_NM,
						  .n = nm_pats[p][0],
						  .m = nm_pats[p][1] };
	return n;
}
#define MAX_RULES (3 * NSP + NPATS)

/* Pruned weights the rule requires per group (independent of the checker). */
static uint64_t need_of(const struct rule *r, size_t rows, size_t cols)
{
	switch (r->g) {
	case FP_GROUP_ROW:
		return fp_select_k(cols, r->s);
	case FP_GROUP_COLUMN:
		return fp_select_k(rows, r->s);
	case FP_GROUP_LAYER:
		return fp_select_k((uint64_t)rows * cols, r->s);
	default:
		return r->n;
	}
}

/* Set exactly c of the positions base + t * stride, t < size, chosen at random. */
static void pick(uint8_t *m, size_t base, size_t stride, size_t size, uint64_t c, size_t *scratch,
		 uint64_t *rng)
{
	for (size_t t = 0; t < size; t++)
		scratch[t] = t;
	for (uint64_t t = 0; t < c; t++) {
		size_t u = (size_t)t + rnd(rng, size - (size_t)t), v = scratch[u];

		scratch[u] = scratch[t];
		scratch[t] = v;
		fp_mask_put(m, base + v * stride, true);
	}
}

/* m (fp_mask_bytes(rows * cols)) = a random mask obeying r. */
static void build_valid(uint8_t *m, size_t rows, size_t cols, const struct rule *r, uint64_t *rng)
{
	size_t nbits = rows * cols;
	uint64_t need = need_of(r, rows, cols);
	size_t *scratch = malloc(sizeof(size_t) * (nbits + 1));

	assert_non_null(scratch);
	memset(m, 0, fp_mask_bytes(nbits));
	switch (r->g) {
	case FP_GROUP_ROW:
		for (size_t i = 0; i < rows; i++)
			pick(m, i * cols, 1, cols, need, scratch, rng);
		break;
	case FP_GROUP_COLUMN:
		for (size_t j = 0; j < cols; j++)
			pick(m, j, cols, rows, need, scratch, rng);
		break;
	case FP_GROUP_LAYER:
		pick(m, 0, 1, nbits, need, scratch, rng);
		break;
	default:
		for (size_t i = 0; i < rows; i++)
			for (size_t j = 0; j < cols; j += r->m)
				pick(m, i * cols + j, 1, r->m, need, scratch, rng);
		break;
	}
	free(scratch);
}

enum split { SPLIT_WHOLE, SPLIT_BYTES, SPLIT_SMALL, SPLIT_LARGE, SPLIT_MODES };

/*
 * Check bits (nbytes) with the streaming checker under rule r, fed in chunks chosen by mode.
 * Every feed must succeed (nbytes is right); returns finish's result.
 */
static int stream_check(const uint8_t *bits, size_t nbytes, size_t rows, size_t cols,
			const struct rule *r, const char *name, enum split mode, uint64_t *rng)
{
	struct fp_maskcheck mc;
	size_t off = 0;
	int ret;

	assert_int_equal(fp_maskcheck_init(&mc, rows, cols, r->g, r->s, r->n, r->m, name), 0);
	while (off < nbytes) {
		size_t len = nbytes - off;

		if (mode == SPLIT_BYTES)
			len = 1;
		else if (mode == SPLIT_SMALL)
			len = 1 + rnd(rng, 17);
		else if (mode == SPLIT_LARGE)
			len = 1 + rnd(rng, nbytes < 300 ? nbytes : 300);
		if (len > nbytes - off)
			len = nbytes - off;
		assert_int_equal(fp_maskcheck_feed(&mc, bits + off, len), 0);
		off += len;
	}
	/* an empty feed is harmless */
	assert_int_equal(fp_maskcheck_feed(&mc, bits, 0), 0);
	ret = fp_maskcheck_finish(&mc);
	assert_int_equal(fp_maskcheck_failed(&mc), ret != 0);
	fp_maskcheck_destroy(&mc);
	return ret;
}

static int naive_check(const uint8_t *bits, size_t nbytes, size_t rows, size_t cols,
		       const struct rule *r, const char *name)
{
	return fp_maskcheck_naive(bits, nbytes, rows, cols, r->g, r->s, r->n, r->m, name);
}

static void assert_contains(const char *hay, const char *needle)
{
	if (!strstr(hay, needle))
		fail_msg("'%s' does not contain '%s'", hay, needle);
}

/* ---- tests ---- */

static void test_valid_pass(void **state)
{
	uint64_t rng = 11;
	size_t checked = 0;

	(void)state;
	for (size_t s = 0; s < NSHAPES; s++) {
		size_t rows = shapes[s].rows, cols = shapes[s].cols,
		       nb = fp_mask_bytes(rows * cols);
		struct rule rules[MAX_RULES];
		size_t nr = rules_for(cols, rules);
		uint8_t *m = malloc(nb);

		assert_non_null(m);
		for (size_t k = 0; k < nr; k++) {
			build_valid(m, rows, cols, &rules[k], &rng);
			assert_int_equal(naive_check(m, nb, rows, cols, &rules[k], "w"), 0);
			for (int mode = 0; mode < SPLIT_MODES; mode++) {
				int r = stream_check(m, nb, rows, cols, &rules[k], "w", mode, &rng);

				if (r)
					fail_msg(
						"shape (%zu, %zu) group %s s %g %u:%u split %d: %s",
						rows, cols, fp_group_name(rules[k].g), rules[k].s,
						rules[k].n, rules[k].m, mode, fp_err_last());
				checked++;
			}
		}
		free(m);
	}
	assert_true(checked > 500);
}

/* The message the checker must give when bit p of a valid mask under r is flipped. */
static void expected_msg(char *buf, size_t len, const struct rule *r, size_t rows, size_t cols,
			 size_t p, bool was_set)
{
	uint64_t need = need_of(r, rows, cols), got = was_set ? need - 1 : need + 1;
	size_t i = p / cols, j = p % cols;

	switch (r->g) {
	case FP_GROUP_ROW:
		snprintf(buf, len, "'t.q': row %zu has %" PRIu64 " pruned, required %" PRIu64, i,
			 got, need);
		break;
	case FP_GROUP_COLUMN:
		snprintf(buf, len, "'t.q': column %zu has %" PRIu64 " pruned, required %" PRIu64, j,
			 got, need);
		break;
	case FP_GROUP_LAYER:
		snprintf(buf, len, "'t.q': the layer has %" PRIu64 " pruned, required %" PRIu64,
			 got, need);
		break;
	default:
		snprintf(buf, len,
			 "'t.q': N:M group at row %zu, columns %zu..%zu has %" PRIu64
			 " pruned, required %u (%u:%u)",
			 i, j / r->m * r->m, j / r->m * r->m + r->m - 1, got, r->n, r->n, r->m);
		break;
	}
}

static void test_bit_flips_fail(void **state)
{
	uint64_t rng = 12;

	(void)state;
	for (size_t s = 0; s < NSHAPES; s++) {
		size_t rows = shapes[s].rows, cols = shapes[s].cols, nbits = rows * cols;
		size_t nb = fp_mask_bytes(nbits);
		struct rule rules[MAX_RULES];
		size_t nr = rules_for(cols, rules);
		uint8_t *m = malloc(nb);

		assert_non_null(m);
		for (size_t k = 0; k < nr; k++) {
			build_valid(m, rows, cols, &rules[k], &rng);
			for (int f = 0; f < 6; f++) {
				/* first, last and random bits */
				size_t p = f == 0 ? 0 : f == 1 ? nbits - 1 : rnd(&rng, nbits);
				bool was = fp_mask_get(m, p);
				char want[256], got[600];
				int mode = f < 2 ? SPLIT_BYTES : (int)rnd(&rng, SPLIT_MODES);

				expected_msg(want, sizeof(want), &rules[k], rows, cols, p, was);
				fp_mask_put(m, p, !was);
				assert_int_equal(stream_check(m, nb, rows, cols, &rules[k], "t.q",
							      mode, &rng),
						 -EDOM);
				snprintf(got, sizeof(got), "%s", fp_err_last());
				assert_contains(got, want);
				assert_int_equal(naive_check(m, nb, rows, cols, &rules[k], "t.q"),
						 -EDOM);
				assert_string_equal(fp_err_last(), got);
				fp_mask_put(m, p, was);
			}
		}
		free(m);
	}
}

static void test_padding(void **state)
{
	uint64_t rng = 13;
	size_t tried = 0;

	(void)state;
	for (size_t s = 0; s < NSHAPES; s++) {
		size_t rows = shapes[s].rows, cols = shapes[s].cols, nbits = rows * cols;
		size_t nb = fp_mask_bytes(nbits);
		struct rule rules[MAX_RULES];
		size_t nr = rules_for(cols, rules);
		uint8_t *m;

		if (nbits % 8 == 0)
			continue;
		m = malloc(nb);
		assert_non_null(m);
		for (size_t k = 0; k < nr; k++) {
			size_t p = nbits + rnd(&rng, 8 - nbits % 8);
			char got[600];

			build_valid(m, rows, cols, &rules[k], &rng);
			fp_mask_put(m, p, true);
			assert_int_equal(stream_check(m, nb, rows, cols, &rules[k], "t.pad",
						      (int)rnd(&rng, SPLIT_MODES), &rng),
					 -EINVAL);
			snprintf(got, sizeof(got), "%s", fp_err_last());
			assert_contains(got, "'t.pad': padding bits");
			assert_int_equal(naive_check(m, nb, rows, cols, &rules[k], "t.pad"),
					 -EINVAL);
			assert_string_equal(fp_err_last(), got);
			/* also with a broken group: padding takes precedence in both */
			fp_mask_put(m, 0, !fp_mask_get(m, 0));
			assert_int_equal(stream_check(m, nb, rows, cols, &rules[k], "t.pad",
						      SPLIT_BYTES, &rng),
					 -EINVAL);
			assert_contains(fp_err_last(), "padding bits");
			assert_int_equal(naive_check(m, nb, rows, cols, &rules[k], "t.pad"),
					 -EINVAL);
			tried++;
		}
		free(m);
	}
	assert_true(tried > 50);
}

/* Random masks, valid or not, checked both ways: same code and same message. */
static void test_agree_naive(void **state)
{
	uint64_t rng = 14;
	unsigned fails = 0, passes = 0;

	(void)state;
	for (int it = 0; it < 3000; it++) {
		/* every tenth has more than 255 rows (column counters are flushed every 255) */
		size_t rows = it % 10 ? 1 + rnd(&rng, 40) : 250 + rnd(&rng, 300);
		/* every third shape has cols % 4 == 0 so that more N:M patterns apply */
		size_t cols = it % 3 ? 1 + rnd(&rng, 150) : 4 * (1 + rnd(&rng, 40));
		size_t nbits = rows * cols, nb = fp_mask_bytes(nbits);
		struct rule rules[MAX_RULES], r;
		uint8_t *m = malloc(nb);
		char got[600];
		int kind = (int)rnd(&rng, 4), a, b;

		assert_non_null(m);
		r = rules[rnd(&rng, rules_for(cols, rules))];
		if (kind == 0) { /* random bits at about the rule's density */
			unsigned pct = r.g == FP_GROUP_NM ? 100 * r.n / r.m : (unsigned)(100 * r.s);

			memset(m, 0, nb);
			for (size_t p = 0; p < nbits; p++)
				if (rnd(&rng, 100) < pct)
					fp_mask_put(m, p, true);
		} else { /* valid, with 0..2 flips (kind 1: none) */
			build_valid(m, rows, cols, &r, &rng);
			for (int f = 1; f < kind; f++) {
				size_t p = rnd(&rng, nbits);

				fp_mask_put(m, p, !fp_mask_get(m, p));
			}
		}
		if (nbits % 8 && rnd(&rng, 10) == 0)
			fp_mask_put(m, nbits + rnd(&rng, 8 - nbits % 8), true);
		a = stream_check(m, nb, rows, cols, &r, "rand", (int)rnd(&rng, SPLIT_MODES), &rng);
		snprintf(got, sizeof(got), "%s", fp_err_last());
		b = naive_check(m, nb, rows, cols, &r, "rand");
		assert_int_equal(a, b);
		if (a) {
			assert_string_equal(fp_err_last(), got);
			fails++;
		} else {
			passes++;
		}
		free(m);
	}
	/* both outcomes must be well represented */
	assert_true(fails > 500);
	assert_true(passes > 500);
}

static void test_lengths(void **state)
{
	const size_t rows = 5, cols = 13, nb = fp_mask_bytes(65); /* 9 bytes */
	struct rule r = { .g = FP_GROUP_ROW, .s = 0.5 };
	struct fp_maskcheck mc;
	uint8_t m[16];
	uint64_t rng = 15;

	(void)state;
	build_valid(m, rows, cols, &r, &rng);
	m[nb] = 0;

	/* one byte too many, in the middle of a split: that feed fails and takes nothing */
	assert_int_equal(fp_maskcheck_init(&mc, rows, cols, r.g, r.s, 0, 0, "t.len"), 0);
	assert_int_equal(fp_maskcheck_feed(&mc, m, 4), 0);
	assert_int_equal(fp_maskcheck_feed(&mc, m + 4, 6), -EINVAL);
	assert_contains(fp_err_last(), "'t.len': 10 bytes fed, more than the 9 bytes");
	assert_true(fp_maskcheck_failed(&mc));
	assert_int_equal(fp_maskcheck_feed(&mc, m + 4, 5), -EINVAL);
	assert_int_equal(fp_maskcheck_finish(&mc), -EINVAL);
	assert_contains(fp_err_last(), "more than");
	fp_maskcheck_destroy(&mc);
	assert_int_equal(fp_maskcheck_naive(m, nb + 1, rows, cols, r.g, r.s, 0, 0, "t.len"),
			 -EINVAL);
	assert_contains(fp_err_last(), "'t.len': 10 bytes fed, more than the 9 bytes");

	/* a huge length does not wrap */
	assert_int_equal(fp_maskcheck_init(&mc, rows, cols, r.g, r.s, 0, 0, "t.len"), 0);
	assert_int_equal(fp_maskcheck_feed(&mc, m, 1), 0);
	assert_int_equal(fp_maskcheck_feed(&mc, m, SIZE_MAX), -EINVAL);
	fp_maskcheck_destroy(&mc);

	/* too few */
	assert_int_equal(fp_maskcheck_init(&mc, rows, cols, r.g, r.s, 0, 0, "t.len"), 0);
	assert_int_equal(fp_maskcheck_feed(&mc, m, nb - 1), 0);
	assert_int_equal(fp_maskcheck_finish(&mc), -EINVAL);
	assert_contains(fp_err_last(), "'t.len': only 8 of the 9 bytes");
	/* finish again says the same; feeding after finish is refused */
	assert_int_equal(fp_maskcheck_finish(&mc), -EINVAL);
	assert_int_equal(fp_maskcheck_feed(&mc, m + 8, 1), -EINVAL);
	assert_contains(fp_err_last(), "after finish");
	fp_maskcheck_destroy(&mc);
	assert_int_equal(fp_maskcheck_naive(m, nb - 1, rows, cols, r.g, r.s, 0, 0, "t.len"),
			 -EINVAL);
	assert_contains(fp_err_last(), "only 8 of the 9 bytes");

	/* nothing at all */
	assert_int_equal(fp_maskcheck_init(&mc, rows, cols, r.g, r.s, 0, 0, "t.len"), 0);
	assert_int_equal(fp_maskcheck_finish(&mc), -EINVAL);
	fp_maskcheck_destroy(&mc);

	/* exactly right, finish twice */
	assert_int_equal(fp_maskcheck_init(&mc, rows, cols, r.g, r.s, 0, 0, "t.len"), 0);
	assert_int_equal(fp_maskcheck_feed(&mc, m, nb), 0);
	assert_int_equal(fp_maskcheck_finish(&mc), 0);
	assert_int_equal(fp_maskcheck_finish(&mc), 0);
	fp_maskcheck_destroy(&mc);
	fp_maskcheck_destroy(&mc); /* zeroed: harmless */
	fp_maskcheck_destroy(NULL);
}

static void test_bad_args(void **state)
{
	struct fp_maskcheck mc;
	static const struct {
		size_t rows, cols;
		enum fp_group g;
		double s;
		unsigned n, m;
		const char *what;
	} bad[] = {
		{ 0, 4, FP_GROUP_ROW, 0.5, 0, 0, "empty shape" },
		{ 4, 0, FP_GROUP_LAYER, 0.5, 0, 0, "empty shape" },
		{ SIZE_MAX / 2, 3, FP_GROUP_ROW, 0.5, 0, 0, "more than 2^53" },
		{ (size_t)1 << 27, (size_t)1 << 27, FP_GROUP_LAYER, 0.5, 0, 0, "more than 2^53" },
		{ 4, 4, FP_GROUP_ROW, -0.1, 0, 0, "sparsity" },
		{ 4, 4, FP_GROUP_COLUMN, 1.5, 0, 0, "sparsity" },
		{ 4, 4, FP_GROUP_LAYER, NAN, 0, 0, "sparsity" },
		{ 4, 4, (enum fp_group)9, 0.5, 0, 0, "unknown comparison group" },
		{ 4, 8, FP_GROUP_NM, 0.5, 0, 4, "bad N:M pattern 0:4" },
		{ 4, 8, FP_GROUP_NM, 0.5, 2, 0, "bad N:M pattern 2:0" },
		{ 4, 8, FP_GROUP_NM, 0.5, 5, 4, "bad N:M pattern 5:4" },
		{ 4, 10, FP_GROUP_NM, 0.5, 2, 4, "10 columns are not a multiple of M = 4" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		uint8_t byte = 0;

		assert_int_equal(fp_maskcheck_init(&mc, bad[i].rows, bad[i].cols, bad[i].g,
						   bad[i].s, bad[i].n, bad[i].m, "t.args"),
				 -EINVAL);
		assert_contains(fp_err_last(), "'t.args'");
		assert_contains(fp_err_last(), bad[i].what);
		/* the failed object is inert: nothing passes */
		assert_int_equal(fp_maskcheck_feed(&mc, &byte, 1), -EINVAL);
		assert_int_equal(fp_maskcheck_finish(&mc), -EINVAL);
		fp_maskcheck_destroy(&mc);
		assert_int_equal(fp_maskcheck_naive(&byte, 1, bad[i].rows, bad[i].cols, bad[i].g,
						    bad[i].s, bad[i].n, bad[i].m, "t.args"),
				 -EINVAL);
		assert_contains(fp_err_last(), bad[i].what);
	}
	/* NULL name */
	assert_int_equal(fp_maskcheck_init(&mc, 0, 1, FP_GROUP_ROW, 0.5, 0, 0, NULL), -EINVAL);
	assert_contains(fp_err_last(), "'matrix'");
	fp_maskcheck_destroy(&mc);
	/* the largest allowed shape initialises (nothing is allocated for it) */
	assert_int_equal(fp_maskcheck_init(&mc, (size_t)1 << 26, (size_t)1 << 27, FP_GROUP_LAYER,
					   0.5, 0, 0, "big"),
			 0);
	fp_maskcheck_destroy(&mc);
}

/* k is floor(size * s) computed in double as the pruners do: 100 * 0.29 = 28.999... -> 28. */
static void test_k_rounding(void **state)
{
	static const struct {
		size_t cols;
		double s;
		unsigned long long k;
	} cases[] = {
		{ 100, 0.29, 28 }, { 10, 0.3, 3 }, { 10, 0.7, 7 }, { 3, 1.0 / 3.0, 1 },
		{ 7, 0.5, 3 },	   { 9, 1.0, 9 },  { 9, 0.0, 0 },  { 1000, 0.57, 570 },
	};

	(void)state;
	for (size_t c = 0; c < sizeof(cases) / sizeof(*cases); c++) {
		uint8_t m[200] = { 0 };
		size_t cols = cases[c].cols, nb = fp_mask_bytes(cols);
		char want[128];

		for (size_t j = 0; j < cases[c].k; j++)
			fp_mask_put(m, j, true);
		assert_int_equal(
			fp_maskcheck_naive(m, nb, 1, cols, FP_GROUP_ROW, cases[c].s, 0, 0, "t.k"),
			0);
		/* one more is wrong, and the message states the required count */
		fp_mask_put(m, cases[c].k == cols ? 0 : cases[c].k, cases[c].k != cols);
		snprintf(want, sizeof(want), "pruned, required %llu ", cases[c].k);
		assert_int_equal(
			fp_maskcheck_naive(m, nb, 1, cols, FP_GROUP_ROW, cases[c].s, 0, 0, "t.k"),
			-EDOM);
		assert_contains(fp_err_last(), want);
	}
}

/* Masks made by fp_select (the pruners' selection) pass, for every group kind. */
static void test_real_selection(void **state)
{
	static const struct shape sel_shapes[] = {
		{ 16, 64 }, { 13, 30 }, { 7, 100 }, { 33, 67 }, { 64, 128 }, { 5, 9 }, { 1, 24 },
	};
	static const double ss[] = { 0.5, 0.3, 0.7, 1.0 / 3.0, 0.29 };
	static const enum fp_group gs[] = { FP_GROUP_ROW, FP_GROUP_LAYER, FP_GROUP_COLUMN };
	static const unsigned pats[][2] = { { 2, 4 }, { 4, 8 }, { 1, 2 }, { 3, 6 } };
	uint64_t rng = 16;
	size_t checked = 0;

	(void)state;
	for (size_t s = 0; s < sizeof(sel_shapes) / sizeof(*sel_shapes); s++) {
		size_t rows = sel_shapes[s].rows, cols = sel_shapes[s].cols, n = rows * cols;
		size_t nb = fp_mask_bytes(n);
		float *w = malloc(n * sizeof(*w));
		uint8_t *m = malloc(nb);
		struct fp_metric_src src = { .kind = FP_METRIC_MAGNITUDE,
					     .x = w,
					     .rows = rows,
					     .cols = cols,
					     .name = "sel" };

		assert_non_null(w);
		assert_non_null(m);
		for (int ties = 0; ties < 2; ties++) {
			/* continuous weights, then a few levels (many ties) */
			for (size_t p = 0; p < n; p++) {
				double u = (double)(fp_test_rand(&rng) >> 11) / 9007199254740992.0;

				w[p] = ties ? (float)((int)(u * 5) - 2) : (float)(u - 0.5);
			}
			for (size_t g = 0; g < 3; g++)
				for (size_t k = 0; k < sizeof(ss) / sizeof(*ss); k++) {
					struct fp_select_spec sp;
					struct rule r = { .g = gs[g], .s = ss[k] };

					assert_int_equal(
						fp_select_spec_init(&sp, gs[g], ss[k], rows, cols),
						0);
					assert_int_equal(fp_select(m, &src, &sp), 0);
					for (int mode = 0; mode < SPLIT_MODES; mode++) {
						int ret = stream_check(m, nb, rows, cols, &r, "sel",
								       mode, &rng);

						if (ret)
							fail_msg("%s", fp_err_last());
					}
					assert_int_equal(naive_check(m, nb, rows, cols, &r, "sel"),
							 0);
					checked++;
				}
			for (size_t p = 0; p < sizeof(pats) / sizeof(*pats); p++) {
				struct fp_select_spec sp = { .group = FP_GROUP_NM,
							     .n = pats[p][0],
							     .m = pats[p][1] };
				struct rule r = { .g = FP_GROUP_NM,
						  .n = pats[p][0],
						  .m = pats[p][1] };

				if (cols % pats[p][1])
					continue;
				assert_int_equal(fp_select(m, &src, &sp), 0);
				assert_int_equal(stream_check(m, nb, rows, cols, &r, "sel",
							      (int)rnd(&rng, SPLIT_MODES), &rng),
						 0);
				assert_int_equal(naive_check(m, nb, rows, cols, &r, "sel"), 0);
				checked++;
			}
		}
		free(w);
		free(m);
	}
	assert_true(checked > 200);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_pass), cmocka_unit_test(test_bit_flips_fail),
		cmocka_unit_test(test_padding),	   cmocka_unit_test(test_agree_naive),
		cmocka_unit_test(test_lengths),	   cmocka_unit_test(test_bad_args),
		cmocka_unit_test(test_k_rounding), cmocka_unit_test(test_real_selection),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
