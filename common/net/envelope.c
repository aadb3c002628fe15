/*
 * Envelope decoding and validation (see envelope.h).
 */
#include "envelope.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "frame.h"

struct msg_info {
	fp_msg_t type;
	const char *name;
	unsigned senders;
};

static const struct msg_info msgs[] = {
	{ FEDPRUNE__ENVELOPE__MSG_HELLO, "hello", FP_FROM_CLIENT },
	{ FEDPRUNE__ENVELOPE__MSG_WELCOME, "welcome", FP_FROM_SERVER },
	{ FEDPRUNE__ENVELOPE__MSG_ROUND_SPEC, "round_spec", FP_FROM_SERVER },
	{ FEDPRUNE__ENVELOPE__MSG_CHUNK, "chunk", FP_FROM_CLIENT | FP_FROM_SERVER },
	{ FEDPRUNE__ENVELOPE__MSG_COMMIT, "commit", FP_FROM_CLIENT },
	{ FEDPRUNE__ENVELOPE__MSG_RECEIPT, "receipt", FP_FROM_SERVER },
	{ FEDPRUNE__ENVELOPE__MSG_RESULT_OFFER, "result_offer", FP_FROM_SERVER },
	{ FEDPRUNE__ENVELOPE__MSG_RESULT_REQUEST, "result_request", FP_FROM_CLIENT },
	{ FEDPRUNE__ENVELOPE__MSG_EVAL_REPORT, "eval_report", FP_FROM_CLIENT },
	{ FEDPRUNE__ENVELOPE__MSG_HEARTBEAT, "heartbeat", FP_FROM_CLIENT | FP_FROM_SERVER },
	{ FEDPRUNE__ENVELOPE__MSG_ERROR, "error", FP_FROM_CLIENT | FP_FROM_SERVER },
	{ FEDPRUNE__ENVELOPE__MSG_UPLOAD_QUERY, "upload_query", FP_FROM_CLIENT },
	{ FEDPRUNE__ENVELOPE__MSG_UPLOAD_STATUS, "upload_status", FP_FROM_SERVER },
	{ FEDPRUNE__ENVELOPE__MSG_SECAGG_KEYS, "secagg_keys", FP_FROM_CLIENT | FP_FROM_SERVER },
};

static const struct msg_info *find_msg(fp_msg_t type)
{
	for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++)
		if (msgs[i].type == type)
			return &msgs[i];
	return NULL;
}

const char *fp_msg_name(fp_msg_t type)
{
	const struct msg_info *m = find_msg(type);

	return m ? m->name : "unknown";
}

unsigned fp_msg_senders(fp_msg_t type)
{
	const struct msg_info *m = find_msg(type);

	return m ? m->senders : 0;
}

const char *fp_error_code_name(int code)
{
	const ProtobufCEnumValue *v =
		protobuf_c_enum_descriptor_get_value(&fedprune__error_code__descriptor, code);

	/* The generated names are "ERROR_BAD_VERSION"; drop the common prefix. */
	if (!v)
		return "UNKNOWN";
	return strncmp(v->name, "ERROR_", 6) == 0 ? v->name + 6 : v->name;
}

/* --- decoding with a bounded allocator --- */

struct budget {
	size_t left;
	bool over;
};

#define ALLOC_OVERHEAD 32 /* what malloc spends beyond the bytes asked for, roughly */

static void *budget_alloc(void *data, size_t size)
{
	struct budget *b = data;
	size_t cost;

	if (!fp_add_ok(size, ALLOC_OVERHEAD, &cost) || cost > b->left) {
		b->over = true;
		return NULL;
	}
	b->left -= cost;
	return malloc(size ? size : 1);
}

static void plain_free(void *data, void *p)
{
	(void)data;
	free(p);
}

static ProtobufCAllocator free_allocator = { .free = plain_free };

/* Decode p[0..len) with an allocation budget of left bytes; errors name n, the size of the
 * frame payload (len is smaller when the data of a chunk was cut out). */
