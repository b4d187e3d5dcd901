#!/usr/bin/python3
"""Converts a checkpoint of an S4 model trained with the official PyTorch S4
code (state-spaces/s4) into an ssmserve model-repository entry, or refuses
it, naming what it cannot serve exactly.

    /usr/bin/python3 tools/convert_s4_checkpoint.py CHECKPOINT --repo DIR --name NAME
        [--version 1] [--max-length N] [--description TEXT] [--force]
        [option flags, for checkpoints without hyper-parameters; see below]

writes DIR/NAME/config.pbtxt (an ssm.v1.ModelConfig, weight_naming
WEIGHT_NAMING_S4_REFERENCE) and DIR/NAME/VERSION/weights.safetensors.

Inputs (anything torch.load(map_location='cpu') reads; pickled omegaconf
containers are read without omegaconf):
  - a checkpoint of the training script (train.py, PyTorch Lightning):
    {'state_dict': ..., 'hyper_parameters': the run's config}, tensors named
    model.layers.<i>.layer.layer.kernel.*, encoder.<k>.*, decoder.<k>.*, ...
    Every option is read from the hyper-parameters.
  - example.py's {'model': state_dict} or a bare state_dict (names
    s4_layers.<i>.* or layers.<i>.*, after stripping 'model.', 'module.',
    '_orig_mod.'), or a training-script state_dict without
    hyper-parameters. Shapes give the layers, H, N, rank, n_ssm, kernel
    kind, bidirectionality, the encoder, decoder and norms; what shapes
    cannot tell must come from flags:
      --dt-transform, --real-transform, --imag-transform
                  exp | softplus | relu | sigmoid | none (the kernel's
                  param_transform; the training configs use dt softplus)
      --dt-fast true|false       (inv_dt under sinh)
      --discretization zoh | bilinear | dss   (diagonal kernels)
      --activation gelu | identity | tanh | relu | silu | sigmoid | elu | softplus
      --final-act glu | id | <activation>     (for an H x H output linear)
      --norm pre | post (--prenorm, --postnorm), --residual true|false
    --code-defaults takes the official code's defaults for all of these
    that are not given (dt exp, A real exp, A imag none, dt_fast false, ZOH,
    GELU, postnorm, residual) and prints them; nothing is assumed silently.
    With hyper-parameters, a flag must agree with them.

Output: tensors under the example.py names the server reads (model.h), F32
as stored (F64 for a weight_norm linear, folded as g v / |v| per row; an
embedding encoder becomes a bias-free linear of its transposed table, so the
served model takes one-hot token vectors); the config states every option.
The service computes per-step outputs (the decoder at every step): a
classifier's 'pool' decoder is the mean of those over the steps (the
decoder is affine), 'last' the last step.

Refused, naming the option: backbones other than 'model' (SaShiMi, U-Net),
the backbone's bidirectional, pooling (stride > 1 or expand), residuals
other than plain or none, norms other than layer/batch/none, transposed
LayerNorm, S4Block gate/bottleneck/mult_act, kernel channels > 1, kernels
other than DPLR and diagonal (dense, real, conv, ema), is_real, bandlimit,
dt_tie false, transforms the official kernels do not implement (tanh),
activations outside the list above, GLU variants, unknown options,
encoders other than linear/embedding, decoder mode 'sum', unknown tensors.
Errors: one line on stderr, exit status 1.
"""

import argparse
import os
import pickle
import re
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent / "s4ref"))

import numpy as np  # noqa: E402

PROG = "convert_s4_checkpoint"
STRIP_PREFIXES = ("model.", "module.", "_orig_mod.")
TRANSFORMS = ("exp", "softplus", "relu", "sigmoid", "none")
# Official Activation() names we serve, and their config enum values.
ACTIVATIONS = {"gelu": "GELU", "tanh": "TANH", "relu": "RELU", "silu": "SILU",
               "swish": "SILU", "sigmoid": "SIGMOID", "elu": "ELU", "softplus": "SOFTPLUS"}
IDENTITY = (None, "id", "identity", "linear", "none")
KERNEL_MODES = {"dplr": "dplr", "nplr": "dplr", "s4": "dplr", "diag": "diag", "s4d": "diag"}

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


def need(cond, msg):
    if not cond:
        fail(msg)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

class _Stub(dict):
    """Stands in for a class the checkpoint pickled that is not importable
    here (omegaconf's containers, Lightning's AttributeDict, ...): keeps
    what unpickling gives it, items and attributes alike."""

    def __init__(self, *args, **kwargs):  # noqa: D401 - any constructor call
        super().__init__()

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        # omegaconf always: its containers keep values in nodes that plain()
        # reads the same way whatever omegaconf version wrote them.
        if module.split(".")[0] == "omegaconf":
            return type(name, (_Stub,), {"__module__": module})
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Stub,), {"__module__": module})


class _PickleModule:
    Unpickler = _Unpickler
    load = staticmethod(pickle.load)
    __name__ = "pickle"


def plain(obj):
    """Hyper-parameters as plain dicts, lists and values (omegaconf's
    DictConfig/ListConfig keep their items in `_content`, nodes in `_val`)."""
    if isinstance(obj, _Stub):
        d = obj.__dict__
        if "_content" in d:
            return plain(d["_content"])
        if "_val" in d:
            return plain(d["_val"])
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def load_checkpoint(path):
    """Returns (tensors {name: np.ndarray} with the file's names, the
    hyper-parameters as plain data or None, where the tensors were)."""
    if not os.path.isfile(path):
        fail(f"{path}: no such file")
    try:
        import torch
    except ImportError:
        fail("needs PyTorch (Debian: python3-torch; scripts/install-deps.sh --test)")
    # Some torch versions (Debian's 1.13 among them) replace a pickle_module
    # argument with the pickle module itself; the Unpickler they subclass is
    # then pickle.Unpickler, so that is where ours goes, for this call only.
    saved = pickle.Unpickler
    pickle.Unpickler = _Unpickler
    try:
        obj = torch.load(path, map_location="cpu", pickle_module=_PickleModule)
    except Exception as e:  # noqa: BLE001 - any unpickling problem is bad input
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        fail(f"{path}: torch.load failed: {msg}")
    finally:
        pickle.Unpickler = saved
    source, hp = "checkpoint", None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        hp = obj.get("hyper_parameters")
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
        if t.dtype == torch.bfloat16:
            t = t.float()
        out[str(key)] = t.numpy()
    if not out:
        fail(f"{path}: the state_dict is empty")
    hp = plain(hp) if hp is not None else None
    if hp is not None and not isinstance(hp, dict):
        fail(f"{path}: hyper_parameters is a {type(hp).__name__}, not a mapping")
    return out, hp, source


