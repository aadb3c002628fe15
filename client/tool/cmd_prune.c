/*
 * `fedprune prune`: the centralized baseline. Prune a Hugging Face model with magnitude, Wanda
 * or SparseGPT on one calibration file and write a loadable model directory, the mask file and
 * report.json (common/model/prune.h does the work).
 */
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "data.h"
#include "err.h"
#include "log.h"
#include "model.h"
#include "par.h"
#include "parse.h"
#include "prune.h"
#include "tool.h"

#define PROG FP_TOOL " prune"

#define DEFAULT_NSAMPLES 128
#define DEFAULT_SEQLEN	 2048

static void usage(void)
{
	printf("Usage: %s --model DIR --method METHOD [--calib FILE] --out DIR [OPTIONS]\n"
	       "\n"
	       "Prune the seven linear layers of every decoder block of the Hugging Face model in\n"
	       "DIR (never embeddings, norms or lm_head) and write OUT: a model directory that\n"
	       "loads as is (config and tokenizer files copied, weights in their original dtype\n"
	       "and sharding, pruned weights exactly zero), the mask file " FP_PRUNE_MASK_FILE "\n"
	       "and " FP_PRUNE_REPORT_FILE " (settings, data digest, per-matrix sparsity, "
	       "timings).\n"
	       "OUT must not exist (or be empty); it appears only once complete.\n"
	       "\n"
	       "Methods (docs/pruning.md):\n"
	       "  magnitude  |W|; needs no data (--calib is not read)\n"
	       "  wanda      |W| * sqrt(mean over samples of the sum of x_j^2 over tokens)\n"
	       "  sparsegpt  OBS mask selection with weight update (Hessian 2/n X^T X, 1%%\n"
	       "             damping, blocks of 128 columns over all rows)\n"
	       "\n"
	       "Options:\n"
	       "  -m, --model DIR        model directory (required)\n"
	       "  -M, --method METHOD    magnitude, wanda or sparsegpt (required)\n"
	       "  -c, --calib FILE       calibration data: .jsonl (input_ids), .u16/.u32 token\n"
	       "                         ids or .txt bytes (required for wanda, sparsegpt)\n"
	       "  -o, --out DIR          output directory (required)\n"
	       "  -s, --sparsity S       fraction pruned, 0..1 (default 0.5): per comparison\n"
	       "                         group, or of all weights with --allocation global/lamp\n"
	       "  -p, --pattern N:M      prune N of every M consecutive inputs (2:4, 4:8)\n"
	       "                         instead; --sparsity may then only be N/M\n"
	       "  -g, --group G          comparison group: row, layer or column (default:\n"
	       "                         row for wanda, layer for magnitude; not for sparsegpt)\n"
	       "  -a, --allocation A     uniform (default), global (Global MP) or lamp\n"
	       "      --min-keep F       global/lamp: fraction of every matrix always kept\n"
	       "                         (default %g)\n"
	       "  -n, --nsamples N       calibration samples (default %d)\n"
	       "  -L, --seqlen L         tokens per sample (default min(max_position_embeddings,\n"
	       "                         %d))\n"
	       "      --seed S           seed of the random draw of the samples (default 0)\n"
	       "      --no-sequential    take every block's statistics from the dense model\n"
	       "                         (default: from the already pruned blocks, as Wanda and\n"
	       "                         SparseGPT do)\n"
	       "  -t, --threads N        compute threads (default: online CPUs)\n"
	       "  -h, --help             show this help and exit\n"
	       "\n"
	       "Every comparison group prunes exactly floor(size * S) weights; equal metrics are\n"
	       "pruned lower index first.\n",
	       PROG, FP_PRUNE_MIN_KEEP, DEFAULT_NSAMPLES, DEFAULT_SEQLEN);
}

struct prune_args {
	const char *model, *calib, *out;
	const char *method_s, *group_s, *pattern_s, *alloc_s;
	double sparsity;
	bool sparsity_set;
	double min_keep;
	bool min_keep_set;
	uint64_t nsamples, seqlen, seed, threads;
	bool no_sequential;
};

enum {
	OPT_SEED = 1000,
	OPT_NO_SEQ,
	OPT_MIN_KEEP,
};

