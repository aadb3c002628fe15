/*
 * Table-driven INI loader (see cfg.h). inih does the tokenising; we feed it lines through our
 * own reader so we know the line number, can refuse over-long lines and NUL bytes instead of
 * letting inih split them silently, and can detect keys given twice.
 */
#include "cfg.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ini.h>

#include "alloc.h"
#include "err.h"
#include "fileio.h"
#include "parse.h"

static size_t count_keys(const struct fp_cfg_key *keys)
{
	size_t n = 0;

	while (keys[n].type != FP_CFG_END)
		n++;
	return n;
}

static const struct fp_cfg_key *find_key(const struct fp_cfg_key *keys, const char *section,
					 const char *name, size_t *ret_idx)
{
	for (size_t i = 0; keys[i].type != FP_CFG_END; i++) {
		if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0) {
			if (ret_idx)
				*ret_idx = i;
			return &keys[i];
		}
	}
	return NULL;
}

static bool section_known(const struct fp_cfg_key *keys, const char *section)
{
	for (size_t i = 0; keys[i].type != FP_CFG_END; i++)
		if (strcmp(keys[i].section, section) == 0)
			return true;
	return false;
}

/* Parse value for key k and store it into obj. Returns 0 or -errno; *why says what failed. */
static int store(const struct fp_cfg_key *k, void *obj, const char *value, const char **why)
{
	char *field = (char *)obj + k->offset;
	uint64_t u;
	double d;
	bool b;
	int r;

	*why = "invalid value";
	switch (k->type) {
	case FP_CFG_STR: {
		size_t len = strlen(value);
		char *copy;

		if (k->max && len > k->max) {
			*why = "value too long";
			return -ERANGE;
		}
		copy = strdup(value);
		if (!copy)
			return -ENOMEM;
		free(*(char **)field);
		*(char **)field = copy;
		return 0;
	}
	case FP_CFG_U32:
		r = fp_parse_u64(value, k->min, k->max ? k->max : UINT32_MAX, &u);
		if (r == 0 && u > UINT32_MAX)
			r = -ERANGE;
		if (r == 0)
			*(uint32_t *)field = (uint32_t)u;
		break;
	case FP_CFG_U64:
		r = fp_parse_u64(value, k->min, k->max ? k->max : UINT64_MAX, &u);
		if (r == 0)
			*(uint64_t *)field = u;
		break;
	case FP_CFG_MSEC:
		r = fp_parse_duration_ms(value, k->min, k->max ? k->max : UINT64_MAX, &u);
		if (r == 0)
			*(uint64_t *)field = u;
		break;
	case FP_CFG_SIZE:
		r = fp_parse_size(value, k->min, k->max ? k->max : UINT64_MAX, &u);
		if (r == 0)
			*(uint64_t *)field = u;
		break;
	case FP_CFG_DOUBLE:
		r = fp_parse_double(value, k->dmin, k->dmax, &d);
		if (r == 0)
			*(double *)field = d;
		break;
	case FP_CFG_BOOL:
		r = fp_parse_bool(value, &b);
		if (r == 0)
			*(bool *)field = b;
		else
			*why = "expected true/false, yes/no, on/off or 1/0";
		break;
	case FP_CFG_ENUM:
		r = -EINVAL;
		*why = "not one of the allowed values";
		for (int i = 0; k->choices && k->choices[i]; i++) {
			if (strcmp(value, k->choices[i]) == 0) {
				*(int *)field = i;
				r = 0;
				break;
			}
		}
		break;
	default:
		*why = "key has an unknown type";
		return -EINVAL;
	}
	if (r == -ERANGE)
		*why = "value out of bounds";
	return r;
}

