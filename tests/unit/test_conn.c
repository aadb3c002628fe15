/*
 * The transport over real loopback sockets, server and clients on one libuv loop: a round
 * trip of every message type, 1-byte writes, disconnects mid-frame, every hostile case the
 * issue lists (each logged with the peer address and a reason while another client keeps
 * working), uploads with back-pressure and resume, reconnect backoff, fatal authentication
 * failures, insecure mode, and clean shutdowns (uv_loop_close() == 0 at the end of each test).
 */
#include "test.h"

#include <fcntl.h>
#include <signal.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "err.h"
#include "frame.h"
#include "link.h"
#include "net_certs.h"
#include "net_msgs.h"
#include "srv.h"
#include "tls.h"

#define HB_MS	   50
#define WAIT_MS	   20000 /* generous: valgrind runs these too */
#define CHUNK	   (64u << 10)
#define WQ_HIGH	   (256u << 10)
#define MAX_CLOSED 64

static struct fp_test_pki pki;

/* --- the server side of a test --- */

struct closed_rec {
	char peer[64], id[80], claimed[80], reason[256];
	int err;
};

struct sink_tensor {
	char name[96];
	uint8_t *data;
	uint64_t total, got;
};

struct world {
	uv_loop_t loop;
	SSL_CTX *sctx;
	struct fp_srv *srv;
	struct fp_allowlist allow;
	int port;
	struct closed_rec closed[MAX_CLOSED];
	int nclosed;
	bool srv_done;
	int hellos;
	/* round trip: bytes of each message type the server received, compared on arrival */
	int c2s_ok[64];
	/* upload sink */
	struct sink_tensor sink[8];
	int nsink;
	uint64_t sink_bytes;
	int restarts;
	int tensors_done;
	uint64_t stop_after; /* abort the uploader's connection once this much arrived (0: no) */
	int srv_lowat;	     /* TCP_NOTSENT_LOWAT of the server's socket (round trip) */
};

static void rec_closed(struct fp_srv *srv, const char *peer, const char *id, const char *claimed,
		       const char *reason, int err)
{
	struct world *w = fp_srv_data(srv);
	struct closed_rec *r;

	if (w->nclosed >= MAX_CLOSED)
		return;
	r = &w->closed[w->nclosed++];
	snprintf(r->peer, sizeof(r->peer), "%s", peer);
	snprintf(r->id, sizeof(r->id), "%s", id ? id : "");
	snprintf(r->claimed, sizeof(r->claimed), "%s", claimed ? claimed : "");
	snprintf(r->reason, sizeof(r->reason), "%s", reason);
	r->err = err;
}

static int rec_hello(struct fp_srv *srv, struct fp_session *s, const Fedprune__Hello *h)
{
	struct world *w = fp_srv_data(srv);

	(void)s;
	(void)h;
	w->hellos++;
	return 0;
}

static uint8_t tensor_byte(int t, uint64_t off)
{
	return (uint8_t)(((off * 2654435761u) >> 13) + (uint64_t)t * 7);
}

static int sink_chunk(struct fp_srv *srv, struct fp_session *s, const Fedprune__TensorChunk *c)
{
	struct world *w = fp_srv_data(srv);
	struct sink_tensor *t = NULL;

	for (int i = 0; i < w->nsink; i++)
		if (strcmp(w->sink[i].name, c->tensor) == 0)
			t = &w->sink[i];
	if (!t) {
		assert_true(w->nsink < 8);
		t = &w->sink[w->nsink++];
		snprintf(t->name, sizeof(t->name), "%s", c->tensor);
		t->total = c->total_bytes;
		t->data = calloc(1, c->total_bytes ? c->total_bytes : 1);
		assert_non_null(t->data);
	}
	/* The transport already checked that chunks come in order and fit; a tensor whose
	 * digest did not match starts over at offset 0. */
	if (c->offset == 0 && t->got) {
		t->got = 0;
		w->restarts++;
	}
	assert_int_equal(c->offset, t->got);
	if (c->data.len)
		memcpy(t->data + c->offset, c->data.data, c->data.len);
	t->got += c->data.len;
	w->sink_bytes += c->data.len;
	if (w->stop_after && w->sink_bytes >= w->stop_after) {
		/* The connection dies with the rest of the upload still in flight. */
		w->stop_after = 0;
		fp_conn_abort(s->conn, -ECONNRESET, "%s", "test: cable pulled");
	}
	return 0;
}

static void sink_tensor(struct fp_srv *srv, struct fp_session *s, const struct fp_rx_tensor *t)
{
	struct world *w = fp_srv_data(srv);

	(void)s;
	(void)t;
	w->tensors_done++;
}

struct world_opts {
	bool insecure;
	uint32_t max_clients;
	const char *allow;
	uint64_t handshake_ms, idle_ms, msg_ms;
	size_t max_frame;
};

static void world_start(struct world *w, const struct world_opts *o)
{
	struct fp_srv_ops ops = { .on_conn_closed = rec_closed,
				  .on_hello = rec_hello,
				  .on_chunk = sink_chunk,
				  .on_tensor = sink_tensor };
	struct fp_srv_cfg cfg = { 0 };

	memset(w, 0, sizeof(*w));
	assert_int_equal(uv_loop_init(&w->loop), 0);
	if (!o->insecure)
		w->sctx = fp_test_server_ctx(&pki);
	if (o->allow)
		assert_int_equal(fp_allowlist_parse("allow", o->allow, strlen(o->allow), &w->allow),
				 0);
	cfg.listen = "127.0.0.1";
	cfg.max_clients = o->max_clients ? o->max_clients : 64;
	cfg.tls = w->sctx;
	cfg.allow = o->allow ? &w->allow : NULL;
	cfg.conn.max_frame = o->max_frame ? o->max_frame : (1u << 20);
	cfg.conn.handshake_ms = o->handshake_ms ? o->handshake_ms : 10000;
	cfg.conn.idle_ms = o->idle_ms ? o->idle_ms : 10000;
	cfg.conn.msg_ms = o->msg_ms ? o->msg_ms : 10000;
	cfg.conn.wq_high = WQ_HIGH;
	cfg.conn.wq_low = WQ_HIGH / 4;
	cfg.conn.linger_ms = 1000;
	cfg.heartbeat_ms = HB_MS;
	cfg.chunk_bytes = CHUNK;
	cfg.insecure_warn_ms = 100;
	cfg.data = w;
	if (fp_srv_start(&w->loop, &cfg, &ops, &w->srv) < 0)
		fail_msg("server: %s", fp_err_last());
	w->port = fp_srv_port(w->srv);
	assert_true(w->port > 0);
}

static void guard_cb(uv_timer_t *t)
{
	(void)t;
}

static bool run_until(uv_loop_t *loop, bool (*cond)(void *), void *ud, uint64_t ms)
{
	uv_timer_t guard;
	uint64_t end;

	uv_update_time(loop);
	end = uv_now(loop) + ms;
	uv_timer_init(loop, &guard);
	uv_timer_start(&guard, guard_cb, 5, 5);
	while (!cond(ud) && uv_now(loop) < end)
		uv_run(loop, UV_RUN_ONCE);
	uv_close((uv_handle_t *)&guard, NULL);
	uv_run(loop, UV_RUN_NOWAIT);
	return cond(ud);
}

static bool srv_is_done(void *ud)
{
	return ((struct world *)ud)->srv_done;
}

static void srv_done_cb(struct fp_srv *srv, void *ud)
{
	(void)srv;
	((struct world *)ud)->srv_done = true;
}

static void world_stop(struct world *w)
{
	fp_srv_stop(w->srv, srv_done_cb, w);
	assert_true(run_until(&w->loop, srv_is_done, w, WAIT_MS));
	uv_run(&w->loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&w->loop), 0);
	SSL_CTX_free(w->sctx);
	fp_allowlist_free(&w->allow);
	for (int i = 0; i < w->nsink; i++)
		free(w->sink[i].data);
}

/* --- log capture: stderr into a file while a case runs --- */

struct capture {
	int saved;
	char path[64];
};

static void capture_begin(struct capture *c)
{
	int fd;

	snprintf(c->path, sizeof(c->path), "/tmp/fp-test-conn-log-XXXXXX");
	fd = mkstemp(c->path);
	assert_true(fd >= 0);
	c->saved = dup(2);
	assert_true(c->saved >= 0);
	/* If the process dies meanwhile, its last words are in this file. */
	printf("(stderr captured in %s)\n", c->path);
	assert_true(dup2(fd, 2) == 2);
	close(fd);
}

