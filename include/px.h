/*
 * px — a portable proactor library.
 *
 * A program submits operations and is told when each one has completed.
 * Every submit call returns 0 (the op is accepted and its callback will run
 * exactly once) or a negative PX_E* code (the op was not accepted and its
 * callback never runs).  One loop belongs to one thread; only px_post() and
 * px_loop_wakeup() may be called from other threads.
 *
 * Field markings: [public] set by you, [read-only] read it after completion,
 * [private] px's own, do not touch.
 */
#ifndef PX_H
#define PX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(PX_SHARED_BUILD)
#define PX_API __declspec(dllexport)
#elif defined(__GNUC__)
#define PX_API __attribute__((visibility("default")))
#else
#define PX_API
#endif

#define PX_VERSION_MAJOR 0
#define PX_VERSION_MINOR 1

/* ---- Errors: the same numbers on every backend and platform. ---------- */

#define PX_EPERM (-1)
#define PX_ENOENT (-2)
#define PX_EINTR (-4)
#define PX_EIO (-5)
#define PX_EBADF (-9)
#define PX_EAGAIN (-11)
#define PX_ENOMEM (-12)
#define PX_EACCES (-13)
#define PX_EFAULT (-14)
#define PX_EBUSY (-16)
#define PX_EEXIST (-17)
#define PX_ENOTDIR (-20)
#define PX_EISDIR (-21)
#define PX_EINVAL (-22)
#define PX_ENFILE (-23) /* the system's open-file table is full */
#define PX_EMFILE (-24)
#define PX_ENOSPC (-28)
#define PX_ESPIPE (-29)
#define PX_EPIPE (-32)
#define PX_ENAMETOOLONG (-36)
#define PX_ENOSYS (-38)
#define PX_ENOTSOCK (-88)
#define PX_EMSGSIZE (-90)
#define PX_EOPNOTSUPP (-95)
#define PX_EAFNOSUPPORT (-97)
#define PX_EADDRINUSE (-98)
#define PX_EADDRNOTAVAIL (-99)
#define PX_ENETDOWN (-100)
#define PX_ENETUNREACH (-101)
#define PX_ECONNABORTED (-103)
#define PX_ECONNRESET (-104)
#define PX_ENOBUFS (-105)
#define PX_EISCONN (-106)
#define PX_ENOTCONN (-107)
#define PX_ESHUTDOWN (-108)
#define PX_ETIMEDOUT (-110)
#define PX_ECONNREFUSED (-111)
#define PX_EHOSTUNREACH (-113)
#define PX_EALREADY (-114)
#define PX_ECANCELED (-125)
#define PX_EUNKNOWN (-4094)

/* A short English description of a PX_E* code (or "success" for >= 0). */
PX_API const char *px_strerror(int code);

/* ---- Handles, buffers, addresses. -------------------------------------- */

/* Wide enough for a POSIX descriptor, a SOCKET and a HANDLE. */
typedef intptr_t px_fd;
#define PX_INVALID_FD ((px_fd)-1)

/* Offset meaning "stream / current file position" for px_read and friends. */
#define PX_CUR ((int64_t)-1)

/* Layout-compatible with struct iovec on POSIX. */
typedef struct px_iov {
  void *base;
  size_t len;
} px_iov;

/* A socket address big enough for IPv4 and IPv6, without platform headers. */
typedef struct px_addr {
  uint32_t len;         /* [read-only] bytes used in storage */
  uint64_t storage[16]; /* [private] a struct sockaddr_* */
} px_addr;

/* ---- Loop and op. ------------------------------------------------------- */

typedef struct px_loop px_loop;
typedef struct px_op px_op;
typedef void (*px_cb)(px_loop *loop, px_op *op);

/*
 * A caller-owned operation.  Zero it (or call px_op_init) before first use;
 * afterwards it can be resubmitted as soon as its callback starts (or as soon
 * as px_wait handed it back).  From submission until then it and its buffer
 * belong to px.  sizeof(px_op) is 128 bytes on every platform.
 */
struct px_op {
  px_cb cb;   /* [public] set by the submit call; may be NULL with px_wait */
  void *data; /* [public] set by the submit call; yours */
  int32_t result; /* [read-only] >= 0 success (bytes moved), < 0 a PX_E* code */
  uint8_t kind;   /* [private] */
  uint8_t state;  /* [private] */
  uint16_t flags; /* [private] */
  uint32_t len;   /* [private] */
  uint32_t heap;  /* [private] timer heap slot */
  px_op *next;    /* [private] intrusive list link */
  px_fd fd;       /* [private] */
  void *buf;      /* [private] buffer, iovec, address or cancel target */
  int64_t off;    /* [private] offset; accepted handle after completion */
  int64_t when;   /* [private] deadline or timer expiry */
  uint64_t backend[7]; /* [private] backend state (an OVERLAPPED on Windows) */
};

