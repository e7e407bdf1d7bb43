/*
 * Fault injection: the smallest queue under thousands of ops in flight,
 * socket buffers as small as the system allows, a signal every
 * millisecond, and SIGPIPE at its default action while writing to peers
 * that are gone.  Under each, px keeps working and loses nothing.
 *
 * PX_TEST_TIMES=1 also prints the figures each test measured.
 */
#include <stdbool.h>

#include "conf.h"

#define NOTE(...)                                                              \
  do {                                                                         \
    if (getenv("PX_TEST_TIMES") != NULL) {                                     \
      printf("           ");                                                   \
      printf(__VA_ARGS__);                                                     \
      printf("\n");                                                            \
    }                                                                          \
  } while (0)

/* A byte of a pattern that does not repeat within a megabyte, so that a
 * byte delivered out of place is seen. */
static uint8_t pat(uint32_t seed, size_t i) {
  uint32_t x = (uint32_t)i * 2654435761u ^ (seed * 40503u + 0x9e37u);
  return (uint8_t)(x >> 24 ^ x >> 13 ^ (uint32_t)(i >> 8));
}

static void pat_fill(uint8_t *buf, size_t len, uint32_t seed, size_t from) {
  for (size_t i = 0; i < len; i++)
    buf[i] = pat(seed, from + i);
}

/* ---- The smallest queue under 4096 ops in flight. ------------------------
 *
 * entries = 4 asks for the smallest queue a loop has: on io_uring an SQ of
 * 4 and a CQ of 8 (docs/semantics.md), so nearly every op waits on the
 * backend's overflow list and nearly every completion on the kernel's.
 */

enum {
  Q_ENTRIES = 4,
  Q_EACH = 1024,   /* nops, timers and file reads: this many of each */
  Q_PAIRS = 128,   /* socketpairs ... */
  Q_PER_PAIR = 8,  /* ... with this many receives queued on one end */
  Q_MSG = 8,       /* bytes per file record and per receive */
  Q_TIMER_MS = 16, /* timers run 1..16 ms */
};

_Static_assert(Q_PAIRS *Q_PER_PAIR == Q_EACH, "one receive per nop");

typedef struct qop {
  px_op op;
  rec r;
  uint64_t t0; /* submitted at (ms) */
  uint8_t buf[Q_PER_PAIR * Q_MSG];
} qop;

static void records_write(const char *path) {
  FILE *f = fopen(path, "wb");
  uint8_t b[Q_MSG];
  assert_non_null(f);
  for (uint32_t i = 0; i < Q_EACH; i++) {
    pat_fill(b, Q_MSG, i, 0);
    assert_int_equal(fwrite(b, 1, Q_MSG, f), Q_MSG);
  }
  assert_int_equal(fclose(f), 0);
}

static void check_byte_run(const uint8_t *got, uint32_t seed, size_t from,
                           size_t len, const char *what, int index) {
  for (size_t k = 0; k < len; k++)
    if (got[k] != pat(seed, from + k))
      fail_msg("%s %d: byte %d is wrong", what, index, (int)k);
}

void smallest_queue_with_4096_mixed_ops_in_flight_completes_each_once(
    void **state) {
  enum { RECVS = Q_PAIRS * Q_PER_PAIR };
  enum { TOTAL = 3 * Q_EACH + RECVS + Q_PAIRS };
  px_loop *loop = new_loop_entries(Q_ENTRIES);
  qop *nop = calloc(Q_EACH, sizeof(qop)), *tim = calloc(Q_EACH, sizeof(qop));
  qop *rd = calloc(Q_EACH, sizeof(qop)), *rcv = calloc(RECVS, sizeof(qop));
  qop *snd = calloc(Q_PAIRS, sizeof(qop));
  px_fd(*sp)[2] = calloc(Q_PAIRS, sizeof(*sp));
  char path[512];
  px_fd file;
  px_stats st;
  (void)state;
  assert_true(nop && tim && rd && rcv && snd && sp);
  assert_int_equal(pt_temp_path(path, sizeof(path), "records"), 0);
  records_write(path);
  assert_int_equal(px_file_open(loop, path, PX_O_RDONLY, 0, &file), 0);
  for (int p = 0; p < Q_PAIRS; p++)
    socketpair_new(loop, sp[p]);
  /* Interleaved, so that every kind meets a full queue. */
  for (int i = 0; i < Q_EACH; i++) {
    tim[i].t0 = pt_now_ms();
    assert_int_equal(px_timeout(loop, &tim[i].op,
                                (uint64_t)(1 + i % Q_TIMER_MS), rec_cb,
                                &tim[i].r),
                     0);
    assert_int_equal(px_nop(loop, &nop[i].op, rec_cb, &nop[i].r), 0);
    int64_t off = (int64_t)(Q_EACH - 1 - i) * Q_MSG;
    assert_int_equal(
        px_read(loop, &rd[i].op, file, rd[i].buf, Q_MSG, off, rec_cb, &rd[i].r),
        0);
    qop *q = &rcv[i];
    assert_int_equal(px_recv(loop, &q->op, sp[i / Q_PER_PAIR][0], q->buf, Q_MSG,
                             rec_cb, &q->r),
                     0);
  }
  /* The data for the receives, one send per pair. */
  for (int p = 0; p < Q_PAIRS; p++) {
    pat_fill(snd[p].buf, sizeof(snd[p].buf), 0x5000u + (uint32_t)p, 0);
    /* A deadline that does not fire: 128 timers in px's heap beside the
     * ops in a queue of four. */
    assert_int_equal(px_op_deadline(&snd[p].op, 10000), 0);
    assert_int_equal(px_send(loop, &snd[p].op, sp[p][1], snd[p].buf,
                             sizeof(snd[p].buf), rec_cb, &snd[p].r),
                     0);
  }
  px_loop_stats(loop, &st);
  assert_int_equal(st.in_flight, TOTAL);
  uint64_t t0 = pt_now_ms();
  RUN_UNTIL(loop, g_seq == TOTAL, 20000);
  NOTE("%d ops through a queue of %d entries: %d ms", TOTAL, Q_ENTRIES,
       (int)(pt_now_ms() - t0));
  settle(loop);
  assert_int_equal(g_seq, TOTAL);
  for (int i = 0; i < Q_EACH; i++) {
    assert_int_equal(nop[i].r.calls, 1);
    assert_int_equal(nop[i].r.result, 0);
    assert_int_equal(tim[i].r.calls, 1);
    assert_int_equal(tim[i].r.result, 0);
    if (tim[i].r.at_ms - tim[i].t0 < (uint64_t)(1 + i % Q_TIMER_MS))
      fail_msg("timer %d of %d ms fired after %d ms", i, 1 + i % Q_TIMER_MS,
               (int)(tim[i].r.at_ms - tim[i].t0));
    assert_int_equal(rd[i].r.calls, 1);
    assert_int_equal(rd[i].r.result, Q_MSG);
    check_byte_run(rd[i].buf, (uint32_t)(Q_EACH - 1 - i), 0, Q_MSG, "file read",
                   i);
  }
  for (int i = 0; i < RECVS; i++) {
    int p = i / Q_PER_PAIR, k = i % Q_PER_PAIR;
    assert_int_equal(rcv[i].r.calls, 1);
    assert_int_equal(rcv[i].r.result, Q_MSG);
    check_byte_run(rcv[i].buf, 0x5000u + (uint32_t)p, (size_t)k * Q_MSG, Q_MSG,
                   "recv", i);
  }
  for (int p = 0; p < Q_PAIRS; p++) {
    assert_int_equal(snd[p].r.calls, 1);
    assert_int_equal(snd[p].r.result, (int)sizeof(snd[p].buf));
  }
  px_loop_stats(loop, &st);
  assert_int_equal(st.failed, 0);
  assert_int_equal(st.cancelled, 0);
  for (int p = 0; p < Q_PAIRS; p++) {
    close_fd(loop, sp[p][0]);
    close_fd(loop, sp[p][1]);
  }
  close_fd(loop, file);
  assert_int_equal(remove(path), 0);
  free(nop);
  free(tim);
  free(rd);
  free(rcv);
  free(snd);
  free(sp);
  finish(loop);
}

