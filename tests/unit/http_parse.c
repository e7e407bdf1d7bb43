/* The example HTTP server's request parser and chunked decoder
 * (examples/http/http_parse.c).  Every case is fed three ways: whole, a
 * byte at a time, and split in two at every offset; all three must give the
 * same answer, and the pieces are exact-size copies, so that a read past
 * the bytes given trips AddressSanitizer in the asan builds. */
/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"

/* A string literal as pointer and length. */
#define S(lit) lit, sizeof(lit) - 1

/* Cases above this size (the limit edges) are not split at every offset,
 * which costs O(n^2).  For the stateless head parser a split at o is the
 * call with len o and then the call with the whole length, and the
 * byte-at-a-time pass makes both; the chunked decoder's are split near
 * either end and at one offset in 61. */
#define SPLIT_MAX 4096

static char *exact_copy(const char *p, size_t n) {
  char *b = malloc(n ? n : 1);
  assert_non_null(b);
  if (n)
    memcpy(b, p, n);
  return b;
}

static int inside(const char *p, size_t n, const char *buf, size_t len) {
  return p >= buf && n <= len && p - buf <= (ptrdiff_t)(len - n);
}

/* Every pointer of a parsed head lies inside the rc bytes it took. */
static void check_bounds(const http_request *r, const char *buf, int rc) {
  size_t len = (size_t)rc;
  assert_true(inside(r->method, r->method_len, buf, len));
  assert_true(inside(r->target, r->target_len, buf, len));
  assert_true(r->nheaders <= HTTP_MAX_HEADERS);
  for (size_t i = 0; i < r->nheaders; i++) {
    assert_true(inside(r->headers[i].name, r->headers[i].name_len, buf, len));
    assert_true(inside(r->headers[i].value, r->headers[i].value_len, buf, len));
  }
  if (r->host)
    assert_true(inside(r->host, r->host_len, buf, len));
}

static int parse_copy(const char *p, size_t n) {
  http_request r;
  char *b = exact_copy(p, n);
  int rc = http_parse_request(b, n, &r);
  if (rc > 0)
    check_bounds(&r, b, rc);
  free(b);
  return rc;
}

/* len = 0, 1, 2, ...: 0 until the answer, then the answer every time. */
static void feed_head_bytewise(const char *p, size_t n, int want) {
  size_t first = 0; /* the length that first gave an answer */
  for (size_t k = 0; k <= n; k++) {
    int rc = parse_copy(p, k);
    if (!first && rc != 0) {
      first = k;
      if (want > 0)
        assert_int_equal(k, (size_t)want);
    }
    assert_int_equal(rc, first ? want : 0);
  }
}

/* Split at o: the bytes [0, o) arrive, then the rest in the same buffer. */
static void feed_head_split(const char *p, size_t n, int want) {
  http_request r;
  char *b = malloc(n);
  assert_non_null(b);
  for (size_t o = 1; o < n; o++) {
    memcpy(b, p, o);
    int rc = http_parse_request(b, o, &r);
    if (rc != 0) {
      assert_int_equal(rc, want);
      continue;
    }
    memcpy(b + o, p + o, n - o);
    assert_int_equal(http_parse_request(b, n, &r), want);
  }
  free(b);
}

/* Feeds p[0, n) three ways; each must answer want.  req gets the result of
 * parsing p itself, so its pointers point into p. */
static void head_is(const char *p, size_t n, int want, http_request *req) {
  int rc = http_parse_request(p, n, req);
  assert_int_equal(rc, want);
  if (rc > 0)
    check_bounds(req, p, rc);
  feed_head_bytewise(p, n, want);
  if (n <= SPLIT_MAX)
    feed_head_split(p, n, want);
}

static void rejected(const char *p, size_t n, int status) {
  http_request r;
  head_is(p, n, -status, &r);
}

static void accepted(const char *p, size_t n, http_request *req) {
  head_is(p, n, (int)n, req);
}

static void str_is(const char *p, size_t n, const char *want) {
  assert_int_equal(n, strlen(want));
  assert_memory_equal(p, want, n);
}

static void header_is(const http_request *r, size_t i, const char *name,
                      const char *value) {
  assert_true(i < r->nheaders);
  str_is(r->headers[i].name, r->headers[i].name_len, name);
  str_is(r->headers[i].value, r->headers[i].value_len, value);
}

