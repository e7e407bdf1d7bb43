/* Behaviours a review of the library found broken once; each test names
 * the behaviour, not the bug. */
#include "conf.h"

void wait_with_zero_timeout_still_reaps_completions(void **state) {
  px_loop *loop = new_loop();
  px_op nop = {0};
  px_op *out[4];
  (void)state;
  assert_int_equal(px_nop(loop, &nop, NULL, NULL), 0);
  /* A GetQueuedCompletionStatusEx-style poller never waits: one call must
   * hand the kernel what is queued and collect what completed, and a nop
   * is complete after one round trip. */
  uint64_t t0 = pt_now_ms();
  int n = px_wait(loop, out, 4, 0);
  uint64_t took = pt_now_ms() - t0;
  assert_int_equal(n, 1);
  assert_ptr_equal(out[0], &nop);
  assert_int_equal(nop.result, 0);
  if (took >= 100)
    fail_msg("px_wait(0) took %d ms", (int)took);
  finish(loop);
}

void positional_write_to_closed_pipe_gives_epipe_without_sigpipe(void **state) {
  px_loop *loop = new_loop();
  px_fd p[2];
  (void)state;
  assert_int_equal(px_pipe(loop, p), 0);
  close_fd(loop, p[0]);
  pt_sigpipe_count_start();
  /* The kernel ignores the offset of a pipe: this is a stream write. */
  int rc = sync_write(loop, p[1], "lost", 4, 0);
  /* px_run has returned: px let go of SIGPIPE and left none pending.  One
   * left pending is delivered (and counted) when counting stops. */
  int blocked = pt_sigpipe_blocked(), pending = pt_sigpipe_pending();
  int signals = pt_sigpipe_count_stop();
  assert_int_equal(blocked, 0);
  assert_int_equal(pending, 0);
  assert_int_equal(signals, 0);
  assert_int_equal(rc, PX_EPIPE);
  close_fd(loop, p[1]);
  finish(loop);
}

static void repost_cb(px_loop *loop, px_op *op) {
  rec *r = op->data;
  r->calls++;
  r->result = op->result;
  /* During px_loop_free a repost must be refused, or the free never ends. */
  r->order = px_post(loop, op, repost_cb, r);
}

void post_from_callback_during_free_is_refused_with_eshutdown(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  rec r = {0};
  (void)state;
  assert_int_equal(px_post(loop, &op, repost_cb, &r), 0);
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_loop_free(loop), 0);
  assert_true(pt_now_ms() - t0 < 1000);
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.result, PX_ECANCELED);
  assert_int_equal(r.order, PX_ESHUTDOWN);
}

typedef struct other_post {
  px_op *other;
  px_op before;
  int rc, same;
} other_post;

static void post_other_cb(px_loop *loop, px_op *op) {
  other_post *o = op->data;
  o->rc = px_post(loop, o->other, rec_cb, NULL);
  o->same = memcmp(o->other, &o->before, sizeof(px_op)) == 0;
}

/* A refused post leaves the op as it was: here one that completed a nop
 * before, posted from a callback that px_loop_free runs. */
void refused_post_leaves_the_op_as_it_was(void **state) {
  px_loop *loop = new_loop();
  px_op trigger = {0}, other = {0};
  rec nr = {0};
  other_post o = {&other, {0}, 0, 0};
  (void)state;
  assert_int_equal(px_nop(loop, &other, rec_cb, &nr), 0);
  RUN_UNTIL(loop, nr.calls == 1, 2000);
  memcpy(&o.before, &other, sizeof(other));
  assert_int_equal(px_post(loop, &trigger, post_other_cb, &o), 0);
  assert_int_equal(px_loop_free(loop), 0);
  assert_int_equal(o.rc, PX_ESHUTDOWN);
  assert_true(o.same);
}

