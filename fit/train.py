"""Train FiTv2 with rectified flow: one loop on CPU, one GPU, or many GPUs / nodes through ``torchrun`` (DDP).

Every random quantity of a sample — which image sits at global position k of the data stream, its flip, its
noise, its timestep, whether its label is dropped — is drawn from a generator seeded by (seed, k). A step's
batch is positions [step * B, (step + 1) * B) split over the processes, so the result does not depend on the
number of processes, and ``--resume`` continues exactly: the data-order state is the step itself.

Output folder:
    config.yaml                 model (official ``diffusion.network_config.params``) + ``train`` settings
    checkpoints/step-N.pt       model, EMA, optimizer, scheduler, step, RNG and data-order state (atomic writes)
    ema.safetensors             EMA weights with official names: ``fit.load_model(out/config.yaml, out/ema.safetensors)``
    loss.csv, tb/               step, loss, lr, grad_norm (CSV and TensorBoard)
"""
from __future__ import annotations

import atexit
import copy
import csv
import dataclasses
import difflib
import glob
import math
import os
import random
import re
import shutil
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from engines.atomic import atomic_file, atomic_write
from engines.sampler import shift_time
from fit.config import PRESETS, ConfigError, FiTConfig, network_from_document, preset, read_yaml
from fit.data import DataError, FlexibleDataset, open_dataset
from fit.data.batching import pad_batch
from fit.flow import interpolate, logit_normal_t, masked_velocity_loss
from fit.hr import init_from_pretrained, set_trainable
from fit.loading import CheckpointError
from fit.model import FiT

CHECKPOINT_FORMAT = "fit-train/1"


#################################################################################
#                               Training settings                               #
#################################################################################

