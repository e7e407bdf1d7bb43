/*
 * micro — shared helpers of the micro-benchmarks (see micro.h).
 */
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include "micro.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static double micro_tv(struct timeval tv) {
  return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

micro_mark micro_mark_now(int who) {
  struct timespec ts;
  struct rusage ru;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  getrusage(who, &ru);
  return (micro_mark){(double)ts.tv_sec + (double)ts.tv_nsec / 1e9,
                      micro_tv(ru.ru_utime), micro_tv(ru.ru_stime)};
}

micro_span micro_between(micro_mark a, micro_mark b) {
  return (micro_span){b.wall - a.wall, b.user - a.user, b.sys - a.sys};
}

micro_span micro_add_cpu(micro_span a, micro_span b) {
  a.user += b.user;
  a.sys += b.sys;
  return a;
}

double micro_cpu(micro_span s) {
  return s.user + s.sys;
}

uint64_t micro_count(const char *opt, const char *arg, uint64_t min,
                     uint64_t max) {
  char *end;
  unsigned long long v = arg != NULL ? strtoull(arg, &end, 10) : 0;
  if (arg == NULL || *arg == '\0' || *end != '\0' || v < min || v > max) {
    fprintf(stderr, "%s: expected a number from %llu to %llu\n", opt,
            (unsigned long long)min, (unsigned long long)max);
    exit(2);
  }
  return v;
}

void micro_line(const char *name, const char *impl, const char *mid,
                unsigned round, uint64_t ops, micro_span s, const char *tail) {
  printf("name=%s impl=%s %sround=%u ops=%llu seconds=%.6f ops_per_s=%.0f "
         "cpu_user_s=%.4f cpu_sys_s=%.4f%s\n",
         name, impl, mid, round, (unsigned long long)ops, s.seconds,
         s.seconds > 0 ? (double)ops / s.seconds : 0.0, s.user, s.sys, tail);
  fflush(stdout);
}

static int micro_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

void micro_summary(const char *name, const char *mid, const char *impl,
                   const char *peer, const char *ratio_is, const double *ratios,
                   unsigned n) {
  double *v = malloc((n > 0 ? n : 1) * sizeof(*v));
  if (v == NULL)
    micro_fail("malloc", 0);
  memcpy(v, ratios, n * sizeof(*v));
  qsort(v, n, sizeof(*v), micro_cmp);
  double med = n == 0       ? 0
               : n % 2 == 1 ? v[n / 2]
                            : (v[n / 2 - 1] + v[n / 2]) / 2;
  free(v);
  printf("summary name=%s %simpl=%s peer=%s ratio_px_over_peer=%.3f "
         "ratio_is=%s rounds=%u\n",
         name, mid, impl, peer, med, ratio_is, n);
  fflush(stdout);
}

_Noreturn void micro_fail(const char *what, int code) {
  fprintf(stderr, "%s failed: %d\n", what, code);
  exit(1);
}
