#!/usr/bin/python3
"""Converts a checkpoint of an S4 model trained with the official PyTorch S4
code (state-spaces/s4) into an ssmserve model-repository entry.

    /usr/bin/python3 tools/convert_s4_checkpoint.py CHECKPOINT.pt|.ckpt \\
        --repo DIR --name NAME [--version 1] [--d-input N] [--prenorm]
        [--activation gelu|identity] [--discretization zoh|bilinear]
        [--max-length N] [--description TEXT] [--force]

writes DIR/NAME/config.pbtxt (an ssm.v1.ModelConfig, weight_naming
WEIGHT_NAMING_S4_REFERENCE) and DIR/NAME/VERSION/weights.safetensors.

Input: anything torch.load(map_location='cpu') reads that is a bare
state_dict, a dict with a 'state_dict' entry (PyTorch Lightning .ckpt) or
a dict with a 'model' entry (example.py's checkpoint). Leading 'model.',
'module.' (DataParallel) and '_orig_mod.' (torch.compile) are stripped from
every name, repeatedly.

Accepted names after that (the model of example.py, used sequence to
sequence; `<i>` = 0..n_layers-1, layer prefix `s4_layers.<i>.` as in
example.py, or `layers.<i>.`, which is renamed to `s4_layers.<i>.`):
  encoder.weight (H, d_input), encoder.bias (H)            optional
  decoder.weight (d_output, H), decoder.bias (d_output)    optional
  norms.<i>.weight (H), norms.<i>.bias (H)                 optional, all or none
  S4Block with SSMKernelDPLR ('dplr'/'s4'/'nplr' kernel):
    s4_layers.<i>.layer.kernel.{inv_dt (H,1), A_real (S,N/2), A_imag (S,N/2),
      B (1,S,N/2,2), C (ch,H,N/2,2), P (R,S,N/2,2), l_kernel ()},
    s4_layers.<i>.layer.D (1,H)
  S4Block with SSMKernelDiag ('diag'/'s4d' kernel): the same without P and
    l_kernel
  either S4Block: s4_layers.<i>.output_linear.0.{weight,bias}: (2H,H)/(2H) for
    final_act='glu' (GLU), (H,H)/(H) taken as final_act='id' (LINEAR), absent
    for final_act=None (NONE)
  minimal models/s4/s4d.py S4D:
    s4_layers.<i>.kernel.{log_dt (H,), log_A_real (H,N/2), A_imag (H,N/2),
      C (H,N/2,2)}, s4_layers.<i>.D (H,),
    s4_layers.<i>.output_linear.0.weight (2H,H,1), .bias (2H)
ch = 2 means bidirectional; S (n_ssm) must divide H; rank R in 1..4.
Anything else is refused with a list of the unknown tensors. Not
representable and refused: dt_tie=False (inv_dt of shape (H, N/2)), the
real-valued SSM (is_real: no A_imag), kernel channels > 1 (D with more than
one row), GLU as the FFTConv activation.

What the shapes cannot tell comes from flags: --prenorm (default postnorm,
as in example.py), --activation (FFTConv's activation, default gelu; the
minimal S4D always uses GELU), --discretization (SSMKernelDiag's disc,
default zoh; DPLR is always bilinear), --max-length (default: the largest
l_kernel in the checkpoint; required when there is none). The service
computes the full-length kernel for every sequence (FFTConv l_max=None
semantics); a model trained with l_max set agrees with the official code
for sequences up to that l_max.

Output: tensors keep the official names (layer prefix `s4_layers.<i>.`) and
meanings (DESIGN.md section 2), float32 (complex as a trailing dim of 2),
l_kernel as an I64 scalar. Tensors with NaN or Inf are refused by name.
Errors: one line on stderr, exit status 1.
"""

import argparse
import os
import re
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent / "s4ref"))

import numpy as np  # noqa: E402

