/*
 * Race invariants, 10,000 iterations each (see race_setup for wine): an
 * op's completion races its cancel, the close of its handle, its deadline,
 * and the release and reuse of the connection slot it belongs to.  Each
 * iteration must have exactly one outcome (never two callbacks, never
 * none), the outcome must be one the contract allows, and no byte may be
 * lost either way.  Timing varies from one iteration to the next (what
 * happens before the loop first looks, busy-waits of a few microseconds,
 * timers of 0-2 ms, a sender on another thread) so that both outcomes occur
 * on every backend; each test prints how often each one did.
 *
 * The sender thread runs a loop of its own and learns what to send through
 * a socket; the only memory the two threads share while they run is its
 * table of peers, handed over through atomics (nothing a race detector
 * would have to take on trust).
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "conf.h"

/* Rounds per race: 10,000 on every backend (under wine too, where each
 * round costs several trips to the wine server), or PX_RACE_ROUNDS for a
 * longer or shorter run by hand.  Every test prints the count it ran. */
static int race_rounds;

static void race_setup(void) {
  const char *env = getenv("PX_RACE_ROUNDS");
  /* Thousands of rounds on a loaded machine (or under wine) may need more
   * than the usual 30 s; a hung round still fails within its RUN_UNTIL. */
  pt_hang_guard(120);
  long n = env != NULL ? strtol(env, NULL, 10) : 0;
  race_rounds = n > 0 && n <= 1000000 ? (int)n : 10000;
}

/* Busy-waits us microseconds: varies timing inside an iteration.  Nothing
 * waits for a result this way (RUN_UNTIL does that). */
static void spin_us(unsigned us) {
  uint64_t end = pt_now_us() + us;
  while (pt_now_us() < end) {
  }
}

static void raw_send_byte(px_fd fd, uint8_t b) {
  assert_int_equal(pt_raw_send(fd, &b, 1), 1);
}

static void assert_nothing_in_flight(px_loop *loop) {
  px_stats st;
  px_loop_stats(loop, &st);
  assert_int_equal(st.in_flight, 0);
}

/* The first failure seen inside a callback (callbacks record, the test
 * asserts once the loop has returned). */
typedef struct race_log {
  int failed;
  char msg[256];
} race_log;

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
race_fail(race_log *g, const char *fmt, ...) {
  va_list ap;
  if (g->failed++)
    return;
  va_start(ap, fmt);
  vsnprintf(g->msg, sizeof(g->msg), fmt, ap);
  va_end(ap);
}

static void race_assert_ok(const race_log *g) {
  if (g->failed)
    fail_msg("%s (%d failures in all)", g->msg, g->failed);
}

/* ---- The sender thread. -------------------------------------------------
 *
 * A request is one byte b written to ctl; the sender writes that same byte
 * to peers[b % SENDER_PEERS] after a busy-wait of its own choosing (0-50
 * us, or up to max_delay_us), and with SENDER_CLOSE in b it then closes that
 * peer and marks the entry free (PX_INVALID_FD): the test has handed the peer
 * over.  The two high bits of b are free for the test (a round number). Closing
 * ctl ends the sender. */

enum { SENDER_PEERS = 32, SENDER_CLOSE = 0x20 };

typedef struct sender {
  px_loop *loop; /* the sender's, run on its thread */
  px_fd ctl;     /* the test's end of the request channel (raw) */
  px_fd ctl_in;  /* the sender's end, known to its loop */
  _Atomic(px_fd) peers[SENDER_PEERS];
  px_op op;
  uint8_t buf[64];
  uint32_t rng;
  unsigned max_delay_us;    /* set before the start */
  int sent, errors, run_rc; /* read after the join */
  pt_thread *thread;
} sender;

static void sender_cb(px_loop *loop, px_op *op) {
  sender *s = op->data;
  if (op->result <= 0) { /* the test closed its end: done */
    s->errors += op->result < 0;
    s->errors += px_fd_close(loop, s->ctl_in) != 0;
    return;
  }
  for (int i = 0; i < op->result; i++) {
    uint8_t b = s->buf[i];
    _Atomic(px_fd) *slot = &s->peers[b % SENDER_PEERS];
    px_fd peer = atomic_load(slot);
    s->rng = s->rng * 1103515245u + 12345u;
    spin_us((s->rng >> 16) % (s->max_delay_us + 1));
    int n = pt_raw_send(peer, &b, 1);
    if (b & SENDER_CLOSE) { /* the other end may be closed: any result */
      pt_raw_close(peer);
      atomic_store(slot, PX_INVALID_FD);
    } else {
      s->errors += n != 1;
    }
    s->sent++;
  }
  s->errors +=
      px_recv(loop, op, s->ctl_in, s->buf, sizeof(s->buf), sender_cb, s) != 0;
}

static void sender_main(void *arg) {
  sender *s = arg;
  /* A send to a peer whose other end is closed raises SIGPIPE where there
   * is one: here it stays pending in this thread, never delivered. */
  pt_block_all_signals();
  s->run_rc = px_run(s->loop, PX_RUN_DEFAULT);
}

static void sender_init(sender *s) {
  s->max_delay_us = 50;
  for (int i = 0; i < SENDER_PEERS; i++)
    atomic_init(&s->peers[i], PX_INVALID_FD);
}

/* Starts the sender; the peers it sends to without SENDER_CLOSE must be
 * filled in first. */
static void sender_start(sender *s) {
  px_fd ctl[2];
  s->loop = new_loop();
  s->rng = 12345;
  assert_int_equal(pt_raw_socketpair(ctl), 0);
  assert_int_equal(px_adopt(s->loop, ctl[1]), 0);
  s->ctl = ctl[0];
  s->ctl_in = ctl[1];
  assert_int_equal(
      px_recv(s->loop, &s->op, s->ctl_in, s->buf, sizeof(s->buf), sender_cb, s),
      0);
  assert_int_equal(pt_thread_start(&s->thread, sender_main, s), 0);
}

