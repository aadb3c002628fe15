/*
 * Calibration and evaluation token data (see data.h for the formats and the contract).
 *
 * A file is mapped read-only and handed to fp_data_load_mem, which picks a parser by extension.
 * .jsonl is parsed line by line with cJSON into a growing token buffer, then the kept samples
 * are selected; raw formats (.u16/.u32/.txt) select windows first and decode only those.
 * Sample selection with shuffle is a seeded Fisher-Yates prefix (fp_data_draw).
 */
#include "data.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cJSON.h>
#include <sodium.h>

#include "alloc.h"
#include "err.h"
#include "fileio.h"

#define SUPPORTED "(supported: .jsonl, .u16, .u32, .txt)"

enum fmt { FMT_JSONL, FMT_U16, FMT_U32, FMT_TXT };

/* ---- random draws (algorithm documented at fp_data_draw in data.h) ---- */

struct rng {
	uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z;

	*x += 0x9e3779b97f4a7c15ull;
	z = *x;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void rng_seed(struct rng *g, uint64_t seed)
{
	for (int i = 0; i < 4; i++)
		g->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* xoshiro256** (Blackman and Vigna). */
static uint64_t rng_next(struct rng *g)
{
	uint64_t *s = g->s;
	uint64_t r = rotl(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return r;
}

/* Uniform in [0, m), m >= 1, without modulo bias: reject the lowest (2^64 mod m) values. */
static uint64_t rng_below(struct rng *g, uint64_t m)
{
	uint64_t threshold = (0 - m) % m;
	uint64_t r;

	do {
		r = rng_next(g);
	} while (r < threshold);
	return r % m;
}

/* Reference Fisher-Yates prefix over an explicit array a = 0..n-1; O(n) memory. */
static int draw_dense(uint64_t n, uint64_t k, struct rng *g, uint64_t *ret)
{
	uint64_t *a = fp_mallocarray(n, sizeof(*a)); /* (n) */

	if (!a)
		return -ENOMEM;
	for (uint64_t i = 0; i < n; i++)
		a[i] = i;
	for (uint64_t i = 0; i < k; i++) {
		uint64_t j = i + rng_below(g, n - i);
		uint64_t t = a[i];

		a[i] = a[j];
		a[j] = t;
		ret[i] = a[i];
	}
	free(a);
	return 0;
}

/*
 * The same draws with a hash map holding only the entries of a that differ from their index.
 * Step i reads a[i] and a[j] (j >= i), outputs a[j] and stores the old a[i] at j; position i
 * is never read again, so the map holds at most k entries.
 */
struct slot {
	uint64_t key; /* position + 1; 0 = empty */
	uint64_t val;
};

static struct slot *map_find(struct slot *map, uint64_t mask, uint64_t pos)
{
	uint64_t h = (pos * 0x9e3779b97f4a7c15ull) >> 20;

	for (;; h++) {
		struct slot *s = &map[h & mask];

		if (s->key == 0 || s->key == pos + 1)
			return s;
	}
}

static int draw_sparse(uint64_t n, uint64_t k, struct rng *g, uint64_t *ret)
{
	uint64_t cap = 16;
	struct slot *map; /* (cap) open addressing, linear probing, load <= 1/2 */

	while (cap < 2 * k)
		cap *= 2;
	map = fp_callocarray(cap, sizeof(*map));
	if (!map)
		return -ENOMEM;
	for (uint64_t i = 0; i < k; i++) {
		uint64_t j = i + rng_below(g, n - i);
		struct slot *si = map_find(map, cap - 1, i);
		uint64_t ai = si->key ? si->val : i;
		struct slot *sj = map_find(map, cap - 1, j);

		ret[i] = sj->key ? sj->val : j;
		sj->key = j + 1;
		sj->val = ai;
	}
	free(map);
	return 0;
}

int fp_data_draw(uint64_t n, uint64_t k, uint64_t seed, uint64_t *ret)
{
	struct rng g;

	if (k > n || (k && !ret))
		return fp_err_detail(-EINVAL, "fp_data_draw: cannot draw %llu of %llu",
				     (unsigned long long)k, (unsigned long long)n);
	rng_seed(&g, seed);
	/* Both paths produce identical draws; the dense one is cheaper when k is close to n. */
	if (n <= (1u << 16) || n / 4 <= k)
		return draw_dense(n, k, &g, ret);
	return draw_sparse(n, k, &g, ret);
}

/* ---- options, formats, result ---- */

static int check_opts(const char *name, const struct fp_data_opts *o)
{
	if (o->seqlen < 2 || o->seqlen > FP_DATA_MAX_SEQLEN)
		return fp_err_detail(-EINVAL, "%s: seqlen %u outside [2, %u]", name, o->seqlen,
				     FP_DATA_MAX_SEQLEN);
	if (o->vocab_size < 1 || o->vocab_size > (1u << 31))
		return fp_err_detail(-EINVAL, "%s: vocab_size %u outside [1, 2^31]", name,
				     o->vocab_size);
	return 0;
}

static int parse_ext(const char *name, const char *ext, enum fmt *ret)
{
	static const struct {
		const char *ext;
		enum fmt fmt;
	} table[] = {
		{ "jsonl", FMT_JSONL },
		{ "u16", FMT_U16 },
		{ "u32", FMT_U32 },
		{ "txt", FMT_TXT },
	};

	if (ext && ext[0] == '.')
		ext++;
	if (!ext || !*ext)
		return fp_err_detail(-EINVAL, "%s: no file extension to choose a format " SUPPORTED,
				     name);
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		if (!strcasecmp(ext, table[i].ext)) {
			*ret = table[i].fmt;
			return 0;
		}
	}
	return fp_err_detail(-EINVAL, "%s: unknown data format '.%s' " SUPPORTED, name, ext);
}

/* Extension of the last path component ("" if none); borrowed from path. */
static const char *path_ext(const char *path)
{
	const char *base = strrchr(path, '/');
	const char *dot;

	base = base ? base + 1 : path;
	dot = strrchr(base, '.');
	return dot ? dot + 1 : "";
}

void fp_data_free(struct fp_dataset *d)
{
	if (!d)
		return;
	free(d->len);
	free(d->off);
	free(d->ids);
	free(d);
}

/* A dataset with room for n samples and ntok ids; contents uninitialised. */
static struct fp_dataset *dataset_new(size_t n, size_t ntok, uint32_t seqlen)
{
	struct fp_dataset *d = calloc(1, sizeof(*d));

	if (!d)
		return NULL;
	d->len = fp_mallocarray(n ? n : 1, sizeof(*d->len));
	d->off = fp_mallocarray(n ? n : 1, sizeof(*d->off));
	d->ids = fp_mallocarray(ntok ? ntok : 1, sizeof(*d->ids));
	if (!d->len || !d->off || !d->ids) {
		fp_data_free(d);
		return NULL;
	}
	d->nsamples = n;
	d->ntokens = ntok;
	d->seqlen = seqlen;
	return d;
}

/* How many of avail samples opts keep. */
static size_t kept_count(size_t avail, const struct fp_data_opts *o)
{
	return o->nsamples == 0 || o->nsamples >= avail ? avail : o->nsamples;
}

/* ---- raw token streams: .u16, .u32, .txt ---- */

/* Naive reference: the little-endian id of the given width at p. */
static uint32_t get_le(const uint8_t *p, unsigned width)
{
	uint32_t v = 0;

	for (unsigned b = 0; b < width; b++)
		v |= (uint32_t)p[b] << (8 * b);
	return v;
}

/*
 * Decode n little-endian ids of width bytes at p into dst (n). Returns n if every id is below
 * vocab, else the index of the first one that is not. The loops carry no per-token branch or
 * call so the compiler can vectorise them; get_le() finds the culprit on the slow path.
 */
static size_t decode_ids(int32_t *dst, const uint8_t *p, size_t n, unsigned width, uint32_t vocab)
{
	uint32_t bad = 0;

	switch (width) {
	case 1:
		for (size_t i = 0; i < n; i++) {
			uint32_t v = p[i];

			dst[i] = (int32_t)v;
			bad |= v >= vocab;
		}
		break;
	case 2:
		for (size_t i = 0; i < n; i++) {
			uint32_t v = p[2 * i] | (uint32_t)p[2 * i + 1] << 8;

			dst[i] = (int32_t)v;
			bad |= v >= vocab;
		}
		break;
	default:
		for (size_t i = 0; i < n; i++) {
			const uint8_t *q = p + 4 * i;
			uint32_t v = q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 |
				     (uint32_t)q[3] << 24;

			dst[i] = (int32_t)(v & 0x7fffffffu); /* >= 2^31 is out of vocab anyway */
			bad |= v >= vocab;
		}
		break;
	}
	if (!bad)
		return n;
	for (size_t i = 0; i < n; i++)
		if (get_le(p + i * width, width) >= vocab)
			return i;
	return n;
}

static int raw_bad_id(const char *name, const uint8_t *p, size_t tok, unsigned width,
		      uint32_t vocab)
{
	return fp_err_detail(-EINVAL, "%s: token %zu (byte offset %zu): id %u >= vocab %u", name,
			     tok, tok * width, get_le(p + tok * width, width), vocab);
}

static int load_raw(const uint8_t *p, size_t len, const char *name, enum fmt f,
		    const struct fp_data_opts *o, struct fp_dataset **ret)
{
	unsigned width = f == FMT_U16 ? 2 : f == FMT_U32 ? 4 : 1;
	size_t L = o->seqlen, ntok, nwin, k, bad;
	uint64_t *sel = NULL; /* (k) drawn window indices, shuffle only */
	struct fp_dataset *d = NULL;
	int r;

	if (f == FMT_TXT && o->vocab_size < 256)
		return fp_err_detail(-EINVAL,
				     "%s: .txt needs a byte-level model (vocab 256), %s %u", name,
				     "this model has vocab", o->vocab_size);
	if (len == 0)
		return fp_err_detail(-EINVAL, "%s: empty file", name);
	if (len % width)
		return fp_err_detail(-EINVAL, "%s: size %zu bytes is not a multiple of %u (%s ids)",
				     name, len, width, width == 2 ? "u16" : "u32");
	ntok = len / width;
	nwin = ntok / L;
	if (nwin == 0)
		return fp_err_detail(-EINVAL, "%s: %zu tokens, fewer than seqlen %zu", name, ntok,
				     L);
	k = kept_count(nwin, o);
	d = dataset_new(k, k * L, o->seqlen); /* k * L <= ntok: no overflow */
	if (!d)
		return -ENOMEM;
	for (size_t i = 0; i < k; i++) {
		d->len[i] = o->seqlen;
		d->off[i] = i * L;
	}
	if (!o->shuffle) {
		/* The first k windows are one contiguous run of the file. */
		bad = decode_ids(d->ids, p, k * L, width, o->vocab_size);
		if (bad < k * L) {
			r = raw_bad_id(name, p, bad, width, o->vocab_size);
			goto out;
		}
	} else {
		sel = fp_mallocarray(k, sizeof(*sel));
		if (!sel) {
			r = -ENOMEM;
			goto out;
		}
		r = fp_data_draw(nwin, k, o->seed, sel);
		if (r < 0)
			goto out;
		for (size_t i = 0; i < k; i++) {
			const uint8_t *w = p + sel[i] * L * width;

			bad = decode_ids(d->ids + i * L, w, L, width, o->vocab_size);
			if (bad < L) {
				r = raw_bad_id(name, p, sel[i] * L + bad, width, o->vocab_size);
				goto out;
			}
		}
	}
	*ret = d;
	d = NULL;
	r = 0;
out:
	free(sel);
	fp_data_free(d);
	return r;
}

/* ---- .jsonl ---- */

struct jsonl {
	const char *name;
	const struct fp_data_opts *o;
	size_t lineno;
	int32_t *ids; /* (nids) every kept id, samples back to back */
	size_t nids, cap_ids;
	uint32_t *len; /* (n) */
	size_t *off;   /* (n) */
	size_t n, cap_len, cap_off;
	char *line; /* (cap_line) NUL-terminated copy of the current line for cJSON */
	size_t cap_line;
};

static bool is_blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

/*
 * Grow the array whose pointer is at pp (elements of sz bytes, capacity *cap) to hold at least
 * need elements, doubling. pp is the address of any object pointer (copied, not aliased).
 */
static int grow(void *pp, size_t *cap, size_t need, size_t sz)
{
	size_t c = *cap ? *cap : 64;
	void *p, *q;

	if (need <= *cap)
		return 0;
	while (c < need)
		if (!fp_mul_ok(c, 2, &c))
			return -ENOMEM;
	memcpy(&p, pp, sizeof(p));
	q = fp_reallocarray(p, c, sz);
	if (!q)
		return -ENOMEM;
	memcpy(pp, &q, sizeof(q));
	*cap = c;
	return 0;
}

static const char *json_kind(const cJSON *v)
{
	if (cJSON_IsArray(v))
		return "an array";
	if (cJSON_IsString(v))
		return "a string";
	if (cJSON_IsNumber(v))
		return "a number";
	if (cJSON_IsBool(v))
		return "a boolean";
	if (cJSON_IsNull(v))
		return "null";
	return "an object";
}

/* Validate one element of input_ids and store it at s->ids[s->nids] if kept. */
static int jsonl_id(struct jsonl *s, const cJSON *el, size_t idx, bool keep)
{
	double v;

	if (!cJSON_IsNumber(el))
		return fp_err_detail(-EINVAL, "%s:%zu: input_ids[%zu] is %s, not an integer id",
				     s->name, s->lineno, idx, json_kind(el));
	v = el->valuedouble;
	if (v < 0)
		return fp_err_detail(-EINVAL, "%s:%zu: input_ids[%zu] = %g is negative", s->name,
				     s->lineno, idx, v);
	if (!(v < (double)s->o->vocab_size))
		return fp_err_detail(-EINVAL, "%s:%zu: input_ids[%zu] = %g >= vocab %u", s->name,
				     s->lineno, idx, v, s->o->vocab_size);
	/* v is in [0, 2^31) here, so the conversion is defined. */
	if (v != (double)(uint32_t)v)
		return fp_err_detail(-EINVAL, "%s:%zu: input_ids[%zu] = %g is not an integer",
				     s->name, s->lineno, idx, v);
	if (keep) {
		if (grow(&s->ids, &s->cap_ids, s->nids + 1, sizeof(*s->ids)) < 0)
			return -ENOMEM;
		s->ids[s->nids++] = (int32_t)(uint32_t)v;
	}
	return 0;
}

static int jsonl_sample(struct jsonl *s, const cJSON *root)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "input_ids");
	const cJSON *el;
	size_t count = 0, start = s->nids;
	int r;

