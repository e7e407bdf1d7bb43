/*
 * http_server — an HTTP/1.1 server on px.h, the program to copy first.
 *
 *   http_server --host 127.0.0.1 --port 8080 [--threads N] [--root DIR]
 *               [--max-body BYTES] [--max-conns N] [--idle-ms MS]
 *               [--head-ms MS] [--handoff]
 *
 * Routes: GET or HEAD / answers 200 "hello"; POST /count reads the request
 * body (Content-Length or chunked) and answers with its length; with --root
 * DIR, GET or HEAD /path serves DIR/path (file reads through px, never a
 * blocking read on the loop thread).  Keep-alive and pipelining: requests on
 * one connection are answered one after another, in order.
 *
 * Each connection runs the proactor's state machine, one op in flight at a
 * time, driven by completions:
 *
 *   HEAD  receive until the request head parses (http_parse_request)
 *   BODY  consume the body as it arrives (Content-Length or chunked)
 *   WRITE send the response, resuming after short writes; a file goes
 *         read chunk -> send chunk -> read chunk ...
 *   then HEAD again with the bytes already received (pipelining), or close.
 *
 * Bytes come in through pooled receives (16 KiB buffers picked when data
 * arrives; an idle connection holds none).  A request head usually fits in
 * the buffer it arrived in and is parsed there; when it spans receives, its
 * bytes are gathered in a 48 KiB head buffer (room for the largest head the
 * parser accepts plus one more receive), and parsed again only when a line
 * ended (not per byte of a trickling head).  Responses are built in buffers
 * of a pool of their own: receives (which io_uring holds lent to the
 * kernel) can never starve them.  Head and response pools hold one buffer
 * per connection of --max-conns, so they never run dry.
 *
 * Also: "Expect: 100-continue" gets its interim answer; a GET or HEAD with
 * a body is refused (400); only regular files are served (a FIFO's open
 * would block the thread); CRLFs after a body do not start a request's
 * clock; a whole body gets 60 s.
 *
 * Limits, each answered with its status and then a (lingering) close: request
 * line over 8 KiB 414, header section over 16 KiB or 100 lines 431, malformed
 * or ambiguous framing 400 (the parser's rules), a body over --max-body 413, an
 * HTTP version other than 1.0/1.1 505.  A client gets 10 s for a whole
 * request head (--head-ms; one that trickles bytes gets 408 and is closed
 * then), --idle-ms between
 * keep-alive requests (default 5000), 10 s per body receive and 30 s per
 * send.  --max-conns caps connections per thread through the connection
 * pool: while it is full, accepts wait in the kernel's backlog.
 *
 * --threads N (default: the number of CPUs) runs one loop per thread.  Each
 * thread has its own SO_REUSEPORT listener where the platform has one, so
 * the kernel spreads connections; elsewhere (or with --handoff) the first
 * thread accepts and hands each connection to the next thread with px_post
 * (px_fd_release, then px_adopt on the receiving loop).  Windows can do
 * neither (a completion port keeps a handle for good): it runs one loop.
 *
 * SIGINT or SIGTERM stops every thread: listeners and connections are
 * closed, each loop runs until nothing is in flight, and statistics are
 * printed.
 */
#ifndef _WIN32
#define _POSIX_C_SOURCE 200809L /* clock_gettime, sigwait */
#endif
#include <px.h>

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
#else
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#endif

#include "http_parse.h"

#define MAX_THREADS 64
#define RECV_BUF (16 * 1024)
#define HEAD_BUF (48 * 1024)
#define HEAD_TIMEOUT_MS 10000
#define BODY_TIMEOUT_MS 10000 /* per receive */
#define BODY_TOTAL_MS 60000   /* for a whole body */
#define SEND_TIMEOUT_MS 30000
#define LINGER_MS 2000
#define LINGER_BYTES (1024 * 1024)
#define ACCEPTS 16
#define PATH_MAX_LEN 1024

typedef struct worker worker;
typedef struct conn conn;

typedef struct options {
  const char *host;
  const char *root;
  int port, threads, max_conns, idle_ms, head_ms, handoff;
  uint64_t max_body;
} options;

static options g_opt;

enum phase { PH_HEAD, PH_BODY, PH_WRITE, PH_LINGER, PH_CLOSING };
enum route { RT_HELLO, RT_COUNT, RT_FILE, RT_ERROR };

struct conn {
  px_op op; /* the one op in flight: receive, send, file read or close */
  worker *w;
  px_fd fd;
  px_conn_id id;
  /* Input not consumed yet: bytes [in_off, in_off + in_len) of in, a
   * receive buffer or (in_head) a head buffer. */
  char *in;
  uint32_t in_off, in_len;
  uint8_t in_head;
  uint8_t phase;
  uint8_t route;
  uint8_t keep_alive; /* the connection stays open after this response */
  uint8_t no_body;    /* HEAD: the response carries no body */
  uint8_t waiting;    /* in line for a receive buffer */
  uint8_t fresh;      /* no byte of the next request seen yet */
  uint8_t minor;      /* the request's HTTP/1.<minor> */
  uint8_t reading;    /* op is a read of the file */
  uint8_t continuing; /* op sends "100 Continue" */
  uint32_t scanned;   /* input bytes a parse found incomplete */
  int status;         /* RT_ERROR: the status to answer */
  int64_t head_start; /* ms, when this request's first byte came; in
                         PH_LINGER, when the lingering ends */
  uint32_t linger_bytes;
  /* The body being consumed. */
  uint8_t body;
  uint64_t body_left, body_total;
  http_chunked chunked;
  /* The response being sent: out[out_sent, out_len). */
  const char *out;
  uint32_t out_len, out_sent;
  char *xbuf; /* a receive buffer holding a built response head / file data */
  px_fd file;
  uint64_t file_off, file_left;
  conn *next_wait;
};

