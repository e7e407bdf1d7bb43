/*
 * Which backend a new loop gets.
 *
 * A library may hold several backends (meson option io_backends).  A loop
 * takes the one px_loop_opts.backend names, else the one the PX_BACKEND
 * environment variable names, else the first of those built, best first
 * (uring, posix_aio, iocp), that starts.  Only that automatic choice
 * falls back, and only past a backend that answers that its mechanism is
 * not available here (px__unavailable: io_uring refused by a seccomp
 * profile or by kernel.io_uring_disabled, a kernel without it or without
 * an opcode px needs).  A named backend that does not start, and any other
 * error (out of memory, out of descriptors), is reported as it is: hiding
 * it behind a slower backend would only move the failure somewhere harder
 * to see.
 *
 * PX_DEBUG (set and not "0") prints one line per new loop to stderr: the
 * backend chosen and why, or why none was.
 *
 * Nothing here is shared between threads but the environment, which is
 * only read: loops may be created on several threads at once.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#ifdef PX__HAVE_URING
extern const px__backend px__backend_uring;
#endif
#ifdef PX__HAVE_POSIX_AIO
extern const px__backend px__backend_posix_aio;
#endif
#ifdef PX__HAVE_IOCP
extern const px__backend px__backend_iocp;
#endif

/* The backends built into this library, best first. */
static const px__backend *const px__built[] = {
#ifdef PX__HAVE_URING
    &px__backend_uring,
#endif
#ifdef PX__HAVE_POSIX_AIO
    &px__backend_posix_aio,
#endif
#ifdef PX__HAVE_IOCP
    &px__backend_iocp,
#endif
};
#define PX__NBUILT (sizeof(px__built) / sizeof(px__built[0]))

/* Every backend px has, built here or not. */
static const char *const px__all[] = {"uring", "posix_aio", "iocp"};

/* What the backend being started says failed (px__init_why). */
static _Thread_local const char *px__why;

void px__init_why(const char *step) {
  px__why = step;
}

static bool px__unavailable(int r) {
  return r == PX_ENOSYS || r == PX_EPERM || r == PX_EACCES ||
         r == PX_EOPNOTSUPP;
}

/* ---- PX_DEBUG. --------------------------------------------------------- */

static bool px__debug(void) {
  const char *d = getenv("PX_DEBUG");
  return d != NULL && d[0] != '\0' && strcmp(d, "0") != 0;
}

/* One line, written with one call so that lines of loops made on several
 * threads do not mix. */
static void px__say(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
  va_end(ap);
  if (n < 0)
    return;
  size_t len = strlen(line);
  line[len] = '\n';
  fwrite(line, 1, len + 1, stderr);
  fflush(stderr);
}

/* Appends "name state (step: error)" of a start that failed to buf. */
static void px__note(char *buf, size_t size, const char *name, int r) {
  size_t len = strlen(buf);
  const char *state = px__unavailable(r) ? "unavailable" : "failed";
  if (px__why != NULL)
    snprintf(buf + len, size - len, "%s%s %s (%s: %s)", len ? "; " : "", name,
             state, px__why, px_strerror(r));
  else
    snprintf(buf + len, size - len, "%s%s %s (%s)", len ? "; " : "", name,
             state, px_strerror(r));
}

static void px__built_list(char *buf, size_t size) {
  buf[0] = '\0';
  for (size_t i = 0; i < PX__NBUILT; i++) {
    size_t len = strlen(buf);
    snprintf(buf + len, size - len, "%s%s", i ? ", " : "", px__built[i]->name);
  }
}

/* ---- The choice. ------------------------------------------------------- */

static int px__start_backend(px_loop *loop, const px__backend *bk,
                             const px_loop_opts *opts) {
#ifndef PX__ONLY_BACKEND
  loop->backend = bk;
#else
  (void)bk; /* the only one */
#endif
  px__why = NULL;
  return bk->init(loop, opts);
}

static int px__named(px_loop *loop, const px_loop_opts *opts, const char *name,
                     const char *by) {
  bool debug = px__debug();
  for (size_t i = 0; i < PX__NBUILT; i++) {
    if (strcmp(px__built[i]->name, name) != 0)
      continue;
    int r = px__start_backend(loop, px__built[i], opts);
    if (debug && r == 0) {
      px__say("px: using %s (named by %s)", name, by);
    } else if (debug) {
      char what[256] = "";
      px__note(what, sizeof(what), name, r);
      px__say("px: %s; named by %s, so no other is tried", what, by);
    }
    return r;
  }
  /* A name px knows but this build left out, or no backend's name. */
  int r = PX_EINVAL;
  for (size_t i = 0; i < sizeof(px__all) / sizeof(px__all[0]); i++)
    if (strcmp(px__all[i], name) == 0)
      r = PX_EOPNOTSUPP;
  if (debug) {
    char built[64];
    px__built_list(built, sizeof(built));
    px__say("px: %s \"%.32s\": %s (built: %s)", by, name,
            r == PX_EINVAL ? "no backend has that name"
                           : "not built into this library",
            built);
  }
  return r;
}

static int px__auto(px_loop *loop, const px_loop_opts *opts) {
  bool debug = px__debug();
  char what[384] = ""; /* the backends passed over, and why */
  for (size_t i = 0; i < PX__NBUILT; i++) {
    const px__backend *bk = px__built[i];
    int r = px__start_backend(loop, bk, opts);
    if (r == 0) {
      if (debug && what[0] != '\0')
        px__say("px: %s; using %s", what, bk->name);
      else if (debug)
        px__say("px: using %s (the first of those built)", bk->name);
      return 0;
    }
    if (debug)
      px__note(what, sizeof(what), bk->name, r);
    if (!px__unavailable(r)) {
      if (debug)
        px__say("px: %s: an error, not a sign of it being unavailable, so "
                "no other backend is tried",
                what);
      return r;
    }
    if (i + 1 == PX__NBUILT) {
      if (debug)
        px__say("px: %s; no other backend is built", what);
      return r;
    }
  }
  return PX_EINVAL; /* not reached: at least one backend is built */
}

int px__backend_init(px_loop *loop, const px_loop_opts *opts) {
  const char *name = opts->backend, *by = "px_loop_opts.backend";
  if (name == NULL) {
    /* An empty variable counts as unset, as for most variables. */
    name = getenv("PX_BACKEND");
    by = "PX_BACKEND";
    if (name != NULL && name[0] == '\0')
      name = NULL;
  }
  if (name == NULL || strcmp(name, "auto") == 0)
    return px__auto(loop, opts);
  return px__named(loop, opts, name, by);
}
