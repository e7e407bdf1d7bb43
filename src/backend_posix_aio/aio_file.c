/*
 * File I/O of the posix_aio backend: aio_read, aio_write, aio_fsync,
 * aio_error, aio_return, aio_cancel.
 *
 * Notes on POSIX AIO, and on glibc's in particular:
 *
 * - Completion wakeups use SIGEV_THREAD: libc runs px__aio_notify on a
 *   thread of its own, which writes the loop's notification fd; the loop
 *   then reaps every finished aiocb with aio_error.  The alternatives both
 *   send a signal to the process — SIGEV_SIGNAL to a signalfd needs that
 *   signal blocked in every thread of the program, and a handler plus a
 *   self-pipe makes calls in the program's own threads fail with EINTR —
 *   which a library must not impose.  Measured here (4 KiB reads from the
 *   page cache, one at a time, 20,000 each): SIGEV_THREAD 82-129 us per
 *   read, SIGEV_SIGNAL + signalfd 93-152 us, SIGEV_NONE + aio_suspend
 *   120-124 us; glibc's hand-off to its worker thread dominates all three.
 * - A notification can run after the loop is freed (aio_error reports the
 *   result before libc gets to the notification).  So it touches only a
 *   small channel, not the loop: one reference per request in flight plus
 *   one for the loop, the last one closes the fd and frees it (through
 *   px's allocator, on libc's thread: a replaced allocator must be
 *   thread-safe, as it already must be for loops on several threads).
 *   libc notifies each request once, also when it is cancelled — unless it
 *   cannot create the notification thread, and then says nothing.  So the
 *   loop does not rely on the wakeup alone: while requests are in flight
 *   it checks them at every poll and waits at most 100 ms at a time.
 * - glibc runs the requests on one descriptor one after the other, on one
 *   worker thread.  For parallel requests on one file the backend dup()s
 *   the descriptor ("lanes", up to 32 per file, made when a request finds
 *   every lane busy and closed with the handle) and raises glibc's thread
 *   limit with aio_init (a GNU extension; it only counts before the
 *   process's first AIO request).
 * - POSIX AIO has no vectored request: readv/writev run their segments
 *   one after the other, and a short segment ends the op (a short read or
 *   write, as preadv would report it).
 * - There is no "current position" request either: an op at PX_CUR reads
 *   the handle's position with lseek when it starts and moves it when it
 *   completes (to the end of the file after an O_APPEND write).  The core
 *   runs one such op per direction at a time.
 * - aiocbs are large (160+ bytes), so they live in a slab made at the
 *   first file op, not in px_op.  An op that finds the slab full waits in
 *   a FIFO for a free aiocb; so does one that libc refuses with EAGAIN
 *   while others are in flight, also between two segments of a vector.
 * - fsync is aio_fsync(O_SYNC or O_DSYNC) on any handle (libc answers
 *   EINVAL for a socket or pipe, as fsync(2) does).  Like px_fsync on
 *   every backend, it covers the writes completed before it was
 *   submitted, not ones still in flight.
 * - Cancellation is aio_cancel: a request libc has not started completes
 *   with PX_ECANCELED; one it runs finishes with its own result.  So a
 *   deadline of 0 on a file read usually times out here, where io_uring,
 *   which tries a page-cache read at once, usually succeeds.
 */
#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "pa.h"

#define PX__LANES 32
#define PX__AIO_SLOTS 256
#define PX__MAX_IO 0x7ffff000u

struct px__lanes {
  int fd[PX__LANES]; /* [0] is the handle itself */
  uint16_t busy[PX__LANES];
  uint8_t n;
};

/* What a libc notification thread may touch. */
typedef struct px__chan {
  atomic_uint refs;
  int r, w;
} px__chan;

typedef struct px__aslot {
  struct aiocb cb;
  px_op *op;
  uint32_t at; /* index in busy */
} px__aslot;

