/*
 * fedprune-client: the daemon that runs next to an organisation's private calibration data.
 * Options, configuration and the loop's life are shared with the server (common/base/daemon.c);
 * this file holds the client's configuration table and what it starts on the loop.
 *
 * The client keeps its connection to the server (common/net/link.h: mutually authenticated
 * TLS 1.3, Hello/Welcome, heartbeats, reconnects with backoff) and takes part in rounds through
 * the job (job.h): prune locally, upload the mask, download the global mask, evaluate, report.
 * docs/client.md describes the [job] keys and the state directory.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "cfg.h"
#include "daemon.h"
#include "data.h"
#include "err.h"
#include "fp_config.h"
#include "job.h"
#include "link.h"
#include "log.h"
#include "netcfg.h"
#include "tls.h"

struct client_cfg {
	int log_level;
	char *server;
	uint32_t port;
	char *server_name;
	char *id;
	uint64_t reconnect_min_ms;
	uint64_t reconnect_max_ms;
	uint64_t chunk;
	struct fp_net_cfg net;
	struct {
		char *model;
		char *calib;
		char *heldout;
		char *state_dir;
		char *output;
		bool eval_dense;
		uint32_t eval_seqlen;
		uint32_t eval_nsamples;
		uint64_t eval_seed;
		double ldp_epsilon;
		int ldp_mechanism;
		bool exit_when_done;
	} job;
};

/* index = enum fp_ldp_mech (0: the round's) */
static const char *const ldp_mech_names[] = { "round", "rr", "oue", NULL };

static const struct fp_cfg_key client_keys[] = {
	{ "log", "level", FP_CFG_ENUM, offsetof(struct client_cfg, log_level), .def = "info",
	  .choices = fp_log_level_names, .help = "least severe level written to stderr" },
	{ "client", "server", FP_CFG_STR, offsetof(struct client_cfg, server), .def = "localhost",
	  .max = 253, .help = "DNS name or IP address of the fedprune server" },
	{ "client", "port", FP_CFG_U32, offsetof(struct client_cfg, port), .def = "7443", .min = 1,
	  .max = 65535, .help = "TCP port of the server" },
	{ "client", "server_name", FP_CFG_STR, offsetof(struct client_cfg, server_name), .def = "",
	  .max = 253,
	  .help = "name or IP the server certificate must carry (empty: the server value)" },
	{ "client", "id", FP_CFG_STR, offsetof(struct client_cfg, id), .def = "", .max = 64,
	  .help = "client identity; with TLS the certificate CN decides and this is "
		  "informational; required in insecure mode" },
	{ "client", "reconnect_min", FP_CFG_MSEC, offsetof(struct client_cfg, reconnect_min_ms),
	  .def = "1s", .min = 10, .max = 3600000,
	  .help = "first reconnect delay ceiling (doubles per failure, full jitter)" },
	{ "client", "reconnect_max", FP_CFG_MSEC, offsetof(struct client_cfg, reconnect_max_ms),
	  .def = "60s", .min = 10, .max = 86400000, .help = "largest reconnect delay" },
	{ "client", "chunk", FP_CFG_SIZE, offsetof(struct client_cfg, chunk), .def = "0", .min = 0,
	  .max = FP_FRAME_MAX_LIMIT / 2, .help = "upload chunk size; 0: what the server asks for" },
	FP_NET_CFG_KEYS(struct client_cfg, net, "client"),
	{ "job", "model", FP_CFG_STR, offsetof(struct client_cfg, job.model), .def = "",
	  .max = 4096,
	  .help = "Hugging Face model directory to prune (the same model as the server's); "
		  "empty: connect only, take part in no round" },
	{ "job", "calib", FP_CFG_STR, offsetof(struct client_cfg, job.calib), .def = "",
	  .max = 4096,
	  .help = "private calibration data (.jsonl, .u16, .u32, .txt); needed by wanda and "
		  "sparsegpt rounds" },
	{ "job", "heldout", FP_CFG_STR, offsetof(struct client_cfg, job.heldout), .def = "",
	  .max = 4096, .help = "held-out data for the perplexity report (empty: no evaluation)" },
	{ "job", "state_dir", FP_CFG_STR, offsetof(struct client_cfg, job.state_dir),
	  .def = FP_STATEDIR "/fedprune-client", .min = 1, .max = 4096,
	  .help = "directory of the per-round state (round-<id>/...), created 0700" },
	{ "job", "output", FP_CFG_STR, offsetof(struct client_cfg, job.output), .def = "",
	  .max = 4096,
	  .help = "where the pruned model is written (empty: <state_dir>/round-<id>/model)" },
	{ "job", "eval_dense", FP_CFG_BOOL, offsetof(struct client_cfg, job.eval_dense),
	  .def = "true", .help = "also measure the dense model's held-out perplexity" },
	{ "job", "eval_seqlen", FP_CFG_U32, offsetof(struct client_cfg, job.eval_seqlen),
	  .def = "0", .min = 0, .max = FP_DATA_MAX_SEQLEN,
	  .help = "evaluation window in tokens (0: min(max_position_embeddings, 2048))" },
	{ "job", "eval_nsamples", FP_CFG_U32, offsetof(struct client_cfg, job.eval_nsamples),
	  .def = "0", .min = 0, .max = UINT32_MAX,
	  .help = "evaluation windows (0: all); see eval_seed" },
	{ "job", "eval_seed", FP_CFG_U64, offsetof(struct client_cfg, job.eval_seed), .def = "0",
	  .min = 0, .max = UINT64_MAX,
	  .help = "with eval_nsamples: 0 takes the first windows, another value draws them at "
		  "random with this seed" },
	{ "job", "ldp_epsilon", FP_CFG_DOUBLE, offsetof(struct client_cfg, job.ldp_epsilon),
	  .def = "0", .dmin = 0, .dmax = 20,
	  .help = "local differential privacy of the mask sent: epsilon of randomized response "
		  "(0: off; smaller = more privacy, noisier votes)" },
	{ "job", "ldp_mechanism", FP_CFG_ENUM, offsetof(struct client_cfg, job.ldp_mechanism),
	  .def = "round", .choices = ldp_mech_names,
	  .help = "round: the mechanism the server names; rr or oue: only that one" },
	{ "job", "exit_when_done", FP_CFG_BOOL, offsetof(struct client_cfg, job.exit_when_done),
	  .def = "false", .help = "exit (status 0) once a round's evaluation is reported" },
	{ 0 },
};

