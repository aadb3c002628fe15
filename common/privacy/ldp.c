/*
 * Local differential privacy mechanisms (ldp.h; docs/privacy.md).
 */
#include "ldp.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "err.h"
#include "fileio.h"
#include "mask.h"

/* ---- randomness ---- */

static void rng_refill(struct fp_ldp_rng *r)
{
	uint8_t nonce[crypto_stream_chacha20_NONCEBYTES];

	for (int i = 0; i < 8; i++)
		nonce[i] = (uint8_t)(r->nonce >> (8 * i));
	crypto_stream_chacha20(r->buf, sizeof(r->buf), nonce, r->key);
	r->nonce++;
	r->pos = 0;
}

int fp_ldp_rng_init(struct fp_ldp_rng *r)
{
	memset(r, 0, sizeof(*r));
	if (sodium_init() < 0)
		return fp_err_sodium("sodium_init");
	randombytes_buf(r->key, sizeof(r->key));
	r->pos = sizeof(r->buf); /* refill on first use */
	return 0;
}

void fp_ldp_rng_clear(struct fp_ldp_rng *r)
{
	sodium_memzero(r, sizeof(*r));
}

void fp_ldp_rng_bytes(struct fp_ldp_rng *r, void *out, size_t n)
{
	uint8_t *o = out;

	while (n > 0) {
		size_t k;

		if (r->pos >= sizeof(r->buf))
			rng_refill(r);
		k = sizeof(r->buf) - r->pos;
		if (k > n)
			k = n;
		memcpy(o, r->buf + r->pos, k);
		r->pos += k;
		o += k;
		n -= k;
	}
}

static inline uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t fp_ldp_rng_u32(struct fp_ldp_rng *r)
{
	uint32_t v;

	if (r->pos + 4 > sizeof(r->buf))
		rng_refill(r);
	v = le32(r->buf + r->pos);
	r->pos += 4;
	return v;
}

uint64_t fp_ldp_rng_u64(struct fp_ldp_rng *r)
{
	uint64_t lo = fp_ldp_rng_u32(r);

	return lo | (uint64_t)fp_ldp_rng_u32(r) << 32;
}

double fp_ldp_rng_uniform(struct fp_ldp_rng *r)
{
	return (double)((fp_ldp_rng_u64(r) >> 11) + 1) * 0x1p-53;
}

double fp_ldp_rng_laplace(struct fp_ldp_rng *r, double b)
{
	double e1 = -log(fp_ldp_rng_uniform(r));
	double e2 = -log(fp_ldp_rng_uniform(r));

	return b * (e1 - e2);
}

double fp_ldp_rng_gauss(struct fp_ldp_rng *r, double sigma)
{
	double u1, u2, rad;

	if (r->has_spare) {
		r->has_spare = false;
		return sigma * r->spare;
	}
	u1 = fp_ldp_rng_uniform(r);			  /* (0, 1] */
	u2 = (double)(fp_ldp_rng_u64(r) >> 11) * 0x1p-53; /* [0, 1) */
	rad = sqrt(-2.0 * log(u1));
	r->spare = rad * sin(2.0 * M_PI * u2);
	r->has_spare = true;
	return sigma * rad * cos(2.0 * M_PI * u2);
}

/* ---- randomized response ---- */

static const char *const mech_names[] = { NULL, "sym", "oue", "generic" };

const char *fp_ldp_mech_name(enum fp_ldp_mech m)
{
	if (m >= FP_LDP_RR_SYM && m <= FP_LDP_RR_GENERIC)
		return mech_names[m];
	return "unknown";
}

int fp_ldp_mech_parse(const char *s, enum fp_ldp_mech *ret)
{
	for (int m = FP_LDP_RR_SYM; m <= FP_LDP_RR_GENERIC; m++) {
		if (strcmp(s, mech_names[m]) == 0) {
			*ret = (enum fp_ldp_mech)m;
			return 0;
		}
	}
	return fp_err_detail(-EINVAL, "unknown LDP mask mechanism '%s' (sym, oue, generic)", s);
}

static bool eps_ok(double eps)
{
	return eps >= FP_LDP_EPS_MIN && eps <= FP_LDP_EPS_MAX; /* false for NaN */
}

/* Fill the achieved fields from the thresholds. */
static void rr_finish(struct fp_ldp_rr *rr)
{
	double p = (double)rr->thr1 * 0x1p-32, q = (double)rr->thr0 * 0x1p-32;
	/* log of exact integer ratios: 2^32 - thr is exact in double */
	double l_pq = log((double)rr->thr1 / (double)rr->thr0);
	double l_nn =
		log((double)(FP_LDP_THR_ONE - rr->thr0) / (double)(FP_LDP_THR_ONE - rr->thr1));

	rr->p = p;
	rr->q = q;
	rr->eps_bit = l_pq > l_nn ? l_pq : l_nn;
	rr->eps_swap = l_pq + l_nn;
}

