/* Fuzz the config.json parser (model.h): any bytes must give a config or a clean error. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fp_model_cfg c;
	size_t rows, cols;

	if (fp_model_cfg_parse((const char *)data, size, "fuzz/config.json", &c) < 0)
		return 0;
	/* a config that parses must be internally consistent */
	if (c.nheads % c.nkv_heads || c.head_dim % 2 || !c.hidden || !c.vocab || !c.nlayers)
		abort();
	for (int w = 0; w < FP_LIN_COUNT; w++) {
		fp_linear_shape(&c, (enum fp_linear)w, &rows, &cols);
		if (!rows || !cols)
			abort();
	}
	if (c.head_dim / 2 <= 512) {
		double inv[512];

		fp_rope_inv_freq(&c, inv);
		for (uint32_t j = 0; j < c.head_dim / 2; j++)
			if (!(inv[j] > 0))
				abort();
	}
	return 0;
}