typedef struct px_loop_opts {
  uint32_t entries; /* submission queue size hint; 0 = 256 */
  uint32_t flags;   /* reserved, 0 */
  /* "uring", "posix_aio", "iocp" or "auto"; NULL: the PX_BACKEND
   * environment variable's, else "auto": the first built that is available
   * here (io_uring refused or missing: posix_aio).  A named backend is
   * never replaced by another: PX_EINVAL for an unknown name,
   * PX_EOPNOTSUPP for one not built into this library, or its own error. */
  const char *backend;
} px_loop_opts;

/* Capabilities a backend has natively (px_loop_caps). */
#define PX_CAP_FILE_ASYNC 0x1u      /* file I/O is asynchronous in the kernel */
#define PX_CAP_KERNEL_DEADLINE 0x2u /* deadlines are kernel timers */
#define PX_CAP_MULTISHOT 0x4u       /* one submission, many completions */
#define PX_CAP_BUF_SELECT                                                      \
  0x8u /* the kernel picks a pooled receive's buffer                           \
          (px_recv_pooled works on every backend) */

PX_API int px_loop_new(px_loop **loop, const px_loop_opts *opts);
/*
 * Frees the loop.  Every op still in flight completes first: its callback
 * runs with PX_ECANCELED (or with its real result if it had already finished)
 * before px_loop_free returns; submissions from those callbacks are refused
 * with PX_ESHUTDOWN.  Returns 0, or PX_EBUSY when called from inside a
 * callback of this loop (nothing is freed then).
 */
PX_API int px_loop_free(px_loop *loop);
PX_API const char *px_loop_backend_name(const px_loop *loop);
PX_API unsigned px_loop_caps(const px_loop *loop);

static inline void px_op_init(px_op *op) {
  *op = (px_op){0};
}
/* Completes the next submission of op with PX_ETIMEDOUT if it has not
 * finished within ms milliseconds.  Applies to one submission. */
PX_API int px_op_deadline(px_op *op, uint64_t ms);
/* The handle produced by a completed px_accept. */
PX_API px_fd px_op_fd(const px_op *op);

/* ---- Submission. ------------------------------------------------------- */

/* Files: off is a byte offset, or PX_CUR for a stream / the current position.
 * Pipes and sockets take PX_CUR (any other offset is ignored there). */
PX_API int px_read(px_loop *loop, px_op *op, px_fd fd, void *buf, size_t len,
                   int64_t off, px_cb cb, void *data);
PX_API int px_write(px_loop *loop, px_op *op, px_fd fd, const void *buf,
                    size_t len, int64_t off, px_cb cb, void *data);
/* The iovec array must stay valid until the op completes. */
PX_API int px_readv(px_loop *loop, px_op *op, px_fd fd, const px_iov *iov,
                    int iovcnt, int64_t off, px_cb cb, void *data);
PX_API int px_writev(px_loop *loop, px_op *op, px_fd fd, const px_iov *iov,
                     int iovcnt, int64_t off, px_cb cb, void *data);
PX_API int px_recv(px_loop *loop, px_op *op, px_fd fd, void *buf, size_t len,
                   px_cb cb, void *data);
/* Never raises SIGPIPE: a closed peer gives PX_EPIPE (or PX_ECONNRESET). */
PX_API int px_send(px_loop *loop, px_op *op, px_fd fd, const void *buf,
                   size_t len, px_cb cb, void *data);
/* result 0 on success; the new handle is px_op_fd(op), already usable. */
PX_API int px_accept(px_loop *loop, px_op *op, px_fd fd, px_cb cb, void *data);
/* addr must stay valid until the op completes. */
PX_API int px_connect(px_loop *loop, px_op *op, px_fd fd, const px_addr *addr,
                      px_cb cb, void *data);
/* Ops pending on fd complete with PX_ECANCELED before the close completes;
 * the handle is unusable from this call on. */
PX_API int px_close(px_loop *loop, px_op *op, px_fd fd, px_cb cb, void *data);
#define PX_FSYNC_DATA 0x1u /* fdatasync: data only */
PX_API int px_fsync(px_loop *loop, px_op *op, px_fd fd, unsigned flags,
                    px_cb cb, void *data);
