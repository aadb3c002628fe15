/*
 * Chunked tensor transfer with a BLAKE2b-256 digest per tensor and resume.
 *
 * Sending (fp_upload_tx): the sender *pulls* the payload from the producer, one chunk at a
 * time, only while the connection's write queue is below its high-water mark, so a fast
 * producer never has more than one chunk plus the queue in memory. After a reconnect the
 * receiver's UploadStatus says how much of each tensor it holds; the sender skips complete
 * tensors and continues partial ones at the byte where they stopped. A digest the producer
 * knows up front goes on every chunk; otherwise it is computed while sending and goes on the
 * last chunk.
 *
 * Receiving (fp_upload_rx): chunks of each tensor must arrive in order of offset; a tensor is
 * complete when all its bytes are there and its digest is declared (on the last chunk at the
 * latest). A declared digest must not change between chunks, also across reconnects: if it
 * does, the tensor starts over. The receiver does NOT hash the bytes as they arrive: the
 * channel (TLS) already guarantees they are the sender's, and the digest is checked once
 * against the bytes as stored, off the event loop, by the application that stores them (the
 * round server's store step, server/round.c). A Commit is accepted when every tensor is
 * complete and the submission digest matches the declared tensor digests.
 *
 * Submission digest: BLAKE2b-256 over, for each tensor sorted by name (bytewise), the name,
 * one 0x00 byte and its 32-byte digest.
 */
#ifndef FP_UPLOAD_H
#define FP_UPLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

#include "conn.h"
#include "envelope.h"

/* Copies exactly len bytes of the payload, starting at offset, into buf. Returns 0 or -errno. */
typedef int (*fp_tensor_read_fn)(void *ud, uint64_t offset, uint8_t *buf, size_t len);

/* --- receiving --- */

struct fp_rx_tensor {
	char *name; /* owned */
	Fedprune__PayloadKind kind;
	uint64_t total;	   /* payload bytes of the whole tensor */
	uint64_t received; /* contiguous prefix received */
	uint64_t shape[FP_SHAPE_MAX_DIMS];
	size_t ndim;
	bool complete;			 /* received == total and the digest is declared */
	bool has_digest;		 /* digest holds what the sender declared */
	uint8_t digest[FP_DIGEST_BYTES]; /* as declared (not verified here, see above) */
};

struct fp_upload_rx {
	uint64_t round_id;
	bool committed;
	struct fp_rx_tensor *t; /* (n) tensors in order of their first chunk */
	size_t n, cap;
	size_t last;   /* index of the tensor of the previous chunk (lookup cache) */
	uint32_t *idx; /* (idx_cap) open-addressing index by name: tensor index + 1, 0 = free */
	size_t idx_cap;
	uint64_t bytes; /* sum of total over the tensors */
	uint64_t received_bytes;
	uint8_t submission[FP_DIGEST_BYTES]; /* when committed */
};

/* Initialise rx (caller-owned storage); it holds nothing. */
void fp_upload_rx_init(struct fp_upload_rx *rx);

/* Drop everything rx holds and start over for round_id. */
void fp_upload_rx_reset(struct fp_upload_rx *rx, uint64_t round_id);

/* Release what rx owns. */
void fp_upload_rx_free(struct fp_upload_rx *rx);

/*
 * Apply one chunk. A chunk of another round starts that round over. Returns 0 and, when the
 * chunk completed its tensor (all bytes, digest declared), *ret_done = that tensor (else
 * NULL). Errors, -EPROTO with *ret_code and a detail naming the tensor: chunk at the wrong
 * offset, for a complete tensor or a committed round (OUT_OF_ORDER); kind/size changed between
 * chunks (SPEC_MISMATCH); more than max_bytes in all tensors or more than FP_LIST_MAX tensors
 * (TOO_LARGE); last chunk without a digest (BAD_MESSAGE); a digest different from the one
 * declared on an earlier chunk (DIGEST_MISMATCH, the tensor then starts over from offset 0).
 * -ENOMEM.
 */
int fp_upload_rx_chunk(struct fp_upload_rx *rx, const Fedprune__TensorChunk *c, uint64_t max_bytes,
		       Fedprune__ErrorCode *ret_code, const struct fp_rx_tensor **ret_done);

/*
 * Check a Commit against what was received: same round, every tensor complete, submission
 * digest equal. Returns 0 (rx is then committed) or -EPROTO with a detail (the reason for the
 * Receipt).
 */
int fp_upload_rx_commit(struct fp_upload_rx *rx, const Fedprune__Commit *c);

#define FP_RESTORE_BLOCK (1u << 20) /* bytes read at a time while restoring */

