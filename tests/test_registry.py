"""The family registry (relzoo/registry.py): a new method touches only its own files. A throwaway family, written
into a temporary folder and never named by relzoo, gets a variant export with its card, the push checks, a
converter in scripts/convert.py and a row in `relzoo list`; and the modules that work on every family name none."""
import ast
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import relzoo  # noqa: F401  (registers the families)
from relzoo.registry import families, family_of, get_family, unregister_family

ROOT = Path(__file__).resolve().parents[1]

TOY_MODEL = '''
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel

from relzoo.registry import Family, register_family


class ToyConfig(PreTrainedConfig):
    model_type = "relzoo_toy"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)


class ToyModel(PreTrainedModel):
    config_class = ToyConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(3, config.width)
        self.post_init()

    def forward(self, pixel_values):
        return self.proj(pixel_values.mean((2, 3)))


AutoConfig.register("relzoo_toy", ToyConfig, exist_ok=True)
AutoModel.register(ToyConfig, ToyModel, exist_ok=True)
register_family(Family(name="relzoo_toy", title="Toy (a throwaway family)", config_class=ToyConfig,
                       model_class=ToyModel, task="image-classification", paper="Nobody, *Toys*, 2026",
                       hub="relzoo_toy_hub", train_script="scripts/train_toy.py", benchmark="relzoo_toy_bench"))
'''

TOY_BENCH = '''
NAME = "toy"
DESCRIPTION = "the toy family against itself"


def run(args, device, meta):
    return {"meta": meta, "rows": [{"ratio": 1.0, "quick": args.quick}]}, "| toy | 1.0 |"
'''

