/*
 * The server's federated round; see round.h and docs/federation.md.
 *
 * State directory (cfg.state_dir):
 *   journal, lock                       journal.h
 *   round-<id>/spec.pb                  the RoundSpec as sent (protobuf), written before the
 *                                       journal's "round" record
 *   round-<id>/up/<identity>/<i>.part   tensor i of the spec being received
 *   round-<id>/up/<identity>/<i>.done   tensor i received whole, digest verified
 *   round-<id>/sub/<identity>.fpmask    an accepted submission (mask.h file, fsync'd before
 *                                       the journal's "accept" record)
 * Published results: <output>/round-<id>/ (aggregate.h: HF model, mask.fpmask, report.json).
 *
 * Journal records (one line each, journal.h):
 *   round <id> <start_unix_ms> <deadline_unix_ms>
 *   accept <id> <identity> <submission digest hex> <tokens> <seconds>
 *   aggregate <id> <n>                  collection closed with n accepted submissions
 *   published <id> <result digest hex>
 *   failed <id> <reason...>
 *   eval <id> <identity> <perplexity> <tokens> <dense perplexity>
 *   done <id>
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <sodium.h>

#include "aggregate.h"
#include "alloc.h"
#include "envelope.h"
#include "err.h"
#include "fileio.h"
#include "hfout.h"
#include "journal.h"
#include "ldp.h"
#include "log.h"
#include "mask.h"
#include "maskcheck.h"
#include "model.h"
#include "parse.h"
#include "prune.h"
#include "round.h"
#include "safetensors.h"
#include "select.h"
#include "upload.h"

#define C(x) FEDPRUNE__ERROR_CODE__ERROR_##x

enum phase {
	PH_WAIT,	/* waiting for min_clients */
	PH_COLLECT,	/* spec sent, collecting submissions */
	PH_AGGREGATING, /* collection closed, aggregation running */
	PH_PUBLISHED,	/* result published, collecting evaluation reports */
	PH_DONE,	/* round complete */
	PH_FAILED,	/* round failed (quorum not reached, aggregation error) */
};

static const char *const phase_names[] = { "waiting",	"collecting", "aggregating",
					   "published", "done",	      "failed" };

/* A published global mask, open for serving. */
struct result {
	uint64_t id; /* its round; 0 = none */
	struct fp_mask_reader *mr;
	int fd;
	uint8_t digest[FP_DIGEST_BYTES]; /* fp_submission_digest over its tensors */
};

/* One client identity over the whole round (outlives its sessions). */
struct rclient {
	char id[FP_ID_MAX + 1];
	struct fp_session *s; /* NULL while it has no session */
	bool got_spec;	      /* a participant: the spec was sent to it */
	bool declined;	      /* it said it cannot take part (model mismatch) */
	bool storing;	      /* its commit is being stored */
	bool accepted;
	uint8_t sub[FP_DIGEST_BYTES];
	uint64_t tokens;
	double seconds;
	/* the tensor being received */
	long cur; /* spec index, -1 none */
	int fd;	  /* its .part file, -1 none */
	bool mc_on;
	struct fp_maskcheck mc;
	/* a refused submission: first reason, reported at commit */
	int reject_code;
	char reject[FP_TEXT_MAX + 1];
	/* the first tensor breaking the density rule: refuses the submission at commit unless it
	 * is privatized (randomized response changes the density on purpose) */
	bool density_bad;
	char density[FP_TEXT_MAX + 1];
	/* local DP of the accepted submission (Commit.privacy) */
	int ldp_mech; /* enum fp_ldp_mech, 0 = none */
	double ldp_eps;
	uint32_t ldp_rounds;
	double ldp_total_eps;
	/* evaluation */
	bool evaluated;
	double ppl, dense_ppl;
	uint64_t eval_tokens;
};

struct fp_round {
	struct fp_daemon *d;
	struct fp_srv *srv;
	struct fp_round_cfg cfg;
	struct fp_journal *j;
	uv_mutex_t jlock; /* the journal is appended from workers too */
	uv_timer_t timer; /* wait / deadline / grace / eval, one at a time */
	bool timer_init;
	enum phase phase;
	uint64_t id; /* current round (0 before the first) */
	/* the specification */
	Fedprune__RoundSpec *spec; /* unpacked; owned */
	size_t ntensors;
	char **names;	/* (ntensors) borrowed from spec */
	uint64_t *rows; /* (ntensors) */
	uint64_t *cols; /* (ntensors) */
	uint8_t model_digest[FP_DIGEST_BYTES];
	uint64_t start_ms, deadline_ms; /* unix ms */
	bool grace_on;
	bool want_aggregate; /* decided, waiting for stores in flight */
	unsigned storing;    /* stores in flight */
	unsigned inflight;   /* work items in flight (stores, aggregation) */
	bool stopping;
	/* clients */
	struct rclient **cl;
	size_t ncl, capcl;
	size_t naccepted;
	/* restored from the journal */
	bool restored_aggregate; /* an "aggregate" record: rerun it */
	/* the published result */
	char *out_dir; /* <output>/round-<id> (iterative, after the last round: <output>/final) */
	struct result cur; /* the current round's result once published */
	struct result old; /* another round's, for late downloads (iterative) */
	/* iterative FedPrLLM: one round per decoder block */
	bool iterative;
	uint32_t nblocks;
	bool final_done; /* the final model (every block's mask) is built */
	uint64_t publish_ms;
	double agg_seconds;
	/* crash test hook (docs/development.md): SIGKILL itself after this many chunks */
	uint64_t kill_after, chunks_seen;
};

static struct result *result_get(struct fp_round *r, uint64_t id);

static uint64_t unix_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void hex32(char out[2 * FP_DIGEST_BYTES + 1], const uint8_t d[FP_DIGEST_BYTES])
{
	sodium_bin2hex(out, 2 * FP_DIGEST_BYTES + 1, d, FP_DIGEST_BYTES);
}

static int unhex32(uint8_t out[FP_DIGEST_BYTES], const char *s)
{
	size_t n = 0;

	if (strlen(s) != 2 * FP_DIGEST_BYTES ||
	    sodium_hex2bin(out, FP_DIGEST_BYTES, s, strlen(s), NULL, &n, NULL) != 0 ||
	    n != FP_DIGEST_BYTES)
		return -EINVAL;
	return 0;
}

static int journal(struct fp_round *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int journal(struct fp_round *r, const char *fmt, ...)
{
	char text[FP_JOURNAL_LINE_MAX + 1];
	va_list ap;
	int n, e;

	va_start(ap, fmt);
	n = vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(text))
		return fp_err_detail(-EINVAL, "journal record too long");
	uv_mutex_lock(&r->jlock);
	e = fp_journal_append(r->j, "%s", text);
	uv_mutex_unlock(&r->jlock);
	return e;
}

/* ---- paths ---- */

static char *path_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *path_of(const char *fmt, ...)
{
	va_list ap;
	char *p = NULL;

	va_start(ap, fmt);
	if (vasprintf(&p, fmt, ap) < 0)
		p = NULL;
	va_end(ap);
	return p;
}

static char *round_dir(const struct fp_round *r, uint64_t id)
{
	return path_of("%s/round-%" PRIu64, r->cfg.state_dir, id);
}

static char *up_dir(const struct fp_round *r, const char *ident)
{
	return path_of("%s/round-%" PRIu64 "/up/%s", r->cfg.state_dir, r->id, ident);
}

static char *part_path(const struct fp_round *r, const char *ident, long i, const char *ext)
{
	return path_of("%s/round-%" PRIu64 "/up/%s/%ld.%s", r->cfg.state_dir, r->id, ident, i, ext);
}

static char *sub_path(const struct fp_round *r, const char *ident)
{
	return path_of("%s/round-%" PRIu64 "/sub/%s.fpmask", r->cfg.state_dir, r->id, ident);
}

/* ---- clients ---- */

static struct rclient *client_get(struct fp_round *r, const char *id, bool create)
{
	struct rclient *c;

