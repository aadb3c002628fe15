/*
 * The client's round pipeline (client/job.c) against an in-process fake server (srv.h) on one
 * loop, with the bundled demo model: the uploaded mask equals the one fp_prune_run computes
 * offline for the same settings, a repeated spec prunes once, a spec for another model is
 * refused with MODEL_MISMATCH (and bad specs with their codes), the global mask is downloaded
 * (a corrupted chunk refused and fetched again) and written, the EvalReport has a finite
 * perplexity and the held-out token count, a download cut by a lost connection resumes after
 * the reconnect, a restarted client resumes from its state directory without pruning again, and
 * a result that is always corrupt is given up. Iterative rounds (one per block): each block's
 * upload equals fp_prune_run of that block alone with the published masks of the earlier blocks
 * applied, pruning waits for the previous block's download (held up by the fake server), the
 * EvalReport comes only after the last block (final mask = every block's), a late client
 * fetches a block it was never offered with ResultRequest, a restart reports from its files.
 * Every case ends with uv_loop_close() == 0.
 */
#include "test.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "../../client/job.h"
#include "data.h"
#include "err.h"
#include "hfout.h"
#include "link.h"
#include "mask.h"
#include "model.h"
#include "prune.h"
#include "srv.h"
#include "upload.h"

#define WAIT_MS	   600000 /* generous: valgrind runs this too (minutes) */
#define NMAX	   64
#define SERVE_SIZE 1000 /* result chunk size of the fake server */
#define ROUND	   7

#define MODEL_DIR  FP_SOURCE_DIR "/deploy/demo/model"
#define CALIB	   FP_SOURCE_DIR "/deploy/demo/data/client1.txt"
#define HELDOUT	   FP_SOURCE_DIR "/deploy/demo/data/heldout.txt"
#define NSAMPLES   4
#define SEQLEN	   64
#define SEED	   3
#define EVAL_BYTES 1024 /* held-out bytes copied for the test */
#define EVAL_LEN   64
#define EVAL_WINS  4 /* windows evaluated ([job] eval_nsamples) */

/* --- the fake server --- */

struct fake {
	uv_loop_t loop;
	struct fp_srv *srv;
	bool srv_done;
	uv_timer_t kick;
	struct fp_session *sess;
	/* the round */
	size_t n;
	char names[NMAX][96];
	char *name_ptr[NMAX];
	uint8_t model_digest[32];
	Fedprune__RoundSpec spec;
	bool spec_on_hello;
	/* uploads */
	uint8_t *up[NMAX];
	uint64_t up_got[NMAX];
	int commits;
	uint64_t commit_tokens;
	double commit_seconds;
	/* the result served */
	struct fp_mask_set *global;
	uint8_t gdig[NMAX][32];
	uint8_t result[32];
	int corrupt_tensor; /* answers for this tensor are corrupted ... */
	int corrupt_left;   /* ... this many times (-1: always) */
	int requests;
	int drop_at; /* close the connection instead of answering request number drop_at */
	/* iterative: round r prunes block r - 1; the result of block k = F.global's block k */
	bool iter;
	uint64_t cur_round;	/* the round whose spec is sent (0: none) */
	uint8_t bres[NMAX][32]; /* result digest of each block */
	int req_round[NMAX];	/* requests per round id */
	uint64_t hold_round;	/* requests for this round are held ... */
	bool held;		/* ... one is */
	uint64_t held_round, held_off;
	char held_tensor[96];
	uint64_t commit_round; /* round of the last commit */
	int prunes_at_release; /* client's prunes when the held request was answered */
	/* what the client said */
	int errors[64];
	int nerrors;
	int hellos;
	uint64_t hello_tokens;
	uint8_t hello_digest[32];
	int reports;
	Fedprune__EvalReport report;
};

static struct fake F;

static int tensor_index(const char *name)
{
	for (size_t i = 0; i < F.n; i++)
		if (strcmp(F.names[i], name) == 0)
			return (int)i;
	return -1;
}

static void send_spec(void)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;

	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_ROUND_SPEC;
	e.round_spec = &F.spec;
	assert_int_equal(fp_session_send(F.sess, &e), 0);
}

static void send_block_offer(uint64_t round);

static void on_kick(uv_timer_t *t)
{
	(void)t;
	if (!F.spec_on_hello || !F.sess || !F.sess->conn)
		return;
	if (F.iter && F.cur_round > 1)
		send_block_offer(F.cur_round - 1); /* as the server does on every (re)connect */
	send_spec();
}

static int on_hello(struct fp_srv *srv, struct fp_session *s, const Fedprune__Hello *h)
{
	(void)srv;
	F.hellos++;
	F.sess = s;
	F.hello_tokens = h->local_tokens;
	assert_int_equal(h->model_digest.len, 32);
	memcpy(F.hello_digest, h->model_digest.data, 32);
	uv_timer_start(&F.kick, on_kick, 1, 0); /* after the Welcome */
	return 0;
}

static int on_chunk(struct fp_srv *srv, struct fp_session *s, const Fedprune__TensorChunk *c)
{
	int i = tensor_index(c->tensor);

	(void)srv;
	(void)s;
	assert_true(i >= 0);
	assert_int_equal(c->kind, FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS);
	if (!F.up[i]) {
		F.up[i] = calloc(1, c->total_bytes);
		assert_non_null(F.up[i]);
	}
	if (c->offset == 0)
		F.up_got[i] = 0;
	assert_int_equal(c->offset, F.up_got[i]);
	memcpy(F.up[i] + c->offset, c->data.data, c->data.len);
	F.up_got[i] += c->data.len;
	return 0;
}