static bool thr_ok(uint64_t thr1, uint64_t thr0)
{
	return thr0 >= 1 && thr1 > thr0 && thr1 < FP_LDP_THR_ONE;
}

int fp_ldp_rr_sym(struct fp_ldp_rr *rr, double eps)
{
	double p;

	if (!eps_ok(eps))
		return fp_err_detail(-EINVAL, "LDP: eps %g outside [%g, %g]", eps, FP_LDP_EPS_MIN,
				     FP_LDP_EPS_MAX);
	memset(rr, 0, sizeof(*rr));
	p = 1.0 / (1.0 + exp(-eps));
	rr->mech = FP_LDP_RR_SYM;
	rr->eps = eps;
	rr->thr1 = (uint64_t)floor(p * 0x1p32);
	if (rr->thr1 >= FP_LDP_THR_ONE)
		rr->thr1 = FP_LDP_THR_ONE - 1;
	rr->thr0 = FP_LDP_THR_ONE - rr->thr1;
	if (!thr_ok(rr->thr1, rr->thr0))
		return fp_err_detail(-EINVAL, "LDP: eps %g too small for 32-bit thresholds", eps);
	rr_finish(rr);
	return 0;
}

int fp_ldp_rr_oue(struct fp_ldp_rr *rr, double eps)
{
	double q;

	if (!eps_ok(eps))
		return fp_err_detail(-EINVAL, "LDP: eps %g outside [%g, %g]", eps, FP_LDP_EPS_MIN,
				     FP_LDP_EPS_MAX);
	memset(rr, 0, sizeof(*rr));
	q = 1.0 / (exp(eps) + 1.0);
	rr->mech = FP_LDP_RR_OUE;
	rr->eps = eps;
	rr->thr1 = FP_LDP_THR_ONE / 2;
	rr->thr0 = (uint64_t)ceil(q * 0x1p32);
	if (!thr_ok(rr->thr1, rr->thr0))
		return fp_err_detail(-EINVAL, "LDP: eps %g too small for 32-bit thresholds", eps);
	rr_finish(rr);
	return 0;
}

int fp_ldp_rr_generic(struct fp_ldp_rr *rr, double p, double q)
{
	if (!(q > 0 && p > q && p < 1))
		return fp_err_detail(-EINVAL, "LDP: need 0 < q < p < 1, got p=%g q=%g", p, q);
	memset(rr, 0, sizeof(*rr));
	rr->mech = FP_LDP_RR_GENERIC;
	rr->thr1 = (uint64_t)llround(p * 0x1p32);
	rr->thr0 = (uint64_t)llround(q * 0x1p32);
	if (!thr_ok(rr->thr1, rr->thr0))
		return fp_err_detail(-EINVAL, "LDP: p=%g q=%g do not fit 32-bit thresholds", p, q);
	rr_finish(rr);
	if (!(rr->eps_bit <= FP_LDP_EPS_MAX))
		return fp_err_detail(-EINVAL, "LDP: p=%g q=%g give eps %g > %g", p, q, rr->eps_bit,
				     FP_LDP_EPS_MAX);
	return 0;
}