struct client {
	struct fp_daemon *d;
	SSL_CTX *tls;
	struct fp_link *link;
	struct fp_job *job;
	bool exit_when_done;
	int stopping; /* link and job stops not yet finished */
};

static struct client client;

static void client_ready(struct fp_link *l, const Fedprune__Welcome *w)
{
	(void)l;
	if (client.job)
		fp_job_on_ready(client.job, w);
}

static void client_msg(struct fp_link *l, const Fedprune__Envelope *e)
{
	(void)l;
	if (client.job) {
		fp_job_on_msg(client.job, e);
	} else if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_ROUND_SPEC) {
		Fedprune__Envelope r = FEDPRUNE__ENVELOPE__INIT;
		Fedprune__Error er = FEDPRUNE__ERROR__INIT;

		fp_log_warn("round spec ignored: no [job] model configured", "round=%llu",
			    (unsigned long long)e->round_spec->round_id);
		er.code = FEDPRUNE__ERROR_CODE__ERROR_UNSUPPORTED;
		er.message = "this client has no [job] model and takes part in no round";
		r.version = FP_PROTO_VERSION;
		r.msg_case = FEDPRUNE__ENVELOPE__MSG_ERROR;
		r.error = &er;
		fp_link_send(client.link, &r);
	}
}

static void client_down(struct fp_link *l, const char *reason, bool fatal)
{
	(void)l;
	if (client.job)
		fp_job_on_down(client.job, reason, fatal);
	if (!fatal)
		return;
	fp_log_err("stopping: the server does not accept this client", "reason=%s", fp_q(reason));
	fp_daemon_fail(client.d);
}

static void job_done(struct fp_job *j, uint64_t round, void *ud)
{
	(void)j;
	(void)ud;
	if (!client.exit_when_done)
		return;
	fp_log_info("round done: exiting ([job] exit_when_done)", "round=%llu",
		    (unsigned long long)round);
	fp_daemon_stop(client.d); /* exit status 0; the link flushes the report on close */
}

static int job_start(struct client_cfg *c)
{
	struct fp_job_cfg jc = { 0 };
	int r;

	client.exit_when_done = c->job.exit_when_done;
	if (!c->job.model[0]) {
		fp_log_warn("no [job] model configured: connecting only, taking part in no round",
			    NULL);
		return 0;
	}
	jc.model = c->job.model;
	jc.calib = c->job.calib;
	jc.heldout = c->job.heldout;
	jc.state_dir = c->job.state_dir;
	jc.output = c->job.output;
	jc.eval_dense = c->job.eval_dense;
	jc.eval_seqlen = c->job.eval_seqlen;
	jc.eval_nsamples = c->job.eval_nsamples;
	jc.eval_seed = c->job.eval_seed;
	jc.ldp_epsilon = c->job.ldp_epsilon;
	jc.ldp_mechanism = c->job.ldp_mechanism;
	jc.on_done = job_done;
	r = fp_job_new(&client.d->loop, &jc, &client.job);
	if (r < 0)
		return r;
	fp_log_info("job ready", "model=%s calib=%s local_tokens=%llu state_dir=%s",
		    fp_q(c->job.model), fp_q(c->job.calib),
		    (unsigned long long)fp_job_local_tokens(client.job), fp_q(c->job.state_dir));
	return 0;
}

