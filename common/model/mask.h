/*
 * Pruning masks: 1 bit per weight, and the mask file.
 *
 * In memory a mask of a (rows, cols) matrix is ceil(rows * cols / 8) bytes; weight (i, j) is
 * bit p = i * cols + j, stored in byte p / 8 at bit p % 8 (row-major, LSB first). A set bit
 * means PRUNED. Bits past the last weight in the final byte are always 0.
 *
 * File format, version 1 (all integers little-endian; "digest" = BLAKE2b-256, i.e. libsodium
 * crypto_generichash with a 32-byte output and no key):
 *
 *   header
 *     0    8  magic  89 46 50 4D 41 53 4B 0A  ("\x89FPMASK\n": catches 7-bit and newline
 *                                              mangling, like PNG's)
 *     8    4  version = 1
 *     12   4  flags = 0 (reserved; any other value is refused)
 *     16   8  count: number of tensors, 1 .. FP_MASK_MAX_TENSORS
 *     24   8  header_len: bytes of the whole header including its digest, <= FP_MASK_MAX_HEADER
 *     32      count entries, each:
 *               u32 name_len (1 .. FP_MASK_MAX_NAME), name (no NUL byte; unique in the file)
 *               u32 ndim (1 .. FP_MASK_MAX_DIMS), u64 dims[ndim] (each >= 1)
 *               u64 nbytes, which must equal ceil(prod(dims) / 8)
 *     ..  32  header digest over every header byte before it
 *   body, for each tensor in header order
 *             nbytes of packed bits (padding bits of the last byte must be 0)
 *             32-byte digest of those nbytes
 *   trailer
 *         32  file digest over every byte before it
 *
 * The file size must be exactly header_len + sum(nbytes + 32) + 32. The per-tensor digest
 * follows its data (not in the header) so the writer can stream: it knows names and shapes up
 * front but the bits only tensor by tensor. The reader validates the whole header (digest,
 * bounds, shape arithmetic, unique names, file size) before it exposes any tensor, verifies
 * each tensor's digest and padding before returning its bits, and the file digest when the
 * last tensor has been read. Every refusal is -EINVAL (-EIO for read errors) with a detail
 * naming the file and, where there is one, the tensor.
 */
#ifndef FP_MASK_H
#define FP_MASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FP_MASK_VERSION	    1
#define FP_MASK_MAX_DIMS    8
#define FP_MASK_MAX_NAME    1024
#define FP_MASK_MAX_TENSORS (1u << 20)
#define FP_MASK_MAX_HEADER  (64u << 20)
#define FP_MASK_DIGEST	    32

/* Bytes holding nbits mask bits. */
static inline size_t fp_mask_bytes(size_t nbits)
{
	return nbits / 8 + (nbits % 8 != 0);
}

/* Whether bit p is set (weight p pruned). */
static inline bool fp_mask_get(const uint8_t *m, size_t p)
{
	return m[p >> 3] >> (p & 7) & 1;
}

/* Set bit p to v. */
static inline void fp_mask_put(uint8_t *m, size_t p, bool v)
{
	if (v)
		m[p >> 3] |= (uint8_t)(1u << (p & 7));
	else
		m[p >> 3] &= (uint8_t) ~(1u << (p & 7));
}

/* Pruned bits among the first nbits of m (popcount, 8 bytes at a time). */
uint64_t fp_mask_count(const uint8_t *m, size_t nbits);

/* Same, one bit at a time: the reference fp_mask_count is tested against. */
uint64_t fp_mask_count_naive(const uint8_t *m, size_t nbits);

/* per_row (rows) = pruned bits of each row of a (rows, cols) mask. */
void fp_mask_count_rows(const uint8_t *m, size_t rows, size_t cols, uint64_t *per_row);

/* per_col (cols) = pruned bits of each column of a (rows, cols) mask. */
void fp_mask_count_cols(const uint8_t *m, size_t rows, size_t cols, uint64_t *per_col);

/*
 * Check the N:M pattern: every group of m consecutive columns of every row has exactly n
 * pruned bits. Returns 0, or -EINVAL (cols % m != 0, n > m, m == 0) or -EDOM (a group differs;
 * detail names the row and the first column of the group).
 */
int fp_mask_check_nm(const uint8_t *m, size_t rows, size_t cols, unsigned n, unsigned mm);

/* Zero the pruned weights of w (rows, cols) in place. */
void fp_mask_apply(float *w, const uint8_t *m, size_t rows, size_t cols);

/* Agreement of two masks of the same shape. */
struct fp_mask_cmp {
	uint64_t nbits;	   /* weights compared */
	uint64_t pruned_a; /* bits set in a */
	uint64_t pruned_b; /* bits set in b */
	uint64_t both;	   /* set in both (intersection) */
	uint64_t either;   /* set in at least one (union) */
	uint64_t hamming;  /* set in exactly one */
	double jaccard;	   /* both / either; 1 when neither prunes anything */
};

