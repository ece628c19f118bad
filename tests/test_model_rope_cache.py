"""The model's RoPE frequencies: computed once per settings and device, and online RoPE reads each sample's size on
the device (no copy to the host per forward), giving exactly the per-sample frequencies of engines.rope."""
import itertools

import numpy as np
import pytest
import torch

import fit.model as fit_model
from engines.rope import METHODS, assemble_tables, grid_frequencies, image_grid
from fit.config import preset
from fit.model import FiT


def batch(sizes, pad_to=None):
    n = pad_to or max(h * w for h, w in sizes)
    grid = torch.zeros(len(sizes), 2, n, dtype=torch.int64)
    for i, (h, w) in enumerate(sizes):
        grid[i, :, :h * w] = torch.from_numpy(image_grid(h, w))
    return grid, torch.tensor(sizes).reshape(-1, 1, 2)


def per_sample_reference(settings, grid, size):
    """What engines.rope gives for each sample's own size, assembled in torch."""
    hw = size.reshape(-1, 2).numpy()
    fh, fw, scale = grid_frequencies(settings, hw[:, 0], hw[:, 1])
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return assemble_tables(grid[:, 0].float(), grid[:, 1].float(), as_t(fh[:, None, :]), as_t(fw[:, None, :]),
                           as_t(np.reshape(scale, (-1, 1, 1))), xp=torch)


@pytest.mark.parametrize("method,decouple", list(itertools.product(METHODS, (False, True))))
def test_online_frequencies_equal_engines_rope_for_every_size(method, decouple):
    model = FiT(preset("fitv2-tiny-hr").replace(custom_freqs=method, decouple=decouple, context_size=24))
    sizes = [(h, w) for h in range(1, 25) for w in range(1, 25) if h * w <= 24]
    for i in range(0, len(sizes), 9):
        grid, size = batch(sizes[i:i + 9])
        got = model.rope_from_grid(grid, size)
        ref = per_sample_reference(model.rope, grid, size)
        assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_a_longer_batch_than_the_context_grows_the_table():
    model = FiT(preset("fitv2-tiny-hr").replace(context_size=16))
    grid, size = batch([(5, 7), (2, 3), (1, 40)])
    got = model.rope_from_grid(grid, size)
    assert all(torch.equal(a, b) for a, b in zip(got, per_sample_reference(model.rope, grid, size)))


def test_frequencies_are_computed_once_and_sizes_stay_on_the_device(monkeypatch):
    calls = []

    def counted(*args):
        calls.append(1)
        return grid_frequencies(*args)

    monkeypatch.setattr(fit_model, "grid_frequencies", counted)
    online = FiT(preset("fitv2-tiny-hr").replace(context_size=16))
    fixed = FiT(preset("fitv2-tiny").replace(custom_freqs="yarn", ori_max_pe_len=2, max_pe_len_h=3,
                                             max_pe_len_w=5, context_size=16))
    grid, size = batch([(2, 3), (4, 4), (1, 5)], pad_to=16)
    x, t, y = torch.randn(3, 16, online.config.token_dim), torch.rand(3), torch.tensor([0, 1, 2])
    with torch.no_grad():
        first = [online(x, t, y, grid, size=size), fixed(x, t, y, grid)]
        assert len(calls) == 2
        for name in ("cpu", "numpy", "tolist", "item"):                  # what reading sizes on the host needs
            monkeypatch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("a tensor was read on the host"))
        again = [online(x, t, y, grid, size=size), fixed(x, t, y, grid)]
    assert len(calls) == 2
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_online_sizes_beyond_the_sequence_are_refused():
    model = FiT(preset("fitv2-tiny-hr").replace(context_size=16))
    grid, _ = batch([(2, 3)], pad_to=16)
    for bad in ([[[5, 4]]], [[[0, 3]]], [[[17, 1]]]):
        with pytest.raises(ValueError, match="online RoPE"):
            model.rope_from_grid(grid, torch.tensor(bad))