/*
 * Put back a tensor a previous process had received (the server's state directory): name,
 * kind, shape (ndim, may be 0) and total as on its first chunk, and the first `received`
 * bytes, which are read back through read(ud, ...) (callers check them there). With
 * received == total the tensor is complete and its digest is the one of those bytes; a
 * partial tensor gets its digest declared again by the chunks that follow. Returns 0, -EINVAL
 * (rx is committed, the tensor is already there, received > total; detail), -ENOMEM or read's
 * error.
 */
int fp_upload_rx_restore(struct fp_upload_rx *rx, const char *name, Fedprune__PayloadKind kind,
			 const uint64_t *shape, size_t ndim, uint64_t total, uint64_t received,
			 fp_tensor_read_fn read, void *ud);

/*
 * Start rx over as an already committed submission of round_id with this submission digest
 * (accepted by a previous process): UploadStatus then says committed, chunks are refused.
 */
void fp_upload_rx_restore_committed(struct fp_upload_rx *rx, uint64_t round_id,
				    const uint8_t submission[FP_DIGEST_BYTES]);

/*
 * Describe what rx holds as an UploadStatus for round_id (empty if rx is about another
 * round). The message's arrays are allocated; release with fp_upload_status_free.
 */
int fp_upload_rx_status(const struct fp_upload_rx *rx, uint64_t round_id,
			Fedprune__UploadStatus *st);

/* Free the arrays fp_upload_rx_status allocated (not st itself). */
void fp_upload_status_free(Fedprune__UploadStatus *st);

/*
 * Submission digest of n tensors (names[i], digests[i]) into out; see the header comment.
 * Returns 0 or -ENOMEM.
 */
int fp_submission_digest(const char *const *names, const uint8_t (*digests)[FP_DIGEST_BYTES],
			 size_t n, uint8_t out[FP_DIGEST_BYTES]);

/* --- sending --- */

struct fp_tensor_src {
	const char *name; /* borrowed until the upload is freed */
	Fedprune__PayloadKind kind;
	const uint64_t *shape; /* (ndim), borrowed likewise */
	size_t ndim;
	uint64_t total_bytes;
	fp_tensor_read_fn read;
	void *ud;
	/* Optional: the whole payload in memory (e.g. a mapped file), borrowed until the upload
	 * is freed. Chunks are then sent from it without a copy and read is not called (it may
	 * be NULL). */
	const uint8_t *bytes;
	/* Optional BLAKE2b-256 of the whole payload if the producer knows it (then the sender
	 * does not hash); NULL: computed while sending. Borrowed. */
	const uint8_t *digest;
};

struct fp_upload_tx;

/*
 * An upload of n tensors for round_id in chunks of chunk_bytes. src is copied (what it points
 * to is borrowed). extra, if not NULL, provides Commit's tokens, privacy and seconds (borrowed
 * until freed). Returns 0 and *ret (free with fp_upload_tx_free), -EINVAL for a bad tensor
 * (detail names it), or -ENOMEM.
 */
int fp_upload_tx_new(uint64_t round_id, const struct fp_tensor_src *src, size_t n,
		     size_t chunk_bytes, const Fedprune__Commit *extra, struct fp_upload_tx **ret);

/* Free tx (NULL is fine). */
void fp_upload_tx_free(struct fp_upload_tx *tx);

/* The round tx uploads. */
uint64_t fp_upload_tx_round(const struct fp_upload_tx *tx);

/*
 * Start (again) from what the receiver holds: st (may be NULL or about another round, which
 * means nothing) says which tensors are complete and how far the others got. The prefixes
 * already held are read back from the producer to compute the digests. Returns 0, -EPROTO
 * if st contradicts the tensors (a size differs; detail names the tensor) or a producer error.
 */
int fp_upload_tx_restart(struct fp_upload_tx *tx, const Fedprune__UploadStatus *st);

/*
 * Send chunks on c while it is writable, then the Commit. Returns 1 once the Commit is
 * sent, 0 when waiting for on_drain, or a negative errno (producer error, send failure).
 */
int fp_upload_tx_pump(struct fp_upload_tx *tx, struct fp_conn *c);

/* Payload bytes sent on the wire so far (all connections), and the total to send. */
uint64_t fp_upload_tx_sent(const struct fp_upload_tx *tx);
uint64_t fp_upload_tx_total(const struct fp_upload_tx *tx);

/* Where the upload stands, for log lines: the tensor being sent and its offset. */
const char *fp_upload_tx_position(const struct fp_upload_tx *tx, uint64_t *ret_offset);

#endif