@dataclass
class TrainSettings:
    """Everything about a run that is not the network. YAML: the ``train`` section."""

    data: Optional[str] = None          # data spec: folder in the official latent format, or KIND:ARG
    steps: int = 1000
    batch_size: int = 16                # global batch, split evenly over the processes
    lr: float = 1e-4
    warmup_steps: int = 0               # linear warmup, then constant
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0              # max gradient norm; 0 = off
    ema_decay: float = 0.9999
    timestep_shift: float = 1.0         # t <- t / (t + s (1 - t)): s > 1 trains more near noise (large tokens)
    seed: int = 0
    precision: str = "auto"             # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    grad_checkpointing: bool = False
    max_tokens: Optional[int] = None    # token budget L of the data; default: the config's context_size
    num_workers: int = 0                # data loader processes per training process
    save_every: int = 1000              # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2
    log_every: int = 10                 # CSV / TensorBoard row every N steps (and at each checkpoint)
    tensorboard: bool = True
    init_from: Optional[str] = None     # pretrained weights (HR post-training); default: config.pretrain_ckpt

    def __post_init__(self):
        positive = ("steps", "batch_size", "save_every", "log_every", "keep_checkpoints")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train setting {name} must be at least 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if not self.timestep_shift > 0:
            raise ConfigError(f"timestep_shift must be positive, got {self.timestep_shift}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ConfigError("lr must be positive; warmup_steps and grad_clip must not be negative")
        self.betas = [float(b) for b in self.betas]

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                raise ConfigError(f"unknown train setting {key!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                                      f"; settings: {', '.join(known)}"))
        return cls(**values)

    def replace(self, **changes) -> "TrainSettings":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# Keys of the official training YAML (``accelerate`` and ``data`` sections) that map onto our settings.
_OFFICIAL_KEYS = {"learning_rate": "lr", "max_train_steps": "steps", "lr_warmup_steps": "warmup_steps",
                  "max_grad_norm": "grad_clip", "checkpointing_steps": "save_every",
                  "checkpoints_total_limit": "keep_checkpoints"}
_TOP_LEVEL = ("preset", "diffusion", "data", "accelerate", "train")


def _official_settings(doc: dict) -> dict:
    out = {ours: doc["accelerate"][theirs] for theirs, ours in _OFFICIAL_KEYS.items()
           if isinstance(doc.get("accelerate"), dict) and doc["accelerate"].get(theirs) is not None}
    acc = doc.get("accelerate") or {}
    if acc.get("mixed_precision") in ("bf16", "no"):
        out["precision"] = {"bf16": "auto", "no": "fp32"}[acc["mixed_precision"]]
    opt = ((acc.get("optimizer") or {}).get("params") or {})
    for key in ("weight_decay", "eps"):
        if isinstance(opt.get(key), (int, float)):
            out[key] = opt[key]
    train = (((doc.get("data") or {}).get("params") or {}).get("train") or {})
    if train.get("target_len"):
        out["max_tokens"] = int(train["target_len"])
    return out


def load_run_config(spec: str) -> tuple[FiTConfig, TrainSettings]:
    """(network config, train settings) from a preset name or a YAML file.

    YAML: the official layout (``diffusion.network_config.params``, its ``accelerate`` / ``data`` values are
    honoured) and/or ``preset: NAME`` (params then override the preset), plus a ``train`` section of
    :class:`TrainSettings` fields, which wins.
    """
    if spec.lower() in PRESETS:
        return preset(spec), TrainSettings()
    if not spec.endswith((".yaml", ".yml")) and not os.path.exists(spec):
        raise ConfigError(f"unknown preset or missing config file {spec!r}; presets: {', '.join(PRESETS)}")
    doc = read_yaml(spec)
    unknown = [k for k in doc if k not in _TOP_LEVEL and k != "training_strategy"]
    if unknown:
        raise ConfigError(f"config {spec}: unknown section(s) {', '.join(map(str, unknown))}; "
                          f"sections: {', '.join(_TOP_LEVEL)}")
    config = network_from_document(doc, spec)
    train = doc.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"config {spec}: the train section must be a mapping")
    return config, TrainSettings.from_dict({**_official_settings(doc), **train})


def run_config_yaml(config: FiTConfig, settings: TrainSettings) -> str:
    """The YAML ``load_run_config`` reads back (and ``FiTConfig.from_yaml`` / ``fit.load_model`` read too)."""
    import yaml

    doc = {"diffusion": {"network_config": {"target": "fit.model.fit_model.FiT", "params": config.to_dict()}},
           "train": dataclasses.asdict(settings)}
    return yaml.safe_dump(doc, sort_keys=False)


#################################################################################
#                      Data stream: position k -> sample                        #
#################################################################################

def position_seed(seed: int, position: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(position)]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SampleStream(torch.utils.data.Dataset):
    """Global position k -> one dataset sample with its noise, timestep and label-drop flag.

    Position k visits item ``perm_e[k mod n]`` of epoch e = k // n (a fresh permutation per epoch, seeded by
    seed + e, like the official sampler). A sample that cannot be read is replaced by the next item (counted in
    a warning), so a damaged file never stops training mid-epoch.
    """

    def __init__(self, dataset: FlexibleDataset, seed: int, drop_prob: float, timestep_shift: float = 1.0):
        self.dataset, self.seed, self.drop_prob = dataset, int(seed), float(drop_prob)
        self.timestep_shift = float(timestep_shift)
        self._epoch, self._perm = None, None

    def __len__(self):
        return len(self.dataset)

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), len(self.dataset))
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.dataset), generator=g)
        return int(self._perm[offset])

    def __getitem__(self, position: int) -> dict:
        g = torch.Generator().manual_seed(position_seed(self.seed, position))
        index = self.index(position)
        for _ in range(min(len(self.dataset), 100)):
            try:
                sample = dict(self.dataset.load(index, g))
                break
            except DataError as e:
                warnings.warn(f"skipping a sample: {e}")
                index = (index + 1) % len(self.dataset)
        else:
            raise DataError("100 unreadable samples in a row; check the data folder")
        sample["noise"] = torch.randn(sample["feature"].shape, generator=g)
        sample["t"] = shift_time(logit_normal_t(1, generator=g), self.timestep_shift)[0]
        sample["drop"] = torch.rand((), generator=g) < self.drop_prob
        return sample