/* Restore stderr; returns what was logged (caller frees) and echoes it to stdout. */
static char *capture_end(struct capture *c)
{
	FILE *f;
	char *buf;
	long n;

	assert_true(dup2(c->saved, 2) == 2);
	close(c->saved);
	f = fopen(c->path, "r");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = calloc(1, (size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	unlink(c->path);
	printf("%s", buf);
	return buf;
}

/* The line of log that contains both a and b (caller frees); fails the test if none. */
static char *log_line(const char *log, const char *a, const char *b)
{
	const char *p = log;

	while (*p) {
		const char *e = strchr(p, '\n');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		char *line = strndup(p, n);

		assert_non_null(line);
		if (strstr(line, a) && strstr(line, b))
			return line;
		free(line);
		p += n + (e != NULL);
	}
	fail_msg("no log line with '%s' and '%s'", a, b);
	return NULL;
}

/* --- a well-behaved client (fp_link) --- */

struct linkrec {
	struct fp_link *l;
	SSL_CTX *ctx;
	int ready, down, fatal, errors, receipts;
	Fedprune__ErrorCode last_error;
	bool stopped;
	/* upload outcome */
	bool up_done;
	int up_status;
	char up_reason[256];
};

static void lr_ready(struct fp_link *l, const Fedprune__Welcome *w)
{
	struct linkrec *r = fp_link_data(l);

	(void)w;
	r->ready++;
}

static void lr_msg(struct fp_link *l, const Fedprune__Envelope *e)
{
	struct linkrec *r = fp_link_data(l);

	if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_ERROR) {
		r->errors++;
		r->last_error = e->error->code;
	} else if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_RECEIPT) {
		r->receipts++;
	}
}

static void lr_down(struct fp_link *l, const char *reason, bool fatal)
{
	struct linkrec *r = fp_link_data(l);

	(void)reason;
	r->down++;
	r->fatal += fatal;
}

static void link_start(struct world *w, struct linkrec *r, const char *cn, int flags)
{
	struct fp_link_ops ops = { .on_ready = lr_ready, .on_msg = lr_msg, .on_down = lr_down };
	struct fp_link_cfg cfg = { 0 };

	memset(r, 0, sizeof(*r));
	if (w->sctx)
		r->ctx = fp_test_client_ctx(&pki, cn, flags, 0);
	cfg.host = "127.0.0.1"; /* verified against the IP SAN */
	cfg.port = (uint16_t)w->port;
	cfg.tls = r->ctx;
	cfg.client_id = cn;
	cfg.conn.max_frame = 1u << 20;
	cfg.conn.handshake_ms = 10000;
	cfg.conn.idle_ms = 10000;
	cfg.conn.msg_ms = 10000;
	cfg.conn.wq_high = WQ_HIGH;
	cfg.conn.wq_low = WQ_HIGH / 4;
	cfg.conn.linger_ms = 1000;
	cfg.heartbeat_ms = HB_MS;
	cfg.backoff_base_ms = 20;
	cfg.backoff_cap_ms = 200;
	cfg.local_tokens = 1000;
	cfg.capacity = 0.5;
	cfg.data = r;
	assert_int_equal(fp_link_start(&w->loop, &cfg, &ops, &r->l), 0);
}

static bool lr_is_ready(void *ud)
{
	struct linkrec *r = ud;

	return r->ready > 0 && fp_link_ready(r->l);
}

static void lr_stopped(struct fp_link *l, void *ud)
{
	(void)l;
	((struct linkrec *)ud)->stopped = true;
}

static bool lr_is_stopped(void *ud)
{
	return ((struct linkrec *)ud)->stopped;
}

static void link_stop(struct world *w, struct linkrec *r)
{
	fp_link_stop(r->l, lr_stopped, r);
	assert_true(run_until(&w->loop, lr_is_stopped, r, WAIT_MS));
	SSL_CTX_free(r->ctx);
	r->ctx = NULL;
}

struct echo_wait {
	struct linkrec *r;
	uint64_t want;
};

static bool echoes_reached(void *ud)
{
	struct echo_wait *e = ud;

	return fp_link_stats(e->r->l)->echoes >= e->want;
}

/* The good client is still connected on its first connection and heartbeats get answered. */
static void still_working(struct world *w, struct linkrec *r)
{
	struct echo_wait e = { r, fp_link_stats(r->l)->echoes + 2 };

	assert_true(run_until(&w->loop, echoes_reached, &e, WAIT_MS));
	assert_true(fp_link_ready(r->l));
	assert_int_equal(fp_link_stats(r->l)->connects, 1);
	assert_int_equal(r->down, 0);
}

/* --- a scripted client on fp_conn (for hostile and round-trip cases) --- */

struct raw;
typedef void (*raw_act)(struct raw *r, const Fedprune__Envelope *e);

struct raw {
	struct world *w;
	struct fp_conn *c;
	SSL_CTX *ctx;
	raw_act act; /* called when secure (e == NULL) and for every message */
	bool secure, closed, welcomed, got_error;
	Fedprune__ErrorCode error_code;
	char reason[256];
	int msgs;
	int s2c_ok[64];
	int step;
};

static void raw_secure(struct fp_conn *c)
{
	struct raw *r = fp_conn_data(c);

	r->secure = true;
	if (r->act)
		r->act(r, NULL);
}

static void raw_msg(struct fp_conn *c, const Fedprune__Envelope *e)
{
	struct raw *r = fp_conn_data(c);

	r->msgs++;
	if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_WELCOME && !r->welcomed) {
		r->welcomed = true;
		fp_conn_set_ready(c);
	} else if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_ERROR && !r->got_error) {
		r->got_error = true;
		r->error_code = e->error->code;
	}
	if (r->act)
		r->act(r, e);
}

static void raw_close(struct fp_conn *c)
{
	struct raw *r = fp_conn_data(c);

	r->closed = true;
	r->c = NULL;
	snprintf(r->reason, sizeof(r->reason), "%s", fp_conn_reason(c));
}

static const struct fp_conn_ops raw_ops = {
	.on_secure = raw_secure,
	.on_msg = raw_msg,
	.on_close = raw_close,
};

/* cn: client certificate CN (NULL none); flags: FP_CERT_*; maxver: TLS1_2_VERSION or 0. */
static void raw_connect(struct world *w, struct raw *r, const char *cn, int flags, int maxver,
			raw_act act)
{
	struct fp_conn_cfg cfg = { 0 };
	struct sockaddr_in addr;

	memset(r, 0, sizeof(*r));
	r->w = w;
	r->act = act;
	if (w->sctx)
		r->ctx = fp_test_client_ctx(&pki, cn, flags, maxver);
	cfg.ops = &raw_ops;
	cfg.opts.max_frame = 1u << 20;
	cfg.opts.handshake_ms = 0;
	cfg.opts.linger_ms = 1000;
	cfg.tls = r->ctx;
	cfg.server_name = "localhost";
	cfg.data = r;
	uv_ip4_addr("127.0.0.1", w->port, &addr);
	assert_int_equal(fp_conn_connect(&w->loop, (const struct sockaddr *)&addr, &cfg, &r->c), 0);
}

static bool raw_is_closed(void *ud)
{
	return ((struct raw *)ud)->closed;
}

static void raw_free(struct raw *r)
{
	SSL_CTX_free(r->ctx);
	r->ctx = NULL;
}

static void send_hello(struct raw *r, uint32_t version, const char *id)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__Hello h = FEDPRUNE__HELLO__INIT;

	h.client_id = (char *)id;
	h.protocol_version = version;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_HELLO;
	e.hello = &h;
	assert_int_equal(fp_conn_send(r->c, &e), 0);
}

static void send_sample_cb(const Fedprune__Envelope *e, void *ud)
{
	assert_int_equal(fp_conn_send(ud, e), 0);
}

static void send_sample(struct fp_conn *c, fp_msg_t type)
{
	fp_test_with_sample(type, send_sample_cb, c);
}

/* --- round trip of every message type --- */

static bool same_as_sample(const Fedprune__Envelope *e)
{
	size_t a, b;
	uint8_t *pa = fp_test_pack(e, &a), *pb = fp_test_sample(e->msg_case, &b);
	bool same = a == b && memcmp(pa, pb, a) == 0;

	free(pa);
	free(pb);
	return same;
}

/* TCP_NOTSENT_LOWAT of c's socket. */
static int notsent_lowat(const struct fp_conn *c)
{
	int fd = fp_conn_fd(c), v = -1;
	socklen_t len = sizeof(v);

	assert_true(fd >= 0);
	assert_int_equal(getsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &v, &len), 0);
	return v;
}

