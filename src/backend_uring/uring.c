/*
 * uring — the io_uring backend, through liburing.
 *
 * Notes on io_uring that explain the odd-looking parts of this file:
 *
 * - Ring flags.  SINGLE_ISSUER|DEFER_TASKRUN (6.1+) makes completions run as
 *   task work only when the loop asks for events, which is cheaper and
 *   keeps them on the loop's thread.  SINGLE_ISSUER binds the ring to the
 *   first task that submits; a loop is often created on one thread and run
 *   on another, so the ring starts R_DISABLED and is enabled by the first
 *   thread that enters it.  Older kernels refuse these flags with EINVAL:
 *   then COOP_TASKRUN, then no flags at all.
 * - Batching.  Submit calls only fill SQEs; the one io_uring_enter per loop
 *   iteration submits them and waits (EXT_ARG carries the timeout, so the
 *   wait needs no timeout SQE).  The exception is an op on a file opened
 *   O_DIRECT (PX__F_EAGER): it enters at once, because a device's queue
 *   wants each read as soon as it exists (px__submit_now).  The ring fd
 *   is not registered with the thread (IORING_REGISTER_RING_FDS): the
 *   registration is per thread, and a loop freed from another thread
 *   would then enter that thread's ring.
 * - SQ full.  An op that finds no SQE waits on an intrusive overflow list
 *   (op->next, no allocation) and is moved into the SQ at the next
 *   iteration, submitting as often as needed to make room.
 * - CQ overflow.  With IORING_FEAT_NODROP the kernel keeps completions that
 *   did not fit and io_uring_enter may answer EBUSY until they are reaped;
 *   the reaper drains and asks for events again while the ring reports an
 *   overflow, so nothing is lost however small the CQ.
 * - Reaping copies each CQE out and advances the CQ before handling it,
 *   because handling a completion may start the next op of the handle, and
 *   inside px_run's wait a plain completion with nothing before it runs its
 *   callback right there (the core's px__complete_direct), which may submit
 *   anything.
 * - The per-op path reads the rings itself (px__sq_space, px__sqe_take,
 *   px__reap): liburing's helpers less their tests of SQPOLL, SQE128 and
 *   CQE32, flags px never sets.  An op that is not pooled, not an accept,
 *   not a write() to a pipe or socket and not on an O_DIRECT file takes a
 *   leaf-function path through submit, and one with no deadline through
 *   reap; everything else goes the long way (px__submit_slow,
 *   px__cqe_slow).
 * - Deadlines come from the core's timer heap (no PX_CAP_KERNEL_DEADLINE):
 *   when one passes, the core asks cancel() and the op's -ECANCELED becomes
 *   PX_ETIMEDOUT there.  Linked timeouts (IORING_OP_LINK_TIMEOUT) did this
 *   job before; each cost a second SQE and CQE and an hrtimer armed and
 *   disarmed under the ring's interrupt-safe locks, ~8% of the HTTP
 *   example's CPU in a profile (io_queue_linked_timeout, io_disarm_next),
 *   where the heap costs a push and a removal in user space.
 * - Cancellation matches user_data (the op's address); px_close asks for
 *   IORING_ASYNC_CANCEL_FD|ALL, px_loop_free for ASYNC_CANCEL_ANY|ALL.  An op
 *   still on the overflow list is not in the kernel: it is completed here.
 * - Wakeups: an eventfd read stays armed in the ring; px_post writes the
 *   eventfd.  The eventfd is blocking, because io_uring hands EAGAIN back
 *   for a read on an O_NONBLOCK file instead of waiting for it.  The same
 *   holds for pipes, so adopt() clears O_NONBLOCK.
 * - send() runs with MSG_NOSIGNAL: no SIGPIPE, PX_EPIPE instead.  A
 *   write to a pipe or socket has no such flag, and the kernel raises
 *   SIGPIPE in the thread that runs it: the loop's thread, inside
 *   io_uring_enter or (on rings without DEFER_TASKRUN) as task work on any
 *   later kernel entry.  So while such a write is started, the loop thread
 *   holds the core's SIGPIPE guard: taken before the first enter that may
 *   submit it, let go when px_run/px_wait returns (with DEFER_TASKRUN,
 *   where nothing runs outside an enter) or once no such write is left.
 *   Loops that never write to pipes pay nothing; a pipe writer pays a few
 *   syscalls per px_run call, not per op.
 * - io_uring does not order two requests on one socket; the core queues
 *   stream ops so that at most one per direction reaches this file.
 * - Offset -1 (PX_CUR) reads and moves the file position only for a
 *   request that completes inside the call: a direct (O_DIRECT) read the
 *   device completes later leaves it where it was.  Ops at PX_CUR on a
 *   handle opened for direct I/O (PX__F_CURPOS) start at the position read
 *   with lseek and move it when they complete (px__os_pos_advance), as
 *   read(2) and write(2) would.  A read and a write at PX_CUR in flight
 *   together both start from the same position, as the kernel's would.
 * - Unavailable io_uring.  Docker's default seccomp profile and
 *   kernel.io_uring_disabled make io_uring_setup fail with EPERM, kernels
 *   built without it with ENOSYS; init then fails with that code and a loop
 *   that did not name its backend goes on to posix_aio (core/choose.c).
 *   A kernel that has io_uring but lacks an opcode px uses is found by the
 *   ring's probe at init and counts as unavailable too (PX_ENOSYS), rather
 *   than failing one op at a time later.  Some of what px uses has no probe
 *   bit: the features of Linux 5.19 (ASYNC_CANCEL's FD and ANY flags,
 *   provided-buffer rings, RECVSEND_POLL_FIRST) are known by an opcode of
 *   the same release, SOCKET; multishot receives (6.0) by SEND_ZC.  A
 *   kernel without multishot receives runs a multishot pooled receive as a
 *   single one, and the loop's caps say so.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend_uring/uring.h"
#include "core/internal.h"

/* user_data: an op's address, with a tag in the two low bits. */
#define PX__UD_OP 0u
#define PX__UD_WAKE 2u   /* the eventfd read */
#define PX__UD_IGNORE 3u /* internal cancels */
#define PX__UD_TAGS 3u
_Static_assert(_Alignof(px_op) >= 4, "two low bits of an op's address free");

