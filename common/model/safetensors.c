/*
 * safetensors reader (mmap, full validation), model directories (single file or sharded with
 * an index) and the streaming atomic writer. See safetensors.h for the format and the contract.
 *
 * Numbers in the header are read from the JSON text itself, not from cJSON's double: a scan of
 * the header lists every number token in document order, and validation walks the cJSON tree
 * in the same order taking one token per number. So an offset above 2^53 is read exactly (or
 * refused when above 2^64 - 1), and "1.0", "1e3", "-0" and "01" are refused as non-integers.
 */
#include "safetensors.h"

#include <cJSON.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "alloc.h"
#include "dtype.h"
#include "err.h"
#include "fileio.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader assumes a little-endian host"
#endif

#define ST_MAX_INDEX   (64u << 20) /* model.safetensors.index.json size limit */
#define ST_SINGLE_NAME "model.safetensors"
#define ST_INDEX_NAME  "model.safetensors.index.json"

/* ---------------------------------------------------------------------------------------- */
/* dtypes */

static const struct {
	const char *name;
	size_t size;
} dtypes[FP_DT_COUNT] = {
	[FP_DT_F32] = { "F32", 4 },   [FP_DT_F16] = { "F16", 2 }, [FP_DT_BF16] = { "BF16", 2 },
	[FP_DT_F64] = { "F64", 8 },   [FP_DT_I64] = { "I64", 8 }, [FP_DT_I32] = { "I32", 4 },
	[FP_DT_I16] = { "I16", 2 },   [FP_DT_I8] = { "I8", 1 },	  [FP_DT_U8] = { "U8", 1 },
	[FP_DT_BOOL] = { "BOOL", 1 },
};

const char *fp_dtype_name(enum fp_dtype dt)
{
	return (unsigned)dt < FP_DT_COUNT ? dtypes[dt].name : "?";
}

size_t fp_dtype_size(enum fp_dtype dt)
{
	return (unsigned)dt < FP_DT_COUNT ? dtypes[dt].size : 0;
}

int fp_dtype_parse(const char *s, enum fp_dtype *ret)
{
	for (unsigned i = 0; s && i < FP_DT_COUNT; i++) {
		if (strcmp(s, dtypes[i].name) == 0) {
			*ret = (enum fp_dtype)i;
			return 0;
		}
	}
	return -EINVAL;
}

/* ---------------------------------------------------------------------------------------- */
/* the file object */

struct st_meta {
	char *key, *value;
};

struct fp_st_file {
	char *path;	     /* for messages */
	const uint8_t *base; /* (len) the whole file image */
	size_t len;
	bool mapped;			     /* base is our mmap; else borrowed (fp_st_open_mem) */
	struct fp_st_tensor *t;		     /* (n) in data-offset order */
	const struct fp_st_tensor **by_name; /* (n) sorted by name */
	size_t n;
	struct st_meta *meta; /* (nmeta) sorted by key */
	size_t nmeta;
};

/* "%s: tensor '%s': <fmt>" with -EBADMSG. */
static int __attribute__((format(printf, 3, 4)))
tensor_err(const char *path, const char *name, const char *fmt, ...)
{
	char msg[384];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return fp_err_detail(-EBADMSG, "%s: tensor '%s': %s", path, name, msg);
}

/* "%s: header: <fmt>" with -EBADMSG. */
static int __attribute__((format(printf, 2, 3))) header_err(const char *path, const char *fmt, ...)
{
	char msg[384];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return fp_err_detail(-EBADMSG, "%s: header: %s", path, msg);
}

static int oom(const char *path)
{
	return fp_err_detail(-ENOMEM, "%s: out of memory", path);
}

/* ---------------------------------------------------------------------------------------- */
/* number tokens of the header text */

enum tok_kind {
	TOK_UINT,	  /* a plain non-negative integer that fits uint64 */
	TOK_NEGATIVE,	  /* starts with '-' */
	TOK_NOT_INTEGER,  /* has a fraction or an exponent */
	TOK_LEADING_ZERO, /* "01": not JSON */
	TOK_TOO_BIG,	  /* > 2^64 - 1 */
};

struct numtok {
	uint64_t v;
	enum tok_kind kind;
};

struct numtoks {
	struct numtok *tok; /* (n) in document order */
	size_t n, cap, next;
};

static bool is_num_char(char c)
{
	return (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.' || c == 'e' || c == 'E';
}

static struct numtok classify(const char *s, size_t n)
{
	struct numtok t = { 0, TOK_UINT };

	if (s[0] == '-') {
		t.kind = TOK_NEGATIVE;
		return t;
	}
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9') {
			t.kind = TOK_NOT_INTEGER;
			return t;
		}
	}
	if (n > 1 && s[0] == '0') {
		t.kind = TOK_LEADING_ZERO;
		return t;
	}
	for (size_t i = 0; i < n; i++) {
		if (__builtin_mul_overflow(t.v, 10u, &t.v) ||
		    __builtin_add_overflow(t.v, (unsigned)(s[i] - '0'), &t.v)) {
			t.kind = TOK_TOO_BIG;
			return t;
		}
	}
	return t;
}

/*
 * List the number tokens of the JSON text s (n bytes, no NUL inside) outside strings, the way
 * cJSON delimits them (a maximal run of [0-9+-.eE] starting at '-' or a digit). Refuses a
 * \u0000 escape, which cJSON would silently turn into a truncated C string.
 */
