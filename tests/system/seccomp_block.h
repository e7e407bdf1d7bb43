/* A seccomp filter that refuses io_uring, as container runtimes do. */
#ifndef PX_TEST_SECCOMP_BLOCK_H
#define PX_TEST_SECCOMP_BLOCK_H

/* Makes io_uring_setup, io_uring_enter and io_uring_register fail with
 * err (an errno value, positive) in the calling thread and every thread
 * and process it starts from now on; the filter cannot be removed.
 * Returns 0, or -1 with a reason printed on stderr (no seccomp here, an
 * architecture this file does not know). */
int pt_block_io_uring(int err);

/* Makes accept and accept4 fail with err in the calling thread and every
 * thread and process it starts from now on (a descriptor table that is
 * full, without filling one).  Returns 0, or -1 as pt_block_io_uring. */
int pt_fail_accept(int err);

/* The errno value named (EPERM, ENOSYS, ...), or 0 for a name not known. */
int pt_errno_by_name(const char *name);

#endif
