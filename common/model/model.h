/*
 * Llama-family decoder models read from a Hugging Face model directory: DIR/config.json plus
 * DIR/model.safetensors (or shards named by model.safetensors.index.json).
 *
 * Supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, with the semantics of
 * Hugging Face transformers (RMSNorm, rotate-half RoPE with optional "linear" or "llama3"
 * rope_scaling, grouped-query attention, optional sliding window, SwiGLU MLP). Every tensor a
 * forward pass needs is checked at open (present, float dtype, exact shape), so later stages
 * never meet a malformed weight.
 *
 * Memory: the model keeps the safetensors files mmap'd and converts one decoder block at a
 * time to f32 (fp_block_load). The f32 block is the only large allocation; the pruners modify
 * its weights in place between forward passes. fp_block_release_source drops the mapped pages
 * of a block once it is no longer needed, so a model larger than RAM streams through.
 *
 * Weight layout: every linear weight is (out_features, in_features) row-major, as on disk.
 *
 * Threads: a struct fp_model holds caches (RoPE tables, forward scratch) and must be used by
 * one thread at a time; the forward functions parallelise internally (par.h).
 */
#ifndef FP_MODEL_H
#define FP_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

/* Sanity bounds on config.json values: a hostile config cannot ask for absurd sizes. */
#define FP_MAX_HIDDEN	    65536u
#define FP_MAX_INTERMEDIATE 262144u
#define FP_MAX_LAYERS	    1024u
#define FP_MAX_HEADS	    1024u
#define FP_MAX_HEAD_DIM	    1024u
#define FP_MAX_VOCAB	    4194304u
#define FP_MAX_POSITIONS    16777216u
#define FP_MAX_CONFIG_BYTES (16u << 20)

enum fp_arch {
	FP_ARCH_LLAMA,	 /* LlamaForCausalLM */
	FP_ARCH_MISTRAL, /* MistralForCausalLM */
	FP_ARCH_QWEN2,	 /* Qwen2ForCausalLM */
	FP_ARCH_COUNT,
};

enum fp_rope_kind {
	FP_ROPE_DEFAULT, /* inv_freq[j] = theta^(-2j/head_dim) */
	FP_ROPE_LINEAR,	 /* inv_freq / factor (positions divided by factor) */
	FP_ROPE_LLAMA3,	 /* Llama 3.1 frequency-dependent scaling */
};

/* The seven prunable linears of a decoder block, in HF order. */
enum fp_linear {
	FP_LIN_Q,
	FP_LIN_K,
	FP_LIN_V,
	FP_LIN_O,
	FP_LIN_GATE,
	FP_LIN_UP,
	FP_LIN_DOWN,
	FP_LIN_COUNT,
};

/* Model hyper-parameters from config.json (plain data). */
struct fp_model_cfg {
	enum fp_arch arch;
	uint32_t hidden;	 /* hidden_size */
	uint32_t intermediate;	 /* intermediate_size */
	uint32_t nlayers;	 /* num_hidden_layers */
	uint32_t nheads;	 /* num_attention_heads */
	uint32_t nkv_heads;	 /* num_key_value_heads (divides nheads) */
	uint32_t head_dim;	 /* head_dim, default hidden / nheads; even */
	uint32_t vocab;		 /* vocab_size */
	uint32_t max_pos;	 /* max_position_embeddings */
	double rms_eps;		 /* rms_norm_eps */
	double rope_theta;	 /* rope_theta */
	bool tie_embeddings;	 /* tie_word_embeddings: lm_head = embed_tokens */
	bool bias[FP_LIN_COUNT]; /* which linears carry a .bias tensor */
	/*
	 * Sliding-window attention (Mistral; Qwen2 with use_sliding_window): in layers
	 * >= window_from_layer, query t attends to keys s with t - window < s <= t.
	 * window == 0: full causal attention everywhere.
	 */
	uint32_t window;
	uint32_t window_from_layer;
	struct {
		enum fp_rope_kind kind;
		double factor;		 /* linear, llama3 */
		double low_freq_factor;	 /* llama3 */
		double high_freq_factor; /* llama3 */
		double orig_max_pos;	 /* llama3: original_max_position_embeddings */
	} rope;
};

/* "LlamaForCausalLM", ... */
const char *fp_arch_name(enum fp_arch arch);

/* HF module path inside a block: "self_attn.q_proj" ... "mlp.down_proj". */
const char *fp_linear_name(enum fp_linear which);

/* Last component only: "q_proj" ... "down_proj". */
const char *fp_linear_short_name(enum fp_linear which);

/*
 * Parse and validate a config.json image of len bytes (need not be NUL-terminated); name is
 * the file name used in error messages ("DIR/config.json"). Fills *ret on success. Returns 0,
 * or -EINVAL / -ENOTSUP with fp_err_last() naming the file and the key. Pure; fuzzed.
 */
int fp_model_cfg_parse(const char *json, size_t len, const char *name, struct fp_model_cfg *ret);

/* Read and parse the file at path (see fp_model_cfg_parse). */
int fp_model_cfg_load(const char *path, struct fp_model_cfg *ret);

/* Shape of a linear weight: rows = out_features, cols = in_features. */
void fp_linear_shape(const struct fp_model_cfg *cfg, enum fp_linear which, size_t *ret_rows,
		     size_t *ret_cols);

