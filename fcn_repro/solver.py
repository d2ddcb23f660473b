"""Caffe's SGD solver, exactly: update rule, learning-rate policies, solver files, state.

Caffe's ``SGDSolver::ApplyUpdate`` does, once per iteration, for every
learnable parameter blob (after ``iter_size`` forward/backward passes have
summed their gradients into ``diff``)::

    clip:       if clip_gradients >= 0 and ||all diffs||_2 > clip_gradients,
                scale every diff by clip_gradients / ||all diffs||_2
    normalize:  diff *= 1 / iter_size                      (skipped when 1)
    regularize: diff += weight_decay * decay_mult * data   (L2)
                diff += weight_decay * decay_mult * sign(data)   (L1)
    update:     history = momentum * history + rate * lr_mult * diff
                data   -= history

``rate`` comes from the lr policy at the current iteration. Note the
learning rate multiplies the gradient *before* it enters the momentum
history; ``torch.optim.SGD`` keeps ``momentum * buf + grad`` and multiplies by
the rate afterwards, which gives different steps as soon as the rate changes
(step/poly/inv policies) or differs between parameters. Hence this optimizer.

:class:`CaffeSGD` is a ``torch.optim.Optimizer``; one param group per Caffe
parameter blob carries its ``lr_mult`` and ``decay_mult``.
:func:`read_solver` reads a solver prototxt; :meth:`CaffeSGD.save_state` /
:meth:`CaffeSGD.load_state` write and read the solver state in Caffe's HDF5
``.solverstate.h5`` layout (``iter``, ``learned_net``, ``current_step``,
``history/<i>``) or as Caffe's binary ``.solverstate`` message, never with
pickle; ``.npz`` (loaded with ``allow_pickle=False``) is accepted too.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from fcn_repro.caffe.prototxt import Message, parse_prototxt
from fcn_repro.caffe.solverstate import SolverStateContents, read_state, state_format, write_state
from fcn_repro.errors import FcnReproError

__all__ = [
    "SolverParameter", "SolverError", "read_solver", "learning_rate", "CaffeSGD",
    "param_groups", "sync_gradients", "SmoothedLoss", "LR_POLICIES",
]

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class SolverError(FcnReproError):
    """A solver file or solver state that cannot be used; the message names the file."""


def _f32(x: float) -> float:
    """Round to float32: Caffe's solver fields are proto ``float``s and its math is in Dtype."""
    return float(np.float32(x))


@dataclasses.dataclass
class SolverParameter:
    """The SolverParameter fields the SGD solver uses, with Caffe's defaults.

    Paths (``train_net``, ``net``, ``test_net``) are resolved relative to the
    solver file's directory by :func:`read_solver` (Caffe resolves them
    relative to the working directory; FCN's solve.py ran from the solver's
    directory, which is what this reproduces).
    """
    base_lr: float = 0.01
    lr_policy: str = "fixed"
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: list[int] = dataclasses.field(default_factory=list)
    max_iter: int = 0
    momentum: float = 0.0
    weight_decay: float = 0.0
    regularization_type: str = "L2"
    iter_size: int = 1
    clip_gradients: float = -1.0
    snapshot: int = 0
    snapshot_prefix: str = ""
    snapshot_format: str = "BINARYPROTO"
    snapshot_after_train: bool = True
    test_iter: list[int] = dataclasses.field(default_factory=list)
    test_interval: int = 0
    test_initialization: bool = True
    display: int = 0
    average_loss: int = 1
    train_net: str = ""
    net: str = ""
    test_net: list[str] = dataclasses.field(default_factory=list)
    type: str = "SGD"
    random_seed: int = -1
    source: str = ""  # the solver file this came from ("" if built in code)

    @property
    def train_net_path(self) -> str:
        """The training net prototxt: ``train_net``, else ``net`` (Caffe's precedence)."""
        return self.train_net or self.net

    def learning_rate(self, it: int, current_step: int = 0) -> tuple[float, int]:
        """See :func:`learning_rate`."""
        return learning_rate(self, it, current_step)


