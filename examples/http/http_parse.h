/*
 * http_parse — the HTTP/1.1 request-head parser and chunked-body decoder of
 * the example HTTP server.  Pure functions over bytes: no I/O, no
 * allocation, no global state.  Every pointer handed back points into the
 * caller's buffer.  The rules, and the choices made where the RFCs leave
 * one, are listed at the top of http_parse.c.
 */
#ifndef HTTP_PARSE_H
#define HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* The request line without its CRLF may be this long; longer → 414. */
#define HTTP_MAX_REQUEST_LINE 8192
/* The header section — the field lines after the request line, through the
 * CRLF of the blank line that ends it — may be this long; longer → 431.
 * Also the limit of a chunked body's trailer section. */
#define HTTP_MAX_HEAD 16384
/* More header lines than this → 431. */
#define HTTP_MAX_HEADERS 100
/* Empty lines (CRLF) before the request line that are ignored; more → 400. */
#define HTTP_MAX_EMPTY_LINES 8
/* The longest head: empty lines, the request line with its CRLF, the header
 * section.  A caller whose buffer holds this many bytes always gets an
 * answer: http_parse_request() never returns 0 once len >= it. */
#define HTTP_MAX_HEAD_TOTAL                                                    \
  (2 * HTTP_MAX_EMPTY_LINES + HTTP_MAX_REQUEST_LINE + 2 + HTTP_MAX_HEAD)
/* A chunk-size line (size and extensions, without its CRLF); longer → 400. */
#define HTTP_MAX_CHUNK_LINE 4096

/* Pointers into the caller's buffer; the value is trimmed of leading and
 * trailing SP/HTAB. */
typedef struct http_header {
  const char *name;
  size_t name_len;
  const char *value;
  size_t value_len;
} http_header;

enum http_body { HTTP_BODY_NONE, HTTP_BODY_LENGTH, HTTP_BODY_CHUNKED };

/* Filled by http_parse_request(); meaningful only after it returned > 0. */
typedef struct http_request {
  const char *method;
  size_t method_len;
  const char *target;
  size_t target_len;
  int minor; /* HTTP/1.<minor>: 0 or 1 */
  http_header headers[HTTP_MAX_HEADERS];
  size_t nheaders;
  enum http_body body;     /* from Content-Length / Transfer-Encoding */
  uint64_t content_length; /* HTTP_BODY_LENGTH; below 2^63 */
  /* HTTP/1.1: on unless "Connection: close"; HTTP/1.0: off unless
   * "Connection: keep-alive" (and no "close"). */
  int keep_alive;
  const char *host; /* the Host header's value, NULL if absent */
  size_t host_len;
} http_request;

/* Parses the request head at the start of buf[0, len).
 *  > 0: a complete and valid head; the number of bytes it takes (through the
 *       blank line).  req is filled.
 *  0:   incomplete, no limit exceeded yet: call again with more bytes (the
 *       caller keeps them).
 *  < 0: -(the HTTP status to answer with, then close): -400, -414, -431 or
 *       -505.  Any token is accepted as a method: the server decides what
 *       it serves (so never -501).
 * The answer is the same whether the bytes come at once or a few at a time
 * (each call with a longer len): a shorter prefix gives 0 or that same
 * answer.  A limit is reported as soon as the bytes seen prove it.  Each
 * call reads the head from its start again, so a caller that receives
 * small pieces may skip calls until the new bytes hold a LF or the buffer
 * holds HTTP_MAX_HEAD bytes (errors are then only found later). */
int http_parse_request(const char *buf, size_t len, http_request *req);

/* Return values of http_chunked_feed() besides the negative statuses. */
enum {
  HTTP_CHUNK_MORE = 0,
  HTTP_CHUNK_DATA = 1,
  HTTP_CHUNK_DONE = 2,
};

/* The chunked transfer-coding decoder over a stream, zero-copy. */
typedef struct http_chunked {
  /* private */
  uint64_t max_body;  /* the limit on the decoded body */
  uint64_t total;     /* body bytes announced by chunk sizes so far */
  uint64_t remaining; /* of the current chunk's size / data */
  size_t count;       /* bytes of the current chunk line or trailer section */
  int state;
  int status; /* the answer repeated once done or failed */
} http_chunked;

void http_chunked_init(http_chunked *c, uint64_t max_body);

/* Consumes input from in[0, len).  Returns:
 *  HTTP_CHUNK_DATA: *data, *data_len is a piece of body (pointing into in,
 *    data_len > 0); *used bytes of in were consumed, through that piece:
 *    call again with in + *used.
 *  HTTP_CHUNK_MORE: all of in was consumed (*used == len) and there is
 *    nothing to hand out yet: call again with more input.
 *  HTTP_CHUNK_DONE: the body ended (the last chunk and the trailer section,
 *    whose fields are checked and dropped, are consumed); the bytes after
 *    *used belong to the next request.
 *  < 0: -400 (bad framing: bad hex, missing CRLF, chunk-size overflow, bad
 *    chunk extension, chunk line over HTTP_MAX_CHUNK_LINE, trailer section
 *    over HTTP_MAX_HEAD or malformed) or -413 (the body would exceed
 *    max_body; reported at the chunk-size digit that proves it).
 * Once DONE or an error was returned, later calls return it again and
 * consume nothing. */
int http_chunked_feed(http_chunked *c, const char *in, size_t len, size_t *used,
                      const char **data, size_t *data_len);

#endif
