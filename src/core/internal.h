/* Core internals shared by the files of src/core/ and read by backends. */
#ifndef PX_CORE_INTERNAL_H
#define PX_CORE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>

#include "backend.h"
#include "pool.h"

/* Hot-path shaping (GCC and Clang; no effect elsewhere): PX__NOINLINE
 * keeps a rare case's code, and the registers it needs, out of a hot
 * function's frame; PX__INLINE folds a hot helper into its caller. */
#if defined(__GNUC__)
#define PX__NOINLINE __attribute__((noinline))
#define PX__INLINE inline __attribute__((always_inline))
#else
#define PX__NOINLINE
#define PX__INLINE inline
#endif

enum px__kind {
  PX__OP_NONE = 0,
  PX__OP_READ,
  PX__OP_WRITE,
  PX__OP_READV,
  PX__OP_WRITEV,
  PX__OP_RECV,
  PX__OP_RECV_POOLED, /* buf: the px_bufpool; off: the buffer delivered */
  PX__OP_SEND,
  PX__OP_ACCEPT,
  PX__OP_CONNECT,
  PX__OP_FSYNC, /* the kinds above act on a handle and count as its ops */
  PX__OP_CLOSE,
  PX__OP_TIMEOUT,
  PX__OP_CANCEL,
  PX__OP_NOP,
  PX__OP_POST,
  PX__OP_COUNT
};

/* Where an op is between submission and its callback. */
enum px__state {
  PX__IDLE = 0, /* not in flight: may be submitted */
  PX__QUEUED,   /* waits in a handle's stream queue */
  PX__TIMER,    /* a px_timeout in the timer heap */
  PX__CLOSING,  /* a close waiting for the handle's ops to drain */
  PX__STARTED,  /* handed to the backend */
  PX__POSTED,   /* travelling through the post queue */
  PX__READY     /* completed, waiting for dispatch */
};

enum px__flag {
  PX__F_DEADLINE = 1u << 0, /* op->when is a deadline */
  PX__F_TIMEDOUT = 1u << 1, /* the deadline fired: ECANCELED -> ETIMEDOUT */
  PX__F_STREAM = 1u << 2,   /* ordered per handle and direction */
  PX__F_WRITEQ = 1u << 3,   /* ... in the write direction */
  PX__F_DATASYNC = 1u << 4, /* fsync: data only */
  PX__F_DL_SET = 1u << 5,   /* px_op_deadline called, when = ms */
  PX__F_SIGPIPE = 1u << 6,  /* a write to a pipe or socket: may raise it */
  /* Multishot pooled receives (see loop.c, "Multishot deliveries"). */
  PX__F_MULTI = 1u << 7,      /* many completions for one submission */
  PX__F_MORE = 1u << 8,       /* this delivery is not the last */
  PX__F_INREADY = 1u << 9,    /* on the ready list while still in flight */
  PX__F_FINAL = 1u << 10,     /* the backend is done with it */
  PX__F_FINALCODE = 1u << 11, /* ... and its last result, after the chained
                                 deliveries, is op->len (no buffer) */
  /* On a handle opened for direct I/O: the op goes to the device, whose
   * latency dwarfs a system call, so a backend that gathers submissions
   * for one kernel entry per iteration starts this one at once. */
  PX__F_EAGER = 1u << 12,
  /* A kind that completes its own way: an accept registers the handle it
   * got, a pooled receive hands over a buffer.  A flag, so that the
   * completion's fast path tests one word (px__is_plain). */
  PX__F_KIND = 1u << 13,
  /* At PX_CUR on a handle opened for direct I/O (set where the offset is
   * taken, px__io): io_uring neither reads nor moves the file position for
   * an op the device completes later, so that backend keeps it itself. */
  PX__F_CURPOS = 1u << 14
};

/* An intrusive FIFO of ops linked through op->next (no allocation). */
typedef struct px__fifo {
  px_op *head, *tail;
} px__fifo;

