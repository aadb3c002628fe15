/*
 * Table-driven INI configuration (inih underneath).
 *
 * A daemon describes its configuration as an array of struct fp_cfg_key (section, name, type,
 * offset of the field in its config struct, default, bounds) ending with an all-zero entry.
 * Loading fills the struct: first every default (parsed exactly like a file value, so a bad
 * default is caught by the unit tests), then the file. Any of these is an error naming the
 * file and line: an unknown section or key, a key given twice, a value that does not parse or
 * is out of bounds, a line inih cannot parse, a line longer than FP_CFG_MAX_LINE, a NUL byte.
 * A key whose default is NULL is required; its absence is an error naming the key.
 *
 * Lines look like `key = value`; `;` or `#` start a comment line, ` ;` an inline comment.
 * Keys before any [section] belong to the section "".
 */
#ifndef FP_CFG_H
#define FP_CFG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define FP_CFG_MAX_LINE	 199	    /* inih's line buffer is 200 bytes */
#define FP_CFG_MAX_BYTES (1u << 20) /* refuse config files larger than this */

enum fp_cfg_type {
	FP_CFG_END = 0, /* terminates a key table */
	FP_CFG_STR,    /* char * (owned by the struct; fp_cfg_free releases it); max = max length */
	FP_CFG_U32,    /* uint32_t within [min, max] */
	FP_CFG_U64,    /* uint64_t within [min, max] */
	FP_CFG_DOUBLE, /* double within [dmin, dmax] */
	FP_CFG_BOOL,   /* bool: true/false, yes/no, on/off, 1/0 */
	FP_CFG_MSEC,   /* uint64_t milliseconds: "250ms", "30s", "5m"; bare number = seconds */
	FP_CFG_SIZE,   /* uint64_t bytes: "4MiB", "512k"; bare number = bytes */
	FP_CFG_ENUM,   /* int: index into choices[] */
};

struct fp_cfg_key {
	const char *section;
	const char *name;
	enum fp_cfg_type type;
	size_t offset;		    /* offsetof() the field in the config struct */
	const char *def;	    /* default as text; NULL = required */
	uint64_t min, max;	    /* integer bounds; for FP_CFG_STR max is the longest length */
	double dmin, dmax;	    /* FP_CFG_DOUBLE bounds */
	const char *const *choices; /* FP_CFG_ENUM: NULL-terminated names */
	const char *help;	    /* one line, for --help-config and the example configs */
};

/* Apply every default to obj. Returns 0 or -EINVAL (with fp_err_last() naming the key). */
int fp_cfg_defaults(const struct fp_cfg_key *keys, void *obj);

/*
 * Defaults, then the file at path. On error returns -errno and fp_err_last() says
 * "path:line: what". obj owns strings afterwards either way; release with fp_cfg_free().
 */
int fp_cfg_load_file(const struct fp_cfg_key *keys, void *obj, const char *path);

/* As fp_cfg_load_file for text already in memory (len bytes); name is used in messages. */
int fp_cfg_load_buf(const struct fp_cfg_key *keys, void *obj, const char *name, const char *text,
		    size_t len);

/*
 * Set one key from text (used for command-line overrides). origin prefixes error messages
 * (e.g. "--set"). Returns 0, -ENOENT for an unknown key, -EINVAL or -ERANGE for a bad value.
 */
int fp_cfg_set(const struct fp_cfg_key *keys, void *obj, const char *section, const char *name,
	       const char *value, const char *origin);

/* Free the strings obj owns (FP_CFG_STR fields) and set them to NULL. */
void fp_cfg_free(const struct fp_cfg_key *keys, void *obj);

/* Print every key as a commented INI example (default, bounds, help) to f. */
void fp_cfg_describe(const struct fp_cfg_key *keys, FILE *f);

/*
 * Print a complete example configuration file to f: a header naming prog (borrowed) and the
 * value syntax, then per section every key commented out, each with its help (wrapped at 100
 * columns), type, bounds and default, and a line ';key = default'. The output depends only on
 * the table, so committed example files can be compared with it.
 */
void fp_cfg_template(const struct fp_cfg_key *keys, const char *prog, FILE *f);

#endif
