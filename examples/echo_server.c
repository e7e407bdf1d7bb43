/*
 * echo_server — a TCP echo server written against px.h only.
 *
 *   echo_server --host 127.0.0.1 --port 7000 [--accepts 16] [--backlog 1024]
 *
 * Port 0 lets the system pick a port; the "listening on" line shows it.
 *
 * It keeps several accepts posted at all times, the way an IOCP server
 * pre-posts AcceptEx calls, so a burst of connections never waits for one
 * accept to be re-armed.  Each connection owns its ops and its buffer; the
 * echo is recv -> send everything received (resubmitting the rest after a
 * short write) -> recv again, so at most one of its recv and send ops is in
 * flight at any time.
 *
 * SIGINT or SIGTERM stops it: the listener and every connection are closed
 * with px_close (which completes their pending ops with PX_ECANCELED first),
 * the loop runs until nothing is in flight, and the loop's statistics are
 * printed.
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

#define MAX_ACCEPTS 256
#define CONN_BUF_SIZE (16 * 1024)
#define ACCEPT_RETRY_MS 100

typedef struct server server;
typedef struct conn conn;

enum conn_state {
  CONN_OPEN,
  CONN_CLOSING,      /* px_close submitted; its callback frees the conn */
  CONN_CLOSE_FAILED, /* px_close refused; freed once no op is in flight */
};

struct conn {
  px_op recv_op;
  px_op send_op;
  px_op close_op;
  server *srv;
  px_fd fd;
  int in_flight; /* recv_op and send_op submissions not completed yet */
  enum conn_state state;
  size_t len;  /* bytes received and being echoed */
  size_t sent; /* of those, bytes sent so far */
  conn *prev, *next;
  unsigned char buf[CONN_BUF_SIZE];
};

struct server {
  px_loop *loop;
  px_fd listen_fd;
  int stopping;
  conn *conns; /* every live connection, so that a stop can close them */
  uint64_t accepted;
  int naccepts;
  px_op accept_ops[MAX_ACCEPTS];
  px_op listen_close_op;
  px_op stop_op; /* posted by the signal watcher */
};

static void post_accept(server *s, px_op *op);

/* ---- Connections. ------------------------------------------------------ */

static void conn_unlink_free(conn *c) {
  server *s = c->srv;
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  free(c);
}

/* px_close completes the connection's pending ops before this runs, so
 * nothing refers to c any more. */
static void on_conn_closed(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  if (op->result < 0)
    fprintf(stderr, "echo_server: close: %s\n", px_strerror(op->result));
  conn_unlink_free(c);
}

/* Closes the handle now; only when none of the conn's ops is in flight. */
static void conn_close_now(conn *c) {
  int rc = px_fd_close(c->srv->loop, c->fd);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_fd_close: %s\n", px_strerror(rc));
  conn_unlink_free(c);
}

static void conn_close(conn *c) {
  if (c->state != CONN_OPEN)
    return;
  c->state = CONN_CLOSING;
  int rc = px_close(c->srv->loop, &c->close_op, c->fd, on_conn_closed, c);
  if (rc == 0)
    return;
  /* Refused (the loop is being freed, or out of memory).  Freeing c while
   * one of its ops is in flight would hand px a dangling op, so that waits
   * for the op's callback. */
  fprintf(stderr, "echo_server: px_close: %s\n", px_strerror(rc));
  c->state = CONN_CLOSE_FAILED;
  if (c->in_flight == 0)
    conn_close_now(c);
}

/* The start of every recv/send callback.  Returns 1 when the conn is
 * closing and the callback must leave it alone. */
static int conn_op_done(conn *c) {
  c->in_flight--;
  if (c->state == CONN_OPEN)
    return 0;
  if (c->state == CONN_CLOSE_FAILED && c->in_flight == 0)
    conn_close_now(c); /* frees c */
  return 1;
}

static void on_recv(px_loop *loop, px_op *op);
static void on_send(px_loop *loop, px_op *op);

static void conn_recv(conn *c) {
  int rc = px_recv(c->srv->loop, &c->recv_op, c->fd, c->buf, sizeof c->buf,
                   on_recv, c);
  if (rc < 0) {
    fprintf(stderr, "echo_server: px_recv: %s\n", px_strerror(rc));
    conn_close(c);
    return;
  }
  c->in_flight++;
}

