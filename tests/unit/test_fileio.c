/*
 * fileio: complete writes over a pipe that takes the data in pieces, bounded whole-file reads
 * (good files, the bound, directories, FIFOs, missing files) and atomic replacement (the new
 * file appears only on commit, abort and failed commits leave nothing behind).
 */
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "fileio.h"

static char *join(const char *dir, const char *name)
{
	char *p = NULL;

	assert_true(asprintf(&p, "%s/%s", dir, name) > 0);
	return p;
}

/* Number of entries in dir other than "." and "..". */
static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

/* Whole content of path (test helper, plain stdio); *len set; caller frees. */
static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = malloc(1 << 16);

	assert_non_null(f);
	assert_non_null(buf);
	*len = fread(buf, 1, 1 << 16, f);
	assert_int_equal(ferror(f), 0);
	fclose(f);
	return buf;
}

static void assert_err_has(const char *a, const char *b)
{
	const char *msg = fp_err_last();

	if (!strstr(msg, a) || (b && !strstr(msg, b)))
		fail_msg("detail '%s' lacks '%s' / '%s'", msg, a, b ? b : "");
}

/* ---- fp_write_all ---- */

struct drain {
	int fd;
	pthread_t writer;
	unsigned char *got; /* (cap) */
	size_t len, cap;
	int signals_sent;
};

static volatile sig_atomic_t signals_seen;

static void on_usr1(int sig)
{
	(void)sig;
	signals_seen++;
}

/*
 * Read the pipe in small pieces, interrupting the blocked writer with SIGUSR1 (no SA_RESTART)
 * before every read: write(2) then returns early, with a short count or EINTR.
 */
static void *drain_main(void *arg)
{
	struct drain *d = arg;
	struct timespec pause = { 0, 20000 };

	for (;;) {
		ssize_t k;

		if (d->signals_sent < 200) {
			nanosleep(&pause, NULL);
			pthread_kill(d->writer, SIGUSR1);
			d->signals_sent++;
			nanosleep(&pause, NULL);
		}
		k = read(d->fd, d->got + d->len, d->cap - d->len < 1000 ? d->cap - d->len : 1000);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		d->len += (size_t)k;
	}
	return NULL;
}

static void test_write_all_pipe(void **state)
{
	const size_t n = 1u << 20;
	unsigned char *src = malloc(n);
	struct sigaction sa = { 0 }, old;
	struct drain d = { 0 };
	pthread_t th;
	uint64_t seed = 7;
	int p[2];

	(void)state;
	assert_non_null(src);
	for (size_t i = 0; i < n; i++)
		src[i] = (unsigned char)fp_test_rand(&seed);
	sa.sa_handler = on_usr1; /* sa_flags 0: no SA_RESTART, so blocked writes return early */
	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(SIGUSR1, &sa, &old), 0);
	assert_int_equal(pipe(p), 0);
	fcntl(p[1], F_SETPIPE_SZ, 4096); /* smallest pipe; best effort */
	d.fd = p[0];
	d.writer = pthread_self();
	d.cap = n + 1;
	d.got = malloc(d.cap);
	assert_non_null(d.got);
	signals_seen = 0;
	assert_int_equal(pthread_create(&th, NULL, drain_main, &d), 0);
	assert_int_equal(fp_write_all(p[1], src, n), 0);
	close(p[1]);
	assert_int_equal(pthread_join(th, NULL), 0);
	close(p[0]);
	assert_int_equal(sigaction(SIGUSR1, &old, NULL), 0);
	/* the writer really was interrupted, and still delivered every byte in order */
	assert_true(signals_seen > 10);
	assert_int_equal(d.len, n);
	assert_memory_equal(d.got, src, n);
	free(d.got);
	free(src);
}

/*
 * Progress then failure: under RLIMIT_FSIZE = 100 the first write(2) is cut short at byte 100
 * and the next one fails with EFBIG (SIGXFSZ ignored). fp_write_all must report the failure,
 * and the file must hold exactly the prefix that fitted.
 */
static void test_write_all_partial_then_error(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = join(dir, "limited"), *got;
	struct fp_atomic_file f = { 0 };
	struct rlimit old, lim;
	void (*old_xfsz)(int);
	char buf[8192];
	size_t len;
	int fd;

	(void)state;
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (char)('a' + i % 26);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 100;
	old_xfsz = signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	assert_int_equal(fp_write_all(fd, buf, sizeof(buf)), -EFBIG);
	assert_int_equal(fp_write_all(fd, buf, 0), 0); /* nothing to write is fine */
	/* the same through an atomic file: the detail names the temporary; abort cleans up */
	assert_int_equal(fp_atomic_open(&f, path, 0666), 0);
	assert_int_equal(fp_atomic_write(&f, buf, 100), 0);
	fp_err_clear();
	assert_int_equal(fp_atomic_write(&f, buf, 1), -EFBIG);
	assert_err_has(f.tmp, ": write: ");
	fp_atomic_abort(&f);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, old_xfsz);
	close(fd);
	got = slurp(path, &len);
	assert_int_equal(len, 100);
	assert_memory_equal(got, buf, 100);
	free(got);
	assert_int_equal(count_entries(dir), 1);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

