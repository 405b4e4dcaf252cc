"""Look inside a Zonkey: where each level's segments start in a text, printed with boundary marks.

    seg = segment_text(model, tokenizer, "Some text.")   # seg.starts[l]: byte positions of level-l starts
    print(mark_boundaries(seg.data, seg.starts))           # "|Some |text." with "‖" at level-1 starts
"""

from dataclasses import dataclass

import torch

from ..level import ZonkeyLevelOutput


def level_starts(outputs: tuple[ZonkeyLevelOutput, ...], row: int) -> list[list[int]]:
    """Byte positions where each level's segments start, for one input row (level l >= 1 is mapped down
    through the starts of the segments below)."""
    starts = [outputs[0].segments.start[outputs[0].segments.document == row].tolist()]
    rows = [row]
    for level in range(1, len(outputs)):
        children = [r for r in range(len(outputs[level].parent)) if int(outputs[level].parent[r]) in rows]
        positions, offset = [], 0
        for child in children:
            segments = outputs[level].segments
            local = segments.start[segments.document == child].tolist()
            positions += [starts[-1][offset + s] for s in local]
            offset += int(outputs[level].valid[child].sum())
        starts.append(positions)
        rows = children
    return starts


def level_probabilities(outputs: tuple[ZonkeyLevelOutput, ...], row: int, starts: list[list[int]],
                        ) -> list[tuple[list[int], list[float]]]:
    """p_bos of every level for one input row, placed at byte positions: level 0 at each byte, level l >= 1 at
    the first byte of each level-(l - 1) segment (the positions level l reads). -> [(positions, p_bos)] per level."""
    result, rows = [], [row]
    for level, output in enumerate(outputs):
        if level > 0:
            rows = [r for r in range(len(output.parent)) if int(output.parent[r]) in rows]
        p = torch.cat([output.bos_probs[r][output.valid[r]] for r in rows]).float().cpu().tolist()
        positions = list(range(len(p))) if level == 0 else starts[level - 1][: len(p)]
        result.append((positions, p))
    return result


@dataclass
class TextSegmentation:
    data: bytes  # the text's UTF-8 bytes
    starts: list[list[int]]  # per level: byte positions where its segments start
    probabilities: list[tuple[list[int], list[float]]]  # per level: (byte positions, p_bos)


def segment_text(model, tokenizer, text: str) -> TextSegmentation:
    """Encode one text (at most document_length[0] bytes) in eval mode and read its segmentation."""
    batch = tokenizer([text], return_tensors="pt").to(model.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(**batch).levels
    finally:
        model.train(was_training)
    starts = level_starts(outputs, 0)
    return TextSegmentation(text.encode("utf-8"), starts, level_probabilities(outputs, 0, starts))


def mark_boundaries(data: bytes, starts: list[list[int]]) -> str:
    """The text with "|" before each level-0 segment start and "‖" before each level-1 start."""
    out = []
    for i in range(len(data)):
        if len(starts) > 1 and i in starts[1]:
            out.append("‖")
        elif i in starts[0]:
            out.append("|")
        out.append(data[i : i + 1].decode("utf-8", errors="replace"))
    return "".join(out)
