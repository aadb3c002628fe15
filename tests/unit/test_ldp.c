/*
 * Local differential privacy (ldp.h): exact coin thresholds, the bulk randomizer against the
 * bit-at-a-time reference, and the statistical checks of privacy.md §1.7 with fixed seeds:
 * flip rates per direction within binomial bounds, ε recovered from the empirical rates,
 * debiased counts unbiased (with clients on different mechanisms), top-k unchanged by
 * debiasing, Laplace / Gaussian shape (moments and Kolmogorov-Smirnov), clip before noise,
 * the analytic Gaussian σ against a numerical integral, accounting, and the memo file.
 *
 * Tolerances: every statistical check is |observed - expected| < 5 standard deviations of the
 * observed statistic under the correct implementation (two-sided false alarm 5.7e-7 per check;
 * with fixed seeds the outcome is deterministic anyway). The sizes are chosen so that the
 * plausible bugs (p and q swapped, the Laplace scale off by 2, a client debiased with the
 * wrong mechanism) move the statistic by far more than 5 sigma; each comment says by how much.
 */
#define FP_LDP_TEST_RNG 1

#include "test.h"

#include <errno.h>
#include <math.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "ldp.h"
#include "mask.h"
#include "score.h"
#include "select.h"

#define Z 5.0 /* tolerance in standard deviations */

static void rand_mask(uint8_t *m, size_t nbits, uint64_t *st, unsigned permille)
{
	memset(m, 0, fp_mask_bytes(nbits));
	for (size_t p = 0; p < nbits; p++)
		if (fp_test_rand(st) % 1000 < permille)
			fp_mask_put(m, p, true);
}

static void seeded(struct fp_ldp_rng *r, uint64_t seed)
{
	assert_int_equal(fp_ldp_rng_init_test(r, seed), 0);
	assert_true(r->deterministic);
}

/* |obs - n p| < Z sqrt(n p (1-p)) for a Binomial(n, p) count. */
static void assert_binomial(uint64_t obs, uint64_t n, double p, const char *what)
{
	double mean = (double)n * p, sd = sqrt((double)n * p * (1 - p));
	double z = ((double)obs - mean) / sd;

	if (!(fabs(z) < Z))
		fail_msg("%s: %llu of %llu, expected %.1f (z = %.2f)", what,
			 (unsigned long long)obs, (unsigned long long)n, mean, z);
}

/* ---- generator ---- */

static void test_rng_streams(void **state)
{
	struct fp_ldp_rng a, b, c, s1, s2;
	uint8_t x[3000], y[3000];
	uint64_t ones = 0;

	(void)state;
	seeded(&a, 42);
	seeded(&b, 42);
	seeded(&c, 43);
	fp_ldp_rng_bytes(&a, x, sizeof(x));
	fp_ldp_rng_bytes(&b, y, sizeof(y));
	assert_memory_equal(x, y, sizeof(x));
	fp_ldp_rng_bytes(&c, y, sizeof(y));
	assert_memory_not_equal(x, y, sizeof(x));

	/* the stream is ChaCha20 keyed by BLAKE2b(tag || seed), nonce = refill counter */
	{
		static const char tag[] = "fedprune ldp test rng";
		uint8_t msg[sizeof(tag) - 1 + 8] = { 0 }, key[32], ks[2048], n[8] = { 0 };

		memcpy(msg, tag, sizeof(tag) - 1);
		msg[sizeof(tag) - 1] = 42;
		crypto_generichash(key, 32, msg, sizeof(msg), NULL, 0);
		crypto_stream_chacha20(ks, 1024, n, key);
		n[0] = 1;
		crypto_stream_chacha20(ks + 1024, 1024, n, key);
		assert_memory_equal(x, ks, 2048);
	}
	/* u32 is little-endian, words in stream order */
	seeded(&a, 42);
	assert_int_equal(fp_ldp_rng_u32(&a), (uint32_t)x[0] | (uint32_t)x[1] << 8 |
						     (uint32_t)x[2] << 16 | (uint32_t)x[3] << 24);

	/* the system generator: two instances differ, and it is not stuck (lax: monobit) */
	assert_int_equal(fp_ldp_rng_init(&s1), 0);
	assert_int_equal(fp_ldp_rng_init(&s2), 0);
	assert_false(s1.deterministic);
	fp_ldp_rng_bytes(&s1, x, sizeof(x));
	fp_ldp_rng_bytes(&s2, y, sizeof(y));
	assert_memory_not_equal(x, y, sizeof(x));
	for (size_t i = 0; i < sizeof(x); i++)
		ones += (uint64_t)__builtin_popcount(x[i]);
	assert_binomial(ones, 8 * sizeof(x), 0.5, "system rng monobit");
	fp_ldp_rng_clear(&s1);
	for (size_t i = 0; i < sizeof(s1.key); i++)
		assert_int_equal(s1.key[i], 0);
	fp_ldp_rng_clear(&s2);
}

/* ---- mechanism parameters ---- */

