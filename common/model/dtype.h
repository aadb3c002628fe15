/*
 * Half-precision conversions: IEEE binary16 (F16) and bfloat16 (BF16) to and from binary32.
 *
 * All functions work on bit patterns (uint16_t for the 16-bit formats) so callers can feed bytes
 * straight from a file after a memcpy. Widening is exact for every pattern: subnormals become
 * normal f32 values, infinities stay infinite, NaNs stay NaN with sign and payload kept (the
 * payload is shifted into the top mantissa bits; F16 -> F32 also sets the quiet bit, as the
 * IEEE conversion and the F16C instruction do, while BF16 -> F32 is a pure bit extension that
 * keeps a signalling NaN signalling). Narrowing rounds to nearest, ties to even,
 * independent of the FPU rounding mode; finite values too large for the format become infinity
 * (as IEEE 754 round-to-nearest requires), values too small become a subnormal or a signed zero,
 * and a NaN always stays a NaN (quiet, sign and top payload bits kept).
 *
 * tests/unit/test_dtype.c checks every 16-bit pattern against an ldexp-based reference.
 */
#ifndef FP_DTYPE_H
#define FP_DTYPE_H

#include <stdint.h>
#include <string.h>

/* The bits of f, without aliasing games. */
static inline uint32_t fp_f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

/* The float whose bits are u. */
static inline float fp_f32_from_bits(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

/* bfloat16 -> f32: exact (bf16 is the top half of an f32). */
static inline float fp_bf16_to_f32(uint16_t h)
{
	return fp_f32_from_bits((uint32_t)h << 16);
}

/* f32 -> bfloat16, round to nearest, ties to even; NaN stays a quiet NaN. */
static inline uint16_t fp_f32_to_bf16(float f)
{
	uint32_t u = fp_f32_bits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: truncate, force the quiet bit */
		return (uint16_t)((u >> 16) | 0x0040u);
	/*
	 * Adding 0x7fff (+1 when the kept lsb is odd) carries into bit 16 exactly when the
	 * dropped half is above (or at, for an odd lsb) one half ulp. The encoding is monotonic,
	 * so a carry out of the mantissa bumps the exponent, and from the largest finite value
	 * it reaches 0x7f80 = infinity, which is the IEEE overflow result.
	 */
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

/* IEEE binary16 -> f32: exact for all 65536 patterns. */
static inline float fp_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t mant = h & 0x3ffu;

	if (exp == 0x1f && mant == 0)
		return fp_f32_from_bits(sign | 0x7f800000u);
	if (exp == 0x1f) /* NaN: payload kept, quieted as IEEE conversions (and F16C) do */
		return fp_f32_from_bits(sign | 0x7fc00000u | (mant << 13));
	if (exp != 0) /* normal: rebias 15 -> 127 */
		return fp_f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13));
	if (mant == 0)
		return fp_f32_from_bits(sign);
	/* subnormal mant * 2^-24: shift the leading 1 up to bit 10, one exponent step each */
	exp = 113;
	while (!(mant & 0x400u)) {
		mant <<= 1;
		exp--;
	}
	return fp_f32_from_bits(sign | (exp << 23) | ((mant & 0x3ffu) << 13));
}

/* f32 -> IEEE binary16, round to nearest, ties to even; overflow to Inf; NaN stays NaN. */
static inline uint16_t fp_f32_to_f16(float f)
{
	uint32_t u = fp_f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	uint32_t a = u & 0x7fffffffu;
	uint32_t mant, q, rem, half;
	unsigned shift;

	if (a > 0x7f800000u) /* NaN: keep the top payload bits, force the quiet bit */
		return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
	if (a >= 0x477ff000u) /* >= 65520 = 65504 + half an ulp: rounds (ties-even) to Inf */
		return (uint16_t)(sign | 0x7c00u);
	if (a >= 0x38800000u) {			     /* >= 2^-14: normal binary16 */
		a -= 112u << 23;		     /* rebias the exponent */
		a += 0x0fffu + ((a >> 13) & 1u);     /* RNE on the 13 dropped bits */
		return (uint16_t)(sign | (a >> 13)); /* a carry into the exponent is right */
	}
	if (a < 0x33000000u) /* < 2^-25 (half the smallest subnormal): signed zero */
		return sign;
	/* subnormal result: value / 2^-24 = mant * 2^(exp - 126), exp in [102, 112] */
	mant = (a & 0x7fffffu) | 0x800000u;
	shift = 126u - (a >> 23); /* 14..24 */
	q = mant >> shift;
	rem = mant & ((1u << shift) - 1u);
	half = 1u << (shift - 1u);
	if (rem > half || (rem == half && (q & 1u)))
		q++; /* may reach 0x400, the smallest normal: still the right encoding */
	return (uint16_t)(sign | q);
}

#endif
