/*
 * timers — one million timers started then cancelled: px against libuv,
 * back to back in one process, measured in CPU time.
 *
 *   timers [--timers N] [--rounds N]
 *
 * Defaults: 1,000,000 timers, 5 rounds.  Timer i runs for ms[i], spread
 * pseudo-randomly over 1..1,000,000 ms (the same sequence for both, so
 * both heaps see the same order); they are cancelled in the order they
 * were started, i.e. from random heap positions.  No timer expires: the
 * cancels come first.
 *
 * px: px_timeout for each, then px_cancel for each (px has no "stop"
 * call: a cancel is an op of its own, so each timer comes with a cancel op
 * beside it, like a connection struct holding its ops), then
 * px_run(PX_RUN_DEFAULT), which runs the 2N callbacks (each timer with
 * PX_ECANCELED, each cancel with 0) and returns when nothing is in flight.
 * libuv: uv_timer_start for each, uv_timer_stop for each, then uv_close on
 * each and uv_run(UV_RUN_DEFAULT) to finish the closes.
 *
 * Fairness: the memory of both is allocated and touched once, up front and
 * outside the measured part (N px_op pairs: 256 bytes a timer; N
 * uv_timer_t), and so is uv_timer_init, libuv's counterpart of zeroing an
 * op (px_op_init).  Each round re-inits the handles, unmeasured.  The px
 * loop and the libuv loop live for the whole program, and an untimed
 * warm-up run of each comes first: px's timer heap is an array of op
 * pointers that grows by doubling (px__heap_push), so the first million
 * timers reallocate it up to 8 MiB once; later runs reuse it.  libuv's heap
 * is intrusive (the node sits in uv_timer_t) and never allocates.  Both
 * allocators are counted (px_replace_allocator, uv_replace_allocator):
 * allocs= in each line is the number of allocation calls in the measured
 * part (0 expected on both sides).
 *
 * Each line also splits the CPU time into start, cancel (px_cancel /
 * uv_timer_stop) and finish (px_run / uv_close + uv_run).  CPU time is
 * getrusage(RUSAGE_THREAD).  Ratio: libuv CPU seconds ÷ px CPU seconds
 * (user + sys) within the round (> 1: px cheaper).
 */
#define _GNU_SOURCE
#include <px.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "micro.h"

/* ---- Counting allocators. ---------------------------------------------- */

static uint64_t allocs;

static void *count_malloc(size_t n) {
  allocs++;
  return malloc(n);
}

static void *count_realloc(void *p, size_t n) {
  allocs++;
  return realloc(p, n);
}

static void *count_calloc(size_t n, size_t size) {
  allocs++;
  return calloc(n, size);
}

static uint32_t *ms; /* each timer's duration */
static uint64_t n_timers = 1000000;

/* ---- px. --------------------------------------------------------------- */

typedef struct px_timer {
  px_op timer, cancel;
} px_timer;

static px_loop *loop;
static px_timer *pt;
static uint64_t px_cancelled, px_cancels_ok, px_bad;

static void on_px_timer(px_loop *l, px_op *op) {
  (void)l;
  if (op->result == PX_ECANCELED)
    px_cancelled++;
  else
    px_bad++;
}

static void on_px_cancel(px_loop *l, px_op *op) {
  (void)l;
  if (op->result == 0)
    px_cancels_ok++;
  else
    px_bad++;
}

/* Phase CPU times: start, cancel, finish. */
typedef struct phases {
  micro_span all;
  double start, cancel, finish;
  uint64_t allocs;
} phases;

static phases run_px(void) {
  px_cancelled = px_cancels_ok = px_bad = 0;
  for (uint64_t i = 0; i < n_timers; i++) {
    px_op_init(&pt[i].timer);
    px_op_init(&pt[i].cancel);
  }
  uint64_t allocs0 = allocs;
  micro_mark a = micro_mark_now(RUSAGE_THREAD);
  for (uint64_t i = 0; i < n_timers; i++) {
    int r = px_timeout(loop, &pt[i].timer, ms[i], on_px_timer, NULL);
    if (r != 0)
      micro_fail("px_timeout", r);
  }
  micro_mark b = micro_mark_now(RUSAGE_THREAD);
  for (uint64_t i = 0; i < n_timers; i++) {
    int r = px_cancel(loop, &pt[i].cancel, &pt[i].timer, on_px_cancel, NULL);
    if (r != 0)
      micro_fail("px_cancel", r);
  }
  micro_mark c = micro_mark_now(RUSAGE_THREAD);
  int r = px_run(loop, PX_RUN_DEFAULT);
  micro_mark d = micro_mark_now(RUSAGE_THREAD);
  if (r != 0)
    micro_fail("px_run", r);
  if (px_cancelled != n_timers || px_cancels_ok != n_timers || px_bad != 0)
    micro_fail("px: callbacks (count or result)", (int)px_bad);
  return (phases){micro_between(a, d), micro_cpu(micro_between(a, b)),
                  micro_cpu(micro_between(b, c)),
                  micro_cpu(micro_between(c, d)), allocs - allocs0};
}

