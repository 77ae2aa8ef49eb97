"""CrossTransformers and ProtoNet as transformers models on timm backbones: outputs, set_support, support-set BatchNorm
moments, Auto classes, any backbone (CNN with BatchNormAct, ViT tokens), the official geometry, and bad input."""
import pytest
import timm
import torch
from transformers import AutoConfig, AutoModel

from relzoo import (
    AutoModelForFewShotClassification,
    CrossTransformerConfig,
    CrossTransformerForFewShotClassification,
    ProtoNetConfig,
    ProtoNetForFewShotClassification,
)
from relzoo.models.fewshot import SupportBatchNorm

TINY = dict(backbone="test_resnet", backbone_kwargs={"output_stride": 8})
MODELS = [(CrossTransformerForFewShotClassification, CrossTransformerConfig(key_dim=16, value_dim=8, **TINY)),
          (ProtoNetForFewShotClassification, ProtoNetConfig(**TINY))]


def _episode(shots=(1, 3, 2), queries=4, size=32, qsize=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([c for c, k in enumerate(shots) for _ in range(k)])
    return (torch.randn(len(labels), 3, size, size, generator=g), labels,
            torch.randn(queries, 3, qsize, qsize, generator=g), torch.randint(0, len(shots), (queries,), generator=g))


@pytest.mark.parametrize("cls, config", MODELS, ids=["ctx", "protonet"])
def test_forward_set_support_and_auto_round_trip(cls, config, tmp_path):
    torch.manual_seed(0)
    model = cls(config)
    support, labels, query, qlabels = _episode()
    model.train()
    out = model(query_pixel_values=query, support_pixel_values=support, support_labels=labels, query_labels=qlabels)
    assert out.logits.shape == (4, 3) and out.loss.shape == () and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        direct = model(query, support, labels).logits
        model.set_support(support, labels)
        cached = [model(query_pixel_values=query[i:i + 2]).logits for i in (0, 2)]
    torch.testing.assert_close(torch.cat(cached), direct)
    assert model(query).query_feature_size == (5, 5) and model(query).support_feature_size == (4, 4)
    model.clear_support()
    with pytest.raises(ValueError, match="no support set"):
        model(query)
    model.save_pretrained(tmp_path)
    for auto in (AutoModel, AutoModelForFewShotClassification):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert type(loaded) is cls
        with torch.no_grad():
            torch.testing.assert_close(loaded(query, support, labels).logits, direct)
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(config)


def test_ctx_attentions_and_return_dict_false():
    model = CrossTransformerForFewShotClassification(MODELS[0][1]).eval()
    support, labels, query, _ = _episode()
    with torch.no_grad():
        out = model(query, support, labels, output_attentions=True)
        plain = model(query, support, labels, return_dict=False)
    assert out.attentions.shape == (4, 25, 6, 16)
    for c in range(3):
        sums = out.attentions[:, :, labels == c].sum((-1, -2))
        torch.testing.assert_close(sums, torch.ones_like(sums))
    torch.testing.assert_close(plain[0], out.logits)


def test_ctx_reference_implementation_agrees():
    torch.manual_seed(0)
    fast = CrossTransformerForFewShotClassification(MODELS[0][1]).double().eval()
    ref = CrossTransformerForFewShotClassification(
        CrossTransformerConfig(key_dim=16, value_dim=8, implementation="reference", **TINY)).double().eval()
    ref.load_state_dict(fast.state_dict())
    support, labels, query, _ = (t.double() if t.is_floating_point() else t for t in _episode())
    with torch.no_grad():
        torch.testing.assert_close(fast(query, support, labels).logits, ref(query, support, labels).logits)


def _manual_support_bn(net, support, query):
    """Queries through `net` (conv, BN, ReLU, conv, BN) normalised with the support batch's moments, by hand."""
    conv1, bn1, relu, conv2, bn2 = net
    s1 = conv1(support)
    m1, v1 = s1.mean((0, 2, 3)), s1.var((0, 2, 3), unbiased=False)
    s2 = conv2(relu(bn1(s1)))
    m2, v2 = s2.mean((0, 2, 3)), s2.var((0, 2, 3), unbiased=False)
    norm = lambda x, m, v, bn: (x - m[:, None, None]) / torch.sqrt(v[:, None, None] + bn.eps) * bn.weight[:, None, None] \
        + bn.bias[:, None, None]  # noqa: E731
    return norm(conv2(relu(norm(conv1(query), m1, v1, bn1))), m2, v2, bn2)


def test_support_batchnorm_normalises_queries_with_support_moments():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 5, 3), torch.nn.BatchNorm2d(5)).double().train()
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    support = torch.randn(6, 3, 9, 9, dtype=torch.float64, requires_grad=True)
    query = (torch.randn(3, 3, 11, 11, dtype=torch.float64) * 3 + 2).requires_grad_()
    expected = _manual_support_bn(net, support, query)
    bn = SupportBatchNorm(net)
    with bn.recording():
        net(support)
    tracked = int(net[1].num_batches_tracked)
    stats = net[1].running_mean.clone()
    with bn.applying():
        got = net(query)
    torch.testing.assert_close(got, expected)
    assert net.training and net[1].training                               # modes restored
    assert int(net[1].num_batches_tracked) == tracked and torch.equal(net[1].running_mean, stats)  # queries leave them
    grad = torch.autograd.grad(got.sum(), support)[0]                      # gradients flow through the moments
    assert grad.abs().sum() > 0


