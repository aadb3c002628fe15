/*
 * The client side of the protocol on one libuv loop: keeps one connection to the server
 * (resolve, connect, TLS, Hello/Welcome), reconnects after any loss with exponential backoff
 * and full jitter (capped; reset once a Welcome arrives), sends heartbeats, and runs uploads
 * that resume where they stopped after a reconnect. Authentication failures (certificate
 * rejected by either side, identity not allowed, protocol version refused) are fatal: the link
 * stops and reports it instead of retrying.
 *
 * Like srv.h this is the daemon's network runtime and logs connection events.
 */
#ifndef FP_LINK_H
#define FP_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "conn.h"
#include "upload.h"

struct fp_link;

struct fp_link_cfg {
	const char *host; /* server DNS name or IP literal (copied) */
	uint16_t port;
	const char *server_name; /* name or IP its certificate must match; NULL = host */
	SSL_CTX *tls;		 /* borrowed; NULL = insecure mode */
	const char *client_id;	 /* Hello.client_id (the identity in insecure mode), copied */
	struct fp_conn_opts conn;
	uint32_t heartbeat_ms;	  /* used until the server's Welcome says otherwise */
	uint64_t backoff_base_ms; /* first reconnect delay ceiling */
	uint64_t backoff_cap_ms;  /* largest reconnect delay */
	uint32_t chunk_bytes;	  /* upload chunk size; 0 = the server's preference */
	uint64_t local_tokens;	  /* Hello fields */
	double capacity;
	const uint8_t *model_digest; /* FP_DIGEST_BYTES or NULL, copied */
	void *data;		     /* the application's, see fp_link_data() */
};

struct fp_link_ops {
	/* Welcome received: the link is ready (after every reconnect). Optional. */
	void (*on_ready)(struct fp_link *l, const Fedprune__Welcome *w);
	/* A message the link does not handle itself (round specs, results, errors...). e is
	 * borrowed for the call. Optional. */
	void (*on_msg)(struct fp_link *l, const Fedprune__Envelope *e);
	/* The connection went away; fatal means the link stopped for good (see above). */
	void (*on_down)(struct fp_link *l, const char *reason, bool fatal);
};

struct fp_link_stats {
	uint64_t connects;	/* connections that reached Welcome */
	uint64_t attempts;	/* connection attempts */
	uint64_t heartbeats;	/* sent */
	uint64_t echoes;	/* answered by the server */
	uint64_t last_delay_ms; /* the last reconnect delay chosen */
};

/* Result of an upload: 0 accepted (receipt is the server's answer), or a negative errno with
 * the reason (then receipt may be NULL). */
typedef void (*fp_link_upload_cb)(struct fp_link *l, int status, const char *reason,
				  const Fedprune__Receipt *receipt, void *ud);

/* Create a link and start connecting. cfg and ops are copied. Returns 0 and *ret or -errno. */
int fp_link_start(uv_loop_t *loop, const struct fp_link_cfg *cfg, const struct fp_link_ops *ops,
		  struct fp_link **ret);

/*
 * Stop: abandon an upload in progress (logged with where it stood), close the connection
 * with close_notify, close every handle. done(l, ud) runs when all is closed; the link is
 * freed after it returns.
 */
void fp_link_stop(struct fp_link *l, void (*done)(struct fp_link *l, void *ud), void *ud);

/* True while a Welcome'd connection is up. */
bool fp_link_ready(const struct fp_link *l);

/* Send e to the server. Returns 0, -ENOTCONN when not ready, or as fp_conn_send. */
int fp_link_send(struct fp_link *l, const Fedprune__Envelope *e);

/*
 * Upload n tensors for round_id (see upload.h for src; extra provides Commit fields). Runs
 * now if ready, else after the next Welcome, and resumes after reconnects until the server's
 * Receipt (or a fatal error or fp_link_stop). One upload at a time: -EBUSY otherwise.
 * done runs exactly once (not if the link is stopped first).
 */
int fp_link_upload(struct fp_link *l, uint64_t round_id, const struct fp_tensor_src *src, size_t n,
		   const Fedprune__Commit *extra, fp_link_upload_cb done, void *ud);

/* The connection (for tests: stats, raw writes); NULL when disconnected. Borrowed. */
struct fp_conn *fp_link_conn(const struct fp_link *l);

/* Counters; borrowed, valid while l lives. */
const struct fp_link_stats *fp_link_stats(const struct fp_link *l);

/* fp_link_cfg.data. */
void *fp_link_data(const struct fp_link *l);
/* The identity the server confirmed in its last Welcome ("" before). */
const char *fp_link_identity(const struct fp_link *l);

#endif
