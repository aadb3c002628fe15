/*
 * A tiny parallel-for over plain pthreads for the non-BLAS work of the forward pass (norms,
 * RoPE, attention over (sample, head) pairs, statistics), plus the knob for the BLAS library's
 * own thread pool.
 *
 * Threads are created for each region and joined before fp_par_for returns: regions are few
 * (about ten per decoder block) and each is milliseconds or more, so a pool is not worth its
 * complexity. If a thread cannot be created its share runs on the calling thread; the result
 * is the same, only slower.
 *
 * BLAS threads: the big sgemms use OpenBLAS's own pool (fp_blas_set_threads). Inside a
 * fp_par_for region that calls sgemm from several threads at once, the caller wraps the
 * region in fp_blas_single_begin/end so each sgemm runs on its calling thread and the two
 * pools do not oversubscribe the cores. With a BLAS other than OpenBLAS the BLAS knobs are
 * no-ops.
 */
#ifndef FP_PAR_H
#define FP_PAR_H

#include <stddef.h>

#define FP_PAR_MAX_THREADS 64

/*
 * Body of a parallel loop: handle items [begin, end). tid in [0, fp_par_threads()) is unique
 * among the threads of one region (index per-thread scratch with it).
 */
typedef void (*fp_par_fn)(void *ctx, size_t begin, size_t end, unsigned tid);

/* Number of threads fp_par_for uses (default: online CPUs, at most FP_PAR_MAX_THREADS). */
unsigned fp_par_threads(void);

/* Set the number of threads of later regions (clamped to 1..FP_PAR_MAX_THREADS). Not
 * thread-safe: call from the main thread between regions. */
void fp_par_set_threads(unsigned n);

/*
 * Static split: [0, n) is cut into at most fp_par_threads() contiguous ranges of at least
 * grain items each; fn runs once per range, concurrently. Returns when all are done.
 * n == 0 calls nothing. Call only from one thread at a time (regions do not nest).
 */
void fp_par_for(size_t n, size_t grain, fp_par_fn fn, void *ctx);

/*
 * Dynamic schedule: items are handed out one at a time (fn called with end = begin + 1) to
 * whichever thread is free; for items of uneven cost (causal attention of samples of
 * different lengths).
 */
void fp_par_dyn(size_t n, fp_par_fn fn, void *ctx);

/* Threads of the BLAS library's pool (1 if unknown). */
int fp_blas_threads(void);

/* Set the BLAS library's pool size (OpenBLAS only; no-op otherwise). */
void fp_blas_set_threads(int n);

/*
 * Make BLAS single-threaded for a region whose own threads call BLAS; returns the previous
 * count to hand to fp_blas_single_end.
 */
int fp_blas_single_begin(void);
void fp_blas_single_end(int saved);

#endif