def strip_prefixes(sd):
    out = {}
    for name, arr in sd.items():
        stripped = True
        while stripped:
            stripped = False
            for p in ("module.", "_orig_mod."):
                if name.startswith(p):
                    name, stripped = name[len(p):], True
        if name in out:
            fail(f"two tensors map to {name!r} after stripping prefixes")
        out[name] = arr
    return out


# ---------------------------------------------------------------------------
# The training script's layout -> example.py's names
# ---------------------------------------------------------------------------

def is_training_layout(sd, hp):
    """The training script's names: S4Block's FFTConv at model.layers.<i>.
    layer.layer (example.py's blocks under a 'model.' wrapper have one
    'layer.' fewer), its minimal S4D at model.layers.<i>.layer.kernel.log_dt,
    or Normalization's model.layers.<i>.norm.norm; or its hyper-parameters."""
    pat = re.compile(r"model\.layers\.\d+\.(layer\.layer\.|layer\.kernel\.log_dt$|norm\.norm\.)")
    return any(pat.match(n) for n in sd) or (hp is not None and isinstance(hp.get("model"), dict))


def rename_training(sd, minimal):
    """Maps the training script's names to the canonical ones. Returns
    (renamed dict, {canonical: original name}, weight-norm pairs, encoder
    tensors {index: {leaf: arr}}, decoder tensors {index: {path: arr}})."""
    out, orig, unknown = {}, {}, []
    enc, dec, wn = {}, {}, {}

    def put(new, old, arr):
        out[new], orig[new] = arr, old

    for name, arr in sd.items():
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
        if m:
            i, rest = m.group(1), m.group(2)
            pre = f"s4_layers.{i}."
            mm = re.fullmatch(r"layer\.layer\.(D|kernel\.\w+)", rest)
            if mm and not minimal:
                put(pre + "layer." + mm.group(1), name, arr)
                continue
            mm = re.fullmatch(r"layer\.(D|kernel\.\w+)", rest)
            if mm and minimal:
                put(pre + mm.group(1), name, arr)
                continue
            mm = re.fullmatch(r"layer\.output_linear\.0\.(weight|bias|weight_g|weight_v)", rest)
            if mm:
                if mm.group(1) in ("weight_g", "weight_v"):
                    wn.setdefault(pre + "output_linear.0.weight", {})[mm.group(1)] = (name, arr)
                else:
                    put(pre + "output_linear.0." + mm.group(1), name, arr)
                continue
            mm = re.fullmatch(r"norm\.norm\.(weight|bias|running_mean|running_var|"
                              r"num_batches_tracked)", rest)
            if mm:
                if mm.group(1) != "num_batches_tracked":   # a training counter
                    put(f"norms.{i}.{mm.group(1)}", name, arr)
                continue
            unknown.append(name)
            continue
        mm = re.fullmatch(r"model\.norm\.norm\.(weight|bias|running_mean|running_var|"
                          r"num_batches_tracked)", name)
        if mm:
            if mm.group(1) != "num_batches_tracked":
                put("final_norm." + mm.group(1), name, arr)
            continue
        mm = re.fullmatch(r"encoder\.(\d+)\.(weight|bias)", name)
        if mm:
            enc.setdefault(int(mm.group(1)), {})[mm.group(2)] = (name, arr)
            continue
        mm = re.fullmatch(r"decoder\.(\d+)\.((?:output_transform\.)?(?:weight|bias))", name)
        if mm:
            dec.setdefault(int(mm.group(1)), {})[mm.group(2)] = (name, arr)
            continue
        unknown.append(name)
    if unknown:
        shown = ", ".join(sorted(unknown)[:12])
        more = f" and {len(unknown) - 12} more" if len(unknown) > 12 else ""
        fail(f"{len(unknown)} unknown tensor(s): {shown}{more} (the training script's S4 "
             "backbone, its norms, a linear/embedding encoder and a linear decoder are read)")
    for new, parts in wn.items():
        need(set(parts) == {"weight_g", "weight_v"},
             f"{new.replace('s4_layers.', 'model.layers.')}: weight_norm needs weight_g and "
             "weight_v")
        g = parts["weight_g"][1].astype(np.float64)
        v = parts["weight_v"][1].astype(np.float64)
        need(v.ndim == 2 and g.shape == (v.shape[0], 1),
             f"{parts['weight_v'][0]} {v.shape} / {parts['weight_g'][0]} {g.shape}: expected "
             "(out, in) and (out, 1) (weight_norm over dim 0)")
        # nn.utils.weight_norm(dim=0): w = g v / |v| per output row; kept
        # in float64 so the fold adds no float32 rounding.
        put(new, parts["weight_v"][0], g * v / np.linalg.norm(v, axis=1, keepdims=True))
    return out, orig, enc, dec


# ---------------------------------------------------------------------------
# Options: from hyper-parameters or flags
# ---------------------------------------------------------------------------

