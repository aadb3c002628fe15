/*
 * Differential fuzzing of envelope decoding: fp_env_unpack (protobuf-c decodes everything,
 * copying) and fp_env_unpack_inplace (a chunk's data is left in the input, the rest decoded
 * from a copy of the header with the data field cut out) must agree on every input: both
 * refuse it with the same error, or both decode it to envelopes that serialise to the same
 * bytes. A data pointer of the in-place result must lie inside the input. Anything else aborts.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *pack(const Fedprune__Envelope *e, size_t *len)
{
	uint8_t *p;

	*len = fedprune__envelope__get_packed_size(e);
	p = malloc(*len ? *len : 1);
	if (!p)
		abort();
	if (fedprune__envelope__pack(e, p) != *len)
		abort();
	return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Fedprune__Envelope *a = NULL, *b = NULL;
	uint8_t *in = malloc(size ? size : 1), *pa, *pb;
	size_t la, lb;
	int ra, rb;

	if (!in)
		abort();
	memcpy(in, data, size); /* an exact-size copy, so reads past the end are caught */
	ra = fp_env_unpack(in, size, &a);
	rb = fp_env_unpack_inplace(in, size, &b);
	if (ra != rb || (ra < 0) != (a == NULL) || (rb < 0) != (b == NULL))
		abort();
	if (ra == 0) {
		pa = pack(a, &la);
		pb = pack(b, &lb);
		if (la != lb || memcmp(pa, pb, la) != 0)
			abort();
		free(pa);
		free(pb);
		if (b->msg_case == FEDPRUNE__ENVELOPE__MSG_CHUNK && b->chunk->data.len &&
		    (uintptr_t)b->chunk->data.data - (uintptr_t)in < size &&
		    (uintptr_t)b->chunk->data.data - (uintptr_t)in + b->chunk->data.len > size)
			abort();
	}
	fp_env_free(a);
	fp_env_free_inplace(b, in, size);
	free(in);
	return 0;
}
