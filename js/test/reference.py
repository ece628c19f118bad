"""Python reference data for the JavaScript tests: images from engines (the code behind fit-run), RoPE tables of
every extrapolation name, portable noise, guidance scales and what engines.manifest reads from manifest objects.
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
from engines.sampler import guidance_scale


def main(job_path: str, out_dir: str) -> None:
    job = json.loads(Path(job_path).read_text())
    out = Path(out_dir)
    index = {"images": [], "tables": [], "noise": [], "guidance": [], "manifests": []}
    if job.get("images"):
        with load(job.get("package")) as pipe:
            for i, case in enumerate(job["images"]):
                one = pipe.prepare(case["width"], case["height"], case.get("label"), case["seed"],
                                   **{k: case.get(k) for k in ("steps", "sampler", "cfg", "extrapolation")})[0]
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
    for doc in job.get("manifests", []):
        index["manifests"].append(read_manifest(doc))
    (out / "index.json").write_text(json.dumps(index))


def read_manifest(doc) -> dict:
    """What Manifest.from_dict makes of a manifest object: its one-line error, or the variants, the referenced
    files and the variant ONNX Runtime runs for no precision, fp32 and int8 (or why not)."""
    try:
        manifest = Manifest.from_dict(doc)
    except PackageError as err:
        return {"error": str(err)}
    selected = {}
    for precision in (None, "fp32", "int8"):
        try:
            selected[str(precision)] = manifest.transformer.select("onnxruntime", precision).name
        except PackageError as err:
            selected[str(precision)] = str(err)
    return {"variants": [[v.name, v.file, v.weights_from] for v in manifest.transformer.all_variants()],
            "referenced": manifest.referenced_files(), "selected": selected}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
