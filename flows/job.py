"""The profitability job for ``python -m bytewax.run flows.job``, configured by HCP_* variables.

Use this entry point to scale out with Bytewax's own flags (``-w`` workers per process,
``-p``/``-a``/``-i`` processes on one or many hosts); ``hcp run`` is the same flow with
command-line flags and a single process.
"""

from flows.dataflow import build_flow
from flows.settings import JobSettings

flow = build_flow(JobSettings.from_env())
