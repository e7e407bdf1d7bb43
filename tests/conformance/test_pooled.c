/* Pooled receives: the buffer is chosen when data arrives. */
#include "conf.h"

/* What a pooled receive's callback saw, one delivery at a time. */
typedef struct prec {
  int calls;
  int result;
  int more;   /* px_op_more at the last call */
  int finals; /* calls with px_op_more 0 */
  int order;  /* g_seq at the last call */
  void *buf;  /* px_op_buf at the last call */
  px_bufpool *pool;
  unsigned char got[4096]; /* the bytes of every delivery, in order */
  size_t len;
  int release; /* release each buffer in the callback, else keep it */
  void *kept[64];
  int nkept;
} prec;

static void prec_cb(px_loop *loop, px_op *op) {
  prec *p = op->data;
  (void)loop;
  p->calls++;
  p->order = g_seq++;
  p->result = op->result;
  p->more = px_op_more(op);
  p->finals += !p->more;
  p->buf = px_op_buf(op);
  if (op->result > 0) {
    assert_non_null(p->buf);
    assert_true(p->len + (size_t)op->result <= sizeof(p->got));
    memcpy(p->got + p->len, p->buf, (size_t)op->result);
    p->len += (size_t)op->result;
    if (p->release) {
      assert_int_equal(px_buf_release(p->pool, p->buf), 0);
    } else {
      assert_true(p->nkept < 64);
      p->kept[p->nkept++] = p->buf;
    }
  } else {
    assert_null(p->buf);
  }
}

static px_bufpool *pool_new(px_loop *loop, uint32_t count, uint32_t size) {
  px_bufpool *pool = NULL;
  assert_int_equal(px_bufpool_new(loop, count, size, &pool), 0);
  return pool;
}

static uint32_t pool_in_use(px_bufpool *pool) {
  px_pool_stats st;
  px_bufpool_stats(pool, &st);
  return st.in_use;
}

void pooled_recv_delivers_data_in_a_pool_buffer(void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool = pool_new(loop, 4, 64);
  px_fd sp[2];
  px_op op = {0};
  prec r = {0};
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(sync_send(loop, sp[0], "hello", 5), 5);
  assert_int_equal(px_recv_pooled(loop, &op, sp[1], pool, prec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 5);
  assert_int_equal(r.more, 0);
  assert_memory_equal(r.buf, "hello", 5);
  assert_ptr_equal(px_op_buf(&op), r.buf);
  assert_int_equal(pool_in_use(pool), 1);
  /* The buffer is the program's until released, and released once. */
  assert_int_equal(px_bufpool_free(pool), PX_EBUSY);
  assert_int_equal(px_buf_release(pool, r.buf), 0);
  assert_int_equal(px_buf_release(pool, r.buf), PX_EINVAL);
  assert_int_equal(pool_in_use(pool), 0);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  finish(loop);
  /* A pool outlives its loop (without the backend's part). */
  assert_int_equal(px_bufpool_free(pool), 0);
}

void pooled_recv_holds_no_buffer_while_it_waits(void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool = pool_new(loop, 8, 64);
  px_fd sp[2];
  px_op ops[4] = {{0}};
  prec r[4] = {{0}};
  px_pool_stats st;
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_recv_pooled(loop, &ops[0], sp[1], pool, prec_cb, &r[0]),
                   0);
  /* Queued behind the first: the stream order of receives holds. */
  assert_int_equal(px_recv_pooled(loop, &ops[1], sp[1], pool, prec_cb, &r[1]),
                   0);
  settle(loop);
  assert_int_equal(r[0].calls + r[1].calls, 0);
  px_bufpool_stats(pool, &st);
  assert_int_equal(st.in_use, 0);
  assert_int_equal(st.high_water, 0);
  /* Buffers the kernel does not hold are still there for px_buf_get. */
  void *held[8];
  uint32_t got = 0;
  while (got < 8 && (held[got] = px_buf_get(pool)) != NULL)
    got++;
  assert_true(got >= 8 - 2);
  assert_int_equal(got + st.lent, 8);
  for (uint32_t i = 0; i < got; i++)
    assert_int_equal(px_buf_release(pool, held[i]), 0);
  assert_int_equal(sync_send(loop, sp[0], "one", 3), 3);
  RUN_UNTIL(loop, r[0].calls == 1, 5000);
  assert_int_equal(sync_send(loop, sp[0], "two", 3), 3);
  RUN_UNTIL(loop, r[1].calls == 1, 5000);
  assert_int_equal(r[0].result, 3);
  assert_memory_equal(r[0].buf, "one", 3);
  assert_int_equal(r[1].result, 3);
  assert_memory_equal(r[1].buf, "two", 3);
  assert_int_equal(px_buf_release(pool, r[0].buf), 0);
  assert_int_equal(px_buf_release(pool, r[1].buf), 0);
  assert_int_equal(pool_in_use(pool), 0);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  assert_int_equal(px_bufpool_free(pool), 0);
  finish(loop);
}