PROG = "convert_s4_checkpoint"
STRIP_PREFIXES = ("model.", "module.", "_orig_mod.")

# Per-layer tensor names (after `s4_layers.<i>.`), in the official
# registration order (FFTConv.D, then the kernel's parameters, its
# buffers, then the block's output linear).
BLOCK_NAMES = {
    "dplr": ["layer.D", "layer.kernel.inv_dt", "layer.kernel.C", "layer.kernel.B",
             "layer.kernel.A_real", "layer.kernel.A_imag", "layer.kernel.P",
             "layer.kernel.l_kernel"],
    "diag": ["layer.D", "layer.kernel.inv_dt", "layer.kernel.C", "layer.kernel.B",
             "layer.kernel.A_real", "layer.kernel.A_imag"],
    "s4d": ["D", "kernel.C", "kernel.log_dt", "kernel.log_A_real", "kernel.A_imag"],
}
OUTPUT_NAMES = ["output_linear.0.weight", "output_linear.0.bias"]
KNOWN_LAYER_NAMES = set(sum(BLOCK_NAMES.values(), [])) | set(OUTPUT_NAMES)


class ConvertError(Exception):
    pass


def fail(msg):
    raise ConvertError(msg)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

def load_state_dict(path):
    if not os.path.isfile(path):
        fail(f"{path}: no such file")
    try:
        import torch
    except ImportError:
        fail("needs PyTorch (Debian: python3-torch; scripts/install-deps.sh --test)")
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unpickling problem is bad input
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        fail(f"{path}: torch.load failed: {msg}")
    source = "checkpoint"
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj, source = obj["state_dict"], "checkpoint['state_dict']"
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj, source = obj["model"], "checkpoint['model']"
    if not isinstance(obj, dict):
        fail(f"{path}: expected a state_dict or a dict with 'state_dict' or 'model', "
             f"got {type(obj).__name__}")
    out = {}
    for key, val in obj.items():
        if not isinstance(val, torch.Tensor):
            fail(f"{path}: {source} entry {key!r} is a {type(val).__name__}, not a tensor "
                 "(expected a state_dict, or a dict with 'state_dict' or 'model')")
        t = val.detach().cpu()
        if t.is_complex():
            t = torch.view_as_real(t)
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for p in STRIP_PREFIXES:
                if name.startswith(p):
                    name, stripped = name[len(p):], True
        if name in out:
            fail(f"{path}: two tensors map to {name!r} after stripping prefixes")
        if t.dtype == torch.bfloat16:
            t = t.float()
        out[name] = t.numpy()
    if not out:
        fail(f"{path}: the state_dict is empty")
    return out


# ---------------------------------------------------------------------------
# Structure inference
# ---------------------------------------------------------------------------

def organize(sd):
    """Splits names into encoder/decoder/norms/layers; renames `layers.<i>.`
    to `s4_layers.<i>.`; refuses unknown tensors (listing them)."""
    top, norms, layers, unknown = {}, {}, {}, []
    forms = set()
    for name, arr in sd.items():
        m = re.fullmatch(r"(s4_layers|layers)\.(\d+)\.(.+)", name)
        if m:
            forms.add(m.group(1))
            rest = m.group(3)
            if rest in KNOWN_LAYER_NAMES:
                layers.setdefault(int(m.group(2)), {})[rest] = (name, arr)
            else:
                unknown.append(name)
            continue
        m = re.fullmatch(r"norms\.(\d+)\.(weight|bias)", name)
        if m:
            norms.setdefault(int(m.group(1)), {})[m.group(2)] = (name, arr)
            continue
        if name in ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"):
            top[name] = arr
            continue
        unknown.append(name)
    if unknown:
        shown = ", ".join(sorted(unknown)[:12])
        more = f" and {len(unknown) - 12} more" if len(unknown) > 12 else ""
        fail(f"{len(unknown)} unknown tensor(s): {shown}{more} "
             "(accepted: encoder.*, decoder.*, norms.<i>.*, s4_layers.<i>.* or layers.<i>.* "
             "with the official S4Block/S4D names; see --help)")
    if len(forms) > 1:
        fail("both 's4_layers.<i>.' and 'layers.<i>.' prefixes present")
    if not layers:
        fail("no S4 layers found (expected s4_layers.<i>.* or layers.<i>.*)")
    n = max(layers) + 1
    missing = [i for i in range(n) if i not in layers]
    if missing:
        fail(f"layer indices are not contiguous: missing layer(s) {missing}")
    return top, norms, [layers[i] for i in range(n)], n


