/*
 * File I/O of the posix_aio backend: aio_read, aio_write, aio_fsync,
 * aio_suspend, aio_error, aio_return, aio_cancel.
 *
 * Notes on POSIX AIO, and on glibc's in particular:
 *
 * - Completions.  Each loop that does file I/O has one completion thread.
 *   The loop hands it ops through a queue; the thread owns the aiocbs,
 *   starts the requests, sleeps in aio_suspend until one finishes, and
 *   hands finished ops back through a second queue, writing the loop's
 *   notification fd once per batch.  Requests carry no notification of
 *   their own (SIGEV_NONE).  The other ways to be told cost more or intrude:
 *   SIGEV_THREAD makes libc create a thread for every completion (measured
 *   here: about 85 us of CPU per 4 KiB read, two thirds of it creating and
 *   freeing that thread; 13,000 reads/s at queue depth 32 on two cores),
 *   and SIGEV_SIGNAL sends a signal to the process, which needs a handler
 *   or a signal blocked in every thread of the program.
 * - aio_suspend waits only for the requests it is given.  To start a new
 *   request while the thread sleeps, the loop writes one byte to a pipe on
 *   which the thread keeps an aio_read outstanding (the "sentinel"): that
 *   request finishing ends the aio_suspend.  The sentinel occupies one of
 *   libc's AIO worker threads while the loop has file I/O in flight; the
 *   thread ends it before it goes idle, so idle loops hold none.  libc's
 *   workers are limited (glibc: 20, raised to 256 below when px makes the
 *   process's first AIO request), which bounds how many loops can have
 *   file I/O in flight at once.  Only the completion thread touches
 *   aiocbs, so a slot is never reused while aio_suspend may look at it.
 * - glibc runs the requests on one descriptor one after the other, on one
 *   worker thread, and a cancelled first request can leave the next one
 *   on that descriptor queued but never run (glibc 2.36).  So each
 *   descriptor carries at most one request: for parallel requests on one
 *   file the backend dup()s the descriptor ("lanes", up to 32 per file,
 *   made on demand and closed with the handle); a 33rd op waits on the
 *   loop side for a lane to free.  Lanes stay open while their handle is
 *   known, so those of the whole process are held to a quarter of the
 *   soft RLIMIT_NOFILE: with 1000 files each read in parallel once, 31,000
 *   descriptors would otherwise leave the program none (its accepts fail
 *   with EMFILE).  Closing a lane, like any close of a file's descriptor,
 *   drops the process's fcntl (F_SETLK) record locks on that file: when
 *   px lets go of a handle that had lanes (px_close, px_fd_release,
 *   px_loop_free) such locks go with it; OFD locks and flock() stay.  On glibc
 * the worker-thread limit is raised with aio_init (a GNU extension, so not in
 * the plain-POSIX poll build).  On page-cache reads parallel requests cost more
 * in thread hand-offs than they gain; on a device they are what gives the
 * depth.
 * - POSIX AIO has no vectored request: readv/writev run their segments
 *   one after the other, and a short segment ends the op (a short read or
 *   write, as preadv would report it).
 * - There is no "current position" request either: an op at PX_CUR reads
 *   the handle's position with lseek when it starts and moves it when it
 *   completes (to the end of the file after an O_APPEND write).  The core
 *   runs one such op per direction at a time; a read and a write at
 *   PX_CUR in flight together both start from the same position (io_uring
 *   races there too).
 * - aiocbs are large (160+ bytes), so they live in a slab made with the
 *   thread, not in px_op.  Ops beyond the slab wait in the queue; a request
 *   libc refuses with EAGAIN waits for the next completion (also between
 *   two segments of a vector) and fails only when nothing is in flight.
 * - fsync is aio_fsync(O_SYNC or O_DSYNC) on any handle (libc answers
 *   EINVAL for a socket or pipe, as fsync(2) does).  Like px_fsync on
 *   every backend, it covers the writes completed before it was
 *   submitted, not ones still in flight.
 * - Page-cache reads first (Linux).  A read or readv first tries
 *   preadv2(RWF_NOWAIT) on the loop thread: the kernel copies what the
 *   page cache holds and answers EAGAIN instead of waiting for the
 *   device.  When that gives every byte asked for, the op is done without
 *   the completion thread (its result is reported at the next poll, as
 *   every result known at once); anything less (a miss, part of the range
 *   cached, the end of the file) and the op goes to AIO whole, as if the
 *   attempt had not been made.  This is what io_uring does inside the
 *   kernel, and for cached reads it is the difference between a system
 *   call and two thread hand-offs (measured: bench/RESULTS.md, case 4).
 *   Not tried: on a handle opened O_DIRECT (a direct read would wait for
 *   the device on the loop thread), where the kernel refuses the flag
 *   (EOPNOTSUPP, ENOSYS: the handle is not asked again), and for
 *   writes (a buffered write may wait on dirty-page throttling).  The
 *   O_DIRECT check is made once per handle: a flag changed later with
 *   fcntl is not seen.
 * - Cancellation: an op still in the queue completes with PX_ECANCELED at
 *   once; for a started one the thread calls aio_cancel, and a request libc
 *   has not begun completes with PX_ECANCELED while a running one finishes
 *   with its own result.  A read served from the page cache has its result
 *   already (cancel answers PX_ENOENT), so a deadline of 0 on a cached
 *   read succeeds, as on io_uring; an uncached one usually times out.
 */
