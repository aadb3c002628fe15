/* Table-driven INI configuration: good files, every kind of bad line, bounds, defaults. */
#include "test.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cfg.h"
#include "err.h"

struct demo_cfg {
	char *listen;
	uint32_t max_clients;
	uint64_t round_ms;
	uint64_t max_frame;
	double sparsity;
	bool insecure;
	int method;
	char *ca;
};

static const char *const methods[] = { "magnitude", "wanda", "sparsegpt", NULL };

static const struct fp_cfg_key keys[] = {
	{ "server", "listen", FP_CFG_STR, offsetof(struct demo_cfg, listen), .def = "[::]:7443",
	  .max = 64, .help = "address" },
	{ "server", "max_clients", FP_CFG_U32, offsetof(struct demo_cfg, max_clients), .def = "64",
	  .min = 1, .max = 4096, .help = "clients" },
	{ "server", "max_frame", FP_CFG_SIZE, offsetof(struct demo_cfg, max_frame), .def = "4MiB",
	  .min = 1024, .max = 1u << 30, .help = "frame" },
	{ "round", "timeout", FP_CFG_MSEC, offsetof(struct demo_cfg, round_ms), .def = "600s",
	  .min = 1000, .max = 86400000, .help = "deadline" },
	{ "round", "sparsity", FP_CFG_DOUBLE, offsetof(struct demo_cfg, sparsity), .def = "0.5",
	  .dmin = 0.0, .dmax = 0.99, .help = "target" },
	{ "round", "method", FP_CFG_ENUM, offsetof(struct demo_cfg, method), .def = "wanda",
	  .choices = methods, .help = "method" },
	{ "tls", "insecure", FP_CFG_BOOL, offsetof(struct demo_cfg, insecure), .def = "false",
	  .help = "dev only" },
	{ "tls", "ca", FP_CFG_STR, offsetof(struct demo_cfg, ca), .def = NULL, .help = "CA" },
	{ 0 },
};

static int load(struct demo_cfg *c, const char *text)
{
	memset(c, 0, sizeof(*c));
	fp_err_clear();
	return fp_cfg_load_buf(keys, c, "test.conf", text, strlen(text));
}

static void test_defaults_and_good_file(void **state)
{
	struct demo_cfg c;
	const char *text = "; comment\n"
			   "# also a comment\n"
			   "[server]\n"
			   "listen = 127.0.0.1:9000\n"
			   "max_clients=8 ; inline comment\n"
			   "\n"
			   "[round]\n"
			   "timeout = 5m\n"
			   "method = sparsegpt\n"
			   "[tls]\n"
			   "ca = /etc/fedprune/ca.pem\n"
			   "insecure = yes\n";

	(void)state;
	assert_int_equal(load(&c, text), 0);
	assert_string_equal(c.listen, "127.0.0.1:9000");
	assert_int_equal(c.max_clients, 8);
	assert_int_equal(c.round_ms, 300000);
	assert_int_equal(c.max_frame, 4u << 20); /* default */
	assert_true(c.sparsity == 0.5);		 /* default */
	assert_int_equal(c.method, 2);
	assert_true(c.insecure);
	assert_string_equal(c.ca, "/etc/fedprune/ca.pem");
	fp_cfg_free(keys, &c);
	assert_null(c.listen);
	assert_null(c.ca);
}

/* Each bad text must fail with a message that names the file, the line and the problem. */
static void expect_error(const char *text, const char *want)
{
	struct demo_cfg c;
	int r = load(&c, text);

	assert_true(r < 0);
	if (!strstr(fp_err_last(), want))
		fail_msg("error '%s' does not contain '%s'", fp_err_last(), want);
	fp_cfg_free(keys, &c);
}