	for (size_t i = 0; i < r->ncl; i++)
		if (strcmp(r->cl[i]->id, id) == 0)
			return r->cl[i];
	if (!create)
		return NULL;
	if (r->ncl == r->capcl) {
		size_t cap = r->capcl ? 2 * r->capcl : 16;
		struct rclient **n = fp_reallocarray(r->cl, cap, sizeof(*n));

		if (!n)
			return NULL;
		r->cl = n;
		r->capcl = cap;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	snprintf(c->id, sizeof(c->id), "%s", id);
	c->cur = -1;
	c->fd = -1;
	r->cl[r->ncl++] = c;
	return c;
}

static void client_close_part(struct rclient *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->cur = -1;
	if (c->mc_on)
		fp_maskcheck_destroy(&c->mc);
	c->mc_on = false;
}

/* Forget everything received from c this round (files and transport state). */
static void client_drop_upload(struct fp_round *r, struct rclient *c)
{
	char *dir = up_dir(r, c->id);

	client_close_part(c);
	c->density_bad = false;
	c->density[0] = '\0';
	if (dir)
		fp_dir_remove_flat(dir);
	free(dir);
	if (c->s && !c->s->rx.committed && !c->s->commit_pending)
		fp_upload_rx_reset(&c->s->rx, r->id);
}

/* Refuse c's submission: remember the first reason (answered at commit) and tell it now. */
static void client_reject(struct fp_round *r, struct rclient *c, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void client_reject(struct fp_round *r, struct rclient *c, int code, const char *fmt, ...)
{
	va_list ap;

	if (c->reject_code)
		return;
	va_start(ap, fmt);
	vsnprintf(c->reject, sizeof(c->reject), fmt, ap);
	va_end(ap);
	c->reject_code = code;
	client_close_part(c);
	fp_log_warn("submission refused", "identity=%s round=%" PRIu64 " code=%s reason=%s",
		    fp_q(c->id), r->id, fp_error_code_name(code), fp_q(c->reject));
	if (c->s)
		fp_session_error(c->s, (Fedprune__ErrorCode)code, false, "%s", c->reject);
}

static size_t participants(const struct fp_round *r)
{
	size_t n = 0;

	for (size_t i = 0; i < r->ncl; i++)
		n += r->cl[i]->got_spec && !r->cl[i]->declined;
	return n;
}

static size_t connected(const struct fp_round *r)
{
	size_t n = 0;

	for (size_t i = 0; i < r->ncl; i++)
		n += r->cl[i]->s && r->cl[i]->s->conn;
	return n;
}

static uint32_t quorum(const struct fp_round *r)
{
	return r->cfg.quorum ? r->cfg.quorum : r->cfg.min_clients;
}

/* ---- the specification ---- */

static Fedprune__Method method_proto(int m)
{
	switch (m) {
	case FP_PRUNE_MAGNITUDE:
		return FEDPRUNE__METHOD__METHOD_MAGNITUDE;
	case FP_PRUNE_WANDA:
		return FEDPRUNE__METHOD__METHOD_WANDA;
	default:
		return FEDPRUNE__METHOD__METHOD_SPARSEGPT;
	}
}

static Fedprune__Group group_proto(int g)
{
	switch (g) {
	case FP_GROUP_ROW:
		return FEDPRUNE__GROUP__GROUP_ROW;
	case FP_GROUP_COLUMN:
		return FEDPRUNE__GROUP__GROUP_COLUMN;
	default:
		return FEDPRUNE__GROUP__GROUP_LAYER;
	}
}

static Fedprune__TieBreak tie_proto(int t)
{
	switch (t) {
	case FP_AGG_TIE_INDEX:
		return FEDPRUNE__TIE_BREAK__TIE_BREAK_INDEX;
	case FP_AGG_TIE_RANDOM:
		return FEDPRUNE__TIE_BREAK__TIE_BREAK_RANDOM;
	default:
		return FEDPRUNE__TIE_BREAK__TIE_BREAK_MAGNITUDE;
	}
}

static enum fp_group group_from_proto(Fedprune__Group g)
{
	return g == FEDPRUNE__GROUP__GROUP_ROW	    ? FP_GROUP_ROW
	       : g == FEDPRUNE__GROUP__GROUP_COLUMN ? FP_GROUP_COLUMN
						    : FP_GROUP_LAYER;
}

static enum fp_agg_tie tie_from_proto(Fedprune__TieBreak t)
{
	return t == FEDPRUNE__TIE_BREAK__TIE_BREAK_INDEX    ? FP_AGG_TIE_INDEX
	       : t == FEDPRUNE__TIE_BREAK__TIE_BREAK_RANDOM ? FP_AGG_TIE_RANDOM
							    : FP_AGG_TIE_MAGNITUDE;
}

/* Index the spec's tensors (names, shapes from the model config). */
static int spec_index(struct fp_round *r, const struct fp_model_cfg *mc)
{
	Fedprune__RoundSpec *sp = r->spec;
	size_t want = sp->iterative ? FP_LIN_COUNT : (size_t)mc->nlayers * FP_LIN_COUNT;
	size_t base = sp->iterative ? (size_t)sp->block * FP_LIN_COUNT : 0;

	if (sp->iterative && sp->block >= mc->nlayers)
		return fp_err_detail(-EINVAL, "round spec: block %u, the model has %u", sp->block,
				     mc->nlayers);
	if (sp->n_tensors != want)
		return fp_err_detail(-EINVAL, "round spec lists %zu tensors, the model has %zu",
				     sp->n_tensors, want);
	r->ntensors = sp->n_tensors;
	r->names = sp->tensors;
	r->rows = fp_callocarray(r->ntensors, sizeof(*r->rows));
	r->cols = fp_callocarray(r->ntensors, sizeof(*r->cols));
	if (!r->rows || !r->cols)
		return -ENOMEM;
	for (size_t i = 0; i < r->ntensors; i++) {
		size_t rows, cols;
		char want_name[128];

		fp_linear_shape(mc, (enum fp_linear)(i % FP_LIN_COUNT), &rows, &cols);
		snprintf(want_name, sizeof(want_name), "model.layers.%zu.%s.weight",
			 (base + i) / FP_LIN_COUNT,
			 fp_linear_name((enum fp_linear)(i % FP_LIN_COUNT)));
		if (strcmp(want_name, r->names[i]) != 0)
			return fp_err_detail(-EINVAL,
					     "round spec tensor %zu is '%s', expected '%s'", i,
					     r->names[i], want_name);
		r->rows[i] = rows;
		r->cols[i] = cols;
	}
	return 0;
}

/* Build the specification of round id from the configuration. */
static int spec_build(struct fp_round *r, const struct fp_model_cfg *mc, uint64_t id,
		      Fedprune__RoundSpec **ret)
{
	Fedprune__RoundSpec *sp = calloc(1, sizeof(*sp));
	size_t n = r->iterative ? FP_LIN_COUNT : (size_t)mc->nlayers * FP_LIN_COUNT;
	size_t base = r->iterative ? (size_t)(id - 1) * FP_LIN_COUNT : 0;
	unsigned nm_n = 0, nm_m = 0;

	if (!sp)
		return -ENOMEM;
	fedprune__round_spec__init(sp);
	if (strcmp(r->cfg.pattern, "unstructured") != 0)
		fp_parse_nm(r->cfg.pattern, &nm_n, &nm_m); /* checked in fp_round_new */
	sp->round_id = id;
	sp->method = method_proto(r->cfg.method);
	sp->sparsity = nm_m ? (double)nm_n / nm_m : r->cfg.sparsity;
	sp->nm_n = nm_n;
	sp->nm_m = nm_m;
	sp->group = group_proto(r->cfg.local_group);
	sp->agg_group = group_proto(r->cfg.group);
	sp->tie_break = tie_proto(r->cfg.tie_break);
	sp->model_digest.data = malloc(FP_DIGEST_BYTES);
	sp->tensors = fp_callocarray(n, sizeof(char *));
	if (!sp->model_digest.data || !sp->tensors)
		goto nomem;
	memcpy(sp->model_digest.data, r->model_digest, FP_DIGEST_BYTES);
	sp->model_digest.len = FP_DIGEST_BYTES;
	sp->seed = r->cfg.seed;
	sp->nsamples = r->cfg.nsamples;
	sp->seqlen = r->cfg.seqlen;
	sp->sequential = r->cfg.sequential;
	sp->payload = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS;
	sp->upload_deadline_ms = r->cfg.deadline_ms;
	sp->chunk_bytes = r->cfg.chunk_bytes;
	sp->weight_by_tokens = r->cfg.weight_by_tokens;
	sp->weight_scaling = r->cfg.weight_scaling;
	sp->capacity = 1.0;
	sp->iterative = r->iterative;
	if (r->cfg.ldp != FP_ROUND_LDP_OFF) {
		sp->privacy = calloc(1, sizeof(*sp->privacy));
		if (!sp->privacy)
			goto nomem;
		fedprune__privacy_spec__init(sp->privacy);
		sp->privacy->mechanism = (Fedprune__LdpMechanism)r->cfg.ldp_mechanism;
		sp->privacy->max_epsilon = r->cfg.ldp_max_epsilon;
		sp->privacy->required = r->cfg.ldp == FP_ROUND_LDP_REQUIRED;
	}
	sp->block = r->iterative ? (uint32_t)(id - 1) : 0;
	for (size_t i = 0; i < n; i++) {
		sp->tensors[i] = path_of("model.layers.%zu.%s.weight", (base + i) / FP_LIN_COUNT,
					 fp_linear_name((enum fp_linear)(i % FP_LIN_COUNT)));
		if (!sp->tensors[i])
			goto nomem;
		sp->n_tensors = i + 1;
	}
	*ret = sp;
	return 0;
nomem:
	fedprune__round_spec__free_unpacked(sp, NULL); /* frees with the default allocator */
	return -ENOMEM;
}

/* Write the spec of round r->id to its directory (atomic). */
static int spec_save(struct fp_round *r)
{
	size_t len = fedprune__round_spec__get_packed_size(r->spec);
	uint8_t *buf = malloc(len ? len : 1);
	char *dir = round_dir(r, r->id), *path = NULL;
	int e = -ENOMEM;

	if (!buf || !dir)
		goto out;
	fedprune__round_spec__pack(r->spec, buf);
	e = fp_mkdirs(dir, 0700);
	if (e < 0)
		goto out;
	path = path_of("%s/spec.pb", dir);
	if (!path) {
		e = -ENOMEM;
		goto out;
	}
	e = fp_write_file_atomic(path, buf, len, 0600);
out:
	free(buf);
	free(dir);
	free(path);
	return e;
}

static int spec_load(struct fp_round *r, uint64_t id, Fedprune__RoundSpec **ret)
{
	char *path = path_of("%s/round-%" PRIu64 "/spec.pb", r->cfg.state_dir, id);
	char *buf = NULL;
	size_t len = 0;
	int e;

	if (!path)
		return -ENOMEM;
	e = fp_read_file(path, 64u << 20, &buf, &len);
	if (e == 0) {
		*ret = fedprune__round_spec__unpack(NULL, len, (const uint8_t *)buf);
		if (!*ret || (*ret)->round_id != id)
			e = fp_err_detail(-EINVAL,
					  "%s: not a round specification of round %" PRIu64, path,
					  id);
	}
	free(buf);
	free(path);
	return e;
}

static int send_spec(struct fp_round *r, struct rclient *c)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	uint64_t now = unix_ms();
	int err;

	if (!c->s || !c->s->conn)
		return 0;
	r->spec->upload_deadline_ms = r->deadline_ms > now ? r->deadline_ms - now : 0;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_ROUND_SPEC;
	e.round_spec = r->spec;
	err = fp_session_send(c->s, &e);
	if (err == 0 && !c->got_spec) {
		c->got_spec = true;
		fp_log_info("round spec sent", "identity=%s round=%" PRIu64, fp_q(c->id), r->id);
	}
	return err;
}

static int send_offer(struct fp_round *r, struct rclient *c, const struct result *res)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__ResultOffer o = FEDPRUNE__RESULT_OFFER__INIT;
	size_t n;
	char **names;
	int err;

	if (!c->s || !c->s->conn || !res || !res->mr)
		return 0;
	n = fp_mask_reader_count(res->mr);
	names = fp_callocarray(n, sizeof(*names));
	if (!names)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		names[i] = (char *)fp_mask_reader_info(res->mr, i)->name;
	o.round_id = res->id;
	o.tensors = names;
	o.n_tensors = n;
	o.result_digest.data = (uint8_t *)res->digest;
	o.result_digest.len = FP_DIGEST_BYTES;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_RESULT_OFFER;
	e.result_offer = &o;
	err = fp_session_send(c->s, &e);
	free(names);
	return err;
}

/* ---- timers and phase changes ---- */

