/*
 * No malloc on the submit/complete path in steady state: px's allocator is
 * replaced by counting wrappers, the loop is warmed up until its tables and
 * heaps have grown, and then 10,000 more rounds of every common op must
 * allocate and free nothing.
 *
 * Where the build links with -Wl,--wrap=malloc,... (Linux, gcc or clang:
 * PX_TEST_WRAP_ALLOC), every call to malloc, calloc, realloc and free from
 * the objects linked statically into this program (px's archive and this
 * test) goes through the __wrap_ functions below as well, so an allocation
 * that bypasses px's allocator is counted too.
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

#ifdef PX_TEST_WRAP_ALLOC
#include <stdatomic.h>

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *ptr, size_t size);
void __real_free(void *ptr);
void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *ptr, size_t size);
void __wrap_free(void *ptr);

/* Atomic: the watchdog thread shares the process. */
static atomic_size_t w_malloc, w_calloc, w_realloc, w_free;

void *__wrap_malloc(size_t size) {
  atomic_fetch_add(&w_malloc, 1);
  return __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size) {
  atomic_fetch_add(&w_calloc, 1);
  return __real_calloc(n, size);
}

void *__wrap_realloc(void *ptr, size_t size) {
  atomic_fetch_add(&w_realloc, 1);
  return __real_realloc(ptr, size);
}

void __wrap_free(void *ptr) {
  if (ptr != NULL)
    atomic_fetch_add(&w_free, 1);
  __real_free(ptr);
}

static void wrapped_reset(void) {
  atomic_store(&w_malloc, 0);
  atomic_store(&w_calloc, 0);
  atomic_store(&w_realloc, 0);
  atomic_store(&w_free, 0);
}

static void wrapped_check(void) {
  size_t m = atomic_load(&w_malloc), c = atomic_load(&w_calloc);
  size_t r = atomic_load(&w_realloc), f = atomic_load(&w_free);
  if (m != 0 || c != 0 || r != 0 || f != 0)
    fail_msg("steady state called the C library: %u malloc, %u calloc, "
             "%u realloc, %u free",
             (unsigned)m, (unsigned)c, (unsigned)r, (unsigned)f);
}

/* The wrappers are in the link: px's allocations during setup (through
 * count_malloc below) reached them. */
static int wrapped_seen(void) {
  return atomic_load(&w_malloc) > 0;
}
#else
static void wrapped_reset(void) {}

static void wrapped_check(void) {}

static int wrapped_seen(void) {
  return 1;
}
#endif

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
  assert_true(wrapped_seen());

  for (int i = 0; i < 3000; i++)
    run_round(loop, r, sp, pp);
  n_malloc = n_realloc = n_free = 0;
  wrapped_reset();
  for (int i = 0; i < 10000; i++)
    run_round(loop, r, sp, pp);
  if (n_malloc != 0 || n_realloc != 0 || n_free != 0)
    fail_msg("steady state allocated: %u malloc, %u realloc, %u free",
             (unsigned)n_malloc, (unsigned)n_realloc, (unsigned)n_free);
  wrapped_check();

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
