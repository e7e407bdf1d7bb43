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
#include <string.h>

#ifdef _WIN32
/* winsock2.h must come before windows.h. */
#include <winsock2.h>
#include <ws2tcpip.h>

#include <windows.h>

#include <io.h>
#else
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/wait.h>
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

void pt_yield(void) {
  SwitchToThread();
}

uint64_t pt_thread_cpu_us(void) {
  FILETIME created, exited, kernel, user;
  if (!GetThreadTimes(GetCurrentThread(), &created, &exited, &kernel, &user))
    return 0;
  uint64_t k = ((uint64_t)kernel.dwHighDateTime << 32) | kernel.dwLowDateTime;
  uint64_t u = ((uint64_t)user.dwHighDateTime << 32) | user.dwLowDateTime;
  return (k + u) / 10u; /* 100 ns units */
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

void pt_yield(void) {
  sched_yield();
}

uint64_t pt_thread_cpu_us(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
    return 0;
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
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

int pt_setenv(const char *name, const char *value) {
#ifdef _WIN32
  /* An empty value removes the variable on Windows. */
  return _putenv_s(name, value != NULL ? value : "") == 0 ? 0 : -1;
#else
  return value != NULL ? setenv(name, value, 1) : unsetenv(name);
#endif
}

#ifdef _WIN32
#define pt_dup _dup
#define pt_dup2 _dup2
#define pt_fileno _fileno
#define pt_close _close
#else
#define pt_dup dup
#define pt_dup2 dup2
#define pt_fileno fileno
#define pt_close close
#endif

static struct {
  FILE *file;
  int saved; /* the real stderr, while captured */
  char path[512];
} capture = {NULL, -1, ""};

int pt_stderr_capture_start(void) {
  if (pt_temp_path(capture.path, sizeof(capture.path), "stderr") != 0)
    return -1;
  capture.file = fopen(capture.path, "w+");
  if (capture.file == NULL)
    return -1;
  fflush(stderr);
  capture.saved = pt_dup(2);
  if (capture.saved < 0 || pt_dup2(pt_fileno(capture.file), 2) < 0) {
    if (capture.saved >= 0)
      pt_close(capture.saved);
    fclose(capture.file);
    remove(capture.path);
    capture.file = NULL;
    return -1;
  }
  return 0;
}

void pt_stderr_capture_stop(char *buf, size_t size) {
  buf[0] = '\0';
  if (capture.file == NULL)
    return;
  fflush(stderr);
  pt_dup2(capture.saved, 2);
  pt_close(capture.saved);
  rewind(capture.file);
  size_t n = fread(buf, 1, size - 1, capture.file);
  buf[n] = '\0';
  fclose(capture.file);
  remove(capture.path);
  capture.file = NULL;
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
  /* A SIGPIPE left blocked and pending would kill a later test: unblock it
   * here, where it is counted. */
  sigset_t pipe_only;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_UNBLOCK, &pipe_only, NULL);
  signal(SIGPIPE, SIG_DFL);
  return (int)sigpipes;
#else
  return 0;
#endif
}

/* ---- Signal masks. ------------------------------------------------------ */

#ifdef _WIN32
int pt_sigpipe_blocked(void) {
  return 0;
}

int pt_sigpipe_pending(void) {
  return 0;
}

void pt_sigmask_save(pt_sigmask *m) {
  m->bits[0] = m->bits[1] = 0;
}

int pt_sigmask_equal(const pt_sigmask *a, const pt_sigmask *b) {
  (void)a;
  (void)b;
  return 1;
}

void pt_block_all_signals(void) {}

int pt_sigusr1_blocked(void) {
  return -1;
}

void pt_sigusr1_block(void) {}

void pt_sigusr1_unblock(void) {}
#else
static int blocked_now(int sig) {
  sigset_t cur;
  if (pthread_sigmask(SIG_BLOCK, NULL, &cur) != 0)
    return 0;
  return sigismember(&cur, sig) == 1;
}

int pt_sigpipe_blocked(void) {
  return blocked_now(SIGPIPE);
}

int pt_sigpipe_pending(void) {
  sigset_t pending;
  if (sigpending(&pending) != 0)
    return 0;
  return sigismember(&pending, SIGPIPE) == 1;
}

/* A sigset_t is compared signal by signal: the kernel fills only part of
 * it, so its bytes are not comparable. */
void pt_sigmask_save(pt_sigmask *m) {
  sigset_t cur;
  m->bits[0] = m->bits[1] = 0;
  if (pthread_sigmask(SIG_BLOCK, NULL, &cur) != 0)
    return;
  for (int sig = 1; sig < 128; sig++)
    if (sigismember(&cur, sig) == 1)
      m->bits[(sig - 1) / 64] |= (uint64_t)1 << ((sig - 1) % 64);
}

int pt_sigmask_equal(const pt_sigmask *a, const pt_sigmask *b) {
  return a->bits[0] == b->bits[0] && a->bits[1] == b->bits[1];
}

void pt_block_all_signals(void) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
}

