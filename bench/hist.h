/* A latency histogram shared by the bench programs: log-linear, 64
 * sub-buckets per power of two (at most 1.6% error), fixed size, no
 * allocation per sample. */
#ifndef PX_BENCH_HIST_H
#define PX_BENCH_HIST_H

#include <stdint.h>

#define HIST_SUB_BITS 6
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS (HIST_SUB * (64 - HIST_SUB_BITS + 1))

typedef struct hist {
  uint64_t count[HIST_BUCKETS];
  uint64_t total, max;
  uint64_t sum; /* of the samples, for the mean */
} hist;

static inline unsigned hist_index(uint64_t v) {
  if (v < HIST_SUB)
    return (unsigned)v;
  unsigned msb = 0;
  for (uint64_t x = v; x >>= 1;)
    msb++;
  unsigned shift = msb - HIST_SUB_BITS;
  return HIST_SUB + shift * HIST_SUB + (unsigned)((v >> shift) - HIST_SUB);
}

/* The middle of bucket i, the value reported for samples in it. */
static inline uint64_t hist_value(unsigned i) {
  if (i < HIST_SUB)
    return i;
  unsigned shift = (i - HIST_SUB) / HIST_SUB;
  uint64_t low = (uint64_t)(HIST_SUB + (i - HIST_SUB) % HIST_SUB) << shift;
  return low + (((uint64_t)1 << shift) >> 1);
}

static inline void hist_add(hist *h, uint64_t v) {
  h->count[hist_index(v)]++;
  h->total++;
  h->sum += v;
  if (v > h->max)
    h->max = v;
}

static inline void hist_merge(hist *into, const hist *h) {
  for (unsigned i = 0; i < HIST_BUCKETS; i++)
    into->count[i] += h->count[i];
  into->total += h->total;
  into->sum += h->sum;
  if (h->max > into->max)
    into->max = h->max;
}

static inline uint64_t hist_percentile(const hist *h, double p) {
  if (h->total == 0)
    return 0;
  uint64_t rank = (uint64_t)(p * (double)h->total + 0.5), seen = 0;
  if (rank < 1)
    rank = 1;
  for (unsigned i = 0; i < HIST_BUCKETS; i++) {
    seen += h->count[i];
    if (seen >= rank)
      return hist_value(i) < h->max ? hist_value(i) : h->max;
  }
  return h->max;
}

#endif
