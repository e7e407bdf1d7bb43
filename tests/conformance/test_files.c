/* Files (positional and PX_CUR), fsync, and pipes. */
#include "conf.h"

void file_write_and_read_at_offsets(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = temp_file(loop, path, sizeof(path));
  char buf[32];
  static const char zeros[10] = {0};
  (void)state;
  assert_int_equal(sync_write(loop, fd, "hello", 5, 0), 5);
  assert_int_equal(sync_write(loop, fd, "world", 5, 4096), 5);
  assert_int_equal(sync_read(loop, fd, buf, 5, 4096), 5);
  assert_memory_equal(buf, "world", 5);
  assert_int_equal(sync_read(loop, fd, buf, 5, 0), 5);
  assert_memory_equal(buf, "hello", 5);
  /* The gap between the two writes reads as zeros. */
  assert_int_equal(sync_read(loop, fd, buf, 10, 100), 10);
  assert_memory_equal(buf, zeros, 10);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

void file_read_past_eof_is_short(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = temp_file(loop, path, sizeof(path));
  char buf[100];
  (void)state;
  assert_int_equal(sync_write(loop, fd, "0123456789", 10, 0), 10);
  assert_int_equal(sync_read(loop, fd, buf, sizeof(buf), 4), 6);
  assert_memory_equal(buf, "456789", 6);
  assert_int_equal(sync_read(loop, fd, buf, sizeof(buf), 10), 0);
  assert_int_equal(sync_read(loop, fd, buf, sizeof(buf), 1000), 0);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

void file_writev_and_readv_at_offset(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = temp_file(loop, path, sizeof(path));
  char a[4], b[16], head[3];
  px_iov out[3] = {{"abc", 3}, {"defg", 4}, {"hi", 2}};
  px_iov in[2] = {{a, sizeof(a)}, {b, sizeof(b)}};
  px_op op = {0};
  rec r = {0};
  static const char zeros[3] = {0};
  (void)state;
  assert_int_equal(px_writev(loop, &op, fd, out, 3, 3, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 9);
  assert_int_equal(px_readv(loop, &op, fd, in, 2, 3, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 2, 5000);
  assert_int_equal(r.result, 9);
  assert_memory_equal(a, "abcd", 4);
  assert_memory_equal(b, "efghi", 5);
  assert_int_equal(sync_read(loop, fd, head, 3, 0), 3);
  assert_memory_equal(head, zeros, 3);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

void file_write_at_cur_advances_the_position(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = temp_file(loop, path, sizeof(path));
  char buf[16];
  (void)state;
  assert_int_equal(sync_write(loop, fd, "abc", 3, PX_CUR), 3);
  assert_int_equal(sync_write(loop, fd, "def", 3, PX_CUR), 3);
  assert_int_equal(sync_read(loop, fd, buf, sizeof(buf), 0), 6);
  assert_memory_equal(buf, "abcdef", 6);
  /* A positional read does not move the position: it is at the end. */
  assert_int_equal(sync_read(loop, fd, buf, sizeof(buf), PX_CUR), 0);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

void file_fsync_and_fdatasync_complete_with_zero(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = temp_file(loop, path, sizeof(path));
  px_op op = {0};
  rec r = {0};
  (void)state;
  assert_int_equal(sync_write(loop, fd, "durable", 7, 0), 7);
  assert_int_equal(px_fsync(loop, &op, fd, 0, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 0);
  assert_int_equal(sync_write(loop, fd, "data", 4, 7), 4);
  assert_int_equal(px_fsync(loop, &op, fd, PX_FSYNC_DATA, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 2, 5000);
  assert_int_equal(r.result, 0);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

void file_open_of_missing_path_gives_enoent(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = PX_INVALID_FD;
  (void)state;
  assert_int_equal(pt_temp_path(path, sizeof(path), "missing"), 0);
  assert_int_equal(px_file_open(loop, path, PX_O_RDONLY, 0, &fd), PX_ENOENT);
  finish(loop);
}

void file_open_excl_of_existing_path_gives_eexist(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = temp_file(loop, path, sizeof(path));
  px_fd again = PX_INVALID_FD;
  (void)state;
  assert_int_equal(px_file_open(loop, path, PX_O_RDWR | PX_O_CREAT | PX_O_EXCL,
                                0600, &again),
                   PX_EEXIST);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

void close_of_file_completes_with_zero(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = temp_file(loop, path, sizeof(path));
  px_op op = {0};
  rec r = {0};
  char buf[4];
  (void)state;
  px_op other = {0};
  rec o = {0};
  assert_int_equal(px_close(loop, &op, fd, rec_cb, &r), 0);
  /* From the close call on, the handle is refused. */
  assert_int_equal(px_read(loop, &other, fd, buf, sizeof(buf), 0, rec_cb, &o),
                   PX_EBADF);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 0);
  /* The handle is really closed: the system no longer knows it.  Checked
   * at once, before anything here could reuse the number. */
  assert_int_equal(px_adopt(loop, fd), PX_EBADF);
  assert_int_equal(px_read(loop, &other, fd, buf, sizeof(buf), 0, rec_cb, &o),
                   PX_EBADF);
  assert_int_equal(px_fsync(loop, &other, fd, 0, rec_cb, &o), PX_EBADF);
  settle(loop);
  assert_int_equal(r.calls, 1);
  assert_int_equal(o.calls, 0);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

void pipe_write_and_read_at_cur(void **state) {
  px_loop *loop = new_loop();
  px_fd p[2];
  char buf[64];
  (void)state;
  assert_int_equal(px_pipe(loop, p), 0);
  assert_int_equal(sync_write(loop, p[1], "through the pipe", 16, PX_CUR), 16);
  assert_int_equal(sync_read(loop, p[0], buf, sizeof(buf), PX_CUR), 16);
  assert_memory_equal(buf, "through the pipe", 16);
  close_fd(loop, p[0]);
  close_fd(loop, p[1]);
  finish(loop);
}

void pipe_writev_and_readv_at_cur(void **state) {
  px_loop *loop = new_loop();
  px_fd p[2];
  char a[4], b[16];
  px_iov out[3] = {{"abc", 3}, {"defg", 4}, {"hi", 2}};
  px_iov in[2] = {{a, sizeof(a)}, {b, sizeof(b)}};
  px_op op = {0};
  rec r = {0};
  (void)state;
  assert_int_equal(px_pipe(loop, p), 0);
  assert_int_equal(px_writev(loop, &op, p[1], out, 3, PX_CUR, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 9);
  assert_int_equal(px_readv(loop, &op, p[0], in, 2, PX_CUR, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 2, 5000);
  assert_int_equal(r.result, 9);
  assert_memory_equal(a, "abcd", 4);
  assert_memory_equal(b, "efghi", 5);
  close_fd(loop, p[0]);
  close_fd(loop, p[1]);
  finish(loop);
}

void pipe_read_gives_zero_after_writer_closed(void **state) {
  px_loop *loop = new_loop();
  px_fd p[2];
  px_op rop = {0}, cop = {0};
  rec rr = {0}, cr = {0};
  char buf[16];
  (void)state;
  assert_int_equal(px_pipe(loop, p), 0);
  assert_int_equal(sync_write(loop, p[1], "last", 4, PX_CUR), 4);
  assert_int_equal(px_close(loop, &cop, p[1], rec_cb, &cr), 0);
  RUN_UNTIL(loop, cr.calls == 1, 5000);
  assert_int_equal(cr.result, 0);
  assert_int_equal(sync_read(loop, p[0], buf, sizeof(buf), PX_CUR), 4);
  assert_int_equal(
      px_read(loop, &rop, p[0], buf, sizeof(buf), PX_CUR, rec_cb, &rr), 0);
  RUN_UNTIL(loop, rr.calls == 1, 5000);
  assert_int_equal(rr.result, 0);
  close_fd(loop, p[0]);
  finish(loop);
}

/* ---- A stream transfer driven by callbacks, used for pipes and TCP. ---- */

enum { XFER_TOTAL = 1 << 20, XFER_CHUNK = 64 * 1024 };

typedef struct xfer {
  px_fd out, in;
  int is_pipe;
  uint8_t *src, *dst;
  size_t sent, received;
  int writes, send_err, recv_err, eof;
  px_op sop, rop, cop;
  rec cr;
} xfer;

static int xfer_submit_send(px_loop *loop, xfer *x);
static int xfer_submit_recv(px_loop *loop, xfer *x);

static void xfer_send_cb(px_loop *loop, px_op *op) {
  xfer *x = op->data;
  if (op->result <= 0) {
    x->send_err = op->result ? op->result : PX_EUNKNOWN;
    return;
  }
  x->sent += (size_t)op->result;
  x->writes++;
  if (x->sent < XFER_TOTAL) {
    int rc = xfer_submit_send(loop, x);
    if (rc != 0)
      x->send_err = rc;
  } else if (x->is_pipe) {
    int rc = px_close(loop, &x->cop, x->out, rec_cb, &x->cr);
    if (rc != 0)
      x->send_err = rc;
  } else {
    x->send_err = px_shutdown_write(x->out);
  }
}

static void xfer_recv_cb(px_loop *loop, px_op *op) {
  xfer *x = op->data;
  if (op->result < 0) {
    x->recv_err = op->result;
    return;
  }
  if (op->result == 0) {
    x->eof = 1;
    return;
  }
  x->received += (size_t)op->result;
  int rc = xfer_submit_recv(loop, x);
  if (rc != 0)
    x->recv_err = rc;
}

/* The whole rest in one call: the kernel takes what fits and the result
 * says how much, so short writes are exercised. */
static int xfer_submit_send(px_loop *loop, xfer *x) {
  size_t len = XFER_TOTAL - x->sent;
  if (x->is_pipe)
    return px_write(loop, &x->sop, x->out, x->src + x->sent, len, PX_CUR,
                    xfer_send_cb, x);
  return px_send(loop, &x->sop, x->out, x->src + x->sent, len, xfer_send_cb, x);
}

/* dst has room for one chunk past the total, so extra bytes are seen. */
static int xfer_submit_recv(px_loop *loop, xfer *x) {
  size_t room = XFER_TOTAL + XFER_CHUNK - x->received;
  size_t len = room < XFER_CHUNK ? room : XFER_CHUNK;
  if (len == 0) {
    x->recv_err = PX_EMSGSIZE;
    return 0;
  }
  if (x->is_pipe)
    return px_read(loop, &x->rop, x->in, x->dst + x->received, len, PX_CUR,
                   xfer_recv_cb, x);
  return px_recv(loop, &x->rop, x->in, x->dst + x->received, len, xfer_recv_cb,
                 x);
}

static void stream_transfer_1mib(px_loop *loop, px_fd out, px_fd in,
                                 int is_pipe) {
  xfer *x = calloc(1, sizeof(*x));
  assert_non_null(x);
  x->out = out;
  x->in = in;
  x->is_pipe = is_pipe;
  x->src = malloc(XFER_TOTAL);
  x->dst = calloc(1, XFER_TOTAL + XFER_CHUNK);
  assert_non_null(x->src);
  assert_non_null(x->dst);
  uint32_t seed = 12345;
  for (size_t i = 0; i < XFER_TOTAL; i++) {
    seed = seed * 1103515245u + 12345u;
    x->src[i] = (uint8_t)(seed >> 16);
  }
  assert_int_equal(xfer_submit_recv(loop, x), 0);
  assert_int_equal(xfer_submit_send(loop, x), 0);
  RUN_UNTIL(loop, x->eof || x->recv_err || x->send_err, 20000);
  if (is_pipe)
    RUN_UNTIL(loop, x->cr.calls == 1, 5000);
  assert_int_equal(x->send_err, 0);
  assert_int_equal(x->recv_err, 0);
  assert_int_equal(x->sent, XFER_TOTAL);
  assert_int_equal(x->received, XFER_TOTAL);
  assert_true(x->eof);
  assert_memory_equal(x->dst, x->src, XFER_TOTAL);
  if (is_pipe)
    assert_int_equal(x->cr.result, 0);
  free(x->src);
  free(x->dst);
  free(x);
}

void pipe_transfers_1mib_byte_exact(void **state) {
  px_loop *loop = new_loop();
  px_fd p[2];
  (void)state;
  assert_int_equal(px_pipe(loop, p), 0);
  stream_transfer_1mib(loop, p[1], p[0], 1);
  close_fd(loop, p[0]);
  finish(loop);
}

void tcp_transfers_1mib_byte_exact(void **state) {
  px_loop *loop = new_loop();
  px_fd c, s;
  (void)state;
  tcp_pair(loop, &c, &s);
  assert_int_equal(px_tcp_nodelay(c, 1), 0);
  stream_transfer_1mib(loop, c, s, 0);
  close_fd(loop, c);
  close_fd(loop, s);
  finish(loop);
}

void file_reads_at_cur_complete_in_order_and_advance(void **state) {
  enum { N = 4, LEN = 16 };
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = temp_file(loop, path, sizeof(path));
  uint8_t data[N * LEN], buf[N][LEN], tail[8];
  px_op ops[N];
  rec r[N];
  (void)state;
  memset(ops, 0, sizeof(ops));
  memset(r, 0, sizeof(r));
  for (int i = 0; i < N * LEN; i++)
    data[i] = (uint8_t)(i * 3 + 1);
  /* A positional write leaves the position at 0. */
  assert_int_equal(sync_write(loop, fd, data, sizeof(data), 0),
                   (int)sizeof(data));
  for (int k = 0; k < N; k++)
    assert_int_equal(
        px_read(loop, &ops[k], fd, buf[k], LEN, PX_CUR, rec_cb, &r[k]), 0);
  RUN_UNTIL(loop, g_seq == 1 + N, 5000);
  for (int k = 0; k < N; k++) {
    assert_int_equal(r[k].calls, 1);
    assert_int_equal(r[k].result, LEN);
    assert_memory_equal(buf[k], data + k * LEN, LEN);
    if (k > 0 && r[k].order < r[k - 1].order)
      fail_msg("read %d completed before read %d", k, k - 1);
  }
  assert_int_equal(sync_read(loop, fd, tail, sizeof(tail), PX_CUR), 0);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

void pipe_writes_at_cur_complete_in_submission_order(void **state) {
  enum { N = 32, LEN = 4096 };
  px_loop *loop = new_loop();
  px_fd p[2];
  px_op w[N], rop = {0};
  rec wr[N], rr = {0};
  uint8_t *src = malloc(N * LEN), *dst = calloc(1, N * LEN);
  size_t got = 0;
  (void)state;
  assert_non_null(src);
  assert_non_null(dst);
  memset(w, 0, sizeof(w));
  memset(wr, 0, sizeof(wr));
  for (int i = 0; i < N * LEN; i++)
    src[i] = (uint8_t)((i / LEN + 1) ^ (i % 253));
  assert_int_equal(px_pipe(loop, p), 0);
  /* Twice what a pipe holds, queued at once before anyone reads. */
  for (int k = 0; k < N; k++)
    assert_int_equal(
        px_write(loop, &w[k], p[1], src + k * LEN, LEN, PX_CUR, rec_cb, &wr[k]),
        0);
  while (got < (size_t)N * LEN) {
    int calls = rr.calls;
    assert_int_equal(px_read(loop, &rop, p[0], dst + got, N * LEN - got, PX_CUR,
                             rec_cb, &rr),
                     0);
    RUN_UNTIL(loop, rr.calls == calls + 1, 5000);
    assert_true(rr.result > 0);
    got += (size_t)rr.result;
  }
  RUN_UNTIL(loop, wr[N - 1].calls == 1, 5000);
  for (int k = 0; k < N; k++) {
    assert_int_equal(wr[k].calls, 1);
    assert_int_equal(wr[k].result, LEN);
    if (k > 0 && wr[k].order < wr[k - 1].order)
      fail_msg("write %d completed before write %d", k, k - 1);
  }
  assert_memory_equal(dst, src, N * LEN);
  free(src);
  free(dst);
  close_fd(loop, p[0]);
  close_fd(loop, p[1]);
  finish(loop);
}

void writev_accepts_1024_iovecs(void **state) {
  enum { N = 1024 };
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = temp_file(loop, path, sizeof(path));
  static uint8_t data[N], back[N];
  static px_iov iov[N];
  px_op op = {0};
  rec r = {0};
  (void)state;
  for (int i = 0; i < N; i++) {
    data[i] = (uint8_t)(i * 7);
    iov[i].base = &data[i];
    iov[i].len = 1;
  }
  assert_int_equal(px_writev(loop, &op, fd, iov, N, 0, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, N);
  assert_int_equal(sync_read(loop, fd, back, N, 0), N);
  assert_memory_equal(back, data, N);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

/* ---- More file cases: appends, vectors, cancellation, many in flight. -- */

void file_append_write_at_cur_leaves_the_position_at_the_end(void **state) {
  px_loop *loop = new_loop();
  char path[512], buf[16];
  px_fd fd = temp_file(loop, path, sizeof(path)), afd;
  (void)state;
  assert_int_equal(sync_write(loop, fd, "0123456789", 10, 0), 10);
  assert_int_equal(px_file_open(loop, path, PX_O_RDWR | PX_O_APPEND, 0, &afd),
                   0);
  assert_int_equal(sync_read(loop, afd, buf, 4, PX_CUR), 4);
  assert_memory_equal(buf, "0123", 4);
  /* O_APPEND writes at the end whatever the position, and leaves the
   * position there: the next read at PX_CUR finds the end of the file. */
  assert_int_equal(sync_write(loop, afd, "XY", 2, PX_CUR), 2);
  assert_int_equal(sync_read(loop, afd, buf, sizeof(buf), PX_CUR), 0);
  assert_int_equal(sync_read(loop, fd, buf, sizeof(buf), 0), 12);
  assert_memory_equal(buf, "0123456789XY", 12);
  close_fd(loop, afd);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

/* Writes to a file opened to append, at offsets, at PX_CUR, vectors and
 * not, all in flight together: each lands whole at the end, in the order
 * they were submitted (a vector's segments are never split by another). */
void file_append_writes_land_whole_in_submission_order(void **state) {
  enum { W = 6 };
  px_loop *loop = new_loop();
  char path[512], back[64];
  px_fd fd = temp_file(loop, path, sizeof(path)), afd;
  px_iov v[3][2] = {{{"AAAA", 4}, {"aaaa", 4}},
                    {{"BBBB", 4}, {"bbbb", 4}},
                    {{"CCCC", 4}, {"cccc", 4}}};
  px_op ops[W];
  rec r[W];
  (void)state;
  memset(ops, 0, sizeof(ops));
  memset(r, 0, sizeof(r));
  assert_int_equal(px_file_open(loop, path, PX_O_WRONLY | PX_O_APPEND, 0, &afd),
                   0);
  assert_int_equal(px_writev(loop, &ops[0], afd, v[0], 2, 0, rec_cb, &r[0]), 0);
  assert_int_equal(px_writev(loop, &ops[1], afd, v[1], 2, 100, rec_cb, &r[1]),
                   0);
  assert_int_equal(px_write(loop, &ops[2], afd, "DDDD", 4, 0, rec_cb, &r[2]),
                   0);
  assert_int_equal(
      px_writev(loop, &ops[3], afd, v[2], 2, PX_CUR, rec_cb, &r[3]), 0);
  assert_int_equal(px_write(loop, &ops[4], afd, "EEEE", 4, 7, rec_cb, &r[4]),
                   0);
  assert_int_equal(
      px_write(loop, &ops[5], afd, "FFFF", 4, PX_CUR, rec_cb, &r[5]), 0);
  RUN_UNTIL(loop,
            r[0].calls == 1 && r[1].calls == 1 && r[2].calls == 1 &&
                r[3].calls == 1 && r[4].calls == 1 && r[5].calls == 1,
            5000);
  static const int want_len[W] = {8, 8, 4, 8, 4, 4};
  for (int i = 0; i < W; i++)
    assert_int_equal(r[i].result, want_len[i]);
  const char *want = "AAAAaaaaBBBBbbbbDDDDCCCCccccEEEEFFFF";
  assert_int_equal(sync_read(loop, fd, back, sizeof(back), 0),
                   (int)strlen(want));
  if (memcmp(back, want, strlen(want)) != 0)
    fail_msg("the file holds \"%.*s\", not \"%s\"", (int)strlen(want), back,
             want);
  close_fd(loop, afd);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

/* A handle made for synchronous I/O (Windows, without FILE_FLAG_OVERLAPPED)
 * cannot be adopted: PX_EINVAL, not PX_EBUSY, which means "another loop's". */
void adopt_of_a_handle_for_synchronous_io_gives_einval(void **state) {
  char path[512];
  (void)state;
  assert_int_equal(pt_temp_path(path, sizeof(path), "sync"), 0);
  px_fd h = pt_sync_file(path);
  if (h == PX_INVALID_FD) {
    printf("           skipped: handles here have no synchronous mode\n");
    skip();
  }
  px_loop *loop = new_loop();
  int rc = px_adopt(loop, h);
  pt_sync_file_close(h);
  remove(path);
  finish(loop);
  assert_int_equal(rc, PX_EINVAL);
}

/* ---- Parallel file I/O under a small descriptor limit. ------------------ */

enum { LIM_FILES = 8, LIM_WRITES = 40, LIM_FDS = 256 };

/* With the limit at 256 descriptors: 40 writes in flight on each of 8
 * files.  0 when all completed and at least half the limit was still free
 * for the program once they had, else a check's number.  (In this
 * process, not a child: glibc's AIO does not survive a fork.) */
static int lim_run(unsigned *left) {
  static char block[LIM_WRITES][512];
  static px_op ops[LIM_FILES][LIM_WRITES];
  static rec r[LIM_FILES][LIM_WRITES];
  char path[LIM_FILES][512];
  px_fd fd[LIM_FILES];
  int opened = 0, rc = 0;
  px_loop *loop = new_loop();
  memset(ops, 0, sizeof(ops));
  memset(r, 0, sizeof(r));
  for (; opened < LIM_FILES && rc == 0; opened++) {
    int f = opened;
    if (pt_temp_path(path[f], sizeof(path[f]), "lim") != 0 ||
        px_file_open(loop, path[f], PX_O_RDWR | PX_O_CREAT | PX_O_TRUNC, 0600,
                     &fd[f]) != 0) {
      rc = 1;
      break;
    }
    for (int w = 0; w < LIM_WRITES && rc == 0; w++)
      if (px_write(loop, &ops[f][w], fd[f], block[w], sizeof(block[w]),
                   (int64_t)w * 512, rec_cb, &r[f][w]) != 0)
        rc = 2;
  }
  if (px_run(loop, PX_RUN_DEFAULT) != 0 && rc == 0)
    rc = 3;
  for (int f = 0; f < opened && rc == 0; f++)
    for (int w = 0; w < LIM_WRITES; w++)
      if (r[f][w].calls != 1 || r[f][w].result != 512)
        rc = 4;
  *left = pt_fd_headroom(LIM_FDS);
  for (int f = 0; f < opened; f++) {
    if (px_fd_close(loop, fd[f]) != 0 && rc == 0)
      rc = 5;
    remove(path[f]);
  }
  finish(loop);
  return rc;
}

/* Parallel requests on one file may take extra descriptors (posix_aio's
 * lanes); a program with many files and a small limit keeps most of it. */
void parallel_writes_on_many_files_leave_descriptors_for_the_program(
    void **state) {
  unsigned old, left = 0, dummy;
  (void)state;
  if (pt_fd_limit_set(LIM_FDS, &old) != 0) {
    printf("           skipped: no descriptor limit to set here\n");
    skip();
  }
  unsigned before = pt_fd_headroom(LIM_FDS);
  if (before < LIM_FDS - 64) {
    pt_fd_limit_set(old, &dummy);
    printf("           skipped: %u descriptors open already\n",
           LIM_FDS - before);
    skip();
  }
  int rc = lim_run(&left);
  pt_fd_limit_set(old, &dummy);
  printf("           %u of %d descriptors left for the program\n", left,
         LIM_FDS);
  if (rc != 0)
    fail_msg("check %d failed", rc);
  if (left < LIM_FDS / 2)
    fail_msg("the program has %u of %d descriptors left", left, LIM_FDS);
}

void file_readv_and_writev_skip_empty_segments(void **state) {
  px_loop *loop = new_loop();
  char path[512], a[3], b[4], all[8];
  px_fd fd = temp_file(loop, path, sizeof(path));
  px_iov out[4] = {{NULL, 0}, {"abc", 3}, {"", 0}, {"defg", 4}};
  px_iov in[4] = {{a, 0}, {a, sizeof(a)}, {NULL, 0}, {b, sizeof(b)}};
  px_op op = {0};
  rec r = {0};
  (void)state;
  assert_int_equal(px_writev(loop, &op, fd, out, 4, 0, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 7);
  assert_int_equal(sync_read(loop, fd, all, sizeof(all), 0), 7);
  assert_memory_equal(all, "abcdefg", 7);
  assert_int_equal(px_readv(loop, &op, fd, in, 4, 0, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 2, 5000);
  assert_int_equal(r.result, 7);
  assert_memory_equal(a, "abc", 3);
  assert_memory_equal(b, "defg", 4);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

void file_readv_stops_at_end_of_file(void **state) {
  px_loop *loop = new_loop();
  char path[512], a[8], b[8], c[8];
  px_fd fd = temp_file(loop, path, sizeof(path));
  px_iov in[3] = {{a, sizeof(a)}, {b, sizeof(b)}, {c, sizeof(c)}};
  px_op op = {0};
  rec r = {0};
  (void)state;
  memset(c, 'z', sizeof(c));
  assert_int_equal(sync_write(loop, fd, "0123456789", 10, 0), 10);
  /* The second segment is short; the third gets nothing. */
  assert_int_equal(px_readv(loop, &op, fd, in, 3, 0, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 10);
  assert_memory_equal(a, "01234567", 8);
  assert_memory_equal(b, "89", 2);
  assert_int_equal(c[0], 'z');
  /* At the end of the file: 0. */
  assert_int_equal(px_readv(loop, &op, fd, in, 3, 10, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 2, 5000);
  assert_int_equal(r.result, 0);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

enum { FILE_OPS = 64, BLOCK = 4096 };

typedef struct fread_op {
  px_op op;
  rec r;
  unsigned char buf[BLOCK];
} fread_op;

/* A file of FILE_OPS blocks, block i filled with byte i + 1. */
static px_fd block_file(px_loop *loop, char *path, size_t size) {
  px_fd fd = temp_file(loop, path, size);
  unsigned char *data = malloc((size_t)FILE_OPS * BLOCK);
  assert_non_null(data);
  for (int i = 0; i < FILE_OPS; i++)
    memset(data + (size_t)i * BLOCK, i + 1, BLOCK);
  assert_int_equal(sync_write(loop, fd, data, (size_t)FILE_OPS * BLOCK, 0),
                   FILE_OPS * BLOCK);
  free(data);
  return fd;
}

static void submit_block_reads(px_loop *loop, px_fd fd, fread_op *ops) {
  for (int i = 0; i < FILE_OPS; i++)
    assert_int_equal(px_read(loop, &ops[i].op, fd, ops[i].buf, BLOCK,
                             (int64_t)i * BLOCK, rec_cb, &ops[i].r),
                     0);
}

/* Each read ran once, and either completed whole with its block's bytes
 * or was cancelled.  Returns how many were cancelled. */
static int check_block_reads(const fread_op *ops) {
  int cancelled = 0;
  for (int i = 0; i < FILE_OPS; i++) {
    assert_int_equal(ops[i].r.calls, 1);
    if (ops[i].r.result == PX_ECANCELED) {
      cancelled++;
      continue;
    }
    assert_int_equal(ops[i].r.result, BLOCK);
    for (int k = 0; k < BLOCK; k++)
      if (ops[i].buf[k] != (unsigned char)(i + 1))
        fail_msg("read %d has the wrong bytes at %d", i, k);
  }
  return cancelled;
}

void file_reads_in_parallel_on_one_handle_each_complete_once(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = block_file(loop, path, sizeof(path));
  fread_op *ops = calloc(FILE_OPS, sizeof(*ops));
  (void)state;
  assert_non_null(ops);
  submit_block_reads(loop, fd, ops);
  RUN_UNTIL(loop, g_seq == 1 + FILE_OPS, 10000);
  settle(loop);
  assert_int_equal(check_block_reads(ops), 0);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  free(ops);
  finish(loop);
}

/* Direct I/O: DIRECT_SLOTS reads in flight, each callback starting the
 * next block until all FILE_OPS are read (on io_uring such ops enter the
 * kernel as they are submitted, not at the loop's next wait), then a
 * direct write and fsync, read back.  Buffers, offsets and lengths are
 * aligned to BLOCK, as O_DIRECT and FILE_FLAG_NO_BUFFERING ask. */
enum { DIRECT_SLOTS = 16 };

typedef struct direct_read {
  px_op op;
  unsigned char *buf;
  int block, done, bad;
  int *next;
} direct_read;

static void direct_read_cb(px_loop *loop, px_op *op) {
  direct_read *d = op->data;
  if (op->result != BLOCK)
    d->bad++;
  for (int k = 0; k < BLOCK && op->result == BLOCK; k++)
    if (d->buf[k] != (unsigned char)(d->block + 1)) {
      d->bad++;
      break;
    }
  d->done++;
  if (*d->next < FILE_OPS) {
    d->block = (*d->next)++;
    if (px_read(loop, op, op->fd, d->buf, BLOCK, (int64_t)d->block * BLOCK,
                direct_read_cb, d) != 0)
      d->bad++;
  }
}

static int direct_done(const direct_read *d) {
  int done = 0;
  for (int i = 0; i < DIRECT_SLOTS; i++)
    done += d[i].done;
  return done;
}

/* A block_file opened again for direct I/O, with an aligned buffer of
 * `blocks` blocks; or the test skips with the reason where there is none. */
typedef struct direct_fx {
  px_loop *loop;
  char path[512];
  px_fd fd;
  unsigned char *mem, *base;
} direct_fx;

static void direct_setup(direct_fx *f, size_t blocks) {
  f->loop = new_loop();
  close_fd(f->loop, block_file(f->loop, f->path, sizeof(f->path)));
  int r = px_file_open(f->loop, f->path, PX_O_RDWR | PX_O_DIRECT, 0, &f->fd);
  if (r == PX_EINVAL || r == PX_EOPNOTSUPP) {
    /* EOPNOTSUPP: a build without O_DIRECT (plain POSIX has none);
     * EINVAL: a file system that refuses it (tmpfs before Linux 6.6). */
    printf("           skipped: %s\n",
           r == PX_EOPNOTSUPP ? "this build has no direct I/O (O_DIRECT is "
                                "not in POSIX)"
                              : "the temporary directory's file system "
                                "refuses direct I/O");
    assert_int_equal(remove(f->path), 0);
    finish(f->loop);
    skip();
  }
  assert_int_equal(r, 0);
  f->mem = malloc((blocks + 1) * BLOCK);
  assert_non_null(f->mem);
  f->base = f->mem + (BLOCK - (uintptr_t)f->mem % BLOCK) % BLOCK; /* aligned */
}

static void direct_teardown(direct_fx *f) {
  free(f->mem);
  close_fd(f->loop, f->fd);
  assert_int_equal(remove(f->path), 0);
  finish(f->loop);
}

void file_direct_reads_and_write_return_each_block(void **state) {
  direct_fx f;
  (void)state;
  direct_setup(&f, DIRECT_SLOTS);
  px_loop *loop = f.loop;
  px_fd fd = f.fd;
  unsigned char *base = f.base;
  direct_read d[DIRECT_SLOTS];
  int next = 0;
  memset(d, 0, sizeof(d));
  for (int i = 0; i < DIRECT_SLOTS; i++) {
    d[i].buf = base + (size_t)i * BLOCK;
    d[i].next = &next;
    d[i].block = next++;
    assert_int_equal(px_read(loop, &d[i].op, fd, d[i].buf, BLOCK,
                             (int64_t)d[i].block * BLOCK, direct_read_cb,
                             &d[i]),
                     0);
  }
  RUN_UNTIL(loop, direct_done(d) == FILE_OPS, 10000);
  for (int i = 0; i < DIRECT_SLOTS; i++)
    assert_int_equal(d[i].bad, 0);
  /* A direct write and fsync, then the block read back directly. */
  memset(base, 0xA5, BLOCK);
  assert_int_equal(sync_write(loop, fd, base, BLOCK, 5 * BLOCK), BLOCK);
  px_op sop = {0};
  rec sr = {0};
  assert_int_equal(px_fsync(loop, &sop, fd, 0, rec_cb, &sr), 0);
  RUN_UNTIL(loop, sr.calls == 1, 10000);
  assert_int_equal(sr.result, 0);
  memset(base, 0, BLOCK);
  assert_int_equal(sync_read(loop, fd, base, BLOCK, 5 * BLOCK), BLOCK);
  for (int k = 0; k < BLOCK; k++)
    if (base[k] != 0xA5)
      fail_msg("direct write: byte %d reads %d", k, base[k]);
  direct_teardown(&f);
}

/* Direct I/O at PX_CUR: reads one after another return successive blocks,
 * a write goes where they left off and the next read after it, and a
 * vector moves the position by its total, as read(2), write(2) and
 * readv(2) would.  (io_uring neither reads nor moves
 * the file position for an op the device completes later.) */
static void direct_block_is(const unsigned char *buf, unsigned char v) {
  for (int k = 0; k < BLOCK; k++)
    if (buf[k] != v)
      fail_msg("byte %d reads %d, not %d", k, buf[k], v);
}

void file_direct_ops_at_the_position_move_it(void **state) {
  direct_fx f;
  (void)state;
  direct_setup(&f, 2);
  px_loop *loop = f.loop;
  px_fd fd = f.fd;
  unsigned char *base = f.base;
  for (int i = 0; i < 4; i++) {
    memset(base, 0, BLOCK);
    assert_int_equal(sync_read(loop, fd, base, BLOCK, PX_CUR), BLOCK);
    direct_block_is(base, (unsigned char)(i + 1));
  }
  memset(base, 0x5A, BLOCK);
  assert_int_equal(sync_write(loop, fd, base, BLOCK, PX_CUR), BLOCK);
  memset(base, 0, BLOCK);
  assert_int_equal(sync_read(loop, fd, base, BLOCK, PX_CUR), BLOCK);
  direct_block_is(base, 6); /* block 5: after the write to block 4 */
  /* A vector at PX_CUR goes on from there and moves it by its total. */
  px_iov iov[2] = {{base, BLOCK}, {base + BLOCK, BLOCK}};
  px_op vop = {0};
  rec vr = {0};
  assert_int_equal(px_readv(loop, &vop, fd, iov, 2, PX_CUR, rec_cb, &vr), 0);
  RUN_UNTIL(loop, vr.calls == 1, 10000);
  assert_int_equal(vr.result, 2 * BLOCK);
  direct_block_is(base, 7);
  direct_block_is(base + BLOCK, 8);
  assert_int_equal(sync_read(loop, fd, base, BLOCK, PX_CUR), BLOCK);
  direct_block_is(base, 9);
  assert_int_equal(sync_read(loop, fd, base, BLOCK, 4 * BLOCK), BLOCK);
  direct_block_is(base, 0x5A);
  direct_teardown(&f);
}

void close_of_file_with_reads_in_flight_completes_each_first(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = block_file(loop, path, sizeof(path));
  fread_op *ops = calloc(FILE_OPS, sizeof(*ops));
  px_op cop = {0};
  rec cr = {0};
  (void)state;
  assert_non_null(ops);
  submit_block_reads(loop, fd, ops);
  assert_int_equal(px_close(loop, &cop, fd, rec_cb, &cr), 0);
  RUN_UNTIL(loop, cr.calls == 1, 10000);
  settle(loop);
  assert_int_equal(cr.result, 0);
  check_block_reads(ops);
  for (int i = 0; i < FILE_OPS; i++)
    assert_true(ops[i].r.order < cr.order);
  assert_int_equal(remove(path), 0);
  free(ops);
  finish(loop);
}

void cancel_of_file_reads_completes_each_exactly_once(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = block_file(loop, path, sizeof(path));
  fread_op *ops = calloc(FILE_OPS, sizeof(*ops));
  px_op cops[FILE_OPS];
  rec crs[FILE_OPS];
  (void)state;
  assert_non_null(ops);
  memset(cops, 0, sizeof(cops));
  memset(crs, 0, sizeof(crs));
  submit_block_reads(loop, fd, ops);
  for (int i = 0; i < FILE_OPS; i++)
    assert_int_equal(px_cancel(loop, &cops[i], &ops[i].op, rec_cb, &crs[i]), 0);
  RUN_UNTIL(loop, g_seq == 1 + 2 * FILE_OPS, 10000);
  settle(loop);
  check_block_reads(ops);
  for (int i = 0; i < FILE_OPS; i++) {
    assert_int_equal(crs[i].calls, 1);
    /* A read that came back cancelled was reached by its cancel. */
    if (ops[i].r.result == PX_ECANCELED)
      assert_int_equal(crs[i].result, 0);
    else
      assert_true(crs[i].result == 0 || crs[i].result == PX_EALREADY ||
                  crs[i].result == PX_ENOENT);
  }
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  free(ops);
  finish(loop);
}

void loop_free_with_file_reads_in_flight_completes_each_once(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = block_file(loop, path, sizeof(path));
  fread_op *ops = calloc(FILE_OPS, sizeof(*ops));
  (void)state;
  assert_non_null(ops);
  submit_block_reads(loop, fd, ops);
  assert_int_equal(px_loop_free(loop), 0);
  check_block_reads(ops);
  close_fd(NULL, fd);
  assert_int_equal(remove(path), 0);
  free(ops);
}

void recv_on_a_regular_file_fails_with_enotsock(void **state) {
  px_loop *loop = new_loop();
  char path[512], buf[8];
  px_fd fd = temp_file(loop, path, sizeof(path));
  (void)state;
  assert_int_equal(sync_recv(loop, fd, buf, sizeof(buf)), PX_ENOTSOCK);
  assert_int_equal(sync_send(loop, fd, "x", 1), PX_ENOTSOCK);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

void fsync_of_a_read_only_handle_is_refused_with_ebadf(void **state) {
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = temp_file(loop, path, sizeof(path)), ro;
  px_op op = {0};
  (void)state;
  assert_int_equal(px_file_open(loop, path, PX_O_RDONLY, 0, &ro), 0);
  assert_int_equal(px_fsync(loop, &op, ro, 0, rec_cb, NULL), PX_EBADF);
  assert_int_equal(px_fsync(loop, &op, ro, PX_FSYNC_DATA, rec_cb, NULL),
                   PX_EBADF);
  close_fd(loop, ro);
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  finish(loop);
}

/* readv on a stream returns what is waiting, as readv(2) does; it does not
 * wait to fill its later segments. */
void pipe_readv_returns_what_is_waiting(void **state) {
  px_loop *loop = new_loop();
  px_fd p[2];
  char a[4], b[100];
  px_iov in[2] = {{a, sizeof(a)}, {b, sizeof(b)}};
  px_op op = {0};
  rec r = {0};
  (void)state;
  assert_int_equal(px_pipe(loop, p), 0);
  assert_int_equal(sync_write(loop, p[1], "head", 4, PX_CUR), 4);
  assert_int_equal(px_readv(loop, &op, p[0], in, 2, PX_CUR, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 4);
  assert_memory_equal(a, "head", 4);
  close_fd(loop, p[0]);
  close_fd(loop, p[1]);
  finish(loop);
}

/* More reads on one handle than a backend may run at once, with deadlines
 * on half of them: each completes exactly once, whole or timed out. */
void many_file_reads_with_deadlines_on_one_handle_each_complete_once(
    void **state) {
  enum { N = 96 };
  px_loop *loop = new_loop();
  char path[512];
  px_fd fd = block_file(loop, path, sizeof(path));
  fread_op *ops = calloc(N, sizeof(*ops));
  (void)state;
  assert_non_null(ops);
  for (int i = 0; i < N; i++) {
    if (i % 2)
      assert_int_equal(px_op_deadline(&ops[i].op, 1), 0);
    assert_int_equal(px_read(loop, &ops[i].op, fd, ops[i].buf, BLOCK,
                             (int64_t)(i % FILE_OPS) * BLOCK, rec_cb,
                             &ops[i].r),
                     0);
  }
  RUN_UNTIL(loop, g_seq == 1 + N, 20000);
  settle(loop);
  for (int i = 0; i < N; i++) {
    assert_int_equal(ops[i].r.calls, 1);
    if (ops[i].r.result == PX_ETIMEDOUT && i % 2)
      continue;
    assert_int_equal(ops[i].r.result, BLOCK);
    assert_int_equal(ops[i].buf[0], (unsigned char)(i % FILE_OPS + 1));
  }
  close_fd(loop, fd);
  assert_int_equal(remove(path), 0);
  free(ops);
  finish(loop);
}

void file_size_of_files_and_refusals(void **state) {
  px_loop *loop = new_loop();
  char path[256];
  px_fd fd = temp_file(loop, path, sizeof(path));
  uint64_t size = 1;
  px_fd sp[2];
  (void)state;
  assert_int_equal(px_file_size(fd, &size), 0);
  assert_int_equal(size, 0);
  assert_int_equal(sync_write(loop, fd, "0123456789", 10, 1000), 10);
  assert_int_equal(px_file_size(fd, &size), 0);
  assert_int_equal(size, 1010);
  assert_int_equal(px_file_size(fd, NULL), PX_EINVAL);
  socketpair_new(loop, sp);
  assert_int_equal(px_file_size(sp[0], &size), PX_EINVAL); /* not a file */
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  close_fd(loop, fd);
  remove(path);
  finish(loop);
}