static void sender_request(sender *s, uint8_t b) {
  raw_send_byte(s->ctl, b);
}

/* Hands peer over to the sender, which sends one byte to it and closes it.
 * The byte is returned: the high bits of hi, SENDER_CLOSE and the peer's
 * entry. */
static uint8_t sender_send_and_close(sender *s, px_fd peer, int round,
                                     uint8_t hi) {
  int idx = round % SENDER_PEERS;
  _Atomic(px_fd) *slot = &s->peers[idx];
  /* The entry was handed over SENDER_PEERS rounds ago: the sender is done
   * with it long since, but check. */
  uint64_t dl = pt_now_ms() + 5000;
  while (atomic_load(slot) != PX_INVALID_FD && pt_now_ms() < dl) {
  }
  assert_true(atomic_load(slot) == PX_INVALID_FD);
  atomic_store(slot, peer);
  uint8_t b = (uint8_t)((hi & 0xc0) | SENDER_CLOSE | idx);
  sender_request(s, b);
  return b;
}

/* Ends the sender; returns how many bytes it sent. */
static int sender_stop(sender *s) {
  pt_raw_close(s->ctl);
  pt_thread_join(s->thread);
  assert_int_equal(s->errors, 0);
  assert_int_equal(s->run_rc, 0);
  finish(s->loop); /* nothing in flight: freed from this thread */
  return s->sent;
}

/* ---- Cancel vs completion. ----------------------------------------------
 *
 * One op at a time, cancelled at a varying moment: a recv on a socket (data
 * written just before or after the cancel, before or after the loop first
 * looked, or by the sender thread while this one busy-waits, and a cancel
 * from inside another op's callback), a timer, a NOP, a file read.  The
 * target completes once, with its real result or PX_ECANCELED, and the
 * cancel once, agreeing: PX_ECANCELED only after a cancel that reached it
 * (0), and a cancel that found it done (PX_ENOENT) or past stopping
 * (PX_EALREADY) only beside its real result.  A target whose callback had
 * run before px_cancel was called is not in flight: PX_ENOENT.  A cancelled
 * recv took nothing: its byte is read afterwards.
 */

enum { K_RECV, K_TIMER, K_NOP, K_FILE, K_COUNT };
static const char *const kind_name[K_COUNT] = {"recv", "timer", "nop",
                                               "file read"};

typedef struct cancel_race {
  px_loop *loop;
  px_fd sock, peer, file;
  sender snd;
  px_op target, cancel, nop;
  rec tr, cr;
  int calls_at_cancel; /* tr.calls when px_cancel was called */
  int nop_calls, refused;
  uint8_t in[4], fbuf[16];
} cancel_race;

static void cancel_now(cancel_race *k) {
  k->calls_at_cancel = k->tr.calls;
  assert_int_equal(px_cancel(k->loop, &k->cancel, &k->target, rec_cb, &k->cr),
                   0);
}

static void cancel_from_cb(px_loop *loop, px_op *op) {
  cancel_race *k = op->data;
  k->nop_calls++;
  k->calls_at_cancel = k->tr.calls;
  int rc = px_cancel(loop, &k->cancel, &k->target, rec_cb, &k->cr);
  if (rc != 0)
    k->refused = rc;
}

static void nowait(px_loop *loop) {
  assert_true(px_run(loop, PX_RUN_NOWAIT) >= 0);
}

/* Submits iteration i's target; returns its kind. */
static int cancel_submit(cancel_race *k, int i) {
  int v = i % 10;
  if (v <= 6) {
    k->in[0] = (uint8_t) ~(i << 6);
    assert_int_equal(px_recv(k->loop, &k->target, k->sock, k->in, sizeof(k->in),
                             rec_cb, &k->tr),
                     0);
    return K_RECV;
  }
  if (v == 7) {
    /* Mostly a 0 ms timer; one in four times a 1 ms timer cancelled after
     * about 1 ms, around its expiry. */
    uint64_t ms = i % 40 == 7 ? 1 : 0;
    assert_int_equal(px_timeout(k->loop, &k->target, ms, rec_cb, &k->tr), 0);
    return K_TIMER;
  }
  if (v == 8) {
    assert_int_equal(px_nop(k->loop, &k->target, rec_cb, &k->tr), 0);
    return K_NOP;
  }
  memset(k->fbuf, 0, sizeof(k->fbuf));
  assert_int_equal(px_read(k->loop, &k->target, k->file, k->fbuf,
                           sizeof(k->fbuf), 0, rec_cb, &k->tr),
                   0);
  return K_FILE;
}

