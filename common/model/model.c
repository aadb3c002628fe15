/*
 * config.json parsing, tensor binding and per-block f32 conversion (see model.h).
 */
#include "model.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "alloc.h"
#include "dtype.h"
#include "err.h"
#include "fileio.h"

#define DEFAULT_SCRATCH_LIMIT ((size_t)1 << 30)

static const char *const arch_names[FP_ARCH_COUNT] = {
	[FP_ARCH_LLAMA] = "LlamaForCausalLM",
	[FP_ARCH_MISTRAL] = "MistralForCausalLM",
	[FP_ARCH_QWEN2] = "Qwen2ForCausalLM",
};

/* model_type values, for configs without "architectures". */
static const char *const arch_model_types[FP_ARCH_COUNT] = {
	[FP_ARCH_LLAMA] = "llama",
	[FP_ARCH_MISTRAL] = "mistral",
	[FP_ARCH_QWEN2] = "qwen2",
};

static const char *const linear_names[FP_LIN_COUNT] = {
	"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
	"mlp.gate_proj",    "mlp.up_proj",	"mlp.down_proj",
};

const char *fp_arch_name(enum fp_arch arch)
{
	return (unsigned)arch < FP_ARCH_COUNT ? arch_names[arch] : "?";
}

const char *fp_linear_name(enum fp_linear which)
{
	return (unsigned)which < FP_LIN_COUNT ? linear_names[which] : "?";
}

const char *fp_linear_short_name(enum fp_linear which)
{
	const char *s = fp_linear_name(which);
	const char *dot = strchr(s, '.');

	return dot ? dot + 1 : s;
}

/* ---- config.json ---- */

static const char *json_type(const cJSON *v)
{
	if (cJSON_IsNull(v))
		return "null";
	if (cJSON_IsBool(v))
		return "a boolean";
	if (cJSON_IsNumber(v))
		return "a number";
	if (cJSON_IsString(v))
		return "a string";
	if (cJSON_IsArray(v))
		return "an array";
	if (cJSON_IsObject(v))
		return "an object";
	return "invalid";
}

/* Member key of obj, or NULL when absent or JSON null (both mean "use the default"). */
static const cJSON *member(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

	return v && !cJSON_IsNull(v) ? v : NULL;
}

/*
 * Integer key in [min, max]. path is the key's full name for messages ("rope_scaling.factor").
 * A missing key is an error when required, else *ret = def.
 */
static int get_u32(const cJSON *obj, const char *key, const char *path, const char *name,
		   bool required, uint32_t def, uint32_t min, uint32_t max, uint32_t *ret)
{
	const cJSON *v = member(obj, key);
	double d;

	if (!v) {
		if (required)
			return fp_err_detail(-EINVAL, "%s: key '%s' is missing", name, path);
		*ret = def;
		return 0;
	}
	if (!cJSON_IsNumber(v))
		return fp_err_detail(-EINVAL, "%s: key '%s' must be an integer, not %s", name, path,
				     json_type(v));
	d = v->valuedouble;
	if (!isfinite(d) || d != floor(d))
		return fp_err_detail(-EINVAL, "%s: key '%s' must be an integer, not %g", name, path,
				     d);
	if (d < (double)min || d > (double)max)
		return fp_err_detail(
			-EINVAL, "%s: key '%s' = %.0f is out of range [%" PRIu32 ", %" PRIu32 "]",
			name, path, d, min, max);
	*ret = (uint32_t)d;
	return 0;
}

/* Finite number key in (min, max] (lo_open) or [min, max]. */
static int get_double(const cJSON *obj, const char *key, const char *path, const char *name,
		      bool required, double def, double min, double max, bool lo_open, double *ret)
{
	const cJSON *v = member(obj, key);
	double d;

	if (!v) {
		if (required)
			return fp_err_detail(-EINVAL, "%s: key '%s' is missing", name, path);
		*ret = def;
		return 0;
	}
	if (!cJSON_IsNumber(v))
		return fp_err_detail(-EINVAL, "%s: key '%s' must be a number, not %s", name, path,
				     json_type(v));
	d = v->valuedouble;
	if (!isfinite(d) || d > max || d < min || (lo_open && d == min))
		return fp_err_detail(-EINVAL, "%s: key '%s' = %g is out of range %s%g, %g]", name,
				     path, d, lo_open ? "(" : "[", min, max);
	*ret = d;
	return 0;
}

