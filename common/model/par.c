/*
 * Parallel-for over pthreads and the BLAS thread knob (see par.h).
 */
#include "par.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <unistd.h>

/*
 * OpenBLAS's thread API, declared weak so the code links against any CBLAS: with another
 * library the symbols are NULL and the knobs do nothing.
 */
extern void openblas_set_num_threads(int num_threads) __attribute__((weak));
extern int openblas_get_num_threads(void) __attribute__((weak));

static unsigned par_threads; /* 0 = not yet decided */

static unsigned default_threads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 1;
	return n > FP_PAR_MAX_THREADS ? FP_PAR_MAX_THREADS : (unsigned)n;
}

unsigned fp_par_threads(void)
{
	if (!par_threads)
		par_threads = default_threads();
	return par_threads;
}

void fp_par_set_threads(unsigned n)
{
	if (n < 1)
		n = 1;
	if (n > FP_PAR_MAX_THREADS)
		n = FP_PAR_MAX_THREADS;
	par_threads = n;
}

struct par_job {
	fp_par_fn fn;
	void *ctx;
	size_t n;
	size_t chunk;	    /* static: items per thread */
	bool dynamic;	    /* hand out items one by one */
	atomic_size_t next; /* dynamic: next item */
};

struct par_arg {
	struct par_job *job;
	unsigned tid;
};

static void run_share(struct par_job *job, unsigned tid)
{
	if (job->dynamic) {
		for (;;) {
			size_t i = atomic_fetch_add(&job->next, 1);

			if (i >= job->n)
				return;
			job->fn(job->ctx, i, i + 1, tid);
		}
	}
	size_t b = (size_t)tid * job->chunk;
	size_t e = b + job->chunk;

	if (b >= job->n)
		return;
	if (e > job->n)
		e = job->n;
	job->fn(job->ctx, b, e, tid);
}

static void *par_main(void *p)
{
	struct par_arg *a = p;

	run_share(a->job, a->tid);
	return NULL;
}

static void par_run(struct par_job *job, unsigned nt)
{
	pthread_t th[FP_PAR_MAX_THREADS];
	struct par_arg args[FP_PAR_MAX_THREADS];
	bool started[FP_PAR_MAX_THREADS] = { false };

	for (unsigned t = 1; t < nt; t++) {
		args[t].job = job;
		args[t].tid = t;
		started[t] = pthread_create(&th[t], NULL, par_main, &args[t]) == 0;
	}
	run_share(job, 0);
	/* A share whose thread could not start runs here, with its own tid (static) or as
	 * another taker of the shared counter (dynamic, where thread 0 already drained it). */
	for (unsigned t = 1; t < nt; t++) {
		if (started[t])
			pthread_join(th[t], NULL);
		else if (!job->dynamic)
			run_share(job, t);
	}
}

void fp_par_for(size_t n, size_t grain, fp_par_fn fn, void *ctx)
{
	struct par_job job = { .fn = fn, .ctx = ctx, .n = n };
	size_t nt = fp_par_threads();

	if (n == 0)
		return;
	if (grain < 1)
		grain = 1;
	if (nt > (n + grain - 1) / grain)
		nt = (n + grain - 1) / grain;
	if (nt <= 1) {
		fn(ctx, 0, n, 0);
		return;
	}
	job.chunk = (n + nt - 1) / nt;
	nt = (n + job.chunk - 1) / job.chunk;
	par_run(&job, (unsigned)nt);
}

void fp_par_dyn(size_t n, fp_par_fn fn, void *ctx)
{
	struct par_job job = { .fn = fn, .ctx = ctx, .n = n, .dynamic = true };
	size_t nt = fp_par_threads();

	if (n == 0)
		return;
	atomic_init(&job.next, 0);
	if (nt > n)
		nt = n;
	if (nt <= 1) {
		for (size_t i = 0; i < n; i++)
			fn(ctx, i, i + 1, 0);
		return;
	}
	par_run(&job, (unsigned)nt);
}

int fp_blas_threads(void)
{
	if (openblas_get_num_threads)
		return openblas_get_num_threads();
	return 1;
}

void fp_blas_set_threads(int n)
{
	if (openblas_set_num_threads && n >= 1)
		openblas_set_num_threads(n);
}

int fp_blas_single_begin(void)
{
	int saved = fp_blas_threads();

	if (saved > 1)
		fp_blas_set_threads(1);
	return saved;
}

void fp_blas_single_end(int saved)
{
	if (saved > 1)
		fp_blas_set_threads(saved);
}