static void aggregate_start(struct fp_round *r);
static void round_fail(struct fp_round *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void eval_finish(struct fp_round *r, const char *why);

static void on_timer(uv_timer_t *t);

static void timer_at(struct fp_round *r, uint64_t delay_ms)
{
	uv_timer_stop(&r->timer);
	uv_timer_start(&r->timer, on_timer, delay_ms, 0);
}

static void round_begin(struct fp_round *r, const struct fp_model_cfg *mc)
{
	Fedprune__RoundSpec *sp = NULL;
	char blk[24] = "all";
	int e;

	r->id++;
	e = spec_build(r, mc, r->id, &sp);
	if (e < 0) {
		round_fail(r, "cannot build the round spec: %s", fp_strerror(e));
		return;
	}
	if (r->spec)
		fedprune__round_spec__free_unpacked(r->spec, NULL);
	free(r->rows);
	free(r->cols);
	r->rows = r->cols = NULL;
	r->spec = sp;
	free(r->out_dir);
	r->out_dir = path_of("%s/round-%" PRIu64, r->cfg.output, r->id);
	e = spec_index(r, mc);
	r->start_ms = unix_ms();
	r->deadline_ms = r->start_ms + r->cfg.deadline_ms;
	if (e == 0)
		e = spec_save(r);
	if (e == 0)
		e = journal(r, "round %" PRIu64 " %" PRIu64 " %" PRIu64, r->id, r->start_ms,
			    r->deadline_ms);
	if (e < 0) {
		round_fail(r, "cannot start round %" PRIu64 ": %s", r->id, fp_err_last());
		return;
	}
	r->phase = PH_COLLECT;
	if (r->iterative)
		snprintf(blk, sizeof(blk), "%u", r->spec->block);
	fp_log_info("round started",
		    "round=%" PRIu64 " block=%s clients=%zu method=%s sparsity=%g "
		    "local_group=%s group=%s tie_break=%s deadline_s=%.0f",
		    r->id, blk, connected(r),
		    fp_prune_method_name((enum fp_prune_method)r->cfg.method), r->spec->sparsity,
		    fp_group_name((enum fp_group)r->cfg.local_group),
		    fp_group_name((enum fp_group)r->cfg.group),
		    fp_agg_tie_name((enum fp_agg_tie)r->cfg.tie_break), r->cfg.deadline_ms / 1e3);
	timer_at(r, r->cfg.deadline_ms);
	for (size_t i = 0; i < r->ncl; i++)
		send_spec(r, r->cl[i]);
}

/* The model config again (round_begin needs it; cheap). */
static int model_cfg(const struct fp_round *r, struct fp_model_cfg *mc)
{
	char *p = path_of("%s/config.json", r->cfg.model);
	int e;

	if (!p)
		return -ENOMEM;
	e = fp_model_cfg_load(p, mc);
	free(p);
	return e;
}

static void maybe_start(struct fp_round *r)
{
	struct fp_model_cfg mc;

	if (r->phase != PH_WAIT || connected(r) < r->cfg.min_clients)
		return;
	if (model_cfg(r, &mc) < 0) {
		round_fail(r, "%s", fp_err_last());
		return;
	}
	round_begin(r, &mc);
}

/* Close collection if the rules say so. */
static void maybe_close(struct fp_round *r, bool deadline)
{
	size_t np = participants(r);

	if (r->phase != PH_COLLECT)
		return;
	if (r->naccepted >= quorum(r) && (r->naccepted >= np || deadline)) {
		aggregate_start(r);
		return;
	}
	if (deadline) {
		round_fail(r,
			   "round %" PRIu64 " failed: %zu submission(s) accepted by the deadline, "
			   "quorum is %u (%zu participant(s))",
			   r->id, r->naccepted, quorum(r), np);
		return;
	}
	if (r->naccepted >= quorum(r) && !r->grace_on) {
		uint64_t now = unix_ms();
		uint64_t left = r->deadline_ms > now ? r->deadline_ms - now : 0;

		r->grace_on = true;
		fp_log_info("quorum reached",
			    "round=%" PRIu64 " accepted=%zu participants=%zu "
			    "grace_s=%.1f",
			    r->id, r->naccepted, np, r->cfg.grace_ms / 1e3);
		timer_at(r, r->cfg.grace_ms < left ? r->cfg.grace_ms : left);
	}
}

/* Forget the per-round state of every client (a new round of an iterative job). */
static void round_reset(struct fp_round *r)
{
	for (size_t i = 0; i < r->ncl; i++) {
		struct rclient *c = r->cl[i];

		client_close_part(c);
		c->got_spec = c->declined = c->accepted = c->evaluated = false;
		c->reject_code = 0;
		c->reject[0] = '\0';
		c->density_bad = false;
		c->density[0] = '\0';
		c->ldp_mech = 0;
		c->ldp_eps = c->ldp_total_eps = 0;
		c->ldp_rounds = 0;
		c->tokens = 0;
		c->seconds = 0;
	}
	r->naccepted = 0;
	r->grace_on = false;
	r->want_aggregate = false;
	r->restored_aggregate = false;
}

/* Iterative: the next block's round, right after the previous one was published. */
static void next_round(struct fp_round *r)
{
	struct fp_model_cfg mc;

	round_reset(r);
	if (model_cfg(r, &mc) < 0) {
		round_fail(r, "%s", fp_err_last());
		return;
	}
	round_begin(r, &mc);
}

static void on_timer(uv_timer_t *t)
{
	struct fp_round *r = t->data;

	switch (r->phase) {
	case PH_WAIT:
		if (r->cfg.exit_when_done) {
			round_fail(r, "only %zu of min_clients=%u clients connected within %.0f s",
				   connected(r), r->cfg.min_clients, r->cfg.wait_ms / 1e3);
		} else {
			fp_log_warn("still waiting for clients", "connected=%zu min_clients=%u",
				    connected(r), r->cfg.min_clients);
			timer_at(r, r->cfg.wait_ms);
		}
		break;
	case PH_COLLECT:
		if (r->grace_on && unix_ms() < r->deadline_ms) {
			fp_log_info("grace period over", "round=%" PRIu64 " accepted=%zu", r->id,
				    r->naccepted);
			if (r->naccepted >= quorum(r))
				aggregate_start(r);
		} else {
			maybe_close(r, true);
		}
		break;
	case PH_PUBLISHED:
		eval_finish(r, "evaluation timeout");
		break;
	default:
		break;
	}
}

static void round_fail(struct fp_round *r, const char *fmt, ...)
{
	char why[FP_TEXT_MAX + 1];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	fp_log_err("round failed", "round=%" PRIu64 " reason=%s", r->id, fp_q(why));
	if (r->id && r->phase != PH_WAIT)
		journal(r, "failed %" PRIu64 " %s", r->id, why);
	r->phase = PH_FAILED;
	uv_timer_stop(&r->timer);
	for (size_t i = 0; i < r->ncl; i++)
		if (r->cl[i]->s && r->cl[i]->s->conn)
			fp_session_error(r->cl[i]->s, C(TOO_LATE), false, "%s", why);
	if (r->cfg.exit_when_done)
		fp_daemon_fail(r->d);
}

/* ---- receiving submissions ---- */

static long spec_find(const struct fp_round *r, const char *name)
{
	for (size_t i = 0; i < r->ntensors; i++)
		if (strcmp(r->names[i], name) == 0)
			return (long)i;
	return -1;
}

static int start_tensor(struct fp_round *r, struct rclient *c, long i, bool truncate)
{
	char *dir = up_dir(r, c->id), *p = part_path(r, c->id, i, "part");
	int e = 0;

	client_close_part(c);
	if (!dir || !p) {
		e = -ENOMEM;
		goto out;
	}
	e = fp_mkdirs(dir, 0700);
	if (e < 0)
		goto out;
	c->fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : 0), 0600);
	if (c->fd < 0) {
		e = fp_err_detail(-errno, "%s: %s", p, strerror(errno));
		goto out;
	}
	e = fp_maskcheck_init(&c->mc, r->rows[i], r->cols[i],
			      r->spec->nm_m ? FP_GROUP_NM : group_from_proto(r->spec->group),
			      r->spec->sparsity, r->spec->nm_n, r->spec->nm_m, r->names[i]);
	if (e < 0) {
		close(c->fd);
		c->fd = -1;
		goto out;
	}
	c->mc_on = true;
	c->cur = i;
out:
	free(dir);
	free(p);
	return e;
}

static int on_chunk(struct fp_srv *srv, struct fp_session *s, const Fedprune__TensorChunk *ch)
{
	struct fp_round *r = fp_srv_data(srv);
	struct rclient *c = s->data;
	long i;
	int e;

	if (r->kill_after && ++r->chunks_seen == r->kill_after) {
		fp_log_warn("FP_TEST_KILL_AFTER_CHUNKS reached: killing myself", "chunks=%" PRIu64,
			    r->chunks_seen);
		raise(SIGKILL);
	}
	if (!c || c->reject_code)
		return 0;
	if (r->phase != PH_COLLECT || ch->round_id != r->id) {
		client_reject(r, c, C(TOO_LATE), "round %" PRIu64 " is not collecting submissions",
			      ch->round_id);
		return 0;
	}
	if (c->accepted) {
		client_reject(r, c, C(OUT_OF_ORDER), "round %" PRIu64 ": already accepted", r->id);
		return 0;
	}
	if (ch->offset == 0 || c->cur < 0 || strcmp(r->names[c->cur], ch->tensor) != 0) {
		i = spec_find(r, ch->tensor);
		if (i < 0) {
			client_reject(r, c, C(SPEC_MISMATCH),
				      "tensor '%s' is not in the round specification", ch->tensor);
			return 0;
		}
		if (ch->offset != 0) {
			client_reject(r, c, C(OUT_OF_ORDER),
				      "tensor '%s': continues at offset %" PRIu64
				      " but the server holds none of it",
				      ch->tensor, ch->offset);
			return 0;
		}
		if (ch->kind != FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS || ch->n_shape != 2 ||
		    ch->shape[0] != r->rows[i] || ch->shape[1] != r->cols[i]) {
			client_reject(r, c, C(SPEC_MISMATCH),
				      "tensor '%s': expected a bit mask of shape (%" PRIu64
				      ", %" PRIu64 ")",
				      ch->tensor, r->rows[i], r->cols[i]);
			return 0;
		}
		e = start_tensor(r, c, i, true);
		if (e < 0) {
			client_reject(r, c, C(INTERNAL), "server cannot store tensor '%s': %s",
				      ch->tensor, fp_err_last());
			return 0;
		}
	}
	e = fp_write_all(c->fd, ch->data.data, ch->data.len);
	if (e < 0) {
		client_reject(r, c, C(INTERNAL), "server cannot store tensor '%s': %s", ch->tensor,
			      strerror(-e));
		return 0;
	}
	e = fp_maskcheck_feed(&c->mc, ch->data.data, ch->data.len);
	if (e < 0)
		client_reject(r, c, C(SPEC_MISMATCH), "%s", fp_err_last());
	return 0;
}

static void on_tensor(struct fp_srv *srv, struct fp_session *s, const struct fp_rx_tensor *t)
{
	struct fp_round *r = fp_srv_data(srv);
	struct rclient *c = s->data;
	char *from, *to;
	int e;

	if (!c || c->reject_code || c->cur < 0 || strcmp(r->names[c->cur], t->name) != 0)
		return;
	e = fp_maskcheck_finish(&c->mc);
	if (e == -EDOM && !c->density_bad) {
		c->density_bad = true;
		snprintf(c->density, sizeof(c->density), "%s", fp_err_last());
	} else if (e < 0 && e != -EDOM) {
		client_reject(r, c, C(SPEC_MISMATCH), "%s", fp_err_last());
		return;
	}
	from = part_path(r, c->id, c->cur, "part");
	to = part_path(r, c->id, c->cur, "done");
	client_close_part(c);
	if (!from || !to || rename(from, to) < 0)
		client_reject(r, c, C(INTERNAL), "server cannot store tensor '%s'", t->name);
	free(from);
	free(to);
}

/* A commit being stored durably (off the loop). */
struct store_work {
	uv_work_t w;
	struct fp_round *r;
	char id[FP_ID_MAX + 1];
	uint64_t round;
	uint64_t tokens;
	double seconds;
	int ldp_mech;
	double ldp_eps;
	uint32_t ldp_rounds;
	double ldp_total_eps;
	uint8_t sub[FP_DIGEST_BYTES];
	uint8_t (*dig)[FP_DIGEST_BYTES]; /* (ntensors) digests the client declared, spec order */
	long bad;			 /* tensor whose bytes do not match its digest, or -1 */
	int err;
	char why[FP_TEXT_MAX + 1];
};

static void store_run(uv_work_t *w)
{
	struct store_work *sw = w->data;
	struct fp_round *r = sw->r;
	struct fp_mask_info *decl = fp_callocarray(r->ntensors, sizeof(*decl));
	struct fp_mask_writer *mw = NULL;
	char *dir = path_of("%s/round-%" PRIu64 "/sub", r->cfg.state_dir, sw->round);
	char *out = sub_path(r, sw->id), hex[2 * FP_DIGEST_BYTES + 1];
	uint8_t *buf = NULL;
	size_t cap = 0;
	int e = -ENOMEM;

	if (!decl || !dir || !out)
		goto out;
	for (size_t i = 0; i < r->ntensors; i++) {
		decl[i].name = r->names[i];
		decl[i].ndim = 2;
		decl[i].dims[0] = r->rows[i];
		decl[i].dims[1] = r->cols[i];
		if (fp_mask_bytes(r->rows[i] * r->cols[i]) > cap)
			cap = fp_mask_bytes(r->rows[i] * r->cols[i]);
	}
	buf = malloc(cap ? cap : 1);
	if (!buf)
		goto out;
	e = fp_mkdirs(dir, 0700);
	if (e == 0)
		e = fp_mask_writer_open(out, decl, r->ntensors, &mw);
	for (size_t i = 0; e == 0 && i < r->ntensors; i++) {
		char *p = part_path(r, sw->id, (long)i, "done");
		size_t n = fp_mask_bytes(r->rows[i] * r->cols[i]);
		int fd;

		if (!p) {
			e = -ENOMEM;
			break;
		}
		fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			e = fp_err_detail(-errno, "%s: %s", p, strerror(errno));
		} else {
			ssize_t got = pread(fd, buf, n, 0);

			if (got != (ssize_t)n)
				e = fp_err_detail(-EIO, "%s: short read", p);
			close(fd);
		}
		free(p);
		/* The one place the server hashes a submission: the bytes as stored must be the
		 * ones the client hashed (the transport checked order and sizes, not content). */
		if (e == 0)
			e = fp_mask_writer_add_verified(mw, buf, n, sw->dig[i]);
		if (e == -EBADMSG)
			sw->bad = (long)i;
	}
	if (e == 0) {
		e = fp_mask_writer_close(mw); /* fsync, rename, fsync dir */
		mw = NULL;
	}
	if (e == 0) {
		hex32(hex, sw->sub);
		e = journal(r, "accept %" PRIu64 " %s %s %" PRIu64 " %.6f %d %.17g %u %.17g",
			    sw->round, sw->id, hex, sw->tokens, sw->seconds, sw->ldp_mech,
			    sw->ldp_eps, sw->ldp_rounds, sw->ldp_total_eps);
	}
	if (e == 0) {
		char *up = up_dir(r, sw->id);

		if (up)
			fp_dir_remove_flat(up);
		free(up);
	}
