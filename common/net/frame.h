/*
 * Framing of the wire protocol: every message is a u32 big-endian payload length followed by
 * that many bytes (a serialised fedprune.Envelope). The decoder is incremental: it accepts the
 * byte stream split at any point, checks the announced length against a maximum *before*
 * allocating anything, and owns the payload buffer of the frame being read.
 *
 * No I/O and no logging here; errors are negative errno values with a detail recorded with
 * fp_err_detail().
 */
#ifndef FP_FRAME_H
#define FP_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FP_FRAME_HDR	     4u		 /* bytes of the length prefix */
#define FP_FRAME_MAX_DEFAULT (4u << 20)	 /* default largest payload: 4 MiB */
#define FP_FRAME_MAX_MIN     (4u << 10)	 /* the smallest maximum a daemon may configure */
#define FP_FRAME_MAX_LIMIT   (64u << 20) /* the largest maximum a daemon may configure */
/* A payload buffer up to this size is kept when the connection goes quiet (fp_frame_dec_trim);
 * larger ones are kept only while frames keep coming. */
#define FP_FRAME_KEEP (2u << 10)

struct fp_frame_dec {
	size_t max;	   /* largest payload accepted */
	uint8_t hdr[4];	   /* length prefix being read */
	unsigned hdr_have; /* bytes of hdr read so far */
	size_t len;	   /* payload length of the current frame (valid once hdr is complete) */
	size_t have;	   /* payload bytes read so far */
	uint8_t *buf;	   /* (cap) payload buffer, owned; the current frame uses len bytes */
	size_t cap;
	bool done;	 /* a whole frame is in buf[0..len) */
	uint64_t frames; /* frames completed so far */
};

/* Initialise d (caller-owned storage) for payloads of at most max bytes. */
void fp_frame_dec_init(struct fp_frame_dec *d, size_t max);

/* Release the payload buffer of d. d may be initialised again afterwards. */
void fp_frame_dec_free(struct fp_frame_dec *d);

/*
 * Consume bytes from p[0..n) until one frame is complete or the input runs out. Returns the
 * number of bytes consumed (0..n); when a frame is complete, d->done is set and the rest of
 * the input is left for the next call, after fp_frame_dec_next(). Errors (the decoder is then
 * unusable until re-initialised): -EMSGSIZE when the announced length exceeds d->max (nothing
 * is allocated), -EBADMSG for a zero length, -ENOMEM.
 */
ssize_t fp_frame_dec_feed(struct fp_frame_dec *d, const uint8_t *p, size_t n);

/*
 * Zero-copy path for a reader that can write straight into the payload: when the decoder is
 * inside a payload, set *ret_ptr to where the next payload bytes go and return how many are
 * still missing; otherwise return 0 (feed the next bytes through fp_frame_dec_feed).
 */
size_t fp_frame_dec_space(struct fp_frame_dec *d, uint8_t **ret_ptr);

/* Record that n bytes (at most what fp_frame_dec_space returned) were written there. */
void fp_frame_dec_commit(struct fp_frame_dec *d, size_t n);

/* True while a frame has been started (length prefix begun) but is not complete. */
bool fp_frame_dec_partial(const struct fp_frame_dec *d);

/* After a complete frame was consumed, get ready for the next (the buffer is kept). */
void fp_frame_dec_next(struct fp_frame_dec *d);

/* Between frames, free a payload buffer larger than FP_FRAME_KEEP (call when input pauses). */
void fp_frame_dec_trim(struct fp_frame_dec *d);

/* Write the u32 big-endian prefix for a payload of len bytes. */
void fp_frame_put_len(uint8_t hdr[4], uint32_t len);

#endif
