/* Fault injection: every allocation px makes while creating a loop, pools
 * and an acceptor fails in turn.  Each failing call must answer PX_ENOMEM
 * (never crash, never half-build), and everything px allocated is freed:
 * the count of live blocks goes back to zero after each round. */
/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "px.h"

static long g_live;      /* blocks px holds */
static long g_countdown; /* allocations left before the failing one */

static void *fail_malloc(size_t n) {
  if (g_countdown-- == 0)
    return NULL;
  void *p = malloc(n);
  if (p != NULL)
    g_live++;
  return p;
}

static void *fail_realloc(void *p, size_t n) {
  if (g_countdown-- == 0)
    return NULL;
  void *q = realloc(p, n);
  if (q != NULL && p == NULL)
    g_live++;
  return q;
}

static void fail_free(void *p) {
  if (p != NULL)
    g_live--;
  free(p);
}

static void never_called(px_acceptor *acc, px_fd fd, void *conn, px_conn_id id,
                         void *data) {
  (void)acc, (void)fd, (void)conn, (void)id, (void)data;
  fail_msg("no connection was expected");
}

/* Builds what a server builds; 0 when all of it was made (then freed), or
 * the PX_E* code of the step that failed (after freeing the rest). */
static int build_and_free(void) {
  px_loop *loop = NULL;
  px_bufpool *bufs = NULL;
  px_connpool *conns = NULL;
  px_acceptor *acc = NULL;
  px_fd l = PX_INVALID_FD;
  int rc = px_loop_new(&loop, NULL);
  if (rc == 0)
    rc = px_bufpool_new(loop, 64, 4096, &bufs);
  if (rc == 0)
    rc = px_connpool_new(64, 128, &conns);
  if (rc == 0)
    rc = px_tcp_listen(loop, "127.0.0.1", 0, 16, &l);
  if (rc == 0)
    rc = px_acceptor_start(loop, l, conns, 4, NULL, NULL, &acc) == PX_EINVAL
             ? 0
             : PX_EIO; /* no callback: refused before anything is made */
  if (rc == 0)
    rc = px_acceptor_start(loop, l, conns, 4, never_called, NULL, &acc);
  if (loop != NULL) {
    if (acc != NULL)
      px_acceptor_stop(acc);
    if (l != PX_INVALID_FD)
      px_fd_close(loop, l);
    assert_int_equal(px_loop_free(loop), 0);
  }
  if (bufs != NULL)
    assert_int_equal(px_bufpool_free(bufs), 0);
  if (conns != NULL)
    assert_int_equal(px_connpool_free(conns), 0);
  return rc;
}

static void
every_failing_allocation_gives_enomem_and_leaks_nothing(void **state) {
  (void)state;
  assert_int_equal(px_replace_allocator(fail_malloc, fail_realloc, fail_free),
                   0);
  int failures = 0;
  for (long n = 0;; n++) {
    g_live = 0;
    g_countdown = n;
    int rc = build_and_free();
    assert_int_equal(g_live, 0); /* nothing left behind */
    if (rc == 0)
      break; /* the n-th allocation was past the last one */
    assert_int_equal(rc, PX_ENOMEM);
    failures++;
    assert_true(n < 10000);
  }
  print_message("[ info ] %d allocations, each failed once: PX_ENOMEM, "
                "no leak\n",
                failures);
  assert_true(failures >= 5);
}

static void noop_cb(px_loop *loop, px_op *op) {
  (void)loop, (void)op;
}

/* Out of memory for the timer heap: a timer, and an op with a deadline,
 * are refused with PX_ENOMEM and left exactly as they were. */
static void submit_refused_for_memory_leaves_the_op_as_it_was(void **state) {
  px_loop *loop = NULL;
  px_fd sp[2];
  px_op op, before;
  char buf[8];
  int marker;
  (void)state;
  assert_int_equal(px_replace_allocator(fail_malloc, fail_realloc, fail_free),
                   0);
  g_countdown = -1; /* nothing fails while the loop is made */
  assert_int_equal(px_loop_new(&loop, NULL), 0);
  assert_int_equal(px_socketpair(loop, sp), 0);
  px_op_init(&op);
  op.cb = noop_cb;
  op.data = &marker;
  memcpy(&before, &op, sizeof(op));
  g_countdown = 0; /* the heap's first allocation fails */
  assert_int_equal(px_timeout(loop, &op, 10, NULL, NULL), PX_ENOMEM);
  assert_memory_equal(&op, &before, sizeof(op));
  assert_int_equal(px_op_deadline(&op, 1000), 0);
  memcpy(&before, &op, sizeof(op));
  g_countdown = 0;
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), NULL, NULL),
                   PX_ENOMEM);
  assert_memory_equal(&op, &before, sizeof(op));
  g_countdown = -1;
  /* With memory, the same op goes: the deadline it kept fires. */
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), NULL, NULL), 0);
  assert_int_equal(px_fd_close(loop, sp[1]), 0);
  px_op *out[1];
  assert_int_equal(px_wait(loop, out, 1, 5000), 1);
  assert_ptr_equal(out[0], &op);
  assert_int_equal(op.result, 0); /* the peer's end of the stream */
  assert_int_equal(px_fd_close(loop, sp[0]), 0);
  assert_int_equal(px_loop_free(loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_failing_allocation_gives_enomem_and_leaks_nothing),
      cmocka_unit_test(submit_refused_for_memory_leaves_the_op_as_it_was),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