/* Text describing the accepted values of k, for error messages and describe(). */
static void bounds_text(const struct fp_cfg_key *k, char *buf, size_t n)
{
	size_t o = 0;

	buf[0] = '\0';
	switch (k->type) {
	case FP_CFG_U32:
	case FP_CFG_U64:
	case FP_CFG_MSEC:
	case FP_CFG_SIZE:
		snprintf(buf, n, "%" PRIu64 "..%" PRIu64 "%s", k->min,
			 k->max ? k->max : (k->type == FP_CFG_U32 ? UINT32_MAX : UINT64_MAX),
			 k->type == FP_CFG_MSEC	  ? " ms"
			 : k->type == FP_CFG_SIZE ? " bytes"
						  : "");
		break;
	case FP_CFG_DOUBLE:
		snprintf(buf, n, "%g..%g", k->dmin, k->dmax);
		break;
	case FP_CFG_BOOL:
		snprintf(buf, n, "true|false");
		break;
	case FP_CFG_ENUM:
		for (int i = 0; k->choices && k->choices[i] && o < n; i++)
			o += (size_t)snprintf(buf + o, n - o, "%s%s", i ? "|" : "", k->choices[i]);
		break;
	case FP_CFG_STR:
		if (k->max)
			snprintf(buf, n, "at most %" PRIu64 " characters", k->max);
		break;
	default:
		break;
	}
}

int fp_cfg_set(const struct fp_cfg_key *keys, void *obj, const char *section, const char *name,
	       const char *value, const char *origin)
{
	const struct fp_cfg_key *k = find_key(keys, section, name, NULL);
	const char *why;
	char bounds[160];
	int r;

	if (!k)
		return fp_err_detail(-ENOENT, "%s: unknown key '%s' in section [%s]", origin, name,
				     section);
	r = store(k, obj, value, &why);
	if (r < 0) {
		bounds_text(k, bounds, sizeof(bounds));
		return fp_err_detail(r, "%s: [%s] %s = '%s': %s%s%s%s", origin, section, name,
				     value, why, bounds[0] ? " (allowed: " : "", bounds,
				     bounds[0] ? ")" : "");
	}
	return 0;
}

int fp_cfg_defaults(const struct fp_cfg_key *keys, void *obj)
{
	for (size_t i = 0; keys[i].type != FP_CFG_END; i++) {
		int r;

		if (!keys[i].def)
			continue;
		r = fp_cfg_set(keys, obj, keys[i].section, keys[i].name, keys[i].def, "default");
		if (r < 0)
			return r;
	}
	return 0;
}

struct load_ctx {
	const struct fp_cfg_key *keys;
	void *obj;
	const char *name;
	const char *p, *end; /* unread text */
	unsigned line;	     /* number of the line inih is working on */
	bool *seen;
	int err; /* first error, 0 if none */
};

/*
 * inih reports keys, not section headers, so an unknown [section] would only surface at its
 * first key (or never, if it is empty). Check headers here to name the header's own line.
 */
static void check_section_line(struct load_ctx *c, const char *line)
{
	const char *p = line, *end;
	char name[FP_CFG_MAX_LINE + 1];

	while (*p == ' ' || *p == '\t')
		p++;
	if (*p != '[')
		return;
	end = strchr(p, ']');
	if (!end)
		return; /* malformed: inih reports it */
	p++;
	while (*p == ' ' || *p == '\t')
		p++;
	while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	memcpy(name, p, (size_t)(end - p));
	name[end - p] = '\0';
	if (!section_known(c->keys, name))
		c->err = fp_err_detail(-EINVAL, "%s:%u: unknown section [%s]", c->name, c->line,
				       name);
}