/* ---- A burst of 4096 socket completions at once. -------------------------
 *
 * 1024 socketpairs, a receive pending on both ends of each (in the kernel,
 * or waiting for readiness), then a send on both ends: 4096 completions
 * arrive together, reaped with px_wait.  On io_uring they meet a CQ of 8:
 * the kernel keeps what does not fit on its overflow list (IORING_FEAT_NODROP)
 * and the backend drains it; the test sees that as nothing lost, nothing
 * twice, and no px_wait that returns empty-handed while completions wait.
 */

enum { B_PAIRS = 1024, B_MSG = 8, B_FDS = 2 * B_PAIRS + 256 };

typedef struct bop {
  px_op op;
  int done;
  int32_t result;
  uint8_t buf[B_MSG];
} bop;

void smallest_queue_takes_a_burst_of_4096_socket_completions(void **state) {
  enum { N = 2 * B_PAIRS }; /* receives; as many sends */
  unsigned limit = pt_fd_limit_raise(B_FDS);
  (void)state;
  if (limit < B_FDS) {
    printf("           skipped: %d descriptors needed, the limit is %u\n",
           B_FDS, limit);
    skip();
  }
  px_loop *loop = new_loop_entries(Q_ENTRIES);
  px_fd(*sp)[2] = calloc(B_PAIRS, sizeof(*sp));
  bop *rv = calloc(N, sizeof(bop)), *sd = calloc(N, sizeof(bop));
  px_op *out[64];
  px_stats st;
  assert_true(sp && rv && sd);
  for (int p = 0; p < B_PAIRS; p++)
    socketpair_new(loop, sp[p]);
  for (int i = 0; i < N; i++)
    assert_int_equal(px_recv(loop, &rv[i].op, sp[i / 2][i % 2], rv[i].buf,
                             B_MSG, NULL, &rv[i]),
                     0);
  /* Into the kernel (or the poller): nothing can complete yet. */
  assert_int_equal(px_wait(loop, out, 64, 0), 0);
  for (int i = 0; i < N; i++) {
    pat_fill(sd[i].buf, B_MSG, (uint32_t)i, 0);
    assert_int_equal(px_send(loop, &sd[i].op, sp[i / 2][i % 2], sd[i].buf,
                             B_MSG, NULL, &sd[i]),
                     0);
  }
  px_loop_stats(loop, &st);
  assert_int_equal(st.in_flight, 2 * N);
  int got = 0, calls = 0, empty = 0;
  uint64_t t0 = pt_now_ms(), dl = t0 + 10000;
  while (got < 2 * N && pt_now_ms() < dl) {
    int n = px_wait(loop, out, 64, 200);
    if (n < 0)
      fail_msg("px_wait failed: %s", px_strerror(n));
    calls++;
    empty += n == 0;
    for (int k = 0; k < n; k++) {
      bop *b = out[k]->data;
      b->done++;
      b->result = out[k]->result;
      got++;
    }
  }
  NOTE("%d completions in one burst: %d ms, %d px_wait calls (%d empty)", 2 * N,
       (int)(pt_now_ms() - t0), calls, empty);
  if (got != 2 * N)
    fail_msg("%d of %d completions within 10 s", got, 2 * N);
  /* Every px_wait returned at once with completions in hand. */
  assert_int_equal(empty, 0);
  /* Nothing twice: a duplicate would show up now. */
  assert_int_equal(px_wait(loop, out, 64, 20), 0);
  for (int i = 0; i < N; i++) {
    assert_int_equal(sd[i].done, 1);
    assert_int_equal(sd[i].result, B_MSG);
    assert_int_equal(rv[i].done, 1);
    assert_int_equal(rv[i].result, B_MSG);
    /* End e of a pair receives what end 1 - e sent. */
    check_byte_run(rv[i].buf, (uint32_t)(i ^ 1), 0, B_MSG, "recv", i);
  }
  for (int p = 0; p < B_PAIRS; p++) {
    close_fd(loop, sp[p][0]);
    close_fd(loop, sp[p][1]);
  }
  free(sp);
  free(rv);
  free(sd);
  finish(loop);
}

