"""Publishing (issue 9): one folder that timm and transformers both load, remote code that runs without relzoo,
pushes through huggingface_hub's real upload code to a Hub-compatible endpoint on 127.0.0.1 (tests/fakehub.py),
pulls in fresh processes, folder safety checks, and the fast error without network or cache."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

from relzoo.hub import check_export_folder, push_to_hub, save_hub_folder

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fakehub import FakeHub  # noqa: E402

SMALL_SAN = dict(widths=(32, 32, 64, 64, 128), stem_width=16)
BLOCK_RELZOO = textwrap.dedent("""
    import sys
    class _NoRelzoo:  # this process behaves as if relzoo were not installed
        def find_spec(self, name, path=None, target=None):
            if name == "relzoo" or name.startswith("relzoo."):
                raise ModuleNotFoundError("No module named 'relzoo' (blocked by the test)")
    sys.meta_path.insert(0, _NoRelzoo())
""")


def _run(code: str, env: dict, timeout: int = 300) -> str:
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout,
                            cwd=HERE.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def _env(tmp_path, endpoint: str) -> dict:
    return {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf_home"),
            "HF_TOKEN": "test-token-not-a-secret", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture
def san_folder(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("san10_patch", num_classes=3, **SMALL_SAN).eval()
    folder = save_hub_folder(model, tmp_path / "export", class_names=["cat", "dog", "fox"], image_size=128,
                             crop_pct=0.875, mean=(0.5,) * 3, std=(0.5,) * 3, model_id="me/san-small")
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.save({"x": x, "logits": model(x)}, tmp_path / "reference.pt")
    return folder


def test_one_config_for_timm_and_transformers(san_folder):
    config = json.loads((san_folder / "config.json").read_text())
    assert config["model_type"] == "san" and config["architecture"] == "san10_patch"
    assert "num_classes" not in config["model_args"]  # else transformers' TimmWrapper passes it twice
    assert config["num_classes"] == 3 and config["pretrained_cfg"]["input_size"] == [3, 128, 128]
    assert config["label_names"] == ["cat", "dog", "fox"]
    assert config["auto_map"]["AutoModelForImageClassification"] == "relzoo_models_san.SANForImageClassification"
    files = sorted(p.name for p in san_folder.iterdir())
    assert [f for f in files if f.endswith(".safetensors")] == ["model.safetensors"]  # one weights file
    assert files == sorted(check_export_folder(san_folder))
    for name in files:
        if name.endswith(".py"):  # flat: no import of relzoo, no relative import into a sub-package
            text = (san_folder / name).read_text()
            assert not re.search(r"^\s*(import relzoo|from relzoo|from \.\.)", text, re.M), name


def test_local_folder_loads_in_timm_and_transformers(san_folder, tmp_path):
    from transformers import AutoModelForImageClassification

    ref = torch.load(tmp_path / "reference.pt")
    model = timm.create_model(f"local-dir:{san_folder}", pretrained=True).eval()
    hf = AutoModelForImageClassification.from_pretrained(san_folder).eval()
    with torch.no_grad():
        assert torch.equal(model(ref["x"]), ref["logits"])
        torch.testing.assert_close(hf(ref["x"]).logits, ref["logits"], rtol=0, atol=1e-5)
    # the image-classification pipeline preprocesses as timm does (its transform from the same pretrained_cfg)
    from PIL import Image
    from transformers import pipeline

    picture = Image.fromarray(torch.randint(0, 256, (150, 200, 3), dtype=torch.uint8,
                                            generator=torch.Generator().manual_seed(2)).numpy())
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        expected = model(transform(picture).unsqueeze(0)).softmax(-1)[0]
    scores = {r["label"]: r["score"] for r in pipeline("image-classification", model=san_folder)(picture)}
    assert scores == pytest.approx({n: expected[i].item() for i, n in enumerate(["cat", "dog", "fox"])}, abs=1e-5)
    # a transformers re-save (new labels) keeps the timm fields in step with the config
    hf.config.id2label, hf.config.label2id = {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}
    hf.save_pretrained(tmp_path / "resaved")
    config = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert config["label_names"] == ["a", "b", "c"] and config["architecture"] == "san10_patch"


@pytest.mark.slow
def test_push_then_load_with_timm_transformers_and_remote_code(san_folder, tmp_path):
    with FakeHub() as hub:
        env = _env(tmp_path, hub.endpoint)
        url = _run(f"from relzoo.hub import push_to_hub; print(push_to_hub({str(san_folder)!r}, 'me/san-small'))",
                   env)
        assert url.strip().startswith(f"{hub.endpoint}/me/san-small/commit/")
        assert sorted(hub.files("me/san-small")) == sorted(p.name for p in san_folder.iterdir())
        ref = str(tmp_path / "reference.pt")
        check = (f"ref = torch.load({ref!r})\nwith torch.no_grad():\n"
                 "    out = model(ref['x'])\n    out = getattr(out, 'logits', out)\n"
                 "torch.testing.assert_close(out, ref['logits'], rtol=0, atol=1e-5)\n")
        # timm, with relzoo imported (it registers the architecture)
        out = _run("import torch, timm, relzoo\nmodel = timm.create_model('hf-hub:me/san-small', pretrained=True)"
                   ".eval()\n" + check + "print(type(model).__module__)", env)
        assert out.strip() == "relzoo.models.san"
        # transformers' Auto classes, with relzoo imported
        out = _run("import torch, relzoo\nfrom transformers import AutoModelForImageClassification as A, pipeline\n"
                   "model = A.from_pretrained('me/san-small').eval()\n" + check + "print(type(model).__module__)\n"
                   "print(type(pipeline('image-classification', model='me/san-small').image_processor).__name__)",
                   env)  # a Hub download reads preprocessor_config.json (a local folder, config.json)
        assert out.split() == ["relzoo.models.san", "TimmWrapperImageProcessor"]
        # remote code, in a process where relzoo cannot be imported
        out = _run(BLOCK_RELZOO + "import torch\nfrom transformers import AutoModelForImageClassification as A\n"
                   "model = A.from_pretrained('me/san-small', trust_remote_code=True).eval()\n" + check
                   + "from transformers import AutoModel, pipeline\n"
                   "base = AutoModel.from_pretrained('me/san-small', trust_remote_code=True)\n"
                   "print(type(model).__module__, type(base).__name__, 'relzoo' in sys.modules)", env)
        module, base, imported = out.split()
        assert module.startswith("transformers_modules.") and module.endswith("relzoo_models_san")
        assert (base, imported) == ("SANModel", "False")


@pytest.mark.parametrize("name, content, why", [
    (".env", "HF_TOKEN=abc", "credentials"),
    ("token", "abc", "credentials"),
    ("id_rsa", "x", "credentials"),
    ("notes.txt", "hello", "not part of a relzoo export"),
    ("README.md", "my token is hf_" + "a" * 34, "secret"),
    ("config.json", None, "secret"),
])
def test_push_refuses_folders_with_credentials_or_foreign_files(san_folder, name, content, why, monkeypatch):
    from huggingface_hub import HfApi

    if content is None:  # a token pasted into the config
        config = json.loads((san_folder / "config.json").read_text())
        config["note"] = "-----BEGIN RSA PRIVATE KEY-----"
        (san_folder / name).write_text(json.dumps(config))
    else:
        (san_folder / name).write_text(content)
    sent = []
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: sent.append("create_repo"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda *a, **k: sent.append("upload_folder"))
    with pytest.raises(ValueError, match=f"refusing to push .*{name}.*{why}"):
        push_to_hub(san_folder, "me/repo")
    assert sent == []  # refused before anything is sent


@pytest.mark.parametrize("case", ["private key", "hard link", "token in metadata", "damaged", "replaced",
                                  "not listed"])
def test_push_uploads_only_real_weights(san_folder, tmp_path, case, monkeypatch):
    """Anything named model.safetensors was uploaded (the secret scan skipped *.safetensors by name): a private key,
    a hard link to another file, a token in the metadata, weights damaged after saving. Each is refused before
    anything is sent."""
    import os

    from huggingface_hub import HfApi
    from safetensors.torch import load_file, save_file

    from relzoo.checksums import write_checksums

    weights = san_folder / "model.safetensors"
    tensors = load_file(weights)
    if case == "private key":
        weights.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n")
        write_checksums(san_folder)
        why = "not a safetensors file of tensors"
    elif case == "hard link":
        secret = tmp_path / "shadow"
        save_file(tensors, secret)                           # even valid weights: the file has another name too
        weights.unlink()
        os.link(secret, weights)
        write_checksums(san_folder)
        why = "a hard link"
    elif case == "token in metadata":
        save_file(tensors, weights, metadata={"note": "hf_" + "b" * 34})
        write_checksums(san_folder)
        why = "metadata holds what looks like a secret"
    elif case == "damaged":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
        why = "is damaged"
    elif case == "replaced":
        save_file({k: v + 1 for k, v in tensors.items()}, weights, metadata={"format": "pt", "x": "1"})
        why = "holds other tensors than the file saved"
    else:
        (san_folder / "checksums.json").write_text('{"algorithm": "sha256", "files": {}}')
        why = "checksums.json does not list model.safetensors"
    sent = []
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: sent.append("create_repo"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda *a, **k: sent.append("upload_folder"))
    with pytest.raises(ValueError, match=f"refusing to push .*{why}"):
        push_to_hub(san_folder, "me/repo")
    assert sent == []


def test_push_refuses_links_subfolders_and_bad_repo_ids(san_folder, tmp_path):
    (tmp_path / "outside.txt").write_text("x")
    (san_folder / "extra.json").symlink_to(tmp_path / "outside.txt")
    (san_folder / "sub").mkdir()
    with pytest.raises(ValueError, match=r"extra.json: a link.*sub/: a sub-folder"):
        check_export_folder(san_folder)
    with pytest.raises(ValueError, match="`repo_id` must be 'namespace/name', got 'norepo'"):
        push_to_hub(san_folder, "norepo")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        check_export_folder(empty)


def test_no_network_no_cache_fails_fast_with_what_to_do(tmp_path):
    """Without HF_HUB_OFFLINE and with the endpoint unreachable, relzoo's loaders answer at once (huggingface_hub
    alone retries for about 20 s per file)."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env(tmp_path, f"http://127.0.0.1:{port}")
    code = textwrap.dedent("""
        import time, timm, relzoo
        for load in (lambda: timm.create_model("san10_patch", pretrained=True),
                     lambda: relzoo.SANForImageClassification.from_pretrained("relzoo/san10_patch.in1k")):
            start = time.perf_counter()
            try:
                load()
            except (RuntimeError, OSError) as err:
                print(f"{time.perf_counter() - start:.2f}", str(err).replace(chr(10), " "))
    """)
    lines = _run(code, env).strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        seconds, message = line.split(" ", 1)
        assert float(seconds) < 3.0, line  # the probe's limit is 1 s; the rest is process noise
        assert "'relzoo/san10_patch.in1k' is not a local folder, is not in the Hugging Face cache" in message
        assert "the Hub cannot be reached" in message and "hf download relzoo/san10_patch.in1k" in message


