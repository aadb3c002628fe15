/*
 * Framing, envelope decoding/validation and the transport configuration helpers, without
 * any socket.
 */
#include "test.h"

#include <sys/stat.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "frame.h"
#include "net_msgs.h"
#include "netcfg.h"

/* Frame payloads p[i] (n[i] bytes) into one stream; caller frees. */
static uint8_t *stream_of(uint8_t **p, const size_t *n, size_t k, size_t *len)
{
	size_t total = 0, o = 0;
	uint8_t *s;

	for (size_t i = 0; i < k; i++)
		total += FP_FRAME_HDR + n[i];
	s = malloc(total);
	assert_non_null(s);
	for (size_t i = 0; i < k; i++) {
		fp_frame_put_len(s + o, (uint32_t)n[i]);
		memcpy(s + o + FP_FRAME_HDR, p[i], n[i]);
		o += FP_FRAME_HDR + n[i];
	}
	*len = total;
	return s;
}

/* Decode stream feeding pieces of at most step bytes (0: random sizes); check every frame. */
static void decode_in_steps(const uint8_t *s, size_t len, uint8_t **p, const size_t *n, size_t k,
			    size_t step, uint64_t *seed)
{
	struct fp_frame_dec d;
	size_t pos = 0, got = 0;

	fp_frame_dec_init(&d, 1u << 20);
	while (pos < len) {
		size_t piece = step ? step : 1 + (size_t)(fp_test_rand(seed) % 700);
		size_t off = 0;

		if (piece > len - pos)
			piece = len - pos;
		while (off < piece) {
			ssize_t used = fp_frame_dec_feed(&d, s + pos + off, piece - off);

			assert_true(used >= 0);
			off += (size_t)used;
			if (d.done) {
				assert_true(got < k);
				assert_int_equal(d.len, n[got]);
				assert_memory_equal(d.buf, p[got], n[got]);
				got++;
				fp_frame_dec_next(&d);
			}
		}
		pos += piece;
	}
	assert_int_equal(got, k);
	assert_false(fp_frame_dec_partial(&d));
	assert_int_equal(d.frames, k);
	fp_frame_dec_free(&d);
}

static void test_decoder_splits(void **state)
{
	uint8_t a[] = { 1, 2, 3 }, b[5000], c[1] = { 9 };
	uint8_t *p[] = { a, b, c };
	size_t n[] = { sizeof(a), sizeof(b), sizeof(c) }, len;
	uint64_t seed = 12345;
	uint8_t *s;

	(void)state;
	for (size_t i = 0; i < sizeof(b); i++)
		b[i] = (uint8_t)(i ^ (i >> 8));
	s = stream_of(p, n, 3, &len);
	decode_in_steps(s, len, p, n, 3, len, &seed); /* all at once */
	decode_in_steps(s, len, p, n, 3, 1, &seed);   /* one byte at a time */
	for (int i = 0; i < 50; i++)
		decode_in_steps(s, len, p, n, 3, 0, &seed); /* random splits */
	free(s);
}

static void test_decoder_limits(void **state)
{
	struct fp_frame_dec d;
	uint8_t hdr[4];

	(void)state;
	/* One byte over the limit: refused as soon as the prefix is complete, nothing allocated. */
	fp_frame_dec_init(&d, 1000);
	fp_frame_put_len(hdr, 1001);
	assert_int_equal(fp_frame_dec_feed(&d, hdr, 3), 3);
	assert_true(fp_frame_dec_partial(&d));
	assert_int_equal(fp_frame_dec_feed(&d, hdr + 3, 1), -EMSGSIZE);
	assert_null(d.buf);
	assert_non_null(strstr(fp_err_last(), "1001 bytes exceeds the limit of 1000"));
	fp_frame_dec_free(&d);
	/* 4 GiB - 1 announced. */
	fp_frame_dec_init(&d, FP_FRAME_MAX_DEFAULT);
	memset(hdr, 0xff, 4);
	assert_int_equal(fp_frame_dec_feed(&d, hdr, 4), -EMSGSIZE);
	assert_null(d.buf);
	fp_frame_dec_free(&d);
	/* Empty frames are refused. */
	fp_frame_dec_init(&d, 1000);
	memset(hdr, 0, 4);
	assert_int_equal(fp_frame_dec_feed(&d, hdr, 4), -EBADMSG);
	fp_frame_dec_free(&d);
	/* Exactly the limit is fine. */
	fp_frame_dec_init(&d, 10);
	fp_frame_put_len(hdr, 10);
	assert_int_equal(fp_frame_dec_feed(&d, hdr, 4), 4);
	assert_false(d.done);
	fp_frame_dec_free(&d);
}