struct worker {
  int index;
  px_loop *loop;
  px_fd listener;
  px_connpool *conns;
  /* Three pools, so that one use cannot starve another (io_uring lends
   * free receive buffers to the kernel, where px_buf_get cannot reach
   * them).  Each connection holds at most one head and one response buffer:
   * with --max-conns of each (up to 32768), those never run out; memory is
   * touched only as buffers are used. */
  px_bufpool *bufs;  /* RECV_BUF: pooled receives */
  px_bufpool *outs;  /* RECV_BUF: built response heads, file data */
  px_bufpool *heads; /* HEAD_BUF: heads that span receives */
  atomic_int live;   /* connections (read by the hand-off's thread) */
  px_acceptor *acceptor;
  conn *wait_head, *wait_tail;
  int stopping;
  uint64_t requests, accepted, enobufs;
  px_op stop_op;
  px_op keep_op, keep_cancel; /* keeps px_run going until the stop */
  px_op listen_close_op;
  px_op *stop_closes;
  uint32_t nstop_closes;
#ifdef _WIN32
  HANDLE thread;
#else
  pthread_t thread;
#endif
  int started;
  int status;
};

static worker g_workers[MAX_THREADS];
static int g_nworkers;
static atomic_uint g_next_handoff;

/* ---- Canned responses. ------------------------------------------------- */