/* Completes with 0 after ms milliseconds (PX_ECANCELED if cancelled). */
PX_API int px_timeout(px_loop *loop, px_op *op, uint64_t ms, px_cb cb,
                      void *data);
/* Asks target to complete early.  The cancel op completes with 0 when the
 * request reached target (which then completes with PX_ECANCELED, or its own
 * result if it finished first), PX_ENOENT if target was not in flight,
 * PX_EALREADY if it is past the point of cancellation. */
PX_API int px_cancel(px_loop *loop, px_op *op, px_op *target, px_cb cb,
                     void *data);
PX_API int px_nop(px_loop *loop, px_op *op, px_cb cb, void *data);

/* ---- Running. --------------------------------------------------------- */

typedef enum px_run_mode {
  PX_RUN_DEFAULT = 0, /* until no op is in flight, or px_stop */
  PX_RUN_ONCE = 1,    /* wait for completions once, dispatch them, return */
  PX_RUN_NOWAIT = 2   /* dispatch what has completed, never block */
} px_run_mode;

/* Returns 0 when no op is left in flight, 1 when ops are still in flight
 * (stopped, or ONCE/NOWAIT returned), or a negative PX_E* code. */
PX_API int px_run(px_loop *loop, px_run_mode mode);
/* Makes px_run return after the callbacks of the current iteration. */
PX_API void px_stop(px_loop *loop);
/*
 * Pull instead of push (GetQueuedCompletionStatusEx style): waits up to
 * timeout_ms (-1 forever, 0 not at all) for completed ops and stores up to
 * max of them in out, without calling their callbacks.  Returns how many
 * (0 on timeout or wakeup) or a negative PX_E* code.
 */
PX_API int px_wait(px_loop *loop, px_op **out, int max, int timeout_ms);

/* Thread-safe: op completes on the loop's thread with result 0. */
PX_API int px_post(px_loop *loop, px_op *op, px_cb cb, void *data);
/* Thread-safe: the current or next blocking wait of px_run(ONCE) or px_wait
 * returns (latched, never lost); px_run(DEFAULT) just goes round again. */
PX_API void px_loop_wakeup(px_loop *loop);

/* ---- Statistics. ------------------------------------------------------ */

typedef struct px_stats {
  uint64_t submitted; /* submissions accepted */
  uint64_t completed; /* ops done: callback started or handed back by
                         px_wait (a multishot op counts once, at its last) */
  uint64_t failed;    /* completed with a result < 0 other than canceled */
  uint64_t cancelled; /* completed with PX_ECANCELED */
  uint64_t in_flight; /* accepted and not yet completed */
} px_stats;

PX_API void px_loop_stats(const px_loop *loop, px_stats *out);

/* ---- Handles.  All return 0 or a negative PX_E* code. ------------------ */

/* Numeric IPv4 or IPv6 address (no name lookup: it would block). */
PX_API int px_addr_set(px_addr *addr, const char *ip, int port);
PX_API int px_addr_port(const px_addr *addr);
PX_API int px_addr_local(px_fd fd, px_addr *addr);
PX_API int px_addr_peer(px_fd fd, px_addr *addr);

/* A listening TCP socket (SO_REUSEADDR; port 0 picks one). */
PX_API int px_tcp_listen(px_loop *loop, const char *ip, int port, int backlog,
                         px_fd *out);
/* Same, with SO_REUSEPORT where the platform has it (one per loop). */
#define PX_LISTEN_REUSEPORT 0x1u
PX_API int px_tcp_listen_ex(px_loop *loop, const char *ip, int port,
                            int backlog, unsigned flags, px_fd *out);
/* An unconnected TCP socket of addr's family, ready for px_connect. */
PX_API int px_tcp_socket(px_loop *loop, const px_addr *addr, px_fd *out);
PX_API int px_tcp_nodelay(px_fd fd, int on);
/* A connected pair of stream sockets (tests, wakeups, in-process channels). */
PX_API int px_socketpair(px_loop *loop, px_fd out[2]);
/* A pipe: out[0] reads, out[1] writes. */
PX_API int px_pipe(px_loop *loop, px_fd out[2]);

#define PX_O_RDONLY 0x00u
#define PX_O_WRONLY 0x01u
#define PX_O_RDWR 0x02u
#define PX_O_CREAT 0x10u
#define PX_O_TRUNC 0x20u
#define PX_O_EXCL 0x40u
#define PX_O_APPEND 0x80u
#define PX_O_DIRECT 0x100u /* bypass the page cache where supported */
PX_API int px_file_open(px_loop *loop, const char *path, unsigned flags,
                        int mode, px_fd *out);
