"""`civicbus reference load`: master data from config/master/ onto the compacted civic.ref.* topics.

Every file is validated first (credit codes by their GB 32100-2015 check character); nothing is
written unless all of it is valid. Loading twice is harmless: the topics are compacted by key,
and the ingest stage keeps the newest version of each record.
"""

from __future__ import annotations

from confluent_kafka import KafkaError

from civicbus.context import BusContext
from civicbus.kafka import make_producer
from civicbus.reference import DATASETS, MasterRecord, encode_record, read_master_csv


class ReferenceLoadError(RuntimeError):
    """The broker did not acknowledge every master-data record."""


def load_reference(ctx: BusContext, timeout_s: float = 30.0) -> dict[str, int]:
    """Publish every dataset; return the number of records per dataset once all are acknowledged.

    Raises civicbus.reference.MasterDataError (before writing anything) for an invalid file."""
    datasets: dict[str, list[MasterRecord]] = {d: read_master_csv(ctx.settings.config, d) for d in DATASETS}
    producer = make_producer(ctx.bootstrap)
    failures: list[KafkaError] = []

    def on_delivery(err, _msg):
        if err is not None:
            failures.append(err)

    for dataset, records in datasets.items():
        topic = ctx.topology.reference(dataset)
        for record in records:
            key, value = encode_record(record)
            producer.produce(topic, value, key, on_delivery=on_delivery)
            producer.poll(0)
    remaining = producer.flush(timeout_s)
    if remaining or failures:
        raise ReferenceLoadError(f"{remaining} master-data records unacknowledged, {len(failures)} refused: {failures[:3]}")
    return {dataset: len(records) for dataset, records in datasets.items()}
