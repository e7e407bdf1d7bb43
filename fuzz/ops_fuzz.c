/* libFuzzer target: the input is a program of px operations over a socket
 * pair, a pipe and a temporary file (submit recv/send/read/write/readv/
 * writev/pooled receives/nop/timeout/post/fsync with sizes and offsets from
 * the input, cancel an op, close a handle with px_close or px_fd_close,
 * shut a socket down, set deadlines, run the loop once / without waiting /
 * until idle, px_wait, write to and read from the peer directly, release
 * pooled buffers, reopen closed handles).  A callback may resubmit its op.
 * The program ends with px_loop_free while ops are in flight, then:
 *
 * - every accepted submission completed exactly once (a multishot one after
 *   its deliveries), a refused one never, and nothing is in flight;
 * - every result is in range: 0..len bytes, or a PX_E* code the op and the
 *   situation allow (PX_ETIMEDOUT only with a deadline, PX_EPIPE only once
 *   the reader is gone, PX_ENOBUFS only while buffers are out, PX_EBADF
 *   only for the wrong end of a pipe, ...); px_loop_stats agree;
 * - streams lose, duplicate and reorder nothing: every byte written is a
 *   function of its position in its stream, and every byte read is checked
 *   against the position the reader is at (a cancelled or timed-out read
 *   took nothing, a cancelled write gave nothing); file reads see the file's
 *   pattern (writes only ever write the pattern);
 * - a handle is refused (PX_EBADF) from px_close on; px_close completes
 *   after the handle's ops; px_fd_close refuses (PX_EBUSY) only with ops on
 *   the handle; the pool has every buffer back; no descriptor is left open;
 *   AddressSanitizer sees no leak.
 * Any violation prints what it saw and aborts.
 *
 *   scripts/fuzz 600 ops_uring ops_posix_aio  (libFuzzer, ASan+UBSan, px
 *                                              built with clang)
 * Without libFuzzer, fuzz/replay.c runs this over a corpus: meson test
 * fuzz_replay_ops (every POSIX configuration). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "px.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- Failure reports. -------------------------------------------------- */

static int fz_step;       /* the instruction being run, for reports */
static int fz_trace = -1; /* OPS_FUZZ_TRACE=1 prints every step */

#define TRACE(...)                                                             \
  do {                                                                         \
    if (fz_trace > 0)                                                          \
      fprintf(stderr, __VA_ARGS__);                                            \
  } while (0)

static void fz_fail(int line, const char *what) {
  fprintf(stderr, "ops_fuzz: instruction %d: check failed (line %d): %s\n",
          fz_step, line, what);
  abort();
}

