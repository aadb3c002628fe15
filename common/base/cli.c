/*
 * Command-line helpers (see cli.h).
 */
#include "cli.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <cJSON.h>
#include <openssl/crypto.h>
#include <protobuf-c/protobuf-c.h>
#include <sodium.h>
#include <uv.h>

#include "fp_config.h"
#include "parse.h"

void fp_cli_fail(const char *prog, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (see '%s --help')\n", prog);
	exit(FP_EXIT_USAGE);
}

void fp_cli_bad_option(const char *prog, int c, char *const argv[])
{
	const char *word = optind > 0 ? argv[optind - 1] : "?";
	int is_long = word[0] == '-' && word[1] == '-';

	/* For a long option, optopt holds its short alias (or 0), so name the word itself. */
	if (c == ':') {
		if (!is_long && optopt > 0 && optopt < 256)
			fp_cli_fail(prog, "option '-%c' needs a value", optopt);
		fp_cli_fail(prog, "option '%s' needs a value", word);
	}
	if (!is_long && optopt > 0 && optopt < 256)
		fp_cli_fail(prog, "unknown option '-%c'", optopt);
	fp_cli_fail(prog, "unknown option '%s'", word);
}

void fp_cli_version(const char *prog)
{
	printf("%s (fedprune) %s\n", prog, FP_VERSION);
	printf("libuv %s, %s, protobuf-c %s, libsodium %s, cJSON %s, BLAS %s\n",
	       uv_version_string(), OpenSSL_version(OPENSSL_VERSION), protobuf_c_version(),
	       sodium_version_string(), cJSON_Version(), FP_BLAS);
}

uint64_t fp_cli_u64(const char *prog, const char *flag, const char *value, uint64_t min,
		    uint64_t max)
{
	uint64_t v;
	int r = fp_parse_u64(value, min, max, &v);

	if (r == -ERANGE)
		fp_cli_fail(prog, "%s '%s' is out of range (%" PRIu64 "..%" PRIu64 ")", flag, value,
			    min, max);
	if (r < 0)
		fp_cli_fail(prog, "%s '%s' is not a whole number", flag, value);
	return v;
}

double fp_cli_double(const char *prog, const char *flag, const char *value, double min, double max)
{
	double v;
	int r = fp_parse_double(value, min, max, &v);

	if (r == -ERANGE)
		fp_cli_fail(prog, "%s '%s' is out of range (%g..%g)", flag, value, min, max);
	if (r < 0)
		fp_cli_fail(prog, "%s '%s' is not a number", flag, value);
	return v;
}