	if (!arr)
		return fp_err_detail(-EINVAL, "%s:%zu: no \"input_ids\" key", s->name, s->lineno);
	if (!cJSON_IsArray(arr))
		return fp_err_detail(-EINVAL, "%s:%zu: \"input_ids\" is %s, not an array", s->name,
				     s->lineno, json_kind(arr));
	cJSON_ArrayForEach(el, arr)
	{
		r = jsonl_id(s, el, count, count < s->o->seqlen);
		if (r < 0)
			return r;
		count++;
	}
	if (count < 2)
		return fp_err_detail(
			-EINVAL, "%s:%zu: input_ids has %zu token(s), a sample needs at least 2",
			s->name, s->lineno, count);
	if (grow(&s->len, &s->cap_len, s->n + 1, sizeof(*s->len)) < 0 ||
	    grow(&s->off, &s->cap_off, s->n + 1, sizeof(*s->off)) < 0)
		return -ENOMEM;
	s->len[s->n] = (uint32_t)(s->nids - start);
	s->off[s->n] = start;
	s->n++;
	return 0;
}

/* Parse one non-blank line (n bytes at text, no line terminator). */
static int jsonl_line(struct jsonl *s, const char *text, size_t n)
{
	const char *end = NULL;
	cJSON *root = NULL;
	int r;

	if (n > FP_DATA_MAX_LINE)
		return fp_err_detail(-EINVAL, "%s:%zu: line of %zu bytes, longer than %u", s->name,
				     s->lineno, n, FP_DATA_MAX_LINE);
	if (memchr(text, '\0', n))
		return fp_err_detail(-EINVAL, "%s:%zu: NUL byte in line", s->name, s->lineno);
	/* cJSON gets a private NUL-terminated copy: it never reads past the mapping. */
	if (grow(&s->line, &s->cap_line, n + 1, 1) < 0)
		return -ENOMEM;
	memcpy(s->line, text, n);
	s->line[n] = '\0';
	root = cJSON_ParseWithLengthOpts(s->line, n, &end, false);
	if (!root) {
		size_t col = end && end >= s->line && end <= s->line + n ? end - s->line + 1 : 1;

		r = fp_err_detail(-EINVAL, "%s:%zu: not a JSON object (invalid JSON at column %zu)",
				  s->name, s->lineno, col);
		goto out;
	}
	if (!cJSON_IsObject(root)) {
		r = fp_err_detail(-EINVAL, "%s:%zu: not a JSON object (found %s)", s->name,
				  s->lineno, json_kind(root));
		goto out;
	}
	if (end && !is_blank(end, (size_t)(s->line + n - end))) {
		r = fp_err_detail(-EINVAL,
				  "%s:%zu: not a JSON object (trailing data at column %zu)",
				  s->name, s->lineno, (size_t)(end - s->line) + 1);
		goto out;
	}
	r = jsonl_sample(s, root);
out:
	cJSON_Delete(root);
	return r;
}

