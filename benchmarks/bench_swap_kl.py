"""What an operator's design costs in quality: tiny's swap KL after local alignment, mean over layers per candidate.

Scores every layer of the embedded teacher with the given candidates (`mosaic score`, default data, 40 alignment
steps, seed 0) and prints the mean KL(teacher || swapped) per candidate. Run it on two checkouts (PYTHONPATH) to
compare an operator before and after a change; `--mla-rope-fraction F` scores mla with RoPE on head_dim / F key dims
instead of the code's own choice (`modeling.dims.mla_rope_dims`).

    python benchmarks/bench_swap_kl.py --ops gqa,mla:rank=32,mla:rank=16 --mla-rope-fraction 4 --out /tmp/kl-q
    python benchmarks/bench_swap_kl.py --ops gqa,gdn,kda --out /tmp/kl-linear
"""

from __future__ import annotations

import argparse
import json
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mla-rope-fraction", type=int, default=0,
                   help="mla: RoPE on head_dim / F key dims (0: the code's own choice)")
    p.add_argument("--ops", default="gqa,mla:rank=32,mla:rank=16")
    p.add_argument("--out", required=True, help="folder for the sensitivity table")
    args = p.parse_args()
    if args.mla_rope_fraction:
        from mosaic_search.modeling import attention, dims
        from mosaic_search.operators import latent

        def rope_dims(d: dims.ModelDims) -> int:
            """head_dim / F key dims (even, at least 2, at most the teacher's rotated dims)."""
            return max(2, min(d.head_dim // args.mla_rope_fraction, d.rope_dims) // 2 * 2)

        # every module that imported the name holds its own reference: the mixer and the cache-size formulas
        for module in (dims, attention, latent):
            module.mla_rope_dims = rope_dims
    from mosaic_search.quality import scorer

    start = time.perf_counter()
    table = scorer.score("tiny", ops=args.ops, out=f"{args.out}/sensitivity.json", seed=0)
    kl = {}
    for e in table.entries:
        if e.candidate.op != "gqa":
            kl.setdefault(str(e.candidate), []).append(e.kl)
    print(json.dumps({"mla_rope_fraction": args.mla_rope_fraction, "seconds": round(time.perf_counter() - start, 1),
                      "mean_kl": {c: sum(v) / len(v) for c, v in kl.items()},
                      "kl_per_layer": kl}, indent=1))


if __name__ == "__main__":
    main()