/* ---- Streams moved in pieces. --------------------------------------------
 *
 * A transfer of XFER bytes one way, with several writes and reads in
 * flight.  A write that completes short has its rest sent again after the
 * writes already queued behind it (docs/semantics.md, Ordering: the next
 * one has been issued by then), so the bytes on the wire are the written
 * segments in completion order.  The sender logs them; the receiver's
 * bytes must be exactly that log, and the log must cover every source byte
 * exactly once.  With one write in flight the stream is the source itself.
 */

enum { XFER = 1 << 20, X_CHUNK = 16384, X_SLOTS = 4 };

typedef enum { TX_SEND, TX_WRITEV } tx_kind;
typedef enum { RX_RECV, RX_READ_READV } rx_kind;

typedef struct seg {
  uint32_t off, len;
} seg;

typedef struct xfer xfer;

typedef struct tx_slot {
  px_op op;
  xfer *x;
  uint32_t off, len;
  px_iov iov[2];
} tx_slot;

typedef struct rx_slot {
  px_op op;
  xfer *x;
  uint32_t len;
  px_iov iov[2];
  uint8_t buf[X_CHUNK];
} rx_slot;

struct xfer {
  px_loop *loop;
  px_fd tx_fd, rx_fd;
  tx_kind tk;
  rx_kind rk;
  int ntx, nrx; /* writes and reads kept in flight */
  uint8_t *src, *rx, *sent;
  size_t rx_len;
  seg *log; /* written segments, in completion (= wire) order */
  size_t nlog, log_cap;
  seg again[X_SLOTS + 1]; /* rests of short writes, oldest first */
  int again_n;
  uint32_t next; /* the first source byte not handed to a write yet */
  int tx_busy, rx_busy;
  int shut;    /* the write side is shut down (after both ways moved) */
  int eof;     /* reads that got the end of the stream */
  int eof_due; /* reads pending at the shutdown: each gets the end */
  uint64_t writes, reads, partial_tx, partial_rx;
  int error;  /* the first negative result or refused submit */
  int excess; /* bytes received beyond XFER */
  tx_slot txs[X_SLOTS];
  rx_slot rxs[X_SLOTS];
};

static void xfer_fail(xfer *x, int code) {
  if (x->error == 0)
    x->error = code;
}

static void tx_cb(px_loop *loop, px_op *op);
static void rx_cb(px_loop *loop, px_op *op);

static bool tx_pick(xfer *x, uint32_t *off, uint32_t *len) {
  if (x->again_n > 0) {
    *off = x->again[0].off;
    *len = x->again[0].len;
    memmove(x->again, x->again + 1, (size_t)--x->again_n * sizeof(seg));
    return true;
  }
  if (x->next >= XFER)
    return false;
  *off = x->next;
  *len = XFER - x->next < X_CHUNK ? XFER - x->next : X_CHUNK;
  x->next += *len;
  return true;
}

static void tx_next(xfer *x, tx_slot *s) {
  int rc;
  if (x->error != 0 || !tx_pick(x, &s->off, &s->len))
    return;
  if (x->tk == TX_SEND) {
    rc = px_send(x->loop, &s->op, x->tx_fd, x->src + s->off, s->len, tx_cb, s);
  } else {
    uint32_t half = s->len / 2;
    s->iov[0] = (px_iov){x->src + s->off, half};
    s->iov[1] = (px_iov){x->src + s->off + half, s->len - half};
    rc = half == 0 ? px_writev(x->loop, &s->op, x->tx_fd, &s->iov[1], 1, PX_CUR,
                               tx_cb, s)
                   : px_writev(x->loop, &s->op, x->tx_fd, s->iov, 2, PX_CUR,
                               tx_cb, s);
  }
  if (rc != 0)
    xfer_fail(x, rc);
  else
    x->tx_busy++;
}

static void log_push(xfer *x, uint32_t off, uint32_t len) {
  if (x->nlog == x->log_cap) {
    size_t cap = x->log_cap ? 2 * x->log_cap : 1024;
    seg *l = realloc(x->log, cap * sizeof(seg));
    if (l == NULL) {
      xfer_fail(x, PX_ENOMEM);
      return;
    }
    x->log = l;
    x->log_cap = cap;
  }
  x->log[x->nlog++] = (seg){off, len};
  for (uint32_t i = 0; i < len; i++)
    x->sent[off + i]++;
}

static void tx_cb(px_loop *loop, px_op *op) {
  tx_slot *s = op->data;
  xfer *x = s->x;
  int32_t r = op->result;
  (void)loop;
  x->tx_busy--;
  x->writes++;
  if (r < 0) {
    xfer_fail(x, r);
    return;
  }
  if (r > 0)
    log_push(x, s->off, (uint32_t)r);
  if ((uint32_t)r < s->len) {
    x->partial_tx++;
    /* Each completion takes one rest back (tx_next): never more than
     * writes in flight. */
    if (x->again_n == X_SLOTS + 1) {
      xfer_fail(x, PX_EIO);
      return;
    }
    x->again[x->again_n++] = (seg){s->off + (uint32_t)r, s->len - (uint32_t)r};
  }
  tx_next(x, s);
}