/* Keep samples sel[0..k) (or the first k when sel is NULL) of a parsed file. */
static int jsonl_select(struct jsonl *s, const uint64_t *sel, size_t k, struct fp_dataset **ret)
{
	struct fp_dataset *d;
	size_t ntok = 0;

	if (!sel) {
		/* Hand the buffers over, cut to the first k samples. */
		d = calloc(1, sizeof(*d));
		if (!d)
			return -ENOMEM;
		ntok = s->off[k - 1] + s->len[k - 1];
		d->nsamples = k;
		d->ntokens = ntok;
		d->seqlen = s->o->seqlen;
		d->len = s->len;
		d->off = s->off;
		d->ids = s->ids;
		s->len = NULL;
		s->off = NULL;
		s->ids = NULL;
		if (ntok < s->cap_ids) {
			int32_t *q = realloc(d->ids, ntok * sizeof(*d->ids));

			if (q)
				d->ids = q;
		}
		*ret = d;
		return 0;
	}
	for (size_t i = 0; i < k; i++)
		ntok += s->len[sel[i]]; /* <= s->nids: cannot overflow */
	d = dataset_new(k, ntok, s->o->seqlen);
	if (!d)
		return -ENOMEM;
	ntok = 0;
	for (size_t i = 0; i < k; i++) {
		uint32_t l = s->len[sel[i]];

		memcpy(d->ids + ntok, s->ids + s->off[sel[i]], l * sizeof(*d->ids));
		d->len[i] = l;
		d->off[i] = ntok;
		ntok += l;
	}
	*ret = d;
	return 0;
}

