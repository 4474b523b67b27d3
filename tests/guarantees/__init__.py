"""The library's guarantees as Hypothesis properties over generated fleets and event streams:
guarantees 1 to 5 on the in-memory store, guarantee 6 (every store decides alike) on every
store."""
