/*
 * Fuzz the mask file reader (fp_mask_reader_open_mem + fp_mask_reader_next).
 *
 * Byte 0 picks the mode, the rest is the file. Mode bit 0 clear: the file as is. Set: before
 * reading, the digests are recomputed wherever the (possibly lying) header lets this harness
 * find them: the header digest, each tensor's digest, the trailer. Without that, random
 * mutations almost never get past the header digest and the entry parser stays unexplored.
 *
 * Whatever the reader accepts must satisfy the format's invariants: at least one tensor,
 * unique names, nbytes = ceil(prod(dims) / 8) within the input, padding bits clear, the
 * popcount within nbits. A violation aborts so libFuzzer reports it.
 */
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mask.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t le(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Recompute the digests of file image f (n bytes) in place, as far as its layout allows. */
static void fix_digests(uint8_t *f, size_t n)
{
	uint64_t hlen, count, pos = 32, at;

	if (n < 32 + 32)
		return;
	count = le(f + 16, 8);
	hlen = le(f + 24, 8);
	if (hlen < 64 || hlen > n)
		return;
	crypto_generichash(f + hlen - 32, 32, f, hlen - 32, NULL, 0);
	at = hlen;
	for (uint64_t i = 0; i < count && i < 4096; i++) {
		uint64_t nl, nd, nb;

		if (pos + 4 > hlen - 32)
			break;
		nl = le(f + pos, 4);
		pos += 4 + nl;
		if (nl > hlen || pos + 4 > hlen - 32)
			break;
		nd = le(f + pos, 4);
		pos += 4 + 8 * nd;
		if (nd > hlen || pos + 8 > hlen - 32)
			break;
		nb = le(f + pos, 8);
		pos += 8;
		if (nb > n || at + nb + 32 > n)
			break;
		crypto_generichash(f + at + nb, 32, f + at, nb, NULL, 0);
		at += nb + 32;
	}
	crypto_generichash(f + n - 32, 32, f, n - 32, NULL, 0);
}

static void check_info(const struct fp_mask_reader *r, size_t i, size_t size)
{
	const struct fp_mask_info *t = fp_mask_reader_info(r, i);
	uint64_t n = 1;

	if (!t || t->ndim < 1 || t->ndim > FP_MASK_MAX_DIMS || !t->name[0])
		abort();
	for (uint32_t d = 0; d < t->ndim; d++) {
		if (t->dims[d] == 0 || __builtin_mul_overflow(n, t->dims[d], &n))
			abort();
	}
	if (n != t->nbits || t->nbytes != n / 8 + (n % 8 != 0) || t->nbytes > size)
		abort();
	if (fp_mask_reader_find(r, t->name) != (long)i)
		abort();
}

static void run(const uint8_t *data, size_t size)
{
	struct fp_mask_reader *r = NULL;
	const struct fp_mask_info *t;
	uint8_t *buf;
	size_t n, max = 1;
	int e;

	if (fp_mask_reader_open_mem(data, size, "fuzz", &r) < 0)
		return;
	n = fp_mask_reader_count(r);
	if (n == 0)
		abort();
	for (size_t i = 0; i < n; i++) {
		check_info(r, i, size);
		if (fp_mask_reader_info(r, i)->nbytes > max)
			max = (size_t)fp_mask_reader_info(r, i)->nbytes;
	}
	buf = malloc(max);
	if (!buf)
		abort();
	while ((e = fp_mask_reader_next(r, &t, buf, max)) == 1) {
		if (t->nbits % 8 && buf[t->nbits / 8] >> (t->nbits % 8))
			abort();
		if (fp_mask_count(buf, (size_t)t->nbits) > t->nbits)
			abort();
	}
	if (e == 0 && fp_mask_reader_next(r, &t, buf, max) != 0)
		abort();
	free(buf);
	fp_mask_reader_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *copy;

	if (size < 1)
		return 0;
	if (!(data[0] & 1)) {
		run(data + 1, size - 1);
		return 0;
	}
	copy = malloc(size);
	if (!copy)
		abort();
	memcpy(copy, data + 1, size - 1);
	fix_digests(copy, size - 1);
	run(copy, size - 1);
	free(copy);
	return 0;
}
