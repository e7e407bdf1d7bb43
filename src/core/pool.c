/*
 * Buffer and connection pools: fixed slabs made once, a stack of free
 * indices, O(1) get and release, nothing allocated after creation.  Each
 * slot has a state word, so a release of something that is not handed out
 * is refused instead of corrupting the free stack.
 */
#include <string.h>

#include "internal.h"

static void px__slots_release(px__slots *s) {
  px__free(s->slab);
  px__free(s->tags);
  px__free(s->free_);
}

static int px__slots_init(px__slots *s, uint32_t capacity, size_t stride,
                          size_t tag_size) {
  s->slab = px__malloc(capacity * stride);
  s->tags = px__calloc(capacity, tag_size);
  s->free_ = px__malloc((size_t)capacity * sizeof(*s->free_));
  if (s->slab == NULL || s->tags == NULL || s->free_ == NULL) {
    px__slots_release(s);
    return PX_ENOMEM;
  }
  for (uint32_t i = 0; i < capacity; i++)
    s->free_[i] = capacity - 1 - i; /* slot 0 comes out first */
  s->stride = stride;
  s->nfree = s->capacity = capacity;
  return 0;
}

/* PX_EBUSY while slots are handed out. */
static int px__slots_free(px__slots *s) {
  if (s->nfree != s->capacity)
    return PX_EBUSY;
  px__slots_release(s);
  return 0;
}

/* A free slot's index, or UINT32_MAX when none is left. */
static uint32_t px__slots_take(px__slots *s) {
  if (s->nfree == 0) {
    s->exhausted++;
    return UINT32_MAX;
  }
  return s->free_[--s->nfree];
}

/* Something more is handed out: in_use of them now. */
static void px__slots_mark(px__slots *s, uint32_t in_use) {
  if (in_use > s->high_water)
    s->high_water = in_use;
}

static void px__slots_put(px__slots *s, uint32_t i) {
  s->free_[s->nfree++] = i;
}

static void px__slots_stats(const px__slots *s, uint32_t lent,
                            px_pool_stats *out) {
  out->capacity = s->capacity;
  out->in_use = s->capacity - s->nfree - lent;
  out->high_water = s->high_water;
  out->lent = lent;
  out->exhausted = s->exhausted;
}

/* ---- Buffers. ---------------------------------------------------------- */

static uint32_t px__buf_out(const px_bufpool *p) {
  return p->slots.capacity - p->slots.nfree - p->lent;
}

int px_bufpool_new(px_loop *loop, uint32_t count, uint32_t size,
                   px_bufpool **out) {
  if (out != NULL)
    *out = NULL;
  if (loop == NULL || out == NULL || count == 0 || count > 32768 || size == 0 ||
      (uint64_t)count * size > ((uint64_t)1 << 40))
    return PX_EINVAL;
  px_bufpool *p = px__calloc(1, sizeof(*p));
  if (p == NULL)
    return PX_ENOMEM;
  p->size = size;
  while ((size & (size - 1)) == 0 && ((uint32_t)1 << p->shift) < size)
    p->shift++; /* log2(size), for px__buf_index */
  p->dlen = px__malloc((size_t)count * sizeof(*p->dlen));
  p->dnext = px__malloc((size_t)count * sizeof(*p->dnext));
  if (p->dlen == NULL || p->dnext == NULL ||
      px__slots_init(&p->slots, count, size, 1) < 0) {
    px__free(p->dlen);
    px__free(p->dnext);
    px__free(p);
    return PX_ENOMEM;
  }
  p->loop = loop;
  p->next = loop->pools;
  if (p->next != NULL)
    p->next->prev = p;
  loop->pools = p;
  *out = p;
  return 0;
}

