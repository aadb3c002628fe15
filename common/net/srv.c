/*
 * Server side of the protocol (see srv.h).
 */
#include "srv.h"

#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "frame.h"
#include "log.h"

#define MSG_TYPES  64
#define TRIM_MS	   2000 /* give freed heap back this long after the last handshake or close */
#define SRV_RBUF   (256u << 10)
#define CAPABILITY "upload-resume"

struct sconn {
	struct fp_srv *srv;
	struct fp_conn *c;
	struct fp_session *s; /* after Welcome */
	struct sconn *prev, *next;
};

struct fp_srv {
	uv_loop_t *loop;
	uv_tcp_t listener;
	uv_timer_t tick;
	uv_timer_t trim; /* malloc_trim once connections settle */
	struct fp_srv_cfg cfg;
	struct fp_srv_ops ops;
	fp_srv_handler handlers[MSG_TYPES];
	struct sconn *conns;
	struct fp_session *sessions;
	uint8_t *rbuf; /* (SRV_RBUF) read buffer shared by all connections */
	struct fp_srv_stats st;
	int handles; /* listener, tick and trim, until closed */
	bool stopping;
	void (*done)(struct fp_srv *srv, void *ud);
	void *done_ud;
	uint64_t last_warn;
	int port;
};

static uint64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *dash(const char *s)
{
	return s && *s ? s : "-";
}

/* --- sessions --- */

struct fp_session *fp_srv_session(struct fp_srv *srv, const char *identity)
{
	for (struct fp_session *s = srv->sessions; s; s = s->next)
		if (strcmp(s->identity, identity) == 0)
			return s;
	return NULL;
}

static struct fp_session *session_get(struct fp_srv *srv, const char *identity)
{
	struct fp_session *s = fp_srv_session(srv, identity);

	if (s)
		return s;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->srv = srv;
	snprintf(s->identity, sizeof(s->identity), "%s", identity);
	fp_upload_rx_init(&s->rx);
	s->next = srv->sessions;
	srv->sessions = s;
	srv->st.sessions++;
	return s;
}

static void session_free(struct fp_srv *srv, struct fp_session *s)
{
	if (srv->ops.on_session_free)
		srv->ops.on_session_free(srv, s);
	fp_upload_rx_free(&s->rx);
	free(s);
	srv->st.sessions--;
}

static void expire_sessions(struct fp_srv *srv, bool all)
{
	uint64_t now = uv_now(srv->loop);
	struct fp_session **pp = &srv->sessions;

	while (*pp) {
		struct fp_session *s = *pp;

		if (all ||
		    (!s->conn && s->gone_since && now - s->gone_since >= srv->cfg.session_ttl_ms)) {
			*pp = s->next;
			if (!all)
				fp_log_info("session expired", "identity=%s", fp_q(s->identity));
			session_free(srv, s);
		} else {
			pp = &s->next;
		}
	}
}

int fp_session_send(struct fp_session *s, const Fedprune__Envelope *e)
{
	if (!s->conn)
		return -ENOTCONN;
	return fp_conn_send(s->conn, e);
}

int fp_session_error(struct fp_session *s, Fedprune__ErrorCode code, bool fatal, const char *fmt,
		     ...)
{
	char msg[FP_TEXT_MAX + 1];
	va_list ap;

	if (!s->conn)
		return -ENOTCONN;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (fatal) {
		fp_conn_fail(s->conn, code, -EPROTO, "%s", msg);
		return 0;
	}
	fp_log_warn("error sent to client", "identity=%s peer=%s code=%s reason=%s",
		    fp_q(s->identity), fp_q(fp_conn_peer(s->conn)), fp_error_code_name(code),
		    fp_q(msg));
	return fp_conn_send_error(s->conn, code, false, msg);
}

/* --- default handlers --- */

