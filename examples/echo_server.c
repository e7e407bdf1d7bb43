/*
 * echo_server — a TCP echo server written against px.h only.
 *
 *   echo_server --host 127.0.0.1 --port 7000 [--max-conns 10000]
 *               [--buffers 1024] [--buf-size 16384] [--accepts 16]
 *               [--backlog 1024] [--threads 1]
 *
 * Port 0 lets the system pick a port; the "listening on" line shows it.
 *
 * Its memory is fixed at start: connection objects in a px_connpool
 * (--max-conns of them), receive buffers in a px_bufpool (--buffers of
 * --buf-size bytes) and one echo record per buffer.  An idle connection
 * holds its object and one pending pooled receive, and no buffer: the
 * backend picks one when data arrives (px_recv_pooled).  The receive is
 * multishot (PX_RECV_MULTISHOT): where the backend has it natively
 * (io_uring) it stays armed and delivers buffer after buffer; elsewhere it
 * delivers once and the server submits it again.  Each buffer received is
 * queued on its connection and sent back in order (the rest again after a
 * short write), one send in flight per connection, then released.
 *
 * A px_acceptor keeps --accepts accepts posted while the connection pool
 * has room, the way an IOCP server pre-posts AcceptEx calls; with the pool
 * full it posts none (the kernel's backlog holds newcomers) until a
 * connection ends.  With every buffer out, a receive ends with PX_ENOBUFS
 * and its data stays in the socket: the connection waits in line and
 * receives again when a buffer comes back.
 *
 * --threads N runs N loops, one per thread, each with its own pools and its
 * own SO_REUSEPORT listener on the same port (the kernel spreads the
 * connections); nothing is shared between them.
 *
 * SIGINT or SIGTERM stops it: the acceptor stops, the listener and every
 * connection are closed with px_close (which completes their pending ops
 * with PX_ECANCELED first), the loop runs until nothing is in flight, and
 * the loop's and pools' statistics are printed.
 */
#include <px.h>

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
#else
#include <pthread.h>
#include <signal.h>
#endif

#define MAX_ACCEPTS 1024

typedef struct server server;
typedef struct conn conn;
typedef struct echo echo;

enum conn_state {
  CONN_OPEN,
  CONN_DRAINING, /* the peer's stream ended: send what is queued, close */
  CONN_CLOSING   /* px_close submitted; its callback releases the slot */
};

/* A slot of the connection pool: what an idle connection costs. */
struct conn {
  px_op op; /* the receive (multishot where native), then the close */
  px_fd fd;
  px_conn_id id;
  union {
    echo *sends;     /* buffers to send back, oldest first: the tail of a
                        circular list whose head is being sent */
    conn *next_wait; /* waiting: the next in the server's line */
  } u;
  uint8_t state;
  uint8_t receiving; /* op holds a receive */
  uint8_t waiting;   /* in the line (then nothing is queued to send) */
  uint8_t orphan;    /* its close was refused (the loop is being freed) */
  uint8_t rearm;     /* receive again once its queued echoes are sent */
};

/* A received buffer on its way back.  One per pool buffer, made at start:
 * every echo holds a buffer, so there is always one free. */
struct echo {
  px_op op; /* its px_send (or the close after a failed send) */
  conn *c;
  echo *next;
  void *buf;
  uint16_t len, sent;
};

struct server {
  px_loop *loop;
  px_fd listen_fd;
  px_connpool *conns;
  px_bufpool *bufs;
  px_acceptor *acceptor;
  echo *echoes, *free_echoes; /* one per pool buffer */
  uint32_t nechoes;
  conn *wait_head, *wait_tail; /* waiting for a buffer, oldest first */
  int stopping;
  uint64_t accepted, enobufs;
  px_op *stop_closes; /* made at stop: one close per open connection */
  uint32_t nstop_closes;
  px_op listen_close_op;
  px_op stop_op; /* posted by the signal watcher */
  int status;
#ifdef _WIN32
  HANDLE thread;
#else
  pthread_t thread;
#endif
  int started;
};

#define MAX_THREADS 64
static server g_servers[MAX_THREADS];
static int g_nservers;
/* The server of the calling thread: callbacks run on their loop's thread,
 * so a connection need not carry a pointer to its server. */