static int unpack_budget(const uint8_t *p, size_t len, size_t n, size_t left,
			 Fedprune__Envelope **ret)
{
	struct budget b = { .left = left };
	ProtobufCAllocator a = { .alloc = budget_alloc, .free = plain_free, .allocator_data = &b };
	Fedprune__Envelope *e;

	*ret = NULL;
	e = fedprune__envelope__unpack(&a, len, p);
	if (!e) {
		if (b.over)
			return fp_err_detail(-EBADMSG,
					     "envelope too complex: decoding %zu bytes needs more "
					     "than %zu bytes of memory",
					     n, FP_ENV_BUDGET(n));
		return fp_err_detail(-EBADMSG, "malformed envelope (%zu bytes)", n);
	}
	*ret = e;
	return 0;
}

int fp_env_unpack(const uint8_t *p, size_t n, Fedprune__Envelope **ret)
{
	return unpack_budget(p, n, n, FP_ENV_BUDGET(n), ret);
}

void fp_env_free(Fedprune__Envelope *e)
{
	if (e)
		fedprune__envelope__free_unpacked(e, &free_allocator);
}

/* --- in-place decoding of chunk data --- */

/*
 * The protobuf wire format is a sequence of (tag, value) fields, and decoding a message without
 * one of its fields gives the message minus that field. So a chunk envelope is decoded from a
 * copy of its few bytes of header with the data field cut out, and data is then pointed at
 * the bytes in the frame. Only the canonical shape is handled here: the chunk field once in the
 * envelope, the data field once in the chunk, every field well formed. Anything else is
 * decoded by protobuf-c as a whole (fp_env_unpack), which is always correct; this is only
 * faster. fuzz_unpack checks that both decodings agree on every input.
 */

#define ENV_FIELD_CHUNK	 13	     /* Envelope.chunk */
#define CHUNK_FIELD_DATA 6	     /* TensorChunk.data */
#define LIFT_HEADER_MAX	 (64u << 10) /* larger remainders are decoded as a whole */

/* A varint of at most max bytes at *p (< end); advances *p. false: malformed or too long. */
static bool wire_varint(const uint8_t **p, const uint8_t *end, unsigned max, uint64_t *ret)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < max && *p < end; i++) {
		uint8_t b = *(*p)++;

		v |= (uint64_t)(b & 0x7f) << (7 * i);
		if (!(b & 0x80)) {
			*ret = v;
			return true;
		}
	}
	return false;
}

struct wire_field {
	const uint8_t *tag;  /* first byte of the field */
	const uint8_t *lenp; /* its length prefix */
	const uint8_t *val;  /* (len) value of a length-delimited field */
	size_t len;
	const uint8_t *end; /* one past the field */
};

/*
 * Find field num, length-delimited, in the message p[0..end). Returns 1 and *f when it occurs
 * exactly once with that wire type, 0 when it does not occur, -1 when the message is not
 * walked easily (a malformed or group field, num twice or with another wire type).
 */
static int wire_find(const uint8_t *p, const uint8_t *end, uint32_t num, struct wire_field *f)
{
	int found = 0;

	while (p < end) {
		const uint8_t *at = p, *lenp;
		uint64_t tag, v;
		unsigned wt;

		if (!wire_varint(&p, end, 5, &tag) || tag >> 3 == 0 || tag > UINT32_MAX)
			return -1;
		wt = (unsigned)(tag & 7);
		switch (wt) {
		case 0: /* varint */
			if (!wire_varint(&p, end, 10, &v))
				return -1;
			break;
		case 1: /* 64-bit */
		case 5: /* 32-bit */
			if (end - p < (wt == 1 ? 8 : 4))
				return -1;
			p += wt == 1 ? 8 : 4;
			break;
		case 2: /* length-delimited */
			lenp = p;
			if (!wire_varint(&p, end, 5, &v) || v > (uint64_t)(end - p))
				return -1;
			if (tag >> 3 == num) {
				if (found)
					return -1;
				found = 1;
				f->tag = at;
				f->lenp = lenp;
				f->val = p;
				f->len = (size_t)v;
				f->end = p + v;
			}
			p += v;
			break;
		default:
			return -1;
		}
		if (tag >> 3 == num && wt != 2)
			return -1;
	}
	return found;
}