/* Compare the first nbits of a and b; fills *ret. */
void fp_mask_compare(const uint8_t *a, const uint8_t *b, size_t nbits, struct fp_mask_cmp *ret);

/* ---- file ---- */

/* One tensor of a mask file. */
struct fp_mask_info {
	const char *name; /* NUL-terminated */
	uint32_t ndim;
	uint64_t dims[FP_MASK_MAX_DIMS];
	uint64_t nbits;	 /* prod(dims) */
	uint64_t nbytes; /* fp_mask_bytes(nbits) */
	uint64_t offset; /* reader only: file offset of the bits; their digest follows them */
};

struct fp_mask_writer;

/*
 * Start writing the mask file `path` for the tensors decls (n >= 1; names and shapes; nbits
 * and nbytes are computed, callers may leave them 0). Writes path.tmp.XXXXXX next to path;
 * the file appears under its name only at fp_mask_writer_close. decls is copied. On success
 * *ret is owned by the caller: finish with fp_mask_writer_close or fp_mask_writer_abort.
 * Returns 0 or -errno (-EINVAL with a detail for bad names or shapes).
 */
int fp_mask_writer_open(const char *path, const struct fp_mask_info *decls, size_t n,
			struct fp_mask_writer **ret);

/*
 * Append the next tensor, in declaration order: bits is fp_mask_bytes(nbits) bytes (borrowed;
 * padding bits must be 0). Returns 0 or -errno; after an error only abort is useful.
 */
int fp_mask_writer_add(struct fp_mask_writer *w, const uint8_t *bits, size_t nbytes);

/*
 * The same, for bits that must hash to want (32 bytes, borrowed): the digest the writer
 * computes anyway is compared before anything is written; a mismatch is -EBADMSG with a detail
 * naming the tensor (bits that are not the ones their sender hashed, or that changed on disk).
 */
int fp_mask_writer_add_verified(struct fp_mask_writer *w, const uint8_t *bits, size_t nbytes,
				const uint8_t want[FP_MASK_DIGEST]);

/*
 * Write the trailer, fsync, rename into place, fsync the directory. Fails with -EINVAL when
 * not every declared tensor was added. Frees w in every case (removing the temporary file on
 * failure).
 */
int fp_mask_writer_close(struct fp_mask_writer *w);

/* Drop an unfinished file: removes the temporary file and frees w. NULL is fine. */
void fp_mask_writer_abort(struct fp_mask_writer *w);

struct fp_mask_reader;

/*
 * Open and validate the header of the mask file `path` (see the format above). On success
 * *ret is owned by the caller (fp_mask_reader_free). Returns 0, -errno for I/O, -EINVAL for a
 * malformed file (detail names the file and the tensor).
 */
int fp_mask_reader_open(const char *path, struct fp_mask_reader **ret);

/*
 * The same over a file image in memory (data borrowed until fp_mask_reader_free); `label`
 * names it in messages. For tests and the fuzzer.
 */
int fp_mask_reader_open_mem(const void *data, size_t len, const char *label,
			    struct fp_mask_reader **ret);

/* Number of tensors. */
size_t fp_mask_reader_count(const struct fp_mask_reader *r);

/* Tensor i (< count) as declared in the header. Borrowed, valid until fp_mask_reader_free. */
const struct fp_mask_info *fp_mask_reader_info(const struct fp_mask_reader *r, size_t i);

/* Index of the tensor called name, or -ENOENT. */
long fp_mask_reader_find(const struct fp_mask_reader *r, const char *name);

/*
 * Read the next tensor into buf (buflen >= its nbytes) and verify its digest and padding; on
 * success *ret_info (optional) points at its header entry. After the last tensor the file
 * digest is checked too. Returns 1 when a tensor was read, 0 at the end, or a negative errno
 * (the reader is then unusable).
 */
int fp_mask_reader_next(struct fp_mask_reader *r, const struct fp_mask_info **ret_info,
			uint8_t *buf, size_t buflen);

/* Close; NULL is fine. */
void fp_mask_reader_free(struct fp_mask_reader *r);

/* A whole mask file in memory. */
struct fp_mask_set {
	size_t count;
	struct fp_mask_info *info; /* (count) */
	uint8_t **bits;		   /* (count) each info[i].nbytes */
};

/*
 * Read and verify the whole file into memory. On success *ret is owned by the caller
 * (fp_mask_set_free). Same errors as the reader.
 */
int fp_mask_set_load(const char *path, struct fp_mask_set **ret);

/* Free; NULL is fine. */
void fp_mask_set_free(struct fp_mask_set *s);

#endif
