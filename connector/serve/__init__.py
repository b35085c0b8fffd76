"""`connector serve`: the HTTP service (FastAPI), its metrics and the static WebUI."""
