import sys, json, uuid, pulsar
url, phase, state = sys.argv[1], sys.argv[2], "/tmp/ptest/crash-state.json"
c = pulsar.Client(url, operation_timeout_seconds=30, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
if phase == "before":
    t = f"persistent://public/default/crash-{uuid.uuid4().hex[:8]}"
    p = c.create_producer(t, batching_enabled=False)
    for i in range(3): p.send(f"c{i}".encode())
    json.dump({"topic": t}, open(state, "w")); print("published 3 to", t)
else:
    t = json.load(open(state))["topic"]
    s = c.subscribe(t, "r", initial_position=pulsar.InitialPosition.Earliest)
    got = [s.receive(timeout_millis=20000).data() for _ in range(3)]
    assert got == [b"c0", b"c1", b"c2"], got; print("after SIGKILL + restart:", got)
c.close()
