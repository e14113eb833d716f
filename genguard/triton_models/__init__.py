"""Triton python-backend models. The repository renderer copies each file to <model>/1/model.py;
they import triton_python_backend_utils, which exists only inside the server's python stub."""