int fp_ldp_rr_from_thresholds(struct fp_ldp_rr *rr, enum fp_ldp_mech mech, double eps,
			      uint64_t thr1, uint64_t thr0)
{
	struct fp_ldp_rr t;
	int e;

	switch (mech) {
	case FP_LDP_RR_SYM:
		e = fp_ldp_rr_sym(&t, eps);
		break;
	case FP_LDP_RR_OUE:
		e = fp_ldp_rr_oue(&t, eps);
		break;
	case FP_LDP_RR_GENERIC:
		if (eps != 0 || !thr_ok(thr1, thr0))
			return -EINVAL;
		memset(&t, 0, sizeof(t));
		t.mech = FP_LDP_RR_GENERIC;
		t.thr1 = thr1;
		t.thr0 = thr0;
		rr_finish(&t);
		e = t.eps_bit <= FP_LDP_EPS_MAX ? 0 : -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	if (e < 0 || t.thr1 != thr1 || t.thr0 != thr0)
		return -EINVAL;
	*rr = t;
	return 0;
}

double fp_ldp_rr_variance(const struct fp_ldp_rr *rr, double f)
{
	double p = rr->p, q = rr->q;

	return (q * (1 - q) * (1 - f) + p * (1 - p) * f) / ((p - q) * (p - q));
}

int fp_ldp_rr_pick(struct fp_ldp_rr *rr, double eps_swap, double f)
{
	struct fp_ldp_rr sym, oue;
	int e;

	if (!(f >= 0 && f <= 1))
		return fp_err_detail(-EINVAL, "LDP: density %g outside [0, 1]", f);
	e = fp_ldp_rr_sym(&sym, eps_swap / 2);
	if (e < 0)
		return e;
	e = fp_ldp_rr_oue(&oue, eps_swap);
	if (e < 0)
		return e;
	*rr = fp_ldp_rr_variance(&oue, f) < fp_ldp_rr_variance(&sym, f) ? oue : sym;
	return 0;
}

/*
 * Randomize one byte of mask bits x (nb <= 8 valid bits) with the 32-bit words w[0..nb).
 * thr[b] = threshold for an input bit b.
 */
static inline uint8_t rr_byte(uint8_t x, const uint32_t *w, int nb, const uint64_t thr[2])
{
	uint8_t y = 0;

	for (int i = 0; i < nb; i++)
		y |= (uint8_t)(((uint64_t)w[i] < thr[x >> i & 1]) << i);
	return y;
}

void fp_ldp_rr_mask(uint8_t *bits, size_t nbits, const struct fp_ldp_rr *rr, struct fp_ldp_rng *r)
{
	const uint64_t thr[2] = { rr->thr0, rr->thr1 };
	size_t full = nbits / 8, i;
	uint32_t w[8];

	for (i = 0; i < full; i++) {
		if (sizeof(r->buf) - r->pos >= 32) {
			const uint8_t *s = r->buf + r->pos;

			for (int k = 0; k < 8; k++)
				w[k] = le32(s + 4 * k);
			r->pos += 32;
		} else {
			for (int k = 0; k < 8; k++)
				w[k] = fp_ldp_rng_u32(r);
		}
		bits[i] = rr_byte(bits[i], w, 8, thr);
	}
	if (nbits % 8) {
		int nb = (int)(nbits % 8);
		uint8_t keep = (uint8_t)(bits[full] & ~((1u << nb) - 1));

		for (int k = 0; k < nb; k++)
			w[k] = fp_ldp_rng_u32(r);
		bits[full] = (uint8_t)(keep | rr_byte(bits[full], w, nb, thr));
	}
}

void fp_ldp_rr_mask_naive(uint8_t *bits, size_t nbits, const struct fp_ldp_rr *rr,
			  struct fp_ldp_rng *r)
{
	for (size_t j = 0; j < nbits; j++) {
		uint64_t u = fp_ldp_rng_u32(r);
		uint64_t thr = fp_mask_get(bits, j) ? rr->thr1 : rr->thr0;

		fp_mask_put(bits, j, u < thr);
	}
}

/* ---- debiasing ---- */

void fp_ldp_debias_add(double *acc, const uint8_t *bits, size_t nbits, const struct fp_ldp_rr *rr)
{
	const double t[2] = { -rr->q / (rr->p - rr->q), (1 - rr->q) / (rr->p - rr->q) };
	size_t full = nbits / 8;

	for (size_t i = 0; i < full; i++) {
		unsigned b = bits[i];
		double *a = acc + 8 * i;

		for (int k = 0; k < 8; k++)
			a[k] += t[b >> k & 1];
	}
	for (size_t j = 8 * full; j < nbits; j++)
		acc[j] += t[bits[j / 8] >> (j % 8) & 1];
}

void fp_ldp_debias_add_f32(float *acc, const uint8_t *bits, size_t nbits,
			   const struct fp_ldp_rr *rr)
{
	const float t[2] = { (float)(-rr->q / (rr->p - rr->q)),
			     (float)((1 - rr->q) / (rr->p - rr->q)) };
	size_t full = nbits / 8;

	for (size_t i = 0; i < full; i++) {
		unsigned b = bits[i];
		float *a = acc + 8 * i;

		for (int k = 0; k < 8; k++)
			a[k] += t[b >> k & 1];
	}
	for (size_t j = 8 * full; j < nbits; j++)
		acc[j] += t[bits[j / 8] >> (j % 8) & 1];
}

void fp_ldp_debias_add_naive(double *acc, const uint8_t *bits, size_t nbits,
			     const struct fp_ldp_rr *rr)
{
	for (size_t j = 0; j < nbits; j++) {
		double y = fp_mask_get(bits, j) ? 1.0 : 0.0;

		acc[j] += (y - rr->q) / (rr->p - rr->q);
	}
}

void fp_ldp_debias_counts(double *out, const uint16_t *counts, size_t n, size_t nclients,
			  const struct fp_ldp_rr *rr)
{
	double base = (double)nclients * rr->q, inv = 1.0 / (rr->p - rr->q);

	for (size_t j = 0; j < n; j++)
		out[j] = ((double)counts[j] - base) * inv;
}

void fp_ldp_debias_keys(float *metric, const double *acc, size_t n)
{
	for (size_t j = 0; j < n; j++)
		metric[j] = (float)-acc[j];
}

void fp_ldp_debias_keys_f32(float *metric, const float *acc, size_t n)
{
	for (size_t j = 0; j < n; j++)
		metric[j] = -acc[j];
}

/* ---- scores ---- */

static const char *const noise_names[] = { NULL, "laplace", "gauss", "gauss-classic" };

const char *fp_ldp_noise_name(enum fp_ldp_noise n)
{
	if (n >= FP_LDP_LAPLACE && n <= FP_LDP_GAUSS_CLASSIC)
		return noise_names[n];
	return "unknown";
}

int fp_ldp_noise_parse(const char *s, enum fp_ldp_noise *ret)
{
	for (int m = FP_LDP_LAPLACE; m <= FP_LDP_GAUSS_CLASSIC; m++) {
		if (strcmp(s, noise_names[m]) == 0) {
			*ret = (enum fp_ldp_noise)m;
			return 0;
		}
	}
	return fp_err_detail(-EINVAL,
			     "unknown LDP score noise '%s' (laplace, gauss, gauss-classic)", s);
}

/* Standard normal CDF. */
static double phi(double x)
{
	return 0.5 * erfc(-x / M_SQRT2);
}

double fp_ldp_gauss_delta(double sens, double sigma, double eps)
{
	double a = sens / (2 * sigma), b = eps * sigma / sens;

	return phi(a - b) - exp(eps) * phi(-a - b);
}

static bool gauss_args_ok(double sens, double eps, double delta)
{
	return isfinite(sens) && sens > 0 && eps_ok(eps) && delta >= FP_LDP_DELTA_MIN &&
	       delta <= FP_LDP_DELTA_MAX;
}

double fp_ldp_gauss_sigma(double sens, double eps, double delta)
{
	double lo, hi;

	if (!gauss_args_ok(sens, eps, delta))
		return NAN;
	/* δ(σ) decreases in σ. Bracket: double hi until private, lo = hi / 2. */
	hi = sens;
	while (fp_ldp_gauss_delta(sens, hi, eps) > delta)
		hi *= 2;
	lo = hi / 2;
	while (lo > 0 && fp_ldp_gauss_delta(sens, lo, eps) <= delta)
		lo /= 2;
	for (int i = 0; i < 200 && hi - lo > 1e-12 * hi; i++) {
		double mid = 0.5 * (lo + hi);

		if (fp_ldp_gauss_delta(sens, mid, eps) <= delta)
			hi = mid;
		else
			lo = mid;
	}
	return hi;
}

double fp_ldp_gauss_sigma_classic(double sens, double eps, double delta)
{
	if (!gauss_args_ok(sens, eps, delta) || !(eps < 1))
		return NAN;
	return sens * sqrt(2 * log(1.25 / delta)) / eps;
}

int fp_ldp_score_init(struct fp_ldp_score *s, enum fp_ldp_noise noise, double lo, double hi,
		      double eps, double delta)
{
	double sens = hi - lo;

	memset(s, 0, sizeof(*s));
	if (!(isfinite(lo) && isfinite(hi) && fabs(lo) <= FP_LDP_SCORE_ABS_MAX &&
	      fabs(hi) <= FP_LDP_SCORE_ABS_MAX && lo < hi && isfinite(sens)))
		return fp_err_detail(-EINVAL, "LDP scores: bad clip range [%g, %g]", lo, hi);
	if (!eps_ok(eps))
		return fp_err_detail(-EINVAL, "LDP scores: eps %g outside [%g, %g]", eps,
				     FP_LDP_EPS_MIN, FP_LDP_EPS_MAX);
	switch (noise) {
	case FP_LDP_LAPLACE:
		if (delta != 0)
			return fp_err_detail(-EINVAL,
					     "LDP scores: laplace is pure eps, delta must "
					     "be 0 (got %g)",
					     delta);
		s->scale = sens / eps;
		break;
	case FP_LDP_GAUSS:
	case FP_LDP_GAUSS_CLASSIC:
		if (!(delta >= FP_LDP_DELTA_MIN && delta <= FP_LDP_DELTA_MAX))
			return fp_err_detail(-EINVAL, "LDP scores: delta %g outside [%g, %g]",
					     delta, FP_LDP_DELTA_MIN, FP_LDP_DELTA_MAX);
		if (noise == FP_LDP_GAUSS_CLASSIC && !(eps < 1))
			return fp_err_detail(-EINVAL,
					     "LDP scores: the classic Gaussian bound needs "
					     "eps < 1 (got %g); use 'gauss'",
					     eps);
		s->scale = noise == FP_LDP_GAUSS ? fp_ldp_gauss_sigma(sens, eps, delta)
						 : fp_ldp_gauss_sigma_classic(sens, eps, delta);
		if (!isfinite(s->scale))
			return fp_err_detail(-EINVAL, "LDP scores: no sigma for eps %g delta %g",
					     eps, delta);
		break;
	default:
		return fp_err_detail(-EINVAL, "LDP scores: unknown noise %d", (int)noise);
	}
	s->noise = noise;
	s->lo = lo;
	s->hi = hi;
	s->eps = eps;
	s->delta = delta;
	s->step = sens / FP_LDP_SCORE_STEPS;
	return 0;
}

int fp_ldp_score_apply(float *x, size_t n, const struct fp_ldp_score *s, struct fp_ldp_rng *r,
		       const char *name)
{
	for (size_t j = 0; j < n; j++) {
		double v = x[j], z;
		int64_t m, k;

		if (isnan(v))
			return fp_err_detail(-EINVAL, "%s: score %zu is NaN",
					     name ? name : "scores", j);
		if (v < s->lo)
			v = s->lo;
		if (v > s->hi)
			v = s->hi;
		m = (int64_t)floor((v - s->lo) / s->step + 0.5);
		if (m > (int64_t)FP_LDP_SCORE_STEPS)
			m = FP_LDP_SCORE_STEPS;
		if (s->noise == FP_LDP_LAPLACE)
			z = fp_ldp_rng_laplace(r, s->scale) / s->step;
		else
			z = fp_ldp_rng_gauss(r, s->scale) / s->step;
		/* |z| < 37 b/step = 37 * 2^20 / eps, or 8.6 sigma/step: far inside int64 */
		k = m + (int64_t)floor(z + 0.5);
		x[j] = (float)(s->lo + s->step * (double)k);
	}
	return 0;
}

/* ---- accounting ---- */

int fp_ldp_compose_basic(double eps, double delta, uint64_t k, double *ret_eps, double *ret_delta)
{
	if (!(eps >= 0 && isfinite(eps) && delta >= 0 && delta <= 1))
		return fp_err_detail(-EINVAL, "LDP compose: bad eps %g / delta %g", eps, delta);
	*ret_eps = (double)k * eps;
	*ret_delta = fmin(1.0, (double)k * delta);
	return 0;
}

int fp_ldp_compose_advanced(double eps, double delta, uint64_t k, double slack, double *ret_eps,
			    double *ret_delta)
{
	double be, bd, adv;
	int e = fp_ldp_compose_basic(eps, delta, k, &be, &bd);

	if (e < 0)
		return e;
	if (!(slack > 0 && slack < 1))
		return fp_err_detail(-EINVAL, "LDP compose: slack delta %g outside (0, 1)", slack);
	adv = eps * sqrt(2.0 * (double)k * log(1.0 / slack)) + (double)k * eps * expm1(eps);
	*ret_eps = fmin(adv, be);
	*ret_delta = fmin(1.0, bd + slack);
	return 0;
}

void fp_ldp_account_init_rr(struct fp_ldp_account *a, const struct fp_ldp_rr *rr)
{
	memset(a, 0, sizeof(*a));
	a->mechanism = fp_ldp_mech_name(rr->mech);
	a->eps_unit = rr->eps_bit;
	a->eps_swap = rr->eps_swap;
}

void fp_ldp_account_init_score(struct fp_ldp_account *a, const struct fp_ldp_score *s)
{
	memset(a, 0, sizeof(*a));
	a->mechanism = fp_ldp_noise_name(s->noise);
	a->eps_unit = s->eps;
	a->eps_swap = s->eps;
	a->delta_unit = s->delta;
}

void fp_ldp_account_round(struct fp_ldp_account *a, bool fresh)
{
	a->rounds++;
	if (fresh) {
		a->fresh++;
		fp_ldp_compose_basic(a->eps_unit, a->delta_unit, a->fresh, &a->eps_total,
				     &a->delta_total);
	}
}

double fp_ldp_rr_mask_eps(const struct fp_ldp_rr *rr, uint64_t nbits, uint64_t npruned)
{
	uint64_t other = npruned <= nbits ? nbits - npruned : 0;

	return (double)(npruned < other ? npruned : other) * rr->eps_swap;
}

/* ---- memo ---- */

static const uint8_t memo_magic[8] = { 0x89, 'F', 'P', 'L', 'D', 'P', 'M', '\n' };

#define MEMO_HDR 112

static uint64_t get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

void fp_ldp_memo_free(struct fp_ldp_memo *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->count; i++) {
		free(m->t[i].name);
		free(m->t[i].bits);
	}
	free(m->t);
	free(m);
}