/* inih reader: the next line (with its '\n') into buf, or NULL at the end or on error. */
static char *reader(char *buf, int num, void *stream)
{
	struct load_ctx *c = stream;
	const char *nl;
	size_t len;

	if (c->err || c->p >= c->end)
		return NULL;
	c->line++;
	nl = memchr(c->p, '\n', (size_t)(c->end - c->p));
	len = nl ? (size_t)(nl - c->p) + 1 : (size_t)(c->end - c->p);
	if (memchr(c->p, '\0', len)) {
		c->err = fp_err_detail(-EINVAL, "%s:%u: NUL byte in line", c->name, c->line);
		return NULL;
	}
	if (len > (size_t)num - 1 || len > FP_CFG_MAX_LINE + 1) {
		c->err = fp_err_detail(-EINVAL, "%s:%u: line longer than %d characters", c->name,
				       c->line, FP_CFG_MAX_LINE);
		return NULL;
	}
	memcpy(buf, c->p, len);
	buf[len] = '\0';
	c->p += len;
	check_section_line(c, buf);
	return c->err ? NULL : buf;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
	struct load_ctx *c = user;
	const struct fp_cfg_key *k;
	size_t idx;
	const char *why;
	char bounds[160];
	int r;

	if (c->err)
		return 0;
	k = find_key(c->keys, section, name, &idx);
	if (!k) {
		if (!section_known(c->keys, section))
			c->err = fp_err_detail(-EINVAL, "%s:%u: unknown section [%s]", c->name,
					       c->line, section);
		else
			c->err = fp_err_detail(-EINVAL, "%s:%u: unknown key '%s' in section [%s]",
					       c->name, c->line, name, section);
		return 0;
	}
	if (c->seen[idx]) {
		c->err = fp_err_detail(-EINVAL, "%s:%u: key '%s' in section [%s] is set twice",
				       c->name, c->line, name, section);
		return 0;
	}
	c->seen[idx] = true;
	r = store(k, c->obj, value, &why);
	if (r < 0) {
		bounds_text(k, bounds, sizeof(bounds));
		c->err = fp_err_detail(r, "%s:%u: %s = '%s': %s%s%s%s", c->name, c->line, name,
				       value, why, bounds[0] ? " (allowed: " : "", bounds,
				       bounds[0] ? ")" : "");
		return 0;
	}
	return 1;
}

int fp_cfg_load_buf(const struct fp_cfg_key *keys, void *obj, const char *name, const char *text,
		    size_t len)
{
	struct load_ctx c = {
		.keys = keys, .obj = obj, .name = name, .p = text, .end = text + len
	};
	int r = fp_cfg_defaults(keys, obj);

	if (r < 0)
		return r;
	if (len > FP_CFG_MAX_BYTES)
		return fp_err_detail(-EFBIG, "%s: larger than %u bytes", name, FP_CFG_MAX_BYTES);
	c.seen = fp_callocarray(count_keys(keys) + 1, sizeof(bool));
	if (!c.seen)
		return -ENOMEM;
	r = ini_parse_stream(reader, &c, handler, &c);
	if (c.err) {
		r = c.err;
		goto out;
	}
	if (r > 0) {
		r = fp_err_detail(-EINVAL,
				  "%s:%d: malformed line (expected 'key = value' or "
				  "'[section]')",
				  name, r);
		goto out;
	}
	if (r < 0) {
		r = fp_err_detail(-ENOMEM, "%s: parser failed", name);
		goto out;
	}
	for (size_t i = 0; keys[i].type != FP_CFG_END; i++) {
		if (!keys[i].def && !c.seen[i]) {
			r = fp_err_detail(-EINVAL,
					  "%s: required key '%s' in section [%s] is missing", name,
					  keys[i].name, keys[i].section);
			goto out;
		}
	}
	r = 0;
out:
	free(c.seen);
	return r;
}

int fp_cfg_load_file(const struct fp_cfg_key *keys, void *obj, const char *path)
{
	char *text = NULL; /* stays NULL if the read fails */
	size_t len = 0;
	int r = fp_read_file(path, FP_CFG_MAX_BYTES, &text, &len);

	if (r == 0)
		r = fp_cfg_load_buf(keys, obj, path, text, len);
	free(text);
	return r;
}

