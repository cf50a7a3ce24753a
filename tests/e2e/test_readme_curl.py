"""README's curl examples, parsed out of README.md and run as written against `civicbus gateway`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from civicbus.settings import REPO_ROOT
from tests.e2e.test_gateway_load import running_gateway
from tests.integration.test_gateway import seed_feed
from tests.support import stage_env


def readme_gateway_block() -> list[str]:
    """The lines of README's shell block that starts with `TOKEN=$(civicbus token ...)`."""
    blocks = re.findall(r"```sh\n(.*?)```", (REPO_ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    [block] = [b for b in blocks if b.startswith("TOKEN=$(civicbus token")]
    return block.strip().splitlines()


def test_the_readme_curl_examples_work_as_written(bus, tmp_path):
    lines = readme_gateway_block()
    token_line, curls = lines[0], [line for line in lines[1:] if line.startswith("curl ")]
    assert len(curls) == len(lines) - 1 == 5
    bus.settings.state_dir = tmp_path
    for _ in range(20):  # what the pipeline would have delivered by now, one batch each (so the
        seed_feed(bus, "citymgmt", 1)  # end the embedded broker reports is exact)
    env = {**stage_env(bus), "CIVICBUS_STATE_DIR": str(tmp_path), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with running_gateway(bus, tmp_path) as gateway:
        port = gateway.base.rsplit(":", 1)[1]

        def shell(line: str, status: bool = False) -> str:
            """The line as written (the port is the test gateway's), after README's TOKEN line;
            with `status`, curl also prints the HTTP status on a last line."""
            wrapper = "curl() { command curl -sS -w '\\n%{http_code}' \"$@\"; }\n" if status else ""
            return f"{token_line}\n{wrapper}{line.replace('localhost:8080', f'localhost:{port}')}"

        for line in curls:
            if " -N " in line:  # a stream: read until its first event, then hang up
                stream = subprocess.Popen(["bash", "-c", shell(line)], env=env, stdout=subprocess.PIPE, text=True)
                try:
                    first = next(out for out in stream.stdout if out.startswith("data:"))
                finally:
                    stream.kill()
                    stream.wait(10)
                assert json.loads(first.removeprefix("data:"))["source"] == "citymgmt", line
                continue
            ran = subprocess.run(["bash", "-c", shell(line, status=True)], env=env, capture_output=True, text=True, timeout=90)
            body, _, status = ran.stdout.rpartition("\n")
            answer = json.loads(body)
            if " -d " in line:
                assert status == "202" and answer["id"], (line, ran.stdout, ran.stderr)
            else:
                assert status == "200" and answer["events"] and answer["cursor"], (line, ran.stdout[-500:], ran.stderr)