static inline void px__fifo_push(px__fifo *f, px_op *op) {
  op->next = NULL;
  if (f->tail != NULL)
    f->tail->next = op;
  else
    f->head = op;
  f->tail = op;
}

static inline void px__fifo_push_front(px__fifo *f, px_op *op) {
  op->next = f->head;
  f->head = op;
  if (f->tail == NULL)
    f->tail = op;
}

static inline px_op *px__fifo_pop(px__fifo *f) {
  px_op *op = f->head;
  if (op != NULL) {
    f->head = op->next;
    if (f->head == NULL)
      f->tail = NULL;
    op->next = NULL;
  }
  return op;
}

/* Unlinks op (an O(n) walk: for cancellations, not the hot path). */
bool px__fifo_remove(px__fifo *f, px_op *op);

/*
 * A FIFO of ops held by one pointer: the tail, whose next is the head (a
 * circle).  Per-handle queues use it, one word each instead of two,
 * because a handle's state is most of what an idle connection costs.
 */
typedef struct px__oq {
  px_op *tail;
} px__oq;

static inline px_op *px__oq_head(const px__oq *q) {
  return q->tail != NULL ? q->tail->next : NULL;
}

static inline void px__oq_push(px__oq *q, px_op *op) {
  if (q->tail == NULL) {
    op->next = op;
  } else {
    op->next = q->tail->next;
    q->tail->next = op;
  }
  q->tail = op;
}

static inline px_op *px__oq_pop(px__oq *q) {
  px_op *tail = q->tail;
  if (tail == NULL)
    return NULL;
  px_op *head = tail->next;
  if (head == tail)
    q->tail = NULL;
  else
    tail->next = head->next;
  head->next = NULL;
  return head;
}

/* Unlinks op (an O(n) walk: for cancellations, not the hot path). */
bool px__oq_remove(px__oq *q, px_op *op);

/* Per-handle state: stream queues and the count of started ops. */
typedef struct px__fdent {
  px__oq waiting[2]; /* stream ops not started: [0] reads, [1] writes */
  px_op *closing;    /* close waiting for started ops to finish */
  uint32_t started;  /* ops on this handle inside the backend */
  uint8_t busy[2];   /* a stream op of that direction is started */
  uint8_t known;
  uint8_t stream; /* not a regular file: pipe, socket, device */
  uint8_t append; /* a file whose writes go to its end (O_APPEND, or on
                     Windows opened with PX_O_APPEND): writes are ordered */
  uint8_t direct; /* a file opened for direct I/O (O_DIRECT): PX__F_EAGER */
} px__fdent;

/* Fetches the cache line at p for writing: a line that another core wrote
 * last is then taken over in one transfer, where a read followed by a
 * write takes two (the read shares it, the write must then invalidate the
 * other copy).  A hint: a CPU without it does nothing. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PX__PREFETCH_W(p)                                                      \
  __asm__ volatile("prefetchw %0" ::"m"(*(const char *)(p)))
#elif defined(__GNUC__)
#define PX__PREFETCH_W(p) __builtin_prefetch((p), 1)
#else
#define PX__PREFETCH_W(p) ((void)(p))
#endif

/* Ops counted on their handle (a close is the handle's end, not its op). */
static inline bool px__kind_has_fd(unsigned kind) {
  return kind >= PX__OP_READ && kind <= PX__OP_FSYNC;
}

/* The stream direction of op: 0 reads, 1 writes. */
static inline unsigned px__dir_of(const px_op *op) {
  return (op->flags & PX__F_WRITEQ) != 0;
}

struct px_loop {
#ifndef PX__ONLY_BACKEND
  const px__backend *backend;
#endif
  void *bk; /* the backend's state */

  int64_t now; /* px__now_ns, refreshed once per iteration */
  px_stats stats;

  px__fifo ready; /* completed, not dispatched */

  px_op **heap; /* timer min-heap on op->when; op->heap = slot + 1 */
  uint32_t heap_len, heap_cap;
  uint32_t timer_seq; /* ties between equal timers keep submission order */

