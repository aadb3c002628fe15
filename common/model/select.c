/*
 * Mask selection without sorting (see select.h).
 *
 * Every metric value becomes an int32 key that orders like the float: for x >= 0 the IEEE bit
 * pattern itself, for x < 0 the pattern with its 31 magnitude bits flipped, -0 mapped to +0.
 * A group's pruned set is then "keys < T, plus the first `quota` keys == T in index order",
 * where T is the k-th smallest key and quota = k - #(keys < T): exactly the first k of a
 * stable ascending sort.
 */
#include "select.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "alloc.h"
#include "err.h"
#include "mask.h"
#include "par.h"

#define NO_NAN	 SIZE_MAX
#define QSEL_MIN 32	    /* radix select sorts this few keys by insertion */
#define FR_MIN	 1024	    /* below this, radix select directly */
#define COL_TILE 64	    /* the COLUMN path transposes keys in tiles this size */
#define NM_RANK	 16	    /* N:M groups up to this size use the rank formula */
#define PAR_MIN	 (1u << 15) /* weights per thread worth a thread */

/* ---- keys ---- */

static inline uint32_t f2u(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

/* Order-preserving int32 key of a non-NaN float's bits. */
static inline int32_t key_of_bits(uint32_t u)
{
	u = u == 0x80000000u ? 0 : u;
	return (int32_t)(u ^ ((uint32_t)((int32_t)u >> 31) >> 1));
}

struct sel {
	const struct fp_metric_src *src;
	const struct fp_select_spec *spec;
	const float *sq; /* (cols) sqrtf(scaler_row), Wanda only */
	uint8_t *mask;	 /* (fp_mask_bytes(rows * cols)) */
	size_t rows, cols;
	int32_t *scratch; /* (nthreads, per_thread) */
	size_t per_thread;
	uint64_t nan_at[FP_PAR_MAX_THREADS]; /* first NaN flat index seen per thread */
	/* COLUMN */
	int32_t *thr;	   /* (cols) k-th smallest key of each column */
	int32_t *cmp;	   /* (cols) prune key <= cmp */
	uint64_t *lastrow; /* (cols) split ties: last row whose tie is pruned, else UINT64_MAX */
	size_t *partial;   /* (npartial) columns with split ties */
	size_t npartial;
	/* LAYER: keys (rows, cols); COLUMN: keys (cols, rows) */
	int32_t *keys;
	uint64_t *cnt; /* (nitems, 3): keys < T, keys == T, ties to prune */
	int32_t T;
};

/*
 * out (c1 - c0) = keys of row r, columns [c0, c1). Returns the column offset (from c0) of the
 * first NaN, or NO_NAN.
 */
static size_t keys_of(const struct sel *s, size_t r, size_t c0, size_t c1, int32_t *out)
{
	const float *x = s->src->x + r * s->cols + c0; /* (c1 - c0) */
	size_t n = c1 - c0, j = 0;
	uint32_t bad = 0;

#ifdef __SSE2__
	/* the same arithmetic 4 at a time: mulps rounds like mulss */
	if (s->src->kind != FP_METRIC_GIVEN) {
		const __m128i abs = _mm_set1_epi32(0x7fffffff), inf = _mm_set1_epi32(0x7f800000);
		__m128i badv = _mm_setzero_si128();
		int32_t lanes[4];

		for (; n - j >= 4; j += 4) {
			__m128i u = _mm_and_si128(_mm_loadu_si128((const __m128i *)(x + j)), abs);

			if (s->src->kind == FP_METRIC_WANDA)
				u = _mm_and_si128(
					_mm_castps_si128(_mm_mul_ps(_mm_castsi128_ps(u),
								    _mm_loadu_ps(s->sq + c0 + j))),
					abs);
			badv = _mm_or_si128(badv, _mm_cmpgt_epi32(u, inf));
			_mm_storeu_si128((__m128i *)(out + j), u);
		}
		_mm_storeu_si128((__m128i *)lanes, badv);
		bad = (uint32_t)(lanes[0] | lanes[1] | lanes[2] | lanes[3]);
	}
#endif
	if (s->src->kind == FP_METRIC_MAGNITUDE) {
		for (; j < n; j++) {
			uint32_t u = f2u(x[j]) & 0x7fffffffu;

			bad |= u > 0x7f800000u;
			out[j] = (int32_t)u;
		}
	} else if (s->src->kind == FP_METRIC_WANDA) {
		const float *sq = s->sq + c0;

		for (; j < n; j++) {
			uint32_t u = f2u(fp_score_wanda1(x[j], sq[j])) & 0x7fffffffu;

			bad |= u > 0x7f800000u;
			out[j] = (int32_t)u;
		}
	} else {
		for (; j < n; j++) {
			uint32_t u = f2u(x[j]);

			bad |= (u & 0x7fffffffu) > 0x7f800000u;
			out[j] = key_of_bits(u);
		}
	}
	if (!bad)
		return NO_NAN;
	for (j = 0;; j++) {
		float v = s->src->kind == FP_METRIC_WANDA ? fp_score_wanda1(x[j], s->sq[c0 + j])
							  : x[j];

		if (isnan(v))
			return j;
	}
}

/* ---- k-th smallest ---- */

static void insertion_sort(int32_t *a, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		int32_t v = a[i];
		size_t j = i;

		for (; j > 0 && a[j - 1] > v; j--)
			a[j] = a[j - 1];
		a[j] = v;
	}
}

