/* Monotonic clock and yielding on POSIX. */
#include <sched.h>
#include <time.h>

#include "internal.h"

int64_t px__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void px__os_yield(void) {
  sched_yield();
}
