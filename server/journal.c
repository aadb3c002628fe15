/* The server's round journal; see journal.h. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "err.h"
#include "fileio.h"
#include "journal.h"
#include "log.h"

#define CHECK_HEX	 16		/* hex digits of the line check */
#define JOURNAL_MAX_SIZE (256ull << 20) /* refuse to replay anything larger */

struct fp_journal {
	char *path;
	int fd;
	int lock_fd;
	size_t records;
	bool broken; /* an append failed: refuse further ones */
};

static void line_check(const char *text, size_t len, char out[CHECK_HEX + 1])
{
	uint8_t h[8];

	crypto_generichash(h, sizeof(h), (const uint8_t *)text, len, NULL, 0);
	sodium_bin2hex(out, CHECK_HEX + 1, h, sizeof(h));
}

static bool text_ok(const char *s, size_t len)
{
	if (len == 0 || len > FP_JOURNAL_LINE_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return false;
	return true;
}

/*
 * Check one line (without its newline) in place: on success it is cut at the record text.
 * Returns 0 or -EINVAL.
 */
static int line_parse(char *line, size_t len)
{
	char want[CHECK_HEX + 1];
	size_t tlen;

	if (len < CHECK_HEX + 3 || line[len - CHECK_HEX - 1] != '~' ||
	    line[len - CHECK_HEX - 2] != ' ')
		return -EINVAL;
	tlen = len - CHECK_HEX - 2;
	if (!text_ok(line, tlen))
		return -EINVAL;
	line_check(line, tlen, want);
	if (memcmp(want, line + tlen + 2, CHECK_HEX) != 0)
		return -EINVAL;
	line[tlen] = '\0';
	return 0;
}

int fp_journal_scan(char *buf, size_t len, const char *label, fp_journal_fn fn, void *ud,
		    size_t *ret_records, size_t *ret_keep)
{
	size_t pos = 0, lineno = 0, records = 0;
	int r;

	*ret_keep = len;
	while (pos < len) {
		char *nl = memchr(buf + pos, '\n', len - pos);
		size_t l = nl ? (size_t)(nl - (buf + pos)) : len - pos;

		lineno++;
		if (line_parse(buf + pos, l) < 0) {
			if (!nl) {
				/* torn final append: drop it, the event it recorded never happened */
				fp_log_warn("journal: dropping a torn last line",
					    "file=%s line=%zu", fp_q(label), lineno);
				*ret_keep = pos;
				break;
			}
			return fp_err_detail(-EINVAL,
					     "%s: line %zu is corrupt (bad format or check); the "
					     "state directory cannot be trusted",
					     label, lineno);
		}
		records++;
		if (fn) {
			r = fn(ud, buf + pos, lineno);
			if (r < 0)
				return r;
		}
		pos += l + (nl != NULL);
	}
	if (ret_records)
		*ret_records = records;
	return 0;
}

static int replay(struct fp_journal *j, fp_journal_fn fn, void *ud)
{
	char *buf = NULL;
	size_t len = 0, keep = 0, records = 0;
	int r;

	r = fp_read_file(j->path, JOURNAL_MAX_SIZE, &buf, &len);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	r = fp_journal_scan(buf, len, j->path, fn, ud, &records, &keep);
	if (r == 0 && keep < len && ftruncate(j->fd, (off_t)keep) < 0)
		r = fp_err_detail(-errno, "%s: truncate: %s", j->path, strerror(errno));
	if (r == 0)
		j->records = records;
	free(buf);
	return r;
}

int fp_journal_open(const char *dir, fp_journal_fn fn, void *ud, struct fp_journal **ret)
{
	struct fp_journal *j = calloc(1, sizeof(*j));
	char *lock = NULL;
	int r;

	if (!j)
		return -ENOMEM;
	j->fd = j->lock_fd = -1;
	if (sodium_init() < 0) {
		r = fp_err_sodium("sodium_init");
		goto fail;
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		r = fp_err_detail(-errno, "%s: cannot create the state directory: %s", dir,
				  strerror(errno));
		goto fail;
	}
	if (asprintf(&lock, "%s/lock", dir) < 0 ||
	    asprintf(&j->path, "%s/%s", dir, FP_JOURNAL_FILE) < 0) {
		lock = NULL;
		r = -ENOMEM;
		goto fail;
	}
	j->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (j->lock_fd < 0) {
		r = fp_err_detail(-errno, "%s: %s", lock, strerror(errno));
		goto fail;
	}
	if (flock(j->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		r = errno == EWOULDBLOCK
			    ? fp_err_detail(-EBUSY,
					    "%s: another fedprune-server uses this "
					    "state directory",
					    dir)
			    : fp_err_detail(-errno, "%s: lock: %s", lock, strerror(errno));
		goto fail;
	}
	j->fd = open(j->path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (j->fd < 0) {
		r = fp_err_detail(-errno, "%s: %s", j->path, strerror(errno));
		goto fail;
	}
	r = fp_fsync_parent(j->path);
	if (r < 0)
		goto fail;
	r = replay(j, fn, ud);
	if (r < 0)
		goto fail;
	free(lock);
	*ret = j;
	return 0;
fail:
	free(lock);
	fp_journal_close(j);
	return r;
}

int fp_journal_append(struct fp_journal *j, const char *fmt, ...)
{
	char line[FP_JOURNAL_LINE_MAX + CHECK_HEX + 4];
	va_list ap;
	int n, r;

	if (j->broken)
		return fp_err_detail(-EIO, "%s: an earlier append failed", j->path);
	va_start(ap, fmt);
	n = vsnprintf(line, FP_JOURNAL_LINE_MAX + 1, fmt, ap);
	va_end(ap);
	if (n < 0 || !text_ok(line, (size_t)n) || (size_t)n > FP_JOURNAL_LINE_MAX)
		return fp_err_detail(-EINVAL,
				     "%s: record is not a printable line of at most %u "
				     "bytes",
				     j->path, FP_JOURNAL_LINE_MAX);
	line[n] = ' ';
	line[n + 1] = '~';
	line_check(line, (size_t)n, line + n + 2);
	line[n + 2 + CHECK_HEX] = '\n';
	r = fp_write_all(j->fd, line, (size_t)n + CHECK_HEX + 3);
	if (r == 0 && fdatasync(j->fd) < 0)
		r = -errno;
	if (r < 0) {
		j->broken = true;
		return fp_err_detail(r, "%s: append: %s", j->path, strerror(-r));
	}
	j->records++;
	return 0;
}

size_t fp_journal_records(const struct fp_journal *j)
{
	return j->records;
}

void fp_journal_close(struct fp_journal *j)
{
	if (!j)
		return;
	if (j->fd >= 0)
		close(j->fd);
	if (j->lock_fd >= 0)
		close(j->lock_fd); /* releases the flock */
	free(j->path);
	free(j);
}
