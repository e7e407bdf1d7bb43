/* px_bufpool and px_connpool: get, release, exhaustion, stale ids,
 * high-water marks, and refusals of bad input. */
/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "px.h"

static px_loop *g_loop;

static int setup(void **state) {
  (void)state;
  return px_loop_new(&g_loop, NULL);
}

static int teardown(void **state) {
  (void)state;
  return px_loop_free(g_loop);
}

static void stats_are(const px_pool_stats *s, uint32_t capacity,
                      uint32_t in_use, uint32_t high, uint64_t exhausted) {
  assert_int_equal(s->capacity, capacity);
  assert_int_equal(s->in_use, in_use);
  assert_int_equal(s->high_water, high);
  assert_int_equal(s->exhausted, exhausted);
}

static void bufpool_hands_out_distinct_buffers_until_empty(void **state) {
  px_bufpool *p;
  px_pool_stats s;
  unsigned char *b[4];
  (void)state;
  assert_int_equal(px_bufpool_new(g_loop, 4, 100, &p), 0);
  assert_int_equal(px_bufpool_size(p), 100);
  for (int i = 0; i < 4; i++) {
    b[i] = px_buf_get(p);
    assert_non_null(b[i]);
    memset(b[i], i + 1, 100); /* each is writable over its whole size */
  }
  for (int i = 0; i < 4; i++)
    for (int k = 0; k < 100; k++)
      assert_int_equal(b[i][k], i + 1); /* ... and none overlaps another */
  assert_null(px_buf_get(p));
  assert_null(px_buf_get(p));
  px_bufpool_stats(p, &s);
  stats_are(&s, 4, 4, 4, 2);
  assert_int_equal(px_bufpool_free(p), PX_EBUSY);
  for (int i = 0; i < 4; i++)
    assert_int_equal(px_buf_release(p, b[i]), 0);
  px_bufpool_stats(p, &s);
  stats_are(&s, 4, 0, 4, 2);
  assert_int_equal(px_bufpool_free(p), 0);
}

static void bufpool_reuses_a_released_buffer(void **state) {
  px_bufpool *p;
  px_pool_stats s;
  (void)state;
  assert_int_equal(px_bufpool_new(g_loop, 2, 64, &p), 0);
  void *a = px_buf_get(p);
  assert_int_equal(px_buf_release(p, a), 0);
  assert_ptr_equal(px_buf_get(p), a); /* O(1): the top of the free stack */
  void *b = px_buf_get(p);
  assert_non_null(b);
  assert_ptr_not_equal(a, b);
  px_bufpool_stats(p, &s);
  stats_are(&s, 2, 2, 2, 0);
  assert_int_equal(px_buf_release(p, a), 0);
  px_bufpool_stats(p, &s);
  stats_are(&s, 2, 1, 2, 0);
  assert_int_equal(px_buf_release(p, b), 0);
  assert_int_equal(px_bufpool_free(p), 0);
}

/* For a size that is a power of two (the lookup shifts) and one that is
 * not (it divides). */
static void refuses_foreign_and_double_releases(uint32_t size) {
  px_bufpool *p, *q;
  px_pool_stats s;
  char local[64];
  assert_int_equal(px_bufpool_new(g_loop, 2, size, &p), 0);
  assert_int_equal(px_bufpool_new(g_loop, 2, size, &q), 0);
  char *a = px_buf_get(p);
  assert_int_equal(px_buf_release(p, local), PX_EINVAL);
  assert_int_equal(px_buf_release(p, a + 1), PX_EINVAL); /* inside a buffer */
  assert_int_equal(px_buf_release(p, a + 2 * size), PX_EINVAL); /* past */
  assert_int_equal(px_buf_release(q, a), PX_EINVAL); /* another pool's */
  assert_int_equal(px_buf_release(p, NULL), PX_EINVAL);
  assert_int_equal(px_buf_release(p, a), 0);
  assert_int_equal(px_buf_release(p, a), PX_EINVAL); /* twice */
  px_bufpool_stats(p, &s);
  stats_are(&s, 2, 0, 1, 0);
  /* The free stack was not corrupted: two distinct buffers, then none. */
  void *x = px_buf_get(p), *y = px_buf_get(p);
  assert_non_null(x);
  assert_non_null(y);
  assert_ptr_not_equal(x, y);
  assert_null(px_buf_get(p));
  assert_int_equal(px_buf_release(p, x), 0);
  assert_int_equal(px_buf_release(p, y), 0);
  assert_int_equal(px_bufpool_free(p), 0);
  assert_int_equal(px_bufpool_free(q), 0);
}

