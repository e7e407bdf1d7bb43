/*
 * Which backend px_loop_new gives: the one px_loop_opts.backend names,
 * else PX_BACKEND's, else the first built that starts; the errors for
 * names it cannot honour; the PX_DEBUG line; loops made on several threads
 * at once; loops of different backends side by side on one thread.
 *
 * PX_TEST_BUILT lists the backends this build holds, best first (the
 * build passes it): what the choice is made from is what this tests.
 */
/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "px.h"

static const char *const all_names[] = {"uring", "posix_aio", "iocp"};
#define NALL (sizeof(all_names) / sizeof(all_names[0]))

static const char *built[NALL];
static size_t nbuilt;

static void parse_built(void) {
  static char list[] = PX_TEST_BUILT;
  for (char *s = strtok(list, ","); s != NULL && nbuilt < NALL;
       s = strtok(NULL, ","))
    built[nbuilt++] = s;
}

static int is_built(const char *name) {
  for (size_t i = 0; i < nbuilt; i++)
    if (strcmp(built[i], name) == 0)
      return 1;
  return 0;
}

static int setup(void **state) {
  (void)state;
  pt_hang_guard(30);
  pt_setenv("PX_BACKEND", NULL);
  pt_setenv("PX_DEBUG", NULL);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  pt_setenv("PX_BACKEND", NULL);
  pt_setenv("PX_DEBUG", NULL);
  pt_hang_guard(0);
  return 0;
}

/* px_loop_new with opts.backend = name (NULL: none); *loop is NULL unless
 * it returned 0. */
static int make(px_loop **loop, const char *name) {
  px_loop_opts opts = {0};
  opts.backend = name;
  *loop = (px_loop *)&opts; /* must be overwritten either way */
  int rc = px_loop_new(loop, &opts);
  if (rc != 0)
    assert_null(*loop);
  else
    assert_non_null(*loop);
  return rc;
}

static void count_cb(px_loop *loop, px_op *op) {
  (void)loop;
  (*(int *)op->data)++;
}

/* The loop works: a nop and a 1 ms timer complete, and it frees clean. */
static void use_and_free(px_loop *loop) {
  px_op nop = {0}, timer = {0};
  int calls = 0;
  assert_int_equal(px_nop(loop, &nop, count_cb, &calls), 0);
  assert_int_equal(px_timeout(loop, &timer, 1, count_cb, &calls), 0);
  assert_int_equal(px_run(loop, PX_RUN_DEFAULT), 0);
  assert_int_equal(calls, 2);
  assert_int_equal(nop.result, 0);
  assert_int_equal(timer.result, 0);
  assert_int_equal(px_loop_free(loop), 0);
}

/* The name px gives a loop that names nothing (PX_BACKEND unset). */
static const char *default_name(void) {
  static char name[32];
  px_loop *loop;
  pt_setenv("PX_BACKEND", NULL);
  assert_int_equal(make(&loop, NULL), 0);
  snprintf(name, sizeof(name), "%s", px_loop_backend_name(loop));
  assert_int_equal(px_loop_free(loop), 0);
  return name;
}

static void each_built_backend_runs_when_named_in_opts(void **state) {
  (void)state;
  for (size_t i = 0; i < nbuilt; i++) {
    px_loop *loop;
    assert_int_equal(make(&loop, built[i]), 0);
    assert_string_equal(px_loop_backend_name(loop), built[i]);
    use_and_free(loop);
  }
}

static void each_built_backend_runs_when_named_by_px_backend(void **state) {
  (void)state;
  for (size_t i = 0; i < nbuilt; i++) {
    px_loop *loop;
    assert_int_equal(pt_setenv("PX_BACKEND", built[i]), 0);
    assert_int_equal(make(&loop, NULL), 0);
    assert_string_equal(px_loop_backend_name(loop), built[i]);
    use_and_free(loop);
  }
}

static void the_default_is_a_built_backend(void **state) {
  (void)state;
  const char *name = default_name();
  assert_true(is_built(name));
  /* Where the first built starts, it is the one (io_uring is usable on
   * the machines that run this; uring_refused covers where it is not). */
  px_loop *loop;
  if (make(&loop, built[0]) == 0) {
    assert_string_equal(name, built[0]);
    assert_int_equal(px_loop_free(loop), 0);
  }
}

