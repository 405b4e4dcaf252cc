"""Benchmark: Zonkey training-step time, throughput and memory on CPU, plus parameter counts of the presets.

A training step is model.train(); loss = model(input_ids, return_loss=True).loss; loss.backward();
clip_grad_norm_(1.0); AdamW.step() (eps 1e-7, as the paper release). The batch is `--batch_size`
documents of exactly document_length[0] bytes of English-looking text, generated deterministically from
a small built-in word list (no downloads). After `--warmup` steps the median of `--steps` steps is
reported, with bytes/s = batch * document bytes / median step time and the process's peak RSS
(resource.getrusage). The parameter counts of all three presets are printed per level (the paper
preset is built on the meta device, so it costs no memory) against the paper's ~410M reference
(~24M level 0, ~385M level 1).

On a shared machine whose cores are busy, run with --threads 1 or with OMP_WAIT_POLICY=PASSIVE in the
environment: with the default (spinning) OpenMP wait policy a 2-thread step can be 10-30x slower when
another process holds a core. The header prints the load average and the policy in force.

    python benchmarks/bench_training_step.py                       # zonkey-tiny, 8 documents
    python benchmarks/bench_training_step.py --config configuration/zonkey-micro.json --batch_size 4 --threads 1
"""

import argparse
import random
import resource
import statistics
import time
from pathlib import Path

import torch
from common import configure_threads, machine_line  # benchmarks/common.py (scripts run from this folder's path)

from modeling_zonkey import ZonkeyConfig, ZonkeyModel

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("zonkey-micro", "zonkey-tiny", "zonkey-paper")
PAPER_PARAMETERS = {"level 0": 24e6, "level 1": 385e6, "total": 410e6}  # method.md section 8 (approximate)

WORDS = (
    "the of and to in a is that for it as was with be by on not he i this are or his from at which but have an "
    "they you were her she there one all we their been has would when who will more no if out so what up said "
    "about into than them can only other new some could time these two may then do first any my now such like "
    "our over man me even most made after also did many before must through back years where much your way well "
    "down should because each just those people how too little state good very make world still own see men work "
    "long get here between both life being under never day same another know while last might us great old year "
    "off come since against go came right used take three states himself few house use during without again place "
    "american around however home small found thought went say part once general high upon school every does got "
    "united left number course war until always away something fact though water less public put think almost "
    "hand enough far took head yet government system better set told nothing night end why called didn't eyes find "
    "going look asked later knew point next program city business give group toward young days let room president "
    "side social given present several order national possible rather second face per among form important often "
    "things looked early white case john become large big need four within felt children along saw best church "
    "ever least power development light thing seemed family interest want members mind country area others done "
    "language river history music century village railway station species university population album season"
).split()


def english_text(num_bytes: int, rng: random.Random) -> str:
    """Sentences of random words: capitalised, with commas, full stops and the odd number; exactly num_bytes."""
    parts, size = [], 0
    while size < num_bytes:
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 20))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(2, 2024)))
        if len(words) > 8 and rng.random() < 0.5:
            words[rng.randrange(2, len(words) - 2)] += ","
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice(".....?!") + " "
        parts.append(sentence)
        size += len(sentence)
    return "".join(parts)[:num_bytes]


def make_batch(batch_size: int, num_bytes: int, seed: int) -> torch.Tensor:
    rng = random.Random(seed)
    rows = [list(english_text(num_bytes, rng).encode("utf-8")) for _ in range(batch_size)]
    return torch.tensor(rows, dtype=torch.long)


