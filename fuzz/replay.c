/* Runs a fuzz target's LLVMFuzzerTestOneInput over every file of the corpus
 * directories (or files) named on the command line, without libFuzzer: the
 * meson tests fuzz_replay_* build it with each target and replay its corpus,
 * so the corpora stay passing in every build.  POSIX only.
 *
 *   cc -Iexamples/http fuzz/replay.c fuzz/http_parse_fuzz.c \
 *     examples/http/http_parse.c -o /tmp/replay
 *   /tmp/replay fuzz/corpus/http_parse */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Runs the target over one file; returns 0, or -1 if it cannot be read. */
static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return -1;
  size_t cap = 4096, n = 0;
  uint8_t *buf = malloc(cap);
  for (size_t got; buf; n += got) {
    if (n == cap)
      buf = realloc(buf, cap *= 2); /* leaks on failure: we exit anyway */
    if (!buf || (got = fread(buf + n, 1, cap - n, f)) == 0)
      break;
  }
  int bad = !buf || ferror(f);
  fclose(f);
  if (bad)
    return -1;
  /* An exact-size copy, as libFuzzer gives. */
  uint8_t *data = malloc(n ? n : 1);
  if (!data)
    return -1;
  memcpy(data, buf, n);
  free(buf);
  LLVMFuzzerTestOneInput(data, n);
  free(data);
  return 0;
}

/* Replays a directory's regular files; returns how many, or -1. */
static long replay_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d)
    return -1;
  long count = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    char path[4096];
    struct stat st;
    if (e->d_name[0] == '.' ||
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >=
            (int)sizeof path ||
        stat(path, &st) != 0 || !S_ISREG(st.st_mode))
      continue;
    if (replay_file(path) != 0) {
      count = -1;
      break;
    }
    count++;
  }
  closedir(d);
  return count;
}

int main(int argc, char **argv) {
  long total = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    long n = stat(argv[i], &st) != 0     ? -1
             : S_ISDIR(st.st_mode)       ? replay_dir(argv[i])
             : replay_file(argv[i]) == 0 ? 1
                                         : -1;
    if (n <= 0) {
      fprintf(stderr, "replay: %s: %s\n", argv[i],
              n == 0 ? "no inputs" : "cannot read");
      return 1;
    }
    printf("replay: %s: %ld inputs\n", argv[i], n);
    total += n;
  }
  if (total == 0) {
    fprintf(stderr, "usage: replay CORPUS_DIR_OR_FILE...\n");
    return 1;
  }
  return 0;
}
