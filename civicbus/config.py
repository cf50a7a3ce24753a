"""The city config folder (CIVICBUS_CONFIG): departments and dispatch rules, as typed models.

One loader for every component. Files are YAML so operators can review them like code.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Department(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[a-z0-9]+(\.[a-z0-9_]+){0,2}$")
    name_zh: str
    name_en: str

    @model_validator(mode="before")
    @classmethod
    def _publishes_lives_in_the_policy(cls, value):
        if isinstance(value, dict) and "publishes" in value:
            raise ValueError("`publishes` moved to config/policy.yaml (one place for who may publish what)")
        return value


class DispatchRule(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    type: str
    category: str | None = None
    to: tuple[str, ...]


class DispatchTable(BaseModel):
    fallback: str
    rules: tuple[DispatchRule, ...] = ()


class CityConfig(BaseModel):
    departments: tuple[Department, ...]
    dispatch: DispatchTable

    @model_validator(mode="after")
    def _targets_are_departments(self) -> CityConfig:
        known = {d.id for d in self.departments}
        named = {self.dispatch.fallback} | {t for r in self.dispatch.rules for t in r.to}
        unknown = sorted(named - known)
        if unknown:
            raise ValueError(f"dispatch.yaml names unknown departments: {', '.join(unknown)}")
        return self

    def department_ids(self) -> list[str]:
        return [d.id for d in self.departments]

    def department(self, department_id: str) -> Department:
        for d in self.departments:
            if d.id == department_id:
                return d
        raise KeyError(f"unknown department {department_id!r}")


class WatchedFile:
    """Tells whether a file changed since the last call (inode, mtime, size): config that
    long-running processes reload without a restart. Atomic replacement is seen too."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int, int] | None = None

    def changed(self) -> bool:
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True


def _read_yaml(path: Path) -> dict:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def load_city(config_dir: Path) -> CityConfig:
    """Load and validate the city config; raises pydantic.ValidationError naming the bad entry."""
    return CityConfig(
        departments=_read_yaml(config_dir / "departments.yaml")["departments"],
        dispatch=_read_yaml(config_dir / "dispatch.yaml"),
    )
