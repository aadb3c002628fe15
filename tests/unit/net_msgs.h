/*
 * Sample envelopes for the transport tests: one of every message type of the protocol, with
 * every field set to a non-default value, so a round trip proves each field survives.
 */
#ifndef FP_TEST_NET_MSGS_H
#define FP_TEST_NET_MSGS_H

#include <stddef.h>
#include <stdint.h>

#include "envelope.h"

/* Every message type of the protocol, and how many there are. */
extern const fp_msg_t fp_test_msg_types[];
extern const size_t fp_test_n_msg_types;

/* Build the sample of type and call fn with it (valid during the call only). */
void fp_test_with_sample(fp_msg_t type, void (*fn)(const Fedprune__Envelope *e, void *ud),
			 void *ud);

/* The sample of type serialised (payload only, no length prefix); caller frees. */
uint8_t *fp_test_sample(fp_msg_t type, size_t *len);

/* Serialise any envelope (payload only); caller frees. */
uint8_t *fp_test_pack(const Fedprune__Envelope *e, size_t *len);

#endif
