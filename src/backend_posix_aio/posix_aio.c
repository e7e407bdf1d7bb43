/*
 * posix_aio — POSIX AIO for regular files, readiness emulation for sockets,
 * pipes and other streams.
 *
 * Notes on what is asynchronous here and what is emulated:
 *
 * - Regular files and block devices (read, write, readv, writev at an
 *   offset or at PX_CUR, fsync) go through aio_read / aio_write /
 *   aio_fsync: the loop thread never blocks on a disk.  On glibc the "AIO"
 *   is a pool of libc threads doing pread/pwrite, so it is asynchronous to
 *   the loop, not in the kernel; aio_file.c explains the rest (completion
 *   wakeups, parallelism on one file, vectors, file positions).
 * - Streams (recv, send, accept, connect, and read/write on pipes, sockets,
 *   FIFOs and devices) are a proactor built over a reactor, as Boost.Asio
 *   does on Linux: an op waits on its fd's queue until the poller says the
 *   fd is ready, then the non-blocking call runs on the loop thread and the
 *   op completes with its result.  Handles are O_NONBLOCK (adopt sets it).
 * - Ready bits.  Each fd keeps "readable" and "writable" bits, set by the
 *   poller and cleared only when a call answers EAGAIN, or when a recv or
 *   read on a byte stream comes back short: the stream was drained, and
 *   any byte arriving later raises a new event.  Not after a hang-up,
 *   which raises no second event, and not on a datagram socket or a tty,
 *   which hand out one record per call and keep the rest without a new
 *   event.  Under poll() (levels) any SOCK_STREAM socket, pipe or FIFO
 *   counts: a wrong guess costs one wait, which reports the bytes left.
 *   Under epoll (edges) a wrong guess would leave them unread until more
 *   arrive, so only streams whose reads go on to the end of what is
 *   queued count: TCP until it has seen urgent data (a read stops at the
 *   urgent mark; EPOLLPRI tells), and pipes not in packet mode (O_DIRECT:
 *   one write per read).  Not an AF_UNIX stream, whose read stops after a
 *   message carrying descriptors (or, with SO_PASSCRED, at a change of
 *   writer): there only EAGAIN clears the bit, one more call per short
 *   read.  A new fd starts ready both
 *   ways: the first call of each direction is tried at once, and answers
 *   EAGAIN or its error (a recv on a listener, a read on a pipe's write
 *   end) as the kernel would.  An op whose direction is ready runs at the
 *   next poll without asking the poller: no epoll_ctl and no extra wait
 *   per op in steady state.
 * - Ops run only inside poll (the run list), never inside a submit call,
 *   except connect(): starting a connection is itself the call, and its
 *   result, if immediate, is reported at the next poll.
 * - Accept takes accept4(SOCK_NONBLOCK|SOCK_CLOEXEC) where it exists, else
 *   accept + fcntl (the fd is briefly inheritable by a concurrent exec).
 *   ECONNABORTED (a peer that reset before the accept) is skipped; other
 *   errors (EMFILE, ENFILE) complete the accept, so the program sees them
 *   instead of a loop that spins.
 * - Writes to pipes may raise SIGPIPE (send() has MSG_NOSIGNAL, write()
 *   has nothing).  The core's SIGPIPE guard is held from the first such
 *   write of a poll to the end of that poll.
 * - Regular files given to recv or send, and fds the poller refuses
 *   (/dev/null under epoll), are always ready: the call itself answers.
 * - Deadlines come from the core's timer heap (no PX_CAP_KERNEL_DEADLINE):
 *   it cancels the op, which completes with PX_ETIMEDOUT.  Posts and
 *   wakeups write an eventfd (epoll build) or a pipe (poll build).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#if defined(__linux__) && defined(_GNU_SOURCE)
#include <sys/eventfd.h>
#define PX__HAVE_EVENTFD 1
#endif

#include "pa.h"

/* An attempt that must wait for readiness. */
#define PX__AGAIN INT32_MIN

/* ---- Wake descriptors. ------------------------------------------------- */

