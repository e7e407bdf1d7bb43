/*
 * idle_conns — the user-space memory a server spends per idle connection.
 *
 *   idle_conns [--conns 10000] [--host 127.0.0.1] [--settle-ms 1000]
 *              -- SERVER_COMMAND ARGS...
 *
 * for example
 *
 *   idle_conns --conns 10000 -- examples/echo_server --host 127.0.0.1 --port 0
 *
 * SERVER_COMMAND must be a TCP echo server that prints "listening on
 * HOST:PORT" (an IPv6 host as "[::1]:PORT") on its stdout, as
 * examples/echo_server does; with --port 0 the port is read from that line.
 * --host is the numeric address this program connects to.
 *
 * What it measures: the growth of the server's resident set, VmRSS and
 * RssAnon (the anonymous pages: heap, stacks, anonymous mmaps, without the
 * shared-library and file pages) from /proc/PID/status, between
 *
 *   before: WARMUP_CONNS connections have each echoed a few bytes and been
 *           closed, one after another, so the server's code paths have run
 *           and its allocator has set up its arenas; the server holds no
 *           connection any more (its descriptor count is back to what it
 *           was when it started listening) and its RSS has stopped changing;
 *   after:  --conns connections have each sent one byte and read its echo,
 *           so the server has certainly accepted each one, taken it through
 *           one echo and now has it idle with its next receive posted, and
 *           --settle-ms have passed.
 *
 * (after - before) / conns is the price of one idle connection in the
 * server's own memory: its connection struct and buffer, its ops, whatever
 * the library keeps per handle, and allocator overhead.  Only pages the
 * server has touched are resident: most of a 16 KiB receive buffer that
 * has only ever held one byte is not counted, so the figure is what idle
 * connections cost, not what busy ones would.  Kernel memory (socket
 * buffers, io_uring rings, file structs) is not in RSS either.  The server's
 * thread count and its open descriptors are printed as well: a server that
 * spends a thread or a descriptor pair per connection shows it there.
 *
 * Why three processes: each connection needs a descriptor at both ends and
 * RLIMIT_NOFILE is per process (its hard limit is 20000 on the machines this
 * was written for), so the server's ends and the client's ends live in
 * different processes.  The server is a child started from SERVER_COMMAND
 * (which raises its soft limit to the hard limit before exec); the client
 * ends belong to a second forked child that connects and then holds them
 * open.  This process only measures, so it can watch both children with
 * deadlines while the connections sit idle, and it kills whatever is left of
 * them on any failure.
 *
 * Linux only (/proc, PR_SET_PDEATHSIG); libc only, no px.  Exits 0 when the
 * measurement was taken and both children ended cleanly, 1 on any failure
 * (refused connection, wrong echo, timeout, a child that died) with a line
 * saying why, 2 on a bad command line.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pipe2, PR_SET_PDEATHSIG */
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LISTEN_TIMEOUT_MS 10000 /* for the "listening on" line */
#define IO_TIMEOUT_MS 5000      /* one connect, send or receive */
#define EXIT_TIMEOUT_MS 10000   /* a child asked to end */
#define CLIENT_BASE_MS 10000    /* the client's connecting: this, plus */
#define CLIENT_PER_CONN_MS 2    /* this per connection */
#define STABLE_TIMEOUT_MS 5000  /* RSS or descriptors settling after warm-up */
#define POLL_MS 20              /* between two readings of /proc */
#define STABLE_READS 5          /* equal VmRSS readings that count as stable */
#define WARMUP_CONNS 100
#define SPARE_FDS 64 /* descriptors besides the connections, either end */
#define LINE_MAX_LEN 512

/* ---- State. ----------------------------------------------------------- */

typedef struct config {
  int conns, settle_ms;
  const char *host;
  char **command;
  struct sockaddr_storage addr; /* host; the port once the server says */
  socklen_t addrlen;
} config;

typedef struct server {
  pid_t pid; /* 0 once reaped */
  int out;   /* read end of its stdout; -1 once closed */
  size_t len;
  char line[LINE_MAX_LEN]; /* a line read in part */
} server;

