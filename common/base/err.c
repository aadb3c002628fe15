/*
 * Error codes to text, and the per-thread failure detail (see err.h).
 */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

static _Thread_local char detail[512];
static _Thread_local char lib_msg[512];
static _Thread_local char errno_msg[128];

const char *fp_strerror(int err)
{
	int e = err < 0 ? -err : err;

	if (e == 0)
		return "success";
	if (e == FP_ESSL)
		return lib_msg[0] ? lib_msg : "OpenSSL error";
	if (e == FP_ESODIUM)
		return lib_msg[0] ? lib_msg : "libsodium error";
	/* GNU strerror_r returns a pointer that may or may not be our buffer. */
	return strerror_r(e, errno_msg, sizeof(errno_msg));
}

int fp_err_openssl(const char *prefix)
{
	size_t n = (size_t)snprintf(lib_msg, sizeof(lib_msg), "OpenSSL: %s",
				    prefix ? prefix : "call failed");
	unsigned long code;
	int first = 1;

	while ((code = ERR_get_error()) != 0) {
		char one[256];

		ERR_error_string_n(code, one, sizeof(one));
		if (n < sizeof(lib_msg))
			n += (size_t)snprintf(lib_msg + n, sizeof(lib_msg) - n, "%s%s",
					      first ? ": " : "; ", one);
		first = 0;
	}
	return -FP_ESSL;
}

int fp_err_sodium(const char *what)
{
	snprintf(lib_msg, sizeof(lib_msg), "libsodium: %s failed", what ? what : "call");
	return -FP_ESODIUM;
}

int fp_err_detail(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	return fp_error(err);
}

const char *fp_err_last(void)
{
	return detail;
}

void fp_err_clear(void)
{
	detail[0] = '\0';
}
