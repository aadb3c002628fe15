/*
 * Local differential privacy on what a client sends (issue #8; docs/privacy.md; research note
 * privacy.md §1): randomized response on bit-packed pruning masks, clipped Laplace / Gaussian
 * noise on real scores, the server's unbiased debiasing of noisy votes, a durable memo of a
 * client's randomized mask (RAPPOR's permanent response), and privacy accounting.
 *
 * Masks use the layout of mask.h: bit p of a tensor is byte p / 8, bit p % 8 (LSB first); a
 * set bit means PRUNED, so a "vote" is a vote to prune.
 *
 * Randomness. struct fp_ldp_rng is a ChaCha20 keystream (libsodium crypto_stream_chacha20,
 * 64-bit nonce = refill counter, 1 KiB per refill). fp_ldp_rng_init() keys it with 32 bytes of
 * libsodium's CSPRNG (randombytes_buf: getrandom(2) on Linux). A seeded generator for tests
 * (key = BLAKE2b-256 of the seed) lives in ldp_testrng.c, which the library does NOT contain:
 * only test executables link that file, and its prototype is visible only when
 * FP_LDP_TEST_RNG is defined. So no configuration, flag or release binary can select it.
 *
 * Coins. Every Bernoulli(P) coin compares one uniform 32-bit word u with an integer threshold
 * T in [0, 2^32]: the coin is 1 iff u < T, so P(1) = T / 2^32 EXACTLY. Thresholds are rounded
 * in the direction that never makes the achieved ε larger than the requested one; the achieved
 * probabilities and ε are stored in struct fp_ldp_rr and are what accounting reports.
 *
 * Real-valued noise is applied on a fixed output grid (see fp_ldp_score_apply) so that the set
 * of possible outputs does not depend on the input (the floating-point attack on textbook
 * Laplace, Mironov CCS 2012, needs exactly that dependence).
 *
 * Threads: no global state; one rng / memo per thread.
 */
#ifndef FP_LDP_H
#define FP_LDP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- randomness ---- */

#define FP_LDP_RNG_BUF 1024 /* keystream bytes per refill (a multiple of 64) */

/* A keystream generator. Plain data; fields are private to ldp.c (and ldp_testrng.c). */
struct fp_ldp_rng {
	uint8_t key[32];
	uint64_t nonce;		     /* nonce of the next refill */
	uint8_t buf[FP_LDP_RNG_BUF]; /* current keystream block */
	size_t pos;		     /* next unused byte of buf */
	bool deterministic;	     /* seeded test generator (ldp_testrng.c) */
	bool has_spare;		     /* Box-Muller's second normal is in spare */
	double spare;
};

/*
 * Key r from libsodium's CSPRNG (calls sodium_init first). Returns 0 or -FP_ESODIUM. Wipe
 * with fp_ldp_rng_clear when done. Do not copy a keyed generator or use it across fork():
 * both copies would emit the same stream.
 */
int fp_ldp_rng_init(struct fp_ldp_rng *r);

#ifdef FP_LDP_TEST_RNG
/*
 * TESTS ONLY (defined in ldp_testrng.c, which only test executables link): key r with
 * BLAKE2b-256("fedprune ldp test rng" || u64le(seed)), so the stream is reproducible.
 * Returns 0 or -FP_ESODIUM.
 */
int fp_ldp_rng_init_test(struct fp_ldp_rng *r, uint64_t seed);
#endif

/* Wipe the key and the buffered keystream (sodium_memzero). */
void fp_ldp_rng_clear(struct fp_ldp_rng *r);

/* Next n keystream bytes into out (borrowed). */
void fp_ldp_rng_bytes(struct fp_ldp_rng *r, void *out, size_t n);

/* Next 32-bit little-endian word of the stream (4-byte aligned in the buffer). */
uint32_t fp_ldp_rng_u32(struct fp_ldp_rng *r);

/* lo | hi << 32 from two fp_ldp_rng_u32 words. */
uint64_t fp_ldp_rng_u64(struct fp_ldp_rng *r);

/* Uniform on (0, 1]: (1 + top 53 bits of a u64) / 2^53. Never 0, so log() is finite. */
double fp_ldp_rng_uniform(struct fp_ldp_rng *r);

/* Laplace(0, b) = b * (E1 - E2), E = -log(uniform): |value| <= 36.8 b. b > 0. */
double fp_ldp_rng_laplace(struct fp_ldp_rng *r, double b);

/* Normal(0, sigma^2) by Box-Muller (pairs; the second is kept for the next call). */
double fp_ldp_rng_gauss(struct fp_ldp_rng *r, double sigma);