#if !defined(PX__HAVE_EVENTFD) ||                                              \
    !(defined(SOCK_NONBLOCK) && defined(_GNU_SOURCE))
#define PX__NEED_CLOEXEC_NONBLOCK 1
#endif

#ifdef PX__NEED_CLOEXEC_NONBLOCK
static int px__cloexec_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
      fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
    return px__errno(errno);
  return 0;
}
#endif

int px__pa_wake_fd(int *r, int *w) {
#ifdef PX__HAVE_EVENTFD
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0)
    return px__errno(errno);
  *r = *w = fd;
  return 0;
#else
  int p[2];
  if (pipe(p) < 0)
    return px__errno(errno);
  int e = px__cloexec_nonblock(p[0]);
  if (e == 0)
    e = px__cloexec_nonblock(p[1]);
  if (e < 0) {
    close(p[0]);
    close(p[1]);
    return e;
  }
  *r = p[0];
  *w = p[1];
  return 0;
#endif
}

void px__pa_wake_drain(int fd) {
  char buf[64];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
#ifdef PX__HAVE_EVENTFD
    break; /* one read empties an eventfd */
#else
    if (n < (ssize_t)sizeof(buf))
      break;
#endif
  }
}

/* Async-signal-safe and thread-safe: one write(). */
int px__pa_wake_post(int fd) {
#ifdef PX__HAVE_EVENTFD
  uint64_t one = 1;
#else
  char one = 1;
#endif
  ssize_t n;
  do {
    n = write(fd, &one, sizeof(one));
  } while (n < 0 && errno == EINTR);
  /* A full pipe (EAGAIN) is already readable: the wakeup is not lost. */
  return n < 0 && errno != EAGAIN ? px__errno(errno) : 0;
}

/* ---- Per-fd state. ----------------------------------------------------- */

px__pfd *px__pa_fd(px__pa *pa, int fd) {
  if (fd < 0 || (size_t)fd >= pa->nfds || !pa->fds[fd].used)
    return NULL;
  return &pa->fds[fd];
}

/* The fd's state, made on first use.  A new fd is writable and not
 * readable, except one the poller cannot watch (a regular file), which is
 * always both. */
px__pfd *px__pa_fd_make(px_loop *loop, px__pa *pa, int fd) {
  if (fd < 0)
    return NULL;
  if ((size_t)fd >= pa->nfds) {
    /* As the core's handle table (fdtab.c): made zeroed at its full size,
     * written only up to fd. */
    if (pa->fds_cap == 0) {
      size_t n = px__fd_table_size();
      while (n <= (size_t)fd)
        n *= 2;
      pa->fds = px__calloc(n, sizeof(*pa->fds));
      if (pa->fds == NULL)
        return NULL;
      pa->fds_cap = n;
    } else if ((size_t)fd >= pa->fds_cap) {
      size_t n = pa->fds_cap;
      while (n <= (size_t)fd)
        n *= 2;
      px__pfd *t = px__realloc(pa->fds, n * sizeof(*t));
      if (t == NULL)
        return NULL;
      pa->fds = t;
      pa->fds_cap = n;
    }
    memset(pa->fds + pa->nfds, 0,
           ((size_t)fd + 1 - pa->nfds) * sizeof(*pa->fds));
    pa->nfds = (size_t)fd + 1;
  }
  px__pfd *f = &pa->fds[fd];
  if (!f->used) {
    /* The run list may still hold the entry of a closed fd: keep its link. */
    px__pfd fresh = {.run_next = f->run_next, .on_run = f->on_run, .used = 1};
    *f = fresh;
    px__fdent *e = px__fd_get(loop, fd);
    f->unpollable = e != NULL && !e->stream;
    f->ready = PX__IN | PX__OUT;
  }
  return f;
}

