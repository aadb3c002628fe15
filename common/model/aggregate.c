/*
 * FedPrLLM aggregation: vote counting, selection per comparison group, tie rules, weight
 * scaling, and the file-level driver (see aggregate.h and docs/aggregation.md).
 */
#include "aggregate.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FP_AGG_X86 1
#endif

#include "alloc.h"
#include "dtype.h"
#include "err.h"
#include "fileio.h"
#include "hfout.h"
#include "mask.h"
#include "model.h"
#include "par.h"
#include "safetensors.h"

#define VEC_BYTES 32 /* one counting vector: 256 weights */
#define VEC_BITS  256
#define SUB_VECS  128  /* vectors per sub-block: each client stream is read 4 KiB at a time */
#define COL_BLOCK 32   /* columns per task in column selection */
#define PREFETCH  1024 /* bytes ahead in each client mask stream */
#define NO_VOTE	  UINT32_MAX
#define T_ALL	  UINT64_MAX

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- names and options ---- */

static const char *const tie_names[] = { "magnitude", "index", "random" };

const char *fp_agg_tie_name(enum fp_agg_tie t)
{
	return (unsigned)t < 3 ? tie_names[t] : "?";
}

int fp_agg_tie_parse(const char *s, enum fp_agg_tie *ret)
{
	for (unsigned i = 0; s && i < 3; i++)
		if (strcmp(s, tie_names[i]) == 0) {
			*ret = (enum fp_agg_tie)i;
			return 0;
		}
	return -EINVAL;
}

int fp_agg_opts_check(const struct fp_agg_opts *o)
{
	if (!o)
		return fp_err_detail(-EINVAL, "aggregation: no options");
	if (o->nclients < 1 || o->nclients > FP_AGG_MAX_CLIENTS)
		return fp_err_detail(-EINVAL, "aggregation: %zu clients (must be 1 .. %u)",
				     o->nclients, FP_AGG_MAX_CLIENTS);
	if (!(o->sparsity >= 0.0 && o->sparsity <= 1.0))
		return fp_err_detail(-EINVAL, "aggregation: sparsity %g outside [0, 1]",
				     o->sparsity);
	if (o->group != FP_GROUP_LAYER && o->group != FP_GROUP_ROW && o->group != FP_GROUP_COLUMN)
		return fp_err_detail(-EINVAL,
				     "aggregation: comparison group must be layer, row or column");
	if ((unsigned)o->tie > FP_AGG_TIE_RANDOM)
		return fp_err_detail(-EINVAL, "aggregation: unknown tie-break rule %d",
				     (int)o->tie);
	if (o->weights)
		for (size_t c = 0; c < o->nclients; c++) {
			double w = o->weights[c];

			if (!(w > 0.0) || !isfinite(w) || !((float)w > 0.0f) || !isfinite((float)w))
				return fp_err_detail(
					-EINVAL,
					"aggregation: weight of client %zu is %g (must "
					"be finite and > 0 in f32)",
					c, w);
		}
	return 0;
}

/* ---- state ---- */

struct fp_agg {
	struct fp_agg_opts o;
	double *weights;  /* (N) or NULL */
	float *fw;	  /* (N) weights as f32, or NULL */
	double wtotal;	  /* sum of weights (double), or N */
	unsigned nplanes; /* B: bits of N */
	bool avx2;
	bool vpop; /* AVX-512 VPOPCNTQ for the per-client counts */
	size_t nt; /* threads the per-thread buffers are sized for */
	/* *gt, *eq = bits of the 64 votes from p that are > c, == c */
	void (*cmp64)(const struct fp_agg *a, size_t p, uint32_t c, uint64_t *gt, uint64_t *eq);

	/* current tensor */
	char *name;
	size_t rows, cols, numel, nbytes;
	size_t nvec;  /* ceil(numel / 256) */
	size_t next;  /* clients added so far */
	bool started; /* fp_agg_begin called */
	bool pairs_ok;
	unsigned char tkey[crypto_shorthash_KEYBYTES]; /* random tie key of the tensor */
	double count_s;

	/* buffers sized for the largest tensor so far */
	size_t cap_vec;
	uint64_t *planes;  /* (nvec, B, 4): bit j of the count of each weight */
	bool narrow;	   /* N <= 255: counts stored as u8 */
	uint8_t *c8;	   /* (nvec * 256) counts when narrow */
	uint16_t *c16;	   /* (nvec * 256) counts when not narrow; else fp_agg_counts' copy */
	size_t cap_c16;	   /* entries of c16 */
	bool c16_ok;	   /* (narrow) c16 holds the current counts */
	bool mat;	   /* c8/c16 and hist hold the current tensor (materialise) */
	float *wcounts;	   /* (nvec * 256) weighted counts, or NULL */
	uint64_t *hist;	   /* (N + 1) */
	uint64_t *cpruned; /* (N) */
	uint64_t *pairs;   /* (N, N) or NULL */
	uint32_t *thist;   /* (threads, 4, N + 1) counting histograms */
	uint64_t *tpc;	   /* (threads, N) per-client popcounts */
	uint64_t *tpairs;  /* (threads, N, N) or NULL */
	uint32_t *vkeys;   /* selection scratch: vote keys */
	size_t cap_vkeys;
	uint64_t *tkeys; /* tie keys of the tied entries */
	size_t *h16;	 /* (65536) radix histogram for large tie sets */
	size_t cap_tkeys;
};

static void cmp64_generic(const struct fp_agg *a, size_t p, uint32_t c, uint64_t *gt, uint64_t *eq);
#ifdef FP_AGG_X86
static void cmp64_avx2(const struct fp_agg *a, size_t p, uint32_t c, uint64_t *gt, uint64_t *eq);
#endif

void fp__agg_isa(struct fp_agg *a, int level)
{
	if (level < 2)
		a->vpop = false;
	if (level < 1) {
		a->avx2 = false;
		a->cmp64 = cmp64_generic;
	}
}

static unsigned bits_of(size_t n)
{
	unsigned b = 0;

	while (n) {
		b++;
		n >>= 1;
	}
	return b;
}

/* Size the per-thread buffers for fp_par_threads() (it may change between calls). */
static int ensure_threads(struct fp_agg *a)
{
	size_t nt = fp_par_threads(), n = a->o.nclients;
	uint32_t *th;
	uint64_t *pc, *pp = NULL;

	if (nt <= a->nt)
		return 0;
	th = fp_mallocarray(nt * 4, (n + 1) * sizeof(uint32_t));
	pc = fp_mallocarray(nt, n * sizeof(uint64_t));
	if (a->o.pairwise)
		pp = fp_mallocarray(nt * n, n * sizeof(uint64_t));
	if (!th || !pc || (a->o.pairwise && !pp)) {
		free(th);
		free(pc);
		free(pp);
		return -ENOMEM;
	}
	free(a->thist);
	free(a->tpc);
	free(a->tpairs);
	a->thist = th;
	a->tpc = pc;
	a->tpairs = pp;
	a->nt = nt;
	return 0;
}

int fp_agg_new(const struct fp_agg_opts *o, struct fp_agg **ret)
{
	struct fp_agg *a;
	size_t n;
	int r;

	r = fp_agg_opts_check(o);
	if (r < 0)
		return r;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->o = *o;
	n = o->nclients;
	a->nplanes = bits_of(n);
	a->narrow = n <= 255;
	a->wtotal = (double)n;
	if (o->weights) {
		a->weights = fp_mallocarray(n, sizeof(double));
		a->fw = fp_mallocarray(n, sizeof(float));
		if (!a->weights || !a->fw)
			goto nomem;
		a->wtotal = 0;
		for (size_t c = 0; c < n; c++) {
			a->weights[c] = o->weights[c];
			a->fw[c] = (float)o->weights[c];
			a->wtotal += (double)a->fw[c];
		}
		a->o.weights = a->weights;
	}
	a->o.pairwise = o->pairwise && n >= 2 && n <= FP_AGG_MAX_PAIRS;
	a->hist = fp_callocarray(n + 1, sizeof(uint64_t));
	a->cpruned = fp_callocarray(n, sizeof(uint64_t));
	if (!a->hist || !a->cpruned)
		goto nomem;
	if (a->o.pairwise) {
		a->pairs = fp_callocarray(n * n, sizeof(uint64_t));
		if (!a->pairs)
			goto nomem;
	}
	if (ensure_threads(a) < 0)
		goto nomem;
#if defined(__x86_64__) && defined(__GNUC__)
	__builtin_cpu_init();
	a->avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
	a->vpop = a->avx2 && __builtin_cpu_supports("avx512vl") &&
		  __builtin_cpu_supports("avx512vpopcntdq");
#endif
	a->cmp64 = cmp64_generic;
#ifdef FP_AGG_X86
	if (a->avx2 && !a->o.weights)
		a->cmp64 = cmp64_avx2;
#endif
	*ret = a;
	return 0;
nomem:
	fp_agg_free(a);
	return -ENOMEM;
}

void fp_agg_free(struct fp_agg *a)
{
	if (!a)
		return;
	free(a->weights);
	free(a->fw);
	free(a->name);
	free(a->planes);
	free(a->c8);
	free(a->c16);
	free(a->wcounts);
	free(a->hist);
	free(a->cpruned);
	free(a->pairs);
	free(a->thist);
	free(a->tpc);
	free(a->tpairs);
	free(a->vkeys);
	free(a->tkeys);
	free(a->h16);
	free(a);
}

/* Per-tensor key of the random tie rule: BLAKE2b-128(u64le(seed) || name). */
static void random_key(unsigned char key[crypto_shorthash_KEYBYTES], uint64_t seed,
		       const char *name)
{
	crypto_generichash_state st;
	unsigned char le[8];

	for (int i = 0; i < 8; i++)
		le[i] = (unsigned char)(seed >> (8 * i));
	crypto_generichash_init(&st, NULL, 0, crypto_shorthash_KEYBYTES);
	crypto_generichash_update(&st, le, sizeof(le));
	crypto_generichash_update(&st, (const unsigned char *)name, strlen(name));
	crypto_generichash_final(&st, key, crypto_shorthash_KEYBYTES);
}

/* High 32 bits of SipHash-2-4(u64le(p)) under key. */
static uint32_t random_rank(const unsigned char *key, uint64_t p)
{
	unsigned char in[8], out[crypto_shorthash_BYTES];
	uint64_t h = 0;

	for (int i = 0; i < 8; i++)
		in[i] = (unsigned char)(p >> (8 * i));
	crypto_shorthash(out, in, sizeof(in), key);
	for (int i = 7; i >= 0; i--)
		h = h << 8 | out[i];
	return (uint32_t)(h >> 32);
}

int fp_agg_begin(struct fp_agg *a, const char *name, size_t rows, size_t cols)
{
	size_t numel, nvec, n = a->o.nclients;
	char *nm;

	if (!name)
		name = "(unnamed)";
	if (rows == 0 || cols == 0 || !fp_mul_ok(rows, cols, &numel) || numel > FP_AGG_MAX_NUMEL)
		return fp_err_detail(-EINVAL,
				     "tensor '%s': shape (%zu, %zu) (must be non-empty and at "
				     "most %u weights)",
				     name, rows, cols, FP_AGG_MAX_NUMEL);
	nm = fp_strdup(name);
	if (!nm)
		return -ENOMEM;
	free(a->name);
	a->name = nm;
	nvec = numel / VEC_BITS + (numel % VEC_BITS != 0);
	if (nvec > a->cap_vec) {
		uint64_t *pl = fp_aligned_array(nvec * 4, (size_t)a->nplanes * sizeof(uint64_t));
		void *cn = fp_aligned_array(nvec * VEC_BITS, a->narrow ? 1 : sizeof(uint16_t));
		float *wc = a->o.weights ? fp_aligned_array(nvec * VEC_BITS, sizeof(float)) : NULL;

		if (!pl || !cn || (a->o.weights && !wc)) {
			free(pl);
			free(cn);
			free(wc);
			return -ENOMEM;
		}
		free(a->planes);
		free(a->wcounts);
		a->planes = pl;
		a->wcounts = wc;
		if (a->narrow) {
			free(a->c8);
			a->c8 = cn;
		} else {
			free(a->c16);
			a->c16 = cn;
			a->cap_c16 = nvec * VEC_BITS;
		}
		a->cap_vec = nvec;
	}
	a->rows = rows;
	a->cols = cols;
	a->numel = numel;
	a->nbytes = fp_mask_bytes(numel);
	a->nvec = nvec;
	a->next = 0;
	a->started = true;
	a->pairs_ok = false;
	a->c16_ok = false;
	a->mat = false;
	a->count_s = 0;
	memset(a->planes, 0, nvec * 4 * a->nplanes * sizeof(uint64_t));
	if (a->wcounts)
		memset(a->wcounts, 0, nvec * VEC_BITS * sizeof(float));
	memset(a->hist, 0, (n + 1) * sizeof(uint64_t));
	memset(a->cpruned, 0, n * sizeof(uint64_t));
	if (a->pairs)
		memset(a->pairs, 0, n * n * sizeof(uint64_t));
	if (a->o.tie == FP_AGG_TIE_RANDOM)
		random_key(a->tkey, a->o.seed, name);
	return 0;
}