out:
	if (mw)
		fp_mask_writer_abort(mw);
	if (e < 0)
		snprintf(sw->why, sizeof(sw->why), "%s", fp_err_last());
	sw->err = e;
	free(decl);
	free(dir);
	free(out);
	free(buf);
}

static void round_release(struct fp_round *r);

static void store_done(uv_work_t *w, int status)
{
	struct store_work *sw = w->data;
	struct fp_round *r = sw->r;
	struct rclient *c = client_get(r, sw->id, false);

	r->inflight--;
	r->storing--;
	if (status < 0 && sw->err == 0) {
		sw->err = status;
		snprintf(sw->why, sizeof(sw->why), "cancelled");
	}
	if (c) {
		c->storing = false;
		if (sw->err == 0) {
			c->accepted = true;
			c->tokens = sw->tokens;
			c->seconds = sw->seconds;
			c->ldp_mech = sw->ldp_mech;
			c->ldp_eps = sw->ldp_eps;
			c->ldp_rounds = sw->ldp_rounds;
			c->ldp_total_eps = sw->ldp_total_eps;
			memcpy(c->sub, sw->sub, FP_DIGEST_BYTES);
			r->naccepted++;
			fp_log_info("submission accepted",
				    "identity=%s round=%" PRIu64 " accepted=%zu participants=%zu "
				    "tokens=%" PRIu64,
				    fp_q(c->id), sw->round, r->naccepted, participants(r),
				    sw->tokens);
		} else if (sw->bad >= 0) {
			fp_log_warn("submission refused",
				    "identity=%s round=%" PRIu64 " code=DIGEST_MISMATCH reason=%s",
				    fp_q(c->id), sw->round, fp_q(sw->why));
		} else {
			fp_log_err("cannot store a submission",
				   "identity=%s round=%" PRIu64 " reason=%s", fp_q(c->id),
				   sw->round, fp_q(sw->why));
		}
		if (sw->bad >= 0) {
			char why[FP_TEXT_MAX + 1];

			/* Not the server's fault: refuse, and drop the upload so that the
			 * client's next attempt sends everything again. */
			snprintf(why, sizeof(why),
				 "tensor '%s': the bytes received do not match the digest the "
				 "client declared; upload again",
				 r->names[sw->bad]);
			if (c->s && c->s->commit_pending)
				fp_session_commit_done(c->s, C(DIGEST_MISMATCH), why);
			client_drop_upload(r, c);
		} else if (c->s && c->s->commit_pending) {
			fp_session_commit_done(c->s, sw->err ? C(INTERNAL) : 0,
					       sw->err ? "the server could not store it" : NULL);
		}
	}
	free(sw->dig);
	free(sw);
	if (r->stopping) {
		round_release(r);
		return;
	}
	if (r->want_aggregate && r->storing == 0) {
		r->want_aggregate = false;
		aggregate_start(r);
		return;
	}
	maybe_close(r, false);
}

/* The randomized response a client used: its (p, q), from the mechanism and ε it committed. */
static int ldp_rr(int mech, double eps, struct fp_ldp_rr *rr)
{
	return mech == FP_LDP_RR_OUE ? fp_ldp_rr_oue(rr, eps) : fp_ldp_rr_sym(rr, eps);
}

/* The submission's local DP against the round's policy: 0, or refuse c (and return -1). */
static int privacy_check(struct fp_round *r, struct rclient *c, const Fedprune__Commit *cm)
{
	const Fedprune__LdpReport *p = cm->privacy;
	int mech = p ? (int)p->mechanism : 0;
	struct fp_ldp_rr rr;

	if (mech == 0) {
		if (r->cfg.ldp == FP_ROUND_LDP_REQUIRED) {
			client_reject(r, c, C(PRIVACY_REQUIRED),
				      "this round requires local DP (%s, epsilon <= %g)",
				      fp_ldp_mech_name((enum fp_ldp_mech)r->cfg.ldp_mechanism),
				      r->cfg.ldp_max_epsilon);
			return -1;
		}
		if (c->density_bad) {
			client_reject(r, c, C(SPEC_MISMATCH), "%s", c->density);
			return -1;
		}
		return 0;
	}
	if (r->cfg.ldp == FP_ROUND_LDP_OFF) {
		client_reject(r, c, C(SPEC_MISMATCH),
			      "this round takes no privatized masks (server [round] ldp = off)");
		return -1;
	}
	if (mech != r->cfg.ldp_mechanism) {
		client_reject(r, c, C(SPEC_MISMATCH), "local DP mechanism %d, the round uses %s",
			      mech, fp_ldp_mech_name((enum fp_ldp_mech)r->cfg.ldp_mechanism));
		return -1;
	}
	if (!(p->epsilon > 0) || p->epsilon > r->cfg.ldp_max_epsilon ||
	    ldp_rr(mech, p->epsilon, &rr) < 0) {
		client_reject(r, c, C(PRIVACY_REQUIRED),
			      "local DP epsilon %g: the round accepts (0, %g]", p->epsilon,
			      r->cfg.ldp_max_epsilon);
		return -1;
	}
	if (!(p->total_epsilon >= 0) || !isfinite(p->total_epsilon) || p->rounds > 1000000) {
		client_reject(r, c, C(BAD_MESSAGE), "local DP report: bad accounting fields");
		return -1;
	}
	return 0;
}

static int on_commit(struct fp_srv *srv, struct fp_session *s, const Fedprune__Commit *cm)
{
	struct fp_round *r = fp_srv_data(srv);
	struct rclient *c = s->data;
	struct store_work *sw;
	int e;

	if (!c)
		return C(INTERNAL);
	if (!c->reject_code && (r->phase != PH_COLLECT || cm->round_id != r->id))
		client_reject(r, c, C(TOO_LATE), "round %" PRIu64 " is not collecting submissions",
			      cm->round_id);
	if (!c->reject_code && s->rx.n != r->ntensors)
		client_reject(r, c, C(SPEC_MISMATCH),
			      "submission has %zu tensors, the specification %zu", s->rx.n,
			      r->ntensors);
	if (!c->reject_code &&
	    ((cm->tokens == 0 && r->spec->method != FEDPRUNE__METHOD__METHOD_MAGNITUDE) ||
	     cm->tokens > (1ull << 53) || !isfinite(cm->seconds) || cm->seconds < 0))
		client_reject(r, c, C(BAD_MESSAGE),
			      "commit: tokens must be 1..2^53 (0 for magnitude) and seconds "
			      "finite");
	if (!c->reject_code)
		privacy_check(r, c, cm);
	if (c->reject_code) {
		int code = c->reject_code;
		char why[FP_TEXT_MAX + 1];

		snprintf(why, sizeof(why), "%s", c->reject);
		c->reject_code = 0;
		c->reject[0] = '\0';
		fp_session_commit_done(s, code, why);
		client_drop_upload(r, c);
		return FP_SRV_COMMIT_LATER;
	}
	sw = calloc(1, sizeof(*sw));
	if (!sw)
		return C(INTERNAL);
	sw->w.data = sw;
	sw->r = r;
	sw->bad = -1;
	snprintf(sw->id, sizeof(sw->id), "%s", c->id);
	sw->round = r->id;
	sw->tokens = cm->tokens;
	sw->seconds = cm->seconds;
	if (cm->privacy && cm->privacy->mechanism) {
		sw->ldp_mech = (int)cm->privacy->mechanism;
		sw->ldp_eps = cm->privacy->epsilon;
		sw->ldp_rounds = cm->privacy->rounds;
		sw->ldp_total_eps = cm->privacy->total_epsilon;
	}
	memcpy(sw->sub, s->rx.submission, FP_DIGEST_BYTES);
	sw->dig = fp_callocarray(r->ntensors, sizeof(*sw->dig));
	if (!sw->dig) {
		free(sw);
		return C(INTERNAL);
	}
	for (size_t i = 0; i < r->ntensors; i++) {
		size_t k = 0;

		while (k < s->rx.n && strcmp(s->rx.t[k].name, r->names[i]) != 0)
			k++;
		if (k == s->rx.n) { /* impossible: every chunk was checked against the spec */
			free(sw->dig);
			free(sw);
			return C(INTERNAL);
		}
		memcpy(sw->dig[i], s->rx.t[k].digest, FP_DIGEST_BYTES);
	}
	e = uv_queue_work(uv_handle_get_loop((uv_handle_t *)&r->timer), &sw->w, store_run,
			  store_done);
	if (e < 0) {
		free(sw->dig);
		free(sw);
		return C(INTERNAL);
	}
	c->storing = true;
	r->storing++;
	r->inflight++;
	return FP_SRV_COMMIT_LATER;
}

/* ---- restoring a client's upload after a restart ---- */

struct restore_src {
	int fd;
	const char *path;	 /* of fd, for messages */
	struct fp_maskcheck *mc; /* fed while reading, or NULL */
};

static int restore_read(void *ud, uint64_t off, uint8_t *buf, size_t len)
{
	struct restore_src *rs = ud;
	ssize_t got = pread(rs->fd, buf, len, (off_t)off);

	if (got != (ssize_t)len)
		return fp_err_detail(-EIO,
				     "%s: cannot read %zu bytes at offset %" PRIu64
				     " while restoring an upload",
				     rs->path, len, off);
	return rs->mc ? fp_maskcheck_feed(rs->mc, buf, len) : 0;
}

