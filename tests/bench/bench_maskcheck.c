/*
 * bench_maskcheck: throughput of the streaming mask rule check (maskcheck.h) against memcpy.
 *
 *   bench_maskcheck [--rows 8192] [--cols 8192] [--chunk 65536] [--reps 7] [--seed 1]
 *
 * Builds a random (rows, cols) mask at sparsity 0.5 that passes every rule at once: each row
 * has 2 pruned in every 4 columns, and every odd row is the complement of the row above, so
 * rows, columns, the layer and 2:4 are all exactly half (rows even, cols % 4 == 0). Also a
 * (rows - 1, cols + 1) mask with random half rows (neither byte- nor word-aligned rows).
 * Feeds each mask to fp_maskcheck in --chunk byte pieces (as a server receives it) and times
 * init + feeds + finish; times memcpy of the same bytes in the same pieces to another buffer.
 * Prints the median of --reps for both and their ratio (check time / memcpy time).
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "cli.h"
#include "err.h"
#include "mask.h"
#include "maskcheck.h"

#define PROG	 "bench_maskcheck"
#define MAX_REPS 50

struct opts {
	size_t rows, cols, chunk;
	int reps;
	uint64_t seed;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void usage(void)
{
	printf("usage: %s [--rows 8192] [--cols 8192] [--chunk 65536] [--reps 7] [--seed 1]\n"
	       "rows must be even and cols a multiple of 4 (the mask passes every rule)\n",
	       PROG);
}

static void parse_args(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "rows", required_argument, NULL, 'r' },
		{ "cols", required_argument, NULL, 'c' },
		{ "chunk", required_argument, NULL, 'k' },
		{ "reps", required_argument, NULL, 'n' },
		{ "seed", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
		switch (c) {
		case 'r':
			o->rows = (size_t)fp_cli_u64(PROG, "--rows", optarg, 2, 1u << 20);
			break;
		case 'c':
			o->cols = (size_t)fp_cli_u64(PROG, "--cols", optarg, 4, 1u << 20);
			break;
		case 'k':
			o->chunk = (size_t)fp_cli_u64(PROG, "--chunk", optarg, 1, 1u << 30);
			break;
		case 'n':
			o->reps = (int)fp_cli_u64(PROG, "--reps", optarg, 1, MAX_REPS);
			break;
		case 's':
			o->seed = fp_cli_u64(PROG, "--seed", optarg, 1, UINT64_MAX);
			break;
		case 'h':
			usage();
			exit(0);
		default:
			fp_cli_bad_option(PROG, c, argv);
		}
	}
	if (optind < argc)
		fp_cli_fail(PROG, "unexpected argument '%s'", argv[optind]);
	if (o->rows % 2 || o->cols % 4)
		fp_cli_fail(PROG, "--rows must be even and --cols a multiple of 4");
	if ((uint64_t)o->rows * o->cols > (UINT64_C(1) << 32))
		fp_cli_fail(PROG, "--rows * --cols above 2^32");
}

/* m = the all-rules mask described at the top (rows even, cols % 4 == 0). */
static void build_all_rules(uint8_t *m, size_t rows, size_t cols, uint64_t *rng)
{
	static const uint8_t two_of_four[6] = { 0x3, 0x5, 0x6, 0x9, 0xa, 0xc };

	memset(m, 0, fp_mask_bytes(rows * cols));
	for (size_t i = 0; i < rows; i += 2)
		for (size_t j = 0; j < cols; j += 4) {
			unsigned pat = two_of_four[rng_next(rng) % 6];

			for (size_t t = 0; t < 4; t++) {
				bool on = pat >> t & 1;

				fp_mask_put(m, i * cols + j + t, on);
				fp_mask_put(m, (i + 1) * cols + j + t, !on);
			}
		}
}

/* m = random rows with floor(cols / 2) pruned each. idx: (cols) scratch. */
static void build_half_rows(uint8_t *m, size_t rows, size_t cols, size_t *idx, uint64_t *rng)
{
	memset(m, 0, fp_mask_bytes(rows * cols));
	for (size_t i = 0; i < rows; i++) {
		for (size_t j = 0; j < cols; j++)
			idx[j] = j;
		for (size_t t = 0; t < cols / 2; t++) {
			size_t u = t + (size_t)(rng_next(rng) % (cols - t)), v = idx[u];

			idx[u] = idx[t];
			idx[t] = v;
			fp_mask_put(m, i * cols + v, true);
		}
	}
}

