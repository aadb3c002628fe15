/*
 * Forward-pass kernels, each fast path followed by its naive reference (see kernels.h).
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

#include <cblas.h>

/* ---- linear ---- */

void fp_k_linear(float *y, const float *x, const float *w, size_t n, size_t in, size_t out,
		 float beta)
{
	if (n == 0 || out == 0)
		return;
	if (in == 0) {
		for (size_t i = 0; i < n * out; i++)
			y[i] = beta == 0 ? 0 : beta * y[i];
		return;
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)out, (int)in, 1.0f, x,
		    (int)in, w, (int)in, beta, y, (int)out);
}

void fp_k_linear_ref(float *y, const float *x, const float *w, size_t n, size_t in, size_t out,
		     float beta)
{
	for (size_t t = 0; t < n; t++) {
		for (size_t o = 0; o < out; o++) {
			double acc = 0;

			for (size_t i = 0; i < in; i++)
				acc += (double)x[t * in + i] * (double)w[o * in + i];
			if (beta != 0)
				acc += (double)beta * y[t * out + o];
			y[t * out + o] = (float)acc;
		}
	}
}

void fp_k_add_bias(float *y, size_t ldy, const float *b, size_t n, size_t out)
{
	for (size_t t = 0; t < n; t++) {
		float *row = y + t * ldy;

		for (size_t o = 0; o < out; o++)
			row[o] += b[o];
	}
}

/* ---- RMSNorm ---- */

void fp_k_rmsnorm(float *y, const float *x, const float *w, size_t n, size_t dim, double eps)
{
	for (size_t t = 0; t < n; t++) {
		const float *xr = x + t * dim;
		float *yr = y + t * dim;
		double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
		size_t j = 0;
		float r;

		/* four independent accumulators: the loop is latency bound otherwise */
		for (; j + 4 <= dim; j += 4) {
			s0 += (double)xr[j] * xr[j];
			s1 += (double)xr[j + 1] * xr[j + 1];
			s2 += (double)xr[j + 2] * xr[j + 2];
			s3 += (double)xr[j + 3] * xr[j + 3];
		}
		for (; j < dim; j++)
			s0 += (double)xr[j] * xr[j];
		r = (float)(1.0 / sqrt((s0 + s1 + s2 + s3) / (double)dim + eps));
		for (j = 0; j < dim; j++)
			yr[j] = xr[j] * r * w[j];
	}
}

void fp_k_rmsnorm_ref(float *y, const float *x, const float *w, size_t n, size_t dim, double eps)
{
	for (size_t t = 0; t < n; t++) {
		double ss = 0;

		for (size_t j = 0; j < dim; j++)
			ss += (double)x[t * dim + j] * (double)x[t * dim + j];
		ss = sqrt(ss / (double)dim + eps);
		for (size_t j = 0; j < dim; j++)
			y[t * dim + j] = (float)((double)x[t * dim + j] / ss * (double)w[j]);
	}
}

/* ---- RoPE ---- */

void fp_k_rope(float *x, size_t ld, size_t n, size_t nheads, size_t head_dim, size_t pos0,
	       const float *cos, const float *sin)
{
	size_t half = head_dim / 2;

	for (size_t t = 0; t < n; t++) {
		const float *c = cos + (pos0 + t) * half;
		const float *s = sin + (pos0 + t) * half;

		for (size_t h = 0; h < nheads; h++) {
			float *a = x + t * ld + h * head_dim;
			float *b = a + half;

			for (size_t j = 0; j < half; j++) {
				float a0 = a[j], b0 = b[j];

				a[j] = a0 * c[j] - b0 * s[j];
				b[j] = b0 * c[j] + a0 * s[j];
			}
		}
	}
}

void fp_k_rope_ref(float *x, size_t ld, size_t n, size_t nheads, size_t head_dim, size_t pos0,
		   const double *inv_freq)
{
	size_t half = head_dim / 2;

	for (size_t t = 0; t < n; t++) {
		for (size_t h = 0; h < nheads; h++) {
			float *v = x + t * ld + h * head_dim;

			for (size_t j = 0; j < half; j++) {
				double ang = (double)(pos0 + t) * inv_freq[j];
				double a = v[j], b = v[j + half];

				/* rotate_half: x * cos + (-x2, x1) * sin */
				v[j] = (float)(a * cos(ang) - b * sin(ang));
				v[j + half] = (float)(b * cos(ang) + a * sin(ang));
			}
		}
	}
}

/* ---- softmax ---- */