typedef struct px__uring {
  struct io_uring ring;
  int wake_fd;
  uint64_t wake_buf;
  bool enabled; /* created R_DISABLED and not enabled yet: false */
  bool stopping;
  bool wake_armed;        /* the eventfd read is in the ring */
  bool wake_rearm;        /* ... and goes back when an SQE is free */
  px__fifo ovf;           /* ops waiting for an SQE */
  uint32_t stream_writes; /* started writes that may raise SIGPIPE */
  bool defer_taskrun;     /* completions run only inside an enter */
  bool guard_held;        /* this loop holds its thread's SIGPIPE guard */
  uint64_t guard_thread;  /* ... on this thread (px__thread_id) */
  /* A px_close found the SQ full before the ring was enabled (enabling it
   * there would bind it to the wrong thread): its cancel goes out at the
   * first poll, found by a scan of the handles waiting to close. */
  bool cancel_scan;
  /* px__cancel_op found the SQ full before the ring was enabled: these
   * targets' cancels go out at the first poll.  Their SQEs wait in the SQ
   * meanwhile (nothing is submitted before), so their links are free. */
  px__fifo cancel_later;
  uint16_t next_bgid; /* the next pool's buffer group */
  bool multishot;     /* the kernel does multishot receives */
} px__uring;

#define PX__URING_CAPS                                                         \
  (PX_CAP_FILE_ASYNC | PX_CAP_MULTISHOT | PX_CAP_BUF_SELECT)

/* Per-op state, inside op->backend (a uint64_t array: may_alias says so to
 * the optimiser). */
#if defined(__GNUC__)
#define PX__MAY_ALIAS __attribute__((may_alias))
#else
#define PX__MAY_ALIAS
#endif
typedef struct PX__MAY_ALIAS px__uop {
  uint32_t bid; /* a pooled receive's buffer + 1, or 0 */
  uint8_t on_ovf;
  uint8_t stop; /* a cancel was asked for */
  int64_t pos;  /* PX__F_CURPOS: the file position when the op started */
} px__uop;

_Static_assert(sizeof(px__uop) <= sizeof(((px_op *)0)->backend),
               "uring op state fits in px_op");
_Static_assert(sizeof(px_iov) == sizeof(struct iovec),
               "px_iov is a struct iovec");

static px__uop *px__uop_of(px_op *op) {
  return (px__uop *)(void *)op->backend;
}

static bool px__may_sigpipe(const px_op *op) {
  return op->flags & PX__F_SIGPIPE;
}

/* Takes the SIGPIPE guard before a write that may raise it reaches the
 * kernel. */
static void px__guard_take(px__uring *u) {
  if (u->stream_writes == 0 || u->guard_held)
    return;
  px__sigpipe_hold();
  u->guard_held = true;
  u->guard_thread = px__thread_id();
}

static void px__guard_drop(px__uring *u) {
  if (!u->guard_held)
    return;
  /* Only the thread that holds it can let go of its own signal mask; a
   * loop freed elsewhere just forgets (that thread has moved on). */
  if (u->guard_thread == px__thread_id())
    px__sigpipe_release();
  u->guard_held = false;
}

static px__uring *px__u(px_loop *loop) {
  return loop->bk;
}

/* ---- Entering the ring. ------------------------------------------------ */

static int px__enable(px__uring *u) {
  if (u->enabled)
    return 0;
  /* liburing 2.3 declares io_uring_enable_rings but does not export it. */
  int r =
      io_uring_register(u->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
  if (r < 0)
    return px__errno(-r);
  u->enabled = true;
  return 0;
}

static void px__reap(px_loop *loop, px__uring *u);

/* An SQE for px's own requests, which must not wait on the overflow list:
 * submit what is queued to make room, reaping when the CQ pushes back. */
static struct io_uring_sqe *px__sqe_now(px_loop *loop, px__uring *u) {
  for (int tries = 0; tries < 1000; tries++) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (sqe != NULL)
      return sqe;
    if (px__enable(u) < 0)
      return NULL;
    px__guard_take(u);
    int r = io_uring_submit(&u->ring);
    if (r == -EBUSY || r == -EAGAIN)
      px__reap(loop, u);
  }
  return NULL;
}

/* The eventfd read goes into sqe. */
static void px__wake_prep(px__uring *u, struct io_uring_sqe *sqe) {
  io_uring_prep_read(sqe, u->wake_fd, &u->wake_buf, sizeof(u->wake_buf), 0);
  io_uring_sqe_set_data64(sqe, PX__UD_WAKE);
  u->wake_armed = true;
  u->wake_rearm = false;
}

/* Re-arms the eventfd read.  Called while reaping, so it never forces a
 * submit: without a free SQE the read is owed (wake_rearm), and the next
 * poll makes room for it before it waits. */
static void px__wake_arm(px__uring *u) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (sqe == NULL)
    u->wake_rearm = true;
  else
    px__wake_prep(u, sqe);
}

/* ---- Provided buffers. -------------------------------------------------
 *
 * A pool used by a pooled receive gets a provided-buffer ring (registered
 * at its first pooled receive; io_uring_register_buf_ring, 5.19+), and the
 * kernel picks a buffer from it when data arrives.  A buffer in the ring is
 * the kernel's to take: px_buf_get cannot hand it out, so the ring holds
 * only what pending receives need: one buffer per single-shot receive, or
 * every free buffer while a multishot receive runs (it keeps taking them).
 * The rest stay in the pool's free stack.  Buffers are lent when a receive
 * starts and when one comes back (released, or returned by a completion
 * that carried no data) while the ring is short; the kernel's choice comes
 * back in the CQE (IORING_CQE_F_BUFFER, the buffer id in the upper bits).
 * An empty ring makes the receive complete with ENOBUFS, at once or when
 * data arrives: the data stays in the socket.
 */
