/*
 * Shared helpers for the cmocka unit tests. Include after <cmocka.h>'s prerequisites:
 * every test file starts with `#include "test.h"`, which pulls them in.
 */
#ifndef FP_TEST_H
#define FP_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* A fresh private directory under $TMPDIR (or /tmp); removed by fp_test_rmtree. Caller frees. */
char *fp_test_mkdtemp(void);

/* Remove a directory tree created by a test. */
void fp_test_rmtree(const char *path);

/* Write len bytes to dir/name; returns the full path (caller frees). Fails the test on error. */
char *fp_test_write_file(const char *dir, const char *name, const void *data, size_t len);

/* Path of a fixture under tests/data (caller frees). */
char *fp_test_data_path(const char *rel);

/* Deterministic xorshift64* generator for test inputs. */
uint64_t fp_test_rand(uint64_t *state);

struct fp_st_file;
struct fp_dataset;

/*
 * Fill ds (caller-owned struct) with the (nsamples, seqlen) I32 "tokens" tensor of a golden
 * fixture file, one sample per row. Fails the test if the tensor is missing or not 2-D I32.
 * Release with fp_test_dataset_clear.
 */
void fp_test_golden_dataset(const struct fp_st_file *g, struct fp_dataset *ds);

/* Free the arrays fp_test_golden_dataset allocated. */
void fp_test_dataset_clear(struct fp_dataset *ds);

/* Normalised mean squared error: sum (a-b)^2 / sum b^2 (0 when both are zero). */
double fp_test_nmse(const float *a, const float *b, size_t n);

#endif
