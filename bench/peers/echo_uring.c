/*
 * echo_uring — a TCP echo server on raw liburing, one thread, no px: a peer
 * that px's examples/echo_server is measured against.
 *
 *   echo_uring --host IP --port N
 *
 * Notes on the mechanism:
 *
 * - One ring, set up with SINGLE_ISSUER | DEFER_TASKRUN (6.1+): completions
 *   are run only when the loop waits for them, in a batch, instead of
 *   interrupting it.  Refused, it falls back to COOP_TASKRUN, then to none.
 * - Accepts are one multishot accept; each connection gets one multishot
 *   receive that picks its buffers from a provided-buffer ring.  This is
 *   what liburing's own examples and its networking notes recommend for a
 *   server: a receive is armed once per connection rather than once per
 *   message (a single-shot receive that finds no data arms a poll each
 *   time), and an idle connection holds no buffer, so 10,000 connections do
 *   not need 10,000 buffers.
 * - The price is ordering.  The receive stays armed while an echo is being
 *   sent, so a connection may have several filled buffers; they wait in a
 *   per-connection queue (linked through buf_next[]) and one send at a time
 *   is in flight, so bytes go back in the order they came.  A short send is
 *   sent on from where it stopped.  A sent buffer goes back to the ring; the
 *   ring tail is published once per batch of completions.
 * - With every buffer out, a multishot receive ends with -ENOBUFS and its
 *   data stays in the socket.  The connection is parked, and after each
 *   batch of completions as many parked connections are armed again as
 *   there are buffers in the ring.  That count, not the buffers returned in
 *   the batch, because an -ENOBUFS can arrive a batch after the buffers came
 *   back; and it is exact then, since with DEFER_TASKRUN the kernel posts
 *   CQEs only inside io_uring_enter and the batch has reaped them all.
 * - A multishot request can end without an error (no IORING_CQE_F_MORE,
 *   e.g. after a CQ overflow); it is then armed again.
 * - A connection is closed (IORING_OP_CLOSE) only once neither its receive
 *   nor its send is in flight: io_uring holds its own reference to the
 *   file, so closing earlier would leave an armed receive keeping the
 *   socket open.  After a failed send the receive is cancelled first.
 * - When the SQ is full, the SQEs queued so far are submitted and the
 *   request is retried.
 * - SIGINT and SIGTERM are blocked and read from a signalfd by a read
 *   request.  At stop the ring is torn down (which cancels every request)
 *   and then the listener and the connections are closed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "peer.h"

#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define SQ_ENTRIES 4096
#define CQ_ENTRIES 16384 /* a completion per connection per round at 10k */
#define NBUFS 4096       /* provided buffers (a power of two, < 65535) */
#define BUF_SIZE (16 * 1024)
#define BGID 0
#define NO_BUF 0xFFFF

/* user_data: a connection's address with the request kind in its low bits
 * (conn is 8-byte aligned); requests of no connection carry NULL. */
enum op { OP_ACCEPT, OP_RECV, OP_SEND, OP_SIGNAL, OP_CLOSE, OP_CANCEL };
#define OP_MASK 7u

typedef struct conn conn;
struct conn {
  int fd;
  uint8_t recv_armed, send_busy, closing, parked;
  uint16_t head, tail; /* filled buffers waiting to be sent back */
  uint32_t sent;       /* bytes of the head buffer sent so far */
  conn *prev, *next;   /* every open connection, to close them at stop */
  conn *park_prev, *park_next; /* waiting for buffers (-ENOBUFS) */
};

typedef struct server {
  struct io_uring ring;
  struct io_uring_buf_ring *br;
  char *bufs;
  uint32_t buf_len[NBUFS];
  uint16_t buf_next[NBUFS];
  unsigned returned; /* buffers added to the ring, not yet published */
  unsigned bufs_out; /* buffers the kernel has handed over, not yet back */
  int listen_fd, signal_fd, stopping, accept_error_reported;
  struct signalfd_siginfo siginfo;
  conn *conns;
  conn *park_head, *park_tail;
  unsigned long long accepted, enobufs;
} server;

