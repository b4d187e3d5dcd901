"""Fixture models in the layout of the official training script (train.py:
a Lightning module holding encoder, SequenceModel backbone and decoder),
each saved as a Lightning-style checkpoint with its hyper-parameters, for
tests/data/s4_reference. Used by make_fixture.py; see its docstring.

For every model M:
    <out>/M/train.ckpt              torch.save of {'state_dict': ...,
                                    'hyper_parameters': ..., 'epoch': ...}
                                    with the training script's names
    <out>/M/config.pbtxt            tools/convert_s4_checkpoint.py's output
    <out>/M/1/weights.safetensors   for train.ckpt (no flags)
    <out>/M/io.safetensors          input (B, L, d_input) F64, output
                                    (B, L, d_output) F64 from the reference's
                                    training-script path (s4_numpy.
                                    training_forward on train.ckpt's own
                                    tensors and hyper-parameters), plus
                                    'tokens' (B, L) I64 for an embedding
                                    encoder (input is then their one-hot)

The weights are seeded draws around S4-like values, stored through the
inverse of each model's transforms (the reference's inv_transform), so
every transform sees values it would see in training.
"""

import copy
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import s4_numpy as ref  # noqa: E402
import s4io  # noqa: E402

GENERATOR = "tools/s4ref/make_fixture.py"

# The layer config of configs/model/layer/s4.yaml, as train.py saves it
# (SequenceModel adds dropout and transposed to it).
S4_LAYER = {
    "_name_": "s4", "d_state": 64, "channels": 1, "bidirectional": False, "gate": None,
    "gate_act": "id", "bottleneck": None, "activation": "gelu", "mult_act": None,
    "final_act": "glu", "postact": None, "initializer": None, "weight_norm": False,
    "tie_dropout": True, "layer": "fftconv", "mode": "nplr", "init": "legs",
    "measure": None, "rank": 1, "dt_min": 0.001, "dt_max": 0.1,
    "dt_transform": "softplus", "lr": {"dt": 0.001, "A": 0.001, "B": 0.001}, "wd": 0.0,
    "n_ssm": 1, "drop_kernel": 0.0, "deterministic": False, "l_max": None,
    "verbose": True, "dropout": 0.0, "transposed": False,
}

# configs/model/base.yaml + s4.yaml.
BACKBONE = {
    "_name_": "model", "prenorm": True, "transposed": False, "n_layers": 4,
    "d_model": 256, "bidirectional": False, "residual": "R",
    "pool": {"_name_": "pool", "stride": 1, "expand": None}, "norm": "layer",
    "dropout": 0.0, "tie_dropout": True, "track_norms": True,
}


def hparams(model, layer, encoder="linear", decoder=None, l_max=None):
    m = copy.deepcopy(BACKBONE)
    m.update(model)
    if layer.get("_name_") == "s4d":               # its own, short config
        lay = copy.deepcopy(layer)
    else:
        lay = copy.deepcopy(S4_LAYER)
        lay.update(layer)
        lay["l_max"] = l_max
    m["layer"] = lay
    return {
        "train": {"seed": 2222, "interval": "step", "monitor": "val/accuracy", "mode": "max",
                  "ema": 0.0, "test": False, "debug": False, "ignore_warnings": False,
                  "state": {"mode": None, "n_context": 0, "n_context_eval": 0},
                  "disable_dataset": False, "validate_at_start": False},
        "tolerance": {"logdir": "./resume", "id": None},
        "wandb": None,
        "trainer": {"accelerator": "gpu", "devices": 1, "max_epochs": 10,
                    "gradient_clip_val": 0.0, "precision": 32},
        "loader": {"batch_size": 50, "num_workers": 4, "pin_memory": True, "drop_last": True},
        "dataset": {"_name_": "synthetic", "l_max": l_max},
        "task": {"_name_": "base", "loss": "cross_entropy", "metrics": ["accuracy"],
                 "torchmetrics": None},
        "optimizer": {"_name_": "adamw", "lr": 0.01, "weight_decay": 0.05},
        "scheduler": {"_name_": "cosine_warmup", "num_warmup_steps": 10,
                      "num_training_steps": 1000},
        "callbacks": {"learning_rate_monitor": {"logging_interval": "step"}},
        "encoder": encoder,
        "decoder": decoder if decoder is not None else {"_name_": "sequence", "mode": "last"},
        "model": m,
    }