static void parse_args(int argc, char **argv, struct prune_args *a)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "method", required_argument, NULL, 'M' },
		{ "calib", required_argument, NULL, 'c' },
		{ "out", required_argument, NULL, 'o' },
		{ "sparsity", required_argument, NULL, 's' },
		{ "pattern", required_argument, NULL, 'p' },
		{ "group", required_argument, NULL, 'g' },
		{ "allocation", required_argument, NULL, 'a' },
		{ "min-keep", required_argument, NULL, OPT_MIN_KEEP },
		{ "nsamples", required_argument, NULL, 'n' },
		{ "seqlen", required_argument, NULL, 'L' },
		{ "seed", required_argument, NULL, OPT_SEED },
		{ "no-sequential", no_argument, NULL, OPT_NO_SEQ },
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":m:M:c:o:s:p:g:a:n:L:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			a->model = optarg;
			break;
		case 'M':
			a->method_s = optarg;
			break;
		case 'c':
			a->calib = optarg;
			break;
		case 'o':
			a->out = optarg;
			break;
		case 's':
			a->sparsity = fp_cli_double(PROG, "--sparsity", optarg, 0.0, 1.0);
			a->sparsity_set = true;
			break;
		case 'p':
			a->pattern_s = optarg;
			break;
		case 'g':
			a->group_s = optarg;
			break;
		case 'a':
			a->alloc_s = optarg;
			break;
		case OPT_MIN_KEEP:
			a->min_keep = fp_cli_double(PROG, "--min-keep", optarg, 0.0, 1.0);
			a->min_keep_set = true;
			break;
		case 'n':
			a->nsamples = fp_cli_u64(PROG, "--nsamples", optarg, 1, UINT32_MAX);
			break;
		case 'L':
			a->seqlen = fp_cli_u64(PROG, "--seqlen", optarg, 2, FP_DATA_MAX_SEQLEN);
			break;
		case OPT_SEED:
			a->seed = fp_cli_u64(PROG, "--seed", optarg, 0, UINT64_MAX);
			break;
		case OPT_NO_SEQ:
			a->no_sequential = true;
			break;
		case 't':
			a->threads = fp_cli_u64(PROG, "--threads", optarg, 1, FP_PAR_MAX_THREADS);
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
	if (!a->model)
		fp_cli_fail(PROG, "--model is required");
	if (!a->method_s)
		fp_cli_fail(PROG, "--method is required (magnitude, wanda or sparsegpt)");
	if (!a->out)
		fp_cli_fail(PROG, "--out is required");
}

/* Turn the flags into pruning options; usage errors exit 2. */
static void make_opts(const struct prune_args *a, struct fp_prune_opts *o)
{
	enum fp_prune_method m;

	if (fp_prune_method_parse(a->method_s, &m) < 0)
		fp_cli_fail(PROG, "--method '%s': use magnitude, wanda or sparsegpt", a->method_s);
	fp_prune_opts_init(o, m);
	if (fp_prune_needs_data(m) && !a->calib)
		fp_cli_fail(PROG, "--calib is required for --method %s", a->method_s);
	if (a->sparsity_set)
		o->sparsity = a->sparsity;
	if (a->group_s) {
		if (m == FP_PRUNE_SPARSEGPT)
			fp_cli_fail(PROG, "--group does not apply to sparsegpt (it selects in "
					  "blocks of 128 columns over all rows)");
		if (fp_group_parse(a->group_s, &o->group) < 0 || o->group == FP_GROUP_NM)
			fp_cli_fail(PROG, "--group '%s': use row, layer or column", a->group_s);
	}
	if (a->alloc_s && fp_sparsity_scheme_parse(a->alloc_s, &o->allocation) < 0)
		fp_cli_fail(PROG, "--allocation '%s': use uniform, global or lamp", a->alloc_s);
	if (a->min_keep_set) {
		if (o->allocation == FP_SPARSITY_UNIFORM)
			fp_cli_fail(PROG, "--min-keep needs --allocation global or lamp");
		o->min_keep = a->min_keep;
	}
	if (a->pattern_s) {
		if (fp_parse_nm(a->pattern_s, &o->nm_n, &o->nm_m) < 0)
			fp_cli_fail(PROG, "--pattern '%s': use N:M with 0 < N < M <= 64, e.g. 2:4",
				    a->pattern_s);
		if (a->group_s)
			fp_cli_fail(PROG, "--pattern and --group exclude each other");
		if (o->allocation != FP_SPARSITY_UNIFORM)
			fp_cli_fail(PROG, "--pattern needs --allocation uniform");
		if (a->sparsity_set && fabs(a->sparsity - (double)o->nm_n / o->nm_m) > 1e-12)
			fp_cli_fail(PROG, "--sparsity %g contradicts --pattern %s (N/M = %g)",
				    a->sparsity, a->pattern_s, (double)o->nm_n / o->nm_m);
	}
	o->sequential = !a->no_sequential;
}

struct progress {
	bool tty;
	bool line_open;
};

