/*
 * Fuzz the LDP memo reader (fp_ldp_memo_parse, ldp.h).
 *
 * Byte 0 picks the mode, the rest is the file. Mode bit 0 set: the trailing digest is
 * recomputed first, so mutations reach the field checks instead of dying at the digest.
 *
 * Whatever the reader accepts must satisfy the format's invariants: at least one tensor, names
 * non-empty without NUL, padding bits clear, thresholds consistent with the mechanism, and it
 * must serialize back to exactly the input bytes (the format is canonical). A violation aborts
 * so libFuzzer reports it.
 */
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ldp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void run(const uint8_t *data, size_t size)
{
	struct fp_ldp_memo *m = NULL;
	struct fp_ldp_rr chk;
	uint8_t *out = NULL;
	size_t len = 0;

	if (fp_ldp_memo_parse(data, size, "fuzz", &m) < 0)
		return;
	if (m->count < 1)
		abort();
	if (fp_ldp_rr_from_thresholds(&chk, m->rr.mech, m->rr.eps, m->rr.thr1, m->rr.thr0) < 0)
		abort();
	if (!(m->rr.p > m->rr.q && m->rr.eps_bit > 0 && m->rr.eps_bit <= FP_LDP_EPS_MAX))
		abort();
	for (size_t i = 0; i < m->count; i++) {
		const struct fp_ldp_memo_tensor *t = &m->t[i];

		if (!t->name[0] || t->nbits < 1 || t->nbits / 8 > size)
			abort();
		if (t->nbits % 8 && t->bits[t->nbits / 8] >> (t->nbits % 8))
			abort();
	}
	if (fp_ldp_memo_serialize(m, &out, &len) < 0)
		abort();
	if (len != size || memcmp(out, data, size) != 0)
		abort();
	free(out);
	fp_ldp_memo_free(m);
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
	if (size - 1 >= 32 && sodium_init() >= 0)
		crypto_generichash(copy + size - 1 - 32, 32, copy, size - 1 - 32, NULL, 0);
	run(copy, size - 1);
	free(copy);
	return 0;
}
