/*
 * The local pruning pipeline (fedprllm.md §3.6, §4, §5): prune the seven linears of every
 * decoder block of a model with magnitude, Wanda or SparseGPT, block by block.
 *
 *   open model, (calibration data), embed
 *   [allocation pass: global / LAMP need every magnitude first: per-matrix sparsities]
 *   for block i:
 *       load block i in f32
 *       Wanda, SparseGPT: forward the DENSE block over every sample with the statistics hook
 *           (Wanda: per-column sum of squares; SparseGPT: also XᵀX), so all seven linears see
 *           inputs computed with the unpruned block, as the reference does
 *       for each linear: mask from its metric and group (select.h), or SparseGPT's solver
 *           (sparsegpt.h) which also updates the kept weights; pruned weights set to 0
 *       sequential (default): forward again with the PRUNED block to produce block i+1's
 *           input; otherwise block i+1's input is the dense block's output of the first pass
 *       hand the pruned block and its masks to the sink; free the block; release its pages
 *
 * Magnitude needs no data: no forward pass at all, and the dataset is ignored.
 *
 * Memory: two (tokens, hidden) f32 activation buffers (data methods), one f32 block, the
 * block's statistics (SparseGPT: XᵀX of its four inputs, stats.h), the seven masks; global and
 * LAMP allocation also hold every prunable matrix in f32 during the allocation pass (4 bytes
 * per prunable weight; alloc_sparsity.h needs them all at once).
 *
 * Threads: fp_par_threads() and the BLAS pool (par.h); call from one thread.
 */
#ifndef FP_PRUNE_H
#define FP_PRUNE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloc_sparsity.h"
#include "data.h"
#include "model.h"
#include "select.h"
#include "sparsegpt.h"
#include "stats.h"

#define FP_PRUNE_MASK_FILE   "mask.fpmask" /* name of the mask file in an output directory */
#define FP_PRUNE_REPORT_FILE "report.json"
#define FP_PRUNE_MIN_KEEP    0.01 /* default floor of global / LAMP allocation */

enum fp_prune_method {
	FP_PRUNE_MAGNITUDE,
	FP_PRUNE_WANDA,
	FP_PRUNE_SPARSEGPT,
	FP_PRUNE_METHOD_COUNT,
};

/* Where the pipeline is, for progress display. */
enum fp_prune_phase {
	FP_PRUNE_PHASE_ALLOC, /* allocation pass done */
	FP_PRUNE_PHASE_EMBED, /* calibration data embedded */
	FP_PRUNE_PHASE_BLOCK, /* block `block` done */
};

struct fp_prune_progress {
	enum fp_prune_phase phase;
	uint32_t block;	  /* PHASE_BLOCK: the block just finished */
	uint32_t nblocks; /* decoder blocks of the model */
	double elapsed;	  /* seconds since fp_prune_run started */
	uint64_t pruned;  /* weights pruned so far */
	uint64_t numel;	  /* weights of the blocks done so far */
};

struct fp_prune_opts {
	enum fp_prune_method method;
	/*
	 * Unstructured: fraction pruned, [0, 1] (per comparison group for uniform allocation,
	 * of all prunable weights for global / LAMP). Ignored with an N:M pattern.
	 */
	double sparsity;
	unsigned nm_n, nm_m; /* N:M along the input dimension (0 < N <= M <= 64); 0, 0 = none */
	enum fp_group group; /* magnitude, Wanda unstructured: ROW, LAYER or COLUMN */
	enum fp_sparsity_scheme allocation;
	double min_keep; /* global, LAMP: fraction of every matrix always kept */
	bool sequential; /* next block's input from the pruned block (reference behaviour) */
	/* SparseGPT */
	size_t sgpt_blocksize;	   /* columns per block (128) */
	double sgpt_percdamp;	   /* damping fraction (0.01) */
	unsigned sgpt_max_retries; /* retries with 10x damping (FP_SPARSEGPT_RETRIES) */
	/*
	 * Block range (iterative FedPrLLM, one round per block): prune only blocks
	 * [first_block, first_block + num_blocks) (num_blocks 0 = to the last block). Blocks before
	 * first_block are not pruned but, for the data methods, run forward to produce the
	 * calibration input of first_block, with the masks fixed_mask supplies applied first (the
	 * already published global masks; NULL = dense). Needs uniform allocation. Zero = the
	 * whole model, as before.
	 */
	uint32_t first_block;
	uint32_t num_blocks;
	/* Fill bits (fp_mask_bytes(rows * cols) bytes) with the mask of linear lin of block
	 * (< first_block); return 0 or a negative errno (aborts the run). */
	int (*fixed_mask)(void *ctx, uint32_t block, enum fp_linear lin, uint8_t *bits,
			  size_t nbytes);
	void *fixed_ctx;
	/* Called after each phase (may be NULL); runs on the calling thread. */
	void (*progress)(void *ctx, const struct fp_prune_progress *p);
	void *progress_ctx;
};

/*
 * The reference defaults for method m: sparsity 0.5, unstructured, group ROW for Wanda and
 * LAYER for magnitude (SparseGPT uses its own blocks of 128 columns), uniform allocation,
 * min_keep FP_PRUNE_MIN_KEEP, sequential, SparseGPT blocksize 128, damping 0.01, retries 6.
 */
void fp_prune_opts_init(struct fp_prune_opts *o, enum fp_prune_method m);

/* "magnitude", "wanda", "sparsegpt". */
const char *fp_prune_method_name(enum fp_prune_method m);

/* Parse a method name into *ret. Returns 0 or -EINVAL. */
int fp_prune_method_parse(const char *s, enum fp_prune_method *ret);

/* Whether the method needs calibration data (Wanda, SparseGPT). */
bool fp_prune_needs_data(enum fp_prune_method m);

