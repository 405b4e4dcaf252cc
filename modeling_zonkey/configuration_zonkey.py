"""ZonkeyConfig: every hyper-parameter of the method, as per-level lists.

Level l has width d_l, window length L_l and C_l compression (CLS) vectors. A level-l latent is the
C_l CLS outputs flattened, so it has C_l * d_l numbers and is the input vector of level l + 1:
``hidden_size[l + 1] == num_cls_vectors[l] * hidden_size[l]`` is required.
"""

import math

from transformers import PreTrainedConfig

from .tokenization_zonkey import PAD_TOKEN_ID, VOCAB_SIZE

TEXT_GENERATION_TASK = "zonkey-text-generation"


def declared_pipelines() -> dict:
    """config.json's declaration of a folder's own pipelines, in transformers' `custom_pipelines` format: the
    text-generation pipeline's module (a file of the folder: save_pretrained copies the modules that the model files
    import, this one included) and class."""
    from .pipeline_zonkey import ZonkeyTextGenerationPipeline as impl

    return {TEXT_GENERATION_TASK: {"impl": f"{impl.__module__.rpartition('.')[2]}.{impl.__name__}",
                                   "pt": ["AutoModel"], "type": "text"}}

PER_LEVEL_FIELDS = (
    "hidden_size",
    "num_attention_heads",
    "window_length",
    "num_cls_vectors",
    "compressor_layers",
    "decompressor_layers",
    "denoiser_layers",
    "document_length",
    "max_decoded_segments",
)

DEFAULT_LOSS_WEIGHTS = {
    "reconstruction": 1.0,  # clean-pass reconstruction (bytes: CE; levels >= 1: InfoNCE)
    "existence": 0.05,  # decoder existence vs splitter existence (BCE)
    "stitcher_position": 0.1,  # characters between true cut and inferred offset (not given; 1.0 stalled learning)
    "stitcher_sequence": 1.0,  # reconstruction loss of the refined segment
    "denoising": 1.0,  # reconstruction from latents noised to t ~ U(0, 1) (the heavy pass; the reference's
                       # later x0 term)
    "ddmm": 1.0,  # light pass on the decoder's own re-compressed estimate ("mixed" objective only)
    "patch": 10.0,  # P(no BOS in a window of L, L+1, L+2)
    "short_segment": 10.0,  # P(segment shorter than C)
    "compression": 0.03,  # pushes mean p_bos toward 1/L
    "anti_collapse": 1.0,  # |mean cosine| between latents of different documents
    "masked_vector": 1.0,  # masked-vector prediction at levels >= 1
    "regression": 0.0,  # 1 - cos(X_hat, X) of the clean pass at levels >= 1 (InfoNCE only ranks X_hat among vectors)
    "handoff": 0.0,  # levels >= 1: the level below decodes the clean pass's X_hat (at handoff_noise_level) and scores
                     # it with its own reconstruction loss (bytes at level 0): X_hat near X in cosine is not enough
}

# the splitter's priors and the latent-spread term: scaled by `regularizer_level_weights`, not `level_weights`
REGULARIZER_TERMS = ("patch", "short_segment", "compression", "anti_collapse")


def per_level(name: str, values, default: list) -> list:
    """A per-level field as a list: `default` when None, a copy of a list or tuple, else a ValueError naming the field
    (a bare number used to fail as "'int' object is not iterable", and an empty list was silently the default)."""
    if values is None:
        return list(default)
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"ZonkeyConfig: {name} must be a list (one entry per level), got {values!r}.")
    return list(values)