static int get_bool(const cJSON *obj, const char *key, const char *name, bool def, bool *ret)
{
	const cJSON *v = member(obj, key);

	if (!v) {
		*ret = def;
		return 0;
	}
	if (!cJSON_IsBool(v))
		return fp_err_detail(-EINVAL, "%s: key '%s' must be true or false, not %s", name,
				     key, json_type(v));
	*ret = cJSON_IsTrue(v);
	return 0;
}

static int parse_arch(const cJSON *root, const char *name, enum fp_arch *ret)
{
	const cJSON *archs = member(root, "architectures");
	const cJSON *first, *mt;
	const char *s;

	if (!archs) {
		/* Older or hand-written configs name only the model_type. */
		mt = member(root, "model_type");
		if (!mt)
			return fp_err_detail(-EINVAL, "%s: key 'architectures' is missing", name);
		if (!cJSON_IsString(mt))
			return fp_err_detail(-EINVAL,
					     "%s: key 'model_type' must be a string, not %s", name,
					     json_type(mt));
		for (int a = 0; a < FP_ARCH_COUNT; a++) {
			if (strcmp(mt->valuestring, arch_model_types[a]) == 0) {
				*ret = (enum fp_arch)a;
				return 0;
			}
		}
		return fp_err_detail(-ENOTSUP,
				     "%s: model_type '%.64s' is not supported (supported: llama, "
				     "mistral, qwen2)",
				     name, mt->valuestring);
	}
	if (!cJSON_IsArray(archs))
		return fp_err_detail(-EINVAL, "%s: key 'architectures' must be an array, not %s",
				     name, json_type(archs));
	first = cJSON_GetArrayItem(archs, 0);
	if (!first)
		return fp_err_detail(-EINVAL, "%s: key 'architectures' is empty", name);
	if (!cJSON_IsString(first))
		return fp_err_detail(-EINVAL, "%s: key 'architectures[0]' must be a string, not %s",
				     name, json_type(first));
	s = first->valuestring;
	for (int a = 0; a < FP_ARCH_COUNT; a++) {
		if (strcmp(s, arch_names[a]) == 0) {
			*ret = (enum fp_arch)a;
			return 0;
		}
	}
	return fp_err_detail(-ENOTSUP,
			     "%s: architecture '%.64s' is not supported (supported: "
			     "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)",
			     name, s);
}

static int parse_rope_scaling(const cJSON *root, const char *name, struct fp_model_cfg *c)
{
	const cJSON *rs = member(root, "rope_scaling");
	const cJSON *type;
	const char *key = "rope_scaling.rope_type";
	uint32_t orig;
	int r;

	c->rope.kind = FP_ROPE_DEFAULT;
	c->rope.factor = 1;
	if (!rs)
		return 0;
	if (!cJSON_IsObject(rs))
		return fp_err_detail(-EINVAL,
				     "%s: key 'rope_scaling' must be an object or null, "
				     "not %s",
				     name, json_type(rs));
	type = member(rs, "rope_type");
	if (!type) {
		type = member(rs, "type");
		key = "rope_scaling.type";
	}
	if (!type)
		return fp_err_detail(-EINVAL, "%s: key 'rope_scaling.rope_type' is missing", name);
	if (!cJSON_IsString(type))
		return fp_err_detail(-EINVAL, "%s: key '%s' must be a string, not %s", name, key,
				     json_type(type));
	if (strcmp(type->valuestring, "default") == 0)
		return 0;
	if (strcmp(type->valuestring, "linear") == 0) {
		c->rope.kind = FP_ROPE_LINEAR;
		return get_double(rs, "factor", "rope_scaling.factor", name, true, 1, 0, 1e6, true,
				  &c->rope.factor);
	}
	if (strcmp(type->valuestring, "llama3") != 0)
		return fp_err_detail(-ENOTSUP,
				     "%s: rope_scaling type '%.64s' is not supported (supported: "
				     "default, linear, llama3)",
				     name, type->valuestring);
	c->rope.kind = FP_ROPE_LLAMA3;
	r = get_double(rs, "factor", "rope_scaling.factor", name, true, 1, 0, 1e6, true,
		       &c->rope.factor);
	if (r >= 0)
		r = get_double(rs, "low_freq_factor", "rope_scaling.low_freq_factor", name, true, 1,
			       0, 1e6, true, &c->rope.low_freq_factor);
	if (r >= 0)
		r = get_double(rs, "high_freq_factor", "rope_scaling.high_freq_factor", name, true,
			       1, 0, 1e6, true, &c->rope.high_freq_factor);
	if (r >= 0)
		r = get_u32(rs, "original_max_position_embeddings",
			    "rope_scaling.original_max_position_embeddings", name, true, 0, 1,
			    FP_MAX_POSITIONS, &orig);
	if (r < 0)
		return r;
	if (!(c->rope.high_freq_factor > c->rope.low_freq_factor))
		return fp_err_detail(-EINVAL,
				     "%s: key 'rope_scaling.high_freq_factor' (%g) must be greater "
				     "than 'rope_scaling.low_freq_factor' (%g)",
				     name, c->rope.high_freq_factor, c->rope.low_freq_factor);
	c->rope.orig_max_pos = orig;
	return 0;
}

