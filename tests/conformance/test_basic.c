/* The loop itself: identity, nop, post, run modes, input checks, stats. */
#include "conf.h"

#include <ctype.h>

/* The run says which backend it expects (PX_TEST_BACKEND, set by the build
 * for each run): the one PX_BACKEND names, or the one px falls back to. */
void backend_name_is_the_expected_one(void **state) {
  (void)state;
  const char *expect = getenv("PX_TEST_BACKEND");
  if (expect == NULL || expect[0] == '\0') {
    print_message("PX_TEST_BACKEND is not set: no name to compare with\n");
    skip();
  }
  px_loop *loop = new_loop();
  const char *name = px_loop_backend_name(loop);
  assert_non_null(name);
  assert_string_equal(name, expect);
  finish(loop);
}

void op_is_at_most_128_bytes(void **state) {
  (void)state;
  assert_true(sizeof(px_op) <= 128);
}

static int mentions_success(const char *s) {
  char low[64];
  size_t i;
  for (i = 0; s[i] != '\0' && i + 1 < sizeof(low); i++)
    low[i] = (char)tolower((unsigned char)s[i]);
  low[i] = '\0';
  return strstr(low, "success") != NULL;
}

void strerror_is_distinct_for_each_code(void **state) {
  static const int codes[] = {
      PX_EPERM,        PX_ENOENT,       PX_EINTR,         PX_EIO,
      PX_EBADF,        PX_EAGAIN,       PX_ENOMEM,        PX_EACCES,
      PX_EFAULT,       PX_EBUSY,        PX_EEXIST,        PX_ENOTDIR,
      PX_EISDIR,       PX_EINVAL,       PX_ENFILE,        PX_EMFILE,
      PX_ENOSPC,       PX_ESPIPE,       PX_EPIPE,         PX_ENAMETOOLONG,
      PX_ENOSYS,       PX_ENOTSOCK,     PX_EMSGSIZE,      PX_EOPNOTSUPP,
      PX_EAFNOSUPPORT, PX_EADDRINUSE,   PX_EADDRNOTAVAIL, PX_ENETDOWN,
      PX_ENETUNREACH,  PX_ECONNABORTED, PX_ECONNRESET,    PX_ENOBUFS,
      PX_EISCONN,      PX_ENOTCONN,     PX_ESHUTDOWN,     PX_ETIMEDOUT,
      PX_ECONNREFUSED, PX_EHOSTUNREACH, PX_EALREADY,      PX_ECANCELED,
      PX_EUNKNOWN};
  const size_t n = sizeof(codes) / sizeof(codes[0]);
  (void)state;
  for (size_t i = 0; i < n; i++) {
    const char *s = px_strerror(codes[i]);
    assert_non_null(s);
    assert_true(s[0] != '\0');
    assert_false(mentions_success(s));
    for (size_t j = 0; j < i; j++) {
      if (strcmp(s, px_strerror(codes[j])) == 0)
        fail_msg("codes %d and %d share the text \"%s\"", codes[i], codes[j],
                 s);
    }
  }
  assert_true(mentions_success(px_strerror(0)));
  assert_true(mentions_success(px_strerror(42)));
  assert_non_null(px_strerror(-9999));
  assert_true(px_strerror(-9999)[0] != '\0');
}

void nop_completes_with_zero(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  rec r = {0};
  (void)state;
  assert_int_equal(px_nop(loop, &op, rec_cb, &r), 0);
  /* Callbacks run from px_run / px_wait, never inside the submit call. */
  assert_int_equal(r.calls, 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, 0);
  assert_int_equal(op.result, 0);
  assert_ptr_equal(op.data, &r);
  settle(loop);
  assert_int_equal(r.calls, 1);
  finish(loop);
}

void post_on_loop_thread_completes_with_zero(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  rec r = {0};
  (void)state;
  assert_int_equal(px_post(loop, &op, rec_cb, &r), 0);
  assert_int_equal(r.calls, 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, 0);
  assert_ptr_equal(op.data, &r);
  settle(loop);
  assert_int_equal(r.calls, 1);
  finish(loop);
}

typedef struct chain {
  int calls;
  int target;
  int submit_errors;
} chain;

static void chain_cb(px_loop *loop, px_op *op) {
  chain *c = op->data;
  c->calls++;
  if (op->result != 0)
    c->submit_errors++;
  if (c->calls < c->target && px_nop(loop, op, chain_cb, c) != 0)
    c->submit_errors++;
}

