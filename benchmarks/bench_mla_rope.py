"""What decoupling RoPE costs mla in quality: tiny's swap KL after local alignment, per rank, for a rope fraction.

mla caches a latent plus, per KV head, the rotated key dims that keep RoPE (`modeling.dims.mla_rope_dims`); the rest
of the key loses RoPE so that decode can attend in the latent space (absorbed form). This scores every layer of the
embedded teacher with mla at two ranks and prints the mean KL(teacher || swapped) per rank.

    python benchmarks/bench_mla_rope.py --fraction 2 --out /tmp/mla-half    # RoPE on head_dim / 2 key dims
    python benchmarks/bench_mla_rope.py --fraction 0 --out /tmp/mla-code    # whatever mla the code on PYTHONPATH has

(`--fraction 0` on an older checkout's PYTHONPATH scores the older mla the same way.)
"""

from __future__ import annotations

import argparse
import json
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fraction", type=int, default=0, help="RoPE on head_dim / FRACTION key dims; 0: the code's own")
    p.add_argument("--ops", default="gqa,mla:rank=32,mla:rank=16")
    p.add_argument("--out", required=True, help="folder for the sensitivity table")
    args = p.parse_args()
    if args.fraction:
        import mosaic_search.modeling.attention as attention

        attention.mla_rope_dims = lambda head_dim: max(2, head_dim // args.fraction // 2 * 2)
    from mosaic_search import scorer

    start = time.perf_counter()
    table = scorer.score("tiny", ops=args.ops, out=f"{args.out}/sensitivity.json", seed=0)
    kl = {}
    for e in table.entries:
        if e.candidate.op == "mla":
            kl.setdefault(str(e.candidate), []).append(e.kl)
    print(json.dumps({"fraction": args.fraction, "seconds": round(time.perf_counter() - start, 1),
                      "mean_kl": {c: sum(v) / len(v) for c, v in kl.items()},
                      "kl_per_layer": kl}, indent=1))


if __name__ == "__main__":
    main()
