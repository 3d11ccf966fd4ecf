import sys, time, uuid, statistics, pulsar
c = pulsar.Client(sys.argv[1], logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
p = c.create_producer(f"persistent://public/default/lat-{uuid.uuid4().hex[:8]}", batching_enabled=False)
for _ in range(50): p.send(b"w")
lat = []
for i in range(500):
    t = time.perf_counter(); p.send(b"y" * 200); lat.append((time.perf_counter() - t) * 1000)
lat.sort(); print(f"sync send x500: p50 {statistics.median(lat):.2f} ms, p99 {lat[494]:.2f} ms")
c.close()