def load_config(path: str) -> ZonkeyConfig:
    p = Path(path)
    return ZonkeyConfig.from_pretrained(str(p if p.exists() else ROOT / p))


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_table() -> None:
    print("| preset | byte embeddings | level 0 | level 1 | total | paper total (~410M) | difference |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    paper_model = None
    for name in PRESETS:
        config = load_config(f"configuration/{name}.json")
        with torch.device("meta"):
            model = ZonkeyModel(config)
        levels = [count(level) for level in model.levels]
        total = count(model)
        embeddings = count(model.byte_embeddings)
        level_cells = [f"{levels[i]:,}" if i < len(levels) else "-" for i in range(2)]
        diff = (f"{100 * (total - PAPER_PARAMETERS['total']) / PAPER_PARAMETERS['total']:+.1f}%"
                if name == "zonkey-paper" else "-")
        print(f"| {name} | {embeddings:,} | {level_cells[0]} | {level_cells[1]} | {total:,} | "
              f"{'410M' if name == 'zonkey-paper' else '-'} | {diff} |")
        if name == "zonkey-paper":
            paper_model = model
    if paper_model is None:
        return
    # Per level against the paper's split (byte embeddings counted with level 0, as the paper's level-0
    # model holds them).
    print()
    print("| zonkey-paper | ours | paper | difference |")
    print("|---|---:|---:|---:|")
    ours = {"level 0": count(paper_model.byte_embeddings) + count(paper_model.levels[0]),
            "level 1": count(paper_model.levels[1]), "total": count(paper_model)}
    for key, reference in PAPER_PARAMETERS.items():
        print(f"| {key}{' (+ byte embeddings)' if key == 'level 0' else ''} | {ours[key] / 1e6:.1f}M | "
              f"~{reference / 1e6:.0f}M | {100 * (ours[key] - reference) / reference:+.1f}% |")
    print()
    names = list(dict.fromkeys(n for level in paper_model.levels for n, _ in level.named_children()))
    print("| zonkey-paper component | " + " | ".join(f"level {i}" for i in range(len(paper_model.levels))) + " |")
    print("|---|" + "---:|" * len(paper_model.levels))
    for component in names:
        cells = []
        for level in paper_model.levels:
            sub = getattr(level, component, None)
            cells.append(f"{count(sub) / 1e6:.2f}M" if isinstance(sub, torch.nn.Module) else "-")
        print(f"| {component} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configuration/zonkey-tiny.json",
                        help="preset JSON (path or repo-relative)")
    parser.add_argument("--batch_size", type=int, default=8, help="documents per batch")
    parser.add_argument("--document_bytes", type=int, default=None,
                        help="bytes per document (default: document_length[0])")
    parser.add_argument("--threads", default=None,
                        help='torch.set_num_threads (default: torch\'s); "auto": the training script\'s choice')
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_parameters", action="store_true", help="do not print the preset parameter counts")
    args = parser.parse_args()
    configure_threads(args.threads)
    torch.manual_seed(args.seed)

    config = load_config(args.config)
    num_bytes = args.document_bytes or config.document_length[0]
    input_ids = make_batch(args.batch_size, num_bytes, args.seed)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = ZonkeyModel(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, eps=1e-7)

    times, losses = [], []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids, return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        elapsed = time.perf_counter() - start
        losses.append(float(loss.detach()))
        if step >= args.warmup:
            times.append(elapsed)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    median = statistics.median(times)
    name = Path(args.config).stem
    print(f"training step: {name}, {args.batch_size} documents x {num_bytes} bytes, threads {torch.get_num_threads()}, "
          f"warmup {args.warmup}, steps {args.steps}, torch {torch.__version__}")
    print(machine_line())
    print(f"sample text: {input_ids[0, :100].to(torch.uint8).numpy().tobytes().decode()!r}")
    print()
    print("| preset | params | batch | bytes/doc | median step s | min / max s | bytes/s | peak RSS MiB | "
          "RSS before model MiB | loss first -> last |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {name} | {count(model) / 1e6:.2f}M | {args.batch_size} | {num_bytes} | {median:.3f} | "
          f"{min(times):.3f} / {max(times):.3f} | {args.batch_size * num_bytes / median:,.0f} | "
          f"{peak_rss / 1024:.0f} | {rss_start / 1024:.0f} | {losses[0]:.3f} -> {losses[-1]:.3f} |")
    if not args.skip_parameters:
        print()
        parameter_table()


if __name__ == "__main__":
    main()