_INT_FIELDS = {"stepsize", "max_iter", "iter_size", "snapshot", "test_interval", "display",
               "average_loss", "random_seed"}
_FLOAT_FIELDS = {"base_lr", "gamma", "power", "momentum", "weight_decay", "clip_gradients"}
_STR_FIELDS = {"lr_policy", "regularization_type", "snapshot_prefix", "train_net", "net", "type"}


def read_solver(path_or_text: str | os.PathLike | Message, base_dir: str | os.PathLike | None = None
                ) -> SolverParameter:
    """Read a solver prototxt (path, text or parsed Message) into a :class:`SolverParameter`.

    Net paths are made absolute relative to ``base_dir`` (default: the solver
    file's directory). Unsupported solver types (Adam, ...) and unknown lr
    policies are errors naming the file.
    """
    if isinstance(path_or_text, Message):
        msg, src = path_or_text, ""
    else:
        msg = parse_prototxt(path_or_text, upgrade=False, schema_type="SolverParameter")
        src = os.fspath(path_or_text) if (isinstance(path_or_text, os.PathLike) or (
            isinstance(path_or_text, str) and os.path.exists(path_or_text))) else ""
    where = src or "<solver text>"
    sp = SolverParameter(source=os.path.abspath(src) if src else "")
    for k in _INT_FIELDS:
        if msg.has(k):
            sp.__dict__[k] = int(msg.get(k))
    for k in _FLOAT_FIELDS:
        if msg.has(k):
            sp.__dict__[k] = float(msg.get(k))
    for k in _STR_FIELDS:
        if msg.has(k):
            sp.__dict__[k] = str(msg.get(k))
    sp.stepvalue = [int(v) for v in msg.getall("stepvalue")]
    sp.test_iter = [int(v) for v in msg.getall("test_iter")]
    sp.test_net = [str(v) for v in msg.getall("test_net")]
    if msg.has("test_initialization"):
        sp.test_initialization = bool(msg.get("test_initialization"))
    if msg.has("snapshot_after_train"):
        sp.snapshot_after_train = bool(msg.get("snapshot_after_train"))
    if msg.has("snapshot_format"):
        sp.snapshot_format = str(msg.get("snapshot_format")).upper()
    # Legacy solver_type enum (SGD = 0) as Caffe's UpgradeSolverType reads it.
    if msg.has("solver_type") and not msg.has("type"):
        legacy = {"SGD": "SGD", "0": "SGD", "NESTEROV": "Nesterov", "1": "Nesterov",
                  "ADAGRAD": "AdaGrad", "2": "AdaGrad", "RMSPROP": "RMSProp", "3": "RMSProp",
                  "ADADELTA": "AdaDelta", "4": "AdaDelta", "ADAM": "Adam", "5": "Adam"}
        sp.type = legacy.get(str(msg.get("solver_type")).upper(), str(msg.get("solver_type")))
    if sp.type != "SGD":
        raise SolverError(f"{where}: solver type {sp.type!r} is not supported (only Caffe's SGD)")
    check_base_lr(sp.base_lr, f"{where}: base_lr")
    check_update_factors(sp, where=where)
    if sp.lr_policy not in LR_POLICIES:
        raise SolverError(f"{where}: unknown lr_policy {sp.lr_policy!r} (expected one of "
                          f"{', '.join(LR_POLICIES)})")
    if sp.regularization_type not in ("L1", "L2"):
        raise SolverError(f"{where}: unknown regularization_type {sp.regularization_type!r} "
                          "(expected L1 or L2)")
    if sp.iter_size < 1:
        raise SolverError(f"{where}: iter_size must be >= 1, got {sp.iter_size}")
    base = Path(base_dir) if base_dir is not None else (Path(src).parent if src else None)
    if base is not None:
        def res(p: str) -> str:
            return p if not p or os.path.isabs(p) else str((base / p).resolve())
        sp.train_net, sp.net = res(sp.train_net), res(sp.net)
        sp.test_net = [res(p) for p in sp.test_net]
    return sp


