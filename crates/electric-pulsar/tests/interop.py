"""The official Pulsar Python client's side of tests/interop.rs.

    interop.py consume URL TOPIC SUBSCRIPTION COUNT   prints "ready", then one JSON line per message
    interop.py produce URL TOPIC CODEC COUNT          sends COUNT messages compressed with CODEC

Payloads are `payload(codec, i)` below; tests/interop.rs builds the same bytes.
"""
import base64
import json
import sys

import pulsar

CODECS = {
    "none": pulsar.CompressionType.NONE,
    "lz4": pulsar.CompressionType.LZ4,
    "zlib": pulsar.CompressionType.ZLib,
    "zstd": pulsar.CompressionType.ZSTD,
    "snappy": pulsar.CompressionType.SNAPPY,
}


def payload(codec, i):
    row = '{"price":%d,"qty":%d,"side":"%s"}' % (100 + i, i * 7 % 13, "bid" if i % 2 else "ask")
    return ("%s-%d:" % (codec, i) + row * 120).encode()


def main():
    mode, url, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    client = pulsar.Client(url, operation_timeout_seconds=30, logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Error))
    try:
        if mode == "consume":
            sub, count = sys.argv[4], int(sys.argv[5])
            consumer = client.subscribe(
                topic,
                sub,
                consumer_type=pulsar.ConsumerType.Exclusive,
                initial_position=pulsar.InitialPosition.Earliest,
            )
            print("ready", flush=True)
            for _ in range(count):
                m = consumer.receive(timeout_millis=60_000)
                print(
                    json.dumps(
                        {
                            "payload": base64.b64encode(m.data()).decode(),
                            "properties": m.properties(),
                            "key": m.partition_key(),
                        }
                    ),
                    flush=True,
                )
                consumer.acknowledge(m)
            consumer.close()
        elif mode == "produce":
            codec, count = sys.argv[4], int(sys.argv[5])
            producer = client.create_producer(topic, compression_type=CODECS[codec])
            for i in range(count):
                producer.send(
                    payload(codec, i),
                    properties={"x-codec": codec, "x-index": str(i)},
                    partition_key="py-%d" % (i % 3),
                )
            producer.flush()
            producer.close()
        else:
            raise SystemExit("unknown mode " + mode)
    finally:
        client.close()


if __name__ == "__main__":
    main()
