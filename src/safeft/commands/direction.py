"""``safeft direction``: compute the AsFT / Safe LoRA alignment direction V = W_aligned - W_unaligned."""

from __future__ import annotations

import argparse

from safeft.commands.argtypes import at_least


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "direction",
        help="alignment direction V = W_aligned - W_unaligned (top-k singular vectors per layer)",
        description=(
            "For every targeted linear layer compute V = W_aligned - W_unaligned layer by layer and store "
            "its top-k left singular vectors, singular values and a per-layer summary (safetensors + JSON). "
            "A model may be an embedded name, a .gguf file, a directory or a hub id; one side may be a LoRA "
            "adapter directory instead (then V is the adapter's delta, used exactly)."
        ),
    )
    p.add_argument("--aligned", required=True, help="aligned model, or a LoRA adapter on top of --unaligned")
    p.add_argument("--unaligned", required=True, help="unaligned reference model (or adapter on --aligned)")
    p.add_argument("--out", required=True, help="output folder (direction.safetensors + direction.json)")
    p.add_argument(
        "--targets", default="q_proj,v_proj", help="comma-separated module names (default q_proj,v_proj)"
    )
    p.add_argument(
        "--rank", type=at_least(1), default=8, help="k: singular directions kept per layer (default 8)"
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="also store the factor of the paper's C = V V^T/||V||_F (as large as the targeted weights)",
    )
    p.add_argument("--device", default="cpu", help="where the per-layer SVDs run (cpu, cuda, ...)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from safeft.asft.build import DirectionRequest, compute_direction
    from safeft.asft.targets import parse_targets

    if not [t for t in args.targets.split(",") if t.strip()]:
        raise ValueError(
            f"--targets {args.targets!r}: expected comma-separated module names, e.g. q_proj,v_proj"
        )
    req = DirectionRequest(
        aligned=args.aligned,
        unaligned=args.unaligned,
        targets=parse_targets(args.targets),
        rank=args.rank,
        paper=args.paper,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )
    direction = compute_direction(req)
    out = direction.save(args.out)
    s = direction.summary()
    norms = [layer["fro_norm"] for layer in s["layers"].values()]
    ratios = [layer["sigma1_sq_ratio"] for layer in s["layers"].values()]
    print(
        f"wrote {out}: {s['n_layers']} layers, k={req.rank}; energy captured by k: mean "
        f"{s['energy_k_mean']:.3f}, min {s['energy_k_min']:.3f}; ||V||_F mean {sum(norms) / len(norms):.4g}; "
        f"sigma1^2/||V||_F^2 mean {sum(ratios) / len(ratios):.3f}"
    )
    return 0
