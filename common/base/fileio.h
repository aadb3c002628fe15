/*
 * Low-level file I/O shared by every module that reads or writes files: complete writes, safe
 * opening of hostile input paths, bounded whole-file reads, and crash-safe replacement of a file
 * (write a temporary next to it, fsync, rename into place, fsync the directory).
 *
 * Conventions: every function returns 0 or a negative errno. Functions given a path record a
 * detail naming it with fp_err_detail() before failing; fp_write_all() only has a descriptor,
 * so it records nothing and its caller names the file. Nothing here logs or keeps global state;
 * all of it is safe to call from several threads on different objects.
 */
#ifndef FP_FILEIO_H
#define FP_FILEIO_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Write all n bytes at p to fd, retrying after EINTR and short writes. Returns 0, -errno from
 * write(2), or -EIO if write returns 0. Records no detail. p is borrowed.
 */
int fp_write_all(int fd, const void *p, size_t n);

/*
 * Open path read-only for hostile input: O_CLOEXEC, and O_NONBLOCK so a FIFO cannot hang the
 * caller (it is then refused as not a regular file). Checks that it is a regular file of at
 * most max bytes. On success *ret_fd is a new descriptor the caller closes, and *ret_size the
 * file's size. Errors (detail names path): -errno "PATH: cannot open: ..." or "PATH: cannot
 * stat: ..."; -EINVAL "PATH: not a regular file"; -EFBIG "PATH: N bytes, larger than the
 * M-byte limit". On failure nothing is left open.
 */
int fp_open_regular(const char *path, size_t max, int *ret_fd, size_t *ret_size);

/*
 * Read the whole regular file at path (at most max bytes, max < SIZE_MAX) into a new buffer
 * with a NUL byte after the content; the content itself may hold NUL bytes, so use *ret_len.
 * On success *ret is owned by the caller (free()). Errors: those of fp_open_regular(), -ENOMEM
 * "PATH: out of memory", -errno "PATH: read: ...", -EIO "PATH: read: file shrank while being
 * read". On failure *ret and *ret_len are untouched.
 */
int fp_read_file(const char *path, size_t max, char **ret, size_t *ret_len);

/*
 * fsync the directory holding path (the path itself need not exist), so that a rename or
 * creation in it survives a crash. Returns 0 or -errno with detail "DIR: fsync: ...".
 */
int fp_fsync_parent(const char *path);

/* fsync the directory path itself (its entries survive a crash). Returns 0 or -errno. */
int fp_fsync_dir(const char *path);

/*
 * mkdir -p: create path and every missing parent with mode (& ~umask). Existing directories
 * are fine. Returns 0 or -errno with detail "DIR: cannot create directory: ...".
 */
int fp_mkdirs(const char *path, mode_t mode);

/* ---- output directories that appear whole (write into a temporary sibling, then rename) ---- */

/*
 * An output directory may be created at path: it does not exist, or it is an empty
 * directory. Returns 0, -EEXIST "PATH: exists and is not empty ..." / "... not a directory", or
 * -errno.
 */
int fp_dir_check_new(const char *path);

/*
 * Create PATH.tmp.XXXXXXXX (8 random hex digits, mode 0777 & ~umask) next to path. On success
 * *ret is the new directory's name (caller frees). Returns 0, -ENOMEM or -errno.
 */
int fp_dir_make_tmp(const char *path, char **ret);

/*
 * Put the complete directory tmp in place as path (which must not exist or be empty): fsync
 * tmp, rename, fsync the parent. Returns 0 or -errno with a detail naming both.
 */
int fp_dir_publish(const char *tmp, const char *path);

/*
 * Remove dir and the plain files in it (no recursion: for the flat temporary and state
 * directories the programs create). Best effort; errors are ignored.
 */
void fp_dir_remove_flat(const char *dir);

/*
 * A file being written under a temporary name, replaced into place only on commit, so readers
 * of path see the old file or the complete new one, never a partial one. Fields are read-only
 * for users: write through fd (or fp_atomic_write) and name the file as tmp in messages.
 * A zeroed struct is a valid closed one (fp_atomic_abort on it does nothing).
 */
struct fp_atomic_file {
	int fd;	    /* the temporary, open for writing; -1 (or 0 if zeroed) when closed */
	char *path; /* the final name (owned copy); NULL when closed */
	char *tmp;  /* "path.tmp.XXXXXX" (owned); NULL when closed: open iff tmp != NULL */
};

/*
 * Create path.tmp.XXXXXX (6 random [A-Za-z0-9]) with O_EXCL and permissions mode & ~umask
 * (unlike mkstemp's fixed 0600), and fill *f. path is copied. On failure nothing is created,
 * *f is closed (strings NULL, fd -1), and the detail names the temporary or path: -errno
 * "TMP: cannot create: ...", -ENOMEM, -EIO if getrandom fails, -EEXIST after 100 taken names.
 */
int fp_atomic_open(struct fp_atomic_file *f, const char *path, mode_t mode);

/*
 * fp_write_all() to the temporary; on failure records "TMP: write: ..." and returns -errno.
 * f stays open either way (abort or commit it). p is borrowed.
 */
int fp_atomic_write(struct fp_atomic_file *f, const void *p, size_t n);

/*
 * fsync and close the temporary, rename it to path, fsync the directory. f must be open; it is
 * closed (its strings freed) whatever happens. If a step up to the rename fails, the temporary
 * is removed, path is untouched, and the error is returned (detail "TMP: fsync: ...", "TMP:
 * close: ...", "TMP: rename to PATH: ..."). If only the final directory fsync fails, the new file
 * is already in place and that error is returned.
 */
int fp_atomic_commit(struct fp_atomic_file *f);

/* Close and remove the temporary, free f's strings, leave f closed. Does nothing if closed. */
void fp_atomic_abort(struct fp_atomic_file *f);

/*
 * Write the n bytes at p (borrowed) as the whole of path, through an fp_atomic_file created
 * with mode: readers see the old file or all of the new one. Returns 0 or the -errno of the
 * step that failed, with its detail (see above); nothing is left behind on failure.
 */
int fp_write_file_atomic(const char *path, const void *p, size_t n, mode_t mode);

#endif