/* Biases and sliding window: the per-architecture parts. */
static int parse_arch_specific(const cJSON *root, const char *name, struct fp_model_cfg *c)
{
	bool attn_bias = false, mlp_bias = false, use_sw = false;
	const cJSON *sw;
	int r = 0;

	c->window = 0;
	c->window_from_layer = 0;
	switch (c->arch) {
	case FP_ARCH_LLAMA:
		r = get_bool(root, "attention_bias", name, false, &attn_bias);
		if (r >= 0)
			r = get_bool(root, "mlp_bias", name, false, &mlp_bias);
		for (int i = FP_LIN_Q; i <= FP_LIN_O; i++)
			c->bias[i] = attn_bias;
		for (int i = FP_LIN_GATE; i <= FP_LIN_DOWN; i++)
			c->bias[i] = mlp_bias;
		return r;
	case FP_ARCH_MISTRAL:
		/* MistralConfig: sliding_window defaults to 4096; null disables it. */
		sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
		if (sw && cJSON_IsNull(sw))
			return 0;
		return get_u32(root, "sliding_window", "sliding_window", name, false, 4096, 1,
			       FP_MAX_POSITIONS, &c->window);
	case FP_ARCH_QWEN2:
		/* Qwen2: q/k/v always have a bias, o_proj never; the window applies to layers
		 * >= max_window_layers and only with use_sliding_window. */
		c->bias[FP_LIN_Q] = c->bias[FP_LIN_K] = c->bias[FP_LIN_V] = true;
		r = get_bool(root, "use_sliding_window", name, false, &use_sw);
		if (r < 0 || !use_sw)
			return r;
		r = get_u32(root, "sliding_window", "sliding_window", name, false, 4096, 1,
			    FP_MAX_POSITIONS, &c->window);
		if (r >= 0)
			r = get_u32(root, "max_window_layers", "max_window_layers", name, false, 28,
				    0, UINT32_MAX, &c->window_from_layer);
		return r;
	default:
		return -EINVAL;
	}
}

static int parse_sizes(const cJSON *root, const char *name, struct fp_model_cfg *c)
{
	static const uint32_t def_max_pos[FP_ARCH_COUNT] = {
		[FP_ARCH_LLAMA] = 2048,
		[FP_ARCH_MISTRAL] = 131072,
		[FP_ARCH_QWEN2] = 32768,
	};
	int r;

	r = get_u32(root, "hidden_size", "hidden_size", name, true, 0, 1, FP_MAX_HIDDEN,
		    &c->hidden);
	if (r >= 0)
		r = get_u32(root, "intermediate_size", "intermediate_size", name, true, 0, 1,
			    FP_MAX_INTERMEDIATE, &c->intermediate);
	if (r >= 0)
		r = get_u32(root, "num_hidden_layers", "num_hidden_layers", name, true, 0, 1,
			    FP_MAX_LAYERS, &c->nlayers);
	if (r >= 0)
		r = get_u32(root, "num_attention_heads", "num_attention_heads", name, true, 0, 1,
			    FP_MAX_HEADS, &c->nheads);
	if (r >= 0)
		r = get_u32(root, "num_key_value_heads", "num_key_value_heads", name, false,
			    c->nheads, 1, FP_MAX_HEADS, &c->nkv_heads);
	if (r >= 0)
		r = get_u32(root, "vocab_size", "vocab_size", name, true, 0, 1, FP_MAX_VOCAB,
			    &c->vocab);
	if (r >= 0)
		r = get_u32(root, "max_position_embeddings", "max_position_embeddings", name, false,
			    def_max_pos[c->arch], 1, FP_MAX_POSITIONS, &c->max_pos);
	if (r < 0)
		return r;
	if (c->nheads % c->nkv_heads)
		return fp_err_detail(-EINVAL,
				     "%s: key 'num_key_value_heads' = %" PRIu32
				     " does not divide 'num_attention_heads' = %" PRIu32,
				     name, c->nkv_heads, c->nheads);
	if (!member(root, "head_dim") && c->hidden % c->nheads)
		return fp_err_detail(-EINVAL,
				     "%s: key 'hidden_size' = %" PRIu32
				     " is not a multiple of 'num_attention_heads' = %" PRIu32
				     " and 'head_dim' is not given",
				     name, c->hidden, c->nheads);
	r = get_u32(root, "head_dim", "head_dim", name, false, c->hidden / c->nheads, 1,
		    FP_MAX_HEAD_DIM, &c->head_dim);
	if (r < 0)
		return r;
	if (c->head_dim % 2)
		return fp_err_detail(-EINVAL,
				     "%s: key 'head_dim' = %" PRIu32 " must be even (RoPE)", name,
				     c->head_dim);
	return 0;
}