static int h_heartbeat(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	Fedprune__Envelope out = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__Heartbeat hb = FEDPRUNE__HEARTBEAT__INIT;

	if (e->heartbeat->echo)
		return 0;
	hb.seq = e->heartbeat->seq;
	hb.unix_ms = wall_ms();
	hb.echo = true;
	out.version = FP_PROTO_VERSION;
	out.msg_case = FEDPRUNE__ENVELOPE__MSG_HEARTBEAT;
	out.heartbeat = &hb;
	srv->st.heartbeats++;
	return fp_session_send(s, &out) == -ENOMEM ? -ENOMEM : 0;
}

static int h_chunk(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	const struct fp_rx_tensor *done = NULL;
	Fedprune__ErrorCode code;
	int r;

	if (s->commit_pending)
		return fp_session_error(s, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER, false,
					"tensor '%s': the submission is being committed",
					e->chunk->tensor);
	r = fp_upload_rx_chunk(&s->rx, e->chunk, srv->cfg.max_upload, &code, &done);
	if (r == -ENOMEM)
		return r;
	if (r < 0)
		return fp_session_error(s, code,
					code != FEDPRUNE__ERROR_CODE__ERROR_DIGEST_MISMATCH, "%s",
					fp_err_last());
	srv->st.chunks++;
	if (srv->ops.on_chunk) {
		int c = srv->ops.on_chunk(srv, s, e->chunk);

		if (c > 0)
			return fp_session_error(s, (Fedprune__ErrorCode)c, true,
						"tensor '%s': chunk refused", e->chunk->tensor);
	}
	if (done && srv->ops.on_tensor)
		srv->ops.on_tensor(srv, s, done);
	return 0;
}

/* Send the Receipt for round_id: accepted when reason is empty. */
static int send_receipt(struct fp_session *s, uint64_t round_id, const char *reason)
{
	Fedprune__Envelope out = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__Receipt rc = FEDPRUNE__RECEIPT__INIT;
	struct fp_upload_rx *rx = &s->rx;
	char **have = NULL;
	size_t nhave = 0;
	int r;

	if (rx->round_id == round_id && rx->n) {
		have = calloc(rx->n, sizeof(*have));
		if (!have)
			return -ENOMEM;
		for (size_t i = 0; i < rx->n; i++)
			if (rx->t[i].complete)
				have[nhave++] = rx->t[i].name;
	}
	rc.round_id = round_id;
	rc.accepted = !reason[0];
	rc.reason = (char *)reason;
	rc.have_tensors = have;
	rc.n_have_tensors = nhave;
	if (rc.accepted) {
		rc.submission_digest.data = rx->submission;
		rc.submission_digest.len = FP_DIGEST_BYTES;
		s->srv->st.commits++;
		fp_log_info("submission committed", "identity=%s round=%llu tensors=%zu bytes=%llu",
			    fp_q(s->identity), (unsigned long long)round_id, rx->n,
			    (unsigned long long)rx->bytes);
	} else {
		fp_log_warn("submission not accepted", "identity=%s round=%llu reason=%s",
			    fp_q(s->identity), (unsigned long long)round_id, fp_q(reason));
	}
	out.version = FP_PROTO_VERSION;
	out.msg_case = FEDPRUNE__ENVELOPE__MSG_RECEIPT;
	out.receipt = &rc;
	r = s->conn ? fp_session_send(s, &out) : 0;
	free(have);
	return r == -ENOMEM ? r : 0;
}

static int h_commit(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	const Fedprune__Commit *cm = e->commit;
	char reason[FP_TEXT_MAX + 1] = "";
	int r;

	if (s->commit_pending)
		return fp_session_error(s, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER, false,
					"round %llu: the previous commit is still being stored",
					(unsigned long long)cm->round_id);
	r = fp_upload_rx_commit(&s->rx, cm);
	if (r == -ENOMEM)
		return r;
	if (r < 0) {
		snprintf(reason, sizeof(reason), "%s", fp_err_last());
	} else if (srv->ops.on_commit) {
		int c;

		/* pending while the application decides; it may answer at once or later with
		 * fp_session_commit_done (which also works from inside on_commit) */
		s->rx.committed = false;
		s->commit_pending = true;
		c = srv->ops.on_commit(srv, s, cm);
		if (c == FP_SRV_COMMIT_LATER)
			return 0;
		s->commit_pending = false;
		if (c > 0)
			snprintf(reason, sizeof(reason), "refused by the server (%s)",
				 fp_error_code_name(c));
		else
			s->rx.committed = true;
	}
	return send_receipt(s, cm->round_id, reason);
}