static void test_rr_params(void **state)
{
	struct fp_ldp_rr rr;
	static const double eps[] = { 1e-3, 0.1, 0.5, 1, 2, 3, 5, 10, 20 };

	(void)state;
	for (size_t i = 0; i < sizeof(eps) / sizeof(eps[0]); i++) {
		long double p = 1.0L / (1.0L + expl(-(long double)eps[i]));
		long double q = 1.0L / (expl((long double)eps[i]) + 1.0L);

		assert_int_equal(fp_ldp_rr_sym(&rr, eps[i]), 0);
		/* floor(p 2^32) computed independently in long double */
		assert_true(rr.thr1 == (uint64_t)floorl(p * 4294967296.0L));
		assert_true(rr.thr0 == FP_LDP_THR_ONE - rr.thr1);
		assert_true(rr.p == (double)rr.thr1 / 4294967296.0);
		/* achieved ε is below the target by at most 2^-32 / (p q) (one threshold step) */
		assert_true(rr.eps_bit <= eps[i] &&
			    rr.eps_bit >= eps[i] - 0x1p-32 / (double)(p * (1 - p)));
		assert_true(fabs(rr.eps_swap - 2 * rr.eps_bit) < 1e-12);

		assert_int_equal(fp_ldp_rr_oue(&rr, eps[i]), 0);
		assert_true(rr.thr1 == FP_LDP_THR_ONE / 2);
		assert_true(rr.thr0 == (uint64_t)ceill(q * 4294967296.0L));
		assert_true(rr.eps_swap <= eps[i] &&
			    rr.eps_swap >= eps[i] - 0x1p-32 / (double)(q * (1 - q)));
		assert_true(rr.eps_bit < rr.eps_swap);
	}
	assert_int_equal(fp_ldp_rr_sym(&rr, 0), -EINVAL);
	assert_int_equal(fp_ldp_rr_sym(&rr, NAN), -EINVAL);
	assert_int_equal(fp_ldp_rr_sym(&rr, 20.5), -EINVAL);
	assert_int_equal(fp_ldp_rr_oue(&rr, -1), -EINVAL);
	assert_int_equal(fp_ldp_rr_oue(&rr, INFINITY), -EINVAL);
	assert_int_equal(fp_ldp_rr_generic(&rr, 0.3, 0.3), -EINVAL);
	assert_int_equal(fp_ldp_rr_generic(&rr, 0.2, 0.3), -EINVAL);
	assert_int_equal(fp_ldp_rr_generic(&rr, 1.0, 0.3), -EINVAL);
	assert_int_equal(fp_ldp_rr_generic(&rr, 0.5, 0), -EINVAL);
	assert_int_equal(fp_ldp_rr_generic(&rr, NAN, 0.1), -EINVAL);
	assert_int_equal(fp_ldp_rr_generic(&rr, 0.75, 0.25), 0);
	assert_true(rr.thr1 == 3ull << 30 && rr.thr0 == 1ull << 30);
	assert_true(fabs(rr.eps_bit - log(3)) < 1e-15 && fabs(rr.eps_swap - log(9)) < 1e-15);

	/* the memo reader's consistency check */
	assert_int_equal(fp_ldp_rr_sym(&rr, 2), 0);
	{
		struct fp_ldp_rr t;

		assert_int_equal(fp_ldp_rr_from_thresholds(&t, FP_LDP_RR_SYM, 2, rr.thr1, rr.thr0),
				 0);
		assert_memory_equal(&t, &rr, sizeof(t));
		assert_int_equal(
			fp_ldp_rr_from_thresholds(&t, FP_LDP_RR_SYM, 2, rr.thr1 + 1, rr.thr0 - 1),
			-EINVAL);
		assert_int_equal(fp_ldp_rr_from_thresholds(&t, FP_LDP_RR_OUE, 2, rr.thr1, rr.thr0),
				 -EINVAL);
		assert_int_equal(fp_ldp_rr_from_thresholds(&t, FP_LDP_RR_GENERIC, 0, 5, 5),
				 -EINVAL);
		assert_int_equal(
			fp_ldp_rr_from_thresholds(&t, FP_LDP_RR_GENERIC, 0, FP_LDP_THR_ONE, 5),
			-EINVAL);
		assert_int_equal(fp_ldp_rr_from_thresholds(&t, 7, 2, rr.thr1, rr.thr0), -EINVAL);
	}

	/* names */
	{
		enum fp_ldp_mech m;
		enum fp_ldp_noise n;

		assert_int_equal(fp_ldp_mech_parse("oue", &m), 0);
		assert_int_equal(m, FP_LDP_RR_OUE);
		assert_string_equal(fp_ldp_mech_name(FP_LDP_RR_SYM), "sym");
		assert_int_equal(fp_ldp_mech_parse("OUE", &m), -EINVAL);
		assert_int_equal(fp_ldp_noise_parse("gauss-classic", &n), 0);
		assert_int_equal(n, FP_LDP_GAUSS_CLASSIC);
		assert_int_equal(fp_ldp_noise_parse("gaussian", &n), -EINVAL);
	}
}

/*
 * The coin is 1 iff u < threshold, exactly: feed hand-made words around the thresholds
 * through the fast path (an off-by-one, `<=`, or swapped thresholds fail here).
 */
static void test_rr_exact_coins(void **state)
{
	struct fp_ldp_rng r;
	struct fp_ldp_rr rr;
	uint8_t bits[2];
	uint32_t w[12];

	(void)state;
	assert_int_equal(fp_ldp_rr_generic(&rr, 0.75, 0.25), 0);
	w[0] = (uint32_t)rr.thr1 - 1; /* x=1: 1 */
	w[1] = (uint32_t)rr.thr1;     /* x=1: 0 */
	w[2] = (uint32_t)rr.thr0 - 1; /* x=0: 1 */
	w[3] = (uint32_t)rr.thr0;     /* x=0: 0 */
	w[4] = 0;		      /* x=1: 1 */
	w[5] = 0xffffffffu;	      /* x=0: 0 */
	w[6] = (uint32_t)rr.thr0;     /* x=1: 1 */
	w[7] = (uint32_t)rr.thr1 - 1; /* x=0: 0 */
	w[8] = (uint32_t)rr.thr0 - 1; /* x=1: 1 (tail byte, nbits = 11) */
	w[9] = 0;		      /* x=0: 1 */
	w[10] = 0xffffffffu;	      /* x=1: 0 */
	w[11] = 0x12345678u;
	seeded(&r, 1);
	for (int i = 0; i < 12; i++)
		for (int k = 0; k < 4; k++)
			r.buf[4 * i + k] = (uint8_t)(w[i] >> (8 * k));
	r.pos = 0;
	/* x bits: 1,1,0,0,1,0,1,0 | 1,0,1 */
	bits[0] = 0x1 | 0x2 | 0x10 | 0x40;
	bits[1] = 0x1 | 0x4;
	fp_ldp_rr_mask(bits, 11, &rr, &r);
	assert_int_equal(bits[0], 0x1 | 0x4 | 0x10 | 0x40);
	assert_int_equal(bits[1], 0x1 | 0x2);
	assert_int_equal(r.pos, 44);
}

/* The fast path equals the one-bit reference, across buffer boundaries and odd sizes. */
static void test_rr_fast_vs_naive(void **state)
{
	static const size_t sizes[] = { 0, 1, 7, 8, 9, 63, 64, 65, 255, 1000, 8 * 1024 + 3 };
	uint8_t a[1100], b[1100];
	uint64_t st = 7;

	(void)state;
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		for (int skip = 0; skip < 9; skip++) {
			struct fp_ldp_rng r1, r2;
			struct fp_ldp_rr rr;
			size_t n = sizes[s];

			if (skip % 3 == 0)
				assert_int_equal(fp_ldp_rr_sym(&rr, 0.5 + skip), 0);
			else if (skip % 3 == 1)
				assert_int_equal(fp_ldp_rr_oue(&rr, 1.0 + skip), 0);
			else
				assert_int_equal(fp_ldp_rr_generic(&rr, 0.6, 0.1), 0);
			rand_mask(a, n, &st, 300 + 50 * (unsigned)skip);
			memset(a + fp_mask_bytes(n), 0, sizeof(a) - fp_mask_bytes(n));
			memcpy(b, a, sizeof(a));
			seeded(&r1, 100 + s);
			seeded(&r2, 100 + s);
			/* start at different offsets inside the 1 KiB block */
			for (int k = 0; k < skip * 37; k++) {
				fp_ldp_rng_u32(&r1);
				fp_ldp_rng_u32(&r2);
			}
			fp_ldp_rr_mask(a, n, &rr, &r1);
			fp_ldp_rr_mask_naive(b, n, &rr, &r2);
			assert_memory_equal(a, b, sizeof(a));
			assert_int_equal(fp_ldp_rng_u32(&r1), fp_ldp_rng_u32(&r2));
			if (n % 8)
				assert_int_equal(a[n / 8] >> (n % 8), 0);
		}
	}
}