/*
 * Refuse a key we read that appears twice in obj: cJSON would use the first occurrence and
 * Python's json (transformers) the last, so a duplicate could mean two different models.
 */
static int check_dups(const cJSON *obj, const char *const *keys, const char *prefix,
		      const char *name)
{
	for (const char *const *k = keys; *k; k++) {
		int n = 0;

		for (const cJSON *it = obj->child; it; it = it->next)
			if (it->string && strcmp(it->string, *k) == 0)
				n++;
		if (n > 1)
			return fp_err_detail(-EINVAL, "%s: key '%s%s' appears %d times", name,
					     prefix, *k, n);
	}
	return 0;
}

static const char *const root_keys[] = {
	"architectures",
	"model_type",
	"hidden_size",
	"intermediate_size",
	"num_hidden_layers",
	"num_attention_heads",
	"num_key_value_heads",
	"head_dim",
	"vocab_size",
	"max_position_embeddings",
	"rms_norm_eps",
	"rope_theta",
	"tie_word_embeddings",
	"attention_bias",
	"mlp_bias",
	"sliding_window",
	"use_sliding_window",
	"max_window_layers",
	"rope_scaling",
	"hidden_act",
	NULL,
};

static const char *const rope_keys[] = {
	"rope_type",
	"type",
	"factor",
	"low_freq_factor",
	"high_freq_factor",
	"original_max_position_embeddings",
	NULL,
};

static int parse_root(const cJSON *root, const char *name, struct fp_model_cfg *c)
{
	const cJSON *act, *rs;
	int r;

	if (!cJSON_IsObject(root))
		return fp_err_detail(-EINVAL, "%s: not a JSON object", name);
	r = check_dups(root, root_keys, "", name);
	rs = member(root, "rope_scaling");
	if (r >= 0 && rs && cJSON_IsObject(rs))
		r = check_dups(rs, rope_keys, "rope_scaling.", name);
	if (r >= 0)
		r = parse_arch(root, name, &c->arch);
	if (r >= 0)
		r = parse_sizes(root, name, c);
	if (r >= 0)
		r = get_double(root, "rms_norm_eps", "rms_norm_eps", name, false, 1e-6, 0, 1, true,
			       &c->rms_eps);
	if (r >= 0)
		r = get_double(root, "rope_theta", "rope_theta", name, false, 10000, 0, 1e12, true,
			       &c->rope_theta);
	if (r >= 0)
		r = get_bool(root, "tie_word_embeddings", name, false, &c->tie_embeddings);
	if (r >= 0)
		r = parse_arch_specific(root, name, c);
	if (r >= 0)
		r = parse_rope_scaling(root, name, c);
	if (r < 0)
		return r;
	act = member(root, "hidden_act");
	if (act && !cJSON_IsString(act))
		return fp_err_detail(-EINVAL, "%s: key 'hidden_act' must be a string, not %s", name,
				     json_type(act));
	if (act && strcmp(act->valuestring, "silu") != 0)
		return fp_err_detail(-ENOTSUP,
				     "%s: key 'hidden_act' = '%.64s' is not supported (supported: "
				     "silu)",
				     name, act->valuestring);
	return 0;
}

