/*
 * Calibration and evaluation token data.
 *
 * Formats, chosen by file extension (case-insensitive):
 *   .jsonl  one JSON object per line with an "input_ids" array of integers; each line is one
 *           sample, truncated to seqlen (shorter samples stay shorter; blank lines skipped)
 *   .u16 / .u32  raw little-endian token ids, cut into consecutive windows of seqlen (the tail
 *           shorter than seqlen is dropped)
 *   .txt    raw bytes as token ids (models with a 256-entry byte vocabulary), cut like .u16
 * With nsamples > 0 only the first nsamples samples in file order are kept, or, when shuffle
 * is set, nsamples samples drawn without replacement by a generator seeded with seed.
 * Errors name the file and the line (jsonl) or token offset: id >= vocab, empty file, a
 * non-integer or negative id, a line that is not a JSON object with input_ids.
 *
 * Details of the contract:
 *   - Files are at most 16 GiB (-EFBIG); they are mapped read-only, so a file truncated by
 *     another process while it is being read raises SIGBUS.
 *   - .jsonl: a line is blank when it holds only spaces, tabs and CRs. Lines end in LF or CRLF;
 *     a UTF-8 byte-order mark before the first line is skipped. A line may be up to 64 MiB.
 *     Keys other than "input_ids" are ignored. Every element of input_ids must be a JSON
 *     number equal to an integer in [0, vocab_size) (1.0 is accepted as 1; 1.5, -1, 1e30,
 *     strings, null, arrays are refused). A sample with fewer than 2 ids predicts nothing and
 *     is an error. Every line of the file is validated, whatever nsamples is, so a file is
 *     accepted or refused as a whole.
 *   - .u16/.u32/.txt: the size must be a multiple of the id width. Only the windows that are
 *     kept are read and checked against vocab_size (a bad id in a window that is not used is
 *     not seen); this keeps a 16 GiB file with nsamples = 128 cheap. Fewer tokens than seqlen
 *     is an error. .txt needs vocab_size >= 256.
 *   - Selection: with nsamples == 0 or nsamples >= the number of samples in the file, all
 *     samples are kept; d->nsamples is the count actually kept. With shuffle, the kept
 *     samples are drawn by fp_data_draw(available, kept, seed) and stored in draw order (so
 *     shuffle with nsamples == 0 keeps every sample in a seeded random order).
 *   - opts: 2 <= seqlen <= 2^20 and 1 <= vocab_size <= 2^31 (ids are stored as int32),
 *     else -EINVAL.
 * Failures return a negative errno (-EINVAL for bad input or options, -EFBIG, -ENOMEM, or the
 * errno of open/fstat/mmap) and record a message for fp_err_last(). All functions are
 * thread-safe (no global state).
 */
#ifndef FP_DATA_H
#define FP_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FP_DATA_MAX_FILE   (16ull << 30) /* largest data file accepted, bytes */
#define FP_DATA_MAX_LINE   (64u << 20)	 /* longest .jsonl line, bytes */
#define FP_DATA_MAX_SEQLEN (1u << 20)

struct fp_data_opts {
	uint32_t seqlen;     /* window / truncation length, >= 2 */
	uint32_t nsamples;   /* 0 = all samples */
	uint32_t vocab_size; /* ids must be < vocab_size */
	bool shuffle;	     /* draw nsamples at random (seeded) instead of the first ones */
	uint64_t seed;
};

struct fp_dataset {
	size_t nsamples;
	uint32_t *len;	  /* (nsamples) tokens in each sample, 2..seqlen */
	size_t *off;	  /* (nsamples) offset of each sample in ids */
	int32_t *ids;	  /* (ntokens) all samples back to back */
	uint64_t ntokens; /* sum of len */
	uint32_t seqlen;
};

/* Load path per opts. On success *ret is owned by the caller (fp_data_free). */
int fp_data_load(const char *path, const struct fp_data_opts *opts, struct fp_dataset **ret);
/*
 * Parse from memory; name is used in messages, ext selects the format ("jsonl", "u16", "u32",
 * "txt"; a leading dot is allowed). buf (len bytes) is borrowed for the call only; the result
 * copies what it keeps. On success *ret is owned by the caller (fp_data_free).
 */
int fp_data_load_mem(const void *buf, size_t len, const char *name, const char *ext,
		     const struct fp_data_opts *opts, struct fp_dataset **ret);
void fp_data_free(struct fp_dataset *d); /* NULL is fine */

/*
 * BLAKE2b-256 over the samples actually used (lengths and ids), for reports; out[32].
 * Encoding hashed (version 1): the 16 bytes "fp-data-digest-1", nsamples as u64 LE, then for
 * each sample its len as u32 LE followed by its ids as u32 LE. Equal token sequences give
 * equal digests whatever file format they came from. d is borrowed; NULL hashes as an empty
 * set. Thread-safe.
 */
void fp_data_digest(const struct fp_dataset *d, uint8_t out[32]);

/*
 * Draw k distinct indices from [0, n) into ret (k entries, caller's storage), in draw order.
 * The same (n, k, seed) gives the same indices on every host. Algorithm, for anyone who has
 * to reproduce it:
 *   splitmix64(x): x += 0x9e3779b97f4a7c15; z = x; z = (z ^ z >> 30) * 0xbf58476d1ce4e5b9;
 *       z = (z ^ z >> 27) * 0x94d049bb133111eb; return z ^ z >> 31   (all mod 2^64)
 *   state s[0..3] = four successive splitmix64 outputs, x starting at seed
 *   next() = xoshiro256**: r = rotl(s1 * 5, 7) * 9; t = s1 << 17; s2 ^= s0; s3 ^= s1;
 *       s1 ^= s2; s0 ^= s3; s2 ^= t; s3 = rotl(s3, 45); return r
 *   below(m) = unbiased draw in [0, m): repeat r = next() while r < (2^64 - m) mod m;
 *       return r mod m
 *   Fisher-Yates: a = [0, 1, ..., n-1]; for i in 0..k-1: j = i + below(n - i);
 *       swap a[i], a[j]; ret[i] = a[i]
 * Extra memory is O(min(n, k)): a hash map stands in for a when k is small next to n.
 * Returns 0, -EINVAL if k > n, -ENOMEM.
 */
int fp_data_draw(uint64_t n, uint64_t k, uint64_t seed, uint64_t *ret);

#endif