static int scan_numbers(const char *path, const char *s, size_t n, struct numtoks *nt)
{
	size_t i = 0;

	while (i < n) {
		if (s[i] == '"') {
			for (i++; i < n && s[i] != '"'; i++) {
				if (s[i] != '\\')
					continue;
				if (n - i >= 6 && memcmp(s + i + 1, "u0000", 5) == 0)
					return header_err(path, "\\u0000 escape at offset %zu", i);
				i++;
			}
			i++;
		} else if (s[i] == '-' || (s[i] >= '0' && s[i] <= '9')) {
			size_t j = i + 1;

			while (j < n && is_num_char(s[j]))
				j++;
			if (nt->n == nt->cap) {
				size_t cap = nt->cap ? 2 * nt->cap : 64;
				struct numtok *p = fp_reallocarray(nt->tok, cap, sizeof(*p));

				if (!p)
					return oom(path);
				nt->tok = p;
				nt->cap = cap;
			}
			nt->tok[nt->n++] = classify(s + i, j - i);
			i = j;
		} else {
			i++;
		}
	}
	return 0;
}

/* Take the next number token for item (a cJSON number) as a uint64; what names it. */
static int take_u64(const char *path, const char *name, struct numtoks *nt, const cJSON *item,
		    const char *what, uint64_t *ret)
{
	struct numtok t;

	if (!cJSON_IsNumber(item))
		return tensor_err(path, name, "%s is not an integer", what);
	if (nt->next >= nt->n)
		return header_err(path, "number tokens out of step with the JSON parser");
	t = nt->tok[nt->next++];
	switch (t.kind) {
	case TOK_UINT:
		*ret = t.v;
		return 0;
	case TOK_NEGATIVE:
		return tensor_err(path, name, "%s is negative", what);
	case TOK_NOT_INTEGER:
		return tensor_err(path, name, "%s is not an integer", what);
	case TOK_LEADING_ZERO:
		return tensor_err(path, name, "%s has a leading zero", what);
	case TOK_TOO_BIG:
		break;
	}
	return tensor_err(path, name, "%s exceeds 2^64-1", what);
}

/* ---------------------------------------------------------------------------------------- */
/* header validation */

/* Members of a JSON object or array. */
static size_t count_children(const cJSON *o)
{
	size_t n = 0;

	for (const cJSON *it = o->child; it; it = it->next)
		n++;
	return n;
}

struct parse {
	struct fp_st_file *f;
	struct numtoks nt;
	const uint8_t *data; /* (data_len) the data section */
	size_t data_len;
};

static int parse_metadata(struct parse *p, const cJSON *obj)
{
	struct fp_st_file *f = p->f;
	const cJSON *it;

	if (f->meta)
		return header_err(f->path, "__metadata__ appears twice");
	if (!cJSON_IsObject(obj))
		return header_err(f->path, "__metadata__ is not an object");
	f->meta = fp_callocarray(count_children(obj), sizeof(*f->meta));
	if (!f->meta)
		return oom(f->path);
	cJSON_ArrayForEach(it, obj)
	{
		if (!cJSON_IsString(it))
			return header_err(f->path, "__metadata__ value of '%s' is not a string",
					  it->string);
		f->meta[f->nmeta].key = strdup(it->string);
		f->meta[f->nmeta].value = strdup(it->valuestring);
		f->nmeta++;
		if (!f->meta[f->nmeta - 1].key || !f->meta[f->nmeta - 1].value)
			return oom(f->path);
	}
	return 0;
}

static int parse_shape(struct parse *p, const char *name, const cJSON *arr, struct fp_st_tensor *t)
{
	const char *path = p->f->path;
	const cJSON *it;
	unsigned n = 0;
	int r;

	if (!cJSON_IsArray(arr))
		return tensor_err(path, name, "shape is not an array");
	cJSON_ArrayForEach(it, arr)
	{
		char what[32];

		if (n == FP_ST_MAX_DIMS)
			return tensor_err(path, name, "shape has more than %d dimensions",
					  FP_ST_MAX_DIMS);
		snprintf(what, sizeof(what), "shape[%u]", n);
		r = take_u64(path, name, &p->nt, it, what, &t->shape[n]);
		if (r < 0)
			return r;
		n++;
	}
	t->ndim = n;
	return 0;
}

static int parse_offsets(struct parse *p, const char *name, const cJSON *arr, uint64_t off[2])
{
	const char *path = p->f->path;
	int r;

	if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != 2)
		return tensor_err(path, name, "data_offsets is not an array [begin, end]");
	r = take_u64(path, name, &p->nt, arr->child, "data_offsets[0]", &off[0]);
	if (r == 0)
		r = take_u64(path, name, &p->nt, arr->child->next, "data_offsets[1]", &off[1]);
	return r;
}

