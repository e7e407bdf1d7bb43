/*
 * file_read — random 4 KiB positional reads from one file through px.
 *
 *   file_read --file PATH [--qd 32] [--seconds 5] [--ops N] [--direct]
 *             [--create-mib M] [--seed N]
 *
 * Keeps --qd reads of 4096 bytes in flight on one handle, each at a random
 * offset aligned to 4096 (px_read with an explicit offset).  A completion
 * must read exactly 4096 bytes (anything else is printed and the program
 * exits 1); its latency, from the px_read call to the start of its callback,
 * is recorded and the op resubmitted at a new random offset.  The run ends
 * after --seconds (default 5) or after --ops reads, whichever comes first
 * (with --ops alone there is no time limit); the reads still in flight then
 * are completed and counted.
 *
 * --direct opens the file with PX_O_DIRECT (buffers are aligned to 4096 in
 * every mode).  --create-mib M creates the file with M MiB of pseudo-random
 * bytes first if it does not exist.  Cached runs read whatever of the file is
 * in the page cache: warm it first (cat FILE > /dev/null) to measure reads
 * from memory.
 *
 * Prints two lines: backend, qd, mode, IOPS, MiB/s and the p50/p99 latency;
 * then the process CPU time (getrusage, all threads, including libc's AIO
 * workers) per read.  Uses px.h and POSIX only.
 */
#define _XOPEN_SOURCE 700 /* posix_memalign, getrusage, clock_gettime */
#include <errno.h>
#include <fcntl.h>
#include <px.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hist.h"

#define BLOCK 4096
#define MAX_QD 4096

/* ---- State. ----------------------------------------------------------- */

typedef struct config {
  const char *path;
  int qd, direct;
  double seconds; /* 0: no time limit */
  uint64_t ops;   /* 0: no count limit */
  uint64_t create_mib;
  uint64_t seed;
} config;

typedef struct slot {
  px_op op;
  void *buf;
  uint64_t start_ns;
} slot;

static config cfg = {.qd = 32};
static px_fd file = PX_INVALID_FD;
static uint64_t nblocks; /* whole 4 KiB blocks in the file */
static uint64_t end_ns;  /* stop submitting at or after this; 0: never */
static uint64_t submitted, completed;
static uint64_t rng;
static hist lat;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: fast, and plenty random for picking blocks. */
static uint64_t rand64(void) {
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 0x2545F4914F6CDD1Dull;
}

static int64_t random_offset(void) {
  return (int64_t)((rand64() % nblocks) * BLOCK);
}

static void on_read(px_loop *loop, px_op *op);

static int submit(px_loop *loop, slot *s) {
  s->start_ns = now_ns();
  int rc =
      px_read(loop, &s->op, file, s->buf, BLOCK, random_offset(), on_read, s);
  if (rc != 0) {
    fprintf(stderr, "file_read: px_read: %s\n", px_strerror(rc));
    return rc;
  }
  submitted++;
  return 0;
}

static int more_wanted(uint64_t now) {
  if (cfg.ops != 0 && submitted >= cfg.ops)
    return 0;
  return end_ns == 0 || now < end_ns;
}

static void on_read(px_loop *loop, px_op *op) {
  slot *s = op->data;
  uint64_t now = now_ns();
  if (op->result != BLOCK) {
    fprintf(stderr, "file_read: read %llu returned %d (%s), expected %d\n",
            (unsigned long long)completed + 1, (int)op->result,
            op->result < 0 ? px_strerror(op->result) : "short read", BLOCK);
    exit(1);
  }
  completed++;
  hist_add(&lat, now - s->start_ns);
  if (more_wanted(now) && submit(loop, s) != 0)
    exit(1);
}

/* ---- Setup. ----------------------------------------------------------- */

static void usage(void) {
  fprintf(stderr,
          "usage: file_read --file PATH [--qd N] [--seconds S] [--ops N]\n"
          "                 [--direct] [--create-mib M] [--seed N]\n");
}