/* Lets go of fd's state before it is closed. */
static void px__fd_release(px__pa *pa, int fd) {
  px__pfd *f = px__pa_fd(pa, fd);
  if (f == NULL)
    return;
  px__poller_forget(pa->poller, fd);
  px__aio_release_fd(pa, f);
  /* An entry still on the run list stays linked; its queues are empty. */
  int32_t next = f->run_next;
  uint8_t on_run = f->on_run;
  memset(f, 0, sizeof(*f));
  f->run_next = next;
  f->on_run = on_run;
}

static void px__run_push(px__pa *pa, int fd, px__pfd *f) {
  if (f->on_run)
    return;
  f->on_run = 1;
  f->run_next = -1;
  if (pa->run_tail >= 0)
    pa->fds[pa->run_tail].run_next = fd;
  else
    pa->run_head = fd;
  pa->run_tail = fd;
}

static int px__run_pop(px__pa *pa) {
  int fd = pa->run_head;
  if (fd < 0)
    return -1;
  px__pfd *f = &pa->fds[fd];
  pa->run_head = f->run_next;
  if (pa->run_head < 0)
    pa->run_tail = -1;
  f->on_run = 0;
  f->run_next = -1;
  return fd;
}

/* Tells the poller which directions fd waits for: those with an op queued
 * and no ready bit.  An fd it refuses becomes always ready. */
static int px__interest(px__pa *pa, int fd, px__pfd *f) {
  unsigned want = 0;
  for (unsigned d = 0; d < 2; d++)
    if (f->q[d].tail != NULL && !(f->ready & (1u << d)))
      want |= 1u << d;
  if (want == f->watched || f->unpollable)
    return 0;
  int r = px__poller_want(pa->poller, fd, want);
  if (r == PX_EPERM) {
    f->unpollable = 1;
    f->ready = PX__IN | PX__OUT;
    px__run_push(pa, fd, f);
    return 0;
  }
  if (r == 0)
    f->watched = (uint8_t)want;
  return r;
}

/* ---- Readiness ops. ---------------------------------------------------- */

void px__pa_done(px__pa *pa, px_op *op, int32_t res) {
  px__paop *po = px__pa_op(op);
  po->where = PX__W_DONE;
  po->res = res;
  px__fifo_push(&pa->done, op);
}

static unsigned px__side(const px_op *op) {
  switch (op->kind) {
    case PX__OP_SEND:
    case PX__OP_WRITE:
    case PX__OP_WRITEV:
    case PX__OP_CONNECT:
      return 1;
    default:
      return 0;
  }
}

static void px__guard(px__pa *pa, const px_op *op) {
  if ((op->flags & PX__F_SIGPIPE) && !pa->guard_held) {
    px__sigpipe_hold();
    pa->guard_held = true;
  }
}

