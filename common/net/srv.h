/*
 * The server side of the protocol on one libuv loop: listening socket, connections
 * (conn.h), the Hello/Welcome handshake with version check and identity echo, the optional
 * allowlist, one session per client identity that survives reconnects, heartbeat answers,
 * chunked uploads with digests and resume (upload.h), and dispatch of every other message to
 * a handler the application registers per message type.
 *
 * This module is the daemon's network runtime: it logs connection events (logfmt, with the
 * peer address, the identity when known and the reason) in addition to returning errors.
 */
#ifndef FP_SRV_H
#define FP_SRV_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "conn.h"
#include "netcfg.h"
#include "upload.h"

struct fp_srv;

/* One client identity. Lives from its first Hello until it expires (session_ttl after its
 * connection went away) or the server stops. Fields are read-only for the application. */
struct fp_session {
	struct fp_srv *srv;
	char identity[FP_ID_MAX + 1];
	struct fp_conn *conn;	/* current connection; NULL while disconnected */
	struct fp_upload_rx rx; /* what this client uploaded for rx.round_id */
	uint64_t local_tokens;	/* from its last Hello */
	double capacity;	/* from its last Hello */
	uint64_t connects;	/* Hellos accepted so far */
	uint64_t gone_since;	/* loop time its connection closed; 0 while connected */
	bool commit_pending;	/* on_commit answered FP_SRV_COMMIT_LATER, not yet done */
	void *data;		/* the application's per-client state */
	struct fp_session *next;
};

/*
 * Handler for one message type (after the handshake). e is borrowed for the call. Return 0,
 * or a negative errno to close the connection with Error(INTERNAL) and fp_err_last() as the
 * reason. Use fp_session_send / fp_session_error to answer.
 */
typedef int (*fp_srv_handler)(struct fp_srv *srv, struct fp_session *s,
			      const Fedprune__Envelope *e);

#define FP_SRV_COMMIT_LATER (-EINPROGRESS)

struct fp_srv_ops {
	/* A Hello passed the checks; return 0 to welcome s, or an ErrorCode (> 0) to refuse
	 * (the connection is then closed with that code). Optional. */
	int (*on_hello)(struct fp_srv *srv, struct fp_session *s, const Fedprune__Hello *h);
	/* The Welcome went out to s: the application may now send (e.g. the round spec).
	 * Optional. */
	void (*on_welcome)(struct fp_srv *srv, struct fp_session *s);
	/* The connection of s closed (s stays for a reconnect). Optional. */
	void (*on_leave)(struct fp_srv *srv, struct fp_session *s, const char *reason);
	/* A chunk was accepted (digest checks pending until the tensor's last chunk). Return 0
	 * or an ErrorCode (> 0) to refuse it. Optional: without it the bytes are dropped after
	 * hashing (the transport still tracks what was received). */
	int (*on_chunk)(struct fp_srv *srv, struct fp_session *s, const Fedprune__TensorChunk *c);
	/* A tensor is complete and its digest verified. Optional. */
	void (*on_tensor)(struct fp_srv *srv, struct fp_session *s, const struct fp_rx_tensor *t);
	/* A commit matched what was received; return 0 to accept, an ErrorCode to refuse, or
	 * FP_SRV_COMMIT_LATER to answer with fp_session_commit_done, later (e.g. after storing
	 * the submission durably off the loop; meanwhile the upload counts as not committed and
	 * chunks or a second Commit are refused) or already inside this call (to refuse with a
	 * reason of its own). Optional. */
	int (*on_commit)(struct fp_srv *srv, struct fp_session *s, const Fedprune__Commit *c);
	/* Any connection closed: peer address, identity (NULL if never known; the CN a rejected
	 * certificate claimed is passed as claimed), and why. For tests and metrics. Optional. */
	void (*on_conn_closed)(struct fp_srv *srv, const char *peer, const char *identity,
			       const char *claimed, const char *reason, int err);
	/* A session is about to be freed (expired or server stopped). Optional. */
	void (*on_session_free)(struct fp_srv *srv, struct fp_session *s);
};