def shape_of(entry):
    return tuple(entry[1].shape)


def need(cond, msg):
    if not cond:
        fail(msg)


def infer_layer(i, L):
    """Returns a dict describing layer i (kind, H, N2, S, rank, ch, out)."""
    if "layer.kernel.P" in L or "layer.kernel.l_kernel" in L:
        kind = "dplr"
    elif "layer.kernel.inv_dt" in L:
        kind = "diag"
    elif "kernel.log_dt" in L:
        kind = "s4d"
    else:
        fail(f"layer {i}: cannot tell the kernel kind (no layer.kernel.P, "
             "layer.kernel.inv_dt or kernel.log_dt)")
    missing = [n for n in BLOCK_NAMES[kind] if n not in L]
    if kind != "s4d" and "layer.kernel.A_imag" in missing and "layer.kernel.A_real" in L:
        fail(f"layer {i}: no layer.kernel.A_imag: real-valued SSMs (is_real) are not supported")
    need(not missing, f"layer {i} ({kind}): missing tensor(s) "
         + ", ".join(f"s4_layers.{i}.{n}" for n in missing))
    extra = [L[n][0] for n in L if n not in BLOCK_NAMES[kind] + OUTPUT_NAMES]
    need(not extra, f"layer {i} ({kind}): tensor(s) of another block kind: {', '.join(extra)}")
    info = {"kind": kind}
    nm = lambda n: L[n][0]  # noqa: E731 - original name for messages
    if kind == "s4d":
        dt = shape_of(L["kernel.log_dt"])
        need(len(dt) == 1, f"{nm('kernel.log_dt')}: shape {dt}, expected (H,)")
        H = dt[0]
        C = shape_of(L["kernel.C"])
        need(len(C) == 3 and C[0] == H and C[2] == 2,
             f"{nm('kernel.C')}: shape {C}, expected (H={H}, N/2, 2)")
        N2 = C[1]
        for n in ("kernel.log_A_real", "kernel.A_imag"):
            need(shape_of(L[n]) == (H, N2), f"{nm(n)}: shape {shape_of(L[n])}, expected ({H}, {N2})")
        need(shape_of(L["D"]) == (H,), f"{nm('D')}: shape {shape_of(L['D'])}, expected ({H},)")
        info.update(H=H, N2=N2, S=H, rank=0, ch=1)
        w = L.get("output_linear.0.weight")
        need(w is not None and shape_of(w) == (2 * H, H, 1),
             f"layer {i}: the minimal S4D needs output_linear.0.weight of shape ({2 * H}, {H}, 1)"
             + (f", got {shape_of(w)}" if w is not None else ""))
        need("output_linear.0.bias" in L and shape_of(L["output_linear.0.bias"]) == (2 * H,),
             f"layer {i}: output_linear.0.bias missing or not of shape ({2 * H},)")
        info["out"] = "GLU"
        return info

    dt = shape_of(L["layer.kernel.inv_dt"])
    need(len(dt) == 2, f"{nm('layer.kernel.inv_dt')}: shape {dt}, expected (H, 1)")
    H = dt[0]
    C = shape_of(L["layer.kernel.C"])
    need(len(C) == 4 and C[1] == H and C[3] == 2 and C[0] in (1, 2),
         f"{nm('layer.kernel.C')}: shape {C}, expected (1 or 2, H={H}, N/2, 2)")
    ch, N2 = C[0], C[2]
    need(dt[1] == 1, f"{nm('layer.kernel.inv_dt')}: shape {dt}: one dt per state "
         "(dt_tie=False) is not supported, expected (H, 1)")
    A = shape_of(L["layer.kernel.A_real"])
    need(len(A) == 2 and A[1] == N2 and A[0] >= 1 and H % A[0] == 0,
         f"{nm('layer.kernel.A_real')}: shape {A}, expected (n_ssm dividing H={H}, N/2={N2})")
    S = A[0]
    need(shape_of(L["layer.kernel.A_imag"]) == (S, N2),
         f"{nm('layer.kernel.A_imag')}: shape {shape_of(L['layer.kernel.A_imag'])}, expected ({S}, {N2})")
    need(shape_of(L["layer.kernel.B"]) == (1, S, N2, 2),
         f"{nm('layer.kernel.B')}: shape {shape_of(L['layer.kernel.B'])}, expected (1, {S}, {N2}, 2)")
    D = shape_of(L["layer.D"])
    need(len(D) == 2 and D[1] == H, f"{nm('layer.D')}: shape {D}, expected (1, {H})")
    need(D[0] == 1, f"{nm('layer.D')}: shape {D}: more than one output channel "
         "(FFTConv channels > 1 or a GLU activation) is not supported")
    rank = 0
    if kind == "dplr":
        P = shape_of(L["layer.kernel.P"])
        need(len(P) == 4 and P[1:] == (S, N2, 2) and 1 <= P[0] <= 4,
             f"{nm('layer.kernel.P')}: shape {P}, expected (rank 1..4, {S}, {N2}, 2)")
        rank = P[0]
        lk = L["layer.kernel.l_kernel"][1]
        need(lk.size == 1 and lk.dtype.kind in "iu" and int(lk.reshape(())) >= 0,
             f"{nm('layer.kernel.l_kernel')}: expected a non-negative integer scalar, got "
             f"{lk.dtype} of shape {lk.shape}")
        info["l_kernel"] = int(lk.reshape(()))
    info.update(H=H, N2=N2, S=S, rank=rank, ch=ch)
    w = L.get("output_linear.0.weight")
    b = L.get("output_linear.0.bias")
    if w is None:
        need(b is None, f"layer {i}: output_linear.0.bias without a weight")
        info["out"] = "NONE"
    else:
        need(b is not None, f"layer {i}: output_linear.0.weight without a bias")
        if shape_of(w) == (2 * H, H) and shape_of(b) == (2 * H,):
            info["out"] = "GLU"
        elif shape_of(w) == (H, H) and shape_of(b) == (H,):
            info["out"] = "LINEAR"
        else:
            fail(f"{w[0]}: shape {shape_of(w)} (bias {shape_of(b)}), expected "
                 f"({2 * H}, {H}) for GLU or ({H}, {H}) for a plain linear")
    return info