#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#if defined(__linux__) && defined(_GNU_SOURCE)
#include <sys/uio.h>
#if defined(RWF_NOWAIT)
#define PX__NOWAIT_READS 1
#endif
#endif

#include "pa.h"

#define PX__LANES 32
#define PX__AIO_SLOTS 256
#define PX__MAX_IO 0x7ffff000u

struct px__lanes {
  int fd[PX__LANES]; /* [0] is the handle itself */
  uint16_t busy[PX__LANES];
  uint8_t n;
  px__fifo wait; /* file ops waiting for a free lane */
};

/* Where an op handed to the thread is (px__paop.phase, under mu). */
enum {
  PX__PH_LANE = 1, /* on the loop side: waits for a free lane of its file */
  PX__PH_QUEUED,   /* handed over, not started */
  PX__PH_SLOT,     /* its request is in flight */
  PX__PH_RETRY,    /* refused by libc for now (EAGAIN) */
  PX__PH_DONE      /* finished, on its way back */
};

typedef struct px__aslot {
  struct aiocb cb;
  px_op *op;
} px__aslot;

struct px__aio {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  /* Under mu. */
  px__fifo todo;  /* handed over, not started */
  px__fifo retry; /* refused by libc for now (EAGAIN) */
  px__fifo done;  /* finished, for the loop */
  uint32_t *busy; /* slots in flight */
  uint32_t nbusy;
  bool idle;      /* the thread waits on cv */
  bool suspended; /* the thread is in aio_suspend */
  bool kicked;    /* a byte is on its way to the sentinel */
  bool notified;  /* the loop has been told about done */
  bool cancels;   /* an op in a slot waits for its aio_cancel */
  bool stop;
  /* The thread's own. */
  px__aslot *slots;
  uint32_t *free_;
  uint32_t nfree;
  const struct aiocb **list;
  struct aiocb sentinel;
  bool armed;
  char sentinel_byte;
  /* Descriptors: kick_r is blocking (libc's worker waits in read()). */
  int kick_r, kick_w; /* loop -> thread */
  int note_r, note_w; /* thread -> loop, watched by the poller */
};

/* ---- The completion thread. -------------------------------------------- */

/* One byte for the sentinel, which reads one. */
static void px__kick(px__aio *a) {
  char one = 1;
  a->kicked = true;
  while (write(a->kick_w, &one, 1) < 0 && errno == EINTR) {
  }
}

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
      return aio_fsync(px__pa_op(op)->datasync ? O_DSYNC : O_SYNC, cb);
#else
      return aio_fsync(O_SYNC, cb);
#endif
  }
}

/* Starts op's next request in slot i: 0, 1 when op has nothing left to
 * transfer, or a PX_E* code. */
