"""Standardise locations: raw address text and/or coordinates -> address code, grid, street, district.

Coordinates are placed by point-in-polygon over the grid cells (shapely STRtree, O(log n)).
Text is normalised (full-width -> half-width by NFKC, traditional variants, city/district
prefixes, "附近"-style suffixes, Chinese house numbers) and matched through the gazetteer.
Coordinates win when they fall inside the city (a device's fix beats a typed address); the text
places the event otherwise. What cannot be placed keeps `resolved = False` and is still routed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import shape

from civicbus.config import CityMap, GazetteerEntry, load_city, load_gazetteer, load_grid

# Traditional or variant characters seen in typed addresses -> the gazetteer's simplified form.
VARIANTS = str.maketrans("號區門東內華國頭灣寧鐘樓園飯廣場莊橋巷衚衕經營", "号区门东内华国头湾宁钟楼园饭广场庄桥巷胡同经营")
NOISE = re.compile(r"[\s,，.。、()（）\[\]【】\-－—·#＃:：]")
VAGUE_SUFFIXES = ("附近", "旁边", "门口", "对面", "路口", "周边", "一带", "旁", "处")
CHINESE_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
CHINESE_NUMBER = re.compile(r"([零〇一二两三四五六七八九十百]+)号")
ROAD_AND_NUMBER = re.compile(r"^(.+?)(\d+)号")
PROVINCES = ("北京市", "深圳市", "广东省", "北京", "深圳")


def chinese_to_int(text: str) -> int:
    """一 -> 1, 十二 -> 12, 二十 -> 20, 一百零五 -> 105, 三五 -> 35 (digit by digit)."""
    if "十" not in text and "百" not in text:
        return int("".join(str(CHINESE_DIGITS[c]) for c in text))
    total, current = 0, 0
    for c in text:
        if c == "百":
            total += (current or 1) * 100
            current = 0
        elif c == "十":
            total += (current or 1) * 10
            current = 0
        else:
            current = CHINESE_DIGITS[c]
    return total + current


class AddressNormaliser:
    def __init__(self, city_map: CityMap):
        names = set(PROVINCES)
        for d in city_map.districts:
            names |= {d.city, d.name_zh, d.name_zh.removesuffix("区")}
        self._prefixes = sorted(names, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text).translate(VARIANTS)
        text = NOISE.sub("", text)
        while prefix := next((p for p in self._prefixes if text.startswith(p)), None):
            text = text[len(prefix) :]
        for suffix in VAGUE_SUFFIXES:
            text = text.removesuffix(suffix)
        return CHINESE_NUMBER.sub(lambda m: f"{chinese_to_int(m.group(1))}号", text)


@dataclass(frozen=True)
class AddressMatch:
    entry: GazetteerEntry
    exact: bool  # False: the road matched, the house number did not; the nearest number's point


class Gazetteer:
    """Typed address text -> a standard address, through normalised keys (road + number + 号)."""

    def __init__(self, entries: list[GazetteerEntry], city_map: CityMap, cache_size: int = 65536):
        self.normalise = AddressNormaliser(city_map)
        self._exact: dict[str, GazetteerEntry] = {}
        self._roads: dict[str, list[GazetteerEntry]] = {}
        for entry in entries:
            self._exact[self.normalise(entry.text)] = entry
            self._roads.setdefault(self.normalise(entry.road), []).append(entry)
        self.match = lru_cache(maxsize=cache_size)(self._match)

    def _match(self, text: str) -> AddressMatch | None:
        key = self.normalise(text)
        if key in self._exact:
            return AddressMatch(self._exact[key], True)
        parsed = ROAD_AND_NUMBER.match(key)
        if parsed is None or parsed.group(1) not in self._roads:
            return None
        number = int(parsed.group(2))
        nearest = min(self._roads[parsed.group(1)], key=lambda e: abs(e.number - number))
        return AddressMatch(nearest, False)


@dataclass(frozen=True)
class Cell:
    grid: str
    street: str
    district: str


class GridIndex:
    """Point-in-polygon over the grid cells with a shapely STRtree.

    Answers are cached by point: most points come again (a camera's or a sensor's fixed position,
    the gazetteer's point of a typed address), and a query costs 16-27 us of ingest's time, about
    a sixth of it (py-spy, `python -m benchmarks throughput --profile`)."""

    def __init__(self, features: list[dict], cache_size: int = 65536):
        self._cells = [Cell(**{k: f["properties"][k] for k in ("grid", "street", "district")}) for f in features]
        self._tree = shapely.STRtree([shape(f["geometry"]) for f in features])
        self.locate = lru_cache(maxsize=cache_size)(self._locate)

    def _locate(self, lat: float, lon: float) -> Cell | None:
        hits = self._tree.query(shapely.Point(lon, lat), predicate="intersects")
        return self._cells[min(hits)] if len(hits) else None  # on a shared edge: the first cell, always


class Standardiser:
    def __init__(self, gazetteer: Gazetteer, grid: GridIndex):
        self.gazetteer = gazetteer
        self.grid = grid

    @classmethod
    def from_config(cls, config_dir: Path) -> Standardiser:
        city_map = load_city(config_dir).map
        return cls(Gazetteer(load_gazetteer(config_dir), city_map), GridIndex(load_grid(config_dir)))

    def standardise(self, location: dict[str, Any] | None) -> dict[str, Any] | None:
        """The location with address code, grid, street, district filled and `resolved` set."""
        if location is None:
            return None
        out = {**location, "address_code": None, "grid": None, "street": None, "district": None, "resolved": False}
        match = self.gazetteer.match(location["raw_address"]) if location.get("raw_address") else None
        if match is not None and match.exact:
            out["address_code"] = match.entry.address_code
        cell = None
        if location.get("lat") is not None and location.get("lon") is not None:
            cell = self.grid.locate(location["lat"], location["lon"])
        if cell is None and match is not None:
            cell = self.grid.locate(match.entry.lat, match.entry.lon)
            if cell is not None:
                out["lat"], out["lon"] = match.entry.lat, match.entry.lon
        if cell is not None:
            out.update(grid=cell.grid, street=cell.street, district=cell.district, resolved=True)
        return out
