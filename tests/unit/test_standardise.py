"""Address text and coordinates -> address code, grid, street, district; bad locations flagged."""

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from civicbus.settings import REPO_ROOT
from processors.standardise import GridIndex, Standardiser, chinese_to_int

STANDARDISER = Standardiser.from_config(REPO_ROOT / "config")
ANDINGMEN_1 = {"address_code": "1101010010010001", "street": "dongcheng.andingmen", "district": "dongcheng", "resolved": True}


def placed(location):
    out = STANDARDISER.standardise(location)
    return {k: out[k] for k in ("address_code", "street", "district", "resolved")}


@pytest.mark.parametrize(
    "text",
    [
        "东城区安定门内大街1号",
        "北京市東城區安定門內大街１號附近",  # full-width digit, traditional characters, city prefix, vague suffix
        "安定门内大街 一号 门口",
        "东城 安定门内大街（1号）",
    ],
)
def test_address_variants_match_the_gazetteer(text):
    assert placed({"raw_address": text}) == ANDINGMEN_1


def test_coordinates_are_placed_by_point_in_polygon_and_filled_from_text():
    out = STANDARDISER.standardise({"raw_address": "安定门内大街1号"})
    assert (out["lat"], out["lon"], out["grid"]) == (39.9475, 116.4075, "dongcheng.andingmen.g07")
    by_point = STANDARDISER.standardise({"lat": 22.55, "lon": 113.93})
    assert (by_point["district"], by_point["street"], by_point["address_code"]) == ("nanshan", "nanshan.yuehai", None)


def test_coordinates_inside_the_city_win_over_text():
    out = STANDARDISER.standardise({"raw_address": "金融大街5号", "lat": 22.49, "lon": 113.93})
    assert out["street"] == "nanshan.shekou" and out["address_code"] == "1101020070010005"


def test_an_unknown_house_number_takes_the_nearest_on_its_road_without_an_address_code():
    out = placed({"raw_address": "安定门内大街99号"})
    assert out == {**ANDINGMEN_1, "address_code": None}


@pytest.mark.parametrize(
    "location",
    [
        {"raw_address": "火星大道1号"},  # not in the gazetteer
        {"raw_address": "安定门内大街"},  # a road alone is kilometres long: not a place
        {"lat": 39.95, "lon": 116.39},  # between the districts: outside every grid cell
        {"raw_address": "火星大道1号", "lat": 31.23, "lon": 121.47},  # both wrong
        {},
    ],
)
def test_bad_locations_are_flagged_unresolved_not_dropped(location):
    out = STANDARDISER.standardise(location)
    assert out["resolved"] is False and out["grid"] is out["street"] is out["district"] is None
    assert {k: out[k] for k in location} == location  # what the publisher wrote is kept


def test_no_location_stays_none():
    assert STANDARDISER.standardise(None) is None


@pytest.mark.parametrize("text, value", [("一", 1), ("十二", 12), ("二十", 20), ("一百零五", 105), ("三五", 35)])
def test_chinese_house_numbers(text, value):
    assert chinese_to_int(text) == value


# ---- the grid lattice answers exactly what the point-in-polygon query does --------------------


def _feature(grid: str, ring: list[tuple[float, float]]) -> dict:
    return {"properties": {"grid": grid, "street": "s", "district": "d"}, "geometry": {"type": "Polygon", "coordinates": [ring]}}


# Cells sharing edges, a triangle, a concave cell and a tiny one, so that the lattice holds covered
# squares, squares no cell touches and squares an edge crosses.
IRREGULAR = GridIndex([
    _feature("square", [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)]),
    _feature("beside", [(1, 0), (2, 0), (2, 1), (1, 1), (1, 0)]),
    _feature("triangle", [(0, 1), (2, 1), (1, 2.3), (0, 1)]),
    _feature("concave", [(3, 0), (5, 0), (5, 2), (4.5, 2), (4.5, 0.5), (3.5, 0.5), (3.5, 2), (3, 2), (3, 0)]),
    _feature("tiny", [(6, 6), (6.01, 6), (6.01, 6.01), (6, 6.01), (6, 6)]),
])
CITY_GRID = STANDARDISER.grid


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_a_point_is_placed_in_the_cell_the_query_finds(data):
    index = data.draw(st.sampled_from([IRREGULAR, CITY_GRID]))
    x0, y0, x1, y1 = shapely.total_bounds(index._tree.geometries)
    on_lattice = st.integers(-3, int((x1 - x0) / index._step) + 3).map(lambda k: index._x0 + index._step * k)
    lon = data.draw(st.one_of(st.floats(x0 - 0.1, x1 + 0.1), on_lattice, st.sampled_from([0.0, 1.0, 2.0, 4.5, 6.0, 6.01])))
    on_lattice_y = st.integers(-3, int((y1 - y0) / index._step) + 3).map(lambda k: index._y0 + index._step * k)
    lat = data.draw(st.one_of(st.floats(y0 - 0.1, y1 + 0.1), on_lattice_y, st.sampled_from([0.0, 0.5, 1.0, 2.0, 6.0])))
    assert index.locate(lat, lon) == index._query_tree(lat, lon)


def test_the_lattice_answers_most_points_without_the_query():
    answers = list(CITY_GRID._answers.values())
    assert answers.count(GridIndex._EDGE) < len(answers) / 4
    assert {IRREGULAR._cells[a].grid for a in IRREGULAR._answers.values() if a >= 0} == {"square", "beside", "triangle", "concave"}
    assert IRREGULAR.locate(0.5, 0.5).grid == "square" and IRREGULAR.locate(1.0, 4.0) is None  # inside the concave notch
    assert IRREGULAR.locate(float("nan"), 0.5) is None and IRREGULAR.locate(100.0, 100.0) is None
