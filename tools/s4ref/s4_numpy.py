"""An independent NumPy (float64) reference of the forward pass of S4 models
trained with the official PyTorch S4 code (state-spaces/s4: models/s4/s4.py,
models/s4/s4d.py, example.py), written for ssmserve's fixtures.

It is sequence-to-sequence: example.py's S4Model without the mean pooling,
i.e. the decoder is applied at every time step:

    x = encoder(u)                          Linear d_input -> H   (B, L, H)
    for i in range(n_layers):
        z = norms[i](x) if prenorm else x   LayerNorm over H, eps 1e-5
        z = s4_layers[i](z)                 one block, below
        x = z + x                           residual (dropout is off at eval)
        x = norms[i](x) if postnorm         LayerNorm over H
    y = decoder(x)                          Linear H -> d_output  (B, L, d_output)

All arithmetic is float64 (complex128), starting from the float32 weights.
Clarity over speed: dense solves, direct convolutions.

Conventions read off the official code (restated in our own words)
==================================================================
Tensor names inside a block (prefix `s4_layers.<i>.`). N2 = d_state / 2 is
the number of complex modes kept (one of each conjugate pair); S = n_ssm
(number of independently trained (A, B) copies, dividing H; n_ssm=None in the
constructor means S = H); R = rank; ch = kernel channels (1, or 2 when
bidirectional). Complex tensors are real views with a trailing dim of 2
(torch.view_as_real: [..., 0] real, [..., 1] imaginary).

(a)/(b) S4Block(FFTConv(kernel=SSMKernelDPLR | SSMKernelDiag)):
  layer.kernel.inv_dt  (H, 1)      float; dt = exp(inv_dt) (the standalone
                                   code's default dt_transform is 'exp', so
                                   inv_dt is log dt; dt_tie=True gives one dt
                                   per channel; dt_tie=False would give
                                   (H, N2) -- supported here for the diagonal
                                   kernel only)
  layer.kernel.A_real  (S, N2)     Re Lambda = -exp(A_real)
  layer.kernel.A_imag  (S, N2)     Im Lambda = -A_imag (imag_transform
                                   'none'): Lambda = -exp(A_real) - i*A_imag
  layer.kernel.B       (1, S, N2, 2)
  layer.kernel.C       (ch, H, N2, 2)  C, or C~ when l_kernel > 0 (DPLR)
  layer.kernel.P       (R, S, N2, 2)   DPLR only; Q = conj(P)
  layer.kernel.l_kernel  int64 scalar, shape ()   DPLR only (a buffer)
  layer.D              (1, H)      skip term (channels before the
                                   bidirectional doubling, so always 1 here)
  output_linear.0.weight (2H, H), output_linear.0.bias (2H): nn.Linear then
                                   GLU over the feature dim (final_act 'glu')
  The S copies are tiled over the H channels as '(v t)': channel h uses
  copy h % S of A_real, A_imag, B, P. C, inv_dt and D are per channel.

  State matrix (DPLR): on the conjugate-doubled state of size M = 2*N2,
      A = diag([Lambda, conj Lambda]) - Pf Pf^H,  Pf = [P, conj P] (per rank
      row, summed over the R rows), Bf = [B, conj B], Cf = [C, conj C].
  The DPLR kernel discretizes bilinearly (its stepping code gives exactly
      Abar = (I - dt/2 A)^-1 (I + dt/2 A),  Bbar = (I - dt/2 A)^-1 dt Bf),
  and the output is y_k = Re(Cf . x_k) with x_k = Abar x_{k-1} + Bbar u_k
  (Cf contracted without conjugation). On the doubled state no factor 2 is
  needed; for a diagonal A the same quantity is 2 Re(sum over the N2 kept
  modes) -- that is where the kernels' factor 2 and real part come from.
  K[l] = Re(Cf Abar^l Bbar), l = 0, 1, ... (K[0] multiplies the current
  input: the state includes u_k before the output is read).

  C~ and l_kernel (DPLR): the stored C is C~ = C (I - Abar^l_kernel)
  (row-vector convention; in code (I - Abar^l)^T applied to C) whenever
  l_kernel > 0. The kernel is computed by evaluating the generating function
  at the l-th roots of unity w_j = exp(-2 pi i j / l):
      Khat_j = C~ (I - w_j Abar)^-1 Bbar  (the truncated transfer function,
      exact because w_j^l = 1), then K = inverse DFT of Khat (the official
      code uses irfft on the half spectrum, j = 0..l/2; same thing).
  l_kernel = 0 means C holds plain C: on first use C~ is formed for the
  length asked for (FFTConv's l_max if set, else the sequence length) and
  l_kernel becomes that length. When a longer kernel is needed than
  l_kernel (L > l_kernel), the official code doubles: C~ <- C~ (I + Abar^l),
  l <- 2l (since (I - A^l)(I + A^l) = I - A^{2l}), repeated until l >= L;
  then it computes the length-l kernel and truncates it to the first L taps.
  All of these equal the first L taps of the true kernel C Abar^l Bbar.
  (Official evaluation is Cauchy sums at z = 2(1-w)/(1+w) on dt*Lambda with
  a Woodbury correction for P, times 2/(1+w); we use the dense solve, which
  is the same rational function.)

  SSMKernelDiag (S4D) with disc='zoh' (its default):
      dtA = dt * Lambda;  C' = C * B * (exp(dtA) - 1) / Lambda
      K[l] = 2 Re sum_n C'_n exp(dtA_n l)                  (Vandermonde)
  disc='bilinear': C' = C * B * dt / (1 - dtA/2),
      K[l] = 2 Re sum_n C'_n ((1 + dtA/2) / (1 - dtA/2))^l.
  (The diagonal kernel has no l_kernel: its C is plain C.)

  FFTConv: the kernel length used is Lk = min(L, l_max) if l_max is set,
  else L (a model built with l_max truncates its kernel to l_max taps for
  longer inputs; ssmserve's S4_REFERENCE semantics correspond to l_max=None,
  or to L <= l_max). y = causal_conv(K, u) + D * u, then the activation
  (GELU, nn.GELU's exact erf form x/2 (1 + erf(x/sqrt 2)), or identity),
  then output_linear. The D term is added before the activation.

  Bidirectional (C has 2 channels): channel 0 is a causal kernel k0,
  channel 1 a kernel k1 applied backwards in time, with an off-by-one the
  official code keeps deliberately: it builds pad(k0, right L) +
  pad(flip(k1), left L) and convolves circularly over Lk + L points, which
  works out to
      y[t] = sum_{s<=t} k0[s] u[t-s] + sum_{m>=0} k1[m] u[t+1+m]
  i.e. k1[0] multiplies the NEXT input, never the current one. The two
  channels share A, B, P, dt, l_kernel; each has its own C~. D is (1, H).

(c) minimal models/s4/s4d.py S4D block (prefix `s4_layers.<i>.`):
  kernel.log_dt      (H,)          dt = exp(log_dt)
  kernel.log_A_real  (H, N2)       Re Lambda = -exp(log_A_real)
  kernel.A_imag      (H, N2)       Im Lambda = +A_imag  (NOTE the + sign,
                                   opposite to SSMKernelDiag's A_imag)
  kernel.C           (H, N2, 2)    no B (B = 1)
  D                  (H,)
  output_linear.0.weight (2H, H, 1), .bias (2H): Conv1d(kernel_size=1) then
                                   GLU over the channel dim
  K[l] = 2 Re sum_n C_n (exp(dt Lambda_n) - 1)/Lambda_n exp(dt Lambda_n l)
  y = causal conv (FFT of size 2L, no truncation) + D*u, GELU always, then
  the output transform.

GLU(y) = y[..., :H] * sigmoid(y[..., H:]) (first half is the value, second
half the gate). LayerNorm: (x - mean) / sqrt(biased var + eps) * w + b over
the H features, eps = 1e-5 (nn.LayerNorm default), per time step.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


# ---------------------------------------------------------------------------
# Model description
# ---------------------------------------------------------------------------

@dataclass
class ModelSpec:
    kind: str                 # 'dplr' | 'diag' | 's4d' (minimal s4d.py block)
    n_layers: int
    d_model: int              # H
    d_state: int              # N (N/2 complex modes stored)
    d_input: int
    d_output: int
    rank: int = 1             # DPLR only
    discretization: str = "bilinear"   # DPLR: bilinear; diag: zoh|bilinear; s4d: zoh
    activation: str = "gelu"           # 'gelu' | 'identity'
    output_linear: str = "glu"         # 'glu' | 'linear' | 'none'
    norm: str = "post"                 # 'pre' | 'post' | 'none'
    residual: bool = True
    bidirectional: bool = False
    encoder: bool = True
    decoder: bool = True
    layer_norm_eps: float = 1e-5
    l_max: Optional[int] = None        # FFTConv l_max (kernel truncation)
    layer_prefix: str = "s4_layers"
    # The kernel's parameterization (S4Block kernels; see param_transform).
    dt_transform: str = "exp"
    real_transform: str = "exp"
    imag_transform: str = "none"
    dt_fast: bool = False
    output_activation: str = "identity"   # after output_linear 'linear'
    norm_kind: str = "layer"              # 'layer' | 'batch'
    final_norm: bool = False


_ENUMS = {
    "activation": {"ACTIVATION_UNSPECIFIED": "gelu", "ACTIVATION_GELU": "gelu",
                   "ACTIVATION_IDENTITY": "identity", "ACTIVATION_TANH": "tanh",
                   "ACTIVATION_RELU": "relu", "ACTIVATION_SILU": "silu",
                   "ACTIVATION_SIGMOID": "sigmoid", "ACTIVATION_ELU": "elu",
                   "ACTIVATION_SOFTPLUS": "softplus"},
    "output_linear": {"OUTPUT_LINEAR_UNSPECIFIED": "glu", "OUTPUT_LINEAR_GLU": "glu",
                      "OUTPUT_LINEAR_LINEAR": "linear", "OUTPUT_LINEAR_NONE": "none"},
    "norm": {"NORM_PLACEMENT_UNSPECIFIED": "post", "NORM_PLACEMENT_NONE": "none",
             "NORM_PLACEMENT_PRE": "pre", "NORM_PLACEMENT_POST": "post"},
    "norm_kind": {"NORM_KIND_UNSPECIFIED": "layer", "NORM_KIND_LAYER": "layer",
                  "NORM_KIND_BATCH": "batch"},
    "transform": {"PARAM_TRANSFORM_NONE": "none", "PARAM_TRANSFORM_EXP": "exp",
                  "PARAM_TRANSFORM_RELU": "relu", "PARAM_TRANSFORM_SIGMOID": "sigmoid",
                  "PARAM_TRANSFORM_SOFTPLUS": "softplus"},
}


def spec_from_config(cfg, weights):
    """cfg: a ModelConfig as s4io.parse_model_config gives it (protobuf's
    json_format.MessageToDict: enum names as strings), read by the proto's
    documented defaults (UNSPECIFIED values, unset optional fields). The
    minimal s4d.py block and SSMKernelDiag share KERNEL_KIND_DIAGONAL; they
    are told apart by their tensor names, as an importer must."""
    s4 = cfg["s4"]
    kernel = s4.get("kernel", "KERNEL_KIND_UNSPECIFIED")
    if kernel == "KERNEL_KIND_DPLR":
        kind = "dplr"
    elif kernel == "KERNEL_KIND_DIAGONAL":
        kind = "s4d" if "s4_layers.0.kernel.log_dt" in weights else "diag"
    else:
        raise ValueError(f"unsupported kernel kind {kernel}")
    disc = s4.get("discretization", "DISCRETIZATION_KIND_UNSPECIFIED")
    if disc == "DISCRETIZATION_KIND_UNSPECIFIED":
        disc = "bilinear" if kind == "dplr" else "zoh"
    else:
        disc = {"DISCRETIZATION_KIND_BILINEAR": "bilinear", "DISCRETIZATION_KIND_ZOH": "zoh",
                "DISCRETIZATION_KIND_DSS": "dss"}[disc]
    eps = float(s4.get("layer_norm_eps", 0.0)) or 1e-5
    tr = _ENUMS["transform"]
    out_act = s4.get("output_activation", "ACTIVATION_UNSPECIFIED")
    return ModelSpec(
        kind=kind, n_layers=int(s4.get("n_layers", 0)), d_model=int(s4.get("d_model", 0)),
        d_state=int(s4.get("d_state", 0)), d_input=int(cfg.get("d_input", 0)),
        d_output=int(cfg.get("d_output", 0)), rank=int(s4.get("rank", 0)),
        discretization=disc,
        activation=_ENUMS["activation"][s4.get("activation", "ACTIVATION_UNSPECIFIED")],
        output_linear=_ENUMS["output_linear"][s4.get("output_linear", "OUTPUT_LINEAR_UNSPECIFIED")],
        output_activation="identity" if out_act == "ACTIVATION_UNSPECIFIED"
        else _ENUMS["activation"][out_act],
        norm=_ENUMS["norm"][s4.get("norm", "NORM_PLACEMENT_UNSPECIFIED")],
        norm_kind=_ENUMS["norm_kind"][s4.get("norm_kind", "NORM_KIND_UNSPECIFIED")],
        final_norm=bool(s4.get("final_norm", False)),
        residual=bool(s4.get("residual", True)),       # proto: unset means true
        bidirectional=bool(s4.get("bidirectional", False)),
        encoder=bool(s4.get("encoder", True)), decoder=bool(s4.get("decoder", True)),
        layer_norm_eps=eps,
        dt_transform=tr.get(s4.get("dt_transform"), "exp"),
        real_transform=tr.get(s4.get("real_transform"), "exp"),
        imag_transform=tr.get(s4.get("imag_transform"), "none"),
        dt_fast=bool(s4.get("dt_fast", False)))


# ---------------------------------------------------------------------------
# Parameters of one SSM layer, in float64
# ---------------------------------------------------------------------------

def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _cplx(a):
    """Real view with trailing dim 2 -> complex128."""
    a = _f64(a)
    assert a.shape[-1] == 2, a.shape
    return a[..., 0] + 1j * a[..., 1]


@dataclass
class SSMParams:
    kind: str                       # 'dplr' | 'diag' | 's4d'
    dt: np.ndarray                  # (H, 1) or (H, N2), float64
    lam: np.ndarray                 # (H, N2) complex Lambda, tiled to H
    B: np.ndarray                   # (H, N2) complex (ones for s4d)
    C: np.ndarray                   # (ch, H, N2) complex: C~ if l_kernel > 0
    P: Optional[np.ndarray] = None  # (R, H, N2) complex, DPLR only
    l_kernel: int = 0
    D: np.ndarray = field(default=None)   # (H,)


def ssm_params(weights, spec, i):
    """Reads layer i's SSM tensors (float32 on disk) into float64 values."""
    H = spec.d_model
    pre = f"{spec.layer_prefix}.{i}."
    if spec.kind == "s4d":
        k = pre + "kernel."
        dt = np.exp(_f64(weights[k + "log_dt"]))[:, None]                 # (H, 1)
        lam = -np.exp(_f64(weights[k + "log_A_real"])) + 1j * _f64(weights[k + "A_imag"])
        C = _cplx(weights[k + "C"])[None]                                 # (1, H, N2)
        return SSMParams("s4d", dt, lam, np.ones_like(lam), C, D=_f64(weights[pre + "D"]))
    return fftconv_params(weights, pre + "layer.", spec.kind, H, spec)


