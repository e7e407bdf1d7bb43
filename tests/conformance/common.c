#include "conf.h"

int g_seq;
static uint64_t test_start_ms;

void rec_cb(px_loop *loop, px_op *op) {
  rec *r = op->data;
  (void)loop;
  r->calls++;
  r->result = op->result;
  r->order = g_seq++;
  r->at_ms = pt_now_ms();
}

int test_setup(void **state) {
  (void)state;
  g_seq = 0;
  test_start_ms = pt_now_ms();
  pt_hang_guard(30);
  return 0;
}

int test_teardown(void **state) {
  (void)state;
  pt_wake_cancel();
  pt_hang_guard(0);
  pt_alarm_stop(); /* a test that failed with its signals running */
  /* PX_TEST_TIMES=1 shows how long each test took. */
  if (getenv("PX_TEST_TIMES") != NULL)
    printf("           took %d ms\n", (int)(pt_now_ms() - test_start_ms));
  return 0;
}

px_loop *new_loop(void) {
  px_loop *loop = NULL;
  assert_int_equal(px_loop_new(&loop, NULL), 0);
  assert_non_null(loop);
  return loop;
}

px_loop *new_loop_entries(uint32_t entries) {
  px_loop_opts opts = {.entries = entries};
  px_loop *loop = NULL;
  assert_int_equal(px_loop_new(&loop, &opts), 0);
  assert_non_null(loop);
  return loop;
}

void finish(px_loop *loop) {
  px_stats s;
  px_loop_stats(loop, &s);
  assert_int_equal(s.in_flight, 0);
  assert_int_equal(s.submitted, s.completed);
  assert_int_equal(px_loop_free(loop), 0);
}

void settle(px_loop *loop) {
  px_op op = {0};
  rec r = {0};
  int seq = g_seq;
  assert_int_equal(px_timeout(loop, &op, 20, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  g_seq = seq; /* the settle timer is not part of the test's order */
}

px_fd tcp_listener(px_loop *loop, int *port) {
  px_fd l = PX_INVALID_FD;
  px_addr a;
  assert_int_equal(px_tcp_listen(loop, "127.0.0.1", 0, 64, &l), 0);
  assert_int_equal(px_addr_local(l, &a), 0);
  *port = px_addr_port(&a);
  assert_true(*port > 0 && *port < 65536);
  return l;
}

void tcp_pair(px_loop *loop, px_fd *client, px_fd *server) {
  int port;
  px_fd l = tcp_listener(loop, &port);
  px_addr to;
  px_fd c = PX_INVALID_FD;
  px_op aop = {0}, cop = {0};
  rec ar = {0}, cr = {0};
  assert_int_equal(px_addr_set(&to, "127.0.0.1", port), 0);
  assert_int_equal(px_tcp_socket(loop, &to, &c), 0);
  assert_int_equal(px_accept(loop, &aop, l, rec_cb, &ar), 0);
  assert_int_equal(px_connect(loop, &cop, c, &to, rec_cb, &cr), 0);
  RUN_UNTIL(loop, ar.calls == 1 && cr.calls == 1, 5000);
  assert_int_equal(ar.result, 0);
  assert_int_equal(cr.result, 0);
  assert_true(px_op_fd(&aop) != PX_INVALID_FD);
  close_fd(loop, l);
  *client = c;
  *server = px_op_fd(&aop);
}

void socketpair_new(px_loop *loop, px_fd fds[2]) {
  assert_int_equal(px_socketpair(loop, fds), 0);
  assert_true(fds[0] != PX_INVALID_FD && fds[1] != PX_INVALID_FD);
}

void close_fd(px_loop *loop, px_fd fd) {
  assert_int_equal(px_fd_close(loop, fd), 0);
}

px_fd temp_file(px_loop *loop, char *path, size_t size) {
  px_fd fd = PX_INVALID_FD;
  assert_int_equal(pt_temp_path(path, size, "file"), 0);
  assert_int_equal(
      px_file_open(loop, path, PX_O_RDWR | PX_O_CREAT | PX_O_TRUNC, 0600, &fd),
      0);
  return fd;
}

int sync_read(px_loop *loop, px_fd fd, void *buf, size_t len, int64_t off) {
  px_op op = {0};
  rec r = {0};
  assert_int_equal(px_read(loop, &op, fd, buf, len, off, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  return r.result;
}

int sync_write(px_loop *loop, px_fd fd, const void *buf, size_t len,
               int64_t off) {
  px_op op = {0};
  rec r = {0};
  assert_int_equal(px_write(loop, &op, fd, buf, len, off, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  return r.result;
}

int sync_recv(px_loop *loop, px_fd fd, void *buf, size_t len) {
  px_op op = {0};
  rec r = {0};
  assert_int_equal(px_recv(loop, &op, fd, buf, len, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  return r.result;
}

int sync_send(px_loop *loop, px_fd fd, const void *buf, size_t len) {
  px_op op = {0};
  rec r = {0};
  assert_int_equal(px_send(loop, &op, fd, buf, len, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  return r.result;
}

int fill_send_buffer(px_loop *loop, px_fd fd, int *result) {
  enum { BIG = 8 << 20 };
  char *big = calloc(1, BIG);
  px_op op = {0};
  rec r = {0};
  assert_non_null(big);
  /* A backend that takes part of the buffer completes short at once; one
   * that waits for room to take it all is stopped by the deadline. */
  assert_int_equal(px_op_deadline(&op, 300), 0);
  assert_int_equal(px_send(loop, &op, fd, big, BIG, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  free(big);
  if (result != NULL)
    *result = r.result;
  if (r.result == PX_ETIMEDOUT)
    return 1;
  assert_true(r.result > 0);
  return r.result < BIG;
}
