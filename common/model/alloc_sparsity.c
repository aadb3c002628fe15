/*
 * Sparsity allocation: uniform, Global MP with a per-matrix floor, LAMP (see alloc_sparsity.h).
 */
#include "alloc_sparsity.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "select.h"

#define DIGIT	16
#define NBUCKET (1u << DIGIT)
#define LEVELS	(64 / DIGIT)

struct gsel {
	const struct fp_sparsity_mat *mats;
	size_t n;
	bool lamp;
	uint64_t *numel, *cap, *base, *run; /* (n) each */
	uint32_t *hist;			    /* (n, NBUCKET) keys of the current range per digit */
	uint64_t *bmin, *bmax;		    /* (NBUCKET) smallest, largest key seen per digit */
	uint32_t *sorted, *stmp;	    /* (largest numel) LAMP sort buffers */
	unsigned level;			    /* digit = key bits [63 - 16 level, 48 - 16 level] */
	uint64_t prefix;		    /* key bits above the current digit */
};

static const char *mname(const struct fp_sparsity_mat *m)
{
	return m->name ? m->name : "matrix";
}

static uint32_t f2u(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float u2f(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

static uint64_t d2u(double d)
{
	uint64_t u;

	memcpy(&u, &d, sizeof(u));
	return u;
}

/* Count key into matrix histogram h if it lies in the current range. */
static inline void hist_add(struct gsel *g, uint32_t *h, uint64_t key)
{
	unsigned shift = 48 - DIGIT * g->level, b;

	if (g->level && key >> (shift + DIGIT) != g->prefix >> (shift + DIGIT))
		return;
	b = (unsigned)(key >> shift) & (NBUCKET - 1);
	h[b]++;
	if (key < g->bmin[b])
		g->bmin[b] = key;
	if (key > g->bmax[b])
		g->bmax[b] = key;
}

/* a (n) sorted ascending; tmp (n) scratch. LSD radix, two 16-bit digits. */
static void radix_sort(uint32_t *a, uint32_t *tmp, size_t n, size_t *cnt /* (NBUCKET + 1) */)
{
	for (unsigned pass = 0; pass < 2; pass++) {
		unsigned sh = pass * 16;

		memset(cnt, 0, (NBUCKET + 1) * sizeof(*cnt));
		for (size_t i = 0; i < n; i++)
			cnt[(a[i] >> sh & 0xffff) + 1]++;
		for (unsigned b = 0; b < NBUCKET; b++)
			cnt[b + 1] += cnt[b];
		for (size_t i = 0; i < n; i++)
			tmp[cnt[a[i] >> sh & 0xffff]++] = a[i];
		memcpy(a, tmp, n * sizeof(*a));
	}
}

/* Histogram the keys of matrix i in the current range. */
static void hist_matrix(struct gsel *g, size_t i, size_t *cnt)
{
	const float *w = g->mats[i].w; /* (numel) */
	uint32_t *h = g->hist + i * NBUCKET;
	size_t n = (size_t)g->numel[i];
	double S = 0.0;

	if (!g->lamp) {
		for (size_t j = 0; j < n; j++)
			hist_add(g, h, (uint64_t)(f2u(w[j]) & 0x7fffffffu) << 32);
		return;
	}
	for (size_t j = 0; j < n; j++)
		g->sorted[j] = f2u(w[j]) & 0x7fffffffu;
	radix_sort(g->sorted, g->stmp, n, cnt);
	for (size_t p = n; p-- > 0;) {
		double v = (double)u2f(g->sorted[p]), v2 = v * v;

		S += v2;
		hist_add(g, h, d2u(S > 0.0 ? v2 / S : 0.0));
	}
}

/*
 * Smallest digit b of the current range where the capped count of keys up to and including
 * bucket b reaches K. g->run becomes the per-matrix count below bucket b.
 */
static unsigned choose_bucket(struct gsel *g, uint64_t K)
{
	memcpy(g->run, g->base, g->n * sizeof(*g->run));
	for (unsigned b = 0; b < NBUCKET; b++) {
		uint64_t tot = 0;

		for (size_t i = 0; i < g->n; i++) {
			uint64_t c = g->run[i] + g->hist[i * NBUCKET + b];

			tot += c < g->cap[i] ? c : g->cap[i];
		}
		if (tot >= K)
			return b;
		for (size_t i = 0; i < g->n; i++)
			g->run[i] += g->hist[i * NBUCKET + b];
	}
	return NBUCKET - 1; /* not reached: the range holds the K-th key */
}

/* Find the K-th key of the capped global order and split K across the matrices. */
static int global_select(struct gsel *g, uint64_t K, struct fp_sparsity_out *out)
{
	size_t *cnt = fp_mallocarray(NBUCKET + 1, sizeof(*cnt));
	uint64_t left = K;
	unsigned b = 0;

	if (!cnt)
		return -ENOMEM;
	for (g->level = 0; g->level < LEVELS; g->level++) {
		memset(g->hist, 0, g->n * NBUCKET * sizeof(*g->hist));
		for (unsigned i = 0; i < NBUCKET; i++) {
			g->bmin[i] = UINT64_MAX;
			g->bmax[i] = 0;
		}
		for (size_t i = 0; i < g->n; i++)
			hist_matrix(g, i, cnt);
		b = choose_bucket(g, K);
		memcpy(g->base, g->run, g->n * sizeof(*g->base));
		if (g->bmin[b] == g->bmax[b] || g->level == LEVELS - 1)
			break;
		g->prefix |= (uint64_t)b << (48 - DIGIT * g->level);
	}
	free(cnt);
	/* base = keys below the K-th key's value, hist[.][b] = keys equal to it */
	for (size_t i = 0; i < g->n; i++) {
		uint64_t lo = g->base[i] < g->cap[i] ? g->base[i] : g->cap[i];

		out[i].k = lo;
		left -= lo;
	}
	for (size_t i = 0; i < g->n; i++) {
		uint64_t hi = g->base[i] + g->hist[i * NBUCKET + b], take;

		hi = hi < g->cap[i] ? hi : g->cap[i];
		take = hi - out[i].k < left ? hi - out[i].k : left;
		out[i].k += take;
		left -= take;
	}
	return 0;
}

/* Validate the matrices; fill numel and cap; *ret_total = all weights, *ret_caps = sum cap. */
static int prepare(struct gsel *g, double min_keep, uint64_t *ret_total, uint64_t *ret_caps,
		   size_t *ret_max)
{
	uint64_t total = 0, caps = 0;
	size_t maxn = 0;

	for (size_t i = 0; i < g->n; i++) {
		const struct fp_sparsity_mat *m = &g->mats[i];
		size_t n;
		uint64_t keep;

		if (!fp_mul_ok(m->rows, m->cols, &n) || n > UINT32_MAX)
			return fp_err_detail(-EINVAL,
					     "%s: (%zu, %zu) has too many weights (at most"
					     " 2^32 - 1 per matrix)",
					     mname(m), m->rows, m->cols);
		if (n && !m->w)
			return fp_err_detail(-EINVAL, "%s: no weights", mname(m));
		for (size_t j = 0; j < n; j++)
			if (!isfinite(m->w[j]))
				return fp_err_detail(-EINVAL, "%s: weight (%zu, %zu) is %g",
						     mname(m), j / m->cols, j % m->cols,
						     (double)m->w[j]);
		keep = (uint64_t)ceil((double)n * min_keep);
		g->numel[i] = n;
		g->cap[i] = n - (keep < n ? keep : n);
		if (__builtin_add_overflow(total, n, &total))
			return fp_err_detail(-EINVAL, "too many weights");
		caps += g->cap[i];
		maxn = n > maxn ? n : maxn;
	}
	*ret_total = total;
	*ret_caps = caps;
	*ret_max = maxn;
	return 0;
}

static void gsel_free(struct gsel *g)
{
	free(g->numel);
	free(g->cap);
	free(g->base);
	free(g->run);
	free(g->hist);
	free(g->bmin);
	free(g->bmax);
	free(g->sorted);
	free(g->stmp);
}

static int alloc_global(const struct fp_sparsity_mat *mats, size_t n,
			const struct fp_sparsity_opts *o, struct fp_sparsity_out *out)
{
	struct gsel g = { .mats = mats, .n = n, .lamp = o->scheme == FP_SPARSITY_LAMP };
	uint64_t total = 0, caps = 0, K;
	size_t maxn = 0;
	int r;

	g.numel = fp_callocarray(n, sizeof(uint64_t));
	g.cap = fp_callocarray(n, sizeof(uint64_t));
	g.base = fp_callocarray(n, sizeof(uint64_t));
	g.run = fp_callocarray(n, sizeof(uint64_t));
	if (!g.numel || !g.cap || !g.base || !g.run) {
		r = -ENOMEM;
		goto out;
	}
	r = prepare(&g, o->min_keep, &total, &caps, &maxn);
	if (r < 0)
		goto out;
	K = fp_select_k(total, o->sparsity);
	if (K > caps) {
		r = fp_err_detail(-EINVAL,
				  "sparsity %g (%llu of %llu weights) unreachable when every "
				  "matrix keeps %g of its weights",
				  o->sparsity, (unsigned long long)K, (unsigned long long)total,
				  o->min_keep);
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		out[i] = (struct fp_sparsity_out){ .numel = g.numel[i] };
	if (K) {
		g.hist = fp_mallocarray(n, NBUCKET * sizeof(uint32_t));
		g.bmin = fp_mallocarray(NBUCKET, sizeof(uint64_t));
		g.bmax = fp_mallocarray(NBUCKET, sizeof(uint64_t));
		if (g.lamp) {
			g.sorted = fp_mallocarray(maxn ? maxn : 1, sizeof(uint32_t));
			g.stmp = fp_mallocarray(maxn ? maxn : 1, sizeof(uint32_t));
		}
		if (!g.hist || !g.bmin || !g.bmax || (g.lamp && (!g.sorted || !g.stmp)))
			r = -ENOMEM;
		else
			r = global_select(&g, K, out);
	}
	for (size_t i = 0; r == 0 && i < n; i++)
		out[i].sparsity = out[i].numel ? (double)out[i].k / (double)out[i].numel : 0.0;
out:
	gsel_free(&g);
	if (r == -ENOMEM)
		r = fp_err_detail(-ENOMEM, "sparsity allocation: out of memory");
	return r;
}

int fp_sparsity_alloc(const struct fp_sparsity_mat *mats, size_t n,
		      const struct fp_sparsity_opts *o, struct fp_sparsity_out *out)
{
	if (!(o->sparsity >= 0.0 && o->sparsity <= 1.0))
		return fp_err_detail(-EINVAL, "sparsity %g outside [0, 1]", o->sparsity);
	if (!(o->min_keep >= 0.0 && o->min_keep <= 1.0))
		return fp_err_detail(-EINVAL, "min_keep %g outside [0, 1]", o->min_keep);
	switch (o->scheme) {
	case FP_SPARSITY_UNIFORM:
		for (size_t i = 0; i < n; i++) {
			size_t numel;

			if (!fp_mul_ok(mats[i].rows, mats[i].cols, &numel))
				return fp_err_detail(-EINVAL, "%s: shape overflows",
						     mname(&mats[i]));
			out[i].numel = numel;
			out[i].k = fp_select_k(numel, o->sparsity);
			out[i].sparsity = o->sparsity;
		}
		return 0;
	case FP_SPARSITY_GLOBAL:
	case FP_SPARSITY_LAMP:
		return alloc_global(mats, n, o, out);
	}
	return fp_err_detail(-EINVAL, "unknown sparsity scheme %d", (int)o->scheme);
}

const char *fp_sparsity_scheme_name(enum fp_sparsity_scheme s)
{
	switch (s) {
	case FP_SPARSITY_UNIFORM:
		return "uniform";
	case FP_SPARSITY_GLOBAL:
		return "global";
	case FP_SPARSITY_LAMP:
		return "lamp";
	}
	return "?";
}

int fp_sparsity_scheme_parse(const char *s, enum fp_sparsity_scheme *ret)
{
	static const enum fp_sparsity_scheme all[] = { FP_SPARSITY_UNIFORM, FP_SPARSITY_GLOBAL,
						       FP_SPARSITY_LAMP };

	for (size_t i = 0; s && i < sizeof(all) / sizeof(all[0]); i++)
		if (strcmp(s, fp_sparsity_scheme_name(all[i])) == 0) {
			*ret = all[i];
			return 0;
		}
	return fp_err_detail(-EINVAL, "unknown sparsity scheme '%s' (uniform, global, lamp)",
			     s ? s : "");
}