typedef struct client {
  pid_t pid;
  int ready; /* read end: one byte once every connection is idle */
  int done;  /* write end: closing it makes the client close and exit */
} client;

typedef struct proc_usage {    /* from /proc/PID/status */
  long long rss_kib, anon_kib; /* anon_kib -1: the kernel has no RssAnon */
  int threads;
} proc_usage;

__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("idle_conns: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return -1;
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = ms % 1000 * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
    ;
}

static int ms_left(int64_t deadline) {
  int64_t left = deadline - now_ms();
  return left > 0 ? (int)left : 0;
}

/* ---- Arguments and limits. -------------------------------------------- */

static void usage(void) {
  fprintf(stderr, "usage: idle_conns [--conns N] [--host IP] [--settle-ms MS]"
                  " -- SERVER_COMMAND ARGS...\n");
}

static int parse_int(const char *s, long lo, long hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi)
    return -1;
  *out = (int)v;
  return 0;
}

static int parse_host(config *cfg) {
  struct sockaddr_in *a4 = (struct sockaddr_in *)&cfg->addr;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&cfg->addr;
  if (inet_pton(AF_INET, cfg->host, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    cfg->addrlen = sizeof *a4;
  } else if (inet_pton(AF_INET6, cfg->host, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    cfg->addrlen = sizeof *a6;
  } else {
    return fail("'%s' is not a numeric address", cfg->host);
  }
  return 0;
}

static int parse_args(int argc, char **argv, config *cfg) {
  int i = 1;
  for (; i < argc && strcmp(argv[i], "--") != 0; i += 2) {
    const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    int bad = 0;
    if (v == NULL)
      bad = 1;
    else if (strcmp(o, "--conns") == 0)
      bad = parse_int(v, 1, 1000000, &cfg->conns);
    else if (strcmp(o, "--host") == 0)
      cfg->host = v;
    else if (strcmp(o, "--settle-ms") == 0)
      bad = parse_int(v, 0, 3600000, &cfg->settle_ms);
    else
      bad = 1;
    if (bad)
      return fail("bad argument '%s'", o);
  }
  if (i + 1 >= argc)
    return fail("no server command after '--'");
  cfg->command = argv + i + 1;
  return parse_host(cfg);
}

static void set_port(config *cfg, int port) {
  if (cfg->addr.ss_family == AF_INET)
    ((struct sockaddr_in *)&cfg->addr)->sin_port = htons((uint16_t)port);
  else
    ((struct sockaddr_in6 *)&cfg->addr)->sin6_port = htons((uint16_t)port);
}

/* Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit
 * in force afterwards (RLIM_INFINITY included), or 0 when it is unknown. */
static rlim_t raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
    return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl); /* on failure the old limit is kept */
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
      return 0;
  }
  return rl.rlim_cur;
}

/* The client child inherits this process's limit; the server raises its
 * own to the same hard limit, so one check covers both ends. */
static int check_nofile(int conns) {
  rlim_t lim = raise_nofile();
  if (lim == 0)
    return fail("getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
  if (lim != RLIM_INFINITY && (uint64_t)conns + SPARE_FDS > lim)
    return fail("%d connections need %d descriptors in the client and as "
                "many in the server, but RLIMIT_NOFILE allows %llu per "
                "process (hard limit included); use --conns %lld or fewer",
                conns, conns + SPARE_FDS, (unsigned long long)lim,
                (long long)lim - SPARE_FDS);
  return 0;
}

/* ---- /proc/PID. ------------------------------------------------------- */

/* Returns -1 when the process is gone or a zombie (a zombie's status has
 * no VmRSS line). */
static int read_usage(pid_t pid, proc_usage *u) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return -1;
  *u = (proc_usage){.rss_kib = -1, .anon_kib = -1, .threads = -1};
  while (fgets(line, sizeof line, f) != NULL) {
    if (sscanf(line, "VmRSS: %lld kB", &u->rss_kib) == 1)
      continue;
    if (sscanf(line, "RssAnon: %lld kB", &u->anon_kib) == 1)
      continue;
    sscanf(line, "Threads: %d", &u->threads);
  }
  fclose(f);
  return u->rss_kib < 0 ? -1 : 0;
}