static uint8_t *put_varint(uint8_t *o, uint64_t v)
{
	while (v >= 0x80) {
		*o++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*o++ = (uint8_t)v;
	return o;
}

static uint8_t *put(uint8_t *o, const uint8_t *from, const uint8_t *to)
{
	memcpy(o, from, (size_t)(to - from));
	return o + (to - from);
}

int fp_env_unpack_inplace(const uint8_t *p, size_t n, Fedprune__Envelope **ret)
{
	const uint8_t *end = p + n;
	struct wire_field ch, d;
	uint8_t stack[512], *hdr = stack, *o;
	size_t hdr_len, left = FP_ENV_BUDGET(n);
	Fedprune__Envelope *e;
	int r;

	*ret = NULL;
	if (wire_find(p, end, ENV_FIELD_CHUNK, &ch) != 1 ||
	    wire_find(ch.val, ch.val + ch.len, CHUNK_FIELD_DATA, &d) != 1 || d.len == 0)
		return fp_env_unpack(p, n, ret);
	hdr_len = n - (size_t)(d.end - d.tag); /* an upper bound: the chunk length may shrink */
	if (hdr_len > LIFT_HEADER_MAX)
		return fp_env_unpack(p, n, ret);
	/* Charge the data as fp_env_unpack allocates it, so both accept the same frames (it fits:
	 * d.len < n and the budget is over 4 n). */
	left -= d.len + ALLOC_OVERHEAD;
	if (hdr_len > sizeof(stack) && !(hdr = malloc(hdr_len)))
		return -ENOMEM;
	/* The envelope up to the chunk's length, the new length, the chunk without its data
	 * field, the rest of the envelope. */
	o = put(hdr, p, ch.lenp);
	o = put_varint(o, ch.len - (size_t)(d.end - d.tag));
	o = put(o, ch.val, d.tag);
	o = put(o, d.end, ch.end);
	o = put(o, ch.end, end);
	r = unpack_budget(hdr, (size_t)(o - hdr), n, left, &e);
	if (hdr != stack)
		free(hdr);
	if (r < 0)
		return r;
	if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_CHUNK) {
		e->chunk->data.data = (uint8_t *)d.val;
		e->chunk->data.len = d.len;
	}
	*ret = e;
	return 0;
}

void fp_env_free_inplace(Fedprune__Envelope *e, const uint8_t *p, size_t n)
{
	if (!e)
		return;
	if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_CHUNK &&
	    (uintptr_t)e->chunk->data.data - (uintptr_t)p < n)
		e->chunk->data = (ProtobufCBinaryData){ 0 };
	fp_env_free(e);
}

int fp_env_pack_frame(const Fedprune__Envelope *e, size_t max, uint8_t **ret, size_t *ret_len)
{
	size_t len = fedprune__envelope__get_packed_size(e);
	uint8_t *buf;

	*ret = NULL;
	if (len > max || len > UINT32_MAX)
		return fp_err_detail(-EMSGSIZE, "%s message of %zu bytes exceeds the limit of %zu",
				     fp_msg_name(e->msg_case), len, max);
	buf = malloc(len + FP_FRAME_HDR);
	if (!buf)
		return -ENOMEM;
	buf[0] = (uint8_t)(len >> 24);
	buf[1] = (uint8_t)(len >> 16);
	buf[2] = (uint8_t)(len >> 8);
	buf[3] = (uint8_t)len;
	fedprune__envelope__pack(e, buf + FP_FRAME_HDR);
	*ret = buf;
	*ret_len = len + FP_FRAME_HDR;
	return 0;
}

/* --- validation --- */

bool fp_identity_valid(const char *s)
{
	size_t n = 0;

	if (!s || !*s || *s == '.' || *s == '-')
		return false;
	for (; s[n]; n++) {
		unsigned char c = (unsigned char)s[n];

		if (n >= FP_ID_MAX)
			return false;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '@' || c == '-'))
			return false;
	}
	return true;
}

static bool printable(const char *s, size_t max, bool spaces)
{
	size_t n = 0;

	for (; s[n]; n++) {
		unsigned char c = (unsigned char)s[n];

		if (n >= max || c > 0x7e || c < (spaces ? 0x20 : 0x21))
			return false;
	}
	return true;
}

bool fp_tensor_name_valid(const char *s)
{
	return s && *s && printable(s, FP_NAME_MAX, false);
}