/* Put back what c had uploaded of round r->id before the restart. */
static void restore_upload(struct fp_round *r, struct rclient *c, struct fp_session *s)
{
	uint64_t restored = 0;
	size_t tensors = 0;

	if (s->rx.round_id == r->id && (s->rx.n || s->rx.committed))
		return; /* the session already has it */
	fp_upload_rx_reset(&s->rx, r->id);
	for (size_t i = 0; i < r->ntensors; i++) {
		uint64_t shape[2] = { r->rows[i], r->cols[i] };
		uint64_t total = fp_mask_bytes(r->rows[i] * r->cols[i]);
		char *done = part_path(r, c->id, (long)i, "done");
		char *part = part_path(r, c->id, (long)i, "part");
		struct restore_src rs = { -1, NULL, NULL };
		struct fp_maskcheck whole = { 0 }; /* a complete tensor's density, checked again */
		struct stat st;
		bool complete = false;
		int e = -ENOENT;

		if (!done || !part)
			goto next;
		if (stat(done, &st) == 0 && (uint64_t)st.st_size == total) {
			complete = true;
		} else if (stat(part, &st) == 0 && (uint64_t)st.st_size < total) {
			complete = false;
		} else {
			goto next;
		}
		rs.path = complete ? done : part;
		rs.fd = open(rs.path, O_RDONLY | O_CLOEXEC);
		if (rs.fd < 0)
			goto next;
		if (!complete) {
			e = start_tensor(r, c, (long)i, false);
			if (e < 0)
				goto next;
			rs.mc = &c->mc;
		} else {
			e = fp_maskcheck_init(
				&whole, r->rows[i], r->cols[i],
				r->spec->nm_m ? FP_GROUP_NM : group_from_proto(r->spec->group),
				r->spec->sparsity, r->spec->nm_n, r->spec->nm_m, r->names[i]);
			if (e < 0)
				goto next;
			rs.mc = &whole;
		}
		e = fp_upload_rx_restore(&s->rx, r->names[i],
					 FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS, shape, 2, total,
					 (uint64_t)st.st_size, restore_read, &rs);
		if (e == 0 && complete) {
			e = fp_maskcheck_finish(&whole);
			if (e == -EDOM && !c->density_bad) {
				c->density_bad = true;
				snprintf(c->density, sizeof(c->density), "%s", fp_err_last());
			}
			e = e == -EDOM ? 0 : e;
		}
		if (e == 0) {
			restored += (uint64_t)st.st_size;
			tensors++;
			if (!complete && lseek(c->fd, st.st_size, SEEK_SET) < 0)
				e = -errno;
		}
next:
		fp_maskcheck_destroy(&whole);
		if (rs.fd >= 0)
			close(rs.fd);
		free(done);
		free(part);
		if (e < 0 && e != -ENOENT) {
			fp_log_warn("cannot restore an upload; it starts over",
				    "identity=%s round=%" PRIu64 " reason=%s", fp_q(c->id), r->id,
				    fp_q(fp_err_last()));
			client_drop_upload(r, c);
			return;
		}
		if (!complete && e == 0)
			break; /* the tensor in progress is the last one held */
	}
	if (tensors)
		fp_log_info("upload restored from the state directory",
			    "identity=%s round=%" PRIu64 " tensors=%zu bytes=%" PRIu64, fp_q(c->id),
			    r->id, tensors, restored);
}

/* ---- sessions ---- */

static int on_hello(struct fp_srv *srv, struct fp_session *s, const Fedprune__Hello *h)
{
	struct fp_round *r = fp_srv_data(srv);
	struct rclient *c = client_get(r, s->identity, true);

	(void)h;
	if (!c)
		return C(INTERNAL);
	c->s = s;
	s->data = c;
	if (r->id && r->phase >= PH_COLLECT && r->spec) {
		if (c->accepted)
			fp_upload_rx_restore_committed(&s->rx, r->id, c->sub);
		else if (r->phase == PH_COLLECT && !c->storing)
			restore_upload(r, c, s);
	}
	return 0;
}

static void on_welcome(struct fp_srv *srv, struct fp_session *s)
{
	struct fp_round *r = fp_srv_data(srv);
	struct rclient *c = s->data;

	if (!c)
		return;
	switch (r->phase) {
	case PH_WAIT:
		maybe_start(r);
		break;
	case PH_COLLECT:
		if (r->iterative && r->id > 1)
			send_offer(r, c, result_get(r, r->id - 1)); /* the blocks before this one */
		if (!c->declined)
			send_spec(r, c);
		break;
	case PH_PUBLISHED:
	case PH_DONE:
		if (c->accepted) {
			send_spec(r, c);
			send_offer(r, c, &r->cur);
		}
		break;
	default:
		break;
	}
}

static void on_session_free(struct fp_srv *srv, struct fp_session *s)
{
	struct rclient *c = s->data;

	(void)srv;
	if (c && c->s == s)
		c->s = NULL;
}

static int h_error(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	struct fp_round *r = fp_srv_data(srv);
	struct rclient *c = s->data;
	const Fedprune__Error *er = e->error;

	fp_log_warn("client reports an error", "identity=%s code=%s message=%s", fp_q(s->identity),
		    fp_error_code_name(er->code), fp_q(er->message));
	if (c && !c->accepted && r->phase == PH_COLLECT &&
	    (er->code == C(MODEL_MISMATCH) || er->code == C(SPEC_MISMATCH) ||
	     er->code == C(PRIVACY_REQUIRED) || er->code == C(INTERNAL) ||
	     er->code == C(UNSUPPORTED) || er->code == C(BAD_MESSAGE))) {
		c->declined = true;
		fp_log_warn("client will not take part in this round",
			    "identity=%s round=%" PRIu64 " participants=%zu", fp_q(c->id), r->id,
			    participants(r));
		maybe_close(r, false);
	}
	return 0;
}

/* ---- aggregation ---- */

struct agg_work {
	uv_work_t w;
	struct fp_round *r;
	struct fp_agg_job job;
	char **paths;
	char **ids;
	double *weights;
	size_t n;
	cJSON *report;
	int err;
	char why[FP_TEXT_MAX + 1];
	double seconds;
};

static int cmp_client(const void *a, const void *b)
{
	return strcmp((*(struct rclient *const *)a)->id, (*(struct rclient *const *)b)->id);
}

static void agg_run(uv_work_t *w)
{
	struct agg_work *aw = w->data;
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	aw->err = fp_agg_run(&aw->job, &aw->report);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	aw->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	if (aw->err < 0)
		snprintf(aw->why, sizeof(aw->why), "%s", fp_err_last());
}

static void agg_free(struct agg_work *aw)
{
	for (size_t i = 0; i < aw->n; i++) {
		free(aw->paths ? aw->paths[i] : NULL);
	}
	free(aw->paths);
	free(aw->ids);
	free(aw->weights);
	cJSON_Delete(aw->report);
	free(aw);
}

static int publish_open(struct fp_round *r);
static struct result *result_get(struct fp_round *r, uint64_t id);
static void publish_report(struct fp_round *r, struct agg_work *aw);
static void after_publish(struct fp_round *r);

static void agg_done(uv_work_t *w, int status)
{
	struct agg_work *aw = w->data;
	struct fp_round *r = aw->r;
	char hex[2 * FP_DIGEST_BYTES + 1];
	int e;

	r->inflight--;
	if (r->stopping) {
		agg_free(aw);
		round_release(r);
		return;
	}
	if (status < 0 || aw->err < 0) {
		round_fail(r, "aggregation failed: %s", status < 0 ? "cancelled" : aw->why);
		agg_free(aw);
		return;
	}
	r->agg_seconds = aw->seconds;
	e = publish_open(r);
	if (e == 0) {
		publish_report(r, aw);
		hex32(hex, r->cur.digest);
		e = journal(r, "published %" PRIu64 " %s", r->id, hex);
	}
	agg_free(aw);
	if (e < 0) {
		round_fail(r, "cannot publish: %s", fp_err_last());
		return;
	}
	r->phase = PH_PUBLISHED;
	r->publish_ms = unix_ms();
	fp_log_info("global model published",
		    "round=%" PRIu64 " dir=%s clients=%zu "
		    "aggregation_s=%.3f",
		    r->id, fp_q(r->out_dir), r->naccepted, r->agg_seconds);
	after_publish(r);
}

/* ---- iterative: the final model once every block has its global mask ---- */

struct final_work {
	uv_work_t w;
	struct fp_round *r;
	char *dir; /* <output>/final */
	int err;
	char why[FP_TEXT_MAX + 1];
};

/* Merge the per-block masks of rounds 1..n into one set (the blocks in order). */
static int final_masks(const struct fp_round *r, uint64_t n, struct fp_mask_set **ret)
{
	struct fp_mask_set *all = calloc(1, sizeof(*all));
	int e = 0;

	if (!all)
		return -ENOMEM;
	all->info = fp_callocarray(n * FP_LIN_COUNT, sizeof(*all->info));
	all->bits = fp_callocarray(n * FP_LIN_COUNT, sizeof(*all->bits));
	if (!all->info || !all->bits) {
		fp_mask_set_free(all);
		return -ENOMEM;
	}
	for (uint64_t id = 1; e == 0 && id <= n; id++) {
		char *p = path_of("%s/round-%" PRIu64 "/%s", r->cfg.output, id, FP_PRUNE_MASK_FILE);
		struct fp_mask_set *one = NULL;

		e = p ? fp_mask_set_load(p, &one) : -ENOMEM;
		for (size_t i = 0; e == 0 && i < one->count; i++) {
			if (all->count == n * FP_LIN_COUNT) {
				e = fp_err_detail(-EINVAL, "%s: more tensors than one block", p);
				break;
			}
			/* move tensor i of round id into the merged set (names copied) */
			all->info[all->count] = one->info[i];
			all->info[all->count].name = strdup(one->info[i].name);
			all->bits[all->count] = one->bits[i];
			one->bits[i] = NULL;
			if (!all->info[all->count].name)
				e = -ENOMEM;
			all->count++;
		}
		fp_mask_set_free(one);
		free(p);
	}
	if (e < 0) {
		fp_mask_set_free(all);
		return e;
	}
	*ret = all;
	return 0;
}

static void final_run(uv_work_t *w)
{
	struct final_work *fw = w->data;
	struct fp_round *r = fw->r;
	struct fp_mask_set *ms = NULL;
	struct fp_mask_writer *mw = NULL;
	struct fp_hfout_apply_stats st = { 0 };
	cJSON *rep = cJSON_CreateObject(), *rounds = cJSON_AddArrayToObject(rep, "rounds");
	char *mpath = path_of("%s/%s", fw->dir, FP_PRUNE_MASK_FILE);
	int e;

	fp_dir_remove_flat(fw->dir); /* a build a crash interrupted (this directory is ours) */
	e = mpath && rep ? final_masks(r, r->id, &ms) : -ENOMEM;
	if (e == 0)
		e = fp_hfout_apply_mask(r->cfg.model, ms, "global mask", fw->dir, &st);
	if (e == 0)
		e = fp_mask_writer_open(mpath, ms->info, ms->count, &mw);
	for (size_t i = 0; e == 0 && i < ms->count; i++)
		e = fp_mask_writer_add(mw, ms->bits[i], ms->info[i].nbytes);
	if (e == 0) {
		e = fp_mask_writer_close(mw);
		mw = NULL;
	}
	for (uint64_t id = 1; e == 0 && id <= r->id; id++) {
		char *p =
			path_of("%s/round-%" PRIu64 "/%s", r->cfg.output, id, FP_PRUNE_REPORT_FILE);
		char *buf = NULL;
		size_t len = 0;
		cJSON *one = NULL;

		if (p && fp_read_file(p, 256u << 20, &buf, &len) == 0)
			one = cJSON_ParseWithLength(buf, len);
		cJSON_AddItemToArray(rounds, one ? one : cJSON_CreateNull());
		free(buf);
		free(p);
	}
	if (e == 0) {
		cJSON *ov = cJSON_AddObjectToObject(rep, "overall");

		cJSON_AddNumberToObject(rep, "fedprune_iterative_report", 1);
		cJSON_AddNumberToObject(ov, "blocks", (double)r->id);
		cJSON_AddNumberToObject(ov, "tensors", (double)st.masked);
		cJSON_AddNumberToObject(ov, "weights", (double)st.numel);
		cJSON_AddNumberToObject(ov, "pruned", (double)st.pruned);
		cJSON_AddNumberToObject(ov, "sparsity",
					st.numel ? (double)st.pruned / (double)st.numel : 0.0);
		e = fp_agg_report_write(fw->dir, rep);
	}
	if (mw)
		fp_mask_writer_abort(mw);
	if (e < 0)
		snprintf(fw->why, sizeof(fw->why), "%s", fp_err_last());
	fw->err = e;
	fp_mask_set_free(ms);
	cJSON_Delete(rep);
	free(mpath);
}

