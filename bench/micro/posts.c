/*
 * posts — items posted from a producer thread to a consumer loop thread,
 * per second: px_post against libuv's uv_async_send, back to back in one
 * process.
 *
 *   posts [--items N] [--rounds N] [--pool K] [--cpus C,P]
 *
 * Defaults: 10,000,000 items (a million is over in a few milliseconds
 * here, too short to measure), 5 rounds, a pool of 4096 items.  --cpus C,P
 * pins the consumer (the loop) to CPU C and the producer to CPU P
 * (pthread_setaffinity_np, which may leave the process's own mask, e.g.
 * taskset -c 0); without it the threads go where the scheduler puts them.
 * An untimed warm-up run of each, with a tenth of the items, comes first.
 *
 * Three implementations, run back to back; the first goes first in round
 * 1, the second in round 2, and so on:
 *
 * - px: the producer px_posts caller-owned ops; the callback counts the
 *   item and gives the op back.  The loop runs px_run(PX_RUN_DEFAULT),
 *   kept alive by a long px_timeout, and the last item's callback calls
 *   px_stop.
 * - libuv_lockfree: the producer pushes the item onto a lock-free stack
 *   (a compare-and-swap on its head, the structure px uses for its own
 *   posts) and calls uv_async_send; the async callback takes the whole
 *   stack with one exchange, reverses it and consumes every item.  libuv
 *   coalesces sends into one callback, so only items delivered are
 *   counted, never callbacks.  This is the strong peer: its summary comes
 *   first and is the one the goal is about.
 * - libuv_mutex: the same with a mutex-protected FIFO (what libuv's own
 *   thread pool does for its completions).
 *
 * Items are recycled the same way on every side.  px_post needs an idle op,
 * and an op is idle again as soon as its callback starts, so the consumer
 * gives each item back through a single-producer single-consumer ring of
 * free items that holds the whole pool; the producer takes from it and
 * waits only when it is empty, i.e. while all K items are in transit (the
 * consumer is behind by K), and then until 64 came back, looking at the
 * ring less often the longer it waits (see ring_take: a producer polling
 * the ring on every pause slowed the consumer it waited for).
 * That costs both sides the same and keeps
 * the memory in use small (K * 128 bytes of px_op, K * 64-byte libuv
 * items), where one op per item would stream 128 MB through the caches.
 * The pool size moves the figures: with K = 4096 the producer can run far
 * ahead and each libuv callback drains a long list; with --pool 256 the
 * hand-offs are more frequent and the lock-free peer's lead is smaller.
 * Each item carries its sequence number, and the consumer checks that
 * items arrive in posting order.
 *
 * Timing: from the producer's first post to the consumer's receipt of the
 * last item (CLOCK_MONOTONIC, both threads); CPU time is the sum of both
 * threads' getrusage(RUSAGE_THREAD) over their part (the producer's spins
 * included).  Loops, threads and pools are set up before and torn down
 * after, unmeasured.  ops= and ops_per_s= count items.  Ratio: px
 * items/s ÷ libuv items/s within the round (> 1: px faster).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <px.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

#include "micro.h"

#define CACHELINE 64

enum { IMPL_PX, IMPL_UV_LOCKFREE, IMPL_UV_MUTEX, IMPLS };
static const char *const impl_name[IMPLS] = {"px", "libuv_lockfree",
                                             "libuv_mutex"};

static uint64_t n_items = 10000000;
static uint32_t pool_size = 4096; /* a power of two */
static int cpu_consumer = -1, cpu_producer = -1;

/* ---- The free ring: consumer gives items back, producer takes. -------- */

typedef struct free_ring {
  _Alignas(CACHELINE) _Atomic uint64_t tail; /* written by the consumer */
  _Alignas(CACHELINE) _Atomic uint64_t head; /* written by the producer */
  _Alignas(CACHELINE) uint64_t tail_seen;    /* the producer's copy */
  void **slot;
} free_ring;

static free_ring fr;

static void ring_put(void *item) { /* consumer; never full */
  uint64_t t = atomic_load_explicit(&fr.tail, memory_order_relaxed);
  fr.slot[t & (pool_size - 1)] = item;
  atomic_store_explicit(&fr.tail, t + 1, memory_order_release);
}

