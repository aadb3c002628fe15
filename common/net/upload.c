/*
 * Chunked tensor transfer with per-tensor digests and resume (see upload.h).
 */
#include "upload.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"

#define BAD(code, ...) (*ret_code = (code), fp_err_detail(-EPROTO, __VA_ARGS__))
#define C(x)	       FEDPRUNE__ERROR_CODE__ERROR_##x
#define HASH_BUDGET    (64u << 20) /* bytes re-hashed per pump call when resuming */

static crypto_generichash_state *hash_new(void)
{
	crypto_generichash_state *h = aligned_alloc(64, (sizeof(*h) + 63) & ~(size_t)63);

	if (h)
		crypto_generichash_init(h, NULL, 0, FP_DIGEST_BYTES);
	return h;
}

/* --- receiving --- */

void fp_upload_rx_init(struct fp_upload_rx *rx)
{
	memset(rx, 0, sizeof(*rx));
}

void fp_upload_rx_free(struct fp_upload_rx *rx)
{
	for (size_t i = 0; i < rx->n; i++)
		free(rx->t[i].name);
	free(rx->t);
	free(rx->idx);
	memset(rx, 0, sizeof(*rx));
}

void fp_upload_rx_reset(struct fp_upload_rx *rx, uint64_t round_id)
{
	fp_upload_rx_free(rx);
	rx->round_id = round_id;
}

static size_t name_hash(const char *s)
{
	uint64_t h = 1469598103934665603ull; /* FNV-1a */

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return (size_t)(h ^ (h >> 29));
}

static struct fp_rx_tensor *rx_find(struct fp_upload_rx *rx, const char *name)
{
	if (rx->last < rx->n && strcmp(rx->t[rx->last].name, name) == 0)
		return &rx->t[rx->last];
	if (!rx->idx_cap)
		return NULL;
	for (size_t i = name_hash(name) & (rx->idx_cap - 1);; i = (i + 1) & (rx->idx_cap - 1)) {
		uint32_t k = rx->idx[i];

		if (k == 0)
			return NULL;
		if (strcmp(rx->t[k - 1].name, name) == 0) {
			rx->last = k - 1;
			return &rx->t[k - 1];
		}
	}
}

static void idx_put(uint32_t *idx, size_t cap, const char *name, uint32_t k)
{
	size_t i = name_hash(name) & (cap - 1);

	while (idx[i])
		i = (i + 1) & (cap - 1);
	idx[i] = k;
}

/* Keep the index at most half full; called before adding tensor number rx->n. */
static int idx_grow(struct fp_upload_rx *rx)
{
	size_t cap = rx->idx_cap ? rx->idx_cap : 32;
	uint32_t *idx;

	if (2 * (rx->n + 1) <= rx->idx_cap)
		return 0;
	while (2 * (rx->n + 1) > cap)
		cap *= 2;
	idx = fp_callocarray(cap, sizeof(*idx));
	if (!idx)
		return -ENOMEM;
	for (size_t i = 0; i < rx->n; i++)
		idx_put(idx, cap, rx->t[i].name, (uint32_t)i + 1);
	free(rx->idx);
	rx->idx = idx;
	rx->idx_cap = cap;
	return 0;
}

/* Payload bytes a tensor of this kind and shape has; false if unknown or overflowing. */
static bool payload_bytes(Fedprune__PayloadKind kind, const uint64_t *shape, size_t ndim,
			  uint64_t *ret)
{
	uint64_t n;

	if (!fp_mul_dims_ok(shape, ndim, &n))
		return false;
	switch (kind) {
	case FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS:
		*ret = n / 8 + (n % 8 != 0);
		return true;
	case FEDPRUNE__PAYLOAD_KIND__PAYLOAD_SCORES_Q8:
		*ret = n;
		return true;
	case FEDPRUNE__PAYLOAD_KIND__PAYLOAD_SCORES_F16:
		return !__builtin_mul_overflow(n, 2, ret);
	case FEDPRUNE__PAYLOAD_KIND__PAYLOAD_DENSE_F32:
		return !__builtin_mul_overflow(n, 4, ret);
	default:
		return false;
	}
}