static server g_srv;

/* An SQE; with the SQ full, what is queued is submitted first. */
static struct io_uring_sqe *sqe_get(server *s) {
  struct io_uring_sqe *sqe;
  while ((sqe = io_uring_get_sqe(&s->ring)) == NULL) {
    int r = io_uring_submit(&s->ring);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
      fprintf(stderr, "echo_uring: io_uring_submit: %s\n", strerror(-r));
      exit(1);
    }
  }
  return sqe;
}

static void sqe_set(struct io_uring_sqe *sqe, conn *c, enum op op) {
  io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | op);
}

static void arm_accept(server *s) {
  struct io_uring_sqe *sqe = sqe_get(s);
  io_uring_prep_multishot_accept(sqe, s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
  sqe_set(sqe, NULL, OP_ACCEPT);
}

static void arm_signal(server *s) {
  struct io_uring_sqe *sqe = sqe_get(s);
  io_uring_prep_read(sqe, s->signal_fd, &s->siginfo, sizeof s->siginfo, 0);
  sqe_set(sqe, NULL, OP_SIGNAL);
}

static void arm_recv(server *s, conn *c) {
  struct io_uring_sqe *sqe = sqe_get(s);
  io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = BGID;
  sqe_set(sqe, c, OP_RECV);
  c->recv_armed = 1;
}

static void send_head(server *s, conn *c) {
  uint16_t bid = c->head;
  struct io_uring_sqe *sqe = sqe_get(s);
  io_uring_prep_send(sqe, c->fd, s->bufs + (size_t)bid * BUF_SIZE + c->sent,
                     s->buf_len[bid] - c->sent, MSG_NOSIGNAL);
  sqe_set(sqe, c, OP_SEND);
  c->send_busy = 1;
}

/* Gives a buffer back; the ring sees it when the batch is published. */
static void buf_return(server *s, uint16_t bid) {
  s->bufs_out--;
  io_uring_buf_ring_add(s->br, s->bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, bid,
                        io_uring_buf_ring_mask(NBUFS), (int)s->returned++);
}

static void buf_publish(server *s) {
  io_uring_buf_ring_advance(s->br, (int)s->returned);
}

static void park(server *s, conn *c) {
  c->parked = 1;
  c->park_next = NULL;
  c->park_prev = s->park_tail;
  if (s->park_tail != NULL)
    s->park_tail->park_next = c;
  else
    s->park_head = c;
  s->park_tail = c;
}

static void unpark(server *s, conn *c) {
  c->parked = 0;
  if (c->park_prev != NULL)
    c->park_prev->park_next = c->park_next;
  else
    s->park_head = c->park_next;
  if (c->park_next != NULL)
    c->park_next->park_prev = c->park_prev;
  else
    s->park_tail = c->park_prev;
}

/* Frees c once nothing of it is in flight. */
static void conn_try_close(server *s, conn *c) {
  if (c->recv_armed || c->send_busy)
    return;
  while (c->head != NO_BUF) { /* echoes that can no longer be sent */
    uint16_t bid = c->head;
    c->head = s->buf_next[bid];
    buf_return(s, bid);
  }
  struct io_uring_sqe *sqe = sqe_get(s);
  io_uring_prep_close(sqe, c->fd);
  sqe_set(sqe, NULL, OP_CLOSE);
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  free(c);
}

/* The connection failed: what is queued is dropped and the receive, if
 * armed, cancelled; its completion then closes c. */
static void conn_fail(server *s, conn *c) {
  c->closing = 1;
  if (c->parked) /* its receive is not to be armed again */
    unpark(s, c);
  if (c->recv_armed) {
    struct io_uring_sqe *sqe = sqe_get(s);
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)c | OP_RECV, 0);
    sqe_set(sqe, NULL, OP_CANCEL);
  }
  conn_try_close(s, c);
}

