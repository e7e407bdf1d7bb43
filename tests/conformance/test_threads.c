/* px_wait, px_post from other threads, px_loop_wakeup. */
#include "conf.h"

#include <stdatomic.h>

void wait_hands_back_completed_ops_without_callbacks(void **state) {
  enum { N = 32 };
  px_loop *loop = new_loop();
  px_op ops[N];
  rec r[N];
  int seen[N] = {0};
  px_op *out[64];
  int got = 0;
  px_stats s;
  (void)state;
  memset(ops, 0, sizeof(ops));
  memset(r, 0, sizeof(r));
  /* Half with a callback (which px_wait must not run), half without. */
  for (int i = 0; i < N; i++)
    assert_int_equal(px_nop(loop, &ops[i], i % 2 ? rec_cb : NULL, &r[i]), 0);
  uint64_t deadline = pt_now_ms() + 5000;
  while (got < N && pt_now_ms() < deadline) {
    int n = px_wait(loop, out, 64, 1000);
    assert_true(n >= 0 && n <= 64);
    for (int k = 0; k < n; k++) {
      assert_true(out[k] >= ops && out[k] < ops + N);
      seen[out[k] - ops]++;
    }
    got += n;
  }
  assert_int_equal(got, N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(seen[i], 1);
    assert_int_equal(ops[i].result, 0);
    assert_ptr_equal(ops[i].data, &r[i]);
    assert_int_equal(r[i].calls, 0);
  }
  assert_int_equal(px_wait(loop, out, 64, 0), 0);
  px_loop_stats(loop, &s);
  assert_int_equal(s.completed, N);
  finish(loop);
}

void wait_leaves_ops_it_did_not_hand_back_queued(void **state) {
  px_loop *loop = new_loop();
  px_op ops[3] = {{0}};
  rec r[3] = {{0}};
  px_op *out[1];
  int handed[3] = {0};
  (void)state;
  for (int i = 0; i < 3; i++)
    assert_int_equal(px_nop(loop, &ops[i], rec_cb, &r[i]), 0);
  /* One at a time: the others stay queued... */
  for (int k = 0; k < 2; k++) {
    int n = 0;
    uint64_t deadline = pt_now_ms() + 5000;
    while (n == 0 && pt_now_ms() < deadline)
      n = px_wait(loop, out, 1, 1000);
    assert_int_equal(n, 1);
    assert_true(out[0] >= ops && out[0] < ops + 3);
    handed[out[0] - ops]++;
  }
  /* ... and the last one goes to px_run, which runs its callback. */
  RUN_UNTIL(loop, g_seq == 1, 5000);
  settle(loop);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(handed[i] + r[i].calls, 1);
    assert_int_equal(ops[i].result, 0);
  }
  finish(loop);
}

void wait_times_out_with_nothing_in_flight(void **state) {
  px_loop *loop = new_loop();
  px_op *out[4];
  (void)state;
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_wait(loop, out, 4, 50), 0);
  uint64_t elapsed = pt_now_ms() - t0;
  if (elapsed < 50)
    fail_msg("px_wait(50 ms) returned after %d ms", (int)elapsed);
  assert_true(elapsed < 50 + 1000);
  assert_int_equal(px_wait(loop, out, 4, 0), 0);
  finish(loop);
}

/* ---- Other threads. ----------------------------------------------------- */

typedef struct waker {
  px_loop *loop;
  atomic_int stop;
  px_op *post; /* post this op instead of waking, when set */
} waker;

/* Wakes the loop every few ms until told to stop: one of the wakeups lands
 * while the loop thread is blocked, whatever the scheduling. */
static void wake_repeatedly(void *arg) {
  waker *w = arg;
  while (!atomic_load(&w->stop)) {
    px_loop_wakeup(w->loop);
    pt_sleep_ms(5);
  }
}

static void wake_once(void *arg) {
  waker *w = arg;
  px_loop_wakeup(w->loop);
}

/* The delay only makes it likely that px_wait is already blocked when the
 * post arrives; the test passes either way. */