int fp_session_commit_done(struct fp_session *s, int code, const char *reason)
{
	char why[FP_TEXT_MAX + 1] = "";

	if (!s->commit_pending)
		return -EINVAL;
	s->commit_pending = false;
	if (code == 0) {
		s->rx.committed = true;
	} else {
		snprintf(why, sizeof(why), "%s (%s)", reason && reason[0] ? reason : "refused",
			 fp_error_code_name(code));
	}
	return send_receipt(s, s->rx.round_id, why);
}

static int h_upload_query(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	Fedprune__Envelope out = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__UploadStatus st;
	int r;

	(void)srv;
	r = fp_upload_rx_status(&s->rx, e->upload_query->round_id, &st);
	if (r < 0)
		return r;
	out.version = FP_PROTO_VERSION;
	out.msg_case = FEDPRUNE__ENVELOPE__MSG_UPLOAD_STATUS;
	out.upload_status = &st;
	r = fp_session_send(s, &out);
	fp_upload_status_free(&st);
	return r == -ENOMEM ? r : 0;
}

static void peer_error(struct fp_conn *c, const Fedprune__Error *err)
{
	fp_log_warn("client reported an error", "peer=%s identity=%s code=%s fatal=%d message=%s",
		    fp_q(fp_conn_peer(c)), fp_q(dash(fp_conn_identity(c))),
		    fp_error_code_name(err->code), err->fatal, fp_q(err->message));
	if (err->fatal)
		fp_conn_close(c, 0, "client reported a fatal error: %s", err->message);
}

static int h_error(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	(void)srv;
	peer_error(s->conn, e->error);
	return 0;
}

static int h_unsupported(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	(void)srv;
	return fp_session_error(s, FEDPRUNE__ERROR_CODE__ERROR_UNSUPPORTED, false,
				"message '%s' is not handled by this server",
				fp_msg_name(e->msg_case));
}

static fp_srv_handler default_handler(fp_msg_t type)
{
	switch (type) {
	case FEDPRUNE__ENVELOPE__MSG_HEARTBEAT:
		return h_heartbeat;
	case FEDPRUNE__ENVELOPE__MSG_CHUNK:
		return h_chunk;
	case FEDPRUNE__ENVELOPE__MSG_COMMIT:
		return h_commit;
	case FEDPRUNE__ENVELOPE__MSG_UPLOAD_QUERY:
		return h_upload_query;
	case FEDPRUNE__ENVELOPE__MSG_ERROR:
		return h_error;
	default:
		return h_unsupported;
	}
}

void fp_srv_set_handler(struct fp_srv *srv, fp_msg_t type, fp_srv_handler fn)
{
	if ((unsigned)type < MSG_TYPES)
		srv->handlers[type] = fn;
}

static void settle_later(struct fp_srv *srv);

/* --- connection events --- */

static bool allowed(struct fp_srv *srv, const char *id)
{
	return !srv->cfg.allow || srv->cfg.allow->n == 0 || fp_allowlist_has(srv->cfg.allow, id);
}

static void on_secure(struct fp_conn *c)
{
	struct sconn *sc = fp_conn_data(c);
	const char *id = fp_conn_identity(c);

	if (id && !allowed(sc->srv, id))
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_NOT_ALLOWED, -EACCES,
			     "identity '%s' is not in the allowlist", id);
}