static int rx_add(struct fp_upload_rx *rx, const Fedprune__TensorChunk *c, uint64_t max_bytes,
		  Fedprune__ErrorCode *ret_code, struct fp_rx_tensor **ret)
{
	struct fp_rx_tensor *t;
	uint64_t want;

	if (c->offset != 0)
		return BAD(C(OUT_OF_ORDER), "tensor '%s': first chunk at offset %llu (expected 0)",
			   c->tensor, (unsigned long long)c->offset);
	if (rx->n >= FP_LIST_MAX)
		return BAD(C(TOO_LARGE), "tensor '%s': more than %u tensors in one submission",
			   c->tensor, FP_LIST_MAX);
	if (c->total_bytes > max_bytes || rx->bytes > max_bytes - c->total_bytes)
		return BAD(C(TOO_LARGE),
			   "tensor '%s': submission would exceed %llu bytes (max_upload)",
			   c->tensor, (unsigned long long)max_bytes);
	if (c->n_shape > 0 &&
	    (!payload_bytes(c->kind, c->shape, c->n_shape, &want) || want != c->total_bytes))
		return BAD(C(SPEC_MISMATCH),
			   "tensor '%s': %llu bytes do not match its shape and payload kind",
			   c->tensor, (unsigned long long)c->total_bytes);
	if (idx_grow(rx) < 0)
		return -ENOMEM;
	if (rx->n == rx->cap) {
		size_t cap = rx->cap ? 2 * rx->cap : 16;
		struct fp_rx_tensor *nt = fp_reallocarray(rx->t, cap, sizeof(*nt));

		if (!nt)
			return -ENOMEM;
		rx->t = nt;
		rx->cap = cap;
	}
	t = &rx->t[rx->n];
	memset(t, 0, sizeof(*t));
	t->name = strdup(c->tensor);
	if (!t->name)
		return -ENOMEM;
	t->kind = c->kind;
	t->total = c->total_bytes;
	t->ndim = c->n_shape;
	if (c->n_shape)
		memcpy(t->shape, c->shape, c->n_shape * sizeof(uint64_t));
	rx->bytes += c->total_bytes;
	idx_put(rx->idx, rx->idx_cap, t->name, (uint32_t)rx->n + 1);
	rx->last = rx->n++;
	*ret = t;
	return 0;
}

static void rx_restart_tensor(struct fp_upload_rx *rx, struct fp_rx_tensor *t)
{
	rx->received_bytes -= t->received;
	t->received = 0;
	t->has_digest = false;
}

