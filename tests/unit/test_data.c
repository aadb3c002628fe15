/*
 * Calibration data loader: every format from hand-made files, truncation and windowing,
 * first-N and seeded selection, the digest across formats, and every kind of hostile file
 * (each asserting the error code and that the message names the file and the line or offset).
 * Golden values for the generator and the digest come from an independent Python
 * implementation of the algorithms documented in data.h.
 */
#include "test.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data.h"
#include "err.h"

static struct fp_data_opts mkopts(uint32_t seqlen, uint32_t nsamples, uint32_t vocab)
{
	struct fp_data_opts o = { .seqlen = seqlen, .nsamples = nsamples, .vocab_size = vocab };

	return o;
}

/* Write data to dir/name and load it; returns the code, *d set on success. */
static int load_file(const char *dir, const char *name, const void *data, size_t len,
		     const struct fp_data_opts *o, struct fp_dataset **d)
{
	char *path = fp_test_write_file(dir, name, data, len);
	int r;

	*d = NULL;
	fp_err_clear();
	r = fp_data_load(path, o, d);
	free(path);
	return r;
}

static int load_text(const char *dir, const char *name, const char *text,
		     const struct fp_data_opts *o, struct fp_dataset **d)
{
	return load_file(dir, name, text, strlen(text), o, d);
}

static void assert_err_has(const char *want)
{
	if (!strstr(fp_err_last(), want))
		fail_msg("error '%s' does not contain '%s'", fp_err_last(), want);
}

/* Load must fail with code, leave *d NULL, and the message must contain both strings. */
static void expect_fail(const char *dir, const char *name, const void *data, size_t len,
			const struct fp_data_opts *o, int code, const char *want1,
			const char *want2)
{
	struct fp_dataset *d = NULL;
	int r = load_file(dir, name, data, len, o, &d);

	if (r != code)
		fail_msg("%s: got %d (%s), want %d", name, r, fp_err_last(), code);
	assert_null(d);
	assert_err_has(name);
	if (want1)
		assert_err_has(want1);
	if (want2)
		assert_err_has(want2);
}

static void expect_fail_text(const char *dir, const char *name, const char *text,
			     const struct fp_data_opts *o, const char *want1, const char *want2)
{
	expect_fail(dir, name, text, strlen(text), o, -EINVAL, want1, want2);
}

static void assert_sample(const struct fp_dataset *d, size_t i, const int32_t *want, uint32_t n)
{
	assert_true(i < d->nsamples);
	assert_int_equal(d->len[i], n);
	assert_true(d->off[i] + n <= d->ntokens);
	for (uint32_t j = 0; j < n; j++)
		if (d->ids[d->off[i] + j] != want[j])
			fail_msg("sample %zu id %u: got %d want %d", i, j, d->ids[d->off[i] + j],
				 want[j]);
}

/* Samples must be packed back to back with off consistent with len. */
static void assert_packed(const struct fp_dataset *d)
{
	uint64_t sum = 0;

	for (size_t i = 0; i < d->nsamples; i++) {
		assert_int_equal(d->off[i], sum);
		assert_true(d->len[i] >= 2 && d->len[i] <= d->seqlen);
		sum += d->len[i];
	}
	assert_int_equal(sum, d->ntokens);
}

/* Little-endian encodings of ids, built byte by byte. */
static uint8_t *encode(const uint32_t *ids, size_t n, unsigned width)
{
	uint8_t *b = malloc(n * width + 1);

	assert_non_null(b);
	for (size_t i = 0; i < n; i++)
		for (unsigned k = 0; k < width; k++)
			b[i * width + k] = (uint8_t)(ids[i] >> (8 * k));
	return b;
}

