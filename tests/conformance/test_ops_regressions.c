/* Behaviours the op-sequence fuzzer (fuzz/ops_fuzz.c) found broken once;
 * each test names the behaviour, not the bug. */
#include "conf.h"

/* Reads and writes on a stream at an explicit offset run at the stream's
 * position, as at PX_CUR: the offset means nothing there.  (io_uring's
 * positional calls refused it with ESPIPE while the other backends took
 * the bytes.) */
static void stream_at_offset_transfers(px_loop *loop, px_fd rd, px_fd wr) {
  uint8_t out[3] = {'a', 'b', 'c'}, in[8] = {0};
  px_iov wv[2] = {{out + 1, 1}, {out + 2, 1}},
         rv[2] = {{in + 1, 1}, {in + 2, 6}};
  assert_int_equal(sync_write(loop, wr, out, 1, 4096), 1);
  assert_int_equal(sync_read(loop, rd, in, 1, 12345), 1);
  assert_int_equal(in[0], 'a');
  px_op wop = {0}, rop = {0};
  rec wr_rec = {0}, rd_rec = {0};
  assert_int_equal(px_writev(loop, &wop, wr, wv, 2, 8192, rec_cb, &wr_rec), 0);
  RUN_UNTIL(loop, wr_rec.calls == 1, 5000);
  assert_int_equal(wr_rec.result, 2);
  assert_int_equal(px_readv(loop, &rop, rd, rv, 2, 77, rec_cb, &rd_rec), 0);
  RUN_UNTIL(loop, rd_rec.calls == 1, 5000);
  assert_int_equal(rd_rec.result, 2);
  assert_memory_equal(in, "abc", 3);
}

void stream_reads_and_writes_ignore_an_offset(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2], p[2];
  (void)state;
  socketpair_new(loop, sp);
  stream_at_offset_transfers(loop, sp[1], sp[0]);
  assert_int_equal(px_pipe(loop, p), 0);
  stream_at_offset_transfers(loop, p[0], p[1]);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  close_fd(loop, p[0]);
  close_fd(loop, p[1]);
  finish(loop);
}

/* A pooled receive on a regular file completes with PX_ENOTSOCK, as recv()
 * there does, whatever the pool holds.  (On io_uring, with the program
 * holding buffers, the receive went first to a poll the file cannot do and
 * then to a worker thread, and came back with EAGAIN, or with EBADFD when
 * multishot: PX_EAGAIN and PX_EUNKNOWN.) */
void pooled_recv_on_a_regular_file_completes_with_enotsock(void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool;
  char path[256];
  void *held[2];
  (void)state;
  px_fd fd = temp_file(loop, path, sizeof(path));
  assert_int_equal(sync_write(loop, fd, "data", 4, 0), 4);
  assert_int_equal(px_bufpool_new(loop, 2, 64, &pool), 0);
  for (int round = 0; round < 6; round++) {
    /* Holding none, one or both buffers; single-shot and multishot. */
    int hold = round % 3;
    unsigned flags = round < 3 ? 0 : PX_RECV_MULTISHOT;
    px_op op = {0};
    rec r = {0};
    for (int i = 0; i < hold; i++)
      assert_non_null(held[i] = px_buf_get(pool));
    assert_int_equal(px_recv_pooled_ex(loop, &op, fd, pool, flags, rec_cb, &r),
                     0);
    RUN_UNTIL(loop, r.calls == 1, 5000);
    if (r.result != PX_ENOTSOCK)
      fail_msg("holding %d of 2 buffers, a %s pooled receive on a file gave "
               "%d (%s)",
               hold, flags ? "multishot" : "single-shot", r.result,
               px_strerror(r.result));
    assert_null(px_op_buf(&op));
    for (int i = 0; i < hold; i++)
      assert_int_equal(px_buf_release(pool, held[i]), 0);
  }
  settle(loop);
  close_fd(loop, fd);
  remove(path);
  assert_int_equal(px_bufpool_free(pool), 0);
  finish(loop);
}