static int px__request(px__aio *a, px_op *op, uint32_t i) {
  px__paop *po = px__pa_op(op);
  void *buf = NULL;
  size_t len = 0;
  if (op->kind != PX__OP_FSYNC && !px__segment(op, &buf, &len))
    return 1;
  px__aslot *s = &a->slots[i];
  memset(&s->cb, 0, sizeof(s->cb));
  s->cb.aio_fildes = po->lane_fd;
  s->cb.aio_buf = buf;
  s->cb.aio_nbytes = len;
  s->cb.aio_offset =
      (off_t)((op->off == PX_CUR ? po->pos : op->off) + (int64_t)po->done);
  s->cb.aio_sigevent.sigev_notify = SIGEV_NONE;
  if (px__aio_call(op, &s->cb) < 0)
    return px__errno(errno);
  s->op = op;
  po->slot = i;
  po->phase = PX__PH_SLOT;
  a->busy[a->nbusy++] = i;
  return 0;
}

static void px__finish(px__aio *a, px_op *op, int32_t res, bool *note) {
  px__paop *po = px__pa_op(op);
  po->res = po->done > 0 && res < 0 ? (int32_t)po->done : res;
  po->phase = PX__PH_DONE;
  px__fifo_push(&a->done, op);
  *note = true;
}

/* Starts op in a free slot, or parks it when libc is short of resources
 * while other requests can free them. */
static void px__start_one(px__aio *a, px_op *op, bool *note) {
  if (px__pa_op(op)->stop) {
    px__finish(a, op, PX_ECANCELED, note);
    return;
  }
  uint32_t i = a->free_[--a->nfree];
  int r = px__request(a, op, i);
  if (r == 0)
    return;
  a->free_[a->nfree++] = i;
  if (r == PX_EAGAIN && a->nbusy > 0) {
    px__pa_op(op)->phase = PX__PH_RETRY;
    px__fifo_push(&a->retry, op);
    return;
  }
  px__finish(a, op, r == 1 ? (int32_t)px__pa_op(op)->done : r, note);
}

static void px__start_all(px__aio *a, bool *note) {
  /* Refused requests go first, once something finished to make room. */
  px__fifo again = a->retry;
  a->retry = (px__fifo){0};
  px_op *op;
  while ((op = px__fifo_pop(&again)) != NULL) {
    if (a->nfree == 0 && !px__pa_op(op)->stop) {
      px__fifo_push(&a->retry, op); /* a cancelled one ends at once */
      continue;
    }
    px__start_one(a, op, note);
  }
  while ((op = px__fifo_pop(&again)) != NULL)
    px__fifo_push(&a->retry, op);
  while (a->nfree > 0 && (op = px__fifo_pop(&a->todo)) != NULL)
    px__start_one(a, op, note);
}

static void px__cancel_marked(px__aio *a) {
  if (!a->cancels)
    return;
  a->cancels = false;
  for (uint32_t k = 0; k < a->nbusy; k++) {
    px__aslot *s = &a->slots[a->busy[k]];
    px__paop *po = px__pa_op(s->op);
    if (po->stop && !po->cancel_sent) {
      po->cancel_sent = 1;
      aio_cancel(s->cb.aio_fildes, &s->cb);
    }
  }
}

/* A request of slot k finished: the op's next segment, or the op done. */
static void px__reaped(px__aio *a, uint32_t k, int err, ssize_t n, bool *note) {
  uint32_t i = a->busy[k];
  px_op *op = a->slots[i].op;
  px__paop *po = px__pa_op(op);
  a->busy[k] = a->busy[--a->nbusy];
  a->slots[i].op = NULL;
  a->free_[a->nfree++] = i;
  if (err != 0) {
    px__finish(a, op, px__errno(err), note);
    return;
  }
  if (!px__is_vec(op)) {
    px__finish(a, op, (int32_t)n, note);
    return;
  }
  const px_iov *iov = op->buf;
  bool whole = (size_t)n == iov[po->seg].len;
  po->done += (uint64_t)n;
  po->seg++;
  po->cancel_sent = 0;
  if (whole && n > 0)
    px__start_one(a, op, note); /* the next segment, or done */
  else
    px__finish(a, op, (int32_t)po->done, note);
}

