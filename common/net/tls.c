/*
 * TLS engine over caller-owned buffers (see tls.h). A custom BIO_METHOD reads ciphertext from
 * the input the caller set and writes ciphertext through the caller's out callback, so there is
 * no intermediate memory BIO and no copy of outgoing records.
 */
#include "tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "err.h"

struct fp_tls {
	SSL *ssl;
	fp_tls_out_fn out;
	void *ud;
	const uint8_t *in; /* (in_len) ciphertext not yet consumed, borrowed */
	size_t in_len;
	bool server;
	bool established;
	bool shut;
	bool cn_invalid;	      /* server: the client's CN is not a valid identity */
	int verify_err;		      /* first X509_V_ERR_* seen while verifying the peer */
	int verify_depth;	      /* depth of the certificate verify_err is about */
	char identity[FP_ID_MAX + 1]; /* verified peer CN */
	char claimed[FP_ID_MAX + 1];  /* CN the peer's leaf certificate claimed (unverified) */
};

/* --- the BIO between OpenSSL and our buffers --- */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int bio_write_ex(BIO *b, const char *data, size_t len, size_t *written)
{
	struct fp_tls *t = BIO_get_data(b);

	BIO_clear_retry_flags(b);
	if (t->out(t->ud, (const uint8_t *)data, len) < 0)
		return 0;
	*written = len;
	return 1;
}

static int bio_read_ex(BIO *b, char *data, size_t len, size_t *readbytes)
{
	struct fp_tls *t = BIO_get_data(b);
	size_t n = t->in_len < len ? t->in_len : len;

	BIO_clear_retry_flags(b);
	if (n == 0) {
		BIO_set_retry_read(b);
		*readbytes = 0;
		return 0;
	}
	memcpy(data, t->in, n);
	t->in += n;
	t->in_len -= n;
	*readbytes = n;
	return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct fp_tls *t = BIO_get_data(b);

	(void)num;
	(void)ptr;
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	case BIO_CTRL_PENDING:
		return t ? (long)t->in_len : 0;
	case BIO_CTRL_WPENDING:
	default:
		return 0;
	}
}

static int bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static void bio_method_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "fedprune");

	if (!m)
		return;
	if (!BIO_meth_set_write_ex(m, bio_write_ex) || !BIO_meth_set_read_ex(m, bio_read_ex) ||
	    !BIO_meth_set_ctrl(m, bio_ctrl) || !BIO_meth_set_create(m, bio_create)) {
		BIO_meth_free(m);
		return;
	}
	bio_method = m;
}

/* --- identities --- */

/* The single subject CN of c as UTF-8 into out (size n). -ENOENT none, -EINVAL odd. */
static int cert_cn(X509 *c, char *out, size_t n)
{
	X509_NAME *name = X509_get_subject_name(c);
	unsigned char *u = NULL;
	ASN1_STRING *s;
	int i, len;

	out[0] = '\0';
	i = name ? X509_NAME_get_index_by_NID(name, NID_commonName, -1) : -1;
	if (i < 0)
		return -ENOENT;
	if (X509_NAME_get_index_by_NID(name, NID_commonName, i) >= 0)
		return -EINVAL; /* two CNs: ambiguous */
	s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
	len = ASN1_STRING_to_UTF8(&u, s);
	if (len < 0)
		return -EINVAL;
	if ((size_t)len >= n || memchr(u, 0, (size_t)len)) {
		/* Keep a printable prefix for log lines; the caller rejects it as an identity. */
		size_t k = (size_t)len < n - 1 ? (size_t)len : n - 1;

		for (size_t j = 0; j < k; j++)
			out[j] = u[j] ? (char)u[j] : '?';
		out[k] = '\0';
		OPENSSL_free(u);
		return -EINVAL;
	}
	memcpy(out, u, (size_t)len);
	out[len] = '\0';
	OPENSSL_free(u);
	return 0;
}

