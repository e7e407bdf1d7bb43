/*
 * A binary min-heap of ops keyed on op->when (absolute nanoseconds).
 *
 * It holds px_timeout ops and the deadlines of ops that wait in px's own
 * queues (or, on backends without kernel timers, in the kernel).  op->heap
 * is the op's slot + 1, so 0 means "not in the heap" and a zeroed op is
 * consistent.  Ties keep insertion order through a sequence number folded
 * into the comparison: equal deadlines fire in submission order.
 */
#include "internal.h"

/* Ops with equal deadlines must fire in submission order; the heap is not
 * stable, so the key is (when, seq) with seq kept in the op's len field for
 * timers.  Deadline ops use their own len; ties between them do not matter. */
static bool px__before(const px_op *a, const px_op *b) {
  if (a->when != b->when)
    return a->when < b->when;
  if (a->kind == PX__OP_TIMEOUT && b->kind == PX__OP_TIMEOUT)
    return (uint32_t)(a->len - b->len) > UINT32_MAX / 2;
  return false;
}

static void px__heap_set(px_loop *loop, uint32_t i, px_op *op) {
  loop->heap[i] = op;
  op->heap = i + 1;
}

static void px__sift_up(px_loop *loop, uint32_t i) {
  px_op *op = loop->heap[i];
  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (!px__before(op, loop->heap[parent]))
      break;
    px__heap_set(loop, i, loop->heap[parent]);
    i = parent;
  }
  px__heap_set(loop, i, op);
}

static void px__sift_down(px_loop *loop, uint32_t i) {
  px_op *op = loop->heap[i];
  for (;;) {
    uint32_t c = 2 * i + 1;
    if (c >= loop->heap_len)
      break;
    if (c + 1 < loop->heap_len && px__before(loop->heap[c + 1], loop->heap[c]))
      c++;
    if (!px__before(loop->heap[c], op))
      break;
    px__heap_set(loop, i, loop->heap[c]);
    i = c;
  }
  px__heap_set(loop, i, op);
}

int px__heap_room(px_loop *loop) {
  if (loop->heap_len == loop->heap_cap) {
    uint32_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
    px_op **h = px__realloc(loop->heap, cap * sizeof(*h));
    if (h == NULL)
      return PX_ENOMEM;
    loop->heap = h;
    loop->heap_cap = cap;
  }
  return 0;
}

void px__heap_push(px_loop *loop, px_op *op) {
  loop->heap[loop->heap_len] = op;
  px__sift_up(loop, loop->heap_len++);
}

void px__heap_remove(px_loop *loop, px_op *op) {
  if (op->heap == 0)
    return;
  uint32_t i = op->heap - 1;
  op->heap = 0;
  px_op *last = loop->heap[--loop->heap_len];
  if (i == loop->heap_len)
    return;
  px__heap_set(loop, i, last);
  if (i > 0 && px__before(last, loop->heap[(i - 1) / 2]))
    px__sift_up(loop, i);
  else
    px__sift_down(loop, i);
}

px_op *px__heap_top(const px_loop *loop) {
  return loop->heap_len ? loop->heap[0] : NULL;
}

void px__heap_free(px_loop *loop) {
  px__free(loop->heap);
  loop->heap = NULL;
  loop->heap_len = loop->heap_cap = 0;
}
