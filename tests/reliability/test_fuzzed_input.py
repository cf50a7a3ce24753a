"""10,000 fuzzed bad inputs among valid events: each bad one dead-lettered with its reason, each
valid one delivered, and no processor restarts."""

import io
import json
import random
from datetime import timedelta

import fastavro
import pytest

from civicbus.dlq import Reason
from civicbus.kafka import make_producer
from civicbus.serde import MAX_EVENT_BYTES
from civicbus.wire import read_dead_letter
from civicbus.topology import DLQ
from producers.sdk import Publisher
from tests.reliability.workload import Delivery, city_events, count_feeds, read_dispatched, wait_for_feeds
from tests.support import case_report, read_topic

BAD = 10_000
VALID = 2_000
OVERSIZE_AT_MOST = 25  # each is >256 KB: a few prove the point without flooding the broker
HOTLINE_DATA = {"category": "complaint", "topic": "noise", "content": "噪音", "caller_name": None, "caller_phone": None}


class Fuzzer:
    """Bad records of every kind the bus must survive, each with the reason it must be given.

    Built from a valid event, so every one differs from a good record in exactly one way."""

    def __init__(self, bus, template: dict, rng: random.Random):
        self.bus = bus
        self.rng = rng
        self.template = template  # a completed, valid city.case.reported from citymgmt
        self.topic = bus.topology.inbound("citymgmt")
        self.framing = bus.serde.encode(template, self.topic)[0][:5]  # magic byte + the real schema id
        self.case_schema = fastavro.parse_schema(bus.catalog["city.case.reported"].wire_schema)
        self.body = _avro(self.case_schema, template)
        self.oversized = 0
        wire = json.loads(bus.catalog["city.case.reported"].schema_str)
        for f in wire["fields"]:
            if f["name"] == "classification":
                f["type"]["symbols"] = [*f["type"]["symbols"], "TOP_SECRET"]  # index 4: no such symbol
        self.extra_symbol_schema = fastavro.parse_schema(wire)
        hotline = bus.catalog["hotline.request.received"]
        self.hotline_event = {**template, "type": hotline.name, "classification": "RESTRICTED", "data": HOTLINE_DATA}
        self.hotline_framing = bus.serde.encode(self.hotline_event, self.topic)[0][:5]
        self.hotline_schema = fastavro.parse_schema(hotline.wire_schema)

    def encode(self, **changes) -> bytes:
        """The template with `changes`, in the wire format, without validation."""
        return self.framing + _avro(self.case_schema, {**self.template, **changes})

    def random_bytes(self):
        junk = bytes([self.rng.randrange(1, 256)]) + self.rng.randbytes(self.rng.randrange(0, 300))
        return junk, Reason.NOT_AVRO

    def unknown_schema_id(self):
        return b"\x00" + self.rng.randrange(10_000, 2**31).to_bytes(4, "big") + self.body, Reason.UNKNOWN_SCHEMA

    def truncated_body(self):
        return self.framing + self.body[: self.rng.randrange(0, len(self.body) - 1)], Reason.CORRUPT_PAYLOAD

    def missing_fields(self):
        """Written with the hotline schema but typed a case report: the case fields are missing."""
        event = {**self.hotline_event, "type": "city.case.reported"}
        return self.hotline_framing + _avro(self.hotline_schema, event), Reason.INVALID_EVENT

    def bad_enum(self):
        return self.framing + _avro(self.extra_symbol_schema, {**self.template, "classification": "TOP_SECRET"}), Reason.CORRUPT_PAYLOAD

    def impossible_coordinates(self):
        lat, lon = self.rng.choice([(self.rng.uniform(90.001, 1e6), 116.4), (39.9, self.rng.uniform(180.001, 1e6)), (-self.rng.uniform(90.001, 1e3), 0.0)])
        return self.encode(location={**self.template["location"], "lat": lat, "lon": lon}), Reason.INVALID_EVENT

    def far_future(self):
        return self.encode(time=self.template["time"] + timedelta(days=self.rng.randrange(1, 3650))), Reason.INVALID_EVENT

    def oversize(self):
        if self.oversized >= OVERSIZE_AT_MOST:
            return self.random_bytes()
        self.oversized += 1
        description = "x" * (MAX_EVENT_BYTES + self.rng.randrange(1, 4096))
        return self.encode(data={**self.template["data"], "description": description}), Reason.OVERSIZE

    def unknown_type(self):
        return self.encode(type=f"city.rumour.{self.rng.randrange(1000)}"), Reason.UNKNOWN_TYPE

    def not_a_uuid(self):
        return self.encode(id=f"id-{self.rng.randrange(10**9)}"), Reason.INVALID_EVENT

    def forged_source(self):
        return self.encode(source="police"), Reason.SOURCE_MISMATCH

    def type_not_permitted(self):
        """citymgmt may not publish hotline requests."""
        return self.hotline_framing + _avro(self.hotline_schema, self.hotline_event), Reason.TYPE_NOT_PERMITTED

    KINDS = ("random_bytes", "unknown_schema_id", "truncated_body", "missing_fields", "bad_enum", "impossible_coordinates",
             "far_future", "oversize", "unknown_type", "not_a_uuid", "forged_source", "type_not_permitted")

    def next(self) -> tuple[str, bytes, Reason]:
        kind = self.rng.choice(self.KINDS)
        value, reason = getattr(self, kind)()
        return kind, value, reason