/* ---- vote counting: bit-sliced counters ---- */

typedef uint64_t v4u __attribute__((vector_size(32)));
typedef uint16_t v16h __attribute__((vector_size(32)));

/* Vectors go through pointers and macros only: by value they would change the ABI. */
#define LD4(v, p) memcpy(&(v), (p), sizeof(v))

static inline __attribute__((always_inline)) uint64_t pop4(const v4u *v)
{
	return (uint64_t)(__builtin_popcountll((*v)[0]) + __builtin_popcountll((*v)[1]) +
			  __builtin_popcountll((*v)[2]) + __builtin_popcountll((*v)[3]));
}

/* Carry-save adder: h:l = a + b + c per bit. l may alias a. */
#define CSA(h, l, a, b, c)                      \
	do {                                    \
		v4u u_ = (a) ^ (b);             \
		(h) = ((a) & (b)) | (u_ & (c)); \
		(l) = u_ ^ (c);                 \
	} while (0)

/* Add the word *px to the counter pl[j0..B) at weight 2^j0. */
static inline __attribute__((always_inline)) void ripple(v4u *pl, unsigned j0, unsigned B,
							 const v4u *px)
{
	v4u x = *px;

	for (unsigned j = j0; j < B; j++) {
		v4u t = pl[j] & x;

		pl[j] ^= x;
		x = t;
	}
}

/*
 * Vectors [g0, g1) of the counters planes += the masks x[0..n); pc[c] += pruned bits of
 * mask c in that range. Every mask covers the full range (no tail).
 */
static inline __attribute__((always_inline)) void
count_body(v4u *restrict planes, unsigned B, const uint8_t *const *x, size_t n, size_t g0,
	   size_t g1, uint64_t *restrict pc, void (*popacc)(v4u *acc, const v4u *x))
{
	size_t c = 0;

	for (; c + 16 <= n; c += 16) {
		const uint8_t *const *y = x + c;
		v4u p[16] = { { 0 } };

		for (size_t g = g0; g < g1; g++) {
			v4u *pl = planes + g * B;
			v4u ones = pl[0], twos = pl[1], fours = pl[2], eights = pl[3];
			v4u twosA, twosB, foursA, foursB, eightsA, eightsB, sixteens;
			v4u in[16];
			size_t off = g * VEC_BYTES;

			for (int t = 0; t < 16; t++) {
				LD4(in[t], y[t] + off);
				/* one prefetch per 64-byte line: many streams defeat the hardware's */
				if (!(g & 1))
					__builtin_prefetch(y[t] + off + PREFETCH);
				popacc(&p[t], &in[t]);
			}
			CSA(twosA, ones, ones, in[0], in[1]);
			CSA(twosB, ones, ones, in[2], in[3]);
			CSA(foursA, twos, twos, twosA, twosB);
			CSA(twosA, ones, ones, in[4], in[5]);
			CSA(twosB, ones, ones, in[6], in[7]);
			CSA(foursB, twos, twos, twosA, twosB);
			CSA(eightsA, fours, fours, foursA, foursB);
			CSA(twosA, ones, ones, in[8], in[9]);
			CSA(twosB, ones, ones, in[10], in[11]);
			CSA(foursA, twos, twos, twosA, twosB);
			CSA(twosA, ones, ones, in[12], in[13]);
			CSA(twosB, ones, ones, in[14], in[15]);
			CSA(foursB, twos, twos, twosA, twosB);
			CSA(eightsB, fours, fours, foursA, foursB);
			CSA(sixteens, eights, eights, eightsA, eightsB);
			pl[0] = ones;
			pl[1] = twos;
			pl[2] = fours;
			pl[3] = eights;
			ripple(pl, 4, B, &sixteens);
		}
		for (int t = 0; t < 16; t++)
			pc[c + t] += p[t][0] + p[t][1] + p[t][2] + p[t][3];
	}
	for (; c < n; c++) {
		v4u p = { 0 };

		for (size_t g = g0; g < g1; g++) {
			v4u in;

			LD4(in, x[c] + g * VEC_BYTES);
			popacc(&p, &in);
			ripple(planes + g * B, 0, B, &in);
		}
		pc[c] += p[0] + p[1] + p[2] + p[3];
	}
}

/* *acc (lane 0) += bits set in *x. */
static inline __attribute__((always_inline)) void popacc_scalar(v4u *acc, const v4u *x)
{
	(*acc)[0] += pop4(x);
}

static void count_generic(v4u *planes, unsigned B, const uint8_t *const *x, size_t n, size_t g0,
			  size_t g1, uint64_t *pc)
{
	count_body(planes, B, x, n, g0, g1, pc, popacc_scalar);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,popcnt"))) static void count_avx2(v4u *planes, unsigned B,
							      const uint8_t *const *x, size_t n,
							      size_t g0, size_t g1, uint64_t *pc)
{
	count_body(planes, B, x, n, g0, g1, pc, popacc_scalar);
}

/* *acc += bits set in each lane of *x (AVX-512 VPOPCNTQ on 256-bit vectors). */
__attribute__((target("avx2,avx512f,avx512vl,avx512vpopcntdq"))) static inline
	__attribute__((always_inline)) void
	popacc_vpop(v4u *acc, const v4u *x)
{
	*acc += (v4u)_mm256_popcnt_epi64((__m256i)*x);
}

__attribute__((target("avx2,avx512f,avx512vl,avx512vpopcntdq,popcnt"))) static void
count_vpop(v4u *planes, unsigned B, const uint8_t *const *x, size_t n, size_t g0, size_t g1,
	   uint64_t *pc)
{
	count_body(planes, B, x, n, g0, g1, pc, popacc_vpop);
}
#endif

struct count_ctx {
	struct fp_agg *a;
	const uint8_t *const *x; /* (n) masks */
	size_t first, n;
	size_t full; /* vectors every mask covers completely */
};

static void count_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct count_ctx *cx = p;
	struct fp_agg *a = cx->a;
	uint64_t *pc = a->tpc + (size_t)tid * a->o.nclients;
	v4u *planes = (v4u *)a->planes;

	for (size_t g = b; g < e; g += SUB_VECS) {
		size_t ge = g + SUB_VECS < e ? g + SUB_VECS : e;

#if defined(__x86_64__) && defined(__GNUC__)
		if (a->vpop) {
			count_vpop(planes, a->nplanes, cx->x, cx->n, g, ge, pc);
			continue;
		}
		if (a->avx2) {
			count_avx2(planes, a->nplanes, cx->x, cx->n, g, ge, pc);
			continue;
		}
#endif
		count_generic(planes, a->nplanes, cx->x, cx->n, g, ge, pc);
	}
}

/* Weighted counts of the bytes [b, e) of the masks. */
static void wcount_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct count_ctx *cx = p;
	struct fp_agg *a = cx->a;

	(void)tid;
	for (size_t blk = b; blk < e; blk += 512) {
		size_t be = blk + 512 < e ? blk + 512 : e;

		for (size_t c = 0; c < cx->n; c++) {
			const uint8_t *m = cx->x[c];
			float w = a->fw[cx->first + c];

			for (size_t i = blk; i < be; i++) {
				unsigned v = m[i];
				float *wc = a->wcounts + i * 8;

				if (!v)
					continue;
				for (unsigned t = 0; t < 8; t++)
					wc[t] += (v >> t & 1) ? w : 0.0f;
			}
		}
	}
}

/* Pairwise intersections of the words [b, e) (full 64-bit words of every mask). */
static inline __attribute__((always_inline)) void
pairs_body(const uint8_t *const *x, size_t n, size_t b, size_t e, uint64_t *restrict m)
{
	for (size_t blk = b; blk < e; blk += 64) {
		size_t be = blk + 64 < e ? blk + 64 : e;

		for (size_t i = 0; i + 1 < n; i++)
			for (size_t j = i + 1; j < n; j++) {
				uint64_t s = 0;

				for (size_t w = blk; w < be; w++) {
					uint64_t u, v;

					memcpy(&u, x[i] + w * 8, 8);
					memcpy(&v, x[j] + w * 8, 8);
					s += (uint64_t)__builtin_popcountll(u & v);
				}
				m[i * n + j] += s;
			}
	}
}

static void pairs_generic(const uint8_t *const *x, size_t n, size_t b, size_t e, uint64_t *m)
{
	pairs_body(x, n, b, e, m);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("popcnt"))) static void pairs_popcnt(const uint8_t *const *x, size_t n,
							   size_t b, size_t e, uint64_t *m)
{
	pairs_body(x, n, b, e, m);
}
#endif

#ifdef FP_AGG_X86
/* The same 4 words at a time with AVX-512 VPOPCNTQ; [b, e) in 256-bit vectors. */
__attribute__((target("avx2,avx512f,avx512vl,avx512vpopcntdq"))) static void
pairs_vpop(const uint8_t *const *x, size_t n, size_t b, size_t e, uint64_t *restrict m)
{
	for (size_t blk = b; blk < e; blk += 16) {
		size_t be = blk + 16 < e ? blk + 16 : e;

		for (size_t i = 0; i + 1 < n; i++)
			for (size_t j = i + 1; j < n; j++) {
				__m256i acc = _mm256_setzero_si256();

				for (size_t w = blk; w < be; w++) {
					__m256i u = _mm256_loadu_si256(
						(const __m256i *)(x[i] + w * VEC_BYTES));
					__m256i v = _mm256_loadu_si256(
						(const __m256i *)(x[j] + w * VEC_BYTES));

					acc = _mm256_add_epi64(
						acc, _mm256_popcnt_epi64(_mm256_and_si256(u, v)));
				}
				m[i * n + j] += (uint64_t)_mm256_extract_epi64(acc, 0) +
						(uint64_t)_mm256_extract_epi64(acc, 1) +
						(uint64_t)_mm256_extract_epi64(acc, 2) +
						(uint64_t)_mm256_extract_epi64(acc, 3);
			}
	}
}
#endif

/* Words [b, e) of the pairwise intersections (with VPOPCNTQ: vectors of 4 words). */
static void pairs_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct count_ctx *cx = p;
	struct fp_agg *a = cx->a;
	size_t n = cx->n;
	uint64_t *m = a->tpairs + (size_t)tid * n * n;

#if defined(__x86_64__) && defined(__GNUC__)
	if (a->vpop) {
		pairs_vpop(cx->x, n, b, e, m);
		return;
	}
	if (a->avx2) {
		pairs_popcnt(cx->x, n, b, e, m);
		return;
	}
#endif
	pairs_generic(cx->x, n, b, e, m);
}

/* Histogram of the first `valid` counts at x into the 4 interleaved sub-histograms h. */
#define HIST_COUNTS(x, valid, h, n1)                                  \
	do {                                                          \
		if ((valid) == VEC_BITS) {                            \
			for (size_t t_ = 0; t_ < VEC_BITS; t_ += 4) { \
				(h)[(x)[t_]]++;                       \
				(h)[(n1) + (x)[t_ + 1]]++;            \
				(h)[2 * (n1) + (x)[t_ + 2]]++;        \
				(h)[3 * (n1) + (x)[t_ + 3]]++;        \
			}                                             \
		} else {                                              \
			for (size_t t_ = 0; t_ < (valid); t_++)       \
				(h)[(x)[t_]]++;                       \
		}                                                     \
	} while (0)

