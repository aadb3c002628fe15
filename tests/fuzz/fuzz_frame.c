/*
 * Fuzz the frame decoder and the envelope decoder/validator with the byte stream split at
 * fuzzer-chosen points. Input: byte 0 seeds the split sizes; the rest is the stream. Each
 * complete frame is decoded with the bounded allocator and validated; a decoder error ends
 * the connection, so the decoder starts over on what follows.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "envelope.h"
#include "frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fp_frame_dec d;
	uint32_t rng;
	size_t pos = 1;

	if (size < 1)
		return 0;
	rng = data[0] * 2654435761u + 1;
	fp_frame_dec_init(&d, 64u << 10);
	while (pos < size) {
		size_t piece, off = 0;

		rng = rng * 1103515245u + 12345u;
		piece = 1 + (rng >> 16) % 97;
		if (piece > size - pos)
			piece = size - pos;
		while (off < piece) {
			ssize_t used = fp_frame_dec_feed(&d, data + pos + off, piece - off);
			Fedprune__Envelope *e = NULL;
			Fedprune__ErrorCode code;

			if (used < 0) {
				fp_frame_dec_free(&d);
				fp_frame_dec_init(&d, 64u << 10);
				off++; /* skip a byte and start over */
				continue;
			}
			off += (size_t)used;
			if (!d.done)
				continue;
			if (fp_env_unpack(d.buf, d.len, &e) == 0) {
				if (fp_env_check(e, &code) == 0) {
					/* A valid envelope must serialise again within the limits. */
					if (fedprune__envelope__get_packed_size(e) >
					    FP_ENV_BUDGET(d.len))
						abort();
					(void)fp_msg_name(e->msg_case);
				}
				fp_env_free(e);
			}
			fp_frame_dec_next(&d);
		}
		pos += piece;
	}
	fp_frame_dec_free(&d);
	return 0;
}