def _avro(parsed_schema, record) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed_schema, record)
    return out.getvalue()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fuzzed_bad_inputs_are_dead_lettered_while_valid_events_flow_and_no_stage_restarts(bus, pipeline):
    rng = random.Random(6)
    valid = city_events(bus, VALID, seed=7)
    with Publisher(bus, "citymgmt") as citymgmt:
        template = citymgmt.complete(case_report())
    fuzzer = Fuzzer(bus, template, rng)
    pids = {name: stage.process.pid for name, stage in pipeline.stages.items()}
    producer = make_producer(bus.bootstrap, **{"linger.ms": 20})
    expected: dict[bytes, tuple[str, Reason]] = {}
    queue = [("valid", e) for e in valid] + [("bad", None)] * BAD
    rng.shuffle(queue)
    for n, (what, item) in enumerate(queue):
        if what == "valid":
            department, event = item
            value, headers = bus.serde.encode(event, bus.topology.inbound(department))
            producer.produce(bus.topology.inbound(department), value, event["id"].encode(), headers=headers)
        else:
            kind, value, reason = fuzzer.next()
            key = f"bad-{n}".encode()
            expected[key] = (kind, reason)
            producer.produce(fuzzer.topic, value, key)
        producer.poll(0)
    assert producer.flush(60) == 0

    letters = read_topic(bus, bus.topology.name(DLQ), until=lambda m: len(m) >= BAD, timeout_s=150)
    reasons = {m.key(): read_dead_letter(m.headers())["reason"] for m in letters}
    wrong = {k: (expected[k], reasons.get(k)) for k in expected if reasons.get(k) != expected[k][1].value}
    assert not wrong, f"{len(wrong)} bad records without their reason, e.g. {list(wrong.items())[:5]}"
    assert set(reasons) == set(expected), "a valid event was dead-lettered"
    assert all(read_dead_letter(m.headers())["detail"] for m in letters)

    published = {event["id"] for _, event in valid}
    targets = read_dispatched(bus, published, timeout_s=120)
    wait_for_feeds(bus, targets, timeout_s=120)
    alive = {name: stage.process.pid for name, stage in pipeline.stages.items() if stage.process.poll() is None}
    assert alive == pids, f"a stage restarted or died:\n{pipeline.logs()}"
    assert set(pipeline.stop_all().values()) == {0}, pipeline.logs()
    assert Delivery(targets, count_feeds(bus)).problems(published) == []
