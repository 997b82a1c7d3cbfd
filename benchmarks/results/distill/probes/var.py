"""Stage-1 variants from the built model: what hidden_weight and steps do."""
import sys
import time

import torch

torch.set_num_threads(1)
from mosaic_search.hf.models import load_model
from mosaic_search.quality.evaluation import eval_set, measure
from mosaic_search.recovery import distill as D

target, name = sys.argv[1], sys.argv[2]
kw = eval(sys.argv[3])
src = f"/tmp/d15/bench2/tpot-{target}x/built"
teacher = load_model("tiny"); ev = eval_set("tiny")
t = time.perf_counter()
p = D.distill(src, out=f"/tmp/s2/{target}-{name}", overwrite=True, quality=False, **kw)
q = measure(load_model(str(p)), teacher, ev)
print(target, name, kw, q, f"{time.perf_counter()-t:.0f}s", flush=True)