def fftconv_params(weights, fft, kind, H, opts):
    """The SSM of an FFTConv module whose names start with `fft` (its
    kernel under `fft + 'kernel.'`, its D at `fft + 'D'`), kind 'dplr' or
    'diag', with the parameterization `opts` (dt_transform, real_transform,
    imag_transform, dt_fast). The official _get_params:
        dt = T_dt(sinh(inv_dt) if dt_fast else inv_dt)
        Lambda = -T_re(A_real) - 1j * T_im(A_imag)"""
    k = fft + "kernel."
    inv_dt = _f64(weights[k + "inv_dt"])
    if opts.dt_fast:
        inv_dt = np.sinh(inv_dt)
    dt = param_transform(inv_dt, opts.dt_transform)                       # (H, 1)
    lam_s = (-param_transform(_f64(weights[k + "A_real"]), opts.real_transform)
             - 1j * param_transform(_f64(weights[k + "A_imag"]), opts.imag_transform))
    S = lam_s.shape[0]
    if H % S:
        raise ValueError(f"{k}: n_ssm={S} does not divide H={H}")
    tile = np.arange(H) % S                        # '(v t)': channel h -> copy h % S
    B = _cplx(weights[k + "B"])[0][tile]                                  # (H, N2)
    C = _cplx(weights[k + "C"])                                           # (ch, H, N2)
    D = _f64(weights[fft + "D"])
    if D.shape[0] != 1:
        raise ValueError("only one output channel (D of shape (1, H)) is supported")
    par = SSMParams(kind, dt, lam_s[tile], B, C, D=D[0])
    if kind == "dplr":
        par.P = _cplx(weights[k + "P"])[:, tile]                          # (R, H, N2)
        par.l_kernel = int(np.asarray(weights[k + "l_kernel"]).reshape(()))
    return par


