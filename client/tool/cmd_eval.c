/*
 * `fedprune eval`: perplexity of a model directory on a token file (fedprllm.md §7), block by
 * block so a model larger than RAM can be evaluated.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <cJSON.h>

#include "cli.h"
#include "data.h"
#include "err.h"
#include "eval.h"
#include "model.h"
#include "par.h"
#include "tool.h"

#define PROG FP_TOOL " eval"

static void usage(void)
{
	printf("Usage: %s --model DIR --data FILE [OPTIONS]\n"
	       "\n"
	       "Perplexity of the model in DIR (Hugging Face layout: config.json and safetensors)\n"
	       "on FILE (.jsonl with input_ids, .u16/.u32 token ids, or .txt bytes) cut into\n"
	       "windows of --seqlen tokens: exp(total next-token cross-entropy / predicted\n"
	       "tokens), equal to exp(mean window loss) for equal-length windows.\n"
	       "\n"
	       "Options:\n"
	       "  -m, --model DIR      model directory (required)\n"
	       "  -d, --data FILE      token file (required)\n"
	       "  -L, --seqlen L       window length (default min(max_position_embeddings, 2048))\n"
	       "  -n, --nsamples N     evaluate N windows (default: all)\n"
	       "  -s, --seed S         draw the N windows at random with seed S\n"
	       "                       (default: the first N in file order)\n"
	       "  -t, --threads N      compute threads (default: online CPUs)\n"
	       "      --json           print the result as one JSON object\n"
	       "  -h, --help           show this help and exit\n",
	       PROG);
}

struct eval_args {
	const char *model;
	const char *data;
	uint64_t seqlen;   /* 0 = default */
	uint64_t nsamples; /* 0 = all */
	uint64_t seed;
	bool shuffle;
	uint64_t threads; /* 0 = default */
	bool json;
};

static void parse_args(int argc, char **argv, struct eval_args *a)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "data", required_argument, NULL, 'd' },
		{ "seqlen", required_argument, NULL, 'L' },
		{ "nsamples", required_argument, NULL, 'n' },
		{ "seed", required_argument, NULL, 's' },
		{ "threads", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'J' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":m:d:L:n:s:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			a->model = optarg;
			break;
		case 'd':
			a->data = optarg;
			break;
		case 'L':
			a->seqlen = fp_cli_u64(PROG, "--seqlen", optarg, 2, FP_MAX_POSITIONS);
			break;
		case 'n':
			a->nsamples = fp_cli_u64(PROG, "--nsamples", optarg, 1, UINT32_MAX);
			break;
		case 's':
			a->seed = fp_cli_u64(PROG, "--seed", optarg, 0, UINT64_MAX);
			a->shuffle = true;
			break;
		case 't':
			a->threads = fp_cli_u64(PROG, "--threads", optarg, 1, FP_PAR_MAX_THREADS);
			break;
		case 'J':
			a->json = true;
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
	if (!a->data)
		fp_cli_fail(PROG, "--data is required");
	if (a->shuffle && !a->nsamples)
		fp_cli_fail(PROG, "--seed needs --nsamples");
}

static int print_json(const struct fp_eval_result *res, uint32_t seqlen, double secs)
{
	cJSON *o = cJSON_CreateObject();
	char *s = NULL;

	if (o && cJSON_AddNumberToObject(o, "perplexity", res->ppl) &&
	    cJSON_AddNumberToObject(o, "nll", res->nll) &&
	    cJSON_AddNumberToObject(o, "windows", (double)res->windows) &&
	    cJSON_AddNumberToObject(o, "tokens", (double)res->tokens) &&
	    cJSON_AddNumberToObject(o, "seqlen", seqlen) &&
	    cJSON_AddNumberToObject(o, "seconds", secs))
		s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!s)
		return -1;
	printf("%s\n", s);
	free(s);
	return 0;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int fp_cmd_eval(int argc, char **argv)
{
	struct eval_args a = { 0 };
	struct fp_model *m = NULL;
	struct fp_dataset *ds = NULL;
	struct fp_data_opts dopts = { 0 };
	struct fp_eval_result res;
	const struct fp_model_cfg *cfg;
	double t0 = now();
	int r, status = 1;

	parse_args(argc, argv, &a);
	if (a.threads) {
		fp_par_set_threads((unsigned)a.threads);
		fp_blas_set_threads((int)a.threads);
	}
	r = fp_model_open(a.model, &m);
	if (r < 0) {
		fprintf(stderr, "%s: %s\n", PROG, *fp_err_last() ? fp_err_last() : fp_strerror(r));
		goto out;
	}
	cfg = fp_model_config(m);
	dopts.seqlen =
		(uint32_t)(a.seqlen ? a.seqlen : (cfg->max_pos < 2048 ? cfg->max_pos : 2048));
	if (dopts.seqlen < 2)
		dopts.seqlen = 2;
	dopts.nsamples = (uint32_t)a.nsamples;
	dopts.vocab_size = cfg->vocab;
	dopts.shuffle = a.shuffle;
	dopts.seed = a.seed;
	fp_err_clear();
	r = fp_data_load(a.data, &dopts, &ds);
	if (r < 0) {
		fprintf(stderr, "%s: %s\n", PROG, *fp_err_last() ? fp_err_last() : fp_strerror(r));
		goto out;
	}
	fp_err_clear();
	r = fp_eval_perplexity(m, ds, NULL, &res);
	if (r < 0) {
		fprintf(stderr, "%s: evaluation failed: %s\n", PROG,
			*fp_err_last() ? fp_err_last() : fp_strerror(r));
		goto out;
	}
	if (a.json) {
		if (print_json(&res, dopts.seqlen, now() - t0) < 0)
			goto out;
	} else {
		printf("perplexity=%.6f windows=%" PRIu64 " tokens=%" PRIu64 " seqlen=%" PRIu32
		       " seconds=%.3f\n",
		       res.ppl, res.windows, res.tokens, dopts.seqlen, now() - t0);
	}
	status = fflush(stdout) == 0 ? 0 : 1;
out:
	fp_data_free(ds);
	fp_model_close(m);
	return status;
}
