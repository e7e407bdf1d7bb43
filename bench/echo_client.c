/*
 * echo_client — a closed-loop load generator for TCP echo servers.
 *
 *   echo_client --host 127.0.0.1 --port N [--conns 100] [--size 1024]
 *               [--seconds 5] [--pipeline 1] [--threads 1]
 *
 * Plain POSIX sockets and epoll, no px, so that it loads every server the
 * same way.  Each connection keeps --pipeline messages of --size bytes in
 * flight; a message is sent, its echo read back and checked byte for byte,
 * its round-trip time recorded, and the next message sent.  Every message
 * carries its connection id and sequence number in its first 8 bytes and a
 * pattern derived from both in the rest, so a byte from another connection,
 * another message or another offset is caught.
 *
 * Requests and latencies count the echoes completed within --seconds; the
 * messages still in flight then are drained (and checked) for up to
 * DRAIN_SECONDS and the connections closed.  Connect failures, resets, early
 * end of stream and echoes that never come back are errors.  The last line
 * is machine-readable; the exit status is 0 only when requests > 0 and there
 * were no errors and no mismatches.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* SOCK_NONBLOCK */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hist.h"

#define DRAIN_SECONDS 2
#define MAX_EVENTS 256
#define RBUF_SIZE (64 * 1024)
#define MAX_REPORTS 10 /* errors and mismatches printed in full */

/* ---- Configuration and per-thread state. ------------------------------ */

typedef struct config {
  const char *host;
  int port, conns, size, pipeline, threads;
  double seconds;
  struct sockaddr_storage addr;
  socklen_t addrlen;
  uint64_t start_ns;
} config;

enum conn_state { C_CONNECTING, C_RUNNING, C_DONE };

typedef struct conn {
  int fd;
  uint32_t id;
  enum conn_state state;
  int want_out;         /* EPOLLOUT registered */
  uint64_t generated;   /* messages generated (and queued for sending) */
  uint64_t echoed;      /* messages whose echo came back completely */
  uint64_t sent;        /* stream bytes sent */
  uint64_t rcvd;        /* stream bytes received */
  unsigned char *slots; /* pipeline messages of size bytes */
  uint64_t *sent_ns;    /* when each slot's message was generated */
  int mismatched;       /* the current message already counted one */
} conn;

typedef struct worker {
  const config *cfg;
  pthread_t thread;
  int epfd;
  conn *conns;
  int nconns, live;
  uint64_t requests, errors, mismatches;
  int draining;
  hist lat;
  unsigned char rbuf[RBUF_SIZE];
} worker;

static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned reports;

/* Prints one problem line, the first MAX_REPORTS of them (all are counted). */
__attribute__((format(printf, 1, 2))) static void report(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pthread_mutex_lock(&report_lock);
  if (reports++ < MAX_REPORTS) {
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
  } else if (reports == MAX_REPORTS + 1) {
    fputs("(further errors and mismatches are counted, not printed)\n", stderr);
  }
  pthread_mutex_unlock(&report_lock);
  va_end(ap);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- The message pattern. --------------------------------------------- */

static unsigned char pattern_byte(uint32_t id, uint32_t seq, size_t i) {
  if (i < 4)
    return (unsigned char)(id >> (8 * i));
  if (i < 8)
    return (unsigned char)(seq >> (8 * (i - 4)));
  return (unsigned char)(id * 131u + seq * 7u + (uint32_t)i);
}

static void pattern_fill(unsigned char *p, size_t n, uint32_t id,
                         uint32_t seq) {
  for (size_t i = 0; i < n; i++)
    p[i] = pattern_byte(id, seq, i);
}

/* ---- Connections. ----------------------------------------------------- */

static void conn_finish(worker *w, conn *c) {
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  c->state = C_DONE;
  w->live--;
}

static void conn_fail(worker *w, conn *c, const char *what, int err) {
  w->errors++;
  report("error: conn %u: %s: %s", c->id, what,
         err ? strerror(err) : "unexpected end of stream");
  conn_finish(w, c);
}

static int conn_epoll(worker *w, conn *c, int op, int out) {
  struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0u),
                           .data.ptr = c};
  if (epoll_ctl(w->epfd, op, c->fd, &ev) < 0) {
    conn_fail(w, c, "epoll_ctl", errno);
    return -1;
  }
  c->want_out = out;
  return 0;
}

static void conn_generate(worker *w, conn *c) {
  size_t slot = (size_t)(c->generated % (uint64_t)w->cfg->pipeline);
  pattern_fill(c->slots + slot * (size_t)w->cfg->size, (size_t)w->cfg->size,
               c->id, (uint32_t)c->generated);
  c->sent_ns[slot] = now_ns();
  c->generated++;
}

