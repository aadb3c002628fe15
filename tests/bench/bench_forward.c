/*
 * bench_forward: forward-pass benchmark of issue 3 (docs/benchmarks.md, "Model core").
 *
 *   bench_forward --model DIR --data FILE.u32 [--nsamples 8] [--seqlen 512] [--threads 2]
 *                 [--reps 5] [--torch tests/bench/torch_forward.py [--torch-env 'VAR=VAL ...']]
 *
 * Normally run by tests/bench/run_model_bench.sh, which generates the model and tokens.
 * Every decoder block of DIR is converted to f32 once (load time reported, not counted) and
 * one untimed pass keeps each block's input. The machine is shared and noisy, so the timed
 * work is cut into small units measured side by side: a unit is one (repetition, block)
 * pair, in which every variant below runs once on that block's input, in an order rotated
 * from unit to unit so that no variant always runs first:
 *
 *   fwd     fp_block_forward with a timing-only hook (four clock reads)
 *   stats   fp_block_forward with fp_stats_hook (per-column sums of squares of each input)
 *   bare    cblas_sgemm alone on exactly the shapes, transposes and betas the forward pass
 *           issues for its linears (stacked q/k/v, o, stacked gate/up, down), same weights
 *   torch   the same block in torch_forward.py, a persistent subprocess (weights loaded);
 *           --torch-env adds one more torch process per occurrence whose environment is
 *           changed by the given space-separated VAR=VALUE words (VAR= unsets VAR)
 *
 * Reported, as medians over all units of ratios paired within a unit:
 *   (a) linear-layer GFLOP/s of the forward pass / bare sgemm GFLOP/s, flops = 2 n in out
 *       per linear: "end to end" divides by the whole fp_block_forward time, "in situ" by
 *       the time spent inside the linears' sgemm calls during fp_block_forward;
 *   (b) tokens/s of fwd / tokens/s of each torch process.
 * Both are also given per CPU-second (process CPU time of all threads instead of wall time,
 * paired the same way): less sensitive to how much of the shared machine a unit got, but
 * blind to time a thread spends descheduled at a barrier, so the wall-time ratio is the one
 * the targets are judged on.
 * Times "for all blocks" are sums over blocks of the per-block medians. CPU/wall is the
 * process's CPU time (all threads) over the wall time of a variant: 2.0 means both cores
 * were ours for the whole time, less means waiting or other load on the machine.
 *
 * The in-situ time comes from this program's own definition of cblas_sgemm, which the
 * static library's calls bind to at link time: it times the calls of the linear shapes made
 * by the main thread and forwards every call to OpenBLAS's cblas_sgemm (dlsym RTLD_NEXT).
 * With a CBLAS other than OpenBLAS it is not built and the in-situ figures are not printed.
 *
 * Output: a readable report, then "result key=value" lines for the script.
 * Run without arguments (e.g. by `meson test --benchmark`) it explains and exits 77 (skip).
 */
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <cblas.h>

#include "alloc.h"
#include "cli.h"
#include "data.h"
#include "err.h"
#include "forward.h"
#include "model.h"
#include "par.h"
#include "stats.h"

#define PROG	  "bench_forward"
#define MAX_REPS  100
#define MAX_TORCH 4
#define NGROUPS	  4 /* sgemm calls per block: q/k/v stacked, o, gate/up stacked, down */
#define NPHASES	  5

extern char **environ;

/* OpenBLAS introspection; weak so that another CBLAS links too. */
extern char *openblas_get_corename(void) __attribute__((weak));
extern char *openblas_get_config(void) __attribute__((weak));

static const char *const group_names[NGROUPS] = { "q/k/v", "o", "gate/up", "down" };

/* Intervals between the hook calls (inputs ready) minus the sgemm time inside them. */
static const char *const phase_names[NPHASES] = {
	"rmsnorm (attn)",
	"q/k/v bias + rope + attention",
	"residual copy, o bias, rmsnorm (mlp)",
	"gate/up bias + silu*up",
	"down bias",
};

