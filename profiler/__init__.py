"""The node daemon and everything that runs outside training: CLI, sensors, energy
attribution, ledger and Prometheus exporter."""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
