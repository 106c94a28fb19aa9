#!/usr/bin/env python3
"""Latency of one durable 4 KiB write on this machine's disk, four ways:
appending (the file grows: data and size are synced), overwriting a
preallocated file with fdatasync, with O_DSYNC, and with O_DIRECT|O_DSYNC.
This is the floor under any log entry that must be durable before the
statement it authorizes runs (invariant 1).

    python3 bench/fsync.py [DIR] [N]     # run it on the file system of data_dir (/tmp for bench/pg.sh); default .
"""
import mmap
import os
import sys
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "."
N = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
SIZE = 4096
PATH = os.path.join(DIR, f".fsync-bench.{os.getpid()}")


def report(name, ts):
    ts.sort()
    print(f"{name:<28} p50 {ts[len(ts) // 2] // 1000:>5} µs   p90 {ts[len(ts) * 9 // 10] // 1000:>5} µs")


def preallocate():
    fd = os.open(PATH, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b"\0" * SIZE * N)
    os.fsync(fd)
    os.close(fd)


def timed(name, flags, write):
    """Opens PATH with `flags`, times N calls of write(fd, i), reports."""
    fd = os.open(PATH, os.O_RDWR | flags, 0o600)
    ts = []
    for i in range(N):
        t = time.perf_counter_ns()
        write(fd, i)
        ts.append(time.perf_counter_ns() - t)
    os.close(fd)
    report(name, ts)


def main():
    buf = b"x" * SIZE
    aligned = mmap.mmap(-1, SIZE)
    aligned.write(buf)

    def synced(fd, _):
        os.write(fd, buf)
        os.fdatasync(fd)

    def positioned(fd, i):
        os.pwritev(fd, [aligned], i * SIZE)

    try:
        timed("append + fdatasync", os.O_CREAT | os.O_TRUNC, synced)
        preallocate()
        timed("overwrite + fdatasync", 0, synced)
        for flags, name in [(os.O_DSYNC, "overwrite, O_DSYNC"), (os.O_DSYNC | os.O_DIRECT, "overwrite, O_DIRECT|O_DSYNC")]:
            preallocate()
            timed(name, flags, positioned)
    finally:
        if os.path.exists(PATH):
            os.unlink(PATH)


main()