static void spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Producer.  Once the ring is empty it waits until a batch came back
 * (RING_REFILL items, or half the pool if that is smaller), and looks at
 * the consumer's tail less and less often while it waits (1, 2, 4 ... up
 * to RING_BACKOFF_MAX pauses between looks).  Every look pulls the tail's
 * cache line over, and the consumer's next store has to take it back:
 * polling it on every pause slowed whichever consumer the producer had
 * caught up with (measured: px's runs fell into 17-24M items/s phases in
 * about half the rounds, against 65-85M in the others, once px_post got
 * cheaper than its callback; with the backoff, 13 of 15 rounds ran at
 * 63-87M and the other two were slow for the libuv peer too.  The libuv
 * peers, whose consumers are never behind, did not move). */
#define RING_REFILL 64u
#define RING_BACKOFF_MAX 256u
static void *ring_take(void) {
  uint64_t h = atomic_load_explicit(&fr.head, memory_order_relaxed);
  if (h == fr.tail_seen) {
    uint64_t want = pool_size / 2 < RING_REFILL ? pool_size / 2 : RING_REFILL;
    if (want == 0)
      want = 1;
    unsigned pauses = 1;
    for (;;) {
      for (unsigned i = 0; i < pauses; i++)
        spin_pause();
      fr.tail_seen = atomic_load_explicit(&fr.tail, memory_order_acquire);
      if (fr.tail_seen - h >= want)
        break;
      if (pauses < RING_BACKOFF_MAX)
        pauses *= 2;
    }
  }
  void *item = fr.slot[h & (pool_size - 1)];
  atomic_store_explicit(&fr.head, h + 1, memory_order_relaxed);
  return item;
}

static void ring_fill(void *base, size_t size) {
  atomic_store(&fr.head, 0);
  atomic_store(&fr.tail, pool_size);
  fr.tail_seen = pool_size;
  for (uint32_t i = 0; i < pool_size; i++)
    fr.slot[i] = (char *)base + (size_t)i * size;
}

/* ---- One run's shared state. ------------------------------------------- */

typedef struct run {
  int impl;
  atomic_int ready, go;
  micro_mark prod_a, prod_b, cons_a, cons_b;
  /* The consumer writes these on every item: a line of their own, or the
   * producer's reads of the fields beside them would pull it across. */
  _Alignas(CACHELINE) uint64_t got, bad;
  _Alignas(CACHELINE) px_loop *loop;
  uv_loop_t uvl;
  uv_async_t async;
} run;

static run R;

static void pin(int cpu) {
  if (cpu < 0)
    return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int r = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  if (r != 0)
    micro_fail("pthread_setaffinity_np", r);
}

/* Counts one item, in order; the last one ends the run. */
static bool consume(uint64_t seq) {
  R.bad += seq != R.got;
  if (++R.got < n_items)
    return false;
  R.cons_b = micro_mark_now(RUSAGE_THREAD);
  return true;
}

/* ---- px. --------------------------------------------------------------- */

static px_op *px_ops;
static px_op keepalive;

static void on_post(px_loop *l, px_op *op) {
  uint64_t seq = (uint64_t)(uintptr_t)op->data;
  ring_put(op);
  if (consume(seq))
    px_stop(l);
}

static void on_keepalive(px_loop *l, px_op *op) {
  (void)l;
  (void)op;
}

static void consumer_px(void) {
  int r = px_loop_new(&R.loop, NULL);
  if (r == 0)
    r = px_timeout(R.loop, &keepalive, 86400000, on_keepalive, NULL);
  if (r != 0)
    micro_fail("px_loop_new / px_timeout", r);
  atomic_store(&R.ready, 1);
  R.cons_a = micro_mark_now(RUSAGE_THREAD);
  r = px_run(R.loop, PX_RUN_DEFAULT);
  if (r != 1) /* stopped, with the keepalive timer still pending */
    micro_fail("px_run", r);
  r = px_loop_free(R.loop);
  if (r != 0)
    micro_fail("px_loop_free", r);
}

