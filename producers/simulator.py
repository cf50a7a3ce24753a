"""The city traffic simulator: realistic events from every department at a steady rate.

Incidents happen at standard addresses of the gazetteer, written the ways people write them
(full-width digits, traditional characters, "附近"), or as device coordinates. Several channels
report the same incident (hotline, grid workers, cameras, sensors), so the case stage has
duplicates to merge; responsible departments later accept and resolve the cases; housing and
market supervision publish registrations and licence changes for the master data to enrich.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from civicbus.config import GazetteerEntry, load_gazetteer
from civicbus.context import BusContext
from civicbus.reference import read_master_csv
from producers.sdk import Publisher

CITY_FAMILIES = ("city_appearance", "street_order", "landscaping", "municipal_facilities")
CAMERA_ALERTS = ("street_vending", "illegal_parking", "road_occupation", "exposed_garbage", "crowd_gathering", "fire_smoke")
SENSOR_KINDS = ("air_quality", "water_level", "noise", "manhole_cover")
TRAFFIC_INCIDENTS = ("collision", "congestion", "breakdown", "road_obstruction", "signal_failure")
HOTLINE_KIND = {"more_bike_lanes": "suggestion", "park_opening_hours": "suggestion", "rental_registration": "consultation",
                "business_license": "consultation"}
SURNAMES = "王李张刘陈杨黄赵吴周"
GIVEN = "伟芳娜敏静丽强磊军洋"
FULL_WIDTH_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")
TRADITIONAL = str.maketrans("号区门东内华国头", "號區門東內華國頭")
# A department answers a case well after it reached them; much sooner, an answer could overtake
# its report in the stages' backlog at start-up (reports and answers travel on different topics).
STATUS_DELAY_S = 20.0
VAGUE_PLACES = ("老小区门口", "菜市场后面", "地铁站出口旁")  # what the gazetteer cannot place


@dataclass
class Incident:
    category: str
    place: GazetteerEntry
    case_ref: str  # id of its first report: any report id names the case
    responsible: str
    reported_at: float = field(default_factory=time.monotonic)
    statuses: list[str] = field(default_factory=lambda: ["accepted", "in_progress", "resolved"])


class CityTraffic:
    """Generates (department, event) pairs (pure; the seed makes a run reproducible)."""

    def __init__(self, ctx: BusContext, seed: int | None = None):
        self.rng = random.Random(seed)
        self.city = ctx.city
        self.places = load_gazetteer(ctx.settings.config)
        self.entities = read_master_csv(ctx.settings.config, "entities")
        self.hotline_topics = [c.id for c in self.city.categories.categories() if c.family != "petitions"]
        self.city_cases = {f: [c.id for c in self.city.categories.categories() if c.family == f] for f in CITY_FAMILIES}
        self.petition_issues = [c.id for c in self.city.categories.categories() if c.family == "petitions"]
        self.open: list[Incident] = []

    # ---- what people and devices write ---------------------------------------------------

    def _location(self, place: GazetteerEntry, device: bool = False) -> dict[str, Any]:
        jitter = lambda: self.rng.uniform(-0.0002, 0.0002)  # ~20 m
        if device:
            return {"lat": place.lat + jitter(), "lon": place.lon + jitter()}
        text = place.text
        style = self.rng.random()
        if style < 0.15:
            text = text.translate(FULL_WIDTH_DIGITS)
        elif style < 0.25:
            text = text.translate(TRADITIONAL)
        elif style < 0.35:
            text = f"{place.road}{place.number}号附近"
        elif style > 0.98:
            text = self.rng.choice(VAGUE_PLACES)
        location: dict[str, Any] = {"raw_address": text}
        if self.rng.random() < 0.3:  # the app sent the caller's position too
            location.update(lat=place.lat + jitter(), lon=place.lon + jitter())
        return location

    def _person(self) -> tuple[str, str]:
        return self.rng.choice(SURNAMES) + self.rng.choice(GIVEN), "1" + "".join(self.rng.choice("3456789") for _ in range(10))

    # ---- reports of an incident through each channel --------------------------------------

    def _hotline(self, category: str, place: GazetteerEntry) -> tuple[str, dict]:
        name, phone = self._person()
        kind = HOTLINE_KIND.get(category, self.rng.choice(["complaint", "report"]))
        return "hotline12345", {"type": "hotline.request.received", "location": self._location(place),
                                "data": {"category": kind, "topic": category, "content": "市民来电反映情况",
                                         "caller_name": name, "caller_phone": phone}}

    def _grid_worker(self, category: str, place: GazetteerEntry) -> tuple[str, dict]:
        family = self.city.categories.lookup(category).family
        district = next(d for d in self.city.map.districts if d.name_zh == place.district)
        street = f"{district.id}.{self.rng.choice(district.streets)}"  # a grid worker of that district
        name, phone = self._person()
        return f"street.{street}", {"type": "city.case.reported", "location": self._location(place, device=True),
                                    "data": {"category": family, "subcategory": category, "description": "网格员巡查发现",
                                             "reporter_name": name, "reporter_phone": phone}}

    def _camera(self, category: str, place: GazetteerEntry) -> tuple[str, dict]:
        return "police", {"type": "security.video.alert", "location": self._location(place, device=True),
                          "data": {"camera_id": f"cam-{place.address_code[-8:]}", "alert_type": category,
                                   "confidence": round(self.rng.uniform(0.6, 0.99), 2)}}

    def _sensor(self, category: str, place: GazetteerEntry) -> tuple[str, dict]:
        department = "citymgmt" if category in ("manhole_cover", "water_level") else "ecoenv"
        return department, {"type": "sensor.alert.raised", "location": self._location(place, device=True),
                            "data": {"sensor_id": f"s-{place.address_code[-8:]}", "kind": category,
                                     "severity": self.rng.choice(["low", "medium", "high"])}}

    def _traffic(self, category: str, place: GazetteerEntry) -> tuple[str, dict]:
        return self.rng.choice(["transport", "police"]), {
            "type": "traffic.incident.detected", "location": self._location(place, device=True),
            "data": {"incident_type": category, "severity": self.rng.choice(["minor", "serious", "major"])}}

    def _channels(self, category: str):
        """Every channel that can report an incident of this category."""
        family = self.city.categories.lookup(category).family
        channels = [self._hotline]
        if family in CITY_FAMILIES:
            channels.append(self._grid_worker)
        if category in CAMERA_ALERTS:
            channels.append(self._camera)
        if category in SENSOR_KINDS:
            channels.append(self._sensor)
        if category in TRAFFIC_INCIDENTS:
            channels.append(self._traffic)
        return channels

    def _new_incident(self) -> tuple[str, dict]:
        roll = self.rng.random()
        if roll < 0.04:
            name, phone = self._person()
            return "petition", {"type": "petition.filed", "location": self._location(self.rng.choice(self.places)),
                                "data": {"issue": self.rng.choice(self.petition_issues), "channel": "visit", "summary": "来访反映诉求",
                                         "petitioner_name": name, "petitioner_phone": phone}}
        if roll < 0.45:
            category = self.rng.choice(self.hotline_topics)
        elif roll < 0.7:
            category = self.rng.choice(self.city_cases[self.rng.choice(CITY_FAMILIES)])
        elif roll < 0.82:
            category = self.rng.choice(CAMERA_ALERTS)
        elif roll < 0.92:
            category = self.rng.choice(SENSOR_KINDS)
        else:
            category = self.rng.choice(TRAFFIC_INCIDENTS)
        place = self.rng.choice(self.places)
        department, event = self.rng.choice(self._channels(category))(category, place)
        event["id"] = str(uuid.uuid4())
        responsible = self.city.categories.lookup(category).departments[0]
        self.open.append(Incident(category, place, event["id"], responsible))
        del self.open[:-2000]
        return department, event

    # ---- the rest of the city's traffic ---------------------------------------------------

    def _status(self, incident: Incident) -> tuple[str, dict]:
        status = incident.statuses.pop(0)
        if not incident.statuses:
            self.open.remove(incident)
        return incident.responsible, {"type": "case.status.updated",
                                      "data": {"case_id": incident.case_ref, "status": status, "note": None}}

    def _rental(self) -> tuple[str, dict]:
        name, phone = self._person()
        place = self.rng.choice(self.places)
        return "housing", {"type": "housing.rental.registered", "location": self._location(place),
                           "data": {"registration_id": f"R{self.rng.randrange(10**8):08d}", "tenant_name": name,
                                    "tenant_id_number": f"1101011990{self.rng.randrange(10**8):08d}", "tenant_phone": phone,
                                    "landlord_name": self._person()[0], "occupants": self.rng.randint(1, 4),
                                    "lease_start": datetime.now(timezone.utc), "lease_end": datetime.now(timezone.utc) + timedelta(days=365)}}

    def _licence(self) -> tuple[str, dict]:
        entity = self.rng.choice(self.entities)
        return "market", {"type": "entity.license.changed",
                          "data": {"credit_code": entity.credit_code, "change": self.rng.choice(["issued", "renewed", "amended", "suspended"]),
                                   "license_type": "business", "effective": datetime.now(timezone.utc)}}

    def next_event(self) -> tuple[str, dict[str, Any]]:
        """(publishing department, event)."""
        roll = self.rng.random()
        answerable = [i for i in self.open[:50] if time.monotonic() - i.reported_at > STATUS_DELAY_S]
        if roll < 0.15 and answerable:
            return self._status(self.rng.choice(answerable))
        if roll < 0.30 and self.open:
            incident = self.rng.choice(self.open[-50:])  # another channel reports a recent incident
            return self.rng.choice(self._channels(incident.category))(incident.category, incident.place)
        if roll < 0.37:
            return self._rental()
        if roll < 0.42:
            return self._licence()
        return self._new_incident()


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
            publisher.send(publisher.complete(event))
            sent += 1
        stop.wait(tick)
    for publisher in publishers.values():
        publisher.close()
    return sent
