/*
 * Shared helpers for the unit tests (see test.h).
 */
#include "test.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data.h"
#include "safetensors.h"

char *fp_test_mkdtemp(void)
{
	const char *base = getenv("TMPDIR");
	char *path = NULL;

	if (!base || !*base)
		base = "/tmp";
	assert_true(asprintf(&path, "%s/fp-test-XXXXXX", base) > 0);
	assert_non_null(mkdtemp(path));
	return path;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void fp_test_rmtree(const char *path)
{
	if (path)
		nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

char *fp_test_write_file(const char *dir, const char *name, const void *data, size_t len)
{
	char *path = NULL;
	FILE *f;

	assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
	f = fopen(path, "wb");
	assert_non_null(f);
	if (len)
		assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
	return path;
}

char *fp_test_data_path(const char *rel)
{
	char *path = NULL;

	assert_true(asprintf(&path, "%s/%s", FP_TEST_DATA_DIR, rel) > 0);
	return path;
}

uint64_t fp_test_rand(uint64_t *state)
{
	uint64_t x = *state ? *state : 0x9E3779B97F4A7C15ull;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545F4914F6CDD1Dull;
}

double fp_test_nmse(const float *a, const float *b, size_t n)
{
	double num = 0, den = 0;

	for (size_t i = 0; i < n; i++) {
		double d = (double)a[i] - (double)b[i];

		num += d * d;
		den += (double)b[i] * (double)b[i];
	}
	if (den == 0)
		return num == 0 ? 0 : 1e300;
	return num / den;
}

void fp_test_golden_dataset(const struct fp_st_file *g, struct fp_dataset *ds)
{
	const struct fp_st_tensor *tok = fp_st_find(g, "tokens");
	size_t ns, sl;

	assert_non_null(tok);
	assert_int_equal(tok->dtype, FP_DT_I32);
	assert_int_equal(tok->ndim, 2);
	ns = tok->shape[0];
	sl = tok->shape[1];
	memset(ds, 0, sizeof(*ds));
	ds->nsamples = ns;
	ds->seqlen = (uint32_t)sl;
	ds->ntokens = ns * sl;
	ds->len = calloc(ns, sizeof(uint32_t));
	ds->off = calloc(ns, sizeof(size_t));
	ds->ids = calloc(ns * sl, sizeof(int32_t));
	assert_true(ds->len && ds->off && ds->ids);
	memcpy(ds->ids, tok->data, ns * sl * sizeof(int32_t));
	for (size_t i = 0; i < ns; i++) {
		ds->len[i] = (uint32_t)sl;
		ds->off[i] = i * sl;
	}
}

void fp_test_dataset_clear(struct fp_dataset *ds)
{
	free(ds->len);
	free(ds->off);
	free(ds->ids);
	ds->len = NULL;
	ds->off = NULL;
	ds->ids = NULL;
}