# Options of the layer config that do not change what a trained model
# computes (initialization, optimizer, dropout, logging).
IGNORED_LAYER_KEYS = {
    "_name_", "init", "measure", "dt_min", "dt_max", "lr", "wd", "deterministic", "verbose",
    "initializer", "dropout", "tie_dropout", "transposed", "drop_kernel", "backend",
    "gate_act", "d_state", "rank", "n_ssm", "layer", "mode", "kernel", "swap_channels",
    # init arguments passed through to the DPLR/diagonal initializers
    "real_random", "real_scale", "imag_random", "imag_scale", "B_random", "B_init",
    "B_scale", "P_scale", "normalize", "diagonalize_precision", "B_clip",
}
HANDLED_LAYER_KEYS = {
    "channels", "bidirectional", "gate", "bottleneck", "activation", "mult_act", "final_act",
    "postact", "weight_norm", "l_max", "dt_transform", "real_transform", "imag_transform",
    "dt_fast", "dt_tie", "disc", "is_real", "bandlimit",
}
MODEL_KEYS = {
    "_name_", "d_model", "n_layers", "transposed", "dropout", "tie_dropout", "prenorm",
    "bidirectional", "n_repeat", "layer", "residual", "norm", "pool", "track_norms", "dropinp",
    "encoder", "decoder",
}


def _name(cfg):
    return cfg if isinstance(cfg, str) or cfg is None else cfg.get("_name_")


def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _check_value(key, value):
    if isinstance(value, str) and "${" in value:
        fail(f"{key}: {value!r} is an unresolved interpolation; the checkpoint's "
             "hyper-parameters must hold values")


def transform_option(key, value):
    _check_value(key, value)
    if value == "tanh":
        fail(f"{key}='tanh': not a transform the official kernels implement "
             "(param_transform raises NotImplementedError for it)")
    need(value in TRANSFORMS, f"{key}={value!r}: not supported (supported: "
         f"{', '.join(TRANSFORMS)})")
    return value


def activation_option(key, value):
    _check_value(key, value)
    if value in IDENTITY:
        return "IDENTITY"
    need(value in ACTIVATIONS, f"{key}={value!r}: not supported (supported: "
         "id/identity/linear/none, " + ", ".join(ACTIVATIONS) + ")")
    return ACTIVATIONS[value]


def final_act_option(key, value):
    """-> (output_linear, output_activation): 'glu' -> GLU; None -> no
    linear; id-like -> LINEAR; an activation -> LINEAR then it."""
    if value is None:
        return "NONE", "IDENTITY"
    _check_value(key, value)
    if value == "glu":
        return "GLU", "IDENTITY"
    if isinstance(value, str) and value.startswith("glu-"):
        fail(f"{key}={value!r}: GLU with another gate activation is not supported (only 'glu')")
    return "LINEAR", activation_option(key, value)


