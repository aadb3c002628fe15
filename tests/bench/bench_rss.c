/*
 * bench_rss: peak memory of a statistics pass, benchmark 2 of issue 3 (docs/benchmarks.md,
 * "Model core").
 *
 *   /usr/bin/time -v bench_rss --model DIR --data FILE [--nsamples 8] [--seqlen 512]
 *                               [--threads 2] [--xtx] [--release-early] [--release-embed]
 *
 * Runs the calibration-statistics pass the way a client does it, block by block in the order
 * forward.h documents: fp_embed, then for each block fp_block_load, fp_stats_new,
 * fp_block_forward with fp_stats_hook (sums of squares of every linear input; --xtx adds
 * X^T X), fp_stats_free, fp_block_free, fp_block_release_source. The head is not run.
 * --release-early calls fp_block_release_source right after fp_block_load instead (the f32
 * block is a copy, so the mapped pages are not needed during the forward pass): the
 * difference between the two runs is the file-backed memory held by the documented order.
 * --release-embed releases the mapped pages of model.embed_tokens.weight after fp_embed
 * (fp_st_release through the public safetensors API): fp_embed reads only the rows of the
 * tokens used, but the kernel maps pages around every fault, so without it most of the
 * embedding matrix stays resident for the whole pass.
 *
 * It prints the peak RSS next to the memory the pass needs, computed from the shapes:
 *   largest block in f32 (every linear, bias and norm of the block, as fp_block_load holds it)
 *   + activations: input and output hidden buffers, 2 x ntokens x hidden floats
 *   + the scratch fp_block_forward keeps: ntokens x (max(hidden, qd, inter) +
 *     max(qd + 2 kvd, 2 inter)) floats plus threads x FP_ATTN_TILE x seqlen floats of
 *     attention tiles (forward.c), and the RoPE tables
 *   + the statistics of one block (sums of squares in double; X^T X in f32 with --xtx)
 * and the ratio peak / needed. The peak is VmHWM of /proc/self/status at exit, the same
 * figure as getrusage's ru_maxrss and as "Maximum resident set size" of /usr/bin/time -v.
 *
 * A sampler thread reads /proc/self/statm every 2 ms and keeps, per stage, the highest RSS
 * split into anonymous memory and file-backed pages (the mmap'd safetensors), so a peak can
 * be attributed: a block in f32, scratch, or mapped pages that were not released.
 * Output: the table, then "result key=value" lines for tests/bench/run_model_bench.sh.
 * Run without arguments (e.g. by `meson test --benchmark`) it explains and exits 77 (skip).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "cli.h"
#include "data.h"
#include "err.h"
#include "forward.h"
#include "kernels.h"
#include "model.h"
#include "par.h"
#include "parse.h"
#include "stats.h"

#define PROG	   "bench_rss"
#define MAX_STAGES 4096
#define SAMPLE_NS  2000000L /* sampler period */

/* ---- RSS sampling ---- */

struct rss {
	uint64_t total, file; /* bytes resident; of which file-backed or shared */
};

/* One named stage of the pass and the highest RSS seen while it ran. */
struct stage {
	char name[32];
	struct rss peak;
};

static struct {
	struct stage st[MAX_STAGES];
	atomic_uint cur; /* index of the running stage */
	unsigned n;	 /* stages started */
	atomic_bool stop;
	pthread_mutex_t lock; /* guards st[].peak */
	long page;
} smp = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* Resident and shared (file-backed + shmem) bytes from /proc/self/statm. */
static int read_statm(struct rss *ret)
{
	char buf[256], *save = NULL, *tok;
	uint64_t v[3];
	FILE *f = fopen("/proc/self/statm", "r");
	size_t n;
	int i;

	if (!f)
		return -errno;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	tok = strtok_r(buf, " \n", &save);
	for (i = 0; i < 3 && tok; i++, tok = strtok_r(NULL, " \n", &save)) {
		if (fp_parse_u64(tok, 0, UINT64_MAX / 65536, &v[i]) < 0)
			return -EINVAL;
	}
	if (i < 3)
		return -EINVAL;
	ret->total = v[1] * (uint64_t)smp.page;
	ret->file = v[2] * (uint64_t)smp.page;
	return 0;
}

/* Raise the running stage's peak to (total, file) if total is higher. */
static void record(uint64_t total, uint64_t file)
{
	unsigned i;

	pthread_mutex_lock(&smp.lock);
	i = atomic_load(&smp.cur);
	if (total > smp.st[i].peak.total) {
		smp.st[i].peak.total = total;
		smp.st[i].peak.file = file;
	}
	pthread_mutex_unlock(&smp.lock);
}

