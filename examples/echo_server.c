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
 * (--max-conns of them) and receive buffers in a px_bufpool (--buffers of
 * --buf-size bytes).  An idle connection holds its object and one pending
 * pooled receive, and no buffer: the backend picks one when data arrives
 * (px_recv_pooled).  The echo is receive -> send that buffer back (the rest
 * again after a short write) -> release it -> receive again, so a
 * connection has one op in flight at a time and its object holds one op.
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

enum conn_state {
  CONN_OPEN,
  CONN_WAITING, /* found the buffers all out; in the server's line */
  CONN_CLOSING  /* px_close submitted; its callback releases the slot */
};

/* A slot of the connection pool: what an idle connection costs. */
struct conn {
  px_op op; /* the one op in flight: receive, send or close */
  px_fd fd;
  px_conn_id id;
  union {
    void *buf;       /* the buffer being echoed */
    conn *next_wait; /* CONN_WAITING: the next in line */
  } u;
  uint16_t len, sent; /* bytes in buf; of those, sent so far */
  uint8_t state;
};

struct server {
  px_loop *loop;
  px_fd listen_fd;
  px_connpool *conns;
  px_bufpool *bufs;
  px_acceptor *acceptor;
  conn *wait_head, *wait_tail; /* waiting for a buffer, oldest first */
  int stopping;
  uint64_t accepted, enobufs;
  px_op *stop_closes; /* made at stop: closes for busy connections */
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

/* ---- Connections. ------------------------------------------------------ */

/* px_close completes the connection's pending op before this runs, so
 * nothing refers to c any more: its slot goes back (and the acceptor
 * may accept again). */
static void on_conn_closed(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  if (op->result < 0)
    fprintf(stderr, "echo_server: close: %s\n", px_strerror(op->result));
  px_conn_release(t_srv->conns, c->id);
}

/* Closes c, whose op is idle. */
static void conn_close(conn *c) {
  c->state = CONN_CLOSING;
  int rc = px_close(t_srv->loop, &c->op, c->fd, on_conn_closed, c);
  if (rc == 0)
    return;
  /* Refused (the loop is being freed): nothing of c is in flight. */
  fprintf(stderr, "echo_server: px_close: %s\n", px_strerror(rc));
  px_fd_close(t_srv->loop, c->fd);
  px_conn_release(t_srv->conns, c->id);
}

static void buf_release(void *buf) {
  int rc = px_buf_release(t_srv->bufs, buf);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_buf_release: %s\n", px_strerror(rc));
}

/* A buffer came back: the connection waiting longest receives again. */
static void wake_one(void) {
  conn *c = t_srv->wait_head;
  if (c == NULL || t_srv->stopping)
    return;
  t_srv->wait_head = c->u.next_wait;
  if (t_srv->wait_head == NULL)
    t_srv->wait_tail = NULL;
  c->state = CONN_OPEN;
  c->u.buf = NULL;
  conn_recv(c);
}

static void wait_for_buffer(conn *c) {
  t_srv->enobufs++;
  c->state = CONN_WAITING;
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

static void on_send(px_loop *loop, px_op *op);

static void conn_send_rest(conn *c) {
  int rc = px_send(t_srv->loop, &c->op, c->fd, (char *)c->u.buf + c->sent,
                   (size_t)(c->len - c->sent), on_send, c);
  if (rc < 0) {
    fprintf(stderr, "echo_server: px_send: %s\n", px_strerror(rc));
    buf_release(c->u.buf);
    conn_close(c);
  }
}

static void on_recv(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  void *buf = px_op_buf(op);
  if (c->state == CONN_CLOSING) { /* stopping: a close is on its way */
    if (buf != NULL)
      buf_release(buf);
    return;
  }
  if (op->result == PX_ENOBUFS) {
    wait_for_buffer(c);
    return;
  }
  if (op->result <= 0) { /* end of stream, reset, or cancelled */
    conn_close(c);
    return;
  }
  c->u.buf = buf;
  c->len = (uint16_t)op->result;
  c->sent = 0;
  conn_send_rest(c);
}

static void on_send(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  if (c->state == CONN_CLOSING || op->result < 0) {
    buf_release(c->u.buf);
    if (c->state != CONN_CLOSING)
      conn_close(c);
    return;
  }
  c->sent = (uint16_t)(c->sent + op->result);
  if (c->sent < c->len) {
    conn_send_rest(c); /* a short write: send what is left */
    return;
  }
  buf_release(c->u.buf);
  c->u.buf = NULL;
  conn_recv(c);
  wake_one();
}

static void conn_recv(conn *c) {
  int rc = px_recv_pooled(t_srv->loop, &c->op, c->fd, t_srv->bufs, on_recv, c);
  if (rc < 0) {
    fprintf(stderr, "echo_server: px_recv_pooled: %s\n", px_strerror(rc));
    conn_close(c);
  }
}

/* The acceptor hands over each connection with its slot taken. */
static void on_accept(px_acceptor *acc, px_fd fd, void *obj, px_conn_id id,
                      void *data) {
  conn *c = obj;
  (void)acc;
  (void)data;
  c->fd = fd;
  c->id = id;
  c->state = CONN_OPEN;
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

/* Closes one connection at stop.  One waiting for a buffer has an idle op;
 * a busy one gets a close op of its own, and its pending op completes with
 * PX_ECANCELED first (releasing any buffer it holds). */
static void conn_stop(void *obj, px_conn_id id, void *ctx) {
  conn *c = obj;
  (void)id;
  (void)ctx;
  if (c->state == CONN_CLOSING)
    return;
  if (c->state == CONN_WAITING) {
    conn_close(c);
    return;
  }
  c->state = CONN_CLOSING;
  px_op *op = &t_srv->stop_closes[t_srv->nstop_closes++];
  int rc = px_close(t_srv->loop, op, c->fd, on_conn_closed, c);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_close: %s\n", px_strerror(rc));
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