/* Sent when no buffer is left to build an answer in. */
static const char UNAVAILABLE[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                  "Content-Length: 0\r\n"
                                  "Connection: close\r\n\r\n";
static const char CONTINUE[] = "HTTP/1.1 100 Continue\r\n\r\n";

static const char HELLO_11[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 5\r\n"
                               "\r\nhello";

static const char *reason(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

/* A response head: status line, length, connection, blank line. */
static uint32_t build_head(char *dst, size_t cap, int status, const char *ctype,
                           uint64_t length, int keep, int minor) {
  const char *conn = !keep        ? "Connection: close\r\n"
                     : minor == 0 ? "Connection: keep-alive\r\n"
                                  : "";
  const char *allow = status == 405 ? "Allow: GET, HEAD\r\n" : "";
  int n = snprintf(dst, cap,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                   "Content-Length: %llu\r\n%s%s\r\n",
                   status, reason(status), ctype, (unsigned long long)length,
                   allow, conn);
  return n < 0 || (size_t)n >= cap ? 0 : (uint32_t)n;
}

/* ---- Connections: lifetime. -------------------------------------------- */

static void conn_advance(conn *c);
static void conn_recv(conn *c);

/* A monotonic clock in ms.  Timeouts are deadlines on the ops; this only
 * measures how much of a head's 10 s is left. */
static int64_t now_ms(void) {
#ifdef _WIN32
  return (int64_t)GetTickCount64();
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
#endif
}

static void buf_put(worker *w, px_bufpool *pool, void *buf) {
  int rc = px_buf_release(pool, buf);
  if (rc < 0)
    fprintf(stderr, "http_server: px_buf_release: %s\n", px_strerror(rc));
  if (pool == w->bufs && w->wait_head != NULL && !w->stopping) {
    /* A receive buffer came back: the connection waiting longest may
     * receive again. */
    conn *next = w->wait_head;
    w->wait_head = next->next_wait;
    if (w->wait_head == NULL)
      w->wait_tail = NULL;
    next->waiting = 0;
    conn_recv(next);
  }
}

/* Lets go of what a response holds: its buffer and its file. */
static void conn_drop_response(conn *c) {
  worker *w = c->w;
  if (c->xbuf != NULL)
    buf_put(w, w->outs, c->xbuf);
  c->xbuf = NULL;
  if (c->file != PX_INVALID_FD)
    px_fd_close(w->loop, c->file);
  c->file = PX_INVALID_FD;
}

/* ... and the input too. */
static void conn_drop_resources(conn *c) {
  worker *w = c->w;
  if (c->in != NULL)
    buf_put(w, c->in_head ? w->heads : w->bufs, c->in);
  c->in = NULL;
  c->in_len = c->in_off = 0;
  conn_drop_response(c);
}

static void on_closed(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  if (op->result < 0)
    fprintf(stderr, "http_server: close: %s\n", px_strerror(op->result));
  conn_drop_resources(c); /* a close at stop left them to this point */
  atomic_fetch_sub(&c->w->live, 1);
  px_conn_release(c->w->conns, c->id);
}

/* Closes c, whose op is idle. */
static void conn_close(conn *c) {
  if (c->phase == PH_CLOSING)
    return;
  c->phase = PH_CLOSING;
  conn_drop_resources(c);
  int rc = px_close(c->w->loop, &c->op, c->fd, on_closed, c);
  if (rc < 0) {
    fprintf(stderr, "http_server: px_close: %s\n", px_strerror(rc));
    px_fd_close(c->w->loop, c->fd);
    atomic_fetch_sub(&c->w->live, 1);
    px_conn_release(c->w->conns, c->id);
  }
}

static void conn_start(worker *w, px_fd fd, conn *c, px_conn_id id) {
  c->w = w;
  c->fd = fd;
  c->id = id;
  c->file = PX_INVALID_FD;
  c->phase = PH_HEAD;
  c->fresh = 1;
  w->accepted++;
  atomic_fetch_add(&w->live, 1);
  px_tcp_nodelay(fd, 1);
  conn_advance(c);
}

/* ---- Receiving. -------------------------------------------------------- */

static void on_recv(px_loop *loop, px_op *op);

static void conn_recv(conn *c) {
  worker *w = c->w;
  /* The deadline of this receive: the keep-alive idle time before a
   * request's first byte, what is left of the head's 10 s after it, and
   * 10 s per receive of a body. */
  int64_t ms = c->phase == PH_BODY ? c->head_start + BODY_TOTAL_MS - now_ms()
               : c->fresh          ? g_opt.idle_ms
                                   : c->head_start + g_opt.head_ms - now_ms();
  if (c->phase == PH_BODY && ms > BODY_TIMEOUT_MS)
    ms = BODY_TIMEOUT_MS;
  if (ms < 1)
    ms = 1;
  px_op_deadline(&c->op, (uint64_t)ms);
  int rc = px_recv_pooled(w->loop, &c->op, c->fd, w->bufs, on_recv, c);
  if (rc < 0) {
    fprintf(stderr, "http_server: px_recv_pooled: %s\n", px_strerror(rc));
    conn_close(c);
  }
}

/* Moves the input out of its receive buffer into a head buffer, and the
 * receive buffer goes back.  0, or -1 when no head buffer is left. */
static int conn_gather(conn *c) {
  worker *w = c->w;
  char *h = px_buf_get(w->heads);
  if (h == NULL)
    return -1;
  memcpy(h, c->in + c->in_off, c->in_len);
  char *old = c->in;
  c->in = h;
  c->in_off = 0;
  c->in_head = 1;
  buf_put(w, w->bufs, old);
  return 0;
}

/* Appends n received bytes of buf to the connection's input. */
static int conn_take_input(conn *c, char *buf, uint32_t n) {
  worker *w = c->w;
  if (c->in == NULL) {
    c->in = buf;
    c->in_off = 0;
    c->in_len = n;
    c->in_head = 0;
    return 0;
  }
  if (!c->in_head) { /* the head spans receives: gather it */
    if (conn_gather(c) < 0) {
      buf_put(w, w->bufs, buf);
      return 503;
    }
  } else if (c->in_off > 0) {
    memmove(c->in, c->in + c->in_off, c->in_len);
    c->in_off = 0;
  }
  /* The parser rejects a head before it passes 8 KiB + 16 KiB, and a body
   * is consumed as it comes: one more receive always fits. */
  if (c->in_len + n > HEAD_BUF) {
    buf_put(w, w->bufs, buf);
    return 431;
  }
  memcpy(c->in + c->in_len, buf, n);
  c->in_len += n;
  buf_put(w, w->bufs, buf);
  return 0;
}

static void respond_error(conn *c, int status);

static void on_recv(px_loop *loop, px_op *op) {
  conn *c = op->data;
  worker *w = c->w;
  (void)loop;
  char *buf = px_op_buf(op);
  if (c->phase == PH_CLOSING) { /* stopping: a close is on its way */
    if (buf != NULL)
      buf_put(w, w->bufs, buf);
    return;
  }
  if (op->result == PX_ENOBUFS) {
    /* Every receive buffer is out: wait in line (each buffer that comes
     * back wakes the next); with none out, none would come back.  A
     * connection waits without a receive buffer: its bytes so far go to
     * its head buffer.  (The line has no deadline: were every buffer held
     * by a connection in it, none would ever come back.) */
    if (c->in != NULL && !c->in_head && conn_gather(c) < 0) {
      respond_error(c, 503);
      return;
    }
    w->enobufs++;
    c->waiting = 1;
    c->next_wait = NULL;
    if (w->wait_tail != NULL)
      w->wait_tail->next_wait = c;
    else
      w->wait_head = c;
    w->wait_tail = c;
    px_pool_stats st;
    px_bufpool_stats(w->bufs, &st);
    if (st.in_use == 0) {
      w->wait_head = c->next_wait;
      if (w->wait_head == NULL)
        w->wait_tail = NULL;
      c->waiting = 0;
      conn_recv(c);
    }
    return;
  }
  if (op->result == PX_ETIMEDOUT && !c->fresh && c->phase == PH_HEAD) {
    respond_error(c, 408); /* a head that did not come in time */
    return;
  }
  if (op->result <= 0) { /* end of stream, reset, idle timeout */
    conn_close(c);
    return;
  }
  if (c->fresh) {
    c->fresh = 0;
    c->head_start = now_ms();
  }
  int status = conn_take_input(c, buf, (uint32_t)op->result);
  if (status != 0)
    respond_error(c, status);
  else
    conn_advance(c);
}

static void consume(conn *c, uint32_t n) {
  c->in_off += n;
  c->in_len -= n;
  if (c->in_len == 0) { /* all used: the buffer goes back */
    buf_put(c->w, c->in_head ? c->w->heads : c->w->bufs, c->in);
    c->in = NULL;
    c->in_off = 0;
  }
}

/* ---- Sending. ---------------------------------------------------------- */

static void on_sent(px_loop *loop, px_op *op);
static void on_file_read(px_loop *loop, px_op *op);

static void send_out(conn *c, const char *p, uint32_t len) {
  c->out = p;
  c->out_len = len;
  c->out_sent = 0;
  px_op_deadline(&c->op, SEND_TIMEOUT_MS);
  int rc = px_send(c->w->loop, &c->op, c->fd, p, len, on_sent, c);
  if (rc < 0) {
    fprintf(stderr, "http_server: px_send: %s\n", px_strerror(rc));
    conn_close(c);
  }
}

static void file_read_next(conn *c) {
  uint32_t n = c->file_left < RECV_BUF ? (uint32_t)c->file_left : RECV_BUF;
  int rc = px_read(c->w->loop, &c->op, c->file, c->xbuf, n,
                   (int64_t)c->file_off, on_file_read, c);
  c->reading = rc == 0;
  if (rc < 0) {
    fprintf(stderr, "http_server: px_read: %s\n", px_strerror(rc));
    conn_close(c);
  }
}

/*
 * Lingering close.  A server that closes while the client is still sending
 * (a rejected request's body, pipelined requests, a trickling head) makes
 * the kernel answer those bytes with a reset, which can destroy the
 * response before the client has read it.  So the server shuts down its
 * writing side, reads and drops what still comes for up to LINGER_MS (or
 * LINGER_BYTES), and closes at the client's end of stream or then.
 */
static void on_linger(px_loop *loop, px_op *op);

static void linger_recv(conn *c) {
  int64_t ms = c->head_start - now_ms();
  if (ms < 1 || c->linger_bytes >= LINGER_BYTES) {
    conn_close(c);
    return;
  }
  px_op_deadline(&c->op, (uint64_t)ms);
  if (px_recv_pooled(c->w->loop, &c->op, c->fd, c->w->bufs, on_linger, c) < 0)
    conn_close(c);
}

static void on_linger(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  char *buf = px_op_buf(op);
  if (buf != NULL)
    buf_put(c->w, c->w->bufs, buf);
  if (c->phase == PH_CLOSING)
    return;
  if (op->result > 0) {
    c->linger_bytes += (uint32_t)op->result;
    linger_recv(c);
  } else {
    conn_close(c); /* end of stream, time up, or no buffer to read into */
  }
}

static void conn_linger(conn *c) {
  worker *w = c->w;
  if (c->in != NULL) /* unread input goes */
    buf_put(w, c->in_head ? w->heads : w->bufs, c->in);
  c->in = NULL;
  c->in_len = c->in_off = 0;
  c->phase = PH_LINGER;
  c->head_start = now_ms() + LINGER_MS;
  c->linger_bytes = 0;
  if (px_shutdown_write(c->fd) < 0) {
    conn_close(c);
    return;
  }
  linger_recv(c);
}

/* The response is out: the next request (maybe already received). */
static void response_done(conn *c) {
  worker *w = c->w;
  w->requests++;
  conn_drop_response(c);
  if (w->stopping) {
    conn_close(c);
    return;
  }
  if (!c->keep_alive) {
    conn_linger(c);
    return;
  }
  c->phase = PH_HEAD;
  /* CRLFs a client may send after a body (RFC 9112 §2.2) are not the start
   * of a request: the idle time applies until a real byte comes. */
  uint32_t i = 0;
  while (i < c->in_len &&
         (c->in[c->in_off + i] == '\r' || c->in[c->in_off + i] == '\n'))
    i++;
  c->fresh = i == c->in_len;
  c->head_start = now_ms();
  conn_advance(c);
}

static void on_sent(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  if (c->phase == PH_CLOSING)
    return;
  if (op->result < 0) { /* reset, or a client that stopped reading */
    conn_close(c);
    return;
  }
  c->out_sent += (uint32_t)op->result;
  if (c->continuing && c->out_sent == c->out_len) {
    c->continuing = 0;
    conn_advance(c); /* now the body */
    return;
  }
  if (c->out_sent < c->out_len) { /* a short write: the rest */
    px_op_deadline(&c->op, SEND_TIMEOUT_MS);
    int rc = px_send(c->w->loop, &c->op, c->fd, c->out + c->out_sent,
                     c->out_len - c->out_sent, on_sent, c);
    if (rc < 0)
      conn_close(c);
    return;
  }
  if (c->route == RT_FILE && c->file_left > 0 && !c->no_body) {
    file_read_next(c);
    return;
  }
  response_done(c);
}

static void on_file_read(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  c->reading = 0;
  if (c->phase == PH_CLOSING) { /* stopping: the file was closed under it */
    c->file = PX_INVALID_FD;
    c->phase = PH_WRITE; /* so that conn_close runs */
    conn_close(c);
    return;
  }
  if (op->result <= 0) { /* the file shrank or failed: the length is a lie */
    conn_close(c);
    return;
  }
  c->file_off += (uint64_t)op->result;
  c->file_left -= (uint64_t)op->result;
  send_out(c, c->xbuf, (uint32_t)op->result);
}

/* Answers with status and closes (after a parse error or a limit). */
static void respond_error(conn *c, int status) {
  c->route = RT_ERROR;
  c->keep_alive = 0;
  c->no_body = 1;
  c->phase = PH_WRITE;
  if (c->xbuf == NULL)
    c->xbuf = px_buf_get(c->w->outs);
  if (c->xbuf == NULL) {
    send_out(c, UNAVAILABLE, sizeof(UNAVAILABLE) - 1);
    return;
  }
  uint32_t n = build_head(c->xbuf, RECV_BUF, status, "text/plain", 0, 0, 1);
  send_out(c, c->xbuf, n);
}

/* ---- Requests. --------------------------------------------------------- */

static int header_is(const http_header *h, const char *name,
                     const char *value) {
  size_t n = strlen(name), v = strlen(value);
  if (h->name_len != n || h->value_len != v)
    return 0;
  for (size_t i = 0; i < n; i++)
    if ((h->name[i] | 0x20) != (name[i] | 0x20))
      return 0;
  for (size_t i = 0; i < v; i++)
    if ((h->value[i] | 0x20) != (value[i] | 0x20))
      return 0;
  return 1;
}

static int expects_continue(const http_request *r) {
  if (r->minor < 1)
    return 0;
  for (size_t i = 0; i < r->nheaders; i++)
    if (header_is(&r->headers[i], "expect", "100-continue"))
      return 1;
  return 0;
}

static int is_method(const http_request *r, const char *m) {
  size_t n = strlen(m);
  return r->method_len == n && memcmp(r->method, m, n) == 0;
}

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

/* The file path of target under the root: percent-decoded, no "..", no
 * backslash, no NUL.  Returns 0 or the status to answer. */
static int file_path(const char *t, size_t n, char *out, size_t cap) {
  size_t root = strlen(g_opt.root), o = root;
  if (root + 2 >= cap)
    return 500;
  memcpy(out, g_opt.root, root);
  for (size_t i = 0; i < n && t[i] != '?' && t[i] != '#'; i++) {
    char ch = t[i];
    if (ch == '%') {
      int hi = i + 2 < n ? hexval(t[i + 1]) : -1;
      int lo = i + 2 < n ? hexval(t[i + 2]) : -1;
      if (hi < 0 || lo < 0)
        return 400;
      ch = (char)(hi * 16 + lo);
      i += 2;
    }
    if (ch == '\0' || ch == '\\')
      return 400;
    if (o + 1 >= cap)
      return 414;
    out[o++] = ch;
  }
  out[o] = '\0';
  /* Refuse any ".." segment (after decoding, so %2e%2e is caught too). */
  for (const char *p = out + root; (p = strstr(p, "..")) != NULL; p += 2) {
    int starts = p == out + root || p[-1] == '/';
    int ends = p[2] == '\0' || p[2] == '/';
    if (starts && ends)
      return 403;
  }
  return 0;
}

/* Opens the file of a GET or HEAD; 0 or the status to answer. */
static int open_file(conn *c, const http_request *r) {
  char path[PATH_MAX_LEN];
  int status = file_path(r->target, r->target_len, path, sizeof(path));
  if (status != 0)
    return status;
#ifndef _WIN32
  /* Only regular files: open() of a FIFO would block the loop's thread
   * until a writer came (a device could do worse). */
  struct stat st;
  if (stat(path, &st) != 0)
    return errno == ENOENT || errno == ENOTDIR ? 404 : 403;
  if (!S_ISREG(st.st_mode))
    return 403;
#endif
  px_fd fd;
  int rc = px_file_open(c->w->loop, path, PX_O_RDONLY, 0, &fd);
  if (rc == PX_ENOENT || rc == PX_ENOTDIR)
    return 404;
  if (rc < 0)
    return rc == PX_EACCES || rc == PX_EISDIR ? 403 : 500;
  uint64_t size;
  rc = px_file_size(fd, &size);
  if (rc < 0) {
    px_fd_close(c->w->loop, fd);
    return rc == PX_EISDIR ? 403 : 404;
  }
  c->file = fd;
  c->file_off = 0;
  c->file_left = size;
  return 0;
}

/* A parsed head: where the request goes, and its body. */
static void request_begin(conn *c, const http_request *r) {
  c->keep_alive = (uint8_t)r->keep_alive;
  c->no_body = is_method(r, "HEAD");
  c->status = 200;
  size_t plen = 0;
  while (plen < r->target_len && r->target[plen] != '?')
    plen++;
  int get = is_method(r, "GET") || c->no_body;
  if (r->target_len == 0 || r->target[0] != '/') {
    c->route = RT_ERROR;
    c->status = 400;
  } else if (get && plen == 1) {
    c->route = RT_HELLO;
  } else if (is_method(r, "POST") && plen == 6 &&
             memcmp(r->target, "/count", 6) == 0) {
    c->route = RT_COUNT;
  } else if (get && g_opt.root != NULL) {
    c->route = RT_FILE;
    int status = open_file(c, r);
    if (status != 0) {
      c->route = RT_ERROR;
      c->status = status;
    }
  } else {
    c->route = RT_ERROR;
    c->status = get ? 404 : 405;
  }
  if (get && (r->body == HTTP_BODY_CHUNKED || r->content_length > 0)) {
    /* A body on GET or HEAD means nothing here; refusing it keeps a file
     * from being held open while a body trickles in. */
    if (c->file != PX_INVALID_FD)
      px_fd_close(c->w->loop, c->file);
    c->file = PX_INVALID_FD;
    c->route = RT_ERROR;
    c->status = 400;
  }
  c->body = (uint8_t)r->body;
  c->body_total = 0;
  c->body_left = r->content_length;
  c->head_start = now_ms(); /* the body's time starts */
  if (r->body == HTTP_BODY_CHUNKED)
    http_chunked_init(&c->chunked, g_opt.max_body);
}

static void respond(conn *c, int minor) {
  worker *w = c->w;
  c->phase = PH_WRITE;
  if (c->route == RT_HELLO && c->keep_alive && minor == 1) {
    /* The common case, sent from a constant: no buffer, no formatting. */
    send_out(c, HELLO_11,
             c->no_body ? sizeof(HELLO_11) - 1 - 5 : sizeof(HELLO_11) - 1);
    return;
  }
  c->xbuf = px_buf_get(w->outs);
  if (c->xbuf == NULL) { /* cannot happen with the pools sized per conn */
    respond_error(c, 503);
    return;
  }
  uint32_t n = 0;
  if (c->route == RT_HELLO) {
    n = build_head(c->xbuf, RECV_BUF, 200, "text/plain", 5, c->keep_alive,
                   minor);
    if (!c->no_body) {
      memcpy(c->xbuf + n, "hello", 5);
      n += 5;
    }
  } else if (c->route == RT_COUNT) {
    char body[24];
    int len = snprintf(body, sizeof(body), "%llu\n",
                       (unsigned long long)c->body_total);
    n = build_head(c->xbuf, RECV_BUF, 200, "text/plain", (uint64_t)len,
                   c->keep_alive, minor);
    memcpy(c->xbuf + n, body, (size_t)len);
    n += (uint32_t)len;
  } else if (c->route == RT_FILE) {
    n = build_head(c->xbuf, RECV_BUF, 200, "application/octet-stream",
                   c->file_left, c->keep_alive, minor);
  } else {
    /* A request the server understood but will not serve: the connection
     * stays usable (its body, if any, was consumed). */
    n = build_head(c->xbuf, RECV_BUF, c->status, "text/plain", 0, c->keep_alive,
                   minor);
  }
  send_out(c, c->xbuf, n);
}

/* Consumes body bytes from the input; 1 when the body is complete, 0 when
 * more must be received, or -status. */
static int body_consume(conn *c) {
  if (c->body == HTTP_BODY_LENGTH) {
    uint32_t take =
        c->body_left < c->in_len ? (uint32_t)c->body_left : c->in_len;
    c->body_left -= take;
    c->body_total += take;
    if (take > 0)
      consume(c, take);
    return c->body_left == 0;
  }
  if (c->body != HTTP_BODY_CHUNKED)
    return 1;
  while (c->in_len > 0) {
    size_t used = 0, dlen = 0;
    const char *data = NULL;
    int r = http_chunked_feed(&c->chunked, c->in + c->in_off, c->in_len, &used,
                              &data, &dlen);
    if (r < 0)
      return r;
    c->body_total += r == HTTP_CHUNK_DATA ? dlen : 0;
    if (used > 0)
      consume(c, (uint32_t)used);
    if (r == HTTP_CHUNK_DONE)
      return 1;
  }
  return 0;
}

/* Runs the state machine as far as the input allows. */
static void conn_advance(conn *c) {
  for (;;) {
    if (c->phase == PH_HEAD) {
      if (c->in_len == 0) {
        conn_recv(c);
        return;
      }
      /* The parser reads the head from its start each time: a head that
       * comes a byte at a time is parsed again only when a line ended, or
       * every 4 KiB (or at the largest head), not per byte. */
      if (c->scanned > 0 && c->in_len < HTTP_MAX_HEAD_TOTAL &&
          c->in_len - c->scanned < 4096 &&
          memchr(c->in + c->in_off + c->scanned, '\n',
                 c->in_len - c->scanned) == NULL) {
        conn_recv(c);
        return;
      }
      http_request req;
      int r = http_parse_request(c->in + c->in_off, c->in_len, &req);
      if (r == 0) { /* incomplete: more bytes */
        c->scanned = c->in_len;
        conn_recv(c);
        return;
      }
      if (r < 0) {
        respond_error(c, -r);
        return;
      }
      request_begin(c, &req);
      c->minor = (uint8_t)req.minor;
      c->scanned = 0;
      if (req.body == HTTP_BODY_LENGTH && req.content_length > g_opt.max_body) {
        respond_error(c, 413);
        return;
      }
      if (c->route == RT_ERROR && c->status == 400) {
        respond_error(c, 400);
        return;
      }
      consume(c, (uint32_t)r);
      c->phase = PH_BODY;
      if (c->body != HTTP_BODY_NONE && expects_continue(&req)) {
        /* The client waits for this before it sends the body. */
        c->continuing = 1;
        send_out(c, CONTINUE, sizeof(CONTINUE) - 1);
        return;
      }
    }
    if (c->phase == PH_BODY) {
      int r = body_consume(c);
      if (r < 0) {
        respond_error(c, -r);
        return;
      }
      if (r == 0) {
        conn_recv(c);
        return;
      }
      respond(c, c->minor);
      return;
    }
    return;
  }
}

/* ---- Accepting. -------------------------------------------------------- */

static void on_accept(px_acceptor *acc, px_fd fd, void *obj, px_conn_id id,
                      void *data);

/* A connection handed over by the accepting thread (px_post). */
typedef struct handoff {
  px_op op;
  px_fd fd;
  worker *to;
} handoff;

static void on_handoff(px_loop *loop, px_op *op) {
  handoff *h = op->data; /* op is inside h: read it all before the free */
  worker *w = h->to;
  px_fd fd = h->fd;
  int result = op->result;
  free(h);
  px_conn_id id;
  conn *c = NULL;
  atomic_fetch_sub(&w->live, 1); /* the reservation; conn_start counts */
  if (result == 0 && !w->stopping && px_adopt(loop, fd) == 0 &&
      (c = px_conn_get(w->conns, &id)) != NULL) {
    conn_start(w, fd, c, id);
    return;
  }
  /* The loop is going, or full: the connection ends here. */
  px_fd_close(loop, fd);
}

/* The first thread accepts for all (no SO_REUSEPORT, or --handoff): every
 * connection after its own share goes to the next thread in turn. */
static int hand_over(worker *from, px_fd fd) {
  unsigned k = atomic_fetch_add(&g_next_handoff, 1) % (unsigned)g_nworkers;
  worker *to = &g_workers[k];
  /* A full thread is skipped: the connection stays here, where the
   * acceptor already holds its slot (a thread's count may be a moment
   * old; a hand-off that still finds it full is closed there). */
  if (to == from || atomic_load(&to->live) >= g_opt.max_conns)
    return 0;
  atomic_fetch_add(&to->live, 1); /* reserved until it arrives */
  handoff *h = malloc(sizeof(*h));
  if (h == NULL || px_fd_release(from->loop, fd) < 0) {
    free(h);
    return 0;
  }
  memset(&h->op, 0, sizeof(h->op));
  h->fd = fd;
  h->to = to;
  if (px_post(to->loop, &h->op, on_handoff, h) < 0) {
    free(h);
    px_fd_close(NULL, fd);
  }
  return 1;
}

static void on_accept(px_acceptor *acc, px_fd fd, void *obj, px_conn_id id,
                      void *data) {
  worker *w = data;
  (void)acc;
  if (g_opt.handoff && g_nworkers > 1 && hand_over(w, fd)) {
    px_conn_release(w->conns, id); /* the slot stays here, unused */
    return;
  }
  memset(obj, 0, sizeof(conn));
  conn_start(w, fd, obj, id);
}

/* ---- Stopping. --------------------------------------------------------- */

static void on_listen_closed(px_loop *loop, px_op *op) {
  (void)loop;
  (void)op;
}

static void conn_stop(void *obj, px_conn_id id, void *ctx) {
  conn *c = obj;
  worker *w = ctx;
  (void)id;
  if (c->phase == PH_CLOSING)
    return;
  if (c->waiting) { /* its op is idle */
    conn_close(c);
    return;
  }
  /* Busy: a close of its own; the pending op completes first (its
   * callback sees PH_CLOSING and lets go of its buffer).  A file read is
   * ended by closing the file; its callback then closes the socket. */
  c->phase = PH_CLOSING;
  px_op *op = &w->stop_closes[w->nstop_closes++];
  px_fd target = c->reading ? c->file : c->fd;
  if (px_close(w->loop, op, target, c->reading ? on_listen_closed : on_closed,
               c) < 0)
    fprintf(stderr, "http_server: px_close at stop failed\n");
}

/* Runs on the worker's loop thread (px_post). */
static void on_stop(px_loop *loop, px_op *op) {
  worker *w = op->data;
  if (op->result < 0)
    return;
  w->stopping = 1;
  px_cancel(loop, &w->keep_cancel, &w->keep_op, NULL, NULL);
  w->wait_head = w->wait_tail = NULL;
  if (w->acceptor != NULL)
    px_acceptor_stop(w->acceptor);
  w->acceptor = NULL;
  if (w->listener != PX_INVALID_FD)
    px_close(loop, &w->listen_close_op, w->listener, on_listen_closed, w);
  w->listener = PX_INVALID_FD;
  px_pool_stats st;
  px_connpool_stats(w->conns, &st);
  w->stop_closes = calloc(st.in_use ? st.in_use : 1, sizeof(px_op));
  if (w->stop_closes == NULL) {
    px_stop(loop);
    return;
  }
  px_connpool_foreach(w->conns, conn_stop, w);
}

/* ---- Threads. ---------------------------------------------------------- */

/* px_run returns when nothing is in flight; a thread that only receives
 * handed-over connections has nothing of its own, so a long timer keeps
 * its loop running until the stop cancels it. */
static void on_keep(px_loop *loop, px_op *op) {
  worker *w = op->data;
  if (op->result == 0 && !w->stopping)
    px_timeout(loop, op, 3600 * 1000, on_keep, w);
}

static void worker_run(worker *w) {
  px_timeout(w->loop, &w->keep_op, 3600 * 1000, on_keep, w);
  int rc = px_run(w->loop, PX_RUN_DEFAULT);
  if (rc < 0)
    fprintf(stderr, "http_server: px_run: %s\n", px_strerror(rc));
  w->status = rc < 0;
}

#ifdef _WIN32
static DWORD WINAPI worker_main(LPVOID arg) {
  worker_run(arg);
  return 0;
}
static int thread_start(worker *w) {
  w->thread = CreateThread(NULL, 0, worker_main, w, 0, NULL);
  return w->thread != NULL ? 0 : -1;
}
static void thread_join(worker *w) {
  WaitForSingleObject(w->thread, INFINITE);
  CloseHandle(w->thread);
}
static int cpu_count(void) {
  SYSTEM_INFO si;
  GetSystemInfo(&si);
  return (int)si.dwNumberOfProcessors;
}
#else
static void *worker_main(void *arg) {
  worker_run(arg);
  return NULL;
}
static int thread_start(worker *w) {
  return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? 0 : -1;
}
static void thread_join(worker *w) {
  pthread_join(w->thread, NULL);
}
static int cpu_count(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}
#endif

/*
 * Signals, as in echo_server.c: blocked in every thread and taken by one
 * watcher thread with sigwait (Windows: the console handler's own thread);
 * the stop reaches each loop through px_post.
 */
static atomic_flag g_stop_requested = ATOMIC_FLAG_INIT;

static void request_stop(void) {
  if (atomic_flag_test_and_set(&g_stop_requested))
    return;
  for (int i = 0; i < g_nworkers; i++) {
    worker *w = &g_workers[i];
    int rc = px_post(w->loop, &w->stop_op, on_stop, w);
    if (rc < 0)
      fprintf(stderr, "http_server: px_post: %s\n", px_strerror(rc));
  }
}

#ifdef _WIN32
static BOOL WINAPI on_console_ctrl(DWORD type) {
  (void)type;
  request_stop();
  return TRUE;
}
static int signals_block(void) {
  return 0;
}
static int signals_watch(void) {
  return SetConsoleCtrlHandler(on_console_ctrl, TRUE) ? 0 : -1;
}
static void signals_unwatch(void) {
  SetConsoleCtrlHandler(on_console_ctrl, FALSE);
}
#else
static sigset_t g_sigs;
static pthread_t g_watcher;
static int g_watching;
static atomic_int g_watcher_exit;

static void *signal_watcher(void *arg) {
  (void)arg;
  for (;;) {
    int sig;
    if (sigwait(&g_sigs, &sig) != 0 || atomic_load(&g_watcher_exit))
      return NULL;
    request_stop();
  }
}
static int signals_block(void) {
  sigemptyset(&g_sigs);
  sigaddset(&g_sigs, SIGINT);
  sigaddset(&g_sigs, SIGTERM);
  return pthread_sigmask(SIG_BLOCK, &g_sigs, NULL) == 0 ? 0 : -1;
}
static int signals_watch(void) {
  if (pthread_create(&g_watcher, NULL, signal_watcher, NULL) != 0)
    return -1;
  g_watching = 1;
  return 0;
}
static void signals_unwatch(void) {
  if (!g_watching)
    return;
  atomic_store(&g_watcher_exit, 1);
  if (pthread_kill(g_watcher, SIGTERM) == 0)
    pthread_join(g_watcher, NULL);
  g_watching = 0;
}
#endif

/* ---- Setup. ------------------------------------------------------------ */

/* One worker's loop, pools and (unless it only receives handed-over
 * connections) listener and acceptor.  *port is the port to bind (0: any),
 * set to the one bound.  Returns 0 or a PX_E* code. */
static int worker_open(worker *w, int listen, int reuseport, int *port) {
  w->listener = PX_INVALID_FD;
  int rc = px_loop_new(&w->loop, NULL);
  if (rc == 0)
    rc = px_connpool_new((uint32_t)g_opt.max_conns, sizeof(conn), &w->conns);
  if (rc == 0) {
    uint32_t n = (uint32_t)(g_opt.max_conns < 4096 ? g_opt.max_conns : 4096);
    rc = px_bufpool_new(w->loop, n, RECV_BUF, &w->bufs);
  }
  uint32_t per_conn =
      (uint32_t)(g_opt.max_conns < 32768 ? g_opt.max_conns : 32768);
  if (rc == 0)
    rc = px_bufpool_new(w->loop, per_conn, RECV_BUF, &w->outs);
  if (rc == 0)
    rc = px_bufpool_new(w->loop, per_conn, HEAD_BUF, &w->heads);
  if (rc < 0 || !listen)
    return rc;
  rc = px_tcp_listen_ex(w->loop, g_opt.host, *port, 1024,
                        reuseport ? PX_LISTEN_REUSEPORT : 0, &w->listener);
  px_addr local;
  if (rc == 0)
    rc = px_addr_local(w->listener, &local);
  if (rc == 0) {
    *port = px_addr_port(&local);
    rc = px_acceptor_start(w->loop, w->listener, w->conns, ACCEPTS, on_accept,
                           w, &w->acceptor);
  }
  return rc;
}

static void worker_close(worker *w) {
  if (w->loop == NULL)
    return;
  px_loop_free(w->loop);
  free(w->stop_closes);
  if (w->bufs != NULL)
    px_bufpool_free(w->bufs);
  if (w->heads != NULL)
    px_bufpool_free(w->heads);
  if (w->outs != NULL)
    px_bufpool_free(w->outs);
  if (w->conns != NULL)
    px_connpool_free(w->conns);
}

/* ---- Main. ------------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr,
          "usage: http_server --host IP --port N [--threads N] [--root DIR]\n"
          "                   [--max-body BYTES] [--max-conns N] "
          "[--idle-ms MS]\n"
          "                   [--head-ms MS] [--handoff]\n");
}

static int parse_num(const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (*s == '\0' || *s == '-' || *end != '\0' || v < lo || v > hi)
    return -1;
  *out = v;
  return 0;
}

static int parse_args(int argc, char **argv, options *o) {
  for (int i = 1; i < argc; i++) {
    const char *opt = argv[i];
    if (strcmp(opt, "--handoff") == 0) {
      o->handoff = 1;
      continue;
    }
    const char *val = i + 1 < argc ? argv[++i] : NULL;
    uint64_t v = 0;
    int bad = val == NULL;
    if (!bad && strcmp(opt, "--host") == 0)
      o->host = val;
    else if (!bad && strcmp(opt, "--root") == 0)
      o->root = val;
    else if (!bad && strcmp(opt, "--port") == 0)
      bad = parse_num(val, 0, 65535, &v) || (o->port = (int)v, 0);
    else if (!bad && strcmp(opt, "--threads") == 0)
      bad = parse_num(val, 1, MAX_THREADS, &v) || (o->threads = (int)v, 0);
    else if (!bad && strcmp(opt, "--max-conns") == 0)
      bad = parse_num(val, 1, 1u << 20, &v) || (o->max_conns = (int)v, 0);
    else if (!bad && strcmp(opt, "--head-ms") == 0)
      bad = parse_num(val, 1, 3600000, &v) || (o->head_ms = (int)v, 0);
    else if (!bad && strcmp(opt, "--idle-ms") == 0)
      bad = parse_num(val, 1, 3600000, &v) || (o->idle_ms = (int)v, 0);
    else if (!bad && strcmp(opt, "--max-body") == 0)
      bad = parse_num(val, 0, UINT64_MAX / 2, &o->max_body);
    else
      bad = 1;
    if (bad) {
      fprintf(stderr, "http_server: bad argument '%s'\n", opt);
      return -1;
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  g_opt =
      (options){NULL, NULL, -1, 0, 10000, 5000, HEAD_TIMEOUT_MS, 0, 1u << 20};
  if (parse_args(argc, argv, &g_opt) < 0 || g_opt.host == NULL ||
      g_opt.port < 0) {
    usage();
    return 2;
  }
  int threads = g_opt.threads > 0 ? g_opt.threads : cpu_count();
  if (threads > MAX_THREADS)
    threads = MAX_THREADS;
  if (signals_block() < 0) {
    fprintf(stderr, "http_server: cannot block signals\n");
    return 1;
  }
  /* One listener per thread where SO_REUSEPORT exists; otherwise the first
   * thread accepts and hands connections over; Windows can do neither. */
  int port = g_opt.port, rc = 0;
  int reuseport = threads > 1 && !g_opt.handoff;
  g_nworkers = 0;
  for (int i = 0; i < threads && rc == 0; i++) {
    worker *w = &g_workers[i];
    w->index = i;
    int listen = i == 0 || reuseport;
    rc = worker_open(w, listen, reuseport, &port);
    if (rc == PX_EOPNOTSUPP && i == 0 && reuseport) {
      worker_close(w); /* no SO_REUSEPORT here: hand connections over */
      memset(w, 0, sizeof(*w));
      reuseport = 0;
      g_opt.handoff = 1;
      rc = worker_open(w, 1, 0, &port);
    }
    if (rc == 0)
      g_nworkers = i + 1;
  }
#ifdef _WIN32
  if (g_opt.handoff && g_nworkers > 1) {
    /* A completion port keeps a handle: connections cannot move. */
    for (int i = 1; i < g_nworkers; i++)
      worker_close(&g_workers[i]);
    g_nworkers = 1;
  }
#endif
  int status = 1;
  if (rc < 0) {
    fprintf(stderr, "http_server: setup on %s:%d: %s\n", g_opt.host, g_opt.port,
            px_strerror(rc));
  } else if (signals_watch() < 0) {
    fprintf(stderr, "http_server: cannot watch signals\n");
  } else {
    printf("px backend: %s\n", px_loop_backend_name(g_workers[0].loop));
    int v6 = strchr(g_opt.host, ':') != NULL;
    printf("threads: %d%s\n", g_nworkers,
           g_nworkers == 1 ? ""
           : g_opt.handoff ? " (the first accepts, hands over)"
                           : " (a SO_REUSEPORT listener each)");
    printf("listening on %s%s%s:%d\n", v6 ? "[" : "", g_opt.host, v6 ? "]" : "",
           port);
    fflush(stdout);
    status = 0;
    for (int i = 1; i < g_nworkers; i++)
      g_workers[i].started = thread_start(&g_workers[i]) == 0;
    worker_run(&g_workers[0]);
    for (int i = 1; i < g_nworkers; i++)
      if (g_workers[i].started)
        thread_join(&g_workers[i]);
    signals_unwatch();
    uint64_t requests = 0, accepted = 0, enobufs = 0;
    for (int i = 0; i < g_nworkers; i++) {
      requests += g_workers[i].requests;
      accepted += g_workers[i].accepted;
      enobufs += g_workers[i].enobufs;
      status |= g_workers[i].status;
    }
    printf("stats: threads=%d connections=%llu requests=%llu enobufs=%llu\n",
           g_nworkers, (unsigned long long)accepted,
           (unsigned long long)requests, (unsigned long long)enobufs);
    fflush(stdout);
  }
  for (int i = 0; i < g_nworkers; i++)
    worker_close(&g_workers[i]);
  return status;
}