def softplus(x):
    """torch.nn.functional.softplus (beta 1, threshold 20): x above 20."""
    x = np.asarray(x, dtype=np.float64)
    out = x.copy()
    small = x <= 20
    out[small] = np.log1p(np.exp(x[small]))
    return out


def param_transform(x, transform):
    """The official kernels' param_transform (ssm.py); 'tanh' and anything
    else raise there (NotImplementedError), so they do here."""
    x = _f64(x)
    if transform == "none":
        return x
    if transform == "exp":
        return np.exp(x)
    if transform == "relu":
        return np.maximum(x, 0.0) + 1e-4
    if transform == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if transform == "softplus":
        return softplus(x)
    raise NotImplementedError(f"param_transform {transform!r}")


# ---------------------------------------------------------------------------
# Dense (conjugate-doubled) systems
# ---------------------------------------------------------------------------

def _double(v):
    """[v, conj v] along the last axis: the full state of a real system."""
    return np.concatenate([v, np.conj(v)], axis=-1)


def dplr_dense_A(lam, P):
    """lam (N2,), P (R, N2) -> A = diag([lam, conj lam]) - Pf Pf^H, (M, M)."""
    Pf = _double(P)                                # (R, M)
    return np.diag(_double(lam)) - Pf.T @ np.conj(Pf)