static int count_fds(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  if (d == NULL)
    return -1;
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* The warm-up's closes reach the server asynchronously; it has handled
 * them all once it is back to the descriptors it had before.  A server
 * that keeps some (a cache, say) only gets a note: the figure is still
 * taken. */
static void wait_fds_back(pid_t pid, int want) {
  if (want < 0)
    return; /* /proc/PID/fd was not readable; nothing to compare */
  int64_t deadline = now_ms() + STABLE_TIMEOUT_MS;
  int n;
  while ((n = count_fds(pid)) > want && now_ms() < deadline)
    sleep_ms(POLL_MS);
  if (n > want)
    fprintf(stderr,
            "idle_conns: note: the server holds %d descriptors after the "
            "warm-up, %d before it\n",
            n, want);
}

/* Reads the server's usage until VmRSS has not changed for STABLE_READS
 * readings in a row; after STABLE_TIMEOUT_MS the last reading is used. */
static int wait_rss_stable(pid_t pid, proc_usage *u) {
  int64_t deadline = now_ms() + STABLE_TIMEOUT_MS;
  long long prev = -1;
  int same = 0;
  for (;; sleep_ms(POLL_MS)) {
    if (read_usage(pid, u) < 0)
      return fail("the server exited during the warm-up");
    same = u->rss_kib == prev ? same + 1 : 1;
    prev = u->rss_kib;
    if (same >= STABLE_READS)
      return 0;
    if (now_ms() >= deadline) {
      fprintf(stderr,
              "idle_conns: note: the server's RSS still changed after "
              "%d ms; using the last reading\n",
              STABLE_TIMEOUT_MS);
      return 0;
    }
  }
}

/* ---- The server. ------------------------------------------------------ */

static void child_prepare(pid_t parent) {
  /* A parent killed outright takes its children with it. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent)
    _exit(1); /* it died before the prctl */
}

static int server_start(const config *cfg, server *s) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0)
    return fail("pipe: %s", strerror(errno));
  pid_t parent = getpid();
  fflush(NULL); /* the child must not write this process's buffers again */
  s->pid = fork();
  if (s->pid < 0) {
    s->pid = 0;
    close(p[0]);
    close(p[1]);
    return fail("fork: %s", strerror(errno));
  }
  if (s->pid == 0) {
    child_prepare(parent);
    if (dup2(p[1], STDOUT_FILENO) < 0)
      _exit(127);
    raise_nofile();
    execvp(cfg->command[0], cfg->command);
    fprintf(stderr, "idle_conns: cannot run %s: %s\n", cfg->command[0],
            strerror(errno));
    _exit(127);
  }
  close(p[1]);
  s->out = p[0];
  return 0;
}

/* One line of the server's output: the port when it is the listening line,
 * otherwise passed on. */
static void server_line(const char *line, int *port) {
  static const char prefix[] = "listening on ";
  const char *colon = strrchr(line, ':');
  if (port != NULL && strncmp(line, prefix, sizeof prefix - 1) == 0 &&
      colon != NULL && parse_int(colon + 1, 1, 65535, port) == 0)
    return;
  printf("server: %s\n", line);
}

/* Reads what the server writes within timeout_ms (at most one read) and
 * handles each complete line.  Returns 1 when it read something, 0 when
 * there was nothing, and -1 once the server's stdout is closed. */
