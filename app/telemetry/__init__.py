"""Metrics, GPU gauges, logs and tracing."""