/*
 * k-th smallest (0-based, k < n) of v (n), all of whose values lie in [lo, hi]; v is
 * reordered and overwritten. Radix select on v - lo, 8 bits per round from the top of the
 * span: count the buckets, keep only the bucket holding the k-th (in place, branch-free),
 * narrow [lo, hi] to it. The span shrinks 256-fold per round, so at most 4 rounds of linear
 * work whatever the data (ties included).
 */
static int32_t radix_kth(int32_t *v, size_t n, size_t k, int32_t lo, int32_t hi)
{
	for (;;) {
		uint32_t span = (uint32_t)hi - (uint32_t)lo, cnt[256] = { 0 };
		size_t below = 0, m = 0, b = 0;
		unsigned sh = 0;

		if (span == 0)
			return lo;
		if (n <= QSEL_MIN) {
			insertion_sort(v, n);
			return v[k];
		}
		while (span >> sh > 255)
			sh++;
		for (size_t i = 0; i < n; i++)
			cnt[((uint32_t)v[i] - (uint32_t)lo) >> sh]++;
		for (; below + cnt[b] <= k; b++)
			below += cnt[b];
		for (size_t i = 0; i < n; i++) {
			int32_t x = v[i];

			v[m] = x;
			m += ((uint32_t)x - (uint32_t)lo) >> sh == b;
		}
		k -= below;
		n = m;
		lo = (int32_t)((uint32_t)lo + ((uint32_t)b << sh));
		if ((uint32_t)hi - (uint32_t)lo > (1u << sh) - 1)
			hi = (int32_t)((uint32_t)lo + ((1u << sh) - 1));
	}
}

/*
 * k-th smallest (0-based, k < n) of a, which is left untouched; tmp (n) is scratch.
 * Floyd-Rivest: two order statistics of a regular sample bracket the answer; one branch-free
 * pass counts the keys below the bracket and copies those inside it to tmp, and a radix
 * select finishes on the copy. If the bracket misses (or holds more than half the keys), the
 * radix select runs on a copy of everything instead.
 */
static int32_t kth(const int32_t *a, size_t n, size_t k, int32_t *tmp)
{
	int32_t samp[2048], work[2048];

	if (n > FR_MIN) {
		size_t S = n < (1u << 15) ? 128 : n < (1u << 20) ? 512 : 2048;
		size_t d = (size_t)(1.5 * sqrt((double)S)) + 1, pos = (size_t)((double)k * S / n);
		size_t lt = 0, m = 0;
		int32_t lo = INT32_MIN, hi = INT32_MAX, smin = INT32_MAX, smax = INT32_MIN;

		for (size_t i = 0; i < S; i++) {
			samp[i] = a[(i * n + n / 2) / S];
			smin = samp[i] < smin ? samp[i] : smin;
			smax = samp[i] > smax ? samp[i] : smax;
		}
		if (pos >= d) {
			memcpy(work, samp, S * sizeof(*samp));
			lo = radix_kth(work, S, pos - d, smin, smax);
		}
		if (pos + d < S) {
			memcpy(work, samp, S * sizeof(*samp));
			hi = radix_kth(work, S, pos + d, smin, smax);
		}
		for (size_t i = 0; i < n; i++) {
			int32_t v = a[i];

			tmp[m] = v;
			m += (v >= lo) & (v <= hi);
			lt += v < lo;
		}
		if (k >= lt && k < lt + m && m <= n / 2)
			return radix_kth(tmp, m, k - lt, lo, hi);
	}
	memcpy(tmp, a, n * sizeof(*a));
	return radix_kth(tmp, n, k, INT32_MIN, INT32_MAX);
}

