/*
 * System test: 10,000 idle TCP connections, each with a pending recv, use no
 * thread per connection and no busy loop.
 *
 * The open-file limit rarely allows 20,000 descriptors in one process, so
 * the client side lives in a forked child that uses plain blocking POSIX
 * sockets; the parent uses px only.  The parent accepts with ~64 accepts
 * posted, gives each new connection a recv, then lets the loop sit idle
 * for two seconds with one timer and measures its CPU time and thread
 * count.  Finally the child closes every socket and each recv must end
 * with 0 (end of stream).
 *
 * Every wait is bounded by a wall-clock deadline; a ticking 50 ms timer
 * makes px_run(PX_RUN_ONCE) return while the test waits for the child, and
 * SIGALRM ends the process if px_run itself never returns.
 */
#define _XOPEN_SOURCE 700

/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "px.h"

enum {
  NCONN = 10000,       /* idle connections */
  NACCEPT = 64,        /* accepts kept posted on the listener */
  FD_SPARE = 200,      /* descriptors besides the connections */
  BACKLOG = 4096,      /* listen backlog (the kernel may clamp it) */
  CONNECT_BATCH = 256, /* connects in progress at once in the child */
  IDLE_MS = 2000,      /* the idle period */
  TICK_MS = 50,        /* the ticking timer while waiting for the child */
  ACCEPT_DL_MS = 120000,
  EOF_DL_MS = 60000,
  SETTLE_DL_MS = 10000,
  CHILD_DL_MS = 100000,
  HANG_GUARD_S = 280, /* below meson's 300 s timeout */
  MAX_CPU_MS = 100,
  MAX_THREADS = 16,
};

typedef struct conn {
  px_op op; /* the pending recv */
  px_fd fd;
  int32_t result;
  int calls;
  char buf[16];
} conn;

static struct {
  px_loop *loop;
  px_fd listener;
  conn *conns; /* NCONN entries, allocated up front */
  int accepted;
  /* Accepts. */
  int accepting; /* re-post completed accepts */
  px_op aops[NACCEPT];
  int apending[NACCEPT];
  int accept_pending;
  int accept_errors, first_accept_error;
  int extra; /* connections beyond NCONN */
  /* Cancels of the remaining accepts. */
  px_op cops[NACCEPT];
  int cancel_pending;
  int cancel_bad, first_cancel_bad;
  /* Recvs. */
  int recv_submit_fail, first_submit_fail;
  int recv_done, recv_eof, recv_other, first_other;
  /* The ticking timer. */
  px_op tick;
  int ticking, tick_pending, tick_fail;
  /* The idle timer. */
  px_op idle;
  int idle_calls, idle_result;
  /* The child. */
  pid_t child;
  int child_reaped, child_status;
} g;

static volatile sig_atomic_t g_child_pid;

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- The child: 10,000 plain blocking-API sockets. -------------------- */

static void child_fail(const char *what, int err) {
  fprintf(stderr, "idle_conns child: %s: %s\n", what, strerror(err));
  _exit(1);
}

/* Connects n sockets to port, CONNECT_BATCH non-blocking connects at a time
 * (a full accept queue drops a SYN and stalls that one connect for a
 * retransmission; the others keep going). */
