"""Unit conversions every layer shares (the standard library only, importable from anywhere)."""

JOULES_PER_KWH = 3.6e6  # 1 kWh = 1000 W x 3600 s