def step_batches(start: int, steps: int, batch_size: int, rank: int, world: int):
    """Positions of this process's share of each step's global batch."""
    local = batch_size // world
    for step in range(start, steps):
        first = step * batch_size + rank * local
        yield list(range(first, first + local))


def collate(samples):
    return pad_batch(samples, token_keys=("noise",))


#################################################################################
#                       Checkpoints: atomic, with full state                    #
#################################################################################

def save_ema_safetensors(ema: torch.nn.Module, path: str) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in ema.state_dict().items()}
    atomic_write(path, save(tensors, metadata={"format": "pt"}))


def checkpoints_in(out_dir: str) -> list[str]:
    """Complete checkpoints, oldest first."""
    paths = glob.glob(os.path.join(out_dir, "checkpoints", "step-*.pt"))
    return sorted(paths, key=lambda p: int(re.search(r"step-(\d+)\.pt$", p).group(1)))


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), numpy_keys=torch.from_numpy(keys.astype(np.int64)),
                 numpy_rest=[int(pos), int(has_gauss), float(gauss)], python=list(random.getstate()[1]))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a fit-train checkpoint")
    return state


def _check_resumable(state: dict, config: FiTConfig, settings: TrainSettings, path: str) -> None:
    saved, ours = state["config"], config.to_dict()
    differ = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
    if differ:
        raise CheckpointError(f"checkpoint {path} is for another config ({', '.join(differ[:6])} differ); "
                              f"use the config it was trained with or another --out")
    if state["data"]["batch_size"] != settings.batch_size:
        raise CheckpointError(f"checkpoint {path} was trained with batch_size {state['data']['batch_size']}; "
                              f"pass --batch-size {state['data']['batch_size']} to resume it")


#################################################################################
#                                  Training loop                                #
#################################################################################

def _setup_distributed(device: Optional[str]):
    """(rank, world size, device); starts the process group when launched by torchrun."""
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        atexit.register(dist.destroy_process_group)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device(device or "cpu")


def _build_model(config: FiTConfig, settings: TrainSettings, resuming: bool, log) -> FiT:
    if config.learn_sigma or not config.use_sit:
        raise ConfigError("fit-train trains FiTv2 flow models: the config needs use_sit: true, learn_sigma: false")
    torch.manual_seed(settings.seed)
    model = FiT(config)
    source = settings.init_from or config.pretrain_ckpt
    if source and not resuming:
        fresh = init_from_pretrained(model, source, config.ignore_keys)
        log(f"initialised from {source}; re-initialised {len(fresh)} tensors matching {config.ignore_keys}")
    trainable = set_trainable(model, config.finetune, config.ignore_keys)
    if config.finetune == "partial":
        log(f"training {len(trainable)} of {len(list(model.parameters()))} parameter tensors")
    model.use_checkpoint = settings.grad_checkpointing or config.use_checkpoint
    # Label dropout is drawn per sample by SampleStream (reproducible under DDP and resume), not by the model.
    model.y_embedder.dropout_prob = 0.0
    return model


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().float(), 1.0 - decay)