static void child_connect_all(int *fds, int n, int port) {
  struct sockaddr_in to;
  struct pollfd pf[CONNECT_BATCH];
  uint64_t dl = now_ms() + CHILD_DL_MS;
  memset(&to, 0, sizeof(to));
  to.sin_family = AF_INET;
  to.sin_port = htons((uint16_t)port);
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int base = 0; base < n; base += CONNECT_BATCH) {
    int cnt = n - base < CONNECT_BATCH ? n - base : CONNECT_BATCH;
    int waiting = 0;
    for (int i = 0; i < cnt; i++) {
      int s = socket(AF_INET, SOCK_STREAM, 0);
      if (s < 0)
        child_fail("socket", errno);
      if (fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK) < 0)
        child_fail("fcntl", errno);
      fds[base + i] = s;
      pf[i].fd = -1;
      if (connect(s, (struct sockaddr *)&to, sizeof(to)) == 0)
        continue;
      if (errno != EINPROGRESS)
        child_fail("connect", errno);
      pf[i].fd = s;
      pf[i].events = POLLOUT;
      waiting++;
    }
    while (waiting > 0) {
      uint64_t t = now_ms();
      if (t >= dl) {
        fprintf(stderr,
                "idle_conns child: %d connects still pending after "
                "%d ms (%d connected)\n",
                waiting, (int)CHILD_DL_MS, base + cnt - waiting);
        _exit(1);
      }
      int r = poll(pf, (nfds_t)cnt, (int)(dl - t));
      if (r < 0 && errno != EINTR)
        child_fail("poll", errno);
      for (int i = 0; r > 0 && i < cnt; i++) {
        if (pf[i].fd < 0 || pf[i].revents == 0)
          continue;
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(pf[i].fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
          child_fail("getsockopt", errno);
        if (err != 0)
          child_fail("connect (async)", err);
        pf[i].fd = -1;
        waiting--;
      }
    }
  }
}

static void child_main(int port, int ctl) {
  int *fds = malloc(sizeof(int) * NCONN);
  char c;
  if (fds == NULL)
    child_fail("malloc", ENOMEM);
  child_connect_all(fds, NCONN, port);
  /* One byte (or the parent's end closing) means "close now". */
  while (read(ctl, &c, 1) < 0 && errno == EINTR) {
  }
  for (int i = 0; i < NCONN; i++)
    close(fds[i]);
  _exit(0);
}

/* ---- Parent helpers. --------------------------------------------------- */

static void hang_guard(int sig) {
  static const char msg[] = "idle_conns: hang guard: px_run did not return "
                            "in time, giving up\n";
  (void)sig;
  if (g_child_pid > 0)
    kill((pid_t)g_child_pid, SIGKILL);
  (void)!write(2, msg, sizeof(msg) - 1);
  _exit(1);
}

/* The "Threads:" line of /proc/self/status, or -1 without /proc. */
static int thread_count(void) {
  char line[256];
  int n = -1;
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL)
    return -1;
  while (fgets(line, sizeof(line), f) != NULL)
    if (sscanf(line, "Threads: %d", &n) == 1)
      break;
  fclose(f);
  return n;
}

static uint64_t cpu_us(void) {
  struct rusage ru;
  assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
  return (uint64_t)ru.ru_utime.tv_sec * 1000000u +
         (uint64_t)ru.ru_utime.tv_usec +
         (uint64_t)ru.ru_stime.tv_sec * 1000000u +
         (uint64_t)ru.ru_stime.tv_usec;
}

/* Reaps the child if it has exited; returns 1 then. */
static int child_exited(void) {
  if (!g.child_reaped) {
    pid_t r = waitpid(g.child, &g.child_status, WNOHANG);
    if (r == g.child) {
      g.child_reaped = 1;
      g_child_pid = 0;
    }
  }
  return g.child_reaped;
}

static void fail_if_child_exited(const char *phase) {
  if (!child_exited())
    return;
  if (WIFEXITED(g.child_status))
    fail_msg("the client child exited with status %d while %s",
             WEXITSTATUS(g.child_status), phase);
  fail_msg("the client child died (signal %d) while %s",
           WIFSIGNALED(g.child_status) ? WTERMSIG(g.child_status) : -1, phase);
}

static void recv_cb(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  c->calls++;
  c->result = op->result;
  g.recv_done++;
  if (op->result == 0) {
    g.recv_eof++;
  } else if (g.recv_other++ == 0) {
    g.first_other = op->result;
  }
}

static void accept_cb(px_loop *loop, px_op *op);

static int post_accept(int i) {
  int r =
      px_accept(g.loop, &g.aops[i], g.listener, accept_cb, (void *)(intptr_t)i);
  if (r == 0) {
    g.apending[i] = 1;
    g.accept_pending++;
  }
  return r;
}