static int32_t px__accept_call(px_op *op) {
  int fd;
  for (;;) {
#if defined(SOCK_NONBLOCK) && defined(_GNU_SOURCE)
    fd = accept4((int)op->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    fd = accept((int)op->fd, NULL, NULL);
#endif
    if (fd >= 0 || (errno != EINTR && errno != ECONNABORTED))
      break;
  }
  if (fd < 0)
    return -1;
#if !(defined(SOCK_NONBLOCK) && defined(_GNU_SOURCE))
  int r = px__cloexec_nonblock(fd);
  if (r < 0) {
    close(fd);
    errno = -r;
    return -1;
  }
#endif
  op->off = fd;
  return 0;
}

/* Whether a read on fd reads on to the end of what is queued, under an
 * edge-triggered poller (see the notes on top). */
static bool px__reads_to_the_end(int fd, const struct stat *st) {
  if (S_ISFIFO(st->st_mode)) {
#ifdef O_DIRECT
    int fl = fcntl(fd, F_GETFL);
    return fl >= 0 && !(fl & O_DIRECT); /* not a packet-mode pipe */
#else
    return true;
#endif
  }
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
      (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
    return false;
#ifdef SO_PROTOCOL
  /* TCP itself: an SCTP stream socket hands out one message per read. */
  int proto = 0;
  len = sizeof(proto);
  return getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) == 0 &&
         proto == IPPROTO_TCP;
#else
  return true;
#endif
}

/* Whether a short read on fd means it was drained (see the notes on top);
 * asked once per fd. */
static bool px__short_read_drains(int fd, px__pfd *f) {
  if (f->bytes == 0) {
    struct stat st;
    int type = 0;
    socklen_t len = sizeof(type);
    bool yes = fstat(fd, &st) == 0 &&
               (S_ISFIFO(st.st_mode) ||
                (S_ISSOCK(st.st_mode) &&
                 getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 &&
                 type == SOCK_STREAM)) &&
               (!px__poller_edge || px__reads_to_the_end(fd, &st));
    f->bytes = yes ? 1 : 2;
  }
  return f->bytes == 1 && !f->urgent;
}

/* A connect in progress is done when the socket reports an error or has a
 * peer; writability alone can be a stale ready bit.  A failed connection's
 * error is handed out once (SO_ERROR clears it): a receive queued beside
 * the connect, whose direction runs first, may have taken it, and then the
 * socket has neither error nor peer, as while it connects; px__attempt
 * kept that error for the connect in f->conn_err. */
static int32_t px__connect_check(px_op *op, px__pfd *f) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt((int)op->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    return -1;
  if (err == 0)
    err = f->conn_err;
  if (err != 0) {
    errno = err;
    return -1;
  }
  struct sockaddr_storage ss;
  len = sizeof(ss);
  if (getpeername((int)op->fd, (void *)&ss, &len) < 0)
    return errno == ENOTCONN ? (errno = EAGAIN, -1) : -1;
  return 0;
}

/* A pooled receive takes its buffer only once the socket is readable.
 * With the pool empty, a one-byte MSG_PEEK tells data (PX_ENOBUFS, the
 * bytes stay in the socket) from a stale ready bit (wait) and from the end
 * of the stream (0, which needs no buffer).  The buffer taken is kept in
 * op->off until the completion hands it over. */
static ssize_t px__recv_pooled(px_op *op) {
  int fd = (int)op->fd;
  px_bufpool *p = op->buf;
  op->off = 0;
  if (p->slots.nfree == 0) {
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK);
    if (n <= 0)
      return n;
    px__buf_exhausted(p);
    errno = ENOBUFS;
    return -1;
  }
  /* Lent while the call runs: a stale ready bit's EAGAIN leaves no trace
   * in the pool's counters. */
  uint32_t i = px__buf_lend(p);
  void *buf = px__buf_at(p, i);
  ssize_t n = recv(fd, buf, op->len, 0);
  int err = errno;
  px__buf_unlend(p, i, n > 0);
  if (n > 0)
    op->off = (int64_t)(uintptr_t)buf;
  errno = err;
  return n;
}

/* One non-blocking call: bytes, 0, -1 with errno. */
static ssize_t px__call(px__pa *pa, px_op *op, px__pfd *f) {
  int fd = (int)op->fd;
  switch (op->kind) {
    case PX__OP_RECV:
      return recv(fd, op->buf, op->len, 0);
    case PX__OP_RECV_POOLED:
      return px__recv_pooled(op);
    case PX__OP_READ:
      return read(fd, op->buf, op->len);
    case PX__OP_READV:
      return readv(fd, op->buf, (int)op->len);
    case PX__OP_SEND:
      return send(fd, op->buf, op->len, MSG_NOSIGNAL);
    case PX__OP_WRITE:
      px__guard(pa, op);
      return write(fd, op->buf, op->len);
    case PX__OP_WRITEV:
      px__guard(pa, op);
      return writev(fd, op->buf, (int)op->len);
    case PX__OP_ACCEPT:
      return px__accept_call(op);
    default: /* PX__OP_CONNECT */
      return px__connect_check(op, f);
  }
}

