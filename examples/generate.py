#!/usr/bin/env python
"""Generate text with a saved Zonkey (any folder written by save_pretrained, or a Hub repo id).

    python examples/generate.py runs/zonkey-tiny                              # 4 samples from noise
    python examples/generate.py runs/zonkey-tiny --prompt "The river "        # continue a prompt
    python examples/generate.py runs/zonkey-tiny --infill "The [GAP] river."  # fill the gap
    python examples/generate.py runs/zonkey-tiny --reconstruct "Some text." --noise_level 0.3   # variations
    python examples/generate.py runs/zonkey-tiny --max_new_tokens 300 --stream  # 300 bytes, drafts shown as they form

Options not given here come from the folder's generation_config.json. --show_segmentation prints each
output with the model's own segment starts ("|" level 0, "‖" level 1).
"""

import argparse
import sys
import time
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, TextDiffusionStreamer

import modeling_zonkey  # noqa: F401  (registers the Auto classes)
from modeling_zonkey.evaluation.inspection import mark_boundaries, segment_text
from modeling_zonkey.sampling import NOISE_SCHEDULES, SAMPLERS

GAP = "[GAP]"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a folder written by save_pretrained (or a Hub repo id)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--prompt", help="continue this text")
    mode.add_argument("--infill", help=f"fill the gap marked {GAP} in this text")
    mode.add_argument("--reconstruct", help="encode this text, noise its latents to --noise_level, denoise")
    parser.add_argument("--noise_level", type=float, default=0.0, help="t for --reconstruct (0: clean)")
    parser.add_argument("--level", type=int, default=None,
                        help="level whose latents --reconstruct noises (default: top)")
    parser.add_argument("--num_samples", type=int, default=4)
    parser.add_argument("--num_steps", "--max_denoising_steps", type=int, default=None,
                        help="denoising steps (default: the folder's generation config)")
    parser.add_argument("--sampler", choices=SAMPLERS, default=None)
    parser.add_argument("--noise_schedule", choices=NOISE_SCHEDULES, default=None)
    parser.add_argument("--gap_segments", type=int, default=None, help="top-level positions of an --infill gap")
    parser.add_argument("--max_new_tokens", "--max_new_bytes", type=int, default=None,
                        help="new bytes per sample (windows are written until there are this many; an --infill "
                             "then joins them to the text after the gap); --reconstruct: a cap on the bytes. "
                             "Default: one window. (--max_new_bytes: its old name)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show_segmentation", action="store_true")
    parser.add_argument("--progress", action="store_true", help="a progress bar over the denoising steps")
    parser.add_argument("--stream", action="store_true",
                        help="print each sample as it is written: every denoising step's draft (in yellow, "
                             "overwritten), then the final text (transformers' TextDiffusionStreamer)")
    return parser.parse_args(argv)


def generate(model, tokenizer, args: argparse.Namespace) -> list[str]:
    """The samples' texts; with --stream, each is printed as it forms (one generate() call per sample, sample i
    seeded seed + i: the same text as in one batch)."""
    options = {name: value for name, value in (
        ("num_steps", args.num_steps), ("sampler", args.sampler), ("noise_schedule", args.noise_schedule),
        ("gap_segments", args.gap_segments), ("max_new_tokens", args.max_new_tokens)) if value is not None}
    options.update(seed=args.seed, num_return_sequences=args.num_samples, progress_bar=args.progress)
    inputs = inputs_for(model, tokenizer, args, options)
    if not args.stream:
        return tokenizer.batch_decode(model.generate(**inputs, **options), skip_special_tokens=True)
    texts = []
    for index in range(args.num_samples):
        print(f"--- sample {index}", flush=True)
        streamer = TextDiffusionStreamer(tokenizer, skip_special_tokens=True)
        ids = model.generate(**inputs, **{**options, "seed": args.seed + index, "num_return_sequences": 1},
                             streamer=streamer)
        texts.append(tokenizer.decode(ids[0], skip_special_tokens=True))
    return texts


def inputs_for(model, tokenizer, args: argparse.Namespace, options: dict) -> dict:
    """generate()'s text inputs for the mode the arguments ask for (and its reconstruction options)."""
    if args.infill is not None:
        if args.infill.count(GAP) != 1:
            raise ValueError(f"--infill needs exactly one {GAP} marker, found {args.infill.count(GAP)}.")
        before, after = args.infill.split(GAP)
        if not before or not after:
            raise ValueError(f"--infill needs text on both sides of {GAP} (use --prompt to continue a text).")
        suffix = tokenizer([after], return_tensors="pt").to(model.device)
        return dict(**tokenizer([before], return_tensors="pt").to(model.device), suffix_ids=suffix["input_ids"],
                    suffix_attention_mask=suffix["attention_mask"])
    if args.prompt is not None or args.reconstruct is not None:
        text = args.prompt if args.prompt is not None else args.reconstruct
        if not text:
            raise ValueError("the text is empty: give at least one character (or no text for samples from noise).")
        if args.reconstruct is not None:
            options.update(noise_level=args.noise_level, level=args.level)
        return dict(tokenizer([text], return_tensors="pt").to(model.device))
    return {}


def main(argv=None) -> int:
    args = parse_args(argv)
    local = Path(args.model).expanduser()
    if not local.is_dir() and (args.model.startswith((".", "/", "~"))
                               or local.parent.is_dir() and local.parent != Path(".")):
        print(f"error: no model folder {args.model!r} (give a folder written by save_pretrained, e.g. the training "
              "script's --output_dir, or a Hub repo id)", file=sys.stderr)
        return 1
    try:
        model = AutoModel.from_pretrained(args.model).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    except OSError as error:
        print(f"error: cannot load a Zonkey model from {args.model!r}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        texts = generate(model, tokenizer, args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    for index, text in enumerate(texts):
        if not args.stream:  # (streamed samples are on the screen already)
            print(f"--- sample {index} ({len(text.encode('utf-8'))} bytes)")
            print(text)
        if args.show_segmentation and text:
            data = text.encode("utf-8")[: model.config.document_length[0]]
            seg = segment_text(model, tokenizer, data.decode("utf-8", errors="ignore"))
            print(mark_boundaries(seg.data, seg.starts))
    print(f"({len(texts)} sample(s) in {seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