typedef struct px__ubr {
  struct io_uring_buf_ring *br;
  uint32_t mask;   /* ring entries - 1 */
  uint16_t bgid;   /* its buffer group */
  uint32_t avail;  /* lent buffers the kernel has not taken */
  uint32_t single; /* single-shot pooled receives in flight */
  uint32_t multi;  /* multishot ones */
  uint32_t cap;    /* the most the ring holds (grows on demand) */
} px__ubr;

/* The kernel takes ring buffers in the order they were added, so every
 * buffer in the ring gets used in turn: a ring of all 1024 buffers for
 * 10,000 idle connections would touch 4 MiB for nothing.  The ring holds
 * at most cap buffers, starting at PX__RING_CAP0 and doubling whenever a
 * receive found it empty while the pool still had free buffers (that
 * receive is then issued again instead of failing). */
#define PX__RING_CAP0 16u

static uint32_t px__ubr_want(const px_bufpool *p, const px__ubr *r) {
  uint32_t w = r->multi > 0 ? p->slots.capacity : r->single;
  return w < r->cap ? w : r->cap;
}

static void px__ubr_put(px_bufpool *p, px__ubr *r, uint32_t i, int at) {
  io_uring_buf_ring_add(r->br, px__buf_at(p, i), p->size, (unsigned short)i,
                        (int)r->mask, at);
  r->avail++;
}

/* Lends free buffers until the ring holds what pending receives want. */
static void px__ubr_top_up(px_bufpool *p) {
  px__ubr *r = p->bk;
  int added = 0;
  while (r->avail < px__ubr_want(p, r)) {
    uint32_t i = px__buf_lend(p);
    if (i == UINT32_MAX)
      break;
    px__ubr_put(p, r, i, added++);
  }
  if (added > 0)
    io_uring_buf_ring_advance(r->br, added);
}

static int px__ubr_attach(px__uring *u, px_bufpool *p) {
  if (p->bk != NULL)
    return 0;
  uint32_t entries = 1;
  while (entries < p->slots.capacity)
    entries <<= 1;
  px__ubr *r = px__calloc(1, sizeof(*r));
  void *mem = NULL;
  size_t len = entries * sizeof(struct io_uring_buf);
  if (r == NULL || posix_memalign(&mem, 4096, len) != 0) {
    px__free(r);
    return PX_ENOMEM;
  }
  memset(mem, 0, len);
  r->br = mem;
  r->mask = entries - 1;
  r->cap =
      p->slots.capacity < PX__RING_CAP0 ? p->slots.capacity : PX__RING_CAP0;
  r->bgid = u->next_bgid++;
  io_uring_buf_ring_init(r->br);
  struct io_uring_buf_reg reg;
  memset(&reg, 0, sizeof(reg));
  reg.ring_addr = (uint64_t)(uintptr_t)mem;
  reg.ring_entries = entries;
  reg.bgid = r->bgid;
  int e = io_uring_register_buf_ring(&u->ring, &reg, 0);
  if (e < 0) {
    free(mem);
    px__free(r);
    return e == -EINVAL ? PX_EOPNOTSUPP : px__errno(-e);
  }
  p->bk = r;
  return 0;
}

static bool px__uring_buf_returned(px_loop *loop, px_bufpool *p, uint32_t i) {
  (void)loop;
  px__ubr *r = p->bk;
  if (r == NULL || r->avail >= px__ubr_want(p, r))
    return false;
  px__buf_keep(p, i);
  px__ubr_put(p, r, i, 0);
  io_uring_buf_ring_advance(r->br, 1);
  return true;
}

static void px__uring_pool_release(px_loop *loop, px_bufpool *p) {
  px__ubr *r = p->bk;
  if (r == NULL)
    return;
  /* The ring's pages stay pinned by the kernel until this (or the ring's
   * exit); a failure here (another thread) leaves them to the exit. */
  io_uring_unregister_buf_ring(&px__u(loop)->ring, r->bgid);
  free(r->br);
  px__free(r);
  p->bk = NULL;
}

/* A pooled receive has started (+1) or ended (-1). */
/* No pooled receive of p is in flight: no request can take from its ring,
 * so the buffers still in it come back (the tail moves back over them;
 * the kernel's head is where the last taken one was). */
static void px__ubr_reclaim(px_bufpool *p, px__ubr *r) {
  uint16_t tail = r->br->tail;
  for (uint32_t k = 1; k <= r->avail; k++) {
    uint16_t at = (uint16_t)(tail - k) & (uint16_t)r->mask;
    px__buf_unlend(p, r->br->bufs[at].bid, false);
  }
  io_uring_smp_store_release(&r->br->tail, (uint16_t)(tail - r->avail));
  r->avail = 0;
}

static void px__ubr_count(px_op *op, int delta) {
  px_bufpool *p = op->buf;
  px__ubr *r = p->bk;
  if (op->flags & PX__F_MULTI)
    r->multi += (uint32_t)delta;
  else
    r->single += (uint32_t)delta;
  if (delta > 0)
    px__ubr_top_up(p);
  else if (r->single == 0 && r->multi == 0 && r->avail > 0)
    px__ubr_reclaim(p, r);
}

/* The buffer a CQE names goes out with its data, or back to the pool. */
static void *px__ubr_take(px_bufpool *p, uint32_t flags, int32_t res) {
  if (!(flags & IORING_CQE_F_BUFFER))
    return NULL;
  px__ubr *r = p->bk;
  uint32_t i = flags >> IORING_CQE_BUFFER_SHIFT;
  r->avail--;
  if (!px__buf_unlend(p, i, res > 0) || res <= 0)
    return NULL;
  return px__buf_at(p, i);
}

/* ---- Ops into SQEs. ---------------------------------------------------- */

static uint64_t px__off(px_op *op) {
  if (op->off != PX_CUR)
    return (uint64_t)op->off;
  return (op->flags & PX__F_CURPOS) ? (uint64_t)px__uop_of(op)->pos
                                    : (uint64_t)-1;
}

