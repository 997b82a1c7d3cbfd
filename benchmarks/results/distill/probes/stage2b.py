"""Stage 2 alone (with the prompt KL) from the stage-1 model."""
import sys
import time

import torch

torch.set_num_threads(1)
from mosaic_search.hf.models import load_model
from mosaic_search.quality.evaluation import eval_set, measure
from mosaic_search.recovery import distill as D

target, lr = sys.argv[1], float(sys.argv[2])
src = f"/tmp/d15/bench2/tpot-{target}x/offpolicy"
teacher = load_model("tiny"); ev = eval_set("tiny")
t = time.perf_counter()
p = D.distill(src, stage="onpolicy", lr=lr, out=f"/tmp/s2/{target}-onQ-{lr:g}", overwrite=True, quality=False)
q = measure(load_model(str(p)), teacher, ev)
print(target, f"onpolicy+stage1-on-prompt lr {lr:g}", q, f"{time.perf_counter()-t:.0f}s", flush=True)
