#!/usr/bin/env python3
"""CPU split of a load phase, by process name, from /proc (Linux).

  cpu_split.py snap FILE PID               # record every process's CPU time, the
                                           # machine's, and what PID's reaped children used
  cpu_split.py diff FILE PID N NAME=COMM…  # since FILE: CPU µs per unit of work (N
                                           # units) by process, and how busy the machine was

NAME=COMM counts the processes whose /proc/PID/comm is COMM under NAME;
NAME=children counts the children PID waited for meanwhile (e.g. the load
generators a script started and waited for). A process started after the
snapshot counts from zero; what none of them used shows as "other".
SPLIT_UNIT names the unit of work in the output (default "unit").
"""
import json
import os
import sys

HZ = os.sysconf("SC_CLK_TCK")


def procs():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        # comm is in parentheses and may hold spaces or parentheses itself.
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # Fields of stat(5) from the 3rd: utime, stime, cutime, cstime are the
        # 14th to 17th (a process's own CPU and its reaped children's: a
        # PostgreSQL backend that ended counts in the postmaster's), ppid the
        # 4th, start time the 22nd.
        ticks = sum(int(x) for x in fields[11:15])
        out[pid] = (comm, ticks, fields[19], fields[1])
    return out


def children(pid):
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[13]) + int(fields[14])  # cutime, cstime


def machine():
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    idle = cpu[3] + cpu[4]
    return sum(cpu[:8]), idle


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "snap":
        total, idle = machine()
        snap = {"procs": procs(), "total": total, "idle": idle, "children": children(sys.argv[3])}
        with open(sys.argv[2], "w") as f:
            json.dump(snap, f)
        return
    if len(sys.argv) < 6 or sys.argv[1] != "diff" or any("=" not in a for a in sys.argv[5:]):
        sys.exit(__doc__)
    with open(sys.argv[2]) as f:
        before = json.load(f)
    units = max(int(sys.argv[4]), 1)
    total, idle = machine()
    busy = (total - before["total"]) - (idle - before["idle"])
    by = {}
    now = procs()
    for pid, (comm, ticks, start, _) in now.items():
        old = before["procs"].get(pid)
        base = old[1] if old and old[2] == start else 0
        by[comm] = by.get(comm, 0) + ticks - base
    # A process that ended meanwhile is in its parent's reaped children with
    # all its CPU: what it had used before the snapshot is not this phase's.
    for pid, (_, ticks, start, ppid) in before["procs"].items():
        if pid not in now and ppid in now:
            by[now[ppid][0]] = by.get(now[ppid][0], 0) - ticks
    by["children"] = children(sys.argv[3]) - before["children"]
    counted = 0
    parts = []
    for arg in sys.argv[5:]:
        name, comm = arg.split("=", 1)
        t = by.get(comm, 0)
        counted += t
        parts.append(f"{name} {t / HZ * 1e6 / units:.0f}")
    parts.append(f"other {(busy - counted) / HZ * 1e6 / units:.0f}")
    span = (total - before["total"]) or 1
    print(f"CPU µs per {os.environ.get('SPLIT_UNIT', 'unit')}: {', '.join(parts)}; machine busy {100 * busy / span:.0f} %")


if __name__ == "__main__":
    main()
