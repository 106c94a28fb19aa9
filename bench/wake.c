/*
 * How long one thread takes to wake another and hear back on this machine:
 * a futex ping-pong between two threads, with a pause between rounds so
 * that the other thread's CPU can go idle (as a store writer or a Tokio
 * worker does between a lone caller's requests). Prints the round trip
 * (two wake-ups) at p50 and p90 over 2,000 rounds.
 *
 *   cc -O2 -pthread bench/wake.c -o /tmp/wake
 *   /tmp/wake GAP_US PLACE [SPINS]
 *     GAP_US  pause between rounds (0: back to back)
 *     PLACE   "apart": the two threads pinned to CPUs 0 and 1 (every wake-up
 *             crosses CPUs); "together": both on CPU 0; "free": the
 *             scheduler places them
 *     SPINS   the answering thread pauses up to this many times before it
 *             sleeps (default 0)
 *
 * bench/README.md §16 has the figures.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { IDLE, ASKED, ANSWERED };
#define ROUNDS 2000

static atomic_int state = IDLE;
static long spins;

/* A spin-wait hint to the CPU (none where there is no such instruction). */
static inline void pause_cpu(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Sleeps (after up to `spins` pauses) until `state` is `want`. */
static void wait_for(int want) {
  for (;;) {
    int seen = atomic_load(&state);
    for (long i = 0; i < spins && seen != want; i++) {
      pause_cpu();
      seen = atomic_load(&state);
    }
    if (seen == want)
      return;
    syscall(SYS_futex, &state, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
  }
}

static void wake(void) { syscall(SYS_futex, &state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0); }

static int place_apart = -1; /* 1 apart, 0 together, -1 free */

static void pin(int cpu) {
  if (place_apart < 0)
    return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(place_apart ? cpu : 0, &set);
  if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
    fprintf(stderr, "cannot pin to CPU %d\n", cpu);
    exit(1);
  }
}

static void *answer(void *unused) {
  (void)unused;
  pin(1);
  for (;;) {
    wait_for(ASKED);
    atomic_store(&state, ANSWERED);
    wake();
  }
  return NULL;
}

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s GAP_US apart|together|free [SPINS]\n", argv[0]);
    return 2;
  }
  int gap = atoi(argv[1]);
  const char *place = argv[2];
  if (strcmp(place, "apart") == 0)
    place_apart = 1;
  else if (strcmp(place, "together") == 0)
    place_apart = 0;
  else if (strcmp(place, "free") != 0) {
    fprintf(stderr, "PLACE must be apart, together or free\n");
    return 2;
  }
  spins = argc > 3 ? atol(argv[3]) : 0;
  pin(0);
  pthread_t t;
  if (pthread_create(&t, NULL, answer, NULL) != 0) {
    perror("pthread_create");
    return 1;
  }
  static double rt[ROUNDS];
  for (int i = 0; i < ROUNDS; i++) {
    if (gap > 0)
      usleep(gap);
    double t0 = now_us();
    atomic_store(&state, ASKED);
    wake();
    while (atomic_load(&state) != ANSWERED)
      syscall(SYS_futex, &state, FUTEX_WAIT_PRIVATE, ASKED, NULL, NULL, 0);
    rt[i] = now_us() - t0;
    atomic_store(&state, IDLE);
  }
  qsort(rt, ROUNDS, sizeof rt[0], by_value);
  printf("gap %d us, %s, spins %ld: round trip p50 %.1f us, p90 %.1f us\n", gap, place, spins,
         rt[ROUNDS / 2], rt[ROUNDS * 9 / 10]);
  return 0;
}
