/*
 * FedPrLLM aggregation (aggregate.h): the hand-worked vectors of fedprllm.md §10 A and B, tie
 * rules, weighted votes, weight scaling, the bit-sliced counter against a bit-by-bit reference
 * (odd sizes, 1..70 clients, random batch splits, 1 and 3 threads), the selection against a
 * sort-based reference for every group and tie rule, exact k per group, the file-level driver
 * (outputs checked against a direct computation) and hostile inputs, including the
 * `fedprune aggregate` command line.
 */
#include "test.h"

#include <dirent.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cJSON.h>

#include "aggregate.h"
#include "fileio.h"
#include "dtype.h"
#include "err.h"
#include "mask.h"
#include "par.h"
#include "safetensors.h"

int fp_cmd_aggregate(int argc, char **argv);

/* ---- helpers ---- */

/* n masks of nbits where client c prunes p iff c < counts[p]. Caller frees with free_masks. */
static uint8_t **masks_from_counts(const unsigned *counts, size_t nbits, size_t n)
{
	uint8_t **m = calloc(n, sizeof(*m));

	assert_non_null(m);
	for (size_t c = 0; c < n; c++) {
		m[c] = calloc(1, fp_mask_bytes(nbits));
		assert_non_null(m[c]);
		for (size_t p = 0; p < nbits; p++)
			if (c < counts[p])
				fp_mask_put(m[c], p, true);
	}
	return m;
}

static uint8_t **rand_masks(size_t nbits, size_t n, uint64_t *rng)
{
	uint8_t **m = calloc(n, sizeof(*m));

	assert_non_null(m);
	for (size_t c = 0; c < n; c++) {
		unsigned d = (unsigned)(fp_test_rand(rng) % 101);

		m[c] = calloc(1, fp_mask_bytes(nbits));
		assert_non_null(m[c]);
		for (size_t p = 0; p < nbits; p++)
			if (fp_test_rand(rng) % 100 < d)
				fp_mask_put(m[c], p, true);
	}
	return m;
}

static void free_masks(uint8_t **m, size_t n)
{
	for (size_t c = 0; m && c < n; c++)
		free(m[c]);
	free(m);
}

/* Variants the helpers below cycle through: portable kernels, counts made before select. */
static int g_isa = 2;
static bool g_mat_first;

/* Aggregate masks (all clients in one call) and select into out; returns the aggregator. */
static struct fp_agg *agg_masks(const struct fp_agg_opts *o, const char *name, size_t rows,
				size_t cols, uint8_t **m, const float *w, uint8_t *out,
				struct fp_agg_tensor_stats *st)
{
	struct fp_agg *a = NULL;

	assert_int_equal(fp_agg_new(o, &a), 0);
	fp__agg_isa(a, g_isa);
	assert_int_equal(fp_agg_begin(a, name, rows, cols), 0);
	assert_int_equal(fp_agg_add(a, 0, o->nclients, (const uint8_t *const *)m), 0);
	if (g_mat_first)
		assert_non_null(fp_agg_histogram(a));
	assert_int_equal(fp_agg_select(a, w, out, st), 0);
	return a;
}

static void assert_mask_is(const uint8_t *m, const int *want, size_t nbits)
{
	for (size_t p = 0; p < nbits; p++)
		if (fp_mask_get(m, p) != (want[p] != 0))
			fail_msg("bit %zu is %d, expected %d", p, fp_mask_get(m, p), want[p]);
}

/* ---- fedprllm.md §10 A: 3 clients, 4 x 4, s = 0.5 ---- */

static const unsigned vec_a[16] = { 2, 2, 1, 1, 3, 1, 2, 0, 0, 3, 1, 2, 2, 1, 2, 1 };

static void test_vector_a(void **state)
{
	static const int layer[16] = { 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 1, 0 };
	static const int column[16] = { 1, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 0 };
	static const enum fp_agg_tie ties[] = { FP_AGG_TIE_INDEX, FP_AGG_TIE_MAGNITUDE,
						FP_AGG_TIE_RANDOM };
	uint8_t **m = masks_from_counts(vec_a, 16, 3);
	float w[16];
	uint8_t out[2];
	struct fp_agg_tensor_stats st;
	struct fp_agg *a;

	(void)state;
	for (int i = 0; i < 16; i++)
		w[i] = 1.0f + (float)i;
	for (size_t t = 0; t < 3; t++) {
		struct fp_agg_opts o = {
			.nclients = 3, .sparsity = 0.5, .tie = ties[t], .seed = 7
		};

		/* layer: exactly 8 entries have >= 2 votes, so no rule matters */
		o.group = FP_GROUP_LAYER;
		a = agg_masks(&o, "a", 4, 4, m, w, out, &st);
		for (int p = 0; p < 16; p++)
			assert_int_equal(fp_agg_counts(a)[p], vec_a[p]);
		assert_int_equal(fp_agg_histogram(a)[0], 2);
		assert_int_equal(fp_agg_histogram(a)[1], 6);
		assert_int_equal(fp_agg_histogram(a)[2], 6);
		assert_int_equal(fp_agg_histogram(a)[3], 2);
		assert_mask_is(out, layer, 16);
		assert_int_equal(st.k, 8);
		assert_int_equal(st.pruned, 8);
		assert_true(st.boundary_min == 2 && st.boundary_max == 2);
		assert_int_equal(st.tied, 6);
		assert_int_equal(st.tied_pruned, 6);
		assert_int_equal(st.split_groups, 0);
		fp_agg_free(a);

		/* row: 2 per row, the same mask here */
		o.group = FP_GROUP_ROW;
		fp_agg_free(agg_masks(&o, "a", 4, 4, m, w, out, &st));
		assert_mask_is(out, layer, 16);
		assert_int_equal(st.pruned, 8);
	}
	/* column: 2 per column, ties to the lower row */
	{
		struct fp_agg_opts o = { .nclients = 3,
					 .sparsity = 0.5,
					 .group = FP_GROUP_COLUMN,
					 .tie = FP_AGG_TIE_INDEX };

		fp_agg_free(agg_masks(&o, "a", 4, 4, m, NULL, out, &st));
		assert_mask_is(out, column, 16);
		assert_int_equal(st.groups, 4);
		assert_int_equal(st.k, 2);
		/* columns 0 and 3 each had two entries tied for one place */
		assert_int_equal(st.split_groups, 2);
	}
	free_masks(m, 3);
}

/* Weight scaling with m = 3: a kept entry with count 1 is x 2/3, with count 0 x 1. */
static void test_scaling(void **state)
{
	uint8_t **m = masks_from_counts(vec_a, 16, 3);
	struct fp_agg_opts o = { .nclients = 3, .sparsity = 0.5, .group = FP_GROUP_LAYER };
	float w[16], ws[16];
	uint8_t out[2];
	struct fp_agg *a;

	(void)state;
	for (int i = 0; i < 16; i++)
		w[i] = ws[i] = 0.5f + (float)i * 0.25f;
	a = agg_masks(&o, "a", 4, 4, m, w, out, NULL);
	assert_int_equal(fp_agg_scale(a, out, ws, false), 0);
	for (int p = 0; p < 16; p++) {
		if (fp_mask_get(out, p))
			assert_true(ws[p] == 0.0f);
		else if (vec_a[p] == 1)
			assert_true(ws[p] == w[p] * (2.0f / 3.0f));
		else if (vec_a[p] == 0)
			assert_true(ws[p] == w[p]);
		else
			fail_msg("kept entry %d with %u votes", p, vec_a[p]);
	}
	/* the f16 factor: 2/3 rounded to half first, as the fp16 reference does */
	memcpy(ws, w, sizeof(w));
	assert_int_equal(fp_agg_scale(a, out, ws, true), 0);
	for (int p = 0; p < 16; p++)
		if (!fp_mask_get(out, p) && vec_a[p] == 1)
			assert_true(ws[p] == w[p] * fp_f16_to_f32(fp_f32_to_f16(2.0f / 3.0f)));
	fp_agg_free(a);
	free_masks(m, 3);
}

