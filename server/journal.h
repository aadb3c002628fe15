/*
 * The server's round journal: an append-only text file in the state directory, one record per
 * line, each line made durable (write + fdatasync) before the event it records is acted on.
 * Together with the files it names (round specifications, accepted submissions, published
 * results) it is the whole durable state of the server: after kill -9 the server replays it
 * and continues where it was.
 *
 * Line format: the record text (printable ASCII, no newline), one space, '~', and 16 lowercase
 * hex digits of BLAKE2b-64 over the record text. A line whose check fails is corruption; when
 * it is the LAST line and the file does not end with a newline it is a torn append (power
 * loss during the write) and is dropped with a warning; anywhere else the journal is refused.
 *
 * The journal also holds an exclusive flock on DIR/lock, so two servers cannot share a state
 * directory.
 */
#ifndef FP_JOURNAL_H
#define FP_JOURNAL_H

#include <stddef.h>

#define FP_JOURNAL_FILE	    "journal"
#define FP_JOURNAL_LINE_MAX 1024u /* longest record text */

struct fp_journal;

/* Called for each valid record, in order: text (NUL-terminated, without checksum) and its line
 * number. Return 0 to go on or a negative errno to stop the replay with that error. */
typedef int (*fp_journal_fn)(void *ud, const char *text, size_t lineno);

/*
 * Open (creating if needed, mode 0700) the state directory dir and its journal, take the lock,
 * and replay every record through fn (may be NULL). On success *ret is owned by the caller
 * (fp_journal_close). Returns 0, -EBUSY (another process holds the lock; detail), -EINVAL
 * (a corrupt line; detail names the file and line), fn's error, or -errno.
 */
int fp_journal_open(const char *dir, fp_journal_fn fn, void *ud, struct fp_journal **ret);

/*
 * Append one record (printf format; the text must be printable ASCII without newlines and at
 * most FP_JOURNAL_LINE_MAX bytes) and make it durable. Returns 0, -EINVAL (bad text) or
 * -errno (detail). After an I/O error the journal refuses further appends (-EIO).
 */
int fp_journal_append(struct fp_journal *j, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * The replay itself, on a journal image in memory (buf, len bytes, modified: each record is
 * NUL-terminated in place): fn (may be NULL) sees every valid record; label names the file in
 * messages. *ret_records (may be NULL) = records seen; *ret_keep = bytes to keep (len, or less
 * when a torn last line is dropped). Returns 0, -EINVAL (a corrupt line) or fn's error.
 */
int fp_journal_scan(char *buf, size_t len, const char *label, fp_journal_fn fn, void *ud,
		    size_t *ret_records, size_t *ret_keep);

/* Records replayed at open plus appended since. */
size_t fp_journal_records(const struct fp_journal *j);

/* Close and release the lock; NULL is fine. */
void fp_journal_close(struct fp_journal *j);

#endif