class ZonkeyConfig(PreTrainedConfig):
    r"""Configuration of a [`ZonkeyModel`].

    Args:
        vocab_size: byte vocabulary, fixed at 257 (256 UTF-8 byte values + pad).
        pad_token_id: id of the pad token, fixed at 256.
        num_levels: number of hierarchy levels (bytes -> words -> sentences is 2).
        hidden_size: width d_l of each level.
        num_attention_heads: heads per level.
        window_length: window (segment) length L_l: no segment spans more than L_l positions.
        num_cls_vectors: C_l CLS vectors per latent.
        compressor_layers / decompressor_layers / denoiser_layers: transformer depth per level.
        document_length: N_l, the longest document a level takes (bytes at level 0, latent slots above).
            A level-l document with more than N_{l+1} segments is split into several level-(l+1)
            documents (chunking, never truncation).
        max_decoded_segments: at most this many segments per batch go through the three decoder passes
            of a training step (a random subset; the compressor always sees every segment).
        splitter_conv_kernels: kernel sizes of the splitter's parallel Conv1d features.
        ffn_multiplier: FFN width / model width.
        loss_weights: weight of each named loss term (see `DEFAULT_LOSS_WEIGHTS`); every weight here and in
            `level_weights` / `regularizer_level_weights` must be a finite number >= 0.
        level_weights: multiplies a level's reconstruction terms (every term but the regularisers; levels >= 1 also
            train the levels below them through their inputs, so a smaller weight keeps them from swamping level 0).
        regularizer_level_weights: multiplies a level's regularisers (`REGULARIZER_TERMS`: patch, short-segment,
            compression, anti-collapse), which only shape that level's own segments and latents (default 1 per level;
            the first shipped checkpoint used `level_weights` for both).
        ddmm_objective: "mixed" (clean, heavy and light passes) or "single_step" (clean and heavy passes: plain
            denoising at a random t, without the light pass on the decoder's own estimates).
        ddmm_positive: the light pass's positive at levels >= 1: "path" (the best point of the path from the heavy
            estimate X2 to X, the paper; lambda = 0 makes copying X2 a positive) or "direct" (X itself, as at level 0).
        light_pass_weight: "uniform" (every light-pass row alike) or "one_minus_t" (a row's light loss weighted by
            1 - t1: the heavy estimate it re-compresses is mostly noise at large t1).
        heavy_noise_draw: how the heavy pass draws t1: "uniform" (U(0, 1)) or "sqrt" (U(0, 1) ** 0.5, density 2 t:
            more rows at high noise, where samples from noise start).
        self_conditioning: the decoder also reads the previous clean-latent estimate (one more prompt input, added
            through a zero-initialised projection, so a checkpoint without it loads unchanged). Trained as is usual:
            the heavy pass gets the estimate of a first, gradient-free pass on half of its rows and nothing on the
            others; the light pass becomes the "ddim" sampler's step, X3 = Dec(z_t2, t2, estimate) with z_t2 the
            deterministic step from z_t1 toward the heavy estimate (its implied noise kept) and t2 ~ U(0, t1). z_t1
            keeps its gradient there, so the light pass also trains the compressor (as the heavy pass does).
        light_noise_scale: mean of the clean pass's small noise level t0, drawn as scale * Beta(1, 3) / 0.25 (the
            light pass's t2 is drawn as U(0, t1)).
        light_pass_fraction: share of the decoded segments that also take the light pass (a random subset each
            step; 1.0: all, the paper). A speed option: the light pass costs a compression and a decoder pass.
        time_embedding: "interpolate" (tau = (1-t) tau_clean + t tau_noisy) or "sinusoidal" (+ MLP).
        num_negatives: InfoNCE negatives for the reconstruction at levels >= 1 and for the DDMM loss.
        infonce_negatives: "sampled" (num_negatives drawn at random from the batch's target vectors) or "all" (every
            other target vector of the batch is a negative: the neighbours of the same segment and document included).
        masked_vector_negatives / mask_probability: masked-vector prediction at levels >= 1.
        handoff_noise_level: the t at which a level decodes the latents that the level above decoded (from the top,
            and in generation): an estimate, not a clean encoding; a t > 0 tells the decoder not to trust it
            exactly (0: decoded as clean, the first checkpoints' behaviour; docs/research/level1-autoencoder.md
            measures it).
        existence_threshold: a decoded position is kept while its existence exceeds it; inference BOS
            threshold of the splitter as well.
        density_offset: the 0.1 in the density factor (mean_p + 0.1) / (1/L + 0.1).
        denoiser_existence: feed the decoder's draft existence into the denoiser's probabilistic attention (the
            paper); False: a plain bidirectional denoiser (the first shipped checkpoint).
        compressor_conv_norm: the compressor's residual conv is x + LN(GELU(conv x)) (the reference); False: x + conv x.
        initializer_factor: linear and conv weights start as N(0, (factor / sqrt(fan_in))^2).
    """

    model_type = "zonkey"

    @property
    def custom_pipelines(self) -> dict:
        """The folder's own pipelines as transformers' `pipeline()` reads them from config.json (always saved): with
        trust_remote_code=True, `pipeline(TEXT_GENERATION_TASK, model=folder)` loads ZonkeyTextGenerationPipeline
        from the folder's pipeline_zonkey.py. Empty where this process has registered the task already (`import
        modeling_zonkey`): `pipeline()` reads the declaration before its registry and would otherwise ask for
        trust_remote_code even though the installed package serves the task."""
        from transformers.pipelines import PIPELINE_REGISTRY

        if TEXT_GENERATION_TASK in PIPELINE_REGISTRY.get_supported_tasks():
            return {}
        return declared_pipelines()

    def to_dict(self) -> dict:
        return {**super().to_dict(), "custom_pipelines": declared_pipelines()}

    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE,
        pad_token_id: int = PAD_TOKEN_ID,
        num_levels: int = 2,
        hidden_size: list[int] | None = None,
        num_attention_heads: list[int] | None = None,
        window_length: list[int] | None = None,
        num_cls_vectors: list[int] | None = None,
        compressor_layers: list[int] | None = None,
        decompressor_layers: list[int] | None = None,
        denoiser_layers: list[int] | None = None,
        document_length: list[int] | None = None,
        max_decoded_segments: list[int] | None = None,
        splitter_conv_kernels: list[int] | None = None,
        ffn_multiplier: int = 4,
        loss_weights: dict[str, float] | None = None,
        level_weights: list[float] | None = None,
        regularizer_level_weights: list[float] | None = None,
        ddmm_objective: str = "mixed",
        ddmm_positive: str = "path",
        light_pass_weight: str = "uniform",
        heavy_noise_draw: str = "uniform",
        self_conditioning: bool = False,
        light_noise_scale: float = 0.02,
        light_pass_fraction: float = 1.0,
        time_embedding: str = "interpolate",
        num_negatives: int = 63,
        infonce_negatives: str = "sampled",
        masked_vector_negatives: int = 100,
        mask_probability: float = 0.2,
        handoff_noise_level: float = 0.0,
        existence_threshold: float = 0.5,
        density_offset: float = 0.1,
        denoiser_existence: bool = True,
        compressor_conv_norm: bool = True,
        initializer_factor: float = 1.0,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.num_levels = num_levels
        self.hidden_size = per_level("hidden_size", hidden_size, [256, 1024])
        self.num_attention_heads = per_level("num_attention_heads", num_attention_heads, [8, 8])
        self.window_length = per_level("window_length", window_length, [27, 27])
        self.num_cls_vectors = per_level("num_cls_vectors", num_cls_vectors, [4, 4])
        self.compressor_layers = per_level("compressor_layers", compressor_layers, [12, 12])
        self.decompressor_layers = per_level("decompressor_layers", decompressor_layers, [2, 2])
        self.denoiser_layers = per_level("denoiser_layers", denoiser_layers, [12, 12])
        self.document_length = per_level("document_length", document_length, [2048, 256])
        self.max_decoded_segments = per_level("max_decoded_segments", max_decoded_segments, [256, 64])
        self.splitter_conv_kernels = per_level("splitter_conv_kernels", splitter_conv_kernels, [3, 5, 7, 9])
        self.ffn_multiplier = ffn_multiplier
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **(loss_weights or {})}
        ones = [1.0] * num_levels if isinstance(num_levels, int) else []  # (a bad num_levels: validate_zonkey says so)
        self.level_weights = per_level("level_weights", level_weights, ones)
        self.regularizer_level_weights = per_level("regularizer_level_weights", regularizer_level_weights, ones)
        self.ddmm_objective = ddmm_objective
        self.ddmm_positive = ddmm_positive
        self.light_pass_weight = light_pass_weight
        self.heavy_noise_draw = heavy_noise_draw
        self.self_conditioning = self_conditioning
        self.light_noise_scale = light_noise_scale
        self.light_pass_fraction = light_pass_fraction
        self.time_embedding = time_embedding
        self.num_negatives = num_negatives
        self.infonce_negatives = infonce_negatives
        self.masked_vector_negatives = masked_vector_negatives
        self.mask_probability = mask_probability
        self.handoff_noise_level = handoff_noise_level
        self.existence_threshold = existence_threshold
        self.density_offset = density_offset
        self.denoiser_existence = denoiser_existence
        self.compressor_conv_norm = compressor_conv_norm
        self.initializer_factor = initializer_factor
        self.tie_word_embeddings = tie_word_embeddings
        kwargs.pop("custom_pipelines", None)  # declared by the class (the property above), whatever a file said
        super().__init__(**kwargs)
        self.validate_zonkey()

    def validate_zonkey(self) -> None:
        """Raise ValueError, naming the field and the fix, for any inconsistent value."""

        def fail(message: str) -> None:
            raise ValueError(f"ZonkeyConfig: {message}")

        if not isinstance(self.num_levels, int) or self.num_levels < 1:
            fail(f"num_levels must be a positive integer, got {self.num_levels!r}.")
        for name in PER_LEVEL_FIELDS:
            values = getattr(self, name)
            if len(values) != self.num_levels:
                fail(f"{name} has {len(values)} entries but num_levels = {self.num_levels}; give one per level.")
            for value in values:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    fail(f"every entry of {name} must be a positive integer, got {values}.")
        for level in range(self.num_levels):
            d, h = self.hidden_size[level], self.num_attention_heads[level]
            if d % h or (d // h) % 2:
                fail(f"hidden_size[{level}] = {d} must be divisible by num_attention_heads[{level}] = {h} "
                     "into an even head size.")
            if d % 4:
                fail(f"hidden_size[{level}] = {d} must be divisible by 4 (the stitcher projects to d/4).")
            if self.window_length[level] < 3:  # (2 made the splitter's prior log(p / (1 - p)) a math domain error)
                fail(f"window_length[{level}] must be at least 3 (the splitter's prior p_bos = 2 / window_length must "
                     f"be below 1), got {self.window_length[level]}.")
            if self.num_cls_vectors[level] > self.window_length[level]:
                fail(f"num_cls_vectors[{level}] = {self.num_cls_vectors[level]} exceeds window_length[{level}] "
                     f"= {self.window_length[level]}: a segment could never be as long as its latent.")
            if level + 1 < self.num_levels:
                latent = self.num_cls_vectors[level] * d
                if self.hidden_size[level + 1] != latent:
                    fail(f"hidden_size[{level + 1}] must equal num_cls_vectors[{level}] * hidden_size[{level}] "
                         f"= {latent} (level {level + 1} reads level-{level} latents), "
                         f"got {self.hidden_size[level + 1]}.")
        if self.vocab_size != VOCAB_SIZE or self.pad_token_id != PAD_TOKEN_ID:
            fail(f"vocab_size must be 257 and pad_token_id 256 (the byte vocabulary is fixed: 256 bytes + pad), got "
                 f"{self.vocab_size} / {self.pad_token_id}.")
        if any(not isinstance(k, int) or k < 1 or k % 2 == 0 for k in self.splitter_conv_kernels):
            fail(f"splitter_conv_kernels must be odd positive integers, got {self.splitter_conv_kernels}.")
        unknown = set(self.loss_weights) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            fail(f"unknown loss_weights {sorted(unknown)}; known: {sorted(DEFAULT_LOSS_WEIGHTS)}.")

        def weight_ok(w) -> bool:  # a finite number >= 0 (NaN or inf would turn the whole loss NaN)
            return isinstance(w, (int, float)) and math.isfinite(w) and w >= 0

        for name in ("level_weights", "regularizer_level_weights"):
            weights = getattr(self, name)
            if len(weights) != self.num_levels or not all(weight_ok(w) for w in weights):
                fail(f"{name} must hold one finite number >= 0 per level, got {weights}.")
        for name, w in self.loss_weights.items():
            if not weight_ok(w):
                fail(f"loss_weights[{name!r}] must be a finite number >= 0, got {w!r}.")
        if self.ddmm_objective not in ("mixed", "single_step"):
            fail(f"ddmm_objective must be 'mixed' or 'single_step', got {self.ddmm_objective!r}.")
        if self.ddmm_positive not in ("path", "direct"):
            fail(f"ddmm_positive must be 'path' or 'direct', got {self.ddmm_positive!r}.")
        if self.light_pass_weight not in ("uniform", "one_minus_t"):
            fail(f"light_pass_weight must be 'uniform' or 'one_minus_t', got {self.light_pass_weight!r}.")
        if self.heavy_noise_draw not in ("uniform", "sqrt"):
            fail(f"heavy_noise_draw must be 'uniform' or 'sqrt', got {self.heavy_noise_draw!r}.")
        if not isinstance(self.self_conditioning, bool):
            fail(f"self_conditioning must be true or false, got {self.self_conditioning!r}.")
        if self.infonce_negatives not in ("sampled", "all"):
            fail(f"infonce_negatives must be 'sampled' or 'all', got {self.infonce_negatives!r}.")
        if self.time_embedding not in ("interpolate", "sinusoidal"):
            fail(f"time_embedding must be 'interpolate' or 'sinusoidal', got {self.time_embedding!r}.")
        if not 0.0 < self.light_noise_scale <= 0.25:
            fail(f"light_noise_scale must be in (0, 0.25], got {self.light_noise_scale}.")
        if not isinstance(self.light_pass_fraction, (int, float)) or not 0.0 < self.light_pass_fraction <= 1.0:
            fail(f"light_pass_fraction must be in (0, 1], got {self.light_pass_fraction!r}.")
        if not 0.0 < self.mask_probability < 1.0:
            fail(f"mask_probability must be in (0, 1), got {self.mask_probability}.")
        if (not isinstance(self.handoff_noise_level, (int, float)) or isinstance(self.handoff_noise_level, bool)
                or not 0.0 <= self.handoff_noise_level <= 1.0):
            fail(f"handoff_noise_level must be in [0, 1], got {self.handoff_noise_level!r}.")
        if not 0.0 < self.existence_threshold < 1.0:
            fail(f"existence_threshold must be in (0, 1), got {self.existence_threshold}.")
        for name in ("denoiser_existence", "compressor_conv_norm"):
            if not isinstance(getattr(self, name), bool):
                fail(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if not self.initializer_factor > 0:
            fail(f"initializer_factor must be > 0, got {self.initializer_factor}.")
        if self.num_negatives < 1 or self.masked_vector_negatives < 1 or self.ffn_multiplier < 1:
            fail("num_negatives, masked_vector_negatives and ffn_multiplier must be >= 1.")

    def loss_weight(self, name: str) -> float:
        """Weight of a named loss term (the default when `loss_weights` was replaced without it)."""
        return float(self.loss_weights.get(name, DEFAULT_LOSS_WEIGHTS[name]))

    def term_weight(self, level: int, name: str) -> float:
        """Weight of a named loss term of `level` in the total: its loss weight times the level's weight for
        regularisers (`regularizer_level_weights`) or for everything else (`level_weights`)."""
        scale = self.regularizer_level_weights if name in REGULARIZER_TERMS else self.level_weights
        return scale[level] * self.loss_weight(name)

    def latent_size(self, level: int) -> int:
        """Size C_l * d_l of a level-l latent."""
        return self.num_cls_vectors[level] * self.hidden_size[level]
