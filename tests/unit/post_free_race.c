/* px_post from another thread racing px_loop_free: every post px accepted
 * (returned 0) has its callback run exactly once before px_loop_free
 * returns, with 0 or PX_ECANCELED; every other post is refused with
 * PX_ESHUTDOWN and never called back.
 *
 * A post that starts after px_loop_free returned would touch freed memory,
 * which the program must avoid; to race the free over its whole length the
 * test keeps the loop's memory: px's allocator is replaced by one that
 * holds freed blocks until the poster has stopped, so a late px_post finds
 * a shut loop (PX_ESHUTDOWN) instead of reused memory. */
/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "px.h"

enum { ITERATIONS = 2000, OPS = 1 << 13, HELD_MAX = 64 };

/* ---- An allocator that holds freed blocks until told to let go. -------- */

static void *g_held[HELD_MAX];
static atomic_int g_nheld;
static atomic_bool g_holding;

static void *hold_malloc(size_t n) {
  return malloc(n);
}

static void *hold_realloc(void *p, size_t n) {
  return realloc(p, n);
}

static void hold_free(void *p) {
  if (p == NULL)
    return;
  if (atomic_load(&g_holding)) {
    int i = atomic_fetch_add(&g_nheld, 1);
    if (i < HELD_MAX) {
      g_held[i] = p;
      return;
    }
    atomic_fetch_sub(&g_nheld, 1);
  }
  free(p);
}

static void let_go(void) {
  int n = atomic_exchange(&g_nheld, 0);
  for (int i = 0; i < n && i < HELD_MAX; i++)
    free(g_held[i]);
}

/* ---- The poster. --------------------------------------------------------- */

typedef struct race {
  px_loop *loop;
  px_op *ops;
  uint8_t *calls;   /* callbacks per op (loop thread) */
  int32_t *results; /* each op's result */
  atomic_int accepted;
  atomic_int refused;
  atomic_int other; /* any answer but 0 and PX_ESHUTDOWN */
} race;

static void count_cb(px_loop *loop, px_op *op) {
  race *r = op->data;
  (void)loop;
  size_t i = (size_t)(op - r->ops);
  r->calls[i]++;
  r->results[i] = op->result;
}

static void post_until_refused(void *arg) {
  race *r = arg;
  for (int i = 0; i < OPS; i++) {
    int rc = px_post(r->loop, &r->ops[i], count_cb, r);
    if (rc == 0) {
      atomic_fetch_add(&r->accepted, 1);
    } else if (rc == PX_ESHUTDOWN) {
      atomic_fetch_add(&r->refused, 1);
      return;
    } else {
      atomic_fetch_add(&r->other, 1);
      return;
    }
  }
}

static void posts_racing_loop_free_each_end_once(void **state) {
  (void)state;
  race r;
  r.ops = calloc(OPS, sizeof(*r.ops));
  r.calls = calloc(OPS, 1);
  r.results = calloc(OPS, sizeof(*r.results));
  assert_non_null(r.ops);
  assert_non_null(r.calls);
  assert_non_null(r.results);
  long raced = 0, cancelled = 0, delivered = 0;
  for (int it = 0; it < ITERATIONS; it++) {
    for (int i = 0; i < OPS; i++)
      px_op_init(&r.ops[i]);
    memset(r.calls, 0, OPS);
    atomic_init(&r.accepted, 0);
    atomic_init(&r.refused, 0);
    atomic_init(&r.other, 0);
    assert_int_equal(px_loop_new(&r.loop, NULL), 0);
    atomic_store(&g_holding, true);
    pt_thread *t;
    assert_int_equal(pt_thread_start(&t, post_until_refused, &r), 0);
    /* Free after a varying number of accepted posts (0 to 15), some of
     * them taken by the loop first. */
    int wait_for = it % 16;
    uint64_t deadline = pt_now_ms() + 5000;
    while (atomic_load(&r.accepted) < wait_for && pt_now_ms() < deadline) {
    }
    if (it % 3 == 0)
      assert_true(px_run(r.loop, PX_RUN_NOWAIT) >= 0);
    assert_int_equal(px_loop_free(r.loop), 0);
    pt_thread_join(t);
    atomic_store(&g_holding, false);
    let_go();
    int accepted = atomic_load(&r.accepted);
    assert_int_equal(atomic_load(&r.other), 0);
    if (atomic_load(&r.refused) == 1)
      raced++;
    for (int i = 0; i < OPS; i++) {
      if (i < accepted) {
        if (r.calls[i] != 1)
          fail_msg("iteration %d: accepted post %d called back %d times", it, i,
                   r.calls[i]);
        if (r.results[i] == PX_ECANCELED)
          cancelled++;
        else if (r.results[i] == 0)
          delivered++;
        else
          fail_msg("post %d completed with %d", i, (int)r.results[i]);
      } else if (r.calls[i] != 0) {
        fail_msg("iteration %d: refused post %d was called back", it, i);
      }
    }
  }
  printf("posts racing px_loop_free: %d iterations, %ld ended refused, "
         "%ld posts cancelled by the free, %ld delivered\n",
         ITERATIONS, raced, cancelled, delivered);
  assert_true(raced > 0);
  free(r.ops);
  free(r.calls);
  free(r.results);
}

int main(void) {
  if (px_replace_allocator(hold_malloc, hold_realloc, hold_free) != 0)
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(posts_racing_loop_free_each_end_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
