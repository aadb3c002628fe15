/*
 * bench_aggregate: server aggregation benchmark of issue 6 (docs/benchmarks.md, "Aggregation").
 *
 *   bench_aggregate [--clients 64] [--tensors 25] [--rows 2048] [--cols 2048] [--reps 5]
 *                   [--threads 2] [--sparsity 0.5] [--seed 1] [--pairs]
 *
 * Builds --clients random client masks (~50 % density, each bit independent) over --tensors
 * matrices of rows x cols (default 25 x 2048 x 2048 = 104.9 M weights) and random dense f32
 * weights, all in memory. Then, alternating the order in every repetition, times
 *   memcpy     copying every client's mask bytes (clients x weights / 8 bytes) into a second
 *              buffer of the same size, split over --threads threads like the rest;
 *   count      fp_agg_begin + fp_agg_add of all clients, tensor by tensor (counts and vote
 *              histogram final);
 *   count+sel  the same plus fp_agg_select (layer groups, magnitude ties, exactly k per tensor).
 * Prints the medians and the ratios count / memcpy (target <= 2) and count+sel / memcpy
 * (target <= 6). --pairs also times the pairwise client agreement once (report only).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aggregate.h"
#include "alloc.h"
#include "cli.h"
#include "err.h"
#include "mask.h"
#include "par.h"

#define PROG	 "bench_aggregate"
#define MAX_REPS 50

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU seconds of all threads of the process. */
static double cpu_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
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

struct bench {
	size_t clients, tensors, rows, cols, nbytes;
	uint8_t **src; /* (tensors * clients) masks of nbytes */
	uint8_t *dst;  /* tensors * clients * nbytes */
	float **w;     /* (tensors) rows * cols */
	uint8_t *out;  /* nbytes */
	struct fp_agg *agg;
};

struct copy_ctx {
	struct bench *b;
};

/* Copy the masks of items [b, e) (item = tensor * clients + client). */
static void copy_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct bench *x = ((struct copy_ctx *)p)->b;

	(void)tid;
	for (size_t i = b; i < e; i++)
		memcpy(x->dst + i * x->nbytes, x->src[i], x->nbytes);
}

static double run_memcpy(struct bench *b, double *cpu)
{
	struct copy_ctx c = { b };
	double t0 = now(), c0 = cpu_now();

	fp_par_for(b->tensors * b->clients, 1, copy_task, &c);
	*cpu = cpu_now() - c0;
	return now() - t0;
}

/*
 * Count (and select if sel; with hist also make the byte counts and the vote histogram the
 * report needs, as fedprune aggregate does) every tensor; returns seconds or -1.
 */