/* ---- randomized response on masks ---- */

#define FP_LDP_EPS_MIN 1e-3 /* smallest ε accepted anywhere (finer is meaningless noise) */
#define FP_LDP_EPS_MAX 20.0 /* largest ε for masks and scores (p within 2^-29 of 1) */
#define FP_LDP_THR_ONE ((uint64_t)1 << 32) /* threshold meaning probability 1 */

enum fp_ldp_mech {
	FP_LDP_RR_SYM = 1,     /* Warner RR: keep with p = e^ε/(1+e^ε), flip with q = 1 - p */
	FP_LDP_RR_OUE = 2,     /* optimal unary encoding: P(1->1) = 1/2, P(0->1) = 1/(e^ε+1) */
	FP_LDP_RR_GENERIC = 3, /* P(1->1) = p, P(0->1) = q given by the caller, p > q */
};

/* "sym", "oue", "generic". */
const char *fp_ldp_mech_name(enum fp_ldp_mech m);

/* Parse one of those names into *ret. Returns 0 or -EINVAL. */
int fp_ldp_mech_parse(const char *s, enum fp_ldp_mech *ret);

/*
 * A per-bit randomized response: y = 1 with probability thr1 / 2^32 when x = 1 and
 * thr0 / 2^32 when x = 0, each bit independently. Filled by the fp_ldp_rr_* constructors.
 */
struct fp_ldp_rr {
	enum fp_ldp_mech mech;
	double eps;	 /* the requested ε (SYM, OUE); 0 for GENERIC */
	uint64_t thr1;	 /* P(y=1 | x=1) * 2^32, in [1, 2^32 - 1] */
	uint64_t thr0;	 /* P(y=1 | x=0) * 2^32, in [1, thr1 - 1] */
	double p, q;	 /* achieved probabilities thr1 / 2^32, thr0 / 2^32 (exact) */
	double eps_bit;	 /* achieved loss of one bit: ln max(p/q, (1-q)/(1-p)) */
	double eps_swap; /* achieved loss of one 1->0 plus one 0->1: ln(p(1-q) / (q(1-p))) */
};

/*
 * Symmetric RR with per-bit ε in [FP_LDP_EPS_MIN, FP_LDP_EPS_MAX]: thr1 = floor(p * 2^32),
 * thr0 = 2^32 - thr1, so the achieved eps_bit <= eps (smaller by < 2^-32 / (p q)) and
 * eps_swap = 2 eps_bit. Returns 0 or -EINVAL (detail names the value).
 */
int fp_ldp_rr_sym(struct fp_ldp_rr *rr, double eps);

/*
 * OUE with per-swap ε in [FP_LDP_EPS_MIN, FP_LDP_EPS_MAX]: thr1 = 2^31 (p = 1/2 exactly),
 * thr0 = ceil(2^32 / (e^ε + 1)), so the achieved eps_swap <= eps; eps_bit = ln((1-q)/(1-p))
 * or ln(p/q), whichever is larger (< eps). Returns 0 or -EINVAL.
 */
int fp_ldp_rr_oue(struct fp_ldp_rr *rr, double eps);

/*
 * Generic (p, q) with 0 < q < p < 1: thresholds rounded to nearest, achieved values stored.
 * Refused (-EINVAL) if either rounds to 0 or 2^32, or they become equal, or the achieved
 * eps_bit exceeds FP_LDP_EPS_MAX.
 */
int fp_ldp_rr_generic(struct fp_ldp_rr *rr, double p, double q);

/*
 * Rebuild rr from stored fields (the memo reader): mech and eps must reproduce thr1 and thr0
 * exactly (for GENERIC, eps must be 0 and the thresholds satisfy the invariants above).
 * Returns 0 or -EINVAL (no detail: the caller names its input).
 */
int fp_ldp_rr_from_thresholds(struct fp_ldp_rr *rr, enum fp_ldp_mech mech, double eps,
			      uint64_t thr1, uint64_t thr0);

/*
 * Variance of one client's debiased report (y - q)/(p - q) of a mask of density f (share of
 * ones, 0..1), averaged over the bits: [q(1-q)(1-f) + p(1-p)f] / (p-q)^2.
 */
double fp_ldp_rr_variance(const struct fp_ldp_rr *rr, double f);

/*
 * Pick the encoding with the smaller variance at density f for the same per-swap loss
 * eps_swap: symmetric RR at eps_swap / 2 per bit or OUE at eps_swap. Symmetric wins for
 * dense masks (f = 0.5), OUE for very sparse ones (crossover near f = 0.1 .. 0.25).
 * Returns 0 or -EINVAL.
 */
