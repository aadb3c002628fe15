/*
 * The two daemons as processes: a client connects to a server over mTLS, both stop cleanly on
 * SIGTERM (exit 0 after "stopped", which is only logged when uv_loop_close() succeeded),
 * insecure mode needs both the flag and the config key, and a client the server refuses
 * (expired certificate) gives up with exit status 1 instead of retrying forever.
 *
 * The programs are found next to this test in the build tree: ../server and ../client.
 */
#include "test.h"

#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "net_certs.h"

static char server_bin[PATH_MAX], client_bin[PATH_MAX];
static struct fp_test_pki pki;

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

/* Start prog with args; its stderr goes to log. */
static pid_t spawn(const char *prog, const char *log, const char *a1, const char *a2,
		   const char *a3)
{
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd < 0 || dup2(fd, 2) < 0)
			_exit(127);
		execl(prog, prog, a1, a2, a3, (char *)NULL);
		_exit(127);
	}
	return pid;
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = calloc(1, 1 << 20);
	size_t n;

	assert_non_null(buf);
	if (!f)
		return buf;
	n = fread(buf, 1, (1 << 20) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/* Wait until the file at path contains text (up to ~20 s). */
static bool wait_for(const char *path, const char *text)
{
	for (int i = 0; i < 400; i++) {
		char *s = slurp(path);
		bool found = strstr(s, text) != NULL;

		free(s);
		if (found)
			return true;
		usleep(50000);
	}
	return false;
}

static int wait_exit(pid_t pid)
{
	int st = 0;

	for (int i = 0; i < 400; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		usleep(50000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	fail_msg("process %d did not exit", (int)pid);
	return -1;
}

static char *write_cfg(const char *name, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static char *write_cfg(const char *name, const char *fmt, ...)
{
	char *text = NULL, *path;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&text, fmt, ap);
	va_end(ap);
	assert_true(n > 0);
	path = fp_test_write_file(pki.dir, name, text, (size_t)n);
	free(text);
	return path;
}

static char *server_cfg(int port, bool insecure)
{
	return write_cfg("server.ini",
			 "[server]\nlisten = 127.0.0.1\nport = %d\n[tls]\ncert = %s\nkey = %s\n"
			 "ca = %s\ninsecure = %s\n[net]\nheartbeat = 200ms\nidle_timeout = 5s\n"
			 "[round]\nmodel = %s/deploy/demo/model\nstate_dir = %s/server-state\n"
			 "min_clients = 8\n",
			 port, pki.server_crt, pki.server_key, pki.ca, insecure ? "true" : "false",
			 FP_SOURCE_DIR, pki.dir);
}

static char *client_cfg(int port, const char *cn, int flags)
{
	char *crt, *key, *path;

	fp_test_pki_issue(&pki, cn, cn, flags, &crt, &key);
	path = write_cfg(
		"client.ini",
		"[client]\nserver = 127.0.0.1\nport = %d\nreconnect_min = 50ms\n"
		"reconnect_max = 200ms\n[tls]\ncert = %s\nkey = %s\nca = %s\n[net]\n"
		"heartbeat = 200ms\nidle_timeout = 5s\n[job]\nmodel = %s/deploy/demo/model\n"
		"calib = %s/deploy/demo/data/client1.txt\nstate_dir = %s/client-state\n",
		port, crt, key, pki.ca, FP_SOURCE_DIR, FP_SOURCE_DIR, pki.dir);
	free(crt);
	free(key);
	return path;
}

static char *log_path(const char *name)
{
	char *p = NULL;

	assert_true(asprintf(&p, "%s/%s", pki.dir, name) > 0);
	return p;
}

static void test_connect_and_sigterm(void **state)
{
	int port = free_port();
	char *scfg = server_cfg(port, false), *ccfg = client_cfg(port, "site-a", 0);
	char *slog = log_path("server.log"), *clog = log_path("client.log"), *s;
	pid_t sp, cp;

	(void)state;
	sp = spawn(server_bin, slog, "-c", scfg, NULL);
	assert_true(wait_for(slog, "msg=listening"));
	cp = spawn(client_bin, clog, "-c", ccfg, NULL);
	assert_true(wait_for(slog, "msg=\"client joined\" identity=site-a"));
	assert_true(wait_for(clog, "msg=\"connected to server\""));
	/* Stop the server first: the client is told, and keeps trying to reconnect. */
	kill(sp, SIGTERM);
	assert_int_equal(wait_exit(sp), 0);
	assert_true(wait_for(clog, "code=SHUTTING_DOWN"));
	kill(cp, SIGTERM);
	assert_int_equal(wait_exit(cp), 0);
	s = slurp(slog);
	printf("%s", s);
	assert_non_null(strstr(s, "msg=stopped daemon=fedprune-server"));
	assert_null(strstr(s, "did not close cleanly"));
	free(s);
	s = slurp(clog);
	printf("%s", s);
	assert_non_null(strstr(s, "msg=stopped daemon=fedprune-client"));
	assert_non_null(strstr(s, "disconnected from server"));
	free(s);
	free(scfg);
	free(ccfg);
	free(slog);
	free(clog);
}

static void test_insecure_needs_both(void **state)
{
	int port = free_port();
	char *log = log_path("insecure.log"), *s;
	char *cfg_off = server_cfg(port, false);
	pid_t pid;

	(void)state;
	/* The flag alone is refused. */
	pid = spawn(server_bin, log, "-c", cfg_off, "--insecure");
	assert_int_equal(wait_exit(pid), 1);
	s = slurp(log);
	assert_non_null(strstr(s, "--insecure also needs"));
	free(s);
	free(cfg_off);
	/* The config key alone is refused. */
	cfg_off = server_cfg(port, true);
	pid = spawn(server_bin, log, "-c", cfg_off, NULL);
	assert_int_equal(wait_exit(pid), 1);
	s = slurp(log);
	assert_non_null(strstr(s, "needs the --insecure flag"));
	free(s);
	/* Both: it runs, says so loudly, and stops cleanly. */
	pid = spawn(server_bin, log, "-c", cfg_off, "--insecure");
	assert_true(wait_for(log, "INSECURE MODE"));
	assert_true(wait_for(log, "msg=listening"));
	kill(pid, SIGTERM);
	assert_int_equal(wait_exit(pid), 0);
	free(cfg_off);
	free(log);
}

static void test_refused_client_gives_up(void **state)
{
	int port = free_port();
	char *scfg = server_cfg(port, false), *ccfg = client_cfg(port, "old-site", FP_CERT_EXPIRED);
	char *slog = log_path("server2.log"), *clog = log_path("client2.log"), *s;
	pid_t sp, cp;

	(void)state;
	sp = spawn(server_bin, slog, "-c", scfg, NULL);
	assert_true(wait_for(slog, "msg=listening"));
	cp = spawn(client_bin, clog, "-c", ccfg, NULL);
	assert_int_equal(wait_exit(cp), 1);
	s = slurp(clog);
	printf("%s", s);
	assert_non_null(strstr(s, "client certificate has expired"));
	assert_non_null(strstr(s, "giving up"));
	free(s);
	s = slurp(slog);
	assert_non_null(strstr(s, "claimed_cn=old-site"));
	assert_non_null(strstr(s, "certificate has expired"));
	free(s);
	kill(sp, SIGTERM);
	assert_int_equal(wait_exit(sp), 0);
	free(scfg);
	free(ccfg);
	free(slog);
	free(clog);
}

/* A CA-signed client whose identity is not in the server's allowlist is refused (over real
 * sockets), gives up with status 1, and the server names the identity. */
static void test_allowlist_refuses(void **state)
{
	int port = free_port();
	char *scfg = server_cfg(port, false), *ccfg = client_cfg(port, "site-b", 0);
	char *allow = fp_test_write_file(pki.dir, "allow.txt", "site-a\n", 7);
	char *slog = log_path("server3.log"), *clog = log_path("client3.log"), *s;
	FILE *f = fopen(scfg, "a");
	pid_t sp, cp;

	(void)state;
	assert_non_null(f);
	/* [round] is the last section of server_cfg: reopen [server] for the allowlist */
	fprintf(f, "[server]\nallowlist = %s\n", allow);
	fclose(f);
	sp = spawn(server_bin, slog, "-c", scfg, NULL);
	assert_true(wait_for(slog, "msg=listening"));
	cp = spawn(client_bin, clog, "-c", ccfg, NULL);
	assert_int_equal(wait_exit(cp), 1);
	s = slurp(clog);
	assert_non_null(strstr(s, "NOT_ALLOWED"));
	free(s);
	s = slurp(slog);
	assert_non_null(strstr(s, "identity 'site-b' is not in the allowlist"));
	free(s);
	kill(sp, SIGTERM);
	assert_int_equal(wait_exit(sp), 0);
	free(scfg);
	free(ccfg);
	free(allow);
	free(slog);
	free(clog);
}

static int setup(void **state)
{
	(void)state;
	fp_test_pki_create(&pki);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	fp_test_pki_free(&pki);
	return 0;
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_connect_and_sigterm),
		cmocka_unit_test(test_insecure_needs_both),
		cmocka_unit_test(test_refused_client_gives_up),
		cmocka_unit_test(test_allowlist_refuses),
	};
	char self[PATH_MAX], *dir;

	(void)argc;
	/* This test lives in BUILD/tests; the daemons in BUILD/server and BUILD/client. */
	if (!realpath(argv[0], self))
		return 1;
	dir = dirname(self);
	snprintf(server_bin, sizeof(server_bin), "%s/../server/fedprune-server", dir);
	snprintf(client_bin, sizeof(client_bin), "%s/../client/fedprune-client", dir);
	if (access(server_bin, X_OK) != 0 || access(client_bin, X_OK) != 0) {
		fprintf(stderr, "daemons not found next to %s\n", dir);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup, teardown);
}
