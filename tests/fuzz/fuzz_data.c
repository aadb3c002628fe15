/*
 * Fuzz the calibration data parsers (fp_data_load_mem). Two header bytes pick the options:
 *   byte 0: bits 0-1 format (jsonl, u16, u32, txt), bit 2 shuffle, bits 3-4 nsamples
 *           (0, 1, 3, 1000), bits 5-7 seqlen (2, 3, 4, 8, 16, 64, 1024, 2^20)
 *   byte 1: bits 0-1 vocab_size (1, 100, 256, 50000), bits 2-7 the shuffle seed
 * The rest is the file. A successful load must satisfy the dataset invariants; a violation
 * aborts so libFuzzer reports it.
 */
#include <stdint.h>
#include <stdlib.h>

#include "data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const struct fp_dataset *d, const struct fp_data_opts *o)
{
	uint64_t sum = 0;
	uint8_t digest[32];

	if (d->nsamples == 0 || d->seqlen != o->seqlen)
		abort();
	if (o->nsamples && d->nsamples > o->nsamples)
		abort();
	for (size_t i = 0; i < d->nsamples; i++) {
		if (d->off[i] != sum || d->len[i] < 2 || d->len[i] > o->seqlen)
			abort();
		sum += d->len[i];
	}
	if (sum != d->ntokens)
		abort();
	for (uint64_t i = 0; i < d->ntokens; i++)
		if (d->ids[i] < 0 || (uint32_t)d->ids[i] >= o->vocab_size)
			abort();
	fp_data_digest(d, digest);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const ext[] = { "jsonl", "u16", "u32", "txt" };
	static const uint32_t nsamples[] = { 0, 1, 3, 1000 };
	static const uint32_t seqlen[] = { 2, 3, 4, 8, 16, 64, 1024, 1u << 20 };
	static const uint32_t vocab[] = { 1, 100, 256, 50000 };
	struct fp_data_opts o = { 0 };
	struct fp_dataset *d = NULL;

	if (size < 2)
		return 0;
	o.shuffle = data[0] >> 2 & 1;
	o.nsamples = nsamples[data[0] >> 3 & 3];
	o.seqlen = seqlen[data[0] >> 5];
	o.vocab_size = vocab[data[1] & 3];
	o.seed = data[1] >> 2;
	if (fp_data_load_mem(data + 2, size - 2, "fuzz", ext[data[0] & 3], &o, &d) == 0)
		check(d, &o);
	fp_data_free(d);
	return 0;
}
