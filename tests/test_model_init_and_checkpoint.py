"""DiT's official initialisation read from the weights, and `load_official_checkpoint`'s layouts.

Initialisation (Peebles & Xie 2022, the official `initialize_weights`): every Linear xavier-uniform
with zero bias; the patch projection xavier-uniform over its flattened (D, C p p) view; the label
table and the timestep MLP N(0, 0.02); the sin-cos position table; adaLN modulation and the final
layer zero. Part of the mutation-testing selection for dit_core/models.py (docs/testing.md).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
from torch import nn

from dit_core.models import DiT, load_official_checkpoint, model_config

CFG = dict(depth=2, hidden_size=96, num_heads=4, patch_size=2, input_size=8, in_channels=4, num_classes=300)


def _uniform_bound(w: torch.Tensor) -> float:
    fan_out, fan_in = w.shape[0], w[0].numel()
    return math.sqrt(6.0 / (fan_in + fan_out))


def _check_xavier(name: str, w: torch.Tensor) -> None:
    bound = _uniform_bound(w)
    assert w.abs().max().item() <= bound, name
    # U(-b, b): std b / sqrt(3); with >= 1000 weights the estimate is within ~5%
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.12), name


def _sincos_2d_reference(dim: int, grid: int) -> np.ndarray:
    """MAE's 2-D table: the first half of the features encode the column, the second the row."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4.0))

    def one(pos):
        a = np.outer(pos, omega)
        return np.concatenate([np.sin(a), np.cos(a)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return np.concatenate([one(cols.ravel()), one(rows.ravel())], axis=1)


@pytest.mark.parametrize("block_type", ["adaln_zero", "adaln", "cross_attention", "in_context"])
def test_initialisation_is_the_official_one(block_type):
    torch.manual_seed(0)
    model = DiT(model_config(**CFG, block_type=block_type))
    zero = {id(model.final_layer.linear), id(model.final_layer.adaLN_modulation[-1])}
    for block in model.blocks:
        mod = getattr(block, "adaLN_modulation", None)
        if mod is not None:
            zero.add(id(mod[-1]))
    normal = {id(model.t_embedder.mlp[0]), id(model.t_embedder.mlp[2])}
    n_linear = 0
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        n_linear += 1
        if id(m) in zero:
            assert torch.count_nonzero(m.weight) == 0 and torch.count_nonzero(m.bias) == 0, name
            continue
        assert m.bias is None or torch.count_nonzero(m.bias) == 0, name
        if id(m) in normal:
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.1), name
        else:
            _check_xavier(name, m.weight.detach())
    assert n_linear >= 2 * CFG["depth"] + 4
    _check_xavier("x_embedder.proj", model.x_embedder.proj.weight.detach().reshape(CFG["hidden_size"], -1))
    assert torch.count_nonzero(model.x_embedder.proj.bias) == 0
    table = model.y_embedder.embedding_table.weight.detach()
    assert table.std().item() == pytest.approx(0.02, rel=0.05) and abs(table.mean().item()) < 1e-3
    want = _sincos_2d_reference(CFG["hidden_size"], CFG["input_size"] // CFG["patch_size"])
    np.testing.assert_allclose(model.pos_embed[0].double().numpy(), want, rtol=1e-6, atol=1e-6)
    assert not model.pos_embed.requires_grad


def test_grad_checkpointing_setter_stores_a_bool():
    model = DiT(model_config(**CFG))
    model.grad_checkpointing = 1
    assert model.grad_checkpointing is True and model.config.grad_checkpointing is True
    model.grad_checkpointing = 0
    assert model.grad_checkpointing is False


def _state():
    return {"a.weight": torch.arange(3.0), "b.bias": torch.ones(2)}


def test_load_checkpoint_layouts_keys_and_prefixes(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = {k: v * 2 for k, v in _state().items()}
    torch.save({"model": model, "ema": _state(), "opt": {}, "args": argparse.Namespace(lr=1e-4)}, path)
    got = load_official_checkpoint(path)  # the EMA by default
    assert got.keys() == _state().keys() and torch.equal(got["a.weight"], torch.arange(3.0))
    got = load_official_checkpoint(path, key="model")
    assert torch.equal(got["a.weight"], 2 * torch.arange(3.0))
    with pytest.raises(
        ValueError, match=r"ckpt.pt: no 'raw' entry; it has \['args', 'ema', 'model', 'opt'\]"
    ):
        load_official_checkpoint(path, key="raw")
    torch.save({"model": model, "opt": {}}, path)  # no EMA: the model weights
    assert torch.equal(load_official_checkpoint(path)["a.weight"], 2 * torch.arange(3.0))
    torch.save({f"module._orig_mod.{k}": v for k, v in _state().items()}, path)  # DDP + torch.compile
    assert load_official_checkpoint(path).keys() == _state().keys()
    torch.save({"_orig_mod.a.weight": torch.zeros(1)}, path)
    assert list(load_official_checkpoint(path)) == ["a.weight"]


def test_load_checkpoint_names_what_is_wrong(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(
        ValueError, match=r"bad.pt: expected a state dict or a dict with 'model'/'ema', got list$"
    ):
        load_official_checkpoint(path)
    torch.save({"module.a.weight": torch.zeros(1), "module.step": 3}, path)
    with pytest.raises(ValueError, match=r"bad.pt: entry 'step' is a int, not a tensor$"):
        load_official_checkpoint(path)


class _NotATensor:
    """Any pickled object that is not plain data: weights_only loading must refuse to build it."""


def test_load_checkpoint_refuses_arbitrary_pickled_objects(tmp_path):
    import pickle

    path = tmp_path / "evil.pt"
    torch.save({"model": _state(), "extra": _NotATensor()}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_official_checkpoint(path)
