/*
 * Overflow-checked allocation helpers (see alloc.h).
 */
#include "alloc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

bool fp_mul_dims_ok(const uint64_t *dims, size_t n, uint64_t *ret)
{
	uint64_t p = 1;

	for (size_t i = 0; i < n; i++)
		if (__builtin_mul_overflow(p, dims[i], &p))
			return false;
	*ret = p;
	return true;
}

void *fp_mallocarray(size_t n, size_t size)
{
	size_t bytes;

	if (!fp_mul_ok(n, size, &bytes)) {
		errno = EOVERFLOW;
		return NULL;
	}
	return malloc(bytes ? bytes : 1);
}

void *fp_callocarray(size_t n, size_t size)
{
	size_t bytes;

	if (!fp_mul_ok(n, size, &bytes)) {
		errno = EOVERFLOW;
		return NULL;
	}
	return calloc(bytes ? n : 1, bytes ? size : 1);
}

void *fp_reallocarray(void *p, size_t n, size_t size)
{
	size_t bytes;

	if (!fp_mul_ok(n, size, &bytes)) {
		errno = EOVERFLOW;
		return NULL;
	}
	return realloc(p, bytes ? bytes : 1);
}

void *fp_aligned_array(size_t n, size_t size)
{
	size_t bytes;
	void *p = NULL;

	if (!fp_mul_ok(n, size, &bytes) || !fp_add_ok(bytes, 63, &bytes)) {
		errno = EOVERFLOW;
		return NULL;
	}
	bytes &= ~(size_t)63;
	if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) {
		errno = ENOMEM;
		return NULL;
	}
	return p;
}

char *fp_strdup(const char *s)
{
	return s ? strdup(s) : NULL;
}