/* One linear sgemm as forward.c issues it: y (n, out) = x (n, in) · Wᵀ + beta y. */
struct gemm_shape {
	size_t in, out;
	float beta;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU time of the whole process (every thread), seconds. */
static double cpu_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- cblas_sgemm interposer (OpenBLAS headers only) ---- */

#ifdef OPENBLAS_VERSION
#define HAVE_INTERPOSER 1

typedef void (*sgemm_fn)(const enum CBLAS_ORDER, const enum CBLAS_TRANSPOSE,
			 const enum CBLAS_TRANSPOSE, const blasint, const blasint, const blasint,
			 const float, const float *, const blasint, const float *, const blasint,
			 const float, float *, const blasint);

static sgemm_fn real_sgemm;
static pthread_t main_thread;
static struct {
	bool on;  /* record calls (main thread only) */
	size_t n; /* token rows of the linears */
	struct gemm_shape g[NGROUPS];
	double t[NGROUPS]; /* seconds inside sgemm per group since the last reset */
	unsigned calls[NGROUPS];
	unsigned other; /* calls of other shapes on the main thread while on */
} rec;

static int interposer_init(void)
{
	*(void **)&real_sgemm = dlsym(RTLD_NEXT, "cblas_sgemm");
	main_thread = pthread_self();
	return real_sgemm ? 0 : -ENOSYS;
}

void cblas_sgemm(const enum CBLAS_ORDER Order, const enum CBLAS_TRANSPOSE TransA,
		 const enum CBLAS_TRANSPOSE TransB, const blasint M, const blasint N,
		 const blasint K, const float alpha, const float *A, const blasint lda,
		 const float *B, const blasint ldb, const float beta, float *C, const blasint ldc)
{
	double t0;
	int g;

	if (!rec.on || !pthread_equal(pthread_self(), main_thread)) {
		real_sgemm(Order, TransA, TransB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
		return;
	}
	for (g = 0; g < NGROUPS; g++) {
		if ((size_t)M == rec.n && (size_t)N == rec.g[g].out && (size_t)K == rec.g[g].in &&
		    TransB == CblasTrans)
			break;
	}
	t0 = now();
	real_sgemm(Order, TransA, TransB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
	if (g < NGROUPS) {
		rec.t[g] += now() - t0;
		rec.calls[g]++;
	} else {
		rec.other++;
	}
}
#else
#define HAVE_INTERPOSER 0
#endif

/* The sgemm the bare measurement calls: OpenBLAS's own, never the interposer. */
static void bare_sgemm(int n, int out, int in, const float *x, const float *w, float beta, float *y)
{
#if HAVE_INTERPOSER
	real_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, beta, y,
		   out);
#else
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, beta,
		    y, out);
#endif
}

/* ---- torch subprocesses ---- */

struct torch_proc {
	pid_t pid;
	FILE *to;	   /* its stdin */
	FILE *from;	   /* its stdout */
	const char *label; /* "default" or the --torch-env words */
	char line[8192];
};

/* environ with the VAR=VALUE words of spec applied (VAR= removes VAR); caller frees. */
static char **make_env(const char *spec, char **ret_words)
{
	size_t n = 0, k = 0, nw = 0;
	char *words = fp_strdup(spec), *save = NULL, *w;
	char **env, *list[64];

	if (!words)
		return NULL;
	for (w = strtok_r(words, " ", &save); w && nw < 64; w = strtok_r(NULL, " ", &save)) {
		if (!strchr(w, '=') || w[0] == '=') {
			free(words);
			return NULL;
		}
		list[nw++] = w;
	}
	while (environ[n])
		n++;
	env = fp_callocarray(n + nw + 1, sizeof(*env));
	if (!env) {
		free(words);
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		bool replaced = false;

		for (size_t j = 0; j < nw; j++) {
			size_t len = (size_t)(strchr(list[j], '=') - list[j]) + 1;

			replaced |= strncmp(environ[i], list[j], len) == 0;
		}
		if (!replaced)
			env[k++] = environ[i];
	}
	for (size_t j = 0; j < nw; j++) {
		if (strchr(list[j], '=')[1] != '\0')
			env[k++] = list[j];
	}
	env[k] = NULL;
	*ret_words = words;
	return env;
}

static int torch_start(struct torch_proc *tp, const char *python, const char *script,
		       const char *envspec, const char *model, const char *data, unsigned nsamples,
		       unsigned seqlen, unsigned threads)
{
	char ns[16], sl[16], th[16];
	char *argv[] = { (char *)python,
			 (char *)script,
			 "--model",
			 (char *)model,
			 "--data",
			 (char *)data,
			 "--nsamples",
			 ns,
			 "--seqlen",
			 sl,
			 "--threads",
			 th,
			 NULL };
	char **env = environ, *words = NULL;
	posix_spawn_file_actions_t fa;
	int in[2] = { -1, -1 }, out[2] = { -1, -1 };
	int r;

	snprintf(ns, sizeof(ns), "%u", nsamples);
	snprintf(sl, sizeof(sl), "%u", seqlen);
	snprintf(th, sizeof(th), "%u", threads);
	if (envspec) {
		env = make_env(envspec, &words);
		if (!env)
			return fp_err_detail(-EINVAL, "--torch-env '%s': expected VAR=VALUE words",
					     envspec);
	}
	if (pipe(in) < 0 || pipe(out) < 0) {
		r = -errno;
		goto fail;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_addclose(&fa, in[1]);
	posix_spawn_file_actions_addclose(&fa, out[0]);
	r = -posix_spawn(&tp->pid, python, &fa, NULL, argv, env);
	posix_spawn_file_actions_destroy(&fa);
	if (r < 0)
		goto fail;
	close(in[0]);
	close(out[1]);
	in[0] = out[1] = -1;
	tp->to = fdopen(in[1], "w");
	if (tp->to)
		in[1] = -1;
	tp->from = fdopen(out[0], "r");
	if (tp->from)
		out[0] = -1;
	r = tp->to && tp->from ? 0 : -ENOMEM;
fail:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0)
			close(in[i]);
		if (out[i] >= 0)
			close(out[i]);
	}
	if (env != environ)
		free(env);
	free(words);
	if (r < 0)
		fp_err_detail(r, "cannot start %s %s: %s", python, script, fp_strerror(r));
	return r;
}

