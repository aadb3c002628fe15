/*
 * TLS 1.3 with mutual authentication, driven without a socket: ciphertext that arrived is
 * handed in with fp_tls_set_input(), ciphertext to send comes out through a callback (a custom
 * BIO over the caller's buffers), so libuv keeps owning the socket. One SSL_CTX per daemon,
 * shared read-only; one struct fp_tls per connection; all calls on the loop thread.
 *
 * Identity: a client is known by the subject CN of its certificate, which must be a valid
 * identity (envelope.h fp_identity_valid). The client checks the server's certificate
 * against the name (DNS SAN) or IP address (IP SAN) it connected to.
 */
#ifndef FP_TLS_H
#define FP_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "envelope.h"

struct fp_tls_opts {
	bool server;	  /* server context: requires a client certificate */
	const char *cert; /* PEM certificate (chain) of this side, borrowed */
	const char *key;  /* PEM private key of cert, borrowed */
	const char *ca;	  /* PEM CA certificate(s) the peer's certificate must chain to */
	/* Test hook: accept TLS 1.2 and cap at max_version (e.g. TLS1_2_VERSION); 0 = TLS 1.3 only. */
	int max_version;
};

/*
 * Create an SSL_CTX for one side: TLS 1.3 only, AES-128-GCM preferred, peer verification
 * against o->ca (a server also demands a client certificate), no renegotiation, no session
 * tickets, buffers released when idle. Returns 0 and *ret (free with SSL_CTX_free), or a
 * negative errno / -FP_ESSL with a detail naming the file that failed.
 */
int fp_tls_ctx_new(const struct fp_tls_opts *o, SSL_CTX **ret);

struct fp_tls;

/* Called with ciphertext to send (may be called from any fp_tls_* call); return 0 or -ENOMEM. */
typedef int (*fp_tls_out_fn)(void *ud, const uint8_t *p, size_t n);

/*
 * A TLS session over ctx. peer_name (client side only, borrowed for the call): the DNS name or
 * IP literal the server's certificate must match; NULL skips the check (tests only). out/ud
 * receive the ciphertext. Returns 0 and *ret (free with fp_tls_free) or -FP_ESSL/-ENOMEM.
 */
int fp_tls_new(SSL_CTX *ctx, const char *peer_name, fp_tls_out_fn out, void *ud,
	       struct fp_tls **ret);

/* Free t (NULL is fine). */
void fp_tls_free(struct fp_tls *t);

/* Hand over n bytes of ciphertext, borrowed until the next fp_tls_set_input (or until used). */
void fp_tls_set_input(struct fp_tls *t, const uint8_t *p, size_t n);

/* Bytes of the input not yet consumed by OpenSSL. */
size_t fp_tls_input_left(const struct fp_tls *t);

/*
 * Advance the handshake with the input given. Returns 1 when it is complete (and on the
 * server the client identity is known), 0 when more input is needed, or -EPROTO /
 * -EACCES (authentication failed: certificate rejected on either side) with a detail
 * giving the reason ("certificate has expired", "peer did not return a certificate", ...).
 */
int fp_tls_handshake(struct fp_tls *t);

/* True once fp_tls_handshake returned 1. */
bool fp_tls_established(const struct fp_tls *t);

/*
 * Decrypt into buf (cap bytes). Returns 1 with *ret_n > 0 bytes, 0 when the input is used up,
 * -ECONNRESET when the peer sent close_notify, or -EPROTO / -EACCES with a detail.
 */
int fp_tls_read(struct fp_tls *t, uint8_t *buf, size_t cap, size_t *ret_n);

/* Encrypt all n bytes (ciphertext goes to the out callback). Returns 0 or negative errno. */
int fp_tls_write(struct fp_tls *t, const uint8_t *p, size_t n);

/* Send close_notify (once; further calls do nothing). */
void fp_tls_shutdown(struct fp_tls *t);

/*
 * The verified identity of the peer: the client certificate's CN on the server, the server
 * certificate's CN on the client; NULL before the handshake. Valid until fp_tls_free.
 */
const char *fp_tls_identity(const struct fp_tls *t);

/*
 * The CN the peer's certificate claimed even if verification failed (for log lines about a
 * rejected peer); NULL if none was seen. Valid until fp_tls_free.
 */
const char *fp_tls_claimed_identity(const struct fp_tls *t);

/* The negotiated protocol and cipher, e.g. "TLSv1.3 TLS_AES_128_GCM_SHA256" (static text). */
const char *fp_tls_version(const struct fp_tls *t);

/*
 * The certificate at path: its subject CN into cn (size n) and its notAfter as a Unix time.
 * Returns 0 or a negative errno with a detail. For startup checks and log lines.
 */
int fp_tls_cert_info(const char *path, char *cn, size_t n, int64_t *ret_not_after);

#endif