def learning_rate(sp: SolverParameter, it: int, current_step: int = 0) -> tuple[float, int]:
    """Caffe's ``SGDSolver::GetLearningRate`` at iteration ``it``.

    Returns ``(rate, current_step)``: the multistep policy is stateful in
    Caffe (``current_step_`` advances by at most one per call, and is saved in
    the solver state), so the updated step counter comes back too.

    * fixed: base_lr
    * step: base_lr * gamma ^ floor(it / stepsize)
    * exp: base_lr * gamma ^ it
    * inv: base_lr * (1 + gamma * it) ^ (-power)
    * multistep: base_lr * gamma ^ current_step, current_step advancing past each stepvalue
    * poly: base_lr * (1 - it / max_iter) ^ power
    * sigmoid: base_lr / (1 + exp(-gamma * (it - stepsize)))
    """
    f32, f64 = np.float32, np.float64
    with np.errstate(all="ignore"):   # overflow to inf, 0/0 to NaN: as C++ float math gives them
        base_lr, gamma, power = f32(sp.base_lr), f32(sp.gamma), f32(sp.power)
        pol = sp.lr_policy
        if pol == "fixed":
            rate = base_lr
        elif pol == "step":
            if sp.stepsize <= 0:
                raise SolverError(f"{sp.source or '<solver>'}: lr_policy step needs stepsize > 0")
            current_step = it // sp.stepsize
            rate = base_lr * np.power(f64(gamma), current_step)   # std::pow(float, int) is double
        elif pol == "exp":
            rate = base_lr * np.power(f64(gamma), it)
        elif pol == "inv":
            rate = base_lr * np.power(f32(1) + gamma * f32(it), -power)   # float pow
        elif pol == "multistep":
            if current_step < len(sp.stepvalue) and it >= sp.stepvalue[current_step]:
                current_step += 1
            rate = base_lr * np.power(f64(gamma), current_step)
        elif pol == "poly":
            if sp.max_iter <= 0:
                raise SolverError(f"{sp.source or '<solver>'}: lr_policy poly needs max_iter > 0")
            # past max_iter the base is negative: NaN for a fractional power, never complex
            rate = base_lr * np.power(f32(1) - f32(it) / f32(sp.max_iter), power)
        elif pol == "sigmoid":
            rate = base_lr * (f32(1) / (f32(1) + np.exp(-gamma * (f32(it) - f32(sp.stepsize)))))
        else:
            raise SolverError(f"{sp.source or '<solver>'}: unknown lr_policy {pol!r}")
        return float(f32(rate)), current_step


def check_base_lr(value: Any, what: str) -> float:
    """``value`` as Caffe's float base_lr, refused unless finite and > 0 (``what`` names where it came from).

    Caffe takes any float and trains to NaN; a zero or negative rate never
    descends. The check is on the float32 value Caffe would hold (1e39 is inf there).
    """
    with np.errstate(all="ignore"):
        v = float(np.float32(value))
    if not (math.isfinite(v) and v > 0):
        raise SolverError(f"{what} must be a finite number > 0 (a float32, Caffe's type), got {value!r}"
                          + (f" ({v} as float32)" if math.isfinite(float(value)) and v != value else ""))
    return v


def check_update_factors(sp: "SolverParameter", groups: Iterable[dict] = (), where: str = "") -> None:
    """Refuse a non-finite momentum, weight_decay or clip_gradients, and a non-finite lr_mult or
    decay_mult of a parameter: each multiplies every update, so one NaN or inf there makes every
    weight it touches NaN at the first step (Caffe trains on in NaN; this is said at set-up)."""
    where = where or sp.source or "<solver>"
    for k in ("momentum", "weight_decay", "clip_gradients"):
        v = float(getattr(sp, k))
        if not math.isfinite(v):
            raise SolverError(f"{where}: {k} must be a finite number, got {v}")
    for g in groups:
        for k in ("lr_mult", "decay_mult"):
            v = float(g.get(k, 1.0))
            if not math.isfinite(v):
                raise SolverError(f"{where}: parameter {g.get('name', '?')}: {k} must be a finite number, got {v}")