static void test_jsonl_basic(void **state)
{
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts(4, 0, 100);
	struct fp_dataset *d;
	/* BOM, blank lines (with spaces and CR), CRLF, other keys, key order, truncation. */
	const char *text = "\xef\xbb\xbf{\"input_ids\": [1, 2, 3], \"text\": \"abc\"}\n"
			   "\n"
			   "  \t\r\n"
			   "{\"meta\": {\"input_ids\": 5}, \"input_ids\":[10,11,12,13,14,15]}\r\n"
			   "{\"input_ids\":[99,0]}  \n"
			   "{\"input_ids\":[7,8.0,9,10]}";

	assert_int_equal(load_text(dir, "a.jsonl", text, &o, &d), 0);
	assert_int_equal(d->nsamples, 4);
	assert_int_equal(d->seqlen, 4);
	assert_int_equal(d->ntokens, 3 + 4 + 2 + 4);
	assert_packed(d);
	assert_sample(d, 0, (const int32_t[]){ 1, 2, 3 }, 3);
	assert_sample(d, 1, (const int32_t[]){ 10, 11, 12, 13 }, 4); /* truncated to seqlen */
	assert_sample(d, 2, (const int32_t[]){ 99, 0 }, 2);
	assert_sample(d, 3, (const int32_t[]){ 7, 8, 9, 10 }, 4);
	fp_data_free(d);

	/* Upper-case extension; a file without a final newline was covered above. */
	assert_int_equal(load_text(dir, "B.JSONL", "{\"input_ids\":[1,2]}\n", &o, &d), 0);
	assert_int_equal(d->nsamples, 1);
	fp_data_free(d);
	fp_data_free(NULL);
	fp_test_rmtree(dir);
	free(dir);
}

/* A multi-megabyte line is one sample; no fixed-size line buffer. */
static void test_jsonl_long_line(void **state)
{
	const size_t n = 600000;
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts(FP_DATA_MAX_SEQLEN, 0, 50000);
	struct fp_dataset *d;
	size_t cap = n * 8 + 64, pos = 0;
	char *text = malloc(cap);

	assert_non_null(text);
	pos += (size_t)snprintf(text + pos, cap - pos, "{\"text\":\"x\",\"input_ids\":[");
	for (size_t i = 0; i < n; i++)
		pos += (size_t)snprintf(text + pos, cap - pos, "%s%zu", i ? "," : "", i % 50000);
	pos += (size_t)snprintf(text + pos, cap - pos, "]}\n{\"input_ids\":[3,4]}\n");
	assert_true(pos > 3000000);
	assert_int_equal(load_file(dir, "long.jsonl", text, pos, &o, &d), 0);
	assert_int_equal(d->nsamples, 2);
	assert_int_equal(d->len[0], n);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(d->ids[i], i % 50000);
	assert_sample(d, 1, (const int32_t[]){ 3, 4 }, 2);
	fp_data_free(d);

	/* The same line truncated to 1000 tokens. */
	o.seqlen = 1000;
	assert_int_equal(load_file(dir, "long2.jsonl", text, pos, &o, &d), 0);
	assert_int_equal(d->len[0], 1000);
	assert_int_equal(d->ntokens, 1002);
	assert_int_equal(d->ids[999], 999);
	fp_data_free(d);
	free(text);
	fp_test_rmtree(dir);
	free(dir);
}

