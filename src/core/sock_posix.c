/*
 * Handle helpers on POSIX: sockets, pipes and files the loop knows.
 *
 * Handles are created close-on-exec and in blocking mode; the backend's
 * adopt() then sets the mode it needs (readiness emulation wants
 * O_NONBLOCK, a completion-based kernel waits on a blocking socket itself).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

/* The calling thread's SIGPIPE guard: see internal.h. */
static _Thread_local struct {
  unsigned depth;
  bool was_blocked;
  bool was_pending;
} px__sp;

static void px__sigpipe_set(sigset_t *set) {
  sigemptyset(set);
  sigaddset(set, SIGPIPE);
}

void px__sigpipe_hold(void) {
  if (px__sp.depth++ > 0)
    return;
  sigset_t pipe_only, old, pending;
  px__sigpipe_set(&pipe_only);
  if (pthread_sigmask(SIG_BLOCK, &pipe_only, &old) != 0)
    sigemptyset(&old);
  px__sp.was_blocked = sigismember(&old, SIGPIPE) == 1;
  px__sp.was_pending =
      sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
}

void px__sigpipe_release(void) {
  if (px__sp.depth == 0 || --px__sp.depth > 0)
    return;
  sigset_t pipe_only, pending;
  px__sigpipe_set(&pipe_only);
  if (!px__sp.was_pending && sigpending(&pending) == 0 &&
      sigismember(&pending, SIGPIPE) == 1) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_only, NULL, &zero) < 0 && errno == EINTR) {
    }
  }
  if (!px__sp.was_blocked)
    pthread_sigmask(SIG_UNBLOCK, &pipe_only, NULL);
}

int px__os_net_init(void) {
  return 0;
}

int px__os_close(px_fd fd) {
  if (fd < 0 || fd > INT32_MAX)
    return PX_EBADF;
  /* After close() fails with EINTR the descriptor is gone on Linux; do not
   * retry, the number may already belong to someone else. */
  return close((int)fd) < 0 && errno != EINTR ? px__errno(errno) : 0;
}

int px__os_is_stream(px_fd fd) {
  struct stat st;
  if (fstat((int)fd, &st) < 0)
    return px__errno(errno);
  return !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode);
}

bool px__os_is_direct(px_fd fd) {
#ifdef O_DIRECT
  int fl = fcntl((int)fd, F_GETFL);
  return fl >= 0 && (fl & O_DIRECT) != 0;
#else
  (void)fd;
  return false;
#endif
}

bool px__os_is_append(px_fd fd) {
  int fl = fcntl((int)fd, F_GETFL);
  return fl >= 0 && (fl & O_APPEND) != 0;
}

void px__os_pos_advance(const px_op *op, int64_t pos, int64_t moved) {
  int fd = (int)op->fd;
  int fl = px__dir_of(op) ? fcntl(fd, F_GETFL) : 0; /* a write */
  if (fl >= 0 && (fl & O_APPEND))
    lseek(fd, 0, SEEK_END);
  else
    lseek(fd, (off_t)(pos + moved), SEEK_SET);
}

int px__os_writable(px_fd fd) {
  int fl = fcntl((int)fd, F_GETFL);
  if (fl < 0)
    return px__errno(errno);
  return (fl & O_ACCMODE) != O_RDONLY;
}

int px_adopt(px_loop *loop, px_fd fd) {
  if (loop == NULL || fd < 0 || fd > INT32_MAX)
    return PX_EINVAL;
  int stream = px__os_is_stream(fd);
  if (stream < 0)
    return stream;
  if (px__fd_get(loop, fd) != NULL)
    return 0;
  int r = PX__BK(loop)->adopt(loop, fd);
  return r < 0 ? r : px__fd_register(loop, fd, stream);
}

