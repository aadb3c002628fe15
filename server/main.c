/*
 * fedprune-server: the aggregation daemon. Everything it shares with the client (options,
 * configuration, the loop's life) lives in common/base/daemon.c; this file holds what is the
 * server's own: its configuration table and what it starts on the loop.
 */
#include <stddef.h>

#include "cfg.h"
#include "daemon.h"
#include "log.h"

struct server_cfg {
	int log_level;
};

static const struct fp_cfg_key server_keys[] = {
	{ "log", "level", FP_CFG_ENUM, offsetof(struct server_cfg, log_level), .def = "info",
	  .choices = fp_log_level_names, .help = "least severe level written to stderr" },
	{ 0 },
};

int main(int argc, char **argv)
{
	static struct server_cfg cfg;
	const struct fp_daemon_desc desc = {
		.prog = "fedprune-server",
		.summary = "The fedprune aggregation server: collects the clients' pruning masks\n"
			   "and publishes the global sparse model.",
		.keys = server_keys,
		.cfg = &cfg,
		.log_level_offset = offsetof(struct server_cfg, log_level),
	};

	return fp_daemon_main(argc, argv, &desc);
}