static void opts_name_beats_px_backend(void **state) {
  (void)state;
  px_loop *loop;
  /* Even a PX_BACKEND that names nothing: opts decides alone. */
  assert_int_equal(pt_setenv("PX_BACKEND", "no-such-backend"), 0);
  for (size_t i = 0; i < nbuilt; i++) {
    assert_int_equal(make(&loop, built[i]), 0);
    assert_string_equal(px_loop_backend_name(loop), built[i]);
    use_and_free(loop);
  }
  /* And another built backend in PX_BACKEND. */
  assert_int_equal(pt_setenv("PX_BACKEND", built[0]), 0);
  assert_int_equal(make(&loop, built[nbuilt - 1]), 0);
  assert_string_equal(px_loop_backend_name(loop), built[nbuilt - 1]);
  use_and_free(loop);
}

static void auto_and_empty_choose_as_if_nothing_was_named(void **state) {
  (void)state;
  char expect[32];
  snprintf(expect, sizeof(expect), "%s", default_name());
  px_loop *loop;
  /* "auto" in opts overrides PX_BACKEND. */
  assert_int_equal(pt_setenv("PX_BACKEND", "no-such-backend"), 0);
  assert_int_equal(make(&loop, "auto"), 0);
  assert_string_equal(px_loop_backend_name(loop), expect);
  use_and_free(loop);
  assert_int_equal(pt_setenv("PX_BACKEND", "auto"), 0);
  assert_int_equal(make(&loop, NULL), 0);
  assert_string_equal(px_loop_backend_name(loop), expect);
  use_and_free(loop);
  /* An empty PX_BACKEND counts as unset. */
  assert_int_equal(pt_setenv("PX_BACKEND", ""), 0);
  assert_int_equal(make(&loop, NULL), 0);
  assert_string_equal(px_loop_backend_name(loop), expect);
  use_and_free(loop);
}

static void unknown_name_is_refused_with_einval(void **state) {
  (void)state;
  static const char *const bad[] = {"no-such-backend", "",      "URING",
                                    "uring ",          "posix", "epoll"};
  px_loop *loop;
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    assert_int_equal(make(&loop, bad[i]), PX_EINVAL);
    if (bad[i][0] == '\0')
      continue; /* an empty PX_BACKEND is unset */
    assert_int_equal(pt_setenv("PX_BACKEND", bad[i]), 0);
    assert_int_equal(make(&loop, NULL), PX_EINVAL);
    assert_int_equal(pt_setenv("PX_BACKEND", NULL), 0);
  }
}

static void name_not_built_is_refused_with_eopnotsupp(void **state) {
  (void)state;
  int tried = 0;
  for (size_t i = 0; i < NALL; i++) {
    if (is_built(all_names[i]))
      continue;
    px_loop *loop;
    assert_int_equal(make(&loop, all_names[i]), PX_EOPNOTSUPP);
    assert_int_equal(pt_setenv("PX_BACKEND", all_names[i]), 0);
    assert_int_equal(make(&loop, NULL), PX_EOPNOTSUPP);
    /* ... also with opts naming a built one: then opts wins. */
    assert_int_equal(make(&loop, built[0]), 0);
    assert_int_equal(px_loop_free(loop), 0);
    assert_int_equal(pt_setenv("PX_BACKEND", NULL), 0);
    tried++;
  }
  assert_true(tried > 0); /* no build holds all three */
}

static void no_loop_has_no_name_and_no_caps(void **state) {
  (void)state;
  assert_null(px_loop_backend_name(NULL));
  assert_int_equal(px_loop_caps(NULL), 0);
}

/* ---- PX_DEBUG. --------------------------------------------------------- */

/* What px_loop_new(opts.backend = name) writes on stderr, and its result. */
static int debug_line(const char *name, char *out, size_t size) {
  px_loop *loop = NULL;
  px_loop_opts opts = {0};
  opts.backend = name;
  assert_int_equal(pt_stderr_capture_start(), 0);
  int rc = px_loop_new(&loop, &opts);
  pt_stderr_capture_stop(out, size);
  if (rc == 0)
    assert_int_equal(px_loop_free(loop), 0);
  return rc;
}

