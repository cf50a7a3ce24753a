"""Consumer-group lag: kafka-lag-exporter's metrics and Burrow's sliding-window status.

lookup.py   offset -> time table per partition (time lag estimate, as kafka-lag-exporter)
status.py   OK / WARNING / ERROR / STALLED / STOPPED over a sliding window (as Burrow)
offsets.py  one snapshot of committed, latest and earliest offsets read from Kafka
monitor.py  turns successive snapshots into lag figures and statuses (pure, no Kafka)
exporter.py polls in the background and serves the figures as Prometheus metrics
"""
