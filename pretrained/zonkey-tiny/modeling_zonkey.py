"""ZonkeyModel: the hierarchical diffusion language model as a transformers PreTrainedModel.

Bytes are embedded on the sphere of radius nu(d_0) and go through `config.num_levels` levels; level l + 1
reads the latents of level l (chunked into rows of at most `document_length[l + 1]` slots). `forward`
encodes (and, with `return_loss=True`, computes every named loss term); `decode_latents` maps latents
back down through the decoders and stitchers to bytes.
"""

import importlib
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .compressor import Compressor, MaskedVectorHead
from .configuration_zonkey import ZonkeyConfig
from .decoder import SelfCondition, TimeEmbedding
from .generation_zonkey import ZonkeyGenerationConfig, ZonkeyGenerationMixin
from .level import LevelTargets, SegmentBatch, ZonkeyLevel, ZonkeyLevelOutput, chunk_documents, owned_slots
from .sphere import to_sphere
from .stitcher import Stitcher
from .tokenization_zonkey import NUM_BYTES, ZonkeyTokenizer

# the dtypes input_ids may have (converted to torch.long): ZonkeyTokenizer's long ids, or raw bytes as uint8
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class ZonkeyLevels(ModelOutput):
    """The per-level outputs of a forward pass, read as a tuple: levels[l] is level l's ZonkeyLevelOutput, and
    len(), iteration and slices work as for a tuple.

    A ModelOutput rather than a tuple for transformers' pipelines: with batch_size > 1 they split every item of a
    batched output by its first dimension, which the per-level tuple does not have (its first dimension is the
    level), and they leave out an item that is a ModelOutput whose first value is not a tensor.
    """

    outputs: tuple[ZonkeyLevelOutput, ...] | None = None

    def __getitem__(self, key):
        return super().__getitem__(key) if isinstance(key, str) else self.outputs[key]

    def __len__(self) -> int:
        return len(self.outputs)

    def __iter__(self):
        return iter(self.outputs)


@dataclass
class LevelRead:
    """What a level read in a forward pass, for the handoff term of the level above: x (B, N, d), valid (B, N), its
    targets, and slots (R, N_{l+1}): the index of the latent of this level that each input slot of the level above
    holds (0 where none)."""

    x: torch.Tensor
    valid: torch.Tensor
    targets: LevelTargets | None
    slots: torch.Tensor | None = None


@dataclass
class ZonkeyModelOutput(ModelOutput):
    """
    loss: the weighted sum of every loss term (with `return_loss=True`).
    loss_terms: every named term, unweighted, as "level{l}/{name}" (and the weighted "loss/level{l}" per level).
    segment_latents: (B, S_0, C_0 d_0) the level-0 segment latents of each input row: one vector per segment the
        splitter found (word-like), in text order, on the sphere of radius nu(C_0 d_0); rows with fewer segments are
        padded with zero vectors (`levels[0].latent_mask` marks the real ones). The same tensor as
        `levels[0].latents`, given first (after `loss`) so that `output[0]` without a loss is a (batch, length,
        hidden) tensor, as transformers' feature-extraction pipeline reads it.
    levels: one `ZonkeyLevelOutput` per level, with `bos_probs` (B_l, N_l), `boundaries`, `latents` (a
        `ZonkeyLevels`, read as a tuple).
    """

    loss: torch.Tensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None
    segment_latents: torch.Tensor | None = None
    levels: ZonkeyLevels | None = None


