/*
 * Protocol connections on a libuv loop (see conn.h).
 *
 * Read path: libuv reads ciphertext into a buffer shared by the loop's connections; it is
 * handed to the TLS engine, which decrypts either straight into the payload buffer of the
 * frame being read or, for length prefixes, into a small scratch buffer. Every byte a read
 * callback delivers is consumed before it returns, which is what makes the shared buffer safe.
 *
 * Write path: an envelope is serialised through a ProtobufCBuffer that coalesces the small
 * pieces protobuf-c emits and passes large byte fields to TLS directly; TLS writes ciphertext
 * into write blocks which go to uv_write unchanged and are freed in its callback.
 */
#include "conn.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "err.h"
#include "frame.h"
#include "tls.h"

#define WBLK_SMALL (16u << 10) /* a write block for handshakes and small messages */
/* Bulk blocks, once a block filled up within one send. Each becomes one write(2): 512 KiB
 * sent the 256 MiB upload benchmark 9-12 % faster than 256 KiB (fewer syscalls, and more of
 * the loopback receive work done by the reading side), 64 KiB was 16 % slower. */
#define WBLK_BULK    (512u << 10)
#define TX_COALESCE  (16u << 10) /* plaintext coalescing buffer of a send */
#define TX_DIRECT    (4u << 10)	 /* protobuf pieces at least this large bypass coalescing */
#define RBUF_DEFAULT (256u << 10)
#define WBLK_SPARE   8 /* bulk write blocks kept while a transfer runs */
/* TCP_NOTSENT_LOWAT of every socket (see tune_socket): 256 KiB made the 256 MiB upload
 * benchmark's median 16-19 % faster on a busy host (server CPU -17..-26 %), 128 KiB a little
 * less. */
#define NOTSENT_LOWAT (256 << 10)
/* The buffers of large transfers (the input buffer of large frames, the spare bulk write
 * blocks) are released this long after the last large frame or large write, not whenever the
 * socket drains: during an upload it drains between most frames, and freeing and
 * faulting in the memory again each time cost about a fifth of the receiver's CPU, and half
 * of the sender's on its first upload. */
#define TRIM_DELAY_MS 500

struct wblk {
	uv_write_t req;
	struct fp_conn *c;
	size_t len, cap;
	uint8_t data[]; /* (cap) ciphertext */
};

enum conn_state {
	C_CONNECTING, /* client: TCP connect in progress */
	C_HANDSHAKE,  /* TLS handshake in progress */
	C_SECURE,     /* messages flow */
	C_CLOSING,    /* graceful close: writes drain, input is discarded */
	C_CLOSED,     /* handles closing; freed in their close callbacks */
};

struct fp_conn {
	uv_tcp_t tcp;
	uv_timer_t timer;
	union {
		uv_connect_t connect;
		uv_shutdown_t shutdown;
	} req;
	uv_loop_t *loop;
	const struct fp_conn_ops *ops;
	struct fp_conn_opts o;
	enum conn_state state;
	struct fp_tls *tls; /* NULL in insecure mode */
	struct fp_frame_dec dec;
	struct wblk *wcur;  /* block being filled, not yet given to uv_write */
	struct wblk *wfree; /* spare bulk blocks (a list through req.data), up to WBLK_SPARE */
	int nfree;
	bool bulk;	 /* a block filled up during the current send: use large blocks */
	size_t inflight; /* bytes in uv_write requests whose callback has not run */
	uint8_t *rbuf;
	size_t rbuf_size;
	size_t peer_max;
	int handles;	   /* libuv handles not yet closed */
	bool has_tcp;	   /* tcp was initialised (needs uv_close) */
	bool server;	   /* accepted side */
	bool ready;	   /* application handshake done */
	bool want_drain;   /* on_drain owed once the queue is low */
	bool shut_pending; /* uv_shutdown issued, callback not yet run */
	bool peer_eof;	   /* the peer closed its side */
	bool in_msg;	   /* inside on_msg: the frame buffer is in use */
	uint64_t t0;	   /* loop time of accept/connect */
	uint64_t last_rx;  /* loop time of the last byte received */
	uint64_t frame_t0; /* loop time the current frame started; 0 = none */
	uint64_t linger_due;
	uint64_t timer_due;   /* when the armed timer fires; 0 = not armed */
	uint64_t trim_due;    /* when to release the buffers of large transfers; 0 = not due */
	fp_conn_sink_fn sink; /* virtual connection output */
	void *sink_ud;
	int err;
	struct fp_conn_stats stats;
	void *data;
	char peer[56];
	char identity[FP_ID_MAX + 1];
	char reason[200];
	char server_name[256];
};