static int name_cmp(const void *a, const void *b)
{
	const struct fp_ldp_memo_tensor *x = *(const struct fp_ldp_memo_tensor *const *)a;
	const struct fp_ldp_memo_tensor *y = *(const struct fp_ldp_memo_tensor *const *)b;

	return strcmp(x->name, y->name);
}

/* Names unique? Sets *dup to a duplicated name. Returns 0, -ENOMEM. */
static int names_unique(const struct fp_ldp_memo *m, const char **dup)
{
	const struct fp_ldp_memo_tensor **v;

	*dup = NULL;
	if (m->count < 2)
		return 0;
	v = fp_mallocarray(m->count, sizeof(*v));
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < m->count; i++)
		v[i] = &m->t[i];
	qsort(v, m->count, sizeof(*v), name_cmp);
	for (size_t i = 1; i < m->count && !*dup; i++)
		if (strcmp(v[i - 1]->name, v[i]->name) == 0)
			*dup = v[i]->name;
	free(v);
	return 0;
}

int fp_ldp_memo_parse(const void *data, size_t len, const char *label, struct fp_ldp_memo **ret)
{
	const uint8_t *d = data;
	struct fp_ldp_memo *m = NULL;
	uint8_t digest[32];
	uint64_t count, mech, thr1, thr0, epsbits;
	const char *dup;
	double eps;
	size_t pos, end;
	int e = -EINVAL;

	if (len < MEMO_HDR + 32) {
		e = fp_err_detail(-EINVAL, "%s: %zu bytes, too short for an LDP memo", label, len);
		goto out;
	}
	if (memcmp(d, memo_magic, 8) != 0) {
		e = fp_err_detail(-EINVAL, "%s: not an LDP memo (bad magic)", label);
		goto out;
	}
	if (get_le(d + 8, 4) != FP_LDP_MEMO_VERSION) {
		e = fp_err_detail(-EINVAL, "%s: unsupported LDP memo version %u", label,
				  (unsigned)get_le(d + 8, 4));
		goto out;
	}
	end = len - 32;
	if (sodium_init() < 0) {
		e = fp_err_sodium("sodium_init");
		goto out;
	}
	crypto_generichash(digest, 32, d, end, NULL, 0);
	if (sodium_memcmp(digest, d + end, 32) != 0) {
		e = fp_err_detail(-EINVAL, "%s: LDP memo digest mismatch (corrupt file)", label);
		goto out;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		e = -ENOMEM;
		goto out;
	}
	mech = get_le(d + 12, 4);
	epsbits = get_le(d + 16, 8);
	memcpy(&eps, &epsbits, sizeof(eps));
	thr1 = get_le(d + 24, 8);
	thr0 = get_le(d + 32, 8);
	if (mech < FP_LDP_RR_SYM || mech > FP_LDP_RR_GENERIC ||
	    fp_ldp_rr_from_thresholds(&m->rr, (enum fp_ldp_mech)mech, eps, thr1, thr0) < 0) {
		e = fp_err_detail(-EINVAL,
				  "%s: inconsistent LDP parameters (mechanism %u, eps %g, "
				  "thresholds %llu/%llu)",
				  label, (unsigned)mech, eps, (unsigned long long)thr1,
				  (unsigned long long)thr0);
		goto out;
	}
	memcpy(m->model_digest, d + 40, 32);
	memcpy(m->mask_digest, d + 72, 32);
	count = get_le(d + 104, 8);
	if (count < 1 || count > FP_LDP_MEMO_MAX_TENSORS || count > (end - MEMO_HDR) / 14) {
		e = fp_err_detail(-EINVAL, "%s: bad tensor count %llu", label,
				  (unsigned long long)count);
		goto out;
	}
	m->t = fp_callocarray((size_t)count, sizeof(*m->t));
	if (!m->t) {
		e = -ENOMEM;
		goto out;
	}
	pos = MEMO_HDR;
	for (size_t i = 0; i < count; i++) {
		struct fp_ldp_memo_tensor *t = &m->t[i];
		uint64_t nl, nbits, nbytes;

		if (end - pos < 4) {
			e = fp_err_detail(-EINVAL, "%s: tensor %zu: truncated entry", label, i);
			goto out;
		}
		nl = get_le(d + pos, 4);
		pos += 4;
		if (nl < 1 || nl > FP_LDP_MEMO_MAX_NAME || end - pos < nl + 8) {
			e = fp_err_detail(-EINVAL, "%s: tensor %zu: bad name length %llu", label, i,
					  (unsigned long long)nl);
			goto out;
		}
		if (memchr(d + pos, 0, (size_t)nl)) {
			e = fp_err_detail(-EINVAL, "%s: tensor %zu: NUL byte in name", label, i);
			goto out;
		}
		t->name = malloc((size_t)nl + 1);
		if (!t->name) {
			e = -ENOMEM;
			goto out;
		}
		memcpy(t->name, d + pos, (size_t)nl);
		t->name[nl] = 0;
		m->count = i + 1; /* t[i] is freed from here on */
		pos += (size_t)nl;
		nbits = get_le(d + pos, 8);
		pos += 8;
		nbytes = nbits / 8 + (nbits % 8 != 0);
		if (nbits < 1 || nbytes > end - pos) {
			e = fp_err_detail(-EINVAL, "%s: tensor '%s': %llu bits do not fit the file",
					  label, t->name, (unsigned long long)nbits);
			goto out;
		}
		if (nbits % 8 && d[pos + nbytes - 1] >> (nbits % 8)) {
			e = fp_err_detail(-EINVAL, "%s: tensor '%s': padding bits set", label,
					  t->name);
			goto out;
		}
		t->nbits = nbits;
		t->bits = malloc((size_t)nbytes);
		if (!t->bits) {
			e = -ENOMEM;
			goto out;
		}
		memcpy(t->bits, d + pos, (size_t)nbytes);
		pos += (size_t)nbytes;
	}
	if (pos != end) {
		e = fp_err_detail(-EINVAL, "%s: %zu trailing bytes after the last tensor", label,
				  end - pos);
		goto out;
	}
	if (names_unique(m, &dup) < 0) {
		e = -ENOMEM;
		goto out;
	}
	if (dup) {
		e = fp_err_detail(-EINVAL, "%s: tensor '%s': duplicate name", label, dup);
		goto out;
	}
	*ret = m;
	m = NULL;
	e = 0;
out:
	fp_ldp_memo_free(m);
	return e;
}