static void on_progress(void *ctx, const struct fp_prune_progress *p)
{
	struct progress *pg = ctx;
	double frac = p->numel ? (double)p->pruned / (double)p->numel : 0.0;

	if (pg->tty) {
		if (p->phase == FP_PRUNE_PHASE_ALLOC)
			fprintf(stderr, "\r\033[Ksparsity allocation done (%.1f s)", p->elapsed);
		else if (p->phase == FP_PRUNE_PHASE_EMBED)
			fprintf(stderr, "\r\033[Kcalibration data embedded (%.1f s)", p->elapsed);
		else
			fprintf(stderr,
				"\r\033[Kblock %" PRIu32 "/%" PRIu32 "  %.1f s  %.2f %% pruned",
				p->block + 1, p->nblocks, p->elapsed, 100.0 * frac);
		pg->line_open = true;
		fflush(stderr);
		return;
	}
	if (p->phase == FP_PRUNE_PHASE_ALLOC)
		fp_log_info("sparsity allocation done", "elapsed=%.3f", p->elapsed);
	else if (p->phase == FP_PRUNE_PHASE_EMBED)
		fp_log_info("calibration data embedded", "elapsed=%.3f", p->elapsed);
	else
		fp_log_info("block pruned",
			    "block=%" PRIu32 " blocks=%" PRIu32 " elapsed=%.3f "
			    "pruned=%" PRIu64 " weights=%" PRIu64 " sparsity=%.6f",
			    p->block, p->nblocks, p->elapsed, p->pruned, p->numel, frac);
}

static void end_line(struct progress *pg)
{
	if (pg->line_open)
		fputc('\n', stderr);
	pg->line_open = false;
}

static int fail(const char *what, int r)
{
	fprintf(stderr, "%s: %s%s%s\n", PROG, what ? what : "", what ? ": " : "",
		*fp_err_last() ? fp_err_last() : fp_strerror(r));
	return 1;
}

int fp_cmd_prune(int argc, char **argv)
{
	struct prune_args a = { 0 };
	struct fp_prune_opts o;
	struct fp_prune_info info = { 0 };
	struct fp_prune_result res = { 0 };
	struct progress pg = { .tty = isatty(2) == 1 };
	struct fp_model *m = NULL;
	struct fp_dataset *ds = NULL;
	const struct fp_model_cfg *cfg;
	int r, status = 1;

	parse_args(argc, argv, &a);
	make_opts(&a, &o);
	if (a.threads) {
		fp_par_set_threads((unsigned)a.threads);
		fp_blas_set_threads((int)a.threads);
	}
	o.progress = on_progress;
	o.progress_ctx = &pg;

	fp_err_clear();
	r = fp_model_open(a.model, &m);
	if (r < 0) {
		fail(NULL, r);
		goto out;
	}
	cfg = fp_model_config(m);
	fp_err_clear();
	r = fp_prune_check_opts(&o, cfg);
	if (r < 0) {
		fprintf(stderr, "%s: %s\n", PROG, fp_err_last());
		status = FP_EXIT_USAGE;
		goto out;
	}
	info.model_dir = a.model;
	info.threads = fp_par_threads();
	if (fp_prune_needs_data(o.method)) {
		struct fp_data_opts d = { 0 };

		d.seqlen = (uint32_t)(a.seqlen ? a.seqlen
					       : (cfg->max_pos < DEFAULT_SEQLEN ? cfg->max_pos
										: DEFAULT_SEQLEN));
		if (d.seqlen < 2)
			d.seqlen = 2;
		d.nsamples = (uint32_t)(a.nsamples ? a.nsamples : DEFAULT_NSAMPLES);
		d.vocab_size = cfg->vocab;
		d.shuffle = true;
		d.seed = a.seed;
		fp_err_clear();
		r = fp_data_load(a.calib, &d, &ds);
		if (r < 0) {
			fail(NULL, r);
			goto out;
		}
		info.calib_path = a.calib;
		info.seqlen = d.seqlen;
		info.nsamples = d.nsamples;
		info.seed = d.seed;
		info.shuffle = d.shuffle;
		fp_log_info("calibration data loaded",
			    "file=%s samples=%zu tokens=%" PRIu64 " seqlen=%" PRIu32, fp_q(a.calib),
			    ds->nsamples, ds->ntokens, d.seqlen);
		if (ds->nsamples < d.nsamples)
			fp_log_warn("fewer calibration samples than asked",
				    "file=%s samples=%zu asked=%" PRIu32, fp_q(a.calib),
				    ds->nsamples, d.nsamples);
	} else if (a.calib || a.nsamples || a.seqlen) {
		fp_log_warn("magnitude pruning uses no data: --calib, --nsamples and --seqlen "
			    "are ignored",
			    NULL);
	}
	fp_err_clear();
	r = fp_prune_write(m, a.model, ds, &o, &info, a.out, &res);
	end_line(&pg);
	if (r < 0) {
		fail("pruning failed", r);
		goto out;
	}
	for (size_t i = 0; i < res.nskipped; i++)
		fp_log_info("file not copied", "file=%s", fp_q(res.skipped[i]));
	printf("pruned %" PRIu64 " of %" PRIu64 " weights (%.4f) in %zu matrices with %s in "
	       "%.2f s -> %s\n",
	       res.pruned, res.numel, res.numel ? (double)res.pruned / (double)res.numel : 0.0,
	       res.nmats, fp_prune_method_name(o.method), res.t.total, a.out);
	status = fflush(stdout) == 0 ? 0 : 1;
out:
	end_line(&pg);
	fp_prune_result_done(&res);
	fp_data_free(ds);
	fp_model_close(m);
	return status;
}