/* Weights of vector g that exist (the last vector may be partial). */
static inline size_t vec_valid(const struct fp_agg *a, size_t g)
{
	size_t p0 = g * VEC_BITS;

	return a->numel - p0 < VEC_BITS ? a->numel - p0 : VEC_BITS;
}

/* 8 bytes 0/1 from the 8 bits of a byte, LSB first. */
static inline uint64_t spread8(uint64_t x)
{
	x = (x | x << 28) & 0x0000000f0000000full;
	x = (x | x << 14) & 0x0003000300030003ull;
	return (x | x << 7) & 0x0101010101010101ull;
}

/* Planes -> u8 counts (B <= 8) and the histograms, vectors [b, e); portable. */
static void finish8_generic(struct fp_agg *a, size_t b, size_t e, uint32_t *restrict h)
{
	unsigned B = a->nplanes;
	size_t n1 = a->o.nclients + 1;

	for (size_t g = b; g < e; g++) {
		const uint64_t *pl = a->planes + g * B * 4;
		uint8_t *out = a->c8 + g * VEC_BITS;

		for (unsigned byte = 0; byte < VEC_BYTES; byte++) {
			uint64_t acc = 0;

			for (unsigned j = 0; j < B; j++)
				acc |= spread8((pl[j * 4 + byte / 8] >> (8 * (byte % 8))) & 0xff)
				       << j;
			memcpy(out + byte * 8, &acc, 8);
		}
		HIST_COUNTS(out, vec_valid(a, g), h, n1);
	}
}

#ifdef FP_AGG_X86
/* The same with AVX2: 32 bits of a plane become 32 bytes 0/1 by one shuffle and compare. */
__attribute__((target("avx2"))) static void finish8_avx2(struct fp_agg *a, size_t b, size_t e,
							 uint32_t *restrict h)
{
	unsigned B = a->nplanes;
	size_t n1 = a->o.nclients + 1;
	const __m256i rep = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2,
					     2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
	const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ull);

	for (size_t g = b; g < e; g++) {
		const uint32_t *pl = (const uint32_t *)(a->planes + g * B * 4);
		uint8_t *out = a->c8 + g * VEC_BITS;

		for (unsigned q = 0; q < 8; q++) {
			__m256i acc = _mm256_setzero_si256();

			for (unsigned j = 0; j < B; j++) {
				__m256i v = _mm256_set1_epi32((int)pl[j * 8 + q]);

				v = _mm256_and_si256(_mm256_shuffle_epi8(v, rep), sel);
				v = _mm256_cmpeq_epi8(v, sel);
				acc = _mm256_or_si256(
					acc, _mm256_and_si256(v, _mm256_set1_epi8((char)(1 << j))));
			}
			_mm256_storeu_si256((__m256i *)(out + q * 32), acc);
		}
		HIST_COUNTS(out, vec_valid(a, g), h, n1);
	}
}
#endif

/* Planes -> u16 counts (N > 255) and the histograms, vectors [b, e). */
static void finish16(struct fp_agg *a, size_t b, size_t e, uint32_t *restrict h)
{
	unsigned B = a->nplanes;
	size_t n1 = a->o.nclients + 1;
	const v16h sel = { 1,	2,   4,	   8,	 16,   32,   64,    128,
			   256, 512, 1024, 2048, 4096, 8192, 16384, 32768 };

	for (size_t g = b; g < e; g++) {
		const uint64_t *pl = a->planes + g * B * 4;
		uint16_t *out = a->c16 + g * VEC_BITS;

		for (unsigned q = 0; q < 16; q++) {
			v16h acc = { 0 };

			for (unsigned j = 0; j < B; j++) {
				uint16_t bits = (uint16_t)(pl[j * 4 + q / 4] >> (16 * (q % 4)));
				v16h bv = (v16h){ 0 } + bits;
				v16h on = (v16h)((bv & sel) != 0);

				acc |= on & (uint16_t)(1u << j);
			}
			memcpy(out + q * 16, &acc, sizeof(acc));
		}
		HIST_COUNTS(out, vec_valid(a, g), h, n1);
	}
}

static void finish_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct fp_agg *a = p;
	uint32_t *h = a->thist + (size_t)tid * 4 * (a->o.nclients + 1);

	if (!a->narrow)
		finish16(a, b, e, h);
#ifdef FP_AGG_X86
	else if (a->avx2)
		finish8_avx2(a, b, e, h);
#endif
	else
		finish8_generic(a, b, e, h);
}

int fp_agg_add(struct fp_agg *a, size_t first, size_t n, const uint8_t *const *bits)
{
	size_t N = a->o.nclients, nt;
	struct count_ctx cx = { .a = a, .x = bits, .first = first, .n = n };
	double t0 = now();

	if (!a->started)
		return fp_err_detail(-EINVAL, "aggregation: fp_agg_add before fp_agg_begin");
	if (ensure_threads(a) < 0)
		return -ENOMEM;
	nt = fp_par_threads();
	if (n == 0 || first != a->next || n > N - first)
		return fp_err_detail(-EINVAL,
				     "tensor '%s': clients %zu..%zu added, expected the next "
				     "from %zu of %zu",
				     a->name, first, first + n - 1, a->next, N);
	for (size_t c = 0; c < n; c++) {
		if (!bits[c])
			return fp_err_detail(-EINVAL, "tensor '%s': no mask for client %zu",
					     a->name, first + c);
		if (a->numel % 8 && bits[c][a->nbytes - 1] >> (a->numel % 8))
			return fp_err_detail(-EINVAL,
					     "tensor '%s': mask of client %zu has padding bits set",
					     a->name, first + c);
	}
	memset(a->tpc, 0, nt * N * sizeof(uint64_t));
	cx.full = a->nbytes / VEC_BYTES;
	fp_par_for(cx.full, 64, count_task, &cx);
	if (a->nbytes % VEC_BYTES) {
		/* the last, partial vector: through a zero-padded copy */
		size_t g = cx.full, tail = a->nbytes - g * VEC_BYTES;
		v4u *pl = (v4u *)a->planes + g * a->nplanes;

		for (size_t c = 0; c < n; c++) {
			uint8_t buf[VEC_BYTES] = { 0 };
			v4u in;

			memcpy(buf, bits[c] + g * VEC_BYTES, tail);
			LD4(in, buf);
			a->tpc[c] += pop4(&in);
			ripple(pl, 0, a->nplanes, &in);
		}
	}
	for (size_t t = 0; t < nt; t++)
		for (size_t c = 0; c < n; c++)
			a->cpruned[first + c] += a->tpc[t * N + c];
	if (a->wcounts)
		fp_par_for(a->nbytes, 4096, wcount_task, &cx);
	if (a->o.pairwise && first == 0 && n == N) {
		size_t words = a->nbytes / 8, rem = a->nbytes % 8;

		memset(a->tpairs, 0, nt * N * N * sizeof(uint64_t));
		if (a->vpop) {
			/* whole vectors; the words after them go with the tail below */
			fp_par_for(words / 4, 64, pairs_task, &cx);
			rem += (words % 4) * 8;
			words -= words % 4;
		} else {
			fp_par_for(words, 256, pairs_task, &cx);
		}
		for (size_t t = 0; t < nt; t++)
			for (size_t i = 0; i < N * N; i++)
				a->pairs[i] += a->tpairs[t * N * N + i];
		if (rem)
			for (size_t i = 0; i + 1 < N; i++)
				for (size_t j = i + 1; j < N; j++)
					for (size_t k = words * 8; k < a->nbytes; k++)
						a->pairs[i * N + j] += (uint64_t)__builtin_popcount(
							bits[i][k] & bits[j][k]);
		a->pairs_ok = true;
	}
	a->next += n;
	if (a->next == N && a->pairs_ok)
		for (size_t i = 0; i < N; i++)
			a->pairs[i * N + i] = a->cpruned[i];
	a->count_s += now() - t0;
	return 0;
}

/*
 * Turn the bit-sliced counters into byte counts (u8, or u16 for N > 255) and the vote
 * histogram, once per tensor, when something needs them (row and column selection, scaling,
 * fp_agg_counts, fp_agg_histogram). Layer selection works on the counters directly.
 */
static int materialise(struct fp_agg *a)
{
	size_t n1 = a->o.nclients + 1, nt;
	double t0 = now();

	if (!a->started || a->next != a->o.nclients)
		return fp_err_detail(-EINVAL, "tensor '%s': %zu of %zu client masks added",
				     a->name ? a->name : "(none)", a->next, a->o.nclients);
	if (a->mat)
		return 0;
	if (ensure_threads(a) < 0)
		return -ENOMEM;
	nt = fp_par_threads();
	memset(a->thist, 0, nt * 4 * n1 * sizeof(uint32_t));
	fp_par_for(a->nvec, 64, finish_task, a);
	memset(a->hist, 0, n1 * sizeof(uint64_t));
	for (size_t t = 0; t < nt * 4; t++)
		for (size_t v = 0; v < n1; v++)
			a->hist[v] += a->thist[t * n1 + v];
	a->mat = true;
	a->count_s += now() - t0;
	return 0;
}

const uint16_t *fp_agg_counts(struct fp_agg *a)
{
	if (materialise(a) < 0)
		return NULL;
	if (!a->narrow)
		return a->c16;
	if (!a->c16_ok) {
		if (a->cap_c16 < a->numel) {
			uint16_t *c = fp_mallocarray(a->numel, sizeof(uint16_t));

			if (!c)
				return NULL;
			free(a->c16);
			a->c16 = c;
			a->cap_c16 = a->numel;
		}
		for (size_t p = 0; p < a->numel; p++)
			a->c16[p] = a->c8[p];
		a->c16_ok = true;
	}
	return a->c16_ok ? a->c16 : NULL;
}

const float *fp_agg_wcounts(const struct fp_agg *a)
{
	return a->wcounts;
}

const uint64_t *fp_agg_histogram(struct fp_agg *a)
{
	return materialise(a) < 0 ? NULL : a->hist;
}

const uint64_t *fp_agg_client_pruned(const struct fp_agg *a)
{
	return a->cpruned;
}

const uint64_t *fp_agg_pairs(const struct fp_agg *a)
{
	return a->pairs_ok && a->next == a->o.nclients ? a->pairs : NULL;
}

void fp_agg_count_naive(uint16_t *counts, float *wcounts, size_t nbits, const uint8_t *const *masks,
			size_t n, const double *weights)
{
	for (size_t p = 0; p < nbits; p++) {
		unsigned c = 0;
		float s = 0.0f;

		for (size_t i = 0; i < n; i++)
			if (fp_mask_get(masks[i], p)) {
				c++;
				if (weights)
					s += (float)weights[i];
			}
		counts[p] = (uint16_t)c;
		if (wcounts)
			wcounts[p] = s;
	}
}

/* ---- selection ---- */

/* The decision for one comparison group. */
struct grp {
	uint32_t c;    /* boundary vote key; NO_VOTE when k == 0 (nothing pruned) */
	uint64_t t;    /* of the entries with vote c, those with tie key < t are pruned */
	uint64_t tied; /* entries with vote c */
	uint64_t need; /* of those, pruned */
};

struct sel_ctx {
	struct fp_agg *a;
	const float *w; /* (rows, cols) or NULL */
	uint8_t *mask;
	uint64_t k;
	unsigned kbits; /* bits of a vote key: 16 (counts) or 32 (f32 bits) */
	struct grp *g;	/* (groups) */
	size_t chunk;	/* layer gather and emission: weights per chunk, a multiple of 64 */
	size_t nchunks;
	uint64_t *coff;	 /* (nchunks + 1) tied entries before each chunk */
	size_t scratch;	 /* per-thread scratch entries in a->vkeys and a->tkeys */
	size_t *nan_pos; /* (threads) first NaN met, SIZE_MAX if none */
	/* vote comparison of 64 weights: on the counts, or on the bit-sliced counters */
	void (*cmp64)(const struct fp_agg *a, size_t p, uint32_t c, uint64_t *gt, uint64_t *eq);
	const uint64_t *korder; /* layer: tie keys of the tied entries in index order, or NULL */
	/* bit-sliced boundary search */
	unsigned bit;	   /* plane being decided */
	uint64_t flip[16]; /* per plane above `bit`: 0 where the prefix has a 1, else ~0 */
	uint64_t n1[FP_PAR_MAX_THREADS], nall[FP_PAR_MAX_THREADS];
};

