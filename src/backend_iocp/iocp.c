/*
 * iocp — Windows I/O completion ports.
 *
 * Notes on IOCP that explain the odd-looking parts of this file:
 *
 * - One completion port per loop.  Every handle the loop knows is tied to
 *   it when adopted (CreateIoCompletionPort), which is for good: a handle
 *   cannot move to another port, so a handle belongs to one loop for life.
 * - The OVERLAPPED is the first member of px_op's backend area; a
 *   completion packet finds its op with container_of.  Packets carry a
 *   key: I/O (0), a wakeup (px_post, px_loop_wakeup:
 *   PostQueuedCompletionStatus with no OVERLAPPED) or an fsync done on the
 *   thread pool.  poll() takes up to 64 packets per call with
 *   GetQueuedCompletionStatusEx.
 * - Calls: recv/send (and read/write on sockets) are WSARecv/WSASend;
 *   accept is AcceptEx on a socket made beforehand, then
 *   SO_UPDATE_ACCEPT_CONTEXT so getpeername and shutdown work; connect is
 *   ConnectEx on a socket bound first, then SO_UPDATE_CONNECT_CONTEXT;
 *   files and pipes are ReadFile/WriteFile with the offset in the
 *   OVERLAPPED.  Overlapped handles have no file position: the backend
 *   keeps one per handle for PX_CUR, and writes to a file opened with
 *   PX_O_APPEND go to its end (offset 0xFFFFFFFF'FFFFFFFF), as pwrite does
 *   on Linux.  readv/writev on sockets are one WSARecv/WSASend with a
 *   WSABUF array; on files and pipes the segments run one after the other
 *   and a short one ends the op.  Data calls on a listening socket answer
 *   as POSIX does (ENOTCONN to read, EPIPE to write), and so does a send
 *   on an unconnected socket (EPIPE).
 * - FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is set on files, pipes, devices
 *   and on sockets whose provider hands out real kernel handles
 *   (XP1_IFS_HANDLES; a layered provider may complete without telling the
 *   port).  With it, a call that succeeds at once queues no packet: the
 *   result goes on a list reported at the next poll, never inside the
 *   submit call.  Without it, the packet is awaited even for an immediate
 *   success.  A call that fails at once queues no packet either way,
 *   except for a warning status: a datagram longer than the buffer
 *   (WSAEMSGSIZE) is a success of the part that fits, as on POSIX, and
 *   without the skip mode its packet still comes.
 * - A pooled receive chooses its buffer when data arrives, so a waiting
 *   connection holds none: a zero-byte WSARecv waits for data, then a
 *   buffer is taken and a non-blocking recv() fills it.  On a datagram
 *   socket the zero-byte call peeks (MSG_PEEK): without it the datagram
 *   would be taken and dropped, and a waiting datagram makes the peek end
 *   with the WSAEMSGSIZE warning above.  A recv() that finds nothing (the
 *   bytes went meanwhile) posts the zero-byte call again.  With the pool
 *   empty nothing is read: PX_ENOBUFS, the bytes stay in the socket; a
 *   one-byte peek first tells the end of the stream or an error apart, as
 *   the posix_aio backend does.
 * - The socket's non-blocking mode (FIONBIO, which overlapped calls
 *   ignore) is set once, at its first pooled receive, and remembered in
 *   the handle's state: setting it before each recv() would add a kernel
 *   call to every receive (under wine a server round trip, 30-250 us).  It
 *   is cleared when px closes the socket or the loop goes, because
 *   closesocket on a non-blocking socket with an SO_LINGER timeout fails
 *   with WSAEWOULDBLOCK and leaves it open.  Meanwhile a program's own
 *   blocking call on that socket gets WSAEWOULDBLOCK.
 * - NTFS runs a write that extends a file synchronously even on an
 *   overlapped handle: appends block the loop for the time of the write.
 *   Under wine file calls always go pending, so the immediate-success path
 *   of files is exercised on real Windows only.
 * - FlushFileBuffers blocks, so fsync runs on the system thread pool and
 *   posts its result to the port.  It cannot be cancelled.
 * - Cancellation is CancelIoEx: the op completes with
 *   ERROR_OPERATION_ABORTED (PX_ECANCELED), or with its own result if it
 *   finished first; ERROR_NOT_FOUND means its packet is already queued.
 *   px_close cancels everything on the handle and closes it only after
 *   every OVERLAPPED on it has come back, so px never lets go of an op's
 *   memory while the kernel may still write it.
 * - AcceptEx fails with WSAECONNRESET / ERROR_NETNAME_DELETED (wine:
 *   WSAENOTCONN) when a client resets before the accept: the backend posts
 *   a new AcceptEx instead of failing the op, unless the op was cancelled
 *   or its listener or loop is closing.
 * - A readv/writev on a file or pipe is a chain of calls.  Once cancelled,
 *   or once its handle or loop closes, it issues no further call.  A pipe
 *   readv goes on to its next segment only while data is waiting
 *   (PeekNamedPipe), so it returns what is there as readv(2) does.
 * - CancelIoEx names the socket's base provider handle (SIO_BASE_HANDLE):
 *   with a layered provider the handle the program holds is not the one
 *   the I/O was issued on.
 * - Errors map through px__win_error (src/core/error_win.c), so tests see
 *   the same PX_E* codes as on POSIX; an EOF on a pipe (ERROR_BROKEN_PIPE)
 *   or a file (ERROR_HANDLE_EOF) is a read of 0 bytes.
 * - Threads: several threads dequeuing one port is the classic IOCP
 *   design, but px's core (ready list, handle queues, timer heap) belongs
 *   to one thread, as io_uring's SINGLE_ISSUER ring does.  A program that
 *   wants more cores runs one loop per thread and hands work between them
 *   with px_post; because a handle is tied to one port for good, it hands
 *   over work, not handles.  Deadlines come from the core's timer heap
 *   through the GetQueuedCompletionStatusEx timeout.
 */
