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
 *
 * Validation details (safetensors.c): header length <= FP_ST_MAX_HEADER and <= file size - 8;
 * no NUL byte and no \u0000 escape in the header (trailing space padding is fine); the header
 * is one JSON object; "__metadata__" (at most once) is an object of string values with distinct
 * keys; every other key is a tensor whose entry is an object with exactly the fields "dtype" (a
 * known name), "shape" (array of at most FP_ST_MAX_DIMS integers) and "data_offsets"
 * ([begin, end], begin <= end <= data section size). Integers are read from the JSON text
 * exactly (never through a double, so values above 2^53 are neither rounded nor ambiguous):
 * plain digits only, refusing "-1", "1.5", "1.0", "1e3", "01" and anything above 2^64 - 1.
 * numel is the overflow-checked product of the dims (a 0-d tensor has numel 1, a tensor with
 * a 0 dim has numel 0 and may share its offset with others); numel * dtype size must equal
 * end - begin. Ranges may not overlap (gaps and trailing bytes are tolerated) and names must
 * be distinct.
 *
 * Error codes: -EBADMSG for anything wrong inside a file (safetensors or index), with detail
 * "PATH: header: WHAT" or "PATH: tensor 'NAME': WHAT"; -errno from open/stat/mmap (detail
 * "PATH: strerror"); -EINVAL for a path that is not a regular file and for API misuse (writer
 * declarations, writing too many or too few bytes); -ENOENT for a model directory without
 * model.safetensors or its index; -ENOTDIR when fp_st_model_open gets something else;
 * -EFBIG for a file too large to map; -ENOTSUP from fp_st_to_f32; -ENOMEM.
 *
 * Truncation after open: the mapping is MAP_PRIVATE read-only; if another process truncates the
 * file while it is mapped, touching the lost pages raises SIGBUS. This module installs no
 * signal handler (nothing process-global in a library): handling SIGBUS is the daemon's job.
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

/*
 * Open and validate path. On success *ret owns the mapping (fp_st_close frees it and every
 * tensor view). Returns 0 or -errno (see the error codes above).
 */
int fp_st_open(const char *path, struct fp_st_file **ret);
/*
 * Validate a header held in memory (the fuzz entry point): buf = whole file image, borrowed:
 * it must stay valid and unchanged until fp_st_close(*ret). name is copied, used in messages.
 */
int fp_st_open_mem(const void *buf, size_t len, const char *name, struct fp_st_file **ret);
void fp_st_close(struct fp_st_file *f); /* NULL is fine */

size_t fp_st_count(const struct fp_st_file *f);
/* i-th tensor in data-offset order; borrowed. */
const struct fp_st_tensor *fp_st_at(const struct fp_st_file *f, size_t i);
/* Tensor by name or NULL; borrowed. */
const struct fp_st_tensor *fp_st_find(const struct fp_st_file *f, const char *name);
/* __metadata__ value for key or NULL; borrowed. */
const char *fp_st_metadata(const struct fp_st_file *f, const char *key);
/* Number of __metadata__ entries. */
size_t fp_st_metadata_count(const struct fp_st_file *f);
/*
 * i-th __metadata__ entry in key order: returns the key and stores the value in *ret_value
 * (if not NULL); NULL when i is out of range. Both borrowed, valid until fp_st_close.
 */
const char *fp_st_metadata_at(const struct fp_st_file *f, size_t i, const char **ret_value);
/* The path given to fp_st_open (or the name given to fp_st_open_mem); borrowed. */
const char *fp_st_path(const struct fp_st_file *f);

/*
 * Convert t to f32 into out (t->numel floats, caller-owned). F32/F16/BF16 only;
 * -ENOTSUP (detail names the tensor and dtype) for anything else.
 */
int fp_st_to_f32(const struct fp_st_tensor *t, float *out);

/*
 * Tell the kernel the pages of t are no longer needed (madvise DONTNEED on the mapping). The
 * range is rounded outward to whole pages, so a page shared with a neighbouring tensor (or the
 * header) is dropped as well: harmless, since the mapping is private and read-only, so the
 * next access simply faults the same bytes back in from the page cache. t stays valid. No-op
 * for files opened with fp_st_open_mem.
 */
