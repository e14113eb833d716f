"""Evaluate GenGuard on your own labelled images, and calibrate its fusion (`genguard evaluate`,
`genguard calibrate`).

Everything runs client-side against a running server: images go through the served ensemble, and the
per-detector probabilities in each answer are what gets measured and fitted. numpy only for the
metrics; matplotlib for the plots and scikit-learn for the fit are imported where they are needed
(both are in the `bench` extra).
"""

from .dataset import Sample, load_labelled
from .metrics import summarize

__all__ = ["Sample", "load_labelled", "summarize"]