def build(sd, args):
    top, norms, layers, n = organize(sd)
    infos = [infer_layer(i, L) for i, L in enumerate(layers)]
    first = infos[0]
    for i, info in enumerate(infos[1:], 1):
        for key in ("kind", "H", "N2", "rank", "ch", "out"):
            need(info[key] == first[key],
                 f"layer {i} differs from layer 0 in {key}: {info[key]} vs {first[key]}")
    kind, H, N2 = first["kind"], first["H"], first["N2"]

    # encoder / decoder
    enc = "encoder.weight" in top or "encoder.bias" in top
    dec = "decoder.weight" in top or "decoder.bias" in top
    if enc:
        need("encoder.weight" in top and "encoder.bias" in top,
             "encoder.weight and encoder.bias must come together")
        ew, eb = top["encoder.weight"].shape, top["encoder.bias"].shape
        need(len(ew) == 2 and ew[0] == H and eb == (H,),
             f"encoder.weight {tuple(ew)} / encoder.bias {tuple(eb)}: expected ({H}, d_input) / ({H},)")
        d_input = ew[1]
    else:
        d_input = H
    if args.d_input is not None and args.d_input != d_input:
        fail(f"--d-input {args.d_input} disagrees with the checkpoint "
             + (f"(encoder.weight has d_input {d_input})" if enc else f"(no encoder: d_input = H = {H})"))
    if dec:
        need("decoder.weight" in top and "decoder.bias" in top,
             "decoder.weight and decoder.bias must come together")
        dw, db = top["decoder.weight"].shape, top["decoder.bias"].shape
        need(len(dw) == 2 and dw[1] == H and db == (dw[0],),
             f"decoder.weight {tuple(dw)} / decoder.bias {tuple(db)}: expected (d_output, {H}) / (d_output,)")
        d_output = dw[0]
    else:
        d_output = H

    # norms
    if norms:
        for i in range(n):
            need(i in norms and set(norms[i]) == {"weight", "bias"},
                 f"norms.{i}.weight and norms.{i}.bias are needed for every layer (0..{n - 1})")
            for p in ("weight", "bias"):
                need(norms[i][p][1].shape == (H,),
                     f"norms.{i}.{p}: shape {tuple(norms[i][p][1].shape)}, expected ({H},)")
        need(max(norms) < n, f"norms.{max(norms)}.* has no layer {max(norms)}")
        norm = "PRE" if args.prenorm else "POST"
    else:
        need(not args.prenorm, "--prenorm given but the checkpoint has no norms.<i>.*")
        norm = "NONE"

    # flags that shapes cannot tell
    if kind == "s4d":
        need(args.activation in (None, "gelu"), "the minimal S4D block always uses GELU")
        need(args.discretization in (None, "zoh"), "the minimal S4D block is ZOH only")
        disc = "ZOH"
    elif kind == "dplr":
        need(args.discretization in (None, "bilinear"), "the DPLR (S4) kernel is bilinear only")
        disc = "BILINEAR"
    else:
        disc = (args.discretization or "zoh").upper()
    activation = (args.activation or "gelu").upper()
    l_kernels = [info.get("l_kernel", 0) for info in infos]
    if args.max_length is not None:
        need(args.max_length >= 1, "--max-length must be >= 1")
        max_length = args.max_length
    else:
        need(max(l_kernels) > 0, "cannot infer --max-length (the checkpoint has no l_kernel > 0); "
             "pass --max-length N")
        max_length = max(l_kernels)

    # tensors, in a canonical order, checked for NaN/Inf
    tensors = []

    def add(name, arr, integer=False):
        arr = np.asarray(arr)
        if integer:
            tensors.append((name, np.asarray(arr, dtype=np.int64).reshape(())))
            return
        if arr.dtype.kind != "f":
            fail(f"{name}: dtype {arr.dtype}, expected floating point")
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            fail(f"{name}: {bad} NaN/Inf value(s)")
        a32 = arr.astype(np.float32)
        if not np.all(np.isfinite(a32)):
            fail(f"{name}: values overflow float32")
        tensors.append((name, a32))

    if enc:
        add("encoder.weight", top["encoder.weight"])
        add("encoder.bias", top["encoder.bias"])
    for i, L in enumerate(layers):
        pre = f"s4_layers.{i}."
        for rest in BLOCK_NAMES[kind] + OUTPUT_NAMES:
            if rest in L:
                add(pre + rest, L[rest][1], integer=rest.endswith("l_kernel"))
    for i in sorted(norms):
        add(f"norms.{i}.weight", norms[i]["weight"][1])
        add(f"norms.{i}.bias", norms[i]["bias"][1])
    if dec:
        add("decoder.weight", top["decoder.weight"])
        add("decoder.bias", top["decoder.bias"])

    kind_text = {"dplr": f"S4 (DPLR rank {first['rank']})", "diag": f"S4D (diagonal, {disc})",
                 "s4d": "minimal S4D"}[kind]
    config = {
        "name": args.name,
        "description": args.description or
        f"{kind_text} model converted from {os.path.basename(args.checkpoint)} "
        "by tools/convert_s4_checkpoint.py.",
        "d_input": d_input, "d_output": d_output, "max_length": max_length,
        "s4": {
            "n_layers": n, "d_model": H, "d_state": 2 * N2,
            "kernel": "DPLR" if kind == "dplr" else "DIAGONAL",
            "discretization": disc, "rank": first["rank"],
            "activation": activation, "output_linear": first["out"], "norm": norm,
            "residual": True, "bidirectional": first["ch"] == 2,
            "encoder": enc, "decoder": dec, "layer_norm_eps": 1e-5,
            "weight_naming": "S4_REFERENCE",
        },
    }
    summary = (f"{kind_text}, {n} layer(s), H={H}, N={2 * N2}, n_ssm={[x['S'] for x in infos]}, "
               f"d_input={d_input}, d_output={d_output}, norm={norm}, "
               f"bidirectional={first['ch'] == 2}, l_kernel={l_kernels if kind == 'dplr' else '-'}, "
               f"max_length={max_length}")
    return config, tensors, summary


# ---------------------------------------------------------------------------

def write_atomic(path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="convert_s4_checkpoint.py",
        description="Convert an official-S4 PyTorch checkpoint into an ssmserve "
                    "model-repository entry.",
        epilog="Accepted tensor names and what is inferred: see the module docstring "
               "(head -57 tools/convert_s4_checkpoint.py).")
    ap.add_argument("checkpoint", help="a .pt/.pth state_dict or a Lightning .ckpt")
    ap.add_argument("--repo", required=True, help="model repository folder")
    ap.add_argument("--name", required=True, help="model name (the folder under --repo)")
    ap.add_argument("--version", type=int, default=1, help="version folder (default 1)")
    ap.add_argument("--d-input", type=int, default=None,
                    help="check the input width (inferred from encoder.weight, else H)")
    ap.add_argument("--prenorm", action="store_true",
                    help="the model was trained with prenorm (default postnorm)")
    ap.add_argument("--activation", choices=("gelu", "identity"), default=None,
                    help="FFTConv activation (default gelu)")
    ap.add_argument("--discretization", choices=("zoh", "bilinear"), default=None,
                    help="SSMKernelDiag disc (default zoh; DPLR is always bilinear)")
    ap.add_argument("--max-length", type=int, default=None,
                    help="longest sequence for unary calls (default: largest l_kernel)")
    ap.add_argument("--description", default=None, help="one paragraph for humans")
    ap.add_argument("--force", action="store_true", help="overwrite an existing version")
    args = ap.parse_args(argv)
    try:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", args.name):
            fail(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' "
                 "(not starting with '.' or '-')")
        if args.version < 1:
            fail("--version must be >= 1")
        import s4io
        sd = load_state_dict(args.checkpoint)
        config, tensors, summary = build(sd, args)
        model_dir = Path(args.repo) / args.name
        ver_dir = model_dir / str(args.version)
        weights = ver_dir / "weights.safetensors"
        if weights.exists() and not args.force:
            fail(f"{weights} exists (pass --force to overwrite)")
        ver_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(weights, s4io.serialize_safetensors(
            tensors, {"format": "pt", "converted_from": os.path.basename(args.checkpoint),
                      "converter": "tools/convert_s4_checkpoint.py"}))
        write_atomic(model_dir / "config.pbtxt", s4io.format_model_config(
            config, [f"Converted from {os.path.basename(args.checkpoint)} by "
                     "tools/convert_s4_checkpoint.py."]).encode("utf-8"))
    except ConvertError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(f"{PROG}: wrote {model_dir}/config.pbtxt and {weights}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