int fp_upload_rx_chunk(struct fp_upload_rx *rx, const Fedprune__TensorChunk *c, uint64_t max_bytes,
		       Fedprune__ErrorCode *ret_code, const struct fp_rx_tensor **ret_done)
{
	struct fp_rx_tensor *t;
	int r;

	*ret_done = NULL;
	*ret_code = C(UNSPECIFIED);
	if (c->round_id != rx->round_id)
		fp_upload_rx_reset(rx, c->round_id);
	if (rx->committed)
		return BAD(C(OUT_OF_ORDER), "tensor '%s': round %llu is already committed",
			   c->tensor, (unsigned long long)c->round_id);
	t = rx_find(rx, c->tensor);
	if (!t) {
		r = rx_add(rx, c, max_bytes, ret_code, &t);
		if (r < 0)
			return r;
	} else if (t->complete) {
		return BAD(C(OUT_OF_ORDER), "tensor '%s': already complete", c->tensor);
	} else if (c->total_bytes != t->total || c->kind != t->kind) {
		return BAD(C(SPEC_MISMATCH), "tensor '%s': size or kind changed between chunks",
			   c->tensor);
	} else if (c->offset != t->received) {
		return BAD(C(OUT_OF_ORDER), "tensor '%s': chunk at offset %llu, expected %llu",
			   c->tensor, (unsigned long long)c->offset,
			   (unsigned long long)t->received);
	}
	/* fp_env_check guaranteed offset + len <= total, and refuses a digest of another size
	 * on the wire; the size is checked here too because FP_DIGEST_BYTES of it are read
	 * below. A digest declared before must not change: the sender's tensor is then not the
	 * one whose first bytes we hold (it was computed again after a restart, say). */
	if (c->tensor_digest.len && c->tensor_digest.len != FP_DIGEST_BYTES)
		return BAD(C(BAD_MESSAGE), "tensor '%s': a digest of %zu bytes (%u expected)",
			   c->tensor, c->tensor_digest.len, FP_DIGEST_BYTES);
	if (c->tensor_digest.len) {
		if (t->has_digest && memcmp(t->digest, c->tensor_digest.data, FP_DIGEST_BYTES)) {
			rx_restart_tensor(rx, t);
			return BAD(C(DIGEST_MISMATCH),
				   "tensor '%s': its digest changed at offset %llu; send it again "
				   "from offset 0",
				   c->tensor, (unsigned long long)c->offset);
		}
		memcpy(t->digest, c->tensor_digest.data, FP_DIGEST_BYTES);
		t->has_digest = true;
	}
	t->received += c->data.len;
	rx->received_bytes += c->data.len;
	if (t->received < t->total)
		return 0;
	if (!t->has_digest) {
		rx_restart_tensor(rx, t);
		return BAD(C(BAD_MESSAGE), "tensor '%s': last chunk carries no digest", c->tensor);
	}
	t->complete = true;
	*ret_done = t;
	return 0;
}

struct named_digest {
	const char *name;
	const uint8_t *digest;
};

static int cmp_named(const void *a, const void *b)
{
	return strcmp(((const struct named_digest *)a)->name,
		      ((const struct named_digest *)b)->name);
}

int fp_submission_digest(const char *const *names, const uint8_t (*digests)[FP_DIGEST_BYTES],
			 size_t n, uint8_t out[FP_DIGEST_BYTES])
{
	struct named_digest *v = fp_mallocarray(n ? n : 1, sizeof(*v));
	crypto_generichash_state h;

	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		v[i].name = names[i];
		v[i].digest = digests[i];
	}
	qsort(v, n, sizeof(*v), cmp_named);
	crypto_generichash_init(&h, NULL, 0, FP_DIGEST_BYTES);
	for (size_t i = 0; i < n; i++) {
		crypto_generichash_update(&h, (const uint8_t *)v[i].name, strlen(v[i].name) + 1);
		crypto_generichash_update(&h, v[i].digest, FP_DIGEST_BYTES);
	}
	crypto_generichash_final(&h, out, FP_DIGEST_BYTES);
	free(v);
	return 0;
}

int fp_upload_rx_commit(struct fp_upload_rx *rx, const Fedprune__Commit *c)
{
	const char **names = NULL;
	uint8_t(*digests)[FP_DIGEST_BYTES] = NULL;
	uint8_t sub[FP_DIGEST_BYTES];
	int r;

	if (c->round_id != rx->round_id || rx->n == 0)
		return fp_err_detail(-EPROTO, "nothing was uploaded for round %llu",
				     (unsigned long long)c->round_id);
	for (size_t i = 0; i < rx->n; i++)
		if (!rx->t[i].complete)
			return fp_err_detail(-EPROTO,
					     "tensor '%s' is incomplete (%llu of %llu bytes)",
					     rx->t[i].name, (unsigned long long)rx->t[i].received,
					     (unsigned long long)rx->t[i].total);
	names = fp_mallocarray(rx->n, sizeof(*names));
	digests = fp_mallocarray(rx->n, sizeof(*digests));
	if (!names || !digests) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < rx->n; i++) {
		names[i] = rx->t[i].name;
		memcpy(digests[i], rx->t[i].digest, FP_DIGEST_BYTES);
	}
	r = fp_submission_digest(names, (const uint8_t(*)[FP_DIGEST_BYTES])digests, rx->n, sub);
	if (r < 0)
		goto out;
	if (c->submission_digest.len != FP_DIGEST_BYTES ||
	    sodium_memcmp(sub, c->submission_digest.data, FP_DIGEST_BYTES) != 0) {
		r = fp_err_detail(-EPROTO, "submission digest does not match the %zu tensors held",
				  rx->n);
		goto out;
	}
	memcpy(rx->submission, sub, sizeof(sub));
	rx->committed = true;
	r = 0;