#include <mswsock.h>
#include <windows.h>
#include <winsock2.h>
#include <ws2tcpip.h>

#include <string.h>

#include "core/internal.h"

#if defined(__GNUC__)
#define PX__MAY_ALIAS __attribute__((may_alias))
#else
#define PX__MAY_ALIAS
#endif

#define PX__KEY_IO 0
#define PX__KEY_WAKE 1
#define PX__KEY_FSYNC 2
#define PX__BATCH 64
#define PX__ADDR_LEN (sizeof(SOCKADDR_IN6) + 16)

/* Where a started op is. */
enum {
  PX__I_NONE = 0,
  PX__I_IO,   /* a kernel call holds the OVERLAPPED */
  PX__I_SYNC, /* the call finished at once, no packet: bytes in res */
  PX__I_DONE, /* the op's result is known: res */
  PX__I_FSYNC /* FlushFileBuffers on the thread pool */
};

/* Per-op state, inside op->backend: the OVERLAPPED first. */
typedef struct PX__MAY_ALIAS px__iop {
  OVERLAPPED ov;
  uint64_t done; /* vectors: bytes of earlier segments; accept: its buffer;
                    fsync: the port */
  uint32_t seg;  /* vectors: the segment in flight */
  DWORD flags;   /* WSARecv's flags */
  int32_t res;   /* PX__I_DONE, fsync: the result */
  uint8_t where;
  uint8_t stop; /* cancelled: a vector ends after this segment */
} px__iop;

_Static_assert(sizeof(px__iop) <= sizeof(((px_op *)0)->backend),
               "iocp op state fits in px_op");

static px__iop *px__iop_of(px_op *op) {
  return (px__iop *)(void *)op->backend;
}

static px_op *px__op_of(OVERLAPPED *ov) {
  return (px_op *)(void *)((char *)ov - offsetof(px_op, backend));
}

/* Per-handle state, indexed like the core's table (value >> 2). */
typedef struct px__ih {
  int64_t pos; /* PX_CUR on a file */
  uint8_t used;
  uint8_t kind; /* PX__H_* */
  uint8_t skip; /* FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is set */
  uint8_t pos_known;
  uint8_t listening; /* a listening socket (checked when adopted) */
  uint8_t dgram;     /* a message socket: a pooled receive peeks */
  uint8_t nbio;      /* FIONBIO is set (at its first pooled receive) */
  uint16_t family;   /* sockets */
  px_fd base;        /* sockets: the base provider's handle, for CancelIoEx */
} px__ih;

/* AcceptEx writes both addresses into a buffer that must live until its
 * packet arrives: buffers come from chunks that never move. */
typedef union px__abuf {
  char addr[2 * PX__ADDR_LEN];
  union px__abuf *next;
} px__abuf;

typedef struct px__achunk {
  struct px__achunk *next;
  px__abuf b[32];
} px__achunk;

typedef struct px__iocp {
  HANDLE port;
  px__ih *hs;
  size_t nhs;
  px__fifo done; /* results known without a packet */
  px__abuf *afree;
  px__achunk *chunks;
  LPFN_ACCEPTEX accept_ex;
  LPFN_CONNECTEX connect_ex;
  OVERLAPPED_ENTRY entries[PX__BATCH];
} px__iocp;

static px__iocp *px__io(px_loop *loop) {
  return loop->bk;
}

/* ---- Handles. ---------------------------------------------------------- */

static px__ih *px__ih_get(px__iocp *u, px_fd fd) {
  size_t i = (size_t)fd >> 2;
  return fd >= 0 && i < u->nhs && u->hs[i].used ? &u->hs[i] : NULL;
}

static px__ih *px__ih_make(px__iocp *u, px_fd fd) {
  size_t i = (size_t)fd >> 2;
  if (fd < 0 || i >= ((size_t)1 << 24))
    return NULL;
  if (i >= u->nhs) {
    size_t n = u->nhs ? u->nhs : 64;
    while (n <= i)
      n *= 2;
    px__ih *t = px__realloc(u->hs, n * sizeof(*t));
    if (t == NULL)
      return NULL;
    memset(t + u->nhs, 0, (n - u->nhs) * sizeof(*t));
    u->hs = t;
    u->nhs = n;
  }
  memset(&u->hs[i], 0, sizeof(u->hs[i]));
  u->hs[i].used = 1;
  return &u->hs[i];
}

/* Sockets of a layered provider may complete without a packet when the
 * skip mode is set: only real kernel handles get it. */
static bool px__ifs_socket(SOCKET s) {
  WSAPROTOCOL_INFOW info;
  int len = sizeof(info);
  if (getsockopt(s, SOL_SOCKET, SO_PROTOCOL_INFOW, (char *)&info, &len) != 0)
    return false;
  return (info.dwServiceFlags1 & XP1_IFS_HANDLES) != 0;
}