def test_support_batchnorm_covers_timm_batchnorm_act():
    """timm's BatchNormAct2d (norm, then dropout and activation inside the module): same semantics."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    norm = BatchNormAct2d(4, act_layer=torch.nn.ReLU).double().train()
    support, query = torch.randn(5, 4, 3, 3, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64) + 1
    bn = SupportBatchNorm(norm)
    with bn.recording():
        norm(support)
    with bn.applying():
        got = norm(query)
    m, v = support.mean((0, 2, 3)), support.var((0, 2, 3), unbiased=False)
    expected = torch.relu((query - m[:, None, None]) / torch.sqrt(v[:, None, None] + norm.eps))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("mode", ["support", "batch"])
def test_query_bn_stats_option(mode):
    """In training, `support` normalises queries with the support moments: a query batch that is the support batch scaled by 2
    (bias-free convolutions) gets other features than the support; with `batch` (own statistics) the same ones."""
    torch.manual_seed(0)
    model = ProtoNetForFewShotClassification(ProtoNetConfig(query_bn_stats=mode, **TINY)).double().train()
    support, labels, _, _ = _episode(shots=(2, 2))
    support = support.double()
    tracked = [int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    support_moments = SupportBatchNorm(model.backbone)
    with support_moments.recording():
        s_feat = model.backbone.forward_features(support)
    query_feat = model._query_features(support * 2, {"moments": support_moments if mode == "support" else None})
    same = torch.allclose(query_feat, s_feat, rtol=1e-3, atol=1e-4)  # (BatchNorm eps aside)
    assert same is (mode == "batch")
    after = [int(m.num_batches_tracked) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(a - b == (1 if mode == "support" else 2) for a, b in zip(after, tracked))


@pytest.mark.parametrize("backbone, kwargs, side", [("test_efficientnet", {}, 1), ("test_vit", {"img_size": 32}, 2)])
def test_any_timm_backbone(backbone, kwargs, side):
    """CNNs with BatchNormAct2d and ViTs (tokens laid back on their grid, prefix tokens dropped) both work."""
    torch.manual_seed(0)
    model = CrossTransformerForFewShotClassification(CrossTransformerConfig(backbone=backbone, backbone_kwargs=kwargs,
                                                                            key_dim=8, value_dim=8)).train()
    support, labels, query, qlabels = _episode(qsize=32)
    out = model(query, support, labels, qlabels)
    out.loss.backward()
    assert out.logits.shape == (4, 3) and out.query_feature_size == (side, side)


def test_official_geometry_and_head_size():
    """Default config = the official model: resnet34 at output stride 16 gives 14x14x512 maps at 224 px; the head is
    two bias-free 512->128 projections (131,072 parameters)."""
    config = CrossTransformerConfig()
    assert config.backbone == "resnet34" and config.backbone_kwargs == {"output_stride": 16}
    assert (config.key_dim, config.value_dim, config.query_bn_stats) == (128, 128, "support")
    model = CrossTransformerForFewShotClassification(config).eval()
    assert sum(p.numel() for p in model.head.parameters()) == 131072
    reference = timm.create_model("resnet34", num_classes=0, global_pool="", output_stride=16)
    assert sum(p.numel() for p in model.backbone.parameters()) == sum(p.numel() for p in reference.parameters())
    with torch.no_grad():
        assert model.embed(torch.randn(1, 3, 224, 224)).shape == (1, 512, 14, 14)


@pytest.mark.parametrize("change, error, message", [
    (dict(support_pixel_values=torch.zeros(0, 3, 32, 32), support_labels=torch.zeros(0, dtype=torch.long)),
     ValueError, "support set is empty"),
    (dict(support_labels=torch.tensor([0, 1, 1, 1, 2, 5])), ValueError, r"class\(es\) \[3, 4\] have none"),
    (dict(support_labels=torch.tensor([0, 1, 1, 1, 2, -1])), ValueError, "class indices in 0..2"),
    (dict(support_labels=torch.tensor([0, 1, 2])), ValueError, r"support_labels` must have shape \(6,\)"),
    (dict(query_labels=torch.tensor([0, 1])), ValueError, r"query_labels` must have shape \(4,\)"),
    (dict(query_labels=torch.tensor([0, 1, 3, 0])), ValueError, "query_labels` must be class indices in 0..2"),
    (dict(query_pixel_values=torch.zeros(4, 1, 40, 40)), ValueError, "query_pixel_values` must have 3 channels"),
    (dict(support_pixel_values=torch.zeros(6, 3, 32, 32, dtype=torch.uint8)), TypeError, "floating-point"),
    (dict(query_pixel_values=torch.zeros(4, 3, 40, 40, dtype=torch.float64)), TypeError, "model's dtype"),
    (dict(support_pixel_values=torch.zeros(6, 3, 32)), ValueError, "must be 4D"),
    (dict(support_labels=None), ValueError, "support_labels` is missing"),
])
@pytest.mark.parametrize("cls, config", MODELS, ids=["ctx", "protonet"])
def test_bad_input_is_named(cls, config, change, error, message):
    model = cls(config)
    support, labels, query, qlabels = _episode()
    kwargs = dict(query_pixel_values=query, support_pixel_values=support, support_labels=labels, query_labels=qlabels)
    kwargs.update(change)
    with pytest.raises(error, match=message):
        model(**kwargs)


@pytest.mark.parametrize("field, value, message", [
    ("backbone", "no_such_net", "timm model name"), ("key_dim", 0, "key_dim"), ("query_bn_stats", "ema", "support"),
    ("backbone_kwargs", {"num_classes": 3}, "must not set 'num_classes'"), ("chunk_size", -1, "chunk_size"),
    ("implementation", "cuda", "implementation"), ("num_channels", 0, "num_channels"),
    ("head_init", "he", "`head_init` must be one of"), ("backbone_init", "kaiming", "`backbone_init` must be one of"),
    ("test_bn_stats", "ema", "`test_bn_stats` must be one of"),
])
def test_bad_config_is_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        CrossTransformerForFewShotClassification(CrossTransformerConfig(**{**TINY, field: value}))


@pytest.mark.parametrize("change", [dict(query_pixel_values=torch.zeros(4, 1, 40, 40)),
                                    dict(query_labels=torch.tensor([0, 1, 3, 0]))])
def test_bad_queries_fail_before_any_backbone_runs(change):
    model = ProtoNetForFewShotClassification(ProtoNetConfig(**TINY))
    calls, run = [], model.backbone.forward_features
    model.backbone.forward_features = lambda x: calls.append(1) or run(x)
    support, labels, query, qlabels = _episode()
    kwargs = dict(query_pixel_values=query, support_pixel_values=support, support_labels=labels, query_labels=qlabels)
    with pytest.raises(ValueError, match="query"):
        model(**{**kwargs, **change})
    assert calls == []
    model(**kwargs)
    assert calls == [1, 1]                                    # (the spy does see the backbone run: support, queries)


@pytest.mark.parametrize("cls,config_cls", [(CrossTransformerForFewShotClassification, CrossTransformerConfig),
                                            (ProtoNetForFewShotClassification, ProtoNetConfig)])
def test_pretrained_backbone_weights_survive_post_init(monkeypatch, cls, config_cls):
    """With backbone_pretrained=True the weights timm loads are kept (post_init() used to re-initialise them)."""
    create = timm.create_model

    def pretend_pretrained(*args, **kwargs):  # no network here: mark the weights instead of downloading them
        model = create(*args, **{**kwargs, "pretrained": False})
        with torch.no_grad():
            model.conv1.weight.fill_(0.123 if kwargs.get("pretrained") else 0.0)
        return model

    monkeypatch.setattr(timm, "create_model", pretend_pretrained)
    kept = cls(config_cls(backbone="resnet18", backbone_pretrained=True))
    assert bool((kept.backbone.conv1.weight == 0.123).all())
    scratch = cls(config_cls(backbone="resnet18"))
    assert not bool((scratch.backbone.conv1.weight == 0).all())      # from scratch: the official initialisation


def test_initialisation_choices():
    """backbone_init "official": truncated normal std 0.1 cut at 2 std for every convolution, BatchNorm 1 / 0;
    "timm": timm's own (zero-initialised last BatchNorm of each residual block). head_init "small": N(0, 1/C) keys,
    N(0, 1/(C d_v)) values; "official": the backbone's truncated normal."""
    torch.manual_seed(0)
    official = CrossTransformerForFewShotClassification(CrossTransformerConfig(backbone="resnet18"))
    convs = [m.weight for m in official.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(float(w.detach().abs().max()) <= 0.2 for w in convs)
    weights = torch.cat([w.flatten() for w in convs])
    assert abs(float(weights.std()) - 0.0880) < 0.002       # std of N(0, 0.1) cut at +-0.2
    norms = [m for m in official.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in norms)
    keys, values = official.head.key_proj.weight, official.head.value_proj.weight
    assert abs(float(keys.std()) * 512 ** 0.5 - 1) < 0.02 and abs(float(values.std()) * (512 * 128) ** 0.5 - 1) < 0.02
    timm_init = CrossTransformerForFewShotClassification(CrossTransformerConfig(
        backbone="resnet18", backbone_init="timm", head_init="official"))
    assert bool((timm_init.backbone.layer1[0].bn2.weight == 0).all())   # timm's zero_init_last kept
    for proj in (timm_init.head.key_proj, timm_init.head.value_proj):
        assert float(proj.weight.abs().max()) <= 0.2 and abs(float(proj.weight.std()) - 0.0880) < 0.004
    proto = ProtoNetForFewShotClassification(ProtoNetConfig(backbone="resnet18"))
    assert float(proto.backbone.conv1.weight.abs().max()) <= 0.2
    assert (proto.config.test_bn_stats, official.config.test_bn_stats) == ("support", "running")


def _digit_episode(shots=5, queries=3, size=64):
    """A 5-way episode of scikit-learn digits (0-4) at ``size`` px, in [-1, 1] like the episode transform."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 8 - 1
    def take(c, n, start):
        x = images[torch.tensor(digits.target) == c][start:start + n][:, None].expand(-1, 3, -1, -1)
        return torch.nn.functional.interpolate(x, size=size, mode="bilinear")
    support = torch.cat([take(c, shots, 0) for c in range(5)])
    query = torch.cat([take(c, queries, 20) for c in range(5)])
    return support, torch.arange(5).repeat_interleave(shots), query


def _attention_spread(head_init: str):
    """Mean largest weight, mean normalised entropy (1: uniform) and the smallest mean share of a class's attention
    that one of its shots receives (uniform: 1/5), for the default config at its first training step."""
    torch.manual_seed(0)
    model = CrossTransformerForFewShotClassification(CrossTransformerConfig(head_init=head_init)).train()
    support, labels, query = _digit_episode()
    with torch.no_grad():
        attentions = model(query, support, labels, output_attentions=True).attentions    # (Q, P, S, M)
    largest, entropy, share = [], [], []
    for c in range(5):
        weights = attentions[:, :, labels == c]                                          # (Q, P, K, M)
        flat = weights.flatten(2)
        largest.append(flat.max(-1).values.mean())
        entropy.append((-(flat.clamp_min(1e-30).log() * flat).sum(-1) / torch.log(torch.tensor(flat.shape[-1]))).mean())
        share.append(weights.sum(-1).mean((0, 1)).min())
    return float(torch.stack(largest).mean()), float(torch.stack(entropy).mean()), float(torch.stack(share).min())


def test_default_attention_at_initialisation_is_not_saturated():
    """The default config (resnet34 at output stride 16) must start with spread-out attention: with one-hot attention
    the key projection gets almost no gradient and 5-shot is no better than 1-shot (issue 20). The released
    initialisation (head_init="official") is saturated by the same measures, so the test can tell them apart."""
    largest, entropy, _ = _attention_spread("small")
    assert largest < 0.7 and entropy > 0.2, (largest, entropy)
    largest, entropy, _ = _attention_spread("official")
    assert largest > 0.8 and entropy < 0.1, (largest, entropy)


def test_five_shot_logits_use_every_shot():
    """With the default config every shot of a class shapes that class's logits: each shot gets a real share of its
    class's attention (uniform would be 1/5; the released initialisation's one-hot attention gives some shots
    almost none), every shot's features get a gradient from its class's logits, and other classes' shots none."""
    share = _attention_spread("small")[2]
    assert share > 1e-3 and _attention_spread("official")[2] < 1e-3
    torch.manual_seed(0)
    model = CrossTransformerForFewShotClassification(CrossTransformerConfig()).train()
    support, labels, query = _digit_episode()
    with torch.no_grad():
        moments = SupportBatchNorm(model.backbone)
        with moments.recording():
            features = model.backbone.forward_features(support)
        with moments.applying():
            query_features = model.backbone.forward_features(query)
    features.requires_grad_(True)
    logits, _ = model.logits_from_features(query_features, features, labels)
    for c in range(5):
        grad = torch.autograd.grad(logits[:, c].sum(), features, retain_graph=True)[0].flatten(1).norm(dim=1)
        assert float(grad[labels != c].max()) == 0 and float(grad[labels == c].min()) > 0, (c, grad)


