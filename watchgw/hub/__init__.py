"""The fan-out: channel keys, SSE frames, channels (one informer each), client sessions, the hub."""
