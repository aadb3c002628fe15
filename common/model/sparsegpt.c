/*
 * SparseGPT solver on one weight matrix (see sparsegpt.h for the semantics and the differences
 * from the reference). Fast path: LAPACK factorization of the index-reversed Hessian, radix
 * selection, per-row in-block OBS updates over fp_par_for, one sgemm per block. Reference
 * path: the reference algorithm transcribed with plain loops in double.
 */
#include "sparsegpt.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "alloc.h"
#include "err.h"
#include "mask.h"
#include "par.h"
#include "select.h"

/*
 * LAPACK from the BLAS library (Fortran ABI: every argument by reference, the hidden lengths
 * of the CHARACTER arguments last; OpenBLAS's C implementations simply ignore them).
 * lapacke.h is not installed, so the prototypes are declared here.
 */
void spotrf_(const char *uplo, const int *n, float *a, const int *lda, int *info, size_t uplo_len);
void strtri_(const char *uplo, const char *diag, const int *n, float *a, const int *lda, int *info,
	     size_t uplo_len, size_t diag_len);

#define ROW_GRAIN 16 /* rows per thread at least in the in-block loop */
#define SUB_COLS  32 /* columns per sub-block of the in-block loop (rounded up to M) */

void fp_sparsegpt_opts_init(struct fp_sparsegpt_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->sparsity = 0.5;
	o->blocksize = FP_SPARSEGPT_BLOCKSIZE;
	o->percdamp = FP_SPARSEGPT_PERCDAMP;
	o->max_retries = FP_SPARSEGPT_RETRIES;
}

size_t fp_sparsegpt_mask_bytes(size_t rows, size_t cols)
{
	size_t n;

	if (!fp_mul_ok(rows, cols, &n))
		return 0;
	return fp_mask_bytes(n);
}

static const char *mat_name(const struct fp_sparsegpt_opts *o)
{
	return o && o->name ? o->name : "weight";
}

/* Damping fraction of the attempt after one that used pd. */
static double next_percdamp(double pd)
{
	return pd > 0 ? pd * 10 : FP_SPARSEGPT_PERCDAMP;
}

static int check_args(const float *w, size_t rows, size_t cols, const float *xtx, uint64_t nseq,
		      const struct fp_sparsegpt_opts *o)
{
	const char *nm = mat_name(o);
	size_t nw, nh;

	if (!w || !xtx || !o)
		return fp_err_detail(-EINVAL, "%s: sparsegpt: NULL argument", nm);
	if (rows == 0 || cols == 0)
		return fp_err_detail(-EINVAL, "%s: empty matrix (%zu x %zu)", nm, rows, cols);
	if (rows > INT_MAX || cols > INT_MAX || !fp_mul_ok(rows, cols, &nw) ||
	    !fp_mul_ok(cols, cols, &nh) || nh > SIZE_MAX / sizeof(double))
		return fp_err_detail(-EOVERFLOW, "%s: matrix too large (%zu x %zu)", nm, rows,
				     cols);
	if (nseq == 0)
		return fp_err_detail(-EINVAL, "%s: no calibration sequences (nseq = 0)", nm);
	if (!(o->sparsity >= 0 && o->sparsity <= 1))
		return fp_err_detail(-EINVAL, "%s: sparsity %g not in [0, 1]", nm, o->sparsity);
	if (o->blocksize == 0)
		return fp_err_detail(-EINVAL, "%s: blocksize 0", nm);
	if (!(o->percdamp >= 0 && isfinite(o->percdamp)))
		return fp_err_detail(-EINVAL, "%s: percdamp %g not a finite value >= 0", nm,
				     o->percdamp);
	if (o->max_retries > FP_SPARSEGPT_MAX_RETRIES)
		return fp_err_detail(-EINVAL, "%s: max_retries %u above %u", nm, o->max_retries,
				     FP_SPARSEGPT_MAX_RETRIES);
	if (o->prune_n || o->prune_m) {
		if (o->prune_n == 0 || o->prune_m == 0 || o->prune_n > o->prune_m ||
		    o->prune_m > FP_SPARSEGPT_MAX_M)
			return fp_err_detail(-EINVAL, "%s: bad N:M pattern %u:%u", nm, o->prune_n,
					     o->prune_m);
		if (cols % o->prune_m || o->blocksize % o->prune_m)
			return fp_err_detail(-EINVAL,
					     "%s: N:M %u:%u needs cols (%zu) and blocksize (%zu) "
					     "multiples of %u",
					     nm, o->prune_n, o->prune_m, cols, o->blocksize,
					     o->prune_m);
	}
	for (size_t i = 0; i < nw; i++)
		if (!isfinite(w[i]))
			return fp_err_detail(-EINVAL, "%s: weight [%zu, %zu] is not finite", nm,
					     i / cols, i % cols);
	for (size_t i = 0; i < cols; i++)
		for (size_t j = i; j < cols; j++)
			if (!isfinite(xtx[i * cols + j]))
				return fp_err_detail(-EINVAL, "%s: xtx [%zu, %zu] is not finite",
						     nm, i, j);
	return 0;
}