/* The data and the cancel of iteration i, in one of its orders. */
static void cancel_act(cancel_race *k, int i) {
  uint8_t byte = (uint8_t)(i << 6); /* sender peer 0 */
  switch (i % 10) {
    case 0: /* before the loop looked: the recv never saw data */
      cancel_now(k);
      raw_send_byte(k->peer, byte);
      break;
    case 1: /* data waiting before the loop looked */
      raw_send_byte(k->peer, byte);
      cancel_now(k);
      break;
    case 2: /* the recv waits in the kernel; data, then the cancel */
      nowait(k->loop);
      raw_send_byte(k->peer, byte);
      cancel_now(k);
      break;
    case 3:
      nowait(k->loop);
      cancel_now(k);
      raw_send_byte(k->peer, byte);
      break;
    case 4: /* the loop may have seen the data by the cancel */
      nowait(k->loop);
      raw_send_byte(k->peer, byte);
      spin_us((unsigned)(i % 41));
      nowait(k->loop);
      cancel_now(k);
      break;
    case 5: /* the data comes from the sender thread, any time */
      nowait(k->loop);
      sender_request(&k->snd, byte);
      spin_us((unsigned)(i % 61));
      nowait(k->loop);
      cancel_now(k);
      break;
    case 6: /* cancelled from the callback of a NOP */
      raw_send_byte(k->peer, byte);
      if ((i / 10) & 1)
        nowait(k->loop);
      assert_int_equal(px_nop(k->loop, &k->nop, cancel_from_cb, k), 0);
      break;
    case 7:
      spin_us(i % 40 == 7 ? 900 + (unsigned)(i % 300) : (unsigned)(i % 20));
      if (i % 40 == 7 || (i / 10) & 1)
        nowait(k->loop);
      cancel_now(k);
      break;
    default: /* NOP, file read */
      if ((i / 10) & 1)
        nowait(k->loop);
      spin_us((unsigned)(i % 30));
      cancel_now(k);
      break;
  }
}

/* The target's real result, checked. */
static void cancel_check_real(cancel_race *k, int i, int kind) {
  switch (kind) {
    case K_RECV:
      if (k->tr.result != 1)
        fail_msg("round %d: the recv completed with %d (%s)", i, k->tr.result,
                 px_strerror(k->tr.result));
      assert_int_equal(k->in[0], (uint8_t)(i << 6));
      break;
    case K_FILE:
      if (k->tr.result != (int)sizeof(k->fbuf))
        fail_msg("round %d: the file read completed with %d (%s)", i,
                 k->tr.result, px_strerror(k->tr.result));
      for (size_t j = 0; j < sizeof(k->fbuf); j++)
        assert_int_equal(k->fbuf[j], (uint8_t)('a' + j));
      break;
    default: /* timer, NOP */
      if (k->tr.result != 0)
        fail_msg("round %d: the %s completed with %d (%s)", i, kind_name[kind],
                 k->tr.result, px_strerror(k->tr.result));
      break;
  }
}

void race_cancel_vs_completion_has_one_outcome_each_time(void **state) {
  cancel_race k;
  px_fd sp[2];
  char path[256];
  uint8_t content[16];
  int cancelled[K_COUNT] = {0}, completed[K_COUNT] = {0}, nops = 0;
  int threaded = 0, late = 0;
  (void)state;
  race_setup();
  memset(&k, 0, sizeof(k));
  sender_init(&k.snd);
  k.loop = new_loop();
  assert_int_equal(pt_raw_socketpair(sp), 0);
  assert_int_equal(px_adopt(k.loop, sp[0]), 0);
  k.sock = sp[0];
  k.peer = sp[1];
  atomic_store(&k.snd.peers[0], k.peer);
  k.file = temp_file(k.loop, path, sizeof(path));
  for (size_t j = 0; j < sizeof(content); j++)
    content[j] = (uint8_t)('a' + j);
  assert_int_equal(sync_write(k.loop, k.file, content, sizeof(content), 0),
                   (int)sizeof(content));
  sender_start(&k.snd);
  uint64_t t0 = pt_now_ms();
  for (int i = 0; i < race_rounds; i++) {
    int tc = k.tr.calls, cc = k.cr.calls, nc = k.nop_calls;
    int kind = cancel_submit(&k, i);
    cancel_act(&k, i);
    nops += i % 10 == 6;
    threaded += i % 10 == 5;
    RUN_UNTIL(k.loop,
              k.refused || (k.tr.calls == tc + 1 && k.cr.calls == cc + 1 &&
                            k.nop_calls == nc + (i % 10 == 6)),
              5000);
    assert_int_equal(k.refused, 0);
    assert_int_equal(k.tr.calls, tc + 1);
    assert_int_equal(k.cr.calls, cc + 1);
    int cres = k.cr.result;
    if (cres != 0 && cres != PX_ENOENT && cres != PX_EALREADY)
      fail_msg("round %d: the cancel of a %s completed with %d (%s)", i,
               kind_name[kind], cres, px_strerror(cres));
    if (k.calls_at_cancel > tc && cres != PX_ENOENT)
      fail_msg("round %d: the cancel of a %s whose callback had run gave "
               "%d (%s), not PX_ENOENT",
               i, kind_name[kind], cres, px_strerror(cres));
    if (k.tr.result == PX_ECANCELED) {
      cancelled[kind]++;
      if (cres != 0)
        fail_msg("round %d: a %s completed with PX_ECANCELED, but its cancel "
                 "said %d (%s)",
                 i, kind_name[kind], cres, px_strerror(cres));
      if (kind == K_RECV) { /* the byte is still there */
        assert_int_equal(sync_recv(k.loop, k.sock, k.in, sizeof(k.in)), 1);
        assert_int_equal(k.in[0], (uint8_t)(i << 6));
      }
    } else {
      completed[kind]++;
      late += cres == 0; /* the cancel reached it as it finished */
      cancel_check_real(&k, i, kind);
    }
    assert_nothing_in_flight(k.loop);
  }
  uint64_t ms = pt_now_ms() - t0;
  settle(k.loop);
  /* No callback came twice after its iteration. */
  assert_int_equal(k.tr.calls, race_rounds);
  assert_int_equal(k.cr.calls, race_rounds);
  assert_int_equal(k.nop_calls, nops);
  assert_int_equal(sender_stop(&k.snd), threaded);
  int all_c = 0, all_d = 0;
  for (int j = 0; j < K_COUNT; j++) {
    all_c += cancelled[j];
    all_d += completed[j];
  }
  printf("cancel vs completion: %d iterations, %d cancelled, %d completed "
         "(recv %d/%d, timer %d/%d, nop %d/%d, file read %d/%d; %d completed "
         "though their cancel reached them), %d ms\n",
         race_rounds, all_c, all_d, cancelled[K_RECV], completed[K_RECV],
         cancelled[K_TIMER], completed[K_TIMER], cancelled[K_NOP],
         completed[K_NOP], cancelled[K_FILE], completed[K_FILE], late, (int)ms);
  /* Both outcomes, for recvs and timers whatever the backend: the orders
   * above include a cancel before the loop ever looked and one after the
   * callback ran.  (A NOP or a cached file read may always finish first.) */
  assert_true(cancelled[K_RECV] > 0 && completed[K_RECV] > 0);
  assert_true(cancelled[K_TIMER] > 0 && completed[K_TIMER] > 0);
  close_fd(k.loop, k.file);
  remove(path);
  close_fd(k.loop, k.sock);
  pt_raw_close(k.peer);
  finish(k.loop);
}