static int on_commit(struct fp_srv *srv, struct fp_session *s, const Fedprune__Commit *c)
{
	(void)srv;
	(void)s;
	F.commits++;
	F.commit_round = c->round_id;
	F.commit_tokens = c->tokens;
	F.commit_seconds = c->seconds;
	return 0;
}

static int h_error(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	(void)srv;
	(void)s;
	if (F.nerrors < 64)
		F.errors[F.nerrors++] = e->error->code;
	return 0;
}

static int h_report(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	(void)srv;
	(void)s;
	F.reports++;
	F.report = *e->eval_report;
	return 0;
}

/* Answer a result request with one chunk. */
static int serve(struct fp_session *s, uint64_t round, const char *tensor, uint64_t offset)
{
	Fedprune__Envelope out = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__TensorChunk c = FEDPRUNE__TENSOR_CHUNK__INIT;
	uint8_t buf[SERVE_SIZE];
	uint64_t shape[2];
	int i = tensor_index(tensor);
	uint64_t total, len;

	assert_true(i >= 0);
	if (F.iter) /* round r: the 7 matrices of block r - 1 */
		assert_int_equal((uint64_t)i / FP_LIN_COUNT + 1, round);
	else
		assert_int_equal(round, ROUND);
	total = F.global->info[i].nbytes;
	assert_true(offset < total);
	len = total - offset < SERVE_SIZE ? total - offset : SERVE_SIZE;
	memcpy(buf, F.global->bits[i] + offset, len);
	if (i == F.corrupt_tensor && F.corrupt_left != 0) {
		buf[0] ^= 0x10;
		if (F.corrupt_left > 0 && offset + len == total)
			F.corrupt_left--;
	}
	c.round_id = round;
	c.tensor = F.names[i];
	c.kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS;
	if (offset == 0) {
		shape[0] = F.global->info[i].dims[0];
		shape[1] = F.global->info[i].dims[1];
		c.shape = shape;
		c.n_shape = 2;
	}
	c.offset = offset;
	c.data.data = buf;
	c.data.len = len;
	c.total_bytes = total;
	if (offset + len == total) {
		c.tensor_digest.data = F.gdig[i];
		c.tensor_digest.len = 32;
	}
	out.version = FP_PROTO_VERSION;
	out.msg_case = FEDPRUNE__ENVELOPE__MSG_CHUNK;
	out.chunk = &c;
	return fp_session_send(s, &out);
}

static int h_request(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	const Fedprune__ResultRequest *q = e->result_request;

	(void)srv;
	F.requests++;
	if (F.drop_at && F.requests == F.drop_at) {
		F.drop_at = 0;
		fp_conn_abort(s->conn, -ECONNRESET, "%s", "test: cable pulled");
		return 0;
	}
	if (q->round_id < NMAX)
		F.req_round[q->round_id]++;
	if (F.hold_round && q->round_id == F.hold_round) {
		assert_false(F.held); /* one request at a time */
		F.held = true;
		F.held_round = q->round_id;
		F.held_off = q->offset;
		snprintf(F.held_tensor, sizeof(F.held_tensor), "%s", q->tensor);
		return 0;
	}
	return serve(s, q->round_id, q->tensor, q->offset);
}

static void send_offer(void)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__ResultOffer o = FEDPRUNE__RESULT_OFFER__INIT;

	o.round_id = ROUND;
	o.tensors = F.name_ptr;
	o.n_tensors = F.n;
	o.result_digest.data = F.result;
	o.result_digest.len = 32;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_RESULT_OFFER;
	e.result_offer = &o;
	assert_int_equal(fp_session_send(F.sess, &e), 0);
}

/* Iterative: the spec of round r (block r - 1). */
static void set_block_spec(uint64_t round)
{
	F.cur_round = round;
	F.spec.round_id = round;
	F.spec.iterative = true;
	F.spec.block = (uint32_t)(round - 1);
	F.spec.tensors = F.name_ptr + (round - 1) * FP_LIN_COUNT;
	F.spec.n_tensors = FP_LIN_COUNT;
}

/* Iterative: the result offer of round r (block r - 1's 7 matrices). */
static void send_block_offer(uint64_t round)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__ResultOffer o = FEDPRUNE__RESULT_OFFER__INIT;

	o.round_id = round;
	o.tensors = F.name_ptr + (round - 1) * FP_LIN_COUNT;
	o.n_tensors = FP_LIN_COUNT;
	o.result_digest.data = F.bres[round - 1];
	o.result_digest.len = 32;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_RESULT_OFFER;
	e.result_offer = &o;
	assert_int_equal(fp_session_send(F.sess, &e), 0);
}

