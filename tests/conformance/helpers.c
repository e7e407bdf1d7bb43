/*
 * Platform code for the tests: POSIX (pthreads, clock_gettime) or Windows
 * (CreateThread, QueryPerformanceCounter).  Nothing here is px-specific
 * except the watchdog's px_loop_wakeup call.
 */
#ifndef _WIN32
#define _POSIX_C_SOURCE 200809L
#endif

#include "helpers.h"

#include <stdio.h>
#include <stdlib.h>

#ifdef _WIN32
#include <windows.h>
#else
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#endif

/* ---- Clock. ------------------------------------------------------------ */

#ifdef _WIN32
uint64_t pt_now_us(void) {
  static LARGE_INTEGER freq;
  LARGE_INTEGER now;
  if (freq.QuadPart == 0)
    QueryPerformanceFrequency(&freq);
  QueryPerformanceCounter(&now);
  return (uint64_t)(now.QuadPart / freq.QuadPart) * 1000000u +
         (uint64_t)(now.QuadPart % freq.QuadPart) * 1000000u /
             (uint64_t)freq.QuadPart;
}

void pt_sleep_ms(unsigned ms) {
  Sleep(ms);
}
#else
uint64_t pt_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void pt_sleep_ms(unsigned ms) {
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0)
    ;
}
#endif

uint64_t pt_now_ms(void) {
  return pt_now_us() / 1000u;
}

/* ---- Threads and a mutex. ---------------------------------------------- */

struct pt_thread {
  pt_thread_fn fn;
  void *arg;
#ifdef _WIN32
  HANDLE h;
#else
  pthread_t t;
#endif
};

#ifdef _WIN32
static DWORD WINAPI thread_main(LPVOID p) {
  pt_thread *t = p;
  t->fn(t->arg);
  return 0;
}

static int thread_create(pt_thread *t) {
  t->h = CreateThread(NULL, 0, thread_main, t, 0, NULL);
  return t->h ? 0 : -1;
}

void pt_thread_join(pt_thread *t) {
  WaitForSingleObject(t->h, INFINITE);
  CloseHandle(t->h);
  free(t);
}

typedef CRITICAL_SECTION pt_mutex;
static void mutex_init(pt_mutex *m) {
  InitializeCriticalSection(m);
}
static void mutex_lock(pt_mutex *m) {
  EnterCriticalSection(m);
}
static void mutex_unlock(pt_mutex *m) {
  LeaveCriticalSection(m);
}
#else
static void *thread_main(void *p) {
  pt_thread *t = p;
  t->fn(t->arg);
  return NULL;
}

static int thread_create(pt_thread *t) {
  return pthread_create(&t->t, NULL, thread_main, t) == 0 ? 0 : -1;
}

void pt_thread_join(pt_thread *t) {
  pthread_join(t->t, NULL);
  free(t);
}

typedef pthread_mutex_t pt_mutex;
static void mutex_init(pt_mutex *m) {
  pthread_mutex_init(m, NULL);
}
static void mutex_lock(pt_mutex *m) {
  pthread_mutex_lock(m);
}
static void mutex_unlock(pt_mutex *m) {
  pthread_mutex_unlock(m);
}
#endif

int pt_thread_start(pt_thread **out, pt_thread_fn fn, void *arg) {
  pt_thread *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return -1;
  t->fn = fn;
  t->arg = arg;
  if (thread_create(t) != 0) {
    free(t);
    return -1;
  }
  *out = t;
  return 0;
}

/* ---- Files and signals. ------------------------------------------------ */

int pt_temp_path(char *buf, size_t size, const char *tag) {
  static unsigned counter;
  const char *dir = getenv("TMPDIR");
  long pid;
#ifdef _WIN32
  if (dir == NULL || dir[0] == '\0')
    dir = getenv("TEMP");
  pid = (long)GetCurrentProcessId();
#else
  pid = (long)getpid();
#endif
  if (dir == NULL || dir[0] == '\0')
    dir = "/tmp";
  int n = snprintf(buf, size, "%s/px-test-%ld-%u-%s", dir, pid, counter++, tag);
  return n > 0 && (size_t)n < size ? 0 : -1;
}

void pt_sigpipe_default(void) {
#ifdef SIGPIPE
  signal(SIGPIPE, SIG_DFL);
#endif
}

#ifdef SIGPIPE
static volatile sig_atomic_t sigpipes;

static void count_sigpipe(int sig) {
  (void)sig;
  sigpipes = sigpipes + 1;
}
#endif

void pt_sigpipe_count_start(void) {
#ifdef SIGPIPE
  sigpipes = 0;
  signal(SIGPIPE, count_sigpipe);
#endif
}

int pt_sigpipe_count_stop(void) {
#ifdef SIGPIPE
  signal(SIGPIPE, SIG_DFL);
  return (int)sigpipes;
#else
  return 0;
#endif
}

/* ---- Watchdog. ---------------------------------------------------------- */

/* The watchdog thread polls every few milliseconds: it is a timer, not a
 * synchronisation point, and polling keeps it free of condition-variable
 * clock differences between platforms. */
static struct {
  int started;
  pt_mutex mu;
  pt_thread *thread;
  uint64_t test_deadline; /* 0: no guard */
  px_loop *loop;          /* NULL: no wakeup armed */
  uint64_t wake_at;
} wd;

static void watchdog_main(void *arg) {
  (void)arg;
  for (;;) {
    mutex_lock(&wd.mu);
    uint64_t now = pt_now_ms();
    if (wd.test_deadline != 0 && now >= wd.test_deadline) {
      fprintf(stderr, "px test watchdog: the running test hung, aborting\n");
      fflush(stderr);
      fflush(stdout);
      _Exit(1);
    }
    if (wd.loop != NULL && now >= wd.wake_at) {
      px_loop_wakeup(wd.loop);
      wd.wake_at = now + 20;
    }
    mutex_unlock(&wd.mu);
    pt_sleep_ms(2);
  }
}

static void watchdog_start(void) {
  if (wd.started)
    return;
  mutex_init(&wd.mu);
  wd.started = 1;
  if (pt_thread_start(&wd.thread, watchdog_main, NULL) != 0) {
    fprintf(stderr, "px test watchdog: cannot start its thread\n");
    _Exit(1);
  }
}

void pt_hang_guard(unsigned seconds) {
  watchdog_start();
  mutex_lock(&wd.mu);
  wd.test_deadline = seconds ? pt_now_ms() + (uint64_t)seconds * 1000u : 0;
  mutex_unlock(&wd.mu);
}

void pt_wake_at(px_loop *loop, uint64_t deadline_ms) {
  watchdog_start();
  mutex_lock(&wd.mu);
  wd.loop = loop;
  wd.wake_at = deadline_ms;
  mutex_unlock(&wd.mu);
}

void pt_wake_cancel(void) {
  if (!wd.started)
    return;
  mutex_lock(&wd.mu);
  wd.loop = NULL;
  mutex_unlock(&wd.mu);
}
