/*
 * The loop's table of known handles (lookup: px__fd_get in internal.h).
 * The table grows when a larger handle appears, never on the submit path
 * of a handle already known.
 */
#include <string.h>

#include "internal.h"

size_t px__fd_table_size(void) {
  /* A replaced allocator has no lazy calloc: the table would be written
   * whole, so it starts small and doubles. */
  size_t n = px__alloc_default() ? px__os_fd_limit() : 64;
  return n < 64 ? 64 : n > ((size_t)1 << 20) ? (size_t)1 << 20 : n;
}

/*
 * Entries up to need exist and are zeroed.  The first allocation has room
 * for every descriptor the process may open, zeroed by calloc (fresh pages
 * the program never touched cost no memory), so a table that fills up is
 * never copied: an idle connection costs its one entry.  Beyond that
 * (Windows handles, a raised limit) the table doubles.
 */
static int px__fd_grow(px_loop *loop, size_t need) {
  if (loop->fds_cap == 0) {
    size_t n = px__fd_table_size();
    while (n < need)
      n *= 2;
    loop->fds = px__calloc(n, sizeof(*loop->fds));
    if (loop->fds == NULL)
      return PX_ENOMEM;
    loop->fds_cap = n;
  } else if (need > loop->fds_cap) {
    size_t n = loop->fds_cap;
    while (n < need)
      n *= 2;
    px__fdent *t = px__realloc(loop->fds, n * sizeof(*t));
    if (t == NULL)
      return PX_ENOMEM;
    loop->fds = t;
    loop->fds_cap = n;
  }
  memset(loop->fds + loop->nfds, 0, (need - loop->nfds) * sizeof(*loop->fds));
  loop->nfds = need;
  return 0;
}

int px__fd_register(px_loop *loop, px_fd fd, bool stream) {
  size_t i;
  if (!px__fd_index(fd, &i))
    return PX_EBADF;
  if (i >= loop->nfds) {
    int r = px__fd_grow(loop, i + 1);
    if (r < 0)
      return r;
  }
  px__fdent *e = &loop->fds[i];
  if (!e->known)
    memset(e, 0, sizeof(*e));
  e->known = 1;
  e->stream = stream;
  e->direct = !stream && px__os_is_direct(fd);
  e->append = !stream && px__os_is_append(fd);
  return 0;
}

void px__fd_forget(px_loop *loop, px_fd fd) {
  size_t i;
  if (px__fd_index(fd, &i) && i < loop->nfds)
    memset(&loop->fds[i], 0, sizeof(loop->fds[i]));
}

px_fd px__fd_at(size_t index) {
  return (px_fd)(index << PX__FD_SHIFT);
}

void px__fdtab_free(px_loop *loop) {
  px__free(loop->fds);
  loop->fds = NULL;
  loop->nfds = loop->fds_cap = 0;
}