/* Validate one tensor entry and fill t (name already set). */
static int parse_tensor(struct parse *p, const cJSON *obj, struct fp_st_tensor *t)
{
	const char *path = p->f->path, *name = t->name;
	bool have_dtype = false, have_shape = false, have_off = false;
	uint64_t off[2] = { 0, 0 }, nbytes;
	const cJSON *it;
	int r = 0;

	if (!cJSON_IsObject(obj))
		return tensor_err(path, name, "entry is not an object");
	cJSON_ArrayForEach(it, obj)
	{
		bool *seen;

		if (strcmp(it->string, "dtype") == 0)
			seen = &have_dtype;
		else if (strcmp(it->string, "shape") == 0)
			seen = &have_shape;
		else if (strcmp(it->string, "data_offsets") == 0)
			seen = &have_off;
		else
			return tensor_err(path, name, "unknown field '%s'", it->string);
		if (*seen)
			return tensor_err(path, name, "field '%s' appears twice", it->string);
		*seen = true;
		if (seen == &have_dtype) {
			if (!cJSON_IsString(it))
				return tensor_err(path, name, "dtype is not a string");
			if (fp_dtype_parse(it->valuestring, &t->dtype) < 0)
				return tensor_err(path, name, "unknown dtype '%s'",
						  it->valuestring);
		} else if (seen == &have_shape) {
			r = parse_shape(p, name, it, t);
		} else {
			r = parse_offsets(p, name, it, off);
		}
		if (r < 0)
			return r;
	}
	if (!have_dtype || !have_shape || !have_off)
		return tensor_err(path, name, "missing field '%s'",
				  !have_dtype	? "dtype"
				  : !have_shape ? "shape"
						: "data_offsets");
	if (off[0] > off[1])
		return tensor_err(path, name,
				  "data_offsets [%" PRIu64 ", %" PRIu64 "] end before begin",
				  off[0], off[1]);
	if (off[1] > p->data_len)
		return tensor_err(path, name,
				  "data_offsets [%" PRIu64 ", %" PRIu64
				  "] run past the data section (%zu bytes)",
				  off[0], off[1], p->data_len);
	if (!fp_mul_dims_ok(t->shape, t->ndim, &t->numel))
		return tensor_err(path, name, "shape product overflows");
	if (__builtin_mul_overflow(t->numel, (uint64_t)fp_dtype_size(t->dtype), &nbytes))
		return tensor_err(path, name, "byte size (%" PRIu64 " elements of %s) overflows",
				  t->numel, fp_dtype_name(t->dtype));
	if (nbytes != off[1] - off[0])
		return tensor_err(path, name,
				  "shape and dtype need %" PRIu64 " bytes, data_offsets [%" PRIu64
				  ", %" PRIu64 "] hold %" PRIu64,
				  nbytes, off[0], off[1], off[1] - off[0]);
	t->data = p->data + off[0];
	t->nbytes = (size_t)nbytes; /* <= data_len, so it fits */
	t->file = p->f;
	return 0;
}

static int cmp_offset(const void *a, const void *b)
{
	const struct fp_st_tensor *x = a, *y = b;
	const uint8_t *px = x->data, *py = y->data;

	if (px != py)
		return px < py ? -1 : 1;
	if (x->nbytes != y->nbytes)
		return x->nbytes < y->nbytes ? -1 : 1;
	return strcmp(x->name, y->name);
}

static int cmp_name_ptr(const void *a, const void *b)
{
	const struct fp_st_tensor *const *x = a, *const *y = b;

	return strcmp((*x)->name, (*y)->name);
}

static int cmp_meta(const void *a, const void *b)
{
	const struct st_meta *x = a, *y = b;

	return strcmp(x->key, y->key);
}

/* Sort, then refuse overlapping ranges and duplicate names; build the name index. */
static int check_layout(struct fp_st_file *f)
{
	qsort(f->t, f->n, sizeof(*f->t), cmp_offset);
	for (size_t i = 1; i < f->n; i++) {
		const struct fp_st_tensor *a = &f->t[i - 1], *b = &f->t[i];

		if ((const uint8_t *)b->data < (const uint8_t *)a->data + a->nbytes)
			return tensor_err(f->path, b->name, "data overlaps tensor '%s'", a->name);
	}
	f->by_name = fp_mallocarray(f->n, sizeof(*f->by_name));
	if (!f->by_name)
		return oom(f->path);
	for (size_t i = 0; i < f->n; i++)
		f->by_name[i] = &f->t[i];
	qsort(f->by_name, f->n, sizeof(*f->by_name), cmp_name_ptr);
	for (size_t i = 1; i < f->n; i++)
		if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0)
			return tensor_err(f->path, f->by_name[i]->name, "name appears twice");
	if (f->nmeta) /* meta is NULL without __metadata__; qsort wants a pointer */
		qsort(f->meta, f->nmeta, sizeof(*f->meta), cmp_meta);
	for (size_t i = 1; i < f->nmeta; i++)
		if (strcmp(f->meta[i - 1].key, f->meta[i].key) == 0)
			return header_err(f->path, "__metadata__ key '%s' appears twice",
					  f->meta[i].key);
	return 0;
}

static int parse_root(struct parse *p, const cJSON *root)
{
	struct fp_st_file *f = p->f;
	const cJSON *it;
	int r;

	if (!cJSON_IsObject(root))
		return header_err(f->path, "not a JSON object");
	f->t = fp_callocarray(count_children(root), sizeof(*f->t));
	if (!f->t)
		return oom(f->path);
	cJSON_ArrayForEach(it, root)
	{
		struct fp_st_tensor *t = &f->t[f->n];

		if (strcmp(it->string, "__metadata__") == 0) {
			r = parse_metadata(p, it);
		} else {
			t->name = strdup(it->string);
			if (!t->name)
				return oom(f->path);
			f->n++;
			r = parse_tensor(p, it, t);
		}
		if (r < 0)
			return r;
	}
	if (p->nt.next != p->nt.n)
		return header_err(f->path, "number tokens out of step with the JSON parser");
	return check_layout(f);
}