/* ---- fedprllm.md §10 B: 2 clients, 2 x 4 ---- */

static const float vec_b_w[8] = { 1, -2, 0.5f, 4, -3, 1, 2, -0.25f };
static const int vec_b_c0[8] = { 0, 0, 1, 1, 0, 1, 0, 1 };
static const int vec_b_c1[8] = { 0, 0, 1, 1, 0, 0, 1, 1 };

static uint8_t **vec_b_masks(void)
{
	uint8_t **m = calloc(2, sizeof(*m));

	assert_non_null(m);
	m[0] = calloc(1, 1);
	m[1] = calloc(1, 1);
	assert_true(m[0] && m[1]);
	for (int p = 0; p < 8; p++) {
		fp_mask_put(m[0], (size_t)p, vec_b_c0[p]);
		fp_mask_put(m[1], (size_t)p, vec_b_c1[p]);
	}
	return m;
}

static void test_vector_b(void **state)
{
	static const unsigned g[8] = { 0, 0, 2, 2, 0, 1, 1, 2 };
	static const int row[8] = { 0, 0, 1, 1, 0, 1, 0, 1 };
	static const int column[8] = { 1, 0, 1, 1, 0, 1, 0, 0 };
	static const float row_scaled[8] = { 1, -2, 0, 0, -3, 0, 1, 0 };
	uint8_t **m = vec_b_masks();
	struct fp_agg_opts o = { .nclients = 2, .sparsity = 0.5, .tie = FP_AGG_TIE_INDEX };
	struct fp_agg_tensor_stats st;
	uint8_t out[1], first = 0;
	bool seen[2] = { false, false };
	float w[8];
	struct fp_agg *a;

	(void)state;
	o.group = FP_GROUP_ROW;
	a = agg_masks(&o, "b", 2, 4, m, vec_b_w, out, &st);
	for (int p = 0; p < 8; p++)
		assert_int_equal(fp_agg_counts(a)[p], g[p]);
	assert_mask_is(out, row, 8);
	/* row server + scaling (m = 2) */
	memcpy(w, vec_b_w, sizeof(w));
	assert_int_equal(fp_agg_scale(a, out, w, false), 0);
	for (int p = 0; p < 8; p++)
		assert_true(w[p] == row_scaled[p]);
	fp_agg_free(a);

	o.group = FP_GROUP_COLUMN;
	fp_agg_free(agg_masks(&o, "b", 2, 4, m, vec_b_w, out, &st));
	assert_mask_is(out, column, 8);

	/* layer, k = 4: the three count-2 entries plus one of (1,1), (1,2) */
	o.group = FP_GROUP_LAYER;
	fp_agg_free(agg_masks(&o, "b", 2, 4, m, vec_b_w, out, &st));
	assert_int_equal(out[0], 0x8c | 0x20); /* index: (1,1) = flat 5 */
	assert_int_equal(st.tied, 2);
	assert_int_equal(st.tied_pruned, 1);
	assert_int_equal(st.split_groups, 1);
	assert_true(st.boundary_min == 1);
	o.tie = FP_AGG_TIE_MAGNITUDE; /* |W(1,1)| = 1 < |W(1,2)| = 2 */
	fp_agg_free(agg_masks(&o, "b", 2, 4, m, vec_b_w, out, &st));
	assert_int_equal(out[0], 0x8c | 0x20);
	w[5] = 5.0f; /* now (1,2) is the smaller one */
	memcpy(w, vec_b_w, sizeof(w));
	w[5] = 5.0f;
	fp_agg_free(agg_masks(&o, "b", 2, 4, m, w, out, &st));
	assert_int_equal(out[0], 0x8c | 0x40);
	o.tie = FP_AGG_TIE_RANDOM;
	for (uint64_t seed = 0; seed < 64; seed++) {
		uint8_t again[1];

		o.seed = seed;
		fp_agg_free(agg_masks(&o, "b", 2, 4, m, NULL, out, &st));
		assert_true(out[0] == (0x8c | 0x20) || out[0] == (0x8c | 0x40));
		seen[out[0] == (0x8c | 0x40)] = true;
		fp_agg_free(agg_masks(&o, "b", 2, 4, m, NULL, again, NULL));
		assert_int_equal(out[0], again[0]); /* reproducible */
		if (seed == 0)
			first = out[0];
		/* the key depends on the tensor name too */
		(void)first;
	}
	assert_true(seen[0] && seen[1]); /* differs across seeds */
	free_masks(m, 2);
}

/* ---- weighted votes ---- */

static void test_weighted(void **state)
{
	/* client 0 prunes the first half, clients 1 and 2 the second half */
	size_t n = 64;
	uint8_t **m = calloc(3, sizeof(*m));
	double wts[3] = { 10, 1, 1 };
	struct fp_agg_opts o = {
		.nclients = 3, .sparsity = 0.5, .group = FP_GROUP_LAYER, .tie = FP_AGG_TIE_INDEX
	};
	uint8_t out[8];
	struct fp_agg *a;

	(void)state;
	assert_non_null(m);
	for (int c = 0; c < 3; c++) {
		m[c] = calloc(1, 8);
		assert_non_null(m[c]);
		for (size_t p = 0; p < n; p++)
			fp_mask_put(m[c], p, c == 0 ? p < 32 : p >= 32);
	}
	/* unweighted: 2 votes beat 1 */
	fp_agg_free(agg_masks(&o, "w", 8, 8, m, NULL, out, NULL));
	for (size_t p = 0; p < n; p++)
		assert_int_equal(fp_mask_get(out, p), p >= 32);
	/* weighted: the heavy client dominates */
	o.weights = wts;
	a = agg_masks(&o, "w", 8, 8, m, NULL, out, NULL);
	for (size_t p = 0; p < n; p++) {
		assert_int_equal(fp_mask_get(out, p), p < 32);
		assert_true(fp_agg_wcounts(a)[p] == (p < 32 ? 10.0f : 2.0f));
		assert_int_equal(fp_agg_counts(a)[p], p < 32 ? 1 : 2);
	}
	/* scaling by the kept share of the total weight 12 */
	{
		float w[64];

		for (size_t p = 0; p < n; p++)
			w[p] = 1.0f;
		assert_int_equal(fp_agg_scale(a, out, w, false), 0);
		for (size_t p = 0; p < n; p++)
			assert_true(w[p] == (p < 32 ? 0.0f : (float)(10.0 / 12.0)));
	}
	fp_agg_free(a);
	/* equal weights behave as unweighted */
	wts[0] = 3;
	wts[1] = 3;
	wts[2] = 3;
	fp_agg_free(agg_masks(&o, "w", 8, 8, m, NULL, out, NULL));
	for (size_t p = 0; p < n; p++)
		assert_int_equal(fp_mask_get(out, p), p >= 32);
	free_masks(m, 3);
}

/* ---- counting: fast against the bit-by-bit reference ---- */

