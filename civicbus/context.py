"""What every component needs to talk to the bus, built once from settings.

Each part is imported when first used: a command that needs only the city (`civicbus token`)
does not pay for the serde and the registry client.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from civicbus import endpoints
from civicbus.errors import NoBrokerError
from civicbus.settings import Settings
from civicbus.topology import Topology

if TYPE_CHECKING:
    from civicbus.config import CityConfig
    from civicbus.policy import PolicySource
    from civicbus.schemas import EventCatalog
    from civicbus.serde import EventSerde


@dataclass
class BusContext:
    settings: Settings

    @property
    def bootstrap(self) -> str:
        """CIVICBUS_BOOTSTRAP, else the broker of the `civicbus up` running from this state folder."""
        if self.settings.bootstrap:
            return self.settings.bootstrap
        stack = endpoints.running(self.settings.state_dir)
        if stack is None:
            raise NoBrokerError(
                f"no civicbus stack is running here (no {endpoints.path(self.settings.state_dir)}) and "
                "CIVICBUS_BOOTSTRAP is unset: start one with `civicbus up` in this folder, or set CIVICBUS_BOOTSTRAP"
            )
        return stack.broker

    @cached_property
    def city(self) -> CityConfig:
        from civicbus.config import load_city

        return load_city(self.settings.config)

    @cached_property
    def policy(self) -> PolicySource:
        """config/policy.yaml, reloaded when it changes; `.get()` is the policy in force."""
        from civicbus.policy import PolicySource

        return PolicySource(self.settings.config / "policy.yaml", self.city, self.catalog)

    @cached_property
    def catalog(self) -> EventCatalog:
        from civicbus.schemas import EventCatalog

        return EventCatalog(self.settings.schemas_dir)

    @cached_property
    def serde(self) -> EventSerde:
        from civicbus.registry import make_registry_client
        from civicbus.serde import EventSerde

        return EventSerde(self.catalog, make_registry_client(self.settings))

    @cached_property
    def topology(self) -> Topology:
        return self.city.topology(self.settings.namespace)