void callback_can_resubmit_its_own_op(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  chain c = {0, 100, 0};
  (void)state;
  assert_int_equal(px_nop(loop, &op, chain_cb, &c), 0);
  RUN_UNTIL(loop, c.calls == c.target, 5000);
  assert_int_equal(c.submit_errors, 0);
  settle(loop);
  assert_int_equal(c.calls, c.target);
  finish(loop);
}

void run_default_returns_zero_when_nothing_is_in_flight(void **state) {
  px_loop *loop = new_loop();
  px_op ops[4] = {{0}};
  rec r[4] = {{0}};
  (void)state;
  assert_int_equal(px_run(loop, PX_RUN_DEFAULT), 0);
  assert_int_equal(px_nop(loop, &ops[0], rec_cb, &r[0]), 0);
  assert_int_equal(px_nop(loop, &ops[1], rec_cb, &r[1]), 0);
  assert_int_equal(px_timeout(loop, &ops[2], 10, rec_cb, &r[2]), 0);
  assert_int_equal(px_post(loop, &ops[3], rec_cb, &r[3]), 0);
  assert_int_equal(px_run(loop, PX_RUN_DEFAULT), 0);
  for (int i = 0; i < 4; i++) {
    assert_int_equal(r[i].calls, 1);
    assert_int_equal(r[i].result, 0);
  }
  finish(loop);
}

void run_nowait_does_not_block(void **state) {
  px_loop *loop = new_loop();
  px_op t = {0}, c = {0};
  rec tr = {0}, cr = {0};
  (void)state;
  assert_int_equal(px_timeout(loop, &t, 60000, rec_cb, &tr), 0);
  uint64_t t0 = pt_now_ms();
  for (int i = 0; i < 10; i++)
    assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_true(pt_now_ms() - t0 < 500);
  assert_int_equal(tr.calls, 0);
  assert_int_equal(px_cancel(loop, &c, &t, rec_cb, &cr), 0);
  RUN_UNTIL(loop, tr.calls == 1 && cr.calls == 1, 2000);
  assert_int_equal(tr.result, PX_ECANCELED);
  finish(loop);
}

static void stop_cb(px_loop *loop, px_op *op) {
  rec_cb(loop, op);
  px_stop(loop);
}

void stop_makes_run_default_return_one(void **state) {
  px_loop *loop = new_loop();
  px_op t = {0}, n = {0}, c = {0};
  rec tr = {0}, nr = {0}, cr = {0};
  (void)state;
  assert_int_equal(px_timeout(loop, &t, 60000, rec_cb, &tr), 0);
  assert_int_equal(px_nop(loop, &n, stop_cb, &nr), 0);
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_run(loop, PX_RUN_DEFAULT), 1);
  assert_true(pt_now_ms() - t0 < 2000);
  assert_int_equal(nr.calls, 1);
  assert_int_equal(tr.calls, 0);
  assert_int_equal(px_cancel(loop, &c, &t, rec_cb, &cr), 0);
  RUN_UNTIL(loop, tr.calls == 1 && cr.calls == 1, 2000);
  assert_int_equal(tr.result, PX_ECANCELED);
  finish(loop);
}

/* A px_wait for a 500 ms timer, which must block: fails the test if the
 * thread used more than 20 ms of CPU meanwhile (a spinning wait uses most
 * of the 500, even under wine or on a loaded machine; a blocked one next
 * to none). */
static void wait_blocks_for_the_timer(px_loop *loop) {
  px_op t = {0};
  rec tr = {0};
  px_op *out[4];
  assert_int_equal(px_timeout(loop, &t, 500, rec_cb, &tr), 0);
  uint64_t cpu0 = pt_thread_cpu_us(), t0 = pt_now_ms();
  int got = px_wait(loop, out, 4, -1);
  uint64_t cpu = pt_thread_cpu_us() - cpu0, wall = pt_now_ms() - t0;
  assert_int_equal(got, 1);
  assert_ptr_equal(out[0], &t);
  out[0]->cb(loop, out[0]);
  assert_int_equal(tr.calls, 1);
  if (cpu > 20000)
    fail_msg("px_wait took %d ms and %d ms of CPU: it spun instead of "
             "blocking",
             (int)wall, (int)(cpu / 1000));
}

/* A stop is for the px_run it ends: a px_wait after it blocks as usual. */
void stop_from_a_run_once_callback_leaves_later_waits_blocking(void **state) {
  px_loop *loop = new_loop();
  px_op n = {0};
  rec nr = {0};
  (void)state;
  assert_int_equal(px_nop(loop, &n, stop_cb, &nr), 0);
  RUN_UNTIL(loop, nr.calls == 1, 2000);
  wait_blocks_for_the_timer(loop);
  finish(loop);
}