# What each model exercises (also its description).
TRAIN_MODELS = [
    dict(name="train-s4-default", seed=2001, H=4, N=8, d_input=3, d_output=2, B=2, L=50,
         model={"n_layers": 2, "d_model": 4},
         layer={"d_state": 8}, l_max=64,
         description="The training script's default S4 (configs/model/s4.yaml): DPLR rank 1, "
                     "n_ssm=1 < H, dt_transform softplus, prenorm LayerNorm with the "
                     "backbone's final norm, GELU, Linear+GLU, l_max=64 > L: C~ for 64."),
    dict(name="train-s4-bidir-batch", seed=2002, H=3, N=6, d_input=2, d_output=2, B=2, L=37,
         model={"n_layers": 1, "d_model": 3, "prenorm": False, "norm": "batch"},
         layer={"d_state": 6, "rank": 2, "n_ssm": None, "bidirectional": True,
                "dt_transform": "exp", "real_transform": "softplus", "imag_transform": "exp",
                "dt_fast": True, "activation": "tanh", "final_act": "id"},
         l_kernel=16, convert_args=["--max-length", "64"],
         decoder={"_name_": "sequence", "mode": "pool"},
         description="DPLR rank 2, bidirectional, n_ssm=None (= H), dt exp under dt_fast "
                     "(sinh), A real softplus, A imag exp, postnorm BatchNorm, tanh, "
                     "final_act id (plain linear); l_max None with C~ stored for "
                     "l_kernel=16 < L=37 (doubled twice), converted with --max-length 64."),
    dict(name="train-s4d-zoh", seed=2003, H=4, N=8, n_tokens=5, d_output=3, B=2, L=31,
         model={"n_layers": 2, "d_model": 4, "residual": None},
         layer={"d_state": 8, "mode": "diag", "init": "diag-lin", "n_ssm": 2, "disc": "zoh",
                "dt_transform": "relu", "real_transform": "relu",
                "imag_transform": "softplus", "activation": "swish", "final_act": "gelu"},
         encoder="embedding", decoder="linear", convert_args=["--max-length", "32"],
         description="SSMKernelDiag ZOH, n_ssm=2, dt relu, A real relu, A imag softplus, "
                     "prenorm without residual, swish, final_act gelu (linear then GELU), "
                     "an embedding encoder (served as one-hot inputs), a linear decoder."),
    dict(name="train-s4d-bilinear-bidir", seed=2004, H=4, N=4, d_input=2, d_output=2, B=2,
         L=29,
         model={"n_layers": 1, "n_repeat": 2, "d_model": 4, "norm": None, "residual": "F"},
         layer={"d_state": 4, "mode": "diag", "init": "diag-inv", "disc": "bilinear",
                "bidirectional": True, "n_ssm": 4, "dt_transform": "sigmoid",
                "real_transform": "sigmoid", "imag_transform": "relu", "dt_fast": True,
                "activation": "elu", "final_act": None},
         decoder={"_name_": "nd", "mode": "pool"}, convert_args=["--max-length", "32"],
         description="SSMKernelDiag bilinear, bidirectional, n_layers 1 x n_repeat 2, dt "
                     "sigmoid under dt_fast, A real sigmoid, A imag relu, no norm, "
                     "feedforward residual, ELU, final_act None (no output linear)."),
    dict(name="train-s4d-dss", seed=2005, H=4, N=8, d_input=3, d_output=2, B=2, L=40,
         model={"n_layers": 2, "d_model": 4, "prenorm": False},
         layer={"d_state": 8, "mode": "diag", "init": "diag-legs", "disc": "dss",
                "n_ssm": 2, "dt_transform": "none", "real_transform": "none",
                "imag_transform": "none", "activation": "softplus", "B_init": "random"},
         positive_modes=True, l_max=64,
         description="SSMKernelDiag with disc dss (unary only: the kernel depends on the "
                     "sequence length), dt, A real and A imag all untransformed ('none'), a "
                     "mode with Re(Lambda) > 0 in every SSM, postnorm, softplus activation."),
    dict(name="train-s4d-dss-bidir", seed=2008, H=2, N=4, d_input=2, d_output=1, B=2, L=21,
         model={"n_layers": 1, "d_model": 2, "prenorm": True},
         layer={"d_state": 4, "mode": "diag", "init": "diag-lin", "disc": "dss",
                "bidirectional": True, "n_ssm": 1, "dt_transform": "softplus",
                "real_transform": "exp", "imag_transform": "none", "activation": "gelu"},
         l_max=32,
         description="SSMKernelDiag with disc dss, bidirectional (both kernels depend on the "
                     "sequence length), prenorm, dt softplus."),
    dict(name="train-s4-none-relu", seed=2006, H=4, N=4, d_input=1, d_output=1, B=2, L=33,
         model={"n_layers": 2, "d_model": 4, "prenorm": False, "norm": "batch",
                "residual": {"_name_": "R", "alpha": 1.0, "beta": 1.0}},
         layer={"d_state": 4, "dt_transform": "none", "real_transform": "none",
                "imag_transform": "sigmoid", "activation": "relu", "final_act": "sigmoid",
                "weight_norm": True},
         convert_args=["--max-length", "40"],
         description="DPLR rank 1 with l_kernel=0 (plain C), dt none, A real none, A imag "
                     "sigmoid, postnorm BatchNorm, ReLU, final_act sigmoid with weight_norm "
                     "(weight_g, weight_v: folded on conversion)."),
    dict(name="train-s4d-minimal", seed=2007, H=4, N=8, d_input=2, d_output=2, B=2, L=27,
         model={"n_layers": 2, "d_model": 4, "prenorm": False},
         layer={"_name_": "s4d", "d_state": 8, "dt_min": 0.001, "dt_max": 0.1, "lr": 0.001,
                "dropout": 0.0, "transposed": False},
         minimal=True, convert_args=["--max-length", "32"],
         description="The minimal models/s4/s4d.py S4D as the training script's layer "
                     "(configs/model/layer/s4d_example.yaml), postnorm."),
]