/* Validate the image f->base (f->len bytes) and index its tensors. */
static int parse_image(struct fp_st_file *f)
{
	struct parse p = { .f = f };
	const char *end = NULL;
	cJSON *root = NULL;
	char *hdr = NULL;
	uint64_t hlen = 0;
	int r;

	if (f->len < 8)
		return header_err(f->path, "file has %zu bytes, fewer than the 8-byte length",
				  f->len);
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | f->base[i];
	if (hlen > FP_ST_MAX_HEADER)
		return header_err(f->path, "length %" PRIu64 " exceeds the limit of %u bytes", hlen,
				  FP_ST_MAX_HEADER);
	if (hlen > f->len - 8)
		return header_err(f->path,
				  "length %" PRIu64 " runs past the end of the file (%zu bytes)",
				  hlen, f->len);
	if (hlen == 0)
		return header_err(f->path, "empty");
	end = memchr(f->base + 8, 0, hlen);
	if (end)
		return header_err(f->path, "NUL byte at offset %zu",
				  (size_t)(end - (const char *)f->base));
	p.data = f->base + 8 + hlen;
	p.data_len = f->len - 8 - (size_t)hlen;
	hdr = malloc((size_t)hlen + 1);
	if (!hdr) {
		r = oom(f->path);
		goto out;
	}
	memcpy(hdr, f->base + 8, hlen);
	hdr[hlen] = '\0';
	r = scan_numbers(f->path, hdr, hlen, &p.nt);
	if (r < 0)
		goto out;
	root = cJSON_ParseWithOpts(hdr, &end, 1);
	if (!root) {
		size_t at = end && end >= hdr && end <= hdr + hlen ? (size_t)(end - hdr) : 0;

		r = header_err(f->path, "invalid JSON near byte %zu of the header", at);
		goto out;
	}
	r = parse_root(&p, root);
out:
	cJSON_Delete(root);
	free(hdr);
	free(p.nt.tok);
	return r;
}

static void file_free(struct fp_st_file *f)
{
	for (size_t i = 0; i < f->n; i++)
		free((char *)f->t[i].name);
	for (size_t i = 0; i < f->nmeta; i++) {
		free(f->meta[i].key);
		free(f->meta[i].value);
	}
	free(f->t);
	free(f->by_name);
	free(f->meta);
	if (f->mapped)
		munmap((void *)f->base, f->len);
	free(f->path);
	free(f);
}

int fp_st_open_mem(const void *buf, size_t len, const char *name, struct fp_st_file **ret)
{
	struct fp_st_file *f = calloc(1, sizeof(*f));
	int r;

	if (!f)
		return oom(name ? name : "(memory)");
	f->path = strdup(name ? name : "(memory)");
	if (!f->path) {
		free(f);
		return oom("(memory)");
	}
	f->base = buf;
	f->len = len;
	r = parse_image(f);
	if (r < 0) {
		file_free(f);
		return r;
	}
	*ret = f;
	return 0;
}

int fp_st_open(const char *path, struct fp_st_file **ret)
{
	struct fp_st_file *f = NULL;
	size_t size = 0;
	void *map;
	int fd, r;

	r = fp_open_regular(path, SIZE_MAX, &fd, &size);
	if (r < 0)
		return r;
	f = calloc(1, sizeof(*f));
	if (!f || !(f->path = strdup(path))) {
		r = oom(path);
		goto out;
	}
	f->len = size;
	if (f->len >= 8) { /* shorter files fail in parse_image; mmap refuses length 0 */
		map = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			r = fp_err_detail(-errno, "%s: mmap: %s", path, strerror(errno));
			goto out;
		}
		f->base = map;
		f->mapped = true;
	}
	r = parse_image(f);
out:
	close(fd);
	if (r < 0) {
		if (f)
			file_free(f);
		return r;
	}
	*ret = f;
	return 0;
}

void fp_st_close(struct fp_st_file *f)
{
	if (f)
		file_free(f);
}

size_t fp_st_count(const struct fp_st_file *f)
{
	return f->n;
}

const struct fp_st_tensor *fp_st_at(const struct fp_st_file *f, size_t i)
{
	return i < f->n ? &f->t[i] : NULL;
}

const struct fp_st_tensor *fp_st_find(const struct fp_st_file *f, const char *name)
{
	struct fp_st_tensor key = { .name = name };
	const struct fp_st_tensor *kp = &key, *const * hit;

	hit = bsearch(&kp, f->by_name, f->n, sizeof(*f->by_name), cmp_name_ptr);
	return hit ? *hit : NULL;
}

const char *fp_st_metadata(const struct fp_st_file *f, const char *key)
{
	struct st_meta k = { .key = (char *)key }, *hit;

	if (!f->nmeta)
		return NULL;
	hit = bsearch(&k, f->meta, f->nmeta, sizeof(*f->meta), cmp_meta);
	return hit ? hit->value : NULL;
}

size_t fp_st_metadata_count(const struct fp_st_file *f)
{
	return f->nmeta;
}

const char *fp_st_metadata_at(const struct fp_st_file *f, size_t i, const char **ret_value)
{
	if (i >= f->nmeta)
		return NULL;
	if (ret_value)
		*ret_value = f->meta[i].value;
	return f->meta[i].key;
}

const char *fp_st_path(const struct fp_st_file *f)
{
	return f->path;
}

/* ---------------------------------------------------------------------------------------- */
/* conversion and release */

/* Portable loop; also the reference the F16C path is tested against. */
static void f16_to_f32_loop(float *out, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint16_t h;

		memcpy(&h, p + 2 * i, 2);
		out[i] = fp_f16_to_f32(h);
	}
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* 8 halves per instruction with F16C; the tail goes through the portable loop. */
__attribute__((target("avx,f16c"))) static void f16_to_f32_f16c(float *out, const uint8_t *p,
								size_t n)
{
	size_t i = 0;

	for (; i + 8 <= n; i += 8) {
		__m128i h = _mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i));

		_mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
	}
	f16_to_f32_loop(out + i, p + 2 * i, n - i);
}

/* F16C and AVX present and the OS saves YMM state (cpuid + xgetbv); cached after first use. */
static bool have_f16c(void)
{
	static int cached = -1; /* racing first calls compute the same value */
	int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
	unsigned a, b, c, d, xlo, xhi;

	if (v >= 0)
		return v;
	v = 0;
	if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) && (c & bit_AVX) &&
	    (c & bit_OSXSAVE)) {
		__asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
		v = (xlo & 6) == 6; /* XMM and YMM state enabled */
	}
	__atomic_store_n(&cached, v, __ATOMIC_RELAXED);
	return v;
}
#endif