static void sample_once(void)
{
	struct rss r;

	if (read_statm(&r) == 0)
		record(r.total, r.file);
}

static void *sampler(void *arg)
{
	struct timespec ts = { 0, SAMPLE_NS };

	(void)arg;
	while (!atomic_load(&smp.stop)) {
		sample_once();
		nanosleep(&ts, NULL);
	}
	return NULL;
}

/* Close the running stage (one last sample) and start the stage `name`. */
static void stage(const char *name)
{
	sample_once();
	if (smp.n >= MAX_STAGES)
		return;
	pthread_mutex_lock(&smp.lock);
	snprintf(smp.st[smp.n].name, sizeof(smp.st[smp.n].name), "%s", name);
	memset(&smp.st[smp.n].peak, 0, sizeof(smp.st[smp.n].peak));
	atomic_store(&smp.cur, smp.n);
	smp.n++;
	pthread_mutex_unlock(&smp.lock);
	sample_once();
}

/* A "kB" line of /proc/self/status, in bytes; 0 if absent. */
static uint64_t status_kb(const char *key)
{
	char line[256];
	size_t klen = strlen(key);
	uint64_t v = 0;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		char *p, *end;

		if (strncmp(line, key, klen) != 0 || line[klen] != ':')
			continue;
		p = line + klen + 1;
		while (*p == ' ' || *p == '\t')
			p++;
		end = strchr(p, ' ');
		if (end)
			*end = '\0';
		if (fp_parse_u64(p, 0, UINT64_MAX / 1024, &v) < 0)
			v = 0;
		break;
	}
	fclose(f);
	return v * 1024;
}

static double mib(uint64_t bytes)
{
	return (double)bytes / (1024.0 * 1024.0);
}

/* ---- memory the pass needs, from the shapes ---- */

struct need {
	uint64_t block, act, scratch, rope, stats, total; /* bytes */
};

static void compute_need(const struct fp_model_cfg *c, const struct fp_dataset *ds,
			 unsigned threads, bool xtx, struct need *n)
{
	uint64_t qd = (uint64_t)c->nheads * c->head_dim, kvd = (uint64_t)c->nkv_heads * c->head_dim;
	uint64_t inter = c->intermediate, H = c->hidden, max_len = 0, floats = 0, ldx, ldy;

	for (size_t i = 0; i < ds->nsamples; i++)
		max_len = ds->len[i] > max_len ? ds->len[i] : max_len;
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		size_t rows, cols;

		fp_linear_shape(c, (enum fp_linear)w, &rows, &cols);
		floats += (uint64_t)rows * cols + (c->bias[w] ? rows : 0);
	}
	n->block = (floats + 2 * H) * sizeof(float);
	n->act = 2 * ds->ntokens * H * sizeof(float);
	ldx = H > qd ? H : qd;
	ldx = ldx > inter ? ldx : inter;
	ldy = qd + 2 * kvd > 2 * inter ? qd + 2 * kvd : 2 * inter;
	n->scratch = (ds->ntokens * (ldx + ldy) + (uint64_t)threads * FP_ATTN_TILE * max_len) *
		     sizeof(float);
	n->rope = 2 * max_len * (c->head_dim / 2) * sizeof(float);
	n->stats = (2 * H + qd + inter) * sizeof(double);
	if (xtx)
		n->stats += (2 * H * H + qd * qd + inter * inter) * sizeof(float);
	n->total = n->block + n->act + n->scratch + n->rope + n->stats;
}

/* ---- the pass ---- */

struct pass_opts {
	bool xtx;   /* accumulate X^T X too */
	bool early; /* release a block's source pages right after fp_block_load */
	bool embed; /* release the embedding's pages after fp_embed */
};

