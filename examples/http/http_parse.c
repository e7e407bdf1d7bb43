/*
 * http_parse — notes on the rules and on the choices made where the RFCs
 * leave one.  RFC 9112 is HTTP/1.1's message syntax, RFC 9110 HTTP's
 * semantics.  Every rejection is final: the server answers with the status
 * and closes the connection.
 *
 * The head (http_parse_request)
 * - Lines end in CRLF.  A bare LF or a CR not followed by LF anywhere in the
 *   head → 400 (9112 §2.2 lets a recipient accept a bare LF; we do not).
 * - Up to HTTP_MAX_EMPTY_LINES (8) empty lines before the request line are
 *   ignored (9112 §2.2 says a server SHOULD ignore at least one: a client
 *   may send a CRLF after a POST body); one more → 400.
 * - request-line = method SP request-target SP HTTP-version (9112 §3), with
 *   exactly one SP between the parts (9112 §3 allows other whitespace as a
 *   separator but calls it unsafe: → 400).  The method is a token (9110
 *   §9.1, tchar of §5.6.2); any token is accepted, so never 501: the server
 *   decides what it serves.  The target is one or more visible ASCII bytes
 *   (0x21-0x7E; 9112 §3.2 and RFC 3986: no SP, CTL or byte above 0x7E).
 *   The version is matched byte by byte against "HTTP/" DIGIT "." DIGIT
 *   (9112 §2.3; case-sensitive): a byte off that pattern → 400; a well-formed
 *   version other than HTTP/1.0 or HTTP/1.1 → 505 (9110 §15.6.6), decided
 *   once the whole line has been read.
 * - The request line without its CRLF may be HTTP_MAX_REQUEST_LINE (8192)
 *   bytes; the byte that would make it 8193 → 414 (9112 §3, 9110 §15.5.15).
 * - The header section — field lines and the final CRLF, after the request
 *   line — may be HTTP_MAX_HEAD (16384) bytes; over → 431 (RFC 6585 §5), as
 *   is a field line after HTTP_MAX_HEADERS (100) of them.  With the request
 *   line's own limit that bounds the whole head (HTTP_MAX_HEAD_TOTAL), the
 *   buffer a server needs: len >= HTTP_MAX_HEAD_TOTAL never gives 0.
 * - field-line = field-name ":" OWS field-value OWS (9112 §5).  The name is
 *   a non-empty token; whitespace between it and the colon → 400 (9112
 *   §5.1).  A line starting with SP or HTAB — obs-fold, or whitespace before
 *   the first field — → 400 (9112 §5.2, §2.2).  Value bytes: VCHAR,
 *   obs-text (0x80-0xFF), SP, HTAB (9110 §5.5); NUL or another CTL → 400.
 *   The value handed back is trimmed of SP/HTAB on both ends.
 * - Content-Length (9110 §8.6, 9112 §6.3): 1*DIGIT below 2^63, else 400
 *   (empty, sign, comma list, overflow).  A second Content-Length line → 400
 *   even with the same value (9110 allows identical repeats; we are strict).
 * - Transfer-Encoding (9112 §6.1): the value must be exactly "chunked"
 *   (case-insensitive; OWS around it is trimmed), else 400 — an unknown
 *   coding or a list such as "gzip, chunked" (9112 §6.1 suggests 501 for a
 *   coding the server does not know; this server refuses the framing with
 *   400).  A second Transfer-Encoding line, Transfer-Encoding together with
 *   Content-Length (9112 §6.1, §6.3: smuggling) and Transfer-Encoding in an
 *   HTTP/1.0 request (9112 §6.1: faulty framing) → 400.
 * - Host (9112 §3.2): missing in HTTP/1.1 → 400, a second one → 400 in any
 *   version, and a value with a byte outside those of uri-host [":" port]
 *   (RFC 3986 §3.2.2: unreserved, sub-delims, "%", ":", "[", "]") → 400.
 *   An empty Host is allowed.
 * - Connection (9110 §7.6.1, 9112 §9.3): a comma-separated token list,
 *   compared case-insensitively; "close" wins over "keep-alive".  Other
 *   options are ignored.
 * - The checks run in the order of the bytes, and a field's meaning is
 *   checked when its line ends: the first problem in the byte stream is the
 *   one reported, so a prefix of the input gives 0 or the final answer.
 *
 * The chunked body (http_chunked_feed; 9112 §7.1)
 * - chunk-size is 1*HEXDIG; a size past 2^64-1 → 400; a size that would
 *   take the body past max_body → 413 at the hex digit that proves it.
 * - chunk-ext = *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string
 *   ) ] ) (9112 §7.1.1, quoted-string of 9110 §5.6.4), checked and dropped.
 *   Whitespace before the CRLF not followed by ";" is outside that grammar
 *   → 400.  A chunk-size line over HTTP_MAX_CHUNK_LINE (4096) bytes → 400.
 * - chunk-data must be followed by CRLF, else 400.
 * - The trailer section (9112 §7.1.2) is checked like header fields (token
 *   name, no whitespace before the colon, no obs-fold, value bytes as
 *   above) and dropped; with its final CRLF it may be HTTP_MAX_HEAD bytes,
 *   more → 400.
 */