  px__fdent *fds; /* indexed by px__fd_index */
  size_t nfds;    /* entries in use (zeroed or known) */
  size_t fds_cap; /* entries allocated */

  bool woken;      /* a wakeup arrived since the last wait: the next does
                      not block (px__iterate) */
  bool wake_asked; /* ... and px_loop_wakeup asked for it: not reported
                      yet by px_run(ONCE) or px_wait */

  px_bufpool *pools;      /* made for this loop, not freed yet */
  px_acceptor *acceptors; /* started on this loop, not ended yet */

  bool stop;
  bool closing;
  int depth; /* callbacks currently running */
  /* px_run's wait is on: a plain completion with nothing before it runs
   * its callback from the backend's reaping loop (px__complete_direct),
   * and direct_ran counts those callbacks for the iteration. */
  bool direct;
  uint32_t direct_ran;
  uint64_t owner; /* px__thread_id of the first runner, 0 before */

  /* What other threads touch (px_post, px_loop_wakeup), in groups that
   * never share a cache line with each other or with the loop thread's
   * fields (padding: the allocator promises no 64-byte alignment).  Shared
   * with the loop's own writes, each post moved the line between the cores
   * (measured: 5 locked operations per post all stalling). */
  char pad0_[64];
  /* Treiber stack of posts, newest first; PX__POSTS_SHUT once the loop is
   * being freed (px_post refuses from then on). */
  _Atomic(px_op *) post_head;
  char pad1_[64];
  atomic_int posting; /* px_post calls that may still wake the loop */
  char pad2_[64];
  atomic_int wake_pending; /* a wakeup is on its way */
  atomic_int user_wake;    /* ... and px_loop_wakeup asked for one */
  char pad3_[64];
};

#ifdef PX__ONLY_BACKEND
extern const px__backend PX__ONLY_BACKEND;
#define PX__BK(loop) ((void)(loop), &PX__ONLY_BACKEND)
#else
#define PX__BK(loop) ((loop)->backend)
#endif

/* choose.c: picks loop's backend (sets loop->backend) and starts it. */
int px__backend_init(px_loop *loop, const px_loop_opts *opts);

/* alloc.c */
void *px__malloc(size_t n);
void *px__calloc(size_t n, size_t size);
void *px__realloc(void *p, size_t n);
void px__free(void *p);
/* libc's allocator is in use (its calloc leaves fresh pages untouched). */
bool px__alloc_default(void);

/* fdtab.c: the loop's table of known handles, indexed by the handle's
 * value.  POSIX descriptors are small integers; Windows SOCKETs and
 * HANDLEs are small multiples of 4 in practice, so the index drops those
 * two bits.  Absurd values are refused instead of allocating gigabytes. */
#ifdef _WIN32
#define PX__FD_SHIFT 2
#else
#define PX__FD_SHIFT 0
#endif
#define PX__FD_MAX ((size_t)1 << 24)

static inline bool px__fd_index(px_fd fd, size_t *idx) {
  if (fd < 0)
    return false;
  *idx = (size_t)fd >> PX__FD_SHIFT;
  return *idx < PX__FD_MAX;
}

/* fd's entry, NULL if unknown (inline: every submit and completion on a
 * handle looks it up). */
static inline px__fdent *px__fd_get(px_loop *loop, px_fd fd) {
  size_t i;
  if (!px__fd_index(fd, &i) || i >= loop->nfds || !loop->fds[i].known)
    return NULL;
  return &loop->fds[i];
}
/* stream: the handle is not a regular file (pipe, socket, device). */
int px__fd_register(px_loop *loop, px_fd fd, bool stream);
void px__fd_forget(px_loop *loop, px_fd fd);
void px__fdtab_free(px_loop *loop);
px_fd px__fd_at(size_t index); /* the handle of loop->fds[index] */

/* timer.c */
/* Room for one more timer (PX_ENOMEM if none can be made), which the push
 * after it takes: asked before an op's fields are filled. */
int px__heap_room(px_loop *loop);
void px__heap_push(px_loop *loop, px_op *op);
void px__heap_remove(px_loop *loop, px_op *op);
px_op *px__heap_top(const px_loop *loop);
void px__heap_free(px_loop *loop);