void deadline_of_centuries_neither_overflows_nor_fires(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0}, snd = {0};
  rec r = {0}, s = {0};
  char buf[8];
  (void)state;
  socketpair_new(loop, sp);
  /* The largest deadline px_op_deadline takes: about 292 years. */
  assert_int_equal(px_op_deadline(&op, INT64_MAX / 1000000), 0);
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof buf, rec_cb, &r), 0);
  assert_int_equal(px_timeout(loop, &snd, 30, rec_cb, &s), 0);
  RUN_UNTIL(loop, s.calls == 1, 2000);
  assert_int_equal(r.calls, 0); /* still waiting for data */
  assert_int_equal(px_send(loop, &snd, sp[1], "x", 1, rec_cb, &s), 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, 1);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void refused_submit_keeps_the_deadline_for_the_next_one(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  char buf[8];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_op_deadline(&op, 50), 0);
  /* Deadlines belong to ops on a handle: these are refused... */
  assert_int_equal(px_timeout(loop, &op, 10, rec_cb, &r), PX_EINVAL);
  assert_int_equal(px_nop(loop, &op, rec_cb, &r), PX_EINVAL);
  /* ...and the deadline still applies to the recv that follows. */
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof buf, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, PX_ETIMEDOUT);
  assert_true(r.at_ms - t0 >= 45);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

/*
 * "Times out unless it completes at once": data that is already there
 * completes it, on every backend, because a deadline fires only after px
 * asked the kernel once.  The one-byte recv first shows the data has
 * arrived (a completed send need not mean the peer can read yet), and one
 * small send arrives whole.
 */
void zero_deadline_recv_with_data_waiting_succeeds(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  char buf[8];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(sync_send(loop, sp[1], "!hello", 6), 6);
  assert_int_equal(sync_recv(loop, sp[0], buf, 1), 1);
  assert_int_equal(buf[0], '!');
  assert_int_equal(px_op_deadline(&op, 0), 0);
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof buf, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, 5);
  assert_memory_equal(buf, "hello", 5);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

static px_op slow_send;
static rec slow_send_rec;

static void slow_nop_cb(px_loop *loop, px_op *op) {
  px_fd *sp = op->data;
  pt_sleep_ms(60); /* the queued recvs' deadlines pass meanwhile */
  memset(&slow_send_rec, 0, sizeof(slow_send_rec));
  assert_int_equal(
      px_send(loop, &slow_send, sp[1], "x", 1, rec_cb, &slow_send_rec), 0);
}

void many_queued_recvs_expiring_at_once_complete_each_once(void **state) {
  enum { N = 100000 };
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op first = {0}, nop = {0};
  rec rf = {0};
  char b[1];
  px_op *ops = calloc(N, sizeof(px_op));
  rec *r = calloc(N, sizeof(rec));
  (void)state;
  assert_non_null(ops);
  assert_non_null(r);
  socketpair_new(loop, sp);
  assert_int_equal(px_recv(loop, &first, sp[0], b, 1, rec_cb, &rf), 0);
  for (int i = 0; i < N; i++) {
    assert_int_equal(px_op_deadline(&ops[i], 30), 0);
    assert_int_equal(px_recv(loop, &ops[i], sp[0], b, 1, rec_cb, &r[i]), 0);
  }
  assert_int_equal(px_nop(loop, &nop, slow_nop_cb, sp), 0);
  RUN_UNTIL(loop, rf.calls == 1 && slow_send_rec.calls == 1, 5000);
  /* Every queued recv, the first one and the send: N + 2 completions. */
  RUN_UNTIL(loop, g_seq >= N + 2, 5000);
  assert_int_equal(rf.result, 1);
  for (int i = 0; i < N; i++) {
    assert_int_equal(r[i].calls, 1);
    assert_int_equal(r[i].result, PX_ETIMEDOUT);
  }
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
  free(ops);
  free(r);
}

typedef struct owner_probe {
  px_loop *loop;
  int run_rc, wait_rc, free_rc;
} owner_probe;

static void probe_main(void *arg) {
  owner_probe *p = arg;
  px_op *out[1];
  p->run_rc = px_run(p->loop, PX_RUN_NOWAIT);
  p->wait_rc = px_wait(p->loop, out, 1, 0);
  p->free_rc = px_loop_free(p->loop);
}

void loop_refuses_run_wait_and_free_from_another_thread(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  char b[1];
  pt_thread *th;
  owner_probe p = {.loop = loop};
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_recv(loop, &op, sp[0], b, 1, rec_cb, &r), 0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1); /* this thread owns it */
  assert_int_equal(pt_thread_start(&th, probe_main, &p), 0);
  pt_thread_join(th);
  assert_int_equal(p.run_rc, PX_EBUSY);
  assert_int_equal(p.wait_rc, PX_EBUSY);
  assert_int_equal(p.free_rc, PX_EBUSY); /* a recv is still in flight */
  assert_int_equal(r.calls, 0);
  close_fd(loop, sp[1]);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, 0);
  close_fd(loop, sp[0]);
  finish(loop);
}

