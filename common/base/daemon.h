/*
 * The life of a daemon process around its single libuv loop: SIGPIPE ignored, SIGTERM and
 * SIGINT handled on the loop, and a shutdown that closes every handle and checks that
 * uv_loop_close() succeeds. One fp_daemon per process; loop-thread only.
 */
#ifndef FP_DAEMON_H
#define FP_DAEMON_H

#include <uv.h>

struct fp_daemon;

/* Called on the loop thread when SIGTERM/SIGINT arrives, before handles are closed. */
typedef void (*fp_daemon_stop_cb)(struct fp_daemon *d, int signum);

struct fp_daemon {
	uv_loop_t loop;
	uv_signal_t sig_term;
	uv_signal_t sig_int;
	const char *name; /* borrowed, for log lines */
	fp_daemon_stop_cb on_stop;
	void *data;	 /* the daemon's own state */
	int stop_signal; /* 0 while running */
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
};

/*
 * The whole main() of a daemon: options (-c, --check-config, --print-config, --log-level,
 * --help, --version), configuration, loop, clean shutdown. Returns the process exit status:
 * 0, 1 for a runtime or configuration failure; usage errors exit 2 from inside.
 */
int fp_daemon_main(int argc, char **argv, const struct fp_daemon_desc *desc);

#endif