static void fake_start(void)
{
	struct fp_srv_ops ops = { .on_hello = on_hello,
				  .on_chunk = on_chunk,
				  .on_commit = on_commit };
	struct fp_srv_cfg cfg = { 0 };
	struct fp_model *m = NULL;

	memset(&F, 0, sizeof(F));
	F.corrupt_tensor = -1;
	assert_int_equal(uv_loop_init(&F.loop), 0);
	uv_timer_init(&F.loop, &F.kick);
	cfg.listen = "127.0.0.1";
	cfg.max_clients = 8;
	cfg.conn.max_frame = 1u << 20;
	cfg.conn.handshake_ms = 10000;
	cfg.conn.idle_ms = 60000;
	cfg.conn.msg_ms = 10000;
	cfg.conn.wq_high = 256u << 10;
	cfg.conn.wq_low = 64u << 10;
	cfg.conn.linger_ms = 1000;
	cfg.heartbeat_ms = 1000;
	cfg.chunk_bytes = 4096;
	cfg.max_upload = 64u << 20;
	cfg.session_ttl_ms = 600000;
	cfg.insecure_warn_ms = 600000;
	if (fp_srv_start(&F.loop, &cfg, &ops, &F.srv) < 0)
		fail_msg("server: %s", fp_err_last());
	fp_srv_set_handler(F.srv, FEDPRUNE__ENVELOPE__MSG_ERROR, h_error);
	fp_srv_set_handler(F.srv, FEDPRUNE__ENVELOPE__MSG_EVAL_REPORT, h_report);
	fp_srv_set_handler(F.srv, FEDPRUNE__ENVELOPE__MSG_RESULT_REQUEST, h_request);

	/* The round: every prunable matrix of the demo model. */
	assert_int_equal(fp_model_open(MODEL_DIR, &m), 0);
	assert_int_equal(fp_hfout_source_digest(fp_model_source(m), F.model_digest), 0);
	F.n = (size_t)fp_model_config(m)->nlayers * FP_LIN_COUNT;
	assert_true(F.n <= NMAX);
	for (size_t i = 0; i < F.n; i++) {
		snprintf(F.names[i], sizeof(F.names[i]), "model.layers.%zu.%s.weight",
			 i / FP_LIN_COUNT, fp_linear_name((enum fp_linear)(i % FP_LIN_COUNT)));
		F.name_ptr[i] = F.names[i];
	}
	fp_model_close(m);
	fedprune__round_spec__init(&F.spec);
	F.spec.round_id = ROUND;
	F.spec.method = FEDPRUNE__METHOD__METHOD_WANDA;
	F.spec.sparsity = 0.5;
	F.spec.group = FEDPRUNE__GROUP__GROUP_ROW;
	F.spec.agg_group = FEDPRUNE__GROUP__GROUP_LAYER;
	F.spec.tie_break = FEDPRUNE__TIE_BREAK__TIE_BREAK_MAGNITUDE;
	F.spec.model_digest.data = F.model_digest;
	F.spec.model_digest.len = 32;
	F.spec.seed = SEED;
	F.spec.nsamples = NSAMPLES;
	F.spec.seqlen = SEQLEN;
	F.spec.sequential = true;
	F.spec.payload = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS;
	F.spec.chunk_bytes = 4096;
	F.spec.tensors = F.name_ptr;
	F.spec.n_tensors = F.n;
}

static void guard_cb(uv_timer_t *t)
{
	(void)t;
}

static bool run_until(bool (*cond)(void *), void *ud, uint64_t ms)
{
	uv_timer_t guard;
	uint64_t end;

	uv_update_time(&F.loop);
	end = uv_now(&F.loop) + ms;
	uv_timer_init(&F.loop, &guard);
	uv_timer_start(&guard, guard_cb, 5, 5);
	while (!cond(ud) && uv_now(&F.loop) < end)
		uv_run(&F.loop, UV_RUN_ONCE);
	uv_close((uv_handle_t *)&guard, NULL);
	uv_run(&F.loop, UV_RUN_NOWAIT);
	return cond(ud);
}

static bool srv_is_done(void *ud)
{
	(void)ud;
	return F.srv_done;
}

static void srv_done_cb(struct fp_srv *srv, void *ud)
{
	(void)srv;
	(void)ud;
	F.srv_done = true;
}

static void fake_stop(void)
{
	fp_srv_stop(F.srv, srv_done_cb, NULL);
	assert_true(run_until(srv_is_done, NULL, WAIT_MS));
	uv_close((uv_handle_t *)&F.kick, NULL);
	uv_run(&F.loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&F.loop), 0);
	for (size_t i = 0; i < F.n; i++)
		free(F.up[i]);
	fp_mask_set_free(F.global);
}

/* The global mask the fake server publishes: magnitude, layer groups, 30 %. */
static void make_global(void)
{
	struct fp_model *m = NULL;
	struct fp_prune_opts o;
	struct fp_prune_result res;
	char *dir = fp_test_mkdtemp(), *out = NULL;

	fp_prune_opts_init(&o, FP_PRUNE_MAGNITUDE);
	o.sparsity = 0.3;
	/* Simplest way to the bits of every matrix: the offline pipeline's mask file. */
	assert_true(asprintf(&out, "%s/out", dir) > 0);
	{
		struct fp_prune_info info = { .model_dir = MODEL_DIR };

		assert_int_equal(fp_model_open(MODEL_DIR, &m), 0);
		assert_int_equal(fp_prune_write(m, MODEL_DIR, NULL, &o, &info, out, &res), 0);
		fp_prune_result_done(&res);
		fp_model_close(m);
	}
	{
		char *path = NULL;

		assert_true(asprintf(&path, "%s/%s", out, FP_PRUNE_MASK_FILE) > 0);
		assert_int_equal(fp_mask_set_load(path, &F.global), 0);
		free(path);
	}
	assert_int_equal(F.global->count, F.n);
	for (size_t i = 0; i < F.n; i++) {
		assert_string_equal(F.global->info[i].name, F.names[i]);
		crypto_generichash(F.gdig[i], 32, F.global->bits[i], F.global->info[i].nbytes, NULL,
				   0);
	}
	assert_int_equal(fp_submission_digest((const char *const *)F.name_ptr,
					      (const uint8_t(*)[32])F.gdig, F.n, F.result),
			 0);
	for (size_t k = 0; k < F.n / FP_LIN_COUNT; k++)
		assert_int_equal(
			fp_submission_digest((const char *const *)F.name_ptr + k * FP_LIN_COUNT,
					     (const uint8_t(*)[32])F.gdig[k * FP_LIN_COUNT],
					     FP_LIN_COUNT, F.bres[k]),
			0);
	free(out);
	fp_test_rmtree(dir);
	free(dir);
}