typedef struct runner {
  px_loop *loop;
  int *done;
  int rc;
} runner;

static void runner_main(void *arg) {
  runner *w = arg;
  uint64_t end = pt_now_ms() + 5000;
  w->rc = 0;
  while (*w->done < 17 && pt_now_ms() < end && w->rc >= 0)
    w->rc = px_run(w->loop, PX_RUN_ONCE);
}

static void count_cb(px_loop *loop, px_op *op) {
  (void)loop;
  (*(int *)op->data)++;
}

void loop_filled_and_closed_on_one_thread_runs_on_another(void **state) {
  enum { N = 16 };
  px_loop *loop = new_loop_entries(8);
  px_fd sp[N][2];
  px_op recv[N], close_op = {0};
  char b[N];
  int done = 0;
  pt_thread *th;
  runner w = {.loop = loop, .done = &done};
  (void)state;
  memset(recv, 0, sizeof(recv));
  /* More recvs than the queue holds, then a close, before any run: the
   * close's cancellation must not tie the loop to this thread. */
  for (int i = 0; i < N; i++) {
    socketpair_new(loop, sp[i]);
    assert_int_equal(
        px_recv(loop, &recv[i], sp[i][0], &b[i], 1, count_cb, &done), 0);
  }
  assert_int_equal(px_close(loop, &close_op, sp[0][0], count_cb, &done), 0);
  for (int i = 1; i < N; i++)
    assert_int_equal(px_fd_close(loop, sp[i][1]), 0); /* EOF for the rest */
  assert_int_equal(pt_thread_start(&th, runner_main, &w), 0);
  pt_thread_join(th);
  assert_true(w.rc >= 0);
  assert_int_equal(done, N + 1);
  assert_int_equal(recv[0].result, PX_ECANCELED);
  for (int i = 1; i < N; i++)
    assert_int_equal(recv[i].result, 0);
  /* The loop still knows these handles: it closes them. */
  assert_int_equal(px_fd_close(loop, sp[0][1]), 0);
  for (int i = 1; i < N; i++)
    assert_int_equal(px_fd_close(loop, sp[i][0]), 0);
  /* Nothing in flight: the thread that made the loop may free it. */
  finish(loop);
}

/* ---- A loop run by a worker thread. ------------------------------------- */

typedef struct worker {
  px_loop *loop;
  int target;  /* run until g_seq reaches this */
  int rc;      /* the last px_run result */
  int settled; /* calls of the settle timer (g_seq does not count it) */
} worker;

static void settled_cb(px_loop *loop, px_op *op) {
  (void)loop;
  (*(int *)op->data)++;
}

/* Runs w->loop on this thread until g_seq reaches w->target (5 s at most),
 * then 20 ms more, so that a duplicate completion has the chance to show
 * up.  The watchdog's wakeups bound each px_run past the deadline. */
static void worker_main(void *arg) {
  worker *w = arg;
  px_op t = {0};
  uint64_t end = pt_now_ms() + 5000;
  pt_wake_at(w->loop, end);
  w->rc = 0;
  while (g_seq < w->target && pt_now_ms() < end && w->rc >= 0)
    w->rc = px_run(w->loop, PX_RUN_ONCE);
  if (g_seq == w->target && w->rc >= 0 &&
      px_timeout(w->loop, &t, 20, settled_cb, &w->settled) == 0) {
    while (w->settled == 0 && w->rc >= 0)
      w->rc = px_run(w->loop, PX_RUN_ONCE);
  }
  pt_wake_cancel();
}