static int px__iocp_adopt(px_loop *loop, px_fd fd) {
  px__iocp *u = px__io(loop);
  int kind = px__win_kind(fd);
  if (kind < 0)
    return kind;
  if (CreateIoCompletionPort((HANDLE)fd, u->port, PX__KEY_IO, 0) == NULL) {
    DWORD e = GetLastError();
    if (e != ERROR_INVALID_PARAMETER)
      return px__win_error(e);
    /* A handle for synchronous I/O (a console too) can have no port; any
     * other is tied to another loop's already. */
    return px__win_synchronous(fd) ? PX_EINVAL : PX_EBUSY;
  }
  px__ih *h = px__ih_make(u, fd);
  if (h == NULL)
    return PX_ENOMEM;
  h->kind = (uint8_t)kind;
  h->base = fd;
  if (kind == PX__H_SOCKET) {
    /* The family from the protocol, which an unbound socket has too. */
    WSAPROTOCOL_INFOW info;
    int len = sizeof(info);
    if (getsockopt((SOCKET)fd, SOL_SOCKET, SO_PROTOCOL_INFOW, (char *)&info,
                   &len) == 0) {
      h->family = (uint16_t)info.iAddressFamily;
      h->dgram = info.iSocketType != SOCK_STREAM;
    }
    /* A layered provider hands out its own handle; CancelIoEx must name
     * the base provider's. */
    SOCKET base;
    DWORD bytes;
    if (WSAIoctl((SOCKET)fd, SIO_BASE_HANDLE, NULL, 0, &base, sizeof(base),
                 &bytes, NULL, NULL) == 0)
      h->base = (px_fd)base;
    BOOL on = FALSE;
    len = sizeof(on);
    h->listening = getsockopt((SOCKET)fd, SOL_SOCKET, SO_ACCEPTCONN,
                              (char *)&on, &len) == 0 &&
                   on;
  }
  if (kind != PX__H_SOCKET || px__ifs_socket((SOCKET)fd))
    h->skip = SetFileCompletionNotificationModes(
                  (HANDLE)fd, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS |
                                  FILE_SKIP_SET_EVENT_ON_HANDLE) != 0;
  return 0;
}

/* A socket px lets go of (closed, or its loop freed) is blocking again, as
 * it was made (see the notes on FIONBIO). */
static void px__blocking_again(px__ih *h, px_fd fd) {
  u_long off = 0;
  if (h->nbio)
    ioctlsocket((SOCKET)fd, FIONBIO, &off);
}

static void px__iocp_release(px_loop *loop, px_fd fd) {
  px__ih *h = px__ih_get(px__io(loop), fd);
  if (h != NULL) {
    px__blocking_again(h, fd);
    memset(h, 0, sizeof(*h));
  }
}

/* ---- Results known at once. -------------------------------------------- */

static void px__done(px__iocp *u, px_op *op, int32_t res) {
  px__iop *io = px__iop_of(op);
  io->where = PX__I_DONE;
  io->res = res;
  px__fifo_push(&u->done, op);
}

/* ---- Accept and connect. ----------------------------------------------- */

static void *px__ext(SOCKET s, GUID guid) {
  void *fn = NULL;
  DWORD bytes;
  if (WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &guid, sizeof(guid), &fn,
               sizeof(fn), &bytes, NULL, NULL) != 0)
    return NULL;
  return fn;
}

static px__abuf *px__abuf_get(px__iocp *u) {
  if (u->afree == NULL) {
    px__achunk *c = px__calloc(1, sizeof(*c));
    if (c == NULL)
      return NULL;
    c->next = u->chunks;
    u->chunks = c;
    for (size_t i = 0; i < sizeof(c->b) / sizeof(c->b[0]); i++) {
      c->b[i].next = u->afree;
      u->afree = &c->b[i];
    }
  }
  px__abuf *b = u->afree;
  u->afree = b->next;
  return b;
}

static void px__abuf_put(px__iocp *u, px__abuf *b) {
  b->next = u->afree;
  u->afree = b;
}

static bool px__is_read(const px_op *op);

/* A data call's error as POSIX would give it: reading or writing a handle
 * opened without that access is EBADF (Windows: ERROR_ACCESS_DENIED), and
 * sending on a socket that is not connected EPIPE. */
static int px__io_error(const px_op *op, DWORD err) {
  if (err == ERROR_ACCESS_DENIED)
    return PX_EBADF;
  if (err == WSAENOTCONN && !px__is_read(op))
    return PX_EPIPE;
  return px__win_error(err);
}

/* The outcome of an overlapped call: 1 pending (a packet will come), 0 done
 * now with *bytes, or a PX_E* code (no packet). */
static int px__outcome(const px_op *op, BOOL ok, DWORD err, bool skip) {
  if (ok)
    return skip ? 0 : 1;
  return err == ERROR_IO_PENDING ? 1 : px__io_error(op, err);
}