/*
 * A1 + A2 + A5: flip rates per direction, and ε from the empirical rates. n = 2^21 bits,
 * density 0.3 (n1 ~ 629k ones, n0 ~ 1.47M zeros).
 *
 * Sensitivity, symmetric ε = 1 (q = 0.2689): sd of the 0->1 count is sqrt(n0 q (1-q)) ~ 538,
 * so 5 sd is 0.68% of its mean; swapping p and q moves the rate from 0.269 to 0.731 (~ 1300
 * sd). For OUE the 1->0 rate is 1/2 exactly and 0->1 is q = 0.1192 at ε = 2: a symmetric coin
 * instead would be off by hundreds of sd. ε recovered: the delta method gives
 * sd(ln p^/q^) = sqrt((1-p)/(n1 p) + (1-q)/(n0 q)) ~ 0.0027 at ε = 1.
 */
static void check_rates(const struct fp_ldp_rr *rr, uint64_t seed)
{
	const size_t n = (size_t)1 << 21;
	uint8_t *x = malloc(n / 8), *y = malloc(n / 8);
	uint64_t st = seed, n1 = 0, n0, f10 = 0, f01 = 0, y1x1, y1x0;
	double p, q, eps_hat, sd, lhat;
	struct fp_ldp_rng r;

	assert_non_null(x);
	assert_non_null(y);
	rand_mask(x, n, &st, 300);
	memcpy(y, x, n / 8);
	seeded(&r, seed);
	fp_ldp_rr_mask(y, n, rr, &r);
	for (size_t j = 0; j < n; j++) {
		bool a = fp_mask_get(x, j), b = fp_mask_get(y, j);

		n1 += a;
		f10 += a && !b;
		f01 += !a && b;
	}
	n0 = n - n1;
	assert_binomial(f10, n1, 1 - rr->p, "flips 1->0");
	assert_binomial(f01, n0, rr->q, "flips 0->1");

	/* A2: ε from the rates, within Z delta-method sd */
	y1x1 = n1 - f10;
	y1x0 = f01;
	p = (double)y1x1 / (double)n1;
	q = (double)y1x0 / (double)n0;
	if (rr->mech == FP_LDP_RR_SYM) {
		eps_hat = log(p / q);
		sd = sqrt((1 - rr->p) / ((double)n1 * rr->p) + (1 - rr->q) / ((double)n0 * rr->q));
		lhat = rr->eps_bit;
	} else {
		eps_hat = log(p * (1 - q) / (q * (1 - p)));
		sd = sqrt(1 / ((double)n1 * rr->p * (1 - rr->p)) +
			  1 / ((double)n0 * rr->q * (1 - rr->q)));
		lhat = rr->eps_swap;
	}
	if (!(fabs(eps_hat - lhat) < Z * sd))
		fail_msg("eps recovered %.5f, configured %.5f (sd %.5f)", eps_hat, lhat, sd);
	/* and against the requested ε (achieved differs by < 1e-6) */
	assert_true(fabs(eps_hat - rr->eps) < Z * sd + 1e-6);

	/* A5: the flip decision does not depend on the data beyond the mechanism: among ones,
	 * flips in the first and second half of the vector have the same rate (two-proportion) */
	{
		uint64_t a1 = 0, a10 = 0, b1 = 0, b10 = 0;
		double pa, pb, pp, zz;

		for (size_t j = 0; j < n; j++) {
			if (!fp_mask_get(x, j))
				continue;
			if (j < n / 2) {
				a1++;
				a10 += !fp_mask_get(y, j);
			} else {
				b1++;
				b10 += !fp_mask_get(y, j);
			}
		}
		pa = (double)a10 / (double)a1;
		pb = (double)b10 / (double)b1;
		pp = (double)(a10 + b10) / (double)(a1 + b1);
		zz = (pa - pb) / sqrt(pp * (1 - pp) * (1.0 / (double)a1 + 1.0 / (double)b1));
		assert_true(fabs(zz) < Z);
	}
	free(x);
	free(y);
}

static void test_rr_rates(void **state)
{
	struct fp_ldp_rr rr;

	(void)state;
	assert_int_equal(fp_ldp_rr_sym(&rr, 1), 0);
	check_rates(&rr, 11);
	assert_int_equal(fp_ldp_rr_sym(&rr, 3), 0);
	check_rates(&rr, 12);
	assert_int_equal(fp_ldp_rr_oue(&rr, 2), 0);
	check_rates(&rr, 13);
	assert_int_equal(fp_ldp_rr_oue(&rr, 0.5), 0);
	check_rates(&rr, 14);
}

/*
 * The same with the system CSPRNG (fresh seed every run) at a lax 6 sd, to catch a stuck
 * generator: a constant stream would give rates 0 or 1.
 */
static void test_rr_rates_system(void **state)
{
	const size_t n = 1 << 16;
	uint8_t x[(1 << 16) / 8];
	struct fp_ldp_rng r;
	struct fp_ldp_rr rr;
	uint64_t ones = 0;

	(void)state;
	memset(x, 0, sizeof(x));
	assert_int_equal(fp_ldp_rr_sym(&rr, 1), 0);
	assert_int_equal(fp_ldp_rng_init(&r), 0);
	fp_ldp_rr_mask(x, n, &rr, &r);
	ones = fp_mask_count(x, n);
	assert_true(fabs((double)ones - (double)n * rr.q) < 6 * sqrt((double)n * rr.q * rr.p));
	fp_ldp_rng_clear(&r);
}

/* ---- debiasing ---- */