static int server_read(server *s, int timeout_ms, int *port) {
  struct pollfd pfd = {.fd = s->out, .events = POLLIN};
  int n = poll(&pfd, 1, timeout_ms);
  if (n <= 0)
    return 0; /* nothing yet (or EINTR); every caller has its deadline */
  ssize_t got = read(s->out, s->line + s->len, sizeof s->line - 1 - s->len);
  if (got < 0 && errno == EINTR)
    return 0;
  if (got <= 0) {
    if (s->len > 0) { /* a last line without its newline */
      s->line[s->len] = '\0';
      server_line(s->line, port);
      s->len = 0;
    }
    close(s->out);
    s->out = -1;
    return -1;
  }
  s->len += (size_t)got;
  s->line[s->len] = '\0';
  char *start = s->line, *nl;
  while ((nl = strchr(start, '\n')) != NULL) {
    *nl = '\0';
    server_line(start, port);
    start = nl + 1;
  }
  s->len -= (size_t)(start - s->line);
  memmove(s->line, start, s->len);
  if (s->len == sizeof s->line - 1) { /* a very long line: pass it in parts */
    server_line(s->line, NULL);
    s->len = 0;
  }
  return 1;
}

static int server_wait_listening(server *s, int *port) {
  int64_t deadline = now_ms() + LISTEN_TIMEOUT_MS;
  *port = 0;
  while (*port == 0) {
    if (now_ms() >= deadline)
      return fail("the server did not print 'listening on HOST:PORT' within "
                  "%d ms",
                  LISTEN_TIMEOUT_MS);
    if (server_read(s, ms_left(deadline), port) < 0)
      return fail("the server exited before printing 'listening on "
                  "HOST:PORT'");
  }
  return 0;
}

/* ---- Connections. ----------------------------------------------------- */

static const char *error_name(int err) {
  return err == EAGAIN || err == EWOULDBLOCK || err == EINPROGRESS
             ? "timed out"
             : strerror(err);
}

/* A blocking socket whose connect, sends and receives give up after
 * IO_TIMEOUT_MS (SO_SNDTIMEO bounds connect on Linux). */