static int rt_record(struct fp_srv *srv, struct fp_session *s, const Fedprune__Envelope *e)
{
	struct world *w = fp_srv_data(srv);

	assert_string_equal(s->identity, "alice");
	w->srv_lowat = notsent_lowat(s->conn);
	if (same_as_sample(e))
		w->c2s_ok[e->msg_case]++;
	else
		fail_msg("server received a changed '%s'", fp_msg_name(e->msg_case));
	/* The last client message asks for every server message in return. */
	if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_RESULT_REQUEST) {
		for (size_t i = 0; i < fp_test_n_msg_types; i++) {
			fp_msg_t t = fp_test_msg_types[i];

			if (fp_msg_senders(t) & FP_FROM_SERVER)
				send_sample(s->conn, t);
		}
	}
	return 0;
}

static void rt_act(struct raw *r, const Fedprune__Envelope *e)
{
	if (!e) {
		send_sample(r->c, FEDPRUNE__ENVELOPE__MSG_HELLO);
		return;
	}
	if (r->step == 0) {
		/* The real Welcome: identity echoed from the certificate. */
		assert_int_equal(e->msg_case, FEDPRUNE__ENVELOPE__MSG_WELCOME);
		assert_string_equal(e->welcome->identity, "alice");
		assert_int_equal(e->welcome->protocol_version, FP_PROTO_VERSION);
		assert_int_equal(e->welcome->heartbeat_ms, HB_MS);
		r->step = 1;
		for (size_t i = 0; i < fp_test_n_msg_types; i++) {
			fp_msg_t t = fp_test_msg_types[i];

			if ((fp_msg_senders(t) & FP_FROM_CLIENT) &&
			    t != FEDPRUNE__ENVELOPE__MSG_HELLO &&
			    t != FEDPRUNE__ENVELOPE__MSG_RESULT_REQUEST)
				send_sample(r->c, t);
		}
		send_sample(r->c, FEDPRUNE__ENVELOPE__MSG_RESULT_REQUEST);
		return;
	}
	if (same_as_sample(e))
		r->s2c_ok[e->msg_case]++;
	else
		fail_msg("client received a changed '%s'", fp_msg_name(e->msg_case));
}

struct rt_wait {
	struct world *w;
	struct raw *r;
};

static bool rt_complete(void *ud)
{
	struct rt_wait *x = ud;

	for (size_t i = 0; i < fp_test_n_msg_types; i++) {
		fp_msg_t t = fp_test_msg_types[i];

		if ((fp_msg_senders(t) & FP_FROM_CLIENT) && t != FEDPRUNE__ENVELOPE__MSG_HELLO &&
		    x->w->c2s_ok[t] != 1)
			return false;
		if ((fp_msg_senders(t) & FP_FROM_SERVER) && x->r->s2c_ok[t] != 1)
			return false;
	}
	return true;
}

static void test_round_trip_every_message(void **state)
{
	struct world_opts o = { 0 };
	struct world w;
	struct raw r;
	struct rt_wait x = { &w, &r };

	(void)state;
	world_start(&w, &o);
	for (size_t i = 0; i < fp_test_n_msg_types; i++) {
		fp_msg_t t = fp_test_msg_types[i];

		if ((fp_msg_senders(t) & FP_FROM_CLIENT) && t != FEDPRUNE__ENVELOPE__MSG_HELLO)
			fp_srv_set_handler(w.srv, t, rt_record);
	}
	raw_connect(&w, &r, "alice", 0, 0, rt_act);
	assert_true(run_until(&w.loop, rt_complete, &x, WAIT_MS));
	assert_int_equal(w.hellos, 1);
	assert_string_equal(fp_conn_tls_version(r.c), "TLSv1.3 TLS_AES_128_GCM_SHA256");
	assert_string_equal(fp_conn_identity(r.c), "localhost");
	/* Both sides keep at most 256 KiB unsent in the kernel (the rest waits in the queue). */
	assert_int_equal(w.srv_lowat, 256 << 10);
	assert_int_equal(notsent_lowat(r.c), 256 << 10);
	fp_conn_close(r.c, 0, "%s", "test done");
	assert_true(run_until(&w.loop, raw_is_closed, &r, WAIT_MS));
	raw_free(&r);
	world_stop(&w);
	assert_int_equal(w.nclosed, 1);
	assert_int_equal(w.closed[0].err, 0);
	assert_string_equal(w.closed[0].id, "alice");
}

/* --- 1-byte writes: a client whose every byte is a separate write --- */

struct slow {
	uv_tcp_t tcp;
	uv_connect_t creq;
	uv_write_t wreq;
	struct fp_tls *tls;
	uint8_t *out; /* bytes to send, one per write */
	size_t out_len, out_off, out_cap;
	bool writing, connected, closed;
	uint8_t byte;
	struct fp_frame_dec dec;
	int welcomes, echoes, errors;
	bool sent_msgs;
	uint64_t writes;
};

static int slow_out(void *ud, const uint8_t *p, size_t n)
{
	struct slow *s = ud;

	if (s->out_len + n > s->out_cap) {
		s->out_cap = (s->out_len + n) * 2;
		s->out = realloc(s->out, s->out_cap);
		assert_non_null(s->out);
	}
	memcpy(s->out + s->out_len, p, n);
	s->out_len += n;
	return 0;
}

static void slow_pump(struct slow *s);

static void slow_wrote(uv_write_t *req, int status)
{
	struct slow *s = req->data;

	s->writing = false;
	if (status < 0)
		return;
	s->out_off++;
	s->writes++;
	slow_pump(s);
}

static void slow_pump(struct slow *s)
{
	uv_buf_t b;

	if (s->writing || s->out_off >= s->out_len || s->closed)
		return;
	s->byte = s->out[s->out_off];
	b = uv_buf_init((char *)&s->byte, 1);
	s->wreq.data = s;
	s->writing = true;
	assert_int_equal(uv_write(&s->wreq, (uv_stream_t *)&s->tcp, &b, 1, slow_wrote), 0);
}

/* Plaintext to send (through TLS when there is a session). */
static void slow_send(struct slow *s, const uint8_t *p, size_t n)
{
	if (s->tls)
		assert_int_equal(fp_tls_write(s->tls, p, n), 0);
	else
		slow_out(s, p, n);
	slow_pump(s);
}

static void slow_send_env(struct slow *s, const Fedprune__Envelope *e)
{
	uint8_t *f;
	size_t n;

	assert_int_equal(fp_env_pack_frame(e, 1u << 20, &f, &n), 0);
	/* Through TLS, one byte per record, so the server's decoder sees 1-byte pieces too. */
	for (size_t i = 0; i < n; i++)
		slow_send(s, f + i, 1);
	free(f);
}

static void slow_send_sample_cb(const Fedprune__Envelope *e, void *ud)
{
	slow_send_env(ud, e);
}

static void slow_plain(struct slow *s, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t used = fp_frame_dec_feed(&s->dec, p, n);
		Fedprune__Envelope *e;

		assert_true(used >= 0);
		p += used;
		n -= (size_t)used;
		if (!s->dec.done)
			continue;
		assert_int_equal(fp_env_unpack(s->dec.buf, s->dec.len, &e), 0);
		fp_frame_dec_next(&s->dec);
		if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_WELCOME) {
			Fedprune__Envelope hb = FEDPRUNE__ENVELOPE__INIT;
			Fedprune__Heartbeat h = FEDPRUNE__HEARTBEAT__INIT;

			s->welcomes++;
			h.seq = 1;
			hb.version = FP_PROTO_VERSION;
			hb.msg_case = FEDPRUNE__ENVELOPE__MSG_HEARTBEAT;
			hb.heartbeat = &h;
			slow_send_env(s, &hb);
			fp_test_with_sample(FEDPRUNE__ENVELOPE__MSG_UPLOAD_QUERY,
					    slow_send_sample_cb, s);
		} else if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_HEARTBEAT) {
			s->echoes += e->heartbeat->echo;
		} else if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_ERROR) {
			s->errors++;
		}
		fp_env_free(e);
	}
}

static void slow_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	static uint8_t buf[65536];

	(void)h;
	(void)hint;
	*b = uv_buf_init((char *)buf, sizeof(buf));
}

static void slow_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
	struct slow *s = st->data;
	uint8_t plain[4096];
	size_t got;

	if (n <= 0)
		return;
	if (!s->tls) {
		slow_plain(s, (const uint8_t *)b->base, (size_t)n);
		return;
	}
	fp_tls_set_input(s->tls, (const uint8_t *)b->base, (size_t)n);
	if (!fp_tls_established(s->tls)) {
		int r = fp_tls_handshake(s->tls);

		assert_true(r >= 0);
		if (r == 1 && !s->sent_msgs) {
			s->sent_msgs = true;
			fp_test_with_sample(FEDPRUNE__ENVELOPE__MSG_HELLO, slow_send_sample_cb, s);
		}
	}
	while (fp_tls_established(s->tls) && fp_tls_read(s->tls, plain, sizeof(plain), &got) == 1)
		slow_plain(s, plain, got);
	slow_pump(s);
}