@pytest.mark.parametrize("mode", ["running", "support"])
def test_test_bn_stats_option(mode):
    """In evaluation, `running` gives each image features of its own (episode-independent: an evaluation may embed
    images once); `support` (the official ProtoNet) normalises with the episode's support moments, so the same
    query gets other features with another support set, and running statistics never change."""
    torch.manual_seed(0)
    model = ProtoNetForFewShotClassification(ProtoNetConfig(test_bn_stats=mode, **TINY)).eval()
    assert model.episode_independent_features is (mode == "running")
    support, labels, query, _ = _episode()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with torch.no_grad():
        a = model(query, support, labels, output_hidden_states=True).hidden_states[0]
        b = model(query, support * 3 + 1, labels, output_hidden_states=True).hidden_states[0]
        own = model.embed(query)
    assert torch.allclose(a, b) is (mode == "running")
    assert torch.allclose(a, own) is (mode == "running")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    if mode == "support":   # the support set itself is normalised with its own moments, as the queries are
        moments = SupportBatchNorm(model.backbone, in_eval=True)
        first = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
        seen = []
        handle = first.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        with torch.no_grad(), moments.recording():
            model.backbone.forward_features(support)
        handle.remove()
        mean, var = moments.moments[id(first)]
        torch.testing.assert_close(mean, seen[0].mean((0, 2, 3)))
        torch.testing.assert_close(var, seen[0].var((0, 2, 3), unbiased=False))
        import copy

        batch_stats = copy.deepcopy(model.backbone).train()    # BatchNorm with batch statistics: the same features
        with torch.no_grad():
            expected = batch_stats.forward_features(support)
            got = model(query, support, labels, output_hidden_states=True).support_hidden_states[0]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_huge_support_labels_are_refused_before_counting_with_a_short_message():
    """A label of 30,000,000 built a 288-million-character message and 3 GB of memory: the range is checked first."""
    import tracemalloc

    from relzoo.layers.crosstransformer import check_support_labels

    labels = torch.tensor([0, 1, 2, 30_000_000])
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"at most 3 for 4 support images; got values in 0..30000000") as err:
        check_support_labels(labels, 4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(str(err.value)) < 200 and peak < 1e6
    with pytest.raises(ValueError, match=r"class\(es\) \[0, 2, 4, .*, \.\.\. 490 more\] have none") as err:
        check_support_labels(torch.arange(1, 1000, 2), 500, num_classes=1000)
    assert len(str(err.value)) < 400
