"""The pipeline stages: ingest (validate, standardise, enrich, route), the stateful case stage
(merge, dispatch, deadlines, feedback) and the fan-out to department feeds.

Each stage is plain functions over event dicts plus a thin runner that owns the Kafka loop.
"""