out:
	free(names);
	free(digests);
	return r;
}

int fp_upload_rx_restore(struct fp_upload_rx *rx, const char *name, Fedprune__PayloadKind kind,
			 const uint64_t *shape, size_t ndim, uint64_t total, uint64_t received,
			 fp_tensor_read_fn read, void *ud)
{
	Fedprune__TensorChunk c = FEDPRUNE__TENSOR_CHUNK__INIT;
	Fedprune__ErrorCode code;
	crypto_generichash_state h;
	struct fp_rx_tensor *t;
	uint8_t *buf = NULL;
	int r;

	if (rx->committed || received > total || ndim > FP_SHAPE_MAX_DIMS || rx_find(rx, name))
		return fp_err_detail(-EINVAL, "tensor '%s': cannot be restored here", name);
	c.tensor = (char *)name;
	c.kind = kind;
	c.shape = (uint64_t *)shape;
	c.n_shape = ndim;
	c.total_bytes = total;
	r = rx_add(rx, &c, UINT64_MAX, &code, &t);
	if (r < 0)
		return r == -ENOMEM ? r : -EINVAL; /* rx_add set the detail */
	/* A partial tensor needs no reading: the sender declares its digest again with the
	 * chunks that follow. Every byte is read through read() all the same, for callers that
	 * check what they hold (the server's density check); a complete tensor's digest is the
	 * one of its bytes. */
	crypto_generichash_init(&h, NULL, 0, FP_DIGEST_BYTES);
	if (received) {
		buf = malloc(FP_RESTORE_BLOCK);
		if (!buf)
			return -ENOMEM;
	}
	for (uint64_t off = 0; off < received;) {
		size_t n = (size_t)(received - off < FP_RESTORE_BLOCK ? received - off
								      : FP_RESTORE_BLOCK);

		r = read(ud, off, buf, n);
		if (r < 0) {
			rx_restart_tensor(rx, t);
			free(buf);
			return r;
		}
		if (received == total)
			crypto_generichash_update(&h, buf, n);
		off += n;
	}
	free(buf);
	t->received = received;
	rx->received_bytes += received;
	if (received == total) {
		crypto_generichash_final(&h, t->digest, sizeof(t->digest));
		t->has_digest = true;
		t->complete = true;
	}
	return 0;
}

void fp_upload_rx_restore_committed(struct fp_upload_rx *rx, uint64_t round_id,
				    const uint8_t submission[FP_DIGEST_BYTES])
{
	fp_upload_rx_reset(rx, round_id);
	memcpy(rx->submission, submission, FP_DIGEST_BYTES);
	rx->committed = true;
}

int fp_upload_rx_status(const struct fp_upload_rx *rx, uint64_t round_id,
			Fedprune__UploadStatus *st)
{
	size_t n = rx->round_id == round_id ? rx->n : 0;
	Fedprune__TensorStatus *ts;

	fedprune__upload_status__init(st);
	st->round_id = round_id;
	st->committed = rx->round_id == round_id && rx->committed;
	if (n == 0)
		return 0;
	st->tensors = fp_mallocarray(n, sizeof(*st->tensors));
	ts = fp_mallocarray(n, sizeof(*ts));
	if (!st->tensors || !ts) {
		free(st->tensors);
		free(ts);
		st->tensors = NULL;
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		fedprune__tensor_status__init(&ts[i]);
		ts[i].tensor = rx->t[i].name;
		ts[i].received_bytes = rx->t[i].received;
		ts[i].total_bytes = rx->t[i].total;
		ts[i].complete = rx->t[i].complete;
		st->tensors[i] = &ts[i];
	}
	st->n_tensors = n;
	return 0;
}

