/*
 * The acceptor: accepts kept posted on a listener, as many as the
 * connection pool has room for.  Built on the public API and the pool's
 * release hook only; one allocation when it starts, none afterwards.
 *
 * Accounting: posted accepts never outnumber the pool's free slots, so a
 * completed accept always finds its slot.  A full pool posts nothing (that
 * is the backpressure: the kernel's backlog holds the next connections)
 * and each release posts again.  Resource errors (EMFILE and friends)
 * would come back at once if re-posted at once, so they wait on a timer.
 */
#include "internal.h"

#define PX__ACC_BACKOFF_MS 10

struct px_acceptor {
  px_loop *loop;
  px_fd listener;
  px_connpool *pool;
  px_accept_cb cb;
  void *data;
  uint32_t depth;
  uint32_t in_flight; /* accepts and the back-off timer */
  bool stopped;
  bool broken;              /* the listener failed for good */
  bool waiting;             /* the back-off timer runs */
  bool full;                /* paused by a full pool (counted once per pause) */
  bool in_cb;               /* its callback runs (which may stop it) */
  px_acceptor *prev, *next; /* the loop's acceptors */
  px_acceptor_stats st;
  px_op timer;
  uint32_t nidle;
  px_op **idle; /* accept ops not in flight */
  px_op ops[];  /* depth of them */
};

static void px__acc_post(px_acceptor *a);
static void px__acc_timer(px_loop *loop, px_op *op);

/* A stopped acceptor goes once nothing of it is in flight and its
 * callback has returned (px_loop_free stops every acceptor of its loop; a
 * broken one stays until then or px_acceptor_stop). */
static void px__acc_end(px_acceptor *a) {
  if (a->in_flight > 0 || a->in_cb || !a->stopped)
    return;
  if (a->prev != NULL)
    a->prev->next = a->next;
  else
    a->loop->acceptors = a->next;
  if (a->next != NULL)
    a->next->prev = a->prev;
  a->pool->on_release = NULL;
  a->pool->ctx = NULL;
  px__free(a->idle);
  px__free(a);
}

static bool px__acc_resource_error(int r) {
  return r == PX_EMFILE || r == PX_ENFILE || r == PX_ENOBUFS || r == PX_ENOMEM;
}

static void px__acc_done(px_loop *loop, px_op *op) {
  (void)loop;
  px_acceptor *a = op->data;
  a->in_flight--;
  a->st.posted--;
  a->idle[a->nidle++] = op;
  int r = op->result;
  if (r == 0) {
    px_fd fd = px_op_fd(op);
    if (a->stopped) {
      px_fd_close(a->loop, fd);
    } else {
      px_conn_id id;
      void *conn = px_conn_get(a->pool, &id);
      if (conn == NULL) { /* a slot was taken behind the acceptor's back */
        a->st.failed++;
        a->st.last_error = PX_ENOBUFS;
        px_fd_close_reset(a->loop, fd);
      } else {
        a->st.accepted++;
        a->in_cb = true; /* a px_acceptor_stop inside must not free it */
        a->cb(a, fd, conn, id, a->data);
        a->in_cb = false;
      }
    }
  } else if (r != PX_ECANCELED) {
    a->st.failed++;
    a->st.last_error = r;
    if (r == PX_EBADF || r == PX_EINVAL || r == PX_ENOTSOCK ||
        r == PX_EOPNOTSUPP || r == PX_ESHUTDOWN)
      a->broken = true;
    else if (px__acc_resource_error(r) && !a->waiting && !a->stopped &&
             px_timeout(a->loop, &a->timer, PX__ACC_BACKOFF_MS, px__acc_timer,
                        a) == 0) {
      a->waiting = true;
      a->in_flight++;
    }
  }
  px__acc_post(a);
  px__acc_end(a);
}

static void px__acc_timer(px_loop *loop, px_op *op) {
  (void)loop;
  px_acceptor *a = op->data;
  a->in_flight--;
  a->waiting = false;
  px__acc_post(a);
  px__acc_end(a);
}

/* Posts accepts up to depth and the pool's free room. */
static void px__acc_post(px_acceptor *a) {
  if (a->stopped || a->broken || a->waiting)
    return;
  while (a->nidle > 0) {
    if (a->pool->slots.nfree <= a->st.posted) {
      if (a->pool->slots.nfree == 0 && !a->full) {
        a->full = true; /* one pause per stretch of a full pool */
        a->st.paused++;
      }
      return;
    }
    px_op *op = a->idle[a->nidle - 1];
    int r = px_accept(a->loop, op, a->listener, px__acc_done, a);
    if (r < 0) {
      a->st.last_error = r;
      a->broken = r != PX_EBUSY;
      return;
    }
    a->nidle--;
    a->in_flight++;
    a->st.posted++;
    a->full = false;
  }
}

static void px__acc_released(void *ctx) {
  px__acc_post(ctx);
}

int px_acceptor_start(px_loop *loop, px_fd listener, px_connpool *pool,
                      uint32_t depth, px_accept_cb cb, void *data,
                      px_acceptor **out) {
  if (out != NULL)
    *out = NULL;
  if (loop == NULL || pool == NULL || cb == NULL || out == NULL || depth == 0 ||
      depth > 1024)
    return PX_EINVAL;
  if (pool->on_release != NULL)
    return PX_EBUSY; /* one acceptor per pool */
  if (px__fd_get(loop, listener) == NULL)
    return PX_EBADF;
  px_acceptor *a = px__calloc(1, sizeof(*a) + depth * sizeof(px_op));
  px_op **idle = px__malloc(depth * sizeof(*idle));
  if (a == NULL || idle == NULL) {
    px__free(a);
    px__free(idle);
    return PX_ENOMEM;
  }
  a->loop = loop;
  a->listener = listener;
  a->pool = pool;
  a->cb = cb;
  a->data = data;
  a->depth = depth;
  a->idle = idle;
  for (uint32_t i = 0; i < depth; i++)
    a->idle[a->nidle++] = &a->ops[depth - 1 - i];
  pool->on_release = px__acc_released;
  pool->ctx = a;
  a->next = loop->acceptors;
  if (a->next != NULL)
    a->next->prev = a;
  loop->acceptors = a;
  px__acc_post(a);
  if (a->st.posted == 0 && a->broken) {
    int r = a->st.last_error;
    a->stopped = true;
    px__acc_end(a);
    return r;
  }
  *out = a;
  return 0;
}

void px_acceptor_stop(px_acceptor *a) {
  if (a == NULL || a->stopped)
    return;
  a->stopped = true;
  for (uint32_t i = 0; i < a->depth; i++) {
    px_op *op = &a->ops[i];
    if (op->state != PX__IDLE)
      px__cancel_op(a->loop, op);
  }
  if (a->waiting && a->timer.state != PX__IDLE)
    px__cancel_op(a->loop, &a->timer);
  px__acc_end(a);
}

void px__acceptors_stop(px_loop *loop) {
  px_acceptor *a = loop->acceptors, *next;
  for (; a != NULL; a = next) {
    next = a->next; /* a may be freed */
    px_acceptor_stop(a);
  }
}

void px_acceptor_stats_get(const px_acceptor *a, px_acceptor_stats *out) {
  if (a != NULL && out != NULL)
    *out = a->st;
}
