"""Zonkey: a hierarchical diffusion language model with differentiable tokenization (arXiv 2601.21768)."""

from transformers import AutoConfig, AutoModel, AutoTokenizer

from .configuration_zonkey import ZonkeyConfig
from .generation_zonkey import ZonkeyGenerateOutput, ZonkeyGenerationConfig
from .modeling_zonkey import ZonkeyModel, ZonkeyModelOutput, ZonkeyPreTrainedModel
from .pipeline_zonkey import ZonkeyTextGenerationPipeline, register_pipelines
from .tokenization_zonkey import ZonkeyTokenizer

AutoConfig.register("zonkey", ZonkeyConfig, exist_ok=True)
AutoModel.register(ZonkeyConfig, ZonkeyModel, exist_ok=True)
AutoTokenizer.register(ZonkeyConfig, slow_tokenizer_class=ZonkeyTokenizer, exist_ok=True)

# Remote code: save_pretrained writes auto_map and copies these flat files next to the weights.
ZonkeyConfig.register_for_auto_class()
ZonkeyModel.register_for_auto_class("AutoModel")
ZonkeyTokenizer.register_for_auto_class("AutoTokenizer")
# pipeline("zonkey-text-generation", model=...); "feature-extraction" needs no registration (docs/pipelines.md)
register_pipelines()

__all__ = ["ZonkeyConfig", "ZonkeyGenerateOutput", "ZonkeyGenerationConfig", "ZonkeyModel", "ZonkeyModelOutput",
           "ZonkeyPreTrainedModel", "ZonkeyTextGenerationPipeline", "ZonkeyTokenizer"]
__version__ = "0.1.0"