/*
 * A3: N = 24 clients with different mechanisms (sym and OUE at ε from 0.5 to 4), d = 2^17
 * weights, client i prunes weight j with a probability depending on j, so the true counts C_j
 * spread over 0..N. The debiased sum acc_j estimates C_j; the errors e_j = acc_j - C_j are
 * independent with known variances v_j = Σ_i var_ij. Check mean(e) within Z sqrt(Σv)/d, and
 * mean(e²) against mean(v) within Z sd(e²)/sqrt(d).
 *
 * Sensitivity: debiasing one OUE ε=4 client with the symmetric ε=4 parameters halves its
 * contribution (p - q is 0.482, not 0.964): a bias of -0.5 on every weight it prunes, about
 * -0.25 on average, while the tolerance on the mean is below 0.1 votes.
 */
static void test_debias_unbiased(void **state)
{
	enum { N = 24 };
	const size_t d = (size_t)1 << 17;
	static const double eps[] = { 0.5, 1, 2, 4 };
	struct fp_ldp_rr rr[N];
	uint8_t *x = malloc(d / 8), *y = malloc(d / 8);
	double *acc = calloc(d, sizeof(double)), *accn = calloc(d, sizeof(double));
	double *var = calloc(d, sizeof(double));
	float *accf = calloc(d, sizeof(float));
	uint16_t *count = calloc(d, sizeof(uint16_t));
	double se = 0, sv = 0, se2 = 0, se4 = 0, mean_e, mean_e2, sd_e2;
	uint64_t st = 99;

	(void)state;
	assert_true(x && y && acc && accn && var && accf && count);
	for (int i = 0; i < N; i++) {
		struct fp_ldp_rng r;

		if (i % 2)
			assert_int_equal(fp_ldp_rr_oue(&rr[i], eps[(i / 2) % 4]), 0);
		else
			assert_int_equal(fp_ldp_rr_sym(&rr[i], eps[(i / 2) % 4]), 0);
		memset(x, 0, d / 8);
		for (size_t j = 0; j < d; j++) {
			/* weight j is pruned by client i with probability (j % 11) / 10, capped */
			unsigned pr = (unsigned)(j % 11) * 100;

			if (fp_test_rand(&st) % 1000 < pr)
				fp_mask_put(x, j, true);
		}
		for (size_t j = 0; j < d; j++) {
			bool b = fp_mask_get(x, j);
			double pp = b ? rr[i].p : rr[i].q;

			count[j] += b;
			var[j] += pp * (1 - pp) / ((rr[i].p - rr[i].q) * (rr[i].p - rr[i].q));
		}
		memcpy(y, x, d / 8);
		seeded(&r, 1000 + (uint64_t)i);
		fp_ldp_rr_mask(y, d, &rr[i], &r);
		fp_ldp_debias_add(acc, y, d, &rr[i]);
		fp_ldp_debias_add_naive(accn, y, d, &rr[i]);
		fp_ldp_debias_add_f32(accf, y, d, &rr[i]);
	}
	for (size_t j = 0; j < d; j++) {
		double e = acc[j] - count[j];

		assert_true(acc[j] == accn[j]); /* same expressions, same order */
		assert_true(fabs(accf[j] - acc[j]) < 1e-4);
		se += e;
		se2 += e * e;
		se4 += e * e * e * e;
		sv += var[j];
	}
	mean_e = se / (double)d;
	mean_e2 = se2 / (double)d;
	sd_e2 = sqrt(se4 / (double)d - mean_e2 * mean_e2);
	if (!(fabs(mean_e) < Z * sqrt(sv) / (double)d))
		fail_msg("debiased mean error %.5f, tolerance %.5f", mean_e,
			 Z * sqrt(sv) / (double)d);
	if (!(fabs(mean_e2 - sv / (double)d) < Z * sd_e2 / sqrt((double)d)))
		fail_msg("debiased variance %.4f, formula %.4f (tolerance %.4f)", mean_e2,
			 sv / (double)d, Z * sd_e2 / sqrt((double)d));
	free(x);
	free(y);
	free(acc);
	free(accn);
	free(var);
	free(accf);
	free(count);
}

/*
 * Many trials of the same small vector: 8 weights with true counts 0, 1, 3, 5, 8, 10, 12, 12
 * of N = 12 clients (sym ε = 1 for half, OUE ε = 2 for the rest), T = 4000 trials. The mean of
 * each weight's estimate is within Z sqrt(v_j / T) of its count.
 */
static void test_debias_trials(void **state)
{
	enum { N = 12, T = 4000, D = 8 };
	static const int truth[D] = { 0, 1, 3, 5, 8, 10, 12, 12 };
	struct fp_ldp_rr sym, oue;
	double sum[D] = { 0 }, v[D] = { 0 };
	struct fp_ldp_rng r;

	(void)state;
	assert_int_equal(fp_ldp_rr_sym(&sym, 1), 0);
	assert_int_equal(fp_ldp_rr_oue(&oue, 2), 0);
	seeded(&r, 5);
	for (int t = 0; t < T; t++) {
		double acc[D] = { 0 };

		for (int i = 0; i < N; i++) {
			const struct fp_ldp_rr *rr = i < N / 2 ? &sym : &oue;
			uint8_t b = 0;

			for (int j = 0; j < D; j++)
				if (i < truth[j])
					b |= (uint8_t)(1u << j);
			fp_ldp_rr_mask(&b, D, rr, &r);
			fp_ldp_debias_add(acc, &b, D, rr);
		}
		for (int j = 0; j < D; j++)
			sum[j] += acc[j];
	}
	for (int j = 0; j < D; j++) {
		for (int i = 0; i < N; i++) {
			const struct fp_ldp_rr *rr = i < N / 2 ? &sym : &oue;
			double pp = i < truth[j] ? rr->p : rr->q;

			v[j] += pp * (1 - pp) / ((rr->p - rr->q) * (rr->p - rr->q));
		}
		if (!(fabs(sum[j] / T - truth[j]) < Z * sqrt(v[j] / T)))
			fail_msg("weight %d: mean estimate %.4f, true %d (sd %.4f)", j, sum[j] / T,
				 truth[j], sqrt(v[j] / T));
	}
}

/*
 * A4: with a common mechanism, debiasing is increasing and affine, so fp_select on the keys
 * from fp_ldp_debias_counts picks exactly the weights the raw vote counts pick (ties map to
 * equal keys, broken by index either way); the streaming accumulators agree with it to 1e-9.
 */