/* --- the client side --- */

struct client {
	struct fp_job *job;
	struct fp_link *link;
	bool link_stopped, job_stopped;
	int done;
	uint64_t done_round;
};

static void c_ready(struct fp_link *l, const Fedprune__Welcome *w)
{
	fp_job_on_ready(((struct client *)fp_link_data(l))->job, w);
}

static void c_msg(struct fp_link *l, const Fedprune__Envelope *e)
{
	fp_job_on_msg(((struct client *)fp_link_data(l))->job, e);
}

static void c_down(struct fp_link *l, const char *reason, bool fatal)
{
	fp_job_on_down(((struct client *)fp_link_data(l))->job, reason, fatal);
}

static void c_done(struct fp_job *j, uint64_t round, void *ud)
{
	struct client *c = ud;

	(void)j;
	c->done++;
	c->done_round = round;
}

static void client_start(struct client *c, const char *state, const char *heldout, bool dense)
{
	struct fp_job_cfg jc = { 0 };
	struct fp_link_ops ops = { .on_ready = c_ready, .on_msg = c_msg, .on_down = c_down };
	struct fp_link_cfg lc = { 0 };

	memset(c, 0, sizeof(*c));
	jc.model = MODEL_DIR;
	jc.calib = CALIB;
	jc.heldout = heldout;
	jc.state_dir = state;
	jc.eval_dense = dense;
	jc.eval_seqlen = EVAL_LEN;
	jc.eval_nsamples = EVAL_WINS;
	jc.on_done = c_done;
	jc.ud = c;
	if (fp_job_new(&F.loop, &jc, &c->job) < 0)
		fail_msg("job: %s", fp_err_last());
	lc.host = "127.0.0.1";
	lc.port = (uint16_t)fp_srv_port(F.srv);
	lc.client_id = "site-a";
	lc.conn.max_frame = 1u << 20;
	lc.conn.handshake_ms = 10000;
	lc.conn.idle_ms = 60000;
	lc.conn.msg_ms = 10000;
	lc.conn.wq_high = 256u << 10;
	lc.conn.wq_low = 64u << 10;
	lc.conn.linger_ms = 1000;
	lc.heartbeat_ms = 1000;
	lc.backoff_base_ms = 20;
	lc.backoff_cap_ms = 200;
	lc.capacity = 1.0;
	lc.local_tokens = fp_job_local_tokens(c->job);
	lc.model_digest = fp_job_model_digest(c->job);
	lc.data = c;
	assert_int_equal(fp_link_start(&F.loop, &lc, &ops, &c->link), 0);
	fp_job_set_link(c->job, c->link);
}

static void link_stopped(struct fp_link *l, void *ud)
{
	(void)l;
	((struct client *)ud)->link_stopped = true;
}

static void job_stopped(struct fp_job *j, void *ud)
{
	(void)j;
	((struct client *)ud)->job_stopped = true;
}

static bool client_is_stopped(void *ud)
{
	struct client *c = ud;

	return c->link_stopped && c->job_stopped;
}

static void client_stop(struct client *c)
{
	if (fp_job_stop(c->job, job_stopped, c) == 0)
		c->job_stopped = true;
	fp_link_stop(c->link, link_stopped, c);
	assert_true(run_until(client_is_stopped, c, WAIT_MS));
	fp_job_free(c->job);
	c->job = NULL;
}

/* --- conditions --- */

static bool committed(void *ud)
{
	const struct client *c = ud;

	return F.commits >= 1 && fp_job_stats(c->job)->uploads >= 1;
}

static bool reported(void *ud)
{
	const struct client *c = ud;

	return F.reports >= 1 && c->done >= 1;
}

static bool hello_seen(void *ud)
{
	(void)ud;
	return F.hellos >= 1 && F.sess && F.sess->conn;
}

static bool has_error(void *ud)
{
	int want = *(const int *)ud;

	for (int i = 0; i < F.nerrors; i++)
		if (F.errors[i] == want)
			return true;
	return false;
}

static bool specs_seen(void *ud)
{
	const struct client *c = ud;

	return fp_job_stats(c->job)->specs >= 2;
}

/* --- the offline reference --- */

struct ref {
	uint8_t *bits[NMAX];
	size_t n;
};

static int ref_sink(void *ctx, const struct fp_prune_block *b)
{
	struct ref *r = ctx;

	for (int w = 0; w < FP_LIN_COUNT; w++) {
		size_t nb = fp_mask_bytes(b->mat[w]->rows * b->mat[w]->cols);

		r->bits[r->n] = malloc(nb);
		assert_non_null(r->bits[r->n]);
		memcpy(r->bits[r->n], b->mask[w], nb);
		r->n++;
	}
	return 0;
}

/* The published global mask of an earlier block (iterative reference): F.global's. */
static int ref_fixed(void *ctx, uint32_t block, enum fp_linear lin, uint8_t *bits, size_t nbytes)
{
	size_t i = (size_t)block * FP_LIN_COUNT + (size_t)lin;

	(void)ctx;
	assert_true(i < F.n);
	assert_int_equal(nbytes, F.global->info[i].nbytes);
	memcpy(bits, F.global->bits[i], nbytes);
	return 0;
}

/*
 * What `fedprune prune --method wanda --nsamples 4 --seqlen 64 --seed 3` computes; with
 * num_blocks > 0 only blocks [first, first + num), the blocks before run with F.global's masks.
 */