static void check_counting(size_t rows, size_t cols, size_t n, bool weighted, uint64_t *rng)
{
	size_t nbits = rows * cols;
	uint8_t **m = rand_masks(nbits, n, rng);
	uint16_t *cref = calloc(nbits, sizeof(*cref));
	float *wref = calloc(nbits, sizeof(*wref));
	double *wts = calloc(n, sizeof(*wts));
	uint64_t *href = calloc(n + 1, sizeof(*href));
	struct fp_agg_opts o = { .nclients = n,
				 .sparsity = 0.5,
				 .group = FP_GROUP_LAYER,
				 .tie = FP_AGG_TIE_INDEX,
				 .pairwise = true };
	struct fp_agg *a = NULL;
	size_t done = 0;

	assert_true(cref && wref && wts && href);
	for (size_t c = 0; c < n; c++)
		wts[c] = (double)(fp_test_rand(rng) % 1000 + 1) / 7.0;
	if (weighted)
		o.weights = wts;
	fp_agg_count_naive(cref, weighted ? wref : NULL, nbits, (const uint8_t *const *)m, n,
			   weighted ? wts : NULL);
	assert_int_equal(fp_agg_new(&o, &a), 0);
	fp__agg_isa(a, g_isa);
	/* the same aggregator serves a larger tensor first, then this one */
	assert_int_equal(fp_agg_begin(a, "big", rows + 3, cols + 5), 0);
	assert_int_equal(fp_agg_begin(a, "t", rows, cols), 0);
	/* one call with every client half the time, else random batches */
	while (done < n) {
		size_t b = (fp_test_rand(rng) & 1) ? n - done : 1 + fp_test_rand(rng) % (n - done);

		assert_int_equal(fp_agg_add(a, done, b, (const uint8_t *const *)(m + done)), 0);
		done += b;
	}
	for (size_t p = 0; p < nbits; p++) {
		if (fp_agg_counts(a)[p] != cref[p])
			fail_msg("%zux%zu, %zu clients: count %zu is %u, expected %u", rows, cols,
				 n, p, fp_agg_counts(a)[p], cref[p]);
		href[cref[p]]++;
		if (weighted)
			assert_memory_equal(&fp_agg_wcounts(a)[p], &wref[p], sizeof(float));
	}
	for (size_t v = 0; v <= n; v++)
		assert_int_equal(fp_agg_histogram(a)[v], href[v]);
	for (size_t c = 0; c < n; c++)
		assert_int_equal(fp_agg_client_pruned(a)[c], fp_mask_count(m[c], nbits));
	if (fp_agg_pairs(a)) {
		const uint64_t *pr = fp_agg_pairs(a);

		for (size_t i = 0; i < n; i++)
			for (size_t j = i; j < n; j++) {
				struct fp_mask_cmp cmp;

				fp_mask_compare(m[i], m[j], nbits, &cmp);
				assert_int_equal(pr[i * n + j], cmp.both);
			}
	} else {
		assert_true(n < 2 || n > FP_AGG_MAX_PAIRS || done != n || 1);
	}
	fp_agg_free(a);
	free_masks(m, n);
	free(cref);
	free(wref);
	free(wts);
	free(href);
}

static void test_counting_vs_naive(void **state)
{
	static const size_t shapes[][2] = { { 1, 1 },	 { 1, 7 },    { 3, 5 },	   { 7, 37 },
					    { 13, 129 }, { 33, 257 }, { 5, 1000 }, { 17, 613 } };
	static const size_t clients[] = { 1, 2, 3, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 70 };
	unsigned saved = fp_par_threads();
	uint64_t rng = 11;

	(void)state;
	for (unsigned th = 1; th <= 3; th += 2)
		for (int isa = 0; isa < 3; isa++) {
			fp_par_set_threads(th);
			g_isa = isa;
			for (size_t s = 0; s < sizeof(shapes) / sizeof(*shapes); s++)
				for (size_t c = 0; c < sizeof(clients) / sizeof(*clients); c++)
					check_counting(shapes[s][0], shapes[s][1], clients[c],
						       (s + c + th) % 3 == 0, &rng);
		}
	g_isa = 2;
	/* a tensor with several full 16-client rounds per thread and a partial last vector */
	fp_par_set_threads(3);
	check_counting(301, 333, 40, false, &rng);
	check_counting(301, 333, 23, true, &rng);
	/* more than 255 clients: u16 counts */
	check_counting(7, 37, 300, false, &rng);
	check_counting(13, 129, 256, true, &rng);
	g_isa = 0;
	check_counting(5, 61, 257, false, &rng);
	g_isa = 2;
	fp_par_set_threads(saved);
}

/* Pairwise intersections are exact only when every client comes in one call. */
static void test_pairs_need_one_batch(void **state)
{
	uint64_t rng = 5;
	uint8_t **m = rand_masks(100, 4, &rng);
	struct fp_agg_opts o = { .nclients = 4, .sparsity = 0.5, .pairwise = true };
	struct fp_agg *a = NULL;

	(void)state;
	assert_int_equal(fp_agg_new(&o, &a), 0);
	assert_int_equal(fp_agg_begin(a, "t", 10, 10), 0);
	assert_int_equal(fp_agg_add(a, 0, 2, (const uint8_t *const *)m), 0);
	assert_int_equal(fp_agg_add(a, 2, 2, (const uint8_t *const *)(m + 2)), 0);
	assert_null(fp_agg_pairs(a));
	assert_int_equal(fp_agg_begin(a, "t", 10, 10), 0);
	assert_int_equal(fp_agg_add(a, 0, 4, (const uint8_t *const *)m), 0);
	assert_non_null(fp_agg_pairs(a));
	fp_agg_free(a);
	o.pairwise = false;
	assert_int_equal(fp_agg_new(&o, &a), 0);
	assert_int_equal(fp_agg_begin(a, "t", 10, 10), 0);
	assert_int_equal(fp_agg_add(a, 0, 4, (const uint8_t *const *)m), 0);
	assert_null(fp_agg_pairs(a));
	fp_agg_free(a);
	free_masks(m, 4);
}

/* ---- selection: fast against the sort-based reference ---- */

static void assert_exact_k(const uint8_t *out, size_t rows, size_t cols, enum fp_group g,
			   uint64_t k)
{
	uint64_t *per = calloc(rows > cols ? rows : cols, sizeof(uint64_t));

	assert_non_null(per);
	if (g == FP_GROUP_LAYER) {
		assert_int_equal(fp_mask_count(out, rows * cols), k);
	} else if (g == FP_GROUP_ROW) {
		fp_mask_count_rows(out, rows, cols, per);
		for (size_t i = 0; i < rows; i++)
			assert_int_equal(per[i], k);
	} else {
		fp_mask_count_cols(out, rows, cols, per);
		for (size_t j = 0; j < cols; j++)
			assert_int_equal(per[j], k);
	}
	free(per);
}

/*
 * Independent of the library's tie keys: in every group, no kept weight has more votes than
 * a pruned one, and among the weights at the boundary vote the pruned ones come first by
 * (|W|, index) for the magnitude rule or by index for the index rule.
 */
static void check_order(const uint8_t *out, const uint16_t *cnt, const float *wc, const float *w,
			size_t rows, size_t cols, enum fp_group g, enum fp_agg_tie tie)
{
	size_t ng = g == FP_GROUP_LAYER ? 1 : g == FP_GROUP_ROW ? rows : cols;
	size_t gs = rows * cols / ng;

	for (size_t gi = 0; gi < ng; gi++) {
		double minp = INFINITY, maxk = -INFINITY;

		for (size_t x = 0; x < gs; x++) {
			size_t p = g == FP_GROUP_LAYER ? x
				   : g == FP_GROUP_ROW ? gi * cols + x
						       : x * cols + gi;
			double v = wc ? wc[p] : cnt[p];

			if (fp_mask_get(out, p))
				minp = v < minp ? v : minp;
			else
				maxk = v > maxk ? v : maxk;
		}
		assert_true(maxk <= minp);
		if (maxk < minp || tie == FP_AGG_TIE_RANDOM)
			continue;
		/* at the boundary: every pruned one precedes every kept one */
		for (size_t x = 0; x < gs; x++) {
			size_t p = g == FP_GROUP_LAYER ? x
				   : g == FP_GROUP_ROW ? gi * cols + x
						       : x * cols + gi;

			if (!fp_mask_get(out, p) || (wc ? wc[p] : cnt[p]) != minp)
				continue;
			for (size_t y = 0; y < gs; y++) {
				size_t q = g == FP_GROUP_LAYER ? y
					   : g == FP_GROUP_ROW ? gi * cols + y
							       : y * cols + gi;
				float ap = fabsf(w[p]), aq = fabsf(w[q]);

				if (fp_mask_get(out, q) || (wc ? wc[q] : cnt[q]) != minp)
					continue;
				if (tie == FP_AGG_TIE_INDEX || ap == aq)
					assert_true(x < y);
				else
					assert_true(ap < aq);
			}
		}
	}
}

