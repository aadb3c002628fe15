/*
 * The client's round pipeline (see job.h and docs/client.md).
 *
 * Threads: everything runs on the loop thread except the three kinds of work queued with
 * uv_queue_work (prune, check a mask already on disk, apply + evaluate). While work runs the
 * loop touches none of the fields the work uses (sp, dir, w_*); the work reads `cancel` only.
 */
#include "job.h"
#include "ldp.h"
#include "privatize.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <sodium.h>

#include "alloc.h"
#include "data.h"
#include "err.h"
#include "eval.h"
#include "fileio.h"
#include "hfout.h"
#include "log.h"
#include "mask.h"
#include "model.h"
#include "par.h"
#include "prune.h"
#include "upload.h"

#define NAME_MAX_LEN   96	  /* "model.layers.1023.self_attn.q_proj.weight" fits */
#define CHUNK_RETRIES  3	  /* refusals of one result tensor before the download is dropped */
#define MAX_NSAMPLES   65536u	  /* calibration samples a spec may ask for */
#define SMALL_FILE_MAX (1u << 20) /* spec.txt, local.json, eval.json, applied */
#define EVAL_SEQLEN    2048u	  /* default evaluation window (capped by max positions) */

#define F_SPEC	       "spec.txt"
#define F_LOCAL	       "local.fpmask"
#define EVAL_ACT_BYTES (16u << 20)	  /* activation bytes per evaluation group */
#define F_LOCAL_DP     "local-ldp.fpmask" /* local.fpmask randomized for local DP (what is sent) */
#define F_LOCALJS      "local.json"
#define F_REPORT       "report.json"
#define F_GLOBAL       "global.fpmask"
#define F_FINAL	       "final.fpmask" /* iterative, last block: every block's global mask */
#define F_APPLIED      "applied"
#define F_EVAL	       "eval.json"
#define D_MODEL	       "model"

enum job_state {
	J_IDLE,		 /* no round yet, or its work was cancelled */
	J_PRUNING,	 /* work: prune, or check the mask on disk */
	J_UPLOADING,	 /* the link uploads */
	J_WAITING,	 /* uploaded (or gave up a download): waiting for a result offer */
	J_UPLOAD_FAILED, /* refused or failed: waits; a repeated spec retries */
	J_DOWNLOADING,	 /* fetching the global mask */
	J_FETCHING,	 /* iterative: fetching an earlier block's global mask before pruning */
	J_BLOCK_DONE,	 /* iterative: this block's global mask is in; waiting for the next */
	J_EVALUATING,	 /* work: apply + evaluate */
	J_DONE,		 /* EvalReport sent */
	J_FAILED,	 /* local failure (logged, Error sent); waits for another round */
};

enum work_kind {
	W_PRUNE,
	W_PREPARE, /* check local.fpmask and prepare the upload (resume) */
	W_EVAL,
};

/* What a RoundSpec asks of this client, validated. */
struct spec {
	uint64_t round;
	enum fp_prune_method method;
	double sparsity;
	unsigned nm_n, nm_m;
	enum fp_group group;
	uint64_t seed;
	uint32_t nsamples, seqlen;
	bool sequential;
	/* iterative FedPrLLM: round = block + 1, tensors = the 7 matrices of block */
	bool iterative;
	uint32_t block;
	int agg_group, tie_break; /* wire values; part of the job's identity (iterative) */
	bool weight_by_tokens, weight_scaling;
	/* local DP: the round's mechanism (enum fp_ldp_mech, 0 none), largest ε, required */
	int ldp_mech;
	double ldp_max;
	bool ldp_required;
};

struct up_tensor {
	int fd;
	uint64_t off;	 /* file offset of the bits */
	uint64_t nbytes; /* their size */
};

/* One upload through the link; freed in its done callback (or by fp_job_free). */
struct upload {
	struct fp_job *j;
	uint64_t round;
	int fd;
	uint8_t *map; /* (map_len) the mask file mapped read-only, or NULL: read with pread */
	size_t map_len;
	size_t n;
	struct fp_tensor_src *src;	 /* (n) */
	struct up_tensor *t;		 /* (n) */
	uint8_t (*dig)[FP_DIGEST_BYTES]; /* (n) digests stored in the mask file */
	Fedprune__Commit commit;
	Fedprune__LdpReport ldp; /* commit.privacy when the mask is privatized */
};

struct download {
	bool active;
	bool iter;	 /* a block of an iterative job (not tied to j->round) */
	bool has_result; /* result is known (an offer); else only tensor digests */
	uint64_t round;
	char *dir;			 /* round directory written to */
	size_t base, n;			 /* tensors j->names[base .. base + n) */
	uint8_t result[FP_DIGEST_BYTES]; /* ResultOffer.result_digest */
	size_t cur;			 /* tensor being fetched, 0 .. n */
	uint64_t off;			 /* its next byte */
	unsigned tries;			 /* refusals of the current tensor */
	crypto_generichash_state *h;	 /* of the current tensor, 64-byte aligned */
	uint8_t *buf;			 /* (max_nbytes) the current tensor */
	uint8_t (*dig)[FP_DIGEST_BYTES]; /* (nmats) */
	struct fp_mask_writer *w;
};

struct fp_job {
	uv_loop_t *loop;
	struct fp_link *link;
	char *model, *calib, *heldout, *state_dir, *output;
	bool eval_dense;
	uint32_t eval_seqlen, eval_nsamples;
	uint64_t eval_seed;
	double ldp_eps; /* [job] ldp_epsilon, 0 = off */
	int ldp_mech;	/* [job] ldp_mechanism, 0 = the round's */
	void (*on_done)(struct fp_job *j, uint64_t round_id, void *ud);
	void *ud;

	/* the model */
	struct fp_model_cfg mcfg;
	uint8_t digest[FP_DIGEST_BYTES];
	uint64_t local_tokens;
	size_t nmats;
	char (*names)[NAME_MAX_LEN]; /* (nmats) prunable matrices, block and linear order */
	const char **name_ptr;	     /* (nmats) pointers into names */
	uint64_t (*shape)[2];	     /* (nmats) rows, cols */
	struct fp_mask_info *decls;  /* (nmats) for mask writers */
	uint64_t max_nbytes;	     /* largest mask of one matrix */

	/* the round */
	enum job_state st;
	struct spec sp; /* valid when have_spec */
	bool have_spec;
	uint64_t round;		 /* current round (0: none) */
	char *dir;		 /* <state_dir>/round-<round> */
	uint64_t mismatch_round; /* last round refused for a model mismatch */
	bool pend_spec_set;
	struct spec pend_spec;
	bool pend_offer_set;
	uint64_t pend_offer_round;
	uint8_t pend_offer_digest[FP_DIGEST_BYTES];

	/* iterative job: result digests offered per block (round = block + 1) */
	bool iter_job;			  /* the last accepted spec was iterative */
	char jobkey[1024];		  /* its settings without round and block */
	uint8_t (*odig)[FP_DIGEST_BYTES]; /* (nlayers) */
	bool *oknown;			  /* (nlayers) */

	/* work */
	uv_work_t work;
	bool busy;
	enum work_kind wk;
	uint64_t wround; /* round the work is for */
	int cancel;	 /* atomic: stop the work at the next check */
	int wr;		 /* result */
	char werr[512];	 /* fp_err_last() of the work thread */
	bool w_pruned;	 /* the work pruned (else it found a mask on disk) */
	bool w_iter;	 /* W_EVAL: the last block of an iterative job (merge the blocks) */
	struct upload *w_up;
	double w_ppl, w_dense;
	uint64_t w_tokens;

	struct upload *up;	/* at the link */
	struct upload *up_next; /* prepared while another upload was still at the link */
	struct download dl;

	bool report_pending;
	double ppl, dense_ppl;
	uint64_t eval_tokens;

	struct fp_job_stats stats;
	bool stopping;
	void (*stop_done)(struct fp_job *j, void *ud);
	void *stop_ud;
};

static void next_step(struct fp_job *j);

/* ---- small helpers ---- */

/* out (2 n + 1 bytes) = lowercase hex of d (n bytes). */
static void hex(const uint8_t *d, size_t n, char *out)
{
	sodium_bin2hex(out, 2 * n + 1, d, n);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *join(const char *dir, const char *name)
{
	char *p = NULL;

	if (asprintf(&p, "%s/%s", dir, name) < 0)
		return NULL;
	return p;
}

/* The tensors a round covers: every prunable matrix, or (iterative) the 7 of its block. */
static void spec_range(const struct fp_job *j, const struct spec *sp, size_t *base, size_t *n)
{
	*base = sp->iterative ? (size_t)sp->block * FP_LIN_COUNT : 0;
	*n = sp->iterative ? FP_LIN_COUNT : j->nmats;
}

/* <state_dir>/round-<round>; caller frees. */
static char *round_dir(const struct fp_job *j, uint64_t round)
{
	char *p = NULL;

	if (asprintf(&p, "%s/round-%" PRIu64, j->state_dir, round) < 0)
		return NULL;
	return p;
}

static bool exists(const char *dir, const char *name)
{
	char *p = join(dir, name);
	struct stat st;
	bool r = p && lstat(p, &st) == 0;

	free(p);
	return r;
}

static void remove_file(const char *dir, const char *name)
{
	char *p = join(dir, name);

	if (p && unlink(p) < 0 && errno != ENOENT)
		fp_log_warn("cannot remove file", "path=%s err=%s", fp_q(p),
			    fp_q(fp_strerror(-errno)));
	free(p);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 ? -1 : 0;
}

/* Write text to dir/name atomically. */
static int write_small(const char *dir, const char *name, const char *text)
{
	char *path = join(dir, name);
	int r;

	if (!path)
		return -ENOMEM;
	r = fp_write_file_atomic(path, text, strlen(text), 0600);
	free(path);
	return r;
}

/* Read dir/name (at most SMALL_FILE_MAX bytes); *ret owned by the caller. */
static int read_small(const char *dir, const char *name, char **ret)
{
	char *path = join(dir, name);
	size_t len;
	int r;

	if (!path)
		return -ENOMEM;
	r = fp_read_file(path, SMALL_FILE_MAX, ret, &len);
	free(path);
	return r;
}

static bool cancelled(const struct fp_job *j)
{
	return __atomic_load_n(&j->cancel, __ATOMIC_RELAXED) != 0;
}

/* ---- token counting ---- */

int fp_job_count_tokens(const char *path, uint32_t vocab, uint64_t *ret)
{
	const char *dot = strrchr(path, '.');
	const char *slash = strrchr(path, '/');
	unsigned width = 0;
	struct stat st;

	if (!dot || (slash && dot < slash))
		return fp_err_detail(-EINVAL, "%s: no file extension (.jsonl, .u16, .u32 or .txt)",
				     path);
	if (strcasecmp(dot, ".txt") == 0)
		width = 1;
	else if (strcasecmp(dot, ".u16") == 0)
		width = 2;
	else if (strcasecmp(dot, ".u32") == 0)
		width = 4;
	if (width) {
		if (stat(path, &st) < 0)
			return fp_err_detail(-errno, "%s: cannot stat: %s", path, strerror(errno));
		if (!S_ISREG(st.st_mode))
			return fp_err_detail(-EINVAL, "%s: not a regular file", path);
		if ((uint64_t)st.st_size % width)
			return fp_err_detail(-EINVAL, "%s: %lld bytes, not a multiple of %u", path,
					     (long long)st.st_size, width);
		*ret = (uint64_t)st.st_size / width;
		return 0;
	}
	if (strcasecmp(dot, ".jsonl") == 0) {
		struct fp_data_opts o = { .seqlen = FP_DATA_MAX_SEQLEN, .vocab_size = vocab };
		struct fp_dataset *ds = NULL;
		int r = fp_data_load(path, &o, &ds);

		if (r < 0)
			return r;
		*ret = ds->ntokens;
		fp_data_free(ds);
		return 0;
	}
	return fp_err_detail(-EINVAL, "%s: unknown data format '%s' (.jsonl, .u16, .u32 or .txt)",
			     path, dot);
}

/* ---- sending ---- */

static void send_error(struct fp_job *j, Fedprune__ErrorCode code, const char *msg)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__Error er = FEDPRUNE__ERROR__INIT;
	char text[FP_TEXT_MAX];

	snprintf(text, sizeof(text), "%s", msg);
	er.code = code;
	er.message = text;
	er.fatal = false;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_ERROR;
	e.error = &er;
	j->stats.last_error = (int)code;
	if (j->link && fp_link_send(j->link, &e) < 0)
		fp_log_warn("cannot tell the server", "code=%s message=%s",
			    fp_error_code_name(code), fp_q(text));
}