static void px__reap_all(px__aio *a, bool *note) {
  for (uint32_t k = 0; k < a->nbusy;) {
    struct aiocb *cb = &a->slots[a->busy[k]].cb;
    int err = aio_error(cb);
    if (err == EINPROGRESS) {
      k++;
      continue;
    }
    px__reaped(a, k, err, aio_return(cb), note); /* moves the last to k */
  }
}

/* Keeps an aio_read outstanding on the kick pipe. */
static void px__arm(px__aio *a) {
  if (a->armed)
    return;
  memset(&a->sentinel, 0, sizeof(a->sentinel));
  a->sentinel.aio_fildes = a->kick_r;
  a->sentinel.aio_buf = &a->sentinel_byte;
  a->sentinel.aio_nbytes = 1;
  a->sentinel.aio_sigevent.sigev_notify = SIGEV_NONE;
  a->armed = aio_read(&a->sentinel) == 0;
}

static void px__disarm_if_done(px__aio *a) {
  if (a->armed && aio_error(&a->sentinel) != EINPROGRESS) {
    aio_return(&a->sentinel);
    a->armed = false;
    a->kicked = false;
  }
}

/* Ends the sentinel's read, so that an idle loop holds none of libc's
 * worker threads (their number is limited: 20 by default).  Called and
 * returns with mu. */
static void px__release_sentinel(px__aio *a) {
  if (!a->kicked)
    px__kick(a);
  while (a->armed) {
    const struct aiocb *s = &a->sentinel;
    pthread_mutex_unlock(&a->mu);
    aio_suspend(&s, 1, NULL);
    pthread_mutex_lock(&a->mu);
    px__disarm_if_done(a);
  }
}

/* Sleeps in aio_suspend on the requests in flight and the sentinel (or on
 * cv when there is nothing to wait for).  Called and returns with mu. */
static void px__sleep(px__aio *a) {
  uint32_t n = 0;
  for (uint32_t k = 0; k < a->nbusy; k++)
    a->list[n++] = &a->slots[a->busy[k]].cb;
  if (n == 0 && (a->todo.head == NULL || a->nfree == 0)) {
    if (a->armed) {
      px__release_sentinel(a);
      return; /* look for work again before sleeping */
    }
    a->idle = true;
    pthread_cond_wait(&a->cv, &a->mu);
    a->idle = false;
    return;
  }
  px__arm(a);
  if (a->armed)
    a->list[n++] = &a->sentinel;
  a->suspended = true;
  pthread_mutex_unlock(&a->mu);
  /* Without the sentinel (libc refused it) new work waits at most 1 ms. */
  struct timespec ms = {0, 1000000};
  aio_suspend(a->list, (int)n, a->armed ? NULL : &ms);
  pthread_mutex_lock(&a->mu);
  a->suspended = false;
  px__disarm_if_done(a);
}

static void *px__aio_main(void *arg) {
  px__aio *a = arg;
  pthread_mutex_lock(&a->mu);
  while (!a->stop) {
    bool note = false;
    px__start_all(a, &note);
    px__cancel_marked(a);
    px__reap_all(a, &note);
    if (note && !a->notified) {
      a->notified = true;
      px__pa_wake_post(a->note_w);
    }
    if (!note)
      px__sleep(a);
  }
  /* The loop stops the thread with nothing in flight: only the sentinel
   * may be left. */
  px__release_sentinel(a);
  pthread_mutex_unlock(&a->mu);
  return NULL;
}

/* ---- The loop's side. -------------------------------------------------- */

/* Gets the thread going after new work or a cancellation (with mu). */
static void px__nudge(px__aio *a) {
  if (a->idle)
    pthread_cond_signal(&a->cv);
  else if (a->suspended && !a->kicked)
    px__kick(a);
}

static void px__aio_tune(void) {
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  /* Threads are made on demand: a high limit costs nothing unused, and
   * each busy loop's sentinel holds one. */
  struct aioinit init = {
      .aio_threads = 256, .aio_num = 256, .aio_idle_time = 1};
  aio_init(&init);
#endif
}