static void conn_send_rest(conn *c) {
  int rc = px_send(c->srv->loop, &c->send_op, c->fd, c->buf + c->sent,
                   c->len - c->sent, on_send, c);
  if (rc < 0) {
    fprintf(stderr, "echo_server: px_send: %s\n", px_strerror(rc));
    conn_close(c);
    return;
  }
  c->in_flight++;
}

static void on_recv(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  if (conn_op_done(c))
    return;
  if (op->result <= 0) { /* end of stream, reset, or cancelled */
    conn_close(c);
    return;
  }
  c->len = (size_t)op->result;
  c->sent = 0;
  conn_send_rest(c);
}

static void on_send(px_loop *loop, px_op *op) {
  conn *c = op->data;
  (void)loop;
  if (conn_op_done(c))
    return;
  if (op->result < 0) {
    conn_close(c);
    return;
  }
  c->sent += (size_t)op->result;
  if (c->sent < c->len)
    conn_send_rest(c); /* a short write: send what is left */
  else
    conn_recv(c);
}

static void conn_start(server *s, px_fd fd) {
  /* An accept can complete in the same batch as the stop request. */
  conn *c = s->stopping ? NULL : malloc(sizeof *c);
  if (c == NULL) {
    if (!s->stopping)
      fprintf(stderr, "echo_server: out of memory, dropping a connection\n");
    int rc = px_fd_close(s->loop, fd);
    if (rc < 0)
      fprintf(stderr, "echo_server: px_fd_close: %s\n", px_strerror(rc));
    return;
  }
  memset(c, 0, offsetof(conn, buf));
  c->srv = s;
  c->fd = fd;
  c->next = s->conns;
  if (s->conns != NULL)
    s->conns->prev = c;
  s->conns = c;
  s->accepted++;
  /* Echo replies are small and latency-bound: do not let Nagle hold them. */
  int rc = px_tcp_nodelay(fd, 1);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_tcp_nodelay: %s\n", px_strerror(rc));
  conn_recv(c);
}

/* ---- Accepting. -------------------------------------------------------- */

static void on_accept_retry(px_loop *loop, px_op *op) {
  (void)loop;
  server *s = op->data;
  if (!s->stopping)
    post_accept(s, op);
}

static void on_accept(px_loop *loop, px_op *op) {
  server *s = op->data;
  if (op->result == 0) {
    conn_start(s, px_op_fd(op));
  } else if (op->result != PX_ECANCELED && !s->stopping) {
    /* Out of descriptors or memory: retrying at once would spin, so this
     * accept waits a little before it is posted again. */
    fprintf(stderr, "echo_server: accept: %s\n", px_strerror(op->result));
    int rc = px_timeout(loop, op, ACCEPT_RETRY_MS, on_accept_retry, s);
    if (rc < 0)
      fprintf(stderr, "echo_server: px_timeout: %s\n", px_strerror(rc));
    return;
  }
  if (!s->stopping)
    post_accept(s, op);
}

static void post_accept(server *s, px_op *op) {
  int rc = px_accept(s->loop, op, s->listen_fd, on_accept, s);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_accept: %s\n", px_strerror(rc));
}

/* ---- Stopping. --------------------------------------------------------- */

static void on_listen_closed(px_loop *loop, px_op *op) {
  (void)loop;
  if (op->result < 0)
    fprintf(stderr, "echo_server: close listener: %s\n",
            px_strerror(op->result));
}

