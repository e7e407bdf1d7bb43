/*
 * echo_uv — a TCP echo server on libuv, one thread, no px: a peer that
 * px's examples/echo_server is measured against.
 *
 *   echo_uv --host IP --port N
 *
 * Notes on the mechanism (libuv 1.44 on Linux: level-triggered epoll):
 *
 * - Each connection owns one buffer of libuv's suggested size (64 KiB),
 *   handed out by alloc_cb every time, so reading allocates nothing after
 *   the connection's own malloc.  libuv reads once per readiness and stops
 *   after a read that does not fill the buffer.
 * - The echo is uv_try_write of what was read: on a socket with room that
 *   is one write(2), no request and no callback.  Only what it leaves
 *   (a short write or EAGAIN) goes to uv_write, and reading stops until that
 *   write is done, because the next read would reuse the buffer that
 *   uv_write is still sending from.  That is also the backpressure.
 * - SIGPIPE is ignored: libuv writes with write(2), and a peer that has gone
 *   must give EPIPE, not kill the server.
 * - SIGINT and SIGTERM come through uv_signal.  Stopping closes every handle
 *   (uv_walk); uv_run then returns by itself once the close callbacks have
 *   run, and the loop is closed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* uv.h needs pthread_rwlock_t under -std=c11 */
#endif
#include "peer.h"

#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

#define BUF_SIZE (64 * 1024)

typedef struct conn {
  uv_tcp_t tcp; /* tcp.data points back to the conn */
  uv_write_t write_req;
  char buf[BUF_SIZE];
} conn;

static uv_loop_t *g_loop;
static uv_tcp_t g_server;
static uv_signal_t g_sigint, g_sigterm;
static unsigned long long g_accepted;
static int g_stopping;

static void on_conn_closed(uv_handle_t *h) {
  free(h->data);
}

static void conn_close(conn *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(c->buf, BUF_SIZE);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_write(uv_write_t *req, int status) {
  conn *c = req->data;
  if (status < 0) { /* an error, or UV_ECANCELED at close */
    conn_close(c);
    return;
  }
  int r = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  if (r < 0)
    conn_close(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn *c = s->data;
  if (nread <= 0) {
    if (nread < 0) /* UV_EOF, or a reset */
      conn_close(c);
    return; /* 0: nothing to read after all */
  }
  uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
  int n = uv_try_write(s, &out, 1);
  if (n == nread)
    return;
  if (n < 0 && n != UV_EAGAIN) {
    conn_close(c);
    return;
  }
  if (n > 0) {
    out.base += n;
    out.len -= (size_t)n;
  }
  c->write_req.data = c;
  if (uv_read_stop(s) < 0 || uv_write(&c->write_req, s, &out, 1, on_write) < 0)
    conn_close(c);
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) {
    fprintf(stderr, "echo_uv: accept: %s\n", uv_strerror(status));
    return;
  }
  conn *c = malloc(sizeof *c);
  if (c == NULL || uv_tcp_init(g_loop, &c->tcp) < 0) {
    fprintf(stderr, "echo_uv: out of memory\n");
    free(c);
    return;
  }
  c->tcp.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
    conn_close(c);
    return;
  }
  g_accepted++;
  /* Echo replies are small and latency-bound: do not let Nagle hold them. */
  if (uv_tcp_nodelay(&c->tcp, 1) < 0 ||
      uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
    conn_close(c);
}

/* Connections are the handles with data; the listener and the signal
 * watchers have none. */
static void close_handle(uv_handle_t *h, void *arg) {
  (void)arg;
  if (h->data != NULL)
    conn_close(h->data);
  else if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void on_signal(uv_signal_t *sig, int signum) {
  (void)sig;
  (void)signum;
  if (g_stopping)
    return;
  g_stopping = 1;
  uv_walk(g_loop, close_handle, NULL);
}

static int start(const peer_opts *o) {
  struct sockaddr_storage addr;
  int r = strchr(o->host, ':') != NULL
              ? uv_ip6_addr(o->host, o->port, (struct sockaddr_in6 *)&addr)
              : uv_ip4_addr(o->host, o->port, (struct sockaddr_in *)&addr);
  if (r == 0)
    r = uv_tcp_init(g_loop, &g_server);
  if (r == 0)
    r = uv_tcp_bind(&g_server, (const struct sockaddr *)&addr, 0);
  if (r == 0)
    r = uv_listen((uv_stream_t *)&g_server, SOMAXCONN, on_connection);
  if (r == 0)
    r = uv_signal_init(g_loop, &g_sigint);
  if (r == 0)
    r = uv_signal_start(&g_sigint, on_signal, SIGINT);
  if (r == 0)
    r = uv_signal_init(g_loop, &g_sigterm);
  if (r == 0)
    r = uv_signal_start(&g_sigterm, on_signal, SIGTERM);
  return r;
}

static int local_port(void) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getsockname(&g_server, (struct sockaddr *)&ss, &len) < 0)
    return -1;
  if (ss.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int main(int argc, char **argv) {
  peer_opts o;
  if (peer_parse_args(argc, argv, "echo_uv", &o) < 0)
    return 2;
  peer_raise_nofile("echo_uv");
  signal(SIGPIPE, SIG_IGN);
  g_loop = uv_default_loop();
  int r = start(&o);
  if (r < 0) {
    fprintf(stderr, "echo_uv: listen on %s:%d: %s\n", o.host, o.port,
            uv_strerror(r));
    return 1;
  }
  peer_print_listening(o.host, local_port());
  uv_run(g_loop, UV_RUN_DEFAULT); /* returns once every handle is closed */
  int rc = uv_loop_close(g_loop);
  if (rc < 0)
    fprintf(stderr, "echo_uv: uv_loop_close: %s\n", uv_strerror(rc));
  printf("stats: connections=%llu\n", g_accepted);
  fflush(stdout);
  return rc == 0 ? 0 : 1;
}
