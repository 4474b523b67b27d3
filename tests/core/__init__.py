"""The library's core, for anyone changing it: values, the rule chain, the engine, reconciliation,
purity, bad input and batch sessions, mostly on the in-memory repository."""
