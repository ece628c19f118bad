"""fit-train: exact resume, DDP on CPU (gloo) equals one process, atomic checkpoints, HR post-training, bad inputs."""
import csv
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner
from safetensors.torch import load_file

import fit
import fit.train as fit_train
from cli.train import main as cli_main
from fit.config import ConfigError, preset
from fit.hr import init_from_pretrained, set_trainable
from fit.loading import CheckpointError
from fit.model import FiT
from fit.train import TrainSettings, checkpoints_in, load_run_config, train
from tests.data_helpers import make_latents

STEPS = dict(steps=6, batch_size=4, save_every=3, log_every=1, tensorboard=False, ema_decay=0.9, lr=1e-3,
             warmup_steps=5)


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return str(make_latents(tmp_path_factory.mktemp("latents"), n=10))


def rows(out):
    with open(os.path.join(out, "loss.csv")) as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def run(out, data, config="fitv2-tiny", resume=False, **changes):
    cfg = preset(config) if isinstance(config, str) else config
    return train(cfg.replace(context_size=64), TrainSettings(**{**STEPS, **changes}), str(out), data=data,
                 resume=resume, progress=False)


def test_resume_continues_exactly(latents, tmp_path):
    run(tmp_path / "full", latents)
    run(tmp_path / "part", latents, steps=3)
    assert [s for s, _ in rows(tmp_path / "part")] == [1, 2, 3]
    run(tmp_path / "part", latents, resume=True)
    assert rows(tmp_path / "part") == rows(tmp_path / "full")
    assert len(set(loss for _, loss in rows(tmp_path / "full"))) == 6
    full, part = (load_file(str(tmp_path / d / "ema.safetensors")) for d in ("full", "part"))
    assert all(torch.equal(full[k], part[k]) for k in full)


def test_ema_weights_load_with_official_names(latents, tmp_path):
    run(tmp_path / "r", latents, steps=2, tensorboard=True)
    model = fit.load_model(str(tmp_path / "r" / "config.yaml"), str(tmp_path / "r" / "ema.safetensors"))
    names = set(load_file(str(tmp_path / "r" / "ema.safetensors")))
    assert "x_embedder.proj.weight" in names and "blocks.0.adaLN_modulation.1.weight" in names
    assert names == set(model.state_dict())
    assert os.listdir(tmp_path / "r" / "tb")
    assert len(checkpoints_in(str(tmp_path / "r"))) == 1


def test_kill_during_save_loses_nothing_saved(latents, tmp_path, monkeypatch):
    run(tmp_path / "full", latents)
    real_save, calls = torch.save, []

    def dying_save(obj, f):                       # the second checkpoint dies half written
        calls.append(1)
        if len(calls) == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt
        real_save(obj, f)

    monkeypatch.setattr(fit_train.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "r", latents)
    monkeypatch.setattr(fit_train.torch, "save", real_save)
    assert [os.path.basename(p) for p in checkpoints_in(str(tmp_path / "r"))] == ["step-00000003.pt"]
    assert os.listdir(tmp_path / "r" / "checkpoints") == ["step-00000003.pt"]     # the half-written file is gone
    run(tmp_path / "r", latents, resume=True)
    assert rows(tmp_path / "r") == rows(tmp_path / "full")


def test_non_finite_loss_stops_before_any_checkpoint_naming_the_steps(latents, tmp_path, monkeypatch):
    real_loss, calls = fit_train.masked_velocity_loss, []

    def loss_nan_at_step_2(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(fit_train, "masked_velocity_loss", loss_nan_at_step_2)
    with pytest.raises(FloatingPointError, match=r"loss is nan in steps 1-4; lower the learning rate"):
        run(tmp_path / "r", latents, log_every=4, save_every=6)
    assert len(calls) == 4
    assert checkpoints_in(str(tmp_path / "r")) == [] and rows(tmp_path / "r") == []


def _ddp_worker(rank, port, data, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        run(out, data)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_one_process(latents, tmp_path):
    run(tmp_path / "one", latents)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, latents, str(tmp_path / "two")), nprocs=2, join=True)
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [s for s, _ in one] == [s for s, _ in two]
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(one, two))
    w1, w2 = (torch.load(checkpoints_in(str(tmp_path / d))[-1], weights_only=True)["model"] for d in ("one", "two"))
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