/* ---- Close vs completion. -----------------------------------------------
 *
 * A read waits on a fresh handle (a socket, or a pipe's read end) and data
 * comes at a varying moment while px_close closes the handle.  The read
 * completes once, with the data or PX_ECANCELED, before the close completes
 * (once, with 0); from the px_close call on, the handle is refused
 * (PX_EBADF).  Nothing touches it after the close: the next iteration's
 * handles usually get the same numbers, are adopted afresh and must carry
 * their own byte, intact, to their own read.
 */

typedef struct close_race {
  px_loop *loop;
  sender snd;
  px_op rop, wop, cop, probe;
  rec rr, wr, cr;
  uint8_t in[4], out, probe_buf[4];
} close_race;

static void close_now(close_race *c, px_fd fd, bool sock) {
  assert_int_equal(px_close(c->loop, &c->cop, fd, rec_cb, &c->cr), 0);
  int r = sock ? px_recv(c->loop, &c->probe, fd, c->probe_buf, 1, rec_cb, NULL)
               : px_read(c->loop, &c->probe, fd, c->probe_buf, 1, PX_CUR,
                         rec_cb, NULL);
  assert_int_equal(r, PX_EBADF);
}

/* Iteration i on a socket pair: its read, its data, its close in one of
 * five orders.  Sets *send when a send was submitted too, and *handed when
 * the peer went to the sender thread (which closes it). */
static void close_socket_round(close_race *c, int i, px_fd fd, px_fd peer,
                               bool *send, bool *handed) {
  assert_int_equal(
      px_recv(c->loop, &c->rop, fd, c->in, sizeof(c->in), rec_cb, &c->rr), 0);
  switch (i % 8) {
    case 0: /* closed before any data (none is sent: the peer is gone) */
      close_now(c, fd, true);
      break;
    case 1:
      raw_send_byte(peer, c->out);
      close_now(c, fd, true);
      break;
    case 2:
      nowait(c->loop);
      raw_send_byte(peer, c->out);
      close_now(c, fd, true);
      break;
    case 3: /* the byte comes from the sender thread, any time */
      nowait(c->loop);
      c->out = sender_send_and_close(&c->snd, peer, i / 8, c->out);
      *handed = true;
      spin_us((unsigned)(i % 61));
      nowait(c->loop);
      close_now(c, fd, true);
      break;
    default: /* both directions in flight */
      *send = true;
      assert_int_equal(
          px_send(c->loop, &c->wop, fd, &c->out, 1, rec_cb, &c->wr), 0);
      raw_send_byte(peer, c->out);
      nowait(c->loop);
      close_now(c, fd, true);
      break;
  }
}

/* Iteration i on a pipe: the data comes through a px_write on the write
 * end, which completes with 1 or, once the read end is closed, PX_EPIPE
 * (without SIGPIPE). */
static void close_pipe_round(close_race *c, int i, px_fd rd, px_fd wr) {
  assert_int_equal(px_read(c->loop, &c->rop, rd, c->in, sizeof(c->in), PX_CUR,
                           rec_cb, &c->rr),
                   0);
  switch (i % 8) {
    case 5:
      assert_int_equal(
          px_write(c->loop, &c->wop, wr, &c->out, 1, PX_CUR, rec_cb, &c->wr),
          0);
      close_now(c, rd, false);
      break;
    case 6:
      nowait(c->loop);
      assert_int_equal(
          px_write(c->loop, &c->wop, wr, &c->out, 1, PX_CUR, rec_cb, &c->wr),
          0);
      spin_us((unsigned)(i % 23));
      nowait(c->loop);
      close_now(c, rd, false);
      break;
    default:
      close_now(c, rd, false);
      assert_int_equal(
          px_write(c->loop, &c->wop, wr, &c->out, 1, PX_CUR, rec_cb, &c->wr),
          0);
      break;
  }
}

