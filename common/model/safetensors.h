/*
 * safetensors files and Hugging Face model directories.
 *
 * File format: u64 little-endian N, then N bytes of JSON header, then the data section.
 * The header maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]} with offsets
 * relative to the start of the data section, plus an optional "__metadata__" object of string
 * values. Tensors are row-major, little-endian.
 *
 * The reader mmaps the file read-only and validates everything before exposing a tensor:
 * header length bound, JSON well-formed, dtype known, shape product * dtype size == end - begin
 * (overflow-checked), ranges inside the file, no two ranges overlapping. Every error names the
 * file and, where there is one, the tensor (fp_err_last()).
 *
 * A model directory holds either model.safetensors or model.safetensors.index.json with a
 * "weight_map" naming the shard of every tensor; fp_st_model opens all shards.
 *
 * Threads: a fp_st_file / fp_st_model is immutable after open; concurrent readers are fine.
 */
#ifndef FP_SAFETENSORS_H
#define FP_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FP_ST_MAX_HEADER (100u << 20) /* refuse JSON headers above 100 MiB */
#define FP_ST_MAX_DIMS	 8

enum fp_dtype {
	FP_DT_F32,
	FP_DT_F16,
	FP_DT_BF16,
	FP_DT_F64,
	FP_DT_I64,
	FP_DT_I32,
	FP_DT_I16,
	FP_DT_I8,
	FP_DT_U8,
	FP_DT_BOOL,
	FP_DT_COUNT,
};

/* "F32", "BF16", ... as in the header. */
const char *fp_dtype_name(enum fp_dtype dt);
/* Bytes per element. */
size_t fp_dtype_size(enum fp_dtype dt);
/* Parse a header dtype string; -EINVAL if unknown. */
int fp_dtype_parse(const char *s, enum fp_dtype *ret);

/* One tensor; a view into a mapped file. Valid until its file or model is closed. */
struct fp_st_tensor {
	const char *name;
	enum fp_dtype dtype;
	unsigned ndim;
	uint64_t shape[FP_ST_MAX_DIMS];
	uint64_t numel;
	const void *data; /* nbytes bytes inside the mapping; alignment not guaranteed */
	size_t nbytes;
	struct fp_st_file *file; /* the file it lives in (borrowed) */
};

struct fp_st_file;

/* Open and validate path. On success *ret owns the mapping. Returns 0 or -errno. */
int fp_st_open(const char *path, struct fp_st_file **ret);
/* Validate a header held in memory (the fuzz entry point): buf = whole file image. */
int fp_st_open_mem(const void *buf, size_t len, const char *name, struct fp_st_file **ret);
void fp_st_close(struct fp_st_file *f); /* NULL is fine */

size_t fp_st_count(const struct fp_st_file *f);
/* i-th tensor in data-offset order; borrowed. */
const struct fp_st_tensor *fp_st_at(const struct fp_st_file *f, size_t i);
/* Tensor by name or NULL; borrowed. */
const struct fp_st_tensor *fp_st_find(const struct fp_st_file *f, const char *name);
/* __metadata__ value for key or NULL; borrowed. */
const char *fp_st_metadata(const struct fp_st_file *f, const char *key);
const char *fp_st_path(const struct fp_st_file *f);

/*
 * Convert t to f32 into out (t->numel floats, caller-owned). F32/F16/BF16 only;
 * -ENOTSUP (detail names the tensor and dtype) for anything else.
 */
int fp_st_to_f32(const struct fp_st_tensor *t, float *out);

/* Tell the kernel the pages of t are no longer needed (madvise DONTNEED on the mapping). */
void fp_st_release(const struct fp_st_tensor *t);

/* A model directory: one or many shards. */
struct fp_st_model;

/* Open dir/model.safetensors or every shard named by dir/model.safetensors.index.json. */
int fp_st_model_open(const char *dir, struct fp_st_model **ret);
void fp_st_model_close(struct fp_st_model *m); /* NULL is fine */
const struct fp_st_tensor *fp_st_model_find(const struct fp_st_model *m, const char *name);
size_t fp_st_model_count(const struct fp_st_model *m);
/* i-th tensor over all shards (shard order, then offset order); borrowed. */
const struct fp_st_tensor *fp_st_model_at(const struct fp_st_model *m, size_t i);
/* Sum of tensor bytes over all shards. */
uint64_t fp_st_model_bytes(const struct fp_st_model *m);

/*
 * Streaming writer: the header (which needs every tensor's size) is written first, then the
 * tensors' bytes in the declared order, in as many fp_st_writer_write calls as convenient.
 * Nothing is held in memory but the header. The file appears atomically at close (temp file,
 * fsync, rename).
 */
struct fp_st_writer;

struct fp_st_decl {
	const char *name;
	enum fp_dtype dtype;
	unsigned ndim;
	uint64_t shape[FP_ST_MAX_DIMS];
};

/* metadata: NULL or NULL-terminated key, value, key, value, ... strings. */
int fp_st_writer_open(const char *path, const struct fp_st_decl *decls, size_t n,
		      const char *const *metadata, struct fp_st_writer **ret);
/* Append len bytes of tensor data (must follow the declared order and sizes). */
int fp_st_writer_write(struct fp_st_writer *w, const void *data, size_t len);
/* Check every byte was written, fsync, rename into place. Frees w in every case. */
int fp_st_writer_close(struct fp_st_writer *w);
/* Abandon: remove the temporary file, free w. NULL is fine. */
void fp_st_writer_abort(struct fp_st_writer *w);

#endif