static void mask_one(int how, int sig) {
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  pthread_sigmask(how, &one, NULL);
}

int pt_sigusr1_blocked(void) {
  return blocked_now(SIGUSR1);
}

void pt_sigusr1_block(void) {
  mask_one(SIG_BLOCK, SIGUSR1);
}

void pt_sigusr1_unblock(void) {
  mask_one(SIG_UNBLOCK, SIGUSR1);
}
#endif

/* ---- A socket pair no loop knows. --------------------------------------- */

#ifdef _WIN32
static SOCKET overlapped_tcp_socket(void) {
  DWORD flags = WSA_FLAG_OVERLAPPED;
#ifdef WSA_FLAG_NO_HANDLE_INHERIT
  flags |= WSA_FLAG_NO_HANDLE_INHERIT;
#endif
  return WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, flags);
}

static int same_addr(const struct sockaddr_in *a, const struct sockaddr_in *b) {
  return a->sin_family == b->sin_family && a->sin_port == b->sin_port &&
         a->sin_addr.s_addr == b->sin_addr.s_addr;
}

/* Accepts on l until the connection from c arrives: another program may
 * connect to a loopback port too, and its connection is not ours. */
static SOCKET accept_from(SOCKET l, SOCKET c) {
  struct sockaddr_in want, got;
  int len = (int)sizeof(want);
  if (getsockname(c, (struct sockaddr *)&want, &len) != 0)
    return INVALID_SOCKET;
  for (int tries = 0; tries < 16; tries++) {
    len = (int)sizeof(got);
    SOCKET a = accept(l, (struct sockaddr *)&got, &len);
    if (a == INVALID_SOCKET)
      return INVALID_SOCKET;
    if (len == (int)sizeof(got) && same_addr(&got, &want))
      return a;
    closesocket(a);
  }
  return INVALID_SOCKET;
}

static int connect_pair(SOCKET l, SOCKET *c, SOCKET *a) {
  struct sockaddr_in addr;
  int len = (int)sizeof(addr);
  BOOL on = TRUE;
  memset(&addr, 0, sizeof(addr));
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  /* Exclusive: nobody else may bind the port while we use it. */
  setsockopt(l, SOL_SOCKET, SO_EXCLUSIVEADDRUSE, (const char *)&on,
             (int)sizeof(on));
  if (bind(l, (const struct sockaddr *)&addr, (int)sizeof(addr)) != 0 ||
      listen(l, 1) != 0 || getsockname(l, (struct sockaddr *)&addr, &len) != 0)
    return -1;
  *c = overlapped_tcp_socket();
  if (*c == INVALID_SOCKET)
    return -1;
  if (connect(*c, (const struct sockaddr *)&addr, (int)sizeof(addr)) != 0)
    return -1;
  /* The accepted socket inherits the listener's overlapped flag. */
  *a = accept_from(l, *c);
  if (*a == INVALID_SOCKET)
    return -1;
  /* Small test messages must not wait for Nagle and delayed ACKs. */
  setsockopt(*c, IPPROTO_TCP, TCP_NODELAY, (const char *)&on, (int)sizeof(on));
  setsockopt(*a, IPPROTO_TCP, TCP_NODELAY, (const char *)&on, (int)sizeof(on));
  return 0;
}

