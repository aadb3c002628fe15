/*
 * `fedprune aggregate`: the server's FedPrLLM aggregation run offline on mask files written by
 * `fedprune prune` (fedprllm.md §6.3, §6.4; docs/aggregation.md). The very same library code
 * (aggregate.h, fp_agg_run) the server runs at the end of a round.
 */
#include <float.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "aggregate.h"
#include "alloc.h"
#include "cli.h"
#include "err.h"
#include "par.h"
#include "parse.h"
#include "tool.h"

#define PROG FP_TOOL " aggregate"

/* Also declared in tool.h once the command is wired in. */
int fp_cmd_aggregate(int argc, char **argv);

static void usage(void)
{
	printf("Usage: %s --model DIR --mask FILE [--mask FILE ...] --sparsity S --out DIR\n"
	       "       [OPTIONS]\n"
	       "\n"
	       "FedPrLLM aggregation, offline: count the prune votes of the client masks (one\n"
	       "FILE per client, .fpmask as written by 'fedprune prune'), prune in every\n"
	       "comparison group exactly floor(group size * S) weights with the most votes, and\n"
	       "write OUT: the pruned model (Hugging Face directory, original dtypes), the global\n"
	       "mask OUT/mask.fpmask and OUT/report.json. OUT must not exist or be empty.\n"
	       "\n"
	       "Options:\n"
	       "  -m, --model DIR        the dense model the clients pruned (required)\n"
	       "  -k, --mask FILE        a client's mask file; once per client (required)\n"
	       "  -s, --sparsity S       fraction pruned per group, 0..1 (required)\n"
	       "  -o, --out DIR          output directory (required)\n"
	       "  -g, --group G          comparison group: layer (default), row or column\n"
	       "  -b, --tie-break R      at the boundary vote count prune first: magnitude\n"
	       "                         (default: smallest |W|, then lower index), index (lower\n"
	       "                         index) or random (keyed hash, see --seed)\n"
	       "      --seed N           seed of --tie-break random (default 0)\n"
	       "  -w, --weights W,W,...  one vote weight per mask, in --mask order (e.g. token\n"
	       "                         counts; default 1 each); each > 0\n"
	       "      --scale            scale kept weights by the share of clients keeping them\n"
	       "      --no-agreement     skip the pairwise mask agreement of the report\n"
	       "      --mask-only        write only OUT/mask.fpmask and OUT/report.json, no "
	       "model;\n"
	       "                         the masks may then cover only some decoder linears (e.g.\n"
	       "                         one block of an iterative round)\n"
	       "      --batch-mem SIZE   client masks held in memory at once (default 512MiB)\n"
	       "  -t, --threads N        compute threads (default: online CPUs)\n"
	       "  -h, --help             show this help and exit\n",
	       PROG);
}

struct agg_args {
	const char *model, *out;
	const char **masks;
	size_t nmasks;
	double sparsity;
	bool have_sparsity;
	enum fp_group group;
	enum fp_agg_tie tie;
	uint64_t seed;
	bool have_seed;
	const char *weights_arg;
	double *weights;
	bool scale, no_agreement, mask_only;
	uint64_t batch_mem;
	uint64_t threads;
};

/* Parse "w1,w2,..." into a->weights (exactly a->nmasks values, each > 0 and finite). */
static void parse_weights(struct agg_args *a)
{
	char *copy = fp_strdup(a->weights_arg), *save = NULL, *tok;
	size_t n = 0;

	if (!copy)
		fp_cli_fail(PROG, "out of memory");
	a->weights = fp_callocarray(a->nmasks, sizeof(double));
	if (!a->weights)
		fp_cli_fail(PROG, "out of memory");
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		double v;

		if (fp_parse_double(tok, 0, FLT_MAX, &v) < 0 || !(v > 0))
			fp_cli_fail(PROG,
				    "--weights: value %zu is '%s' (must be a number > 0 that fits "
				    "a float)",
				    n + 1, tok);
		if (n < a->nmasks)
			a->weights[n] = v;
		n++;
	}
	free(copy);
	if (n != a->nmasks)
		fp_cli_fail(PROG, "--weights has %zu values for %zu masks", n, a->nmasks);
}