static void check_windows(unsigned width, const char *name, uint32_t vocab, uint32_t mul)
{
	const size_t ntok = 23, L = 5; /* 4 windows, tail of 3 dropped */
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts((uint32_t)L, 0, vocab);
	struct fp_dataset *d;
	uint32_t ids[23];
	uint8_t *b;

	for (size_t i = 0; i < ntok; i++)
		ids[i] = (uint32_t)((i * mul + 1) % vocab);
	b = encode(ids, ntok, width);
	assert_int_equal(load_file(dir, name, b, ntok * width, &o, &d), 0);
	assert_int_equal(d->nsamples, 4);
	assert_int_equal(d->ntokens, 20);
	assert_packed(d);
	for (size_t w = 0; w < 4; w++) {
		assert_int_equal(d->len[w], L);
		for (size_t j = 0; j < L; j++)
			assert_int_equal(d->ids[d->off[w] + j], ids[w * L + j]);
	}
	fp_data_free(d);

	/* Exactly one window, no tail. */
	o.seqlen = 23;
	assert_int_equal(load_file(dir, name, b, ntok * width, &o, &d), 0);
	assert_int_equal(d->nsamples, 1);
	assert_int_equal(d->ntokens, 23);
	assert_int_equal(d->ids[22], ids[22]);
	fp_data_free(d);
	free(b);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_u16(void **state)
{
	/* ids use both bytes, including 0xff00 and values above 0x8000. */
	check_windows(2, "t.u16", 65536, 2851);
}

static void test_u32(void **state)
{
	check_windows(4, "t.u32", 1u << 31, 93784123u);
}

static void test_txt(void **state)
{
	check_windows(1, "t.txt", 256, 37);

	/* A real text file: bytes are the ids. */
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts(3, 0, 300);
	struct fp_dataset *d;

	assert_int_equal(load_text(dir, "hi.txt", "Hi!\xff\n", &o, &d), 0);
	assert_int_equal(d->nsamples, 1);
	assert_sample(d, 0, (const int32_t[]){ 'H', 'i', '!' }, 3);
	fp_data_free(d);
	fp_test_rmtree(dir);
	free(dir);
}

/* ids of window w are w*L .. w*L+L-1, so every window names itself. */
static uint8_t *numbered_u16(size_t nwin, size_t L, size_t *len)
{
	uint32_t *ids = malloc(nwin * L * sizeof(*ids));
	uint8_t *b;

	assert_non_null(ids);
	for (size_t i = 0; i < nwin * L; i++)
		ids[i] = (uint32_t)i;
	b = encode(ids, nwin * L, 2);
	free(ids);
	*len = nwin * L * 2;
	return b;
}

static void test_first_n(void **state)
{
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts(4, 3, 1000);
	struct fp_dataset *d;
	size_t len;
	uint8_t *b = numbered_u16(10, 4, &len);
	const char *text = "{\"input_ids\":[1,2]}\n{\"input_ids\":[3,4,5]}\n\n"
			   "{\"input_ids\":[6,7]}\n{\"input_ids\":[8,9]}\n";

	assert_int_equal(load_file(dir, "n.u16", b, len, &o, &d), 0);
	assert_int_equal(d->nsamples, 3);
	assert_int_equal(d->ntokens, 12);
	for (int i = 0; i < 12; i++)
		assert_int_equal(d->ids[i], i);
	fp_data_free(d);

	assert_int_equal(load_text(dir, "n.jsonl", text, &o, &d), 0);
	assert_int_equal(d->nsamples, 3);
	assert_int_equal(d->ntokens, 7);
	assert_packed(d);
	assert_sample(d, 2, (const int32_t[]){ 6, 7 }, 2);
	fp_data_free(d);

	/* More requested than available: all of them, count in nsamples. */
	o.nsamples = 50;
	assert_int_equal(load_file(dir, "n.u16", b, len, &o, &d), 0);
	assert_int_equal(d->nsamples, 10);
	fp_data_free(d);
	assert_int_equal(load_text(dir, "n.jsonl", text, &o, &d), 0);
	assert_int_equal(d->nsamples, 4);
	fp_data_free(d);
	free(b);
	fp_test_rmtree(dir);
	free(dir);
}

/* Window indices a u16 "numbered" dataset kept, in order. */
static void kept_windows(const struct fp_dataset *d, size_t L, uint64_t *out)
{
	for (size_t i = 0; i < d->nsamples; i++) {
		out[i] = (uint64_t)d->ids[d->off[i]] / L;
		for (size_t j = 0; j < L; j++)
			assert_int_equal(d->ids[d->off[i] + j], out[i] * L + j);
	}
}

static void test_shuffle(void **state)
{
	const size_t nwin = 200, L = 3, k = 20;
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts((uint32_t)L, (uint32_t)k, 65536);
	struct fp_dataset *a, *b, *c;
	uint64_t wa[200], wb[200], wc[200], drawn[200];
	size_t len;
	uint8_t *buf = numbered_u16(nwin, L, &len);
	char *path = fp_test_write_file(dir, "s.u16", buf, len);
	bool seen[200] = { false };
	int same;

	o.shuffle = true;
	o.seed = 1234;
	assert_int_equal(fp_data_load(path, &o, &a), 0);
	assert_int_equal(fp_data_load(path, &o, &b), 0);
	o.seed = 1235;
	assert_int_equal(fp_data_load(path, &o, &c), 0);
	assert_int_equal(a->nsamples, k);
	assert_int_equal(c->nsamples, k);
	assert_packed(a);
	kept_windows(a, L, wa);
	kept_windows(b, L, wb);
	kept_windows(c, L, wc);
	assert_memory_equal(wa, wb, k * sizeof(*wa)); /* same seed, same samples, same order */
	same = 0;
	for (size_t i = 0; i < k; i++) {
		assert_true(wa[i] < nwin);
		assert_false(seen[wa[i]]); /* distinct */
		seen[wa[i]] = true;
		same += wa[i] == wc[i];
	}
	assert_true(same < (int)k / 2); /* another seed, another draw */
	/* Kept in draw order: exactly fp_data_draw's sequence. */
	assert_int_equal(fp_data_draw(nwin, k, 1234, drawn), 0);
	assert_memory_equal(wa, drawn, k * sizeof(*wa));
	/* Not simply the first k in file order. */
	same = 0;
	for (size_t i = 0; i < k; i++)
		same += wa[i] == i;
	assert_true(same < (int)k);
	fp_data_free(a);
	fp_data_free(b);
	fp_data_free(c);

	/* Shuffle of everything is a permutation. */
	o.nsamples = 0;
	o.seed = 9;
	assert_int_equal(fp_data_load(path, &o, &a), 0);
	assert_int_equal(a->nsamples, nwin);
	kept_windows(a, L, wa);
	memset(seen, 0, sizeof(seen));
	for (size_t i = 0; i < nwin; i++) {
		assert_false(seen[wa[i]]);
		seen[wa[i]] = true;
	}
	fp_data_free(a);
	free(path);
	free(buf);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_shuffle_jsonl(void **state)
{
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts(8, 4, 1000);
	struct fp_dataset *d;
	uint64_t drawn[4];
	char text[4096];
	size_t pos = 0;

	/* Sample i has i % 5 + 2 tokens, all equal to i. */
	for (int i = 0; i < 30; i++) {
		pos += (size_t)snprintf(text + pos, sizeof(text) - pos, "{\"input_ids\":[%d", i);
		for (int j = 1; j < i % 5 + 2; j++)
			pos += (size_t)snprintf(text + pos, sizeof(text) - pos, ",%d", i);
		pos += (size_t)snprintf(text + pos, sizeof(text) - pos, "]}\n");
	}
	o.shuffle = true;
	o.seed = 77;
	assert_int_equal(load_text(dir, "s.jsonl", text, &o, &d), 0);
	assert_int_equal(fp_data_draw(30, 4, 77, drawn), 0);
	assert_int_equal(d->nsamples, 4);
	assert_packed(d);
	for (size_t i = 0; i < 4; i++) {
		assert_int_equal(d->len[i], drawn[i] % 5 + 2);
		for (uint32_t j = 0; j < d->len[i]; j++)
			assert_int_equal(d->ids[d->off[i] + j], drawn[i]);
	}
	fp_data_free(d);
	fp_test_rmtree(dir);
	free(dir);
}

/* Independent naive reimplementation of the documented generator (dense Fisher-Yates). */
static uint64_t ref_rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static void ref_draw(uint64_t n, uint64_t k, uint64_t seed, uint64_t *ret)
{
	uint64_t s[4], x = seed, *a = malloc(n * sizeof(*a));

	assert_non_null(a);
	for (int i = 0; i < 4; i++) {
		uint64_t z = (x += 0x9e3779b97f4a7c15ull);

		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		s[i] = z ^ (z >> 31);
	}
	for (uint64_t i = 0; i < n; i++)
		a[i] = i;
	for (uint64_t i = 0; i < k; i++) {
		uint64_t m = n - i, r, t;

		do {
			r = ref_rotl(s[1] * 5, 7) * 9;
			t = s[1] << 17;
			s[2] ^= s[0];
			s[3] ^= s[1];
			s[1] ^= s[2];
			s[0] ^= s[3];
			s[2] ^= t;
			s[3] = ref_rotl(s[3], 45);
		} while (r < (0 - m) % m);
		t = a[i];
		a[i] = a[i + r % m];
		a[i + r % m] = t;
		ret[i] = a[i];
	}
	free(a);
}

static void test_draw(void **state)
{
	/* Golden values from the Python reference (tests the cross-host contract). */
	static const uint64_t g1[] = { 42, 19, 21, 15, 8, 89, 48, 73, 62, 98 };
	static const uint64_t g2[] = { 475994, 515067, 406320, 994628, 453924, 816846 };
	static const uint64_t g3[] = { 0, 3, 1, 2, 4 };
	static const struct {
		uint64_t n, k;
	} cases[] = { { 1, 1 },		{ 2, 1 },	   { 100, 100 },       { 70000, 17500 },
		      { 70000, 17499 }, { 1000000, 1000 }, { 3000000, 40000 }, { 65537, 3 } };
	uint64_t out[10];

	assert_int_equal(fp_data_draw(100, 10, 42, out), 0);
	assert_memory_equal(out, g1, sizeof(g1));
	assert_int_equal(fp_data_draw(1000000, 6, 7, out), 0); /* sparse path */
	assert_memory_equal(out, g2, sizeof(g2));
	assert_int_equal(fp_data_draw(5, 5, 0, out), 0);
	assert_memory_equal(out, g3, sizeof(g3));

	/* Dense and sparse paths against the naive reference, on both sides of the switch. */
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		uint64_t n = cases[c].n, k = cases[c].k;
		uint64_t *got = malloc(k * sizeof(*got)), *want = malloc(k * sizeof(*want));
		uint8_t *seen = calloc(n, 1);

		assert_true(got && want && seen);
		for (uint64_t seed = 0; seed < 3; seed++) {
			assert_int_equal(fp_data_draw(n, k, seed * 0x1234567 + c, got), 0);
			ref_draw(n, k, seed * 0x1234567 + c, want);
			assert_memory_equal(got, want, k * sizeof(*got));
		}
		for (uint64_t i = 0; i < k; i++) {
			assert_true(got[i] < n);
			assert_int_equal(seen[got[i]]++, 0);
		}
		free(got);
		free(want);
		free(seen);
	}
	assert_int_equal(fp_data_draw(0, 0, 1, NULL), 0);
	assert_int_equal(fp_data_draw(3, 4, 1, out), -EINVAL);
}

static void hex(const uint8_t *d, char *out)
{
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void test_digest(void **state)
{
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts(3, 0, 256);
	struct fp_dataset *d;
	uint8_t ref[32], got[32];
	char h[65];
	static const uint32_t ids[] = { 1, 2, 3, 4, 5, 6, 250, 0, 9 };
	uint8_t *b;

	/* Golden: [[1,2,3],[4,5]] and the empty set, computed with Python's hashlib. */
	assert_int_equal(
		load_text(dir, "g.jsonl", "{\"input_ids\":[1,2,3]}\n{\"input_ids\":[4,5]}", &o, &d),
		0);
	fp_data_digest(d, got);
	hex(got, h);
	assert_string_equal(h, "3a4bd73994ff4e28debac6a691fdf19476a1c6e5651d972d03e4e0452fb864b8");
	fp_data_free(d);
	fp_data_digest(NULL, got);
	hex(got, h);
	assert_string_equal(h, "0768aa78b9722d158445c7e15c224b5288cf6dae02cd9506301496e915d47491");

	/* The same three windows through every format give the same digest. */
	assert_int_equal(load_text(dir, "d.jsonl",
				   "{\"input_ids\":[1,2,3]}\n{\"input_ids\":[4,5,6,7]}\n"
				   "{\"input_ids\":[250,0,9]}\n",
				   &o, &d),
			 0);
	fp_data_digest(d, ref);
	fp_data_free(d);
	for (unsigned width = 1; width <= 4; width *= 2) {
		const char *name = width == 1 ? "d.txt" : width == 2 ? "d.u16" : "d.u32";

		b = encode(ids, 9, width);
		assert_int_equal(load_file(dir, name, b, 9 * width, &o, &d), 0);
		fp_data_digest(d, got);
		assert_memory_equal(got, ref, 32);
		fp_data_free(d);
		/* Another window length splits the same ids differently: another digest. */
		o.seqlen = 4;
		assert_int_equal(load_file(dir, name, b, 9 * width, &o, &d), 0);
		fp_data_digest(d, got);
		assert_memory_not_equal(got, ref, 32);
		fp_data_free(d);
		o.seqlen = 3;
		free(b);
	}
	/* One id changed: another digest. */
	assert_int_equal(load_text(dir, "e.jsonl",
				   "{\"input_ids\":[1,2,3]}\n{\"input_ids\":[4,5,6]}\n"
				   "{\"input_ids\":[250,0,8]}\n",
				   &o, &d),
			 0);
	fp_data_digest(d, got);
	assert_memory_not_equal(got, ref, 32);
	fp_data_free(d);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_jsonl_hostile(void **state)
{
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts(16, 0, 1000);
	const char *ok = "{\"input_ids\":[1,2]}\n";
	char buf[256];

	expect_fail_text(dir, "vocab.jsonl", "{\"input_ids\":[1,2]}\n{\"input_ids\":[1,1000]}\n",
			 &o, "vocab.jsonl:2:", "input_ids[1] = 1000 >= vocab 1000");
	expect_fail_text(dir, "neg.jsonl", "{\"input_ids\":[-1,2]}\n", &o,
			 "neg.jsonl:1:", "input_ids[0] = -1 is negative");
	expect_fail_text(dir, "frac.jsonl", "\n\n{\"input_ids\":[1,1.5]}\n", &o,
			 "frac.jsonl:3:", "input_ids[1] = 1.5 is not an integer");
	expect_fail_text(dir, "huge.jsonl", "{\"input_ids\":[1e30,2]}\n", &o,
			 "huge.jsonl:1:", ">= vocab");
	expect_fail_text(dir, "str.jsonl", "{\"input_ids\":[1,\"2\"]}\n", &o,
			 "str.jsonl:1:", "input_ids[1] is a string");
	expect_fail_text(dir, "nest.jsonl", "{\"input_ids\":[1,[2]]}\n", &o,
			 "nest.jsonl:1:", "input_ids[1] is an array");
	expect_fail_text(dir, "null.jsonl", "{\"input_ids\":[null,2]}\n", &o,
			 "null.jsonl:1:", "input_ids[0] is null");
	expect_fail_text(dir, "missing.jsonl", "{\"input_ids\":[1,2]}\n{\"ids\":[1,2]}\n", &o,
			 "missing.jsonl:2:", "no \"input_ids\"");
	expect_fail_text(dir, "case.jsonl", "{\"Input_Ids\":[1,2]}\n", &o,
			 "case.jsonl:1:", "no \"input_ids\"");
	expect_fail_text(dir, "notarr.jsonl", "{\"input_ids\":\"1 2\"}\n", &o,
			 "notarr.jsonl:1:", "\"input_ids\" is a string, not an array");
	expect_fail_text(dir, "notarr2.jsonl", "{\"input_ids\":{\"0\":1}}\n", &o,
			 "notarr2.jsonl:1:", "not an array");
	expect_fail_text(dir, "notobj.jsonl", "[1,2,3]\n", &o,
			 "notobj.jsonl:1:", "not a JSON object (found an array)");
	expect_fail_text(dir, "num.jsonl", "{\"input_ids\":[1,2]}\n42\n", &o,
			 "num.jsonl:2:", "not a JSON object");
	expect_fail_text(dir, "invalid.jsonl", "{\"input_ids\":[1,2]}\n{\"input_ids\":[1,2}\n", &o,
			 "invalid.jsonl:2:", "not a JSON object");
	expect_fail_text(dir, "trunc.jsonl", "{\"input_ids\":[1,2", &o,
			 "trunc.jsonl:1:", "not a JSON object");
	expect_fail_text(dir, "trail.jsonl", "{\"input_ids\":[1,2]} x\n", &o,
			 "trail.jsonl:1:", "not a JSON object (trailing data");
	expect_fail_text(dir, "two.jsonl", "{\"input_ids\":[1,2]}{\"input_ids\":[1,2]}\n", &o,
			 "two.jsonl:1:", "not a JSON object");
	expect_fail_text(dir, "short.jsonl", "{\"input_ids\":[1,2]}\n{\"input_ids\":[5]}\n", &o,
			 "short.jsonl:2:", "1 token(s), a sample needs at least 2");
	expect_fail_text(dir, "zero.jsonl", "{\"input_ids\":[]}\n", &o,
			 "zero.jsonl:1:", "0 token(s)");
	expect_fail_text(dir, "empty.jsonl", "", &o, "empty.jsonl: empty file", NULL);
	expect_fail_text(dir, "blank.jsonl", "\n  \n\r\n\t\n", &o, "blank.jsonl: no samples", NULL);
	/* A bad line after the samples in use is still reported: files are all or nothing. */
	o.nsamples = 1;
	expect_fail_text(dir, "late.jsonl", "{\"input_ids\":[1,2]}\n{\"input_ids\":[1,-2]}\n", &o,
			 "late.jsonl:2:", "negative");
	o.nsamples = 0;

	/* NUL byte inside an otherwise fine line. */
	memcpy(buf, ok, strlen(ok));
	memcpy(buf + strlen(ok), "{\"input_ids\":[1,2]}\0\n", 21);
	expect_fail(dir, "nul.jsonl", buf, strlen(ok) + 21, &o, -EINVAL,
		    "nul.jsonl:2:", "NUL byte");
	memcpy(buf, "{\"input_ids\":[1,\0 2]}\n", 22);
	expect_fail(dir, "nul2.jsonl", buf, 22, &o, -EINVAL, "nul2.jsonl:1:", "NUL byte");
	/* Raw binary garbage. */
	memcpy(buf, "\x01\x02\xff\xfe{", 5);
	expect_fail(dir, "bin.jsonl", buf, 5, &o, -EINVAL, "bin.jsonl:1:", "not a JSON object");
	fp_test_rmtree(dir);
	free(dir);
}

static void test_raw_hostile(void **state)
{
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts(4, 0, 1000);
	uint32_t ids[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
	uint8_t *b;

	ids[6] = 1000;
	b = encode(ids, 12, 2);
	expect_fail(dir, "v.u16", b, 24, &o, -EINVAL, "token 6 (byte offset 12)",
		    "id 1000 >= vocab 1000");
	free(b);
	b = encode(ids, 12, 4);
	expect_fail(dir, "v.u32", b, 48, &o, -EINVAL, "token 6 (byte offset 24)",
		    "id 1000 >= vocab 1000");
	free(b);
	/* An id that would be negative as int32. */
	ids[6] = 7;
	ids[11] = 0x80000000u;
	b = encode(ids, 12, 4);
	expect_fail(dir, "hi.u32", b, 48, &o, -EINVAL, "token 11", "id 2147483648 >= vocab");
	free(b);
	/* A bad id in the dropped tail is not read: 12 tokens, windows of 5, tail 10..11. */
	ids[11] = 5000;
	b = encode(ids, 12, 4);
	{
		struct fp_dataset *d;

		o.seqlen = 5;
		assert_int_equal(load_file(dir, "tail.u32", b, 48, &o, &d), 0);
		assert_int_equal(d->nsamples, 2);
		assert_int_equal(d->ids[9], 10);
		fp_data_free(d);
		o.seqlen = 4;
	}
	/* Bad id in a window picked by shuffle: offset is the file's. */
	o.shuffle = true;
	o.seed = 5;
	expect_fail(dir, "sh.u32", b, 48, &o, -EINVAL, "token 11 (byte offset 44)", "id 5000");
	o.shuffle = false;
	free(b);

	expect_fail(dir, "odd.u16", "\x01\x00\x02", 3, &o, -EINVAL, "size 3 bytes",
		    "not a multiple of 2");
	expect_fail(dir, "odd.u32", "\x01\x00\x02\x00\x00\x00", 6, &o, -EINVAL, "size 6 bytes",
		    "not a multiple of 4");
	expect_fail(dir, "few.u16", "\x01\x00\x02\x00\x03\x00", 6, &o, -EINVAL,
		    "few.u16: 3 tokens, fewer than seqlen 4", NULL);
	expect_fail(dir, "empty.u16", "", 0, &o, -EINVAL, "empty.u16: empty file", NULL);
	expect_fail(dir, "empty.txt", "", 0, &o, -EINVAL, "empty.txt: empty file", NULL);
	o.vocab_size = 255;
	expect_fail(dir, "small.txt", "abcdefgh", 8, &o, -EINVAL,
		    ".txt needs a byte-level model (vocab 256)", "this model has vocab 255");
	o.vocab_size = 1000;
	expect_fail(dir, "x.bin", "abcdefgh", 8, &o, -EINVAL, "unknown data format '.bin'",
		    "(supported: .jsonl, .u16, .u32, .txt)");
	expect_fail(dir, "noext", "abcdefgh", 8, &o, -EINVAL, "no file extension",
		    "supported: .jsonl");
	expect_fail(dir, "dir.d.u16x", "abcdefgh", 8, &o, -EINVAL, "'.u16x'", NULL);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_opts_and_files(void **state)
{
	char *dir = fp_test_mkdtemp();
	struct fp_data_opts o = mkopts(4, 0, 1000);
	struct fp_dataset *d = NULL;
	char *path = NULL;
	const char *ok = "{\"input_ids\":[1,2]}\n";

	o.seqlen = 1;
	expect_fail_text(dir, "o1.jsonl", ok, &o, "seqlen 1 outside [2, 1048576]", NULL);
	o.seqlen = FP_DATA_MAX_SEQLEN + 1;
	expect_fail_text(dir, "o2.jsonl", ok, &o, "seqlen 1048577", NULL);
	o.seqlen = FP_DATA_MAX_SEQLEN;
	o.vocab_size = 0;
	expect_fail_text(dir, "o3.jsonl", ok, &o, "vocab_size 0", NULL);
	o.vocab_size = (1u << 31) + 1;
	expect_fail_text(dir, "o4.jsonl", ok, &o, "vocab_size 2147483649", NULL);
	o.vocab_size = 1u << 31;
	assert_int_equal(load_text(dir, "o5.jsonl", "{\"input_ids\":[2147483647,0]}", &o, &d), 0);
	assert_int_equal(d->ids[0], 2147483647);
	fp_data_free(d);

	/* Missing file, a directory. */
	assert_true(asprintf(&path, "%s/none.jsonl", dir) > 0);
	fp_err_clear();
	assert_int_equal(fp_data_load(path, &o, &d), -ENOENT);
	assert_err_has("none.jsonl: cannot open");
	free(path);
	assert_true(asprintf(&path, "%s/sub.u16", dir) > 0);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(fp_data_load(path, &o, &d), -EINVAL);
	assert_err_has("sub.u16: not a regular file");
	free(path);

	/* From memory: leading dot, case, NULL name, bad arguments. */
	o = mkopts(2, 0, 10);
	assert_int_equal(fp_data_load_mem(ok, strlen(ok), "m", ".JsonL", &o, &d), 0);
	assert_int_equal(d->nsamples, 1);
	fp_data_free(d);
	assert_int_equal(fp_data_load_mem("\x01\x00\x02\x00", 4, NULL, "u16", &o, &d), 0);
	assert_sample(d, 0, (const int32_t[]){ 1, 2 }, 2);
	fp_data_free(d);
	assert_int_equal(fp_data_load_mem(NULL, 0, "nothing", "jsonl", &o, &d), -EINVAL);
	assert_err_has("nothing: empty file");
	assert_int_equal(fp_data_load_mem(NULL, 5, "m", "jsonl", &o, &d), -EINVAL);
	assert_int_equal(fp_data_load_mem(ok, 2, "m", NULL, &o, &d), -EINVAL);
	assert_err_has("m: no file extension");
	assert_int_equal(fp_data_load_mem(ok, 2, "m", "jsonl", NULL, &d), -EINVAL);
	assert_int_equal(fp_data_load(NULL, &o, &d), -EINVAL);
	fp_test_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_jsonl_basic),
		cmocka_unit_test(test_jsonl_long_line),
		cmocka_unit_test(test_u16),
		cmocka_unit_test(test_u32),
		cmocka_unit_test(test_txt),
		cmocka_unit_test(test_first_n),
		cmocka_unit_test(test_shuffle),
		cmocka_unit_test(test_shuffle_jsonl),
		cmocka_unit_test(test_draw),
		cmocka_unit_test(test_digest),
		cmocka_unit_test(test_jsonl_hostile),
		cmocka_unit_test(test_raw_hostile),
		cmocka_unit_test(test_opts_and_files),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