int fp_model_cfg_parse(const char *json, size_t len, const char *name, struct fp_model_cfg *ret)
{
	struct fp_model_cfg c;
	cJSON *root;
	int r;

	memset(&c, 0, sizeof(c));
	if (len > FP_MAX_CONFIG_BYTES)
		return fp_err_detail(-EINVAL, "%s: %zu bytes is larger than the %u-byte limit",
				     name, len, FP_MAX_CONFIG_BYTES);
	root = cJSON_ParseWithLength(json, len);
	if (!root)
		return fp_err_detail(-EINVAL, "%s: not valid JSON", name);
	r = parse_root(root, name, &c);
	cJSON_Delete(root);
	if (r < 0)
		return r;
	*ret = c;
	return 0;
}

int fp_model_cfg_load(const char *path, struct fp_model_cfg *ret)
{
	char *buf = NULL; /* stays NULL if the read fails */
	size_t len = 0;
	int r = fp_read_file(path, FP_MAX_CONFIG_BYTES, &buf, &len);

	if (r == 0)
		r = fp_model_cfg_parse(buf, len, path, ret);
	free(buf);
	return r;
}

void fp_linear_shape(const struct fp_model_cfg *cfg, enum fp_linear which, size_t *ret_rows,
		     size_t *ret_cols)
{
	size_t qd = (size_t)cfg->nheads * cfg->head_dim;
	size_t kvd = (size_t)cfg->nkv_heads * cfg->head_dim;
	size_t rows = 0, cols = 0;

	switch (which) {
	case FP_LIN_Q:
		rows = qd;
		cols = cfg->hidden;
		break;
	case FP_LIN_K:
	case FP_LIN_V:
		rows = kvd;
		cols = cfg->hidden;
		break;
	case FP_LIN_O:
		rows = cfg->hidden;
		cols = qd;
		break;
	case FP_LIN_GATE:
	case FP_LIN_UP:
		rows = cfg->intermediate;
		cols = cfg->hidden;
		break;
	case FP_LIN_DOWN:
		rows = cfg->hidden;
		cols = cfg->intermediate;
		break;
	default:
		break;
	}
	*ret_rows = rows;
	*ret_cols = cols;
}

uint32_t fp_layer_window(const struct fp_model_cfg *cfg, uint32_t layer)
{
	return layer >= cfg->window_from_layer ? cfg->window : 0;
}

void fp_rope_inv_freq(const struct fp_model_cfg *cfg, double *out)
{
	size_t half = cfg->head_dim / 2;
	const double pi = 3.14159265358979323846;

	for (size_t j = 0; j < half; j++) {
		double inv = pow(cfg->rope_theta, -2.0 * (double)j / (double)cfg->head_dim);

		if (cfg->rope.kind == FP_ROPE_LINEAR) {
			inv /= cfg->rope.factor;
		} else if (cfg->rope.kind == FP_ROPE_LLAMA3) {
			/* transformers' _compute_llama3_parameters */
			double o = cfg->rope.orig_max_pos, f = cfg->rope.factor;
			double lo = cfg->rope.low_freq_factor, hi = cfg->rope.high_freq_factor;
			double wavelen = 2 * pi / inv;

			if (wavelen < o / hi) {
				/* high frequency: kept */
			} else if (wavelen > o / lo) {
				inv /= f;
			} else {
				double smooth = (o / wavelen - lo) / (hi - lo);

				inv = (1 - smooth) * inv / f + smooth * inv;
			}
		}
		out[j] = inv;
	}
}

/* ---- the model ---- */

struct layer_tensors {
	const struct fp_st_tensor *w[FP_LIN_COUNT]; /* (rows, cols) */
	const struct fp_st_tensor *b[FP_LIN_COUNT]; /* (rows) or NULL */
	const struct fp_st_tensor *attn_norm;	    /* (hidden) */
	const struct fp_st_tensor *mlp_norm;	    /* (hidden) */
};

struct fp_model {
	char *dir;
	struct fp_model_cfg cfg;
	struct fp_st_model *st;
	const struct fp_st_tensor *embed; /* (vocab, hidden) */
	const struct fp_st_tensor *head;  /* (vocab, hidden) */
	const struct fp_st_tensor *norm;  /* (hidden) */
	float *final_norm;		  /* (hidden) f32 copy of norm */
	struct layer_tensors *layers;	  /* (nlayers) */
	float *rope_cos;		  /* (rope_len, head_dim / 2) */
	float *rope_sin;		  /* (rope_len, head_dim / 2) */
	size_t rope_len;
	void *scratch;
	size_t scratch_size;
	size_t scratch_limit;
};

