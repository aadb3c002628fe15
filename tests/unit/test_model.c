/*
 * model.c and the forward pass on tiny models built here:
 *  - config.json: good files with HF defaults, and hostile ones (unknown architecture, missing
 *    keys, wrong types, bad head counts, absurd sizes, unsupported rope_scaling), each error
 *    naming the file and the key;
 *  - tensor binding: missing, misshapen and wrongly typed tensors named in the error;
 *  - the block-by-block forward pass against a naive reference written with the _ref
 *    kernels: biases on every linear, F16 weights, linear RoPE scaling, sliding windows
 *    (Mistral everywhere, Qwen2 from max_window_layers), samples of unequal length, one
 *    sample per forward group, pruned (zeroed) weights, and the statistics and hook contract.
 */
#include "test.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "err.h"
#include "eval.h"
#include "forward.h"
#include "kernels.h"
#include "model.h"
#include "safetensors.h"
#include "stats.h"

#define TOL 1e-9

/* ---- config.json ---- */

#define LLAMA_BASE                                                                           \
	"\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "                   \
	"\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, " \
	"\"vocab_size\": 100"

static int parse(const char *json, struct fp_model_cfg *c)
{
	fp_err_clear();
	return fp_model_cfg_parse(json, strlen(json), "DIR/config.json", c);
}

static void test_cfg_defaults(void **state)
{
	struct fp_model_cfg c;

	(void)state;
	assert_int_equal(parse("{" LLAMA_BASE "}", &c), 0);
	assert_int_equal(c.arch, FP_ARCH_LLAMA);
	assert_int_equal(c.hidden, 64);
	assert_int_equal(c.intermediate, 128);
	assert_int_equal(c.nlayers, 2);
	assert_int_equal(c.nheads, 4);
	assert_int_equal(c.nkv_heads, 4); /* default = heads */
	assert_int_equal(c.head_dim, 16); /* default = hidden / heads */
	assert_int_equal(c.vocab, 100);
	assert_int_equal(c.max_pos, 2048);
	assert_true(c.rope_theta == 10000 && c.rms_eps == 1e-6);
	assert_false(c.tie_embeddings);
	assert_int_equal(c.window, 0);
	assert_int_equal(c.rope.kind, FP_ROPE_DEFAULT);
	for (int i = 0; i < FP_LIN_COUNT; i++)
		assert_false(c.bias[i]);

	assert_int_equal(parse("{" LLAMA_BASE ", \"num_key_value_heads\": 2, \"head_dim\": 8, "
			       "\"attention_bias\": true, \"tie_word_embeddings\": true, "
			       "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.5}, "
			       "\"rope_theta\": 500000.0, \"rms_norm_eps\": 1e-5, "
			       "\"hidden_act\": \"silu\"}",
			       &c),
			 0);
	assert_int_equal(c.nkv_heads, 2);
	assert_int_equal(c.head_dim, 8);
	assert_true(c.bias[FP_LIN_Q] && c.bias[FP_LIN_K] && c.bias[FP_LIN_V] && c.bias[FP_LIN_O]);
	assert_false(c.bias[FP_LIN_GATE] || c.bias[FP_LIN_UP] || c.bias[FP_LIN_DOWN]);
	assert_true(c.tie_embeddings);
	assert_int_equal(c.rope.kind, FP_ROPE_LINEAR);
	assert_true(c.rope.factor == 2.5 && c.rope_theta == 500000 && c.rms_eps == 1e-5);

	/* Mistral: sliding_window defaults to 4096, null turns it off */
	assert_int_equal(parse("{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 64, "
			       "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
			       "\"num_attention_heads\": 4, \"vocab_size\": 100}",
			       &c),
			 0);
	assert_true(c.arch == FP_ARCH_MISTRAL && c.window == 4096 && c.window_from_layer == 0);
	assert_int_equal(fp_layer_window(&c, 0), 4096);
	assert_int_equal(parse("{\"model_type\": \"mistral\", \"hidden_size\": 64, "
			       "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
			       "\"num_attention_heads\": 4, \"vocab_size\": 100, "
			       "\"sliding_window\": null}",
			       &c),
			 0);
	assert_true(c.arch == FP_ARCH_MISTRAL && c.window == 0);

	/* Qwen2: q/k/v biases; window only with use_sliding_window, from max_window_layers */
	assert_int_equal(parse("{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 64, "
			       "\"intermediate_size\": 128, \"num_hidden_layers\": 4, "
			       "\"num_attention_heads\": 4, \"vocab_size\": 100, "
			       "\"sliding_window\": 32, \"max_window_layers\": 2}",
			       &c),
			 0);
	assert_true(c.bias[FP_LIN_Q] && c.bias[FP_LIN_K] && c.bias[FP_LIN_V]);
	assert_false(c.bias[FP_LIN_O] || c.bias[FP_LIN_DOWN]);
	assert_int_equal(c.window, 0);
	assert_int_equal(parse("{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 64, "
			       "\"intermediate_size\": 128, \"num_hidden_layers\": 4, "
			       "\"num_attention_heads\": 4, \"vocab_size\": 100, "
			       "\"use_sliding_window\": true, \"sliding_window\": 32, "
			       "\"max_window_layers\": 2}",
			       &c),
			 0);
	assert_int_equal(fp_layer_window(&c, 1), 0);
	assert_int_equal(fp_layer_window(&c, 2), 32);

	/* llama3 rope scaling */
	assert_int_equal(parse("{" LLAMA_BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", "
			       "\"factor\": 8.0, \"low_freq_factor\": 1.0, \"high_freq_factor\": "
			       "4.0, \"original_max_position_embeddings\": 8192}}",
			       &c),
			 0);
	assert_int_equal(c.rope.kind, FP_ROPE_LLAMA3);
	assert_true(c.rope.factor == 8 && c.rope.low_freq_factor == 1 &&
		    c.rope.high_freq_factor == 4 && c.rope.orig_max_pos == 8192);
	assert_int_equal(
		parse("{" LLAMA_BASE ", \"rope_scaling\": {\"rope_type\": \"default\"}}", &c), 0);
	assert_int_equal(c.rope.kind, FP_ROPE_DEFAULT);

	/* not NUL-terminated: only len bytes are read */
	{
		const char *s = "{" LLAMA_BASE "}garbage";

		assert_int_equal(fp_model_cfg_parse(s, strlen(s) - 7, "x", &c), 0);
	}
}