static void rx_next(xfer *x, rx_slot *s) {
  int rc;
  if (x->error != 0 || x->rx_len == XFER)
    return; /* the reads still pending get the end of the stream */
  if (x->rk == RX_RECV) {
    s->len = X_CHUNK;
    rc = px_recv(x->loop, &s->op, x->rx_fd, s->buf, s->len, rx_cb, s);
  } else if (x->reads % 2 == 0) {
    s->len = X_CHUNK;
    rc = px_read(x->loop, &s->op, x->rx_fd, s->buf, s->len, PX_CUR, rx_cb, s);
  } else {
    s->len = X_CHUNK;
    s->iov[0] = (px_iov){s->buf, 4096};
    s->iov[1] = (px_iov){s->buf + 4096, X_CHUNK - 4096};
    rc = px_readv(x->loop, &s->op, x->rx_fd, s->iov, 2, PX_CUR, rx_cb, s);
  }
  if (rc != 0)
    xfer_fail(x, rc);
  else
    x->rx_busy++;
}

static void rx_cb(px_loop *loop, px_op *op) {
  rx_slot *s = op->data;
  xfer *x = s->x;
  int32_t r = op->result;
  (void)loop;
  x->rx_busy--;
  x->reads++;
  if (r < 0) {
    xfer_fail(x, r);
    return;
  }
  if (r == 0) {
    x->eof++;
    if (!x->shut)
      xfer_fail(x, PX_EIO); /* an end of stream nobody sent */
    return;
  }
  if ((uint32_t)r < s->len)
    x->partial_rx++;
  if (x->rx_len + (size_t)r > XFER) {
    x->excess += r;
    return;
  }
  memcpy(x->rx + x->rx_len, s->buf, (size_t)r);
  x->rx_len += (size_t)r;
  rx_next(x, s);
}

static xfer *xfer_new(px_loop *loop, px_fd tx, px_fd rx, tx_kind tk, int ntx,
                      rx_kind rk, int nrx, uint32_t seed) {
  xfer *x = calloc(1, sizeof(*x));
  assert_non_null(x);
  x->src = malloc(XFER);
  x->rx = malloc(XFER);
  x->sent = calloc(1, XFER);
  assert_true(x->src && x->rx && x->sent);
  pat_fill(x->src, XFER, seed, 0);
  x->loop = loop;
  x->tx_fd = tx;
  x->rx_fd = rx;
  x->tk = tk;
  x->rk = rk;
  x->ntx = ntx;
  x->nrx = nrx;
  return x;
}

static void xfer_start(xfer *x) {
  for (int i = 0; i < x->nrx; i++) {
    x->rxs[i].x = x;
    rx_next(x, &x->rxs[i]);
  }
  for (int i = 0; i < x->ntx; i++) {
    x->txs[i].x = x;
    tx_next(x, &x->txs[i]);
  }
}

/* Every byte has been written and read. */
static bool xfer_moved(const xfer *x) {
  return x->error != 0 || (x->next == XFER && x->again_n == 0 &&
                           x->tx_busy == 0 && x->rx_len == XFER);
}

/* The write side is shut down once both ways have moved everything; the
 * reads still pending then end with 0. */
static void xfer_shut(xfer *x) {
  x->shut = 1;
  x->eof_due = x->rx_busy;
  int rc = px_shutdown_write(x->tx_fd);
  if (rc != 0)
    xfer_fail(x, rc);
}

/* ... and the reads still pending got the end of the stream. */
static bool xfer_done(const xfer *x) {
  return x->error != 0 || (x->shut && x->rx_busy == 0);
}

/* Runs both transfers of a connection to their end, within ms. */
static void xfer_run(px_loop *loop, xfer *a, xfer *b, int ms) {
  RUN_UNTIL(loop, xfer_moved(a) && xfer_moved(b), ms);
  xfer_shut(a);
  xfer_shut(b);
  RUN_UNTIL(loop, xfer_done(a) && xfer_done(b), 5000);
}

static void xfer_check(const xfer *x, const char *name) {
  if (x->error != 0)
    fail_msg("%s: an op failed with %d (%s)", name, x->error,
             px_strerror(x->error));
  if (x->excess != 0)
    fail_msg("%s: %d bytes more than were written", name, x->excess);
  if (x->rx_len != XFER)
    fail_msg("%s: %d of %d bytes arrived", name, (int)x->rx_len, XFER);
  assert_int_equal(x->eof, x->eof_due);
  for (size_t i = 0; i < XFER; i++)
    if (x->sent[i] != 1)
      fail_msg("%s: byte %d was reported written %d times", name, (int)i,
               x->sent[i]);
  size_t at = 0;
  for (size_t k = 0; k < x->nlog; k++) {
    if (memcmp(x->rx + at, x->src + x->log[k].off, x->log[k].len) != 0)
      fail_msg("%s: segment %d (%u bytes from %u) arrived wrong", name, (int)k,
               x->log[k].len, x->log[k].off);
    at += x->log[k].len;
  }
  assert_int_equal(at, XFER);
  /* One write at a time: the stream is the source, whatever the pieces. */
  if (x->ntx == 1 && memcmp(x->rx, x->src, XFER) != 0)
    fail_msg("%s: the stream differs from the source", name);
}

static void xfer_free(xfer *x) {
  free(x->src);
  free(x->rx);
  free(x->sent);
  free(x->log);
  free(x);
}

/* ---- Socket buffers as small as the system allows. ----------------------
 *
 * 2048 bytes asked for each buffer: Linux doubles the request and raises it
 * to its floor, giving a 4608-byte send buffer (the floor) and a 4096-byte
 * receive buffer.  At the receive floor itself (2304 bytes, about what one
 * loopback segment's memory takes) a connection whose one direction had
 * finished while the other still flowed moved a few hundred bytes per
 * 200 ms retransmission timer, with px reading each byte as soon as the
 * poller reported it (docs/reliability.md): minutes for a megabyte.
 */

enum { TINY_BUF = 2048 };

