/*
 * `fedprune privatize --mask IN --out OUT --epsilon E [--mechanism rr|oue] --state DIR`: the
 * local DP step of fedprune-client, offline: randomize a mask file exactly as a client does
 * before sending it (client/privatize.h: memoized permanent response, privacy account in DIR).
 * For audits, utility studies (tests/quality/ldp_utility.sh) and out-of-band federations.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../privatize.h"
#include "cli.h"
#include "err.h"
#include "ldp.h"
#include "parse.h"
#include "tool.h"

#define PROG FP_TOOL " privatize"

static void usage(void)
{
	printf("Usage: %s --mask IN --out OUT --epsilon E [--mechanism rr|oue] --state DIR\n"
	       "\n"
	       "Randomize the mask file IN as fedprune-client does before it sends a mask with\n"
	       "local differential privacy, and write OUT. The randomized response is memoized\n"
	       "in DIR per true mask (the same IN always gives the same OUT, so repeating it\n"
	       "leaks nothing more), and DIR/account.json counts what was spent.\n"
	       "\n"
	       "Options:\n"
	       "  -k, --mask IN         the true mask (.fpmask) (required)\n"
	       "  -o, --out OUT         the randomized mask file to write (required)\n"
	       "  -e, --epsilon E       privacy parameter, %g .. %g (required)\n"
	       "  -M, --mechanism M     rr: randomized response, epsilon per bit (default);\n"
	       "                        oue: optimal unary encoding, epsilon per swapped pair\n"
	       "  -d, --state DIR       memo and account directory (required; created)\n"
	       "  -h, --help            show this help and exit\n",
	       PROG, FP_LDP_EPS_MIN, FP_LDP_EPS_MAX);
}

int fp_cmd_privatize(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "mask", required_argument, NULL, 'k' },
		{ "out", required_argument, NULL, 'o' },
		{ "epsilon", required_argument, NULL, 'e' },
		{ "mechanism", required_argument, NULL, 'M' },
		{ "state", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *in = NULL, *out = NULL, *state = NULL;
	uint8_t model[32] = { 0 }; /* offline: no model identity */
	struct fp_privatize_result res;
	enum fp_ldp_mech mech = FP_LDP_RR_SYM;
	double eps = 0;
	bool have_eps = false;
	int c, r;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":k:o:e:M:d:h", opts, NULL)) != -1) {
		switch (c) {
		case 'k':
			in = optarg;
			break;
		case 'o':
			out = optarg;
			break;
		case 'e':
			if (fp_parse_double(optarg, FP_LDP_EPS_MIN, FP_LDP_EPS_MAX, &eps) < 0)
				fp_cli_fail(PROG, "--epsilon: '%s' is not a number in %g .. %g",
					    optarg, FP_LDP_EPS_MIN, FP_LDP_EPS_MAX);
			have_eps = true;
			break;
		case 'M':
			if (strcmp(optarg, "rr") == 0)
				mech = FP_LDP_RR_SYM;
			else if (strcmp(optarg, "oue") == 0)
				mech = FP_LDP_RR_OUE;
			else
				fp_cli_fail(PROG, "--mechanism: '%s' (rr or oue)", optarg);
			break;
		case 'd':
			state = optarg;
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
	if (!in || !out || !have_eps || !state)
		fp_cli_fail(PROG, "--mask, --out, --epsilon and --state are required");
	r = fp_privatize_mask(in, out, state, model, mech, eps, &res);
	if (r < 0) {
		fprintf(stderr, "%s: %s\n", PROG, fp_err_last());
		return 1;
	}
	printf("mechanism=%s epsilon=%g epsilon_per_bit=%.6g p=%.9f q=%.9f fresh=%d rounds=%u "
	       "total_epsilon=%g out=%s\n",
	       mech == FP_LDP_RR_OUE ? "oue" : "rr", eps, res.eps_bit, res.p, res.q, res.fresh,
	       res.rounds, res.total_eps, out);
	return 0;
}