static void test_debias_topk(void **state)
{
	enum { N = 10, ROWS = 32, COLS = 100 };
	const size_t d = ROWS * COLS;
	struct fp_ldp_rr rr;
	double acc[ROWS * COLS] = { 0 }, fromc[ROWS * COLS];
	float keys[ROWS * COLS], raw[ROWS * COLS], keysf[ROWS * COLS];
	float accf[ROWS * COLS] = { 0 };
	uint16_t counts[ROWS * COLS] = { 0 };
	uint8_t x[ROWS * COLS / 8], m1[ROWS * COLS / 8], m2[ROWS * COLS / 8], m3[ROWS * COLS / 8];
	struct fp_select_spec spec;
	struct fp_metric_src src = { .kind = FP_METRIC_GIVEN, .rows = ROWS, .cols = COLS };
	struct fp_ldp_rng r;
	uint64_t st = 3;

	(void)state;
	assert_int_equal(fp_ldp_rr_sym(&rr, 1.5), 0);
	seeded(&r, 77);
	for (int i = 0; i < N; i++) {
		rand_mask(x, d, &st, 500);
		fp_ldp_rr_mask(x, d, &rr, &r);
		for (size_t j = 0; j < d; j++)
			counts[j] += fp_mask_get(x, j);
		fp_ldp_debias_add(acc, x, d, &rr);
		fp_ldp_debias_add_f32(accf, x, d, &rr);
	}
	fp_ldp_debias_counts(fromc, counts, d, N, &rr);
	for (size_t j = 0; j < d; j++) {
		assert_true(fabs(fromc[j] - acc[j]) < 1e-9);
		raw[j] = -(float)counts[j];
	}
	assert_int_equal(fp_select_spec_init(&spec, FP_GROUP_LAYER, 0.5, ROWS, COLS), 0);
	src.x = raw;
	assert_int_equal(fp_select(m1, &src, &spec), 0);
	assert_int_equal(fp_mask_count(m1, d), d / 2);
	/* the exact affine map: identical selection, ties included */
	fp_ldp_debias_keys(keys, fromc, d);
	src.x = keys;
	assert_int_equal(fp_select(m2, &src, &spec), 0);
	assert_memory_equal(m1, m2, sizeof(m1));
	/*
	 * Streaming accumulators: equal counts may differ in the last bits (the order of the
	 * additions differs per weight), so ties may be split differently, but the selection is
	 * still a top-k of the counts: every pruned weight has at least the votes of every kept one.
	 */
	for (int pass = 0; pass < 2; pass++) {
		int minp = N + 1, maxk = -1;

		if (pass == 0)
			fp_ldp_debias_keys(keys, acc, d);
		else
			fp_ldp_debias_keys_f32(keysf, accf, d);
		src.x = pass == 0 ? keys : keysf;
		assert_int_equal(fp_select(m3, &src, &spec), 0);
		assert_int_equal(fp_mask_count(m3, d), d / 2);
		for (size_t j = 0; j < d; j++) {
			if (fp_mask_get(m3, j) && counts[j] < minp)
				minp = counts[j];
			if (!fp_mask_get(m3, j) && counts[j] > maxk)
				maxk = counts[j];
		}
		assert_true(minp >= maxk);
	}
}

static void test_variance_pick(void **state)
{
	struct fp_ldp_rr rr, sym;

	(void)state;
	/* research note §1.4 table: ε_swap = 2, f = 0.5: sym 0.92, OUE 1.22; f = 0.01: 0.92 / 0.73 */
	assert_int_equal(fp_ldp_rr_sym(&sym, 1), 0);
	assert_true(fabs(fp_ldp_rr_variance(&sym, 0.5) - 0.92) < 0.005);
	assert_int_equal(fp_ldp_rr_oue(&rr, 2), 0);
	assert_true(fabs(fp_ldp_rr_variance(&rr, 0.5) - 1.22) < 0.005);
	assert_true(fabs(fp_ldp_rr_variance(&rr, 0.01) - 0.73) < 0.005);
	assert_int_equal(fp_ldp_rr_pick(&rr, 2, 0.5), 0);
	assert_int_equal(rr.mech, FP_LDP_RR_SYM);
	assert_true(rr.eps == 1);
	assert_int_equal(fp_ldp_rr_pick(&rr, 2, 0.01), 0);
	assert_int_equal(rr.mech, FP_LDP_RR_OUE);
	assert_true(rr.eps == 2);
	assert_int_equal(fp_ldp_rr_pick(&rr, 2, 1.5), -EINVAL);
	/* symmetric RR variance e^ε/(e^ε-1)^2 whatever the density */
	assert_true(fabs(fp_ldp_rr_variance(&sym, 0.1) - exp(1) / pow(exp(1) - 1, 2)) < 1e-6);
}

/* ---- scores ---- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* KS distance of sorted samples v (n) to the CDF cdf(x; scale). */
static double ks_dist(const double *v, size_t n, double (*cdf)(double, double), double scale)
{
	double dmax = 0;

	for (size_t i = 0; i < n; i++) {
		double f = cdf(v[i], scale);
		double a = fabs(f - (double)i / (double)n),
		       b = fabs((double)(i + 1) / (double)n - f);

		if (a > dmax)
			dmax = a;
		if (b > dmax)
			dmax = b;
	}
	return dmax;
}

static double laplace_cdf(double x, double b)
{
	return x < 0 ? 0.5 * exp(x / b) : 1 - 0.5 * exp(-x / b);
}

static double normal_cdf(double x, double s)
{
	return 0.5 * erfc(-x / (s * M_SQRT2));
}

/*
 * A6: n = 2^18 noisy copies of the mid-range score 0.5 in [0, 1]. Noise = output - 0.5.
 * Laplace(b = Δ/ε): mean within Z sqrt(2 b²/n); E|X| = b within Z b/sqrt(n) (|X| ~ Exp(b));
 * KS distance below sqrt(ln(2/1e-6)/(2n)) = 0.0053 (p > 1e-6). A scale off by a factor 2
 * moves E|X| by 512 sd. Gaussian: mean within Z σ/sqrt(n); variance within Z σ² sqrt(2/n);
 * KS as above.
 */