/* *ret_lt, *ret_eq = keys < T and == T among key (n). */
static void count_lt_eq(const int32_t *key, size_t n, int32_t T, uint64_t *ret_lt, uint64_t *ret_eq)
{
	uint64_t lt = 0, eq = 0;
	size_t j = 0;

#ifdef __SSE2__
	const __m128i t = _mm_set1_epi32(T);

	while (n - j >= 4) {
		size_t end = j + ((n - j) / 4 < (1u << 28) ? (n - j) / 4 * 4 : (size_t)1 << 30);
		__m128i alt = _mm_setzero_si128(), aeq = _mm_setzero_si128();
		int32_t l[4], e[4];

		for (; j < end; j += 4) {
			__m128i v = _mm_loadu_si128((const __m128i *)(key + j));

			alt = _mm_sub_epi32(alt, _mm_cmpgt_epi32(t, v));
			aeq = _mm_sub_epi32(aeq, _mm_cmpeq_epi32(v, t));
		}
		_mm_storeu_si128((__m128i *)l, alt);
		_mm_storeu_si128((__m128i *)e, aeq);
		for (int i = 0; i < 4; i++) {
			lt += (uint32_t)l[i];
			eq += (uint32_t)e[i];
		}
	}
#endif
	for (; j < n; j++) {
		lt += key[j] < T;
		eq += key[j] == T;
	}
	*ret_lt = lt;
	*ret_eq = eq;
}

/* ---- bit output ---- */

/* OR the low nb (<= 64) bits of w into mask at bit position pos. */
static void or_bits(uint8_t *mask, uint64_t pos, uint64_t w, unsigned nb)
{
	uint8_t *p = mask + pos / 8;
	unsigned sh = pos & 7, nbytes = (sh + nb + 7) / 8;
	uint64_t lo = w << sh, hi = sh ? w >> (64 - sh) : 0;

	for (unsigned i = 0; i < nbytes; i++)
		p[i] |= (uint8_t)(i < 8 ? lo >> (8 * i) : hi);
}

/* Collects bits and ORs them into the mask 64 at a time. */
struct bitacc {
	uint8_t *mask;
	uint64_t pos; /* bit position of w's bit 0 */
	uint64_t w;
	unsigned n; /* bits held in w, < 64 */
};

static inline void acc_put(struct bitacc *a, uint64_t bits, unsigned nb)
{
	unsigned used = a->n;

	a->w |= bits << used;
	if (used + nb < 64) {
		a->n = used + nb;
		return;
	}
	or_bits(a->mask, a->pos, a->w, 64);
	a->pos += 64;
	a->n = used + nb - 64;
	a->w = a->n ? bits >> (64 - used) : 0;
}

static inline void acc_flush(struct bitacc *a)
{
	if (a->n)
		or_bits(a->mask, a->pos, a->w, a->n);
	a->pos += a->n;
	a->w = 0;
	a->n = 0;
}

/*
 * OR into mask at bits base + [0, n) the pruned set of key (n): keys < T, and the first
 * `quota` of the eq keys == T. The mask bits must be 0 beforehand.
 */
static void mark(uint8_t *mask, uint64_t base, const int32_t *key, size_t n, int32_t T,
		 uint64_t quota, uint64_t eq)
{
	struct bitacc a = { .mask = mask, .pos = base };
	bool le = quota == eq; /* every tie pruned: key <= T; quota == 0: key < T */
	size_t j = 0;

	if (quota != 0 && quota != eq) {
		uint64_t seen = 0;

		for (; j < n; j++) {
			bool e = key[j] == T;

			acc_put(&a, key[j] < T || (e && seen < quota), 1);
			seen += e;
		}
		acc_flush(&a);
		return;
	}
#ifdef __SSE2__
	const __m128i t = _mm_set1_epi32(T);

	for (; n - j >= 64; j += 64) {
		uint64_t w = 0;

		for (unsigned q = 0; q < 16; q++) {
			__m128i v = _mm_loadu_si128((const __m128i *)(key + j + 4 * q));
			__m128i c = le ? _mm_cmpgt_epi32(v, t) : _mm_cmpgt_epi32(t, v);
			unsigned b = (unsigned)_mm_movemask_ps(_mm_castsi128_ps(c));

			w |= (uint64_t)(le ? b ^ 0xfu : b) << (4 * q);
		}
		acc_put(&a, w, 64);
	}
#endif
	for (; j < n; j++)
		acc_put(&a, le ? key[j] <= T : key[j] < T, 1);
	acc_flush(&a);
}