static void on_accept(server *s, struct io_uring_cqe *cqe) {
  if (!(cqe->flags & IORING_CQE_F_MORE) && !s->stopping)
    arm_accept(s);
  if (cqe->res < 0) {
    if (!s->accept_error_reported)
      fprintf(stderr, "echo_uring: accept: %s\n", strerror(-cqe->res));
    s->accept_error_reported = 1;
    return;
  }
  int fd = cqe->res, one = 1;
  /* Echo replies are small and latency-bound: do not let Nagle hold them. */
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
    perror("echo_uring: TCP_NODELAY");
  conn *c = calloc(1, sizeof *c);
  if (c == NULL) {
    fprintf(stderr, "echo_uring: out of memory\n");
    close(fd);
    return;
  }
  c->fd = fd;
  c->head = c->tail = NO_BUF;
  c->next = s->conns;
  if (s->conns != NULL)
    s->conns->prev = c;
  s->conns = c;
  s->accepted++;
  arm_recv(s, c);
}

/* Queues a filled buffer for sending back; sends it if none is in flight. */
static void conn_queue(server *s, conn *c, uint16_t bid, int len) {
  s->buf_len[bid] = (uint32_t)len;
  s->buf_next[bid] = NO_BUF;
  if (c->tail != NO_BUF)
    s->buf_next[c->tail] = bid;
  else
    c->head = bid;
  c->tail = bid;
  if (!c->send_busy)
    send_head(s, c);
}

static void on_recv(server *s, conn *c, struct io_uring_cqe *cqe) {
  int res = cqe->res;
  if (cqe->flags & IORING_CQE_F_BUFFER) {
    uint16_t bid = (uint16_t)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
    s->bufs_out++;
    if (res > 0 && !c->closing)
      conn_queue(s, c, bid, res);
    else
      buf_return(s, bid);
  }
  if (cqe->flags & IORING_CQE_F_MORE)
    return;
  c->recv_armed = 0;
  if (c->closing)
    conn_try_close(s, c);
  else if (res == -ENOBUFS) {
    s->enobufs++;
    park(s, c);
  } else if (res > 0)
    arm_recv(s, c); /* ended without an error: carry on */
  else if (res == 0) {
    c->closing = 1; /* end of stream: send back what is queued, then close */
    conn_try_close(s, c);
  } else {
    conn_fail(s, c); /* ECONNRESET and the like */
  }
}

static void on_send(server *s, conn *c, struct io_uring_cqe *cqe) {
  c->send_busy = 0;
  if (cqe->res < 0) { /* EPIPE, ECONNRESET */
    conn_fail(s, c);
    return;
  }
  uint16_t bid = c->head;
  c->sent += (uint32_t)cqe->res;
  if (c->sent < s->buf_len[bid]) { /* a short send: the rest */
    send_head(s, c);
    return;
  }
  c->sent = 0;
  c->head = s->buf_next[bid];
  if (c->head == NO_BUF)
    c->tail = NO_BUF;
  buf_return(s, bid);
  if (c->head != NO_BUF)
    send_head(s, c);
  else if (c->closing)
    conn_try_close(s, c);
}

static void on_cqe(server *s, struct io_uring_cqe *cqe) {
  uint64_t data = io_uring_cqe_get_data64(cqe);
  conn *c = (conn *)(uintptr_t)(data & ~(uint64_t)OP_MASK);
  switch ((enum op)(data & OP_MASK)) {
    case OP_ACCEPT:
      on_accept(s, cqe);
      break;
    case OP_RECV:
      on_recv(s, c, cqe);
      break;
    case OP_SEND:
      on_send(s, c, cqe);
      break;
    case OP_SIGNAL:
      s->stopping = 1;
      break;
    case OP_CLOSE:
    case OP_CANCEL:
      break;
  }
}

/* Publishes the buffers given back in this batch, then arms as many
 * parked connections as there are buffers in the ring. */
static void after_batch(server *s) {
  if (s->returned > 0) {
    buf_publish(s);
    s->returned = 0;
  }
  for (unsigned n = NBUFS - s->bufs_out; n > 0 && s->park_head != NULL; n--) {
    conn *c = s->park_head;
    unpark(s, c);
    arm_recv(s, c);
  }
}

