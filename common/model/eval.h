/*
 * Perplexity of a model on a token dataset (fedprllm.md §7), streaming the decoder blocks:
 * each block is converted to f32, run over the activations, freed, and its mapped pages
 * released before the next one is loaded.
 *
 * Definition: window w (one dataset sample) of len_w tokens has len_w - 1 next-token targets
 * and loss_w = mean CE over them. The result is the token-weighted
 *     ppl = exp( sum_w sum_t CE_wt / sum_w (len_w - 1) ),
 * which equals Wanda's exp(mean_w loss_w) when every window has the same length (the usual
 * case: fixed seqlen windows) and weighs each predicted token equally otherwise. Windows of a
 * single token predict nothing and count as windows with 0 tokens.
 */
#ifndef FP_EVAL_H
#define FP_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "data.h"
#include "model.h"

struct fp_eval_opts {
	/*
	 * Bound on the two (tokens, hidden) activation buffers, in bytes (0 = 2 GiB). A larger
	 * dataset runs in groups of whole windows, each through every block, so blocks are
	 * converted once per group.
	 */
	size_t max_act_bytes;
	/* Called after each block of each group (may be NULL). */
	void (*progress)(void *ctx, uint32_t block, uint32_t nblocks);
	void *progress_ctx;
};

struct fp_eval_result {
	double ppl;	  /* exp(nll / tokens) */
	double nll;	  /* sum of CE over every predicted token, nats */
	uint64_t windows; /* samples evaluated */
	uint64_t tokens;  /* predicted tokens: sum of (len_w - 1) */
};

/*
 * Evaluate m on ds (opts may be NULL for defaults). Fills *ret on success. Returns 0, or a
 * negative errno: -EINVAL (detail) for a bad dataset or one with nothing to predict,
 * -ENOMEM.
 */
int fp_eval_perplexity(struct fp_model *m, const struct fp_dataset *ds,
		       const struct fp_eval_opts *opts, struct fp_eval_result *ret);

#endif