static _Thread_local server *t_srv;

static void conn_recv(conn *c);

/* ---- Buffers and the line for them. ------------------------------------ */

static void buf_release(void *buf) {
  int rc = px_buf_release(t_srv->bufs, buf);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_buf_release: %s\n", px_strerror(rc));
}

static void echo_free(echo *e) {
  e->next = t_srv->free_echoes;
  t_srv->free_echoes = e;
}

/* A buffer came back: the connection waiting longest receives again. */
static void wake_one(void) {
  conn *c = t_srv->wait_head;
  if (c == NULL || t_srv->stopping)
    return;
  t_srv->wait_head = c->u.next_wait;
  if (t_srv->wait_head == NULL)
    t_srv->wait_tail = NULL;
  c->waiting = 0;
  c->u.sends = NULL;
  conn_recv(c);
}

static void wait_for_buffer(conn *c) {
  t_srv->enobufs++;
  c->waiting = 1;
  c->u.next_wait = NULL;
  if (t_srv->wait_tail != NULL)
    t_srv->wait_tail->u.next_wait = c;
  else
    t_srv->wait_head = c;
  t_srv->wait_tail = c;
  /* Each buffer that comes back wakes the next in line; if none is out,
   * none will come back: the line moves now. */
  px_pool_stats st;
  px_bufpool_stats(t_srv->bufs, &st);
  if (st.in_use == 0)
    wake_one();
}

/* Takes c out of the line (a connection that ends while in it; rare, so a
 * walk). */
static void unwait(conn *c) {
  conn **p = &t_srv->wait_head, *prev = NULL;
  while (*p != NULL && *p != c) {
    prev = *p;
    p = &(*p)->u.next_wait;
  }
  if (*p == c) {
    *p = c->u.next_wait;
    if (t_srv->wait_tail == c)
      t_srv->wait_tail = prev;
  }
  c->waiting = 0;
  c->u.sends = NULL;
}

/* ---- Connections. ------------------------------------------------------ */

/* The echo whose op is op, or NULL (a connection's own op, a stop close). */
static echo *echo_of(px_op *op) {
  echo *e = (echo *)(void *)((char *)op - offsetof(echo, op));
  return e >= t_srv->echoes && e < t_srv->echoes + t_srv->nechoes ? e : NULL;
}

/* Lets go of what c holds once nothing of it is in flight: its queued
 * buffers, its place in the line, its slot (the acceptor may accept
 * again). */
static void conn_gone(conn *c) {
  if (c->waiting)
    unwait(c); /* nothing is queued then */
  else
    while (c->u.sends != NULL) {
      echo *e = c->u.sends->next; /* the head */
      c->u.sends =
          e == c->u.sends ? NULL : (c->u.sends->next = e->next, c->u.sends);
      buf_release(e->buf);
      echo_free(e);
    }
  px_conn_release(t_srv->conns, c->id);
}

/* px_close completes the connection's pending ops before this runs, so
 * nothing refers to c any more. */
static void on_conn_closed(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  if (op->result < 0)
    fprintf(stderr, "echo_server: close: %s\n", px_strerror(op->result));
  echo *closer = echo_of(op);
  if (closer != NULL) /* closed through the echo whose send failed */
    echo_free(closer);
  conn_gone(c);
}

/* An orphan goes when its last op in flight has ended (head_idle: the
 * first queued echo is not being sent). */
static void orphan_reap(conn *c, int head_idle) {
  if (!c->orphan || c->receiving ||
      (!c->waiting && c->u.sends != NULL && !head_idle))
    return;
  px_fd_close(t_srv->loop, c->fd);
  conn_gone(c);
}

/* Closes c with op (idle: its own, or a failed echo's). */
static void conn_close(conn *c, px_op *op) {
  c->state = CONN_CLOSING;
  int rc = px_close(t_srv->loop, op, c->fd, on_conn_closed, c);
  if (rc == 0)
    return;
  /* Refused (the loop is being freed, and cancels what is left): c goes
   * when nothing of it is in flight. */
  fprintf(stderr, "echo_server: px_close: %s\n", px_strerror(rc));
  echo *closer = echo_of(op);
  if (closer != NULL)
    echo_free(closer);
  c->orphan = 1;
  orphan_reap(c, 0);
}

