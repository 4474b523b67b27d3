"""Storage, for whoever runs or writes a repository: the SQL repository (schema, mappings,
faults, retries, concurrency, statement counts, decisions alike on every store) and the
conformance kit (``workermatch.testing``) on every shipped store, its strategies, and the bugs
it catches."""