/* Seconds for one streaming check; -1 when the check does not pass (a bug). */
static double time_check(const uint8_t *m, size_t rows, size_t cols, enum fp_group g, unsigned n,
			 unsigned mm, size_t chunk)
{
	size_t nb = fp_mask_bytes(rows * cols);
	struct fp_maskcheck mc;
	double t0 = now(), t;
	int r = fp_maskcheck_init(&mc, rows, cols, g, 0.5, n, mm, "bench");

	for (size_t off = 0; r == 0 && off < nb; off += chunk)
		r = fp_maskcheck_feed(&mc, m + off, nb - off < chunk ? nb - off : chunk);
	if (r == 0)
		r = fp_maskcheck_finish(&mc);
	t = now() - t0;
	fp_maskcheck_destroy(&mc);
	if (r) {
		fprintf(stderr, "%s: check failed: %s\n", PROG, fp_err_last());
		return -1;
	}
	return t;
}

static double time_memcpy(uint8_t *dst, const uint8_t *m, size_t nb, size_t chunk)
{
	double t0 = now();

	for (size_t off = 0; off < nb; off += chunk)
		memcpy(dst + off, m + off, nb - off < chunk ? nb - off : chunk);
	__asm__ volatile("" : : "r"(dst) : "memory");
	return now() - t0;
}

struct bcase {
	const char *label;
	int mask; /* 0: all-rules mask, 1: half rows of the odd shape */
	enum fp_group g;
	unsigned n, m;
};

int main(int argc, char **argv)
{
	struct opts o = { .rows = 8192, .cols = 8192, .chunk = 65536, .reps = 7, .seed = 1 };
	static const struct bcase cases[] = {
		{ "layer", 0, FP_GROUP_LAYER, 0, 0 },
		{ "row", 0, FP_GROUP_ROW, 0, 0 },
		{ "row, unaligned rows", 1, FP_GROUP_ROW, 0, 0 },
		{ "2:4", 0, FP_GROUP_NM, 2, 4 },
		{ "column", 0, FP_GROUP_COLUMN, 0, 0 },
	};
	uint8_t *mask[2] = { NULL, NULL }, *dst = NULL;
	size_t rows[2], cols[2], *idx = NULL;
	uint64_t rng;
	int ret = 1;

	parse_args(argc, argv, &o);
	rng = o.seed;
	rows[0] = o.rows;
	cols[0] = o.cols;
	rows[1] = o.rows - 1;
	cols[1] = o.cols + 1;
	for (int k = 0; k < 2; k++) {
		mask[k] = malloc(fp_mask_bytes(rows[k] * cols[k]));
		if (!mask[k])
			goto out;
	}
	dst = malloc(fp_mask_bytes(rows[1] * cols[1]));
	idx = fp_mallocarray(cols[1], sizeof(*idx));
	if (!dst || !idx)
		goto out;
	build_all_rules(mask[0], rows[0], cols[0], &rng);
	build_half_rows(mask[1], rows[1], cols[1], idx, &rng);
	printf("mask rule check: (%zu, %zu) and (%zu, %zu) masks at sparsity 0.5, %zu-byte chunks, "
	       "median of %d\n",
	       rows[0], cols[0], rows[1], cols[1], o.chunk, o.reps);
	for (size_t c = 0; c < sizeof(cases) / sizeof(*cases); c++) {
		const struct bcase *bc = &cases[c];
		size_t nb = fp_mask_bytes(rows[bc->mask] * cols[bc->mask]);
		double tc[MAX_REPS], tm[MAX_REPS], mc, mm;

		for (int i = 0; i < o.reps; i++) {
			tm[i] = time_memcpy(dst, mask[bc->mask], nb, o.chunk);
			tc[i] = time_check(mask[bc->mask], rows[bc->mask], cols[bc->mask], bc->g,
					   bc->n, bc->m, o.chunk);
			if (tc[i] < 0)
				goto out;
		}
		mc = median(tc, o.reps);
		mm = median(tm, o.reps);
		printf("%-20s (%zu, %zu): check %7.3f ms (%6.2f GB/s), memcpy %7.3f ms (%6.2f "
		       "GB/s), check/memcpy %.2f\n",
		       bc->label, rows[bc->mask], cols[bc->mask], mc * 1e3, (double)nb / mc / 1e9,
		       mm * 1e3, (double)nb / mm / 1e9, mc / mm);
	}
	ret = 0;
out:
	if (ret)
		fprintf(stderr, "%s: failed\n", PROG);
	free(mask[0]);
	free(mask[1]);
	free(dst);
	free(idx);
	return ret;
}
