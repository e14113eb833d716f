"""GenGuard's REST gateway: Hive-compatible and native JSON/multipart routes in front of Triton.

`genguard gateway` (or `python -m genguard.gateway`) runs it on uvicorn; `create_app(Settings(...))` builds
the ASGI app. It forwards image bytes to the Triton ensemble over gRPC (genguard.client's AsyncClient);
it never decodes images itself and never fetches URLs.
"""
