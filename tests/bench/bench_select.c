/*
 * bench_select: mask selection benchmark of issue 4 (docs/benchmarks.md, "Mask selection").
 *
 *   bench_select [--blocks 4] [--hidden 2048] [--inter 5632] [--kv 256] [--sparsity 0.5]
 *                [--reps 3] [--threads 2] [--seed 1] [--torch PATH] [--python /usr/bin/python3]
 *                [--no-torch] [--keep DIR]
 *
 * Builds a model-shaped workload: per block the seven linears q, o (hidden x hidden), k, v
 * (kv x hidden), gate, up (inter x hidden) and down (hidden x inter), random f32 weights
 * (normal-ish, std 0.02) and random per-input-column statistics (scaler_row, chi-square-like).
 * Times Wanda scoring + per-row selection at the given sparsity for all matrices with
 * fp_select (metric |W| * sqrt(scaler), k = floor(cols * s) per row, bit-packed masks), on
 * --threads threads and on 1 thread. Then runs torch_select.py on the same tensors (written
 * as raw .f32 files to a temporary directory): the reference's
 * torch.sort(metric, dim=-1, stable=True), first k per row, scattered into a bool mask,
 * with torch.set_num_threads(threads). Prints both times (median of --reps), the ratio, and
 * whether the masks agree bit for bit (the torch masks are written outside its timing).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "cli.h"
#include "err.h"
#include "mask.h"
#include "par.h"
#include "parse.h"
#include "select.h"

#define PROG	 "bench_select"
#define MAX_REPS 50

extern char **environ;

struct mat {
	char name[64];
	size_t rows, cols;
	float *w;      /* (rows, cols) */
	float *scaler; /* (cols) */
	uint8_t *mask; /* (fp_mask_bytes(rows * cols)) */
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

/* Uniform in (0, 1). */
static double unif(uint64_t *s)
{
	return ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
}

