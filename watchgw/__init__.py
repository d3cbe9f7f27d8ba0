"""watchgw: one Server-Sent Events stream per client, one shared Kubernetes watch per channel."""

__version__ = "0.1.0"