static void check_shape(enum fp_ldp_noise kind, double eps, double delta, uint64_t seed)
{
	const size_t n = (size_t)1 << 18;
	double *v = malloc(n * sizeof(double)), s1 = 0, s2 = 0, sa = 0, ks, kmax;
	float *x = malloc(n * sizeof(float));
	struct fp_ldp_score sp;
	struct fp_ldp_rng r;

	assert_true(v && x);
	assert_int_equal(fp_ldp_score_init(&sp, kind, 0, 1, eps, delta), 0);
	for (size_t j = 0; j < n; j++)
		x[j] = 0.5f;
	seeded(&r, seed);
	assert_int_equal(fp_ldp_score_apply(x, n, &sp, &r, "t"), 0);
	for (size_t j = 0; j < n; j++) {
		double k = ((double)x[j] - sp.lo) / sp.step;

		v[j] = (double)x[j] - 0.5;
		/* outputs on the grid lo + step * integer (checked where f32 is exact) */
		if (fabs(x[j]) < 4)
			assert_true(k == floor(k));
		s1 += v[j];
		s2 += v[j] * v[j];
		sa += fabs(v[j]);
	}
	s1 /= (double)n;
	s2 /= (double)n;
	sa /= (double)n;
	qsort(v, n, sizeof(double), cmp_double);
	kmax = sqrt(log(2 / 1e-6) / (2.0 * (double)n));
	if (kind == FP_LDP_LAPLACE) {
		double b = sp.scale;

		assert_true(b == 1.0 / eps);
		if (!(fabs(s1) < Z * sqrt(2 * b * b / (double)n)))
			fail_msg("laplace mean %.5f", s1);
		if (!(fabs(sa - b) < Z * b / sqrt((double)n)))
			fail_msg("laplace E|X| %.5f, expected %.5f", sa, b);
		ks = ks_dist(v, n, laplace_cdf, b);
	} else {
		double sg = sp.scale;

		if (!(fabs(s1) < Z * sg / sqrt((double)n)))
			fail_msg("gauss mean %.5f", s1);
		if (!(fabs(s2 - sg * sg) < Z * sg * sg * sqrt(2.0 / (double)n)))
			fail_msg("gauss variance %.5f, expected %.5f", s2, sg * sg);
		ks = ks_dist(v, n, normal_cdf, sg);
	}
	if (!(ks < kmax))
		fail_msg("%s: KS distance %.5f >= %.5f", fp_ldp_noise_name(kind), ks, kmax);
	free(v);
	free(x);
}

static void test_score_shape(void **state)
{
	(void)state;
	check_shape(FP_LDP_LAPLACE, 1, 0, 21);
	check_shape(FP_LDP_LAPLACE, 4, 0, 22);
	check_shape(FP_LDP_GAUSS, 1, 1e-5, 23);
	check_shape(FP_LDP_GAUSS_CLASSIC, 0.5, 1e-6, 24);
}

/*
 * A7: clipping happens before the noise. With the same seed, every input above hi gives
 * exactly the output of hi, and below lo that of lo (noise added first would give outputs
 * near 1e30). NaN is refused with a detail naming the tensor and index.
 */
static void test_score_clip(void **state)
{
	static const float above[] = { 2.0f, 1e30f, INFINITY, 3.0e38f };
	static const float below[] = { -0.5f, -1e30f, -INFINITY };
	struct fp_ldp_score sp;
	struct fp_ldp_rng r;
	float ref[64], x[64], mid[64];

	(void)state;
	for (int kind = FP_LDP_LAPLACE; kind <= FP_LDP_GAUSS; kind++) {
		assert_int_equal(fp_ldp_score_init(&sp, (enum fp_ldp_noise)kind, -0.25, 1, 1,
						   kind == FP_LDP_LAPLACE ? 0 : 1e-6),
				 0);
		for (int lohi = 0; lohi < 2; lohi++) {
			const float *in = lohi ? above : below;
			size_t nin = lohi ? 4 : 3;

			for (int i = 0; i < 64; i++)
				ref[i] = lohi ? 1.0f : -0.25f;
			seeded(&r, 31);
			assert_int_equal(fp_ldp_score_apply(ref, 64, &sp, &r, NULL), 0);
			for (size_t k = 0; k < nin; k++) {
				for (int i = 0; i < 64; i++)
					x[i] = in[k];
				seeded(&r, 31);
				assert_int_equal(fp_ldp_score_apply(x, 64, &sp, &r, NULL), 0);
				assert_memory_equal(x, ref, sizeof(x));
			}
		}
		/* an input inside the range is not clipped: outputs differ from hi's */
		for (int i = 0; i < 64; i++)
			mid[i] = 0.5f;
		seeded(&r, 31);
		assert_int_equal(fp_ldp_score_apply(mid, 64, &sp, &r, NULL), 0);
		assert_memory_not_equal(mid, ref, sizeof(mid));
	}
	x[0] = 0.1f;
	x[1] = NAN;
	fp_err_clear();
	assert_int_equal(fp_ldp_score_apply(x, 2, &sp, &r, "layers.0.q"), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "layers.0.q"));
	assert_non_null(strstr(fp_err_last(), "score 1"));
}

static void test_score_init(void **state)
{
	struct fp_ldp_score s;

	(void)state;
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_LAPLACE, 0, 2, 0.5, 0), 0);
	assert_true(s.scale == 4.0 && s.step == 2.0 / (1 << 20));
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_LAPLACE, 0, 1, 1, 1e-6), -EINVAL);
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_LAPLACE, 1, 1, 1, 0), -EINVAL);
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_LAPLACE, 2, 1, 1, 0), -EINVAL);
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_LAPLACE, NAN, 1, 1, 0), -EINVAL);
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_LAPLACE, 0, INFINITY, 1, 0), -EINVAL);
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_LAPLACE, -1e300, 1e300, 1, 0), -EINVAL);
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_LAPLACE, 0, 1, 0, 0), -EINVAL);
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_GAUSS, 0, 1, 1, 0), -EINVAL);
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_GAUSS, 0, 1, 1, 0.9), -EINVAL);
	fp_err_clear();
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_GAUSS_CLASSIC, 0, 1, 1, 1e-5), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "eps < 1"));
	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_GAUSS, 0, 1, 3, 1e-5), 0);
	assert_int_equal(fp_ldp_score_init(&s, 9, 0, 1, 1, 0), -EINVAL);
}

/* Hockey-stick divergence of N(0,σ²) vs N(Δ,σ²) at ε by Simpson's rule (independent of ldp.c). */
static double hockey(double sens, double sigma, double eps)
{
	const int n = 200000;
	double a = -12 * sigma, b = sens + 12 * sigma, h = (b - a) / n, s = 0;

	for (int i = 0; i <= n; i++) {
		double x = a + h * i;
		double p = exp(-x * x / (2 * sigma * sigma));
		double q = exp(-(x - sens) * (x - sens) / (2 * sigma * sigma));
		double f = fmax(0, p - exp(eps) * q) / (sigma * sqrt(2 * M_PI));

		s += f * (i == 0 || i == n ? 1 : (i % 2 ? 4 : 2));
	}
	return s * h / 3;
}

