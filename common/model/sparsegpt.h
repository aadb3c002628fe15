/*
 * SparseGPT (Frantar & Alistarh 2023) on one weight matrix: choose which weights to prune and
 * update the remaining ones so the layer's output on the calibration inputs changes as little
 * as possible (Optimal Brain Surgeon updates, processed column by column in blocks).
 *
 * Semantics are those of the reference `SparseGPT.fasterprune` (IST-DASLab sparsegpt.py, used
 * unchanged by the Wanda repo; fedprllm.md §5), except where listed under "Differences":
 *
 *   W       (rows = out_features, cols = in_features) row-major, f32, pruned in place.
 *   H       = (2 / nseq) · xtx, where xtx = Σ xᵀx over every calibration token (cols, cols) and
 *           nseq the number of calibration sequences (the reference's running average gives
 *           exactly this). The scale changes neither the mask nor the update; it is applied
 *           anyway so the damping and the reported loss match the reference.
 *   1. Dead inputs: every column d with H[d,d] == 0 gets H[d,d] = 1 and W[:,d] = 0.
 *   2. Damping: H += percdamp · mean(diag(H)) · I.
 *   3. Hinv = the upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU).
 *   4. For each block of `blocksize` columns [i1, i2) (the last one may be shorter):
 *      - unstructured: score = W1² / diag(U1)² over all rows × the block's columns, taken
 *        from W at block start (after the earlier blocks' updates); the k = floor(numel · s)
 *        lowest scores of the block are pruned (numel · s computed in double, as Python's
 *        int(numel * s); fp_select_k). "Adaptive mask selection": the comparison group is
 *        all rows × the block's columns.
 *      - N:M (prune_n > 0): at every column c of the block with (c - i1) % M == 0, from the
 *        CURRENT (already updated) weights, score = w² / diag(U)² over columns [c, c + M) of
 *        each row, and the N lowest of each row are pruned.
 *      - column by column: err = w / U[c,c] for a pruned weight (0 for a kept one), the pruned
 *        weight becomes exactly 0 and the later columns of the block get w -= err · U[c, c+1:];
 *        loss += err² / 2.
 *      - lazy batch update of every later column: W[:, i2:] -= Err1 · U[i1:i2, i2:] (one sgemm).
 *
 * Ties: every selection is exact and deterministic. Equal scores are broken by the lower flat
 * index first: row-major index inside the block (r · count + c) for unstructured, lower column
 * inside the group for N:M.
 *
 * Differences from the reference (all deliberate):
 *   - Count. The reference prunes `tmp <= sort(tmp)[int(numel · s)]`, i.e. floor(numel · s) + 1
 *     entries per block when all scores differ (the element AT sorted index k is included),
 *     and more on ties. We prune exactly k = floor(numel · s) per block, as the project's
 *     sparsity contract (k = floor(group size × sparsity)) requires.
 *   - N:M tie order: torch.topk's order on ties is unspecified; we take the lower column.
 *   - Factorization: U is computed as the inverse of the "reverse" Cholesky factor
 *     (H = Ũ Ũᵀ with Ũ upper, U = Ũ⁻¹; Ũ from spotrf on the index-reversed H, inverted in place
 *     by strtri). Mathematically identical to chol_upper(cholesky_inverse(chol_lower(H))), at
 *     half the flops and without the explicit inverse, so it is if anything more accurate in
 *     f32. The fast path reads the upper triangle of xtx only (xtx must be symmetric).
 *   - Robustness: the reference crashes on a Hessian that is not positive definite. Here the
 *     factorization is retried with the damping fraction multiplied by 10 (0 → 0.01 on the
 *     first retry), at most max_retries times; the fraction used and the number of retries are
 *     reported. A factor with a non-finite entry or a diagonal whose square is not a normal
 *     float counts as a failure too.
 *   - Group shape for N:M: cols and blocksize must be multiples of M (the reference would fail
 *     or prune a partial group).
 *
 * The reported loss Σ err²/2 over the pruned weights is exactly (in exact arithmetic)
 * ½ Σ_rows Δw (H + damp·I) Δwᵀ with Δw = W_before − W_after (W_before with dead columns
 * zeroed): SparseGPT's column-by-column OBS steps are each optimal, so the per-step losses add
 * up to the total. With H = (2/nseq)·XᵀX this is (1/nseq)·‖ΔW X‖² plus the damping term.
 *
 * Mask: bit-packed as in mask.h, one bit per weight in row-major order (weight r · cols + c is
 * bit (r · cols + c) % 8 of byte (r · cols + c) / 8, LSB first), 1 = pruned, padding bits 0.
 * Dead-column weights are zero after pruning whether or not their bit is set (their score is
 * 0, so they are the first chosen).
 *
 * Cost: the factorization is ~(2/3)·cols³ flops (LAPACK spotrf + strtri from the BLAS library),
 * the lazy updates ~rows · cols² (sgemm), the in-block column loop (split over rows with
 * fp_par_for) walks sub-blocks of 32 columns, ~rows · cols · 16 · s scalar multiply-adds plus
 * ~rows · cols · blocksize sgemm flops, selection O(rows · cols) (radix select). Memory: a
 * (cols, cols) f32 copy of H plus 2 · rows · blocksize floats and rows · blocksize bytes.
 * Needs LAPACK's spotrf_/strtri_ from the BLAS library (OpenBLAS and FlexiBLAS export them;
 * the netlib "cblas" option alone does not).
 *
 * Errors (nothing is modified unless noted): -EINVAL for bad arguments or a non-finite value in
 * w or xtx (detail names the matrix and the item); -EOVERFLOW for sizes; -ENOMEM; -EDOM when
 * the Hessian stays non positive definite after every retry (detail names the matrix and the
 * last damping tried) — and also when an update overflows to a non-finite weight, in which case
 * w has been partly modified and must be discarded (only possible with absurd magnitudes).
 */