/* ... and one made outside px_run (a callback the program runs itself
 * after px_wait) keeps no px_wait from blocking. */
void stop_outside_run_leaves_px_wait_blocking(void **state) {
  px_loop *loop = new_loop();
  px_op n = {0};
  rec nr = {0};
  px_op *out[4];
  (void)state;
  assert_int_equal(px_nop(loop, &n, stop_cb, &nr), 0);
  assert_int_equal(px_wait(loop, out, 4, -1), 1);
  out[0]->cb(loop, out[0]); /* calls px_stop */
  wait_blocks_for_the_timer(loop);
  finish(loop);
}

static int g_free_rc;

static void free_inside_cb(px_loop *loop, px_op *op) {
  rec_cb(loop, op);
  g_free_rc = px_loop_free(loop);
}

void loop_free_inside_callback_is_refused_with_ebusy(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  rec r = {0};
  (void)state;
  g_free_rc = 1;
  assert_int_equal(px_nop(loop, &op, free_inside_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(g_free_rc, PX_EBUSY);
  /* The loop is intact: it still runs ops. */
  assert_int_equal(px_nop(loop, &op, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 2, 2000);
  finish(loop);
}

void bad_arguments_are_refused_with_einval(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  char buf[16] = "abc";
  px_iov iov[1025];
  px_stats s;
  (void)state;
  socketpair_new(loop, sp);
  for (int i = 0; i < 1025; i++) {
    iov[i].base = buf;
    iov[i].len = 1;
  }
  assert_int_equal(px_nop(NULL, &op, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_nop(loop, NULL, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_post(NULL, &op, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_post(loop, NULL, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_timeout(loop, NULL, 10, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_recv(NULL, &op, sp[0], buf, 4, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_recv(loop, NULL, sp[0], buf, 4, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_recv(loop, &op, sp[0], NULL, 4, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_recv(loop, &op, sp[0], buf, 0, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_send(loop, &op, sp[0], NULL, 4, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_send(loop, &op, sp[0], buf, 0, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_read(loop, &op, sp[0], NULL, 4, PX_CUR, rec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_read(loop, &op, sp[0], buf, 0, PX_CUR, rec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_write(loop, &op, sp[0], NULL, 4, PX_CUR, rec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_write(loop, &op, sp[0], buf, 0, PX_CUR, rec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_readv(loop, &op, sp[0], iov, 0, PX_CUR, rec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_readv(loop, &op, sp[0], iov, 1025, PX_CUR, rec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_readv(loop, &op, sp[0], NULL, 1, PX_CUR, rec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_writev(loop, &op, sp[0], iov, 0, PX_CUR, rec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_writev(loop, &op, sp[0], iov, -1, PX_CUR, rec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_writev(loop, &op, sp[0], iov, 1025, PX_CUR, rec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_cancel(loop, NULL, &op, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_close(loop, NULL, sp[0], rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 0);
  assert_int_equal(r.calls, 0);
  px_loop_stats(loop, &s);
  assert_int_equal(s.submitted, 0);
  assert_int_equal(s.completed, 0);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void op_in_flight_resubmitted_is_refused_with_ebusy(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  rec r = {0}, other = {0};
  char buf[4] = "abc";
  px_fd sp[2];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_timeout(loop, &op, 20, rec_cb, &r), 0);
  assert_int_equal(px_nop(loop, &op, rec_cb, &other), PX_EBUSY);
  assert_int_equal(px_timeout(loop, &op, 1, rec_cb, &other), PX_EBUSY);
  assert_int_equal(px_post(loop, &op, rec_cb, &other), PX_EBUSY);
  assert_int_equal(px_send(loop, &op, sp[0], buf, 3, rec_cb, &other), PX_EBUSY);
  /* The refused calls did not touch the op. */
  assert_ptr_equal(op.data, &r);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, 0);
  settle(loop);
  assert_int_equal(r.calls, 1);
  assert_int_equal(other.calls, 0);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void stats_count_completed_nops(void **state) {
  px_loop *loop = new_loop();
  enum { N = 100 };
  px_op ops[N];
  rec r[N];
  px_stats s;
  int done = 0;
  (void)state;
  memset(ops, 0, sizeof(ops));
  memset(r, 0, sizeof(r));
  for (int i = 0; i < N; i++)
    assert_int_equal(px_nop(loop, &ops[i], rec_cb, &r[i]), 0);
  /* Callbacks run only inside px_run: nothing has completed yet. */
  px_loop_stats(loop, &s);
  assert_int_equal(s.submitted, N);
  assert_int_equal(s.completed, 0);
  assert_int_equal(s.in_flight, N);
  RUN_UNTIL(loop, (done = g_seq) == N, 5000);
  px_loop_stats(loop, &s);
  assert_int_equal(done, N);
  assert_int_equal(s.submitted, N);
  assert_int_equal(s.completed, N);
  assert_int_equal(s.failed, 0);
  assert_int_equal(s.cancelled, 0);
  assert_int_equal(s.in_flight, 0);
  finish(loop);
}

void stats_count_failed_and_cancelled_ops(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op rop = {0}, t = {0}, c = {0};
  rec rr = {0}, tr = {0}, cr = {0};
  char buf[8];
  px_stats s;
  (void)state;
  socketpair_new(loop, sp);
  /* Refused submissions are not counted at all. */
  assert_int_equal(px_recv(loop, &rop, sp[0], buf, 0, rec_cb, &rr), PX_EINVAL);
  assert_int_equal(px_op_deadline(&rop, 10), 0);
  assert_int_equal(px_recv(loop, &rop, sp[0], buf, sizeof(buf), rec_cb, &rr),
                   0);
  assert_int_equal(px_timeout(loop, &t, 60000, rec_cb, &tr), 0);
  px_loop_stats(loop, &s);
  assert_int_equal(s.submitted, 2);
  assert_int_equal(s.in_flight, 2);
  assert_int_equal(px_cancel(loop, &c, &t, rec_cb, &cr), 0);
  RUN_UNTIL(loop, rr.calls == 1 && tr.calls == 1 && cr.calls == 1, 5000);
  assert_int_equal(rr.result, PX_ETIMEDOUT);
  assert_int_equal(tr.result, PX_ECANCELED);
  assert_int_equal(cr.result, 0);
  px_loop_stats(loop, &s);
  assert_int_equal(s.submitted, 3);
  assert_int_equal(s.completed, 3);
  assert_int_equal(s.failed, 1);
  assert_int_equal(s.cancelled, 1);
  assert_int_equal(s.in_flight, 0);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void wait_times_out_while_ops_are_pending(void **state) {
  px_loop *loop = new_loop();
  px_op t = {0}, c = {0};
  rec tr = {0}, cr = {0};
  px_op *out[4];
  int got = 0;
  (void)state;
  assert_int_equal(px_timeout(loop, &t, 60000, rec_cb, &tr), 0);
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_wait(loop, out, 4, 50), 0);
  uint64_t elapsed = pt_now_ms() - t0;
  if (elapsed < 50)
    fail_msg("px_wait(50 ms) returned after %d ms", (int)elapsed);
  assert_true(elapsed < 50 + 1000);
  /* The cancel and its target come back through px_wait, no callbacks. */
  assert_int_equal(px_cancel(loop, &c, &t, rec_cb, &cr), 0);
  uint64_t deadline = pt_now_ms() + 2000;
  while (got < 2 && pt_now_ms() < deadline) {
    int n = px_wait(loop, out + got, 4 - got, 100);
    assert_true(n >= 0);
    got += n;
  }
  assert_int_equal(got, 2);
  assert_true((out[0] == &t && out[1] == &c) || (out[0] == &c && out[1] == &t));
  assert_int_equal(t.result, PX_ECANCELED);
  assert_int_equal(c.result, 0);
  assert_int_equal(tr.calls + cr.calls, 0);
  finish(loop);
}

void op_handed_back_by_wait_can_be_resubmitted(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  px_op *out[1];
  (void)state;
  for (int round = 0; round < 100; round++) {
    int n = 0;
    assert_int_equal(px_nop(loop, &op, NULL, NULL), 0);
    uint64_t deadline = pt_now_ms() + 2000;
    while (n == 0 && pt_now_ms() < deadline)
      n = px_wait(loop, out, 1, 100);
    assert_int_equal(n, 1);
    assert_ptr_equal(out[0], &op);
  }
  finish(loop);
}

/* The two tests below: a recv waiting on one end of a new socket pair,
 * behind a timer of a minute, after one px_run(NOWAIT); c is a spare op
 * for cancels and closes. */
typedef struct once_fx {
  px_loop *loop;
  px_fd sp[2];
  px_op rop, t, c;
  rec rr, tr, cr;
  char buf[8];
} once_fx;

static void recv_waits_beside_a_long_timer(once_fx *f) {
  memset(f, 0, sizeof(*f));
  f->loop = new_loop();
  socketpair_new(f->loop, f->sp);
  assert_int_equal(px_recv(f->loop, &f->rop, f->sp[0], f->buf, sizeof(f->buf),
                           rec_cb, &f->rr),
                   0);
  assert_int_equal(px_timeout(f->loop, &f->t, 60000, rec_cb, &f->tr), 0);
  assert_int_equal(px_run(f->loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(f->rr.calls, 0);
}

/* px_run(ONCE), its wait bounded by a wakeup after 3 s: its result, and
 * the milliseconds it took in *elapsed. */
static int run_once_bounded(px_loop *loop, uint64_t *elapsed) {
  uint64_t t0 = pt_now_ms();
  pt_wake_at(loop, t0 + 3000);
  int rc = px_run(loop, PX_RUN_ONCE);
  pt_wake_cancel();
  *elapsed = pt_now_ms() - t0;
  return rc;
}

/*
 * Completions that are ready when px_run(PX_RUN_ONCE) starts (a cancelled
 * timer completes at once) are dispatched and px_run returns: it does not
 * go on to wait for something else.  A pending recv keeps the loop alive.
 */
void run_once_returns_after_dispatching_ready_completions(void **state) {
  once_fx f;
  (void)state;
  recv_waits_beside_a_long_timer(&f);
  assert_int_equal(px_cancel(f.loop, &f.c, &f.t, rec_cb, &f.cr), 0);
  uint64_t elapsed;
  assert_int_equal(run_once_bounded(f.loop, &elapsed), 1);
  assert_int_equal(f.tr.calls, 1);
  assert_int_equal(f.cr.calls, 1);
  if (elapsed >= 1000)
    fail_msg("px_run(ONCE) ran the ready callbacks, then blocked %d ms",
             (int)elapsed);
  assert_int_equal(f.rr.calls, 0);
  assert_int_equal(px_close(f.loop, &f.c, f.sp[0], rec_cb, &f.cr), 0);
  RUN_UNTIL(f.loop, f.rr.calls == 1 && f.cr.calls == 2, 2000);
  assert_int_equal(f.rr.result, PX_ECANCELED);
  close_fd(f.loop, f.sp[1]);
  finish(f.loop);
}

/* A completion that arrives during px_run(ONCE)'s wait, with nothing else
 * ready, is that call's round of callbacks: it returns at once.  (On
 * io_uring such a completion runs its callback from the reaping loop, not
 * from the ready list.) */
void run_once_returns_after_a_completion_that_came_while_waiting(void **state) {
  once_fx f;
  (void)state;
  recv_waits_beside_a_long_timer(&f);
  assert_int_equal(pt_raw_send(f.sp[1], "ab", 2), 2);
  uint64_t elapsed;
  assert_int_equal(run_once_bounded(f.loop, &elapsed), 1);
  assert_int_equal(f.rr.calls, 1);
  assert_int_equal(f.rr.result, 2);
  assert_memory_equal(f.buf, "ab", 2);
  assert_int_equal(f.tr.calls, 0);
  if (elapsed >= 1000)
    fail_msg("px_run(ONCE) got the recv, then waited on %d ms", (int)elapsed);
  assert_int_equal(px_cancel(f.loop, &f.c, &f.t, rec_cb, &f.cr), 0);
  RUN_UNTIL(f.loop, f.tr.calls == 1 && f.cr.calls == 1, 2000);
  assert_int_equal(f.tr.result, PX_ECANCELED);
  close_fd(f.loop, f.sp[0]);
  close_fd(f.loop, f.sp[1]);
  finish(f.loop);
}

/* A px_run(ONCE) that follows a wakeup, or a finished file read, waits for
 * the next event: nothing left over from the last one ends it early. */
void run_once_after_a_wakeup_waits_for_the_timer(void **state) {
  px_loop *loop = new_loop();
  px_op t = {0};
  rec tr = {0};
  (void)state;
  px_loop_wakeup(loop);
  assert_int_equal(px_timeout(loop, &t, 200, rec_cb, &tr), 0);
  for (int i = 0; i < 3 && tr.calls == 0; i++)
    assert_true(px_run(loop, PX_RUN_ONCE) >= 0);
  /* One run for the wakeup, one for the timer: never a third. */
  assert_int_equal(tr.calls, 1);
  finish(loop);
}

void run_once_after_a_file_read_waits_for_the_timer(void **state) {
  px_loop *loop = new_loop();
  char path[512], buf[4];
  px_fd fd = temp_file(loop, path, sizeof(path));
  px_op t = {0};
  rec tr = {0};
  (void)state;
  assert_int_equal(sync_write(loop, fd, "data", 4, 0), 4);
  assert_int_equal(sync_read(loop, fd, buf, 4, 0), 4);
  assert_int_equal(px_timeout(loop, &t, 200, rec_cb, &tr), 0);
  assert_true(px_run(loop, PX_RUN_ONCE) >= 0);
  assert_int_equal(tr.calls, 1);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}