static bool text_ok(const char *s)
{
	/* Human text may be any UTF-8; only its length is bounded (logs escape it). */
	return !s || strnlen(s, FP_TEXT_MAX + 1) <= FP_TEXT_MAX;
}

static bool digest_ok(const ProtobufCBinaryData *d, bool required)
{
	return d->len == FP_DIGEST_BYTES || (!required && d->len == 0);
}

static bool fin(double v, double lo, double hi)
{
	return isfinite(v) && v >= lo && v <= hi;
}

#define BAD(code, ...) (*ret_code = (code), fp_err_detail(-EPROTO, __VA_ARGS__))
#define C(x)	       FEDPRUNE__ERROR_CODE__ERROR_##x

static int check_names(char **v, size_t n, size_t max, const char *what,
		       Fedprune__ErrorCode *ret_code)
{
	if (n > max)
		return BAD(C(BAD_MESSAGE), "%s: %zu entries (at most %zu)", what, n, max);
	for (size_t i = 0; i < n; i++)
		if (!fp_tensor_name_valid(v[i]))
			return BAD(C(BAD_MESSAGE), "%s[%zu]: not a valid name", what, i);
	return 0;
}

static int check_caps(char **v, size_t n, const char *what, Fedprune__ErrorCode *ret_code)
{
	if (n > FP_CAPS_MAX)
		return BAD(C(BAD_MESSAGE), "%s: %zu capabilities (at most %u)", what, n,
			   FP_CAPS_MAX);
	for (size_t i = 0; i < n; i++)
		if (!v[i][0] || !printable(v[i], FP_ID_MAX, false))
			return BAD(C(BAD_MESSAGE), "%s[%zu]: not a valid capability", what, i);
	return 0;
}

static bool payload_kind_ok(int k)
{
	return k >= FEDPRUNE__PAYLOAD_KIND__PAYLOAD_UNSPECIFIED &&
	       k <= FEDPRUNE__PAYLOAD_KIND__PAYLOAD_DENSE_F32;
}

static int check_upload_status(const Fedprune__UploadStatus *u, Fedprune__ErrorCode *ret_code)
{
	if (u->n_tensors > FP_LIST_MAX)
		return BAD(C(BAD_MESSAGE), "upload_status: %zu tensors (at most %u)", u->n_tensors,
			   FP_LIST_MAX);
	for (size_t i = 0; i < u->n_tensors; i++) {
		const Fedprune__TensorStatus *t = u->tensors[i];

		if (!fp_tensor_name_valid(t->tensor))
			return BAD(C(BAD_MESSAGE), "upload_status.tensors[%zu]: not a valid name",
				   i);
		if (t->received_bytes > t->total_bytes)
			return BAD(C(BAD_MESSAGE),
				   "upload_status: tensor '%s': received %llu of %llu bytes",
				   t->tensor, (unsigned long long)t->received_bytes,
				   (unsigned long long)t->total_bytes);
	}
	return 0;
}

static int check_hello(const Fedprune__Hello *h, Fedprune__ErrorCode *ret_code)
{
	if (h->client_id[0] && !fp_identity_valid(h->client_id))
		return BAD(C(BAD_MESSAGE), "hello: client_id is not a valid identity");
	if (!fin(h->capacity, 0, 1))
		return BAD(C(BAD_MESSAGE), "hello: capacity %g is not in [0, 1]", h->capacity);
	if (!digest_ok(&h->model_digest, false))
		return BAD(C(BAD_MESSAGE), "hello: model_digest of %zu bytes (want %u)",
			   h->model_digest.len, FP_DIGEST_BYTES);
	if (!printable(h->software, 128, true))
		return BAD(C(BAD_MESSAGE), "hello: software is not printable text of <= 128 bytes");
	return check_caps(h->capabilities, h->n_capabilities, "hello.capabilities", ret_code);
}