struct bad_cfg {
	const char *json;
	const char *needle; /* must appear in the error besides the file name */
};

static const struct bad_cfg bad_cfgs[] = {
	{ "{\"architectures\": [\"GPT2LMHeadModel\"], \"hidden_size\": 64}",
	  "architecture 'GPT2LMHeadModel' is not supported (supported: LlamaForCausalLM, "
	  "MistralForCausalLM, Qwen2ForCausalLM)" },
	{ "{\"model_type\": \"gpt2\"}", "model_type 'gpt2' is not supported" },
	{ "{\"hidden_size\": 64}", "key 'architectures' is missing" },
	{ "{\"architectures\": \"LlamaForCausalLM\"}", "key 'architectures' must be an array" },
	{ "{\"architectures\": []}", "key 'architectures' is empty" },
	{ "{\"architectures\": [7]}", "key 'architectures[0]' must be a string" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"intermediate_size\": 128, "
	  "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 100}",
	  "key 'hidden_size' is missing" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
	  "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
	  "key 'vocab_size' is missing" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": \"64\"}",
	  "key 'hidden_size' must be an integer, not a string" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64.5}",
	  "key 'hidden_size' must be an integer" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": -64}",
	  "key 'hidden_size' = -64 is out of range" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 0}",
	  "key 'hidden_size' = 0 is out of range" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 1e400}",
	  "key 'hidden_size' must be an integer" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 1000000000}",
	  "key 'hidden_size' = 1000000000 is out of range [1, 65536]" },
	{ "{" LLAMA_BASE ", \"num_key_value_heads\": 2, \"num_key_value_heads\": 4}",
	  "key 'num_key_value_heads' appears 2 times" },
	{ "{" LLAMA_BASE
	  ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2, \"factor\": 3}}",
	  "key 'rope_scaling.factor' appears 2 times" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
	  "\"intermediate_size\": 128, \"num_hidden_layers\": 100000, "
	  "\"num_attention_heads\": 4, \"vocab_size\": 100}",
	  "key 'num_hidden_layers' = 100000 is out of range [1, 1024]" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
	  "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
	  "\"num_attention_heads\": 4, \"vocab_size\": 5000000}",
	  "key 'vocab_size' = 5000000 is out of range" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
	  "\"intermediate_size\": true, \"num_hidden_layers\": 2, "
	  "\"num_attention_heads\": 4, \"vocab_size\": 100}",
	  "key 'intermediate_size' must be an integer, not a boolean" },
	{ "{" LLAMA_BASE ", \"max_position_embeddings\": 99999999999}",
	  "key 'max_position_embeddings'" },
	{ "{" LLAMA_BASE ", \"num_key_value_heads\": 3}",
	  "key 'num_key_value_heads' = 3 does not divide 'num_attention_heads' = 4" },
	{ "{" LLAMA_BASE ", \"num_key_value_heads\": 8}", "key 'num_key_value_heads' = 8" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, "
	  "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
	  "\"num_attention_heads\": 3, \"vocab_size\": 100}",
	  "key 'hidden_size' = 64 is not a multiple of 'num_attention_heads' = 3" },
	{ "{" LLAMA_BASE ", \"head_dim\": 15}", "key 'head_dim' = 15 must be even" },
	{ "{" LLAMA_BASE ", \"head_dim\": 4096}", "key 'head_dim' = 4096 is out of range" },
	{ "{" LLAMA_BASE ", \"rms_norm_eps\": 0}", "key 'rms_norm_eps' = 0 is out of range" },
	{ "{" LLAMA_BASE ", \"rms_norm_eps\": \"1e-5\"}", "key 'rms_norm_eps' must be a number" },
	{ "{" LLAMA_BASE ", \"rope_theta\": -1}", "key 'rope_theta'" },
	{ "{" LLAMA_BASE ", \"tie_word_embeddings\": \"yes\"}",
	  "key 'tie_word_embeddings' must be true or false" },
	{ "{" LLAMA_BASE ", \"attention_bias\": 1}", "key 'attention_bias' must be true or false" },
	{ "{" LLAMA_BASE ", \"hidden_act\": \"gelu\"}",
	  "key 'hidden_act' = 'gelu' is not supported" },
	{ "{" LLAMA_BASE ", \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4}}",
	  "rope_scaling type 'yarn' is not supported (supported: default, linear, llama3)" },
	{ "{" LLAMA_BASE ", \"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 4}}",
	  "rope_scaling type 'dynamic' is not supported" },
	{ "{" LLAMA_BASE ", \"rope_scaling\": {\"factor\": 4}}",
	  "key 'rope_scaling.rope_type' is missing" },
	{ "{" LLAMA_BASE ", \"rope_scaling\": [1]}", "key 'rope_scaling' must be an object" },
	{ "{" LLAMA_BASE ", \"rope_scaling\": {\"type\": \"linear\"}}",
	  "key 'rope_scaling.factor' is missing" },
	{ "{" LLAMA_BASE ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 0}}",
	  "key 'rope_scaling.factor' = 0 is out of range" },
	{ "{" LLAMA_BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, "
	  "\"low_freq_factor\": 1, \"high_freq_factor\": 4}}",
	  "key 'rope_scaling.original_max_position_embeddings' is missing" },
	{ "{" LLAMA_BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, "
	  "\"low_freq_factor\": 4, \"high_freq_factor\": 4, "
	  "\"original_max_position_embeddings\": 8192}}",
	  "key 'rope_scaling.high_freq_factor' (4) must be greater than "
	  "'rope_scaling.low_freq_factor' (4)" },
	{ "{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 64, "
	  "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
	  "\"vocab_size\": 100, \"sliding_window\": 0}",
	  "key 'sliding_window' = 0 is out of range" },
	{ "{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 64, "
	  "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
	  "\"vocab_size\": 100, \"use_sliding_window\": \"true\"}",
	  "key 'use_sliding_window' must be true or false" },
	{ "[1, 2]", "not a JSON object" },
	{ "{\"architectures\": [\"LlamaForCausalLM\"], ", "not valid JSON" },
	{ "", "not valid JSON" },
};

