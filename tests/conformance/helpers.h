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

/* Pacing for helper threads only (never used to wait for a result). */
void pt_sleep_ms(unsigned ms);

typedef struct pt_thread pt_thread;
typedef void (*pt_thread_fn)(void *arg);
/* Returns 0, or -1 if the thread could not be started. */
int pt_thread_start(pt_thread **out, pt_thread_fn fn, void *arg);
void pt_thread_join(pt_thread *t);

/* Writes "<TMPDIR or /tmp>/px-test-<pid>-<n>-<tag>" into buf. */
int pt_temp_path(char *buf, size_t size, const char *tag);

/* Puts SIGPIPE back to its default action (where the platform has it), so a
 * test shows that px itself keeps the process alive. */
void pt_sigpipe_default(void);

/* Counts SIGPIPE deliveries instead of dying of them, so a test can report
 * that px let one through and the suite goes on; stop restores the default
 * action and returns the count (always 0 where there is no SIGPIPE). */
void pt_sigpipe_count_start(void);
int pt_sigpipe_count_stop(void);

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

#endif /* PX_TEST_HELPERS_H */
