/*
 * Client side of the protocol (see link.h).
 */
#include "link.h"
#include "parse.h"

#include <errno.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "err.h"
#include "fp_config.h"
#include "log.h"
#include "netcfg.h"

#define LINK_RBUF      (256u << 10)
#define UPLOAD_RETRIES 3
#define CAPABILITY     "upload-resume"

enum link_state {
	L_RESOLVING,  /* getaddrinfo in flight */
	L_CONNECTING, /* TCP + TLS */
	L_HELLO,      /* Hello sent, waiting for Welcome */
	L_READY,
	L_WAIT, /* waiting to reconnect */
	L_DEAD, /* fatal error: no more attempts */
	L_STOPPING,
};

struct fp_link {
	uv_loop_t *loop;
	struct fp_link_cfg cfg;
	struct fp_link_ops ops;
	char *host, *server_name, *client_id;
	uint8_t digest[FP_DIGEST_BYTES];
	/* crash test hook (docs/development.md): SIGKILL itself once an upload has sent this many
	 * payload bytes (environment FP_TEST_CLIENT_KILL_AFTER_BYTES); 0 = off */
	uint64_t kill_after;
	uv_timer_t retry, hb, kick;
	uv_getaddrinfo_t gai;
	bool gai_active;
	int handles;
	struct fp_conn *conn;
	enum link_state state;
	unsigned attempt;
	bool fatal; /* the server said the identity or version is refused */
	uint64_t hb_seq;
	uint8_t *rbuf;
	char identity[FP_ID_MAX + 1];
	struct fp_link_stats st;
	/* the upload, if any */
	struct fp_upload_tx *up;
	fp_link_upload_cb up_done;
	void *up_ud;
	bool up_pumping; /* restarted from a status and sending */
	bool up_query;	 /* UploadQuery sent, UploadStatus not yet received */
	unsigned up_retries;
	void (*stopped)(struct fp_link *l, void *ud);
	void *stopped_ud;
};

static void connect_now(struct fp_link *l);

static uint64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void maybe_done(struct fp_link *l)
{
	if (l->state != L_STOPPING || l->conn || l->gai_active || l->handles)
		return;
	if (l->stopped)
		l->stopped(l, l->stopped_ud);
	fp_upload_tx_free(l->up);
	free(l->host);
	free(l->server_name);
	free(l->client_id);
	free(l->rbuf);
	free(l);
}

/* --- uploads --- */

static void upload_finish(struct fp_link *l, int status, const char *reason,
			  const Fedprune__Receipt *rc)
{
	fp_link_upload_cb done = l->up_done;
	void *ud = l->up_ud;

	fp_upload_tx_free(l->up);
	l->up = NULL;
	l->up_done = NULL;
	l->up_pumping = false;
	l->up_query = false;
	uv_timer_stop(&l->kick);
	if (done)
		done(l, status, reason, rc, ud);
}

static void on_kick(uv_timer_t *t);

static void upload_pump(struct fp_link *l)
{
	int r;

	if (!l->up || !l->up_pumping || l->state != L_READY)
		return;
	r = fp_upload_tx_pump(l->up, l->conn);
	if (l->kill_after && fp_upload_tx_sent(l->up) >= l->kill_after) {
		fp_log_warn("FP_TEST_CLIENT_KILL_AFTER_BYTES reached: killing myself", "sent=%llu",
			    (unsigned long long)fp_upload_tx_sent(l->up));
		raise(SIGKILL);
	}
	if (r == 1) {
		l->up_pumping = false; /* everything sent; the Receipt decides */
	} else if (r == 2) {
		uv_timer_start(&l->kick, on_kick, 0, 0);
	} else if (r < 0) {
		char reason[256];

		snprintf(reason, sizeof(reason), "%s", fp_err_last());
		fp_log_err("upload failed", "round=%llu reason=%s",
			   (unsigned long long)fp_upload_tx_round(l->up), fp_q(reason));
		upload_finish(l, r, reason, NULL);
	}
}

static void on_kick(uv_timer_t *t)
{
	upload_pump(t->data);
}

