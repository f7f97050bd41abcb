"""Interoperability check: a plain Python Kafka client (confluent-kafka) publishes JSON
telemetry and an undecodable record, then reads the feature vectors and the dead letter back.

Usage: python_client.py BROKERS INPUT_TOPIC FEATURES_TOPIC DLQ_TOPIC
Exit code 0 when 3 feature vectors (Confluent-framed, schema id 1101, keyed by entity) and 1
dead letter with reason bad_magic arrived within 30 s.
"""
import json
import struct
import sys
import time

from confluent_kafka import Consumer, Producer

brokers, input_topic, features_topic, dlq_topic = sys.argv[1:5]
p = Producer({"bootstrap.servers": brokers})
now = int(time.time() * 1000)
for i in range(3):
    rec = {"entity_id": "web-1", "ts_ms": now - (3 - i) * 300000, "service": "web",
           "cluster": "eu-1", "cpu_util": 0.42 + 0.1 * i, "mem_util": 0.61, "net_in_bps": 1.2e6,
           "cpu_cores": 8, "mem_bytes": 3.2e10, "replicas": 4, "cost_per_hour": 1.9}
    p.produce(input_topic, key="web-1", value=json.dumps(rec))
p.produce(input_topic, key="web-1", value=b"not json at all")
p.flush(30)

c = Consumer({"bootstrap.servers": brokers, "group.id": f"py-{now}", "auto.offset.reset": "earliest"})
c.subscribe([features_topic, dlq_topic])
features, reasons = [], []
deadline = time.time() + 30
while time.time() < deadline and (len(features) < 3 or len(reasons) < 1):
    m = c.poll(0.5)
    if m is None or m.error():
        continue
    if m.topic() == features_topic:
        v = m.value()
        magic, schema_id = v[0], struct.unpack(">I", v[1:5])[0]
        assert magic == 0 and schema_id == 1101, (magic, schema_id)
        assert m.key() == b"web-1", m.key()
        features.append(v)
    else:
        reasons.append(dict(m.headers() or []).get("dlq.reason", b"").decode())
c.close()
print(f"features={len(features)} dead_letters={reasons}")
assert len(features) == 3, len(features)
assert reasons == ["bad_magic"], reasons
