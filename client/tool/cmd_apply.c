/*
 * `fedprune apply --model DIR --mask FILE --out DIR`: zero the weights a mask file prunes and
 * write the result as a Hugging Face model directory (hfout.h). A mask naming a tensor the
 * model lacks, or with another shape, is refused before anything is written.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "err.h"
#include "hfout.h"
#include "mask.h"
#include "tool.h"

#define PROG FP_TOOL " apply"

static void usage(void)
{
	printf("Usage: %s --model DIR --mask FILE --out DIR\n"
	       "\n"
	       "Write the model in DIR to OUT with every weight the mask file FILE prunes set to\n"
	       "exactly zero (a .fpmask file: from 'fedprune prune' or the server). Tensors\n"
	       "without a mask are copied byte for byte; config and tokenizer files are copied;\n"
	       "dtypes and sharding are kept. The mask's tensor names and shapes must match the\n"
	       "model. OUT must not exist (or be empty); it appears only once complete.\n"
	       "\n"
	       "Options:\n"
	       "  -m, --model DIR   model directory (required)\n"
	       "  -k, --mask FILE   mask file (required)\n"
	       "  -o, --out DIR     output directory (required)\n"
	       "  -h, --help        show this help and exit\n",
	       PROG);
}

int fp_cmd_apply(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' },
		{ "mask", required_argument, NULL, 'k' },
		{ "out", required_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *model = NULL, *mask = NULL, *out = NULL;
	struct fp_mask_set *ms = NULL;
	struct fp_hfout_apply_stats st = { 0 };
	int c, r;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":m:k:o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			model = optarg;
			break;
		case 'k':
			mask = optarg;
			break;
		case 'o':
			out = optarg;
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
	if (!model)
		fp_cli_fail(PROG, "--model is required");
	if (!mask)
		fp_cli_fail(PROG, "--mask is required");
	if (!out)
		fp_cli_fail(PROG, "--out is required");

	fp_err_clear();
	r = fp_mask_set_load(mask, &ms);
	if (r < 0)
		goto out;
	fp_err_clear();
	r = fp_hfout_apply_mask(model, ms, mask, out, &st);
	if (r < 0)
		goto out;
	printf("applied %zu masks: %" PRIu64 " of %" PRIu64 " weights pruned (%.4f), %" PRIu64
	       " zeros -> %s\n",
	       st.masked, st.pruned, st.numel,
	       st.numel ? (double)st.pruned / (double)st.numel : 0.0, st.zeros, out);
	r = fflush(stdout) == 0 ? 0 : -EIO;
out:
	if (r < 0)
		fprintf(stderr, "%s: %s\n", PROG, *fp_err_last() ? fp_err_last() : fp_strerror(r));
	fp_mask_set_free(ms);
	return r < 0 ? 1 : 0;
}
