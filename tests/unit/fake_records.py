"""A stand-in for confluent_kafka.Message in pure unit tests of civicbus's own logic."""

from dataclasses import dataclass


@dataclass
class FakeRecord:
    _topic: str = "civic.test"
    _partition: int = 0
    _offset: int = 0
    _key: bytes | None = None
    _value: bytes | None = None

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return self._key

    def value(self):
        return self._value

    def error(self):
        return None