static int edom(const struct fp_sparsegpt_opts *o, size_t cols, double pd, double damp)
{
	return fp_err_detail(-EDOM,
			     "%s: Hessian (%zu x %zu) not positive definite after %u retries "
			     "(last percdamp %g, damp %g)",
			     mat_name(o), cols, cols, o->max_retries, pd, damp);
}

/*
 * N:M on one group of one row: p[t] = 1 for the nprune lowest s[t] (ties: lower t first).
 * s (m), p (m).
 */
static void select_nm(const double *s, unsigned m, unsigned nprune, uint8_t *p)
{
	for (unsigned t = 0; t < m; t++) {
		unsigned rank = 0;

		for (unsigned q = 0; q < m; q++)
			rank += s[q] < s[t] || (s[q] == s[t] && q < t);
		p[t] = rank < nprune;
	}
}

/* ---- fast path ------------------------------------------------------------------------- */

/*
 * a (n, n) = U, the upper Cholesky factor of (H_scaled + damp I)⁻¹, as the inverse of the
 * reverse Cholesky factor: with J the index reversal, R = J H J = L Lᵀ (spotrf), so
 * H = (J L J)(J Lᵀ J) = Ũ Ũᵀ with Ũ = J L J upper, and H⁻¹ = Ũ⁻ᵀ Ũ⁻¹ = UᵀU with U = Ũ⁻¹ =
 * J L⁻¹ J (strtri, then reversing the flat array). LAPACK sees the row-major array as its
 * transpose, so uplo "U" works on the row-major lower triangle. hdiag (n): diagonal of the
 * scaled H with dead entries set to 1. The strict lower triangle of the result is 0.
 * Returns 0, -EDOM when not positive definite (or the factor is not usable), -EINVAL on a
 * LAPACK argument error.
 */
static int factor_fast(float *a, const float *xtx, size_t n, float scale, const float *hdiag,
		       float damp)
{
	int ni = (int)n, info = 0;

	for (size_t i = 0; i < n; i++) {
		const float *src = xtx + (n - 1 - i) * n; /* row n-1-i of xtx */
		float *dst = a + i * n;

		/* a[i][j] = H[n-1-i][n-1-j], j <= i: the upper triangle of H */
		for (size_t j = 0; j < i; j++)
			dst[j] = scale * src[n - 1 - j];
		dst[i] = hdiag[n - 1 - i] + damp;
		memset(dst + i + 1, 0, (n - 1 - i) * sizeof(*dst));
		if (!isfinite(dst[i]))
			return -EDOM;
	}
	spotrf_("U", &ni, a, &ni, &info, 1);
	if (info > 0)
		return -EDOM;
	if (info < 0)
		return fp_err_detail(-EINVAL, "spotrf: argument %d invalid", -info);
	strtri_("U", "N", &ni, a, &ni, &info, 1, 1);
	if (info > 0)
		return -EDOM;
	if (info < 0)
		return fp_err_detail(-EINVAL, "strtri: argument %d invalid", -info);
	for (size_t p = 0, q = n * n - 1; p < q; p++, q--) {
		float t = a[p];

		a[p] = a[q];
		a[q] = t;
	}
	for (size_t i = 0; i < n; i++) {
		const float *row = a + i * n;
		float d = row[i];

		if (!(d > 0) || !isfinite(d) || !(d * d >= FLT_MIN))
			return -EDOM;
		for (size_t j = i + 1; j < n; j++)
			if (!isfinite(row[j]))
				return -EDOM;
	}
	return 0;
}