static int px__pipe_nb(int p[2], bool block_read) {
  if (pipe(p) < 0)
    return px__errno(errno);
  int fl = fcntl(p[1], F_GETFL);
  if (fl < 0 || fcntl(p[1], F_SETFL, fl | O_NONBLOCK) < 0 ||
      fcntl(p[0], F_SETFD, FD_CLOEXEC) < 0 ||
      fcntl(p[1], F_SETFD, FD_CLOEXEC) < 0 ||
      (!block_read && fcntl(p[0], F_SETFL, fl | O_NONBLOCK) < 0)) {
    int r = px__errno(errno);
    close(p[0]);
    close(p[1]);
    return r;
  }
  return 0;
}

static void px__aio_release(px__aio *a) {
  px__free(a->slots);
  px__free(a->free_);
  px__free(a->busy);
  px__free(a->list);
  px__free(a);
}

static void px__aio_close_note(px__aio *a) {
  close(a->note_r);
  if (a->note_w != a->note_r)
    close(a->note_w);
}

/* Closes the kick pipe and lets go of everything (the last step). */
static void px__aio_close_kick(px__aio *a) {
  close(a->kick_r);
  close(a->kick_w);
  px__aio_release(a);
}

static int px__spawn(px__aio *a) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread takes no signal */
  int r = pthread_create(&a->thread, NULL, px__aio_main, a);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return r == 0 ? 0 : px__errno(r);
}

static int px__aio_make(px__pa *pa) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, px__aio_tune);
  px__aio *a = px__calloc(1, sizeof(*a));
  if (a == NULL)
    return PX_ENOMEM;
  a->slots = px__calloc(PX__AIO_SLOTS, sizeof(*a->slots));
  a->free_ = px__calloc(PX__AIO_SLOTS, sizeof(*a->free_));
  a->busy = px__calloc(PX__AIO_SLOTS, sizeof(*a->busy));
  a->list = px__calloc(PX__AIO_SLOTS + 1, sizeof(*a->list));
  if (!a->slots || !a->free_ || !a->busy || !a->list) {
    px__aio_release(a);
    return PX_ENOMEM;
  }
  for (uint32_t i = 0; i < PX__AIO_SLOTS; i++)
    a->free_[i] = PX__AIO_SLOTS - 1 - i;
  a->nfree = PX__AIO_SLOTS;
  int kick[2], r = px__pipe_nb(kick, true);
  if (r < 0) {
    px__aio_release(a);
    return r;
  }
  a->kick_r = kick[0];
  a->kick_w = kick[1];
  r = px__pa_wake_fd(&a->note_r, &a->note_w);
  if (r < 0) {
    px__aio_close_kick(a);
    return r;
  }
  r = px__poller_watch_in(pa->poller, a->note_r);
  if (r == 0 && pthread_mutex_init(&a->mu, NULL) != 0)
    r = PX_ENOMEM;
  if (r == 0 && pthread_cond_init(&a->cv, NULL) != 0) {
    pthread_mutex_destroy(&a->mu);
    r = PX_ENOMEM;
  }
  if (r == 0 && (r = px__spawn(a)) < 0) {
    pthread_cond_destroy(&a->cv);
    pthread_mutex_destroy(&a->mu);
  }
  if (r < 0) {
    px__poller_forget(pa->poller, a->note_r);
    px__aio_close_note(a);
    px__aio_close_kick(a);
    return r;
  }
  pa->aio = a;
  return 0;
}

void px__aio_free(px__pa *pa) {
  px__aio *a = pa->aio;
  if (a == NULL)
    return;
  pthread_mutex_lock(&a->mu);
  a->stop = true;
  if (a->idle)
    pthread_cond_signal(&a->cv);
  if (a->armed && !a->kicked)
    px__kick(a);
  pthread_mutex_unlock(&a->mu);
  pthread_join(a->thread, NULL);
  pthread_cond_destroy(&a->cv);
  pthread_mutex_destroy(&a->mu);
  px__poller_forget(pa->poller, a->note_r);
  px__aio_close_note(a);
  px__aio_close_kick(a);
  pa->aio = NULL;
}

int px__aio_notify_fd(const px__pa *pa) {
  return pa->aio != NULL ? pa->aio->note_r : -1;
}

/* ---- Lanes: descriptors of one file that libc runs in parallel. -------- */

