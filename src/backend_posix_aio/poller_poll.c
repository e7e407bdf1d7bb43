/*
 * poll(), level-triggered, POSIX only.  The pollfd array holds px's own
 * wake descriptors and exactly the fds that have an op waiting, with the
 * directions they wait for: an fd nobody waits on must not be in it, or poll()
 * would report it ready over and over.  pos[fd] is its index + 1, so adding,
 * changing and removing an entry are O(1) (removal moves the last entry into
 * the hole).  Each wait costs O(watched fds) in the kernel: the price of
 * portability.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>

#include "core/internal.h"
#include "poller.h"

struct px__poller {
  struct pollfd *pfds;
  px__pev *out; /* fired entries, copied out so the array may change */
  size_t n, cap;
  uint32_t *pos; /* by fd: index in pfds + 1, 0 when absent */
  size_t npos;
};

const char px__poller_name[] = "poll";
const int px__poller_edge = 0;

int px__poller_new(px__poller **out) {
  px__poller *p = px__calloc(1, sizeof(*p));
  if (p == NULL)
    return PX_ENOMEM;
  *out = p;
  return 0;
}

void px__poller_free(px__poller *p) {
  px__free(p->pfds);
  px__free(p->out);
  px__free(p->pos);
  px__free(p);
}

static int px__grow_pos(px__poller *p, size_t fd) {
  size_t n = p->npos ? p->npos : 64;
  while (n <= fd)
    n *= 2;
  uint32_t *a = px__realloc(p->pos, n * sizeof(*a));
  if (a == NULL)
    return PX_ENOMEM;
  memset(a + p->npos, 0, (n - p->npos) * sizeof(*a));
  p->pos = a;
  p->npos = n;
  return 0;
}

static int px__grow_fds(px__poller *p) {
  size_t cap = p->cap ? p->cap * 2 : 64;
  struct pollfd *f = px__realloc(p->pfds, cap * sizeof(*f));
  if (f == NULL)
    return PX_ENOMEM;
  p->pfds = f;
  px__pev *o = px__realloc(p->out, cap * sizeof(*o));
  if (o == NULL)
    return PX_ENOMEM;
  p->out = o;
  p->cap = cap;
  return 0;
}

static void px__remove(px__poller *p, int fd) {
  uint32_t i = p->pos[fd] - 1;
  p->pos[fd] = 0;
  if (i != p->n - 1) {
    p->pfds[i] = p->pfds[p->n - 1];
    p->pos[p->pfds[i].fd] = i + 1;
  }
  p->n--;
}

int px__poller_want(px__poller *p, int fd, unsigned want) {
  if ((size_t)fd >= p->npos) {
    if (want == 0)
      return 0;
    int r = px__grow_pos(p, (size_t)fd);
    if (r < 0)
      return r;
  }
  short events = (short)(((want & PX__IN) ? POLLIN : 0) |
                         ((want & PX__OUT) ? POLLOUT : 0));
  if (p->pos[fd] != 0) {
    if (events == 0)
      px__remove(p, fd);
    else
      p->pfds[p->pos[fd] - 1].events = events;
    return 0;
  }
  if (events == 0)
    return 0;
  if (p->n == p->cap) {
    int r = px__grow_fds(p);
    if (r < 0)
      return r;
  }
  p->pfds[p->n] = (struct pollfd){.fd = fd, .events = events};
  p->pos[fd] = (uint32_t)++p->n;
  return 0;
}

int px__poller_watch_in(px__poller *p, int fd) {
  return px__poller_want(p, fd, PX__IN);
}

void px__poller_forget(px__poller *p, int fd) {
  if (fd >= 0 && (size_t)fd < p->npos && p->pos[fd] != 0)
    px__remove(p, fd);
}

int px__poller_wait(px__poller *p, int timeout_ms, px__pev **out) {
  int n = poll(p->pfds, (nfds_t)p->n, timeout_ms);
  if (n < 0)
    return errno == EINTR ? 0 : px__errno(errno);
  int k = 0;
  for (size_t i = 0; i < p->n && k < n; i++) {
    short e = p->pfds[i].revents;
    if (e == 0)
      continue;
    unsigned ev = 0;
    if (e & (POLLIN | POLLERR | POLLHUP | POLLNVAL))
      ev |= PX__IN;
    if (e & (POLLOUT | POLLERR | POLLHUP | POLLNVAL))
      ev |= PX__OUT;
    if (e & (POLLERR | POLLHUP | POLLNVAL))
      ev |= PX__HUP;
    p->out[k].fd = p->pfds[i].fd;
    p->out[k].ev = ev;
    k++;
  }
  *out = p->out;
  return k;
}
