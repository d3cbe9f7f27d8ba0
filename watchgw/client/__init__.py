"""Python asyncio client of the gateway: one stream, many subscriptions, each channel's objects."""

from watchgw.client.client import WatchClient, WatchClientError, object_key
from watchgw.client.sse import SSEEvent, SSEParser

__all__ = ["SSEEvent", "SSEParser", "WatchClient", "WatchClientError", "object_key"]