struct px__aio {
  px__chan *chan;
  px__aslot *slots;
  uint32_t *free_; /* stack of free slot indices */
  uint32_t *busy;  /* slots in flight */
  uint32_t nfree, nbusy;
  px__fifo waiting; /* ops waiting for an aiocb */
};

/* ---- The notification channel. ----------------------------------------- */

static void px__chan_unref(px__chan *c) {
  if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
    return;
  close(c->r);
  if (c->w != c->r)
    close(c->w);
  px__free(c);
}

static void px__aio_notify(union sigval v) {
  px__chan *c = v.sival_ptr;
  px__pa_wake_post(c->w);
  px__chan_unref(c);
}

/* ---- Setup. ------------------------------------------------------------ */

static void px__aio_tune(void) {
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  /* Enough worker threads for 32 parallel requests on each of two files;
   * idle workers exit after a second. */
  struct aioinit init = {.aio_threads = 64, .aio_num = 64, .aio_idle_time = 1};
  aio_init(&init);
#endif
}

static int px__aio_make(px__pa *pa) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, px__aio_tune);
  px__aio *a = px__calloc(1, sizeof(*a));
  px__chan *c = px__calloc(1, sizeof(*c));
  if (a != NULL) {
    a->slots = px__calloc(PX__AIO_SLOTS, sizeof(*a->slots));
    a->free_ = px__calloc(PX__AIO_SLOTS, sizeof(*a->free_));
    a->busy = px__calloc(PX__AIO_SLOTS, sizeof(*a->busy));
  }
  int r = PX_ENOMEM;
  if (a != NULL && c != NULL && a->slots && a->free_ && a->busy)
    r = px__pa_wake_fd(&c->r, &c->w);
  if (r == 0) {
    r = px__poller_watch_in(pa->poller, c->r);
    if (r < 0) {
      close(c->r);
      if (c->w != c->r)
        close(c->w);
    }
  }
  if (r < 0) {
    if (a != NULL) {
      px__free(a->slots);
      px__free(a->free_);
      px__free(a->busy);
    }
    px__free(a);
    px__free(c);
    return r;
  }
  atomic_init(&c->refs, 1);
  a->chan = c;
  for (uint32_t i = 0; i < PX__AIO_SLOTS; i++)
    a->free_[i] = PX__AIO_SLOTS - 1 - i;
  a->nfree = PX__AIO_SLOTS;
  pa->aio = a;
  return 0;
}

void px__aio_free(px__pa *pa) {
  px__aio *a = pa->aio;
  if (a == NULL)
    return;
  px__poller_forget(pa->poller, a->chan->r);
  px__chan_unref(a->chan);
  px__free(a->slots);
  px__free(a->free_);
  px__free(a->busy);
  px__free(a);
  pa->aio = NULL;
}

int px__aio_notify_fd(const px__pa *pa) {
  return pa->aio != NULL ? pa->aio->chan->r : -1;
}

uint32_t px__aio_busy(const px__pa *pa) {
  return pa->aio != NULL ? pa->aio->nbusy : 0;
}

/* ---- Lanes: descriptors of one file that libc runs in parallel. -------- */

static int px__lane_pick(px__pfd *f, int fd, uint8_t *lane) {
  *lane = 0;
  if (f->lanes == NULL) {
    if (f->aio_busy == 0)
      return fd;
    f->lanes = px__calloc(1, sizeof(*f->lanes));
    if (f->lanes == NULL)
      return fd; /* serial, but it works */
    f->lanes->fd[0] = fd;
    f->lanes->busy[0] = f->aio_busy;
    f->lanes->n = 1;
  }
  px__lanes *l = f->lanes;
  uint8_t best = 0;
  for (uint8_t i = 0; i < l->n; i++) {
    if (l->busy[i] == 0) {
      *lane = i;
      return l->fd[i];
    }
    if (l->busy[i] < l->busy[best])
      best = i;
  }
  if (l->n < PX__LANES) {
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (d >= 0) {
      l->fd[l->n] = d;
      l->busy[l->n] = 0;
      *lane = l->n++;
      return d;
    }
  }
  *lane = best;
  return l->fd[best];
}

