"""The code location: Definitions for the sources in KMDAGSTER_CONFIG (or ./kmdagster.yaml)."""

from kmdagster.config import load_config
from kmdagster.defs.factory import build_definitions

defs = build_definitions(load_config())