static void slow_connected(uv_connect_t *req, int status)
{
	struct slow *s = req->data;

	assert_int_equal(status, 0);
	s->connected = true;
	uv_read_start((uv_stream_t *)&s->tcp, slow_alloc, slow_read);
	if (s->tls) {
		assert_int_equal(fp_tls_handshake(s->tls), 0); /* ClientHello */
	} else {
		s->sent_msgs = true;
		fp_test_with_sample(FEDPRUNE__ENVELOPE__MSG_HELLO, slow_send_sample_cb, s);
	}
	slow_pump(s);
}

static bool slow_finished(void *ud)
{
	struct slow *s = ud;

	return s->welcomes == 1 && s->echoes == 1 && s->out_off == s->out_len && s->errors == 0;
}

static void slow_closed(uv_handle_t *h)
{
	((struct slow *)h->data)->closed = true;
}

static bool slow_is_closed(void *ud)
{
	return ((struct slow *)ud)->closed;
}

static void one_byte_writes(bool tls)
{
	struct world_opts o = { .insecure = !tls };
	struct world w;
	struct slow s;
	struct sockaddr_in addr;
	SSL_CTX *ctx = NULL;
	struct capture cap;
	char *log;

	capture_begin(&cap);
	world_start(&w, &o);
	memset(&s, 0, sizeof(s));
	fp_frame_dec_init(&s.dec, 1u << 20);
	if (tls) {
		ctx = fp_test_client_ctx(&pki, "alice", 0, 0);
		assert_int_equal(fp_tls_new(ctx, "localhost", slow_out, &s, &s.tls), 0);
	}
	uv_tcp_init(&w.loop, &s.tcp);
	s.tcp.data = &s;
	s.creq.data = &s;
	uv_ip4_addr("127.0.0.1", w.port, &addr);
	assert_int_equal(
		uv_tcp_connect(&s.creq, &s.tcp, (const struct sockaddr *)&addr, slow_connected), 0);
	assert_true(run_until(&w.loop, slow_finished, &s, WAIT_MS));
	log = capture_end(&cap);
	/* Every byte of Hello, heartbeat and query (and TLS records) was its own write. */
	assert_int_equal(s.writes, s.out_len);
	assert_true(s.writes > (tls ? 1000u : 80u));
	assert_int_equal(fp_srv_stats(w.srv)->welcomed, 1);
	assert_int_equal(fp_srv_stats(w.srv)->heartbeats, 1);
	assert_non_null(strstr(log, "client joined"));
	if (!tls)
		assert_non_null(strstr(log, "INSECURE MODE"));
	free(log);
	uv_close((uv_handle_t *)&s.tcp, slow_closed);
	assert_true(run_until(&w.loop, slow_is_closed, &s, WAIT_MS));
	world_stop(&w);
	fp_tls_free(s.tls);
	SSL_CTX_free(ctx);
	free(s.out);
	fp_frame_dec_free(&s.dec);
	assert_int_equal(w.nclosed, 1);
	assert_string_equal(w.closed[0].reason, "peer closed the connection");
}

static void test_one_byte_writes_tls(void **state)
{
	(void)state;
	one_byte_writes(true);
}

static void test_one_byte_writes_plain(void **state)
{
	(void)state;
	one_byte_writes(false);
}

/* --- hostile peers --- */

struct hostile {
	const char *cn;	     /* certificate CN, NULL = no certificate */
	int flags;	     /* FP_CERT_* */
	int maxver;	     /* TLS1_2_VERSION for the TLS 1.2 client */
	raw_act act;	     /* what it does once secure */
	const char *want;    /* substring of the reason the server logs */
	const char *id;	     /* identity the server logs ("" = none) */
	const char *claimed; /* CN claimed by a rejected certificate, or NULL */
	int code;	     /* ErrorCode the client must receive, or -1 */
};

static void a_oversize(struct raw *r, const Fedprune__Envelope *e)
{
	static const uint8_t hdr[] = { 0x7f, 0xff, 0xff, 0xff };

	if (!e)
		assert_int_equal(fp_conn_write_raw(r->c, hdr, sizeof(hdr)), 0);
}

static void a_truncated_close(struct raw *r, const Fedprune__Envelope *e)
{
	static const uint8_t part[] = { 0, 0, 0, 100, 8, 1, 0x9a, 1, 0 };

	if (e)
		return;
	assert_int_equal(fp_conn_write_raw(r->c, part, sizeof(part)), 0);
	fp_conn_close(r->c, 0, "%s", "hostile: leaving mid-frame");
}

static void a_truncated_wait(struct raw *r, const Fedprune__Envelope *e)
{
	static const uint8_t part[] = { 0, 0, 0, 100, 8, 1, 0x9a, 1, 0 };

	if (!e)
		assert_int_equal(fp_conn_write_raw(r->c, part, sizeof(part)), 0);
}

static void a_bad_hello_version(struct raw *r, const Fedprune__Envelope *e)
{
	if (!e)
		send_hello(r, 2, "bob");
}

static void a_bad_envelope_version(struct raw *r, const Fedprune__Envelope *e)
{
	/* Envelope.version = 2 around a heartbeat. */
	static const uint8_t f[] = { 0, 0, 0, 7, 0x08, 0x02, 0x9a, 0x01, 0x02, 0x08, 0x01 };

	if (!e)
		assert_int_equal(fp_conn_write_raw(r->c, f, sizeof(f)), 0);
}

static void a_unknown(struct raw *r, const Fedprune__Envelope *e)
{
	static const uint8_t f[] = { 0, 0, 0, 5, 0x08, 0x01, 0xca, 0x01, 0x00 }; /* field 25 */

	if (!e)
		assert_int_equal(fp_conn_write_raw(r->c, f, sizeof(f)), 0);
}

static void a_garbage_in_tls(struct raw *r, const Fedprune__Envelope *e)
{
	static const uint8_t f[] = { 0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

	if (!e)
		send_hello(r, FP_PROTO_VERSION, "bob");
	else if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_WELCOME)
		assert_int_equal(fp_conn_write_raw(r->c, f, sizeof(f)), 0);
}

static void a_chunk_first(struct raw *r, const Fedprune__Envelope *e)
{
	if (!e)
		send_sample(r->c, FEDPRUNE__ENVELOPE__MSG_CHUNK);
}

static void a_two_hellos(struct raw *r, const Fedprune__Envelope *e)
{
	if (!e) {
		send_hello(r, FP_PROTO_VERSION, "bob");
		send_hello(r, FP_PROTO_VERSION, "bob");
	}
}

static void a_server_message(struct raw *r, const Fedprune__Envelope *e)
{
	if (!e)
		send_hello(r, FP_PROTO_VERSION, "bob");
	else if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_WELCOME)
		send_sample(r->c, FEDPRUNE__ENVELOPE__MSG_RECEIPT);
}

static void a_bad_offset(struct raw *r, const Fedprune__Envelope *e)
{
	Fedprune__Envelope out = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__TensorChunk c = FEDPRUNE__TENSOR_CHUNK__INIT;
	uint8_t data[16] = { 0 };

	if (!e) {
		send_hello(r, FP_PROTO_VERSION, "bob");
		return;
	}
	if (e->msg_case != FEDPRUNE__ENVELOPE__MSG_WELCOME)
		return;
	c.round_id = 1;
	c.tensor = "w";
	c.kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_SCORES_Q8;
	c.data.data = data;
	c.data.len = sizeof(data);
	c.total_bytes = 64;
	out.version = FP_PROTO_VERSION;
	out.msg_case = FEDPRUNE__ENVELOPE__MSG_CHUNK;
	out.chunk = &c;
	assert_int_equal(fp_conn_send(r->c, &out), 0);
	c.offset = 32; /* skips 16 bytes */
	assert_int_equal(fp_conn_send(r->c, &out), 0);
}

static void a_silent_after_hello(struct raw *r, const Fedprune__Envelope *e)
{
	if (!e)
		send_hello(r, FP_PROTO_VERSION, "bob");
}

struct pair_wait {
	struct world *w;
	struct raw *r;
	int before;
};

static bool hostile_done(void *ud)
{
	struct pair_wait *p = ud;

	return p->r->closed && p->w->nclosed > p->before;
}