/* Vote key of weight p: the count, or the bits of the (non-negative) weighted count. */
static inline uint32_t vote_at(const struct fp_agg *a, size_t p)
{
	if (a->wcounts)
		return fp_f32_bits(a->wcounts[p]);
	return a->narrow ? a->c8[p] : a->c16[p];
}

/* Bits of the 64 votes from p (a multiple of 64; past numel the padding is 0): > c, == c. */
static void cmp64_generic(const struct fp_agg *a, size_t p, uint32_t c, uint64_t *gt, uint64_t *eq)
{
	uint64_t g = 0, e = 0;

	for (unsigned i = 0; i < 64; i++) {
		uint32_t v = vote_at(a, p + i);

		g |= (uint64_t)(v > c) << i;
		e |= (uint64_t)(v == c) << i;
	}
	*gt = g;
	*eq = e;
}

#ifdef FP_AGG_X86
/* The same for u8 or u16 counts with AVX2 (c < 256 or c < 65536). */
__attribute__((target("avx2"))) static void cmp64_avx2(const struct fp_agg *a, size_t p, uint32_t c,
						       uint64_t *gt, uint64_t *eq)
{
	uint32_t e[2], g[2];

	if (a->narrow) {
		__m256i cv = _mm256_set1_epi8((char)c);

		for (int k = 0; k < 2; k++) {
			__m256i x = _mm256_loadu_si256((const __m256i *)(a->c8 + p + 32 * k));
			__m256i m = _mm256_cmpeq_epi8(x, cv);
			__m256i ge = _mm256_cmpeq_epi8(_mm256_max_epu8(x, cv), x);

			e[k] = (uint32_t)_mm256_movemask_epi8(m);
			g[k] = (uint32_t)_mm256_movemask_epi8(_mm256_andnot_si256(m, ge));
		}
	} else {
		__m256i cv = _mm256_set1_epi16((short)c);

		for (int k = 0; k < 2; k++) {
			const __m256i *x = (const __m256i *)(a->c16 + p + 32 * k);
			__m256i x0 = _mm256_loadu_si256(x), x1 = _mm256_loadu_si256(x + 1);
			__m256i m0 = _mm256_cmpeq_epi16(x0, cv), m1 = _mm256_cmpeq_epi16(x1, cv);
			__m256i g0 = _mm256_andnot_si256(
				m0, _mm256_cmpeq_epi16(_mm256_max_epu16(x0, cv), x0));
			__m256i g1 = _mm256_andnot_si256(
				m1, _mm256_cmpeq_epi16(_mm256_max_epu16(x1, cv), x1));

			/* packs interleaves 128-bit lanes; the permute puts them back in order */
			e[k] = (uint32_t)_mm256_movemask_epi8(
				_mm256_permute4x64_epi64(_mm256_packs_epi16(m0, m1), 0xd8));
			g[k] = (uint32_t)_mm256_movemask_epi8(
				_mm256_permute4x64_epi64(_mm256_packs_epi16(g0, g1), 0xd8));
		}
	}
	*eq = e[0] | (uint64_t)e[1] << 32;
	*gt = g[0] | (uint64_t)g[1] << 32;
}
#endif

/*
 * Tie key of weight p whose index inside its group is idx; T_ALL for a NaN weight under the
 * magnitude rule (real keys are below 2^64 - 1).
 */
static inline uint64_t tie_at(const struct fp_agg *a, const float *w, size_t p, uint64_t idx)
{
	uint32_t m;

	switch (a->o.tie) {
	case FP_AGG_TIE_MAGNITUDE:
		m = fp_f32_bits(w[p]) & 0x7fffffffu;
		if (m > 0x7f800000u)
			return T_ALL;
		return (uint64_t)m << 32 | idx;
	case FP_AGG_TIE_RANDOM:
		return (uint64_t)random_rank(a->tkey, p) << 32 | idx;
	case FP_AGG_TIE_INDEX:
		break;
	}
	return idx;
}

/*
 * The k-th largest (1 <= k <= n) of the n keys in v (reordered): MSB-first radix select on
 * bytes, keeping only the bucket that holds it. *ret_above = keys larger, *ret_eq = keys equal.
 */
static uint32_t kth_largest32(uint32_t *v, size_t n, uint64_t k, unsigned kbits,
			      uint64_t *ret_above, uint64_t *ret_eq)
{
	uint64_t above = 0;

	for (int shift = (int)kbits - 8; shift >= 0; shift -= 8) {
		size_t h[256] = { 0 }, cum = 0, m = 0;
		unsigned b;

		for (size_t i = 0; i < n; i++)
			h[(v[i] >> shift) & 255]++;
		for (b = 255; b > 0 && cum + h[b] < k; b--)
			cum += h[b];
		above += cum;
		k -= cum;
		if (h[b] != n) {
			for (size_t i = 0; i < n; i++)
				if (((v[i] >> shift) & 255) == b)
					v[m++] = v[i];
			n = m;
		}
	}
	*ret_above = above;
	*ret_eq = n;
	return v[0];
}

/*
 * The k-th smallest (1 <= k <= n) of n distinct keys in v (reordered); MSB-first radix select
 * from the highest bit where the keys differ, the first digit 16 bits wide for large n.
 */
static uint64_t kth_smallest64(uint64_t *v, size_t n, uint64_t k, size_t *h16)
{
	uint64_t any = 0, all = ~(uint64_t)0;
	int shift, top;

	for (size_t i = 0; i < n; i++) {
		any |= v[i];
		all &= v[i];
	}
	if (any == all)
		return v[0];
	top = 63 - __builtin_clzll(any ^ all);
	if (h16 && n >= 1u << 16 && top >= 15) {
		size_t *h = h16, cum = 0, m = 0;
		unsigned b;

		shift = top - 15;
		memset(h, 0, (1u << 16) * sizeof(size_t));
		{
			for (size_t i = 0; i < n; i++)
				h[(v[i] >> shift) & 0xffff]++;
			for (b = 0; b < 0xffff && cum + h[b] < k; b++)
				cum += h[b];
			k -= cum;
			for (size_t i = 0; i < n; i++)
				if (((v[i] >> shift) & 0xffff) == b)
					v[m++] = v[i];
			n = m;
			top = shift - 1;
			if (n == 1 || top < 0)
				return v[0];
		}
	}
	shift = top / 8 * 8;
	for (; shift >= 0 && n > 1; shift -= 8) {
		size_t h[256] = { 0 }, cum = 0, m = 0;
		unsigned b;

		for (size_t i = 0; i < n; i++)
			h[(v[i] >> shift) & 255]++;
		for (b = 0; b < 255 && cum + h[b] < k; b++)
			cum += h[b];
		k -= cum;
		if (h[b] != n) {
			for (size_t i = 0; i < n; i++)
				if (((v[i] >> shift) & 255) == b)
					v[m++] = v[i];
			n = m;
		}
	}
	return v[0];
}

/* Boundary of a group from its n gathered vote keys (reordered): fills c, tied, need, t. */
static void decide_votes(struct grp *g, uint32_t *v, size_t n, uint64_t k, unsigned kbits)
{
	uint64_t above, eq;

	if (k == 0) {
		*g = (struct grp){ .c = NO_VOTE, .t = 0 };
		return;
	}
	g->c = kth_largest32(v, n, k, kbits, &above, &eq);
	g->tied = eq;
	g->need = k - above;
	g->t = g->need == eq ? T_ALL : 0; /* 0: to be found among the tied */
}

/* Bits set in x without a library call (no POPCNT in the baseline x86-64 ISA). */
static inline uint64_t pop64(uint64_t x)
{
	x = x - ((x >> 1) & 0x5555555555555555ull);
	x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
	return (x * 0x0101010101010101ull) >> 56;
}

/* The bits of word w (64 weights) that are weights of the tensor. */
static inline uint64_t word_valid(const struct fp_agg *a, size_t w)
{
	size_t p0 = w * 64;

	if (p0 >= a->numel)
		return 0;
	return a->numel - p0 >= 64 ? ~0ull : (1ull << (a->numel - p0)) - 1;
}

/* cmp64 on the bit-sliced counters: MSB-first comparison of every plane with c. */
static void cmp64_planes(const struct fp_agg *a, size_t p, uint32_t c, uint64_t *gt, uint64_t *eq)
{
	size_t w = p / 64;
	const uint64_t *pl = a->planes + (w / 4) * a->nplanes * 4 + w % 4;
	uint64_t g = 0, e = ~0ull;

	for (unsigned j = a->nplanes; j-- > 0;) {
		uint64_t x = pl[j * 4];

		if (c >> j & 1) {
			e &= x;
		} else {
			g |= e & x;
			e &= ~x;
		}
	}
	*gt = g;
	*eq = e;
}

/*
 * One step of the boundary search on the counters, vectors [b, e): among the weights whose
 * count agrees with the prefix on the planes above s->bit, how many (nall) and how many of
 * those have bit s->bit set (n1).
 */
static inline __attribute__((always_inline)) void planes_step_body(struct sel_ctx *s, size_t b,
								   size_t e, unsigned tid)
{
	struct fp_agg *a = s->a;
	unsigned B = a->nplanes, bit = s->bit;
	uint64_t n1 = 0, nall = 0;

	for (size_t g = b; g < e; g++) {
		const uint64_t *pl = a->planes + g * B * 4;

		for (size_t l = 0; l < 4; l++) {
			uint64_t m = word_valid(a, g * 4 + l);

			for (unsigned j = B - 1; j > bit; j--)
				m &= pl[j * 4 + l] ^ s->flip[j];
			nall += (uint64_t)__builtin_popcountll(m);
			n1 += (uint64_t)__builtin_popcountll(m & pl[bit * 4 + l]);
		}
	}
	s->n1[tid] += n1;
	s->nall[tid] += nall;
}

#ifdef FP_AGG_X86
__attribute__((target("popcnt"))) static void planes_step_popcnt(struct sel_ctx *s, size_t b,
								 size_t e, unsigned tid)
{
	planes_step_body(s, b, e, tid);
}
#endif

static void planes_step_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct sel_ctx *s = p;

#ifdef FP_AGG_X86
	if (s->a->avx2) {
		planes_step_popcnt(s, b, e, tid);
		return;
	}
#endif
	planes_step_body(s, b, e, tid);
}

/*
 * Boundary of a layer group (k >= 1) from the counters: the k-th largest count, bit by bit
 * from the top (radix select on the bit planes, B passes). Fills g.
 */
static void planes_boundary(struct sel_ctx *s, struct grp *g)
{
	struct fp_agg *a = s->a;
	uint64_t k = s->k, above = 0, tied = 0;
	uint32_t c = 0;

	for (unsigned bit = a->nplanes; bit-- > 0;) {
		uint64_t n1 = 0, nall = 0;

		s->bit = bit;
		for (unsigned j = 0; j < 16; j++)
			s->flip[j] = (c >> j & 1) ? 0 : ~0ull;
		memset(s->n1, 0, sizeof(s->n1));
		memset(s->nall, 0, sizeof(s->nall));
		fp_par_for(a->nvec, 4096, planes_step_task, s);
		for (size_t t = 0; t < FP_PAR_MAX_THREADS; t++) {
			n1 += s->n1[t];
			nall += s->nall[t];
		}
		if (n1 >= k) {
			c |= 1u << bit;
			tied = n1;
		} else {
			k -= n1;
			above += n1;
			tied = nall - n1;
		}
	}
	g->c = c;
	g->tied = tied;
	g->need = s->k - above;
	g->t = g->need == g->tied ? T_ALL : 0;
}

static void note_nan(struct sel_ctx *s, unsigned tid, size_t p)
{
	if (p < s->nan_pos[tid])
		s->nan_pos[tid] = p;
}

