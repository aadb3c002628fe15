/*
 * Bit-packed pruning masks and the mask file (format in mask.h).
 */
#include "mask.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "err.h"
#include "fileio.h"

static const uint8_t mask_magic[8] = { 0x89, 'F', 'P', 'M', 'A', 'S', 'K', '\n' };

#define FIXED_HDR 32 /* magic, version, flags, count, header_len */

/* ---- bit operations ---- */

static uint64_t load64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

/* Bits set in [b, e) of m. */
static uint64_t popcount_range(const uint8_t *m, uint64_t b, uint64_t e)
{
	uint64_t n = 0;

	while (b < e && (b & 7)) {
		n += fp_mask_get(m, b);
		b++;
	}
	while (e - b >= 64) {
		n += (uint64_t)__builtin_popcountll(load64(m + b / 8));
		b += 64;
	}
	while (e - b >= 8) {
		n += (uint64_t)__builtin_popcount(m[b / 8]);
		b += 8;
	}
	while (b < e) {
		n += fp_mask_get(m, b);
		b++;
	}
	return n;
}

uint64_t fp_mask_count(const uint8_t *m, size_t nbits)
{
	return popcount_range(m, 0, nbits);
}

uint64_t fp_mask_count_naive(const uint8_t *m, size_t nbits)
{
	uint64_t n = 0;

	for (size_t p = 0; p < nbits; p++)
		n += fp_mask_get(m, p);
	return n;
}

void fp_mask_count_rows(const uint8_t *m, size_t rows, size_t cols, uint64_t *per_row)
{
	for (size_t i = 0; i < rows; i++)
		per_row[i] = popcount_range(m, (uint64_t)i * cols, (uint64_t)(i + 1) * cols);
}

void fp_mask_count_cols(const uint8_t *m, size_t rows, size_t cols, uint64_t *per_col)
{
	memset(per_col, 0, cols * sizeof(*per_col));
	for (size_t i = 0; i < rows; i++)
		for (size_t j = 0; j < cols; j++)
			per_col[j] += fp_mask_get(m, i * cols + j);
}

int fp_mask_check_nm(const uint8_t *m, size_t rows, size_t cols, unsigned n, unsigned mm)
{
	if (mm == 0 || n > mm || cols % mm)
		return fp_err_detail(-EINVAL, "N:M check: %u:%u does not fit %zu columns", n, mm,
				     cols);
	for (size_t i = 0; i < rows; i++)
		for (size_t j = 0; j < cols; j += mm) {
			uint64_t b = (uint64_t)i * cols + j;
			uint64_t c = popcount_range(m, b, b + mm);

			if (c != n)
				return fp_err_detail(
					-EDOM,
					"N:M check: row %zu, columns %zu..%zu: %" PRIu64
					" pruned, not %u",
					i, j, j + mm - 1, c, n);
		}
	return 0;
}

void fp_mask_apply(float *w, const uint8_t *m, size_t rows, size_t cols)
{
	size_t n = rows * cols;

	for (size_t b = 0; b < fp_mask_bytes(n); b++) {
		unsigned byte = m[b];

		while (byte) {
			size_t p = b * 8 + (size_t)__builtin_ctz(byte);

			if (p < n)
				w[p] = 0.0f;
			byte &= byte - 1;
		}
	}
}

void fp_mask_compare(const uint8_t *a, const uint8_t *b, size_t nbits, struct fp_mask_cmp *ret)
{
	uint64_t both = 0, either = 0, pa = 0, pb = 0;
	size_t p = 0;

	for (; nbits - p >= 64; p += 64) {
		uint64_t x = load64(a + p / 8), y = load64(b + p / 8);

		pa += (uint64_t)__builtin_popcountll(x);
		pb += (uint64_t)__builtin_popcountll(y);
		both += (uint64_t)__builtin_popcountll(x & y);
		either += (uint64_t)__builtin_popcountll(x | y);
	}
	for (; p < nbits; p++) {
		bool x = fp_mask_get(a, p), y = fp_mask_get(b, p);

		pa += x;
		pb += y;
		both += x && y;
		either += x || y;
	}
	ret->nbits = nbits;
	ret->pruned_a = pa;
	ret->pruned_b = pb;
	ret->both = both;
	ret->either = either;
	ret->hamming = either - both;
	ret->jaccard = either ? (double)both / (double)either : 1.0;
}

