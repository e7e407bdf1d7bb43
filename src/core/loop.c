/*
 * The loop: op lifecycle after submission, dispatch, timers, posts.
 *
 * Every completion, whatever its source (backend, timer, cancel, post),
 * goes through px__ready_push onto one FIFO list, and callbacks run from
 * px__dispatch.  The one shortcut: inside px_run's wait, a plain completion
 * that finds the list empty and no callback running goes straight to its
 * callback (px__complete_direct, internal.h), which is where dispatch
 * would have taken it next.  So a callback never runs inside a submit
 * call, and an op's "completed" moment is one place where handle queues,
 * close-after-drain and statistics are kept.
 */
#include <string.h>

#include "internal.h"

/* ---- Ready list and completion. ---------------------------------------- */

/* px__ready_push is inline in internal.h. */

/* ---- Multishot deliveries. ---------------------------------------------
 *
 * A multishot receive can deliver again before its previous delivery has
 * reached its callback.  Deliveries wait in a chain through the pool
 * buffers that hold them (pool->dnext and dlen; op->when keeps head and
 * tail as index + 1, a multishot op has no deadline), and the op sits on
 * the ready list once (PX__F_INREADY) while it stays in flight.  Each pop
 * takes one delivery; while more wait, the op goes back to the front of the
 * list after its callback, so its deliveries keep their order and come
 * before anything that completed later.  The backend's last word is either
 * one more chained buffer or a code without one (PX__F_FINALCODE, in
 * op->len).
 */

static uint32_t px__chain_head(const px_op *op) {
  return (uint32_t)(uint64_t)op->when;
}

static void px__chain_set(px_op *op, uint32_t head, uint32_t tail) {
  op->when = (int64_t)(((uint64_t)tail << 32) | head);
}

static void px__chain_add(px_op *op, px_bufpool *p, void *buf, int32_t len) {
  uint32_t i = px__buf_index(p, buf);
  uint32_t head = px__chain_head(op),
           tail = (uint32_t)((uint64_t)op->when >> 32);
  p->dlen[i] = (uint32_t)len;
  p->dnext[i] = 0;
  if (tail != 0)
    p->dnext[tail - 1] = i + 1;
  else
    head = i + 1;
  px__chain_set(op, head, i + 1);
}

static bool px__multi_pending(const px_op *op) {
  return px__chain_head(op) != 0 || (op->flags & PX__F_FINALCODE);
}

/* Loads op's next delivery into result and off: true when more follow
 * (the op stays in flight), false for its last. */
static bool px__multi_next(px_op *op) {
  px_bufpool *p = op->buf;
  op->flags &= (uint16_t) ~(PX__F_INREADY | PX__F_MORE);
  uint32_t head = px__chain_head(op);
  if (head == 0) { /* only the final code is left */
    op->result = (op->flags & PX__F_FINALCODE) ? (int32_t)op->len : PX_EIO;
    op->off = 0;
    return false;
  }
  uint32_t i = head - 1, next = p->dnext[i];
  px__chain_set(op, next, next == 0 ? 0 : (uint32_t)((uint64_t)op->when >> 32));
  op->result = (int32_t)p->dlen[i];
  op->off = (int64_t)(uintptr_t)px__buf_at(p, i);
  if ((op->flags & PX__F_FINAL) && !px__multi_pending(op))
    return false;
  op->flags |= PX__F_MORE;
  return true;
}

static void px__ready_again(px_loop *loop, px_op *op) {
  op->flags |= PX__F_INREADY;
  px__fifo_push(&loop->ready, op);
}

/* px__ready_pop's pooled receives: a multishot delivery, or the end of a
 * pooled receive (its pool counts it). */
static px_op *px__ready_pop_pooled(px_loop *loop, px_op *op) {
  /* Only chained deliveries come with INREADY; a multishot op completed
   * the ordinary way (refused, cancelled while queued) has none. */
  if ((op->flags & PX__F_INREADY) && px__multi_next(op))
    return op; /* a delivery; the op is still in flight */
  ((px_bufpool *)op->buf)->ops--;
  px__op_done(loop, op);
  return op;
}

