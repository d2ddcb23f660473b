"""Winograd convolutions of the fast path: F(m x m, 3x3) in C++ (CPU), and in PyTorch operations.

:class:`WinogradCpu` runs the extension's ``winograd_conv3x3`` (csrc/cpu/
winograd_kernel.cpp: AVX-512 or AVX2, chosen at run time; transforms fused
with the tile gather and scatter, cache-blocked products in registers) for
m = 2, 3, 4 or 6. :class:`Winograd23` / :class:`Winograd43` are the same
algorithms written with PyTorch operations (any device, any float dtype),
which the fast path runs where the extension's kernel cannot (a GPU, float64,
a CPU without AVX2, no extension).

Every variant's matrices come from :func:`winograd_matrices` (Toom-Cook on
the interpolation points of :data:`POINTS`): the one place the points are
chosen. Their errors, measured per layer against float64, and speeds are in
benchmarks/RESULTS.md (``bench_forward.py --variants``).
"""
from __future__ import annotations

from fractions import Fraction as Fr
from typing import Optional

import torch
import torch.nn.functional as F

from fcn_repro.ops import _ext

__all__ = ["KINDS", "POINTS", "WINOGRAD_POINTS", "WinogradCpu", "Winograd23", "Winograd43", "cpu_isa",
           "cpu_kernel_available", "winograd_for", "winograd_matrices"]

# ---------------------------------------------------------------- Winograd F(4x4, 3x3)

# Interpolation points of the Toom-Cook construction. The textbook set (0,
# +-1, +-2) gives ~6e-6 relative error per float32 layer (512 channels);
# mixing a point with its reciprocal's negation, (0, +-1, 1/2, -2), gives
# ~2.5e-6, close to a direct convolution's ~1.9e-6 (see RESULTS.md).
WINOGRAD_POINTS = ((0, 1), (1, 1), (-1, 1), (1, 2), (-2, 1))


def winograd_matrices(points=WINOGRAD_POINTS, m: int = 4, r: int = 3) -> tuple:
    """(B^T, G, A^T) of Winograd F(m, r) for finite ``points`` (num, den) plus infinity, float64.

    Toom-Cook: with M(x) = prod (x - p_j), row j of B^T holds the
    coefficients of M(x) / (x - p_j), G's row j is g(p_j) / prod_{l != j}
    (p_j - p_l), A^T evaluates at the points; the point at infinity adds
    the last row/column. Then y = A^T [(G g) * (B^T d)] is the valid
    correlation of d (length m + r - 1) with g (length r).
    """
    n = m + r - 1
    P = [Fr(a, b) for a, b in points]
    if len(P) != n - 1:
        raise ValueError(f"F({m},{r}) needs {n - 1} finite points, got {len(P)}")

    def mul(a, b):
        out = [Fr(0)] * (len(a) + len(b) - 1)
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                out[i + j] += x * y
        return out
    M = [Fr(1)]
    for p in P:
        M = mul(M, [-p, Fr(1)])
    BT = [[Fr(0)] * n for _ in range(n)]
    G = [[Fr(0)] * r for _ in range(n)]
    AT = [[Fr(0)] * n for _ in range(m)]
    for j, p in enumerate(P):
        Mj, Nj = [Fr(1)], Fr(1)
        for l, q in enumerate(P):
            if l != j:
                Mj = mul(Mj, [-q, Fr(1)])
                Nj *= p - q
        BT[j][:n - 1] = Mj
        G[j] = [p ** k / Nj for k in range(r)]
        for i in range(m):
            AT[i][j] = p ** i
    BT[n - 1] = M
    G[n - 1][r - 1] = Fr(1)
    AT[m - 1][n - 1] = Fr(1)
    f = lambda A: torch.tensor([[float(v) for v in row] for row in A], dtype=torch.float64)  # noqa: E731
    return f(BT), f(G), f(AT)