static PX__INLINE void px__prep_kind(struct io_uring_sqe *sqe, px_op *op) {
  int fd = (int)op->fd;
  switch (op->kind) {
    case PX__OP_READ:
      io_uring_prep_read(sqe, fd, op->buf, op->len, px__off(op));
      break;
    case PX__OP_WRITE:
      io_uring_prep_write(sqe, fd, op->buf, op->len, px__off(op));
      break;
    case PX__OP_READV:
      io_uring_prep_readv(sqe, fd, op->buf, op->len, px__off(op));
      break;
    case PX__OP_WRITEV:
      io_uring_prep_writev(sqe, fd, op->buf, op->len, px__off(op));
      break;
    case PX__OP_RECV:
      io_uring_prep_recv(sqe, fd, op->buf, op->len, 0);
      break;
    case PX__OP_RECV_POOLED: {
      px_bufpool *p = op->buf;
      px__ubr *r = p->bk;
      if (op->flags & PX__F_MULTI)
        io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
      else
        io_uring_prep_recv(sqe, fd, NULL, op->len, 0);
      sqe->flags |= IOSQE_BUFFER_SELECT;
      sqe->buf_group = r->bgid;
      /* With the ring short of buffers, the kernel's first try would fail
       * with ENOBUFS even with no data there: wait for data first. */
      if (r->avail < px__ubr_want(p, r))
        sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
      break;
    }
    case PX__OP_SEND:
      io_uring_prep_send(sqe, fd, op->buf, op->len, MSG_NOSIGNAL);
      break;
    case PX__OP_ACCEPT:
      io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
      break;
    case PX__OP_CONNECT: {
      const px_addr *a = op->buf;
      io_uring_prep_connect(sqe, fd, (const void *)a->storage, a->len);
      break;
    }
    case PX__OP_CLOSE:
      io_uring_prep_close(sqe, fd);
      break;
    case PX__OP_FSYNC:
      io_uring_prep_fsync(
          sqe, fd, (op->flags & PX__F_DATASYNC) ? IORING_FSYNC_DATASYNC : 0);
      break;
    case PX__OP_CANCEL:
      io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op->buf, 0);
      break;
    default: /* PX__OP_NOP */
      io_uring_prep_nop(sqe);
      break;
  }
}

/*
 * Free SQEs, and the next one taken: liburing's io_uring_sq_space_left and
 * io_uring_get_sqe, less their tests of IORING_SETUP_SQE128 and
 * IORING_SETUP_SQPOLL.  px sets neither flag (px__ring_init), so the
 * kernel moves the SQ head only inside io_uring_enter, on this thread, and
 * a plain read of it is enough.  Every op takes this path.
 */
static PX__INLINE unsigned px__sq_space(const px__uring *u) {
  const struct io_uring_sq *sq = &u->ring.sq;
  return sq->ring_entries - (sq->sqe_tail - IO_URING_READ_ONCE(*sq->khead));
}

/* The next SQE, which px__sq_space said is free. */
static PX__INLINE struct io_uring_sqe *px__sqe_take(px__uring *u) {
  struct io_uring_sq *sq = &u->ring.sq;
  unsigned tail = sq->sqe_tail;
  sq->sqe_tail = tail + 1;
  return &sq->sqes[tail & sq->ring_mask];
}

/* Fills sqe with op. */
static PX__INLINE void px__prep_sqe(struct io_uring_sqe *sqe, px_op *op) {
  px__prep_kind(sqe, op);
  io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)op | PX__UD_OP);
  px__uop_of(op)->bid = 0;
}

/* Fills the SQE of op; false when the SQ has no room for it. */
static PX__INLINE bool px__prep(px__uring *u, px_op *op) {
  if (px__sq_space(u) == 0)
    return false;
  px__prep_sqe(px__sqe_take(u), op);
  return true;
}

/* The kernel is done with op (or never got it). */
static void px__op_end(px__uring *u, px_op *op) {
  u->stream_writes -= px__may_sigpipe(op);
  if (op->kind == PX__OP_RECV_POOLED)
    px__ubr_count(op, -1);
}

static void px__ovf_push(px__uring *u, px_op *op) {
  px__uop_of(op)->on_ovf = 1;
  px__fifo_push(&u->ovf, op);
}

static px_op *px__ovf_pop(px__uring *u) {
  px_op *op = px__fifo_pop(&u->ovf);
  if (op != NULL)
    px__uop_of(op)->on_ovf = 0;
  return op;
}

/* Completes, without the kernel, the overflow ops that match.  A close
 * stays: it must still run, or the handle would leak. */
static void px__ovf_cancel(px_loop *loop, px__uring *u, bool all, px_fd fd) {
  px__fifo pending = u->ovf;
  u->ovf = (px__fifo){0};
  px_op *op;
  while ((op = px__fifo_pop(&pending)) != NULL) {
    px__uop_of(op)->on_ovf = 0;
    bool match = all ? op->kind != PX__OP_CLOSE
                     : px__kind_has_fd(op->kind) && op->fd == fd;
    if (match) {
      px__op_end(u, op);
      px__complete(loop, op, PX_ECANCELED);
    } else
      px__ovf_push(u, op);
  }
}

/* Moves overflow ops into the SQ, submitting to make room. */
static int px__ovf_flush(px_loop *loop, px__uring *u) {
  int stuck = 0;
  while (u->ovf.head != NULL) {
    if (px__prep(u, u->ovf.head)) {
      px__ovf_pop(u);
      continue;
    }
    /* A reap below may have started a queued write() that can raise
     * SIGPIPE (the next op of a handle): guarded before it goes in. */
    px__guard_take(u);
    int r = io_uring_submit(&u->ring);
    if (r == -EBUSY || r == -EAGAIN || r == 0) {
      px__reap(loop, u);
      if (++stuck > 64)
        return 0; /* the CQ is full of what the caller has not seen yet */
    } else if (r == -EEXIST || r == -EINVAL) {
      return PX_EBUSY; /* another thread's ring, as in px__uring_poll */
    } else if (r < 0 && r != -EINTR) {
      return px__errno(-r);
    }
  }
  return 0;
}

