"""Small readers and writers used by the S4 reference tools: the safetensors
weight format (NumPy only) and the model repository's `config.pbtxt` (an
`ssm.v1.ModelConfig` in protobuf text format): a writer with no dependency,
so the converter runs without a build, and a reader that is protobuf's own
(text_format with the generated model_config_pb2), which the tests use.

safetensors layout (as DESIGN.md section 2 states it):
  bytes 0..7   little-endian u64 n = length of the JSON header
  bytes 8..8+n UTF-8 JSON: {name: {"dtype", "shape", "data_offsets": [b, e]}}
               plus an optional "__metadata__" object of string -> string;
               this writer pads the header with spaces to a multiple of 8
  then         the raw little-endian row-major tensor bytes; offsets are
               relative to the first byte after the header.
Tensors are written in the order given, densely packed, so the output is a
pure function of the input (no timestamps, no dict-order surprises).
"""

import json
import struct

import numpy as np

_DTYPES = {  # safetensors name -> little-endian NumPy dtype
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def _dtype_name(dt):
    dt = np.dtype(dt).newbyteorder("<") if np.dtype(dt).byteorder == ">" else np.dtype(dt)
    for name, ref in _DTYPES.items():
        if ref.kind == dt.kind and ref.itemsize == dt.itemsize:
            return name
    raise ValueError(f"dtype {dt} has no safetensors name here")


def serialize_safetensors(tensors, metadata=None):
    """tensors: list of (name, np.ndarray) in file order. Returns bytes."""
    header = {}
    chunks = []
    offset = 0
    seen = set()
    for name, arr in tensors:
        if name in seen or name == "__metadata__":
            raise ValueError(f"duplicate or reserved tensor name {name!r}")
        seen.add(name)
        arr = np.asarray(arr)
        dname = _dtype_name(arr.dtype)
        data = np.ascontiguousarray(arr, dtype=_DTYPES[dname]).tobytes(order="C")
        header[name] = {
            "dtype": dname,
            "shape": [int(d) for d in arr.shape],
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    if metadata:
        header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}, **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def write_safetensors(path, tensors, metadata=None):
    with open(path, "wb") as f:
        f.write(serialize_safetensors(tensors, metadata))


def parse_safetensors(blob, source="<bytes>"):
    """Returns (dict name -> np.ndarray (a copy), metadata dict, names in order).
    Raises ValueError naming `source` on any malformed header."""
    if len(blob) < 8:
        raise ValueError(f"{source}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError(f"{source}: header length {n} exceeds the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    spans = []
    for name, info in header.items():
        dname = info["dtype"]
        if dname not in _DTYPES:
            raise ValueError(f"{source}: tensor {name}: unsupported dtype {dname}")
        shape = tuple(int(d) for d in info["shape"])
        b, e = (int(x) for x in info["data_offsets"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= b <= e <= len(data)) or e - b != count * _DTYPES[dname].itemsize:
            raise ValueError(f"{source}: tensor {name}: bad data_offsets {b},{e}")
        spans.append((b, e, name))
        out[name] = np.frombuffer(data[b:e], dtype=_DTYPES[dname]).reshape(shape).copy()
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{source}: tensors {n0} and {n1} overlap")
    return out, meta, list(header.keys())


def read_safetensors(path):
    with open(path, "rb") as f:
        tensors, meta, _ = parse_safetensors(f.read(), str(path))
    return tensors, meta


# --------------------------------------------------------------------------
# config.pbtxt (ssm.v1.ModelConfig, protobuf text format)
# --------------------------------------------------------------------------

# The S4Stack fields in proto field-number order, with their enum prefixes.
_S4_FIELDS = [
    ("n_layers", int), ("d_model", int), ("d_state", int),
    ("kernel", "KERNEL_KIND_"), ("discretization", "DISCRETIZATION_KIND_"),
    ("rank", int), ("activation", "ACTIVATION_"),
    ("output_linear", "OUTPUT_LINEAR_"), ("norm", "NORM_PLACEMENT_"),
    ("residual", bool), ("bidirectional", bool), ("encoder", bool),
    ("decoder", bool), ("layer_norm_eps", float),
    ("weight_naming", "WEIGHT_NAMING_"),
    ("dt_transform", "PARAM_TRANSFORM_"), ("real_transform", "PARAM_TRANSFORM_"),
    ("imag_transform", "PARAM_TRANSFORM_"), ("dt_fast", bool),
    ("output_activation", "ACTIVATION_"), ("norm_kind", "NORM_KIND_"),
    ("final_norm", bool),
]


def _quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def format_model_config(cfg, comment_lines=()):
    """cfg: dict with name, description, d_input, d_output, max_length and
    's4': dict of S4Stack fields (enums given without their prefix, e.g.
    kernel='DPLR'). Every field is written explicitly, in proto order."""
    out = [f"# {c}" if c else "#" for c in comment_lines]
    out.append(f"name: {_quote(cfg['name'])}")
    out.append(f"description: {_quote(cfg['description'])}")
    for k in ("d_input", "d_output", "max_length"):
        out.append(f"{k}: {int(cfg[k])}")
    out.append("s4 {")
    s4 = cfg["s4"]
    for field, kind in _S4_FIELDS:
        v = s4[field]
        if kind is int:
            text = str(int(v))
        elif kind is bool:
            text = "true" if v else "false"
        elif kind is float:
            text = repr(float(v))
        else:
            text = kind + str(v)
        out.append(f"  {field}: {text}")
    out.append("}")
    return "\n".join(out) + "\n"


def model_config_module(gen_dir=None):
    """The generated `ssm/v1/model_config_pb2` (Debian's python3-protobuf):
    from `gen_dir`, else $SSM_PY_GEN, else the Python package's
    <repo>/client/python/ssmserve/_proto, where the build generates it
    (client/CMakeLists.txt, target ssm_python_stubs; or
    client/python/generate_stubs.py)."""
    import importlib
    import os
    import sys
    from pathlib import Path
    gen = gen_dir or os.environ.get("SSM_PY_GEN") or str(
        Path(__file__).resolve().parents[2] / "client" / "python" / "ssmserve" / "_proto")
    if not (Path(gen) / "ssm" / "v1" / "model_config_pb2.py").is_file():
        raise ImportError(f"no ssm/v1/model_config_pb2.py under {gen}: build the target "
                          "ssm_python_stubs, run client/python/generate_stubs.py, or set "
                          "SSM_PY_GEN")
    if gen not in sys.path:
        sys.path.insert(0, gen)
    return importlib.import_module("ssm.v1.model_config_pb2")


def parse_model_config(text, gen_dir=None):
    """Parses config.pbtxt with protobuf's own text_format into the
    generated ModelConfig (unknown fields and bad enum names are errors, as
    for the server) and returns it as json_format.MessageToDict gives it:
    enum values by name, fields without presence at their defaults included
    (optional ones, e.g. residual, only when set)."""
    from google.protobuf import json_format, text_format
    pb2 = model_config_module(gen_dir)
    msg = text_format.Parse(text, pb2.ModelConfig())
    return json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                     including_default_value_fields=True)