static void test_decoder_direct(void **state)
{
	struct fp_frame_dec d;
	uint8_t hdr[4], *dst = NULL, big[10000];
	size_t space;

	(void)state;
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)(i * 13);
	fp_frame_dec_init(&d, 1u << 20);
	assert_int_equal(fp_frame_dec_space(&d, &dst), 0); /* prefix first */
	fp_frame_put_len(hdr, sizeof(big));
	assert_int_equal(fp_frame_dec_feed(&d, hdr, 4), 4);
	space = fp_frame_dec_space(&d, &dst);
	assert_int_equal(space, sizeof(big));
	memcpy(dst, big, 4000);
	fp_frame_dec_commit(&d, 4000);
	assert_false(d.done);
	space = fp_frame_dec_space(&d, &dst);
	assert_int_equal(space, sizeof(big) - 4000);
	memcpy(dst, big + 4000, space);
	fp_frame_dec_commit(&d, space);
	assert_true(d.done);
	assert_memory_equal(d.buf, big, sizeof(big));
	assert_int_equal(fp_frame_dec_space(&d, &dst), 0);
	/* A large payload buffer stays while frames keep coming and goes when input pauses; a
	 * small one is kept either way. */
	fp_frame_dec_next(&d);
	assert_non_null(d.buf);
	fp_frame_dec_trim(&d);
	assert_null(d.buf);
	fp_frame_put_len(hdr, 100);
	assert_int_equal(fp_frame_dec_feed(&d, hdr, 4), 4);
	assert_non_null(d.buf);
	assert_int_equal(fp_frame_dec_feed(&d, big, 100), 100);
	assert_true(d.done);
	fp_frame_dec_next(&d);
	fp_frame_dec_trim(&d);
	assert_non_null(d.buf);
	fp_frame_dec_free(&d);
}

/* Every message type survives pack -> frame -> decode -> unpack -> check -> pack unchanged. */
static void test_envelope_round_trip(void **state)
{
	(void)state;
	for (size_t i = 0; i < fp_test_n_msg_types; i++) {
		fp_msg_t type = fp_test_msg_types[i];
		size_t len, len2, flen;
		uint8_t *p = fp_test_sample(type, &len), *p2, *frame;
		Fedprune__Envelope *e = NULL;
		Fedprune__ErrorCode code;
		struct fp_frame_dec d;

		assert_int_equal(fp_env_unpack(p, len, &e), 0);
		assert_int_equal(fp_env_pack_frame(e, FP_FRAME_MAX_DEFAULT, &frame, &flen), 0);
		fp_frame_dec_init(&d, FP_FRAME_MAX_DEFAULT);
		assert_int_equal(fp_frame_dec_feed(&d, frame, flen), (ssize_t)flen);
		assert_true(d.done);
		fp_env_free(e);
		e = NULL;
		assert_int_equal(fp_env_unpack(d.buf, d.len, &e), 0);
		if (fp_env_check(e, &code) < 0)
			fail_msg("%s: %s", fp_msg_name(type), fp_err_last());
		assert_int_equal(e->msg_case, type);
		assert_true(fp_msg_senders(type) != 0);
		assert_string_not_equal(fp_msg_name(type), "unknown");
		p2 = fp_test_pack(e, &len2);
		assert_int_equal(len2, len);
		assert_memory_equal(p2, p, len);
		fp_env_free(e);
		fp_frame_dec_free(&d);
		free(p);
		free(p2);
		free(frame);
	}
	/* Too large for the limit: refused before any bytes are produced. */
	{
		size_t len, flen;
		uint8_t *p = fp_test_sample(FEDPRUNE__ENVELOPE__MSG_CHUNK, &len), *frame;
		Fedprune__Envelope *e;

		assert_int_equal(fp_env_unpack(p, len, &e), 0);
		assert_int_equal(fp_env_pack_frame(e, 100, &frame, &flen), -EMSGSIZE);
		assert_null(frame);
		fp_env_free(e);
		free(p);
	}
}

