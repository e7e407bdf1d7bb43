/* Freeing a loop with ops in flight, and a small queue under load. */
#include "conf.h"

static px_op g_extra;
static rec g_extra_rec;
static int g_resubmit_rc;

/* Tries to submit from inside a callback run by px_loop_free. */
static void resubmit_cb(px_loop *loop, px_op *op) {
  rec_cb(loop, op);
  px_op_init(&g_extra);
  g_resubmit_rc = px_nop(loop, &g_extra, rec_cb, &g_extra_rec);
}

static void free_with_ops_in_flight(int run_first) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  int port;
  px_fd l = tcp_listener(loop, &port);
  px_op rop = {0}, rop2 = {0}, top = {0}, aop = {0}, nop = {0};
  rec rr = {0}, rr2 = {0}, tr = {0}, ar = {0}, nr = {0};
  char buf[16], buf2[16];
  socketpair_new(loop, sp);
  memset(&g_extra_rec, 0, sizeof(g_extra_rec));
  g_resubmit_rc = 1;
  assert_int_equal(px_recv(loop, &rop, sp[0], buf, sizeof(buf), rec_cb, &rr),
                   0);
  /* Queued behind the first recv, in px's own stream queue. */
  assert_int_equal(
      px_recv(loop, &rop2, sp[0], buf2, sizeof(buf2), rec_cb, &rr2), 0);
  assert_int_equal(px_timeout(loop, &top, 60000, resubmit_cb, &tr), 0);
  assert_int_equal(px_accept(loop, &aop, l, rec_cb, &ar), 0);
  if (run_first)
    assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  else
    assert_int_equal(px_nop(loop, &nop, rec_cb, &nr), 0);
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_loop_free(loop), 0);
  assert_true(pt_now_ms() - t0 < 2000);
  assert_int_equal(rr.calls, 1);
  assert_int_equal(rr.result, PX_ECANCELED);
  assert_int_equal(rr2.calls, 1);
  assert_int_equal(rr2.result, PX_ECANCELED);
  assert_int_equal(tr.calls, 1);
  assert_int_equal(tr.result, PX_ECANCELED);
  assert_int_equal(ar.calls, 1);
  assert_int_equal(ar.result, PX_ECANCELED);
  if (!run_first) {
    /* A nop may have finished already: its real result is fine too. */
    assert_int_equal(nr.calls, 1);
    assert_true(nr.result == 0 || nr.result == PX_ECANCELED);
  }
  assert_int_equal(g_resubmit_rc, PX_ESHUTDOWN);
  assert_int_equal(g_extra_rec.calls, 0);
  /* The loop does not close handles: they are the program's. */
  close_fd(NULL, sp[0]);
  close_fd(NULL, sp[1]);
  close_fd(NULL, l);
}

void loop_free_cancels_ops_in_the_kernel(void **state) {
  (void)state;
  free_with_ops_in_flight(1);
}

void loop_free_cancels_ops_never_run(void **state) {
  (void)state;
  free_with_ops_in_flight(0);
}

void loop_free_delivers_pending_post_with_ecanceled(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  rec r = {0};
  (void)state;
  assert_int_equal(px_post(loop, &op, rec_cb, &r), 0);
  assert_int_equal(px_loop_free(loop), 0);
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.result, PX_ECANCELED);
}

/* ---- Thousands of ops in flight on a loop with an 8-entry queue. ------- */

enum { MANY = 2048, REC = 8 };

typedef struct many {
  px_op op;
  rec r;
  uint8_t buf[REC];
} many;

static void write_records(const char *path) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  for (uint32_t i = 0; i < MANY; i++) {
    uint8_t b[REC];
    for (int k = 0; k < REC; k++)
      b[k] = (uint8_t)((i >> (8 * (k % 4))) ^ (uint32_t)k);
    assert_int_equal(fwrite(b, 1, REC, f), REC);
  }
  assert_int_equal(fclose(f), 0);
}

void thousands_of_ops_in_flight_on_small_queue_complete_once(void **state) {
  px_loop *loop = new_loop_entries(8);
  char path[512];
  px_fd fd;
  many *t = calloc(MANY, sizeof(many)); /* timeouts */
  many *n = calloc(MANY, sizeof(many)); /* nops */
  many *r = calloc(MANY, sizeof(many)); /* file reads */
  (void)state;
  assert_non_null(t);
  assert_non_null(n);
  assert_non_null(r);
  assert_int_equal(pt_temp_path(path, sizeof(path), "records"), 0);
  write_records(path);
  assert_int_equal(px_file_open(loop, path, PX_O_RDONLY, 0, &fd), 0);
  for (int i = 0; i < MANY; i++) {
    assert_int_equal(px_timeout(loop, &t[i].op, 20, rec_cb, &t[i].r), 0);
    assert_int_equal(px_nop(loop, &n[i].op, rec_cb, &n[i].r), 0);
    int64_t off = (int64_t)(MANY - 1 - i) * REC;
    assert_int_equal(
        px_read(loop, &r[i].op, fd, r[i].buf, REC, off, rec_cb, &r[i].r), 0);
  }
  RUN_UNTIL(loop, g_seq == 3 * MANY, 20000);
  settle(loop);
  for (int i = 0; i < MANY; i++) {
    uint32_t rec_no = (uint32_t)(MANY - 1 - i);
    assert_int_equal(t[i].r.calls, 1);
    assert_int_equal(t[i].r.result, 0);
    assert_int_equal(n[i].r.calls, 1);
    assert_int_equal(n[i].r.result, 0);
    assert_int_equal(r[i].r.calls, 1);
    assert_int_equal(r[i].r.result, REC);
    for (int k = 0; k < REC; k++)
      if (r[i].buf[k] != (uint8_t)((rec_no >> (8 * (k % 4))) ^ (uint32_t)k))
        fail_msg("read %d (record %u) has the wrong bytes", i,
                 (unsigned)rec_no);
  }
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  free(t);
  free(n);
  free(r);
  finish(loop);
}

/* DESIGN invariant 6 covers every write to a closed peer, pipes included.
 * SIGPIPE is counted rather than fatal here, so a failure is reported like
 * any other instead of ending the suite. */
void pipe_write_to_closed_reader_gives_epipe(void **state) {
  px_loop *loop = new_loop();
  px_fd p[2];
  (void)state;
  assert_int_equal(px_pipe(loop, p), 0);
  close_fd(loop, p[0]);
  pt_sigpipe_count_start();
  int rc = sync_write(loop, p[1], "lost", 4, PX_CUR);
  /* px_run has returned: px let go of SIGPIPE and left none pending.  One
   * left pending is delivered (and counted) when counting stops. */
  int blocked = pt_sigpipe_blocked(), pending = pt_sigpipe_pending();
  int signals = pt_sigpipe_count_stop();
  if (blocked || pending)
    fail_msg("after px_run returned, SIGPIPE was %s%s%s (result %d, %s)",
             blocked ? "blocked" : "", blocked && pending ? " and " : "",
             pending ? "pending" : "", rc, px_strerror(rc));
  if (signals != 0)
    fail_msg("px_write to a pipe with no reader raised SIGPIPE %d time(s) "
             "(result %d, %s)",
             signals, rc, px_strerror(rc));
  assert_int_equal(rc, PX_EPIPE);
  close_fd(loop, p[1]);
  finish(loop);
}
