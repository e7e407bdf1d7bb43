/* Timeouts, cancellation and per-op deadlines. */
#include "conf.h"

void timeout_fires_with_zero_not_before_its_time(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  rec r = {0};
  (void)state;
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_timeout(loop, &op, 50, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 3000);
  assert_int_equal(r.result, 0);
  if (r.at_ms - t0 < 50)
    fail_msg("a 50 ms timeout fired after %d ms", (int)(r.at_ms - t0));
  assert_true(r.at_ms - t0 < 50 + 1000);
  finish(loop);
}

void timeout_of_zero_completes_with_zero(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  rec r = {0};
  (void)state;
  assert_int_equal(px_timeout(loop, &op, 0, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, 0);
  finish(loop);
}

void timeouts_complete_in_expiry_order(void **state) {
  static const uint64_t ms[4] = {30, 10, 20, 0};
  /* index into ms[] of the timeout expected at each completion position */
  static const int expect[4] = {3, 1, 2, 0};
  px_loop *loop = new_loop();
  px_op ops[4] = {{0}};
  rec r[4] = {{0}};
  (void)state;
  uint64_t t0 = pt_now_ms();
  for (int i = 0; i < 4; i++)
    assert_int_equal(px_timeout(loop, &ops[i], ms[i], rec_cb, &r[i]), 0);
  RUN_UNTIL(loop, g_seq == 4, 3000);
  for (int pos = 0; pos < 4; pos++) {
    const rec *x = &r[expect[pos]];
    assert_int_equal(x->calls, 1);
    assert_int_equal(x->result, 0);
    if (x->order != pos)
      fail_msg("the %d ms timeout completed in position %d, expected %d",
               (int)ms[expect[pos]], x->order, pos);
    assert_true(x->at_ms - t0 >= ms[expect[pos]]);
  }
  finish(loop);
}

void equal_timeouts_complete_in_submission_order(void **state) {
  enum { N = 16 };
  px_loop *loop = new_loop();
  px_op ops[N];
  rec r[N];
  (void)state;
  memset(ops, 0, sizeof(ops));
  memset(r, 0, sizeof(r));
  for (int i = 0; i < N; i++)
    assert_int_equal(px_timeout(loop, &ops[i], 10, rec_cb, &r[i]), 0);
  RUN_UNTIL(loop, g_seq == N, 3000);
  for (int i = 0; i < N; i++) {
    assert_int_equal(r[i].calls, 1);
    assert_int_equal(r[i].result, 0);
    if (r[i].order != i)
      fail_msg("timeout %d of %d equal ones completed in position %d", i, N,
               r[i].order);
  }
  finish(loop);
}

void cancel_of_timeout_completes_it_with_ecanceled(void **state) {
  px_loop *loop = new_loop();
  px_op t = {0}, c = {0};
  rec tr = {0}, cr = {0};
  (void)state;
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_timeout(loop, &t, 60000, rec_cb, &tr), 0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(px_cancel(loop, &c, &t, rec_cb, &cr), 0);
  RUN_UNTIL(loop, tr.calls == 1 && cr.calls == 1, 2000);
  assert_int_equal(tr.result, PX_ECANCELED);
  assert_int_equal(cr.result, 0);
  assert_true(pt_now_ms() - t0 < 2000);
  settle(loop);
  assert_int_equal(tr.calls, 1);
  assert_int_equal(cr.calls, 1);
  finish(loop);
}

void cancel_of_op_not_in_flight_gives_enoent(void **state) {
  px_loop *loop = new_loop();
  px_op never = {0}, done = {0}, c1 = {0}, c2 = {0};
  rec nr = {0}, dr = {0}, cr1 = {0}, cr2 = {0};
  (void)state;
  /* An op that was never submitted. */
  assert_int_equal(px_cancel(loop, &c1, &never, rec_cb, &cr1), 0);
  RUN_UNTIL(loop, cr1.calls == 1, 2000);
  assert_int_equal(cr1.result, PX_ENOENT);
  /* An op that has already completed. */
  assert_int_equal(px_nop(loop, &done, rec_cb, &dr), 0);
  RUN_UNTIL(loop, dr.calls == 1, 2000);
  assert_int_equal(px_cancel(loop, &c2, &done, rec_cb, &cr2), 0);
  RUN_UNTIL(loop, cr2.calls == 1, 2000);
  assert_int_equal(cr2.result, PX_ENOENT);
  settle(loop);
  assert_int_equal(nr.calls, 0);
  assert_int_equal(dr.calls, 1);
  assert_int_equal(dr.result, 0);
  finish(loop);
}

void recv_deadline_fires_with_etimedout(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  char buf[16];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_op_deadline(&op, 50), 0);
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 3000);
  assert_int_equal(r.result, PX_ETIMEDOUT);
  if (r.at_ms - t0 < 50)
    fail_msg("a 50 ms deadline fired after %d ms", (int)(r.at_ms - t0));
  assert_true(r.at_ms - t0 < 50 + 1000);
  /* The socket is still usable and nothing was consumed. */
  assert_int_equal(sync_send(loop, sp[1], "xyz", 3), 3);
  assert_int_equal(sync_recv(loop, sp[0], buf, sizeof(buf)), 3);
  assert_memory_equal(buf, "xyz", 3);
  settle(loop);
  assert_int_equal(r.calls, 1);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void recv_deadline_does_not_fire_when_data_comes_first(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0}, t = {0};
  rec r = {0}, tr = {0};
  char buf[16];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_op_deadline(&op, 100), 0);
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), rec_cb, &r), 0);
  assert_int_equal(sync_send(loop, sp[1], "hello", 5), 5);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, 5);
  assert_memory_equal(buf, "hello", 5);
  /* Run past the deadline: it must not produce a second completion. */
  assert_int_equal(px_timeout(loop, &t, 150, rec_cb, &tr), 0);
  RUN_UNTIL(loop, tr.calls == 1, 2000);
  assert_int_equal(r.calls, 1);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void deadline_applies_to_one_submission_only(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0}, t = {0};
  rec r = {0}, tr = {0};
  char buf[16];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_op_deadline(&op, 20), 0);
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, PX_ETIMEDOUT);
  /* Resubmitted without a deadline: waits past the old one. */
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), rec_cb, &r), 0);
  assert_int_equal(px_timeout(loop, &t, 100, rec_cb, &tr), 0);
  RUN_UNTIL(loop, tr.calls == 1, 2000);
  assert_int_equal(r.calls, 1);
  assert_int_equal(sync_send(loop, sp[1], "ab", 2), 2);
  RUN_UNTIL(loop, r.calls == 2, 2000);
  assert_int_equal(r.result, 2);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void accept_deadline_fires_when_nobody_connects(void **state) {
  px_loop *loop = new_loop();
  int port;
  px_fd l = tcp_listener(loop, &port);
  px_op a = {0}, c = {0};
  rec ar = {0}, cr = {0};
  px_addr to;
  px_fd cfd;
  (void)state;
  assert_int_equal(px_op_deadline(&a, 50), 0);
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_accept(loop, &a, l, rec_cb, &ar), 0);
  RUN_UNTIL(loop, ar.calls == 1, 3000);
  assert_int_equal(ar.result, PX_ETIMEDOUT);
  assert_true(ar.at_ms - t0 >= 50);
  assert_true(ar.at_ms - t0 < 50 + 1000);
  /* The listener still accepts. */
  assert_int_equal(px_addr_set(&to, "127.0.0.1", port), 0);
  assert_int_equal(px_tcp_socket(loop, &to, &cfd), 0);
  assert_int_equal(px_accept(loop, &a, l, rec_cb, &ar), 0);
  assert_int_equal(px_connect(loop, &c, cfd, &to, rec_cb, &cr), 0);
  RUN_UNTIL(loop, ar.calls == 2 && cr.calls == 1, 5000);
  assert_int_equal(ar.result, 0);
  assert_int_equal(cr.result, 0);
  close_fd(loop, px_op_fd(&a));
  close_fd(loop, cfd);
  close_fd(loop, l);
  finish(loop);
}

