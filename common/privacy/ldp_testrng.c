/*
 * The seeded, reproducible generator for TESTS ONLY (ldp.h). This file is deliberately not
 * part of libfp_common (common/privacy/meson.build does not list it): only test executables
 * compile it, so no release binary contains a way to make the LDP coins predictable, whatever
 * its configuration says. The prototype is visible only with FP_LDP_TEST_RNG defined.
 */
#define FP_LDP_TEST_RNG 1

#include <sodium.h>
#include <string.h>

#include "err.h"
#include "ldp.h"

int fp_ldp_rng_init_test(struct fp_ldp_rng *r, uint64_t seed)
{
	static const char tag[] = "fedprune ldp test rng";
	uint8_t msg[sizeof(tag) - 1 + 8];

	memset(r, 0, sizeof(*r));
	if (sodium_init() < 0)
		return fp_err_sodium("sodium_init");
	memcpy(msg, tag, sizeof(tag) - 1);
	for (int i = 0; i < 8; i++)
		msg[sizeof(tag) - 1 + i] = (uint8_t)(seed >> (8 * i));
	crypto_generichash(r->key, sizeof(r->key), msg, sizeof(msg), NULL, 0);
	r->pos = sizeof(r->buf);
	r->deterministic = true;
	return 0;
}
