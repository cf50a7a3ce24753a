"""The city traffic simulator: realistic events from several departments at a steady rate.

Grid workers (street offices) and city management report cases, the hotline takes calls, and
responsible departments later accept and resolve some of the cases they received.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from civicbus.context import BusContext
from producers.sdk import Publisher

SUBCATEGORIES = {
    "city_appearance": ["exposed_garbage", "illegal_advertising", "construction_debris"],
    "street_order": ["illegal_parking", "street_vending", "road_occupation"],
    "landscaping": ["fallen_tree", "damaged_greenbelt"],
    "municipal_facilities": ["pothole", "missing_manhole_cover", "broken_streetlight"],
}
HOTLINE_TOPICS = {
    "complaint": ["noise", "garbage_not_collected", "illegal_parking"],
    "report": ["pothole", "fallen_tree", "missing_manhole_cover"],
    "consultation": ["rental_registration", "business_license"],
    "suggestion": ["more_bike_lanes", "park_opening_hours"],
}
SURNAMES = "王李张刘陈杨黄赵吴周"
GIVEN = "伟芳娜敏静丽强磊军洋"


@dataclass(frozen=True)
class Place:
    raw_address: str
    lat: float
    lon: float


# A handful of places until the gazetteer of config/ provides them (issue: the city pipeline).
DEFAULT_PLACES = (
    Place("东城区安定门内大街1号", 39.9475, 116.4075),
    Place("东城区交道口南大街30号", 39.9400, 116.4030),
    Place("西城区新街口北大街15号", 39.9440, 116.3700),
    Place("西城区金融街9号", 39.9160, 116.3600),
    Place("南山区粤海街道科技园南区", 22.5400, 113.9500),
)


class CityTraffic:
    """Generates event dicts (pure; the seed makes a run reproducible)."""

    def __init__(self, ctx: BusContext, seed: int | None = None, places: tuple[Place, ...] = DEFAULT_PLACES):
        self.rng = random.Random(seed)
        self.places = places
        self.streets = [d.id for d in ctx.city.departments if d.id.startswith("street.")]
        self.recent_cases: deque[tuple[str, str]] = deque(maxlen=1000)  # (case id, responsible dept)

    def _location(self) -> dict[str, Any]:
        place = self.rng.choice(self.places)
        jitter = lambda: self.rng.uniform(-0.0005, 0.0005)  # ~50 m
        return {"raw_address": place.raw_address, "lat": place.lat + jitter(), "lon": place.lon + jitter()}

    def _person(self) -> tuple[str, str]:
        return self.rng.choice(SURNAMES) + self.rng.choice(GIVEN), "1" + "".join(self.rng.choice("3456789") for _ in range(10))

    def next_event(self) -> tuple[str, dict[str, Any]]:
        """(publishing department, event)."""
        roll = self.rng.random()
        if roll < 0.15 and self.recent_cases:
            case_id, department = self.rng.choice(self.recent_cases)
            status = self.rng.choice(["accepted", "in_progress", "resolved"])
            return department, {"type": "case.status.updated", "data": {"case_id": case_id, "status": status, "note": None}}
        if roll < 0.45:
            category = self.rng.choice(list(HOTLINE_TOPICS))
            name, phone = self._person()
            return "hotline12345", {
                "type": "hotline.request.received",
                "location": self._location(),
                "data": {"category": category, "topic": self.rng.choice(HOTLINE_TOPICS[category]),
                         "content": "市民来电反映情况", "caller_name": name, "caller_phone": phone},
            }
        category = self.rng.choice(list(SUBCATEGORIES))
        department = self.rng.choice(["citymgmt", *self.streets])
        name, phone = self._person()
        event = {
            "type": "city.case.reported",
            "location": self._location(),
            "data": {"category": category, "subcategory": self.rng.choice(SUBCATEGORIES[category]),
                     "description": "网格员巡查发现", "reporter_name": name, "reporter_phone": phone},
        }
        return department, event


def run_simulator(ctx: BusContext, rate: float, duration_s: float, stop: threading.Event, seed: int | None = None) -> int:
    """Publish at `rate` events/s for `duration_s` seconds (0: until stopped); return the count."""
    traffic = CityTraffic(ctx, seed)
    publishers: dict[str, Publisher] = {}
    sent = 0
    started = time.monotonic()
    tick = 0.02
    while not stop.is_set() and (duration_s <= 0 or time.monotonic() - started < duration_s):
        due = int((time.monotonic() - started) * rate) - sent
        for _ in range(max(0, due)):
            department, event = traffic.next_event()
            publisher = publishers.get(department) or publishers.setdefault(department, Publisher(ctx, department))
            completed = publisher.complete(event)
            publisher.send(completed)
            if completed["type"] == "city.case.reported":
                traffic.recent_cases.append((completed["id"], "citymgmt"))
            sent += 1
        stop.wait(tick)
    for publisher in publishers.values():
        publisher.close()
    return sent