#define CHECK(x)                                                               \
  do {                                                                         \
    if (!(x))                                                                  \
      fz_fail(__LINE__, #x);                                                   \
  } while (0)

static bool known_code(int r) {
  return r < 0 && strcmp(px_strerror(r), "unknown error") != 0;
}

/* ---- The world: handles, streams, ops. --------------------------------- */

enum { H_A, H_B, H_PR, H_PW, H_FILE, NH };    /* socket ends, pipe ends, file */
enum { S_AB, S_BA, S_PIPE, NS, S_NONE = -1 }; /* byte streams */
enum { OPEN, CLOSING, CLOSED };               /* a handle's state */

enum { NSLOT = 12, BUF = 4096, FILE_INIT = 4096, POOL_BUF = 64 };

typedef struct fz_stream {
  uint32_t sent, received; /* positions in the stream */
  uint32_t pending;        /* bytes of the write in flight (its reader may
                              see them before its callback runs) */
  uint32_t gen;            /* changes when the pair is made again */
  int writes, reads;       /* in flight (px ops and direct calls) */
  bool shut;               /* the writer shut it down or closed: EOF */
  bool reader_gone;        /* the reading end is closed */
  bool writer_gone;        /* the writing end is closed */
} fz_stream;

typedef struct fz_handle {
  px_fd fd;
  int state;
  int in_flight; /* our ops on it whose last callback has not run */
  int rx, tx;    /* streams it reads and writes (S_NONE for the file) */
  int64_t pos;   /* the file's PX_CUR position */
} fz_handle;

/* Kinds of op, as the fuzzer submits them. */
enum {
  K_RECV,
  K_READ,
  K_READV,
  K_SEND,
  K_WRITE,
  K_WRITEV,
  K_POOLED,
  K_NOP,
  K_TIMEOUT,
  K_POST,
  K_FSYNC,
  K_CANCEL,
  K_CLOSE,
  NKIND
};

struct fz;

typedef struct fz_slot {
  px_op op;
  struct fz *z;
  int kind, h, target;
  uint32_t len;
  int64_t off;     /* PX_CUR or a file offset */
  int64_t file_at; /* where a file op reads or writes */
  int stream;      /* the stream it reads or writes, or S_NONE */
  bool in_flight, deadline, multishot, at_cur, armed;
  bool buffers_out; /* pooled: some buffer was out while it was in flight */
  int chain;        /* resubmissions left from the callback */
  unsigned accepted, completed;
  px_iov iov[2];
  uint8_t buf[BUF];
} fz_slot;

typedef struct fz {
  px_loop *loop;
  px_bufpool *pool;
  uint32_t pool_count;
  fz_handle h[NH];
  fz_stream s[NS];
  fz_slot slot[NSLOT];
  px_op guard;
  bool guard_in_flight, guard_stops, freeing;
  unsigned accepted, completed; /* all of ours, the guard included */
  void *held[64];               /* pooled buffers the program holds */
  int nheld;
  int file_cur, file_wcur; /* PX_CUR ops (writes) on the file in flight */
  int pooled;              /* pooled receives in flight */
  char path[64];
  int files; /* temp files made (for the path) */
  const uint8_t *in;
  size_t left;
} fz;

static uint8_t next(fz *z) {
  if (z->left == 0)
    return 0;
  z->left--;
  return *z->in++;
}

/* The byte at position pos of stream sid (the file is stream NS). */
static uint8_t pattern(int sid, uint32_t gen, uint64_t pos) {
  uint64_t x = pos * 0x9e3779b97f4a7c15ull + (uint64_t)sid * 131 + gen * 7;
  return (uint8_t)(x >> 56);
}

static uint8_t file_byte(uint64_t pos) {
  return pattern(NS, 0, pos);
}

/* ---- Handles. ---------------------------------------------------------- */

static void stream_reset(fz_stream *s) {
  uint32_t gen = s->gen + 1;
  memset(s, 0, sizeof(*s));
  s->gen = gen;
}

static void make_pair(fz *z, bool sock) {
  px_fd fds[2];
  int a = sock ? H_A : H_PR, b = sock ? H_B : H_PW;
  CHECK((sock ? px_socketpair(z->loop, fds) : px_pipe(z->loop, fds)) == 0);
  z->h[a] = (fz_handle){
      fds[0], OPEN, 0, sock ? S_BA : S_PIPE, sock ? S_AB : S_NONE, 0};
  z->h[b] = (fz_handle){
      fds[1], OPEN, 0, sock ? S_AB : S_NONE, sock ? S_BA : S_PIPE, 0};
  if (sock) {
    stream_reset(&z->s[S_AB]);
    stream_reset(&z->s[S_BA]);
  } else {
    stream_reset(&z->s[S_PIPE]);
  }
}

static void make_file(fz *z) {
  static uint8_t init[FILE_INIT];
  px_fd fd;
  snprintf(z->path, sizeof(z->path), "/tmp/px-ops-fuzz-%ld-%d", (long)getpid(),
           z->files++);
  CHECK(px_file_open(z->loop, z->path, PX_O_RDWR | PX_O_CREAT | PX_O_TRUNC,
                     0600, &fd) == 0);
  for (uint64_t i = 0; i < FILE_INIT; i++)
    init[i] = file_byte(i);
  CHECK(pwrite((int)fd, init, FILE_INIT, 0) == FILE_INIT);
  unlink(z->path); /* gone with its last descriptor */
  z->h[H_FILE] = (fz_handle){fd, OPEN, 0, S_NONE, S_NONE, 0};
}

/* The handle is gone (its close completed, or px_fd_close): its streams
 * lose their reader or writer. */
static void handle_gone(fz *z, int h) {
  fz_handle *x = &z->h[h];
  x->state = CLOSED;
  if (x->tx != S_NONE) {
    z->s[x->tx].shut = true;
    z->s[x->tx].writer_gone = true;
  }
  if (x->rx != S_NONE)
    z->s[x->rx].reader_gone = true;
}

/* Closing starts: from now on the peer may see the end of the stream or a
 * reset, and writes toward this end may fail. */
static void handle_closing(fz *z, int h) {
  fz_handle *x = &z->h[h];
  x->state = CLOSING;
  if (x->tx != S_NONE) {
    z->s[x->tx].shut = true;
    z->s[x->tx].writer_gone = true;
  }
  if (x->rx != S_NONE)
    z->s[x->rx].reader_gone = true;
}

/* Whether handle h's number belongs to another handle now.  From the
 * px_close call on, a closing handle's number may be handed out again
 * (the close may already have run, before its callback). */
static bool fd_reused(fz *z, int h) {
  for (int j = 0; j < NH; j++)
    if (j != h && z->h[j].state != CLOSED && z->h[j].fd == z->h[h].fd)
      return true;
  return false;
}

/* ---- Completions. ------------------------------------------------------ */

static bool is_write(int kind) {
  return kind == K_SEND || kind == K_WRITE || kind == K_WRITEV;
}

static int submit(fz *z, fz_slot *s);

static bool is_socket(int h) {
  return h == H_A || h == H_B;
}

/* Whether result r < 0 is one op s may see now. */
static bool allowed_error(fz *z, fz_slot *s, int r) {
  fz_stream *st = s->stream != S_NONE ? &z->s[s->stream] : NULL;
  bool sock_call =
      s->kind == K_RECV || s->kind == K_POOLED || s->kind == K_SEND;
  if (r == PX_ECANCELED) /* a close, a cancel and a free cancel anything */
    return z->freeing || (s->kind != K_CANCEL && s->kind != K_CLOSE);
  if (r == PX_ETIMEDOUT)
    return s->deadline;
  if (sock_call && !is_socket(s->h))
    return r == PX_ENOTSOCK;
  switch (s->kind) {
    case K_RECV:
    case K_READ:
    case K_READV:
    case K_POOLED:
      if (r == PX_ENOBUFS) /* only if buffers were out meanwhile */
        return s->kind == K_POOLED && s->buffers_out;
      if (s->h == H_PW)
        return r == PX_EBADF; /* reading a pipe's write end */
      return r == PX_ECONNRESET && st != NULL && st->writer_gone;
    case K_SEND:
    case K_WRITE:
    case K_WRITEV:
      if (s->h == H_PR)
        return r == PX_EBADF; /* writing a pipe's read end */
      return (r == PX_EPIPE || r == PX_ECONNRESET) && st != NULL &&
             (st->reader_gone || st->shut);
    case K_CANCEL:
      return r == PX_ENOENT || r == PX_EALREADY;
    default:
      return false;
  }
}

/* Every pooled receive in flight may find the pool empty from now on (a
 * buffer went out, or another receive may take one). */
static void pool_taken(fz *z) {
  for (int i = 0; i < NSLOT; i++)
    if (z->slot[i].in_flight && z->slot[i].kind == K_POOLED)
      z->slot[i].buffers_out = true;
}

/* Checks bytes a read got against its stream, and moves the stream on. */
static void check_stream_read(fz *z, fz_slot *s, const uint8_t *p, int n) {
  fz_stream *st = &z->s[s->stream];
  if (n == 0) {
    /* The end of the stream, only once the writer is done and all is read
     * (or the reader's own end is closing). */
    CHECK(st->shut || z->h[s->h].state != OPEN);
    CHECK(st->received == st->sent || st->writer_gone);
    return;
  }
  CHECK((uint32_t)n <= st->sent + st->pending - st->received);
  for (int i = 0; i < n; i++)
    CHECK(p[i] == pattern(s->stream, st->gen, st->received + (uint32_t)i));
  st->received += (uint32_t)n;
}

static void check_file_read(fz_slot *s, int n) {
  for (int i = 0; i < n; i++) {
    uint64_t pos = (uint64_t)s->file_at + (uint64_t)i;
    CHECK(s->buf[i] == file_byte(pos) || (pos >= FILE_INIT && s->buf[i] == 0));
  }
}

/* A successful result of a data op. */
static void check_data(fz *z, fz_slot *s, int r) {
  switch (s->kind) {
    case K_RECV:
    case K_READ:
    case K_READV:
      CHECK((uint32_t)r <= s->len);
      if (s->h == H_FILE)
        check_file_read(s, r);
      else
        check_stream_read(z, s, s->buf, r);
      break;
    case K_POOLED: {
      void *buf = px_op_buf(&s->op);
      CHECK((r > 0) == (buf != NULL));
      CHECK((uint32_t)r <= POOL_BUF);
      check_stream_read(z, s, buf, r);
      if (buf != NULL) {
        CHECK(z->nheld < (int)(sizeof(z->held) / sizeof(z->held[0])));
        z->held[z->nheld++] = buf;
        pool_taken(z);
      }
      break;
    }
    case K_SEND:
    case K_WRITE:
    case K_WRITEV:
      CHECK((uint32_t)r <= s->len);
      if (s->stream != S_NONE)
        z->s[s->stream].sent += (uint32_t)r;
      break;
    case K_CANCEL:
    case K_NOP:
    case K_TIMEOUT:
    case K_POST:
    case K_FSYNC:
    case K_CLOSE:
      CHECK(r == 0);
      break;
    default:
      CHECK(0);
  }
}

/* The op's last callback: the stream and the handle move on. */
static void op_done(fz *z, fz_slot *s, int r) {
  s->in_flight = false;
  s->completed++;
  z->completed++;
  if (s->kind == K_POOLED)
    z->pooled--;
  if (s->stream != S_NONE) {
    if (is_write(s->kind)) {
      z->s[s->stream].writes--;
      z->s[s->stream].pending = 0;
    } else {
      z->s[s->stream].reads--;
    }
  }
  if (s->h >= 0 && s->kind != K_CLOSE)
    z->h[s->h].in_flight--;
  if (s->h == H_FILE && s->at_cur) {
    z->file_cur--;
    z->file_wcur -= is_write(s->kind);
    if (r > 0)
      z->h[H_FILE].pos += r;
  }
  if (s->kind == K_CLOSE) {
    /* The handle's ops all completed before its close did. */
    CHECK(z->h[s->h].in_flight == 0);
    handle_gone(z, s->h);
  }
}

static void bad_result(fz_slot *s, int r) {
  fprintf(stderr,
          "ops_fuzz: instruction %d: op kind %d on handle %d (len %u, "
          "deadline %d) completed with %d (%s)\n",
          fz_step, s->kind, s->h, (unsigned)s->len, (int)s->deadline, r,
          px_strerror(r));
  abort();
}

static void fz_cb(px_loop *loop, px_op *op) {
  fz_slot *s = op->data;
  fz *z = s->z;
  int r = op->result;
  (void)loop;
  CHECK(op == &s->op);
  CHECK(s->in_flight); /* never for a refused op, never after its last */
  bool more = px_op_more(op) != 0;
  TRACE("  slot %d kind %d handle %d: %d%s%s\n", (int)(s - z->slot), s->kind,
        s->h, r, r < 0 ? " " : "", r < 0 ? px_strerror(r) : "");
  CHECK(!more || (s->kind == K_POOLED && s->multishot));
  if (r < 0) {
    if (!known_code(r) || !allowed_error(z, s, r))
      bad_result(s, r);
    CHECK(px_op_buf(op) == NULL);
  } else {
    if (s->at_cur && s->h == H_FILE)
      s->file_at = z->h[H_FILE].pos;
    check_data(z, s, r);
  }
  if (more)
    return;
  op_done(z, s, r);
  if (s->chain > 0) {
    s->chain--;
    int rc = submit(z, s);
    CHECK(!z->freeing || rc == PX_ESHUTDOWN || rc == 1);
  }
}

static void guard_cb(px_loop *loop, px_op *op) {
  fz *z = op->data;
  CHECK(z->guard_in_flight);
  CHECK(op->result == 0 || op->result == PX_ECANCELED);
  z->guard_in_flight = false;
  z->completed++;
  if (z->guard_stops)
    px_stop(loop);
}

static void probe_cb(px_loop *loop, px_op *op) {
  (void)loop;
  (void)op;
  CHECK(!"a refused submission's callback ran");
}

/* ---- Submissions. ------------------------------------------------------ */

static bool on_handle(int kind) {
  return kind <= K_POOLED || kind == K_FSYNC || kind == K_CLOSE;
}

/* Whether the model can follow op s if it starts now: one write at a time
 * per stream (its bytes depend on where the last one ended), and a PX_CUR
 * write to the file only alone (its position must be known). */
static bool can_follow(fz *z, fz_slot *s) {
  if (on_handle(s->kind) && z->h[s->h].state != OPEN && fd_reused(z, s->h))
    return false; /* its number is another handle's now */
  if (is_write(s->kind) && s->stream != S_NONE && z->s[s->stream].writes > 0)
    return false;
  if (s->h == H_FILE && s->at_cur &&
      (is_write(s->kind) ? z->file_cur > 0 : z->file_wcur > 0))
    return false;
  return true;
}

/* What px must answer op s's submission now: 0 or the refusal. */
static int expected(fz *z, fz_slot *s) {
  bool no_deadline = s->kind == K_NOP || s->kind == K_TIMEOUT ||
                     s->kind == K_CANCEL || s->kind == K_CLOSE;
  if (s->kind == K_POST) /* px_post looks at the deadline first */
    return s->armed ? PX_EINVAL : z->freeing ? PX_ESHUTDOWN : 0;
  if (z->freeing)
    return PX_ESHUTDOWN;
  if (s->armed && (no_deadline || (s->kind == K_POOLED && s->multishot)))
    return PX_EINVAL;
  if (s->kind == K_CANCEL && s->target == (int)(s - z->slot))
    return PX_EINVAL;
  if (on_handle(s->kind) && z->h[s->h].state != OPEN)
    return PX_EBADF;
  return 0;
}

/* Fills a write's buffer with the bytes its stream (or the file) has next. */
static void fill(fz *z, fz_slot *s) {
  if (s->stream != S_NONE) {
    fz_stream *st = &z->s[s->stream];
    for (uint32_t i = 0; i < s->len; i++)
      s->buf[i] = pattern(s->stream, st->gen, st->sent + i);
  } else if (s->h == H_FILE) {
    int64_t at = s->at_cur ? z->h[H_FILE].pos : s->off;
    for (uint32_t i = 0; i < s->len; i++)
      s->buf[i] = file_byte((uint64_t)at + i);
  } else {
    memset(s->buf, 0xa5, s->len);
  }
}

static int call(fz *z, fz_slot *s) {
  px_loop *l = z->loop;
  px_op *op = &s->op;
  px_fd fd = z->h[s->h >= 0 ? s->h : 0].fd;
  switch (s->kind) {
    case K_RECV:
      return px_recv(l, op, fd, s->buf, s->len, fz_cb, s);
    case K_READ:
      return px_read(l, op, fd, s->buf, s->len, s->off, fz_cb, s);
    case K_READV:
      return px_readv(l, op, fd, s->iov, 2, s->off, fz_cb, s);
    case K_SEND:
      return px_send(l, op, fd, s->buf, s->len, fz_cb, s);
    case K_WRITE:
      return px_write(l, op, fd, s->buf, s->len, s->off, fz_cb, s);
    case K_WRITEV:
      return px_writev(l, op, fd, s->iov, 2, s->off, fz_cb, s);
    case K_POOLED:
      return px_recv_pooled_ex(l, op, fd, z->pool,
                               s->multishot ? PX_RECV_MULTISHOT : 0, fz_cb, s);
    case K_NOP:
      return px_nop(l, op, fz_cb, s);
    case K_TIMEOUT: /* 0-3 ms */
      return px_timeout(l, op, s->len % 4, fz_cb, s);
    case K_POST:
      return px_post(l, op, fz_cb, s);
    case K_FSYNC:
      return px_fsync(l, op, fd, s->len & 1 ? PX_FSYNC_DATA : 0, fz_cb, s);
    case K_CANCEL:
      return px_cancel(l, op, &z->slot[s->target].op, fz_cb, s);
    default: /* K_CLOSE */
      return px_close(l, op, fd, fz_cb, s);
  }
}

/* Submits op s as set up; returns px's answer, or 1 when the model could
 * not follow it and it was not submitted. */
static int submit(fz *z, fz_slot *s) {
  if (!can_follow(z, s))
    return 1;
  if (is_write(s->kind))
    fill(z, s);
  int want = expected(z, s);
  int rc = call(z, s);
  TRACE("  submit slot %d kind %d handle %d len %u: %d\n", (int)(s - z->slot),
        s->kind, s->h, (unsigned)s->len, rc);
  if (rc != want) {
    fprintf(stderr,
            "ops_fuzz: instruction %d: submit of kind %d on handle %d gave "
            "%d (%s), expected %d (%s)\n",
            fz_step, s->kind, s->h, rc, px_strerror(rc), want,
            px_strerror(want));
    abort();
  }
  if (rc != 0)
    return rc; /* refused: the deadline stays armed for the next one */
  s->in_flight = true;
  s->deadline = s->armed;
  s->armed = false;
  s->accepted++;
  z->accepted++;
  if (s->kind == K_POOLED) {
    s->buffers_out = z->nheld > 0;
    if (z->pooled++ > 0)
      pool_taken(z);
  }
  if (s->stream != S_NONE) {
    if (is_write(s->kind)) {
      z->s[s->stream].writes++;
      z->s[s->stream].pending = s->len;
    } else {
      z->s[s->stream].reads++;
    }
  }
  if (on_handle(s->kind) && s->kind != K_CLOSE)
    z->h[s->h].in_flight++;
  if (s->h == H_FILE && s->at_cur) {
    z->file_cur++;
    z->file_wcur += is_write(s->kind);
  }
  if (s->kind == K_CLOSE) {
    handle_closing(z, s->h);
    /* From the px_close call on, the handle is refused. */
    px_op probe = {0};
    uint8_t b;
    CHECK(px_recv(z->loop, &probe, z->h[s->h].fd, &b, 1, probe_cb, NULL) ==
          PX_EBADF);
  }
  return 0;
}

/* ---- The program. ------------------------------------------------------ */

enum {
  I_RECV,
  I_READ,
  I_READV,
  I_SEND,
  I_WRITE,
  I_WRITEV,
  I_POOLED,
  I_NOP,
  I_TIMEOUT,
  I_POST,
  I_FSYNC,
  I_CANCEL,
  I_CLOSE, /* the kinds above submit an op of that kind */
  I_FD_CLOSE,
  I_SHUTDOWN,
  I_DEADLINE,
  I_PEER_WRITE,
  I_PEER_READ,
  I_RELEASE,
  I_RUN_NOWAIT,
  I_RUN_ONCE,
  I_RUN_DEFAULT,
  I_WAIT,
  I_REOPEN,
  I_STALE,
  NINSTR
};

/* One instruction: eight bytes, whatever it is, so that a program's
 * records keep their places when the fuzzer changes one:
 *   [0] what  [1] slot  [2] handle  [3,4] length  [5] offset, flags, ms
 *   [6] target slot, buffer index  [7] split point, chain */
typedef struct fz_instr {
  int what, h, target;
  fz_slot *s;
  uint32_t len;
  uint8_t o, b7;
} fz_instr;

static fz_instr decode(fz *z) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++)
    b[i] = next(z);
  fz_instr in = {
      b[0] % NINSTR, b[2] % NH, b[6] % NSLOT, &z->slot[b[1] % NSLOT], 0,
      b[5],          b[7]};
  /* Lengths mostly small, sometimes up to BUF. */
  in.len =
      b[3] < 224 ? 1u + b[3] % 64u : 1u + ((uint32_t)b[3] << 8 | b[4]) % BUF;
  return in;
}