static void px__lane_take(px__pfd *f, uint8_t lane) {
  f->aio_busy++;
  if (f->lanes != NULL)
    f->lanes->busy[lane]++;
}

static void px__lane_drop(px__pfd *f, uint8_t lane) {
  f->aio_busy--;
  if (f->lanes != NULL)
    f->lanes->busy[lane]--;
}

void px__aio_release_fd(px__pa *pa, px__pfd *f) {
  (void)pa;
  if (f->lanes == NULL)
    return;
  for (uint8_t i = 1; i < f->lanes->n; i++)
    close(f->lanes->fd[i]);
  px__free(f->lanes);
  f->lanes = NULL;
}

/* ---- Starting requests. ------------------------------------------------ */

static bool px__is_vec(const px_op *op) {
  return op->kind == PX__OP_READV || op->kind == PX__OP_WRITEV;
}

/* The next segment of op to transfer; false when none is left. */
static bool px__segment(px_op *op, void **buf, size_t *len) {
  px__paop *po = px__pa_op(op);
  if (!px__is_vec(op)) {
    *buf = op->buf;
    *len = op->len;
    return true;
  }
  const px_iov *iov = op->buf;
  while (po->seg < op->len && iov[po->seg].len == 0)
    po->seg++;
  if (po->seg >= op->len || po->done >= PX__MAX_IO)
    return false;
  *buf = iov[po->seg].base;
  *len = iov[po->seg].len;
  if (*len > PX__MAX_IO - po->done)
    *len = PX__MAX_IO - po->done;
  return true;
}

static int px__aio_call(px_op *op, struct aiocb *cb) {
  switch (op->kind) {
    case PX__OP_READ:
    case PX__OP_READV:
      return aio_read(cb);
    case PX__OP_WRITE:
    case PX__OP_WRITEV:
      return aio_write(cb);
    default:   /* PX__OP_FSYNC */
#ifdef O_DSYNC /* POSIX's optional synchronized I/O */
      return aio_fsync((op->flags & PX__F_DATASYNC) ? O_DSYNC : O_SYNC, cb);
#else
      return aio_fsync(O_SYNC, cb);
#endif
  }
}

/* Hands op's next request to libc in slot i.  0, 1 when op has nothing
 * left to transfer, or a PX_E* code. */
static int px__aio_start(px__pa *pa, px_op *op, uint32_t i) {
  px__aio *a = pa->aio;
  px__paop *po = px__pa_op(op);
  int fd = (int)op->fd;
  px__pfd *f = px__pa_fd(pa, fd);
  void *buf = NULL;
  size_t len = 0;
  if (op->kind != PX__OP_FSYNC && !px__segment(op, &buf, &len))
    return 1;
  px__aslot *s = &a->slots[i];
  memset(&s->cb, 0, sizeof(s->cb));
  s->cb.aio_fildes = px__lane_pick(f, fd, &po->lane);
  s->cb.aio_buf = buf;
  s->cb.aio_nbytes = len;
  s->cb.aio_offset =
      (off_t)((op->off == PX_CUR ? po->pos : op->off) + (int64_t)po->done);
  s->cb.aio_sigevent.sigev_notify = SIGEV_THREAD;
  s->cb.aio_sigevent.sigev_notify_function = px__aio_notify;
  s->cb.aio_sigevent.sigev_value.sival_ptr = a->chan;
  atomic_fetch_add_explicit(&a->chan->refs, 1, memory_order_relaxed);
  if (px__aio_call(op, &s->cb) < 0) {
    int err = errno;
    atomic_fetch_sub_explicit(&a->chan->refs, 1, memory_order_relaxed);
    return px__errno(err);
  }
  px__lane_take(f, po->lane);
  s->op = op;
  s->at = a->nbusy;
  a->busy[a->nbusy++] = i;
  po->slot = i;
  po->where = PX__W_AIO;
  return 0;
}