/* Ops of a connection that failed before its owner saw it: nobody to tell. */
static const struct fp_conn_ops no_ops;

static int out_append(void *ud, const uint8_t *p, size_t n);
static void flush_out(struct fp_conn *c);
static void hard_close(struct fp_conn *c);
static void arm_timer(struct fp_conn *c);

/* --- small helpers --- */

static void set_reason(struct fp_conn *c, int err, const char *fmt, va_list ap)
	__attribute__((format(printf, 3, 0)));
static void set_reason(struct fp_conn *c, int err, const char *fmt, va_list ap)
{
	if (c->reason[0])
		return;
	c->err = err;
	vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
	if (!c->reason[0])
		snprintf(c->reason, sizeof(c->reason), "%s", "closed");
}

static void reasonf(struct fp_conn *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void reasonf(struct fp_conn *c, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	set_reason(c, err, fmt, ap);
	va_end(ap);
}

static void addr_name(const struct sockaddr_storage *ss, char *out, size_t n)
{
	char ip[INET6_ADDRSTRLEN] = "?";

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;

		uv_ip4_name(a, ip, sizeof(ip));
		snprintf(out, n, "%s:%u", ip, ntohs(a->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;

		uv_ip6_name(a, ip, sizeof(ip));
		snprintf(out, n, "[%s]:%u", ip, ntohs(a->sin6_port));
	} else {
		snprintf(out, n, "%s", "-");
	}
}

static void fill_peer(struct fp_conn *c)
{
	struct sockaddr_storage ss;
	int len = sizeof(ss);

	memset(&ss, 0, sizeof(ss));
	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
		addr_name(&ss, c->peer, sizeof(c->peer));
}

static struct fp_conn *conn_alloc(uv_loop_t *loop, const struct fp_conn_cfg *cfg)
{
	struct fp_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->loop = loop;
	c->ops = cfg->ops;
	c->o = cfg->opts;
	if (!c->o.max_frame)
		c->o.max_frame = FP_FRAME_MAX_DEFAULT;
	if (!c->o.wq_high)
		c->o.wq_high = 1u << 20;
	if (c->o.wq_low > c->o.wq_high)
		c->o.wq_low = c->o.wq_high / 2;
	if (!c->o.linger_ms)
		c->o.linger_ms = 2000;
	c->peer_max = c->o.max_frame;
	c->rbuf = cfg->rbuf;
	c->rbuf_size = cfg->rbuf_size;
	c->data = cfg->data;
	snprintf(c->peer, sizeof(c->peer), "%s", "-");
	if (cfg->server_name)
		snprintf(c->server_name, sizeof(c->server_name), "%s", cfg->server_name);
	fp_frame_dec_init(&c->dec, c->o.max_frame);
	uv_timer_init(loop, &c->timer);
	c->timer.data = c;
	c->handles = 1;
	c->t0 = uv_now(loop);
	c->last_rx = c->t0;
	return c;
}

static int start_tls(struct fp_conn *c, SSL_CTX *ctx)
{
	if (!ctx)
		return 0;
	return fp_tls_new(ctx, c->server ? NULL : c->server_name, out_append, c, &c->tls);
}

/* --- output --- */

/* A write block is done: keep bulk blocks for the next ones, free the others. */
static void wblk_release(struct fp_conn *c, struct wblk *b)
{
	if (b->cap == WBLK_BULK && c->nfree < WBLK_SPARE && c->state < C_CLOSED) {
		b->req.data = c->wfree;
		c->wfree = b;
		c->nfree++;
		return;
	}
	free(b);
}

static void wblk_trim(struct fp_conn *c)
{
	while (c->wfree) {
		struct wblk *b = c->wfree;

		c->wfree = b->req.data;
		free(b);
	}
	c->nfree = 0;
}

static void on_write(uv_write_t *req, int status)
{
	struct wblk *b = (struct wblk *)req;
	struct fp_conn *c = b->c;
	bool bulk = b->cap == WBLK_BULK;

	c->inflight -= b->len;
	wblk_release(c, b);
	if (bulk && c->state < C_CLOSED) {
		/* Keep the spare blocks until large writes have paused (buffers_trim), not only
		 * until the queue drains, which during an upload happens between most blocks. */
		c->trim_due = uv_now(c->loop) + TRIM_DELAY_MS;
		arm_timer(c);
	}
	if (status < 0 && status != UV_ECANCELED && c->state < C_CLOSED) {
		reasonf(c, status, "write failed: %s", uv_strerror(status));
		hard_close(c);
		return;
	}
	if (c->want_drain && c->state == C_SECURE && fp_conn_queued(c) <= c->o.wq_low) {
		c->want_drain = false;
		if (c->ops->on_drain)
			c->ops->on_drain(c);
	}
}

/* Hand the block being filled to libuv (or to the sink of a virtual connection). */
static void submit(struct fp_conn *c)
{
	struct wblk *b = c->wcur;
	uv_buf_t buf;
	int r;

	if (!b || b->len == 0)
		return;
	c->wcur = NULL;
	c->stats.tx_bytes += b->len;
	if (c->sink) {
		c->sink(c->sink_ud, b->data, b->len);
		free(b);
		return;
	}
	if (c->state >= C_CLOSED || !c->has_tcp) {
		free(b);
		return;
	}
	buf = uv_buf_init((char *)b->data, (unsigned)b->len);
	b->c = c;
	r = uv_write(&b->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
	if (r < 0) {
		free(b);
		reasonf(c, r, "write failed: %s", uv_strerror(r));
		hard_close(c);
		return;
	}
	c->inflight += b->len;
}

/* Ciphertext (or plaintext in insecure mode) to send: append to write blocks. */
static int out_append(void *ud, const uint8_t *p, size_t n)
{
	struct fp_conn *c = ud;

	while (n > 0) {
		struct wblk *b = c->wcur;
		size_t take;

		if (b && b->len == b->cap) {
			submit(c);
			c->bulk = true;
			b = NULL;
		}
		if (!b) {
			size_t cap = c->bulk ? WBLK_BULK : WBLK_SMALL;

			if (cap < n && n <= WBLK_BULK)
				cap = n;
			if (cap == WBLK_BULK && c->wfree) {
				b = c->wfree;
				c->wfree = b->req.data;
				c->nfree--;
			} else {
				b = malloc(sizeof(*b) + cap);
				if (!b)
					return -ENOMEM;
			}
			b->len = 0;
			b->cap = cap;
			c->wcur = b;
		}
		take = b->cap - b->len < n ? b->cap - b->len : n;
		memcpy(b->data + b->len, p, take);
		b->len += take;
		p += take;
		n -= take;
	}
	return 0;
}

static void flush_out(struct fp_conn *c)
{
	submit(c);
	c->bulk = false;
}

/* Plaintext to send: through TLS, or as it is in insecure mode. */
static int plain_out(struct fp_conn *c, const uint8_t *p, size_t n)
{
	if (c->tls)
		return fp_tls_write(c->tls, p, n);
	return out_append(c, p, n);
}

struct txbuf {
	ProtobufCBuffer base;
	struct fp_conn *c;
	size_t len;
	int err;
	uint8_t buf[TX_COALESCE];
};

static void tx_flush(struct txbuf *t)
{
	if (t->len && !t->err)
		t->err = plain_out(t->c, t->buf, t->len);
	t->len = 0;
}

static void tx_append(ProtobufCBuffer *base, size_t len, const uint8_t *data)
{
	struct txbuf *t = (struct txbuf *)base;

	if (t->err)
		return;
	if (len >= TX_DIRECT) {
		tx_flush(t);
		if (!t->err)
			t->err = plain_out(t->c, data, len);
		return;
	}
	if (t->len + len > sizeof(t->buf))
		tx_flush(t);
	memcpy(t->buf + t->len, data, len);
	t->len += len;
}

int fp_conn_send(struct fp_conn *c, const Fedprune__Envelope *e)
{
	struct txbuf t;
	size_t len;
	int r;

	if (c->state != C_SECURE)
		return -ENOTCONN;
	len = fedprune__envelope__get_packed_size(e);
	if (len > c->peer_max || len > UINT32_MAX || len == 0)
		return fp_err_detail(-EMSGSIZE, "%s message of %zu bytes exceeds the limit of %zu",
				     fp_msg_name(e->msg_case), len, c->peer_max);
	t.base.append = tx_append;
	t.c = c;
	t.err = 0;
	fp_frame_put_len(t.buf, (uint32_t)len);
	t.len = FP_FRAME_HDR;
	fedprune__envelope__pack_to_buffer(e, &t.base);
	tx_flush(&t);
	r = t.err;
	flush_out(c);
	if (r < 0) {
		reasonf(c, r, "send failed: %s", fp_err_last());
		hard_close(c);
		return r;
	}
	c->stats.tx_msgs++;
	return 0;
}

int fp_conn_send_error(struct fp_conn *c, Fedprune__ErrorCode code, bool fatal, const char *msg)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__Error err = FEDPRUNE__ERROR__INIT;
	char text[FP_TEXT_MAX + 1];

	snprintf(text, sizeof(text), "%s", msg ? msg : "");
	err.code = code;
	err.message = text;
	err.fatal = fatal;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_ERROR;
	e.error = &err;
	return fp_conn_send(c, &e);
}

int fp_conn_write_raw(struct fp_conn *c, const uint8_t *p, size_t n)
{
	int r;

	if (c->state != C_SECURE)
		return -ENOTCONN;
	r = plain_out(c, p, n);
	flush_out(c);
	return r;
}

/* --- closing --- */

static void on_handle_closed(uv_handle_t *h)
{
	struct fp_conn *c = h->data;

	if (--c->handles > 0)
		return;
	if (c->ops->on_close)
		c->ops->on_close(c);
	fp_tls_free(c->tls);
	fp_frame_dec_free(&c->dec);
	wblk_trim(c);
	free(c->wcur);
	free(c);
}

static void hard_close(struct fp_conn *c)
{
	if (c->state == C_CLOSED)
		return;
	c->state = C_CLOSED;
	if (!c->reason[0])
		reasonf(c, 0, "%s", "closed");
	free(c->wcur);
	c->wcur = NULL;
	if (c->has_tcp)
		uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
	uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	struct fp_conn *c = req->data;

	(void)status;
	c->shut_pending = false;
	/* Wait for the peer's end (it may still be reading what we sent) unless it is gone. */
	if (c->peer_eof || status < 0)
		hard_close(c);
}

static void begin_close(struct fp_conn *c)
{
	int r;

	if (c->state >= C_CLOSING)
		return;
	if (c->tls && fp_tls_established(c->tls))
		fp_tls_shutdown(c->tls);
	flush_out(c);
	if (!c->has_tcp || c->state == C_CONNECTING || c->sink) {
		hard_close(c);
		return;
	}
	c->state = C_CLOSING;
	c->req.shutdown.data = c;
	r = uv_shutdown(&c->req.shutdown, (uv_stream_t *)&c->tcp, on_shutdown);
	if (r < 0) {
		hard_close(c);
		return;
	}
	c->shut_pending = true;
	c->linger_due = uv_now(c->loop) + c->o.linger_ms;
	c->timer_due = 0;
	arm_timer(c);
}

void fp_conn_close(struct fp_conn *c, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	set_reason(c, err, fmt, ap);
	va_end(ap);
	begin_close(c);
}

void fp_conn_fail(struct fp_conn *c, Fedprune__ErrorCode code, int err, const char *fmt, ...)
{
	va_list ap;

	if (c->state >= C_CLOSING)
		return;
	va_start(ap, fmt);
	set_reason(c, err, fmt, ap);
	va_end(ap);
	if (c->state == C_SECURE)
		fp_conn_send_error(c, code, true, c->reason);
	begin_close(c);
}

void fp_conn_abort(struct fp_conn *c, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	set_reason(c, err, fmt, ap);
	va_end(ap);
	hard_close(c);
}

/* --- timers --- */

static uint64_t next_deadline(const struct fp_conn *c)
{
	uint64_t d = UINT64_MAX;

	if (c->state == C_CLOSING)
		return c->linger_due;
	if (!c->ready && c->o.handshake_ms)
		d = c->t0 + c->o.handshake_ms;
	if (c->o.idle_ms && c->last_rx + c->o.idle_ms < d)
		d = c->last_rx + c->o.idle_ms;
	if (c->frame_t0 && c->o.msg_ms && c->frame_t0 + c->o.msg_ms < d)
		d = c->frame_t0 + c->o.msg_ms;
	if (c->trim_due && c->trim_due < d)
		d = c->trim_due;
	return d;
}

static void on_timer(uv_timer_t *t);
static void buffers_trim(struct fp_conn *c);

static void arm_timer(struct fp_conn *c)
{
	uint64_t d, now;

	if (c->state == C_CLOSED)
		return;
	d = next_deadline(c);
	if (d == UINT64_MAX) {
		if (c->timer_due)
			uv_timer_stop(&c->timer);
		c->timer_due = 0;
		return;
	}
	/* An armed timer that fires no later than d re-arms itself when it fires. */
	if (c->timer_due && c->timer_due <= d)
		return;
	now = uv_now(c->loop);
	c->timer_due = d;
	uv_timer_start(&c->timer, on_timer, d > now ? d - now : 0, 0);
}

static void on_timer(uv_timer_t *t)
{
	struct fp_conn *c = t->data;
	uint64_t now = uv_now(c->loop);

	c->timer_due = 0;
	if (c->state == C_CLOSING) {
		if (now >= c->linger_due) {
			reasonf(c, -ETIMEDOUT, "%s", "peer did not close in time");
			hard_close(c);
		} else {
			arm_timer(c);
		}
		return;
	}
	if (!c->ready && c->o.handshake_ms && now >= c->t0 + c->o.handshake_ms) {
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_TIMEOUT, -ETIMEDOUT,
			     "handshake not completed within %llu ms",
			     (unsigned long long)c->o.handshake_ms);
	} else if (c->frame_t0 && c->o.msg_ms && now >= c->frame_t0 + c->o.msg_ms) {
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_TIMEOUT, -ETIMEDOUT,
			     "message deadline: frame incomplete after %llu ms (%zu of %zu bytes)",
			     (unsigned long long)c->o.msg_ms, c->dec.have, c->dec.len);
	} else if (c->o.idle_ms && now >= c->last_rx + c->o.idle_ms) {
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_TIMEOUT, -ETIMEDOUT,
			     "idle: nothing received for %llu ms",
			     (unsigned long long)c->o.idle_ms);
	} else {
		if (c->trim_due && now >= c->trim_due)
			buffers_trim(c);
		arm_timer(c);
	}
}