static void tiny_tcp_pair(px_loop *loop, px_fd *client, px_fd *server, int *snd,
                          int *rcv) {
  int port;
  px_fd l = tcp_listener(loop, &port);
  px_addr to;
  px_fd c = PX_INVALID_FD;
  px_op aop = {0}, cop = {0};
  rec ar = {0}, cr = {0};
  /* Before the connection exists: TCP fixes its window scale then, and an
   * accepted socket starts with its listener's sizes. */
  assert_int_equal(pt_sock_bufs(l, TINY_BUF, NULL, NULL), 0);
  assert_int_equal(px_addr_set(&to, "127.0.0.1", port), 0);
  assert_int_equal(px_tcp_socket(loop, &to, &c), 0);
  assert_int_equal(pt_sock_bufs(c, TINY_BUF, snd, rcv), 0);
  assert_int_equal(px_accept(loop, &aop, l, rec_cb, &ar), 0);
  assert_int_equal(px_connect(loop, &cop, c, &to, rec_cb, &cr), 0);
  RUN_UNTIL(loop, ar.calls == 1 && cr.calls == 1, 5000);
  assert_int_equal(ar.result, 0);
  assert_int_equal(cr.result, 0);
  close_fd(loop, l);
  *client = c;
  *server = px_op_fd(&aop);
  assert_int_equal(pt_sock_bufs(*server, TINY_BUF, NULL, NULL), 0);
  /* Small segments must not wait for acknowledgements (Nagle). */
  assert_int_equal(px_tcp_nodelay(c, 1), 0);
  assert_int_equal(px_tcp_nodelay(*server, 1), 0);
}

/* Whether a send takes part of a buffer when only part fits: one 64 KiB
 * send into empty tiny buffers, nobody reading, either completes short
 * (the backend hands the kernel what fits: io_uring, POSIX) or waits for
 * room to take it all (an overlapped WSASend) until its deadline. */
static bool sends_complete_short(px_loop *loop) {
  static uint8_t big[64 * 1024];
  px_fd c, s;
  px_op op = {0};
  rec r = {0};
  tiny_tcp_pair(loop, &c, &s, NULL, NULL);
  assert_int_equal(px_op_deadline(&op, 50), 0);
  assert_int_equal(px_send(loop, &op, c, big, sizeof(big), rec_cb, &r), 0);
  RUN_UNTIL(loop, r.calls == 1, 5000);
  close_fd(loop, c);
  close_fd(loop, s);
  if (r.result == PX_ETIMEDOUT)
    return false;
  assert_true(r.result > 0 && r.result < (int)sizeof(big));
  return true;
}

void tiny_socket_buffers_move_1mib_each_way_byte_exact_in_pieces(void **state) {
  px_loop *loop = new_loop();
  px_fd c, s;
  int snd = 0, rcv = 0;
  (void)state;
  bool short_sends = sends_complete_short(loop);
  tiny_tcp_pair(loop, &c, &s, &snd, &rcv);
  /* Client to server: four sends and four receives in flight.  Server to
   * client: one two-segment writev at a time, reads and readvs. */
  xfer *up = xfer_new(loop, c, s, TX_SEND, 4, RX_RECV, 4, 1);
  xfer *down = xfer_new(loop, s, c, TX_WRITEV, 1, RX_READ_READV, 2, 2);
  uint64_t t0 = pt_now_ms();
  xfer_start(up);
  xfer_start(down);
  xfer_run(loop, up, down, 20000);
  NOTE("buffers asked %d bytes, got SO_SNDBUF %d SO_RCVBUF %d: 2 MiB in %d ms",
       TINY_BUF, snd, rcv, (int)(pt_now_ms() - t0));
  NOTE("send: %d short of %d, recv: %d short of %d; writev: %d short of %d, "
       "read/readv: %d short of %d",
       (int)up->partial_tx, (int)up->writes, (int)up->partial_rx,
       (int)up->reads, (int)down->partial_tx, (int)down->writes,
       (int)down->partial_rx, (int)down->reads);
  xfer_check(up, "send/recv");
  xfer_check(down, "writev/read+readv");
  /* Reads of 16 KiB through a receive buffer of a few KiB come back short
   * on every platform. */
  assert_true(up->partial_rx > 0);
  assert_true(down->partial_rx > 0);
  /* Where a send takes what fits, the transfer's sends came back short
   * too, and the check above found every short one reported truly. */
  if (short_sends) {
    assert_true(up->partial_tx > 0);
    assert_true(down->partial_tx > 0);
  } else {
    NOTE("sends wait for room to take all their bytes: none came back short");
  }
  xfer_free(up);
  xfer_free(down);
  close_fd(loop, c);
  close_fd(loop, s);
  finish(loop);
}

/* ---- A signal every millisecond, without SA_RESTART. ---------------------
 *
 * Every blocking call px makes may fail with EINTR: epoll_wait, poll,
 * io_uring_enter.  None of it may reach the program: no op completes with
 * PX_EINTR, px_run and px_wait return no error and do not return early,
 * and every byte arrives.
 */

enum { S_CHUNK = 65536, S_CHUNKS = 16, S_TIMERS = 16, S_POSTS = 1000 };

typedef struct poster {
  px_loop *loop;
  px_op *ops;
  rec *recs;
  int refused;
} poster;

static void post_all(void *arg) {
  poster *p = arg;
  for (int i = 0; i < S_POSTS; i++) {
    if (px_post(p->loop, &p->ops[i], rec_cb, &p->recs[i]) != 0)
      p->refused++;
    if (i % 50 == 49)
      pt_sleep_ms(1); /* the loop blocks between batches */
  }
}

static int calls_of(const rec *r, int n) {
  int calls = 0;
  for (int i = 0; i < n; i++)
    calls += r[i].calls;
  return calls;
}

static uint64_t since(uint64_t t0) {
  return pt_now_ms() - t0;
}