/* Sets op slot s up as kind from the instruction and submits it. */
static void op_instr(fz *z, const fz_instr *in) {
  fz_slot *s = in->s;
  int kind = in->what;
  if (s->in_flight) { /* resubmitting an op in flight is refused */
    CHECK(px_nop(z->loop, &s->op, fz_cb, s) == PX_EBUSY);
    return;
  }
  s->kind = kind;
  s->h = !on_handle(kind) ? -1 : kind == K_FSYNC ? H_FILE : in->h;
  s->len = in->len;
  /* Offsets for file ops (and, ignored, for stream ops): PX_CUR or one of
   * 0, 64, ... 8128. */
  bool positional =
      kind == K_READ || kind == K_READV || kind == K_WRITE || kind == K_WRITEV;
  s->off = positional && in->o >= 128 ? (int64_t)(in->o - 128) * 64 : PX_CUR;
  s->at_cur = s->h == H_FILE && positional && s->off == PX_CUR;
  s->file_at = s->off;
  s->multishot = (in->o & 1) != 0;
  s->target = in->target;
  s->chain = (in->b7 & 0xf0) == 0xf0 ? 2 : 0;
  uint32_t split = in->b7 % s->len;
  s->iov[0] = (px_iov){s->buf, split};
  s->iov[1] = (px_iov){s->buf + split, s->len - split};
  s->stream = S_NONE;
  if (s->h >= 0 && kind <= K_POOLED)
    s->stream = is_write(kind) ? z->h[s->h].tx : z->h[s->h].rx;
  submit(z, s);
}

