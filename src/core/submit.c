/*
 * Submit calls: the core validates, records the op and decides where it
 * waits (a handle's stream queue, the timer heap, or the backend).
 */
#include "internal.h"

/* Linux never moves more than this in one read or write. */
#define PX__MAX_IO 0x7ffff000u
#define PX__MAX_IOV 1024

int px_op_deadline(px_op *op, uint64_t ms) {
  if (op == NULL || ms > INT64_MAX / 1000000)
    return PX_EINVAL;
  if (op->state != PX__IDLE)
    return PX_EBUSY;
  op->flags |= PX__F_DL_SET;
  op->when = (int64_t)ms;
  return 0;
}

px_fd px_op_fd(const px_op *op) {
  if (op == NULL || op->kind != PX__OP_ACCEPT || op->result < 0)
    return PX_INVALID_FD;
  return (px_fd)op->off;
}

static int px__check(px_loop *loop, px_op *op) {
  if (loop == NULL || op == NULL)
    return PX_EINVAL;
  if (op->state != PX__IDLE)
    return PX_EBUSY;
  if (loop->closing)
    return PX_ESHUTDOWN;
  return 0;
}

static px__fdent *px__check_fd(px_loop *loop, px_fd fd) {
  px__fdent *e = px__fd_get(loop, fd);
  return (e != NULL && e->closing == NULL) ? e : NULL;
}

/* Fills op's common fields.  The one refusal left after it (no memory for
 * a timer) is asked first, so that a refused op is left as it was. */
static int px__fill(px_loop *loop, px_op *op, unsigned kind, px_fd fd, px_cb cb,
                    void *data) {
  if (((op->flags & PX__F_DL_SET) || kind == PX__OP_TIMEOUT) &&
      px__heap_room(loop) < 0)
    return PX_ENOMEM;
  op->cb = cb;
  op->data = data;
  op->kind = (uint8_t)kind;
  op->fd = fd;
  op->result = 0;
  op->next = NULL;
  op->heap = 0;
  return 0;
}

/* A deadline belongs to ops on a handle; a refused submit keeps it. */
static int px__deadline_ok(const px_op *op, unsigned kind) {
  return (op->flags & PX__F_DL_SET) && !px__kind_has_fd(kind) ? PX_EINVAL : 0;
}

/* Accepts op: arms its deadline (px__fill made room in the heap) and
 * counts it.  No way back after this. */
static void px__accept(px_loop *loop, px_op *op, uint16_t flags) {
  if (op->flags & PX__F_DL_SET) {
    int64_t ms = op->when, now = px__now_ns();
    /* Saturate: a deadline centuries away is no deadline, not overflow. */
    op->when =
        ms > (INT64_MAX - now) / 1000000 ? INT64_MAX : now + ms * 1000000;
    px__heap_push(loop, op);
    flags |= PX__F_DEADLINE;
  }
  op->flags = flags;
  loop->stats.submitted++;
}

/* Routes an accepted op: a stream op waits behind its handle's busy
 * direction, everything else starts now.  An op on a handle opened for
 * direct I/O is marked PX__F_EAGER here, the one place every op on a
 * handle passes. */
static int px__route(px_loop *loop, px_op *op, px__fdent *e) {
  if (e->direct)
    op->flags |= PX__F_EAGER;
  if (op->flags & PX__F_STREAM) {
    unsigned d = px__dir_of(op);
    if (e->busy[d]) {
      op->state = PX__QUEUED;
      px__oq_push(&e->waiting[d], op);
      return 0;
    }
    e->busy[d] = 1;
    if (!px__start(loop, op, e))
      e->busy[d] = 0; /* refused: op completes with the error, nothing waits */
    return 0;
  }
  px__start(loop, op, e);
  return 0;
}

