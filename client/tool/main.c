/*
 * `fedprune`: the offline tool. Dispatches to a subcommand; each lives in its own file.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "log.h"
#include "tool.h"

static const struct fp_tool_cmd cmds[] = {
	{ "prune", "prune a model with magnitude, Wanda or SparseGPT (the centralized baseline)",
	  fp_cmd_prune },
	{ "apply", "zero the weights a mask file prunes and write a model directory",
	  fp_cmd_apply },
	{ "compare", "per-tensor Jaccard index and Hamming distance of two mask files",
	  fp_cmd_compare },
	{ "inspect", "list the tensors of a model directory with dtype, shape and sparsity",
	  fp_cmd_inspect },
	{ "eval", "perplexity of a model on a token or text file", fp_cmd_eval },
	{ "aggregate",
	  "vote client masks into one global mask and pruned model (FedPrLLM, offline)",
	  fp_cmd_aggregate },
	{ "split", "divide a text file among N clients, IID or Dirichlet non-IID", fp_cmd_split },
	{ "privatize", "randomize a mask file for local DP, as a client does before sending it",
	  fp_cmd_privatize },
};

static void usage(void)
{
	printf("Usage: %s COMMAND [OPTIONS]\n"
	       "\n"
	       "Offline pruning tool of fedprune: the same code the daemons run, without a\n"
	       "network.\n"
	       "\n"
	       "Commands:\n",
	       FP_TOOL);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		printf("  %-10s %s\n", cmds[i].name, cmds[i].summary);
	printf("\n"
	       "Options:\n"
	       "  -h, --help     show this help and exit\n"
	       "  -V, --version  show version information and exit\n"
	       "\n"
	       "'%s COMMAND --help' describes each command.\n",
	       FP_TOOL);
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : NULL;

	if (!cmd)
		fp_cli_fail(FP_TOOL, "missing command");
	if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
		usage();
		return 0;
	}
	if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
		fp_cli_version(FP_TOOL);
		return 0;
	}
	if (cmd[0] == '-')
		fp_cli_fail(FP_TOOL, "unknown option '%s'", cmd);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(cmd, cmds[i].name) == 0)
			return cmds[i].run(argc - 1, argv + 1);
	fp_cli_fail(FP_TOOL, "unknown command '%s'", cmd);
}