static void peer_write(fz *z, int h, uint32_t len) {
  static uint8_t buf[BUF];
  fz_handle *x = &z->h[h];
  fz_stream *st = &z->s[x->tx];
  if (x->state != OPEN || st->writes > 0 || st->shut)
    return;
  for (uint32_t i = 0; i < len; i++)
    buf[i] = pattern(x->tx, st->gen, st->sent + i);
  ssize_t n = send((int)x->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n > 0)
    st->sent += (uint32_t)n;
  else
    CHECK(n < 0 &&
          (errno == EAGAIN ||
           ((errno == EPIPE || errno == ECONNRESET) && st->reader_gone)));
}

static void peer_read(fz *z, int h, uint32_t len) {
  static uint8_t buf[BUF];
  fz_handle *x = &z->h[h];
  fz_stream *st = &z->s[x->rx];
  if (x->state != OPEN || st->reads > 0)
    return;
  ssize_t n = recv((int)x->fd, buf, len, MSG_DONTWAIT);
  if (n < 0) {
    CHECK(errno == EAGAIN || (errno == ECONNRESET && st->writer_gone));
    return;
  }
  fz_slot fake = {.kind = K_RECV, .h = h, .stream = x->rx};
  check_stream_read(z, &fake, buf, (int)n);
}

