/* libFuzzer target for http_parse_request(): the input is a request head,
 * parsed whole and then a byte at a time (len = 0, 1, 2, ...; sampled past
 * EXHAUSTIVE bytes).  The answers must agree (0 until the answer, then the
 * answer), a complete head must be found at exactly its length, every
 * pointer must stay inside the bytes taken, and len >= HTTP_MAX_HEAD_TOTAL must
 * never give 0.  Any violation traps. *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Iexamples/http \
 *     fuzz/http_parse_fuzz.c examples/http/http_parse.c -o /tmp/fz_parse
 *   /tmp/fz_parse fuzz/corpus/http_parse -max_len=30000 -max_total_time=60
 *
 * (Debian: apt-get install clang libclang-rt-14-dev.)  Without libFuzzer,
 * fuzz/replay.c runs this over a corpus: meson test fuzz_replay_http_parse. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"

/* Under AddressSanitizer the bytes past a prefix are poisoned, so that a
 * read past len is caught without a copy per prefix; without it they are
 * not checked. */
#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_ASAN 1
#endif
#endif
#ifdef FUZZ_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                               \
  do {                                                                         \
    if (!(x))                                                                  \
      __builtin_trap();                                                        \
  } while (0)

static int inside(const char *p, size_t n, const char *buf, size_t len) {
  return p != NULL && p >= buf && n <= len && (size_t)(p - buf) <= len - n;
}

static void check_result(int rc, const http_request *r, const char *buf,
                         size_t len) {
  if (len >= HTTP_MAX_HEAD_TOTAL)
    CHECK(rc != 0);
  if (rc < 0) {
    CHECK(rc == -400 || rc == -414 || rc == -431 || rc == -505);
    return;
  }
  if (rc == 0)
    return;
  size_t n = (size_t)rc;
  CHECK(n <= len && n <= HTTP_MAX_HEAD_TOTAL);
  CHECK(n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0);
  CHECK(r->minor == 0 || r->minor == 1);
  CHECK(r->keep_alive == 0 || r->keep_alive == 1);
  CHECK(r->method_len > 0 && inside(r->method, r->method_len, buf, n));
  CHECK(r->target_len > 0 && inside(r->target, r->target_len, buf, n));
  CHECK(r->target_len <= HTTP_MAX_REQUEST_LINE);
  CHECK(r->nheaders <= HTTP_MAX_HEADERS);
  for (size_t i = 0; i < r->nheaders; i++) {
    const http_header *h = &r->headers[i];
    CHECK(h->name_len > 0 && inside(h->name, h->name_len, buf, n));
    CHECK(inside(h->value, h->value_len, buf, n));
  }
  CHECK(r->host != NULL || r->minor == 0);
  if (r->host)
    CHECK(inside(r->host, r->host_len, buf, n));
  CHECK(r->body != HTTP_BODY_LENGTH ||
        r->content_length <= UINT64_C(0x7fffffffffffffff));
  CHECK(r->body != HTTP_BODY_CHUNKED || r->minor == 1);
}

/* Parses buf[0, len) with the rest of buf[0, size) made unreadable. */
static int parse_prefix(char *buf, size_t len, size_t size) {
  static http_request r;
  POISON(buf + len, size - len);
  int rc = http_parse_request(buf, len, &r);
  UNPOISON(buf + len, size - len);
  check_result(rc, &r, buf, len);
  return rc;
}

/* All prefixes of an input up to this size are parsed; past it (inputs
 * that reach the 8 KiB and 16 KiB limits), checking every prefix costs
 * O(n^2), so the first answering length is found by bisection and the
 * prefixes near it and a stride of the others are checked. */
#define EXHAUSTIVE 4096

/* The shortest prefix that gives an answer, given that all of buf does. */
static size_t first_answer(char *buf, size_t size) {
  size_t lo = 0, hi = size; /* prefix lo gives 0, hi an answer */
  if (parse_prefix(buf, 0, size) != 0)
    return 0;
  while (hi - lo > 1) {
    size_t mid = lo + (hi - lo) / 2;
    if (parse_prefix(buf, mid, size) != 0)
      hi = mid;
    else
      lo = mid;
  }
  return hi;
}

/* Prefix k must give 0 before the first answer (at first), whole after. */
static void check_prefix(char *buf, size_t k, size_t size, size_t first,
                         int whole) {
  CHECK(parse_prefix(buf, k, size) == (k < first ? 0 : whole));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static http_request r;
  int whole = http_parse_request((const char *)data, size, &r);
  check_result(whole, &r, (const char *)data, size);
  char *buf = malloc(size ? size : 1);
  CHECK(buf != NULL);
  if (size)
    memcpy(buf, data, size);
  size_t first = whole == 0 ? size + 1 : first_answer(buf, size);
  /* A head is found at exactly its length. */
  CHECK(whole <= 0 || (size_t)whole == first);
  if (size <= EXHAUSTIVE) {
    for (size_t k = 0; k <= size; k++)
      check_prefix(buf, k, size, first, whole);
  } else {
    for (size_t k = first > 64 ? first - 64 : 0; k <= size && k < first + 64;
         k++)
      check_prefix(buf, k, size, first, whole);
    for (size_t k = 0; k <= size; k += size / 61)
      check_prefix(buf, k, size, first, whole);
  }
  free(buf);
  return 0;
}
