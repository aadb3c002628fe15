/*
 * Error convention for all of fedprune.
 *
 * Every fallible function returns 0 (or a non-negative count) on success and a negative errno
 * on failure, the same convention as libuv, so codes compose across layers. Two codes beyond
 * errno name failures inside the crypto libraries; their human detail (OpenSSL's error queue,
 * the libsodium call that failed) is kept per thread and printed by fp_strerror().
 *
 * A function that can say *what* was wrong with an input (which file, line, tensor) records it
 * with fp_err_detail() before returning; callers print it with fp_err_last(). The detail is per
 * thread and is overwritten by the next failure on that thread.
 */
#ifndef FP_ERR_H
#define FP_ERR_H

#include <errno.h>
#include <stddef.h>

/* Library failure codes, chosen above the errno range Linux uses (< 4096). */
#define FP_ESSL	   5001 /* an OpenSSL call failed; detail from its error queue */
#define FP_ESODIUM 5002 /* a libsodium call failed */

/* Always negative: fp_error(EINVAL) and fp_error(-EINVAL) are both -EINVAL. */
static inline int fp_error(int e)
{
	return e > 0 ? -e : e;
}

/*
 * Human text for a code returned by any fedprune function. Covers errno, libuv codes (which
 * are negative errno on Unix), FP_ESSL and FP_ESODIUM. Returns a pointer into static or
 * thread-local storage, valid until the next call on the same thread.
 */
const char *fp_strerror(int err);

/*
 * Capture and clear OpenSSL's error queue for this thread; prefix names the failing step.
 * Returns -FP_ESSL so callers can write `return fp_err_openssl("SSL_CTX_new");`.
 */
int fp_err_openssl(const char *prefix);

/* Record that the libsodium call `what` failed; returns -FP_ESODIUM. */
int fp_err_sodium(const char *what);

/*
 * Record a human-readable detail for the failure about to be returned, printf-style, and
 * return err unchanged (negative). Thread-local; truncated at 512 bytes.
 */
int fp_err_detail(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The last detail recorded on this thread, or "" if none. Borrowed, thread-local storage. */
const char *fp_err_last(void);

/* Forget the last detail (before an operation whose detail you will print). */
void fp_err_clear(void);

#endif
