"""The Hub path, offline: what a push uploads (captured), clear errors without a token or network, and loading
by repo id from a faked cache snapshot, with the package and (in a clean process) with remote code only."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi

from modeling_zonkey.evaluation.suite import EvaluationSettings, evaluate_model
from modeling_zonkey.hub.push import files_to_push, push_folder

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The cat sat on the mat.", "A dog ran."]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, make_model, tokenizer):
    """A saved micro model as the training script leaves it: weights, configs, remote code, training record,
    evaluation, model card, plus local-only checkpoints and TensorBoard logs."""
    path = tmp_path_factory.mktemp("hub") / "zonkey-micro"
    model = make_model(seed=4)
    model.generation_config.num_steps = 6
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "train_results.json").write_text(json.dumps({"completed_steps": 3, "train_bytes": 1234, "num_parameters":
                                                         sum(p.numel() for p in model.parameters())}))
    documents = [t.encode() for t in TEXTS]
    results = evaluate_model(model, tokenizer, documents, EvaluationSettings(noise_levels=(0.0,), num_steps=2))
    (path / "evaluation").mkdir()
    (path / "evaluation" / "evaluation.json").write_text(json.dumps(results))
    (path / "README.md").write_text("local card\n")
    for local_only in ("step_2/model.safetensors", "zonkey/events.out.tfevents.1", ".tmp-step_4/config.json"):
        (path / local_only).parent.mkdir(parents=True, exist_ok=True)
        (path / local_only).write_bytes(b"local")
    return path, model, tokenizer


class FakeHub:
    """Records create_repo / create_branch / create_commit instead of calling the Hub."""

    def __init__(self, monkeypatch, fail_with: Exception | None = None):
        self.calls, self.commits = [], []

        def create_repo(api, repo_id, **kwargs):
            if fail_with is not None:
                raise fail_with
            self.calls.append(("create_repo", repo_id, kwargs))

        def create_branch(api, repo_id, **kwargs):
            self.calls.append(("create_branch", repo_id, kwargs))

        def create_commit(api, repo_id, operations, commit_message, **kwargs):
            files = {}
            for op in operations:
                source = op.path_or_fileobj
                files[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
            self.commits.append({"repo_id": repo_id, "message": commit_message, "files": files, **kwargs})
            return f"https://huggingface.co/{repo_id}/commit/{len(self.commits)}"

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)


def test_push_uploads_the_model_then_the_card(folder, monkeypatch):
    path, model, _ = folder
    hub = FakeHub(monkeypatch)
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    result = push_folder(path, "org/zonkey-micro", token="hf_test", private=True, revision="v1",
                         commit_message="first upload")
    assert hub.calls[0] == ("create_repo", "org/zonkey-micro",
                            {"private": True, "exist_ok": True, "repo_type": "model"})
    assert hub.calls[1][0] == "create_branch" and hub.calls[1][2]["branch"] == "v1"
    assert len(hub.commits) == 2 and result.files[-1] == "README.md"
    body, card = hub.commits
    expected = {"model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json",
                "train_results.json", "evaluation/evaluation.json", "configuration_zonkey.py", "modeling_zonkey.py",
                "tokenization_zonkey.py", "generation_zonkey.py", "sampling.py"}
    assert expected <= set(body["files"]), expected - set(body["files"])
    assert not any(f.startswith(("step_", "zonkey/", ".tmp-")) or f == "README.md" for f in body["files"])
    assert body["message"] == "first upload" and body["revision"] == "v1"
    for name, content in body["files"].items():
        assert content == (path / name).read_bytes(), name
    config = json.loads(body["files"]["config.json"])
    assert config["auto_map"]["AutoModel"] == "modeling_zonkey.ZonkeyModel"
    assert json.loads(body["files"]["generation_config.json"])["num_steps"] == 6
    # the card: pushed last, alone, with the Hub metadata, the repo id and the evaluation tables
    assert list(card["files"]) == ["README.md"]
    text = card["files"]["README.md"].decode()
    assert text.startswith("---\nlibrary_name: transformers\nlicense: mit\n")
    assert 'AutoModel.from_pretrained("org/zonkey-micro", trust_remote_code=True)' in text
    assert "| 0 | word starts |" in text and "3 optimizer steps" in text
    after = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert after == before, "a push must not modify the local folder"


def test_a_pull_request_carries_the_model_and_the_card_together(folder, monkeypatch):
    path, _, _ = folder
    hub = FakeHub(monkeypatch)
    push_folder(path, "org/zonkey-micro", token="hf_test", create_pr=True)
    assert len(hub.commits) == 1 and hub.commits[0]["create_pr"] is True
    assert "README.md" in hub.commits[0]["files"] and "model.safetensors" in hub.commits[0]["files"]


def test_push_without_token_or_network_fails_clearly_and_keeps_the_folder(folder, monkeypatch):
    path, _, _ = folder
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(ValueError, match="no Hugging Face token: run `hf auth login`"):
        push_folder(path, "org/zonkey-micro")
    FakeHub(monkeypatch, fail_with=ConnectionError("Name or service not known"))
    with pytest.raises(ValueError, match="failed .*ConnectionError.*is unchanged, run the push again"):
        push_folder(path, "org/zonkey-micro", token="hf_test")
    with pytest.raises(ValueError, match="organisation/name"):
        push_folder(path, "zonkey", token="hf_test")
    assert (path / "model.safetensors").is_file() and (path / "README.md").read_text() == "local card\n"


def test_incomplete_folders_are_refused(folder, tmp_path):
    path, _, _ = folder
    with pytest.raises(ValueError, match="no folder"):
        files_to_push(tmp_path / "missing")
    partial = tmp_path / "partial"
    shutil.copytree(path, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors missing"):
        files_to_push(partial)
    (partial / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    (partial / "modeling_zonkey.py").unlink()
    with pytest.raises(ValueError, match="auto_map names .*modeling_zonkey.py"):
        files_to_push(partial)


def test_push_script_dry_run_lists_the_files(folder, capsys):
    path, _, _ = folder
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import push_to_hub as script
    finally:
        sys.path.pop(0)
    assert script.main([str(path), "--repo_id", "org/zonkey-micro", "--dry_run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-2] == "README.md" and "model.safetensors" in listed and "step_2/model.safetensors" not in listed
    assert script.main([str(path / "nope"), "--repo_id", "org/x", "--dry_run"]) == 1
    assert "error: no folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------ loading by repo id
LOAD_BY_REPO_ID = textwrap.dedent(
    """
    import json, sys
    repo_id, out_path, texts, with_package = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] == "1"
    if with_package:
        import modeling_zonkey  # noqa: F401  registers the Auto classes: no remote code needed
    else:
        sys.modules["modeling_zonkey"] = None  # the installed package must not be used
    import torch
    from transformers import AutoModel, AutoTokenizer, pipeline
    kwargs = {} if with_package else {"trust_remote_code": True}
    model = AutoModel.from_pretrained(repo_id, **kwargs).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo_id, **kwargs)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        latents = model(**batch).levels[0].latents
    # the card's pipeline_tag: the Hub's snippet for it
    features = pipeline("feature-extraction", model=repo_id, **kwargs)(texts[0], return_tensors=True)
    torch.save({"module": type(model).__module__, "latents": latents, "features": features,
                "generated": model.generate(num_return_sequences=2, seed=0)}, out_path)
    """
)


def fake_snapshot(home: Path, repo_id: str, source: Path) -> None:
    """$HF_HOME/hub/models--org--name/{refs/main, snapshots/<sha>/...}: what a download leaves in the cache."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for name in files_to_push(source):
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / name, snapshot / name)