/* ---- libuv. ------------------------------------------------------------ */

static uv_loop_t uvl;
static uv_timer_t *ut;
static uint64_t uv_closed;

static void on_uv_timer(uv_timer_t *t) {
  (void)t;
  micro_fail("libuv: a timer fired", 0);
}

static void on_uv_close(uv_handle_t *h) {
  (void)h;
  uv_closed++;
}

static phases run_uv(void) {
  uv_closed = 0;
  for (uint64_t i = 0; i < n_timers; i++)
    uv_timer_init(&uvl, &ut[i]);
  uint64_t allocs0 = allocs;
  micro_mark a = micro_mark_now(RUSAGE_THREAD);
  for (uint64_t i = 0; i < n_timers; i++) {
    int r = uv_timer_start(&ut[i], on_uv_timer, ms[i], 0);
    if (r != 0)
      micro_fail("uv_timer_start", r);
  }
  micro_mark b = micro_mark_now(RUSAGE_THREAD);
  for (uint64_t i = 0; i < n_timers; i++)
    uv_timer_stop(&ut[i]);
  micro_mark c = micro_mark_now(RUSAGE_THREAD);
  for (uint64_t i = 0; i < n_timers; i++)
    uv_close((uv_handle_t *)&ut[i], on_uv_close);
  int r = uv_run(&uvl, UV_RUN_DEFAULT);
  micro_mark d = micro_mark_now(RUSAGE_THREAD);
  if (r != 0 || uv_closed != n_timers)
    micro_fail("libuv: uv_run or close callbacks", r);
  return (phases){micro_between(a, d), micro_cpu(micro_between(a, b)),
                  micro_cpu(micro_between(b, c)),
                  micro_cpu(micro_between(c, d)), allocs - allocs0};
}

/* ---- Rounds. ----------------------------------------------------------- */

static void print(const char *impl, unsigned round, phases p) {
  char tail[160];
  snprintf(tail, sizeof(tail),
           " cpu_s=%.4f start_cpu_s=%.4f cancel_cpu_s=%.4f "
           "finish_cpu_s=%.4f allocs=%llu",
           micro_cpu(p.all), p.start, p.cancel, p.finish,
           (unsigned long long)p.allocs);
  micro_line("timers", impl, "", round, n_timers, p.all, tail);
}

static void setup(void) {
  if (px_replace_allocator(count_malloc, count_realloc, free) != 0 ||
      uv_replace_allocator(count_malloc, count_realloc, count_calloc, free) !=
          0)
    micro_fail("replacing the allocators", 0);
  int r = px_loop_new(&loop, NULL);
  if (r != 0)
    micro_fail("px_loop_new", r);
  r = uv_loop_init(&uvl);
  if (r != 0)
    micro_fail("uv_loop_init", r);
  ms = malloc(n_timers * sizeof(*ms));
  pt = malloc(n_timers * sizeof(*pt));
  ut = malloc(n_timers * sizeof(*ut));
  if (ms == NULL || pt == NULL || ut == NULL)
    micro_fail("malloc", 0);
  memset(ut, 0, n_timers * sizeof(*ut)); /* touch it now, not in a run */
  uint64_t x = 0x9E3779B97F4A7C15ull;    /* xorshift64 */
  for (uint64_t i = 0; i < n_timers; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    ms[i] = (uint32_t)(1 + x % 1000000);
  }
}

int main(int argc, char **argv) {
  unsigned rounds = 5;
  for (int i = 1; i < argc; i += 2) {
    const char *arg = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(argv[i], "--timers") == 0)
      n_timers = micro_count("--timers", arg, 1, 100000000);
    else if (strcmp(argv[i], "--rounds") == 0)
      rounds = (unsigned)micro_count("--rounds", arg, 1, 1000);
    else {
      fprintf(stderr, "usage: timers [--timers N] [--rounds N]\n");
      return 2;
    }
  }
  setup();
  run_px(); /* warm-up, not printed */
  run_uv();
  double *ratio = calloc(rounds, sizeof(*ratio));
  if (ratio == NULL)
    micro_fail("calloc", 0);
  for (unsigned round = 1; round <= rounds; round++) {
    phases px, uv;
    if (round % 2 == 1) {
      px = run_px();
      uv = run_uv();
    } else {
      uv = run_uv();
      px = run_px();
    }
    print("px", round, px);
    print("libuv", round, uv);
    ratio[round - 1] = micro_cpu(uv.all) / micro_cpu(px.all);
  }
  micro_summary("timers", "", "px", "libuv", "peer_cpu_s/px_cpu_s", ratio,
                rounds);
  free(ratio);
  uv_loop_close(&uvl);
  return px_loop_free(loop) == 0 ? 0 : 1;
}
