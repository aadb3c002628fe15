/*
 * Test PKI made at test time with the OpenSSL API (no private key is ever committed): a CA,
 * a server certificate for localhost / 127.0.0.1 / ::1, and client certificates on demand,
 * including expired ones and ones signed by a foreign CA. Everything lives in a temporary
 * directory removed by fp_test_pki_free. Any failure fails the test.
 */
#ifndef FP_TEST_NET_CERTS_H
#define FP_TEST_NET_CERTS_H

#include <openssl/ssl.h>

enum fp_test_cert_flags {
	FP_CERT_EXPIRED = 1, /* validity ended yesterday */
	FP_CERT_FOREIGN = 2, /* signed by another CA than the federation's */
	FP_CERT_SERVER = 4,  /* serverAuth with SANs localhost, 127.0.0.1, ::1 */
};

struct fp_test_pki {
	char *dir;	  /* temporary directory, owned */
	char *ca;	  /* dir/ca.crt */
	char *server_crt; /* dir/server.crt: CN localhost, signed by the CA */
	char *server_key;
};

/* Create the CA and the server certificate in a new temporary directory. */
void fp_test_pki_create(struct fp_test_pki *p);

/* Issue a certificate with subject CN cn; *crt and *key are new paths (caller frees). */
void fp_test_pki_issue(struct fp_test_pki *p, const char *name, const char *cn, int flags,
		       char **crt, char **key);

/* Remove the directory and free the paths. */
void fp_test_pki_free(struct fp_test_pki *p);

/* A TLS context for the server of p (fails the test on error). Caller frees. */
SSL_CTX *fp_test_server_ctx(struct fp_test_pki *p);

/* A client context with certificate cn (NULL: none) and flags; max_version 0 = TLS 1.3. */
SSL_CTX *fp_test_client_ctx(struct fp_test_pki *p, const char *cn, int flags, int max_version);

#endif
