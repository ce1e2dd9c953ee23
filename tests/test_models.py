"""Tests for jaxdd.models: the Model contract on every registry input shape, the initialisations,
the norm layers, the reference's feature sizes, the adapters and (with torch) the reference nets."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdd import models
from jaxdd.models import ARCHITECTURES, from_functions, from_linen, from_nnx, get_model
from jaxdd.types import Model

SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]
# Small widths where the architecture has a width option; the others run at reference size.
SMALL = {"ConvNet": dict(width=8), "MLP": dict(width=16), "LeNet": {}, "AlexNet": {},
         "VGG11": dict(width=8), "ResNet18": dict(width=8), "AlexCifarNet": {}}
FEATURES = {  # embed width for (arch, shape) under SMALL
    "ConvNet": {(8, 8, 1): 8 * 4, (28, 28, 1): 8 * 16, (32, 32, 3): 8 * 16},  # depth 2 on 8x8
    "MLP": 16, "LeNet": 84, "AlexNet": 3072, "VGG11": 64, "ResNet18": 64, "AlexCifarNet": 192,
}


def _allclose(a, b, rtol=1e-5, atol=1e-5):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol, atol=atol), a, b)


def _images(shape, n=2, seed=1):
    return jax.random.normal(jax.random.key(seed), (n,) + shape)


def _xent(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def _contract_program(model, labels):
    """Two inits (mapped and vmapped), logits (mapped and vmapped), features and an input gradient."""

    def run(keys, x):
        separate = jax.lax.map(model.init, keys)  # two unbatched init calls
        batched = jax.vmap(model.init)(keys)
        logits = jax.lax.map(lambda p: model.apply(p, x), separate)
        vlogits = jax.vmap(model.apply, in_axes=(0, None))(separate, x)
        p0 = jax.tree.map(lambda a: a[0], separate)
        grad = jax.grad(lambda x: _xent(model.apply(p0, x), labels))(x)
        return separate, batched, logits, vlogits, model.embed(p0, x), grad

    return run


def _features(arch, shape):
    return FEATURES[arch][shape] if isinstance(FEATURES[arch], dict) else FEATURES[arch]


@pytest.mark.parametrize("arch", list(SMALL))
def test_model_contract(arch):
    """On 8x8x1 inputs: finiteness, jit == eager, vmap == separate calls, input gradient: one compile.

    The agreements checked here do not depend on the input size; the shapes do, and the next test
    traces the same program on the MNIST and CIFAR shapes (compiling it there tripled this file's time).
    """
    shape = SHAPES[0]
    model = get_model(arch, shape, 10, **SMALL[arch])
    assert isinstance(model, Model)
    keys = jax.random.split(jax.random.key(0))
    x = _images(shape)
    separate, batched, logits, vlogits, feats, grad = jax.jit(_contract_program(model, jnp.array([3, 7])))(keys, x)
    assert logits.shape == (2, 2, 10) and logits.dtype == jnp.float32
    assert feats.shape == (2, _features(arch, shape)) and grad.shape == x.shape
    for a in (logits, feats, grad):
        assert bool(jnp.all(jnp.isfinite(a)))
    assert float(jnp.abs(grad).max()) > 0
    _allclose(batched, separate, rtol=1e-6, atol=0)
    assert not np.allclose(separate["classifier"]["kernel"][0], separate["classifier"]["kernel"][1])
    _allclose(vlogits, logits, rtol=1e-4)
    for i in range(2):  # eager (op-by-op) calls agree with the compiled program
        params = jax.tree.map(lambda a: a[i], separate)
        _allclose(model.apply(params, x), logits[i], rtol=1e-4)
    _allclose(model.embed(jax.tree.map(lambda a: a[0], separate), x), feats, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("arch", list(SMALL))
def test_model_contract_shapes(arch, shape):
    """On MNIST and CIFAR shapes: the contract program traces, with the same shapes and dtypes."""
    model = get_model(arch, shape, 10, **SMALL[arch])
    keys = jax.random.split(jax.random.key(0))
    x = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
    separate, batched, logits, vlogits, feats, grad = jax.eval_shape(
        _contract_program(model, jnp.array([3, 7])), keys, x)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), batched) == jax.tree.map(lambda a: (a.shape, a.dtype), separate)
    assert logits.shape == vlogits.shape == (2, 2, 10) and logits.dtype == jnp.float32
    assert feats.shape == (2, _features(arch, shape)) and grad.shape == x.shape


def test_reference_feature_sizes_and_parameter_counts():
    count = lambda p: sum(a.size for a in jax.tree.leaves(p))
    for shape, n_params in (((28, 28, 1), 317_706), ((32, 32, 3), 320_010)):
        model = get_model("ConvNet", shape, 10)
        params = jax.eval_shape(model.init, jax.random.key(0))
        assert params["classifier"]["kernel"].shape == (128 * 4 * 4, 10)
        assert jax.eval_shape(model.embed, params, jnp.zeros((2,) + shape)).shape == (2, 2048)
        assert count(params) == n_params
    # 8x8 digits: pad 1 everywhere, default depth 2 (8 -> 4 -> 2); depth 3 on request (-> 1).
    model = get_model("ConvNet", (8, 8, 1), 10)
    assert jax.eval_shape(model.init, jax.random.key(0))["classifier"]["kernel"].shape == (128 * 2 * 2, 10)
    deep = get_model("ConvNetD3", (8, 8, 1), 10)
    assert jax.eval_shape(deep.init, jax.random.key(0))["classifier"]["kernel"].shape == (128, 10)
    # DD's AlexCifarNet has 1,756,426 parameters on CIFAR-10.
    alex = jax.eval_shape(get_model("AlexCifarNet", (32, 32, 3), 10).init, jax.random.key(0))
    assert count(alex) == 1_756_426 and alex["fc1"]["kernel"].shape == (4096, 384)
    with pytest.raises(ValueError, match="depth"):
        bad = get_model("ConvNet", (8, 8, 1), 10, depth=4)
        jax.eval_shape(bad.init, jax.random.key(0))


def test_convnet_default_depth_keeps_every_map_at_least_4x4():
    # Every conv + norm of the default ConvNet sees >= 4x4 maps; one more layer would not.
    for (h, w), depth in (((32, 32), 3), ((28, 28), 3), ((16, 16), 3), ((8, 8), 2), ((12, 9), 2),
                          ((4, 4), 1), ((2, 2), 1)):
        assert models.convnet_depth(h, w) == depth, (h, w)
        size = 32 if (h, w) == (28, 28) else min(h, w)
        assert depth == 1 or size // 2 ** (depth - 1) >= 4
        assert depth == 3 or size // 2 ** depth < 4
    assert models.ConvNet(num_classes=10).depth is None  # resolved from the input at call time


def _layers(params, prefix=()):
    """Yield (path, layer dict) for every dict holding a 'kernel' or a 'scale'."""
    for name, value in params.items():
        if "kernel" in value or "scale" in value:
            yield prefix + (name,), value
        else:
            yield from _layers(value, prefix + (name,))


@pytest.mark.parametrize("arch", ["ConvNet", "ResNet18", "AlexCifarNet", "MLP"])
def test_torch_init_bounds(arch):
    kw = {"ResNet18": dict(width=8)}.get(arch, {})  # AlexCifarNet: 'torch' overrides its 'dd'
    params = jax.jit(get_model(arch, (32, 32, 3), 10, init="torch", **kw).init)(jax.random.key(0))
    n_kernels = 0
    for path, layer in _layers(params):
        if "kernel" in layer:
            n_kernels += 1
            w = np.asarray(layer["kernel"])
            bound = 1.0 / math.sqrt(np.prod(w.shape[:-1]))  # fan_in = kh * kw * in (or in)
            assert np.abs(w).max() <= bound, path
            assert np.abs(w).max() > 0.9 * bound, path  # uniform: fills its range
            if "bias" in layer:
                b = np.asarray(layer["bias"])
                assert np.abs(b).max() <= bound and np.abs(b).max() > 0, path
        else:
            np.testing.assert_array_equal(layer["scale"], 1.0)
            np.testing.assert_array_equal(layer["bias"], 0.0)
    assert n_kernels > 0


def test_torch_init_variance_and_other_schemes():
    key = jax.random.key(3)
    w = jax.jit(get_model("ConvNet", (32, 32, 3), 10).init)(key)["conv1"]["kernel"]  # 147,456 entries
    fan_in = 3 * 3 * 128
    assert abs(float(jnp.var(w)) * 3 * fan_in - 1.0) < 0.02
    assert abs(float(jnp.mean(w))) < 1e-3 / math.sqrt(fan_in) * 10

    dd = jax.jit(get_model("AlexCifarNet", (32, 32, 3), 10).init)(key)  # DD's init is the default
    assert abs(float(jnp.std(dd["fc1"]["kernel"])) / math.sqrt(2 / (4096 + 384)) - 1) < 0.02
    for name in ("conv1", "conv2", "fc1", "fc2", "classifier"):
        np.testing.assert_array_equal(dd[name]["bias"], 0.0)
    conv_std = math.sqrt(2 / (5 * 5 * 64 + 5 * 5 * 64))
    assert abs(float(jnp.std(dd["conv2"]["kernel"])) / conv_std - 1) < 0.03

    flax_p = jax.jit(get_model("ConvNet", (32, 32, 3), 10, init="flax").init)(key)
    np.testing.assert_array_equal(flax_p["conv1"]["bias"], 0.0)
    assert abs(float(jnp.var(flax_p["conv1"]["kernel"])) * fan_in - 1.0) < 0.05  # lecun_normal


def _norm_output(norm, x, width=8):
    module = models.ConvNet(num_classes=10, width=width, depth=1, norm=norm, pool="none")
    variables = jax.jit(module.init)(jax.random.key(0), x)
    _, state = module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    conv = state["intermediates"]["conv0"]["__call__"][0]
    out = state["intermediates"]["norm0"]["__call__"][0] if norm != "none" else conv
    return np.asarray(conv, np.float64), np.asarray(out, np.float64)


@pytest.mark.parametrize("norm", ["instance", "group", "layer", "batch"])
def test_norms_normalise_the_right_axes(norm):
    x = 3.0 + 2.0 * _images((8, 8, 3), n=3)
    conv, out = _norm_output(norm, x)
    n, h, w, c = conv.shape
    if norm == "instance":  # GroupNorm with groups = channels: per sample, per channel
        grouped, axes = conv.reshape(n, h, w, c, 1), (1, 2, 4)
    elif norm == "group":  # 4 groups of c / 4 consecutive channels
        grouped, axes = conv.reshape(n, h, w, 4, c // 4), (1, 2, 4)
    elif norm == "layer":  # over (C, H, W) per sample
        grouped, axes = conv.reshape(n, h, w, c, 1), (1, 2, 3, 4)
    else:  # batch statistics over (N, H, W) per channel
        grouped, axes = conv.reshape(n, h, w, c, 1), (0, 1, 2, 4)
    mean = grouped.mean(axes, keepdims=True)
    var = grouped.var(axes, keepdims=True)
    expected = ((grouped - mean) / np.sqrt(var + 1e-5)).reshape(conv.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_batch_norm_keeps_apply_pure():
    model = get_model("ConvNetBN", (8, 8, 1), 10, width=8)
    params = jax.jit(model.init)(jax.random.key(0))
    # Parameters only (no batch_stats collection); depth 2 is ConvNet's default on 8x8 inputs.
    assert set(params) == {"conv0", "norm0", "conv1", "norm1", "classifier"}
    x = _images((8, 8, 1), n=4)
    _allclose(model.apply(params, x), jax.jit(model.apply)(params, x), rtol=1e-4)


def test_variant_registry():
    expected = {
        "ConvNetW32": dict(width=32), "ConvNetW256": dict(width=256), "ConvNetD1": dict(depth=1),
        "ConvNetD4": dict(depth=4), "ConvNetAS": dict(act="sigmoid"), "ConvNetAR": dict(act="relu"),
        "ConvNetAL": dict(act="leaky_relu"), "ConvNetASwish": dict(act="swish"),
        "ConvNetNN": dict(norm="none"), "ConvNetBN": dict(norm="batch"),
        "ConvNetLN": dict(norm="layer"), "ConvNetIN": dict(norm="instance"),
        "ConvNetGN": dict(norm="group"), "ConvNetNP": dict(pool="none"),
        "ConvNetMP": dict(pool="max"), "ConvNetAP": dict(pool="avg"),
        "VGG11BN": dict(norm="batch"), "ResNet18BN": dict(norm="batch"),
        "AlexNetBN": dict(norm="batch"),
    }
    for name, fields in expected.items():
        module = ARCHITECTURES[name](num_classes=10)
        assert {k: getattr(module, k) for k in fields} == fields, name
    assert models.list_architectures() == sorted(ARCHITECTURES)
    for name in ("ConvNetW64", "ConvNetW128", "ConvNetD2", "ConvNetD3"):
        assert name in ARCHITECTURES
    x = jnp.zeros((2, 32, 32, 3))
    for name in models.list_architectures():
        model = get_model(name, (32, 32, 3), 10)
        params = jax.eval_shape(model.init, jax.random.key(0))
        assert jax.eval_shape(model.apply, params, x).shape == (2, 10), name
    np_params = jax.eval_shape(get_model("ConvNetNP", (32, 32, 3), 10).init, jax.random.key(0))
    assert np_params["classifier"]["kernel"].shape == (128 * 32 * 32, 10)
    ln_params = jax.eval_shape(get_model("ConvNetLN", (28, 28, 1), 10).init, jax.random.key(0))
    assert ln_params["norm0"]["scale"].shape == (32, 32, 128)  # per-element affine over (C, H, W)


def test_activations_and_reference_aliases():
    x = _images((8, 8, 1))
    outs = {}
    params = jax.jit(get_model("ConvNet", (8, 8, 1), 10, width=8, depth=1).init)(jax.random.key(0))
    for act in ("relu", "sigmoid", "leaky_relu", "swish"):
        outs[act] = get_model("ConvNet", (8, 8, 1), 10, width=8, depth=1, act=act).apply(params, x)
    assert not np.allclose(outs["relu"], outs["sigmoid"])
    assert not np.allclose(outs["relu"], outs["leaky_relu"])
    alias = get_model("ConvNet", (8, 8, 1), 10, width=8, depth=1, act="leakyrelu",
                      norm="instancenorm", pool="avgpooling")
    _allclose(alias.apply(params, x), outs["leaky_relu"])


def test_errors():
    with pytest.raises(ValueError, match="unknown architecture 'Nope'.*ConvNet.*ResNet18"):
        get_model("Nope", (32, 32, 3), 10)
    with pytest.raises(ValueError, match="init"):
        get_model("ConvNet", (32, 32, 3), 10, init="xavier")
    with pytest.raises(ValueError, match="norm"):
        get_model("ConvNet", (32, 32, 3), 10, norm="weird")
    with pytest.raises(ValueError, match="activation"):
        get_model("ConvNet", (32, 32, 3), 10, act="tanh")
    with pytest.raises(ValueError, match="image_shape"):
        get_model("ConvNet", (32, 32), 10)


# ----------------------------------------------------------------------------- adapters


class _TinyLinen(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(self.features(x))

    def features(self, x):
        return x.reshape(x.shape[0], -1)


class _TinyNNX(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(4 * 4 * 1, 5, rngs=rngs)
        self.out = nnx.Linear(5, 3, rngs=rngs)

    def features(self, x):
        return nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))

    def __call__(self, x):
        return self.out(self.features(x))


def _check_pair(model, x, n_out=3):
    k0, k1 = jax.random.split(jax.random.key(0))
    p0 = model.init(k0)
    y = model.apply(p0, x)
    assert y.shape == (x.shape[0], n_out)
    _allclose(jax.jit(model.apply)(p0, x), y)
    stacked = jax.vmap(model.init)(jnp.stack([k0, k1]))
    ys = jax.vmap(model.apply, in_axes=(0, None))(stacked, x)
    _allclose(ys[0], y)
    g = jax.grad(lambda x: model.apply(p0, x).sum())(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
    return stacked, ys


def test_from_linen():
    x = _images((4, 4, 1))
    model = from_linen(_TinyLinen(), x, embed_method="features")
    _, ys = _check_pair(model, x)
    assert not np.allclose(ys[0], ys[1])
    assert model.embed(model.init(jax.random.key(0)), x).shape == (2, 16)
    with pytest.raises(ValueError, match="batch_stats"):
        from_linen(nn.BatchNorm(use_running_average=False), x)


def test_from_nnx_factory_and_instance():
    x = _images((4, 4, 1))
    model = from_nnx(lambda rngs: _TinyNNX(rngs), embed_method="features")
    stacked, ys = _check_pair(model, x)
    assert not np.allclose(ys[0], ys[1])
    assert model.embed(model.init(jax.random.key(0)), x).shape == (2, 5)
    instance = _TinyNNX(nnx.Rngs(7))
    fixed = from_nnx(instance)
    _allclose(fixed.apply(fixed.init(jax.random.key(0)), x), instance(x))
    _allclose(fixed.init(jax.random.key(0)), fixed.init(jax.random.key(1)))


def test_from_functions():
    def init(key):
        return {"w": jax.random.normal(key, (16, 3)), "b": jnp.zeros(3)}

    def apply(p, x):
        return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]

    x = _images((4, 4, 1))
    model = from_functions(init, apply)
    assert model.embed is None
    _check_pair(model, x)
    with pytest.raises(TypeError):
        from_functions(init, 3)


# ----------------------------------------------------------------------------- vs PyTorch


def _torch_convnet(torch, channel, num_classes, width, depth, norm, im_size):
    """DC's ConvNet (networks.py), transcribed: the reference for logits equality."""
    tnn = torch.nn
    layers, in_ch = [], channel
    shape = [channel, 32, 32] if im_size == 28 else [channel, im_size, im_size]
    for d in range(depth):
        layers.append(tnn.Conv2d(in_ch, width, 3, padding=3 if channel == 1 and d == 0 else 1))
        shape[0] = width
        layers.append({"instance": lambda: tnn.GroupNorm(width, width, affine=True),
                       "group": lambda: tnn.GroupNorm(4, width, affine=True),
                       "layer": lambda: tnn.LayerNorm(list(shape), elementwise_affine=True),
                       "batch": lambda: tnn.BatchNorm2d(width, affine=True)}[norm]())
        layers += [tnn.ReLU(), tnn.AvgPool2d(2, 2)]
        shape[1] //= 2
        shape[2] //= 2
        in_ch = width
    return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(shape[0] * shape[1] * shape[2],
                                                              num_classes))


