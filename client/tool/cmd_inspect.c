/*
 * `fedprune inspect DIR|FILE.safetensors [--json]`: one line per tensor (name, dtype, shape,
 * bytes, fraction of exact zeros for float tensors), then totals, including the zero fraction
 * over all 2-D float tensors (the weight matrices pruning acts on). Pages are released after
 * each tensor is scanned, so a model larger than RAM can be inspected.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "cli.h"
#include "err.h"
#include "safetensors.h"
#include "tool.h"

#define PROG FP_TOOL " inspect"

struct totals {
	uint64_t params, bytes;
	uint64_t zeros2d, numel2d; /* over 2-D F32/F16/BF16 tensors */
};

static void usage(void)
{
	printf("Usage: %s [OPTIONS] DIR|FILE.safetensors\n"
	       "\n"
	       "List the tensors of a model directory (model.safetensors or a sharded\n"
	       "model.safetensors.index.json) or of one .safetensors file: name, dtype, shape,\n"
	       "bytes and the fraction of exact zeros of float tensors, then totals with the\n"
	       "zero fraction over all 2-D float tensors.\n"
	       "\n"
	       "Options:\n"
	       "  --json      print the same information as one JSON object\n"
	       "  -h, --help  show this help and exit\n",
	       PROG);
}

static bool is_float(enum fp_dtype dt)
{
	return dt == FP_DT_F32 || dt == FP_DT_F16 || dt == FP_DT_BF16;
}

/* Exact zeros (+0 and -0) of a float tensor, read bit-wise (no conversion, any alignment). */
static uint64_t count_zeros(const struct fp_st_tensor *t)
{
	const uint8_t *p = t->data; /* (nbytes) */
	uint64_t z = 0;

	if (t->dtype == FP_DT_F32) {
		for (uint64_t i = 0; i < t->numel; i++) {
			uint32_t u;

			memcpy(&u, p + 4 * i, 4);
			z += (u & 0x7fffffffu) == 0;
		}
	} else {
		for (uint64_t i = 0; i < t->numel; i++) {
			uint16_t h;

			memcpy(&h, p + 2 * i, 2);
			z += (h & 0x7fffu) == 0;
		}
	}
	return z;
}

static void shape_str(const struct fp_st_tensor *t, char *buf, size_t len)
{
	size_t o = 0;

	o += (size_t)snprintf(buf, len, "[");
	for (unsigned i = 0; i < t->ndim && o < len; i++)
		o += (size_t)snprintf(buf + o, len - o, "%s%" PRIu64, i ? ", " : "", t->shape[i]);
	if (o < len)
		snprintf(buf + o, len - o, "]");
}

/* Scan every tensor once: zeros[i] for float tensors, and the totals. */
static void scan(const struct fp_st_model *m, uint64_t *zeros, struct totals *tot)
{
	memset(tot, 0, sizeof(*tot));
	for (size_t i = 0; i < fp_st_model_count(m); i++) {
		const struct fp_st_tensor *t = fp_st_model_at(m, i);

		tot->params += t->numel;
		tot->bytes += t->nbytes;
		if (!is_float(t->dtype))
			continue;
		zeros[i] = count_zeros(t);
		fp_st_release(t);
		if (t->ndim == 2) {
			tot->zeros2d += zeros[i];
			tot->numel2d += t->numel;
		}
	}
}

static void print_text(const struct fp_st_model *m, const uint64_t *zeros, const struct totals *tot)
{
	int wname = 4, wshape = 5;
	char shape[FP_ST_MAX_DIMS * 22 + 4];

	for (size_t i = 0; i < fp_st_model_count(m); i++) {
		const struct fp_st_tensor *t = fp_st_model_at(m, i);
		int n = (int)strlen(t->name);

		wname = n > wname ? (n < 80 ? n : 80) : wname;
		shape_str(t, shape, sizeof(shape));
		n = (int)strlen(shape);
		wshape = n > wshape ? n : wshape;
	}
	printf("%-*s  %-5s  %-*s  %14s  %s\n", wname, "NAME", "DTYPE", wshape, "SHAPE", "BYTES",
	       "ZEROS");
	for (size_t i = 0; i < fp_st_model_count(m); i++) {
		const struct fp_st_tensor *t = fp_st_model_at(m, i);

		shape_str(t, shape, sizeof(shape));
		printf("%-*s  %-5s  %-*s  %14zu  ", wname, t->name, fp_dtype_name(t->dtype), wshape,
		       shape, t->nbytes);
		if (!is_float(t->dtype) || t->numel == 0)
			printf("-\n");
		else
			printf("%.4f\n", (double)zeros[i] / (double)t->numel);
	}
	printf("\ntensors: %zu\nshards: %zu\nparameters: %" PRIu64 "\nbytes: %" PRIu64 "\n",
	       fp_st_model_count(m), fp_st_model_shard_count(m), tot->params, tot->bytes);
	if (tot->numel2d)
		printf("zeros in 2-D weights: %.4f (%" PRIu64 " of %" PRIu64 ")\n",
		       (double)tot->zeros2d / (double)tot->numel2d, tot->zeros2d, tot->numel2d);
	else
		printf("zeros in 2-D weights: - (no 2-D float tensors)\n");
}