static int parse_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (*s == '\0' || *s == '-' || *end != '\0' || errno != 0 || v < lo || v > hi)
    return -1;
  *out = (uint64_t)v;
  return 0;
}

static int parse_args(int argc, char **argv) {
  int seconds_given = 0;
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i];
    if (strcmp(o, "--direct") == 0) {
      cfg.direct = 1;
      continue;
    }
    const char *v = i + 1 < argc ? argv[++i] : NULL;
    uint64_t u = 0;
    int bad = 0;
    char *end;
    if (v == NULL)
      bad = 1;
    else if (strcmp(o, "--file") == 0)
      cfg.path = v;
    else if (strcmp(o, "--qd") == 0) {
      bad = parse_u64(v, 1, MAX_QD, &u);
      cfg.qd = (int)u;
    } else if (strcmp(o, "--ops") == 0)
      bad = parse_u64(v, 1, UINT64_MAX, &cfg.ops);
    else if (strcmp(o, "--create-mib") == 0)
      bad = parse_u64(v, 1, (uint64_t)1 << 30, &cfg.create_mib);
    else if (strcmp(o, "--seed") == 0)
      bad = parse_u64(v, 0, UINT64_MAX, &cfg.seed);
    else if (strcmp(o, "--seconds") == 0) {
      cfg.seconds = strtod(v, &end);
      bad = *end != '\0' || !(cfg.seconds > 0 && cfg.seconds < 1e6);
      seconds_given = 1;
    } else
      bad = 1;
    if (bad) {
      fprintf(stderr, "file_read: bad argument '%s'\n", o);
      return -1;
    }
  }
  if (cfg.path == NULL)
    return -1;
  if (!seconds_given && cfg.ops == 0)
    cfg.seconds = 5;
  return 0;
}

/* Creates path with mib MiB of pseudo-random bytes (so that no filesystem
 * can store it sparse or compressed), unless it exists already. */
static int create_file(const char *path, uint64_t mib) {
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0 && errno == EEXIST)
    return 0;
  if (fd < 0) {
    fprintf(stderr, "file_read: create %s: %s\n", path, strerror(errno));
    return -1;
  }
  enum { CHUNK = 1 << 20 };
  uint64_t *chunk = malloc(CHUNK);
  int rc = chunk != NULL ? 0 : -1;
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (uint64_t m = 0; rc == 0 && m < mib; m++) {
    for (size_t i = 0; i < CHUNK / sizeof *chunk; i++) {
      x ^= x >> 12;
      x ^= x << 25;
      x ^= x >> 27;
      chunk[i] = x * 0x2545F4914F6CDD1Dull;
    }
    const char *p = (const char *)chunk;
    size_t left = CHUNK;
    while (rc == 0 && left > 0) {
      ssize_t n = write(fd, p, left);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        rc = -1;
      else {
        p += n;
        left -= (size_t)n;
      }
    }
  }
  if (rc == 0 && fsync(fd) < 0)
    rc = -1;
  if (rc != 0)
    fprintf(stderr, "file_read: fill %s: %s\n", path,
            chunk == NULL ? "out of memory" : strerror(errno));
  free(chunk);
  if (close(fd) < 0 && rc == 0) {
    fprintf(stderr, "file_read: close %s: %s\n", path, strerror(errno));
    rc = -1;
  }
  if (rc != 0)
    unlink(path);
  return rc;
}