static void parse_args(int argc, char **argv, struct agg_args *a)
{
	enum { OPT_SEED = 256, OPT_SCALE, OPT_NO_AGREE, OPT_BATCH, OPT_MASK_ONLY };
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "mask", required_argument, NULL, 'k' },
		{ "sparsity", required_argument, NULL, 's' },
		{ "out", required_argument, NULL, 'o' },
		{ "group", required_argument, NULL, 'g' },
		{ "tie-break", required_argument, NULL, 'b' },
		{ "seed", required_argument, NULL, OPT_SEED },
		{ "weights", required_argument, NULL, 'w' },
		{ "scale", no_argument, NULL, OPT_SCALE },
		{ "no-agreement", no_argument, NULL, OPT_NO_AGREE },
		{ "mask-only", no_argument, NULL, OPT_MASK_ONLY },
		{ "batch-mem", required_argument, NULL, OPT_BATCH },
		{ "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":m:k:s:o:g:b:w:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			a->model = optarg;
			break;
		case 'k': {
			const char **m;

			if (a->nmasks >= FP_AGG_MAX_CLIENTS)
				fp_cli_fail(PROG, "more than %u --mask files", FP_AGG_MAX_CLIENTS);
			m = fp_reallocarray(a->masks, a->nmasks + 1, sizeof(*m));
			if (!m)
				fp_cli_fail(PROG, "out of memory");
			a->masks = m;
			a->masks[a->nmasks++] = optarg;
			break;
		}
		case 's':
			a->sparsity = fp_cli_double(PROG, "--sparsity", optarg, 0, 1);
			a->have_sparsity = true;
			break;
		case 'o':
			a->out = optarg;
			break;
		case 'g':
			if (fp_group_parse(optarg, &a->group) < 0 || a->group == FP_GROUP_NM)
				fp_cli_fail(PROG, "--group must be layer, row or column, not '%s'",
					    optarg);
			break;
		case 'b':
			if (fp_agg_tie_parse(optarg, &a->tie) < 0)
				fp_cli_fail(
					PROG,
					"--tie-break must be magnitude, index or random, not '%s'",
					optarg);
			break;
		case OPT_SEED:
			a->seed = fp_cli_u64(PROG, "--seed", optarg, 0, UINT64_MAX);
			a->have_seed = true;
			break;
		case 'w':
			a->weights_arg = optarg;
			break;
		case OPT_SCALE:
			a->scale = true;
			break;
		case OPT_MASK_ONLY:
			a->mask_only = true;
			break;
		case OPT_NO_AGREE:
			a->no_agreement = true;
			break;
		case OPT_BATCH:
			if (fp_parse_size(optarg, 1, SIZE_MAX, &a->batch_mem) < 0)
				fp_cli_fail(PROG, "--batch-mem: bad size '%s'", optarg);
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
	if (!a->nmasks)
		fp_cli_fail(PROG, "at least one --mask is required");
	if (!a->have_sparsity)
		fp_cli_fail(PROG, "--sparsity is required");
	if (!a->out)
		fp_cli_fail(PROG, "--out is required");
	if (a->have_seed && a->tie != FP_AGG_TIE_RANDOM)
		fp_cli_fail(PROG, "--seed only applies to --tie-break random");
	if (a->weights_arg)
		parse_weights(a);
}

/* One summary line from the report (best effort: the report is on disk anyway). */
static void print_summary(const cJSON *rep, const char *out)
{
	const cJSON *ov = cJSON_GetObjectItemCaseSensitive(rep, "overall");
	const cJSON *tm = cJSON_GetObjectItemCaseSensitive(rep, "timings");
	const cJSON *ag = cJSON_GetObjectItemCaseSensitive(rep, "agreement");
	double v[7] = { 0 };
	const char *keys[7] = { "tensors", "weights",	  "pruned",	 "sparsity",
				"tied",	   "tied_pruned", "split_groups" };
	const cJSON *mj = cJSON_GetObjectItemCaseSensitive(ag, "mean_pairwise_jaccard");

	for (int i = 0; i < 7; i++) {
		const cJSON *x = cJSON_GetObjectItemCaseSensitive(ov, keys[i]);

		v[i] = cJSON_IsNumber(x) ? x->valuedouble : 0;
	}
	printf("tensors=%.0f weights=%.0f pruned=%.0f sparsity=%.6f boundary_tied=%.0f "
	       "tied_pruned=%.0f split_groups=%.0f",
	       v[0], v[1], v[2], v[3], v[4], v[5], v[6]);
	if (cJSON_IsNumber(mj))
		printf(" mean_pairwise_jaccard=%.4f", mj->valuedouble);
	mj = cJSON_GetObjectItemCaseSensitive(tm, "total_seconds");
	printf(" seconds=%.3f out=%s\n", cJSON_IsNumber(mj) ? mj->valuedouble : 0.0, out);
}

int fp_cmd_aggregate(int argc, char **argv)
{
	struct agg_args a = { .group = FP_GROUP_LAYER, .tie = FP_AGG_TIE_MAGNITUDE };
	struct fp_agg_job job = { 0 };
	cJSON *rep = NULL;
	int r, status = 1;

	parse_args(argc, argv, &a);
	if (a.mask_only && a.scale)
		fp_cli_fail(PROG, "--scale changes the model, which --mask-only does not write");
	if (a.threads)
		fp_par_set_threads((unsigned)a.threads);
	job.model_dir = a.model;
	job.mask_paths = a.masks;
	job.opts.nclients = a.nmasks;
	job.opts.weights = a.weights;
	job.opts.sparsity = a.sparsity;
	job.opts.group = a.group;
	job.opts.tie = a.tie;
	job.opts.seed = a.seed;
	job.scale = a.scale;
	job.agreement = !a.no_agreement;
	job.require_all = !a.mask_only;
	job.mask_only = a.mask_only;
	job.batch_mem = (size_t)a.batch_mem;
	job.out_dir = a.out;
	fp_err_clear();
	r = fp_agg_run(&job, &rep);
	if (r < 0) {
		fprintf(stderr, "%s: %s\n", PROG, *fp_err_last() ? fp_err_last() : fp_strerror(r));
		goto out;
	}
	print_summary(rep, a.out);
	status = fflush(stdout) == 0 ? 0 : 1;
out:
	cJSON_Delete(rep);
	free(a.masks);
	free(a.weights);
	return status;
}