void fp_st_release(const struct fp_st_tensor *t);

/*
 * F16 -> F32 over n values at src (any alignment). portable = false uses F16C when the CPU has
 * it; true forces the portable loop (the reference the tests compare against). Internal,
 * exposed for tests.
 */
void fp__st_f16_to_f32(float *out, const void *src, size_t n, bool portable);

/* A model directory: one or many shards. */
struct fp_st_model;

/*
 * Open dir/model.safetensors or every shard named by dir/model.safetensors.index.json
 * ({"metadata": {...}, "weight_map": {"tensor": "shard-file", ...}}; other top-level keys are
 * ignored). If both exist the single file wins, as in transformers. Each distinct shard is
 * opened once; shards are ordered by file name. Refused (-EBADMSG, detail naming the index or
 * shard file and the tensor): a shard name that is empty, starts with '.' or contains '/'; a
 * tensor listed twice; a tensor mapped to a shard that lacks it; a shard tensor the map does
 * not list; a tensor present in two shards. On success *ret is owned by the caller
 * (fp_st_model_close).
 */
int fp_st_model_open(const char *dir, struct fp_st_model **ret);
/* A one-shard model from a single .safetensors file (e.g. `fedprune inspect FILE`). */
int fp_st_model_open_file(const char *path, struct fp_st_model **ret);
void fp_st_model_close(struct fp_st_model *m); /* NULL is fine */
/* Tensor by name over all shards or NULL; borrowed, valid until fp_st_model_close. */
const struct fp_st_tensor *fp_st_model_find(const struct fp_st_model *m, const char *name);
size_t fp_st_model_count(const struct fp_st_model *m);
/* i-th tensor over all shards (shard order, then offset order); borrowed. */
const struct fp_st_tensor *fp_st_model_at(const struct fp_st_model *m, size_t i);
/* Sum of tensor bytes over all shards. */
uint64_t fp_st_model_bytes(const struct fp_st_model *m);
/* Number of shard files (1 for a single file). */
size_t fp_st_model_shard_count(const struct fp_st_model *m);
/* i-th shard in file-name order, or NULL; borrowed, valid until fp_st_model_close. */
const struct fp_st_file *fp_st_model_shard(const struct fp_st_model *m, size_t i);

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

/*
 * metadata: NULL or NULL-terminated key, value, key, value, ... strings.
 * Validates the declarations (-EINVAL: NULL or "__metadata__" name, duplicate names, unknown
 * dtype, ndim > FP_ST_MAX_DIMS, a key without value, a duplicate key; -EOVERFLOW for sizes),
 * creates PATH.tmp.XXXXXX (mode 0666 & ~umask) in the same directory and writes the header:
 * "__metadata__" first if given, then the tensors in declared order with contiguous
 * data_offsets, no whitespace, padded with spaces to a multiple of 8 bytes (as the reference
 * implementation does, so the data section starts 8-aligned). decls and metadata are
 * borrowed only during the call. On success *ret is owned by the caller until
 * fp_st_writer_close or fp_st_writer_abort.
 */
int fp_st_writer_open(const char *path, const struct fp_st_decl *decls, size_t n,
		      const char *const *metadata, struct fp_st_writer **ret);
/*
 * Append len bytes of tensor data (must follow the declared order and sizes; only the total
 * can be checked: -EINVAL past it). Buffers up to 64 KiB. After any failure every later call
 * returns the same error and close removes the temporary file.
 */
int fp_st_writer_write(struct fp_st_writer *w, const void *data, size_t len);
/*
 * Check every byte was written, fsync, rename into place, fsync the directory. Frees w in
 * every case; on failure before the rename the temporary file is removed.
 */
int fp_st_writer_close(struct fp_st_writer *w);
/* Abandon: remove the temporary file, free w. NULL is fine. */
void fp_st_writer_abort(struct fp_st_writer *w);

#endif