void fp_upload_status_free(Fedprune__UploadStatus *st)
{
	if (st->n_tensors)
		free(st->tensors[0]);
	free(st->tensors);
	st->tensors = NULL;
	st->n_tensors = 0;
}

/* --- sending --- */

struct tx_tensor {
	struct fp_tensor_src src;
	uint64_t send_from; /* the receiver holds [0, send_from) */
	uint8_t digest[FP_DIGEST_BYTES];
};

struct fp_upload_tx {
	uint64_t round_id;
	size_t chunk;
	struct tx_tensor *t; /* (n) */
	size_t n;
	size_t cur;			/* tensor being processed */
	uint64_t pos;			/* bytes of it hashed or sent */
	crypto_generichash_state *hash; /* of t[cur] when it has no given digest */
	uint8_t *buf;			/* (chunk) one chunk of payload */
	bool commit_sent;
	const Fedprune__Commit *extra;
	uint64_t sent, total;
};

int fp_upload_tx_new(uint64_t round_id, const struct fp_tensor_src *src, size_t n,
		     size_t chunk_bytes, const Fedprune__Commit *extra, struct fp_upload_tx **ret)
{
	struct fp_upload_tx *tx;
	uint64_t want;

	*ret = NULL;
	if (n == 0 || n > FP_LIST_MAX)
		return fp_err_detail(-EINVAL, "an upload needs 1..%u tensors, not %zu", FP_LIST_MAX,
				     n);
	if (chunk_bytes < 1024)
		return fp_err_detail(-EINVAL, "chunk size %zu is below 1024 bytes", chunk_bytes);
	for (size_t i = 0; i < n; i++) {
		if (!fp_tensor_name_valid(src[i].name) || (!src[i].read && !src[i].bytes) ||
		    src[i].ndim > FP_SHAPE_MAX_DIMS)
			return fp_err_detail(-EINVAL,
					     "tensor %zu ('%s'): invalid name, shape or reader", i,
					     src[i].name ? src[i].name : "");
		if (src[i].ndim && (!payload_bytes(src[i].kind, src[i].shape, src[i].ndim, &want) ||
				    want != src[i].total_bytes))
			return fp_err_detail(
				-EINVAL, "tensor '%s': %llu bytes do not match its shape and kind",
				src[i].name, (unsigned long long)src[i].total_bytes);
		for (size_t j = 0; j < i; j++)
			if (strcmp(src[i].name, src[j].name) == 0)
				return fp_err_detail(-EINVAL, "tensor '%s' listed twice",
						     src[i].name);
	}
	tx = calloc(1, sizeof(*tx));
	if (!tx)
		return -ENOMEM;
	tx->t = fp_callocarray(n, sizeof(*tx->t));
	tx->buf = malloc(chunk_bytes);
	tx->hash = hash_new();
	if (!tx->t || !tx->buf || !tx->hash) {
		fp_upload_tx_free(tx);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		tx->t[i].src = src[i];
		tx->total += src[i].total_bytes;
	}
	tx->n = n;
	tx->round_id = round_id;
	tx->chunk = chunk_bytes;
	tx->extra = extra;
	*ret = tx;
	return 0;
}

void fp_upload_tx_free(struct fp_upload_tx *tx)
{
	if (!tx)
		return;
	free(tx->t);
	free(tx->buf);
	free(tx->hash);
	free(tx);
}