/* Extra descriptors (lanes beyond each file's own) open in the process,
 * over all loops: they stay until their file's handle goes, so they are
 * held to a quarter of the soft descriptor limit (read when one is about
 * to be made, so a raised limit counts), and the program keeps the rest
 * (its accepts would fail with EMFILE otherwise). */
static atomic_uint px__lanes_open;

/* Takes one from the budget (before the dup: loops on other threads may
 * be asking at the same time); false when none is left. */
static bool px__lane_reserve(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return false;
  unsigned n = atomic_load(&px__lanes_open);
  do {
    if (rl.rlim_cur != RLIM_INFINITY && n >= rl.rlim_cur / 4)
      return false;
  } while (!atomic_compare_exchange_weak(&px__lanes_open, &n, n + 1));
  return true;
}

/* A lane of fd with no request on it (made if needed), or -1 when all
 * PX__LANES are busy (or no more can be made): glibc must never hold two
 * requests of one descriptor, because a cancelled first request can leave
 * the second one queued behind it and never run (glibc 2.36). */
static int px__lane_pick(px__pfd *f, int fd, uint8_t *lane) {
  *lane = 0;
  if (f->lanes == NULL) {
    if (f->aio_busy == 0)
      return fd;
    f->lanes = px__calloc(1, sizeof(*f->lanes));
    if (f->lanes == NULL)
      return -1; /* one at a time, but it works */
    f->lanes->fd[0] = fd;
    f->lanes->busy[0] = 1;
    f->lanes->n = 1;
  }
  px__lanes *l = f->lanes;
  for (uint8_t i = 0; i < l->n; i++) {
    if (l->busy[i] == 0) {
      *lane = i;
      return l->fd[i];
    }
  }
  if (l->n == PX__LANES || !px__lane_reserve())
    return -1;
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) {
    atomic_fetch_sub(&px__lanes_open, 1);
    return -1;
  }
  l->fd[l->n] = d;
  l->busy[l->n] = 0;
  *lane = l->n++;
  return d;
}

static void px__lane_take(px__pfd *f, uint8_t lane) {
  f->aio_busy++;
  if (f->lanes != NULL)
    f->lanes->busy[lane] = 1;
}

static void px__lane_drop(px__pfd *f, uint8_t lane) {
  f->aio_busy--;
  if (f->lanes != NULL)
    f->lanes->busy[lane] = 0;
}

void px__aio_release_fd(px__pa *pa, px__pfd *f) {
  (void)pa;
  if (f->lanes == NULL)
    return;
  for (uint8_t i = 1; i < f->lanes->n; i++)
    close(f->lanes->fd[i]);
  atomic_fetch_sub(&px__lanes_open, (unsigned)f->lanes->n - 1u);
  px__free(f->lanes);
  f->lanes = NULL;
}

/* ---- Submission and completion on the loop. ---------------------------- */

/* Gives op a lane of its file and hands it to the thread; false when no
 * lane is free. */
static bool px__hand_over(px__aio *a, px__pfd *f, px_op *op) {
  px__paop *po = px__pa_op(op);
  int lane_fd = px__lane_pick(f, (int)op->fd, &po->lane);
  if (lane_fd < 0)
    return false;
  po->lane_fd = lane_fd;
  px__lane_take(f, po->lane);
  pthread_mutex_lock(&a->mu);
  po->phase = PX__PH_QUEUED;
  px__fifo_push(&a->todo, op);
  px__nudge(a);
  pthread_mutex_unlock(&a->mu);
  return true;
}

#ifdef PX__NOWAIT_READS
_Static_assert(sizeof(px_iov) == sizeof(struct iovec) &&
                   offsetof(px_iov, base) == offsetof(struct iovec, iov_base) &&
                   offsetof(px_iov, len) == offsetof(struct iovec, iov_len),
               "px_iov is laid out as struct iovec");

/* Whether reads of f may be tried from the page cache (asked once). */
static bool px__nowait_ok(px__pfd *f, int fd) {
  if (f->nowait == 0) {
    int fl = fcntl(fd, F_GETFL);
    f->nowait = fl >= 0 && !(fl & O_DIRECT) ? 1 : 2;
  }
  return f->nowait == 1;
}

/* Reads op's whole range from the page cache without waiting: true when
 * op is done (its result reported at the next poll). */