/* Bit pattern of a score: for non-negative floats (and NaN above +inf) it orders like the value. */
static inline uint32_t score_key(const float *s)
{
	uint32_t k;

	memcpy(&k, s, sizeof(k));
	return k;
}

/*
 * Exactly k of the n scores marked in pm (n): the k lowest by (score, index). Scores are
 * non-negative (w² / d²). Radix select over the bit patterns, 11 + 11 + 10 bits, finds the
 * k-th pattern T and how many lie below it; then every score below T and the first k - less
 * equal to T (lowest index first) are marked. hist: 2048 scratch counters.
 */
static void select_k(const float *sc, size_t n, size_t k, uint8_t *pm, size_t *hist)
{
	static const unsigned shift[3] = { 21, 10, 0 }, bits[3] = { 11, 11, 10 };
	uint32_t prefix = 0, T;
	size_t t, less = 0, need;

	if (k == 0 || k >= n) {
		memset(pm, k ? 1 : 0, n);
		return;
	}
	t = k - 1; /* rank of T among the scores still in play */
	for (unsigned lv = 0; lv < 3; lv++) {
		size_t nb = (size_t)1 << bits[lv], cum = 0, b;
		uint32_t dmask = (uint32_t)(nb - 1);

		memset(hist, 0, nb * sizeof(*hist));
		if (lv == 0) {
			for (size_t i = 0; i < n; i++)
				hist[score_key(sc + i) >> shift[0]]++;
		} else {
			unsigned up = shift[lv] + bits[lv];

			for (size_t i = 0; i < n; i++) {
				uint32_t key = score_key(sc + i);

				if (key >> up == prefix)
					hist[(key >> shift[lv]) & dmask]++;
			}
		}
		for (b = 0; b < nb; b++) {
			if (cum + hist[b] > t)
				break;
			cum += hist[b];
		}
		t -= cum;
		less += cum;
		prefix = (prefix << bits[lv]) | (uint32_t)b;
	}
	T = prefix;
	need = k - less; /* >= 1: how many of the scores equal to T are taken */
	for (size_t i = 0; i < n; i++)
		pm[i] = score_key(sc + i) < T;
	for (size_t i = 0; i < n && need; i++)
		if (score_key(sc + i) == T) {
			pm[i] = 1;
			need--;
		}
}

struct block_job {
	float *w; /* (rows, cols) */
	size_t cols;
	size_t i1, cnt;	  /* block columns [i1, i1 + cnt) */
	size_t sub;	  /* columns per sub-block (a multiple of M for N:M) */
	const float *u;	  /* (cols, cols) upper */
	const float *dsq; /* (cnt) U[c][c]² of the block */
	float *err;	  /* (rows, cnt) */
	uint8_t *pm;	  /* (rows, cnt), 1 = pruned; filled here for N:M */
	unsigned pn, pmm; /* N:M or 0 */
	double loss[FP_PAR_MAX_THREADS];
};

typedef float fv4 __attribute__((vector_size(16)));

/* y (n) -= a · x (n); four lanes at a time (GCC's -O2 cost model leaves the loop scalar). */
static inline void axpy_neg(float *restrict y, const float *restrict x, float a, size_t n)
{
	fv4 va = { a, a, a, a };
	size_t j = 0;

	for (; j + 8 <= n; j += 8) {
		fv4 x0, x1, y0, y1;

		memcpy(&x0, x + j, sizeof(x0));
		memcpy(&x1, x + j + 4, sizeof(x1));
		memcpy(&y0, y + j, sizeof(y0));
		memcpy(&y1, y + j + 4, sizeof(y1));
		y0 -= va * x0;
		y1 -= va * x1;
		memcpy(y + j, &y0, sizeof(y0));
		memcpy(y + j + 4, &y1, sizeof(y1));
	}
	for (; j < n; j++)
		y[j] -= a * x[j];
}

/*
 * The in-block column loop on rows [begin, end); rows are independent given the mask. The
 * block is walked in sub-blocks of j->sub columns: the column-by-column OBS updates stay
 * inside the sub-block, and the sub-block's errors reach the rest of the block through one
 * sgemm over this thread's rows (the same lazy-batch idea as between blocks, one level down;
 * identical in exact arithmetic). N:M groups never straddle sub-blocks (sub % M == 0), so a
 * group's scores are taken from fully updated weights, as in the reference.
 */