/* Find name with exactly the given shape and a float dtype. */
static int bind(struct fp_model *m, const char *name, unsigned ndim, uint64_t d0, uint64_t d1,
		const struct fp_st_tensor **ret)
{
	const struct fp_st_tensor *t = fp_st_model_find(m->st, name);
	uint64_t want[2] = { d0, d1 };

	if (!t)
		return fp_err_detail(-EINVAL, "%s: tensor '%s' is missing", m->dir, name);
	if (t->dtype != FP_DT_F32 && t->dtype != FP_DT_F16 && t->dtype != FP_DT_BF16)
		return fp_err_detail(-EINVAL,
				     "%s: tensor '%s' has dtype %s, expected F32, F16 or BF16",
				     m->dir, name, fp_dtype_name(t->dtype));
	if (t->ndim != ndim || t->shape[0] != want[0] || (ndim == 2 && t->shape[1] != want[1])) {
		char got[96];
		size_t n = 0;

		for (unsigned i = 0; i < t->ndim && n < sizeof(got) - 24; i++) {
			int k = snprintf(got + n, sizeof(got) - n, "%s%" PRIu64, i ? ", " : "",
					 t->shape[i]);

			if (k < 0)
				break;
			n += (size_t)k;
		}
		got[n] = '\0';
		if (ndim == 1)
			return fp_err_detail(
				-EINVAL, "%s: tensor '%s' has shape [%s], expected [%" PRIu64 "]",
				m->dir, name, got, d0);
		return fp_err_detail(-EINVAL,
				     "%s: tensor '%s' has shape [%s], expected [%" PRIu64
				     ", %" PRIu64 "]",
				     m->dir, name, got, d0, d1);
	}
	*ret = t;
	return 0;
}

static int bind_layer(struct fp_model *m, uint32_t i)
{
	const struct fp_model_cfg *c = &m->cfg;
	struct layer_tensors *lt = &m->layers[i];
	char name[128];
	int r;

	for (int w = 0; w < FP_LIN_COUNT; w++) {
		size_t rows, cols;

		fp_linear_shape(c, (enum fp_linear)w, &rows, &cols);
		snprintf(name, sizeof(name), "model.layers.%" PRIu32 ".%s.weight", i,
			 linear_names[w]);
		r = bind(m, name, 2, rows, cols, &lt->w[w]);
		if (r < 0)
			return r;
		if (!c->bias[w])
			continue;
		snprintf(name, sizeof(name), "model.layers.%" PRIu32 ".%s.bias", i,
			 linear_names[w]);
		r = bind(m, name, 1, rows, 0, &lt->b[w]);
		if (r < 0)
			return r;
	}
	snprintf(name, sizeof(name), "model.layers.%" PRIu32 ".input_layernorm.weight", i);
	r = bind(m, name, 1, c->hidden, 0, &lt->attn_norm);
	if (r < 0)
		return r;
	snprintf(name, sizeof(name), "model.layers.%" PRIu32 ".post_attention_layernorm.weight", i);
	return bind(m, name, 1, c->hidden, 0, &lt->mlp_norm);
}

static int bind_all(struct fp_model *m)
{
	const struct fp_model_cfg *c = &m->cfg;
	int r;

	r = bind(m, "model.embed_tokens.weight", 2, c->vocab, c->hidden, &m->embed);
	if (r < 0)
		return r;
	if (c->tie_embeddings) {
		m->head = m->embed;
	} else {
		r = bind(m, "lm_head.weight", 2, c->vocab, c->hidden, &m->head);
		if (r < 0)
			return r;
	}
	r = bind(m, "model.norm.weight", 1, c->hidden, 0, &m->norm);
	if (r < 0)
		return r;
	m->layers = fp_callocarray(c->nlayers, sizeof(*m->layers));
	if (!m->layers)
		return -ENOMEM;
	for (uint32_t i = 0; i < c->nlayers; i++) {
		r = bind_layer(m, i);
		if (r < 0)
			return r;
	}
	m->final_norm = fp_mallocarray(c->hidden, sizeof(float));
	if (!m->final_norm)
		return -ENOMEM;
	return fp_st_to_f32(m->norm, m->final_norm);
}