def test_hr_post_training_trains_only_the_official_set(latents, tmp_path):
    run(tmp_path / "base", latents, steps=2)
    path = str(tmp_path / "base" / "ema.safetensors")
    pretrained = load_file(path)
    hr = preset("fitv2-tiny-hr").replace(context_size=64)
    torch.manual_seed(0)
    fresh_model = FiT(hr)
    torch.manual_seed(0)
    model = FiT(hr)
    reinit = set(init_from_pretrained(model, path, hr.ignore_keys))
    trainable = set(set_trainable(model, hr.finetune, hr.ignore_keys))
    assert reinit == trainable == {k for k in pretrained if any(s in k for s in ("x_embedder", "bias", "LN",
                                                                                   "final_layer"))}
    assert {"blocks.0.adaLN_modulation.1.weight", "global_adaLN_modulation.1.weight", "final_layer.linear.weight",
            "x_embedder.proj.weight", "blocks.1.attn.qkv.bias"} <= trainable
    assert "blocks.0.attn.qkv.weight" not in trainable and "y_embedder.embedding_table.weight" not in trainable
    fresh = fresh_model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k in reinit else pretrained[k]), k
    assert not torch.equal(fresh["x_embedder.proj.weight"], pretrained["x_embedder.proj.weight"])

    run(tmp_path / "hr", latents, config=hr, steps=2, init_from=path, max_tokens=64)
    after = torch.load(checkpoints_in(str(tmp_path / "hr"))[-1], weights_only=True)["model"]
    for k in after:
        if k not in trainable:
            assert torch.equal(after[k], pretrained[k]), k                       # frozen
    assert not torch.equal(after["x_embedder.proj.weight"], pretrained["x_embedder.proj.weight"])
    with pytest.raises(CheckpointError, match="does not match"):
        run(tmp_path / "bad", latents, config=hr.replace(hidden_size=32, adaln_lora_dim=8), steps=1, init_from=path)


def test_resume_refuses_another_config_and_unasked_overwrite(latents, tmp_path):
    run(tmp_path / "r", latents, steps=3)
    with pytest.raises(ConfigError, match="--resume"):
        run(tmp_path / "r", latents)
    with pytest.raises(CheckpointError, match="another config"):
        run(tmp_path / "r", latents, config=preset("fitv2-tiny").replace(depth=3), resume=True)
    with pytest.raises(CheckpointError, match="batch_size 4"):
        run(tmp_path / "r", latents, resume=True, batch_size=2)


