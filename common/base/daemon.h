/*
 * The life of a daemon process around its single libuv loop: SIGPIPE ignored, SIGTERM and
 * SIGINT handled on the loop, and a shutdown that closes every handle and checks that
 * uv_loop_close() succeeds. One fp_daemon per process; loop-thread only.
 */
#ifndef FP_DAEMON_H
#define FP_DAEMON_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

struct fp_daemon;

/*
 * Called on the loop thread when SIGTERM/SIGINT arrives (or fp_daemon_stop), before handles
 * are closed. Return 0 to stop the loop at once, or 1 to drain: the daemon then closes its own
 * handles and the loop ends when none is left (at most FP_DAEMON_DRAIN_MS later; after that
 * whatever is still open is closed).
 */
typedef int (*fp_daemon_stop_cb)(struct fp_daemon *d, int signum);

#define FP_DAEMON_DRAIN_MS 10000

struct fp_daemon_desc;

struct fp_daemon {
	uv_loop_t loop;
	uv_signal_t sig_term;
	uv_signal_t sig_int;
	uv_timer_t drain; /* ends a drain that takes too long */
	const char *name; /* borrowed, for log lines */
	fp_daemon_stop_cb on_stop;
	void *data;	 /* the daemon's own state */
	int stop_signal; /* 0 while running */
	bool insecure;	 /* --insecure was given (the daemon decides what it means) */
	bool failed;	 /* fp_daemon_fail was called: exit status 1 */
	const struct fp_daemon_desc *desc; /* set by fp_daemon_main, else NULL */
};

/* Initialise d (caller-owned storage) and its loop and signal handlers. Returns 0 or -errno. */
int fp_daemon_init(struct fp_daemon *d, const char *name, fp_daemon_stop_cb on_stop, void *data);

/*
 * Run the loop until a stop signal, then close every remaining handle and the loop.
 * Returns 0 when the loop closed cleanly, -EBUSY if a handle could not be closed.
 */
int fp_daemon_run(struct fp_daemon *d);

/* Ask the loop to stop as if SIGTERM had arrived (loop thread only). */
void fp_daemon_stop(struct fp_daemon *d);

/* Stop because of a runtime failure (logged by the caller): the process exits with 1. */
void fp_daemon_fail(struct fp_daemon *d);

struct fp_cfg_key;

/* What distinguishes one daemon's main() from the other's. */
struct fp_daemon_desc {
	const char *prog;	       /* program name in messages */
	const char *summary;	       /* two or three lines for --help */
	const struct fp_cfg_key *keys; /* its configuration table */
	void *cfg;		       /* its configuration struct, filled from keys */
	size_t log_level_offset;       /* offsetof the int [log] level field in cfg */
	/* Set up the daemon's handles on d->loop; return 0 or -errno (then the daemon exits 1). */
	int (*start)(struct fp_daemon *d, void *cfg);
	/* Optional: begin a clean stop (see fp_daemon_stop_cb); also called after a failed
	 * start, so it must cope with a partial one. */
	int (*stop)(struct fp_daemon *d, void *cfg);
};

/*
 * The whole main() of a daemon: options (-c, --check-config, --print-config,
 * --print-config-template, --log-level, --insecure, --help, --version), configuration, loop,
 * clean shutdown. Returns the process exit status: 0, 1 for a runtime or configuration
 * failure; usage errors exit 2 from inside.
 */
int fp_daemon_main(int argc, char **argv, const struct fp_daemon_desc *desc);

#endif
