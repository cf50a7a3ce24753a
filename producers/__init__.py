"""Publishing into the bus: the department SDK, HTTP ingest and the city simulator."""
