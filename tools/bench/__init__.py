"""``hcp bench``: fill topics, then measure the limit, HCP, the baseline and latency.

Modules: :mod:`.fill` (deterministic topics), :mod:`.limit` (the plain-consumer ceiling),
:mod:`.latency` (window end to Redis), :mod:`.report` (JSON and chart) and
:mod:`.command` (the subcommand). :mod:`.progress` is the stderr progress line they share.
"""
