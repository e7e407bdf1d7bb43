/*
 * The one contract every backend implements.
 *
 * The core validates arguments, keeps per-handle queues (stream ordering,
 * close-after-drain), timers, deadlines for ops that wait in those queues,
 * posts and statistics.  A backend only turns an op into a kernel request
 * and a kernel completion back into px__complete(loop, op, result).
 *
 * Each backend exposes one const table of these functions.  A library built
 * with a single backend calls it directly (PX__ONLY_BACKEND names the table,
 * so the compiler sees through the indirection); a library with several
 * keeps the chosen table in the loop (choose.c picks it).
 */
#ifndef PX_CORE_BACKEND_H
#define PX_CORE_BACKEND_H

#include "px.h"

typedef struct px__backend {
  const char *name;
  unsigned caps; /* PX_CAP_*: the most it does (see loop_caps) */

  /* Sets loop->bk.  Returns 0 or a PX_E* code (nothing left allocated).
   * PX_ENOSYS, PX_EPERM, PX_EACCES and PX_EOPNOTSUPP say that the
   * mechanism itself is not available here (not in the kernel, refused by
   * policy, short of something px needs), and only they: a loop that did
   * not name its backend then tries the next one.  Before returning an
   * error, init may name the step that failed with px__init_why. */
  int (*init)(px_loop *loop, const px_loop_opts *opts);
  /* Optional (may be NULL): this loop's caps, when the kernel found by
   * init offers less than caps. */
  unsigned (*loop_caps)(const px_loop *loop);
  /* Called with no op in flight. */
  void (*destroy)(px_loop *loop);
  /* Prepares a handle the core is about to make known (blocking mode,
   * completion port association, ...).  Not called for a handle produced
   * by an ACCEPT: the backend hands that one over ready to use, in op->off
   * with result 0. */
  int (*adopt)(px_loop *loop, px_fd fd);
  /* Optional (may be NULL): px_fd_close is about to close fd, which has no
   * op in flight; per-handle state goes.  (A CLOSE op does the same inside
   * submit.) */
  void (*release)(px_loop *loop, px_fd fd);

  /*
   * Starts op.  Kinds: READ, WRITE, READV, WRITEV, RECV, SEND, ACCEPT,
   * CONNECT, CLOSE, FSYNC, NOP.  Stream ops arrive one per handle and
   * direction.  op->when holds an absolute deadline (px__now_ns clock) when
   * PX__F_DEADLINE is set and the backend has PX_CAP_KERNEL_DEADLINE; without
   * that cap the core enforces deadlines through cancel().  Returns 0 (op
   * will complete through px__complete exactly once, never from inside
   * this call: a result known at once is reported at the next poll) or a
   * PX_E* code (op did not start).  PX__F_SIGPIPE marks a write to a
   * handle that is not a regular file, which may raise SIGPIPE.  A loop
   * whose loop_caps lack PX_CAP_MULTISHOT clears PX__F_MULTI from a pooled
   * receive here: it then completes once, like one without the flag.
   */
  int (*submit)(px_loop *loop, px_op *op);
  /* Asks target (started by submit) to complete with PX_ECANCELED.  When
   * cancel_op is not NULL it completes too: 0, PX_ENOENT or PX_EALREADY. */
  void (*cancel)(px_loop *loop, px_op *target, px_op *cancel_op);
  /* Asks every started op on fd to complete (px_close). */
  void (*cancel_fd)(px_loop *loop, px_fd fd);
  /* Asks every started op to complete (px_loop_free). */
  void (*cancel_all)(px_loop *loop);

  /* Hands started ops to the kernel, waits up to timeout_ns (-1: no limit,
   * 0: not at all) for completions and reports them.  Returns 0 or a PX_E*
   * code for a failure of the wait itself. */
  int (*poll)(px_loop *loop, int64_t timeout_ns);
  /* Thread-safe: makes a poll in progress (or the next one) return; the
   * backend then calls px__wake_ack(loop). */
  void (*wakeup)(px_loop *loop);
  /* Optional (may be NULL): px_run or px_wait is about to return to the
   * program; per-thread state held across polls can be let go. */
  void (*run_end)(px_loop *loop);
  /* Optional (may be NULL): called from inside a callback, reports the
   * completions that have arrived and were not reported yet (px__complete
   * puts them on the ready list; no callback runs).  For a backend that
   * may run a callback before it reported the rest of its wait's
   * completions (px__complete_direct), so that px_fd_close and
   * px_fd_release count those ops as finished, as other backends do. */
  void (*settle)(px_loop *loop);

  /* Pools (both optional, may be NULL).  buf_returned: buffer i of pool
   * (tagged out) is free again, released by the program or by a delivery
   * nobody took; return true after px__buf_keep(pool, i) to keep it lent,
   * false to let it go back to the free stack.  pool_release: the pool goes
   * (px_bufpool_free with nothing in flight, or px_loop_free): drop
   * pool->bk; lent buffers become free. */
  bool (*buf_returned)(px_loop *loop, px_bufpool *pool, uint32_t i);
  void (*pool_release)(px_loop *loop, px_bufpool *pool);
} px__backend;

/* ---- What the core offers a backend. ---------------------------------- */

/* Reports op complete with result (>= 0 or a PX_E* code). */
void px__complete(px_loop *loop, px_op *op, int32_t result);
/* A pooled receive (PX__OP_RECV_POOLED) completes: buf is the buffer of
 * op's pool holding result > 0 bytes (tagged out), or NULL.  For a
 * multishot op this is its last delivery. */
void px__complete_buf(px_loop *loop, px_op *op, int32_t result, void *buf);
/* A multishot op delivers result > 0 bytes in buf and stays in flight. */
void px__deliver(px_loop *loop, px_op *op, int32_t result, void *buf);
/* Reports that a wakeup requested through backend->wakeup arrived. */
void px__wake_ack(px_loop *loop);
/* init's failing step, for PX_DEBUG's line ("io_uring_queue_init"): a
 * string that lives as long as the program. */
void px__init_why(const char *step);
/* Maps a POSIX errno value (positive) to a PX_E* code. */
int px__errno(int err);
/* Monotonic clock in nanoseconds. */
int64_t px__now_ns(void);

#endif
