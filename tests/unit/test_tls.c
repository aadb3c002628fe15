/*
 * The TLS engine without sockets: two fp_tls sessions wired back to back through memory,
 * certificates made at test time (net_certs.c), and deploy/gen-certs.sh checked end to end.
 */
#include "test.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "net_certs.h"
#include "tls.h"

struct pipe_buf {
	uint8_t *p;
	size_t len, cap;
};

static int pipe_out(void *ud, const uint8_t *p, size_t n)
{
	struct pipe_buf *b = ud;

	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
	return 0;
}

/* Hand t what is in b; afterwards drop what t consumed. */
static void give(struct fp_tls *t, struct pipe_buf *b)
{
	fp_tls_set_input(t, b->p, b->len);
}

static void used(struct fp_tls *t, struct pipe_buf *b)
{
	size_t left = fp_tls_input_left(t);

	if (left && left != b->len)
		memmove(b->p, b->p + (b->len - left), left);
	b->len = left;
	fp_tls_set_input(t, NULL, 0);
}

struct pair {
	struct fp_tls *c, *s;
	struct pipe_buf to_c, to_s;
	int rc, rs; /* handshake results: 1 done, <0 error */
	char cerr[256], serr[256];
};

static struct fp_test_pki pki;

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

static void pair_open(struct pair *pp, SSL_CTX *cctx, SSL_CTX *sctx, const char *name)
{
	memset(pp, 0, sizeof(*pp));
	assert_int_equal(fp_tls_new(cctx, name, pipe_out, &pp->to_s, &pp->c), 0);
	assert_int_equal(fp_tls_new(sctx, NULL, pipe_out, &pp->to_c, &pp->s), 0);
}

static void pair_close(struct pair *pp)
{
	fp_tls_free(pp->c);
	fp_tls_free(pp->s);
	free(pp->to_c.p);
	free(pp->to_s.p);
}

/* Run both handshakes until each finished or failed (at most a few flights). */
static void shake(struct pair *pp)
{
	for (int i = 0; i < 8; i++) {
		if (pp->rc == 0) {
			give(pp->c, &pp->to_c);
			pp->rc = fp_tls_handshake(pp->c);
			used(pp->c, &pp->to_c);
			if (pp->rc < 0)
				snprintf(pp->cerr, sizeof(pp->cerr), "%s", fp_err_last());
		}
		if (pp->rs == 0) {
			give(pp->s, &pp->to_s);
			pp->rs = fp_tls_handshake(pp->s);
			used(pp->s, &pp->to_s);
			if (pp->rs < 0)
				snprintf(pp->serr, sizeof(pp->serr), "%s", fp_err_last());
		}
	}
}

/* Read everything available on t from b into out (cap bytes); returns fp_tls_read's last. */
static int drain(struct fp_tls *t, struct pipe_buf *b, uint8_t *out, size_t cap, size_t *got)
{
	int r;

	*got = 0;
	give(t, b);
	for (;;) {
		size_t n = 0;

		r = fp_tls_read(t, out + *got, cap - *got, &n);
		if (r != 1)
			break;
		*got += n;
	}
	used(t, b);
	return r;
}

static void test_mtls_ok(void **state)
{
	SSL_CTX *sctx = fp_test_server_ctx(&pki);
	SSL_CTX *cctx = fp_test_client_ctx(&pki, "alice", 0, 0);
	uint8_t big[100000], back[100000];
	struct pair pp;
	size_t got;

	(void)state;
	pair_open(&pp, cctx, sctx, "localhost");
	shake(&pp);
	assert_int_equal(pp.rc, 1);
	assert_int_equal(pp.rs, 1);
	assert_true(fp_tls_established(pp.s));
	assert_string_equal(fp_tls_identity(pp.s), "alice");
	assert_string_equal(fp_tls_identity(pp.c), "localhost");
	assert_string_equal(fp_tls_version(pp.s), "TLSv1.3 TLS_AES_128_GCM_SHA256");
	/* A payload spanning several records, both directions. */
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 7 + 3);
	assert_int_equal(fp_tls_write(pp.c, big, sizeof(big)), 0);
	assert_int_equal(drain(pp.s, &pp.to_s, back, sizeof(back), &got), 0);
	assert_int_equal(got, sizeof(big));
	assert_memory_equal(back, big, sizeof(big));
	assert_int_equal(fp_tls_write(pp.s, big, 1000), 0);
	assert_int_equal(drain(pp.c, &pp.to_c, back, sizeof(back), &got), 0);
	assert_int_equal(got, 1000);
	assert_memory_equal(back, big, 1000);
	/* close_notify reads as -ECONNRESET on the other side. */
	fp_tls_shutdown(pp.c);
	assert_int_equal(drain(pp.s, &pp.to_s, back, sizeof(back), &got), -ECONNRESET);
	pair_close(&pp);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