static void offline_range(struct ref *r, uint32_t first, uint32_t num)
{
	struct fp_model *m = NULL;
	struct fp_dataset *ds = NULL;
	struct fp_data_opts d = {
		.seqlen = SEQLEN, .nsamples = NSAMPLES, .shuffle = true, .seed = SEED
	};
	struct fp_prune_opts o;
	struct fp_prune_result res;

	memset(r, 0, sizeof(*r));
	assert_int_equal(fp_model_open(MODEL_DIR, &m), 0);
	d.vocab_size = fp_model_config(m)->vocab;
	assert_int_equal(fp_data_load(CALIB, &d, &ds), 0);
	fp_prune_opts_init(&o, FP_PRUNE_WANDA);
	o.sparsity = 0.5;
	o.group = FP_GROUP_ROW;
	o.first_block = first;
	o.num_blocks = num;
	if (first)
		o.fixed_mask = ref_fixed;
	assert_int_equal(fp_prune_run(m, ds, &o, ref_sink, r, &res), 0);
	assert_int_equal(res.ntokens, (uint64_t)NSAMPLES * SEQLEN);
	fp_prune_result_done(&res);
	fp_data_free(ds);
	fp_model_close(m);
}

static void ref_free(struct ref *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->bits[i]);
	r->n = 0;
}

/* What `fedprune prune --method wanda --nsamples 4 --seqlen 64 --seed 3` computes. */
static void offline(struct ref *r)
{
	offline_range(r, 0, 0);
}

static char *path_in(const char *dir, const char *name)
{
	char *p = NULL;

	assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
	return p;
}

static char *make_heldout(const char *dir)
{
	char *buf = malloc(EVAL_BYTES), *path = NULL;
	FILE *f = fopen(HELDOUT, "rb");

	assert_non_null(buf);
	assert_non_null(f);
	assert_int_equal(fread(buf, 1, EVAL_BYTES, f), EVAL_BYTES);
	fclose(f);
	path = fp_test_write_file(dir, "heldout.txt", buf, EVAL_BYTES);
	free(buf);
	return path;
}

/* --- cases --- */

static void test_round(void **state)
{
	char *dir = fp_test_mkdtemp(), *sdir = path_in(dir, "state"), *heldout;
	char *rdir = path_in(sdir, "round-7");
	char *gpath = path_in(rdir, "global.fpmask"), *epath = path_in(rdir, "eval.json");
	char *lpath = path_in(rdir, "local.fpmask"), *apath = path_in(rdir, "applied");
	struct fp_mask_set *got = NULL, *local = NULL;
	struct client c;
	struct ref ref;
	int want_digest = FEDPRUNE__ERROR_CODE__ERROR_DIGEST_MISMATCH;
	const uint64_t tokens = EVAL_WINS * (uint64_t)(EVAL_LEN - 1);
	int hellos;
	double ppl;

	(void)state;
	heldout = make_heldout(dir);
	fake_start();
	make_global();
	offline(&ref);
	assert_int_equal(ref.n, F.n);
	F.spec_on_hello = true;
	client_start(&c, sdir, heldout, true);
	assert_true(run_until(committed, &c, WAIT_MS));

	/* Hello carried the calibration size and the model digest. */
	assert_int_equal(F.hello_tokens, 303227); /* bytes of client1.txt */
	assert_memory_equal(F.hello_digest, F.model_digest, 32);
	/* The upload is bit for bit what fp_prune_run gives offline. */
	for (size_t i = 0; i < F.n; i++) {
		assert_non_null(F.up[i]);
		assert_int_equal(F.up_got[i], F.global->info[i].nbytes);
		assert_memory_equal(F.up[i], ref.bits[i], F.up_got[i]);
	}
	assert_int_equal(F.commit_tokens, (uint64_t)NSAMPLES * SEQLEN);
	assert_true(F.commit_seconds > 0);
	assert_int_equal(fp_mask_set_load(lpath, &local), 0);
	assert_int_equal(local->count, F.n);
	fp_mask_set_free(local);

	/* A repeated spec (as on every reconnect) does not prune again. */
	send_spec();
	assert_true(run_until(specs_seen, &c, WAIT_MS));
	assert_int_equal(fp_job_stats(c.job)->prunes, 1);
	assert_int_equal(F.commits, 1);

	/* The result: one answer for tensor 3 is corrupted, refused, and fetched again. */
	F.corrupt_tensor = 3;
	F.corrupt_left = 1;
	send_offer();
	assert_true(run_until(reported, &c, WAIT_MS));
	assert_true(has_error(&want_digest));
	assert_int_equal(fp_job_stats(c.job)->chunks_refused, 1);
	assert_int_equal(fp_job_stats(c.job)->downloads, 1);
	assert_int_equal(fp_mask_set_load(gpath, &got), 0);
	assert_int_equal(got->count, F.n);
	for (size_t i = 0; i < F.n; i++) {
		assert_string_equal(got->info[i].name, F.names[i]);
		assert_memory_equal(got->bits[i], F.global->bits[i], F.global->info[i].nbytes);
	}
	fp_mask_set_free(got);
	assert_int_equal(access(apath, F_OK), 0);
	assert_int_equal(access(epath, F_OK), 0);
	assert_int_equal(F.report.round_id, ROUND);
	assert_true(isfinite(F.report.perplexity) && F.report.perplexity > 1.0);
	assert_true(isfinite(F.report.dense_perplexity) && F.report.dense_perplexity > 1.0);
	assert_int_equal(F.report.tokens, tokens);
	assert_int_equal(c.done_round, ROUND);
	assert_int_equal(fp_job_stats(c.job)->prunes, 1);
	ppl = F.report.perplexity;
	client_stop(&c);

	/* Restart with only the local mask on disk: it is checked and uploaded again (the
	 * server already holds it committed), not recomputed. */
	unlink(epath);
	unlink(gpath);
	unlink(apath);
	F.reports = 0;
	client_start(&c, sdir, heldout, false);
	assert_true(run_until(committed, &c, WAIT_MS));
	assert_int_equal(fp_job_stats(c.job)->prunes, 0);
	assert_int_equal(fp_job_stats(c.job)->resumed, 1);
	/* The connection drops in the middle of the download: it resumes after the reconnect. */
	F.corrupt_left = 0;
	F.drop_at = F.requests + 10;
	hellos = F.hellos;
	send_offer();
	assert_true(run_until(reported, &c, WAIT_MS));
	assert_int_equal(F.hellos, hellos + 1);
	assert_int_equal(F.drop_at, 0);
	assert_int_equal(fp_job_stats(c.job)->downloads, 1);
	assert_int_equal(fp_job_stats(c.job)->chunks_refused, 0);
	assert_int_equal(F.report.tokens, tokens);
	assert_true(fabs(F.report.perplexity - ppl) <= 1e-9 * ppl); /* the same pruned model */
	assert_true(F.report.dense_perplexity == 0.0);		    /* eval_dense = false */
	assert_int_equal(fp_job_stats(c.job)->prunes, 0);
	client_stop(&c);

	/* Restart after the report: the round is reported again from eval.json at once. */
	F.reports = 0;
	client_start(&c, sdir, heldout, false);
	assert_true(run_until(reported, &c, WAIT_MS));
	assert_int_equal(fp_job_stats(c.job)->prunes, 0);
	assert_int_equal(fp_job_stats(c.job)->downloads, 0);
	assert_int_equal(F.report.tokens, tokens);
	assert_true(fabs(F.report.perplexity - ppl) <= 1e-9 * ppl);
	client_stop(&c);

	fake_stop();
	for (size_t i = 0; i < ref.n; i++)
		free(ref.bits[i]);
	free(heldout);
	free(gpath);
	free(epath);
	free(lpath);
	free(apath);
	free(rdir);
	free(sdir);
	fp_test_rmtree(dir);
	free(dir);
}

