/* Sockets: success paths, end of stream, errors, close, cancel, order. */
#include "conf.h"

void socketpair_send_and_recv(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  char buf[16];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(sync_send(loop, sp[0], "ping", 4), 4);
  assert_int_equal(sync_recv(loop, sp[1], buf, sizeof(buf)), 4);
  assert_memory_equal(buf, "ping", 4);
  assert_int_equal(sync_send(loop, sp[1], "pong!", 5), 5);
  assert_int_equal(sync_recv(loop, sp[0], buf, sizeof(buf)), 5);
  assert_memory_equal(buf, "pong!", 5);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void tcp_accept_and_connect_on_loopback(void **state) {
  px_loop *loop = new_loop();
  int port;
  px_fd l = tcp_listener(loop, &port);
  px_fd c = PX_INVALID_FD;
  px_addr to, cl, sv_peer, cl_peer;
  px_op aop = {0}, cop = {0};
  rec ar = {0}, cr = {0};
  char buf[16];
  (void)state;
  assert_int_equal(px_addr_set(&to, "127.0.0.1", port), 0);
  assert_int_equal(px_addr_port(&to), port);
  assert_int_equal(px_tcp_socket(loop, &to, &c), 0);
  assert_int_equal(px_accept(loop, &aop, l, rec_cb, &ar), 0);
  assert_int_equal(px_connect(loop, &cop, c, &to, rec_cb, &cr), 0);
  RUN_UNTIL(loop, ar.calls == 1 && cr.calls == 1, 5000);
  assert_int_equal(ar.result, 0);
  assert_int_equal(cr.result, 0);
  px_fd s = px_op_fd(&aop);
  assert_true(s != PX_INVALID_FD);
  /* The accepted handle is connected to the client. */
  assert_int_equal(px_addr_local(c, &cl), 0);
  assert_int_equal(px_addr_peer(s, &sv_peer), 0);
  assert_true(sv_peer.len > 0);
  assert_int_equal(px_addr_port(&sv_peer), px_addr_port(&cl));
  assert_int_equal(px_addr_peer(c, &cl_peer), 0);
  assert_int_equal(px_addr_port(&cl_peer), port);
  /* ... and already usable with this loop, both ways. */
  assert_int_equal(sync_send(loop, c, "hello", 5), 5);
  assert_int_equal(sync_recv(loop, s, buf, sizeof(buf)), 5);
  assert_memory_equal(buf, "hello", 5);
  assert_int_equal(sync_send(loop, s, "world!", 6), 6);
  assert_int_equal(sync_recv(loop, c, buf, sizeof(buf)), 6);
  assert_memory_equal(buf, "world!", 6);
  close_fd(loop, s);
  close_fd(loop, c);
  close_fd(loop, l);
  finish(loop);
}

void recv_reports_short_read(void **state) {
  px_loop *loop = new_loop();
  px_fd c, s;
  char buf[100];
  (void)state;
  tcp_pair(loop, &c, &s);
  assert_int_equal(sync_send(loop, c, "0123456789", 10), 10);
  assert_int_equal(sync_recv(loop, s, buf, sizeof(buf)), 10);
  assert_memory_equal(buf, "0123456789", 10);
  close_fd(loop, c);
  close_fd(loop, s);
  finish(loop);
}

void recv_gives_zero_after_peer_shuts_down_write(void **state) {
  px_loop *loop = new_loop();
  px_fd c, s;
  px_op op = {0};
  rec r = {0};
  char buf[16];
  (void)state;
  tcp_pair(loop, &c, &s);
  assert_int_equal(px_recv(loop, &op, s, buf, sizeof(buf), rec_cb, &r), 0);
  assert_int_equal(px_shutdown_write(c), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 0);
  /* Only the write side is shut: the other direction still works. */
  assert_int_equal(sync_send(loop, s, "back", 4), 4);
  assert_int_equal(sync_recv(loop, c, buf, sizeof(buf)), 4);
  close_fd(loop, c);
  close_fd(loop, s);
  finish(loop);
}

void recv_gives_zero_after_peer_closes(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  char buf[16];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(sync_send(loop, sp[1], "bye", 3), 3);
  close_fd(loop, sp[1]);
  assert_int_equal(sync_recv(loop, sp[0], buf, sizeof(buf)), 3);
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 0);
  close_fd(loop, sp[0]);
  finish(loop);
}