#include "http_parse.h"

#include <string.h>

/* ---- Byte classes. ------------------------------------------------------ */

static int is_digit(unsigned char c) {
  return c >= '0' && c <= '9';
}

static int is_alpha(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* tchar (RFC 9110 §5.6.2). */
static int is_tchar(unsigned char c) {
  return is_digit(c) || is_alpha(c) ||
         (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int is_vchar(unsigned char c) {
  return c >= 0x21 && c <= 0x7e;
}

static int is_ows(unsigned char c) {
  return c == ' ' || c == '\t';
}

/* A byte of a field value other than SP/HTAB: VCHAR or obs-text. */
static int is_field_vchar(unsigned char c) {
  return is_vchar(c) || c >= 0x80;
}

static int hex_value(unsigned char c) {
  if (is_digit(c))
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static int lower(unsigned char c) {
  return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* Whether p[0, n) is the lower-case word w, ignoring case. */
static int equals_nocase(const char *p, size_t n, const char *w) {
  if (n != strlen(w))
    return 0;
  for (size_t i = 0; i < n; i++)
    if (lower((unsigned char)p[i]) != (unsigned char)w[i])
      return 0;
  return 1;
}

/* ---- The head. ---------------------------------------------------------- */

/* A read position in the caller's buffer. */
typedef struct scan {
  const char *buf;
  size_t len;
  size_t pos;
  size_t limit; /* a byte needed at or past it: 431 */
} scan;

/* Flags of the fields seen so far. */
enum {
  SEEN_LENGTH = 1,
  SEEN_CHUNKED = 2,
  SEEN_CLOSE = 4,
  SEEN_KEEP_ALIVE = 8,
};

/* The byte at the read position: 1 and *c, 0 if it has not arrived yet, or
 * -431 if the head would pass its limit by needing it. */
static int peek(const scan *s, unsigned char *c) {
  if (s->pos >= s->limit)
    return -431;
  if (s->pos >= s->len)
    return 0;
  *c = (unsigned char)s->buf[s->pos];
  return 1;
}

/* Consumes the LF of a CRLF whose CR was just consumed. */
static int take_lf(scan *s) {
  unsigned char c;
  int rc = peek(s, &c);
  if (rc <= 0)
    return rc;
  if (c != '\n')
    return -400;
  s->pos++;
  return 1;
}

static int skip_empty_lines(scan *s) {
  for (int n = 0;; n++) {
    unsigned char c;
    int rc = peek(s, &c);
    if (rc <= 0 || c != '\r')
      return rc;
    if (n == HTTP_MAX_EMPTY_LINES)
      return -400;
    s->pos++;
    if ((rc = take_lf(s)) <= 0)
      return rc;
  }
}

/* Whether c can be byte i of "HTTP/" DIGIT "." DIGIT. */
static int version_byte_ok(size_t i, unsigned char c) {
  if (i < 5)
    return c == (unsigned char)"HTTP/"[i];
  if (i == 5 || i == 7)
    return is_digit(c);
  return i == 6 && c == '.';
}

static int request_line(scan *s, http_request *req) {
  const size_t start = s->pos;
  size_t sp1 = 0, sp2 = 0; /* offsets of the two SPs; 0: not seen yet */
  for (;; s->pos++) {
    unsigned char c;
    int rc = peek(s, &c);
    if (rc <= 0)
      return rc;
    size_t off = s->pos - start;
    if (c == '\r')
      break;
    if (off >= HTTP_MAX_REQUEST_LINE)
      return -414;
    if (!sp1) {
      if (c == ' ' && off > 0)
        sp1 = off;
      else if (!is_tchar(c))
        return -400;
    } else if (!sp2) {
      if (c == ' ' && off > sp1 + 1)
        sp2 = off;
      else if (!is_vchar(c))
        return -400;
    } else if (!version_byte_ok(off - sp2 - 1, c)) {
      return -400;
    }
  }
  const char *line = s->buf + start;
  const char *version = line + sp2 + 1;
  if (!sp2 || s->buf + s->pos - version != 8)
    return -400;
  s->pos++;
  int rc = take_lf(s);
  if (rc <= 0)
    return rc;
  if (version[5] != '1' || (version[7] != '0' && version[7] != '1'))
    return -505;
  req->method = line;
  req->method_len = sp1;
  req->target = line + sp1 + 1;
  req->target_len = sp2 - sp1 - 1;
  req->minor = version[7] - '0';
  return 1;
}

/* A byte of uri-host [ ":" port ] (RFC 3986 §3.2.2, §3.2.3). */
static int is_host_byte(unsigned char c) {
  return is_digit(c) || is_alpha(c) ||
         (c != 0 && strchr("-._~!$&'()*+,;=%:[]", c) != NULL);
}

static int parse_content_length(const http_header *h, uint64_t *out) {
  const uint64_t max = UINT64_C(0x7fffffffffffffff);
  uint64_t v = 0;
  if (h->value_len == 0)
    return -400;
  for (size_t i = 0; i < h->value_len; i++) {
    unsigned char c = (unsigned char)h->value[i];
    if (!is_digit(c) || v > (max - (c - '0')) / 10)
      return -400;
    v = v * 10 + (c - '0');
  }
  *out = v;
  return 1;
}

/* Sets SEEN_CLOSE / SEEN_KEEP_ALIVE from a Connection value. */
static void connection_options(const http_header *h, unsigned *seen) {
  const char *p = h->value, *end = h->value + h->value_len;
  while (p < end) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *e = comma ? comma : end;
    const char *b = p;
    while (b < e && is_ows((unsigned char)*b))
      b++;
    while (e > b && is_ows((unsigned char)e[-1]))
      e--;
    if (equals_nocase(b, (size_t)(e - b), "close"))
      *seen |= SEEN_CLOSE;
    else if (equals_nocase(b, (size_t)(e - b), "keep-alive"))
      *seen |= SEEN_KEEP_ALIVE;
    p = comma ? comma + 1 : end;
  }
}

static int host_field(const http_header *h, http_request *req) {
  if (req->host)
    return -400;
  for (size_t i = 0; i < h->value_len; i++)
    if (!is_host_byte((unsigned char)h->value[i]))
      return -400;
  req->host = h->value;
  req->host_len = h->value_len;
  return 1;
}

/* Applies the meaning of a complete field line to req. */
static int apply_field(const http_header *h, http_request *req,
                       unsigned *seen) {
  if (equals_nocase(h->name, h->name_len, "content-length")) {
    if (*seen & (SEEN_LENGTH | SEEN_CHUNKED))
      return -400;
    *seen |= SEEN_LENGTH;
    req->body = HTTP_BODY_LENGTH;
    return parse_content_length(h, &req->content_length);
  }
  if (equals_nocase(h->name, h->name_len, "transfer-encoding")) {
    if (req->minor == 0 || (*seen & (SEEN_LENGTH | SEEN_CHUNKED)) ||
        !equals_nocase(h->value, h->value_len, "chunked"))
      return -400;
    *seen |= SEEN_CHUNKED;
    req->body = HTTP_BODY_CHUNKED;
    return 1;
  }
  if (equals_nocase(h->name, h->name_len, "host"))
    return host_field(h, req);
  if (equals_nocase(h->name, h->name_len, "connection"))
    connection_options(h, seen);
  return 1;
}

/* The value of a field line from after its colon through its CRLF. */
static int field_value(scan *s, http_header *h) {
  size_t first = 0, end = 0; /* of the trimmed value; first 0: none yet */
  for (;; s->pos++) {
    unsigned char c;
    int rc = peek(s, &c);
    if (rc <= 0)
      return rc;
    if (c == '\r')
      break;
    if (is_field_vchar(c)) {
      if (!first)
        first = s->pos;
      end = s->pos + 1;
    } else if (!is_ows(c)) {
      return -400;
    }
  }
  h->value = s->buf + (first ? first : s->pos);
  h->value_len = first ? end - first : 0;
  s->pos++;
  return take_lf(s);
}

/* One field line, or the empty line ending the head (returns 2). */
static int field_line(scan *s, http_request *req, unsigned *seen) {
  unsigned char c;
  int rc = peek(s, &c);
  if (rc <= 0)
    return rc;
  if (c == '\r') {
    s->pos++;
    rc = take_lf(s);
    return rc <= 0 ? rc : 2;
  }
  if (req->nheaders == HTTP_MAX_HEADERS)
    return -431;
  http_header *h = &req->headers[req->nheaders];
  h->name = s->buf + s->pos;
  while (is_tchar(c)) {
    s->pos++;
    if ((rc = peek(s, &c)) <= 0)
      return rc;
  }
  h->name_len = (size_t)(s->buf + s->pos - h->name);
  if (c != ':' || h->name_len == 0)
    return -400;
  s->pos++;
  if ((rc = field_value(s, h)) <= 0)
    return rc;
  req->nheaders++;
  return apply_field(h, req, seen);
}

int http_parse_request(const char *buf, size_t len, http_request *req) {
  scan s = {buf, len, 0, HTTP_MAX_HEAD_TOTAL};
  unsigned seen = 0;
  req->nheaders = 0;
  req->body = HTTP_BODY_NONE;
  req->content_length = 0;
  req->host = NULL;
  req->host_len = 0;
  int rc = skip_empty_lines(&s);
  if (rc > 0)
    rc = request_line(&s, req);
  s.limit = s.pos + HTTP_MAX_HEAD; /* the header section starts here */
  while (rc == 1)
    rc = field_line(&s, req, &seen);
  if (rc <= 0)
    return rc;
  if (req->minor == 1 && !req->host)
    return -400;
  if (seen & SEEN_CLOSE)
    req->keep_alive = 0;
  else
    req->keep_alive = req->minor == 1 || (seen & SEEN_KEEP_ALIVE);
  return (int)s.pos;
}

/* ---- The chunked body. -------------------------------------------------- */

enum chunk_state {
  C_SIZE_FIRST,    /* the first hex digit of a chunk size */
  C_SIZE,          /* more hex digits */
  C_BWS_SEMI,      /* BWS that only ";" may end */
  C_EXT_NAME0,     /* BWS, then the first tchar of an extension name */
  C_EXT_NAME,      /* more of the name */
  C_EXT_NAME_BWS,  /* BWS after a name: ";" or "=" follows */
  C_EXT_VALUE0,    /* BWS, then a token or a quoted string */
  C_EXT_TOKEN,     /* more of a token value */
  C_EXT_QUOTED,    /* inside a quoted string */
  C_EXT_QPAIR,     /* after a backslash in it */
  C_EXT_QUOTE_END, /* right after the closing quote */
  C_LINE_LF,       /* the LF ending the chunk-size line */
  C_DATA,          /* chunk data; remaining bytes of it */
  C_DATA_CR,       /* the CRLF after chunk data */
  C_DATA_LF,
  /* After the chunk-size line states: framing_byte() relies on the order. */
  C_TRAILER_LINE, /* the start of a trailer field line or the final CRLF */
  C_TRAILER_NAME,
  C_TRAILER_VALUE,
  C_TRAILER_LF,
  C_END_LF, /* the LF of the final CRLF */
  C_DONE,
  C_FAILED,
};

void http_chunked_init(http_chunked *c, uint64_t max_body) {
  c->max_body = max_body;
  c->total = 0;
  c->remaining = 0;
  c->count = 0;
  c->state = C_SIZE_FIRST;
  c->status = 0;
}

/* A hex digit of the chunk size. */
static int size_digit(http_chunked *c, int d) {
  if (c->remaining > (UINT64_MAX - (uint64_t)d) / 16)
    return -400;
  c->remaining = c->remaining * 16 + (uint64_t)d;
  if (c->remaining > c->max_body - c->total)
    return -413;
  c->state = C_SIZE;
  return 0;
}

/* A byte where a chunk extension may go on: ";", CR, or BWS (then next). */
static int ext_continue(http_chunked *c, unsigned char b, int next) {
  if (b == ';')
    c->state = C_EXT_NAME0;
  else if (b == '\r')
    c->state = C_LINE_LF;
  else if (is_ows(b))
    c->state = next;
  else
    return -400;
  return 0;
}

/* Where c->state goes on a quoted-string byte. */
static int quoted_byte(http_chunked *c, unsigned char b) {
  if (c->state == C_EXT_QPAIR) {
    if (!is_ows(b) && !is_field_vchar(b))
      return -400;
    c->state = C_EXT_QUOTED;
  } else if (b == '"') {
    c->state = C_EXT_QUOTE_END;
  } else if (b == '\\') {
    c->state = C_EXT_QPAIR;
  } else if (!is_ows(b) && !is_field_vchar(b)) {
    return -400; /* qdtext is all of those but '"' and '\', taken above */
  }
  return 0;
}

/* A byte of a chunk extension (after the first ";" of the line). */
static int ext_byte(http_chunked *c, unsigned char b) {
  switch (c->state) {
    case C_EXT_NAME0:
      if (is_tchar(b))
        c->state = C_EXT_NAME;
      else if (!is_ows(b))
        return -400;
      return 0;
    case C_EXT_NAME:
      if (b == '=') {
        c->state = C_EXT_VALUE0;
        return 0;
      }
      return is_tchar(b) ? 0 : ext_continue(c, b, C_EXT_NAME_BWS);
    case C_EXT_NAME_BWS:
      if (b == '=')
        c->state = C_EXT_VALUE0;
      else if (b == ';')
        c->state = C_EXT_NAME0;
      else if (!is_ows(b))
        return -400;
      return 0;
    case C_EXT_VALUE0:
      if (b == '"')
        c->state = C_EXT_QUOTED;
      else if (is_tchar(b))
        c->state = C_EXT_TOKEN;
      else if (!is_ows(b))
        return -400;
      return 0;
    case C_EXT_TOKEN:
      return is_tchar(b) ? 0 : ext_continue(c, b, C_BWS_SEMI);
    case C_EXT_QUOTED:
    case C_EXT_QPAIR:
      return quoted_byte(c, b);
    default: /* C_EXT_QUOTE_END */
      return ext_continue(c, b, C_BWS_SEMI);
  }
}

/* A byte of the chunk-size line: the size, then extensions. */
static int size_line_byte(http_chunked *c, unsigned char b) {
  if (b != '\r' && c->count++ == HTTP_MAX_CHUNK_LINE)
    return -400;
  int hex = hex_value(b);
  switch (c->state) {
    case C_SIZE_FIRST:
      return hex < 0 ? -400 : size_digit(c, hex);
    case C_SIZE:
      return hex >= 0 ? size_digit(c, hex) : ext_continue(c, b, C_BWS_SEMI);
    case C_BWS_SEMI:
      if (b == ';')
        c->state = C_EXT_NAME0;
      else if (!is_ows(b))
        return -400;
      return 0;
    default:
      return ext_byte(c, b);
  }
}

/* A byte of the trailer section. */
static int trailer_byte(http_chunked *c, unsigned char b) {
  if (++c->count > HTTP_MAX_HEAD)
    return -400;
  switch (c->state) {
    case C_TRAILER_LINE:
      if (b == '\r')
        c->state = C_END_LF;
      else if (is_tchar(b))
        c->state = C_TRAILER_NAME;
      else
        return -400; /* obs-fold, an empty name, a bare LF, ... */
      return 0;
    case C_TRAILER_NAME:
      if (b == ':')
        c->state = C_TRAILER_VALUE;
      else if (!is_tchar(b))
        return -400;
      return 0;
    case C_TRAILER_VALUE:
      if (b == '\r')
        c->state = C_TRAILER_LF;
      else if (!is_ows(b) && !is_field_vchar(b))
        return -400;
      return 0;
    case C_TRAILER_LF:
      if (b != '\n')
        return -400;
      c->state = C_TRAILER_LINE;
      return 0;
    default: /* C_END_LF */
      if (b != '\n')
        return -400;
      c->state = C_DONE;
      return 0;
  }
}

/* One byte of framing (anything but chunk data). */
static int framing_byte(http_chunked *c, unsigned char b) {
  switch (c->state) {
    case C_LINE_LF:
      if (b != '\n')
        return -400;
      c->total += c->remaining;
      c->state = c->remaining ? C_DATA : C_TRAILER_LINE;
      c->count = 0;
      return 0;
    case C_DATA_CR:
      if (b != '\r')
        return -400;
      c->state = C_DATA_LF;
      return 0;
    case C_DATA_LF:
      if (b != '\n')
        return -400;
      c->state = C_SIZE_FIRST;
      c->count = 0;
      return 0;
    default:
      return c->state >= C_TRAILER_LINE ? trailer_byte(c, b)
                                        : size_line_byte(c, b);
  }
}

int http_chunked_feed(http_chunked *c, const char *in, size_t len, size_t *used,
                      const char **data, size_t *data_len) {
  size_t pos = 0;
  *data = NULL;
  *data_len = 0;
  if (c->state == C_DONE || c->state == C_FAILED) {
    *used = 0;
    return c->status;
  }
  while (pos < len) {
    if (c->state == C_DATA) {
      size_t n = len - pos;
      if (c->remaining < n)
        n = (size_t)c->remaining;
      *data = in + pos;
      *data_len = n;
      c->remaining -= n;
      if (c->remaining == 0)
        c->state = C_DATA_CR;
      *used = pos + n;
      return HTTP_CHUNK_DATA;
    }
    int rc = framing_byte(c, (unsigned char)in[pos]);
    if (rc < 0) {
      c->state = C_FAILED;
      c->status = rc;
      *used = pos;
      return rc;
    }
    pos++;
    if (c->state == C_DONE) {
      c->status = HTTP_CHUNK_DONE;
      *used = pos;
      return HTTP_CHUNK_DONE;
    }
  }
  *used = len;
  return HTTP_CHUNK_MORE;
}