static void upload_restart(struct fp_link *l, const Fedprune__UploadStatus *st)
{
	int r;

	if (st && st->committed && st->round_id == fp_upload_tx_round(l->up)) {
		fp_log_info("upload already committed", "round=%llu",
			    (unsigned long long)st->round_id);
		upload_finish(l, 0, NULL, NULL);
		return;
	}
	r = fp_upload_tx_restart(l->up, st);
	if (r < 0) {
		char reason[256];

		snprintf(reason, sizeof(reason), "%s", fp_err_last());
		upload_finish(l, r, reason, NULL);
		return;
	}
	if (st && st->round_id == fp_upload_tx_round(l->up) && st->n_tensors) {
		uint64_t held = 0;

		for (size_t i = 0; i < st->n_tensors; i++)
			held += st->tensors[i]->received_bytes;
		fp_log_info("upload resumed", "round=%llu held_by_server=%llu total=%llu",
			    (unsigned long long)st->round_id, (unsigned long long)held,
			    (unsigned long long)fp_upload_tx_total(l->up));
	}
	l->up_pumping = true;
	upload_pump(l);
}

static void upload_query(struct fp_link *l)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__UploadQuery q = FEDPRUNE__UPLOAD_QUERY__INIT;

	l->up_pumping = false;
	l->up_query = true;
	q.round_id = fp_upload_tx_round(l->up);
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_UPLOAD_QUERY;
	e.upload_query = &q;
	fp_conn_send(l->conn, &e);
}

static void upload_receipt(struct fp_link *l, const Fedprune__Receipt *rc)
{
	if (!l->up || rc->round_id != fp_upload_tx_round(l->up))
		return;
	if (rc->accepted) {
		fp_log_info("upload accepted", "round=%llu bytes=%llu",
			    (unsigned long long)rc->round_id,
			    (unsigned long long)fp_upload_tx_total(l->up));
		upload_finish(l, 0, NULL, rc);
		return;
	}
	if (++l->up_retries <= UPLOAD_RETRIES) {
		fp_log_warn("upload not accepted, resuming", "round=%llu reason=%s attempt=%u",
			    (unsigned long long)rc->round_id, fp_q(rc->reason), l->up_retries);
		upload_query(l);
		return;
	}
	upload_finish(l, -EPROTO, rc->reason, rc);
}

int fp_link_upload(struct fp_link *l, uint64_t round_id, const struct fp_tensor_src *src, size_t n,
		   const Fedprune__Commit *extra, fp_link_upload_cb done, void *ud)
{
	size_t chunk = l->cfg.chunk_bytes ? l->cfg.chunk_bytes : (1u << 20);
	int r;

	if (l->up)
		return -EBUSY;
	if (l->state == L_DEAD || l->state == L_STOPPING)
		return -ENOTCONN;
	r = fp_upload_tx_new(round_id, src, n, chunk, extra, &l->up);
	if (r < 0)
		return r;
	l->up_done = done;
	l->up_ud = ud;
	l->up_retries = 0;
	if (l->state == L_READY)
		upload_query(l);
	return 0;
}

/* --- connection events --- */

static void send_hello(struct fp_link *l)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__Hello h = FEDPRUNE__HELLO__INIT;
	char *caps[] = { CAPABILITY };
	int r;

	h.client_id = l->client_id;
	h.protocol_version = FP_PROTO_VERSION;
	h.capabilities = caps;
	h.n_capabilities = 1;
	h.local_tokens = l->cfg.local_tokens;
	h.capacity = l->cfg.capacity;
	if (l->cfg.model_digest) {
		h.model_digest.data = l->digest;
		h.model_digest.len = FP_DIGEST_BYTES;
	}
	h.software = "fedprune-client/" FP_VERSION;
	h.resume_round = l->up ? fp_upload_tx_round(l->up) : 0;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_HELLO;
	e.hello = &h;
	r = fp_conn_send(l->conn, &e);
	if (r < 0)
		fp_conn_abort(l->conn, r, "cannot send hello: %s", fp_strerror(r));
}

static void on_secure(struct fp_conn *c)
{
	struct fp_link *l = fp_conn_data(c);

	l->state = L_HELLO;
	send_hello(l);
}