static void send_report(struct fp_job *j)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__EvalReport rep = FEDPRUNE__EVAL_REPORT__INIT;
	uint64_t round = j->round;

	rep.round_id = round;
	rep.perplexity = j->ppl;
	rep.tokens = j->eval_tokens;
	rep.dense_perplexity = j->dense_ppl;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_EVAL_REPORT;
	e.eval_report = &rep;
	if (!j->link || fp_link_send(j->link, &e) < 0) {
		j->report_pending = true; /* sent after the next Welcome */
		return;
	}
	j->report_pending = false;
	j->stats.evals++;
	j->stats.last_ppl = j->ppl;
	j->stats.last_tokens = j->eval_tokens;
	j->stats.last_dense_ppl = j->dense_ppl;
	fp_log_info("evaluation reported",
		    "round=%" PRIu64 " perplexity=%.6f tokens=%" PRIu64 " dense_perplexity=%.6f",
		    round, j->ppl, j->eval_tokens, j->dense_ppl);
	if (j->on_done)
		j->on_done(j, round, j->ud);
}

/* ---- uploads ---- */

static void upload_free(struct upload *u)
{
	if (!u)
		return;
	if (u->map)
		munmap(u->map, u->map_len);
	if (u->fd >= 0)
		close(u->fd);
	free(u->src);
	free(u->t);
	free(u->dig);
	free(u);
}

static int up_read(void *ud, uint64_t offset, uint8_t *buf, size_t len)
{
	const struct up_tensor *t = ud;
	uint64_t pos;

	if (offset > t->nbytes || len > t->nbytes - offset)
		return fp_err_detail(-EINVAL,
				     "mask read past the tensor (%" PRIu64 " + %zu > %" PRIu64 ")",
				     offset, len, t->nbytes);
	pos = t->off + offset;
	while (len) {
		ssize_t n = pread(t->fd, buf, len, (off_t)pos);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fp_err_detail(-errno, "mask file: read: %s", strerror(errno));
		if (n == 0)
			return fp_err_detail(-EIO, "mask file: shorter than its header says");
		buf += n;
		len -= (size_t)n;
		pos += (uint64_t)n;
	}
	return 0;
}

static void upload_start(struct fp_job *j, struct upload *u);

static void upload_done(struct fp_link *l, int status, const char *reason,
			const Fedprune__Receipt *receipt, void *ud)
{
	struct upload *u = ud;
	struct fp_job *j = u->j;
	uint64_t round = u->round;
	struct upload *next;

	(void)l;
	j->up = NULL;
	upload_free(u);
	if (j->stopping)
		return;
	if (status == 0) {
		j->stats.uploads++;
		fp_log_info("submission accepted", "round=%" PRIu64 " committed_before=%d", round,
			    receipt == NULL);
		if (round == j->round && j->st == J_UPLOADING)
			j->st = J_WAITING;
	} else {
		j->stats.uploads_failed++;
		if (receipt && !receipt->accepted)
			fp_log_err("submission refused by the server",
				   "round=%" PRIu64 " reason=%s", round, fp_q(reason));
		else
			fp_log_err("upload failed", "round=%" PRIu64 " err=%s reason=%s", round,
				   fp_q(fp_strerror(status)), fp_q(reason));
		if (round == j->round && j->st == J_UPLOADING)
			j->st = J_UPLOAD_FAILED;
	}
	next = j->up_next;
	j->up_next = NULL;
	if (next)
		upload_start(j, next);
}

static void upload_start(struct fp_job *j, struct upload *u)
{
	int r;

	if (j->up) {
		upload_free(j->up_next);
		j->up_next = u; /* the link does one upload at a time */
		return;
	}
	if (!j->link) {
		upload_free(u);
		return;
	}
	r = fp_link_upload(j->link, u->round, u->src, u->n, &u->commit, upload_done, u);
	if (r < 0) {
		fp_log_err("cannot start the upload", "round=%" PRIu64 " err=%s detail=%s",
			   u->round, fp_q(fp_strerror(r)), fp_q(fp_err_last()));
		upload_free(u);
		if (j->st == J_UPLOADING)
			j->st = J_UPLOAD_FAILED;
		return;
	}
	j->up = u;
	fp_log_info("uploading local mask", "round=%" PRIu64 " tensors=%zu", u->round, u->n);
}

/* ---- work: prune, prepare, evaluate (work thread) ---- */

struct sink_ctx {
	struct fp_job *j;
	struct fp_mask_writer *w;
	size_t next; /* index of the next matrix */
	size_t end;  /* one past the round's last matrix */
};

/* The published global masks of blocks 0 .. nblocks - 1 (iterative), loaded before a run. */
struct fixed_ctx {
	struct fp_job *j;
	uint32_t nblocks;
	struct fp_mask_set **set; /* (nblocks) 7 tensors each, names and shapes checked */
};

static int fixed_mask_cb(void *ctx, uint32_t block, enum fp_linear lin, uint8_t *bits,
			 size_t nbytes)
{
	const struct fixed_ctx *f = ctx;

	if (block >= f->nblocks || (unsigned)lin >= FP_LIN_COUNT ||
	    f->set[block]->info[lin].nbytes != nbytes)
		return fp_err_detail(-EINVAL, "no global mask of block %" PRIu32 " linear %d",
				     block, (int)lin);
	memcpy(bits, f->set[block]->bits[lin], nbytes);
	return 0;
}

static void fixed_free(struct fixed_ctx *f)
{
	for (uint32_t i = 0; f->set && i < f->nblocks; i++)
		fp_mask_set_free(f->set[i]);
	free(f->set);
	f->set = NULL;
}

/* Load <state_dir>/round-<k + 1>/global.fpmask of every block k < nblocks, checking that it
 * holds exactly block k's matrices (names and shapes). */
static int fixed_load(struct fp_job *j, uint32_t nblocks, struct fixed_ctx *f)
{
	int r = 0;

	f->j = j;
	f->nblocks = nblocks;
	f->set = fp_callocarray(nblocks ? nblocks : 1, sizeof(*f->set));
	if (!f->set)
		return -ENOMEM;
	for (uint32_t k = 0; k < nblocks && r == 0; k++) {
		char *dir = round_dir(j, (uint64_t)k + 1), *path = dir ? join(dir, F_GLOBAL) : NULL;

		if (!path) {
			r = -ENOMEM;
		} else {
			r = fp_mask_set_load(path, &f->set[k]);
			for (size_t i = 0; r == 0 && i < FP_LIN_COUNT; i++) {
				size_t m = (size_t)k * FP_LIN_COUNT + i;
				const struct fp_mask_info *mi = &f->set[k]->info[i];

				if (f->set[k]->count != FP_LIN_COUNT ||
				    strcmp(mi->name, j->names[m]) != 0 || mi->ndim != 2 ||
				    mi->dims[0] != j->shape[m][0] || mi->dims[1] != j->shape[m][1])
					r = fp_err_detail(-EINVAL,
							  "%s: tensor %zu is not %s (%" PRIu64
							  ", %" PRIu64 ")",
							  path, i, j->names[m], j->shape[m][0],
							  j->shape[m][1]);
			}
		}
		free(path);
		free(dir);
	}
	if (r < 0)
		fixed_free(f);
	return r;
}

static int prune_sink(void *ctx, const struct fp_prune_block *b)
{
	struct sink_ctx *c = ctx;
	struct fp_job *j = c->j;
	int r;

	if (cancelled(j))
		return fp_err_detail(-ECANCELED, "round %" PRIu64 ": pruning cancelled",
				     j->sp.round);
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		const struct fp_prune_mat *pm = b->mat[w];

		if (c->next >= c->end || strcmp(pm->name, j->names[c->next]) != 0 ||
		    pm->rows != j->shape[c->next][0] || pm->cols != j->shape[c->next][1])
			return fp_err_detail(-EINVAL, "pruned matrix '%s' is not the expected '%s'",
					     pm->name,
					     c->next < c->end ? j->names[c->next] : "(none)");
		r = fp_mask_writer_add(c->w, b->mask[w], fp_mask_bytes(pm->rows * pm->cols));
		if (r < 0)
			return r;
		c->next++;
	}
	return 0;
}

static void prune_progress(void *ctx, const struct fp_prune_progress *p)
{
	const struct fp_job *j = ctx;

	if (p->phase == FP_PRUNE_PHASE_EMBED)
		fp_log_info("calibration data embedded", "round=%" PRIu64 " elapsed=%.3f",
			    j->sp.round, p->elapsed);
	else if (p->phase == FP_PRUNE_PHASE_BLOCK)
		fp_log_info("block pruned",
			    "round=%" PRIu64 " block=%" PRIu32 " blocks=%" PRIu32
			    " elapsed=%.3f sparsity=%.6f",
			    j->sp.round, p->block + 1, p->nblocks, p->elapsed,
			    p->numel ? (double)p->pruned / (double)p->numel : 0.0);
}

static void spec_opts(const struct spec *sp, struct fp_prune_opts *o)
{
	fp_prune_opts_init(o, sp->method);
	o->sparsity = sp->sparsity;
	o->nm_n = sp->nm_n;
	o->nm_m = sp->nm_m;
	if (sp->nm_m)
		o->sparsity = (double)sp->nm_n / sp->nm_m;
	else if (sp->method != FP_PRUNE_SPARSEGPT)
		o->group = sp->group;
	o->allocation = FP_SPARSITY_UNIFORM;
	o->sequential = sp->sequential;
	if (sp->iterative) {
		o->first_block = sp->block;
		o->num_blocks = 1;
	}
}

static int check_model_digest(struct fp_job *j, struct fp_model *m)
{
	uint8_t d[FP_DIGEST_BYTES];
	int r = fp_hfout_source_digest(fp_model_source(m), d);

	if (r < 0)
		return r;
	if (memcmp(d, j->digest, sizeof(d)) != 0)
		return fp_err_detail(-ESTALE,
				     "%s: the model files changed since the client started "
				     "(restart it)",
				     j->model);
	return 0;
}

