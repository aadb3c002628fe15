#include "tool.h"

/* Placeholder until the model helper writes the real command. */
int fp_cmd_eval(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	return 1;
}