static void arm_guard(fz *z, uint64_t ms, bool stops) {
  if (z->guard_in_flight) {
    z->guard_stops |= stops;
    return;
  }
  z->guard_stops = stops;
  CHECK(px_timeout(z->loop, &z->guard, ms, guard_cb, z) == 0);
  z->guard_in_flight = true;
  z->accepted++;
}

/* px's counts agree with the model's, between instructions. */
static void check_stats(fz *z) {
  px_stats st;
  px_loop_stats(z->loop, &st);
  CHECK(st.submitted == z->accepted);
  CHECK(st.completed == z->completed);
  CHECK(st.in_flight == z->accepted - z->completed);
}

static void run_instr(fz *z, int what) {
  px_op *out[8];
  int rc = 0;
  switch (what) {
    case I_RUN_NOWAIT:
      rc = px_run(z->loop, PX_RUN_NOWAIT);
      break;
    case I_RUN_ONCE: /* the guard bounds the wait */
      arm_guard(z, 1, false);
      rc = px_run(z->loop, PX_RUN_ONCE);
      break;
    case I_RUN_DEFAULT: /* until idle, or stopped by the guard */
      arm_guard(z, 2, true);
      rc = px_run(z->loop, PX_RUN_DEFAULT);
      z->guard_stops = false;
      break;
    default: /* I_WAIT: the program calls the callbacks */
      rc = px_wait(z->loop, out, 8, 0);
      CHECK(rc >= 0 && rc <= 8);
      for (int i = 0; i < rc; i++)
        out[i]->cb(z->loop, out[i]);
      rc = 0;
      break;
  }
  CHECK(rc == 0 || rc == 1);
}