/* Send cmd (one line; NULL sends nothing), read one JSON reply; *ret owned by the caller
 * (cJSON_Delete). */
static int torch_cmd(struct torch_proc *tp, const char *cmd, cJSON **ret)
{
	if (cmd && (fprintf(tp->to, "%s\n", cmd) < 0 || fflush(tp->to) != 0))
		return fp_err_detail(-EPIPE, "torch_forward.py: cannot send '%s'", cmd);
	if (!fgets(tp->line, sizeof(tp->line), tp->from))
		return fp_err_detail(-EPIPE, "torch_forward.py exited (see its stderr above)");
	*ret = cJSON_Parse(tp->line);
	if (!*ret)
		return fp_err_detail(-EINVAL, "torch_forward.py: not JSON: %.200s", tp->line);
	return 0;
}

static void torch_stop(struct torch_proc *tp)
{
	int st;

	if (tp->to) {
		fputs("quit\n", tp->to);
		fclose(tp->to);
	}
	if (tp->from)
		fclose(tp->from);
	if (tp->pid > 0)
		waitpid(tp->pid, &st, 0);
}

static const char *json_str(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsString(v) ? v->valuestring : "?";
}

static double json_num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* ---- the benchmark ---- */

enum { V_FWD, V_STATS, V_BARE, V_TORCH };
#define MAX_VARIANTS (V_TORCH + MAX_TORCH)

static const char *const variant_names[V_TORCH] = { "fwd", "stats", "bare" };

/* One (repetition, block) unit; times in seconds. */
struct unit {
	double t[MAX_VARIANTS];	  /* wall time of each variant */
	double cpu[MAX_VARIANTS]; /* process CPU time of each variant (all threads) */
	double bare_g[NGROUPS];	  /* bare: time per sgemm group */
	double lin_g[NGROUPS];	  /* fwd: time inside the sgemm of each group */
	double lin;		  /* fwd: sum of lin_g */
	double phase[NPHASES];	  /* fwd: time outside the linear sgemms, see phase_names */
};

struct bench {
	struct fp_model *m;
	const struct fp_model_cfg *c;
	struct fp_dataset *ds;
	uint32_t nblocks;
	struct fp_block **blk; /* (nblocks) */
	struct fp_stats **st;  /* (nblocks) */
	float **act;	/* (nblocks + 1) of (ntokens, hidden): input of block i; last: output */
	float *tmp;	/* (ntokens, hidden) output of timed runs */
	float *bx, *by; /* bare sgemm operands: (n, max in), (n, max out) */
	struct gemm_shape g[NGROUPS];
	double flops_block; /* linear flops of one block over every token */
	bool split;	    /* the forward pass ran in several sample groups */
	struct torch_proc tp[MAX_TORCH];
	unsigned ntorch;
	unsigned nvariants; /* V_TORCH + ntorch */
	struct unit *u;	    /* (reps, nblocks) */
	unsigned reps;
};

/* Timing hook: when each input became ready. */
struct stamps {
	double t[FP_IN_COUNT];
	unsigned calls[FP_IN_COUNT];
};

static int stamp_hook(void *ctx, const struct fp_hook_batch *hb)
{
	struct stamps *s = ctx;

	s->t[hb->input] = now();
	s->calls[hb->input]++;
	return 0;
}

static int run_fwd(struct bench *b, uint32_t i, float *out, struct unit *u)
{
	struct stamps s = { .calls = { 0 } };
	double s0, s1, c0;
	int r;

#if HAVE_INTERPOSER
	memset(rec.t, 0, sizeof(rec.t));
	memset(rec.calls, 0, sizeof(rec.calls));
	rec.on = true;
#endif
	c0 = cpu_now();
	s0 = now();
	r = fp_block_forward(b->m, b->blk[i], b->ds, b->act[i], out, stamp_hook, &s);
	s1 = now();
	u->cpu[V_FWD] = cpu_now() - c0;
	u->t[V_FWD] = s1 - s0;
#if HAVE_INTERPOSER
	rec.on = false;
#endif
	if (r < 0)
		return r;
	for (int k = 0; k < FP_IN_COUNT; k++)
		b->split |= s.calls[k] != 1;
	u->phase[0] = s.t[FP_IN_ATTN] - s0;
#if HAVE_INTERPOSER
	u->lin = 0;
	for (int g = 0; g < NGROUPS; g++) {
		u->lin_g[g] = rec.t[g];
		u->lin += rec.t[g];
		b->split |= rec.calls[g] != 1;
	}
	u->phase[1] = s.t[FP_IN_O] - s.t[FP_IN_ATTN] - rec.t[0];
	u->phase[2] = s.t[FP_IN_MLP] - s.t[FP_IN_O] - rec.t[1];
	u->phase[3] = s.t[FP_IN_DOWN] - s.t[FP_IN_MLP] - rec.t[2];
	u->phase[4] = s1 - s.t[FP_IN_DOWN] - rec.t[3];
#endif
	return 0;
}