def train(config: FiTConfig, settings: TrainSettings, out_dir: str, data: Union[str, FlexibleDataset, None] = None,
          resume: bool = False, device: Optional[str] = None, progress: bool = True) -> dict:
    """Train ``config`` on ``data`` (spec or dataset object; default ``settings.data``) into ``out_dir``.

    With ``resume`` the newest checkpoint in ``out_dir`` is continued exactly (none: start at step 0).
    Returns dict(step, loss, rank) of the last step. Runs distributed when torchrun started it (or when the caller
    has initialised ``torch.distributed``).
    """
    rank, world, dev = _setup_distributed(device)
    main = rank == 0
    log = (lambda msg: tqdm.write(msg)) if main else (lambda msg: None)
    if settings.batch_size % world:
        raise ConfigError(f"batch_size {settings.batch_size} is not divisible by the {world} processes")
    data = data if data is not None else settings.data
    if data is None:
        raise ConfigError("no training data: pass --data or set train.data in the config")
    max_tokens = settings.max_tokens or config.context_size
    dataset = open_dataset(data, config, max_tokens) if isinstance(data, str) else data

    # ---- resume state (read before building anything, so a bad checkpoint fails fast) ----
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    found = checkpoints_in(out_dir)
    if found and not resume:
        raise ConfigError(f"{out_dir} already holds checkpoints; pass --resume to continue, or choose another --out")
    state, unreadable = None, []
    for path in reversed(found if resume else []):
        try:
            state = read_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"{e}; trying an older checkpoint")
            unreadable.append(path)
            continue
        _check_resumable(state, config, settings, path)
        log(f"resuming from {path} (step {state['step']})")
        break
    if unreadable and state is None:
        # Starting over would overwrite the previous run's ema.safetensors with an untrained model.
        raise CheckpointError(f"--resume: none of the {len(unreadable)} checkpoint(s) in {ckpt_dir} can be read; "
                              f"nothing was changed. To start again from step 0, move {ckpt_dir} away (keep "
                              f"{os.path.join(out_dir, 'ema.safetensors')} if you need it) or choose another --out")
    if resume and state is None:
        log(f"no checkpoint in {ckpt_dir}: starting from step 0")
    start = state["step"] if state else 0

    # ---- model, EMA, optimizer, schedule ----
    model = _build_model(config, settings, state is not None, log).to(dev)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps,
                            weight_decay=settings.weight_decay)
    warmup = settings.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    if state:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        if state["data"]["dataset_size"] != len(dataset):
            warnings.warn(f"the data has {len(dataset)} samples, the checkpoint saw {state['data']['dataset_size']}: "
                          f"the data order will differ from the interrupted run")
    net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if world > 1 else model
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and dev.type == "cuda")
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    # ---- data: this process's share of each global batch, from position start * batch_size on ----
    stream = SampleStream(dataset, settings.seed, config.class_dropout_prob, settings.timestep_shift)
    loader = torch.utils.data.DataLoader(stream, batch_sampler=list(step_batches(start, settings.steps,
                                         settings.batch_size, rank, world)), num_workers=settings.num_workers,
                                         collate_fn=collate, pin_memory=dev.type == "cuda")

    # ---- logging ----
    writer, csv_path = None, os.path.join(out_dir, "loss.csv")
    if main:
        os.makedirs(ckpt_dir, exist_ok=True)
        recorded = dataclasses.replace(settings, data=data if isinstance(data, str) else None)
        atomic_write(os.path.join(out_dir, "config.yaml"), run_config_yaml(config, recorded))
        _truncate_csv(csv_path, start)
        if settings.tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(out_dir, "tb"), purge_step=start + 1)
    log(f"training {sum(p.numel() for p in params) / 1e6:.2f}M parameters on {len(dataset)} samples, "
        f"{world} process(es) on {dev.type}, global batch {settings.batch_size}, steps {start} -> {settings.steps}")

    # ---- loop ----
    model.train()
    null = torch.tensor(config.num_classes, device=dev)
    loss_sum, loss_count, loss, grad_norm = torch.zeros((), device=dev), 0, torch.zeros(()), torch.zeros(())
    bar = tqdm(total=settings.steps, initial=start, disable=not (main and progress), unit="step", dynamic_ncols=True)
    for step, batch in enumerate(loader, start=start):
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        x1, mask = batch["feature"], batch["mask"]                               # (b, N, D), (b, N)
        xt, target = interpolate(batch["noise"], x1, batch["t"])
        y = torch.where(batch["drop"], null, batch["label"])
        with autocast():
            pred = net(xt, batch["t"], y, grid=batch["grid"], mask=mask, size=batch["size"])
        loss = masked_velocity_loss(pred.float(), target, mask).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.grad_clip if settings.grad_clip > 0 else
                                                   float("inf"))
        opt.step()
        sched.step()
        update_ema(ema, model, settings.ema_decay)
        loss_sum += loss.detach()
        loss_count += 1
        done = step + 1
        bar.update(1)
        saving = done % settings.save_every == 0 or done == settings.steps
        if done % settings.log_every == 0 or saving:
            # The loss is read from the device only here (no host sync per step). A non-finite step loss makes
            # the sum non-finite (losses are >= 0), so the check still stops the run before any checkpoint.
            if world > 1:
                dist.all_reduce(loss_sum)
            mean = loss_sum.item() / (loss_count * world)
            if not math.isfinite(mean):
                raise FloatingPointError(f"loss is {mean} in steps {done - loss_count + 1}-{done}; "
                                         f"lower the learning rate")
            bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
            if main:
                _log_row(csv_path, writer, done, mean, sched.get_last_lr()[0], float(grad_norm))
            loss_sum.zero_()
            loss_count = 0
        if saving:
            if main:
                _save(out_dir, done, model, ema, opt, sched, config, settings, len(dataset))
            if world > 1:
                dist.barrier()
    bar.close()
    if writer:
        writer.close()
    return dict(step=settings.steps, loss=float(loss.detach()), rank=rank)