/* loop.c: moving ops.  The pieces every op passes through are inline
 * here, so that a submit call or a backend's reaping loop runs them without
 * a call; what only the rare cases need stays out of line in loop.c. */

/* op completed with result: it waits for dispatch. */
static inline void px__ready_push(px_loop *loop, px_op *op, int32_t result) {
  op->result = result;
  op->state = PX__READY;
  px__fifo_push(&loop->ready, op);
}

/* px__start's refusal: op completes with the error r; returns false. */
bool px__start_refused(px_loop *loop, px_op *op, px__fdent *e, int r);
/* px__start's deadline step (PX__F_DEADLINE set). */
void px__start_deadline(px_loop *loop, px_op *op);

/* Hands op (on handle e, NULL for none) to the backend; false: refused,
 * and op completed with the error.  The caller frees the stream direction
 * or starts the next op (no recursion through px__complete). */
static inline bool px__start(px_loop *loop, px_op *op, px__fdent *e) {
  if (op->flags & PX__F_DEADLINE)
    px__start_deadline(loop, op);
  op->state = PX__STARTED;
  if (e != NULL)
    e->started++;
  int r = PX__BK(loop)->submit(loop, op);
  return r == 0 || px__start_refused(loop, op, e, r);
}

/* The backend is done with op (a kind on a handle): its handle's queues
 * move on. */
void px__handle_done(px_loop *loop, px_op *op);

/* op's completion is plain: no deadline in the heap, not multishot, not
 * timed out, not a kind with its own completion (PX__F_KIND).  Then
 * px__complete (backend.h) comes down to px__complete_plain. */
static inline bool px__is_plain(const px_op *op) {
  return !(op->flags & (PX__F_MULTI | PX__F_TIMEDOUT | PX__F_KIND)) &&
         op->heap == 0;
}

/* px__complete for an op px__is_plain says is plain, inline for a
 * backend's reaping loop: straight to the ready list. */
static inline void px__complete_plain(px_loop *loop, px_op *op,
                                      int32_t result) {
  px__ready_push(loop, op, result);
  if (px__kind_has_fd(op->kind))
    px__handle_done(loop, op);
}

/* An op popped from the ready list, or completed straight to its
 * callback, is done: counted, idle again. */
static inline void px__op_done(px_loop *loop, px_op *op) {
  op->state = PX__IDLE;
  op->flags = 0;
  loop->stats.completed++;
  if (op->result < 0) {
    if (op->result == PX_ECANCELED)
      loop->stats.cancelled++;
    else
      loop->stats.failed++;
  }
}

/* Runs op's callback, if it has one; depth > 0 meanwhile. */
static inline void px__run_cb(px_loop *loop, px_op *op) {
  if (op->cb != NULL) {
    loop->depth++;
    op->cb(loop, op);
    loop->depth--;
  }
}

/*
 * px__complete_plain, or straight to the callback: inside px_run's wait
 * (not px_wait's, which hands ops back), with no callback running and
 * nothing on the ready list, a plain completion would be the next op
 * dispatched anyway, so its trip through the list is skipped.  Its
 * handle's queues move on first, as they would.  Before the first such
 * callback of an iteration the clock is read into loop->now, which
 * px__iterate then keeps (see there).  With a callback running (a submit
 * that reaps to make room in the queue), or something on the list, the op
 * joins the list: no callback runs inside a submit call, and nothing
 * overtakes what completed before it.  The backend calls this only from
 * the reap that follows its wait, for the CQEs there when it began.
 */
static inline void px__complete_direct(px_loop *loop, px_op *op,
                                       int32_t result) {
  if (!loop->direct || loop->depth != 0 || loop->ready.head != NULL) {
    px__complete_plain(loop, op, result);
    return;
  }
  if (px__kind_has_fd(op->kind))
    px__handle_done(loop, op); /* reads op->flags: before px__op_done */
  op->result = result;
  px__op_done(loop, op);
  if (loop->direct_ran++ == 0)
    loop->now = px__now_ns();
  px__run_cb(loop, op);
}
void px__close_start(px_loop *loop, px__fdent *e); /* e->closing starts */
/* handle.c: 0 when px_fd_close may close fd now, else its refusal
 * (PX_EBADF, PX_EBUSY); loop NULL: a handle no live loop knows. */
