/* Complete writes, bounded reads and atomic file replacement (see fileio.h). */
#include "fileio.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "err.h"

int fp_write_all(int fd, const void *p, size_t n)
{
	const uint8_t *c = p;

	while (n) {
		ssize_t k = write(fd, c, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		c += k;
		n -= (size_t)k;
	}
	return 0;
}

int fp_open_regular(const char *path, size_t max, int *ret_fd, size_t *ret_size)
{
	struct stat st;
	int fd, r;

	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		return fp_err_detail(r, "%s: cannot open: %s", path, fp_strerror(r));
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		r = fp_err_detail(r, "%s: cannot stat: %s", path, fp_strerror(r));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		r = fp_err_detail(-EINVAL, "%s: not a regular file", path);
		goto fail;
	}
	if ((uint64_t)st.st_size > max) {
		r = fp_err_detail(-EFBIG, "%s: %llu bytes, larger than the %zu-byte limit", path,
				  (unsigned long long)st.st_size, max);
		goto fail;
	}
	*ret_fd = fd;
	*ret_size = (size_t)st.st_size;
	return 0;
fail:
	close(fd);
	return r;
}

int fp_read_file(const char *path, size_t max, char **ret, size_t *ret_len)
{
	char *buf = NULL;
	size_t size = 0, got = 0, alloc;
	int fd = -1, r;

	r = fp_open_regular(path, max, &fd, &size);
	if (r < 0)
		return r;
	if (!fp_add_ok(size, 1, &alloc) || !(buf = malloc(alloc))) {
		r = fp_err_detail(-ENOMEM, "%s: out of memory", path);
		goto out;
	}
	while (got < size) {
		ssize_t k = read(fd, buf + got, size - got);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			r = -errno;
			r = fp_err_detail(r, "%s: read: %s", path, fp_strerror(r));
			goto out;
		}
		if (k == 0) {
			r = fp_err_detail(-EIO, "%s: read: file shrank while being read", path);
			goto out;
		}
		got += (size_t)k;
	}
	buf[got] = '\0';
	*ret = buf;
	*ret_len = got;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return r;
}

int fp_fsync_parent(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
	int fd, r = 0;

	if (!dir)
		return fp_err_detail(-ENOMEM, "%s: out of memory", path);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0) {
		r = -errno;
		r = fp_err_detail(r, "%s: fsync: %s", dir, fp_strerror(r));
	}
	if (fd >= 0)
		close(fd);
	free(dir);
	return r;
}

int fp_fsync_dir(const char *path)
{
	int fd = open(path, O_DIRECTORY | O_RDONLY | O_CLOEXEC);
	int r = 0;

	if (fd < 0)
		return fp_err_detail(-errno, "%s: %s", path, strerror(errno));
	if (fsync(fd) < 0 && errno != EINVAL)
		r = fp_err_detail(-errno, "%s: fsync: %s", path, strerror(errno));
	close(fd);
	return r;
}

int fp_mkdirs(const char *path, mode_t mode)
{
	char *p = strdup(path);
	int r = 0;

	if (!p)
		return fp_err_detail(-ENOMEM, "%s: out of memory", path);
	for (char *s = p + 1;; s++) {
		bool end = *s == '\0';

		if (*s != '/' && !end)
			continue;
		*s = '\0';
		if (p[0] && mkdir(p, mode) < 0 && errno != EEXIST) {
			r = fp_err_detail(-errno, "%s: cannot create directory: %s", p,
					  strerror(errno));
			break;
		}
		if (end)
			break;
		*s = '/';
	}
	free(p);
	return r;
}

int fp_dir_check_new(const char *path)
{
	struct stat st;
	struct dirent *e;
	DIR *d;
	int r = 0;

	if (stat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		return fp_err_detail(-errno, "%s: %s", path, strerror(errno));
	}
	if (!S_ISDIR(st.st_mode))
		return fp_err_detail(-EEXIST, "%s: exists and is not a directory", path);
	d = opendir(path);
	if (!d)
		return fp_err_detail(-errno, "%s: %s", path, strerror(errno));
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
			r = fp_err_detail(
				-EEXIST,
				"%s: exists and is not empty (remove it or choose another "
				"output directory)",
				path);
			break;
		}
	}
	closedir(d);
	return r;
}