def f32(a):
    return np.asarray(a, dtype=np.float32)


def crandn(rs, *shape):
    return (rs.randn(*shape) + 1j * rs.randn(*shape)) / np.sqrt(2.0)


def as_real(z):
    return np.stack([z.real, z.imag], axis=-1)


def inv_transform(p, t):
    """The stored value that transform t maps to p (> 0)."""
    p = np.asarray(p, dtype=np.float64)
    if t in ("none", "relu"):
        return p
    if t == "exp":
        return np.log(p)
    if t == "sigmoid":
        return np.log(p / (1 - p))
    if t == "softplus":
        return np.log(np.expm1(p))
    raise ValueError(t)


def legs_nplr(N):
    import make_fixture
    return make_fixture.legs_nplr(N)


def kernel_tensors(rs, m, layer, pre):
    """FFTConv's D and kernel tensors for block prefix `pre` (the S4Block's
    `layer.` prefix added here), in registration order."""
    H, N2 = m["H"], m["N"] // 2
    S = layer["n_ssm"] or H
    ch = 2 if layer["bidirectional"] else 1
    dplr = ref._KERNEL_MODES[layer["mode"]] == "dplr"
    fft = pre + "layer."
    k = fft + "kernel."
    dt = np.exp(np.linspace(np.log(1e-3), np.log(1e-1), H) + 0.15 * rs.randn(H))
    re = 0.5 * np.exp(0.25 * rs.randn(S, N2))          # -Re Lambda > 0
    if m.get("positive_modes"):
        re[:, 0] = -0.3 * (1 + 0.2 * rs.rand(S))        # Re Lambda > 0 on mode 0
    if dplr:
        lam0, P0, B0 = legs_nplr(m["N"])
        im = -lam0.imag[None, :] * np.exp(0.1 * rs.randn(S, N2))
        B = B0[None, :] * (1 + 0.1 * crandn(rs, S, N2)) + 0.05 * crandn(rs, S, N2)
        P = np.zeros((layer["rank"], S, N2), dtype=complex)
        P[0] = P0[None, :] * (1 + 0.1 * crandn(rs, S, N2)) + 0.05 * crandn(rs, S, N2)
        for r in range(1, layer["rank"]):
            P[r] = 0.3 * crandn(rs, S, N2)
    else:
        im = np.pi * np.arange(N2)[None, :] * np.exp(0.05 * rs.randn(S, N2)) \
            + 0.1 * np.abs(rs.randn(S, N2))
        B = 1 + 0.2 * crandn(rs, S, N2)
        P = None
    if layer.get("imag_transform", "none") == "sigmoid":
        im = 0.05 + 0.9 * rs.rand(S, N2)
    if layer.get("dt_transform", "exp") == "sigmoid":
        dt = np.clip(dt, 1e-3, 0.5)
    inv_dt = inv_transform(dt, layer.get("dt_transform", "exp"))
    if layer.get("dt_fast"):
        inv_dt = np.arcsinh(inv_dt)
    inv_dt = f32(inv_dt[:, None])
    if layer.get("real_transform", "exp") == "sigmoid":
        re = np.clip(re, 0.05, 0.95)
    A_real = f32(inv_transform(re, layer.get("real_transform", "exp")) if layer.get("real_transform", "exp") != "none"
                 else re)
    A_imag = f32(inv_transform(np.maximum(im, 1e-3), layer.get("imag_transform", "none")))
    D = f32(rs.randn(1, H))
    C = crandn(rs, ch, H, N2)
    B_t = f32(as_real(B[None]))
    out = [(fft + "D", D), (k + "inv_dt", inv_dt)]
    l_kernel = int(m.get("l_kernel", layer.get("l_max") or 0)) if dplr else 0
    if dplr:
        P_t = f32(as_real(P))
        if l_kernel > 0:
            # C~ = C (I - Abar^l) from the stored (float32) parameters, as the
            # official _setup_C does at the first forward with l_max set.
            tmp = {k + "inv_dt": inv_dt, k + "A_real": A_real, k + "A_imag": A_imag,
                   k + "B": B_t, k + "P": P_t, k + "C": f32(as_real(C)),
                   k + "l_kernel": np.array(0, dtype=np.int64), fft + "D": D}
            par = ref.fftconv_params(tmp, fft, "dplr", H, ref._KernelOpts(layer))
            Ct = np.empty_like(C)
            for h in range(H):
                Abar, _ = ref.dplr_discrete(par, h)
                G = np.eye(2 * N2) - np.linalg.matrix_power(Abar, l_kernel)
                Ct[:, h, :] = (ref._double(C[:, h]) @ G)[:, :N2]
            C = Ct
    out += [(k + "C", f32(as_real(C))), (k + "B", B_t), (k + "A_real", A_real),
            (k + "A_imag", A_imag)]
    if dplr:
        out += [(k + "P", P_t), (k + "l_kernel", np.array(l_kernel, dtype=np.int64))]
    return out


