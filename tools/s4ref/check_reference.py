#!/usr/bin/python3
"""Self-check of the S4 NumPy reference and of the shipped fixture
(tests/data/s4_reference). Run by ctest as tools_s4_reference_check:

    /usr/bin/python3 tools/s4ref/check_reference.py [--fixture DIR] [--no-regen]

For every fixture model it checks
  0. the files: config.pbtxt parses (and, when `protoc` is on PATH, encodes
     as ssm.v1.ModelConfig), names/shapes/dtypes of the weights, each file
     < 100 KB, and s4_numpy.py reproduces the stored output;
  1. kernels: the generating-function / Vandermonde path equals naive powers
     Re(C Abar^l Bbar) with C recovered from C~ (DPLR), at the model's L and
     at lengths that take the other l_kernel paths (no doubling, doubling
     once or more, l_kernel = 0), and with an FFTConv l_max below L,
     relative error <= 1e-10;
  2. the whole forward pass equals a step-by-step recurrent run
     (x = Abar x + Bbar u per step, float64; the bidirectional model's
     backward half as a recurrence over the reversed sequence), relative
     error <= 1e-9;
  3. a PyTorch float64 re-implementation along the official algorithm
     (Cauchy + Woodbury at the roots of unity, FFT convolution with the
     official bidirectional layout, torch.nn.functional pointwise ops)
     agrees, relative error <= 1e-9 (skipped with a note if torch is absent);
  4. regenerating with make_fixture.py into a temporary folder gives
     byte-identical files (an io.safetensors 'output' differing only in the
     last bits, <= 1e-12 relative, is reported and accepted: float64 libm/
     SIMD results may differ between CPUs; everything else must match
     byte for byte).
Prints one line per check and exits non-zero on any failure.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

try:
    import numpy as np
except ImportError:
    print("check_reference: needs NumPy (python3-numpy; scripts/install-deps.sh --test)")
    sys.exit(1)

import make_fixture  # noqa: E402
import train_fixtures  # noqa: E402
import s4_numpy as ref  # noqa: E402
import s4io  # noqa: E402

ROOT = HERE.parent.parent
KERNEL_TOL = 1e-10
FORWARD_TOL = 1e-9
STORED_TOL = 1e-12

failures = []


def report(ok, msg):
    print(("ok    " if ok else "FAIL  ") + msg)
    if not ok:
        failures.append(msg)


def rel(a, b):
    scale = np.max(np.abs(b))
    return float(np.max(np.abs(a - b)) / (scale if scale > 0 else 1.0))


# ---------------------------------------------------------------------------

def expected_shapes(spec, m):
    """The official state_dict shapes for a fixture model."""
    H, N2, S = spec.d_model, spec.d_state // 2, m["n_ssm"]
    sh = {"encoder.weight": (H, spec.d_input), "encoder.bias": (H,),
          "decoder.weight": (spec.d_output, H), "decoder.bias": (spec.d_output,)}
    ch = 2 if spec.bidirectional else 1
    for i in range(spec.n_layers):
        p = f"s4_layers.{i}."
        sh[f"norms.{i}.weight"] = (H,)
        sh[f"norms.{i}.bias"] = (H,)
        if spec.kind == "s4d":
            sh.update({p + "D": (H,), p + "kernel.log_dt": (H,),
                       p + "kernel.log_A_real": (H, N2), p + "kernel.A_imag": (H, N2),
                       p + "kernel.C": (H, N2, 2),
                       p + "output_linear.0.weight": (2 * H, H, 1),
                       p + "output_linear.0.bias": (2 * H,)})
            continue
        k = p + "layer.kernel."
        sh.update({p + "layer.D": (1, H), k + "inv_dt": (H, 1), k + "A_real": (S, N2),
                   k + "A_imag": (S, N2), k + "B": (1, S, N2, 2), k + "C": (ch, H, N2, 2),
                   p + "output_linear.0.weight": (2 * H, H),
                   p + "output_linear.0.bias": (2 * H,)})
        if spec.kind == "dplr":
            sh[k + "P"] = (spec.rank, S, N2, 2)
            sh[k + "l_kernel"] = ()
    return sh


def naive_kernel(par, spec, L):
    disc = "zoh" if par.kind == "s4d" else spec.discretization
    ch, H, _ = par.C.shape
    K = np.zeros((ch, H, L))
    for h in range(H):
        Abar, Bbar, Cf = ref.true_system(par, h, disc)
        v = Bbar.copy()
        for l in range(L):
            K[:, h, l] = (Cf @ v).real
            v = Abar @ v
    return K


def recurrent_ssm(spec):
    """A replacement for the convolution: runs the discretized system step
    by step (and, bidirectional, backwards for the second channel)."""
    def run(par, u):
        disc = "zoh" if par.kind == "s4d" else spec.discretization
        Bsz, L, H = u.shape
        y = np.zeros_like(u)
        for h in range(H):
            Abar, Bbar, Cf = ref.true_system(par, h, disc)
            x = np.zeros((Bsz, Abar.shape[0]), dtype=complex)
            for t in range(L):
                x = x @ Abar.T + Bbar[None, :] * u[:, t, h:h + 1]
                y[:, t, h] = (x @ Cf[0]).real
            if spec.bidirectional:
                # Before u[t] is taken in, x = sum_m Abar^m Bbar u[t+1+m].
                x = np.zeros((Bsz, Abar.shape[0]), dtype=complex)
                for t in range(L - 1, -1, -1):
                    y[:, t, h] += (x @ Cf[1]).real
                    x = x @ Abar.T + Bbar[None, :] * u[:, t, h:h + 1]
        return y + u * par.D
    return run


def check_model(fixture, m, torch_check):
    name = m["name"]
    d = fixture / name
    paths = [d / "config.pbtxt", d / "1" / "weights.safetensors", d / "io.safetensors"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        report(False, f"{name}: missing {', '.join(missing)}")
        return
    sizes = {p.name: p.stat().st_size for p in paths}
    report(all(s < 100_000 for s in sizes.values()), f"{name}: file sizes {sizes} (< 100 KB)")

    # protobuf's own text_format with the generated ModelConfig: the
    # file parses as the server parses it (unknown fields are errors).
    cfg = s4io.parse_model_config(paths[0].read_text())
    report(cfg.get("name") == name and cfg["s4"].get("weight_naming") == "WEIGHT_NAMING_S4_REFERENCE",
           f"{name}: config.pbtxt parses as ssm.v1.ModelConfig (protobuf text_format); "
           "name and weight_naming")

    weights, meta = s4io.read_safetensors(paths[1])
    io, _ = s4io.read_safetensors(paths[2])
    spec = ref.spec_from_config(cfg, weights)
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    want = expected_shapes(spec, m)
    dtypes_ok = all(v.dtype == (np.int64 if k.endswith("l_kernel") else np.float32)
                    for k, v in weights.items())
    report(shapes == want and dtypes_ok,
           f"{name}: {len(weights)} tensors with the official names, shapes and dtypes"
           + ("" if shapes == want else f" (got {sorted(set(shapes.items()) ^ set(want.items()))})"))
    u, y_stored = io["input"], io["output"]
    report(u.dtype == np.float64 and y_stored.dtype == np.float64
           and u.shape == (m["B"], m["L"], spec.d_input)
           and y_stored.shape == (m["B"], m["L"], spec.d_output),
           f"{name}: io input {u.shape} output {y_stored.shape} F64")

    want_spec = make_fixture.spec_of(m)
    report(spec == want_spec, f"{name}: the config says what the reference computed"
           + ("" if spec == want_spec else f" ({spec} vs {want_spec})"))
    y = ref.model_forward(weights, spec, u)
    report(rel(y, y_stored) <= STORED_TOL,
           f"{name}: s4_numpy reproduces the stored output (rel {rel(y, y_stored):.1e})")
    check_kernels_and_recurrence(name, weights, spec, u, y_stored, m["L"])

    # 3. torch
    if torch_check is not None:
        y_t = torch_check.forward(weights, spec, u)
        e = rel(y_t, y_stored)
        report(e <= FORWARD_TOL, f"{name}: forward vs torch float64 (Cauchy/Woodbury, FFT conv): rel {e:.1e}")


def dss_kernel_direct(par, L):
    """The DSS kernel term by term (scalar loops, no broadcasting), from the
    formula: a = dt Lambda; modes with Re Lambda > 0 run from the end."""
    ch, H, N2 = par.C.shape
    K = np.zeros((ch, H, L))
    for c in range(ch):
        for h in range(H):
            for n in range(N2):
                lam = par.lam[h, n]
                a = par.dt[h, 0] * lam
                pos = lam.real > 0
                an = -a if pos else a
                x = (np.exp(an * L) - 1) * lam
                inv = np.conj(x) / (abs(x) ** 2 + 1e-7)
                coef = par.B[h, n] * par.C[c, h, n] * (np.exp(an) - 1) * inv
                for t in range(L):
                    K[c, h, t] += (coef * np.exp(a * (t - (L - 1 if pos else 0)))).real
    return K


def check_kernels_and_recurrence(name, weights, spec, u, y_stored, L):
    """1. kernels against naive powers (DSS: against the term-by-term
    formula); 2. the forward pass against a recurrent run (not for DSS,
    whose kernel is no recurrence's)."""
    if spec.discretization == "dss":
        worst = 0.0
        for i in range(spec.n_layers):
            par = ref.ssm_params(weights, spec, i)
            for Lt in (1, 2, L, 2 * L + 3):
                K1 = ref.layer_kernel(par, spec, Lt)
                K2 = dss_kernel_direct(par, Lt)
                scale = np.max(np.abs(K2), axis=-1, keepdims=True)
                worst = max(worst, float(np.max(np.abs(K1 - K2) / scale)))
        report(worst <= KERNEL_TOL, f"{name}: DSS kernels vs the term-by-term formula at "
               f"L in {[1, 2, L, 2 * L + 3]}: max rel {worst:.1e}")
        return
    # 1. kernels

    worst = 0.0
    lengths = {L, 1}
    lk_values = set()
    for i in range(spec.n_layers):
        par = ref.ssm_params(weights, spec, i)
        if par.kind == "dplr" and par.l_kernel > 0:
            lk = par.l_kernel
            lengths |= {lk, lk + 1, 3 * lk + 5}
        lk_values.add(par.l_kernel)
        for Lt in sorted(lengths):
            K2 = naive_kernel(par, spec, Lt)
            scale = np.max(np.abs(K2), axis=-1, keepdims=True)
            K1 = ref.layer_kernel(par, spec, Lt)
            worst = max(worst, float(np.max(np.abs(K1 - K2) / scale)))
            if par.kind != "s4d" and Lt > 2:
                # FFTConv l_max < L: the first l_max taps only (for DPLR with
                # l_kernel = 0, C~ is then formed for l_max).
                lmax_spec = ref.ModelSpec(**{**spec.__dict__, "l_max": Lt // 2 + 1})
                K1 = ref.layer_kernel(par, lmax_spec, Lt)
                Kt = K2[..., :Lt // 2 + 1]
                worst = max(worst, float(np.max(np.abs(K1 - Kt) / scale)))
    how = {"dplr": "generating function", "diag": "Vandermonde", "s4d": "Vandermonde"}[spec.kind]
    report(worst <= KERNEL_TOL,
           f"{name}: kernels, {how} vs naive powers at L in {sorted(lengths)}"
           f"{'' if spec.kind == 's4d' else ' and with l_max = L//2+1'}"
           f"{' (l_kernel ' + str(sorted(lk_values)) + ')' if spec.kind == 'dplr' else ''}: "
           f"max rel {worst:.1e}")

    # 2. recurrent run
    y_rec = ref.model_forward(weights, spec, u, ssm=recurrent_ssm(spec))
    e = rel(y_rec, y_stored)
    report(e <= FORWARD_TOL, f"{name}: forward vs recurrent run"
           f"{' (forward + backward recurrences)' if spec.bidirectional else ''}: rel {e:.1e}")


def check_train_model(fixture, m):
    """A training-script fixture: train.ckpt's own tensors and
    hyper-parameters give the stored output (the reference's training
    path); the converter's config and weights give it too (the reference's
    example.py path on them, then kernels and a recurrent run)."""
    import torch
    name = m["name"]
    d = fixture / name
    paths = [d / "train.ckpt", d / "config.pbtxt", d / "1" / "weights.safetensors",
             d / "io.safetensors"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        report(False, f"{name}: missing {', '.join(missing)}")
        return
    sizes = {p.name: p.stat().st_size for p in paths}
    report(all(s < 100_000 for s in sizes.values()), f"{name}: file sizes {sizes} (< 100 KB)")
    ckpt = torch.load(paths[0], map_location="cpu")
    sd = {k: v.numpy() for k, v in ckpt["state_dict"].items()}
    hp = ckpt["hyper_parameters"]
    report(any(k.startswith("model.layers.0.layer.") for k in sd) and "model" in hp,
           f"{name}: train.ckpt has the training script's names ({len(sd)} tensors) and "
           "hyper-parameters")
    io, _ = s4io.read_safetensors(paths[3])
    u, y_stored = io["input"], io["output"]
    u_model = io["tokens"] if "tokens" in io else u
    y = ref.training_forward(sd, hp, u_model)
    report(rel(y, y_stored) <= STORED_TOL,
           f"{name}: s4_numpy's training-script path reproduces the stored output "
           f"(rel {rel(y, y_stored):.1e})")

    cfg = s4io.parse_model_config(paths[1].read_text())
    weights, _ = s4io.read_safetensors(paths[2])
    spec = ref.spec_from_config(cfg, weights)
    report(cfg.get("name") == name, f"{name}: config.pbtxt parses as ssm.v1.ModelConfig "
           "(protobuf text_format)")
    y_conv = ref.model_forward(weights, spec, u)
    e = rel(y_conv, y_stored)
    report(e <= STORED_TOL, f"{name}: the converted model (config.pbtxt + weights, the "
           f"reference's example.py path) gives the same output: rel {e:.1e}")
    check_kernels_and_recurrence(name, weights, spec, u, y_stored, m["L"])

    # The served outputs are per step; a pooling decoder's output is their
    # mean over the steps (the decoder is affine).
    dec = hp.get("decoder")
    if isinstance(dec, dict) and dec.get("mode") == "pool":
        x = ref.training_forward(sd, {**hp, "decoder": None}, u_model)
        pre = "decoder.0.output_transform."
        official = ref.linear(x.mean(axis=1), sd[pre + "weight"], sd[pre + "bias"])
        e = rel(y_stored.mean(axis=1), official)
        report(e <= STORED_TOL, f"{name}: the pooled decoder's output is the mean of the "
               f"per-step outputs: rel {e:.1e}")


def check_regeneration(fixture):
    tmp = Path(tempfile.mkdtemp(prefix="s4ref-"))
    try:
        r = subprocess.run([sys.executable, "-B", str(HERE / "make_fixture.py"), "--out", str(tmp)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            report(False, f"make_fixture.py failed: {r.stderr.strip()}")
            return
        fresh = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
        shipped = sorted(p.relative_to(fixture) for p in fixture.rglob("*")
                         if p.is_file() and p.name != "README.md")
        report(fresh == shipped, f"regeneration: the same {len(fresh)} files"
               + ("" if fresh == shipped else f" (differ: {sorted(set(fresh) ^ set(shipped))})"))
        identical = bad = 0
        for rp in fresh:
            a = (tmp / rp).read_bytes()
            b = (fixture / rp).read_bytes() if (fixture / rp).exists() else b""
            if a == b:
                identical += 1
                continue
            if rp.name == "io.safetensors" and b:
                ta, ma, na = s4io.parse_safetensors(a)
                tb, mb, nb = s4io.parse_safetensors(b)
                if (na == nb and ma == mb and ta["input"].tobytes() == tb["input"].tobytes()
                        and ta["output"].shape == tb["output"].shape
                        and rel(ta["output"], tb["output"]) <= STORED_TOL):
                    print(f"note  regeneration: {rp}: output equal to "
                          f"{rel(ta['output'], tb['output']):.1e} but not bit for bit "
                          "(floating-point differences between machines)")
                    continue
            bad += 1
            report(False, f"regeneration: {rp} differs from make_fixture.py's output; "
                          "regenerate (see README.md) or fix the generator")
        if not bad:
            report(True, f"regeneration: make_fixture.py reproduces the shipped files "
                         f"({identical}/{len(fresh)} byte-identical)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description="Self-check of the S4 NumPy reference and fixture")
    ap.add_argument("--fixture", default=str(ROOT / "tests" / "data" / "s4_reference"))
    ap.add_argument("--no-regen", action="store_true", help="skip the regeneration check")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch cross-check")
    args = ap.parse_args()
    fixture = Path(args.fixture)

    torch_check = None
    if not args.no_torch:
        try:
            import torch_check as tc
            torch_check = tc
        except ImportError as e:
            print(f"note  torch cross-check skipped ({e})")

    for m in make_fixture.MODELS:
        try:
            check_model(fixture, m, torch_check)
        except Exception as e:  # noqa: BLE001 - a broken file is a failed check
            report(False, f"{m['name']}: {type(e).__name__}: {e}")
    for m in train_fixtures.TRAIN_MODELS:
        try:
            check_train_model(fixture, m)
        except Exception as e:  # noqa: BLE001 - a broken file is a failed check
            report(False, f"{m['name']}: {type(e).__name__}: {e}")
    if not args.no_regen:
        check_regeneration(fixture)

    if failures:
        print(f"\n{len(failures)} check(s) FAILED")
        sys.exit(1)
    print("\nall S4 reference checks passed")


if __name__ == "__main__":
    main()
