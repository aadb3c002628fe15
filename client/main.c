/*
 * fedprune-client: the daemon that runs next to an organisation's private calibration data.
 * Options, configuration and the loop's life are shared with the server (common/base/daemon.c);
 * this file holds the client's configuration table and what it starts on the loop.
 */
#include <stddef.h>

#include "cfg.h"
#include "daemon.h"
#include "log.h"

struct client_cfg {
	int log_level;
};

static const struct fp_cfg_key client_keys[] = {
	{ "log", "level", FP_CFG_ENUM, offsetof(struct client_cfg, log_level), .def = "info",
	  .choices = fp_log_level_names, .help = "least severe level written to stderr" },
	{ 0 },
};

int main(int argc, char **argv)
{
	static struct client_cfg cfg;
	const struct fp_daemon_desc desc = {
		.prog = "fedprune-client",
		.summary = "The fedprune client: computes pruning masks on local private data and\n"
			   "sends only those masks to the aggregation server.",
		.keys = client_keys,
		.cfg = &cfg,
		.log_level_offset = offsetof(struct client_cfg, log_level),
	};

	return fp_daemon_main(argc, argv, &desc);
}