uint64_t fp_upload_tx_round(const struct fp_upload_tx *tx)
{
	return tx->round_id;
}

uint64_t fp_upload_tx_sent(const struct fp_upload_tx *tx)
{
	return tx->sent;
}

uint64_t fp_upload_tx_total(const struct fp_upload_tx *tx)
{
	return tx->total;
}

const char *fp_upload_tx_position(const struct fp_upload_tx *tx, uint64_t *ret_offset)
{
	*ret_offset = tx->cur < tx->n ? tx->pos : 0;
	return tx->cur < tx->n ? tx->t[tx->cur].src.name : "(commit)";
}

int fp_upload_tx_restart(struct fp_upload_tx *tx, const Fedprune__UploadStatus *st)
{
	bool same = st && st->round_id == tx->round_id;

	for (size_t i = 0; i < tx->n; i++) {
		struct tx_tensor *t = &tx->t[i];

		t->send_from = 0;
		for (size_t j = 0; same && j < st->n_tensors; j++) {
			const Fedprune__TensorStatus *s = st->tensors[j];

			if (strcmp(s->tensor, t->src.name) != 0)
				continue;
			if (s->total_bytes != t->src.total_bytes)
				return fp_err_detail(-EPROTO,
						     "tensor '%s': the server holds %llu bytes of "
						     "a %llu-byte tensor, ours has %llu",
						     t->src.name,
						     (unsigned long long)s->received_bytes,
						     (unsigned long long)s->total_bytes,
						     (unsigned long long)t->src.total_bytes);
			if (s->complete)
				t->send_from = UINT64_MAX; /* only its digest is needed */
			else if (s->received_bytes < s->total_bytes)
				t->send_from = s->received_bytes;
			break;
		}
	}
	tx->cur = 0;
	tx->pos = 0;
	tx->commit_sent = false;
	crypto_generichash_init(tx->hash, NULL, 0, FP_DIGEST_BYTES);
	return 0;
}

static int send_commit(struct fp_upload_tx *tx, struct fp_conn *c)
{
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__Commit cm = FEDPRUNE__COMMIT__INIT;
	const char **names = fp_mallocarray(tx->n, sizeof(*names));
	uint8_t(*digests)[FP_DIGEST_BYTES] = fp_mallocarray(tx->n, sizeof(*digests));
	uint8_t sub[FP_DIGEST_BYTES];
	int r = -ENOMEM;

	if (!names || !digests)
		goto out;
	for (size_t i = 0; i < tx->n; i++) {
		names[i] = tx->t[i].src.name;
		memcpy(digests[i], tx->t[i].digest, FP_DIGEST_BYTES);
	}
	r = fp_submission_digest(names, (const uint8_t(*)[FP_DIGEST_BYTES])digests, tx->n, sub);
	if (r < 0)
		goto out;
	if (tx->extra) {
		cm.tokens = tx->extra->tokens;
		cm.privacy = tx->extra->privacy;
		cm.seconds = tx->extra->seconds;
	}
	cm.round_id = tx->round_id;
	cm.submission_digest.data = sub;
	cm.submission_digest.len = sizeof(sub);
	e.version = FP_PROTO_VERSION;
	e.msg_case = FEDPRUNE__ENVELOPE__MSG_COMMIT;
	e.commit = &cm;
	r = fp_conn_send(c, &e);
out:
	free(names);
	free(digests);
	return r;
}

/* The current tensor is done: record its digest, move on. */
static void next_tensor(struct fp_upload_tx *tx)
{
	struct tx_tensor *t = &tx->t[tx->cur];

	if (t->src.digest)
		memcpy(t->digest, t->src.digest, FP_DIGEST_BYTES);
	else
		crypto_generichash_final(tx->hash, t->digest, FP_DIGEST_BYTES);
	crypto_generichash_init(tx->hash, NULL, 0, FP_DIGEST_BYTES);
	tx->cur++;
	tx->pos = 0;
}