static void block_rows(void *ctx, size_t begin, size_t end, unsigned tid)
{
	struct block_job *j = ctx;
	const size_t cnt = j->cnt, ld = j->cols;
	const float *u1 = j->u + j->i1 * ld + j->i1; /* (cnt, cnt) with row stride ld */
	double loss = 0;

	for (size_t s1 = 0; s1 < cnt; s1 += j->sub) {
		size_t s2 = cnt - s1 < j->sub ? cnt : s1 + j->sub;

		for (size_t r = begin; r < end; r++) {
			float *w = j->w + r * ld + j->i1; /* (cnt) */
			float *e = j->err + r * cnt;	  /* (cnt) */
			uint8_t *p = j->pm + r * cnt;	  /* (cnt) */

			for (size_t c = s1; c < s2; c++) {
				const float *urow = u1 + c * ld;
				float er;

				if (j->pn && c % j->pmm == 0) {
					double s[FP_SPARSEGPT_MAX_M];

					for (unsigned t = 0; t < j->pmm; t++)
						s[t] = (w[c + t] * w[c + t]) / j->dsq[c + t];
					select_nm(s, j->pmm, j->pn, p + c);
				}
				if (!p[c]) {
					e[c] = 0;
					continue;
				}
				er = w[c] / urow[c];
				e[c] = er;
				w[c] = 0;
				loss += (double)er * er / 2;
				axpy_neg(w + c + 1, urow + c + 1, er, s2 - c - 1);
			}
		}
		if (s2 < cnt)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(end - begin),
				    (int)(cnt - s2), (int)(s2 - s1), -1.0f,
				    j->err + begin * cnt + s1, (int)cnt, u1 + s1 * ld + s2, (int)ld,
				    1.0f, j->w + begin * ld + j->i1 + s2, (int)ld);
	}
	j->loss[tid] += loss;
}

int fp_sparsegpt_prune(float *w, size_t rows, size_t cols, const float *xtx, uint64_t nseq,
		       const struct fp_sparsegpt_opts *o, uint8_t *mask,
		       struct fp_sparsegpt_report *rep)
{
	const size_t n = cols;
	const bool nm = o && o->prune_n;
	struct block_job job = { 0 };
	float *a = NULL, *hd = NULL, *dsq = NULL, *err = NULL, *sc = NULL;
	uint8_t *pm = NULL;
	size_t *hist = NULL, bs, dead = 0, pruned = 0;
	double mean = 0, pd, damp = 0;
	float scale;
	unsigned attempt;
	int r, saved;

	r = check_args(w, rows, cols, xtx, nseq, o);
	if (r < 0)
		return r;
	bs = o->blocksize < cols ? o->blocksize : cols;
	a = fp_aligned_array(n * n, sizeof(*a));
	hd = fp_mallocarray(n, sizeof(*hd));
	dsq = fp_mallocarray(bs, sizeof(*dsq));
	err = fp_mallocarray(rows, bs * sizeof(*err));
	pm = fp_mallocarray(rows, bs);
	if (!nm) {
		sc = fp_mallocarray(rows, bs * sizeof(*sc));
		hist = fp_mallocarray(2048, sizeof(*hist));
	}
	if (!a || !hd || !dsq || !err || !pm || (!nm && (!sc || !hist))) {
		r = fp_err_detail(-ENOMEM, "%s: sparsegpt: out of memory", mat_name(o));
		goto out;
	}

	/* 1-2: scaled diagonal, dead inputs, damping */
	scale = (float)(2.0 / (double)nseq);
	for (size_t i = 0; i < n; i++) {
		hd[i] = scale * xtx[i * n + i];
		if (hd[i] == 0) {
			hd[i] = 1;
			dead++;
		}
		mean += hd[i];
	}
	mean /= (double)n;

	/* 3: factorization, retried with more damping */
	pd = o->percdamp;
	for (attempt = 0;; attempt++) {
		damp = (double)(float)(pd * mean);
		r = factor_fast(a, xtx, n, scale, hd, (float)damp);
		if (r != -EDOM)
			break;
		if (attempt == o->max_retries) {
			r = edom(o, cols, pd, damp);
			goto out;
		}
		pd = next_percdamp(pd);
	}
	if (r < 0)
		goto out;

