"""GenGuard `preprocess` on the GPU targets (DALI backend): validated encoded images -> one PIXELS_<input>
per detector input spec. The renderer copies this file to preprocess/1/dali.py beside pipeline.json
(the parameters derived from the specs); the server's DALI backend autoserializes it with its own DALI
version. The graph itself is genguard.dali.define(), the one definition the tests run on CPU.
"""

from pathlib import Path

from nvidia.dali import pipeline_def
from nvidia.dali.plugin.triton import autoserialize

from genguard.dali import define, parameters_from_json

PARAMETERS = parameters_from_json((Path(__file__).parent / "pipeline.json").read_text())


# batch_size and device_id are placeholders: the backend rebuilds the pipeline with the config's
# max_batch_size and the instance's GPU.
@autoserialize
@pipeline_def(batch_size=16, num_threads=4, device_id=0)
def genguard_preprocess():
    return define(PARAMETERS, device="gpu")
