/*
 * echo_epoll — a TCP echo server on plain epoll, one thread, no px: a peer
 * that px's examples/echo_server is measured against.
 *
 *   echo_epoll --host IP --port N
 *
 * Notes on the mechanism:
 *
 * - Connections are edge-triggered (EPOLLIN | EPOLLRDHUP | EPOLLET).  An
 *   echo server reads until the socket is drained anyway, so level
 *   triggering would buy nothing, and it costs: epoll_wait puts every
 *   level-triggered item it returns back on the ready list and polls it
 *   again on the next call.  Edge-triggered, each arrival is reported once
 *   and a connection is registered once (one epoll_ctl) in the common case.
 * - A read that returns less than it asked for proves the socket drained
 *   (TCP hands over everything queued, up to the length asked), so the
 *   extra read that would only return EAGAIN is skipped.  The exception is
 *   an event carrying EPOLLRDHUP: a FIN may sit behind the data and no new
 *   edge would announce it, so the connection reads on until 0 or EAGAIN.
 *   This is nginx's rule.
 * - A connection has one 16 KiB buffer.  Whatever a send leaves unsent
 *   stays in it, EPOLLOUT is added (EPOLL_CTL_MOD) and the connection stops
 *   reading until the rest is out: the client meets backpressure, not an
 *   unbounded queue.  EPOLLOUT is removed again once the output is out; with
 *   the socket not drained meanwhile, no edge would come, so reading resumes
 *   right there.
 * - The listener is level-triggered: accept4 runs until EAGAIN, and should
 *   it stop early on a transient error (ENOMEM, ENFILE), the backlog is
 *   reported again rather than stranded until the next connection arrives.
 * - SIGINT and SIGTERM are blocked and arrive through a signalfd in the same
 *   epoll set, so stopping needs no async-signal-safe tricks.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include "peer.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (16 * 1024)
#define MAX_EVENTS 512
#define CONN_EVENTS (EPOLLIN | EPOLLRDHUP | EPOLLET)

typedef struct conn conn;
struct conn {
  int fd;
  uint32_t off, len; /* buf[off, len) is still to be sent */
  conn *prev, *next; /* every open connection, to close them at stop */
  char buf[BUF_SIZE];
};

typedef struct server {
  int ep, listen_fd, signal_fd;
  conn *conns;
  unsigned long long accepted;
  int accept_error_reported;
} server;

static int set_events(server *s, conn *c, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  return epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(server *s, conn *c) {
  close(c->fd); /* also takes it out of the epoll set */
  if (c->prev != NULL)
    c->prev->next = c->next;
  else
    s->conns = c->next;
  if (c->next != NULL)
    c->next->prev = c->prev;
  free(c);
}

/* Sends buf[off, len): 1 when all is out, 0 when the socket is full, -1 on
 * an error. */
static int conn_flush(conn *c) {
  while (c->off < c->len) {
    ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
    if (n >= 0)
      c->off += (uint32_t)n;
    else if (errno == EAGAIN)
      return 0;
    else if (errno != EINTR)
      return -1;
  }
  c->off = c->len = 0;
  return 1;
}

/* Reads and echoes until the socket is drained or the output backs up. */
static void conn_echo(server *s, conn *c, int rdhup) {
  for (;;) {
    ssize_t n = recv(c->fd, c->buf, BUF_SIZE, 0);
    if (n > 0) {
      c->off = 0;
      c->len = (uint32_t)n;
      int r = conn_flush(c);
      if (r < 0)
        break;
      if (r == 0) { /* the rest waits for EPOLLOUT; reading pauses */
        if (set_events(s, c, CONN_EVENTS | EPOLLOUT) != 0)
          break;
        return;
      }
      if (n < BUF_SIZE && !rdhup)
        return; /* drained: the next arrival is a new edge */
    } else if (n < 0 && errno == EAGAIN) {
      return;
    } else if (n == 0 || errno != EINTR) {
      break; /* end of stream, reset or another error */
    }
  }
  conn_close(s, c);
}

static void conn_event(server *s, conn *c, uint32_t events) {
  if (events & EPOLLERR) {
    conn_close(s, c);
    return;
  }
  if (c->off < c->len) { /* output pending: reading waits for it */
    int r = conn_flush(c);
    if (r == 0)
      return;
    if (r < 0 || set_events(s, c, CONN_EVENTS) != 0) {
      conn_close(s, c);
      return;
    }
  }
  conn_echo(s, c, (events & (EPOLLRDHUP | EPOLLHUP)) != 0);
}

static void conn_open(server *s, int fd) {
  int one = 1;
  /* Echo replies are small and latency-bound: do not let Nagle hold them. */
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
    perror("echo_epoll: TCP_NODELAY");
  conn *c = malloc(sizeof *c);
  if (c == NULL) {
    fprintf(stderr, "echo_epoll: out of memory\n");
    close(fd);
    return;
  }
  c->fd = fd;
  c->off = c->len = 0;
  /* Data that came with the handshake is already an edge: adding the fd
   * reports it. */
  struct epoll_event ev = {.events = CONN_EVENTS, .data.ptr = c};
  if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
    perror("echo_epoll: epoll_ctl");
    close(fd);
    free(c);
    return;
  }
  c->prev = NULL;
  c->next = s->conns;
  if (s->conns != NULL)
    s->conns->prev = c;
  s->conns = c;
  s->accepted++;
}