/* The size of a regular file: 0, PX_EISDIR for a directory, PX_EINVAL for
 * anything else that is not a regular file, or the system's error. */
PX_API int px_file_size(px_fd fd, uint64_t *size);
/* Makes a handle created elsewhere usable with this loop.  A file's
 * O_DIRECT is read here, once: set or cleared with fcntl later, the loop
 * goes on treating the handle as adopted (px_fd_release and px_adopt again
 * to change that).  Adopting a handle the loop already knows does nothing.
 * Windows: PX_EINVAL for a handle opened without FILE_FLAG_OVERLAPPED (or a
 * console), PX_EBUSY for one another loop has adopted. */
PX_API int px_adopt(px_loop *loop, px_fd fd);
/* Closes a handle now, outside any op.  Refused with PX_EBUSY while ops on it
 * are in flight (use px_close), and with PX_EBADF once px_close was
 * submitted for it.  loop may be NULL for a handle no live loop knows
 * (never adopted, or its loop was freed). */
PX_API int px_fd_close(px_loop *loop, px_fd fd);
/* The loop forgets a handle without closing it (no op may be in flight):
 * it is then the caller's, for px_adopt by another loop (a connection
 * handed between threads).  PX_EOPNOTSUPP on Windows, where a completion
 * port keeps a handle for good. */
PX_API int px_fd_release(px_loop *loop, px_fd fd);
/* Closes a TCP connection with a reset (SO_LINGER 0) instead of a FIN. */
PX_API int px_fd_close_reset(px_loop *loop, px_fd fd);
/* Shut down the write side (sends a FIN). */
PX_API int px_shutdown_write(px_fd fd);

/* ---- Pools. ------------------------------------------------------------ */

/*
 * A buffer pool: count buffers of size bytes in one slab, made once; get
 * and release are O(1) and allocate nothing.  A pool belongs to one loop
 * (its thread, like the loop's other calls).  count is 1..32768.
 */
typedef struct px_bufpool px_bufpool;
typedef struct px_pool_stats {
  uint32_t capacity;   /* buffers (or slots) in the pool */
  uint32_t in_use;     /* handed out now */
  uint32_t high_water; /* the most ever handed out at once */
  uint32_t lent;       /* buffers io_uring's provided-buffer ring holds for
                          pending pooled receives: neither free for
                          px_buf_get nor in use; back once none is pending */
  uint64_t exhausted;  /* gets and pooled receives that found it empty */
} px_pool_stats;
PX_API int px_bufpool_new(px_loop *loop, uint32_t count, uint32_t size,
                          px_bufpool **out);
/* PX_EBUSY while buffers are handed out or pooled receives on the pool are
 * in flight (nothing is freed then). */
PX_API int px_bufpool_free(px_bufpool *pool);
PX_API uint32_t px_bufpool_size(const px_bufpool *pool);
/* A buffer, or NULL when all are handed out (counted in exhausted). */
PX_API void *px_buf_get(px_bufpool *pool);
/* 0, or PX_EINVAL for a pointer that is not a handed-out buffer of pool
 * (released twice, or foreign): nothing changes then. */
PX_API int px_buf_release(px_bufpool *pool, void *buf);
PX_API void px_bufpool_stats(const px_bufpool *pool, px_pool_stats *out);

/*
 * A receive whose buffer is chosen when data arrives, so a connection that
 * waits holds no buffer.  pool must belong to loop.  On completion, result
 * > 0 is the byte count and px_op_buf(op) the pool buffer holding them:
 * yours until px_buf_release.  result 0 is the end of the stream; < 0 an
 * error, PX_ENOBUFS when the pool had no free buffer (no byte is lost: the
 * data stays in the socket for the next receive).  px_op_buf is NULL then.
 */
PX_API int px_recv_pooled(px_loop *loop, px_op *op, px_fd fd, px_bufpool *pool,
                          px_cb cb, void *data);
/*
 * PX_RECV_MULTISHOT: one submission, one callback per buffer filled while
 * px_op_more(op) says 1 (the op stays in flight: do not resubmit it, you
 * may cancel it), and a last callback where px_op_more(op) is 0 (it may
 * carry data too; 0, PX_ENOBUFS or PX_ECANCELED end it otherwise).
 * Backends without PX_CAP_MULTISHOT deliver once per submission, as the
 * last callback: code that re-arms when px_op_more is 0 runs everywhere.
 * No deadline (PX_EINVAL): cancel it from a timer.
 */