def _save(out_dir, step, model, ema, opt, sched, config, settings, dataset_size) -> None:
    state = dict(format=CHECKPOINT_FORMAT, step=step, model=model.state_dict(), ema=ema.state_dict(),
                 optimizer=opt.state_dict(), scheduler=sched.state_dict(), config=config.to_dict(),
                 settings=dataclasses.asdict(settings), rng=_rng_state(),
                 data=dict(seed=settings.seed, position=step * settings.batch_size, batch_size=settings.batch_size,
                           dataset_size=dataset_size))
    path = os.path.join(out_dir, "checkpoints", f"step-{step:08d}.pt")
    try:
        with atomic_file(path) as f:
            torch.save(state, f)
        save_ema_safetensors(ema, os.path.join(out_dir, "ema.safetensors"))
    except (OSError, RuntimeError) as e:   # torch.save reports a failed write (a full disk) as RuntimeError
        free = shutil.disk_usage(os.path.dirname(path)).free / 2 ** 20
        reason = (e.strerror if isinstance(e, OSError) and e.strerror else "the write failed") + \
            f" ({free:.1f} MiB free there)"
        kept = checkpoints_in(out_dir)
        raise CheckpointError(f"cannot save the step-{step} checkpoint in {os.path.dirname(path)}: {reason}; "
                              + (f"the newest complete one is {os.path.basename(kept[-1])}; continue with --resume "
                                 f"once there is room" if kept else "no checkpoint was written")) from None
    for old in checkpoints_in(out_dir)[:-settings.keep_checkpoints]:
        os.remove(old)


def _truncate_csv(path: str, step: int) -> None:
    """Start a new log, or keep the rows up to ``step`` of an interrupted one."""
    rows = []
    if step and os.path.exists(path):
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f)][1:]
        rows = [r for r in rows if r and int(r[0]) <= step]
    with atomic_file(path, "w", newline="") as f:
        csv.writer(f).writerows([["step", "loss", "lr", "grad_norm"], *rows])


def _log_row(path, writer, step, loss, lr, grad_norm) -> None:
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{grad_norm:.6g}"])
    if writer:
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/lr", lr, step)
        writer.add_scalar("train/grad_norm", grad_norm, step)