static void offer_all(struct fp_round *r)
{
	for (size_t i = 0; i < r->ncl; i++)
		if (r->cl[i]->accepted)
			send_offer(r, r->cl[i], &r->cur);
}

static void final_done(uv_work_t *w, int status)
{
	struct final_work *fw = w->data;
	struct fp_round *r = fw->r;

	r->inflight--;
	if (r->stopping) {
		free(fw->dir);
		free(fw);
		round_release(r);
		return;
	}
	if (status < 0 || fw->err < 0) {
		round_fail(r, "cannot build the final model: %s",
			   status < 0 ? "cancelled" : fw->why);
	} else if (journal(r, "final %" PRIu64, r->id) < 0) {
		round_fail(r, "cannot journal the final model: %s", fp_err_last());
	} else {
		r->final_done = true;
		free(r->out_dir);
		r->out_dir = fw->dir;
		fw->dir = NULL;
		fp_log_info("final model published", "rounds=%" PRIu64 " dir=%s", r->id,
			    fp_q(r->out_dir));
		offer_all(r);
		timer_at(r, r->cfg.eval_ms);
	}
	free(fw->dir);
	free(fw);
}

static void final_start(struct fp_round *r)
{
	struct final_work *fw = calloc(1, sizeof(*fw));

	if (!fw || !(fw->dir = path_of("%s/final", r->cfg.output))) {
		free(fw);
		round_fail(r, "out of memory");
		return;
	}
	fw->w.data = fw;
	fw->r = r;
	fp_log_info("building the final model", "rounds=%" PRIu64 " dir=%s", r->id, fp_q(fw->dir));
	if (uv_queue_work(&r->d->loop, &fw->w, final_run, final_done) < 0) {
		free(fw->dir);
		free(fw);
		round_fail(r, "cannot queue the final model");
		return;
	}
	r->inflight++;
}

/* A round's result is published: offer it, then go on (next block, final model, evaluation). */
static void after_publish(struct fp_round *r)
{
	if (r->iterative && r->spec->block + 1 < r->nblocks) {
		offer_all(r);
		next_round(r);
	} else if (r->iterative && !r->final_done) {
		final_start(r); /* offers once the final model is there */
	} else {
		offer_all(r);
		timer_at(r, r->cfg.eval_ms);
	}
}

static void aggregate_start(struct fp_round *r)
{
	struct agg_work *aw = NULL;
	struct rclient **acc = NULL;
	bool weighted = false;
	size_t n = 0;
	int e = -ENOMEM;

	if (r->phase != PH_COLLECT && !(r->phase == PH_AGGREGATING && r->restored_aggregate))
		return;
	uv_timer_stop(&r->timer);
	if (r->storing) {
		r->want_aggregate = true;
		return;
	}
	if (!r->restored_aggregate) {
		e = journal(r, "aggregate %" PRIu64 " %zu", r->id, r->naccepted);
		if (e < 0) {
			round_fail(r, "cannot close collection: %s", fp_err_last());
			return;
		}
	}
	r->restored_aggregate = false;
	r->phase = PH_AGGREGATING;
	acc = fp_callocarray(r->naccepted ? r->naccepted : 1, sizeof(*acc));
	aw = calloc(1, sizeof(*aw));
	if (!acc || !aw)
		goto fail;
	for (size_t i = 0; i < r->ncl; i++)
		if (r->cl[i]->accepted)
			acc[n++] = r->cl[i];
	qsort(acc, n, sizeof(*acc), cmp_client);
	aw->w.data = aw;
	aw->r = r;
	aw->n = n;
	aw->paths = fp_callocarray(n, sizeof(char *));
	aw->ids = fp_callocarray(n, sizeof(char *));
	aw->weights = fp_callocarray(n, sizeof(double));
	if (!aw->paths || !aw->ids || !aw->weights)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		aw->paths[i] = sub_path(r, acc[i]->id);
		if (!aw->paths[i])
			goto fail;
		aw->ids[i] = acc[i]->id;
		aw->weights[i] = r->spec->weight_by_tokens ? (double)acc[i]->tokens : 1.0;
		if (acc[i]->ldp_mech) {
			/* debiased votes: a privatized client's vote y counts (y - q) / (p - q);
			 * the -q / (p - q) part is the same for every weight of a tensor, so the
			 * selection only needs the weight 1 / (p - q) (docs/privacy.md) */
			struct fp_ldp_rr rr;

			if (ldp_rr(acc[i]->ldp_mech, acc[i]->ldp_eps, &rr) < 0)
				goto fail;
			aw->weights[i] /= rr.p - rr.q;
			weighted = true;
		}
	}
	aw->job.model_dir = r->cfg.model;
	aw->job.mask_paths = (const char *const *)aw->paths;
	aw->job.client_ids = (const char *const *)aw->ids;
	aw->job.opts.nclients = n;
	aw->job.opts.weights = r->spec->weight_by_tokens || weighted ? aw->weights : NULL;
	aw->job.opts.sparsity = r->spec->sparsity;
	aw->job.opts.group = group_from_proto(r->spec->agg_group);
	aw->job.opts.tie = tie_from_proto(r->spec->tie_break);
	aw->job.opts.seed = r->spec->seed;
	aw->job.scale = r->spec->weight_scaling;
	aw->job.agreement = true;
	aw->job.require_all = !r->iterative;
	aw->job.mask_only = r->iterative; /* the final model is built after the last block */
	aw->job.out_dir = r->out_dir;
	fp_log_info("aggregating", "round=%" PRIu64 " clients=%zu group=%s tie_break=%s out=%s",
		    r->id, n, fp_group_name(aw->job.opts.group), fp_agg_tie_name(aw->job.opts.tie),
		    fp_q(r->out_dir));
	e = fp_mkdirs(r->cfg.output, 0700);
	if (e < 0)
		goto fail;
	e = uv_queue_work(uv_handle_get_loop((uv_handle_t *)&r->timer), &aw->w, agg_run, agg_done);
	if (e < 0)
		goto fail;
	r->inflight++;
	free(acc);
	return;
fail:
	free(acc);
	if (aw)
		agg_free(aw);
	round_fail(r, "cannot start the aggregation: %s",
		   e == -ENOMEM ? "out of memory" : fp_err_last());
}

static void result_close(struct result *res)
{
	fp_mask_reader_free(res->mr);
	if (res->fd >= 0)
		close(res->fd);
	res->mr = NULL;
	res->fd = -1;
	res->id = 0;
}

/* Open dir/mask.fpmask as the result of round id and compute its digest. */
static int result_open(struct result *res, const char *dir, uint64_t id)
{
	char *p = path_of("%s/%s", dir, FP_PRUNE_MASK_FILE);
	const char **names = NULL;
	uint8_t(*dg)[FP_DIGEST_BYTES] = NULL;
	size_t n;
	int e;

	result_close(res);
	if (!p)
		return -ENOMEM;
	e = fp_mask_reader_open(p, &res->mr);
	if (e < 0)
		goto out;
	res->fd = open(p, O_RDONLY | O_CLOEXEC);
	if (res->fd < 0) {
		e = fp_err_detail(-errno, "%s: %s", p, strerror(errno));
		goto out;
	}
	n = fp_mask_reader_count(res->mr);
	names = fp_callocarray(n, sizeof(*names));
	dg = fp_callocarray(n, sizeof(*dg));
	if (!names || !dg) {
		e = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const struct fp_mask_info *in = fp_mask_reader_info(res->mr, i);

		names[i] = in->name;
		if (pread(res->fd, dg[i], FP_DIGEST_BYTES, (off_t)(in->offset + in->nbytes)) !=
		    FP_DIGEST_BYTES) {
			e = fp_err_detail(-EIO, "%s: short read", p);
			goto out;
		}
	}
	e = fp_submission_digest(names, (const uint8_t(*)[FP_DIGEST_BYTES])dg, n, res->digest);
	if (e == 0)
		res->id = id;
out:
	if (e < 0)
		result_close(res);
	free(names);
	free(dg);
	free(p);
	return e;
}

/* The published result of round id (the current one, or another of an iterative job), or
 * NULL. */
static struct result *result_get(struct fp_round *r, uint64_t id)
{
	char *dir;

	if (r->cur.id == id)
		return &r->cur;
	if (r->old.id == id)
		return &r->old;
	if (!r->iterative || id == 0 || id >= r->id)
		return NULL;
	dir = path_of("%s/round-%" PRIu64, r->cfg.output, id);
	if (!dir || result_open(&r->old, dir, id) < 0) {
		free(dir);
		return NULL;
	}
	free(dir);
	return &r->old;
}

/* Open the current round's published mask for serving. */
static int publish_open(struct fp_round *r)
{
	char *dir = path_of("%s/round-%" PRIu64, r->cfg.output, r->id);
	int e;

	if (!dir)
		return -ENOMEM;
	e = result_open(&r->cur, dir, r->id);
	free(dir);
	return e;
}

static cJSON *report_read(const struct fp_round *r)
{
	char *p = path_of("%s/%s", r->out_dir, FP_PRUNE_REPORT_FILE), *buf = NULL;
	size_t len = 0;
	cJSON *j = NULL;

	if (p && fp_read_file(p, 256u << 20, &buf, &len) == 0)
		j = cJSON_ParseWithLength(buf, len);
	free(p);
	free(buf);
	return j;
}

/* Add the round's own section to report.json. */
static void publish_report(struct fp_round *r, struct agg_work *aw)
{
	cJSON *rep = aw->report ? aw->report : report_read(r);
	cJSON *ro, *cl;
	char hex[2 * FP_DIGEST_BYTES + 1];

	if (!rep)
		return;
	aw->report = rep;
	cJSON_DeleteItemFromObject(rep, "round");
	ro = cJSON_AddObjectToObject(rep, "round");
	cJSON_AddNumberToObject(ro, "id", (double)r->id);
	cJSON_AddStringToObject(ro, "method",
				fp_prune_method_name((enum fp_prune_method)r->cfg.method));
	cJSON_AddNumberToObject(ro, "sparsity", r->spec->sparsity);
	cJSON_AddNumberToObject(ro, "nm_n", r->spec->nm_n);
	cJSON_AddNumberToObject(ro, "nm_m", r->spec->nm_m);
	cJSON_AddStringToObject(ro, "local_group", fp_group_name(group_from_proto(r->spec->group)));
	cJSON_AddNumberToObject(ro, "nsamples", r->spec->nsamples);
	cJSON_AddNumberToObject(ro, "seqlen", r->spec->seqlen);
	cJSON_AddNumberToObject(ro, "seed", (double)r->spec->seed);
	cJSON_AddBoolToObject(ro, "weight_by_tokens", r->spec->weight_by_tokens);
	cJSON_AddBoolToObject(ro, "weight_scaling", r->spec->weight_scaling);
	cJSON_AddNumberToObject(ro, "participants", (double)participants(r));
	cJSON_AddNumberToObject(ro, "accepted", (double)r->naccepted);
	cJSON_AddNumberToObject(ro, "quorum", quorum(r));
	{
		static const char *const pol[] = { "off", "allowed", "required" };
		cJSON *pv = cJSON_AddObjectToObject(ro, "privacy");

		cJSON_AddStringToObject(pv, "ldp", pol[r->cfg.ldp]);
		if (r->cfg.ldp != FP_ROUND_LDP_OFF) {
			cJSON_AddStringToObject(
				pv, "mechanism",
				fp_ldp_mech_name((enum fp_ldp_mech)r->cfg.ldp_mechanism));
			cJSON_AddNumberToObject(pv, "max_epsilon", r->cfg.ldp_max_epsilon);
		}
	}
	cJSON_AddNumberToObject(ro, "collect_seconds", (unix_ms() - r->start_ms) / 1e3);
	cJSON_AddNumberToObject(ro, "aggregate_seconds", r->agg_seconds);
	hex32(hex, r->cur.digest);
	cJSON_AddStringToObject(ro, "result_digest", hex);
	cl = cJSON_AddArrayToObject(ro, "clients");
	for (size_t i = 0; i < r->ncl; i++) {
		struct rclient *c = r->cl[i];
		cJSON *o;

		if (!c->got_spec && !c->accepted)
			continue;
		o = cJSON_CreateObject();
		cJSON_AddItemToArray(cl, o);
		cJSON_AddStringToObject(o, "id", c->id);
		cJSON_AddBoolToObject(o, "accepted", c->accepted);
		cJSON_AddBoolToObject(o, "declined", c->declined);
		if (c->accepted) {
			hex32(hex, c->sub);
			cJSON_AddStringToObject(o, "submission_digest", hex);
			cJSON_AddNumberToObject(o, "tokens", (double)c->tokens);
			cJSON_AddNumberToObject(o, "local_seconds", c->seconds);
			if (c->ldp_mech) {
				cJSON *pv = cJSON_AddObjectToObject(o, "privacy");
				struct fp_ldp_rr rr;

				cJSON_AddStringToObject(
					pv, "mechanism",
					fp_ldp_mech_name((enum fp_ldp_mech)c->ldp_mech));
				cJSON_AddNumberToObject(pv, "epsilon", c->ldp_eps);
				if (ldp_rr(c->ldp_mech, c->ldp_eps, &rr) == 0) {
					cJSON_AddNumberToObject(pv, "p", rr.p);
					cJSON_AddNumberToObject(pv, "q", rr.q);
					cJSON_AddNumberToObject(pv, "epsilon_per_bit", rr.eps_bit);
					cJSON_AddNumberToObject(pv, "vote_weight",
								1.0 / (rr.p - rr.q));
				}
				cJSON_AddNumberToObject(pv, "rounds", c->ldp_rounds);
				cJSON_AddNumberToObject(pv, "total_epsilon", c->ldp_total_eps);
			}
		}
	}
	if (fp_agg_report_write(r->out_dir, rep) < 0)
		fp_log_warn("cannot rewrite report.json", "reason=%s", fp_q(fp_err_last()));
}