/* Prune the k lowest of key (n) into mask bits base + [0, n); tmp (n) scratch. */
static void select_group(uint8_t *mask, uint64_t base, const int32_t *key, size_t n, uint64_t k,
			 int32_t *tmp)
{
	uint64_t lt, eq;
	int32_t T;

	if (k == 0)
		return;
	T = kth(key, n, (size_t)k - 1, tmp);
	count_lt_eq(key, n, T, &lt, &eq);
	mark(mask, base, key, n, T, k - lt, eq);
}

/* N:M over one row's keys (cols) into mask bits base + [0, cols). */
static void select_nm_row(uint8_t *mask, uint64_t base, const int32_t *key, size_t cols, unsigned n,
			  unsigned m, int32_t *tmp)
{
	struct bitacc a = { .mask = mask, .pos = base };

	if (m > NM_RANK) {
		for (size_t g = 0; g < cols; g += m)
			select_group(mask, base + g, key + g, m, n, tmp);
		return;
	}
	for (size_t g = 0; g < cols; g += m) {
		const int32_t *v = key + g; /* (m) */
		uint64_t bits = 0;

		/* rank in (key, index) order = keys before it that are <=, after it that are < */
		for (unsigned i = 0; i < m; i++) {
			unsigned rank = 0;

			for (unsigned j = 0; j < i; j++)
				rank += v[j] <= v[i];
			for (unsigned j = i + 1; j < m; j++)
				rank += v[j] < v[i];
			bits |= (uint64_t)(rank < n) << i;
		}
		acc_put(&a, bits, m);
	}
	acc_flush(&a);
}

/* ---- parallel drivers ---- */

static size_t min_sz(size_t a, size_t b)
{
	return a < b ? a : b;
}

/* Rows [8b, 8e) own mask bytes [8b*cols/8, bytes(8e*cols)): no two threads share a byte. */
static void rows_of(const struct sel *s, size_t b, size_t e, size_t *r0, size_t *r1)
{
	*r0 = b * 8;
	*r1 = min_sz(e * 8, s->rows);
}

static void clear_rows(const struct sel *s, size_t r0, size_t r1)
{
	size_t b0 = r0 * s->cols / 8, b1 = fp_mask_bytes(r1 * s->cols);

	memset(s->mask + b0, 0, b1 - b0);
}

/* ROW and NM: items are blocks of 8 rows. */
static void row_worker(void *ctx, size_t b, size_t e, unsigned tid)
{
	struct sel *s = ctx;
	int32_t *key = s->scratch + tid * s->per_thread; /* (cols) */
	int32_t *tmp = key + s->cols;			 /* (cols) */
	size_t r0, r1;

	rows_of(s, b, e, &r0, &r1);
	clear_rows(s, r0, r1);
	for (size_t r = r0; r < r1; r++) {
		size_t bad = keys_of(s, r, 0, s->cols, key);

		if (bad != NO_NAN) {
			s->nan_at[tid] = r * s->cols + bad;
			return;
		}
		if (s->spec->group == FP_GROUP_NM)
			select_nm_row(s->mask, (uint64_t)r * s->cols, key, s->cols, s->spec->n,
				      s->spec->m, tmp);
		else
			select_group(s->mask, (uint64_t)r * s->cols, key, s->cols, s->spec->k, tmp);
	}
}

/* COLUMN phase 1: keys of tiles of COL_TILE rows, stored transposed in keys (cols, rows). */
static void col_keys(void *ctx, size_t b, size_t e, unsigned tid)
{
	struct sel *s = ctx;
	int32_t *tile = s->scratch + tid * s->per_thread; /* (COL_TILE, COL_TILE) */
	size_t rows = s->rows, cols = s->cols;

	for (size_t it = b; it < e; it++) {
		size_t r0 = it * COL_TILE, h = min_sz(COL_TILE, rows - r0);

		for (size_t c0 = 0; c0 < cols; c0 += COL_TILE) {
			size_t w = min_sz(COL_TILE, cols - c0);

			for (size_t i = 0; i < h; i++) {
				size_t bad = keys_of(s, r0 + i, c0, c0 + w, tile + i * COL_TILE);
				uint64_t at = (uint64_t)(r0 + i) * cols + c0 + bad;

				if (bad != NO_NAN && at < s->nan_at[tid])
					s->nan_at[tid] = at;
			}
			for (size_t j = 0; j < w; j++) {
				int32_t *dst = s->keys + (c0 + j) * rows + r0; /* (h) */

				for (size_t i = 0; i < h; i++)
					dst[i] = tile[i * COL_TILE + j];
			}
		}
	}
}

