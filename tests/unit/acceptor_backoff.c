/*
 * The acceptor out of descriptors: with accept4 made to fail (a seccomp
 * filter in a child process, so that no descriptor table has to be filled
 * and nothing else on the machine is touched), a failed accept is retried
 * 10 ms later, not at once: the listener stays readable, and an accept
 * posted again at once would spin.  EMFILE (the process's table) and
 * ENFILE (the system's) both; the failure is counted and reported as
 * itself.  posix_aio only: io_uring's accepts do not pass through the
 * system call that the filter sees.
 */
#define _POSIX_C_SOURCE 200809L

/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "helpers.h"
#include "px.h"
#include "seccomp_block.h"

enum { WINDOW_MS = 200, BACKOFF_MS = 10 };

typedef struct child_case {
  int err;     /* what accept4 answers */
  int expect;  /* the PX_E* code the acceptor should record */
  int verbose; /* print what was seen */
} child_case;

static void never_called(px_acceptor *acc, px_fd fd, void *conn, px_conn_id id,
                         void *data) {
  (void)acc, (void)fd, (void)conn, (void)id, (void)data;
}

static void stop_cb(px_loop *loop, px_op *op) {
  (void)op;
  px_stop(loop);
}

/* In the child: 0 when the acceptor backed off and recorded the error,
 * else the number of the check that failed. */
static int child(void *arg) {
  const child_case *c = arg;
  px_loop_opts opts = {0};
  opts.backend = "posix_aio";
  px_loop *loop = NULL;
  px_connpool *pool = NULL;
  px_acceptor *acc = NULL;
  px_fd l = PX_INVALID_FD, s = PX_INVALID_FD;
  px_addr to;
  px_op conn = {0}, timer = {0};
  if (px_loop_new(&loop, &opts) != 0 ||
      px_tcp_listen(loop, "127.0.0.1", 0, 16, &l) != 0 ||
      px_addr_local(l, &to) != 0 || px_connpool_new(8, 64, &pool) != 0)
    return 1;
  if (pt_fail_accept(c->err) != 0)
    return 2;
  if (px_acceptor_start(loop, l, pool, 4, never_called, NULL, &acc) != 0)
    return 3;
  /* A client waits in the backlog: the listener is readable throughout. */
  if (px_tcp_socket(loop, &to, &s) != 0 ||
      px_connect(loop, &conn, s, &to, NULL, NULL) != 0 ||
      px_timeout(loop, &timer, WINDOW_MS, stop_cb, NULL) != 0)
    return 4;
  if (px_run(loop, PX_RUN_DEFAULT) < 0)
    return 5;
  px_acceptor_stats st;
  px_acceptor_stats_get(acc, &st);
  if (c->verbose)
    printf("[ info ] accept failing with %s: %llu failed accepts in %d ms, "
           "last error %d (%s)\n",
           c->err == EMFILE ? "EMFILE" : "ENFILE",
           (unsigned long long)st.failed, WINDOW_MS, st.last_error,
           px_strerror(st.last_error));
  /* One round of the acceptor's accepts per backoff, and a margin. */
  if (st.failed == 0 || st.failed > 4 * 4 * (WINDOW_MS / BACKOFF_MS))
    return 6;
  /* ... and it does retry: a few rounds in the window at least, or a
   * listener out of descriptors once would never accept again. */
  if (st.failed < 4 * 3)
    return 9;
  if (st.last_error != c->expect)
    return 7;
  if (st.accepted != 0)
    return 8;
  return 0;
}

static void run_case(int err, int expect) {
  child_case c = {err, expect, 1};
  int rc = pt_in_child(child, &c);
  if (rc == 2) {
    printf("           skipped: no seccomp filter here\n");
    skip();
  }
  if (rc != 0)
    fail_msg("the child failed check %d (see the line above)", rc);
}

static void
acceptor_backs_off_when_the_process_is_out_of_descriptors(void **state) {
  (void)state;
  run_case(EMFILE, PX_EMFILE);
}

static void
acceptor_backs_off_when_the_system_is_out_of_descriptors(void **state) {
  (void)state;
  run_case(ENFILE, PX_ENFILE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(
          acceptor_backs_off_when_the_process_is_out_of_descriptors),
      cmocka_unit_test(
          acceptor_backs_off_when_the_system_is_out_of_descriptors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