static void check_cert(const char *path)
{
	char cn[FP_ID_MAX + 1];
	int64_t not_after = 0, now = (int64_t)time(NULL);

	if (fp_tls_cert_info(path, cn, sizeof(cn), &not_after) < 0)
		return;
	if (not_after < now)
		fp_log_err("client certificate has expired", "cert=%s cn=%s", fp_q(path), fp_q(cn));
	else if (not_after - now < 30 * 86400)
		fp_log_warn("client certificate expires soon", "cert=%s cn=%s days_left=%lld",
			    fp_q(path), fp_q(cn), (long long)((not_after - now) / 86400));
	else
		fp_log_info("client certificate", "cert=%s identity=%s days_left=%lld", fp_q(path),
			    fp_q(cn), (long long)((not_after - now) / 86400));
}

static int client_start(struct fp_daemon *d, void *arg)
{
	struct client_cfg *c = arg;
	struct fp_link_ops ops = { .on_ready = client_ready,
				   .on_msg = client_msg,
				   .on_down = client_down };
	struct fp_link_cfg lc = { 0 };
	int insecure, r;

	client.d = d;
	r = fp_net_cfg_check(&c->net);
	if (r < 0)
		return r;
	if (c->reconnect_max_ms < c->reconnect_min_ms)
		return fp_err_detail(-EINVAL, "[client] reconnect_max must not be below "
					      "reconnect_min");
	if (c->chunk && (c->chunk < 4096 || c->chunk > c->net.max_frame / 2))
		return fp_err_detail(-EINVAL, "[client] chunk must be 0 or 4 KiB .. max_frame / 2");
	if (c->id[0] && !fp_identity_valid(c->id))
		return fp_err_detail(-EINVAL,
				     "[client] id '%s' is not a valid identity (1..64 of "
				     "A-Z a-z 0-9 . _ @ -)",
				     c->id);
	insecure = fp_net_insecure(&c->net, d->insecure);
	if (insecure < 0)
		return insecure;
	if (insecure && !c->id[0])
		return fp_err_detail(-EINVAL, "insecure mode needs [client] id");
	if (!insecure) {
		struct fp_tls_opts o = { .cert = c->net.cert, .key = c->net.key, .ca = c->net.ca };

		check_cert(c->net.cert);
		r = fp_tls_ctx_new(&o, &client.tls);
		if (r < 0)
			return r;
	}
	r = job_start(c);
	if (r < 0)
		return r;
	lc.host = c->server;
	lc.port = (uint16_t)c->port;
	lc.server_name = c->server_name;
	lc.tls = client.tls;
	lc.client_id = c->id;
	fp_net_conn_opts(&c->net, &lc.conn);
	lc.heartbeat_ms = (uint32_t)c->net.heartbeat_ms;
	lc.backoff_base_ms = c->reconnect_min_ms;
	lc.backoff_cap_ms = c->reconnect_max_ms;
	lc.chunk_bytes = (uint32_t)c->chunk;
	lc.capacity = 1.0;
	if (client.job) {
		lc.local_tokens = fp_job_local_tokens(client.job);
		lc.model_digest = fp_job_model_digest(client.job);
	}
	r = fp_link_start(&d->loop, &lc, &ops, &client.link);
	if (r < 0)
		return r;
	if (client.job)
		fp_job_set_link(client.job, client.link);
	fp_log_info("connecting", "server=%s port=%u transport=%s", fp_q(c->server), c->port,
		    insecure ? "INSECURE-plaintext" : "mTLS-1.3");
	return 0;
}

/* The link and the job have both stopped: release what is left. */
static void client_release(void)
{
	if (--client.stopping > 0)
		return;
	fp_job_free(client.job);
	client.job = NULL;
	SSL_CTX_free(client.tls);
	client.tls = NULL;
}

static void client_stopped(struct fp_link *l, void *ud)
{
	(void)l;
	(void)ud;
	client.link = NULL;
	client_release();
}

static void job_stopped(struct fp_job *j, void *ud)
{
	(void)j;
	(void)ud;
	client_release();
}

static int client_stop(struct fp_daemon *d, void *arg)
{
	(void)d;
	(void)arg;
	client.stopping = 1;
	if (client.job && fp_job_stop(client.job, job_stopped, NULL) > 0)
		client.stopping++;
	if (!client.link) {
		client_release();
		return client.stopping > 0;
	}
	fp_link_stop(client.link, client_stopped, NULL);
	return 1;
}

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
		.start = client_start,
		.stop = client_stop,
	};

	return fp_daemon_main(argc, argv, &desc);
}