static int check_welcome(const Fedprune__Welcome *w, Fedprune__ErrorCode *ret_code)
{
	int r;

	if (!fp_identity_valid(w->identity))
		return BAD(C(BAD_MESSAGE), "welcome: identity is not a valid identity");
	if (w->max_frame_bytes && w->max_frame_bytes < FP_FRAME_MAX_MIN)
		return BAD(C(BAD_MESSAGE), "welcome: max_frame_bytes %u below %u",
			   w->max_frame_bytes, FP_FRAME_MAX_MIN);
	if (w->heartbeat_ms > 24u * 3600 * 1000)
		return BAD(C(BAD_MESSAGE), "welcome: heartbeat_ms %u over a day", w->heartbeat_ms);
	r = check_caps(w->capabilities, w->n_capabilities, "welcome.capabilities", ret_code);
	if (r == 0 && w->upload)
		r = check_upload_status(w->upload, ret_code);
	return r;
}

static int check_round_spec(const Fedprune__RoundSpec *s, Fedprune__ErrorCode *ret_code)
{
	if (!fin(s->sparsity, 0, 1))
		return BAD(C(BAD_MESSAGE), "round_spec: sparsity %g is not in [0, 1]", s->sparsity);
	if ((s->nm_n || s->nm_m) && !(s->nm_n < s->nm_m && s->nm_m <= 64))
		return BAD(C(BAD_MESSAGE), "round_spec: N:M %u:%u is not 0 < N < M <= 64", s->nm_n,
			   s->nm_m);
	if (!digest_ok(&s->model_digest, false))
		return BAD(C(BAD_MESSAGE), "round_spec: model_digest of %zu bytes",
			   s->model_digest.len);
	if (!payload_kind_ok(s->payload))
		return BAD(C(BAD_MESSAGE), "round_spec: unknown payload kind %d", s->payload);
	if (!fin(s->capacity, 0, 1))
		return BAD(C(BAD_MESSAGE), "round_spec: capacity %g is not in [0, 1]", s->capacity);
	if (s->privacy) {
		const Fedprune__PrivacySpec *p = s->privacy;

		if (!fin(p->max_epsilon, 0, HUGE_VAL) || !fin(p->delta, 0, 1) ||
		    !fin(p->clip_low, -HUGE_VAL, HUGE_VAL) ||
		    !fin(p->clip_high, p->clip_low, HUGE_VAL))
			return BAD(C(BAD_MESSAGE), "round_spec: privacy settings out of range");
	}
	return check_names(s->tensors, s->n_tensors, FP_LIST_MAX, "round_spec.tensors", ret_code);
}

static int check_chunk(const Fedprune__TensorChunk *c, Fedprune__ErrorCode *ret_code)
{
	if (!fp_tensor_name_valid(c->tensor))
		return BAD(C(BAD_MESSAGE), "chunk: tensor name is not valid");
	if (!payload_kind_ok(c->kind))
		return BAD(C(BAD_MESSAGE), "chunk: tensor '%s': unknown payload kind %d", c->tensor,
			   c->kind);
	if (c->n_shape > FP_SHAPE_MAX_DIMS)
		return BAD(C(BAD_MESSAGE), "chunk: tensor '%s': %zu dimensions (at most %u)",
			   c->tensor, c->n_shape, FP_SHAPE_MAX_DIMS);
	if (c->offset > c->total_bytes || c->data.len > c->total_bytes - c->offset)
		return BAD(C(BAD_MESSAGE),
			   "chunk: tensor '%s': %zu bytes at offset %llu exceed its %llu bytes",
			   c->tensor, c->data.len, (unsigned long long)c->offset,
			   (unsigned long long)c->total_bytes);
	if (!digest_ok(&c->tensor_digest, false))
		return BAD(C(BAD_MESSAGE), "chunk: tensor '%s': digest of %zu bytes", c->tensor,
			   c->tensor_digest.len);
	if (!isfinite(c->scale) || !isfinite(c->offset_value))
		return BAD(C(BAD_MESSAGE), "chunk: tensor '%s': scale or offset not finite",
			   c->tensor);
	return 0;
}

static int check_ldp(const Fedprune__LdpReport *p, Fedprune__ErrorCode *ret_code)
{
	if (p && (!fin(p->epsilon, 0, HUGE_VAL) || !fin(p->delta, 0, 1) ||
		  !fin(p->total_epsilon, 0, HUGE_VAL) || !fin(p->total_delta, 0, 1)))
		return BAD(C(BAD_MESSAGE), "commit: privacy report out of range");
	return 0;
}

