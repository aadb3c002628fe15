/* The server's round journal (server/journal.h): durability format, replay, torn tails, lock. */
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "err.h"
#include "../../server/journal.h"

struct seen {
	char text[8][128];
	size_t n;
	int fail_at; /* return -EIO at this record (1-based), 0 never */
};

static int collect(void *ud, const char *text, size_t lineno)
{
	struct seen *s = ud;

	(void)lineno;
	if (s->fail_at && (int)s->n + 1 == s->fail_at)
		return -EIO;
	if (s->n < 8)
		snprintf(s->text[s->n], sizeof(s->text[0]), "%s", text);
	s->n++;
	return 0;
}

static char *journal_path(const char *dir)
{
	char *p = NULL;

	assert_true(asprintf(&p, "%s/%s", dir, FP_JOURNAL_FILE) > 0);
	return p;
}

static void append_raw(const char *path, const char *bytes)
{
	FILE *f = fopen(path, "ab");

	assert_non_null(f);
	assert_int_equal(fwrite(bytes, 1, strlen(bytes), f), strlen(bytes));
	fclose(f);
}

static void test_append_replay(void **state)
{
	char *dir = fp_test_mkdtemp();
	struct fp_journal *j = NULL;
	struct seen s = { 0 };

	(void)state;
	assert_int_equal(fp_journal_open(dir, collect, &s, &j), 0);
	assert_int_equal(s.n, 0);
	assert_int_equal(fp_journal_append(j, "round %d %s", 1, "x"), 0);
	assert_int_equal(fp_journal_append(j, "accept 1 client1 ab 10 0.5"), 0);
	assert_int_equal(fp_journal_records(j), 2);
	/* not printable, newline, too long: refused, nothing written */
	assert_int_equal(fp_journal_append(j, "bad\nline"), -EINVAL);
	assert_int_equal(fp_journal_append(j, "%s", ""), -EINVAL);
	{
		char big[FP_JOURNAL_LINE_MAX + 2];

		memset(big, 'a', sizeof(big) - 1);
		big[sizeof(big) - 1] = '\0';
		assert_int_equal(fp_journal_append(j, "%s", big), -EINVAL);
	}
	/* a second server on the same directory is refused while the first holds it */
	{
		struct fp_journal *j2 = NULL;

		assert_int_equal(fp_journal_open(dir, NULL, NULL, &j2), -EBUSY);
		assert_non_null(strstr(fp_err_last(), "another fedprune-server"));
	}
	fp_journal_close(j);
	assert_int_equal(fp_journal_open(dir, collect, &s, &j), 0);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.text[0], "round 1 x");
	assert_string_equal(s.text[1], "accept 1 client1 ab 10 0.5");
	assert_int_equal(fp_journal_records(j), 2);
	fp_journal_close(j);

	/* the replay callback's error stops the open */
	memset(&s, 0, sizeof(s));
	s.fail_at = 2;
	assert_int_equal(fp_journal_open(dir, collect, &s, &j), -EIO);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_torn_tail_dropped(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = journal_path(dir);
	struct fp_journal *j = NULL;
	struct seen s = { 0 };

	(void)state;
	assert_int_equal(fp_journal_open(dir, NULL, NULL, &j), 0);
	assert_int_equal(fp_journal_append(j, "round 1 0 0"), 0);
	fp_journal_close(j);
	append_raw(path, "accept 1 client1 ab 1"); /* no check, no newline: torn */
	assert_int_equal(fp_journal_open(dir, collect, &s, &j), 0);
	assert_int_equal(s.n, 1);
	/* the torn bytes were cut, so a new append makes a valid journal */
	assert_int_equal(fp_journal_append(j, "done 1"), 0);
	fp_journal_close(j);
	memset(&s, 0, sizeof(s));
	assert_int_equal(fp_journal_open(dir, collect, &s, &j), 0);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.text[1], "done 1");
	fp_journal_close(j);
	fp_test_rmtree(dir);
	free(dir);
	free(path);
}

static void test_corruption_refused(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = journal_path(dir);
	struct fp_journal *j = NULL;
	char *buf = NULL;
	size_t len;
	FILE *f;
	int fd;

	(void)state;
	assert_int_equal(fp_journal_open(dir, NULL, NULL, &j), 0);
	assert_int_equal(fp_journal_append(j, "round 1 0 0"), 0);
	assert_int_equal(fp_journal_append(j, "accept 1 client1 ab 10 0"), 0);
	fp_journal_close(j);
	/* flip one character of the first record: its check no longer matches */
	f = fopen(path, "rb");
	assert_non_null(f);
	buf = malloc(4096);
	len = fread(buf, 1, 4096, f);
	fclose(f);
	buf[6] = '2';
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
	assert_int_equal(fp_journal_open(dir, NULL, NULL, &j), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "line 1 is corrupt"));
	/* a complete but unchecked line at the end is corruption too, not a torn append */
	buf[6] = '1';
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
	append_raw(path, "done 1\n");
	assert_int_equal(fp_journal_open(dir, NULL, NULL, &j), -EINVAL);
	assert_non_null(strstr(fp_err_last(), "line 3"));
	free(buf);
	fp_test_rmtree(dir);
	free(dir);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_append_replay),
		cmocka_unit_test(test_torn_tail_dropped),
		cmocka_unit_test(test_corruption_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
