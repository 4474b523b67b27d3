"""An example worker-facing service on FastAPI and workermatch's asyncio driver (``app.py``)."""