def _to_flax(torch_module):
    """Map a torch Sequential's conv / norm / linear parameters to jaxdd's ConvNet names."""
    tnn = __import__("torch").nn
    params, d = {}, 0
    for m in torch_module:
        w = m.weight.detach().numpy() if getattr(m, "weight", None) is not None else None
        b = m.bias.detach().numpy() if getattr(m, "bias", None) is not None else None
        if isinstance(m, tnn.Conv2d):
            params[f"conv{d}"] = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}
        elif isinstance(m, tnn.LayerNorm):
            params[f"norm{d}"] = {"scale": w.transpose(1, 2, 0), "bias": b.transpose(1, 2, 0)}
            d += 1
        elif isinstance(m, (tnn.GroupNorm, tnn.BatchNorm2d)):
            params[f"norm{d}"] = {"scale": w, "bias": b}
            d += 1
        elif isinstance(m, tnn.Linear):
            params["classifier"] = {"kernel": w.T, "bias": b}
    return jax.tree.map(jnp.asarray, params)


@pytest.mark.parametrize("norm,shape", [("instance", (28, 28, 1)), ("layer", (32, 32, 3)),
                                        ("group", (28, 28, 1)), ("batch", (32, 32, 3))])
def test_convnet_matches_pytorch_reference(norm, shape):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    ref = _torch_convnet(torch, shape[2], 10, 16, 3, norm, shape[0])
    for m in ref:  # non-trivial affine parameters, so a transposed scale would show
        if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    x = np.asarray(_images(shape, n=3), np.float32)
    expected = ref.train()(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    model = get_model("ConvNet", shape, 10, width=16, norm=norm)
    params = _to_flax(ref)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, jax.eval_shape(model.init, jax.random.key(0)))
    np.testing.assert_allclose(model.apply(params, jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


def test_alexcifarnet_matches_pytorch_reference():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    torch.manual_seed(0)
    features = tnn.Sequential(
        tnn.Conv2d(3, 64, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(3, 2, padding=1),
        tnn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1),
        tnn.Conv2d(64, 64, 5, padding=2), tnn.ReLU(),
        tnn.LocalResponseNorm(4, alpha=0.001 / 9.0, beta=0.75, k=1), tnn.MaxPool2d(3, 2, padding=1))
    fcs = [tnn.Linear(4096, 384), tnn.Linear(384, 192), tnn.Linear(192, 10)]
    x = 5.0 * np.asarray(_images((32, 32, 3)), np.float32)  # large enough for LRN to matter
    h = features(torch.from_numpy(x.transpose(0, 3, 1, 2))).flatten(1)
    h = fcs[1](torch.relu(fcs[0](h)))
    expected = fcs[2](torch.relu(h)).detach().numpy()
    conv = lambda m: {"kernel": m.weight.detach().numpy().transpose(2, 3, 1, 0),
                      "bias": m.bias.detach().numpy()}
    lin = lambda m: {"kernel": m.weight.detach().numpy().T, "bias": m.bias.detach().numpy()}
    params = jax.tree.map(jnp.asarray, {
        "conv1": conv(features[0]), "conv2": conv(features[4]), "fc1": lin(fcs[0]),
        "fc2": lin(fcs[1]), "classifier": lin(fcs[2])})
    model = get_model("AlexCifarNet", (32, 32, 3), 10)
    np.testing.assert_allclose(model.apply(params, jnp.asarray(x)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,size", [(3, 1, 1, 8), (5, 1, 2, 12), (3, 2, 1, 9), (1, 2, 0, 8), (5, 1, 0, 14)])
def test_patch_conv_equals_xla_conv_with_gradients(kernel, stride, padding, size):
    """The im2col convolution used on CPU equals lax.conv_general_dilated, values and gradients."""
    from jaxdd.models import patch_conv

    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2, size, size, 3))
    k = jax.random.normal(kk, (kernel, kernel, 3, 4))
    args = ((stride, stride), ((padding, padding), (padding, padding)))
    numbers = ("NHWC", "HWIO", "NHWC")

    def xla(x, k):
        return jax.lax.conv_general_dilated(x, k, *args, dimension_numbers=numbers, precision="highest")

    def ours(x, k):
        return patch_conv(x, k, *args, dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, k.shape, numbers), precision="highest")

    np.testing.assert_allclose(ours(x, k), xla(x, k), rtol=1e-5, atol=1e-5)
    for argnum in (0, 1):
        g_ours = jax.grad(lambda x, k: jnp.sum(jnp.sin(ours(x, k))), argnum)(x, k)
        g_xla = jax.grad(lambda x, k: jnp.sum(jnp.sin(xla(x, k))), argnum)(x, k)
        np.testing.assert_allclose(g_ours, g_xla, rtol=1e-4, atol=1e-4)


def test_with_conv_chooses_the_convolution_per_call_site(monkeypatch):
    """A with_conv model traces XLA's convolution or the patch matmul as asked, whatever the
    backend's default, with the same values; $JAXDD_CONV still overrides every call site."""
    monkeypatch.delenv("JAXDD_CONV", raising=False)
    model = get_model("ConvNet", (8, 8, 1), 10, width=4, depth=2)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))

    def convolutions(m):
        text = jax.jit(jax.grad(lambda p: m.apply(p, x).sum())).lower(params).as_text()
        return text.count("convolution")

    as_xla, as_patches = model.with_conv("xla"), model.with_conv("patches")
    assert convolutions(as_xla) > 0 and convolutions(as_patches) == 0
    np.testing.assert_allclose(as_xla.apply(params, x), as_patches.apply(params, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(as_xla.embed(params, x), model.embed(params, x), rtol=1e-4, atol=1e-5)
    assert model.with_conv(None) is model
    monkeypatch.setenv("JAXDD_CONV", "patches")
    assert convolutions(as_xla) == 0
    with pytest.raises(ValueError, match="convolution must be one of"):
        model.with_conv("cudnn")