static void test_cfg_bad(void **state)
{
	struct fp_model_cfg c;

	(void)state;
	for (size_t i = 0; i < sizeof(bad_cfgs) / sizeof(bad_cfgs[0]); i++) {
		const char *msg;
		int r = parse(bad_cfgs[i].json, &c);

		msg = fp_err_last();
		if (r >= 0 || !strstr(msg, "DIR/config.json: ") || !strstr(msg, bad_cfgs[i].needle))
			fail_msg("config %zu: r=%d, error '%s', want '%s'", i, r, msg,
				 bad_cfgs[i].needle);
	}
}

/* ---- tiny models on disk ---- */

struct tw {
	char name[96];
	size_t rows, cols; /* cols == 0: 1-D */
	float *v;	   /* exact stored values (rounded when stored as F16) */
};

struct tiny {
	char *dir;
	struct fp_model_cfg c;
	struct tw t[128];
	size_t n;
};

static uint64_t rng = 0xfeedface;

static float urand(void)
{
	return (float)((double)(fp_test_rand(&rng) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void add_tensor(struct tiny *tm, const char *name, size_t rows, size_t cols, float scale,
		       float offset)
{
	struct tw *t = &tm->t[tm->n++];
	size_t n = rows * (cols ? cols : 1);

	assert_true(tm->n <= sizeof(tm->t) / sizeof(tm->t[0]));
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->rows = rows;
	t->cols = cols;
	t->v = malloc(n * sizeof(float));
	assert_non_null(t->v);
	for (size_t i = 0; i < n; i++)
		t->v[i] = offset + scale * urand();
}

static float *find(const struct tiny *tm, const char *name)
{
	for (size_t i = 0; i < tm->n; i++)
		if (strcmp(tm->t[i].name, name) == 0)
			return tm->t[i].v;
	return NULL;
}

static float *layer_w(const struct tiny *tm, uint32_t l, enum fp_linear w, const char *suffix)
{
	char name[96];

	snprintf(name, sizeof(name), "model.layers.%u.%s.%s", l, fp_linear_name(w), suffix);
	return find(tm, name);
}

/* Every tensor of cfg with random values (uniform, scaled so activations stay O(1)). */
static void make_weights(struct tiny *tm)
{
	const struct fp_model_cfg *c = &tm->c;
	char name[96];

	add_tensor(tm, "model.embed_tokens.weight", c->vocab, c->hidden, 1.0f, 0);
	for (uint32_t l = 0; l < c->nlayers; l++) {
		snprintf(name, sizeof(name), "model.layers.%u.input_layernorm.weight", l);
		add_tensor(tm, name, c->hidden, 0, 0.2f, 1);
		snprintf(name, sizeof(name), "model.layers.%u.post_attention_layernorm.weight", l);
		add_tensor(tm, name, c->hidden, 0, 0.2f, 1);
		for (int w = 0; w < FP_LIN_COUNT; w++) {
			size_t rows, cols;

			fp_linear_shape(c, (enum fp_linear)w, &rows, &cols);
			snprintf(name, sizeof(name), "model.layers.%u.%s.weight", l,
				 fp_linear_name(w));
			add_tensor(tm, name, rows, cols, (float)sqrt(3.0 / (double)cols), 0);
			if (!c->bias[w])
				continue;
			snprintf(name, sizeof(name), "model.layers.%u.%s.bias", l,
				 fp_linear_name(w));
			add_tensor(tm, name, rows, 0, 0.3f, 0);
		}
	}
	add_tensor(tm, "model.norm.weight", c->hidden, 0, 0.2f, 1);
	if (!c->tie_embeddings)
		add_tensor(tm, "lm_head.weight", c->vocab, c->hidden, 0.3f, 0);
}

/* Mutations for the hostile-tensor tests. */
struct mutation {
	const char *skip;    /* leave this tensor out */
	const char *reshape; /* declare this one with shape (rows + 1, ...) */
	const char *retype;  /* declare this one as I32 */
};

static void write_model(struct tiny *tm, enum fp_dtype dt, const struct mutation *mu)
{
	struct fp_st_decl decls[128];
	struct fp_st_writer *w = NULL;
	size_t nd = 0;
	char *path = NULL;

	for (size_t i = 0; i < tm->n; i++) {
		struct tw *t = &tm->t[i];
		struct fp_st_decl *d;

		if (mu && mu->skip && strcmp(mu->skip, t->name) == 0)
			continue;
		d = &decls[nd++];
		memset(d, 0, sizeof(*d));
		d->name = t->name;
		d->dtype = dt;
		d->ndim = t->cols ? 2 : 1;
		d->shape[0] = t->rows;
		d->shape[1] = t->cols;
		if (mu && mu->reshape && strcmp(mu->reshape, t->name) == 0) {
			/* same byte count, different shape */
			d->shape[0] = 1;
			d->ndim = 1;
			d->shape[0] = t->rows * (t->cols ? t->cols : 1);
			if (!t->cols) {
				d->ndim = 2;
				d->shape[0] = 1;
				d->shape[1] = t->rows;
			}
		}
		if (mu && mu->retype && strcmp(mu->retype, t->name) == 0)
			d->dtype = dt == FP_DT_F32 ? FP_DT_I32 : FP_DT_I16;
	}
	assert_true(asprintf(&path, "%s/model.safetensors", tm->dir) > 0);
	assert_int_equal(fp_st_writer_open(path, decls, nd, NULL, &w), 0);
	for (size_t i = 0; i < tm->n; i++) {
		struct tw *t = &tm->t[i];
		size_t n = t->rows * (t->cols ? t->cols : 1);

		if (mu && mu->skip && strcmp(mu->skip, t->name) == 0)
			continue;
		if (dt == FP_DT_F32) {
			assert_int_equal(fp_st_writer_write(w, t->v, n * sizeof(float)), 0);
			continue;
		}
		for (size_t j = 0; j < n; j++) {
			uint16_t h = fp_f32_to_f16(t->v[j]);

			t->v[j] = fp_f16_to_f32(h); /* the reference uses the stored value */
			assert_int_equal(fp_st_writer_write(w, &h, sizeof(h)), 0);
		}
	}
	assert_int_equal(fp_st_writer_close(w), 0);
	free(path);
}

static void tiny_new(struct tiny *tm, const char *json, enum fp_dtype dt, const struct mutation *mu)
{
	char *p;

	memset(tm, 0, sizeof(*tm));
	tm->dir = fp_test_mkdtemp();
	if (fp_model_cfg_parse(json, strlen(json), "test", &tm->c) < 0)
		fail_msg("tiny config: %s", fp_err_last());
	p = fp_test_write_file(tm->dir, "config.json", json, strlen(json));
	free(p);
	make_weights(tm);
	write_model(tm, dt, mu);
}

static void tiny_free(struct tiny *tm)
{
	for (size_t i = 0; i < tm->n; i++)
		free(tm->t[i].v);
	fp_test_rmtree(tm->dir);
	free(tm->dir);
}

#define TINY_LLAMA                                                                          \
	"{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 24, "                 \
	"\"intermediate_size\": 40, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, " \
	"\"num_key_value_heads\": 2, \"head_dim\": 6, \"vocab_size\": 37, "                 \
	"\"attention_bias\": true, \"mlp_bias\": true, \"rms_norm_eps\": 1e-5, "            \
	"\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}, \"rope_theta\": 100.0}"

#define TINY_MISTRAL                                                                        \
	"{\"architectures\": [\"MistralForCausalLM\"], \"hidden_size\": 16, "               \
	"\"intermediate_size\": 28, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, " \
	"\"num_key_value_heads\": 1, \"vocab_size\": 29, \"sliding_window\": 5, "           \
	"\"tie_word_embeddings\": true}"

#define TINY_QWEN2                                                                          \
	"{\"architectures\": [\"Qwen2ForCausalLM\"], \"hidden_size\": 16, "                 \
	"\"intermediate_size\": 20, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, " \
	"\"vocab_size\": 31, \"use_sliding_window\": true, \"sliding_window\": 4, "         \
	"\"max_window_layers\": 1, \"rope_theta\": 1000000.0}"

/* ---- hostile tensors ---- */

static void expect_open_error(struct tiny *tm, const char *needle)
{
	struct fp_model *m = NULL;
	int r;

	fp_err_clear();
	r = fp_model_open(tm->dir, &m);
	if (r >= 0 || !strstr(fp_err_last(), tm->dir) || !strstr(fp_err_last(), needle))
		fail_msg("r=%d error '%s', want '%s'", r, fp_err_last(), needle);
	assert_null(m);
}

static void test_tensors_bad(void **state)
{
	static const struct {
		const char *json;
		struct mutation mu;
		const char *needle;
	} cases[] = {
		{ TINY_LLAMA,
		  { .skip = "model.layers.1.mlp.up_proj.weight" },
		  "tensor 'model.layers.1.mlp.up_proj.weight' is missing" },
		{ TINY_LLAMA,
		  { .skip = "model.layers.0.self_attn.o_proj.bias" },
		  "tensor 'model.layers.0.self_attn.o_proj.bias' is missing" },
		{ TINY_LLAMA, { .skip = "lm_head.weight" }, "tensor 'lm_head.weight' is missing" },
		{ TINY_LLAMA,
		  { .skip = "model.norm.weight" },
		  "tensor 'model.norm.weight' is missing" },
		{ TINY_QWEN2,
		  { .skip = "model.layers.1.self_attn.k_proj.bias" },
		  "tensor 'model.layers.1.self_attn.k_proj.bias' is missing" },
		{ TINY_MISTRAL,
		  { .skip = "model.embed_tokens.weight" },
		  "tensor 'model.embed_tokens.weight' is missing" },
		{ TINY_LLAMA,
		  { .reshape = "model.layers.0.self_attn.k_proj.weight" },
		  "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [288], expected [12, "
		  "24]" },
		{ TINY_LLAMA,
		  { .reshape = "model.layers.1.post_attention_layernorm.weight" },
		  "tensor 'model.layers.1.post_attention_layernorm.weight' has shape [1, 24], "
		  "expected [24]" },
		{ TINY_MISTRAL,
		  { .retype = "model.layers.1.mlp.down_proj.weight" },
		  "tensor 'model.layers.1.mlp.down_proj.weight' has dtype I32, expected F32, F16 "
		  "or "
		  "BF16" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tiny tm;

		tiny_new(&tm, cases[i].json, FP_DT_F32, &cases[i].mu);
		expect_open_error(&tm, cases[i].needle);
		tiny_free(&tm);
	}
}

static void test_open_errors(void **state)
{
	struct tiny tm;
	struct fp_model *m = NULL;
	char *p;

	(void)state;
	tiny_new(&tm, TINY_LLAMA, FP_DT_F32, NULL);
	/* a bad config.json names the file */
	p = fp_test_write_file(tm.dir, "config.json", "{\"architectures\": [\"X\"]}",
			       strlen("{\"architectures\": [\"X\"]}"));
	fp_err_clear();
	assert_true(fp_model_open(tm.dir, &m) < 0);
	assert_non_null(strstr(fp_err_last(), p));
	assert_non_null(strstr(fp_err_last(), "architecture 'X' is not supported"));
	assert_int_equal(remove(p), 0);
	fp_err_clear();
	assert_true(fp_model_open(tm.dir, &m) < 0);
	assert_non_null(strstr(fp_err_last(), "config.json"));
	assert_null(m);
	free(p);
	tiny_free(&tm);
	/* a directory without weights */
	p = fp_test_mkdtemp();
	free(fp_test_write_file(p, "config.json", TINY_MISTRAL, strlen(TINY_MISTRAL)));
	assert_true(fp_model_open(p, &m) < 0);
	assert_null(m);
	fp_test_rmtree(p);
	free(p);
}

/* ---- forward pass vs a naive reference ---- */

struct ref_out {
	float **hidden;		       /* (nlayers) x (ntokens, hidden) */
	double *sumsq[2][FP_IN_COUNT]; /* layer 0 and 1, per input */
	float *logits;		       /* (ntokens, vocab) */
	double *nll;		       /* (nsamples) */
};

static float *zalloc(size_t n)
{
	float *p = calloc(n ? n : 1, sizeof(float));

	assert_non_null(p);
	return p;
}

static void add_sq(double *acc, const float *x, size_t rows, size_t cols)
{
	for (size_t t = 0; t < rows; t++)
		for (size_t j = 0; j < cols; j++)
			acc[j] += (double)x[t * cols + j] * x[t * cols + j];
}

static void add_bias_ref(float *y, const float *b, size_t rows, size_t cols)
{
	if (b)
		for (size_t t = 0; t < rows; t++)
			for (size_t j = 0; j < cols; j++)
				y[t * cols + j] += b[j];
}

static void lin_ref(const struct tiny *tm, uint32_t l, enum fp_linear w, const float *x, size_t T,
		    float *y)
{
	size_t rows, cols;

	fp_linear_shape(&tm->c, w, &rows, &cols);
	fp_k_linear_ref(y, x, layer_w(tm, l, w, "weight"), T, cols, rows, 0);
	add_bias_ref(y, layer_w(tm, l, w, "bias"), T, rows);
}

/* One block on one sample of T tokens: x (T, H) in place. */
static void ref_block(const struct tiny *tm, uint32_t l, float *x, size_t T, struct ref_out *ro)
{
	const struct fp_model_cfg *c = &tm->c;
	size_t H = c->hidden, hd = c->head_dim, qd = c->nheads * hd, kvd = c->nkv_heads * hd;
	size_t inter = c->intermediate;
	float *xn = zalloc(T * H), *q = zalloc(T * qd), *k = zalloc(T * kvd), *v = zalloc(T * kvd);
	float *att = zalloc(T * qd), *o = zalloc(T * H), *g = zalloc(T * inter);
	float *u = zalloc(T * inter), *mm = zalloc(T * inter), *d = zalloc(T * H);
	double inv[512];
	char name[96];

	fp_rope_inv_freq(c, inv);
	snprintf(name, sizeof(name), "model.layers.%u.input_layernorm.weight", l);
	fp_k_rmsnorm_ref(xn, x, find(tm, name), T, H, c->rms_eps);
	add_sq(ro->sumsq[l][FP_IN_ATTN], xn, T, H);
	lin_ref(tm, l, FP_LIN_Q, xn, T, q);
	lin_ref(tm, l, FP_LIN_K, xn, T, k);
	lin_ref(tm, l, FP_LIN_V, xn, T, v);
	fp_k_rope_ref(q, qd, T, c->nheads, hd, 0, inv);
	fp_k_rope_ref(k, kvd, T, c->nkv_heads, hd, 0, inv);
	for (size_t h = 0; h < c->nheads; h++) {
		size_t kvh = h / (c->nheads / c->nkv_heads);

		fp_k_attention_ref(att + h * hd, qd, q + h * hd, qd, k + kvh * hd, v + kvh * hd,
				   kvd, T, hd, fp_layer_window(c, l),
				   (float)(1 / sqrt((double)hd)));
	}
	add_sq(ro->sumsq[l][FP_IN_O], att, T, qd);
	lin_ref(tm, l, FP_LIN_O, att, T, o);
	for (size_t i = 0; i < T * H; i++)
		x[i] += o[i];
	snprintf(name, sizeof(name), "model.layers.%u.post_attention_layernorm.weight", l);
	fp_k_rmsnorm_ref(xn, x, find(tm, name), T, H, c->rms_eps);
	add_sq(ro->sumsq[l][FP_IN_MLP], xn, T, H);
	lin_ref(tm, l, FP_LIN_GATE, xn, T, g);
	lin_ref(tm, l, FP_LIN_UP, xn, T, u);
	fp_k_silu_mul_ref(mm, inter, g, u, inter, T, inter);
	add_sq(ro->sumsq[l][FP_IN_DOWN], mm, T, inter);
	lin_ref(tm, l, FP_LIN_DOWN, mm, T, d);
	for (size_t i = 0; i < T * H; i++)
		x[i] += d[i];
	free(xn);
	free(q);
	free(k);
	free(v);
	free(att);
	free(o);
	free(g);
	free(u);
	free(mm);
	free(d);
}

static void ref_forward(const struct tiny *tm, const struct fp_dataset *ds, struct ref_out *ro)
{
	const struct fp_model_cfg *c = &tm->c;
	const float *emb = find(tm, "model.embed_tokens.weight");
	const float *head = c->tie_embeddings ? emb : find(tm, "lm_head.weight");

	ro->hidden = calloc(c->nlayers, sizeof(float *));
	assert_non_null(ro->hidden);
	for (uint32_t l = 0; l < c->nlayers; l++)
		ro->hidden[l] = zalloc(ds->ntokens * c->hidden);
	for (uint32_t l = 0; l < 2; l++)
		for (int i = 0; i < FP_IN_COUNT; i++) {
			ro->sumsq[l][i] = calloc(fp_input_dim(c, (enum fp_input)i), sizeof(double));
			assert_non_null(ro->sumsq[l][i]);
		}
	ro->logits = zalloc(ds->ntokens * c->vocab);
	ro->nll = calloc(ds->nsamples, sizeof(double));
	for (size_t s = 0; s < ds->nsamples; s++) {
		size_t T = ds->len[s], off = ds->off[s];
		float *x = zalloc(T * c->hidden), *xf = zalloc(T * c->hidden);
		float *lg = ro->logits + off * c->vocab;

		for (size_t t = 0; t < T; t++)
			memcpy(x + t * c->hidden, emb + (size_t)ds->ids[off + t] * c->hidden,
			       c->hidden * sizeof(float));
		for (uint32_t l = 0; l < c->nlayers; l++) {
			ref_block(tm, l, x, T, ro);
			memcpy(ro->hidden[l] + off * c->hidden, x, T * c->hidden * sizeof(float));
		}
		fp_k_rmsnorm_ref(xf, x, find(tm, "model.norm.weight"), T, c->hidden, c->rms_eps);
		fp_k_linear_ref(lg, xf, head, T, c->hidden, c->vocab, 0);
		for (size_t t = 0; t + 1 < T; t++) {
			double mx = -INFINITY, sum = 0;

			for (size_t j = 0; j < c->vocab; j++)
				mx = fmax(mx, lg[t * c->vocab + j]);
			for (size_t j = 0; j < c->vocab; j++)
				sum += exp(lg[t * c->vocab + j] - mx);
			ro->nll[s] += log(sum) + mx - lg[t * c->vocab + ds->ids[off + t + 1]];
		}
		if (T > 1)
			ro->nll[s] /= (double)(T - 1);
		free(x);
		free(xf);
	}
}

static void ref_free(const struct tiny *tm, struct ref_out *ro)
{
	for (uint32_t l = 0; l < tm->c.nlayers; l++)
		free(ro->hidden[l]);
	free(ro->hidden);
	for (int l = 0; l < 2; l++)
		for (int i = 0; i < FP_IN_COUNT; i++)
			free(ro->sumsq[l][i]);
	free(ro->logits);
	free(ro->nll);
}

static void make_dataset(struct fp_dataset *ds, const uint32_t *lens, size_t n, uint32_t vocab)
{
	memset(ds, 0, sizeof(*ds));
	ds->nsamples = n;
	ds->len = calloc(n, sizeof(uint32_t));
	ds->off = calloc(n, sizeof(size_t));
	for (size_t i = 0; i < n; i++) {
		ds->len[i] = lens[i];
		ds->off[i] = ds->ntokens;
		ds->ntokens += lens[i];
		ds->seqlen = lens[i] > ds->seqlen ? lens[i] : ds->seqlen;
	}
	ds->ids = calloc(ds->ntokens, sizeof(int32_t));
	assert_true(ds->len && ds->off && ds->ids);
	for (size_t i = 0; i < ds->ntokens; i++)
		ds->ids[i] = (int32_t)(fp_test_rand(&rng) % vocab);
}

static void free_dataset(struct fp_dataset *ds)
{
	free(ds->len);
	free(ds->off);
	free(ds->ids);
}

static void check(const char *what, const float *got, const float *want, size_t n)
{
	double e = fp_test_nmse(got, want, n);

	if (!(e <= TOL))
		fail_msg("%s: NMSE %.3g", what, e);
}

struct hook_count {
	int calls[FP_IN_COUNT];
	size_t rows[FP_IN_COUNT];
	size_t nseq[FP_IN_COUNT];
	struct fp_stats *st;
	int fail_with;
};

static int counting_hook(void *ctx, const struct fp_hook_batch *b)
{
	struct hook_count *hc = ctx;

	hc->calls[b->input]++;
	hc->rows[b->input] += b->rows;
	hc->nseq[b->input] += b->nseq;
	if (hc->fail_with)
		return hc->fail_with;
	return fp_stats_hook(hc->st, b);
}

/* Run the model through fp_block_forward with stats; compare everything with ro. */
static void compare_forward(struct fp_model *m, const struct tiny *tm, const struct fp_dataset *ds,
			    const struct ref_out *ro, bool prune_q0)
{
	const struct fp_model_cfg *c = fp_model_config(m);
	size_t n = ds->ntokens * c->hidden;
	float *a = zalloc(n), *b = zalloc(n), *logits = zalloc(ds->ntokens * c->vocab);
	double *nll = calloc(ds->nsamples, sizeof(double));

	assert_int_equal(fp_embed(m, ds, a), 0);
	for (uint32_t l = 0; l < c->nlayers; l++) {
		struct fp_block *blk = NULL;
		struct hook_count hc = { 0 };
		float *t;

		assert_int_equal(fp_block_load(m, l, &blk), 0);
		assert_int_equal(fp_stats_new(c, l, 0, &hc.st), 0);
		if (prune_q0 && l == 0) {
			size_t rows, cols;
			float *w = fp_block_linear(blk, FP_LIN_Q, &rows, &cols);

			assert_int_equal(rows, (size_t)c->nheads * c->head_dim);
			assert_int_equal(cols, c->hidden);
			for (size_t i = 0; i < rows * cols; i += 2)
				w[i] = 0;
			w = fp_block_linear(blk, FP_LIN_DOWN, &rows, &cols);
			assert_true(rows == c->hidden && cols == c->intermediate);
			for (size_t j = 0; j < cols; j++)
				w[3 * cols + j] = 0;
		}
		assert_int_equal(fp_block_forward(m, blk, ds, a, b, counting_hook, &hc), 0);
		check("hidden", b, ro->hidden[l], n);
		for (int w = 0; w < FP_LIN_COUNT; w++) {
			enum fp_input in = fp_linear_input((enum fp_linear)w);
			size_t dim;
			const double *ss = fp_stats_sumsq(hc.st, (enum fp_linear)w, &dim);
			float *scaler = zalloc(dim);

			assert_int_equal(dim, fp_input_dim(c, in));
			assert_null(fp_stats_xtx(hc.st, (enum fp_linear)w, NULL));
			assert_int_equal(fp_stats_scaler_row(hc.st, (enum fp_linear)w, scaler), 0);
			for (size_t j = 0; j < dim; j++) {
				assert_true(fabs(ss[j] - ro->sumsq[l][in][j]) <=
					    1e-5 * (1 + ro->sumsq[l][in][j]));
				assert_true(
					fabsf(scaler[j] - (float)(ss[j] / (double)ds->nsamples)) <=
					1e-6f * (1 + scaler[j]));
			}
			free(scaler);
		}
		for (int i = 0; i < FP_IN_COUNT; i++) {
			assert_true(hc.calls[i] >= 1);
			assert_int_equal(hc.rows[i], ds->ntokens);
			assert_int_equal(hc.nseq[i], ds->nsamples);
		}
		fp_stats_free(hc.st);
		fp_block_free(blk);
		t = a;
		a = b;
		b = t;
	}
	assert_int_equal(fp_head_logits(m, a, ds->ntokens, logits), 0);
	check("logits", logits, ro->logits, ds->ntokens * c->vocab);
	assert_int_equal(fp_head_nll(m, a, ds, nll), 0);
	for (size_t s = 0; s < ds->nsamples; s++)
		assert_true(fabs(nll[s] - ro->nll[s]) <= 1e-5 * (1 + ro->nll[s]));
	free(a);
	free(b);
	free(logits);
	free(nll);
	(void)tm;
}

static void forward_case(const char *json, enum fp_dtype dt, const uint32_t *lens, size_t ns)
{
	struct tiny tm;
	struct fp_model *m = NULL;
	struct fp_dataset ds;
	struct ref_out ro = { 0 };
	struct fp_eval_result res;
	double tot = 0;
	uint64_t ntgt = 0;

	tiny_new(&tm, json, dt, NULL);
	if (fp_model_open(tm.dir, &m) < 0)
		fail_msg("open: %s", fp_err_last());
	make_dataset(&ds, lens, ns, tm.c.vocab);
	ref_forward(&tm, &ds, &ro);
	compare_forward(m, &tm, &ds, &ro, false);
	/* one sample per forward group: same numbers, hooks called once per group */
	fp_model_set_scratch_limit(m, 1);
	compare_forward(m, &tm, &ds, &ro, false);
	fp_model_set_scratch_limit(m, (size_t)1 << 30);

	/* token-weighted perplexity over windows of unequal length */
	for (size_t s = 0; s < ns; s++) {
		tot += ro.nll[s] * (double)(lens[s] - 1);
		ntgt += lens[s] - 1;
	}
	assert_int_equal(fp_eval_perplexity(m, &ds, NULL, &res), 0);
	assert_int_equal(res.windows, ns);
	assert_int_equal(res.tokens, ntgt);
	assert_true(fabs(res.nll - tot) <= 1e-5 * tot);
	assert_true(fabs(res.ppl - exp(tot / (double)ntgt)) <= 1e-5 * res.ppl);
	ref_free(&tm, &ro);

	/* pruning: zero weights in the loaded block and in the reference alike */
	{
		float *wq = layer_w(&tm, 0, FP_LIN_Q, "weight");
		float *wd = layer_w(&tm, 0, FP_LIN_DOWN, "weight");
		size_t rows, cols;

		fp_linear_shape(&tm.c, FP_LIN_Q, &rows, &cols);
		for (size_t i = 0; i < rows * cols; i += 2)
			wq[i] = 0;
		fp_linear_shape(&tm.c, FP_LIN_DOWN, &rows, &cols);
		for (size_t j = 0; j < cols; j++)
			wd[3 * cols + j] = 0;
		memset(&ro, 0, sizeof(ro));
		ref_forward(&tm, &ds, &ro);
		compare_forward(m, &tm, &ds, &ro, true);
		ref_free(&tm, &ro);
	}
	free_dataset(&ds);
	fp_model_close(m);
	tiny_free(&tm);
}

static void test_forward_llama_bias_f16(void **state)
{
	static const uint32_t lens[] = { 9, 14, 3 };

	(void)state;
	forward_case(TINY_LLAMA, FP_DT_F16, lens, 3);
}

static void test_forward_mistral_window(void **state)
{
	static const uint32_t lens[] = { 13, 1, 7, 2 };

	(void)state;
	forward_case(TINY_MISTRAL, FP_DT_F32, lens, 4);
}

static void test_forward_qwen2_window_layers(void **state)
{
	/* longer than FP_ATTN_TILE: the tiled attention meets the window */
	static const uint32_t lens[] = { 140, 6 };

	(void)state;
	forward_case(TINY_QWEN2, FP_DT_F32, lens, 2);
}

/* The window must matter: the same model without it gives different outputs. */
static void test_window_matters(void **state)
{
	static const uint32_t lens[] = { 12 };
	struct tiny tm;
	struct fp_dataset ds;
	struct ref_out with = { 0 }, without = { 0 };

	(void)state;
	tiny_new(&tm, TINY_MISTRAL, FP_DT_F32, NULL);
	make_dataset(&ds, lens, 1, tm.c.vocab);
	ref_forward(&tm, &ds, &with);
	tm.c.window = 0;
	ref_forward(&tm, &ds, &without);
	/* rows 0..4 see at most 5 keys either way; later rows differ */
	assert_true(fp_test_nmse(with.hidden[0], without.hidden[0], 5 * tm.c.hidden) < 1e-12);
	assert_true(fp_test_nmse(with.hidden[0], without.hidden[0], 12 * tm.c.hidden) > 1e-6);
	ref_free(&tm, &with);
	ref_free(&tm, &without);
	free_dataset(&ds);
	tiny_free(&tm);
}

static void test_forward_errors(void **state)
{
	static const uint32_t lens[] = { 4, 5 };
	struct tiny tm;
	struct fp_model *m = NULL;
	struct fp_dataset ds;
	struct fp_block *blk = NULL;
	struct hook_count hc = { .fail_with = -ECANCELED };
	struct fp_eval_result res;
	float *a, *b;

	(void)state;
	tiny_new(&tm, TINY_MISTRAL, FP_DT_F32, NULL);
	assert_int_equal(fp_model_open(tm.dir, &m), 0);
	make_dataset(&ds, lens, 2, tm.c.vocab);
	a = zalloc(ds.ntokens * tm.c.hidden);
	b = zalloc(ds.ntokens * tm.c.hidden);
	assert_int_equal(fp_block_load(m, 1, &blk), 0);
	assert_int_equal(blk->index, 1);
	assert_true(fp_block_load(m, 2, &blk) < 0); /* blk untouched */
	assert_int_equal(blk->index, 1);

	/* hook error aborts the pass */
	assert_int_equal(fp_embed(m, &ds, a), 0);
	assert_int_equal(fp_block_forward(m, blk, &ds, a, b, counting_hook, &hc), -ECANCELED);
	assert_int_equal(hc.calls[FP_IN_ATTN], 1);
	assert_int_equal(hc.calls[FP_IN_O], 0);
	/* statistics of another block refuse the batch */
	assert_int_equal(fp_stats_new(&tm.c, 0, 0, &hc.st), 0);
	hc.fail_with = 0;
	fp_err_clear();
	assert_int_equal(fp_block_forward(m, blk, &ds, a, b, counting_hook, &hc), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "block"));
	fp_stats_free(hc.st);

	/* in and out may not overlap */
	assert_int_equal(fp_block_forward(m, blk, &ds, a, a + tm.c.hidden, NULL, NULL), -EINVAL);
	assert_int_equal(fp_block_forward(m, blk, &ds, a, a, NULL, NULL), -EINVAL);
	/* token id out of range */
	ds.ids[6] = (int32_t)tm.c.vocab;
	fp_err_clear();
	assert_int_equal(fp_embed(m, &ds, a), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "sample 1 position 2"));
	ds.ids[6] = -1;
	assert_int_equal(fp_embed(m, &ds, a), -EINVAL);
	ds.ids[6] = 0;
	/* samples not back to back */
	ds.off[1] = 5;
	assert_int_equal(fp_embed(m, &ds, a), -EINVAL);
	assert_int_equal(fp_block_forward(m, blk, &ds, a, b, NULL, NULL), -EINVAL);
	ds.off[1] = 4;
	ds.ntokens = 8;
	assert_int_equal(fp_block_forward(m, blk, &ds, a, b, NULL, NULL), -EINVAL);
	ds.ntokens = 9;
	/* nothing to predict */
	ds.len[0] = 1;
	ds.len[1] = 1;
	ds.off[1] = 1;
	ds.ntokens = 2;
	fp_err_clear();
	assert_int_equal(fp_eval_perplexity(m, &ds, NULL, &res), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "no window"));

	fp_block_free(blk);
	free(a);
	free(b);
	free_dataset(&ds);
	fp_model_close(m);
	tiny_free(&tm);
}

static void test_stats_xtx(void **state)
{
	struct fp_model_cfg c;
	struct fp_stats *st = NULL;
	float x[3 * 16];
	size_t n;
	const float *xtx;
	struct fp_hook_batch hb = {
		.block = 3, .input = FP_IN_ATTN, .x = x, .rows = 3, .cols = 16, .nseq = 1
	};

	(void)state;
	assert_int_equal(parse(TINY_MISTRAL, &c), 0);
	assert_int_equal(fp_stats_new(&c, 3, FP_STATS_XTX, &st), 0);
	for (size_t i = 0; i < 3 * 16; i++)
		x[i] = urand();
	assert_int_equal(fp_stats_scaler_row(st, FP_LIN_K, (float[16]){ 0 }), -ENODATA);
	assert_int_equal(fp_stats_hook(st, &hb), 0);
	assert_int_equal(fp_stats_hook(st, &hb), 0);
	xtx = fp_stats_xtx(st, FP_LIN_V, &n);
	assert_int_equal(n, 16);
	for (size_t i = 0; i < 16; i++)
		for (size_t j = 0; j < 16; j++) {
			double want = 0;

			for (size_t t = 0; t < 3; t++)
				want += 2.0 * x[t * 16 + i] * x[t * 16 + j];
			assert_true(fabs(xtx[i * 16 + j] - want) < 1e-5);
		}
	assert_int_equal(fp_stats_nseq(st, FP_LIN_Q), 2);
	assert_int_equal(fp_stats_ntokens(st, FP_LIN_Q), 6);
	assert_int_equal(fp_stats_nseq(st, FP_LIN_O), 0);
	/* wrong width */
	hb.cols = 15;
	assert_int_equal(fp_stats_hook(st, &hb), -EINVAL);
	fp_stats_reset(st);
	assert_int_equal(fp_stats_nseq(st, FP_LIN_Q), 0);
	assert_true(fp_stats_sumsq(st, FP_LIN_Q, NULL)[0] == 0);
	fp_stats_free(st);
}

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(fp_linear_name(FP_LIN_Q), "self_attn.q_proj");
	assert_string_equal(fp_linear_name(FP_LIN_DOWN), "mlp.down_proj");
	assert_string_equal(fp_linear_short_name(FP_LIN_GATE), "gate_proj");
	assert_string_equal(fp_arch_name(FP_ARCH_QWEN2), "Qwen2ForCausalLM");
	assert_int_equal(fp_linear_input(FP_LIN_K), FP_IN_ATTN);
	assert_int_equal(fp_linear_input(FP_LIN_O), FP_IN_O);
	assert_int_equal(fp_linear_input(FP_LIN_UP), FP_IN_MLP);
	assert_int_equal(fp_linear_input(FP_LIN_DOWN), FP_IN_DOWN);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cfg_defaults),
		cmocka_unit_test(test_cfg_bad),
		cmocka_unit_test(test_tensors_bad),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_forward_llama_bias_f16),
		cmocka_unit_test(test_forward_mistral_window),
		cmocka_unit_test(test_forward_qwen2_window_layers),
		cmocka_unit_test(test_window_matters),
		cmocka_unit_test(test_forward_errors),
		cmocka_unit_test(test_stats_xtx),
		cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
