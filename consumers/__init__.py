"""Receiving from the bus: the subscriber SDK, the HTTP feed gateway and sinks."""
