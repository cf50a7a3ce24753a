"""Process-wide settings from the environment (pydantic-settings), one place for all of them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
# Where schemas/, config/ (the sample city) and ops/ are: the top level of the checkout (also under
# `pip install -e .`), or, installed from a wheel, the copy setup.py ships inside the package.
REPO_ROOT = PACKAGE_DIR / "shipped" if (PACKAGE_DIR / "shipped").is_dir() else PACKAGE_DIR.parent
DEFAULT_REGISTRY_PORT = 8081
DEFAULT_REGISTRY_URL = f"http://127.0.0.1:{DEFAULT_REGISTRY_PORT}"


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
    schema_registry_basic_auth: str | None = Field(
        default=None, description="`user:password` for a Schema Registry that requires basic authentication."
    )
    registry_url: str = Field(
        default=DEFAULT_REGISTRY_URL,
        description="Where the lock-file registry is served (`civicbus up --registry-port`, `civicbus registry`); "
        "records name their schema there in ce_dataschema when no CIVICBUS_SCHEMA_REGISTRY_URL is set.",
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
        description="The least time a stage's fetch may wait for data; on the embedded broker the wait "
        "rises with its listing time (civicbus.quirks 10, ListingClock). That broker does not end a "
        "waiting fetch when data arrives: it looks again after half of what is left, so a record that "
        "lands during a wait costs up to half of it (librdkafka's 500 ms default: ~250 ms a hop, "
        "measured). Apache Kafka answers as soon as data is there; there a short wait only means more "
        "fetch requests from idle consumers.",
    )
    case_report_wait_ms: int = Field(
        default=30_000, ge=0,
        description="How long after a status update was published a report it answers may be published "
        "still: the case stage holds an update whose case it does not know yet until ingest has read every "
        "inbound record published up to this long after it (the report may be behind it on another inbound "
        "topic, by minutes when ingest is behind), then dead-letters it UNKNOWN_CASE.",
    )
    commit_interval_ms: int = Field(
        default=20, ge=0,
        description="Least time between two transaction commits of a stage (processors.runner): each "
        "commit adds a batch and a marker to every partition it wrote. A record after a quiet "
        "spell is committed at once.",
    )
    commit_interval_max_ms: int = Field(default=1000, ge=0, description="Most time between two commits under traffic.")
    commit_spacing_per_batch_us: float | None = Field(
        default=None, ge=0,
        description="How much the commit spacing grows per batch a stage wrote to a partition "
        "(processors.runner.CommitSpacing). Unset: 20 on the embedded broker, whose fetches cost more "
        "as partitions grow, 0 on Apache Kafka.",
    )
    client_statistics_interval_ms: int = Field(
        default=10_000, ge=0,
        description="How often each stage's Kafka clients report librdkafka's statistics, counted in "
        "civicbus_kafka_requests_total and civicbus_produced_batches_total (processors.runner.ClientStatistics); 0: never.",
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
    audit_checkpoint_records: int = Field(
        default=100, ge=1, description="An audit writer seals its chain with a signed checkpoint after this many records..."
    )
    audit_checkpoint_seconds: float = Field(
        default=10.0, gt=0, description="...or with its first record once this long has passed since its last checkpoint."
    )
    lag_poll_interval_s: float = Field(default=2.0, gt=0, description="How often the lag exporter reads offsets.")
    lag_window: int = Field(
        default=10, ge=2, description="Polls in the sliding window a group's status is judged over (Burrow)."
    )
    lag_lookup_points: int = Field(
        default=60, ge=2, description="Offset->time points kept per partition to estimate time lag."
    )