static double run_agg(struct bench *b, bool sel, bool hist, uint64_t *ret_pruned, double *cpu)
{
	double t0 = now(), c0 = cpu_now();
	uint64_t pruned = 0;

	for (size_t t = 0; t < b->tensors; t++) {
		struct fp_agg_tensor_stats st;

		if (fp_agg_begin(b->agg, "t", b->rows, b->cols) < 0 ||
		    fp_agg_add(b->agg, 0, b->clients,
			       (const uint8_t *const *)(b->src + t * b->clients)) < 0)
			return -1;
		if (hist && !fp_agg_histogram(b->agg))
			return -1;
		if (sel) {
			if (fp_agg_select(b->agg, b->w[t], b->out, &st) < 0)
				return -1;
			pruned += st.pruned;
		}
	}
	if (ret_pruned)
		*ret_pruned = pruned;
	*cpu = cpu_now() - c0;
	return now() - t0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "clients", required_argument, NULL, 'c' },
		{ "tensors", required_argument, NULL, 'n' },
		{ "rows", required_argument, NULL, 'r' },
		{ "cols", required_argument, NULL, 'k' },
		{ "reps", required_argument, NULL, 'R' },
		{ "threads", required_argument, NULL, 't' },
		{ "sparsity", required_argument, NULL, 's' },
		{ "seed", required_argument, NULL, 'S' },
		{ "pairs", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct bench b = { .clients = 64, .tensors = 25, .rows = 2048, .cols = 2048 };
	struct fp_agg_opts o = { .group = FP_GROUP_LAYER,
				 .tie = FP_AGG_TIE_MAGNITUDE,
				 .sparsity = 0.5 };
	double tm[MAX_REPS], tc[MAX_REPS], ts[MAX_REPS], mm, mc, ms;
	double um[MAX_REPS], uc[MAX_REPS], us[MAX_REPS], cm, cc, cs, x;
	double th[MAX_REPS], uh[MAX_REPS], mh, ch;
	uint64_t reps = 5, threads = 2, seed = 1, pruned = 0;
	bool pairs = false;
	int c, status = 1;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:n:r:k:R:t:s:S:ph", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			b.clients = fp_cli_u64(PROG, "--clients", optarg, 1, FP_AGG_MAX_CLIENTS);
			break;
		case 'n':
			b.tensors = fp_cli_u64(PROG, "--tensors", optarg, 1, 100000);
			break;
		case 'r':
			b.rows = fp_cli_u64(PROG, "--rows", optarg, 1, 1u << 20);
			break;
		case 'k':
			b.cols = fp_cli_u64(PROG, "--cols", optarg, 1, 1u << 20);
			break;
		case 'R':
			reps = fp_cli_u64(PROG, "--reps", optarg, 1, MAX_REPS);
			break;
		case 't':
			threads = fp_cli_u64(PROG, "--threads", optarg, 1, FP_PAR_MAX_THREADS);
			break;
		case 's':
			o.sparsity = fp_cli_double(PROG, "--sparsity", optarg, 0, 1);
			break;
		case 'S':
			seed = fp_cli_u64(PROG, "--seed", optarg, 1, UINT64_MAX);
			break;
		case 'p':
			pairs = true;
			break;
		case 'h':
			printf("usage: %s [--clients N] [--tensors N] [--rows R] [--cols C] "
			       "[--reps N] [--threads N] [--sparsity S] [--seed N] [--pairs]\n",
			       PROG);
			return 0;
		default:
			fp_cli_bad_option(PROG, c, argv);
		}
	}
	if ((uint64_t)b.rows * b.cols > FP_AGG_MAX_NUMEL)
		fp_cli_fail(PROG, "rows * cols above %u", FP_AGG_MAX_NUMEL);
	fp_par_set_threads((unsigned)threads);
	b.nbytes = fp_mask_bytes(b.rows * b.cols);
	o.nclients = b.clients;

	/* inputs */
	b.src = fp_callocarray(b.tensors * b.clients, sizeof(*b.src));
	b.w = fp_callocarray(b.tensors, sizeof(*b.w));
	b.dst = fp_mallocarray(b.tensors * b.clients, b.nbytes);
	b.out = malloc(b.nbytes);
	if (!b.src || !b.w || !b.dst || !b.out)
		goto nomem;
	memset(b.dst, 0, b.tensors * b.clients * b.nbytes); /* fault the pages in */
	for (size_t i = 0; i < b.tensors * b.clients; i++) {
		b.src[i] = malloc(b.nbytes);
		if (!b.src[i])
			goto nomem;
		for (size_t k = 0; k < b.nbytes; k += 8) {
			uint64_t v = rng_next(&seed);

			memcpy(b.src[i] + k, &v, b.nbytes - k < 8 ? b.nbytes - k : 8);
		}
		if ((b.rows * b.cols) % 8)
			b.src[i][b.nbytes - 1] &= (uint8_t)((1u << ((b.rows * b.cols) % 8)) - 1);
	}
	for (size_t t = 0; t < b.tensors; t++) {
		b.w[t] = fp_mallocarray(b.rows * b.cols, sizeof(float));
		if (!b.w[t])
			goto nomem;
		for (size_t p = 0; p < b.rows * b.cols; p++)
			b.w[t][p] = (float)((int64_t)(rng_next(&seed) >> 40) - (1 << 23)) / 4e8f;
	}
	if (fp_agg_new(&o, &b.agg) < 0)
		goto fail;

	printf("%s: %zu clients, %zu tensors of %zu x %zu (%.1f M weights), %.1f MB of masks, "
	       "%u threads, group layer, tie magnitude, sparsity %g\n",
	       PROG, b.clients, b.tensors, b.rows, b.cols,
	       (double)(b.tensors * b.rows * b.cols) / 1e6,
	       (double)(b.tensors * b.clients * b.nbytes) / 1e6, fp_par_threads(), o.sparsity);
	/* warm-up: every code path once */
	if (run_memcpy(&b, &x) < 0 || run_agg(&b, true, true, &pruned, &x) < 0)
		goto fail;
	for (uint64_t r = 0; r < reps; r++) {
		if (r % 2 == 0) {
			tm[r] = run_memcpy(&b, &um[r]);
			tc[r] = run_agg(&b, false, false, NULL, &uc[r]);
			ts[r] = run_agg(&b, true, false, &pruned, &us[r]);
			th[r] = run_agg(&b, true, true, NULL, &uh[r]);
		} else {
			th[r] = run_agg(&b, true, true, NULL, &uh[r]);
			ts[r] = run_agg(&b, true, false, &pruned, &us[r]);
			tc[r] = run_agg(&b, false, false, NULL, &uc[r]);
			tm[r] = run_memcpy(&b, &um[r]);
		}
		if (tc[r] < 0 || ts[r] < 0 || th[r] < 0)
			goto fail;
		printf("rep %" PRIu64 ": wall (CPU) memcpy %.3f (%.3f) s, count %.3f (%.3f) s, "
		       "count+select %.3f (%.3f) s, with histogram %.3f (%.3f) s\n",
		       r, tm[r], um[r], tc[r], uc[r], ts[r], us[r], th[r], uh[r]);
	}
	mm = median(tm, (int)reps);
	mc = median(tc, (int)reps);
	ms = median(ts, (int)reps);
	cm = median(um, (int)reps);
	cc = median(uc, (int)reps);
	cs = median(us, (int)reps);
	mh = median(th, (int)reps);
	ch = median(uh, (int)reps);
	printf("median of %" PRIu64 ", wall: memcpy %.3f s (%.2f GB/s), count %.3f s, "
	       "count+select %.3f s\n",
	       reps, mm, (double)(b.tensors * b.clients * b.nbytes) / mm / 1e9, mc, ms);
	printf("median of %" PRIu64 ", CPU:  memcpy %.3f s, count %.3f s, count+select %.3f s\n",
	       reps, cm, cc, cs);
	printf("ratio count / memcpy = %.2f wall, %.2f CPU (target <= 2)\n", mc / mm, cc / cm);
	printf("ratio count+select / memcpy = %.2f wall, %.2f CPU (target <= 6)\n", ms / mm,
	       cs / cm);
	printf("with the byte counts and histogram of the report (fedprune aggregate): %.3f s "
	       "wall, %.3f s CPU; ratio %.2f wall, %.2f CPU\n",
	       mh, ch, mh / mm, ch / cm);
	printf("pruned %.1f M (%.4f of the weights)\n", (double)pruned / 1e6,
	       (double)pruned / (double)(b.tensors * b.rows * b.cols));
	if (pairs) {
		struct fp_agg *pa = NULL;
		double t0;

		o.pairwise = true;
		if (fp_agg_new(&o, &pa) < 0)
			goto fail;
		t0 = now();
		for (size_t t = 0; t < b.tensors; t++)
			if (fp_agg_begin(pa, "t", b.rows, b.cols) < 0 ||
			    fp_agg_add(pa, 0, b.clients,
				       (const uint8_t *const *)(b.src + t * b.clients)) < 0) {
				fp_agg_free(pa);
				goto fail;
			}
		printf("count with pairwise agreement (report only, once): %.3f s\n", now() - t0);
		fp_agg_free(pa);
	}
	status = 0;
	goto out;
nomem:
	fprintf(stderr, "%s: out of memory\n", PROG);
	goto out;
fail:
	fprintf(stderr, "%s: %s\n", PROG, fp_err_last());
out:
	fp_agg_free(b.agg);
	for (size_t i = 0; b.src && i < b.tensors * b.clients; i++)
		free(b.src[i]);
	for (size_t t = 0; b.w && t < b.tensors; t++)
		free(b.w[t]);
	free(b.src);
	free(b.w);
	free(b.dst);
	free(b.out);
	return status;
}
