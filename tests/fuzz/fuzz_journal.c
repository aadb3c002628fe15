/* Fuzz the server's journal replay (server/journal.h) on an image in memory. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../server/journal.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int count(void *ud, const char *text, size_t lineno)
{
	size_t *n = ud;

	(void)lineno;
	*n += strlen(text) > 0; /* every record handed out is a NUL-terminated, non-empty line */
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size ? size : 1);
	size_t n = 0, records = 0, keep = 0;

	if (!buf)
		return 0;
	fp_log_set_level(FP_LOG_ERROR);
	memcpy(buf, data, size);
	if (fp_journal_scan(buf, size, "fuzz", count, &n, &records, &keep) == 0 &&
	    (records != n || keep > size))
		abort();
	free(buf);
	return 0;
}
