"""A Kubernetes list/watch protocol simulator (aiohttp) for the demo, tests and benchmarks."""

from .selectors import SelectorError, parse_field_selector, parse_label_selector
from .server import make_sim_app, serve_sim
from .store import Fault, SimConflict, SimNotFound, Simulator
from .testing import running_simulator

__all__ = [
    "Fault",
    "SelectorError",
    "SimConflict",
    "SimNotFound",
    "Simulator",
    "make_sim_app",
    "parse_field_selector",
    "parse_label_selector",
    "running_simulator",
    "serve_sim",
]