static double tv_sec(struct timeval tv) {
  return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

int main(int argc, char **argv) {
  if (parse_args(argc, argv) < 0) {
    usage();
    return 2;
  }
  if (cfg.create_mib != 0 && create_file(cfg.path, cfg.create_mib) < 0)
    return 1;
  struct stat st;
  if (stat(cfg.path, &st) < 0) {
    fprintf(stderr, "file_read: %s: %s\n", cfg.path, strerror(errno));
    return 1;
  }
  nblocks = (uint64_t)st.st_size / BLOCK;
  if (nblocks == 0) {
    fprintf(stderr, "file_read: %s is smaller than %d bytes\n", cfg.path,
            BLOCK);
    return 1;
  }
  rng = cfg.seed != 0 ? cfg.seed : now_ns() ^ ((uint64_t)getpid() << 32);
  if (rng == 0)
    rng = 1;

  px_loop_opts opts = {.entries = cfg.qd > 256 ? (uint32_t)cfg.qd : 0};
  px_loop *loop;
  int rc = px_loop_new(&loop, &opts);
  if (rc != 0) {
    fprintf(stderr, "file_read: px_loop_new: %s\n", px_strerror(rc));
    return 1;
  }
  unsigned flags = PX_O_RDONLY | (cfg.direct ? PX_O_DIRECT : 0u);
  rc = px_file_open(loop, cfg.path, flags, 0, &file);
  if (rc != 0) {
    fprintf(stderr, "file_read: open %s%s: %s\n", cfg.path,
            cfg.direct ? " with PX_O_DIRECT" : "", px_strerror(rc));
    px_loop_free(loop);
    return 1;
  }
  slot *slots = calloc((size_t)cfg.qd, sizeof *slots);
  if (slots == NULL) {
    fprintf(stderr, "file_read: out of memory\n");
    return 1;
  }
  for (int i = 0; i < cfg.qd; i++) {
    px_op_init(&slots[i].op);
    if (posix_memalign(&slots[i].buf, BLOCK, BLOCK) != 0) {
      fprintf(stderr, "file_read: out of memory\n");
      return 1;
    }
    memset(slots[i].buf, 0, BLOCK);
  }

  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  uint64_t start = now_ns();
  end_ns = cfg.seconds > 0 ? start + (uint64_t)(cfg.seconds * 1e9) : 0;
  for (int i = 0; i < cfg.qd && more_wanted(start); i++)
    if (submit(loop, &slots[i]) != 0)
      return 1;
  rc = px_run(loop, PX_RUN_DEFAULT);
  uint64_t stop = now_ns();
  getrusage(RUSAGE_SELF, &ru1);
  if (rc != 0) {
    fprintf(stderr, "file_read: px_run: %s\n",
            rc < 0 ? px_strerror(rc) : "returned with reads in flight");
    return 1;
  }

  double secs = (double)(stop - start) / 1e9;
  double iops = (double)completed / secs;
  double user = tv_sec(ru1.ru_utime) - tv_sec(ru0.ru_utime);
  double sys = tv_sec(ru1.ru_stime) - tv_sec(ru0.ru_stime);
  double per = completed ? 1e6 / (double)completed : 0;
  printf("backend=%s qd=%d mode=%s reads=%llu seconds=%.2f iops=%.0f "
         "MiB/s=%.1f p50_us=%.1f p99_us=%.1f\n",
         px_loop_backend_name(loop), cfg.qd, cfg.direct ? "direct" : "cached",
         (unsigned long long)completed, secs, iops,
         iops * BLOCK / (1024.0 * 1024.0),
         (double)hist_percentile(&lat, 0.50) / 1e3,
         (double)hist_percentile(&lat, 0.99) / 1e3);
  printf("cpu_us_per_read=%.2f user_us_per_read=%.2f sys_us_per_read=%.2f "
         "cpu_s=%.2f wall_s=%.2f\n",
         (user + sys) * per, user * per, sys * per, user + sys, secs);

  rc = px_fd_close(loop, file);
  if (rc != 0)
    fprintf(stderr, "file_read: close: %s\n", px_strerror(rc));
  int frc = px_loop_free(loop);
  if (frc != 0)
    fprintf(stderr, "file_read: px_loop_free: %s\n", px_strerror(frc));
  for (int i = 0; i < cfg.qd; i++)
    free(slots[i].buf);
  free(slots);
  return rc == 0 && frc == 0 && completed > 0 ? 0 : 1;
}
