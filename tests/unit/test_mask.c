/*
 * Bit-packed masks and the mask file: popcount, per-row/column counts, N:M check, apply and
 * compare against one-bit-at-a-time references; the writer's output against an independent
 * encoder of the format in mask.h (byte for byte); round trips; writer misuse; and hostile
 * files (each asserting -EINVAL and that the message names the file and, where there is one,
 * the tensor).
 */
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "mask.h"

/* ---- bit helpers ---- */

static void rand_mask(uint8_t *m, size_t nbits, uint64_t *rng, unsigned density)
{
	memset(m, 0, fp_mask_bytes(nbits));
	for (size_t p = 0; p < nbits; p++)
		if (fp_test_rand(rng) % 100 < density)
			fp_mask_put(m, p, true);
}

static void test_counts(void **state)
{
	static const size_t sizes[] = { 0, 1, 7, 8, 9, 63, 64, 65, 127, 1000, 4099 };
	uint8_t a[600], b[600];
	uint64_t rng = 3;

	(void)state;
	for (size_t s = 0; s < sizeof(sizes) / sizeof(*sizes); s++) {
		for (unsigned d = 0; d <= 100; d += 25) {
			size_t n = sizes[s];
			struct fp_mask_cmp c;
			uint64_t both = 0, either = 0, pa = 0, pb = 0;

			rand_mask(a, n, &rng, d);
			rand_mask(b, n, &rng, 50);
			assert_int_equal(fp_mask_count(a, n), fp_mask_count_naive(a, n));
			for (size_t p = 0; p < n; p++) {
				bool x = fp_mask_get(a, p), y = fp_mask_get(b, p);

				pa += x;
				pb += y;
				both += x && y;
				either += x || y;
			}
			assert_int_equal(fp_mask_count(a, n), pa);
			fp_mask_compare(a, b, n, &c);
			assert_int_equal(c.nbits, n);
			assert_int_equal(c.pruned_a, pa);
			assert_int_equal(c.pruned_b, pb);
			assert_int_equal(c.both, both);
			assert_int_equal(c.either, either);
			assert_int_equal(c.hamming, either - both);
			assert_float_equal(c.jaccard, either ? (double)both / either : 1.0, 1e-15);
		}
	}
	/* bits past nbits are ignored by counts */
	memset(a, 0xff, 2);
	assert_int_equal(fp_mask_count(a, 9), 9);
	assert_int_equal(fp_mask_count_naive(a, 9), 9);
}

static void test_rows_cols_nm_apply(void **state)
{
	const size_t rows = 13, cols = 24;
	uint8_t m[39]; /* 312 bits */
	uint64_t per_row[13], per_col[24], rng = 8;
	float w[13 * 24];

	(void)state;
	rand_mask(m, rows * cols, &rng, 40);
	fp_mask_count_rows(m, rows, cols, per_row);
	fp_mask_count_cols(m, rows, cols, per_col);
	for (size_t i = 0; i < rows; i++) {
		uint64_t c = 0;

		for (size_t j = 0; j < cols; j++)
			c += fp_mask_get(m, i * cols + j);
		assert_int_equal(per_row[i], c);
	}
	for (size_t j = 0; j < cols; j++) {
		uint64_t c = 0;

		for (size_t i = 0; i < rows; i++)
			c += fp_mask_get(m, i * cols + j);
		assert_int_equal(per_col[j], c);
	}
	for (size_t p = 0; p < rows * cols; p++)
		w[p] = (float)p + 1.0f;
	fp_mask_apply(w, m, rows, cols);
	for (size_t p = 0; p < rows * cols; p++)
		assert_true(w[p] == (fp_mask_get(m, p) ? 0.0f : (float)p + 1.0f));

	/* 2:4 everywhere, then break one group */
	memset(m, 0, sizeof(m));
	for (size_t p = 0; p < rows * cols; p += 4) {
		fp_mask_put(m, p + 1, true);
		fp_mask_put(m, p + 3, true);
	}
	assert_int_equal(fp_mask_check_nm(m, rows, cols, 2, 4), 0);
	assert_int_equal(fp_mask_check_nm(m, rows, cols, 4, 8), 0);
	assert_int_equal(fp_mask_check_nm(m, rows, cols, 1, 4), -EDOM);
	fp_mask_put(m, 5 * cols + 8, true);
	assert_int_equal(fp_mask_check_nm(m, rows, cols, 2, 4), -EDOM);
	assert_non_null(strstr(fp_err_last(), "row 5, columns 8..11"));
	assert_int_equal(fp_mask_check_nm(m, rows, cols, 2, 5), -EINVAL);
	assert_int_equal(fp_mask_check_nm(m, rows, cols, 5, 4), -EINVAL);
	assert_int_equal(fp_mask_check_nm(m, rows, cols, 0, 0), -EINVAL);
}