int fp_env_check(const Fedprune__Envelope *e, Fedprune__ErrorCode *ret_code)
{
	*ret_code = C(UNSPECIFIED);
	if (e->version != FP_PROTO_VERSION)
		return BAD(C(BAD_VERSION), "protocol version %u (this peer speaks %u)", e->version,
			   FP_PROTO_VERSION);
	switch (e->msg_case) {
	case FEDPRUNE__ENVELOPE__MSG_HELLO:
		return check_hello(e->hello, ret_code);
	case FEDPRUNE__ENVELOPE__MSG_WELCOME:
		return check_welcome(e->welcome, ret_code);
	case FEDPRUNE__ENVELOPE__MSG_ROUND_SPEC:
		return check_round_spec(e->round_spec, ret_code);
	case FEDPRUNE__ENVELOPE__MSG_CHUNK:
		return check_chunk(e->chunk, ret_code);
	case FEDPRUNE__ENVELOPE__MSG_COMMIT:
		if (!digest_ok(&e->commit->submission_digest, true))
			return BAD(C(BAD_MESSAGE), "commit: submission_digest of %zu bytes",
				   e->commit->submission_digest.len);
		if (!fin(e->commit->seconds, 0, HUGE_VAL))
			return BAD(C(BAD_MESSAGE), "commit: seconds out of range");
		return check_ldp(e->commit->privacy, ret_code);
	case FEDPRUNE__ENVELOPE__MSG_RECEIPT:
		if (!digest_ok(&e->receipt->submission_digest, false))
			return BAD(C(BAD_MESSAGE), "receipt: submission_digest of %zu bytes",
				   e->receipt->submission_digest.len);
		if (!text_ok(e->receipt->reason))
			return BAD(C(BAD_MESSAGE), "receipt: reason longer than %u bytes",
				   FP_TEXT_MAX);
		return check_names(e->receipt->have_tensors, e->receipt->n_have_tensors,
				   FP_LIST_MAX, "receipt.have_tensors", ret_code);
	case FEDPRUNE__ENVELOPE__MSG_RESULT_OFFER:
		if (!digest_ok(&e->result_offer->result_digest, false))
			return BAD(C(BAD_MESSAGE), "result_offer: result_digest of %zu bytes",
				   e->result_offer->result_digest.len);
		return check_names(e->result_offer->tensors, e->result_offer->n_tensors,
				   FP_LIST_MAX, "result_offer.tensors", ret_code);
	case FEDPRUNE__ENVELOPE__MSG_RESULT_REQUEST:
		if (!fp_tensor_name_valid(e->result_request->tensor))
			return BAD(C(BAD_MESSAGE), "result_request: tensor name is not valid");
		return 0;
	case FEDPRUNE__ENVELOPE__MSG_EVAL_REPORT:
		if (!fin(e->eval_report->perplexity, 0, HUGE_VAL) ||
		    !fin(e->eval_report->dense_perplexity, 0, HUGE_VAL))
			return BAD(C(BAD_MESSAGE), "eval_report: perplexity out of range");
		return 0;
	case FEDPRUNE__ENVELOPE__MSG_HEARTBEAT:
	case FEDPRUNE__ENVELOPE__MSG_UPLOAD_QUERY:
		return 0;
	case FEDPRUNE__ENVELOPE__MSG_ERROR:
		if (!text_ok(e->error->message))
			return BAD(C(BAD_MESSAGE), "error: message longer than %u bytes",
				   FP_TEXT_MAX);
		return 0;
	case FEDPRUNE__ENVELOPE__MSG_UPLOAD_STATUS:
		return check_upload_status(e->upload_status, ret_code);
	case FEDPRUNE__ENVELOPE__MSG_SECAGG_KEYS:
		if (e->secagg_keys->public_key.len > 64 || e->secagg_keys->signature.len > 128)
			return BAD(C(BAD_MESSAGE), "secagg_keys: key or signature too long");
		return 0;
	case FEDPRUNE__ENVELOPE__MSG__NOT_SET:
	default:
		break;
	}
	return BAD(C(BAD_MESSAGE), "unknown message (no known message type in the envelope)");
}