static int w_prune(struct fp_job *j, double *ret_seconds, uint64_t *ret_tokens)
{
	struct fp_model *m = NULL;
	struct fp_dataset *ds = NULL;
	struct fp_prune_opts o;
	struct fp_prune_result res = { 0 };
	struct fp_prune_info info = { 0 };
	struct sink_ctx c = { .j = j };
	struct fixed_ctx fx = { 0 };
	char *path = NULL, *report = NULL, js[256];
	size_t base, n;
	int r;

	spec_range(j, &j->sp, &base, &n);
	c.next = base;
	c.end = base + n;
	r = fp_model_open(j->model, &m);
	if (r < 0)
		goto out;
	r = check_model_digest(j, m);
	if (r < 0)
		goto out;
	spec_opts(&j->sp, &o);
	o.progress = prune_progress;
	o.progress_ctx = j;
	if (j->sp.iterative && j->sp.block > 0) {
		/* The earlier blocks run with their published global masks applied. */
		r = fixed_load(j, j->sp.block, &fx);
		if (r < 0)
			goto out;
		o.fixed_mask = fixed_mask_cb;
		o.fixed_ctx = &fx;
	}
	info.model_dir = j->model;
	memcpy(info.model_digest, j->digest, sizeof(info.model_digest));
	info.threads = fp_par_threads();
	if (fp_prune_needs_data(o.method)) {
		struct fp_data_opts d = { 0 };

		/* Drawn exactly as `fedprune prune --nsamples N --seqlen L --seed S` does. */
		d.seqlen = j->sp.seqlen;
		d.nsamples = j->sp.nsamples;
		d.vocab_size = j->mcfg.vocab;
		d.shuffle = true;
		d.seed = j->sp.seed;
		r = fp_data_load(j->calib, &d, &ds);
		if (r < 0)
			goto out;
		info.calib_path = j->calib;
		info.seqlen = d.seqlen;
		info.nsamples = d.nsamples;
		info.seed = d.seed;
		info.shuffle = true;
		fp_log_info("calibration data loaded",
			    "round=%" PRIu64 " file=%s samples=%zu tokens=%" PRIu64
			    " seqlen=%" PRIu32,
			    j->sp.round, fp_q(j->calib), ds->nsamples, ds->ntokens, d.seqlen);
	}
	path = join(j->dir, F_LOCAL);
	if (!path) {
		r = -ENOMEM;
		goto out;
	}
	r = fp_mask_writer_open(path, j->decls + base, n, &c.w);
	if (r < 0)
		goto out;
	if (j->sp.iterative)
		fp_log_info(
			"pruning", "round=%" PRIu64 " method=%s block=%" PRIu32 " blocks=%" PRIu32,
			j->sp.round, fp_prune_method_name(o.method), j->sp.block, j->mcfg.nlayers);
	else
		fp_log_info("pruning", "round=%" PRIu64 " method=%s blocks=%" PRIu32, j->sp.round,
			    fp_prune_method_name(o.method), j->mcfg.nlayers);
	r = fp_prune_run(m, ds, &o, prune_sink, &c, &res);
	if (r < 0)
		goto out;
	if (c.next != c.end) {
		r = fp_err_detail(-EINVAL, "pruning produced %zu matrices, expected %zu",
				  c.next - base, n);
		goto out;
	}
	r = fp_mask_writer_close(c.w);
	c.w = NULL;
	if (r < 0)
		goto out;
	report = fp_prune_report(&info, &o, &res);
	if (report) {
		int e = write_small(j->dir, F_REPORT, report);

		if (e < 0)
			fp_log_warn("cannot write the pruning report", "round=%" PRIu64 " err=%s",
				    j->sp.round, fp_q(fp_err_last()));
	}
	snprintf(js, sizeof(js),
		 "{\"round\": %" PRIu64 ", \"tokens\": %" PRIu64 ", \"seconds\": %.6f}\n",
		 j->sp.round, res.ntokens, res.t.total);
	r = write_small(j->dir, F_LOCALJS, js);
	if (r < 0)
		goto out;
	*ret_seconds = res.t.total;
	*ret_tokens = res.ntokens;
	fp_log_info("local mask written",
		    "round=%" PRIu64 " pruned=%" PRIu64 " weights=%" PRIu64 " seconds=%.3f",
		    j->sp.round, res.pruned, res.numel, res.t.total);
out:
	fp_mask_writer_abort(c.w);
	fixed_free(&fx);
	fp_prune_result_done(&res);
	fp_data_free(ds);
	fp_model_close(m);
	free(report);
	free(path);
	return r;
}

/* local.json of this round: tokens and seconds of the pruning run. */
static int read_local_json(struct fp_job *j, double *ret_seconds, uint64_t *ret_tokens)
{
	char *text = NULL;
	cJSON *root = NULL, *rd, *tk, *sc;
	int r = read_small(j->dir, F_LOCALJS, &text);

	if (r < 0)
		return r;
	root = cJSON_Parse(text);
	rd = cJSON_GetObjectItemCaseSensitive(root, "round");
	tk = cJSON_GetObjectItemCaseSensitive(root, "tokens");
	sc = cJSON_GetObjectItemCaseSensitive(root, "seconds");
	if (!cJSON_IsNumber(rd) || !cJSON_IsNumber(tk) || !cJSON_IsNumber(sc) ||
	    rd->valuedouble != (double)j->sp.round || !(tk->valuedouble >= 0) ||
	    !(tk->valuedouble < 1e18) || !(sc->valuedouble >= 0) || !isfinite(sc->valuedouble)) {
		r = fp_err_detail(-EINVAL, "%s/%s: not a local result of round %" PRIu64, j->dir,
				  F_LOCALJS, j->sp.round);
	} else {
		*ret_tokens = (uint64_t)tk->valuedouble;
		*ret_seconds = sc->valuedouble;
	}
	cJSON_Delete(root);
	free(text);
	return r;
}

/* Check local.fpmask against the model and build the upload (the mask's bits stay on disk). */
static int w_prepare(struct fp_job *j, double seconds, uint64_t tokens, struct upload **ret)
{
	struct fp_mask_reader *rd = NULL;
	struct upload *u = NULL;
	struct fp_privatize_result pr = { 0 };
	uint8_t *buf = NULL;
	bool dp = j->ldp_eps > 0 && j->sp.ldp_mech;
	char *path = join(j->dir, dp ? F_LOCAL_DP : F_LOCAL);
	size_t base, n;
	int r;

	if (!path)
		return -ENOMEM;
	if (dp) {
		/* randomize the true mask through the memo: the same mask always gives the same
		 * bits, so sending it again (a restart, a repeated spec) leaks nothing more */
		char *truth = join(j->dir, F_LOCAL), *ldp = join(j->state_dir, "ldp");

		r = truth && ldp ? fp_privatize_mask(truth, path, ldp, j->digest, j->sp.ldp_mech,
						     j->ldp_eps, &pr)
				 : -ENOMEM;
		free(truth);
		free(ldp);
		if (r < 0) {
			free(path);
			return r;
		}
		fp_log_info("mask privatized",
			    "round=%" PRIu64 " mechanism=%s epsilon=%g p=%.6f "
			    "q=%.6f fresh=%d rounds=%u total_epsilon=%g",
			    j->sp.round, fp_ldp_mech_name((enum fp_ldp_mech)pr.mech), pr.eps, pr.p,
			    pr.q, pr.fresh, pr.rounds, pr.total_eps);
	}
	spec_range(j, &j->sp, &base, &n);
	u = calloc(1, sizeof(*u));
	buf = malloc(j->max_nbytes ? j->max_nbytes : 1);
	if (!u || !buf) {
		r = -ENOMEM;
		goto out;
	}
	u->fd = -1;
	u->j = j;
	u->round = j->sp.round;
	u->n = n;
	u->src = fp_callocarray(n, sizeof(*u->src));
	u->t = fp_callocarray(n, sizeof(*u->t));
	u->dig = fp_callocarray(n, sizeof(*u->dig));
	if (!u->src || !u->t || !u->dig) {
		r = -ENOMEM;
		goto out;
	}
	u->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (u->fd < 0) {
		r = fp_err_detail(-errno, "%s: cannot open: %s", path, strerror(errno));
		goto out;
	}
	r = fp_mask_reader_open(path, &rd);
	if (r < 0)
		goto out;
	if (fp_mask_reader_count(rd) != n) {
		r = fp_err_detail(-EINVAL, "%s: %zu tensors, the round has %zu matrices", path,
				  fp_mask_reader_count(rd), n);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const struct fp_mask_info *mi = fp_mask_reader_info(rd, i);
		size_t m = base + i;

		if (strcmp(mi->name, j->names[m]) != 0 || mi->ndim != 2 ||
		    mi->dims[0] != j->shape[m][0] || mi->dims[1] != j->shape[m][1]) {
			r = fp_err_detail(
				-EINVAL, "%s: tensor %zu '%s' is not %s (%" PRIu64 ", %" PRIu64 ")",
				path, i, mi->name, j->names[m], j->shape[m][0], j->shape[m][1]);
			goto out;
		}
		if (cancelled(j)) {
			r = -ECANCELED;
			goto out;
		}
		/* Verifies the tensor's digest and padding (and at the end the file digest). */
		r = fp_mask_reader_next(rd, NULL, buf, j->max_nbytes);
		if (r < 0)
			goto out;
		u->t[i].fd = u->fd;
		u->t[i].off = mi->offset;
		u->t[i].nbytes = mi->nbytes;
		/* The stored digest follows the bits; the reader has just verified it. */
		if (pread(u->fd, u->dig[i], FP_DIGEST_BYTES, (off_t)(mi->offset + mi->nbytes)) !=
		    (ssize_t)FP_DIGEST_BYTES) {
			r = fp_err_detail(-EIO, "%s: tensor '%s': cannot read its digest", path,
					  mi->name);
			goto out;
		}
		u->src[i].name = j->names[m];
		u->src[i].kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS;
		u->src[i].shape = j->shape[m];
		u->src[i].ndim = 2;
		u->src[i].total_bytes = mi->nbytes;
		u->src[i].read = up_read;
		u->src[i].ud = &u->t[i];
		u->src[i].digest = u->dig[i];
	}
	r = fp_mask_reader_next(rd, NULL, NULL, 0); /* file digest */
	if (r < 0)
		goto out;
	/* Send the chunks straight from the page cache (no copy into a chunk buffer); where the
	 * file cannot be mapped (a 32-bit edge device and a large model) pread does it. The file
	 * is only ever replaced by rename, never rewritten in place, so the mapping keeps the
	 * bytes just verified. */
	{
		struct stat st;
		void *m;

		if (fstat(u->fd, &st) == 0 && st.st_size > 0 && (uint64_t)st.st_size <= SIZE_MAX) {
			m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, u->fd, 0);
			if (m != MAP_FAILED) {
				u->map = m;
				u->map_len = (size_t)st.st_size;
				madvise(m, u->map_len, MADV_SEQUENTIAL);
				for (size_t i = 0; i < n; i++)
					u->src[i].bytes = u->map + u->t[i].off;
			}
		}
	}
	fedprune__commit__init(&u->commit);
	u->commit.round_id = u->round;
	u->commit.tokens = tokens;
	u->commit.seconds = seconds;
	if (dp) {
		fedprune__ldp_report__init(&u->ldp);
		u->ldp.mechanism = (Fedprune__LdpMechanism)pr.mech;
		u->ldp.epsilon = pr.eps;
		u->ldp.rounds = pr.rounds;
		u->ldp.total_epsilon = pr.total_eps;
		u->commit.privacy = &u->ldp;
	}
	*ret = u;
	u = NULL;
	r = 0;
out:
	fp_mask_reader_free(rd);
	upload_free(u);
	free(buf);
	free(path);
	return r;
}