void race_close_vs_completion_has_one_outcome_each_time(void **state) {
  close_race c;
  int cancelled[2] = {0}, completed[2] = {0}; /* [0] sockets, [1] pipes */
  int threaded = 0;
  (void)state;
  race_setup();
  memset(&c, 0, sizeof(c));
  sender_init(&c.snd);
  c.loop = new_loop();
  sender_start(&c.snd);
  uint64_t t0 = pt_now_ms();
  for (int i = 0; i < race_rounds; i++) {
    bool sock = i % 8 < 5, write = !sock, handed = false;
    px_fd h[2];
    int rc0 = c.rr.calls, wc0 = c.wr.calls, cc0 = c.cr.calls;
    c.out = (uint8_t)i;
    c.in[0] = (uint8_t)~i;
    if (sock) {
      /* The next handles get the numbers just closed: adopting them must
       * work, and their byte must reach their own read. */
      assert_int_equal(pt_raw_socketpair(h), 0);
      assert_int_equal(px_adopt(c.loop, h[0]), 0);
      close_socket_round(&c, i, h[0], h[1], &write, &handed);
      threaded += handed;
    } else {
      assert_int_equal(px_pipe(c.loop, h), 0);
      close_pipe_round(&c, i, h[0], h[1]);
    }
    RUN_UNTIL(c.loop,
              c.rr.calls == rc0 + 1 && c.cr.calls == cc0 + 1 &&
                  c.wr.calls == wc0 + write,
              5000);
    assert_int_equal(c.rr.calls, rc0 + 1);
    assert_int_equal(c.cr.calls, cc0 + 1);
    assert_int_equal(c.wr.calls, wc0 + write);
    if (c.cr.result != 0)
      fail_msg("round %d: the close completed with %d (%s)", i, c.cr.result,
               px_strerror(c.cr.result));
    if (c.rr.order > c.cr.order)
      fail_msg("round %d: the close completed before the read it cancelled", i);
    if (c.rr.result == PX_ECANCELED) {
      cancelled[!sock]++;
    } else if (c.rr.result == 1) {
      completed[!sock]++;
      assert_int_equal(c.in[0], c.out);
    } else {
      fail_msg("round %d: the read completed with %d (%s)", i, c.rr.result,
               px_strerror(c.rr.result));
    }
    /* A send on the closed socket: sent or cancelled; a write to the pipe:
     * written, or refused by the closed read end. */
    if (write && c.wr.result != 1 &&
        c.wr.result != (sock ? PX_ECANCELED : PX_EPIPE))
      fail_msg("round %d: the %s completed with %d (%s)", i,
               sock ? "send" : "pipe write", c.wr.result,
               px_strerror(c.wr.result));
    if (!sock)
      close_fd(c.loop, h[1]);
    else if (!handed) /* else the sender closes it */
      pt_raw_close(h[1]);
    assert_nothing_in_flight(c.loop);
  }
  uint64_t ms = pt_now_ms() - t0;
  settle(c.loop);
  assert_int_equal(c.rr.calls, race_rounds);
  assert_int_equal(c.cr.calls, race_rounds);
  assert_int_equal(sender_stop(&c.snd), threaded);
  printf("close vs completion: %d iterations, %d cancelled, %d completed "
         "(socket %d/%d, pipe %d/%d), %d ms\n",
         race_rounds, cancelled[0] + cancelled[1], completed[0] + completed[1],
         cancelled[0], completed[0], cancelled[1], completed[1], (int)ms);
  assert_true(cancelled[0] + cancelled[1] > 0);
  assert_true(completed[0] + completed[1] > 0);
  finish(c.loop);
}

/* ---- Deadline vs completion. --------------------------------------------
 *
 * 32 lanes, each a socket pair, run iterations side by side (one after
 * another, 10,000 would take 10 s of waiting for timers).  An iteration is
 * a recv with a deadline of 0, 1 or 2 ms and one byte that arrives before
 * the recv is submitted, right after, from a timer of 0, 1 or 2 ms, or from
 * the sender thread; the 18 combinations take turns.  The recv completes
 * once, with the byte or PX_ETIMEDOUT.  A timed-out recv took nothing: a
 * plain recv then gets the byte.  A byte that waited before the submit is
 * always received, whatever the deadline (docs/semantics.md: a deadline
 * fires only after the kernel was asked once).
 */

enum {
  DL_LANES = 32,
  DL_BEFORE = 0,
  DL_AFTER,
  DL_T0,
  DL_T1,
  DL_T2,
  DL_THREAD,
  DL_MODES
};
static const char *const dl_mode_name[DL_MODES] = {
    "before", "after", "timer 0 ms", "timer 1 ms", "timer 2 ms", "thread"};

struct dl_race;

typedef struct dl_lane {
  struct dl_race *race;
  int idx;
  px_fd sock, peer;
  px_op rop, top;
  uint8_t in[4], byte;
  int iter, mode;
  bool busy, rereading, got, timer_done;
} dl_lane;

typedef struct dl_race {
  px_loop *loop;
  sender snd;
  dl_lane lanes[DL_LANES];
  int started, finished, recv_calls, timer_calls, timer_rounds;
  int timed_out[DL_MODES], completed[DL_MODES];
  race_log log;
} dl_race;

static void dl_start(dl_lane *l);

static void dl_maybe_end(dl_lane *l) {
  bool timer = l->mode >= DL_T0 && l->mode <= DL_T2;
  if (!l->got || (timer && !l->timer_done))
    return;
  l->busy = false;
  l->race->finished++;
  dl_start(l);
}

static void dl_recv_cb(px_loop *loop, px_op *op) {
  dl_lane *l = op->data;
  dl_race *r = l->race;
  r->recv_calls++;
  if (!l->busy || l->got) {
    race_fail(&r->log, "lane %d: a recv completed after its round", l->idx);
    return;
  }
  if (op->result == PX_ETIMEDOUT && !l->rereading) {
    r->timed_out[l->mode]++;
    if (l->mode == DL_BEFORE)
      race_fail(&r->log,
                "round %d: a recv with its byte already waiting timed out "
                "(deadline %d ms)",
                l->iter, l->iter % 3);
    l->rereading = true; /* the byte must still be there */
    int rc =
        px_recv(loop, &l->rop, l->sock, l->in, sizeof(l->in), dl_recv_cb, l);
    if (rc != 0) {
      race_fail(&r->log, "round %d: recv refused: %s", l->iter,
                px_strerror(rc));
      l->got = true;
      dl_maybe_end(l);
    }
    return;
  }
  if (op->result != 1 || l->in[0] != l->byte)
    race_fail(&r->log,
              "round %d (%s, deadline %d ms): the %s completed with %d, "
              "byte %d of %d",
              l->iter, dl_mode_name[l->mode], l->iter % 3,
              l->rereading ? "recv after the timeout" : "recv", op->result,
              l->in[0], l->byte);
  if (!l->rereading)
    r->completed[l->mode]++;
  l->got = true;
  dl_maybe_end(l);
}