/* Runs op's call: its result, or PX__AGAIN (the direction is not ready). */
static int32_t px__attempt(px__pa *pa, px_op *op, px__pfd *f) {
  ssize_t n;
  do {
    n = px__call(pa, op, f);
  } while (n < 0 && errno == EINTR);
  if (n >= 0) {
    /* A short read drained the socket: wait for the next event. */
    if (px__side(op) == 0 && n > 0 && op->kind != PX__OP_READV &&
        (size_t)n < op->len && !f->unpollable && !f->hup &&
        px__short_read_drains((int)op->fd, f))
      f->ready &= (uint8_t)~PX__IN;
    return (int32_t)n;
  }
  if ((errno == EAGAIN || errno == EWOULDBLOCK) && !f->unpollable) {
    f->ready &= (uint8_t) ~(1u << px__side(op));
    return PX__AGAIN;
  }
  /* A read-side call that fails while a connect waits took the failed
   * connection's error (see px__connect_check).  Not ENOTCONN: where a
   * receive on a connecting socket says so, the connection is not over. */
  if (px__side(op) == 0 && errno != ENOTCONN && f->q[1].tail != NULL &&
      px__oq_head(&f->q[1])->kind == PX__OP_CONNECT)
    f->conn_err = errno;
  return px__errno(errno);
}

/* Completes every op waiting for readiness on fd with err: the fd is being
 * closed, or the poller could not take it (out of memory) and they would
 * otherwise wait forever. */
static void px__wait_fail(px_loop *loop, px__pa *pa, int fd, int32_t err) {
  for (unsigned d = 0; d < 2; d++) {
    px__pfd *f;
    px_op *op;
    /* Completing the last op may start the close, which releases the
     * entry: look it up each time. */
    while ((f = px__pa_fd(pa, fd)) != NULL &&
           (op = px__oq_pop(&f->q[d])) != NULL) {
      px__pa_op(op)->where = PX__W_NONE;
      px__complete(loop, op, err);
    }
  }
}

/* Runs the queued ops of fd whose direction is ready, in order. */
static void px__run_fd(px_loop *loop, px__pa *pa, int fd) {
  for (unsigned d = 0; d < 2; d++) {
    for (;;) {
      /* Completing an op may start the next one on this fd (and only on
       * this fd): look the entry up again each time. */
      px__pfd *f = px__pa_fd(pa, fd);
      if (f == NULL || !(f->ready & (1u << d)) || f->q[d].tail == NULL)
        break;
      px_op *op = px__oq_head(&f->q[d]);
      int32_t r = px__attempt(pa, op, f);
      if (r == PX__AGAIN)
        break;
      px__oq_pop(&f->q[d]);
      px__pa_op(op)->where = PX__W_NONE;
      if (op->kind == PX__OP_RECV_POOLED)
        px__complete_buf(loop, op, r,
                         r > 0 ? (void *)(uintptr_t)op->off : NULL);
      else
        px__complete(loop, op, r);
    }
  }
  px__pfd *f = px__pa_fd(pa, fd);
  int r = f != NULL ? px__interest(pa, fd, f) : 0;
  if (r < 0)
    px__wait_fail(loop, pa, fd, r);
}

static int px__ready_submit(px_loop *loop, px__pa *pa, px_op *op) {
  int fd = (int)op->fd;
  px__pfd *f = px__pa_fd_make(loop, pa, fd);
  if (f == NULL)
    return PX_ENOMEM;
  unsigned d = px__side(op);
  if (op->kind == PX__OP_CONNECT) {
    const px_addr *a = op->buf;
    f->conn_err = 0; /* an earlier attempt's */
    int r = connect(fd, (const void *)a->storage, (socklen_t)a->len);
    if (r == 0 || (errno != EINPROGRESS && errno != EINTR)) {
      px__pa_done(pa, op, r == 0 ? 0 : px__errno(errno));
      return 0;
    }
    f->ready &= (uint8_t)~PX__OUT; /* wait for the connection */
  }
  px__pa_op(op)->where = PX__W_READY;
  bool first = f->q[d].tail == NULL;
  px__oq_push(&f->q[d], op);
  if (!first)
    return 0;
  if (f->ready & (1u << d)) {
    px__run_push(pa, fd, f);
    return 0;
  }
  int r = px__interest(pa, fd, f);
  if (r < 0) {
    px__oq_remove(&f->q[d], op);
    px__pa_op(op)->where = PX__W_NONE;
  }
  return r;
}

