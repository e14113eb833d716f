"""The gateway's routes: hive (Hive NIM-compatible), detect (native), models, health."""