def bilinear(A, B, dt):
    M = A.shape[0]
    I = np.eye(M)
    left = I - (dt / 2.0) * A
    return np.linalg.solve(left, I + (dt / 2.0) * A), np.linalg.solve(left, dt * B)


def dplr_discrete(par, h):
    """(Abar, Bbar) of channel h of a DPLR layer on the doubled state."""
    if par.dt.shape[1] != 1:
        raise ValueError("DPLR with untied dt (inv_dt of shape (H, N2)) is not supported")
    A = dplr_dense_A(par.lam[h], par.P[:, h])
    return bilinear(A, _double(par.B[h]), par.dt[h, 0])


def diag_discrete(par, h, disc):
    """Diagonal (Abar, Bbar) of channel h on the N2 kept modes."""
    dt = par.dt[h]
    dtA = dt * par.lam[h]
    if disc == "zoh":
        return np.exp(dtA), par.B[h] * (np.exp(dtA) - 1.0) / par.lam[h]
    if disc == "bilinear":
        return (1 + dtA / 2) / (1 - dtA / 2), par.B[h] * dt / (1 - dtA / 2)
    raise ValueError(disc)


def true_system(par, h, disc):
    """(Abar, Bbar, Cf) of channel h as a dense system on the doubled state,
    with the TRUE C (recovered from C~ for DPLR): y_k = Re(Cf[c] . x_k),
    x_k = Abar x_{k-1} + Bbar u_k. Used by the self-checks."""
    if par.kind == "dplr":
        Abar, Bbar = dplr_discrete(par, h)
        Cf = _double(par.C[:, h])                  # (ch, M)
        if par.l_kernel > 0:
            M = Abar.shape[0]
            # C~ = C (I - Abar^l)  =>  C = C~ (I - Abar^l)^-1 (row vectors)
            G = np.eye(M) - np.linalg.matrix_power(Abar, par.l_kernel)
            Cf = np.linalg.solve(G.T, Cf.T).T
        return Abar, Bbar, Cf
    dA, dB = diag_discrete(par, h, disc)
    return np.diag(_double(dA)), _double(dB), _double(par.C[:, h])


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------

