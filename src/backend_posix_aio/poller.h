/*
 * The readiness poller under the posix_aio backend: epoll where present,
 * plain poll() anywhere (meson option posix_poller).  Both answer the same
 * question — which descriptors may read or write now — in one shape, so the
 * backend's readiness emulation is written once.
 *
 * Interest is level-style: the backend says which directions an fd waits
 * for (px__poller_want) whenever that changes.  An edge-triggered poller
 * (epoll) may keep an fd registered for both directions from its first use
 * to its px__poller_forget; the backend keeps "ready" bits of its own and
 * clears them only when a call says EAGAIN (or a read comes back short on
 * a byte stream that the read drained: see px__poller_edge), so either
 * kind is correct.
 */
#ifndef PX_POSIX_AIO_POLLER_H
#define PX_POSIX_AIO_POLLER_H

#include <stdint.h>

#define PX__IN 1u
#define PX__OUT 2u
#define PX__HUP 4u /* hang-up, error or peer's shutdown: reads end at once */
#define PX__PRI 8u /* urgent data (TCP's out-of-band byte) arrived */

typedef struct px__poller px__poller;

/* One fired descriptor: PX__IN and/or PX__OUT (errors and hang-ups count
 * as both, so the next call on the fd reports them), and PX__HUP. */
typedef struct px__pev {
  int fd;
  unsigned ev;
} px__pev;

int px__poller_new(px__poller **out);
void px__poller_free(px__poller *p);
/* Sets the directions fd waits for (0: none).  0 or a PX_E* code;
 * PX_EPERM means the fd cannot be polled (a regular file, /dev/null). */
int px__poller_want(px__poller *p, int fd, unsigned want);
/* Watches one of px's own descriptors (an eventfd or pipe it drains
 * completely on each event) for input only, for good. */
int px__poller_watch_in(px__poller *p, int fd);
/* fd is about to be closed: drop it. */
void px__poller_forget(px__poller *p, int fd);
/* Waits up to timeout_ms (-1: no limit) and points *out at the fired
 * descriptors (valid until the next call).  Returns their number, 0 on
 * timeout or a signal, or a PX_E* code. */
int px__poller_wait(px__poller *p, int timeout_ms, px__pev **out);
/* "epoll" or "poll". */
extern const char px__poller_name[];
/* 1: readiness comes as edges (epoll): an fd is reported once per change,
 * so bytes left queued after a read that was taken to have drained them
 * raise no event.  0: as levels (poll): the next wait reports them. */
extern const int px__poller_edge;

#endif
