"""What every component needs to talk to the bus, built once from settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from civicbus.config import CityConfig, load_city
from civicbus.policy import PolicySource
from civicbus.registry import make_registry_client
from civicbus.schemas import EventCatalog
from civicbus.serde import EventSerde
from civicbus.settings import Settings
from civicbus.topology import Topology


class NoBrokerError(RuntimeError):
    pass


@dataclass
class BusContext:
    settings: Settings

    @property
    def bootstrap(self) -> str:
        if not self.settings.bootstrap:
            raise NoBrokerError("no Kafka broker: set CIVICBUS_BOOTSTRAP, or start everything with `civicbus up`")
        return self.settings.bootstrap

    @cached_property
    def city(self) -> CityConfig:
        return load_city(self.settings.config)

    @cached_property
    def policy(self) -> PolicySource:
        """config/policy.yaml, reloaded when it changes; `.get()` is the policy in force."""
        return PolicySource(self.settings.config / "policy.yaml", self.city, self.catalog)

    @cached_property
    def catalog(self) -> EventCatalog:
        return EventCatalog(self.settings.schemas_dir)

    @cached_property
    def serde(self) -> EventSerde:
        return EventSerde(self.catalog, make_registry_client(self.settings))

    @cached_property
    def topology(self) -> Topology:
        return Topology(departments=tuple(self.city.department_ids()), namespace=self.settings.namespace)
