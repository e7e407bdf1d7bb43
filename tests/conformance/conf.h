/*
 * Shared glue of the conformance suite: the completion recorder, the
 * deadline-bounded run loop and small helpers for sockets and files.
 */
#ifndef PX_CONF_H
#define PX_CONF_H

/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "px.h"

/* What a callback saw.  Tests pass a rec as the op's data with rec_cb. */
typedef struct rec {
  int calls;      /* how many times the callback ran */
  int result;     /* op->result at the last call */
  int order;      /* completion index within the test (g_seq at the call) */
  uint64_t at_ms; /* pt_now_ms() at the last call */
} rec;

/* Completions recorded by rec_cb in the current test (reset per test). */
extern int g_seq;

void rec_cb(px_loop *loop, px_op *op);

/*
 * Runs px_run(PX_RUN_ONCE) until cond holds; fails the test if ms pass
 * first.  The watchdog wakes the loop at the deadline, so the bound holds
 * even when nothing completes.  A px_run that only returned because of that
 * wakeup fails too, even if cond holds by then: it sat on a result.
 */
#define RUN_UNTIL(loop, cond, ms)                                              \
  do {                                                                         \
    uint64_t run_dl_ = pt_now_ms() + (uint64_t)(ms);                           \
    pt_wake_at((loop), run_dl_);                                               \
    while (!(cond) && pt_now_ms() < run_dl_) {                                 \
      int run_rc_ = px_run((loop), PX_RUN_ONCE);                               \
      if (run_rc_ < 0) {                                                       \
        pt_wake_cancel();                                                      \
        fail_msg("px_run failed: %s", px_strerror(run_rc_));                   \
      }                                                                        \
    }                                                                          \
    pt_wake_cancel();                                                          \
    if (!(cond))                                                               \
      fail_msg("%s:%d: no result within %d ms waiting for: %s", __FILE__,      \
               __LINE__, (int)(ms), #cond);                                    \
    if (pt_now_ms() >= run_dl_)                                                \
      fail_msg("%s:%d: px_run returned only when woken at the %d ms "          \
               "deadline, though this held: %s",                               \
               __FILE__, __LINE__, (int)(ms), #cond);                          \
  } while (0)

px_loop *new_loop(void);
px_loop *new_loop_entries(uint32_t entries);
/* Asserts nothing is in flight and frees the loop. */
void finish(px_loop *loop);
/* Runs a 20 ms timeout to completion, giving a duplicate completion the
 * chance to show up before a test checks "exactly once". */
void settle(px_loop *loop);

/* A connected TCP pair on 127.0.0.1 (the listener is closed). */
void tcp_pair(px_loop *loop, px_fd *client, px_fd *server);
px_fd tcp_listener(px_loop *loop, int *port);
void socketpair_new(px_loop *loop, px_fd fds[2]);
void close_fd(px_loop *loop, px_fd fd);
/* Sends into fd until its buffers are full (nobody reads the peer).
 * Returns 1 when they are, 0 when 8 MiB all fit; *result (if not NULL)
 * gets the result of the filling send. */
int fill_send_buffer(px_loop *loop, px_fd fd, int *result);

/* A fresh temp file opened PX_O_RDWR | PX_O_CREAT | PX_O_TRUNC; path is
 * filled for remove(). */
px_fd temp_file(px_loop *loop, char *path, size_t size);

/* Submit one op, run until it completes, return its result. */
int sync_read(px_loop *loop, px_fd fd, void *buf, size_t len, int64_t off);
int sync_write(px_loop *loop, px_fd fd, const void *buf, size_t len,
               int64_t off);
int sync_recv(px_loop *loop, px_fd fd, void *buf, size_t len);
int sync_send(px_loop *loop, px_fd fd, const void *buf, size_t len);

int test_setup(void **state);
int test_teardown(void **state);

#define PX_TEST(name) void name(void **state);
#include "list.h"
#undef PX_TEST

#endif /* PX_CONF_H */