static int eval_one(struct fp_job *j, const char *dir, const struct fp_dataset *ds, double *ppl,
		    uint64_t *tokens)
{
	struct fp_model *m = NULL;
	struct fp_eval_result res;
	int r = fp_model_open(dir, &m);

	if (r == 0) {
		/* Groups of windows small enough that the forward pass's scratch stays near
		 * 100 MB on small models (many clients share one machine in simulations); the
		 * blocks are converted once per group, a small cost next to the forward pass. */
		struct fp_eval_opts eo = { .max_act_bytes = EVAL_ACT_BYTES };

		r = fp_eval_perplexity(m, ds, &eo, &res);
	}
	fp_model_close(m);
	if (r < 0)
		return r;
	if (!isfinite(res.ppl) || res.ppl < 0)
		return fp_err_detail(
			-EDOM, "%s: perplexity is not finite (nll %g over %" PRIu64 " tokens)", dir,
			res.nll, res.tokens);
	*ppl = res.ppl;
	*tokens = res.tokens;
	(void)j;
	return 0;
}

/*
 * Iterative, after the last block: merge every block's global mask (round-<k + 1>/global.fpmask,
 * block k) into <round dir>/final.fpmask, one tensor per prunable matrix in order.
 */
static int w_merge(struct fp_job *j, const char *path)
{
	struct fp_mask_writer *w = NULL;
	struct fixed_ctx fx = { 0 };
	int r;

	r = fixed_load(j, j->mcfg.nlayers, &fx);
	if (r == 0)
		r = fp_mask_writer_open(path, j->decls, j->nmats, &w);
	for (uint32_t k = 0; r == 0 && k < j->mcfg.nlayers; k++)
		for (size_t i = 0; r == 0 && i < FP_LIN_COUNT; i++)
			r = fp_mask_writer_add(w, fx.set[k]->bits[i], fx.set[k]->info[i].nbytes);
	if (r == 0) {
		r = fp_mask_writer_close(w);
		w = NULL;
	}
	fp_mask_writer_abort(w);
	fixed_free(&fx);
	if (r == 0)
		fp_log_info("global masks of every block merged",
			    "round=%" PRIu64 " blocks=%" PRIu32 " file=%s", j->round,
			    j->mcfg.nlayers, fp_q(path));
	return r;
}

static int w_eval(struct fp_job *j)
{
	struct fp_mask_set *ms = NULL;
	struct fp_dataset *ds = NULL;
	struct fp_hfout_apply_stats ast;
	char *gpath = join(j->dir, j->w_iter ? F_FINAL : F_GLOBAL);
	char *dflt = join(j->dir, D_MODEL), *marker = NULL;
	const char *out = j->output ? j->output : dflt;
	char js[512];
	double ppl = 0, dense = 0;
	uint64_t tokens = 0, dtokens = 0;
	struct stat st;
	int r;

	if (!gpath || !dflt) {
		r = -ENOMEM;
		goto out;
	}
	/* "applied" names the directory the mask was applied to, for this round. */
	if (read_small(j->dir, F_APPLIED, &marker) == 0 && strcmp(marker, out) == 0 &&
	    stat(out, &st) == 0 && S_ISDIR(st.st_mode)) {
		fp_log_info("pruned model already written", "round=%" PRIu64 " dir=%s", j->round,
			    fp_q(out));
	} else {
		remove_file(j->dir, F_APPLIED);
		if (lstat(out, &st) == 0) {
			if (out != dflt) {
				r = fp_err_detail(-EEXIST,
						  "[job] output %s already exists (not written "
						  "for round %" PRIu64
						  "): remove it or change output",
						  out, j->round);
				goto out;
			}
			nftw(out, rm_one, 16, FTW_DEPTH | FTW_PHYS); /* ours, from an earlier try */
		}
		if (j->w_iter) {
			r = w_merge(j, gpath);
			if (r < 0)
				goto out;
		}
		r = fp_mask_set_load(gpath, &ms);
		if (r < 0)
			goto out;
		if (cancelled(j)) {
			r = -ECANCELED;
			goto out;
		}
		r = fp_hfout_apply_mask(j->model, ms, gpath, out, &ast);
		if (r < 0)
			goto out;
		r = write_small(j->dir, F_APPLIED, out);
		if (r < 0)
			goto out;
		fp_log_info("global mask applied",
			    "round=%" PRIu64 " dir=%s tensors=%zu pruned=%" PRIu64
			    " weights=%" PRIu64,
			    j->round, fp_q(out), ast.masked, ast.pruned, ast.numel);
	}
	if (j->heldout) {
		struct fp_data_opts d = { 0 };
		double t0 = now_s();

		d.seqlen = j->eval_seqlen;
		if (!d.seqlen)
			d.seqlen = j->mcfg.max_pos < EVAL_SEQLEN ? j->mcfg.max_pos : EVAL_SEQLEN;
		if (d.seqlen < 2)
			d.seqlen = 2;
		d.nsamples = j->eval_nsamples;
		d.shuffle = j->eval_nsamples && j->eval_seed;
		d.seed = j->eval_seed;
		d.vocab_size = j->mcfg.vocab;
		r = fp_data_load(j->heldout, &d, &ds);
		if (r < 0)
			goto out;
		if (cancelled(j)) {
			r = -ECANCELED;
			goto out;
		}
		r = eval_one(j, out, ds, &ppl, &tokens);
		if (r < 0)
			goto out;
		fp_log_info("pruned model evaluated",
			    "round=%" PRIu64 " perplexity=%.6f tokens=%" PRIu64 " seconds=%.3f",
			    j->round, ppl, tokens, now_s() - t0);
		if (j->eval_dense && !cancelled(j)) {
			t0 = now_s();
			r = eval_one(j, j->model, ds, &dense, &dtokens);
			if (r < 0)
				goto out;
			fp_log_info("dense model evaluated",
				    "round=%" PRIu64 " perplexity=%.6f tokens=%" PRIu64
				    " seconds=%.3f",
				    j->round, dense, dtokens, now_s() - t0);
		}
	} else {
		fp_log_warn("no [job] heldout file: reporting no perplexity", "round=%" PRIu64,
			    j->round);
	}
	if (cancelled(j)) {
		r = -ECANCELED;
		goto out;
	}
	snprintf(js, sizeof(js),
		 "{\"round\": %" PRIu64 ", \"perplexity\": %.17g, \"tokens\": %" PRIu64
		 ", \"dense_perplexity\": %.17g}\n",
		 j->round, ppl, tokens, dense);
	r = write_small(j->dir, F_EVAL, js);
	if (r < 0)
		goto out;
	j->w_ppl = ppl;
	j->w_dense = dense;
	j->w_tokens = tokens;
out:
	fp_mask_set_free(ms);
	fp_data_free(ds);
	free(marker);
	free(gpath);
	free(dflt);
	return r;
}

static void work_cb(uv_work_t *w)
{
	struct fp_job *j = w->data;
	double seconds = 0;
	uint64_t tokens = 0;
	int r;

	fp_err_clear();
	j->w_pruned = false;
	j->w_up = NULL;
	switch (j->wk) {
	case W_PRUNE:
		r = w_prune(j, &seconds, &tokens);
		if (r == 0) {
			j->w_pruned = true;
			r = w_prepare(j, seconds, tokens, &j->w_up);
		}
		break;
	case W_PREPARE:
		r = read_local_json(j, &seconds, &tokens);
		if (r == 0)
			r = w_prepare(j, seconds, tokens, &j->w_up);
		break;
	case W_EVAL:
	default:
		r = w_eval(j);
		break;
	}
	j->wr = r;
	snprintf(j->werr, sizeof(j->werr), "%s", *fp_err_last() ? fp_err_last() : fp_strerror(r));
}

static void after_work(uv_work_t *w, int status);

static void queue_work(struct fp_job *j, enum work_kind k)
{
	int r;

	j->wk = k;
	j->wround = j->round;
	j->w_iter = j->have_spec && j->sp.iterative;
	__atomic_store_n(&j->cancel, 0, __ATOMIC_RELAXED);
	j->work.data = j;
	j->st = k == W_EVAL ? J_EVALUATING : J_PRUNING;
	r = uv_queue_work(j->loop, &j->work, work_cb, after_work);
	if (r < 0) {
		fp_log_err("cannot queue work", "round=%" PRIu64 " err=%s", j->round,
			   fp_q(uv_strerror(r)));
		send_error(j, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL, "client cannot queue work");
		j->st = J_FAILED;
		return;
	}
	j->busy = true;
}

/* ---- rounds ---- */

static void dl_reset(struct fp_job *j)
{
	fp_mask_writer_abort(j->dl.w);
	j->dl.w = NULL;
	j->dl.active = false;
	j->dl.iter = false;
	j->dl.has_result = false;
	free(j->dl.dir);
	j->dl.dir = NULL;
	j->dl.cur = 0;
	j->dl.off = 0;
	j->dl.tries = 0;
}

/* Make round the current one (its directory exists afterwards). Returns 0 or -errno (logged). */
static int round_open(struct fp_job *j, uint64_t round)
{
	char name[64];
	char *dir;
	int r;

	snprintf(name, sizeof(name), "round-%" PRIu64, round);
	dir = join(j->state_dir, name);
	if (!dir)
		return -ENOMEM;
	if (!j->dl.iter)
		dl_reset(j); /* an earlier block's download (iterative) goes on */
	free(j->dir);
	j->dir = dir;
	j->round = round;
	j->have_spec = false;
	j->report_pending = false;
	j->st = J_IDLE;
	r = mkdir(dir, 0700) < 0 && errno != EEXIST ? -errno : 0;
	if (r < 0) {
		fp_log_err("cannot create the round directory", "round=%" PRIu64 " dir=%s err=%s",
			   round, fp_q(dir), fp_q(fp_strerror(r)));
		send_error(j, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL,
			   "client cannot write its state directory");
		j->st = J_FAILED;
	}
	return r;
}

static void spec_key(const struct fp_job *j, const struct spec *sp, char *buf, size_t len)
{
	char dg[2 * FP_DIGEST_BYTES + 1];

	hex(j->digest, FP_DIGEST_BYTES, dg);
	snprintf(buf, len,
		 "fedprune-round-spec 1\nround=%" PRIu64 "\nmodel=%s\nmethod=%s\nsparsity=%.17g\n"
		 "nm=%u:%u\ngroup=%s\nseed=%" PRIu64 "\nnsamples=%" PRIu32 "\nseqlen=%" PRIu32
		 "\nsequential=%d\ntensors=%zu\n",
		 sp->round, dg, fp_prune_method_name(sp->method), sp->sparsity, sp->nm_n, sp->nm_m,
		 fp_group_name(sp->group), sp->seed, sp->nsamples, sp->seqlen, sp->sequential,
		 j->nmats);
	if (sp->iterative) {
		/* Every setting the published masks of the earlier blocks depend on. */
		size_t l = strlen(buf);

		snprintf(buf + l, len - l,
			 "iterative=1\nblock=%" PRIu32 "\nagg_group=%d\ntie_break=%d\n"
			 "weight_by_tokens=%d\nweight_scaling=%d\n",
			 sp->block, sp->agg_group, sp->tie_break, sp->weight_by_tokens,
			 sp->weight_scaling);
	}
}

static bool spec_equal(const struct fp_job *j, const struct spec *a, const struct spec *b)
{
	char ka[1024], kb[1024];

	spec_key(j, a, ka, sizeof(ka));
	spec_key(j, b, kb, sizeof(kb));
	return strcmp(ka, kb) == 0;
}