/* ---- The backend contract. --------------------------------------------- */

static bool px__is_file(px_loop *loop, const px_op *op) {
  px__fdent *e = px__fd_get(loop, op->fd);
  return e != NULL && !e->stream;
}

static int px__pa_submit(px_loop *loop, px_op *op) {
  px__pa *pa = px__pa_of(loop);
  memset(op->backend, 0, sizeof(op->backend));
  switch (op->kind) {
    case PX__OP_NOP:
      px__pa_done(pa, op, 0);
      return 0;
    case PX__OP_CLOSE:
      px__fd_release(pa, (int)op->fd);
      px__pa_done(pa, op, px__os_close(op->fd));
      return 0;
    case PX__OP_FSYNC:
      return px__aio_submit(loop, pa, op);
    case PX__OP_READ:
    case PX__OP_WRITE:
    case PX__OP_READV:
    case PX__OP_WRITEV:
      if (px__is_file(loop, op))
        return px__aio_submit(loop, pa, op);
      return px__ready_submit(loop, pa, op);
    default:
      return px__ready_submit(loop, pa, op);
  }
}

/* Takes op off its readiness queue; false if it is not on one. */
static bool px__unqueue(px__pa *pa, px_op *op) {
  if (px__pa_op(op)->where != PX__W_READY)
    return false;
  int fd = (int)op->fd;
  px__pfd *f = px__pa_fd(pa, fd);
  px__oq_remove(&f->q[px__side(op)], op);
  px__pa_op(op)->where = PX__W_NONE;
  px__interest(pa, fd, f);
  return true;
}

static void px__pa_cancel(px_loop *loop, px_op *target, px_op *cancel_op) {
  px__pa *pa = px__pa_of(loop);
  int32_t res;
  switch (px__pa_op(target)->where) {
    case PX__W_READY:
      px__unqueue(pa, target);
      px__complete(loop, target, PX_ECANCELED);
      res = 0;
      break;
    case PX__W_AIO:
      res = px__aio_cancel(loop, pa, target);
      break;
    default: /* its result is known: the callback is as good as queued */
      res = PX_ENOENT;
      break;
  }
  if (cancel_op != NULL)
    px__complete(loop, cancel_op, res);
}

static void px__pa_cancel_fd(px_loop *loop, px_fd fd) {
  px__pa *pa = px__pa_of(loop);
  px__aio_cancel_fd(loop, pa, (int)fd);
  px__wait_fail(loop, pa, (int)fd, PX_ECANCELED);
}

static void px__pa_cancel_all(px_loop *loop) {
  px__pa *pa = px__pa_of(loop);
  px__aio_cancel_all(loop, pa);
  for (size_t fd = 0; fd < pa->nfds; fd++)
    if (pa->fds[fd].used)
      px__wait_fail(loop, pa, (int)fd, PX_ECANCELED);
}

static void px__done_flush(px_loop *loop, px__pa *pa) {
  px__fifo list = pa->done;
  pa->done = (px__fifo){0};
  px_op *op;
  while ((op = px__fifo_pop(&list)) != NULL) {
    px__pa_op(op)->where = PX__W_NONE;
    px__complete(loop, op, px__pa_op(op)->res);
  }
}

static void px__run_list(px_loop *loop, px__pa *pa) {
  int fd;
  while ((fd = px__run_pop(pa)) >= 0)
    px__run_fd(loop, pa, fd);
}

static void px__event(px_loop *loop, px__pa *pa, const px__pev *ev) {
  if (ev->fd == pa->wake_r && (ev->ev & PX__IN)) {
    px__pa_wake_drain(pa->wake_r);
    px__wake_ack(loop);
    return;
  }
  if (ev->fd == px__aio_notify_fd(pa) && (ev->ev & PX__IN)) {
    px__aio_reap(loop, pa);
    return;
  }
  px__pfd *f = px__pa_fd(pa, ev->fd);
  if (f == NULL)
    return; /* closed since: epoll may still report it once */
  f->ready |= (uint8_t)(ev->ev & (PX__IN | PX__OUT));
  f->hup |= (ev->ev & PX__HUP) != 0;
  f->urgent |= (ev->ev & PX__PRI) != 0;
  px__run_fd(loop, pa, ev->fd);
}