/* ---- Valid heads. -------------------------------------------------------- */

static void get_fills_every_field(void **state) {
  http_request r;
  (void)state;
  accepted(S("GET /index.html?q=1 HTTP/1.1\r\n"
             "Host: example.com:8080\r\n"
             "Accept: */*\r\n"
             "\r\n"),
           &r);
  str_is(r.method, r.method_len, "GET");
  str_is(r.target, r.target_len, "/index.html?q=1");
  assert_int_equal(r.minor, 1);
  assert_int_equal(r.nheaders, 2);
  header_is(&r, 0, "Host", "example.com:8080");
  header_is(&r, 1, "Accept", "*/*");
  str_is(r.host, r.host_len, "example.com:8080");
  assert_int_equal(r.body, HTTP_BODY_NONE);
  assert_int_equal(r.keep_alive, 1);
}

static void post_with_content_length_stops_before_the_body(void **state) {
  static const char req[] = "POST /upload HTTP/1.1\r\n"
                            "host: a\r\n"
                            "content-LENGTH: 0005\r\n"
                            "\r\n"
                            "hello";
  http_request r;
  (void)state;
  head_is(S(req), (int)(sizeof req - 1 - 5), &r);
  str_is(r.method, r.method_len, "POST");
  assert_int_equal(r.body, HTTP_BODY_LENGTH);
  assert_int_equal(r.content_length, 5);
}

static void content_length_zero_and_the_largest(void **state) {
  http_request r;
  (void)state;
  accepted(S("PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"), &r);
  assert_int_equal(r.body, HTTP_BODY_LENGTH);
  assert_int_equal(r.content_length, 0);
  accepted(S("PUT /x HTTP/1.1\r\nHost: a\r\n"
             "Content-Length: 00009223372036854775807\r\n\r\n"),
           &r);
  assert_true(r.content_length == UINT64_C(9223372036854775807));
}

static void chunked_request(void **state) {
  http_request r;
  (void)state;
  accepted(
      S("POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\r\n"),
      &r);
  assert_int_equal(r.body, HTTP_BODY_CHUNKED);
  accepted(S("POST /p HTTP/1.1\r\nHost: h\r\n"
             "transfer-encoding: \t ChUnKeD \t\r\n\r\n"),
           &r);
  assert_int_equal(r.body, HTTP_BODY_CHUNKED);
}

#define REQ_A "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
#define REQ_B "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
#define REQ_C "GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"

static void pipelined_pair_parses_one_head_at_a_time(void **state) {
  static const char two[] = REQ_A REQ_B "abc" REQ_C;
  const size_t n = sizeof two - 1;
  const size_t first = sizeof REQ_A - 1, second = sizeof REQ_B - 1;
  http_request r;
  (void)state;
  head_is(two, n, (int)first, &r);
  str_is(r.target, r.target_len, "/a");
  head_is(two + first, n - first, (int)second, &r);
  str_is(r.target, r.target_len, "/b");
  assert_int_equal(r.content_length, 3);
  const char *third = two + first + second + 3;
  head_is(third, n - (size_t)(third - two), (int)(n - (size_t)(third - two)),
          &r);
  str_is(r.target, r.target_len, "/c");
  assert_int_equal(r.keep_alive, 0);
}