int pt_raw_socketpair(px_fd out[2]) {
  static int started;
  WSADATA wsa;
  SOCKET l, c = INVALID_SOCKET, a = INVALID_SOCKET;
  if (!started) {
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0)
      return -1;
    started = 1;
  }
  l = overlapped_tcp_socket();
  if (l == INVALID_SOCKET)
    return -1;
  int rc = connect_pair(l, &c, &a);
  closesocket(l);
  if (rc != 0) {
    if (c != INVALID_SOCKET)
      closesocket(c);
    if (a != INVALID_SOCKET)
      closesocket(a);
    return -1;
  }
  out[0] = (px_fd)c;
  out[1] = (px_fd)a;
  return 0;
}
#else
int pt_raw_socketpair(px_fd out[2]) {
  int sv[2];
#ifdef SOCK_CLOEXEC
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return -1;
#else
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
    return -1;
  fcntl(sv[0], F_SETFD, FD_CLOEXEC);
  fcntl(sv[1], F_SETFD, FD_CLOEXEC);
#endif
  out[0] = sv[0];
  out[1] = sv[1];
  return 0;
}
#endif

/* ---- UDP pairs. -------------------------------------------------------- */

#ifdef _WIN32
typedef SOCKET pt_sock;
#define PT_BAD_SOCK INVALID_SOCKET
#define pt_sock_close closesocket
#else
typedef int pt_sock;
#define PT_BAD_SOCK (-1)
#define pt_sock_close close
#endif

static pt_sock udp_bound(struct sockaddr_in *addr) {
  socklen_t len = sizeof(*addr);
  pt_sock s = socket(AF_INET, SOCK_DGRAM, 0);
  if (s == PT_BAD_SOCK)
    return PT_BAD_SOCK;
  memset(addr, 0, sizeof(*addr));
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, (struct sockaddr *)addr, sizeof(*addr)) != 0 ||
      getsockname(s, (struct sockaddr *)addr, &len) != 0) {
    pt_sock_close(s);
    return PT_BAD_SOCK;
  }
  return s;
}

int pt_udp_pair(px_fd out[2]) {
#ifdef _WIN32
  WSADATA wsa;
  if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0)
    return -1;
#endif
  struct sockaddr_in a, b;
  pt_sock s = udp_bound(&a), t = udp_bound(&b);
  if (s == PT_BAD_SOCK || t == PT_BAD_SOCK ||
      connect(s, (struct sockaddr *)&b, sizeof(b)) != 0 ||
      connect(t, (struct sockaddr *)&a, sizeof(a)) != 0) {
    if (s != PT_BAD_SOCK)
      pt_sock_close(s);
    if (t != PT_BAD_SOCK)
      pt_sock_close(t);
    return -1;
  }
  out[0] = (px_fd)s;
  out[1] = (px_fd)t;
  return 0;
}

int pt_raw_send(px_fd fd, const void *buf, size_t len) {
  return (int)send((pt_sock)fd, buf, (int)len, 0);
}

int pt_linger_on(px_fd fd) {
  struct linger lg;
#ifdef _WIN32
  int len = (int)sizeof(lg);
  if (getsockopt((pt_sock)fd, SOL_SOCKET, SO_LINGER, (char *)&lg, &len) != 0)
    return -1;
#else
  socklen_t len = sizeof(lg);
  if (getsockopt((pt_sock)fd, SOL_SOCKET, SO_LINGER, &lg, &len) != 0)
    return -1;
#endif
  return lg.l_onoff != 0;
}

int pt_raw_send_urgent(px_fd fd, const void *buf, size_t len) {
  return (int)send((pt_sock)fd, buf, (int)len, MSG_OOB);
}