static void accept_cb(px_loop *loop, px_op *op) {
  int i = (int)(intptr_t)op->data;
  int res = op->result;
  g.apending[i] = 0;
  g.accept_pending--;
  if (res == 0) {
    px_fd fd = px_op_fd(op);
    if (g.accepted >= NCONN) {
      g.extra++;
      px_fd_close(loop, fd);
    } else {
      conn *c = &g.conns[g.accepted++];
      int r;
      c->fd = fd;
      r = px_recv(loop, &c->op, fd, c->buf, sizeof(c->buf), recv_cb, c);
      if (r < 0 && g.recv_submit_fail++ == 0)
        g.first_submit_fail = r;
    }
  } else if (res != PX_ECANCELED && res != PX_ECONNABORTED) {
    if (g.accept_errors++ == 0)
      g.first_accept_error = res;
    return;
  }
  if (g.accepting && g.accepted < NCONN) {
    int r = post_accept(i);
    if (r < 0 && g.accept_errors++ == 0)
      g.first_accept_error = r;
  }
}

static void cancel_cb(px_loop *loop, px_op *op) {
  (void)loop;
  g.cancel_pending--;
  /* 0: reached the accept; PX_ENOENT/PX_EALREADY: it finished first. */
  if (op->result != 0 && op->result != PX_ENOENT && op->result != PX_EALREADY &&
      g.cancel_bad++ == 0)
    g.first_cancel_bad = op->result;
}

static void tick_cb(px_loop *loop, px_op *op) {
  g.tick_pending = 0;
  if (op->result != 0)
    g.tick_fail = 1;
  if (g.ticking && px_timeout(loop, &g.tick, TICK_MS, tick_cb, NULL) == 0)
    g.tick_pending = 1;
}

static void tick_start(void) {
  g.ticking = 1;
  if (!g.tick_pending) {
    assert_int_equal(px_timeout(g.loop, &g.tick, TICK_MS, tick_cb, NULL), 0);
    g.tick_pending = 1;
  }
}

/* Stops the ticking timer and runs until its last round has completed. */
static void tick_stop(void) {
  uint64_t dl = now_ms() + SETTLE_DL_MS;
  g.ticking = 0;
  while (g.tick_pending && now_ms() < dl)
    assert_true(px_run(g.loop, PX_RUN_ONCE) >= 0);
  assert_false(g.tick_pending);
  assert_false(g.tick_fail);
}

static void idle_cb(px_loop *loop, px_op *op) {
  (void)loop;
  g.idle_calls++;
  g.idle_result = op->result;
}

/* ---- The test. -------------------------------------------------------- */