def dplr_kernel(par, L, l_max=None):
    """(ch, H, Lk) kernel of a DPLR layer, Lk = min(L, l_max) or L, by the
    official semantics: C~ for length l_kernel (formed from C if l_kernel is
    0), doubled until long enough, truncated generating function at the
    roots of unity, inverse DFT, truncation."""
    Lk = L if l_max is None else min(L, l_max)
    ch, H, _ = par.C.shape
    K = np.zeros((ch, H, Lk))
    for h in range(H):
        Abar, Bbar = dplr_discrete(par, h)
        M = Abar.shape[0]
        I = np.eye(M)
        Ct = _double(par.C[:, h])                  # (ch, M) conjugate-doubled C~
        l = par.l_kernel
        if l == 0:
            # C holds plain C: form C~ for l_max (if the module has one) or
            # for the requested length.
            l = l_max if l_max else Lk
            Ct = Ct @ (I - np.linalg.matrix_power(Abar, l))
        while Lk > l:
            Ct = Ct @ (I + np.linalg.matrix_power(Abar, l))   # C(I-A^l) -> C(I-A^2l)
            l *= 2
        w = np.exp(-2j * np.pi * np.arange(l) / l)
        Khat = np.empty((ch, l), dtype=complex)
        for j in range(l):
            Khat[:, j] = Ct @ np.linalg.solve(I - w[j] * Abar, Bbar)
        k = np.fft.ifft(Khat, axis=-1)             # K_l = (1/l) sum_j Khat_j w_j^-l
        K[:, h, :] = k.real[:, :Lk]
    return K


def diag_kernel(par, L, disc, l_max=None):
    """(ch, H, Lk) kernel of a diagonal layer (SSMKernelDiag or minimal S4D)
    by the Vandermonde product: K[l] = 2 Re sum_n C'_n dA_n^l."""
    Lk = L if l_max is None else min(L, l_max)
    dtA = par.dt * par.lam                         # (H, N2)
    if disc == "dss":
        return dss_kernel(par, Lk)
    if disc == "zoh":
        Cp = par.C * par.B * (np.exp(dtA) - 1.0) / par.lam
        logdA = dtA
    elif disc == "bilinear":
        Cp = par.C * par.B * par.dt / (1.0 - dtA / 2)
        logdA = np.log((1.0 + dtA / 2) / (1.0 - dtA / 2))
    else:
        raise ValueError(disc)
    V = np.exp(logdA[..., None] * np.arange(Lk))   # (H, N2, Lk)
    return 2.0 * np.einsum("chn,hnl->chl", Cp, V).real


def dss_kernel(par, L):
    """SSMKernelDiag with disc='dss', for a kernel of L taps (the official
    code's formula, restated): with a = dt Lambda, modes with Re Lambda > 0
    are evaluated from the end (a -> -a, exponent shifted by L - 1) so
    nothing overflows, and 1 / x is regularized as conj(x) / (|x|^2 + 1e-7).
    No factor 2 here: the real part of the plain sum."""
    dtA = par.dt * par.lam                         # (H, N2)
    pos = par.lam.real > 0
    P = dtA[..., None] * np.arange(L)              # (H, N2, L)
    P = P - (dtA * (pos * (L - 1)))[..., None]
    S = np.exp(P)
    dtA_neg = dtA * (1 - 2 * pos)
    num = np.exp(dtA_neg) - 1
    den = np.exp(dtA_neg * L) - 1
    x = den * par.lam
    r = np.conj(x) / (x * np.conj(x) + 1e-7)
    Cp = par.B * par.C * num * r                   # (ch, H, N2)
    return np.einsum("chn,hnl->chl", Cp, S).real


def layer_kernel(par, spec, L):
    if par.kind == "dplr":
        return dplr_kernel(par, L, spec.l_max)
    disc = "zoh" if par.kind == "s4d" else spec.discretization
    return diag_kernel(par, L, disc, None if par.kind == "s4d" else spec.l_max)


# ---------------------------------------------------------------------------
# Pointwise pieces
# ---------------------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def glu(y):
    H = y.shape[-1] // 2
    return y[..., :H] * sigmoid(y[..., H:])


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * _f64(w) + _f64(b)