static void px_debug_prints_one_line_saying_why(void **state) {
  (void)state;
  char out[1024], expect[256];
  assert_int_equal(pt_setenv("PX_DEBUG", "1"), 0);
  for (size_t i = 0; i < nbuilt; i++) {
    assert_int_equal(debug_line(built[i], out, sizeof(out)), 0);
    snprintf(expect, sizeof(expect),
             "px: using %s (named by px_loop_opts.backend)\n", built[i]);
    assert_string_equal(out, expect);
  }
  assert_int_equal(pt_setenv("PX_BACKEND", built[0]), 0);
  assert_int_equal(debug_line(NULL, out, sizeof(out)), 0);
  snprintf(expect, sizeof(expect), "px: using %s (named by PX_BACKEND)\n",
           built[0]);
  assert_string_equal(out, expect);
  assert_int_equal(pt_setenv("PX_BACKEND", NULL), 0);

  assert_int_equal(debug_line("no-such-backend", out, sizeof(out)), PX_EINVAL);
  assert_non_null(strstr(out, "px: px_loop_opts.backend \"no-such-backend\": "
                              "no backend has that name (built: "));
  assert_non_null(strstr(out, built[0]));
  for (size_t i = 0; i < NALL; i++) {
    if (is_built(all_names[i]))
      continue;
    assert_int_equal(debug_line(all_names[i], out, sizeof(out)), PX_EOPNOTSUPP);
    assert_non_null(strstr(out, "not built into this library"));
  }
  /* One line per loop, and it starts with "px: ". */
  assert_int_equal(debug_line(NULL, out, sizeof(out)), 0);
  assert_memory_equal(out, "px: ", 4);
  assert_non_null(strstr(out, "using "));
  assert_non_null(strchr(out, '\n'));
  assert_int_equal(strchr(out, '\n')[1], '\0');
}

static void no_debug_line_unless_px_debug_is_set(void **state) {
  (void)state;
  char out[256];
  assert_int_equal(debug_line(NULL, out, sizeof(out)), 0);
  assert_string_equal(out, "");
  assert_int_equal(debug_line("no-such-backend", out, sizeof(out)), PX_EINVAL);
  assert_string_equal(out, "");
  assert_int_equal(pt_setenv("PX_DEBUG", "0"), 0);
  assert_int_equal(debug_line(NULL, out, sizeof(out)), 0);
  assert_string_equal(out, "");
}

/* ---- Threads. ---------------------------------------------------------- */

enum { THREADS = 4, LOOPS = 25 };

typedef struct maker {
  int index;
  px_loop *loops[LOOPS]; /* made and used, freed after the join */
  int mismatch;          /* loops that got another backend than asked for */
  int failed;            /* px_loop_new or an op failed */
} maker;

/* Each thread asks in turn for every built backend and for none, and
 * keeps its loops: freeing them after the join means no ring is unmapped
 * while another thread maps one, where ThreadSanitizer, blind to the
 * kernel's mappings, would take the reused address for a race. */
static void maker_main(void *arg) {
  maker *m = arg;
  for (int i = 0; i < LOOPS; i++) {
    size_t k = (size_t)(m->index + i) % (nbuilt + 1);
    px_loop_opts opts = {0};
    opts.backend = k < nbuilt ? built[k] : NULL;
    px_loop *loop = NULL;
    if (px_loop_new(&loop, &opts) != 0) {
      m->failed++;
      continue;
    }
    m->loops[i] = loop;
    const char *name = px_loop_backend_name(loop);
    if (opts.backend != NULL && strcmp(name, opts.backend) != 0)
      m->mismatch++;
    px_op nop = {0};
    int calls = 0;
    if (px_nop(loop, &nop, count_cb, &calls) != 0 ||
        px_run(loop, PX_RUN_DEFAULT) != 0 || calls != 1)
      m->failed++;
  }
}

static void loops_made_on_several_threads_get_the_backend_named(void **state) {
  (void)state;
  static maker m[THREADS];
  pt_thread *t[THREADS];
  for (int i = 0; i < THREADS; i++) {
    memset(&m[i], 0, sizeof(m[i]));
    m[i].index = i;
    assert_int_equal(pt_thread_start(&t[i], maker_main, &m[i]), 0);
  }
  for (int i = 0; i < THREADS; i++)
    pt_thread_join(t[i]);
  for (int i = 0; i < THREADS; i++) {
    assert_int_equal(m[i].failed, 0);
    assert_int_equal(m[i].mismatch, 0);
    /* Idle, so this thread may free them. */
    for (int k = 0; k < LOOPS; k++) {
      assert_non_null(m[i].loops[k]);
      assert_int_equal(px_loop_free(m[i].loops[k]), 0);
    }
  }
}

