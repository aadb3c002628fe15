/* Fuzz the INI configuration loader with a table that has one key of every type. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fz_cfg {
	char *s;
	uint32_t u32;
	uint64_t u64, ms, bytes;
	double d;
	bool b;
	int e;
};

static const char *const choices[] = { "a", "bb", NULL };

static const struct fp_cfg_key keys[] = {
	{ "", "top", FP_CFG_STR, offsetof(struct fz_cfg, s), .def = "x", .max = 32 },
	{ "s", "u32", FP_CFG_U32, offsetof(struct fz_cfg, u32), .def = "1", .min = 1, .max = 9 },
	{ "s", "u64", FP_CFG_U64, offsetof(struct fz_cfg, u64), .def = "0" },
	{ "s", "ms", FP_CFG_MSEC, offsetof(struct fz_cfg, ms), .def = "1s" },
	{ "s", "bytes", FP_CFG_SIZE, offsetof(struct fz_cfg, bytes), .def = "1k" },
	{ "t", "d", FP_CFG_DOUBLE, offsetof(struct fz_cfg, d), .def = "0", .dmin = -1, .dmax = 1 },
	{ "t", "b", FP_CFG_BOOL, offsetof(struct fz_cfg, b), .def = "no" },
	{ "t", "e", FP_CFG_ENUM, offsetof(struct fz_cfg, e), .def = "a", .choices = choices },
	{ 0 },
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_cfg c = { 0 };

	fp_cfg_load_buf(keys, &c, "fuzz", (const char *)data, size);
	fp_cfg_free(keys, &c);
	return 0;
}