/* The server must refuse; the client sees the alert as an authentication failure too. */
static void expect_refused(SSL_CTX *cctx, const char *server_reason, const char *claimed)
{
	SSL_CTX *sctx = fp_test_server_ctx(&pki);
	uint8_t buf[256];
	struct pair pp;
	size_t got;
	int r;

	pair_open(&pp, cctx, sctx, "localhost");
	shake(&pp);
	assert_int_equal(pp.rs, -EACCES);
	if (!strstr(pp.serr, server_reason))
		fail_msg("server reason '%s' lacks '%s'", pp.serr, server_reason);
	if (claimed)
		assert_string_equal(fp_tls_claimed_identity(pp.s), claimed);
	assert_null(fp_tls_identity(pp.s));
	/* TLS 1.3: the client finished first and learns of the refusal from the alert. */
	if (pp.rc == 1) {
		r = drain(pp.c, &pp.to_c, buf, sizeof(buf), &got);
		assert_int_equal(r, -EACCES);
	} else {
		assert_int_equal(pp.rc, -EACCES);
	}
	pair_close(&pp);
	SSL_CTX_free(sctx);
}

static void test_no_client_cert(void **state)
{
	SSL_CTX *cctx = fp_test_client_ctx(&pki, NULL, 0, 0);

	(void)state;
	expect_refused(cctx, "did not return a certificate", NULL);
	SSL_CTX_free(cctx);
}

static void test_foreign_ca(void **state)
{
	SSL_CTX *cctx = fp_test_client_ctx(&pki, "mallory", FP_CERT_FOREIGN, 0);

	(void)state;
	expect_refused(cctx, "unable to get local issuer certificate", "mallory");
	SSL_CTX_free(cctx);
}

static void test_expired(void **state)
{
	SSL_CTX *cctx = fp_test_client_ctx(&pki, "oldtimer", FP_CERT_EXPIRED, 0);

	(void)state;
	expect_refused(cctx, "certificate has expired", "oldtimer");
	SSL_CTX_free(cctx);
}

static void test_bad_cn(void **state)
{
	SSL_CTX *cctx = fp_test_client_ctx(&pki, "not an identity!", 0, 0);

	(void)state;
	expect_refused(cctx, "not a valid identity", "not an identity!");
	SSL_CTX_free(cctx);
}

