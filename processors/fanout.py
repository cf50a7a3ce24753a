"""Fan-out: civic.dist.events -> civic.feed.<department> for every department that receives it.

Delivers what the case stage writes to civic.dist.events (processors.delivery: policy, masking,
audit, dead letters, exactly once by id); records ingest has delivered already carry
DELIVERED_HEADER and are passed over. The policy is re-read when config/policy.yaml changes, so
an edit applies from the next batch on.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Message, Producer

from civicbus.context import BusContext
from civicbus.metrics import DUPLICATES_DROPPED, labelled
from civicbus.policy import Policy
from civicbus.topology import DIST_EVENTS
from processors.delivery import DELIVERED_HEADER, DeliveredIds, Deliverer, header
from processors.runner import Output, Stage


class FanoutStage(Stage):
    name = "fanout"

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.delivered = DeliveredIds(ctx)
        self.deliverer = Deliverer(ctx, self.name)
        self._policy: Policy = ctx.policy.get()

    def subscription(self) -> list[str]:
        return [self.ctx.topology.name(DIST_EVENTS)]

    def prepare(self, ctx: BusContext) -> None:
        self.delivered.restore()

    def begin_batch(self) -> None:
        self._policy = self.ctx.policy.get()

    def process(self, message: Message) -> Iterable[Output]:
        headers = message.headers() or []
        if header(headers, DELIVERED_HEADER):
            return []
        if not self.delivered.claim(message.key()):
            labelled(DUPLICATES_DROPPED, self.name).inc()
            return []
        # Written by the case stage, which validated it: decoding is enough.
        event = self.ctx.serde.decode(message.value(), message.topic(), validate=False)
        return self.deliverer.deliver(self._policy, event, message.value(), headers, message)

    def before_commit(self, producer: Producer) -> None:
        self.delivered.before_commit(producer)

    def after_commit(self) -> None:
        self.delivered.after_commit()

    def after_abort(self) -> None:
        self.delivered.after_abort()