static inline px_op *px__ready_pop(px_loop *loop) {
  px_op *op = px__fifo_pop(&loop->ready);
  if (op == NULL)
    return NULL;
  if (op->kind == PX__OP_RECV_POOLED) /* the only kind with deliveries */
    return px__ready_pop_pooled(loop, op);
  px__op_done(loop, op);
  return op;
}

static int px__dispatch(px_loop *loop) {
  int n = 0;
  px_op *op;
  /* Ops completed by these callbacks join the list and run in this pass
   * too, up to what was ready when it started plus what they add: the pass
   * ends when the list is empty. */
  while ((op = px__ready_pop(loop)) != NULL) {
    n++;
    bool more = op->flags & PX__F_MORE;
    px__run_cb(loop, op);
    if (more && px__multi_pending(op) && !(op->flags & PX__F_INREADY)) {
      op->flags |= PX__F_INREADY;
      px__fifo_push_front(&loop->ready, op);
    }
  }
  return n;
}

bool px__oq_remove(px__oq *q, px_op *op) {
  px_op *tail = q->tail;
  if (tail == NULL)
    return false;
  px_op *prev = tail;
  do {
    px_op *it = prev->next;
    if (it == op) {
      if (it == prev) { /* the only one */
        q->tail = NULL;
      } else {
        prev->next = it->next;
        if (q->tail == it)
          q->tail = prev;
      }
      op->next = NULL;
      return true;
    }
    prev = it;
  } while (prev != tail);
  return false;
}

bool px__fifo_remove(px__fifo *f, px_op *op) {
  px_op *prev = NULL;
  for (px_op *it = f->head; it != NULL; prev = it, it = it->next) {
    if (it != op)
      continue;
    if (prev != NULL)
      prev->next = op->next;
    else
      f->head = op->next;
    if (f->tail == op)
      f->tail = prev;
    op->next = NULL;
    return true;
  }
  return false;
}

/* px__start (internal.h) with a deadline: a kernel timer takes over the
 * deadline, even one already past: the kernel still tries the op once, so
 * a zero deadline means "only if it can complete at once". */
void px__start_deadline(px_loop *loop, px_op *op) {
  if (PX__BK(loop)->caps & PX_CAP_KERNEL_DEADLINE)
    px__heap_remove(loop, op);
}

/* The backend refused op: it completes with the error, and false comes
 * back (the caller then frees the stream direction or starts the next op:
 * no recursion through px__complete). */
bool px__start_refused(px_loop *loop, px_op *op, px__fdent *e, int r) {
  if (e != NULL)
    e->started--;
  px__heap_remove(loop, op);
  px__ready_push(loop, op, r);
  return false;
}

/* The next stream op of a direction starts when the previous one is done. */
static void px__stream_next(px_loop *loop, px__fdent *e, unsigned d) {
  px_op *next;
  e->busy[d] = 1;
  while ((next = px__oq_pop(&e->waiting[d])) != NULL)
    if (px__start(loop, next, e))
      return;
  e->busy[d] = 0;
}

void px__close_start(px_loop *loop, px__fdent *e) {
  px_op *close = e->closing;
  /* The kernel may hand this number out again as soon as the close runs,
   * even before its completion is seen: forget it now. */
  px__fd_forget(loop, close->fd);
  close->state = PX__STARTED;
  int r = PX__BK(loop)->submit(loop, close);
  if (r < 0)
    px__ready_push(loop, close, r);
}

static int32_t px__finish_accept(px_loop *loop, px_op *op, int32_t result) {
  if (result < 0)
    return result;
  int r = px__fd_register(loop, (px_fd)op->off, true);
  if (r < 0) {
    px__os_close((px_fd)op->off);
    op->off = PX_INVALID_FD;
    return r;
  }
  return 0;
}

/* The backend is done with op: its handle's queues move on. */
void px__handle_done(px_loop *loop, px_op *op) {
  if (!px__kind_has_fd(op->kind))
    return;
  px__fdent *e = px__fd_get(loop, op->fd);
  if (e == NULL)
    return;
  e->started--;
  if ((op->flags & PX__F_STREAM) && e->closing == NULL)
    px__stream_next(loop, e, px__dir_of(op));
  if (e->closing != NULL && e->started == 0)
    px__close_start(loop, e);
}