	for (size_t i = 0; i < n; i++)
		if (scale * xtx[i * n + i] == 0) /* dead, as decided above */
			for (size_t rr = 0; rr < rows; rr++)
				w[rr * cols + i] = 0;
	if (mask)
		memset(mask, 0, fp_sparsegpt_mask_bytes(rows, cols));

	/* 4: blocks */
	job.w = w;
	job.cols = cols;
	job.u = a;
	job.dsq = dsq;
	job.err = err;
	job.pm = pm;
	job.pn = nm ? o->prune_n : 0;
	job.pmm = nm ? o->prune_m : 0;
	job.sub = nm ? (SUB_COLS + job.pmm - 1) / job.pmm * job.pmm : SUB_COLS;
	for (size_t i1 = 0; i1 < cols; i1 += bs) {
		size_t cnt = cols - i1 < bs ? cols - i1 : bs, i2 = i1 + cnt;

		for (size_t c = 0; c < cnt; c++) {
			float d = a[(i1 + c) * n + i1 + c];

			dsq[c] = d * d;
		}
		if (!nm) {
			size_t ne = rows * cnt;

			for (size_t rr = 0; rr < rows; rr++) {
				const float *wr = w + rr * cols + i1; /* (cnt) */
				float *sr = sc + rr * cnt;	      /* (cnt) */

				for (size_t c = 0; c < cnt; c++)
					sr[c] = (wr[c] * wr[c]) / dsq[c];
			}
			select_k(sc, ne, (size_t)fp_select_k(ne, o->sparsity), pm, hist);
		}
		job.i1 = i1;
		job.cnt = cnt;
		saved = fp_blas_single_begin();
		fp_par_for(rows, ROW_GRAIN, block_rows, &job);
		fp_blas_single_end(saved);
		if (i2 < cols)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows,
				    (int)(cols - i2), (int)cnt, -1.0f, err, (int)cnt,
				    a + i1 * n + i2, (int)n, 1.0f, w + i2, (int)cols);
		for (size_t rr = 0; rr < rows; rr++) {
			const uint8_t *p = pm + rr * cnt; /* (cnt) */

			for (size_t c = 0; c < cnt; c++)
				pruned += p[c];
			if (mask) /* fp_mask_put, branch-free on a fresh mask */
				for (size_t c = 0, bit = rr * cols + i1; c < cnt; c++, bit++)
					mask[bit / 8] |= (uint8_t)(p[c] << (bit % 8));
		}
	}
	for (size_t i = 0; i < rows * cols; i++)
		if (!isfinite(w[i])) {
			r = fp_err_detail(-EDOM,
					  "%s: weight [%zu, %zu] overflowed during the update",
					  mat_name(o), i / cols, i % cols);
			goto out;
		}
	if (rep) {
		rep->percdamp = pd;
		rep->damp = damp;
		rep->retries = attempt;
		rep->dead = dead;
		rep->pruned = pruned;
		rep->loss = 0;
		for (unsigned t = 0; t < FP_PAR_MAX_THREADS; t++)
			rep->loss += job.loss[t];
	}
	r = 0;
out:
	free(a);
	free(hd);
	free(dsq);
	free(err);
	free(sc);
	free(pm);
	free(hist);
	return r;
}

/* ---- naive reference ------------------------------------------------------------------- */

/* In-place lower Cholesky of a (n, n) (lower triangle used); -EDOM if not positive definite. */
static int chol_lower_ref(double *a, size_t n)
{
	for (size_t j = 0; j < n; j++) {
		double d = a[j * n + j];

		for (size_t k = 0; k < j; k++)
			d -= a[j * n + k] * a[j * n + k];
		if (!(d > 0) || !isfinite(d))
			return -EDOM;
		d = sqrt(d);
		a[j * n + j] = d;
		for (size_t i = j + 1; i < n; i++) {
			double s = a[i * n + j];

			for (size_t k = 0; k < j; k++)
				s -= a[i * n + k] * a[j * n + k];
			a[i * n + j] = s / d;
		}
		for (size_t i = 0; i < j; i++)
			a[i * n + j] = 0;
	}
	return 0;
}

/*
 * u (n, n) = chol_upper(inverse(chol_lower(h + damp I))), the reference chain. h (n, n)
 * symmetric. t1, t2: (n, n) scratch. Returns 0 or -EDOM.
 */