def test_run_config_yaml_and_typos(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("preset: fitv2-tiny\ndiffusion: {network_config: {params: {num_classes: 3}}}\n"
                    "train: {steps: 5, lr: 0.002}\naccelerate: {learning_rate: 1.0, max_grad_norm: 0.5}\n")
    cfg, settings = load_run_config(str(good))
    assert cfg.num_classes == 3 and cfg.hidden_size == 64
    assert (settings.steps, settings.lr, settings.grad_clip) == (5, 0.002, 0.5)
    for text, message in [("preset: fitv2-tiny\ntrain: {lrr: 1}\n", "did you mean 'lr'"),
                          ("preset: fitv2-tiny\ndiffusion: {network_config: {params: {depht: 2}}}\n", "depht"),
                          ("preset: fitv2-tiyn\n", "unknown preset"),
                          ("trian: {}\npreset: fitv2-tiny\n", "unknown section"),
                          ("train: {steps: 3}\n", "names no network"),
                          ("preset: fitv2-tiny\ntrain: {steps: 0}\n", "at least 1"),
                          ("preset: [\n", "not valid YAML")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_run_config(str(bad))
    with pytest.raises(ConfigError, match="unknown preset"):
        load_run_config("fitv2-huge")


def test_cli_errors_are_one_line_exit_2(latents, tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["run", "--config", "fitv2-tiny", "--data", str(empty), "--out", str(tmp_path / "o")],
                 ["run", "--config", "fitv2-tiny", "--data", latents, "--out", str(tmp_path / "o"), "--steps", "0"],
                 ["run", "--config", "fitv2-tiny", "--data", latents, "--out", str(tmp_path / "o")],   # budget 256
                 ["prepare", str(empty), str(tmp_path / "p"), "--max-tokens", "64", "--pixels"],
                 ["prepare", str(empty), str(tmp_path / "p"), "--max-tokens", "64"]):
        result = runner.invoke(cli_main, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.count("\n") == 1 and "error:" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli_main, ["run", "--config", "fitv2-tiny", "--data", latents, "--out",
                                      str(tmp_path / "ok"), "--steps", "2", "--batch-size", "2", "--max-tokens", "64",
                                      "--no-tensorboard", "--quiet"])
    assert result.exit_code == 0, result.output
    assert os.path.exists(tmp_path / "ok" / "ema.safetensors")


def test_resume_with_only_corrupt_checkpoints_refuses_and_keeps_the_ema(latents, tmp_path):
    run(tmp_path / "r", latents, steps=3)
    ema = (tmp_path / "r" / "ema.safetensors").read_bytes()
    for path in checkpoints_in(str(tmp_path / "r")):
        with open(path, "r+b") as f:
            f.truncate(100)
    with pytest.warns(UserWarning, match="trying an older checkpoint"):
        with pytest.raises(CheckpointError, match=r"none of the 1 checkpoint\(s\) .* can be read; nothing was changed"):
            run(tmp_path / "r", latents, resume=True)
    assert (tmp_path / "r" / "ema.safetensors").read_bytes() == ema
    assert [r[0] for r in rows(tmp_path / "r")] == [1, 2, 3]


def test_disk_full_at_a_checkpoint_is_one_line_and_leaves_no_partial_file(latents, small_disk):
    out = small_disk / "run"
    result = CliRunner().invoke(cli_main, ["run", "--config", "fitv2-tiny", "--data", latents, "--out", str(out),
                                           "--steps", "1", "--batch-size", "2", "--max-tokens", "64",
                                           "--no-tensorboard", "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fit-train: error: cannot save the step-1 checkpoint in ")
    assert "MiB free there" in lines[0] and "no checkpoint was written" in lines[0]
    assert os.listdir(out / "checkpoints") == [] and not (out / "ema.safetensors").exists()
    assert not [name for name in os.listdir(out) if name.startswith(".")]


def test_non_finite_features_are_skipped_naming_the_file(tmp_path):
    """A latent file with NaN features and a valid header is skipped with a one-line warning naming it."""
    from fit.data import DataError
    from fit.data.latent_folder import LatentFolder, folder_names, write_latent
    root = make_latents(tmp_path / "data", n=4)
    bad = root / folder_names(64)["fits"] / "002.safetensors"
    write_latent(str(bad), torch.full((2, 4, 4, 16), float("nan")), 0)
    data = LatentFolder(str(root), 64)
    index = [e[0] for e in data.entries].index(str(bad))
    with pytest.raises(DataError, match="002.safetensors: the features hold NaN or infinite values"):
        data.load(index)
    stream = fit_train.SampleStream(data, seed=0, drop_prob=0.0)
    position = next(k for k in range(len(data)) if stream.index(k) == index)
    with pytest.warns(UserWarning, match="skipping a sample: .*002.safetensors"):
        assert torch.isfinite(stream[position]["feature"]).all()
    result = CliRunner().invoke(cli_main, ["run", "--config", "fitv2-tiny", "--data", str(root), "--out",
                                           str(tmp_path / "out"), "--steps", "1", "--batch-size", "4",
                                           "--max-tokens", "64", "--no-tensorboard", "--quiet"])
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if "002.safetensors" in line]
    assert len(warned) == 1 and warned[0].startswith("fit-train: warning: skipping a sample: ")
    assert "warnings.warn" not in result.stderr and "UserWarning" not in result.stderr


def test_timestep_shift_moves_training_time_toward_noise():
    import torch

    from fit.config import ConfigError
    from engines.sampler import shift_time          # the samplers' grid bend, also on training times (tensors)
    from fit.train import TrainSettings

    t = torch.linspace(0.05, 0.95, 19)
    assert torch.equal(shift_time(t, 1.0), t)
    shifted = shift_time(t, 3.0)
    assert torch.all(shifted < t) and torch.all(shifted > 0)
    assert torch.allclose(shift_time(torch.tensor([0.5]), 3.0), torch.tensor([0.25]))
    with pytest.raises(ConfigError):
        TrainSettings(timestep_shift=0)