void px__complete(px_loop *loop, px_op *op, int32_t result) {
  /* A multishot op may have deliveries waiting (and sit on the ready
   * list): its end goes behind them. */
  if (op->flags & PX__F_MULTI) {
    px__complete_buf(loop, op, result, NULL);
    return;
  }
  if (op->heap != 0)
    px__heap_remove(loop, op);
  if ((op->flags & PX__F_TIMEDOUT) && result == PX_ECANCELED)
    result = PX_ETIMEDOUT;
  if (op->kind == PX__OP_ACCEPT)
    result = px__finish_accept(loop, op, result);
  px__ready_push(loop, op, result);
  px__handle_done(loop, op);
}

void px__deliver(px_loop *loop, px_op *op, int32_t result, void *buf) {
  px__chain_add(op, op->buf, buf, result);
  if (!(op->flags & PX__F_INREADY))
    px__ready_again(loop, op);
}

void px__complete_buf(px_loop *loop, px_op *op, int32_t result, void *buf) {
  if (!(op->flags & PX__F_MULTI) ||
      (!px__multi_pending(op) && !(op->flags & PX__F_INREADY))) {
    /* Nothing waits before it: an ordinary completion. */
    op->flags &= (uint16_t) ~(PX__F_MULTI | PX__F_MORE);
    op->off = (int64_t)(uintptr_t)buf;
    px__complete(loop, op, result);
    return;
  }
  if (buf != NULL) {
    px__chain_add(op, op->buf, buf, result);
  } else {
    op->len = (uint32_t)result;
    op->flags |= PX__F_FINALCODE;
  }
  op->flags |= PX__F_FINAL;
  op->state = PX__READY;
  if (!(op->flags & PX__F_INREADY))
    px__ready_again(loop, op);
  px__handle_done(loop, op);
}

/* ---- Timers. ----------------------------------------------------------- */

/* Due: expiry before loop->now, strictly, as px__iterate wants. */
static void px__timers_run(px_loop *loop) {
  px_op *op;
  while ((op = px__heap_top(loop)) != NULL && op->when < loop->now) {
    px__heap_remove(loop, op);
    if (op->kind == PX__OP_TIMEOUT) {
      px__ready_push(loop, op, 0);
    } else if (op->state == PX__QUEUED) {
      px__oq_remove(&px__fd_get(loop, op->fd)->waiting[px__dir_of(op)], op);
      px__ready_push(loop, op, PX_ETIMEDOUT);
    } else if (op->state == PX__STARTED) {
      op->flags |= PX__F_TIMEDOUT;
      PX__BK(loop)->cancel(loop, op, NULL);
    }
  }
}

/* Nanoseconds the backend may sleep: until the next timer, or no limit. */
static int64_t px__poll_timeout(px_loop *loop, int64_t limit) {
  /* Not loop->stop: px__run looks at it before every wait, and a stop
   * made outside px_run (a callback the program runs after px_wait) must
   * not keep px_wait from blocking. */
  if (loop->ready.head != NULL)
    return 0;
  px_op *top = px__heap_top(loop);
  if (top != NULL) {
    /* The clock now: loop->now may be older by a round of callbacks. */
    int64_t t = top->when - px__now_ns();
    if (t < 0)
      t = 0;
    if (limit < 0 || t < limit)
      limit = t;
  }
  return limit;
}

/* ---- Posts and wakeups. ------------------------------------------------
 *
 * Posts go onto a Treiber stack (newest first) that the loop takes whole
 * with one exchange.  The common post costs one compare-and-swap: pushing
 * onto a stack that is not empty needs no wakeup, because the post that
 * made it non-empty owes one, and the loop takes everything above it in the
 * same exchange.  A post that finds the stack empty is that post: it
 * announces itself in `posting` before it looks (px_loop_free waits for
 * announced posts before it tears the backend down), pushes, and wakes the
 * loop.  A push onto a non-empty stack touches the loop for the last time
 * in its compare-and-swap, so it needs no announcement.
 *
 * px_loop_free swaps the stack for PX__POSTS_SHUT: every later push fails
 * its compare-and-swap or sees the mark, and is refused.  The same holds
 * for a post that starts after the free returned (memory the program must
 * not touch; unit_post_free_race keeps it readable to race the free to its
 * end).
 */
