/*
 * logfmt logger (see log.h). Formats the whole line in a stack buffer and writes it with one
 * write(2), so lines from several threads never interleave.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum fp_log_level fp_log_min_level = FP_LOG_INFO;

const char *const fp_log_level_names[] = { "debug", "info", "warn", "error", NULL };
#define level_names fp_log_level_names

void fp_log_set_level(enum fp_log_level level)
{
	fp_log_min_level = level;
}

int fp_log_parse_level(const char *s, enum fp_log_level *ret_level)
{
	for (int i = 0; i < 4; i++) {
		if (s && strcmp(s, level_names[i]) == 0) {
			*ret_level = (enum fp_log_level)i;
			return 0;
		}
	}
	if (s && strcmp(s, "warning") == 0) {
		*ret_level = FP_LOG_WARN;
		return 0;
	}
	return -EINVAL;
}

static int needs_quotes(const char *s)
{
	if (!*s)
		return 1;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f)
			return 1;
	}
	return 0;
}

/* Write s quoted and escaped into out (size n, n >= 8). Returns bytes written (no NUL). */
static size_t quote_into(char *out, size_t n, const char *s)
{
	size_t o = 0;

	out[o++] = '"';
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		size_t len;

		if (c == '"' || c == '\\')
			len = (size_t)snprintf(esc, sizeof(esc), "\\%c", c);
		else if (c == '\n')
			len = (size_t)snprintf(esc, sizeof(esc), "\\n");
		else if (c == '\t')
			len = (size_t)snprintf(esc, sizeof(esc), "\\t");
		else if (c < ' ' || c == 0x7f)
			len = (size_t)snprintf(esc, sizeof(esc), "\\x%02x", c);
		else {
			esc[0] = (char)c;
			len = 1;
		}
		if (o + len + 5 > n) { /* room for ...", NUL */
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
		memcpy(out + o, esc, len);
		o += len;
	}
	out[o++] = '"';
	out[o] = '\0';
	return o;
}

const char *fp_q(const char *s)
{
	static _Thread_local char ring[8][256];
	static _Thread_local unsigned next;
	char *out = ring[next++ % 8];

	if (!s)
		s = "(null)";
	if (!needs_quotes(s) && strlen(s) < sizeof(ring[0]))
		return s;
	quote_into(out, sizeof(ring[0]), s);
	return out;
}

int fp_log_format(char *buf, unsigned long n, enum fp_log_level level, const char *msg,
		  const char *tail)
{
	struct timespec ts;
	struct tm tm;
	size_t o;
	char qmsg[1024];

	if (level < FP_LOG_DEBUG || level > FP_LOG_ERROR)
		level = FP_LOG_ERROR;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	if (!msg)
		msg = "";
	if (needs_quotes(msg) || strlen(msg) >= sizeof(qmsg))
		quote_into(qmsg, sizeof(qmsg), msg);
	else
		memcpy(qmsg, msg, strlen(msg) + 1);
	o = (size_t)snprintf(buf, n, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=%s",
			     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], qmsg);
	if (o < n && tail && *tail)
		o += (size_t)snprintf(buf + o, n - o, " %s", tail);
	if (o >= n - 1)
		o = n - 2;
	/* Values must not break the line: replace raw newlines a caller may have put in kv. */
	for (size_t i = 0; i < o; i++)
		if (buf[i] == '\n' || buf[i] == '\r')
			buf[i] = ' ';
	buf[o++] = '\n';
	buf[o] = '\0';
	return (int)o;
}

void fp_log_emit(enum fp_log_level level, const char *msg, const char *kvfmt, ...)
{
	char tail[2048] = "";
	char line[4096];
	int saved = errno;
	int len;

	if (kvfmt && *kvfmt) {
		va_list ap;

		va_start(ap, kvfmt);
		vsnprintf(tail, sizeof(tail), kvfmt, ap);
		va_end(ap);
	}
	len = fp_log_format(line, sizeof(line), level, msg, tail);
	if (write(STDERR_FILENO, line, (size_t)len) < 0) {
		/* Nowhere left to report a failed log write. */
	}
	errno = saved;
}