/* Sliding window of layer `layer` (0 = full causal attention). */
uint32_t fp_layer_window(const struct fp_model_cfg *cfg, uint32_t layer);

/* RoPE inverse frequencies in double, rope_scaling applied: out has head_dim / 2 entries. */
void fp_rope_inv_freq(const struct fp_model_cfg *cfg, double *out);

struct fp_model;

/*
 * Open the model directory dir: parse config.json, open the safetensors, check every tensor
 * the forward pass needs. On success *ret is owned by the caller (fp_model_close). Returns 0
 * or a negative errno with fp_err_last() naming the file and key or tensor.
 */
int fp_model_open(const char *dir, struct fp_model **ret);

/* Free everything; NULL is fine. Blocks loaded from m must be freed first or after (they
 * own their memory), but must not be used with m afterwards. */
void fp_model_close(struct fp_model *m);

/* The parsed config; borrowed, valid until fp_model_close. */
const struct fp_model_cfg *fp_model_config(const struct fp_model *m);

/* The underlying safetensors files (to read or copy tensors); borrowed until close. */
const struct fp_st_model *fp_model_source(const struct fp_model *m);

/*
 * Upper bound on the scratch memory fp_block_forward keeps (bytes; default 1 GiB). The
 * forward pass runs the samples in groups of whole samples that fit; one sample always runs
 * whole even if it alone exceeds the bound.
 */
void fp_model_set_scratch_limit(struct fp_model *m, size_t bytes);

/*
 * One decoder block in f32 (plain data, owned by the caller after fp_block_load). The
 * weights of the linears that share an input are stacked so one sgemm serves them:
 * w[Q], w[K], w[V] are consecutive row ranges of one (qd + 2 kvd, hidden) matrix, and
 * w[GATE], w[UP] of one (2 intermediate, hidden) matrix. Biases likewise (zeros where a
 * linear of the group has no bias tensor).
 */
struct fp_block {
	uint32_t index;
	float *w[FP_LIN_COUNT]; /* (rows[i], cols[i]) each; modifiable */
	float *b[FP_LIN_COUNT]; /* (rows[i]) or NULL when the linear has no bias */
	size_t rows[FP_LIN_COUNT];
	size_t cols[FP_LIN_COUNT];
	float *attn_norm;  /* (hidden) input_layernorm.weight */
	float *mlp_norm;   /* (hidden) post_attention_layernorm.weight */
	bool qkv_bias;	   /* b[Q..V] stacked (qd + 2 kvd), zeros filled in */
	bool gate_up_bias; /* b[GATE], b[UP] stacked (2 intermediate) */
	float *mem;	   /* the one allocation behind every pointer above */
};

/*
 * Convert block i's weights to f32. On success *ret is owned by the caller (fp_block_free).
 * Returns 0, -ENOMEM, or -EINVAL for a bad index.
 */
int fp_block_load(struct fp_model *m, uint32_t i, struct fp_block **ret);

/* Free a block; NULL is fine. */
void fp_block_free(struct fp_block *blk);

/* Tell the kernel the mmap'd pages of block i may be dropped (fp_st_release on each). */
void fp_block_release_source(struct fp_model *m, uint32_t i);

/*
 * The modifiable f32 weight of one linear, (rows = out_features, cols = in_features)
 * row-major; borrowed from blk, valid until fp_block_free. Zeroing entries prunes them.
 */
float *fp_block_linear(struct fp_block *blk, enum fp_linear which, size_t *ret_rows,
		       size_t *ret_cols);

/*
 * Internal, for forward.c and eval.c only (the "fp__" prefix marks cross-file internals).
 */
struct fp__model_tensors {
	const struct fp_st_tensor *embed; /* (vocab, hidden) */
	const struct fp_st_tensor *head;  /* (vocab, hidden); == embed when tied */
	const float *final_norm;	  /* (hidden) model.norm.weight in f32 */
};
void fp__model_tensors(const struct fp_model *m, struct fp__model_tensors *ret);

/* RoPE tables for positions [0, len): cos and sin, each (len, head_dim / 2) f32, computed
 * in double. Borrowed; valid until the next call with a larger len or close. */
int fp__model_rope(struct fp_model *m, size_t len, const float **ret_cos, const float **ret_sin);

/* Scratch of at least bytes, 64-byte aligned, kept by the model between calls (contents not
 * preserved across calls). Borrowed; valid until the next call or close. */
void *fp__model_scratch(struct fp_model *m, size_t bytes);

/* The scratch limit set by fp_model_set_scratch_limit. */
size_t fp__model_scratch_limit(const struct fp_model *m);

/*
 * Convert rows [row0, row0 + nrows) of the 2-D float tensor t to f32 into out
 * (nrows, t->shape[1]). The caller has checked the range (shapes are checked at open).
 */
void fp__tensor_rows_f32(const struct fp_st_tensor *t, size_t row0, size_t nrows, float *out);

/*
 * Rows of t as f32 without copying when t is F32 and 4-byte aligned in the mapping, else
 * NULL (convert with fp__tensor_rows_f32).
 */
const float *fp__tensor_f32_direct(const struct fp_st_tensor *t);

#endif