void closes_of_seventeen_handles_before_the_first_run_cancel_each_once(
    void **state) {
  enum { N = 31, CLOSED = 17 };
  px_loop *loop = new_loop_entries(32);
  px_fd sp[N][2];
  px_op recv[N], close_op[CLOSED];
  rec rr[N], cr[CLOSED];
  char b[N];
  pt_thread *th;
  worker w = {.loop = loop, .target = N + CLOSED};
  (void)state;
  memset(recv, 0, sizeof(recv));
  memset(close_op, 0, sizeof(close_op));
  memset(rr, 0, sizeof(rr));
  memset(cr, 0, sizeof(cr));
  for (int i = 0; i < N; i++) {
    socketpair_new(loop, sp[i]);
    assert_int_equal(
        px_recv(loop, &recv[i], sp[i][0], &b[i], 1, rec_cb, &rr[i]), 0);
  }
  /* More closes than px once kept room for before the first run... */
  for (int i = 0; i < CLOSED; i++)
    assert_int_equal(px_close(loop, &close_op[i], sp[i][0], rec_cb, &cr[i]), 0);
  /* ...and end of stream for the other recvs. */
  for (int i = CLOSED; i < N; i++)
    assert_int_equal(px_fd_close(loop, sp[i][1]), 0);
  assert_int_equal(pt_thread_start(&th, worker_main, &w), 0);
  pt_thread_join(th);
  if (w.rc < 0)
    fail_msg("px_run on the worker failed: %s", px_strerror(w.rc));
  if (g_seq != N + CLOSED)
    fail_msg("%d callbacks ran, expected %d", g_seq, N + CLOSED);
  assert_int_equal(w.settled, 1);
  for (int i = 0; i < N; i++) {
    assert_int_equal(rr[i].calls, 1);
    assert_int_equal(rr[i].result, i < CLOSED ? PX_ECANCELED : 0);
  }
  for (int i = 0; i < CLOSED; i++) {
    assert_int_equal(cr[i].calls, 1);
    assert_int_equal(cr[i].result, 0);
    if (rr[i].order > cr[i].order)
      fail_msg("recv %d completed after the close that cancelled it", i);
  }
  for (int i = 0; i < CLOSED; i++)
    assert_int_equal(px_fd_close(loop, sp[i][1]), 0);
  for (int i = CLOSED; i < N; i++)
    assert_int_equal(px_fd_close(loop, sp[i][0]), 0);
  finish(loop);
}

/* ---- Who may free a loop. ------------------------------------------------ */

typedef struct owned {
  px_loop *loop;
  px_fd sp[2];
  px_op recv, send;
  rec rr, sr;
  char b[1];
  int first_rc;      /* the owner's first px_run */
  int other_run_rc;  /* px_run from the other thread */
  int other_free_rc; /* px_loop_free from the other thread */
  int recv_calls_then;
  int owner_free_rc;
  int thread_failed;
} owned;

static void other_thread_main(void *arg) {
  owned *o = arg;
  o->other_run_rc = px_run(o->loop, PX_RUN_NOWAIT);
  o->other_free_rc = px_loop_free(o->loop);
  o->recv_calls_then = o->rr.calls;
}

/* The owner lets a second thread try to free its loop while a recv is in
 * flight, then finishes the recv and frees the loop itself. */
static void busy_owner_main(void *arg) {
  owned *o = arg;
  pt_thread *other;
  uint64_t end = pt_now_ms() + 5000;
  int rc = 0;
  o->first_rc = px_run(o->loop, PX_RUN_NOWAIT);
  if (pt_thread_start(&other, other_thread_main, o) != 0) {
    o->thread_failed = 1;
  } else {
    pt_thread_join(other);
  }
  if (px_send(o->loop, &o->send, o->sp[1], "x", 1, rec_cb, &o->sr) != 0)
    return;
  pt_wake_at(o->loop, end);
  while ((o->rr.calls == 0 || o->sr.calls == 0) && pt_now_ms() < end && rc >= 0)
    rc = px_run(o->loop, PX_RUN_ONCE);
  pt_wake_cancel();
  if (o->rr.calls == 0 || o->sr.calls == 0)
    return; /* the main thread reports it; the loop cannot be freed */
  px_fd_close(o->loop, o->sp[0]);
  px_fd_close(o->loop, o->sp[1]);
  o->owner_free_rc = px_loop_free(o->loop);
}

void loop_free_from_another_thread_while_the_owner_lives_is_refused(
    void **state) {
  owned o = {0};
  pt_thread *owner;
  (void)state;
  o.loop = new_loop();
  o.owner_free_rc = 1;
  socketpair_new(o.loop, o.sp);
  assert_int_equal(px_recv(o.loop, &o.recv, o.sp[0], o.b, 1, rec_cb, &o.rr), 0);
  assert_int_equal(pt_thread_start(&owner, busy_owner_main, &o), 0);
  pt_thread_join(owner);
  assert_int_equal(o.thread_failed, 0);
  assert_int_equal(o.first_rc, 1); /* the recv waits: the owner has it */
  assert_int_equal(o.other_run_rc, PX_EBUSY);
  assert_int_equal(o.other_free_rc, PX_EBUSY);
  assert_int_equal(o.recv_calls_then, 0);
  assert_int_equal(o.rr.calls, 1);
  assert_int_equal(o.rr.result, 1);
  assert_int_equal(o.sr.calls, 1);
  assert_int_equal(o.sr.result, 1);
  assert_int_equal(o.owner_free_rc, 0);
}

