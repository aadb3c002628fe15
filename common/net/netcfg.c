/*
 * Transport configuration helpers: checks, allowlist, backoff (see netcfg.h).
 */
#include "netcfg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "err.h"
#include "fileio.h"

#define ALLOWLIST_MAX_BYTES (64u << 20)

int fp_net_cfg_check(const struct fp_net_cfg *n)
{
	if (n->wq_low >= n->wq_high)
		return fp_err_detail(-EINVAL,
				     "[net] write_low_water (%llu) must be below write_high_water "
				     "(%llu)",
				     (unsigned long long)n->wq_low, (unsigned long long)n->wq_high);
	if (n->idle_ms <= n->heartbeat_ms)
		return fp_err_detail(-EINVAL,
				     "[net] idle_timeout (%llu ms) must be longer than heartbeat "
				     "(%llu ms)",
				     (unsigned long long)n->idle_ms,
				     (unsigned long long)n->heartbeat_ms);
	return 0;
}

void fp_net_conn_opts(const struct fp_net_cfg *n, struct fp_conn_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->max_frame = (size_t)n->max_frame;
	o->handshake_ms = n->handshake_ms;
	o->idle_ms = n->idle_ms;
	o->msg_ms = n->msg_ms;
	o->wq_high = (size_t)n->wq_high;
	o->wq_low = (size_t)n->wq_low;
	o->linger_ms = 2000;
}

int fp_net_insecure(const struct fp_net_cfg *n, bool flag)
{
	if (flag && n->insecure)
		return 1;
	if (flag)
		return fp_err_detail(-EINVAL,
				     "--insecure also needs 'insecure = true' in the [tls] "
				     "section of the configuration");
	if (n->insecure)
		return fp_err_detail(-EINVAL,
				     "[tls] insecure = true also needs the --insecure flag");
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

void fp_allowlist_free(struct fp_allowlist *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->ids[i]);
	free(a->ids);
	a->ids = NULL;
	a->n = 0;
}

int fp_allowlist_parse(const char *name, const char *text, size_t len, struct fp_allowlist *a)
{
	size_t cap = 0, line = 0, pos = 0;
	int r = 0;

	a->ids = NULL;
	a->n = 0;
	while (pos < len) {
		const char *s = text + pos, *e = memchr(s, '\n', len - pos);
		size_t n = e ? (size_t)(e - s) : len - pos;
		char id[FP_ID_MAX + 1];

		pos += n + (e != NULL);
		line++;
		while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
			n--;
		while (n > 0 && (*s == ' ' || *s == '\t')) {
			s++;
			n--;
		}
		if (n == 0 || *s == '#')
			continue;
		if (n > FP_ID_MAX || memchr(s, '\0', n)) {
			r = fp_err_detail(-EINVAL,
					  "%s:%zu: not a valid identity (1..%u characters "
					  "of A-Z a-z 0-9 . _ @ -)",
					  name, line, FP_ID_MAX);
			goto out;
		}
		memcpy(id, s, n);
		id[n] = '\0';
		if (!fp_identity_valid(id)) {
			r = fp_err_detail(-EINVAL,
					  "%s:%zu: '%s' is not a valid identity (1..%u "
					  "characters of A-Z a-z 0-9 . _ @ -)",
					  name, line, id, FP_ID_MAX);
			goto out;
		}
		if (a->n == cap) {
			size_t nc = cap ? 2 * cap : 16;
			char **v = fp_reallocarray(a->ids, nc, sizeof(*v));

			if (!v) {
				r = -ENOMEM;
				goto out;
			}
			a->ids = v;
			cap = nc;
		}
		a->ids[a->n] = strdup(id);
		if (!a->ids[a->n]) {
			r = -ENOMEM;
			goto out;
		}
		a->n++;
	}
	if (a->n)
		qsort(a->ids, a->n, sizeof(*a->ids), cmp_str);
out:
	if (r < 0)
		fp_allowlist_free(a);
	return r;
}

int fp_allowlist_load(const char *path, struct fp_allowlist *a)
{
	char *buf = NULL;
	size_t len = 0;
	int r;

	a->ids = NULL;
	a->n = 0;
	/* a regular file only (a FIFO or device would block or never end), size bounded */
	r = fp_read_file(path, ALLOWLIST_MAX_BYTES, &buf, &len);
	if (r < 0)
		return r; /* the detail names the file and what is wrong with it */
	r = fp_allowlist_parse(path, buf, len, a);
	free(buf);
	return r;
}

bool fp_allowlist_has(const struct fp_allowlist *a, const char *id)
{
	const char *key = id;

	return a->n && bsearch(&key, a->ids, a->n, sizeof(*a->ids), cmp_str) != NULL;
}

uint64_t fp_backoff_ms(uint64_t base_ms, uint64_t cap_ms, unsigned attempt, uint64_t rnd)
{
	uint64_t ceil = base_ms;

	for (unsigned i = 0; i < attempt && ceil < cap_ms; i++)
		ceil = ceil > UINT64_MAX / 2 ? UINT64_MAX : ceil * 2;
	if (ceil > cap_ms)
		ceil = cap_ms;
	return ceil == UINT64_MAX ? rnd : rnd % (ceil + 1);
}
