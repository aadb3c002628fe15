/* Strict value parsers. */
#include "test.h"

#include <errno.h>
#include <stdint.h>

#include "parse.h"

static void test_u64(void **state)
{
	uint64_t v = 0;

	(void)state;
	assert_int_equal(fp_parse_u64("42", 0, 100, &v), 0);
	assert_int_equal(v, 42);
	assert_int_equal(fp_parse_u64("18446744073709551615", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, UINT64_MAX);
	assert_int_equal(fp_parse_u64("18446744073709551616", 0, UINT64_MAX, &v), -ERANGE);
	assert_int_equal(fp_parse_u64("101", 0, 100, &v), -ERANGE);
	assert_int_equal(fp_parse_u64("0", 1, 100, &v), -ERANGE);
	assert_int_equal(fp_parse_u64("-1", 0, 100, &v), -EINVAL);
	assert_int_equal(fp_parse_u64("+1", 0, 100, &v), -EINVAL);
	assert_int_equal(fp_parse_u64(" 1", 0, 100, &v), -EINVAL);
	assert_int_equal(fp_parse_u64("1 ", 0, 100, &v), -EINVAL);
	assert_int_equal(fp_parse_u64("1x", 0, 100, &v), -EINVAL);
	assert_int_equal(fp_parse_u64("", 0, 100, &v), -EINVAL);
	assert_int_equal(fp_parse_u64(NULL, 0, 100, &v), -EINVAL);
}

static void test_i64(void **state)
{
	int64_t v = 0;

	(void)state;
	assert_int_equal(fp_parse_i64("-5", -10, 10, &v), 0);
	assert_int_equal(v, -5);
	assert_int_equal(fp_parse_i64("-11", -10, 10, &v), -ERANGE);
	assert_int_equal(fp_parse_i64("--1", -10, 10, &v), -EINVAL);
	assert_int_equal(fp_parse_i64("-", -10, 10, &v), -EINVAL);
}

static void test_double(void **state)
{
	double v = 0;

	(void)state;
	assert_int_equal(fp_parse_double("0.5", 0, 1, &v), 0);
	assert_true(v == 0.5);
	assert_int_equal(fp_parse_double("1e-3", 0, 1, &v), 0);
	assert_true(v == 1e-3);
	assert_int_equal(fp_parse_double("1.5", 0, 1, &v), -ERANGE);
	assert_int_equal(fp_parse_double("nan", 0, 1, &v), -EINVAL);
	assert_int_equal(fp_parse_double("inf", 0, 1e300, &v), -EINVAL);
	assert_int_equal(fp_parse_double("0.5x", 0, 1, &v), -EINVAL);
	assert_int_equal(fp_parse_double("", 0, 1, &v), -EINVAL);
	assert_int_equal(fp_parse_double(" 0.5", 0, 1, &v), -EINVAL);
}

static void test_bool(void **state)
{
	bool b = false;

	(void)state;
	assert_int_equal(fp_parse_bool("YES", &b), 0);
	assert_true(b);
	assert_int_equal(fp_parse_bool("off", &b), 0);
	assert_false(b);
	assert_int_equal(fp_parse_bool("2", &b), -EINVAL);
	assert_int_equal(fp_parse_bool("", &b), -EINVAL);
}

static void test_duration_size(void **state)
{
	uint64_t v = 0;

	(void)state;
	assert_int_equal(fp_parse_duration_ms("250ms", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, 250);
	assert_int_equal(fp_parse_duration_ms("30s", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, 30000);
	assert_int_equal(fp_parse_duration_ms("5m", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, 300000);
	assert_int_equal(fp_parse_duration_ms("2h", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, 7200000);
	assert_int_equal(fp_parse_duration_ms("7", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, 7000);
	assert_int_equal(fp_parse_duration_ms("7d", 0, UINT64_MAX, &v), -EINVAL);
	assert_int_equal(fp_parse_duration_ms("ms", 0, UINT64_MAX, &v), -EINVAL);
	assert_int_equal(fp_parse_duration_ms("1s", 2000, UINT64_MAX, &v), -ERANGE);
	assert_int_equal(fp_parse_duration_ms("18446744073709551615h", 0, UINT64_MAX, &v), -ERANGE);

	assert_int_equal(fp_parse_size("4MiB", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, 4u << 20);
	assert_int_equal(fp_parse_size("64k", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, 64u << 10);
	assert_int_equal(fp_parse_size("2G", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, 2ull << 30);
	assert_int_equal(fp_parse_size("512", 0, UINT64_MAX, &v), 0);
	assert_int_equal(v, 512);
	assert_int_equal(fp_parse_size("1T", 0, UINT64_MAX, &v), -EINVAL);
	assert_int_equal(fp_parse_size("17179869184G", 0, UINT64_MAX, &v), -ERANGE);
}

static void test_nm(void **state)
{
	unsigned n = 0, m = 0;

	(void)state;
	assert_int_equal(fp_parse_nm("2:4", &n, &m), 0);
	assert_int_equal(n, 2);
	assert_int_equal(m, 4);
	assert_int_equal(fp_parse_nm("4:8", &n, &m), 0);
	assert_int_equal(fp_parse_nm("4:4", &n, &m), -ERANGE);
	assert_int_equal(fp_parse_nm("0:4", &n, &m), -EINVAL);
	assert_int_equal(fp_parse_nm("2:", &n, &m), -EINVAL);
	assert_int_equal(fp_parse_nm(":4", &n, &m), -EINVAL);
	assert_int_equal(fp_parse_nm("24", &n, &m), -EINVAL);
	assert_int_equal(fp_parse_nm("2:65", &n, &m), -EINVAL);
	assert_int_equal(fp_parse_nm("99999999999999999999:4", &n, &m), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_u64),	      cmocka_unit_test(test_i64),
		cmocka_unit_test(test_double),	      cmocka_unit_test(test_bool),
		cmocka_unit_test(test_duration_size), cmocka_unit_test(test_nm),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