/* px_run and px_wait wait as long as they were asked to, signals or not. */
static void blocking_waits_outlast_signals(px_loop *loop) {
  px_op t = {0}, c = {0}, *out[4];
  rec tr = {0};
  uint64_t t0 = pt_now_ms();
  assert_int_equal(px_timeout(loop, &t, 30, rec_cb, &tr), 0);
  assert_int_equal(px_run(loop, PX_RUN_DEFAULT), 0);
  assert_int_equal(tr.calls, 1);
  assert_int_equal(tr.result, 0);
  assert_true(since(t0) >= 30);

  memset(&tr, 0, sizeof(tr));
  t0 = pt_now_ms();
  assert_int_equal(px_timeout(loop, &t, 20, rec_cb, &tr), 0);
  int rc = px_run(loop, PX_RUN_ONCE);
  if (rc != 0 || tr.calls != 1)
    fail_msg("px_run(ONCE) returned %d after %d ms with the 20 ms timer "
             "%s",
             rc, (int)since(t0), tr.calls ? "done" : "still pending");
  assert_int_equal(tr.result, 0);

  t0 = pt_now_ms();
  assert_int_equal(px_timeout(loop, &t, 20, NULL, NULL), 0);
  assert_int_equal(px_wait(loop, out, 4, -1), 1);
  assert_ptr_equal(out[0], &t);
  assert_int_equal(t.result, 0);
  assert_true(since(t0) >= 20);

  t0 = pt_now_ms();
  assert_int_equal(px_timeout(loop, &t, 2000, NULL, NULL), 0);
  assert_int_equal(px_wait(loop, out, 4, 30), 0);
  if (since(t0) < 30 || since(t0) >= 2000)
    fail_msg("px_wait(30 ms) returned 0 after %d ms", (int)since(t0));
  assert_int_equal(px_cancel(loop, &c, &t, NULL, NULL), 0);
  int got = 0;
  while (got < 2) {
    int n = px_wait(loop, out + got, 4 - got, 1000);
    assert_true(n > 0);
    got += n;
  }
  assert_int_equal(c.result, 0);
  assert_int_equal(t.result, PX_ECANCELED);
}

void signal_every_millisecond_without_sa_restart_never_reaches_the_program(
    void **state) {
  px_loop *loop = new_loop();
  px_op *fop = calloc(2 * S_CHUNKS + 1, sizeof(px_op));
  rec *frec = calloc(2 * S_CHUNKS + 1, sizeof(rec));
  px_op tops[S_TIMERS] = {{0}};
  rec trec[S_TIMERS] = {{0}};
  uint64_t tstart[S_TIMERS];
  poster post = {loop, calloc(S_POSTS, sizeof(px_op)),
                 calloc(S_POSTS, sizeof(rec)), 0};
  uint8_t *fsrc = malloc(S_CHUNK * S_CHUNKS), *fdst = calloc(S_CHUNKS, S_CHUNK);
  char path[512];
  px_fd c, s;
  pt_thread *thread;
  (void)state;
  assert_true(fop && frec && post.ops && post.recs && fsrc && fdst);
  pat_fill(fsrc, S_CHUNK * S_CHUNKS, 5, 0);
  tcp_pair(loop, &c, &s);
  px_fd file = temp_file(loop, path, sizeof(path));
  if (pt_alarm_start(1000) != 0) {
    printf("           skipped: the platform has no SIGALRM to interrupt "
           "system calls with\n");
    close_fd(loop, c);
    close_fd(loop, s);
    close_fd(loop, file);
    remove(path);
    free(fop);
    free(frec);
    free(post.ops);
    free(post.recs);
    free(fsrc);
    free(fdst);
    finish(loop);
    skip();
  }
  uint64_t t0 = pt_now_ms();
  blocking_waits_outlast_signals(loop);

  /* Everything at once: TCP both ways, file writes, timers, posts. */
  xfer *up = xfer_new(loop, c, s, TX_SEND, 2, RX_RECV, 2, 3);
  xfer *down = xfer_new(loop, s, c, TX_WRITEV, 1, RX_READ_READV, 2, 4);
  xfer_start(up);
  xfer_start(down);
  for (int i = 0; i < S_CHUNKS; i++)
    assert_int_equal(px_write(loop, &fop[i], file, fsrc + i * S_CHUNK, S_CHUNK,
                              (int64_t)i * S_CHUNK, rec_cb, &frec[i]),
                     0);
  for (int i = 0; i < S_TIMERS; i++) {
    tstart[i] = pt_now_ms();
    assert_int_equal(
        px_timeout(loop, &tops[i], (uint64_t)(i + 1), rec_cb, &trec[i]), 0);
  }
  assert_int_equal(pt_thread_start(&thread, post_all, &post), 0);
  RUN_UNTIL(loop,
            calls_of(frec, S_CHUNKS) == S_CHUNKS &&
                calls_of(trec, S_TIMERS) == S_TIMERS &&
                calls_of(post.recs, S_POSTS) == S_POSTS,
            20000);
  pt_thread_join(thread);
  xfer_run(loop, up, down, 20000);
  /* Read the file back (after an fsync). */
  assert_int_equal(
      px_fsync(loop, &fop[2 * S_CHUNKS], file, 0, rec_cb, &frec[2 * S_CHUNKS]),
      0);
  for (int i = 0; i < S_CHUNKS; i++)
    assert_int_equal(px_read(loop, &fop[S_CHUNKS + i], file, fdst + i * S_CHUNK,
                             S_CHUNK, (int64_t)i * S_CHUNK, rec_cb,
                             &frec[S_CHUNKS + i]),
                     0);
  RUN_UNTIL(loop, calls_of(frec, 2 * S_CHUNKS + 1) == 2 * S_CHUNKS + 1, 10000);
  unsigned long caught = pt_alarm_stop();
  NOTE("%lu signals caught by the loop thread in %d ms", caught,
       (int)since(t0));
  xfer_check(up, "send/recv");
  xfer_check(down, "writev/read+readv");
  for (int i = 0; i < 2 * S_CHUNKS; i++) {
    assert_int_equal(frec[i].calls, 1);
    assert_int_equal(frec[i].result, S_CHUNK);
  }
  assert_int_equal(frec[2 * S_CHUNKS].result, 0);
  assert_memory_equal(fsrc, fdst, S_CHUNK * S_CHUNKS);
  for (int i = 0; i < S_TIMERS; i++) {
    assert_int_equal(trec[i].calls, 1);
    assert_int_equal(trec[i].result, 0);
    assert_true(trec[i].at_ms - tstart[i] >= (uint64_t)(i + 1));
  }
  assert_int_equal(post.refused, 0);
  for (int i = 0; i < S_POSTS; i++) {
    assert_int_equal(post.recs[i].calls, 1);
    assert_int_equal(post.recs[i].result, 0);
    if (i > 0 && post.recs[i].order < post.recs[i - 1].order)
      fail_msg("post %d was delivered before post %d", i, i - 1);
  }
  /* The signals did come: this test interrupted something. */
  if (caught < 10)
    fail_msg("only %lu SIGALRMs reached the loop thread", caught);
  xfer_free(up);
  xfer_free(down);
  close_fd(loop, c);
  close_fd(loop, s);
  close_fd(loop, file);
  assert_int_equal(remove(path), 0);
  free(fop);
  free(frec);
  free(post.ops);
  free(post.recs);
  free(fsrc);
  free(fdst);
  finish(loop);
}

