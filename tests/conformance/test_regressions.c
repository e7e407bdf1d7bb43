/* Behaviours a review of the library found broken once; each test names
 * the behaviour, not the bug. */
#include "conf.h"

void wait_with_zero_timeout_still_reaps_completions(void **state) {
  px_loop *loop = new_loop();
  px_op nop = {0};
  px_op *out[4];
  int n = 0;
  (void)state;
  assert_int_equal(px_nop(loop, &nop, NULL, NULL), 0);
  /* A GetQueuedCompletionStatusEx-style poller never waits: each call must
   * still hand the kernel what is queued and collect what completed. */
  for (int i = 0; i < 1000 && n == 0; i++)
    n = px_wait(loop, out, 4, 0);
  assert_int_equal(n, 1);
  assert_ptr_equal(out[0], &nop);
  assert_int_equal(nop.result, 0);
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
  int signals = pt_sigpipe_count_stop();
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

void zero_deadline_recv_with_data_waiting_succeeds(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  char buf[8];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(sync_send(loop, sp[1], "hello", 5), 5);
  /* "Only if it can complete at once": the data is already there. */
  assert_int_equal(px_op_deadline(&op, 0), 0);
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof buf, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, 5);
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
  RUN_UNTIL(loop, r[N - 1].calls == 1, 5000);
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
  assert_int_equal(px_fd_close(NULL, sp[0][1]), 0);
  for (int i = 1; i < N; i++)
    assert_int_equal(px_fd_close(NULL, sp[i][0]), 0);
  /* Nothing in flight: the thread that made the loop may free it. */
  finish(loop);
}