static int load_jsonl(const char *p, size_t len, const char *name, const struct fp_data_opts *o,
		      struct fp_dataset **ret)
{
	struct jsonl s = { .name = name, .o = o };
	uint64_t *sel = NULL; /* (k) drawn sample indices, shuffle only */
	size_t pos = 0, k;
	int r;

	if (len >= 3 && !memcmp(p, "\xef\xbb\xbf", 3))
		pos = 3;
	while (pos < len) {
		const char *text = p + pos;
		const char *nl = memchr(text, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - text) : len - pos;

		pos += n + (nl ? 1 : 0);
		s.lineno++;
		if (n && text[n - 1] == '\r')
			n--;
		if (is_blank(text, n))
			continue;
		r = jsonl_line(&s, text, n);
		if (r < 0)
			goto out;
	}
	if (s.n == 0) {
		r = fp_err_detail(-EINVAL, "%s: %s", name,
				  len ? "no samples (only blank lines)" : "empty file");
		goto out;
	}
	k = kept_count(s.n, o);
	if (o->shuffle) {
		sel = fp_mallocarray(k, sizeof(*sel));
		if (!sel) {
			r = -ENOMEM;
			goto out;
		}
		r = fp_data_draw(s.n, k, o->seed, sel);
		if (r < 0)
			goto out;
	}
	r = jsonl_select(&s, sel, k, ret);
out:
	free(sel);
	free(s.ids);
	free(s.len);
	free(s.off);
	free(s.line);
	return r;
}