/*
 * COLUMN phase 2, per column: cmp = the k-th key T when every tie at T is pruned (then the
 * column's rule is key <= cmp), else T - 1 plus lastrow = the row of the last tie pruned
 * (rule: key <= T - 1, or key == T in a row <= lastrow). T - 1 cannot wrap: the smallest
 * key, INT32_MIN, is a NaN pattern.
 */
static void col_thresholds(void *ctx, size_t b, size_t e, unsigned tid)
{
	struct sel *s = ctx;
	int32_t *tmp = s->scratch + tid * s->per_thread + COL_TILE * COL_TILE; /* (rows) */
	uint64_t k = s->spec->k;

	for (size_t j = b; j < e; j++) {
		const int32_t *col = s->keys + j * s->rows; /* (rows) */
		int32_t T = kth(col, s->rows, (size_t)k - 1, tmp);
		uint64_t lt, eq, seen = 0;

		count_lt_eq(col, s->rows, T, &lt, &eq);
		s->lastrow[j] = UINT64_MAX;
		s->thr[j] = T;
		s->cmp[j] = T;
		if (k - lt == eq)
			continue;
		s->cmp[j] = T - 1;
		for (size_t i = 0; i < s->rows; i++)
			if (col[i] == T && ++seen == k - lt) {
				s->lastrow[j] = i;
				break;
			}
	}
}

/* COLUMN phase 3, blocks of 8 rows: key <= cmp[col] (SSE2), then the split ties. */
static void col_mark(void *ctx, size_t b, size_t e, unsigned tid)
{
	struct sel *s = ctx;
	int32_t *key =
		s->scratch + tid * s->per_thread + COL_TILE * COL_TILE + s->rows; /* (cols) */
	size_t r0, r1, cols = s->cols;

	rows_of(s, b, e, &r0, &r1);
	clear_rows(s, r0, r1);
	for (size_t r = r0; r < r1; r++) {
		struct bitacc a = { .mask = s->mask, .pos = (uint64_t)r * cols };
		size_t j = 0;

		keys_of(s, r, 0, cols, key);
#ifdef __SSE2__
		for (; cols - j >= 4; j += 4) {
			__m128i v = _mm_loadu_si128((const __m128i *)(key + j));
			__m128i t = _mm_loadu_si128((const __m128i *)(s->cmp + j));
			unsigned gt =
				(unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpgt_epi32(v, t)));

			acc_put(&a, gt ^ 0xfu, 4);
		}
#endif
		for (; j < cols; j++)
			acc_put(&a, key[j] <= s->cmp[j], 1);
		acc_flush(&a);
		for (size_t p = 0; p < s->npartial; p++) {
			size_t c = s->partial[p];

			if (key[c] == s->thr[c] && r <= s->lastrow[c])
				fp_mask_put(s->mask, (uint64_t)r * cols + c, true);
		}
	}
}

/* LAYER phase 1: keys of blocks of 8 rows. */
static void layer_keys(void *ctx, size_t b, size_t e, unsigned tid)
{
	struct sel *s = ctx;
	size_t r0, r1;

	rows_of(s, b, e, &r0, &r1);
	clear_rows(s, r0, r1);
	for (size_t r = r0; r < r1; r++) {
		size_t bad = keys_of(s, r, 0, s->cols, s->keys + r * s->cols);

		if (bad != NO_NAN) {
			s->nan_at[tid] = r * s->cols + bad;
			return;
		}
	}
}

/* LAYER phase 2: keys < T and == T per item. */
static void layer_count(void *ctx, size_t b, size_t e, unsigned tid)
{
	struct sel *s = ctx;

	for (size_t it = b; it < e; it++) {
		size_t r0, r1;

		rows_of(s, it, it + 1, &r0, &r1);
		count_lt_eq(s->keys + r0 * s->cols, (r1 - r0) * s->cols, s->T, &s->cnt[3 * it],
			    &s->cnt[3 * it + 1]);
	}
}