int fp_upload_tx_pump(struct fp_upload_tx *tx, struct fp_conn *c)
{
	uint64_t hashed = 0;
	int r;

	while (!tx->commit_sent) {
		Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
		Fedprune__TensorChunk ch = FEDPRUNE__TENSOR_CHUNK__INIT;
		struct tx_tensor *t;
		const uint8_t *data = tx->buf;
		uint64_t total, len;
		bool hash_only;

		if (tx->cur == tx->n) {
			if (!fp_conn_writable(c))
				return 0;
			r = send_commit(tx, c);
			if (r < 0)
				return r;
			tx->commit_sent = true;
			break;
		}
		t = &tx->t[tx->cur];
		total = t->src.total_bytes;
		hash_only = tx->pos < t->send_from && t->send_from != 0;
		if (hash_only && t->src.digest) {
			/* The digest is known: nothing to read for what the receiver holds. */
			tx->pos = t->send_from < total ? t->send_from : total;
			if (tx->pos == total && t->send_from == UINT64_MAX) {
				next_tensor(tx);
				continue;
			}
			hash_only = false;
		}
		if (hash_only && tx->pos == total) {
			next_tensor(tx);
			continue;
		}
		if (hash_only && hashed >= HASH_BUDGET)
			return 2;
		if (!hash_only && !fp_conn_writable(c))
			return 0;
		len = total - tx->pos < tx->chunk ? total - tx->pos : tx->chunk;
		if (hash_only && t->send_from != UINT64_MAX && t->send_from - tx->pos < len)
			len = t->send_from - tx->pos;
		if (len && t->src.bytes) {
			data = t->src.bytes + tx->pos; /* in memory: sent from where it is */
		} else if (len) {
			r = t->src.read(t->src.ud, tx->pos, tx->buf, (size_t)len);
			if (r < 0)
				return fp_err_detail(r,
						     "tensor '%s': reading %llu bytes at %llu: %s",
						     t->src.name, (unsigned long long)len,
						     (unsigned long long)tx->pos, fp_strerror(r));
		}
		if (len && !t->src.digest)
			crypto_generichash_update(tx->hash, data, (size_t)len);
		if (hash_only) {
			tx->pos += len;
			hashed += len;
			continue;
		}
		ch.round_id = tx->round_id;
		ch.tensor = (char *)t->src.name;
		ch.kind = t->src.kind;
		if (tx->pos == t->send_from) {
			ch.shape = (uint64_t *)t->src.shape;
			ch.n_shape = t->src.ndim;
		}
		ch.offset = tx->pos;
		ch.data.data = (uint8_t *)data;
		ch.data.len = (size_t)len;
		ch.total_bytes = total;
		if (tx->pos + len == total) {
			if (t->src.digest)
				memcpy(t->digest, t->src.digest, FP_DIGEST_BYTES);
			else
				crypto_generichash_final(tx->hash, t->digest, FP_DIGEST_BYTES);
			ch.tensor_digest.data = t->digest;
			ch.tensor_digest.len = FP_DIGEST_BYTES;
		} else if (t->src.digest) {
			/* Known up front: declared on every chunk, so a receiver that holds a
			 * prefix learns at once if the tensor is no longer the same. */
			ch.tensor_digest.data = (uint8_t *)t->src.digest;
			ch.tensor_digest.len = FP_DIGEST_BYTES;
		}
		e.version = FP_PROTO_VERSION;
		e.msg_case = FEDPRUNE__ENVELOPE__MSG_CHUNK;
		e.chunk = &ch;
		r = fp_conn_send(c, &e);
		if (r < 0)
			return r;
		tx->pos += len;
		tx->sent += len;
		if (tx->pos == total) {
			/* Digest already final in t->digest; just reset and advance. */
			crypto_generichash_init(tx->hash, NULL, 0, FP_DIGEST_BYTES);
			tx->cur++;
			tx->pos = 0;
		}
	}
	return 1;
}
