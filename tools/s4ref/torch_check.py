"""A second, independent float64 implementation of the same forward pass in
PyTorch ops (our own code, not the official modules), used by
check_reference.py as a cross-check of s4_numpy.py. Where s4_numpy.py takes
the plain road (dense solves for the generating function, direct
convolutions, a reversed-input convolution for the backward half), this one
takes the road the official code takes:

- DPLR kernel: Cauchy sums over the conjugate-doubled diagonal at
  z_j = 2(1 - w_j)/(1 + w_j), w_j = exp(-2 pi i j / l) for j = 0..l//2,
  a Woodbury correction for the low-rank term (general rank: solve with
  I + r_QP), times 2/(1 + w_j), then irfft(n=l) and truncation;
- convolution: rfft/irfft of size Lk + L, with the bidirectional kernel laid
  out as pad(k0, right L) + pad(flip(k1), left L);
- torch.nn.functional's layer_norm, gelu (exact), glu, linear, conv1d.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

import s4_numpy as ref

T = torch.float64


def _t(a):
    return torch.as_tensor(np.asarray(a), dtype=T)


def _c(a):
    return torch.as_tensor(np.asarray(a, dtype=np.complex128))


def _doubled_dense(par, h):
    """Dense bilinear (Abar) of channel h, built with torch (for C~ updates)."""
    lam = _c(par.lam[h])
    Pf = torch.cat([_c(par.P[:, h]), _c(par.P[:, h]).conj()], dim=-1)      # (R, M)
    A = torch.diag(torch.cat([lam, lam.conj()])) - Pf.transpose(0, 1) @ Pf.conj()
    M = A.shape[0]
    I = torch.eye(M, dtype=torch.complex128)
    dt = float(par.dt[h, 0])
    return torch.linalg.solve(I - dt / 2 * A, I + dt / 2 * A)


def dplr_kernel_cauchy(par, L, l_max=None):
    Lk = L if l_max is None else min(L, l_max)
    ch, H, N2 = par.C.shape
    R = par.P.shape[0]
    out = torch.zeros(ch, H, Lk, dtype=T)
    for h in range(H):
        Ad = _doubled_dense(par, h)
        M = Ad.shape[0]
        I = torch.eye(M, dtype=torch.complex128)
        Ct = torch.cat([_c(par.C[:, h]), _c(par.C[:, h]).conj()], dim=-1)  # (ch, M)
        l = par.l_kernel
        if l == 0:
            l = l_max if l_max else Lk
            Ct = Ct @ (I - torch.linalg.matrix_power(Ad, l))
        while Lk > l:
            Ct = Ct @ (I + torch.linalg.matrix_power(Ad, l))
            l *= 2
        Ct = Ct[:, :N2]                                   # back to one of each pair
        dt = float(par.dt[h, 0])
        w = dt * _c(par.lam[h])                           # (N2,)
        j = torch.arange(l // 2 + 1, dtype=T)
        omega = torch.exp(-2j * math.pi * j / l)
        z = 2 * (1 - omega) / (1 + omega)                 # (J,)
        P = _c(par.P[:, h])                               # (R, N2)
        left = torch.cat([Ct, P.conj()], dim=0)           # C~ rows, then Q = conj P
        right = torch.cat([_c(par.B[h])[None], P], dim=0)  # B, then P
        v = left[:, None, :] * right[None, :, :] * dt     # (ch+R, 1+R, N2)
        # sum over the doubled diagonal: v/(z - w) + conj(v)/(z - conj w)
        r = (v[..., None] / (z - w[:, None])
             + v.conj()[..., None] / (z - w.conj()[:, None])).sum(dim=-2)  # (ch+R, 1+R, J)
        r00, r01 = r[:ch, :1], r[:ch, 1:]
        r10, r11 = r[ch:, :1], r[ch:, 1:]
        # Woodbury: k = r_CB - r_CP (I + r_QP)^-1 r_QB, per node
        Mat = torch.eye(R, dtype=torch.complex128)[..., None] + r11            # (R, R, J)
        sol = torch.linalg.solve(Mat.permute(2, 0, 1), r10.permute(2, 0, 1))  # (J, R, 1)
        corr = torch.einsum("crj,jro->coj", r01, sol)                          # (ch, 1, J)
        k_f = (r00 - corr)[:, 0, :] * 2 / (1 + omega)
        k = torch.fft.irfft(k_f, n=l)
        out[:, h, :] = k[:, :Lk]
    return out


def diag_kernel(par, L, disc):
    dt = _t(par.dt)
    lam = _c(par.lam)
    dtA = dt * lam
    C = _c(par.C) * _c(par.B)
    if disc == "zoh":
        C = C * (torch.exp(dtA) - 1) / lam
        logdA = dtA
    else:
        C = C * dt / (1 - dtA / 2)
        logdA = torch.log((1 + dtA / 2) / (1 - dtA / 2))
    V = torch.exp(logdA[..., None] * torch.arange(L, dtype=T))
    return 2 * torch.einsum("chn,hnl->chl", C, V).real


def fftconv(par, spec, x, k):
    """x (B, H, L), k (ch, H, Lk) -> (B, H, L) incl. the D term."""
    L = x.shape[-1]
    Lk = k.shape[-1]
    if spec.bidirectional:
        k = F.pad(k[0], (0, L)) + F.pad(k[1].flip(-1), (L, 0))
    else:
        k = k[0]
    n = Lk + L
    y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :L]
    return y + x * _t(par.D)[:, None]


def forward(weights, spec, u):
    W = {k: _t(v.astype(np.float64)) for k, v in weights.items()}
    x = _t(u)
    if spec.encoder:
        x = F.linear(x, W["encoder.weight"], W["encoder.bias"])
    H = spec.d_model
    for i in range(spec.n_layers):
        ln = lambda v: F.layer_norm(v, (H,), W[f"norms.{i}.weight"], W[f"norms.{i}.bias"],
                                    spec.layer_norm_eps)
        z = ln(x) if spec.norm == "pre" else x
        par = ref.ssm_params(weights, spec, i)
        L = z.shape[1]
        pre = f"{spec.layer_prefix}.{i}."
        if par.kind == "s4d":
            zt = z.transpose(1, 2)                        # (B, H, L)
            k = diag_kernel(par, L, "zoh")[0]
            y = torch.fft.irfft(torch.fft.rfft(zt, n=2 * L) * torch.fft.rfft(k, n=2 * L),
                                n=2 * L)[..., :L]
            y = F.gelu(y + zt * _t(par.D)[:, None])
            y = F.conv1d(y, W[pre + "output_linear.0.weight"], W[pre + "output_linear.0.bias"])
            z = F.glu(y, dim=-2).transpose(1, 2)
        else:
            if par.kind == "dplr":
                k = dplr_kernel_cauchy(par, L, spec.l_max)
            else:
                k = diag_kernel(par, L if spec.l_max is None else min(L, spec.l_max),
                                spec.discretization)
            y = fftconv(par, spec, z.transpose(1, 2), k).transpose(1, 2)   # (B, L, H)
            if spec.activation == "gelu":
                y = F.gelu(y)
            if spec.output_linear != "none":
                y = F.linear(y, W[pre + "output_linear.0.weight"], W[pre + "output_linear.0.bias"])
                if spec.output_linear == "glu":
                    y = F.glu(y, dim=-1)
            z = y
        x = z + x if spec.residual else z
        if spec.norm == "post":
            x = ln(x)
    if spec.decoder:
        x = F.linear(x, W["decoder.weight"], W["decoder.bias"])
    return x.numpy()