static int tcp_connect(const config *cfg, int i, int *fd) {
  struct timeval tv = {.tv_sec = IO_TIMEOUT_MS / 1000,
                       .tv_usec = IO_TIMEOUT_MS % 1000 * 1000};
  *fd = socket(cfg->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (*fd < 0)
    return fail("connection %d: socket: %s", i, strerror(errno));
  if (setsockopt(*fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0 ||
      setsockopt(*fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
      connect(*fd, (const struct sockaddr *)&cfg->addr, cfg->addrlen) < 0) {
    int err = errno;
    close(*fd);
    *fd = -1;
    return fail("connection %d: connect to %s: %s", i, cfg->host,
                error_name(err));
  }
  return 0;
}

/* Sends msg and reads exactly as many bytes back, which must be msg. */
static int echo(int fd, int i, const unsigned char *msg, size_t n) {
  unsigned char back[64];
  for (size_t off = 0; off < n;) {
    ssize_t k = send(fd, msg + off, n - off, MSG_NOSIGNAL);
    if (k < 0 && errno != EINTR)
      return fail("connection %d: send: %s", i, error_name(errno));
    off += k > 0 ? (size_t)k : 0;
  }
  for (size_t off = 0; off < n;) {
    ssize_t k = recv(fd, back + off, n - off, 0);
    if (k == 0)
      return fail("connection %d: the server closed it before the echo", i);
    if (k < 0 && errno != EINTR)
      return fail("connection %d: recv: %s", i, error_name(errno));
    off += k > 0 ? (size_t)k : 0;
  }
  if (memcmp(back, msg, n) != 0)
    return fail("connection %d: the echo does not match what was sent", i);
  return 0;
}

/* One connection after another, each closed before the next: enough to run
 * the server's accept, echo and close paths and to set up its allocator,
 * while leaving no more memory behind in it than one connection's worth. */
static int warm_up(const config *cfg) {
  static const unsigned char msg[] = "px warm-up";
  for (int i = 0; i < WARMUP_CONNS; i++) {
    int fd;
    if (tcp_connect(cfg, i, &fd) < 0)
      return -1;
    int rc = echo(fd, i, msg, sizeof msg - 1);
    close(fd);
    if (rc < 0)
      return -1;
  }
  return 0;
}

/* ---- The client child. ------------------------------------------------ */

/* Opens every connection, echoes one byte on each, reports, and holds them
 * until the parent closes its end of the done pipe (or dies). */
static int client_run(const config *cfg, int ready, int done) {
  int *fds = malloc((size_t)cfg->conns * sizeof *fds);
  if (fds == NULL)
    return fail("client: out of memory");
  int n = 0, rc = 0;
  for (; n < cfg->conns; n++) {
    unsigned char byte = (unsigned char)(n * 131 + 7);
    if (tcp_connect(cfg, n, &fds[n]) < 0)
      break;
    if (echo(fds[n], n, &byte, 1) < 0) {
      n++; /* close it too */
      break;
    }
  }
  if (n == cfg->conns && write(ready, "R", 1) == 1) {
    char c;
    while (read(done, &c, 1) < 0 && errno == EINTR)
      ;
  } else {
    rc = -1;
  }
  for (int i = 0; i < n; i++)
    close(fds[i]);
  free(fds);
  return rc;
}

static int client_start(const config *cfg, server *s, client *c) {
  int ready[2], done[2];
  if (pipe2(ready, O_CLOEXEC) < 0)
    return fail("pipe: %s", strerror(errno));
  if (pipe2(done, O_CLOEXEC) < 0) {
    close(ready[0]);
    close(ready[1]);
    return fail("pipe: %s", strerror(errno));
  }
  pid_t parent = getpid();
  fflush(NULL);
  c->pid = fork();
  if (c->pid == 0) {
    child_prepare(parent);
    /* The client must see end-of-file on done when the parent goes away, so
     * it keeps no write end of its own; nor the server's output. */
    close(done[1]);
    close(ready[0]);
    close(s->out);
    _exit(client_run(cfg, ready[1], done[0]) < 0 ? 1 : 0);
  }
  close(ready[1]);
  close(done[0]);
  c->ready = ready[0];
  c->done = done[1];
  if (c->pid < 0) {
    c->pid = 0;
    return fail("fork: %s", strerror(errno));
  }
  return 0;
}

/* Waits for the client's ready byte, passing on the server's output; the
 * server closing its stdout means it has died. */
static int client_wait_ready(const config *cfg, client *c, server *s) {
  int64_t limit = CLIENT_BASE_MS + (int64_t)cfg->conns * CLIENT_PER_CONN_MS;
  int64_t deadline = now_ms() + limit;
  for (;;) {
    struct pollfd pfd[2] = {{.fd = c->ready, .events = POLLIN},
                            {.fd = s->out, .events = POLLIN}};
    int n = poll(pfd, 2, ms_left(deadline));
    if (n < 0 && errno != EINTR)
      return fail("poll: %s", strerror(errno));
    if (n == 0)
      return fail("%d connections were not all open and echoed within %lld "
                  "ms",
                  cfg->conns, (long long)limit);
    if (pfd[0].revents != 0) {
      char byte;
      if (read(c->ready, &byte, 1) == 1)
        return 0;
      return fail("the client failed (see above)");
    }
    if (pfd[1].revents != 0 && server_read(s, 0, NULL) < 0)
      return fail("the server exited while the connections were opened");
  }
}

/* ---- Ending the children. --------------------------------------------- */

/* Reaps pid within timeout_ms, passing on the server's output meanwhile
 * (it might otherwise block on a full pipe).  Returns -1 on timeout. */
static int wait_exit(pid_t pid, server *s, int timeout_ms, int *status) {
  int64_t deadline = now_ms() + timeout_ms;
  for (;;) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid)
      return 0;
    if (r < 0 && errno != EINTR)
      return fail("waitpid: %s", strerror(errno));
    if (now_ms() >= deadline)
      return -1;
    if (s != NULL && s->out >= 0)
      server_read(s, POLL_MS, NULL);
    else
      sleep_ms(POLL_MS);
  }
}

/* A child that ends by the signal it was sent (a server without a SIGTERM
 * handler) has ended normally too. */
static int exit_ok(const char *who, int status, int sent) {
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return 0;
  if (WIFSIGNALED(status) && WTERMSIG(status) == sent)
    return 0;
  if (WIFEXITED(status))
    return fail("the %s exited with status %d", who, WEXITSTATUS(status));
  return fail("the %s was killed by signal %d", who, WTERMSIG(status));
}

/* The failure path: nothing is left running, whatever state it is in. */
static void kill_children(server *s, client *c) {
  pid_t pids[2] = {c->pid, s->pid};
  for (int i = 0; i < 2; i++) {
    if (pids[i] > 0) {
      kill(pids[i], SIGKILL);
      while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR)
        ;
    }
  }
  c->pid = s->pid = 0;
}