static int factor_ref(double *u, const double *h, size_t n, double damp, double *t1, double *t2)
{
	int r;

	memcpy(t1, h, n * n * sizeof(*t1));
	for (size_t i = 0; i < n; i++)
		t1[i * n + i] += damp;
	r = chol_lower_ref(t1, n); /* t1 = L */
	if (r < 0)
		return r;
	/* t2 = L⁻¹ by forward substitution, column by column */
	memset(t2, 0, n * n * sizeof(*t2));
	for (size_t c = 0; c < n; c++) {
		for (size_t i = c; i < n; i++) {
			double s = i == c ? 1.0 : 0.0;

			for (size_t k = c; k < i; k++)
				s -= t1[i * n + k] * t2[k * n + c];
			t2[i * n + c] = s / t1[i * n + i];
		}
	}
	/* u = H⁻¹ = L⁻ᵀ L⁻¹ */
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < n; j++) {
			double s = 0;

			for (size_t k = i > j ? i : j; k < n; k++)
				s += t2[k * n + i] * t2[k * n + j];
			u[i * n + j] = s;
		}
	r = chol_lower_ref(u, n); /* lower L2 with H⁻¹ = L2 L2ᵀ; U = L2ᵀ */
	if (r < 0)
		return r;
	for (size_t i = 0; i < n; i++)
		for (size_t j = i + 1; j < n; j++) {
			u[i * n + j] = u[j * n + i];
			u[j * n + i] = 0;
		}
	for (size_t i = 0; i < n; i++) {
		double d = u[i * n + i];

		if (!(d * d >= FLT_MIN))
			return -EDOM;
	}
	return 0;
}

struct scored {
	double s;
	size_t i;
};

