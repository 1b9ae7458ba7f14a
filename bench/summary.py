"""Summarise bench/run's results: the median of each workload for each
server and the ratio ours/C, with which direction is better."""

import statistics
import sys
from collections import defaultdict

# Workload -> (unit, True if higher is better)
UNITS = {
    "mem.randread4k.qd32": ("IOPS", True),
    "mem.randwrite4k.qd32": ("IOPS", True),
    "mem.randread4k.qd32.x4": ("IOPS, 4 conns", True),
    "mem.randwrite4k.qd32.x4": ("IOPS, 4 conns", True),
    "mem.seqread1M.qd8": ("MiB/s", True),
    "mem.randread4k.qd1.lat": ("us mean latency", False),
    "mem.peak_rss": ("MiB peak RSS", False),
    "copy.null4G": ("MiB/s", True),
    "file.randread4k.qd32": ("IOPS", True),
    "start.to_run_us": ("us to --run", False),
    "start.run_to_exit_us": ("us to exit", False),
    "curl.http.copy": ("MiB/s", True),
    "tls.plain.copy1G": ("MiB/s", True),
    "tls.psk.copy1G": ("MiB/s, PSK TLS", True),
    "sh.pread64k.calls_per_s": ("script calls/s", True),
    "eval.pread64k.calls_per_s": ("script calls/s", True),
}


def main(path):
    values = defaultdict(lambda: defaultdict(list))
    order = []
    with open(path) as f:
        for line in f:
            workload, who, value = line.split()
            if workload not in order:
                order.append(workload)
            values[workload][who].append(float(value))
    print(f"{'workload':28} {'unit':18} {'ours':>10} {'C':>10} {'ours/C':>7}  better")
    for w in order:
        if w.startswith("cpu."):
            # Server CPU (utime+stime) per operation, or for a whole copy.
            unit, higher = ("ms server CPU" if w.endswith(".ms") else "us CPU/op"), False
        else:
            unit, higher = UNITS.get(w, ("", True))
        ours = statistics.median(values[w]["ours"]) if values[w]["ours"] else None
        c = statistics.median(values[w]["c"]) if values[w]["c"] else None
        if ours is None or c is None:
            continue
        ratio = ours / c if c else float("inf")
        better = "higher" if higher else "lower"
        print(f"{w:28} {unit:18} {ours:10.1f} {c:10.1f} {ratio:7.2f}  {better}")


if __name__ == "__main__":
    main(sys.argv[1])
