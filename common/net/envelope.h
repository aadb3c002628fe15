/*
 * Envelopes of the wire protocol (proto/fedprune.proto): decoding with a bounded allocator,
 * validation of every field that comes from a peer, message names and which side may send
 * which message. No I/O and no logging.
 */
#ifndef FP_ENVELOPE_H
#define FP_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fedprune.pb-c.h"

#define FP_PROTO_VERSION  1u	 /* Envelope.version and Hello/Welcome.protocol_version */
#define FP_DIGEST_BYTES	  32u	 /* BLAKE2b-256 */
#define FP_ID_MAX	  64u	 /* longest client identity (an X.509 CN is at most 64) */
#define FP_NAME_MAX	  256u	 /* longest tensor name */
#define FP_TEXT_MAX	  1024u	 /* longest human-readable text (Error.message, reasons) */
#define FP_LIST_MAX	  65536u /* most entries of a repeated string or status field */
#define FP_CAPS_MAX	  64u	 /* most capabilities in Hello/Welcome */
#define FP_SHAPE_MAX_DIMS 8u
/* Decoding an n-byte payload may allocate at most this much (allocator overhead included). */
#define FP_ENV_BUDGET(n) (4 * (size_t)(n) + (64u << 10))

typedef Fedprune__Envelope__MsgCase fp_msg_t;

/* Who may send a message (bit mask). */
enum fp_sender {
	FP_FROM_CLIENT = 1,
	FP_FROM_SERVER = 2,
};

/* Short lower-case name of a message type ("hello", "chunk", ...), "unknown" otherwise. */
const char *fp_msg_name(fp_msg_t type);

/* Bit mask of enum fp_sender allowed to send type; 0 for an unknown type. */
unsigned fp_msg_senders(fp_msg_t type);

/* Name of an ErrorCode ("BAD_VERSION", ...), "UNKNOWN" for a value outside the enum. */
const char *fp_error_code_name(int code);

/*
 * Decode an n-byte payload into a new Envelope. The allocations of the decoder are capped at
 * FP_ENV_BUDGET(n) bytes so a small frame cannot expand into a large allocation. Returns 0
 * and *ret (free with fp_env_free), or -EBADMSG with a detail ("malformed envelope", "envelope
 * too complex").
 */
int fp_env_unpack(const uint8_t *p, size_t n, Fedprune__Envelope **ret);

/* Free an Envelope returned by fp_env_unpack (NULL is fine). */
void fp_env_free(Fedprune__Envelope *e);

/*
 * As fp_env_unpack, but the data of a chunk (TensorChunk.data) is not copied: it points into
 * p[0..n), which must stay unchanged until the envelope is freed with fp_env_free_inplace(e,
 * p, n). Everything else, including the errors and the allocation budget, is as fp_env_unpack.
 * (A chunk encoded unusually, e.g. with its data field twice, is decoded by copying.)
 */
int fp_env_unpack_inplace(const uint8_t *p, size_t n, Fedprune__Envelope **ret);

/* Free an envelope from fp_env_unpack_inplace of p[0..n) (NULL is fine). */
void fp_env_free_inplace(Fedprune__Envelope *e, const uint8_t *p, size_t n);

/*
 * Validate a decoded envelope: the protocol version, a known message type, and the bounds of
 * every field (names, lengths, digests, offsets, finite numbers). Returns 0, or -EPROTO with
 * *ret_code set to the ErrorCode to answer with and a detail naming the field.
 */
int fp_env_check(const Fedprune__Envelope *e, Fedprune__ErrorCode *ret_code);

/*
 * Serialise e with its length prefix into a new buffer (*ret, caller frees; *ret_len bytes).
 * Returns 0, -EMSGSIZE if the payload would exceed max bytes, or -ENOMEM.
 */
int fp_env_pack_frame(const Fedprune__Envelope *e, size_t max, uint8_t **ret, size_t *ret_len);

/* An identity: 1..FP_ID_MAX bytes of [A-Za-z0-9._@-], not starting with '.' or '-'. */
bool fp_identity_valid(const char *s);

/* A tensor name: 1..FP_NAME_MAX printable ASCII bytes without spaces. */
bool fp_tensor_name_valid(const char *s);

#endif