static void accept_all(server *s) {
  for (;;) {
    int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      conn_open(s, fd);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED)
      continue;
    if (errno != EAGAIN && !s->accept_error_reported) {
      perror("echo_epoll: accept4");
      s->accept_error_reported = 1;
    }
    return;
  }
}

static int watch(server *s, int fd, void *tag) {
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = tag};
  return epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev);
}

/* The listener and signal descriptors are told apart from connections by
 * the address of their fields in the server. */
static int run(server *s) {
  struct epoll_event events[MAX_EVENTS];
  for (;;) {
    int n = epoll_wait(s->ep, events, MAX_EVENTS, -1);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      perror("echo_epoll: epoll_wait");
      return -1;
    }
    for (int i = 0; i < n; i++) {
      void *p = events[i].data.ptr;
      if (p == &s->signal_fd)
        return 0; /* SIGINT or SIGTERM */
      if (p == &s->listen_fd)
        accept_all(s);
      else
        conn_event(s, p, events[i].events);
    }
  }
}

int main(int argc, char **argv) {
  peer_opts o;
  server srv = {.ep = -1, .listen_fd = -1, .signal_fd = -1};
  server *s = &srv;
  if (peer_parse_args(argc, argv, "echo_epoll", &o) < 0)
    return 2;
  peer_raise_nofile("echo_epoll");
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  if (sigprocmask(SIG_BLOCK, &sigs, NULL) != 0) {
    perror("echo_epoll: sigprocmask");
    return 1;
  }
  s->listen_fd = peer_listen(&o, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (s->listen_fd < 0) {
    fprintf(stderr, "echo_epoll: listen on %s:%d: %s\n", o.host, o.port,
            strerror(-s->listen_fd));
    return 1;
  }
  s->signal_fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
  s->ep = epoll_create1(EPOLL_CLOEXEC);
  if (s->signal_fd < 0 || s->ep < 0 ||
      watch(s, s->listen_fd, &s->listen_fd) != 0 ||
      watch(s, s->signal_fd, &s->signal_fd) != 0) {
    perror("echo_epoll: setup");
    return 1;
  }
  peer_print_listening(o.host, peer_local_port(s->listen_fd));
  int rc = run(s);
  close(s->listen_fd);
  while (s->conns != NULL)
    conn_close(s, s->conns);
  close(s->signal_fd);
  close(s->ep);
  printf("stats: connections=%llu\n", s->accepted);
  fflush(stdout);
  return rc == 0 ? 0 : 1;
}