/* Rows [b, e): one group each. */
static void rows_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct sel_ctx *s = p;
	struct fp_agg *a = s->a;
	size_t cols = a->cols;
	uint32_t *v = a->vkeys + (size_t)tid * s->scratch;
	uint64_t *tk = a->tkeys + (size_t)tid * s->scratch;

	for (size_t i = b; i < e; i++) {
		struct grp *g = s->g + i;
		size_t base = i * cols, m = 0;

		for (size_t j = 0; j < cols; j++)
			v[j] = vote_at(a, base + j);
		decide_votes(g, v, cols, s->k, s->kbits);
		if (g->t || g->c == NO_VOTE)
			continue;
		for (size_t j = 0; j < cols; j++)
			if (vote_at(a, base + j) == g->c) {
				uint64_t key = tie_at(a, s->w, base + j, j);

				if (key == T_ALL) {
					note_nan(s, tid, base + j);
					break;
				}
				tk[m++] = key;
			}
		if (m == g->tied)
			g->t = kth_smallest64(tk, m, g->need, NULL) + 1;
	}
}

/* Column blocks [b, e) of COL_BLOCK columns: one group per column. */
static void cols_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct sel_ctx *s = p;
	struct fp_agg *a = s->a;
	size_t rows = a->rows, cols = a->cols;
	uint32_t *v = a->vkeys + (size_t)tid * s->scratch;
	uint64_t *tk = a->tkeys + (size_t)tid * s->scratch;

	for (size_t blk = b; blk < e; blk++) {
		size_t j0 = blk * COL_BLOCK;
		size_t nc = cols - j0 < COL_BLOCK ? cols - j0 : COL_BLOCK;

		for (size_t i = 0; i < rows; i++)
			for (size_t jj = 0; jj < nc; jj++)
				v[jj * rows + i] = vote_at(a, i * cols + j0 + jj);
		for (size_t jj = 0; jj < nc; jj++) {
			struct grp *g = s->g + j0 + jj;
			size_t m = 0;

			decide_votes(g, v + jj * rows, rows, s->k, s->kbits);
			if (g->t || g->c == NO_VOTE)
				continue;
			for (size_t i = 0; i < rows; i++) {
				size_t q = i * cols + j0 + jj;

				if (vote_at(a, q) == g->c) {
					uint64_t key = tie_at(a, s->w, q, i);

					if (key == T_ALL) {
						note_nan(s, tid, q);
						break;
					}
					tk[m++] = key;
				}
			}
			if (m == g->tied)
				g->t = kth_smallest64(tk, m, g->need, NULL) + 1;
		}
	}
}

/* Layer: vote keys of the whole tensor into a->vkeys (weighted counts only). */
static void copy_votes_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct sel_ctx *s = p;

	(void)tid;
	for (size_t q = b; q < e; q++)
		s->a->vkeys[q] = vote_at(s->a, q);
}

/* Layer: number of tied entries in each chunk. */
static void count_tied_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct sel_ctx *s = p;
	struct fp_agg *a = s->a;
	uint32_t c = s->g->c;

	(void)tid;
	for (size_t ci = b; ci < e; ci++) {
		size_t q0 = ci * s->chunk, q1 = q0 + s->chunk < a->numel ? q0 + s->chunk : a->numel;
		uint64_t n = 0;

		for (size_t q = q0; q < q1; q += 64) {
			uint64_t gt, eq;

			s->cmp64(a, q, c, &gt, &eq);
			if (q1 - q < 64)
				eq &= (1ull << (q1 - q)) - 1;
			n += pop64(eq);
		}
		s->coff[ci + 1] = n;
	}
}

/* Layer: tie keys of the tied entries, chunk ci at a->tkeys + coff[ci]. */
static void gather_tied_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct sel_ctx *s = p;
	struct fp_agg *a = s->a;
	uint32_t c = s->g->c;

	for (size_t ci = b; ci < e; ci++) {
		size_t q0 = ci * s->chunk, q1 = q0 + s->chunk < a->numel ? q0 + s->chunk : a->numel;
		uint64_t *out = a->tkeys + s->coff[ci];

		for (size_t q = q0; q < q1; q += 64) {
			uint64_t gt, eq;

			s->cmp64(a, q, c, &gt, &eq);
			if (q1 - q < 64)
				eq &= (1ull << (q1 - q)) - 1;
			for (; eq; eq &= eq - 1) {
				size_t r = q + (size_t)__builtin_ctzll(eq);
				uint64_t key = tie_at(a, s->w, r, r);

				if (key == T_ALL) {
					note_nan(s, tid, r);
					return;
				}
				*out++ = key;
			}
		}
	}
}

/* Store the low n bits (n <= 64) of word at bit p (a multiple of 64) of mask. */
static inline void put_word(uint8_t *mask, size_t p, uint64_t word, size_t n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	if (n == 64) {
		memcpy(mask + p / 8, &word, 8);
		return;
	}
#endif
	for (size_t i = 0; i * 8 < n; i++)
		mask[p / 8 + i] = (uint8_t)(word >> (8 * i));
}

/*
 * Mask bits of [q0, q1) (q0 a multiple of 64) when a 64-weight word never spans two groups:
 * layer, or row with cols % 64 == 0. Compares 64 votes at once; only the tied entries of a
 * group split by the tie rule look at tie keys.
 */
static inline __attribute__((always_inline)) void
emit_words_body(struct sel_ctx *s, size_t q0, size_t q1, const uint64_t *keys, bool planes)
{
	struct fp_agg *a = s->a;
	bool layer = a->o.group == FP_GROUP_LAYER;

	for (size_t q = q0; q < q1; q += 64) {
		size_t n = q1 - q < 64 ? q1 - q : 64;
		uint64_t valid = n == 64 ? ~0ull : (1ull << n) - 1, word = 0, gt, eq;
		const struct grp *g = layer ? s->g : s->g + q / a->cols;

		if (g->c != NO_VOTE) {
			if (planes)
				cmp64_planes(a, q, g->c, &gt, &eq);
			else
				s->cmp64(a, q, g->c, &gt, &eq);
			word = gt & valid;
			eq &= valid;
			if (g->t == T_ALL) {
				word |= eq;
			} else if (g->t && keys) {
				/* the tie keys gathered in this same order */
				for (; eq; eq &= eq - 1)
					if (*keys++ < g->t)
						word |= 1ull << __builtin_ctzll(eq);
			} else if (g->t) {
				for (; eq; eq &= eq - 1) {
					unsigned bt = (unsigned)__builtin_ctzll(eq);
					size_t r = q + bt;

					if (tie_at(a, s->w, r, layer ? r : r % a->cols) < g->t)
						word |= 1ull << bt;
				}
			}
		}
		put_word(s->mask, q, word, n);
	}
}

/*
 * Mask bits of [q0, q1) (see emit_words_body): keys (may be NULL) are the tie keys of the
 * tied entries of this range in index order, as the gather pass stored them.
 */
static void emit_words(struct sel_ctx *s, size_t q0, size_t q1, const uint64_t *keys)
{
	if (s->cmp64 == cmp64_planes)
		emit_words_body(s, q0, q1, keys, true);
	else
		emit_words_body(s, q0, q1, keys, false);
}

/* The mask bits of chunks [b, e) (chunk = s->chunk weights, a multiple of 64). */
static void emit_task(void *p, size_t b, size_t e, unsigned tid)
{
	struct sel_ctx *s = p;
	struct fp_agg *a = s->a;
	size_t cols = a->cols;
	enum fp_group gr = a->o.group;

	(void)tid;
	for (size_t ci = b; ci < e; ci++) {
		size_t q0 = ci * s->chunk, q1 = q0 + s->chunk < a->numel ? q0 + s->chunk : a->numel;
		size_t i = q0 / cols, j = q0 % cols;

		if (gr == FP_GROUP_LAYER || (gr == FP_GROUP_ROW && cols % 64 == 0)) {
			emit_words(s, q0, q1, s->korder ? s->korder + s->coff[ci] : NULL);
			continue;
		}

		for (size_t q = q0; q < q1; q += 64) {
			size_t qe = q + 64 < q1 ? q + 64 : q1;
			uint64_t word = 0;

			for (size_t r = q; r < qe; r++) {
				const struct grp *g = gr == FP_GROUP_LAYER ? s->g
						      : gr == FP_GROUP_ROW ? s->g + i
									   : s->g + j;
				uint32_t v = vote_at(a, r);
				uint64_t bit;

				if (v != g->c)
					bit = v > g->c;
				else if (g->t == T_ALL)
					bit = 1;
				else
					bit = g->t && tie_at(a, s->w, r,
							     gr == FP_GROUP_LAYER ? r
							     : gr == FP_GROUP_ROW ? j
										  : i) < g->t;
				word |= bit << (r - q);
				if (++j == cols) {
					j = 0;
					i++;
				}
			}
			put_word(s->mask, q, word, qe - q);
		}
	}
}

/* Grow *buf to hold n elements of size sz. */
static int grow(void *buf, size_t *cap, size_t n, size_t sz)
{
	void **p = buf;
	void *q;

	if (n <= *cap)
		return 0;
	q = fp_mallocarray(n, sz);
	if (!q)
		return -ENOMEM;
	free(*p);
	*p = q;
	*cap = n;
	return 0;
}

int fp_agg_select(struct fp_agg *a, const float *w, uint8_t *mask, struct fp_agg_tensor_stats *ret)
{
	struct fp_agg_tensor_stats st = { 0 };
	struct sel_ctx s = { .a = a, .w = w, .mask = mask };
	size_t nt = fp_par_threads(), ngroups, gs, nan = SIZE_MAX;
	size_t nan_pos[FP_PAR_MAX_THREADS];
	enum fp_group gr = a->o.group;
	double t0 = now();
	int r = 0;

	if (!a->started || a->next != a->o.nclients)
		return fp_err_detail(-EINVAL, "tensor '%s': %zu of %zu client masks added",
				     a->name ? a->name : "(none)", a->next, a->o.nclients);
	if (a->o.tie == FP_AGG_TIE_MAGNITUDE && !w)
		return fp_err_detail(-EINVAL,
				     "tensor '%s': the magnitude tie rule needs the dense weights",
				     a->name);
	ngroups = gr == FP_GROUP_LAYER ? 1 : gr == FP_GROUP_ROW ? a->rows : a->cols;
	gs = gr == FP_GROUP_LAYER ? a->numel : gr == FP_GROUP_ROW ? a->cols : a->rows;
	s.k = fp_select_k(gs, a->o.sparsity);
	s.kbits = a->wcounts ? 32 : 16;
	s.g = fp_mallocarray(ngroups, sizeof(*s.g));
	s.chunk = (a->numel / (nt * 8) + 63) / 64 * 64;
	if (s.chunk < 4096)
		s.chunk = 4096;
	s.nchunks = (a->numel + s.chunk - 1) / s.chunk;
	s.coff = fp_callocarray(s.nchunks + 1, sizeof(uint64_t));
	if (!s.g || !s.coff) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t t = 0; t < FP_PAR_MAX_THREADS; t++)
		nan_pos[t] = SIZE_MAX;
	s.nan_pos = nan_pos;
	/* rows and columns gather counts; a layer works on the counters unless they exist */
	if (!a->wcounts && gr != FP_GROUP_LAYER) {
		r = materialise(a);
		if (r < 0)
			goto out;
	}
	s.cmp64 = a->cmp64;
	if (!a->wcounts && !a->mat)
		s.cmp64 = cmp64_planes;

	if (gr == FP_GROUP_LAYER) {
		struct grp *g = s.g;

		if (s.k == 0) {
			*g = (struct grp){ .c = NO_VOTE };
		} else if (!a->wcounts && !a->mat) {
			planes_boundary(&s, g);
		} else if (!a->wcounts) {
			uint64_t cum = 0;

			for (size_t v = a->o.nclients + 1; v-- > 0;) {
				if (cum + a->hist[v] >= s.k) {
					g->c = (uint32_t)v;
					g->tied = a->hist[v];
					g->need = s.k - cum;
					break;
				}
				cum += a->hist[v];
			}
			g->t = g->need == g->tied ? T_ALL : 0;
		} else {
			r = grow(&a->vkeys, &a->cap_vkeys, a->numel, sizeof(uint32_t));
			if (r < 0)
				goto out;
			fp_par_for(a->numel, 1 << 16, copy_votes_task, &s);
			decide_votes(g, a->vkeys, a->numel, s.k, s.kbits);
		}
		if (g->c != NO_VOTE && g->t == 0) {
			r = grow(&a->tkeys, &a->cap_tkeys, 2 * g->tied, sizeof(uint64_t));
			if (r == 0 && g->tied >= 1u << 16 && !a->h16) {
				a->h16 = malloc((1u << 16) * sizeof(size_t));
				r = a->h16 ? 0 : -ENOMEM;
			}
			if (r < 0)
				goto out;
			fp_par_for(s.nchunks, 1, count_tied_task, &s);
			for (size_t ci = 0; ci < s.nchunks; ci++)
				s.coff[ci + 1] += s.coff[ci];
			fp_par_for(s.nchunks, 1, gather_tied_task, &s);
			for (size_t t = 0; t < nt; t++)
				nan = nan_pos[t] < nan ? nan_pos[t] : nan;
			if (nan == SIZE_MAX) {
				/* select on a copy: emission reads the keys in gather order */
				memcpy(a->tkeys + g->tied, a->tkeys, g->tied * sizeof(uint64_t));
				g->t = kth_smallest64(a->tkeys + g->tied, g->tied, g->need,
						      a->h16) +
				       1;
				s.korder = a->tkeys;
			}
		}
	} else {
		s.scratch = gr == FP_GROUP_ROW ? a->cols : a->rows * COL_BLOCK;
		r = grow(&a->vkeys, &a->cap_vkeys, nt * s.scratch, sizeof(uint32_t));
		if (r == 0)
			r = grow(&a->tkeys, &a->cap_tkeys, nt * s.scratch, sizeof(uint64_t));
		if (r < 0)
			goto out;
		if (gr == FP_GROUP_ROW)
			fp_par_for(a->rows, 16, rows_task, &s);
		else
			fp_par_for((a->cols + COL_BLOCK - 1) / COL_BLOCK, 1, cols_task, &s);
		for (size_t t = 0; t < nt; t++)
			nan = nan_pos[t] < nan ? nan_pos[t] : nan;
	}
	if (nan != SIZE_MAX) {
		r = fp_err_detail(-EINVAL,
				  "tensor '%s': weight (%zu, %zu) is NaN (the magnitude tie rule "
				  "needs it)",
				  a->name, nan / a->cols, nan % a->cols);
		goto out;
	}
	fp_par_for(s.nchunks, 1, emit_task, &s);

	st.rows = a->rows;
	st.cols = a->cols;
	st.numel = a->numel;
	st.groups = ngroups;
	st.group_size = gs;
	st.k = s.k;
	st.pruned = s.k * ngroups;
	for (size_t i = 0; i < ngroups && s.k > 0; i++) {
		const struct grp *g = s.g + i;
		double bv = a->wcounts ? (double)fp_f32_from_bits(g->c) : (double)g->c;

		st.tied += g->tied;
		st.tied_pruned += g->need;
		st.split_groups += g->need < g->tied;
		if (i == 0 || bv < st.boundary_min)
			st.boundary_min = bv;
		if (i == 0 || bv > st.boundary_max)
			st.boundary_max = bv;
	}
	st.count_seconds = a->count_s;
	st.select_seconds = now() - t0;
	if (ret)
		*ret = st;