/* Send a spec modified by fn and wait for the Error with code want. */
static void refused(struct client *c, void (*fn)(Fedprune__RoundSpec *s), int want)
{
	Fedprune__RoundSpec saved = F.spec;
	uint64_t before = fp_job_stats(c->job)->specs_refused;

	F.nerrors = 0;
	fn(&F.spec);
	send_spec();
	F.spec = saved;
	assert_true(run_until(has_error, &want, WAIT_MS));
	assert_int_equal(fp_job_stats(c->job)->specs_refused, before + 1);
	assert_int_equal(fp_job_stats(c->job)->last_error, want);
}

static uint8_t other_digest[32];

static void bad_digest(Fedprune__RoundSpec *s)
{
	memcpy(other_digest, F.model_digest, 32);
	other_digest[5] ^= 1;
	s->model_digest.data = other_digest;
}

static void bad_tensors(Fedprune__RoundSpec *s)
{
	s->n_tensors = F.n - 1;
}

static void bad_order(Fedprune__RoundSpec *s)
{
	static char *swapped[NMAX];

	memcpy(swapped, F.name_ptr, sizeof(swapped));
	swapped[0] = F.name_ptr[1];
	swapped[1] = F.name_ptr[0];
	s->tensors = swapped;
}

static void bad_nsamples(Fedprune__RoundSpec *s)
{
	s->nsamples = 0;
}

static void bad_method(Fedprune__RoundSpec *s)
{
	s->method = FEDPRUNE__METHOD__METHOD_FEDP3;
}

static void bad_nm(Fedprune__RoundSpec *s)
{
	s->nm_n = 3;
	s->nm_m = 5; /* 192 input columns are not a multiple of 5 */
}

static void bad_iterative(Fedprune__RoundSpec *s)
{
	s->iterative = true; /* round 7 for block 0 */
}

static void bad_iter_block(Fedprune__RoundSpec *s)
{
	s->iterative = true;
	s->round_id = 5;
	s->block = 4; /* the demo model has blocks 0 .. 3 */
}

static void bad_iter_tensors(Fedprune__RoundSpec *s)
{
	s->iterative = true;
	s->round_id = 2;
	s->block = 1; /* but every matrix of the model listed */
}

static void bad_iter_names(Fedprune__RoundSpec *s)
{
	s->iterative = true;
	s->round_id = 2;
	s->block = 1;
	s->tensors = F.name_ptr; /* block 0's names */
	s->n_tensors = FP_LIN_COUNT;
}

static void test_refusals(void **state)
{
	char *dir = fp_test_mkdtemp(), *sdir = path_in(dir, "state");
	struct client c;

	(void)state;
	fake_start();
	client_start(&c, sdir, NULL, false);
	assert_true(run_until(hello_seen, NULL, WAIT_MS));
	refused(&c, bad_digest, FEDPRUNE__ERROR_CODE__ERROR_MODEL_MISMATCH);
	refused(&c, bad_tensors, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH);
	refused(&c, bad_order, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH);
	refused(&c, bad_nsamples, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE);
	refused(&c, bad_method, FEDPRUNE__ERROR_CODE__ERROR_UNSUPPORTED);
	refused(&c, bad_nm, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE);
	refused(&c, bad_iterative, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE);
	refused(&c, bad_iter_block, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE);
	refused(&c, bad_iter_tensors, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH);
	refused(&c, bad_iter_names, FEDPRUNE__ERROR_CODE__ERROR_SPEC_MISMATCH);
	/* Nothing was pruned or uploaded, and the client is still connected. */
	assert_int_equal(fp_job_stats(c.job)->prunes, 0);
	assert_int_equal(F.commits, 0);
	assert_true(fp_link_ready(c.link));
	client_stop(&c);
	fake_stop();
	free(sdir);
	fp_test_rmtree(dir);
	free(dir);
}

