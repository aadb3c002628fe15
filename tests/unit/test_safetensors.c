/*
 * safetensors reader, writer and model directories: write-then-read round trips, a fixture
 * written by tests/numeric/st_reference.py, a table of hostile files (error code and message
 * naming file and tensor), hostile sharded directories, and the F16 conversion paths.
 */
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dtype.h"
#include "err.h"
#include "safetensors.h"

/* ---------------------------------------------------------------------------------------- */
/* helpers */

static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

static char *join(const char *dir, const char *name)
{
	char *p = NULL;

	assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
	return p;
}

static bool exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* The error detail must contain every non-NULL needle. */
static void assert_detail(const char *a, const char *b, const char *c)
{
	const char *msg = fp_err_last();
	const char *needles[] = { a, b, c };

	for (int i = 0; i < 3; i++)
		if (needles[i] && !strstr(msg, needles[i]))
			fail_msg("detail '%s' lacks '%s'", msg, needles[i]);
}

static void decl(struct fp_st_decl *d, const char *name, enum fp_dtype dt, unsigned ndim,
		 uint64_t d0, uint64_t d1)
{
	memset(d, 0, sizeof(*d));
	d->name = name;
	d->dtype = dt;
	d->ndim = ndim;
	d->shape[0] = d0;
	d->shape[1] = d1;
}

/* Write a file of F32 tensors named names[i] with n[i] elements valued base[i] + k. */
static void write_f32_file(const char *path, const char *const *names, const uint64_t *n,
			   const float *base, size_t count)
{
	struct fp_st_decl d[8];
	struct fp_st_writer *w = NULL;

	assert_true(count <= 8);
	for (size_t i = 0; i < count; i++)
		decl(&d[i], names[i], FP_DT_F32, 1, n[i], 0);
	assert_int_equal(fp_st_writer_open(path, d, count, NULL, &w), 0);
	for (size_t i = 0; i < count; i++) {
		for (uint64_t k = 0; k < n[i]; k++) {
			float v = base[i] + (float)k;

			assert_int_equal(fp_st_writer_write(w, &v, sizeof(v)), 0);
		}
	}
	assert_int_equal(fp_st_writer_close(w), 0);
}

/* A safetensors image: u64 LE hlen, the header text, dlen data bytes (value i & 0xff). */
static uint8_t *image(const char *json, uint64_t hlen, size_t dlen, size_t *ret_len)
{
	size_t jl = strlen(json), len = 8 + jl + dlen;
	uint8_t *buf = malloc(len ? len : 1);

	assert_non_null(buf);
	for (int i = 0; i < 8; i++)
		buf[i] = (uint8_t)(hlen >> (8 * i));
	memcpy(buf + 8, json, jl);
	for (size_t i = 0; i < dlen; i++)
		buf[8 + jl + i] = (uint8_t)i;
	*ret_len = len;
	return buf;
}

/* ---------------------------------------------------------------------------------------- */
/* writer + reader round trip */

static const char *const meta[] = { "format", "pt", "note", "line1\nline2 \"q\" \\", NULL };