int fp_ldp_rr_pick(struct fp_ldp_rr *rr, double eps_swap, double f);

/*
 * Randomize the first nbits bits of the packed mask bits in place with rr: bit j becomes 1
 * with probability thr_{x_j} / 2^32, using one 32-bit word of r per bit, in bit order. Bits
 * past nbits are not touched (0 in a valid mask). bits is fp_mask_bytes(nbits) bytes,
 * borrowed.
 */
void fp_ldp_rr_mask(uint8_t *bits, size_t nbits, const struct fp_ldp_rr *rr, struct fp_ldp_rng *r);

/* The same one bit at a time with fp_ldp_rng_u32: the reference (same stream, same output). */
void fp_ldp_rr_mask_naive(uint8_t *bits, size_t nbits, const struct fp_ldp_rr *rr,
			  struct fp_ldp_rng *r);

/* ---- server: debiasing ---- */

/*
 * Streaming debiasing, one client at a time (each may use its own rr): acc (nbits) +=
 * (y_j - q) / (p - q) for the noisy bits y of that client. After every client has been added,
 * acc[j] is an unbiased estimate of the true number of clients pruning weight j, whatever
 * mix of (p_i, q_i). A tensor may be processed in chunks whose starts are multiples of 8 bits:
 * pass acc + start and bits + start / 8. bits (fp_mask_bytes(nbits)) and rr are borrowed.
 */
void fp_ldp_debias_add(double *acc, const uint8_t *bits, size_t nbits, const struct fp_ldp_rr *rr);

/* The same into f32 accumulators (error about N * 2^-24 * 1/(p-q) after N clients). */
void fp_ldp_debias_add_f32(float *acc, const uint8_t *bits, size_t nbits,
			   const struct fp_ldp_rr *rr);

/* Reference for fp_ldp_debias_add: one bit at a time. */
void fp_ldp_debias_add_naive(double *acc, const uint8_t *bits, size_t nbits,
			     const struct fp_ldp_rr *rr);

/*
 * From plain vote counts when all nclients used the same rr: out (n) = (counts - N q)/(p - q).
 * counts (n) borrowed (e.g. fp_agg_counts).
 */
void fp_ldp_debias_counts(double *out, const uint16_t *counts, size_t n, size_t nclients,
			  const struct fp_ldp_rr *rr);

/*
 * Selection keys: metric (n) = -acc, as f32, for fp_select with FP_METRIC_GIVEN (the lowest
 * metric is pruned first, so the most estimated votes are pruned first). Never NaN for finite
 * acc. With a common rr the selected set equals the one from the raw counts (an increasing
 * affine map). metric may not alias acc.
 */
void fp_ldp_debias_keys(float *metric, const double *acc, size_t n);

/* The same from f32 accumulators; metric may alias acc. */
void fp_ldp_debias_keys_f32(float *metric, const float *acc, size_t n);

/* ---- scores ---- */

enum fp_ldp_noise {
	FP_LDP_LAPLACE = 1,	  /* pure ε: Laplace(Δ/ε) */
	FP_LDP_GAUSS = 2,	  /* (ε, δ): analytic Gaussian mechanism (Balle & Wang 2018) */
	FP_LDP_GAUSS_CLASSIC = 3, /* (ε, δ), ε < 1: σ = Δ sqrt(2 ln(1.25/δ)) / ε */
};

/* "laplace", "gauss", "gauss-classic". */
const char *fp_ldp_noise_name(enum fp_ldp_noise n);

/* Parse one of those names into *ret. Returns 0 or -EINVAL. */
int fp_ldp_noise_parse(const char *s, enum fp_ldp_noise *ret);

#define FP_LDP_SCORE_STEPS   (1u << 20) /* output grid: the clip range in this many steps */
#define FP_LDP_SCORE_ABS_MAX 1e30	/* |lo|, |hi| bound */
#define FP_LDP_DELTA_MIN     1e-14	/* δ range for the Gaussian mechanisms */
#define FP_LDP_DELTA_MAX     0.5

/* The noise of one score tensor: what a round specification carries. Plain data. */
struct fp_ldp_score {
	enum fp_ldp_noise noise;
	double lo, hi; /* public clip range; sensitivity Δ = hi - lo per score */
	double eps;    /* per score */
	double delta;  /* per score (0 for Laplace) */
	double scale;  /* Laplace b = Δ/ε, or Gaussian σ */
	double step;   /* output grid Δ / FP_LDP_SCORE_STEPS */
};