/* ---- SIGPIPE at its default action. --------------------------------------
 *
 * Writes to peers that are gone, with SIGPIPE left to kill the process, in
 * a child process so that a SIGPIPE px lets through fails this test rather
 * than ending the suite.  (Windows has no SIGPIPE and no fork: the same
 * writes run in the test's own process and their results are checked.)
 * The child cannot use CMocka: it reports on stderr and in its status.
 *
 * What each write gives (docs/semantics.md, Signals): a pipe whose reader
 * closed, PX_EPIPE; a connection whose peer reset it, PX_ECONNRESET at the
 * first write; a connection whose peer closed normally, the first write
 * may still be taken (the peer's kernel answers it with a reset), then the
 * writes fail.  After a first error every later write fails too, with
 * PX_EPIPE where the system says EPIPE (Linux) or PX_ECONNRESET where it
 * says that (Windows).
 */

enum { W_SEND, W_WRITE, W_WRITEV, W_KINDS };
static const char *const w_name[W_KINDS] = {"px_send", "px_write", "px_writev"};

typedef enum {
  PEER_PIPE,       /* a pipe whose reader closed */
  PEER_SOCKETPAIR, /* px_socketpair, the other end closed */
  PEER_TCP,        /* TCP, the peer closed (a FIN) */
  PEER_TCP_RESET,  /* TCP, the peer reset the connection */
  PEER_KINDS
} peer;
static const char *const peer_name[PEER_KINDS] = {"pipe", "socketpair", "TCP",
                                                  "TCP reset"};

typedef struct child_ctx {
  int failures;
} child_ctx;

#define CHILD_CHECK(ctx, cond, ...)                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "sigpipe child: " __VA_ARGS__);                          \
      fprintf(stderr, "\n");                                                   \
      (ctx)->failures++;                                                       \
    }                                                                          \
  } while (0)

static bool gone_code(int32_t r) {
  return r == PX_EPIPE || r == PX_ECONNRESET;
}

static int32_t child_run(px_loop *loop, const rec *r) {
  while (r->calls == 0) {
    int x = px_run(loop, PX_RUN_ONCE);
    if (x < 0)
      return x;
  }
  return r->result;
}

/* Submits one write of len bytes; 0 or the refusal. */
static int child_submit(px_loop *loop, px_op *op, rec *r, int how, px_fd fd,
                        const uint8_t *buf, size_t len, px_iov iov[2]) {
  iov[0] = (px_iov){(void *)buf, len / 2};
  iov[1] = (px_iov){(void *)(buf + len / 2), len - len / 2};
  if (how == W_SEND)
    return px_send(loop, op, fd, buf, len, rec_cb, r);
  if (how == W_WRITE)
    return px_write(loop, op, fd, buf, len, PX_CUR, rec_cb, r);
  return px_writev(loop, op, fd, iov, 2, PX_CUR, rec_cb, r);
}

/* One write of len bytes, run until it completes: its result.  A refused
 * submit counts as a failure of the child. */
static int32_t child_write(child_ctx *ctx, px_loop *loop, int how, px_fd fd,
                           const uint8_t *buf, size_t len) {
  px_op op = {0};
  rec r = {0};
  px_iov iov[2];
  int rc = child_submit(loop, &op, &r, how, fd, buf, len, iov);
  CHILD_CHECK(ctx, rc == 0, "%s refused with %d", w_name[how], rc);
  return rc != 0 ? rc : child_run(loop, &r);
}

/* A TCP connection on loopback, made without CMocka's asserts. */
static int child_tcp_pair(px_loop *loop, px_fd p[2]) {
  px_fd l;
  px_addr a;
  px_op aop = {0}, cop = {0};
  rec ar = {0}, cr = {0};
  int rc = px_tcp_listen(loop, "127.0.0.1", 0, 4, &l);
  if (rc != 0)
    return rc;
  rc = px_addr_local(l, &a);
  if (rc == 0)
    rc = px_tcp_socket(loop, &a, &p[1]);
  if (rc == 0)
    rc = px_accept(loop, &aop, l, rec_cb, &ar);
  if (rc == 0) {
    rc = px_connect(loop, &cop, p[1], &a, rec_cb, &cr);
    if (rc == 0 && child_run(loop, &cr) == 0 && child_run(loop, &ar) == 0)
      p[0] = px_op_fd(&aop);
    else
      rc = rc != 0 ? rc : PX_EIO;
  }
  px_fd_close(loop, l);
  return rc;
}

/* A handle to write to whose reader has gone (closed, or reset the
 * connection), or PX_INVALID_FD. */
static px_fd child_orphan(px_loop *loop, peer kind) {
  px_fd p[2];
  int rc = kind == PEER_PIPE         ? px_pipe(loop, p)
           : kind == PEER_SOCKETPAIR ? px_socketpair(loop, p)
                                     : child_tcp_pair(loop, p);
  if (rc != 0)
    return PX_INVALID_FD;
  rc = kind == PEER_TCP_RESET ? px_fd_close_reset(loop, p[0])
                              : px_fd_close(loop, p[0]);
  return rc == 0 ? p[1] : PX_INVALID_FD;
}

