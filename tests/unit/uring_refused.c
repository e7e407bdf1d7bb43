/*
 * px_loop_new where io_uring is refused, as in a container: each case runs
 * in a child process whose seccomp filter makes the io_uring system calls
 * fail with one errno.  A loop that names no backend falls back to
 * posix_aio (where it is built) only when that errno says io_uring is not
 * available (EPERM, ENOSYS, EOPNOTSUPP, EACCES); a resource error (ENOMEM,
 * EMFILE) is reported, and so is any failure of a loop that named uring.
 *
 * PX_TEST_BUILT lists the backends this build holds, best first.
 */
#define _POSIX_C_SOURCE 200809L

/* cmocka.h needs these first; the blank line keeps them apart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "px.h"
#include "seccomp_block.h"

/* What the child saw. */
typedef struct outcome {
  int blocked;          /* the filter is in place */
  int rc_auto;          /* px_loop_new naming nothing */
  char name_auto[32];   /* ... its backend, if it made one */
  int used_auto;        /* ... and a nop and a timer completed on it */
  char line_auto[512];  /* ... PX_DEBUG's line */
  int rc_opts;          /* opts.backend = "uring" */
  char line_opts[512];  /* ... PX_DEBUG's line */
  int rc_env;           /* PX_BACKEND=uring */
  int rc_opts_fallback; /* opts.backend = "posix_aio" (where built) */
} outcome;

static void count_cb(px_loop *loop, px_op *op) {
  (void)loop;
  (*(int *)op->data)++;
}

static int use_and_free(px_loop *loop) {
  px_op nop = {0}, timer = {0};
  int calls = 0;
  if (px_nop(loop, &nop, count_cb, &calls) != 0 ||
      px_timeout(loop, &timer, 1, count_cb, &calls) != 0 ||
      px_run(loop, PX_RUN_DEFAULT) != 0)
    return 0;
  return px_loop_free(loop) == 0 && calls == 2;
}

/* px_loop_new(opts.backend = name) with PX_DEBUG's line captured. */
static int make(const char *name, px_loop **loop, char *line, size_t size) {
  px_loop_opts opts = {0};
  opts.backend = name;
  *loop = NULL;
  if (pt_stderr_capture_start() != 0)
    snprintf(line, size, "(stderr not captured)");
  int rc = px_loop_new(loop, &opts);
  pt_stderr_capture_stop(line, size);
  return rc;
}

static void child(int err, int fd) {
  outcome o;
  memset(&o, 0, sizeof(o));
  px_loop *loop;
  char line[512];
  o.blocked = pt_block_io_uring(err) == 0;
  if (o.blocked) {
    pt_setenv("PX_BACKEND", NULL);
    pt_setenv("PX_DEBUG", "1");
    o.rc_auto = make(NULL, &loop, o.line_auto, sizeof(o.line_auto));
    if (o.rc_auto == 0) {
      snprintf(o.name_auto, sizeof(o.name_auto), "%s",
               px_loop_backend_name(loop));
      o.used_auto = use_and_free(loop);
    }
    o.rc_opts = make("uring", &loop, o.line_opts, sizeof(o.line_opts));
    if (o.rc_opts == 0)
      px_loop_free(loop);
    pt_setenv("PX_BACKEND", "uring");
    o.rc_env = make(NULL, &loop, line, sizeof(line));
    if (o.rc_env == 0)
      px_loop_free(loop);
    pt_setenv("PX_BACKEND", NULL);
    o.rc_opts_fallback = make("posix_aio", &loop, line, sizeof(line));
    if (o.rc_opts_fallback == 0)
      o.rc_opts_fallback = use_and_free(loop) ? 0 : PX_EUNKNOWN;
  }
  ssize_t n = write(fd, &o, sizeof(o));
  _exit(n == (ssize_t)sizeof(o) ? 0 : 1);
}

/* Runs child() under a filter answering err; fills *o. */
static void run_blocked(int err, outcome *o) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    child(err, p[1]);
  }
  close(p[1]);
  size_t got = 0;
  while (got < sizeof(*o)) {
    ssize_t n = read(p[0], (char *)o + got, sizeof(*o) - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    got += (size_t)n;
  }
  close(p[0]);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  assert_int_equal(got, sizeof(*o));
  if (!o->blocked) {
    print_message("no seccomp filter can be installed here (the child said "
                  "why on stderr): io_uring cannot be refused\n");
    skip();
  }
}

