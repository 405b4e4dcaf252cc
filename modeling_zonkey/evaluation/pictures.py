"""Pictures: a text with its p_bos and chosen boundaries per level (PNG and a self-contained HTML view), and
training curves read from the TensorBoard logs the training script writes (--with_tracking).

Needs matplotlib (`pip install zonkey[eval]`); the HTML view needs nothing.
"""

import html
from pathlib import Path

from .inspection import TextSegmentation

LEVEL_COLOURS = ("tab:blue", "tab:red", "tab:green")


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend; a clear error when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError as error:
        raise ValueError("pictures need matplotlib: pip install -e \".[eval]\" (or pip install matplotlib).") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: str | Path, dpi: int) -> Path:
    """Lay out, write as PNG and close a figure."""
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def _characters(data: bytes) -> list[tuple[int, str]]:
    """(byte position, character) for each character of the text (invalid bytes shown as U+FFFD)."""
    out, i = [], 0
    while i < len(data):
        for size in (1, 2, 3, 4):
            try:
                out.append((i, data[i : i + size].decode("utf-8")))
                i += size
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append((i, "\ufffd"))
            i += 1
    return out


def plot_segmentation(segmentation: TextSegmentation, path: str | Path, title: str = "", width: int = 64) -> Path:
    """PNG: the text in lines of `width` bytes; under each line, one bar chart per level with p_bos at the byte
    positions that level reads, and its chosen segment starts as vertical lines."""
    plt = _pyplot()
    data, levels = segmentation.data, len(segmentation.starts)
    lines = max(1, -(-len(data) // width))
    figure, axes = plt.subplots(lines * levels, 1, figsize=(width * 0.18, 1.3 * lines * levels), squeeze=False)
    characters = dict(_characters(data))
    for line in range(lines):
        lo, hi = line * width, min(len(data), (line + 1) * width)
        for level in range(levels):
            ax = axes[line * levels + level, 0]
            positions, probs = segmentation.probabilities[level]
            shown = [(x - lo, p) for x, p in zip(positions, probs) if lo <= x < hi]
            ax.bar([x for x, _ in shown], [p for _, p in shown], width=0.8, color=LEVEL_COLOURS[level % 3], alpha=0.6)
            for start in segmentation.starts[level]:
                if lo <= start < hi:
                    ax.axvline(start - lo - 0.5, color=LEVEL_COLOURS[level % 3], linewidth=1.5)
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(0, 1.05)
            ax.set_yticks([0, 1])
            ax.set_ylabel(f"p_bos L{level}", fontsize=7)
            ax.set_xticks(range(hi - lo))
            labels = [characters.get(lo + i, "") for i in range(hi - lo)]
            ax.set_xticklabels(["␣" if c == " " else c for c in labels] if level == levels - 1 else [], fontsize=7)
            ax.tick_params(axis="x", length=0)
    if title:
        axes[0, 0].set_title(title, fontsize=9, loc="left")
    return _save(plt, figure, path, dpi=110)


def segmentation_html(segmentation: TextSegmentation, title: str = "") -> str:
    """A self-contained HTML page: each character shaded by its level-0 p_bos (hover shows every level's p);
    a thin bar before each level-0 segment start, a thick red bar before each level-1 start."""
    probs = [dict(zip(*level)) for level in segmentation.probabilities]
    starts = [set(s) for s in segmentation.starts]
    spans = []
    for position, char in _characters(segmentation.data):
        p0 = probs[0].get(position, 0.0)
        tip = ", ".join(f"L{level} p_bos {p[position]:.2f}" for level, p in enumerate(probs) if position in p)
        css = f"background: rgba(31, 119, 180, {0.15 + 0.6 * p0:.2f});"
        if len(starts) > 1 and position in starts[1]:
            css += " border-left: 3px solid #d62728; margin-left: 3px;"
        elif position in starts[0]:
            css += " border-left: 1px solid #1f77b4; margin-left: 2px;"
        text = "&nbsp;" if char == " " else "<br>" if char == "\n" else html.escape(char)
        spans.append(f'<span style="{css}" title="{html.escape(tip)}">{text}</span>')
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Zonkey segmentation</title></head>"
            "<body style='font-family: monospace; font-size: 15px; line-height: 2; max-width: 60em'>"
            f"<h3>{html.escape(title)}</h3><p>Shade: level-0 p_bos. Thin blue bar: level-0 segment start. Thick red "
            f"bar: level-1 segment start. Hover a character for its p_bos.</p><p>{''.join(spans)}</p></body></html>\n")


def read_scalar_events(run_dir: str | Path) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar logged to TensorBoard under run_dir: tag -> [(step, wall time in s, value)], steps ascending."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict[int, tuple[float, float]]] = {}
    for events in sorted(Path(run_dir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: (e.wall_time, e.value) for e in accumulator.Scalars(tag)})
    if not scalars:
        raise ValueError(f"no TensorBoard logs under {run_dir}: train with --with_tracking to record the curves.")
    return {tag: [(step, *values[step]) for step in sorted(values)] for tag, values in scalars.items()}


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar logged to TensorBoard under run_dir: tag -> [(step, value)], steps ascending."""
    return {tag: [(step, value) for step, _, value in events] for tag, events in read_scalar_events(run_dir).items()}


def plot_training_curves(scalars: dict[str, list[tuple[int, float]]], path: str | Path, smooth: int = 25) -> Path:
    """PNG with five panels: training loss (moving average), validation loss, byte accuracy, boundary scores, and
    the decoder at noise level t = 0.5 (one-decode accuracy and pairwise cosine of decoded vectors: a collapse)."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 5, figsize=(21, 3.4))
    panels = [("training loss", ["train/loss"]), ("validation loss", ["val/loss"]),
              ("byte accuracy at t = 0", ["val/byte_accuracy_level0", "val/byte_accuracy_top"]),
              ("level-0 boundaries vs word starts",
               ["val/boundary_precision", "val/boundary_recall", "val/boundary_f1"]),
              ("decoder at t = 0.5", ["val/level0/accuracy_t0.5", "val/level0/pairwise_cosine_t0.5",
                                      "val/level1/cosine_t0.5", "val/level1/pairwise_cosine_t0.5"])]
    for ax, (title, tags) in zip(axes, panels):
        for tag in tags:
            if tag not in scalars:
                continue
            steps, values = zip(*scalars[tag])
            if tag == "train/loss" and len(values) > smooth:
                values = [sum(values[max(0, i - smooth + 1) : i + 1]) / len(values[max(0, i - smooth + 1) : i + 1])
                          for i in range(len(values))]
            ax.plot(steps, values, label=tag.removeprefix("val/"), marker="o" if tag.startswith("val/") else None,
                    markersize=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(tags) > 1 and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(plt, figure, path, dpi=100)


def plot_noise_curves(results: dict, path: str | Path) -> Path:
    """PNG with two panels from an evaluation dict: reconstruction against noise level t (the sampler's byte accuracy
    per level, one decode's byte accuracy / cosine) and the mean pairwise cosine of decoded vectors against t."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    for level in sorted({name for per_t in results["reconstruction"].values() for name in per_t}):
        points = sorted((float(t[2:]), per_t[level]["byte_accuracy"]) for t, per_t in results["reconstruction"].items())
        left.plot(*zip(*points), marker="o", label=f"bytes via sampler, from {level}")
    for level, per_t in results.get("denoiser", {}).items():
        key = "accuracy" if level == "level0" else "cosine"
        points = sorted((float(t[2:]), values[key]) for t, values in per_t.items())
        left.plot(*zip(*points), marker="s", linestyle="--", label=f"one decode, {level} ({key})")
        diversity = sorted((float(t[2:]), values["pairwise_cosine"]) for t, values in per_t.items())
        line, = right.plot(*zip(*diversity), marker="s", label=f"{level} decoded")
        target = sorted((float(t[2:]), values["target_pairwise_cosine"]) for t, values in per_t.items())
        right.plot(*zip(*target), linestyle=":", color=line.get_color(), label=f"{level} clean targets")
    left.set_title("reconstruction against noise level", fontsize=10)
    right.set_title("mean pairwise cosine of decoded vectors (1 = collapsed)", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("noise level t")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(plt, figure, path, dpi=100)
