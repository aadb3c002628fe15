/* Overflow-checked allocation helpers. */
#include "test.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "alloc.h"

static void test_mul_add(void **state)
{
	size_t r = 7;
	uint64_t p;
	const uint64_t dims_ok[] = { 4096, 11008, 4 };
	const uint64_t dims_bad[] = { UINT64_MAX / 2, 3 };

	(void)state;
	assert_true(fp_mul_ok(3, 5, &r));
	assert_int_equal(r, 15);
	assert_false(fp_mul_ok(SIZE_MAX / 2 + 1, 2, &r));
	assert_int_equal(r, 15); /* untouched on overflow */
	assert_true(fp_add_ok(SIZE_MAX - 1, 1, &r));
	assert_false(fp_add_ok(SIZE_MAX, 1, &r));
	assert_true(fp_mul_dims_ok(dims_ok, 3, &p));
	assert_int_equal(p, 4096ull * 11008 * 4);
	assert_false(fp_mul_dims_ok(dims_bad, 2, &p));
	assert_true(fp_mul_dims_ok(NULL, 0, &p));
	assert_int_equal(p, 1);
}

static void test_arrays(void **state)
{
	int *a;
	char *c;
	float *f;

	(void)state;
	a = fp_mallocarray(16, sizeof(int));
	assert_non_null(a);
	a = fp_reallocarray(a, 32, sizeof(int));
	assert_non_null(a);
	free(a);
	c = fp_callocarray(100, 1);
	assert_non_null(c);
	for (int i = 0; i < 100; i++)
		assert_int_equal(c[i], 0);
	free(c);
	f = fp_aligned_array(1000, sizeof(float));
	assert_non_null(f);
	assert_int_equal((uintptr_t)f % 64, 0);
	free(f);
	/* Zero-sized requests still return something freeable. */
	a = fp_mallocarray(0, 8);
	assert_non_null(a);
	free(a);
}

static void test_hostile_sizes(void **state)
{
	(void)state;
	errno = 0;
	assert_null(fp_mallocarray(SIZE_MAX / 4, 8));
	assert_int_equal(errno, EOVERFLOW);
	errno = 0;
	assert_null(fp_callocarray(SIZE_MAX, 2));
	assert_int_equal(errno, EOVERFLOW);
	errno = 0;
	assert_null(fp_aligned_array(SIZE_MAX / 2, 4));
	assert_int_equal(errno, EOVERFLOW);
	errno = 0;
	assert_null(fp_reallocarray(NULL, SIZE_MAX / 2, 3));
	assert_int_equal(errno, EOVERFLOW);
	assert_null(fp_strdup(NULL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mul_add),
		cmocka_unit_test(test_arrays),
		cmocka_unit_test(test_hostile_sizes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