/* eval.json of the current round, if it is complete and sane. */
static bool load_eval(struct fp_job *j)
{
	char *text = NULL;
	cJSON *root, *rd, *pp, *tk, *dp;
	bool ok;

	if (read_small(j->dir, F_EVAL, &text) < 0)
		return false;
	root = cJSON_Parse(text);
	rd = cJSON_GetObjectItemCaseSensitive(root, "round");
	pp = cJSON_GetObjectItemCaseSensitive(root, "perplexity");
	tk = cJSON_GetObjectItemCaseSensitive(root, "tokens");
	dp = cJSON_GetObjectItemCaseSensitive(root, "dense_perplexity");
	ok = cJSON_IsNumber(rd) && cJSON_IsNumber(pp) && cJSON_IsNumber(tk) && cJSON_IsNumber(dp) &&
	     rd->valuedouble == (double)j->round && isfinite(pp->valuedouble) &&
	     pp->valuedouble >= 0 && isfinite(dp->valuedouble) && dp->valuedouble >= 0 &&
	     tk->valuedouble >= 0 && tk->valuedouble < 1e18;
	if (ok) {
		j->ppl = pp->valuedouble;
		j->dense_ppl = dp->valuedouble;
		j->eval_tokens = (uint64_t)tk->valuedouble;
	} else {
		fp_log_warn("ignoring a malformed evaluation result", "round=%" PRIu64 " dir=%s",
			    j->round, fp_q(j->dir));
	}
	cJSON_Delete(root);
	free(text);
	return ok;
}

static void round_done(struct fp_job *j)
{
	j->st = J_DONE;
	send_report(j);
}

/* A new round (or the same round with other settings): resume from the files or prune. */
static void start_round(struct fp_job *j, const struct spec *sp)
{
	char key[1024];
	char *old = NULL;

	if (!sp->iterative && j->dl.iter)
		dl_reset(j); /* a block of an iterative job: over */
	if (round_open(j, sp->round) < 0)
		return;
	j->sp = *sp;
	j->have_spec = true;
	spec_key(j, sp, key, sizeof(key));
	if (read_small(j->dir, F_SPEC, &old) == 0) {
		if (strcmp(old, key) != 0) {
			fp_log_warn("round settings changed: starting the round over",
				    "round=%" PRIu64 " dir=%s", sp->round, fp_q(j->dir));
			remove_file(j->dir, F_EVAL);
			remove_file(j->dir, F_APPLIED);
			remove_file(j->dir, F_GLOBAL);
			remove_file(j->dir, F_FINAL);
			remove_file(j->dir, F_LOCALJS);
			remove_file(j->dir, F_LOCAL);
		}
	} else {
		/* No settings on disk: a local mask cannot be trusted to match them. */
		remove_file(j->dir, F_LOCALJS);
		remove_file(j->dir, F_LOCAL);
	}
	free(old);
	if (write_small(j->dir, F_SPEC, key) < 0) {
		fp_log_err("cannot write the round state", "round=%" PRIu64 " detail=%s", sp->round,
			   fp_q(fp_err_last()));
		send_error(j, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL,
			   "client cannot write its state directory");
		j->st = J_FAILED;
		return;
	}
	next_step(j);
}

static void iter_step(struct fp_job *j, bool retry, bool again);

/* Continue the current round from what its directory holds. */
static void next_step(struct fp_job *j)
{
	if (j->have_spec && j->sp.iterative) {
		iter_step(j, true, false);
		return;
	}
	if (load_eval(j)) {
		fp_log_info("round already evaluated: reporting again", "round=%" PRIu64, j->round);
		j->stats.resumed++;
		round_done(j);
	} else if (exists(j->dir, F_GLOBAL)) {
		fp_log_info("global mask present: evaluating", "round=%" PRIu64, j->round);
		queue_work(j, W_EVAL);
	} else if (!j->have_spec) {
		j->st = J_WAITING;
	} else if (exists(j->dir, F_LOCAL) && exists(j->dir, F_LOCALJS)) {
		fp_log_info("local mask present: checking it before the upload", "round=%" PRIu64,
			    j->round);
		queue_work(j, W_PREPARE);
	} else {
		queue_work(j, W_PRUNE);
	}
}

static int start_download(struct fp_job *j, uint64_t round, const char *dir, size_t base, size_t n,
			  const uint8_t *digest, bool iter);
static void handle_spec(struct fp_job *j, const struct spec *sp);
static void handle_offer(struct fp_job *j, uint64_t round, const uint8_t *digest);

static void after_work(uv_work_t *w, int status)
{
	struct fp_job *j = w->data;
	enum work_kind k = j->wk;
	int r = status == UV_ECANCELED ? -ECANCELED : j->wr;
	struct upload *u = j->w_up;

	j->busy = false;
	j->w_up = NULL;
	if (j->stopping) {
		upload_free(u);
		if (r < 0 && r != -ECANCELED)
			fp_log_warn("work ended while stopping", "round=%" PRIu64 " detail=%s",
				    j->wround, fp_q(j->werr));
		if (j->stop_done)
			j->stop_done(j, j->stop_ud);
		return;
	}
	if (k == W_PRUNE || k == W_PREPARE) {
		if (r == 0) {
			if (j->w_pruned) {
				j->stats.prunes++;
				j->stats.last_prune_round = j->wround;
			} else {
				j->stats.resumed++;
			}
			if (j->pend_offer_set ||
			    (j->pend_spec_set && j->pend_spec.round != j->round)) {
				upload_free(u); /* the round moved on */
			} else {
				j->st = J_UPLOADING;
				upload_start(j, u);
			}
		} else if (r == -ECANCELED) {
			j->st = J_IDLE;
			upload_free(u);
		} else if (k == W_PREPARE) {
			fp_log_warn("local mask unusable: pruning again",
				    "round=%" PRIu64 " detail=%s", j->wround, fp_q(j->werr));
			j->st = J_IDLE;
			if (!j->pend_spec_set && !j->pend_offer_set) {
				queue_work(j, W_PRUNE);
				return;
			}
		} else {
			fp_log_err("local pruning failed", "round=%" PRIu64 " detail=%s", j->wround,
				   fp_q(j->werr));
			send_error(j, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL, j->werr);
			j->st = J_FAILED;
		}
	} else {
		if (r == 0) {
			j->ppl = j->w_ppl;
			j->dense_ppl = j->w_dense;
			j->eval_tokens = j->w_tokens;
			round_done(j);
			if (j->stopping)
				return;
		} else if (r == -ECANCELED) {
			j->st = J_IDLE;
		} else {
			fp_log_err("evaluation failed", "round=%" PRIu64 " detail=%s", j->wround,
				   fp_q(j->werr));
			send_error(j, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL, j->werr);
			j->st = J_FAILED;
		}
	}
	if (j->pend_spec_set) {
		struct spec sp = j->pend_spec;

		j->pend_spec_set = false;
		handle_spec(j, &sp);
	}
	if (j->pend_offer_set && !j->busy) {
		j->pend_offer_set = false;
		handle_offer(j, j->pend_offer_round, j->pend_offer_digest);
	}
	if (!j->busy && j->have_spec && j->sp.iterative)
		iter_step(j, false, false); /* e.g. this block's result was offered meanwhile */
}

/* ---- RoundSpec ---- */

static int spec_refuse(struct fp_job *j, Fedprune__ErrorCode code, uint64_t round, const char *fmt,
		       ...) __attribute__((format(printf, 4, 5)));
static int spec_refuse(struct fp_job *j, Fedprune__ErrorCode code, uint64_t round, const char *fmt,
		       ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fp_log_err("round spec refused", "round=%" PRIu64 " code=%s reason=%s", round,
		   fp_error_code_name(code), fp_q(msg));
	j->stats.specs_refused++;
	send_error(j, code, msg);
	return -EINVAL;
}

static int parse_spec(struct fp_job *j, const Fedprune__RoundSpec *s, struct spec *sp)
{
	struct fp_prune_opts o;
	uint64_t R = s->round_id;
	size_t base, n;

	memset(sp, 0, sizeof(*sp));
	sp->round = R;
	if (!R)
		return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R,
				   "round_spec: round_id 0");
	if (s->model_digest.len != FP_DIGEST_BYTES)
		return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R,
				   "round_spec: model_digest of %zu bytes, want %u",
				   s->model_digest.len, FP_DIGEST_BYTES);
	if (memcmp(s->model_digest.data, j->digest, FP_DIGEST_BYTES) != 0) {
		char a[2 * FP_DIGEST_BYTES + 1], b[2 * FP_DIGEST_BYTES + 1];

		hex(s->model_digest.data, FP_DIGEST_BYTES, a);
		hex(j->digest, FP_DIGEST_BYTES, b);
		j->mismatch_round = R;
		return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_MODEL_MISMATCH, R,
				   "round %" PRIu64
				   " is for model %s, this client has model %s (%s)",
				   R, a, b, j->model);
	}
	if (s->iterative) {
		if (s->block >= j->mcfg.nlayers)
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R,
					   "iterative round for block %u, the model has %u blocks",
					   s->block, j->mcfg.nlayers);
		/* The client derives the rounds of the earlier blocks from this. */
		if (R != (uint64_t)s->block + 1)
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R,
					   "iterative round %" PRIu64
					   " prunes block %u: the round must be block + 1",
					   R, s->block);
		sp->iterative = true;
		sp->block = s->block;
	}
	sp->agg_group = (int)s->agg_group;
	sp->tie_break = (int)s->tie_break;
	sp->weight_by_tokens = s->weight_by_tokens;
	sp->weight_scaling = s->weight_scaling;
	if (s->payload != FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS)
		return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_UNSUPPORTED, R,
				   "payload kind %d is not supported (mask bits only)", s->payload);
	if (s->privacy && s->privacy->mechanism != FEDPRUNE__LDP_MECHANISM__LDP_NONE) {
		if (s->privacy->mechanism != FEDPRUNE__LDP_MECHANISM__LDP_RANDOMIZED_RESPONSE &&
		    s->privacy->mechanism != FEDPRUNE__LDP_MECHANISM__LDP_UNARY_ENCODING)
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_UNSUPPORTED, R,
					   "local DP mechanism %d is not supported for masks",
					   s->privacy->mechanism);
		if (!(s->privacy->max_epsilon >= FP_LDP_EPS_MIN))
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R,
					   "local DP: max_epsilon %g", s->privacy->max_epsilon);
		sp->ldp_mech = (int)s->privacy->mechanism; /* wire values = enum fp_ldp_mech */
		sp->ldp_max = s->privacy->max_epsilon;
		sp->ldp_required = s->privacy->required;
	}
	if (j->ldp_eps > 0) {
		if (!sp->ldp_mech)
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_PRIVACY_REQUIRED, R,
					   "this client sends masks only with local DP ([job] "
					   "ldp_epsilon = %g); the round takes none",
					   j->ldp_eps);
		if (j->ldp_eps > sp->ldp_max)
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_PRIVACY_REQUIRED, R,
					   "[job] ldp_epsilon %g is above the round's largest %g",
					   j->ldp_eps, sp->ldp_max);
		if (j->ldp_mech && j->ldp_mech != sp->ldp_mech)
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH, R,
					   "[job] ldp_mechanism is %s, the round uses %s",
					   fp_ldp_mech_name((enum fp_ldp_mech)j->ldp_mech),
					   fp_ldp_mech_name((enum fp_ldp_mech)sp->ldp_mech));
	} else if (sp->ldp_required) {
		return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_PRIVACY_REQUIRED, R,
				   "the round requires local DP (epsilon <= %g); set [job] "
				   "ldp_epsilon",
				   sp->ldp_max);
	}
	switch (s->method) {
	case FEDPRUNE__METHOD__METHOD_MAGNITUDE:
		sp->method = FP_PRUNE_MAGNITUDE;
		break;
	case FEDPRUNE__METHOD__METHOD_WANDA:
		sp->method = FP_PRUNE_WANDA;
		break;
	case FEDPRUNE__METHOD__METHOD_SPARSEGPT:
		sp->method = FP_PRUNE_SPARSEGPT;
		break;
	default:
		return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_UNSUPPORTED, R,
				   "pruning method %d is not supported", s->method);
	}
	if (!isfinite(s->sparsity) || s->sparsity < 0 || s->sparsity > 1)
		return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R,
				   "sparsity %g is not in [0, 1]", s->sparsity);
	sp->sparsity = s->sparsity;
	if (s->nm_n || s->nm_m) {
		if (!s->nm_n || s->nm_n >= s->nm_m || s->nm_m > 64)
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R,
					   "N:M %u:%u is not 0 < N < M <= 64", s->nm_n, s->nm_m);
		sp->nm_n = s->nm_n;
		sp->nm_m = s->nm_m;
		sp->group = FP_GROUP_NM;
	} else if (sp->method == FP_PRUNE_SPARSEGPT) {
		sp->group = FP_GROUP_LAYER; /* SparseGPT selects in its own column blocks */
	} else {
		switch (s->group) {
		case FEDPRUNE__GROUP__GROUP_ROW:
			sp->group = FP_GROUP_ROW;
			break;
		case FEDPRUNE__GROUP__GROUP_LAYER:
			sp->group = FP_GROUP_LAYER;
			break;
		case FEDPRUNE__GROUP__GROUP_COLUMN:
			sp->group = FP_GROUP_COLUMN;
			break;
		default:
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R,
					   "comparison group %d is not row, layer or column",
					   s->group);
		}
	}
	sp->sequential = s->sequential;
	if (fp_prune_needs_data(sp->method)) {
		if (!j->calib)
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_UNSUPPORTED, R,
					   "%s needs calibration data and this client has no "
					   "[job] calib",
					   fp_prune_method_name(sp->method));
		if (s->nsamples < 1 || s->nsamples > MAX_NSAMPLES)
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R,
					   "nsamples %u is not in [1, %u]", s->nsamples,
					   MAX_NSAMPLES);
		if (s->seqlen < 2 || s->seqlen > FP_DATA_MAX_SEQLEN)
			return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R,
					   "seqlen %u is not in [2, %u]", s->seqlen,
					   FP_DATA_MAX_SEQLEN);
		sp->nsamples = s->nsamples;
		sp->seqlen = s->seqlen;
		sp->seed = s->seed;
	}
	spec_range(j, sp, &base, &n);
	if (s->n_tensors != n)
		return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH, R,
				   "the spec names %zu tensors, %s has %zu prunable matrices",
				   s->n_tensors, sp->iterative ? "a block" : "the model", n);
	for (size_t i = 0; i < n; i++)
		if (!s->tensors[i] || strcmp(s->tensors[i], j->names[base + i]) != 0)
			return spec_refuse(
				j, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH, R,
				"tensor %zu of the spec is '%.200s', the model's is '%s'", i,
				s->tensors[i] ? s->tensors[i] : "", j->names[base + i]);
	spec_opts(sp, &o);
	fp_err_clear();
	if (fp_prune_check_opts(&o, &j->mcfg) < 0)
		return spec_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, R, "%s",
				   fp_err_last());
	return 0;
}

