#!/usr/bin/python3
"""Generates the S4 reference fixture: small seeded models with the official
S4 implementation's state_dict names (float32, as a trained checkpoint would
hold them), each as a model-repository folder, plus inputs and float64
outputs from the NumPy reference (s4_numpy.py).

    /usr/bin/python3 tools/s4ref/make_fixture.py [--out tests/data/s4_reference]

writes, for every model M below:
    <out>/M/config.pbtxt             ssm.v1.ModelConfig (text format)
    <out>/M/1/weights.safetensors    the weights
    <out>/M/io.safetensors           input (B, L, d_input) F64, output (B, L, d_output) F64
The output is a pure function of this file and s4_numpy.py (seeded
numpy.random.RandomState, whose streams NumPy keeps stable), so
check_reference.py can regenerate and compare.
"""

import argparse
import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import s4_numpy as ref  # noqa: E402
import s4io  # noqa: E402

GENERATOR = "tools/s4ref/make_fixture.py"

# What each model exercises (also the config's description).
MODELS = [
    dict(name="s4-dplr-post", seed=1001, kind="dplr", N=8, H=4, n_layers=2,
         d_input=3, d_output=2, rank=1, n_ssm=4, norm="post", activation="gelu",
         l_kernel=64, bidirectional=False, B=2, L=50, max_length=64,
         description="S4 (SSMKernelDPLR, bilinear) rank 1, N=8, H=4, 2 layers, "
                     "GELU, Linear+GLU, postnorm; C holds C~ for l_kernel=64 "
                     "(kernel of length 64 truncated to L=50)."),
    dict(name="s4-dplr2-pre-long", seed=1002, kind="dplr", N=6, H=3, n_layers=1,
         d_input=2, d_output=2, rank=2, n_ssm=1, norm="pre", activation="gelu",
         l_kernel=16, bidirectional=False, B=2, L=37, max_length=64,
         description="S4 DPLR rank 2, N=6, H=3, n_ssm=1 (A, B, P shared by all "
                     "channels), prenorm, GELU; C~ stored for l_kernel=16 while "
                     "L=37: C~ is doubled twice (16->32->64) then truncated."),
    dict(name="s4-bidir", seed=1003, kind="dplr", N=4, H=2, n_layers=1,
         d_input=1, d_output=3, rank=1, n_ssm=2, norm="post", activation="identity",
         l_kernel=0, bidirectional=True, B=2, L=23, max_length=32,
         description="S4 DPLR rank 1 bidirectional (C has 2 channels; the second "
                     "runs backwards in time, off by one), N=4, H=2, identity "
                     "activation, postnorm; l_kernel=0: C is plain C."),
    dict(name="s4-diag-zoh", seed=1004, kind="diag", N=8, H=4, n_layers=2,
         d_input=3, d_output=1, rank=0, n_ssm=2, norm="pre", activation="gelu",
         bidirectional=False, B=2, L=31, max_length=32,
         description="S4D through S4Block (SSMKernelDiag, ZOH), N=8, H=4, "
                     "n_ssm=2 (channel h uses A_real/A_imag/B row h % 2), "
                     "2 layers, prenorm, GELU, Linear+GLU."),
    dict(name="s4d-minimal", seed=1005, kind="s4d", N=8, H=4, n_layers=2,
         d_input=2, d_output=4, rank=0, n_ssm=4, norm="post", activation="gelu",
         bidirectional=False, B=2, L=40, max_length=64,
         description="Minimal models/s4/s4d.py S4D blocks (log_dt, log_A_real, "
                     "+i A_imag, C, no B; Conv1d+GLU output), N=8, H=4, "
                     "2 layers, postnorm."),
]


# ---------------------------------------------------------------------------
# Initializations (S4-like, then perturbed as training would)
# ---------------------------------------------------------------------------