static bool gave_up(void *ud)
{
	const struct client *c = ud;

	return fp_job_stats(c->job)->chunks_refused >= 4 && F.requests >= 4;
}

/* A result whose tensor is always corrupt: refused a bounded number of times, no file. */
static void test_corrupt_result(void **state)
{
	char *dir = fp_test_mkdtemp(), *sdir = path_in(dir, "state");
	char *gpath = path_in(sdir, "round-7/global.fpmask");
	struct client c;

	(void)state;
	fake_start();
	make_global();
	client_start(&c, sdir, NULL, false);
	assert_true(run_until(hello_seen, NULL, WAIT_MS));
	F.corrupt_tensor = 0;
	F.corrupt_left = -1;
	send_offer();
	assert_true(run_until(gave_up, &c, WAIT_MS));
	/* run a little longer: no more requests after giving up */
	{
		int before = F.requests;
		uint64_t refusals = fp_job_stats(c.job)->chunks_refused;

		for (int i = 0; i < 20; i++)
			uv_run(&F.loop, UV_RUN_NOWAIT);
		assert_int_equal(F.requests, before);
		assert_int_equal(refusals, 4);
	}
	assert_int_equal(access(gpath, F_OK), -1);
	assert_int_equal(fp_job_stats(c.job)->downloads, 0);
	assert_true(fp_link_ready(c.link));
	client_stop(&c);
	fake_stop();
	free(gpath);
	free(sdir);
	fp_test_rmtree(dir);
	free(dir);
}

/* --- iterative FedPrLLM --- */

static struct client *IC; /* the client the conditions look at */

static bool committed_round(void *ud)
{
	uint64_t r = *(const uint64_t *)ud;

	return F.commits >= 1 && F.commit_round == r && IC->job &&
	       fp_job_stats(IC->job)->last_prune_round == r &&
	       fp_job_stats(IC->job)->uploads + fp_job_stats(IC->job)->resumed >= 1 &&
	       F.up_got[(r - 1) * FP_LIN_COUNT + FP_LIN_COUNT - 1] ==
		       F.global->info[(r - 1) * FP_LIN_COUNT + FP_LIN_COUNT - 1].nbytes;
}

static bool request_held(void *ud)
{
	(void)ud;
	return F.held;
}

static bool never(void *ud)
{
	(void)ud;
	return false;
}

/* The upload of block b is what fp_prune_run gives for block b alone with the published masks
 * of the blocks before it (F.global's) applied. */
static void check_block_upload(uint32_t b)
{
	struct ref ref;

	offline_range(&ref, b, 1);
	assert_int_equal(ref.n, FP_LIN_COUNT);
	for (size_t i = 0; i < FP_LIN_COUNT; i++) {
		size_t t = (size_t)b * FP_LIN_COUNT + i;

		assert_non_null(F.up[t]);
		assert_int_equal(F.up_got[t], F.global->info[t].nbytes);
		assert_memory_equal(F.up[t], ref.bits[i], F.up_got[t]);
	}
	ref_free(&ref);
}

/* dir/name holds exactly F.global's tensors [base, base + n). */
static void check_mask_file(const char *dir, const char *name, size_t base, size_t n)
{
	char *path = path_in(dir, name);
	struct fp_mask_set *ms = NULL;

	assert_int_equal(fp_mask_set_load(path, &ms), 0);
	assert_int_equal(ms->count, n);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(ms->info[i].name, F.names[base + i]);
		assert_memory_equal(ms->bits[i], F.global->bits[base + i],
				    F.global->info[base + i].nbytes);
	}
	fp_mask_set_free(ms);
	free(path);
}

