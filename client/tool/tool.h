/*
 * The offline tool `fedprune`: one program, one subcommand per file (cmd_*.c). Each
 * subcommand gets argv starting at its own name, parses its flags with the conventions of
 * cli.h (exit 2 on a usage error) and returns the process exit status (0 ok, 1 failure).
 */
#ifndef FP_TOOL_H
#define FP_TOOL_H

#define FP_TOOL "fedprune"

struct fp_tool_cmd {
	const char *name;
	const char *summary;
	int (*run)(int argc, char **argv);
};

/* Subcommands; each defined in its cmd_<name>.c. */
int fp_cmd_inspect(int argc, char **argv);
int fp_cmd_eval(int argc, char **argv);
int fp_cmd_prune(int argc, char **argv);
int fp_cmd_apply(int argc, char **argv);
int fp_cmd_compare(int argc, char **argv);
int fp_cmd_aggregate(int argc, char **argv);
int fp_cmd_split(int argc, char **argv);
int fp_cmd_privatize(int argc, char **argv);

#endif