/* ---- serving the result ---- */

static int h_result_request(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	struct fp_round *r = fp_srv_data(srv);
	const Fedprune__ResultRequest *rq = e->result_request;
	Fedprune__Envelope out = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__TensorChunk ch = FEDPRUNE__TENSOR_CHUNK__INIT;
	const struct fp_mask_info *in;
	uint8_t dg[FP_DIGEST_BYTES], *buf;
	uint64_t shape[FP_MASK_MAX_DIMS];
	struct result *res = NULL;
	size_t len;
	long i;
	int err;

	res = result_get(r, rq->round_id);
	if (!res)
		return fp_session_error(s, C(OUT_OF_ORDER), false,
					"round %" PRIu64 " has no published result", rq->round_id);
	i = fp_mask_reader_find(res->mr, rq->tensor);
	if (i < 0)
		return fp_session_error(s, C(BAD_MESSAGE), false,
					"tensor '%s' is not in the result", rq->tensor);
	in = fp_mask_reader_info(res->mr, (size_t)i);
	if (rq->offset >= in->nbytes)
		return fp_session_error(s, C(BAD_MESSAGE), false,
					"tensor '%s': offset %" PRIu64 " is past its %" PRIu64
					" bytes",
					rq->tensor, rq->offset, in->nbytes);
	len = (size_t)(in->nbytes - rq->offset < r->cfg.chunk_bytes ? in->nbytes - rq->offset
								    : r->cfg.chunk_bytes);
	buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	if (pread(res->fd, buf, len, (off_t)(in->offset + rq->offset)) != (ssize_t)len) {
		free(buf);
		return fp_err_detail(-EIO,
				     "round %" PRIu64 ": cannot read %zu bytes of tensor '%s' at "
				     "offset %" PRIu64 " from its published mask",
				     res->id, len, in->name, rq->offset);
	}
	ch.round_id = res->id;
	ch.tensor = (char *)in->name;
	ch.kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS;
	if (rq->offset == 0) {
		for (uint32_t d = 0; d < in->ndim; d++)
			shape[d] = in->dims[d];
		ch.shape = shape;
		ch.n_shape = in->ndim;
	}
	ch.offset = rq->offset;
	ch.data.data = buf;
	ch.data.len = len;
	ch.total_bytes = in->nbytes;
	if (rq->offset + len == in->nbytes) {
		if (pread(res->fd, dg, sizeof(dg), (off_t)(in->offset + in->nbytes)) !=
		    (ssize_t)sizeof(dg)) {
			free(buf);
			return fp_err_detail(-EIO,
					     "round %" PRIu64
					     ": cannot read the digest of tensor '%s' "
					     "from its published mask",
					     res->id, in->name);
		}
		ch.tensor_digest.data = dg;
		ch.tensor_digest.len = sizeof(dg);
	}
	out.version = FP_PROTO_VERSION;
	out.msg_case = FEDPRUNE__ENVELOPE__MSG_CHUNK;
	out.chunk = &ch;
	err = fp_session_send(s, &out);
	free(buf);
	return err == -ENOMEM ? err : 0;
}

/* ---- federated evaluation ---- */

static size_t evaluated(const struct fp_round *r)
{
	size_t n = 0;

	for (size_t i = 0; i < r->ncl; i++)
		n += r->cl[i]->accepted && r->cl[i]->evaluated;
	return n;
}

static void eval_finish(struct fp_round *r, const char *why)
{
	double nll = 0, dnll = 0;
	uint64_t tok = 0, dtok = 0;
	cJSON *rep, *fe, *arr;
	size_t n = 0;

	if (r->phase != PH_PUBLISHED)
		return;
	uv_timer_stop(&r->timer);
	rep = report_read(r);
	fe = cJSON_CreateObject();
	arr = cJSON_AddArrayToObject(fe, "clients");
	for (size_t i = 0; i < r->ncl; i++) {
		struct rclient *c = r->cl[i];
		cJSON *o;

		if (!c->accepted || !c->evaluated)
			continue;
		n++;
		nll += (double)c->eval_tokens * log(c->ppl);
		tok += c->eval_tokens;
		if (c->dense_ppl > 0) {
			dnll += (double)c->eval_tokens * log(c->dense_ppl);
			dtok += c->eval_tokens;
		}
		o = cJSON_CreateObject();
		cJSON_AddItemToArray(arr, o);
		cJSON_AddStringToObject(o, "id", c->id);
		cJSON_AddNumberToObject(o, "perplexity", c->ppl);
		cJSON_AddNumberToObject(o, "tokens", (double)c->eval_tokens);
		if (c->dense_ppl > 0)
			cJSON_AddNumberToObject(o, "dense_perplexity", c->dense_ppl);
	}
	cJSON_AddNumberToObject(fe, "reports", (double)n);
	cJSON_AddNumberToObject(fe, "participants", (double)r->naccepted);
	cJSON_AddNumberToObject(fe, "tokens", (double)tok);
	if (tok)
		cJSON_AddNumberToObject(fe, "perplexity", exp(nll / (double)tok));
	if (dtok)
		cJSON_AddNumberToObject(fe, "dense_perplexity", exp(dnll / (double)dtok));
	cJSON_AddStringToObject(fe, "ended_by", why);
	if (rep) {
		cJSON_DeleteItemFromObject(rep, "federated_eval");
		cJSON_AddItemToObject(rep, "federated_eval", fe);
		if (fp_agg_report_write(r->out_dir, rep) < 0)
			fp_log_warn("cannot rewrite report.json", "reason=%s", fp_q(fp_err_last()));
		cJSON_Delete(rep);
	} else {
		cJSON_Delete(fe);
	}
	if (tok && dtok)
		fp_log_info("federated evaluation",
			    "round=%" PRIu64 " reports=%zu tokens=%" PRIu64
			    " perplexity=%.4f dense_perplexity=%.4f",
			    r->id, n, tok, exp(nll / (double)tok), exp(dnll / (double)dtok));
	else if (tok)
		fp_log_info("federated evaluation",
			    "round=%" PRIu64 " reports=%zu tokens=%" PRIu64 " perplexity=%.4f",
			    r->id, n, tok, exp(nll / (double)tok));
	else
		fp_log_warn("federated evaluation: no reports", "round=%" PRIu64 " reason=%s",
			    r->id, fp_q(why));
	journal(r, "done %" PRIu64, r->id);
	r->phase = PH_DONE;
	fp_log_info("round complete", "round=%" PRIu64 " dir=%s", r->id, fp_q(r->out_dir));
	if (r->cfg.exit_when_done)
		fp_daemon_stop(r->d);
}

static int h_eval_report(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	struct fp_round *r = fp_srv_data(srv);
	const Fedprune__EvalReport *ev = e->eval_report;
	struct rclient *c = s->data;
	int err;

	if (!c || !c->accepted || ev->round_id != r->id ||
	    (r->phase != PH_PUBLISHED && r->phase != PH_DONE))
		return fp_session_error(s, C(OUT_OF_ORDER), false,
					"evaluation report for round %" PRIu64
					" not expected from this client",
					ev->round_id);
	if (!isfinite(ev->perplexity) || ev->perplexity < 1 || ev->tokens == 0 ||
	    ev->tokens > (1ull << 53) ||
	    !(ev->dense_perplexity == 0 ||
	      (isfinite(ev->dense_perplexity) && ev->dense_perplexity >= 1)))
		return fp_session_error(s, C(BAD_MESSAGE), false,
					"evaluation report: perplexity must be finite and >= 1, "
					"tokens 1..2^53");
	if (c->evaluated || r->phase == PH_DONE)
		return 0; /* a repeat after a reconnect */
	err = journal(r, "eval %" PRIu64 " %s %.17g %" PRIu64 " %.17g", r->id, c->id,
		      ev->perplexity, ev->tokens, ev->dense_perplexity);
	if (err < 0)
		return err;
	c->evaluated = true;
	c->ppl = ev->perplexity;
	c->dense_ppl = ev->dense_perplexity;
	c->eval_tokens = ev->tokens;
	fp_log_info("evaluation report",
		    "identity=%s round=%" PRIu64 " perplexity=%.4f tokens=%" PRIu64
		    " dense_perplexity=%.4f",
		    fp_q(c->id), r->id, ev->perplexity, ev->tokens, ev->dense_perplexity);
	if (evaluated(r) >= r->naccepted)
		eval_finish(r, "all reports in");
	return 0;
}

/* ---- journal replay ---- */