/* Varint of v into p; returns bytes written. */
static size_t varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;

	do {
		p[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v);
	return n;
}

/*
 * Decode p[0..n) both ways (fp_env_unpack copies everything, fp_env_unpack_inplace leaves a
 * chunk's data in p); they must give the same result. Returns 1 when the data was left in p,
 * 0 when it was copied or there is none, -1 when both refused the payload.
 */
static int decode_both(const uint8_t *p, size_t n)
{
	Fedprune__Envelope *a = NULL, *b = NULL;
	int ra = fp_env_unpack(p, n, &a), rb = fp_env_unpack_inplace(p, n, &b), in = 0;

	assert_int_equal(ra, rb);
	if (ra < 0) {
		assert_null(a);
		assert_null(b);
		return -1;
	}
	{
		size_t la, lb;
		uint8_t *pa = fp_test_pack(a, &la), *pb = fp_test_pack(b, &lb);

		assert_int_equal(la, lb);
		assert_memory_equal(pa, pb, la);
		free(pa);
		free(pb);
	}
	if (b->msg_case == FEDPRUNE__ENVELOPE__MSG_CHUNK && b->chunk->data.len)
		in = b->chunk->data.data >= p && b->chunk->data.data < p + n;
	fp_env_free(a);
	fp_env_free_inplace(b, p, n);
	return in;
}

