"""Where the ``profiler`` command finds what ships inside the package, without importing the
command groups that use it (the parser names the default at every start)."""

from __future__ import annotations

from pathlib import Path

# The dashboard JSON shipped inside the package (built by dashboards/build.py), so that an
# installed wheel finds it as a checkout does: the folder beside the package's modules.
DASHBOARDS_DIR = Path(__file__).resolve().parent.parent / "dashboards"
