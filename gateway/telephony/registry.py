"""Every phone network the gateway serves, in the order app.py registers them and config.yaml
documents them. Adding a network: its folder (spec, codec, fake caller) and one line here."""

from __future__ import annotations

import importlib

from .network import NetworkSpec

NAMES = (
    "twilio",
    "telnyx",
    "plivo",
    "exotel",
    "audiosocket",
    "vonage",
    "jambonz",
)
NETWORKS: tuple[NetworkSpec, ...] = tuple(importlib.import_module(f".{name}", __package__).SPEC for name in NAMES)
BY_NAME: dict[str, NetworkSpec] = {spec.name: spec for spec in NETWORKS}