static void run_hostile(struct world *w, struct linkrec *alice, const struct hostile *h)
{
	struct raw r;
	struct pair_wait p = { w, &r, w->nclosed };
	struct closed_rec *c;
	struct capture cap;
	char *log, want_peer[80], *line;

	capture_begin(&cap);
	raw_connect(w, &r, h->cn, h->flags, h->maxver, h->act);
	assert_true(run_until(&w->loop, hostile_done, &p, WAIT_MS));
	log = capture_end(&cap);
	c = &w->closed[p.before];
	printf("hostile case: reason='%s' peer=%s id='%s' claimed='%s'\n", c->reason, c->peer,
	       c->id, c->claimed);
	if (!strstr(c->reason, h->want))
		fail_msg("reason '%s' lacks '%s'", c->reason, h->want);
	assert_true(c->err != 0);
	assert_int_equal(strncmp(c->peer, "127.0.0.1:", 10), 0);
	assert_string_equal(c->id, h->id);
	if (h->claimed)
		assert_string_equal(c->claimed, h->claimed);
	/* The log line names the peer and the reason (and the identity when known). */
	snprintf(want_peer, sizeof(want_peer), "peer=%s ", c->peer);
	line = log_line(log, want_peer, "connection closed");
	assert_non_null(strstr(line, "level=warn"));
	assert_non_null(strstr(line, h->want));
	if (h->id[0]) {
		char want_id[96];

		snprintf(want_id, sizeof(want_id), "identity=%s ", h->id);
		assert_non_null(strstr(line, want_id));
	}
	if (h->claimed) {
		char want_cn[96];

		snprintf(want_cn, sizeof(want_cn), "claimed_cn=%s", h->claimed);
		assert_non_null(strstr(line, want_cn));
	}
	if (h->code >= 0) {
		assert_true(r.got_error);
		assert_int_equal(r.error_code, h->code);
	}
	free(line);
	free(log);
	raw_free(&r);
	still_working(w, alice);
}

static void test_hostile_peers(void **state)
{
	static const struct hostile cases[] = {
		{ "bob", 0, 0, a_oversize, "exceeds the limit", "bob", NULL,
		  FEDPRUNE__ERROR_CODE__ERROR_TOO_LARGE },
		{ "bob", 0, 0, a_truncated_close, "mid-frame (5 of 100 bytes)", "bob", NULL, -1 },
		{ "bob", 0, 0, a_truncated_wait, "message deadline", "bob", NULL,
		  FEDPRUNE__ERROR_CODE__ERROR_TIMEOUT },
		{ "bob", 0, 0, a_bad_hello_version, "protocol version 2 is not supported", "bob",
		  NULL, FEDPRUNE__ERROR_CODE__ERROR_BAD_VERSION },
		{ "bob", 0, 0, a_bad_envelope_version, "protocol version 2 (this peer speaks 1)",
		  "bob", NULL, FEDPRUNE__ERROR_CODE__ERROR_BAD_VERSION },
		{ "bob", 0, 0, a_unknown, "unknown message", "bob", NULL,
		  FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE },
		{ "bob", 0, 0, a_garbage_in_tls, "malformed envelope", "bob", NULL,
		  FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE },
		{ "bob", 0, 0, a_chunk_first, "message 'chunk' before hello", "bob", NULL,
		  FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER },
		{ "bob", 0, 0, a_two_hellos, "second hello", "bob", NULL,
		  FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER },
		{ "bob", 0, 0, a_server_message, "message 'receipt' is not sent by a client", "bob",
		  NULL, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER },
		{ "bob", 0, 0, a_bad_offset, "chunk at offset 32, expected 16", "bob", NULL,
		  FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER },
		{ "bob", 0, 0, a_silent_after_hello, "idle: nothing received", "bob", NULL,
		  FEDPRUNE__ERROR_CODE__ERROR_TIMEOUT },
		{ NULL, 0, 0, NULL, "did not return a certificate", "", NULL, -1 },
		{ "mallory", FP_CERT_FOREIGN, 0, NULL, "unable to get local issuer certificate", "",
		  "mallory", -1 },
		{ "oldtimer", FP_CERT_EXPIRED, 0, NULL, "certificate has expired", "", "oldtimer",
		  -1 },
		{ "bob", 0, TLS1_2_VERSION, NULL, "TLS 1.3 is required", "", NULL, -1 },
		{ "eve", 0, 0, NULL, "identity 'eve' is not in the allowlist", "eve", NULL,
		  FEDPRUNE__ERROR_CODE__ERROR_NOT_ALLOWED },
	};
	struct world_opts o = { .msg_ms = 400,
				.idle_ms = 1500,
				.max_frame = 64u << 10,
				.allow = "alice\nbob\nmallory\noldtimer\n" };
	struct world w;
	struct linkrec alice;

	(void)state;
	world_start(&w, &o);
	link_start(&w, &alice, "alice", 0);
	assert_true(run_until(&w.loop, lr_is_ready, &alice, WAIT_MS));
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		printf("case %zu: %s\n", i, cases[i].want);
		run_hostile(&w, &alice, &cases[i]);
	}
	assert_int_equal(fp_srv_stats(w.srv)->rejected, sizeof(cases) / sizeof(cases[0]));
	link_stop(&w, &alice);
	world_stop(&w);
}

/* Raw TCP peers: garbage before TLS, a TCP-level disconnect mid-frame, a silent connection. */
struct tcp_peer {
	uv_tcp_t tcp;
	uv_connect_t creq;
	uv_write_t wreq;
	const char *bytes;
	size_t n;
	bool close_after_write, closed;
};

static void tp_closed(uv_handle_t *h)
{
	((struct tcp_peer *)h->data)->closed = true;
}

static void tp_wrote(uv_write_t *req, int status)
{
	struct tcp_peer *t = req->data;

	(void)status;
	if (t->close_after_write)
		uv_close((uv_handle_t *)&t->tcp, tp_closed);
}

static void tp_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
	static char buf[4096];

	(void)h;
	(void)hint;
	*b = uv_buf_init(buf, sizeof(buf));
}

static void tp_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct tcp_peer *t = s->data;

	(void)b;
	if (n < 0 && !uv_is_closing((uv_handle_t *)&t->tcp))
		uv_close((uv_handle_t *)&t->tcp, tp_closed);
}

static void tp_connected(uv_connect_t *req, int status)
{
	struct tcp_peer *t = req->data;
	uv_buf_t b;

	assert_int_equal(status, 0);
	uv_read_start((uv_stream_t *)&t->tcp, tp_alloc, tp_read);
	if (!t->n)
		return;
	b = uv_buf_init((char *)t->bytes, (unsigned)t->n);
	t->wreq.data = t;
	assert_int_equal(uv_write(&t->wreq, (uv_stream_t *)&t->tcp, &b, 1, tp_wrote), 0);
}

struct tp_wait {
	struct world *w;
	struct tcp_peer *t;
	int before;
};

static bool tp_done(void *ud)
{
	struct tp_wait *p = ud;

	return p->t->closed && p->w->nclosed > p->before;
}

static void run_tcp_peer(struct world *w, struct linkrec *alice, const char *bytes, size_t n,
			 bool close_after, const char *want)
{
	struct tcp_peer t;
	struct tp_wait p = { w, &t, w->nclosed };
	struct sockaddr_in addr;
	struct capture cap;
	char *log, want_peer[80];

	memset(&t, 0, sizeof(t));
	t.bytes = bytes;
	t.n = n;
	t.close_after_write = close_after;
	uv_tcp_init(&w->loop, &t.tcp);
	t.tcp.data = &t;
	t.creq.data = &t;
	uv_ip4_addr("127.0.0.1", w->port, &addr);
	capture_begin(&cap);
	assert_int_equal(
		uv_tcp_connect(&t.creq, &t.tcp, (const struct sockaddr *)&addr, tp_connected), 0);
	assert_true(run_until(&w->loop, tp_done, &p, WAIT_MS));
	log = capture_end(&cap);
	printf("tcp case: reason='%s' peer=%s\n", w->closed[p.before].reason,
	       w->closed[p.before].peer);
	if (!strstr(w->closed[p.before].reason, want))
		fail_msg("reason '%s' lacks '%s'", w->closed[p.before].reason, want);
	assert_true(w->closed[p.before].err != 0);
	snprintf(want_peer, sizeof(want_peer), "peer=%s ", w->closed[p.before].peer);
	assert_non_null(strstr(log, want_peer));
	free(log);
	if (alice)
		still_working(w, alice);
}

static void test_hostile_tcp(void **state)
{
	static const char http[] = "GET / HTTP/1.1\r\nHost: fedprune\r\n\r\n";
	static const char partial[] = "\0\0\0\x32\x08\x01\x9a";
	struct world_opts tls = { .handshake_ms = 1500 }, plain = { .insecure = true };
	struct world w;
	struct linkrec alice;

	(void)state;
	world_start(&w, &tls);
	link_start(&w, &alice, "alice", 0);
	assert_true(run_until(&w.loop, lr_is_ready, &alice, WAIT_MS));
	/* Garbage instead of a ClientHello. */
	run_tcp_peer(&w, &alice, http, sizeof(http) - 1, false, "TLS handshake");
	/* Connects and says nothing. */
	run_tcp_peer(&w, &alice, NULL, 0, false, "handshake not completed within 1500 ms");
	/* A ClientHello cut short, then the TCP connection closes. */
	run_tcp_peer(&w, &alice, "\x16\x03\x01\x02\x00\x01", 6, true, "during the TLS handshake");
	link_stop(&w, &alice);
	world_stop(&w);

	/* Plaintext (insecure) server: TCP closes in the middle of a frame. */
	world_start(&w, &plain);
	run_tcp_peer(&w, NULL, partial, sizeof(partial) - 1, true,
		     "disconnected mid-frame (3 of 50");
	world_stop(&w);
}

