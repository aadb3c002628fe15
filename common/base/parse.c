/*
 * Strict value parsers (see parse.h). No atoi: every path checks the whole string and range.
 */
#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Parse the unsigned integer prefix of s; *end points after it. -EINVAL if no digit. */
static int parse_u64_prefix(const char *s, uint64_t *ret, const char **end)
{
	char *e;
	unsigned long long v;

	if (!s || !isdigit((unsigned char)s[0]))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &e, 10);
	if (errno == ERANGE)
		return -ERANGE;
	*ret = v;
	*end = e;
	return 0;
}

int fp_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
	const char *end;
	uint64_t v;
	int r = parse_u64_prefix(s, &v, &end);

	if (r < 0)
		return r;
	if (*end)
		return -EINVAL;
	if (v < min || v > max)
		return -ERANGE;
	*ret = v;
	return 0;
}

int fp_parse_i64(const char *s, int64_t min, int64_t max, int64_t *ret)
{
	char *e;
	long long v;

	if (!s || !(isdigit((unsigned char)s[0]) || (s[0] == '-' && isdigit((unsigned char)s[1]))))
		return -EINVAL;
	errno = 0;
	v = strtoll(s, &e, 10);
	if (errno == ERANGE)
		return -ERANGE;
	if (*e)
		return -EINVAL;
	if (v < min || v > max)
		return -ERANGE;
	*ret = v;
	return 0;
}

int fp_parse_double(const char *s, double min, double max, double *ret)
{
	char *e;
	double v;

	if (!s || !*s || isspace((unsigned char)s[0]))
		return -EINVAL;
	errno = 0;
	v = strtod(s, &e);
	if (*e || e == s || !isfinite(v))
		return -EINVAL;
	if (errno == ERANGE && v != 0.0)
		return -ERANGE;
	if (v < min || v > max)
		return -ERANGE;
	*ret = v;
	return 0;
}

int fp_parse_bool(const char *s, bool *ret)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };

	if (!s)
		return -EINVAL;
	for (int i = 0; i < 4; i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*ret = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*ret = false;
			return 0;
		}
	}
	return -EINVAL;
}

struct unit {
	const char *name;
	uint64_t mult;
};

/* Number followed by one unit from the table (or none, meaning bare_mult). */
static int parse_with_unit(const char *s, const struct unit *units, uint64_t bare_mult,
			   uint64_t min, uint64_t max, uint64_t *ret)
{
	const char *end;
	uint64_t v, mult = 0;
	int r = parse_u64_prefix(s, &v, &end);

	if (r < 0)
		return r;
	if (!*end) {
		mult = bare_mult;
	} else {
		for (const struct unit *u = units; u->name; u++) {
			if (strcasecmp(end, u->name) == 0) {
				mult = u->mult;
				break;
			}
		}
		if (!mult)
			return -EINVAL;
	}
	if (__builtin_mul_overflow(v, mult, &v))
		return -ERANGE;
	if (v < min || v > max)
		return -ERANGE;
	*ret = v;
	return 0;
}

int fp_parse_duration_ms(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
	static const struct unit units[] = {
		{ "ms", 1 },	  { "s", 1000 },    { "m", 60000 },
		{ "min", 60000 }, { "h", 3600000 }, { NULL, 0 },
	};

	return parse_with_unit(s, units, 1000, min, max, ret);
}

int fp_parse_size(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
	static const struct unit units[] = {
		{ "b", 1 },
		{ "k", 1ull << 10 },
		{ "kib", 1ull << 10 },
		{ "m", 1ull << 20 },
		{ "mib", 1ull << 20 },
		{ "g", 1ull << 30 },
		{ "gib", 1ull << 30 },
		{ NULL, 0 },
	};

	return parse_with_unit(s, units, 1, min, max, ret);
}

int fp_parse_nm(const char *s, unsigned *ret_n, unsigned *ret_m)
{
	const char *colon = s ? strchr(s, ':') : NULL;
	char left[16];
	uint64_t n, m;
	size_t len;

	if (!colon)
		return -EINVAL;
	len = (size_t)(colon - s);
	if (len == 0 || len >= sizeof(left))
		return -EINVAL;
	memcpy(left, s, len);
	left[len] = '\0';
	if (fp_parse_u64(left, 1, 63, &n) < 0 || fp_parse_u64(colon + 1, 2, 64, &m) < 0)
		return -EINVAL;
	if (n >= m)
		return -ERANGE;
	*ret_n = (unsigned)n;
	*ret_m = (unsigned)m;
	return 0;
}
