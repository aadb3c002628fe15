/*
 * dtype.h conversions against naive arithmetic references: every F16 and BF16 pattern widened,
 * and f32 -> F16/BF16 rounding (ties to even, overflow, NaN, subnormals) checked against a
 * nearest-value search over the format's patterns.
 */
#include "test.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "dtype.h"

/* Value of a binary16 pattern by arithmetic (ldexp), not by bit moves. */
static double ref_f16(uint16_t h)
{
	int sign = h >> 15, exp = (h >> 10) & 31, mant = h & 1023;
	double v;

	if (exp == 31)
		v = mant ? NAN : INFINITY;
	else if (exp == 0)
		v = ldexp((double)mant, -24);
	else
		v = ldexp(1.0 + mant / 1024.0, exp - 15);
	return sign ? -v : v;
}

/* Value of a bfloat16 pattern by arithmetic. */
static double ref_bf16(uint16_t h)
{
	int sign = h >> 15, exp = (h >> 7) & 255, mant = h & 127;
	double v;

	if (exp == 255)
		v = mant ? NAN : INFINITY;
	else if (exp == 0)
		v = ldexp((double)mant, -133);
	else
		v = ldexp(1.0 + mant / 128.0, exp - 127);
	return sign ? -v : v;
}

static void check_widen(double ref, float got, uint16_t h)
{
	if (isnan(ref)) {
		assert_true(isnan(got));
	} else {
		assert_true((double)got == ref);
		assert_true((double)(float)ref == ref); /* exactly representable */
	}
	assert_int_equal(!!signbit(got), h >> 15);
}