static int verify_cb(int ok, X509_STORE_CTX *x)
{
	SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct fp_tls *t = ssl ? SSL_get_app_data(ssl) : NULL;

	X509 *leaf;
	int cn = -ENOENT;

	if (!t)
		return ok;
	leaf = X509_STORE_CTX_get0_cert(x);
	if (leaf)
		cn = cert_cn(leaf, t->claimed, sizeof(t->claimed));
	if (!ok && !t->verify_err) {
		t->verify_err = X509_STORE_CTX_get_error(x);
		t->verify_depth = X509_STORE_CTX_get_error_depth(x);
	}
	/* A client whose CN cannot be an identity is refused during the handshake, so it gets
	 * an alert like any other rejected certificate. */
	if (ok && t->server && X509_STORE_CTX_get_error_depth(x) == 0 &&
	    (cn < 0 || !fp_identity_valid(t->claimed))) {
		t->cn_invalid = true;
		X509_STORE_CTX_set_error(x, X509_V_ERR_CERT_REJECTED);
		return 0;
	}
	return ok;
}

/* --- context --- */

static int load_fail(const char *what, const char *path)
{
	int r = fp_err_openssl(what);

	return fp_err_detail(r, "%s '%s': %s", what, path, fp_strerror(r));
}

static int readable(const char *what, const char *path)
{
	if (!path || !*path)
		return fp_err_detail(-EINVAL, "%s: no file configured", what);
	if (access(path, R_OK) < 0) {
		int e = -errno;

		return fp_err_detail(e, "%s '%s': %s", what, path, strerror(-e));
	}
	return 0;
}

int fp_tls_ctx_new(const struct fp_tls_opts *o, SSL_CTX **ret)
{
	SSL_CTX *ctx;
	int r;

	*ret = NULL;
	pthread_once(&bio_once, bio_method_init);
	if (!bio_method)
		return fp_err_openssl("BIO_meth_new");
	ERR_clear_error();
	ctx = SSL_CTX_new(o->server ? TLS_server_method() : TLS_client_method());
	if (!ctx)
		return fp_err_openssl("SSL_CTX_new");
	if (o->max_version) {
		SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
		SSL_CTX_set_max_proto_version(ctx, o->max_version);
	} else if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION)) {
		r = fp_err_openssl("SSL_CTX_set_min_proto_version");
		goto out;
	}
	/* AES-128-GCM first: as safe here and the fastest with AES-NI. */
	if (!SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
					   "TLS_CHACHA20_POLY1305_SHA256")) {
		r = fp_err_openssl("SSL_CTX_set_ciphersuites");
		goto out;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
					 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	if (o->server)
		SSL_CTX_set_num_tickets(ctx, 0);
	SSL_CTX_set_verify_depth(ctx, 4);

	if (o->cert || o->key) {
		r = readable("certificate", o->cert);
		if (r == 0)
			r = readable("private key", o->key);
		if (r < 0)
			goto out;
		if (SSL_CTX_use_certificate_chain_file(ctx, o->cert) != 1) {
			r = load_fail("certificate", o->cert);
			goto out;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, o->key, SSL_FILETYPE_PEM) != 1) {
			if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
				r = fp_err_openssl("SSL_CTX_use_PrivateKey_file");
				r = fp_err_detail(
					r, "private key '%s' does not match certificate '%s'",
					o->key, o->cert);
			} else {
				r = load_fail("private key", o->key);
			}
			goto out;
		}
		if (SSL_CTX_check_private_key(ctx) != 1) {
			r = fp_err_openssl("SSL_CTX_check_private_key");
			r = fp_err_detail(r, "private key '%s' does not match certificate '%s'",
					  o->key, o->cert);
			goto out;
		}
	} else if (o->server) {
		r = fp_err_detail(-EINVAL, "a TLS server needs a certificate and a key");
		goto out;
	}
	r = readable("CA certificate", o->ca);
	if (r < 0)
		goto out;
	if (SSL_CTX_load_verify_locations(ctx, o->ca, NULL) != 1) {
		r = load_fail("CA certificate", o->ca);
		goto out;
	}
	if (o->server) {
		STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca);

		if (names)
			SSL_CTX_set_client_CA_list(ctx, names);
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
				   verify_cb);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_cb);
	}
	ERR_clear_error();
	*ret = ctx;
	return 0;
out:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return r;
}

/* --- sessions --- */

int fp_tls_new(SSL_CTX *ctx, const char *peer_name, fp_tls_out_fn out, void *ud,
	       struct fp_tls **ret)
{
	struct fp_tls *t;
	BIO *bio;
	int r;

