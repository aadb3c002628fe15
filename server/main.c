/*
 * fedprune-server: the aggregation daemon. Everything it shares with the client (options,
 * configuration, the loop's life) lives in common/base/daemon.c; this file holds what is the
 * server's own: its configuration table and what it starts on the loop.
 *
 * Today the server runs the transport (common/net/srv.h): mutually authenticated TLS 1.3,
 * Hello/Welcome, heartbeats, resumable uploads with digests. The round logic plugs in through
 * fp_srv_set_handler() and struct fp_srv_ops.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cfg.h"
#include "daemon.h"
#include "err.h"
#include "log.h"
#include "netcfg.h"
#include "round.h"
#include "srv.h"
#include "tls.h"

struct server_cfg {
	int log_level;
	char *listen;
	uint32_t port;
	uint32_t max_clients;
	char *allowlist;
	uint64_t max_upload;
	uint64_t session_ttl_ms;
	uint64_t chunk;
	struct fp_net_cfg net;
	struct fp_round_cfg round;
};

/* In the order of enum fp_prune_method, enum fp_group and enum fp_agg_tie. */
static const char *const method_names[] = { "magnitude", "wanda", "sparsegpt", NULL };
static const char *const group_names[] = { "row", "layer", "column", NULL };
static const char *const tie_names[] = { "magnitude", "index", "random", NULL };
static const char *const mode_names[] = { "oneshot", "iterative", NULL };
static const char *const ldp_names[] = { "off", "allowed", "required", NULL };
/* index = enum fp_ldp_mech (0 unused) */
static const char *const ldp_mech_names[] = { "-", "rr", "oue", NULL };

#define R(field) offsetof(struct server_cfg, round.field)

