"""Standardise locations: raw address text and/or coordinates -> address code, grid, street, district.

Coordinates are placed by point-in-polygon over the grid cells (a lattice over them, and the
shapely STRtree where a cell's edge crosses the lattice).
Text is normalised (full-width -> half-width by NFKC, traditional variants, city/district
prefixes, "附近"-style suffixes, Chinese house numbers) and matched through the gazetteer.
Coordinates win when they fall inside the city (a device's fix beats a typed address); the text
places the event otherwise. What cannot be placed keeps `resolved = False` and is still routed.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
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
    """Point-in-polygon over the grid cells.

    A lattice of squares, each a sixteenth of a typical cell wide, answers most points by arithmetic:
    a square notes the one cell that covers it whole, and a square no cell touches is not kept.
    Only a point in a square that a cell's edge crosses goes to the shapely STRtree query, which
    costs 16-27 us (a sixth of ingest's time in py-spy, `python -m benchmarks throughput
    --profile`); those answers are cached by point (a camera's or a sensor's fixed position comes
    again). Every answer is the query's (tests/unit/test_standardise.py)."""

    SQUARES_ACROSS_A_CELL = 16
    MAX_SQUARES = 2_000_000  # the lattice coarsens past this (a city of very many or very large cells)
    _EDGE = -1  # a square to ask the query about

    def __init__(self, features: list[dict], cache_size: int = 65536):
        self._cells = [Cell(**{k: f["properties"][k] for k in ("grid", "street", "district")}) for f in features]
        polygons = np.array([shape(f["geometry"]) for f in features], dtype=object)
        self._tree = shapely.STRtree(polygons)
        self._query = lru_cache(maxsize=cache_size)(self._query_tree)
        self._answers: dict[tuple[int, int], int] = {}  # (column, row) -> cell index or _EDGE
        self._x0 = self._y0 = 0.0
        self._step = 1.0
        if len(polygons):
            self._lay_lattice(polygons)

    def _lay_lattice(self, polygons: np.ndarray) -> None:
        bounds = shapely.bounds(polygons)  # min x, min y, max x, max y per cell
        self._x0, self._y0 = float(bounds[:, 0].min()), float(bounds[:, 1].min())
        sizes = np.minimum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
        self._step = float(np.median(sizes)) / self.SQUARES_ACROSS_A_CELL or 1.0
        while True:
            # one square more on every side of each cell's bounds: a cell may touch a square it only borders
            first = np.floor((bounds[:, :2] - (self._x0, self._y0)) / self._step).astype(np.int64) - 1
            last = np.floor((bounds[:, 2:] - (self._x0, self._y0)) / self._step).astype(np.int64) + 1
            if int(np.prod(last - first + 1, axis=1).sum()) <= self.MAX_SQUARES:
                break
            self._step *= 2
        keys = np.unique(np.concatenate([
            np.stack(np.meshgrid(np.arange(f[0], l[0] + 1), np.arange(f[1], l[1] + 1)), axis=-1).reshape(-1, 2)
            for f, l in zip(first, last)]), axis=0)
        left, bottom = self._x0 + self._step * keys[:, 0], self._y0 + self._step * keys[:, 1]
        squares = shapely.box(left, bottom, left + self._step, bottom + self._step)
        square_of, polygon_of = self._tree.query(squares, predicate="intersects")
        touching = np.bincount(square_of, minlength=len(squares))
        answers = np.full(len(squares), self._EDGE)
        alone = touching[square_of] == 1
        covered = shapely.covers(polygons[polygon_of[alone]], squares[square_of[alone]])
        answers[square_of[alone][covered]] = polygon_of[alone][covered]
        kept = touching > 0
        self._answers = dict(zip(map(tuple, keys[kept].tolist()), answers[kept].tolist()))

    def locate(self, lat: float, lon: float) -> Cell | None:
        column, row = (lon - self._x0) // self._step, (lat - self._y0) // self._step
        if math.isfinite(column) and math.isfinite(row):
            column, row = int(column), int(row)
            left, bottom = self._x0 + self._step * column, self._y0 + self._step * row
            # the square's closed bounds, computed as when it was laid, must hold the point
            if left <= lon <= left + self._step and bottom <= lat <= bottom + self._step:
                answer = self._answers.get((column, row))
                if answer is None:
                    return None  # no cell touches the square
                if answer != self._EDGE:
                    return self._cells[answer]
        return self._query(lat, lon)

    def _query_tree(self, lat: float, lon: float) -> Cell | None:
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