/* ---- The backend contract. --------------------------------------------- */

/* A pooled receive is about to start: its pool's buffer ring. */
static PX__NOINLINE int px__pooled_start(px__uring *u, px_op *op) {
  int r = px__ubr_attach(u, op->buf);
  if (r < 0)
    return r;
  px__ubr_count(op, +1);
  return 0;
}

/* An op on a handle opened for direct I/O enters the kernel now, with
 * whatever SQEs wait before it, instead of at the loop's next wait: it goes
 * to the device.  Measured against fio (one io_uring_enter per read),
 * O_DIRECT 4 KiB reads at QD 32: gathered into the next enter, px 44-47k
 * IOPS to fio's 52-56k; entered at once, 51-61k to fio's 44-56k
 * (bench/RESULTS.md), for ~0.7 us more system time per read.  Not
 * before the ring is enabled (the loop's first wait does that, in px_run
 * or px_wait, on its thread), not when the op went to the overflow list
 * (px__submit_slow), and not while a write that may raise SIGPIPE waits
 * unguarded in the SQ (outside px_run/px_wait, where px__uring_run_end
 * let the guard go): those go at the next wait as before.  An error
 * leaves the SQEs where they are, for that wait. */
static void px__submit_now(px__uring *u) {
  if (u->enabled && (u->stream_writes == 0 || u->guard_held))
    io_uring_submit(&u->ring);
}

/* px__uring_submit's every case. */
static PX__NOINLINE int px__submit_slow(px__uring *u, px_op *op) {
  if (op->kind == PX__OP_RECV_POOLED) {
    int r = px__pooled_start(u, op);
    if (r < 0)
      return r;
  }
  if (op->flags & PX__F_CURPOS) { /* see the notes on top */
    off_t pos = lseek((int)op->fd, 0, SEEK_CUR);
    if (pos < 0)
      return px__errno(errno);
    px__uop_of(op)->pos = pos;
  }
  u->stream_writes += px__may_sigpipe(op);
  if (u->ovf.head != NULL || !px__prep(u, op))
    px__ovf_push(u, op);
  else if (op->flags & PX__F_EAGER)
    px__submit_now(u);
  return 0;
}

/* The common case inline: one SQE, free, nothing waiting before it, no
 * buffer ring or SIGPIPE count to keep, and no hurry (PX__F_EAGER).  Kinds
 * with their own completion (PX__F_KIND: pooled receives, which need the
 * buffer ring, and accepts) take the slow path too, and so do ops at the
 * file position of a direct handle (PX__F_CURPOS: its lseek). */
static int px__uring_submit(px_loop *loop, px_op *op) {
  px__uring *u = px__u(loop);
  px__uop_of(op)->stop = 0;
  if ((op->flags & (PX__F_SIGPIPE | PX__F_EAGER | PX__F_KIND | PX__F_CURPOS)) ||
      u->ovf.head != NULL || px__sq_space(u) == 0)
    return px__submit_slow(u, op);
  px__prep_sqe(px__sqe_take(u), op);
  return 0;
}

/* An internal cancel of target, whose result nobody waits for. */
static void px__prep_cancel(struct io_uring_sqe *sqe, px_op *target) {
  io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)target, 0);
  io_uring_sqe_set_data64(sqe, PX__UD_IGNORE);
}

static void px__uring_cancel(px_loop *loop, px_op *target, px_op *cancel_op) {
  px__uring *u = px__u(loop);
  bool stopped = px__uop_of(target)->stop;
  px__uop_of(target)->stop = 1;
  if (px__uop_of(target)->on_ovf) {
    px__fifo_remove(&u->ovf, target);
    px__uop_of(target)->on_ovf = 0;
    px__op_end(u, target);
    px__complete(loop, target, PX_ECANCELED);
    if (cancel_op != NULL)
      px__complete(loop, cancel_op, 0);
    return;
  }
  if (cancel_op != NULL) {
    px__uring_submit(loop, cancel_op);
    return;
  }
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (sqe == NULL && !u->enabled) {
    /* Making room (px__sqe_now) would enable the ring, which binds it to
     * this thread: the loop may be run on another.  Once is enough. */
    if (!stopped)
      px__fifo_push(&u->cancel_later, target);
    return;
  }
  if (sqe == NULL)
    sqe = px__sqe_now(loop, u);
  if (sqe != NULL)
    px__prep_cancel(sqe, target);
}

static void px__cancel_fd_sqe(px_loop *loop, px__uring *u, px_fd fd) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (sqe == NULL && !u->enabled) {
    u->cancel_scan = true;
    return;
  }
  if (sqe == NULL)
    sqe = px__sqe_now(loop, u);
  if (sqe == NULL)
    return;
  io_uring_prep_cancel_fd(sqe, (int)fd, IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(sqe, PX__UD_IGNORE);
}

static void px__uring_cancel_fd(px_loop *loop, px_fd fd) {
  px__uring *u = px__u(loop);
  px__ovf_cancel(loop, u, false, fd);
  px__cancel_fd_sqe(loop, u, fd);
}

/* The cancels px_close could not queue before the ring was enabled. */
static void px__cancel_scan(px_loop *loop, px__uring *u) {
  u->cancel_scan = false;
  for (size_t i = 0; i < loop->nfds; i++) {
    px__fdent *e = &loop->fds[i];
    if (e->known && e->closing != NULL && e->started > 0)
      px__cancel_fd_sqe(loop, u, px__fd_at(i));
  }
}

/* The cancels px__cancel_op could not queue before the ring was enabled. */
static void px__cancel_later(px_loop *loop, px__uring *u) {
  px_op *target;
  while ((target = px__fifo_pop(&u->cancel_later)) != NULL) {
    struct io_uring_sqe *sqe = px__sqe_now(loop, u);
    if (sqe == NULL) {
      px__fifo_push_front(&u->cancel_later, target); /* the next poll */
      return;
    }
    px__prep_cancel(sqe, target);
  }
}