static size_t put_varint(uint8_t *o, uint64_t v)
{
	size_t k = 0;

	while (v >= 0x80) {
		o[k++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	o[k++] = (uint8_t)v;
	return k;
}

/* Append field num (length-delimited) holding v[0..len) at out + *at. */
static void put_field(uint8_t *out, size_t *at, unsigned num, const void *v, size_t len)
{
	*at += put_varint(out + *at, (uint64_t)num << 3 | 2);
	*at += put_varint(out + *at, len);
	memcpy(out + *at, v, len);
	*at += len;
}

/* A chunk's data is left in the frame; unusual encodings are decoded by copying, the same. */
static void test_envelope_inplace(void **state)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT, *d = NULL;
	Fedprune__TensorChunk c = FEDPRUNE__TENSOR_CHUNK__INIT;
	static uint8_t data[100000], buf[4 * sizeof(data)];
	uint64_t shape[2] = { 400, 250 };
	uint8_t *p;
	size_t len, hlen, at;

	(void)state;
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 7);
	c.tensor = "model.layers.0.mlp.up_proj.weight";
	c.kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_SCORES_Q8;
	c.shape = shape;
	c.n_shape = 2;
	c.data.data = data;
	c.data.len = sizeof(data);
	c.total_bytes = 3 * sizeof(data);
	c.offset = sizeof(data);
	c.scale = 0.5f;
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_CHUNK;
	e.chunk = &c;

	/* As protobuf-c packs it: the data stays where it is, every other field decoded. */
	p = fp_test_pack(&e, &len);
	assert_int_equal(decode_both(p, len), 1);
	assert_int_equal(fp_env_unpack_inplace(p, len, &d), 0);
	assert_string_equal(d->chunk->tensor, c.tensor);
	assert_int_equal(d->chunk->n_shape, 2);
	assert_int_equal(d->chunk->shape[1], 250);
	assert_int_equal(d->chunk->offset, sizeof(data));
	assert_int_equal(d->chunk->total_bytes, 3 * sizeof(data));
	assert_int_equal(d->chunk->data.len, sizeof(data));
	assert_memory_equal(d->chunk->data.data, data, sizeof(data));
	fp_env_free_inplace(d, p, len);
	/* Every truncation is refused the same way (or decodes the same way). */
	for (size_t cut = 0; cut < 120; cut++)
		assert_true(decode_both(p, cut) <= 0);
	assert_int_equal(decode_both(p, len - 1), -1);
	free(p);

	/* The chunk's fields without data, then data twice: the last one counts, copied. */
	c.data.len = 0;
	{
		uint8_t ch[256], inner[512];
		size_t il = 0;

		hlen = fedprune__tensor_chunk__get_packed_size(&c);
		assert_true(hlen <= sizeof(ch));
		fedprune__tensor_chunk__pack(&c, ch);
		memcpy(inner, ch, hlen);
		il = hlen;
		put_field(inner, &il, 6, "abc", 3);
		put_field(inner, &il, 6, "defg", 4);
		at = 0;
		buf[at++] = 0x08; /* version = 1 */
		buf[at++] = FP_PROTO_VERSION;
		put_field(buf, &at, 13, inner, il);
		assert_int_equal(decode_both(buf, at), 0);
		assert_int_equal(fp_env_unpack_inplace(buf, at, &d), 0);
		assert_int_equal(d->chunk->data.len, 4);
		assert_memory_equal(d->chunk->data.data, "defg", 4);
		fp_env_free_inplace(d, buf, at);

		/* The chunk field twice: protobuf merges them; decoded by copying, the same. */
		at = 2;
		put_field(buf, &at, 13, ch, hlen);
		il = 0;
		put_field(inner, &il, 6, data, 300);
		put_field(buf, &at, 13, inner, il);
		assert_int_equal(decode_both(buf, at), 0);

		/* A chunk, then a heartbeat: the later member of the oneof wins. */
		at = 2;
		memcpy(inner, ch, hlen);
		il = hlen;
		put_field(inner, &il, 6, data, 300);
		put_field(buf, &at, 13, inner, il);
		put_field(buf, &at, 19, "", 0);
		assert_int_equal(decode_both(buf, at), 0);
		assert_int_equal(fp_env_unpack_inplace(buf, at, &d), 0);
		assert_int_equal(d->msg_case, FEDPRUNE__ENVELOPE__MSG_HEARTBEAT);
		fp_env_free_inplace(d, buf, at);

		/* Data with the wrong wire type (a varint): refused by both. */
		at = 2;
		il = hlen;
		inner[il++] = 6 << 3;
		inner[il++] = 5;
		put_field(buf, &at, 13, inner, il);
		assert_int_equal(decode_both(buf, at), -1);
	}
	/* Random payloads around a valid chunk: every byte flipped in turn. */
	c.data.len = 200;
	e.version = FP_PROTO_VERSION;
	p = fp_test_pack(&e, &len);
	for (size_t i = 0; i < len; i++) {
		for (unsigned bit = 0; bit < 8; bit++) {
			p[i] ^= (uint8_t)(1u << bit);
			decode_both(p, len);
			p[i] ^= (uint8_t)(1u << bit);
		}
	}
	free(p);
}