static int stats_pass(struct fp_model *m, const struct fp_dataset *ds, const struct pass_opts *o,
		      double *ret_s)
{
	const struct fp_model_cfg *c = fp_model_config(m);
	size_t act = ds->ntokens * c->hidden;
	float *a = NULL, *b = NULL, *t; /* (ntokens, hidden) each */
	struct fp_block *blk = NULL;
	struct fp_stats *st = NULL;
	struct timespec t0, t1;
	char name[32];
	int r;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	stage("activations + embed");
	a = fp_aligned_array(act, sizeof(float));
	b = fp_aligned_array(act, sizeof(float));
	if (!a || !b) {
		r = -ENOMEM;
		goto out;
	}
	r = fp_embed(m, ds, a);
	if (r < 0)
		goto out;
	if (o->embed) {
		const struct fp_st_tensor *e =
			fp_st_model_find(fp_model_source(m), "model.embed_tokens.weight");

		if (e)
			fp_st_release(e);
	}
	for (uint32_t i = 0; i < c->nlayers; i++) {
		size_t dim;

		snprintf(name, sizeof(name), "block %" PRIu32 " load", i);
		stage(name);
		r = fp_block_load(m, i, &blk);
		if (r < 0)
			goto out;
		if (o->early)
			fp_block_release_source(m, i);
		r = fp_stats_new(c, i, o->xtx ? FP_STATS_XTX : 0, &st);
		if (r < 0)
			goto out;
		snprintf(name, sizeof(name), "block %" PRIu32 " forward", i);
		stage(name);
		r = fp_block_forward(m, blk, ds, a, b, fp_stats_hook, st);
		if (r < 0)
			goto out;
		/* the pass must really have produced statistics for every linear */
		for (int w = 0; w < FP_LIN_COUNT; w++) {
			const double *sq = fp_stats_sumsq(st, (enum fp_linear)w, &dim);
			double sum = 0;

			for (size_t j = 0; j < dim; j++)
				sum += sq[j];
			if (fp_stats_ntokens(st, (enum fp_linear)w) != ds->ntokens || !(sum > 0)) {
				r = fp_err_detail(-EIO, "block %" PRIu32 " %s: no statistics", i,
						  fp_linear_name((enum fp_linear)w));
				goto out;
			}
		}
		snprintf(name, sizeof(name), "block %" PRIu32 " free+release", i);
		stage(name);
		fp_stats_free(st);
		st = NULL;
		fp_block_free(blk);
		blk = NULL;
		if (!o->early)
			fp_block_release_source(m, i);
		t = a;
		a = b;
		b = t;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	*ret_s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
out:
	fp_stats_free(st);
	fp_block_free(blk);
	free(a);
	free(b);
	return r;
}

static void usage(void)
{
	printf("Usage: %s --model DIR --data FILE [OPTIONS]\n"
	       "\n"
	       "Peak RSS of a calibration-statistics pass (block by block, sums of squares of\n"
	       "every linear input) against the memory it needs, computed from the shapes.\n"
	       "Run it under /usr/bin/time -v; tests/bench/run_model_bench.sh does.\n"
	       "\n"
	       "Options:\n"
	       "  -m, --model DIR      model directory (config.json + model.safetensors)\n"
	       "  -d, --data FILE      token file (.u32 / .u16 / .jsonl / .txt)\n"
	       "  -n, --nsamples N     samples (default 8)\n"
	       "  -L, --seqlen L       tokens per sample (default 512)\n"
	       "  -t, --threads N      threads for fp_par and OpenBLAS (default 2)\n"
	       "      --xtx            also accumulate X^T X (SparseGPT statistics)\n"
	       "      --release-early  release a block's mapped pages right after loading it\n"
	       "      --release-embed  release the embedding's mapped pages after fp_embed\n"
	       "  -h, --help           show this help and exit\n",
	       PROG);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "data", required_argument, NULL, 'd' },
		{ "nsamples", required_argument, NULL, 'n' },
		{ "seqlen", required_argument, NULL, 'L' },
		{ "threads", required_argument, NULL, 't' },
		{ "xtx", no_argument, NULL, 'X' },
		{ "release-early", no_argument, NULL, 'R' },
		{ "release-embed", no_argument, NULL, 'E' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *model = NULL, *data = NULL;
	unsigned nsamples = 8, seqlen = 512, threads = 2;
	struct pass_opts po = { 0 };
	bool sampling = false;
	struct fp_model *m = NULL;
	struct fp_dataset *ds = NULL;
	struct fp_data_opts dopt = { 0 };
	struct need need;
	struct rusage ru;
	uint64_t hwm, peak_anon = 0, peak_file = 0, disk;
	pthread_t th;
	double secs = 0;
	int c, r;

	if (argc == 1) {
		fprintf(stderr,
			"%s: needs --model and --data; run tests/bench/run_model_bench.sh "
			"(generates a model). Skipping.\n",
			PROG);
		return 77;
	}
	while ((c = getopt_long(argc, argv, ":m:d:n:L:t:h", opts, NULL)) != -1) {
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
		case 'X':
			po.xtx = true;
			break;
		case 'R':
			po.early = true;
			break;
		case 'E':
			po.embed = true;
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
	fp_par_set_threads(threads);
	fp_blas_set_threads((int)threads);
	smp.page = sysconf(_SC_PAGESIZE);
	stage("start");
	sampling = pthread_create(&th, NULL, sampler, NULL) == 0;

	stage("open");
	r = fp_model_open(model, &m);
	if (r < 0)
		goto out;
	dopt.seqlen = seqlen;
	dopt.nsamples = nsamples;
	dopt.vocab_size = fp_model_config(m)->vocab;
	stage("data");
	r = fp_data_load(data, &dopt, &ds);
	if (r < 0)
		goto out;
	r = stats_pass(m, ds, &po, &secs);
	if (r < 0)
		goto out;
	stage("end");
	if (sampling) {
		atomic_store(&smp.stop, true);
		pthread_join(th, NULL);
		sampling = false;
	}

	compute_need(fp_model_config(m), ds, fp_par_threads(), po.xtx, &need);
	hwm = status_kb("VmHWM");
	getrusage(RUSAGE_SELF, &ru);
	disk = fp_st_model_bytes(fp_model_source(m));
	printf("%s: model %s: %" PRIu32 " blocks, %.3f GB of safetensors; %zu samples x %u "
	       "tokens; %u threads; statistics: sums of squares%s; %.1f s\n",
	       PROG, model, fp_model_config(m)->nlayers, (double)disk / 1e9, ds->nsamples, seqlen,
	       fp_par_threads(), po.xtx ? " + X^T X" : "", secs);
	printf("block pages released %s; embedding pages %s\n",
	       po.early ? "right after fp_block_load" : "after the block (documented order)",
	       po.embed ? "released after fp_embed" : "left mapped (as fp_embed leaves them)");
	printf("\nhighest RSS per stage (sampled every %ld ms), MiB:\n", SAMPLE_NS / 1000000);
	printf("  %-26s %9s %9s %9s\n", "stage", "total", "anon", "file");
	for (unsigned i = 0; i < smp.n; i++) {
		const struct rss *p = &smp.st[i].peak;

		printf("  %-26s %9.1f %9.1f %9.1f\n", smp.st[i].name, mib(p->total),
		       mib(p->total - p->file), mib(p->file));
		if (p->total - p->file > peak_anon)
			peak_anon = p->total - p->file;
		if (p->file > peak_file)
			peak_file = p->file;
	}
	printf("\nneeded, from the shapes (MiB):\n");
	printf("  %-44s %9.1f\n", "largest block in f32", mib(need.block));
	printf("  %-44s %9.1f\n", "activations (input + output hidden)", mib(need.act));
	printf("  %-44s %9.1f\n", "fp_block_forward scratch (X, Y, attention)", mib(need.scratch));
	printf("  %-44s %9.1f\n", "RoPE tables", mib(need.rope));
	printf("  %-44s %9.1f\n", "statistics of one block", mib(need.stats));
	printf("  %-44s %9.1f\n", "total", mib(need.total));
	printf("\npeak RSS (VmHWM) %.1f MiB, ru_maxrss %.1f MiB; highest sampled anon %.1f MiB, "
	       "file %.1f MiB\n",
	       mib(hwm), (double)ru.ru_maxrss / 1024.0, mib(peak_anon), mib(peak_file));
	printf("peak / needed = %.3f   [target <= 1.5: %s]\n", (double)hwm / (double)need.total,
	       (double)hwm <= 1.5 * (double)need.total ? "met" : "NOT met");
	printf("\nresult disk_bytes=%" PRIu64 " blocks=%" PRIu32 " seconds=%.2f\n", disk,
	       fp_model_config(m)->nlayers, secs);
	printf("result need_bytes=%" PRIu64 " block_bytes=%" PRIu64 " act_bytes=%" PRIu64
	       " scratch_bytes=%" PRIu64 "\n",
	       need.total, need.block, need.act, need.scratch);
	printf("result peak_bytes=%" PRIu64 " peak_anon_bytes=%" PRIu64 " peak_file_bytes=%" PRIu64
	       " ratio=%.4f\n",
	       hwm, peak_anon, peak_file, (double)hwm / (double)need.total);
out:
	if (sampling) {
		atomic_store(&smp.stop, true);
		pthread_join(th, NULL);
	}
	if (r < 0)
		fprintf(stderr, "%s: %s\n", PROG, fp_err_last() ? fp_err_last() : fp_strerror(r));
	fp_data_free(ds);
	fp_model_close(m);
	return r < 0 ? 1 : 0;
}