static int run_stats(struct bench *b, uint32_t i, struct unit *u)
{
	double t0, c0;
	int r;

	fp_stats_reset(b->st[i]);
	c0 = cpu_now();
	t0 = now();
	r = fp_block_forward(b->m, b->blk[i], b->ds, b->act[i], b->tmp, fp_stats_hook, b->st[i]);
	u->t[V_STATS] = now() - t0;
	u->cpu[V_STATS] = cpu_now() - c0;
	return r;
}

static void run_bare(struct bench *b, uint32_t i, struct unit *u)
{
	const float *w[NGROUPS] = { b->blk[i]->w[FP_LIN_Q], b->blk[i]->w[FP_LIN_O],
				    b->blk[i]->w[FP_LIN_GATE], b->blk[i]->w[FP_LIN_DOWN] };
	int n = (int)b->ds->ntokens;
	double t0 = now(), c0 = cpu_now();

	for (int g = 0; g < NGROUPS; g++) {
		double tg = now();

		bare_sgemm(n, (int)b->g[g].out, (int)b->g[g].in, b->bx, w[g], b->g[g].beta, b->by);
		u->bare_g[g] = now() - tg;
	}
	u->t[V_BARE] = now() - t0;
	u->cpu[V_BARE] = cpu_now() - c0;
}

static int run_torch(struct bench *b, unsigned k, uint32_t i, struct unit *u)
{
	struct torch_proc *tp = &b->tp[k];
	char cmd[32];
	cJSON *o = NULL;
	int r;

	snprintf(cmd, sizeof(cmd), "block %" PRIu32, i);
	r = torch_cmd(tp, cmd, &o);
	if (r < 0)
		return r;
	u->t[V_TORCH + k] = json_num(o, "seconds");
	u->cpu[V_TORCH + k] = json_num(o, "cpu");
	cJSON_Delete(o);
	if (!(u->t[V_TORCH + k] > 0))
		return fp_err_detail(-EINVAL, "torch_forward.py: bad reply: %.200s", tp->line);
	return 0;
}

static int run_variant(struct bench *b, unsigned v, uint32_t i, struct unit *u)
{
	switch (v) {
	case V_FWD:
		return run_fwd(b, i, b->tmp, u);
	case V_STATS:
		return run_stats(b, i, u);
	case V_BARE:
		run_bare(b, i, u);
		return 0;
	default:
		return run_torch(b, v - V_TORCH, i, u);
	}
}

/* Compare the output of the last block with torch's (normalised MSE). */
static int compare_torch(struct bench *b, double *ret_nmse)
{
	char dir[] = "/tmp/fp-bench-XXXXXX", path[64], cmd[96];
	size_t n = b->ds->ntokens * b->c->hidden;
	const float *ours = b->act[b->nblocks];
	float *t = NULL;
	cJSON *o = NULL;
	FILE *f = NULL;
	double num = 0, den = 0;
	int r;

	if (!mkdtemp(dir))
		return -errno;
	snprintf(path, sizeof(path), "%s/torch.f32", dir);
	snprintf(cmd, sizeof(cmd), "dump %s", path);
	r = torch_cmd(&b->tp[0], cmd, &o);
	if (r < 0)
		goto out;
	t = fp_mallocarray(n, sizeof(float));
	f = fopen(path, "rb");
	if (!t || !f || fread(t, sizeof(float), n, f) != n) {
		r = fp_err_detail(-EIO, "%s: cannot read %zu floats", path, n);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		double d = (double)ours[i] - t[i];

		num += d * d;
		den += (double)t[i] * t[i];
	}
	*ret_nmse = num / den;
out:
	if (f)
		fclose(f);
	unlink(path);
	rmdir(dir);
	free(t);
	cJSON_Delete(o);
	return r;
}

/* ---- statistics over units ---- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
	if (n == 0)
		return NAN;
	qsort(v, n, sizeof(double), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define OFF(field)     offsetof(struct unit, field)
#define OFFI(field, i) (offsetof(struct unit, field) + (size_t)(i) * sizeof(double))
#define NO_DEN	       SIZE_MAX

static double field(const struct unit *u, size_t off)
{
	double v;

	memcpy(&v, (const char *)u + off, sizeof(v));
	return v;
}

/*
 * Median over the units of block `block` (all units when block < 0) of the field at byte
 * offset num, or of the ratio num / den (paired within each unit) unless den == NO_DEN.
 */
static double med_units(const struct bench *b, long block, size_t num, size_t den)
{
	double *v = fp_mallocarray((size_t)b->reps * b->nblocks, sizeof(double)), m;
	size_t n = 0;

	if (!v)
		return NAN;
	for (unsigned k = 0; k < b->reps; k++) {
		for (uint32_t i = 0; i < b->nblocks; i++) {
			const struct unit *u = &b->u[(size_t)k * b->nblocks + i];

			if (block >= 0 && (uint32_t)block != i)
				continue;
			v[n++] = den == NO_DEN ? field(u, num) : field(u, num) / field(u, den);
		}
	}
	m = median(v, n);
	free(v);
	return m;
}