/* --- input --- */

static void handle_frame(struct fp_conn *c)
{
	Fedprune__Envelope *e = NULL;
	Fedprune__ErrorCode code;
	unsigned need = c->server ? FP_FROM_CLIENT : FP_FROM_SERVER;
	const uint8_t *frame = c->dec.buf; /* stays until the next frame is fed */
	size_t len = c->dec.len;
	int r;

	c->frame_t0 = 0;
	if (len > FP_FRAME_KEEP) {
		c->trim_due = uv_now(c->loop) + TRIM_DELAY_MS;
		arm_timer(c); /* cheap: an earlier armed timer re-arms itself when it fires */
	}
	/* A chunk's data is handed on where it is, in the frame buffer. */
	r = fp_env_unpack_inplace(frame, len, &e);
	fp_frame_dec_next(&c->dec);
	if (r < 0) {
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, r, "%s", fp_err_last());
		return;
	}
	c->stats.rx_msgs++;
	r = fp_env_check(e, &code);
	if (r < 0) {
		fp_conn_fail(c, code, r, "%s", fp_err_last());
	} else if (!(fp_msg_senders(e->msg_case) & need)) {
		fp_conn_fail(c, FEDPRUNE__ERROR_CODE__ERROR_OUT_OF_ORDER, -EPROTO,
			     "message '%s' is not sent by a %s", fp_msg_name(e->msg_case),
			     c->server ? "client" : "server");
	} else {
		c->in_msg = true;
		c->ops->on_msg(c, e);
		c->in_msg = false;
	}
	fp_env_free_inplace(e, frame, len);
}