static void test_tls12_client(void **state)
{
	SSL_CTX *sctx = fp_test_server_ctx(&pki);
	SSL_CTX *cctx = fp_test_client_ctx(&pki, "alice", 0, TLS1_2_VERSION);
	struct pair pp;

	(void)state;
	pair_open(&pp, cctx, sctx, "localhost");
	shake(&pp);
	assert_int_equal(pp.rs, -EPROTONOSUPPORT);
	assert_non_null(strstr(pp.serr, "TLS 1.3 is required"));
	assert_int_equal(pp.rc, -EPROTONOSUPPORT);
	pair_close(&pp);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

static void check_server_name(const char *name, int want)
{
	SSL_CTX *sctx = fp_test_server_ctx(&pki);
	SSL_CTX *cctx = fp_test_client_ctx(&pki, "alice", 0, 0);
	struct pair pp;

	pair_open(&pp, cctx, sctx, name);
	shake(&pp);
	assert_int_equal(pp.rc, want);
	if (want < 0) {
		assert_non_null(strstr(pp.cerr, "server certificate rejected"));
		assert_true(strstr(pp.cerr, "mismatch") != NULL);
	}
	pair_close(&pp);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
}

static void test_server_name(void **state)
{
	(void)state;
	check_server_name("localhost", 1);
	check_server_name("127.0.0.1", 1);
	check_server_name("::1", 1);
	check_server_name("fedprune.example.org", -EACCES);
	check_server_name("127.0.0.2", -EACCES);
}

static void test_server_from_foreign_ca(void **state)
{
	/* The client trusts only the federation CA; a server certificate from another CA fails. */
	struct fp_tls_opts so = { .server = true, .ca = pki.ca };
	SSL_CTX *sctx = NULL, *cctx = fp_test_client_ctx(&pki, "alice", 0, 0);
	char *crt, *key;
	struct pair pp;

	(void)state;
	fp_test_pki_issue(&pki, "rogue-server", "localhost", FP_CERT_SERVER | FP_CERT_FOREIGN, &crt,
			  &key);
	so.cert = crt;
	so.key = key;
	assert_int_equal(fp_tls_ctx_new(&so, &sctx), 0);
	pair_open(&pp, cctx, sctx, "localhost");
	shake(&pp);
	assert_int_equal(pp.rc, -EACCES);
	assert_non_null(strstr(pp.cerr, "unable to get local issuer certificate"));
	pair_close(&pp);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
	free(crt);
	free(key);
}

static void test_garbage(void **state)
{
	SSL_CTX *sctx = fp_test_server_ctx(&pki);
	struct fp_tls *s;
	struct pipe_buf out = { 0 };
	static const uint8_t junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
	int r;

	(void)state;
	assert_int_equal(fp_tls_new(sctx, NULL, pipe_out, &out, &s), 0);
	fp_tls_set_input(s, junk, sizeof(junk) - 1);
	r = fp_tls_handshake(s);
	assert_int_equal(r, -EPROTO);
	assert_non_null(strstr(fp_err_last(), "TLS handshake"));
	fp_tls_free(s);
	free(out.p);
	SSL_CTX_free(sctx);
}

static void test_ctx_errors(void **state)
{
	struct fp_tls_opts o = { .server = true,
				 .cert = "/nonexistent/server.crt",
				 .key = pki.server_key,
				 .ca = pki.ca };
	SSL_CTX *ctx = NULL;
	char *crt, *key;

	(void)state;
	assert_int_equal(fp_tls_ctx_new(&o, &ctx), -ENOENT);
	assert_null(ctx);
	assert_non_null(strstr(fp_err_last(), "/nonexistent/server.crt"));
	/* A key that belongs to another certificate. */
	fp_test_pki_issue(&pki, "other", "other", 0, &crt, &key);
	o.cert = pki.server_crt;
	o.key = key;
	assert_int_equal(fp_tls_ctx_new(&o, &ctx), -FP_ESSL);
	assert_non_null(strstr(fp_err_last(), "does not match"));
	/* A file that is not PEM. */
	o.key = pki.server_key;
	o.ca = "/etc/hostname";
	if (access(o.ca, R_OK) == 0) {
		assert_int_equal(fp_tls_ctx_new(&o, &ctx), -FP_ESSL);
		assert_non_null(strstr(fp_err_last(), "CA certificate '/etc/hostname'"));
	}
	/* A server without a certificate. */
	o.cert = o.key = NULL;
	o.ca = pki.ca;
	assert_int_equal(fp_tls_ctx_new(&o, &ctx), -EINVAL);
	free(crt);
	free(key);
}

static void test_cert_info(void **state)
{
	char cn[80];
	int64_t na = 0;

	(void)state;
	assert_int_equal(fp_tls_cert_info(pki.server_crt, cn, sizeof(cn), &na), 0);
	assert_string_equal(cn, "localhost");
	assert_true(na > time(NULL));
	assert_true(fp_tls_cert_info("/nonexistent", cn, sizeof(cn), &na) < 0);
}

/* deploy/gen-certs.sh: files, modes, SANs and EKUs that work with our engine, no overwrite. */
static void test_gen_certs(void **state)
{
	char *dir = fp_test_mkdtemp(), *cmd = NULL, path[512], path2[512];
	struct fp_tls_opts so = { .server = true }, co = { 0 };
	SSL_CTX *sctx = NULL, *cctx = NULL;
	struct stat st, st2;
	struct pair pp;

	(void)state;
	assert_true(asprintf(&cmd,
			     "%s/deploy/gen-certs.sh %s/pki --server-name localhost,fp.example "
			     "--server-ip 127.0.0.1 --clients 2 >/dev/null",
			     FP_SOURCE_DIR, dir) > 0);
	assert_int_equal(system(cmd), 0);
	snprintf(path, sizeof(path), "%s/pki/server.key", dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	snprintf(path, sizeof(path), "%s/pki/ca.key", dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	snprintf(path, sizeof(path), "%s/pki/client-2.crt", dir);
	assert_int_equal(access(path, R_OK), 0);

	char ca[512], scrt[512], skey[512], ccrt[512], ckey[512];
	snprintf(ca, sizeof(ca), "%s/pki/ca.crt", dir);
	snprintf(scrt, sizeof(scrt), "%s/pki/server.crt", dir);
	snprintf(skey, sizeof(skey), "%s/pki/server.key", dir);
	snprintf(ccrt, sizeof(ccrt), "%s/pki/client-1.crt", dir);
	snprintf(ckey, sizeof(ckey), "%s/pki/client-1.key", dir);
	so.cert = scrt;
	so.key = skey;
	so.ca = ca;
	co.cert = ccrt;
	co.key = ckey;
	co.ca = ca;
	if (fp_tls_ctx_new(&so, &sctx) < 0 || fp_tls_ctx_new(&co, &cctx) < 0)
		fail_msg("gen-certs output rejected: %s", fp_err_last());
	pair_open(&pp, cctx, sctx, "fp.example");
	shake(&pp);
	assert_int_equal(pp.rc, 1);
	assert_int_equal(pp.rs, 1);
	assert_string_equal(fp_tls_identity(pp.s), "client-1");
	pair_close(&pp);
	pair_open(&pp, cctx, sctx, "127.0.0.1");
	shake(&pp);
	assert_int_equal(pp.rc, 1);
	pair_close(&pp);

	/* Rerunning keeps existing files; --force replaces them. */
	snprintf(path2, sizeof(path2), "%s/pki/server.crt", dir);
	assert_int_equal(stat(path2, &st), 0);
	sleep(1);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(stat(path2, &st2), 0);
	assert_int_equal(st.st_mtime, st2.st_mtime);
	free(cmd);
	assert_true(
		asprintf(&cmd,
			 "%s/deploy/gen-certs.sh %s/pki --server-name localhost --clients alice "
			 "--force >/dev/null",
			 FP_SOURCE_DIR, dir) > 0);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(stat(path2, &st2), 0);
	assert_true(st2.st_mtime > st.st_mtime);
	snprintf(path, sizeof(path), "%s/pki/alice.crt", dir);
	assert_int_equal(access(path, R_OK), 0);
	/* A usage error exits 2. */
	free(cmd);
	assert_true(asprintf(&cmd,
			     "%s/deploy/gen-certs.sh %s/pki --server-name localhost --clients 0 "
			     "2>/dev/null",
			     FP_SOURCE_DIR, dir) > 0);
	assert_int_equal(WEXITSTATUS(system(cmd)), 2);
	free(cmd);
	SSL_CTX_free(cctx);
	SSL_CTX_free(sctx);
	fp_test_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mtls_ok),	    cmocka_unit_test(test_no_client_cert),
		cmocka_unit_test(test_foreign_ca),  cmocka_unit_test(test_expired),
		cmocka_unit_test(test_bad_cn),	    cmocka_unit_test(test_tls12_client),
		cmocka_unit_test(test_server_name), cmocka_unit_test(test_server_from_foreign_ca),
		cmocka_unit_test(test_garbage),	    cmocka_unit_test(test_ctx_errors),
		cmocka_unit_test(test_cert_info),   cmocka_unit_test(test_gen_certs),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
