"""`connector serve`: bge-m3 as an HTTP service (FastAPI + uvicorn), the debugging WebUI and
Prometheus metrics, on the same encoder, projection and sinks as the command line."""