/* ---- an independent encoder of the file format ---- */

struct ent {
	const char *name;
	uint32_t name_len; /* 0: strlen(name) */
	uint32_t ndim;
	uint64_t dims[10];
	uint64_t nbytes; /* 0: from the dims */
	const uint8_t *data;
	size_t data_len; /* 0: nbytes */
};

struct fhdr {
	const char *magic; /* 8 bytes; NULL: the real one */
	uint32_t version;
	uint32_t flags;
	uint64_t count; /* 0: number of entries */
	uint64_t hlen;	/* 0: the real header length */
	size_t stray;	/* zero bytes between the last entry and the header digest */
};

static const uint8_t real_magic[8] = { 0x89, 'F', 'P', 'M', 'A', 'S', 'K', '\n' };

static uint8_t *put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		*p++ = (uint8_t)(v >> (8 * i));
	return p;
}

static uint8_t *put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		*p++ = (uint8_t)(v >> (8 * i));
	return p;
}

static uint64_t ent_nbytes(const struct ent *e)
{
	uint64_t n = 1;

	if (e->nbytes)
		return e->nbytes;
	for (uint32_t d = 0; d < e->ndim; d++)
		n *= e->dims[d];
	return (n + 7) / 8;
}

/* Encode into buf (large enough); returns the length. All digests are correct. */
static size_t encode(uint8_t *buf, const struct fhdr *h, const struct ent *e, size_t n)
{
	uint8_t *p = buf + 32;
	size_t hlen;

	for (size_t i = 0; i < n; i++) {
		uint32_t nl = e[i].name_len ? e[i].name_len : (uint32_t)strlen(e[i].name);

		p = put32(p, nl);
		memcpy(p, e[i].name, nl);
		p += nl;
		p = put32(p, e[i].ndim);
		for (uint32_t d = 0; d < e[i].ndim; d++)
			p = put64(p, e[i].dims[d]);
		p = put64(p, ent_nbytes(&e[i]));
	}
	memset(p, 0, h->stray);
	p += h->stray;
	hlen = (size_t)(p - buf) + 32;
	memcpy(buf, h->magic ? (const uint8_t *)h->magic : real_magic, 8);
	put32(buf + 8, h->version ? h->version : 1);
	put32(buf + 12, h->flags);
	put64(buf + 16, h->count ? h->count : n);
	put64(buf + 24, h->hlen ? h->hlen : hlen);
	crypto_generichash(p, 32, buf, (size_t)(p - buf), NULL, 0);
	p += 32;
	for (size_t i = 0; i < n; i++) {
		size_t len = e[i].data_len ? e[i].data_len : (size_t)ent_nbytes(&e[i]);

		memcpy(p, e[i].data, len);
		crypto_generichash(p + len, 32, p, len, NULL, 0);
		p += len + 32;
	}
	crypto_generichash(p, 32, buf, (size_t)(p - buf), NULL, 0);
	return (size_t)(p - buf) + 32;
}

/* Recompute the trailer after editing the body. */
static void fix_trailer(uint8_t *buf, size_t len)
{
	crypto_generichash(buf + len - 32, 32, buf, len - 32, NULL, 0);
}