/* The loop lets go of p: the backend's part goes, lent buffers are free. */
static void px__pool_detach(px_bufpool *p) {
  px_loop *loop = p->loop;
  if (loop == NULL)
    return;
  if (PX__BK(loop)->pool_release != NULL)
    PX__BK(loop)->pool_release(loop, p);
  uint8_t *tag = p->slots.tags;
  for (uint32_t i = 0; p->lent > 0 && i < p->slots.capacity; i++)
    if (tag[i] == PX__BUF_LENT) {
      tag[i] = PX__BUF_FREE;
      p->lent--;
      px__slots_put(&p->slots, i);
    }
  if (p->prev != NULL)
    p->prev->next = p->next;
  else
    loop->pools = p->next;
  if (p->next != NULL)
    p->next->prev = p->prev;
  p->prev = p->next = NULL;
  p->loop = NULL;
}

void px__pools_detach(px_loop *loop) {
  while (loop->pools != NULL)
    px__pool_detach(loop->pools);
}

int px_bufpool_free(px_bufpool *pool) {
  if (pool == NULL)
    return PX_EINVAL;
  if (px__buf_out(pool) > 0 || pool->ops > 0)
    return PX_EBUSY;
  px__pool_detach(pool);
  px__slots_free(&pool->slots);
  px__free(pool->dlen);
  px__free(pool->dnext);
  px__free(pool);
  return 0;
}

uint32_t px_bufpool_size(const px_bufpool *pool) {
  return pool != NULL ? pool->size : 0;
}

uint32_t px__buf_take(px_bufpool *p) {
  uint32_t i = px__slots_take(&p->slots);
  if (i == UINT32_MAX)
    return i;
  ((uint8_t *)p->slots.tags)[i] = PX__BUF_OUT;
  px__slots_mark(&p->slots, px__buf_out(p));
  return i;
}

void px__buf_put(px_bufpool *p, uint32_t i) {
  ((uint8_t *)p->slots.tags)[i] = PX__BUF_FREE;
  px__slots_put(&p->slots, i);
}

uint32_t px__buf_lend(px_bufpool *p) {
  if (p->slots.nfree == 0)
    return UINT32_MAX;
  uint32_t i = p->slots.free_[--p->slots.nfree];
  ((uint8_t *)p->slots.tags)[i] = PX__BUF_LENT;
  p->lent++;
  return i;
}

bool px__buf_unlend(px_bufpool *p, uint32_t i, bool out) {
  uint8_t *tag = p->slots.tags;
  if (i >= p->slots.capacity || tag[i] != PX__BUF_LENT)
    return false;
  p->lent--;
  if (out) {
    tag[i] = PX__BUF_OUT;
    px__slots_mark(&p->slots, px__buf_out(p));
  } else {
    px__buf_put(p, i);
  }
  return true;
}

void px__buf_keep(px_bufpool *p, uint32_t i) {
  ((uint8_t *)p->slots.tags)[i] = PX__BUF_LENT;
  p->lent++;
}

void *px_buf_get(px_bufpool *pool) {
  if (pool == NULL)
    return NULL;
  uint32_t i = px__buf_take(pool);
  return i == UINT32_MAX ? NULL : px__buf_at(pool, i);
}

int px_buf_release(px_bufpool *pool, void *buf) {
  if (pool == NULL)
    return PX_EINVAL;
  uint32_t i = px__buf_index(pool, buf);
  if (i == UINT32_MAX || ((uint8_t *)pool->slots.tags)[i] != PX__BUF_OUT)
    return PX_EINVAL;
  px_loop *loop = pool->loop;
  if (loop != NULL && PX__BK(loop)->buf_returned != NULL &&
      PX__BK(loop)->buf_returned(loop, pool, i))
    return 0;
  px__buf_put(pool, i);
  return 0;
}

void px_bufpool_stats(const px_bufpool *pool, px_pool_stats *out) {
  if (pool != NULL && out != NULL)
    px__slots_stats(&pool->slots, pool->lent, out);
}

/* ---- Connections. ------------------------------------------------------ */