static void child_gone_peer(child_ctx *ctx, px_loop *loop, peer kind, int how) {
  static const uint8_t buf[1024];
  const char *what = peer_name[kind], *call = w_name[how];
  px_fd fd = child_orphan(loop, kind);
  int ok = 0;
  int32_t first = 0, next;
  CHILD_CHECK(ctx, fd != PX_INVALID_FD, "no %s to write to", what);
  if (fd == PX_INVALID_FD)
    return;
  /* Writes until one fails (at most 64), then once more. */
  while (ok < 64 &&
         (first = child_write(ctx, loop, how, fd, buf, sizeof(buf))) >= 0)
    ok++;
  next = child_write(ctx, loop, how, fd, buf, sizeof(buf));
  NOTE("%s %s: %d taken, then %s, then %s", what, call, ok, px_strerror(first),
       px_strerror(next));
  CHILD_CHECK(ctx, first < 0, "%s %s: %d writes taken, none failed", what, call,
              ok);
  if (kind == PEER_PIPE) {
    CHILD_CHECK(ctx, ok == 0 && first == PX_EPIPE && next == PX_EPIPE,
                "%s %s: %d taken, then %d, %d (want PX_EPIPE at once)", what,
                call, ok, first, next);
  } else if (kind == PEER_TCP_RESET) {
    CHILD_CHECK(ctx, ok == 0 && first == PX_ECONNRESET && gone_code(next),
                "%s %s: %d taken, then %d, %d (want PX_ECONNRESET at once)",
                what, call, ok, first, next);
  } else {
    CHILD_CHECK(ctx, gone_code(first) && gone_code(next),
                "%s %s: %d taken, then %d, %d (want PX_EPIPE or "
                "PX_ECONNRESET)",
                what, call, ok, first, next);
  }
  px_fd_close(loop, fd);
}

/* A write waiting for room in a full send buffer when the peer resets the
 * connection: it ends (with the reset, or the bytes it moved before), and
 * the next write fails. */
static void child_pending_write(child_ctx *ctx, px_loop *loop, int how) {
  static uint8_t big[64 * 1024];
  px_fd p[2];
  px_op op = {0};
  rec r = {0};
  px_iov iov[2];
  int rc = child_tcp_pair(loop, p), tries = 0;
  CHILD_CHECK(ctx, rc == 0, "no TCP pair: %d", rc);
  if (rc != 0)
    return;
  pt_sock_bufs(p[0], 1, NULL, NULL);
  pt_sock_bufs(p[1], 1, NULL, NULL);
  /* Writes until one finds no room for 20 ms: the buffers are full. */
  for (int32_t res = 0; res != PX_ETIMEDOUT && tries < 64; tries++) {
    px_op fill = {0};
    rec fr = {0};
    px_op_deadline(&fill, 20);
    rc = child_submit(loop, &fill, &fr, how, p[1], big, sizeof(big), iov);
    res = rc == 0 ? child_run(loop, &fr) : rc;
    CHILD_CHECK(ctx, res > 0 || res == PX_ETIMEDOUT,
                "pending %s: filling gave %d", w_name[how], res);
    if (res < 0 && res != PX_ETIMEDOUT)
      break;
  }
  CHILD_CHECK(ctx, tries < 64, "pending %s: the buffers never filled",
              w_name[how]);
  rc = child_submit(loop, &op, &r, how, p[1], big, sizeof(big), iov);
  CHILD_CHECK(ctx, rc == 0, "pending %s refused: %d", w_name[how], rc);
  px_run(loop, PX_RUN_NOWAIT); /* under way, and waiting for room */
  CHILD_CHECK(ctx, r.calls == 0, "pending %s did not wait: %d", w_name[how],
              r.result);
  px_fd_close_reset(loop, p[0]);
  int32_t res = rc == 0 ? child_run(loop, &r) : rc;
  int32_t next = child_write(ctx, loop, how, p[1], big, 1024);
  NOTE("pending %s at a reset (after %d fills): %s (%d), then %s", w_name[how],
       tries, px_strerror(res), res, px_strerror(next));
  CHILD_CHECK(ctx, (res > 0 && res < (int32_t)sizeof(big)) || gone_code(res),
              "pending %s at a reset: %d", w_name[how], res);
  CHILD_CHECK(ctx, gone_code(next), "%s after a reset: %d", w_name[how], next);
  px_fd_close(loop, p[1]);
}

static int sigpipe_child(void *arg) {
  child_ctx *ctx = arg;
  px_loop *loop;
  px_stats st;
  pt_sigpipe_default();
  if (px_loop_new(&loop, NULL) != 0)
    return 1;
  for (int kind = 0; kind < PEER_KINDS; kind++)
    for (int how = kind == PEER_PIPE ? W_WRITE : W_SEND; how < W_KINDS; how++)
      child_gone_peer(ctx, loop, (peer)kind, how);
  for (int how = 0; how < W_KINDS; how++)
    child_pending_write(ctx, loop, how);
  px_loop_stats(loop, &st);
  CHILD_CHECK(ctx, st.in_flight == 0, "%d ops left in flight",
              (int)st.in_flight);
  int rc = px_loop_free(loop);
  CHILD_CHECK(ctx, rc == 0, "px_loop_free: %d", rc);
  return ctx->failures > 255 ? 255 : ctx->failures;
}

void sigpipe_at_default_writes_to_gone_peers_fail_with_epipe(void **state) {
  child_ctx ctx = {0};
  (void)state;
  int rc = pt_in_child(sigpipe_child, &ctx);
  if (rc < 0)
    fail_msg("the writing process was killed by %s", pt_signal_name(-rc));
  if (rc > 0)
    fail_msg("%d check(s) failed in the writing process (see above)", rc);
}