/* Whether the bits of the final byte past nbits are all 0. */
static bool padding_clear(const uint8_t *m, uint64_t nbits)
{
	if (nbits % 8 == 0)
		return true;
	return (m[nbits / 8] >> (nbits % 8)) == 0;
}

/* ---- little-endian helpers ---- */

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* A printable, bounded copy of a name from a file for messages. */
static const char *safe_name(const char *s, char *buf, size_t len)
{
	size_t i = 0;

	for (; s[i] && i + 4 < len && i < 64; i++)
		buf[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	if (s[i]) {
		memcpy(buf + i, "...", 3);
		i += 3;
	}
	buf[i] = '\0';
	return buf;
}

static void digest(uint8_t out[FP_MASK_DIGEST], const uint8_t *data, size_t len)
{
	crypto_generichash(out, FP_MASK_DIGEST, data, len, NULL, 0);
}

/* prod(dims) and the packed size; false on overflow. */
static bool info_sizes(const struct fp_mask_info *t, uint64_t *ret_nbits, uint64_t *ret_nbytes)
{
	uint64_t n;

	if (!fp_mul_dims_ok(t->dims, t->ndim, &n))
		return false;
	*ret_nbits = n;
	*ret_nbytes = n / 8 + (n % 8 != 0);
	return true;
}

static int cmp_names(const void *a, const void *b)
{
	const struct fp_mask_info *const *x = a, *const *y = b;

	return strcmp((*x)->name, (*y)->name);
}

/* Refuse duplicate names among info (n). label names the file. */
static int check_unique(const struct fp_mask_info *info, size_t n, const char *label)
{
	const struct fp_mask_info **v = fp_mallocarray(n, sizeof(*v));
	char nb[80];
	int r = 0;

	if (!v)
		return fp_err_detail(-ENOMEM, "%s: out of memory", label);
	for (size_t i = 0; i < n; i++)
		v[i] = &info[i];
	qsort(v, n, sizeof(*v), cmp_names);
	for (size_t i = 1; i < n && r == 0; i++)
		if (strcmp(v[i - 1]->name, v[i]->name) == 0)
			r = fp_err_detail(-EINVAL, "%s: tensor '%s': duplicate name", label,
					  safe_name(v[i]->name, nb, sizeof(nb)));
	free(v);
	return r;
}

/* ---- writer ---- */

struct fp_mask_writer {
	struct fp_atomic_file af; /* af.path is the destination, af.tmp the file being written */
	size_t n, next;
	struct fp_mask_info *decls; /* (n), names owned */
	crypto_generichash_state file_hash;
	int err;
};

/* Write and hash into the file digest. */
static int writer_put(struct fp_mask_writer *w, const void *p, size_t n)
{
	int r = fp_atomic_write(&w->af, p, n);

	if (r < 0)
		return w->err = r;
	crypto_generichash_update(&w->file_hash, p, n);
	return 0;
}

/* Validate decls and compute the header length. */
static int writer_check(const char *path, const struct fp_mask_info *decls, size_t n,
			size_t *ret_len)
{
	size_t len = FIXED_HDR + FP_MASK_DIGEST;
	char nb[80];

	if (n == 0 || n > FP_MASK_MAX_TENSORS)
		return fp_err_detail(-EINVAL, "%s: %zu tensors (1..%u allowed)", path, n,
				     FP_MASK_MAX_TENSORS);
	for (size_t i = 0; i < n; i++) {
		const struct fp_mask_info *t = &decls[i];
		size_t nl = t->name ? strlen(t->name) : 0;
		uint64_t nbits, nbytes;

		if (nl == 0 || nl > FP_MASK_MAX_NAME)
			return fp_err_detail(-EINVAL, "%s: tensor %zu: name length %zu (1..%u)",
					     path, i, nl, FP_MASK_MAX_NAME);
		if (t->ndim < 1 || t->ndim > FP_MASK_MAX_DIMS)
			return fp_err_detail(-EINVAL, "%s: tensor '%s': ndim %u (1..%u)", path,
					     safe_name(t->name, nb, sizeof(nb)), t->ndim,
					     FP_MASK_MAX_DIMS);
		for (uint32_t d = 0; d < t->ndim; d++)
			if (t->dims[d] == 0)
				return fp_err_detail(-EINVAL, "%s: tensor '%s': dimension %u is 0",
						     path, safe_name(t->name, nb, sizeof(nb)), d);
		if (!info_sizes(t, &nbits, &nbytes) || nbytes > SIZE_MAX)
			return fp_err_detail(-EINVAL, "%s: tensor '%s': shape overflows", path,
					     safe_name(t->name, nb, sizeof(nb)));
		len += 4 + nl + 4 + 8 * (size_t)t->ndim + 8;
	}
	if (len > FP_MASK_MAX_HEADER)
		return fp_err_detail(-EINVAL, "%s: header of %zu bytes exceeds %u", path, len,
				     FP_MASK_MAX_HEADER);
	*ret_len = len;
	return check_unique(decls, n, path);
}

/* Serialise the header (len bytes, digest included) into a new buffer. */
static uint8_t *writer_header(const struct fp_mask_info *decls, size_t n, size_t len)
{
	uint8_t *h = malloc(len), *p;

	if (!h)
		return NULL;
	memcpy(h, mask_magic, 8);
	put32(h + 8, FP_MASK_VERSION);
	put32(h + 12, 0);
	put64(h + 16, n);
	put64(h + 24, len);
	p = h + FIXED_HDR;
	for (size_t i = 0; i < n; i++) {
		size_t nl = strlen(decls[i].name);

		put32(p, (uint32_t)nl);
		memcpy(p + 4, decls[i].name, nl);
		p += 4 + nl;
		put32(p, decls[i].ndim);
		p += 4;
		for (uint32_t d = 0; d < decls[i].ndim; d++, p += 8)
			put64(p, decls[i].dims[d]);
		put64(p, decls[i].nbytes);
		p += 8;
	}
	digest(p, h, (size_t)(p - h));
	return h;
}

/* Copy decls with their names and sizes. */
static int writer_copy_decls(struct fp_mask_writer *w, const struct fp_mask_info *decls)
{
	w->decls = fp_callocarray(w->n, sizeof(*w->decls));
	if (!w->decls)
		return -ENOMEM;
	for (size_t i = 0; i < w->n; i++) {
		w->decls[i] = decls[i];
		w->decls[i].name = strdup(decls[i].name);
		if (!w->decls[i].name)
			return -ENOMEM;
		info_sizes(&decls[i], &w->decls[i].nbits, &w->decls[i].nbytes);
	}
	return 0;
}

int fp_mask_writer_open(const char *path, const struct fp_mask_info *decls, size_t n,
			struct fp_mask_writer **ret)
{
	struct fp_mask_writer *w = NULL;
	uint8_t *hdr = NULL;
	size_t len = 0;
	int r;

	r = writer_check(path, decls, n, &len);
	if (r < 0)
		return r;
	if (sodium_init() < 0)
		return fp_err_sodium("sodium_init");
	w = calloc(1, sizeof(*w));
	if (!w)
		return fp_err_detail(-ENOMEM, "%s: out of memory", path);
	w->n = n;
	r = writer_copy_decls(w, decls);
	if (r == 0 && !(hdr = writer_header(w->decls, n, len)))
		r = -ENOMEM;
	if (r < 0) {
		r = fp_err_detail(-ENOMEM, "%s: out of memory", path);
		goto out;
	}
	r = fp_atomic_open(&w->af, path, 0666);
	if (r < 0)
		goto out;
	crypto_generichash_init(&w->file_hash, NULL, 0, FP_MASK_DIGEST);
	r = writer_put(w, hdr, len);
out:
	free(hdr);
	if (r < 0) {
		fp_mask_writer_abort(w);
		return r;
	}
	*ret = w;
	return 0;
}

static int writer_add(struct fp_mask_writer *w, const uint8_t *bits, size_t nbytes,
		      const uint8_t *want)
{
	const struct fp_mask_info *t;
	uint8_t d[FP_MASK_DIGEST];
	int r;

	if (w->err)
		return w->err;
	if (w->next >= w->n)
		return w->err = fp_err_detail(-EINVAL,
					      "%s: all %zu declared tensors already written",
					      w->af.path, w->n);
	t = &w->decls[w->next];
	if (nbytes != t->nbytes)
		return w->err = fp_err_detail(-EINVAL,
					      "%s: tensor '%s': %zu bytes, expected %" PRIu64,
					      w->af.path, t->name, nbytes, t->nbytes);
	if (!padding_clear(bits, t->nbits))
		return w->err = fp_err_detail(-EINVAL, "%s: tensor '%s': padding bits set",
					      w->af.path, t->name);
	digest(d, bits, nbytes);
	if (want && sodium_memcmp(d, want, sizeof(d)) != 0)
		return w->err = fp_err_detail(-EBADMSG,
					      "%s: tensor '%s': the bits do not match their "
					      "expected digest",
					      w->af.path, t->name);
	r = writer_put(w, bits, nbytes);
	if (r == 0)
		r = writer_put(w, d, sizeof(d));
	if (r == 0)
		w->next++;
	return r;
}

int fp_mask_writer_add(struct fp_mask_writer *w, const uint8_t *bits, size_t nbytes)
{
	return writer_add(w, bits, nbytes, NULL);
}

int fp_mask_writer_add_verified(struct fp_mask_writer *w, const uint8_t *bits, size_t nbytes,
				const uint8_t want[FP_MASK_DIGEST])
{
	return writer_add(w, bits, nbytes, want);
}

static void writer_free(struct fp_mask_writer *w)
{
	for (size_t i = 0; w->decls && i < w->n; i++)
		free((char *)w->decls[i].name);
	free(w->decls);
	free(w);
}

int fp_mask_writer_close(struct fp_mask_writer *w)
{
	uint8_t d[FP_MASK_DIGEST];
	int r = w->err;

	if (r == 0 && w->next != w->n)
		r = fp_err_detail(-EINVAL, "%s: %zu of %zu declared tensors written", w->af.path,
				  w->next, w->n);
	if (r == 0) {
		crypto_generichash_final(&w->file_hash, d, sizeof(d));
		r = fp_atomic_write(&w->af, d, sizeof(d));
	}
	if (r < 0) {
		fp_mask_writer_abort(w);
		return r;
	}
	r = fp_atomic_commit(&w->af);
	writer_free(w);
	return r;
}

void fp_mask_writer_abort(struct fp_mask_writer *w)
{
	if (!w)
		return;
	fp_atomic_abort(&w->af);
	writer_free(w);
}

/* ---- reader ---- */

struct fp_mask_reader {
	char *label;
	int fd;		    /* -1 for a memory image */
	const uint8_t *mem; /* (mem_len) */
	size_t mem_len, mem_pos;
	size_t count, next;
	struct fp_mask_info *info; /* (count); names point into names */
	char *names;
	crypto_generichash_state file_hash;
	int err;
};

/* Read exactly n bytes at the current position; -EINVAL if the file ends first. */
static int src_read(struct fp_mask_reader *r, void *buf, size_t n, const char *what)
{
	uint8_t *c = buf;
	size_t want = n;

	if (r->fd < 0) {
		if (n > r->mem_len - r->mem_pos)
			return fp_err_detail(-EINVAL, "%s: truncated %s", r->label, what);
		memcpy(buf, r->mem + r->mem_pos, n);
		r->mem_pos += n;
		return 0;
	}
	while (n) {
		ssize_t k = read(r->fd, c, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return fp_err_detail(-errno, "%s: read: %s", r->label, strerror(errno));
		if (k == 0)
			return fp_err_detail(-EINVAL, "%s: truncated %s (%zu of %zu bytes)",
					     r->label, what, want - n, want);
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

/* Size of the underlying file or image. */
static int src_size(struct fp_mask_reader *r, uint64_t *ret)
{
	struct stat st;

	if (r->fd < 0) {
		*ret = r->mem_len;
		return 0;
	}
	if (fstat(r->fd, &st) < 0)
		return fp_err_detail(-errno, "%s: %s", r->label, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return fp_err_detail(-EINVAL, "%s: not a regular file", r->label);
	*ret = (uint64_t)st.st_size;
	return 0;
}

/* Bounds-checked cursor over the header bytes. */
struct cursor {
	const uint8_t *p, *end;
};

static bool cur_take(struct cursor *c, size_t n, const uint8_t **ret)
{
	if ((size_t)(c->end - c->p) < n)
		return false;
	*ret = c->p;
	c->p += n;
	return true;
}

/* Parse one header entry into t; names are appended at *names. */
static int parse_entry(struct fp_mask_reader *r, struct cursor *c, size_t i, struct fp_mask_info *t,
		       char **names)
{
	const uint8_t *p;
	uint32_t nl;
	uint64_t nbits, nbytes;
	char nb[80];

	if (!cur_take(c, 4, &p))
		return fp_err_detail(-EINVAL, "%s: entry %zu: header too short", r->label, i);
	nl = get32(p);
	if (nl == 0 || nl > FP_MASK_MAX_NAME)
		return fp_err_detail(-EINVAL, "%s: entry %zu: name length %" PRIu32 " (1..%u)",
				     r->label, i, nl, FP_MASK_MAX_NAME);
	if (!cur_take(c, nl, &p))
		return fp_err_detail(-EINVAL, "%s: entry %zu: header too short", r->label, i);
	if (memchr(p, 0, nl))
		return fp_err_detail(-EINVAL, "%s: entry %zu: name contains a NUL byte", r->label,
				     i);
	memcpy(*names, p, nl);
	(*names)[nl] = '\0';
	t->name = *names;
	*names += nl + 1;
	safe_name(t->name, nb, sizeof(nb));
	if (!cur_take(c, 4, &p))
		return fp_err_detail(-EINVAL, "%s: tensor '%s': header too short", r->label, nb);
	t->ndim = get32(p);
	if (t->ndim < 1 || t->ndim > FP_MASK_MAX_DIMS)
		return fp_err_detail(-EINVAL, "%s: tensor '%s': ndim %" PRIu32 " (1..%u)", r->label,
				     nb, t->ndim, FP_MASK_MAX_DIMS);
	if (!cur_take(c, 8 * (size_t)t->ndim + 8, &p))
		return fp_err_detail(-EINVAL, "%s: tensor '%s': header too short", r->label, nb);
	for (uint32_t d = 0; d < t->ndim; d++) {
		t->dims[d] = get64(p + 8 * d);
		if (t->dims[d] == 0)
			return fp_err_detail(-EINVAL, "%s: tensor '%s': dimension %" PRIu32 " is 0",
					     r->label, nb, d);
	}
	if (!info_sizes(t, &nbits, &nbytes) || nbytes > SIZE_MAX)
		return fp_err_detail(-EINVAL, "%s: tensor '%s': shape overflows", r->label, nb);
	t->nbits = nbits;
	t->nbytes = get64(p + 8 * t->ndim);
	if (t->nbytes != nbytes)
		return fp_err_detail(-EINVAL,
				     "%s: tensor '%s': byte length %" PRIu64
				     " does not match the shape (%" PRIu64 " bits need %" PRIu64
				     ")",
				     r->label, nb, t->nbytes, nbits, nbytes);
	return 0;
}

/* Parse the fixed part; *ret_count and *ret_len are the claimed count and header length. */
static int parse_fixed(struct fp_mask_reader *r, const uint8_t *h, uint64_t fsize,
		       uint64_t *ret_count, uint64_t *ret_len)
{
	uint64_t count = get64(h + 16), len = get64(h + 24);

	if (memcmp(h, mask_magic, 8) != 0)
		return fp_err_detail(-EINVAL, "%s: not a mask file (bad magic)", r->label);
	if (get32(h + 8) != FP_MASK_VERSION)
		return fp_err_detail(-EINVAL, "%s: mask file version %" PRIu32 " (this is %d)",
				     r->label, get32(h + 8), FP_MASK_VERSION);
	if (get32(h + 12) != 0)
		return fp_err_detail(-EINVAL, "%s: unknown flags 0x%" PRIx32, r->label,
				     get32(h + 12));
	if (count == 0 || count > FP_MASK_MAX_TENSORS)
		return fp_err_detail(-EINVAL, "%s: %" PRIu64 " tensors (1..%u)", r->label, count,
				     FP_MASK_MAX_TENSORS);
	/* the smallest entry is 4 + 1 + 4 + 8 + 8 = 25 bytes */
	if (len > FP_MASK_MAX_HEADER || len < FIXED_HDR + FP_MASK_DIGEST + 25 * count)
		return fp_err_detail(
			-EINVAL, "%s: header length %" PRIu64 " impossible for %" PRIu64 " tensors",
			r->label, len, count);
	if (len > fsize)
		return fp_err_detail(-EINVAL,
				     "%s: header length %" PRIu64 " beyond the end of the"
				     " file (%" PRIu64 " bytes)",
				     r->label, len, fsize);
	*ret_count = count;
	*ret_len = len;
	return 0;
}

/* Parse the entries of header h (len bytes, digest verified) and check the file size. */
static int parse_entries(struct fp_mask_reader *r, const uint8_t *h, size_t len, uint64_t fsize)
{
	struct cursor c = { h + FIXED_HDR, h + len - FP_MASK_DIGEST };
	uint64_t total = len + FP_MASK_DIGEST;
	char *names;
	int e;

	r->info = fp_callocarray(r->count, sizeof(*r->info));
	r->names = malloc(len); /* names plus their NULs fit in the header's bytes */
	if (!r->info || !r->names)
		return fp_err_detail(-ENOMEM, "%s: out of memory", r->label);
	names = r->names;
	for (size_t i = 0; i < r->count; i++) {
		e = parse_entry(r, &c, i, &r->info[i], &names);
		if (e < 0)
			return e;
		r->info[i].offset = total - FP_MASK_DIGEST;
		if (__builtin_add_overflow(total, r->info[i].nbytes + FP_MASK_DIGEST, &total))
			return fp_err_detail(-EINVAL, "%s: tensor sizes overflow", r->label);
	}
	if (c.p != c.end)
		return fp_err_detail(-EINVAL, "%s: %zu stray bytes after the last header entry",
				     r->label, (size_t)(c.end - c.p));
	e = check_unique(r->info, r->count, r->label);
	if (e < 0)
		return e;
	if (total != fsize)
		return fp_err_detail(-EINVAL,
				     "%s: file has %" PRIu64 " bytes, the header implies %" PRIu64,
				     r->label, fsize, total);
	return 0;
}

static int reader_header(struct fp_mask_reader *r)
{
	uint8_t fixed[FIXED_HDR], d[FP_MASK_DIGEST];
	uint64_t fsize = 0, count = 0, len = 0;
	uint8_t *h = NULL;
	int e;

	e = src_size(r, &fsize);
	if (e == 0)
		e = src_read(r, fixed, sizeof(fixed), "header");
	if (e == 0)
		e = parse_fixed(r, fixed, fsize, &count, &len);
	if (e < 0)
		return e;
	r->count = (size_t)count;
	h = malloc((size_t)len);
	if (!h)
		return fp_err_detail(-ENOMEM, "%s: out of memory", r->label);
	memcpy(h, fixed, FIXED_HDR);
	e = src_read(r, h + FIXED_HDR, (size_t)len - FIXED_HDR, "header");
	if (e == 0) {
		digest(d, h, (size_t)len - FP_MASK_DIGEST);
		if (sodium_memcmp(d, h + len - FP_MASK_DIGEST, FP_MASK_DIGEST) != 0)
			e = fp_err_detail(-EINVAL, "%s: header digest mismatch", r->label);
	}
	if (e == 0)
		e = parse_entries(r, h, (size_t)len, fsize);
	if (e == 0) {
		crypto_generichash_init(&r->file_hash, NULL, 0, FP_MASK_DIGEST);
		crypto_generichash_update(&r->file_hash, h, (size_t)len);
	}
	free(h);
	return e;
}

static int reader_open(struct fp_mask_reader *r, struct fp_mask_reader **ret)
{
	int e;

	if (sodium_init() < 0)
		e = fp_err_sodium("sodium_init");
	else
		e = reader_header(r);
	if (e < 0) {
		fp_mask_reader_free(r);
		return e;
	}
	*ret = r;
	return 0;
}

int fp_mask_reader_open(const char *path, struct fp_mask_reader **ret)
{
	struct fp_mask_reader *r = calloc(1, sizeof(*r));

	if (!r || !(r->label = strdup(path))) {
		free(r);
		return fp_err_detail(-ENOMEM, "%s: out of memory", path);
	}
	r->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (r->fd < 0) {
		int e = fp_err_detail(-errno, "%s: %s", path, strerror(errno));

		fp_mask_reader_free(r);
		return e;
	}
	return reader_open(r, ret);
}

int fp_mask_reader_open_mem(const void *data, size_t len, const char *label,
			    struct fp_mask_reader **ret)
{
	struct fp_mask_reader *r = calloc(1, sizeof(*r));

	if (!label)
		label = "mask";
	if (!r || !(r->label = strdup(label))) {
		free(r);
		return fp_err_detail(-ENOMEM, "%s: out of memory", label);
	}
	r->fd = -1;
	r->mem = data;
	r->mem_len = len;
	return reader_open(r, ret);
}

size_t fp_mask_reader_count(const struct fp_mask_reader *r)
{
	return r->count;
}

const struct fp_mask_info *fp_mask_reader_info(const struct fp_mask_reader *r, size_t i)
{
	return i < r->count ? &r->info[i] : NULL;
}

long fp_mask_reader_find(const struct fp_mask_reader *r, const char *name)
{
	for (size_t i = 0; i < r->count; i++)
		if (strcmp(r->info[i].name, name) == 0)
			return (long)i;
	return -ENOENT;
}

/* After the last tensor: the trailer must equal the digest of everything before it. */
static int reader_trailer(struct fp_mask_reader *r)
{
	uint8_t want[FP_MASK_DIGEST], got[FP_MASK_DIGEST];
	int e = src_read(r, want, sizeof(want), "trailer");

	if (e < 0)
		return e;
	crypto_generichash_final(&r->file_hash, got, sizeof(got));
	if (sodium_memcmp(want, got, sizeof(got)) != 0)
		return fp_err_detail(-EINVAL, "%s: file digest mismatch", r->label);
	return 0;
}

int fp_mask_reader_next(struct fp_mask_reader *r, const struct fp_mask_info **ret_info,
			uint8_t *buf, size_t buflen)
{
	const struct fp_mask_info *t;
	uint8_t want[FP_MASK_DIGEST], got[FP_MASK_DIGEST];
	char nb[80];
	int e;

	if (r->err)
		return r->err;
	if (r->next == r->count)
		return 0;
	t = &r->info[r->next];
	safe_name(t->name, nb, sizeof(nb));
	if (buflen < t->nbytes)
		return fp_err_detail(-EINVAL, "%s: tensor '%s': buffer of %zu bytes, need %" PRIu64,
				     r->label, nb, buflen, t->nbytes);
	e = src_read(r, buf, (size_t)t->nbytes, "tensor data");
	if (e == 0)
		e = src_read(r, want, sizeof(want), "tensor digest");
	if (e == 0) {
		digest(got, buf, (size_t)t->nbytes);
		if (sodium_memcmp(want, got, sizeof(got)) != 0)
			e = fp_err_detail(-EINVAL, "%s: tensor '%s': digest mismatch", r->label,
					  nb);
		else if (!padding_clear(buf, t->nbits))
			e = fp_err_detail(-EINVAL, "%s: tensor '%s': padding bits set", r->label,
					  nb);
	}
	if (e == 0) {
		crypto_generichash_update(&r->file_hash, buf, (size_t)t->nbytes);
		crypto_generichash_update(&r->file_hash, want, sizeof(want));
		if (++r->next == r->count)
			e = reader_trailer(r);
	}
	if (e < 0)
		return r->err = e;
	if (ret_info)
		*ret_info = t;
	return 1;
}

void fp_mask_reader_free(struct fp_mask_reader *r)
{
	if (!r)
		return;
	if (r->fd >= 0)
		close(r->fd);
	free(r->info);
	free(r->names);
	free(r->label);
	free(r);
}

/* ---- whole file ---- */

void fp_mask_set_free(struct fp_mask_set *s)
{
	if (!s)
		return;
	for (size_t i = 0; s->bits && i < s->count; i++) {
		free(s->bits[i]);
		free((char *)s->info[i].name);
	}
	free(s->bits);
	free(s->info);
	free(s);
}

int fp_mask_set_load(const char *path, struct fp_mask_set **ret)
{
	struct fp_mask_reader *r = NULL;
	struct fp_mask_set *s = NULL;
	int e;

	e = fp_mask_reader_open(path, &r);
	if (e < 0)
		return e;
	s = calloc(1, sizeof(*s));
	if (s) {
		s->info = fp_callocarray(r->count, sizeof(*s->info));
		s->bits = fp_callocarray(r->count, sizeof(*s->bits));
	}
	if (!s || !s->info || !s->bits) {
		e = fp_err_detail(-ENOMEM, "%s: out of memory", path);
		goto out;
	}
	s->count = r->count;
	for (size_t i = 0; i < r->count; i++) {
		s->info[i] = r->info[i];
		s->info[i].name = strdup(r->info[i].name);
		s->bits[i] = malloc(r->info[i].nbytes);
		if (!s->info[i].name || !s->bits[i]) {
			e = fp_err_detail(-ENOMEM, "%s: out of memory", path);
			goto out;
		}
		e = fp_mask_reader_next(r, NULL, s->bits[i], (size_t)r->info[i].nbytes);
		if (e < 0)
			goto out;
	}
	e = fp_mask_reader_next(r, NULL, NULL, 0);
out:
	fp_mask_reader_free(r);
	if (e < 0) {
		fp_mask_set_free(s);
		return e;
	}
	*ret = s;
	return 0;
}
