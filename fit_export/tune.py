"""Runtime-tuned copies of a package's transformer graph: for ONNX Runtime (``ort-optimize``: attention and RoPE as
single fused ops) and for OpenVINO (``ov-optimize``: the RoPE rotation as one MatMul).

The package's ``transformer.onnx`` stays opset 18 and standard-op (TensorRT parses it; ``fit_export.trt_ops``
checks it). Profiling the FiTv2-XL shape on ONNX Runtime's CPU provider (docs/runtime.md, *Performance*) shows
that past the linear layers the time goes to what the exporter writes for ``scaled_dot_product_attention`` and
for the interleaved 2D RoPE:

    attention: MatMul(q*s, kT*s) -> Add(mask bias) -> Softmax -> IsNaN -> Where(nan, 0) -> MatMul(., v)
    RoPE:      x*cos + Reshape(Concat(-Gather(x2, 1), Gather(x2, 0)))*sin      (x2: x viewed as (..., Dh/2, 2))

Each arrow is a pass over a (batch, heads, seq, seq) or (batch, heads, seq, head_dim) tensor.
:func:`fuse_attention` replaces the first chain with ONNX ``Attention`` (opset 23; query, key and value
(B, H, N, Dh), the same additive mask as ``attn_mask``), which ONNX Runtime runs as one kernel; the NaN guard
is dropped: the package's mask lets every token attend at least to itself, so no softmax row is empty.
:func:`fuse_rotary` replaces the second with ONNX ``RotaryEmbedding`` (opset 23, ``interleaved=1``) fed
per-token (B, N, Dh/2) tables: the package's ``rope_cos``/``rope_sin`` repeat each angle for the two members of
a pair (``engines.rope.assemble_tables``), so every second column is the whole table. The copy is written at
default-domain opset 23; ``ort-optimize`` writes it next to the graph (``transformer.ort.onnx``) after checking
it against the graph, and records it in the manifest as the variant ``ort``; the ONNX Runtime backend runs it when
present and falls back to ``transformer.onnx`` when the installed ONNX Runtime cannot load it (versions without
opset-23 kernels).

OpenVINO (2026.4) runs the same interleaved rotation, in bf16, with a reference (unvectorised) Concat kernel (its
``PERF_COUNT`` profile says ``ref_bf16``). ``rotate_half`` is linear in x, so :func:`rotation_as_matmul` writes it
as ``MatMul(x, R)`` with a fixed (Dh, Dh) matrix of 0 and ±1, exact in any precision, and leaves the rest of the
graph (standard opset-18 ops) as it is; ``ov-optimize`` records that copy (``transformer.ov.onnx``) as the variant
``ov``, which the OpenVINO backend runs when present (f32 and bf16 alike); benchmarks/edge_cpu.py measures a bf16
step at the FiTv2-XL shape 4 % faster on it.

Each copy holds no weights of its own (:func:`share_weights`): every large initializer is ONNX external data that
points at the bytes of the same tensor inside ``transformer.onnx`` (location, offset, length) — or, for graphs
over 2 GB, at the graph's own external weights file — so adding it costs kilobytes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engines import manifest as mf
from engines.atomic import atomic_file
from engines.metrics import cosine
from fit_export.onnx_export import read_onnx
from fit_export.package_writer import update_package

ORT_FILE = "transformer.ort.onnx"
OPENVINO_FILE = "transformer.ov.onnx"
COPY_OPSET = 23          # ONNX Attention and RotaryEmbedding


class TuneError(ValueError):
    """The graph does not have the shape this pass rewrites, or the package cannot take the optimized copy."""


class _Graph:
    """Producer/consumer lookups over an onnx GraphProto."""

    def __init__(self, graph: onnx.GraphProto, base_dir: str = ""):
        self.graph = graph
        self.base_dir = base_dir                           # where external tensor data lives
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.constants = {init.name: init for init in graph.initializer}

    def only_consumer(self, name: str, op_type: str):
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def made_by(self, name: str, op_type: str):
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def scalar(self, name: str) -> Optional[float]:
        init = self.constants.get(name)
        if init is None:
            node = self.made_by(name, "Constant")
            if node is None:
                return None
            init = node.attribute[0].t
        value = numpy_helper.to_array(init, self.base_dir)
        return float(value.reshape(-1)[0]) if value.size == 1 else None


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _untransposed_key(g: _Graph, key_t: str) -> Optional[str]:
    """k (B, H, N, Dh) behind the exporter's kT = Reshape(Transpose(Reshape(k, (-1, N, Dh)), (0, 2, 1)))."""
    outer = g.made_by(key_t, "Reshape")
    transpose = outer and g.made_by(outer.input[0], "Transpose")
    inner = transpose and g.made_by(transpose.input[0], "Reshape")
    if inner is None or list(_attr(transpose, "perm", [])) != [0, 2, 1]:
        return None
    return inner.input[0]


