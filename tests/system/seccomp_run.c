/*
 * seccomp_run [-e ERRNO] PROGRAM [ARG...]: runs PROGRAM in this process
 * after installing a seccomp filter under which the io_uring system calls
 * fail with ERRNO (default EPERM, what Docker's default profile answers),
 * as in a container that refuses io_uring.  Exit status: PROGRAM's, or 2
 * when the filter or the exec failed (a failure, never a skip: the test
 * that uses it must not pass without running).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "seccomp_block.h"

int main(int argc, char **argv) {
  int err = EPERM, i = 1;
  if (argc > 2 && strcmp(argv[1], "-e") == 0) {
    err = pt_errno_by_name(argv[2]);
    i = 3;
  }
  if (err == 0 || i >= argc) {
    fprintf(stderr, "usage: seccomp_run [-e EPERM|ENOSYS|...] PROGRAM "
                    "[ARG...]\n");
    return 2;
  }
  if (pt_block_io_uring(err) != 0)
    return 2;
  execv(argv[i], argv + i);
  fprintf(stderr, "seccomp_run: %s: %s\n", argv[i], strerror(errno));
  return 2;
}