	*ret = NULL;
	pthread_once(&bio_once, bio_method_init);
	if (!bio_method)
		return fp_err_openssl("BIO_meth_new");
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->out = out;
	t->ud = ud;
	ERR_clear_error();
	t->ssl = SSL_new(ctx);
	bio = BIO_new(bio_method);
	if (!t->ssl || !bio) {
		BIO_free(bio);
		r = fp_err_openssl("SSL_new");
		goto out;
	}
	BIO_set_data(bio, t);
	SSL_set_bio(t->ssl, bio, bio);
	SSL_set_app_data(t->ssl, t);
	t->server = SSL_is_server(t->ssl) != 0;
	if (t->server) {
		SSL_set_accept_state(t->ssl);
	} else {
		SSL_set_connect_state(t->ssl);
		if (peer_name && *peer_name) {
			X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
			ASN1_OCTET_STRING *ip = a2i_IPADDRESS(peer_name);

			if (ip) {
				ASN1_OCTET_STRING_free(ip);
				r = X509_VERIFY_PARAM_set1_ip_asc(vp, peer_name);
			} else {
				r = SSL_set1_host(t->ssl, peer_name) &&
				    SSL_set_tlsext_host_name(t->ssl, peer_name);
			}
			if (r != 1) {
				r = fp_err_openssl("server name");
				r = fp_err_detail(r, "cannot verify against server name '%s'",
						  peer_name);
				goto out;
			}
		}
	}
	*ret = t;
	return 0;
out:
	fp_tls_free(t);
	ERR_clear_error();
	return r;
}

void fp_tls_free(struct fp_tls *t)
{
	if (!t)
		return;
	SSL_free(t->ssl);
	free(t);
}

void fp_tls_set_input(struct fp_tls *t, const uint8_t *p, size_t n)
{
	t->in = p;
	t->in_len = n;
}

size_t fp_tls_input_left(const struct fp_tls *t)
{
	return t->in_len;
}

bool fp_tls_established(const struct fp_tls *t)
{
	return t->established;
}

/* Reasons that mean "this peer's credentials are not accepted" (either side's view). */
static bool auth_reason(int reason)
{
	switch (reason) {
	case SSL_R_CERTIFICATE_VERIFY_FAILED:
	case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
	case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
	case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
	case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
	case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
	case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
		return true;
	default:
		return false;
	}
}

static bool version_reason(int reason)
{
	return reason == SSL_R_UNSUPPORTED_PROTOCOL ||
	       reason == SSL_R_TLSV1_ALERT_PROTOCOL_VERSION ||
	       reason == SSL_R_NO_PROTOCOLS_AVAILABLE || reason == SSL_R_WRONG_SSL_VERSION;
}

/* Turn the state after a failed SSL_* call into an errno and a detail; clears the queue. */
static int tls_fail(struct fp_tls *t, int ssl_err, const char *during)
{
	unsigned long first = ERR_peek_error();
	int reason = first ? ERR_GET_REASON(first) : 0;
	const char *text = first ? ERR_reason_error_string(first) : NULL;
	int r;

	if (t->cn_invalid) {
		r = fp_err_detail(
			-EACCES,
			"client certificate subject CN is missing or not a valid identity "
			"(1..%u characters of A-Z a-z 0-9 . _ @ -)",
			FP_ID_MAX);
	} else if (t->verify_err) {
		r = fp_err_detail(-EACCES, "%s certificate rejected: %s%s",
				  t->server ? "client" : "server",
				  X509_verify_cert_error_string(t->verify_err),
				  t->verify_depth > 0 ? " (in its issuer chain)" : "");
	} else if (first && auth_reason(reason)) {
		r = fp_err_detail(-EACCES, "TLS %s: %s", during, text ? text : "authentication");
	} else if (first && version_reason(reason)) {
		r = fp_err_detail(-EPROTONOSUPPORT, "TLS %s: %s (TLS 1.3 is required)", during,
				  text ? text : "protocol version");
	} else if (first) {
		char buf[256];

		if (text)
			snprintf(buf, sizeof(buf), "%s", text);
		else
			ERR_error_string_n(first, buf, sizeof(buf));
		r = fp_err_detail(-EPROTO, "TLS %s: %s", during, buf);
	} else {
		r = fp_err_detail(-EPROTO, "TLS %s failed (SSL error %d)", during, ssl_err);
	}
	ERR_clear_error();
	return r;
}