static void bufpool_refuses_foreign_and_double_releases(void **state) {
  (void)state;
  refuses_foreign_and_double_releases(64);
  refuses_foreign_and_double_releases(100);
}

static void bufpool_refuses_bad_sizes(void **state) {
  px_bufpool *p = (px_bufpool *)1;
  (void)state;
  assert_int_equal(px_bufpool_new(g_loop, 0, 64, &p), PX_EINVAL);
  assert_null(p);
  assert_int_equal(px_bufpool_new(g_loop, 4, 0, &p), PX_EINVAL);
  assert_int_equal(px_bufpool_new(g_loop, 32769, 64, &p), PX_EINVAL);
  assert_int_equal(px_bufpool_new(NULL, 4, 64, &p), PX_EINVAL);
  assert_int_equal(px_bufpool_new(g_loop, 4, 64, NULL), PX_EINVAL);
  assert_int_equal(px_bufpool_free(NULL), PX_EINVAL);
}

typedef struct conn {
  int fd;
  char name[20];
} conn;

static void connpool_gives_zeroed_objects_until_full(void **state) {
  px_connpool *p;
  px_pool_stats s;
  px_conn_id id[3], none = 1234;
  conn *c[3];
  (void)state;
  assert_int_equal(px_connpool_new(3, sizeof(conn), &p), 0);
  for (int i = 0; i < 3; i++) {
    c[i] = px_conn_get(p, &id[i]);
    assert_non_null(c[i]);
    assert_int_not_equal(id[i], 0);
    assert_int_equal(c[i]->fd, 0);
    c[i]->fd = 100 + i;
    assert_ptr_equal(px_conn_lookup(p, id[i]), c[i]);
  }
  assert_null(px_conn_get(p, &none)); /* full: backpressure */
  assert_int_equal(none, 0);
  px_connpool_stats(p, &s);
  stats_are(&s, 3, 3, 3, 1);
  assert_int_equal(px_connpool_free(p), PX_EBUSY);
  /* A released slot comes back zeroed. */
  assert_int_equal(px_conn_release(p, id[1]), 0);
  px_conn_id again;
  conn *d = px_conn_get(p, &again);
  assert_ptr_equal(d, c[1]);
  assert_int_equal(d->fd, 0);
  assert_int_not_equal(again, id[1]);
  for (int i = 0; i < 3; i++)
    assert_int_equal(px_conn_release(p, i == 1 ? again : id[i]), 0);
  px_connpool_stats(p, &s);
  stats_are(&s, 3, 0, 3, 1);
  assert_int_equal(px_connpool_free(p), 0);
}

/* The point of the generation: a completion that still holds the id of a
 * released slot must not reach the slot's next owner. */
static void connpool_stale_id_never_reaches_the_next_owner(void **state) {
  px_connpool *p;
  px_conn_id old, fresh;
  (void)state;
  assert_int_equal(px_connpool_new(1, sizeof(conn), &p), 0);
  conn *a = px_conn_get(p, &old);
  a->fd = 7;
  assert_int_equal(px_conn_release(p, old), 0);
  assert_null(px_conn_lookup(p, old)); /* stale while the slot is free */
  conn *b = px_conn_get(p, &fresh);
  assert_ptr_equal(b, a);              /* the same memory ... */
  assert_null(px_conn_lookup(p, old)); /* ... but the old id stays stale */
  assert_ptr_equal(px_conn_lookup(p, fresh), b);
  assert_int_equal(px_conn_release(p, old), PX_ENOENT); /* refused */
  assert_ptr_equal(px_conn_lookup(p, fresh), b);        /* owner unharmed */
  /* Many reuses later, every old id is still stale. */
  px_conn_id ids[100];
  ids[0] = fresh;
  for (int i = 1; i < 100; i++) {
    assert_int_equal(px_conn_release(p, ids[i - 1]), 0);
    assert_non_null(px_conn_get(p, &ids[i]));
  }
  for (int i = 0; i < 99; i++)
    assert_null(px_conn_lookup(p, ids[i]));
  assert_non_null(px_conn_lookup(p, ids[99]));
  assert_int_equal(px_conn_release(p, ids[99]), 0);
  assert_int_equal(px_connpool_free(p), 0);
}