/* LAYER phase 3: bits per item with its share of the ties. */
static void layer_mark(void *ctx, size_t b, size_t e, unsigned tid)
{
	struct sel *s = ctx;

	for (size_t it = b; it < e; it++) {
		size_t r0, r1;

		rows_of(s, it, it + 1, &r0, &r1);
		mark(s->mask, (uint64_t)r0 * s->cols, s->keys + r0 * s->cols, (r1 - r0) * s->cols,
		     s->T, s->cnt[3 * it + 2], s->cnt[3 * it + 1]);
	}
}

static int run_layer(struct sel *s, size_t nitems, size_t grain)
{
	size_t n = s->rows * s->cols;
	uint64_t lt = 0, left;
	int32_t *tmp;

	s->keys = fp_mallocarray(n, 2 * sizeof(int32_t));
	s->cnt = fp_callocarray(nitems, 3 * sizeof(uint64_t));
	if (!s->keys || !s->cnt)
		return -ENOMEM;
	tmp = s->keys + n;
	fp_par_for(nitems, grain, layer_keys, s);
	for (unsigned t = 0; t < FP_PAR_MAX_THREADS; t++)
		if (s->nan_at[t] != UINT64_MAX)
			return 0; /* reported by the caller */
	if (s->spec->k == 0)
		return 0;
	s->T = kth(s->keys, n, (size_t)s->spec->k - 1, tmp);
	fp_par_for(nitems, grain, layer_count, s);
	for (size_t it = 0; it < nitems; it++)
		lt += s->cnt[3 * it];
	left = s->spec->k - lt;
	for (size_t it = 0; it < nitems; it++) {
		uint64_t q = s->cnt[3 * it + 1] < left ? s->cnt[3 * it + 1] : left;

		s->cnt[3 * it + 2] = q;
		left -= q;
	}
	fp_par_for(nitems, grain, layer_mark, s);
	return 0;
}

static int run_column(struct sel *s)
{
	size_t rows = s->rows, cols = s->cols, n = rows * cols;

	s->keys = fp_mallocarray(n, sizeof(int32_t));
	s->thr = fp_mallocarray(cols, sizeof(*s->thr));
	s->cmp = fp_mallocarray(cols, sizeof(*s->cmp));
	s->lastrow = fp_mallocarray(cols, sizeof(*s->lastrow));
	s->partial = fp_mallocarray(cols, sizeof(*s->partial));
	if (!s->keys || !s->thr || !s->cmp || !s->lastrow || !s->partial)
		return -ENOMEM;
	fp_par_for((rows + COL_TILE - 1) / COL_TILE, PAR_MIN / (COL_TILE * cols) + 1, col_keys, s);
	for (unsigned t = 0; t < FP_PAR_MAX_THREADS; t++)
		if (s->nan_at[t] != UINT64_MAX)
			return 0; /* reported by the caller */
	if (s->spec->k == 0) {
		memset(s->mask, 0, fp_mask_bytes(n));
		return 0;
	}
	fp_par_for(cols, PAR_MIN / rows + 1, col_thresholds, s);
	for (size_t j = 0; j < cols; j++)
		if (s->lastrow[j] != UINT64_MAX)
			s->partial[s->npartial++] = j;
	fp_par_for((rows + 7) / 8, PAR_MIN / (8 * cols) + 1, col_mark, s);
	return 0;
}

/* Allocate per-thread scratch and run the group's driver. */
static int run(struct sel *s)
{
	size_t nt = fp_par_threads(), rows = s->rows, cols = s->cols;
	size_t nitems = (rows + 7) / 8, per_item = 8 * cols, grain;
	enum fp_group g = s->spec->group;
	int r = 0;

	if (g == FP_GROUP_COLUMN) {
		if (!fp_add_ok(rows, cols, &s->per_thread) ||
		    !fp_add_ok(s->per_thread, COL_TILE * COL_TILE, &s->per_thread))
			return -ENOMEM;
	} else {
		s->per_thread = 2 * cols;
	}
	grain = per_item ? PAR_MIN / per_item + 1 : 1;
	if (g != FP_GROUP_LAYER) {
		if (!fp_mul_ok(nt, s->per_thread, &nt))
			return -ENOMEM;
		s->scratch = fp_mallocarray(nt ? nt : 1, sizeof(int32_t));
		if (!s->scratch)
			return -ENOMEM;
	}
	if (g == FP_GROUP_ROW || g == FP_GROUP_NM)
		fp_par_for(nitems, grain, row_worker, s);
	else if (g == FP_GROUP_LAYER)
		r = run_layer(s, nitems, grain);
	else
		r = run_column(s);
	return r;
}