#define PX__POSTS_SHUT ((px_op *)(uintptr_t)1)

/* Takes the posts off the stack (leaving `with` there) and puts them on
 * the ready list, oldest first, in one pass: the stack is newest first, so
 * reversing it gives the list. */
static void px__posts_take(px_loop *loop, px_op *with) {
  px_op *list = atomic_exchange(&loop->post_head, with);
  if (list == NULL || list == PX__POSTS_SHUT)
    return;
  int32_t result = loop->closing ? PX_ECANCELED : 0;
  px_op *fifo = NULL, *last = list;
  uint64_t n = 0;
  while (list != NULL) {
    PX__PREFETCH_W(list);
    px_op *next = list->next;
    list->result = result;
    list->state = PX__READY;
    list->next = fifo;
    fifo = list;
    list = next;
    n++;
  }
  loop->stats.submitted += n;
  if (loop->ready.tail != NULL)
    loop->ready.tail->next = fifo;
  else
    loop->ready.head = fifo;
  loop->ready.tail = last;
}

static void px__posts_drain(px_loop *loop) {
  px_op *head = atomic_load_explicit(&loop->post_head, memory_order_relaxed);
  if (head == NULL || head == PX__POSTS_SHUT)
    return;
  /* Sequentially consistent, as the wakeup's ack before it and px_post's
   * push and check: px_loop_wakeup may then skip a wakeup already on its
   * way (see there). */
  px__posts_take(loop, NULL);
}

static void px__wake(px_loop *loop);

/* The post that finds the stack empty: announced, it pushes and wakes. */
static int px__post_first(px_loop *loop, px_op *op) {
  atomic_fetch_add(&loop->posting, 1);
  px_op *head = atomic_load(&loop->post_head);
  do {
    if (head == PX__POSTS_SHUT) {
      atomic_fetch_sub(&loop->posting, 1);
      return PX_ESHUTDOWN;
    }
    op->next = head;
  } while (!atomic_compare_exchange_weak(&loop->post_head, &head, op));
  if (head == NULL)
    px__wake(loop);
  atomic_fetch_sub_explicit(&loop->posting, 1, memory_order_release);
  return 0;
}

int px_post(px_loop *loop, px_op *op, px_cb cb, void *data) {
  if (loop == NULL || op == NULL)
    return PX_EINVAL;
  PX__PREFETCH_W(op);
  if (op->state != PX__IDLE)
    return PX_EBUSY;
  if (op->flags & PX__F_DL_SET)
    return PX_EINVAL; /* deadlines belong to ops on a handle */
  /* The loop may take the op the moment it is pushed: its fields are set
   * before, and put back if the post is refused (a loop being freed). */
  px_cb was_cb = op->cb;
  void *was_data = op->data;
  px_op *was_next = op->next;
  uint8_t was_kind = op->kind;
  uint16_t was_flags = op->flags;
  op->cb = cb;
  op->data = data;
  op->kind = PX__OP_POST;
  op->flags = 0;
  op->state = PX__POSTED;
  int r = 0;
  px_op *head = atomic_load_explicit(&loop->post_head, memory_order_relaxed);
  for (;;) {
    if (head == NULL) {
      r = px__post_first(loop, op);
      break;
    }
    if (head == PX__POSTS_SHUT) {
      r = PX_ESHUTDOWN;
      break;
    }
    op->next = head;
    /* Release: the loop's exchange sees the op's fields. */
    if (atomic_compare_exchange_weak_explicit(&loop->post_head, &head, op,
                                              memory_order_release,
                                              memory_order_relaxed))
      return 0;
  }
  if (r < 0) {
    op->cb = was_cb;
    op->data = was_data;
    op->next = was_next;
    op->kind = was_kind;
    op->flags = was_flags;
    op->state = PX__IDLE;
  }
  return r;
}

