#!/usr/bin/env python3
"""What a journal's commit costs on this machine's disk: N appends of REC bytes, each followed by
fdatasync, to a file that grows with each append (as the journals' segments do today) and to a
file written full of zeros beforehand (its size and extents then do not change, so fdatasync
writes no metadata). Prints wall and CPU microseconds per commit, alternated, three rounds.
Usage: fdatasync-bench.py [DIR] [N] [REC]  (defaults: /tmp 3000 4000)."""
import os
import resource
import sys
import time


def bench(path, prealloc, n, rec):
    if os.path.exists(path):
        os.remove(path)
    flags = os.O_WRONLY | os.O_CREAT | (0 if prealloc else os.O_APPEND)
    fd = os.open(path, flags, 0o600)
    if prealloc:
        os.write(fd, b"\0" * (n * rec + 4096))
        os.fsync(fd)
        os.lseek(fd, 0, 0)
    buf = b"x" * rec
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    for _ in range(n):
        os.write(fd, buf)
        os.fdatasync(fd)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    os.close(fd)
    os.remove(path)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall / n * 1e6, cpu / n * 1e6


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "/tmp"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    rec = int(sys.argv[3]) if len(sys.argv) > 3 else 4000
    path = os.path.join(d, "fdatasync-bench.seg")
    for _ in range(3):
        for prealloc in (False, True):
            wall, cpu = bench(path, prealloc, n, rec)
            kind = "zero-filled" if prealloc else "growing    "
            print(f"{kind} wall {wall:.0f} us/commit, cpu {cpu:.1f} us/commit")


if __name__ == "__main__":
    main()