static bool px__read_cached(px__pa *pa, px__pfd *f, px_op *op, int64_t off) {
  struct iovec one, *iov = &one;
  int n = 1;
  size_t want = op->len;
  if (op->kind == PX__OP_READV) {
    if (op->len > IOV_MAX)
      return false;
    iov = (struct iovec *)op->buf;
    n = (int)op->len;
    want = 0;
    for (int i = 0; i < n; i++) {
      if (iov[i].iov_len > PX__MAX_IO - want)
        return false; /* AIO's path ends it at its limit */
      want += iov[i].iov_len;
    }
  } else {
    one.iov_base = op->buf;
    one.iov_len = want;
  }
  if (want == 0)
    return false;
  ssize_t got = preadv2((int)op->fd, iov, n, (off_t)off, RWF_NOWAIT);
  if (got < 0) {
    /* The kernel or the file system says never.  Not EINVAL: that is this
     * read's own arguments (an offset past what a file can hold), and AIO
     * answers it the same; the next read may well be cached. */
    if (errno == EOPNOTSUPP || errno == ENOSYS)
      f->nowait = 2;
    return false;
  }
  if ((size_t)got != want)
    return false; /* part of it, or the end of the file: AIO reads it all */
  if (op->off == PX_CUR)
    lseek((int)op->fd, (off_t)(off + got), SEEK_SET);
  px__pa_done(pa, op, (int32_t)got);
  return true;
}
#endif

int px__aio_submit(px_loop *loop, px__pa *pa, px_op *op) {
  px__pfd *f = px__pa_fd_make(loop, pa, (int)op->fd); /* holds the lanes */
  if (f == NULL)
    return PX_ENOMEM;
  px__paop *po = px__pa_op(op);
  if (op->off == PX_CUR && op->kind != PX__OP_FSYNC) {
    off_t pos = lseek((int)op->fd, 0, SEEK_CUR);
    if (pos < 0)
      return px__errno(errno);
    po->pos = pos;
  }
#ifdef PX__NOWAIT_READS
  if ((op->kind == PX__OP_READ || op->kind == PX__OP_READV) &&
      px__nowait_ok(f, (int)op->fd) &&
      px__read_cached(pa, f, op, op->off == PX_CUR ? po->pos : op->off))
    return 0;
#endif
  if (pa->aio == NULL) {
    int r = px__aio_make(pa);
    if (r < 0)
      return r;
  }
  px__aio *a = pa->aio;
  po->datasync = (op->flags & PX__F_DATASYNC) != 0;
  po->where = PX__W_AIO;
  if ((f->lanes != NULL && f->lanes->wait.head != NULL) ||
      !px__hand_over(a, f, op)) {
    if (f->lanes == NULL) { /* a second request, and no memory for lanes */
      po->where = PX__W_NONE;
      return PX_ENOMEM;
    }
    po->phase = PX__PH_LANE; /* every lane of the file is busy */
    px__fifo_push(&f->lanes->wait, op);
  }
  return 0;
}

/* op comes back from the thread (or out of its queue) with res. */
static void px__aio_complete(px_loop *loop, px__pa *pa, px_op *op,
                             int32_t res) {
  px__paop *po = px__pa_op(op);
  px__pfd *f = px__pa_fd(pa, (int)op->fd);
  if (f != NULL && po->phase != PX__PH_LANE) {
    px__lane_drop(f, po->lane);
    /* The freed lane goes to the next op waiting on this file (off its
     * queue first: both queues link through op->next). */
    px_op *next = f->lanes ? px__fifo_pop(&f->lanes->wait) : NULL;
    if (next != NULL && !px__hand_over(pa->aio, f, next))
      px__fifo_push_front(&f->lanes->wait, next); /* cannot happen */
  }
  po->where = PX__W_NONE;
  if (op->off == PX_CUR && op->kind != PX__OP_FSYNC && res > 0)
    px__os_pos_advance(op, po->pos, res);
  px__complete(loop, op, res);
}