static uint8_t d_q[2] = { 0xa5, 0x5a }; /* 15 bits: bit 15 must stay 0 */
static uint8_t d_k[1] = { 0x01 };
static uint8_t d_down[264];

/* The three tensors of the test file. */
static void std_ents(struct ent *e)
{
	for (size_t i = 0; i < sizeof(d_down); i++)
		d_down[i] = (uint8_t)(i * 37 + 11);
	e[0] = (struct ent){ .name = "layers.0.q", .ndim = 2, .dims = { 3, 5 }, .data = d_q };
	e[1] = (struct ent){ .name = "layers.0.k", .ndim = 1, .dims = { 1 }, .data = d_k };
	e[2] = (struct ent){
		.name = "layers.1.down", .ndim = 2, .dims = { 64, 33 }, .data = d_down
	};
}

/* Open an image and read every tensor; returns the first error (or 0). */
static int read_all(const uint8_t *img, size_t len)
{
	struct fp_mask_reader *r = NULL;
	uint8_t buf[4096];
	int e;

	fp_err_clear();
	e = fp_mask_reader_open_mem(img, len, "hostile.mask", &r);
	while (e == 0) {
		e = fp_mask_reader_next(r, NULL, buf, sizeof(buf));
		if (e == 0)
			break;
		e = e > 0 ? 0 : e;
	}
	fp_mask_reader_free(r);
	return e;
}

static void expect_refused(const uint8_t *img, size_t len, const char *what, const char *tensor)
{
	int e = read_all(img, len);

	if (e != -EINVAL)
		fail_msg("%s: got %d (%s), want -EINVAL", what, e, fp_err_last());
	if (!strstr(fp_err_last(), "hostile.mask") || !strstr(fp_err_last(), what))
		fail_msg("message '%s' lacks the file or '%s'", fp_err_last(), what);
	if (tensor && !strstr(fp_err_last(), tensor))
		fail_msg("message '%s' does not name tensor %s", fp_err_last(), tensor);
}