/* Ops wait for an aiocb in order; a refused start waits too while other
 * requests are in flight to free resources. */
static void px__aio_wait(px__aio *a, px_op *op) {
  px__pa_op(op)->where = PX__W_SLOT;
  px__fifo_push(&a->waiting, op);
}

int px__aio_submit(px_loop *loop, px__pa *pa, px_op *op) {
  if (pa->aio == NULL) {
    int r = px__aio_make(pa);
    if (r < 0)
      return r;
  }
  px__aio *a = pa->aio;
  if (px__pa_fd_make(loop, pa, (int)op->fd) == NULL) /* holds the lanes */
    return PX_ENOMEM;
  px__paop *po = px__pa_op(op);
  if (op->off == PX_CUR && op->kind != PX__OP_FSYNC) {
    off_t pos = lseek((int)op->fd, 0, SEEK_CUR);
    if (pos < 0)
      return px__errno(errno);
    po->pos = pos;
  }
  if (a->waiting.head != NULL || a->nfree == 0) {
    px__aio_wait(a, op);
    return 0;
  }
  uint32_t i = a->free_[--a->nfree];
  int r = px__aio_start(pa, op, i);
  if (r == 0)
    return 0;
  a->free_[a->nfree++] = i;
  if (r == 1) {
    px__pa_done(pa, op, 0); /* a vector of empty segments */
    return 0;
  }
  if (r == PX_EAGAIN && a->nbusy > 0) {
    px__aio_wait(a, op);
    return 0;
  }
  return r;
}

/* ---- Completions. ------------------------------------------------------ */

/* Moves the handle's position past what an op at PX_CUR moved. */
static void px__pos_advance(px_op *op, int64_t moved) {
  int fd = (int)op->fd;
  bool write = op->kind == PX__OP_WRITE || op->kind == PX__OP_WRITEV;
  int fl = write ? fcntl(fd, F_GETFL) : 0;
  if (fl >= 0 && (fl & O_APPEND))
    lseek(fd, 0, SEEK_END);
  else
    lseek(fd, (off_t)(px__pa_op(op)->pos + moved), SEEK_SET);
}

static void px__slot_free(px__aio *a, uint32_t i) {
  px__aslot *s = &a->slots[i];
  uint32_t last = a->busy[--a->nbusy];
  a->busy[s->at] = last;
  a->slots[last].at = s->at;
  s->op = NULL;
  a->free_[a->nfree++] = i;
}

/* A request of op finished with err (0 or an errno) and n bytes. */
static void px__aio_finish(px_loop *loop, px__pa *pa, px_op *op, int err,
                           ssize_t n) {
  px__paop *po = px__pa_op(op);
  px__aio *a = pa->aio;
  px__lane_drop(px__pa_fd(pa, (int)op->fd), po->lane);
  px__slot_free(a, po->slot);
  po->where = PX__W_NONE;
  int32_t res;
  if (err != 0) {
    res = po->done > 0 ? (int32_t)po->done : px__errno(err);
  } else if (px__is_vec(op)) {
    const px_iov *iov = op->buf;
    bool whole = (size_t)n == iov[po->seg].len;
    po->done += (uint64_t)n;
    po->seg++;
    if (whole && !po->stop && n > 0) {
      uint32_t i = a->free_[--a->nfree];
      int r = px__aio_start(pa, op, i);
      if (r == 0)
        return;
      a->free_[a->nfree++] = i;
      if (r == PX_EAGAIN && a->nbusy > 0) {
        px__aio_wait(a, op); /* libc is short of resources for a moment */
        return;
      }
      if (r < 0 && po->done == 0) {
        px__complete(loop, op, r);
        return;
      }
    }
    res = (int32_t)po->done;
  } else {
    res = (int32_t)n;
  }
  if (op->off == PX_CUR && res > 0)
    px__pos_advance(op, res);
  px__complete(loop, op, res);
}