/* A wakeup already on its way (not acknowledged yet) covers this one: a
 * plain load finds it without taking the cache line for writing.  That
 * skip loses nothing: the loop acknowledges before it drains the posts,
 * and with the ack, the drain's exchange, the post's push and this load
 * all sequentially consistent, a post pushed after the drain sees the ack
 * (and wakes the loop), while one pushed before it is drained. */
static void px__wake(px_loop *loop) {
  if (atomic_load(&loop->wake_pending))
    return;
  if (!atomic_exchange(&loop->wake_pending, 1))
    PX__BK(loop)->wakeup(loop);
}

/* The program's wakeup is marked before it is sent, so that px_run(ONCE)
 * and px_wait report it and not a post's own: with the mark and the ack's
 * exchange of it sequentially consistent, either the ack sees the mark or
 * this sees no wakeup pending and sends one. */
void px_loop_wakeup(px_loop *loop) {
  if (loop == NULL)
    return;
  atomic_store(&loop->user_wake, 1);
  px__wake(loop);
}

void px__wake_ack(px_loop *loop) {
  atomic_store(&loop->wake_pending, 0);
  loop->woken = true;
  if (atomic_exchange(&loop->user_wake, 0))
    loop->wake_asked = true;
}

/* Posts pushed and not taken yet (the loop thread: only it takes them, so
 * the ops below the head stay put while it counts). */
static uint64_t px__posts_in_transit(const px_loop *loop) {
  uint64_t n = 0;
  px_op *op =
      atomic_load_explicit(&((px_loop *)loop)->post_head, memory_order_acquire);
  for (; op != NULL && op != PX__POSTS_SHUT; op = op->next)
    n++;
  return n;
}

static bool px__posts_waiting(px_loop *loop) {
  px_op *head = atomic_load_explicit(&loop->post_head, memory_order_acquire);
  return head != NULL && head != PX__POSTS_SHUT;
}

/* ---- One iteration. ---------------------------------------------------- */

/* One wait and what follows it.  direct: px_run's iteration, whose plain
 * completions may go straight to their callbacks (px__complete_direct).
 * A wakeup acknowledged outside a wait (by a reap inside a submit call)
 * leaves loop->woken set: the next wait does not block (the posts it
 * announced are taken after it).  Whoever looks at the flags after an
 * iteration clears them; px_run(ONCE) and px_wait report a wakeup only
 * when the program asked for it (wake_asked), not a post's own. */
static int px__iterate(px_loop *loop, int64_t limit, bool direct) {
  loop->direct_ran = 0;
  loop->direct = direct;
  int64_t timeout = loop->woken ? 0 : px__poll_timeout(loop, limit);
  int r = PX__BK(loop)->poll(loop, timeout);
  loop->direct = false;
  /* After callbacks from the reaping loop, loop->now stays the time read
   * before the first of them (px__complete_direct): what they started is
   * not due in this iteration's px__timers_run, so a deadline they set
   * never fires before the kernel was asked once. */
  if (loop->direct_ran == 0)
    loop->now = px__now_ns();
  px__posts_drain(loop);
  px__timers_run(loop);
  return r;
}

static bool px__alive(px_loop *loop) {
  return loop->stats.submitted != loop->stats.completed ||
         px__posts_waiting(loop);
}

uint64_t px__thread_id(void) {
  static atomic_uint_fast64_t next = 1;
  static _Thread_local uint64_t id;
  if (id == 0)
    id = atomic_fetch_add_explicit(&next, 1, memory_order_relaxed);
  return id;
}

/* A loop belongs to the first thread that runs it: px_run, px_wait and
 * px_loop_free from any other thread are refused. */
static bool px__owned_elsewhere(px_loop *loop, bool claim) {
  uint64_t self = px__thread_id();
  if (loop->owner == 0 && claim)
    loop->owner = self;
  return loop->owner != 0 && loop->owner != self;
}