static void connpool_refuses_bogus_ids_and_sizes(void **state) {
  px_connpool *p;
  px_conn_id id;
  (void)state;
  assert_int_equal(px_connpool_new(0, 8, &p), PX_EINVAL);
  assert_int_equal(px_connpool_new(2, 0, &p), PX_EINVAL);
  assert_int_equal(px_connpool_new(2, 8, NULL), PX_EINVAL);
  assert_int_equal(px_connpool_new(2, 8, &p), 0);
  assert_non_null(px_conn_get(p, &id));
  assert_null(px_conn_lookup(p, 0));
  assert_null(px_conn_lookup(p, id + 1));            /* another slot's */
  assert_null(px_conn_lookup(p, id ^ (1ull << 32))); /* another generation */
  assert_null(px_conn_lookup(NULL, id));
  assert_int_equal(px_conn_release(p, 0), PX_ENOENT);
  assert_int_equal(px_conn_release(p, (px_conn_id)99), PX_ENOENT);
  assert_int_equal(px_conn_release(p, id), 0);
  assert_int_equal(px_conn_release(p, id), PX_ENOENT); /* twice */
  assert_int_equal(px_connpool_free(p), 0);
}

typedef struct seen {
  int n;
  px_conn_id ids[8];
  px_connpool *release_in; /* release each object visited, if set */
} seen;

static void visit(void *obj, px_conn_id id, void *ctx) {
  seen *v = ctx;
  assert_true(v->n < 8);
  assert_non_null(obj);
  v->ids[v->n++] = id;
  if (v->release_in != NULL)
    assert_int_equal(px_conn_release(v->release_in, id), 0);
}

static void connpool_foreach_visits_each_live_object_once(void **state) {
  px_connpool *p;
  px_conn_id id[4];
  px_pool_stats s;
  seen v = {0};
  (void)state;
  assert_int_equal(px_connpool_new(4, sizeof(conn), &p), 0);
  for (int i = 0; i < 4; i++)
    assert_non_null(px_conn_get(p, &id[i]));
  assert_int_equal(px_conn_release(p, id[1]), 0);
  px_connpool_foreach(p, visit, &v);
  assert_int_equal(v.n, 3);
  assert_true(v.ids[0] == id[0] && v.ids[1] == id[2] && v.ids[2] == id[3]);
  /* The visitor may release what it is given: afterwards none is left. */
  seen w = {0, {0}, p};
  px_connpool_foreach(p, visit, &w);
  assert_int_equal(w.n, 3);
  px_connpool_stats(p, &s);
  stats_are(&s, 4, 0, 4, 0);
  seen none = {0};
  px_connpool_foreach(p, visit, &none);
  assert_int_equal(none.n, 0);
  px_connpool_foreach(NULL, visit, &none); /* ignored */
  px_connpool_foreach(p, NULL, &none);
  assert_int_equal(px_connpool_free(p), 0);
}

/* A pool may outlive its loop: it is then a plain slab. */
static void bufpool_outlives_its_loop(void **state) {
  px_loop *loop;
  px_bufpool *p;
  px_pool_stats s;
  (void)state;
  assert_int_equal(px_loop_new(&loop, NULL), 0);
  assert_int_equal(px_bufpool_new(loop, 2, 64, &p), 0);
  void *b = px_buf_get(p);
  assert_non_null(b);
  assert_int_equal(px_loop_free(loop), 0);
  px_bufpool_stats(p, &s);
  stats_are(&s, 2, 1, 1, 0);
  assert_int_equal(s.lent, 0);
  assert_int_equal(px_buf_release(p, b), 0);
  assert_non_null(b = px_buf_get(p));
  assert_int_equal(px_buf_release(p, b), 0);
  assert_int_equal(px_bufpool_free(p), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(bufpool_hands_out_distinct_buffers_until_empty),
      cmocka_unit_test(bufpool_reuses_a_released_buffer),
      cmocka_unit_test(bufpool_refuses_foreign_and_double_releases),
      cmocka_unit_test(bufpool_refuses_bad_sizes),
      cmocka_unit_test(connpool_gives_zeroed_objects_until_full),
      cmocka_unit_test(connpool_stale_id_never_reaches_the_next_owner),
      cmocka_unit_test(connpool_refuses_bogus_ids_and_sizes),
      cmocka_unit_test(connpool_foreach_visits_each_live_object_once),
      cmocka_unit_test(bufpool_outlives_its_loop),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