void recv_after_peer_reset_gives_econnreset(void **state) {
  px_loop *loop = new_loop();
  px_fd c, s;
  px_op op = {0};
  rec r = {0};
  char buf[16];
  (void)state;
  tcp_pair(loop, &c, &s);
  assert_int_equal(sync_send(loop, c, "data", 4), 4);
  assert_int_equal(sync_recv(loop, s, buf, sizeof(buf)), 4);
  assert_int_equal(px_recv(loop, &op, s, buf, sizeof(buf), rec_cb, &r), 0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(px_fd_close_reset(loop, c), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, PX_ECONNRESET);
  close_fd(loop, s);
  finish(loop);
}

/*
 * Sends until one fails.  A peer that has gone away answers with PX_EPIPE
 * (the connection is known to be closed) or PX_ECONNRESET (the peer's RST
 * arrived while a send was outstanding): which one comes depends on timing,
 * and both are correct.  SIGPIPE is at its default action, so the process
 * surviving shows px never raises it.
 */
static int send_until_error(px_loop *loop, px_fd fd) {
  enum { CHUNK = 64 * 1024 };
  char *buf = calloc(1, CHUNK);
  px_op op = {0};
  rec r = {0};
  assert_non_null(buf);
  pt_sigpipe_default();
  for (int i = 0; i < 1000; i++) {
    assert_int_equal(px_send(loop, &op, fd, buf, CHUNK, rec_cb, &r), 0);
    RUN_UNTIL(loop, r.calls == i + 1, 5000);
    if (r.result < 0)
      break;
    assert_true(r.result > 0);
  }
  free(buf);
  return r.result;
}

void send_to_closed_tcp_peer_gives_epipe_or_econnreset(void **state) {
  px_loop *loop = new_loop();
  px_fd c, s;
  (void)state;
  tcp_pair(loop, &c, &s);
  close_fd(loop, c);
  int rc = send_until_error(loop, s);
  if (rc != PX_EPIPE && rc != PX_ECONNRESET)
    fail_msg("send to a closed peer gave %d (%s)", rc, px_strerror(rc));
  close_fd(loop, s);
  finish(loop);
}

void send_to_closed_socketpair_peer_gives_epipe_or_econnreset(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  (void)state;
  socketpair_new(loop, sp);
  close_fd(loop, sp[1]);
  int rc = send_until_error(loop, sp[0]);
  if (rc != PX_EPIPE && rc != PX_ECONNRESET)
    fail_msg("send to a closed peer gave %d (%s)", rc, px_strerror(rc));
  close_fd(loop, sp[0]);
  finish(loop);
}

/* A socket in *c and the address of a port nobody listens on in *to. */
static void socket_to_closed_port(px_loop *loop, px_fd *c, px_addr *to) {
  int port;
  px_fd l = tcp_listener(loop, &port);
  close_fd(loop, l);
  assert_int_equal(px_addr_set(to, "127.0.0.1", port), 0);
  assert_int_equal(px_tcp_socket(loop, to, c), 0);
}

void connect_to_closed_port_gives_econnrefused(void **state) {
  px_loop *loop = new_loop();
  px_fd c;
  px_addr to;
  px_op op = {0};
  rec r = {0};
  (void)state;
  socket_to_closed_port(loop, &c, &to);
  assert_int_equal(px_connect(loop, &op, c, &to, rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, PX_ECONNREFUSED);
  close_fd(loop, c);
  finish(loop);
}

/* A client that starts its first receive right after the connect, before
 * it completes: the refusal ends both.  The failed connection's error is
 * handed out once by the system, and the receive may take it first. */
void refused_connect_with_a_receive_waiting_ends_both(void **state) {
  px_loop *loop = new_loop();
  px_fd c;
  px_addr to;
  px_op cop = {0}, rop = {0};
  rec cr = {0}, rr = {0};
  char buf[16];
  (void)state;
  socket_to_closed_port(loop, &c, &to);
  assert_int_equal(px_connect(loop, &cop, c, &to, rec_cb, &cr), 0);
  assert_int_equal(px_recv(loop, &rop, c, buf, sizeof(buf), rec_cb, &rr), 0);
  RUN_UNTIL(loop, cr.calls == 1 && rr.calls == 1, 5000);
  assert_int_equal(cr.result, PX_ECONNREFUSED);
  /* An error, or the end of the stream (wine's overlapped receive). */
  if (rr.result > 0)
    fail_msg("the receive on a refused socket gave %d bytes", rr.result);
  settle(loop);
  assert_int_equal(cr.calls, 1);
  assert_int_equal(rr.calls, 1);
  close_fd(loop, c);
  finish(loop);
}

void unknown_handle_is_refused_with_ebadf(void **state) {
  px_loop *loop = new_loop();
  px_loop *other = new_loop();
  px_fd foreign[2];
  const px_fd never = (px_fd)1000000;
  px_op op = {0};
  rec r = {0};
  char buf[8] = "abc";
  px_iov iov = {buf, 3};
  px_stats s;
  (void)state;
  socketpair_new(other, foreign);
  const px_fd bad[3] = {foreign[0], foreign[1], never};
  for (int i = 0; i < 3; i++) {
    px_fd fd = bad[i];
    assert_int_equal(px_recv(loop, &op, fd, buf, 3, rec_cb, &r), PX_EBADF);
    assert_int_equal(px_send(loop, &op, fd, buf, 3, rec_cb, &r), PX_EBADF);
    assert_int_equal(px_read(loop, &op, fd, buf, 3, PX_CUR, rec_cb, &r),
                     PX_EBADF);
    assert_int_equal(px_write(loop, &op, fd, buf, 3, 0, rec_cb, &r), PX_EBADF);
    assert_int_equal(px_readv(loop, &op, fd, &iov, 1, 0, rec_cb, &r), PX_EBADF);
    assert_int_equal(px_writev(loop, &op, fd, &iov, 1, PX_CUR, rec_cb, &r),
                     PX_EBADF);
    assert_int_equal(px_accept(loop, &op, fd, rec_cb, &r), PX_EBADF);
    assert_int_equal(px_fsync(loop, &op, fd, 0, rec_cb, &r), PX_EBADF);
    assert_int_equal(px_close(loop, &op, fd, rec_cb, &r), PX_EBADF);
  }
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 0);
  assert_int_equal(r.calls, 0);
  px_loop_stats(loop, &s);
  assert_int_equal(s.submitted, 0);
  close_fd(other, foreign[0]);
  close_fd(other, foreign[1]);
  finish(other);
  finish(loop);
}

void submit_after_close_is_refused_with_ebadf(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op cop = {0}, op = {0};
  rec cr = {0}, r = {0};
  char buf[8];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_close(loop, &cop, sp[0], rec_cb, &cr), 0);
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), rec_cb, &r),
                   PX_EBADF);
  /* Not known any more, whether the close has started or not. */
  assert_int_equal(px_fd_release(loop, sp[0]), PX_EBADF);
  RUN_UNTIL(loop, cr.calls == 1, 5000);
  assert_int_equal(cr.result, 0);
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), rec_cb, &r),
                   PX_EBADF);
  assert_int_equal(px_send(loop, &op, sp[0], "x", 1, rec_cb, &r), PX_EBADF);
  assert_int_equal(px_close(loop, &op, sp[0], rec_cb, &r), PX_EBADF);
  settle(loop);
  assert_int_equal(r.calls, 0);
  assert_int_equal(cr.calls, 1);
  /* The peer sees the close as end of stream. */
  assert_int_equal(sync_recv(loop, sp[1], buf, sizeof(buf)), 0);
  close_fd(loop, sp[1]);
  finish(loop);
}

/* The same while the close waits for a receive it cancels.  Before the
 * close, px_fd_close_reset is refused while the receive is in flight and
 * leaves the socket as it was (no linger set). */
void handle_closing_behind_a_receive_is_not_known(void **state) {
  px_loop *loop = new_loop();
  px_fd c, s;
  px_op cop = {0}, rop = {0};
  rec cr = {0}, rr = {0};
  char buf[8];
  (void)state;
  tcp_pair(loop, &c, &s);
  assert_int_equal(px_recv(loop, &rop, c, buf, sizeof(buf), rec_cb, &rr), 0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1); /* the receive waits */
  assert_int_equal(px_fd_close_reset(loop, c), PX_EBUSY);
  assert_int_equal(pt_linger_on(c), 0);
  assert_int_equal(px_close(loop, &cop, c, rec_cb, &cr), 0);
  assert_int_equal(px_fd_release(loop, c), PX_EBADF);
  assert_int_equal(px_fd_close(loop, c), PX_EBADF);
  assert_int_equal(px_fd_close_reset(loop, c), PX_EBADF);
  RUN_UNTIL(loop, cr.calls == 1 && rr.calls == 1, 5000);
  assert_int_equal(rr.result, PX_ECANCELED);
  assert_int_equal(cr.result, 0);
  close_fd(loop, s);
  finish(loop);
}

void close_cancels_pending_recv(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op rop = {0}, cop = {0};
  rec rr = {0}, cr = {0};
  char buf[8];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_recv(loop, &rop, sp[0], buf, sizeof(buf), rec_cb, &rr),
                   0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(px_close(loop, &cop, sp[0], rec_cb, &cr), 0);
  RUN_UNTIL(loop, rr.calls == 1 && cr.calls == 1, 5000);
  assert_int_equal(rr.result, PX_ECANCELED);
  assert_int_equal(cr.result, 0);
  assert_true(rr.order < cr.order);
  settle(loop);
  assert_int_equal(rr.calls, 1);
  assert_int_equal(cr.calls, 1);
  close_fd(loop, sp[1]);
  finish(loop);
}

