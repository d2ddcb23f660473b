"""Convolution kernels of the fast path: GEMM, oneDNN with fused ReLU, F.conv2d, Winograd F(2x2,3x3) / F(4x4,3x3)."""
from __future__ import annotations

from fractions import Fraction as Fr
from typing import Any, Optional

import torch
import torch.nn.functional as F

from fcn_repro.caffe.layers.convolution import fixed_gemm as _fixed_gemm, onednn_conv2d
from fcn_repro.caffe.shapes import conv_out

__all__ = ["ConvKernel", "Winograd23", "Winograd43", "winograd_matrices", "WINOGRAD_POINTS"]


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


# ---------------------------------------------------------------- kernels

class ConvKernel:
    """How one convolution runs on a window: GEMM, oneDNN with fused ReLU, or F.conv2d.

    * ``gemm`` (1x1 kernels, and kernels of 25 taps or more: fc6's 7x7 on a
      22x22 map): one matrix product against a *view* of the layer's weight
      (no copy of fc6's 411 MB); 1x1 convolutions of channels-last maps
      need no im2col at all.
    * ``mkldnn``: oneDNN on channels-last tensors with the ReLU fused, the
      weight kept in a channels-last copy (the 3x3 layers: 59 MB in all for
      VGG-16).
    * ``torch``: F.conv2d (channels-last when the input is), ReLU after.

    Holds the layer's weight/bias (the net's Parameters); ``refresh()``
    re-derives the copies when the parameters changed (their version
    counters move: ``load_weights`` copies in place; ``refresh(force=True)``
    for changes no counter sees).
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, dilation, groups: int,
                 impl: str = "mkldnn", gemm: bool = False, winograd: Any = False):
        self.weight, self.bias = weight, bias
        self.stride, self.dilation, self.groups = tuple(stride), tuple(dilation), int(groups)
        self.impl = impl
        kh, kw = weight.shape[2], weight.shape[3]
        self.gemm = bool(gemm) and self.groups == 1 and (kh * kw == 1 or kh * kw >= 25)
        self.winograd_kind = winograd if winograd in ("f2", "f4") else None
        self.winograd = (self.winograd_kind is not None and not self.gemm and (kh, kw) == (3, 3)
                         and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1)
        self._versions = None
        self.refresh()

    def _param_versions(self):
        return (self.weight._version, None if self.bias is None else self.bias._version,
                self.weight.data_ptr())

    def refresh(self, force: bool = False) -> None:
        """Re-derive the weight copies when the parameters moved (or always, with ``force``:
        after a change through ``.data`` or NumPy, which no version counter sees)."""
        v = self._param_versions()
        if v == self._versions and not force:
            return
        self._versions = v
        w = self.weight.detach()
        self.b = None if self.bias is None else self.bias.detach()
        self.w_cl = None
        self.wino = None
        if self.gemm:
            self.w_mat = w.reshape(w.shape[0], -1)          # a view when the parameter is contiguous
        elif self.winograd:
            self.wino = Winograd23(w) if self.winograd_kind == "f2" else Winograd43(w)
        elif w.is_floating_point():
            # oneDNN (CPU) and cuDNN (GPU) both run channels-last maps best with channels-last weights.
            self.w_cl = w.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor, relu: bool, pad: tuple = (0, 0)) -> torch.Tensor:
        """Convolution of ``x`` (N, C, h, w) with zero padding ``pad``; ReLU applied when ``relu``."""
        self.refresh()
        if self.gemm or self.wino is not None:
            if pad[0] or pad[1]:
                x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
            return self._gemm(x, relu) if self.gemm else self.wino(x, self.b, relu)
        w = self.w_cl if self.w_cl is not None else self.weight.detach()
        if self.impl == "mkldnn" and x.dtype == torch.float32 and x.device.type == "cpu":
            # the same arithmetic for every map size (exact tiles): see onednn_conv2d
            y = onednn_conv2d(x, self.weight, self.b, self.stride, pad, self.dilation, self.groups)
            return torch.relu_(y) if relu else y
        if not x.is_contiguous(memory_format=torch.channels_last):
            w = self.weight.detach()
        y = F.conv2d(x, w, self.b, self.stride, tuple(pad), self.dilation, self.groups)
        return torch.relu_(y) if relu else y

    def _gemm(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        kh, kw = self.weight.shape[2], self.weight.shape[3]
        cout = self.w_mat.shape[0]
        if kh * kw == 1:
            # 1x1: out (N*h*w, Cout) = x (N*h*w, Cin) @ W^T on a channels-last map.
            xs = x[:, :, ::self.stride[0], ::self.stride[1]].contiguous(memory_format=torch.channels_last)
            h, w = xs.shape[2], xs.shape[3]
            rows = xs.permute(0, 2, 3, 1).reshape(n * h * w, c)
            y = _fixed_gemm(self.w_mat, rows, 0)
            if self.b is not None:
                y += self.b
            if relu:
                y.relu_()
            return y.view(n, h, w, cout).permute(0, 3, 1, 2)      # channels-last (N, Cout, h, w)
        # im2col then one GEMM per image: (Cout, Cin*kh*kw) @ (Cin*kh*kw, oh*ow).
        oh = conv_out(x.shape[2], kh, self.stride[0], 0, self.dilation[0])
        ow = conv_out(x.shape[3], kw, self.stride[1], 0, self.dilation[1])
        cols = F.unfold(x, (kh, kw), dilation=self.dilation, stride=self.stride)
        y = torch.stack([_fixed_gemm(self.w_mat, cols[i], 1) for i in range(n)])   # (N, Cout, oh*ow)
        if self.b is not None:
            y += self.b[:, None]
        if relu:
            y.relu_()
        return y.view(n, cout, oh, ow)