static void on_hb(uv_timer_t *t)
{
	struct fp_link *l = t->data;
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__Heartbeat hb = FEDPRUNE__HEARTBEAT__INIT;

	if (l->state != L_READY)
		return;
	hb.seq = ++l->hb_seq;
	hb.unix_ms = wall_ms();
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_HEARTBEAT;
	e.heartbeat = &hb;
	if (fp_conn_send(l->conn, &e) == 0)
		l->st.heartbeats++;
}

static void ready(struct fp_link *l, const Fedprune__Welcome *w)
{
	uint64_t hb = w->heartbeat_ms ? w->heartbeat_ms : l->cfg.heartbeat_ms;

	if (w->protocol_version != FP_PROTO_VERSION) {
		l->fatal = true;
		fp_conn_fail(l->conn, FEDPRUNE__ERROR_CODE__ERROR_BAD_VERSION, -EPROTONOSUPPORT,
			     "server speaks protocol version %u, this client %u",
			     w->protocol_version, FP_PROTO_VERSION);
		return;
	}
	snprintf(l->identity, sizeof(l->identity), "%s", w->identity);
	if (w->max_frame_bytes)
		fp_conn_set_peer_max(l->conn, w->max_frame_bytes);
	if (!l->cfg.chunk_bytes && w->chunk_bytes >= 1024)
		l->cfg.chunk_bytes = w->chunk_bytes;
	l->state = L_READY;
	l->attempt = 0;
	l->st.connects++;
	fp_conn_set_ready(l->conn);
	if (hb)
		uv_timer_start(&l->hb, on_hb, hb, hb);
	fp_log_info("connected to server", "server=%s identity=%s tls=%s resumed=%d",
		    fp_q(fp_conn_peer(l->conn)), fp_q(w->identity),
		    fp_q(fp_conn_tls_version(l->conn)), w->resumed);
	if (l->ops.on_ready)
		l->ops.on_ready(l, w);
	if (l->up && l->state == L_READY) {
		if (w->upload && w->upload->round_id == fp_upload_tx_round(l->up))
			upload_restart(l, w->upload);
		else
			upload_query(l);
	}
}

static void server_error(struct fp_link *l, const Fedprune__Envelope *e)
{
	const Fedprune__Error *err = e->error;

	fp_log_warn("server reported an error", "code=%s fatal=%d message=%s",
		    fp_error_code_name(err->code), err->fatal, fp_q(err->message));
	if (err->code == FEDPRUNE__ERROR_CODE__ERROR_NOT_ALLOWED ||
	    err->code == FEDPRUNE__ERROR_CODE__ERROR_BAD_VERSION)
		l->fatal = true;
	if (l->ops.on_msg)
		l->ops.on_msg(l, e);
}

static void on_msg(struct fp_conn *c, const Fedprune__Envelope *e)
{
	struct fp_link *l = fp_conn_data(c);

	if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_ERROR) {
		server_error(l, e);
		return;
	}
	if (l->state == L_HELLO) {
		if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_WELCOME)
			ready(l, e->welcome);
		else
			fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER, -EPROTO,
				     "message '%s' before welcome", fp_msg_name(e->msg_case));
		return;
	}
	switch (e->msg_case) {
	case FEDPRUNE__ENVELOPE__MSG_WELCOME:
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER, -EPROTO, "%s",
			     "second welcome");
		break;
	case FEDPRUNE__ENVELOPE__MSG_HEARTBEAT:
		if (e->heartbeat->echo)
			l->st.echoes++;
		break;
	case FEDPRUNE__ENVELOPE__MSG_UPLOAD_STATUS:
		if (l->up && l->up_query &&
		    e->upload_status->round_id == fp_upload_tx_round(l->up)) {
			l->up_query = false;
			upload_restart(l, e->upload_status);
		}
		break;
	case FEDPRUNE__ENVELOPE__MSG_RECEIPT:
		upload_receipt(l, e->receipt);
		if (l->ops.on_msg)
			l->ops.on_msg(l, e);
		break;
	default:
		if (l->ops.on_msg)
			l->ops.on_msg(l, e);
		break;
	}
}

static void on_drain(struct fp_conn *c)
{
	upload_pump(fp_conn_data(c));
}