int fp_model_open(const char *dir, struct fp_model **ret)
{
	struct fp_model *m;
	char *path = NULL;
	int r;

	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->scratch_limit = DEFAULT_SCRATCH_LIMIT;
	m->dir = fp_strdup(dir);
	if (!m->dir || asprintf(&path, "%s/config.json", dir) < 0) {
		path = NULL;
		r = -ENOMEM;
		goto out;
	}
	r = fp_model_cfg_load(path, &m->cfg);
	if (r < 0)
		goto out;
	r = fp_st_model_open(dir, &m->st);
	if (r < 0)
		goto out;
	r = bind_all(m);
	if (r < 0)
		goto out;
	*ret = m;
	m = NULL;
out:
	free(path);
	fp_model_close(m);
	return r;
}

void fp_model_close(struct fp_model *m)
{
	if (!m)
		return;
	fp_st_model_close(m->st);
	free(m->layers);
	free(m->final_norm);
	free(m->rope_cos);
	free(m->rope_sin);
	free(m->scratch);
	free(m->dir);
	free(m);
}

const struct fp_model_cfg *fp_model_config(const struct fp_model *m)
{
	return &m->cfg;
}

const struct fp_st_model *fp_model_source(const struct fp_model *m)
{
	return m->st;
}

void fp_model_set_scratch_limit(struct fp_model *m, size_t bytes)
{
	m->scratch_limit = bytes;
}

/* ---- blocks ---- */

/* Stacked layout: [q k v] [o] [gate up] [down], then biases, then the two norms. */
int fp_block_load(struct fp_model *m, uint32_t i, struct fp_block **ret)
{
	const struct fp_model_cfg *c = &m->cfg;
	const struct layer_tensors *lt;
	struct fp_block *blk;
	size_t total = 0, bias_total = 0, off;
	int r = 0;

	if (i >= c->nlayers)
		return fp_err_detail(-EINVAL,
				     "%s: block %" PRIu32 " out of range (%" PRIu32 " layers)",
				     m->dir, i, c->nlayers);
	lt = &m->layers[i];
	blk = calloc(1, sizeof(*blk));
	if (!blk)
		return -ENOMEM;
	blk->index = i;
	blk->qkv_bias = c->bias[FP_LIN_Q] || c->bias[FP_LIN_K] || c->bias[FP_LIN_V];
	blk->gate_up_bias = c->bias[FP_LIN_GATE] || c->bias[FP_LIN_UP];
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		bool has_bias = c->bias[w] || (w <= FP_LIN_V && blk->qkv_bias) ||
				((w == FP_LIN_GATE || w == FP_LIN_UP) && blk->gate_up_bias);
		size_t n;

		fp_linear_shape(c, (enum fp_linear)w, &blk->rows[w], &blk->cols[w]);
		/* every size is bounded by the config limits: no overflow below 2^63 */
		n = blk->rows[w] * blk->cols[w];
		if (!fp_add_ok(total, n, &total)) {
			r = -EOVERFLOW;
			goto out;
		}
		if (has_bias)
			bias_total += blk->rows[w];
	}
	if (!fp_add_ok(total, bias_total + 2 * (size_t)c->hidden, &total)) {
		r = -EOVERFLOW;
		goto out;
	}
	blk->mem = fp_aligned_array(total, sizeof(float));
	if (!blk->mem) {
		r = -ENOMEM;
		goto out;
	}
	off = 0;
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		blk->w[w] = blk->mem + off;
		off += blk->rows[w] * blk->cols[w];
		r = fp_st_to_f32(lt->w[w], blk->w[w]);
		if (r < 0)
			goto out;
		/*
		 * The f32 copy is all the block needs: drop the mapped pages now rather than
		 * after the forward pass, so a block is never resident twice (the page cache
		 * still holds them if they are read again).
		 */
		fp_st_release(lt->w[w]);
	}
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		bool stacked = (w <= FP_LIN_V && blk->qkv_bias) ||
			       ((w == FP_LIN_GATE || w == FP_LIN_UP) && blk->gate_up_bias);

		if (!c->bias[w] && !stacked)
			continue;
		blk->b[w] = blk->mem + off;
		off += blk->rows[w];
		if (lt->b[w])
			r = fp_st_to_f32(lt->b[w], blk->b[w]);
		else
			memset(blk->b[w], 0, blk->rows[w] * sizeof(float));
		if (r < 0)
			goto out;
	}
	blk->attn_norm = blk->mem + off;
	blk->mlp_norm = blk->mem + off + c->hidden;
	r = fp_st_to_f32(lt->attn_norm, blk->attn_norm);
	if (r >= 0)
		r = fp_st_to_f32(lt->mlp_norm, blk->mlp_norm);
	if (r < 0)
		goto out;
	*ret = blk;
	blk = NULL;
