"""Helpers for integration tests: read topics without consumer groups, run stages as processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import Consumer, Message, TopicPartition

from civicbus.broker import free_port
from civicbus.context import BusContext
from civicbus.processes import stop_process
from civicbus.signing import RecordSigner
from civicbus.settings import REPO_ROOT
from processors import STAGES


def read_topic(
    ctx: BusContext,
    topic: str | list[str],
    until: Callable[[list[Message]], bool] | None = None,
    timeout_s: float = 30.0,
    idle_s: float = 1.5,
    isolation: str = "read_committed",
) -> list[Message]:
    """Every record of `topic` (or of several topics) from the start (no group, so no join delay).

    Stops when `until(messages)` is true, or after `idle_s` without records once `until` is
    None; raises AssertionError on timeout while `until` is still false.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": ctx.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    topics = [topic] if isinstance(topic, str) else topic
    metadata = consumer.list_topics(timeout=10).topics
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in metadata[t].partitions])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    last_record = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if until is not None and until(messages):
                return messages
            if until is None and time.monotonic() - last_record > idle_s:
                return messages
            message = consumer.poll(0.1)
            if message is None or message.error():
                continue
            messages.append(message)
            last_record = time.monotonic()
    finally:
        consumer.close()
    if until is None:
        return messages
    raise AssertionError(f"timed out after {timeout_s}s reading {topic}: {len(messages)} records")


def produce_signed(ctx: BusContext, producer, topic: str, value: bytes | None, key: bytes | None = None,
                   headers: list | None = None, **kwargs) -> None:
    """Produce as a civicbus stage does onto an internal topic: signed, so its readers accept it."""
    producer.produce(topic, value, key, headers=RecordSigner.of_stack(ctx.settings).sign(topic, key, value, headers), **kwargs)


def private_config(tmp_path: Path) -> Path:
    """A copy of the sample city's config folder that a test may change."""
    config = tmp_path / "config"
    shutil.copytree(REPO_ROOT / "config", config)
    return config


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def committed_offset(ctx: BusContext, group: str, topic: str, partition: int = 0) -> int:
    """The offset `group` has committed on a partition (-1001 when none yet)."""
    consumer = Consumer({"bootstrap.servers": ctx.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        [tp] = consumer.committed([TopicPartition(topic, partition)], timeout=10)
        return tp.offset
    finally:
        consumer.close()


def headers_of(message: Message) -> dict[str, bytes]:
    return dict(message.headers() or [])


def case_report(**data_overrides) -> dict:
    """A valid city.case.reported event body, as a department would publish it."""
    data = {"category": "municipal_facilities", "subcategory": "pothole", "description": "路面坑洼"}
    data.update(data_overrides)
    return {
        "type": "city.case.reported",
        "location": {"raw_address": "东城区安定门内大街1号", "lat": 39.9475, "lon": 116.4075},
        "data": data,
    }


def stage_env(ctx: BusContext) -> dict[str, str]:
    return {
        **os.environ,
        "CIVICBUS_BOOTSTRAP": ctx.bootstrap,
        "CIVICBUS_NAMESPACE": ctx.settings.namespace,
        "CIVICBUS_CONFIG": str(ctx.settings.config),
        "CIVICBUS_STATE_DIR": str(ctx.settings.state_dir),  # one stack: the same keys (civicbus.signing)
        "CIVICBUS_SESSION_TIMEOUT_MS": str(ctx.settings.session_timeout_ms),
        "CIVICBUS_CASE_REPORT_WAIT_MS": str(ctx.settings.case_report_wait_ms),
    }


@dataclass
class StageProcess:
    name: str
    process: subprocess.Popen
    log_path: str

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


class PipelineProcesses:
    """`civicbus process <stage>` children for one test namespace."""

    def __init__(self, ctx: BusContext):
        self.ctx = ctx
        self.log_dir = tempfile.mkdtemp(prefix="civicbus-test-")
        self.stages: dict[str, StageProcess] = {}

    def start(self, stage: str, instance: str | None = None) -> StageProcess:
        """Start a stage; with `instance`, one more worker of it (named `stage-instance`)."""
        name = stage if instance is None else f"{stage}-{instance}"
        log_path = os.path.join(self.log_dir, f"{name}.log")
        log = open(log_path, "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "civicbus.cli", "process", stage, "--instance", instance or "0"],
            env=stage_env(self.ctx), stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.stages[name] = StageProcess(name, process, log_path)
        return self.stages[name]

    def start_all(self) -> None:
        for stage in STAGES:
            self.start(stage)

    def kill(self, stage: str) -> None:
        """kill -9: no chance to commit or clean up."""
        self.stages[stage].process.send_signal(signal.SIGKILL)
        self.stages[stage].process.wait(10)

    def stop(self, stage: str, timeout_s: float = 30.0) -> int:
        process = self.stages[stage].process
        if not stop_process(process, timeout_s):
            raise AssertionError(f"stage {stage} did not stop within {timeout_s}s of SIGTERM:\n{self.stages[stage].log()[-3000:]}")
        return process.returncode

    def stop_all(self) -> dict[str, int]:
        return {stage: self.stop(stage) for stage in reversed(list(self.stages))}

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.log()[-4000:]}" for s in self.stages.values())


def now() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def served_registry(schemas_dir: Path | None = None) -> Iterator[str]:
    """`civicbus registry` on a free port, serving `schemas_dir`'s lock (default: the repo's); yields its URL."""
    port = free_port()
    env = {**os.environ, **({"CIVICBUS_SCHEMAS_DIR": str(schemas_dir)} if schemas_dir else {})}
    process = subprocess.Popen([sys.executable, "-m", "civicbus.cli", "registry", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url) or process.poll() is not None, timeout_s=30, what=f"the registry on {url}")
        assert process.poll() is None, process.stdout.read().decode()
        yield url
    finally:
        stop_process(process, 10)


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/subjects", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