static void test_bad_lines(void **state)
{
	char longline[400];

	(void)state;
	expect_error("[tls]\nca=x\n[server]\nbogus = 1\n", "test.conf:4: unknown key 'bogus'");
	expect_error("[tls]\nca=x\n[nope]\nlisten = 1\n", "test.conf:3: unknown section [nope]");
	expect_error("[tls]\nca=x\n[server]\nmax_clients = 0\n",
		     "test.conf:4: max_clients = '0': value out of bounds (allowed: 1..4096)");
	expect_error("[tls]\nca=x\n[server]\nmax_clients = 5000\n", "test.conf:4:");
	expect_error("[tls]\nca=x\n[server]\nmax_clients = many\n", "invalid value");
	expect_error("[tls]\nca=x\n[server]\nmax_clients = 5\nmax_clients = 6\n",
		     "test.conf:5: key 'max_clients' in section [server] is set twice");
	expect_error("[tls]\nca=x\nthis line has no equals sign\n", "test.conf:3: malformed line");
	expect_error("[tls]\nca=x\n[server\n", "test.conf:3: malformed line");
	expect_error("[tls]\nca=x\n[round]\nmethod = fast\n",
		     "not one of the allowed values (allowed: magnitude|wanda|sparsegpt)");
	expect_error("[tls]\nca=x\n[round]\nsparsity = 1.5\n", "test.conf:4:");
	expect_error("[tls]\nca=x\n[round]\nsparsity = nan\n", "test.conf:4:");
	expect_error("[tls]\nca=x\n[round]\ntimeout = 10ms\n", "out of bounds");
	expect_error("[tls]\nca=x\ninsecure = maybe\n", "expected true/false");
	expect_error("[server]\nlisten = 1.2.3.4:5\n", "required key 'ca' in section [tls]");
	expect_error("stray = 1\n[tls]\nca=x\n", "test.conf:1: unknown section []");
	memset(longline, 'a', sizeof(longline));
	memcpy(longline, "[tls]\nca=", 9);
	longline[sizeof(longline) - 2] = '\n';
	longline[sizeof(longline) - 1] = '\0';
	expect_error(longline, "test.conf:2: line longer than");
	expect_error("[server]\nlisten = 0123456789012345678901234567890123456789012345678901234567"
		     "890123456789\n[tls]\nca=x\n",
		     "value too long");
}

static void test_nul_byte(void **state)
{
	struct demo_cfg c;
	const char text[] = "[tls]\nca=a\0b\n";

	(void)state;
	memset(&c, 0, sizeof(c));
	assert_int_equal(fp_cfg_load_buf(keys, &c, "nul.conf", text, sizeof(text) - 1), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "nul.conf:2: NUL byte"));
	fp_cfg_free(keys, &c);
}

static void test_file_and_set(void **state)
{
	char *dir = fp_test_mkdtemp();
	char *path = fp_test_write_file(dir, "a.conf", "[tls]\nca = ca.pem\n", 18);
	struct demo_cfg c = { 0 };

	(void)state;
	assert_int_equal(fp_cfg_load_file(keys, &c, path), 0);
	assert_string_equal(c.ca, "ca.pem");
	assert_int_equal(fp_cfg_set(keys, &c, "server", "max_clients", "9", "--set"), 0);
	assert_int_equal(c.max_clients, 9);
	assert_int_equal(fp_cfg_set(keys, &c, "server", "nope", "9", "--set"), -ENOENT);
	assert_int_equal(fp_cfg_set(keys, &c, "server", "max_clients", "0", "--set"), -ERANGE);
	assert_non_null(strstr(fp_err_last(), "--set: [server] max_clients = '0'"));
	fp_cfg_free(keys, &c);

	assert_true(fp_cfg_load_file(keys, &c, "/nonexistent/fp.conf") < 0);
	assert_non_null(strstr(fp_err_last(), "/nonexistent/fp.conf: cannot open"));
	assert_true(fp_cfg_load_file(keys, &c, dir) < 0);
	assert_non_null(strstr(fp_err_last(), "not a regular file"));
	fp_cfg_free(keys, &c);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_describe_defaults_valid(void **state)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	(void)state;
	fp_cfg_describe(keys, f);
	fclose(f);
	assert_non_null(strstr(buf, "[server]\n"));
	assert_non_null(strstr(buf, ";max_clients = 64\n"));
	assert_non_null(strstr(buf, "; allowed: 1..4096\n"));
	assert_non_null(strstr(buf, "; (required)\n;ca =\n"));
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_and_good_file),
		cmocka_unit_test(test_bad_lines),
		cmocka_unit_test(test_nul_byte),
		cmocka_unit_test(test_file_and_set),
		cmocka_unit_test(test_describe_defaults_valid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