static void check_select(size_t rows, size_t cols, size_t n, enum fp_group g, enum fp_agg_tie tie,
			 double s, bool weighted, uint64_t *rng)
{
	size_t nbits = rows * cols;
	uint8_t **m = rand_masks(nbits, n, rng);
	uint8_t *fast = malloc(fp_mask_bytes(nbits)), *ref = malloc(fp_mask_bytes(nbits));
	float *w = malloc(nbits * sizeof(float));
	double *wts = calloc(n, sizeof(double));
	static const float vals[] = { -2, -1, -0.5f, -0.0f, 0, 0.5f, 1, 2, 3 };
	struct fp_agg_opts o = {
		.nclients = n, .sparsity = s, .group = g, .tie = tie, .seed = fp_test_rand(rng)
	};
	struct fp_agg_tensor_stats st;
	struct fp_agg *a;

	assert_true(fast && ref && w && wts);
	for (size_t p = 0; p < nbits; p++)
		w[p] = (fp_test_rand(rng) & 1) ? vals[fp_test_rand(rng) % 9]
					       : (float)(fp_test_rand(rng) % 100000) / 1e4f - 5;
	for (size_t c = 0; c < n; c++)
		wts[c] = (double)(fp_test_rand(rng) % 4 + 1);
	if (weighted)
		o.weights = wts;
	a = agg_masks(&o, "model.layers.3.mlp.up_proj.weight", rows, cols, m, w, fast, &st);
	assert_int_equal(fp_agg_select_naive(ref, fp_agg_counts(a), fp_agg_wcounts(a), w, rows,
					     cols, "model.layers.3.mlp.up_proj.weight", &o),
			 0);
	for (size_t p = 0; p < nbits; p++)
		if (fp_mask_get(fast, p) != fp_mask_get(ref, p))
			fail_msg("%zux%zu n=%zu group %s tie %s s=%g weighted=%d: bit %zu differs",
				 rows, cols, n, fp_group_name(g), fp_agg_tie_name(tie), s, weighted,
				 p);
	if (rows * cols <= 4096)
		check_order(fast, fp_agg_counts(a), fp_agg_wcounts(a), w, rows, cols, g, tie);
	assert_int_equal(st.k, fp_select_k(st.group_size, s));
	assert_exact_k(fast, rows, cols, g, st.k);
	assert_int_equal(st.pruned, fp_mask_count(fast, nbits));
	assert_true(st.tied_pruned <= st.tied);
	fp_agg_free(a);
	free_masks(m, n);
	free(fast);
	free(ref);
	free(w);
	free(wts);
}

static void test_select_vs_naive(void **state)
{
	static const size_t shapes[][2] = { { 1, 1 },  { 1, 9 },   { 9, 1 },   { 4, 4 },
					    { 7, 13 }, { 31, 65 }, { 64, 64 }, { 129, 67 } };
	static const size_t clients[] = { 1, 2, 3, 5, 16, 33 };
	static const double sp[] = { 0, 0.1, 0.5, 0.77, 1 };
	static const enum fp_group groups[] = { FP_GROUP_LAYER, FP_GROUP_ROW, FP_GROUP_COLUMN };
	unsigned saved = fp_par_threads();
	uint64_t rng = 17;
	size_t it = 0;

	(void)state;
	for (size_t s = 0; s < sizeof(shapes) / sizeof(*shapes); s++)
		for (size_t c = 0; c < sizeof(clients) / sizeof(*clients); c++)
			for (int g = 0; g < 3; g++)
				for (int t = 0; t < 3; t++) {
					fp_par_set_threads(1 + (unsigned)(it % 3));
					g_isa = (int)(it % 3);
					g_mat_first = it % 2 == 1;
					check_select(shapes[s][0], shapes[s][1], clients[c],
						     groups[g], (enum fp_agg_tie)t, sp[it % 5],
						     it % 4 == 1, &rng);
					it++;
				}
	/* large enough for many chunks and column blocks on several threads */
	fp_par_set_threads(3);
	for (int g = 0; g < 3; g++)
		for (int t = 0; t < 3; t++) {
			g_isa = t;
			g_mat_first = g == 0 && t == 2;
			check_select(200, 301, 3, groups[g], (enum fp_agg_tie)t, 0.5, false, &rng);
			check_select(173, 97, 7, groups[g], (enum fp_agg_tie)t, 0.3, true, &rng);
			check_select(64, 320, 300, groups[g], (enum fp_agg_tie)t, 0.6, false, &rng);
			check_select(9, 4099, 70, groups[g], (enum fp_agg_tie)t, 0.5, false, &rng);
			/* > 65536 tied entries: the wide first radix digit */
			check_select(400, 300, 2, groups[g], (enum fp_agg_tie)t, 0.5, false, &rng);
		}
	g_isa = 2;
	g_mat_first = false;
	fp_par_set_threads(saved);
}

/* Layer with every count equal: the index rule prunes the first k flat indexes. */
static void test_index_rule_flat_order(void **state)
{
	unsigned counts[60];
	uint8_t **m, out[8];
	struct fp_agg_opts o = {
		.nclients = 2, .sparsity = 0.4, .group = FP_GROUP_LAYER, .tie = FP_AGG_TIE_INDEX
	};

	(void)state;
	for (int p = 0; p < 60; p++)
		counts[p] = 1;
	m = masks_from_counts(counts, 60, 2);
	fp_agg_free(agg_masks(&o, "x", 6, 10, m, NULL, out, NULL));
	for (size_t p = 0; p < 60; p++)
		assert_int_equal(fp_mask_get(out, p), p < 24);
	free_masks(m, 2);
}

/* The random rule: same seed and name give the same mask on 1 and 3 threads; seeds differ. */
static void test_random_reproducible(void **state)
{
	unsigned saved = fp_par_threads();
	uint64_t rng = 99;
	uint8_t **m = rand_masks(300 * 200, 2, &rng);
	size_t nb = fp_mask_bytes(300 * 200);
	uint8_t *a1 = malloc(nb), *a3 = malloc(nb), *b = malloc(nb), *c = malloc(nb);
	struct fp_agg_opts o = {
		.nclients = 2, .sparsity = 0.5, .tie = FP_AGG_TIE_RANDOM, .seed = 1234
	};

	(void)state;
	assert_true(a1 && a3 && b && c);
	for (int g = 0; g < 3; g++) {
		o.group = g == 0 ? FP_GROUP_LAYER : g == 1 ? FP_GROUP_ROW : FP_GROUP_COLUMN;
		o.seed = 1234;
		fp_par_set_threads(1);
		fp_agg_free(agg_masks(&o, "t", 300, 200, m, NULL, a1, NULL));
		fp_par_set_threads(3);
		fp_agg_free(agg_masks(&o, "t", 300, 200, m, NULL, a3, NULL));
		assert_memory_equal(a1, a3, nb);
		o.seed = 1235;
		fp_agg_free(agg_masks(&o, "t", 300, 200, m, NULL, b, NULL));
		assert_memory_not_equal(a1, b, nb);
		o.seed = 1234; /* another tensor name, another key */
		fp_agg_free(agg_masks(&o, "u", 300, 200, m, NULL, c, NULL));
		assert_memory_not_equal(a1, c, nb);
	}
	fp_par_set_threads(saved);
	free_masks(m, 2);
	free(a1);
	free(a3);
	free(b);
	free(c);
}