static int px__io(px_loop *loop, px_op *op, unsigned kind, px_fd fd, void *buf,
                  size_t len, int64_t off, px_cb cb, void *data) {
  int r = px__check(loop, op);
  if (r < 0)
    return r;
  if (buf == NULL || len == 0 || off < PX_CUR)
    return PX_EINVAL;
  px__fdent *e = px__check_fd(loop, fd);
  if (e == NULL)
    return PX_EBADF;
  bool vec = kind == PX__OP_READV || kind == PX__OP_WRITEV;
  if (vec && len > PX__MAX_IOV)
    return PX_EINVAL;
  bool write =
      kind == PX__OP_WRITE || kind == PX__OP_WRITEV || kind == PX__OP_SEND;
  /* Pipes and sockets are streams whatever offset is given, and the offset
   * is dropped (io_uring's positional calls refuse one there with ESPIPE,
   * where read() and WriteFile ignore it); a regular file is a stream only
   * at PX_CUR, and for writes when it appends: each lands whole at its
   * end, in submission order, though POSIX AIO and IOCP write a vector one
   * segment at a time.  Writes to a stream other than send() may raise
   * SIGPIPE. */
  bool stream = e->stream || off == PX_CUR || (write && e->append);
  bool sigpipe = e->stream && (kind == PX__OP_WRITE || kind == PX__OP_WRITEV);
  bool curpos = e->direct && off == PX_CUR; /* direct: never a stream */
  uint16_t flags =
      (uint16_t)((stream ? PX__F_STREAM : 0) | (write ? PX__F_WRITEQ : 0) |
                 (sigpipe ? PX__F_SIGPIPE : 0) | (curpos ? PX__F_CURPOS : 0));
  r = px__fill(loop, op, kind, fd, cb, data);
  if (r < 0)
    return r;
  op->buf = buf;
  op->len = (uint32_t)(len > PX__MAX_IO ? PX__MAX_IO : len);
  op->off = e->stream ? PX_CUR : off;
  px__accept(loop, op, flags);
  return px__route(loop, op, e);
}

int px_read(px_loop *loop, px_op *op, px_fd fd, void *buf, size_t len,
            int64_t off, px_cb cb, void *data) {
  return px__io(loop, op, PX__OP_READ, fd, buf, len, off, cb, data);
}

int px_write(px_loop *loop, px_op *op, px_fd fd, const void *buf, size_t len,
             int64_t off, px_cb cb, void *data) {
  return px__io(loop, op, PX__OP_WRITE, fd, (void *)buf, len, off, cb, data);
}

static int px__iov_ok(const px_iov *iov, int iovcnt) {
  if (iov == NULL || iovcnt <= 0 || iovcnt > PX__MAX_IOV)
    return PX_EINVAL;
  for (int i = 0; i < iovcnt; i++)
    if (iov[i].base == NULL && iov[i].len != 0)
      return PX_EINVAL;
  return 0;
}

int px_readv(px_loop *loop, px_op *op, px_fd fd, const px_iov *iov, int iovcnt,
             int64_t off, px_cb cb, void *data) {
  int r = px__iov_ok(iov, iovcnt);
  if (r < 0)
    return r;
  return px__io(loop, op, PX__OP_READV, fd, (void *)iov, (size_t)iovcnt, off,
                cb, data);
}

int px_writev(px_loop *loop, px_op *op, px_fd fd, const px_iov *iov, int iovcnt,
              int64_t off, px_cb cb, void *data) {
  int r = px__iov_ok(iov, iovcnt);
  if (r < 0)
    return r;
  return px__io(loop, op, PX__OP_WRITEV, fd, (void *)iov, (size_t)iovcnt, off,
                cb, data);
}

int px_recv(px_loop *loop, px_op *op, px_fd fd, void *buf, size_t len, px_cb cb,
            void *data) {
  return px__io(loop, op, PX__OP_RECV, fd, buf, len, PX_CUR, cb, data);
}