def param_groups(net: Any, names: Iterable[str] | None = None) -> list[dict]:
    """One optimizer param group per learnable Caffe parameter blob of ``net``.

    Uses ``net.params[layer]`` (Parameters in Caffe order) and
    ``net.param_specs[layer]`` ((lr_mult, decay_mult) per blob). A parameter
    shared between layers (ParamSpec ``name``; the same tensor object) is
    listed once, under its first owner, as Caffe's ``learnable_params_`` is.
    Groups are in net order: the order of Caffe's history blobs.
    """
    groups: list[dict] = []
    seen: set[int] = set()
    specs = getattr(net, "param_specs", {}) or {}
    for layer in (names if names is not None else net.params.keys()):
        blobs = net.params[layer]
        spec = list(specs.get(layer, []))
        for i, p in enumerate(blobs):
            if id(p) in seen:
                continue
            seen.add(id(p))
            lr_mult, decay_mult = spec[i] if i < len(spec) else (1.0, 1.0)
            groups.append({"params": [p], "lr_mult": float(lr_mult), "decay_mult": float(decay_mult),
                           "name": f"{layer}/{i}"})
    return groups


class CaffeSGD(torch.optim.Optimizer):
    """Caffe's SGDSolver update as a ``torch.optim.Optimizer``.

    ``params``: param groups as from :func:`param_groups` (keys ``params``,
    ``lr_mult``, ``decay_mult``, optional ``name``), or plain tensors
    (lr_mult = decay_mult = 1). Hyper-parameters come from ``solver`` (a
    :class:`SolverParameter`) or keyword overrides.

    Call ``step()`` after the ``iter_size`` backward passes of one Caffe
    iteration have accumulated their gradients in ``.grad``; it applies one
    Caffe update at iteration ``self.iter`` and advances it. A parameter
    whose ``.grad`` is None counts as a zero gradient (Caffe's diff of an
    unused parameter is zero; decay still applies). A parameter with
    ``lr_mult`` 0 never learns and its gradient counts as zero in gradient
    clipping, as in Caffe (which does not even compute it).

    The summed gradients are divided by ``iter_size`` (:attr:`grad_divisor`);
    in a distributed run :func:`sync_gradients` has already averaged them over
    the processes, as Caffe's multi-GPU solver did.
    """

    def __init__(self, params: Iterable[Any], solver: SolverParameter | None = None, **overrides: Any):
        sp = dataclasses.replace(solver) if solver is not None else SolverParameter()
        for k, v in overrides.items():
            if not hasattr(sp, k):
                raise TypeError(f"CaffeSGD: unknown solver field {k!r}")
            setattr(sp, k, v)
        if sp.iter_size < 1:
            raise SolverError(f"iter_size must be >= 1, got {sp.iter_size}")
        check_base_lr(sp.base_lr, f"{sp.source or '<solver>'}: base_lr")
        self.solver = sp
        params = list(params)
        if params and not isinstance(params[0], dict):
            params = [{"params": [p], "lr_mult": 1.0, "decay_mult": 1.0, "name": str(i)}
                      for i, p in enumerate(params)]
        defaults = dict(lr_mult=1.0, decay_mult=1.0, name="")
        super().__init__(params, defaults)
        for i, g in enumerate(self.param_groups):
            g.setdefault("name", str(i))
        check_update_factors(sp, self.param_groups)
        self.iter = 0           # Caffe's iter_: the iteration the next step() applies
        self.current_step = 0   # Caffe's current_step_ (multistep policy)
        self.last_rate = float("nan")

    # -- Caffe's ApplyUpdate
    def params_in_order(self) -> list[torch.Tensor]:
        """Every parameter, in history order (one per group for :func:`param_groups`)."""
        return [p for g in self.param_groups for p in g["params"]]

    def history(self, p: torch.Tensor) -> torch.Tensor:
        st = self.state[p]
        if "history" not in st:
            st["history"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st["history"]

    @torch.no_grad()
    def clip_gradients(self) -> float:
        """Caffe's ClipGradients; returns the L2 norm of all diffs before clipping (or -1)."""
        clip = self.solver.clip_gradients
        if clip < 0:
            return -1.0
        sumsq = 0.0
        for g in self.param_groups:
            if g["lr_mult"] == 0:
                continue
            for p in g["params"]:
                if p.grad is not None:
                    sumsq += float(p.grad.double().pow(2).sum())
        norm = math.sqrt(sumsq)
        if norm > clip:
            scale = _f32(clip / norm)
            for g in self.param_groups:
                if g["lr_mult"] == 0:
                    continue
                for p in g["params"]:
                    if p.grad is not None:
                        p.grad.mul_(scale)
        return norm

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sp = self.solver
        rate, current_step = learning_rate(sp, self.iter, self.current_step)
        if not math.isfinite(rate):
            # Caffe would go on and write NaN weights; nothing is updated here
            raise SolverError(f"{sp.source or '<solver>'}: lr_policy {sp.lr_policy} gives learning rate {rate} at "
                              f"iteration {self.iter} (base_lr {sp.base_lr:g}, gamma {sp.gamma:g}, power "
                              f"{sp.power:g}, stepsize {sp.stepsize}, max_iter {sp.max_iter}): not a finite "
                              "number, training stops before the weights become NaN")
        self.current_step = current_step
        self.last_rate = rate
        self.clip_gradients()
        divisor = self.grad_divisor
        # Caffe multiplies by the float reciprocal: diff *= Dtype(1) / iter_size.
        norm = _f32(1.0 / divisor) if divisor != 1 else 1.0
        momentum = _f32(sp.momentum)
        wd = _f32(sp.weight_decay)
        l1 = sp.regularization_type == "L1"
        for g in self.param_groups:
            local_rate = _f32(rate * _f32(g["lr_mult"]))
            local_decay = _f32(wd * _f32(g["decay_mult"]))
            for p in g["params"]:
                diff = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
                if g["lr_mult"] == 0:
                    diff.zero_()
                if norm != 1.0:
                    diff.mul_(norm)
                if local_decay != 0:
                    if l1:
                        diff.add_(torch.sign(p), alpha=local_decay)
                    else:
                        diff.add_(p, alpha=local_decay)
                h = self.history(p)
                # caffe_cpu_axpby: history = momentum * history, then += local_rate * diff
                h.mul_(momentum).add_(diff, alpha=local_rate)
                # Blob::Update: data -= diff, where diff now holds the history.
                p.sub_(h)
        self.iter += 1
        return loss

    @property
    def grad_divisor(self) -> int:
        return int(self.solver.iter_size)

    # -- state: iter, current_step and history, in torch's and Caffe's forms
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        sd = super().state_dict()
        sd["caffe"] = {"iter": self.iter, "current_step": self.current_step}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        sd = dict(state_dict)
        caffe = sd.pop("caffe", {"iter": 0, "current_step": 0})
        super().load_state_dict(sd)
        self.iter = int(caffe["iter"])
        self.current_step = int(caffe["current_step"])

    def history_arrays(self) -> list[np.ndarray]:
        """Every history blob as float32 numpy, in parameter order (zeros if never stepped)."""
        return [self.history(p).detach().cpu().numpy().astype(np.float32, copy=True)
                for p in self.params_in_order()]

    def save_state(self, path: str | os.PathLike, learned_net: str = "",
                   extra: dict[str, np.ndarray] | None = None) -> None:
        """Write the solver state atomically.

        ``.h5`` (``.solverstate.h5``): Caffe's HDF5 solver-state layout, which
        Caffe itself can restore: datasets ``iter`` (int32 [1]),
        ``learned_net`` (string), ``current_step`` (int32 [1]) and group
        ``history`` with datasets ``0``, ``1``, ... in parameter order. We add
        ``param_names`` (the ``layer/i`` of each history blob) so a restore
        can check it is the same net, and ``extra/<key>`` arrays.
        ``.npz``: the same keys in a numpy archive (no pickled objects).
        Any other name (Caffe's ``.solverstate``): Caffe's binary SolverState
        message (iter, learned_net, history, current_step), which Caffe
        restores from any name not ending in ``.h5``; it has no place for
        ``param_names`` or ``extra``, so those are not written.
        """
        hist = self.history_arrays()
        names = [str(g.get("name", i)) for i, g in enumerate(self.param_groups) for _ in g["params"]]
        write_state(path, SolverStateContents(self.iter, learned_net, hist, self.current_step), names, extra)

    def load_state(self, path: str | os.PathLike) -> dict[str, Any]:
        """Restore iter, current_step and every history blob from :meth:`save_state`'s file
        (or from Caffe's own ``.solverstate`` / ``.solverstate.h5``).

        Checks the number and shapes of the history blobs (and the parameter
        names when the file has them) and raises :class:`SolverError` naming
        the file and blob on a mismatch. Returns ``{"learned_net": str,
        "extra": {key: array}}``.
        """
        path = os.fspath(path)
        params = self.params_in_order()
        names = [str(g.get("name", i)) for i, g in enumerate(self.param_groups) for _ in g["params"]]
        try:
            sf = read_state(path)
        except OSError as e:
            raise SolverError(f"{path}: cannot read the solver state ({e.strerror or e})") from None
        except FcnReproError as e:
            desc = {"binary": "a binary Caffe", "h5": "an HDF5", "npz": "an .npz"}[state_format(path, sniff=True)]
            raise SolverError(f"not {desc} solver state we can use: {e.reason}", e.filename, offset=e.offset,
                              layer=e.layer, blob=e.blob) from None
        st, file_names, extra = sf.state, sf.param_names, sf.extra
        it, cs, learned, hist = st.iter, st.current_step, st.learned_net, st.history
        if len(hist) != len(params):
            raise SolverError(f"{path}: solver state has {len(hist)} history blobs, the net has "
                              f"{len(params)} learnable parameter blobs")
        if file_names is not None and file_names != names:
            bad = next(i for i, (a, b) in enumerate(zip(file_names, names)) if a != b) \
                if len(file_names) == len(names) else 0
            raise SolverError(f"{path}: history blob {bad} belongs to {file_names[bad]!r}, the net's "
                              f"parameter {bad} is {names[bad]!r}: not the same net")
        for i, (h, p) in enumerate(zip(hist, params)):
            if tuple(h.shape) != tuple(p.shape) and h.size != p.numel():
                raise SolverError(f"{path}: history blob {i} ({names[i]}) has shape {tuple(h.shape)}, "
                                  f"the parameter has shape {tuple(p.shape)}")
            self.state[p]["history"] = torch.from_numpy(np.ascontiguousarray(h).reshape(p.shape)).to(
                dtype=p.dtype, device=p.device)
        self.iter, self.current_step = it, cs
        return {"learned_net": learned, "extra": extra}


@torch.no_grad()
def sync_gradients(params: Sequence[torch.Tensor], group: Any = None) -> int:
    """Average the accumulated gradients over all processes of a torch.distributed run.

    Mirrors Caffe's multi-GPU solver (NCCL all-reduce SUM of the diffs, then
    scale by 1 / solver_count) so that N processes each accumulating
    ``iter_size`` gradients equal one process with ``iter_size * N``: the
    optimizer's own division by ``iter_size`` then gives
    ``sum of all N * iter_size gradients / (N * iter_size)``.
    Gradients are flattened into one buffer per dtype/device for a single
    all-reduce. A parameter with no gradient contributes zeros (and gets a
    zero ``.grad``), so every process takes part in the same collective.
    Returns the world size (1 without an initialised process group).
    """
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    world = dist.get_world_size(group)
    if world == 1:
        return 1
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    scale = _f32(1.0 / world)
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat.mul_(scale)
        off = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[off:off + n].view_as(g))
            off += n
    return world


class SmoothedLoss:
    """Caffe's ``UpdateSmoothedLoss``: the mean of the last ``average_loss`` losses."""

    def __init__(self, average_loss: int = 1, history: Sequence[float] = ()):
        self.n = max(1, int(average_loss))
        self.losses: list[float] = [float(x) for x in history][-self.n:]

    def update(self, loss: float) -> float:
        self.losses.append(float(loss))
        if len(self.losses) > self.n:
            self.losses.pop(0)
        return self.value

    @property
    def value(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else float("nan")