void close_cancels_eight_pending_recvs_before_completing(void **state) {
  enum { N = 8 };
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op rops[N], cop = {0};
  rec rr[N], cr = {0};
  char buf[N][8];
  (void)state;
  memset(rops, 0, sizeof(rops));
  memset(rr, 0, sizeof(rr));
  socketpair_new(loop, sp);
  for (int i = 0; i < N; i++)
    assert_int_equal(
        px_recv(loop, &rops[i], sp[0], buf[i], sizeof(buf[i]), rec_cb, &rr[i]),
        0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(px_close(loop, &cop, sp[0], rec_cb, &cr), 0);
  RUN_UNTIL(loop, g_seq == N + 1, 5000);
  settle(loop);
  for (int i = 0; i < N; i++) {
    assert_int_equal(rr[i].calls, 1);
    assert_int_equal(rr[i].result, PX_ECANCELED);
    if (rr[i].order > cr.order)
      fail_msg("recv %d completed after the close that cancelled it", i);
  }
  assert_int_equal(cr.calls, 1);
  assert_int_equal(cr.result, 0);
  assert_int_equal(cr.order, N);
  close_fd(loop, sp[1]);
  finish(loop);
}

void cancel_of_pending_recv_completes_it_with_ecanceled(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op rop = {0}, cop = {0};
  rec rr = {0}, cr = {0};
  char buf[8];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_recv(loop, &rop, sp[0], buf, sizeof(buf), rec_cb, &rr),
                   0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(px_cancel(loop, &cop, &rop, rec_cb, &cr), 0);
  RUN_UNTIL(loop, rr.calls == 1 && cr.calls == 1, 5000);
  assert_int_equal(rr.result, PX_ECANCELED);
  assert_int_equal(cr.result, 0);
  settle(loop);
  assert_int_equal(rr.calls, 1);
  assert_int_equal(cr.calls, 1);
  /* The socket is intact: the next recv gets the next data. */
  assert_int_equal(sync_send(loop, sp[1], "after", 5), 5);
  assert_int_equal(sync_recv(loop, sp[0], buf, sizeof(buf)), 5);
  assert_memory_equal(buf, "after", 5);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void cancel_of_queued_recv_leaves_earlier_recv_pending(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op first = {0}, second = {0}, cop = {0};
  rec r1 = {0}, r2 = {0}, cr = {0};
  char b1[8], b2[8];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_recv(loop, &first, sp[0], b1, sizeof(b1), rec_cb, &r1),
                   0);
  assert_int_equal(px_recv(loop, &second, sp[0], b2, sizeof(b2), rec_cb, &r2),
                   0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(px_cancel(loop, &cop, &second, rec_cb, &cr), 0);
  RUN_UNTIL(loop, r2.calls == 1 && cr.calls == 1, 5000);
  assert_int_equal(r2.result, PX_ECANCELED);
  assert_int_equal(cr.result, 0);
  assert_int_equal(r1.calls, 0);
  assert_int_equal(sync_send(loop, sp[1], "one", 3), 3);
  RUN_UNTIL(loop, r1.calls == 1, 5000);
  assert_int_equal(r1.result, 3);
  assert_memory_equal(b1, "one", 3);
  settle(loop);
  assert_int_equal(r2.calls, 1);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

/* ---- Order of completions on one socket. ------------------------------- */

enum { NSEND = 64, SEND_LEN = 64 * 1024 };

typedef struct sendq {
  px_op ops[NSEND];
  int calls[NSEND];
  int results[NSEND];
  int order[NSEND]; /* completion position of each send */
  int done;
  uint8_t *src, *dst;
  size_t received;
  int recv_err, eof;
  px_fd in;
  px_op rop;
} sendq;

static void sendq_send_cb(px_loop *loop, px_op *op) {
  sendq *q = op->data;
  int i = (int)(op - q->ops);
  (void)loop;
  q->calls[i]++;
  q->results[i] = op->result;
  q->order[i] = q->done++;
}

/* The receive buffer has room for one send more than was sent, so a recv
 * is always possible and too many bytes would show. */
static void sendq_recv_cb(px_loop *loop, px_op *op) {
  sendq *q = op->data;
  const size_t cap = (size_t)(NSEND + 1) * SEND_LEN;
  if (op->result <= 0) {
    if (op->result < 0)
      q->recv_err = op->result;
    else
      q->eof = 1;
    return;
  }
  q->received += (size_t)op->result;
  if (q->received < cap) {
    size_t len = cap - q->received;
    int rc = px_recv(loop, &q->rop, q->in, q->dst + q->received,
                     len < SEND_LEN ? len : SEND_LEN, sendq_recv_cb, q);
    if (rc != 0)
      q->recv_err = rc;
  }
}

static size_t sendq_sent(const sendq *q) {
  size_t total = 0;
  for (int i = 0; i < NSEND; i++)
    if (q->calls[i] == 1 && q->results[i] > 0)
      total += (size_t)q->results[i];
  return total;
}

/*
 * Sends may complete short (a readiness backend writes what fits), and the
 * next one is already issued then: the stream is the concatenation of each
 * send's first result bytes, and the completions come in submission order.
 */
void sends_on_one_socket_complete_in_submission_order(void **state) {
  px_loop *loop = new_loop();
  px_fd c, s;
  sendq *q = calloc(1, sizeof(*q));
  const size_t total = (size_t)NSEND * SEND_LEN;
  (void)state;
  assert_non_null(q);
  q->src = malloc(total);
  q->dst = calloc(1, total + SEND_LEN);
  assert_non_null(q->src);
  assert_non_null(q->dst);
  for (size_t i = 0; i < total; i++) {
    size_t k = i / SEND_LEN;
    q->src[i] = (uint8_t)((k + 1) ^ ((i % SEND_LEN) % 251));
  }
  tcp_pair(loop, &c, &s);
  q->in = s;
  for (int k = 0; k < NSEND; k++)
    assert_int_equal(px_send(loop, &q->ops[k], c, q->src + (size_t)k * SEND_LEN,
                             SEND_LEN, sendq_send_cb, q),
                     0);
  /* Let the sends fill the socket buffers before the peer reads. */
  for (int i = 0; i < 3; i++)
    assert_true(px_run(loop, PX_RUN_NOWAIT) >= 0);
  assert_int_equal(
      px_recv(loop, &q->rop, s, q->dst, SEND_LEN, sendq_recv_cb, q), 0);
  RUN_UNTIL(loop,
            q->recv_err || q->eof ||
                (q->done == NSEND && q->received >= sendq_sent(q)),
            20000);
  assert_int_equal(q->recv_err, 0);
  assert_false(q->eof);
  for (int k = 0; k < NSEND; k++) {
    assert_int_equal(q->calls[k], 1);
    if (q->results[k] <= 0 || q->results[k] > SEND_LEN)
      fail_msg("send %d of %d completed with %d (%s)", k, NSEND, q->results[k],
               px_strerror(q->results[k]));
    if (q->order[k] != k)
      fail_msg("send %d completed in position %d", k, q->order[k]);
  }
  /* End of stream after exactly what the sends reported. */
  close_fd(loop, c);
  RUN_UNTIL(loop, q->recv_err || q->eof, 5000);
  assert_int_equal(q->recv_err, 0);
  if (q->received != sendq_sent(q))
    fail_msg("received %d bytes, the sends reported %d", (int)q->received,
             (int)sendq_sent(q));
  size_t at = 0;
  for (int k = 0; k < NSEND; k++) {
    size_t n = (size_t)q->results[k];
    if (memcmp(q->dst + at, q->src + (size_t)k * SEND_LEN, n) != 0)
      fail_msg("the stream differs from send %d's first %d bytes", k, (int)n);
    at += n;
  }
  close_fd(loop, s);
  free(q->src);
  free(q->dst);
  free(q);
  finish(loop);
}

void recvs_on_one_socket_complete_in_submission_order(void **state) {
  enum { N = 8, LEN = 16 };
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op ops[N];
  rec r[N];
  uint8_t buf[N][LEN], out[N * LEN];
  (void)state;
  memset(ops, 0, sizeof(ops));
  memset(r, 0, sizeof(r));
  for (int i = 0; i < N * LEN; i++)
    out[i] = (uint8_t)i;
  socketpair_new(loop, sp);
  for (int k = 0; k < N; k++)
    assert_int_equal(px_recv(loop, &ops[k], sp[0], buf[k], LEN, rec_cb, &r[k]),
                     0);
  assert_int_equal(sync_send(loop, sp[1], out, sizeof(out)), (int)sizeof(out));
  RUN_UNTIL(loop, g_seq == N + 1, 5000);
  for (int k = 0; k < N; k++) {
    assert_int_equal(r[k].calls, 1);
    assert_int_equal(r[k].result, LEN);
    assert_memory_equal(buf[k], out + k * LEN, LEN);
  }
  for (int k = 1; k < N; k++)
    if (r[k].order < r[k - 1].order)
      fail_msg("recv %d completed before recv %d", k, k - 1);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

/* ---- Accepts. ----------------------------------------------------------- */

void cancel_of_pending_accept_completes_it_with_ecanceled(void **state) {
  px_loop *loop = new_loop();
  int port;
  px_fd l = tcp_listener(loop, &port);
  px_op a = {0}, c = {0};
  rec ar = {0}, cr = {0};
  (void)state;
  assert_int_equal(px_accept(loop, &a, l, rec_cb, &ar), 0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(px_cancel(loop, &c, &a, rec_cb, &cr), 0);
  RUN_UNTIL(loop, ar.calls == 1 && cr.calls == 1, 2000);
  assert_int_equal(ar.result, PX_ECANCELED);
  assert_int_equal(cr.result, 0);
  assert_true(px_op_fd(&a) == PX_INVALID_FD);
  settle(loop);
  assert_int_equal(ar.calls, 1);
  close_fd(loop, l);
  finish(loop);
}

void close_of_listener_cancels_pending_accepts(void **state) {
  enum { N = 4 };
  px_loop *loop = new_loop();
  int port;
  px_fd l = tcp_listener(loop, &port);
  px_op a[N], c = {0};
  rec ar[N], cr = {0};
  (void)state;
  memset(a, 0, sizeof(a));
  memset(ar, 0, sizeof(ar));
  for (int i = 0; i < N; i++)
    assert_int_equal(px_accept(loop, &a[i], l, rec_cb, &ar[i]), 0);
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(px_close(loop, &c, l, rec_cb, &cr), 0);
  RUN_UNTIL(loop, g_seq == N + 1, 5000);
  settle(loop);
  for (int i = 0; i < N; i++) {
    assert_int_equal(ar[i].calls, 1);
    assert_int_equal(ar[i].result, PX_ECANCELED);
    assert_true(ar[i].order < cr.order);
  }
  assert_int_equal(cr.calls, 1);
  assert_int_equal(cr.result, 0);
  finish(loop);
}

void pending_accepts_each_get_one_connection(void **state) {
  enum { N = 16 };
  px_loop *loop = new_loop();
  int port;
  px_fd l = tcp_listener(loop, &port);
  px_fd cfd[N];
  px_op a[N], c[N];
  rec ar[N], cr[N];
  px_addr to;
  int client_port[N], seen[N] = {0};
  (void)state;
  memset(a, 0, sizeof(a));
  memset(c, 0, sizeof(c));
  memset(ar, 0, sizeof(ar));
  memset(cr, 0, sizeof(cr));
  assert_int_equal(px_addr_set(&to, "127.0.0.1", port), 0);
  for (int i = 0; i < N; i++)
    assert_int_equal(px_accept(loop, &a[i], l, rec_cb, &ar[i]), 0);
  for (int i = 0; i < N; i++) {
    assert_int_equal(px_tcp_socket(loop, &to, &cfd[i]), 0);
    assert_int_equal(px_connect(loop, &c[i], cfd[i], &to, rec_cb, &cr[i]), 0);
  }
  RUN_UNTIL(loop, g_seq == 2 * N, 5000);
  for (int i = 0; i < N; i++) {
    px_addr la;
    assert_int_equal(cr[i].result, 0);
    assert_int_equal(px_addr_local(cfd[i], &la), 0);
    client_port[i] = px_addr_port(&la);
  }
  /* Every accept got a distinct handle, peered with exactly one client. */
  for (int i = 0; i < N; i++) {
    px_addr pa;
    assert_int_equal(ar[i].calls, 1);
    assert_int_equal(ar[i].result, 0);
    assert_int_equal(px_addr_peer(px_op_fd(&a[i]), &pa), 0);
    int k = 0;
    while (k < N && client_port[k] != px_addr_port(&pa))
      k++;
    assert_true(k < N);
    seen[k]++;
  }
  for (int i = 0; i < N; i++) {
    assert_int_equal(seen[i], 1);
    close_fd(loop, px_op_fd(&a[i]));
    close_fd(loop, cfd[i]);
  }
  close_fd(loop, l);
  finish(loop);
}

/* ---- Close and handles. -------------------------------------------------- */

void close_cancels_pending_sends_and_recvs(void **state) {
  enum { N = 4, LEN = 65536 };
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op s[N], r[N], c = {0};
  rec sr[N], rr[N], cr = {0};
  static char chunk[LEN];
  char rbuf[N][16];
  (void)state;
  memset(s, 0, sizeof(s));
  memset(r, 0, sizeof(r));
  memset(sr, 0, sizeof(sr));
  memset(rr, 0, sizeof(rr));
  socketpair_new(loop, sp);
  /* Nobody reads sp[1]: the send side of sp[0] fills up (where it can),
   * so the sends below wait. */
  fill_send_buffer(loop, sp[0], NULL);
  int seq0 = g_seq;
  for (int i = 0; i < N; i++) {
    assert_int_equal(px_send(loop, &s[i], sp[0], chunk, LEN, rec_cb, &sr[i]),
                     0);
    assert_int_equal(
        px_recv(loop, &r[i], sp[0], rbuf[i], sizeof(rbuf[i]), rec_cb, &rr[i]),
        0);
  }
  assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
  assert_int_equal(px_close(loop, &c, sp[0], rec_cb, &cr), 0);
  RUN_UNTIL(loop, g_seq == seq0 + 2 * N + 1, 5000);
  settle(loop);
  for (int i = 0; i < N; i++) {
    assert_int_equal(sr[i].calls, 1);
    assert_int_equal(rr[i].calls, 1);
    assert_int_equal(rr[i].result, PX_ECANCELED);
    /* A send cancelled after it moved some bytes reports them: that is a
     * short send, not a cancellation. */
    if (sr[i].result != PX_ECANCELED &&
        (sr[i].result <= 0 || sr[i].result > LEN))
      fail_msg("send %d cancelled by the close completed with %d (%s)", i,
               sr[i].result, px_strerror(sr[i].result));
    assert_true(sr[i].order < cr.order);
    assert_true(rr[i].order < cr.order);
  }
  assert_int_equal(cr.calls, 1);
  assert_int_equal(cr.result, 0);
  close_fd(loop, sp[1]);
  finish(loop);
}

typedef struct canceller {
  px_op *target;
  px_op op;
  rec r;
  int nops;    /* calls of the nop that cancels from its callback */
  int refused; /* that px_cancel was refused */
} canceller;

static void cancel_now_cb(px_loop *loop, px_op *op) {
  canceller *k = op->data;
  k->nops++;
  if (px_cancel(loop, &k->op, k->target, rec_cb, &k->r) != 0)
    k->refused++;
}

/*
 * A cancel against a recv whose data has arrived, three ways: both still
 * in the kernel; the recv's completion queued behind the callback that
 * cancels it; the recv already done.  Whatever wins, the recv completes
 * once, with the data or PX_ECANCELED, the cancel completes once (0, or
 * PX_ENOENT / PX_EALREADY when the data won; PX_ENOENT when the recv's
 * callback had already run), and a cancelled recv consumed nothing.  Which
 * side wins is up to the machine: no outcome is required to occur.
 */
void cancel_racing_with_completion_completes_each_once(void **state) {
  enum { ROUNDS = 90 };
  px_loop *loop = new_loop();
  px_loop *peer = new_loop();
  px_fd sp[2];
  px_op rop = {0}, nop = {0};
  rec rr = {0};
  canceller k = {0};
  uint8_t in[4], out;
  int cancelled = 0, nops = 0;
  (void)state;
  k.target = &rop;
  /* Each loop adopts only its own end. */
  assert_int_equal(pt_raw_socketpair(sp), 0);
  assert_int_equal(px_adopt(loop, sp[0]), 0);
  assert_int_equal(px_adopt(peer, sp[1]), 0);
  for (int i = 0; i < ROUNDS; i++) {
    int calls = rr.calls, kcalls = k.r.calls;
    out = (uint8_t)i;
    in[0] = (uint8_t)~i;
    assert_int_equal(px_recv(loop, &rop, sp[0], in, sizeof(in), rec_cb, &rr),
                     0);
    assert_int_equal(px_run(loop, PX_RUN_NOWAIT), 1);
    /* The data is there before this loop looks again. */
    assert_int_equal(sync_send(peer, sp[1], &out, 1), 1);
    if (i % 3 == 0) {
      assert_int_equal(px_cancel(loop, &k.op, &rop, rec_cb, &k.r), 0);
    } else if (i % 3 == 1) {
      nops++;
      assert_int_equal(px_nop(loop, &nop, cancel_now_cb, &k), 0);
    } else {
      RUN_UNTIL(loop, rr.calls == calls + 1, 2000);
      assert_int_equal(px_cancel(loop, &k.op, &rop, rec_cb, &k.r), 0);
    }
    RUN_UNTIL(loop,
              k.refused || (rr.calls == calls + 1 && k.r.calls == kcalls + 1),
              2000);
    assert_int_equal(k.refused, 0);
    assert_int_equal(rr.calls, calls + 1);
    assert_int_equal(k.r.calls, kcalls + 1);
    if (rr.result == PX_ECANCELED) {
      cancelled++;
      if (i % 3 == 2)
        fail_msg("round %d: a recv whose callback had run was cancelled", i);
      assert_int_equal(k.r.result, 0);
      assert_int_equal(sync_recv(loop, sp[0], in, sizeof(in)), 1);
    } else {
      if (rr.result != 1)
        fail_msg("round %d: the recv completed with %d (%s)", i, rr.result,
                 px_strerror(rr.result));
      if (i % 3 == 2 && k.r.result != PX_ENOENT)
        fail_msg("round %d: the cancel of a recv whose callback had run "
                 "gave %d, not PX_ENOENT",
                 i, k.r.result);
      if (k.r.result != 0 && k.r.result != PX_ENOENT &&
          k.r.result != PX_EALREADY)
        fail_msg("round %d: the cancel of a finished recv gave %d", i,
                 k.r.result);
    }
    assert_int_equal(in[0], (uint8_t)i);
  }
  settle(loop);
  /* Every recv, cancel and nop completed exactly once over the rounds. */
  assert_int_equal(rr.calls, ROUNDS);
  assert_int_equal(k.r.calls, ROUNDS);
  assert_int_equal(k.nops, nops);
  printf("%d of %d recvs were cancelled before their data\n", cancelled,
         ROUNDS);
  close_fd(loop, sp[0]);
  close_fd(peer, sp[1]);
  finish(loop);
  finish(peer);
}

void fd_close_with_ops_in_flight_is_refused_with_ebusy(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op rop = {0}, cop = {0};
  rec rr = {0}, cr = {0};
  char buf[8];
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_recv(loop, &rop, sp[0], buf, sizeof(buf), rec_cb, &rr),
                   0);
  assert_int_equal(px_fd_close(loop, sp[0]), PX_EBUSY);
  /* The handle is untouched: the recv still gets data. */
  assert_int_equal(sync_send(loop, sp[1], "ok", 2), 2);
  RUN_UNTIL(loop, rr.calls == 1, 2000);
  assert_int_equal(rr.result, 2);
  assert_int_equal(px_recv(loop, &rop, sp[0], buf, sizeof(buf), rec_cb, &rr),
                   0);
  assert_int_equal(px_close(loop, &cop, sp[0], rec_cb, &cr), 0);
  RUN_UNTIL(loop, rr.calls == 2 && cr.calls == 1, 2000);
  assert_int_equal(rr.result, PX_ECANCELED);
  close_fd(loop, sp[1]);
  finish(loop);
}

/* Two ops on one socket, a recv with its data already there and a send
 * with room, finish in the same wait; the first callback closes the
 * handle.  The other op has finished too, so the close is not refused
 * (io_uring runs a callback before it reaped the rest of the wait's
 * completions: px_fd_close takes them first), and the other callback
 * still runs with its own result. */
typedef struct close_first {
  px_op ops[2]; /* recv, send */
  px_fd fd;
  int calls, close_r;
  int32_t results[2];
} close_first;

static void close_first_done(px_loop *loop, px_op *op) {
  close_first *c = op->data;
  c->results[op == &c->ops[0] ? 0 : 1] = op->result;
  if (c->calls++ == 0)
    c->close_r = px_fd_close(loop, c->fd);
}

void fd_close_in_a_callback_counts_ops_finished_in_the_same_wait(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  char in[8], out[4] = "pong";
  close_first c = {.close_r = 1};
  (void)state;
  socketpair_new(loop, sp);
  c.fd = sp[0];
  assert_int_equal(sync_send(loop, sp[1], "ping", 4), 4);
  assert_int_equal(
      px_recv(loop, &c.ops[0], sp[0], in, sizeof(in), close_first_done, &c), 0);
  assert_int_equal(
      px_send(loop, &c.ops[1], sp[0], out, sizeof(out), close_first_done, &c),
      0);
  RUN_UNTIL(loop, c.calls == 2, 2000);
  assert_int_equal(c.close_r, 0);
  assert_int_equal(c.results[0], 4);
  assert_memory_equal(in, "ping", 4);
  assert_int_equal(c.results[1], 4);
  /* The peer gets the send, then end of file: the handle is closed. */
  char got[8];
  assert_int_equal(sync_recv(loop, sp[1], got, sizeof(got)), 4);
  assert_memory_equal(got, "pong", 4);
  assert_int_equal(sync_recv(loop, sp[1], got, sizeof(got)), 0);
  close_fd(loop, sp[1]);
  finish(loop);
}

void adopted_handle_is_usable_by_the_loop(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  char buf[8];
  (void)state;
  assert_int_equal(pt_raw_socketpair(sp), 0);
  /* Not known to the loop until adopted. */
  assert_int_equal(px_recv(loop, &op, sp[0], buf, sizeof(buf), rec_cb, &r),
                   PX_EBADF);
  assert_int_equal(px_adopt(loop, sp[0]), 0);
  assert_int_equal(px_adopt(loop, sp[1]), 0);
  assert_int_equal(sync_send(loop, sp[1], "adopt", 5), 5);
  assert_int_equal(sync_recv(loop, sp[0], buf, sizeof(buf)), 5);
  assert_memory_equal(buf, "adopt", 5);
  assert_int_equal(r.calls, 0);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}

void handle_number_reused_after_close_is_usable(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2], again[2];
  px_op c0 = {0}, c1 = {0};
  rec cr0 = {0}, cr1 = {0};
  char buf[8];
  (void)state;
  for (int round = 0; round < 4; round++) {
    socketpair_new(loop, sp);
    assert_int_equal(sync_send(loop, sp[0], "r", 1), 1);
    assert_int_equal(sync_recv(loop, sp[1], buf, sizeof(buf)), 1);
    assert_int_equal(px_close(loop, &c0, sp[0], rec_cb, &cr0), 0);
    assert_int_equal(px_close(loop, &c1, sp[1], rec_cb, &cr1), 0);
    RUN_UNTIL(loop, cr0.calls == round + 1 && cr1.calls == round + 1, 2000);
    assert_int_equal(cr0.result, 0);
    assert_int_equal(cr1.result, 0);
  }
  /* The numbers are free again; new handles (likely the same numbers)
   * start with clean queues. */
  socketpair_new(loop, again);
  assert_int_equal(sync_send(loop, again[1], "fresh", 5), 5);
  assert_int_equal(sync_recv(loop, again[0], buf, sizeof(buf)), 5);
  assert_memory_equal(buf, "fresh", 5);
  close_fd(loop, again[0]);
  close_fd(loop, again[1]);
  finish(loop);
}

/* ---- Addresses. ---------------------------------------------------------- */

void addr_set_takes_numeric_addresses_only(void **state) {
  px_addr a;
  (void)state;
  assert_int_equal(px_addr_set(&a, "localhost", 80), PX_EINVAL);
  assert_int_equal(px_addr_set(&a, "127.0.0.1", 65536), PX_EINVAL);
  assert_int_equal(px_addr_set(&a, "127.0.0.1", -1), PX_EINVAL);
  assert_int_equal(px_addr_set(&a, "300.1.1.1", 80), PX_EINVAL);
  assert_int_equal(px_addr_set(&a, "10.1.2.3", 8080), 0);
  assert_true(a.len > 0);
  assert_int_equal(px_addr_port(&a), 8080);
  assert_int_equal(px_addr_set(&a, "::1", 443), 0);
  assert_true(a.len > 0);
  assert_int_equal(px_addr_port(&a), 443);
}

void tcp_works_over_ipv6_loopback(void **state) {
  px_loop *loop = new_loop();
  px_fd l = PX_INVALID_FD, c = PX_INVALID_FD;
  px_addr la, to, peer;
  px_op a = {0}, k = {0};
  rec ar = {0}, kr = {0};
  char buf[8];
  (void)state;
  int rc = px_tcp_listen(loop, "::1", 0, 16, &l);
  if (rc == PX_EADDRNOTAVAIL || rc == PX_EAFNOSUPPORT) {
    finish(loop);
    printf("no IPv6 loopback here: %s\n", px_strerror(rc));
    skip();
  }
  assert_int_equal(rc, 0);
  assert_int_equal(px_addr_local(l, &la), 0);
  assert_int_equal(px_addr_set(&to, "::1", px_addr_port(&la)), 0);
  assert_int_equal(px_tcp_socket(loop, &to, &c), 0);
  assert_int_equal(px_accept(loop, &a, l, rec_cb, &ar), 0);
  assert_int_equal(px_connect(loop, &k, c, &to, rec_cb, &kr), 0);
  RUN_UNTIL(loop, ar.calls == 1 && kr.calls == 1, 5000);
  assert_int_equal(ar.result, 0);
  assert_int_equal(kr.result, 0);
  assert_int_equal(px_addr_peer(c, &peer), 0);
  assert_int_equal(px_addr_port(&peer), px_addr_port(&la));
  assert_int_equal(sync_send(loop, c, "six", 3), 3);
  assert_int_equal(sync_recv(loop, px_op_fd(&a), buf, sizeof(buf)), 3);
  assert_memory_equal(buf, "six", 3);
  close_fd(loop, px_op_fd(&a));
  close_fd(loop, c);
  close_fd(loop, l);
  finish(loop);
}

/* ---- Many connections at once. ----------------------------------------- */

enum { CONNS = 64, ROUNDS = 50, MSG = 32 };

typedef struct conn {
  struct echo *echo;
  px_fd cfd, sfd;
  px_op c_send, c_recv, s_recv, s_send, acc, con;
  uint8_t c_out[MSG], c_in[MSG], s_buf[MSG];
  size_t c_got;
  int round;
} conn;

typedef struct echo {
  conn c[CONNS];
  px_fd listener;
  px_addr to;
  int accepted, finished, closed, errors;
} echo;

static void echo_fail(echo *e) {
  e->errors++;
}

static void client_send_next(px_loop *loop, conn *c);

static void client_recv_cb(px_loop *loop, px_op *op) {
  conn *c = op->data;
  if (op->result <= 0) {
    echo_fail(c->echo);
    return;
  }
  c->c_got += (size_t)op->result;
  if (c->c_got < MSG) {
    if (px_recv(loop, op, c->cfd, c->c_in + c->c_got, MSG - c->c_got,
                client_recv_cb, c) != 0)
      echo_fail(c->echo);
    return;
  }
  if (memcmp(c->c_in, c->c_out, MSG) != 0) {
    echo_fail(c->echo);
    return;
  }
  if (++c->round == ROUNDS) {
    c->echo->finished++;
    return;
  }
  client_send_next(loop, c);
}

static void client_send_cb(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  if (op->result != MSG)
    echo_fail(c->echo);
}

static void client_send_next(px_loop *loop, conn *c) {
  for (int i = 0; i < MSG; i++)
    c->c_out[i] = (uint8_t)((c - c->echo->c) * 31 + c->round * 7 + i);
  c->c_got = 0;
  if (px_recv(loop, &c->c_recv, c->cfd, c->c_in, MSG, client_recv_cb, c) != 0 ||
      px_send(loop, &c->c_send, c->cfd, c->c_out, MSG, client_send_cb, c) != 0)
    echo_fail(c->echo);
}

/* The server echoes whatever arrives, send after recv, one at a time. */
static void server_recv_cb(px_loop *loop, px_op *op);

static void server_send_cb(px_loop *loop, px_op *op) {
  conn *c = op->data;
  if (op->result <= 0) {
    echo_fail(c->echo);
    return;
  }
  if (px_recv(loop, &c->s_recv, c->sfd, c->s_buf, MSG, server_recv_cb, c) != 0)
    echo_fail(c->echo);
}

static void server_recv_cb(px_loop *loop, px_op *op) {
  conn *c = op->data;
  if (op->result == 0) {
    c->echo->closed++; /* the client closed */
    return;
  }
  if (op->result < 0) {
    echo_fail(c->echo);
    return;
  }
  if (px_send(loop, &c->s_send, c->sfd, c->s_buf, (size_t)op->result,
              server_send_cb, c) != 0)
    echo_fail(c->echo);
}

static void connect_cb(px_loop *loop, px_op *op) {
  conn *c = op->data;
  if (op->result != 0) {
    echo_fail(c->echo);
    return;
  }
  client_send_next(loop, c);
}

static void accept_cb(px_loop *loop, px_op *op) {
  conn *c = op->data;
  if (op->result != 0) {
    echo_fail(c->echo);
    return;
  }
  c->sfd = px_op_fd(op);
  c->echo->accepted++;
  if (px_recv(loop, &c->s_recv, c->sfd, c->s_buf, MSG, server_recv_cb, c) != 0)
    echo_fail(c->echo);
}

void many_connections_echo_concurrently(void **state) {
  px_loop *loop = new_loop();
  echo *e = calloc(1, sizeof(*e));
  int port;
  (void)state;
  assert_non_null(e);
  e->listener = tcp_listener(loop, &port);
  assert_int_equal(px_addr_set(&e->to, "127.0.0.1", port), 0);
  for (int i = 0; i < CONNS; i++) {
    conn *c = &e->c[i];
    c->echo = e;
    assert_int_equal(px_accept(loop, &c->acc, e->listener, accept_cb, c), 0);
  }
  for (int i = 0; i < CONNS; i++) {
    conn *c = &e->c[i];
    assert_int_equal(px_tcp_socket(loop, &e->to, &c->cfd), 0);
    assert_int_equal(px_connect(loop, &c->con, c->cfd, &e->to, connect_cb, c),
                     0);
  }
  RUN_UNTIL(loop, e->errors > 0 || e->finished == CONNS, 20000);
  assert_int_equal(e->errors, 0);
  assert_int_equal(e->accepted, CONNS);
  /* Closing each client ends its server side's pending recv with EOF. */
  for (int i = 0; i < CONNS; i++)
    close_fd(loop, e->c[i].cfd);
  RUN_UNTIL(loop, e->closed == CONNS || e->errors > 0, 5000);
  assert_int_equal(e->errors, 0);
  for (int i = 0; i < CONNS; i++)
    close_fd(loop, e->c[i].sfd);
  close_fd(loop, e->listener);
  free(e);
  finish(loop);
}

/* Each recv on a datagram socket takes one datagram; the rest stays queued
 * and the next recv must find it without a new readiness event. */
void recvs_on_a_datagram_socket_each_get_one_datagram(void **state) {
  px_loop *loop = new_loop();
  px_fd u[2];
  char a[16], b[16];
  px_op op1 = {0}, op2 = {0};
  rec r1 = {0}, r2 = {0};
  (void)state;
  assert_int_equal(pt_udp_pair(u), 0);
  assert_int_equal(px_adopt(loop, u[0]), 0);
  assert_int_equal(pt_raw_send(u[1], "one", 3), 3);
  assert_int_equal(pt_raw_send(u[1], "two!", 4), 4);
  assert_int_equal(px_recv(loop, &op1, u[0], a, sizeof(a), rec_cb, &r1), 0);
  assert_int_equal(px_recv(loop, &op2, u[0], b, sizeof(b), rec_cb, &r2), 0);
  RUN_UNTIL(loop, r1.calls == 1 && r2.calls == 1, 5000);
  assert_int_equal(r1.result, 3);
  assert_memory_equal(a, "one", 3);
  assert_int_equal(r2.result, 4);
  assert_memory_equal(b, "two!", 4);
  close_fd(loop, u[0]);
  pt_raw_close(u[1]);
  finish(loop);
}

/* Calls the kernel refuses at once fail at once, with the kernel's code,
 * instead of waiting for readiness that never comes. */
void recv_on_a_listener_fails_at_once_with_enotconn(void **state) {
  px_loop *loop = new_loop();
  int port;
  px_fd l = tcp_listener(loop, &port);
  char buf[8];
  (void)state;
  assert_int_equal(sync_recv(loop, l, buf, sizeof(buf)), PX_ENOTCONN);
  close_fd(loop, l);
  finish(loop);
}

void read_on_a_pipe_write_end_fails_at_once_with_ebadf(void **state) {
  px_loop *loop = new_loop();
  px_fd p[2];
  char buf[8];
  (void)state;
  assert_int_equal(px_pipe(loop, p), 0);
  assert_int_equal(sync_read(loop, p[1], buf, sizeof(buf), PX_CUR), PX_EBADF);
  close_fd(loop, p[0]);
  close_fd(loop, p[1]);
  finish(loop);
}

/* A datagram longer than the buffer is cut to it (the rest is dropped),
 * and the recv reports what it got. */
void datagram_longer_than_the_buffer_is_cut_to_it(void **state) {
  px_loop *loop = new_loop();
  px_fd u[2];
  char buf[2], next[8];
  (void)state;
  assert_int_equal(pt_udp_pair(u), 0);
  assert_int_equal(px_adopt(loop, u[0]), 0);
  assert_int_equal(pt_raw_send(u[1], "abcdef", 6), 6);
  assert_int_equal(pt_raw_send(u[1], "gh", 2), 2);
  assert_int_equal(sync_recv(loop, u[0], buf, sizeof(buf)), 2);
  assert_memory_equal(buf, "ab", 2);
  assert_int_equal(sync_recv(loop, u[0], next, sizeof(next)), 2);
  assert_memory_equal(next, "gh", 2);
  close_fd(loop, u[0]);
  pt_raw_close(u[1]);
  finish(loop);
}

void send_on_a_listener_fails_with_epipe(void **state) {
  px_loop *loop = new_loop();
  int port;
  px_fd l = tcp_listener(loop, &port);
  (void)state;
  assert_int_equal(sync_send(loop, l, "x", 1), PX_EPIPE);
  close_fd(loop, l);
  finish(loop);
}

/* A connection moves between loops: released by one (still open), adopted
 * by the other.  Windows refuses (a completion port keeps a handle). */
void fd_release_hands_a_connection_to_another_loop(void **state) {
  px_loop *a = new_loop(), *b = new_loop();
  px_fd c, s;
  char buf[16];
  (void)state;
  tcp_pair(a, &c, &s);
  assert_int_equal(sync_send(a, c, "one", 3), 3);
  assert_int_equal(sync_recv(a, s, buf, sizeof(buf)), 3);
  assert_int_equal(px_fd_release(a, (px_fd)987654), PX_EBADF);
  int r = px_fd_release(a, s);
  if (r == PX_EOPNOTSUPP) {
    print_message("[ info ] px_fd_release: not on this platform\n");
    close_fd(a, s);
  } else {
    assert_int_equal(r, 0);
    px_op op = {0};
    rec rr = {0};
    /* a no longer knows it; b does once adopted. */
    assert_int_equal(px_recv(a, &op, s, buf, sizeof(buf), rec_cb, &rr),
                     PX_EBADF);
    assert_int_equal(px_adopt(b, s), 0);
    assert_int_equal(sync_send(a, c, "two", 3), 3);
    assert_int_equal(sync_recv(b, s, buf, sizeof(buf)), 3);
    assert_memory_equal(buf, "two", 3);
    close_fd(b, s);
  }
  close_fd(a, c);
  finish(a);
  finish(b);
}

/* ---- A short read that leaves bytes behind. ----------------------------- */

/* Starts a receive on fd and runs the loop until the backend has it
 * waiting (nothing has been sent yet). */
static void recv_waiting(px_loop *loop, px_op *op, px_fd fd, char *buf,
                         size_t len, rec *r) {
  assert_int_equal(px_recv(loop, op, fd, buf, len, rec_cb, r), 0);
  for (int i = 0; i < 3; i++)
    assert_true(px_run(loop, PX_RUN_NOWAIT) >= 0);
  assert_int_equal(r->calls, 0);
}

/* A second receive on fd gets want, which was queued when the first one
 * returned short. */
static void next_recv_gets(px_loop *loop, px_fd fd, const char *want) {
  px_op op = {0};
  rec r = {0};
  char buf[64] = {0};
  assert_int_equal(px_recv(loop, &op, fd, buf, sizeof(buf), rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, (int)strlen(want));
  assert_memory_equal(buf, want, strlen(want));
}

/*
 * TCP's urgent byte: a read stops at its mark with bytes still queued
 * behind it, so a read that comes back short has not drained the socket
 * here.  The next receive gets those bytes at once.
 */
void recv_short_at_the_urgent_mark_leaves_the_rest_for_the_next(void **state) {
  px_loop *loop = new_loop();
  px_fd c, s;
  px_op op = {0};
  rec r = {0};
  char buf[64] = {0};
  (void)state;
  tcp_pair(loop, &c, &s);
  recv_waiting(loop, &op, s, buf, sizeof(buf), &r);
  assert_int_equal(pt_raw_send(c, "abc", 3), 3);
  assert_int_equal(pt_raw_send_urgent(c, "X", 1), 1);
  assert_int_equal(pt_raw_send(c, "def", 3), 3);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  if (r.result != 3 || memcmp(buf, "abc", 3) != 0)
    fail_msg("the first receive got %d bytes, not the 3 before the mark",
             r.result);
  next_recv_gets(loop, s, "def");
  close_fd(loop, c);
  close_fd(loop, s);
  finish(loop);
}

/*
 * An AF_UNIX stream read stops after a message that carries descriptors,
 * with the next message's bytes still queued: the next receive gets them
 * at once.  (px passes no descriptors; the kernel closes the copy.)
 */
void recv_short_after_a_message_with_descriptors_leaves_the_rest(void **state) {
  px_loop *loop = new_loop();
  px_fd sp[2];
  px_op op = {0};
  rec r = {0};
  char buf[64] = {0};
  (void)state;
  socketpair_new(loop, sp);
  recv_waiting(loop, &op, sp[1], buf, sizeof(buf), &r);
  if (pt_raw_send_with_descriptor(sp[0], "abc", 3) != 3) {
    px_op c = {0};
    rec cr = {0};
    assert_int_equal(px_cancel(loop, &c, &op, rec_cb, &cr), 0);
    RUN_UNTIL(loop, r.calls == 1 && cr.calls == 1, 2000);
    close_fd(loop, sp[0]);
    close_fd(loop, sp[1]);
    finish(loop);
    printf("           skipped: no descriptor passing on this platform\n");
    skip();
  }
  assert_int_equal(pt_raw_send(sp[0], "def", 3), 3);
  RUN_UNTIL(loop, r.calls == 1, 2000);
  assert_int_equal(r.result, 3);
  assert_memory_equal(buf, "abc", 3);
  next_recv_gets(loop, sp[1], "def");
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
}
