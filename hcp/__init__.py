"""HCP: the hybrid compute streaming pipeline.

Shared pieces used by ``flows``, ``generators`` and ``sinks``: configuration, the message
contract, the embedded broker and the ``hcp`` command line.
"""

__version__ = "0.1.0"