/* Sends what has been generated and not sent yet, until the socket is full. */
static int conn_flush(worker *w, conn *c) {
  const uint64_t size = (uint64_t)w->cfg->size;
  const uint64_t pipe = (uint64_t)w->cfg->pipeline;
  while (c->sent < c->generated * size) {
    uint64_t off = c->sent % size;
    const unsigned char *p = c->slots + (c->sent / size % pipe) * size + off;
    ssize_t n = send(c->fd, p, (size_t)(size - off), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN) {
      if (!c->want_out)
        return conn_epoll(w, c, EPOLL_CTL_MOD, 1);
      return 0;
    }
    if (n < 0) {
      conn_fail(w, c, "send", errno);
      return -1;
    }
    c->sent += (uint64_t)n;
  }
  if (c->want_out)
    return conn_epoll(w, c, EPOLL_CTL_MOD, 0);
  return 0;
}

/* Checks received bytes against the messages they echo; a completed message
 * is timed and, while the run lasts, replaced by the next one. */
static void conn_check(worker *w, conn *c, const unsigned char *p, size_t n) {
  const uint64_t size = (uint64_t)w->cfg->size;
  while (n > 0) {
    uint64_t seq = c->rcvd / size, off = c->rcvd % size;
    size_t take = (size_t)(size - off) < n ? (size_t)(size - off) : n;
    const unsigned char *want =
        c->slots + (seq % (uint64_t)w->cfg->pipeline) * size + off;
    if (!c->mismatched && memcmp(p, want, take) != 0) {
      size_t i = 0;
      while (p[i] == want[i])
        i++;
      c->mismatched = 1; /* one count per message, not per byte */
      w->mismatches++;
      report("mismatch: conn %u seq %llu offset %llu: expected 0x%02x, got "
             "0x%02x",
             c->id, (unsigned long long)seq, (unsigned long long)(off + i),
             want[i], p[i]);
    }
    c->rcvd += take;
    p += take;
    n -= take;
    if (c->rcvd % size != 0)
      continue;
    c->mismatched = 0;
    c->echoed++;
    if (!w->draining) {
      w->requests++;
      hist_add(&w->lat,
               now_ns() - c->sent_ns[seq % (uint64_t)w->cfg->pipeline]);
      conn_generate(w, c);
    }
  }
}

static void conn_readable(worker *w, conn *c) {
  uint64_t outstanding = c->generated * (uint64_t)w->cfg->size - c->rcvd;
  /* Reading past what was sent would be reading bytes the server made up;
   * one extra byte is enough to see them (or the end of stream). */
  size_t want = outstanding == 0          ? 1
                : outstanding < RBUF_SIZE ? (size_t)outstanding
                                          : RBUF_SIZE;
  ssize_t n = recv(c->fd, w->rbuf, want, 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return;
  if (n <= 0) {
    conn_fail(w, c, "recv", n < 0 ? errno : 0);
    return;
  }
  if (outstanding == 0) {
    w->mismatches++;
    report("mismatch: conn %u: %zd byte(s) nobody sent, after message %llu",
           c->id, n, (unsigned long long)c->echoed);
    conn_fail(w, c, "recv", EPROTO);
    return;
  }
  conn_check(w, c, w->rbuf, (size_t)n);
  if (c->state == C_RUNNING && conn_flush(w, c) == 0 && w->draining &&
      c->echoed == c->generated)
    conn_finish(w, c);
}

static void conn_start(worker *w, conn *c) {
  c->state = C_RUNNING;
  int one = 1;
  if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0) {
    conn_fail(w, c, "setsockopt TCP_NODELAY", errno);
    return;
  }
  for (int i = 0; i < w->cfg->pipeline; i++)
    conn_generate(w, c);
  conn_flush(w, c);
}

static void conn_connected(worker *w, conn *c) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    err = errno;
  if (err != 0) {
    conn_fail(w, c, "connect", err);
    return;
  }
  conn_start(w, c);
}

