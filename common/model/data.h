/*
 * Calibration and evaluation token data.
 *
 * Formats, chosen by file extension:
 *   .jsonl  one JSON object per line with an "input_ids" array of integers; each line is one
 *           sample, truncated to seqlen (shorter samples stay shorter; blank lines skipped)
 *   .u16 / .u32  raw little-endian token ids, cut into consecutive windows of seqlen (the tail
 *           shorter than seqlen is dropped)
 *   .txt    raw bytes as token ids (models with a 256-entry byte vocabulary), cut like .u16
 * With nsamples > 0 only the first nsamples samples in file order are kept, or, when shuffle
 * is set, nsamples samples drawn without replacement by a generator seeded with seed.
 * Errors name the file and the line (jsonl) or token offset: id >= vocab, empty file, a
 * non-integer or negative id, a line that is not a JSON object with input_ids.
 */
#ifndef FP_DATA_H
#define FP_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fp_data_opts {
	uint32_t seqlen;     /* window / truncation length, >= 2 */
	uint32_t nsamples;   /* 0 = all samples */
	uint32_t vocab_size; /* ids must be < vocab_size */
	bool shuffle;	     /* draw nsamples at random (seeded) instead of the first ones */
	uint64_t seed;
};

struct fp_dataset {
	size_t nsamples;
	uint32_t *len;	  /* (nsamples) tokens in each sample, 1..seqlen */
	size_t *off;	  /* (nsamples) offset of each sample in ids */
	int32_t *ids;	  /* (ntokens) all samples back to back */
	uint64_t ntokens; /* sum of len */
	uint32_t seqlen;
};

/* Load path per opts. On success *ret is owned by the caller (fp_data_free). */
int fp_data_load(const char *path, const struct fp_data_opts *opts, struct fp_dataset **ret);
/* Parse from memory; name is used in messages, ext selects the format ("jsonl", "u16", ...). */
int fp_data_load_mem(const void *buf, size_t len, const char *name, const char *ext,
		     const struct fp_data_opts *opts, struct fp_dataset **ret);
void fp_data_free(struct fp_dataset *d); /* NULL is fine */

/* BLAKE2b-256 over the samples actually used (lengths and ids), for reports; out[32]. */
void fp_data_digest(const struct fp_dataset *d, uint8_t out[32]);

#endif