static void handle_spec(struct fp_job *j, const struct spec *sp)
{
	if (j->busy) {
		if (sp->round == j->wround && j->have_spec && spec_equal(j, sp, &j->sp)) {
			j->pend_spec_set = false; /* same as what runs */
			return;
		}
		j->pend_spec = *sp;
		j->pend_spec_set = true;
		if (j->wk != W_EVAL || sp->round != j->wround)
			__atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
		fp_log_info("new round settings: they apply once the current work ends",
			    "round=%" PRIu64 " working_on=%" PRIu64, sp->round, j->wround);
		return;
	}
	if (j->have_spec && sp->round == j->round && spec_equal(j, sp, &j->sp)) {
		/* A repeated spec (the server sends it on every reconnect). */
		if (sp->iterative) {
			iter_step(j, true, false);
			return;
		}
		if ((j->st == J_UPLOAD_FAILED || j->st == J_IDLE) && !j->up) {
			fp_log_info("round spec repeated: resuming the round", "round=%" PRIu64,
				    sp->round);
			next_step(j);
		} else {
			fp_log_debug("round spec repeated", "round=%" PRIu64 " state=%d", sp->round,
				     (int)j->st);
		}
		return;
	}
	fp_log_info("round started",
		    "round=%" PRIu64 " method=%s sparsity=%g nm=%u:%u group=%s nsamples=%" PRIu32
		    " seqlen=%" PRIu32 " seed=%" PRIu64
		    " sequential=%d iterative=%d block=%" PRIu32,
		    sp->round, fp_prune_method_name(sp->method), sp->sparsity, sp->nm_n, sp->nm_m,
		    fp_group_name(sp->group), sp->nsamples, sp->seqlen, sp->seed, sp->sequential,
		    sp->iterative, sp->block);
	start_round(j, sp);
}

static void on_spec(struct fp_job *j, const Fedprune__RoundSpec *s)
{
	struct spec sp;

	j->stats.specs++;
	if (parse_spec(j, s, &sp) < 0) {
		/* Whatever runs for another round is of no use any more. */
		if (j->busy && j->wround != sp.round)
			__atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
		j->pend_spec_set = false;
		return;
	}
	j->iter_job = sp.iterative;
	if (sp.iterative) {
		/* Offered digests belong to one job: forget them when the settings change. */
		struct spec k = sp;
		char key[sizeof(j->jobkey)];

		k.round = 0;
		k.block = 0;
		spec_key(j, &k, key, sizeof(key));
		if (j->jobkey[0] && strcmp(key, j->jobkey) != 0)
			memset(j->oknown, 0, j->mcfg.nlayers * sizeof(*j->oknown));
		memcpy(j->jobkey, key, sizeof(key));
	}
	handle_spec(j, &sp);
}

/* ---- ResultOffer and the download ---- */

/*
 * Whether dir/global.fpmask holds exactly the tensors j->names[base .. base + n) (names and
 * shapes) and, if digest is not NULL, the result with this digest.
 */
static bool global_check(struct fp_job *j, const char *dir, size_t base, size_t n,
			 const uint8_t *digest)
{
	struct fp_mask_reader *rd = NULL;
	uint8_t(*dig)[FP_DIGEST_BYTES] = NULL;
	uint8_t got[FP_DIGEST_BYTES];
	char *path = join(dir, F_GLOBAL);
	bool ok = false;
	int fd = -1;

	if (!path || fp_mask_reader_open(path, &rd) < 0 || fp_mask_reader_count(rd) != n)
		goto out;
	dig = fp_callocarray(n, sizeof(*dig));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (!dig || fd < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		const struct fp_mask_info *mi = fp_mask_reader_info(rd, i);
		size_t m = base + i;

		if (strcmp(mi->name, j->names[m]) != 0 || mi->ndim != 2 ||
		    mi->dims[0] != j->shape[m][0] || mi->dims[1] != j->shape[m][1] ||
		    pread(fd, dig[i], FP_DIGEST_BYTES, (off_t)(mi->offset + mi->nbytes)) !=
			    (ssize_t)FP_DIGEST_BYTES)
			goto out;
	}
	ok = !digest ||
	     (fp_submission_digest(j->name_ptr + base, (const uint8_t(*)[FP_DIGEST_BYTES])dig, n,
				   got) == 0 &&
	      memcmp(got, digest, FP_DIGEST_BYTES) == 0);
out:
	if (fd >= 0)
		close(fd);
	fp_mask_reader_free(rd);
	free(dig);
	free(path);
	return ok;
}

static void request(struct fp_job *j)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__ResultRequest q = FEDPRUNE__RESULT_REQUEST__INIT;

	q.round_id = j->dl.round;
	q.tensor = j->names[j->dl.base + j->dl.cur];
	q.offset = j->dl.off;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_RESULT_REQUEST;
	e.result_request = &q;
	if (j->link)
		fp_link_send(j->link, &e); /* not connected: asked again after the Welcome */
}

static void tensor_restart(struct fp_job *j)
{
	j->dl.off = 0;
	crypto_generichash_init(j->dl.h, NULL, 0, FP_DIGEST_BYTES);
}

/*
 * Download the result of round into dir/global.fpmask: tensors j->names[base .. base + n),
 * checked against digest (the offer's result_digest) unless it is NULL (an earlier block of an
 * iterative job that was not offered on this connection: each tensor's digest is checked).
 * iter: the download is not tied to j->round. Returns 0 or -errno (logged, Error sent).
 */
static int start_download(struct fp_job *j, uint64_t round, const char *dir, size_t base, size_t n,
			  const uint8_t *digest, bool iter)
{
	char *path = join(dir, F_GLOBAL);
	int r = -ENOMEM;

	dl_reset(j);
	j->dl.dir = fp_strdup(dir);
	if (path && j->dl.dir)
		r = fp_mask_writer_open(path, j->decls + base, n, &j->dl.w);
	free(path);
	if (r < 0) {
		fp_log_err("cannot write the global mask", "round=%" PRIu64 " detail=%s", round,
			   fp_q(fp_err_last()));
		send_error(j, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL,
			   "client cannot write its state directory");
		dl_reset(j);
		return r;
	}
	j->dl.active = true;
	j->dl.iter = iter;
	j->dl.round = round;
	j->dl.base = base;
	j->dl.n = n;
	j->dl.has_result = digest != NULL;
	if (digest)
		memcpy(j->dl.result, digest, FP_DIGEST_BYTES);
	tensor_restart(j);
	fp_log_info("downloading the global mask", "round=%" PRIu64 " tensors=%zu offered=%d",
		    round, n, digest != NULL);
	request(j);
	return 0;
}

/* Drop the download; the next ResultOffer (sent on every reconnect) starts it over. */
static void dl_give_up(struct fp_job *j, const char *why)
{
	bool iter = j->dl.iter;

	fp_log_err("global mask download abandoned", "round=%" PRIu64 " reason=%s", j->dl.round,
		   fp_q(why));
	dl_reset(j);
	if (!iter)
		j->st = J_WAITING;
	else if (j->st == J_DOWNLOADING || j->st == J_FETCHING)
		j->st = J_IDLE; /* a repeated spec or offer tries again */
}

