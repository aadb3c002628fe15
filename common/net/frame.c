/*
 * Incremental length-prefixed frame decoder (see frame.h).
 */
#include "frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

void fp_frame_dec_init(struct fp_frame_dec *d, size_t max)
{
	memset(d, 0, sizeof(*d));
	d->max = max;
}

void fp_frame_dec_free(struct fp_frame_dec *d)
{
	free(d->buf);
	d->buf = NULL;
	d->cap = 0;
}

void fp_frame_put_len(uint8_t hdr[4], uint32_t len)
{
	hdr[0] = (uint8_t)(len >> 24);
	hdr[1] = (uint8_t)(len >> 16);
	hdr[2] = (uint8_t)(len >> 8);
	hdr[3] = (uint8_t)len;
}

/* The prefix is complete: check the length, then make room for the payload. */
static int start_payload(struct fp_frame_dec *d)
{
	uint32_t len = (uint32_t)d->hdr[0] << 24 | (uint32_t)d->hdr[1] << 16 |
		       (uint32_t)d->hdr[2] << 8 | d->hdr[3];

	if (len == 0)
		return fp_err_detail(-EBADMSG, "frame of length 0");
	if (len > d->max)
		return fp_err_detail(-EMSGSIZE, "frame of %u bytes exceeds the limit of %zu bytes",
				     len, d->max);
	if (len > d->cap) {
		uint8_t *b = malloc(len);

		if (!b)
			return fp_err_detail(-ENOMEM, "frame of %u bytes: out of memory", len);
		free(d->buf);
		d->buf = b;
		d->cap = len;
	}
	d->len = len;
	d->have = 0;
	return 0;
}

ssize_t fp_frame_dec_feed(struct fp_frame_dec *d, const uint8_t *p, size_t n)
{
	size_t used = 0;

	if (d->done)
		return 0;
	while (d->hdr_have < FP_FRAME_HDR && used < n) {
		d->hdr[d->hdr_have++] = p[used++];
		if (d->hdr_have == FP_FRAME_HDR) {
			int r = start_payload(d);

			if (r < 0)
				return r;
		}
	}
	if (d->hdr_have < FP_FRAME_HDR)
		return (ssize_t)used;
	if (used < n && d->have < d->len) {
		size_t take = d->len - d->have;

		if (take > n - used)
			take = n - used;
		memcpy(d->buf + d->have, p + used, take);
		d->have += take;
		used += take;
	}
	if (d->have == d->len) {
		d->done = true;
		d->frames++;
	}
	return (ssize_t)used;
}

size_t fp_frame_dec_space(struct fp_frame_dec *d, uint8_t **ret_ptr)
{
	if (d->done || d->hdr_have < FP_FRAME_HDR)
		return 0;
	*ret_ptr = d->buf + d->have;
	return d->len - d->have;
}

void fp_frame_dec_commit(struct fp_frame_dec *d, size_t n)
{
	d->have += n;
	if (d->have >= d->len) {
		d->have = d->len;
		d->done = true;
		d->frames++;
	}
}

bool fp_frame_dec_partial(const struct fp_frame_dec *d)
{
	return !d->done && d->hdr_have > 0;
}

void fp_frame_dec_trim(struct fp_frame_dec *d)
{
	if (d->cap > FP_FRAME_KEEP && !fp_frame_dec_partial(d) && !d->done)
		fp_frame_dec_free(d);
}

void fp_frame_dec_next(struct fp_frame_dec *d)
{
	d->hdr_have = 0;
	d->len = 0;
	d->have = 0;
	d->done = false;
}