void queued_recv_deadline_fires_behind_pending_recv(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op first = {0}, second = {0};
  rec r1 = {0}, r2 = {0};
  char b1[16], b2[16];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_recv(loop, &first, sp[0], b1, sizeof(b1), rec_cb, &r1),
                   0);
  assert_int_equal(px_op_deadline(&second, 50), 0);
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_recv(loop, &second, sp[0], b2, sizeof(b2), rec_cb, &r2),
                   0);
  RUN_UNTIL(loop, r2.calls == 1, 3000);
  assert_int_equal(r2.result, PX_ETIMEDOUT);
  assert_true(r2.at_ms - t0 >= 50);
  assert_true(r2.at_ms - t0 < 50 + 1000);
  assert_int_equal(r1.calls, 0);
  /* The first recv is still waiting and gets the data. */
  assert_int_equal(sync_send(loop, sp[1], "data", 4), 4);
  RUN_UNTIL(loop, r1.calls == 1, 2000);
  assert_int_equal(r1.result, 4);
  assert_memory_equal(b1, "data", 4);
  settle(loop);
  assert_int_equal(r2.calls, 1);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void zero_deadline_recv_times_out_and_the_socket_still_reads(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  char buf[16];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_op_deadline(&op, 0), 0);
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, PX_ETIMEDOUT);
  /* The read side of the handle is free again for the next recv. */
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), rec_cb, &r), 0);
  assert_int_equal(sync_send(loop, sp[1], "next", 4), 4);
  RUN_UNTIL(loop, r.calls == 2, 2000);
  assert_int_equal(r.result, 4);
  assert_memory_equal(buf, "next", 4);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