def batch_norm_eval(x, w, b, mean, var, eps):
    """BatchNorm1d in evaluation mode: the running statistics per feature."""
    return (x - _f64(mean)) / np.sqrt(_f64(var) + eps) * _f64(w) + _f64(b)


def norm_at(weights, prefix, kind, eps):
    """A norm whose tensors are `prefix` + weight, bias (+ running_mean,
    running_var for BatchNorm)."""
    if kind == "layer":
        return lambda v: layer_norm(v, weights[prefix + "weight"], weights[prefix + "bias"], eps)
    if kind == "batch":
        return lambda v: batch_norm_eval(v, weights[prefix + "weight"], weights[prefix + "bias"],
                                         weights[prefix + "running_mean"],
                                         weights[prefix + "running_var"], eps)
    raise ValueError(kind)


def linear(x, w, b):
    return x @ _f64(w).T + _f64(b)


# ---------------------------------------------------------------------------
# Convolutions
# ---------------------------------------------------------------------------

def causal_conv(k, u):
    """k (H, Lk), u (B, L, H) -> y[b, t, h] = sum_{s<=t} k[h, s] u[b, t-s, h]."""
    Bsz, L, H = u.shape
    y = np.zeros_like(u)
    for b in range(Bsz):
        for h in range(H):
            y[b, :, h] = np.convolve(u[b, :, h], k[h])[:L]
    return y


def anticausal_conv(k, u):
    """The official bidirectional half: y[t] = sum_{m>=0} k[m] u[t+1+m]."""
    L = u.shape[1]
    yr = causal_conv(k, u[:, ::-1, :])             # yr[s] = sum_m k[m] u[L-1-s+m]
    y = np.zeros_like(u)
    y[:, :L - 1, :] = yr[:, L - 2::-1, :]          # t = L-2-s
    return y


# ---------------------------------------------------------------------------
# Blocks and the model
# ---------------------------------------------------------------------------

def activation_fn(name):
    """The official Activation(name) (src/models/nn/activation.py), for the
    pointwise ones; torch.nn's definitions (ELU alpha 1, SiLU x sigmoid(x))."""
    if name in (None, "id", "identity", "linear", "none"):
        return lambda y: y
    fns = {
        "tanh": np.tanh,
        "relu": lambda y: np.maximum(y, 0.0),
        "gelu": gelu,
        "elu": lambda y: np.where(y > 0, y, np.expm1(np.minimum(y, 0.0))),
        "silu": lambda y: y * sigmoid(y),
        "swish": lambda y: y * sigmoid(y),
        "sigmoid": sigmoid,
        "softplus": softplus,
    }
    if name not in fns:
        raise NotImplementedError(f"activation {name!r}")
    return fns[name]


def activation(spec, par, y):
    if par.kind == "s4d":
        return gelu(y)
    return activation_fn(spec.activation)(y)


def output_transform(weights, spec, i, y):
    pre = f"{spec.layer_prefix}.{i}.output_linear.0."
    if spec.output_linear == "none":
        return y
    w = _f64(weights[pre + "weight"])
    if w.ndim == 3:                                # Conv1d(kernel_size=1)
        w = w[:, :, 0]
    y = linear(y, w, weights[pre + "bias"])
    return glu(y) if spec.output_linear == "glu" else activation_fn(spec.output_activation)(y)


def ssm_conv(par, spec, u, K):
    """The convolution part of a layer on (B, L, H) input, with kernel K
    (ch, H, Lk); includes the D skip term."""
    y = causal_conv(K[0], u)
    if spec.bidirectional:
        y = y + anticausal_conv(K[1], u)
    elif K.shape[0] != 1:
        raise ValueError("kernel channels > 1 without bidirectional are not supported")
    return y + u * par.D


def block_forward(weights, spec, i, u, ssm=None):
    """One S4 block on (B, L, H). `ssm(par, u)`, if given, replaces the
    convolution (used by the checks to plug in a recurrent run)."""
    par = ssm_params(weights, spec, i)
    if ssm is None:
        y = ssm_conv(par, spec, u, layer_kernel(par, spec, u.shape[1]))
    else:
        y = ssm(par, u)
    y = activation(spec, par, y)
    return output_transform(weights, spec, i, y)


def model_forward(weights, spec, u, ssm=None):
    """u (B, L, d_input) -> (B, L, d_output), float64."""
    x = _f64(u)
    if spec.encoder:
        x = linear(x, weights["encoder.weight"], weights["encoder.bias"])
    for i in range(spec.n_layers):
        norm = norm_at(weights, f"norms.{i}.", spec.norm_kind, spec.layer_norm_eps)
        z = norm(x) if spec.norm == "pre" else x
        z = block_forward(weights, spec, i, z, ssm)
        x = z + x if spec.residual else z
        if spec.norm == "post":
            x = norm(x)
    if spec.final_norm:
        x = norm_at(weights, "final_norm.", spec.norm_kind, spec.layer_norm_eps)(x)
    if spec.decoder:
        x = linear(x, weights["decoder.weight"], weights["decoder.bias"])
    return x