static void on_send(px_loop *loop, px_op *op);

static void echo_send(echo *e) {
  int rc = px_send(t_srv->loop, &e->op, e->c->fd, (char *)e->buf + e->sent,
                   (size_t)(e->len - e->sent), on_send, e);
  if (rc < 0) {
    fprintf(stderr, "echo_server: px_send: %s\n", px_strerror(rc));
    e->op.result = rc;
    on_send(t_srv->loop, &e->op);
  }
}

/* Queues a received buffer; the first in the queue is sent at once. */
static void echo_queue(conn *c, void *buf, int32_t len) {
  echo *e = t_srv->free_echoes;
  t_srv->free_echoes = e->next;
  e->c = c;
  e->buf = buf;
  e->len = (uint16_t)len;
  e->sent = 0;
  if (c->u.sends == NULL) {
    e->next = e;
    c->u.sends = e;
    echo_send(e);
  } else {
    e->next = c->u.sends->next;
    c->u.sends->next = e;
    c->u.sends = e;
  }
}

static void on_send(px_loop *loop, px_op *op) {
  echo *e = op->data;
  conn *c = e->c;
  (void)loop;
  if (c->state != CONN_CLOSING && op->result >= 0) {
    e->sent = (uint16_t)(e->sent + op->result);
    if (e->sent < e->len) {
      echo_send(e); /* a short write: send what is left */
      return;
    }
  }
  /* e (the head) is done: off the queue, its buffer back. */
  c->u.sends =
      e == c->u.sends ? NULL : (c->u.sends->next = e->next, c->u.sends);
  buf_release(e->buf);
  if (c->state == CONN_CLOSING) {
    echo_free(e); /* the close's callback comes after */
    orphan_reap(c, 1);
  } else if (op->result < 0) {
    /* The peer is gone: close with this echo's op (the receive may still
     * be pending; the close cancels it). */
    conn_close(c, &e->op);
  } else {
    echo_free(e);
    if (c->u.sends != NULL) {
      echo_send(c->u.sends->next);
    } else if (c->state == CONN_DRAINING) {
      conn_close(c, &c->op);
    } else if (c->rearm) {
      c->rearm = 0;
      conn_recv(c);
    }
  }
  wake_one();
}

static void on_recv(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  void *buf = px_op_buf(op);
  int more = px_op_more(op);
  if (!more)
    c->receiving = 0;
  if (c->state == CONN_CLOSING) { /* a close is on its way */
    if (buf != NULL)
      buf_release(buf);
    orphan_reap(c, 0);
    return;
  }
  if (op->result > 0) {
    echo_queue(c, buf, op->result);
    if (!more)
      conn_recv(c); /* no multishot here, or it ended: receive again */
    return;
  }
  if (op->result == PX_ENOBUFS) {
    /* Its own echoes give buffers back; without any, it waits in line. */
    if (c->u.sends != NULL)
      c->rearm = 1;
    else
      wait_for_buffer(c);
    return;
  }
  /* End of stream, reset, or cancelled: the queued echoes go first. */
  if (c->u.sends != NULL)
    c->state = CONN_DRAINING;
  else
    conn_close(c, &c->op);
}

static void conn_recv(conn *c) {
  int rc = px_recv_pooled_ex(t_srv->loop, &c->op, c->fd, t_srv->bufs,
                             PX_RECV_MULTISHOT, on_recv, c);
  if (rc < 0) {
    fprintf(stderr, "echo_server: px_recv_pooled: %s\n", px_strerror(rc));
    if (c->u.sends != NULL)
      c->state = CONN_DRAINING;
    else
      conn_close(c, &c->op);
    return;
  }
  c->receiving = 1;
}

/* The acceptor hands over each connection with its slot taken. */
static void on_accept(px_acceptor *acc, px_fd fd, void *obj, px_conn_id id,
                      void *data) {
  conn *c = obj;
  (void)acc;
  (void)data;
  c->fd = fd;
  c->id = id;
  c->u.sends = NULL;
  c->state = CONN_OPEN;
  c->receiving = 0;
  c->waiting = 0;
  c->orphan = 0;
  c->rearm = 0;
  t_srv->accepted++;
  /* Echo replies are small and latency-bound: do not let Nagle hold them. */
  int rc = px_tcp_nodelay(fd, 1);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_tcp_nodelay: %s\n", px_strerror(rc));
  conn_recv(c);
}

