/*
 * Levelled logging to stderr in logfmt, one line per event:
 *
 *   ts=2026-11-27T20:38:50.123Z level=info msg="round started" round=3 clients=5
 *
 * msg is quoted and escaped by the logger. The key=value tail is a printf format written by the
 * caller; any value that comes from outside (a peer name, a path, an error text) must go through
 * fp_q(), which quotes and escapes it so a hostile string cannot forge keys or lines.
 * The macros test the level before formatting anything. Thread-safe (one write(2) per line).
 */
#ifndef FP_LOG_H
#define FP_LOG_H

#include <stdbool.h>

enum fp_log_level {
	FP_LOG_DEBUG = 0,
	FP_LOG_INFO = 1,
	FP_LOG_WARN = 2,
	FP_LOG_ERROR = 3,
	FP_LOG_OFF = 4,
};

extern enum fp_log_level fp_log_min_level;

/* "debug", "info", "warn", "error", NULL: index = enum fp_log_level (for config enums). */
extern const char *const fp_log_level_names[];

/* Set the minimum level printed. */
void fp_log_set_level(enum fp_log_level level);

/* Parse "debug", "info", "warn" or "error". Returns 0 or -EINVAL. */
int fp_log_parse_level(const char *s, enum fp_log_level *ret_level);

/* Emit one line. kvfmt may be NULL or "" for no tail. Prefer the macros below. */
void fp_log_emit(enum fp_log_level level, const char *msg, const char *kvfmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * Return s as a logfmt value: unchanged when it is a plain token, otherwise in double quotes
 * with \" \\ \n \t and control bytes escaped; NULL prints as "(null)". The result lives in a
 * thread-local ring of 8 buffers of 256 bytes (longer values are cut and end in "..."), so up
 * to 8 fp_q() calls may appear in one log statement.
 */
const char *fp_q(const char *s);

/* Format into buf (size n) the logfmt line the logger would emit; for tests. */
int fp_log_format(char *buf, unsigned long n, enum fp_log_level level, const char *msg,
		  const char *tail);

/* fp_log_info("round started", "round=%u clients=%u", r, n); with no tail pass NULL. */
#define fp_log(level, ...)                                 \
	do {                                               \
		if ((level) >= fp_log_min_level)           \
			fp_log_emit((level), __VA_ARGS__); \
	} while (0)

#define fp_log_debug(...) fp_log(FP_LOG_DEBUG, __VA_ARGS__)
#define fp_log_info(...)  fp_log(FP_LOG_INFO, __VA_ARGS__)
#define fp_log_warn(...)  fp_log(FP_LOG_WARN, __VA_ARGS__)
#define fp_log_err(...)	  fp_log(FP_LOG_ERROR, __VA_ARGS__)

#endif