/* The owner runs a recv and a send to completion and exits. */
static void idle_owner_main(void *arg) {
  owned *o = arg;
  uint64_t end = pt_now_ms() + 5000;
  int rc = 0;
  if (px_recv(o->loop, &o->recv, o->sp[0], o->b, 1, rec_cb, &o->rr) != 0 ||
      px_send(o->loop, &o->send, o->sp[1], "x", 1, rec_cb, &o->sr) != 0)
    return;
  pt_wake_at(o->loop, end);
  while ((o->rr.calls == 0 || o->sr.calls == 0) && pt_now_ms() < end && rc >= 0)
    rc = px_run(o->loop, PX_RUN_ONCE);
  pt_wake_cancel();
  o->first_rc = rc;
}

void loop_free_from_a_new_thread_after_the_owner_exited_idle_succeeds(
    void **state) {
  owned o = {0};
  pt_thread *owner, *other;
  (void)state;
  o.loop = new_loop();
  o.first_rc = 1;
  socketpair_new(o.loop, o.sp);
  assert_int_equal(pt_thread_start(&owner, idle_owner_main, &o), 0);
  pt_thread_join(owner);
  assert_int_equal(o.rr.calls, 1);
  assert_int_equal(o.rr.result, 1);
  assert_int_equal(o.sr.calls, 1);
  assert_int_equal(o.sr.result, 1);
  assert_int_equal(o.first_rc, 0); /* nothing left in flight */
  assert_int_equal(px_fd_close(o.loop, o.sp[0]), 0);
  assert_int_equal(px_fd_close(o.loop, o.sp[1]), 0);
  /* A thread started now (it may well get the owner's thread slot back)
   * still may not run the loop, but may free it: nothing is in flight. */
  assert_int_equal(pt_thread_start(&other, other_thread_main, &o), 0);
  pt_thread_join(other);
  assert_int_equal(o.other_run_rc, PX_EBUSY);
  assert_int_equal(o.other_free_rc, 0);
}

/* ---- Signal masks. ------------------------------------------------------- */

typedef struct masked {
  px_loop *loop;
  px_fd p[2];
  px_op w, r;
  rec wr, rr;
  char buf[4];
  pt_sigmask before, after;
  int pipe_blocked_after;
} masked;

/* A thread that wants no signals writes to a pipe and reads it back. */
static void all_blocked_main(void *arg) {
  masked *m = arg;
  uint64_t end = pt_now_ms() + 5000;
  int rc = 0;
  pt_block_all_signals();
  pt_sigmask_save(&m->before);
  if (px_write(m->loop, &m->w, m->p[1], "abc", 3, PX_CUR, rec_cb, &m->wr) !=
          0 ||
      px_read(m->loop, &m->r, m->p[0], m->buf, 3, PX_CUR, rec_cb, &m->rr) != 0)
    return;
  pt_wake_at(m->loop, end);
  while ((m->wr.calls == 0 || m->rr.calls == 0) && pt_now_ms() < end && rc >= 0)
    rc = px_run(m->loop, PX_RUN_ONCE);
  pt_wake_cancel();
  pt_sigmask_save(&m->after);
}

void pipe_write_on_a_worker_blocking_all_signals_leaves_masks_alone(
    void **state) {
  masked m = {0};
  pt_thread *th;
  pt_sigmask main_before, main_after;
  (void)state;
  pt_sigmask_save(&main_before);
  m.loop = new_loop();
  assert_int_equal(px_pipe(m.loop, m.p), 0);
  assert_int_equal(pt_thread_start(&th, all_blocked_main, &m), 0);
  pt_thread_join(th);
  assert_int_equal(m.wr.calls, 1);
  assert_int_equal(m.wr.result, 3);
  assert_int_equal(m.rr.calls, 1);
  assert_int_equal(m.rr.result, 3);
  assert_memory_equal(m.buf, "abc", 3);
  /* px did not unblock what the worker had blocked itself... */
  if (!pt_sigmask_equal(&m.before, &m.after))
    fail_msg("the worker's signal mask changed across px_run");
  /* ...and freeing the loop here touches nothing of this thread's. */
  assert_int_equal(px_fd_close(m.loop, m.p[0]), 0);
  assert_int_equal(px_fd_close(m.loop, m.p[1]), 0);
  finish(m.loop);
  pt_sigmask_save(&main_after);
  if (!pt_sigmask_equal(&main_before, &main_after))
    fail_msg("the main thread's signal mask changed");
}

