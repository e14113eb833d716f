"""Checkpoint -> ONNX -> TensorRT, checkpoint families, reference pipelines and repository rendering
(installed as genguard.export). Runtime code (genguard/, its python-backend models, the gateway) never
imports this package."""
