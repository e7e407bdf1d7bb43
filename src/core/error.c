/* PX_E* codes: their text, and the one mapping from POSIX errno values. */
#include <errno.h>

#include "internal.h"

/* Windows' C library has no ESHUTDOWN; no errno value can mean it there. */
#ifndef ESHUTDOWN
#define ESHUTDOWN (-PX_ESHUTDOWN + 0x10000)
#endif

#define PX__ERRORS(X)                                                          \
  X(EPERM, "operation not permitted")                                          \
  X(ENOENT, "no such file, directory or operation")                            \
  X(EINTR, "interrupted")                                                      \
  X(EIO, "input/output error")                                                 \
  X(EBADF, "bad or unknown handle")                                            \
  X(EAGAIN, "resource temporarily unavailable")                                \
  X(ENOMEM, "out of memory")                                                   \
  X(EACCES, "permission denied")                                               \
  X(EFAULT, "bad address")                                                     \
  X(EBUSY, "busy (operation already in flight)")                               \
  X(EEXIST, "file exists")                                                     \
  X(ENOTDIR, "not a directory")                                                \
  X(EISDIR, "is a directory")                                                  \
  X(EINVAL, "invalid argument")                                                \
  X(ENFILE, "too many open files in the system")                               \
  X(EMFILE, "too many open files")                                             \
  X(ENOSPC, "no space left on device")                                         \
  X(ESPIPE, "illegal seek")                                                    \
  X(EPIPE, "broken pipe")                                                      \
  X(ENAMETOOLONG, "name too long")                                             \
  X(ENOSYS, "system call not available")                                       \
  X(ENOTSOCK, "not a socket")                                                  \
  X(EMSGSIZE, "message too long")                                              \
  X(EOPNOTSUPP, "operation not supported")                                     \
  X(EAFNOSUPPORT, "address family not supported")                              \
  X(EADDRINUSE, "address already in use")                                      \
  X(EADDRNOTAVAIL, "address not available")                                    \
  X(ENETDOWN, "network is down")                                               \
  X(ENETUNREACH, "network is unreachable")                                     \
  X(ECONNABORTED, "connection aborted")                                        \
  X(ECONNRESET, "connection reset by peer")                                    \
  X(ENOBUFS, "no buffer space available")                                      \
  X(EISCONN, "socket is already connected")                                    \
  X(ENOTCONN, "socket is not connected")                                       \
  X(ESHUTDOWN, "loop is shutting down")                                        \
  X(ETIMEDOUT, "timed out")                                                    \
  X(ECONNREFUSED, "connection refused")                                        \
  X(EHOSTUNREACH, "host is unreachable")                                       \
  X(EALREADY, "operation already in progress")                                 \
  X(ECANCELED, "operation canceled")

const char *px_strerror(int code) {
  if (code >= 0)
    return "success";
  switch (code) {
#define PX__STR(name, text)                                                    \
  case PX_##name:                                                              \
    return text;
    PX__ERRORS(PX__STR)
#undef PX__STR
    default:
      return "unknown error";
  }
}

int px__errno(int err) {
  switch (err) {
    case 0:
      return 0;
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
      return PX_EAGAIN;
#endif
#if defined(ENOTSUP) && ENOTSUP != EOPNOTSUPP
    case ENOTSUP:
      return PX_EOPNOTSUPP;
#endif
#ifdef ETIME
    case ETIME: /* a kernel timer's expiry */
      return PX_ETIMEDOUT;
#endif
    case EINPROGRESS:
      return PX_EALREADY;
#define PX__MAP(name, text)                                                    \
  case name:                                                                   \
    return PX_##name;
      PX__ERRORS(PX__MAP)
#undef PX__MAP
    default:
      return PX_EUNKNOWN;
  }
}