class ZonkeyPreTrainedModel(PreTrainedModel):
    config_class = ZonkeyConfig
    base_model_prefix = "zonkey"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PABlock", "CausalBlock"]
    _supports_sdpa = True

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, revision: str | None = None, create_pr: bool = False,
                    **kwargs) -> str:
        """`PreTrainedModel.push_to_hub`, but with Zonkey's model card (the repository's model_card.md rendered,
        as `examples/push_to_hub.py` sends it) and the byte tokenizer, instead of transformers' generic card:
        the weights, config and remote code in one commit, the card in a second. Without the installed package
        (remote code only) it falls back to transformers' push. Returns the last commit's URL."""
        try:
            hub = importlib.import_module("modeling_zonkey.hub.push")
        except ImportError:
            return super().push_to_hub(repo_id, commit_message=commit_message, private=private, token=token,
                                       revision=revision, create_pr=create_pr, **kwargs)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, **{k: v for k, v in kwargs.items() if k == "max_shard_size"})
            ZonkeyTokenizer(model_max_length=self.config.document_length[0]).save_pretrained(folder)
            result = hub.push_folder(folder, repo_id, token=token, private=bool(private), revision=revision,
                                     commit_message=commit_message, create_pr=create_pr)
        return result.commit_urls[-1]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            fan_in = module.weight[0].numel()
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_factor * fan_in**-0.5)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, Compressor):
            init.normal_(module.cls_vectors, mean=0.0, std=1.0)
        elif isinstance(module, MaskedVectorHead):
            init.normal_(module.mask_vector, mean=0.0, std=1.0)
        elif isinstance(module, TimeEmbedding) and module.kind == "interpolate":
            init.normal_(module.clean, mean=0.0, std=0.5)
            init.normal_(module.noisy, mean=0.0, std=0.5)
        elif isinstance(module, SelfCondition):  # starts as no input: a checkpoint without it loads unchanged
            init.zeros_(module.weight)
        elif isinstance(module, Stitcher):
            init.constant_(module.alpha, 1.0)
            init.constant_(module.rho, 0.1)