static void conn_open(worker *w, conn *c) {
  const config *cfg = w->cfg;
  c->state = C_CONNECTING;
  w->live++;
  c->fd = socket(cfg->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (c->fd < 0) {
    conn_fail(w, c, "socket", errno);
    return;
  }
  int rc = connect(c->fd, (const struct sockaddr *)&cfg->addr, cfg->addrlen);
  if (rc < 0 && errno != EINPROGRESS) {
    conn_fail(w, c, "connect", errno);
    return;
  }
  if (conn_epoll(w, c, EPOLL_CTL_ADD, 1) < 0)
    return;
  if (rc == 0)
    conn_connected(w, c);
}

static void conn_event(worker *w, conn *c, uint32_t events) {
  if (c->state == C_CONNECTING) {
    conn_connected(w, c);
    return;
  }
  if (c->state == C_RUNNING && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
    conn_readable(w, c);
  if (c->state == C_RUNNING && (events & EPOLLOUT))
    conn_flush(w, c);
}

/* ---- Threads. --------------------------------------------------------- */

static void worker_drain_start(worker *w) {
  w->draining = 1;
  for (int i = 0; i < w->nconns; i++) {
    conn *c = &w->conns[i];
    if (c->state == C_RUNNING && c->echoed == c->generated)
      conn_finish(w, c);
    else if (c->state == C_CONNECTING)
      conn_fail(w, c, "connect", ETIMEDOUT);
  }
}

static void *worker_run(void *arg) {
  worker *w = arg;
  const config *cfg = w->cfg;
  uint64_t end = cfg->start_ns + (uint64_t)(cfg->seconds * 1e9);
  uint64_t drain_end = end + (uint64_t)DRAIN_SECONDS * 1000000000u;
  for (int i = 0; i < w->nconns; i++)
    conn_open(w, &w->conns[i]);
  struct epoll_event ev[MAX_EVENTS];
  while (w->live > 0) {
    uint64_t now = now_ns();
    if (!w->draining && now >= end)
      worker_drain_start(w);
    if (w->draining && now >= drain_end)
      break;
    uint64_t until = w->draining ? drain_end : end;
    int ms = (int)((until - now + 999999) / 1000000);
    int n = epoll_wait(w->epfd, ev, MAX_EVENTS, ms);
    if (n < 0 && errno != EINTR) {
      perror("epoll_wait");
      w->errors++;
      break;
    }
    for (int i = 0; i < n; i++)
      conn_event(w, ev[i].data.ptr, ev[i].events);
  }
  for (int i = 0; i < w->nconns; i++) {
    conn *c = &w->conns[i];
    if (c->state != C_DONE)
      conn_fail(w, c, "echo never came back", ETIMEDOUT);
  }
  return NULL;
}

/* ---- Setup. ----------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr,
          "usage: echo_client --host IP --port N [--conns N] [--size BYTES]\n"
          "                   [--seconds T] [--pipeline N] [--threads N]\n");
}

static int parse_long(const char *s, long lo, long hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi)
    return -1;
  *out = (int)v;
  return 0;
}

static int parse_args(int argc, char **argv, config *cfg) {
  for (int i = 1; i < argc; i += 2) {
    const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    char *end;
    if (v == NULL)
      bad = 1;
    else if (strcmp(o, "--host") == 0)
      cfg->host = v;
    else if (strcmp(o, "--port") == 0)
      bad = parse_long(v, 1, 65535, &cfg->port);
    else if (strcmp(o, "--conns") == 0)
      bad = parse_long(v, 1, 1000000, &cfg->conns);
    else if (strcmp(o, "--size") == 0)
      bad = parse_long(v, 1, 64 * 1024 * 1024, &cfg->size);
    else if (strcmp(o, "--pipeline") == 0)
      bad = parse_long(v, 1, 1024, &cfg->pipeline);
    else if (strcmp(o, "--threads") == 0)
      bad = parse_long(v, 1, 1024, &cfg->threads);
    else if (strcmp(o, "--seconds") == 0) {
      cfg->seconds = strtod(v, &end);
      bad = *end != '\0' || !(cfg->seconds > 0 && cfg->seconds < 1e6);
    } else
      bad = 1;
    if (bad) {
      fprintf(stderr, "echo_client: bad argument '%s'\n", o);
      return -1;
    }
  }
  if (cfg->host == NULL || cfg->port == 0)
    return -1;
  struct sockaddr_in *a4 = (struct sockaddr_in *)&cfg->addr;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&cfg->addr;
  if (inet_pton(AF_INET, cfg->host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)cfg->port);
    cfg->addrlen = sizeof *a4;
  } else if (inet_pton(AF_INET6, cfg->host, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)cfg->port);
    cfg->addrlen = sizeof *a6;
  } else {
    fprintf(stderr, "echo_client: '%s' is not a numeric address\n", cfg->host);
    return -1;
  }
  return 0;
}

/* Every connection needs a descriptor; the soft limit is often 1024. */
static int raise_nofile(int conns) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
    perror("getrlimit");
    return -1;
  }
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
      perror("setrlimit"); /* keep the old limit; checked below */
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
      perror("getrlimit");
      return -1;
    }
  }
  if (rl.rlim_cur != RLIM_INFINITY && (uint64_t)conns + 16 > rl.rlim_cur) {
    fprintf(stderr,
            "echo_client: %d connections need more than the %llu "
            "descriptors RLIMIT_NOFILE allows\n",
            conns, (unsigned long long)rl.rlim_cur);
    return -1;
  }
  return 0;
}