def options_from_hparams(hp):
    """The options our config needs, read from the training script's
    hyper-parameters; refuses, by name, what the stack cannot express."""
    m = hp.get("model")
    need(isinstance(m, dict), "hyper_parameters has no 'model' section (not a checkpoint of "
         "the training script); convert the bare state_dict with flags instead")
    backbone = m.get("_name_", "model")
    if backbone in ("sashimi", "sashimi_standalone", "unet"):
        fail(f"model._name_={backbone!r}: pooling/U-Net backbones (SaShiMi) are not supported: "
             "the served stack is isotropic (SequenceModel)")
    need(backbone == "model", f"model._name_={backbone!r}: only the isotropic SequenceModel "
         "backbone ('model') is supported")
    unknown = sorted(set(m) - MODEL_KEYS)
    need(not unknown, f"model.{unknown[0] if unknown else ''}: unknown backbone option "
         "(not in SequenceModel); refusing rather than guessing what it does")
    need(not m.get("bidirectional", False),
         "model.bidirectional=true: the backbone's bidirectional blocks (a second, reverse "
         "layer and a linear over both) are not supported; the layer's own bidirectional is")
    pool = m.get("pool")
    if pool is not None:
        pname = _name(pool)
        stride = 1 if isinstance(pool, str) else pool.get("stride", 1)
        expand = None if isinstance(pool, str) else pool.get("expand")
        need(pname in ("pool", "avg") and stride == 1 and expand is None,
             f"model.pool={pool!r}: pooling (stride > 1, expand, or a {pname!r} pool) is not "
             "supported; only the identity pool (stride 1, no expand)")
    o = {}
    o["n_layers"] = int(m.get("n_layers", 1)) * int(m.get("n_repeat", 1))
    o["d_model"] = m.get("d_model")
    o["prenorm"] = bool(m.get("prenorm", True))
    res = m.get("residual", "R")
    rname = _name(res)
    if rname in (None, "F", "N", "none", "ff", "feedforward"):
        o["residual"] = False
    elif rname in ("R", "residual"):
        alpha = 1.0 if isinstance(res, str) else res.get("alpha", 1.0)
        beta = 1.0 if isinstance(res, str) else res.get("beta", 1.0)
        if alpha == 0:   # Residual's "alpha x + y if alpha else y": no residual
            need(beta == 1.0, f"model.residual beta={beta}: a scaled block output is not "
                 "supported")
            o["residual"] = False
        else:
            need(alpha == 1.0 and beta == 1.0,
                 f"model.residual alpha={alpha}, beta={beta}: only alpha = beta = 1 (a plain "
                 "residual) is supported")
            o["residual"] = True
    else:
        fail(f"model.residual={rname!r}: not supported (plain 'R' or none; highway, decay "
             "and affine residuals are not)")
    norm = m.get("norm", "layer")
    nname = _name(norm)
    nargs = {} if isinstance(norm, str) or norm is None else {k: v for k, v in norm.items()
                                                               if k != "_name_"}
    if nname in (None, "none"):
        o["norm_kind"] = None
    elif nname == "layer":
        need(not m.get("transposed", False), "model.transposed=true with norm 'layer': "
             "TransposedLN (scalar mean/scale parameters) is not supported")
        need(nargs.get("elementwise_affine", True), "model.norm elementwise_affine=false is "
             "not supported")
        o["norm_kind"] = "LAYER"
    elif nname == "batch":
        need(nargs.get("affine", True) and nargs.get("track_running_stats", True),
             "model.norm 'batch' without affine or running statistics is not supported")
        o["norm_kind"] = "BATCH"
    else:
        fail(f"model.norm={nname!r}: not supported (layer, batch or none; instance and "
             "group norms are not)")
    extra = sorted(set(nargs) - {"eps", "elementwise_affine", "affine", "track_running_stats",
                                 "momentum"})
    need(not extra, f"model.norm.{extra[0] if extra else ''}: unknown norm option")
    o["eps"] = float(nargs.get("eps", 1e-5))

    layers = _as_list(m.get("layer"))
    need(layers, "model.layer is missing")
    need(all(lay == layers[0] for lay in layers),
         f"model.layer is a list of {len(layers)} different layer configs (e.g. S4 and FFN "
         "alternating); only stacks of one S4 layer config are supported")
    lay = layers[0]
    need(isinstance(lay, dict), f"model.layer={lay!r}: expected a layer config")
    lname = lay.get("_name_")
    if lname == "s4d":
        extra = sorted(set(lay) - {"_name_", "d_state", "dt_min", "dt_max", "lr", "dropout",
                                   "transposed"})
        need(not extra, f"model.layer.{extra[0] if extra else ''}: unknown option of the "
             "minimal S4D layer")
        o.update(kind="s4d", transforms=("exp", "exp", "none"), dt_fast=False, disc="zoh",
                 activation="GELU", output_linear="GLU", output_activation="IDENTITY",
                 bidirectional=False, l_max=None, d_state=lay.get("d_state"))
        return o
    need(lname in ("s4", "standalone"),
         f"model.layer._name_={lname!r}: only S4 layers ('s4' S4Block, 'standalone', 's4d') "
         "are supported")
    unknown = sorted(set(lay) - IGNORED_LAYER_KEYS - HANDLED_LAYER_KEYS)
    need(not unknown, f"model.layer.{unknown[0] if unknown else ''}: unknown option; refusing "
         "rather than guessing what it does")
    mode = lay.get("mode", lay.get("kernel", "dplr"))
    need(mode in KERNEL_MODES, f"model.layer.mode={mode!r}: only the DPLR (nplr/dplr/s4) and "
         "diagonal (diag/s4d) kernels are supported")
    need(lay.get("layer", "fftconv") == "fftconv",
         f"model.layer.layer={lay.get('layer')!r}: only FFTConv inside S4Block is supported")
    need(lay.get("gate") is None, f"model.layer.gate={lay.get('gate')!r}: gated blocks (GSS) "
         "are not supported")
    need(lay.get("bottleneck") is None,
         f"model.layer.bottleneck={lay.get('bottleneck')!r}: not supported")
    need(lay.get("mult_act") in IDENTITY,
         f"model.layer.mult_act={lay.get('mult_act')!r}: not supported")
    need(lay.get("channels", 1) == 1, f"model.layer.channels={lay.get('channels')}: kernel "
         "channels > 1 (heads) are not supported")
    need(lay.get("dt_tie", True), "model.layer.dt_tie=false: one dt per state is not supported")
    need(not lay.get("is_real", False), "model.layer.is_real=true: real-valued SSMs are not "
         "supported")
    need(lay.get("bandlimit") is None,
         f"model.layer.bandlimit={lay.get('bandlimit')}: not supported")
    kind = KERNEL_MODES[mode]
    # The layer's defaults are the kernel classes' (ssm.py), not the configs'.
    o["transforms"] = (transform_option("model.layer.dt_transform", lay.get("dt_transform", "exp")),
                       transform_option("model.layer.real_transform",
                                        lay.get("real_transform", "exp")),
                       transform_option("model.layer.imag_transform",
                                        lay.get("imag_transform", "none")))
    o["dt_fast"] = bool(lay.get("dt_fast", False))
    disc = lay.get("disc", "zoh")
    if kind == "diag":
        need(disc in ("zoh", "bilinear", "dss"), f"model.layer.disc={disc!r}: not supported "
             "(zoh, bilinear, dss)")
        o["disc"] = disc
    else:
        o["disc"] = "bilinear"   # SSMKernelDPLR ignores disc: always bilinear
    name = "standalone" if lname == "standalone" else "S4Block"
    o["activation"] = activation_option(f"model.layer.activation ({name})",
                                        lay.get("activation", "gelu"))
    final_act = lay.get("final_act", "glu")
    if final_act is None and lay.get("postact") is not None:
        final_act = lay["postact"]
    o["output_linear"], o["output_activation"] = final_act_option("model.layer.final_act",
                                                                  final_act)
    o["weight_norm"] = bool(lay.get("weight_norm", False))
    o["bidirectional"] = bool(lay.get("bidirectional", False))
    o["l_max"] = lay.get("l_max")
    o["kind"] = kind
    o["d_state"], o["rank"], o["n_ssm"] = lay.get("d_state"), lay.get("rank"), lay.get("n_ssm")
    return o


def encoders_from_hparams(hp, enc_tensors):
    """-> ('linear' | 'embedding' | None, index in encoder.<k>)."""
    encs = _as_list(hp.get("encoder")) + _as_list(hp.get("model", {}).get("encoder"))
    kinds = []
    for e in encs:
        n = _name(e)
        if n in ("id", None):
            continue
        need(n in ("linear", "embedding"), f"encoder {n!r}: not supported (linear, embedding)")
        kinds.append(n)
    need(len(kinds) <= 1, f"encoders {kinds}: at most one linear or embedding encoder")
    if not kinds:
        need(not enc_tensors, "encoder tensors without an encoder in the hyper-parameters")
        return None, None
    need(len(enc_tensors) == 1, f"encoder {kinds[0]!r}: expected one encoder.<k> module "
         f"with tensors, found {len(enc_tensors)}")
    return kinds[0], next(iter(enc_tensors))


# How the official decoder's output follows from the served per-step
# outputs (the decoder is affine, so it commutes with averaging).
REDUCTIONS = {
    "last": "whose output is the served output at the last step(s)",
    "first": "whose output is the served output at the first step(s)",
    "pool": "whose output is the mean of the served per-step outputs",
    "ragged": "whose output is the served per-step outputs",
}