def test_pushing_a_model_uploads_the_network_inference_runs(tmp_path, monkeypatch):
    """push_to_hub(model): classifiers are written as the timm network (BatchFormer / API-Net without their
    training-only plug-in, SAN with timm's fields), other relzoo models as transformers folders with remote code."""
    from huggingface_hub import HfApi

    from relzoo import (
        APINetConfig,
        APINetForImageClassification,
        ProtoNetConfig,
        ProtoNetForFewShotClassification,
        SANForImageClassification,
    )

    uploaded = {}

    def fake_upload(self, *, repo_id, folder_path, allow_patterns, **kwargs):
        uploaded[repo_id] = {name: json.loads((Path(folder_path) / name).read_text())
                             for name in allow_patterns if name == "config.json"} | {"files": sorted(allow_patterns)}
        return "url"

    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: None)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload)
    api = APINetForImageClassification(APINetConfig(backbone="resnet10t", num_labels=3,
                                                    id2label={0: "a", 1: "b", 2: "c"})).eval()
    push_to_hub(api, "me/apinet", image_size=32)
    config = uploaded["me/apinet"]["config.json"]
    assert config["architecture"] == "resnet10t" and config["label_names"] == ["a", "b", "c"]
    assert "model_type" not in config and not any(f.endswith(".py") for f in uploaded["me/apinet"]["files"])
    san = SANForImageClassification.from_timm(timm.create_model("san10_pair", num_classes=2, **SMALL_SAN))
    push_to_hub(san, "me/san", image_size=128)
    config = uploaded["me/san"]["config.json"]
    assert config["model_type"] == "san" and config["architecture"] == "san10_pair"
    assert config["pretrained_cfg"]["input_size"] == [3, 128, 128] and "relzoo_models_san.py" in uploaded["me/san"][
        "files"]
    proto = ProtoNetForFewShotClassification(ProtoNetConfig(backbone="resnet10t"))
    push_to_hub(proto, "me/proto")
    assert uploaded["me/proto"]["config.json"]["auto_map"]["AutoModel"].startswith("relzoo_models_crosstransformer.")