#ifdef _WIN32
px_fd pt_sync_file(const char *path) {
  HANDLE h = CreateFileA(path, GENERIC_READ | GENERIC_WRITE, 0, NULL,
                         CREATE_ALWAYS, FILE_ATTRIBUTE_NORMAL, NULL);
  return h == INVALID_HANDLE_VALUE ? PX_INVALID_FD : (px_fd)h;
}

void pt_sync_file_close(px_fd fd) {
  CloseHandle((HANDLE)fd);
}

int pt_raw_send_with_descriptor(px_fd fd, const void *buf, size_t len) {
  (void)fd, (void)buf, (void)len;
  return -1;
}
#else
px_fd pt_sync_file(const char *path) {
  (void)path;
  return PX_INVALID_FD;
}

void pt_sync_file_close(px_fd fd) {
  (void)fd;
}

int pt_raw_send_with_descriptor(px_fd fd, const void *buf, size_t len) {
  int passed = (int)fd;
  union {
    struct cmsghdr h;
    char space[CMSG_SPACE(sizeof(int))];
  } ctl;
  memset(&ctl, 0, sizeof(ctl));
  struct iovec iov = {(void *)buf, len};
  struct msghdr mh;
  memset(&mh, 0, sizeof(mh));
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = ctl.space;
  mh.msg_controllen = sizeof(ctl.space);
  struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &passed, sizeof(int));
  return (int)sendmsg((int)fd, &mh, 0);
}
#endif

void pt_raw_close(px_fd fd) {
  pt_sock_close((pt_sock)fd);
}

/* ---- Fault injection. ---------------------------------------------------- */

#ifdef _WIN32
unsigned pt_fd_limit_raise(unsigned want) {
  return want;
}

int pt_fd_limit_set(unsigned want, unsigned *old) {
  (void)want, (void)old;
  return -1;
}

unsigned pt_fd_headroom(unsigned max) {
  return max;
}

int pt_sock_bufs(px_fd fd, int bytes, int *snd, int *rcv) {
  SOCKET s = (SOCKET)fd;
  int len = (int)sizeof(int);
  if (setsockopt(s, SOL_SOCKET, SO_SNDBUF, (const char *)&bytes, len) != 0 ||
      setsockopt(s, SOL_SOCKET, SO_RCVBUF, (const char *)&bytes, len) != 0)
    return -1;
  if (snd != NULL && getsockopt(s, SOL_SOCKET, SO_SNDBUF, (char *)snd, &len))
    return -1;
  len = (int)sizeof(int);
  if (rcv != NULL && getsockopt(s, SOL_SOCKET, SO_RCVBUF, (char *)rcv, &len))
    return -1;
  return 0;
}

int pt_alarm_start(unsigned usec) {
  (void)usec;
  return -1;
}

unsigned long pt_alarm_stop(void) {
  return 0;
}

int pt_in_child(int (*fn)(void *arg), void *arg) {
  return fn(arg);
}

const char *pt_signal_name(int sig) {
  (void)sig;
  return "?";
}
#else
unsigned pt_fd_limit_raise(unsigned want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return 0;
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want
                      ? (rlim_t)want
                      : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      rl.rlim_cur = old;
  }
  return rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 0xffffffffu
             ? 0xffffffffu
             : (unsigned)rl.rlim_cur;
}

int pt_fd_limit_set(unsigned want, unsigned *old) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return -1;
  *old = rl.rlim_cur > 0xffffffffu ? 0xffffffffu : (unsigned)rl.rlim_cur;
  rl.rlim_cur = (rlim_t)want;
  return setrlimit(RLIMIT_NOFILE, &rl) == 0 ? 0 : -1;
}