def _splice(model: onnx.ModelProto, replace: dict[str, list], prologue: Optional[list] = None) -> None:
    """Put ``replace[out]`` where the node writing ``out`` was, ``prologue`` first; drop what became unused."""
    nodes = list(prologue or [])
    for node in model.graph.node:
        nodes.extend(replace.get(node.output[0], [node]) if node.output else [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    remove_unused(model.graph)


def _require_opset(model: onnx.ModelProto, version: int) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, version)
            return
    model.opset_import.append(helper.make_opsetid("", version))


def fuse_attention(model: onnx.ModelProto, base_dir: str = "") -> int:
    """Replace every decomposed masked attention with ONNX ``Attention`` (opset 23; the head count comes from
    the (B, H, N, Dh) inputs). Returns the count.

    base_dir: directory of the model's external data, when it has some and it is not loaded.
    """
    g = _Graph(model.graph, base_dir)
    replace: dict[str, list] = {}                   # output of each chain's context MatMul -> its replacement
    for softmax in [n for n in model.graph.node if n.op_type == "Softmax"]:
        add = g.made_by(softmax.input[0], "Add")
        scores = add and g.made_by(add.input[0], "MatMul")
        if scores is None:
            continue
        q_mul, k_mul = g.made_by(scores.input[0], "Mul"), g.made_by(scores.input[1], "Mul")
        if q_mul is None or k_mul is None:
            continue
        q_scale, k_scale = g.scalar(q_mul.input[1]), g.scalar(k_mul.input[1])
        key = _untransposed_key(g, k_mul.input[0])
        users = g.consumers.get(softmax.output[0], [])
        is_nan = next((n for n in users if n.op_type == "IsNaN"), None) if len(users) == 2 else None
        where = is_nan and g.only_consumer(is_nan.output[0], "Where")
        context = where and g.only_consumer(where.output[0], "MatMul")
        if None in (q_scale, k_scale, key, context) or context.input[0] != where.output[0]:
            continue
        if g.scalar(where.input[1]) != 0.0 or where.input[2] != softmax.output[0]:
            continue
        attention = helper.make_node("Attention", [q_mul.input[0], key, context.input[1], add.input[1]],
                                     [context.output[0]], scale=q_scale * k_scale,
                                     name=f"{softmax.name}/fused_attention")
        replace[context.output[0]] = [attention]
    if replace:
        _splice(model, replace)
        _require_opset(model, COPY_OPSET)
    return len(replace)


def _rotated_half(g: _Graph, name: str) -> Optional[str]:
    """x behind the exporter's interleaved rotation Reshape(Concat(Unsqueeze(-x2[..., 1]), Unsqueeze(x2[..., 0])))
    with x2 = Reshape(x, (..., Dh/2, 2)); None when ``name`` is not that."""
    merge = g.made_by(name, "Reshape")
    stack = merge and g.made_by(merge.input[0], "Concat")
    if stack is None or len(stack.input) != 2 or _attr(stack, "axis") != -1:
        return None
    first, second = (g.made_by(i, "Unsqueeze") for i in stack.input)
    neg = first and g.made_by(first.input[0], "Neg")
    odd = neg and g.made_by(neg.input[0], "Gather")
    even = second and g.made_by(second.input[0], "Gather")
    if odd is None or even is None or odd.input[0] != even.input[0]:
        return None
    if g.scalar(odd.input[1]) != 1.0 or g.scalar(even.input[1]) != 0.0 or _attr(odd, "axis") != _attr(even, "axis"):
        return None
    pairs = g.made_by(odd.input[0], "Reshape")
    return pairs.input[0] if pairs is not None else None


def fuse_rotary(model: onnx.ModelProto, cos_input: str = "rope_cos", sin_input: str = "rope_sin",
                base_dir: str = "") -> int:
    """Replace every ``x*cos + rotate_interleaved(x)*sin`` on the graph inputs ``cos_input``/``sin_input``
    ((B, N, Dh), each angle repeated for both members of a pair) with ONNX ``RotaryEmbedding`` (opset 23,
    ``interleaved=1``) fed their every-second column. Returns the count."""
    g = _Graph(model.graph, base_dir)
    tables = {name: f"{name}/pairs" for name in (cos_input, sin_input)}      # (B, N, Dh/2), sliced once
    replace: dict[str, list] = {}
    for add in [n for n in model.graph.node if n.op_type == "Add"]:
        products = [g.made_by(i, "Mul") for i in add.input]
        if None in products:
            continue
        for plain, rotated in (products, products[::-1]):
            cos_u, sin_u = g.made_by(plain.input[1], "Unsqueeze"), g.made_by(rotated.input[1], "Unsqueeze")
            if cos_u is None or sin_u is None or (cos_u.input[0], sin_u.input[0]) != (cos_input, sin_input):
                continue
            x = plain.input[0]
            if _rotated_half(g, rotated.input[0]) != x:
                continue
            replace[add.output[0]] = [helper.make_node("RotaryEmbedding", [x, tables[cos_input], tables[sin_input]],
                                                       [add.output[0]], interleaved=1,
                                                       name=f"{add.name}/fused_rotary")]
            break
    if not replace:
        return 0
    prefix = "fused_rotary"
    model.graph.initializer.extend(numpy_helper.from_array(np.array([value], np.int64), f"{prefix}/{key}")
                                   for key, value in (("start", 0), ("end", 2 ** 62), ("axis", -1), ("step", 2)))
    prologue = [helper.make_node("Slice", [name, f"{prefix}/start", f"{prefix}/end", f"{prefix}/axis",
                                           f"{prefix}/step"], [out], name=f"{out}/slice")
                for name, out in tables.items()]
    _splice(model, replace, prologue)
    _require_opset(model, COPY_OPSET)
    return len(replace)


#################################################################################
#                           Weights shared with the graph                       #
#################################################################################

SHARE_MIN_BYTES = 1024            # smaller initializers stay inside the copy


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int):
    """(field number, start, end) of each length-delimited field of the protobuf message in ``buf[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield number, pos, pos + length
            pos += length
        else:
            raise TuneError(f"unexpected protobuf wire type {wire} while reading the graph's weights")


def raw_data_offsets(path) -> dict[str, tuple[int, int]]:
    """name -> (offset, length) of the ``raw_data`` bytes of every initializer stored inside an ONNX file
    (ModelProto.graph = field 7, GraphProto.initializer = 5, TensorProto.name = 8, TensorProto.raw_data = 9)."""
    buf = Path(path).read_bytes()
    offsets = {}
    for number, start, end in _fields(buf, 0, len(buf)):
        if number != 7:
            continue
        for field_number, t_start, t_end in _fields(buf, start, end):
            if field_number != 5:
                continue
            name, raw = None, None
            for tensor_field, v_start, v_end in _fields(buf, t_start, t_end):
                if tensor_field == 8:
                    name = buf[v_start:v_end].decode()
                elif tensor_field == 9:
                    raw = (v_start, v_end - v_start)
            if name is not None and raw is not None:
                offsets[name] = raw
    return offsets


def share_weights(model: onnx.ModelProto, source) -> Optional[str]:
    """Point every initializer of ``model`` of at least SHARE_MIN_BYTES whose bytes are stored inside the ONNX
    file ``source`` at those bytes (ONNX external data: location = source's file name, offset, length); tensors
    already external keep their location. Returns the file the weights now come from (None: nothing shared)."""
    from onnx.external_data_helper import set_external_data

    source = Path(source)
    offsets = raw_data_offsets(source)
    shared = None
    with open(source, "rb") as f:
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                shared = next(e.value for e in init.external_data if e.key == "location")
                continue
            where = offsets.get(init.name)
            if where is None or where[1] < SHARE_MIN_BYTES or len(init.raw_data) != where[1]:
                continue
            f.seek(where[0])
            if f.read(where[1]) != init.raw_data:
                continue
            set_external_data(init, location=source.name, offset=where[0], length=where[1])
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.EXTERNAL
            shared = source.name
    return shared


def remove_unused(graph: onnx.GraphProto) -> None:
    """Drop nodes (and initializers) no graph output depends on."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)


#################################################################################
#                             The package's ORT copy                            #
#################################################################################

def check_outputs(reference_path, optimized_path, head_dim: int, token_dim: int, seed: int = 0) -> dict:
    """Run both graphs on ONNX Runtime CPU on a padded batch of the graph contract (grids 4x6 and 3x4, the second
    row padded with tokens of 3e4; the runtime's RoPE tables) and compare ``v``: max abs relative to the output
    scale, and cosine."""
    import onnxruntime as ort

    from engines.contract import GraphContract
    from engines.rope import RopeSettings

    rng = np.random.default_rng(seed)
    batch = GraphContract(token_dim, token_dim, head_dim).padded_batch([(4, 6), (3, 4)], RopeSettings(head_dim), [1, 0])
    feed = batch.feed([0.3, 0.8], rng.standard_normal(batch.x.shape))
    mask = feed["mask"]
    feed["x"][mask == 0] = 3e4
    outputs = []
    for path in (reference_path, optimized_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(["v"], feed)[0].astype(np.float64))
    ref, out = outputs
    scale = float(np.abs(ref).max())
    return {"max_abs_relative_to_scale": float(np.abs(ref - out).max() / max(scale, 1e-12)),
            "cosine": cosine(ref, out),
            "padding_max_abs": float(np.abs(out[mask == 0]).max()), "finite": bool(np.isfinite(out).all())}


MAX_ABS_TOLERANCE = 1e-4          # of the output scale, as fit-export validate asks of fp32 graphs
COSINE_TOLERANCE = 0.9999


def rotation_as_matmul(model: onnx.ModelProto, head_dim: int, base_dir: str = "") -> int:
    """Replace every interleaved rotation ``rotate_half(x)`` (the exporter's Reshape/Gather/Neg/Concat chain, see
    :func:`_rotated_half`) with ``MatMul(x, R)``, R the (Dh, Dh) matrix with ``R[2k, 2k+1] = 1`` and
    ``R[2k+1, 2k] = -1``: column 2k of ``x @ R`` is ``-x[2k+1]`` and column 2k+1 is ``x[2k]``, each output one input
    with its sign, so the product is exact in any precision. Returns the count."""
    g = _Graph(model.graph, base_dir)
    name = "rotate_half/matrix"
    replace = {}
    for node in model.graph.node:
        if node.op_type == "Reshape" and (x := _rotated_half(g, node.output[0])) is not None:
            replace[node.output[0]] = [helper.make_node("MatMul", [x, name], [node.output[0]],
                                                        name=f"{node.name}/rotate_matmul")]
    if replace:
        matrix = np.zeros((head_dim, head_dim), np.float32)
        pairs = np.arange(0, head_dim, 2)
        matrix[pairs, pairs + 1] = 1.0
        matrix[pairs + 1, pairs] = -1.0
        model.graph.initializer.append(numpy_helper.from_array(matrix, name))
        _splice(model, replace)
    return len(replace)


def _tune_for_onnxruntime(model: onnx.ModelProto, source: Path, head_dim: int) -> dict:
    fused = fuse_attention(model, str(source.parent))
    if fused == 0:
        raise TuneError(f"{source.name} has no attention of the form this pass fuses "
                               f"(MatMul -> Add -> Softmax -> IsNaN/Where -> MatMul); nothing written")
    rotary = fuse_rotary(model, base_dir=str(source.parent))
    return {"fused_attention": fused, "fused_rotary": rotary, "opset": COPY_OPSET}


def _tune_for_openvino(model: onnx.ModelProto, source: Path, head_dim: int) -> dict:
    rotations = rotation_as_matmul(model, head_dim, str(source.parent))
    if rotations == 0:
        raise TuneError(f"{source.name} has no interleaved RoPE rotation of the form this pass rewrites "
                               f"(Reshape -> Gather/Neg -> Concat -> Reshape); nothing written")
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"fused_attention": 0, "fused_rotary": rotations, "opset": opset}


