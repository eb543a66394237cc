"""``ufp4 train``: a Llama-style GPT under several recipes, with the BF16-relative loss gap.

    ufp4 train --preset tiny                       # CPU, bf16 + ufp4, about two minutes
    ufp4 train --preset small --recipes bf16,e2m1-ref,nvfp4,ufp4,ufp4-mean --seeds 0,1,2 --noise-floor
    torchrun --nproc-per-node 2 -m ufp4_compile.cli.main train --preset small --parallel fsdp2

Writes results.json, results.md and results.png under --out (docs/train.md).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from ufp4_compile.cli.args import check_output_dir, int_at_least, positive_float

# Per-preset training defaults (each overridable on the command line; "data" is --data's default).
TRAIN_DEFAULTS = {
    "tiny": {"steps": 80, "batch_size": 8, "lr": 3e-3},
    "small": {"steps": 1000, "batch_size": 16, "lr": 1e-3},
    "bench": {"steps": 300, "batch_size": 8, "lr": 6e-4},
    "tiny-moe": {"steps": 80, "batch_size": 8, "lr": 3e-3},
    "small-moe": {"steps": 1000, "batch_size": 16, "lr": 1e-3},
    # 3200 steps x 32 x 1024 tokens = 105 M tokens, cosine to the end; sizing in models/gpt.py.
    "evidence": {"steps": 3200, "batch_size": 32, "lr": 1.5e-3, "data": "python-sources"},
}
DEFAULT_RECIPES = "bf16,ufp4"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a small GPT under several recipes; BF16-relative loss gap",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to train")
    g.add_argument("--preset", default="tiny", help="model preset: tiny (CPU), small (GPU), bench, and the mixture-of-experts tiny-moe (CPU) "
                        "and small-moe (GPU), evidence (GPU, 105 M tokens) (default: tiny)")
    g.add_argument("--recipes", default=DEFAULT_RECIPES,
                   help=f"comma-separated recipe names; bf16 is always run (default: {DEFAULT_RECIPES})")
    g.add_argument("--seeds", default="0", help="comma-separated seeds; each recipe runs once per seed (default: 0)")
    g.add_argument("--noise-floor", action="store_true",
                   help="also run bf16 again with the first seed (and with another seed if only one is given)")
    g.add_argument("--steps", type=int_at_least(1), help="training steps (preset default)")
    g.add_argument("--batch-size", type=int_at_least(1), help="sequences per step (preset default)")
    g.add_argument("--seq-len", type=int_at_least(1), help="tokens per sequence (preset default)")
    g.add_argument("--lr", type=positive_float, help="peak learning rate (preset default)")
    g.add_argument("--warmup", type=int_at_least(0), help="warm-up steps (default: steps/10)")
    g.add_argument("--data", help="python-sources (every installed *.py file, cached), a text file or a uint8/uint16 "
                                  "token .bin (default: the standard-library corpus; evidence: python-sources)")
    g.add_argument("--data-dtype", default="uint16", choices=("uint8", "uint16"), help="token type of a .bin file")
    g.add_argument("--data-seed", type=int_at_least(0), default=0, help="seed of the batch order, shared by every run")
    g = p.add_argument_group("how")
    g.add_argument("--backend", default="ufp4", help="ufp4 (default), inductor (bf16 only) or eager")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    g.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="high-precision compute: bf16 autocast (auto on CUDA) or fp32 (auto on CPU)")
    g.add_argument("--parallel", default="none", choices=("none", "ddp", "fsdp2"),
                   help="data parallel over the processes torchrun starts (--batch-size stays the global batch): "
                        "DDP, or FSDP2 with each block compiled on its own (default: none)")
    g = p.add_argument_group("measurement and output")
    g.add_argument("--last-n", type=int_at_least(1), help="window of the loss and gap figures (default: last quarter)")
    g.add_argument("--eval-batches", type=int_at_least(1), default=8, help="validation batches (default: 8)")
    g.add_argument("--eval-every", type=int_at_least(0), default=0, help="validate every N steps as well as at the end")
    g.add_argument("--diagnose", type=int_at_least(0), default=0, metavar="K",
                   help="every K steps record alpha and SQNR of every rewritten GEMM operand per layer")
    g.add_argument("--log-every", type=int_at_least(1), default=10, help="steps between loss read-backs (default: 10)")
    g.add_argument("--out", help="output directory (default: ufp4-train-<preset>)")
    g.add_argument("--checkpoint-every", type=int_at_least(0), default=0, help="write a checkpoint every N steps")
    g.add_argument("--stop-at", type=int_at_least(0), default=0, help="stop every run after this step with a checkpoint")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoints and finished runs in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_ints(text: str, field: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{field}={text!r} is not valid; give comma-separated integers, e.g. 0,1,2") from None
    if not values or len(set(values)) != len(values) or min(values) < 0:
        raise ValueError(f"{field}={text!r} is not valid; give distinct non-negative integers, e.g. 0,1,2")
    return values


def parse_recipes(text: str) -> list:
    from ufp4_compile.recipes import get_recipe, recipe_names

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--recipes={text!r} is empty; valid names: {', '.join(recipe_names())}")
    if "bf16" not in names:
        names.insert(0, "bf16")  # every gap is relative to bf16
    return [get_recipe(n) for n in dict.fromkeys(names)]


def resolve_device(name: str):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device={name!r} is not valid; valid values: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device={name!r}: no CUDA device is available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device={name!r} is not valid; valid values: auto, cpu, cuda, cuda:N")
    return str(device)


def default_if_none(value, default):
    """The command-line value, or the default when the flag was not given (0 is a value, not "unset")."""
    return default if value is None else value


def build_experiment(args):
    """Validate the arguments (ValueError naming the field and its valid values) and build the runs."""
    from ufp4_compile.data.corpus import load_corpus
    from ufp4_compile.models.gpt import get_config, preset_names
    from ufp4_compile.training import compile as compile_step, parallel
    from ufp4_compile.training.experiment import Experiment, command_line
    from ufp4_compile.training.loop import TrainConfig

    if args.preset not in TRAIN_DEFAULTS:
        raise ValueError(f"--preset={args.preset!r} is not a known preset; valid names: {', '.join(preset_names())}")
    recipes = parse_recipes(args.recipes)
    seeds = parse_ints(args.seeds, "--seeds")
    defaults = TRAIN_DEFAULTS[args.preset]
    steps = default_if_none(args.steps, defaults["steps"])
    if steps <= 0:
        raise ValueError(f"--steps={steps} is not valid; it must be a positive integer")
    last_n = default_if_none(args.last_n, max(1, steps // 4))
    if not 0 < last_n <= steps:
        raise ValueError(f"--last-n={last_n} is not valid; it must be between 1 and --steps={steps}")
    if args.stop_at and not 0 < args.stop_at < steps:
        raise ValueError(f"--stop-at={args.stop_at} is not valid; it must be between 1 and --steps - 1 = {steps - 1}")
    launch = parallel.launch_from_env(args.parallel)  # torchrun's environment, or one process
    batch_size = default_if_none(args.batch_size, defaults["batch_size"])
    parallel.check_arguments(args.parallel, launch, batch_size, {
        "--checkpoint-every": args.checkpoint_every, "--stop-at": args.stop_at, "--resume": args.resume,
        "--diagnose": args.diagnose})
    device = parallel.device_for(args.parallel, resolve_device(args.device), launch)
    if args.out is not None and not args.out.strip():
        raise ValueError("--out='' is not valid; give a directory")
    out = pathlib.Path(default_if_none(args.out, f"ufp4-train-{args.preset}"))
    check_output_dir(out, "--out")
    corpus = load_corpus(default_if_none(args.data, defaults.get("data")), args.data_dtype)
    for recipe in recipes:
        compile_step.check_backend(args.backend, recipe)
    config = get_config(args.preset, seq_len=args.seq_len)
    vocab = max(config.vocab_size, 64 * -(-corpus.vocab_size // 64))
    config = get_config(args.preset, seq_len=args.seq_len, vocab_size=vocab)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.startswith("cuda"))
    train = TrainConfig(
        steps=steps, batch_size=batch_size,
        lr=default_if_none(args.lr, defaults["lr"]),
        warmup_steps=default_if_none(args.warmup, steps // 10), data_seed=args.data_seed,
        device=device, autocast_bf16=bf16, backend=args.backend, parallel=args.parallel,
        eval_batches=args.eval_batches,
        eval_every=args.eval_every, log_every=args.log_every, diagnose_every=args.diagnose,
        checkpoint_every=args.checkpoint_every, stop_at=args.stop_at,
        progress=not args.no_progress and launch.rank == 0)  # only rank 0 prints
    drawn = train.steps * train.batch_size * config.seq_len
    if drawn > corpus.train.num_tokens and launch.rank == 0:
        print(f"note: a run draws {drawn:,} tokens from {corpus.train.num_tokens:,} training tokens "
              f"({corpus.info.get('source')}), so it sees data again", file=sys.stderr)
    return Experiment(preset=args.preset, model_config=config, corpus=corpus, train=train, recipes=recipes,
                      seeds=seeds, noise_floor=args.noise_floor, last_n=last_n, out_dir=out, resume=args.resume,
                      command=command_line())


def run(args) -> int:
    from ufp4_compile.training import parallel
    from ufp4_compile.training.checkpoint import ResumeError

    try:
        experiment = build_experiment(args)
        launch = parallel.launch_from_env(experiment.train.parallel)
    except ValueError as err:
        print(f"ufp4 train: error: {err}", file=sys.stderr)  # every rank: an error is never silenced
        return 2
    try:
        with parallel.process_group(experiment.train.parallel, experiment.train.device, launch):
            payload = experiment.execute()
    except ResumeError as err:
        print(f"ufp4 train: error: {err}", file=sys.stderr)
        return 2
    if launch.rank != 0:
        return 0
    out = experiment.out_dir
    if payload is None:
        print(f"stopped after step {experiment.train.stop_at}; continue with the same arguments and --resume "
              f"(checkpoints in {out / 'checkpoints'})")
        return 0
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
    return 0