static void test_f16_to_f32_all(void **state)
{
	for (uint32_t h = 0; h < 65536; h++) {
		float got = fp_f16_to_f32((uint16_t)h);
		uint32_t u = fp_f32_bits(got);

		check_widen(ref_f16((uint16_t)h), got, (uint16_t)h);
		if (isnan(got)) { /* payload in the top mantissa bits, quiet bit set */
			assert_int_equal((u >> 13) & 0x3ff, (h & 0x3ff) | 0x200);
			assert_true(u & 0x00400000u);
		}
	}
	/* spot values */
	assert_true(fp_f16_to_f32(0x3c00) == 1.0f);
	assert_true(fp_f16_to_f32(0x7bff) == 65504.0f);
	assert_true(fp_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
	assert_true(fp_f16_to_f32(0x03ff) == ldexpf(1023.0f, -24));
	assert_true(isinf(fp_f16_to_f32(0xfc00)) && fp_f16_to_f32(0xfc00) < 0);
}

static void test_bf16_to_f32_all(void **state)
{
	for (uint32_t h = 0; h < 65536; h++) {
		float got = fp_bf16_to_f32((uint16_t)h);

		check_widen(ref_bf16((uint16_t)h), got, (uint16_t)h);
		assert_int_equal(fp_f32_bits(got), h << 16); /* pure extension, NaN payload kept */
	}
}

/*
 * Nearest pattern to x by search: positive patterns 0..inf_bits are monotonic in value; the
 * infinity pattern stands for the next power of two (65536 or 2^128), so rounding with an
 * unbounded exponent and overflowing to infinity is the same search. Ties go to the even
 * pattern.
 */
static uint16_t ref_round(float x, double (*val)(uint16_t), uint16_t inf_bits, double inf_val)
{
	double a = fabs((double)x), lo_v, hi_v;
	uint16_t sign = signbit(x) ? 0x8000 : 0, lo = 0, hi = inf_bits, p;

#define V(q) ((q) == inf_bits ? inf_val : val(q))
	if (a >= inf_val)
		return sign | inf_bits;
	while (hi - lo > 1) { /* invariant: V(lo) <= a < V(hi) */
		uint16_t mid = (uint16_t)((lo + hi) / 2);

		if (V(mid) <= a)
			lo = mid;
		else
			hi = mid;
	}
	lo_v = V(lo);
	hi_v = V(hi);
	if (a - lo_v < hi_v - a)
		p = lo;
	else if (a - lo_v > hi_v - a)
		p = hi;
	else
		p = (lo & 1) ? hi : lo;
#undef V
	return sign | p;
}

static void check_f16(float x)
{
	uint16_t want = ref_round(x, ref_f16, 0x7c00, 65536.0), got = fp_f32_to_f16(x);

	if (got != want)
		fail_msg("f32 %a (0x%08x) -> f16 0x%04x, want 0x%04x", (double)x, fp_f32_bits(x),
			 got, want);
}

static void check_bf16(float x)
{
	uint16_t want = ref_round(x, ref_bf16, 0x7f80, ldexp(1.0, 128)), got = fp_f32_to_bf16(x);

	if (got != want)
		fail_msg("f32 %a (0x%08x) -> bf16 0x%04x, want 0x%04x", (double)x, fp_f32_bits(x),
			 got, want);
}

/* Each finite value, each midpoint between neighbours, and one f32 ulp either side of it. */
static void check_midpoints(void (*check)(float), double (*val)(uint16_t), uint16_t inf_bits,
			    double inf_val)
{
	for (uint32_t p = 0; p < inf_bits; p++) {
		double v = val((uint16_t)p),
		       next = p + 1 == inf_bits ? inf_val : val((uint16_t)p + 1);
		float mid = (float)((v + next) / 2);

		assert_true((double)mid == (v + next) / 2); /* exact in f32 */
		for (int s = 0; s < 2; s++) {
			float sg = s ? -1.0f : 1.0f;

			check(sg * (float)v);
			check(sg * mid);
			check(sg * nextafterf(mid, 0.0f));
			check(sg * nextafterf(mid, INFINITY));
		}
	}
}

static void test_f32_to_f16_rounding(void **state)
{
	uint64_t rng = 42;

	check_midpoints(check_f16, ref_f16, 0x7c00, 65536.0);
	for (uint64_t u = 0; u <= 0xffffffffu; u += 251) /* a sweep over all f32 patterns */
		if (!isnan(fp_f32_from_bits((uint32_t)u)))
			check_f16(fp_f32_from_bits((uint32_t)u));
	for (int i = 0; i < 1000000; i++) {
		float x = fp_f32_from_bits((uint32_t)fp_test_rand(&rng));

		if (!isnan(x))
			check_f16(x);
	}
	/* named cases */
	assert_int_equal(fp_f32_to_f16(65504.0f), 0x7bff);
	assert_int_equal(fp_f32_to_f16(65519.99f), 0x7bff);
	assert_int_equal(fp_f32_to_f16(65520.0f),
			 0x7c00); /* tie between max and 2^16: even = inf */
	assert_int_equal(fp_f32_to_f16(1e10f), 0x7c00);
	assert_int_equal(fp_f32_to_f16(-INFINITY), 0xfc00);
	assert_int_equal(fp_f32_to_f16(-0.0f), 0x8000);
	assert_int_equal(fp_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);     /* tie, even down */
	assert_int_equal(fp_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02); /* tie, even up */
	assert_int_equal(fp_f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
	assert_int_equal(fp_f32_to_f16(ldexpf(1.0f, -25)), 0x0000); /* tie with 0: even */
	assert_int_equal(fp_f32_to_f16(nextafterf(ldexpf(1.0f, -25), 1.0f)), 0x0001);
	assert_int_equal(fp_f32_to_f16(ldexpf(3.0f, -25)), 0x0002);    /* tie 1|2: even */
	assert_int_equal(fp_f32_to_f16(ldexpf(1023.5f, -24)), 0x0400); /* up into the normals */
	assert_int_equal(fp_f32_to_f16(-ldexpf(1.0f, -140)), 0x8000);  /* f32 subnormal */
}

static void test_f32_to_bf16_rounding(void **state)
{
	uint64_t rng = 7;

	check_midpoints(check_bf16, ref_bf16, 0x7f80, ldexp(1.0, 128));
	for (uint64_t u = 0; u <= 0xffffffffu; u += 251)
		if (!isnan(fp_f32_from_bits((uint32_t)u)))
			check_bf16(fp_f32_from_bits((uint32_t)u));
	for (int i = 0; i < 1000000; i++) {
		float x = fp_f32_from_bits((uint32_t)fp_test_rand(&rng));

		if (!isnan(x))
			check_bf16(x);
	}
	assert_int_equal(fp_f32_to_bf16(1.0f), 0x3f80);
	assert_int_equal(fp_f32_to_bf16(fp_f32_from_bits(0x3f808000)), 0x3f80); /* tie, even */
	assert_int_equal(fp_f32_to_bf16(fp_f32_from_bits(0x3f818000)), 0x3f82); /* tie, even up */
	assert_int_equal(fp_f32_to_bf16(fp_f32_from_bits(0x7f7fffff)), 0x7f80); /* FLT_MAX: inf */
	assert_int_equal(fp_f32_to_bf16(fp_f32_from_bits(0x7f7f7fff)), 0x7f7f);
	assert_int_equal(fp_f32_to_bf16(-INFINITY), 0xff80);
	assert_int_equal(fp_f32_to_bf16(fp_f32_from_bits(0x00008000)), 0x0000); /* subnormal tie */
	assert_int_equal(fp_f32_to_bf16(fp_f32_from_bits(0x00018000)), 0x0002);
	assert_int_equal(fp_f32_to_bf16(fp_f32_from_bits(0x80008001)), 0x8001);
}

static void test_nan_and_roundtrip(void **state)
{
	/* every non-NaN pattern survives widen -> narrow; every NaN stays a NaN of its sign */
	for (uint32_t h = 0; h < 65536; h++) {
		uint16_t r16 = fp_f32_to_f16(fp_f16_to_f32((uint16_t)h));
		uint16_t rb = fp_f32_to_bf16(fp_bf16_to_f32((uint16_t)h));

		if ((h & 0x7fff) > 0x7c00) {
			assert_true((r16 & 0x7fff) > 0x7c00);
			assert_int_equal(r16 & 0x8000, h & 0x8000);
		} else {
			assert_int_equal(r16, h);
		}
		if ((h & 0x7fff) > 0x7f80) {
			assert_true((rb & 0x7fff) > 0x7f80);
			assert_true(rb & 0x0040); /* quiet */
			assert_int_equal(rb & 0x8000, h & 0x8000);
		} else {
			assert_int_equal(rb, h);
		}
	}
	/* NaNs whose payload sits only in the low f32 bits must not become infinities */
	for (uint32_t low = 1; low < 0x2000; low += 0x7f) {
		assert_true((fp_f32_to_f16(fp_f32_from_bits(0x7f800000u | low)) & 0x3ff) != 0);
		assert_true((fp_f32_to_f16(fp_f32_from_bits(0xff800000u | low)) & 0x8000) != 0);
		assert_true((fp_f32_to_bf16(fp_f32_from_bits(0x7f800000u | low)) & 0x7f) != 0);
	}
	assert_int_equal(fp_f32_to_f16(NAN) & 0x7e00, 0x7e00);
	assert_int_equal(fp_f32_to_bf16(-NAN) & 0xffc0, 0xffc0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_f16_to_f32_all),
		cmocka_unit_test(test_bf16_to_f32_all),
		cmocka_unit_test(test_f32_to_f16_rounding),
		cmocka_unit_test(test_f32_to_bf16_rounding),
		cmocka_unit_test(test_nan_and_roundtrip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