static void on_retry(uv_timer_t *t)
{
	connect_now(t->data);
}

static void schedule_retry(struct fp_link *l, const char *reason)
{
	uint64_t delay =
		fp_backoff_ms(l->cfg.backoff_base_ms, l->cfg.backoff_cap_ms, l->attempt,
			      ((uint64_t)randombytes_random() << 32) | randombytes_random());

	if (l->attempt < 64)
		l->attempt++;
	l->st.last_delay_ms = delay;
	l->state = L_WAIT;
	fp_log_warn("disconnected from server", "server=%s port=%u reason=%s retry_in_ms=%llu",
		    fp_q(l->host), l->cfg.port, fp_q(reason), (unsigned long long)delay);
	if (l->ops.on_down)
		l->ops.on_down(l, reason, false);
	if (l->state == L_WAIT)
		uv_timer_start(&l->retry, on_retry, delay, 0);
}

static void on_close(struct fp_conn *c)
{
	struct fp_link *l = fp_conn_data(c);
	int err = fp_conn_error(c);
	char reason[256];

	snprintf(reason, sizeof(reason), "%s", fp_conn_reason(c));
	l->conn = NULL;
	uv_timer_stop(&l->hb);
	uv_timer_stop(&l->kick);
	l->up_pumping = false;
	l->up_query = false;
	if (l->state == L_STOPPING) {
		maybe_done(l);
		return;
	}
	if (l->fatal || err == -EACCES || err == -EPROTONOSUPPORT) {
		l->state = L_DEAD;
		fp_log_err("giving up: the server refused this client", "server=%s reason=%s",
			   fp_q(l->host), fp_q(reason));
		if (l->up)
			upload_finish(l, -EACCES, reason, NULL);
		if (l->ops.on_down)
			l->ops.on_down(l, reason, true);
		return;
	}
	schedule_retry(l, reason);
}

static const struct fp_conn_ops link_conn_ops = {
	.on_secure = on_secure,
	.on_msg = on_msg,
	.on_drain = on_drain,
	.on_close = on_close,
};

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct fp_link *l = req->data;
	struct fp_conn_cfg cfg;
	char reason[256];
	int r;

	l->gai_active = false;
	if (l->state == L_STOPPING) {
		uv_freeaddrinfo(res);
		maybe_done(l);
		return;
	}
	if (status < 0 || !res) {
		snprintf(reason, sizeof(reason), "cannot resolve '%s': %s", l->host,
			 uv_strerror(status));
		uv_freeaddrinfo(res);
		schedule_retry(l, reason);
		return;
	}
	memset(&cfg, 0, sizeof(cfg));
	cfg.ops = &link_conn_ops;
	cfg.opts = l->cfg.conn;
	cfg.tls = l->cfg.tls;
	cfg.server_name = l->server_name;
	cfg.rbuf = l->rbuf;
	cfg.rbuf_size = LINK_RBUF;
	cfg.data = l;
	r = fp_conn_connect(l->loop, res->ai_addr, &cfg, &l->conn);
	uv_freeaddrinfo(res);
	if (r < 0) {
		snprintf(reason, sizeof(reason), "cannot connect: %s", fp_strerror(r));
		l->conn = NULL;
		schedule_retry(l, reason);
		return;
	}
	l->state = L_CONNECTING;
}

static void connect_now(struct fp_link *l)
{
	struct addrinfo hints;
	char port[8];
	char reason[256];
	int r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(port, sizeof(port), "%u", l->cfg.port);
	l->st.attempts++;
	l->state = L_RESOLVING;
	l->gai.data = l;
	r = uv_getaddrinfo(l->loop, &l->gai, on_resolved, l->host, port, &hints);
	if (r < 0) {
		snprintf(reason, sizeof(reason), "cannot resolve '%s': %s", l->host,
			 uv_strerror(r));
		schedule_retry(l, reason);
		return;
	}
	l->gai_active = true;
}

/* --- life --- */

static void on_handle_closed(uv_handle_t *h)
{
	struct fp_link *l = h->data;

	l->handles--;
	maybe_done(l);
}

int fp_link_start(uv_loop_t *loop, const struct fp_link_cfg *cfg, const struct fp_link_ops *ops,
		  struct fp_link **ret)
{
	struct fp_link *l;