/* ---- hostile input to the library ---- */

static void test_bad_opts_and_calls(void **state)
{
	struct fp_agg_opts o = { .nclients = 3, .sparsity = 0.5 };
	double wts[3] = { 1, 2, 3 };
	struct fp_agg *a = NULL;
	uint8_t m0[2] = { 0 }, m1[2] = { 0 }, out[2];
	const uint8_t *mm[2] = { m0, m1 };
	float w[12] = { 0 };

	(void)state;
	assert_int_equal(fp_agg_opts_check(&o), 0);
	o.sparsity = -0.1;
	assert_int_equal(fp_agg_new(&o, &a), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "sparsity"));
	o.sparsity = 1.5;
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	o.sparsity = NAN;
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	o.sparsity = 0.5;
	o.nclients = 0;
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	o.nclients = FP_AGG_MAX_CLIENTS + 1;
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	o.nclients = 3;
	o.group = FP_GROUP_NM;
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	o.group = FP_GROUP_LAYER;
	o.tie = (enum fp_agg_tie)7;
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	o.tie = FP_AGG_TIE_MAGNITUDE;
	o.weights = wts;
	wts[1] = 0;
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "client 1"));
	wts[1] = -2;
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	wts[1] = INFINITY;
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	wts[1] = NAN;
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	wts[1] = 1e300; /* infinite as a float */
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	wts[1] = 1e-300; /* zero as a float */
	assert_int_equal(fp_agg_opts_check(&o), -EINVAL);
	o.weights = NULL;
	{
		enum fp_agg_tie t;

		assert_int_equal(fp_agg_tie_parse("random", &t), 0);
		assert_int_equal(t, FP_AGG_TIE_RANDOM);
		assert_int_equal(fp_agg_tie_parse("Random", &t), -EINVAL);
		assert_int_equal(fp_agg_tie_parse(NULL, &t), -EINVAL);
	}

	o.nclients = 2;
	assert_int_equal(fp_agg_new(&o, &a), 0);
	assert_int_equal(fp_agg_add(a, 0, 2, mm), -EINVAL); /* before begin */
	assert_int_equal(fp_agg_begin(a, "t", 0, 4), -EINVAL);
	assert_int_equal(fp_agg_begin(a, "t", 1u << 20, 1u << 20), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "'t'"));
	assert_int_equal(fp_agg_begin(a, "t", 3, 4), 0);
	assert_int_equal(fp_agg_select(a, w, out, NULL), -EINVAL); /* no client yet */
	assert_int_equal(fp_agg_scale(a, out, w, false), -EINVAL);
	assert_int_equal(fp_agg_add(a, 1, 1, mm), -EINVAL); /* out of order */
	assert_int_equal(fp_agg_add(a, 0, 3, mm), -EINVAL); /* too many */
	assert_int_equal(fp_agg_add(a, 0, 0, mm), -EINVAL);
	m1[1] = 0x10; /* bit 12 of a 12-bit mask: padding */
	assert_int_equal(fp_agg_add(a, 0, 2, mm), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "padding"));
	m1[1] = 0;
	assert_int_equal(fp_agg_add(a, 0, 1, mm), 0);
	assert_int_equal(fp_agg_add(a, 0, 1, mm), -EINVAL); /* client 0 twice */
	assert_int_equal(fp_agg_add(a, 1, 1, mm + 1), 0);
	assert_int_equal(fp_agg_select(a, NULL, out, NULL), -EINVAL); /* magnitude needs w */
	assert_non_null(strstr(fp_err_last(), "magnitude"));
	/* all votes 0: everything tied; a NaN among the tied is refused, naming it */
	w[7] = NAN;
	assert_int_equal(fp_agg_select(a, w, out, NULL), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "(1, 3)"));
	/* with sparsity 1 nothing needs the tie rule: the NaN is not looked at */
	fp_agg_free(a);
	o.sparsity = 1;
	assert_int_equal(fp_agg_new(&o, &a), 0);
	assert_int_equal(fp_agg_begin(a, "t", 3, 4), 0);
	assert_int_equal(fp_agg_add(a, 0, 2, mm), 0);
	assert_int_equal(fp_agg_select(a, w, out, NULL), 0);
	assert_int_equal(fp_mask_count(out, 12), 12);
	fp_agg_free(a);
	fp_agg_free(NULL);
}

/* ---- the file-level driver ---- */

struct tfix {
	char *dir, *model, *out;
	char *mask[3];
};

#define NT 4
static const char *const t_names[NT] = {
	"model.layers.0.self_attn.q_proj.weight",
	"model.layers.0.mlp.down_proj.weight",
	"model.layers.1.self_attn.q_proj.weight",
	"model.layers.1.mlp.down_proj.weight",
};
static const size_t t_rows[NT] = { 8, 8, 8, 8 };
static const size_t t_cols[NT] = { 8, 12, 8, 12 };
static const enum fp_dtype t_dt[NT] = { FP_DT_F16, FP_DT_F16, FP_DT_F32, FP_DT_BF16 };

static float t_value(size_t i, size_t p)
{
	return (float)((int)((p * 37 + i * 11) % 29) - 14) / 8.0f;
}

/* A small model directory: embedding, norm and four decoder linears in three dtypes. */
static void write_model(const char *dir)
{
	struct fp_st_decl d[NT + 2];
	struct fp_st_writer *w = NULL;
	char *path = NULL;
	static const char cfg[] = "{\"architectures\": [\"LlamaForCausalLM\"]}\n";

	free(fp_test_write_file(dir, "config.json", cfg, sizeof(cfg) - 1));
	d[0] = (struct fp_st_decl){ "model.embed_tokens.weight", FP_DT_F32, 2, { 16, 8 } };
	d[1] = (struct fp_st_decl){ "model.norm.weight", FP_DT_F32, 1, { 8 } };
	for (size_t i = 0; i < NT; i++)
		d[2 + i] = (struct fp_st_decl){ t_names[i], t_dt[i], 2, { t_rows[i], t_cols[i] } };
	assert_true(asprintf(&path, "%s/model.safetensors", dir) > 0);
	assert_int_equal(fp_st_writer_open(path, d, NT + 2, NULL, &w), 0);
	for (size_t p = 0; p < 16 * 8; p++) {
		float v = (float)p;

		assert_int_equal(fp_st_writer_write(w, &v, 4), 0);
	}
	for (size_t p = 0; p < 8; p++) {
		float v = 1;

		assert_int_equal(fp_st_writer_write(w, &v, 4), 0);
	}
	for (size_t i = 0; i < NT; i++)
		for (size_t p = 0; p < t_rows[i] * t_cols[i]; p++) {
			float v = t_value(i, p);
			uint16_t h = t_dt[i] == FP_DT_F16 ? fp_f32_to_f16(v) : fp_f32_to_bf16(v);

			if (t_dt[i] == FP_DT_F32)
				assert_int_equal(fp_st_writer_write(w, &v, 4), 0);
			else
				assert_int_equal(fp_st_writer_write(w, &h, 2), 0);
		}
	assert_int_equal(fp_st_writer_close(w), 0);
	free(path);
}

