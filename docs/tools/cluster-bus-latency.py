#!/usr/bin/env python3
"""Latency of a plain PUBLISH from one Redis node to a subscriber on another.

    docs/tools/cluster-bus-latency.py PUB_PORT SUB_PORT [RATE] [COUNT]

Publishes COUNT messages (default 1000) at RATE per second (default 500; the rate achieved is
printed too) on PUB_PORT, each carrying its send time, to a subscriber connected to SUB_PORT, and prints p50, p99 and max of
the send-to-receive time. With PUB_PORT == SUB_PORT it measures a node's own delivery; with two
nodes of a cluster it adds the cluster-bus hop. Standard library only; client sockets set
TCP_NODELAY, so any delay seen between two nodes is the server's own.
"""
import socket
import sys
import threading
import time


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def main():
    pub_port, sub_port = int(sys.argv[1]), int(sys.argv[2])
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 500
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    sub = connect(sub_port)
    sub.sendall(command("SUBSCRIBE", "electric-bus-latency"))
    time.sleep(0.2)
    sub.recv(4096)
    latencies = []

    def read():
        buf = b""
        sub.settimeout(5)
        while len(latencies) < count:
            try:
                chunk = sub.recv(65536)
            except socket.timeout:
                return
            buf += chunk
            while True:
                i = buf.find(b"T=")
                j = buf.find(b"\r\n", i) if i >= 0 else -1
                if j < 0:
                    break
                latencies.append(time.perf_counter() - float(buf[i + 2 : j]))
                buf = buf[j:]

    reader = threading.Thread(target=read)
    reader.start()
    pub = connect(pub_port)
    started = time.perf_counter()
    for n in range(count):
        # Paced against fixed deadlines, so waiting for replies does not slow the rate down.
        due = started + n / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        pub.sendall(command("PUBLISH", "electric-bus-latency", "T=%.9f" % time.perf_counter()))
        pub.recv(100)
    achieved = count / (time.perf_counter() - started)
    reader.join()
    if len(latencies) < count:
        sys.exit(f"only {len(latencies)} of {count} messages arrived")
    latencies.sort()
    ms = lambda q: latencies[min(int(len(latencies) * q), len(latencies) - 1)] * 1e3
    print(
        f"publish on {pub_port}, subscriber on {sub_port}, {rate:.0f}/s asked, {achieved:.0f}/s sent: "
        f"p50 {ms(0.5):.2f} ms  p99 {ms(0.99):.2f} ms  max {latencies[-1] * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