/*
 * Fill s for the mechanism noise on clip range [lo, hi] at (eps, delta): Laplace needs
 * delta == 0; Gaussian needs delta in [FP_LDP_DELTA_MIN, FP_LDP_DELTA_MAX]; the classic
 * Gaussian bound additionally needs eps < 1. eps in [FP_LDP_EPS_MIN, FP_LDP_EPS_MAX], lo < hi,
 * both finite with |.| <= FP_LDP_SCORE_ABS_MAX. Returns 0 or -EINVAL (detail names the field).
 */
int fp_ldp_score_init(struct fp_ldp_score *s, enum fp_ldp_noise noise, double lo, double hi,
		      double eps, double delta);

/*
 * Privatize the n scores x in place: clip each to [lo, hi], snap to the grid
 * lo + step * m (m integer in [0, 2^20]), add noise/step rounded to the nearest integer, and
 * write lo + step * (m + k) as f32. The output is a function of m + noise/step only, so it is
 * post-processing of the ideal mechanism m -> m + noise/step (sensitivity 2^20 steps = Δ).
 * Returns 0 or -EINVAL for a NaN score (detail names `name` (may be NULL) and the index; x is
 * then partly modified).
 */
int fp_ldp_score_apply(float *x, size_t n, const struct fp_ldp_score *s, struct fp_ldp_rng *r,
		       const char *name);

/*
 * δ of the Gaussian mechanism with sensitivity sens and noise σ at ε (exact privacy profile,
 * Balle & Wang 2018 Thm 8): Φ(Δ/(2σ) - εσ/Δ) - e^ε Φ(-Δ/(2σ) - εσ/Δ).
 */
double fp_ldp_gauss_delta(double sens, double sigma, double eps);

/*
 * Smallest σ (to relative 1e-12, rounded up) with fp_ldp_gauss_delta(sens, σ, eps) <= delta,
 * by bisection. Returns NaN if the arguments are out of the ranges of fp_ldp_score_init.
 */
double fp_ldp_gauss_sigma(double sens, double eps, double delta);

/* Classic bound σ = sens sqrt(2 ln(1.25/δ)) / ε (valid only for ε < 1; NaN otherwise). */
double fp_ldp_gauss_sigma_classic(double sens, double eps, double delta);

/* ---- accounting ---- */

/* Basic composition of k (ε, δ) mechanisms: (kε, kδ). Returns 0 or -EINVAL (negative/NaN). */
int fp_ldp_compose_basic(double eps, double delta, uint64_t k, double *ret_eps, double *ret_delta);

/*
 * Advanced composition (Dwork, Rothblum, Vadhan 2010; Dwork & Roth 2014 Thm 3.20) of k
 * (ε, δ) mechanisms with slack δ' in (0, 1): ε' = ε sqrt(2k ln(1/δ')) + k ε (e^ε - 1),
 * δ_total = kδ + δ'. The result is then min'ed with basic composition (which also holds at
 * that larger δ). Returns 0 or -EINVAL.
 */
int fp_ldp_compose_advanced(double eps, double delta, uint64_t k, double slack, double *ret_eps,
			    double *ret_delta);

/* What a client (or the server, per client) reports about one kind of release. */
struct fp_ldp_account {
	const char *mechanism; /* static name: "sym", "oue", "generic", "laplace", ... */
	double eps_unit;       /* ε per bit (masks) or per score */
	double eps_swap;       /* masks: ε per 1->0 + 0->1 swap; scores: = eps_unit */
	double delta_unit;     /* δ per unit (0 for pure mechanisms) */
	uint64_t rounds;       /* rounds reported */
	uint64_t fresh;	       /* of those, with fresh randomness (memo miss) */
	double eps_total;      /* per unit, basic composition over the fresh rounds */
	double delta_total;
};

/* Start an account for masks randomized with rr. */
void fp_ldp_account_init_rr(struct fp_ldp_account *a, const struct fp_ldp_rr *rr);

/* Start an account for scores noised with s. */
void fp_ldp_account_init_score(struct fp_ldp_account *a, const struct fp_ldp_score *s);

/*
 * Record one round; fresh = false when the memoized (permanent) response was sent again,
 * which costs nothing: the same bits reveal nothing new.
 */
void fp_ldp_account_round(struct fp_ldp_account *a, bool fresh);

/*
 * Whole-mask loss per round of a mask of nbits weights with exactly npruned set bits, when
 * neighbouring masks keep the count fixed: min(npruned, nbits - npruned) * eps_swap. This is
 * the honest client-level number; it is huge for dense weight-level masks (docs/privacy.md).
 */