static void test_envelope_bounded_alloc(void **state)
{
	/* Hello with 30000 empty capabilities: 2 bytes each on the wire, ~40 in memory. */
	size_t n = 30000, body = 2 * n, len = 0;
	uint8_t *p = malloc(body + 32);
	Fedprune__Envelope *e = (Fedprune__Envelope *)1;

	(void)state;
	assert_non_null(p);
	p[len++] = 0x08; /* version = 1 */
	p[len++] = 0x01;
	p[len++] = (10 << 3) | 2; /* hello */
	len += varint(p + len, body);
	for (size_t i = 0; i < n; i++) {
		p[len++] = (3 << 3) | 2;
		p[len++] = 0;
	}
	assert_int_equal(fp_env_unpack(p, len, &e), -EBADMSG);
	assert_null(e);
	assert_non_null(strstr(fp_err_last(), "too complex"));
	free(p);

	/* A chunk whose shape holds 1,000,000 one-byte varints: 8 MB in memory for 1 MB. */
	n = 1000000;
	p = malloc(n + 64);
	assert_non_null(p);
	len = 0;
	p[len++] = 0x08;
	p[len++] = 0x01;
	p[len++] = (13 << 3) | 2;
	len += varint(p + len, 1 + 3 + n); /* tag, varint(n) (3 bytes), n bytes */
	p[len++] = (4 << 3) | 2;	   /* packed shape */
	assert_int_equal(varint(p + len, n), 3);
	len += 3;
	memset(p + len, 1, n);
	len += n;
	assert_int_equal(fp_env_unpack(p, len, &e), -EBADMSG);
	assert_non_null(strstr(fp_err_last(), "too complex"));
	free(p);
}

static void want_check(const uint8_t *p, size_t len, Fedprune__ErrorCode want, const char *text)
{
	Fedprune__Envelope *e = NULL;
	Fedprune__ErrorCode code;

	assert_int_equal(fp_env_unpack(p, len, &e), 0);
	assert_int_equal(fp_env_check(e, &code), -EPROTO);
	assert_int_equal(code, want);
	if (!strstr(fp_err_last(), text))
		fail_msg("'%s' lacks '%s'", fp_err_last(), text);
	fp_env_free(e);
}

static void mutate_check(fp_msg_t type, void (*mut)(Fedprune__Envelope *e),
			 Fedprune__ErrorCode want, const char *text)
{
	size_t len;
	uint8_t *p = fp_test_sample(type, &len), *q;
	Fedprune__Envelope *e = NULL;

	assert_int_equal(fp_env_unpack(p, len, &e), 0);
	mut(e);
	q = fp_test_pack(e, &len);
	want_check(q, len, want, text);
	fp_env_free(e);
	free(p);
	free(q);
}

static void m_version(Fedprune__Envelope *e)
{
	e->version = 2;
}

static void m_digest(Fedprune__Envelope *e)
{
	e->hello->model_digest.len = 31;
}

static void m_capacity(Fedprune__Envelope *e)
{
	e->hello->capacity = 1.5;
}

static void m_chunk_past_end(Fedprune__Envelope *e)
{
	e->chunk->offset = 1;
}

static void m_chunk_name(Fedprune__Envelope *e)
{
	e->chunk->tensor[3] = ' ';
}

static void m_chunk_dims(Fedprune__Envelope *e)
{
	uint64_t *dims = calloc(9, sizeof(*dims)); /* freed with the envelope */

	assert_non_null(dims);
	for (int i = 0; i < 9; i++)
		dims[i] = 1;
	free(e->chunk->shape);
	e->chunk->shape = dims;
	e->chunk->n_shape = 9;
}

static void m_nm(Fedprune__Envelope *e)
{
	e->round_spec->nm_n = 4;
	e->round_spec->nm_m = 4;
}

static void m_commit_digest(Fedprune__Envelope *e)
{
	e->commit->submission_digest.len = 0;
}

static void m_status(Fedprune__Envelope *e)
{
	e->upload_status->tensors[0]->received_bytes = 5000;
}

static void m_kind(Fedprune__Envelope *e)
{
	e->chunk->kind = 77;
}