void fp_k_softmax(float *x, size_t n)
{
	float mx = x[0], sum = 0, inv;

	for (size_t i = 1; i < n; i++)
		mx = x[i] > mx ? x[i] : mx;
	for (size_t i = 0; i < n; i++) {
		x[i] = expf(x[i] - mx);
		sum += x[i];
	}
	inv = 1.0f / sum;
	for (size_t i = 0; i < n; i++)
		x[i] *= inv;
}

void fp_k_softmax_ref(float *x, size_t n)
{
	double mx = x[0], sum = 0;

	for (size_t i = 1; i < n; i++)
		if (x[i] > mx)
			mx = x[i];
	for (size_t i = 0; i < n; i++)
		sum += exp((double)x[i] - mx);
	for (size_t i = 0; i < n; i++)
		x[i] = (float)(exp((double)x[i] - mx) / sum);
}

/* ---- SwiGLU ---- */

void fp_k_silu_mul(float *h, size_t ldh, const float *g, const float *u, size_t ldgu, size_t n,
		   size_t dim)
{
	for (size_t t = 0; t < n; t++) {
		const float *gr = g + t * ldgu, *ur = u + t * ldgu;
		float *hr = h + t * ldh;

		for (size_t j = 0; j < dim; j++)
			hr[j] = gr[j] / (1.0f + expf(-gr[j])) * ur[j];
	}
}

void fp_k_silu_mul_ref(float *h, size_t ldh, const float *g, const float *u, size_t ldgu, size_t n,
		       size_t dim)
{
	for (size_t t = 0; t < n; t++) {
		for (size_t j = 0; j < dim; j++) {
			double z = g[t * ldgu + j];

			h[t * ldh + j] = (float)(z / (1.0 + exp(-z)) * (double)u[t * ldgu + j]);
		}
	}
}

/* ---- attention ---- */

/* First key visible from query t: max(0, t + 1 - window), or 0 without a window. */
static size_t first_key(size_t t, size_t window)
{
	return window && t + 1 > window ? t + 1 - window : 0;
}

void fp_k_attention(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
		    const float *v, size_t ldkv, size_t T, size_t hd, size_t window, float scale,
		    float *scratch)
{
	for (size_t r0 = 0; r0 < T; r0 += FP_ATTN_TILE) {
		size_t r1 = r0 + FP_ATTN_TILE < T ? r0 + FP_ATTN_TILE : T;
		size_t lo = first_key(r0, window), nk = r1 - lo, bq = r1 - r0;
		float *s = scratch; /* (bq, nk) */

		/* S = scale · Q[r0:r1] · K[lo:r1]ᵀ */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)bq, (int)nk, (int)hd,
			    scale, q + r0 * ldq, (int)ldq, k + lo * ldkv, (int)ldkv, 0.0f, s,
			    (int)nk);
		for (size_t r = r0; r < r1; r++) {
			float *row = s + (r - r0) * nk;
			size_t a = first_key(r, window) - lo, b = r + 1 - lo; /* visible [a, b) */

			fp_k_softmax(row + a, b - a);
			memset(row, 0, a * sizeof(float));
			memset(row + b, 0, (nk - b) * sizeof(float));
		}
		/* O[r0:r1] = P · V[lo:r1] */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)bq, (int)hd, (int)nk,
			    1.0f, s, (int)nk, v + lo * ldkv, (int)ldkv, 0.0f, out + r0 * ldo,
			    (int)ldo);
	}
}

void fp_k_attention_ref(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
			const float *v, size_t ldkv, size_t T, size_t hd, size_t window,
			float scale)
{
	for (size_t t = 0; t < T; t++) {
		size_t a = first_key(t, window);
		double mx = -INFINITY, sum = 0;

		for (size_t s = a; s <= t; s++) {
			double d = 0;

			for (size_t j = 0; j < hd; j++)
				d += (double)q[t * ldq + j] * (double)k[s * ldkv + j];
			if (d * scale > mx)
				mx = d * scale;
		}
		for (size_t j = 0; j < hd; j++)
			out[t * ldo + j] = 0;
		for (size_t s = a; s <= t; s++) {
			double d = 0;

			for (size_t j = 0; j < hd; j++)
				d += (double)q[t * ldq + j] * (double)k[s * ldkv + j];
			sum += exp(d * scale - mx);
		}
		for (size_t j = 0; j < hd; j++) {
			double acc = 0;

			for (size_t s = a; s <= t; s++) {
				double d = 0;

				for (size_t i = 0; i < hd; i++)
					d += (double)q[t * ldq + i] * (double)k[s * ldkv + i];
				acc += exp(d * scale - mx) / sum * (double)v[s * ldkv + j];
			}
			out[t * ldo + j] = (float)acc;
		}
	}
}
