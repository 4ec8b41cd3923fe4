"""``hcp backtest``: replay a recording through the decision flow under other policies."""
