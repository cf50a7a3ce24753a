"""Master data (the shared base resource libraries) as it travels on the civic.ref.* topics.

Each dataset is a compacted topic: key = the record's natural key (credit code, address
code), value = the record as JSON (null deletes it). Every record carries `updated`, the time
the owning registry changed it, so a consumer can refuse a stale version that arrives late.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

# GB 32100-2015: the 31 characters a unified social credit code may use (no I, O, S, V, Z),
# and the weights of its first 17 positions for the check character.
CREDIT_CODE_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
CREDIT_CODE_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)


def credit_code_problem(code: str) -> str | None:
    """Why `code` is not a valid unified social credit code (统一社会信用代码), or None."""
    if len(code) != 18:
        return f"has {len(code)} characters, not 18"
    bad = sorted({c for c in code if c not in CREDIT_CODE_CHARS})
    if bad:
        return f"contains characters outside GB 32100-2015: {''.join(bad)}"
    total = sum(CREDIT_CODE_CHARS.index(c) * w for c, w in zip(code, CREDIT_CODE_WEIGHTS))
    expected = CREDIT_CODE_CHARS[(31 - total % 31) % 31]
    if code[17] != expected:
        return f"check character is {code[17]}, GB 32100-2015 gives {expected}"
    return None


class MasterRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    updated: datetime

    @property
    def key(self) -> str:
        raise NotImplementedError


class LegalEntity(MasterRecord):
    """法人: a registered business or organisation."""

    credit_code: str
    name: str
    status: Literal["active", "suspended", "revoked", "deregistered"]
    legal_representative: str | None = None
    address_code: str | None = None

    @field_validator("credit_code")
    @classmethod
    def _valid_code(cls, code: str) -> str:
        problem = credit_code_problem(code)
        if problem:
            raise ValueError(f"{code}: {problem}")
        return code

    @property
    def key(self) -> str:
        return self.credit_code


class Building(MasterRecord):
    """房屋: a building at a standard address."""

    address_code: str
    building_id: str
    name: str
    use: Literal["residential", "commercial", "mixed", "industrial", "public"]
    floors: int

    @property
    def key(self) -> str:
        return self.address_code


# dataset name (civic.ref.<name>) -> record model; the order `reference load` writes them in.
DATASETS: dict[str, type[MasterRecord]] = {"entities": LegalEntity, "buildings": Building}


def encode_record(record: MasterRecord) -> tuple[bytes, bytes]:
    return record.key.encode(), record.model_dump_json(exclude_none=True).encode()


def decode_record(dataset: str, value: bytes) -> MasterRecord:
    """Raises pydantic.ValidationError for a record that does not match its dataset."""
    return DATASETS[dataset].model_validate_json(value)


class MasterDataError(ValueError):
    """A master-data file has an invalid row (the message names file, line and fields)."""


def read_master_csv(config_dir: Path, dataset: str) -> list[MasterRecord]:
    """config/master/<dataset>.csv as validated records (empty cells are absent values)."""
    model = DATASETS[dataset]
    path = config_dir / "master" / f"{dataset}.csv"
    records = []
    with path.open(encoding="utf-8", newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                records.append(model.model_validate({k: v for k, v in row.items() if v != ""}))
            except ValidationError as e:
                problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
                raise MasterDataError(f"{path}:{line}: {problems}") from None
    return records
