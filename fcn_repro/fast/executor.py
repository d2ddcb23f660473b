"""The fast forward of a built net: :class:`FastNet` and :func:`optimize`."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional, Sequence

import torch
from torch import nn

from fcn_repro.ops import clear_diagonal_cache

from .kernels import ConvKernel
from .sblob import SBlob, materialize, structured_from_tensor
from .schedule import FastStep, conv_flops, fast_steps, schedule
from .structured import sconv, spool_max, srelu
from .winograd import KINDS as WINOGRAD_KINDS

__all__ = ["FAST_DEFAULTS", "FastNet", "optimize", "count_flops"]

# The default options of the fast path (chosen from the measurements in
# benchmarks/RESULTS.md).
FAST_DEFAULTS = dict(background=True, conv="mkldnn", channels_last=True, gemm=True, views=True,
                     winograd="f4", winograd_min_channels=64)

_BACKGROUNDS_KEPT = 4   # input sizes whose backgrounds are remembered (a few MB each for FCN-8s)


class FastNet(nn.Module):
    """A fast forward for a built :class:`fcn_repro.caffe.Net` (shares its parameters).

    ``forward(**inputs) -> {output blob: tensor}``, exactly like ``net.forward``.
    ``enabled=False`` (settable) runs the plain net. See :mod:`fcn_repro.fast`.
    After changing parameters behind torch's back (``p.data``, NumPy views),
    call :meth:`refresh`.

    Options: ``background`` (skip the input-independent padding region),
    ``conv`` ("mkldnn": oneDNN channels-last with fused ReLU; "torch":
    F.conv2d), ``channels_last``, ``gemm`` (1x1 convolutions and kernels
    of 25 taps or more run as one GEMM on a view of the weight), ``views``
    (compute a few more pixels where that lets the next layer read its
    input in place instead of copying it), ``winograd`` ("f4" default, True
    too; "f2", "f3", "f6" by name; False) / ``winograd_min_channels``.
    """

    def __init__(self, net: nn.Module, enabled: bool = True, **options: Any):
        super().__init__()
        unknown = set(options) - set(FAST_DEFAULTS)
        if unknown:
            raise TypeError(f"optimize(): unknown options {sorted(unknown)}; known: {sorted(FAST_DEFAULTS)}")
        self.net = net
        self.enabled = bool(enabled)
        self.options = dict(FAST_DEFAULTS, **options)
        if self.options["conv"] not in ("mkldnn", "torch"):
            raise ValueError(f"optimize(): conv must be 'mkldnn' or 'torch', got {self.options['conv']!r}")
        if self.options["winograd"] is True:   # the default variant; the others by name
            self.options["winograd"] = FAST_DEFAULTS["winograd"]
        if self.options["winograd"] not in (False, None, *WINOGRAD_KINDS):
            raise ValueError(f"optimize(): winograd must be False or one of {sorted(WINOGRAD_KINDS)} "
                             f"(F(m x m, 3x3)), got {self.options['winograd']!r}")
        if self.options["conv"] == "mkldnn" and not torch.backends.mkldnn.is_available():
            self.options["conv"] = "torch"
        self._kernels: dict[str, ConvKernel] = {}
        self._plan = None
        self._steps: Optional[list] = None
        self._schedules: dict = {}
        self._backgrounds: OrderedDict = OrderedDict()   # see _background_cache

    @property
    def inputs(self):
        return self.net.inputs

    @property
    def outputs(self):
        return self.net.outputs

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}, options={self.options}"

    # ------------------------------------------------------------ plan
    def _kernel(self, m) -> ConvKernel:
        kern = self._kernels.get(m.name)
        w, b = m.weight, m.bias()
        if kern is None or kern.weight is not w or kern.bias is not b:
            big = max(w.shape[1] * m.group, w.shape[0]) >= self.options["winograd_min_channels"]
            wino = self.options["winograd"] if big else False
            kern = ConvKernel(w, b, m.window.stride, m.window.dilation, m.group, self.options["conv"],
                              self.options["gemm"], wino)
            self._kernels[m.name] = kern
        return kern

    def steps(self) -> list:
        """The net's plan as the fast path runs it (a list of :class:`FastStep`), for the net's current plan."""
        plan = self.net.plan
        if self._steps is None or self._plan is not plan:
            self._steps, self._plan, self._schedules = fast_steps(plan), plan, {}
            self._backgrounds.clear()   # keyed by step index
        return self._steps

    def schedule(self, shapes: dict) -> dict:
        """Step index -> output window of each structured step, for these input shapes (cached)."""
        key = tuple(sorted((k, tuple(v)) for k, v in shapes.items()))
        steps = self.steps()
        if key not in self._schedules:
            self._schedules[key] = schedule(steps, dict(shapes), views=self.options["views"])
        return self._schedules[key]

    # ------------------------------------------------------------ forward
    def _needs_grad(self, inputs) -> bool:
        if not torch.is_grad_enabled():
            return False
        if any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs.values()):
            return True
        return any(p.requires_grad for p in self.net.parameters())

    def _switched_off(self, inputs) -> bool:
        """The plain path whatever the values: disabled, a ``keep_blobs`` net, or a gradient needed."""
        return not self.enabled or self.net.keep_blobs or self._needs_grad(inputs)

    @staticmethod
    def _finite(env: dict) -> bool:
        """Every floating-point input finite. The background of a structured blob is computed from an
        all-zero image, so a NaN or inf in the input would stay inside its data box while the plain
        path spreads it through every padded convolution: such inputs run the plain path, so that
        both give the same scores."""
        return all(bool(torch.isfinite(x).all()) for x in env.values() if x.is_floating_point())

    def runs_plain(self, env: dict) -> bool:
        """Whether :meth:`forward` runs the plain net for these inputs ({blob: tensor}), so that what
        runs them another way (:mod:`fcn_repro.streaming`) takes the same kernels."""
        return self._switched_off(env) or not self._finite(env)

    def forward(self, *args: Any, **inputs: Any) -> dict[str, torch.Tensor]:
        """``fast(data=x)`` or positionally in ``net.inputs`` order, as the net; {output blob: tensor}."""
        net = self.net
        if args:
            if len(args) > len(net.inputs) or any(n in inputs for n in net.inputs[:len(args)]):
                return net(*args, **inputs)  # the plain path raises the builder's error
            inputs = {**dict(zip(net.inputs, args)), **inputs}
        if self._switched_off(inputs):
            return net(**inputs)
        if sorted(inputs) != sorted(net.inputs):
            return net(**inputs)  # the plain path raises the builder's error
        env: dict[str, Any] = {n: x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
                               for n, x in inputs.items()}
        if not self._finite(env):
            return net(**env)
        with torch.no_grad():
            return self._forward(env)

    def refresh(self) -> "FastNet":
        """Forget everything derived from the parameters' values; returns ``self``.

        What the fast path derives from the parameters (the backgrounds, the
        kernels' channels-last and Winograd weights, the deconvolutions'
        diagonal checks) is keyed on each parameter's data pointer and
        version counter, so changes made through torch (in-place ops,
        ``load_weights``, an optimizer step, assigning ``p.data``) are seen by
        themselves. Changes behind torch's back leave the version counter
        alone: writes through ``p.data`` (``p.data.mul_(2)``,
        ``p.data[0] = 1``) or a NumPy view (``p.detach().numpy()[...] = v``).
        After those, call ``fast.refresh()`` (the plain path needs nothing).
        """
        self._backgrounds.clear()
        for kern in self._kernels.values():
            kern.refresh(force=True)
        clear_diagonal_cache()
        return self

    def _background_cache(self, env: dict) -> dict:
        """The backgrounds computed for these input shapes, dtype, device and parameter versions.

        A background is what the net computes on an all-zero image: it depends
        on nothing else, so it is computed once per key (the last few kept;
        :meth:`refresh` forgets them).
        """
        params = tuple((p.data_ptr(), p._version, p.dtype) for p in self.net.parameters())
        key = (tuple((n, tuple(env[n].shape), env[n].dtype, str(env[n].device)) for n in self.net.inputs), params)
        store = self._backgrounds.get(key)
        if store is None:
            store = self._backgrounds[key] = {}
            while len(self._backgrounds) > _BACKGROUNDS_KEPT:
                self._backgrounds.popitem(last=False)
        else:
            self._backgrounds.move_to_end(key)
        return store

    def _run_step(self, i: int, s: FastStep, env: dict, want: dict, bgs: Optional[dict] = None) -> None:
        opts = self.options
        cl = opts["channels_last"]
        st, kind, m = s.step, s.kind, s.layer
        x = env[st.bottom_names[0]] if st.bottoms else None
        if kind in ("conv", "dense") and isinstance(x, torch.Tensor) and (x.dim() != 4 or not x.is_floating_point()):
            kind = "plain"
        if kind == "dense":
            x = materialize(x)
            if cl and x.dtype == torch.float32:
                x = x.contiguous(memory_format=torch.channels_last)
            env[st.top_names[0]] = self._kernel(m)(x, s.relu is not None, pad=m.window.pad)
        elif kind == "conv":
            kern = self._kernel(m)
            if opts["background"]:
                if not isinstance(x, SBlob):
                    x = structured_from_tensor(x, cl)
                y = sconv(x, kern, m.window.kernel, m.window.pad, relu=s.relu is not None, want=want.get(i),
                          cache=bgs, key=i)
            else:
                if cl and x.dtype == torch.float32:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = kern(x, s.relu is not None, pad=m.window.pad)
            env[st.top_names[0]] = y
        elif kind == "pool" and isinstance(x, SBlob):
            env[st.top_names[0]] = spool_max(x, m.window.kernel, m.window.stride, want=want.get(i), cache=bgs, key=i)
        elif kind == "relu" and isinstance(x, SBlob):
            env[st.top_names[0]] = srelu(x, m.negative_slope, inplace=st.inplace_ok)
        elif kind == "identity":
            env[st.top_names[0]] = x
        else:
            kind = "plain"
        if kind == "plain":
            st.apply(env, st.inplace_ok, read=materialize, filename=self.net.filename)
        for n in st.drop:
            env.pop(n, None)
        if s.relu is not None:
            for n in s.relu.drop:
                env.pop(n, None)

    def _forward(self, env: dict) -> dict[str, torch.Tensor]:
        steps = self.steps()
        want = self.schedule({n: tuple(env[n].shape) for n in self.net.inputs}) if self.options["background"] else {}
        bgs = self._background_cache(env) if self.options["background"] else None
        for i, s in enumerate(steps):
            # Named ranges: torch.profiler shows the time of every layer.
            with torch.profiler.record_function(s.step.name):
                self._run_step(i, s, env, want, bgs)
        return {n: materialize(env[n]) for n in self.net.outputs}


def optimize(net: nn.Module, enabled: bool = True, **options: Any) -> FastNet:
    """The fast forward of ``net`` (a :class:`fcn_repro.caffe.Net`), sharing its parameters.

    ``enabled=False`` gives a wrapper that runs the plain path. Options (see
    :data:`FAST_DEFAULTS`): ``background``, ``conv``, ``channels_last``,
    ``gemm``, ``views``, ``winograd``, ``winograd_min_channels``. Returns a
    :class:`FastNet`; call it like the net: ``fast(data=x) -> {"score": ...}``.
    """
    if isinstance(net, FastNet):
        net = net.net
    return FastNet(net, enabled=enabled, **options)


def count_flops(net: nn.Module, input_shape: Sequence[int], background: bool = True,
                windows: bool = False) -> dict:
    """Multiply-add FLOPs (2 per MAC) of every Convolution of ``net`` on ``input_shape`` (N, C, H, W).

    With ``background``, only the data-box pixels count (what the fast path
    must compute; with ``windows``, the windows it does compute, halos
    included); else every output pixel (what Caffe computes). Returns
    {layer: flops} for the convolutions fed by structured blobs (those run
    dense, the score layers, in full).
    """
    fast = net if isinstance(net, FastNet) else FastNet(net)
    name = fast.net.inputs[0]
    want = fast.schedule({name: tuple(input_shape)}) if windows else None
    return conv_flops(fast.steps(), input_shape, name, background=background, want=want)