static void test_write_read(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = join(dir, "m.safetensors");
	static const char odd_name[] = "q\"uote\\d\n\x01";
	struct fp_st_decl d[7];
	struct fp_st_writer *w = NULL;
	struct fp_st_file *f = NULL;
	const struct fp_st_tensor *t;
	float f32[6] = { 1.5f, -2.0f, 0.0f, 3e-5f, -0.0f, 1e20f }, scalar = 42.5f, got[6];
	float f16v[5] = { 1.0f, -0.5f, 65504.0f, ldexpf(1.0f, -24), 0.0f };
	float bf16v[4] = { 1.0f, -3.0f, 1e30f, 0.0f };
	uint16_t h16[5], hb[4];
	int32_t ids[3] = { 7, -1, 123456 };
	uint8_t u8[3] = { 1, 2, 255 };
	const char *v;

	for (int i = 0; i < 5; i++)
		h16[i] = fp_f32_to_f16(f16v[i]);
	for (int i = 0; i < 4; i++)
		hb[i] = fp_f32_to_bf16(bf16v[i]);
	decl(&d[0], "w.f32", FP_DT_F32, 2, 2, 3);
	decl(&d[1], "h.f16", FP_DT_F16, 1, 5, 0);
	decl(&d[2], "b.bf16", FP_DT_BF16, 2, 2, 2);
	decl(&d[3], "scalar", FP_DT_F32, 0, 0, 0);
	decl(&d[4], "empty", FP_DT_F32, 2, 0, 5);
	decl(&d[5], "ids", FP_DT_I32, 1, 3, 0);
	decl(&d[6], odd_name, FP_DT_U8, 1, 3, 0);
	assert_int_equal(fp_st_writer_open(path, d, 7, meta, &w), 0);
	assert_false(exists(path)); /* only the temporary exists until close */
	assert_int_equal(count_entries(dir), 1);
	for (size_t i = 0; i < sizeof(f32); i++) /* byte by byte through the buffer */
		assert_int_equal(fp_st_writer_write(w, (const uint8_t *)f32 + i, 1), 0);
	assert_int_equal(fp_st_writer_write(w, h16, sizeof(h16)), 0);
	assert_int_equal(fp_st_writer_write(w, hb, sizeof(hb)), 0);
	assert_int_equal(fp_st_writer_write(w, &scalar, sizeof(scalar)), 0);
	assert_int_equal(fp_st_writer_write(w, NULL, 0), 0); /* the empty tensor */
	assert_int_equal(fp_st_writer_write(w, ids, sizeof(ids)), 0);
	assert_int_equal(fp_st_writer_write(w, u8, sizeof(u8)), 0);
	assert_int_equal(fp_st_writer_close(w), 0);
	assert_int_equal(count_entries(dir), 1); /* no temporary left */

	assert_int_equal(fp_st_open(path, &f), 0);
	assert_string_equal(fp_st_path(f), path);
	assert_int_equal(fp_st_count(f), 7);
	for (size_t i = 0; i < 7; i++) { /* offset order == declared order */
		t = fp_st_at(f, i);
		assert_string_equal(t->name, d[i].name);
		assert_int_equal(t->dtype, d[i].dtype);
		assert_int_equal(t->ndim, d[i].ndim);
		for (unsigned k = 0; k < t->ndim; k++)
			assert_int_equal(t->shape[k], d[i].shape[k]);
		assert_ptr_equal(fp_st_find(f, t->name), t);
		assert_ptr_equal(t->file, f);
	}
	assert_null(fp_st_at(f, 7));
	assert_null(fp_st_find(f, "nope"));

	t = fp_st_find(f, "w.f32");
	assert_int_equal(t->numel, 6);
	assert_int_equal(t->nbytes, 24);
	assert_memory_equal(t->data, f32, sizeof(f32));
	assert_int_equal(fp_st_to_f32(t, got), 0);
	assert_memory_equal(got, f32, sizeof(f32));

	t = fp_st_find(f, "h.f16");
	assert_int_equal(fp_st_to_f32(t, got), 0);
	assert_memory_equal(got, f16v, sizeof(f16v)); /* all exactly representable */

	t = fp_st_find(f, "b.bf16");
	assert_int_equal(fp_st_to_f32(t, got), 0);
	assert_true(got[0] == 1.0f && got[1] == -3.0f && got[3] == 0.0f);
	assert_true(got[2] == fp_bf16_to_f32(0x714a)); /* 1e30 rounded to nearest */

	t = fp_st_find(f, "scalar");
	assert_int_equal(t->ndim, 0);
	assert_int_equal(t->numel, 1);
	assert_int_equal(fp_st_to_f32(t, got), 0);
	assert_true(got[0] == 42.5f);

	t = fp_st_find(f, "empty");
	assert_int_equal(t->numel, 0);
	assert_int_equal(t->nbytes, 0);
	assert_int_equal(fp_st_to_f32(t, got), 0);

	t = fp_st_find(f, "ids");
	assert_memory_equal(t->data, ids, sizeof(ids));
	fp_err_clear();
	assert_int_equal(fp_st_to_f32(t, got), -ENOTSUP);
	assert_detail(path, "tensor 'ids'", "I32");
	assert_memory_equal(fp_st_find(f, odd_name)->data, u8, sizeof(u8));

	assert_int_equal(fp_st_metadata_count(f), 2);
	assert_string_equal(fp_st_metadata(f, "format"), "pt");
	assert_string_equal(fp_st_metadata(f, "note"), meta[3]);
	assert_null(fp_st_metadata(f, "nope"));
	assert_string_equal(fp_st_metadata_at(f, 0, &v), "format"); /* key order */
	assert_string_equal(v, "pt");
	assert_null(fp_st_metadata_at(f, 2, &v));

	for (size_t i = 0; i < fp_st_count(f); i++) /* drop the pages; data must fault back */
		fp_st_release(fp_st_at(f, i));
	assert_memory_equal(fp_st_find(f, "w.f32")->data, f32, sizeof(f32));
	assert_memory_equal(fp_st_find(f, "ids")->data, ids, sizeof(ids));
	fp_st_close(f);
	fp_st_close(NULL);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

/* The exact header bytes: metadata first, declared order, contiguous offsets, space padding. */
static void test_writer_header_layout(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = join(dir, "h.safetensors");
	static const char want[] =
		"{\"__metadata__\":{\"k\":\"v\"},"
		"\"z\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0,6]},"
		"\"a\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[6,14]}}";
	static const char *const kv[] = { "k", "v", NULL };
	struct fp_st_decl d[2];
	struct fp_st_writer *w = NULL;
	uint8_t data[14] = { 0 }, buf[256];
	uint64_t hlen = 0;
	size_t len;
	FILE *fp;

	decl(&d[0], "z", FP_DT_BF16, 1, 3, 0);
	decl(&d[1], "a", FP_DT_I64, 0, 0, 0);
	assert_int_equal(fp_st_writer_open(path, d, 2, kv, &w), 0);
	assert_int_equal(fp_st_writer_write(w, data, sizeof(data)), 0);
	assert_int_equal(fp_st_writer_close(w), 0);
	fp = fopen(path, "rb");
	assert_non_null(fp);
	len = fread(buf, 1, sizeof(buf), fp);
	fclose(fp);
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | buf[i];
	assert_int_equal(hlen % 8, 0);
	assert_int_equal(len, 8 + hlen + sizeof(data));
	assert_true(hlen >= strlen(want) && hlen < strlen(want) + 8);
	assert_memory_equal(buf + 8, want, strlen(want));
	for (size_t i = strlen(want); i < hlen; i++)
		assert_int_equal(buf[8 + i], ' ');
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

/* A tensor larger than the writer's buffer, written in pieces that straddle it. */
static void test_write_large(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = join(dir, "big.safetensors");
	const size_t n = 100000;
	float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
	struct fp_st_writer *w = NULL;
	struct fp_st_file *f = NULL;
	struct fp_st_decl d;
	uint64_t rng = 1;
	size_t off = 0, piece[] = { 3, 70000, 5, 65536, 1 };

	assert_non_null(x);
	assert_non_null(y);
	for (size_t i = 0; i < n; i++)
		x[i] = (float)(int64_t)(fp_test_rand(&rng) % 2001) - 1000.0f;
	decl(&d, "x", FP_DT_F32, 2, 400, 250);
	assert_int_equal(fp_st_writer_open(path, &d, 1, NULL, &w), 0);
	for (int i = 0; off < n * sizeof(float); i++) {
		size_t k = piece[i % 5];

		if (k > n * sizeof(float) - off)
			k = n * sizeof(float) - off;
		assert_int_equal(fp_st_writer_write(w, (const uint8_t *)x + off, k), 0);
		off += k;
	}
	assert_int_equal(fp_st_writer_close(w), 0);
	assert_int_equal(fp_st_open(path, &f), 0);
	assert_int_equal(fp_st_to_f32(fp_st_find(f, "x"), y), 0);
	assert_memory_equal(x, y, n * sizeof(float));
	fp_st_release(fp_st_find(f, "x"));
	assert_memory_equal(fp_st_find(f, "x")->data, x, n * sizeof(float));
	fp_st_close(f);
	free(x);
	free(y);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_writer_errors(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = join(dir, "e.safetensors");
	char *nodir = join(dir, "missing/e.safetensors");
	static const char *const nokv[] = { "k", NULL };
	static const char *const dupkv[] = { "k", "1", "k", "2", NULL };
	struct fp_st_writer *w = NULL;
	struct fp_st_decl d[2];
	uint8_t buf[16] = { 0 };

	/* more bytes than declared */
	decl(&d[0], "a", FP_DT_F32, 1, 2, 0);
	assert_int_equal(fp_st_writer_open(path, d, 1, NULL, &w), 0);
	assert_int_equal(fp_st_writer_write(w, buf, 4), 0);
	assert_int_equal(fp_st_writer_write(w, buf, 12), -EINVAL);
	assert_detail(path, "declared", NULL);
	assert_int_equal(fp_st_writer_write(w, buf, 1), -EINVAL); /* sticky */
	assert_int_equal(fp_st_writer_close(w), -EINVAL);
	assert_int_equal(count_entries(dir), 0);

	/* fewer bytes than declared */
	assert_int_equal(fp_st_writer_open(path, d, 1, NULL, &w), 0);
	assert_int_equal(fp_st_writer_write(w, buf, 4), 0);
	assert_int_equal(fp_st_writer_close(w), -EINVAL);
	assert_detail(path, "4 of 8", NULL);
	assert_int_equal(count_entries(dir), 0);

	/* abort */
	assert_int_equal(fp_st_writer_open(path, d, 1, NULL, &w), 0);
	assert_int_equal(count_entries(dir), 1);
	fp_st_writer_abort(w);
	fp_st_writer_abort(NULL);
	assert_int_equal(count_entries(dir), 0);

	/* bad declarations create nothing */
	decl(&d[1], "a", FP_DT_F16, 1, 2, 0);
	assert_int_equal(fp_st_writer_open(path, d, 2, NULL, &w), -EINVAL);
	assert_detail(path, "tensor 'a'", "twice");
	decl(&d[1], "__metadata__", FP_DT_F16, 1, 2, 0);
	assert_int_equal(fp_st_writer_open(path, d, 2, NULL, &w), -EINVAL);
	decl(&d[1], "b", FP_DT_COUNT, 1, 2, 0);
	assert_int_equal(fp_st_writer_open(path, d, 2, NULL, &w), -EINVAL);
	decl(&d[1], "b", FP_DT_F32, FP_ST_MAX_DIMS + 1, 2, 0);
	assert_int_equal(fp_st_writer_open(path, d, 2, NULL, &w), -EINVAL);
	decl(&d[1], "b", FP_DT_F32, 3, UINT64_C(1) << 40, UINT64_C(1) << 40);
	d[1].shape[2] = 1u << 20;
	assert_int_equal(fp_st_writer_open(path, d, 2, NULL, &w), -EOVERFLOW);
	assert_detail(path, "tensor 'b'", NULL);
	decl(&d[1], "b", FP_DT_F32, 1, 1, 0);
	assert_int_equal(fp_st_writer_open(path, d, 2, nokv, &w), -EINVAL);
	assert_int_equal(fp_st_writer_open(path, d, 2, dupkv, &w), -EINVAL);
	assert_int_equal(count_entries(dir), 0);
	assert_int_equal(fp_st_writer_open(nodir, d, 2, NULL, &w), -ENOENT);

	/* no tensors at all: "{}" padded to 8 */
	assert_int_equal(fp_st_writer_open(path, NULL, 0, NULL, &w), 0);
	assert_int_equal(fp_st_writer_close(w), 0);
	{
		struct fp_st_file *f = NULL;
		struct stat st;

		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_size, 16);
		assert_int_equal(fp_st_open(path, &f), 0);
		assert_int_equal(fp_st_count(f), 0);
		assert_int_equal(fp_st_metadata_count(f), 0);
		fp_st_close(f);
	}
	free(nodir);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

/* ---------------------------------------------------------------------------------------- */
/* fixture written by tests/numeric/st_reference.py */

static void test_python_fixture(void **state)
{
	char *path = fp_test_data_path("st/ref_py.safetensors");
	static const float want_f32[6] = { 0.0f, -1.5f, 3.25f, 1e-3f, -0.0f, 65504.0f };
	static const float want_f16[6] = { 1.0f, -2.0f, 0.5f, 65504.0f, 0x1p-24f, 0.0f };
	static const uint16_t want_bf16[4] = { 0x3f80, 0xc040, 0x3dcd, 0x714a };
	struct fp_st_file *f = NULL;
	const struct fp_st_tensor *t;
	float got[6];

	assert_int_equal(fp_st_open(path, &f), 0);
	assert_int_equal(fp_st_count(f), 5);
	assert_string_equal(fp_st_metadata(f, "format"), "pt");
	assert_string_equal(fp_st_metadata(f, "writer"), "st_reference.py");

	t = fp_st_at(f, 0);
	assert_string_equal(t->name, "a.f32");
	assert_int_equal(t->ndim, 2);
	assert_int_equal(t->shape[0], 2);
	assert_int_equal(t->shape[1], 3);
	assert_int_equal(fp_st_to_f32(t, got), 0);
	assert_memory_equal(got, want_f32, sizeof(want_f32)); /* bitwise: -0.0 too */

	t = fp_st_at(f, 1);
	assert_string_equal(t->name, "b.f16");
	assert_int_equal(t->dtype, FP_DT_F16);
	assert_int_equal(fp_st_to_f32(t, got), 0);
	assert_memory_equal(got, want_f16, sizeof(want_f16));

	t = fp_st_at(f, 2);
	assert_string_equal(t->name, "c.bf16");
	assert_int_equal(t->dtype, FP_DT_BF16);
	assert_int_equal(fp_st_to_f32(t, got), 0);
	assert_true(got[0] == 1.0f && got[1] == -3.0f);
	assert_true(got[2] == 0.10009765625f); /* 0.1 rounded to bf16 by numpy RNE */
	for (int i = 0; i < 4; i++) {
		assert_int_equal(fp_f32_bits(got[i]), (uint32_t)want_bf16[i] << 16);
		assert_int_equal(fp_f32_to_bf16(i == 2	 ? 0.1f
						: i == 3 ? 1e30f
							 : got[i]),
				 want_bf16[i]); /* our rounding agrees with the Python one */
	}

	t = fp_st_find(f, "d.scalar");
	assert_int_equal(t->ndim, 0);
	assert_int_equal(fp_st_to_f32(t, got), 0);
	assert_true(got[0] == 7.0f);
	t = fp_st_find(f, "e.empty");
	assert_int_equal(t->numel, 0);
	assert_int_equal(t->shape[0], 0);
	assert_int_equal(t->shape[1], 3);
	fp_st_close(f);
	free(path);
}

/* ---------------------------------------------------------------------------------------- */
/* hostile files */

struct hostile {
	const char *what;
	const char *json;   /* '#' becomes a NUL byte */
	uint64_t hlen;	    /* 0: strlen(json) */
	size_t dlen;	    /* data bytes after the header */
	size_t trunc;	    /* nonzero: cut the image to this many bytes */
	const char *tensor; /* the tensor the message must name, NULL: a header error */
	const char *needle; /* also in the message */
};

#define E(dt, shape, off) "{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":" off "}"

static const struct hostile hostile[] = {
	{ "header length > file", "{}", 1000, 0, 0, NULL, "past the end" },
	{ "header length huge", "{}", UINT64_C(1) << 63, 0, 0, NULL, "limit" },
	{ "header length 0", "", 0, 8, 0, NULL, "empty" },
	{ "file shorter than 8 bytes", "{}", 0, 0, 5, NULL, "8-byte" },
	{ "truncated data", "{\"w\":" E("F32", "[2,3]", "[0,24]") "}", 0, 20, 0, "w", "past" },
	{ "overlapping ranges",
	  "{\"a\":" E("F32", "[4]", "[0,16]") ",\"b\":" E("F32", "[4]", "[8,24]") "}", 0, 24, 0,
	  "b", "overlaps tensor 'a'" },
	{ "empty tensor inside another",
	  "{\"a\":" E("F32", "[4]", "[0,16]") ",\"e\":" E("F32", "[0]", "[4,4]") "}", 0, 16, 0, "e",
	  "overlaps" },
	{ "gap-free but out of file",
	  "{\"a\":" E("F32", "[4]", "[0,16]") ",\"b\":" E("F32", "[4]", "[16,32]") "}", 0, 24, 0,
	  "b", "past the data section" },
	{ "shape/offset mismatch", "{\"w\":" E("F32", "[2,3]", "[0,20]") "}", 0, 24, 0, "w",
	  "need 24 bytes" },
	{ "overflowing shape product",
	  "{\"w\":" E("F32", "[4294967296,4294967296,16]", "[0,0]") "}", 0, 0, 0, "w", "overflow" },
	{ "overflowing byte size", "{\"w\":" E("F64", "[4611686018427387904]", "[0,0]") "}", 0, 0,
	  0, "w", "byte size" },
	{ "unknown dtype", "{\"w\":" E("F8", "[1]", "[0,1]") "}", 0, 1, 0, "w",
	  "unknown dtype 'F8'" },
	{ "dtype not a string", "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4,
	  0, "w", "dtype" },
	{ "negative shape", "{\"w\":" E("F32", "[-1]", "[0,4]") "}", 0, 4, 0, "w", "negative" },
	{ "negative zero shape", "{\"w\":" E("F32", "[-0]", "[0,0]") "}", 0, 0, 0, "w",
	  "negative" },
	{ "fractional shape", "{\"w\":" E("F32", "[1.5]", "[0,4]") "}", 0, 4, 0, "w",
	  "shape[0] is not an integer" },
	{ "integral float shape", "{\"w\":" E("F32", "[1.0]", "[0,4]") "}", 0, 4, 0, "w",
	  "not an integer" },
	{ "exponent shape", "{\"w\":" E("F32", "[1,1e0]", "[0,4]") "}", 0, 4, 0, "w", "shape[1]" },
	{ "leading zero", "{\"w\":" E("F32", "[01]", "[0,4]") "}", 0, 4, 0, "w", "leading zero" },
	{ "string shape", "{\"w\":" E("F32", "[\"2\"]", "[0,8]") "}", 0, 8, 0, "w",
	  "not an integer" },
	{ "shape not an array", "{\"w\":" E("F32", "2", "[0,8]") "}", 0, 8, 0, "w",
	  "not an array" },
	{ "too many dims", "{\"w\":" E("U8", "[1,1,1,1,1,1,1,1,1]", "[0,1]") "}", 0, 1, 0, "w",
	  "more than 8" },
	{ "integer above 2^64", "{\"w\":" E("U8", "[18446744073709551616]", "[0,1]") "}", 0, 1, 0,
	  "w", "2^64" },
	{ "offset above 2^53 read exactly", "{\"w\":" E("U8", "[1]", "[0,9007199254740993]") "}", 0,
	  1, 0, "w", "9007199254740993" },
	{ "fractional offset", "{\"w\":" E("U8", "[1]", "[0,1.0]") "}", 0, 1, 0, "w",
	  "data_offsets[1]" },
	{ "begin > end", "{\"w\":" E("U8", "[0]", "[2,1]") "}", 0, 2, 0, "w", "before begin" },
	{ "three offsets", "{\"w\":" E("U8", "[1]", "[0,1,1]") "}", 0, 1, 0, "w", "data_offsets" },
	{ "missing dtype", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, 0, "w",
	  "missing field 'dtype'" },
	{ "missing shape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 0, 4, 0, "w",
	  "'shape'" },
	{ "missing data_offsets", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 0, 4, 0, "w",
	  "'data_offsets'" },
	{ "extra field",
	  "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"align\":64}}", 0, 4, 0,
	  "w", "unknown field 'align'" },
	{ "field twice",
	  "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0,
	  4, 0, "w", "twice" },
	{ "duplicate names",
	  "{\"w\":" E("F32", "[1]", "[0,4]") ",\"w\":" E("F32", "[1]", "[4,8]") "}", 0, 8, 0, "w",
	  "appears twice" },
	{ "entry not an object", "{\"w\":[1,2]}", 0, 0, 0, "w", "not an object" },
	{ "header not an object", "[1,2]", 0, 0, 0, NULL, "not a JSON object" },
	{ "header a string", "\"x\"", 0, 0, 0, NULL, "not a JSON object" },
	{ "metadata value not a string", "{\"__metadata__\":{\"k\":1}}", 0, 0, 0, NULL,
	  "__metadata__ value of 'k'" },
	{ "metadata not an object", "{\"__metadata__\":\"x\"}", 0, 0, 0, NULL, "not an object" },
	{ "metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, 0, 0, NULL, "twice" },
	{ "metadata key twice", "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, 0, 0, NULL,
	  "key 'k'" },
	{ "invalid JSON", "{\"w\":", 0, 0, 0, NULL, "invalid JSON" },
	{ "trailing garbage", "{} x", 0, 0, 0, NULL, "invalid JSON" },
	{ "two objects", "{}{}", 0, 0, 0, NULL, "invalid JSON" },
	{ "NUL inside JSON", "{\"w\":#" E("U8", "[1]", "[0,1]") "}", 0, 1, 0, NULL, "NUL" },
	{ "NUL as padding", "{}#", 0, 0, 0, NULL, "NUL" },
	{ "\\u0000 in a name", "{\"w\\u0000x\":" E("U8", "[1]", "[0,1]") "}", 0, 1, 0, NULL,
	  "\\u0000" },
};

/* Build the image of h: the same bytes go to a file and to fp_st_open_mem. */
static uint8_t *hostile_image(const struct hostile *h, size_t *ret_len)
{
	uint64_t hlen = h->hlen ? h->hlen : strlen(h->json);
	uint8_t *buf = image(h->json, hlen, h->dlen, ret_len);

	for (size_t i = 0; i < strlen(h->json); i++)
		if (buf[8 + i] == '#')
			buf[8 + i] = '\0';
	if (h->trunc)
		*ret_len = h->trunc;
	return buf;
}

static void check_hostile_msg(const struct hostile *h, const char *name)
{
	char tensor[64];

	if (h->tensor)
		snprintf(tensor, sizeof(tensor), "tensor '%s'", h->tensor);
	else
		snprintf(tensor, sizeof(tensor), "header:");
	assert_detail(name, tensor, h->needle);
}

static void test_hostile_files(void **state)
{
	char *dir = fp_test_mkdtemp();

	assert_true(sizeof(hostile) / sizeof(hostile[0]) >= 20);
	for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
		const struct hostile *h = &hostile[i];
		struct fp_st_file *f = NULL;
		char name[32], *path;
		size_t len;
		uint8_t *buf = hostile_image(h, &len);
		int r;

		snprintf(name, sizeof(name), "h%02zu.safetensors", i);
		path = fp_test_write_file(dir, name, buf, len);
		fp_err_clear();
		r = fp_st_open(path, &f);
		print_message("hostile: %s -> %s\n", h->what, fp_err_last());
		if (r != -EBADMSG)
			fail_msg("%s: fp_st_open returned %d, want -EBADMSG", h->what, r);
		assert_null(f);
		check_hostile_msg(h, path);

		fp_err_clear();
		r = fp_st_open_mem(buf, len, "mem-image", &f);
		if (r != -EBADMSG)
			fail_msg("%s: fp_st_open_mem returned %d, want -EBADMSG", h->what, r);
		check_hostile_msg(h, "mem-image");
		free(path);
		free(buf);
	}
	fp_test_rmtree(dir);
	free(dir);
}

/* Odd but valid: padding, whitespace, gaps, trailing bytes, exact big dims of empty tensors. */
static void test_valid_edge_cases(void **state)
{
	const char *json = "\n {\"b\":" E("U8", "[2]", "[6,8]") " , \"a\":" E(
		"U8", "[3]", "[0,3]") ", \"z\":" E("BF16", "[0,9007199254740993]",
						   "[3,3]") "}  \t\r\n   ";
	struct fp_st_file *f = NULL;
	const struct fp_st_tensor *t;
	size_t len;
	uint8_t *buf = image(json, strlen(json), 12, &len);

	assert_int_equal(fp_st_open_mem(buf, len, "edge", &f), 0);
	assert_int_equal(fp_st_count(f), 3);
	assert_string_equal(fp_st_at(f, 0)->name, "a"); /* offset order */
	assert_string_equal(fp_st_at(f, 1)->name, "z");
	assert_string_equal(fp_st_at(f, 2)->name, "b");
	t = fp_st_find(f, "b");
	assert_int_equal(((const uint8_t *)t->data)[0], 6); /* data byte i has value i */
	t = fp_st_find(f, "z");
	assert_int_equal(t->numel, 0);
	assert_true(t->shape[1] == UINT64_C(9007199254740993)); /* not rounded to 2^53 */
	fp_st_release(t);					/* no-op on memory images */
	fp_st_close(f);
	free(buf);

	buf = image("{}", 2, 0, &len);
	assert_int_equal(fp_st_open_mem(buf, len, "empty", &f), 0);
	assert_int_equal(fp_st_count(f), 0);
	assert_null(fp_st_at(f, 0));
	assert_null(fp_st_find(f, "x"));
	fp_st_close(f);
	free(buf);
}

static void test_open_errors(void **state)
{
	char *dir = fp_test_mkdtemp(), *missing = join(dir, "nope.safetensors");
	struct fp_st_file *f = NULL;

	assert_int_equal(fp_st_open(missing, &f), -ENOENT);
	assert_detail(missing, NULL, NULL);
	assert_int_equal(fp_st_open(dir, &f), -EINVAL); /* a directory */
	assert_detail(dir, "regular", NULL);
	free(missing);
	fp_test_rmtree(dir);
	free(dir);
}

/* ---------------------------------------------------------------------------------------- */
/* F16 conversion paths */

static void test_f16_paths(void **state)
{
	const char *json = "{\"h\":{\"dtype\":\"F16\",\"shape\":[65536],"
			   "\"data_offsets\":[0,131072]}}";
	size_t len;
	uint8_t *img = image(json, strlen(json), 131072, &len), *buf = malloc(len + 1);
	float *fast = malloc(65536 * sizeof(float)), *slow = malloc(65536 * sizeof(float));
	struct fp_st_file *f = NULL;
	const struct fp_st_tensor *t;

	assert_non_null(buf);
	assert_non_null(fast);
	assert_non_null(slow);
	for (uint32_t i = 0; i < 65536; i++) { /* every pattern, little-endian */
		img[8 + strlen(json) + 2 * i] = (uint8_t)i;
		img[8 + strlen(json) + 2 * i + 1] = (uint8_t)(i >> 8);
	}
	memcpy(buf + 1, img, len); /* odd address: the data is misaligned */
	assert_int_equal(fp_st_open_mem(buf + 1, len, "f16", &f), 0);
	t = fp_st_find(f, "h");
	assert_int_equal(fp_st_to_f32(t, fast), 0);
	for (uint32_t i = 0; i < 65536; i++) {
		float want = fp_f16_to_f32((uint16_t)i);

		if (fp_f32_bits(fast[i]) != fp_f32_bits(want))
			fail_msg("f16 0x%04x: got 0x%08x want 0x%08x", i, fp_f32_bits(fast[i]),
				 fp_f32_bits(want));
	}
	/* fast vs portable on odd lengths and offsets (vector body + scalar tail) */
	for (size_t n = 0; n < 40; n++) {
		memset(fast, 0xaa, 64 * sizeof(float));
		memset(slow, 0x55, 64 * sizeof(float));
		fp__st_f16_to_f32(fast, (const uint8_t *)t->data + 2 * n + 2, n, false);
		fp__st_f16_to_f32(slow, (const uint8_t *)t->data + 2 * n + 2, n, true);
		assert_memory_equal(fast, slow, n * sizeof(float));
		assert_int_equal(fp_f32_bits(fast[n]), 0xaaaaaaaau); /* nothing past n written */
	}
	fp__st_f16_to_f32(fast, t->data, 65535, false);
	fp__st_f16_to_f32(slow, t->data, 65535, true);
	assert_memory_equal(fast, slow, 65535 * sizeof(float));
	fp_st_close(f);
	free(img);
	free(buf);
	free(fast);
	free(slow);
}

/* ---------------------------------------------------------------------------------------- */
/* model directories */

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

static const char *const names1[] = { "a", "c" }, *const names2[] = { "b" };
static const uint64_t n1[] = { 3, 2 }, n2[] = { 4 };
static const float base1[] = { 10, 20 }, base2[] = { 30 };

/* A directory with SHARD1 (a: 3, c: 2), SHARD2 (b: 4) and the given index text (or none). */
static char *sharded_dir(const char *index)
{
	char *dir = fp_test_mkdtemp(), *p;

	p = join(dir, SHARD1);
	write_f32_file(p, names1, n1, base1, 2);
	free(p);
	p = join(dir, SHARD2);
	write_f32_file(p, names2, n2, base2, 1);
	free(p);
	if (index)
		free(fp_test_write_file(dir, "model.safetensors.index.json", index, strlen(index)));
	return dir;
}

static void test_model_sharded(void **state)
{
	const char *index = "{\"metadata\":{\"total_size\":36},\"weight_map\":{"
			    "\"b\":\"" SHARD2 "\",\"a\":\"" SHARD1 "\",\"c\":\"" SHARD1 "\"}}";
	char *dir = sharded_dir(index);
	struct fp_st_model *m = NULL;
	const struct fp_st_tensor *t;
	float got[4];

	assert_int_equal(fp_st_model_open(dir, &m), 0);
	assert_int_equal(fp_st_model_count(m), 3);
	assert_int_equal(fp_st_model_shard_count(m), 2);
	assert_int_equal(fp_st_model_bytes(m), 36);
	assert_string_equal(fp_st_model_at(m, 0)->name, "a"); /* shard order, then offsets */
	assert_string_equal(fp_st_model_at(m, 1)->name, "c");
	assert_string_equal(fp_st_model_at(m, 2)->name, "b");
	assert_null(fp_st_model_at(m, 3));
	assert_non_null(strstr(fp_st_path(fp_st_model_shard(m, 1)), SHARD2));
	assert_null(fp_st_model_shard(m, 2));
	t = fp_st_model_find(m, "b");
	assert_non_null(t);
	assert_ptr_equal(t->file, fp_st_model_shard(m, 1));
	assert_int_equal(fp_st_to_f32(t, got), 0);
	assert_true(got[0] == 30 && got[3] == 33);
	t = fp_st_model_find(m, "c");
	assert_int_equal(fp_st_to_f32(t, got), 0);
	assert_true(got[0] == 20 && got[1] == 21);
	assert_null(fp_st_model_find(m, "d"));
	fp_st_model_close(m);
	fp_st_model_close(NULL);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_model_single_and_missing(void **state)
{
	char *dir = fp_test_mkdtemp(), *p = join(dir, "model.safetensors"), *f = NULL;
	struct fp_st_model *m = NULL;

	assert_int_equal(fp_st_model_open(dir, &m), -ENOENT);
	assert_detail(dir, "model.safetensors", NULL);
	write_f32_file(p, names1, n1, base1, 2);
	assert_int_equal(fp_st_model_open(p, &m), -ENOTDIR);
	assert_int_equal(fp_st_model_open(dir, &m), 0);
	assert_int_equal(fp_st_model_count(m), 2);
	assert_int_equal(fp_st_model_shard_count(m), 1);
	assert_int_equal(fp_st_model_bytes(m), 20);
	assert_non_null(fp_st_model_find(m, "c"));
	fp_st_model_close(m);
	assert_int_equal(fp_st_model_open_file(p, &m), 0);
	assert_string_equal(fp_st_model_at(m, 1)->name, "c");
	fp_st_model_close(m);
	f = join(dir, "nope");
	assert_int_equal(fp_st_model_open(f, &m), -ENOENT);
	assert_int_equal(fp_st_model_open_file(f, &m), -ENOENT);
	assert_detail(f, NULL, NULL);
	free(f);
	free(p);
	fp_test_rmtree(dir);
	free(dir);
}

struct bad_index {
	const char *what;
	const char *index;
	int err;
	const char *file;   /* the message names this file (relative to the dir) */
	const char *tensor; /* and this tensor (NULL: none) */
};

#define WM(x) "{\"weight_map\":{" x "}}"
#define S1    "\"" SHARD1 "\""
#define S2    "\"" SHARD2 "\""

static const struct bad_index bad_indexes[] = {
	{ "missing shard file", WM("\"a\":" S1 ",\"c\":" S1 ",\"b\":\"model-3.safetensors\""),
	  -ENOENT, "model-3.safetensors", NULL },
	{ "parent shard name", WM("\"a\":" S1 ",\"c\":" S1 ",\"b\":\"../x.safetensors\""), -EBADMSG,
	  "model.safetensors.index.json", "b" },
	{ "hidden shard name", WM("\"a\":" S1 ",\"c\":" S1 ",\"b\":\".x\""), -EBADMSG,
	  "model.safetensors.index.json", "b" },
	{ "empty shard name", WM("\"a\":" S1 ",\"c\":" S1 ",\"b\":\"\""), -EBADMSG,
	  "model.safetensors.index.json", "b" },
	{ "shard not a string", WM("\"a\":" S1 ",\"c\":" S1 ",\"b\":2"), -EBADMSG,
	  "model.safetensors.index.json", "b" },
	{ "shard tensor not in map", WM("\"a\":" S1 ",\"b\":" S2), -EBADMSG, SHARD1, "c" },
	{ "tensor mapped to a shard that lacks it", WM("\"a\":" S1 ",\"c\":" S1 ",\"b\":" S1),
	  -EBADMSG, "model.safetensors.index.json", "b" },
	{ "tensor mapped to the wrong shard", WM("\"a\":" S2 ",\"c\":" S1 ",\"b\":" S2), -EBADMSG,
	  "model.safetensors.index.json", "a" },
	{ "mapped tensor exists nowhere", WM("\"a\":" S1 ",\"c\":" S1 ",\"b\":" S2 ",\"zz\":" S2),
	  -EBADMSG, "model.safetensors.index.json", "zz" },
	{ "tensor in two shards", WM("\"a\":" S1 ",\"c\":" S1 ",\"b\":" S2 ",\"d\":\"dup.st\""),
	  -EBADMSG, "dup.st", "a" },
	{ "tensor listed twice", WM("\"a\":" S1 ",\"c\":" S1 ",\"b\":" S2 ",\"a\":" S1), -EBADMSG,
	  "model.safetensors.index.json", "a" },
	{ "no weight_map", "{\"metadata\":{}}", -EBADMSG, "model.safetensors.index.json", NULL },
	{ "weight_map not an object", "{\"weight_map\":[]}", -EBADMSG,
	  "model.safetensors.index.json", NULL },
	{ "index not JSON", "{\"weight_map\":{", -EBADMSG, "model.safetensors.index.json", NULL },
	{ "index not an object", "[]", -EBADMSG, "model.safetensors.index.json", NULL },
	{ "corrupt shard", WM("\"a\":" S1 ",\"c\":" S1 ",\"b\":" S2 ",\"x\":\"bad.st\""), -EBADMSG,
	  "bad.st", NULL },
};

static void test_model_hostile(void **state)
{
	static const char *const dupn[] = { "d", "a" };
	static const uint64_t dupk[] = { 1, 1 };
	static const float dupb[] = { 0, 0 };

	for (size_t i = 0; i < sizeof(bad_indexes) / sizeof(bad_indexes[0]); i++) {
		const struct bad_index *b = &bad_indexes[i];
		char *dir = sharded_dir(b->index), *p = join(dir, "dup.st"), *file, tensor[64];
		struct fp_st_model *m = NULL;
		int r;

		write_f32_file(p, dupn, dupk, dupb, 2);
		free(fp_test_write_file(dir, "bad.st", "\x10\0\0\0\0\0\0\0{}", 10));
		fp_err_clear();
		r = fp_st_model_open(dir, &m);
		print_message("bad index: %s -> %s\n", b->what, fp_err_last());
		if (r != b->err)
			fail_msg("%s: got %d (%s), want %d", b->what, r, fp_err_last(), b->err);
		assert_null(m);
		file = join(dir, b->file);
		snprintf(tensor, sizeof(tensor), "tensor '%s'", b->tensor ? b->tensor : "");
		assert_detail(file, b->tensor ? tensor : NULL, NULL);
		free(file);
		free(p);
		fp_test_rmtree(dir);
		free(dir);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_write_read),
		cmocka_unit_test(test_writer_header_layout),
		cmocka_unit_test(test_write_large),
		cmocka_unit_test(test_writer_errors),
		cmocka_unit_test(test_python_fixture),
		cmocka_unit_test(test_hostile_files),
		cmocka_unit_test(test_valid_edge_cases),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_f16_paths),
		cmocka_unit_test(test_model_sharded),
		cmocka_unit_test(test_model_single_and_missing),
		cmocka_unit_test(test_model_hostile),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
