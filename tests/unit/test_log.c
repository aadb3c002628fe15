/* logfmt logger: line shape, quoting, level filtering. */
#include "test.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static void test_format(void **state)
{
	char line[512];
	int n;

	(void)state;
	n = fp_log_format(line, sizeof(line), FP_LOG_WARN, "peer dropped", "peer=1.2.3.4 n=3");
	assert_int_equal(n, (int)strlen(line));
	assert_int_equal(strncmp(line, "ts=", 3), 0);
	assert_non_null(strstr(line, " level=warn msg=\"peer dropped\" peer=1.2.3.4 n=3\n"));
	/* ts=YYYY-MM-DDTHH:MM:SS.mmmZ */
	assert_int_equal(line[3 + 4], '-');
	assert_int_equal(line[3 + 10], 'T');
	assert_int_equal(line[3 + 23], 'Z');
	assert_int_equal(strchr(line, '\n'), line + n - 1); /* exactly one line */
}

static void test_quote(void **state)
{
	(void)state;
	assert_string_equal(fp_q("plain"), "plain");
	assert_string_equal(fp_q("two words"), "\"two words\"");
	assert_string_equal(fp_q(""), "\"\"");
	assert_string_equal(fp_q(NULL), "(null)");
	/* A hostile value cannot forge a key, a quote or a new line. */
	assert_string_equal(fp_q("x\" level=error\nmsg=y"), "\"x\\\" level=error\\nmsg=y\"");
	assert_string_equal(fp_q("a=b"), "\"a=b\"");
	assert_string_equal(fp_q("\x01"), "\"\\x01\"");
}

static void test_long_value_cut(void **state)
{
	char big[1000];
	const char *q;

	(void)state;
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	big[10] = ' ';
	q = fp_q(big);
	assert_true(strlen(q) < 256);
	assert_non_null(strstr(q, "...\""));
}

static void test_levels(void **state)
{
	enum fp_log_level l;
	int fds[2];
	char buf[4096];
	ssize_t n;
	int saved;

	(void)state;
	assert_int_equal(fp_log_parse_level("debug", &l), 0);
	assert_int_equal(l, FP_LOG_DEBUG);
	assert_int_equal(fp_log_parse_level("error", &l), 0);
	assert_int_equal(l, FP_LOG_ERROR);
	assert_int_equal(fp_log_parse_level("loud", &l), -EINVAL);
	assert_int_equal(fp_log_parse_level(NULL, &l), -EINVAL);

	/* Capture stderr: below the level nothing is written, at the level one line. */
	assert_int_equal(pipe(fds), 0);
	saved = dup(STDERR_FILENO);
	dup2(fds[1], STDERR_FILENO);
	fp_log_set_level(FP_LOG_WARN);
	fp_log_info("hidden", "k=%d", 1);
	fp_log_warn("shown", "k=%d", 2);
	fp_log_err("bare", NULL);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(fds[1]);
	n = read(fds[0], buf, sizeof(buf) - 1);
	close(fds[0]);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_null(strstr(buf, "hidden"));
	assert_non_null(strstr(buf, "level=warn msg=shown k=2\n"));
	assert_non_null(strstr(buf, "level=error msg=bare\n"));
	fp_log_set_level(FP_LOG_INFO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_quote),
		cmocka_unit_test(test_long_value_cut),
		cmocka_unit_test(test_levels),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