#: runtime -> (variant name, file, rewrite): the tuned copies this module writes
TUNED_COPIES = {
    "onnxruntime": (mf.ORT_VARIANT, ORT_FILE, _tune_for_onnxruntime),
    "openvino": (mf.OPENVINO_VARIANT, OPENVINO_FILE, _tune_for_openvino),
}


def optimize_graph(source, target, head_dim: int, token_dim: int, runtime: str = "onnxruntime") -> dict:
    """Write the copy of the transformer graph ``source`` tuned for ``runtime`` (``onnxruntime`` or ``openvino``)
    to ``target`` (in the same directory: the copy reads its weights from ``source`` or from ``source``'s external
    weights file) after checking it against ``source`` on ONNX Runtime.

    Returns ``{"fused_attention": count, "fused_rotary": count, "opset": ..., "weights_from": file,
    "check": check_outputs(...)}``;
    raises :class:`TuneError` (and writes nothing) when there is nothing to rewrite or the outputs differ.
    """
    source, target = Path(source), Path(target)
    if source.parent.resolve() != target.parent.resolve():
        raise TuneError(f"the tuned copy shares the weights of {source.name}: write it next to it")
    model = read_onnx(source)                                     # external weights stay where they are
    result = TUNED_COPIES[runtime][2](model, source, head_dim)
    weights_from = share_weights(model, source)
    for node in model.graph.node:                   # the exporter's per-node debug notes: most of the copy's bytes
        node.ClearField("metadata_props")
    with atomic_file(target) as f:                                # checked before it replaces the target
        onnx.save(model, f)
        f.flush()
        check = check_outputs(source, f.name, head_dim, token_dim)
        if not (check["finite"] and check["padding_max_abs"] == 0.0 and check["cosine"] >= COSINE_TOLERANCE
                and check["max_abs_relative_to_scale"] <= MAX_ABS_TOLERANCE):
            raise TuneError(f"the optimized graph differs from {source.name}: {check}; nothing written")
    return dict(result, weights_from=weights_from, check=check)


