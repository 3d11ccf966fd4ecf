"""Phase 'before': publish 3 messages, consume+ack the first. Phase 'after' (post-restart): check persistence."""
import sys, json, uuid
import pulsar

phase, state = sys.argv[1], "/tmp/ptest/restart-state.json"
client = pulsar.Client("pulsar://127.0.0.1:6650", operation_timeout_seconds=30,
                       logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
if phase == "before":
    topic = f"persistent://public/default/restart-{uuid.uuid4().hex[:8]}"
    consumer = client.subscribe(topic, "sub", initial_position=pulsar.InitialPosition.Earliest)
    producer = client.create_producer(topic, batching_enabled=False)
    ids = [str(producer.send(f"m{i}".encode())) for i in (1, 2, 3)]  # send() returns once the broker acked
    m = consumer.receive(timeout_millis=15000)
    assert m.data() == b"m1", m.data()
    consumer.acknowledge(m)
    consumer.close(); producer.close()
    json.dump({"topic": topic, "ids": ids}, open(state, "w"))
    print("before: published", ids, "and acked m1 on", topic)
else:
    s = json.load(open(state))
    c = client.subscribe(s["topic"], "sub")
    got = [c.receive(timeout_millis=20000).data() for _ in range(2)]
    assert got == [b"m2", b"m3"], got
    try:
        extra = c.receive(timeout_millis=2000)
        raise SystemExit(f"unexpected redelivery {extra.data()}")
    except pulsar.Timeout:
        pass
    f = client.subscribe(s["topic"], "fresh", initial_position=pulsar.InitialPosition.Earliest)
    all_ = [f.receive(timeout_millis=20000).data() for _ in range(3)]
    assert all_ == [b"m1", b"m2", b"m3"], all_
    print("after: sub resumed at m2 (m1 stayed acked); fresh subscription sees", all_)
client.close()
