"""Measure how far the tiny models' logits drift from float64, to set the tie tolerance tau in ties.py.

    python -m correctness.measure_tau                  # float32 and bfloat16 on CPU
    python -m correctness.measure_tau --device cuda    # float32 (TF32 matmuls) and bfloat16 on a GPU

For each family, weight seed and dtype: the max |logit - float64 logit| over every position of random batches,
both for a full forward (the naive loop's path) and for one-token steps against a DynamicCache (the cached
loops' path). The float64 model is a copy of the very weights under test, so only arithmetic differs.
Also printed: the fraction of positions whose float64 top-2 gap is within 4x that error (how often ties occur).
"""

from __future__ import annotations

import argparse

import torch

from correctness.strategies import FAMILIES, SEEDS, dtypes_for, get_model
from correctness.ties import float64_copy
from generators import generate
from generators.compat import cache_kwargs, returned_cache


@torch.inference_mode()
def logits_errors(model: torch.nn.Module, input_ids: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """(full-forward error, cached-step error, float64 logits [B, L, V]) for one batch."""
    exact = float64_copy(model)(input_ids.cpu()).logits
    full = model(input_ids).logits.double().cpu()
    out = model(input_ids[:, :1], use_cache=True)
    steps = [out.logits]
    for i in range(1, input_ids.shape[1]):
        out = model(input_ids[:, i : i + 1], use_cache=True, **cache_kwargs(model, returned_cache(out)))
        steps.append(out.logits)
    cached = torch.cat(steps, dim=1).double().cpu()
    return float((full - exact).abs().max()), float((cached - exact).abs().max()), exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=4, help="random [8, 64] batches per model")
    parser.add_argument("--divergence", nargs="*", metavar="GENERATOR",
                        help="also count the rows where these generators part from naive ([8, 16] prompts, 48 new "
                             "tokens, no EOS): how often near-ties flip in practice")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.divergence:
        divergence(device, args.divergence)
    for dtype in (torch.float32, torch.bfloat16):
        worst_full = worst_cached = 0.0
        gaps = []
        for family in FAMILIES:
            for seed in SEEDS:
                model = get_model(family, seed, dtype, device)
                gen = torch.Generator().manual_seed(1000 + seed)
                for _ in range(args.batches):
                    ids = torch.randint(0, 512, (8, 64), generator=gen).to(device)
                    full, cached, exact = logits_errors(model, ids)
                    worst_full, worst_cached = max(worst_full, full), max(worst_cached, cached)
                    top2 = exact.topk(2, dim=-1).values
                    gaps.append((top2[..., 0] - top2[..., 1]).flatten())
        err = max(worst_full, worst_cached)
        gaps_t = torch.cat(gaps)
        near = float((gaps_t <= 4 * err).double().mean())
        print(f"{device.type} {dtype}: max |logit error| full forward {worst_full:.3g}, cached steps "
              f"{worst_cached:.3g}; 4x = {4 * err:.3g}; positions with top-2 gap <= 4x: {near:.2%} of "
              f"{gaps_t.numel()} (median top-2 gap {float(gaps_t.median()):.3g})")


def divergence(device: torch.device, names: list[str]) -> None:
    for dtype in dtypes_for(device):
        parted = {name: 0 for name in names}
        rows = 0
        for family in FAMILIES:
            for seed in SEEDS:
                model = get_model(family, seed, dtype, device)
                ids = torch.randint(0, 512, (8, 16), generator=torch.Generator().manual_seed(seed)).to(device)
                expected = generate("naive", model, ids, 48)
                rows += 8
                for name in names:
                    parted[name] += int((generate(name, model, ids, 48) != expected).any(dim=1).sum())
        print(f"{device.type} {dtype}: rows that part from naive, of {rows}: {parted}")


if __name__ == "__main__":
    main()