class ZonkeyModel(ZonkeyPreTrainedModel, ZonkeyGenerationMixin):
    generation_config_class = ZonkeyGenerationConfig

    def __init__(self, config: ZonkeyConfig):
        super().__init__(config)
        if config._attn_implementation not in (None, "sdpa"):
            raise ValueError(f"attn_implementation={config._attn_implementation!r} is not available: Zonkey's "
                             "Probabilistic Attention adds a float existence bias through torch's "
                             "scaled_dot_product_attention; use attn_implementation='sdpa' (the default).")
        self.byte_embeddings = nn.Embedding(config.vocab_size, config.hidden_size[0])
        self.levels = nn.ModuleList(ZonkeyLevel(config, level) for level in range(config.num_levels))
        self.frozen_levels: frozenset[int] = frozenset()
        self.frozen_splitters: frozenset[int] = frozenset()
        self.post_init()

    def _level_set(self, method: str, levels) -> frozenset[int]:
        """`levels` as a set, or a ValueError naming `method` when one is not a level index of this model."""
        levels = frozenset(levels)
        if any(not isinstance(level, int) or not 0 <= level < self.config.num_levels for level in levels):
            raise ValueError(f"{method}: levels must lie in [0, {self.config.num_levels - 1}], got "
                             f"{sorted(levels, key=str)}.")
        return levels

    def freeze_levels(self, levels) -> None:
        """Train only the other levels: the parameters of `levels` (level 0's include the byte embeddings) stop
        requiring gradients, and those levels compute no loss terms. Levels 0..k that are all frozen run without
        autograd (nothing below them can learn through them), so training level 1 on a frozen level 0 costs about
        what level 1 costs. A training-time choice (not saved in the config); `freeze_levels(())` undoes it."""
        levels = self._level_set("freeze_levels", levels)
        if len(levels) == self.config.num_levels:
            raise ValueError("freeze_levels: every level is frozen, nothing would train; leave at least one level.")
        self.frozen_levels = levels
        self.byte_embeddings.requires_grad_(0 not in levels)
        for index, level in enumerate(self.levels):
            level.requires_grad_(index not in levels)
        self.freeze_splitters(self.frozen_splitters)

    def freeze_splitters(self, levels) -> None:
        """Keep the segmentation of `levels` fixed while the rest trains: their Segment Splitters' parameters stop
        requiring gradients and their p_bos is computed without autograd, so no loss moves it (neither through the
        splitter's weights nor back through its input). Boundaries are still sampled in training mode. Outlasts
        `freeze_levels(())`; a training-time choice (not saved in the config); `freeze_splitters(())` undoes it."""
        levels = self._level_set("freeze_splitters", levels)
        self.frozen_splitters = levels
        for index, level in enumerate(self.levels):
            level.splitter_frozen = index in levels
            level.splitter.requires_grad_(index not in levels and index not in self.frozen_levels)

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """The byte vocabulary is fixed (256 bytes + pad): only a no-op resize is accepted."""
        if (new_num_tokens is not None and new_num_tokens != self.config.vocab_size) or pad_to_multiple_of:
            raise ValueError(f"Zonkey's vocabulary is fixed at {self.config.vocab_size} ids (256 bytes + pad) and "
                             f"cannot be resized to {new_num_tokens} (pad_to_multiple_of={pad_to_multiple_of}): any "
                             "text is already encoded as its UTF-8 bytes.")
        return self.get_input_embeddings()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.byte_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.byte_embeddings = value

    def check_ids(self, ids: torch.Tensor, mask: torch.Tensor | None, name: str = "input_ids",
                  mask_name: str = "attention_mask") -> tuple[torch.Tensor, torch.Tensor]:
        """Validate (B, N) byte ids and their optional 0/1 mask (forward and generate share this); return the ids
        as torch.long (uint8 bytes and other integer dtypes are accepted) and the (B, N) bool mask of real bytes
        (without a mask: the ids that are not pad). A TypeError or ValueError names the problem and the fix."""
        if not isinstance(ids, torch.Tensor) or ids.dtype not in INTEGER_DTYPES:
            got = f"dtype {ids.dtype}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise TypeError(f"{name} must be a tensor of integer byte ids 0..{self.config.vocab_size - 1} (torch.long "
                            f"from ZonkeyTokenizer(..., return_tensors='pt'), or torch.uint8 bytes), got {got}.")
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, length), got {tuple(ids.shape)}.")
        ids = ids.long()
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"{name} must lie in [0, {self.config.vocab_size}); use ZonkeyTokenizer.")
        if mask is None:
            return ids, ids != self.config.pad_token_id
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{mask_name} must be a tensor of 0 and 1 shaped like {name}, got {type(mask).__name__}.")
        if mask.shape != ids.shape:
            raise ValueError(f"{mask_name} has shape {tuple(mask.shape)} but {name} has shape {tuple(ids.shape)}: "
                             "give one mask value per id (1: a byte, 0: padding), as ZonkeyTokenizer returns.")
        other = (mask != 0) & (mask != 1)
        if other.any():
            raise ValueError(f"{mask_name} must hold only 0 and 1 (1: a byte, 0: padding), got "
                             f"{mask[other][0].item()!r}: Zonkey has no fractional masking.")
        if (ids[mask.bool()] == self.config.pad_token_id).any():  # (the loss's cross-entropy failed on it)
            raise ValueError(f"{name} holds the pad id {self.config.pad_token_id} where {mask_name} is 1: a byte "
                             "must be 0..255; mark padding with 0 in the mask, as ZonkeyTokenizer does.")
        return ids, mask.bool()

    def check_inputs(self, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`check_ids`, and the documents forward takes: not empty, right-padded, at most document_length[0]
        bytes. Returns the long ids and the (B, N) bool mask of real bytes."""
        input_ids, mask = self.check_ids(input_ids, attention_mask)
        limit = self.config.document_length[0]
        if input_ids.shape[1] > limit:
            raise ValueError(f"input of {input_ids.shape[1]} bytes exceeds document_length[0] = {limit}: split the "
                             "text into documents of at most that many bytes (the training data loader does this).")
        if input_ids.shape[0] == 0:
            raise ValueError(f"input_ids has no rows (shape {tuple(input_ids.shape)}): give at least one document.")
        lengths = mask.sum(1)
        if input_ids.shape[1] == 0 or (lengths == 0).any():
            rows = [] if input_ids.shape[1] == 0 else (lengths == 0).nonzero().flatten().tolist()
            raise ValueError(f"empty document(s) in the batch (rows {rows or 'all'}): Zonkey needs at least one byte "
                             "per text.")
        if not torch.equal(mask, torch.arange(input_ids.shape[1], device=mask.device) < lengths[:, None]):
            raise ValueError("attention_mask must be right-padded (ones, then zeros); ZonkeyTokenizer pads on the "
                             "right.")
        return input_ids, mask

    def embed_bytes(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) ids -> (B, N, d_0) byte vectors on the sphere of radius nu(d_0)."""
        return to_sphere(self.byte_embeddings(input_ids))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_loss: bool = False, labels: torch.Tensor | None = None,
                return_dict: bool | None = None) -> ZonkeyModelOutput | tuple:
        """input_ids (B, N) byte ids (integers 0..256: torch.long or uint8; N <= document_length[0]), attention_mask
        (B, N) of 0 and 1, right-padded (default: the ids that are not pad). Bad input raises one clear error.

        Training mode samples boundaries (Bernoulli); eval mode thresholds p_bos. With return_loss, the
        output carries the weighted total `loss` and every term in `loss_terms`.
        labels: what `Trainer` and the language-modeling collators send. Zonkey reconstructs its input, so they
            must be the input_ids (-100 allowed where attention_mask is 0); giving them turns on return_loss.
        return_dict: False returns the output as a tuple (`ModelOutput.to_tuple`). Any other keyword is an error.
        """
        if labels is not None:
            self.check_labels(input_ids, attention_mask, labels)
            return_loss = True
        output = self._forward(input_ids, attention_mask, return_loss)
        return output.to_tuple() if return_dict is False else output

    def check_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor) -> None:
        input_ids, real = self.check_ids(input_ids, attention_mask)
        if (labels.shape != input_ids.shape
                or not torch.equal(torch.where(real, labels, input_ids)[real], input_ids[real])):
            raise ValueError("labels must equal input_ids (Zonkey's loss reconstructs its input; -100 may mark "
                             "padding): use a causal-LM collator such as DataCollatorForLanguageModeling(mlm=False), "
                             "or pass return_loss=True without labels.")

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 return_loss: bool) -> ZonkeyModelOutput:
        input_ids, valid = self.check_inputs(input_ids, attention_mask)
        x = self.embed_bytes(input_ids)
        parent = torch.arange(len(input_ids), device=input_ids.device)
        targets = (LevelTargets(x, input_ids, to_sphere(self.byte_embeddings.weight[:NUM_BYTES])) if return_loss
                   else None)
        outputs, reads = [], []
        for index, level in enumerate(self.levels):
            frozen = index in self.frozen_levels
            with torch.no_grad() if frozen and all(i in self.frozen_levels for i in range(index)) else nullcontext():
                output = level(x, valid, parent, None if frozen else targets)
            outputs.append(output)
            reads.append(LevelRead(x, valid, targets))
            if index + 1 < len(self.levels):
                segments = output.segments
                flat = output.latents[output.latent_mask]
                x, valid, parent = chunk_documents(flat, segments.document, segments.counts,
                                                   self.config.document_length[index + 1])
                targets = LevelTargets(x) if return_loss else None
                if return_loss and self.config.term_weight(index + 1, "handoff") > 0:
                    # for the handoff term: which latent of this level each input slot of the level above holds
                    reads[-1].slots = chunk_documents(torch.arange(len(flat), device=flat.device)[:, None],
                                                      segments.document, segments.counts,
                                                      self.config.document_length[index + 1])[0].squeeze(-1)
        if not return_loss:
            return ZonkeyModelOutput(segment_latents=outputs[0].latents, levels=ZonkeyLevels(tuple(outputs)))
        for index in range(1, len(outputs)):
            if index not in self.frozen_levels and self.config.term_weight(index, "handoff") > 0:
                outputs[index].loss_terms["handoff"] = self.handoff_term(index, outputs, reads[index - 1])
        terms, total = {}, x.new_zeros((), dtype=torch.float32)
        for index, output in enumerate(outputs):
            if index in self.frozen_levels:
                continue
            level_total = sum(self.config.term_weight(index, name) * value for name, value in output.loss_terms.items())
            terms.update({f"level{index}/{name}": value for name, value in output.loss_terms.items()})
            terms[f"loss/level{index}"] = level_total
            total = total + level_total
        return ZonkeyModelOutput(loss=total, loss_terms=terms, segment_latents=outputs[0].latents,
                                 levels=ZonkeyLevels(tuple(outputs)))

    def handoff_term(self, index: int, outputs: list[ZonkeyLevelOutput], below: "LevelRead") -> torch.Tensor:
        """Level `index`'s clean-pass estimates of the level-(index - 1) latents, decoded by level index - 1 at
        `handoff_noise_level` (as the sampler hands them down) and scored by that level's reconstruction loss against
        what those latents encode (bytes at level 0). -> scalar.

        Why: level 1's clean pass can be close to the level-0 latents in cosine (0.99) and still lose a third of the
        bytes, because its residual lies where the level-0 decoder is sensitive (a random error of the same size
        costs under a point); InfoNCE and 1 - cos weigh every direction alike. Each estimate is taken at the
        position its segment owns (`owned_slots`); at most max_decoded_segments[index - 1] of them, at random.
        Ownership is detached in the average, as in the diffusion terms."""
        upper, lower = outputs[index], outputs[index - 1]
        chosen, estimates = upper.decoded
        own, latent_index = owned_slots(upper.segments, chosen, below.slots)
        estimates = estimates[own]
        if len(estimates) == 0:  # no decoded segment owns a position (a batch of empty documents): nothing to score
            return upper.decoded[1].sum() * 0.0
        cap = self.config.max_decoded_segments[index - 1]
        if len(latent_index) > cap:
            keep = torch.randperm(len(latent_index), device=latent_index.device)[:cap]
            latent_index, estimates = latent_index[keep], estimates[keep]
        level = self.levels[index - 1]
        t = torch.full((len(estimates),), float(self.config.handoff_noise_level), device=estimates.device)
        decoded = level.decoder(estimates, t)
        windows = lower.segments.gather(below.x)
        sub = SegmentBatch.take(lower.segments, windows, latent_index, below.targets, below.valid)
        sub = sub.with_fixed_segmentation()
        return sub.average(level.reconstruction(decoded.sequence, sub))

    def compile_components(self, components: tuple[str, ...] | list[str] = ("decoder", "compressor"),
                           dynamic: bool = True) -> None:
        """torch.compile the named components of every level in place (`nn.Module.compile`: parameter names and
        checkpoints are unchanged). Dynamic shapes: the number of segments changes every step. The whole model
        does not compile as one graph (the segmentation makes data-dependent shapes); see docs/research/benchmarks.md
        for what this buys on CPU."""
        for level in self.levels:
            for name in components:
                module = getattr(level, name, None)
                if not isinstance(module, nn.Module):
                    raise ValueError(f"compile_components: level {level.level} has no component {name!r} (known: "
                                     "splitter, compressor, decoder, stitcher, masked_vector at levels >= 1).")
                module.compile(dynamic=dynamic)

    # parameters that get no weight decay: biases and norms, and the learned vectors that are not projections
    # (byte embeddings, CLS and mask vectors, the diffusion-time embedding, the stitcher's alpha and rho)
    NO_WEIGHT_DECAY = ("bias", "norm", "embeddings", "cls_vectors", "mask_vector", "time.", "alpha", "rho")

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Parameter groups for torch.optim (AdamW): `weight_decay` for the projection weights, 0 for the parameters
        whose name contains a NO_WEIGHT_DECAY part. Every parameter is in exactly one group."""
        decay, no_decay = [], []
        for name, parameter in self.named_parameters():
            (no_decay if any(part in name for part in self.NO_WEIGHT_DECAY) else decay).append(parameter)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    @torch.no_grad()
    def decode_latents(self, latents: list[torch.Tensor], level: int | None = None,
                       parents: dict[int, torch.Tensor] | None = None,
                       gaps: dict[int, list[torch.Tensor | None]] | None = None, refine: bool = True,
                       cutoff: float | None = None, handoff_noise_level: float | None = None,
                       estimates: bool = False) -> list[torch.Tensor]:
        """Latents of `level` (default: the top) -> byte ids, at t = 0, through every decoder and stitcher below.

        latents: one (K, C_l d_l) tensor per row of that level.
        parents: parents[l] (R_l,) maps the rows of level l >= 1 to the row below they are chunks of (default:
            one row each). gaps: gaps[l][row] the true offsets (K - 1,) of that row's segments, optionally followed
            by the last segment's length (K,); missing rows or a count that does not match are inferred.
        cutoff: the existence threshold that ends a row's last segment (default: config.existence_threshold).
        handoff_noise_level: the t at which the levels below `level` decode what the level above them decoded
            (default: config.handoff_noise_level); `level` itself decodes its latents at t = 0, unless `estimates`
            says they were themselves decoded by the level above (generation decodes a top-level window's
            positions this way), then at the handoff level too.
        Returns one 1-D tensor of byte ids per level-0 row.
        """
        level = self.config.num_levels - 1 if level is None else level
        handoff = self.config.handoff_noise_level if handoff_noise_level is None else handoff_noise_level
        rows = latents
        for index in range(level, -1, -1):
            row_gaps = (gaps or {}).get(index) or [None] * len(rows)
            row_gaps = [g if g is not None and len(g) in (len(row) - 1, len(row)) else None
                        for row, g in zip(rows, row_gaps)]
            t = 0.0 if index == level and not estimates else handoff
            rows = [torch.cat(pieces) for pieces in self.levels[index].decode_pieces(rows, row_gaps, refine, cutoff, t)]
            if index > 0 and parents is not None and index in parents:
                parent = parents[index].tolist()
                joined = [[] for _ in range(max(parent) + 1)]
                for row, p in zip(rows, parent):
                    joined[p].append(row)
                rows = [torch.cat(parts) for parts in joined]
        return [self.nearest_bytes(row) for row in rows]

    def nearest_bytes(self, vectors: torch.Tensor) -> torch.Tensor:
        """(N, d_0) level-0 vectors -> (N,) the byte ids of their nearest byte embeddings (cosine)."""
        vocabulary = F.normalize(self.byte_embeddings.weight[:NUM_BYTES].float(), dim=-1)
        return (F.normalize(vectors.float(), dim=-1) @ vocabulary.T).argmax(-1)

    @torch.no_grad()
    def reconstruct(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    from_level: int | None = None, true_offsets: bool = True,
                    handoff_noise_level: float | None = None) -> list[torch.Tensor]:
        """Encode (eval-mode boundaries), then decode the latents of `from_level` (default: the top) at t = 0.

        true_offsets: stitch with the encoder's own segmentation (offsets and the last segment's length:
        reconstruction given the segmentation); False infers them from n_hat and existence, as in generation.
        handoff_noise_level: see `decode_latents` (default: config.handoff_noise_level).
        Returns the byte ids of each input row.
        """
        outputs = self(input_ids, attention_mask).levels
        top = self.config.num_levels - 1 if from_level is None else from_level
        latents = [outputs[top].latents[r][outputs[top].latent_mask[r]] for r in range(len(outputs[top].parent))]
        parents = {index: outputs[index].parent for index in range(1, top + 1)}
        gaps = None
        if true_offsets:
            gaps = {}
            for index in range(top + 1):
                segments = outputs[index].segments
                gaps[index] = [segments.gap[segments.document == r] for r in range(len(outputs[index].parent))]
        return self.decode_latents(latents, top, parents, gaps, handoff_noise_level=handoff_noise_level)
