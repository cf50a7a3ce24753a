"""Process-wide settings from the environment (pydantic-settings), one place for all of them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
# Where schemas/, config/ (the sample city) and ops/ are: the top level of the checkout (also under
# `pip install -e .`), or, installed from a wheel, the copy setup.py ships inside the package.
REPO_ROOT = PACKAGE_DIR / "shipped" if (PACKAGE_DIR / "shipped").is_dir() else PACKAGE_DIR.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CIVICBUS_", extra="ignore")

    bootstrap: str | None = Field(
        default=None, description="External Kafka bootstrap servers; unset means the embedded broker."
    )
    config: Path = Field(
        default=REPO_ROOT / "config",
        description="The city config folder (`civicbus --config`); default the sample city, `civicbus init` copies it.",
    )
    schema_registry_url: str | None = Field(
        default=None, description="Confluent Schema Registry URL; unset means the file registry in schemas/."
    )
    schemas_dir: Path = REPO_ROOT / "schemas"
    namespace: str = Field(
        default="",
        description="Prefix for every topic and consumer group. Empty in production; tests use it "
        "to run isolated pipelines side by side on one broker.",
    )
    session_timeout_ms: int = Field(
        default=6000,
        description="Consumer session timeout. The embedded broker holds a joining member for about "
        "half of it before the first assignment, so local runs keep it short.",
    )
    fetch_wait_max_ms: int = Field(
        default=10,
        description="How long a consumer's fetch may wait for data. The embedded broker does not end a "
        "waiting fetch when data arrives, it waits the whole time, so each hop costs up to this much "
        "latency (librdkafka's 500 ms default: ~250 ms a hop, measured). Apache Kafka answers as soon "
        "as data is there; there a short wait only means more fetch requests from idle consumers.",
    )
    state_dir: Path = Field(
        default_factory=lambda: Path.cwd() / ".civicbus",
        description="Spools, tokens, keys, logs and the running stack's endpoints; ./.civicbus of the working directory.",
    )
    kafka_security_protocol: str | None = Field(
        default=None, description="librdkafka security.protocol for a secured cluster, e.g. SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str = Field(default="SCRAM-SHA-512", description="SASL mechanism when a SASL protocol is set.")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_role_passwords: dict[str, str] = Field(
        default_factory=dict,
        description="On a secured cluster, the password of each role `civicbus up` starts, by user name (JSON, e.g. "
        '{"civicbus-ingest": "..."}): each part logs in as its own principal of `civicbus acl plan`.',
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Interface `civicbus up` serves metrics on; 0.0.0.0 in a container."
    )
    lag_poll_interval_s: float = Field(default=2.0, gt=0, description="How often the lag exporter reads offsets.")
    lag_window: int = Field(
        default=10, ge=2, description="Polls in the sliding window a group's status is judged over (Burrow)."
    )
    lag_lookup_points: int = Field(
        default=60, ge=2, description="Offset->time points kept per partition to estimate time lag."
    )
