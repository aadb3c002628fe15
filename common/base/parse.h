/*
 * Strict parsers for values from the command line and config files. Whole-string match only
 * (no trailing junk, no leading whitespace, no sign on unsigned values); each returns 0,
 * -EINVAL for a malformed value or -ERANGE for a value outside [min, max].
 */
#ifndef FP_PARSE_H
#define FP_PARSE_H

#include <stdbool.h>
#include <stdint.h>

int fp_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret);
int fp_parse_i64(const char *s, int64_t min, int64_t max, int64_t *ret);
/* Finite decimal or scientific notation; NaN and infinities are refused. */
int fp_parse_double(const char *s, double min, double max, double *ret);
/* true/false, yes/no, on/off, 1/0 (case-insensitive). */
int fp_parse_bool(const char *s, bool *ret);
/* Duration in milliseconds: "250ms", "30s", "5m", "2h"; a bare number means seconds. */
int fp_parse_duration_ms(const char *s, uint64_t min, uint64_t max, uint64_t *ret);
/* Byte size: "512", "64k"/"64KiB", "4M"/"4MiB", "2G"/"2GiB" (powers of 1024). */
int fp_parse_size(const char *s, uint64_t min, uint64_t max, uint64_t *ret);
/* "N:M" with 0 < N < M <= 64, e.g. "2:4". */
int fp_parse_nm(const char *s, unsigned *ret_n, unsigned *ret_m);

#endif
