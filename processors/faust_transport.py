"""faust's aiokafka transport, with the fetch wait civicbus sets for every consumer.

faust hard-codes `fetch_max_wait_ms=1500` for its worker consumer. The embedded broker never
ends a waiting fetch early (DESIGN.md), so each fetch that finds nothing new held the next
case event back for up to 1.5 s: that was most of the publish -> feed latency of a case (p50
0.8 s, p99 1.8 s at 1,000 events/s). On Apache Kafka a fetch returns as soon as data arrives,
and the shorter wait only costs idle fetch requests.

Its producer signs what the case stage writes to internal topics (civicbus.signing), as
processors.runner does for the other stages; the fan-out dead-letters unsigned records.

Registered as the faust transport `civic-kafka` (pyproject.toml, entry point group
`faust.transports`), so the case stage and the bare-faust benchmark select it by URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

from faust.transport.drivers import aiokafka as faust_aiokafka

from civicbus.settings import Settings
from civicbus.signing import RecordSigner

SCHEME = "civic-kafka"


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # aiokafka keeps the constructor argument here and hands it to its fetcher on start().
        consumer._fetch_max_wait_ms = Settings().fetch_wait_max_ms
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Producer(faust_aiokafka.Producer):
    @cached_property
    def signer(self) -> RecordSigner:
        return RecordSigner.of_stack(Settings())

    async def send(self, topic, key, value, partition, timestamp, headers, *, transactional_id=None):
        if self.signer.covers(topic):
            headers = self.signer.sign(topic, key, value, list(headers.items()) if isinstance(headers, Mapping) else headers)
        return await super().send(topic, key, value, partition, timestamp, headers, transactional_id=transactional_id)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer
