/*
 * The small part every peer server shares: its command line, its file
 * descriptor limit and its "listening on" line.  The event loops themselves
 * are each written for one library, in its own file, without px.
 */
#ifndef PEER_H
#define PEER_H

typedef struct peer_opts {
  const char *host; /* an IPv4 or IPv6 address */
  int port;         /* 0: any */
} peer_opts;

/* Parses --host IP --port N; prints usage and returns -1 when wrong. */
int peer_parse_args(int argc, char **argv, const char *name, peer_opts *o);

/* Raises the soft RLIMIT_NOFILE to the hard limit (10,000 connections need
 * more than the usual 1024). */
void peer_raise_nofile(const char *name);

/* A bound, listening TCP socket (SO_REUSEADDR, backlog SOMAXCONN), or
 * -errno.  sock_flags are SOCK_NONBLOCK / SOCK_CLOEXEC. */
int peer_listen(const peer_opts *o, int sock_flags);

/* The port a socket is bound to, or -errno. */
int peer_local_port(int fd);

/* Prints "listening on HOST:PORT" and flushes stdout. */
void peer_print_listening(const char *host, int port);

#endif
