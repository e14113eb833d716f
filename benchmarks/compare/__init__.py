"""make bench-compare: GenGuard side by side with the seeds' own pipelines (`python -m genguard.benchmarks.compare`).

Modules: loading (what the server serves, detectors, reference pipelines, photos), bench (shared state, interleaved
modes), one module per table (detectors, ensemble, options, preprocessing, summary), writing (the report), cli.
"""

from genguard.benchmarks.compare.common import PIPELINE_MODELS, chunks, log, pause, timed  # noqa: F401
from genguard.benchmarks.compare.loading import (Detector, Served, discover, load_detector, sample_images,  # noqa: F401
                                                 served_tag, serves_int8)
from genguard.benchmarks.compare.summary import (TARGET_FP32, TARGET_INT8, TARGET_OVERHEAD, best, best_peak,  # noqa: F401
                                                 summarize, target_rows, targets)
from genguard.benchmarks.compare.writing import markdown, write  # noqa: F401
from genguard.benchmarks.compare.cli import main, parse_args  # noqa: F401,E402
