"""Model definitions, scale/pruning schedules and (later) the graph export stages."""