static const struct fp_cfg_key server_keys[] = {
	{ "log", "level", FP_CFG_ENUM, offsetof(struct server_cfg, log_level), .def = "info",
	  .choices = fp_log_level_names, .help = "least severe level written to stderr" },
	{ "server", "listen", FP_CFG_STR, offsetof(struct server_cfg, listen), .def = "0.0.0.0",
	  .max = 64, .help = "IPv4 or IPv6 address to listen on (:: for every IPv6 address)" },
	{ "server", "port", FP_CFG_U32, offsetof(struct server_cfg, port), .def = "7443", .min = 0,
	  .max = 65535, .help = "TCP port to listen on (0: any free port, see the log)" },
	{ "server", "max_clients", FP_CFG_U32, offsetof(struct server_cfg, max_clients),
	  .def = "1024", .min = 1, .max = 65536,
	  .help = "connections held at once; further ones are closed at accept" },
	{ "server", "allowlist", FP_CFG_STR, offsetof(struct server_cfg, allowlist), .def = "",
	  .max = 4096,
	  .help = "file of client identities (certificate CNs) allowed in, one per line; empty: "
		  "every client certificate the CA signed" },
	{ "server", "max_upload", FP_CFG_SIZE, offsetof(struct server_cfg, max_upload),
	  .def = "64GiB", .min = 1024, .max = UINT64_MAX / 2,
	  .help = "most bytes one client may submit in a round" },
	{ "server", "session_ttl", FP_CFG_MSEC, offsetof(struct server_cfg, session_ttl_ms),
	  .def = "1h", .min = 1000, .max = 30ull * 86400 * 1000,
	  .help = "how long a disconnected client's session (and resumable upload) is kept" },
	{ "server", "chunk", FP_CFG_SIZE, offsetof(struct server_cfg, chunk), .def = "1MiB",
	  .min = 4096, .max = FP_FRAME_MAX_LIMIT / 2,
	  .help = "upload chunk size clients are asked to use (at most max_frame / 2)" },
	FP_NET_CFG_KEYS(struct server_cfg, net, "server"),
	{ "round", "model", FP_CFG_STR, R(model), .def = "", .max = 4096,
	  .help = "dense model the federation prunes (Hugging Face directory); required" },
	{ "round", "state_dir", FP_CFG_STR, R(state_dir), .def = FP_STATEDIR "/fedprune-server",
	  .max = 4096, .help = "journal, round specifications and accepted submissions" },
	{ "round", "output", FP_CFG_STR, R(output), .def = "", .max = 4096,
	  .help = "where round-<id>/ results are published (empty: <state_dir>/published)" },
	{ "round", "mode", FP_CFG_ENUM, R(mode), .def = "oneshot", .choices = mode_names,
	  .help = "oneshot: one round prunes every block; iterative: one round per block, "
		  "clients computing each block's input through the published pruned blocks" },
	{ "round", "method", FP_CFG_ENUM, R(method), .def = "wanda", .choices = method_names,
	  .help = "local pruner the clients run" },
	{ "round", "sparsity", FP_CFG_DOUBLE, R(sparsity), .def = "0.5", .dmin = 0, .dmax = 1,
	  .help = "fraction of the weights of every comparison group pruned" },
	{ "round", "pattern", FP_CFG_STR, R(pattern), .def = "unstructured", .max = 16,
	  .help = "unstructured, or N:M (N pruned of every M consecutive inputs)" },
	{ "round", "local_group", FP_CFG_ENUM, R(local_group), .def = "row", .choices = group_names,
	  .help = "comparison group of the clients' local pruner" },
	{ "round", "group", FP_CFG_ENUM, R(group), .def = "layer", .choices = group_names,
	  .help = "comparison group of the server's vote selection (FedPrLLM: layer)" },
	{ "round", "tie_break", FP_CFG_ENUM, R(tie_break), .def = "magnitude", .choices = tie_names,
	  .help = "how equally voted weights at the boundary are chosen" },
	{ "round", "seed", FP_CFG_U64, R(seed), .def = "0", .min = 0, .max = UINT64_MAX,
	  .help = "seed of the calibration draw and of random tie breaking" },
	{ "round", "nsamples", FP_CFG_U32, R(nsamples), .def = "128", .min = 1, .max = 1u << 20,
	  .help = "calibration samples each client draws" },
	{ "round", "seqlen", FP_CFG_U32, R(seqlen), .def = "2048", .min = 2, .max = 1u << 20,
	  .help = "tokens per calibration sample" },
	{ "round", "sequential", FP_CFG_BOOL, R(sequential), .def = "true",
	  .help = "clients feed each block's input through the already pruned blocks" },
	{ "round", "min_clients", FP_CFG_U32, R(min_clients), .def = "3", .min = 1, .max = 65535,
	  .help = "connected clients needed before the round starts" },
	{ "round", "quorum", FP_CFG_U32, R(quorum), .def = "0", .min = 0, .max = 65535,
	  .help = "accepted submissions needed to aggregate (0: min_clients)" },
	{ "round", "wait_clients", FP_CFG_MSEC, R(wait_ms), .def = "10m", .min = 100,
	  .max = 30ull * 86400 * 1000, .help = "how long to wait for min_clients" },
	{ "round", "deadline", FP_CFG_MSEC, R(deadline_ms), .def = "1h", .min = 100,
	  .max = 30ull * 86400 * 1000, .help = "from the round's start to the end of collection" },
	{ "round", "grace", FP_CFG_MSEC, R(grace_ms), .def = "30s", .min = 0,
	  .max = 86400ull * 1000, .help = "after quorum, how long to wait for the others" },
	{ "round", "weight_by_tokens", FP_CFG_BOOL, R(weight_by_tokens), .def = "false",
	  .help = "weigh each client's votes by its calibration tokens" },
	{ "round", "weight_scaling", FP_CFG_BOOL, R(weight_scaling), .def = "false",
	  .help = "scale kept weights by the share of clients that kept them" },
	{ "round", "eval_timeout", FP_CFG_MSEC, R(eval_ms), .def = "10m", .min = 100,
	  .max = 30ull * 86400 * 1000,
	  .help = "how long to wait for the clients' evaluation reports" },
	{ "round", "ldp", FP_CFG_ENUM, R(ldp), .def = "off", .choices = ldp_names,
	  .help = "local DP of the clients' masks: off (refuse privatized masks), allowed, or "
		  "required (refuse masks without it)" },
	{ "round", "ldp_mechanism", FP_CFG_ENUM, R(ldp_mechanism), .def = "rr",
	  .choices = ldp_mech_names,
	  .help = "mechanism privatized masks must use: rr (randomized response, epsilon per "
		  "bit) or oue (optimal unary encoding, epsilon per swapped pair)" },
	{ "round", "ldp_max_epsilon", FP_CFG_DOUBLE, R(ldp_max_epsilon), .def = "8", .dmin = 0.001,
	  .dmax = 20,
	  .help = "largest epsilon a privatized mask may use (smaller = more privacy)" },
	{ "round", "exit_when_done", FP_CFG_BOOL, R(exit_when_done), .def = "false",
	  .help = "exit when the round is complete (status 1 if it failed)" },
	{ 0 },
};