/* An exact integer (cJSON numbers are doubles; Raw keeps all 64 bits). */
static cJSON *json_u64(uint64_t v)
{
	char buf[24];

	snprintf(buf, sizeof(buf), "%" PRIu64, v);
	return cJSON_CreateRaw(buf);
}

static cJSON *json_fraction(uint64_t num, uint64_t den)
{
	return den ? cJSON_CreateNumber((double)num / (double)den) : cJSON_CreateNull();
}

static cJSON *json_tensor(const struct fp_st_tensor *t, uint64_t zeros)
{
	cJSON *o = cJSON_CreateObject(), *shape = cJSON_CreateArray();

	cJSON_AddItemToObject(o, "name", cJSON_CreateString(t->name));
	cJSON_AddItemToObject(o, "dtype", cJSON_CreateString(fp_dtype_name(t->dtype)));
	for (unsigned k = 0; k < t->ndim; k++)
		cJSON_AddItemToArray(shape, json_u64(t->shape[k]));
	cJSON_AddItemToObject(o, "shape", shape);
	cJSON_AddItemToObject(o, "bytes", json_u64(t->nbytes));
	cJSON_AddItemToObject(o, "zero_fraction",
			      is_float(t->dtype) ? json_fraction(zeros, t->numel)
						 : cJSON_CreateNull());
	return o;
}

static int print_json(const char *path, const struct fp_st_model *m, const uint64_t *zeros,
		      const struct totals *tot)
{
	cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray(), *t = cJSON_CreateObject();
	char *s;

	cJSON_AddItemToObject(root, "path", cJSON_CreateString(path));
	for (size_t i = 0; i < fp_st_model_count(m); i++)
		cJSON_AddItemToArray(arr, json_tensor(fp_st_model_at(m, i), zeros[i]));
	cJSON_AddItemToObject(root, "tensors", arr);
	cJSON_AddItemToObject(t, "tensors", json_u64(fp_st_model_count(m)));
	cJSON_AddItemToObject(t, "shards", json_u64(fp_st_model_shard_count(m)));
	cJSON_AddItemToObject(t, "parameters", json_u64(tot->params));
	cJSON_AddItemToObject(t, "bytes", json_u64(tot->bytes));
	cJSON_AddItemToObject(t, "zeros_2d", json_u64(tot->zeros2d));
	cJSON_AddItemToObject(t, "numel_2d", json_u64(tot->numel2d));
	cJSON_AddItemToObject(t, "zero_fraction_2d", json_fraction(tot->zeros2d, tot->numel2d));
	cJSON_AddItemToObject(root, "totals", t);
	s = cJSON_Print(root);
	cJSON_Delete(root);
	if (!s)
		return -ENOMEM;
	printf("%s\n", s);
	cJSON_free(s);
	return 0;
}

int fp_cmd_inspect(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct fp_st_model *m = NULL;
	uint64_t *zeros = NULL;
	struct totals tot;
	struct stat st;
	bool json = false;
	const char *path;
	int c, r;

	optind = 1;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			usage();
			return 0;
		default:
			fp_cli_bad_option(PROG, c, argv);
		}
	}
	if (optind >= argc)
		fp_cli_fail(PROG, "missing model directory or .safetensors file");
	if (argc - optind > 1)
		fp_cli_fail(PROG, "unexpected argument '%s'", argv[optind + 1]);
	path = argv[optind];

	fp_err_clear();
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		r = fp_st_model_open(path, &m);
	else
		r = fp_st_model_open_file(path, &m);
	if (r < 0)
		goto out;
	zeros = calloc(fp_st_model_count(m) ? fp_st_model_count(m) : 1, sizeof(*zeros));
	if (!zeros) {
		r = fp_err_detail(-ENOMEM, "out of memory");
		goto out;
	}
	scan(m, zeros, &tot);
	if (json)
		r = print_json(path, m, zeros, &tot);
	else
		print_text(m, zeros, &tot);
out:
	if (r < 0)
		fprintf(stderr, "%s: %s\n", PROG, *fp_err_last() ? fp_err_last() : fp_strerror(r));
	free(zeros);
	fp_st_model_close(m);
	return r < 0 ? 1 : 0;
}
