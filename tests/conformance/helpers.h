/*
 * Test helpers: a monotonic clock, threads, unique temp paths and the
 * watchdog that bounds every wait.  This is the only place in tests/ that
 * knows which platform it runs on; the tests themselves use px.h and
 * standard C.
 */
#ifndef PX_TEST_HELPERS_H
#define PX_TEST_HELPERS_H

#include <stddef.h>
#include <stdint.h>

#include "px.h"

/* Monotonic clock. */
uint64_t pt_now_ms(void);
uint64_t pt_now_us(void);

/* CPU time the calling thread has used (user and system), microseconds:
 * for a test that a wait blocked instead of spinning. */
uint64_t pt_thread_cpu_us(void);

/* Pacing for helper threads only (never used to wait for a result). */
void pt_sleep_ms(unsigned ms);
/* Gives the processor to another thread (a helper thread's busy wait). */
void pt_yield(void);

typedef struct pt_thread pt_thread;
typedef void (*pt_thread_fn)(void *arg);
/* Returns 0, or -1 if the thread could not be started. */
int pt_thread_start(pt_thread **out, pt_thread_fn fn, void *arg);
void pt_thread_join(pt_thread *t);

/* Writes "<TMPDIR or /tmp>/px-test-<pid>-<n>-<tag>" into buf. */
int pt_temp_path(char *buf, size_t size, const char *tag);

/* Sets an environment variable of this process, or removes it (value
 * NULL).  Returns 0 or -1. */
int pt_setenv(const char *name, const char *value);

/* Sends what the process writes to stderr into a temporary file until
 * pt_stderr_capture_stop, which puts it (cut to size, NUL-terminated) into
 * buf.  Returns 0 or -1 (nothing is redirected then). */
int pt_stderr_capture_start(void);
void pt_stderr_capture_stop(char *buf, size_t size);

/* Puts SIGPIPE back to its default action (where the platform has it), so a
 * test shows that px itself keeps the process alive. */
void pt_sigpipe_default(void);

/* Counts SIGPIPE deliveries instead of dying of them, so a test can report
 * that px let one through and the suite goes on; stop unblocks SIGPIPE in
 * the calling thread (a pending one is delivered and counted), restores
 * the default action and returns the count (always 0 where there is no
 * SIGPIPE). */
void pt_sigpipe_count_start(void);
int pt_sigpipe_count_stop(void);

/* Signal masks of the calling thread, for tests that check px leaves them
 * as it found them.  Where the platform has no signal masks (Windows) a
 * mask is empty, nothing is ever blocked or pending, and two masks are
 * always equal. */
int pt_sigpipe_blocked(void); /* 1 if SIGPIPE is blocked, else 0 */
int pt_sigpipe_pending(void); /* 1 if a SIGPIPE waits for delivery, else 0 */

typedef struct pt_sigmask {
  uint64_t bits[2]; /* bit n-1 set: signal n is blocked (n < 128) */
} pt_sigmask;
void pt_sigmask_save(pt_sigmask *m);
int pt_sigmask_equal(const pt_sigmask *a, const pt_sigmask *b);
/* Blocks every signal in the calling thread (a worker that wants none). */
void pt_block_all_signals(void);
/* SIGUSR1 stands for "a signal the program blocked itself".  blocked()
 * returns 1 or 0, or -1 where the platform has no SIGUSR1 (the others then
 * do nothing). */
int pt_sigusr1_blocked(void);
void pt_sigusr1_block(void);
void pt_sigusr1_unblock(void);

/*
 * A connected pair of stream sockets that no loop knows yet, so that each
 * of two loops can px_adopt its own end (IOCP ties a handle to one
 * completion port for good).  POSIX: an AF_UNIX socketpair; Windows: two
 * overlapped TCP sockets connected over 127.0.0.1.  Returns 0 or -1.
 */
int pt_raw_socketpair(px_fd out[2]);

/* Two UDP sockets on 127.0.0.1 connected to each other, known to no loop
 * (for px_adopt).  Returns 0 or -1. */
int pt_udp_pair(px_fd out[2]);
/* A plain blocking send() on a raw socket: bytes sent or -1. */
int pt_raw_send(px_fd fd, const void *buf, size_t len);
/* send() with MSG_OOB: len bytes, the last of them TCP's urgent byte.
 * Bytes sent or -1. */