double fp_ldp_rr_mask_eps(const struct fp_ldp_rr *rr, uint64_t nbits, uint64_t npruned);

/* ---- memo: the permanent randomized response ---- */

/*
 * File format, version 1 (integers little-endian, digests BLAKE2b-256 = crypto_generichash
 * with 32-byte output, no key):
 *
 *     0   8  magic 89 46 50 4C 44 50 4D 0A ("\x89FPLDPM\n")
 *     8   4  version = 1
 *    12   4  mechanism (1 sym, 2 oue, 3 generic)
 *    16   8  eps (IEEE f64 bits; 0 for generic)
 *    24   8  thr1, 32 8 thr0 (must be what the mechanism and eps give; see fp_ldp_rr_*)
 *    40  32  model digest (opaque to this module)
 *    72  32  mask digest  (of the TRUE mask; opaque)
 *   104   8  count: tensors, 1 .. FP_LDP_MEMO_MAX_TENSORS
 *   112      count entries: u32 name_len (1 .. FP_LDP_MEMO_MAX_NAME), name (no NUL, unique),
 *            u64 nbits (>= 1), fp_mask_bytes(nbits) bytes of randomized bits (padding 0)
 *    ..  32  digest of every byte before it
 *
 * The size must be exact. The reader validates everything before returning; any refusal is
 * -EINVAL with a detail naming the file (and the tensor). A memo is reused only when model
 * digest, mask digest, mechanism, eps and thresholds all match.
 */
#define FP_LDP_MEMO_VERSION	1
#define FP_LDP_MEMO_MAX_TENSORS (1u << 20)
#define FP_LDP_MEMO_MAX_NAME	1024
#define FP_LDP_MEMO_MAX_FILE	((size_t)1 << 34)

/* One tensor of a memo. */
struct fp_ldp_memo_tensor {
	char *name; /* owned, NUL-terminated */
	uint64_t nbits;
	uint8_t *bits; /* owned, fp_mask_bytes(nbits) randomized bits */
};

/* A memo in memory. */
struct fp_ldp_memo {
	struct fp_ldp_rr rr;
	uint8_t model_digest[32];
	uint8_t mask_digest[32];
	size_t count;
	struct fp_ldp_memo_tensor *t; /* (count), owned */
};

/*
 * Parse and validate a memo file image (data borrowed; copied). label names it in messages.
 * On success *ret is owned by the caller (fp_ldp_memo_free). Returns 0, -EINVAL with a detail
 * "LABEL: ..." (naming the tensor where there is one), or -ENOMEM.
 */
int fp_ldp_memo_parse(const void *data, size_t len, const char *label, struct fp_ldp_memo **ret);

/*
 * Serialize m into a new buffer *ret (caller frees) of *ret_len bytes. Returns 0, -EINVAL
 * (m violates the format: detail says how) or -ENOMEM.
 */
int fp_ldp_memo_serialize(const struct fp_ldp_memo *m, uint8_t **ret, size_t *ret_len);

/* Read path (at most FP_LDP_MEMO_MAX_FILE bytes) and parse it. Errors name path. */
int fp_ldp_memo_load(const char *path, struct fp_ldp_memo **ret);

/* Write m to path atomically (temporary, fsync, rename; mode 0600). Returns 0 or -errno. */
int fp_ldp_memo_save(const char *path, const struct fp_ldp_memo *m);

/* Free; NULL is fine. */
void fp_ldp_memo_free(struct fp_ldp_memo *m);

/* A client's true mask, as fp_ldp_memo_respond takes it. Every pointer is borrowed. */
struct fp_ldp_mask_in {
	const char *name;
	uint64_t nbits;
	const uint8_t *bits; /* fp_mask_bytes(nbits), padding bits 0 */
};

/*
 * The permanent response: if path holds a memo for exactly (model_digest, mask_digest, rr)
 * and the same tensors (names, order, sizes), return it; otherwise randomize every tensor of
 * masks with rr and r, save the memo at path (atomically) and return it. *ret_fresh (may be
 * NULL) tells which (for fp_ldp_account_round). A missing file is a miss; a malformed one is
 * an error (-EINVAL, not silently replaced: a second independent response would leak more).
 * On success *ret is owned by the caller (fp_ldp_memo_free).
 */
int fp_ldp_memo_respond(const char *path, const uint8_t model_digest[32],
			const uint8_t mask_digest[32], const struct fp_ldp_rr *rr,
			const struct fp_ldp_mask_in *masks, size_t n, struct fp_ldp_rng *r,
			struct fp_ldp_memo **ret, bool *ret_fresh);

#endif