static void px__aio_start_waiting(px_loop *loop, px__pa *pa) {
  px__aio *a = pa->aio;
  while (a->waiting.head != NULL && a->nfree > 0) {
    px_op *op = a->waiting.head;
    uint32_t i = a->free_[--a->nfree];
    int r = px__aio_start(pa, op, i);
    if (r != 0)
      a->free_[a->nfree++] = i;
    if (r == PX_EAGAIN && a->nbusy > 0)
      return; /* still short of resources: wait for the next completion */
    px__fifo_pop(&a->waiting);
    if (r != 0) {
      px__pa_op(op)->where = PX__W_NONE;
      px__complete(loop, op, r == 1 ? 0 : r);
    }
  }
}

void px__aio_reap(px_loop *loop, px__pa *pa, bool drain) {
  px__aio *a = pa->aio;
  /* Drain first: a request finishing after the scan below writes again. */
  if (drain)
    px__pa_wake_drain(a->chan->r);
  for (uint32_t k = 0; k < a->nbusy;) {
    px__aslot *s = &a->slots[a->busy[k]];
    int err = aio_error(&s->cb);
    if (err == EINPROGRESS) {
      k++;
      continue;
    }
    ssize_t n = aio_return(&s->cb);
    /* Finishing frees the slot, which moves the last busy one to k. */
    px__aio_finish(loop, pa, s->op, err, n);
  }
  px__aio_start_waiting(loop, pa);
}

/* ---- Cancellation. ----------------------------------------------------- */

int32_t px__aio_cancel(px_loop *loop, px__pa *pa, px_op *op) {
  px__aio *a = pa->aio;
  px__paop *po = px__pa_op(op);
  if (po->where == PX__W_SLOT) {
    px__fifo_remove(&a->waiting, op);
    po->where = PX__W_NONE;
    /* A vector op between segments keeps what it moved. */
    px__complete(loop, op, po->done > 0 ? (int32_t)po->done : PX_ECANCELED);
    return 0;
  }
  po->stop = 1; /* a vector op ends after its current segment */
  struct aiocb *cb = &a->slots[po->slot].cb;
  switch (aio_cancel(cb->aio_fildes, cb)) {
    case AIO_CANCELED:
      return 0;
    case AIO_ALLDONE: /* reaped at the next poll: as good as queued */
      return PX_ENOENT;
    default: /* running: a vector op still stops after this segment */
      return px__is_vec(op) ? 0 : PX_EALREADY;
  }
}

static void px__aio_cancel_where(px_loop *loop, px__pa *pa, bool all, int fd) {
  px__aio *a = pa->aio;
  if (a == NULL)
    return;
  for (uint32_t k = 0; k < a->nbusy; k++) {
    px_op *op = a->slots[a->busy[k]].op;
    if (all || (int)op->fd == fd)
      px__aio_cancel(loop, pa, op);
  }
  px__fifo keep = {0}, list = a->waiting;
  a->waiting = (px__fifo){0};
  px_op *op;
  while ((op = px__fifo_pop(&list)) != NULL) {
    if (all || (int)op->fd == fd) {
      px__pa_op(op)->where = PX__W_NONE;
      px__complete(loop, op, PX_ECANCELED);
    } else {
      px__fifo_push(&keep, op);
    }
  }
  /* Completions above may have queued new ops behind the kept ones. */
  while ((op = px__fifo_pop(&a->waiting)) != NULL)
    px__fifo_push(&keep, op);
  a->waiting = keep;
}

void px__aio_cancel_fd(px_loop *loop, px__pa *pa, int fd) {
  px__aio_cancel_where(loop, pa, false, fd);
}

void px__aio_cancel_all(px_loop *loop, px__pa *pa) {
  px__aio_cancel_where(loop, pa, true, -1);
}
