/*
 * micro — what the micro-benchmarks in this directory share: the clock,
 * CPU time, option parsing, medians and the result lines bench/run reads.
 *
 * Every program prints, per round, one line per implementation:
 *
 *   name=nop impl=px batch=32 round=3 ops=4000000 seconds=0.512
 *   ops_per_s=7812500 cpu_user_s=0.40 cpu_sys_s=0.11 [more key=value]
 *
 * (on one line), and at the end one summary line per pairing with the
 * median of the per-round ratios, always oriented so that > 1 means px did
 * better; ratio_is= says what was divided by what:
 *
 *   summary name=nop batch=32 impl=px peer=liburing
 *   ratio_px_over_peer=0.93 ratio_is=px_ops_per_s/peer_ops_per_s rounds=5
 *
 * (on one line).  Where a program has more than one pairing for the same
 * name (and batch), the first summary line is the headline one.
 */
#ifndef MICRO_H
#define MICRO_H

#include <stdint.h>

/* A point in time: wall clock (CLOCK_MONOTONIC) and CPU time. */
typedef struct micro_mark {
  double wall, user, sys; /* seconds */
} micro_mark;

/* What happened between two marks. */
typedef struct micro_span {
  double seconds, user, sys;
} micro_span;

/* who: RUSAGE_THREAD (the calling thread) or RUSAGE_SELF (the process). */
micro_mark micro_mark_now(int who);
micro_span micro_between(micro_mark a, micro_mark b);
/* Adds b's CPU time to a (two threads' shares of one run). */
micro_span micro_add_cpu(micro_span a, micro_span b);
double micro_cpu(micro_span s); /* user + sys */

/* Parses a decimal count in [min, max]; exits with a message otherwise. */
uint64_t micro_count(const char *opt, const char *arg, uint64_t min,
                     uint64_t max);

/* One result line.  mid goes after impl= (e.g. "batch=32 ", may be ""),
 * tail after the standard fields (e.g. " allocs=0", may be ""). */
void micro_line(const char *name, const char *impl, const char *mid,
                unsigned round, uint64_t ops, micro_span s, const char *tail);

/* The summary line of one pairing (impl against peer): the median of
 * ratios[0..n). */
void micro_summary(const char *name, const char *mid, const char *impl,
                   const char *peer, const char *ratio_is, const double *ratios,
                   unsigned n);

/* Ends the program with a message (a benchmark that went wrong must not
 * print numbers). */
_Noreturn void micro_fail(const char *what, int code);

#endif