void pipe_writes_of_two_loops_on_one_thread_raise_no_sigpipe(void **state) {
  px_loop *a = new_loop();
  px_loop *b = new_loop();
  px_fd pa[2], pb[2];
  px_op wa = {0}, wb = {0};
  rec ra = {0}, rb = {0};
  char buf[8];
  (void)state;
  assert_int_equal(px_pipe(a, pa), 0);
  assert_int_equal(px_pipe(b, pb), 0);
  pt_sigpipe_count_start();
  /* B's reader is gone before its write; A runs while that write waits
   * for B's loop (a backend may try it at once, but reports it only when
   * B runs). */
  close_fd(b, pb[0]);
  assert_int_equal(px_write(a, &wa, pa[1], "to a", 4, PX_CUR, rec_cb, &ra), 0);
  assert_int_equal(px_write(b, &wb, pb[1], "to b", 4, PX_CUR, rec_cb, &rb), 0);
  RUN_UNTIL(a, ra.calls == 1, 2000);
  int a_blocked = pt_sigpipe_blocked();
  assert_int_equal(rb.calls, 0);
  RUN_UNTIL(b, rb.calls == 1, 2000);
  int b_blocked = pt_sigpipe_blocked(), b_pending = pt_sigpipe_pending();
  int signals = pt_sigpipe_count_stop();
  assert_int_equal(a_blocked, 0);
  assert_int_equal(b_blocked, 0);
  assert_int_equal(b_pending, 0);
  assert_int_equal(signals, 0);
  assert_int_equal(ra.result, 4);
  assert_int_equal(rb.result, PX_EPIPE);
  assert_int_equal(sync_read(a, pa[0], buf, sizeof(buf), PX_CUR), 4);
  assert_memory_equal(buf, "to a", 4);
  close_fd(a, pa[0]);
  close_fd(a, pa[1]);
  close_fd(b, pb[1]);
  finish(a);
  finish(b);
}

static void block_sigusr1_cb(px_loop *loop, px_op *op) {
  pt_sigusr1_block();
  rec_cb(loop, op);
}

void signal_blocked_by_a_callback_stays_blocked(void **state) {
  px_loop *loop;
  px_fd p[2];
  px_op w = {0}, n = {0}, r = {0};
  rec wr = {0}, nr = {0}, rr = {0};
  char buf[8];
  pt_sigmask before, after;
  (void)state;
  if (pt_sigusr1_blocked() < 0) {
    printf("no SIGUSR1 here: nothing for a callback to block\n");
    skip();
  }
  assert_int_equal(pt_sigusr1_blocked(), 0);
  pt_sigmask_save(&before);
  loop = new_loop();
  assert_int_equal(px_pipe(loop, p), 0);
  /* The pipe write makes px guard SIGPIPE around the iteration in which
   * the callback blocks SIGUSR1. */
  assert_int_equal(px_write(loop, &w, p[1], "ab", 2, PX_CUR, rec_cb, &wr), 0);
  assert_int_equal(px_nop(loop, &n, block_sigusr1_cb, &nr), 0);
  RUN_UNTIL(loop, wr.calls == 1 && nr.calls == 1, 2000);
  int first = pt_sigusr1_blocked();
  /* The next iteration guards SIGPIPE again. */
  assert_int_equal(px_write(loop, &w, p[1], "cd", 2, PX_CUR, rec_cb, &wr), 0);
  assert_int_equal(px_read(loop, &r, p[0], buf, 4, PX_CUR, rec_cb, &rr), 0);
  RUN_UNTIL(loop, wr.calls == 2 && rr.calls == 1, 2000);
  int second = pt_sigusr1_blocked();
  int pipe_blocked = pt_sigpipe_blocked();
  pt_sigusr1_unblock();
  pt_sigmask_save(&after);
  assert_int_equal(first, 1);
  assert_int_equal(second, 1);
  assert_int_equal(pipe_blocked, 0);
  assert_true(pt_sigmask_equal(&before, &after));
  assert_int_equal(wr.result, 2);
  assert_true(rr.result >= 2);
  close_fd(loop, p[0]);
  close_fd(loop, p[1]);
  finish(loop);
}
