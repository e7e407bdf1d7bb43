/* State shared by the files of the posix_aio backend. */
#ifndef PX_POSIX_AIO_PA_H
#define PX_POSIX_AIO_PA_H

#include "core/internal.h"
#include "poller.h"

#if defined(__GNUC__)
#define PX__MAY_ALIAS __attribute__((may_alias))
#else
#define PX__MAY_ALIAS
#endif

/* Where a started op is. */
enum px__where {
  PX__W_NONE = 0,
  PX__W_READY, /* waits for readiness on its fd's queue */
  PX__W_DONE,  /* result known, reported at the next poll */
  PX__W_AIO    /* with the completion thread (file I/O) */
};

/* Per-op state, inside op->backend. */
typedef struct PX__MAY_ALIAS px__paop {
  int64_t pos;   /* PX_CUR file ops: the handle's position at the start */
  uint64_t done; /* vector file ops: bytes moved by earlier segments */
  int32_t res;   /* the result, once known (PX__W_DONE, or from the thread) */
  uint32_t slot; /* PX__W_AIO: index in the aiocb slab */
  uint32_t seg;  /* vector file ops: the segment in flight */
  uint8_t where;
  int32_t lane_fd;     /* PX__W_AIO: the descriptor the request uses */
  uint8_t lane;        /* ... its index among the file's lanes */
  uint8_t phase;       /* PX__W_AIO: where the completion thread has it */
  uint8_t stop;        /* cancel asked: the thread cancels or ends it */
  uint8_t cancel_sent; /* the thread called aio_cancel for it */
  uint8_t datasync;    /* fsync: data only (read by the thread) */
} px__paop;

_Static_assert(sizeof(px__paop) <= sizeof(((px_op *)0)->backend),
               "posix_aio op state fits in px_op");

static inline px__paop *px__pa_op(px_op *op) {
  return (px__paop *)(void *)op->backend;
}

typedef struct px__lanes px__lanes;

/* Per-handle state, indexed by fd. */
typedef struct px__pfd {
  px__oq q[2];        /* ops waiting for readiness: [0] read, [1] write */
  px__lanes *lanes;   /* a file's extra descriptors for parallel AIO */
  int32_t run_next;   /* link of the run list, -1 at its end */
  uint16_t aio_busy;  /* AIO requests in flight on all its lanes */
  uint8_t ready;      /* PX__IN|PX__OUT: no call said EAGAIN since */
  uint8_t watched;    /* the interest the poller has */
  uint8_t on_run;     /* on the run list */
  uint8_t used;       /* initialised since the fd became known */
  uint8_t unpollable; /* the poller refused it: always ready */
  uint8_t hup;        /* the poller saw a hang-up: reads end at once */
  uint8_t bytes;      /* a short read drains it (0: not asked yet, 1: yes,
                         2: no) */
  uint8_t urgent;     /* the poller saw urgent data (TCP): reads stop at
                         its mark, a short one does not drain */
  uint8_t nowait;     /* file reads tried from the page cache first
                         (0: not asked yet, 1: yes, 2: no) */
  int conn_err;       /* errno of a read-side call that failed while a
                         connect waited: the connection's own error */
} px__pfd;

typedef struct px__aio px__aio;

typedef struct px__pa {
  px__poller *poller;
  int wake_r, wake_w; /* px_loop_wakeup: an eventfd (r == w) or a pipe */
  px__pfd *fds;       /* by fd */
  size_t nfds;        /* entries in use (zeroed or initialised) */
  size_t fds_cap;     /* entries allocated */
  int32_t run_head;   /* fds whose queued ops may run now; -1: none */
  int32_t run_tail;
  px__fifo done;   /* ops whose result is known */
  px__aio *aio;    /* file I/O, made at the first file op */
  bool guard_held; /* the SIGPIPE guard, for writes to pipes */
} px__pa;

static inline px__pa *px__pa_of(px_loop *loop) {
  return loop->bk;
}

/* posix_aio.c */
void px__pa_done(px__pa *pa, px_op *op, int32_t res);
px__pfd *px__pa_fd(px__pa *pa, int fd); /* NULL when never used */
px__pfd *px__pa_fd_make(px_loop *loop, px__pa *pa, int fd); /* NULL: ENOMEM */
int px__pa_wake_fd(int *r, int *w); /* an eventfd or a pipe */
void px__pa_wake_drain(int fd);
int px__pa_wake_post(int fd);

/* aio_file.c */
int px__aio_submit(px_loop *loop, px__pa *pa, px_op *op);
/* 0 when a cancellation reached op, PX_ENOENT when its result is known. */
int32_t px__aio_cancel(px_loop *loop, px__pa *pa, px_op *op);
void px__aio_cancel_fd(px_loop *loop, px__pa *pa, int fd);
void px__aio_cancel_all(px_loop *loop, px__pa *pa);
/* The notification fd to poll (-1 before the first file op), and taking
 * the ops the completion thread finished when it fires. */
int px__aio_notify_fd(const px__pa *pa);
void px__aio_reap(px_loop *loop, px__pa *pa);
void px__aio_release_fd(px__pa *pa, px__pfd *f); /* closes the lanes */
void px__aio_free(px__pa *pa);

#endif