static int px__ms(int64_t ns) {
  if (ns < 0)
    return -1;
  int64_t ms = (ns + 999999) / 1000000; /* never wake before the timer */
  return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

static int px__pa_poll(px_loop *loop, int64_t timeout_ns) {
  px__pa *pa = px__pa_of(loop);
  bool have = pa->done.head != NULL || pa->run_head >= 0;
  px__run_list(loop, pa);
  if (have)
    timeout_ns = 0;
  px__pev *evs;
  int n = px__poller_wait(pa->poller, px__ms(timeout_ns), &evs);
  for (int i = 0; i < n; i++)
    px__event(loop, pa, &evs[i]);
  px__run_list(loop, pa);
  px__done_flush(loop, pa);
  if (pa->guard_held) {
    px__sigpipe_release();
    pa->guard_held = false;
  }
  return n < 0 ? n : 0;
}

static void px__pa_wakeup(px_loop *loop) {
  px__pa_wake_post(px__pa_of(loop)->wake_w);
}

static int px__pa_adopt(px_loop *loop, px_fd fd) {
  (void)loop;
  struct stat st;
  if (fstat((int)fd, &st) < 0)
    return px__errno(errno);
  if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))
    return 0;
  int fl = fcntl((int)fd, F_GETFL);
  if (fl < 0)
    return px__errno(errno);
  if (!(fl & O_NONBLOCK) && fcntl((int)fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return px__errno(errno);
  return 0;
}

static int px__pa_init(px_loop *loop, const px_loop_opts *opts) {
  (void)opts;
  px__pa *pa = px__calloc(1, sizeof(*pa));
  if (pa == NULL)
    return PX_ENOMEM;
  pa->run_head = pa->run_tail = -1;
  int r = px__poller_new(&pa->poller);
  if (r < 0) {
    px__free(pa);
    return r;
  }
  r = px__pa_wake_fd(&pa->wake_r, &pa->wake_w);
  if (r == 0) {
    r = px__poller_watch_in(pa->poller, pa->wake_r);
    if (r < 0) {
      close(pa->wake_r);
      if (pa->wake_w != pa->wake_r)
        close(pa->wake_w);
    }
  }
  if (r < 0) {
    px__poller_free(pa->poller);
    px__free(pa);
    return r;
  }
  loop->bk = pa;
  return 0;
}

static void px__pa_destroy(px_loop *loop) {
  px__pa *pa = px__pa_of(loop);
  for (size_t fd = 0; fd < pa->nfds; fd++)
    if (pa->fds[fd].used)
      px__aio_release_fd(pa, &pa->fds[fd]);
  px__aio_free(pa);
  px__poller_free(pa->poller);
  close(pa->wake_r);
  if (pa->wake_w != pa->wake_r)
    close(pa->wake_w);
  if (pa->guard_held)
    px__sigpipe_release();
  px__free(pa->fds);
  px__free(pa);
  loop->bk = NULL;
}

/* px_fd_close: the core closes fd itself. */
static void px__pa_release(px_loop *loop, px_fd fd) {
  px__fd_release(px__pa_of(loop), (int)fd);
}

const px__backend px__backend_posix_aio = {
    .name = "posix_aio",
    .caps = 0, /* file I/O runs on libc's threads, not in the kernel */
    .init = px__pa_init,
    .destroy = px__pa_destroy,
    .adopt = px__pa_adopt,
    .release = px__pa_release,
    .submit = px__pa_submit,
    .cancel = px__pa_cancel,
    .cancel_fd = px__pa_cancel_fd,
    .cancel_all = px__pa_cancel_all,
    .poll = px__pa_poll,
    .wakeup = px__pa_wakeup,
};