int fp_ldp_memo_serialize(const struct fp_ldp_memo *m, uint8_t **ret, size_t *ret_len)
{
	struct fp_ldp_rr chk;
	size_t len = MEMO_HDR + 32, pos;
	uint64_t epsbits;
	const char *dup;
	uint8_t *b;

	if (m->count < 1 || m->count > FP_LDP_MEMO_MAX_TENSORS)
		return fp_err_detail(-EINVAL, "LDP memo: %zu tensors", m->count);
	if (fp_ldp_rr_from_thresholds(&chk, m->rr.mech, m->rr.eps, m->rr.thr1, m->rr.thr0) < 0)
		return fp_err_detail(-EINVAL, "LDP memo: inconsistent mechanism parameters");
	for (size_t i = 0; i < m->count; i++) {
		const struct fp_ldp_memo_tensor *t = &m->t[i];
		size_t nl = t->name ? strlen(t->name) : 0, nb;

		if (nl < 1 || nl > FP_LDP_MEMO_MAX_NAME || t->nbits < 1 || t->nbits > SIZE_MAX / 2)
			return fp_err_detail(-EINVAL, "LDP memo: tensor %zu: bad name or size", i);
		nb = fp_mask_bytes((size_t)t->nbits);
		if (!fp_add_ok(len, 12 + nl, &len) || !fp_add_ok(len, nb, &len))
			return fp_err_detail(-EINVAL, "LDP memo: size overflow");
		if (t->nbits % 8 && t->bits[nb - 1] >> (t->nbits % 8))
			return fp_err_detail(-EINVAL, "LDP memo: tensor '%s': padding bits set",
					     t->name);
	}
	if (names_unique(m, &dup) < 0)
		return -ENOMEM;
	if (dup)
		return fp_err_detail(-EINVAL, "LDP memo: tensor '%s': duplicate name", dup);
	if (sodium_init() < 0)
		return fp_err_sodium("sodium_init");
	b = malloc(len);
	if (!b)
		return -ENOMEM;
	memcpy(b, memo_magic, 8);
	put_le(b + 8, FP_LDP_MEMO_VERSION, 4);
	put_le(b + 12, (uint64_t)m->rr.mech, 4);
	memcpy(&epsbits, &m->rr.eps, sizeof(epsbits));
	put_le(b + 16, epsbits, 8);
	put_le(b + 24, m->rr.thr1, 8);
	put_le(b + 32, m->rr.thr0, 8);
	memcpy(b + 40, m->model_digest, 32);
	memcpy(b + 72, m->mask_digest, 32);
	put_le(b + 104, m->count, 8);
	pos = MEMO_HDR;
	for (size_t i = 0; i < m->count; i++) {
		const struct fp_ldp_memo_tensor *t = &m->t[i];
		size_t nl = strlen(t->name), nb = fp_mask_bytes((size_t)t->nbits);

		put_le(b + pos, nl, 4);
		memcpy(b + pos + 4, t->name, nl);
		pos += 4 + nl;
		put_le(b + pos, t->nbits, 8);
		memcpy(b + pos + 8, t->bits, nb);
		pos += 8 + nb;
	}
	crypto_generichash(b + pos, 32, b, pos, NULL, 0);
	*ret = b;
	*ret_len = len;
	return 0;
}

