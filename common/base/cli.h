/*
 * Command-line conventions shared by the three programs: --help and --version print to stdout
 * and exit 0; an unknown flag, a missing argument or a bad value prints one line to stderr
 * naming it and exits with status 2 (FP_EXIT_USAGE).
 */
#ifndef FP_CLI_H
#define FP_CLI_H

#include <getopt.h>
#include <stdint.h>
#include <stdnoreturn.h>

#define FP_EXIT_USAGE 2

/* "prog: <message> (see 'prog --help')" on stderr, then exit(2). */
noreturn void fp_cli_fail(const char *prog, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * Call when getopt_long returned '?' or ':' (optstring must start with ':'): names the unknown
 * option or the option missing its argument, then exits 2.
 */
noreturn void fp_cli_bad_option(const char *prog, int c, char *const argv[]);

/* Print "prog (fedprune) VERSION" and the library versions it runs with. */
void fp_cli_version(const char *prog);

/* Strict value parsers for flags: on failure they call fp_cli_fail naming flag and value. */
uint64_t fp_cli_u64(const char *prog, const char *flag, const char *value, uint64_t min,
		    uint64_t max);
double fp_cli_double(const char *prog, const char *flag, const char *value, double min, double max);

#endif