static int replay_record(void *ud, const char *text, size_t lineno)
{
	struct fp_round *r = ud;
	char kind[16], id[FP_ID_MAX + 1], hex[2 * FP_DIGEST_BYTES + 1];
	uint64_t round, a, b;
	double x, y;
	struct rclient *c;

	if (sscanf(text, "%15s %" SCNu64, kind, &round) != 2)
		goto bad;
	if (strcmp(kind, "round") == 0) {
		if (sscanf(text, "round %" SCNu64 " %" SCNu64 " %" SCNu64, &round, &a, &b) != 3 ||
		    round != r->id + 1)
			goto bad;
		r->id = round;
		r->start_ms = a;
		r->deadline_ms = b;
		r->phase = PH_COLLECT;
		round_reset(r);
		return 0;
	}
	if (round != r->id)
		goto bad;
	if (strcmp(kind, "accept") == 0) {
		int mech = 0;
		unsigned rounds = 0;
		double eps = 0, total = 0;

		if (sscanf(text, "accept %*u %64s %64s %" SCNu64 " %lf %d %lf %u %lf", id, hex, &a,
			   &x, &mech, &eps, &rounds, &total) != 8 ||
		    !fp_identity_valid(id) || !(c = client_get(r, id, true)) ||
		    unhex32(c->sub, hex) < 0)
			goto bad;
		c->ldp_mech = mech;
		c->ldp_eps = eps;
		c->ldp_rounds = rounds;
		c->ldp_total_eps = total;
		if (!c->accepted)
			r->naccepted++;
		c->accepted = true;
		c->got_spec = true;
		c->tokens = a;
		c->seconds = x;
	} else if (strcmp(kind, "aggregate") == 0) {
		r->phase = PH_AGGREGATING;
		r->restored_aggregate = true;
	} else if (strcmp(kind, "published") == 0) {
		if (sscanf(text, "published %*u %64s", hex) != 1 || unhex32(r->cur.digest, hex) < 0)
			goto bad;
		r->phase = PH_PUBLISHED;
		r->restored_aggregate = false;
	} else if (strcmp(kind, "failed") == 0) {
		r->phase = PH_FAILED;
	} else if (strcmp(kind, "eval") == 0) {
		if (sscanf(text, "eval %*u %64s %lf %" SCNu64 " %lf", id, &x, &a, &y) != 4 ||
		    !(c = client_get(r, id, false)) || !c->accepted)
			goto bad;
		c->evaluated = true;
		c->ppl = x;
		c->eval_tokens = a;
		c->dense_ppl = y;
	} else if (strcmp(kind, "final") == 0) {
		if (!r->iterative || r->phase != PH_PUBLISHED)
			goto bad;
		r->final_done = true;
	} else if (strcmp(kind, "done") == 0) {
		r->phase = PH_DONE;
	} else {
		goto bad;
	}
	return 0;
bad:
	return fp_err_detail(-EINVAL, "%s/%s: line %zu: unexpected record '%s'", r->cfg.state_dir,
			     FP_JOURNAL_FILE, lineno, text);
}

/* ---- life ---- */

int fp_round_new(struct fp_daemon *d, const struct fp_round_cfg *cfg, struct fp_round **ret)
{
	struct fp_round *r = calloc(1, sizeof(*r));
	struct fp_st_model *st = NULL;
	struct fp_model_cfg mc;
	unsigned n = 0, m = 0;
	int e;

	if (!r)
		return -ENOMEM;
	r->d = d;
	r->cfg = *cfg;
	r->cfg.output = NULL; /* an owned copy below */
	r->cur.fd = r->old.fd = -1;
	uv_mutex_init(&r->jlock);
	if (getenv("FP_TEST_KILL_AFTER_CHUNKS") &&
	    fp_parse_u64(getenv("FP_TEST_KILL_AFTER_CHUNKS"), 1, UINT64_MAX, &r->kill_after) < 0)
		fp_log_warn("ignoring FP_TEST_KILL_AFTER_CHUNKS (not a positive integer)", NULL);
	if (!cfg->model[0] || !cfg->state_dir[0]) {
		e = fp_err_detail(-EINVAL, "[round] model and state_dir are required");
		goto fail;
	}
	if (strcmp(cfg->pattern, "unstructured") != 0 &&
	    (fp_parse_nm(cfg->pattern, &n, &m) < 0 || n == 0 || n > m || m > 64)) {
		e = fp_err_detail(-EINVAL,
				  "[round] pattern '%s': expected 'unstructured' or N:M with "
				  "0 < N <= M <= 64",
				  cfg->pattern);
		goto fail;
	}
	if (cfg->output[0] == '\0') {
		r->cfg.output = path_of("%s/published", cfg->state_dir);
		if (!r->cfg.output) {
			e = -ENOMEM;
			goto fail;
		}
	} else {
		r->cfg.output = strdup(cfg->output);
		if (!r->cfg.output) {
			e = -ENOMEM;
			goto fail;
		}
	}
	e = model_cfg(r, &mc);
	if (e < 0)
		goto fail;
	if (cfg->ldp != FP_ROUND_LDP_OFF && cfg->ldp_mechanism != FP_LDP_RR_SYM &&
	    cfg->ldp_mechanism != FP_LDP_RR_OUE) {
		e = fp_err_detail(-EINVAL, "[round] ldp_mechanism must be rr or oue");
		goto fail;
	}
	r->iterative = cfg->mode == FP_ROUND_ITERATIVE;
	r->nblocks = mc.nlayers;
	if (cfg->weight_by_tokens && cfg->method == FP_PRUNE_MAGNITUDE) {
		e = fp_err_detail(-EINVAL, "[round] weight_by_tokens needs a method that uses "
					   "calibration data (magnitude uses none)");
		goto fail;
	}
	if (r->iterative && cfg->weight_scaling) {
		e = fp_err_detail(-EINVAL, "[round] weight_scaling needs mode = oneshot (iterative "
					   "rounds publish masks; the final model is the dense "
					   "weights with every block's mask applied)");
		goto fail;
	}
	if (m && (mc.hidden % m || mc.intermediate % m)) {
		e = fp_err_detail(-EINVAL,
				  "[round] pattern %u:%u: the model's input dimensions "
				  "are not multiples of %u",
				  n, m, m);
		goto fail;
	}
	e = fp_st_model_open(cfg->model, &st);
	if (e == 0)
		e = fp_hfout_source_digest(st, r->model_digest);
	fp_st_model_close(st);
	if (e < 0)
		goto fail;
	e = fp_journal_open(cfg->state_dir, replay_record, r, &r->j);
	if (e < 0)
		goto fail;
	if (r->id) {
		e = spec_load(r, r->id, &r->spec);
		if (e == 0)
			e = spec_index(r, &mc);
		if (e < 0)
			goto fail;
		if (r->spec->iterative != r->iterative) {
			e = fp_err_detail(-EINVAL,
					  "%s: round %" PRIu64
					  " was started in %s mode, [round] mode "
					  "says otherwise",
					  cfg->state_dir, r->id,
					  r->spec->iterative ? "iterative" : "one-shot");
			goto fail;
		}
		if (r->spec->model_digest.len != FP_DIGEST_BYTES ||
		    memcmp(r->spec->model_digest.data, r->model_digest, FP_DIGEST_BYTES) != 0) {
			e = fp_err_detail(-EINVAL,
					  "%s: round %" PRIu64 " was started with another model "
					  "than [round] model = %s",
					  cfg->state_dir, r->id, cfg->model);
			goto fail;
		}
		r->out_dir = r->final_done ? path_of("%s/final", r->cfg.output)
					   : path_of("%s/round-%" PRIu64, r->cfg.output, r->id);
		fp_log_info("state restored",
			    "state_dir=%s round=%" PRIu64 " phase=%s accepted=%zu",
			    fp_q(cfg->state_dir), r->id, phase_names[r->phase], r->naccepted);
	}
	*ret = r;
	return 0;
fail:
	round_release(r);
	return e;
}

void fp_round_ops(struct fp_srv_ops *ops)
{
	ops->on_hello = on_hello;
	ops->on_welcome = on_welcome;
	ops->on_chunk = on_chunk;
	ops->on_tensor = on_tensor;
	ops->on_commit = on_commit;
	ops->on_session_free = on_session_free;
}

int fp_round_attach(struct fp_round *r, struct fp_srv *srv)
{
	uv_loop_t *loop = &r->d->loop;
	int e;

	r->srv = srv;
	fp_srv_set_handler(srv, FEDPRUNE__ENVELOPE__MSG_RESULT_REQUEST, h_result_request);
	fp_srv_set_handler(srv, FEDPRUNE__ENVELOPE__MSG_EVAL_REPORT, h_eval_report);
	fp_srv_set_handler(srv, FEDPRUNE__ENVELOPE__MSG_ERROR, h_error);
	e = uv_timer_init(loop, &r->timer);
	if (e < 0)
		return fp_err_detail(e, "timer: %s", uv_strerror(e));
	r->timer.data = r;
	r->timer_init = true;
	if (!r->out_dir && r->id)
		r->out_dir = path_of("%s/round-%" PRIu64, r->cfg.output, r->id);
	switch (r->phase) {
	case PH_WAIT:
		fp_log_info("waiting for clients", "min_clients=%u wait_s=%.0f", r->cfg.min_clients,
			    r->cfg.wait_ms / 1e3);
		timer_at(r, r->cfg.wait_ms);
		break;
	case PH_COLLECT: {
		uint64_t now = unix_ms();

		fp_log_info("resuming collection",
			    "round=%" PRIu64 " accepted=%zu deadline_in_s=%.0f", r->id,
			    r->naccepted,
			    r->deadline_ms > now ? (r->deadline_ms - now) / 1e3 : 0.0);
		timer_at(r, r->deadline_ms > now ? r->deadline_ms - now : 0);
		break;
	}
	case PH_AGGREGATING:
		if (access(r->out_dir, F_OK) == 0 && publish_open(r) == 0) {
			/* published before the crash, the journal record was lost */
			char hex[2 * FP_DIGEST_BYTES + 1];

			hex32(hex, r->cur.digest);
			if (journal(r, "published %" PRIu64 " %s", r->id, hex) < 0)
				return -EIO;
			r->phase = PH_PUBLISHED;
			r->publish_ms = unix_ms();
			after_publish(r);
		} else {
			aggregate_start(r);
		}
		break;
	case PH_PUBLISHED:
	case PH_DONE:
		e = publish_open(r);
		if (e < 0)
			return e;
		if (r->phase == PH_PUBLISHED && r->iterative &&
		    (r->spec->block + 1 < r->nblocks || !r->final_done)) {
			after_publish(r); /* the next block's round, or the final model */
		} else if (r->phase == PH_PUBLISHED) {
			timer_at(r, r->cfg.eval_ms);
			if (evaluated(r) >= r->naccepted)
				eval_finish(r, "all reports in");
		} else {
			fp_log_info("round already complete", "round=%" PRIu64 " dir=%s", r->id,
				    fp_q(r->out_dir));
			if (r->cfg.exit_when_done)
				fp_daemon_stop(r->d);
		}
		break;
	case PH_FAILED:
		fp_log_err("the last round failed; use a new state directory to run another",
			   "round=%" PRIu64, r->id);
		if (r->cfg.exit_when_done)
			fp_daemon_fail(r->d);
		break;
	}
	return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
	struct fp_round *r = h->data;

	r->timer_init = false;
	round_release(r);
}

/* Free r once nothing refers to it any more. */
static void round_release(struct fp_round *r)
{
	if (r->inflight || r->timer_init)
		return;
	for (size_t i = 0; i < r->ncl; i++) {
		client_close_part(r->cl[i]);
		free(r->cl[i]);
	}
	free(r->cl);
	if (r->spec)
		fedprune__round_spec__free_unpacked(r->spec, NULL);
	free(r->rows);
	free(r->cols);
	result_close(&r->cur);
	result_close(&r->old);
	fp_journal_close(r->j);
	uv_mutex_destroy(&r->jlock);
	free(r->out_dir);
	free(r->cfg.output);
	free(r);
}

void fp_round_stop(struct fp_round *r)
{
	if (!r)
		return;
	r->stopping = true;
	r->srv = NULL;
	for (size_t i = 0; i < r->ncl; i++)
		r->cl[i]->s = NULL;
	if (r->inflight)
		fp_log_info("waiting for work in flight", "items=%u", r->inflight);
	if (r->timer_init && !uv_is_closing((uv_handle_t *)&r->timer)) {
		uv_timer_stop(&r->timer);
		uv_close((uv_handle_t *)&r->timer, on_timer_closed);
		return;
	}
	round_release(r);
}