static void welcome(struct sconn *sc, struct fp_session *s, const Fedprune__Hello *h, bool resumed)
{
	struct fp_srv *srv = sc->srv;
	Fedprune__Envelope out = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__Welcome w = FEDPRUNE__WELCOME__INIT;
	Fedprune__UploadStatus st;
	char *caps[] = { CAPABILITY };
	bool have_st = false;
	int r;

	w.identity = s->identity;
	w.protocol_version = FP_PROTO_VERSION;
	w.capabilities = caps;
	w.n_capabilities = 1;
	w.max_frame_bytes = (uint32_t)srv->cfg.conn.max_frame;
	w.heartbeat_ms = srv->cfg.heartbeat_ms;
	w.chunk_bytes = srv->cfg.chunk_bytes;
	w.resumed = resumed;
	if (h->resume_round && fp_upload_rx_status(&s->rx, h->resume_round, &st) == 0) {
		w.upload = &st;
		have_st = true;
	}
	out.version = FP_PROTO_VERSION;
	out.msg_case = FEDPRUNE__ENVELOPE__MSG_WELCOME;
	out.welcome = &w;
	r = fp_conn_send(sc->c, &out);
	if (have_st)
		fp_upload_status_free(&st);
	if (r < 0) {
		fp_conn_abort(sc->c, r, "cannot send welcome: %s", fp_strerror(r));
		return;
	}
	fp_conn_set_ready(sc->c);
	srv->st.welcomed++;
	settle_later(srv);
	fp_log_info("client joined", "identity=%s peer=%s tls=%s resumed=%d tokens=%llu",
		    fp_q(s->identity), fp_q(fp_conn_peer(sc->c)), fp_q(fp_conn_tls_version(sc->c)),
		    resumed, (unsigned long long)h->local_tokens);
	if (srv->ops.on_welcome)
		srv->ops.on_welcome(srv, s);
}

static void hello(struct sconn *sc, const Fedprune__Hello *h)
{
	struct fp_srv *srv = sc->srv;
	struct fp_conn *c = sc->c;
	struct fp_session *s;
	const char *id;
	bool resumed;

	if (h->protocol_version != FP_PROTO_VERSION) {
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_BAD_VERSION, -EPROTONOSUPPORT,
			     "protocol version %u is not supported (this server speaks %u)",
			     h->protocol_version, FP_PROTO_VERSION);
		return;
	}
	if (!srv->cfg.tls && !fp_conn_identity(c)) {
		/* Insecure mode: the client names itself. */
		if (!fp_identity_valid(h->client_id)) {
			fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, -EPROTO, "%s",
				     "insecure mode: hello needs a valid client_id");
			return;
		}
		if (!allowed(srv, h->client_id)) {
			fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_NOT_ALLOWED, -EACCES,
				     "identity '%s' is not in the allowlist", h->client_id);
			return;
		}
		fp_conn_set_identity(c, h->client_id);
	}
	id = fp_conn_identity(c);
	if (!id) {
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL, -EPROTO, "%s",
			     "no identity for this connection");
		return;
	}
	s = session_get(srv, id);
	if (!s) {
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL, -ENOMEM, "%s",
			     "out of memory");
		return;
	}
	if (s->conn && s->conn != c) {
		struct fp_conn *old = s->conn;
		struct sconn *osc = fp_conn_data(old);

		osc->s = NULL;
		s->conn = NULL;
		fp_conn_fail(old, FEDPRUNE__ERROR_CODE__ERROR_REPLACED, -EEXIST,
			     "replaced by a new connection from %s", fp_conn_peer(c));
	}
	resumed = s->connects > 0;
	s->conn = c;
	s->gone_since = 0;
	s->connects++;
	s->local_tokens = h->local_tokens;
	s->capacity = h->capacity;
	sc->s = s;
	if (srv->ops.on_hello) {
		int code = srv->ops.on_hello(srv, s, h);

		if (code > 0) {
			s->conn = NULL;
			s->gone_since = uv_now(srv->loop) | 1;
			sc->s = NULL;
			fp_conn_fail(c, (Fedprune__ErrorCode)code, -EACCES,
				     "refused by the server (%s)", fp_error_code_name(code));
			return;
		}
	}
	welcome(sc, s, h, resumed);
}