TOY_HUB = '''
from pathlib import Path

import torch

from relzoo.conversion import open_checkpoint
from relzoo.hub import write_transformers_files
from relzoo.registry import Converter
from relzoo_toy_model import ToyConfig, ToyModel


def write_files(model, folder, *, class_names, preprocessing, model_id):
    write_transformers_files(model, folder)


def usage(model_id):
    return ["```python", f"toy = AutoModel.from_pretrained({model_id!r})", "```"]


def toy_from_checkpoint(checkpoint, width):
    _, state = open_checkpoint(checkpoint)
    model = ToyModel(ToyConfig(width=width))
    model.load_state_dict({k.replace("official_", "proj."): v for k, v in state.items()})
    return model


def _convert(args):
    model = toy_from_checkpoint(args.checkpoint, args.width)
    model.save_pretrained(args.output)
    return Path(args.output)


CONVERTER = Converter(command="toy", source="toy.pt", add_arguments=lambda p: p.add_argument("--width", type=int,
                                                                                                  default=4),
                      convert=_convert, from_variant=lambda spec, path: toy_from_checkpoint(path, spec["config"]["width"]))
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    (tmp_path / "relzoo_toy_model.py").write_text(textwrap.dedent(TOY_MODEL))
    (tmp_path / "relzoo_toy_hub.py").write_text(textwrap.dedent(TOY_HUB))
    (tmp_path / "relzoo_toy_bench.py").write_text(textwrap.dedent(TOY_BENCH))
    monkeypatch.syspath_prepend(str(tmp_path))
    import relzoo_toy_model

    yield relzoo_toy_model
    unregister_family("relzoo_toy")
    for name in ("relzoo_toy_model", "relzoo_toy_hub", "relzoo_toy_bench"):
        sys.modules.pop(name, None)


def _toy_variant(tmp_path) -> Path:
    spec = json.loads((ROOT / "hub_configs" / "resnet18_apinet.fashion-mnist.json").read_text())
    spec.update(variant="toy.demo", repo_id="me/toy", family="relzoo_toy", transformers_class="ToyModel",
                timm_architecture="none", config={"model_type": "relzoo_toy", "width": 4}, class_names=["a", "b"],
                params=16)
    spec["weights"].update(convert="python scripts/convert.py toy --checkpoint toy.pt --output OUT")
    path = tmp_path / "toy.demo.json"
    path.write_text(json.dumps(spec))
    return path


def test_every_relzoo_family_is_registered_once_with_its_hub_side():
    names = [f.name for f in families()]
    assert sorted(n for n in names if not n.startswith("relzoo_")) == sorted(
        ["san", "crosstransformer", "protonet", "hsnet", "batchformer", "apinet"])
    for family in families():
        hub = family.hub_module()
        assert callable(hub.write_files) and callable(hub.usage), family.name
        assert family_of(family.config_class()) is family
        if family.timm_class is not None:
            assert callable(hub.write_timm_files)
    assert {f.name for f in families() if f.converter} >= {"san", "hsnet"}
    with pytest.raises(ValueError, match=r"`family` must be one of \[.*'san'.*\], got 'nope'"):
        get_family("nope")


def test_a_new_family_needs_only_its_own_files(toy_family, tmp_path):
    """Export with no weights and with converted weights, push checks, the card, scripts/convert.py, `relzoo list`
    help: all of it for a family that relzoo's code has never heard of."""
    from relzoo.publish import check_export_folder
    from relzoo.variants import export_variant, load_variant

    spec = load_variant(_toy_variant(tmp_path))
    folder = export_variant(spec, tmp_path / "none")
    card = (folder / "README.md").read_text()
    assert "toy = AutoModel.from_pretrained('me/toy')" in card and "**No weights yet.**" in card
    assert {"model.safetensors", "relzoo_toy_model.py", "checksums.json"} <= set(check_export_folder(folder))

    official = {"official_weight": torch.randn(4, 3), "official_bias": torch.randn(4)}
    torch.save(official, tmp_path / "toy.pt")
    folder = export_variant(spec, tmp_path / "converted", weights=tmp_path / "toy.pt")
    card = (folder / "README.md").read_text()
    assert "**Converted official weights.** `toy.pt`" in card
    loaded = toy_family.ToyModel.from_pretrained(folder)
    torch.testing.assert_close(loaded.proj.weight, official["official_weight"])

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import convert
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    convert.main(["toy", "--checkpoint", str(tmp_path / "toy.pt"), "--output", str(tmp_path / "cli"), "--width", "4"])
    torch.testing.assert_close(toy_family.ToyModel.from_pretrained(tmp_path / "cli").proj.bias, official["official_bias"])


def test_benchmark_entry_point_runs_a_new_familys_benchmark(toy_family, capsys):
    import runpy

    main = runpy.run_path(str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["main"]
    result = main(["toy", "--quick", "--device", "cpu"])
    assert result["rows"] == [{"ratio": 1.0, "quick": True}] and "| toy | 1.0 |" in capsys.readouterr().out
    assert {"san", "ctx", "hsnet", "plugins", "toy"} <= set(runpy.run_path(
        str(ROOT / "scripts" / "benchmark.py"), run_name="not_main")["benchmarks"]())


def test_cli_lists_the_registered_families(toy_family, capsys):
    from relzoo.cli import main as cli_main

    with pytest.raises(SystemExit):
        cli_main(["list", "--help"])
    assert "relzoo_toy" in capsys.readouterr().out.replace("\n", " ")


#: the modules that work on every family; none of them may name one
FAMILY_AGNOSTIC = ["relzoo/variants.py", "relzoo/hub.py", "relzoo/cards.py", "relzoo/publish.py",
                   "relzoo/conversion.py", "relzoo/registry.py", "relzoo/onnx_export.py", "relzoo/cli.py",
                   "scripts/convert.py", "scripts/push_to_hub.py", "scripts/export_onnx.py", "scripts/benchmark.py",
                   "relzoo/benchmarks/common.py"]


def _code_names(path: Path) -> set[str]:
    """String constants (docstrings left out: prose may mention a method), identifiers and imported modules."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.add(node.value)
        elif isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            found.add(node.module or "")
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("module", FAMILY_AGNOSTIC)
def test_family_agnostic_modules_name_no_family(module):
    names = {f.name for f in families() if not f.name.startswith("relzoo_")}
    classes = set()
    for family in families():
        classes |= {family.config_class.__name__, family.model_class.__name__}
        if family.timm_class is not None:
            classes.add(family.timm_class.__name__)
    modules = {f.hub.rsplit(".", 1)[-1] for f in families()} | {
        f.model_class.__module__.rsplit(".", 1)[-1] for f in families()}
    found = _code_names(ROOT / module)
    named = sorted(found & (names | classes) | {n for n in found if n.rsplit(".", 1)[-1] in modules})
    assert not named, f"{module} names families: {named}"


def test_layers_import_without_timm_or_transformers():
    """DESIGN: relzoo.layers is plain torch. With timm and transformers unimportable, the operators import and run;
    the rest of relzoo says what is missing instead of failing at `import relzoo.layers`."""
    import subprocess

    code = textwrap.dedent('''
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("timm", "transformers"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        import torch
        import relzoo.layers as layers
        sa = layers.SelfAttention2d("patchwise", 16, 4, 8, 8, 3).eval()
        assert sa(torch.randn(2, 16, 8, 8)).shape == (2, 8, 8, 8)
        head = layers.CrossAttentionHead(16, 8, 8)
        assert not any(m.split(".")[0] in ("timm", "transformers") for m in sys.modules)
        import relzoo
        try:
            relzoo.SANConfig
        except ImportError as err:
            print(err)
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "relzoo.SANConfig needs" in out.stdout and "only relzoo.layers works without it" in out.stdout


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_new_training_plugin_needs_only_its_own_registration(tmp_path):
    """The classification trainer takes a plug-in it has never heard of: added for training (its parameters get
    --plugin_lr_scale), its loss used, its batch sampler used, its argument checks run, and removed before saving."""
    from safetensors.torch import load_file
    from torch import nn

    from relzoo.models import plugins
    from relzoo.train import ClassifierTrainingArguments, train_classifier

    calls = {"loss": 0, "sampled": 0}

    class Sampler:
        def __init__(self, n):
            self.n = n

        def set_epoch(self, epoch):
            calls["sampled"] += 1

        def __iter__(self):
            g = torch.Generator().manual_seed(calls["sampled"])
            order = torch.randperm(self.n, generator=g).tolist()
            return iter([order[i:i + 8] for i in range(0, self.n - 7, 8)])

        def __len__(self):
            return self.n // 8

    def add(model, args):
        model.toyplug = nn.Linear(1, 1)
        return model

    def remove(model):
        del model.toyplug
        return model

    def loss(net, pixel_values, labels, loss_fn):
        calls["loss"] += 1
        return loss_fn(net(pixel_values), labels) + 0 * net.toyplug.weight.sum()

    def check(args):
        if args.batch_size != 8:
            raise ValueError(f"`batch_size` must be 8 for --plugin toyplug, got {args.batch_size}")

    plugins.register_plugin(plugins.TrainingPlugin(name="toyplug", attribute="toyplug", description="a toy",
                                                   add=add, remove=remove, loss=loss, check_arguments=check,
                                                   batch_sampler=lambda labels, args: Sampler(len(labels))))
    try:
        base = dict(model="test_resnet", dataset="digits", train_samples=64, eval_samples=40, image_size=32,
                    batch_size=8, eval_batch_size=20, epochs=1, max_steps=3, log_every=1, seed=0,
                    recalibrate_bn_batches=0, plugin="toyplug", output_dir=str(tmp_path / "run"))
        with pytest.raises(ValueError, match="`batch_size` must be 8 for --plugin toyplug, got 4"):
            ClassifierTrainingArguments(**{**base, "batch_size": 4})
        with pytest.raises(ValueError, match=r"`plugin_after` is for --plugin batchformer_v2, got it with --plugin "
                                             r"toyplug"):
            ClassifierTrainingArguments(**{**base, "plugin_after": "layer3"})
        res = train_classifier(ClassifierTrainingArguments(**base))
    finally:
        plugins._PLUGINS.pop("toyplug", None)
    assert res["steps"] == 3 and calls["loss"] == 3 and calls["sampled"] >= 1
    assert not any(k.startswith("toyplug") for k in load_file(Path(res["model_dir"]) / "model.safetensors"))


def test_model_kwargs_a_family_recommends_come_from_its_record():
    """The classifier trainer's default model_kwargs (SAN below 128 px: a 3x3 last-stage footprint) come from the SAN
    family's record, not from a SAN branch in the trainer."""
    from relzoo.registry import recommended_model_kwargs
    from relzoo.train import ClassifierTrainingArguments
    from relzoo.train.classification import resolve_model_kwargs

    assert recommended_model_kwargs("san10_pair", 64) == {"kernels": [3, 7, 7, 7, 3]}
    assert recommended_model_kwargs("san10_pair", 128) == {} and recommended_model_kwargs("resnet18", 32) == {}
    args = ClassifierTrainingArguments(model="san10_patch", image_size=96, output_dir="unused")
    assert resolve_model_kwargs(args) == {"kernels": [3, 7, 7, 7, 3]}
    assert resolve_model_kwargs(ClassifierTrainingArguments(model="san10_patch", image_size=96, output_dir="unused",
                                                            model_kwargs='{"kernels": [3, 3, 3, 3, 3]}')) == {
        "kernels": [3, 3, 3, 3, 3]}
