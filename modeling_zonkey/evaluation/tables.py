"""Markdown tables of an evaluation (the dict of evaluation.evaluate_model)."""


def _f(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def _inner(m: dict) -> str:
    return f"{m['f1_inner']:.3f} ({m['f1_inner_chance']:.3f})" if "f1_inner" in m else "-"  # older evaluations


def _saturated(m: dict) -> str:
    return f"{m['p_bos_saturated']:.1%}" if "p_bos_saturated" in m else "-"  # evaluations older than the column


def results_markdown(results: dict) -> str:
    lines = [f"Held-out text: {results['documents']} documents, {results['bytes']:,} bytes.", "",
             "**Segmentation** (boundaries against word starts at level 0, sentence starts above)", "",
             "| level | reference | P | R | F1 | F1 +-1 | F1 inner (chance) | AUPRC | OS | R-value | "
             "bytes/segment (CV) | H(p_bos) bits | p_bos in (0.1, 0.9) | p_bos saturated |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in results["segmentation"].items():
        lines.append(f"| {name[5:]} | {m['reference']} | {_f(m['precision'])} | {_f(m['recall'])} | {_f(m['f1'])} | "
                     f"{_f(m['f1_pm1'])} | {_inner(m)} | {_f(m['auprc'])} | {_f(m['over_segmentation'], 2)} | "
                     f"{_f(m['r_value'])} | {m['bytes_per_segment']:.1f} ({m['bytes_per_segment_cv']:.2f}) | "
                     f"{_f(m['p_bos_entropy_bits'])} | {m['p_bos_share_uncertain']:.1%} | {_saturated(m)} |")
    lines += ["", "F1 inner: without each document's first byte (a forced BOS at every level, and a sentence start); "
              "chance: as many boundaries placed at random among the positions the level can cut at.",
              "", "**Reconstruction** (encode -> noise the latents of a level to t -> denoise with the sampler -> "
              "decode; t = 0 uses the encoder's segmentation, t > 0 infers the offsets, so read the CER there: byte "
              "accuracy is position-wise and one misplaced cut shifts every byte after it)", "",
              "| t | from level | byte accuracy | CER | exact segments |", "|---:|---:|---:|---:|---:|"]
    for t, per_level in results["reconstruction"].items():
        for name, m in per_level.items():
            lines.append(f"| {t[2:]} | {name[5:]} | {m['byte_accuracy']:.1%} | {_f(m['cer'])} | "
                         f"{m['exact_segment_match']:.1%} |")
    if results.get("denoiser"):
        lines += ["", "**Denoiser against noise level** (one decode of the latents of a level noised to t, no sampler: "
                  "byte accuracy at level 0 / the share a byte drawn from the decoder's distribution gets right, "
                  "cos(X_hat, X) above; pairwise = mean cosine between decoded vectors, "
                  "1.000 when the decoder emits one vector for everything; the clean targets' own value in brackets)",
                  "",
                  "| t | " + " | ".join(f"level {name[5:]} {'accuracy' if name == 'level0' else 'cosine'} | "
                                        f"level {name[5:]} pairwise" for name in results["denoiser"]) + " |",
                  "|---:|" + "---:|---:|" * len(results["denoiser"])]
        for t in next(iter(results["denoiser"].values())):
            cells = []
            for name, per_t in results["denoiser"].items():
                m = per_t[t]
                score = f"{m['accuracy']:.1%}" if "accuracy" in m else f"{m['cosine']:.3f}"
                if "true_byte_probability" in m:  # evaluations written before it was measured have none
                    score += f" / {m['true_byte_probability']:.1%}"
                cells += [score, f"{m['pairwise_cosine']:.3f} ({m['target_pairwise_cosine']:.3f})"]
            lines.append(f"| {t[2:]} | " + " | ".join(cells) + " |")
    lines += hierarchy_markdown(results.get("hierarchy", {}))
    lines += ["", f"Stitcher overlap disagreement (level 0, t = 0): "
              f"{results['stitcher']['overlap_disagreement']:.1%} of overlapping positions."]
    for name, m in results["stitcher"].get("inferred_offsets", {}).items():
        lines.append(f"Reconstruction at t = 0 from level {name[5:]} with the stitcher's inferred offsets: "
                     f"byte accuracy {m['byte_accuracy']:.1%}, CER {m['cer']:.3f}.")
    if results.get("generation"):
        lines += [""] + generation_markdown(results["generation"], results.get("baseline_generation"))
    return "\n".join(lines) + "\n"


def _training(baseline: dict) -> str:
    """How long the baseline was trained, when its evaluation recorded it (examples/evaluate.py reads its folder's
    train_results.json)."""
    record = baseline.get("training")
    if not record or record.get("minutes") is None:
        return ""
    bits = record.get("bits_per_byte")
    return (f" ({record['minutes']:.1f} minutes of training, {record['steps']:,} steps"
            + (f", {bits:.2f} bits per byte on validation" if bits is not None else "") + ")")


def _recorded(baseline: dict) -> str:
    """Where a reused baseline column was judged (examples/evaluate.py --baseline_results)."""
    model = baseline.get("recorded_with")
    return ", judged in an earlier evaluation" + (f" (of {model})" if model else "")


def generation_markdown(generation: dict, baseline: dict | None = None) -> list[str]:
    """The `generation` section (suite.generation_metrics), with the baseline's column when there is one, as
    Markdown lines."""
    length = generation.get("max_new_tokens")
    lines = [f"**Generation** ({generation['samples_per_seed']} samples x {len(generation['seeds'])} seeds, "
             + (f"{length} new bytes each, " if length else "")
             + f"{generation['num_steps']} steps; real = held-out text cut to the same byte lengths; mean +- std "
             "over seeds" + (f"; baseline = the byte-level GPT-2{_training(baseline)}, samples as long as Zonkey's"
                             + (_recorded(baseline) if baseline.get("recorded_in") else "")
                             if baseline else "")
             + ")", "", "| metric | Zonkey samples | real text |" + (" baseline samples |" if baseline else ""),
             "|---|---:|---:|" + ("---:|" if baseline else "")]
    for key in generation["samples"]:
        # a baseline column reused from an older evaluation may lack a metric measured since
        cells = [generation["samples"][key], generation["real"][key]] + ([baseline["samples"].get(key)] if baseline
                                                                          else [])
        lines.append(f"| {key} | " + " | ".join("not measured" if c is None else f"{c['mean']:.3f} +- {c['std']:.3f}"
                                                for c in cells) + " |")
    lines += ["", "Zonkey samples:", ""] + [f"- `{e!r}`" for e in generation["examples"]]
    if baseline:
        lines += ["", "Baseline samples:", ""] + [f"- `{e!r}`" for e in baseline["examples"]]
    return lines


def hierarchy_markdown(hierarchy: dict) -> list[str]:
    """The `hierarchy` section (evaluation/hierarchy.py) as Markdown lines (none for older evaluations)."""
    lines = []
    for name, m in hierarchy.items():
        level, below = int(name[5:]), int(name[5:]) - 1
        by_position = m["decoded_cosine_by_position"]
        lines += ["", f"**From level {level} down** (where the bytes are lost): level {level}'s decoded vectors at "
                  f"t = 0 reach cos {m['decoded_cosine']:.3f} with their targets ({m['share_above_0.9']:.0%} of a "
                  f"segment's own positions above 0.9, {m['share_above_0.95']:.0%} above 0.95; after the stitcher "
                  f"{m['stitched_cosine']:.3f}); by window position: "
                  + ", ".join(f"{c:.2f}" for c in by_position) + ".", "",
                  f"| level {below} given its own latents turned to cos | byte accuracy / CER, decoded at t = 0 | "
                  "at t = 1 - cos^2 |", "|---:|---:|---:|"]
        for cosine, kinds in m["sensitivity"].items():
            zero, matched = kinds["t=0"], kinds["t=1-c^2"]
            lines.append(f"| {cosine[4:]} | {zero['byte_accuracy']:.1%} / {_f(zero['cer'])} | "
                         f"{matched['byte_accuracy']:.1%} / {_f(matched['cer'])} |")
        lines += ["", f"| handoff t (levels below decode level {level}'s output at) | encoder's offsets | "
                  f"inferred at level {level} | inferred everywhere |", "|---:|---:|---:|---:|"]
        for t, offsets in m["top"].items():
            lines.append(f"| {t[2:]} | " + " | ".join(f"{o['byte_accuracy']:.1%} / {_f(o['cer'])}"
                                                  for o in offsets.values()) + " |")
    return lines


def level0_errors_markdown(errors: dict) -> list[str]:
    """evaluation/hierarchy.py's `level0_errors` as Markdown lines."""
    total = sum(m["bytes"] for m in errors["by_length"].values())
    lines = ["", "**Level 0's own errors** (t = 0, each byte in the segment that owns it)", "",
             "| segment length (bytes) | share of bytes | error rate | share of the errors |", "|---:|---:|---:|---:|"]
    for length, m in errors["by_length"].items():
        lines.append(f"| {length} | {m['bytes'] / total:.1%} | {m['error_rate']:.1%} | {m['share_of_errors']:.1%} |")
    lines += ["", "Error rate by window position: " + ", ".join(f"{r:.1%}" for r in errors["error_rate_by_position"])
              + "."]
    return lines
