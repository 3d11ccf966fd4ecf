import sys, time, uuid, pulsar
url, n = sys.argv[1], int(sys.argv[2])
c = pulsar.Client(url, operation_timeout_seconds=30, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
t = f"persistent://public/default/load-{uuid.uuid4().hex[:8]}"
s = c.subscribe(t, "s", initial_position=pulsar.InitialPosition.Earliest, receiver_queue_size=1000)
p = c.create_producer(t, batching_enabled=True, compression_type=pulsar.CompressionType.LZ4, max_pending_messages=5000, block_if_queue_full=True)
payload = b"z" * 1024
t0 = time.time()
for i in range(n): p.send_async(payload, None)
p.flush(); t1 = time.time()
for i in range(n):
    m = s.receive(timeout_millis=30000); s.acknowledge(m)
t2 = time.time()
print(f"{n} x 1 KiB: produce {n/(t1-t0):.0f} msg/s (batched, LZ4), consume+ack {n/(t2-t1):.0f} msg/s")
c.close()