/* Refuse a result chunk: log, tell the server, ask again from the tensor's start. */
static void chunk_refuse(struct fp_job *j, Fedprune__ErrorCode code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void chunk_refuse(struct fp_job *j, Fedprune__ErrorCode code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	j->stats.chunks_refused++;
	fp_log_err("result chunk refused", "round=%" PRIu64 " code=%s reason=%s", j->dl.round,
		   fp_error_code_name(code), fp_q(msg));
	send_error(j, code, msg);
	if (!j->dl.active)
		return;
	if (++j->dl.tries > CHUNK_RETRIES) {
		dl_give_up(j, msg);
		return;
	}
	tensor_restart(j);
	request(j);
}

static void download_finish(struct fp_job *j)
{
	uint8_t got[FP_DIGEST_BYTES];
	bool iter = j->dl.iter;
	uint64_t round = j->dl.round;
	int r;

	r = fp_submission_digest(j->name_ptr + j->dl.base,
				 (const uint8_t(*)[FP_DIGEST_BYTES])j->dl.dig, j->dl.n, got);
	if (r < 0) {
		dl_give_up(j, "out of memory");
		return;
	}
	if (j->dl.has_result && memcmp(got, j->dl.result, FP_DIGEST_BYTES) != 0) {
		j->stats.chunks_refused++;
		fp_log_err("global mask refused: result digest mismatch", "round=%" PRIu64,
			   j->dl.round);
		send_error(j, FEDPRUNE__ERROR_CODE__ERROR_DIGEST_MISMATCH,
			   "result_digest does not match the downloaded tensors");
		dl_give_up(j, "result digest mismatch");
		return;
	}
	r = fp_mask_writer_close(j->dl.w);
	j->dl.w = NULL;
	if (r < 0) {
		fp_log_err("cannot write the global mask", "round=%" PRIu64 " detail=%s",
			   j->dl.round, fp_q(fp_err_last()));
		send_error(j, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL,
			   "client cannot write its state directory");
		dl_reset(j);
		j->st = J_FAILED;
		return;
	}
	j->stats.downloads++;
	fp_log_info("global mask written", "round=%" PRIu64 " tensors=%zu", round, j->dl.n);
	dl_reset(j);
	if (iter)
		iter_step(j, false, false);
	else
		queue_work(j, W_EVAL);
}

static void on_chunk(struct fp_job *j, const Fedprune__TensorChunk *c)
{
	struct download *d = &j->dl;
	const char *name;
	uint64_t total, len = c->data.len;
	uint8_t got[FP_DIGEST_BYTES];
	size_t m;
	int r;

	if (!d->active || c->round_id != d->round) {
		j->stats.chunks_refused++;
		fp_log_warn("unexpected result chunk ignored", "round=%" PRIu64 " tensor=%s",
			    c->round_id, fp_q(c->tensor));
		send_error(j, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER,
			   "result chunk without a request");
		return;
	}
	m = d->base + d->cur;
	name = j->names[m];
	total = fp_mask_bytes(j->shape[m][0] * j->shape[m][1]);
	if (strcmp(c->tensor, name) != 0) {
		chunk_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER,
			     "chunk of tensor '%.200s', asked for '%s'", c->tensor, name);
		return;
	}
	if (c->kind != FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS) {
		chunk_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH,
			     "tensor '%s': payload kind %d, not mask bits", name, c->kind);
		return;
	}
	if (c->offset != d->off) {
		chunk_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER,
			     "tensor '%s': chunk at offset %" PRIu64 ", asked for %" PRIu64, name,
			     c->offset, d->off);
		return;
	}
	if (c->total_bytes != total) {
		chunk_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH,
			     "tensor '%s': total_bytes %" PRIu64 ", the mask of (%" PRIu64
			     ", %" PRIu64 ") has %" PRIu64,
			     name, c->total_bytes, j->shape[m][0], j->shape[m][1], total);
		return;
	}
	if (c->offset == 0 &&
	    (c->n_shape != 2 || c->shape[0] != j->shape[m][0] || c->shape[1] != j->shape[m][1])) {
		chunk_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH,
			     "tensor '%s': shape of %zu dims is not (%" PRIu64 ", %" PRIu64 ")",
			     name, c->n_shape, j->shape[m][0], j->shape[m][1]);
		return;
	}
	if (len == 0 || len > total - d->off) {
		chunk_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE,
			     "tensor '%s': chunk of %" PRIu64 " bytes at %" PRIu64 " of %" PRIu64,
			     name, len, d->off, total);
		return;
	}
	memcpy(d->buf + d->off, c->data.data, len);
	crypto_generichash_update(d->h, c->data.data, len);
	d->off += len;
	if (d->off < total) {
		request(j);
		return;
	}
	crypto_generichash_final(d->h, got, FP_DIGEST_BYTES);
	if (c->tensor_digest.len != FP_DIGEST_BYTES ||
	    sodium_memcmp(got, c->tensor_digest.data, FP_DIGEST_BYTES) != 0) {
		chunk_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_DIGEST_MISMATCH,
			     "tensor '%s': digest mismatch (%zu-byte digest sent)", name,
			     c->tensor_digest.len);
		return;
	}
	fp_err_clear();
	r = fp_mask_writer_add(d->w, d->buf, (size_t)total);
	if (r == -EINVAL) {
		chunk_refuse(j, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, "tensor '%s': %s", name,
			     fp_err_last());
		return;
	}
	if (r < 0) {
		fp_log_err("cannot write the global mask", "round=%" PRIu64 " detail=%s", d->round,
			   fp_q(fp_err_last()));
		send_error(j, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL,
			   "client cannot write its state directory");
		dl_reset(j);
		j->st = J_FAILED;
		return;
	}
	memcpy(d->dig[d->cur], got, FP_DIGEST_BYTES);
	d->cur++;
	d->tries = 0;
	if (d->cur == d->n) {
		download_finish(j);
		return;
	}
	tensor_restart(j);
	request(j);
}

static void handle_offer(struct fp_job *j, uint64_t round, const uint8_t *digest)
{
	if (round == j->mismatch_round) {
		fp_log_warn("result of a round this client did not take part in ignored",
			    "round=%" PRIu64, round);
		return;
	}
	if (j->busy) {
		if (j->wk == W_EVAL && round == j->wround)
			return; /* already evaluating this round's result */
		j->pend_offer_set = true;
		j->pend_offer_round = round;
		memcpy(j->pend_offer_digest, digest, FP_DIGEST_BYTES);
		__atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED); /* the result is out */
		return;
	}
	if (round != j->round || j->dl.iter) {
		if (j->dl.iter)
			dl_reset(j);
		if (round_open(j, round) < 0)
			return;
	}
	switch (j->st) {
	case J_DONE:
		fp_log_info("result offered again: reporting again", "round=%" PRIu64, round);
		send_report(j);
		return;
	case J_DOWNLOADING:
		if (memcmp(digest, j->dl.result, FP_DIGEST_BYTES) == 0)
			return; /* in progress; resumed after reconnects */
		break;
	default:
		break;
	}
	if (load_eval(j)) {
		round_done(j);
		return;
	}
	if (exists(j->dir, F_GLOBAL)) {
		if (global_check(j, j->dir, 0, j->nmats, digest)) {
			fp_log_info("global mask already downloaded", "round=%" PRIu64, round);
			queue_work(j, W_EVAL);
			return;
		}
		remove_file(j->dir, F_EVAL);
		remove_file(j->dir, F_APPLIED);
	}
	if (start_download(j, round, j->dir, 0, j->nmats, digest, false) < 0)
		j->st = J_FAILED;
	else
		j->st = J_DOWNLOADING;
}

/* ---- iterative FedPrLLM: one round per block, round = block + 1 ---- */

/* The spec of block k's round in the current job (the same settings, another block). */
static void block_key(const struct fp_job *j, uint32_t k, char *key, size_t len)
{
	struct spec s = j->sp;

	s.round = (uint64_t)k + 1;
	s.block = k;
	spec_key(j, &s, key, len);
}

/*
 * Whether block k's global mask of the current job is on disk: round-<k + 1>/ holds this job's
 * settings and a global mask of block k's matrices, equal to the offered result if one was
 * offered. A mask that is not the offered one is removed (it is fetched again).
 */
static bool block_ready(struct fp_job *j, uint32_t k)
{
	char key[1024], *old = NULL, *dir = round_dir(j, (uint64_t)k + 1);
	bool ok = false;

	if (!dir)
		return false;
	block_key(j, k, key, sizeof(key));
	if (read_small(dir, F_SPEC, &old) < 0 || strcmp(old, key) != 0 || !exists(dir, F_GLOBAL))
		goto out;
	ok = global_check(j, dir, (size_t)k * FP_LIN_COUNT, FP_LIN_COUNT,
			  j->oknown[k] ? j->odig[k] : NULL);
	if (!ok) {
		fp_log_warn("stored global mask is not the published one: fetching it again",
			    "round=%" PRIu64 " block=%" PRIu32 " dir=%s", (uint64_t)k + 1, k,
			    fp_q(dir));
		remove_file(dir, F_GLOBAL);
		remove_file(dir, F_FINAL);
		remove_file(dir, F_APPLIED);
		remove_file(dir, F_EVAL);
	}
out:
	free(old);
	free(dir);
	return ok;
}

/* Fetch block k's global mask (round k + 1) into its round directory, which gets this job's
 * settings (a directory left by another job is emptied first). */
static void iter_fetch(struct fp_job *j, uint32_t k)
{
	char key[1024], *old = NULL, *dir = round_dir(j, (uint64_t)k + 1);
	int r = dir ? 0 : -ENOMEM;

	block_key(j, k, key, sizeof(key));
	if (r == 0 && mkdir(dir, 0700) < 0 && errno != EEXIST)
		r = fp_err_detail(-errno, "%s: cannot create: %s", dir, strerror(errno));
	if (r == 0 && (read_small(dir, F_SPEC, &old) < 0 || strcmp(old, key) != 0)) {
		static const char *const files[] = { F_EVAL,	F_APPLIED, F_GLOBAL, F_FINAL,
						     F_LOCALJS, F_LOCAL,   F_REPORT };

		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
			remove_file(dir, files[i]);
		r = write_small(dir, F_SPEC, key);
	}
	free(old);
	if (r == 0) {
		fp_log_info("fetching the global mask of an earlier block",
			    "round=%" PRIu64 " block=%" PRIu32 " for_round=%" PRIu64 " offered=%d",
			    (uint64_t)k + 1, k, j->round, j->oknown[k]);
		r = start_download(j, (uint64_t)k + 1, dir, (size_t)k * FP_LIN_COUNT, FP_LIN_COUNT,
				   j->oknown[k] ? j->odig[k] : NULL, true);
	} else {
		fp_log_err("cannot write the round state", "round=%" PRIu64 " detail=%s",
			   (uint64_t)k + 1, fp_q(fp_err_last()));
		send_error(j, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL,
			   "client cannot write its state directory");
	}
	free(dir);
	j->st = r < 0 ? J_FAILED : J_FETCHING;
}

/*
 * The iterative round's next step, from what the state directory holds: fetch the global masks
 * of the earlier blocks that are missing (one download at a time), then prune this block
 * (only once they are all in), upload, download this block's result once it is offered, and
 * after the last block merge, apply and evaluate. retry: a repeated spec (a failed upload or
 * pruning is tried again); again: this round's result was offered again (report again).
 */
static void iter_step(struct fp_job *j, bool retry, bool again)
{
	uint32_t b = j->sp.block;

	if (!j->have_spec || !j->sp.iterative || j->busy || j->stopping)
		return;
	if (j->st == J_DONE) {
		if (again) {
			fp_log_info("result offered again: reporting again", "round=%" PRIu64,
				    j->round);
			send_report(j);
		}
		return;
	}
	if (j->dl.active) {
		if (j->dl.round != j->round && j->st == J_IDLE)
			j->st = J_FETCHING; /* pruning waits for the earlier block */
		return;
	}
	if (j->st == J_FAILED && !retry)
		return;
	for (uint32_t k = 0; k < b; k++) {
		if (!block_ready(j, k)) {
			iter_fetch(j, k);
			return;
		}
	}
	if (block_ready(j, b)) {
		if (b + 1 < j->mcfg.nlayers) {
			if (j->st != J_BLOCK_DONE)
				fp_log_info("block done: waiting for the next block's round",
					    "round=%" PRIu64 " block=%" PRIu32, j->round, b);
			j->st = J_BLOCK_DONE;
			return;
		}
		if (load_eval(j)) {
			fp_log_info("round already evaluated: reporting again", "round=%" PRIu64,
				    j->round);
			j->stats.resumed++;
			round_done(j);
			return;
		}
		fp_log_info("every block's global mask is in: building the final model",
			    "round=%" PRIu64 " blocks=%" PRIu32, j->round, j->mcfg.nlayers);
		queue_work(j, W_EVAL);
		return;
	}
	if (j->oknown[b]) {
		remove_file(j->dir, F_EVAL);
		remove_file(j->dir, F_APPLIED);
		if (start_download(j, j->round, j->dir, (size_t)b * FP_LIN_COUNT, FP_LIN_COUNT,
				   j->odig[b], true) < 0)
			j->st = J_FAILED;
		else
			j->st = J_DOWNLOADING;
		return;
	}
	switch (j->st) {
	case J_IDLE:
	case J_FETCHING:
		break;
	case J_UPLOAD_FAILED:
	case J_FAILED:
		if (retry && !j->up)
			break;
		return;
	default:
		return; /* uploading or uploaded: the result comes with an offer */
	}
	if (exists(j->dir, F_LOCAL) && exists(j->dir, F_LOCALJS)) {
		fp_log_info("local mask present: checking it before the upload", "round=%" PRIu64,
			    j->round);
		queue_work(j, W_PREPARE);
	} else {
		queue_work(j, W_PRUNE);
	}
}