static void dl_timer_cb(px_loop *loop, px_op *op) {
  dl_lane *l = op->data;
  (void)loop;
  l->race->timer_calls++;
  if (op->result != 0 || l->timer_done)
    race_fail(&l->race->log, "round %d: the sending timer gave %d, twice: %d",
              l->iter, op->result, l->timer_done);
  if (pt_raw_send(l->peer, &l->byte, 1) != 1)
    race_fail(&l->race->log, "round %d: send failed", l->iter);
  l->timer_done = true;
  dl_maybe_end(l);
}

static void dl_arm_timer(dl_lane *l) {
  dl_race *r = l->race;
  r->timer_rounds++;
  int rc =
      px_timeout(r->loop, &l->top, (uint64_t)(l->mode - DL_T0), dl_timer_cb, l);
  if (rc != 0)
    race_fail(&r->log, "round %d: timeout refused: %s", l->iter,
              px_strerror(rc));
}

static void dl_start(dl_lane *l) {
  dl_race *r = l->race;
  if (r->log.failed || r->started == race_rounds)
    return;
  int i = r->started++;
  l->busy = true;
  l->rereading = l->got = l->timer_done = false;
  l->iter = i;
  l->mode = (i / 3) % DL_MODES;
  l->byte = (uint8_t)(l->idx | ((i & 3) << 6));
  l->in[0] = (uint8_t)~l->byte;
  /* A sending timer of the deadline's ms starts 0-0.5 ms before or after
   * the recv, so either may expire first. */
  bool timer = l->mode >= DL_T0 && l->mode <= DL_T2;
  bool same = timer && l->mode - DL_T0 == i % 3;
  bool timer_first = same && (i / 18) % 2 == 1;
  if (timer_first) {
    dl_arm_timer(l);
    spin_us((unsigned)(i * 37 % 501));
  }
  if (l->mode == DL_BEFORE)
    raw_send_byte(l->peer, l->byte);
  assert_int_equal(px_op_deadline(&l->rop, (uint64_t)(i % 3)), 0);
  int rc =
      px_recv(r->loop, &l->rop, l->sock, l->in, sizeof(l->in), dl_recv_cb, l);
  if (rc != 0)
    race_fail(&r->log, "round %d: recv refused: %s", i, px_strerror(rc));
  if (same && !timer_first)
    spin_us((unsigned)(i * 37 % 501));
  if (timer && !timer_first)
    dl_arm_timer(l);
  else if (l->mode == DL_AFTER)
    raw_send_byte(l->peer, l->byte);
  else if (l->mode == DL_THREAD)
    sender_request(&r->snd, l->byte);
}

void race_deadline_vs_completion_has_one_outcome_each_time(void **state) {
  dl_race *r = calloc(1, sizeof(*r));
  int timed_out = 0, completed = 0;
  (void)state;
  race_setup();
  assert_non_null(r);
  sender_init(&r->snd);
  /* Bytes from the sender come 0-0.3 ms after the request, later when it
   * has a queue (one in six rounds sends that way): around the deadlines. */
  r->snd.max_delay_us = 300;
  r->loop = new_loop();
  for (int j = 0; j < DL_LANES; j++) {
    px_fd sp[2];
    dl_lane *l = &r->lanes[j];
    assert_int_equal(pt_raw_socketpair(sp), 0);
    assert_int_equal(px_adopt(r->loop, sp[0]), 0);
    l->race = r;
    l->idx = j;
    l->sock = sp[0];
    l->peer = sp[1];
    atomic_store(&r->snd.peers[j], sp[1]);
  }
  sender_start(&r->snd);
  uint64_t t0 = pt_now_ms();
  for (int j = 0; j < DL_LANES; j++)
    dl_start(&r->lanes[j]);
  RUN_UNTIL(r->loop,
            (r->log.failed || r->started == race_rounds) &&
                r->finished == r->started,
            25000);
  uint64_t ms = pt_now_ms() - t0;
  race_assert_ok(&r->log);
  settle(r->loop);
  race_assert_ok(&r->log);
  int threaded = sender_stop(&r->snd);
  for (int m = 0; m < DL_MODES; m++) {
    timed_out += r->timed_out[m];
    completed += r->completed[m];
  }
  /* Every recv and timer completed exactly once. */
  assert_int_equal(timed_out + completed, race_rounds);
  assert_int_equal(r->recv_calls, race_rounds + timed_out);
  assert_int_equal(r->timer_calls, r->timer_rounds);
  assert_int_equal(threaded, r->completed[DL_THREAD] + r->timed_out[DL_THREAD]);
  printf("deadline vs completion: %d iterations, %d timed out, %d completed "
         "(%d lanes, %d ms)\n",
         race_rounds, timed_out, completed, DL_LANES, (int)ms);
  for (int m = 0; m < DL_MODES; m++)
    printf("  byte %-10s: %5d timed out, %5d completed\n", dl_mode_name[m],
           r->timed_out[m], r->completed[m]);
  assert_true(timed_out > 0 && completed > 0);
  for (int j = 0; j < DL_LANES; j++) {
    close_fd(r->loop, r->lanes[j].sock);
    pt_raw_close(r->lanes[j].peer);
  }
  finish(r->loop);
  free(r);
}