/* Give back what only a stream of large frames needs: the frame buffer unless a frame is half
 * read, the spare write blocks unless writes are in flight. */
static void buffers_trim(struct fp_conn *c)
{
	c->trim_due = 0;
	if (!fp_frame_dec_partial(&c->dec))
		fp_frame_dec_trim(&c->dec);
	if (c->inflight == 0 && !c->wcur)
		wblk_trim(c);
	else if (c->wfree) /* a large write still in flight: look again later */
		c->trim_due = uv_now(c->loop) + TRIM_DELAY_MS;
}

/* Plaintext arrived: split into frames. */
static void plain_in(struct fp_conn *c, const uint8_t *p, size_t n)
{
	while (n > 0 && c->state == C_SECURE) {
		bool started = fp_frame_dec_partial(&c->dec);
		ssize_t used = fp_frame_dec_feed(&c->dec, p, n);

		if (used < 0) {
			fp_conn_fail(c,
				     used == -EMSGSIZE ? FEDPRUNE__ERROR_CODE__ERROR_TOO_LARGE
						       : FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE,
				     (int)used, "%s", fp_err_last());
			return;
		}
		if (!started && used > 0 && !c->dec.done) {
			c->frame_t0 = uv_now(c->loop);
			arm_timer(c);
		}
		p += used;
		n -= (size_t)used;
		if (c->dec.done)
			handle_frame(c);
	}
}

