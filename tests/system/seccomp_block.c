/*
 * A seccomp filter that refuses io_uring with one errno, the way Docker's
 * default profile does (EPERM).  Plain BPF through prctl, so no libseccomp:
 * a filter of five instructions needs no library.
 */
#define _POSIX_C_SOURCE 200809L

#include "seccomp_block.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
#define PT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define PT_ARCH AUDIT_ARCH_AARCH64
#elif defined(__i386__)
#define PT_ARCH AUDIT_ARCH_I386
#elif defined(__riscv) && __riscv_xlen == 64
#define PT_ARCH AUDIT_ARCH_RISCV64
#endif

#ifdef PT_ARCH
/* Installs a filter that makes the calls numbered nr[0..n-1] fail with
 * err (at most 4). */
static int pt_fail_calls(const long *nr, int n, int err) {
  struct sock_filter prog[] = {
      /* Another architecture's system call numbers mean other calls: a
       * process of this test never makes one, so it is killed. */
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PT_ARCH, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr[0], 4, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr[n > 1], 3, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr[n > 2 ? 2 : 0], 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr[n > 3 ? 3 : 0], 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K,
               SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
  };
  struct sock_fprog fprog = {
      .len = (unsigned short)(sizeof(prog) / sizeof(prog[0])),
      .filter = prog,
  };
  /* Without NO_NEW_PRIVS only a privileged process may install a filter. */
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    fprintf(stderr, "prctl(PR_SET_NO_NEW_PRIVS): %s\n", strerror(errno));
    return -1;
  }
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog, 0, 0) != 0) {
    fprintf(stderr, "prctl(PR_SET_SECCOMP): %s\n", strerror(errno));
    return -1;
  }
  return 0;
}
#endif

int pt_block_io_uring(int err) {
#if defined(PT_ARCH) && defined(__NR_io_uring_setup)
  static const long nr[] = {__NR_io_uring_setup, __NR_io_uring_enter,
                            __NR_io_uring_register};
  return pt_fail_calls(nr, 3, err);
#else
  (void)err;
  fprintf(stderr, "no seccomp filter for this architecture\n");
  return -1;
#endif
}

int pt_fail_accept(int err) {
#if defined(PT_ARCH) && defined(__NR_accept4)
#ifdef __NR_accept
  static const long nr[] = {__NR_accept4, __NR_accept};
  return pt_fail_calls(nr, 2, err);
#else
  static const long nr[] = {__NR_accept4};
  return pt_fail_calls(nr, 1, err);
#endif
#else
  (void)err;
  fprintf(stderr, "no seccomp filter for this architecture\n");
  return -1;
#endif
}

int pt_errno_by_name(const char *name) {
  static const struct {
    const char *name;
    int err;
  } known[] = {
      {"EPERM", EPERM},   {"ENOSYS", ENOSYS}, {"EOPNOTSUPP", EOPNOTSUPP},
      {"EACCES", EACCES}, {"ENOMEM", ENOMEM}, {"EMFILE", EMFILE},
      {"EINVAL", EINVAL}, {"EAGAIN", EAGAIN},
  };
  for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
    if (strcmp(known[i].name, name) == 0)
      return known[i].err;
  return 0;
}