int fp_dir_make_tmp(const char *path, char **ret)
{
	for (int tries = 0; tries < 64; tries++) {
		uint32_t rnd = 0;
		char *p = NULL;

		if (getrandom(&rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
			rnd = (uint32_t)getpid() * 2654435761u + (uint32_t)tries;
		if (asprintf(&p, "%s.tmp.%08" PRIx32, path, rnd) < 0)
			return -ENOMEM;
		if (mkdir(p, 0777) == 0) {
			*ret = p;
			return 0;
		}
		if (errno != EEXIST) {
			int e = fp_err_detail(-errno, "%s: %s", p, strerror(errno));

			free(p);
			return e;
		}
		free(p);
	}
	return fp_err_detail(-EEXIST, "%s: cannot create a temporary directory next to it", path);
}

int fp_dir_publish(const char *tmp, const char *path)
{
	int r = fp_fsync_dir(tmp);

	if (r < 0)
		return r;
	/* rename(2) replaces an empty directory; fp_dir_check_new allowed only that */
	if (rename(tmp, path) < 0)
		return fp_err_detail(-errno, "%s: rename from %s: %s", path, tmp, strerror(errno));
	return fp_fsync_parent(path);
}

void fp_dir_remove_flat(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (d) {
		while ((e = readdir(d)) != NULL) {
			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
				continue;
			unlinkat(dirfd(d), e->d_name, 0);
		}
		closedir(d);
	}
	rmdir(dir);
}

/* Free f's strings and mark it closed; the descriptor must already be closed. */
static void atomic_release(struct fp_atomic_file *f)
{
	free(f->tmp);
	free(f->path);
	f->tmp = NULL;
	f->path = NULL;
	f->fd = -1;
}

int fp_atomic_open(struct fp_atomic_file *f, const char *path, mode_t mode)
{
	static const char chars[] =
		"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	char *x;
	int r;

	f->fd = -1;
	f->path = strdup(path);
	if (!f->path || asprintf(&f->tmp, "%s.tmp.XXXXXX", path) < 0) {
		f->tmp = NULL;
		atomic_release(f);
		return fp_err_detail(-ENOMEM, "%s: out of memory", path);
	}
	x = f->tmp + strlen(f->tmp) - 6;
	for (int attempt = 0; attempt < 100; attempt++) {
		uint8_t rnd[6];

		if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
			r = fp_err_detail(-EIO, "%s: getrandom failed", path);
			goto fail;
		}
		for (int i = 0; i < 6; i++)
			x[i] = chars[rnd[i] % (sizeof(chars) - 1)];
		f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
		if (f->fd >= 0)
			return 0;
		if (errno != EEXIST) {
			r = -errno;
			r = fp_err_detail(r, "%s: cannot create: %s", f->tmp, fp_strerror(r));
			goto fail;
		}
	}
	r = fp_err_detail(-EEXIST, "%s: no free temporary name", path);
fail:
	atomic_release(f);
	return r;
}

int fp_atomic_write(struct fp_atomic_file *f, const void *p, size_t n)
{
	int r = fp_write_all(f->fd, p, n);

	if (r < 0)
		return fp_err_detail(r, "%s: write: %s", f->tmp, fp_strerror(r));
	return 0;
}

int fp_atomic_commit(struct fp_atomic_file *f)
{
	int r = 0;

	if (fsync(f->fd) < 0) {
		r = -errno;
		r = fp_err_detail(r, "%s: fsync: %s", f->tmp, fp_strerror(r));
	}
	if (r == 0) {
		int c = close(f->fd);

		f->fd = -1;
		if (c < 0) {
			r = -errno;
			r = fp_err_detail(r, "%s: close: %s", f->tmp, fp_strerror(r));
		}
	}
	if (r == 0 && rename(f->tmp, f->path) < 0) {
		r = -errno;
		r = fp_err_detail(r, "%s: rename to %s: %s", f->tmp, f->path, fp_strerror(r));
	}
	if (r < 0) {
		fp_atomic_abort(f);
		return r;
	}
	r = fp_fsync_parent(f->path);
	atomic_release(f);
	return r;
}

void fp_atomic_abort(struct fp_atomic_file *f)
{
	if (!f->tmp) {
		atomic_release(f); /* a failed or zeroed struct may still hold nothing but path */
		return;
	}
	if (f->fd >= 0)
		close(f->fd);
	unlink(f->tmp);
	atomic_release(f);
}

int fp_write_file_atomic(const char *path, const void *p, size_t n, mode_t mode)
{
	struct fp_atomic_file f = { .fd = -1 };
	int r = fp_atomic_open(&f, path, mode);

	if (r == 0)
		r = fp_atomic_write(&f, p, n);
	if (r == 0)
		return fp_atomic_commit(&f);
	fp_atomic_abort(&f);
	return r;
}