static void ten_thousand_idle_connections_use_no_thread_and_no_cpu(void **st) {
  struct rlimit rl;
  px_addr la;
  px_stats s;
  int port, ctl[2], r;
  uint64_t t_start, t_accepted, dl;
  (void)st;

  memset(&g, 0, sizeof(g));
  g.listener = PX_INVALID_FD;

  /* Descriptors: NCONN in each process plus a few. */
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < NCONN + FD_SPARE) {
    printf("idle_conns: skipped: the open-file hard limit (RLIMIT_NOFILE) is "
           "%llu, below the %d this test needs\n",
           (unsigned long long)rl.rlim_max, NCONN + FD_SPARE);
    fflush(stdout);
    skip();
  }
  if (rl.rlim_cur != rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
  }

  g.conns = calloc(NCONN, sizeof(conn));
  assert_non_null(g.conns);
  for (int i = 0; i < NCONN; i++)
    g.conns[i].fd = PX_INVALID_FD;

  assert_int_equal(px_loop_new(&g.loop, NULL), 0);
  assert_int_equal(px_tcp_listen(g.loop, "127.0.0.1", 0, BACKLOG, &g.listener),
                   0);
  assert_int_equal(px_addr_local(g.listener, &la), 0);
  port = px_addr_port(&la);
  assert_true(port > 0 && port < 65536);

  /* A hung px_run must not hang the suite. */
  {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = hang_guard;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGALRM, &sa, NULL), 0);
    alarm(HANG_GUARD_S);
  }

  assert_int_equal(pipe(ctl), 0);
  fflush(stdout);
  fflush(stderr);
  g.child = fork();
  assert_true(g.child >= 0);
  if (g.child == 0) {
    alarm(0);
    close(ctl[1]);
    close((int)g.listener); /* the child's copy only */
    child_main(port, ctl[0]);
  }
  g_child_pid = g.child;
  close(ctl[0]);

  /* Accept NCONN connections, each given a recv at once. */
  t_start = now_ms();
  g.accepting = 1;
  for (int i = 0; i < NACCEPT; i++)
    assert_int_equal(post_accept(i), 0);
  tick_start();
  dl = t_start + ACCEPT_DL_MS;
  while (g.accepted < NCONN && g.accept_errors == 0 &&
         g.recv_submit_fail == 0 && now_ms() < dl) {
    assert_true(px_run(g.loop, PX_RUN_ONCE) >= 0);
    fail_if_child_exited("connecting");
  }
  t_accepted = now_ms();
  if (g.accept_errors != 0)
    fail_msg("%d accepts failed, the first with %s", g.accept_errors,
             px_strerror(g.first_accept_error));
  if (g.recv_submit_fail != 0)
    fail_msg("%d recvs were refused, the first with %s", g.recv_submit_fail,
             px_strerror(g.first_submit_fail));
  if (g.accepted < NCONN)
    fail_msg("only %d of %d connections accepted within %d ms", g.accepted,
             NCONN, (int)ACCEPT_DL_MS);

  /* Cancel the accepts still posted and wait for them. */
  g.accepting = 0;
  for (int i = 0; i < NACCEPT; i++) {
    if (!g.apending[i])
      continue;
    assert_int_equal(px_cancel(g.loop, &g.cops[i], &g.aops[i], cancel_cb, NULL),
                     0);
    g.cancel_pending++;
  }
  dl = now_ms() + SETTLE_DL_MS;
  while ((g.accept_pending > 0 || g.cancel_pending > 0) && now_ms() < dl)
    assert_true(px_run(g.loop, PX_RUN_ONCE) >= 0);
  assert_int_equal(g.accept_pending, 0);
  assert_int_equal(g.cancel_pending, 0);
  if (g.cancel_bad != 0)
    fail_msg("%d cancels of accepts failed, the first with %s", g.cancel_bad,
             px_strerror(g.first_cancel_bad));
  assert_int_equal(g.accept_errors, 0);
  assert_int_equal(g.extra, 0);
  tick_stop();
  fail_if_child_exited("connected");

  /* Nothing has arrived: every connection has its recv pending. */
  assert_int_equal(g.recv_done, 0);
  px_loop_stats(g.loop, &s);
  assert_int_equal(s.in_flight, NCONN);

  /* The idle period: one timer besides the NCONN recvs. */
  {
    int threads_before, threads_after;
    uint64_t cpu_before, cpu_after, t0, t1, cpu_used_us, idle_ms;

    threads_before = thread_count();
    cpu_before = cpu_us();
    t0 = now_ms();
    assert_int_equal(px_timeout(g.loop, &g.idle, IDLE_MS, idle_cb, NULL), 0);
    dl = t0 + IDLE_MS + SETTLE_DL_MS;
    while (g.idle_calls == 0 && now_ms() < dl)
      assert_true(px_run(g.loop, PX_RUN_ONCE) >= 0);
    t1 = now_ms();
    cpu_after = cpu_us();
    threads_after = thread_count();

    assert_int_equal(g.idle_calls, 1);
    assert_int_equal(g.idle_result, 0);
    assert_int_equal(g.recv_done, 0);
    px_loop_stats(g.loop, &s);
    assert_int_equal(s.in_flight, NCONN);
    fail_if_child_exited("idle");

    idle_ms = t1 - t0;
    cpu_used_us = cpu_after - cpu_before;
    if (threads_before < 0)
      printf("idle_conns: no /proc/self/status: thread count not measured\n");
    printf("idle_conns: backend %s, %d connections, accepted in %llu ms, "
           "idle %llu ms: cpu %llu.%03llu ms (%llu ns per connection), "
           "threads %d -> %d\n",
           px_loop_backend_name(g.loop), NCONN,
           (unsigned long long)(t_accepted - t_start),
           (unsigned long long)idle_ms,
           (unsigned long long)(cpu_used_us / 1000),
           (unsigned long long)(cpu_used_us % 1000),
           (unsigned long long)(cpu_used_us * 1000 / NCONN), threads_before,
           threads_after);
    fflush(stdout);

    assert_true(idle_ms >= IDLE_MS);
    if (cpu_used_us >= (uint64_t)MAX_CPU_MS * 1000)
      fail_msg("the idle loop used %llu us of CPU in %llu ms (limit %d ms)",
               (unsigned long long)cpu_used_us, (unsigned long long)idle_ms,
               (int)MAX_CPU_MS);
    if (threads_before >= 0) {
      if (threads_after > threads_before + 2 || threads_after >= MAX_THREADS)
        fail_msg("threads went from %d to %d with %d idle connections",
                 threads_before, threads_after, NCONN);
    }
  }

  /* "Close now": every recv ends with end of stream. */
  {
    char one = 'x';
    uint64_t t0 = now_ms();
    ssize_t w;
    while ((w = write(ctl[1], &one, 1)) < 0 && errno == EINTR) {
    }
    assert_int_equal(w, 1);
    tick_start();
    dl = t0 + EOF_DL_MS;
    while (g.recv_done < NCONN && now_ms() < dl) {
      assert_true(px_run(g.loop, PX_RUN_ONCE) >= 0);
      if (child_exited() &&
          (!WIFEXITED(g.child_status) || WEXITSTATUS(g.child_status) != 0))
        fail_if_child_exited("closing");
    }
    tick_stop();
    if (g.recv_done < NCONN)
      fail_msg("only %d of %d recvs completed within %d ms of the close",
               g.recv_done, NCONN, (int)EOF_DL_MS);
    if (g.recv_other != 0)
      fail_msg("%d recvs ended with something other than end of stream, the "
               "first with %d (%s)",
               g.recv_other, g.first_other, px_strerror(g.first_other));
    assert_int_equal(g.recv_eof, NCONN);
    for (int i = 0; i < NCONN; i++)
      assert_int_equal(g.conns[i].calls, 1);
    printf("idle_conns: %d recvs saw end of stream in %llu ms\n", NCONN,
           (unsigned long long)(now_ms() - t0));
  }
  close(ctl[1]);

  /* Tear down. */
  for (int i = 0; i < NCONN; i++) {
    assert_int_equal(px_fd_close(g.loop, g.conns[i].fd), 0);
    g.conns[i].fd = PX_INVALID_FD;
  }
  assert_int_equal(px_fd_close(g.loop, g.listener), 0);
  px_loop_stats(g.loop, &s);
  assert_int_equal(s.in_flight, 0);
  assert_int_equal(s.submitted, s.completed);
  assert_int_equal(px_loop_free(g.loop), 0);
  g.loop = NULL;

  if (!g.child_reaped) {
    while ((r = waitpid(g.child, &g.child_status, 0)) < 0 && errno == EINTR) {
    }
    assert_int_equal(r, g.child);
    g.child_reaped = 1;
    g_child_pid = 0;
  }
  alarm(0);
  assert_true(WIFEXITED(g.child_status));
  assert_int_equal(WEXITSTATUS(g.child_status), 0);
  free(g.conns);
  g.conns = NULL;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(ten_thousand_idle_connections_use_no_thread_and_no_cpu),
  };
  return cmocka_run_group_tests_name("system_idle_conns", tests, NULL, NULL);
}