/* ---- public ---- */

uint64_t fp_select_k(uint64_t group_size, double sparsity)
{
	double k = (double)group_size * sparsity;

	if (!(k > 0))
		return 0;
	if (k >= (double)group_size)
		return group_size;
	return (uint64_t)k;
}

uint64_t fp_select_group_size(const struct fp_select_spec *spec, size_t rows, size_t cols)
{
	switch (spec->group) {
	case FP_GROUP_ROW:
		return cols;
	case FP_GROUP_LAYER:
		return (uint64_t)rows * cols;
	case FP_GROUP_COLUMN:
		return rows;
	case FP_GROUP_NM:
		return spec->m;
	}
	return 0;
}

int fp_select_spec_init(struct fp_select_spec *ret, enum fp_group g, double sparsity, size_t rows,
			size_t cols)
{
	struct fp_select_spec s = { .group = g };

	if (!(sparsity >= 0.0 && sparsity <= 1.0))
		return fp_err_detail(-EINVAL, "sparsity %g outside [0, 1]", sparsity);
	if (g != FP_GROUP_ROW && g != FP_GROUP_LAYER && g != FP_GROUP_COLUMN)
		return fp_err_detail(-EINVAL, "group %d has no single sparsity", (int)g);
	s.k = fp_select_k(fp_select_group_size(&s, rows, cols), sparsity);
	*ret = s;
	return 0;
}

uint64_t fp_select_pruned(const struct fp_select_spec *spec, size_t rows, size_t cols)
{
	switch (spec->group) {
	case FP_GROUP_ROW:
		return spec->k * rows;
	case FP_GROUP_LAYER:
		return spec->k;
	case FP_GROUP_COLUMN:
		return spec->k * cols;
	case FP_GROUP_NM:
		return spec->m ? (uint64_t)rows * (cols / spec->m) * spec->n : 0;
	}
	return 0;
}

int fp_select_check(const struct fp_select_spec *spec, size_t rows, size_t cols, const char *name)
{
	if (!name)
		name = "matrix";
	if (spec->group == FP_GROUP_NM) {
		if (spec->m == 0 || spec->n > spec->m)
			return fp_err_detail(-EINVAL, "%s: bad N:M pattern %u:%u", name, spec->n,
					     spec->m);
		if (cols % spec->m)
			return fp_err_detail(-EINVAL,
					     "%s: %zu columns are not a multiple of M = %u (%u:%u)",
					     name, cols, spec->m, spec->n, spec->m);
		return 0;
	}
	if (spec->group != FP_GROUP_ROW && spec->group != FP_GROUP_LAYER &&
	    spec->group != FP_GROUP_COLUMN)
		return fp_err_detail(-EINVAL, "%s: unknown comparison group %d", name,
				     (int)spec->group);
	if (spec->k > fp_select_group_size(spec, rows, cols))
		return fp_err_detail(-EINVAL, "%s: k = %llu exceeds the %s group size %llu", name,
				     (unsigned long long)spec->k, fp_group_name(spec->group),
				     (unsigned long long)fp_select_group_size(spec, rows, cols));
	return 0;
}

static int nan_error(const struct sel *s)
{
	uint64_t at = UINT64_MAX;

	for (unsigned t = 0; t < FP_PAR_MAX_THREADS; t++)
		if (s->nan_at[t] < at)
			at = s->nan_at[t];
	if (at == UINT64_MAX)
		return 0;
	return fp_err_detail(-EINVAL, "%s: metric is NaN at (%llu, %llu)", fp_score_name(s->src),
			     (unsigned long long)(at / s->cols),
			     (unsigned long long)(at % s->cols));
}