# ---------------------------------------------------------------------------
# The training script's model (train.py: SequenceLightningModule)
# ---------------------------------------------------------------------------
#
# Read off src/models/sequence/backbones/{model,block}.py,
# src/models/sequence/modules/s4block.py, src/models/sequence/kernels/
# {fftconv,ssm}.py, src/models/nn/{normalization,linear,activation,
# residual}.py and src/tasks/{encoders,decoders}.py (restated, not copied).
# The Lightning module holds `encoder` (a flattened sequence of the task's
# and the config's encoders), `model` (SequenceModel) and `decoder`; its
# hyper-parameters are the run's whole config (`model`, `encoder`,
# `decoder`, `dataset`, ...). Names under `model.`:
#
#   layers.<i>                      SequenceResidualBlock, i < n_layers * n_repeat
#     .norm.norm.{weight,bias}      Normalization('layer') = nn.LayerNorm, or
#       (+ running_mean, running_var, num_batches_tracked for 'batch')
#     .layer                        S4Block
#       .layer                      FFTConv: .D (channels, H), .kernel.* as
#                                   in fftconv_params
#       .output_linear.0.{weight,bias}   LinearActivation (Linear, then the
#                                   final_act; 'glu' doubles the width), or
#                                   weight_g/weight_v with weight_norm
#   norm.norm.*                     a last norm, when prenorm and a norm
#
# The forward pass (dropouts are off in evaluation):
#   x = encoder(u)
#   per block: y = norm(x) if prenorm else x; y = S4Block(y);
#              y = residual(x, y); y = norm(y) if postnorm; (pool: identity
#              for stride 1 without expand)
#   x = model.norm(x) if prenorm (and a norm)
#   S4Block: y = output_linear(mult_act(activation(FFTConv(y))))
#   FFTConv: y = conv(K, y) + D y (bidirectional: the official shifted
#            anti-causal half), K of min(L, l_max) taps
#   residual 'R' (alpha, beta): alpha x + beta y; 'F'/'N'/'none'/'ff'/
#            'feedforward'/None: y
# The decoder is applied at every step (SequenceDecoder's output_transform,
# or a Linear); its reductions over time (mode 'last', 'pool', ...) are the
# caller's (official_decoder_reduction shows them).


def _cfg_name(cfg):
    return cfg if isinstance(cfg, str) or cfg is None else cfg.get("_name_")


def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


class _KernelOpts:
    def __init__(self, layer):
        self.dt_transform = layer.get("dt_transform", "exp")
        self.real_transform = layer.get("real_transform", "exp")
        self.imag_transform = layer.get("imag_transform", "none")
        self.dt_fast = bool(layer.get("dt_fast", False))


_KERNEL_MODES = {"dplr": "dplr", "nplr": "dplr", "s4": "dplr", "diag": "diag", "s4d": "diag"}


def train_norm(weights, prefix, norm_cfg):
    """Normalization(d, _name_=...) of the training script at `prefix`."""
    if norm_cfg is None:
        return None
    name = _cfg_name(norm_cfg)
    kwargs = {} if isinstance(norm_cfg, str) else {k: v for k, v in norm_cfg.items()
                                                    if k != "_name_"}
    eps = float(kwargs.get("eps", 1e-5))
    if name == "layer":
        return norm_at(weights, prefix + "norm.", "layer", eps)
    if name == "batch":
        return norm_at(weights, prefix + "norm.", "batch", eps)
    if name == "none":
        return lambda v: v
    raise NotImplementedError(f"norm {name!r}")


def train_s4block(weights, prefix, layer, u):
    """One S4Block (layer `_name_` 's4' or 'standalone') or a minimal S4D
    ('s4d') at `prefix` on (B, L, H) input."""
    H = u.shape[-1]
    name = layer.get("_name_", "s4")
    if name == "s4d":                              # models/s4/s4d.py S4D
        k = prefix + "kernel."
        dt = np.exp(_f64(weights[k + "log_dt"]))[:, None]
        lam = -np.exp(_f64(weights[k + "log_A_real"])) + 1j * _f64(weights[k + "A_imag"])
        par = SSMParams("s4d", dt, lam, np.ones_like(lam), _cplx(weights[k + "C"])[None],
                        D=_f64(weights[prefix + "D"]))
        y = causal_conv(diag_kernel(par, u.shape[1], "zoh")[0], u) + u * par.D
        y = gelu(y)
        w = _f64(weights[prefix + "output_linear.0.weight"])[:, :, 0]
        return glu(linear(y, w, weights[prefix + "output_linear.0.bias"]))
    fft = prefix + "layer."
    kind = _KERNEL_MODES[layer.get("mode", layer.get("kernel", "dplr"))]
    opts = _KernelOpts(layer)
    par = fftconv_params(weights, fft, kind, H, opts)
    L = u.shape[1]
    l_max = layer.get("l_max")
    if kind == "dplr":
        K = dplr_kernel(par, L, l_max)
    else:
        K = diag_kernel(par, L, layer.get("disc", "zoh"), l_max)
    y = causal_conv(K[0], u)
    if layer.get("bidirectional", False):
        y = y + anticausal_conv(K[1], u)
    y = y + u * par.D
    y = activation_fn(layer.get("activation", "gelu"))(y)
    y = activation_fn(layer.get("mult_act"))(y)
    final_act = layer.get("final_act", "glu")
    if final_act is None and layer.get("postact") is not None:
        final_act = layer["postact"]
    if final_act is None:
        return y
    ol = prefix + "output_linear.0."
    if ol + "weight" in weights:
        w = _f64(weights[ol + "weight"])
    else:                                          # nn.utils.weight_norm, dim 0
        v = _f64(weights[ol + "weight_v"])
        w = _f64(weights[ol + "weight_g"]) * v / np.linalg.norm(v, axis=1, keepdims=True)
    y = linear(y, w, weights[ol + "bias"])
    return glu(y) if final_act == "glu" else activation_fn(final_act)(y)