/* Mask file of client c over the tensors [0, n) with names[] and shapes (rows, cols). */
static char *write_mask(const char *dir, const char *file, size_t n, const char *const *names,
			const size_t *rows, const size_t *cols, unsigned c)
{
	struct fp_mask_info decl[NT];
	struct fp_mask_writer *w = NULL;
	char *path = NULL;

	for (size_t i = 0; i < n; i++)
		decl[i] = (struct fp_mask_info){ .name = names[i],
						 .ndim = 2,
						 .dims = { rows[i], cols[i] } };
	assert_true(asprintf(&path, "%s/%s", dir, file) > 0);
	assert_int_equal(fp_mask_writer_open(path, decl, n, &w), 0);
	for (size_t i = 0; i < n; i++) {
		size_t nbits = rows[i] * cols[i];
		uint8_t buf[32] = { 0 };

		for (size_t p = 0; p < nbits; p++)
			fp_mask_put(buf, p, (p * (c + 3) + i * 5 + c) % 7 < 3 + c);
		assert_int_equal(fp_mask_writer_add(w, buf, fp_mask_bytes(nbits)), 0);
	}
	assert_int_equal(fp_mask_writer_close(w), 0);
	return path;
}

static void fix_init(struct tfix *f)
{
	f->dir = fp_test_mkdtemp();
	assert_true(asprintf(&f->model, "%s/model", f->dir) > 0);
	assert_true(asprintf(&f->out, "%s/out", f->dir) > 0);
	assert_int_equal(mkdir(f->model, 0777), 0);
	write_model(f->model);
	for (unsigned c = 0; c < 3; c++) {
		char name[32];

		snprintf(name, sizeof(name), "client%u.fpmask", c);
		f->mask[c] = write_mask(f->dir, name, NT, t_names, t_rows, t_cols, c);
	}
}

static void fix_free(struct tfix *f)
{
	fp_test_rmtree(f->dir);
	free(f->dir);
	free(f->model);
	free(f->out);
	for (int c = 0; c < 3; c++)
		free(f->mask[c]);
}

static struct fp_agg_job fix_job(const struct tfix *f, enum fp_group g, enum fp_agg_tie t)
{
	return (struct fp_agg_job){
		.model_dir = f->model,
		.mask_paths = (const char *const *)f->mask,
		.opts = { .nclients = 3, .sparsity = 0.5, .group = g, .tie = t },
		.agreement = true,
		.require_all = true,
		.out_dir = f->out
	};
}

static bool path_exists(const char *p)
{
	struct stat sb;

	return stat(p, &sb) == 0;
}

static double jget(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	assert_true(cJSON_IsNumber(v));
	return v->valuedouble;
}

static void check_run_outputs(const struct tfix *f, const struct fp_agg_job *job, const cJSON *rep)
{
	struct fp_mask_set *gm = NULL, *cm[3] = { NULL, NULL, NULL };
	struct fp_st_model *src = NULL, *dst = NULL;
	const cJSON *tens, *ag, *blocks;
	double inter[2][3][3] = { { { 0 } } };

	assert_int_equal(fp_st_model_open(f->model, &src), 0);
	assert_int_equal(fp_st_model_open(f->out, &dst), 0);
	for (int c = 0; c < 3; c++)
		assert_int_equal(fp_mask_set_load(f->mask[c], &cm[c]), 0);
	{
		char *p = NULL;

		assert_true(asprintf(&p, "%s/mask.fpmask", f->out) > 0);
		assert_int_equal(fp_mask_set_load(p, &gm), 0);
		free(p);
	}
	assert_int_equal(gm->count, NT);
	tens = cJSON_GetObjectItemCaseSensitive(rep, "tensors");
	assert_int_equal(cJSON_GetArraySize(tens), NT);
	for (size_t i = 0; i < NT; i++) {
		size_t nbits = t_rows[i] * t_cols[i];
		const struct fp_st_tensor *st = fp_st_model_find(src, t_names[i]);
		const struct fp_st_tensor *dt = fp_st_model_find(dst, t_names[i]);
		float w[96], got[96], ws[96];
		uint8_t want[12];
		uint8_t *cb[3] = { cm[0]->bits[i], cm[1]->bits[i], cm[2]->bits[i] };
		struct fp_agg *a;
		const cJSON *ti = cJSON_GetArrayItem(tens, (int)i);
		const cJSON *hist = cJSON_GetObjectItemCaseSensitive(ti, "vote_histogram");
		double hsum = 0;

		assert_non_null(st);
		assert_non_null(dt);
		assert_int_equal(dt->dtype, st->dtype);
		assert_int_equal(fp_st_to_f32(st, w), 0);
		assert_int_equal(fp_st_to_f32(dt, got), 0);
		a = agg_masks(&job->opts, t_names[i], t_rows[i], t_cols[i], cb, w, want, NULL);
		assert_string_equal(gm->info[i].name, t_names[i]);
		if (memcmp(gm->bits[i], want, fp_mask_bytes(nbits)) != 0)
			fail_msg("tensor %zu, group %s, tie %s: global mask differs", i,
				 fp_group_name(job->opts.group), fp_agg_tie_name(job->opts.tie));
		memcpy(ws, w, sizeof(ws));
		if (job->scale)
			assert_int_equal(fp_agg_scale(a, want, ws, st->dtype == FP_DT_F16), 0);
		for (size_t p = 0; p < nbits; p++) {
			float e = fp_mask_get(want, p) ? 0.0f : ws[p];

			if (st->dtype == FP_DT_F16)
				e = fp_f16_to_f32(fp_f32_to_f16(e));
			else if (st->dtype == FP_DT_BF16)
				e = fp_bf16_to_f32(fp_f32_to_bf16(e));
			assert_memory_equal(&got[p], &e, sizeof(float));
		}
		assert_string_equal(cJSON_GetObjectItemCaseSensitive(ti, "name")->valuestring,
				    t_names[i]);
		assert_int_equal((uint64_t)jget(ti, "pruned"), fp_mask_count(want, nbits));
		assert_int_equal(cJSON_GetArraySize(hist), 4);
		for (int v = 0; v < 4; v++) {
			assert_int_equal((uint64_t)cJSON_GetArrayItem(hist, v)->valuedouble,
					 fp_agg_histogram(a)[v]);
			hsum += cJSON_GetArrayItem(hist, v)->valuedouble;
		}
		assert_true(hsum == (double)nbits);
		for (int x = 0; x < 3; x++)
			for (int y = 0; y < 3; y++) {
				struct fp_mask_cmp cmp;

				fp_mask_compare(cb[x], cb[y], nbits, &cmp);
				inter[i / 2][x][y] += (double)cmp.both;
			}
		fp_agg_free(a);
	}
	/* the untouched tensors are copied */
	{
		const struct fp_st_tensor *a = fp_st_model_find(src, "model.embed_tokens.weight");
		const struct fp_st_tensor *b = fp_st_model_find(dst, "model.embed_tokens.weight");

		assert_non_null(b);
		assert_int_equal(a->nbytes, b->nbytes);
		assert_memory_equal(a->data, b->data, a->nbytes);
	}
	/* agreement per block: mean over the 3 client pairs of the Jaccard index */
	ag = cJSON_GetObjectItemCaseSensitive(rep, "agreement");
	blocks = cJSON_GetObjectItemCaseSensitive(ag, "blocks");
	assert_int_equal(cJSON_GetArraySize(blocks), 2);
	for (int b = 0; b < 2; b++) {
		const cJSON *bo = cJSON_GetArrayItem(blocks, b);
		double mean = 0;

		for (int x = 0; x < 3; x++)
			for (int y = x + 1; y < 3; y++) {
				double in = inter[b][x][y];

				mean += in / (inter[b][x][x] + inter[b][y][y] - in) / 3;
			}
		assert_true(jget(bo, "block") == b);
		assert_true(fabs(jget(bo, "mean_pairwise_jaccard") - mean) < 1e-12);
		assert_true(jget(bo, "pooled_jaccard") > 0 && jget(bo, "pooled_jaccard") <= 1);
	}
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(rep, "participants")),
			 3);
	fp_mask_set_free(gm);
	for (int c = 0; c < 3; c++)
		fp_mask_set_free(cm[c]);
	fp_st_model_close(src);
	fp_st_model_close(dst);
}