struct fp_srv_cfg {
	const char *listen;   /* IPv4 or IPv6 literal to bind; NULL: no listening socket (only
			      * fp_srv_attach_virtual connections, for fuzzing) */
	uint16_t port;	      /* 0: any free port (see fp_srv_port) */
	uint32_t max_clients; /* connections held at once; more are closed at accept */
	SSL_CTX *tls;	      /* borrowed, outlives the server; NULL = insecure mode */
	const struct fp_allowlist *allow; /* borrowed; NULL or empty = every CA-signed identity */
	struct fp_conn_opts conn;
	uint32_t heartbeat_ms;	   /* sent to clients in Welcome */
	uint32_t chunk_bytes;	   /* preferred chunk size, sent in Welcome */
	uint64_t max_upload;	   /* most bytes of one client's submission */
	uint64_t session_ttl_ms;   /* a disconnected session is kept this long */
	uint64_t insecure_warn_ms; /* insecure mode: warn this often (0: 60 s) */
	void *data;		   /* the application's, see fp_srv_data() */
};

struct fp_srv_stats {
	uint64_t accepted;   /* TCP connections accepted */
	uint64_t welcomed;   /* Hellos answered with Welcome */
	uint64_t rejected;   /* connections closed with a non-zero error */
	uint64_t heartbeats; /* heartbeats answered */
	uint64_t chunks;     /* chunks accepted */
	uint64_t commits;    /* commits accepted */
	size_t conns;	     /* connections open now */
	size_t sessions;     /* sessions held now */
};

/*
 * Create a server on loop and start listening. ops is copied. Returns 0 and *ret, or a
 * negative errno with a detail (e.g. the address is in use).
 */
int fp_srv_start(uv_loop_t *loop, const struct fp_srv_cfg *cfg, const struct fp_srv_ops *ops,
		 struct fp_srv **ret);

/* The port actually bound (useful with port 0). */
int fp_srv_port(const struct fp_srv *srv);

/* Handle type with fn instead of the default (NULL restores the default). */
void fp_srv_set_handler(struct fp_srv *srv, fp_msg_t type, fp_srv_handler fn);

/*
 * Stop: close the listener, tell every client Error(SHUTTING_DOWN), log the uploads left
 * incomplete (they stay resumable only if the process keeps running), close every connection
 * and handle. done(srv, ud) runs once all is closed; the server is freed after it returns.
 */
void fp_srv_stop(struct fp_srv *srv, void (*done)(struct fp_srv *srv, void *ud), void *ud);

/* Counters; borrowed, valid while srv lives. */
const struct fp_srv_stats *fp_srv_stats(const struct fp_srv *srv);

/* fp_srv_cfg.data. */
void *fp_srv_data(const struct fp_srv *srv);

/* The session of identity, or NULL. */
struct fp_session *fp_srv_session(struct fp_srv *srv, const char *identity);

/* Send e to the client of s. Returns 0, -ENOTCONN if it is not connected, or as fp_conn_send. */
int fp_session_send(struct fp_session *s, const Fedprune__Envelope *e);

/* Send Error{code, message, fatal}; a fatal error also closes the connection. */
int fp_session_error(struct fp_session *s, Fedprune__ErrorCode code, bool fatal, const char *fmt,
		     ...) __attribute__((format(printf, 4, 5)));

/*
 * Answer a commit deferred with FP_SRV_COMMIT_LATER: code 0 accepts it (the Receipt says
 * accepted and the upload is committed), an ErrorCode (> 0) refuses it with reason. The
 * Receipt goes out if the client is still connected; otherwise it learns the outcome from
 * UploadStatus after it reconnects. Returns 0, -EINVAL (no commit pending) or -ENOMEM.
 */
int fp_session_commit_done(struct fp_session *s, int code, const char *reason);

/*
 * A connection without a socket (fuzzing, tests): plaintext input through fp_conn_inject is
 * handled exactly like a client's; output goes to sink. In TLS mode identity stands for the
 * certificate CN; in insecure mode Hello.client_id decides as usual.
 */
int fp_srv_attach_virtual(struct fp_srv *srv, const char *identity, fp_conn_sink_fn sink, void *ud,
			  struct fp_conn **ret);

#endif