static void instr(fz *z) {
  fz_instr in = decode(z);
  fz_slot *s = in.s;
  TRACE("%d: instruction %d slot %d handle %d\n", fz_step, in.what,
        (int)(s - z->slot), in.h);
  int h = in.h;
  fz_handle *x = &z->h[h];
  if (in.what <= I_CLOSE) {
    op_instr(z, &in);
    return;
  }
  switch (in.what) {
    case I_FD_CLOSE:
      if (x->state == OPEN) {
        int rc = px_fd_close(z->loop, x->fd);
        /* Refused only while ops on it are in flight (an op whose result
         * is in but whose callback has not run yet no longer holds it). */
        CHECK(rc == 0 || (rc == PX_EBUSY && x->in_flight > 0));
        if (rc == 0)
          handle_gone(z, h);
      }
      break;
    case I_SHUTDOWN:
      if (is_socket(h) && x->state == OPEN) {
        CHECK(px_shutdown_write(x->fd) == 0);
        z->s[x->tx].shut = true;
      }
      break;
    case I_DEADLINE: {
      int rc = px_op_deadline(&s->op, in.o % 4);
      CHECK(rc == (s->in_flight ? PX_EBUSY : 0));
      if (rc == 0)
        s->armed = true;
      break;
    }
    case I_PEER_WRITE:
      if (is_socket(h))
        peer_write(z, h, in.len);
      break;
    case I_PEER_READ:
      if (is_socket(h))
        peer_read(z, h, in.len);
      break;
    case I_RELEASE:
      if (z->nheld > 0) {
        int i = in.target % z->nheld;
        void *buf = z->held[i];
        z->held[i] = z->held[--z->nheld];
        CHECK(px_buf_release(z->pool, buf) == 0);
        CHECK(px_buf_release(z->pool, buf) == PX_EINVAL); /* twice */
      }
      break;
    case I_REOPEN:
      if (h == H_FILE && x->state == CLOSED && x->in_flight == 0) {
        make_file(z);
      } else if (h != H_FILE) {
        int a = is_socket(h) ? H_A : H_PR, b = a + 1;
        if (z->h[a].state == CLOSED && z->h[b].state == CLOSED &&
            z->h[a].in_flight == 0 && z->h[b].in_flight == 0)
          make_pair(z, is_socket(h));
      }
      break;
    case I_STALE: /* a closed handle is refused (unless its number is ours
                     again) */
      if (x->state != OPEN && !fd_reused(z, h) && !s->in_flight)
        CHECK(px_recv(z->loop, &s->op, x->fd, s->buf, 1, fz_cb, s) == PX_EBADF);
      break;
    default:
      run_instr(z, in.what);
      break;
  }
}

