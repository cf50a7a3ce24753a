"""Signatures on the records civicbus's own stages write to its internal topics.

On Apache Kafka the ACL plan (civicbus.acl) lets only civicbus's principals write
civic.dist.events, civic.pipe.*, civic.feed.* and civic.audit; the embedded broker has no ACLs,
so anyone who can reach it could write there. Each stage therefore adds an HMAC-SHA256 of the
record (topic, key, value and every other header, in order) in the `civic_sig` header, under a
key all stages of one stack share, and every reader of those topics refuses what does not
verify (the stages dead-letter it FORGED, the gateway and the subscriber SDK skip it).

The topic is signed without the namespace prefix (empty in production; tests use it), so a
record moved to another topic does not verify, while a namespace stays a deployment detail.
A valid record written again verbatim still verifies: what it carries was genuine, and the
fan-out drops a repeated event id anyway.
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
import struct
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Message

from civicbus.settings import Settings
from civicbus.topology import AUDIT, DIST_EVENTS, FEED_PREFIX

# Every hop between stages (civicbus.topology.PIPE_CASES today), now and later.
PIPE_PREFIX = "civic.pipe."
SIGNATURE_HEADER = "civic_sig"
KEY_FILE = "keys/records.hmac"

Headers = list[tuple[str, bytes | None]]


def state_secret(path: Path, make: Callable[[], bytes]) -> bytes:
    """The secret stored at `path`, made by `make()` on first use, readable by its owner only.

    Stages starting together race to create it: it is written under a temporary name and
    linked into place, so exactly one creation wins and nobody reads a half-written file.
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(make())
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process won: use its secret
    finally:
        temporary.unlink()
    return path.read_bytes()


_LENGTH = struct.Struct(">Q").pack
_COUNT = struct.Struct(">I").pack


def _field(data: bytes | None) -> bytes:
    """Length-prefixed, so no two different records sign the same bytes; None differs from b""."""
    return b"\x00" if data is None else b"\x01" + _LENGTH(len(data)) + data


@functools.lru_cache(maxsize=256)
def _text_field(name: str) -> bytes:
    """The field of a topic or header name: a stack writes a few dozen, on every record."""
    return _field(name.encode())


class RecordSigner:
    def __init__(self, key: bytes, namespace: str = ""):
        self._keyed = hmac.new(key, digestmod="sha256")  # copied per record: the key is set up once
        self._namespace = namespace
        self._exact = {namespace + DIST_EVENTS, namespace + AUDIT}
        self._prefixes = (namespace + PIPE_PREFIX, namespace + FEED_PREFIX)

    @classmethod
    def of_stack(cls, settings: Settings) -> RecordSigner:
        """The stack's signer: its key is in the state folder, created on first use."""
        return cls(state_secret(settings.state_dir / KEY_FILE, lambda: secrets.token_bytes(32)), settings.namespace)

    def covers(self, topic: str) -> bool:
        """Whether records on `topic` must carry a signature."""
        return topic in self._exact or topic.startswith(self._prefixes)

    def _digest(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> bytes:
        """HMAC-SHA256 over the fields in order; every stage signs and checks several records per
        event, so it is written for speed (a record's bytes are unchanged by that: tested)."""
        parts = [_text_field(topic.removeprefix(self._namespace)), _field(key), _field(value), _COUNT(len(headers))]
        for name, header_value in headers:
            parts.append(_text_field(name))
            parts.append(_field(header_value))
        mac = self._keyed.copy()
        mac.update(b"".join(parts))
        return mac.digest()

    def sign(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None) -> Headers:
        """`headers` without any signature they carried (a record copied on from another
        topic), plus this record's."""
        unsigned = [(k, v) for k, v in headers or [] if k != SIGNATURE_HEADER]
        return unsigned + [(SIGNATURE_HEADER, self._digest(topic, key, value, unsigned).hex().encode())]

    def verifies(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None) -> bool:
        """True when the record carries exactly one signature and it is this stack's over all of it."""
        headers = headers or []
        signatures = [v for k, v in headers if k == SIGNATURE_HEADER]
        if len(signatures) != 1 or headers[-1][0] != SIGNATURE_HEADER or signatures[0] is None:
            return False
        expected = self._digest(topic, key, value, headers[:-1]).hex().encode()
        return hmac.compare_digest(expected, signatures[0])

    def verifies_message(self, message: Message) -> bool:
        return self.verifies(message.topic(), message.key(), message.value(), message.headers())