/* Sum of four uniforms, centred: a cheap bell shape with std 0.02. */
static float weight(uint64_t *s)
{
	double u = unif(s) + unif(s) + unif(s) + unif(s) - 2.0;

	return (float)(u * 0.02 / sqrt(1.0 / 3.0));
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

static int write_file(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	int r = 0;

	if (!f)
		return -errno;
	if (n && fwrite(p, 1, n, f) != n)
		r = -EIO;
	if (fclose(f) != 0 && r == 0)
		r = -EIO;
	return r;
}

static int read_file(const char *path, void *p, size_t n)
{
	FILE *f = fopen(path, "rb");
	int r = 0;

	if (!f)
		return -errno;
	if (n && fread(p, 1, n, f) != n)
		r = -EIO;
	fclose(f);
	return r;
}

static double cpu_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/*
 * One timed pass of fp_select over all matrices; returns wall seconds (*ret_cpu: CPU seconds
 * of all threads) or a negative errno.
 */
static double run_c(struct mat *m, size_t n, double sparsity, double *ret_cpu)
{
	double t0 = now(), c0 = cpu_now();

	for (size_t i = 0; i < n; i++) {
		struct fp_metric_src src = { .kind = FP_METRIC_WANDA,
					     .x = m[i].w,
					     .scaler = m[i].scaler,
					     .rows = m[i].rows,
					     .cols = m[i].cols,
					     .name = m[i].name };
		struct fp_select_spec sp;
		int r = fp_select_spec_init(&sp, FP_GROUP_ROW, sparsity, m[i].rows, m[i].cols);

		if (r == 0)
			r = fp_select(m[i].mask, &src, &sp);
		if (r < 0) {
			fprintf(stderr, "%s: %s: %s\n", PROG, fp_strerror(r), fp_err_last());
			return r;
		}
	}
	*ret_cpu = cpu_now() - c0;
	return now() - t0;
}

/* Run the torch script; *ret_s = its median seconds. Returns 0 or a negative errno. */
static int run_torch(const char *python, const char *script, const char *dir, struct mat *m,
		     size_t n, double sparsity, int reps, unsigned threads, double *ret_s,
		     double *ret_cpu)
{
	char sp[32], rp[32], th[32], line[512];
	char **argv = fp_callocarray(n + 16, sizeof(char *));
	posix_spawn_file_actions_t fa;
	int out[2], status, r, a = 0;
	pid_t pid;
	FILE *f;
	bool got = false;

	if (!argv || pipe(out) < 0)
		return -ENOMEM;
	snprintf(sp, sizeof(sp), "%.17g", sparsity);
	snprintf(rp, sizeof(rp), "%d", reps);
	snprintf(th, sizeof(th), "%u", threads);
	argv[a++] = (char *)python;
	argv[a++] = (char *)script;
	argv[a++] = "--dir";
	argv[a++] = (char *)dir;
	argv[a++] = "--sparsity";
	argv[a++] = sp;
	argv[a++] = "--reps";
	argv[a++] = rp;
	argv[a++] = "--threads";
	argv[a++] = th;
	for (size_t i = 0; i < n; i++) {
		if (asprintf(&argv[a++], "%s:%zu:%zu", m[i].name, m[i].rows, m[i].cols) < 0)
			return -ENOMEM;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_addclose(&fa, out[0]);
	r = -posix_spawn(&pid, python, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(out[1]);
	for (size_t i = 0; i < n; i++)
		free(argv[10 + i]);
	free(argv);
	if (r < 0) {
		close(out[0]);
		return r;
	}
	f = fdopen(out[0], "r");
	while (f && fgets(line, sizeof(line), f)) {
		fputs("  torch| ", stdout);
		fputs(line, stdout);
		fflush(stdout);
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, "result torch_median_s=", 22) == 0)
			got = fp_parse_double(line + 22, 0, 1e9, ret_s) == 0;
		if (strncmp(line, "result torch_cpu_median_s=", 26) == 0)
			got = got && fp_parse_double(line + 26, 0, 1e9, ret_cpu) == 0;
	}
	if (f)
		fclose(f);
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return -ECHILD;
	return got ? 0 : -EPROTO;
}

/* Compare the C masks with the torch masks written next to the tensors. */
static void compare_masks(const char *dir, struct mat *m, size_t n)
{
	size_t same = 0;
	uint64_t diff = 0;

	for (size_t i = 0; i < n; i++) {
		size_t nb = fp_mask_bytes(m[i].rows * m[i].cols);
		uint8_t *t = malloc(nb);
		char *path = NULL;
		struct fp_mask_cmp c;

		if (!t || asprintf(&path, "%s/%s.torch.mask", dir, m[i].name) < 0 ||
		    read_file(path, t, nb) < 0) {
			printf("mask check: cannot read the torch mask of %s\n", m[i].name);
			free(t);
			free(path);
			return;
		}
		fp_mask_compare(m[i].mask, t, m[i].rows * m[i].cols, &c);
		same += c.hamming == 0;
		diff += c.hamming;
		free(t);
		free(path);
	}
	printf("masks identical to torch: %zu/%zu matrices (%llu differing bits)\n", same, n,
	       (unsigned long long)diff);
	printf("result masks_identical=%zu/%zu\n", same, n);
}

static void usage(void)
{
	printf("usage: %s [options]\n"
	       "  --blocks N        decoder blocks (default 4)\n"
	       "  --hidden N        hidden size (default 2048)\n"
	       "  --inter N         MLP intermediate size (default 5632)\n"
	       "  --kv N            k/v output rows (default 256: 4 kv heads of 64)\n"
	       "  --sparsity S      per-row sparsity (default 0.5)\n"
	       "  --reps N          repetitions, median reported (default 3)\n"
	       "  --threads N       threads for fp_select and torch (default 2)\n"
	       "  --seed N          weights seed (default 1)\n"
	       "  --torch PATH      torch_select.py (default: next to this source file)\n"
	       "  --python PATH     interpreter with torch (default /usr/bin/python3)\n"
	       "  --no-torch        C timings only\n"
	       "  --keep DIR        write the tensors to DIR and keep them\n",
	       PROG);
}

struct opts {
	size_t blocks, hidden, inter, kv;
	double sparsity;
	int reps;
	unsigned threads;
	uint64_t seed;
	const char *script, *python, *keep;
	bool torch;
};

static void parse_args(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "blocks", required_argument, NULL, 'b' },
		{ "hidden", required_argument, NULL, 'H' },
		{ "inter", required_argument, NULL, 'I' },
		{ "kv", required_argument, NULL, 'k' },
		{ "sparsity", required_argument, NULL, 's' },
		{ "reps", required_argument, NULL, 'r' },
		{ "threads", required_argument, NULL, 't' },
		{ "seed", required_argument, NULL, 'S' },
		{ "torch", required_argument, NULL, 'T' },
		{ "python", required_argument, NULL, 'P' },
		{ "no-torch", no_argument, NULL, 'n' },
		{ "keep", required_argument, NULL, 'K' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
		switch (c) {
		case 'b':
			o->blocks = fp_cli_u64(PROG, "--blocks", optarg, 1, 1024);
			break;
		case 'H':
			o->hidden = fp_cli_u64(PROG, "--hidden", optarg, 1, 1u << 16);
			break;
		case 'I':
			o->inter = fp_cli_u64(PROG, "--inter", optarg, 1, 1u << 17);
			break;
		case 'k':
			o->kv = fp_cli_u64(PROG, "--kv", optarg, 1, 1u << 16);
			break;
		case 's':
			o->sparsity = fp_cli_double(PROG, "--sparsity", optarg, 0, 1);
			break;
		case 'r':
			o->reps = (int)fp_cli_u64(PROG, "--reps", optarg, 1, MAX_REPS);
			break;
		case 't':
			o->threads = (unsigned)fp_cli_u64(PROG, "--threads", optarg, 1, 64);
			break;
		case 'S':
			o->seed = fp_cli_u64(PROG, "--seed", optarg, 0, UINT64_MAX);
			break;
		case 'T':
			o->script = optarg;
			break;
		case 'P':
			o->python = optarg;
			break;
		case 'n':
			o->torch = false;
			break;
		case 'K':
			o->keep = optarg;
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
}

/* The default script path: torch_select.py next to this file as the compiler saw it. */
static char *default_script(void)
{
	const char *src = __FILE__, *slash = strrchr(src, '/');
	char *p = NULL;

	if (asprintf(&p, "%.*storch_select.py", slash ? (int)(slash - src + 1) : 0, src) < 0)
		return NULL;
	if (access(p, R_OK) == 0)
		return p;
	free(p);
	return access("tests/bench/torch_select.py", R_OK) == 0
		       ? strdup("tests/bench/torch_select.py")
		       : NULL;
}

/* Build the matrices (and write them to dir when given). */
static int build(const struct opts *o, struct mat *m, size_t n, const char *dir)
{
	static const char *const lin[7] = { "q", "k", "v", "o", "gate", "up", "down" };
	uint64_t rng = o->seed * 0x9E3779B97F4A7C15ull + 1;

	for (size_t i = 0; i < n; i++) {
		size_t b = i / 7, l = i % 7;
		size_t rows = l == 1 || l == 2 ? o->kv : l == 4 || l == 5 ? o->inter : o->hidden;
		size_t cols = l == 6 ? o->inter : o->hidden;
		char *path = NULL;
		int r = 0;

		snprintf(m[i].name, sizeof(m[i].name), "b%zu_%s", b, lin[l]);
		m[i].rows = rows;
		m[i].cols = cols;
		m[i].w = fp_mallocarray(rows * cols, sizeof(float));
		m[i].scaler = fp_mallocarray(cols, sizeof(float));
		m[i].mask = malloc(fp_mask_bytes(rows * cols));
		if (!m[i].w || !m[i].scaler || !m[i].mask)
			return -ENOMEM;
		for (size_t j = 0; j < rows * cols; j++)
			m[i].w[j] = weight(&rng);
		for (size_t j = 0; j < cols; j++) {
			double g = weight(&rng) * 50.0;

			m[i].scaler[j] = (float)(g * g * (1.0 + 99.0 * (unif(&rng) < 0.01)));
		}
		if (!dir)
			continue;
		if (asprintf(&path, "%s/%s.w.f32", dir, m[i].name) < 0)
			return -ENOMEM;
		r = write_file(path, m[i].w, rows * cols * sizeof(float));
		free(path);
		if (r == 0 && asprintf(&path, "%s/%s.s.f32", dir, m[i].name) < 0)
			return -ENOMEM;
		if (r == 0) {
			r = write_file(path, m[i].scaler, cols * sizeof(float));
			free(path);
		}
		if (r < 0)
			return r;
	}
	return 0;
}

static void cleanup_dir(const char *dir, struct mat *m, size_t n)
{
	static const char *const ext[3] = { "w.f32", "s.f32", "torch.mask" };

	for (size_t i = 0; i < n; i++)
		for (int e = 0; e < 3; e++) {
			char *path = NULL;

			if (asprintf(&path, "%s/%s.%s", dir, m[i].name, ext[e]) >= 0)
				unlink(path);
			free(path);
		}
	rmdir(dir);
}

int main(int argc, char **argv)
{
	struct opts o = { .blocks = 4,
			  .hidden = 2048,
			  .inter = 5632,
			  .kv = 256,
			  .sparsity = 0.5,
			  .reps = 3,
			  .threads = 2,
			  .seed = 1,
			  .python = "/usr/bin/python3",
			  .torch = true };
	double tc[MAX_REPS], t1[MAX_REPS], cc[MAX_REPS], cc1[MAX_REPS], c_s, c1_s, c_cpu, c1_cpu;
	double torch_s = 0, torch_cpu = 0, weights = 0;
	char tmpl[] = "/tmp/fp-bench-select-XXXXXX", *script_alloc = NULL;
	const char *dir = NULL;
	struct mat *m;
	size_t n;
	int r;

	parse_args(argc, argv, &o);
	if (o.torch && !o.script)
		o.script = script_alloc = default_script();
	if (o.torch && !o.script) {
		printf("torch_select.py not found (give --torch PATH); C timings only\n");
		o.torch = false;
	}
	if (o.torch || o.keep) {
		dir = o.keep ? o.keep : mkdtemp(tmpl);
		if (!dir) {
			perror(PROG ": mkdtemp");
			return 1;
		}
	}
	n = o.blocks * 7;
	m = fp_callocarray(n, sizeof(*m));
	r = m ? build(&o, m, n, dir) : -ENOMEM;
	if (r < 0) {
		fprintf(stderr, "%s: building the workload: %s\n", PROG, fp_strerror(r));
		return 1;
	}
	for (size_t i = 0; i < n; i++)
		weights += (double)m[i].rows * (double)m[i].cols;
	printf("mask selection (issue 4): %zu matrices, %.1f M weights, sparsity %g, row groups,"
	       " Wanda metric |W|*sqrt(scaler_row)\n",
	       n, weights / 1e6, o.sparsity);
	for (int i = 0; i < o.reps; i++) {
		fp_par_set_threads(1);
		t1[i] = run_c(m, n, o.sparsity, &cc1[i]);
		fp_par_set_threads(o.threads);
		tc[i] = run_c(m, n, o.sparsity, &cc[i]);
		if (tc[i] < 0 || t1[i] < 0)
			return 1;
	}
	c_s = median(tc, o.reps);
	c1_s = median(t1, o.reps);
	c_cpu = median(cc, o.reps);
	c1_cpu = median(cc1, o.reps);
	printf("fp_select, %u threads: median %.3f s wall, %.3f s CPU over %d reps (%.0f M "
	       "weights/s)\n",
	       o.threads, c_s, c_cpu, o.reps, weights / c_s / 1e6);
	printf("fp_select, 1 thread:   median %.3f s wall, %.3f s CPU (%.0f M weights/s)\n", c1_s,
	       c1_cpu, weights / c1_s / 1e6);
	printf("result c_median_s=%.4f\nresult c1_median_s=%.4f\nresult c_cpu_median_s=%.4f\n", c_s,
	       c1_s, c_cpu);
	if (o.torch) {
		r = run_torch(o.python, o.script, dir, m, n, o.sparsity, o.reps, o.threads,
			      &torch_s, &torch_cpu);
		if (r < 0) {
			fprintf(stderr, "%s: torch run failed: %s\n", PROG, fp_strerror(r));
		} else {
			printf("PyTorch, %u threads: median %.3f s (%.0f M weights/s)\n", o.threads,
			       torch_s, weights / torch_s / 1e6);
			printf("speed-up over PyTorch: %.1fx (%u threads each), %.1fx (C on 1 "
			       "thread)\n",
			       torch_s / c_s, o.threads, torch_s / c1_s);
			printf("speed-up in CPU seconds (both %u threads): %.1fx\n", o.threads,
			       torch_cpu / c_cpu);
			printf("result speedup=%.2f\nresult cpu_speedup=%.2f\n", torch_s / c_s,
			       torch_cpu / c_cpu);
			compare_masks(dir, m, n);
		}
	}
	if (dir && !o.keep)
		cleanup_dir(dir, m, n);
	for (size_t i = 0; i < n; i++) {
		free(m[i].w);
		free(m[i].scaler);
		free(m[i].mask);
	}
	free(m);
	free(script_alloc);
	return r < 0 ? 1 : 0;
}