static void post_later(void *arg) {
  waker *w = arg;
  pt_sleep_ms(30);
  if (px_post(w->loop, w->post, rec_cb, w->post->data) != 0)
    atomic_store(&w->stop, -1);
}

void wakeup_from_another_thread_wakes_blocked_run_once(void **state) {
  px_loop *loop = new_loop();
  px_op t = {0}, c = {0};
  rec tr = {0}, cr = {0};
  waker w = {loop, 0, NULL};
  pt_thread *th;
  (void)state;
  assert_int_equal(px_timeout(loop, &t, 10000, rec_cb, &tr), 0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(pt_thread_start(&th, wake_repeatedly, &w), 0);
  uint64_t t0 = pt_now_ms();
  int rc = px_run(loop, PX_RUN_ONCE);
  uint64_t elapsed = pt_now_ms() - t0;
  atomic_store(&w.stop, 1);
  pt_thread_join(th);
  assert_int_equal(rc, 1);
  assert_true(elapsed < 2000);
  assert_int_equal(tr.calls, 0);
  assert_int_equal(px_cancel(loop, &c, &t, rec_cb, &cr), 0);
  RUN_UNTIL(loop, tr.calls == 1 && cr.calls == 1, 2000);
  finish(loop);
}

void wakeup_sent_before_run_is_not_lost(void **state) {
  px_loop *loop = new_loop();
  px_op t = {0}, c = {0};
  rec tr = {0}, cr = {0};
  waker w = {loop, 0, NULL};
  pt_thread *th;
  (void)state;
  assert_int_equal(px_timeout(loop, &t, 5000, rec_cb, &tr), 0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  /* The wakeup is sent and the thread is gone before px_run blocks. */
  assert_int_equal(pt_thread_start(&th, wake_once, &w), 0);
  pt_thread_join(th);
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_run(loop, PX_RUN_ONCE), 1);
  assert_true(pt_now_ms() - t0 < 2000);
  assert_int_equal(tr.calls, 0);
  assert_int_equal(px_cancel(loop, &c, &t, rec_cb, &cr), 0);
  RUN_UNTIL(loop, tr.calls == 1 && cr.calls == 1, 2000);
  finish(loop);
}

void wakeup_from_another_thread_returns_blocked_wait(void **state) {
  px_loop *loop = new_loop();
  waker w = {loop, 0, NULL};
  pt_thread *th;
  px_op *out[4];
  (void)state;
  assert_int_equal(pt_thread_start(&th, wake_repeatedly, &w), 0);
  uint64_t t0 = pt_now_ms();
  int n = px_wait(loop, out, 4, -1);
  uint64_t elapsed = pt_now_ms() - t0;
  atomic_store(&w.stop, 1);
  pt_thread_join(th);
  assert_int_equal(n, 0);
  assert_true(elapsed < 2000);
  finish(loop);
}

void post_from_another_thread_wakes_wait_forever(void **state) {
  px_loop *loop = new_loop();
  px_op op = {0};
  rec r = {0};
  waker w = {loop, 0, &op};
  pt_thread *th;
  px_op *out[4];
  int n = 0;
  (void)state;
  op.data = &r;
  assert_int_equal(pt_thread_start(&th, post_later, &w), 0);
  /* A wakeup may return 0; the posted op must come in a later call. */
  uint64_t deadline = pt_now_ms() + 5000;
  while (n == 0 && pt_now_ms() < deadline && atomic_load(&w.stop) == 0)
    n = px_wait(loop, out, 4, -1);
  pt_thread_join(th);
  assert_int_equal(atomic_load(&w.stop), 0);
  assert_int_equal(n, 1);
  assert_ptr_equal(out[0], &op);
  assert_int_equal(op.result, 0);
  assert_ptr_equal(op.data, &r);
  assert_int_equal(r.calls, 0);
  finish(loop);
}

/* A post's own wakeup is not the program's: the px_wait after the one
 * that handed the post back still waits for the timer. */
void wait_after_a_post_was_handed_back_waits_for_the_timer(void **state) {
  px_loop *loop = new_loop();
  px_op p = {0}, t = {0};
  rec pr = {0}, tr = {0};
  px_op *out[4];
  (void)state;
  assert_int_equal(px_timeout(loop, &t, 200, rec_cb, &tr), 0);
  assert_int_equal(px_post(loop, &p, rec_cb, &pr), 0);
  assert_int_equal(px_wait(loop, out, 4, -1), 1);
  assert_ptr_equal(out[0], &p);
  out[0]->cb(loop, out[0]);
  uint64_t t0 = pt_now_ms();
  pt_wake_at(loop, t0 + 5000);
  int n = px_wait(loop, out, 4, -1);
  pt_wake_cancel();
  if (n != 1)
    fail_msg("px_wait(-1) gave %d after %d ms, with no wakeup asked for", n,
             (int)(pt_now_ms() - t0));
  assert_ptr_equal(out[0], &t);
  out[0]->cb(loop, out[0]);
  assert_int_equal(tr.calls, 1);
  assert_int_equal(pr.calls, 1);
  finish(loop);
}

/* A px_loop_wakeup is latched until a wait takes it: a px_run(NOWAIT)
 * between it and the next px_wait does not. */
void wakeup_latched_across_run_nowait_ends_the_next_wait(void **state) {
  px_loop *loop = new_loop();
  px_op t = {0};
  rec tr = {0};
  px_op *out[4];
  (void)state;
  assert_int_equal(px_timeout(loop, &t, 2000, rec_cb, &tr), 0);
  assert_int_equal(px_wait(loop, out, 4, 0), 0); /* the loop is set up */
  px_loop_wakeup(loop);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  uint64_t t0 = pt_now_ms();
  int got = px_wait(loop, out, 4, -1);
  if (got != 0)
    fail_msg("px_wait gave %d after %d ms: the wakeup was lost", got,
             (int)(pt_now_ms() - t0));
  assert_int_equal(tr.calls, 0);
  /* Taken: the next wait is for the timer. */
  assert_int_equal(px_wait(loop, out, 4, -1), 1);
  assert_ptr_equal(out[0], &t);
  out[0]->cb(loop, out[0]);
  assert_int_equal(tr.calls, 1);
  finish(loop);
}

/* ... nor does a px_run(ONCE) that runs callbacks ready on entry (it does
 * not wait): the next px_run(ONCE) returns at once. */
void wakeup_latched_across_run_once_with_callbacks_ready(void **state) {
  px_loop *loop = new_loop();
  px_op a = {0}, b = {0}, t = {0}, c = {0};
  rec ar = {0}, br = {0}, tr = {0}, cr = {0};
  px_op *out[4];
  (void)state;
  assert_int_equal(px_timeout(loop, &t, 2000, rec_cb, &tr), 0);
  assert_int_equal(px_nop(loop, &a, rec_cb, &ar), 0);
  assert_int_equal(px_nop(loop, &b, rec_cb, &br), 0);
  assert_int_equal(px_wait(loop, out, 1, -1), 1); /* a; b stays ready */
  out[0]->cb(loop, out[0]);
  px_loop_wakeup(loop);
  assert_int_equal(px_run(loop, PX_RUN_ONCE), 1); /* b, ready on entry */
  assert_int_equal(br.calls, 1);
  uint64_t t0 = pt_now_ms();
  int r = px_run(loop, PX_RUN_ONCE);
  if (pt_now_ms() - t0 > 1000 || tr.calls != 0)
    fail_msg("px_run(ONCE) ran %d ms, to the timer: the wakeup was lost",
             (int)(pt_now_ms() - t0));
  assert_int_equal(r, 1);
  assert_int_equal(px_cancel(loop, &c, &t, rec_cb, &cr), 0);
  RUN_UNTIL(loop, tr.calls == 1 && cr.calls == 1, 2000);
  finish(loop);
}

enum { POSTERS = 4, POSTS = 10000 };

typedef struct poster {
  px_loop *loop;
  px_op *ops;
  int *calls;
  int next;       /* index the next callback should carry */
  int misordered; /* callbacks out of posting order */
  atomic_int errors;
} poster;

static int g_posted_total;

static void poster_cb(px_loop *loop, px_op *op) {
  poster *p = op->data;
  int i = (int)(op - p->ops);
  (void)loop;
  p->calls[i]++;
  if (i != p->next || op->result != 0)
    p->misordered++;
  p->next = i + 1;
  g_posted_total++;
}

static void post_many(void *arg) {
  poster *p = arg;
  for (int i = 0; i < POSTS; i++)
    if (px_post(p->loop, &p->ops[i], poster_cb, p) != 0)
      atomic_fetch_add(&p->errors, 1);
}

void posts_from_four_threads_are_each_delivered_once_in_order(void **state) {
  px_loop *loop = new_loop();
  poster p[POSTERS];
  pt_thread *th[POSTERS];
  px_stats s;
  (void)state;
  g_posted_total = 0;
  for (int t = 0; t < POSTERS; t++) {
    p[t].loop = loop;
    p[t].ops = calloc(POSTS, sizeof(px_op));
    p[t].calls = calloc(POSTS, sizeof(int));
    assert_non_null(p[t].ops);
    assert_non_null(p[t].calls);
    p[t].next = 0;
    p[t].misordered = 0;
    atomic_init(&p[t].errors, 0);
  }
  for (int t = 0; t < POSTERS; t++)
    assert_int_equal(pt_thread_start(&th[t], post_many, &p[t]), 0);
  RUN_UNTIL(loop, g_posted_total == POSTERS * POSTS, 20000);
  for (int t = 0; t < POSTERS; t++)
    pt_thread_join(th[t]);
  px_loop_stats(loop, &s);
  assert_int_equal(s.submitted, POSTERS * POSTS);
  assert_int_equal(s.completed, POSTERS * POSTS);
  settle(loop);
  assert_int_equal(g_posted_total, POSTERS * POSTS);
  for (int t = 0; t < POSTERS; t++) {
    assert_int_equal(atomic_load(&p[t].errors), 0);
    assert_int_equal(p[t].misordered, 0);
    for (int i = 0; i < POSTS; i++)
      if (p[t].calls[i] != 1)
        fail_msg("post %d of thread %d ran %d times", i, t, p[t].calls[i]);
    free(p[t].ops);
    free(p[t].calls);
  }
  finish(loop);
}

/* One post at a time, each sent only once the previous one was delivered,
 * while a long timer keeps the loop waiting in the kernel between posts:
 * every post finds no other post waiting and, most of the time, the loop
 * asleep: the case where the post itself must wake the loop (a lost wakeup
 * leaves the loop asleep until the test's deadline).  One posting thread:
 * it busy-waits, and with two of them on two cores the loop's thread would
 * wait for a time slice per post. */
enum { PINGERS = 1, PINGS = 5000 };

typedef struct pinger {
  px_loop *loop;
  px_op op;
  atomic_int delivered;
  atomic_int failed; /* px_post errors, or a wait for delivery ran out */
  int bad;           /* deliveries with a result other than 0 */
} pinger;

static atomic_int g_pings_left;

static void ping_cb(px_loop *loop, px_op *op) {
  pinger *p = op->data;
  (void)loop;
  p->bad += op->result != 0;
  atomic_fetch_add(&p->delivered, 1);
  atomic_fetch_sub(&g_pings_left, 1);
}

static void ping_main(void *arg) {
  pinger *p = arg;
  uint64_t deadline = pt_now_ms() + 20000;
  for (int i = 0; i < PINGS; i++) {
    if (px_post(p->loop, &p->op, ping_cb, p) != 0) {
      atomic_store(&p->failed, 1);
      return;
    }
    while (atomic_load(&p->delivered) != i + 1) {
      if (pt_now_ms() > deadline) {
        atomic_store(&p->failed, 1);
        return;
      }
      pt_yield();
    }
  }
}

void posts_one_at_a_time_each_wake_the_loop(void **state) {
  px_loop *loop = new_loop();
  pinger p[PINGERS];
  pt_thread *th[PINGERS];
  px_op keep = {0}, cancel = {0};
  rec kr = {0}, cr = {0};
  px_stats s;
  (void)state;
  assert_int_equal(px_timeout(loop, &keep, 600000, rec_cb, &kr), 0);
  atomic_init(&g_pings_left, PINGERS * PINGS);
  for (int t = 0; t < PINGERS; t++) {
    memset(&p[t].op, 0, sizeof(p[t].op));
    p[t].loop = loop;
    p[t].bad = 0;
    atomic_init(&p[t].delivered, 0);
    atomic_init(&p[t].failed, 0);
  }
  for (int t = 0; t < PINGERS; t++)
    assert_int_equal(pt_thread_start(&th[t], ping_main, &p[t]), 0);
  RUN_UNTIL(loop, atomic_load(&g_pings_left) == 0, 20000);
  for (int t = 0; t < PINGERS; t++)
    pt_thread_join(th[t]);
  for (int t = 0; t < PINGERS; t++) {
    assert_int_equal(atomic_load(&p[t].failed), 0);
    assert_int_equal(atomic_load(&p[t].delivered), PINGS);
    assert_int_equal(p[t].bad, 0);
  }
  px_loop_stats(loop, &s);
  assert_int_equal(s.submitted, PINGERS * PINGS + 1);
  assert_int_equal(s.completed, PINGERS * PINGS);
  assert_int_equal(px_cancel(loop, &cancel, &keep, rec_cb, &cr), 0);
  RUN_UNTIL(loop, kr.calls == 1 && cr.calls == 1, 5000);
  assert_int_equal(kr.result, PX_ECANCELED);
  finish(loop);
}

/* ---- Loops and threads. ------------------------------------------------- */

typedef struct worker {
  px_loop *loop; /* NULL: the thread makes (and frees) its own */
  int rounds;
  int done;
  char error[160]; /* first failure, "" if none */
} worker;

typedef struct wrec {
  int calls, result;
} wrec;

static void wrec_cb(px_loop *loop, px_op *op) {
  wrec *w = op->data;
  (void)loop;
  w->calls++;
  w->result = op->result;
}

/* No cmocka asserts off the main thread: failures are written down. */
static int worker_run(worker *w, const wrec *r, int calls) {
  uint64_t deadline = pt_now_ms() + 5000;
  while (r->calls < calls && pt_now_ms() < deadline) {
    int rc = px_run(w->loop, PX_RUN_ONCE);
    if (rc < 0) {
      snprintf(w->error, sizeof(w->error), "px_run: %s", px_strerror(rc));
      return -1;
    }
  }
  if (r->calls < calls)
    snprintf(w->error, sizeof(w->error), "no completion within 5 s");
  return r->calls < calls ? -1 : 0;
}

/* Ping-pong over a socketpair, a nop and a short timeout per round. */
static void worker_main(void *arg) {
  worker *w = arg;
  int own = w->loop == NULL;
  px_fd sp[2];
  px_op s = {0}, r = {0}, n = {0}, t = {0};
  wrec sr = {0}, rr = {0}, nr = {0}, tr = {0};
  char buf[16];
  if (own && px_loop_new(&w->loop, NULL) != 0) {
    snprintf(w->error, sizeof(w->error), "px_loop_new failed");
    return;
  }
  if (px_socketpair(w->loop, sp) != 0) {
    snprintf(w->error, sizeof(w->error), "px_socketpair failed");
    return;
  }
  for (int i = 0; i < w->rounds && w->error[0] == '\0'; i++) {
    if (px_recv(w->loop, &r, sp[1], buf, sizeof(buf), wrec_cb, &rr) != 0 ||
        px_send(w->loop, &s, sp[0], "ping", 4, wrec_cb, &sr) != 0 ||
        px_nop(w->loop, &n, wrec_cb, &nr) != 0 ||
        px_timeout(w->loop, &t, 1, wrec_cb, &tr) != 0) {
      snprintf(w->error, sizeof(w->error), "a submit failed in round %d", i);
      break;
    }
    if (worker_run(w, &tr, i + 1) < 0 || worker_run(w, &rr, i + 1) < 0 ||
        worker_run(w, &sr, i + 1) < 0 || worker_run(w, &nr, i + 1) < 0)
      break;
    if (rr.result != 4 || sr.result != 4 || nr.result != 0 || tr.result != 0)
      snprintf(w->error, sizeof(w->error), "round %d: results %d %d %d %d", i,
               rr.result, sr.result, nr.result, tr.result);
    w->done++;
  }
  px_fd_close(w->loop, sp[0]);
  px_fd_close(w->loop, sp[1]);
  if (own && px_loop_free(w->loop) != 0 && w->error[0] == '\0')
    snprintf(w->error, sizeof(w->error), "px_loop_free failed");
}

void loops_on_separate_threads_run_independently(void **state) {
  enum { T = 4 };
  worker w[T];
  pt_thread *th[T];
  (void)state;
  memset(w, 0, sizeof(w));
  for (int i = 0; i < T; i++) {
    w[i].rounds = 200;
    assert_int_equal(pt_thread_start(&th[i], worker_main, &w[i]), 0);
  }
  for (int i = 0; i < T; i++)
    pt_thread_join(th[i]);
  for (int i = 0; i < T; i++) {
    if (w[i].error[0] != '\0')
      fail_msg("thread %d: %s", i, w[i].error);
    assert_int_equal(w[i].done, w[i].rounds);
  }
}

/* The common hand-off: a loop made here, run by a worker thread, and freed
 * here once the worker has finished with it (nothing in flight). */
void loop_made_on_one_thread_runs_on_another(void **state) {
  worker w;
  pt_thread *th;
  (void)state;
  memset(&w, 0, sizeof(w));
  w.loop = new_loop();
  w.rounds = 20;
  assert_int_equal(pt_thread_start(&th, worker_main, &w), 0);
  pt_thread_join(th);
  if (w.error[0] != '\0')
    fail_msg("worker: %s", w.error);
  assert_int_equal(w.done, w.rounds);
  finish(w.loop);
}

/* ---- Work handed between loops on two threads. ------------------------ */

/* A handle belongs to one loop for good (a completion port keeps it), so
 * loops on several threads hand each other work, not handles: here loop A
 * (this thread) posts messages to loop B (a worker), B sends each one on
 * its end of a socket pair, and A receives them on the other end. */
enum { HANDOFF_MSGS = 200, HANDOFF_LEN = 8 };

typedef struct handoff {
  px_loop *loop; /* B */
  px_fd sock;    /* B's end */
  px_op posts[HANDOFF_MSGS + 1];
  px_op sends[HANDOFF_MSGS];
  char msgs[HANDOFF_MSGS][HANDOFF_LEN];
  int sent, send_errors, stop;
} handoff;

static void handoff_sent(px_loop *loop, px_op *op) {
  handoff *h = op->data;
  (void)loop;
  if (op->result != HANDOFF_LEN)
    h->send_errors++;
  h->sent++;
}

static void handoff_post(px_loop *loop, px_op *op) {
  handoff *h = op->data;
  int i = (int)(op - h->posts);
  if (i == HANDOFF_MSGS) {
    h->stop = 1;
    return;
  }
  if (px_send(loop, &h->sends[i], h->sock, h->msgs[i], HANDOFF_LEN,
              handoff_sent, h) != 0)
    h->send_errors++;
}

static void handoff_main(void *arg) {
  handoff *h = arg;
  while (!h->stop || h->sent < HANDOFF_MSGS)
    if (px_run(h->loop, PX_RUN_ONCE) < 0)
      break;
}

void loops_on_two_threads_hand_work_over_with_posts(void **state) {
  px_loop *a = new_loop();
  handoff *h = calloc(1, sizeof(*h));
  px_fd raw[2];
  pt_thread *th;
  char got[HANDOFF_MSGS * HANDOFF_LEN];
  size_t have = 0;
  (void)state;
  assert_non_null(h);
  h->loop = new_loop();
  assert_int_equal(pt_raw_socketpair(raw), 0);
  assert_int_equal(px_adopt(a, raw[0]), 0);
  assert_int_equal(px_adopt(h->loop, raw[1]), 0);
  h->sock = raw[1];
  for (int i = 0; i < HANDOFF_MSGS; i++)
    snprintf(h->msgs[i], HANDOFF_LEN, "m%06d", i);
  assert_int_equal(pt_thread_start(&th, handoff_main, h), 0);
  for (int i = 0; i <= HANDOFF_MSGS; i++)
    assert_int_equal(px_post(h->loop, &h->posts[i], handoff_post, h), 0);
  uint64_t deadline = pt_now_ms() + 10000;
  while (have < sizeof(got) && pt_now_ms() < deadline) {
    int n = sync_recv(a, raw[0], got + have, sizeof(got) - have);
    assert_true(n > 0);
    have += (size_t)n;
  }
  pt_thread_join(th);
  assert_int_equal(have, sizeof(got));
  assert_int_equal(h->send_errors, 0);
  for (int i = 0; i < HANDOFF_MSGS; i++)
    assert_memory_equal(got + i * HANDOFF_LEN, h->msgs[i], HANDOFF_LEN);
  close_fd(a, raw[0]);
  close_fd(h->loop, raw[1]);
  finish(h->loop);
  free(h);
  finish(a);
}

/* ---- A wakeup after callbacks filled the submission queue. -------------- */

enum { FULLQ_SOCKS = 4 };

typedef struct fullq {
  px_loop *loop;
  px_fd sp[FULLQ_SOCKS][2];
  px_op nops[FULLQ_SOCKS], recvs[FULLQ_SOCKS], first, stop;
  rec recv_r[FULLQ_SOCKS], first_r;
  char bufs[FULLQ_SOCKS][16];
  int started;        /* receives the nop callbacks started */
  atomic_int stopped; /* the posted stop ran */
  atomic_int rescued; /* the thread had to send a byte to end px_run */
  int post_rc;
} fullq;

static void fullq_nop(px_loop *loop, px_op *op) {
  fullq *q = op->data;
  int i = q->started++;
  assert_int_equal(px_recv(loop, &q->recvs[i], q->sp[i][0], q->bufs[i],
                           sizeof(q->bufs[i]), rec_cb, &q->recv_r[i]),
                   0);
}

static void fullq_stop(px_loop *loop, px_op *op) {
  fullq *q = op->data;
  atomic_store(&q->stopped, 1);
  px_stop(loop);
}

/* Posts the stop once px_run is likely blocked (the delay is pacing only);
 * if it has not run 3 s later, a byte ends the wait so the test fails
 * instead of hanging. */
static void fullq_post_stop(void *arg) {
  fullq *q = arg;
  pt_sleep_ms(100);
  q->post_rc = px_post(q->loop, &q->stop, fullq_stop, q);
  for (int i = 0; i < 300 && !atomic_load(&q->stopped); i++)
    pt_sleep_ms(10);
  if (!atomic_load(&q->stopped)) {
    atomic_store(&q->rescued, 1);
    pt_raw_send(q->sp[0][1], "x", 1);
  }
}

/*
 * With the smallest queue, callbacks of one round fill the submission
 * queue (each starts a receive) and the same round reaps the loop's own
 * wakeup, which px_post from this thread had raised: there is no room to
 * put the backend's wakeup listener back (on io_uring, the eventfd read)
 * then.  A post from another thread while the next px_run blocks must
 * still wake it.
 */
void post_wakes_a_loop_whose_callbacks_filled_the_queue(void **state) {
  fullq *q = calloc(1, sizeof(*q));
  px_op t = {0};
  rec tr = {0};
  pt_thread *th;
  (void)state;
  assert_non_null(q);
  q->loop = new_loop_entries(4);
  for (int i = 0; i < FULLQ_SOCKS; i++)
    socketpair_new(q->loop, q->sp[i]);
  /* A first round: the loop's own machinery is set up and waiting. */
  assert_int_equal(px_timeout(q->loop, &t, 1, rec_cb, &tr), 0);
  RUN_UNTIL(q->loop, tr.calls == 1, 2000);
  for (int i = 0; i < FULLQ_SOCKS; i++)
    assert_int_equal(px_nop(q->loop, &q->nops[i], fullq_nop, q), 0);
  assert_int_equal(px_post(q->loop, &q->first, rec_cb, &q->first_r), 0);
  RUN_UNTIL(q->loop, q->started == FULLQ_SOCKS && q->first_r.calls == 1, 2000);
  assert_int_equal(pt_thread_start(&th, fullq_post_stop, q), 0);
  int rc = px_run(q->loop, PX_RUN_DEFAULT);
  pt_thread_join(th);
  assert_true(rc >= 0);
  assert_int_equal(q->post_rc, 0);
  if (atomic_load(&q->rescued))
    fail_msg("the post from another thread did not wake px_run (a byte "
             "sent 3 s later did)");
  assert_int_equal(atomic_load(&q->stopped), 1);
  /* The receives are still waiting: a byte each ends them. */
  for (int i = 0; i < FULLQ_SOCKS; i++)
    assert_int_equal(sync_send(q->loop, q->sp[i][1], "y", 1), 1);
  RUN_UNTIL(q->loop,
            q->recv_r[0].calls == 1 && q->recv_r[1].calls == 1 &&
                q->recv_r[2].calls == 1 && q->recv_r[3].calls == 1,
            2000);
  for (int i = 0; i < FULLQ_SOCKS; i++) {
    assert_int_equal(q->recv_r[i].result, 1);
    assert_int_equal(q->bufs[i][0], 'y');
    close_fd(q->loop, q->sp[i][0]);
    close_fd(q->loop, q->sp[i][1]);
  }
  finish(q->loop);
  free(q);
}

/* ---- An acceptor stopped before the loop's first run. ------------------- */

typedef struct early_stop {
  px_loop *loop;
  px_fd listener;
  int run_rc, close_rc;
} early_stop;

static void early_stop_main(void *arg) {
  early_stop *s = arg;
  s->run_rc = px_run(s->loop, PX_RUN_DEFAULT);
  s->close_rc = px_fd_close(s->loop, s->listener);
}

static void early_stop_acc_cb(px_acceptor *acc, px_fd fd, void *conn,
                              px_conn_id id, void *data) {
  (void)acc, (void)fd, (void)conn, (void)id, (void)data;
  fail_msg("nobody connected, yet the acceptor reported a connection");
}

/*
 * A loop made on this thread, with an acceptor started and stopped before
 * the loop ever ran, and more accepts than its queue holds: the stop's
 * cancels must not tie the loop to this thread (io_uring: enabling a
 * SINGLE_ISSUER ring binds it to the thread that does it), so another
 * thread runs the loop until the acceptor is gone.
 */
void acceptor_stopped_before_the_first_run_leaves_the_loop_to_any_thread(
    void **state) {
  early_stop s = {0};
  px_connpool *pool = NULL;
  px_acceptor *acc = NULL;
  pt_thread *th;
  int port;
  (void)state;
  s.loop = new_loop_entries(4);
  s.listener = tcp_listener(s.loop, &port);
  assert_int_equal(px_connpool_new(16, 64, &pool), 0);
  assert_int_equal(px_acceptor_start(s.loop, s.listener, pool, 8,
                                     early_stop_acc_cb, NULL, &acc),
                   0);
  px_acceptor_stop(acc);
  s.run_rc = 1;
  assert_int_equal(pt_thread_start(&th, early_stop_main, &s), 0);
  pt_thread_join(th);
  if (s.run_rc != 0)
    fail_msg("px_run on the other thread gave %d (%s)", s.run_rc,
             px_strerror(s.run_rc));
  assert_int_equal(s.close_rc, 0);
  assert_int_equal(px_connpool_free(pool), 0); /* the acceptor is gone */
  finish(s.loop);
}