out:
	free(s.g);
	free(s.coff);
	return r;
}

int fp_agg_scale(struct fp_agg *a, const uint8_t *mask, float *w, bool f16_factor)
{
	size_t N = a->o.nclients;
	float *f;
	int r;

	if (!a->started || a->next != N)
		return fp_err_detail(-EINVAL, "tensor '%s': scaling before all counts are in",
				     a->name ? a->name : "(none)");
	if (!a->wcounts) {
		r = materialise(a);
		if (r < 0)
			return r;
	}
	f = fp_mallocarray(N + 1, sizeof(float));
	if (!f)
		return -ENOMEM;
	for (size_t c = 0; c <= N; c++) {
		f[c] = (float)(N - c) / (float)N;
		if (f16_factor)
			f[c] = fp_f16_to_f32(fp_f32_to_f16(f[c]));
	}
	for (size_t p = 0; p < a->numel; p++) {
		float fac;

		if (fp_mask_get(mask, p)) {
			w[p] = 0.0f;
			continue;
		}
		if (a->wcounts) {
			double d = (a->wtotal - (double)a->wcounts[p]) / a->wtotal;

			fac = (float)(d < 0 ? 0 : d > 1 ? 1 : d);
			if (f16_factor)
				fac = fp_f16_to_f32(fp_f32_to_f16(fac));
		} else {
			fac = f[vote_at(a, p)];
		}
		w[p] *= fac;
	}
	free(f);
	return 0;
}

/* ---- reference selection ---- */

struct nent {
	uint32_t v;
	uint64_t t;
	size_t p;
};

static int nent_cmp(const void *x, const void *y)
{
	const struct nent *a = x, *b = y;

	if (a->v != b->v)
		return a->v > b->v ? -1 : 1;
	return (a->t > b->t) - (a->t < b->t);
}

int fp_agg_select_naive(uint8_t *mask, const uint16_t *counts, const float *wcounts, const float *w,
			size_t rows, size_t cols, const char *name, const struct fp_agg_opts *o)
{
	struct fp_agg a = { 0 };
	size_t ngroups, gs, numel;
	struct nent *e;
	uint64_t k;
	int r = fp_agg_opts_check(o);

	if (r < 0)
		return r;
	if (!fp_mul_ok(rows, cols, &numel) || numel == 0 || numel > FP_AGG_MAX_NUMEL)
		return fp_err_detail(-EINVAL, "tensor '%s': bad shape", name ? name : "");
	if (o->tie == FP_AGG_TIE_MAGNITUDE && !w)
		return fp_err_detail(-EINVAL, "tensor '%s': no weights", name ? name : "");
	a.o = *o;
	a.c16 = (uint16_t *)counts;
	a.wcounts = o->weights ? (float *)wcounts : NULL;
	if (o->weights && !wcounts)
		return fp_err_detail(-EINVAL, "tensor '%s': no weighted counts", name ? name : "");
	if (o->tie == FP_AGG_TIE_RANDOM)
		random_key(a.tkey, o->seed, name ? name : "");
	ngroups = o->group == FP_GROUP_LAYER ? 1 : o->group == FP_GROUP_ROW ? rows : cols;
	gs = numel / ngroups;
	k = fp_select_k(gs, o->sparsity);
	e = fp_mallocarray(gs, sizeof(*e));
	if (!e)
		return -ENOMEM;
	memset(mask, 0, fp_mask_bytes(numel));
	for (size_t g = 0; g < ngroups; g++) {
		for (size_t x = 0; x < gs; x++) {
			size_t p = o->group == FP_GROUP_LAYER ? x
				   : o->group == FP_GROUP_ROW ? g * cols + x
							      : x * cols + g;

			e[x].v = vote_at(&a, p);
			e[x].t = tie_at(&a, w, p, x);
			e[x].p = p;
		}
		qsort(e, gs, sizeof(*e), nent_cmp);
		for (uint64_t x = 0; x < k; x++)
			fp_mask_put(mask, e[x].p, true);
	}
	free(e);
	return 0;
}

/* ---- the file-level driver ---- */

/* Block index of "model.layers.<i>.<...>", or -1. */
static long block_of(const char *name)
{
	static const char pre[] = "model.layers.";
	const char *p = name;
	long v = 0;

	if (strncmp(p, pre, sizeof(pre) - 1) != 0)
		return -1;
	p += sizeof(pre) - 1;
	if (*p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (LONG_MAX - 9) / 10)
			return -1;
		v = v * 10 + (*p - '0');
	}
	return *p == '.' ? v : -1;
}

/* Whether name is model.layers.<i>.<one of the seven linears>.weight. */
static bool is_decoder_linear(const char *name)
{
	const char *p;

	if (block_of(name) < 0)
		return false;
	p = strchr(name + strlen("model.layers."), '.') + 1;
	for (int i = 0; i < FP_LIN_COUNT; i++) {
		const char *l = fp_linear_name((enum fp_linear)i);
		size_t n = strlen(l);

		if (strncmp(p, l, n) == 0 && strcmp(p + n, ".weight") == 0)
			return true;
	}
	return false;
}

/* Agreement accumulators of one decoder block (or of the whole model). */
struct blk {
	long id;
	size_t tensors;
	double s1, s2;	 /* sum over weights of count and of count * (count - 1) / 2 */
	uint64_t *pairs; /* (N, N) or NULL */
};

/* Mean over client pairs of |A n B| / |A u B| (1 for two empty sets), from the matrix m. */
static double mean_jaccard(const uint64_t *m, size_t n)
{
	double sum = 0;

	for (size_t i = 0; i + 1 < n; i++)
		for (size_t j = i + 1; j < n; j++) {
			uint64_t in = m[i * n + j];
			uint64_t un = m[i * n + i] + m[j * n + j] - in;

			sum += un ? (double)in / (double)un : 1.0;
		}
	return sum / ((double)n * (double)(n - 1) / 2);
}

/* Sum over pairs of the intersection over sum over pairs of the union (1 when empty). */
static double pooled_jaccard(const struct blk *b, size_t n)
{
	double un = (double)(n - 1) * b->s1 - b->s2;

	return un > 0 ? b->s2 / un : 1.0;
}

/* Small cJSON builder that remembers an allocation failure. */
struct jb {
	bool fail;
};

static cJSON *jchk(struct jb *j, cJSON *v)
{
	if (!v)
		j->fail = true;
	return v;
}

static void jnum(struct jb *j, cJSON *o, const char *k, double v)
{
	if (o)
		jchk(j, cJSON_AddNumberToObject(o, k, v));
}

static void jstr(struct jb *j, cJSON *o, const char *k, const char *v)
{
	if (o)
		jchk(j, cJSON_AddStringToObject(o, k, v));
}

static void jbool(struct jb *j, cJSON *o, const char *k, bool v)
{
	if (o)
		jchk(j, cJSON_AddBoolToObject(o, k, v));
}

static cJSON *jobj(struct jb *j, cJSON *parent, const char *k)
{
	cJSON *o = jchk(j, cJSON_CreateObject());

	if (o && parent) {
		if (cJSON_IsArray(parent) ? !cJSON_AddItemToArray(parent, o)
					  : !cJSON_AddItemToObject(parent, k, o)) {
			cJSON_Delete(o);
			j->fail = true;
			return NULL;
		}
	}
	return o;
}

static cJSON *jarr(struct jb *j, cJSON *parent, const char *k)
{
	cJSON *o = jchk(j, cJSON_CreateArray());

	if (o && parent && !cJSON_AddItemToObject(parent, k, o)) {
		cJSON_Delete(o);
		j->fail = true;
		return NULL;
	}
	return o;
}

static void jpush_num(struct jb *j, cJSON *arr, double v)
{
	cJSON *n = jchk(j, cJSON_CreateNumber(v));

	if (n && arr && !cJSON_AddItemToArray(arr, n)) {
		cJSON_Delete(n);
		j->fail = true;
	}
}

static void jhist(struct jb *j, cJSON *o, const char *k, const uint64_t *h, size_t n)
{
	cJSON *a = jarr(j, o, k);

	for (size_t i = 0; a && i < n; i++)
		jpush_num(j, a, (double)h[i]);
}

