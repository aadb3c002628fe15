/*
 * The client's part of a federated round (docs/client.md, the round protocol of issue #6), as a
 * state machine on the client's libuv loop, driven by the link's callbacks (link.h):
 *
 *   RoundSpec -> checks (model digest, every field in range, tensors = the model's prunable
 *   matrices) -> local pruning off the loop (uv_queue_work) into <state_dir>/round-<id>/
 *   local.fpmask -> upload (fp_link_upload, bits read from the mask file) -> Receipt ->
 *   ResultOffer -> download (ResultRequest / TensorChunk, digests checked) into global.fpmask
 *   -> mask applied to the model and held-out perplexity measured off the loop -> EvalReport.
 *
 * Iterative FedPrLLM (RoundSpec.iterative; round = block + 1, tensors = that block's 7
 * matrices): before pruning block b the global masks of blocks 0 .. b-1 are on disk (downloaded
 * from the offers, or fetched with ResultRequest by round id); block b alone is pruned with them
 * applied to the earlier blocks; after the last block's result every block's mask is merged,
 * applied and evaluated, and only then is the EvalReport sent (and on_done called).
 *
 * Every step leaves a file in the round directory, so a restarted client resumes from the last
 * completed step. Everything from the server is validated; a refusal is logged and answered
 * with an Error message (never fatal, the client stays connected and waits).
 *
 * Loop-thread only, except the work it queues itself.
 */
#ifndef FP_CLIENT_JOB_H
#define FP_CLIENT_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "envelope.h"
#include "link.h"

struct fp_job;

struct fp_job_cfg {
	const char *model;	/* Hugging Face model directory (required); copied */
	const char *calib;	/* calibration file (NULL or "": none, magnitude only); copied */
	const char *heldout;	/* held-out evaluation file (NULL or "": no evaluation); copied */
	const char *state_dir;	/* created (0700) if missing; copied */
	const char *output;	/* pruned model directory; NULL or "": <round dir>/model; copied */
	bool eval_dense;	/* also evaluate the dense model */
	uint32_t eval_seqlen;	/* evaluation window; 0 = min(max_position_embeddings, 2048) */
	uint32_t eval_nsamples; /* evaluation windows; 0 = all, in file order */
	uint64_t eval_seed;	/* with eval_nsamples: 0 = the first windows, else drawn with it */
	/* Local DP of the mask sent (client/privatize.h): epsilon 0 = off. The mechanism must be
	 * the round's (FP_LDP_RR_SYM or FP_LDP_RR_OUE; 0 = whatever the round names). */
	double ldp_epsilon;
	int ldp_mechanism;
	/* Called on the loop thread once the EvalReport of a round was handed to the link
	 * (optional; e.g. to exit with [job] exit_when_done). */
	void (*on_done)(struct fp_job *j, uint64_t round_id, void *ud);
	void *ud;
};

/* Counters, for logs and tests. */
struct fp_job_stats {
	uint64_t specs;		   /* RoundSpecs received */
	uint64_t specs_refused;	   /* answered with an Error */
	uint64_t prunes;	   /* local pruning runs completed */
	uint64_t resumed;	   /* rounds resumed from files in the state directory */
	uint64_t uploads;	   /* submissions accepted (or found committed) */
	uint64_t uploads_failed;   /* refused by the server or failed */
	uint64_t chunks_refused;   /* result chunks refused (digest, offset, size, name) */
	uint64_t downloads;	   /* global masks written */
	uint64_t evals;		   /* EvalReports sent */
	int last_error;		   /* ErrorCode of the last Error sent to the server (0: none) */
	double last_ppl;	   /* perplexity of the last EvalReport */
	uint64_t last_tokens;	   /* its tokens */
	double last_dense_ppl;	   /* its dense perplexity (0: not measured) */
	uint64_t last_prune_round; /* round of the last completed pruning */
};

/*
 * Create a job: check the configuration, open the model once to compute its digest
 * (fp_hfout_source_digest) and prunable matrices, count the calibration tokens, create the
 * state directory. The model is closed again; every round opens it anew. Returns 0 and *ret
 * (free with fp_job_free), or a negative errno with a detail naming the file or key.
 */
int fp_job_new(uv_loop_t *loop, const struct fp_job_cfg *cfg, struct fp_job **ret);

/* The model digest for Hello.model_digest (FP_DIGEST_BYTES). Borrowed, valid while j lives. */
const uint8_t *fp_job_model_digest(const struct fp_job *j);

/* Tokens in the calibration file (Hello.local_tokens); 0 without one. */
uint64_t fp_job_local_tokens(const struct fp_job *j);

/* The link the job sends on and uploads through (borrowed; must outlive the job's use). */
void fp_job_set_link(struct fp_job *j, struct fp_link *l);

/* Forward the link's callbacks (fp_link_ops) here. w and e are borrowed for the call. */
void fp_job_on_ready(struct fp_job *j, const Fedprune__Welcome *w);
void fp_job_on_msg(struct fp_job *j, const Fedprune__Envelope *e);
void fp_job_on_down(struct fp_job *j, const char *reason, bool fatal);

/*
 * Begin stopping: a pruning run in progress is cancelled at the next block boundary, an
 * evaluation finishes its current step. Returns 0 when nothing runs (free at once), or 1: done
 * (j, ud) runs on the loop once the work has ended. Stop the link too before fp_job_free.
 */
int fp_job_stop(struct fp_job *j, void (*done)(struct fp_job *j, void *ud), void *ud);

/* Free the job (after fp_job_stop returned 0 or its done ran, and the link stopped). NULL ok. */
void fp_job_free(struct fp_job *j);

/* Counters; borrowed, valid while j lives. */
const struct fp_job_stats *fp_job_stats(const struct fp_job *j);

/*
 * Tokens in a data file as data.h reads it: .txt bytes, .u16 / .u32 ids (from the file size;
 * the size must be a multiple of the width), .jsonl every input_ids entry (the file is parsed
 * and validated against vocab). Returns 0 and *ret, or a negative errno with a detail.
 */
int fp_job_count_tokens(const char *path, uint32_t vocab, uint64_t *ret);

#endif
