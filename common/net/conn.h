/*
 * One protocol connection on a libuv loop: a TCP stream (owned by libuv), TLS over it
 * (tls.h, optional in insecure mode), the frame decoder (frame.h) and envelope validation
 * (envelope.h), per-connection timers, a write queue with high/low water marks, and a close
 * that records why it happened. Both daemons use it; the owner reacts to callbacks.
 *
 * Lifetime: a connection is created by fp_conn_accept or fp_conn_connect and freed by the
 * library after its on_close callback returns; the owner never frees it. Every callback runs
 * on the loop thread. After fp_conn_close/fp_conn_fail/fp_conn_abort no on_msg follows.
 *
 * Timers (0 disables each): handshake (from accept/connect until fp_conn_set_ready), idle (no
 * byte received for this long), message deadline (a frame, once its first byte arrived, must
 * be complete within this). Expiry sends Error(TIMEOUT) when possible and closes.
 *
 * Back-pressure: fp_conn_queued() counts bytes handed to libuv whose write callback has not
 * run (this includes uv_stream_get_write_queue_size) plus encrypted bytes not yet handed over.
 * Producers send while fp_conn_writable() and wait for on_drain otherwise.
 */
#ifndef FP_CONN_H
#define FP_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "envelope.h"

struct fp_conn;

struct fp_conn_opts {
	size_t max_frame;      /* largest payload accepted from the peer (and sent by default) */
	uint64_t handshake_ms; /* accept/connect until fp_conn_set_ready() */
	uint64_t idle_ms;      /* longest silence from the peer */
	uint64_t msg_ms;       /* longest time for one frame once its first byte arrived */
	size_t wq_high;	       /* fp_conn_writable() is false at or above this many queued bytes */
	size_t wq_low;	       /* on_drain fires when the queue falls to this after being high */
	uint64_t linger_ms;    /* a graceful close waits at most this long for the peer */
};

struct fp_conn_ops {
	/* TLS handshake finished (identity known) or, in insecure mode, TCP connected. */
	void (*on_secure)(struct fp_conn *c);
	/* A valid envelope from the peer (version, fields and direction checked); e is borrowed
	 * for the call. The handler may send, close, or do nothing. */
	void (*on_msg)(struct fp_conn *c, const Fedprune__Envelope *e);
	/* The write queue fell to wq_low after fp_conn_writable() returned false. */
	void (*on_drain)(struct fp_conn *c);
	/* Closed (fp_conn_reason says why); c is freed when this returns. Required. */
	void (*on_close)(struct fp_conn *c);
};

struct fp_conn_cfg {
	const struct fp_conn_ops *ops; /* borrowed, must outlive the connection */
	struct fp_conn_opts opts;
	SSL_CTX *tls;		 /* NULL: plaintext (insecure development mode) */
	const char *server_name; /* client side: DNS name or IP the server must match (copied) */
	uint8_t *rbuf;		 /* (rbuf_size) read buffer shared by the connections of one
				  * loop, borrowed; NULL: a per-thread buffer */
	size_t rbuf_size;
	void *data; /* owner's pointer, see fp_conn_data() */
};

struct fp_conn_stats {
	uint64_t rx_bytes, tx_bytes; /* on the socket (ciphertext) */
	uint64_t rx_msgs, tx_msgs;
};

/* Accept one pending connection from listener (server side). Returns 0 and *ret or -errno. */
int fp_conn_accept(uv_stream_t *listener, const struct fp_conn_cfg *cfg, struct fp_conn **ret);

/*
 * Connect to addr (client side). Returns 0 and *ret; a failed connection is reported through
 * on_close (fp_conn_reason names the error), never through the return value after success.
 */
int fp_conn_connect(uv_loop_t *loop, const struct sockaddr *addr, const struct fp_conn_cfg *cfg,
		    struct fp_conn **ret);

/* Sink of a virtual connection's output; return 0 or -errno. */
typedef int (*fp_conn_sink_fn)(void *ud, const uint8_t *p, size_t n);

/*
 * A connection without a socket, for fuzzing and tests: plaintext, accepted side, already
 * secure with the given identity; its input comes from fp_conn_inject, its output goes to
 * sink. Returns 0 and *ret or -ENOMEM. It is freed like any other (after on_close).
 */
int fp_conn_new_virtual(uv_loop_t *loop, const struct fp_conn_cfg *cfg, const char *identity,
			fp_conn_sink_fn sink, void *ud, struct fp_conn **ret);