static void test_writer_matches_encoder(void **state)
{
	struct ent e[3];
	struct fhdr h = { 0 };
	static uint8_t img[8192], file[8192];
	struct fp_mask_info decl[3];
	struct fp_mask_writer *w = NULL;
	char *dir = fp_test_mkdtemp(), *path = NULL;
	size_t len;
	FILE *f;

	(void)state;
	std_ents(e);
	len = encode(img, &h, e, 3);
	for (int i = 0; i < 3; i++) {
		decl[i] = (struct fp_mask_info){ .name = e[i].name, .ndim = e[i].ndim };
		memcpy(decl[i].dims, e[i].dims, sizeof(decl[i].dims[0]) * e[i].ndim);
	}
	assert_true(asprintf(&path, "%s/m.fpmask", dir) > 0);
	assert_int_equal(fp_mask_writer_open(path, decl, 3, &w), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(fp_mask_writer_add(w, e[i].data, (size_t)ent_nbytes(&e[i])), 0);
	assert_int_equal(fp_mask_writer_close(w), 0);
	f = fopen(path, "rb");
	assert_non_null(f);
	assert_int_equal(fread(file, 1, sizeof(file), f), len);
	fclose(f);
	assert_memory_equal(file, img, len);
	assert_int_equal(read_all(img, len), 0);

	/* round trip through the reader and the whole-file loader */
	struct fp_mask_reader *r = NULL;
	const struct fp_mask_info *info;
	uint8_t buf[300], d[32];

	assert_int_equal(fp_mask_reader_open(path, &r), 0);
	assert_int_equal(fp_mask_reader_count(r), 3);
	assert_int_equal(fp_mask_reader_find(r, "layers.1.down"), 2);
	assert_int_equal(fp_mask_reader_find(r, "nope"), -ENOENT);
	assert_null(fp_mask_reader_info(r, 3));
	info = fp_mask_reader_info(r, 0);
	assert_string_equal(info->name, "layers.0.q");
	assert_int_equal(info->nbits, 15);
	assert_int_equal(info->nbytes, 2);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(fp_mask_reader_next(r, &info, buf, sizeof(buf)), 1);
		assert_string_equal(info->name, e[i].name);
		assert_int_equal(info->ndim, e[i].ndim);
		assert_int_equal(info->dims[0], e[i].dims[0]);
		assert_memory_equal(buf, e[i].data, info->nbytes);
		/* the recorded offset points at the bits, followed by their digest */
		assert_memory_equal(file + info->offset, e[i].data, info->nbytes);
		crypto_generichash(d, 32, e[i].data, info->nbytes, NULL, 0);
		assert_memory_equal(file + info->offset + info->nbytes, d, 32);
	}
	assert_int_equal(fp_mask_reader_next(r, &info, buf, sizeof(buf)), 0);
	fp_mask_reader_free(r);

	struct fp_mask_set *s = NULL;

	assert_int_equal(fp_mask_set_load(path, &s), 0);
	assert_int_equal(s->count, 3);
	assert_string_equal(s->info[2].name, "layers.1.down");
	assert_int_equal(s->info[2].nbits, 64 * 33);
	assert_memory_equal(s->bits[2], d_down, sizeof(d_down));
	fp_mask_set_free(s);

	/* add_verified: the right digest writes the same file, a wrong one is refused */
	{
		char *p2 = NULL;
		uint8_t good[32], bad[32];

		assert_true(asprintf(&p2, "%s/v.fpmask", dir) > 0);
		assert_int_equal(fp_mask_writer_open(p2, decl, 3, &w), 0);
		for (int i = 0; i < 3; i++) {
			crypto_generichash(good, 32, e[i].data, (size_t)ent_nbytes(&e[i]), NULL, 0);
			assert_int_equal(fp_mask_writer_add_verified(
						 w, e[i].data, (size_t)ent_nbytes(&e[i]), good),
					 0);
		}
		assert_int_equal(fp_mask_writer_close(w), 0);
		f = fopen(p2, "rb");
		assert_non_null(f);
		assert_int_equal(fread(buf, 1, sizeof(buf), f),
				 len < sizeof(buf) ? len : sizeof(buf));
		fclose(f);
		assert_memory_equal(buf, img, len < sizeof(buf) ? len : sizeof(buf));
		assert_int_equal(fp_mask_writer_open(p2, decl, 3, &w), 0);
		crypto_generichash(bad, 32, e[0].data, (size_t)ent_nbytes(&e[0]), NULL, 0);
		bad[5] ^= 1;
		assert_int_equal(
			fp_mask_writer_add_verified(w, e[0].data, (size_t)ent_nbytes(&e[0]), bad),
			-EBADMSG);
		assert_non_null(strstr(fp_err_last(), "do not match their expected digest"));
		fp_mask_writer_abort(w);
		free(p2);
	}

	/* a buffer too small is refused without consuming the tensor */
	assert_int_equal(fp_mask_reader_open(path, &r), 0);
	assert_int_equal(fp_mask_reader_next(r, NULL, buf, 1), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "layers.0.q"));
	assert_int_equal(fp_mask_reader_next(r, NULL, buf, sizeof(buf)), 1);
	fp_mask_reader_free(r);

	/* a file on disk names its path in errors */
	img[len - 1] ^= 1;
	free(path);
	path = fp_test_write_file(dir, "bad.fpmask", img, len);
	s = NULL;
	assert_int_equal(fp_mask_set_load(path, &s), -EINVAL);
	assert_null(s);
	assert_non_null(strstr(fp_err_last(), path));
	assert_non_null(strstr(fp_err_last(), "file digest mismatch"));
	free(path);
	assert_true(asprintf(&path, "%s/missing.fpmask", dir) > 0);
	assert_int_equal(fp_mask_reader_open(path, &r), -ENOENT);
	assert_int_equal(fp_mask_reader_open(dir, &r), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "not a regular file"));
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