int px__fd_closable(px_loop *loop, px_fd fd);
/* acceptor.c: px_loop_free stops the loop's acceptors (each goes once
 * its accepts are done). */
void px__acceptors_stop(px_loop *loop);
/* submit.c: asks target to complete early, with no cancel op to report
 * back (px_cancel's effect on target alone). */
void px__cancel_op(px_loop *loop, px_op *target);

/* time_*.c: lets other threads run (a short wait in px_loop_free). */
void px__os_yield(void);
/* time_*.c: the process's open-descriptor limit, 0 if none applies. */
size_t px__os_fd_limit(void);
/* fdtab.c: the first size of a table indexed by descriptor: room for
 * every descriptor the process may open (up to 1 << 20), allocated zeroed
 * and so untouched until used (64 with a replaced allocator). */
size_t px__fd_table_size(void);

/* addr.c: a px_addr's address family (AF_*). */
int px__addr_family(const px_addr *addr);
/* sock_*.c: the network stack is ready for use (Winsock's start-up). */
int px__os_net_init(void);

/* handle.c: makes fd known to loop (adopt, register), or closes it. */
int px__own(px_loop *loop, px_fd fd, bool stream, px_fd *out);
int px__own_pair(px_loop *loop, px_fd a, px_fd b, px_fd out[2]);
/* px_file_open's flags: known bits, a valid access mode. */
bool px__open_flags_ok(unsigned flags);

/* sock_*.c: platform handle operations. */
int px__os_close(px_fd fd);
int px__os_is_stream(px_fd fd);  /* 1, 0, or a PX_E* code */
int px__os_writable(px_fd fd);   /* open for writing: 1, 0, or a PX_E* code */
bool px__os_is_direct(px_fd fd); /* a file open for direct I/O */
bool px__os_is_append(px_fd fd); /* a file whose writes go to its end */
/* POSIX: after op, at PX_CUR, started at pos and moved `moved` bytes,
 * sets its handle's position where read(2)/write(2) would have left it (the
 * end of the file after a write to an O_APPEND file).  For backends whose
 * requests do not move it themselves. */
void px__os_pos_advance(const px_op *op, int64_t pos, int64_t moved);
#ifdef _WIN32
/* error_win.c: a Windows error code (GetLastError, WSAGetLastError). */
int px__win_error(unsigned long err);
/* sock_win.c: a handle's kind, for the backend's choice of call. */
enum { PX__H_FILE = 1, PX__H_SOCKET, PX__H_PIPE, PX__H_CHAR };
int px__win_kind(px_fd fd);         /* PX__H_* or a PX_E* code */
bool px__win_synchronous(px_fd fd); /* opened without FILE_FLAG_OVERLAPPED */
int px__win_startup(void);          /* Winsock, once: 0 or a PX_E* code */
#endif

/*
 * A write to a pipe (or to a socket through write()) whose reader is gone
 * raises SIGPIPE in the writing thread, and no flag turns that off the way
 * MSG_NOSIGNAL does for send().  A backend that may write to such a handle
 * holds the calling thread's SIGPIPE guard meanwhile: SIGPIPE is blocked
 * (SIG_BLOCK of that one signal, never a whole-mask restore), and at the
 * last release a SIGPIPE raised while held is consumed and SIGPIPE is
 * unblocked again unless the thread had blocked it itself.  Holds nest per
 * thread (two loops on one thread); a signal already pending at the first
 * hold is left alone.
 */
void px__sigpipe_hold(void);
void px__sigpipe_release(void);

/* A number naming the calling thread, never reused while the process
 * lives (a thread-local's address can be, by the next thread). */
uint64_t px__thread_id(void);

#endif