static void px__uring_cancel_all(px_loop *loop) {
  px__uring *u = px__u(loop);
  u->stopping = true;
  u->cancel_later = (px__fifo){0}; /* the cancel below covers them */
  px__ovf_cancel(loop, u, true, PX_INVALID_FD);
  struct io_uring_sqe *sqe = px__sqe_now(loop, u);
  if (sqe == NULL)
    return;
  io_uring_prep_cancel64(sqe, 0,
                         IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
  io_uring_sqe_set_data64(sqe, PX__UD_IGNORE);
}

/* A pooled receive's CQE: a delivery of a multishot op, or its own. */
static bool px__cqe_pooled(px_loop *loop, px_op *op, int32_t res,
                           uint32_t flags) {
  px_bufpool *p = op->buf;
  void *buf = px__ubr_take(p, flags, res);
  if (flags & IORING_CQE_F_MORE) { /* a multishot op goes on */
    if (buf != NULL)
      px__deliver(loop, op, res, buf);
    px__ubr_top_up(p);
    return true;
  }
  px__uop_of(op)->bid = buf ? px__buf_index(p, buf) + 1 : 0;
  return false;
}

/* The kernel picks a buffer before it looks at the socket, so a receive
 * that ran while the ring was empty fails with ENOBUFS whatever the socket
 * holds: data, the end of the stream, an error (a reset), or nothing yet
 * (it ran without waiting for data: another receive emptied the ring in
 * the same batch).  A peek tells them apart, as on the other backends:
 * -ENOBUFS only while data waits (or when there is no telling), 0, the
 * error, or -EAGAIN for nothing.  Once per completion: a peek that reports
 * an error also clears it. */
static int32_t px__pooled_enobufs(const px_op *op) {
  char byte;
  ssize_t n = recv((int)op->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0)
    return 0;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return -EAGAIN;
  if (n < 0 && errno != EINTR && errno != ENOTSOCK)
    return -errno;
  return -ENOBUFS;
}

/* A pooled receive that ended with *res: true when it goes again, else
 * *res is what it completes with.  After ENOBUFS it goes again when the
 * pool has free buffers (the ring grows), or when nothing waits in the
 * socket (with the ring short it then waits for data first): an idle
 * socket never reports PX_ENOBUFS.  Not when it was asked to stop (a
 * cancel, its deadline, a close of its handle, the loop's end): with
 * nothing waiting it is cancelled. */
static bool px__pooled_again(px_loop *loop, px__uring *u, px_op *op,
                             int32_t *res) {
  if (*res != -ENOBUFS)
    return false;
  px_bufpool *p = op->buf;
  px__ubr *r = p->bk;
  px__fdent *e = px__fd_get(loop, op->fd);
  bool stop =
      px__uop_of(op)->stop || u->stopping || e == NULL || e->closing != NULL;
  if (stop || (p->slots.nfree == 0 && r->avail == 0)) {
    int32_t v = px__pooled_enobufs(op);
    if (v != -EAGAIN || stop) {
      *res = v == -EAGAIN ? -ECANCELED : v;
      return false;
    }
  }
  /* Buffers may have gone into the ring since the kernel found it empty
   * (released, or topped up for another receive of the same reap); only a
   * ring short while the pool has free ones grows. */
  if (p->slots.nfree > 0 && r->cap < p->slots.capacity)
    r->cap = r->cap * 2 < p->slots.capacity ? r->cap * 2 : p->slots.capacity;
  px__ubr_top_up(p);
  if (u->ovf.head != NULL || !px__prep(u, op))
    px__ovf_push(u, op);
  return true;
}

/* A CQE that is not an op's own plain success: the eventfd, internal
 * cancels, pooled receives, accepts, ops with a deadline and errors.  Only
 * this function is long: it is the reaping loop's body. */
static PX__NOINLINE void px__cqe_slow(px_loop *loop, px__uring *u, uint64_t ud,
                                      int32_t res, uint32_t flags) {
  unsigned tag = ud & PX__UD_TAGS;
  if (tag == PX__UD_WAKE) {
    u->wake_armed = false;
    if (!u->stopping)
      px__wake_arm(u);
    px__wake_ack(loop);
    return;
  }
  if (tag == PX__UD_IGNORE)
    return;
  px_op *op = (px_op *)(uintptr_t)(ud & ~(uint64_t)PX__UD_TAGS);
  px__uop *uo = px__uop_of(op);
  if (op->kind == PX__OP_RECV_POOLED && px__cqe_pooled(loop, op, res, flags))
    return;
  if (op->kind == PX__OP_RECV_POOLED && px__pooled_again(loop, u, op, &res))
    return;
  px__op_end(u, op);
  /* A cancel (a deadline's among them) may interrupt an op the kernel runs
   * in a worker thread: EINTR there means cancelled. */
  if (res == -EINTR && uo->stop)
    res = -ECANCELED;
  if (res < 0)
    res = px__errno(-res);
  if (op->kind == PX__OP_RECV_POOLED) {
    px_bufpool *p = op->buf;
    void *buf = uo->bid ? px__buf_at(p, uo->bid - 1) : NULL;
    if (res == PX_ENOBUFS)
      px__buf_exhausted(p);
    px__complete_buf(loop, op, res, buf);
    px__ubr_top_up(p);
    return;
  }
  if (res < 0) {
    px__complete(loop, op, res);
    return;
  }
  if (op->kind == PX__OP_ACCEPT) {
    op->off = res;
    res = 0;
  }
  /* io_uring moved no position for it: see the notes on top. */
  if ((op->flags & PX__F_CURPOS) && res > 0)
    px__os_pos_advance(op, uo->pos, res);
  px__complete(loop, op, res);
}

/* One CQE.  The common case first: an op's own CQE, a success, of a kind
 * whose result needs no translation (not pooled, not an accept), no
 * SIGPIPE count to drop, a plain completion for the core (no deadline in
 * its heap).  It ends as px__cqe_slow would: the kernel is done with the
 * op (px__op_end has nothing to do) and it completes, inside px_run's
 * wait straight to its callback when nothing waits before it (the reaping
 * loop above is written for callbacks that submit). */
static inline void px__cqe(px_loop *loop, px__uring *u, uint64_t ud,
                           int32_t res, uint32_t flags) {
  px_op *op = (px_op *)(uintptr_t)ud;
  if ((ud & PX__UD_TAGS) == PX__UD_OP && res >= 0 &&
      !(op->flags & (PX__F_SIGPIPE | PX__F_CURPOS)) && px__is_plain(op)) {
    px__complete_direct(loop, op, res);
    return;
  }
  px__cqe_slow(loop, u, ud, res, flags);
}

/*
 * Reaps every CQE in one pass.  Each CQE is copied out and the CQ head
 * moved past it before it is handled: handling a completion may submit
 * (the next op of a handle), and should that ever enter the ring and reap
 * (px__sqe_now), the inner reap starts after it instead of seeing it
 * twice.  So the head is read back after each CQE, and the loop runs while
 * it is before the tail seen (an inner reap may have gone past it).
 */
static void px__reap(px_loop *loop, px__uring *u) {
  struct io_uring_cq *cq = &u->ring.cq;
  for (;;) {
    unsigned head = IO_URING_READ_ONCE(*cq->khead);
    unsigned tail = io_uring_smp_load_acquire(cq->ktail);
    if (head == tail) {
      /* Completions the kernel kept aside because the CQ was full. */
      if (!io_uring_cq_has_overflow(&u->ring) || !u->enabled ||
          io_uring_get_events(&u->ring) < 0 || io_uring_cq_ready(&u->ring) == 0)
        return;
      continue;
    }
    do {
      /* No IORING_SETUP_CQE32 (px__ring_init): a CQE is 16 bytes. */
      const struct io_uring_cqe *cqe = &cq->cqes[head & cq->ring_mask];
      uint64_t ud = cqe->user_data;
      int32_t res = cqe->res;
      uint32_t flags = cqe->flags;
      io_uring_smp_store_release(cq->khead, head + 1);
      px__cqe(loop, u, ud, res, flags);
      head = IO_URING_READ_ONCE(*cq->khead);
    } while ((int)(tail - head) > 0);
    /* Callbacks straight from here only for the CQEs there when the reap
     * began: those their submits bring (an eager op, an enter to make room
     * in the SQ, an inline completion) go to the ready list, so that
     * callbacks that keep bringing more cannot hold the loop here. */
    loop->direct = false;
  }
}

static int px__uring_poll(px_loop *loop, int64_t timeout_ns) {
  px__uring *u = px__u(loop);
  /* Callbacks run from a reaping loop (px__complete_direct) only in the
   * reap after the wait: the cancel scan and the overflow flush may reap
   * too, before the guard below covers what a callback may submit. */
  bool direct = loop->direct;
  loop->direct = false;
  int r = px__enable(u);
  if (r < 0)
    return r;
  px__guard_take(u); /* before anything below may submit a pipe write */
  if (u->wake_rearm && !u->stopping) {
    /* The SQ was full when the read came back, and may still be (the
     * callbacks of that reap filled it): room is made now, or a wakeup
     * written from here on would find no read in the ring and the wait
     * below would sleep through it. */
    struct io_uring_sqe *sqe = px__sqe_now(loop, u);
    if (sqe != NULL)
      px__wake_prep(u, sqe);
  }
  if (u->cancel_scan)
    px__cancel_scan(loop, u);
  if (u->cancel_later.head != NULL)
    px__cancel_later(loop, u);
  r = px__ovf_flush(loop, u);
  if (r < 0)
    return r;
  px__guard_take(u); /* the flush may have started more */
  /* Completions or a wakeup the flush reaped, or no read armed for the
   * next wakeup (no room could be made above): no blocking. */
  if (timeout_ns == 0 || io_uring_cq_ready(&u->ring) > 0 ||
      loop->ready.head != NULL || loop->woken ||
      (u->wake_rearm && !u->stopping)) {
    r = io_uring_submit_and_get_events(&u->ring);
  } else {
    struct __kernel_timespec ts, *tp = NULL;
    if (timeout_ns > 0) {
      ts.tv_sec = timeout_ns / 1000000000;
      ts.tv_nsec = timeout_ns % 1000000000;
      tp = &ts;
    }
    struct io_uring_cqe *cqe;
    r = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, tp, NULL);
  }
  /* ETIME: the wait timed out; EINTR: a signal; EBUSY/EAGAIN: the CQ is
   * full or the kernel is short of memory for a moment.  Reaping below
   * makes progress in each case. */
  /* The ring belongs to another thread: SINGLE_ISSUER says EEXIST, a ring
   * fd registered by that thread EINVAL. */
  if (r == -EEXIST || r == -EINVAL)
    return PX_EBUSY;
  if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN)
    return px__errno(-r);
  loop->direct = direct;
  px__reap(loop, u);
  return 0;
}