/* --- uploads --- */

struct producer {
	int t;
	struct linkrec *r;
	size_t max_queued;
	uint64_t reads;
};

static int produce(void *ud, uint64_t off, uint8_t *buf, size_t len)
{
	struct producer *p = ud;
	struct fp_conn *c = fp_link_conn(p->r->l);

	if (c && fp_conn_queued(c) > p->max_queued)
		p->max_queued = fp_conn_queued(c);
	for (size_t i = 0; i < len; i++)
		buf[i] = tensor_byte(p->t, off + i);
	p->reads++;
	return 0;
}

static void up_done(struct fp_link *l, int status, const char *reason, const Fedprune__Receipt *rc,
		    void *ud)
{
	struct linkrec *r = ud;

	(void)l;
	r->up_done = true;
	r->up_status = status;
	snprintf(r->up_reason, sizeof(r->up_reason), "%s", reason ? reason : "");
	if (status == 0 && rc) {
		assert_true(rc->accepted);
		assert_int_equal(rc->n_have_tensors, 3);
		assert_int_equal(rc->submission_digest.len, FP_DIGEST_BYTES);
	}
}

static bool up_is_done(void *ud)
{
	return ((struct linkrec *)ud)->up_done;
}

static void test_upload_resume(void **state)
{
	uint64_t shape0[] = { 4096, 6144 }; /* 25 165 824 bits = 3 MiB of mask */
	uint64_t shape1[] = { 1000 };
	static uint8_t mem1[1000];
	struct world_opts o = { 0 };
	struct producer p[3];
	struct fp_tensor_src src[3];
	struct world w;
	struct linkrec alice;
	uint64_t total = (4096u * 6144u) / 8 + 1000;

	(void)state;
	world_start(&w, &o);
	link_start(&w, &alice, "alice", 0);
	assert_true(run_until(&w.loop, lr_is_ready, &alice, WAIT_MS));
	memset(src, 0, sizeof(src));
	for (int i = 0; i < 3; i++) {
		p[i] = (struct producer){ .t = i, .r = &alice };
		src[i].read = produce;
		src[i].ud = &p[i];
	}
	src[0].name = "model.layers.0.mlp.up_proj.weight";
	src[0].kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS;
	src[0].shape = shape0;
	src[0].ndim = 2;
	src[0].total_bytes = (4096u * 6144u) / 8;
	src[1].name = "model.layers.0.input_layernorm.scores";
	src[1].kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_SCORES_Q8;
	src[1].shape = shape1;
	src[1].ndim = 1;
	src[1].total_bytes = 1000;
	/* This one is in memory: sent from where it is, the reader is never called. */
	for (int k = 0; k < 1000; k++)
		mem1[k] = tensor_byte(1, (uint64_t)k);
	src[1].bytes = mem1;
	src[1].read = NULL;
	src[2].name = "empty";
	src[2].kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_SCORES_Q8;
	src[2].total_bytes = 0;
	/* Pull the cable after 1.5 MiB: the client must reconnect and resume at that byte. */
	w.stop_after = 3u << 19;
	assert_int_equal(fp_link_upload(alice.l, 5, src, 3, NULL, up_done, &alice), 0);
	assert_int_equal(fp_link_upload(alice.l, 6, src, 3, NULL, up_done, &alice), -EBUSY);
	assert_true(run_until(&w.loop, up_is_done, &alice, WAIT_MS * 3));
	assert_int_equal(alice.up_status, 0);
	assert_int_equal(alice.receipts, 1);
	assert_int_equal(fp_link_stats(alice.l)->connects, 2); /* one reconnect */
	/* The client's queue drained after its last chunk (the Receipt came back), yet it still
	 * holds its spare write blocks: they go half a second after the last large write. */
	assert_true(fp_conn_output_held(fp_link_conn(alice.l)) > 0);
	assert_int_equal(w.tensors_done, 3);
	/* Every byte arrived exactly once and is what the producer made. */
	assert_int_equal(w.sink_bytes, total);
	for (int i = 0; i < w.nsink; i++) {
		int t = strcmp(w.sink[i].name, src[0].name) == 0   ? 0
			: strcmp(w.sink[i].name, src[1].name) == 0 ? 1
								   : 2;

		assert_int_equal(w.sink[i].got, src[t].total_bytes);
		for (uint64_t k = 0; k < w.sink[i].got; k++)
			if (w.sink[i].data[k] != tensor_byte(t, k))
				fail_msg("tensor %d byte %llu differs", t, (unsigned long long)k);
	}
	/* Back-pressure: never more than the high-water mark plus one chunk queued. */
	printf("max queued while producing: %zu bytes (high water %u, chunk %u)\n", p[0].max_queued,
	       WQ_HIGH, CHUNK);
	assert_true(p[0].max_queued <= WQ_HIGH + CHUNK + 4096);
	assert_int_equal(p[1].reads, 0);
	/* The session knows the upload is committed: asking again says so. */
	{
		struct fp_session *s = fp_srv_session(w.srv, "alice");
		uint64_t t0;

		assert_non_null(s);
		assert_true(s->rx.committed);
		assert_int_equal(s->rx.round_id, 5);
		/* The server kept its input buffers for chunk-sized frames although its socket
		 * drained after the last chunk (the Commit and Receipt came after), and gives
		 * them back half a second after the last large frame. */
		assert_non_null(s->conn);
		assert_true(fp_conn_input_held(s->conn) >= CHUNK);
		t0 = uv_now(&w.loop);
		while (fp_conn_input_held(s->conn) > 2048 && uv_now(&w.loop) - t0 < 3000)
			uv_run(&w.loop, UV_RUN_ONCE);
		printf("input buffers released after %llu ms\n",
		       (unsigned long long)(uv_now(&w.loop) - t0));
		assert_true(fp_conn_input_held(s->conn) <= 2048);
	}
	/* ... and has given them back by now. */
	{
		struct fp_conn *c = fp_link_conn(alice.l);
		uint64_t t0 = uv_now(&w.loop);

		assert_non_null(c);
		while (fp_conn_output_held(c) > 0 && uv_now(&w.loop) - t0 < 3000)
			uv_run(&w.loop, UV_RUN_ONCE);
		printf("spare write blocks released %llu ms after the input buffers were\n",
		       (unsigned long long)(uv_now(&w.loop) - t0));
		assert_int_equal(fp_conn_output_held(c), 0);
	}
	link_stop(&w, &alice);
	world_stop(&w);
}

/* Bytes of the restore source in test_upload_declared_digest. */
static int restore_bytes(void *ud, uint64_t off, uint8_t *buf, size_t len)
{
	uint64_t *reads = ud;

	for (size_t i = 0; i < len; i++)
		buf[i] = tensor_byte(1, off + i);
	*reads += len;
	return 0;
}

/*
 * The receiver takes the digest as declared (it never hashes arriving bytes; the round server
 * checks them once when it stores them, tests/integration/test_round.sh case 4): a declared
 * digest must not change, a tensor is complete only with one, and a restored prefix gets it
 * from the chunks that follow.
 */