static void produce_px(void) {
  px_loop *loop = R.loop; /* read once: px_post is a call, R a global */
  for (uint64_t i = 0; i < n_items; i++) {
    px_op *op = ring_take();
    int r = px_post(loop, op, on_post, (void *)(uintptr_t)i);
    if (r != 0)
      micro_fail("px_post", r);
  }
}

/* ---- libuv. ------------------------------------------------------------ */

typedef struct item {
  _Alignas(CACHELINE) struct item *next;
  uint64_t seq;
} item;

static item *uv_items;
static _Atomic(item *) stack_head; /* lock-free: newest first */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static item *fifo_head, *fifo_tail; /* mutex: oldest first */

static void consume_list(item *it) {
  while (it != NULL) {
    item *next = it->next;
    uint64_t seq = it->seq;
    ring_put(it);
    if (consume(seq))
      uv_stop(&R.uvl);
    it = next;
  }
}

static void on_async(uv_async_t *a) {
  (void)a;
  item *list;
  if (R.impl == IMPL_UV_LOCKFREE) {
    item *stack =
        atomic_exchange_explicit(&stack_head, NULL, memory_order_acquire);
    list = NULL; /* newest first: reverse it */
    while (stack != NULL) {
      item *next = stack->next;
      stack->next = list;
      list = stack;
      stack = next;
    }
  } else {
    pthread_mutex_lock(&mu);
    list = fifo_head;
    fifo_head = fifo_tail = NULL;
    pthread_mutex_unlock(&mu);
  }
  consume_list(list);
}

static void consumer_uv(void) {
  int r = uv_loop_init(&R.uvl);
  if (r == 0)
    r = uv_async_init(&R.uvl, &R.async, on_async);
  if (r != 0)
    micro_fail("uv_loop_init / uv_async_init", r);
  atomic_store(&R.ready, 1);
  R.cons_a = micro_mark_now(RUSAGE_THREAD);
  uv_run(&R.uvl, UV_RUN_DEFAULT); /* until uv_stop */
  if (R.got != n_items)
    micro_fail("libuv: uv_run returned early", (int)R.got);
  uv_close((uv_handle_t *)&R.async, NULL);
  uv_run(&R.uvl, UV_RUN_DEFAULT);
  r = uv_loop_close(&R.uvl);
  if (r != 0)
    micro_fail("uv_loop_close", r);
}

static void produce_uv(void) {
  bool lockfree = R.impl == IMPL_UV_LOCKFREE;
  for (uint64_t i = 0; i < n_items; i++) {
    item *it = ring_take();
    it->seq = i;
    if (lockfree) {
      item *head = atomic_load_explicit(&stack_head, memory_order_relaxed);
      do {
        it->next = head;
      } while (!atomic_compare_exchange_weak_explicit(
          &stack_head, &head, it, memory_order_release, memory_order_relaxed));
    } else {
      it->next = NULL;
      pthread_mutex_lock(&mu);
      if (fifo_tail != NULL)
        fifo_tail->next = it;
      else
        fifo_head = it;
      fifo_tail = it;
      pthread_mutex_unlock(&mu);
    }
    int r = uv_async_send(&R.async);
    if (r != 0)
      micro_fail("uv_async_send", r);
  }
}

/* ---- Threads and rounds. ----------------------------------------------- */

static void *consumer_main(void *arg) {
  (void)arg;
  pin(cpu_consumer);
  if (R.impl == IMPL_PX)
    consumer_px();
  else
    consumer_uv();
  return NULL;
}

static void *producer_main(void *arg) {
  (void)arg;
  pin(cpu_producer);
  while (!atomic_load(&R.go))
    ;
  R.prod_a = micro_mark_now(RUSAGE_THREAD);
  if (R.impl == IMPL_PX)
    produce_px();
  else
    produce_uv();
  R.prod_b = micro_mark_now(RUSAGE_THREAD);
  return NULL;
}