def decoders_from_hparams(hp, dec_tensors):
    """-> (description of the reduction, index of the linear or None)."""
    decs = _as_list(hp.get("model", {}).get("decoder")) + _as_list(hp.get("decoder"))
    notes = []
    for d in decs:
        n = _name(d)
        if n in ("id", None):
            continue
        need(n in ("sequence", "nd", "linear"),
             f"decoder {n!r}: not supported (sequence, nd, linear)")
        if n == "sequence":
            mode = "last" if isinstance(d, str) else d.get("mode", "last")
            need(mode in ("last", "first", "pool", "ragged"),
                 f"decoder mode {mode!r}: not supported ('sum' adds the decoder's bias once, "
                 "which per-step outputs cannot give)")
            lo = None if isinstance(d, str) else d.get("l_output")
            notes.append(f"a sequence decoder in mode {mode}"
                         + (f" with l_output {lo}" if lo is not None else "") + ", "
                         + REDUCTIONS[mode])
        elif n == "nd":
            mode = "pool" if isinstance(d, str) else d.get("mode", "pool")
            need(mode in ("pool", "full"), f"nd decoder mode {mode!r}: not supported")
            notes.append(f"an nd decoder in mode {mode}, "
                         + REDUCTIONS["pool" if mode == "pool" else "ragged"])
    need(len(dec_tensors) <= 1, f"{len(dec_tensors)} decoder modules with tensors; at most "
         "one linear is supported")
    return "; ".join(notes), (next(iter(dec_tensors)) if dec_tensors else None)


def merge_flags(o, args, have_hparams):
    """Flags: with hyper-parameters they must agree; without, they give
    what shapes cannot tell (or --code-defaults does)."""
    flag_map = {
        "transforms": None, "dt_fast": args.dt_fast, "disc": args.discretization,
        "activation": None if args.activation is None else activation_option(
            "--activation", args.activation),
        "residual": args.residual, "norm": args.norm,
    }
    given_tr = (args.dt_transform, args.real_transform, args.imag_transform)
    assumed = []
    if have_hparams:
        for i, (flag, key) in enumerate(zip(given_tr, ("dt_transform", "real_transform",
                                                        "imag_transform"))):
            if flag is not None and flag != o["transforms"][i]:
                fail(f"--{key.replace('_', '-')} {flag} disagrees with the checkpoint's "
                     f"hyper-parameters ({key}={o['transforms'][i]!r})")
        for key in ("dt_fast", "disc", "activation", "residual"):
            if flag_map[key] is not None and key in o and flag_map[key] != o[key]:
                fail(f"--{key.replace('_', '-')} disagrees with the checkpoint's "
                     f"hyper-parameters ({key}={o[key]!r})")
        if args.norm is not None and o.get("norm_kind"):
            if (args.norm == "pre") != o["prenorm"]:
                fail(f"--norm {args.norm} disagrees with the checkpoint's hyper-parameters "
                     f"(prenorm={o['prenorm']})")
        if args.final_act is not None:
            if final_act_option("--final-act", None if args.final_act == "none" else
                                args.final_act) != (o["output_linear"], o["output_activation"]):
                fail("--final-act disagrees with the checkpoint's hyper-parameters "
                     f"(output {o['output_linear']}, {o['output_activation']})")
        return assumed

    def pick(key, flag, default, why):
        if flag is not None:
            return flag
        also = ("; the training script's configs set softplus" if key == "dt-transform"
                else "")
        need(args.code_defaults, f"cannot tell {why} from the checkpoint (it has no "
             f"hyper-parameters): pass --{key} (the official code's default is {default}"
             f"{also}; --code-defaults takes every default)")
        assumed.append(f"{key}={default}")
        return default

    if o["kind"] == "s4d":
        for flag, key in zip(given_tr, ("dt-transform", "real-transform", "imag-transform")):
            need(flag is None, f"--{key}: the minimal S4D block has a fixed parameterization")
        need(args.discretization in (None, "zoh"), "the minimal S4D block is ZOH only")
        need(args.activation in (None, "gelu"), "the minimal S4D block always uses GELU")
        need(args.dt_fast in (None, False), "--dt-fast: not in the minimal S4D block")
    else:
        o["transforms"] = (
            pick("dt-transform", args.dt_transform, "exp", "dt's transform (dt_transform)"),
            pick("real-transform", args.real_transform, "exp",
                 "A's real-part transform (real_transform)"),
            pick("imag-transform", args.imag_transform, "none",
                 "A's imaginary-part transform (imag_transform)"))
        o["dt_fast"] = pick("dt-fast", args.dt_fast, False, "whether dt is under sinh (dt_fast)")
        if o["kind"] == "diag":
            o["disc"] = pick("discretization", args.discretization, "zoh",
                             "the diagonal kernel's discretization (disc)")
        else:
            need(args.discretization in (None, "bilinear"),
                 "--discretization: the DPLR (S4) kernel is bilinear only")
            o["disc"] = "bilinear"
        o["activation"] = pick("activation", flag_map["activation"], "GELU",
                               "the activation after the SSM")
    if o["norm_kind"]:
        o["prenorm"] = pick("norm", args.norm, "post", "the norm placement") == "pre"
    else:
        need(args.norm is None, "--norm/--prenorm given but the checkpoint has no norms")
        o["prenorm"] = False
    if "residual" not in o:
        o["residual"] = pick("residual", args.residual, True, "whether blocks are residual")
    return assumed


# ---------------------------------------------------------------------------
# Structure from shapes (canonical names)
# ---------------------------------------------------------------------------

def organize(sd):
    """Splits canonical names into encoder/decoder/norms/layers; refuses
    unknown tensors (listing them)."""
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
        m = re.fullmatch(r"norms\.(\d+)\.(weight|bias|running_mean|running_var)", name)
        if m:
            norms.setdefault(int(m.group(1)), {})[m.group(2)] = (name, arr)
            continue
        m = re.fullmatch(r"final_norm\.(weight|bias|running_mean|running_var)", name)
        if m:
            top[name] = arr
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
             "with the official S4Block/S4D names, or the training script's model.layers.<i>.*; "
             "see --help)")
    if len(forms) > 1:
        fail("both 's4_layers.<i>.' and 'layers.<i>.' prefixes present")
    if not layers:
        fail("no S4 layers found (expected s4_layers.<i>.*, layers.<i>.* or model.layers.<i>.*)")
    n = max(layers) + 1
    missing = [i for i in range(n) if i not in layers]
    if missing:
        fail(f"layer indices are not contiguous: missing layer(s) {missing}")
    return top, norms, [layers[i] for i in range(n)], n