static void on_msg(struct fp_conn *c, const Fedprune__Envelope *e)
{
	struct sconn *sc = fp_conn_data(c);
	struct fp_srv *srv = sc->srv;
	fp_srv_handler h;
	int r;

	if (!sc->s) {
		if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_HELLO)
			hello(sc, e->hello);
		else if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_ERROR)
			peer_error(c, e->error);
		else
			fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER, -EPROTO,
				     "message '%s' before hello", fp_msg_name(e->msg_case));
		return;
	}
	if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_HELLO) {
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER, -EPROTO, "%s",
			     "second hello on one connection");
		return;
	}
	h = (unsigned)e->msg_case < MSG_TYPES ? srv->handlers[e->msg_case] : NULL;
	if (!h)
		h = default_handler(e->msg_case);
	fp_err_clear();
	r = h(srv, sc->s, e);
	if (r < 0)
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_INTERNAL, r, "handling '%s': %s",
			     fp_msg_name(e->msg_case),
			     *fp_err_last() ? fp_err_last() : fp_strerror(r));
}

/*
 * A burst of handshakes leaves the heap fragmented by their transient buffers; once the
 * connections settle, return the free pages to the system (glibc) so the resident size is
 * what the connections really hold.
 */
static void on_trim(uv_timer_t *t)
{
	(void)t;
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

static void settle_later(struct fp_srv *srv)
{
	if (!srv->stopping)
		uv_timer_start(&srv->trim, on_trim, TRIM_MS, 0);
}

static void maybe_done(struct fp_srv *srv)
{
	if (!srv->stopping || srv->conns || srv->handles)
		return;
	expire_sessions(srv, true);
	if (srv->done)
		srv->done(srv, srv->done_ud);
	free(srv->rbuf);
	free(srv);
}

static void on_close(struct fp_conn *c)
{
	struct sconn *sc = fp_conn_data(c);
	struct fp_srv *srv = sc->srv;
	const char *id = fp_conn_identity(c), *claimed = fp_conn_claimed(c);
	const char *reason = fp_conn_reason(c);
	int err = fp_conn_error(c);

	if (err) {
		srv->st.rejected++;
		fp_log_warn(
			"connection closed", "peer=%s identity=%s%s%s reason=%s err=%s",
			fp_q(fp_conn_peer(c)), fp_q(dash(id)), claimed && !id ? " claimed_cn=" : "",
			claimed && !id ? fp_q(claimed) : "", fp_q(reason), fp_q(fp_strerror(err)));
	} else {
		fp_log_info("connection closed", "peer=%s identity=%s reason=%s",
			    fp_q(fp_conn_peer(c)), fp_q(dash(id)), fp_q(reason));
	}
	if (sc->s && sc->s->conn == c) {
		sc->s->conn = NULL;
		sc->s->gone_since = uv_now(srv->loop) | 1;
		if (srv->ops.on_leave)
			srv->ops.on_leave(srv, sc->s, reason);
	}
	if (srv->ops.on_conn_closed)
		srv->ops.on_conn_closed(srv, fp_conn_peer(c), id, claimed, reason, err);
	if (sc->prev)
		sc->prev->next = sc->next;
	else
		srv->conns = sc->next;
	if (sc->next)
		sc->next->prev = sc->prev;
	free(sc);
	srv->st.conns--;
	settle_later(srv);
	maybe_done(srv);
}

static const struct fp_conn_ops srv_conn_ops = {
	.on_secure = on_secure,
	.on_msg = on_msg,
	.on_close = on_close,
};

static struct sconn *sconn_new(struct fp_srv *srv)
{
	struct sconn *sc = calloc(1, sizeof(*sc));

	if (sc)
		sc->srv = srv;
	return sc;
}

static void sconn_link(struct fp_srv *srv, struct sconn *sc)
{
	sc->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = sc;
	srv->conns = sc;
	srv->st.conns++;
}

static void conn_cfg(struct fp_srv *srv, struct sconn *sc, struct fp_conn_cfg *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->ops = &srv_conn_ops;
	cfg->opts = srv->cfg.conn;
	cfg->tls = srv->cfg.tls;
	cfg->rbuf = srv->rbuf;
	cfg->rbuf_size = SRV_RBUF;
	cfg->data = sc;
}

static void on_connection(uv_stream_t *l, int status)
{
	struct fp_srv *srv = l->data;
	struct fp_conn_cfg cfg;
	struct sconn *sc;
	struct fp_conn *c;
	int r;

	if (status < 0) {
		fp_log_warn("accept failed", "err=%s", fp_q(uv_strerror(status)));
		return;
	}
	sc = sconn_new(srv);
	if (!sc) {
		fp_log_err("accept failed", "err=%s", "out-of-memory");
		return;
	}
	conn_cfg(srv, sc, &cfg);
	r = fp_conn_accept(l, &cfg, &c);
	if (r < 0) {
		free(sc);
		fp_log_warn("accept failed", "err=%s", fp_q(fp_strerror(r)));
		return;
	}
	sc->c = c;
	sconn_link(srv, sc);
	srv->st.accepted++;
	if (srv->st.conns > srv->cfg.max_clients)
		fp_conn_close(c, -EBUSY, "too many clients (max_clients = %u)",
			      srv->cfg.max_clients);
}

int fp_srv_attach_virtual(struct fp_srv *srv, const char *identity, fp_conn_sink_fn sink, void *ud,
			  struct fp_conn **ret)
{
	struct fp_conn_cfg cfg;
	struct sconn *sc = sconn_new(srv);
	int r;

	*ret = NULL;
	if (!sc)
		return -ENOMEM;
	conn_cfg(srv, sc, &cfg);
	sconn_link(srv, sc);
	r = fp_conn_new_virtual(srv->loop, &cfg, srv->cfg.tls ? identity : NULL, sink, ud, &sc->c);
	if (r < 0) {
		srv->conns = sc->next;
		if (sc->next)
			sc->next->prev = NULL;
		srv->st.conns--;
		free(sc);
		return r;
	}
	*ret = sc->c;
	return 0;
}

/* --- life --- */

static void on_tick(uv_timer_t *t)
{
	struct fp_srv *srv = t->data;
	uint64_t now = uv_now(srv->loop);

	if (!srv->cfg.tls && now - srv->last_warn >= srv->cfg.insecure_warn_ms) {
		srv->last_warn = now;
		fp_log_warn("INSECURE MODE: connections are plaintext and clients are not "
			    "authenticated; never use this outside development",
			    "clients=%zu", srv->st.conns);
	}
	expire_sessions(srv, false);
}

static void on_handle_closed(uv_handle_t *h)
{
	struct fp_srv *srv = h->data;

	srv->handles--;
	maybe_done(srv);
}

static int bind_listen(struct fp_srv *srv)
{
	struct sockaddr_storage ss;
	int len = sizeof(ss), r;

	if (!srv->cfg.listen)
		return 0;
	memset(&ss, 0, sizeof(ss));
	if (uv_ip4_addr(srv->cfg.listen, srv->cfg.port, (struct sockaddr_in *)&ss) < 0 &&
	    uv_ip6_addr(srv->cfg.listen, srv->cfg.port, (struct sockaddr_in6 *)&ss) < 0)
		return fp_err_detail(-EINVAL, "listen address '%s' is not an IPv4 or IPv6 literal",
				     srv->cfg.listen);
	r = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&ss, 0);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&srv->listener, 511, on_connection);
	if (r < 0)
		return fp_err_detail(r, "cannot listen on %s port %u: %s", srv->cfg.listen,
				     srv->cfg.port, uv_strerror(r));
	memset(&ss, 0, sizeof(ss));
	if (uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len) == 0)
		srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
							   : ((struct sockaddr_in *)&ss)->sin_port);
	return 0;
}

