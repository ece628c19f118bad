"""Python reference data for the JavaScript tests: images from engines (the code behind fit-run), RoPE tables of
every extrapolation name, portable noise, guidance scales, the samplers on a synthetic velocity field and what
engines.manifest reads from manifest objects.
Reads a JSON job from argv[1], writes binaries into argv[2].

Run by js/test/*.test.mjs with the repository's .venv-core python; not a test itself.
"""
import json
import sys
from pathlib import Path

import numpy as np

from engines import noise
from engines.errors import PackageError
from engines.manifest import Manifest
from engines.pipeline import load
from engines.rope import RopeSettings, rope_tables
from engines.sampler import SamplerSettings, guidance_scale, integrate


def main(job_path: str, out_dir: str) -> None:
    job = json.loads(Path(job_path).read_text())
    out = Path(out_dir)
    index = {"images": [], "tables": [], "noise": [], "guidance": [], "samplers": [], "manifests": []}
    if job.get("images"):
        with load(job.get("package")) as pipe:
            for i, case in enumerate(job["images"]):
                one = pipe.prepare(case["width"], case["height"], case.get("label"), case["seed"],
                                   **{k: case.get(k) for k in ("steps", "sampler", "cfg", "extrapolation")},
                                   time_shift=case.get("timeShift"), tail_compression=case.get("tailCompression"))[0]
                image = pipe.generate_many([one])[0]
                (out / f"image{i}.bin").write_bytes(image.tobytes())
                index["images"].append({"file": f"image{i}.bin", "parameters": pipe.parameters(one)})
    for i, case in enumerate(job.get("tables", [])):
        base = RopeSettings(case["head_dim"], case["theta"], "normal", case["decouple"], case["ori"])
        settings = base.with_method(case["method"], case["ori"])
        cos, sin = rope_tables(settings, case["h"], case["w"])
        (out / f"table{i}.bin").write_bytes(np.stack([cos, sin]).astype(np.float32).tobytes())
        index["tables"].append(f"table{i}.bin")
    for i, case in enumerate(job.get("noise", [])):
        values = noise.normals(int(case["seed"]), case["count"], case["block"])
        (out / f"noise{i}.bin").write_bytes(values.tobytes())
        index["noise"].append(f"noise{i}.bin")
    for case in job.get("guidance", []):
        t = np.asarray(case["t"], np.float32)
        index["guidance"].append(guidance_scale(case["cfg"], t, case["scale_pow"]).astype(float).tolist())
    for i, case in enumerate(job.get("samplers", [])):
        x, times = sample_synthetic(case)
        (out / f"sampler{i}.bin").write_bytes(x.tobytes())
        index["samplers"].append({"file": f"sampler{i}.bin", "times": times})
    for doc in job.get("manifests", []):
        index["manifests"].append(read_manifest(doc))
    (out / "index.json").write_text(json.dumps(index))


def sample_synthetic(case) -> tuple[np.ndarray, list[float]]:
    """integrate from the portable normals of seed 1 (B = 2 rows of 8 x 4) on v(x, t) = (d - x) (1 + t), d the normals
    of seed 2: the result (float32) and the times the progress callback reported."""
    x = noise.normals(1, 64, 0).reshape(2, 8, 4)
    d = noise.normals(2, 64, 0).reshape(2, 8, 4)
    times = []
    settings = SamplerSettings(case["method"], case["steps"], time_shift=case["shift"], tail_compression=case["tail"])
    x = integrate(lambda x, t: (d - x) * (np.float32(1) + t)[:, None, None], x, settings,
                  callback=lambda done, total, t: times.append(t))
    return x, times


def read_manifest(doc) -> dict:
    """What Manifest.from_dict makes of a manifest object: its one-line error, or the variants, the referenced
    files and the variant ONNX Runtime runs for no precision, fp32 and int8, and for no precision and fp32 on a device
    with float16 (or why not)."""
    try:
        manifest = Manifest.from_dict(doc)
    except PackageError as err:
        return {"error": str(err)}
    selected = {}
    for precision, fp16 in ((None, False), ("fp32", False), ("int8", False), (None, True), ("fp32", True)):
        try:
            selected[str(precision) + (" fp16" if fp16 else "")] = manifest.transformer.select(
                "onnxruntime", precision, fp16=fp16).name
        except PackageError as err:
            selected[str(precision) + (" fp16" if fp16 else "")] = str(err)
    return {"variants": [[v.name, v.file, v.weights_from] for v in manifest.transformer.all_variants()],
            "referenced": manifest.referenced_files(), "selected": selected}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