int px_fd_close_reset(px_loop *loop, px_fd fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  int r = px__fd_closable(loop, fd); /* refused: the socket keeps its linger */
  if (r < 0)
    return r;
  if (fd <= INT32_MAX)
    setsockopt((int)fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  return px_fd_close(loop, fd);
}

int px_shutdown_write(px_fd fd) {
  return shutdown((int)fd, SHUT_WR) < 0 ? px__errno(errno) : 0;
}

int px_tcp_nodelay(px_fd fd, int on) {
  int v = on != 0;
  if (setsockopt((int)fd, IPPROTO_TCP, TCP_NODELAY, &v, sizeof(v)) < 0)
    return px__errno(errno);
  return 0;
}

/* ---- Addresses. -------------------------------------------------------- */

static int px__addr_get(px_fd fd, px_addr *addr, bool peer) {
  if (addr == NULL)
    return PX_EINVAL;
  memset(addr, 0, sizeof(*addr));
  socklen_t len = sizeof(addr->storage);
  void *sa = addr->storage;
  int r =
      peer ? getpeername((int)fd, sa, &len) : getsockname((int)fd, sa, &len);
  if (r < 0)
    return px__errno(errno);
  addr->len = len;
  return 0;
}

int px_addr_local(px_fd fd, px_addr *addr) {
  return px__addr_get(fd, addr, false);
}

int px_addr_peer(px_fd fd, px_addr *addr) {
  return px__addr_get(fd, addr, true);
}

/* ---- Sockets, pipes, files. -------------------------------------------- */

/* SOCK_CLOEXEC is POSIX.1-2024; without it, FD_CLOEXEC follows at once
 * (a concurrent exec in another thread could inherit the fd meanwhile). */
#ifdef SOCK_CLOEXEC
#define PX__SOCK_CLOEXEC SOCK_CLOEXEC
#else
#define PX__SOCK_CLOEXEC 0
#endif

static int px__cloexec(int fd) {
  if (!PX__SOCK_CLOEXEC)
    fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

static int px__socket(const px_addr *addr) {
  int fd = socket(px__addr_family(addr), SOCK_STREAM | PX__SOCK_CLOEXEC, 0);
  return fd < 0 ? px__errno(errno) : px__cloexec(fd);
}

int px_tcp_listen_ex(px_loop *loop, const char *ip, int port, int backlog,
                     unsigned flags, px_fd *out) {
  if (loop == NULL || out == NULL || (flags & ~PX_LISTEN_REUSEPORT))
    return PX_EINVAL;
  px_addr addr;
  int r = px_addr_set(&addr, ip, port);
  if (r < 0)
    return r;
  int fd = px__socket(&addr);
  if (fd < 0)
    return fd;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
#ifdef SO_REUSEPORT
  if ((flags & PX_LISTEN_REUSEPORT) &&
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
    r = px__errno(errno);
    close(fd);
    return r;
  }
#else
  if (flags & PX_LISTEN_REUSEPORT) {
    close(fd);
    return PX_EOPNOTSUPP;
  }
#endif
  if (bind(fd, (const void *)addr.storage, addr.len) < 0 ||
      listen(fd, backlog > 0 ? backlog : SOMAXCONN) < 0) {
    r = px__errno(errno);
    close(fd);
    return r;
  }
  return px__own(loop, fd, true, out);
}

int px_tcp_listen(px_loop *loop, const char *ip, int port, int backlog,
                  px_fd *out) {
  return px_tcp_listen_ex(loop, ip, port, backlog, 0, out);
}

int px_tcp_socket(px_loop *loop, const px_addr *addr, px_fd *out) {
  if (loop == NULL || addr == NULL || out == NULL || addr->len == 0)
    return PX_EINVAL;
  int fd = px__socket(addr);
  if (fd < 0)
    return fd;
  return px__own(loop, fd, true, out);
}

int px_socketpair(px_loop *loop, px_fd out[2]) {
  if (loop == NULL || out == NULL)
    return PX_EINVAL;
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | PX__SOCK_CLOEXEC, 0, fds) < 0)
    return px__errno(errno);
  px__cloexec(fds[0]);
  px__cloexec(fds[1]);
  return px__own_pair(loop, fds[0], fds[1], out);
}

int px_pipe(px_loop *loop, px_fd out[2]) {
  if (loop == NULL || out == NULL)
    return PX_EINVAL;
  int fds[2];
  if (pipe(fds) < 0)
    return px__errno(errno);
  fcntl(fds[0], F_SETFD, FD_CLOEXEC);
  fcntl(fds[1], F_SETFD, FD_CLOEXEC);
  return px__own_pair(loop, fds[0], fds[1], out);
}

static int px__open_flags(unsigned flags) {
  static const int access[] = {O_RDONLY, O_WRONLY, O_RDWR};
  int f = access[flags & 0x3] | O_CLOEXEC;
  if (flags & PX_O_CREAT)
    f |= O_CREAT;
  if (flags & PX_O_TRUNC)
    f |= O_TRUNC;
  if (flags & PX_O_EXCL)
    f |= O_EXCL;
  if (flags & PX_O_APPEND)
    f |= O_APPEND;
#ifdef O_DIRECT
  if (flags & PX_O_DIRECT)
    f |= O_DIRECT;
#endif
  return f;
}

int px_file_open(px_loop *loop, const char *path, unsigned flags, int mode,
                 px_fd *out) {
  if (loop == NULL || path == NULL || out == NULL || !px__open_flags_ok(flags))
    return PX_EINVAL;
#ifndef O_DIRECT
  if (flags & PX_O_DIRECT)
    return PX_EOPNOTSUPP;
#endif
  int fd = open(path, px__open_flags(flags), (mode_t)mode);
  if (fd < 0)
    return px__errno(errno);
  int stream = px__os_is_stream(fd); /* a FIFO or a device is a stream */
  if (stream < 0) {
    close(fd);
    return stream;
  }
  return px__own(loop, fd, stream, out);
}

int px_file_size(px_fd fd, uint64_t *size) {
  struct stat st;
  if (size == NULL || fd < 0 || fd > INT32_MAX)
    return PX_EINVAL;
  if (fstat((int)fd, &st) != 0)
    return px__errno(errno);
  if (S_ISDIR(st.st_mode))
    return PX_EISDIR;
  if (!S_ISREG(st.st_mode))
    return PX_EINVAL;
  *size = (uint64_t)st.st_size;
  return 0;
}