/*
 * Check o against the model config cfg: known method and group, sparsity in [0, 1], N:M with
 * every linear's in_features divisible by M (and SparseGPT's blocksize too), no N:M with
 * global / LAMP allocation, min_keep in [0, 1], SparseGPT parameters in range. Returns 0 or
 * -EINVAL with a detail naming the option (and the matrix).
 */
int fp_prune_check_opts(const struct fp_prune_opts *o, const struct fp_model_cfg *cfg);

/* Result for one pruned matrix. */
struct fp_prune_mat {
	char name[96]; /* "model.layers.3.self_attn.q_proj.weight" */
	uint32_t block;
	enum fp_linear lin;
	size_t rows, cols;
	double target;	 /* sparsity asked of this matrix (allocation result; N / M for N:M) */
	uint64_t pruned; /* mask bits set */
	double sparsity; /* achieved: pruned / (rows * cols) */
	bool has_sgpt;	 /* sgpt is filled (SparseGPT) */
	struct fp_sparsegpt_report sgpt;
};

/* Wall-clock seconds per phase, summed over blocks. */
struct fp_prune_timing {
	double alloc;	    /* allocation pass (global / LAMP) */
	double embed;	    /* embedding the calibration data */
	double load;	    /* converting blocks to f32 */
	double stats;	    /* dense forward with the statistics hook */
	double select;	    /* metrics and masks (and SparseGPT's solver) */
	double seq_forward; /* forward of the pruned blocks (sequential mode) */
	double sink;	    /* the sink (writing outputs) */
	double total;	    /* all of fp_prune_run */
};

struct fp_prune_result {
	size_t nmats;
	struct fp_prune_mat *mats; /* (nmats) block by block, linears in enum fp_linear order */
	uint64_t numel;		   /* prunable weights */
	uint64_t pruned;	   /* pruned weights */
	uint64_t nsamples;	   /* calibration samples used (0 for magnitude) */
	uint64_t ntokens;	   /* their tokens */
	uint8_t data_digest[32];   /* fp_data_digest of the samples used (magnitude: of none) */
	const char *arch;	   /* fp_arch_name of the model (static) */
	uint32_t nblocks;	   /* decoder blocks */
	struct fp_prune_timing t;
	/* fp_prune_write only: source files not copied, "name: reason" each */
	char **skipped; /* (nskipped) */
	size_t nskipped;
};

/* Free the contents of *res (not res itself); a zeroed result is fine. */
void fp_prune_result_done(struct fp_prune_result *res);

/* One pruned block, handed to the sink. Everything is borrowed for the duration of the call. */
struct fp_prune_block {
	uint32_t index;
	struct fp_block *blk;		   /* pruned f32 weights (SparseGPT: updated) */
	const uint8_t *mask[FP_LIN_COUNT]; /* bit-packed (rows, cols) of each linear (mask.h) */
	const struct fp_prune_mat *mat[FP_LIN_COUNT]; /* names, shapes, counts */
	struct fp_stats *stats; /* statistics of the dense block; NULL for magnitude */
};

/* Called once per block in order; returns 0 or a negative errno (aborts the run). */
typedef int (*fp_prune_sink_fn)(void *ctx, const struct fp_prune_block *b);

/*
 * Prune every decoder block of m with o (fp_prune_check_opts first). ds: the calibration data
 * for Wanda and SparseGPT (borrowed; checked with fp_dataset_check and against the vocabulary),
 * ignored (may be NULL) for magnitude. sink (may be NULL) sees each pruned block. On success
 * *res is filled (owned by the caller: fp_prune_result_done); on failure it is left zeroed.
 * The model file is not modified. Returns 0 or a negative errno with fp_err_last().
 */
int fp_prune_run(struct fp_model *m, const struct fp_dataset *ds, const struct fp_prune_opts *o,
		 fp_prune_sink_fn sink, void *sink_ctx, struct fp_prune_result *res);

/*
 * What a report names besides the result: where the model and data came from. Borrowed.
 */
struct fp_prune_info {
	const char *model_dir;
	uint8_t model_digest[32]; /* fp_hfout_source_digest */
	const char *calib_path;	  /* NULL for magnitude */
	uint32_t seqlen;	  /* calibration window */
	uint32_t nsamples;	  /* asked for (0 = all) */
	uint64_t seed;		  /* draw seed */
	bool shuffle;		  /* samples drawn at random (else the first ones) */
	unsigned threads;
};

/*
 * The report as a JSON text (report.json): tool version, method and every setting, model path
 * and header digest, calibration file, digest and sample count, one entry per matrix (rows,
 * cols, target, pruned, sparsity; SparseGPT damping, retries, dead columns, loss), totals,
 * timings. Returns a new string (caller frees with free()) or NULL when out of memory.
 */
char *fp_prune_report(const struct fp_prune_info *info, const struct fp_prune_opts *o,
		      const struct fp_prune_result *res);

/*
 * The whole offline pipeline: prune m (opened from model_dir) and write out_dir, a Hugging Face
 * directory (hfout.h: small files copied, weights in their original dtypes and sharding, pruned
 * weights exactly zero), with FP_PRUNE_MASK_FILE (mask.h, one entry per pruned matrix in block
 * and linear order) and FP_PRUNE_REPORT_FILE (fp_prune_report; info->model_digest is filled
 * here). Atomic: out_dir appears only when everything is written. On success *res is filled
 * as by fp_prune_run. Returns 0 or a negative errno with fp_err_last().
 */
int fp_prune_write(struct fp_model *m, const char *model_dir, const struct fp_dataset *ds,
		   const struct fp_prune_opts *o, struct fp_prune_info *info, const char *out_dir,
		   struct fp_prune_result *res);

#endif