int fp_srv_start(uv_loop_t *loop, const struct fp_srv_cfg *cfg, const struct fp_srv_ops *ops,
		 struct fp_srv **ret)
{
	struct fp_srv *srv;
	uint64_t tick;
	int r;

	*ret = NULL;
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	srv->rbuf = malloc(SRV_RBUF);
	if (!srv->rbuf) {
		free(srv);
		return -ENOMEM;
	}
	srv->loop = loop;
	srv->cfg = *cfg;
	if (ops)
		srv->ops = *ops;
	if (!srv->cfg.max_clients)
		srv->cfg.max_clients = 1024;
	if (!srv->cfg.conn.max_frame)
		srv->cfg.conn.max_frame = FP_FRAME_MAX_DEFAULT;
	if (!srv->cfg.heartbeat_ms)
		srv->cfg.heartbeat_ms = 30000;
	if (!srv->cfg.chunk_bytes)
		srv->cfg.chunk_bytes = 1u << 20;
	if (srv->cfg.chunk_bytes > srv->cfg.conn.max_frame / 2)
		srv->cfg.chunk_bytes = (uint32_t)(srv->cfg.conn.max_frame / 2);
	if (!srv->cfg.max_upload)
		srv->cfg.max_upload = UINT64_MAX;
	if (!srv->cfg.session_ttl_ms)
		srv->cfg.session_ttl_ms = 3600 * 1000;
	if (!srv->cfg.insecure_warn_ms)
		srv->cfg.insecure_warn_ms = 60000;
	uv_tcp_init(loop, &srv->listener);
	uv_timer_init(loop, &srv->tick);
	uv_timer_init(loop, &srv->trim);
	srv->listener.data = srv;
	srv->tick.data = srv;
	srv->trim.data = srv;
	srv->handles = 3;
	r = bind_listen(srv);
	if (r < 0) {
		srv->stopping = true;
		srv->done = NULL;
		uv_close((uv_handle_t *)&srv->listener, on_handle_closed);
		uv_close((uv_handle_t *)&srv->tick, on_handle_closed);
		uv_close((uv_handle_t *)&srv->trim, on_handle_closed);
		return r;
	}
	tick = srv->cfg.session_ttl_ms < 60000 ? srv->cfg.session_ttl_ms : 60000;
	if (!srv->cfg.tls && srv->cfg.insecure_warn_ms < tick)
		tick = srv->cfg.insecure_warn_ms;
	srv->last_warn = uv_now(loop);
	if (!srv->cfg.tls)
		fp_log_warn("INSECURE MODE: connections are plaintext and clients are not "
			    "authenticated; never use this outside development",
			    "listen=%s port=%d", fp_q(srv->cfg.listen ? srv->cfg.listen : "-"),
			    srv->port);
	uv_timer_start(&srv->tick, on_tick, tick, tick);
	*ret = srv;
	return 0;
}

