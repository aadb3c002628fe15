/*
 * The compute kernels of the forward pass. Each fast kernel has a naive reference next to it
 * (suffix _ref: plain loops, double accumulation, no BLAS) that tests/unit/test_kernels.c
 * compares it with on random odd shapes. The kernels are pure (no allocation, no threads);
 * forward.c splits rows over threads and calls them on ranges.
 *
 * Matrices are row-major; "ld" is the distance in floats between consecutive rows, so a
 * kernel can read one head's columns out of a wider activation matrix.
 */
#ifndef FP_KERNELS_H
#define FP_KERNELS_H

#include <stddef.h>

/* Query rows per attention tile: scratch of fp_k_attention is FP_ATTN_TILE * T floats. */
#define FP_ATTN_TILE 128

/*
 * y (n, out) = x (n, in) · Wᵀ + beta · y, W (out, in) row-major as stored on disk; one
 * cblas_sgemm (uses the BLAS library's threads). beta = 0 overwrites y, 1 accumulates.
 */
void fp_k_linear(float *y, const float *x, const float *w, size_t n, size_t in, size_t out,
		 float beta);
void fp_k_linear_ref(float *y, const float *x, const float *w, size_t n, size_t in, size_t out,
		     float beta);

/* y (n, out) with row stride ldy: every row += b (out). */
void fp_k_add_bias(float *y, size_t ldy, const float *b, size_t n, size_t out);

/* RMSNorm per row: y (n, dim) = x / sqrt(mean(x²) + eps) * w (dim); y may equal x. */
void fp_k_rmsnorm(float *y, const float *x, const float *w, size_t n, size_t dim, double eps);
void fp_k_rmsnorm_ref(float *y, const float *x, const float *w, size_t n, size_t dim, double eps);

/*
 * Rotate-half RoPE in place on n rows of x (row stride ld), each holding nheads heads of
 * head_dim floats at x[t * ld + h * head_dim]. Row t is at position pos0 + t. Dimension j
 * pairs with j + head_dim/2: (a, b) -> (a cos - b sin, b cos + a sin) with angle
 * pos * inv_freq[j]. cos, sin: tables (npos, head_dim / 2) from fp__model_rope.
 */
void fp_k_rope(float *x, size_t ld, size_t n, size_t nheads, size_t head_dim, size_t pos0,
	       const float *cos, const float *sin);
/* Reference: angles computed in double from inv_freq (head_dim / 2). */
void fp_k_rope_ref(float *x, size_t ld, size_t n, size_t nheads, size_t head_dim, size_t pos0,
		   const double *inv_freq);

/* Softmax in place over x (n), n >= 1. */
void fp_k_softmax(float *x, size_t n);
void fp_k_softmax_ref(float *x, size_t n);

/*
 * SwiGLU: h (n, dim) row stride ldh = silu(g) * u, where g and u (n, dim) have row stride
 * ldgu (they may be the two halves of one (n, 2 dim) matrix). silu(z) = z / (1 + e^-z).
 */
void fp_k_silu_mul(float *h, size_t ldh, const float *g, const float *u, size_t ldgu, size_t n,
		   size_t dim);
void fp_k_silu_mul_ref(float *h, size_t ldh, const float *g, const float *u, size_t ldgu, size_t n,
		       size_t dim);

/*
 * Causal attention of one head over one sequence of T tokens:
 *   out[t] = sum_s softmax_s(scale · q[t]·k[s]) v[s],  s in (t - window, t]
 * (window == 0: every s <= t). out (T, hd) row stride ldo; q (T, hd) row stride ldq;
 * k, v (T, hd) row stride ldkv. The fast kernel works in tiles of FP_ATTN_TILE query rows
 * with two sgemms each (call it with BLAS single-threaded when several threads run it);
 * scratch holds FP_ATTN_TILE * T floats.
 */
void fp_k_attention(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
		    const float *v, size_t ldkv, size_t T, size_t hd, size_t window, float scale,
		    float *scratch);
void fp_k_attention_ref(float *out, size_t ldo, const float *q, size_t ldq, const float *k,
			const float *v, size_t ldkv, size_t T, size_t hd, size_t window,
			float scale);

#endif
