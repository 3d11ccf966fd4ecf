"""Resend the same sequence ids from a re-created producer of the same name; count what the broker stored."""
import sys, uuid
import pulsar

url, expect_dedup = sys.argv[1], sys.argv[2] == "on"
client = pulsar.Client(url, operation_timeout_seconds=30, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
topic = f"persistent://public/default/dedup-{uuid.uuid4().hex[:8]}"
name = f"p-{uuid.uuid4().hex[:8]}"
consumer = client.subscribe(topic, "s", initial_position=pulsar.InitialPosition.Earliest)
p = client.create_producer(topic, producer_name=name, batching_enabled=False)
for seq in (0, 1, 2):
    p.send(f"v{seq}".encode(), sequence_id=seq)
p.close()
p = client.create_producer(topic, producer_name=name, batching_enabled=False)
print("last sequence id seen by broker for re-created producer:", p.last_sequence_id())
for seq in (1, 2, 3):  # 1 and 2 are resends
    mid = p.send(f"v{seq}".encode(), sequence_id=seq)
    print(f"  resend seq {seq} -> {mid}")
got = []
while True:
    try:
        m = consumer.receive(timeout_millis=3000)
        got.append(m.data().decode()); consumer.acknowledge(m)
    except pulsar.Timeout:
        break
print("stored:", got)
want = ["v0", "v1", "v2", "v3"] if expect_dedup else ["v0", "v1", "v2", "v1", "v2", "v3"]
client.close()
assert got == want, (got, want)
print("dedup", "ON" if expect_dedup else "OFF", "behaves as expected")