void px__aio_reap(px_loop *loop, px__pa *pa) {
  px__aio *a = pa->aio;
  px__pa_wake_drain(a->note_r);
  pthread_mutex_lock(&a->mu);
  px__fifo list = a->done;
  a->done = (px__fifo){0};
  a->notified = false;
  pthread_mutex_unlock(&a->mu);
  px_op *op;
  while ((op = px__fifo_pop(&list)) != NULL)
    px__aio_complete(loop, pa, op, px__pa_op(op)->res);
}

/* ---- Cancellation. ----------------------------------------------------- */

/* Marks op for cancellation (with mu).  An op still queued comes out at
 * once into *now; one the thread runs is cancelled by the thread. */
static int32_t px__mark(px__aio *a, px_op *op, px__fifo *now) {
  px__paop *po = px__pa_op(op);
  switch (po->phase) {
    case PX__PH_QUEUED:
      px__fifo_remove(&a->todo, op);
      po->res = PX_ECANCELED;
      px__fifo_push(now, op);
      return 0;
    case PX__PH_DONE:
      return PX_ENOENT; /* the result is on its way */
    default:            /* in a slot, or waiting to retry a segment */
      po->stop = 1;
      a->cancels = true;
      return 0;
  }
}

static void px__complete_now(px_loop *loop, px__pa *pa, px__fifo *now) {
  px_op *op;
  while ((op = px__fifo_pop(now)) != NULL)
    px__aio_complete(loop, pa, op, px__pa_op(op)->res);
}

/* Takes the ops of f still waiting for a lane into now, cancelled. */
static void px__lane_wait_cancel(px__pfd *f, px__fifo *now) {
  px_op *op;
  while (f->lanes != NULL && (op = px__fifo_pop(&f->lanes->wait)) != NULL) {
    px__pa_op(op)->res = PX_ECANCELED;
    px__fifo_push(now, op);
  }
}

int32_t px__aio_cancel(px_loop *loop, px__pa *pa, px_op *op) {
  px__aio *a = pa->aio;
  px__fifo now = {0};
  /* The phase is read under mu, where the thread writes it (an op waiting
   * for a lane is the loop's alone, but a C11 race is a race). */
  pthread_mutex_lock(&a->mu);
  if (px__pa_op(op)->phase == PX__PH_LANE) {
    pthread_mutex_unlock(&a->mu);
    px__fifo_remove(&px__pa_fd(pa, (int)op->fd)->lanes->wait, op);
    px__pa_op(op)->res = PX_ECANCELED;
    px__fifo_push(&now, op);
    px__complete_now(loop, pa, &now);
    return 0;
  }
  int32_t r = px__mark(a, op, &now);
  px__nudge(a);
  pthread_mutex_unlock(&a->mu);
  px__complete_now(loop, pa, &now);
  return r;
}

/* Every op of fd (fd < 0: every op) the thread holds. */
static void px__aio_cancel_where(px_loop *loop, px__pa *pa, int fd) {
  px__aio *a = pa->aio;
  if (a == NULL)
    return;
  px__fifo now = {0};
  for (size_t i = 0; i < pa->nfds; i++)
    if (pa->fds[i].used && (fd < 0 || (int)i == fd))
      px__lane_wait_cancel(&pa->fds[i], &now);
  pthread_mutex_lock(&a->mu);
  px__fifo todo = a->todo;
  a->todo = (px__fifo){0};
  px_op *op;
  while ((op = px__fifo_pop(&todo)) != NULL) {
    px__fifo_push(&a->todo, op);
    if (fd < 0 || (int)op->fd == fd)
      px__mark(a, op, &now);
  }
  for (uint32_t k = 0; k < a->nbusy; k++) {
    op = a->slots[a->busy[k]].op;
    if (fd < 0 || (int)op->fd == fd)
      px__mark(a, op, &now);
  }
  for (op = a->retry.head; op != NULL; op = op->next)
    if (fd < 0 || (int)op->fd == fd)
      px__mark(a, op, &now);
  px__nudge(a);
  pthread_mutex_unlock(&a->mu);
  px__complete_now(loop, pa, &now);
}

void px__aio_cancel_fd(px_loop *loop, px__pa *pa, int fd) {
  px__aio_cancel_where(loop, pa, fd);
}

void px__aio_cancel_all(px_loop *loop, px__pa *pa) {
  px__aio_cancel_where(loop, pa, -1);
}
