"""Stage 2 alone from the stage-1 model, at several learning rates: what does on-policy add or cost?"""
import sys
import time

import torch

torch.set_num_threads(1)
from mosaic_search.hf.models import load_model
from mosaic_search.quality.evaluation import eval_set, measure
from mosaic_search.recovery import distill as D

target, lrs = sys.argv[1], [float(x) for x in sys.argv[2].split(",")]
src = f"/tmp/d15/bench2/tpot-{target}x/offpolicy"
teacher = load_model("tiny"); ev = eval_set("tiny")
q = measure(load_model(src), teacher, ev); print(target, "stage1", q, flush=True)
for lr in lrs:
    t = time.perf_counter()
    p = D.distill(src, stage="onpolicy", lr=lr, out=f"/tmp/s2/{target}-on-{lr:g}", overwrite=True, quality=False)
    q = measure(load_model(str(p)), teacher, ev)
    print(target, f"onpolicy lr {lr:g}", q, f"{time.perf_counter()-t:.0f}s", flush=True)
