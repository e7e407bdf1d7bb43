/* Command line, descriptor limit and listener for the peer servers. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "peer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

int peer_parse_args(int argc, char **argv, const char *name, peer_opts *o) {
  o->host = NULL;
  o->port = -1;
  int i = 1;
  for (; i + 1 < argc; i += 2) {
    const char *opt = argv[i], *val = argv[i + 1];
    char *end;
    if (strcmp(opt, "--host") == 0) {
      o->host = val;
      continue;
    }
    long v = strtol(val, &end, 10);
    if (strcmp(opt, "--port") != 0 || *val == '\0' || *end != '\0' || v < 0 ||
        v > 65535)
      break;
    o->port = (int)v;
  }
  if (i == argc && o->host != NULL && o->port >= 0)
    return 0;
  fprintf(stderr, "usage: %s --host IP --port N (0: any)\n", name);
  return -1;
}

void peer_raise_nofile(const char *name) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == rl.rlim_max)
    return;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
    fprintf(stderr, "%s: setrlimit(RLIMIT_NOFILE): %s\n", name,
            strerror(errno));
}

/* Fills *ss from the host and port; the length, or 0 if host is no
 * address. */
static socklen_t peer_addr(const peer_opts *o, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, o->host, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((unsigned short)o->port);
    return sizeof *in4;
  }
  if (inet_pton(AF_INET6, o->host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((unsigned short)o->port);
    return sizeof *in6;
  }
  return 0;
}

int peer_listen(const peer_opts *o, int sock_flags) {
  struct sockaddr_storage ss;
  socklen_t len = peer_addr(o, &ss);
  if (len == 0)
    return -EINVAL;
  int fd = socket(ss.ss_family, SOCK_STREAM | sock_flags, 0);
  if (fd < 0)
    return -errno;
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(fd, (struct sockaddr *)&ss, len) != 0 ||
      listen(fd, SOMAXCONN) != 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  return fd;
}

int peer_local_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
    return -errno;
  if (ss.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

void peer_print_listening(const char *host, int port) {
  int v6 = strchr(host, ':') != NULL; /* an IPv6 address goes in [] */
  printf("listening on %s%s%s:%d\n", v6 ? "[" : "", host, v6 ? "]" : "", port);
  fflush(stdout);
}