/* The success path: the client closes its connections, then the server is
 * asked to stop with SIGTERM. */
static int stop_children(server *s, client *c) {
  int status;
  close(c->done);
  c->done = -1;
  if (wait_exit(c->pid, NULL, EXIT_TIMEOUT_MS, &status) < 0)
    return fail("the client did not exit within %d ms", EXIT_TIMEOUT_MS);
  c->pid = 0;
  if (exit_ok("client", status, 0) < 0)
    return -1;
  kill(s->pid, SIGTERM);
  if (wait_exit(s->pid, s, EXIT_TIMEOUT_MS, &status) < 0)
    return fail("the server did not exit within %d ms of SIGTERM",
                EXIT_TIMEOUT_MS);
  s->pid = 0;
  while (s->out >= 0 && server_read(s, 0, NULL) > 0)
    ; /* its last lines, already in the pipe */
  return exit_ok("server", status, SIGTERM);
}

/* ---- The measurement. ------------------------------------------------- */

static void print_delta(const char *what, long long before, long long after,
                        int conns) {
  long long delta = after - before;
  printf("%s before %lld KiB, after %lld KiB, delta %lld KiB, per idle "
         "connection %lld bytes",
         what, before, after, delta, delta * 1024 / conns);
}

static void report(const config *cfg, const proc_usage *before,
                   const proc_usage *after, int fds) {
  printf("idle_conns: %d connections, ", cfg->conns);
  print_delta("server RSS", before->rss_kib, after->rss_kib, cfg->conns);
  if (before->anon_kib >= 0 && after->anon_kib >= 0) {
    fputs(" (", stdout);
    print_delta("RssAnon:", before->anon_kib, after->anon_kib, cfg->conns);
    fputs(")\n", stdout);
  } else {
    fputs(" (RssAnon: not reported by this kernel)\n", stdout);
  }
  printf("idle_conns: server threads before %d, after %d; open fds after %d\n",
         before->threads, after->threads, fds);
  fflush(stdout);
}

static int run(config *cfg, server *s, client *c) {
  int port;
  if (server_start(cfg, s) < 0 || server_wait_listening(s, &port) < 0)
    return -1;
  set_port(cfg, port);
  int base_fds = count_fds(s->pid);
  if (warm_up(cfg) < 0)
    return -1;
  wait_fds_back(s->pid, base_fds);
  proc_usage before, after;
  if (wait_rss_stable(s->pid, &before) < 0)
    return -1;
  if (client_start(cfg, s, c) < 0 || client_wait_ready(cfg, c, s) < 0)
    return -1;
  sleep_ms(cfg->settle_ms); /* the measurement's own wait, not a sync */
  if (read_usage(s->pid, &after) < 0)
    return fail("the server exited while the connections were idle");
  report(cfg, &before, &after, count_fds(s->pid));
  return stop_children(s, c);
}

int main(int argc, char **argv) {
  config cfg = {.conns = 10000, .settle_ms = 1000, .host = "127.0.0.1"};
  if (parse_args(argc, argv, &cfg) < 0) {
    usage();
    return 2;
  }
  if (check_nofile(cfg.conns) < 0)
    return 1;
  server s = {.out = -1};
  client c = {.ready = -1, .done = -1};
  int rc = run(&cfg, &s, &c);
  if (rc < 0)
    kill_children(&s, &c);
  int fds[3] = {s.out, c.ready, c.done};
  for (int i = 0; i < 3; i++)
    if (fds[i] >= 0)
      close(fds[i]);
  return rc < 0 ? 1 : 0;
}
