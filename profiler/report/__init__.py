"""Reports over what the daemons recorded: they read the ledger (through
:mod:`profiler.ledger.queries`) or Prometheus, never a live daemon or hardware.

- :mod:`~profiler.report.model`: the records of a month (totals, run lines, the report), how
  they add up, months and budgets; no I/O.
- :mod:`~profiler.report.monthly`: the month from the ledger; :mod:`~profiler.report.fleet`: the
  month from Prometheus, for every node.
- :mod:`~profiler.report.render`: the month as ``md`` (:mod:`~profiler.report.markdown`),
  ``html`` (:mod:`~profiler.report.html`), ``csv`` and ``json`` (:mod:`~profiler.report.tables`);
  :mod:`~profiler.report.figures` words the figures for md and html.
- :mod:`~profiler.report.focus`: the FOCUS 1.2 cost-and-usage CSV;
  :mod:`~profiler.report.compare`: runs side by side.
- :mod:`~profiler.report.text`: user text made safe for each output format.

The renderers import the model, never the reverse.
"""