static void test_gauss_sigma(void **state)
{
	static const double cases[][2] = { { 0.5, 1e-5 }, { 1, 1e-6 }, { 2, 1e-5 }, { 5, 1e-3 } };

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		double eps = cases[i][0], delta = cases[i][1];
		double sg = fp_ldp_gauss_sigma(1, eps, delta);
		double h = hockey(1, sg, eps), h2 = hockey(1, sg * 0.99, eps);

		assert_true(isfinite(sg) && sg > 0);
		/* private at σ (to integration accuracy), and not at 1% less: σ is minimal */
		if (!(h <= delta * (1 + 1e-4) && h > delta * 0.999))
			fail_msg("eps %g delta %g: sigma %g gives delta %g", eps, delta, sg, h);
		assert_true(h2 > delta * 1.01);
		assert_true(fp_ldp_gauss_delta(1, sg, eps) <= delta);
		if (eps < 1) {
			double c = fp_ldp_gauss_sigma_classic(1, eps, delta);

			assert_true(c > sg); /* analytic is tighter */
			assert_true(fp_ldp_gauss_delta(1, c, eps) <= delta);
		} else {
			assert_true(isnan(fp_ldp_gauss_sigma_classic(1, eps, delta)));
		}
		/* σ scales with the sensitivity */
		assert_true(fabs(fp_ldp_gauss_sigma(3, eps, delta) / (3 * sg) - 1) < 1e-9);
	}
	assert_true(isnan(fp_ldp_gauss_sigma(1, 0, 1e-5)));
	assert_true(isnan(fp_ldp_gauss_sigma(1, 1, 0)));
	assert_true(isnan(fp_ldp_gauss_sigma(-1, 1, 1e-5)));
}

/* ---- accounting ---- */

static void test_accounting(void **state)
{
	struct fp_ldp_account a;
	struct fp_ldp_score s;
	struct fp_ldp_rr rr;
	double e, d;

	(void)state;
	assert_int_equal(fp_ldp_compose_basic(2, 0, 10, &e, &d), 0);
	assert_true(e == 20 && d == 0);
	assert_int_equal(fp_ldp_compose_basic(0.5, 1e-6, 4, &e, &d), 0);
	assert_true(e == 2 && fabs(d - 4e-6) < 1e-18);
	assert_int_equal(fp_ldp_compose_basic(-1, 0, 4, &e, &d), -EINVAL);
	/* 0.1 sqrt(200 ln 1e6) + 100 * 0.1 (e^0.1 - 1) = 5.25652 + 1.05171 */
	assert_int_equal(fp_ldp_compose_advanced(0.1, 0, 100, 1e-6, &e, &d), 0);
	assert_true(fabs(e - 6.308229) < 1e-5 && d == 1e-6);
	/* when advanced is worse, basic is reported */
	assert_int_equal(fp_ldp_compose_advanced(2, 0, 3, 1e-6, &e, &d), 0);
	assert_true(e == 6);
	assert_int_equal(fp_ldp_compose_advanced(2, 0, 3, 0, &e, &d), -EINVAL);

	assert_int_equal(fp_ldp_rr_sym(&rr, 2), 0);
	fp_ldp_account_init_rr(&a, &rr);
	assert_string_equal(a.mechanism, "sym");
	fp_ldp_account_round(&a, true);
	fp_ldp_account_round(&a, false);
	fp_ldp_account_round(&a, false);
	fp_ldp_account_round(&a, true);
	fp_ldp_account_round(&a, false);
	assert_int_equal(a.rounds, 5);
	assert_int_equal(a.fresh, 2);
	assert_true(a.eps_total == 2 * rr.eps_bit && a.eps_swap == rr.eps_swap);
	/* whole-mask bound: min(k, d-k) swaps */
	assert_true(fp_ldp_rr_mask_eps(&rr, 1000, 300) == 300 * rr.eps_swap);
	assert_true(fp_ldp_rr_mask_eps(&rr, 1000, 900) == 100 * rr.eps_swap);

	assert_int_equal(fp_ldp_score_init(&s, FP_LDP_GAUSS, 0, 1, 1, 1e-6), 0);
	fp_ldp_account_init_score(&a, &s);
	fp_ldp_account_round(&a, true);
	fp_ldp_account_round(&a, true);
	assert_true(a.eps_total == 2 && fabs(a.delta_total - 2e-6) < 1e-18);
	assert_string_equal(a.mechanism, "gauss");
}

/* ---- memo ---- */

