/*
 * No malloc on the submit/complete path in steady state: px's allocator is
 * replaced by counting wrappers, the loop is warmed up until its tables and
 * heaps have grown, and then 10,000 more rounds of every common op must
 * allocate and free nothing.
 */
/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "px.h"

static size_t n_malloc, n_realloc, n_free;

static void *count_malloc(size_t size) {
  n_malloc++;
  return malloc(size);
}

static void *count_realloc(void *ptr, size_t size) {
  n_realloc++;
  return realloc(ptr, size);
}

static void count_free(void *ptr) {
  if (ptr != NULL)
    n_free++;
  free(ptr);
}

enum { MSG = 64, NOPS = 4 };

typedef struct round {
  px_op recv, send, nop, timer, cancel, post, pw, pr;
  px_op waited[NOPS];
  int done;
  int bad;
  uint8_t rbuf[MSG], sbuf[MSG], pipe_in[MSG], pipe_out[MSG];
} round;

static void done_cb(px_loop *loop, px_op *op) {
  round *r = op->data;
  (void)loop;
  r->done++;
  if (op == &r->timer) {
    if (op->result != PX_ECANCELED && op->result != 0)
      r->bad++;
  } else if (op == &r->recv || op == &r->send || op == &r->pw || op == &r->pr) {
    if (op->result != MSG)
      r->bad++;
  } else if (op->result != 0) {
    r->bad++;
  }
}

static void run_round(px_loop *loop, round *r, const px_fd sp[2],
                      const px_fd pp[2]) {
  r->done = 0;
  assert_int_equal(px_op_deadline(&r->recv, 60000), 0);
  assert_int_equal(px_recv(loop, &r->recv, sp[0], r->rbuf, MSG, done_cb, r), 0);
  assert_int_equal(px_send(loop, &r->send, sp[1], r->sbuf, MSG, done_cb, r), 0);
  assert_int_equal(px_nop(loop, &r->nop, done_cb, r), 0);
  assert_int_equal(px_timeout(loop, &r->timer, 60000, done_cb, r), 0);
  assert_int_equal(px_cancel(loop, &r->cancel, &r->timer, done_cb, r), 0);
  assert_int_equal(px_post(loop, &r->post, done_cb, r), 0);
  assert_int_equal(
      px_read(loop, &r->pr, pp[0], r->pipe_in, MSG, PX_CUR, done_cb, r), 0);
  assert_int_equal(
      px_write(loop, &r->pw, pp[1], r->pipe_out, MSG, PX_CUR, done_cb, r), 0);
  uint64_t deadline = pt_now_ms() + 5000;
  pt_wake_at(loop, deadline);
  while (r->done < 8 && pt_now_ms() < deadline)
    assert_true(px_run(loop, PX_RUN_ONCE) >= 0);
  pt_wake_cancel();
  assert_int_equal(r->done, 8);
  assert_int_equal(r->bad, 0);

  /* The pull side: nops handed back by px_wait. */
  for (int i = 0; i < NOPS; i++)
    assert_int_equal(px_nop(loop, &r->waited[i], NULL, r), 0);
  px_op *out[NOPS];
  int got = 0;
  while (got < NOPS && pt_now_ms() < deadline) {
    int n = px_wait(loop, out, NOPS, 1000);
    assert_true(n >= 0);
    got += n;
  }
  assert_int_equal(got, NOPS);
}

static void no_allocation_in_steady_state(void **state) {
  px_loop *loop = NULL;
  px_fd sp[2], pp[2];
  round *r = calloc(1, sizeof(*r));
  px_stats s;
  (void)state;
  assert_non_null(r);
  pt_hang_guard(60);
  assert_int_equal(px_loop_new(&loop, NULL), 0);
  assert_int_equal(px_socketpair(loop, sp), 0);
  assert_int_equal(px_pipe(loop, pp), 0);
  memset(r->sbuf, 'x', MSG);
  memset(r->pipe_out, 'y', MSG);
  assert_true(n_malloc > 0); /* the loop itself came from the wrappers */

  for (int i = 0; i < 3000; i++)
    run_round(loop, r, sp, pp);
  n_malloc = n_realloc = n_free = 0;
  for (int i = 0; i < 10000; i++)
    run_round(loop, r, sp, pp);
  if (n_malloc != 0 || n_realloc != 0 || n_free != 0)
    fail_msg("steady state allocated: %u malloc, %u realloc, %u free",
             (unsigned)n_malloc, (unsigned)n_realloc, (unsigned)n_free);

  px_loop_stats(loop, &s);
  assert_int_equal(s.in_flight, 0);
  assert_int_equal(px_fd_close(loop, sp[0]), 0);
  assert_int_equal(px_fd_close(loop, sp[1]), 0);
  assert_int_equal(px_fd_close(loop, pp[0]), 0);
  assert_int_equal(px_fd_close(loop, pp[1]), 0);
  assert_int_equal(px_loop_free(loop), 0);
  pt_hang_guard(0);
  free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(no_allocation_in_steady_state),
  };
  /* Before any loop exists, as px.h asks. */
  if (px_replace_allocator(count_malloc, count_realloc, count_free) != 0)
    return 1;
  return cmocka_run_group_tests_name("unit_alloc", tests, NULL, NULL);
}