int fp_select(uint8_t *mask, const struct fp_metric_src *src, const struct fp_select_spec *spec)
{
	struct sel s = { .src = src, .spec = spec, .mask = mask };
	float *sq = NULL;
	int r;

	r = fp_score_check(src);
	if (r == 0)
		r = fp_select_check(spec, src->rows, src->cols, src->name);
	if (r < 0)
		return r;
	s.rows = src->rows;
	s.cols = src->cols;
	if (s.rows == 0 || s.cols == 0)
		return 0;
	for (unsigned t = 0; t < FP_PAR_MAX_THREADS; t++)
		s.nan_at[t] = UINT64_MAX;
	if (src->kind == FP_METRIC_WANDA) {
		sq = fp_mallocarray(s.cols, sizeof(float));
		if (!sq)
			return fp_err_detail(-ENOMEM, "%s: out of memory", fp_score_name(src));
		r = fp_score_sqrt_scaler(sq, src->scaler, s.cols, src->name);
		s.sq = sq;
	}
	if (r == 0)
		r = run(&s);
	if (r == -ENOMEM)
		r = fp_err_detail(-ENOMEM, "%s: out of memory", fp_score_name(src));
	else if (r == 0)
		r = nan_error(&s);
	free(s.scratch);
	free(s.thr);
	free(s.cmp);
	free(s.lastrow);
	free(s.partial);
	free(s.keys);
	free(s.cnt);
	free(sq);
	return r;
}

/* ---- reference ---- */

struct ref_item {
	float v;
	size_t i;
};

static int cmp_ref(const void *a, const void *b)
{
	const struct ref_item *x = a, *y = b;

	if (x->v != y->v)
		return x->v < y->v ? -1 : 1;
	return (x->i > y->i) - (x->i < y->i);
}

/* Stable-sort the group metric[start + t * stride], t < n, and set the first k bits. */
static void ref_group(uint8_t *mask, const float *metric, size_t start, size_t stride, size_t n,
		      uint64_t k, struct ref_item *it)
{
	for (size_t t = 0; t < n; t++) {
		it[t].v = metric[start + t * stride];
		it[t].i = start + t * stride;
	}
	qsort(it, n, sizeof(*it), cmp_ref);
	for (size_t t = 0; t < k; t++)
		fp_mask_put(mask, it[t].i, true);
}

int fp_select_naive(uint8_t *mask, const struct fp_metric_src *src,
		    const struct fp_select_spec *spec)
{
	size_t rows = src ? src->rows : 0, cols = src ? src->cols : 0, n = rows * cols;
	struct ref_item *it = NULL;
	float *metric = NULL;
	int r;

	r = fp_score_check(src);
	if (r == 0)
		r = fp_select_check(spec, rows, cols, src->name);
	if (r < 0 || n == 0)
		return r;
	metric = fp_mallocarray(n, sizeof(float));
	it = fp_mallocarray(n, sizeof(*it));
	if (!metric || !it) {
		r = fp_err_detail(-ENOMEM, "%s: out of memory", fp_score_name(src));
		goto out;
	}
	r = fp_score_compute(metric, src);
	for (size_t i = 0; r == 0 && i < n; i++)
		if (isnan(metric[i]))
			r = fp_err_detail(-EINVAL, "%s: metric is NaN at (%zu, %zu)",
					  fp_score_name(src), i / cols, i % cols);
	if (r < 0)
		goto out;
	memset(mask, 0, fp_mask_bytes(n));
	if (spec->group == FP_GROUP_ROW)
		for (size_t i = 0; i < rows; i++)
			ref_group(mask, metric, i * cols, 1, cols, spec->k, it);
	else if (spec->group == FP_GROUP_COLUMN)
		for (size_t j = 0; j < cols; j++)
			ref_group(mask, metric, j, cols, rows, spec->k, it);
	else if (spec->group == FP_GROUP_LAYER)
		ref_group(mask, metric, 0, 1, n, spec->k, it);
	else
		for (size_t g = 0; g < n; g += spec->m)
			ref_group(mask, metric, g, 1, spec->m, spec->n, it);
out:
	free(metric);
	free(it);
	return r;
}

const char *fp_group_name(enum fp_group g)
{
	switch (g) {
	case FP_GROUP_ROW:
		return "row";
	case FP_GROUP_LAYER:
		return "layer";
	case FP_GROUP_COLUMN:
		return "column";
	case FP_GROUP_NM:
		return "nm";
	}
	return "?";
}

int fp_group_parse(const char *s, enum fp_group *ret)
{
	static const enum fp_group g[] = { FP_GROUP_ROW, FP_GROUP_LAYER, FP_GROUP_COLUMN };

	for (size_t i = 0; s && i < sizeof(g) / sizeof(g[0]); i++)
		if (strcmp(s, fp_group_name(g[i])) == 0) {
			*ret = g[i];
			return 0;
		}
	return fp_err_detail(-EINVAL, "unknown comparison group '%s' (row, layer, column)",
			     s ? s : "");
}