/* A slot's generation is odd while handed out, even while free: an id
 * names one handing-out of one slot, and stays stale for good after it
 * (until the 32-bit generation wraps, 2^31 reuses of that slot later). */

static uint32_t *px__gen(const px_connpool *pool) {
  return pool->slots.tags;
}

int px_connpool_new(uint32_t capacity, size_t obj_size, px_connpool **out) {
  if (out != NULL)
    *out = NULL;
  if (out == NULL || capacity == 0 || capacity > (1u << 24) || obj_size == 0 ||
      obj_size > ((size_t)1 << 24))
    return PX_EINVAL;
  px_connpool *p = px__calloc(1, sizeof(*p));
  if (p == NULL)
    return PX_ENOMEM;
  p->obj_size = obj_size;
  size_t stride = (obj_size + 15) & ~(size_t)15; /* max_align_t, usually */
  if (px__slots_init(&p->slots, capacity, stride, sizeof(uint32_t)) < 0) {
    px__free(p);
    return PX_ENOMEM;
  }
  *out = p;
  return 0;
}

int px_connpool_free(px_connpool *pool) {
  if (pool == NULL)
    return PX_EINVAL;
  if (pool->on_release != NULL)
    return PX_EBUSY; /* its acceptor is still running */
  int r = px__slots_free(&pool->slots);
  if (r == 0)
    px__free(pool);
  return r;
}

static px_conn_id px__conn_id(uint32_t index, uint32_t gen) {
  return ((px_conn_id)gen << 32) | (px_conn_id)(index + 1);
}

void *px_conn_get(px_connpool *pool, px_conn_id *id) {
  if (pool == NULL || id == NULL)
    return NULL;
  *id = 0;
  uint32_t i = px__slots_take(&pool->slots);
  if (i == UINT32_MAX)
    return NULL;
  px__slots_mark(&pool->slots, pool->slots.capacity - pool->slots.nfree);
  uint32_t *gen = px__gen(pool);
  gen[i]++; /* even -> odd: handed out */
  *id = px__conn_id(i, gen[i]);
  void *obj = pool->slots.slab + (size_t)i * pool->slots.stride;
  memset(obj, 0, pool->obj_size);
  return obj;
}

/* The slot of a live id, or UINT32_MAX. */
static uint32_t px__conn_slot(const px_connpool *pool, px_conn_id id) {
  uint32_t low = (uint32_t)id, gen = (uint32_t)(id >> 32);
  if (pool == NULL || low == 0 || low > pool->slots.capacity)
    return UINT32_MAX;
  uint32_t i = low - 1;
  return (gen & 1u) && px__gen(pool)[i] == gen ? i : UINT32_MAX;
}

void *px_conn_lookup(const px_connpool *pool, px_conn_id id) {
  uint32_t i = px__conn_slot(pool, id);
  return i == UINT32_MAX ? NULL
                         : pool->slots.slab + (size_t)i * pool->slots.stride;
}

int px_conn_release(px_connpool *pool, px_conn_id id) {
  uint32_t i = px__conn_slot(pool, id);
  if (i == UINT32_MAX)
    return PX_ENOENT;
  px__gen(pool)[i]++; /* odd -> even: the old generation's ids are stale */
  px__slots_put(&pool->slots, i);
  if (pool->on_release != NULL)
    pool->on_release(pool->ctx);
  return 0;
}

void px_connpool_stats(const px_connpool *pool, px_pool_stats *out) {
  if (pool != NULL && out != NULL)
    px__slots_stats(&pool->slots, 0, out);
}

void px_connpool_foreach(px_connpool *pool, px_conn_fn fn, void *ctx) {
  if (pool == NULL || fn == NULL)
    return;
  for (uint32_t i = 0; i < pool->slots.capacity; i++) {
    uint32_t gen = px__gen(pool)[i];
    if (gen & 1u)
      fn(pool->slots.slab + (size_t)i * pool->slots.stride, px__conn_id(i, gen),
         ctx);
  }
}