static void test_envelope_checks(void **state)
{
	static const uint8_t unknown[] = { 0x08, 0x01, 0xca, 0x01, 0x00 }; /* field 25 */
	static const uint8_t empty_version[] = { 0x08, 0x01 };
	static const uint8_t garbage[] = { 0xff, 0xff, 0xff, 0xff, 0xff };
	Fedprune__Envelope *e = NULL;

	(void)state;
	want_check(unknown, sizeof(unknown), FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE,
		   "unknown message");
	want_check(empty_version, sizeof(empty_version), FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE,
		   "unknown message");
	assert_int_equal(fp_env_unpack(garbage, sizeof(garbage), &e), -EBADMSG);
	assert_non_null(strstr(fp_err_last(), "malformed envelope"));
	mutate_check(FEDPRUNE__ENVELOPE__MSG_HEARTBEAT, m_version,
		     FEDPRUNE__ERROR_CODE__ERROR_BAD_VERSION, "protocol version 2");
	mutate_check(FEDPRUNE__ENVELOPE__MSG_HELLO, m_digest,
		     FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, "model_digest of 31 bytes");
	mutate_check(FEDPRUNE__ENVELOPE__MSG_HELLO, m_capacity,
		     FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, "capacity 1.5");
	mutate_check(FEDPRUNE__ENVELOPE__MSG_CHUNK, m_chunk_past_end,
		     FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, "exceed its 1024 bytes");
	mutate_check(FEDPRUNE__ENVELOPE__MSG_CHUNK, m_chunk_name,
		     FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, "tensor name is not valid");
	mutate_check(FEDPRUNE__ENVELOPE__MSG_CHUNK, m_chunk_dims,
		     FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, "9 dimensions");
	mutate_check(FEDPRUNE__ENVELOPE__MSG_CHUNK, m_kind, FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE,
		     "unknown payload kind 77");
	mutate_check(FEDPRUNE__ENVELOPE__MSG_ROUND_SPEC, m_nm,
		     FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, "N:M 4:4");
	mutate_check(FEDPRUNE__ENVELOPE__MSG_COMMIT, m_commit_digest,
		     FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, "submission_digest of 0 bytes");
	mutate_check(FEDPRUNE__ENVELOPE__MSG_UPLOAD_STATUS, m_status,
		     FEDPRUNE__ERROR_CODE__ERROR_BAD_MESSAGE, "received 5000 of 1024");
	assert_string_equal(fp_error_code_name(FEDPRUNE__ERROR_CODE__ERROR_BAD_VERSION),
			    "BAD_VERSION");
	assert_string_equal(fp_error_code_name(9999), "UNKNOWN");
	assert_string_equal(fp_msg_name((fp_msg_t)25), "unknown");
	assert_int_equal(fp_msg_senders(FEDPRUNE__ENVELOPE__MSG_WELCOME), FP_FROM_SERVER);
	assert_int_equal(fp_msg_senders(FEDPRUNE__ENVELOPE__MSG_HELLO), FP_FROM_CLIENT);
}

