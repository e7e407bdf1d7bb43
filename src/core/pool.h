/*
 * Pools inside px: what the core, the backends and the acceptor share.
 *
 * A buffer is in one of three places: the free stack (px_buf_get takes it),
 * lent to the backend (io_uring's provided-buffer ring holds it for the
 * kernel), or out (the program holds it, or a pooled receive's delivery
 * still waits for its callback).  Its tag byte says which.
 */
#ifndef PX_CORE_POOL_H
#define PX_CORE_POOL_H

#include <stdbool.h>

#include "px.h"

/* What both pools are: a slab of equal slots, a zeroed tag per slot (its
 * state), the free-index stack and the counters. */
typedef struct px__slots {
  unsigned char *slab; /* capacity * stride bytes */
  void *tags;          /* capacity * tag_size bytes */
  uint32_t *free_;     /* indices of free slots, top at nfree - 1 */
  size_t stride;
  uint32_t nfree, capacity, high_water;
  uint64_t exhausted;
} px__slots;

enum { PX__BUF_FREE = 0, PX__BUF_OUT = 1, PX__BUF_LENT = 2 };

struct px_bufpool {
  px_loop *loop; /* NULL once the loop is gone */
  uint32_t size;
  uint8_t shift;   /* log2(size) when size is a power of two */
  uint32_t lent;   /* tagged PX__BUF_LENT */
  uint32_t ops;    /* pooled receives accepted and not yet completed */
  px__slots slots; /* tags: a byte per buffer, PX__BUF_* */
  /* Deliveries of a multishot receive waiting for their callback, chained
   * through the buffers that hold them. */
  uint32_t *dlen, *dnext;
  void *bk;                /* the backend's state for this pool */
  px_bufpool *prev, *next; /* the loop's pools */
};

struct px_connpool {
  size_t obj_size;
  px__slots slots; /* tags: a uint32_t generation per slot */
  /* The acceptor of this pool, told of each release. */
  void (*on_release)(void *ctx);
  void *ctx;
};

/* For backends: a free buffer, tagged out (counted as exhaustion when
 * there is none): its index, or UINT32_MAX. */
uint32_t px__buf_take(px_bufpool *p);
/* A buffer taken with px__buf_take and not delivered goes back. */
void px__buf_put(px_bufpool *p, uint32_t i);
/* Lending: a free buffer becomes the backend's (index or UINT32_MAX, not
 * counted as exhaustion), and a lent one comes back, out or free. */
uint32_t px__buf_lend(px_bufpool *p);
/* false when i is not a lent buffer of p. */
bool px__buf_unlend(px_bufpool *p, uint32_t i, bool out);
/* A buffer tagged out becomes lent (backend->buf_returned). */
void px__buf_keep(px_bufpool *p, uint32_t i);
static inline void *px__buf_at(const px_bufpool *p, uint32_t i) {
  return p->slots.slab + (size_t)i * p->size;
}
/* A pooled receive found the pool empty (the kernel said ENOBUFS). */
static inline void px__buf_exhausted(px_bufpool *p) {
  p->slots.exhausted++;
}
/* The index of a buffer of p, or UINT32_MAX for any other pointer.  Every
 * released or delivered buffer is looked up: a shift where the size allows
 * (a 64-bit division costs tens of cycles). */
static inline uint32_t px__buf_index(const px_bufpool *p, const void *buf) {
  uintptr_t base = (uintptr_t)p->slots.slab, at = (uintptr_t)buf;
  if (buf == NULL || at < base)
    return UINT32_MAX;
  uintptr_t d = at - base;
  bool pow2 = (p->size & (p->size - 1)) == 0;
  uintptr_t i = pow2 ? d >> p->shift : d / p->size;
  uintptr_t rem = pow2 ? d & (p->size - 1) : d % p->size;
  return rem != 0 || i >= p->slots.capacity ? UINT32_MAX : (uint32_t)i;
}

/* loop.c: the loop lets go of its pools (px_loop_free). */
void px__pools_detach(px_loop *loop);

#endif