#define PX_RECV_MULTISHOT 0x1u
PX_API int px_recv_pooled_ex(px_loop *loop, px_op *op, px_fd fd,
                             px_bufpool *pool, unsigned flags, px_cb cb,
                             void *data);
/* The pool buffer of a completed pooled receive (result > 0), else NULL. */
PX_API void *px_op_buf(const px_op *op);
/* 1 while a multishot op delivers and stays in flight, else 0. */
PX_API int px_op_more(const px_op *op);

/*
 * A connection pool: capacity objects of obj_size bytes in one slab.  An
 * object is named by a px_conn_id that carries a generation: once the slot
 * is released, every id of the old generation is stale, so a late
 * completion that still holds it finds NULL instead of the slot's next
 * owner.  A full pool is backpressure: px_conn_get returns NULL.
 */
typedef struct px_connpool px_connpool;
typedef uint64_t px_conn_id; /* 0 is never a valid id */
PX_API int px_connpool_new(uint32_t capacity, size_t obj_size,
                           px_connpool **out);
/* PX_EBUSY while objects are handed out. */
PX_API int px_connpool_free(px_connpool *pool);
/* A zeroed object and its id, or NULL when the pool is full. */
PX_API void *px_conn_get(px_connpool *pool, px_conn_id *id);
/* The object of id, or NULL if id is stale (released since) or bogus. */
PX_API void *px_conn_lookup(const px_connpool *pool, px_conn_id id);
/* 0, or PX_ENOENT for a stale or bogus id (nothing changes then). */
PX_API int px_conn_release(px_connpool *pool, px_conn_id id);
PX_API void px_connpool_stats(const px_connpool *pool, px_pool_stats *out);
/* Calls fn for every object handed out, in slot order (a server's "close
 * them all" at shutdown); fn may release the object it is given. */
typedef void (*px_conn_fn)(void *obj, px_conn_id id, void *ctx);
PX_API void px_connpool_foreach(px_connpool *pool, px_conn_fn fn, void *ctx);

/*
 * An acceptor keeps up to depth accepts posted on a listening handle, and
 * never more than the connection pool has free slots: while the pool is
 * full it posts none, and each px_conn_release lets it post again.  Every
 * accepted connection reaches cb with its slot already taken (zeroed).
 * Take slots of that pool only through its acceptor.  Its accepts are ops
 * of the loop: with px_wait, call op->cb of ops you did not submit.  Failed
 * accepts are
 * counted and retried: at once after a connection-level error, 10 ms later
 * after a resource one (out of descriptors, the process's or the system's,
 * or memory); a listener that is
 * itself broken (closed, not listening) ends the acceptor's accepts.
 */
typedef struct px_acceptor px_acceptor;
typedef void (*px_accept_cb)(px_acceptor *acc, px_fd fd, void *conn,
                             px_conn_id id, void *data);
typedef struct px_acceptor_stats {
  uint64_t accepted;  /* connections handed to cb */
  uint64_t failed;    /* accepts that completed with an error */
  uint64_t paused;    /* times it stopped posting because the pool was full */
  uint32_t posted;    /* accepts in flight now */
  int32_t last_error; /* the last failed accept's PX_E* code, 0 if none */
} px_acceptor_stats;
/* depth: 1..1024.  One acceptor per connection pool. */
PX_API int px_acceptor_start(px_loop *loop, px_fd listener, px_connpool *pool,
                             uint32_t depth, px_accept_cb cb, void *data,
                             px_acceptor **out);
/* Stops: pending accepts are cancelled and the acceptor frees itself once
 * they are done; cb is not called again.  px_loop_free does the same to
 * the loop's acceptors: do not stop one after freeing its loop. */
PX_API void px_acceptor_stop(px_acceptor *acc);
PX_API void px_acceptor_stats_get(const px_acceptor *acc,
                                  px_acceptor_stats *out);

/* ---- Allocation. ------------------------------------------------------ */

/* Replace the allocator px uses (only at setup, never on the submit or
 * completion path in steady state).  Call before creating any loop.  The
 * functions must be thread-safe: loops on different threads allocate, and
 * the posix_aio backend frees a small object on a libc thread. */
typedef void *(*px_malloc_fn)(size_t size);
typedef void *(*px_realloc_fn)(void *ptr, size_t size);
typedef void (*px_free_fn)(void *ptr);
PX_API int px_replace_allocator(px_malloc_fn m, px_realloc_fn r, px_free_fn f);

#ifdef __cplusplus
}
#endif
#endif /* PX_H */