def train_residual(cfg, x, y):
    name = _cfg_name(cfg)
    if name in (None, "F", "N", "none", "ff", "feedforward"):
        return y
    if name in ("R", "residual"):
        alpha = 1.0 if isinstance(cfg, str) else float(cfg.get("alpha", 1.0))
        beta = 1.0 if isinstance(cfg, str) else float(cfg.get("beta", 1.0))
        y = beta * y if beta != 1.0 else y
        return alpha * x + y if alpha else y
    raise NotImplementedError(f"residual {name!r}")


def train_encode(weights, hp, u):
    """The config's encoders at `encoder.<k>` (no task encoder): 'linear'
    (u: (B, L, d_input)) or 'embedding' (u: token ids (B, L))."""
    x = u
    for k, enc in enumerate(_as_list(hp.get("encoder"))):
        name = _cfg_name(enc)
        if name in ("id", None):
            continue
        if name == "linear":
            x = linear(_f64(x), weights[f"encoder.{k}.weight"], weights[f"encoder.{k}.bias"])
        elif name == "embedding":
            x = _f64(weights[f"encoder.{k}.weight"])[np.asarray(x, dtype=np.int64)]
        else:
            raise NotImplementedError(f"encoder {name!r}")
    return _f64(x)


def train_decode_per_step(weights, hp, x):
    """The decoders' position-wise maps, at every step."""
    decs = _as_list(hp.get("model", {}).get("decoder")) + _as_list(hp.get("decoder"))
    for k, dec in enumerate(decs):
        name = _cfg_name(dec)
        if name in ("id", None):
            continue
        if name in ("sequence", "nd"):
            pre = f"decoder.{k}.output_transform."
        elif name == "linear":
            pre = f"decoder.{k}."
        else:
            raise NotImplementedError(f"decoder {name!r}")
        if pre + "weight" in weights:
            x = linear(x, weights[pre + "weight"], weights[pre + "bias"])
    return x


def official_decoder_reduction(y_steps, mode, l_output):
    """What SequenceDecoder returns, from the per-step outputs of a decoder
    whose map is affine (so it commutes with averaging): 'last' the last
    l_output steps, 'first' the first, 'pool' running means (l_output = 0:
    the mean of all steps, squeezed)."""
    L = y_steps.shape[1]
    squeeze = l_output == 0
    n = L if l_output is None else max(l_output, 1)
    if mode == "last":
        out = y_steps[:, L - n:]
    elif mode == "first":
        out = y_steps[:, :n]
    elif mode == "pool":
        out = np.cumsum(y_steps, axis=1) / np.arange(1, L + 1)[None, :, None]
        out = out[:, L - n:]
    else:
        raise NotImplementedError(mode)
    return out[:, 0] if squeeze else out


def training_forward(weights, hp, u):
    """The training script's Lightning module on u, with weights under its
    state_dict names and `hp` its hyper-parameters (plain dicts): (B, L,
    d_output) per-step outputs, float64."""
    m = hp["model"]
    if m.get("_name_", "model") != "model":
        raise NotImplementedError(f"backbone {m.get('_name_')!r}")
    layers = _as_list(m["layer"])
    n = int(m.get("n_layers", 1)) * int(m.get("n_repeat", 1))
    prenorm = bool(m.get("prenorm", True))
    norm_cfg = m.get("norm", "layer")
    x = train_encode(weights, hp, u)
    for i in range(n):
        layer = layers[i % len(layers)]
        pre = f"model.layers.{i}."
        norm = train_norm(weights, pre + "norm.", norm_cfg)
        y = norm(x) if (norm and prenorm) else x
        y = train_s4block(weights, pre + "layer.", layer, y)
        y = train_residual(m.get("residual", "R"), x, y)
        x = norm(y) if (norm and not prenorm) else y
    if prenorm and norm_cfg is not None:
        x = train_norm(weights, "model.norm.", norm_cfg)(x)
    return train_decode_per_step(weights, hp, x)
