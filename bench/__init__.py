"""``python -m bench``: end-to-end throughput, latency and memory figures for the gateway."""