unsigned pt_fd_headroom(unsigned max) {
  int *fds = calloc(max, sizeof(int));
  unsigned n = 0;
  if (fds == NULL)
    return 0;
  while (n < max && (fds[n] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
    n++;
  for (unsigned i = 0; i < n; i++)
    close(fds[i]);
  free(fds);
  return n;
}

int pt_sock_bufs(px_fd fd, int bytes, int *snd, int *rcv) {
  int s = (int)fd;
  socklen_t len = sizeof(int);
  if (setsockopt(s, SOL_SOCKET, SO_SNDBUF, &bytes, len) != 0 ||
      setsockopt(s, SOL_SOCKET, SO_RCVBUF, &bytes, len) != 0)
    return -1;
  if (snd != NULL && getsockopt(s, SOL_SOCKET, SO_SNDBUF, snd, &len) != 0)
    return -1;
  len = sizeof(int);
  if (rcv != NULL && getsockopt(s, SOL_SOCKET, SO_RCVBUF, rcv, &len) != 0)
    return -1;
  return 0;
}

static struct {
  int running;
  pthread_t target;
  struct sigaction old;
  volatile sig_atomic_t caught; /* by the target thread only */
  atomic_int passing;           /* handlers passing a signal on right now */
} alarm_state;

static void on_alarm(int sig) {
  int saved = errno;
  if (pthread_equal(pthread_self(), alarm_state.target)) {
    alarm_state.caught = alarm_state.caught + 1;
  } else {
    atomic_fetch_add(&alarm_state.passing, 1);
    pthread_kill(alarm_state.target, sig);
    atomic_fetch_sub(&alarm_state.passing, 1);
  }
  errno = saved;
}

int pt_alarm_start(unsigned usec) {
  struct sigaction sa;
  struct itimerval it;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_alarm;
  sa.sa_flags = 0; /* no SA_RESTART: interrupted calls fail with EINTR */
  sigemptyset(&sa.sa_mask);
  alarm_state.target = pthread_self();
  alarm_state.caught = 0;
  if (sigaction(SIGALRM, &sa, &alarm_state.old) != 0)
    return -1;
  memset(&it, 0, sizeof(it));
  it.it_interval.tv_usec = (suseconds_t)usec;
  it.it_value.tv_usec = (suseconds_t)usec;
  if (setitimer(ITIMER_REAL, &it, NULL) != 0) {
    sigaction(SIGALRM, &alarm_state.old, NULL);
    return -1;
  }
  alarm_state.running = 1;
  return 0;
}

unsigned long pt_alarm_stop(void) {
  struct itimerval off;
  struct sigaction ign;
  if (!alarm_state.running)
    return 0;
  alarm_state.running = 0;
  memset(&off, 0, sizeof(off));
  setitimer(ITIMER_REAL, &off, NULL);
  /* Ignoring the signal drops one still pending; once no handler is passing
   * one on, none can come, and the old action (perhaps the default, which
   * ends the process) is safe to put back. */
  memset(&ign, 0, sizeof(ign));
  ign.sa_handler = SIG_IGN;
  sigemptyset(&ign.sa_mask);
  sigaction(SIGALRM, &ign, NULL);
  while (atomic_load(&alarm_state.passing) != 0)
    sched_yield();
  sigaction(SIGALRM, &alarm_state.old, NULL);
  return (unsigned long)alarm_state.caught;
}

int pt_in_child(int (*fn)(void *arg), void *arg) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0)
    return 255;
  if (pid == 0) {
    alarm(20); /* a hang ends with SIGALRM, reported by the parent */
    int rc = fn(arg);
    fflush(stdout);
    fflush(stderr);
    _exit(rc & 0xff);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      return 255;
  if (WIFSIGNALED(status))
    return -WTERMSIG(status);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

const char *pt_signal_name(int sig) {
  switch (sig) {
    case SIGPIPE:
      return "SIGPIPE";
    case SIGALRM:
      return "SIGALRM (the child hung)";
    case SIGSEGV:
      return "SIGSEGV";
    case SIGABRT:
      return "SIGABRT";
    case SIGBUS:
      return "SIGBUS";
    case SIGKILL:
      return "SIGKILL";
    default:
      return "another signal";
  }
}
#endif

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