def shape_of(entry):
    return tuple(entry[1].shape)


def infer_layer(i, L, orig):
    """Returns a dict describing layer i (kind, H, N2, S, rank, ch, out)."""
    nm = lambda n: orig.get(L[n][0], L[n][0])  # noqa: E731 - the file's name, for messages
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
    extra = [nm(n) for n in L if n not in BLOCK_NAMES[kind] + OUTPUT_NAMES]
    need(not extra, f"layer {i} ({kind}): tensor(s) of another block kind: {', '.join(extra)}")
    info = {"kind": kind}
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
         f"{nm('layer.kernel.A_imag')}: shape {shape_of(L['layer.kernel.A_imag'])}, "
         f"expected ({S}, {N2})")
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
            fail(f"{nm('output_linear.0.weight')}: shape {shape_of(w)} (bias {shape_of(b)}), "
                 f"expected ({2 * H}, {H}) for GLU or ({H}, {H}) for a plain linear")
    return info


def _sentence(text):
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def build(sd, o, args, orig=None, hp_note=""):
    """Shapes against the options; returns (config dict, tensors, summary)."""
    orig = orig or {}
    top, norms, layers, n = organize(sd)
    infos = [infer_layer(i, L, orig) for i, L in enumerate(layers)]
    first = infos[0]
    for i, info in enumerate(infos[1:], 1):
        for key in ("kind", "H", "N2", "rank", "ch", "out"):
            need(info[key] == first[key],
                 f"layer {i} differs from layer 0 in {key}: {info[key]} vs {first[key]}")
    kind, H, N2 = first["kind"], first["H"], first["N2"]

    # the options against the shapes
    if o.get("kind") is not None:
        need(o["kind"] == kind, f"the hyper-parameters say a {o['kind']} kernel but the "
             f"tensors are a {kind} one")
    o["kind"] = kind
    if kind == "s4d":   # models/s4/s4d.py: one fixed parameterization
        o.setdefault("transforms", ("exp", "exp", "none"))
        o.setdefault("dt_fast", False)
        o.setdefault("disc", "zoh")
        o.setdefault("activation", "GELU")
    if o.get("n_layers") is not None:
        need(o["n_layers"] == n, f"model.n_layers x n_repeat = {o['n_layers']} but the "
             f"checkpoint has {n} layers")
    if o.get("d_model") is not None:
        need(o["d_model"] == H, f"model.d_model = {o['d_model']} but the tensors have H = {H}")
    if o.get("d_state") is not None:
        need(o["d_state"] == 2 * N2, f"model.layer.d_state = {o['d_state']} but the tensors "
             f"have N = {2 * N2}")
    if o.get("rank") is not None and kind == "dplr":
        need(o["rank"] == first["rank"], f"model.layer.rank = {o['rank']} but "
             f"layer.kernel.P has rank {first['rank']}")
    if o.get("n_ssm") is not None and kind != "s4d":
        need(all(x["S"] == o["n_ssm"] for x in infos), f"model.layer.n_ssm = {o['n_ssm']} "
             "but A_real has another number of rows")
    if "bidirectional" in o:
        need(o["bidirectional"] == (first["ch"] == 2),
             f"model.layer.bidirectional = {o['bidirectional']} but layer.kernel.C has "
             f"{first['ch']} channel(s)")
    if "output_linear" in o:
        need(o["output_linear"] == first["out"],
             f"final_act says {o['output_linear']} but the output linear's shapes say "
             f"{first['out']}")
    else:
        o["output_linear"] = first["out"]
        if first["out"] == "LINEAR":
            need(args.final_act is not None, "an H x H output linear is either final_act 'id' "
                 "or a linear followed by an activation: pass --final-act (id, gelu, ...)")
            o["output_linear"], o["output_activation"] = final_act_option(
                "--final-act", args.final_act)
        else:
            need(args.final_act in (None, first["out"].lower(), "none" if first["out"] == "NONE"
                                    else None),
                 f"--final-act {args.final_act}: the output linear's shapes say {first['out']}")
            o["output_activation"] = "IDENTITY"

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
    norm_kind = o.get("norm_kind", "unset")
    if norms:
        batch = any("running_mean" in norms[i] for i in norms)
        shape_kind = "BATCH" if batch else "LAYER"
        if norm_kind == "unset":
            norm_kind = shape_kind
        need(norm_kind == shape_kind, f"the norm is {norm_kind} but the tensors are a "
             f"{shape_kind} norm's")
        want = {"weight", "bias"} | ({"running_mean", "running_var"} if batch else set())
        for i in range(n):
            need(i in norms and set(norms[i]) == want,
                 f"norms.{i}: {sorted(want)} are needed for every layer (0..{n - 1})")
            for p in want:
                need(norms[i][p][1].shape == (H,),
                     f"{orig.get(norms[i][p][0], norms[i][p][0])}: shape "
                     f"{tuple(norms[i][p][1].shape)}, expected ({H},)")
        need(max(norms) < n, f"norms.{max(norms)}.* has no layer {max(norms)}")
    else:
        need(norm_kind in ("unset", None), "the hyper-parameters name a norm but the "
             "checkpoint has no norm tensors")
        norm_kind = None
    o["norm_kind"] = norm_kind
    final = any(k.startswith("final_norm.") for k in top)
    if final:
        need(norm_kind is not None, "a final norm without block norms")
        want = {"weight", "bias"} | ({"running_mean", "running_var"} if norm_kind == "BATCH"
                                     else set())
        have = {k.split(".", 1)[1] for k in top if k.startswith("final_norm.")}
        need(have == want, f"model.norm.norm: expected {sorted(want)}, got {sorted(have)}")
    assumed = merge_flags(o, args, o.get("from_hparams", False))
    if o.get("from_hparams"):
        need(final == (o["prenorm"] and norm_kind is not None),
             f"prenorm={o['prenorm']} with a norm means {'a' if o['prenorm'] else 'no'} "
             "final norm (model.norm), but the checkpoint "
             f"{'has' if final else 'has none'}")
    norm = "NONE" if norm_kind is None else ("PRE" if o["prenorm"] else "POST")

    l_kernels = [info.get("l_kernel", 0) for info in infos]
    if args.max_length is not None:
        need(args.max_length >= 1, "--max-length must be >= 1")
        max_length = args.max_length
    elif o.get("l_max"):
        max_length = int(o["l_max"])
    else:
        need(max(l_kernels) > 0, "cannot infer --max-length (no l_max in the "
             "hyper-parameters and no l_kernel > 0 in the checkpoint); pass --max-length N")
        max_length = max(l_kernels)

    # tensors, in a canonical order, checked for NaN/Inf
    tensors = []

    def add(name, arr, integer=False):
        shown = orig.get(name, name)
        arr = np.asarray(arr)
        if integer:
            tensors.append((name, np.asarray(arr, dtype=np.int64).reshape(())))
            return
        if arr.dtype.kind != "f":
            fail(f"{shown}: dtype {arr.dtype}, expected floating point")
        if not np.all(np.isfinite(arr)):
            bad = int(np.sum(~np.isfinite(arr)))
            fail(f"{shown}: {bad} NaN/Inf value(s)")
        if arr.dtype == np.float64:   # folded values (weight_norm) keep their precision
            tensors.append((name, arr))
            return
        a32 = arr.astype(np.float32)
        if not np.all(np.isfinite(a32)):
            fail(f"{shown}: values overflow float32")
        tensors.append((name, a32))

    if enc:
        add("encoder.weight", top["encoder.weight"])
        add("encoder.bias", top["encoder.bias"])
    for i, L in enumerate(layers):
        pre = f"s4_layers.{i}."
        for rest in BLOCK_NAMES[kind] + OUTPUT_NAMES:
            if rest in L:
                add(pre + rest, L[rest][1], integer=rest.endswith("l_kernel"))
    norm_parts = ["weight", "bias"] + (["running_mean", "running_var"]
                                       if norm_kind == "BATCH" else [])
    for i in sorted(norms):
        for p in norm_parts:
            add(f"norms.{i}.{p}", norms[i][p][1])
    if final:
        for p in norm_parts:
            add(f"final_norm.{p}", top[f"final_norm.{p}"])
    if dec:
        add("decoder.weight", top["decoder.weight"])
        add("decoder.bias", top["decoder.bias"])

    disc = {"zoh": "ZOH", "bilinear": "BILINEAR", "dss": "DSS"}[o["disc"]]
    kind_text = {"dplr": f"S4 (DPLR rank {first['rank']})", "diag": f"S4D (diagonal, {disc})",
                 "s4d": "minimal S4D"}[kind]
    tr = o["transforms"]
    config = {
        "name": args.name,
        "description": _sentence(args.description or
                                 f"{kind_text} model converted from "
                                 f"{os.path.basename(args.checkpoint)} by "
                                 "tools/convert_s4_checkpoint.py")
        + (f" Import notes: {hp_note}." if hp_note else ""),
        "d_input": d_input, "d_output": d_output, "max_length": max_length,
        "s4": {
            "n_layers": n, "d_model": H, "d_state": 2 * N2,
            "kernel": "DPLR" if kind == "dplr" else "DIAGONAL",
            "discretization": disc, "rank": first["rank"],
            "activation": o["activation"], "output_linear": o["output_linear"], "norm": norm,
            "residual": bool(o["residual"]), "bidirectional": first["ch"] == 2,
            "encoder": enc, "decoder": dec, "layer_norm_eps": float(o.get("eps", 1e-5)),
            "weight_naming": "S4_REFERENCE",
            "dt_transform": tr[0].upper(), "real_transform": tr[1].upper(),
            "imag_transform": tr[2].upper(), "dt_fast": bool(o["dt_fast"]),
            "output_activation": o["output_activation"],
            "norm_kind": norm_kind or "LAYER", "final_norm": final,
        },
    }
    summary = (f"{kind_text}, {n} layer(s), H={H}, N={2 * N2}, n_ssm={[x['S'] for x in infos]}, "
               f"d_input={d_input}, d_output={d_output}, norm={norm}"
               f"{'/' + norm_kind if norm_kind else ''}{', final norm' if final else ''}, "
               f"residual={bool(o['residual'])}, bidirectional={first['ch'] == 2}, "
               f"dt/real/imag transforms={'/'.join(tr)}, dt_fast={bool(o['dt_fast'])}, "
               f"activation={o['activation']}, output={o['output_linear']}"
               f"{'+' + o['output_activation'] if o['output_activation'] != 'IDENTITY' else ''}, "
               f"l_kernel={l_kernels if kind == 'dplr' else '-'}, max_length={max_length}"
               + (f"; {hp_note}" if hp_note else "")
               + (f"; assumed the official code's defaults: {', '.join(assumed)}"
                  if assumed else "")
               + ("; unary only (DSS)" if disc == "DSS" else "")
               + ("; unary only (bidirectional)" if first["ch"] == 2 else ""))
    return config, tensors, summary


