/* What the uring backend shows its tests: the check of the kernel's probe. */
#ifndef PX_BACKEND_URING_URING_H
#define PX_BACKEND_URING_URING_H

#include <liburing.h>
#include <stdbool.h>

/* NULL when the kernel whose probe is p has every opcode px needs, else
 * the name of the first one missing.  *multishot: the kernel also does
 * multishot receives. */
const char *px__uring_probe_check(const struct io_uring_probe *p,
                                  bool *multishot);

/* For tests (NULL otherwise): edits the kernel's probe before
 * px__uring_probe_check reads it, to play a kernel that lacks an opcode.
 * Set it while no loop is being created. */
extern void (*px__uring_probe_hook)(struct io_uring_probe *p);

#endif