/* Exposed for the unit tests (prototype in safetensors.h): force the portable loop. */
void fp__st_f16_to_f32(float *out, const void *src, size_t n, bool portable)
{
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
	if (!portable && have_f16c()) {
		f16_to_f32_f16c(out, src, n);
		return;
	}
#endif
	f16_to_f32_loop(out, src, n);
}

static void bf16_to_f32_loop(float *out, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint16_t h;
		uint32_t u;

		memcpy(&h, p + 2 * i, 2);
		u = (uint32_t)h << 16;
		memcpy(&out[i], &u, 4);
	}
}

int fp_st_to_f32(const struct fp_st_tensor *t, float *out)
{
	switch (t->dtype) {
	case FP_DT_F32:
		if (t->nbytes)
			memcpy(out, t->data, t->nbytes);
		return 0;
	case FP_DT_F16:
		fp__st_f16_to_f32(out, t->data, t->numel, false);
		return 0;
	case FP_DT_BF16:
		bf16_to_f32_loop(out, t->data, t->numel);
		return 0;
	default:
		break;
	}
	return fp_err_detail(-ENOTSUP, "%s: tensor '%s': dtype %s cannot be converted to F32",
			     t->file ? t->file->path : "?", t->name, fp_dtype_name(t->dtype));
}

/*
 * Round outward to whole pages: a page shared with a neighbouring tensor is dropped too. That
 * is harmless here: the mapping is private, read-only and never written, so MADV_DONTNEED only
 * discards page-table entries and the next access faults the same bytes back in from the page
 * cache. (Names and metadata live on the heap, so dropping the header page is fine too.)
 */
void fp_st_release(const struct fp_st_tensor *t)
{
	uintptr_t page, lo, hi, map_end;
	const struct fp_st_file *f = t->file;
	long ps = sysconf(_SC_PAGESIZE);

	if (!f || !f->mapped || t->nbytes == 0 || ps <= 0)
		return;
	page = (uintptr_t)ps;
	lo = (uintptr_t)t->data & ~(page - 1);
	hi = ((uintptr_t)t->data + t->nbytes + page - 1) & ~(page - 1);
	map_end = ((uintptr_t)f->base + f->len + page - 1) & ~(page - 1);
	if (hi > map_end)
		hi = map_end;
	madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* ---------------------------------------------------------------------------------------- */
/* model directories */

struct fp_st_model {
	struct fp_st_file **shards; /* (nshards) sorted by file name */
	size_t nshards;
	size_t *first;			     /* (nshards + 1) index of each shard's first tensor */
	const struct fp_st_tensor **by_name; /* (n) over all shards, sorted by name */
	size_t n;
	uint64_t bytes;
};

void fp_st_model_close(struct fp_st_model *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->nshards; i++)
		fp_st_close(m->shards[i]);
	free(m->shards);
	free(m->first);
	free(m->by_name);
	free(m);
}

static int cmp_name_then_file(const void *a, const void *b)
{
	const struct fp_st_tensor *const *x = a, *const *y = b;
	int c = strcmp((*x)->name, (*y)->name);

	if (c)
		return c;
	return strcmp(fp_st_path((*x)->file), fp_st_path((*y)->file));
}

/* Build the global tensor tables from m->shards; refuses a name in two shards. */
static int model_index(struct fp_st_model *m)
{
	size_t k = 0;

	m->first = fp_callocarray(m->nshards + 1, sizeof(*m->first));
	if (!m->first)
		return oom("model");
	for (size_t i = 0; i < m->nshards; i++) {
		m->first[i] = m->n;
		m->n += fp_st_count(m->shards[i]); /* cannot overflow: each is a mapped array */
	}
	m->first[m->nshards] = m->n;
	m->by_name = fp_mallocarray(m->n, sizeof(*m->by_name));
	if (!m->by_name)
		return oom("model");
	for (size_t i = 0; i < m->nshards; i++) {
		for (size_t j = 0; j < fp_st_count(m->shards[i]); j++) {
			m->by_name[k] = fp_st_at(m->shards[i], j);
			m->bytes += m->by_name[k]->nbytes;
			k++;
		}
	}
	qsort(m->by_name, m->n, sizeof(*m->by_name), cmp_name_then_file);
	for (size_t i = 1; i < m->n; i++) {
		const struct fp_st_tensor *a = m->by_name[i - 1], *b = m->by_name[i];

		if (strcmp(a->name, b->name) == 0)
			return fp_err_detail(-EBADMSG, "%s: tensor '%s': also present in %s",
					     fp_st_path(b->file), b->name, fp_st_path(a->file));
	}
	return 0;
}

static char *join_path(const char *dir, const char *name)
{
	char *s = NULL;

	if (asprintf(&s, "%s/%s", dir, name) < 0)
		return NULL;
	return s;
}

int fp_st_model_open_file(const char *path, struct fp_st_model **ret)
{
	struct fp_st_model *m = calloc(1, sizeof(*m));
	int r;

	if (!m)
		return oom(path);
	m->shards = calloc(1, sizeof(*m->shards));
	if (!m->shards) {
		r = oom(path);
		goto out;
	}
	r = fp_st_open(path, &m->shards[0]);
	if (r < 0)
		goto out;
	m->nshards = 1;
	r = model_index(m);
out:
	if (r < 0) {
		fp_st_model_close(m);
		return r;
	}
	*ret = m;
	return 0;
}

struct map_ent {
	const char *tensor, *shard; /* borrowed from the index's cJSON tree */
};

static int cmp_ent(const void *a, const void *b)
{
	return strcmp(((const struct map_ent *)a)->tensor, ((const struct map_ent *)b)->tensor);
}