/* An iterative round's result (block round - 1): remember its digest and go on. */
static void handle_iter_offer(struct fp_job *j, uint64_t round, const uint8_t *digest)
{
	uint32_t b = (uint32_t)(round - 1);

	if (round == j->mismatch_round) {
		fp_log_warn("result of a round this client did not take part in ignored",
			    "round=%" PRIu64, round);
		return;
	}
	memcpy(j->odig[b], digest, FP_DIGEST_BYTES);
	j->oknown[b] = true;
	if (j->dl.active && j->dl.round == round && !j->dl.has_result) {
		j->dl.has_result = true; /* fetched unoffered: now checked against the offer */
		memcpy(j->dl.result, digest, FP_DIGEST_BYTES);
	}
	if (j->busy) {
		if ((j->wk == W_PRUNE || j->wk == W_PREPARE) && j->wround == round)
			__atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED); /* the result is out */
		return;							   /* after the work */
	}
	if (!j->have_spec || !j->sp.iterative || round > j->round) {
		fp_log_info("result of a block kept until its round's spec",
			    "round=%" PRIu64 " block=%" PRIu32, round, b);
		return;
	}
	iter_step(j, false, round == j->round);
}

static void on_offer(struct fp_job *j, const Fedprune__ResultOffer *o)
{
	const char *why = NULL;
	char msg[512];
	bool full = false, block = false;

	if (!o->round_id)
		why = "round_id 0";
	else if (o->personalised)
		why = "personalised results are not supported";
	else if (o->result_digest.len != FP_DIGEST_BYTES)
		why = "result_digest is not 32 bytes";
	if (!why) {
		/* One-shot: every prunable matrix. Iterative: the 7 of block round_id - 1. */
		size_t base = (size_t)(o->round_id - 1) * FP_LIN_COUNT;

		full = o->n_tensors == j->nmats;
		for (size_t i = 0; full && i < j->nmats; i++)
			full = o->tensors[i] && strcmp(o->tensors[i], j->names[i]) == 0;
		block = o->round_id <= j->mcfg.nlayers && o->n_tensors == FP_LIN_COUNT;
		for (size_t i = 0; block && i < FP_LIN_COUNT; i++)
			block = o->tensors[i] && strcmp(o->tensors[i], j->names[base + i]) == 0;
		if (!full && !block)
			why = "the result's tensors are neither the model's prunable matrices nor "
			      "block round_id - 1's, in order";
	}
	if (why) {
		snprintf(msg, sizeof(msg), "result_offer of round %" PRIu64 ": %s", o->round_id,
			 why);
		fp_log_err("result offer refused", "round=%" PRIu64 " reason=%s", o->round_id,
			   fp_q(why));
		send_error(j, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH, msg);
		return;
	}
	fp_log_info("result offered", "round=%" PRIu64 " tensors=%zu", o->round_id, o->n_tensors);
	if (block && (j->iter_job || !full))
		handle_iter_offer(j, o->round_id, o->result_digest.data);
	else
		handle_offer(j, o->round_id, o->result_digest.data);
}

/* ---- link callbacks ---- */

void fp_job_on_ready(struct fp_job *j, const Fedprune__Welcome *w)
{
	(void)w;
	if (j->stopping)
		return;
	if (j->dl.active)
		request(j); /* resume the download where it stood */
	if (j->report_pending)
		send_report(j);
}

void fp_job_on_down(struct fp_job *j, const char *reason, bool fatal)
{
	(void)reason;
	if (fatal && !j->stopping)
		__atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
}

void fp_job_on_msg(struct fp_job *j, const Fedprune__Envelope *e)
{
	if (j->stopping)
		return;
	switch (e->msg_case) {
	case FEDPRUNE__ENVELOPE__MSG_ROUND_SPEC:
		on_spec(j, e->round_spec);
		break;
	case FEDPRUNE__ENVELOPE__MSG_RESULT_OFFER:
		on_offer(j, e->result_offer);
		break;
	case FEDPRUNE__ENVELOPE__MSG_CHUNK:
		on_chunk(j, e->chunk);
		break;
	case FEDPRUNE__ENVELOPE__MSG_ERROR:
		/* Logged by the link. An error while a result tensor is requested is most
		 * likely its answer: ask again, a bounded number of times. (A fatal one closes
		 * the connection; the download resumes after the reconnect.) */
		if (j->dl.active && !e->error->fatal) {
			if (++j->dl.tries > CHUNK_RETRIES) {
				dl_give_up(j, e->error->message);
			} else {
				tensor_restart(j);
				request(j);
			}
		}
		break;
	case FEDPRUNE__ENVELOPE__MSG_RECEIPT:
		break; /* the upload's done callback has it */
	default:
		fp_log_debug("message ignored", "type=%s", fp_msg_name(e->msg_case));
		break;
	}
}

/* ---- life ---- */

int fp_job_new(uv_loop_t *loop, const struct fp_job_cfg *cfg, struct fp_job **ret)
{
	struct fp_job *j;
	struct fp_model *m = NULL;
	int r;

	*ret = NULL;
	if (!cfg->model || !*cfg->model)
		return fp_err_detail(-EINVAL, "[job] model is required");
	if (!cfg->state_dir || !*cfg->state_dir)
		return fp_err_detail(-EINVAL, "[job] state_dir is required");
	j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->loop = loop;
	j->model = fp_strdup(cfg->model);
	j->calib = cfg->calib && *cfg->calib ? fp_strdup(cfg->calib) : NULL;
	j->heldout = cfg->heldout && *cfg->heldout ? fp_strdup(cfg->heldout) : NULL;
	j->state_dir = fp_strdup(cfg->state_dir);
	j->output = cfg->output && *cfg->output ? fp_strdup(cfg->output) : NULL;
	j->eval_dense = cfg->eval_dense;
	j->eval_seqlen = cfg->eval_seqlen;
	j->eval_nsamples = cfg->eval_nsamples;
	j->eval_seed = cfg->eval_seed;
	j->ldp_eps = cfg->ldp_epsilon;
	j->ldp_mech = cfg->ldp_mechanism;
	j->on_done = cfg->on_done;
	j->ud = cfg->ud;
	j->dl.h = fp_aligned_array(1, sizeof(*j->dl.h));
	if (!j->model || !j->state_dir || (cfg->calib && *cfg->calib && !j->calib) ||
	    (cfg->heldout && *cfg->heldout && !j->heldout) ||
	    (cfg->output && *cfg->output && !j->output) || !j->dl.h) {
		r = -ENOMEM;
		goto fail;
	}
	if (cfg->eval_seqlen == 1 || cfg->eval_seqlen > FP_DATA_MAX_SEQLEN) {
		r = fp_err_detail(-EINVAL, "[job] eval_seqlen %u is not 0 or 2 .. %u",
				  cfg->eval_seqlen, FP_DATA_MAX_SEQLEN);
		goto fail;
	}
	r = fp_model_open(j->model, &m);
	if (r < 0)
		goto fail;
	j->mcfg = *fp_model_config(m);
	r = fp_hfout_source_digest(fp_model_source(m), j->digest);
	fp_model_close(m);
	if (r < 0)
		goto fail;
	j->nmats = (size_t)j->mcfg.nlayers * FP_LIN_COUNT;
	j->names = fp_callocarray(j->nmats, sizeof(*j->names));
	j->name_ptr = fp_callocarray(j->nmats, sizeof(*j->name_ptr));
	j->shape = fp_callocarray(j->nmats, sizeof(*j->shape));
	j->decls = fp_callocarray(j->nmats, sizeof(*j->decls));
	if (!j->names || !j->name_ptr || !j->shape || !j->decls) {
		r = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < j->nmats; i++) {
		enum fp_linear w = (enum fp_linear)(i % FP_LIN_COUNT);
		size_t rows, cols;

		snprintf(j->names[i], sizeof(j->names[i]), "model.layers.%zu.%s.weight",
			 i / FP_LIN_COUNT, fp_linear_name(w));
		fp_linear_shape(&j->mcfg, w, &rows, &cols);
		j->name_ptr[i] = j->names[i];
		j->shape[i][0] = rows;
		j->shape[i][1] = cols;
		j->decls[i].name = j->names[i];
		j->decls[i].ndim = 2;
		j->decls[i].dims[0] = rows;
		j->decls[i].dims[1] = cols;
		if (fp_mask_bytes(rows * cols) > j->max_nbytes)
			j->max_nbytes = fp_mask_bytes(rows * cols);
	}
	j->dl.buf = malloc(j->max_nbytes ? j->max_nbytes : 1);
	j->dl.dig = fp_callocarray(j->nmats ? j->nmats : 1, sizeof(*j->dl.dig));
	j->odig = fp_callocarray(j->mcfg.nlayers ? j->mcfg.nlayers : 1, sizeof(*j->odig));
	j->oknown = fp_callocarray(j->mcfg.nlayers ? j->mcfg.nlayers : 1, sizeof(*j->oknown));
	if (!j->dl.buf || !j->dl.dig || !j->odig || !j->oknown) {
		r = -ENOMEM;
		goto fail;
	}
	if (j->calib) {
		r = fp_job_count_tokens(j->calib, j->mcfg.vocab, &j->local_tokens);
		if (r < 0)
			goto fail;
	}
	if (j->heldout && access(j->heldout, R_OK) < 0) {
		r = fp_err_detail(-errno, "[job] heldout %s: %s", j->heldout, strerror(errno));
		goto fail;
	}
	r = fp_mkdirs(j->state_dir, 0700);
	if (r < 0)
		goto fail;
	*ret = j;
	return 0;
fail:
	fp_job_free(j);
	return r;
}

const uint8_t *fp_job_model_digest(const struct fp_job *j)
{
	return j->digest;
}

uint64_t fp_job_local_tokens(const struct fp_job *j)
{
	return j->local_tokens;
}

void fp_job_set_link(struct fp_job *j, struct fp_link *l)
{
	j->link = l;
}

int fp_job_stop(struct fp_job *j, void (*done)(struct fp_job *j, void *ud), void *ud)
{
	j->stopping = true;
	j->stop_done = done;
	j->stop_ud = ud;
	__atomic_store_n(&j->cancel, 1, __ATOMIC_RELAXED);
	if (j->busy) {
		fp_log_info("waiting for the current work to stop", "round=%" PRIu64, j->wround);
		return 1;
	}
	return 0;
}

void fp_job_free(struct fp_job *j)
{
	if (!j)
		return;
	fp_mask_writer_abort(j->dl.w);
	upload_free(j->up);
	upload_free(j->up_next);
	free(j->dl.h);
	free(j->dl.buf);
	free(j->dl.dig);
	free(j->dl.dir);
	free(j->odig);
	free(j->oknown);
	free(j->names);
	free(j->name_ptr);
	free(j->shape);
	free(j->decls);
	free(j->dir);
	free(j->model);
	free(j->calib);
	free(j->heldout);
	free(j->state_dir);
	free(j->output);
	free(j);
}

const struct fp_job_stats *fp_job_stats(const struct fp_job *j)
{
	return &j->stats;
}