/* Runs on the loop thread (px_post), so it may touch everything. */
static void on_stop(px_loop *loop, px_op *op) {
  server *s = op->data;
  if (op->result < 0) /* PX_ECANCELED: the loop is being freed */
    return;
  s->stopping = 1;
  int rc =
      px_close(loop, &s->listen_close_op, s->listen_fd, on_listen_closed, s);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_close listener: %s\n", px_strerror(rc));
  for (conn *c = s->conns, *next; c != NULL; c = next) {
    next = c->next; /* conn_close may free c */
    conn_close(c);
  }
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
static server *g_server;
static atomic_flag g_stop_requested = ATOMIC_FLAG_INIT;

static void request_stop(void) {
  if (atomic_flag_test_and_set(&g_stop_requested))
    return;
  int rc = px_post(g_server->loop, &g_server->stop_op, on_stop, g_server);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_post: %s\n", px_strerror(rc));
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

static void usage(void) {
  fprintf(stderr,
          "usage: echo_server --host IP --port N [--accepts N (1-%d)] "
          "[--backlog N]\n",
          MAX_ACCEPTS);
}

static int parse_int(const char *s, int lo, int hi, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < lo || v > hi)
    return -1;
  *out = (int)v;
  return 0;
}

static int parse_args(int argc, char **argv, const char **host, int *port,
                      int *accepts, int *backlog) {
  for (int i = 1; i < argc; i += 2) {
    const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = val == NULL;
    if (!bad && strcmp(opt, "--host") == 0)
      *host = val;
    else if (!bad && strcmp(opt, "--port") == 0)
      bad = parse_int(val, 0, 65535, port);
    else if (!bad && strcmp(opt, "--accepts") == 0)
      bad = parse_int(val, 1, MAX_ACCEPTS, accepts);
    else if (!bad && strcmp(opt, "--backlog") == 0)
      bad = parse_int(val, 1, 65535, backlog);
    else
      bad = 1;
    if (bad) {
      fprintf(stderr, "echo_server: bad argument '%s'\n", opt);
      return -1;
    }
  }
  return 0;
}

static void print_stats(px_loop *loop, uint64_t accepted) {
  px_stats st;
  px_loop_stats(loop, &st);
  printf("stats: connections=%llu submitted=%llu completed=%llu failed=%llu "
         "cancelled=%llu in_flight=%llu\n",
         (unsigned long long)accepted, (unsigned long long)st.submitted,
         (unsigned long long)st.completed, (unsigned long long)st.failed,
         (unsigned long long)st.cancelled, (unsigned long long)st.in_flight);
  fflush(stdout);
}

static int serve(server *s) {
  for (int i = 0; i < s->naccepts; i++)
    post_accept(s, &s->accept_ops[i]);
  int rc = px_run(s->loop, PX_RUN_DEFAULT);
  if (rc < 0)
    fprintf(stderr, "echo_server: px_run: %s\n", px_strerror(rc));
  return rc < 0 ? 1 : 0;
}

int main(int argc, char **argv) {
  const char *host = NULL;
  int port = -1, backlog = 1024;
  static server s; /* static: 256 accept ops are too big for some stacks */
  s.naccepts = 16;
  if (parse_args(argc, argv, &host, &port, &s.naccepts, &backlog) < 0 ||
      host == NULL || port < 0) {
    usage();
    return 2;
  }
  if (signals_block() < 0) {
    fprintf(stderr, "echo_server: cannot block signals\n");
    return 1;
  }
  int rc = px_loop_new(&s.loop, NULL);
  if (rc < 0) {
    fprintf(stderr, "echo_server: px_loop_new: %s\n", px_strerror(rc));
    return 1;
  }
  px_addr local;
  rc = px_tcp_listen(s.loop, host, port, backlog, &s.listen_fd);
  if (rc == 0)
    rc = px_addr_local(s.listen_fd, &local);
  if (rc < 0) {
    fprintf(stderr, "echo_server: listen on %s:%d: %s\n", host, port,
            px_strerror(rc));
    if (px_loop_free(s.loop) < 0)
      fprintf(stderr, "echo_server: px_loop_free failed\n");
    return 1;
  }
  g_server = &s;
  int status = 1;
  if (signals_watch() < 0) {
    fprintf(stderr, "echo_server: cannot watch signals\n");
  } else {
    printf("px backend: %s\n", px_loop_backend_name(s.loop));
    int v6 = strchr(host, ':') != NULL; /* an IPv6 address goes in [] */
    printf("listening on %s%s%s:%d\n", v6 ? "[" : "", host, v6 ? "]" : "",
           px_addr_port(&local));
    fflush(stdout);
    status = serve(&s);
    signals_unwatch();
  }
  print_stats(s.loop, s.accepted);
  rc = px_loop_free(s.loop);
  if (rc < 0) {
    fprintf(stderr, "echo_server: px_loop_free: %s\n", px_strerror(rc));
    status = 1;
  }
  return status;
}
