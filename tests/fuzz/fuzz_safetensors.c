/*
 * Fuzz the safetensors header validator (fp_st_open_mem). On success, check the invariants the
 * rest of the code relies on (every tensor inside the image, sizes consistent, names findable,
 * ranges disjoint) and convert the small float tensors, so a wrong bound shows up as an ASan
 * report or a trap.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
	if (!ok)
		__builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fp_st_file *f = NULL;
	const uint8_t *prev_end = data;

	if (fp_st_open_mem(data, size, "fuzz", &f) < 0)
		return 0;
	for (size_t i = 0; i < fp_st_count(f); i++) {
		const struct fp_st_tensor *t = fp_st_at(f, i);
		const uint8_t *p = t->data;
		uint64_t numel = 1;

		for (unsigned k = 0; k < t->ndim; k++)
			numel *= t->shape[k];
		check(t->ndim <= FP_ST_MAX_DIMS && numel == t->numel);
		check(t->nbytes == t->numel * fp_dtype_size(t->dtype));
		check(p >= data && p <= data + size && t->nbytes <= (size_t)(data + size - p));
		check(p >= prev_end || t->nbytes == 0); /* offset order, disjoint */
		prev_end = p + t->nbytes > prev_end ? p + t->nbytes : prev_end;
		check(fp_st_find(f, t->name) == t);
		if (t->numel <= 4096 &&
		    (t->dtype == FP_DT_F32 || t->dtype == FP_DT_F16 || t->dtype == FP_DT_BF16)) {
			float *out = malloc(t->numel * sizeof(float) + 1);

			check(out && fp_st_to_f32(t, out) == 0);
			free(out);
		}
		fp_st_release(t);
	}
	for (size_t i = 0; i < fp_st_metadata_count(f); i++) {
		const char *v = NULL, *k = fp_st_metadata_at(f, i, &v);

		check(k && v && fp_st_metadata(f, k) == v);
	}
	check(fp_st_at(f, fp_st_count(f)) == NULL);
	fp_st_close(f);
	return 0;
}