/* ---- entry points ---- */

int fp_data_load_mem(const void *buf, size_t len, const char *name, const char *ext,
		     const struct fp_data_opts *opts, struct fp_dataset **ret)
{
	enum fmt f =
		FMT_JSONL; /* set by parse_ext; initialised for gcc -O3 -Wmaybe-uninitialized */
	int r;

	if (!name)
		name = "<memory>";
	if (!opts || !ret || (!buf && len))
		return fp_err_detail(-EINVAL, "%s: fp_data_load_mem: NULL argument", name);
	r = check_opts(name, opts);
	if (r < 0)
		return r;
	r = parse_ext(name, ext, &f);
	if (r < 0)
		return r;
	if (len > FP_DATA_MAX_FILE)
		return fp_err_detail(-EFBIG, "%s: %zu bytes, larger than the 16 GiB limit", name,
				     len);
	if (!buf)
		buf = "";
	if (f == FMT_JSONL)
		return load_jsonl(buf, len, name, opts, ret);
	return load_raw(buf, len, name, f, opts, ret);
}

int fp_data_load(const char *path, const struct fp_data_opts *opts, struct fp_dataset **ret)
{
	void *map = MAP_FAILED;
	enum fmt f =
		FMT_JSONL; /* set by parse_ext; initialised for gcc -O3 -Wmaybe-uninitialized */
	size_t size = 0;
	int fd = -1;
	int r;

	if (!path || !opts || !ret)
		return fp_err_detail(-EINVAL, "fp_data_load: NULL argument");
	/* Refuse bad options and unknown formats before touching the file. */
	r = check_opts(path, opts);
	if (r < 0)
		return r;
	r = parse_ext(path, path_ext(path), &f);
	if (r < 0)
		return r;
	r = fp_open_regular(path, FP_DATA_MAX_FILE < SIZE_MAX ? (size_t)FP_DATA_MAX_FILE : SIZE_MAX,
			    &fd, &size);
	if (r < 0)
		return r;
	if (size) {
		map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			r = -errno;
			r = fp_err_detail(r, "%s: cannot map: %s", path, fp_strerror(r));
			goto out;
		}
		madvise(map, size, f == FMT_JSONL ? MADV_SEQUENTIAL : MADV_NORMAL);
	}
	r = fp_data_load_mem(size ? map : "", size, path, path_ext(path), opts, ret);