void fp_cfg_free(const struct fp_cfg_key *keys, void *obj)
{
	for (size_t i = 0; keys[i].type != FP_CFG_END; i++) {
		if (keys[i].type == FP_CFG_STR) {
			char **field = (char **)((char *)obj + keys[i].offset);

			free(*field);
			*field = NULL;
		}
	}
}

void fp_cfg_describe(const struct fp_cfg_key *keys, FILE *f)
{
	const char *section = NULL;

	for (size_t i = 0; keys[i].type != FP_CFG_END; i++) {
		const struct fp_cfg_key *k = &keys[i];
		char bounds[160];

		if (!section || strcmp(section, k->section) != 0) {
			section = k->section;
			if (*section)
				fprintf(f, "%s[%s]\n", i ? "\n" : "", section);
		}
		bounds_text(k, bounds, sizeof(bounds));
		fprintf(f, "; %s\n", k->help ? k->help : "");
		if (bounds[0])
			fprintf(f, "; allowed: %s\n", bounds);
		if (k->def)
			fprintf(f, ";%s = %s\n", k->name, k->def);
		else
			fprintf(f, "; (required)\n;%s =\n", k->name);
	}
}

static const char *type_text(enum fp_cfg_type t)
{
	switch (t) {
	case FP_CFG_STR:
		return "text";
	case FP_CFG_U32:
	case FP_CFG_U64:
		return "integer";
	case FP_CFG_DOUBLE:
		return "number";
	case FP_CFG_BOOL:
		return "boolean";
	case FP_CFG_MSEC:
		return "duration";
	case FP_CFG_SIZE:
		return "size";
	case FP_CFG_ENUM:
		return "one of";
	default:
		return "?";
	}
}

/* Write text as '; ' comment lines of at most width columns, breaking at spaces. */
static void comment_wrapped(FILE *f, const char *text, size_t width)
{
	const size_t room = width - 2; /* after "; " */

	while (*text) {
		size_t len = strlen(text), cut = len;

		if (len > room) {
			cut = room;
			while (cut > 0 && text[cut] != ' ')
				cut--;
			if (cut == 0) /* one word longer than a line: keep it whole */
				cut = strcspn(text, " ");
		}
		fprintf(f, "; %.*s\n", (int)cut, text);
		text += cut;
		while (*text == ' ')
			text++;
	}
}

void fp_cfg_template(const struct fp_cfg_key *keys, const char *prog, FILE *f)
{
	const char *section = NULL;

	fprintf(f,
		"; %s configuration (INI), generated by `%s --print-config-template`.\n"
		";\n"
		"; Every key the program knows is listed, commented out, with its default: a key "
		"that\n"
		"; is left out keeps its default; remove the ';' in front of a key to set it. A "
		"key\n"
		"; marked 'required' has no default and must be set. Durations take ms, s, m or h\n"
		"; (a bare number is seconds), sizes k/KiB, M/MiB or G/GiB (a bare number is "
		"bytes),\n"
		"; booleans true/false, yes/no, on/off or 1/0. Unknown keys and sections are "
		"errors.\n"
		"; Check a file with `%s --config FILE --check-config`.\n",
		prog, prog, prog);
	for (size_t i = 0; keys[i].type != FP_CFG_END; i++) {
		const struct fp_cfg_key *k = &keys[i];
		char bounds[160];

		if (!section || strcmp(section, k->section) != 0) {
			section = k->section;
			if (*section)
				fprintf(f, "\n[%s]\n", section);
		}
		fprintf(f, "\n");
		comment_wrapped(f, k->help && *k->help ? k->help : "(no description)", 100);
		bounds_text(k, bounds, sizeof(bounds));
		fprintf(f, ";   %s%s%s; %s%s\n", type_text(k->type), bounds[0] ? ": " : "", bounds,
			k->def ? "default: " : "required: no default",
			k->def ? (*k->def ? k->def : "(empty)") : "");
		if (k->def && *k->def)
			fprintf(f, ";%s = %s\n", k->name, k->def);
		else
			fprintf(f, ";%s =\n", k->name);
	}
}