@pytest.mark.parametrize("with_package", [True, False], ids=["package", "remote-code"])
def test_load_by_repo_id_from_the_cache_offline(folder, tmp_path, with_package):
    path, model, tokenizer = folder
    home = tmp_path / "hf_home"
    fake_snapshot(home, "org/zonkey-micro", path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONNOUSERSITE="1")
    script, out = tmp_path / "load.py", tmp_path / "out.pt"
    script.write_text(LOAD_BY_REPO_ID)
    done = subprocess.run([sys.executable, str(script), "org/zonkey-micro", str(out), json.dumps(TEXTS),
                           "1" if with_package else "0"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    result = torch.load(out, weights_only=False)
    expected_module = "modeling_zonkey.modeling_zonkey" if with_package else "transformers_modules."
    assert result["module"].startswith(expected_module), result["module"]
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(result["latents"], model(**batch).levels[0].latents, atol=1e-6, rtol=1e-6)
        single = model(**tokenizer(TEXTS[:1], return_tensors="pt")).segment_latents
    torch.testing.assert_close(result["features"], single, atol=1e-6, rtol=1e-6)
    # the saved generation config (num_steps = 6) came along: same samples as the original with that option
    assert torch.equal(result["generated"], model.generate(num_return_sequences=2, seed=0, num_steps=6))


def test_model_push_to_hub_sends_the_zonkey_card(folder, monkeypatch):
    """model.push_to_hub sends what examples/push_to_hub.py sends: our card (true metadata: the pipeline_tag whose
    pipeline runs, feature-extraction, no dataset it was not trained on), not transformers' generic one, and the
    byte tokenizer."""
    _, model, _ = folder
    hub = FakeHub(monkeypatch)
    url = model.push_to_hub("org/zonkey-micro", token="hf_test", commit_message="from the model")
    body, card = hub.commits
    assert url.endswith("/commit/2") and body["message"] == "from the model"
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "modeling_zonkey.py"} <= set(body["files"])
    text = card["files"]["README.md"].decode()
    assert text.startswith("---\nlibrary_name: transformers\nlicense: mit\n")
    assert "\npipeline_tag: feature-extraction\n" in text.split("---")[1] and text.count("pipeline_tag") == 1
    assert "datasets" not in text.split("---")[1]
    assert "# org/zonkey-micro" in text and "Zonkey" in text and "automatically generated" not in text


def test_a_built_wheel_carries_the_card_template(tmp_path):
    """model_card.py reads the repository's model_card.md; a (non-editable) wheel has it inside the package."""
    import zipfile

    root, source = Path(__file__).resolve().parents[1], tmp_path / "source"  # built from a copy: no build/ here
    shutil.copytree(root / "modeling_zonkey", source / "modeling_zonkey", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md", "model_card.md"):
        shutil.copy(root / name, source / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("zonkey-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("modeling_zonkey/hub/model_card.md") == (root / "model_card.md").read_bytes()
        packages = {name.split("/")[1] for name in archive.namelist() if name.count("/") == 2}
        assert {"training", "evaluation", "hub"} <= packages
    # installed (not editable) away from the repository, it renders a card from the template it carries
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    check = ("from modeling_zonkey.hub import model_card; print(model_card.TEMPLATE, model_card.TEMPLATE.is_file()); "
             "from modeling_zonkey.training.data import load_text_datasets")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(site / "modeling_zonkey" / "hub" / "model_card.md"), "True"]


def test_the_package_top_level_is_exactly_the_remote_code(tmp_path, make_model, tokenizer):
    """modeling_zonkey/ holds the model files flat (what save_pretrained copies as remote code) and nothing else:
    training, evaluation and Hub support live in subpackages."""
    import modeling_zonkey

    make_model().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    package = {path.name for path in Path(modeling_zonkey.__file__).parent.glob("*.py")} - {"__init__.py"}
    assert {path.name for path in tmp_path.glob("*.py")} == package
    assert "modeling_zonkey.py" in package and "data.py" not in package


def test_refresh_remote_code_rewrites_the_copies(tmp_path, make_model, tokenizer, capsys):
    from modeling_zonkey.hub import refresh_remote_code

    make_model().save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "level.py").write_text("# an old copy\n")
    (tmp_path / "model" / "report.py").write_text("# a module the package no longer has\n")
    refresh_remote_code.main([str(tmp_path / "model")])
    assert "level.py" in capsys.readouterr().out
    sources = {path.name: path.read_text() for path in refresh_remote_code.remote_code_files()}
    assert {path.name: path.read_text() for path in (tmp_path / "model").glob("*.py")} == sources
    with pytest.raises(SystemExit):
        refresh_remote_code.main([str(tmp_path)])  # no config.json: not a model folder
    assert "is not a saved model folder" in capsys.readouterr().err