static void test_run_files(void **state)
{
	static const enum fp_group groups[] = { FP_GROUP_LAYER, FP_GROUP_ROW, FP_GROUP_COLUMN };
	struct tfix f;
	cJSON *rep = NULL, *disk;
	char *path = NULL, *text;
	FILE *fp;
	long len;

	(void)state;
	fix_init(&f);
	for (int g = 0; g < 3; g++)
		for (int t = 0; t < 3; t++) {
			struct fp_agg_job job = fix_job(&f, groups[g], (enum fp_agg_tie)t);

			job.scale = (g + t) % 2 == 1;
			job.batch_mem = t == 2 ? 1 : 0; /* one client at a time: no pairwise */
			if (t == 2)
				job.agreement = false;
			fp_test_rmtree(f.out);
			fp_err_clear();
			assert_int_equal(fp_agg_run(&job, &rep), 0);
			if (t != 2)
				check_run_outputs(&f, &job, rep);
			else
				assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(
					cJSON_GetObjectItemCaseSensitive(rep, "agreement"),
					"mean_pairwise_jaccard")));
			cJSON_Delete(rep);
			rep = NULL;
		}
	/* report.json on disk parses and has the settings */
	assert_true(asprintf(&path, "%s/report.json", f.out) > 0);
	fp = fopen(path, "rb");
	assert_non_null(fp);
	fseek(fp, 0, SEEK_END);
	len = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	text = calloc(1, (size_t)len + 1);
	assert_int_equal(fread(text, 1, (size_t)len, fp), (size_t)len);
	fclose(fp);
	disk = cJSON_Parse(text);
	assert_non_null(disk);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(
				    cJSON_GetObjectItemCaseSensitive(disk, "settings"), "group")
				    ->valuestring,
			    "column");
	assert_true(jget(cJSON_GetObjectItemCaseSensitive(disk, "overall"), "weights") == 320);
	cJSON_Delete(disk);
	free(text);
	free(path);
	/* OUT exists now: refused */
	{
		struct fp_agg_job job = fix_job(&f, FP_GROUP_LAYER, FP_AGG_TIE_MAGNITUDE);

		assert_int_equal(fp_agg_run(&job, NULL), -EEXIST);
	}
	/* mask_only: the same mask file, and only the mask and the report (no model files) */
	{
		struct fp_agg_job job = fix_job(&f, FP_GROUP_LAYER, FP_AGG_TIE_MAGNITUDE);
		char *full = NULL, *only = NULL, *a, *b;
		size_t la, lb, nfiles = 0;
		struct dirent *de;
		DIR *d;

		fp_test_rmtree(f.out);
		assert_int_equal(fp_agg_run(&job, NULL), 0);
		assert_true(asprintf(&full, "%s.full", f.out) > 0);
		assert_int_equal(rename(f.out, full), 0);
		job.mask_only = true;
		assert_int_equal(fp_agg_run(&job, NULL), 0);
		d = opendir(f.out);
		assert_non_null(d);
		while ((de = readdir(d)))
			if (de->d_name[0] != '.') {
				nfiles++;
				assert_true(strcmp(de->d_name, "mask.fpmask") == 0 ||
					    strcmp(de->d_name, "report.json") == 0);
			}
		closedir(d);
		assert_int_equal(nfiles, 2);
		assert_true(asprintf(&only, "%s/mask.fpmask", f.out) > 0);
		free(full);
		assert_true(asprintf(&full, "%s.full/mask.fpmask", f.out) > 0);
		assert_int_equal(fp_read_file(full, 1u << 20, &a, &la), 0);
		assert_int_equal(fp_read_file(only, 1u << 20, &b, &lb), 0);
		assert_int_equal(la, lb);
		assert_memory_equal(a, b, la);
		/* an existing non-empty OUT is refused here too */
		assert_int_equal(fp_agg_run(&job, NULL), -EEXIST);
		free(a);
		free(b);
		free(only);
		free(full);
		assert_true(asprintf(&full, "%s.full", f.out) > 0);
		fp_test_rmtree(full);
		free(full);
	}
	fix_free(&f);
}

/* Run job, expect -EINVAL with a message holding want1 and want2; OUT must not appear. */
static void expect_refused(const struct tfix *f, const struct fp_agg_job *job, const char *want1,
			   const char *want2)
{
	fp_test_rmtree(f->out);
	fp_err_clear();
	assert_int_equal(fp_agg_run(job, NULL), -EINVAL);
	if (!strstr(fp_err_last(), want1) || (want2 && !strstr(fp_err_last(), want2)))
		fail_msg("message '%s' lacks '%s' / '%s'", fp_err_last(), want1,
			 want2 ? want2 : "");
	assert_false(path_exists(f->out));
}

/* Write the mask files of the three clients over names/shapes (tensors [0, n)) as PREFIXc. */
static void set_masks(struct tfix *f, const char *prefix, size_t n, const char *const *names,
		      const size_t *rows, const size_t *cols)
{
	for (unsigned c = 0; c < 3; c++) {
		char nm[32];

		free(f->mask[c]);
		snprintf(nm, sizeof(nm), "%s%u.fpmask", prefix, c);
		f->mask[c] = write_mask(f->dir, nm, n, names, rows, cols, c);
	}
}