static int posix_aio_built(void) {
  return strstr("," PX_TEST_BUILT ",", ",posix_aio,") != NULL;
}

/* px's code for err, and err's text in px_strerror's words. */
static int px_code(int err) {
  switch (err) {
    case EPERM:
      return PX_EPERM;
    case ENOSYS:
      return PX_ENOSYS;
    case EOPNOTSUPP:
      return PX_EOPNOTSUPP;
    case EACCES:
      return PX_EACCES;
    case ENOMEM:
      return PX_ENOMEM;
    case EMFILE:
      return PX_EMFILE;
    default:
      return PX_EUNKNOWN;
  }
}

/* io_uring "unavailable": a loop naming nothing falls back; one naming
 * uring gets the error. */
static void refused_with(int err) {
  outcome o;
  run_blocked(err, &o);
  int code = px_code(err);
  char expect[512];
  if (posix_aio_built()) {
    assert_int_equal(o.rc_auto, 0);
    assert_string_equal(o.name_auto, "posix_aio");
    assert_true(o.used_auto);
    snprintf(expect, sizeof(expect),
             "px: uring unavailable (io_uring_queue_init: %s); using "
             "posix_aio\n",
             px_strerror(code));
    assert_string_equal(o.line_auto, expect);
    assert_int_equal(o.rc_opts_fallback, 0);
  } else {
    assert_int_equal(o.rc_auto, code);
    snprintf(expect, sizeof(expect),
             "px: uring unavailable (io_uring_queue_init: %s); no other "
             "backend is built\n",
             px_strerror(code));
    assert_string_equal(o.line_auto, expect);
  }
  assert_int_equal(o.rc_opts, code);
  snprintf(expect, sizeof(expect),
           "px: uring unavailable (io_uring_queue_init: %s); named by "
           "px_loop_opts.backend, so no other is tried\n",
           px_strerror(code));
  assert_string_equal(o.line_opts, expect);
  assert_int_equal(o.rc_env, code);
}

/* A resource error: reported by every loop, no fallback. */
static void failed_with(int err) {
  outcome o;
  run_blocked(err, &o);
  int code = px_code(err);
  assert_int_equal(o.rc_auto, code);
  char expect[512];
  snprintf(expect, sizeof(expect),
           "px: uring failed (io_uring_queue_init: %s): an error, not a sign "
           "of it being unavailable, so no other backend is tried\n",
           px_strerror(code));
  assert_string_equal(o.line_auto, expect);
  assert_int_equal(o.rc_opts, code);
  assert_int_equal(o.rc_env, code);
  /* posix_aio itself, named, still starts. */
  if (posix_aio_built())
    assert_int_equal(o.rc_opts_fallback, 0);
}

static void eperm_docker_default_profile_falls_back(void **state) {
  (void)state;
  refused_with(EPERM);
}

static void enosys_no_io_uring_in_kernel_falls_back(void **state) {
  (void)state;
  refused_with(ENOSYS);
}

static void eopnotsupp_falls_back(void **state) {
  (void)state;
  refused_with(EOPNOTSUPP);
}

static void eacces_security_module_falls_back(void **state) {
  (void)state;
  refused_with(EACCES);
}

static void enomem_is_reported_not_hidden(void **state) {
  (void)state;
  failed_with(ENOMEM);
}

static void emfile_is_reported_not_hidden(void **state) {
  (void)state;
  failed_with(EMFILE);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(eperm_docker_default_profile_falls_back),
      cmocka_unit_test(enosys_no_io_uring_in_kernel_falls_back),
      cmocka_unit_test(eopnotsupp_falls_back),
      cmocka_unit_test(eacces_security_module_falls_back),
      cmocka_unit_test(enomem_is_reported_not_hidden),
      cmocka_unit_test(emfile_is_reported_not_hidden),
  };
  return cmocka_run_group_tests_name("unit_uring_refused", tests, NULL, NULL);
}