static void test_iterative(void **state)
{
	char *dir = fp_test_mkdtemp(), *sdir = path_in(dir, "state"), *heldout;
	char *sdir2 = path_in(dir, "late"), *p;
	struct client c, c2;
	uint64_t r, nblocks;
	struct ref plain;

	(void)state;
	heldout = make_heldout(dir);
	fake_start();
	make_global();
	nblocks = F.n / FP_LIN_COUNT;
	assert_true(nblocks >= 3);
	F.iter = true;
	F.spec_on_hello = true;
	set_block_spec(1);
	IC = &c;
	client_start(&c, sdir, heldout, true);
	r = 1;
	assert_true(run_until(committed_round, &r, WAIT_MS));
	check_block_upload(0);
	assert_int_equal(F.reports, 0);

	/* Round 2: the offer of round 1 and the spec of round 2 back to back, and the download
	 * of round 1 held up: block 1 is not pruned before block 0's global mask is in. */
	F.hold_round = 1;
	send_block_offer(1);
	set_block_spec(2);
	send_spec();
	assert_true(run_until(request_held, NULL, WAIT_MS));
	assert_false(run_until(never, NULL, 300));
	assert_int_equal(fp_job_stats(c.job)->prunes, 1);
	assert_int_equal(fp_job_stats(c.job)->downloads, 0);
	assert_int_equal(F.commits, 1);
	p = path_in(sdir, "round-2/local.fpmask");
	assert_int_equal(access(p, F_OK), -1);
	free(p);
	F.hold_round = 0;
	F.held = false;
	assert_int_equal(serve(F.sess, F.held_round, F.held_tensor, F.held_off), 0);
	r = 2;
	assert_true(run_until(committed_round, &r, WAIT_MS));
	assert_int_equal(fp_job_stats(c.job)->downloads, 1);
	/* The block-1 mask is pruned with block 0's published mask applied, which differs from
	 * what a one-shot run (block 0 pruned by this client's own mask) gives. */
	check_block_upload(1);
	offline(&plain);
	{
		bool differs = false;

		for (size_t i = 0; i < FP_LIN_COUNT; i++) {
			size_t t = FP_LIN_COUNT + i;

			differs |= memcmp(F.up[t], plain.bits[t], F.up_got[t]) != 0;
		}
		assert_true(differs);
	}
	ref_free(&plain);
	p = path_in(sdir, "round-1");
	check_mask_file(p, "global.fpmask", 0, FP_LIN_COUNT);
	free(p);

	/* The other blocks; no evaluation before the last block's result. */
	for (r = 3; r <= nblocks; r++) {
		send_block_offer(r - 1);
		set_block_spec(r);
		send_spec();
		assert_true(run_until(committed_round, &r, WAIT_MS));
		check_block_upload((uint32_t)(r - 1));
		assert_int_equal(F.reports, 0);
		assert_int_equal(c.done, 0);
	}
	assert_int_equal(fp_job_stats(c.job)->downloads, nblocks - 1);
	send_block_offer(nblocks);
	assert_true(run_until(reported, &c, WAIT_MS));
	assert_int_equal(F.reports, 1);
	assert_int_equal(F.report.round_id, nblocks);
	assert_int_equal(c.done_round, nblocks);
	assert_true(isfinite(F.report.perplexity) && F.report.perplexity > 1.0);
	assert_true(isfinite(F.report.dense_perplexity) && F.report.dense_perplexity > 1.0);
	assert_int_equal(F.report.tokens, EVAL_WINS * (uint64_t)(EVAL_LEN - 1));
	assert_int_equal(fp_job_stats(c.job)->downloads, nblocks);
	assert_int_equal(fp_job_stats(c.job)->prunes, nblocks);
	/* The final mask merges every block's global mask; the model carries it. */
	{
		char name[64];
		char *rd, *cfg;

		snprintf(name, sizeof(name), "round-%" PRIu64, nblocks);
		rd = path_in(sdir, name);
		check_mask_file(rd, "final.fpmask", 0, F.n);
		cfg = path_in(rd, "model/config.json");
		assert_int_equal(access(cfg, F_OK), 0);
		free(cfg);
		free(rd);
	}
	client_stop(&c);

	/* A client joining while block 2's round collects: the server offers round 2 (block 1)
	 * on connect; block 0 was never offered to it and is fetched by ResultRequest. */
	memset(F.req_round, 0, sizeof(F.req_round));
	F.commits = 0;
	F.commit_round = 0;
	set_block_spec(3);
	IC = &c2;
	client_start(&c2, sdir2, NULL, false);
	r = 3;
	assert_true(run_until(committed_round, &r, WAIT_MS));
	assert_true(F.req_round[1] >= FP_LIN_COUNT);
	assert_true(F.req_round[2] >= FP_LIN_COUNT);
	assert_int_equal(fp_job_stats(c2.job)->downloads, 2);
	assert_int_equal(fp_job_stats(c2.job)->prunes, 1);
	assert_int_equal(fp_job_stats(c2.job)->chunks_refused, 0);
	check_block_upload(2);
	p = path_in(sdir2, "round-1");
	check_mask_file(p, "global.fpmask", 0, FP_LIN_COUNT);
	free(p);
	client_stop(&c2);

	/* The first client restarted after the last round: reported again from its state
	 * directory, nothing pruned or downloaded. */
	F.reports = 0;
	set_block_spec(nblocks);
	IC = &c;
	client_start(&c, sdir, heldout, false);
	assert_true(run_until(reported, &c, WAIT_MS));
	assert_int_equal(F.report.round_id, nblocks);
	assert_int_equal(fp_job_stats(c.job)->prunes, 0);
	assert_int_equal(fp_job_stats(c.job)->downloads, 0);
	client_stop(&c);

	fake_stop();
	free(heldout);
	free(sdir2);
	free(sdir);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_count_tokens(void **state)
{
	char *dir = fp_test_mkdtemp(), *p;
	uint64_t n = 0;
	static const char jsonl[] = "{\"input_ids\": [1, 2, 3]}\n\n{\"input_ids\": [4, 5]}\n";

	(void)state;
	p = fp_test_write_file(dir, "a.u16", "abcdef", 6);
	assert_int_equal(fp_job_count_tokens(p, 256, &n), 0);
	assert_int_equal(n, 3);
	free(p);
	p = fp_test_write_file(dir, "a.u32", "abcdef", 6);
	assert_int_equal(fp_job_count_tokens(p, 256, &n), -EINVAL);
	free(p);
	p = fp_test_write_file(dir, "a.jsonl", jsonl, sizeof(jsonl) - 1);
	assert_int_equal(fp_job_count_tokens(p, 256, &n), 0);
	assert_int_equal(n, 5);
	assert_true(fp_job_count_tokens(p, 4, &n) < 0); /* id 4 and 5 out of the vocabulary */
	free(p);
	p = fp_test_write_file(dir, "a.bin", "x", 1);
	assert_int_equal(fp_job_count_tokens(p, 256, &n), -EINVAL);
	free(p);
	fp_test_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_count_tokens),   cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_corrupt_result), cmocka_unit_test(test_round),
		cmocka_unit_test(test_iterative),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
