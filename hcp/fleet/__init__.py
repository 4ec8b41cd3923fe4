"""Site-side fleet tools: the device protocol client, the inventory and the collector."""