/* ---- fp_open_regular / fp_read_file ---- */

static void test_read_file_good(void **state)
{
	static const char data[] = "key = 1\n\0after NUL\n";
	char *dir = fp_test_mkdtemp(), *path, *empty, *buf = NULL;
	size_t len = 0, size = 0;
	int fd = -1;

	(void)state;
	path = fp_test_write_file(dir, "f.txt", data, sizeof(data) - 1);
	assert_int_equal(fp_read_file(path, 1000, &buf, &len), 0);
	assert_int_equal(len, sizeof(data) - 1);
	assert_memory_equal(buf, data, len);
	assert_int_equal(buf[len], '\0');
	free(buf);
	/* exactly at the bound is allowed */
	buf = NULL;
	assert_int_equal(fp_read_file(path, sizeof(data) - 1, &buf, &len), 0);
	assert_int_equal(len, sizeof(data) - 1);
	free(buf);
	/* an empty file gives an empty string */
	empty = fp_test_write_file(dir, "empty", "", 0);
	buf = NULL;
	len = 99;
	assert_int_equal(fp_read_file(empty, 10, &buf, &len), 0);
	assert_int_equal(len, 0);
	assert_non_null(buf);
	assert_int_equal(buf[0], '\0');
	free(buf);
	/* the descriptor from fp_open_regular is close-on-exec and the size is right */
	assert_int_equal(fp_open_regular(path, 1000, &fd, &size), 0);
	assert_true(fd >= 0);
	assert_int_equal(size, sizeof(data) - 1);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	close(fd);
	free(empty);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_read_file_refused(void **state)
{
	char *dir = fp_test_mkdtemp(), *path, *missing, *fifo;
	char *buf = (char *)"untouched";
	size_t len = 12345, size = 777;
	int fd = -5;

	(void)state;
	path = fp_test_write_file(dir, "big", "0123456789", 10);
	/* one byte over the bound */
	fp_err_clear();
	assert_int_equal(fp_read_file(path, 9, &buf, &len), -EFBIG);
	assert_err_has(path, "10 bytes, larger than the 9-byte limit");
	assert_int_equal(fp_open_regular(path, 9, &fd, &size), -EFBIG);
	/* a directory */
	fp_err_clear();
	assert_int_equal(fp_read_file(dir, 1000, &buf, &len), -EINVAL);
	assert_err_has(dir, "not a regular file");
	/* a missing file */
	missing = join(dir, "nope");
	fp_err_clear();
	assert_int_equal(fp_read_file(missing, 1000, &buf, &len), -ENOENT);
	assert_err_has(missing, "cannot open");
	assert_int_equal(fp_open_regular(missing, 1000, &fd, &size), -ENOENT);
	/* a FIFO with no writer: refused at once instead of blocking in open() */
	fifo = join(dir, "fifo");
	assert_int_equal(mkfifo(fifo, 0600), 0);
	fp_err_clear();
	alarm(20); /* if open() blocked, SIGALRM would kill the test rather than hang it */
	assert_int_equal(fp_read_file(fifo, 1000, &buf, &len), -EINVAL);
	alarm(0);
	assert_err_has(fifo, "not a regular file");
	/* outputs untouched on failure */
	assert_string_equal(buf, "untouched");
	assert_int_equal(len, 12345);
	assert_int_equal(fd, -5);
	assert_int_equal(size, 777);
	free(fifo);
	free(missing);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

/* ---- fp_atomic_* ---- */

static void test_atomic_commit(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = join(dir, "out.bin"), *got;
	struct fp_atomic_file f = { 0 };
	struct stat st;
	mode_t old_mask;
	size_t len;

	(void)state;
	free(fp_test_write_file(dir, "out.bin", "old", 3));
	old_mask = umask(022);
	assert_int_equal(fp_atomic_open(&f, path, 0666), 0);
	umask(old_mask);
	assert_string_equal(f.path, path);
	assert_int_equal(strncmp(f.tmp, path, strlen(path)), 0);
	assert_int_equal(strlen(f.tmp), strlen(path) + strlen(".tmp.XXXXXX"));
	assert_int_equal(strncmp(f.tmp + strlen(path), ".tmp.", 5), 0);
	assert_int_equal(fp_atomic_write(&f, "new ", 4), 0);
	assert_int_equal(fp_atomic_write(&f, "content", 7), 0);
	/* before commit: the old file is intact, the new one exists only under its temp name */
	got = slurp(path, &len);
	assert_int_equal(len, 3);
	assert_memory_equal(got, "old", 3);
	free(got);
	assert_int_equal(count_entries(dir), 2);
	assert_int_equal(stat(f.tmp, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0644); /* 0666 & ~022, not mkstemp's 0600 */
	assert_int_equal(fp_atomic_commit(&f), 0);
	assert_null(f.tmp);
	assert_null(f.path);
	assert_int_equal(f.fd, -1);
	got = slurp(path, &len);
	assert_int_equal(len, 11);
	assert_memory_equal(got, "new content", 11);
	free(got);
	assert_int_equal(count_entries(dir), 1); /* no temporary left */
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0644);
	fp_atomic_abort(&f); /* after commit: nothing to do */
	assert_int_equal(count_entries(dir), 1);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_atomic_abort(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = join(dir, "a"), *nodir = join(dir, "no/such/file");
	struct fp_atomic_file f = { 0 };

	(void)state;
	fp_atomic_abort(&f); /* a zeroed struct is closed */
	assert_int_equal(fp_atomic_open(&f, path, 0600), 0);
	assert_int_equal(fp_atomic_write(&f, "partial", 7), 0);
	assert_int_equal(count_entries(dir), 1);
	fp_atomic_abort(&f);
	assert_null(f.tmp);
	assert_int_equal(count_entries(dir), 0);
	assert_int_equal(access(path, F_OK), -1);
	fp_atomic_abort(&f); /* twice is harmless */
	/* cannot create: nothing opened, struct closed, detail names the temporary */
	fp_err_clear();
	assert_int_equal(fp_atomic_open(&f, nodir, 0666), -ENOENT);
	assert_err_has(nodir, ".tmp.");
	assert_null(f.tmp);
	assert_null(f.path);
	assert_int_equal(f.fd, -1);
	fp_atomic_abort(&f);
	free(nodir);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

/* A commit whose rename fails removes the temporary and leaves the destination alone. */
static void test_atomic_commit_fails(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = join(dir, "taken"), *inner;
	struct fp_atomic_file f = { 0 };

	(void)state;
	assert_int_equal(mkdir(path, 0700), 0);
	inner = fp_test_write_file(path, "keep", "k", 1); /* a non-empty directory */
	assert_int_equal(fp_atomic_open(&f, path, 0666), 0);
	assert_int_equal(fp_atomic_write(&f, "x", 1), 0);
	fp_err_clear();
	assert_int_equal(fp_atomic_commit(&f), -EISDIR);
	assert_err_has("rename to", path);
	assert_null(f.tmp);
	assert_int_equal(count_entries(dir), 1); /* just the directory */
	assert_int_equal(count_entries(path), 1);
	assert_int_equal(access(inner, F_OK), 0);
	free(inner);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

/* The one-shot form: replaces the whole file, leaves nothing behind when it cannot. */
static void test_write_file_atomic(void **state)
{
	char *dir = fp_test_mkdtemp(), *path = join(dir, "f"), *nodir = join(dir, "no/f"), *got;
	struct stat st;
	mode_t old_mask;
	size_t len;

	(void)state;
	free(fp_test_write_file(dir, "f", "a longer old content", 20));
	old_mask = umask(022);
	assert_int_equal(fp_write_file_atomic(path, "new", 3, 0640), 0);
	umask(old_mask);
	got = slurp(path, &len);
	assert_int_equal(len, 3); /* replaced, not overwritten in place */
	assert_memory_equal(got, "new", 3);
	free(got);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0640);
	assert_int_equal(count_entries(dir), 1);
	fp_err_clear();
	assert_int_equal(fp_write_file_atomic(nodir, "x", 1, 0600), -ENOENT);
	assert_err_has(nodir, ".tmp.");
	assert_int_equal(count_entries(dir), 1);
	free(nodir);
	free(path);
	fp_test_rmtree(dir);
	free(dir);
}

static void test_fsync_parent(void **state)
{
	char *dir = fp_test_mkdtemp(), *in = join(dir, "x"), *missing = join(dir, "no/x");

	(void)state;
	assert_int_equal(fp_fsync_parent(in), 0); /* x itself need not exist */
	assert_int_equal(fp_fsync_parent("relative-name"), 0);
	assert_int_equal(fp_fsync_parent("/top-level"), 0);
	fp_err_clear();
	assert_int_equal(fp_fsync_parent(missing), -ENOENT);
	assert_err_has("/no: fsync", NULL);
	free(missing);
	free(in);
	fp_test_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_write_all_pipe),
		cmocka_unit_test(test_write_all_partial_then_error),
		cmocka_unit_test(test_read_file_good),
		cmocka_unit_test(test_read_file_refused),
		cmocka_unit_test(test_atomic_commit),
		cmocka_unit_test(test_atomic_abort),
		cmocka_unit_test(test_atomic_commit_fails),
		cmocka_unit_test(test_write_file_atomic),
		cmocka_unit_test(test_fsync_parent),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
