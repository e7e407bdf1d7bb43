/*
 * nop — NOP completions per second: px_nop on the uring backend against
 * raw liburing, back to back in one process.
 *
 *   nop [--ops N] [--rounds N] [--batch B[,B...]]
 *
 * Defaults: 4,000,000 ops per run, 5 rounds, batches 1 and 32.  Each round
 * runs, for every batch size, each implementation over the same op count
 * (rounded down to a multiple of the batch), back to back; which one goes
 * first rotates from round to round.  An untimed warm-up run of each comes
 * before the first round.  Every run keeps `batch` NOPs in flight, and
 * every kernel entry submits `batch` and reaps `batch`:
 *
 * - px: the proactor's idiom.  `batch` px_nop ops are submitted, then one
 *   px_run(PX_RUN_DEFAULT) runs the whole count: each callback counts its
 *   completion, checks the result and submits its op again while ops are
 *   left.  Each loop iteration's one io_uring_enter submits the batch the
 *   callbacks refilled and waits.  This is px's best honest number.
 * - px_run_per_batch: the literal loop: submit `batch` px_nop ops whose
 *   callbacks count, px_run(PX_RUN_DEFAULT) until they completed, repeat.
 *   (PX_RUN_ONCE takes the same path and measured the same.)  It pays
 *   px_run's entry and exit per batch, two clock reads among them.
 * - liburing: what a competent liburing user writes: `batch` times
 *   io_uring_get_sqe + io_uring_prep_nop, io_uring_submit_and_wait(batch),
 *   then io_uring_for_each_cqe (counting and checking res) and one
 *   io_uring_cq_advance.  The ring has px's flags (SINGLE_ISSUER |
 *   DEFER_TASKRUN | SUBMIT_ALL, falling back to COOP_TASKRUN, then none)
 *   and px's default size (256 entries).  It is created on the thread that
 *   uses it, so it needs no R_DISABLED.
 *
 * The px ops are caller-owned and reused; px allocates nothing per op.  All
 * run on the calling thread; CPU time is getrusage(RUSAGE_THREAD).  Ratio:
 * px ops/s ÷ liburing ops/s within the round (> 1: px faster); the summary
 * gives the median over the rounds, per batch size, for each px style (the
 * idiom first).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <px.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "micro.h"

#define ENTRIES 256
#define MAX_BATCHES 8

enum { IMPL_PX, IMPL_PX_RUN_PER_BATCH, IMPL_URING, IMPLS };
static const char *const impl_name[IMPLS] = {"px", "px_run_per_batch",
                                             "liburing"};

/* ---- px. --------------------------------------------------------------- */

static px_loop *loop;
static px_op ops[ENTRIES];
static uint64_t px_done, px_bad, px_left;

static void on_nop(px_loop *l, px_op *op) {
  (void)l;
  px_done++;
  px_bad += op->result != 0;
}

/* The callback starts the op again while the run has ops left. */
static void on_nop_again(px_loop *l, px_op *op) {
  on_nop(l, op);
  if (px_left > 0) {
    px_left--;
    px_bad += px_nop(l, op, on_nop_again, NULL) != 0;
  }
}

static void px_submit(unsigned batch, px_cb cb) {
  for (unsigned i = 0; i < batch; i++) {
    int r = px_nop(loop, &ops[i], cb, NULL);
    if (r != 0)
      micro_fail("px_nop", r);
  }
}

static micro_span run_px(int impl, uint64_t total, unsigned batch) {
  px_done = px_bad = 0;
  micro_mark a = micro_mark_now(RUSAGE_THREAD);
  if (impl == IMPL_PX) {
    px_left = total - batch;
    px_submit(batch, on_nop_again);
    int r = px_run(loop, PX_RUN_DEFAULT);
    if (r != 0)
      micro_fail("px_run", r);
  } else {
    for (uint64_t n = 0; n < total; n += batch) {
      px_submit(batch, on_nop);
      int r = px_run(loop, PX_RUN_DEFAULT);
      if (r != 0)
        micro_fail("px_run", r);
    }
  }
  micro_mark b = micro_mark_now(RUSAGE_THREAD);
  if (px_done != total || px_bad != 0)
    micro_fail("px: completions (count or result)", (int)px_bad);
  return micro_between(a, b);
}

/* ---- liburing. --------------------------------------------------------- */

static struct io_uring ring;

static void ring_init(void) {
  static const unsigned tries[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
          IORING_SETUP_SUBMIT_ALL,
      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
      0,
  };
  int r = -EINVAL;
  for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]) && r == -EINVAL;
       i++) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = tries[i];
    r = io_uring_queue_init_params(ENTRIES, &ring, &p);
  }
  if (r < 0)
    micro_fail("io_uring_queue_init_params", r);
}