int fp_ldp_memo_load(const char *path, struct fp_ldp_memo **ret)
{
	char *data = NULL;
	size_t len = 0;
	int e = fp_read_file(path, FP_LDP_MEMO_MAX_FILE, &data, &len);

	if (e < 0)
		return e;
	e = fp_ldp_memo_parse(data, len, path, ret);
	free(data);
	return e;
}

int fp_ldp_memo_save(const char *path, const struct fp_ldp_memo *m)
{
	uint8_t *b = NULL;
	size_t len = 0;
	int e = fp_ldp_memo_serialize(m, &b, &len);

	if (e < 0) {
		char why[512];

		snprintf(why, sizeof(why), "%s", fp_err_last());
		return e == -EINVAL ? fp_err_detail(e, "%s: %s", path, why) : e;
	}
	e = fp_write_file_atomic(path, b, len, 0600);
	free(b);
	return e;
}

/* Does memo m answer for (model, mask, rr, masks)? */
static bool memo_matches(const struct fp_ldp_memo *m, const uint8_t model[32],
			 const uint8_t mask[32], const struct fp_ldp_rr *rr,
			 const struct fp_ldp_mask_in *masks, size_t n)
{
	if (sodium_memcmp(m->model_digest, model, 32) || sodium_memcmp(m->mask_digest, mask, 32))
		return false;
	if (m->rr.mech != rr->mech || m->rr.eps != rr->eps || m->rr.thr1 != rr->thr1 ||
	    m->rr.thr0 != rr->thr0 || m->count != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (m->t[i].nbits != masks[i].nbits || strcmp(m->t[i].name, masks[i].name) != 0)
			return false;
	return true;
}

int fp_ldp_memo_respond(const char *path, const uint8_t model_digest[32],
			const uint8_t mask_digest[32], const struct fp_ldp_rr *rr,
			const struct fp_ldp_mask_in *masks, size_t n, struct fp_ldp_rng *r,
			struct fp_ldp_memo **ret, bool *ret_fresh)
{
	struct fp_ldp_memo *m = NULL;
	struct stat st;
	int e;

	if (stat(path, &st) == 0) {
		e = fp_ldp_memo_load(path, &m);
		if (e < 0)
			return e;
		if (memo_matches(m, model_digest, mask_digest, rr, masks, n)) {
			if (ret_fresh)
				*ret_fresh = false;
			*ret = m;
			return 0;
		}
		fp_ldp_memo_free(m);
		m = NULL;
	} else if (errno != ENOENT) {
		return fp_err_detail(-errno, "%s: cannot stat: %s", path, strerror(errno));
	}
	if (n < 1 || n > FP_LDP_MEMO_MAX_TENSORS)
		return fp_err_detail(-EINVAL, "%s: %zu tensors", path, n);
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->t = fp_callocarray(n, sizeof(*m->t));
	if (!m->t) {
		e = -ENOMEM;
		goto out;
	}
	m->rr = *rr;
	memcpy(m->model_digest, model_digest, 32);
	memcpy(m->mask_digest, mask_digest, 32);
	for (size_t i = 0; i < n; i++) {
		struct fp_ldp_memo_tensor *t = &m->t[i];
		size_t nb;

		m->count = i + 1;
		if (!masks[i].name || masks[i].nbits < 1 || masks[i].nbits > SIZE_MAX / 2) {
			e = fp_err_detail(-EINVAL, "%s: tensor %zu: bad name or size", path, i);
			goto out;
		}
		nb = fp_mask_bytes((size_t)masks[i].nbits);
		t->name = fp_strdup(masks[i].name);
		t->bits = malloc(nb);
		if (!t->name || !t->bits) {
			e = -ENOMEM;
			goto out;
		}
		t->nbits = masks[i].nbits;
		memcpy(t->bits, masks[i].bits, nb);
		fp_ldp_rr_mask(t->bits, (size_t)t->nbits, rr, r);
	}
	e = fp_ldp_memo_save(path, m);
	if (e < 0)
		goto out;
	if (ret_fresh)
		*ret_fresh = true;
	*ret = m;
	m = NULL;
out:
	fp_ldp_memo_free(m);
	return e;
}
