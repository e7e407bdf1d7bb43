/*
 * Handles entering and leaving a loop, the same on every platform: the
 * sock_*.c files create them, these make them known or let them go.
 */
#include "internal.h"

int px__own(px_loop *loop, px_fd fd, bool stream, px_fd *out) {
  int r = PX__BK(loop)->adopt(loop, fd);
  if (r == 0)
    r = px__fd_register(loop, fd, stream);
  if (r < 0) {
    px__os_close(fd);
    return r;
  }
  *out = fd;
  return 0;
}

int px__own_pair(px_loop *loop, px_fd a, px_fd b, px_fd out[2]) {
  int r = px__own(loop, a, true, &out[0]);
  if (r < 0) {
    px__os_close(b);
    return r;
  }
  r = px__own(loop, b, true, &out[1]);
  if (r < 0) {
    px_fd_close(loop, out[0]);
    return r;
  }
  return 0;
}

static bool px__fd_busy(const px__fdent *e) {
  return e->started || e->closing || e->waiting[0].tail || e->waiting[1].tail;
}

/* fd's entry, NULL if unknown; busy: ops on it are in flight.  Inside a
 * callback, ops whose completions have arrived count as finished: the
 * backend reports those first (io_uring may run a callback before the rest
 * of the same wait's completions were reaped). */
static px__fdent *px__fd_settled(px_loop *loop, px_fd fd, bool *busy) {
  px__fdent *e = px__fd_get(loop, fd);
  if (e != NULL && e->started && loop->depth > 0 &&
      PX__BK(loop)->settle != NULL) {
    PX__BK(loop)->settle(loop);
    e = px__fd_get(loop, fd);
  }
  *busy = e != NULL && px__fd_busy(e);
  return e;
}

int px__fd_closable(px_loop *loop, px_fd fd) {
  if (fd < 0)
    return PX_EBADF;
  if (loop == NULL)
    return 0;
  bool busy;
  px__fdent *e = px__fd_settled(loop, fd, &busy);
  if (e != NULL && e->closing != NULL)
    return PX_EBADF; /* not known since px_close, which closes it */
  return busy ? PX_EBUSY : 0;
}

int px_fd_close(px_loop *loop, px_fd fd) {
  int r = px__fd_closable(loop, fd);
  if (r < 0)
    return r;
  if (loop != NULL) {
    if (px__fd_get(loop, fd) != NULL && PX__BK(loop)->release != NULL)
      PX__BK(loop)->release(loop, fd);
    px__fd_forget(loop, fd);
  }
  return px__os_close(fd);
}

int px_fd_release(px_loop *loop, px_fd fd) {
  if (loop == NULL)
    return PX_EINVAL;
  bool busy;
  px__fdent *e = px__fd_settled(loop, fd, &busy);
  if (e == NULL || e->closing != NULL)
    return PX_EBADF; /* unknown, or not known since px_close */
  if (busy)
    return PX_EBUSY;
#ifdef _WIN32
  return PX_EOPNOTSUPP; /* a completion port keeps a handle for good */
#else
  if (PX__BK(loop)->release != NULL)
    PX__BK(loop)->release(loop, fd);
  px__fd_forget(loop, fd);
  return 0;
#endif
}

bool px__open_flags_ok(unsigned flags) {
  const unsigned known =
      0x3u | PX_O_CREAT | PX_O_TRUNC | PX_O_EXCL | PX_O_APPEND | PX_O_DIRECT;
  return (flags & ~known) == 0 && (flags & 0x3u) != 0x3u;
}