def minimal_tensors(rs, m, pre):
    H, N2 = m["H"], m["N"] // 2
    p = pre + "layer."
    return [(p + "D", f32(rs.randn(H))),
            (p + "kernel.C", f32(as_real(crandn(rs, H, N2)))),
            (p + "kernel.log_dt", f32(np.linspace(np.log(1e-3), np.log(1e-1), H)
                                      + 0.15 * rs.randn(H))),
            (p + "kernel.log_A_real", f32(np.log(0.5) + 0.25 * rs.randn(H, N2))),
            (p + "kernel.A_imag", f32(np.pi * np.arange(N2) * np.exp(0.05 * rs.randn(H, N2)))),
            (p + "output_linear.0.weight", f32(rs.randn(2 * H, H, 1) / np.sqrt(H))),
            (p + "output_linear.0.bias", f32(rs.randn(2 * H) / np.sqrt(H)))]


def norm_tensors(rs, prefix, kind, H):
    out = [(prefix + "norm.weight", f32(1 + 0.1 * rs.randn(H))),
           (prefix + "norm.bias", f32(0.1 * rs.randn(H)))]
    if kind == "batch":
        out += [(prefix + "norm.running_mean", f32(0.3 * rs.randn(H))),
                (prefix + "norm.running_var", f32(np.exp(0.3 * rs.randn(H)))),
                (prefix + "norm.num_batches_tracked", np.array(1234, dtype=np.int64))]
    return out