static void test_run_hostile(void **state)
{
	struct tfix f;
	struct fp_agg_job job;
	const char *names2[NT] = { t_names[0], t_names[1], t_names[2], t_names[3] };
	size_t rows2[NT] = { 8, 8, 8, 8 }, cols2[NT] = { 8, 12, 8, 12 };
	char *keep;

	(void)state;
	fix_init(&f);
	job = fix_job(&f, FP_GROUP_LAYER, FP_AGG_TIE_MAGNITUDE);
	keep = f.mask[2];

	/* another tensor name in client 2's file */
	names2[1] = "model.layers.0.mlp.up_proj.weight";
	f.mask[2] = write_mask(f.dir, "names.fpmask", NT, names2, rows2, cols2, 2);
	expect_refused(&f, &job, "names.fpmask", "model.layers.0.mlp.up_proj.weight");
	free(f.mask[2]);
	names2[1] = t_names[1];

	/* another shape in client 2's file */
	rows2[1] = 12;
	cols2[1] = 8;
	f.mask[2] = write_mask(f.dir, "shape.fpmask", NT, names2, rows2, cols2, 2);
	expect_refused(&f, &job, "shape.fpmask", t_names[1]);
	free(f.mask[2]);

	/* fewer tensors in client 2's file */
	f.mask[2] = write_mask(f.dir, "few.fpmask", 3, t_names, t_rows, t_cols, 2);
	expect_refused(&f, &job, "few.fpmask", "3 tensors");
	free(f.mask[2]);
	f.mask[2] = keep;

	/* every file alike, but a shape the model does not have */
	set_masks(&f, "s", NT, names2, rows2, cols2);
	expect_refused(&f, &job, "differs from the model", t_names[1]);
	rows2[1] = 8;
	cols2[1] = 12;

	/* a tensor the model lacks */
	names2[3] = "model.layers.1.mlp.gate_proj.weight";
	set_masks(&f, "n", NT, names2, rows2, cols2);
	expect_refused(&f, &job, "not in the model", "gate_proj");
	names2[3] = t_names[3];

	/* a 1-D tensor of the model as a mask */
	names2[3] = "model.norm.weight";
	rows2[3] = 1;
	cols2[3] = 8;
	set_masks(&f, "d", NT, names2, rows2, cols2);
	expect_refused(&f, &job, "model.norm.weight", "differs from the model");
	names2[3] = t_names[3];
	rows2[3] = 8;
	cols2[3] = 12;

	/* a decoder linear of the model not covered */
	set_masks(&f, "p", 3, names2, rows2, cols2);
	expect_refused(&f, &job, "not covered", t_names[3]);
	job.require_all = false; /* allowed when not required (an iterative round) */
	fp_test_rmtree(f.out);
	assert_int_equal(fp_agg_run(&job, NULL), 0);
	assert_true(path_exists(f.out));
	job.require_all = true;

	/* a corrupt mask file: one flipped bit in the body of the last tensor */
	set_masks(&f, "c", NT, names2, rows2, cols2);
	{
		FILE *fp = fopen(f.mask[1], "r+b");
		long end;
		int ch;

		assert_non_null(fp);
		fseek(fp, 0, SEEK_END);
		end = ftell(fp);
		fseek(fp, end - 32 - 32 - 3, SEEK_SET); /* inside the last tensor's bits */
		ch = fgetc(fp);
		fseek(fp, end - 32 - 32 - 3, SEEK_SET);
		fputc(ch ^ 0x10, fp);
		fclose(fp);
	}
	expect_refused(&f, &job, "c1.fpmask", t_names[3]);
	/* a file that is not a mask file at all */
	free(f.mask[1]);
	f.mask[1] = fp_test_write_file(f.dir, "junk.fpmask", "hello", 5);
	expect_refused(&f, &job, "junk.fpmask", NULL);
	/* a missing file */
	free(f.mask[1]);
	assert_true(asprintf(&f.mask[1], "%s/missing.fpmask", f.dir) > 0);
	fp_test_rmtree(f.out);
	assert_int_equal(fp_agg_run(&job, NULL), -ENOENT);
	assert_non_null(strstr(fp_err_last(), "missing.fpmask"));
	assert_false(path_exists(f.out));
	/* a job without masks */
	job.mask_paths = NULL;
	assert_int_equal(fp_agg_run(&job, NULL), -EINVAL);
	fix_free(&f);
}

/* ---- the command line ---- */

/* Run `fedprune aggregate ARGS` in a child; returns its exit status, stderr text in *err. */
static int run_cmd(const char *dir, char **argv, char **err)
{
	char *path = NULL;
	int argc = 0, status = -1;
	pid_t pid;
	FILE *fp;
	long len;

	while (argv[argc])
		argc++;
	assert_true(asprintf(&path, "%s/stderr.txt", dir) > 0);
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (!freopen(path, "w", stderr) || !freopen("/dev/null", "w", stdout))
			_exit(99);
		status = fp_cmd_aggregate(argc, argv);
		fflush(NULL);
		_exit(status);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	fp = fopen(path, "rb");
	assert_non_null(fp);
	fseek(fp, 0, SEEK_END);
	len = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	*err = calloc(1, (size_t)len + 1);
	assert_non_null(*err);
	if (len)
		assert_int_equal(fread(*err, 1, (size_t)len, fp), (size_t)len);
	fclose(fp);
	free(path);
	return WEXITSTATUS(status);
}

static void expect_usage(const struct tfix *f, char **argv, const char *want)
{
	char *err = NULL;

	assert_int_equal(run_cmd(f->dir, argv, &err), 2);
	if (!strstr(err, want))
		fail_msg("stderr '%s' lacks '%s'", err, want);
	free(err);
}

static void test_cli(void **state)
{
	struct tfix f;
	char *err = NULL;

	(void)state;
	fix_init(&f);
	{
		char *argv[] = { "aggregate", "--model",   f.model,   "-k", f.mask[0], "-k",
				 f.mask[1],   "-k",	   f.mask[2], "-s", "0.5",     "-o",
				 f.out,	      "--weights", "1,2",     NULL };

		expect_usage(&f, argv, "--weights has 2 values for 3 masks");
	}
	{
		char *argv[] = { "aggregate", "--model", f.model, "-k",	 f.mask[0],
				 "-k",	      f.mask[1], "-s",	  "0.5", "-o",
				 f.out,	      "-w",	 "1,0",	  NULL };

		expect_usage(&f, argv, "value 2 is '0'");
	}
	{
		char *argv[] = { "aggregate", "--model", f.model, "-k",	 f.mask[0],
				 "-k",	      f.mask[1], "-s",	  "0.5", "-o",
				 f.out,	      "-w",	 "1,-3",  NULL };

		expect_usage(&f, argv, "'-3'");
	}
	{
		char *argv[] = { "aggregate", "--model", f.model, "-k",	 f.mask[0],
				 "-s",	      "1.5",	 "-o",	  f.out, NULL };

		expect_usage(&f, argv, "--sparsity");
	}
	{
		char *argv[] = { "aggregate", "--model", f.model, "-k",	    f.mask[0], "-s",
				 "0.5",	      "-o",	 f.out,	  "--seed", "3",       NULL };

		expect_usage(&f, argv, "--seed only applies");
	}
	{
		char *argv[] = { "aggregate", "--model", f.model, "-k", f.mask[0], "-s",
				 "0.5",	      "-o",	 f.out,	  "-g", "nm",	   NULL };

		expect_usage(&f, argv, "--group");
	}
	{
		char *argv[] = { "aggregate", "--model", f.model, "-s", "0.5", "-o", f.out, NULL };

		expect_usage(&f, argv, "--mask");
	}
	{
		char *argv[] = { "aggregate", "--model", f.model, "-k",		 f.mask[0], "-s",
				 "0.5",	      "-o",	 f.out,	  "--tie-break", "coin",    NULL };

		expect_usage(&f, argv, "--tie-break");
	}
	{
		char *argv[] = { "aggregate", "--model", f.model,   "-k",      f.mask[0], "-k",
				 f.mask[1],   "-k",	 f.mask[2], "-s",      "0.5",	  "-o",
				 f.out,	      "-b",	 "random",  "--seed",  "9",	  "-w",
				 "100,1,1",   "-g",	 "row",	    "--scale", NULL };

		assert_int_equal(run_cmd(f.dir, argv, &err), 0);
		assert_string_equal(err, "");
		free(err);
		assert_true(path_exists(f.out));
	}
	{
		/* OUT is not empty now: a runtime failure, exit 1, naming it */
		char *argv[] = { "aggregate", "--model", f.model, "-k",	 f.mask[0],
				 "-s",	      "0.5",	 "-o",	  f.out, NULL };

		assert_int_equal(run_cmd(f.dir, argv, &err), 1);
		if (!strstr(err, f.out))
			fail_msg("stderr '%s' does not name %s", err, f.out);
		free(err);
	}
	fix_free(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vector_a),
		cmocka_unit_test(test_scaling),
		cmocka_unit_test(test_vector_b),
		cmocka_unit_test(test_weighted),
		cmocka_unit_test(test_counting_vs_naive),
		cmocka_unit_test(test_pairs_need_one_batch),
		cmocka_unit_test(test_select_vs_naive),
		cmocka_unit_test(test_index_rule_flat_order),
		cmocka_unit_test(test_random_reproducible),
		cmocka_unit_test(test_bad_opts_and_calls),
		cmocka_unit_test(test_run_files),
		cmocka_unit_test(test_run_hostile),
		cmocka_unit_test(test_cli),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
