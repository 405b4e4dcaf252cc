"""Look inside a Zonkey: where each level's segments start in a text, printed with boundary marks.

    data, starts = segment_text(model, tokenizer, "Some text.")   # starts[l]: byte positions of level-l starts
    print(mark_boundaries(data, starts))                          # "|Some |text." with "‖" at level-1 starts
"""

import torch

from .level import ZonkeyLevelOutput


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


def segment_text(model, tokenizer, text: str) -> tuple[bytes, list[list[int]]]:
    """Encode one text (at most document_length[0] bytes) in eval mode -> (its UTF-8 bytes, level_starts)."""
    batch = tokenizer([text], return_tensors="pt").to(model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = model(**batch).levels
    model.train(was_training)
    return text.encode("utf-8"), level_starts(outputs, 0)


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