static int px__run_end(px_loop *loop, int r) {
  if (PX__BK(loop)->run_end != NULL)
    PX__BK(loop)->run_end(loop);
  return r;
}

static int px__run(px_loop *loop, px_run_mode mode) {
  loop->stop = false;
  loop->now = px__now_ns();
  /* ONCE waits only when nothing was ready: it returns after one round of
   * callbacks either way.  Expired timers fire after the first poll, so a
   * deadline never fires before the kernel was asked once. */
  bool ran = px__dispatch(loop) > 0;
  for (;;) {
    if (loop->stop)
      return px__alive(loop) ? 1 : 0;
    if (!px__alive(loop))
      return 0;
    bool block = mode == PX_RUN_DEFAULT || (mode == PX_RUN_ONCE && !ran);
    int r = px__iterate(loop, block ? -1 : 0, true);
    bool woken = loop->wake_asked;
    /* Only a blocking wait takes the program's wakeup: after NOWAIT, or
     * ONCE with callbacks ready, it stays latched for the next one, which
     * then does not block (woken). */
    if (block)
      loop->wake_asked = false;
    loop->woken = loop->wake_asked;
    int n = (int)loop->direct_ran + px__dispatch(loop);
    if (r < 0)
      return r;
    /* A wait that ended with no callback and no wakeup (a signal, EINTR)
     * is not what ONCE waits for: wait again, as px_wait does. */
    if (mode == PX_RUN_ONCE && block && n == 0 && !woken)
      continue;
    if (mode != PX_RUN_DEFAULT)
      return px__alive(loop) ? 1 : 0;
  }
}

int px_run(px_loop *loop, px_run_mode mode) {
  if (loop == NULL || (unsigned)mode > PX_RUN_NOWAIT)
    return PX_EINVAL;
  if (loop->depth > 0 || loop->closing || px__owned_elsewhere(loop, true))
    return PX_EBUSY;
  int r = px__run(loop, mode);
  /* A stop is for the run it ends: left set, it would keep every later
   * px_wait from blocking (px__poll_timeout). */
  loop->stop = false;
  return px__run_end(loop, r);
}

void px_stop(px_loop *loop) {
  if (loop != NULL)
    loop->stop = true;
}

static int px__wait(px_loop *loop, px_op **out, int max, int timeout_ms) {
  loop->now = px__now_ns();
  int64_t end = loop->now + (int64_t)timeout_ms * 1000000;
  px__posts_drain(loop);
  bool polled = false;
  for (;;) {
    int n = 0;
    px_op *op;
    px__fifo again = {0}; /* multishot ops with deliveries still waiting */
    while (n < max && (op = px__ready_pop(loop)) != NULL) {
      out[n++] = op;
      if ((op->flags & PX__F_MORE) && px__multi_pending(op)) {
        /* Its next delivery comes first in the next call: nothing behind
         * it may overtake it in this one. */
        op->flags |= PX__F_INREADY;
        px__fifo_push(&again, op);
        break;
      }
    }
    if (again.head != NULL) { /* next call, first, in order */
      again.tail->next = loop->ready.head;
      loop->ready.head = again.head;
      if (loop->ready.tail == NULL)
        loop->ready.tail = again.tail;
    }
    if (n > 0 || loop->wake_asked) {
      /* The program's wakeup is taken by a call that waited or that
       * returns for it; ops ready on entry leave it for the next call. */
      if (polled || n == 0)
        loop->wake_asked = loop->woken = false;
      return n;
    }
    int64_t left = timeout_ms < 0 ? -1 : end - loop->now;
    if (timeout_ms >= 0 && left < 0)
      left = 0;
    /* Even with no time left, the kernel is asked once. */
    if (polled && left == 0)
      return 0;
    int r = px__iterate(loop, left, false);
    polled = true;
    loop->woken = false; /* a post's wakeup: its posts are on the list */
    if (r < 0)
      return r;
  }
}

