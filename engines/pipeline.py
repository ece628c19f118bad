"""Image generation from a model package: sizes, labels, noise, padded batches, sampling, decoding, PNG.

    import engines
    pipe = engines.load("path/to/package")              # checks format version and file hashes
    image = pipe.generate(width=256, height=192, label="golden retriever", seed=1, steps=20)
    image.save("dog.png")                                # or engines.png.save_png(image, "dog.png")

The per-step loop is specified in docs/runtime.md. Nothing here imports torch.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from engines import noise as portable_noise
from engines.atomic import recover_folder
from engines.backends import Backend, create_backend, resolve_backend_name
from engines.contract import patchify
from engines.errors import BackendError, PackageError
from engines.manifest import Manifest
from engines.package import load_manifest
from engines.request import (ENGINE_LIMITS, GenerationError, GenerationSettings, Job, Jobs, Limits, Request,
                             check_cost)
from engines.rope import EXTRAPOLATIONS, canonical_extrapolation, extrapolation_name
from engines.sampler import (SAMPLERS, SHIFTED, Callback, SamplerSettings, SettingError, check_cfg, check_steps, guide,
                             integrate)

F32 = np.float32
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"

# Approximate SD-VAE latent -> RGB map (a well-known linear fit), for packages shipped without vae_decoder.onnx.
_SD_LATENT_RGB = np.array([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173],
                           [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]], dtype=F32)
SEED_LIMIT = portable_noise.SEED_LIMIT


def load(path: Union[str, os.PathLike, None] = None, backend: str = "onnxruntime", verify: bool = True,
         precision: Optional[str] = None, threads: int = 0, **backend_options) -> "Pipeline":
    """Open a model package (the shipped default model when ``path`` is None) for generation.

    verify: check the sha256 of every file the backends open (each once per process) against the manifest.
    precision: which transformer variant runs (a variant name or a precision such as ``fp32``/``int8``; OpenVINO
    and TensorRT also take ``bf16``/``fp16`` for what they compute in); None: the manifest's default variant, the
    same on every backend (docs/package-format.md, *Variants*).
    threads: CPU threads of every backend that runs on the CPU (ONNX Runtime intra-op, OpenVINO inference, the VAE
    decoder); 0 = the runtime's choice; backends on a GPU ignore it (``create_backend``).
    backend_options go to the transformer's backend (ONNX Runtime: device, optimization, optimized_model_path,
    memory, memory_pattern; TensorRT: cuda_graphs, device; OpenVINO: device, cache).
    """
    if path is None:
        if not (DEFAULT_MODEL_DIR / "manifest.json").is_file():
            raise PackageError(f"no default model is installed at {DEFAULT_MODEL_DIR}; pass a package directory")
        path = DEFAULT_MODEL_DIR
    recover_folder(path)                 # a package replacement killed half-way is put back first
    if precision is not None:
        backend_options["precision"] = precision
    return Pipeline(Path(path), load_manifest(path), backend=backend, verify=verify, threads=threads,
                    **backend_options)


class Pipeline:
    """A loaded package plus its backends. Create with :func:`load`; use as a context manager to free them."""

    def __init__(self, directory: Path, manifest: Manifest, backend: str = "onnxruntime", verify: bool = True,
                 threads: int = 0, **backend_options):
        self.directory = Path(directory)
        self.manifest = manifest
        self._taps: list[Callable[[dict, dict], None]] = []
        self._read_manifest(manifest)
        self.backend_name = resolve_backend_name(backend)
        self.backend: Backend = create_backend(backend, self.directory, manifest=manifest, verify=verify,
                                               threads=threads, **backend_options)
        self.vae: Optional[Backend] = None
        if manifest.vae_decoder is not None:
            # The VAE always runs on ONNX Runtime; it shares the transformer's device and graph optimization when
            # that runs on ONNX Runtime too.
            shared = backend_options if self.backend_name == "onnxruntime" else {}
            vae_options = {k: v for k, v in shared.items() if k in ("device", "optimization")}
            self.vae = create_backend("onnxruntime", self.directory, manifest=manifest, graph="vae_decoder",
                                      verify=verify, threads=threads, **vae_options)
        try:
            self.backend.activate()
            if self.vae is not None:
                self.vae.activate()
        except BaseException:
            self.close()
            raise

    @contextmanager
    def tap(self, on_infer: Callable[[dict, dict], None]) -> Iterator[None]:
        """Inside the block, ``on_infer(feed, outputs)`` sees every transformer call of sampling (calibration
        records the feeds, validation runs a reference on them); it may raise to stop sampling."""
        self._taps.append(on_infer)
        try:
            yield
        finally:
            self._taps.remove(on_infer)

    @property
    def variant(self) -> Optional[str]:
        """Name of the transformer variant that runs (docs/package-format.md, *Variants*)."""
        return getattr(self.backend, "variant", None)

    def _read_manifest(self, manifest: Manifest) -> None:
        """The settings generation needs, from the typed manifest (docs/package-format.md)."""
        model, latent, rope = manifest.model, manifest.latent, manifest.rope
        if model.learn_sigma or model.config.get("learn_sigma") or model.out_token_dim != model.token_dim:
            raise PackageError(f"package {self.directory}: the runtime serves FiTv2 velocity models; this one "
                               f"predicts noise and sigma (FiT v1), use fit.sampling with PyTorch")
        self.contract = manifest.graph
        self.patch_size = model.patch_size
        self.channels = model.latent_channels
        self.num_classes = model.num_classes
        self.null_class = model.null_class
        self.class_names = list(model.class_names or [])
        self.space = latent.space
        self.downsample = latent.downsample
        self.scaling_factor = latent.scaling_factor
        self.granularity = latent.pixel_granularity
        if self.space == "pixel" and self.channels not in (1, 3):
            raise PackageError(f"package {self.directory}: a pixel-space model needs 1 or 3 channels, "
                               f"not {self.channels}")
        self.max_tokens = manifest.sizes.max_tokens
        self.default_size = tuple(manifest.sizes.default)
        self.train_side = rope.ori_max_pe_len or math.isqrt(manifest.sizes.train_token_budget)
        try:
            self.rope = rope.settings()
        except ValueError as err:
            raise PackageError(f"package {self.directory}: manifest.json is not usable (rope: {err}); "
                               f"re-export the package") from None
        self.extrapolations = tuple(dict.fromkeys(canonical_extrapolation(name) for name in rope.methods
                                                  if name.lower() in EXTRAPOLATIONS)) or EXTRAPOLATIONS
        self.guided_channels = (manifest.guidance.cfg_channels or self.channels) * self.patch_size ** 2

    # -- lifecycle --------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backends (sessions, engines, device memory)."""
        for backend in (self.backend, self.vae):
            if backend is not None:
                backend.deactivate()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.manifest.name

    # -- request checks (docs/runtime-spec.md §2) -----------------------------------------------------------
    def tokens(self, width: int, height: int) -> int:
        """Token count of a W x H pixel image."""
        side = self.granularity
        return (width // side) * (height // side)

    def nearest_sizes(self, width: int, height: int) -> list[tuple[int, int]]:
        """Valid (width, height) sizes around a requested one, nearest first (at most 4)."""
        g = self.granularity
        options = {(max(g, w), max(g, h)) for w in (width // g * g, -(-width // g) * g)
                   for h in (height // g * g, -(-height // g) * g)}
        options = [(w, h) for w, h in options if self.tokens(w, h) <= self.max_tokens]
        return sorted(options, key=lambda s: (abs(s[0] - width) + abs(s[1] - height), s))

    def check_size(self, width, height, snap: bool = False) -> tuple[int, int]:
        """(width, height) if the package can generate it; with ``snap`` the nearest valid size instead.

        Raises GenerationError naming the nearest valid sizes for sizes off the pixel grid (hint: ``snap``) or too
        large.
        """
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise GenerationError(f"{name} must be a whole number of pixels, got {value!r}", name)
            if value <= 0:
                raise GenerationError(f"{name} must be positive, got {value}", name)
        width, height = int(width), int(height)
        g = self.granularity
        if width % g or height % g:
            nearest = self.nearest_sizes(width, height)
            if snap and nearest:
                return nearest[0]
            names = ", ".join(f"{w}x{h}" for w, h in nearest) or "none within the size limit"
            raise GenerationError(f"{width}x{height} is not on the model's {g}-pixel grid; nearest valid sizes: "
                                  f"{names}", hint="snap" if nearest else None)
        if self.tokens(width, height) > self.max_tokens:
            scale = math.sqrt(self.max_tokens / self.tokens(width, height))
            w = max(g, int(width * scale) // g * g)
            h = max(g, int(height * scale) // g * g)
            raise GenerationError(f"{width}x{height} needs {self.tokens(width, height)} tokens, more than this "
                                  f"model's maximum of {self.max_tokens}; the largest size with this aspect ratio "
                                  f"is about {w}x{h}")
        return width, height

    def resolve_label(self, label) -> Optional[int]:
        """Class id from an id (int or digit string) or a class name; None stays None (unconditional)."""
        if label is None:
            return None
        if isinstance(label, str):
            text = label.strip()
            if re.fullmatch(r"-?[0-9]+", text):            # an id (ASCII digits, as in every runtime)
                label = int(text)
            else:
                lowered = [name.lower() for name in self.class_names]
                if text.lower() in lowered:
                    return lowered.index(text.lower())
                matches = [name for name in self.class_names if text.lower() in name.lower()]
                hint = f"; did you mean {', '.join(matches[:3])}?" if matches else ""
                raise GenerationError(f"unknown class {label!r}{hint} (ids 0..{self.num_classes - 1})")
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise GenerationError(f"class must be an id or a name, got {label!r}")
        if not 0 <= label < self.num_classes:
            raise GenerationError(f"class id {label} is outside 0..{self.num_classes - 1}")
        return int(label)

    def settings(self, *, steps: Optional[int] = None, sampler: Optional[str] = None, cfg: Optional[float] = None,
                 extrapolation: Optional[str] = None, time_shift: Optional[float] = None,
                 tail_compression: Optional[float] = None, limits: Limits = ENGINE_LIMITS) -> GenerationSettings:
        """Resolve a request's settings against the package defaults, once; raises GenerationError. ``limits``: the
        largest steps and guidance scale allowed (a server's policy; the engine's own by default)."""
        defaults = self.manifest.sampler
        method = defaults.method if sampler is None else sampler
        steps = defaults.steps if steps is None else steps
        if not isinstance(method, str) or method not in SAMPLERS:
            raise GenerationError(f"unknown sampler {method!r}; choose one of {', '.join(SAMPLERS)}", "sampler")
        if time_shift is None:                       # the package's, for the samplers it applies to
            time_shift = defaults.time_shift if method in SHIFTED else 1.0
        if tail_compression is None:                 # likewise
            tail_compression = defaults.tail_compression if method in SHIFTED else 0.0
        try:
            steps = check_steps(steps, limits.max_steps)
            cfg = check_cfg(self.manifest.guidance.default_scale if cfg is None else cfg, limits.max_cfg)
            sampler_settings = SamplerSettings(method, int(steps), defaults.atol, defaults.rtol, time_shift=time_shift,
                                               tail_compression=tail_compression)
        except SettingError as err:
            raise GenerationError(str(err), err.parameter) from None
        if extrapolation is None:
            rope, name = self.rope, extrapolation_name(self.rope)
        else:
            try:
                if not isinstance(extrapolation, str):
                    raise ValueError(extrapolation)
                name = canonical_extrapolation(extrapolation)
            except ValueError:
                raise GenerationError(f"unknown extrapolation {extrapolation!r}; choose one of "
                                      f"{', '.join(self.extrapolations)}", "extrapolation") from None
            if name not in self.extrapolations:
                raise GenerationError(f"this package does not offer extrapolation {name!r}; choose one of "
                                      f"{', '.join(self.extrapolations)}", "extrapolation")
            rope = self.rope.with_method(name, self.train_side)
        return GenerationSettings(sampler_settings, float(cfg), name, rope, self.manifest.guidance.scale_pow)

    def prepare(self, width=None, height=None, label=None, seed=0, *, num=1, snap: bool = False, steps=None,
                sampler=None, cfg=None, extrapolation=None, time_shift=None, tail_compression=None,
                limits: Limits = ENGINE_LIMITS) -> Jobs:
        """Check a request once and return the jobs of its ``num`` images (a sequence made on access); raises
        GenerationError.

        width, height: pixels (None: the package default size); with ``snap`` a size off the pixel grid becomes the
        nearest valid one. label: a class id, a class name, None (unconditional), or several (a sequence, or names
        and ids separated by commas) cycled over the images. Image ``i`` (0-based) has seed ``seed + i``. steps,
        sampler, cfg, extrapolation, time_shift, tail_compression: None for the package's. Checks, in order: num,
        size, classes, seeds, settings (docs/runtime-spec.md §2), then the cost of an image against
        ``limits.max_cost``.
        """
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
            raise GenerationError(f"num must be a whole number of at least 1, got {num!r}", "num")
        width = self.default_size[0] if width is None else width
        height = self.default_size[1] if height is None else height
        width, height = self.check_size(width, height, snap)
        parts = label.split(",") if isinstance(label, str) else list(label) if isinstance(label, (list, tuple)) \
            else [label]
        labels = [self.resolve_label(part) for part in parts] or [None]
        try:
            seed = portable_noise.check_seed(seed)
        except ValueError as err:
            raise GenerationError(str(err), "seed") from None
        if seed + num - 1 >= SEED_LIMIT:
            raise GenerationError(f"seed {seed} with num {num} needs seeds up to {seed + num - 1}; seeds must be "
                                  f"below 2**64", "seed", mentions=("num",))
        settings = self.settings(steps=steps, sampler=sampler, cfg=cfg, extrapolation=extrapolation,
                                 time_shift=time_shift, tail_compression=tail_compression, limits=limits)
        check_cost(self.tokens(width, height), settings, any(label is not None for label in labels), limits)
        return Jobs(width, height, labels, seed, int(num), settings)

    # -- generation -------------------------------------------------------------------------------------------
    def noise(self, request: Request) -> np.ndarray:
        """Initial latent noise (C, H/d, W/d) of a request: block 0 of its seed's portable stream (engines/noise.py),
        so an image depends only on its own seed, never on what shares its batch."""
        d = self.downsample
        return portable_noise.standard_normal(request.seed, (self.channels, request.height // d, request.width // d))

    def sample_latents(self, jobs: Sequence[Job], callback: Optional[Callback] = None,
                       noise: Optional[Sequence[np.ndarray]] = None) -> list[np.ndarray]:
        """Latents (C, H/d, W/d) of ``jobs`` (from :meth:`prepare`) sampled together as one padded batch.

        The jobs' settings must share :meth:`GenerationSettings.loop_key` (their guidance scale and extrapolation
        may differ). noise: the initial noise of each job instead of its seed's (validation).
        """
        if not jobs:
            raise GenerationError("no jobs to generate")
        requests = [job.request for job in jobs]
        per_row = [job.settings for job in jobs]
        if len({s.loop_key() for s in per_row}) != 1:
            raise GenerationError("jobs sampled together need one sampler, step count and guidance on/off")
        first = per_row[0]
        use_cfg = first.guided and any(r.label is not None for r in requests)
        p, d = self.patch_size, self.downsample
        noise = noise if noise is not None else [self.noise(r) for r in requests]
        batch = self.contract.padded_batch(
            [(r.height // (d * p), r.width // (d * p)) for r in requests], [s.rope for s in per_row],
            [self.null_class if r.label is None else r.label for r in requests],
            [patchify(np.asarray(z, dtype=F32), p) for z in noise], null_class=self.null_class if use_cfg else None)
        cfg = np.array([s.cfg for s in per_row], dtype=np.float64)
        out_name = self.contract.OUTPUT_NAMES[0]

        def velocity(x: np.ndarray, t: np.ndarray) -> np.ndarray:
            feed = batch.feed(t, x)
            outputs = self.backend.infer(feed)
            for on_infer in self._taps:
                on_infer(feed, outputs)
            out = outputs[out_name].astype(F32, copy=False)
            return guide(out, cfg, t, self.guided_channels, first.scale_pow) if use_cfg else out

        seeds = [int(r.seed) for r in requests]
        with np.errstate(over="ignore", invalid="ignore"):      # overflow is reported below, in one line
            x = integrate(velocity, batch.x, first.sampler, draw=portable_noise.sde_draw(seeds, batch.lengths),
                          callback=callback)
        latents = batch.unpack(x, p)
        for request, settings_used, latent in zip(requests, per_row, latents):
            if not np.isfinite(latent).all():
                raise GenerationError(f"sampling seed {request.seed} gave non-finite latents (float32 overflow), "
                                      f"so no image is made; lower the guidance scale (cfg {settings_used.cfg:g}) "
                                      f"or check the package with fit-export validate")
        return latents

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """Latent (C, h, w) -> uint8 RGB image (H, W, 3): through vae_decoder.onnx when the package has one."""
        if self.space == "pixel":
            z = latent / F32(self.scaling_factor)
            rgb = np.repeat(z, 3, axis=0) if z.shape[0] == 1 else z
        elif self.vae is not None:
            scaled = self.manifest.vae_decoder.input_is_scaled
            z = latent if scaled else latent / F32(self.scaling_factor)
            contract = self.manifest.vae_graph
            rgb = self.vae.infer(contract.feed(latent=z[None]))[contract.OUTPUT_NAMES[0]][0].astype(F32)
        else:
            rgb = self._preview(latent)
        if not np.isfinite(rgb).all():
            raise GenerationError("the decoder gave non-finite pixels, so no image is made; check the package "
                                  "with fit-export validate")
        image = np.clip((rgb + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(image.transpose(1, 2, 0))

    def _preview(self, latent: np.ndarray) -> np.ndarray:
        """Approximate RGB (3, H, W) in [-1, 1] of a (scaled) SD-VAE latent, upsampled, when no decoder is shipped."""
        rgb = np.einsum("chw,cr->rhw", latent[:4], _SD_LATENT_RGB)
        d = self.downsample
        return np.repeat(np.repeat(rgb, d, axis=1), d, axis=2)

    def generate_many(self, jobs: Sequence[Job], *, callback: Optional[Callback] = None) -> list[np.ndarray]:
        """uint8 RGB images (H, W, 3) of ``jobs`` (from :meth:`prepare`), all sampled in one padded batch."""
        return [self.decode(z) for z in self.sample_latents(jobs, callback)]

    def parameters(self, job: Job) -> dict:
        """The generation parameters of one image, as stored in its PNG text metadata: what was actually used
        (``tail_compression`` only when it is not 0, so that images without it keep the parameters they had)."""
        request, settings = job.request, job.settings
        label = request.label
        tail = settings.sampler.tail_compression
        return {
            "model": self.name, "width": request.width, "height": request.height,
            "class": label if label is None else int(label),
            "class_name": self.class_names[label] if label is not None and label < len(self.class_names) else None,
            "seed": int(request.seed), "sampler": settings.sampler.method, "steps": settings.sampler.steps,
            "time_shift": settings.sampler.time_shift, **({"tail_compression": tail} if tail != 0.0 else {}),
            "cfg": settings.cfg, "extrapolation": settings.extrapolation, "backend": self.backend_name,
            "variant": self.variant,
        }

    def generate(self, width: Optional[int] = None, height: Optional[int] = None, label=None, seed: int = 0, *,
                 steps: Optional[int] = None, sampler: Optional[str] = None, cfg: Optional[float] = None,
                 extrapolation: Optional[str] = None, time_shift: Optional[float] = None,
                 tail_compression: Optional[float] = None, snap: bool = False, output: str = "pil",
                 callback: Optional[Callback] = None):
        """One image of ``width`` x ``height`` pixels (the package default size when omitted).

        label: class id, class name, or None (unconditional). Returns a PIL image whose ``info["parameters"]``
        holds the generation parameters (``output="pil"``), or a uint8 array (H, W, 3) (``output="array"``).
        """
        if output not in ("pil", "array"):
            raise GenerationError(f"output must be 'pil' or 'array', got {output!r}", "output")
        job = self.prepare(width, height, label, seed, snap=snap, steps=steps, sampler=sampler, cfg=cfg,
                           extrapolation=extrapolation, time_shift=time_shift,
                           tail_compression=tail_compression)[0]
        image = self.generate_many([job], callback=callback)[0]
        if output == "array":
            return image
        from engines.png import to_pil

        return to_pil(image, self.parameters(job))


__all__ = ["load", "Pipeline", "Request", "GenerationSettings", "GenerationError", "Job", "Jobs", "Limits", "PackageError",
           "BackendError", "EXTRAPOLATIONS", "DEFAULT_MODEL_DIR", "SEED_LIMIT"]