/* Sum over blocks of the per-block median of a field: the time of a pass over all blocks. */
static double sum_blocks(const struct bench *b, size_t off)
{
	double s = 0;

	for (uint32_t i = 0; i < b->nblocks; i++)
		s += med_units(b, i, off, NO_DEN);
	return s;
}

static void print_report(const struct bench *b, double load_s, double nmse)
{
	double ntok = (double)b->ds->ntokens, gflop = b->flops_block * b->nblocks / 1e9;
	double tv[MAX_VARIANTS], lin = sum_blocks(b, OFF(lin));
	double e2e = med_units(b, -1, OFF(t[V_BARE]), OFF(t[V_FWD]));
	double situ = med_units(b, -1, OFF(t[V_BARE]), OFF(lin));
	double e2e_cpu = med_units(b, -1, OFF(cpu[V_BARE]), OFF(cpu[V_FWD]));

	for (unsigned v = 0; v < b->nvariants; v++)
		tv[v] = sum_blocks(b, OFFI(t, v));
	printf("\nlinear flops per pass: %.1f GFLOP (%u blocks x %" PRIu64 " tokens); block "
	       "load (f32 conversion, not timed below): %.2f s\n",
	       gflop, b->nblocks, b->ds->ntokens, load_s);
	printf("\nper pass over all %u blocks (sum of per-block medians over %u repetitions):\n",
	       b->nblocks, b->reps);
	printf("  %-36s %9s %10s %9s %8s\n", "variant", "seconds", "tokens/s", "GFLOP/s",
	       "CPU/wall");
	printf("  %-36s %9.3f %10.1f %9.1f %8.2f\n", "bare cblas_sgemm (same shapes)", tv[V_BARE],
	       ntok / tv[V_BARE], gflop / tv[V_BARE],
	       med_units(b, -1, OFF(cpu[V_BARE]), OFF(t[V_BARE])));
	printf("  %-36s %9.3f %10.1f %9.1f %8.2f\n", "fp_block_forward", tv[V_FWD],
	       ntok / tv[V_FWD], gflop / tv[V_FWD],
	       med_units(b, -1, OFF(cpu[V_FWD]), OFF(t[V_FWD])));
	if (HAVE_INTERPOSER)
		printf("  %-36s %9.3f %10s %9.1f\n", "  of which in linear sgemm calls", lin, "",
		       gflop / lin);
	printf("  %-36s %9.3f %10.1f %9.1f %8.2f\n", "fp_block_forward + fp_stats_hook",
	       tv[V_STATS], ntok / tv[V_STATS], gflop / tv[V_STATS],
	       med_units(b, -1, OFF(cpu[V_STATS]), OFF(t[V_STATS])));
	for (unsigned k = 0; k < b->ntorch; k++) {
		char name[64];

		snprintf(name, sizeof(name), "torch [%.28s]", b->tp[k].label);
		printf("  %-36s %9.3f %10.1f %9.1f %8.2f\n", name, tv[V_TORCH + k],
		       ntok / tv[V_TORCH + k], gflop / tv[V_TORCH + k],
		       med_units(b, -1, OFF(cpu[V_TORCH + k]), OFF(t[V_TORCH + k])));
	}

	printf("\nper sgemm group (seconds per pass, ratio = median of paired bare/in-forward):\n");
	printf("  %-8s %5s %5s %6s %8s %8s %9s %9s %6s\n", "group", "n", "in", "out", "bare",
	       "in-fwd", "bare GF/s", "fwd GF/s", "ratio");
	for (int g = 0; g < NGROUPS; g++) {
		double fl = 2e-9 * (double)b->ds->ntokens * b->g[g].in * b->g[g].out * b->nblocks;
		double tb = sum_blocks(b, OFFI(bare_g, g)), tl = sum_blocks(b, OFFI(lin_g, g));

		printf("  %-8s %5" PRIu64 " %5zu %6zu %8.3f %8.3f %9.1f %9.1f %6.3f\n",
		       group_names[g], b->ds->ntokens, b->g[g].in, b->g[g].out, tb,
		       HAVE_INTERPOSER ? tl : NAN, fl / tb, HAVE_INTERPOSER ? fl / tl : NAN,
		       HAVE_INTERPOSER ? med_units(b, -1, OFFI(bare_g, g), OFFI(lin_g, g)) : NAN);
	}
	if (HAVE_INTERPOSER && !b->split) {
		printf("\nthe rest of fp_block_forward (seconds per pass):\n");
		for (int k = 0; k < NPHASES; k++)
			printf("  %-36s %9.4f\n", phase_names[k], sum_blocks(b, OFFI(phase, k)));
	}
	if (b->split)
		printf("\n(the forward pass ran in several sample groups: no phase breakdown)\n");

	printf("\n(a) linear GFLOP/s in the forward pass / bare sgemm GFLOP/s (median of %u "
	       "paired units):\n",
	       b->reps * b->nblocks);
	printf("      end to end (whole fp_block_forward): %.3f   [target >= 0.7: %s]\n", e2e,
	       e2e >= 0.7 ? "met" : "NOT met");
	if (HAVE_INTERPOSER)
		printf("      in situ (time inside the linear sgemms): %.3f\n", situ);
	printf("      per CPU-second (process CPU time instead of wall time): %.3f\n", e2e_cpu);
	for (unsigned k = 0; k < b->ntorch; k++) {
		double rt = med_units(b, -1, OFF(t[V_TORCH + k]), OFF(t[V_FWD]));

		printf("(b) tokens/s ours / torch [%s]: %.3f   [target >= 1.0: %s; aim 1.5: %s]\n",
		       b->tp[k].label, rt, rt >= 1.0 ? "met" : "NOT met",
		       rt >= 1.5 ? "met" : "not met");
		printf("      per CPU-second: %.3f\n",
		       med_units(b, -1, OFF(cpu[V_TORCH + k]), OFF(cpu[V_FWD])));
	}
	if (b->ntorch)
		printf("    output of the last block, NMSE ours vs torch: %.3g\n", nmse);

	printf("\nresult gflop=%.3f reps=%u blocks=%u tokens=%" PRIu64 " units=%u\n", gflop,
	       b->reps, b->nblocks, b->ds->ntokens, b->reps * b->nblocks);
	printf("result bare_s=%.4f fwd_s=%.4f stats_s=%.4f lin_s=%.4f\n", tv[V_BARE], tv[V_FWD],
	       tv[V_STATS], HAVE_INTERPOSER ? lin : NAN);
	printf("result bare_gflops=%.2f fwd_gflops=%.2f lin_gflops=%.2f\n", gflop / tv[V_BARE],
	       gflop / tv[V_FWD], HAVE_INTERPOSER ? gflop / lin : NAN);
	printf("result ratio_e2e=%.4f ratio_insitu=%.4f ratio_e2e_cpu=%.4f\n", e2e,
	       HAVE_INTERPOSER ? situ : NAN, e2e_cpu);
	printf("result fwd_tok_s=%.1f stats_tok_s=%.1f cpu_fwd=%.2f cpu_bare=%.2f\n",
	       ntok / tv[V_FWD], ntok / tv[V_STATS],
	       med_units(b, -1, OFF(cpu[V_FWD]), OFF(t[V_FWD])),
	       med_units(b, -1, OFF(cpu[V_BARE]), OFF(t[V_BARE])));
	for (unsigned k = 0; k < b->ntorch; k++)
		printf("result torch%u_tok_s=%.1f ratio_torch%u=%.4f ratio_torch%u_cpu=%.4f "
		       "cpu_torch%u=%.2f\n",
		       k, ntok / tv[V_TORCH + k], k,
		       med_units(b, -1, OFF(t[V_TORCH + k]), OFF(t[V_FWD])), k,
		       med_units(b, -1, OFF(cpu[V_TORCH + k]), OFF(cpu[V_FWD])), k,
		       med_units(b, -1, OFF(cpu[V_TORCH + k]), OFF(t[V_TORCH + k])));
	if (b->ntorch)
		printf("result nmse_torch=%.3g\n", nmse);
}