int pt_raw_send_urgent(px_fd fd, const void *buf, size_t len);
/* On an AF_UNIX stream socket: len bytes in one message that also carries
 * a descriptor (SCM_RIGHTS, a copy of fd itself).  Bytes sent, or -1 (and
 * always -1 where there is no such message: Windows). */
int pt_raw_send_with_descriptor(px_fd fd, const void *buf, size_t len);
/* Windows: path created (or truncated) and opened for synchronous I/O
 * (no FILE_FLAG_OVERLAPPED), a handle no loop knows.  PX_INVALID_FD
 * elsewhere: POSIX descriptors have no such mode. */
px_fd pt_sync_file(const char *path);
/* Closes a handle of pt_sync_file. */
void pt_sync_file_close(px_fd fd);
/* 1 when the socket has SO_LINGER on, 0 when off, -1 on error. */
int pt_linger_on(px_fd fd);
/* Closes a raw socket no loop knows. */
void pt_raw_close(px_fd fd);

/*
 * The watchdog thread.  pt_hang_guard(s) ends the process with a message if
 * the current test runs longer than s seconds (0 disarms): a hung test must
 * not hang the suite.  pt_wake_at(loop, t) calls px_loop_wakeup(loop) from
 * the watchdog thread once pt_now_ms() >= t (and every 20 ms after), so that
 * a px_run(PX_RUN_ONCE) loop bounded by a deadline returns even when nothing
 * completes; pt_wake_cancel() stops that, and once it has returned no
 * further wakeup is sent.
 */
void pt_hang_guard(unsigned seconds);
void pt_wake_at(px_loop *loop, uint64_t deadline_ms);
void pt_wake_cancel(void);

/* ---- Fault injection. ---------------------------------------------------- */

/* Raises the soft limit on open descriptors towards want (never above the
 * hard limit).  Returns the limit in force afterwards, or want where the
 * platform has no such limit. */
unsigned pt_fd_limit_raise(unsigned want);

/* Sets the soft limit on open descriptors to want, storing the one in
 * force before in *old (for a later call to put it back).  Returns 0, or
 * -1 where the platform has no such limit (Windows) or it cannot be set. */
int pt_fd_limit_set(unsigned want, unsigned *old);
/* Opens as many descriptors (of /dev/null) as it can, up to max, closes
 * them and returns how many it got: what is left of the limit. */
unsigned pt_fd_headroom(unsigned max);

/* Asks for socket buffers of bytes each way (SO_SNDBUF, SO_RCVBUF); the
 * system raises a request below its minimum to that minimum.  The sizes in
 * force are stored in *snd and *rcv (either may be NULL).  Returns 0 or -1. */
int pt_sock_bufs(px_fd fd, int bytes, int *snd, int *rcv);

/*
 * A SIGALRM every usec microseconds (setitimer ITIMER_REAL), caught by a
 * handler installed without SA_RESTART, so that each blocking system call
 * it interrupts fails with EINTR.  The calling thread is the target: a
 * signal the kernel hands to another thread is passed on to it.  Returns 0,
 * or -1 where the platform has no SIGALRM (Windows).  pt_alarm_stop stops
 * the timer, puts the previous action back and returns how many signals
 * the target thread caught (0 and nothing done when none was started: each
 * test's teardown calls it, so a failed test leaves no timer running).
 */
int pt_alarm_start(unsigned usec);
unsigned long pt_alarm_stop(void);

/*
 * Runs fn(arg) in a child process (fork) and waits for it, so that a signal
 * that kills it does not kill the test suite; the child ends with SIGALRM
 * after 20 s (a hang).  Returns fn's result (0: success, 1..255: failure)
 * or, when a signal ended the child, minus the signal's number.  Where
 * there is no fork (Windows) fn runs in this process.  fn must not use
 * CMocka's asserts (in a child they would run the rest of the suite there).
 */
int pt_in_child(int (*fn)(void *arg), void *arg);
/* The name of a signal (for a message), or "?" */
const char *pt_signal_name(int sig);

#endif /* PX_TEST_HELPERS_H */
