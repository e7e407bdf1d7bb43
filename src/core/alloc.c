/* The allocator px uses for loops and tables (never per op). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static px_malloc_fn px__m = malloc;
static px_realloc_fn px__r = realloc;
static px_free_fn px__f = free;

int px_replace_allocator(px_malloc_fn m, px_realloc_fn r, px_free_fn f) {
  if (m == NULL || r == NULL || f == NULL)
    return PX_EINVAL;
  px__m = m;
  px__r = r;
  px__f = f;
  return 0;
}

void *px__malloc(size_t n) {
  return px__m(n);
}

bool px__alloc_default(void) {
  return px__m == malloc && px__f == free;
}

void *px__calloc(size_t n, size_t size) {
  if (size != 0 && n > SIZE_MAX / size)
    return NULL;
  /* libc's calloc hands out fresh pages untouched (the handle tables are
   * sized for every descriptor and cost only what is used); a replaced
   * allocator gets malloc and memset. */
  if (px__alloc_default())
    return calloc(n, size);
  void *p = px__m(n * size);
  if (p != NULL)
    memset(p, 0, n * size);
  return p;
}

void *px__realloc(void *p, size_t n) {
  return px__r(p, n);
}

void px__free(void *p) {
  if (p != NULL)
    px__f(p);
}