def convert(sd_file, hp, args):
    """-> (config, tensors, summary) for tensors with the file's names."""
    sd = strip_prefixes(sd_file)
    training = is_training_layout(sd, hp)
    if training:
        o = options_from_hparams(hp) if hp is not None else {}
        minimal = o.get("kind") == "s4d" or any(
            re.fullmatch(r"model\.layers\.\d+\.layer\.kernel\.log_dt", n) for n in sd)
        canon, orig, enc, dec = rename_training(sd, minimal)
        if hp is not None:
            o["from_hparams"] = True
            ekind, ek = encoders_from_hparams(hp, enc)
            note, dk = decoders_from_hparams(hp, dec)
        else:
            need(len(enc) <= 1 and len(dec) <= 1, "more than one encoder.<k> or decoder.<k> "
                 "module with tensors")
            ek = next(iter(enc), None)
            dk = next(iter(dec), None)
            ekind, note = "linear" if ek is not None else None, ""
            if ek is not None and set(enc[ek]) == {"weight"}:
                fail(f"encoder.{ek}.weight without a bias: an embedding? Convert with the "
                     "checkpoint's hyper-parameters")
        if ek is not None:
            parts = enc[ek]
            if ekind == "embedding":
                need(set(parts) == {"weight"} and parts["weight"][1].ndim == 2,
                     f"encoder.{ek}: an embedding has one (n_tokens, d_model) weight")
                table = parts["weight"][1]
                canon["encoder.weight"] = np.ascontiguousarray(table.T)
                canon["encoder.bias"] = np.zeros(table.shape[1], dtype=table.dtype)
                orig["encoder.weight"] = parts["weight"][0]
                note = (note + "; " if note else "") + (
                    f"embedding encoder of {table.shape[0]} tokens: inputs are one-hot vectors")
            else:
                need(set(parts) == {"weight", "bias"}, f"encoder.{ek}: a linear encoder has "
                     "weight and bias")
                for p in ("weight", "bias"):
                    canon["encoder." + p] = parts[p][1]
                    orig["encoder." + p] = parts[p][0]
        if dk is not None:
            for path, (name, arr) in dec[dk].items():
                leaf = path.rsplit(".", 1)[-1]
                canon["decoder." + leaf] = arr
                orig["decoder." + leaf] = name
        return build(canon, o, args, orig, note)
    # example.py / bare state_dict: strip 'model.' (a Lightning wrapper) too
    flat = {}
    for name, arr in sd.items():
        while name.startswith("model."):
            name = name[len("model."):]
        need(name not in flat, f"two tensors map to {name!r} after stripping prefixes")
        flat[name] = arr
    renamed = {("s4_" + k if k.startswith("layers.") else k): v for k, v in flat.items()}
    if any(k.startswith("layers.") for k in flat) and any(k.startswith("s4_layers.")
                                                          for k in flat):
        fail("both 's4_layers.<i>.' and 'layers.<i>.' prefixes present")
    need(hp is None or not isinstance(hp.get("model"), dict),
         "the checkpoint has the training script's hyper-parameters but not its tensor names")
    # example.py's S4Model: every block is residual; its prenorm is an
    # argument (a flag here).
    o = {"eps": 1e-5, "residual": True}
    kinds = {("s4d" if "kernel.log_dt" in k else None) for k in renamed}
    if "s4d" in kinds:
        o.update(kind="s4d", transforms=("exp", "exp", "none"), dt_fast=False, disc="zoh",
                 activation="GELU")
        need(args.dt_transform is None and args.real_transform is None and
             args.imag_transform is None,
             "--dt-transform/--real-transform/--imag-transform: the minimal S4D block has a "
             "fixed parameterization")
    return build(renamed, o, args)