static int worker_init(worker *w, const config *cfg, int first, int n) {
  w->cfg = cfg;
  w->nconns = n;
  w->epfd = epoll_create1(EPOLL_CLOEXEC);
  w->conns = calloc((size_t)n, sizeof *w->conns);
  if (w->epfd < 0 || w->conns == NULL)
    return -1;
  for (int i = 0; i < n; i++) {
    conn *c = &w->conns[i];
    c->id = (uint32_t)(first + i);
    c->slots = malloc((size_t)cfg->pipeline * (size_t)cfg->size);
    c->sent_ns = calloc((size_t)cfg->pipeline, sizeof *c->sent_ns);
    if (c->slots == NULL || c->sent_ns == NULL)
      return -1;
  }
  return 0;
}

static void worker_destroy(worker *w) {
  for (int i = 0; w->conns != NULL && i < w->nconns; i++) {
    free(w->conns[i].slots);
    free(w->conns[i].sent_ns);
  }
  free(w->conns);
  if (w->epfd >= 0)
    close(w->epfd);
}

int main(int argc, char **argv) {
  config cfg = {
      .conns = 100, .size = 1024, .pipeline = 1, .threads = 1, .seconds = 5};
  if (parse_args(argc, argv, &cfg) < 0) {
    usage();
    return 2;
  }
  if (cfg.threads > cfg.conns)
    cfg.threads = cfg.conns;
  if (raise_nofile(cfg.conns) < 0)
    return 1;
  worker *ws = calloc((size_t)cfg.threads, sizeof *ws);
  if (ws == NULL) {
    fprintf(stderr, "echo_client: out of memory\n");
    return 1;
  }
  int status = 0, first = 0, started = 0;
  for (int t = 0; t < cfg.threads; t++) {
    int n = cfg.conns / cfg.threads + (t < cfg.conns % cfg.threads);
    ws[t].epfd = -1;
    if (worker_init(&ws[t], &cfg, first, n) < 0) {
      fprintf(stderr, "echo_client: out of memory\n");
      status = 1;
      break;
    }
    first += n;
  }
  cfg.start_ns = now_ns();
  for (int t = 0; status == 0 && t < cfg.threads; t++, started++) {
    int rc = pthread_create(&ws[t].thread, NULL, worker_run, &ws[t]);
    if (rc != 0) {
      fprintf(stderr, "echo_client: pthread_create: %s\n", strerror(rc));
      status = 1;
    }
  }
  static hist lat;
  uint64_t requests = 0, errors = 0, mismatches = 0;
  for (int t = 0; t < started; t++) {
    pthread_join(ws[t].thread, NULL);
    hist_merge(&lat, &ws[t].lat);
    requests += ws[t].requests;
    errors += ws[t].errors;
    mismatches += ws[t].mismatches;
  }
  for (int t = 0; t < cfg.threads; t++)
    worker_destroy(&ws[t]);
  free(ws);
  if (status != 0)
    return status;
  double rps = (double)requests / cfg.seconds;
  printf("%llu echoes of %d bytes over %d connection(s) in %.2f s; "
         "latency max %.0f us\n",
         (unsigned long long)requests, cfg.size, cfg.conns, cfg.seconds,
         (double)lat.max / 1e3);
  printf("conns=%d size=%d pipeline=%d threads=%d seconds=%.2f requests=%llu "
         "req/s=%.0f p50_us=%.0f p99_us=%.0f p999_us=%.0f errors=%llu "
         "mismatches=%llu avg_us=%.0f\n",
         cfg.conns, cfg.size, cfg.pipeline, cfg.threads, cfg.seconds,
         (unsigned long long)requests, rps,
         (double)hist_percentile(&lat, 0.50) / 1e3,
         (double)hist_percentile(&lat, 0.99) / 1e3,
         (double)hist_percentile(&lat, 0.999) / 1e3, (unsigned long long)errors,
         (unsigned long long)mismatches,
         lat.total ? (double)lat.sum / (double)lat.total / 1e3 : 0.0);
  return requests > 0 && errors == 0 && mismatches == 0 ? 0 : 1;
}