static int px__accept_start(px__iocp *u, px_op *op, px__ih *lh) {
  SOCKET l = (SOCKET)op->fd;
  if (u->accept_ex == NULL) {
    GUID g = WSAID_ACCEPTEX;
    u->accept_ex = (LPFN_ACCEPTEX)px__ext(l, g);
    if (u->accept_ex == NULL)
      return PX_EOPNOTSUPP;
  }
  px__abuf *b = px__abuf_get(u);
  if (b == NULL)
    return PX_ENOMEM;
  /* A client that reset before the accept fails it at once too (MSDN):
   * the next one is taken, as when its packet says so (px__accept_done),
   * a bounded number of times in a row. */
  for (int tries = 0;; tries++) {
    SOCKET s =
        WSASocketW(lh->family ? lh->family : AF_INET, SOCK_STREAM, IPPROTO_TCP,
                   NULL, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
    if (s == INVALID_SOCKET) {
      px__abuf_put(u, b);
      return px__win_error(WSAGetLastError());
    }
    px__iop *io = px__iop_of(op);
    op->off = (int64_t)s;
    io->done = (uint64_t)(uintptr_t)b;
    DWORD bytes = 0;
    BOOL ok = u->accept_ex(l, s, b->addr, 0, PX__ADDR_LEN, PX__ADDR_LEN, &bytes,
                           &io->ov);
    DWORD err = ok ? 0 : (DWORD)WSAGetLastError();
    int r = px__outcome(op, ok, err, lh->skip);
    if (r >= 0)
      return r;
    closesocket(s);
    op->off = PX_INVALID_FD;
    if ((err != WSAECONNRESET && err != ERROR_NETNAME_DELETED) || tries == 16) {
      px__abuf_put(u, b);
      return r;
    }
  }
}

static int px__connect_start(px__iocp *u, px_op *op, px__ih *h) {
  SOCKET s = (SOCKET)op->fd;
  const px_addr *a = op->buf;
  if (u->connect_ex == NULL) {
    GUID g = WSAID_CONNECTEX;
    u->connect_ex = (LPFN_CONNECTEX)px__ext(s, g);
    if (u->connect_ex == NULL)
      return PX_EOPNOTSUPP;
  }
  /* ConnectEx wants a bound socket: any address of the family. */
  SOCKADDR_STORAGE ss;
  int len = sizeof(ss);
  if (getsockname(s, (struct sockaddr *)&ss, &len) != 0) {
    SOCKADDR_STORAGE any;
    memset(&any, 0, sizeof(any));
    memcpy(&any, a->storage, sizeof(any.ss_family));
    int alen = any.ss_family == AF_INET6 ? (int)sizeof(SOCKADDR_IN6)
                                         : (int)sizeof(SOCKADDR_IN);
    if (bind(s, (struct sockaddr *)&any, alen) != 0)
      return px__win_error(WSAGetLastError());
  }
  DWORD bytes = 0;
  BOOL ok = u->connect_ex(s, (const struct sockaddr *)(const void *)a->storage,
                          (int)a->len, NULL, 0, &bytes, &px__iop_of(op)->ov);
  return px__outcome(op, ok, ok ? 0 : (DWORD)WSAGetLastError(), h->skip);
}

/* ---- Data transfers. --------------------------------------------------- */

static bool px__is_vec(const px_op *op) {
  return op->kind == PX__OP_READV || op->kind == PX__OP_WRITEV;
}

static bool px__is_read(const px_op *op) {
  return op->kind == PX__OP_READ || op->kind == PX__OP_READV ||
         op->kind == PX__OP_RECV || op->kind == PX__OP_RECV_POOLED;
}

/* WSARecv or WSASend on bufs: the call's error (0: finished at once). */
static DWORD px__wsa(px_op *op, WSABUF *bufs, DWORD n, DWORD *bytes) {
  px__iop *io = px__iop_of(op);
  int r;
  if (px__is_read(op)) {
    io->flags = 0;
    r = WSARecv((SOCKET)op->fd, bufs, n, bytes, &io->flags, &io->ov, NULL);
  } else {
    r = WSASend((SOCKET)op->fd, bufs, n, bytes, 0, &io->ov, NULL);
  }
  return r == 0 ? 0 : (DWORD)WSAGetLastError();
}

/* A vector's WSABUF array lives only in this frame (Winsock copies it), so
 * that the other ops do not pay for 16 KiB of stack. */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static DWORD
px__wsa_vec(px_op *op, DWORD *bytes, ULONG *total) {
  WSABUF bufs[1024];
  const px_iov *iov = op->buf;
  size_t left = 0x7ffff000u; /* the result is an int32 */
  *total = 0;
  for (DWORD i = 0; i < op->len; i++) {
    size_t len = iov[i].len < left ? iov[i].len : left;
    bufs[i].buf = iov[i].base;
    bufs[i].len = (ULONG)len;
    left -= len;
    *total += (ULONG)len;
  }
  return px__wsa(op, bufs, op->len, bytes);
}

static int px__socket_start(px_op *op, px__ih *h, DWORD *bytes) {
  ULONG total = op->len;
  DWORD err;
  if (px__is_vec(op)) {
    err = px__wsa_vec(op, bytes, &total);
  } else {
    WSABUF one = {.len = op->len, .buf = op->buf};
    err = px__wsa(op, &one, 1, bytes);
  }
  /* A datagram longer than the buffer: the part that fits, as on POSIX.
   * This is a warning status, so without the skip mode its packet still
   * comes. */
  if (err == WSAEMSGSIZE && px__is_read(op)) {
    if (!h->skip)
      return 1;
    *bytes = total;
    return 0;
  }
  return px__outcome(op, err == 0, err, h->skip);
}

/* The read that follows a pooled receive's zero-byte call must not wait:
 * the socket becomes non-blocking once, at its first pooled receive. */
static int px__nonblocking(px__ih *h, px_fd fd) {
  u_long on = 1;
  if (h->nbio)
    return 0;
  if (ioctlsocket((SOCKET)fd, FIONBIO, &on) != 0)
    return px__win_error((DWORD)WSAGetLastError());
  h->nbio = 1;
  return 0;
}

/* A pooled receive's zero-byte WSARecv, which holds no buffer and says
 * data is waiting.  A datagram is peeked at: a receive of no bytes would
 * take it and drop it.  1 pending, 0 done now, or a PX_E* code. */
static int px__pooled_start(px_op *op, px__ih *h) {
  static char none[1]; /* never written: its length is 0 */
  int r = px__nonblocking(h, op->fd);
  if (r < 0)
    return r;
  px__iop *io = px__iop_of(op);
  WSABUF zero = {.len = 0, .buf = none};
  DWORD bytes;
  io->flags = h->dgram ? MSG_PEEK : 0;
  int rc = WSARecv((SOCKET)op->fd, &zero, 1, &bytes, &io->flags, &io->ov, NULL);
  DWORD err = rc == 0 ? 0 : (DWORD)WSAGetLastError();
  /* A waiting datagram is longer than no bytes: the warning status of
   * px__socket_start, with or without a packet as there. */
  if (err == WSAEMSGSIZE)
    return h->skip ? 0 : 1;
  return px__outcome(op, err == 0, err, h->skip);
}

/* The segment of a file or pipe op to move next; false when none is left. */
static bool px__segment(px_op *op, void **buf, DWORD *len) {
  px__iop *io = px__iop_of(op);
  if (!px__is_vec(op)) {
    *buf = op->buf;
    *len = op->len;
    return true;
  }
  const px_iov *iov = op->buf;
  while (io->seg < op->len && iov[io->seg].len == 0)
    io->seg++;
  if (io->seg >= op->len || io->done >= 0x7ffff000u)
    return false;
  size_t left = 0x7ffff000u - io->done;
  *buf = iov[io->seg].base;
  *len = (DWORD)(iov[io->seg].len < left ? iov[io->seg].len : left);
  return true;
}

static int64_t px__file_pos(px__ih *h, px_fd fd) {
  if (!h->pos_known) {
    LARGE_INTEGER zero = {.QuadPart = 0}, cur;
    h->pos = SetFilePointerEx((HANDLE)fd, zero, &cur, FILE_CURRENT)
                 ? cur.QuadPart
                 : 0;
    h->pos_known = 1;
  }
  return h->pos;
}

/* 1 pending, 0 done now (*bytes), 2 nothing left to move, or a PX_E*. */
static int px__file_start(px_loop *loop, px_op *op, px__ih *h, DWORD *bytes) {
  void *buf;
  DWORD len;
  if (!px__segment(op, &buf, &len))
    return 2;
  px__iop *io = px__iop_of(op);
  memset(&io->ov, 0, sizeof(io->ov));
  bool write = !px__is_read(op);
  px__fdent *e = px__fd_get(loop, op->fd);
  if (h->kind == PX__H_FILE) {
    uint64_t off = write && e != NULL && e->append
                       ? UINT64_MAX
                       : (uint64_t)(op->off == PX_CUR ? px__file_pos(h, op->fd)
                                                      : op->off) +
                             io->done;
    io->ov.Offset = (DWORD)off;
    io->ov.OffsetHigh = (DWORD)(off >> 32);
  }
  BOOL ok = write ? WriteFile((HANDLE)op->fd, buf, len, NULL, &io->ov)
                  : ReadFile((HANDLE)op->fd, buf, len, NULL, &io->ov);
  DWORD err = ok ? 0 : GetLastError();
  if (!ok && !write && (err == ERROR_HANDLE_EOF || err == ERROR_BROKEN_PIPE)) {
    *bytes = 0; /* end of file or of the pipe: a read of 0 */
    return 0;
  }
  int r = px__outcome(op, ok, err, h->skip);
  if (r == 0)
    *bytes = (DWORD)io->ov.InternalHigh;
  return r;
}

/* ---- Completion of one op. --------------------------------------------- */

static void px__finish(px_loop *loop, px_op *op, int32_t res);
static int px__kick_off(px_loop *loop, px_op *op);

/* After a file op at PX_CUR moved n bytes. */
static void px__pos_advance(px_loop *loop, px_op *op, px__ih *h, int32_t n) {
  px__fdent *e = px__fd_get(loop, op->fd);
  if (!px__is_read(op) && e != NULL && e->append) {
    LARGE_INTEGER size;
    if (GetFileSizeEx((HANDLE)op->fd, &size))
      h->pos = size.QuadPart;
  } else {
    h->pos += n;
  }
}

/* A file or pipe segment moved n bytes (or failed with res < 0). */
/* Whether op may issue another call after one finished: not once it was
 * cancelled (or timed out), nor while its handle or the loop closes. */
static bool px__may_continue(px_loop *loop, px_op *op) {
  px__fdent *e = px__fd_get(loop, op->fd);
  return !px__iop_of(op)->stop && !loop->closing && e != NULL &&
         e->closing == NULL;
}

/* A pipe read goes on to the next segment only while data is waiting, as
 * readv(2) on a stream returns what is there. */
static bool px__more_to_read(px_loop *loop, px_op *op) {
  px__ih *h = px__ih_get(px__io(loop), op->fd);
  if (!px__is_read(op) || h == NULL || h->kind == PX__H_FILE)
    return true;
  DWORD avail = 0;
  return h->kind == PX__H_PIPE &&
         PeekNamedPipe((HANDLE)op->fd, NULL, 0, NULL, &avail, NULL) &&
         avail > 0;
}

static void px__file_step(px_loop *loop, px_op *op, int32_t res) {
  px__iop *io = px__iop_of(op);
  if (res < 0) {
    px__finish(loop, op, io->done > 0 ? (int32_t)io->done : res);
    return;
  }
  if (!px__is_vec(op)) {
    px__finish(loop, op, res);
    return;
  }
  const px_iov *iov = op->buf;
  bool whole = (size_t)res == iov[io->seg].len;
  io->done += (uint64_t)res;
  io->seg++;
  if (whole && res > 0 && px__may_continue(loop, op) &&
      px__more_to_read(loop, op) && px__kick_off(loop, op) == 0)
    return; /* the next segment is on its way (or done) */
  px__finish(loop, op, (int32_t)io->done);
}

static void px__finish(px_loop *loop, px_op *op, int32_t res) {
  px__iocp *u = px__io(loop);
  px__ih *h = px__ih_get(u, op->fd);
  px__iop_of(op)->where = PX__I_NONE;
  if (h != NULL && h->kind == PX__H_FILE && op->off == PX_CUR && res > 0 &&
      op->kind != PX__OP_FSYNC)
    px__pos_advance(loop, op, h, res);
  px__complete(loop, op, res);
}

static void px__accept_done(px_loop *loop, px_op *op, DWORD err) {
  px__iocp *u = px__io(loop);
  px__iop *io = px__iop_of(op);
  SOCKET s = (SOCKET)op->off, l = (SOCKET)op->fd;
  px__abuf_put(u, (px__abuf *)(uintptr_t)io->done);
  int r = err ? px__win_error(err) : 0;
  /* A client that went away before the accept (Windows says reset, wine
   * "not connected"): wait for the next one, unless the op was stopped. */
  bool gone = r == PX_ECONNRESET || r == PX_ENOTCONN || r == PX_ECONNABORTED;
  if (r == 0 && setsockopt(s, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (char *)&l,
                           sizeof(l)) != 0)
    r = px__win_error(WSAGetLastError());
  if (r == 0)
    r = px__iocp_adopt(loop, (px_fd)s);
  if (r < 0) {
    closesocket(s);
    op->off = PX_INVALID_FD;
    if (gone && !px__may_continue(loop, op))
      r = PX_ECANCELED;
    else if (gone && (r = px__kick_off(loop, op)) == 0)
      return;
  }
  px__finish(loop, op, r);
}

static void px__pooled_finish(px_loop *loop, px_op *op, int32_t res,
                              void *buf) {
  px__iop_of(op)->where = PX__I_NONE;
  px__complete_buf(loop, op, res, buf);
}

/* Woken for nothing (the bytes went, or a datagram's error was cleared):
 * the zero-byte call again, unless op was stopped meanwhile. */
static void px__pooled_again(px_loop *loop, px_op *op) {
  int r = px__may_continue(loop, op) ? px__kick_off(loop, op) : PX_ECANCELED;
  if (r < 0)
    px__pooled_finish(loop, op, r, NULL);
}

/* With the pool empty, a one-byte peek tells data (PX_ENOBUFS, the bytes
 * stay in the socket) from the end of the stream or an error, which need
 * no buffer, as the posix_aio backend does.  On a datagram socket
 * something is waiting: PX_ENOBUFS. */
static void px__pooled_empty(px_loop *loop, px_op *op, px__ih *h) {
  char byte;
  int n = h->dgram ? 1 : recv((SOCKET)op->fd, &byte, 1, MSG_PEEK);
  DWORD err = n >= 0 ? 0 : (DWORD)WSAGetLastError();
  if (err == WSAEWOULDBLOCK) {
    px__pooled_again(loop, op);
    return;
  }
  int32_t res = err ? px__io_error(op, err) : 0; /* an error, or the end */
  if (n > 0) {
    px__buf_exhausted(op->buf);
    res = PX_ENOBUFS;
  }
  px__pooled_finish(loop, op, res, NULL);
}

/* Data is waiting: a buffer now, and a read that does not wait. */
static void px__pooled_read(px_loop *loop, px_op *op, px__ih *h) {
  px_bufpool *p = op->buf;
  if (p->slots.nfree == 0) {
    px__pooled_empty(loop, op, h);
    return;
  }
  uint32_t i = px__buf_take(p);
  char *buf = px__buf_at(p, i);
  int n = recv((SOCKET)op->fd, buf, (int)op->len, 0);
  DWORD err = n >= 0 ? 0 : (DWORD)WSAGetLastError();
  if (err == WSAEMSGSIZE) { /* a datagram cut to the buffer, as on POSIX */
    n = (int)op->len;
    err = 0;
  }
  if (n > 0) {
    px__pooled_finish(loop, op, n, buf);
    return;
  }
  px__buf_put(p, i);
  if (err == WSAEWOULDBLOCK)
    px__pooled_again(loop, op);
  else
    px__pooled_finish(loop, op, err ? px__io_error(op, err) : 0, NULL);
}

/* A pooled receive's zero-byte call finished (packet or at once). */
static void px__pooled_done(px_loop *loop, px_op *op, px__ih *h, DWORD err) {
  if (err == WSAEMSGSIZE)
    err = 0; /* the peek found a datagram */
  /* On a datagram socket an error (an ICMP answer to an earlier send)
   * might stay queued under the peek: the read reports and clears it. */
  bool dgram_error =
      err != 0 && err != ERROR_OPERATION_ABORTED && h != NULL && h->dgram;
  if ((err == 0 && h != NULL) || dgram_error)
    px__pooled_read(loop, op, h);
  else
    px__pooled_finish(loop, op, err ? px__io_error(op, err) : PX_EBADF, NULL);
}

/* The result of a call that finished (packet or at once). */
static void px__io_done(px_loop *loop, px_op *op, DWORD err, DWORD bytes) {
  px__ih *h = px__ih_get(px__io(loop), op->fd);
  switch (op->kind) {
    case PX__OP_ACCEPT:
      px__accept_done(loop, op, err);
      return;
    case PX__OP_RECV_POOLED:
      px__pooled_done(loop, op, h, err);
      return;
    case PX__OP_CONNECT: {
      int r = err ? px__win_error(err) : 0;
      if (r == 0 && setsockopt((SOCKET)op->fd, SOL_SOCKET,
                               SO_UPDATE_CONNECT_CONTEXT, NULL, 0) != 0)
        r = px__win_error(WSAGetLastError());
      px__finish(loop, op, r);
      return;
    }
    default:
      break;
  }
  bool sock = h != NULL && h->kind == PX__H_SOCKET;
  if (err && px__is_read(op) &&
      (err == ERROR_HANDLE_EOF || err == ERROR_BROKEN_PIPE)) {
    err = 0; /* end of file or of the pipe */
    bytes = 0;
  }
  if (px__is_read(op) && (err == WSAEMSGSIZE || err == ERROR_MORE_DATA))
    err = 0; /* a datagram cut to the buffer: bytes is what fitted */
  int32_t res = err ? px__io_error(op, err) : (int32_t)bytes;
  if (sock)
    px__finish(loop, op, res);
  else
    px__file_step(loop, op, res);
}

/* Data on a listening socket: what POSIX says (Windows would queue a
 * receive there, or refuse with another code). */
static int px__not_connected(const px_op *op) {
  return px__is_read(op) ? PX_ENOTCONN : PX_EPIPE;
}

/* Starts op's kernel call: 0 (a packet or the done list will report it),
 * or a PX_E* code when it did not start. */
static int px__kick_off(px_loop *loop, px_op *op) {
  px__iocp *u = px__io(loop);
  px__ih *h = px__ih_get(u, op->fd);
  if (h == NULL)
    return PX_EBADF;
  px__iop *io = px__iop_of(op);
  memset(&io->ov, 0, sizeof(io->ov));
  io->where = PX__I_IO;
  DWORD bytes = 0;
  int r;
  switch (op->kind) {
    case PX__OP_ACCEPT:
      r = h->kind == PX__H_SOCKET ? px__accept_start(u, op, h) : PX_ENOTSOCK;
      break;
    case PX__OP_CONNECT:
      r = h->kind == PX__H_SOCKET ? px__connect_start(u, op, h) : PX_ENOTSOCK;
      break;
    case PX__OP_RECV_POOLED:
      r = h->kind != PX__H_SOCKET ? PX_ENOTSOCK
          : h->listening          ? PX_ENOTCONN
                                  : px__pooled_start(op, h);
      break;
    case PX__OP_RECV:
    case PX__OP_SEND:
      r = h->kind != PX__H_SOCKET ? PX_ENOTSOCK
          : h->listening          ? px__not_connected(op)
                                  : px__socket_start(op, h, &bytes);
      break;
    default: /* read, write, readv, writev */
      r = h->kind != PX__H_SOCKET ? px__file_start(loop, op, h, &bytes)
          : h->listening          ? px__not_connected(op)
                                  : px__socket_start(op, h, &bytes);
      break;
  }
  if (r == 2) { /* a vector with nothing (left) to move */
    px__done(u, op, (int32_t)io->done);
    return 0;
  }
  if (r == 0) { /* finished at once, no packet: report at the next poll */
    io->where = PX__I_SYNC;
    io->res = (int32_t)bytes;
    px__fifo_push(&u->done, op);
    return 0;
  }
  if (r == 1)
    return 0;
  io->where = PX__I_NONE;
  return r;
}

/* ---- The thread pool's fsync. ------------------------------------------ */

static VOID CALLBACK px__fsync_work(PTP_CALLBACK_INSTANCE inst, PVOID ctx) {
  (void)inst;
  px_op *op = ctx;
  px__iop *io = px__iop_of(op);
  HANDLE port = (HANDLE)(uintptr_t)io->done;
  io->res =
      FlushFileBuffers((HANDLE)op->fd) ? 0 : px__win_error(GetLastError());
  /* The post fails only when the system is short of memory for a moment;
   * the op must still come back. */
  while (!PostQueuedCompletionStatus(port, 0, PX__KEY_FSYNC, &io->ov))
    Sleep(1);
}

static int px__fsync_start(px__iocp *u, px_op *op) {
  px__ih *h = px__ih_get(u, op->fd);
  if (h == NULL || h->kind != PX__H_FILE) {
    px__done(u, op, h == NULL ? PX_EBADF : PX_EINVAL); /* as fsync(2) */
    return 0;
  }
  px__iop *io = px__iop_of(op);
  io->where = PX__I_FSYNC;
  io->done = (uint64_t)(uintptr_t)u->port;
  if (!TrySubmitThreadpoolCallback(px__fsync_work, op, NULL)) {
    io->where = PX__I_NONE;
    return px__win_error(GetLastError());
  }
  return 0;
}

/* ---- The backend contract. --------------------------------------------- */

static int px__iocp_submit(px_loop *loop, px_op *op) {
  px__iocp *u = px__io(loop);
  memset(op->backend, 0, sizeof(op->backend));
  switch (op->kind) {
    case PX__OP_NOP:
      px__done(u, op, 0);
      return 0;
    case PX__OP_CLOSE:
      px__iocp_release(loop, op->fd);
      px__done(u, op, px__os_close(op->fd));
      return 0;
    case PX__OP_FSYNC:
      return px__fsync_start(u, op);
    default:
      return px__kick_off(loop, op);
  }
}

static HANDLE px__cancel_handle(px__iocp *u, px_fd fd) {
  px__ih *h = px__ih_get(u, fd);
  return (HANDLE)(h != NULL ? h->base : fd);
}

static void px__iocp_cancel(px_loop *loop, px_op *target, px_op *cancel_op) {
  px__iop *io = px__iop_of(target);
  int32_t res;
  io->stop = 1; /* a vector or an accept issues no further call */
  switch (io->where) {
    case PX__I_IO:
      /* ERROR_NOT_FOUND: it finished, its packet is on the way. */
      res = CancelIoEx(px__cancel_handle(px__io(loop), target->fd), &io->ov)
                ? 0
                : PX_ENOENT;
      break;
    case PX__I_FSYNC:
      res = PX_EALREADY;
      break;
    default: /* its result is known */
      res = PX_ENOENT;
      break;
  }
  (void)loop;
  if (cancel_op != NULL)
    px__complete(loop, cancel_op, res);
}

static void px__iocp_cancel_fd(px_loop *loop, px_fd fd) {
  /* Every call on the handle, from any thread.  A call that already
   * finished (its packet queued, or on the done list) issues no further
   * one: px__may_continue sees the handle closing. */
  CancelIoEx(px__cancel_handle(px__io(loop), fd), NULL);
}

static void px__iocp_cancel_all(px_loop *loop) {
  for (size_t i = 0; i < loop->nfds; i++)
    if (loop->fds[i].known && loop->fds[i].started > 0)
      CancelIoEx(px__cancel_handle(px__io(loop), px__fd_at(i)), NULL);
}

/* Results known without a packet, in the order they were found. */
static void px__done_flush(px_loop *loop, px__iocp *u) {
  px__fifo list = u->done;
  u->done = (px__fifo){0};
  px_op *op;
  while ((op = px__fifo_pop(&list)) != NULL) {
    px__iop *io = px__iop_of(op);
    if (io->where == PX__I_SYNC)
      px__io_done(loop, op, 0, (DWORD)io->res);
    else
      px__finish(loop, op, io->res);
  }
}

/* The error of a call whose packet says it failed. */
static DWORD px__packet_error(px_loop *loop, px_op *op) {
  px__iop *io = px__iop_of(op);
  px__ih *h = px__ih_get(px__io(loop), op->fd);
  DWORD bytes, flags = 0;
  if (h != NULL && h->kind == PX__H_SOCKET) {
    if (!WSAGetOverlappedResult((SOCKET)op->fd, &io->ov, &bytes, FALSE, &flags))
      return (DWORD)WSAGetLastError();
    return 0;
  }
  if (!GetOverlappedResult((HANDLE)op->fd, &io->ov, &bytes, FALSE))
    return GetLastError();
  return 0;
}

static void px__packet(px_loop *loop, OVERLAPPED_ENTRY *e) {
  if (e->lpCompletionKey == PX__KEY_WAKE) {
    px__wake_ack(loop);
    return;
  }
  px_op *op = px__op_of(e->lpOverlapped);
  px__iop *io = px__iop_of(op);
  if (e->lpCompletionKey == PX__KEY_FSYNC) {
    px__finish(loop, op, io->res);
    return;
  }
  /* Internal holds the NTSTATUS: 0 is success. */
  DWORD err = io->ov.Internal == 0 ? 0 : px__packet_error(loop, op);
  px__io_done(loop, op, err, e->dwNumberOfBytesTransferred);
}

static int px__iocp_poll(px_loop *loop, int64_t timeout_ns) {
  px__iocp *u = px__io(loop);
  DWORD ms = INFINITE;
  if (u->done.head != NULL || timeout_ns == 0)
    ms = 0;
  else if (timeout_ns > 0) {
    int64_t t = (timeout_ns + 999999) / 1000000; /* never before the timer */
    ms = t >= (int64_t)INFINITE ? INFINITE - 1 : (DWORD)t;
  }
  ULONG n = 0;
  if (!GetQueuedCompletionStatusEx(u->port, u->entries, PX__BATCH, &n, ms,
                                   FALSE)) {
    DWORD err = GetLastError();
    if (err != WAIT_TIMEOUT)
      return px__win_error(err);
    n = 0;
  }
  for (ULONG i = 0; i < n; i++)
    px__packet(loop, &u->entries[i]);
  px__done_flush(loop, u);
  return 0;
}

static void px__iocp_wakeup(px_loop *loop) {
  /* The core's latch stays set until the wakeup arrives: the post must not
   * be lost (it fails only while the system is short of memory). */
  while (!PostQueuedCompletionStatus(px__io(loop)->port, 0, PX__KEY_WAKE, NULL))
    Sleep(1);
}

static int px__iocp_init(px_loop *loop, const px_loop_opts *opts) {
  (void)opts;
  int r = px__win_startup();
  if (r < 0)
    return r;
  px__iocp *u = px__calloc(1, sizeof(*u));
  if (u == NULL)
    return PX_ENOMEM;
  /* One thread runs the loop: a concurrency of 1. */
  u->port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
  if (u->port == NULL) {
    r = px__win_error(GetLastError());
    px__free(u);
    return r;
  }
  loop->bk = u;
  return 0;
}

static void px__iocp_destroy(px_loop *loop) {
  px__iocp *u = px__io(loop);
  for (size_t i = 0; i < u->nhs; i++) {
    px_fd fd = (px_fd)(i << 2);
    if (u->hs[i].used && px__fd_get(loop, fd) != NULL)
      px__blocking_again(&u->hs[i], fd);
  }
  CloseHandle(u->port);
  while (u->chunks != NULL) {
    px__achunk *next = u->chunks->next;
    px__free(u->chunks);
    u->chunks = next;
  }
  px__free(u->hs);
  px__free(u);
  loop->bk = NULL;
}

const px__backend px__backend_iocp = {
    .name = "iocp",
    .caps = PX_CAP_FILE_ASYNC,
    .init = px__iocp_init,
    .destroy = px__iocp_destroy,
    .adopt = px__iocp_adopt,
    .release = px__iocp_release,
    .submit = px__iocp_submit,
    .cancel = px__iocp_cancel,
    .cancel_fd = px__iocp_cancel_fd,
    .cancel_all = px__iocp_cancel_all,
    .poll = px__iocp_poll,
    .wakeup = px__iocp_wakeup,
};