int fp_srv_port(const struct fp_srv *srv)
{
	return srv->port;
}

const struct fp_srv_stats *fp_srv_stats(const struct fp_srv *srv)
{
	return &srv->st;
}

void *fp_srv_data(const struct fp_srv *srv)
{
	return srv->cfg.data;
}

void fp_srv_stop(struct fp_srv *srv, void (*done)(struct fp_srv *srv, void *ud), void *ud)
{
	if (srv->stopping)
		return;
	srv->stopping = true;
	srv->done = done;
	srv->done_ud = ud;
	uv_close((uv_handle_t *)&srv->listener, on_handle_closed);
	uv_close((uv_handle_t *)&srv->tick, on_handle_closed);
	uv_close((uv_handle_t *)&srv->trim, on_handle_closed);
	for (struct fp_session *s = srv->sessions; s; s = s->next) {
		if (s->rx.n && !s->rx.committed)
			fp_log_info("upload abandoned",
				    "identity=%s round=%llu received=%llu "
				    "of_announced=%llu tensors=%zu",
				    fp_q(s->identity), (unsigned long long)s->rx.round_id,
				    (unsigned long long)s->rx.received_bytes,
				    (unsigned long long)s->rx.bytes, s->rx.n);
	}
	for (struct sconn *sc = srv->conns, *next; sc; sc = next) {
		next = sc->next;
		fp_conn_fail(sc->c, FEDPRUNE__ERROR_CODE__ERROR_SHUTTING_DOWN, 0, "%s",
			     "server shutting down");
	}
	maybe_done(srv);
}