int px_recv_pooled_ex(px_loop *loop, px_op *op, px_fd fd, px_bufpool *pool,
                      unsigned flags, px_cb cb, void *data) {
  int r = px__check(loop, op);
  if (r < 0)
    return r;
  if (pool == NULL || pool->loop != loop || (flags & ~PX_RECV_MULTISHOT))
    return PX_EINVAL;
  if ((flags & PX_RECV_MULTISHOT) && (op->flags & PX__F_DL_SET))
    return PX_EINVAL; /* on every backend, multishot or not */
  /* Where the loop has no multishot (the backend, or this kernel), each
   * submission delivers once. */
  bool multi =
      (flags & PX_RECV_MULTISHOT) && (px_loop_caps(loop) & PX_CAP_MULTISHOT);
  px__fdent *e = px__check_fd(loop, fd);
  if (e == NULL)
    return PX_EBADF;
  r = px__fill(loop, op, PX__OP_RECV_POOLED, fd, cb, data);
  if (r < 0)
    return r;
  op->buf = pool;
  op->len = pool->size > PX__MAX_IO ? PX__MAX_IO : pool->size;
  op->off = 0;
  if (multi)
    op->when = 0; /* no deliveries waiting */
  px__accept(loop, op,
             (uint16_t)(PX__F_STREAM | PX__F_KIND | (multi ? PX__F_MULTI : 0)));
  pool->ops++; /* until its last completion is popped */
  if (!e->stream) {
    /* A regular file: recv() answers ENOTSOCK.  Said here, on every
     * backend: io_uring, with the pool's ring short, would first try a
     * poll the file cannot do and end in a worker (EAGAIN, or EBADFD for
     * multishot). */
    px__heap_remove(loop, op);
    px__ready_push(loop, op, PX_ENOTSOCK);
    return 0;
  }
  return px__route(loop, op, e);
}

int px_recv_pooled(px_loop *loop, px_op *op, px_fd fd, px_bufpool *pool,
                   px_cb cb, void *data) {
  return px_recv_pooled_ex(loop, op, fd, pool, 0, cb, data);
}

void *px_op_buf(const px_op *op) {
  if (op == NULL || op->kind != PX__OP_RECV_POOLED || op->result <= 0)
    return NULL;
  return (void *)(uintptr_t)op->off;
}

int px_op_more(const px_op *op) {
  return op != NULL && (op->flags & PX__F_MORE) != 0;
}

int px_send(px_loop *loop, px_op *op, px_fd fd, const void *buf, size_t len,
            px_cb cb, void *data) {
  return px__io(loop, op, PX__OP_SEND, fd, (void *)buf, len, PX_CUR, cb, data);
}

/* Ops on a handle that carry no buffer: accept, connect, fsync. */
static int px__handle_op(px_loop *loop, px_op *op, unsigned kind, px_fd fd,
                         void *arg, uint16_t flags, px_cb cb, void *data) {
  int r = px__check(loop, op);
  if (r < 0)
    return r;
  px__fdent *e = px__check_fd(loop, fd);
  if (e == NULL)
    return PX_EBADF;
  /* POSIX aio_fsync and Windows' FlushFileBuffers need a handle open for
   * writing; Linux's fsync does not.  One answer everywhere: refused. */
  if (kind == PX__OP_FSYNC && px__os_writable(fd) == 0)
    return PX_EBADF;
  r = px__fill(loop, op, kind, fd, cb, data);
  if (r < 0)
    return r;
  op->buf = arg;
  op->len = 0;
  op->off = kind == PX__OP_ACCEPT ? PX_INVALID_FD : 0;
  px__accept(loop, op, flags);
  return px__route(loop, op, e);
}

int px_accept(px_loop *loop, px_op *op, px_fd fd, px_cb cb, void *data) {
  return px__handle_op(loop, op, PX__OP_ACCEPT, fd, NULL, PX__F_KIND, cb, data);
}

int px_connect(px_loop *loop, px_op *op, px_fd fd, const px_addr *addr,
               px_cb cb, void *data) {
  if (addr == NULL || addr->len == 0 || addr->len > sizeof(addr->storage))
    return PX_EINVAL;
  return px__handle_op(loop, op, PX__OP_CONNECT, fd, (void *)addr, 0, cb, data);
}

int px_fsync(px_loop *loop, px_op *op, px_fd fd, unsigned flags, px_cb cb,
             void *data) {
  if (flags & ~PX_FSYNC_DATA)
    return PX_EINVAL;
  uint16_t f = (flags & PX_FSYNC_DATA) ? PX__F_DATASYNC : 0;
  return px__handle_op(loop, op, PX__OP_FSYNC, fd, NULL, f, cb, data);
}

static void px__cancel_queue(px_loop *loop, px__oq *q) {
  px_op *op;
  while ((op = px__oq_pop(q)) != NULL) {
    px__heap_remove(loop, op);
    px__ready_push(loop, op, PX_ECANCELED);
  }
}

