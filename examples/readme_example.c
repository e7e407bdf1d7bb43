/* A 10 ms timer, then "hello" through a socket pair: the recv posted first
 * completes once the timer's callback has sent the bytes. */
#include <px.h>
#include <stdio.h>
#include <string.h>

static px_fd sp[2];
static px_op timer, sender, receiver;
static char buf[16];

static void on_done(px_loop *loop, px_op *op) { /* op->data names the op */
  (void)loop;
  printf("%s: %d (%s)\n", (char *)op->data, (int)op->result,
         px_strerror(op->result));
}

static void on_timer(px_loop *loop, px_op *op) {
  on_done(loop, op);
  if (px_send(loop, &sender, sp[0], "hello", 5, on_done, "send") != 0)
    px_stop(loop); /* nothing would ever complete the recv */
}

int main(void) {
  px_loop *loop;
  if (px_loop_new(&loop, NULL) != 0 || px_socketpair(loop, sp) != 0)
    return 1;
  int rc = px_recv(loop, &receiver, sp[1], buf, sizeof buf, on_done, "recv");
  if (rc == 0)
    rc = px_timeout(loop, &timer, 10, on_timer, "timer");
  if (rc == 0)
    rc = px_run(loop, PX_RUN_DEFAULT); /* returns 0 when nothing is left */
  int ok = rc == 0 && receiver.result == 5 && memcmp(buf, "hello", 5) == 0;
  printf("backend %s: %s\n", px_loop_backend_name(loop), ok ? "ok" : "FAILED");
  if (ok && (px_fd_close(loop, sp[0]) != 0 || px_fd_close(loop, sp[1]) != 0))
    ok = 0;
  return px_loop_free(loop) == 0 && ok ? 0 : 1;
}