static int cmp_scored(const void *pa, const void *pb)
{
	const struct scored *x = pa, *y = pb;

	if (x->s != y->s)
		return x->s < y->s ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

int fp_sparsegpt_prune_ref(float *w, size_t rows, size_t cols, const float *xtx, uint64_t nseq,
			   const struct fp_sparsegpt_opts *o, uint8_t *mask,
			   struct fp_sparsegpt_report *rep)
{
	const size_t n = cols;
	double *h = NULL, *u = NULL, *t1 = NULL, *t2 = NULL, *wd = NULL, *w1 = NULL, *q1 = NULL;
	double *e1 = NULL, scale, mean = 0, pd, damp = 0, loss = 0;
	struct scored *sc = NULL;
	uint8_t *m1 = NULL;
	bool *isdead = NULL;
	size_t bs, dead = 0, pruned = 0;
	unsigned attempt;
	int r;

	r = check_args(w, rows, cols, xtx, nseq, o);
	if (r < 0)
		return r;
	bs = o->blocksize < cols ? o->blocksize : cols;
	h = fp_mallocarray(n * n, sizeof(*h));
	u = fp_mallocarray(n * n, sizeof(*u));
	t1 = fp_mallocarray(n * n, sizeof(*t1));
	t2 = fp_mallocarray(n * n, sizeof(*t2));
	wd = fp_mallocarray(rows * cols, sizeof(*wd));
	w1 = fp_mallocarray(rows * bs, sizeof(*w1));
	q1 = fp_mallocarray(rows * bs, sizeof(*q1));
	e1 = fp_mallocarray(rows * bs, sizeof(*e1));
	sc = fp_mallocarray(rows * bs, sizeof(*sc));
	m1 = fp_mallocarray(rows * bs, sizeof(*m1));
	isdead = fp_callocarray(n, sizeof(*isdead));
	if (!h || !u || !t1 || !t2 || !wd || !w1 || !q1 || !e1 || !sc || !m1 || !isdead) {
		r = fp_err_detail(-ENOMEM, "%s: sparsegpt: out of memory", mat_name(o));
		goto out;
	}

	scale = 2.0 / (double)nseq;
	for (size_t i = 0; i < n; i++)
		for (size_t j = i; j < n; j++)
			h[i * n + j] = h[j * n + i] = scale * xtx[i * n + j];
	for (size_t i = 0; i < n; i++) {
		if (h[i * n + i] == 0) {
			h[i * n + i] = 1;
			isdead[i] = true;
			dead++;
		}
		mean += h[i * n + i];
	}
	mean /= (double)n;

	pd = o->percdamp;
	for (attempt = 0;; attempt++) {
		damp = pd * mean;
		r = factor_ref(u, h, n, damp, t1, t2);
		if (r == 0)
			break;
		if (attempt == o->max_retries) {
			r = edom(o, cols, pd, damp);
			goto out;
		}
		pd = next_percdamp(pd);
	}

	for (size_t rr = 0; rr < rows; rr++)
		for (size_t c = 0; c < cols; c++)
			wd[rr * cols + c] = isdead[c] ? 0.0 : (double)w[rr * cols + c];
	if (mask)
		memset(mask, 0, fp_sparsegpt_mask_bytes(rows, cols));

	for (size_t i1 = 0; i1 < cols; i1 += bs) {
		size_t cnt = cols - i1 < bs ? cols - i1 : bs, i2 = i1 + cnt;

		for (size_t rr = 0; rr < rows; rr++)
			for (size_t c = 0; c < cnt; c++)
				w1[rr * cnt + c] = wd[rr * cols + i1 + c];
		memset(m1, 0, rows * cnt);
		if (!o->prune_n) {
			size_t ne = rows * cnt, k = (size_t)fp_select_k(ne, o->sparsity);

			for (size_t i = 0; i < ne; i++) {
				double d = u[(i1 + i % cnt) * n + i1 + i % cnt];

				sc[i].s = w1[i] * w1[i] / (d * d);
				sc[i].i = i;
			}
			qsort(sc, ne, sizeof(*sc), cmp_scored);
			for (size_t i = 0; i < k; i++)
				m1[sc[i].i] = 1;
		}
		for (size_t c = 0; c < cnt; c++) {
			const double *urow = u + (i1 + c) * n + i1; /* U1[c][:] */
			double d = urow[c];

			if (o->prune_n && c % o->prune_m == 0) {
				for (size_t rr = 0; rr < rows; rr++) {
					double s[FP_SPARSEGPT_MAX_M];

					for (unsigned t = 0; t < o->prune_m; t++) {
						double x = w1[rr * cnt + c + t];
						double dt = u[(i1 + c + t) * n + i1 + c + t];

						s[t] = x * x / (dt * dt);
					}
					select_nm(s, o->prune_m, o->prune_n, m1 + rr * cnt + c);
				}
			}
			for (size_t rr = 0; rr < rows; rr++) {
				double *wr = w1 + rr * cnt;
				double x = wr[c], q = m1[rr * cnt + c] ? 0.0 : x, er = (x - q) / d;

				q1[rr * cnt + c] = q;
				loss += (x - q) * (x - q) / (d * d) / 2;
				for (size_t j = c; j < cnt; j++)
					wr[j] -= er * urow[j];
				e1[rr * cnt + c] = er;
			}
		}
		for (size_t rr = 0; rr < rows; rr++) {
			for (size_t c = 0; c < cnt; c++) {
				wd[rr * cols + i1 + c] = q1[rr * cnt + c];
				if (m1[rr * cnt + c]) {
					pruned++;
					if (mask)
						fp_mask_put(mask, rr * cols + i1 + c, true);
				}
			}
			for (size_t j = i2; j < cols; j++) {
				double s = 0;

				for (size_t c = 0; c < cnt; c++)
					s += e1[rr * cnt + c] * u[(i1 + c) * n + j];
				wd[rr * cols + j] -= s;
			}
		}
	}
	for (size_t i = 0; i < rows * cols; i++) {
		if (!isfinite((float)wd[i])) {
			r = fp_err_detail(-EDOM,
					  "%s: weight [%zu, %zu] overflowed during the update",
					  mat_name(o), i / cols, i % cols);
			goto out;
		}
	}
	for (size_t i = 0; i < rows * cols; i++)
		w[i] = (float)wd[i];
	if (rep) {
		rep->percdamp = pd;
		rep->damp = damp;
		rep->retries = attempt;
		rep->dead = dead;
		rep->pruned = pruned;
		rep->loss = loss;
	}
	r = 0;
out:
	free(h);
	free(u);
	free(t1);
	free(t2);
	free(wd);
	free(w1);
	free(q1);
	free(e1);
	free(sc);
	free(m1);
	free(isdead);
	return r;
}
