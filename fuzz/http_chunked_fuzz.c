/* libFuzzer target for http_chunked_feed().  The first three bytes choose a
 * split offset and the body limit; the rest is the stream.  It is fed whole,
 * in two pieces split at that offset, and a byte at a time; each way must
 * hand out the same body bytes and end the same way (DONE at the same
 * position, the same error, or wanting more), with every piece handed out
 * inside the input given.  Any violation traps.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iexamples/http \
 *     fuzz/http_chunked_fuzz.c examples/http/http_parse.c -o /tmp/fz_chunked
 *   /tmp/fz_chunked fuzz/corpus/http_chunked -max_len=20000 -max_total_time=60
 *
 * (Debian: apt-get install clang libclang-rt-14-dev.)  Without libFuzzer,
 * fuzz/replay.c runs this over a corpus: meson test fuzz_replay_http_chunked.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                               \
  do {                                                                         \
    if (!(x))                                                                  \
      __builtin_trap();                                                        \
  } while (0)

/* What one way of feeding gave.  The body is never longer than the input. */
typedef struct outcome {
  uint8_t *body;
  size_t body_len;
  int rc;     /* HTTP_CHUNK_DONE, an error, or HTTP_CHUNK_MORE at the end */
  size_t end; /* the bytes consumed in all */
} outcome;

/* Feeds one piece (an exact-size copy); returns 0 once the body ended. */
static int feed_piece(http_chunked *c, const uint8_t *p, size_t len,
                      outcome *o) {
  char *in = malloc(len ? len : 1);
  CHECK(in != NULL);
  if (len)
    memcpy(in, p, len);
  size_t off = 0;
  int rc;
  for (;;) {
    size_t used, dlen;
    const char *d;
    rc = http_chunked_feed(c, in + off, len - off, &used, &d, &dlen);
    CHECK(used <= len - off);
    o->end += used;
    if (rc != HTTP_CHUNK_DATA) {
      CHECK(d == NULL && dlen == 0);
      CHECK(rc != HTTP_CHUNK_MORE || used == len - off);
      break;
    }
    CHECK(dlen > 0 && d >= in + off && d + dlen == in + off + used);
    memcpy(o->body + o->body_len, d, dlen);
    o->body_len += dlen;
    off += used;
  }
  CHECK(rc == HTTP_CHUNK_MORE || rc == HTTP_CHUNK_DONE || rc == -400 ||
        rc == -413);
  if (rc != HTTP_CHUNK_MORE) { /* the answer sticks, consuming nothing */
    size_t used, dlen;
    const char *d;
    CHECK(http_chunked_feed(c, in, len, &used, &d, &dlen) == rc && used == 0);
  }
  free(in);
  o->rc = rc;
  return rc == HTTP_CHUNK_MORE;
}

/* Feeds p[0, n) in the pieces that cut[0 .. ncut) (ascending) mark. */
static void feed(const uint8_t *p, size_t n, const size_t *cut, size_t ncut,
                 uint64_t max_body, outcome *o) {
  http_chunked c;
  http_chunked_init(&c, max_body);
  o->body_len = 0;
  o->end = 0;
  size_t from = 0;
  for (size_t i = 0; i <= ncut; i++) {
    size_t to = i < ncut ? cut[i] : n;
    if (!feed_piece(&c, p + from, to - from, o))
      break;
    CHECK(o->end == to);
    from = to;
  }
  if (o->rc == HTTP_CHUNK_MORE)
    CHECK(o->end == n);
}

static void same(const outcome *a, const outcome *b) {
  CHECK(a->rc == b->rc);
  CHECK(a->body_len == b->body_len);
  CHECK(a->body_len == 0 || memcmp(a->body, b->body, a->body_len) == 0);
  if (a->rc == HTTP_CHUNK_DONE)
    CHECK(a->end == b->end);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3)
    return 0;
  /* A small limit half the time, so that 413 is reached too. */
  uint64_t max_body = data[2] & 1 ? data[2] >> 1 : UINT64_MAX;
  size_t n = size - 3;
  size_t split = ((size_t)data[0] << 8 | data[1]) % (n + 1);
  const uint8_t *p = data + 3;
  outcome a, b;
  a.body = malloc(n + 1);
  b.body = malloc(n + 1);
  CHECK(a.body != NULL && b.body != NULL);
  feed(p, n, NULL, 0, max_body, &a);
  if (a.rc == HTTP_CHUNK_DONE)
    CHECK(a.end <= n);
  feed(p, n, &split, 1, max_body, &b);
  same(&a, &b);
  size_t *each = malloc((n + 1) * sizeof *each);
  CHECK(each != NULL);
  for (size_t i = 0; i < n; i++)
    each[i] = i + 1;
  feed(p, n, each, n ? n - 1 : 0, max_body, &b);
  same(&a, &b);
  free(each);
  free(a.body);
  free(b.body);
  return 0;
}