#ifndef FP_SPARSEGPT_H
#define FP_SPARSEGPT_H

#include <stddef.h>
#include <stdint.h>

#define FP_SPARSEGPT_BLOCKSIZE	 128
#define FP_SPARSEGPT_PERCDAMP	 0.01
#define FP_SPARSEGPT_RETRIES	 6  /* default max_retries: damping up to 0.01 · 10⁶ */
#define FP_SPARSEGPT_MAX_RETRIES 12 /* largest max_retries accepted */
#define FP_SPARSEGPT_MAX_M	 64 /* largest M accepted for N:M */

struct fp_sparsegpt_opts {
	double sparsity;      /* fraction pruned per block, [0, 1]; ignored for N:M */
	unsigned prune_n;     /* N:M: prune N of every M consecutive inputs; 0 = unstructured */
	unsigned prune_m;     /* M (0 when unstructured) */
	size_t blocksize;     /* columns per block, > 0 (default 128) */
	double percdamp;      /* damping fraction of mean(diag(H)), >= 0 (default 0.01) */
	unsigned max_retries; /* retries with 10x damping, <= FP_SPARSEGPT_MAX_RETRIES */
	const char *name;     /* matrix name for error details (borrowed); NULL = "weight" */
};

struct fp_sparsegpt_report {
	double percdamp;  /* damping fraction of the factorization used */
	double damp;	  /* absolute value added to the diagonal of H */
	unsigned retries; /* factorizations that failed before the one used */
	size_t dead;	  /* input columns with diag(H) == 0 */
	size_t pruned;	  /* weights pruned (mask bits set) */
	double loss;	  /* Σ over pruned weights of (w / U[c,c])² / 2 (see above) */
};

/* Defaults: sparsity 0.5 unstructured, blocksize 128, percdamp 0.01, max_retries 6, no name. */
void fp_sparsegpt_opts_init(struct fp_sparsegpt_opts *o);

/* Bytes of a bit-packed mask of rows × cols weights: ceil(rows · cols / 8); 0 on overflow. */
size_t fp_sparsegpt_mask_bytes(size_t rows, size_t cols);

/*
 * Prune w (rows, cols) in place with SparseGPT. xtx (cols, cols): Σ xᵀx over the calibration
 * tokens, borrowed and not modified (only its upper triangle is read). nseq: number of
 * calibration sequences (> 0). mask: NULL or fp_sparsegpt_mask_bytes(rows, cols) bytes, fully
 * overwritten. rep: NULL or filled on success. Uses the BLAS library's threads and fp_par_for.
 * Returns 0 or a negative errno (see above; detail in fp_err_last()).
 */
int fp_sparsegpt_prune(float *w, size_t rows, size_t cols, const float *xtx, uint64_t nseq,
		       const struct fp_sparsegpt_opts *o, uint8_t *mask,
		       struct fp_sparsegpt_report *rep);

/*
 * Naive reference of fp_sparsegpt_prune for the tests: same contract and same results up to
 * rounding, computed in double with plain loops and the reference's factorization chain
 * chol_upper(inverse(chol_lower(H))), column updates over the whole block as the reference
 * does, and a sort for the selection. O(cols³ + rows · cols²) with large constants: small
 * matrices only.
 */
int fp_sparsegpt_prune_ref(float *w, size_t rows, size_t cols, const float *xtx, uint64_t nseq,
			   const struct fp_sparsegpt_opts *o, uint8_t *mask,
			   struct fp_sparsegpt_report *rep);

#endif
