"""Exercise a Pulsar standalone with the official Python client: each compression type, batched and not."""
import sys, time, uuid, statistics
import pulsar

url = sys.argv[1] if len(sys.argv) > 1 else "pulsar://127.0.0.1:6650"
client = pulsar.Client(url, operation_timeout_seconds=30, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
types = ["NONE", "LZ4", "ZLIB", "ZSTD", "SNAPPY"]
ok = True
for name in types:
    for batching in (False, True):
        topic = f"persistent://public/default/cmp-{name.lower()}-{'b' if batching else 'u'}-{uuid.uuid4().hex[:8]}"
        consumer = client.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
        producer = client.create_producer(topic, compression_type={"ZLIB": pulsar.CompressionType.ZLib}.get(name) or getattr(pulsar.CompressionType, name),
                                          batching_enabled=batching, batching_max_publish_delay_ms=5)
        sent = [(f"{name}-{i}-".encode() + b"x" * (i * 300)) for i in range(10)]
        if batching:
            for p in sent:
                producer.send_async(p, None)
            producer.flush()
        else:
            for p in sent:
                producer.send(p)
        got = []
        for _ in sent:
            m = consumer.receive(timeout_millis=15000)
            got.append(m.data())
            consumer.acknowledge(m)
        res = got == sent
        ok &= res
        print(f"{name:6} batching={batching!s:5}: {'OK' if res else 'MISMATCH'} ({len(got)} msgs)")
        producer.close(); consumer.close()

# Sync publish latency, 200 unbatched sends.
topic = f"persistent://public/default/lat-{uuid.uuid4().hex[:8]}"
producer = client.create_producer(topic, batching_enabled=False)
lat = []
for i in range(200):
    t = time.perf_counter(); producer.send(b"y" * 200); lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(f"sync send latency over 200: p50 {statistics.median(lat):.2f} ms, p99 {lat[197]:.2f} ms, max {lat[-1]:.2f} ms")
producer.close()
client.close()
print("ALL OK" if ok else "FAILURES")
sys.exit(0 if ok else 1)