def legs_nplr(N):
    """HiPPO-LegS in DPLR form: returns (Lambda (N/2,), P~ (N/2,), B~ (N/2,))
    with A_legs = V (diag Lambda_full - P~ P~^H) V^H on the doubled state."""
    n = np.arange(N, dtype=np.float64)
    r = np.sqrt(2 * n + 1)
    A = -np.tril(np.outer(r, r), -1) - np.diag(n + 1)
    B = r.copy()
    P = np.sqrt(n + 0.5)
    S = A + np.outer(P, P)                 # -1/2 I + skew
    K = (S - S.T) / 2
    assert np.allclose(S - K, -0.5 * np.eye(N))
    mu, V = np.linalg.eigh(-1j * K)        # K v = i mu v, mu ascending
    keep = np.arange(N // 2)               # the negative-imaginary half
    assert np.all(mu[keep] < -1e-6)
    lam = -0.5 + 1j * mu[keep]
    Vk = V[:, keep]
    Bt = Vk.conj().T @ B
    Pt = Vk.conj().T @ P
    # Sanity: the doubled DPLR matrix has the eigenvalues of A_legs.
    Ad = ref.dplr_dense_A(lam, Pt[None])
    ev1 = np.sort_complex(np.linalg.eigvals(Ad))
    ev2 = np.sort_complex(np.linalg.eigvals(A).astype(complex))
    assert np.allclose(ev1, ev2, atol=1e-8), (ev1, ev2)
    Bt = Bt.real + 1j * np.clip(Bt.imag, -2.0, 2.0)   # the official B_clip
    return lam, Pt, Bt


def crandn(rs, *shape):
    """Complex normal as torch.randn(cfloat): each part N(0, 1/2)."""
    return (rs.randn(*shape) + 1j * rs.randn(*shape)) / np.sqrt(2.0)


def as_real(z):
    return np.stack([z.real, z.imag], axis=-1)


def f32(a):
    return np.asarray(a, dtype=np.float32)


def log_dt(rs, H):
    """log-spaced dt in [1e-3, 1e-1] over the channels, then drifted."""
    base = np.linspace(np.log(1e-3), np.log(1e-1), H)
    return base + 0.15 * rs.randn(H)


def make_layer(rs, m, i):
    """The block's tensors, as (name, array) in state_dict order."""
    N2, H, S = m["N"] // 2, m["H"], m["n_ssm"]
    pre = f"s4_layers.{i}."
    out = []
    if m["kind"] == "s4d":
        out.append((pre + "D", f32(rs.randn(H))))
        out.append((pre + "kernel.C", f32(as_real(crandn(rs, H, N2)))))
        out.append((pre + "kernel.log_dt", f32(log_dt(rs, H))))
        out.append((pre + "kernel.log_A_real",
                    f32(np.log(0.5) + 0.25 * rs.randn(H, N2))))
        out.append((pre + "kernel.A_imag",
                    f32(np.pi * np.arange(N2) * np.exp(0.05 * rs.randn(H, N2))
                        + 0.1 * rs.randn(H, N2))))
        W = rs.randn(2 * H, H, 1) / np.sqrt(H)
        out.append((pre + "output_linear.0.weight", f32(W)))
        out.append((pre + "output_linear.0.bias", f32(rs.randn(2 * H) / np.sqrt(H))))
        return out

    ch = 2 if m["bidirectional"] else 1
    k = pre + "layer.kernel."
    D = f32(rs.randn(1, H))
    inv_dt = f32(log_dt(rs, H)[:, None])
    A_real = f32(np.log(0.5) + 0.25 * rs.randn(S, N2))
    if m["kind"] == "dplr":
        lam0, P0, B0 = legs_nplr(m["N"])
        A_imag = f32(-lam0.imag[None, :] * np.exp(0.1 * rs.randn(S, N2)))
        B = B0[None, :] * (1 + 0.1 * crandn(rs, S, N2)) + 0.05 * crandn(rs, S, N2)
        P = np.zeros((m["rank"], S, N2), dtype=complex)
        P[0] = P0[None, :] * (1 + 0.1 * crandn(rs, S, N2)) + 0.05 * crandn(rs, S, N2)
        for r in range(1, m["rank"]):
            P[r] = 0.3 * crandn(rs, S, N2)      # zero at init, grown by training
        B_t = f32(as_real(B[None]))             # (1, S, N2, 2)
        P_t = f32(as_real(P))                   # (R, S, N2, 2)
    else:  # S4D-Lin through SSMKernelDiag
        A_imag = f32(np.pi * np.arange(N2)[None, :] * np.exp(0.05 * rs.randn(S, N2))
                     + 0.1 * np.abs(rs.randn(S, N2)))
        B_t = f32(as_real((1 + 0.2 * crandn(rs, S, N2))[None]))
        P_t = None
    C = crandn(rs, ch, H, N2)                   # the true C
    l_kernel = int(m.get("l_kernel", 0))
    if m["kind"] == "dplr" and l_kernel > 0:
        # Store C~ = C (I - Abar^l) computed from the float32 parameters, as
        # the official _setup_C does on first use.
        tmp = {k + "inv_dt": inv_dt, k + "A_real": A_real, k + "A_imag": A_imag,
               k + "B": B_t, k + "P": P_t, k + "C": f32(as_real(C)),
               k + "l_kernel": np.array(0, dtype=np.int64), pre + "layer.D": D}
        spec = ref.ModelSpec(kind="dplr", n_layers=1, d_model=H, d_state=m["N"],
                             d_input=H, d_output=H, layer_prefix="s4_layers")
        par = ref.ssm_params(tmp, spec, i)
        Ct = np.empty_like(C)
        for h in range(H):
            Abar, _ = ref.dplr_discrete(par, h)
            G = np.eye(2 * N2) - np.linalg.matrix_power(Abar, l_kernel)
            Ct[:, h, :] = (ref._double(C[:, h]) @ G)[:, :N2]
        C = Ct
    out.append((pre + "layer.D", D))
    out.append((k + "inv_dt", inv_dt))
    out.append((k + "C", f32(as_real(C))))
    out.append((k + "B", B_t))
    out.append((k + "A_real", A_real))
    out.append((k + "A_imag", A_imag))
    if m["kind"] == "dplr":
        out.append((k + "P", P_t))
        out.append((k + "l_kernel", np.array(l_kernel, dtype=np.int64)))
    out.append((pre + "output_linear.0.weight", f32(rs.randn(2 * H, H) / np.sqrt(H))))
    out.append((pre + "output_linear.0.bias", f32(rs.randn(2 * H) / np.sqrt(H))))
    return out


def make_weights(m):
    rs = np.random.RandomState(m["seed"])
    H = m["H"]
    w = [("encoder.weight", f32(rs.randn(H, m["d_input"]) / np.sqrt(m["d_input"]))),
         ("encoder.bias", f32(rs.randn(H) / np.sqrt(m["d_input"])))]
    for i in range(m["n_layers"]):
        w += make_layer(rs, m, i)
    for i in range(m["n_layers"]):
        w.append((f"norms.{i}.weight", f32(1 + 0.1 * rs.randn(H))))
        w.append((f"norms.{i}.bias", f32(0.1 * rs.randn(H))))
    w.append(("decoder.weight", f32(rs.randn(m["d_output"], H) / np.sqrt(H))))
    w.append(("decoder.bias", f32(rs.randn(m["d_output"]) / np.sqrt(H))))
    u = rs.randn(m["B"], m["L"], m["d_input"])
    return w, u


def config_of(m):
    return {
        "name": m["name"], "description": m["description"],
        "d_input": m["d_input"], "d_output": m["d_output"],
        "max_length": m["max_length"],
        "s4": {
            "n_layers": m["n_layers"], "d_model": m["H"], "d_state": m["N"],
            "kernel": "DPLR" if m["kind"] == "dplr" else "DIAGONAL",
            "discretization": "BILINEAR" if m["kind"] == "dplr" else "ZOH",
            "rank": m["rank"] if m["kind"] == "dplr" else 0,
            "activation": m["activation"].upper(),
            "output_linear": "GLU", "norm": m["norm"].upper(),
            "residual": True, "bidirectional": m["bidirectional"],
            "encoder": True, "decoder": True, "layer_norm_eps": 1e-5,
            "weight_naming": "S4_REFERENCE",
            "dt_transform": "EXP", "real_transform": "EXP", "imag_transform": "NONE",
            "dt_fast": False, "output_activation": "IDENTITY", "norm_kind": "LAYER",
            "final_norm": False,
        },
    }


def spec_of(m):
    """The reference's description of an example.py fixture model (what its
    config.pbtxt says; check_reference.py parses the file to confirm)."""
    return ref.ModelSpec(
        kind=m["kind"], n_layers=m["n_layers"], d_model=m["H"], d_state=m["N"],
        d_input=m["d_input"], d_output=m["d_output"],
        rank=m["rank"] if m["kind"] == "dplr" else 0,
        discretization="bilinear" if m["kind"] == "dplr" else "zoh",
        activation=m["activation"], output_linear="glu", norm=m["norm"],
        residual=True, bidirectional=m["bidirectional"], encoder=True, decoder=True,
        layer_norm_eps=1e-5)


def generate(out_dir, names=None):
    out_dir = Path(out_dir)
    for m in MODELS:
        if names and m["name"] not in names:
            continue
        weights, u = make_weights(m)
        cfg = config_of(m)
        wd = dict(weights)
        y = ref.model_forward(wd, spec_of(m), u)
        d = out_dir / m["name"]
        (d / "1").mkdir(parents=True, exist_ok=True)
        (d / "config.pbtxt").write_text(s4io.format_model_config(
            cfg, [f"Generated by {GENERATOR}; regenerate, do not edit",
                  "(tests/data/s4_reference/README.md)."]))
        s4io.write_safetensors(d / "1" / "weights.safetensors", weights,
                               {"format": "pt", "generator": GENERATOR})
        s4io.write_safetensors(d / "io.safetensors",
                               [("input", u), ("output", y)],
                               {"generator": GENERATOR,
                                "reference": "tools/s4ref/s4_numpy.py (float64)"})
        print(f"{m['name']}: B={m['B']} L={m['L']} d_input={m['d_input']} "
              f"d_output={m['d_output']} max|y|={np.abs(y).max():.3g}")


def generate_all(out_dir, names=None):
    generate(out_dir, names)
    import train_fixtures
    train_fixtures.generate_train(out_dir, names)


def main():
    here = Path(__file__).resolve().parent
    default_out = here.parent.parent / "tests" / "data" / "s4_reference"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(default_out), help="fixture folder (default: %(default)s)")
    ap.add_argument("--only", action="append", help="generate only this model (repeatable)")
    args = ap.parse_args()
    generate_all(args.out, args.only)


if __name__ == "__main__":
    main()