	*ret = NULL;
	if (!cfg->host || !*cfg->host || !cfg->port)
		return fp_err_detail(-EINVAL, "%s", "the server host and port are required");
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	if (getenv("FP_TEST_CLIENT_KILL_AFTER_BYTES") &&
	    fp_parse_u64(getenv("FP_TEST_CLIENT_KILL_AFTER_BYTES"), 1, UINT64_MAX, &l->kill_after) <
		    0)
		fp_log_warn("ignoring FP_TEST_CLIENT_KILL_AFTER_BYTES (not a positive integer)",
			    NULL);
	l->loop = loop;
	l->cfg = *cfg;
	if (ops)
		l->ops = *ops;
	l->host = strdup(cfg->host);
	l->server_name =
		strdup(cfg->server_name && *cfg->server_name ? cfg->server_name : cfg->host);
	l->client_id = strdup(cfg->client_id ? cfg->client_id : "");
	l->rbuf = malloc(LINK_RBUF);
	if (!l->host || !l->server_name || !l->client_id || !l->rbuf) {
		free(l->host);
		free(l->server_name);
		free(l->client_id);
		free(l->rbuf);
		free(l);
		return -ENOMEM;
	}
	if (cfg->model_digest)
		memcpy(l->digest, cfg->model_digest, FP_DIGEST_BYTES);
	if (!l->cfg.backoff_base_ms)
		l->cfg.backoff_base_ms = 1000;
	if (l->cfg.backoff_cap_ms < l->cfg.backoff_base_ms)
		l->cfg.backoff_cap_ms = l->cfg.backoff_base_ms;
	if (!l->cfg.heartbeat_ms)
		l->cfg.heartbeat_ms = 30000;
	uv_timer_init(loop, &l->retry);
	uv_timer_init(loop, &l->hb);
	uv_timer_init(loop, &l->kick);
	l->retry.data = l;
	l->hb.data = l;
	l->kick.data = l;
	l->handles = 3;
	if (!cfg->tls)
		fp_log_warn("INSECURE MODE: the connection to the server is plaintext and the "
			    "server is not authenticated; never use this outside development",
			    "server=%s", fp_q(l->host));
	connect_now(l);
	*ret = l;
	return 0;
}

void fp_link_stop(struct fp_link *l, void (*done)(struct fp_link *l, void *ud), void *ud)
{
	if (l->state == L_STOPPING)
		return;
	l->state = L_STOPPING;
	l->stopped = done;
	l->stopped_ud = ud;
	if (l->up) {
		uint64_t off;
		const char *t = fp_upload_tx_position(l->up, &off);

		fp_log_info("upload abandoned",
			    "round=%llu sent=%llu of=%llu tensor=%s offset=%llu",
			    (unsigned long long)fp_upload_tx_round(l->up),
			    (unsigned long long)fp_upload_tx_sent(l->up),
			    (unsigned long long)fp_upload_tx_total(l->up), fp_q(t),
			    (unsigned long long)off);
	}
	uv_close((uv_handle_t *)&l->retry, on_handle_closed);
	uv_close((uv_handle_t *)&l->hb, on_handle_closed);
	uv_close((uv_handle_t *)&l->kick, on_handle_closed);
	if (l->gai_active)
		uv_cancel((uv_req_t *)&l->gai);
	if (l->conn)
		fp_conn_close(l->conn, 0, "%s", "client shutting down");
	maybe_done(l);
}

bool fp_link_ready(const struct fp_link *l)
{
	return l->state == L_READY;
}

int fp_link_send(struct fp_link *l, const Fedprune__Envelope *e)
{
	if (l->state != L_READY)
		return -ENOTCONN;
	return fp_conn_send(l->conn, e);
}

struct fp_conn *fp_link_conn(const struct fp_link *l)
{
	return l->conn;
}

const struct fp_link_stats *fp_link_stats(const struct fp_link *l)
{
	return &l->st;
}

void *fp_link_data(const struct fp_link *l)
{
	return l->cfg.data;
}

const char *fp_link_identity(const struct fp_link *l)
{
	return l->identity;
}
