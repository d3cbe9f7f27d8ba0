"""The HTTP side: the aiohttp application, its routes, access control, metrics and server loop."""