/* From a callback, with the submission queue full: a burst of nops, then
 * a recv with a zero deadline on a socket whose data is already there.  A
 * zero deadline means "only if it can complete at once", and the kernel is
 * asked once first, so the recv gets the data.  (On io_uring, with a queue
 * of 4, the recv waits on the backend's overflow list; the callback runs
 * from the reaping loop, and its deadline must not be judged in the same
 * iteration, before the recv ever reached the kernel.) */
enum { BURST = 8 };
typedef struct burst {
  px_fd fd;
  px_op nops[BURST], rop;
  rec nr, rr;
  char buf[16];
} burst;

static void burst_then_zero_deadline_recv_cb(px_loop *loop, px_op *op) {
  burst *b = op->data;
  for (int i = 0; i < BURST; i++)
    assert_int_equal(px_nop(loop, &b->nops[i], rec_cb, &b->nr), 0);
  assert_int_equal(px_op_deadline(&b->rop, 0), 0);
  assert_int_equal(
      px_recv(loop, &b->rop, b->fd, b->buf, sizeof(b->buf), rec_cb, &b->rr), 0);
}

void zero_deadline_recv_from_a_callback_behind_a_full_queue_gets_the_data(
    void **state) {
  px_loop *loop = new_loop_entries(4);
  px_fd sp[2];
  px_op first = {0};
  static burst b;
  (void)state;
  memset(&b, 0, sizeof(b));
  socketpair_new(loop, sp);
  b.fd = sp[0];
  assert_int_equal(pt_raw_send(sp[1], "data", 4), 4);
  assert_int_equal(px_nop(loop, &first, burst_then_zero_deadline_recv_cb, &b),
                   0);
  RUN_UNTIL(loop, b.rr.calls == 1 && b.nr.calls == BURST, 2000);
  assert_int_equal(b.rr.result, 4);
  assert_memory_equal(b.buf, "data", 4);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

/* A timer started at the end of a long callback, under px_run(DEFAULT):
 * the loop's wait for it counts from the clock, not from the time read
 * before the callback ran (which made it fire the callback's length
 * late). */
enum { LONG_CB_MS = 400, AFTER_MS = 50 };
typedef struct late {
  px_op t;
  rec r;
  uint64_t started_ms;
} late;

static void compute_then_start_timer_cb(px_loop *loop, px_op *op) {
  late *l = op->data;
  uint64_t until = pt_now_ms() + LONG_CB_MS;
  while (pt_now_ms() < until)
    ;
  l->started_ms = pt_now_ms();
  assert_int_equal(px_timeout(loop, &l->t, AFTER_MS, rec_cb, &l->r), 0);
}

void timer_started_at_the_end_of_a_long_callback_fires_on_time(void **state) {
  px_loop *loop = new_loop();
  px_op first = {0};
  late l = {0};
  (void)state;
  assert_int_equal(px_nop(loop, &first, compute_then_start_timer_cb, &l), 0);
  assert_int_equal(px_run(loop, PX_RUN_DEFAULT), 0); /* nothing left */
  assert_int_equal(l.r.calls, 1);
  uint64_t after = l.r.at_ms - l.started_ms;
  if (after < AFTER_MS || after >= AFTER_MS + LONG_CB_MS / 2)
    fail_msg("a %d ms timer started after a %d ms callback fired after %d ms",
             AFTER_MS, LONG_CB_MS, (int)after);
  finish(loop);
}

static uint64_t g_busy_until;

/* A callback that computes for a while (it does not wait for anything). */
static void long_computation_cb(px_loop *loop, px_op *op) {
  rec_cb(loop, op);
  while (pt_now_ms() < g_busy_until)
    ;
}

/*
 * The second recv's deadline passes while a callback computes; the first
 * recv's data is already there, so the next poll completes the first recv
 * and starts the second one past its deadline.  It must time out and leave
 * the handle's read side usable.
 */
void recv_queue_survives_deadline_passing_during_a_long_callback(void **state) {
  px_loop *loop = new_loop();
  px_loop *peer = new_loop();
  px_fd sp[2];
  px_op first = {0}, second = {0}, busy = {0}, cancel = {0}, third = {0};
  rec r1 = {0}, r2 = {0}, rb = {0}, rc = {0}, r3 = {0};
  char b1[16], b2[16], b3[16];
  (void)state;
  /* Each loop adopts only its own end. */
  assert_int_equal(pt_raw_socketpair(sp), 0);
  assert_int_equal(px_adopt(loop, sp[0]), 0);
  assert_int_equal(px_adopt(peer, sp[1]), 0);
  assert_int_equal(px_recv(loop, &first, sp[0], b1, sizeof(b1), rec_cb, &r1),
                   0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(px_op_deadline(&second, 50), 0);
  g_busy_until = pt_now_ms() + 100;
  assert_int_equal(px_recv(loop, &second, sp[0], b2, sizeof(b2), rec_cb, &r2),
                   0);
  /* Data for the first recv arrives while this loop does not run. */
  assert_int_equal(sync_send(peer, sp[1], "abc", 3), 3);
  /* A completion that is ready at the start of the next run. */
  assert_int_equal(px_timeout(loop, &busy, 60000, long_computation_cb, &rb), 0);
  assert_int_equal(px_cancel(loop, &cancel, &busy, rec_cb, &rc), 0);
  RUN_UNTIL(loop, r1.calls == 1 && r2.calls == 1 && rc.calls == 1, 3000);
  assert_int_equal(rb.result, PX_ECANCELED);
  assert_int_equal(r1.result, 3);
  assert_int_equal(r2.result, PX_ETIMEDOUT);
  assert_int_equal(px_recv(loop, &third, sp[0], b3, sizeof(b3), rec_cb, &r3),
                   0);
  assert_int_equal(sync_send(peer, sp[1], "xyz", 3), 3);
  RUN_UNTIL(loop, r3.calls == 1, 2000);
  assert_int_equal(r3.result, 3);
  assert_memory_equal(b3, "xyz", 3);
  close_fd(loop, sp[0]);
  close_fd(peer, sp[1]);
  finish(loop);
  finish(peer);
}

void send_deadline_fires_when_peer_does_not_read(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  static char chunk[65536];
  (void)state;
  socketpair_new(loop, sp);
  int filled = 0;
  if (!fill_send_buffer(loop, sp[0], &filled)) {
    close_fd(loop, sp[0]);
    close_fd(loop, sp[1]);
    finish(loop);
    printf("the socket buffers took 8 MiB (the filling send completed with "
           "%d): no send can be made to wait\n",
           filled);
    skip();
  }
  assert_int_equal(px_op_deadline(&op, 50), 0);
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_send(loop, &op, sp[0], chunk, sizeof(chunk), rec_cb, &r),
                   0);
  RUN_UNTIL(loop, r.calls == 1, 3000);
  assert_int_equal(r.result, PX_ETIMEDOUT);
  assert_true(r.at_ms - t0 >= 50);
  assert_true(r.at_ms - t0 < 50 + 1000);
  settle(loop);
  assert_int_equal(r.calls, 1);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

typedef struct late_send {
  px_fd fd;
  px_op op;
  rec r;
  int timer_calls; /* calls of the timer that sends */
  int refused;     /* that send was refused */
  uint8_t byte;
} late_send;

static void send_now_cb(px_loop *loop, px_op *op) {
  late_send *ls = op->data;
  ls->timer_calls++;
  if (px_send(loop, &ls->op, ls->fd, &ls->byte, 1, rec_cb, &ls->r) != 0)
    ls->refused++;
}

/*
 * A deadline that expires about when the data arrives (the data comes 0 to
 * 4 ms after a 2 ms deadline): the recv completes once, with the data or
 * PX_ETIMEDOUT, and a timed-out recv consumed nothing, so every byte sent
 * is received exactly once.  Which side wins is up to the machine: no
 * outcome is required to occur.
 */
void deadline_racing_with_data_loses_nothing(void **state) {
  enum { ROUNDS = 200 };
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op rop = {0}, top = {0};
  rec rr = {0};
  late_send ls = {0};
  uint8_t in[4];
  int timeouts = 0;
  (void)state;
  socketpair_new(loop, sp);
  ls.fd = sp[1];
  for (int i = 0; i < ROUNDS; i++) {
    int calls = rr.calls, sends = ls.r.calls;
    ls.byte = (uint8_t)i;
    in[0] = (uint8_t)~i;
    assert_int_equal(px_op_deadline(&rop, 2), 0);
    assert_int_equal(px_recv(loop, &rop, sp[0], in, sizeof(in), rec_cb, &rr),
                     0);
    assert_int_equal(
        px_timeout(loop, &top, (uint64_t)(i % 5), send_now_cb, &ls), 0);
    RUN_UNTIL(loop,
              ls.refused || (rr.calls == calls + 1 && ls.r.calls == sends + 1),
              2000);
    assert_int_equal(ls.refused, 0);
    assert_int_equal(rr.calls, calls + 1);
    assert_int_equal(ls.r.calls, sends + 1);
    assert_int_equal(ls.timer_calls, i + 1);
    assert_int_equal(ls.r.result, 1);
    if (rr.result == PX_ETIMEDOUT) {
      timeouts++;
      assert_int_equal(sync_recv(loop, sp[0], in, sizeof(in)), 1);
    } else if (rr.result != 1) {
      fail_msg("round %d: the recv completed with %d (%s)", i, rr.result,
               px_strerror(rr.result));
    }
    assert_int_equal(in[0], (uint8_t)i);
  }
  settle(loop);
  /* Every recv, timer and send completed exactly once over the rounds. */
  assert_int_equal(rr.calls, ROUNDS);
  assert_int_equal(ls.timer_calls, ROUNDS);
  assert_int_equal(ls.r.calls, ROUNDS);
  printf("%d of %d recvs timed out before their data\n", timeouts, ROUNDS);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}