/* Files left in dir besides `keep` (temporary files must not survive). */
static int count_files(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

static void test_writer_misuse(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = NULL;
	struct fp_mask_info decl[2] = { { .name = "a", .ndim = 2, .dims = { 2, 5 } },
					{ .name = "b", .ndim = 1, .dims = { 8 } } };
	struct fp_mask_writer *w = NULL;
	uint8_t bits[2] = { 0xff, 0x07 };
	struct stat st;

	(void)state;
	assert_true(asprintf(&path, "%s/out.fpmask", dir) > 0);
	/* bad declarations: nothing is created */
	decl[1].name = "a";
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "duplicate name"));
	decl[1].name = "b";
	decl[1].ndim = 0;
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), -EINVAL);
	decl[1].ndim = 9;
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), -EINVAL);
	decl[1].ndim = 1;
	decl[1].dims[0] = 0;
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), -EINVAL);
	decl[1].dims[0] = 8;
	decl[1].name = "";
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), -EINVAL);
	decl[1].name = "b";
	assert_int_equal(fp_mask_writer_open(path, decl, 0, &w), -EINVAL);
	assert_int_equal(count_files(dir), 0);

	/* wrong size, padding bits set, a tensor missing at close */
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), 0);
	assert_int_equal(fp_mask_writer_add(w, bits, 1), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "tensor 'a'"));
	fp_mask_writer_abort(w);
	assert_int_equal(count_files(dir), 0);
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), 0);
	assert_int_equal(fp_mask_writer_add(w, bits, 2), -EINVAL); /* 10 bits: 0x07 sets bit 10 */
	assert_non_null(strstr(fp_err_last(), "padding"));
	assert_int_equal(fp_mask_writer_close(w), -EINVAL);
	assert_int_equal(count_files(dir), 0);
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), 0);
	bits[1] = 0x02;
	assert_int_equal(fp_mask_writer_add(w, bits, 2), 0);
	assert_int_equal(fp_mask_writer_close(w), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "1 of 2"));
	assert_int_equal(stat(path, &st), -1);
	assert_int_equal(count_files(dir), 0);
	/* complete: the file appears; adding a third tensor is refused */
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), 0);
	assert_int_equal(fp_mask_writer_add(w, bits, 2), 0);
	assert_int_equal(fp_mask_writer_add(w, bits, 1), 0);
	assert_int_equal(fp_mask_writer_add(w, bits, 1), -EINVAL);
	fp_mask_writer_abort(w);
	assert_int_equal(count_files(dir), 0);
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), 0);
	assert_int_equal(fp_mask_writer_add(w, bits, 2), 0);
	assert_int_equal(fp_mask_writer_add(w, bits, 1), 0);
	assert_int_equal(fp_mask_writer_close(w), 0);
	assert_int_equal(count_files(dir), 1);
	fp_mask_writer_abort(NULL);
	free(path);
	assert_true(asprintf(&path, "%s/no/such/dir.fpmask", dir) > 0);
	assert_int_equal(fp_mask_writer_open(path, decl, 2, &w), -ENOENT);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_hostile(void **state)
{
	static uint8_t img[16384];
	struct ent e[4];
	struct fhdr h;
	size_t len, hdr_len;

	(void)state;
#define RESET()                           \
	do {                              \
		std_ents(e);              \
		memset(&h, 0, sizeof(h)); \
	} while (0)

	RESET();
	len = encode(img, &h, e, 3);
	assert_int_equal(read_all(img, len), 0);
	hdr_len = 32 + (4 + 10 + 4 + 16 + 8) + (4 + 10 + 4 + 8 + 8) + (4 + 13 + 4 + 16 + 8) + 32;

	h.magic = "FPMASK\n\0";
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "bad magic", NULL);
	RESET();
	h.version = 2;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "version 2", NULL);
	RESET();
	h.flags = 4;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "unknown flags", NULL);
	RESET();
	len = encode(img, &h, e, 3);
	expect_refused(img, 20, "truncated header", NULL);
	expect_refused(img, 0, "truncated header", NULL);
	expect_refused(img, hdr_len - 1, "beyond the end", NULL);
	expect_refused(img, len - 40, "implies", NULL); /* truncated body */
	img[len] = 0;
	expect_refused(img, len + 1, "implies", NULL); /* trailing junk */

	/* the header digest covers names, shapes and lengths */
	img[32 + 4] ^= 0x20;
	expect_refused(img, len, "header digest mismatch", NULL);
	img[32 + 4] ^= 0x20;
	/* a tensor digest (body edited, trailer recomputed) */
	img[hdr_len + 2 + 32 + 1 + 32 + 100] ^= 1;
	fix_trailer(img, len);
	expect_refused(img, len, "digest mismatch", "layers.1.down");
	img[hdr_len + 2 + 32 + 1 + 32 + 100] ^= 1;
	fix_trailer(img, len);
	assert_int_equal(read_all(img, len), 0);
	/* the file digest */
	img[len - 5] ^= 0x80;
	expect_refused(img, len, "file digest mismatch", NULL);

	/* lying headers with valid digests */
	RESET();
	e[2].dims[0] = 1ull << 40;
	e[2].dims[1] = 1ull << 40;
	e[2].nbytes = 1;
	e[2].data_len = 1;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "shape overflows", "layers.1.down");
	RESET();
	e[0].nbytes = 3;
	e[0].data_len = 2;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "byte length 3", "layers.0.q");
	RESET();
	e[2].dims[1] = 1ull << 30; /* consistent lengths, but far more than the file holds */
	e[2].nbytes = (64ull << 30) / 8;
	e[2].data_len = 264;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "implies", NULL);
	RESET();
	e[1].name = "layers.0.q";
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "duplicate name", "layers.0.q");
	RESET();
	h.count = 1ull << 40;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "1099511627776 tensors", NULL);
	RESET();
	h.count = 4;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "header too short", NULL);
	RESET();
	h.count = 2; /* the third entry becomes stray header bytes */
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "stray bytes", NULL);
	RESET();
	h.stray = 3;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "3 stray bytes", NULL);
	RESET();
	h.hlen = (uint64_t)1 << 40;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "header length", NULL);
	RESET();
	h.hlen = 40;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "impossible", NULL);
	RESET();
	e[0].name = "";
	e[0].name_len = 0;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "name length 0", NULL);
	RESET();
	{
		static char big[2000];

		memset(big, 'n', sizeof(big) - 1);
		e[0].name = big;
		len = encode(img, &h, e, 3);
		expect_refused(img, len, "name length 1999", NULL);
	}
	RESET();
	e[1].ndim = 0;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "ndim 0", "layers.0.k");
	RESET();
	e[1].ndim = 9;
	for (int d = 0; d < 9; d++)
		e[1].dims[d] = 1;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "ndim 9", "layers.0.k");
	RESET();
	e[0].dims[1] = 0;
	e[0].nbytes = 1;
	e[0].data_len = 1;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "dimension 1 is 0", "layers.0.q");
	RESET();
	e[1].name = "lay\0ers";
	e[1].name_len = 7;
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "NUL", NULL);
	RESET();
	{
		uint8_t pad[2] = { 0xa5, 0xda }; /* bit 15 set */

		e[0].data = pad;
		len = encode(img, &h, e, 3);
		expect_refused(img, len, "padding bits set", "layers.0.q");
	}
	RESET();
	e[1].name = "evil\x1b[31m";
	len = encode(img, &h, e, 3);
	assert_int_equal(read_all(img, len), 0);
	e[2].name = "evil\x1b[31m";
	len = encode(img, &h, e, 3);
	expect_refused(img, len, "duplicate name", "evil?[31m");
	assert_null(strchr(fp_err_last(), 0x1b));
#undef RESET
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counts),
		cmocka_unit_test(test_rows_cols_nm_apply),
		cmocka_unit_test(test_writer_matches_encoder),
		cmocka_unit_test(test_writer_misuse),
		cmocka_unit_test(test_hostile),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