static int cmp_str_ptr(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int check_shard_name(const char *ipath, const char *tensor, const char *shard)
{
	if (!shard[0] || shard[0] == '.' || strchr(shard, '/') || strlen(shard) > NAME_MAX)
		return fp_err_detail(-EBADMSG,
				     "%s: tensor '%s': shard name '%s' is empty, starts with '.', "
				     "contains '/' or is too long",
				     ipath, tensor, shard);
	return 0;
}

/* The weight_map as entries sorted by tensor name (duplicates refused). */
static int read_weight_map(const char *ipath, const cJSON *root, struct map_ent **ret,
			   size_t *ret_n)
{
	const cJSON *wm = NULL, *it;
	struct map_ent *e = NULL;
	size_t n = 0;
	int r = 0;

	if (!cJSON_IsObject(root))
		return fp_err_detail(-EBADMSG, "%s: not a JSON object", ipath);
	cJSON_ArrayForEach(it, root)
	{
		if (strcmp(it->string, "weight_map") != 0)
			continue; /* "metadata" and anything else is not ours to judge */
		if (wm)
			return fp_err_detail(-EBADMSG, "%s: weight_map appears twice", ipath);
		wm = it;
	}
	if (!cJSON_IsObject(wm))
		return fp_err_detail(-EBADMSG, "%s: weight_map missing or not an object", ipath);
	e = fp_mallocarray(count_children(wm), sizeof(*e));
	if (!e)
		return oom(ipath);
	cJSON_ArrayForEach(it, wm)
	{
		if (!cJSON_IsString(it)) {
			r = fp_err_detail(-EBADMSG, "%s: tensor '%s': shard is not a string", ipath,
					  it->string);
			goto out;
		}
		r = check_shard_name(ipath, it->string, it->valuestring);
		if (r < 0)
			goto out;
		e[n].tensor = it->string;
		e[n].shard = it->valuestring;
		n++;
	}
	qsort(e, n, sizeof(*e), cmp_ent);
	for (size_t i = 1; i < n && r == 0; i++)
		if (strcmp(e[i - 1].tensor, e[i].tensor) == 0)
			r = fp_err_detail(-EBADMSG, "%s: tensor '%s': listed twice in weight_map",
					  ipath, e[i].tensor);
out:
	if (r < 0) {
		free(e);
		return r;
	}
	*ret = e;
	*ret_n = n;
	return 0;
}

/* Open every distinct shard of the sorted entries, in file-name order. */
static int open_shards(struct fp_st_model *m, const char *dir, const struct map_ent *e, size_t n,
		       const char ***ret_names)
{
	const char **names = fp_mallocarray(n, sizeof(*names));
	size_t k = 0;
	int r = 0;

	if (!names)
		return oom(dir);
	for (size_t i = 0; i < n; i++)
		names[i] = e[i].shard;
	qsort(names, n, sizeof(*names), cmp_str_ptr);
	for (size_t i = 0; i < n; i++)
		if (k == 0 || strcmp(names[k - 1], names[i]) != 0)
			names[k++] = names[i];
	m->shards = fp_callocarray(k, sizeof(*m->shards));
	if (!m->shards) {
		free(names);
		return oom(dir);
	}
	for (size_t i = 0; i < k && r == 0; i++) {
		char *p = join_path(dir, names[i]);

		r = p ? fp_st_open(p, &m->shards[i]) : oom(dir);
		if (r == 0)
			m->nshards++;
		free(p);
	}
	if (r < 0) {
		free(names);
		return r;
	}
	*ret_names = names;
	return 0;
}

/* Every map entry names the shard holding the tensor, and every shard tensor is mapped. */
static int check_map(const struct fp_st_model *m, const char *ipath, const struct map_ent *e,
		     size_t n, const char **names)
{
	size_t i = 0, j = 0;

	while (i < n || j < m->n) {
		int c = i == n ? 1 : j == m->n ? -1 : strcmp(e[i].tensor, m->by_name[j]->name);
		const char **hit;
		size_t s;

		if (c < 0)
			return fp_err_detail(-EBADMSG,
					     "%s: tensor '%s': mapped to shard '%s' which lacks it",
					     ipath, e[i].tensor, e[i].shard);
		if (c > 0)
			return fp_err_detail(
				-EBADMSG, "%s: tensor '%s': not listed in the weight_map of %s",
				fp_st_path(m->by_name[j]->file), m->by_name[j]->name, ipath);
		hit = bsearch(&e[i].shard, names, m->nshards, sizeof(*names), cmp_str_ptr);
		s = hit ? (size_t)(hit - names) : m->nshards;
		if (s == m->nshards || m->shards[s] != m->by_name[j]->file)
			return fp_err_detail(-EBADMSG,
					     "%s: tensor '%s': mapped to shard '%s' which lacks it "
					     "(it is in %s)",
					     ipath, e[i].tensor, e[i].shard,
					     fp_st_path(m->by_name[j]->file));
		i++;
		j++;
	}
	return 0;
}

static int model_open_index(struct fp_st_model *m, const char *dir, const char *ipath)
{
	struct map_ent *e = NULL;
	const char **names = NULL, *end = NULL;
	cJSON *root = NULL;
	char *text = NULL;
	size_t len = 0, n = 0;
	int r;

	r = fp_read_file(ipath, ST_MAX_INDEX, &text, &len);
	if (r < 0)
		goto out;
	if (memchr(text, 0, len)) {
		r = fp_err_detail(-EBADMSG, "%s: NUL byte in JSON", ipath);
		goto out;
	}
	root = cJSON_ParseWithOpts(text, &end, 1);
	if (!root) {
		r = fp_err_detail(-EBADMSG, "%s: invalid JSON near byte %zu", ipath,
				  end && end >= text && end <= text + len ? (size_t)(end - text)
									  : 0);
		goto out;
	}
	r = read_weight_map(ipath, root, &e, &n);
	if (r < 0)
		goto out;
	r = open_shards(m, dir, e, n, &names);
	if (r < 0)
		goto out;
	r = model_index(m);
	if (r < 0)
		goto out;
	r = check_map(m, ipath, e, n, names);
out:
	free(names);
	free(e);
	cJSON_Delete(root);
	free(text);
	return r;
}

int fp_st_model_open(const char *dir, struct fp_st_model **ret)
{
	struct fp_st_model *m = NULL;
	char *single = join_path(dir, ST_SINGLE_NAME), *ipath = join_path(dir, ST_INDEX_NAME);
	struct stat st;
	int r;

	if (!single || !ipath) {
		r = oom(dir);
		goto out;
	}
	if (stat(dir, &st) < 0) {
		r = fp_err_detail(-errno, "%s: %s", dir, strerror(errno));
		goto out;
	}
	if (!S_ISDIR(st.st_mode)) {
		r = fp_err_detail(-ENOTDIR, "%s: not a directory", dir);
		goto out;
	}
	if (stat(single, &st) == 0) { /* transformers prefers the single file too */
		r = fp_st_model_open_file(single, ret);
		goto out;
	}
	if (stat(ipath, &st) < 0) {
		r = fp_err_detail(-ENOENT, "%s: neither %s nor %s", dir, ST_SINGLE_NAME,
				  ST_INDEX_NAME);
		goto out;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		r = oom(dir);
		goto out;
	}
	r = model_open_index(m, dir, ipath);
	if (r < 0)
		goto out;
	*ret = m;
	m = NULL;
out:
	fp_st_model_close(m);
	free(single);
	free(ipath);
	return r;
}

const struct fp_st_tensor *fp_st_model_find(const struct fp_st_model *m, const char *name)
{
	struct fp_st_tensor key = { .name = name };
	const struct fp_st_tensor *kp = &key, *const * hit;

	hit = bsearch(&kp, m->by_name, m->n, sizeof(*m->by_name), cmp_name_ptr);
	return hit ? *hit : NULL;
}

size_t fp_st_model_count(const struct fp_st_model *m)
{
	return m->n;
}

const struct fp_st_tensor *fp_st_model_at(const struct fp_st_model *m, size_t i)
{
	size_t lo = 0, hi = m->nshards;

	if (i >= m->n)
		return NULL;
	while (hi - lo > 1) { /* the last shard whose first tensor is <= i */
		size_t mid = lo + (hi - lo) / 2;

		if (m->first[mid] <= i)
			lo = mid;
		else
			hi = mid;
	}
	return fp_st_at(m->shards[lo], i - m->first[lo]);
}

uint64_t fp_st_model_bytes(const struct fp_st_model *m)
{
	return m->bytes;
}

size_t fp_st_model_shard_count(const struct fp_st_model *m)
{
	return m->nshards;
}

const struct fp_st_file *fp_st_model_shard(const struct fp_st_model *m, size_t i)
{
	return i < m->nshards ? m->shards[i] : NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* writer */

#define WR_BUF (64u << 10)

struct fp_st_writer {
	struct fp_atomic_file af; /* af.path is the destination, af.tmp the file being written */
	uint64_t total, written;
	int err; /* first failure; sticky */
	size_t nbuf;
	uint8_t buf[WR_BUF];
};

struct strbuf {
	char *s;
	size_t len, cap;
	bool oom;
};

static void sb_add(struct strbuf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->cap - b->len <= n) {
		size_t cap = b->cap ? b->cap : 256;
		char *p;

		while (cap - b->len <= n) {
			if (!fp_mul_ok(cap, 2, &cap)) {
				b->oom = true;
				return;
			}
		}
		p = realloc(b->s, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->s = p;
		b->cap = cap;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void sb_puts(struct strbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static void sb_u64(struct strbuf *b, uint64_t v)
{
	char tmp[24];
	int n = snprintf(tmp, sizeof(tmp), "%" PRIu64, v);

	sb_add(b, tmp, (size_t)n);
}

/* A JSON string literal: escapes '"', '\\' and control characters; other bytes as they are. */
static void sb_json_str(struct strbuf *b, const char *s)
{
	static const char hex[] = "0123456789abcdef";

	sb_add(b, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };

		if (c == '"' || c == '\\') {
			sb_add(b, "\\", 1);
			sb_add(b, s, 1);
		} else if (c < 0x20) {
			sb_add(b, esc, sizeof(esc));
		} else {
			sb_add(b, s, 1);
		}
	}
	sb_add(b, "\"", 1);
}

static int writer_check_decls(const char *path, const struct fp_st_decl *d, size_t n,
			      const char *const *metadata)
{
	const char **names = fp_mallocarray(n, sizeof(*names));
	int r = 0;

	if (!names)
		return oom(path);
	for (size_t i = 0; i < n && r == 0; i++) {
		if (!d[i].name || strcmp(d[i].name, "__metadata__") == 0)
			r = fp_err_detail(-EINVAL, "%s: declaration %zu: missing or reserved name",
					  path, i);
		else if ((unsigned)d[i].dtype >= FP_DT_COUNT || d[i].ndim > FP_ST_MAX_DIMS)
			r = fp_err_detail(-EINVAL,
					  "%s: tensor '%s': bad dtype or more than %d dims", path,
					  d[i].name, FP_ST_MAX_DIMS);
		names[i] = d[i].name;
	}
	if (r == 0) {
		qsort(names, n, sizeof(*names), cmp_str_ptr);
		for (size_t i = 1; i < n && r == 0; i++)
			if (strcmp(names[i - 1], names[i]) == 0)
				r = fp_err_detail(-EINVAL, "%s: tensor '%s': declared twice", path,
						  names[i]);
	}
	free(names);
	for (size_t i = 0; r == 0 && metadata && metadata[i]; i += 2) {
		if (!metadata[i + 1])
			r = fp_err_detail(-EINVAL, "%s: metadata key '%s' has no value", path,
					  metadata[i]);
		/* a handful of keys: quadratic is fine */
		for (size_t j = 0; j < i && r == 0; j += 2)
			if (strcmp(metadata[i], metadata[j]) == 0)
				r = fp_err_detail(-EINVAL, "%s: metadata key '%s' given twice",
						  path, metadata[i]);
	}
	return r;
}

/* The JSON header padded with spaces to a multiple of 8 bytes; *total = data section size. */
static int writer_header(const char *path, const struct fp_st_decl *d, size_t n,
			 const char *const *metadata, struct strbuf *b, uint64_t *total)
{
	uint64_t off = 0;

	sb_puts(b, "{");
	if (metadata && metadata[0]) {
		sb_puts(b, "\"__metadata__\":{");
		for (size_t i = 0; metadata[i]; i += 2) {
			if (i)
				sb_puts(b, ",");
			sb_json_str(b, metadata[i]);
			sb_puts(b, ":");
			sb_json_str(b, metadata[i + 1]);
		}
		sb_puts(b, "}");
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t numel, nbytes;

		if (!fp_mul_dims_ok(d[i].shape, d[i].ndim, &numel) ||
		    __builtin_mul_overflow(numel, (uint64_t)fp_dtype_size(d[i].dtype), &nbytes) ||
		    __builtin_add_overflow(off, nbytes, &nbytes))
			return fp_err_detail(-EOVERFLOW, "%s: tensor '%s': size overflows", path,
					     d[i].name);
		if (i || (metadata && metadata[0]))
			sb_puts(b, ",");
		sb_json_str(b, d[i].name);
		sb_puts(b, ":{\"dtype\":\"");
		sb_puts(b, fp_dtype_name(d[i].dtype));
		sb_puts(b, "\",\"shape\":[");
		for (unsigned k = 0; k < d[i].ndim; k++) {
			if (k)
				sb_puts(b, ",");
			sb_u64(b, d[i].shape[k]);
		}
		sb_puts(b, "],\"data_offsets\":[");
		sb_u64(b, off);
		sb_puts(b, ",");
		sb_u64(b, nbytes);
		sb_puts(b, "]}");
		off = nbytes; /* the end of this tensor */
	}
	sb_puts(b, "}");
	while (!b->oom && b->len % 8)
		sb_puts(b, " ");
	if (b->oom)
		return oom(path);
	if (b->len > FP_ST_MAX_HEADER)
		return fp_err_detail(-EINVAL, "%s: header of %zu bytes exceeds the limit", path,
				     b->len);
	*total = off;
	return 0;
}

int fp_st_writer_open(const char *path, const struct fp_st_decl *decls, size_t n,
		      const char *const *metadata, struct fp_st_writer **ret)
{
	struct strbuf hdr = { 0 };
	struct fp_st_writer *w = NULL;
	uint8_t len8[8];
	int r;

	r = writer_check_decls(path, decls, n, metadata);
	if (r < 0)
		return r;
	w = calloc(1, sizeof(*w));
	if (!w)
		return oom(path);
	r = writer_header(path, decls, n, metadata, &hdr, &w->total);
	if (r == 0)
		r = fp_atomic_open(&w->af, path, 0666);
	if (r < 0)
		goto out;
	for (int i = 0; i < 8; i++)
		len8[i] = (uint8_t)((uint64_t)hdr.len >> (8 * i));
	r = fp_atomic_write(&w->af, len8, sizeof(len8));
	if (r == 0)
		r = fp_atomic_write(&w->af, hdr.s, hdr.len);
out:
	free(hdr.s);
	if (r < 0) {
		fp_st_writer_abort(w);
		return r;
	}
	*ret = w;
	return 0;
}

static int writer_flush(struct fp_st_writer *w)
{
	int r = fp_atomic_write(&w->af, w->buf, w->nbuf);

	w->nbuf = 0;
	if (r < 0)
		w->err = r;
	return r;
}

int fp_st_writer_write(struct fp_st_writer *w, const void *data, size_t len)
{
	if (w->err)
		return w->err;
	if (len > w->total - w->written)
		return w->err = fp_err_detail(-EINVAL,
					      "%s: %zu more bytes than the %" PRIu64
					      " declared (at %" PRIu64 ")",
					      w->af.path, len - (size_t)(w->total - w->written),
					      w->total, w->written);
	w->written += len;
	if (len >= WR_BUF) {
		int r = writer_flush(w);

		if (r == 0 && (r = fp_atomic_write(&w->af, data, len)) < 0)
			w->err = r;
		return r;
	}
	if (len == 0)
		return 0; /* data may be NULL */
	if (len > WR_BUF - w->nbuf && writer_flush(w) < 0)
		return w->err;
	memcpy(w->buf + w->nbuf, data, len);
	w->nbuf += len;
	return 0;
}

int fp_st_writer_close(struct fp_st_writer *w)
{
	int r = w->err;

	if (r == 0 && w->written != w->total)
		r = fp_err_detail(-EINVAL, "%s: %" PRIu64 " of %" PRIu64 " data bytes written",
				  w->af.path, w->written, w->total);
	if (r == 0)
		r = writer_flush(w);
	if (r < 0) {
		fp_st_writer_abort(w);
		return r;
	}
	r = fp_atomic_commit(&w->af);
	free(w);
	return r;
}

void fp_st_writer_abort(struct fp_st_writer *w)
{
	if (!w)
		return;
	fp_atomic_abort(&w->af);
	free(w);
}