/* ---- One input. -------------------------------------------------------- */

static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  if (d == NULL)
    return -1;
  while (readdir(d) != NULL)
    n++;
  closedir(d);
  return n;
}

static void teardown(fz *z) {
  z->freeing = true;
  CHECK(px_loop_free(z->loop) == 0);
  /* Every accepted op completed exactly once, during the run or the free. */
  CHECK(!z->guard_in_flight);
  for (int i = 0; i < NSLOT; i++) {
    CHECK(!z->slot[i].in_flight);
    CHECK(z->slot[i].accepted == z->slot[i].completed);
  }
  CHECK(z->accepted == z->completed);
  for (int i = 0; i < z->nheld; i++)
    CHECK(px_buf_release(z->pool, z->held[i]) == 0);
  px_pool_stats ps;
  px_bufpool_stats(z->pool, &ps);
  CHECK(ps.in_use == 0 && ps.lent == 0);
  CHECK(px_bufpool_free(z->pool) == 0);
  for (int h = 0; h < NH; h++) {
    CHECK(z->h[h].state != CLOSING); /* its close ran during the free */
    if (z->h[h].state == OPEN)
      CHECK(px_fd_close(NULL, z->h[h].fd) == 0);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static fz z;
  int fds = count_fds();
  if (fz_trace < 0)
    fz_trace = getenv("OPS_FUZZ_TRACE") != NULL;
  memset(&z, 0, sizeof(z));
  z.in = data;
  z.left = size;
  for (int i = 0; i < NSLOT; i++)
    z.slot[i].z = &z;
  /* The first byte: a small ring (its overflow path) or a large one, and
   * the pool's size. */
  uint8_t cfg = next(&z);
  px_loop_opts opts = {.entries = (uint32_t[]){8, 16, 64, 256}[cfg & 3]};
  z.pool_count = 1 + (cfg >> 2) % 4;
  if (px_loop_new(&z.loop, &opts) != 0)
    abort();
  CHECK(px_bufpool_new(z.loop, z.pool_count, POOL_BUF, &z.pool) == 0);
  make_pair(&z, true);
  make_pair(&z, false);
  make_file(&z);
  for (fz_step = 0; z.left > 0 && fz_step < 256; fz_step++) {
    instr(&z);
    check_stats(&z);
  }
  teardown(&z);
  CHECK(count_fds() == fds); /* nothing left open */
  return 0;
}
