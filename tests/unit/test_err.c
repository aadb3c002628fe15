/* Error convention: codes, OpenSSL/libsodium text, per-thread detail. */
#include "test.h"

#include <errno.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "err.h"

static void test_errno_text(void **state)
{
	(void)state;
	assert_int_equal(fp_error(EINVAL), -EINVAL);
	assert_int_equal(fp_error(-EINVAL), -EINVAL);
	assert_string_equal(fp_strerror(0), "success");
	assert_string_equal(fp_strerror(-ENOENT), strerror(ENOENT));
	assert_string_equal(fp_strerror(ENOENT), strerror(ENOENT));
	/* An unknown code still gives text, never NULL. */
	assert_non_null(fp_strerror(-4000));
}

static void test_openssl_text(void **state)
{
	int r;

	(void)state;
	/* Provoke a real OpenSSL error: fetch a cipher that does not exist. */
	assert_null(EVP_CIPHER_fetch(NULL, "NO-SUCH-CIPHER-fp", NULL));
	r = fp_err_openssl("EVP_CIPHER_fetch");
	assert_int_equal(r, -FP_ESSL);
	assert_non_null(strstr(fp_strerror(r), "OpenSSL: EVP_CIPHER_fetch"));
	assert_true(strlen(fp_strerror(r)) > strlen("OpenSSL: EVP_CIPHER_fetch"));
	assert_int_equal(ERR_peek_error(), 0); /* queue drained */
}

static void test_sodium_text(void **state)
{
	int r;

	(void)state;
	r = fp_err_sodium("crypto_sign_verify_detached");
	assert_int_equal(r, -FP_ESODIUM);
	assert_string_equal(fp_strerror(r), "libsodium: crypto_sign_verify_detached failed");
}

static void test_detail(void **state)
{
	char big[2000];

	(void)state;
	fp_err_clear();
	assert_string_equal(fp_err_last(), "");
	assert_int_equal(fp_err_detail(EBADMSG, "%s: tensor '%s' bad", "a.safetensors", "w"),
			 -EBADMSG);
	assert_string_equal(fp_err_last(), "a.safetensors: tensor 'w' bad");
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	fp_err_detail(-EINVAL, "%s", big); /* truncated, never overflows */
	assert_true(strlen(fp_err_last()) < 512);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_errno_text),
		cmocka_unit_test(test_openssl_text),
		cmocka_unit_test(test_sodium_text),
		cmocka_unit_test(test_detail),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