struct server {
	struct fp_daemon *d;
	SSL_CTX *tls;
	struct fp_allowlist allow;
	struct fp_srv *srv;
	struct fp_round *round;
};

static struct server server;

/* Log the certificate's name and warn when it expires soon or has expired. */
static void check_cert(const char *path)
{
	char cn[FP_ID_MAX + 1];
	int64_t not_after = 0, now = (int64_t)time(NULL);

	if (fp_tls_cert_info(path, cn, sizeof(cn), &not_after) < 0)
		return; /* fp_tls_ctx_new reports it */
	if (not_after < now)
		fp_log_err("server certificate has expired", "cert=%s cn=%s", fp_q(path), fp_q(cn));
	else if (not_after - now < 30 * 86400)
		fp_log_warn("server certificate expires soon", "cert=%s cn=%s days_left=%lld",
			    fp_q(path), fp_q(cn), (long long)((not_after - now) / 86400));
	else
		fp_log_info("server certificate", "cert=%s cn=%s days_left=%lld", fp_q(path),
			    fp_q(cn), (long long)((not_after - now) / 86400));
}

static int server_start(struct fp_daemon *d, void *arg)
{
	struct server_cfg *c = arg;
	struct fp_srv_cfg sc = { 0 };
	struct fp_srv_ops ops = { 0 };
	int insecure, r;

	server.d = d;
	r = fp_net_cfg_check(&c->net);
	if (r < 0)
		return r;
	if (c->chunk > c->net.max_frame / 2)
		return fp_err_detail(-EINVAL,
				     "[server] chunk (%llu) must be at most half of [net] "
				     "max_frame (%llu)",
				     (unsigned long long)c->chunk,
				     (unsigned long long)c->net.max_frame);
	insecure = fp_net_insecure(&c->net, d->insecure);
	if (insecure < 0)
		return insecure;
	if (!insecure) {
		struct fp_tls_opts o = {
			.server = true, .cert = c->net.cert, .key = c->net.key, .ca = c->net.ca
		};

		check_cert(c->net.cert);
		r = fp_tls_ctx_new(&o, &server.tls);
		if (r < 0)
			return r;
	}
	if (c->allowlist[0]) {
		r = fp_allowlist_load(c->allowlist, &server.allow);
		if (r < 0)
			return r;
		fp_log_info("allowlist loaded", "file=%s identities=%zu", fp_q(c->allowlist),
			    server.allow.n);
	}
	sc.listen = c->listen;
	sc.port = (uint16_t)c->port;
	sc.max_clients = c->max_clients;
	sc.tls = server.tls;
	sc.allow = c->allowlist[0] ? &server.allow : NULL;
	fp_net_conn_opts(&c->net, &sc.conn);
	sc.heartbeat_ms = (uint32_t)c->net.heartbeat_ms;
	sc.chunk_bytes = (uint32_t)c->chunk;
	sc.max_upload = c->max_upload;
	sc.session_ttl_ms = c->session_ttl_ms;
	c->round.chunk_bytes = (uint32_t)c->chunk;
	r = fp_round_new(d, &c->round, &server.round);
	if (r < 0)
		return r;
	fp_round_ops(&ops);
	sc.data = server.round;
	r = fp_srv_start(&d->loop, &sc, &ops, &server.srv);
	if (r < 0)
		return r;
	r = fp_round_attach(server.round, server.srv);
	if (r < 0)
		return r;
	fp_log_info("listening", "listen=%s port=%d transport=%s max_clients=%u max_frame=%llu",
		    fp_q(c->listen), fp_srv_port(server.srv),
		    insecure ? "INSECURE-plaintext" : "mTLS-1.3", c->max_clients,
		    (unsigned long long)c->net.max_frame);
	return 0;
}

static void server_stopped(struct fp_srv *srv, void *ud)
{
	(void)srv;
	(void)ud;
	server.srv = NULL;
	fp_round_stop(server.round);
	server.round = NULL;
	SSL_CTX_free(server.tls);
	server.tls = NULL;
	fp_allowlist_free(&server.allow);
}

static int server_stop(struct fp_daemon *d, void *arg)
{
	(void)d;
	(void)arg;
	if (!server.srv) {
		fp_round_stop(server.round);
		server.round = NULL;
		SSL_CTX_free(server.tls);
		server.tls = NULL;
		fp_allowlist_free(&server.allow);
		return 0;
	}
	fp_srv_stop(server.srv, server_stopped, NULL);
	return 1;
}

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
		.start = server_start,
		.stop = server_stop,
	};

	return fp_daemon_main(argc, argv, &desc);
}