def optimize_package(package, runtime: str = "onnxruntime") -> dict:
    """Add the copy tuned for ``runtime`` to a fp32 package (``transformer.ort.onnx`` for ``onnxruntime``,
    ``transformer.ov.onnx`` for ``openvino``), checked against ``transformer.onnx`` and recorded in the manifest
    (the variant ``ort`` / ``ov`` under ``transformer.variants`` + its sha256 under ``files``). Returns that
    manifest entry. The package is replaced as a whole (:func:`fit_export.package_writer.update_package`), never
    edited in place.

    Raises :class:`TuneError`, :class:`engines.manifest.PackageError` or
    :class:`fit_export.onnx_export.ExportError` (the package's folder cannot be written).
    """
    name, file, _ = TUNED_COPIES[runtime]
    command = "ort-optimize" if runtime == "onnxruntime" else "ov-optimize"
    with update_package(package) as draft:
        doc = draft.manifest
        transformer, model = doc.transformer, doc.model
        if transformer.precision != "fp32":
            raise TuneError(f"{command} rewrites fp32 packages; {package} is {transformer.precision}")
        result = optimize_graph(draft.path / transformer.file, draft.add(file), model.head_dim, model.token_dim,
                                runtime)
        entry = mf.VariantSection(name=name, file=file, precision="fp32", runtime=runtime,
                                  source=transformer.precision, **result)
        variants = tuple(v for v in transformer.variants if v.name != name) + (entry,)
        draft.manifest = doc.replace(transformer=dataclasses.replace(transformer, variants=variants),
                                     files=draft.files)
    return entry.to_dict()