static micro_span run_one(int impl) {
  memset(&R, 0, sizeof(R));
  R.impl = impl;
  if (impl == IMPL_PX) {
    for (uint32_t i = 0; i < pool_size; i++)
      px_op_init(&px_ops[i]);
    ring_fill(px_ops, sizeof(px_op));
  } else {
    ring_fill(uv_items, sizeof(item));
  }
  pthread_t cons, prod;
  if (pthread_create(&cons, NULL, consumer_main, NULL) != 0)
    micro_fail("pthread_create", 0);
  while (!atomic_load(&R.ready))
    sched_yield();
  if (pthread_create(&prod, NULL, producer_main, NULL) != 0)
    micro_fail("pthread_create", 0);
  atomic_store(&R.go, 1);
  pthread_join(prod, NULL);
  pthread_join(cons, NULL);
  if (R.got != n_items || R.bad != 0)
    micro_fail("items delivered (count or order)", (int)R.bad);
  micro_span s = micro_between(R.prod_a, R.cons_b);
  micro_span p = micro_between(R.prod_a, R.prod_b);
  micro_span c = micro_between(R.cons_a, R.cons_b);
  s.user = p.user + c.user;
  s.sys = p.sys + c.sys;
  return s;
}

static void parse_cpus(const char *arg) {
  if (arg == NULL || sscanf(arg, "%d,%d", &cpu_consumer, &cpu_producer) != 2 ||
      cpu_consumer < 0 || cpu_producer < 0 || cpu_consumer >= CPU_SETSIZE ||
      cpu_producer >= CPU_SETSIZE) {
    fprintf(stderr, "--cpus: expected CONSUMER,PRODUCER (e.g. 0,1)\n");
    exit(2);
  }
}

static void setup(void) {
  if ((pool_size & (pool_size - 1)) != 0)
    micro_fail("--pool: not a power of two", (int)pool_size);
  fr.slot = calloc(pool_size, sizeof(*fr.slot));
  px_ops = aligned_alloc(CACHELINE, (size_t)pool_size * sizeof(px_op));
  uv_items = aligned_alloc(CACHELINE, (size_t)pool_size * sizeof(item));
  if (fr.slot == NULL || px_ops == NULL || uv_items == NULL)
    micro_fail("allocating the pools", 0);
  memset(uv_items, 0, (size_t)pool_size * sizeof(item));
}

int main(int argc, char **argv) {
  unsigned rounds = 5;
  for (int i = 1; i < argc; i += 2) {
    const char *arg = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(argv[i], "--items") == 0)
      n_items = micro_count("--items", arg, 1, UINT64_MAX / 2);
    else if (strcmp(argv[i], "--rounds") == 0)
      rounds = (unsigned)micro_count("--rounds", arg, 1, 1000);
    else if (strcmp(argv[i], "--pool") == 0)
      pool_size = (uint32_t)micro_count("--pool", arg, 1, 1u << 24);
    else if (strcmp(argv[i], "--cpus") == 0)
      parse_cpus(arg);
    else {
      fprintf(stderr, "usage: posts [--items N] [--rounds N] [--pool K] "
                      "[--cpus CONSUMER,PRODUCER]\n");
      return 2;
    }
  }
  setup();
  uint64_t n = n_items; /* warm-up with a tenth, not printed */
  n_items = n / 10 > 0 ? n / 10 : 1;
  for (int impl = 0; impl < IMPLS; impl++)
    run_one(impl);
  n_items = n;
  double *ratio = calloc((size_t)rounds * (IMPLS - 1), sizeof(*ratio));
  if (ratio == NULL)
    micro_fail("calloc", 0);
  for (unsigned round = 1; round <= rounds; round++) {
    micro_span s[IMPLS];
    for (int k = 0; k < IMPLS; k++) {
      int impl = (int)((round - 1 + (unsigned)k) % IMPLS);
      s[impl] = run_one(impl);
    }
    for (int impl = 0; impl < IMPLS; impl++)
      micro_line("posts", impl_name[impl], "", round, n_items, s[impl], "");
    for (int peer = 1; peer < IMPLS; peer++)
      ratio[(peer - 1) * rounds + round - 1] = s[peer].seconds / s[0].seconds;
  }
  for (int peer = 1; peer < IMPLS; peer++)
    micro_summary("posts", "", "px", impl_name[peer],
                  "px_ops_per_s/peer_ops_per_s", &ratio[(peer - 1) * rounds],
                  rounds);
  free(ratio);
  return 0;
}