/* ---- Stopping. --------------------------------------------------------- */

static void on_listen_closed(px_loop *loop, px_op *op) {
  (void)loop;
  if (op->result < 0)
    fprintf(stderr, "echo_server: close listener: %s\n",
            px_strerror(op->result));
}

/* Closes one connection at stop with a close op of its own: its pending
 * receive and send complete with PX_ECANCELED first (releasing the buffers
 * they hold). */
static void conn_stop(void *obj, px_conn_id id, void *ctx) {
  conn *c = obj;
  (void)id;
  (void)ctx;
  if (c->state == CONN_CLOSING)
    return;
  conn_close(c, &t_srv->stop_closes[t_srv->nstop_closes++]);
}

/* Runs on the loop thread (px_post), so it may touch everything. */
static void on_stop(px_loop *loop, px_op *op) {
  server *s = op->data;
  if (op->result < 0) /* PX_ECANCELED: the loop is being freed */
    return;
  s->stopping = 1;
  s->wait_head = s->wait_tail = NULL; /* closed below with the rest */
  px_acceptor_stop(s->acceptor);
  s->acceptor = NULL;
  int rc =
      px_close(loop, &s->listen_close_op, s->listen_fd, on_listen_closed, s);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_close listener: %s\n", px_strerror(rc));
  px_pool_stats st;
  px_connpool_stats(s->conns, &st);
  s->stop_closes = calloc(st.in_use ? st.in_use : 1, sizeof(px_op));
  if (s->stop_closes == NULL) {
    fprintf(stderr, "echo_server: out of memory at stop\n");
    px_stop(loop); /* px_loop_free will cancel what is left */
    return;
  }
  px_connpool_foreach(s->conns, conn_stop, s);
  /* px_run(DEFAULT) now returns once the closes have completed. */
}

/*
 * Signals.  px_loop_wakeup and px_post are documented as thread-safe, not as
 * async-signal-safe, so they are not called from a signal handler.  On POSIX
 * the signals are blocked in every thread (the mask is set before the loop
 * exists, so threads created later inherit it) and one watcher thread takes
 * them with sigwait, an ordinary thread context.  On Windows the console
 * control handler already runs on a thread of its own.  Either way the stop
 * reaches the loop through px_post, which queues it: unlike a flag checked
 * between px_run calls, it cannot be lost while the loop is going to sleep.
 * Only the first signal posts (stop_op is then px's until it completes);
 * later ones find the stop already on its way.
 */
static atomic_flag g_stop_requested = ATOMIC_FLAG_INIT;