/* ---- A late completion vs a freed and reused connection slot. -----------
 *
 * A server's connection lives in a px_connpool slot, with the ops it owns
 * inside it; other work refers to it by px_conn_id.  Here a connection
 * holds an idle timer in its slot, and a job outside the pool (a recv, as a
 * request to a back end would be) carries the connection's id.  The
 * connection closes at a varying moment (a timer of 0-2 ms, or at once) the
 * way the contract wants it: its op is cancelled first, and the slot is
 * released in that op's callback, when px no longer owns the op.  The next
 * connection takes a slot at once (the pool hands out the slot freed last),
 * so the job's completion often comes after its slot was reused.  The job
 * completes once; px_conn_lookup of its id gives its own connection while
 * that lives, else NULL, never the slot's new owner, and a release through
 * the stale id is refused (PX_ENOENT) and leaves the new owner in place.
 */

enum { SL_LANES = 16, SL_BEFORE = 0, SL_T0, SL_T1, SL_T2, SL_THREAD, SL_MODES };

struct sl_race;
struct sl_lane;

typedef struct sl_conn {
  struct sl_lane *lane;
  int iter;
  int touched; /* completions delivered to this connection */
  px_op idle;  /* its own op, in the slot */
} sl_conn;

typedef struct sl_job {
  struct sl_lane *lane;
  px_op op, top;
  px_fd sock, peer;
  px_conn_id id;
  sl_conn *slot; /* where the connection lived: for counting reuse only */
  int iter, mode;
  uint8_t in[4], byte;
  bool busy, got, timer_done;
} sl_job;

typedef struct sl_lane {
  struct sl_race *race;
  int idx, rounds;
  sl_job job[2]; /* the next round's job may start while one is late */
  sl_conn *conn;
  px_conn_id id;
  px_op closer, cancel;
  bool closer_busy, cancel_busy;
} sl_lane;

typedef struct sl_race {
  px_loop *loop;
  px_connpool *pool;
  sender snd;
  sl_lane lanes[SL_LANES];
  int started, jobs_done, released;
  int reached, stale, stale_reused, touched_at_release;
  race_log log;
} sl_race;

static void sl_start(sl_lane *l);

static void sl_job_done(sl_job *j) {
  bool timer = j->mode >= SL_T0 && j->mode <= SL_T2;
  if (!j->got || (timer && !j->timer_done))
    return;
  j->busy = false;
  j->lane->race->jobs_done++;
  sl_start(j->lane);
}

static void sl_job_cb(px_loop *loop, px_op *op) {
  sl_job *j = op->data;
  sl_race *r = j->lane->race;
  (void)loop;
  if (!j->busy || j->got) {
    race_fail(&r->log, "round %d: a job completed twice", j->iter);
    return;
  }
  j->got = true;
  if (op->result != 1 || j->in[0] != j->byte)
    race_fail(&r->log, "round %d: the job's recv gave %d, byte %d of %d",
              j->iter, op->result, j->in[0], j->byte);
  sl_conn *c = px_conn_lookup(r->pool, j->id);
  if (c != NULL) {
    if (c->lane != j->lane || c->iter != j->iter)
      race_fail(&r->log,
                "round %d: the job's id led to the connection of round %d",
                j->iter, c->iter);
    c->touched++;
    r->reached++;
  } else {
    r->stale++;
    for (int k = 0; k < SL_LANES; k++)
      if (r->lanes[k].conn == j->slot) /* the slot has a new owner */
        r->stale_reused++;
    if (px_conn_release(r->pool, j->id) != PX_ENOENT)
      race_fail(&r->log, "round %d: a stale id released a slot", j->iter);
  }
  sl_job_done(j);
}

static void sl_job_timer_cb(px_loop *loop, px_op *op) {
  sl_job *j = op->data;
  (void)loop;
  if (op->result != 0 || j->timer_done)
    race_fail(&j->lane->race->log, "round %d: the job's timer gave %d", j->iter,
              op->result);
  if (pt_raw_send(j->peer, &j->byte, 1) != 1)
    race_fail(&j->lane->race->log, "round %d: send failed", j->iter);
  j->timer_done = true;
  sl_job_done(j);
}

/* The connection's own op completed (cancelled): px is done with it, so
 * the slot goes back now, and the lane's next connection may take it. */
static void sl_idle_cb(px_loop *loop, px_op *op) {
  sl_lane *l = op->data;
  sl_race *r = l->race;
  sl_conn *c = l->conn;
  (void)loop;
  if (c == NULL || op != &c->idle || op->result != PX_ECANCELED)
    race_fail(&r->log, "lane %d: the idle timer completed with %d", l->idx,
              op->result);
  if (c == NULL)
    return;
  if (px_conn_lookup(r->pool, l->id) != c || c->touched > 1)
    race_fail(&r->log, "round %d: the connection was not its own at release",
              c->iter);
  r->touched_at_release += c->touched;
  if (px_conn_release(r->pool, l->id) != 0)
    race_fail(&r->log, "round %d: release refused", c->iter);
  l->conn = NULL;
  r->released++;
  sl_start(l); /* may take this very slot: op is ours to reuse */
}

static void sl_cancel_cb(px_loop *loop, px_op *op) {
  sl_lane *l = op->data;
  (void)loop;
  if (op->result != 0)
    race_fail(&l->race->log, "lane %d: the cancel gave %d", l->idx, op->result);
  l->cancel_busy = false;
  sl_start(l);
}

static void sl_close(sl_lane *l) {
  int rc =
      px_cancel(l->race->loop, &l->cancel, &l->conn->idle, sl_cancel_cb, l);
  if (rc != 0)
    race_fail(&l->race->log, "lane %d: cancel refused: %s", l->idx,
              px_strerror(rc));
  else
    l->cancel_busy = true;
}

static void sl_closer_cb(px_loop *loop, px_op *op) {
  sl_lane *l = op->data;
  (void)loop;
  l->closer_busy = false;
  if (op->result != 0 || l->conn == NULL)
    race_fail(&l->race->log, "lane %d: the closing timer gave %d", l->idx,
              op->result);
  else
    sl_close(l);
}