static void px__uring_wakeup(px_loop *loop) {
  uint64_t one = 1;
  ssize_t n;
  do {
    n = write(px__u(loop)->wake_fd, &one, sizeof(one));
  } while (n < 0 && errno == EINTR);
}

/* From a callback: the rest of the wait's CQEs (those after a callback run
 * straight from the reap), and any that came since, go to the ready list:
 * depth > 0, so px__complete_direct runs nothing.  The reap that ran the
 * callback reads the head back and carries on after them. */
static void px__uring_settle(px_loop *loop) {
  px__uring *u = px__u(loop);
  if (!u->enabled)
    return;
  px__guard_take(u); /* the reap may enter the kernel (CQ overflow) */
  px__reap(loop, u);
}

static void px__uring_run_end(px_loop *loop) {
  px__uring *u = px__u(loop);
  /* With DEFER_TASKRUN a started write can raise SIGPIPE only inside an
   * enter; otherwise task work may run at any kernel entry of the thread. */
  if (u->defer_taskrun || u->stream_writes == 0)
    px__guard_drop(u);
}

static int px__uring_adopt(px_loop *loop, px_fd fd) {
  (void)loop;
  int fl = fcntl((int)fd, F_GETFL);
  if (fl < 0)
    return px__errno(errno);
  if ((fl & O_NONBLOCK) && fcntl((int)fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
    return px__errno(errno);
  return 0;
}

static int px__ring_init(px__uring *u, unsigned entries) {
  static const unsigned tries[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
          IORING_SETUP_R_DISABLED | IORING_SETUP_SUBMIT_ALL,
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
      0,
  };
  int r = -EINVAL;
  for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = tries[i];
    r = io_uring_queue_init_params(entries, &u->ring, &p);
    if (r == 0) {
      u->enabled = !(tries[i] & IORING_SETUP_R_DISABLED);
      u->defer_taskrun = tries[i] & IORING_SETUP_DEFER_TASKRUN;
      return 0;
    }
    if (r != -EINVAL)
      break;
  }
  px__init_why("io_uring_queue_init");
  return px__errno(-r);
}

/* ---- What the kernel offers. ------------------------------------------- */

#define PX__OP(x)                                                              \
  { IORING_OP_##x, "IORING_OP_" #x }
/* The opcodes of px's requests, and SOCKET for the rest of 5.19 (see the
 * notes at the top). */
static const struct {
  uint8_t op;
  const char *name;
} px__needs[] = {
    PX__OP(NOP),     PX__OP(READ),  PX__OP(WRITE), PX__OP(READV),
    PX__OP(WRITEV),  PX__OP(RECV),  PX__OP(SEND),  PX__OP(ACCEPT),
    PX__OP(CONNECT), PX__OP(CLOSE), PX__OP(FSYNC), PX__OP(ASYNC_CANCEL),
    PX__OP(SOCKET),
};

const char *px__uring_probe_check(const struct io_uring_probe *p,
                                  bool *multishot) {
  *multishot = false;
  for (size_t i = 0; i < sizeof(px__needs) / sizeof(px__needs[0]); i++)
    if (!io_uring_opcode_supported(p, px__needs[i].op))
      return px__needs[i].name;
  *multishot = io_uring_opcode_supported(p, IORING_OP_SEND_ZC);
  return NULL;
}

void (*px__uring_probe_hook)(struct io_uring_probe *p);

/* 0 when the kernel has what px needs, else PX_ENOSYS (or the probe's own
 * failure) with the reason given to px__init_why. */
static int px__probe(px__uring *u) {
  enum { OPS = 256 };
  _Alignas(struct io_uring_probe) unsigned char
      mem[sizeof(struct io_uring_probe) +
          OPS * sizeof(struct io_uring_probe_op)];
  struct io_uring_probe *p = (struct io_uring_probe *)(void *)mem;
  memset(mem, 0, sizeof(mem));
  int r = io_uring_register_probe(&u->ring, p, OPS);
  if (r < 0) {
    /* EINVAL: a kernel before 5.6, which has no probe. */
    px__init_why("IORING_REGISTER_PROBE");
    return r == -EINVAL ? PX_ENOSYS : px__errno(-r);
  }
  if (px__uring_probe_hook != NULL)
    px__uring_probe_hook(p);
  const char *missing = px__uring_probe_check(p, &u->multishot);
  if (missing == NULL)
    return 0;
  px__init_why(missing);
  return PX_ENOSYS;
}

static unsigned px__uring_loop_caps(const px_loop *loop) {
  const px__uring *u = loop->bk;
  return u->multishot ? PX__URING_CAPS : PX__URING_CAPS & ~PX_CAP_MULTISHOT;
}

static int px__uring_init(px_loop *loop, const px_loop_opts *opts) {
  px__uring *u = px__calloc(1, sizeof(*u));
  if (u == NULL)
    return PX_ENOMEM;
  u->wake_fd = eventfd(0, EFD_CLOEXEC);
  if (u->wake_fd < 0) {
    int r = px__errno(errno);
    px__init_why("eventfd");
    px__free(u);
    return r;
  }
  /* At least 4 SQEs (and so 8 CQEs): the eventfd read may hold one. */
  unsigned entries = opts->entries ? opts->entries : 256;
  entries = entries < 4 ? 4 : entries > 32768 ? 32768 : entries;
  int r = px__ring_init(u, entries);
  if (r == 0) {
    r = px__probe(u);
    if (r < 0)
      io_uring_queue_exit(&u->ring);
  }
  if (r < 0) {
    close(u->wake_fd);
    px__free(u);
    return r;
  }
  loop->bk = u;
  px__wake_arm(u);
  return 0;
}

static void px__uring_destroy(px_loop *loop) {
  px__uring *u = px__u(loop);
  /* cancel_all asked the eventfd read to stop; its buffer lives in u, so
   * wait for that completion before letting go of u. */
  for (int i = 0; u->wake_armed && u->enabled && i < 100; i++) {
    struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 10000000};
    struct io_uring_cqe *cqe;
    int r = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
    if (r == -EEXIST || r == -EINVAL)
      break; /* freed by another thread: the ring's exit cancels the read */
    px__reap(loop, u);
  }
  io_uring_queue_exit(&u->ring);
  px__guard_drop(u);
  close(u->wake_fd);
  px__free(u);
  loop->bk = NULL;
}

const px__backend px__backend_uring = {
    .name = "uring",
    .caps = PX__URING_CAPS,
    .init = px__uring_init,
    .loop_caps = px__uring_loop_caps,
    .destroy = px__uring_destroy,
    .adopt = px__uring_adopt,
    .submit = px__uring_submit,
    .cancel = px__uring_cancel,
    .cancel_fd = px__uring_cancel_fd,
    .cancel_all = px__uring_cancel_all,
    .poll = px__uring_poll,
    .wakeup = px__uring_wakeup,
    .run_end = px__uring_run_end,
    .settle = px__uring_settle,
    .buf_returned = px__uring_buf_returned,
    .pool_release = px__uring_pool_release,
};
