/*
 * Daemon process life around one libuv loop (see daemon.h).
 */
#include "daemon.h"

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cfg.h"
#include "cli.h"
#include "err.h"
#include "log.h"

static void close_cb_noop(uv_handle_t *h)
{
	(void)h;
}

static void close_any(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, close_cb_noop);
}

static void on_drain_timeout(uv_timer_t *t)
{
	struct fp_daemon *d = t->data;

	fp_log_warn("shutdown took too long: closing what is left", "daemon=%s after_ms=%d",
		    d->name, FP_DAEMON_DRAIN_MS);
	uv_stop(&d->loop);
}

static void begin_stop(struct fp_daemon *d, int signum)
{
	int drain = 0;

	if (d->stop_signal)
		return;
	d->stop_signal = signum ? signum : SIGTERM;
	fp_log_info("shutting down", "daemon=%s signal=%s", d->name, strsignal(d->stop_signal));
	uv_signal_stop(&d->sig_term);
	uv_signal_stop(&d->sig_int);
	if (d->on_stop)
		drain = d->on_stop(d, d->stop_signal);
	if (drain > 0) {
		/* The loop ends by itself once the daemon's handles are closed; the timer does
		 * not keep it alive. */
		uv_timer_start(&d->drain, on_drain_timeout, FP_DAEMON_DRAIN_MS, 0);
		uv_unref((uv_handle_t *)&d->drain);
		return;
	}
	uv_stop(&d->loop);
}

static void on_signal(uv_signal_t *h, int signum)
{
	begin_stop(h->data, signum);
}

int fp_daemon_init(struct fp_daemon *d, const char *name, fp_daemon_stop_cb on_stop, void *data)
{
	int r;

	memset(d, 0, sizeof(*d));
	d->name = name;
	d->on_stop = on_stop;
	d->data = data;
	/* A peer closing its socket must surface as EPIPE, never kill the process. */
	signal(SIGPIPE, SIG_IGN);
	r = uv_loop_init(&d->loop);
	if (r < 0)
		return r;
	uv_signal_init(&d->loop, &d->sig_term);
	uv_signal_init(&d->loop, &d->sig_int);
	uv_timer_init(&d->loop, &d->drain);
	d->sig_term.data = d;
	d->sig_int.data = d;
	d->drain.data = d;
	r = uv_signal_start(&d->sig_term, on_signal, SIGTERM);
	if (r == 0)
		r = uv_signal_start(&d->sig_int, on_signal, SIGINT);
	if (r < 0) {
		uv_walk(&d->loop, close_any, NULL);
		uv_run(&d->loop, UV_RUN_DEFAULT);
		uv_loop_close(&d->loop);
	}
	return r;
}

void fp_daemon_stop(struct fp_daemon *d)
{
	begin_stop(d, SIGTERM);
}

void fp_daemon_fail(struct fp_daemon *d)
{
	d->failed = true;
	begin_stop(d, SIGTERM);
}

static int main_on_stop(struct fp_daemon *d, int signum)
{
	(void)signum;
	if (d->desc && d->desc->stop)
		return d->desc->stop(d, d->data);
	return 0;
}

int fp_daemon_run(struct fp_daemon *d)
{
	int r;

	uv_run(&d->loop, UV_RUN_DEFAULT);
	/* Whatever the daemon left open is closed now; their close callbacks run below. */
	uv_walk(&d->loop, close_any, NULL);
	for (int i = 0; i < 100 && uv_run(&d->loop, UV_RUN_NOWAIT); i++)
		;
	r = uv_loop_close(&d->loop);
	if (r < 0) {
		fp_log_err("event loop did not close cleanly", "daemon=%s err=%s", d->name,
			   fp_q(fp_strerror(r)));
		return -EBUSY;
	}
	fp_log_info("stopped", "daemon=%s", d->name);
	return 0;
}

