/*
 * Overflow-checked allocation. Every size computed from outside input (tensor shapes, frame
 * lengths, counts in a file) goes through these, so a lying header cannot wrap a size_t into
 * a small allocation. All return NULL (errno = ENOMEM or EOVERFLOW) on failure; the caller
 * owns the result and frees it with free() (fp_aligned_* with free() too).
 */
#ifndef FP_ALLOC_H
#define FP_ALLOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* *ret = a * b; returns false (and leaves *ret untouched) if it overflows. */
static inline bool fp_mul_ok(size_t a, size_t b, size_t *ret)
{
	size_t r;

	if (__builtin_mul_overflow(a, b, &r))
		return false;
	*ret = r;
	return true;
}

/* *ret = a + b; returns false if it overflows. */
static inline bool fp_add_ok(size_t a, size_t b, size_t *ret)
{
	size_t r;

	if (__builtin_add_overflow(a, b, &r))
		return false;
	*ret = r;
	return true;
}

/* Product of n dims into *ret; false on overflow. n == 0 gives 1 (a scalar). */
bool fp_mul_dims_ok(const uint64_t *dims, size_t n, uint64_t *ret);

/* malloc(n * size) with overflow check. Returns a new allocation owned by the caller. */
void *fp_mallocarray(size_t n, size_t size);

/* calloc(n, size) (zeroed). Returns a new allocation owned by the caller. */
void *fp_callocarray(size_t n, size_t size);

/* realloc(p, n * size) with overflow check; on failure p is untouched and still owned. */
void *fp_reallocarray(void *p, size_t n, size_t size);

/* 64-byte aligned, uninitialised n * size bytes for SIMD/BLAS buffers; free() it. */
void *fp_aligned_array(size_t n, size_t size);

/* strdup that returns NULL for NULL. */
char *fp_strdup(const char *s);

/* Free *p and set it to NULL. */
#define fp_freep(p)          \
	do {                 \
		free(*(p));  \
		*(p) = NULL; \
	} while (0)

#endif