int fp_tls_handshake(struct fp_tls *t)
{
	int r, e;

	if (t->established)
		return 1;
	ERR_clear_error();
	r = SSL_do_handshake(t->ssl);
	if (r == 1) {
		X509 *peer = SSL_get0_peer_certificate(t->ssl);

		if (peer) {
			int c = cert_cn(peer, t->identity, sizeof(t->identity));

			if (t->server && (c < 0 || !fp_identity_valid(t->identity))) {
				if (c == 0)
					snprintf(t->claimed, sizeof(t->claimed), "%s", t->identity);
				t->identity[0] = '\0';
				return fp_err_detail(-EACCES,
						     "client certificate subject CN is missing or "
						     "not a valid identity");
			}
		} else if (t->server) {
			return fp_err_detail(-EACCES, "client presented no certificate");
		}
		t->established = true;
		return 1;
	}
	e = SSL_get_error(t->ssl, r);
	if (e == SSL_ERROR_WANT_READ) {
		ERR_clear_error();
		return 0;
	}
	return tls_fail(t, e, "handshake");
}

int fp_tls_read(struct fp_tls *t, uint8_t *buf, size_t cap, size_t *ret_n)
{
	size_t got = 0;
	int r, e;

	*ret_n = 0;
	ERR_clear_error();
	r = SSL_read_ex(t->ssl, buf, cap, &got);
	if (r == 1) {
		*ret_n = got;
		return 1;
	}
	e = SSL_get_error(t->ssl, r);
	if (e == SSL_ERROR_WANT_READ) {
		ERR_clear_error();
		return 0;
	}
	if (e == SSL_ERROR_ZERO_RETURN) {
		ERR_clear_error();
		return fp_err_detail(-ECONNRESET, "peer closed the TLS session");
	}
	return tls_fail(t, e, "read");
}

int fp_tls_write(struct fp_tls *t, const uint8_t *p, size_t n)
{
	while (n > 0) {
		size_t w = 0;
		int r;

		ERR_clear_error();
		r = SSL_write_ex(t->ssl, p, n, &w);
		if (r != 1)
			return tls_fail(t, SSL_get_error(t->ssl, r), "write");
		p += w;
		n -= w;
	}
	return 0;
}

void fp_tls_shutdown(struct fp_tls *t)
{
	if (t->shut || !t->established)
		return;
	t->shut = true;
	ERR_clear_error();
	SSL_shutdown(t->ssl);
	ERR_clear_error();
}

const char *fp_tls_identity(const struct fp_tls *t)
{
	return t->established && t->identity[0] ? t->identity : NULL;
}

const char *fp_tls_claimed_identity(const struct fp_tls *t)
{
	return t->claimed[0] ? t->claimed : NULL;
}

const char *fp_tls_version(const struct fp_tls *t)
{
	static __thread char buf[96];

	snprintf(buf, sizeof(buf), "%s %s", SSL_get_version(t->ssl),
		 SSL_CIPHER_get_name(SSL_get_current_cipher(t->ssl)));
	return buf;
}

int fp_tls_cert_info(const char *path, char *cn, size_t n, int64_t *ret_not_after)
{
	BIO *b;
	X509 *x;
	struct tm tm;
	int r;

	r = readable("certificate", path);
	if (r < 0)
		return r;
	b = BIO_new_file(path, "r");
	if (!b)
		return load_fail("certificate", path);
	x = PEM_read_bio_X509(b, NULL, NULL, NULL);
	BIO_free(b);
	if (!x)
		return load_fail("certificate", path);
	if (cert_cn(x, cn, n) < 0)
		snprintf(cn, n, "%s", "");
	memset(&tm, 0, sizeof(tm));
	if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1) {
		X509_free(x);
		return load_fail("certificate notAfter", path);
	}
	*ret_not_after = (int64_t)timegm(&tm);
	X509_free(x);
	ERR_clear_error();
	return 0;
}