int px_close(px_loop *loop, px_op *op, px_fd fd, px_cb cb, void *data) {
  int r = px__check(loop, op);
  if (r == 0)
    r = px__deadline_ok(op, PX__OP_CLOSE);
  if (r < 0)
    return r;
  px__fdent *e = px__check_fd(loop, fd);
  if (e == NULL)
    return PX_EBADF;
  r = px__fill(loop, op, PX__OP_CLOSE, fd, cb, data);
  if (r < 0)
    return r;
  op->buf = NULL;
  op->len = 0;
  px__accept(loop, op, 0);
  op->state = PX__CLOSING;
  e->closing = op;
  px__cancel_queue(loop, &e->waiting[0]);
  px__cancel_queue(loop, &e->waiting[1]);
  if (e->started == 0)
    px__close_start(loop, e);
  else
    PX__BK(loop)->cancel_fd(loop, fd);
  return 0;
}

int px_timeout(px_loop *loop, px_op *op, uint64_t ms, px_cb cb, void *data) {
  int r = px__check(loop, op);
  if (r < 0)
    return r;
  if (ms > INT64_MAX / 2000000 || px__deadline_ok(op, PX__OP_TIMEOUT) < 0)
    return PX_EINVAL;
  r = px__fill(loop, op, PX__OP_TIMEOUT, PX_INVALID_FD, cb, data);
  if (r < 0)
    return r;
  op->len = loop->timer_seq++;
  op->when = px__now_ns() + (int64_t)ms * 1000000;
  op->flags = 0;
  px__heap_push(loop, op); /* px__fill made room */
  op->state = PX__TIMER;
  loop->stats.submitted++;
  return 0;
}

int px_nop(px_loop *loop, px_op *op, px_cb cb, void *data) {
  int r = px__check(loop, op);
  if (r == 0)
    r = px__deadline_ok(op, PX__OP_NOP);
  if (r < 0)
    return r;
  r = px__fill(loop, op, PX__OP_NOP, PX_INVALID_FD, cb, data);
  if (r < 0)
    return r;
  px__accept(loop, op, 0);
  px__start(loop, op, NULL);
  return 0;
}

/* The target's fate: 0 when a cancellation reached it, PX_ENOENT when it
 * is not in flight, PX_EALREADY when it can no longer be stopped. */
static int32_t px__cancel_target(px_loop *loop, px_op *op, px_op *target) {
  switch (target->state) {
    case PX__TIMER:
      px__heap_remove(loop, target);
      px__ready_push(loop, target, PX_ECANCELED);
      return 0;
    case PX__QUEUED:
      px__oq_remove(&px__fd_get(loop, target->fd)->waiting[px__dir_of(target)],
                    target);
      px__heap_remove(loop, target);
      px__ready_push(loop, target, PX_ECANCELED);
      return 0;
    case PX__STARTED:
      if (target->kind == PX__OP_CANCEL || target->kind == PX__OP_CLOSE)
        return PX_EALREADY;
      op->state = PX__STARTED;
      PX__BK(loop)->cancel(loop, target, op);
      return 1; /* the backend completes op */
    case PX__POSTED:
    case PX__CLOSING:
      return PX_EALREADY;
    case PX__READY: /* a multishot op ended with deliveries to come */
      return (target->flags & (PX__F_INREADY | PX__F_MORE)) ? PX_EALREADY
                                                            : PX_ENOENT;
    default:
      return PX_ENOENT;
  }
}

void px__cancel_op(px_loop *loop, px_op *target) {
  switch (target->state) {
    case PX__TIMER:
    case PX__QUEUED:
      px__cancel_target(loop, NULL, target);
      break;
    case PX__STARTED:
      if (target->kind != PX__OP_CANCEL && target->kind != PX__OP_CLOSE)
        PX__BK(loop)->cancel(loop, target, NULL);
      break;
    default:
      break;
  }
}

int px_cancel(px_loop *loop, px_op *op, px_op *target, px_cb cb, void *data) {
  int r = px__check(loop, op);
  if (r < 0)
    return r;
  if (target == NULL || target == op || px__deadline_ok(op, PX__OP_CANCEL))
    return PX_EINVAL;
  r = px__fill(loop, op, PX__OP_CANCEL, PX_INVALID_FD, cb, data);
  if (r < 0)
    return r;
  op->buf = target;
  px__accept(loop, op, 0);
  int32_t res = px__cancel_target(loop, op, target);
  if (res <= 0)
    px__ready_push(loop, op, res);
  return 0;
}