# ---------------------------------------------------------------------------

def write_atomic(path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _bool(text):
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="convert_s4_checkpoint.py",
        description="Convert an official-S4 PyTorch checkpoint into an ssmserve "
                    "model-repository entry.",
        epilog="What is read, inferred and refused: the module docstring "
               "(head -60 tools/convert_s4_checkpoint.py) and README's S4 section.")
    ap.add_argument("checkpoint", help="a Lightning .ckpt of train.py, a .pt/.pth state_dict, "
                    "or example.py's checkpoint")
    ap.add_argument("--repo", required=True, help="model repository folder")
    ap.add_argument("--name", required=True, help="model name (the folder under --repo)")
    ap.add_argument("--version", type=int, default=1, help="version folder (default 1)")
    ap.add_argument("--d-input", type=int, default=None,
                    help="check the input width (inferred from the encoder, else H)")
    ap.add_argument("--max-length", type=int, default=None,
                    help="longest sequence for unary calls (default: the layer's l_max, "
                         "else the largest l_kernel)")
    ap.add_argument("--description", default=None, help="one paragraph for humans")
    ap.add_argument("--force", action="store_true", help="overwrite an existing version")
    g = ap.add_argument_group("options shapes cannot tell (only for checkpoints without "
                              "hyper-parameters; with them, a flag must agree)")
    g.add_argument("--dt-transform", choices=TRANSFORMS + ("tanh",), default=None)
    g.add_argument("--real-transform", choices=TRANSFORMS + ("tanh",), default=None)
    g.add_argument("--imag-transform", choices=TRANSFORMS + ("tanh",), default=None)
    g.add_argument("--dt-fast", type=_bool, default=None, metavar="true|false")
    g.add_argument("--discretization", choices=("zoh", "bilinear", "dss"), default=None,
                   help="the diagonal kernel's disc (DPLR is always bilinear)")
    g.add_argument("--activation", default=None,
                   help="the activation after the SSM: gelu, identity, tanh, relu, silu, "
                        "sigmoid, elu, softplus")
    g.add_argument("--final-act", default=None,
                   help="for an H x H output linear: id, or the activation after it")
    g.add_argument("--norm", choices=("pre", "post"), default=None, help="norm placement")
    g.add_argument("--prenorm", dest="norm", action="store_const", const="pre",
                   help="= --norm pre")
    g.add_argument("--postnorm", dest="norm", action="store_const", const="post",
                   help="= --norm post")
    g.add_argument("--residual", type=_bool, default=None, metavar="true|false")
    g.add_argument("--code-defaults", action="store_true",
                   help="take the official code's defaults for the options above that are "
                        "not given (listed in the summary)")
    args = ap.parse_args(argv)
    try:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", args.name):
            fail(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' "
                 "(not starting with '.' or '-')")
        if args.version < 1:
            fail("--version must be >= 1")
        for key in ("dt_transform", "real_transform", "imag_transform"):
            if getattr(args, key) is not None:
                transform_option(f"--{key.replace('_', '-')}", getattr(args, key))
        import s4io
        sd, hp, _ = load_checkpoint(args.checkpoint)
        config, tensors, summary = convert(sd, hp, args)
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