static void request_stop(void) {
  if (atomic_flag_test_and_set(&g_stop_requested))
    return;
  for (int i = 0; i < g_nservers; i++) {
    server *s = &g_servers[i];
    int rc = px_post(s->loop, &s->stop_op, on_stop, s);
    if (rc < 0)
      fprintf(stderr, "echo_server: px_post: %s\n", px_strerror(rc));
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
static atomic_int g_watcher_exit; /* set before pthread_kill wakes it */

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

/* Wakes the watcher with a signal of its own set and lets it end. */
static void signals_unwatch(void) {
  if (!g_watching)
    return;
  atomic_store(&g_watcher_exit, 1);
  if (pthread_kill(g_watcher, SIGTERM) == 0)
    pthread_join(g_watcher, NULL);
  g_watching = 0;
}
#endif

/* ---- Main. ------------------------------------------------------------- */

typedef struct options {
  const char *host;
  int port, accepts, backlog, max_conns, buffers, buf_size, threads;
} options;

static void usage(void) {
  fprintf(stderr,
          "usage: echo_server --host IP --port N [--max-conns N] "
          "[--buffers N]\n"
          "                   [--buf-size BYTES (<= 65535)] "
          "[--accepts N (1-%d)] [--backlog N]\n"
          "                   [--threads N (1-%d)]\n",
          MAX_ACCEPTS, MAX_THREADS);
}

static int parse_int(const char *s, int lo, int hi, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < lo || v > hi)
    return -1;
  *out = (int)v;
  return 0;
}

static int parse_args(int argc, char **argv, options *o) {
  for (int i = 1; i < argc; i += 2) {
    const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = val == NULL;
    if (!bad && strcmp(opt, "--host") == 0)
      o->host = val;
    else if (!bad && strcmp(opt, "--port") == 0)
      bad = parse_int(val, 0, 65535, &o->port);
    else if (!bad && strcmp(opt, "--accepts") == 0)
      bad = parse_int(val, 1, MAX_ACCEPTS, &o->accepts);
    else if (!bad && strcmp(opt, "--backlog") == 0)
      bad = parse_int(val, 1, 65535, &o->backlog);
    else if (!bad && strcmp(opt, "--max-conns") == 0)
      bad = parse_int(val, 1, 1 << 24, &o->max_conns);
    else if (!bad && strcmp(opt, "--buffers") == 0)
      bad = parse_int(val, 1, 32768, &o->buffers);
    else if (!bad && strcmp(opt, "--buf-size") == 0)
      bad = parse_int(val, 1, 65535, &o->buf_size);
    else if (!bad && strcmp(opt, "--threads") == 0)
      bad = parse_int(val, 1, MAX_THREADS, &o->threads);
    else
      bad = 1;
    if (bad) {
      fprintf(stderr, "echo_server: bad argument '%s'\n", opt);
      return -1;
    }
  }
  return 0;
}

/* Statistics summed over the threads (each pool per thread). */
static void print_stats(void) {
  px_stats sum = {0};
  px_pool_stats cs, bs;
  uint64_t accepted = 0, enobufs = 0, full = 0;
  uint32_t conn_high = 0, conn_cap = 0, buf_high = 0, buf_cap = 0;
  for (int i = 0; i < g_nservers; i++) {
    server *s = &g_servers[i];
    px_stats st;
    px_loop_stats(s->loop, &st);
    px_connpool_stats(s->conns, &cs);
    px_bufpool_stats(s->bufs, &bs);
    sum.submitted += st.submitted;
    sum.completed += st.completed;
    sum.failed += st.failed;
    sum.cancelled += st.cancelled;
    sum.in_flight += st.in_flight;
    accepted += s->accepted;
    enobufs += s->enobufs;
    full += cs.exhausted;
    conn_high += cs.high_water;
    conn_cap += cs.capacity;
    buf_high += bs.high_water;
    buf_cap += bs.capacity;
  }
  printf("stats: threads=%d connections=%llu submitted=%llu completed=%llu "
         "failed=%llu cancelled=%llu in_flight=%llu\n",
         g_nservers, (unsigned long long)accepted,
         (unsigned long long)sum.submitted, (unsigned long long)sum.completed,
         (unsigned long long)sum.failed, (unsigned long long)sum.cancelled,
         (unsigned long long)sum.in_flight);
  printf("pools: connections high-water %u of %u (full %llu times), buffers "
         "high-water %u of %u, enobufs=%llu\n",
         conn_high, conn_cap, (unsigned long long)full, buf_high, buf_cap,
         (unsigned long long)enobufs);
  fflush(stdout);
}

/* A loop, its pools, a listener (SO_REUSEPORT when several threads share
 * the port) and its acceptor; *port: 0 or the port to share, then the one
 * bound.  0 or a PX_E* code. */
static int server_open(server *s, const options *o, int *port) {
  int rc = px_loop_new(&s->loop, NULL);
  if (rc == 0)
    rc = px_connpool_new((uint32_t)o->max_conns, sizeof(conn), &s->conns);
  if (rc == 0)
    rc = px_bufpool_new(s->loop, (uint32_t)o->buffers, (uint32_t)o->buf_size,
                        &s->bufs);
  if (rc == 0) {
    s->echoes = calloc((size_t)o->buffers, sizeof(echo));
    if (s->echoes == NULL)
      rc = PX_ENOMEM;
    s->nechoes = (uint32_t)o->buffers;
    for (uint32_t i = s->nechoes; rc == 0 && i-- > 0;) {
      s->echoes[i].next = s->free_echoes;
      s->free_echoes = &s->echoes[i];
    }
  }
  if (rc == 0)
    rc = px_tcp_listen_ex(s->loop, o->host, *port, o->backlog,
                          o->threads > 1 ? PX_LISTEN_REUSEPORT : 0,
                          &s->listen_fd);
  px_addr local;
  if (rc == 0)
    rc = px_addr_local(s->listen_fd, &local);
  if (rc == 0) {
    *port = px_addr_port(&local);
    rc = px_acceptor_start(s->loop, s->listen_fd, s->conns,
                           (uint32_t)o->accepts, on_accept, s, &s->acceptor);
  }
  return rc;
}

static void server_close(server *s) {
  if (s->loop == NULL)
    return;
  /* Freeing the loop ends what is left (the acceptor included); callbacks
   * that run then find their server through t_srv. */
  t_srv = s;
  int rc = px_loop_free(s->loop);
  if (rc < 0) {
    fprintf(stderr, "echo_server: px_loop_free: %s\n", px_strerror(rc));
    s->status = 1;
  }
  free(s->stop_closes);
  if (s->bufs != NULL && px_bufpool_free(s->bufs) < 0)
    fprintf(stderr, "echo_server: buffers still out at exit\n");
  if (s->conns != NULL && px_connpool_free(s->conns) < 0)
    fprintf(stderr, "echo_server: connections still open at exit\n");
  free(s->echoes);
}

static void server_run(server *s) {
  t_srv = s;
  int rc = px_run(s->loop, PX_RUN_DEFAULT);
  if (rc < 0) {
    fprintf(stderr, "echo_server: px_run: %s\n", px_strerror(rc));
    s->status = 1;
  }
}

#ifdef _WIN32
static DWORD WINAPI server_main(LPVOID arg) {
  server_run(arg);
  return 0;
}
static int thread_start(server *s) {
  s->thread = CreateThread(NULL, 0, server_main, s, 0, NULL);
  return s->thread != NULL ? 0 : -1;
}
static void thread_join(server *s) {
  WaitForSingleObject(s->thread, INFINITE);
  CloseHandle(s->thread);
}
#else
static void *server_main(void *arg) {
  server_run(arg);
  return NULL;
}
static int thread_start(server *s) {
  return pthread_create(&s->thread, NULL, server_main, s) == 0 ? 0 : -1;
}
static void thread_join(server *s) {
  pthread_join(s->thread, NULL);
}
#endif

int main(int argc, char **argv) {
  options o = {NULL, -1, 16, 1024, 10000, 1024, 16384, 1};
  if (parse_args(argc, argv, &o) < 0 || o.host == NULL || o.port < 0) {
    usage();
    return 2;
  }
  if (signals_block() < 0) {
    fprintf(stderr, "echo_server: cannot block signals\n");
    return 1;
  }
  int port = o.port, rc = 0;
  for (int i = 0; i < o.threads && rc == 0; i++) {
    rc = server_open(&g_servers[i], &o, &port);
    g_nservers = i + 1;
  }
  int status = 1;
  if (rc < 0) {
    fprintf(stderr, "echo_server: listen on %s:%d: %s\n", o.host, o.port,
            px_strerror(rc));
  } else if (signals_watch() < 0) {
    fprintf(stderr, "echo_server: cannot watch signals\n");
  } else {
    printf("px backend: %s\n", px_loop_backend_name(g_servers[0].loop));
    int v6 = strchr(o.host, ':') != NULL; /* an IPv6 address goes in [] */
    printf("listening on %s%s%s:%d\n", v6 ? "[" : "", o.host, v6 ? "]" : "",
           port);
    fflush(stdout);
    for (int i = 1; i < g_nservers; i++)
      g_servers[i].started = thread_start(&g_servers[i]) == 0;
    server_run(&g_servers[0]);
    for (int i = 1; i < g_nservers; i++)
      if (g_servers[i].started)
        thread_join(&g_servers[i]);
    signals_unwatch();
    print_stats();
    status = 0;
    for (int i = 0; i < g_nservers; i++)
      status |= g_servers[i].status;
  }
  for (int i = 0; i < g_nservers; i++)
    server_close(&g_servers[i]);
  return status;
}