static micro_span run_uring(uint64_t total, unsigned batch) {
  uint64_t done = 0, bad = 0;
  micro_mark a = micro_mark_now(RUSAGE_THREAD);
  for (uint64_t n = 0; n < total; n += batch) {
    for (unsigned i = 0; i < batch; i++) {
      struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data64(sqe, i);
    }
    int r = io_uring_submit_and_wait(&ring, batch);
    if (r < 0)
      micro_fail("io_uring_submit_and_wait", r);
    unsigned head, seen = 0;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&ring, head, cqe) {
      bad += cqe->res != 0;
      seen++;
    }
    io_uring_cq_advance(&ring, seen);
    done += seen;
  }
  micro_mark b = micro_mark_now(RUSAGE_THREAD);
  if (done != total || bad != 0)
    micro_fail("liburing: completions (count or result)", (int)bad);
  return micro_between(a, b);
}

/* ---- Rounds. ----------------------------------------------------------- */

static micro_span run_one(int impl, uint64_t total, unsigned batch) {
  return impl == IMPL_URING ? run_uring(total, batch)
                            : run_px(impl, total, batch);
}

static unsigned parse_batches(const char *arg, unsigned *out) {
  unsigned n = 0;
  char *copy = strdup(arg), *save = NULL;
  for (char *t = strtok_r(copy, ",", &save); t != NULL;
       t = strtok_r(NULL, ",", &save)) {
    if (n == MAX_BATCHES)
      micro_fail("--batch: too many sizes", MAX_BATCHES);
    out[n++] = (unsigned)micro_count("--batch", t, 1, ENTRIES);
  }
  free(copy);
  return n;
}

int main(int argc, char **argv) {
  uint64_t ops_total = 4000000;
  unsigned rounds = 5, batches[MAX_BATCHES] = {1, 32}, nbatch = 2;
  for (int i = 1; i < argc; i += 2) {
    const char *arg = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(argv[i], "--ops") == 0)
      ops_total = micro_count("--ops", arg, 1, UINT64_MAX / 2);
    else if (strcmp(argv[i], "--rounds") == 0)
      rounds = (unsigned)micro_count("--rounds", arg, 1, 1000);
    else if (strcmp(argv[i], "--batch") == 0 && arg != NULL)
      nbatch = parse_batches(arg, batches);
    else {
      fprintf(stderr, "usage: nop [--ops N] [--rounds N] [--batch B,...]\n");
      return 2;
    }
  }
  px_loop_opts opts = {.entries = ENTRIES};
  int r = px_loop_new(&loop, &opts);
  if (r != 0)
    micro_fail("px_loop_new", r);
  ring_init();

  double *ratio = calloc((size_t)nbatch * rounds * 2, sizeof(*ratio));
  if (ratio == NULL)
    micro_fail("calloc", 0);
  for (unsigned b = 0; b < nbatch; b++) { /* warm-up, not printed */
    uint64_t warm = ops_total / 10 / batches[b] * batches[b];
    for (int impl = 0; impl < IMPLS && warm > 0; impl++)
      run_one(impl, warm, batches[b]);
  }
  for (unsigned round = 1; round <= rounds; round++) {
    for (unsigned b = 0; b < nbatch; b++) {
      unsigned batch = batches[b];
      uint64_t total = ops_total / batch * batch;
      if (total == 0)
        micro_fail("--ops smaller than --batch", 0);
      micro_span s[IMPLS];
      for (int k = 0; k < IMPLS; k++) {
        int impl = (int)((round - 1 + (unsigned)k) % IMPLS);
        s[impl] = run_one(impl, total, batch);
      }
      char mid[32];
      snprintf(mid, sizeof(mid), "batch=%u ", batch);
      for (int impl = 0; impl < IMPLS; impl++)
        micro_line("nop", impl_name[impl], mid, round, total, s[impl], "");
      for (int i = 0; i < 2; i++)
        ratio[(b * 2 + i) * rounds + round - 1] =
            s[IMPL_URING].seconds / s[i].seconds;
    }
  }
  for (unsigned b = 0; b < nbatch; b++) {
    char mid[64];
    for (int i = 0; i < 2; i++) {
      snprintf(mid, sizeof(mid), "batch=%u ", batches[b]);
      micro_summary("nop", mid, impl_name[i], "liburing",
                    "px_ops_per_s/peer_ops_per_s", &ratio[(b * 2 + i) * rounds],
                    rounds);
    }
  }
  free(ratio);
  io_uring_queue_exit(&ring);
  return px_loop_free(loop) == 0 ? 0 : 1;
}