static void daemon_usage(const struct fp_daemon_desc *desc)
{
	printf("Usage: %s [OPTIONS]\n"
	       "\n"
	       "%s\n"
	       "\n"
	       "Options:\n"
	       "  -c, --config FILE     read configuration from FILE (INI)\n"
	       "      --check-config    validate the configuration and exit\n"
	       "      --print-config    print every configuration key with its default and bounds\n"
	       "      --print-config-template\n"
	       "                        print a complete commented example configuration file\n"
	       "  -l, --log-level LVL   debug, info, warn or error (overrides the config)\n"
	       "      --insecure        development only: plaintext, no authentication (also\n"
	       "                        needs 'insecure = true' in [tls]; warns every minute)\n"
	       "  -h, --help            show this help and exit\n"
	       "  -V, --version         show version information and exit\n",
	       desc->prog, desc->summary);
}

int fp_daemon_main(int argc, char **argv, const struct fp_daemon_desc *desc)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, 'C' },
		{ "print-config", no_argument, NULL, 'P' },
		{ "print-config-template", no_argument, NULL, 'T' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "insecure", no_argument, NULL, 'I' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ 0 },
	};
	const char *config_path = NULL;
	bool check_only = false, level_flag = false, insecure = false;
	enum fp_log_level level = FP_LOG_INFO;
	struct fp_daemon d;
	int c, r;

	opterr = 0;
	while ((c = getopt_long(argc, argv, ":c:l:hV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config_path = optarg;
			break;
		case 'C':
			check_only = true;
			break;
		case 'P':
			fp_cfg_describe(desc->keys, stdout);
			return 0;
		case 'T':
			fp_cfg_template(desc->keys, desc->prog, stdout);
			return fflush(stdout) == 0 && !ferror(stdout) ? 0 : 1;
		case 'l':
			if (fp_log_parse_level(optarg, &level) < 0)
				fp_cli_fail(desc->prog,
					    "--log-level '%s' is not debug, info, warn or error",
					    optarg);
			level_flag = true;
			break;
		case 'I':
			insecure = true;
			break;
		case 'h':
			daemon_usage(desc);
			return 0;
		case 'V':
			fp_cli_version(desc->prog);
			return 0;
		default:
			fp_cli_bad_option(desc->prog, c, argv);
		}
	}
	if (optind < argc)
		fp_cli_fail(desc->prog, "unexpected argument '%s'", argv[optind]);

	r = config_path ? fp_cfg_load_file(desc->keys, desc->cfg, config_path)
			: fp_cfg_defaults(desc->keys, desc->cfg);
	if (r < 0) {
		fprintf(stderr, "%s: configuration error: %s\n", desc->prog, fp_err_last());
		goto out;
	}
	if (!level_flag)
		level = (enum fp_log_level) * (int *)((char *)desc->cfg + desc->log_level_offset);
	fp_log_set_level(level);
	if (check_only) {
		printf("%s: configuration OK\n", config_path ? config_path : "(defaults)");
		goto out;
	}

	r = fp_daemon_init(&d, desc->prog, main_on_stop, desc->cfg);
	if (r < 0) {
		fp_log_err("cannot start event loop", "err=%s", fp_q(fp_strerror(r)));
		goto out;
	}
	d.desc = desc;
	d.insecure = insecure;
	fp_err_clear();
	r = desc->start ? desc->start(&d, desc->cfg) : 0;
	if (r < 0) {
		fp_log_err("startup failed", "daemon=%s err=%s detail=%s", desc->prog,
			   fp_q(fp_strerror(r)), fp_q(fp_err_last()));
		fp_daemon_stop(&d);
	} else {
		fp_log_info("started", "daemon=%s config=%s", desc->prog,
			    fp_q(config_path ? config_path : "-"));
	}
	if (fp_daemon_run(&d) < 0 && r == 0)
		r = -EBUSY;
	if (d.failed && r == 0)
		r = -EIO;
out:
	fp_cfg_free(desc->keys, desc->cfg);
	return r < 0 ? 1 : 0;
}