static void test_upload_declared_digest(void **state)
{
	static uint8_t data[3000];
	uint8_t d1[FP_DIGEST_BYTES] = { 1 }, d2[FP_DIGEST_BYTES] = { 2 }, sub[FP_DIGEST_BYTES];
	uint8_t want[FP_DIGEST_BYTES], bytes[3000];
	uint64_t shape[] = { 3000 }, reads = 0;
	Fedprune__TensorChunk c = FEDPRUNE__TENSOR_CHUNK__INIT;
	Fedprune__Commit cm = FEDPRUNE__COMMIT__INIT;
	const struct fp_rx_tensor *done = NULL;
	const char *name = "t";
	Fedprune__ErrorCode code;
	struct fp_upload_rx rx;

	(void)state;
	fp_upload_rx_init(&rx);
	fp_upload_rx_reset(&rx, 4);
	c.round_id = 4;
	c.tensor = (char *)name;
	c.kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_SCORES_Q8;
	c.shape = shape;
	c.n_shape = 1;
	c.total_bytes = 3000;
	c.data.data = data;
	c.data.len = 1000;
	c.tensor_digest.data = d1;
	c.tensor_digest.len = FP_DIGEST_BYTES;
	assert_int_equal(fp_upload_rx_chunk(&rx, &c, 1u << 20, &code, &done), 0);
	assert_null(done);
	assert_int_equal(rx.t[0].received, 1000);
	/* The digest changes at offset 1000: the sender's tensor is another one, start over. */
	c.offset = 1000;
	c.n_shape = 0;
	c.tensor_digest.data = d2;
	assert_int_equal(fp_upload_rx_chunk(&rx, &c, 1u << 20, &code, &done), -EPROTO);
	assert_int_equal(code, FEDPRUNE__ERROR_CODE__ERROR_DIGEST_MISMATCH);
	assert_non_null(strstr(fp_err_last(), "digest changed at offset 1000"));
	assert_int_equal(rx.t[0].received, 0);
	assert_int_equal(rx.received_bytes, 0);
	assert_int_equal(fp_upload_rx_chunk(&rx, &c, 1u << 20, &code, &done), -EPROTO);
	assert_int_equal(code, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER);
	/* Again from 0 with d2; later chunks without a digest keep it. */
	for (uint64_t off = 0; off < 3000; off += 1000) {
		c.offset = off;
		c.tensor_digest.len = off == 0 ? FP_DIGEST_BYTES : 0;
		assert_int_equal(fp_upload_rx_chunk(&rx, &c, 1u << 20, &code, &done), 0);
		assert_true(off < 2000 ? done == NULL : done == &rx.t[0]);
	}
	assert_true(rx.t[0].complete);
	assert_memory_equal(rx.t[0].digest, d2, FP_DIGEST_BYTES);
	/* A tensor whose digest is never declared is not complete: it starts over. */
	c.tensor = "u";
	c.offset = 0;
	c.total_bytes = 10;
	c.data.len = 10;
	c.tensor_digest.len = 0;
	assert_int_equal(fp_upload_rx_chunk(&rx, &c, 1u << 20, &code, &done), -EPROTO);
	assert_int_equal(code, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE);
	assert_int_equal(rx.t[1].received, 0);
	c.tensor_digest.len = FP_DIGEST_BYTES;
	assert_int_equal(fp_upload_rx_chunk(&rx, &c, 1u << 20, &code, &done), 0);
	assert_true(rx.t[1].complete);
	/* The Commit must carry the submission digest of what was declared. */
	{
		const char *names[2] = { "t", "u" };
		uint8_t dig[2][FP_DIGEST_BYTES];

		memcpy(dig[0], d2, FP_DIGEST_BYTES);
		memcpy(dig[1], d2, FP_DIGEST_BYTES);
		assert_int_equal(
			fp_submission_digest(names, (const uint8_t(*)[FP_DIGEST_BYTES])dig, 2, sub),
			0);
	}
	cm.round_id = 4;
	cm.submission_digest.data = d1;
	cm.submission_digest.len = FP_DIGEST_BYTES;
	assert_int_equal(fp_upload_rx_commit(&rx, &cm), -EPROTO);
	cm.submission_digest.data = sub;
	assert_int_equal(fp_upload_rx_commit(&rx, &cm), 0);
	assert_true(rx.committed);

	/* Restored after a restart: a prefix needs no digest, the next chunk declares it; a
	 * complete tensor's digest is the one of its bytes. */
	fp_upload_rx_reset(&rx, 5);
	assert_int_equal(fp_upload_rx_restore(&rx, "t", FEDPRUNE__PAYLOAD_KIND__PAYLOAD_SCORES_Q8,
					      shape, 1, 3000, 1000, restore_bytes, &reads),
			 0);
	assert_int_equal(reads, 1000);
	assert_false(rx.t[0].complete);
	assert_false(rx.t[0].has_digest);
	c.round_id = 5;
	c.tensor = (char *)name;
	c.total_bytes = 3000;
	c.offset = 1000;
	c.data.len = 2000;
	c.tensor_digest.data = d1;
	assert_int_equal(fp_upload_rx_chunk(&rx, &c, 1u << 20, &code, &done), 0);
	assert_true(done == &rx.t[0] && rx.t[0].complete);
	assert_memory_equal(rx.t[0].digest, d1, FP_DIGEST_BYTES);
	fp_upload_rx_reset(&rx, 6);
	assert_int_equal(fp_upload_rx_restore(&rx, "t", FEDPRUNE__PAYLOAD_KIND__PAYLOAD_SCORES_Q8,
					      shape, 1, 3000, 3000, restore_bytes, &reads),
			 0);
	for (size_t i = 0; i < sizeof(bytes); i++)
		bytes[i] = tensor_byte(1, i);
	crypto_generichash(want, sizeof(want), bytes, sizeof(bytes), NULL, 0);
	assert_true(rx.t[0].complete);
	assert_memory_equal(rx.t[0].digest, want, FP_DIGEST_BYTES);
	/* A digest of another size is refused (fp_env_check refuses it earlier on the wire). */
	fp_upload_rx_reset(&rx, 7);
	c.round_id = 7;
	c.offset = 0;
	c.tensor_digest.len = 5;
	assert_int_equal(fp_upload_rx_chunk(&rx, &c, 1u << 20, &code, &done), -EPROTO);
	assert_int_equal(code, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE);
	fp_upload_rx_free(&rx);
}

/* --- reconnects, fatal errors, sessions, limits --- */

static bool attempts_3(void *ud)
{
	return fp_link_stats(((struct linkrec *)ud)->l)->attempts >= 3;
}

static void test_reconnect_backoff(void **state)
{
	struct world_opts o = { 0 };
	struct world w;
	struct linkrec r;
	int port;

	(void)state;
	/* Find a free port, then close the server so nobody listens there. */
	world_start(&w, &o);
	port = w.port;
	fp_srv_stop(w.srv, srv_done_cb, &w);
	assert_true(run_until(&w.loop, srv_is_done, &w, WAIT_MS));
	w.port = port;
	link_start(&w, &r, "alice", 0);
	assert_true(run_until(&w.loop, attempts_3, &r, WAIT_MS));
	assert_true(r.down >= 2);
	assert_int_equal(r.fatal, 0);
	assert_true(fp_link_stats(r.l)->last_delay_ms <= 200);
	/* The server comes back on the same port: the client gets in. */
	{
		struct fp_srv_ops ops = { .on_conn_closed = rec_closed };
		struct fp_srv_cfg cfg = { .listen = "127.0.0.1",
					  .port = (uint16_t)port,
					  .tls = w.sctx,
					  .heartbeat_ms = HB_MS,
					  .data = &w };

		w.srv_done = false;
		assert_int_equal(fp_srv_start(&w.loop, &cfg, &ops, &w.srv), 0);
	}
	assert_true(run_until(&w.loop, lr_is_ready, &r, WAIT_MS));
	assert_int_equal(fp_link_stats(r.l)->connects, 1);
	link_stop(&w, &r);
	world_stop(&w);
}

static bool lr_is_fatal(void *ud)
{
	return ((struct linkrec *)ud)->fatal > 0;
}

static void test_fatal_auth(void **state)
{
	struct world_opts o = { .allow = "alice\n" };
	struct world w;
	struct linkrec expired, stranger;

	(void)state;
	world_start(&w, &o);
	link_start(&w, &expired, "alice", FP_CERT_EXPIRED);
	link_start(&w, &stranger, "zed", 0);
	assert_true(run_until(&w.loop, lr_is_fatal, &expired, WAIT_MS));
	assert_true(run_until(&w.loop, lr_is_fatal, &stranger, WAIT_MS));
	/* Refused once and never retried. */
	assert_int_equal(fp_link_stats(expired.l)->attempts, 1);
	assert_int_equal(fp_link_stats(stranger.l)->attempts, 1);
	assert_int_equal(stranger.last_error, FEDPRUNE__ERROR_CODE__ERROR_NOT_ALLOWED);
	assert_int_equal(fp_link_upload(expired.l, 1, NULL, 0, NULL, up_done, &expired), -ENOTCONN);
	link_stop(&w, &expired);
	link_stop(&w, &stranger);
	world_stop(&w);
}

static bool raw_is_welcomed(void *ud)
{
	return ((struct raw *)ud)->welcomed;
}

static bool replaced(void *ud)
{
	struct raw *r = ud;

	return r[0].closed && r[1].welcomed;
}

static void hello_act(struct raw *r, const Fedprune__Envelope *e)
{
	if (!e)
		send_hello(r, FP_PROTO_VERSION, "");
}

