"""The JavaScript runtime (js/src) is a structural twin of the Python runtime (engines/): one JS module per Python
module (the table in docs/runtime-spec.md), every public Python name exported under its camelCase name in the
Python module's order, class members likewise. Names without a twin are listed below with the reason."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TWINS = {
    "engines/errors.py": "js/src/errors.js",
    "engines/contract.py": "js/src/contract.js",
    "engines/manifest.py": "js/src/manifest.js",
    "engines/package.py": "js/src/package.js",
    "engines/backends/onnxruntime.py": "js/src/session.js",
    "engines/noise.py": "js/src/noise.js",
    "engines/rope.py": "js/src/rope.js",
    "engines/sampler.py": "js/src/sampler.js",
    "engines/request.py": "js/src/request.js",
    "engines/pipeline.py": "js/src/pipeline.js",
    "engines/png.py": "js/src/png.js",
}

_SECTION = "a plain object of the checked manifest, read through js/src/manifest-schema.js (generated from this " \
           "dataclass) and checked as its __post_init__ checks"
_WRITES = "JavaScript reads packages; writing them (fit-export) is Python only"
_TORCH = "for the PyTorch model's tables (fit/model.py), not the runtime"

# "module:Name" or "module:Class.member" -> (the JS name, why it differs), or (None, why there is none). A JS name
# "Class.member" is a class member, "file.js:name" an export of another module; a plain name stands where the
# Python name stands (members of a Python class without a JS class are functions of the twin module).
EXCEPTIONS = {
    "contract:TensorSpec.to_dict": (None, _WRITES),
    "contract:GraphContract.MEANINGS": (None, "descriptions for the field reference in docs/package-format.md"),
    "contract:GraphContract.dynamic_axes": (None, "an export setting (torch.onnx)"),
    "contract:GraphContract.shapes": (None, "a JavaScript feed takes the dynamic axes' lengths by name "
                                            "(feed(arrays, sizes)) and gives each input its shape from them"),
    "contract:GraphContract.example_feed": (None, "random feeds for tracing and smoke tests of the exporter"),
    "contract:GraphContract.polygraphy_metadata": (None, "Polygraphy is Python only"),
    "contract:VaeDecoderContract.MEANINGS": (None, "descriptions for the field reference in docs/package-format.md"),
    "contract:VaeDecoderContract.dynamic_axes": (None, "an export setting (torch.onnx)"),
    "contract:VaeDecoderContract.image_shape": (None, "the exporter's check of a decoder's output "
                                                      "(fit_export/package.py)"),
    "manifest:QUANTIZATION_MODES": (None, "written by fit-export quantize; no runtime reads it"),
    "manifest:OPENVINO_VARIANT": (None, "OpenVINO is Python only"),
    **{f"manifest:{name}": (None, _SECTION) for name in (
        "ModelSection", "LatentSection", "VariantSection", "TransformerSection", "VaeDecoderSection",
        "GuidanceSection", "SamplerSection", "RopeSection", "BucketSection", "SizesSection", "ReferenceSection",
        "FileEntry")},
    "manifest:TransformerSection.all_variants": ("allVariants", "a function of the transformer section"),
    "manifest:TransformerSection.variant": ("variant", "a function of the transformer section"),
    "manifest:TransformerSection.select": ("select", "a function of the transformer section"),
    "manifest:Manifest.NESTED": (None, "the sections of each field are in manifest-schema.js (`type`, `items`)"),
    "manifest:Manifest.runtime_files": (None, "fit-serve's check of a backend's files before it loads them"),
    "manifest:Manifest.replace": (None, _WRITES),
    "manifest:Manifest.to_dict": (None, _WRITES),
    "package:sha256_file": (None, "PackageIO.sha256 hashes the bytes that were read (node:crypto, WebCrypto)"),
    "package:file_entries": (None, _WRITES),
    "package:clear_hash_cache": (None, "each pipeline keeps the set of files it checked; there is no process cache"),
    "package:write_manifest": (None, _WRITES),
    "package:now_utc": (None, _WRITES),
    "onnxruntime:OPTIMIZATION_LEVELS": (None, "graphOptimizationLevel takes ONNX Runtime's JavaScript names"),
    "onnxruntime:DEVICES": (None, "executionProviders are passed to ONNX Runtime as they are"),
    "onnxruntime:MEMORY_POLICIES": (None, "arena settings of the Python binding"),
    "onnxruntime:cuda_available": (None, "execution providers are chosen by the caller (executionProviders)"),
    "noise:words": ("word", "one word at a time, in BigInt arithmetic"),
    "noise:standard_normal": (None, "arrays are flat in JavaScript: normals gives the same values row-major"),
    "rope:F32": (None, "JavaScript rounds to float32 with Math.fround"),
    "rope:RopeSettings": (None, "a plain {headDim, theta, method, decouple, oriMaxPeLen} object (JSDoc typedef)"),
    "rope:RopeSettings.with_method": ("withMethod", "a function of the settings object"),
    "rope:grid_frequencies": (None, _TORCH),
    "rope:assemble_tables": (None, _TORCH),
    "rope:rope_tables_from_grid": (None, _TORCH),
    "rope:image_grid": (None, _TORCH),
    "sampler:Velocity": (None, "a type: JSDoc @callback Velocity"),
    "sampler:Draw": (None, "a type: the draw argument of sde and integrate"),
    "sampler:Callback": (None, "a type: JSDoc @callback Progress"),
    "sampler:F32": (None, "JavaScript rounds to float32 with Math.fround"),
    "sampler:SamplerSettings": (None, "a plain {method, steps, atol, rtol, timeShift, tailCompression} object "
                                          "(JSDoc typedef SamplerSettings)"),
    "request:Limits.to_dict": (None, "fit-serve lists its limits in GET /v1/model; no JavaScript front end does"),
    "pipeline:F32": (None, "JavaScript rounds to float32 with Math.fround"),
    "pipeline:DEFAULT_MODEL_DIR": ("node.js:DEFAULT_MODEL_DIR", "a directory: Node only"),
    "pipeline:SEED_LIMIT": ("noise.js:SEED_LIMIT", "engines.pipeline re-exports it; JavaScript takes it from noise.js"),
    "pipeline:load": ("FitPipeline.load", "the core opens a PackageIO or a URL; node.js loadPackage opens a directory "
                                          "(the default model when none is given)"),
    "pipeline:Pipeline": ("FitPipeline", "the name JavaScript programs import"),
    "pipeline:Pipeline.tap": ("tap", "JavaScript has no with-statement: tap(onInfer, during) taps the calls while "
                                     "the async function during runs and removes the tap when it settles"),
    "pipeline:Pipeline.close": ("release", "ONNX Runtime's JavaScript sessions are freed with release()"),
    "png:to_pil": (None, "PIL is Python only; JavaScript images are {pixels, width, height}"),
    "png:save_png": ("node.js:savePng", "writes a file: Node only"),
    "png:read_parameters": (None, "no runtime reads PNGs back; the tests read them with js/test/helpers.mjs"),
}


def camel(name: str) -> str:
    """snake_case -> camelCase; CONSTANTS and CapWords stay."""
    if name.isupper() or "_" not in name:
        return name
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def short(module: str) -> str:
    return Path(module).stem


# ----------------------------------------------------------------------------------------------------------
# Reading both sides
# ----------------------------------------------------------------------------------------------------------

def python_names(path: Path) -> list[tuple[str, list[str]]]:
    """Public top-level names of a Python module in order, each with its public class members (methods,
    properties, CONSTANTS) in order."""
    out = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        else:
            continue
        for name in names:
            if name.startswith("_"):
                continue
            members = []
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef):
                        members.append(item.name)
                    elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        members += [t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()]
            out.append((name, [m for m in members if not m.startswith("_")]))
    return out


_EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:function\*?|class|const|let)\s+([A-Za-z_$][\w$]*)", re.M)
_EXPORT_DESTRUCTURED = re.compile(r"^export\s+const\s*\{([^}]*)\}\s*=", re.M)
_MEMBER = re.compile(r"^  (?:/\*\*.*?\*/\s*)?(?:static\s+)?(?:async\s+)?(?:get\s+|set\s+)?([A-Za-z_$][\w$]*)\s*[(=;]",
                     re.M)


def js_exports(path: Path) -> dict[str, int]:
    """Exported names of an ES module -> offset of their definition."""
    text = path.read_text()
    found = {m.group(1): m.start(1) for m in _EXPORT.finditer(text)}
    for m in _EXPORT_DESTRUCTURED.finditer(text):
        for name in re.finditer(r"[A-Za-z_$][\w$]*", m.group(1)):
            found[name.group(0)] = m.start(1) + name.start()
    return found


def js_classes(path: Path) -> set[str]:
    return set(re.findall(r"^export class ([A-Za-z_$][\w$]*)", path.read_text(), re.M))


def js_members(path: Path, cls: str) -> dict[str, int]:
    """Members (methods, getters, static and instance fields) of an exported class -> offset in its body."""
    text = path.read_text()
    start = re.search(rf"^export class {cls}\b.*$", text, re.M)
    if start is None:
        return {}
    end = re.compile(r"^}", re.M).search(text, start.end())
    body = text[start.end():end.start()]
    members = {}
    for m in _MEMBER.finditer(body):
        members.setdefault(m.group(1), m.start(1))
    return members


# ----------------------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------------------

def resolve(module: str, key: str, default: str):
    """(JS name or None, reason or None) for a Python name ``key`` of ``module``."""
    return EXCEPTIONS.get(f"{short(module)}:{key}", (default, None))


def locate(module: str, js_name: str, owner: str = None):
    """Where a JS name is: (offset in the twin module or None when elsewhere, found?)."""
    twin = ROOT / TWINS[module]
    if ":" in js_name:
        file, name = js_name.split(":")
        return None, name in js_exports(twin.parent / file)
    if "." in js_name:
        cls, member = js_name.split(".")
        return None, member in js_members(twin, cls)
    where = js_members(twin, owner) if owner else js_exports(twin)
    return where.get(js_name), js_name in where


@pytest.mark.parametrize("module", TWINS)
def test_every_public_python_name_has_its_javascript_twin_in_order(module):
    classes = js_classes(ROOT / TWINS[module])
    missing, order = [], []
    for name, members in python_names(ROOT / module):
        js_name, _ = resolve(module, name, camel(name))
        if js_name is not None:
            offset, found = locate(module, js_name)
            if not found:
                missing.append(f"{name} -> {js_name}")
            elif offset is not None:
                order.append((offset, name))
        js_class = js_name if js_name in classes else None
        member_order = []
        for member in members:
            default = camel(member) if js_class else None
            js_member, reason = resolve(module, f"{name}.{member}", default)
            if js_member is None:
                assert js_class is None or reason, f"{name}.{member}: no twin and no reason"
                continue
            offset, found = locate(module, js_member, js_class if ":" not in js_member else None)
            if not found:
                missing.append(f"{name}.{member} -> {js_member}")
            elif js_class and offset is not None:
                member_order.append((offset, f"{name}.{member}"))
        assert [n for _, n in sorted(member_order)] == [n for _, n in member_order], f"{name}: members out of order"
    assert not missing, f"{TWINS[module]} lacks: {', '.join(missing)}"
    assert [n for _, n in sorted(order)] == [n for _, n in order], f"{TWINS[module]}: not in {module}'s order"


def test_exceptions_name_real_python_names():
    names = {short(m): python_names(ROOT / m) for m in TWINS}
    known = {f"{mod}:{name}" for mod, entries in names.items() for name, _ in entries} | {
        f"{mod}:{name}.{member}" for mod, entries in names.items() for name, members in entries for member in members}
    assert set(EXCEPTIONS) <= known, sorted(set(EXCEPTIONS) - known)
    assert all(reason for _, reason in EXCEPTIONS.values())


def test_the_twin_table_in_the_runtime_spec_is_this_one():
    text = (ROOT / "docs" / "runtime-spec.md").read_text()
    rows = re.findall(r"^\| `(engines/[\w/]+\.py)` \| `(js/src/[\w-]+\.js)` \|", text, re.M)
    assert dict(rows) == TWINS


def test_core_modules_import_only_each_other():
    """The entry points (node.js, the page) inject ONNX Runtime and choose the IO; the core never imports them."""
    for path in sorted((ROOT / "js" / "src").glob("*.js")):
        if path.name == "node.js":
            continue
        code = re.sub(r"/\*.*?\*/|^\s*//[^\n]*", "", path.read_text(), flags=re.S | re.M)   # no comments
        specifiers = re.findall(r"""\b(?:import|from)\s*\(?\s*['"]([^'"]+)['"]""", code)
        assert all(s.startswith("./") and s != "./node.js" for s in specifiers), (path.name, specifiers)