def make_train_model(m):
    rs = np.random.RandomState(m["seed"])
    hp = hparams(m["model"], m["layer"], m.get("encoder", "linear"), m.get("decoder"),
                 m.get("l_max"))
    model, layer = hp["model"], hp["model"]["layer"]
    H = m["H"]
    n = model["n_layers"] * model.get("n_repeat", 1)
    sd = []
    for i in range(n):
        pre = f"model.layers.{i}."
        if m.get("minimal"):
            sd += minimal_tensors(rs, m, pre)
        else:
            sd += kernel_tensors(rs, m, layer, pre + "layer.")
            fa = layer["final_act"]
            if fa is not None:
                width = 2 * H if fa == "glu" else H
                ol = pre + "layer.output_linear.0."
                W = rs.randn(width, H) / np.sqrt(H)
                if layer.get("weight_norm"):
                    g = np.linalg.norm(W, axis=1, keepdims=True) * (1 + 0.1 * rs.randn(width, 1))
                    sd += [(ol + "bias", f32(rs.randn(width) / np.sqrt(H))),
                           (ol + "weight_g", f32(g)), (ol + "weight_v", f32(W))]
                else:
                    sd += [(ol + "weight", f32(W)), (ol + "bias", f32(rs.randn(width) / np.sqrt(H)))]
        norm = ref._cfg_name(model["norm"])
        if norm is not None:
            sd += norm_tensors(rs, pre + "norm.", norm, H)
    if model["prenorm"] and model["norm"] is not None:
        sd += norm_tensors(rs, "model.norm.", ref._cfg_name(model["norm"]), H)
    enc = ref._cfg_name(hp["encoder"])
    if enc == "linear":
        sd += [("encoder.0.weight", f32(rs.randn(H, m["d_input"]) / np.sqrt(m["d_input"]))),
               ("encoder.0.bias", f32(rs.randn(H) / np.sqrt(m["d_input"])))]
    elif enc == "embedding":
        sd += [("encoder.0.weight", f32(rs.randn(m["n_tokens"], H)))]
    dec = ref._cfg_name(hp["decoder"])
    pre = "decoder.0." if dec == "linear" else "decoder.0.output_transform."
    sd += [(pre + "weight", f32(rs.randn(m["d_output"], H) / np.sqrt(H))),
           (pre + "bias", f32(rs.randn(m["d_output"]) / np.sqrt(H)))]
    if enc == "embedding":
        tokens = rs.randint(0, m["n_tokens"], size=(m["B"], m["L"])).astype(np.int64)
        u_model = tokens
        u = np.eye(m["n_tokens"])[tokens]
    else:
        tokens = None
        u = rs.randn(m["B"], m["L"], m["d_input"])
        u_model = u
    y = ref.training_forward(dict(sd), hp, u_model)
    return sd, hp, u, tokens, y


def checkpoint(sd, hp):
    import torch
    return {
        "epoch": 9, "global_step": 1800, "pytorch-lightning_version": "1.9.5",
        "state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd},
        "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
        "hparams_name": "config", "hyper_parameters": hp,
    }


def generate_train(out_dir, names=None):
    import torch
    import convert_s4_checkpoint as conv
    out_dir = Path(out_dir)
    for m in TRAIN_MODELS:
        if names and m["name"] not in names:
            continue
        sd, hp, u, tokens, y = make_train_model(m)
        d = out_dir / m["name"]
        d.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint(sd, hp), d / "train.ckpt")
        rc = conv.main([str(d / "train.ckpt"), "--repo", str(out_dir), "--name", m["name"],
                        "--force", "--description", m["description"]]
                       + m.get("convert_args", []))
        if rc != 0:
            raise RuntimeError(f"{m['name']}: the converter failed")
        io = [("input", u), ("output", y)]
        if tokens is not None:
            io.append(("tokens", tokens))
        s4io.write_safetensors(d / "io.safetensors", io,
                               {"generator": GENERATOR,
                                "reference": "tools/s4ref/s4_numpy.py training_forward "
                                             "(float64) on train.ckpt"})
        print(f"{m['name']}: B={m['B']} L={m['L']} max|y|={np.abs(y).max():.3g}")
