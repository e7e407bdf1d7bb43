/*
 * epoll, edge-triggered.  An fd is added once, for both directions, the
 * first time an op on it has to wait, and stays until it is forgotten: no
 * epoll_ctl per op.  EPOLL_CTL_ADD reports readiness that already exists,
 * so nothing that happened before the add is missed.  The fd is deleted
 * explicitly before it is closed: epoll watches the open file description,
 * which a forked child or a dup may keep alive after px closes its number.
 */
#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/internal.h"
#include "poller.h"

#define PX__EPOLL_BATCH 256

struct px__poller {
  int epfd;
  uint8_t *added; /* by fd: registered with epfd */
  size_t nadded;
  struct epoll_event evs[PX__EPOLL_BATCH];
  px__pev out[PX__EPOLL_BATCH];
};

const char px__poller_name[] = "epoll";
const int px__poller_edge = 1;

int px__poller_new(px__poller **out) {
  px__poller *p = px__calloc(1, sizeof(*p));
  if (p == NULL)
    return PX_ENOMEM;
  p->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (p->epfd < 0) {
    int r = px__errno(errno);
    px__free(p);
    return r;
  }
  *out = p;
  return 0;
}

void px__poller_free(px__poller *p) {
  close(p->epfd);
  px__free(p->added);
  px__free(p);
}

static int px__grow(px__poller *p, size_t fd) {
  size_t n = p->nadded ? p->nadded : 64;
  while (n <= fd)
    n *= 2;
  uint8_t *a = px__realloc(p->added, n);
  if (a == NULL)
    return PX_ENOMEM;
  memset(a + p->nadded, 0, n - p->nadded);
  p->added = a;
  p->nadded = n;
  return 0;
}

int px__poller_want(px__poller *p, int fd, unsigned want) {
  if (want == 0 || ((size_t)fd < p->nadded && p->added[fd]))
    return 0;
  if ((size_t)fd >= p->nadded) {
    int r = px__grow(p, (size_t)fd);
    if (r < 0)
      return r;
  }
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP |
                                     EPOLLPRI | EPOLLET,
                           .data.fd = fd};
  if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 && errno != EEXIST)
    return px__errno(errno);
  p->added[fd] = 1;
  return 0;
}

int px__poller_watch_in(px__poller *p, int fd) {
  /* Input only: an eventfd is always writable, and an EPOLLOUT edge after
   * each drain would end every wait at once. */
  if ((size_t)fd >= p->nadded) {
    int r = px__grow(p, (size_t)fd);
    if (r < 0)
      return r;
  }
  struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = fd};
  if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
    return px__errno(errno);
  p->added[fd] = 1;
  return 0;
}

void px__poller_forget(px__poller *p, int fd) {
  if (fd < 0 || (size_t)fd >= p->nadded || !p->added[fd])
    return;
  p->added[fd] = 0;
  struct epoll_event ev = {0}; /* kernels before 2.6.9 want one */
  epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, &ev);
}

int px__poller_wait(px__poller *p, int timeout_ms, px__pev **out) {
  int n = epoll_wait(p->epfd, p->evs, PX__EPOLL_BATCH, timeout_ms);
  if (n < 0)
    return errno == EINTR ? 0 : px__errno(errno);
  for (int i = 0; i < n; i++) {
    uint32_t e = p->evs[i].events;
    unsigned ev = 0;
    if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
      ev |= PX__IN;
    if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))
      ev |= PX__OUT;
    if (e & (EPOLLERR | EPOLLHUP | EPOLLRDHUP))
      ev |= PX__HUP | PX__IN;
    if (e & EPOLLPRI)
      ev |= PX__PRI | PX__IN;
    p->out[i].fd = p->evs[i].data.fd;
    p->out[i].ev = ev;
  }
  *out = p->out;
  return n;
}