out:
	fp_block_free(blk);
	return r;
}

void fp_block_free(struct fp_block *blk)
{
	if (!blk)
		return;
	free(blk->mem);
	free(blk);
}

void fp_block_release_source(struct fp_model *m, uint32_t i)
{
	const struct layer_tensors *lt;

	if (i >= m->cfg.nlayers)
		return;
	lt = &m->layers[i];
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		fp_st_release(lt->w[w]);
		if (lt->b[w])
			fp_st_release(lt->b[w]);
	}
	fp_st_release(lt->attn_norm);
	fp_st_release(lt->mlp_norm);
}

float *fp_block_linear(struct fp_block *blk, enum fp_linear which, size_t *ret_rows,
		       size_t *ret_cols)
{
	if ((unsigned)which >= FP_LIN_COUNT)
		return NULL;
	if (ret_rows)
		*ret_rows = blk->rows[which];
	if (ret_cols)
		*ret_cols = blk->cols[which];
	return blk->w[which];
}

/* ---- internals for forward.c / eval.c ---- */

void fp__model_tensors(const struct fp_model *m, struct fp__model_tensors *ret)
{
	ret->embed = m->embed;
	ret->head = m->head;
	ret->final_norm = m->final_norm;
}

int fp__model_rope(struct fp_model *m, size_t len, const float **ret_cos, const float **ret_sin)
{
	size_t half = m->cfg.head_dim / 2;
	double *inv = NULL;
	float *cs = NULL, *sn = NULL;
	size_t n;

	if (len > m->rope_len) {
		if (!fp_mul_ok(len, half, &n))
			return -EOVERFLOW;
		inv = fp_mallocarray(half, sizeof(double));
		cs = fp_mallocarray(n, sizeof(float));
		sn = fp_mallocarray(n, sizeof(float));
		if (!inv || !cs || !sn) {
			free(inv);
			free(cs);
			free(sn);
			return -ENOMEM;
		}
		fp_rope_inv_freq(&m->cfg, inv);
		for (size_t p = 0; p < len; p++) {
			for (size_t j = 0; j < half; j++) {
				double a = (double)p * inv[j];

				cs[p * half + j] = (float)cos(a);
				sn[p * half + j] = (float)sin(a);
			}
		}
		free(inv);
		free(m->rope_cos);
		free(m->rope_sin);
		m->rope_cos = cs;
		m->rope_sin = sn;
		m->rope_len = len;
	}
	*ret_cos = m->rope_cos;
	*ret_sin = m->rope_sin;
	return 0;
}

void *fp__model_scratch(struct fp_model *m, size_t bytes)
{
	if (bytes > m->scratch_size || !m->scratch) {
		void *p = fp_aligned_array(bytes ? bytes : 1, 1);

		if (!p)
			return NULL;
		free(m->scratch);
		m->scratch = p;
		m->scratch_size = bytes;
	}
	return m->scratch;
}

size_t fp__model_scratch_limit(const struct fp_model *m)
{
	return m->scratch_limit;
}

static uint16_t load_u16(const unsigned char *p)
{
	uint16_t h;

	memcpy(&h, p, sizeof(h));
	return h;
}

void fp__tensor_rows_f32(const struct fp_st_tensor *t, size_t row0, size_t nrows, float *out)
{
	size_t cols = t->ndim == 2 ? t->shape[1] : 1;
	size_t n = nrows * cols;
	size_t es = fp_dtype_size(t->dtype);
	const unsigned char *src = (const unsigned char *)t->data + row0 * cols * es;

	switch (t->dtype) {
	case FP_DT_F32:
		memcpy(out, src, n * sizeof(float));
		break;
	case FP_DT_BF16:
		for (size_t i = 0; i < n; i++)
			out[i] = fp_bf16_to_f32(load_u16(src + 2 * i));
		break;
	case FP_DT_F16:
		for (size_t i = 0; i < n; i++)
			out[i] = fp_f16_to_f32(load_u16(src + 2 * i));
		break;
	default: /* refused at open */
		memset(out, 0, n * sizeof(float));
		break;
	}
}

const float *fp__tensor_f32_direct(const struct fp_st_tensor *t)
{
	if (t->dtype != FP_DT_F32 || ((uintptr_t)t->data % sizeof(float)) != 0)
		return NULL;
	return t->data;
}