static void test_identities(void **state)
{
	(void)state;
	assert_true(fp_identity_valid("alice"));
	assert_true(fp_identity_valid("client-1.site_a@example.org"));
	assert_false(fp_identity_valid(""));
	assert_false(fp_identity_valid("-x"));
	assert_false(fp_identity_valid(".x"));
	assert_false(fp_identity_valid("a b"));
	assert_false(fp_identity_valid("a\n"));
	assert_true(fp_identity_valid(
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
	assert_false(fp_identity_valid(
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
	assert_true(fp_tensor_name_valid("model.layers.0.mlp.up_proj.weight"));
	assert_false(fp_tensor_name_valid("a b"));
	assert_false(fp_tensor_name_valid(""));
}

static void test_allowlist(void **state)
{
	static const char good[] = "# federation members\n\n  bob  \nalice\r\n\tcarol@site\n";
	static const char bad[] = "alice\n# ok\nnot valid\n";
	struct fp_allowlist a;
	char *dir, *path;

	(void)state;
	assert_int_equal(fp_allowlist_parse("allow.txt", good, sizeof(good) - 1, &a), 0);
	assert_int_equal(a.n, 3);
	assert_string_equal(a.ids[0], "alice");
	assert_true(fp_allowlist_has(&a, "bob"));
	assert_true(fp_allowlist_has(&a, "carol@site"));
	assert_false(fp_allowlist_has(&a, "mallory"));
	assert_false(fp_allowlist_has(&a, "bo"));
	fp_allowlist_free(&a);
	assert_int_equal(fp_allowlist_parse("allow.txt", bad, sizeof(bad) - 1, &a), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "allow.txt:3: 'not valid'"));
	assert_int_equal(a.n, 0);
	dir = fp_test_mkdtemp();
	path = fp_test_write_file(dir, "allow", good, sizeof(good) - 1);
	assert_int_equal(fp_allowlist_load(path, &a), 0);
	assert_int_equal(a.n, 3);
	fp_allowlist_free(&a);
	free(path);
	path = NULL;
	assert_true(asprintf(&path, "%s/missing", dir) > 0);
	assert_int_equal(fp_allowlist_load(path, &a), -ENOENT);
	assert_non_null(strstr(fp_err_last(), "missing"));
	free(path);
	/* a FIFO would block a stdio read forever: refused as not a regular file */
	path = NULL;
	assert_true(asprintf(&path, "%s/fifo", dir) > 0);
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(fp_allowlist_load(path, &a), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "not a regular file"));
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_backoff(void **state)
{
	uint64_t seed = 99, sum = 0, mx = 0;
	const int n = 20000;

	(void)state;
	assert_int_equal(fp_backoff_ms(1000, 60000, 0, UINT64_MAX), UINT64_MAX % 1001);
	for (unsigned a = 0; a < 80; a++) {
		uint64_t ceil = 1000;

		for (unsigned i = 0; i < a && ceil < 60000; i++)
			ceil *= 2;
		if (ceil > 60000)
			ceil = 60000;
		for (int i = 0; i < 100; i++)
			assert_true(fp_backoff_ms(1000, 60000, a, fp_test_rand(&seed)) <= ceil);
	}
	/* Full jitter: uniform over [0, cap] once the cap is reached. */
	for (int i = 0; i < n; i++) {
		uint64_t d = fp_backoff_ms(1000, 60000, 20, fp_test_rand(&seed));

		sum += d;
		if (d > mx)
			mx = d;
	}
	assert_true(sum / n > 28000 && sum / n < 32000);
	assert_true(mx > 59000);
	assert_int_equal(fp_backoff_ms(1000, 60000, 3, 8000), 8000 % 8001);
}

static void test_insecure_needs_both(void **state)
{
	struct fp_net_cfg n = { 0 };

	(void)state;
	assert_int_equal(fp_net_insecure(&n, false), 0);
	assert_int_equal(fp_net_insecure(&n, true), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "--insecure also needs"));
	n.insecure = true;
	assert_int_equal(fp_net_insecure(&n, false), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "needs the --insecure flag"));
	assert_int_equal(fp_net_insecure(&n, true), 1);
	n.wq_low = 10;
	n.wq_high = 10;
	n.idle_ms = 100;
	n.heartbeat_ms = 10;
	assert_int_equal(fp_net_cfg_check(&n), -EINVAL);
	n.wq_high = 11;
	assert_int_equal(fp_net_cfg_check(&n), 0);
	n.heartbeat_ms = 100;
	assert_int_equal(fp_net_cfg_check(&n), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decoder_splits),
		cmocka_unit_test(test_decoder_limits),
		cmocka_unit_test(test_decoder_direct),
		cmocka_unit_test(test_envelope_round_trip),
		cmocka_unit_test(test_envelope_inplace),
		cmocka_unit_test(test_envelope_bounded_alloc),
		cmocka_unit_test(test_envelope_checks),
		cmocka_unit_test(test_identities),
		cmocka_unit_test(test_allowlist),
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_insecure_needs_both),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
