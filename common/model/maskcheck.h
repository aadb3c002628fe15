/*
 * Streaming check that a submitted mask obeys the round's pruning rule.
 *
 * The server receives a client's mask of a (rows, cols) matrix as the bit-packed bytes of
 * mask.h (bit p = i * cols + j, LSB first, set = pruned, padding bits of the last byte 0), in
 * chunks of any length, in order. fp_maskcheck checks, without holding the tensor, that the
 * mask prunes exactly what the rule requires:
 *
 *   FP_GROUP_LAYER   k = fp_select_k(rows * cols, s) pruned in the whole matrix
 *   FP_GROUP_ROW     fp_select_k(cols, s) pruned in every row
 *   FP_GROUP_COLUMN  fp_select_k(rows, s) pruned in every column
 *   FP_GROUP_NM      n pruned in every m consecutive columns [g*m, g*m+m) of every row
 *
 * k is computed by fp_select_spec_init, as the pruners compute it, so every mask fp_select
 * makes for the same spec passes. Memory: O(1) for LAYER, ROW and N:M; 9 bytes per column
 * for COLUMN. Speed: 64-bit popcounts over the bytes (any byte offset, rows need not be
 * byte- or word-aligned), a SWAR field count for N:M with m a power of two <= 64, and for
 * COLUMN bit-sliced counters over whole 64-column words (one increment per pruned bit for
 * the rest). fp_maskcheck_naive is the bit-by-bit
 * reference over a whole mask in memory; both report the same failure with the same message.
 *
 * Failures, in this order of precedence (the first one applies):
 *   -EINVAL  more bytes fed than the mask has (reported by the feed that overflows)
 *   -EINVAL  fewer bytes than the mask has at finish
 *   -EINVAL  a padding bit of the last byte is set
 *   -EDOM    a group breaks the rule: the first in row-major stream order (the lowest row, or
 *            the N:M group with the lowest (row, column)), the lowest column for COLUMN
 * Every failure records a detail (fp_err_last) naming the tensor, the group (row i, column j,
 * N:M group at row i columns j..j+m-1, the layer) and the count found against the count
 * required.
 */
#ifndef FP_MASKCHECK_H
#define FP_MASKCHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "select.h"

/* Largest matrix checked: fp_select_k is exact below 2^53 weights. */
#define FP_MASKCHECK_MAX_BITS (UINT64_C(1) << 53)

/*
 * State of one check. Caller-allocated (e.g. inside a per-submission struct); the fields are
 * private: use only the functions below.
 */
struct fp_maskcheck {
	const char *name;    /* points at name_buf or is borrowed (naive); for messages */
	char *name_buf;	     /* owned copy of the name; NULL in the naive checker */
	size_t rows, cols;   /* matrix shape */
	enum fp_group group; /* the rule */
	double sparsity;     /* its sparsity (not FP_GROUP_NM) */
	uint64_t need;	     /* pruned weights required in each group */
	unsigned n, m;	     /* N:M pattern (FP_GROUP_NM only) */
	uint64_t nbits;	     /* rows * cols */
	uint64_t nbytes;     /* fp_mask_bytes(nbits) */
	uint64_t fed;	     /* bytes accepted so far */
	uint64_t seg_len;    /* bits per group in stream order: cols, m or nbits; 0 for COLUMN */
	uint64_t seg_left;   /* bits still to come in the current group */
	uint64_t seg_count;  /* pruned bits seen so far in the current group */
	uint64_t seg_index;  /* current group (row, N:M group number, or 0 for the layer) */
	uint64_t col;	     /* COLUMN: column of the next bit */
	uint64_t *col_count; /* (cols) COLUMN only: pruned bits per column; owned */
	uint64_t *planes;    /* (cols / 64, 8) COLUMN, cols >= 64: bit-sliced counts; owned */
	uint64_t rows_unflushed; /* rows added to planes since they were moved to col_count */
	bool bad;		 /* a group broke the rule; bad_index / bad_count describe it */
	uint64_t bad_index;	 /* first failed group (as seg_index, or the column) */
	uint64_t bad_count;	 /* its pruned count */
	bool bad_padding;	 /* a padding bit of the last byte is set */
	uint8_t pad_byte;	 /* that last byte */
	uint64_t overfed;	 /* bytes the overflowing feed would have reached; 0 if none */
	bool finished;		 /* finish was called */
	uint64_t (*pop)(const uint8_t *p, size_t n); /* popcount of n bytes (hardware if any) */
};

/*
 * Start checking the mask of the (rows, cols) matrix `name` (copied; NULL means "matrix")
 * against the rule `group`: sparsity s in [0, 1] for FP_GROUP_ROW, FP_GROUP_LAYER and
 * FP_GROUP_COLUMN (nm_n and nm_m ignored), or nm_n:nm_m for FP_GROUP_NM (1 <= nm_n <= nm_m,
 * cols % nm_m == 0; sparsity ignored). rows, cols >= 1 and rows * cols <=
 * FP_MASKCHECK_MAX_BITS. Returns 0 or -EINVAL (detail names the tensor and the argument) or
 * -ENOMEM. On any return *mc may be passed to fp_maskcheck_destroy, which must be called.
 */
int fp_maskcheck_init(struct fp_maskcheck *mc, size_t rows, size_t cols, enum fp_group group,
		      double sparsity, unsigned nm_n, unsigned nm_m, const char *name);

/*
 * Feed the next len bytes of the mask (borrowed; any split, in order). Returns 0, or -EINVAL
 * (detail names the tensor) when the bytes fed would exceed the mask's fp_mask_bytes(rows *
 * cols); then no byte of this chunk is taken and every later feed and finish fail the same
 * way. Rule violations are not reported here but by fp_maskcheck_finish.
 */
int fp_maskcheck_feed(struct fp_maskcheck *mc, const uint8_t *bytes, size_t len);

/*
 * Whether the bytes fed so far already break the rule, the padding or the length: a cheap
 * early-reject hint for the caller (ROW, N:M and LAYER groups are judged when their last bit
 * arrives; COLUMN only at finish). fp_maskcheck_finish gives the verdict and the message.
 */
bool fp_maskcheck_failed(const struct fp_maskcheck *mc);

/*
 * The verdict once every byte has been fed: 0 when the mask obeys the rule, -EDOM when a
 * group breaks it, -EINVAL for a wrong length or a set padding bit (see the top of this file
 * for precedence; detail names the tensor, the group and found vs required counts). May be
 * called more than once; feeding after it is -EINVAL.
 */
int fp_maskcheck_finish(struct fp_maskcheck *mc);

/* Free what init allocated and zero *mc. Safe after a failed init, and on a zeroed struct. */
void fp_maskcheck_destroy(struct fp_maskcheck *mc);

/*
 * The reference: check the whole mask bits (nbytes bytes, borrowed) of a (rows, cols) matrix
 * bit by bit against the same rule with the same arguments as fp_maskcheck_init. Returns what
 * init, one feed of the nbytes and finish would return in sequence (0, -EINVAL or -EDOM),
 * recording the same detail. Allocates nothing.
 */
int fp_maskcheck_naive(const uint8_t *bits, size_t nbytes, size_t rows, size_t cols,
		       enum fp_group group, double sparsity, unsigned nm_n, unsigned nm_m,
		       const char *name);

#endif