def _winograd_tiles(x: torch.Tensor, m: int) -> tuple:
    """Tiling of a valid 3x3 correlation into m x m output tiles: x zero-padded at the
    bottom/right to whole tiles, the output size (oh, ow), the tile counts (th, tw),
    and whether padding was added."""
    hh, ww = x.shape[2], x.shape[3]
    oh, ow = hh - 2, ww - 2
    th, tw = -(-oh // m), -(-ow // m)
    ph, pw = m * th + 2 - hh, m * tw + 2 - ww
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, oh, ow, th, tw, bool(ph or pw)


class Winograd43:
    """Winograd F(4x4, 3x3) for one 3x3 / stride 1 / no-dilation / no-group convolution, channels-last.

    The transforms are plain matrix products with the Kronecker squares of
    B^T (36x36) and A^T (16x36), so every step is a GEMM: tiles (36, T, C)
    -> V = KB @ tiles -> M = V @ U (36 batched T x C x K products, U = G g
    G^T precomputed: 4x the weight's memory) -> Y = KA @ M -> (oh, ow, K).
    4x fewer multiplications than direct; float32 error ~2.5e-6 relative per
    layer (a direct convolution: ~1.9e-6).
    """

    def __init__(self, weight: torch.Tensor):
        BT, G, AT = winograd_matrices()
        w = weight.detach()
        k, c = w.shape[0], w.shape[1]
        U = torch.einsum("ik,ockl,jl->ijco", G.to(w.device), w.double(), G.to(w.device))
        self.U = U.reshape(36, c, k).to(w.dtype).contiguous()
        self.KB = torch.kron(BT, BT).to(w.dtype).to(w.device)
        self.KA = torch.kron(AT, AT).to(w.dtype).to(w.device)
        self.k, self.c = k, c

    def __call__(self, x: torch.Tensor, bias: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
        """Valid 3x3 correlation of x (N, C, H, W) -> (N, K, H-2, W-2), channels-last."""
        n, c = x.shape[:2]
        x, oh, ow, th, tw, _ = _winograd_tiles(x, 4)
        xh = x.permute(0, 2, 3, 1)
        if not xh.is_contiguous():
            xh = xh.contiguous()
        out = torch.empty((n, self.k, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        s = xh.stride()
        t = th * tw
        for i in range(n):
            tiles = xh[i].as_strided((6, 6, th, tw, c), (s[1], s[2], 4 * s[1], 4 * s[2], s[3]))
            d = tiles.reshape(36, t * c)                                   # gathers the overlapping tiles
            v = (self.KB @ d).view(36, t, c)
            mm = torch.bmm(v, self.U)                                     # (36, T, K)
            y = (self.KA @ mm.view(36, t * self.k)).view(4, 4, th, tw, self.k)
            y = y.permute(2, 0, 3, 1, 4).reshape(4 * th, 4 * tw, self.k)[:oh, :ow]
            o = out[i].permute(1, 2, 0)
            if bias is not None:
                torch.add(y, bias, out=o)
            else:
                o.copy_(y)
        if relu:
            out.relu_()
        return out


class Winograd23:
    """Winograd F(2x2, 3x3) for one 3x3 / stride 1 / no-dilation / no-group convolution, channels-last.

    B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]] and A^T =
    [[1,1,1,0],[0,1,-1,-1]] have coefficients 0 and +-1, so the transforms
    are exact additions of strided views (no rounding beyond the adds), and
    the 16 transformed products are one batched GEMM. 2.25x fewer
    multiplications than direct; float32 error ~4e-7 relative per layer,
    *below* a direct convolution's ~2e-6 (each output sums fewer rounded
    terms). The bias is added once, to the transform-domain element that
    A^T maps to every output (M[1,1]). Memory: the transformed weight U is
    16/9 of the weight (it replaces the channels-last copy other layers keep).
    """

    def __init__(self, weight: torch.Tensor):
        w = weight.detach()
        G = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=torch.float64, device=w.device)
        k, c = w.shape[0], w.shape[1]
        U = torch.einsum("ik,ockl,jl->ijco", G, w.double(), G)
        self.U = U.reshape(16, c, k).to(w.dtype).contiguous()
        self.k, self.c = k, c

    def __call__(self, x: torch.Tensor, bias: Optional[torch.Tensor], relu: bool) -> torch.Tensor:
        """Valid 3x3 correlation of x (N, C, H, W) -> (N, K, H-2, W-2), channels-last."""
        n, c = x.shape[:2]
        x, oh, ow, th, tw, padded = _winograd_tiles(x, 2)
        xs = x.permute(0, 2, 3, 1)                                   # (N, H, W, C) view
        k = self.k
        out = torch.empty((n, k, oh, ow), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        full = not padded
        for i in range(n):
            xh = xs[i]
            W2 = xh.shape[1]
            r = [xh[j:j + 2 * th:2] for j in range(4)]               # tile rows j: (th, W, C)
            b1 = torch.empty((4, th, W2, c), dtype=x.dtype, device=x.device)
            torch.sub(r[0], r[2], out=b1[0])
            torch.add(r[1], r[2], out=b1[1])
            torch.sub(r[2], r[1], out=b1[2])
            torch.sub(r[1], r[3], out=b1[3])
            cc = [b1[:, :, j:j + 2 * tw:2] for j in range(4)]        # tile cols j: (4, th, tw, C)
            V = torch.empty((4, 4, th, tw, c), dtype=x.dtype, device=x.device)
            torch.sub(cc[0], cc[2], out=V[:, 0])
            torch.add(cc[1], cc[2], out=V[:, 1])
            torch.sub(cc[2], cc[1], out=V[:, 2])
            torch.sub(cc[1], cc[3], out=V[:, 3])
            M = torch.bmm(V.view(16, th * tw, c), self.U).view(4, 4, th, tw, k)
            if bias is not None:
                M[1, 1] += bias
            Q = torch.empty((2, 4, th, tw, k), dtype=x.dtype, device=x.device)
            torch.add(M[0], M[1], out=Q[0])
            Q[0] += M[2]
            torch.sub(M[1], M[2], out=Q[1])
            Q[1] -= M[3]
            if full:
                ov = out[i].permute(1, 2, 0).view(th, 2, tw, 2, k)   # write the output in place
            else:
                ov = torch.empty((th, 2, tw, 2, k), dtype=x.dtype, device=x.device)
            for a in range(2):
                torch.add(Q[a, 0], Q[a, 1], out=ov[:, a, :, 0])
                ov[:, a, :, 0] += Q[a, 2]
                torch.sub(Q[a, 1], Q[a, 2], out=ov[:, a, :, 1])
                ov[:, a, :, 1] -= Q[a, 3]
            if not full:
                out[i].permute(1, 2, 0).copy_(ov.view(2 * th, 2 * tw, k)[:oh, :ow])
        if relu:
            out.relu_()
        return out


# ---------------------------------------------------------------- the C++ kernel (CPU)

#: Interpolation points (num, den) of F(m x m, 3x3) per output tile size m (plus the point at
#: infinity). Small points and reciprocal pairs keep the transforms' coefficients, and so the
#: rounding, small (see winograd_matrices). For m = 3, 1/2 as the fourth point measured the
#: lowest error of -1/2, 2, -2, 1/3 (256 channels: 3.9e-6 against 4.0-7.5e-6).
POINTS = {
    2: ((0, 1), (1, 1), (-1, 1)),
    3: ((0, 1), (1, 1), (-1, 1), (1, 2)),
    4: WINOGRAD_POINTS,
    6: ((0, 1), (1, 1), (-1, 1), (1, 2), (-1, 2), (2, 1), (-2, 1)),
}

PANEL = 32    # output channels per packed weight panel (the kernel's layout: kWinogradPanel, which checks it)

#: the fast path's names of the variants (its ``winograd`` option): F(m x m, 3x3)
KINDS = {"f2": 2, "f3": 3, "f4": 4, "f6": 6}


def cpu_isa() -> str:
    """The instruction set the extension's CPU kernels use: 'avx512', 'avx2' or 'none' (no kernel)."""
    if not _ext.AVAILABLE or not hasattr(torch.ops.fcn_repro, "_cpu_isa"):
        return "none"
    return str(torch.ops.fcn_repro._cpu_isa())


def cpu_kernel_available() -> bool:
    """Whether :class:`WinogradCpu` can run here (the extension is built and the CPU has AVX2 or AVX-512)."""
    return cpu_isa() != "none"


class WinogradCpu:
    """Winograd F(m x m, 3x3) of one 3x3 / stride 1 / no-dilation / no-group convolution, by the C++ kernel.

    The weight (K, C, 3, 3) is transformed once, in float64, to
    U = G g G^T (n x n points, n = m + 2) and packed for the kernel:
    (n*n, ceil(K/32), C, 32) float32, zeros in the padding channels. That is
    n^2/9 of the weight's memory (16/9 for m=2, 4x for m=4). Calls take
    float32 CPU maps in any layout (channels-last reads without a copy) and
    return channels-last maps.

    The arithmetic of a pixel depends only on its tile's inputs and its place
    in the tile, and ``phase`` anchors the tile grid: give each window of a map
    its origin (modulo m) and its tiles lie on the map's grid. A window that
    reads its tiles' whole input computes their pixels bit for bit as the
    whole map does; one that cuts a tile rounds that tile's pixels otherwise
    (except for F(2x2), whose transforms keep each output's inputs apart).
    """

    def __init__(self, weight: torch.Tensor, m: int = 4, points=None):
        if m not in POINTS:
            raise ValueError(f"WinogradCpu: m must be one of {sorted(POINTS)}, got {m!r}")
        w = weight.detach()
        if w.dim() != 4 or tuple(w.shape[2:]) != (3, 3):
            raise ValueError(f"WinogradCpu: the weight must be (K, C, 3, 3), got {tuple(w.shape)}")
        BT, G, AT = winograd_matrices(POINTS[m] if points is None else points, m=m)
        k, c = w.shape[0], w.shape[1]
        n = m + 2
        kp = -(-k // PANEL) * PANEL
        U = torch.einsum("ik,ockl,jl->ijco", G, w.double().cpu(), G).reshape(n * n, c, k)
        if kp != k:
            U = F.pad(U, (0, kp - k))
        self.U = U.view(n * n, c, kp // PANEL, PANEL).permute(0, 2, 1, 3).to(torch.float32).contiguous()
        self.BT = BT.to(torch.float32).contiguous()
        self.AT = AT.to(torch.float32).contiguous()
        self.m, self.k, self.c = m, k, c

    def __call__(self, x: torch.Tensor, bias: Optional[torch.Tensor], relu: bool, pad: tuple = (0, 0),
                 phase: tuple = (0, 0)) -> torch.Tensor:
        """3x3 correlation of x (N, C, H, W) zero-padded by ``pad`` -> (N, K, H+2p-2, W+2p-2), channels-last."""
        ph = (int(phase[0]) % self.m, int(phase[1]) % self.m)
        return torch.ops.fcn_repro.winograd_conv3x3(x, self.U, self.BT, self.AT, bias, self.k,
                                                    [int(pad[0]), int(pad[1])], list(ph), bool(relu))


def winograd_for(weight: torch.Tensor, kind: str):
    """The Winograd convolution ``kind`` (a key of :data:`KINDS`) of a 3x3 weight, for where it lives.

    A float32 CPU weight where the C++ kernel runs: :class:`WinogradCpu`. Elsewhere (a GPU,
    float64, no kernel) the PyTorch operations: :class:`Winograd23` for F(2x2) and F(3x3),
    :class:`Winograd43` for F(4x4) and F(6x6).
    """
    m = KINDS[kind]
    if weight.dtype == torch.float32 and weight.device.type == "cpu" and cpu_kernel_available():
        return WinogradCpu(weight, m)
    return Winograd23(weight) if m <= 3 else Winograd43(weight)