static void file_bytes(const char *path, uint8_t **ret, size_t *len)
{
	FILE *f = fopen(path, "rb");
	long n;

	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	rewind(f);
	*ret = malloc((size_t)n);
	assert_non_null(*ret);
	assert_int_equal(fread(*ret, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
}

/* Parse a mutated image (digest fixed unless keep_digest) and expect -EINVAL naming `want`. */
static void expect_bad(const uint8_t *img, size_t len, bool fix, const char *want)
{
	uint8_t *c = malloc(len + 1);
	struct fp_ldp_memo *m = NULL;

	assert_non_null(c);
	memcpy(c, img, len);
	if (fix && len >= 32)
		crypto_generichash(c + len - 32, 32, c, len - 32, NULL, 0);
	fp_err_clear();
	assert_int_equal(fp_ldp_memo_parse(c, len, "memo.bin", &m), -EINVAL);
	assert_null(m);
	assert_non_null(strstr(fp_err_last(), "memo.bin"));
	if (want && !strstr(fp_err_last(), want))
		fail_msg("detail '%s' lacks '%s'", fp_err_last(), want);
	free(c);
}

static void test_memo(void **state)
{
	char *dir = fp_test_mkdtemp(), path[4096];
	uint8_t model[32], mask[32], mask2[32], t1[125], t2[2], *img;
	struct fp_ldp_mask_in in[2] = { { "layers.0.q", 1000, t1 }, { "layers.0.k", 13, t2 } };
	struct fp_ldp_memo *m1 = NULL, *m2 = NULL, *m3 = NULL;
	struct fp_ldp_rng r;
	struct fp_ldp_rr rr, rr2;
	size_t len;
	bool fresh;
	uint64_t st = 8;

	(void)state;
	snprintf(path, sizeof(path), "%s/memo.bin", dir);
	memset(model, 1, 32);
	memset(mask, 2, 32);
	memset(mask2, 3, 32);
	rand_mask(t1, 1000, &st, 500);
	rand_mask(t2, 13, &st, 500);
	assert_int_equal(fp_ldp_rr_sym(&rr, 1), 0);
	assert_int_equal(fp_ldp_rr_sym(&rr2, 1.5), 0);

	/* miss: randomize and save */
	seeded(&r, 1);
	assert_int_equal(fp_ldp_memo_respond(path, model, mask, &rr, in, 2, &r, &m1, &fresh), 0);
	assert_true(fresh);
	assert_int_equal(m1->count, 2);
	assert_string_equal(m1->t[1].name, "layers.0.k");
	{
		/* the memo holds exactly what fp_ldp_rr_mask gives with that stream */
		uint8_t e1[125], e2[2];
		struct fp_ldp_rng r2;

		memcpy(e1, t1, sizeof(e1));
		memcpy(e2, t2, sizeof(e2));
		seeded(&r2, 1);
		fp_ldp_rr_mask(e1, 1000, &rr, &r2);
		fp_ldp_rr_mask(e2, 13, &rr, &r2);
		assert_memory_equal(m1->t[0].bits, e1, sizeof(e1));
		assert_memory_equal(m1->t[1].bits, e2, sizeof(e2));
	}
	/* hit: same bits back, no fresh randomness (a different generator is not used) */
	seeded(&r, 2);
	assert_int_equal(fp_ldp_memo_respond(path, model, mask, &rr, in, 2, &r, &m2, &fresh), 0);
	assert_false(fresh);
	assert_memory_equal(m1->t[0].bits, m2->t[0].bits, 125);
	assert_memory_equal(m1->t[1].bits, m2->t[1].bits, 2);
	assert_int_equal(r.pos, sizeof(r.buf)); /* untouched */
	fp_ldp_memo_free(m2);
	/* a changed mask, or other parameters: fresh */
	assert_int_equal(fp_ldp_memo_respond(path, model, mask2, &rr, in, 2, &r, &m2, &fresh), 0);
	assert_true(fresh);
	assert_memory_not_equal(m1->t[0].bits, m2->t[0].bits, 125);
	fp_ldp_memo_free(m2);
	assert_int_equal(fp_ldp_memo_respond(path, model, mask2, &rr2, in, 2, &r, &m2, &fresh), 0);
	assert_true(fresh);
	assert_int_equal(fp_ldp_memo_load(path, &m3), 0);
	assert_true(m3->rr.eps == 1.5 && m3->rr.thr1 == rr2.thr1);
	assert_memory_equal(m3->mask_digest, mask2, 32);
	assert_memory_equal(m3->t[0].bits, m2->t[0].bits, 125);
	fp_ldp_memo_free(m3);
	fp_ldp_memo_free(m2);

	/* a valid image, then hostile variants of it */
	file_bytes(path, &img, &len);
	assert_int_equal(len, 112 + (4 + 10 + 8 + 125) + (4 + 10 + 8 + 2) + 32);
	assert_int_equal(fp_ldp_memo_parse(img, len, "memo.bin", &m3), 0);
	{
		uint8_t *out;
		size_t olen;

		assert_int_equal(fp_ldp_memo_serialize(m3, &out, &olen), 0);
		assert_int_equal(olen, len);
		assert_memory_equal(out, img, len);
		free(out);
	}
	fp_ldp_memo_free(m3);
	{
		uint8_t *b = malloc(len);

		assert_non_null(b);
		expect_bad(img, 100, false, "too short");
		expect_bad(img, len - 1, false, "digest");
		memcpy(b, img, len);
		b[200] ^= 1;
		expect_bad(b, len, false, "digest");
		memcpy(b, img, len);
		b[0] = 'X';
		expect_bad(b, len, true, "magic");
		memcpy(b, img, len);
		b[8] = 2;
		expect_bad(b, len, true, "version");
		memcpy(b, img, len);
		b[12] = 9; /* mechanism */
		expect_bad(b, len, true, "inconsistent");
		memcpy(b, img, len);
		b[24] ^= 1; /* thr1 */
		expect_bad(b, len, true, "inconsistent");
		memcpy(b, img, len);
		b[22] ^= 0x08; /* eps 1 -> 1.5 */
		expect_bad(b, len, true, "inconsistent");
		memcpy(b, img, len);
		b[104] = 3; /* count */
		expect_bad(b, len, true, "truncated");
		memcpy(b, img, len);
		b[104] = 0;
		expect_bad(b, len, true, "count");
		memcpy(b, img, len);
		b[112] = 0; /* name length */
		expect_bad(b, len, true, "name length");
		memcpy(b, img, len);
		b[116] = 0; /* NUL in name */
		expect_bad(b, len, true, "NUL");
		memcpy(b, img, len);
		b[133] = 0xff; /* nbits huge */
		expect_bad(b, len, true, "layers.0.q");
		memcpy(b, img, len);
		b[len - 33] |= 0x80; /* padding of the 13-bit tensor */
		expect_bad(b, len, true, "padding");
		memcpy(b, img, len);
		b[112 + 4 + 9] = 'k'; /* first name becomes layers.0.k too */
		expect_bad(b, len, true, "duplicate");
		memcpy(b, img, len);
		b[112 + 4 + 10] = 0xf0; /* nbits 1000 -> less: trailing bytes */
		b[112 + 4 + 11] = 0x00;
		expect_bad(b, len, true, "");
		free(b);
	}
	/* a corrupt memo is an error, not a silent second response */
	img[300] ^= 0x55;
	{
		FILE *f = fopen(path, "wb");

		assert_non_null(f);
		assert_int_equal(fwrite(img, 1, len, f), len);
		fclose(f);
	}
	assert_int_equal(fp_ldp_memo_respond(path, model, mask, &rr, in, 2, &r, &m2, &fresh),
			 -EINVAL);
	assert_non_null(strstr(fp_err_last(), path));
	free(img);

	/* serialize refuses what the format cannot hold */
	{
		struct fp_ldp_memo bad = *m1;
		struct fp_ldp_memo_tensor tt[2] = { m1->t[0], m1->t[0] };
		uint8_t *out;
		size_t olen;

		bad.t = tt;
		assert_int_equal(fp_ldp_memo_serialize(&bad, &out, &olen), -EINVAL);
		bad.count = 0;
		assert_int_equal(fp_ldp_memo_serialize(&bad, &out, &olen), -EINVAL);
	}
	fp_ldp_memo_free(m1);
	fp_ldp_rng_clear(&r);
	fp_test_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rng_streams),	cmocka_unit_test(test_rr_params),
		cmocka_unit_test(test_rr_exact_coins),	cmocka_unit_test(test_rr_fast_vs_naive),
		cmocka_unit_test(test_rr_rates),	cmocka_unit_test(test_rr_rates_system),
		cmocka_unit_test(test_debias_unbiased), cmocka_unit_test(test_debias_trials),
		cmocka_unit_test(test_debias_topk),	cmocka_unit_test(test_variance_pick),
		cmocka_unit_test(test_score_init),	cmocka_unit_test(test_score_shape),
		cmocka_unit_test(test_score_clip),	cmocka_unit_test(test_gauss_sigma),
		cmocka_unit_test(test_accounting),	cmocka_unit_test(test_memo),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