out:
	if (map != MAP_FAILED)
		munmap(map, size);
	close(fd);
	return r;
}

/* ---- digest ---- */

static void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

void fp_data_digest(const struct fp_dataset *d, uint8_t out[32])
{
	static const char tag[16] = "fp-data-digest-1"; /* exactly 16 bytes, no NUL */
	crypto_generichash_state st;
	uint8_t buf[4096]; /* ids staged as u32 LE */
	uint64_t n = d ? d->nsamples : 0;

	/*
	 * Idempotent and thread-safe. If it fails (it can only fail to set up the random
	 * source), BLAKE2b still runs on its portable compression function.
	 */
	int sodium_ok = sodium_init();

	(void)sodium_ok;
	crypto_generichash_init(&st, NULL, 0, 32);
	crypto_generichash_update(&st, (const uint8_t *)tag, sizeof(tag));
	put_le32(buf, (uint32_t)n);
	put_le32(buf + 4, (uint32_t)(n >> 32));
	crypto_generichash_update(&st, buf, 8);
	for (uint64_t i = 0; i < n; i++) {
		const int32_t *ids = d->ids + d->off[i];
		size_t len = d->len[i], used = 0;

		put_le32(buf, d->len[i]);
		crypto_generichash_update(&st, buf, 4);
		while (used < len) {
			size_t m = len - used < sizeof(buf) / 4 ? len - used : sizeof(buf) / 4;

			for (size_t j = 0; j < m; j++)
				put_le32(buf + 4 * j, (uint32_t)ids[used + j]);
			crypto_generichash_update(&st, buf, 4 * m);
			used += m;
		}
	}
	crypto_generichash_final(&st, out, 32);
}