static void sl_job_start(sl_lane *l, sl_job *j, int i) {
  sl_race *r = l->race;
  int rc;
  j->busy = true;
  j->got = j->timer_done = false;
  j->id = l->id;
  j->slot = l->conn;
  j->iter = i;
  j->mode = (i / 3) % SL_MODES;
  j->byte = (uint8_t)((l->idx * 2 + (int)(j - l->job)) | ((i & 3) << 6));
  j->in[0] = (uint8_t)~j->byte;
  if (j->mode == SL_BEFORE)
    raw_send_byte(j->peer, j->byte);
  rc = px_recv(r->loop, &j->op, j->sock, j->in, sizeof(j->in), sl_job_cb, j);
  if (rc != 0)
    race_fail(&r->log, "round %d: recv refused: %s", i, px_strerror(rc));
  if (j->mode == SL_THREAD) {
    sender_request(&r->snd, j->byte);
  } else if (j->mode != SL_BEFORE) {
    rc = px_timeout(r->loop, &j->top, (uint64_t)(j->mode - SL_T0),
                    sl_job_timer_cb, j);
    if (rc != 0)
      race_fail(&r->log, "round %d: timeout refused: %s", i, px_strerror(rc));
  }
}

/* Starts the lane's next round once its connection is gone, its cancel
 * and closer are done and the job slot it needs is free. */
static void sl_start(sl_lane *l) {
  sl_race *r = l->race;
  sl_job *j = &l->job[l->rounds & 1];
  if (r->log.failed || r->started == race_rounds || l->conn != NULL ||
      l->cancel_busy || l->closer_busy || j->busy)
    return;
  int i = r->started++;
  int rc;
  l->rounds++;
  sl_conn *c = px_conn_get(r->pool, &l->id);
  if (c == NULL) {
    race_fail(&r->log, "round %d: the pool is full", i);
    return;
  }
  c->lane = l;
  c->iter = i;
  l->conn = c;
  rc = px_timeout(r->loop, &c->idle, 60000, sl_idle_cb, l);
  if (rc != 0)
    race_fail(&r->log, "round %d: idle timer refused: %s", i, px_strerror(rc));
  if (i % 4 == 3) { /* closed at once */
    sl_job_start(l, j, i);
    sl_close(l);
    return;
  }
  /* A job timer of the closing timer's ms starts 0-0.5 ms before or
   * after it, so either may expire first. */
  int mode = (i / 3) % SL_MODES;
  bool same = mode >= SL_T0 && mode <= SL_T2 && mode - SL_T0 == i % 3;
  bool closer_first = same && (i / 15) % 2 == 1;
  if (!closer_first)
    sl_job_start(l, j, i);
  if (same)
    spin_us((unsigned)(i * 37 % 501));
  l->closer_busy = true;
  rc = px_timeout(r->loop, &l->closer, (uint64_t)(i % 3), sl_closer_cb, l);
  if (rc != 0)
    race_fail(&r->log, "round %d: closing timer refused: %s", i,
              px_strerror(rc));
  if (closer_first) {
    spin_us((unsigned)(i * 37 % 501));
    sl_job_start(l, j, i);
  }
}

void race_late_completion_never_reaches_a_reused_slots_new_owner(void **state) {
  sl_race *r = calloc(1, sizeof(*r));
  px_pool_stats ps;
  (void)state;
  race_setup();
  assert_non_null(r);
  sender_init(&r->snd);
  r->loop = new_loop();
  assert_int_equal(px_connpool_new(SL_LANES, sizeof(sl_conn), &r->pool), 0);
  for (int k = 0; k < SL_LANES; k++) {
    sl_lane *l = &r->lanes[k];
    l->race = r;
    l->idx = k;
    for (int s = 0; s < 2; s++) {
      px_fd sp[2];
      assert_int_equal(pt_raw_socketpair(sp), 0);
      assert_int_equal(px_adopt(r->loop, sp[0]), 0);
      l->job[s].lane = l;
      l->job[s].sock = sp[0];
      l->job[s].peer = sp[1];
      atomic_store(&r->snd.peers[k * 2 + s], sp[1]);
    }
  }
  sender_start(&r->snd);
  uint64_t t0 = pt_now_ms();
  for (int k = 0; k < SL_LANES; k++)
    sl_start(&r->lanes[k]);
  RUN_UNTIL(r->loop,
            (r->log.failed || r->started == race_rounds) &&
                r->jobs_done == r->started && r->released == r->started,
            25000);
  uint64_t ms = pt_now_ms() - t0;
  race_assert_ok(&r->log);
  settle(r->loop);
  race_assert_ok(&r->log);
  sender_stop(&r->snd);
  /* Each job completed once and reached its connection at most once:
   * exactly the connections it found counted it. */
  assert_int_equal(r->reached + r->stale, race_rounds);
  assert_int_equal(r->touched_at_release, r->reached);
  px_connpool_stats(r->pool, &ps);
  assert_int_equal(ps.in_use, 0);
  printf("late completion vs reused slot: %d iterations, %d reached their "
         "connection, %d found it gone (%d with its slot reused), %d ms\n",
         race_rounds, r->reached, r->stale, r->stale_reused, (int)ms);
  assert_true(r->reached > 0 && r->stale > 0 && r->stale_reused > 0);
  for (int k = 0; k < SL_LANES; k++)
    for (int s = 0; s < 2; s++) {
      close_fd(r->loop, r->lanes[k].job[s].sock);
      pt_raw_close(r->lanes[k].job[s].peer);
    }
  assert_int_equal(px_connpool_free(r->pool), 0);
  finish(r->loop);
  free(r);
}
