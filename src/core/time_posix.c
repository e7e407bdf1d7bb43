/* Monotonic clock and yielding on POSIX. */
#include <sched.h>
#include <sys/resource.h>
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

size_t px__os_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
    return 0;
  return (size_t)rl.rlim_cur;
}
