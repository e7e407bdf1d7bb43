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