/* Feed n bytes to a virtual connection as if they had arrived. Returns 0, -ENOTCONN, or
 * -EBUSY from within c's on_msg (the message being handled still points into c's input). */
int fp_conn_inject(struct fp_conn *c, const uint8_t *p, size_t n);

/*
 * Send one envelope (framed, encrypted, queued). Returns 0, -ENOTCONN before the connection
 * is secure or once it is closing, -EMSGSIZE if larger than the peer's frame limit.
 */
int fp_conn_send(struct fp_conn *c, const Fedprune__Envelope *e);

/* Send Error{code, message, fatal}. Same returns as fp_conn_send. */
int fp_conn_send_error(struct fp_conn *c, Fedprune__ErrorCode code, bool fatal, const char *msg);

/* Write bytes as they are (unframed, inside TLS if any); for tests of hostile input. */
int fp_conn_write_raw(struct fp_conn *c, const uint8_t *p, size_t n);

/*
 * Close gracefully: record err and the reason (printf-style; only the first close of a
 * connection records), send close_notify, let queued data reach the peer, then close.
 */
void fp_conn_close(struct fp_conn *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* As fp_conn_close, but first tell the peer Error{code, reason, fatal = true}. */
void fp_conn_fail(struct fp_conn *c, Fedprune__ErrorCode code, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Close at once, dropping queued data. */
void fp_conn_abort(struct fp_conn *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* The application handshake (Hello/Welcome) is done: stop the handshake timer. */
void fp_conn_set_ready(struct fp_conn *c);

/* Largest payload the peer accepts (from its Welcome); sends above it fail with -EMSGSIZE. */
void fp_conn_set_peer_max(struct fp_conn *c, size_t max);

/* Identity in insecure mode (from Hello; the caller validated it). Copied. */
void fp_conn_set_identity(struct fp_conn *c, const char *identity);

/* Bytes queued for writing (see the header comment). */
size_t fp_conn_queued(const struct fp_conn *c);

/* True while fp_conn_queued() < wq_high; when false, on_drain will follow. */
bool fp_conn_writable(struct fp_conn *c);

/* True once a close has begun (no more messages will be delivered). */
bool fp_conn_closing(const struct fp_conn *c);

/* True while messages can be sent (TLS established, or TCP up in insecure mode). */
bool fp_conn_secure(const struct fp_conn *c);

/* "1.2.3.4:5678" or "[::1]:5678"; "-" before it is known. Valid while c lives. */
const char *fp_conn_peer(const struct fp_conn *c);
/* Peer identity: on the server the client certificate's CN (or Hello.client_id in insecure
 * mode), on the client the server certificate's CN; NULL if not known. Valid while c lives. */
const char *fp_conn_identity(const struct fp_conn *c);

/* CN claimed by a certificate that failed verification; NULL if none. Valid while c lives. */
const char *fp_conn_claimed(const struct fp_conn *c);

/* Why the connection closed ("" while open). Valid while c lives (copy it in on_close). */
const char *fp_conn_reason(const struct fp_conn *c);

/* The negative errno recorded with the reason; 0 for an orderly close. */
int fp_conn_error(const struct fp_conn *c);

/* "TLSv1.3 TLS_AES_128_GCM_SHA256", or "plaintext". Thread-local text, valid until the next
 * call. */
const char *fp_conn_tls_version(const struct fp_conn *c);

/* The socket of c (borrowed, for tests and socket statistics), or -EBADF (virtual or closed). */
int fp_conn_fd(const struct fp_conn *c);

/* Bytes of input buffer c holds for large frames (a chunk's data is read where it is); it is
 * released once input has paused for half a second. For tests and metrics. */
size_t fp_conn_input_held(const struct fp_conn *c);

/* Bytes of spare write blocks c keeps while it sends large messages; released like the input
 * buffer, half a second after its last large write. For tests and metrics. */
size_t fp_conn_output_held(const struct fp_conn *c);

/* Byte and message counters. Borrowed, valid while c lives. */
const struct fp_conn_stats *fp_conn_stats(const struct fp_conn *c);

/* The owner's pointer (fp_conn_cfg.data) and a way to change it. */
void *fp_conn_data(const struct fp_conn *c);
void fp_conn_set_data(struct fp_conn *c, void *data);

/* The loop the connection runs on. */
uv_loop_t *fp_conn_loop(const struct fp_conn *c);

#endif
