/*
 * The forward pass, one decoder block at a time, over every sample of a dataset at once.
 *
 * Activations: the hidden state of a dataset is one (ntokens, hidden) f32 matrix, the samples
 * back to back in dataset order (sample i at rows off[i] .. off[i] + len[i] - 1). Each sample
 * is its own causal sequence with positions 0 .. len[i] - 1; samples never attend to each
 * other.
 *
 * A caller drives the model block by block:
 *
 *   fp_embed(m, ds, a);                            a: (ntokens, hidden)
 *   for i in 0 .. nlayers - 1:
 *       fp_block_load(m, i, &blk);
 *       fp_block_forward(m, blk, ds, a, b, hook, ctx);   b: (ntokens, hidden)
 *       (prune blk's weights, maybe forward again)
 *       fp_block_free(blk); fp_block_release_source(m, i); swap(a, b);
 *   fp_head_nll(m, a, ds, nll);
 *
 * Inside fp_block_forward every linear is one cblas_sgemm over all tokens of a group of
 * samples (all samples unless the scratch limit of fp_model_set_scratch_limit splits them;
 * q/k/v are one stacked sgemm, gate/up another). Norms, RoPE, attention over (sample, head)
 * pairs and SwiGLU run on fp_par_threads() threads.
 *
 * Threads: the functions here use the model's caches (model.h) and switch the process-wide
 * BLAS thread count around the attention region (par.h), so run one forward pass at a time
 * per process, from one thread.
 *
 * Hooks: the linears of a block read four distinct inputs (q/k/v share one, gate/up share
 * one), and the hook is called once per distinct input (enum fp_input), not once per linear:
 * statistics of an input are the same for every linear reading it, and X^T X is the cost of a
 * whole linear. fp_linear_input maps a linear to its input.
 */
#ifndef FP_FORWARD_H
#define FP_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "model.h"

/* The distinct inputs of a block's linears. */
enum fp_input {
	FP_IN_ATTN, /* input_layernorm(x): read by q_proj, k_proj, v_proj */
	FP_IN_O,    /* attention output: read by o_proj */
	FP_IN_MLP,  /* post_attention_layernorm(h): read by gate_proj, up_proj */
	FP_IN_DOWN, /* silu(gate) * up: read by down_proj */
	FP_IN_COUNT,
};

/* The input a linear reads. */
enum fp_input fp_linear_input(enum fp_linear which);

/* in_features of an input: hidden, nheads * head_dim, hidden, intermediate. */
size_t fp_input_dim(const struct fp_model_cfg *cfg, enum fp_input input);

/* One call of a hook: the exact input matrix of the linears of `input` for some samples. */
struct fp_hook_batch {
	uint32_t block;
	enum fp_input input;
	const float *x; /* (rows, cols) row-major; borrowed for the duration of the call */
	size_t rows;	/* tokens in this batch */
	size_t cols;	/* in_features */
	size_t nseq;	/* whole samples in this batch (their tokens are the rows) */
};

/*
 * Called by fp_block_forward for each input, once per group of samples (once in total unless
 * the scratch limit splits the dataset); over one forward every token of every sample is
 * passed exactly once per input. Runs on the calling thread; may use fp_par_for and BLAS.
 * Returns 0 or a negative errno, which aborts the forward pass and is returned by it.
 */
typedef int (*fp_hook_fn)(void *ctx, const struct fp_hook_batch *b);

/*
 * Check that ds is well formed for m: samples back to back (off[0] = 0, off[i+1] = off[i] +
 * len[i], sum = ntokens), every len >= 1. Token ids are checked by fp_embed.
 */
int fp_dataset_check(const struct fp_dataset *ds);

/*
 * hidden (ds->ntokens, hidden) = embed_tokens[ids]. Returns 0, or -EINVAL (detail names the
 * sample and position) for an id >= vocab_size or a malformed dataset.
 */
int fp_embed(struct fp_model *m, const struct fp_dataset *ds, float *hidden);

/*
 * Run decoder block blk over every sample of ds: out = block(in), both (ntokens, hidden),
 * distinct buffers (they may not overlap). hook (may be NULL) sees the input of each linear.
 * blk is only read. Returns 0 or a negative errno (-ENOMEM, or the hook's error); on error
 * out is unspecified.
 */
int fp_block_forward(struct fp_model *m, const struct fp_block *blk, const struct fp_dataset *ds,
		     const float *in, float *out, fp_hook_fn hook, void *ctx);

/*
 * Final RMSNorm, lm_head and next-token cross-entropy, without materialising more than a
 * tile of the (ntokens, vocab) logits: nll[i] (ds->nsamples) = mean over the len[i] - 1
 * targets of sample i of -log softmax(logits[t])[ids[t + 1]], with log-sum-exp in double;
 * 0 for a sample of one token. hidden (ntokens, hidden) is the last block's output, only read.
 */
int fp_head_nll(struct fp_model *m, const float *hidden, const struct fp_dataset *ds, double *nll);

/*
 * Final RMSNorm and lm_head for n tokens: logits (n, vocab) = lm_head(norm(hidden (n, hidden))).
 * Materialises all logits: for tests and small inputs.
 */
int fp_head_logits(struct fp_model *m, const float *hidden, size_t n, float *logits);

#endif