static void usage(void)
{
	printf("Usage: %s --model DIR --data FILE [OPTIONS]\n"
	       "\n"
	       "Forward-pass benchmark of issue 3: linear-layer GFLOP/s of fp_block_forward\n"
	       "against bare cblas_sgemm of the same shapes, and tokens/s against PyTorch,\n"
	       "measured side by side in one run, block by block. Normally run by\n"
	       "tests/bench/run_model_bench.sh, which generates the model.\n"
	       "\n"
	       "Options:\n"
	       "  -m, --model DIR        model directory (config.json + model.safetensors)\n"
	       "  -d, --data FILE        token file (.u32 / .u16 / .jsonl / .txt)\n"
	       "  -n, --nsamples N       samples (default 8)\n"
	       "  -L, --seqlen L         tokens per sample (default 512)\n"
	       "  -t, --threads N        threads for fp_par, OpenBLAS and torch (default 2)\n"
	       "  -r, --reps N           timed repetitions of every block (default 5, max %d)\n"
	       "      --torch SCRIPT     also time tests/bench/torch_forward.py\n"
	       "      --torch-env WORDS  one more torch process, environment changed by the\n"
	       "                         space-separated VAR=VALUE words (VAR= unsets); up to %d\n"
	       "      --python PATH      interpreter for SCRIPT (default /usr/bin/python3)\n"
	       "  -h, --help             show this help and exit\n",
	       PROG, MAX_REPS, MAX_TORCH - 1);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "data", required_argument, NULL, 'd' },
		{ "nsamples", required_argument, NULL, 'n' },
		{ "seqlen", required_argument, NULL, 'L' },
		{ "threads", required_argument, NULL, 't' },
		{ "reps", required_argument, NULL, 'r' },
		{ "torch", required_argument, NULL, 'T' },
		{ "torch-env", required_argument, NULL, 'E' },
		{ "python", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *model = NULL, *data = NULL, *script = NULL, *python = "/usr/bin/python3";
	const char *envs[MAX_TORCH] = { NULL };
	unsigned nsamples = 8, seqlen = 512, threads = 2, nenv = 1;
	struct bench b = { .reps = 5 };
	struct unit warm;
	struct fp_data_opts dopt = { 0 };
	double load_s = 0, nmse = NAN, t0;
	size_t H, max_in = 0, max_out = 0, act;
	int c, r;

	if (argc == 1) {
		fprintf(stderr,
			"%s: needs --model and --data; run tests/bench/run_model_bench.sh "
			"(generates a model). Skipping.\n",
			PROG);
		return 77;
	}
	while ((c = getopt_long(argc, argv, ":m:d:n:L:t:r:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			model = optarg;
			break;
		case 'd':
			data = optarg;
			break;
		case 'n':
			nsamples = (unsigned)fp_cli_u64(PROG, "--nsamples", optarg, 1, 1u << 20);
			break;
		case 'L':
			seqlen = (unsigned)fp_cli_u64(PROG, "--seqlen", optarg, 2, 1u << 20);
			break;
		case 't':
			threads = (unsigned)fp_cli_u64(PROG, "--threads", optarg, 1,
						       FP_PAR_MAX_THREADS);
			break;
		case 'r':
			b.reps = (unsigned)fp_cli_u64(PROG, "--reps", optarg, 1, MAX_REPS);
			break;
		case 'T':
			script = optarg;
			break;
		case 'E':
			if (nenv == MAX_TORCH)
				fp_cli_fail(PROG, "at most %d --torch-env", MAX_TORCH - 1);
			envs[nenv++] = optarg;
			break;
		case 'P':
			python = optarg;
			break;
		case 'h':
			usage();
			return 0;
		default:
			fp_cli_bad_option(PROG, c, argv);
		}
	}
	if (optind < argc)
		fp_cli_fail(PROG, "unexpected argument '%s'", argv[optind]);
	if (!model || !data)
		fp_cli_fail(PROG, "--model and --data are required");
	if (nenv > 1 && !script)
		fp_cli_fail(PROG, "--torch-env needs --torch");
	signal(SIGPIPE, SIG_IGN);
#if HAVE_INTERPOSER
	if (interposer_init() < 0) {
		fprintf(stderr, "%s: dlsym(RTLD_NEXT, cblas_sgemm) failed\n", PROG);
		return 1;
	}
#endif
	fp_par_set_threads(threads);
	fp_blas_set_threads((int)threads);

	r = fp_model_open(model, &b.m);
	if (r < 0)
		goto out;
	b.c = fp_model_config(b.m);
	H = b.c->hidden;
	b.nblocks = b.c->nlayers;
	dopt.seqlen = seqlen;
	dopt.nsamples = nsamples;
	dopt.vocab_size = b.c->vocab;
	r = fp_data_load(data, &dopt, &b.ds);
	if (r < 0)
		goto out;
	if (b.ds->ntokens > INT32_MAX / 16) {
		r = fp_err_detail(-EINVAL, "%s: too many tokens", data);
		goto out;
	}
	{
		size_t qd = (size_t)b.c->nheads * b.c->head_dim;
		size_t kvd = (size_t)b.c->nkv_heads * b.c->head_dim;
		size_t inter = b.c->intermediate;
		struct gemm_shape g[NGROUPS] = {
			{ H, qd + 2 * kvd, 0 }, { qd, H, 1 }, { H, 2 * inter, 0 }, { inter, H, 1 }
		};

		memcpy(b.g, g, sizeof(g));
	}
	for (int g = 0; g < NGROUPS; g++) {
		b.flops_block += 2.0 * (double)b.ds->ntokens * b.g[g].in * b.g[g].out;
		max_in = b.g[g].in > max_in ? b.g[g].in : max_in;
		max_out = b.g[g].out > max_out ? b.g[g].out : max_out;
	}
#if HAVE_INTERPOSER
	rec.n = b.ds->ntokens;
	memcpy(rec.g, b.g, sizeof(b.g));
#endif
	act = b.ds->ntokens * H;
	b.blk = fp_callocarray(b.nblocks, sizeof(*b.blk));
	b.st = fp_callocarray(b.nblocks, sizeof(*b.st));
	b.act = fp_callocarray(b.nblocks + 1, sizeof(*b.act));
	b.u = fp_callocarray((size_t)b.reps * b.nblocks, sizeof(*b.u));
	b.tmp = fp_aligned_array(act, sizeof(float));
	b.bx = fp_aligned_array(b.ds->ntokens * max_in, sizeof(float));
	b.by = fp_aligned_array(b.ds->ntokens * max_out, sizeof(float));
	for (uint32_t i = 0; b.act && i <= b.nblocks; i++) {
		b.act[i] = fp_aligned_array(act, sizeof(float));
		if (!b.act[i])
			break;
	}
	if (!b.blk || !b.st || !b.act || !b.act[b.nblocks] || !b.u || !b.tmp || !b.bx || !b.by) {
		r = -ENOMEM;
		goto out;
	}
	srand(1);
	for (size_t i = 0; i < b.ds->ntokens * max_in; i++)
		b.bx[i] = (float)rand() / (float)RAND_MAX * 2.0f - 1.0f;
	memset(b.by, 0, b.ds->ntokens * max_out * sizeof(float));
	r = fp_embed(b.m, b.ds, b.act[0]);
	if (r < 0)
		goto out;
	t0 = now();
	for (uint32_t i = 0; i < b.nblocks; i++) {
		r = fp_block_load(b.m, i, &b.blk[i]);
		if (r < 0)
			goto out;
		fp_block_release_source(b.m, i);
		r = fp_stats_new(b.c, i, 0, &b.st[i]);
		if (r < 0)
			goto out;
	}
	load_s = now() - t0;

	printf("%s: model %s: %u blocks, hidden %zu, intermediate %" PRIu32 ", heads %" PRIu32
	       "/%" PRIu32 ", %zu samples x %u tokens\n",
	       PROG, model, b.nblocks, H, b.c->intermediate, b.c->nheads, b.c->nkv_heads,
	       b.ds->nsamples, seqlen);
	printf("threads: fp_par %u, OpenBLAS %d (OPENBLAS_NUM_THREADS=%s, OPENBLAS_CORETYPE=%s)\n",
	       fp_par_threads(), fp_blas_threads(),
	       getenv("OPENBLAS_NUM_THREADS") ? getenv("OPENBLAS_NUM_THREADS") : "unset",
	       getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "unset");
	if (openblas_get_config && openblas_get_corename)
		printf("OpenBLAS: %s; kernel %s\n", openblas_get_config(), openblas_get_corename());
	if (script) {
		for (unsigned k = 0; k < nenv; k++) {
			cJSON *o = NULL;

			r = torch_start(&b.tp[k], python, script, envs[k], model, data, nsamples,
					seqlen, threads);
			if (b.tp[k].pid > 0)
				b.ntorch++;
			if (r < 0)
				goto out;
			b.tp[k].label = envs[k] ? envs[k] : "default";
			r = torch_cmd(&b.tp[k], NULL, &o);
			if (r < 0)
				goto out;
			printf("torch [%s]: %s, %d threads, attention %s, BLAS_INFO=%s, OpenBLAS "
			       "kernel %s, %d OpenBLAS threads (OPENBLAS_NUM_THREADS=%s, "
			       "OPENBLAS_CORETYPE=%s, OMP_WAIT_POLICY=%s)\n",
			       b.tp[k].label, json_str(o, "torch"), (int)json_num(o, "threads"),
			       json_str(o, "attention"), json_str(o, "torch_blas"),
			       json_str(o, "openblas_core"), (int)json_num(o, "openblas_threads"),
			       json_str(o, "OPENBLAS_NUM_THREADS"),
			       json_str(o, "OPENBLAS_CORETYPE"), json_str(o, "OMP_WAIT_POLICY"));
			cJSON_Delete(o);
		}
	}
	b.nvariants = V_TORCH + b.ntorch;
	fflush(stdout);

	/* untimed: every block's input, then each variant once (page faults, BLAS buffers) */
	for (uint32_t i = 0; i < b.nblocks; i++) {
		r = run_fwd(&b, i, b.act[i + 1], &warm);
		if (r < 0)
			goto out;
	}
	for (unsigned v = 0; v < b.nvariants; v++) {
		r = run_variant(&b, v, 0, &warm);
		if (r < 0)
			goto out;
	}
	for (unsigned k = 0; k < b.reps; k++) {
		for (uint32_t i = 0; i < b.nblocks; i++) {
			unsigned rot = (k * b.nblocks + i) % b.nvariants;
			struct unit *u = &b.u[(size_t)k * b.nblocks + i];

			for (unsigned j = 0; j < b.nvariants; j++) {
				r = run_variant(&b, (rot + j) % b.nvariants, i, u);
				if (r < 0)
					goto out;
			}
			printf("rep %u block %" PRIu32 ":", k + 1, i);
			for (unsigned v = 0; v < b.nvariants; v++)
				printf(" %s %.3f s", v < V_TORCH ? variant_names[v] : "torch",
				       u->t[v]);
			printf("\n");
			fflush(stdout);
		}
	}
	if (b.ntorch) {
		r = compare_torch(&b, &nmse);
		if (r < 0)
			goto out;
	}
	print_report(&b, load_s, nmse);
	r = 0;
out:
	if (r < 0)
		fprintf(stderr, "%s: %s\n", PROG, fp_err_last() ? fp_err_last() : fp_strerror(r));
	for (unsigned k = 0; k < b.ntorch; k++)
		torch_stop(&b.tp[k]);
	for (uint32_t i = 0; b.blk && i < b.nblocks; i++)
		fp_block_free(b.blk[i]);
	for (uint32_t i = 0; b.st && i < b.nblocks; i++)
		fp_stats_free(b.st[i]);
	for (uint32_t i = 0; b.act && i <= b.nblocks; i++)
		free(b.act[i]);
	free(b.act);
	free(b.blk);
	free(b.st);
	free(b.u);
	free(b.tmp);
	free(b.bx);
	free(b.by);
	fp_data_free(b.ds);
	fp_model_close(b.m);
	return r < 0 ? 1 : 0;
}
