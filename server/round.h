/*
 * The server's federated round (one-shot FedPrLLM, docs/federation.md): wait for min_clients,
 * send the round specification, collect masks with a deadline, a quorum and a grace period,
 * check each submission against the specification while it streams in, store accepted ones
 * durably, aggregate (aggregate.h, off the loop), publish the global model, serve the global
 * mask to clients, and collect their evaluation reports into a token-weighted perplexity.
 *
 * Durable state lives in the state directory (journal.h): after kill -9 a restarted server
 * replays the journal, keeps every accepted submission, restores partial uploads so clients
 * resend only what is missing, and continues the round where it was.
 *
 * Everything runs on the loop thread except storing a submission and the aggregation, which
 * run on uv_queue_work.
 */
#ifndef FP_ROUND_H
#define FP_ROUND_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "daemon.h"
#include "srv.h"

enum fp_round_mode {
	FP_ROUND_ONESHOT,   /* one round prunes every block (FedPrLLM one-shot) */
	FP_ROUND_ITERATIVE, /* one round per decoder block, in order */
};

enum fp_round_ldp {
	FP_ROUND_LDP_OFF,      /* privatized masks are refused */
	FP_ROUND_LDP_ALLOWED,  /* clients choose; privatized votes are debiased */
	FP_ROUND_LDP_REQUIRED, /* masks without local DP are refused */
};

/* The [round] section of the server configuration (strings borrowed while the round runs). */
struct fp_round_cfg {
	char *model;	 /* dense model (HF directory) */
	char *state_dir; /* journal, specs, submissions */
	char *output;	 /* published results ("" = <state_dir>/published) */
	int mode;	 /* enum fp_round_mode */
	int method;	 /* enum fp_prune_method */
	double sparsity;
	char *pattern;		/* "unstructured" or "N:M" */
	int local_group;	/* enum fp_group of the local pruner (ROW, LAYER, COLUMN) */
	int group;		/* enum fp_group of the server's selection */
	int tie_break;		/* enum fp_agg_tie */
	uint64_t seed;		/* calibration draw and random ties */
	uint32_t nsamples;	/* calibration samples per client */
	uint32_t seqlen;	/* tokens per sample */
	bool sequential;	/* local pruner's sequential mode */
	uint32_t min_clients;	/* connected clients before the round starts */
	uint32_t quorum;	/* accepted submissions needed (0 = min_clients) */
	uint64_t wait_ms;	/* how long to wait for min_clients */
	uint64_t deadline_ms;	/* from the round's start to the end of collection */
	uint64_t grace_ms;	/* after quorum, wait this long for the others */
	bool weight_by_tokens;	/* vote weights = each client's calibration tokens */
	bool weight_scaling;	/* scale kept weights by the share of clients keeping them */
	uint64_t eval_ms;	/* how long to wait for evaluation reports after publishing */
	bool exit_when_done;	/* stop the daemon when the round is complete (or failed) */
	int ldp;		/* enum fp_round_ldp */
	int ldp_mechanism;	/* enum fp_ldp_mech (1 rr, 2 oue) */
	double ldp_max_epsilon; /* largest epsilon a privatized submission may use */
	uint32_t chunk_bytes;	/* result chunk size (the transport's) */
};

struct fp_round;

/*
 * Prepare the round: check cfg, read the model's shape and digest, open the state directory
 * and replay its journal. d is borrowed (fp_daemon_stop / fp_daemon_fail when exit_when_done).
 * On success *ret is owned by the caller (fp_round_stop). Returns 0 or a negative errno with
 * fp_err_last() naming what is wrong.
 */
int fp_round_new(struct fp_daemon *d, const struct fp_round_cfg *cfg, struct fp_round **ret);

/* The callbacks to pass to fp_srv_start (with fp_srv_cfg.data = the round). */
void fp_round_ops(struct fp_srv_ops *ops);

/* The server is listening: register the message handlers, start the timers (or resume a
 * restored round). Returns 0 or -errno. */
int fp_round_attach(struct fp_round *r, struct fp_srv *srv);

/* Stop timers and release everything once work in flight has finished; NULL is fine. Must be
 * called before the server's sessions are freed. */
void fp_round_stop(struct fp_round *r);

#endif
