"""The profitability job for ``python -m bytewax.run flows.job``, configured by HCP_* variables.

Use this entry point to scale out with Bytewax's own flags (``-w`` workers per process,
``-i``/``-a`` processes on one or many hosts; docs/scale-out.md); ``hcp run`` is the same
flow with command-line flags, ``--processes`` and a recovery directory check.

Importing this module does no I/O: every topic is taken to have ``HCP_PARTITIONS``
partitions (create them first, e.g. with ``hcp generate`` or ``hcp run --once`` on empty
topics), and the source checks that against the broker when the dataflow starts.
"""

from flows.dataflow import build_flow
from flows.layout import TopicLayout
from flows.settings import JobSettings

_settings = JobSettings.from_env()
flow = build_flow(_settings, layout=TopicLayout.from_settings(_settings))