static int run(server *s) {
  while (!s->stopping) {
    int r = io_uring_submit_and_wait(&s->ring, 1);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
      fprintf(stderr, "echo_uring: io_uring_submit_and_wait: %s\n",
              strerror(-r));
      return -1;
    }
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&s->ring, head, cqe) {
      on_cqe(s, cqe);
      n++;
    }
    io_uring_cq_advance(&s->ring, n);
    after_batch(s);
  }
  return 0;
}

static int ring_init(server *s) {
  static const unsigned tries[] = {IORING_SETUP_SINGLE_ISSUER |
                                       IORING_SETUP_DEFER_TASKRUN,
                                   IORING_SETUP_COOP_TASKRUN, 0};
  int r = -EINVAL;
  for (size_t i = 0; i < sizeof tries / sizeof tries[0]; i++) {
    struct io_uring_params p = {.flags = tries[i] | IORING_SETUP_CQSIZE,
                                .cq_entries = CQ_ENTRIES};
    r = io_uring_queue_init_params(SQ_ENTRIES, &s->ring, &p);
    if (r == 0)
      break;
  }
  if (r < 0)
    return r;
  io_uring_register_ring_fd(&s->ring); /* saves an fd lookup per enter */
  return 0;
}

/* NBUFS buffers of BUF_SIZE bytes, all in the ring. */
static int bufs_init(server *s) {
  size_t ring_size = NBUFS * sizeof(struct io_uring_buf);
  s->br = mmap(NULL, ring_size, PROT_READ | PROT_WRITE,
               MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  s->bufs = malloc((size_t)NBUFS * BUF_SIZE);
  if (s->br == MAP_FAILED || s->bufs == NULL)
    return -ENOMEM;
  io_uring_buf_ring_init(s->br);
  struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)s->br,
                                 .ring_entries = NBUFS,
                                 .bgid = BGID};
  int r = io_uring_register_buf_ring(&s->ring, &reg, 0);
  if (r < 0)
    return r;
  s->bufs_out = NBUFS; /* until each is given to the ring below */
  for (uint16_t bid = 0; bid < NBUFS; bid++)
    buf_return(s, bid);
  buf_publish(s);
  s->returned = 0;
  return 0;
}

int main(int argc, char **argv) {
  peer_opts o;
  server *s = &g_srv;
  if (peer_parse_args(argc, argv, "echo_uring", &o) < 0)
    return 2;
  peer_raise_nofile("echo_uring");
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  if (sigprocmask(SIG_BLOCK, &sigs, NULL) != 0) {
    perror("echo_uring: sigprocmask");
    return 1;
  }
  s->listen_fd = peer_listen(&o, SOCK_CLOEXEC);
  if (s->listen_fd < 0) {
    fprintf(stderr, "echo_uring: listen on %s:%d: %s\n", o.host, o.port,
            strerror(-s->listen_fd));
    return 1;
  }
  s->signal_fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
  if (s->signal_fd < 0) {
    perror("echo_uring: signalfd");
    return 1;
  }
  int r = ring_init(s);
  if (r == 0)
    r = bufs_init(s);
  if (r < 0) {
    fprintf(stderr, "echo_uring: ring setup: %s\n", strerror(-r));
    return 1;
  }
  arm_signal(s);
  arm_accept(s);
  peer_print_listening(o.host, peer_local_port(s->listen_fd));
  int rc = run(s);
  io_uring_queue_exit(&s->ring); /* cancels whatever is in flight */
  close(s->listen_fd);
  close(s->signal_fd);
  while (s->conns != NULL) {
    conn *c = s->conns;
    s->conns = c->next;
    close(c->fd);
    free(c);
  }
  free(s->bufs);
  munmap(s->br, NBUFS * sizeof(struct io_uring_buf));
  printf("stats: connections=%llu enobufs=%llu\n", s->accepted, s->enobufs);
  fflush(stdout);
  return rc == 0 ? 0 : 1;
}