static void connection_decides_keep_alive(void **state) {
  http_request r;
  (void)state;
  accepted(S("GET / HTTP/1.0\r\n\r\n"), &r);
  assert_int_equal(r.minor, 0);
  assert_null(r.host);
  assert_int_equal(r.keep_alive, 0);
  accepted(S("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), &r);
  assert_int_equal(r.keep_alive, 1);
  accepted(S("GET / HTTP/1.0\r\nConnection: Upgrade ,\tKEEP-ALIVE,\r\n\r\n"),
           &r);
  assert_int_equal(r.keep_alive, 1);
  accepted(S("GET / HTTP/1.0\r\nConnection: keep-alive\r\n"
             "Connection: close\r\n\r\n"),
           &r);
  assert_int_equal(r.keep_alive, 0);
  accepted(S("GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n"), &r);
  assert_int_equal(r.keep_alive, 0);
  accepted(
      S("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n"),
      &r);
  assert_int_equal(r.keep_alive, 0);
  accepted(S("GET / HTTP/1.1\r\nHost: a\r\nConnection: closf, x-close\r\n\r\n"),
           &r);
  assert_int_equal(r.keep_alive, 1);
}

static void odd_but_legal_whitespace_is_trimmed(void **state) {
  http_request r;
  (void)state;
  accepted(S("GET / HTTP/1.1\r\n"
             "Host:a\r\n"
             "X-A: \t  two  words \t \r\n"
             "X-B:\r\n"
             "X-C: \t \r\n"
             "X-D:\tv\r\n"
             "X-E: caf\xc3\xa9 \x80\xff\r\n"
             "\r\n"),
           &r);
  assert_int_equal(r.nheaders, 6);
  header_is(&r, 0, "Host", "a");
  header_is(&r, 1, "X-A", "two  words");
  header_is(&r, 2, "X-B", "");
  header_is(&r, 3, "X-C", "");
  header_is(&r, 4, "X-D", "v");
  header_is(&r, 5, "X-E", "caf\xc3\xa9 \x80\xff");
  str_is(r.host, r.host_len, "a");
}

static void any_token_method_and_target_form(void **state) {
  http_request r;
  (void)state;
  accepted(S("M-SEARCH * HTTP/1.1\r\nHost: a\r\n\r\n"), &r);
  str_is(r.method, r.method_len, "M-SEARCH");
  str_is(r.target, r.target_len, "*");
  accepted(S("!#$%&'*+-.^_`|~09azAZ http://h:1/p?q#f HTTP/1.1\r\nHost: h:1\r\n"
             "\r\n"),
           &r);
  str_is(r.method, r.method_len, "!#$%&'*+-.^_`|~09azAZ");
  str_is(r.target, r.target_len, "http://h:1/p?q#f");
  accepted(S("CONNECT h:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"), &r);
  accepted(S("GET / HTTP/1.1\r\nHost:\r\n\r\n"), &r); /* empty is valid */
  assert_non_null(r.host);
  assert_int_equal(r.host_len, 0);
}

static void leading_empty_lines_are_ignored_up_to_the_limit(void **state) {
  http_request r;
  (void)state;
  accepted(S("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), &r);
  str_is(r.method, r.method_len, "GET");
  accepted(
      S("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
      &r);
  rejected(S("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n"
             "\r\n"),
           400);
}

/* ---- Limits. --------------------------------------------------------------
 */

static char big[HTTP_MAX_HEAD_TOTAL + 64];

/* "GET /aaa... HTTP/1.1" of line_len bytes, then the fields and CRLF. */
static size_t with_request_line(size_t line_len, const char *rest) {
  size_t target = line_len - 13; /* "GET " and " HTTP/1.1" */
  memcpy(big, "GET /", 5);
  memset(big + 5, 'a', target - 1);
  memcpy(big + 4 + target, " HTTP/1.1\r\n", 11);
  size_t n = line_len + 2;
  memcpy(big + n, rest, strlen(rest));
  return n + strlen(rest);
}

static void request_line_of_8192_passes_8193_is_414(void **state) {
  http_request r;
  (void)state;
  size_t n = with_request_line(HTTP_MAX_REQUEST_LINE, "Host: a\r\n\r\n");
  accepted(big, n, &r);
  assert_int_equal(r.target_len, HTTP_MAX_REQUEST_LINE - 13);
  n = with_request_line(HTTP_MAX_REQUEST_LINE + 1, "Host: a\r\n\r\n");
  rejected(big, n, 414);
  /* 8193 bytes without a CRLF prove it; no more bytes are awaited. */
  assert_int_equal(http_parse_request(big, HTTP_MAX_REQUEST_LINE, &r), 0);
  assert_int_equal(http_parse_request(big, HTTP_MAX_REQUEST_LINE + 1, &r),
                   -414);
  memset(big + 5, 'a', HTTP_MAX_REQUEST_LINE);
  rejected(big, HTTP_MAX_REQUEST_LINE + 1, 414);
}

/* A head of exactly n bytes: request line, Host, one long X field. */
static size_t head_of(size_t n) {
  static const char line[] = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
  size_t value = n - (sizeof line - 1) - 4;
  memcpy(big, line, sizeof line - 1);
  memset(big + sizeof line - 1, 'v', value);
  memcpy(big + sizeof line - 1 + value, "\r\n\r\n", 4);
  return n;
}

/* The header section after "GET / HTTP/1.1\r\n" (16 bytes) is the limit. */
static void header_section_of_16384_passes_16385_is_431(void **state) {
  http_request r;
  (void)state;
  accepted(big, head_of(16 + HTTP_MAX_HEAD), &r);
  assert_int_equal(r.headers[1].value_len, 16 + HTTP_MAX_HEAD - 28 - 4);
  rejected(big, head_of(16 + HTTP_MAX_HEAD + 1), 431);
  /* It is known once the section's 16384 bytes did not end it. */
  assert_int_equal(http_parse_request(big, 16 + HTTP_MAX_HEAD - 1, &r), 0);
  assert_int_equal(http_parse_request(big, 16 + HTTP_MAX_HEAD, &r), -431);
}

/* The two limits add up: an 8 KiB request line and a 15 KiB header
 * section make a valid head of 23 KiB. */
static void long_request_line_and_long_header_section_pass(void **state) {
  http_request r;
  (void)state;
  size_t n = with_request_line(HTTP_MAX_REQUEST_LINE, "Host: a\r\nX: ");
  memset(big + n, 'v', 15 * 1024);
  n += 15 * 1024;
  memcpy(big + n, "\r\n\r\n", 4);
  n += 4;
  accepted(big, n, &r);
  assert_int_equal(r.headers[1].value_len, 15 * 1024);
  assert_true(n < HTTP_MAX_HEAD_TOTAL);
}

/* A request with Host and then fields X0, X1, ... up to nheaders lines. */
static size_t with_headers(size_t nheaders) {
  size_t n = (size_t)sprintf(big, "GET / HTTP/1.1\r\nHost: a\r\n");
  for (size_t i = 1; i < nheaders; i++)
    n += (size_t)sprintf(big + n, "X%zu: %zu\r\n", i, i);
  return n + (size_t)sprintf(big + n, "\r\n");
}

static void hundred_headers_pass_101_is_431(void **state) {
  http_request r;
  (void)state;
  accepted(big, with_headers(HTTP_MAX_HEADERS), &r);
  assert_int_equal(r.nheaders, HTTP_MAX_HEADERS);
  header_is(&r, 99, "X99", "99");
  rejected(big, with_headers(HTTP_MAX_HEADERS + 1), 431);
}

/* ---- Rejections. ----------------------------------------------------------
 */

static void framing_conflicts_are_400(void **state) {
  (void)state;
  rejected(S("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
             "Transfer-Encoding: chunked\r\n\r\n"),
           400);
  rejected(S("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             "Content-Length: 3\r\n\r\n"),
           400);
  rejected(S("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
             "Content-Length: 3\r\n\r\n"),
           400);
  rejected(S("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             "Transfer-Encoding: chunked\r\n\r\n"),
           400);
  rejected(S("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
}

static void bad_content_length_is_400(void **state) {
  static const char *const bad[] = {
      "",
      "abc",
      "+5",
      "-5",
      "5,5",
      "5, 5",
      "1 2",
      "0x10",
      "5\x80",
      "9223372036854775808",
      "18446744073709551616",
      "99999999999999999999999999",
  };
  char buf[256];
  (void)state;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int n = snprintf(buf, sizeof buf,
                     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n",
                     bad[i]);
    rejected(buf, (size_t)n, 400);
  }
}

static void transfer_coding_other_than_chunked_is_400(void **state) {
  static const char *const bad[] = {
      "",         "gzip",  "gzip, chunked", "chunked, chunked", "chunked;q=1",
      "chunked,", "chunk", "xchunked",      "identity",
  };
  char buf[256];
  (void)state;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int n = snprintf(
        buf, sizeof buf,
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %s\r\n\r\n", bad[i]);
    rejected(buf, (size_t)n, 400);
  }
}

static void field_syntax_errors_are_400(void **state) {
  (void)state;
  /* obs-fold, and whitespace before the first field */
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), 400);
  /* whitespace before the colon, an empty name, no colon, bad name bytes */
  rejected(S("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nX-Y\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nX@Y: b\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nX\x80: b\r\n\r\n"), 400);
  /* value bytes: NUL, other CTLs, DEL */
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nX: \x7f\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[0m\r\n\r\n"), 400);
}

static void bare_lf_and_lone_cr_are_400(void **state) {
  (void)state;
  rejected(S("GET / HTTP/1.1\nHost: a\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\n\n"), 400);
  rejected(S("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nX: a\nb\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\rHost: a\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\n\rX"), 400);
  rejected(S("\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
}

static void host_missing_repeated_or_invalid_is_400(void **state) {
  (void)state;
  rejected(S("GET / HTTP/1.1\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nX-Host: a\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n"), 400);
}

static void request_line_syntax_errors_are_400(void **state) {
  (void)state;
  rejected(S("GE(T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GE\0T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S(" GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET  / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET /  HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET / HTTP/1.1 \r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET /\tHTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET /\r\n\r\n"), 400); /* HTTP/0.9 */
  rejected(S("GET\r\n\r\n"), 400);
  rejected(S("GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  rejected(S("GET /a\0 HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
}

static void version_garbage_is_400_other_versions_505(void **state) {
  static const char *const garbage[] = {
      "http/1.1", "HTTP/1.1x", "HTTP/11",   "HTTP/1",   "HTTP/1.", "HTTP/1.10",
      "HTTP/a.1", "HTTP 1.1",  "HTTPS/1.1", "HTTP/1,1", "",
  };
  static const char *const unsupported[] = {"HTTP/1.2", "HTTP/2.0", "HTTP/0.9",
                                            "HTTP/9.9"};
  char buf[256];
  (void)state;
  for (size_t i = 0; i < sizeof garbage / sizeof garbage[0]; i++) {
    int n =
        snprintf(buf, sizeof buf, "GET / %s\r\nHost: a\r\n\r\n", garbage[i]);
    rejected(buf, (size_t)n, 400);
  }
  for (size_t i = 0; i < sizeof unsupported / sizeof unsupported[0]; i++) {
    int n = snprintf(buf, sizeof buf, "GET / %s\r\nHost: a\r\n\r\n",
                     unsupported[i]);
    rejected(buf, (size_t)n, 505);
  }
  /* The version is judged once the line is whole: a lone CR first is 400. */
  rejected(S("GET / HTTP/2.0\rX"), 400);
}

static void first_problem_in_the_bytes_wins(void **state) {
  (void)state;
  /* A broken field before a missing Host; 505 before any field. */
  rejected(S("GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
  rejected(S("GET / HTTP/3.0\r\nContent-Length: x\r\n\r\n"), 505);
  /* Bytes after a complete head are not looked at. */
  http_request r;
  head_is(S("GET / HTTP/1.1\r\nHost: a\r\n\r\n\x01\n\r"), 27, &r);
}

/* ---- The chunked decoder. -------------------------------------------------
 */

/* What feeding a stream gave: the body, how it ended, where. */
typedef struct outcome {
  char body[HTTP_MAX_HEAD * 2];
  size_t body_len;
  int rc;     /* HTTP_CHUNK_DONE, an error, or HTTP_CHUNK_MORE at the end */
  size_t end; /* DONE: the bytes of the stream consumed */
} outcome;

/* Feeds one piece; returns 0 once DONE or an error ended the body. */
static int feed_piece(http_chunked *c, const char *in, size_t len, outcome *o) {
  size_t off = 0;
  for (;;) {
    size_t used = 12345, dlen = 12345;
    const char *data = in;
    int rc = http_chunked_feed(c, in + off, len - off, &used, &data, &dlen);
    assert_true(used <= len - off);
    if (rc == HTTP_CHUNK_DATA) {
      assert_true(dlen > 0);
      assert_true(inside(data, dlen, in + off, used));
      assert_true(data + dlen == in + off + used);
      assert_true(o->body_len + dlen <= sizeof o->body);
      memcpy(o->body + o->body_len, data, dlen);
      o->body_len += dlen;
      off += used;
      o->end += used;
      continue;
    }
    assert_null(data);
    assert_int_equal(dlen, 0);
    o->rc = rc;
    if (rc == HTTP_CHUNK_MORE) {
      assert_int_equal(used, len - off);
      o->end += used;
      return 1;
    }
    o->end += used;
    /* The answer sticks, and nothing more is consumed. */
    assert_int_equal(http_chunked_feed(c, in, len, &used, &data, &dlen), rc);
    assert_int_equal(used, 0);
    return 0;
  }
}

/* Feeds the pieces [cuts[i], cuts[i+1]) of p, each an exact-size copy. */
static void feed_cuts(const char *p, const size_t *cuts, size_t ncuts,
                      uint64_t max_body, outcome *o) {
  http_chunked c;
  http_chunked_init(&c, max_body);
  o->body_len = 0;
  o->end = 0;
  o->rc = HTTP_CHUNK_MORE;
  for (size_t i = 0; i + 1 < ncuts; i++) {
    char *b = exact_copy(p + cuts[i], cuts[i + 1] - cuts[i]);
    int go_on = feed_piece(&c, b, cuts[i + 1] - cuts[i], o);
    free(b);
    if (!go_on)
      return;
  }
}

static outcome whole, other; /* large: kept off the stack */

static void same_outcome(const outcome *a, const outcome *b) {
  assert_int_equal(a->rc, b->rc);
  assert_int_equal(a->body_len, b->body_len);
  assert_memory_equal(a->body, b->body, a->body_len);
  if (a->rc == HTTP_CHUNK_DONE)
    assert_int_equal(a->end, b->end);
}

/* Feeds p[0, n) whole, split at every offset, and a byte at a time; each
 * must end with rc, having handed out body, and (DONE) consumed end bytes. */
static void chunked_is(const char *p, size_t n, uint64_t max_body, int rc,
                       const char *body, size_t body_len, size_t end) {
  size_t cuts[3] = {0, n, n};
  feed_cuts(p, cuts, 2, max_body, &whole);
  assert_int_equal(whole.rc, rc);
  assert_int_equal(whole.body_len, body_len);
  assert_memory_equal(whole.body, body, body_len);
  if (rc == HTTP_CHUNK_DONE)
    assert_int_equal(whole.end, end);
  for (size_t o = 0; o <= n; o++) {
    /* Past SPLIT_MAX, every offset near either end and one in 61. */
    if (n > SPLIT_MAX && o >= 64 && n - o >= 64 && o % 61 != 0)
      continue;
    cuts[1] = o;
    feed_cuts(p, cuts, 3, max_body, &other);
    same_outcome(&whole, &other);
  }
  size_t *each = malloc((n + 1) * sizeof *each);
  assert_non_null(each);
  for (size_t i = 0; i <= n; i++)
    each[i] = i;
  feed_cuts(p, each, n + 1, max_body, &other);
  same_outcome(&whole, &other);
  free(each);
}

/* A body that ends with rest bytes of p[0, n) left over. */
static void chunked_ok(const char *p, size_t n, const char *body, size_t rest) {
  chunked_is(p, n, UINT64_MAX, HTTP_CHUNK_DONE, body, strlen(body), n - rest);
}

/* A body refused with status, after body was handed out. */
static void chunked_bad(const char *p, size_t n, const char *body, int status) {
  chunked_is(p, n, UINT64_MAX, -status, body, strlen(body), 0);
}

static void chunked_body_is_reassembled(void **state) {
  (void)state;
  chunked_ok(S("5\r\nhello\r\n0\r\n\r\n"), "hello", 0);
  chunked_ok(S("0\r\n\r\n"), "", 0);
  chunked_ok(S("1\r\na\r\na\r\n0123456789\r\nA\r\nABCDEFGHIJ\r\n"
               "0000\r\n\r\n"),
             "a0123456789ABCDEFGHIJ", 0);
  chunked_ok(S("0005\r\nhello\r\n000\r\n\r\n"), "hello", 0);
  chunked_ok(S("5\r\nhe\r\nl\r\n0\r\n\r\n"), "he\r\nl", 0);
}

static void chunked_stops_at_the_end_of_the_body(void **state) {
  (void)state;
  /* The next pipelined request is not consumed. */
  chunked_ok(S("3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"), "abc", 18);
  chunked_ok(S("0\r\n\r\n0\r\n\r\n"), "", 5);
}

static void chunk_extensions_are_checked_and_dropped(void **state) {
  (void)state;
  chunked_ok(S("5;name=value\r\nhello\r\n0;last\r\n\r\n"), "hello", 0);
  chunked_ok(S("5 ;\ta = b ; c=\"q \\\" \\\\ x\" ;d\r\nhello\r\n0\r\n\r\n"),
             "hello", 0);
  chunked_ok(S("5;a;b=c;e=\"\"\r\nhello\r\n0\r\n\r\n"), "hello", 0);
  chunked_ok(S("5;a ;b\t;c=\"\"\t;d\r\nhello\r\n0\r\n\r\n"), "hello", 0);
  chunked_ok(S("5;a=\"\x80\t\"\r\nhello\r\n0\r\n\r\n"), "hello", 0);
  chunked_bad(S("5;\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5;a=\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5 \r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5;a \r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5;a=b \r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5;a=\"b\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5;a=\"b\"c\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5;a=b c\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5;a@=b\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5;a=\"\\\x01\"\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5,a\r\nhello\r\n0\r\n\r\n"), "", 400);
}

static void trailer_fields_are_checked_and_dropped(void **state) {
  (void)state;
  chunked_ok(S("2\r\nhi\r\n0\r\nX-Sum: abc\r\nY:\r\nZ: \t\x80\r\n\r\nnext"),
             "hi", 4);
  chunked_bad(S("0\r\nX: a\r\n b\r\n\r\n"), "", 400);
  chunked_bad(S("0\r\n X: a\r\n\r\n"), "", 400);
  chunked_bad(S("0\r\nX : a\r\n\r\n"), "", 400);
  chunked_bad(S("0\r\n: a\r\n\r\n"), "", 400);
  chunked_bad(S("0\r\nX\r\n\r\n"), "", 400);
  chunked_bad(S("0\r\nX: a\0\r\n\r\n"), "", 400);
  chunked_bad(S("0\r\nX: a\n\r\n"), "", 400);
  chunked_bad(S("0\r\nX: a\rb\r\n\r\n"), "", 400);
  chunked_bad(S("0\r\nX: a\r\n\n"), "", 400);
  chunked_bad(S("0\r\n\n"), "", 400);
  chunked_bad(S("0\r\n\rX"), "", 400);
}

static void chunked_framing_errors_are_400(void **state) {
  (void)state;
  chunked_bad(S("g\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("-5\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("0x5\r\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5\nhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5\rhello\r\n0\r\n\r\n"), "", 400);
  chunked_bad(S("5\r\nhelloX\r\n0\r\n\r\n"), "hello", 400);
  chunked_bad(S("5\r\nhello\n0\r\n\r\n"), "hello", 400);
  chunked_bad(S("5\r\nhello\r0\r\n\r\n"), "hello", 400);
  chunked_bad(S("0\r\n"
                "\r\r\n"),
              "", 400);
  /* 2^64 does not fit: 400 even without a body limit. */
  chunked_bad(S("10000000000000000\r\n"), "", 400);
  chunked_is(S("FFFFFFFFFFFFFFFF\r\nab"), UINT64_MAX, HTTP_CHUNK_MORE, "ab", 2,
             0);
}

static void body_over_max_body_is_413_as_soon_as_a_size_proves_it(void **s) {
  (void)s;
  static const char ten[] = "4\r\n0123\r\n6\r\n456789\r\n0\r\n\r\n";
  chunked_is(S(ten), 10, HTTP_CHUNK_DONE, "0123456789", 10, sizeof ten - 1);
  chunked_is(S(ten), 9, -413, "0123", 4, 0);
  chunked_is(S("0\r\n\r\n"), 0, HTTP_CHUNK_DONE, "", 0, 5);
  chunked_is(S("1\r\n"), 0, -413, "", 0, 0);
  /* The digits alone prove it: no CRLF, no data needed. */
  chunked_is(S("1000"), 4095, -413, "", 0, 0);
  chunked_is(S("FFFFFFFFFFFFFFFFFFFF"), 1 << 20, -413, "", 0, 0);
  chunked_is(S("0000000000000000000000000001"), 1, HTTP_CHUNK_MORE, "", 0, 0);
}

static void an_incomplete_body_asks_for_more(void **state) {
  (void)state;
  chunked_is(S("5\r\nhel"), UINT64_MAX, HTTP_CHUNK_MORE, "hel", 3, 0);
  chunked_is(S("5\r\nhello\r\n0\r\nX: y\r\n"), UINT64_MAX, HTTP_CHUNK_MORE,
             "hello", 5, 0);
  chunked_is(S(""), UINT64_MAX, HTTP_CHUNK_MORE, "", 0, 0);
}

static void chunk_line_and_trailer_limits(void **state) {
  static char line[HTTP_MAX_CHUNK_LINE + 32];
  static char trailer[HTTP_MAX_HEAD + 32];
  (void)state;
  /* "5;" and a name filling the line to exactly HTTP_MAX_CHUNK_LINE. */
  memcpy(line, "5;", 2);
  memset(line + 2, 'e', HTTP_MAX_CHUNK_LINE - 2);
  memcpy(line + HTTP_MAX_CHUNK_LINE, "\r\nhello\r\n0\r\n\r\n", 14);
  chunked_ok(line, HTTP_MAX_CHUNK_LINE + 14, "hello", 0);
  line[HTTP_MAX_CHUNK_LINE] = 'e';
  chunked_bad(line, HTTP_MAX_CHUNK_LINE + 1, "", 400);
  /* A trailer section of exactly HTTP_MAX_HEAD bytes with its CRLF. */
  memcpy(trailer, "0\r\nX: ", 6);
  memset(trailer + 6, 'v', HTTP_MAX_HEAD - 7);
  memcpy(trailer + HTTP_MAX_HEAD - 1, "\r\n\r\n", 4);
  chunked_ok(trailer, HTTP_MAX_HEAD + 3, "", 0);
  trailer[HTTP_MAX_HEAD - 1] = 'v';
  memcpy(trailer + HTTP_MAX_HEAD, "\r\n\r\n", 4);
  chunked_bad(trailer, HTTP_MAX_HEAD + 4, "", 400);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(get_fills_every_field),
      cmocka_unit_test(post_with_content_length_stops_before_the_body),
      cmocka_unit_test(content_length_zero_and_the_largest),
      cmocka_unit_test(chunked_request),
      cmocka_unit_test(pipelined_pair_parses_one_head_at_a_time),
      cmocka_unit_test(connection_decides_keep_alive),
      cmocka_unit_test(odd_but_legal_whitespace_is_trimmed),
      cmocka_unit_test(any_token_method_and_target_form),
      cmocka_unit_test(leading_empty_lines_are_ignored_up_to_the_limit),
      cmocka_unit_test(request_line_of_8192_passes_8193_is_414),
      cmocka_unit_test(header_section_of_16384_passes_16385_is_431),
      cmocka_unit_test(long_request_line_and_long_header_section_pass),
      cmocka_unit_test(hundred_headers_pass_101_is_431),
      cmocka_unit_test(framing_conflicts_are_400),
      cmocka_unit_test(bad_content_length_is_400),
      cmocka_unit_test(transfer_coding_other_than_chunked_is_400),
      cmocka_unit_test(field_syntax_errors_are_400),
      cmocka_unit_test(bare_lf_and_lone_cr_are_400),
      cmocka_unit_test(host_missing_repeated_or_invalid_is_400),
      cmocka_unit_test(request_line_syntax_errors_are_400),
      cmocka_unit_test(version_garbage_is_400_other_versions_505),
      cmocka_unit_test(first_problem_in_the_bytes_wins),
      cmocka_unit_test(chunked_body_is_reassembled),
      cmocka_unit_test(chunked_stops_at_the_end_of_the_body),
      cmocka_unit_test(chunk_extensions_are_checked_and_dropped),
      cmocka_unit_test(trailer_fields_are_checked_and_dropped),
      cmocka_unit_test(chunked_framing_errors_are_400),
      cmocka_unit_test(body_over_max_body_is_413_as_soon_as_a_size_proves_it),
      cmocka_unit_test(an_incomplete_body_asks_for_more),
      cmocka_unit_test(chunk_line_and_trailer_limits),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
