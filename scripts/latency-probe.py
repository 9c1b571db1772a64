#!/usr/bin/env python3
"""Second opinion on a load tool's fan-out latency: two probe subscribers time the same messages
on their own sockets while the tool runs. Probe A connects before the tool's subscribers, probe
B once they are connected, so A is the first subscriber of the server's list and B the last.
Each reads one socket, so neither adds the queueing of a receiver with thousands of sockets.

    scripts/latency-probe.py ADDR WAIT_S -- COMMAND...

WAIT_S: seconds after starting COMMAND when the tool's subscribers are all connected (probe B
connects then). Markers understood: ringfan-load's `@publisher:seq:send_ns;` (CLOCK_MONOTONIC,
same machine) and tcpkali's `TCPKaliMsgTS-<16 hex digits>.` (gettimeofday in microseconds).
Only markers sent after B connected count, for both probes. Prints the command's own output,
then one line per probe: count, p50 and p99 in ms.
"""
import re
import socket
import subprocess
import sys
import threading
import time

RINGFAN_LOAD = re.compile(rb"@\d+:\d+:(\d+);")
TCPKALI = re.compile(rb"TCPKaliMsgTS-([0-9a-f]{16})\.")


def reader(sock, lat, since, stop):
    buf = b""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            continue
        if not data:
            return
        mono, wall = time.monotonic_ns(), time.time_ns()
        buf += data
        cut = buf.rfind(b"\n") + 1
        for m in RINGFAN_LOAD.finditer(buf, 0, cut):
            sent = int(m.group(1))
            if since[0] and sent >= since[0][0]:
                lat.append((mono - sent) / 1e6)
        for m in TCPKALI.finditer(buf, 0, cut):
            sent = int(m.group(1), 16) * 1000
            if since[0] and sent >= since[0][1]:
                lat.append((wall - sent) / 1e6)
        buf = buf[cut:]


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main():
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        sys.exit("usage: latency-probe.py HOST:PORT WAIT_S -- COMMAND...")
    host, port = sys.argv[1].rsplit(":", 1)
    wait_s = float(sys.argv[2])
    since, stop = [None], threading.Event()
    probes = {"A (connected before the tool's subscribers)": [], "B (connected after them)": []}
    threads = []

    def connect(lat):
        s = socket.create_connection((host, int(port)), timeout=5)
        t = threading.Thread(target=reader, args=(s, lat, since, stop), daemon=True)
        t.start()
        threads.append(t)

    lats = list(probes.values())
    connect(lats[0])
    time.sleep(0.2)
    tool = subprocess.Popen(sys.argv[4:])
    time.sleep(wait_s)
    connect(lats[1])
    time.sleep(0.5)
    since[0] = (time.monotonic_ns(), time.time_ns())
    tool.wait()
    time.sleep(0.5)
    stop.set()
    for name, lat in probes.items():
        print(f"probe {name}: n={len(lat)} p50={percentile(lat, 0.5):.2f} ms p99={percentile(lat, 0.99):.2f} ms")


if __name__ == "__main__":
    main()