int fp_agg_report_write(const char *dir, const struct cJSON *report)
{
	char *text = cJSON_Print(report), *tmp = NULL, *path = NULL;
	size_t len;
	int fd = -1, r = 0;

	if (!text)
		return -ENOMEM;
	len = strlen(text);
	if (asprintf(&tmp, "%s/report.json.tmp.XXXXXX", dir) < 0 ||
	    asprintf(&path, "%s/report.json", dir) < 0) {
		tmp = NULL;
		r = -ENOMEM;
		goto out;
	}
	fd = mkstemp(tmp);
	if (fd < 0) {
		r = fp_err_detail(-errno, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	for (size_t off = 0; off < len;) {
		ssize_t w = write(fd, text + off, len - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			r = fp_err_detail(-EIO, "%s: write: %s", tmp, strerror(errno));
			goto out;
		}
		off += (size_t)w;
	}
	if (write(fd, "\n", 1) != 1 || fsync(fd) < 0) {
		r = fp_err_detail(-EIO, "%s: write: %s", tmp, strerror(errno));
		goto out;
	}
	if (close(fd) < 0) {
		fd = -1;
		r = fp_err_detail(-EIO, "%s: close: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, path) < 0) {
		r = fp_err_detail(-errno, "%s: rename: %s", tmp, strerror(errno));
		goto out;
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0)
		fsync(fd);
out:
	if (fd >= 0)
		close(fd);
	if (r < 0 && tmp)
		unlink(tmp);
	free(text);
	free(tmp);
	free(path);
	return r;
}

/* Check that the mask files agree with each other and with the model. */
static int check_inputs(const struct fp_agg_job *job, struct fp_mask_reader **rd,
			const struct fp_st_model *model)
{
	size_t N = job->opts.nclients, cnt = fp_mask_reader_count(rd[0]);
	const char *p0 = job->mask_paths[0];

	for (size_t c = 1; c < N; c++)
		if (fp_mask_reader_count(rd[c]) != cnt)
			return fp_err_detail(
				-EINVAL,
				"%s: %zu tensors, but %s has %zu (every mask file must "
				"cover the same tensors)",
				job->mask_paths[c], fp_mask_reader_count(rd[c]), p0, cnt);
	for (size_t i = 0; i < cnt; i++) {
		const struct fp_mask_info *m0 = fp_mask_reader_info(rd[0], i);
		const struct fp_st_tensor *t;

		if (m0->ndim != 2)
			return fp_err_detail(
				-EINVAL,
				"%s: tensor '%s': %u dimensions (aggregation needs 2-D "
				"weight matrices)",
				p0, m0->name, m0->ndim);
		if (m0->nbits > FP_AGG_MAX_NUMEL)
			return fp_err_detail(-EINVAL, "%s: tensor '%s': more than %u weights", p0,
					     m0->name, FP_AGG_MAX_NUMEL);
		for (size_t c = 1; c < N; c++) {
			const struct fp_mask_info *mc = fp_mask_reader_info(rd[c], i);

			if (strcmp(mc->name, m0->name) != 0)
				return fp_err_detail(
					-EINVAL,
					"%s: tensor %zu is '%s', but %s has '%s' there "
					"(mask files must list the same tensors in the "
					"same order)",
					job->mask_paths[c], i, mc->name, p0, m0->name);
			if (mc->ndim != 2 || mc->dims[0] != m0->dims[0] ||
			    mc->dims[1] != m0->dims[1])
				return fp_err_detail(
					-EINVAL,
					"%s: tensor '%s': shape differs from %s's (%" PRIu64
					", %" PRIu64 ")",
					job->mask_paths[c], mc->name, p0, m0->dims[0], m0->dims[1]);
		}
		t = fp_st_model_find(model, m0->name);
		if (!t)
			return fp_err_detail(-EINVAL, "%s: tensor '%s' is not in the model %s", p0,
					     m0->name, job->model_dir);
		if (t->ndim != 2 || t->shape[0] != m0->dims[0] || t->shape[1] != m0->dims[1])
			return fp_err_detail(-EINVAL,
					     "%s: tensor '%s': mask shape (%" PRIu64 ", %" PRIu64
					     ") differs from the model's in %s",
					     p0, m0->name, m0->dims[0], m0->dims[1],
					     job->model_dir);
		if (t->dtype != FP_DT_F32 && t->dtype != FP_DT_F16 && t->dtype != FP_DT_BF16)
			return fp_err_detail(-EINVAL,
					     "%s: tensor '%s' is %s in the model (need F32, F16 or "
					     "BF16)",
					     job->model_dir, m0->name, fp_dtype_name(t->dtype));
	}
	if (job->require_all)
		for (size_t i = 0; i < fp_st_model_count(model); i++) {
			const struct fp_st_tensor *t = fp_st_model_at(model, i);

			if (is_decoder_linear(t->name) && fp_mask_reader_find(rd[0], t->name) < 0)
				return fp_err_detail(
					-EINVAL,
					"%s: tensor '%s' of the model %s is not covered "
					"(the masks must cover every decoder linear)",
					p0, t->name, job->model_dir);
		}
	return 0;
}

/* Everything fp_agg_run holds, freed in one place. */
struct run {
	const struct fp_agg_job *job;
	size_t N, cnt;
	struct fp_st_model *model;
	struct fp_mask_reader **rd;
	struct fp_hfout *ho;
	char *tmpdir; /* mask_only: the temporary output directory (owned) */
	struct fp_mask_writer *wr;
	struct fp_agg *agg;
	struct fp_mask_info *decls; /* (cnt) the tensors, in mask file order */
	long *layer;		    /* (cnt) decoder layer of each, FP_HFOUT_OTHER outside */
	float **wout;		    /* (cnt) pruned (scaled) f32 weights not yet written */
	size_t replaced;	    /* tensors handed to the model writer */
	uint8_t *bufmem;
	const uint8_t **bufs;
	uint8_t *mask;
	struct blk *blocks;
	size_t nblocks;
	struct blk total;
	uint64_t *hist;	     /* (N + 1) over the model */
	uint64_t *cpruned;   /* (N) over the model */
	double *dmin, *dmax; /* (N) per-tensor density range of each client */
	cJSON *report;
	char *mask_path;
};

static void run_free(struct run *x)
{
	fp_mask_writer_abort(x->wr);
	fp_hfout_abort(x->ho);
	if (x->tmpdir) { /* mask_only, failed: the writer's temporary is gone already */
		fp_dir_remove_flat(x->tmpdir);
		free(x->tmpdir);
	}
	fp_st_model_close(x->model);
	if (x->rd)
		for (size_t c = 0; c < x->N; c++)
			fp_mask_reader_free(x->rd[c]);
	free(x->rd);
	fp_agg_free(x->agg);
	if (x->wout)
		for (size_t i = 0; i < x->cnt; i++)
			free(x->wout[i]);
	free(x->wout);
	free(x->layer);
	free(x->decls);
	free(x->bufmem);
	free(x->bufs);
	free(x->mask);
	for (size_t b = 0; b < x->nblocks; b++)
		free(x->blocks[b].pairs);
	free(x->blocks);
	free(x->total.pairs);
	free(x->hist);
	free(x->cpruned);
	free(x->dmin);
	free(x->dmax);
	cJSON_Delete(x->report);
	free(x->mask_path);
}

/* The accumulators of block id, created on first use. */
static struct blk *block_get(struct run *x, long id, bool pairs)
{
	struct blk *b;

	for (size_t i = 0; i < x->nblocks; i++)
		if (x->blocks[i].id == id)
			return &x->blocks[i];
	b = fp_reallocarray(x->blocks, x->nblocks + 1, sizeof(*b));
	if (!b)
		return NULL;
	x->blocks = b;
	b += x->nblocks;
	*b = (struct blk){ .id = id };
	if (pairs) {
		b->pairs = fp_callocarray(x->N * x->N, sizeof(uint64_t));
		if (!b->pairs)
			return NULL;
	}
	x->nblocks++;
	return b;
}

static void blk_add(struct blk *b, const uint64_t *hist, const uint64_t *pairs, size_t N)
{
	b->tensors++;
	for (size_t v = 0; v <= N; v++) {
		b->s1 += (double)v * (double)hist[v];
		b->s2 += (double)v * (double)(v - (v > 0)) / 2 * (double)hist[v];
	}
	if (b->pairs && pairs)
		for (size_t i = 0; i < N * N; i++)
			b->pairs[i] += pairs[i];
	else if (b->pairs)
		fp_freep(&b->pairs);
}

static void agreement_json(struct jb *j, cJSON *o, const struct blk *b, size_t N)
{
	if (N < 2) {
		jchk(j, cJSON_AddNullToObject(o, "mean_pairwise_jaccard"));
		jchk(j, cJSON_AddNullToObject(o, "pooled_jaccard"));
		return;
	}
	if (b->pairs)
		jnum(j, o, "mean_pairwise_jaccard", mean_jaccard(b->pairs, N));
	else
		jchk(j, cJSON_AddNullToObject(o, "mean_pairwise_jaccard"));
	jnum(j, o, "pooled_jaccard", pooled_jaccard(b, N));
}

static int cmp_blk(const void *x, const void *y)
{
	const struct blk *a = x, *b = y;

	return (a->id > b->id) - (a->id < b->id);
}

/* Model writer callback: the pruned weights of an aggregated tensor, NULL for the others. */
static int model_fn(void *ctx, const struct fp_st_tensor *t, const float **ret)
{
	struct run *x = ctx;

	for (size_t i = 0; i < x->cnt; i++)
		if (strcmp(x->decls[i].name, t->name) == 0) {
			if (!x->wout[i])
				return fp_err_detail(
					-EINVAL, "tensor '%s': written before it was aggregated",
					t->name);
			*ret = x->wout[i];
			x->replaced++;
			return 0;
		}
	return 0;
}

/* Hand the model writer every layer up to `upto` and drop their weights. */
static int write_upto(struct run *x, long upto)
{
	int r = fp_hfout_write(x->ho, upto, model_fn, x);

	for (size_t i = 0; i < x->cnt && r == 0; i++)
		if (x->layer[i] <= upto)
			fp_freep(&x->wout[i]);
	return r;
}

/* Read tensor i of every mask, count, select, write its mask; fills *st. */
static int run_tensor(struct run *x, size_t i, size_t nb, struct fp_agg_tensor_stats *st,
		      double *t_read)
{
	const struct fp_agg_job *job = x->job;
	const struct fp_mask_info *m = &x->decls[i];
	const struct fp_st_tensor *t = fp_st_model_find(x->model, m->name);
	size_t rows = (size_t)m->dims[0], cols = (size_t)m->dims[1];
	double t0;
	float *w;
	int r;

	r = fp_agg_begin(x->agg, m->name, rows, cols);
	if (r < 0)
		return r;
	for (size_t c0 = 0; c0 < x->N; c0 += nb) {
		size_t n = x->N - c0 < nb ? x->N - c0 : nb;

		t0 = now();
		for (size_t c = 0; c < n; c++) {
			r = fp_mask_reader_next(x->rd[c0 + c], NULL, (uint8_t *)x->bufs[c],
						m->nbytes);
			if (r == 0)
				r = fp_err_detail(-EINVAL, "%s: ended before tensor '%s'",
						  job->mask_paths[c0 + c], m->name);
			if (r < 0)
				return r;
		}
		*t_read += now() - t0;
		r = fp_agg_add(x->agg, c0, n, x->bufs);
		if (r < 0)
			return r;
	}
	t0 = now();
	w = fp_mallocarray((size_t)m->nbits, sizeof(float));
	if (!w)
		return -ENOMEM;
	x->wout[i] = w;
	r = fp_st_to_f32(t, w);
	if (r < 0)
		return r;
	*t_read += now() - t0;
	/* the report's histogram; made before selection so count_seconds includes it */
	if (!fp_agg_histogram(x->agg))
		return -ENOMEM;
	r = fp_agg_select(x->agg, w, x->mask, st);
	if (r < 0)
		return r;
	if (job->scale)
		r = fp_agg_scale(x->agg, x->mask, w, t->dtype == FP_DT_F16);
	else
		fp_mask_apply(w, x->mask, rows, cols);
	if (r < 0)
		return r;
	return fp_mask_writer_add(x->wr, x->mask, m->nbytes);
}

/* Add tensor i to the report and the model-wide sums. */
static int report_tensor(struct run *x, struct jb *j, cJSON *tensors, size_t i,
			 const struct fp_agg_tensor_stats *st, bool pairs)
{
	const struct fp_mask_info *m = &x->decls[i];
	const uint64_t *h = fp_agg_histogram(x->agg), *cp = fp_agg_client_pruned(x->agg);
	size_t N = x->N;
	struct blk *b;
	cJSON *to, *tb;

	for (size_t v = 0; v <= N; v++)
		x->hist[v] += h[v];
	for (size_t c = 0; c < N; c++) {
		double d = (double)cp[c] / (double)st->numel;

		x->cpruned[c] += cp[c];
		x->dmin[c] = d < x->dmin[c] ? d : x->dmin[c];
		x->dmax[c] = d > x->dmax[c] ? d : x->dmax[c];
	}
	b = block_get(x, fp_hfout_layer_of(m->name), pairs);
	if (!b)
		return -ENOMEM;
	blk_add(b, h, fp_agg_pairs(x->agg), N);
	blk_add(&x->total, h, fp_agg_pairs(x->agg), N);

	to = jobj(j, tensors, NULL);
	jstr(j, to, "name", m->name);
	tb = jarr(j, to, "shape");
	jpush_num(j, tb, (double)st->rows);
	jpush_num(j, tb, (double)st->cols);
	jnum(j, to, "groups", (double)st->groups);
	jnum(j, to, "k", (double)st->k);
	jnum(j, to, "pruned", (double)st->pruned);
	jnum(j, to, "sparsity", (double)st->pruned / (double)st->numel);
	tb = jobj(j, to, "ties");
	if (st->k > 0 && st->groups == 1) {
		jnum(j, tb, "boundary", st->boundary_min);
	} else if (st->k > 0) {
		jnum(j, tb, "boundary_min", st->boundary_min);
		jnum(j, tb, "boundary_max", st->boundary_max);
	}
	jnum(j, tb, "tied", (double)st->tied);
	jnum(j, tb, "tied_pruned", (double)st->tied_pruned);
	jnum(j, tb, "split_groups", (double)st->split_groups);
	if (N <= FP_AGG_HIST_MAX)
		jhist(j, to, "vote_histogram", h, N + 1);
	jnum(j, to, "count_seconds", st->count_seconds);
	jnum(j, to, "select_seconds", st->select_seconds);
	return j->fail ? -ENOMEM : 0;
}

int fp_agg_run(const struct fp_agg_job *job, struct cJSON **ret_report)
{
	struct run x = { .job = job };
	struct jb j = { 0 };
	struct fp_agg_opts o;
	size_t N, cnt, maxbytes = 0, nb, batch_mem;
	double t_start = now(), t_read = 0, t_count = 0, t_select = 0, t_write = 0, t0;
	uint64_t all_w = 0, all_pruned = 0, all_tied = 0, all_tied_pruned = 0, all_split = 0;
	cJSON *tensors, *set, *parts, *ov, *ag, *blocks, *tm, *sk;
	long written = FP_HFOUT_OTHER - 1;
	bool pairs;
	int r;

	if (!job || !job->model_dir || !job->out_dir || !job->mask_paths)
		return fp_err_detail(-EINVAL, "aggregate: model, masks and output are required");
	o = job->opts;
	o.pairwise = job->agreement;
	r = fp_agg_opts_check(&o);
	if (r < 0)
		return r;
	N = x.N = o.nclients;
	for (size_t c = 0; c < N; c++)
		if (!job->mask_paths[c])
			return fp_err_detail(-EINVAL, "aggregate: mask %zu has no path", c);

	t0 = now();
	r = fp_st_model_open(job->model_dir, &x.model);
	if (r < 0)
		goto out;
	x.rd = calloc(N, sizeof(*x.rd));
	if (!x.rd) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t c = 0; c < N; c++) {
		r = fp_mask_reader_open(job->mask_paths[c], &x.rd[c]);
		if (r < 0)
			goto out;
	}
	r = check_inputs(job, x.rd, x.model);
	if (r < 0)
		goto out;
	t_read += now() - t0;
	cnt = x.cnt = fp_mask_reader_count(x.rd[0]);
	x.decls = fp_callocarray(cnt, sizeof(*x.decls));
	x.layer = fp_callocarray(cnt, sizeof(*x.layer));
	x.wout = fp_callocarray(cnt, sizeof(*x.wout));
	if (!x.decls || !x.layer || !x.wout) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < cnt; i++) {
		x.decls[i] = *fp_mask_reader_info(x.rd[0], i);
		x.layer[i] = fp_hfout_layer_of(x.decls[i].name);
		maxbytes = x.decls[i].nbytes > maxbytes ? x.decls[i].nbytes : maxbytes;
	}
	batch_mem = job->batch_mem ? job->batch_mem : (size_t)512 << 20;
	nb = batch_mem / maxbytes;
	nb = nb < 1 ? 1 : nb > N ? N : nb;
	pairs = job->agreement && N >= 2 && N <= FP_AGG_MAX_PAIRS && nb == N;

	if (job->mask_only) {
		r = fp_dir_check_new(job->out_dir);
		if (r == 0)
			r = fp_dir_make_tmp(job->out_dir, &x.tmpdir);
		if (r < 0)
			goto out;
	} else {
		r = fp_hfout_open(x.model, job->model_dir, job->out_dir, &x.ho);
		if (r < 0)
			goto out;
	}
	if (asprintf(&x.mask_path, "%s/mask.fpmask", x.tmpdir ? x.tmpdir : fp_hfout_tmpdir(x.ho)) <
	    0) {
		x.mask_path = NULL;
		r = -ENOMEM;
		goto out;
	}
	r = fp_mask_writer_open(x.mask_path, x.decls, cnt, &x.wr);
	if (r < 0)
		goto out;
	r = fp_agg_new(&o, &x.agg);
	if (r < 0)
		goto out;
	x.bufmem = fp_mallocarray(nb, maxbytes);
	x.bufs = fp_callocarray(nb, sizeof(*x.bufs));
	x.mask = malloc(maxbytes);
	x.hist = fp_callocarray(N + 1, sizeof(uint64_t));
	x.cpruned = fp_callocarray(N, sizeof(uint64_t));
	x.dmin = fp_mallocarray(N, sizeof(double));
	x.dmax = fp_callocarray(N, sizeof(double));
	x.report = cJSON_CreateObject();
	if (!x.bufmem || !x.bufs || !x.mask || !x.hist || !x.cpruned || !x.dmin || !x.dmax ||
	    !x.report) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t c = 0; c < nb; c++)
		x.bufs[c] = x.bufmem + c * maxbytes;
	for (size_t c = 0; c < N; c++)
		x.dmin[c] = 1.0;
	x.total.id = LONG_MIN;
	if (pairs) {
		x.total.pairs = fp_callocarray(N * N, sizeof(uint64_t));
		if (!x.total.pairs) {
			r = -ENOMEM;
			goto out;
		}
	}

	jnum(&j, x.report, "fedprune_aggregate_report", 1);
	set = jobj(&j, x.report, "settings");
	jstr(&j, set, "method", "fedprllm");
	jstr(&j, set, "model", job->model_dir);
	jnum(&j, set, "clients", (double)N);
	jnum(&j, set, "sparsity", o.sparsity);
	jstr(&j, set, "group", fp_group_name(o.group));
	jstr(&j, set, "tie_break", fp_agg_tie_name(o.tie));
	if (o.tie == FP_AGG_TIE_RANDOM)
		jnum(&j, set, "seed", (double)o.seed);
	jbool(&j, set, "weighted", o.weights != NULL);
	jbool(&j, set, "scale", job->scale);
	jnum(&j, set, "clients_per_batch", (double)nb);
	tensors = jarr(&j, x.report, "tensors");

	for (size_t i = 0; i < cnt; i++) {
		struct fp_agg_tensor_stats st;
		long upto = LONG_MAX;

		r = run_tensor(&x, i, nb, &st, &t_read);
		if (r < 0)
			goto out;
		t_count += st.count_seconds;
		t_select += st.select_seconds;
		r = report_tensor(&x, &j, tensors, i, &st, pairs);
		if (r < 0)
			goto out;
		all_w += st.numel;
		all_pruned += st.pruned;
		all_tied += st.tied;
		all_tied_pruned += st.tied_pruned;
		all_split += st.split_groups;
		if (job->mask_only) {
			fp_freep(&x.wout[i]);
			continue;
		}
		/* every layer below the lowest one still to come is complete: write it */
		for (size_t k = i + 1; k < cnt; k++)
			upto = x.layer[k] < upto ? x.layer[k] : upto;
		if (upto != LONG_MAX && upto - 1 > written) {
			t0 = now();
			r = write_upto(&x, upto - 1);
			if (r < 0)
				goto out;
			written = upto - 1;
			t_write += now() - t0;
		}
	}
	/* the file digest of every mask is checked once its last tensor is read */
	t0 = now();
	for (size_t c = 0; c < N; c++) {
		r = fp_mask_reader_next(x.rd[c], NULL, (uint8_t *)x.bufs[0], maxbytes);
		if (r > 0)
			r = fp_err_detail(-EINVAL, "%s: more tensors than declared",
					  job->mask_paths[c]);
		if (r < 0)
			goto out;
	}
	t_read += now() - t0;
	t0 = now();
	r = job->mask_only ? 0 : fp_hfout_finish(x.ho, model_fn, &x);
	if (r == 0 && !job->mask_only && x.replaced != cnt)
		r = fp_err_detail(-EINVAL, "%s: %zu of %zu pruned tensors written", job->out_dir,
				  x.replaced, cnt);
	if (r == 0)
		r = fp_mask_writer_close(x.wr);
	x.wr = NULL;
	if (r < 0)
		goto out;
	t_write += now() - t0;

	parts = jarr(&j, x.report, "participants");
	for (size_t c = 0; c < N; c++) {
		cJSON *p = jobj(&j, parts, NULL);

		jstr(&j, p, "id", job->client_ids ? job->client_ids[c] : job->mask_paths[c]);
		jstr(&j, p, "mask", job->mask_paths[c]);
		jnum(&j, p, "weight", o.weights ? o.weights[c] : 1.0);
		jnum(&j, p, "pruned", (double)x.cpruned[c]);
		jnum(&j, p, "density", all_w ? (double)x.cpruned[c] / (double)all_w : 0);
		jnum(&j, p, "tensor_density_min", x.dmin[c]);
		jnum(&j, p, "tensor_density_max", x.dmax[c]);
	}
	ov = jobj(&j, x.report, "overall");
	jnum(&j, ov, "tensors", (double)cnt);
	jnum(&j, ov, "weights", (double)all_w);
	jnum(&j, ov, "pruned", (double)all_pruned);
	jnum(&j, ov, "sparsity", all_w ? (double)all_pruned / (double)all_w : 0);
	jnum(&j, ov, "tied", (double)all_tied);
	jnum(&j, ov, "tied_pruned", (double)all_tied_pruned);
	jnum(&j, ov, "split_groups", (double)all_split);
	jhist(&j, ov, "vote_histogram", x.hist, N + 1);

	ag = jobj(&j, x.report, "agreement");
	jstr(&j, ag, "mean_pairwise_jaccard_is",
	     pairs	       ? "exact"
	     : N < 2	       ? "undefined: fewer than 2 clients"
	     : !job->agreement ? "not computed: disabled"
			       : "not computed: too many clients or masks to hold together");
	agreement_json(&j, ag, &x.total, N);
	blocks = jarr(&j, ag, "blocks");
	qsort(x.blocks, x.nblocks, sizeof(*x.blocks), cmp_blk);
	for (size_t b = 0; b < x.nblocks; b++) {
		cJSON *bo = jobj(&j, blocks, NULL);

		if (x.blocks[b].id >= 0)
			jnum(&j, bo, "block", (double)x.blocks[b].id);
		else
			jstr(&j, bo, "block", "other");
		jnum(&j, bo, "tensors", (double)x.blocks[b].tensors);
		agreement_json(&j, bo, &x.blocks[b], N);
	}
	sk = jarr(&j, x.report, "files_not_copied");
	for (size_t i = 0; sk && x.ho && i < fp_hfout_skipped_count(x.ho); i++) {
		const char *why = NULL, *name = fp_hfout_skipped(x.ho, i, &why);
		cJSON *e = jobj(&j, sk, NULL);

		jstr(&j, e, "file", name);
		jstr(&j, e, "reason", why ? why : "");
	}
	tm = jobj(&j, x.report, "timings");
	jnum(&j, tm, "read_seconds", t_read);
	jnum(&j, tm, "count_seconds", t_count);
	jnum(&j, tm, "select_seconds", t_select);
	jnum(&j, tm, "write_seconds", t_write);
	jnum(&j, tm, "total_seconds", now() - t_start);
	r = j.fail ? -ENOMEM
		   : fp_agg_report_write(x.tmpdir ? x.tmpdir : fp_hfout_tmpdir(x.ho), x.report);
	if (r < 0)
		goto out;
	if (job->mask_only) {
		r = fp_dir_publish(x.tmpdir, job->out_dir);
		if (r == 0) {
			free(x.tmpdir);
			x.tmpdir = NULL;
		}
	} else {
		r = fp_hfout_commit(x.ho);
		x.ho = NULL;
	}
	if (r < 0)
		goto out;
	if (ret_report) {
		*ret_report = x.report;
		x.report = NULL;
	}
out:
	run_free(&x);
	return r;
}
