/* Monotonic clock and yielding on Windows. */
#include <windows.h>

#include "internal.h"

int64_t px__now_ns(void) {
  static LARGE_INTEGER freq; /* a constant of the system: races are benign */
  LARGE_INTEGER now;
  if (freq.QuadPart == 0)
    QueryPerformanceFrequency(&freq);
  QueryPerformanceCounter(&now);
  /* Split to avoid overflowing 64 bits at high counter frequencies. */
  int64_t sec = now.QuadPart / freq.QuadPart;
  int64_t rem = now.QuadPart % freq.QuadPart;
  return sec * 1000000000 + rem * 1000000000 / freq.QuadPart;
}

void px__os_yield(void) {
  SwitchToThread();
}

size_t px__os_fd_limit(void) {
  return 0; /* HANDLE values have no such limit: the tables double */
}
