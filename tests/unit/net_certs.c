/*
 * Test PKI generated with the OpenSSL API (see net_certs.h).
 */
#include "test.h"

#include "net_certs.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "err.h"
#include "tls.h"

static long serial = 1;

static EVP_PKEY *new_key(void)
{
	EVP_PKEY *k = EVP_EC_gen("P-256");

	assert_non_null(k);
	return k;
}

static void add_ext(X509 *issuer, X509 *x, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ex;

	X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
	ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	assert_non_null(ex);
	assert_int_equal(X509_add_ext(x, ex, -1), 1);
	X509_EXTENSION_free(ex);
}

/* A certificate for key with subject CN cn, signed by (issuer, ikey) or self-signed. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *ikey, long from,
		       long to, bool ca, int flags)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();

	assert_non_null(x);
	assert_int_equal(X509_set_version(x, 2), 1);
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), from));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), to));
	assert_int_equal(X509_set_pubkey(x, key), 1);
	assert_int_equal(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
						    (const unsigned char *)cn, -1, -1, 0),
			 1);
	assert_int_equal(X509_set_subject_name(x, name), 1);
	assert_int_equal(X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name), 1);
	X509_NAME_free(name);
	add_ext(issuer, x, NID_subject_key_identifier, "hash");
	if (ca) {
		add_ext(issuer, x, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(issuer, x, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(issuer, x, NID_basic_constraints, "CA:FALSE");
		add_ext(issuer, x, NID_key_usage, "critical,digitalSignature");
		add_ext(issuer, x, NID_authority_key_identifier, "keyid");
		if (flags & FP_CERT_SERVER) {
			add_ext(issuer, x, NID_ext_key_usage, "serverAuth");
			add_ext(issuer, x, NID_subject_alt_name,
				"DNS:localhost,IP:127.0.0.1,IP:::1");
		} else {
			add_ext(issuer, x, NID_ext_key_usage, "clientAuth");
		}
	}
	assert_true(X509_sign(x, ikey ? ikey : key, EVP_sha256()) > 0);
	return x;
}

static char *path_in(const char *dir, const char *name, const char *ext)
{
	char *p = NULL;

	assert_true(asprintf(&p, "%s/%s.%s", dir, name, ext) > 0);
	return p;
}

static void write_cert(const char *path, X509 *x)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(PEM_write_X509(f, x), 1);
	assert_int_equal(fclose(f), 0);
}

static void write_key(const char *path, EVP_PKEY *k)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
	assert_int_equal(fclose(f), 0);
}

static X509 *read_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *x;

	assert_non_null(f);
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	return x;
}

static EVP_PKEY *read_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;

	assert_non_null(f);
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(k);
	return k;
}

/* Create a CA named name in p->dir (ca files name.crt / name.key). */
static void make_ca(const char *dir, const char *name, const char *cn)
{
	EVP_PKEY *k = new_key();
	X509 *x = make_cert(k, cn, NULL, NULL, -3600, 30L * 86400, true, 0);
	char *crt = path_in(dir, name, "crt"), *key = path_in(dir, name, "key");

	write_cert(crt, x);
	write_key(key, k);
	X509_free(x);
	EVP_PKEY_free(k);
	free(crt);
	free(key);
}

void fp_test_pki_issue(struct fp_test_pki *p, const char *name, const char *cn, int flags,
		       char **crt, char **key)
{
	const char *ca = flags & FP_CERT_FOREIGN ? "foreign-ca" : "ca";
	char *ca_crt = path_in(p->dir, ca, "crt"), *ca_key = path_in(p->dir, ca, "key");
	X509 *issuer = read_cert(ca_crt);
	EVP_PKEY *ikey = read_key(ca_key);
	EVP_PKEY *k = new_key();
	long from = flags & FP_CERT_EXPIRED ? -2L * 86400 : -3600;
	long to = flags & FP_CERT_EXPIRED ? -86400 : 86400;
	X509 *x = make_cert(k, cn, issuer, ikey, from, to, false, flags);

	*crt = path_in(p->dir, name, "crt");
	*key = path_in(p->dir, name, "key");
	write_cert(*crt, x);
	write_key(*key, k);
	X509_free(x);
	X509_free(issuer);
	EVP_PKEY_free(k);
	EVP_PKEY_free(ikey);
	free(ca_crt);
	free(ca_key);
}

void fp_test_pki_create(struct fp_test_pki *p)
{
	memset(p, 0, sizeof(*p));
	p->dir = fp_test_mkdtemp();
	make_ca(p->dir, "ca", "fedprune test CA");
	make_ca(p->dir, "foreign-ca", "somebody else's CA");
	p->ca = path_in(p->dir, "ca", "crt");
	fp_test_pki_issue(p, "server", "localhost", FP_CERT_SERVER, &p->server_crt, &p->server_key);
}

void fp_test_pki_free(struct fp_test_pki *p)
{
	fp_test_rmtree(p->dir);
	free(p->dir);
	free(p->ca);
	free(p->server_crt);
	free(p->server_key);
	memset(p, 0, sizeof(*p));
}

SSL_CTX *fp_test_server_ctx(struct fp_test_pki *p)
{
	struct fp_tls_opts o = {
		.server = true, .cert = p->server_crt, .key = p->server_key, .ca = p->ca
	};
	SSL_CTX *ctx = NULL;
	int r = fp_tls_ctx_new(&o, &ctx);

	if (r < 0)
		fail_msg("server ctx: %s", fp_err_last());
	return ctx;
}

SSL_CTX *fp_test_client_ctx(struct fp_test_pki *p, const char *cn, int flags, int max_version)
{
	struct fp_tls_opts o = { .ca = p->ca, .max_version = max_version };
	char *crt = NULL, *key = NULL, name[96];
	SSL_CTX *ctx = NULL;
	int r;

	if (cn) {
		snprintf(name, sizeof(name), "client-%s-%d", cn, flags);
		fp_test_pki_issue(p, name, cn, flags, &crt, &key);
		o.cert = crt;
		o.key = key;
	}
	r = fp_tls_ctx_new(&o, &ctx);
	if (r < 0)
		fail_msg("client ctx: %s", fp_err_last());
	free(crt);
	free(key);
	return ctx;
}
