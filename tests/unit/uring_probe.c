/*
 * The uring backend's per-feature check: which opcodes it needs from the
 * kernel's probe (with probes made up here, each lacking one opcode), and
 * what px_loop_new does with a kernel that lacks one (the backend's test
 * hook edits the real probe): a loop naming nothing falls back to
 * posix_aio, one naming uring gets PX_ENOSYS; a kernel without multishot
 * receives keeps uring and runs them one delivery per submission.
 */
#define _POSIX_C_SOURCE 200809L

/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_uring/uring.h"
#include "helpers.h"
#include "px.h"

/* The opcodes px's requests use, and SOCKET standing for Linux 5.19's
 * features that have no probe bit (src/backend_uring/uring.c). */
#define OP(x)                                                                  \
  { IORING_OP_##x, "IORING_OP_" #x }
static const struct {
  int op;
  const char *name;
} needed[] = {
    OP(NOP),   OP(READ),         OP(WRITE),  OP(READV),   OP(WRITEV),
    OP(RECV),  OP(SEND),         OP(ACCEPT), OP(CONNECT), OP(CLOSE),
    OP(FSYNC), OP(ASYNC_CANCEL), OP(SOCKET),
};
#define NNEEDED (sizeof(needed) / sizeof(needed[0]))

enum { OPS = 256 };
static _Alignas(struct io_uring_probe) unsigned char probe_mem
    [sizeof(struct io_uring_probe) + OPS * sizeof(struct io_uring_probe_op)];

/* A probe of a kernel that has every opcode up to IORING_OP_LAST - 1. */
static struct io_uring_probe *full_probe(void) {
  struct io_uring_probe *p = (struct io_uring_probe *)(void *)probe_mem;
  memset(probe_mem, 0, sizeof(probe_mem));
  p->last_op = IORING_OP_LAST - 1;
  p->ops_len = IORING_OP_LAST;
  for (int i = 0; i < IORING_OP_LAST; i++) {
    p->ops[i].op = (uint8_t)i;
    p->ops[i].flags = IO_URING_OP_SUPPORTED;
  }
  return p;
}

static const char *needed_name(int op) {
  for (size_t i = 0; i < NNEEDED; i++)
    if (needed[i].op == op)
      return needed[i].name;
  return NULL;
}

static void a_kernel_with_every_opcode_passes(void **state) {
  (void)state;
  bool multishot = false;
  assert_null(px__uring_probe_check(full_probe(), &multishot));
  assert_true(multishot);
}

/* Each opcode in turn is missing: exactly the needed ones fail the check,
 * named; any other leaves uring usable. */
static void exactly_the_needed_opcodes_are_required(void **state) {
  (void)state;
  int failed = 0;
  for (int op = 0; op < IORING_OP_LAST; op++) {
    struct io_uring_probe *p = full_probe();
    p->ops[op].flags = 0;
    bool multishot = true;
    const char *missing = px__uring_probe_check(p, &multishot);
    const char *expect = needed_name(op);
    if (expect != NULL) {
      assert_non_null(missing);
      assert_string_equal(missing, expect);
      assert_false(multishot);
      failed++;
    } else if (missing != NULL) {
      fail_msg("opcode %d, not one px uses, was reported missing as %s", op,
               missing);
    }
  }
  assert_int_equal(failed, NNEEDED);
}

static void a_kernel_before_5_19_is_not_enough(void **state) {
  (void)state;
  bool multishot = true;
  /* 5.18's probe ends before SOCKET. */
  struct io_uring_probe *p = full_probe();
  p->last_op = IORING_OP_SOCKET - 1;
  assert_string_equal(px__uring_probe_check(p, &multishot), "IORING_OP_SOCKET");
  assert_false(multishot);
  /* 5.5's ends at CONNECT: no READ (5.6). */
  p->last_op = IORING_OP_CONNECT;
  assert_string_equal(px__uring_probe_check(p, &multishot), "IORING_OP_READ");
}

static void a_5_19_kernel_has_no_multishot_receive(void **state) {
  (void)state;
  bool multishot = true;
  struct io_uring_probe *p = full_probe();
  p->last_op = IORING_OP_SEND_ZC - 1; /* SEND_ZC and multishot: 6.0 */
  assert_null(px__uring_probe_check(p, &multishot));
  assert_false(multishot);
}

static void this_kernel_passes(void **state) {
  (void)state;
  struct io_uring_probe *p = io_uring_get_probe();
  if (p == NULL) {
    print_message("io_uring_get_probe failed: no io_uring here\n");
    skip();
  }
  bool multishot;
  const char *missing = px__uring_probe_check(p, &multishot);
  io_uring_free_probe(p);
  assert_null(missing);
}

/* ---- px_loop_new with an opcode missing (the probe hook). -------------- */

static int hidden_op = -1;

static void hide_op(struct io_uring_probe *p) {
  if (hidden_op >= 0 && hidden_op < p->ops_len)
    p->ops[hidden_op].flags = 0;
}

static int setup(void **state) {
  (void)state;
  pt_hang_guard(30);
  pt_setenv("PX_BACKEND", NULL);
  pt_setenv("PX_DEBUG", NULL);
  px__uring_probe_hook = hide_op;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  px__uring_probe_hook = NULL;
  hidden_op = -1;
  pt_setenv("PX_DEBUG", NULL);
  pt_hang_guard(0);
  return 0;
}

static int posix_aio_built(void) {
  return strstr("," PX_TEST_BUILT ",", ",posix_aio,") != NULL;
}

static int make(const char *name, px_loop **loop, char *line, size_t size) {
  px_loop_opts opts = {0};
  opts.backend = name;
  *loop = NULL;
  assert_int_equal(pt_stderr_capture_start(), 0);
  int rc = px_loop_new(loop, &opts);
  pt_stderr_capture_stop(line, size);
  return rc;
}

static void count_cb(px_loop *loop, px_op *op) {
  (void)loop;
  (*(int *)op->data)++;
}

static void missing_opcode_means_fallback_or_enosys(void **state) {
  (void)state;
  char line[512], expect[512];
  pt_setenv("PX_DEBUG", "1");
  for (size_t i = 0; i < NNEEDED; i++) {
    hidden_op = needed[i].op;
    px_loop *loop;
    int rc = make(NULL, &loop, line, sizeof(line));
    if (posix_aio_built()) {
      assert_int_equal(rc, 0);
      assert_string_equal(px_loop_backend_name(loop), "posix_aio");
      px_op nop = {0};
      int calls = 0;
      assert_int_equal(px_nop(loop, &nop, count_cb, &calls), 0);
      assert_int_equal(px_run(loop, PX_RUN_DEFAULT), 0);
      assert_int_equal(calls, 1);
      assert_int_equal(px_loop_free(loop), 0);
      snprintf(expect, sizeof(expect),
               "px: uring unavailable (%s: %s); using posix_aio\n",
               needed[i].name, px_strerror(PX_ENOSYS));
    } else {
      assert_int_equal(rc, PX_ENOSYS);
      snprintf(expect, sizeof(expect),
               "px: uring unavailable (%s: %s); no other backend is built\n",
               needed[i].name, px_strerror(PX_ENOSYS));
    }
    assert_string_equal(line, expect);
    assert_int_equal(make("uring", &loop, line, sizeof(line)), PX_ENOSYS);
    assert_null(loop);
    assert_non_null(strstr(line, needed[i].name));
  }
  /* An opcode px does not use changes nothing. */
  hidden_op = IORING_OP_FADVISE;
  px_loop *loop;
  assert_int_equal(make("uring", &loop, line, sizeof(line)), 0);
  assert_int_equal(px_loop_caps(loop) & PX_CAP_MULTISHOT, PX_CAP_MULTISHOT);
  assert_int_equal(px_loop_free(loop), 0);
}

typedef struct got {
  int calls, more, result;
  char data[16];
} got;

static void pooled_cb(px_loop *loop, px_op *op) {
  got *g = op->data;
  (void)loop;
  g->calls++;
  g->more = px_op_more(op);
  g->result = op->result;
  void *buf = px_op_buf(op);
  if (buf != NULL && op->result > 0 && op->result < (int)sizeof(g->data)) {
    memcpy(g->data, buf, (size_t)op->result);
    g->data[op->result] = '\0';
  }
}

/* Runs until g has been called, at most 5 s. */
static void run_until_called(px_loop *loop, got *g) {
  uint64_t end = pt_now_ms() + 5000;
  pt_wake_at(loop, end);
  while (g->calls == 0 && pt_now_ms() < end)
    assert_true(px_run(loop, PX_RUN_ONCE) >= 0);
  pt_wake_cancel();
  assert_int_equal(g->calls, 1);
}

static void no_multishot_kernel_delivers_once_per_submission(void **state) {
  (void)state;
  hidden_op = IORING_OP_SEND_ZC;
  px_loop *loop;
  char line[256];
  assert_int_equal(make("uring", &loop, line, sizeof(line)), 0);
  assert_int_equal(px_loop_caps(loop) & PX_CAP_MULTISHOT, 0);
  assert_int_equal(px_loop_caps(loop) & PX_CAP_BUF_SELECT, PX_CAP_BUF_SELECT);
  px_bufpool *pool;
  px_fd sp[2];
  assert_int_equal(px_bufpool_new(loop, 4, 64, &pool), 0);
  assert_int_equal(px_socketpair(loop, sp), 0);
  for (int round = 0; round < 2; round++) {
    px_op op = {0}, snd = {0};
    got g = {0}, s = {0};
    const char *msg = round ? "second" : "first";
    assert_int_equal(px_recv_pooled_ex(loop, &op, sp[1], pool,
                                       PX_RECV_MULTISHOT, pooled_cb, &g),
                     0);
    assert_int_equal(
        px_send(loop, &snd, sp[0], msg, strlen(msg), pooled_cb, &s), 0);
    run_until_called(loop, &g);
    /* Its only delivery is its last: the op is done, as on a backend
     * without multishot. */
    assert_int_equal(g.more, 0);
    assert_int_equal(g.result, (int)strlen(msg));
    assert_string_equal(g.data, msg);
    assert_int_equal(px_buf_release(pool, px_op_buf(&op)), 0);
    if (s.calls == 0)
      run_until_called(loop, &s);
    assert_int_equal(s.result, (int)strlen(msg));
  }
  assert_int_equal(px_fd_close(loop, sp[0]), 0);
  assert_int_equal(px_fd_close(loop, sp[1]), 0);
  assert_int_equal(px_bufpool_free(pool), 0);
  px_stats st;
  px_loop_stats(loop, &st);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(px_loop_free(loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(a_kernel_with_every_opcode_passes),
      cmocka_unit_test(exactly_the_needed_opcodes_are_required),
      cmocka_unit_test(a_kernel_before_5_19_is_not_enough),
      cmocka_unit_test(a_5_19_kernel_has_no_multishot_receive),
      cmocka_unit_test(this_kernel_passes),
      cmocka_unit_test_setup_teardown(missing_opcode_means_fallback_or_enosys,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          no_multishot_kernel_delivers_once_per_submission, setup, teardown),
  };
  return cmocka_run_group_tests_name("unit_uring_probe", tests, NULL, NULL);
}