static void test_session_replaced(void **state)
{
	struct world_opts o = { 0 };
	struct world w;
	struct raw r[2];
	struct fp_session *s;

	(void)state;
	world_start(&w, &o);
	raw_connect(&w, &r[0], "carol", 0, 0, hello_act);
	assert_true(run_until(&w.loop, raw_is_welcomed, &r[0], WAIT_MS));
	raw_connect(&w, &r[1], "carol", 0, 0, hello_act);
	assert_true(run_until(&w.loop, replaced, r, WAIT_MS));
	assert_true(r[0].got_error);
	assert_int_equal(r[0].error_code, FEDPRUNE__ERROR_CODE__ERROR_REPLACED);
	s = fp_srv_session(w.srv, "carol");
	assert_non_null(s);
	assert_int_equal(s->connects, 2);
	assert_non_null(s->conn);
	assert_string_equal(fp_conn_identity(s->conn), "carol");
	fp_conn_close(r[1].c, 0, "%s", "bye");
	assert_true(run_until(&w.loop, raw_is_closed, &r[1], WAIT_MS));
	assert_null(s->conn);
	raw_free(&r[0]);
	raw_free(&r[1]);
	world_stop(&w);
}

static bool three_closed(void *ud)
{
	return ((struct world *)ud)->nclosed >= 1;
}

static void test_max_clients(void **state)
{
	struct world_opts o = { .max_clients = 2 };
	struct world w;
	struct linkrec a, b;
	struct raw r;

	(void)state;
	world_start(&w, &o);
	link_start(&w, &a, "alice", 0);
	link_start(&w, &b, "bob", 0);
	assert_true(run_until(&w.loop, lr_is_ready, &a, WAIT_MS));
	assert_true(run_until(&w.loop, lr_is_ready, &b, WAIT_MS));
	raw_connect(&w, &r, "carol", 0, 0, hello_act);
	assert_true(run_until(&w.loop, three_closed, &w, WAIT_MS));
	assert_non_null(strstr(w.closed[0].reason, "too many clients (max_clients = 2)"));
	assert_true(run_until(&w.loop, raw_is_closed, &r, WAIT_MS));
	raw_free(&r);
	still_working(&w, &a);
	link_stop(&w, &a);
	link_stop(&w, &b);
	world_stop(&w);
}

static bool lr_ready_once(void *ud)
{
	return ((struct linkrec *)ud)->ready > 0;
}

static void test_insecure_mode(void **state)
{
	struct world_opts o = { .insecure = true };
	struct world w;
	struct linkrec r;
	struct capture cap;
	char *log, *p;
	int warnings = 0;
	struct echo_wait e;

	(void)state;
	capture_begin(&cap);
	world_start(&w, &o);
	link_start(&w, &r, "dev-box", 0);
	assert_true(run_until(&w.loop, lr_ready_once, &r, WAIT_MS));
	e.r = &r;
	e.want = 8; /* 8 heartbeats of 50 ms: the 100 ms warning repeats meanwhile */
	assert_true(run_until(&w.loop, echoes_reached, &e, WAIT_MS));
	log = capture_end(&cap);
	for (p = log; (p = strstr(p, "INSECURE MODE")) != NULL; p++)
		warnings++;
	assert_true(warnings >= 4); /* server and client at start, then the server every 100 ms */
	assert_string_equal(fp_link_identity(r.l), "dev-box");
	assert_string_equal(fp_conn_tls_version(fp_link_conn(r.l)), "plaintext");
	free(log);
	link_stop(&w, &r);
	world_stop(&w);
}

/* SIGTERM-like stop with clients connected and an upload in flight. */
static bool got_shutdown(void *ud)
{
	struct linkrec *r = ud;

	return r[0].last_error == FEDPRUNE__ERROR_CODE__ERROR_SHUTTING_DOWN &&
	       r[1].last_error == FEDPRUNE__ERROR_CODE__ERROR_SHUTTING_DOWN;
}

static bool some_bytes(void *ud)
{
	return ((struct world *)ud)->sink_bytes > 0;
}

static void test_shutdown(void **state)
{
	struct world_opts o = { 0 };
	struct world w;
	struct linkrec r[2];
	struct producer p = { 0 };
	struct fp_tensor_src src = { 0 };
	struct capture cap;
	char *log;

	(void)state;
	world_start(&w, &o);
	link_start(&w, &r[0], "alice", 0);
	link_start(&w, &r[1], "bob", 0);
	assert_true(run_until(&w.loop, lr_is_ready, &r[0], WAIT_MS));
	assert_true(run_until(&w.loop, lr_is_ready, &r[1], WAIT_MS));
	p.r = &r[0];
	src.name = "big";
	src.kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_SCORES_Q8;
	src.total_bytes = 64u << 20;
	src.read = produce;
	src.ud = &p;
	assert_int_equal(fp_link_upload(r[0].l, 2, &src, 1, NULL, up_done, &r[0]), 0);
	assert_true(run_until(&w.loop, some_bytes, &w, WAIT_MS));
	capture_begin(&cap);
	fp_srv_stop(w.srv, srv_done_cb, &w);
	assert_true(run_until(&w.loop, srv_is_done, &w, WAIT_MS));
	assert_true(run_until(&w.loop, got_shutdown, r, WAIT_MS));
	log = capture_end(&cap);
	assert_non_null(strstr(log, "upload abandoned"));
	assert_non_null(strstr(log, "identity=alice"));
	free(log);
	assert_false(r[0].up_done); /* the upload waits for the server to come back */
	capture_begin(&cap);
	link_stop(&w, &r[0]);
	link_stop(&w, &r[1]);
	log = capture_end(&cap);
	assert_non_null(strstr(log, "upload abandoned"));
	free(log);
	uv_run(&w.loop, UV_RUN_DEFAULT);
	assert_int_equal(uv_loop_close(&w.loop), 0);
	SSL_CTX_free(w.sctx);
	for (int i = 0; i < w.nsink; i++)
		free(w.sink[i].data);
}

/* The socket-less connection the fuzzer uses behaves like a real one. */
struct vsink {
	int frames;
	struct fp_frame_dec dec;
	bool welcome;
};

static int vsink_out(void *ud, const uint8_t *p, size_t n)
{
	struct vsink *v = ud;

	while (n) {
		ssize_t used = fp_frame_dec_feed(&v->dec, p, n);
		Fedprune__Envelope *e;

		assert_true(used >= 0);
		p += used;
		n -= (size_t)used;
		if (v->dec.done) {
			assert_int_equal(fp_env_unpack(v->dec.buf, v->dec.len, &e), 0);
			v->welcome |= e->msg_case == FEDPRUNE__ENVELOPE__MSG_WELCOME;
			v->frames++;
			fp_env_free(e);
			fp_frame_dec_next(&v->dec);
		}
	}
	return 0;
}

static void test_virtual_conn(void **state)
{
	struct world_opts o = { .insecure = true };
	struct world w;
	struct vsink v = { 0 };
	struct fp_conn *c;
	uint8_t *f;
	size_t n, fl;
	Fedprune__Envelope *e;

	(void)state;
	world_start(&w, &o);
	fp_frame_dec_init(&v.dec, 1u << 20);
	assert_int_equal(fp_srv_attach_virtual(w.srv, NULL, vsink_out, &v, &c), 0);
	f = fp_test_sample(FEDPRUNE__ENVELOPE__MSG_HELLO, &n);
	assert_int_equal(fp_env_unpack(f, n, &e), 0);
	free(f);
	assert_int_equal(fp_env_pack_frame(e, 1u << 20, &f, &fl), 0);
	fp_env_free(e);
	assert_int_equal(fp_conn_inject(c, f, fl), 0);
	free(f);
	assert_true(v.welcome);
	assert_int_equal(w.hellos, 1);
	world_stop(&w);
	fp_frame_dec_free(&v.dec);
	assert_string_equal(w.closed[0].reason, "server shutting down");
}

static int setup(void **state)
{
	(void)state;
	fp_test_pki_create(&pki);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	fp_test_pki_free(&pki);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_every_message),
		cmocka_unit_test(test_one_byte_writes_tls),
		cmocka_unit_test(test_one_byte_writes_plain),
		cmocka_unit_test(test_hostile_peers),
		cmocka_unit_test(test_hostile_tcp),
		cmocka_unit_test(test_upload_resume),
		cmocka_unit_test(test_upload_declared_digest),
		cmocka_unit_test(test_reconnect_backoff),
		cmocka_unit_test(test_fatal_auth),
		cmocka_unit_test(test_session_replaced),
		cmocka_unit_test(test_max_clients),
		cmocka_unit_test(test_insecure_mode),
		cmocka_unit_test(test_shutdown),
		cmocka_unit_test(test_virtual_conn),
	};

	/* As the daemons (fp_daemon_init): a write to a connection the peer has reset fails with
	 * EPIPE instead of killing the process. */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, teardown);
}
