"""Observability: the Prometheus exporter (``python -m observability.exporter``)."""
