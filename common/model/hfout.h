/*
 * Writing a Hugging Face model directory a user can load as is: the small files of the source
 * directory copied, the safetensors rewritten tensor by tensor with some tensors replaced by new
 * f32 values converted back to their ORIGINAL dtype.
 *
 * What the output holds:
 *   - every regular file of the source directory up to FP_HFOUT_MAX_SMALL bytes that is not a
 *     weight file (config.json, generation_config.json, tokenizer*.json, tokenizer.model,
 *     special_tokens_map.json, README.md, ...), copied byte for byte (symlinks followed, as in
 *     the hub cache). Skipped, and listed by fp_hfout_skipped: subdirectories, hidden files,
 *     *.safetensors, weight files in other formats (*.bin, *.pt, *.pth, *.ckpt, *.h5,
 *     *.msgpack, *.gguf, *.onnx, *.pkl, *.npz), other "*.index.json" files, *.fpmask and
 *     report.json (outputs of an earlier `fedprune prune`), and larger files.
 *   - the same sharding as the source: one output file per source shard, under the same name,
 *     holding the same tensors (same tensor -> file map). A sharded source's
 *     model.safetensors.index.json is copied byte for byte: names, shapes and dtypes do not
 *     change, so neither does its total_size or weight map.
 *   - each tensor in its original dtype and shape. A tensor the caller does not replace is
 *     copied byte for byte. A replaced one is converted from f32 (F32 as is, F16 and BF16 with
 *     dtype.h's round-to-nearest-even), so an exact zero stays an exact zero and a value that
 *     came from the file unchanged converts back to the same bits.
 *   - each shard's __metadata__ copied; {"format": "pt"} added when a shard has none
 *     (transformers refuses other formats).
 *
 * Order inside an output shard: the tensors that do not belong to a decoder layer first, then
 * layer 0, layer 1, ... (a tensor belongs to layer i when its name starts with
 * "model.layers.i."), each group by decreasing element size (so data stays aligned) and then
 * in source order. A caller that prunes layer by layer writes each layer as soon as it is done
 * (fp_hfout_write), so only one layer is ever held in memory.
 *
 * Atomicity: everything is written into a new directory OUT.tmp.XXXXXX next to OUT, renamed
 * to OUT by fp_hfout_commit (after fsync of every file and of the directory). OUT must not
 * exist, or be an empty directory. On failure or fp_hfout_abort the temporary directory is
 * removed and OUT is untouched.
 */
#ifndef FP_HFOUT_H
#define FP_HFOUT_H

#include <stddef.h>
#include <stdint.h>

#include "mask.h"
#include "safetensors.h"

#define FP_HFOUT_MAX_SMALL (64ull << 20) /* small files above this are not copied */
#define FP_HFOUT_OTHER	   (-1L)	 /* the group of tensors outside decoder layers */

/*
 * Decoder layer of a tensor name ("model.layers.12.mlp.up_proj.weight" -> 12), or
 * FP_HFOUT_OTHER. Pure.
 */
long fp_hfout_layer_of(const char *name);

/*
 * Supplies the new contents of tensor t: set *ret to t->numel f32 values (borrowed until the
 * next call) to replace it, or leave it NULL to copy t unchanged. Returns 0 or a negative errno
 * (aborts the write).
 */
typedef int (*fp_hfout_fn)(void *ctx, const struct fp_st_tensor *t, const float **ret);

struct fp_hfout;

/*
 * Start writing the model src (opened from src_dir; borrowed, must stay open until commit or
 * abort) into out_dir: check out_dir, create the temporary directory, copy the small files and
 * open one safetensors writer per shard. On success *ret is owned by the caller: finish with
 * fp_hfout_commit or fp_hfout_abort. Returns 0 or a negative errno: -EEXIST when out_dir exists
 * and is not an empty directory; -errno from the file system (detail names the path).
 */
int fp_hfout_open(const struct fp_st_model *src, const char *src_dir, const char *out_dir,
		  struct fp_hfout **ret);

/* The temporary directory being filled (to add files of one's own). Borrowed, valid until
 * commit or abort. */
const char *fp_hfout_tmpdir(const struct fp_hfout *o);

/*
 * Number of source files not copied, and the i-th of them with the reason ("directory",
 * "weights", "too large", ...) in *ret_reason. Borrowed until commit or abort.
 */
size_t fp_hfout_skipped_count(const struct fp_hfout *o);
const char *fp_hfout_skipped(const struct fp_hfout *o, size_t i, const char **ret_reason);

/*
 * Write every tensor of the groups up to layer `upto` (FP_HFOUT_OTHER, then layers 0 .. upto)
 * not written yet, asking fn (may be NULL: copy everything) for each. Calls with a smaller upto
 * than before write nothing. Returns 0 or a negative errno (-ENOTSUP when fn replaces a tensor
 * whose dtype is not F32, F16 or BF16); after an error only fp_hfout_abort is useful.
 */
int fp_hfout_write(struct fp_hfout *o, long upto, fp_hfout_fn fn, void *ctx);

/*
 * Write every remaining tensor (asking fn as above) and close the shard files. After this the
 * temporary directory holds the complete model; add own files, then fp_hfout_commit.
 */
int fp_hfout_finish(struct fp_hfout *o, fp_hfout_fn fn, void *ctx);

/*
 * fsync the temporary directory and rename it to out_dir (fp_hfout_finish must have succeeded,
 * else -EINVAL). Frees o in every case; on failure the temporary directory is removed.
 */
int fp_hfout_commit(struct fp_hfout *o);

/* Drop everything written (remove the temporary directory) and free o. NULL is fine. */
void fp_hfout_abort(struct fp_hfout *o);

/*
 * Identity of the weights of a model without reading them: BLAKE2b-256 over, for each shard in
 * file-name order, its base name, a NUL byte, its size as u64 little-endian, and its whole
 * safetensors header (the 8-byte length and the JSON: names, dtypes, shapes, offsets). Detects
 * a different model, layout or file; not a change of weight values of the same layout (hash
 * the files for that). Returns 0 or -errno (detail names the file).
 */
int fp_hfout_source_digest(const struct fp_st_model *src, uint8_t out[32]);

/*
 * Check that every tensor of the mask set ms names a float tensor (F32, F16, BF16) of src with
 * exactly the mask's shape. label names the mask file in messages. Returns 0 or -EINVAL with a
 * detail naming the tensor.
 */
int fp_hfout_check_mask(const struct fp_mask_set *ms, const struct fp_st_model *src,
			const char *label);

/* What fp_hfout_apply_mask did. */
struct fp_hfout_apply_stats {
	size_t masked;	 /* tensors a mask was applied to */
	uint64_t numel;	 /* their weights */
	uint64_t pruned; /* mask bits set in them */
	uint64_t zeros;	 /* exact zeros in them after applying (pruned + zeros already there) */
};

/*
 * `fedprune apply`: write src_dir's model to out_dir with the weights the mask set ms prunes set
 * to zero (fp_hfout_check_mask first; tensors without a mask are copied). ms is borrowed; label
 * names it in messages. Fills *ret (may be NULL) on success. Returns 0 or a negative errno.
 */
int fp_hfout_apply_mask(const char *src_dir, const struct fp_mask_set *ms, const char *label,
			const char *out_dir, struct fp_hfout_apply_stats *ret);

#endif