int px_wait(px_loop *loop, px_op **out, int max, int timeout_ms) {
  if (loop == NULL || out == NULL || max <= 0)
    return PX_EINVAL;
  if (loop->depth > 0 || loop->closing || px__owned_elsewhere(loop, true))
    return PX_EBUSY;
  return px__run_end(loop, px__wait(loop, out, max, timeout_ms));
}

/* ---- Loop lifetime. ---------------------------------------------------- */

int px_loop_new(px_loop **out, const px_loop_opts *opts) {
  if (out == NULL)
    return PX_EINVAL;
  *out = NULL;
  px_loop_opts defaults = {0};
  if (opts == NULL)
    opts = &defaults;
  if (opts->flags != 0)
    return PX_EINVAL;
  px_loop *loop = px__calloc(1, sizeof(*loop));
  if (loop == NULL)
    return PX_ENOMEM;
  atomic_init(&loop->post_head, NULL);
  atomic_init(&loop->wake_pending, 0);
  atomic_init(&loop->user_wake, 0);
  atomic_init(&loop->posting, 0);
  loop->now = px__now_ns();
  int r = px__backend_init(loop, opts);
  if (r < 0) {
    px__free(loop);
    return r;
  }
  *out = loop;
  return 0;
}

/* Completes every op that waits in px's own structures. */
static void px__cancel_core_ops(px_loop *loop) {
  px_op *op;
  while ((op = px__heap_top(loop)) != NULL) {
    px__heap_remove(loop, op);
    if (op->kind == PX__OP_TIMEOUT)
      px__ready_push(loop, op, PX_ECANCELED);
  }
  for (size_t i = 0; i < loop->nfds; i++) {
    for (int d = 0; d < 2; d++)
      while ((op = px__oq_pop(&loop->fds[i].waiting[d])) != NULL)
        px__ready_push(loop, op, PX_ECANCELED);
  }
}

/* Waits until no px_post is between its announcement and its return. */
static void px__posts_wait(px_loop *loop) {
  while (atomic_load_explicit(&loop->posting, memory_order_acquire) != 0)
    px__os_yield();
}

int px_loop_free(px_loop *loop) {
  if (loop == NULL)
    return PX_EINVAL;
  /* From another thread only when nothing is left to complete. */
  if (loop->depth > 0 || (px__owned_elsewhere(loop, false) && px__alive(loop)))
    return PX_EBUSY;
  loop->closing = true;
  loop->stop = false;
  /* From here on every post is refused; those already pushed complete. */
  px__posts_take(loop, PX__POSTS_SHUT);
  px__acceptors_stop(loop);
  px__cancel_core_ops(loop);
  PX__BK(loop)->cancel_all(loop);
  px__dispatch(loop);
  while (px__alive(loop)) {
    int r = px__iterate(loop, 100000000, false);
    loop->woken = loop->wake_asked = false; /* nothing waits for one */
    px__dispatch(loop);
    /* Ops the kernel still holds cannot be let go: report the failure and
     * keep the loop; a later px_loop_free finishes the job. */
    if (r < 0)
      return px__run_end(loop, r);
  }
  if (PX__BK(loop)->run_end != NULL)
    PX__BK(loop)->run_end(loop);
  px__pools_detach(loop); /* pools outlive it, without its backend */
  /* A post that pushed before the shut may still be waking the loop. */
  px__posts_wait(loop);
  PX__BK(loop)->destroy(loop);
  px__heap_free(loop);
  px__fdtab_free(loop);
  px__free(loop);
  return 0;
}

const char *px_loop_backend_name(const px_loop *loop) {
  return loop ? PX__BK(loop)->name : NULL;
}

unsigned px_loop_caps(const px_loop *loop) {
  if (loop == NULL)
    return 0;
  const px__backend *bk = PX__BK(loop);
  return bk->loop_caps != NULL ? bk->loop_caps(loop) : bk->caps;
}

void px_loop_stats(const px_loop *loop, px_stats *out) {
  if (loop == NULL || out == NULL)
    return;
  *out = loop->stats;
  out->submitted += px__posts_in_transit(loop);
  /* Derived, not kept: accepted and not yet completed. */
  out->in_flight = out->submitted - out->completed;
}
