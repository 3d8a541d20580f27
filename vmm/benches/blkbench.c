/*
 * blkbench: block device / file throughput for mica-vmm's benchmarks, run both
 * inside a guest (on /dev/vdX, O_DIRECT) and on the host (on the image file).
 *
 *   blkbench MODE PATH SIZE_MIB [direct]
 *     MODE: seqread | seqwrite (1 MiB requests over SIZE_MIB)
 *           randread           (4 KiB requests at random aligned offsets, for
 *                               as many requests as SIZE_MIB holds, at most
 *                               4000: sustained heavy I/O can stall the nested
 *                               test host)
 *   prints: "MODE bytes=N seconds=S MBps=X iops=Y"
 *
 * Built static by benches/nested_guest.rs so it runs in the tiny guest.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: blkbench seqread|seqwrite|randread PATH SIZE_MIB [direct]\n");
        return 2;
    }
    const char *mode = argv[1];
    const char *path = argv[2];
    long long size = atoll(argv[3]) << 20;
    int direct = argc > 4 && strcmp(argv[4], "direct") == 0;
    int write = strcmp(mode, "seqwrite") == 0;
    int random = strcmp(mode, "randread") == 0;
    int fd = open(path, (write ? O_WRONLY : O_RDONLY) | (direct ? O_DIRECT : 0));
    if (fd < 0) {
        perror(path);
        return 1;
    }
    size_t bs = random ? 4096 : (1 << 20);
    void *buf;
    if (posix_memalign(&buf, 4096, bs)) {
        return 1;
    }
    memset(buf, 0x5a, bs);
    long long count = size / bs;
    if (random && count > 4000) {
        count = 4000;
    }
    long long blocks = size / 4096;
    uint64_t x = 88172645463325252ULL;
    long long done = 0;
    double t0 = now();
    for (long long i = 0; i < count; i++) {
        off_t off;
        if (random) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            off = (off_t)(x % blocks) * 4096;
        } else {
            off = (off_t)i * bs;
        }
        ssize_t n = write ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);
        if (n != (ssize_t)bs) {
            perror("I/O");
            return 1;
        }
        done += n;
    }
    if (write) {
        fsync(fd);
    }
    double s = now() - t0;
    printf("%s bytes=%lld seconds=%.3f MBps=%.1f iops=%.0f\n", mode, done, s,
           done / s / 1e6, count / s);
    return 0;
}