void pooled_recv_with_the_pool_empty_gives_enobufs_and_loses_nothing(
    void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool = pool_new(loop, 1, 64);
  px_fd c, s;
  px_op op = {0};
  prec r = {0};
  px_pool_stats st;
  (void)state;
  tcp_pair(loop, &c, &s);
  void *held = px_buf_get(pool);
  assert_non_null(held);
  assert_int_equal(sync_send(loop, c, "abcdef", 6), 6);
  assert_int_equal(px_recv_pooled(loop, &op, s, pool, prec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, PX_ENOBUFS);
  px_bufpool_stats(pool, &st);
  assert_true(st.exhausted >= 1);
  assert_int_equal(st.in_use, 1);
  /* The bytes wait in the socket for the next receive. */
  assert_int_equal(px_buf_release(pool, held), 0);
  assert_int_equal(px_recv_pooled(loop, &op, s, pool, prec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 2, 5000);
  assert_int_equal(r.result, 6);
  assert_memory_equal(r.buf, "abcdef", 6);
  assert_int_equal(px_buf_release(pool, r.buf), 0);
  close_fd(loop, c);
  close_fd(loop, s);
  assert_int_equal(px_bufpool_free(pool), 0);
  finish(loop);
}

void pooled_recv_gives_zero_at_the_end_of_the_stream(void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool = pool_new(loop, 2, 64);
  px_fd c, s;
  px_op op = {0};
  prec r = {0};
  (void)state;
  tcp_pair(loop, &c, &s);
  assert_int_equal(px_recv_pooled(loop, &op, s, pool, prec_cb, &r), 0);
  settle(loop);
  close_fd(loop, c);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  assert_int_equal(r.result, 0);
  assert_null(r.buf);
  assert_int_equal(pool_in_use(pool), 0);
  close_fd(loop, s);
  assert_int_equal(px_bufpool_free(pool), 0);
  finish(loop);
}

/* An empty pool hides neither the end of a stream nor a reset: receives
 * that wait while every buffer is handed out complete with 0 at the
 * peer's close and with PX_ECONNRESET at its reset, not with PX_ENOBUFS
 * (a program waiting for a buffer would wait for a connection that has
 * gone). */
void pooled_recv_with_the_pool_empty_still_sees_the_end_and_a_reset(
    void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool = pool_new(loop, 1, 64);
  px_fd c[2], s[2];
  px_op op[2] = {{0}};
  prec r[2] = {{0}};
  (void)state;
  tcp_pair(loop, &c[0], &s[0]);
  tcp_pair(loop, &c[1], &s[1]);
  void *held = px_buf_get(pool);
  assert_non_null(held);
  for (int i = 0; i < 2; i++)
    assert_int_equal(px_recv_pooled(loop, &op[i], s[i], pool, prec_cb, &r[i]),
                     0);
  settle(loop);
  assert_int_equal(r[0].calls + r[1].calls, 0); /* idle: no PX_ENOBUFS */
  close_fd(loop, c[0]);
  assert_int_equal(px_fd_close_reset(loop, c[1]), 0);
  RUN_UNTIL(loop, r[0].calls == 1 && r[1].calls == 1, 5000);
  assert_int_equal(r[0].result, 0);
  assert_int_equal(r[1].result, PX_ECONNRESET);
  assert_int_equal(px_buf_release(pool, held), 0);
  assert_int_equal(pool_in_use(pool), 0);
  close_fd(loop, s[0]);
  close_fd(loop, s[1]);
  assert_int_equal(px_bufpool_free(pool), 0);
  finish(loop);
}

void pooled_recv_cancel_and_close_complete_it_with_ecanceled(void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool = pool_new(loop, 2, 64);
  px_fd sp[2];
  px_op op = {0}, cop = {0}, clop = {0};
  prec r = {0};
  rec cr = {0}, clr = {0};
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_recv_pooled(loop, &op, sp[1], pool, prec_cb, &r), 0);
  settle(loop);
  /* Freeing the pool under a pending receive is refused. */
  assert_int_equal(px_bufpool_free(pool), PX_EBUSY);
  assert_int_equal(px_cancel(loop, &cop, &op, rec_cb, &cr), 0);
  RUN_UNTIL(loop, r.calls == 1 && cr.calls == 1, 5000);
  assert_int_equal(r.result, PX_ECANCELED);
  assert_int_equal(cr.result, 0);
  assert_int_equal(px_recv_pooled(loop, &op, sp[1], pool, prec_cb, &r), 0);
  settle(loop);
  assert_int_equal(px_close(loop, &clop, sp[1], rec_cb, &clr), 0);
  RUN_UNTIL(loop, r.calls == 2 && clr.calls == 1, 5000);
  assert_int_equal(r.result, PX_ECANCELED);
  assert_int_equal(clr.result, 0);
  assert_true(r.order < clr.order); /* the receive ends before the close */
  assert_int_equal(pool_in_use(pool), 0);
  close_fd(loop, sp[0]);
  assert_int_equal(px_bufpool_free(pool), 0);
  finish(loop);
}

void pooled_recv_refuses_bad_arguments(void **state) {
  px_loop *loop = new_loop(), *other = new_loop();
  px_bufpool *pool = pool_new(loop, 2, 64), *foreign = pool_new(other, 2, 64);
  px_fd sp[2];
  px_op op = {0};
  prec r = {0};
  (void)state;
  socketpair_new(loop, sp);
  assert_int_equal(px_recv_pooled(loop, &op, sp[1], NULL, prec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_recv_pooled(loop, &op, sp[1], foreign, prec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_recv_pooled_ex(loop, &op, sp[1], pool, 0x80, prec_cb, &r),
                   PX_EINVAL);
  assert_int_equal(px_recv_pooled(loop, &op, (px_fd)987654, pool, prec_cb, &r),
                   PX_EBADF);
  if (px_loop_caps(loop) & PX_CAP_MULTISHOT) {
    /* A multishot receive has no deadline: one submission, many results. */
    assert_int_equal(px_op_deadline(&op, 100), 0);
    assert_int_equal(px_recv_pooled_ex(loop, &op, sp[1], pool,
                                       PX_RECV_MULTISHOT, prec_cb, &r),
                     PX_EINVAL);
    px_op_init(&op);
  }
  assert_null(px_op_buf(&op));
  assert_int_equal(px_op_more(&op), 0);
  assert_int_equal(r.calls, 0);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  assert_int_equal(px_bufpool_free(pool), 0);
  assert_int_equal(px_bufpool_free(foreign), 0);
  finish(loop);
  finish(other);
}

/* ---- 64 clients echoed through a pool of two buffers. -------------------- */

#define ECHO_CONNS 64
#define ECHO_BYTES 8192
#define ECHO_BUF 1024

typedef struct echo_srv echo_srv;
typedef struct echo_conn {
  echo_srv *srv;
  px_fd fd;
  px_op op;
  void *buf;
  size_t len, sent;
  int waiting; /* on the ENOBUFS list */
  int closed;
  struct echo_conn *next_wait;
} echo_conn;

struct echo_srv {
  px_loop *loop;
  px_bufpool *pool;
  echo_conn conns[ECHO_CONNS];
  echo_conn *waiters, *waiters_tail;
  int enobufs, closed, deliveries;
};

typedef struct echo_client {
  px_fd fd;
  px_op sop, rop;
  unsigned char tx[ECHO_BYTES], rx[ECHO_BYTES];
  size_t got;
  int sent_ok, done;
} echo_client;

static void echo_arm(echo_conn *c);

static void echo_closed(px_loop *loop, px_op *op) {
  echo_conn *c = op->data;
  (void)loop;
  assert_int_equal(op->result, 0);
  c->closed = 1;
  c->srv->closed++;
}

/* A connection that found the pool empty waits its turn. */
static void echo_park(echo_srv *srv, echo_conn *c) {
  c->waiting = 1;
  c->next_wait = NULL;
  if (srv->waiters_tail != NULL)
    srv->waiters_tail->next_wait = c;
  else
    srv->waiters = c;
  srv->waiters_tail = c;
}

/* A buffer came back: the longest waiter tries again (with a buffer now
 * free, a receive with data gets one). */
static void echo_wake_one(echo_srv *srv) {
  echo_conn *c = srv->waiters;
  if (c == NULL)
    return;
  srv->waiters = c->next_wait;
  if (srv->waiters == NULL)
    srv->waiters_tail = NULL;
  c->waiting = 0;
  echo_arm(c);
}

/* Every waiter tries again (no buffer is out: none will come back). */
static void echo_wake_waiters(echo_srv *srv) {
  while (srv->waiters != NULL)
    echo_wake_one(srv);
}

static void echo_sent(px_loop *loop, px_op *op) {
  echo_conn *c = op->data;
  assert_true(op->result > 0);
  c->sent += (size_t)op->result;
  if (c->sent < c->len) {
    assert_int_equal(px_send(loop, &c->op, c->fd, (char *)c->buf + c->sent,
                             c->len - c->sent, echo_sent, c),
                     0);
    return;
  }
  assert_int_equal(px_buf_release(c->srv->pool, c->buf), 0);
  c->buf = NULL;
  echo_wake_one(c->srv);
  echo_arm(c);
}

static void echo_received(px_loop *loop, px_op *op) {
  echo_conn *c = op->data;
  if (op->result == PX_ENOBUFS) {
    c->srv->enobufs++;
    echo_park(c->srv, c);
    /* Each buffer that comes back wakes the next in line; with none out,
     * none will come back: the line moves now. */
    if (pool_in_use(c->srv->pool) == 0)
      echo_wake_one(c->srv);
    return;
  }
  if (op->result == 0) {
    assert_int_equal(px_close(loop, &c->op, c->fd, echo_closed, c), 0);
    return;
  }
  assert_true(op->result > 0);
  c->srv->deliveries++;
  c->buf = px_op_buf(op);
  c->len = (size_t)op->result;
  c->sent = 0;
  assert_int_equal(px_send(loop, &c->op, c->fd, c->buf, c->len, echo_sent, c),
                   0);
}

static void echo_arm(echo_conn *c) {
  assert_int_equal(px_recv_pooled(c->srv->loop, &c->op, c->fd, c->srv->pool,
                                  echo_received, c),
                   0);
}

static void client_sent(px_loop *loop, px_op *op) {
  echo_client *cl = op->data;
  (void)loop;
  assert_int_equal(op->result, ECHO_BYTES);
  cl->sent_ok = 1;
}

static void client_received(px_loop *loop, px_op *op) {
  echo_client *cl = op->data;
  assert_true(op->result > 0);
  cl->got += (size_t)op->result;
  if (cl->got < ECHO_BYTES) {
    assert_int_equal(px_recv(loop, &cl->rop, cl->fd, cl->rx + cl->got,
                             ECHO_BYTES - cl->got, client_received, cl),
                     0);
    return;
  }
  cl->done = 1;
}

void pooled_recv_echoes_64_clients_through_two_buffers(void **state) {
  px_loop *loop = new_loop();
  static echo_srv srv;
  static echo_client cl[ECHO_CONNS];
  (void)state;
  memset(&srv, 0, sizeof(srv));
  memset(cl, 0, sizeof(cl));
  srv.loop = loop;
  srv.pool = pool_new(loop, 2, ECHO_BUF);
  for (int i = 0; i < ECHO_CONNS; i++) {
    tcp_pair(loop, &cl[i].fd, &srv.conns[i].fd);
    srv.conns[i].srv = &srv;
    for (size_t k = 0; k < ECHO_BYTES; k++)
      cl[i].tx[k] = (unsigned char)(i * 31 + k * 7 + (k >> 8));
  }
  for (int i = 0; i < ECHO_CONNS; i++)
    echo_arm(&srv.conns[i]);
  for (int i = 0; i < ECHO_CONNS; i++) {
    assert_int_equal(px_send(loop, &cl[i].sop, cl[i].fd, cl[i].tx, ECHO_BYTES,
                             client_sent, &cl[i]),
                     0);
    assert_int_equal(px_recv(loop, &cl[i].rop, cl[i].fd, cl[i].rx, ECHO_BYTES,
                             client_received, &cl[i]),
                     0);
  }
  int done = 0;
  uint64_t dl = pt_now_ms() + 20000;
  while (done < ECHO_CONNS && pt_now_ms() < dl) {
    pt_wake_at(loop, dl);
    assert_true(px_run(loop, PX_RUN_ONCE) >= 0);
    pt_wake_cancel();
    done = 0;
    for (int i = 0; i < ECHO_CONNS; i++)
      done += cl[i].done && cl[i].sent_ok;
  }
  assert_int_equal(done, ECHO_CONNS);
  for (int i = 0; i < ECHO_CONNS; i++)
    assert_memory_equal(cl[i].rx, cl[i].tx, ECHO_BYTES);
  print_message("[ info ] %d deliveries, %d PX_ENOBUFS completions\n",
                srv.deliveries, srv.enobufs);
  px_pool_stats st;
  px_bufpool_stats(srv.pool, &st);
  assert_true(st.high_water <= 2);
  /* Every byte went through one of the two buffers. */
  assert_true(srv.deliveries >= ECHO_CONNS * (ECHO_BYTES / ECHO_BUF));
  for (int i = 0; i < ECHO_CONNS; i++)
    close_fd(loop, cl[i].fd);
  /* Every connection sees its end (one parked on PX_ENOBUFS is re-armed
   * by the next buffer that comes back, or here when none is out). */
  uint64_t end_dl = pt_now_ms() + 10000;
  while (srv.closed < ECHO_CONNS && pt_now_ms() < end_dl) {
    if (srv.waiters != NULL && pool_in_use(srv.pool) == 0)
      echo_wake_waiters(&srv);
    RUN_UNTIL(loop, srv.closed == ECHO_CONNS || srv.waiters != NULL, 10000);
  }
  assert_int_equal(srv.closed, ECHO_CONNS);
  assert_int_equal(pool_in_use(srv.pool), 0);
  assert_int_equal(px_bufpool_free(srv.pool), 0);
  finish(loop);
}

/* ---- Multishot (delivered once per submission where the backend has no
 * multishot: the same code runs everywhere). ------------------------------ */

/* Runs until the receiver's last callback; re-arms while bytes are
 * expected, like a program that treats px_op_more == 0 as "submit again". */
typedef struct mrec {
  prec p;
  px_fd fd;
  px_op op;
  size_t want;
  int submissions;
  int max_more_run; /* most deliveries seen within one submission */
  int run;
} mrec;

static void mrec_cb(px_loop *loop, px_op *op) {
  mrec *m = op->data;
  prec_cb(loop, op);
  m->run++;
  if (m->run > m->max_more_run)
    m->max_more_run = m->run;
  if (px_op_more(op))
    return;
  m->run = 0;
  if (op->result > 0 && m->p.len < m->want) {
    m->submissions++;
    assert_int_equal(px_recv_pooled_ex(loop, &m->op, m->fd, m->p.pool,
                                       PX_RECV_MULTISHOT, mrec_cb, m),
                     0);
  }
}

void pooled_multishot_delivers_every_buffer_in_order(void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool = pool_new(loop, 16, 8);
  px_fd c, s;
  static mrec m;
  unsigned char msg[200];
  (void)state;
  memset(&m, 0, sizeof(m));
  tcp_pair(loop, &c, &s);
  for (size_t i = 0; i < sizeof(msg); i++)
    msg[i] = (unsigned char)(i * 13 + 1);
  m.fd = s;
  m.p.pool = pool;
  m.p.release = 1;
  m.want = (size_t)-1; /* re-arm after every last callback with data */
  m.submissions = 1;
  assert_int_equal(
      px_recv_pooled_ex(loop, &m.op, s, pool, PX_RECV_MULTISHOT, mrec_cb, &m),
      0);
  /* 200 bytes through 8-byte buffers: many deliveries, perhaps several
   * within one poll, which must keep their order. */
  assert_int_equal(sync_send(loop, c, msg, 100), 100);
  assert_int_equal(sync_send(loop, c, msg + 100, 100), 100);
  RUN_UNTIL(loop, m.p.len == sizeof(msg), 5000);
  assert_memory_equal(m.p.got, msg, sizeof(msg));
  if (px_loop_caps(loop) & PX_CAP_MULTISHOT)
    assert_true(m.max_more_run > 1);
  /* The end of the stream ends it: a last callback with 0. */
  int finals = m.p.finals;
  close_fd(loop, c);
  RUN_UNTIL(loop, m.p.finals == finals + 1 && m.p.result == 0, 5000);
  assert_int_equal(m.p.more, 0);
  settle(loop);
  assert_int_equal(m.p.finals, finals + 1);
  assert_int_equal(pool_in_use(pool), 0);
  close_fd(loop, s);
  assert_int_equal(px_bufpool_free(pool), 0);
  finish(loop);
}

void pooled_multishot_ends_with_enobufs_and_rearms_without_loss(void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool = pool_new(loop, 4, 8);
  px_fd c, s;
  static mrec m;
  unsigned char msg[64];
  (void)state;
  memset(&m, 0, sizeof(m));
  tcp_pair(loop, &c, &s);
  for (size_t i = 0; i < sizeof(msg); i++)
    msg[i] = (unsigned char)(i * 5 + 3);
  m.fd = s;
  m.p.pool = pool;
  m.p.release = 0; /* keep every buffer: the pool runs dry */
  m.want = 0;      /* the test re-arms, not the callback */
  assert_int_equal(
      px_recv_pooled_ex(loop, &m.op, s, pool, PX_RECV_MULTISHOT, mrec_cb, &m),
      0);
  assert_int_equal(sync_send(loop, c, msg, sizeof(msg)), (int)sizeof(msg));
  /* Four 8-byte buffers hold 32 of the 64 bytes; the receive that finds
   * none left ends with PX_ENOBUFS.  (Where multishot is emulated each
   * submission delivers once, and is submitted again here.) */
  for (;;) {
    RUN_UNTIL(loop, m.p.finals > 0, 5000);
    m.p.finals = 0;
    if (m.p.result == PX_ENOBUFS)
      break;
    assert_true(m.p.result > 0);
    assert_int_equal(
        px_recv_pooled_ex(loop, &m.op, s, pool, PX_RECV_MULTISHOT, mrec_cb, &m),
        0);
  }
  assert_int_equal(m.p.more, 0);
  if (px_loop_caps(loop) & PX_CAP_MULTISHOT)
    assert_true(m.max_more_run >= 2); /* one submission, several buffers */
  assert_int_equal(m.p.len, 32);
  assert_memory_equal(m.p.got, msg, 32);
  assert_int_equal(m.p.nkept, 4);
  px_pool_stats st;
  px_bufpool_stats(pool, &st);
  assert_int_equal(st.in_use, 4);
  assert_true(st.exhausted >= 1);
  for (int i = 0; i < m.p.nkept; i++)
    assert_int_equal(px_buf_release(pool, m.p.kept[i]), 0);
  assert_int_equal(pool_in_use(pool), 0);
  /* Re-armed, it picks up the rest exactly where it stopped. */
  m.p.release = 1;
  m.want = (size_t)-1; /* re-arm after every last callback with data */
  assert_int_equal(
      px_recv_pooled_ex(loop, &m.op, s, pool, PX_RECV_MULTISHOT, mrec_cb, &m),
      0);
  RUN_UNTIL(loop, m.p.len == sizeof(msg), 5000);
  assert_memory_equal(m.p.got, msg, sizeof(msg));
  close_fd(loop, c);
  RUN_UNTIL(loop, m.p.result == 0 && m.p.finals > 0, 5000);
  assert_int_equal(m.p.more, 0);
  close_fd(loop, s);
  assert_int_equal(pool_in_use(pool), 0);
  assert_int_equal(px_bufpool_free(pool), 0);
  finish(loop);
}

void pooled_multishot_cancel_ends_it_after_its_deliveries(void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool = pool_new(loop, 4, 8);
  px_fd sp[2];
  static mrec m;
  px_op cop = {0};
  rec cr = {0};
  (void)state;
  memset(&m, 0, sizeof(m));
  socketpair_new(loop, sp);
  m.fd = sp[1];
  m.p.pool = pool;
  m.p.release = 1;
  m.want = (size_t)-1;
  assert_int_equal(px_recv_pooled_ex(loop, &m.op, sp[1], pool,
                                     PX_RECV_MULTISHOT, mrec_cb, &m),
                   0);
  assert_int_equal(sync_send(loop, sp[0], "0123456789abcdef", 16), 16);
  RUN_UNTIL(loop, m.p.len == 16, 5000);
  assert_memory_equal(m.p.got, "0123456789abcdef", 16);
  m.p.finals = 0;
  assert_int_equal(px_cancel(loop, &cop, &m.op, rec_cb, &cr), 0);
  RUN_UNTIL(loop, m.p.finals == 1 && cr.calls == 1, 5000);
  assert_int_equal(m.p.result, PX_ECANCELED);
  assert_int_equal(m.p.more, 0);
  assert_int_equal(cr.result, 0);
  settle(loop);
  assert_int_equal(m.p.finals, 1);
  close_fd(loop, sp[0]);
  close_fd(loop, sp[1]);
  assert_int_equal(pool_in_use(pool), 0);
  assert_int_equal(px_bufpool_free(pool), 0);
  finish(loop);
}

/* ---- The acceptor: backpressure from the connection pool. ---------------- */

typedef struct acc_rec {
  int calls;
  px_fd fds[8];
  px_conn_id ids[8];
  void *objs[8];
} acc_rec;

static void acc_cb(px_acceptor *acc, px_fd fd, void *conn, px_conn_id id,
                   void *data) {
  acc_rec *r = data;
  (void)acc;
  assert_true(r->calls < 8);
  r->fds[r->calls] = fd;
  r->ids[r->calls] = id;
  r->objs[r->calls] = conn;
  r->calls++;
}

void acceptor_pauses_while_the_pool_is_full_and_resumes_on_release(
    void **state) {
  px_loop *loop = new_loop();
  px_connpool *pool = NULL;
  px_acceptor *acc = NULL;
  px_acceptor_stats st;
  acc_rec ar = {0};
  int port;
  px_fd l = tcp_listener(loop, &port);
  px_fd c[3];
  px_op cop[3] = {{0}};
  rec cr[3] = {{0}};
  px_addr to;
  (void)state;
  assert_int_equal(px_connpool_new(2, 64, &pool), 0);
  assert_int_equal(px_acceptor_start(loop, l, pool, 0, acc_cb, &ar, &acc),
                   PX_EINVAL);
  assert_int_equal(px_acceptor_start(loop, l, pool, 4, acc_cb, &ar, &acc), 0);
  /* One acceptor per pool, and the pool stays while it runs. */
  px_acceptor *second = NULL;
  assert_int_equal(px_acceptor_start(loop, l, pool, 4, acc_cb, &ar, &second),
                   PX_EBUSY);
  assert_int_equal(px_connpool_free(pool), PX_EBUSY);
  px_acceptor_stats_get(acc, &st);
  assert_int_equal(st.posted, 2); /* no more than the pool has room for */
  assert_int_equal(px_addr_set(&to, "127.0.0.1", port), 0);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(px_tcp_socket(loop, &to, &c[i]), 0);
    assert_int_equal(px_connect(loop, &cop[i], c[i], &to, rec_cb, &cr[i]), 0);
  }
  /* All three connect (the kernel's backlog holds the third); two are
   * accepted and then the full pool stops the acceptor. */
  RUN_UNTIL(loop, ar.calls == 2 && cr[0].calls + cr[1].calls + cr[2].calls == 3,
            5000);
  settle(loop);
  assert_int_equal(ar.calls, 2);
  px_acceptor_stats_get(acc, &st);
  assert_int_equal(st.accepted, 2);
  assert_int_equal(st.posted, 0);
  assert_true(st.paused >= 1);
  for (int i = 0; i < 2; i++) {
    assert_ptr_equal(px_conn_lookup(pool, ar.ids[i]), ar.objs[i]);
    assert_true(ar.fds[i] != PX_INVALID_FD);
  }
  /* A slot released: the acceptor takes the waiting connection. */
  close_fd(loop, ar.fds[0]);
  assert_int_equal(px_conn_release(pool, ar.ids[0]), 0);
  assert_null(px_conn_lookup(pool, ar.ids[0])); /* stale for good */
  RUN_UNTIL(loop, ar.calls == 3, 5000);
  assert_true(ar.ids[2] != ar.ids[0]);
  assert_ptr_equal(px_conn_lookup(pool, ar.ids[2]), ar.objs[2]);
  px_acceptor_stats_get(acc, &st);
  assert_int_equal(st.accepted, 3);
  assert_int_equal(st.failed, 0);
  /* Stopped, it cancels what it posted and goes away by itself. */
  px_acceptor_stop(acc);
  assert_int_equal(px_connpool_free(pool), PX_EBUSY); /* slots held */
  for (int i = 1; i < 3; i++) {
    close_fd(loop, ar.fds[i]);
    assert_int_equal(px_conn_release(pool, ar.ids[i]), 0);
  }
  settle(loop);
  assert_int_equal(ar.calls, 3);
  for (int i = 0; i < 3; i++)
    close_fd(loop, c[i]);
  close_fd(loop, l);
  finish(loop);
  assert_int_equal(px_connpool_free(pool), 0);
}

/* px_wait hands a multishot op back once per call, one delivery each
 * time, in order (the rest wait for the next call). */
void pooled_multishot_deliveries_come_through_px_wait_in_order(void **state) {
  px_loop *loop = new_loop();
  px_bufpool *pool = pool_new(loop, 16, 8);
  px_fd sp[2];
  px_op op = {0};
  unsigned char msg[64], got[64];
  size_t len = 0;
  int last = 0, calls = 0;
  (void)state;
  socketpair_new(loop, sp);
  for (size_t i = 0; i < sizeof(msg); i++)
    msg[i] = (unsigned char)(i * 3 + 7);
  assert_int_equal(sync_send(loop, sp[0], msg, sizeof(msg)), (int)sizeof(msg));
  assert_int_equal(
      px_recv_pooled_ex(loop, &op, sp[1], pool, PX_RECV_MULTISHOT, NULL, NULL),
      0);
  uint64_t dl = pt_now_ms() + 5000;
  while (len < sizeof(msg) && pt_now_ms() < dl) {
    px_op *out[8];
    int n = px_wait(loop, out, 8, 100);
    assert_true(n >= 0 && n <= 1); /* the one op, at most once per call */
    if (n == 0)
      continue;
    calls++;
    assert_ptr_equal(out[0], &op);
    assert_true(op.result > 0);
    void *buf = px_op_buf(&op);
    assert_non_null(buf);
    memcpy(got + len, buf, (size_t)op.result);
    len += (size_t)op.result;
    assert_int_equal(px_buf_release(pool, buf), 0);
    if (!px_op_more(&op) && len < sizeof(msg))
      assert_int_equal(px_recv_pooled_ex(loop, &op, sp[1], pool,
                                         PX_RECV_MULTISHOT, NULL, NULL),
                       0);
  }
  assert_int_equal(len, sizeof(msg));
  assert_memory_equal(got, msg, sizeof(msg));
  assert_true(calls >= (int)(sizeof(msg) / 8));
  /* Its end comes the same way: px_op_more 0 and the end of the stream. */
  if (!px_op_more(&op))
    assert_int_equal(px_recv_pooled_ex(loop, &op, sp[1], pool,
                                       PX_RECV_MULTISHOT, NULL, NULL),
                     0);
  close_fd(loop, sp[0]);
  dl = pt_now_ms() + 5000;
  while (!last && pt_now_ms() < dl) {
    px_op *out[8];
    int n = px_wait(loop, out, 8, 100);
    assert_true(n >= 0 && n <= 1);
    if (n == 1) {
      assert_int_equal(op.result, 0);
      last = !px_op_more(&op);
    }
  }
  assert_true(last);
  assert_int_equal(pool_in_use(pool), 0);
  close_fd(loop, sp[1]);
  assert_int_equal(px_bufpool_free(pool), 0);
  finish(loop);
}