static void became_secure(struct fp_conn *c)
{
	c->state = C_SECURE;
	if (c->tls && fp_tls_identity(c->tls) && c->server)
		snprintf(c->identity, sizeof(c->identity), "%s", fp_tls_identity(c->tls));
	if (c->ops->on_secure)
		c->ops->on_secure(c);
}

static void tls_error(struct fp_conn *c, int r)
{
	if (r == -ECONNRESET) {
		if (fp_frame_dec_partial(&c->dec))
			fp_conn_close(c, r,
				      "peer closed the TLS session mid-frame (%zu of %zu bytes)",
				      c->dec.have, c->dec.len);
		else
			fp_conn_close(c, 0, "%s", "peer closed the connection");
		return;
	}
	fp_conn_close(c, r, "%s", fp_err_last());
}

/* Ciphertext arrived. */
static void cipher_in(struct fp_conn *c, const uint8_t *p, size_t n)
{
	uint8_t scratch[4096];
	int r;

	fp_tls_set_input(c->tls, p, n);
	if (!fp_tls_established(c->tls)) {
		r = fp_tls_handshake(c->tls);
		flush_out(c); /* the next flight, or an alert */
		if (r < 0) {
			tls_error(c, r);
			return;
		}
		if (r == 0)
			return;
		became_secure(c);
	}
	while (c->state == C_SECURE) {
		uint8_t *dst;
		size_t cap = fp_frame_dec_space(&c->dec, &dst), got;
		bool direct = cap > 0;

		if (!direct) {
			dst = scratch;
			cap = sizeof(scratch);
		}
		r = fp_tls_read(c->tls, dst, cap, &got);
		if (r == 0)
			break;
		if (r < 0) {
			tls_error(c, r);
			break;
		}
		if (direct) {
			fp_frame_dec_commit(&c->dec, got);
			if (c->dec.done)
				handle_frame(c);
		} else {
			plain_in(c, scratch, got);
		}
	}
	fp_tls_set_input(c->tls, NULL, 0);
	flush_out(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	static __thread uint8_t *tl_buf;
	struct fp_conn *c = h->data;

	(void)hint;
	if (c->rbuf) {
		*buf = uv_buf_init((char *)c->rbuf, (unsigned)c->rbuf_size);
		return;
	}
	if (!tl_buf)
		tl_buf = malloc(RBUF_DEFAULT);
	*buf = uv_buf_init((char *)tl_buf, tl_buf ? RBUF_DEFAULT : 0);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct fp_conn *c = s->data;

	if (nread == 0)
		return;
	if (c->state == C_CLOSING) {
		/* Discard input; only the peer's end matters now. */
		if (nread < 0) {
			c->peer_eof = true;
			uv_read_stop(s);
			if (!c->shut_pending)
				hard_close(c);
		}
		return;
	}
	if (c->state >= C_CLOSED)
		return;
	if (nread < 0) {
		c->peer_eof = true;
		if (nread != UV_EOF)
			fp_conn_abort(c, (int)nread, "read failed: %s", uv_strerror((int)nread));
		else if (c->state == C_HANDSHAKE && c->tls)
			fp_conn_abort(c, -ECONNRESET, "%s", "peer closed during the TLS handshake");
		else if (fp_frame_dec_partial(&c->dec))
			fp_conn_abort(c, -ECONNRESET, "disconnected mid-frame (%zu of %zu bytes)",
				      c->dec.have, c->dec.len);
		else
			fp_conn_abort(c, 0, "%s", "peer closed the connection");
		return;
	}
	c->stats.rx_bytes += (size_t)nread;
	c->last_rx = uv_now(c->loop);
	if (c->tls)
		cipher_in(c, (const uint8_t *)buf->base, (size_t)nread);
	else
		plain_in(c, (const uint8_t *)buf->base, (size_t)nread);
}

static int start_reading(struct fp_conn *c)
{
	return uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* --- creation --- */

/*
 * Socket options of every connection: no Nagle delay (messages are written whole), and at
 * most NOTSENT_LOWAT bytes the kernel has not sent yet. The rest of a large transfer waits in
 * our write queue, already bounded by the high-water mark, so the data in the kernel's
 * buffers is the few hundred KiB that leaves next and is still in the caches when it is
 * copied; without the limit loopback autotuning let megabytes wait there, and the copies
 * into and out of the socket went to memory. Failing to set either only costs speed.
 */
static void tune_socket(struct fp_conn *c)
{
	int lowat = NOTSENT_LOWAT;
	uv_os_fd_t fd;

	uv_tcp_nodelay(&c->tcp, 1);
	if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
}

int fp_conn_accept(uv_stream_t *listener, const struct fp_conn_cfg *cfg, struct fp_conn **ret)
{
	struct fp_conn *c = conn_alloc(listener->loop, cfg);
	int r;

	*ret = NULL;
	if (!c)
		return -ENOMEM;
	c->server = true;
	uv_tcp_init(listener->loop, &c->tcp);
	c->tcp.data = c;
	c->has_tcp = true;
	c->handles++;
	r = uv_accept(listener, (uv_stream_t *)&c->tcp);
	if (r < 0) {
		reasonf(c, r, "accept failed: %s", uv_strerror(r));
		c->ops = &no_ops;
		hard_close(c);
		return r;
	}
	tune_socket(c);
	fill_peer(c);
	c->state = C_HANDSHAKE;
	r = start_tls(c, cfg->tls);
	if (r == 0)
		r = start_reading(c);
	if (r < 0) {
		fp_conn_abort(c, r, "cannot start connection: %s", fp_strerror(r));
		*ret = c; /* on_close follows */
		return 0;
	}
	if (!c->tls)
		became_secure(c);
	arm_timer(c);
	*ret = c;
	return 0;
}

static void on_connect(uv_connect_t *req, int status)
{
	struct fp_conn *c = req->data;
	int r;

	if (c->state >= C_CLOSING)
		return;
	if (status < 0) {
		fp_conn_abort(c, status, "connect failed: %s", uv_strerror(status));
		return;
	}
	tune_socket(c);
	fill_peer(c);
	c->state = C_HANDSHAKE;
	r = start_reading(c);
	if (r < 0) {
		fp_conn_abort(c, r, "cannot read: %s", uv_strerror(r));
		return;
	}
	if (!c->tls) {
		became_secure(c);
		return;
	}
	fp_tls_set_input(c->tls, NULL, 0);
	r = fp_tls_handshake(c->tls); /* the ClientHello */
	flush_out(c);
	if (r < 0)
		tls_error(c, r);
}

int fp_conn_connect(uv_loop_t *loop, const struct sockaddr *addr, const struct fp_conn_cfg *cfg,
		    struct fp_conn **ret)
{
	struct fp_conn *c = conn_alloc(loop, cfg);
	int r;

	*ret = NULL;
	if (!c)
		return -ENOMEM;
	uv_tcp_init(loop, &c->tcp);
	c->tcp.data = c;
	c->has_tcp = true;
	c->handles++;
	addr_name((const struct sockaddr_storage *)addr, c->peer, sizeof(c->peer));
	r = start_tls(c, cfg->tls);
	if (r == 0) {
		c->req.connect.data = c;
		r = uv_tcp_connect(&c->req.connect, &c->tcp, addr, on_connect);
	}
	if (r < 0) {
		c->ops = &no_ops;
		reasonf(c, r, "connect failed: %s", fp_strerror(r));
		hard_close(c);
		return r;
	}
	arm_timer(c);
	*ret = c;
	return 0;
}

int fp_conn_new_virtual(uv_loop_t *loop, const struct fp_conn_cfg *cfg, const char *identity,
			fp_conn_sink_fn sink, void *ud, struct fp_conn **ret)
{
	struct fp_conn *c = conn_alloc(loop, cfg);

	*ret = NULL;
	if (!c)
		return -ENOMEM;
	c->server = true;
	c->sink = sink;
	c->sink_ud = ud;
	snprintf(c->peer, sizeof(c->peer), "%s", "virtual");
	if (identity)
		snprintf(c->identity, sizeof(c->identity), "%s", identity);
	became_secure(c);
	arm_timer(c);
	*ret = c;
	return 0;
}

int fp_conn_inject(struct fp_conn *c, const uint8_t *p, size_t n)
{
	if (!c->sink || c->state != C_SECURE)
		return -ENOTCONN;
	if (c->in_msg)
		return -EBUSY; /* the message being handled points into the frame buffer */
	c->stats.rx_bytes += n;
	c->last_rx = uv_now(c->loop);
	plain_in(c, p, n);
	return 0;
}

/* --- accessors --- */

void fp_conn_set_ready(struct fp_conn *c)
{
	c->ready = true;
	c->timer_due = 0;
	uv_timer_stop(&c->timer);
	arm_timer(c);
}

void fp_conn_set_peer_max(struct fp_conn *c, size_t max)
{
	if (max >= FP_FRAME_MAX_MIN)
		c->peer_max = max;
}

void fp_conn_set_identity(struct fp_conn *c, const char *identity)
{
	snprintf(c->identity, sizeof(c->identity), "%s", identity ? identity : "");
}

size_t fp_conn_queued(const struct fp_conn *c)
{
	return c->inflight + (c->wcur ? c->wcur->len : 0);
}

bool fp_conn_writable(struct fp_conn *c)
{
	if (c->state != C_SECURE)
		return false;
	if (fp_conn_queued(c) < c->o.wq_high)
		return true;
	c->want_drain = true;
	return false;
}

bool fp_conn_closing(const struct fp_conn *c)
{
	return c->state >= C_CLOSING;
}

bool fp_conn_secure(const struct fp_conn *c)
{
	return c->state == C_SECURE;
}

const char *fp_conn_peer(const struct fp_conn *c)
{
	return c->peer;
}

const char *fp_conn_identity(const struct fp_conn *c)
{
	if (c->identity[0])
		return c->identity;
	if (!c->server && c->tls)
		return fp_tls_identity(c->tls);
	return NULL;
}

const char *fp_conn_claimed(const struct fp_conn *c)
{
	return c->tls ? fp_tls_claimed_identity(c->tls) : NULL;
}

const char *fp_conn_reason(const struct fp_conn *c)
{
	return c->reason;
}

int fp_conn_fd(const struct fp_conn *c)
{
	uv_os_fd_t fd;

	if (!c->has_tcp || c->state >= C_CLOSED)
		return -EBADF;
	if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) < 0)
		return -EBADF;
	return fd;
}

size_t fp_conn_output_held(const struct fp_conn *c)
{
	return (size_t)c->nfree * WBLK_BULK;
}

size_t fp_conn_input_held(const struct fp_conn *c)
{
	return c->dec.cap;
}

int fp_conn_error(const struct fp_conn *c)
{
	return c->err;
}

const char *fp_conn_tls_version(const struct fp_conn *c)
{
	return c->tls && fp_tls_established(c->tls) ? fp_tls_version(c->tls) : "plaintext";
}

const struct fp_conn_stats *fp_conn_stats(const struct fp_conn *c)
{
	return &c->stats;
}

void *fp_conn_data(const struct fp_conn *c)
{
	return c->data;
}

void fp_conn_set_data(struct fp_conn *c, void *data)
{
	c->data = data;
}

uv_loop_t *fp_conn_loop(const struct fp_conn *c)
{
	return c->loop;
}