/* ---- Two backends, one thread. ----------------------------------------- */

typedef struct pair {
  px_loop *other; /* run from inside this loop's callback */
  int other_done;
  int calls;
} pair;

static void write_cb(px_loop *loop, px_op *op) {
  (void)loop;
  (*(int *)op->data)++;
}

/* Runs the other loop until its write completed, from inside a callback:
 * both loops' SIGPIPE handling is active at once on this thread. */
static void nested_cb(px_loop *loop, px_op *op) {
  pair *p = op->data;
  (void)loop;
  p->calls++;
  while (!p->other_done)
    if (px_run(p->other, PX_RUN_ONCE) < 0)
      break;
}

/* A broken pipe on each loop, the second loop run from inside a callback
 * of the first: each write fails with PX_EPIPE, no SIGPIPE is raised, and
 * the thread's mask is as before (the guard both backends take nests). */
static void two_loops_on_one_thread(const char *a, const char *b) {
  px_loop *la, *lb;
  assert_int_equal(make(&la, a), 0);
  assert_int_equal(make(&lb, b), 0);
  px_fd pa[2], pb[2];
  assert_int_equal(px_pipe(la, pa), 0);
  assert_int_equal(px_pipe(lb, pb), 0);
  assert_int_equal(px_fd_close(la, pa[0]), 0);
  assert_int_equal(px_fd_close(lb, pb[0]), 0);
  pt_sigmask before, after;
  pt_sigmask_save(&before);
  pt_sigpipe_count_start();
  px_op wa = {0}, wb = {0}, nop = {0};
  int a_done = 0;
  pair p = {lb, 0, 0};
  int rc = px_write(la, &wa, pa[1], "lost", 4, PX_CUR, write_cb, &a_done);
  if (rc == 0)
    rc = px_write(lb, &wb, pb[1], "lost", 4, PX_CUR, write_cb, &p.other_done);
  if (rc == 0)
    rc = px_nop(la, &nop, nested_cb, &p);
  if (rc == 0)
    rc = px_run(la, PX_RUN_DEFAULT);
  int signals = pt_sigpipe_count_stop();
  pt_sigmask_save(&after);
  assert_int_equal(rc, 0);
  assert_int_equal(signals, 0);
  assert_true(pt_sigmask_equal(&before, &after));
  assert_int_equal(a_done, 1);
  assert_int_equal(p.other_done, 1);
  assert_int_equal(p.calls, 1);
  assert_int_equal(wa.result, PX_EPIPE);
  assert_int_equal(wb.result, PX_EPIPE);
  assert_string_equal(px_loop_backend_name(la), a);
  assert_string_equal(px_loop_backend_name(lb), b);
  assert_int_equal(px_fd_close(la, pa[1]), 0);
  assert_int_equal(px_fd_close(lb, pb[1]), 0);
  assert_int_equal(px_loop_free(lb), 0);
  assert_int_equal(px_loop_free(la), 0);
}

static void loops_of_any_two_built_backends_share_a_thread(void **state) {
  (void)state;
  for (size_t i = 0; i < nbuilt; i++)
    for (size_t k = 0; k < nbuilt; k++)
      two_loops_on_one_thread(built[i], built[k]);
}

int main(void) {
  parse_built();
  const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
      T(each_built_backend_runs_when_named_in_opts),
      T(each_built_backend_runs_when_named_by_px_backend),
      T(the_default_is_a_built_backend),
      T(opts_name_beats_px_backend),
      T(auto_and_empty_choose_as_if_nothing_was_named),
      T(unknown_name_is_refused_with_einval),
      T(name_not_built_is_refused_with_eopnotsupp),
      T(no_loop_has_no_name_and_no_caps),
      T(px_debug_prints_one_line_saying_why),
      T(no_debug_line_unless_px_debug_is_set),
      T(loops_made_on_several_threads_get_the_backend_named),
      T(loops_of_any_two_built_backends_share_a_thread),
#undef T
  };
  return cmocka_run_group_tests_name("unit_backend_choice", tests, NULL, NULL);
}
