"""Fast inference for a built :class:`fcn_repro.caffe.Net`: ``optimize(net)``.

The package: :mod:`.geometry` (data boxes and compressed backgrounds, no
values), :mod:`.sblob` (structured blobs), :mod:`.kernels` (convolution
kernels, Winograd), :mod:`.structured` (convolution, pooling, ReLU on
structured blobs), :mod:`.schedule` (what runs at each plan step, the one
geometry walk, the windows), :mod:`.executor` (:class:`FastNet`).

What it does, and why it is exact
---------------------------------
Every FCN starts with ``conv1_1`` padded by 100 pixels (so that any input
size gives a score map at least as big as the image). At 500x500 that makes
``conv1_1`` 698x698, and far from the image the maps hold nothing that
depends on the image: there the net only sees its own zero padding. Caffe
computes those pixels anyway; FCN-8s spends about a third of its 363 GFLOP on
them. We do not.

For each blob the fast path keeps

* the *data box*: the rectangle of pixels whose receptive field touches the
  input image (rows ``[lo, hi)``, columns likewise). Its values are computed
  by the layer's own kernels, on a *window* that contains the box (a few
  pixels more where that lets the next layer read a view instead of a copy);
* the *background*: what the net computes on an all-zero image. Outside the
  box the blob equals the background exactly, since those pixels' receptive
  fields see only zeros, as they would for a zero image. The background is
  itself simple: a *plateau* value in the middle, and bands near the map's
  edges where the layers' zero padding reaches in (one more pixel per
  padded 3x3 convolution). Rows (and columns) of the plateau are identical,
  so the background is stored *compressed*: the top band, one plateau row,
  the bottom band (same for columns). A convolution or pooling of the
  background runs on that small map, with just enough plateau rows replicated
  to reproduce every window type, and with the stride alignment of the true
  map kept (the number of removed rows is a multiple of the stride, so
  windows at the bottom edge line up as they do on the true map). When the
  box covers the whole map, there is no background at all.

A box pixel and a background pixel are computed by the same arithmetic as in
the plain path (the same convolution, on the same numbers), so the results
agree to the rounding of the convolution kernels (about 1e-6 relative on
the fixtures in float32; to float64 rounding in float64). No
approximation is made: this is *less work*, not a different algorithm.
Pooling (MAX, no padding), ReLU, Dropout (TEST) and Convolution keep the
structure; any other layer receives the blob materialized (window pasted
into the expanded background) and runs unchanged, through the net's own
plan (so the builder's fused Deconvolution->Crop and Crop->Eltwise ops are
used as they are). The fast path reads the builder's public plan
(:mod:`fcn_repro.caffe.plan`) and the layers' own windows (``layer.window``),
and a non-finite input (NaN, inf) runs the plain path, so both paths give the
same scores for it. Backgrounds do not depend on the image, so they are
computed once per input size and parameter version and remembered (the
last few sizes: keyed on each parameter's data pointer and version counter,
so changes through torch are seen; after writing parameters through
``.data`` or a NumPy view, which move no counter, call ``fast.refresh()``); the fast path changes no process-wide setting (thread
counts) while it runs.

Kernels: convolutions run through oneDNN on channels-last tensors with the
following ReLU fused in (``conv="mkldnn"``), or through ``F.conv2d``
(``conv="torch"``). 1x1 convolutions and big-kernel ones (``fc6``: 7x7 over
512 channels on a 22x22 map) run as one GEMM against a view of the weight
(``gemm=True``): no copy of the 411 MB fc6 weight, no per-call reorder.

Winograd: 3x3 convolutions with 64 or more input or output channels
(``winograd_min_channels``: every 3x3 layer of the VGG FCNs) run as
Winograd F(4x4, 3x3) (``winograd="f4"``, the default; ``winograd=True``
means the default): 4x fewer multiplications, in the C++ kernel of
:mod:`.winograd` on CPUs with AVX2 or AVX-512. That rounds differently from
the direct convolution (~2-7e-6 per layer against float64, the direct one
~1-2e-6), within the fast path's error budget (:mod:`.fidelity`: 5e-6 of
the plain forward, the argmax kept except at near ties, 1e-5 of Caffe's
scores); on FCN-8s at full width the whole forward lies 1.2e-6 from the
plain one. ``"f2"`` (F(2x2): transforms that only add and subtract, an error
*below* the direct convolution's) and ``"f3"`` are within the budget too;
``"f6"`` (F(6x6)) rounds more (~3e-5 per layer) and is opt-in only, held to
``fidelity.LOOSE_REL``. The tests force each variant onto every layer of the
Caffe fixture nets. Measured speeds and errors: benchmarks/RESULTS.md.
``winograd=False``: direct convolutions everywhere.

Switching it off: ``optimize(net, enabled=False)`` (or ``fast.enabled =
False``) runs the plain ``net.forward``. The fast path only runs when no
gradient is needed (under ``torch.no_grad()`` / ``torch.inference_mode()``,
or with parameters that do not require grad): with autograd recording, the
plain path runs so that gradients are Caffe's. ``keep_blobs`` nets also run
the plain path (every blob must exist).

Usage::

    net = Net("deploy.prototxt", "fcn8s.caffemodel")
    fast = optimize(net)            # shares the net's parameters
    with torch.no_grad():
        score = fast(data=x)["score"]
"""
from .executor import FAST_DEFAULTS, FastNet, count_flops, optimize
from .geometry import Axis, Geo, conv_geo, input_geo, pool_geo
from .kernels import ConvKernel
from .winograd import Winograd23, Winograd43, WinogradCpu, winograd_matrices
from .sblob import SBlob, materialize, region, structured_from_tensor
from .schedule import FastStep, fast_steps, schedule, walk
from .structured import sconv, spool_max, srelu

__all__ = ["optimize", "FastNet", "FAST_DEFAULTS", "count_flops"]
