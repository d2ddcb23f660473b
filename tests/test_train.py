"""Training as Caffe trained: Caffe-fixture replay, surgery, the train CLI end to end.

The judge is ``<net>.train.npz`` of the Caffe fixtures: from the caffemodel
weights and the fed input, Caffe's SGDSolver ran two iterations
(``after2/<layer>/<i>``). Parameters barely move relative to their size at
base_lr 1e-7, so besides the parameters themselves (1e-5 relative, the
issue's bar) the *update* ``after2 - initial`` is compared with Caffe's.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import caffe_fixture
from fcn_repro.caffe import load_weights, save_weights
from fcn_repro.caffe.fillers import bilinear_kernel
from fcn_repro.caffe.layers.pooling import Pooling
from fcn_repro.caffe.layers.relu import ReLU
from fcn_repro.caffe.net import Net
from fcn_repro.solver import CaffeSGD, param_groups, read_solver
from fcn_repro.data.layers import find_data_layer
from fcn_repro.sources import DatasetSource, draw_order
from fcn_repro.train import main
from fcn_repro.trainer import interp_layers, surgery


def _rel(a, b):
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def _fixture_inputs(z):
    return {k[len("input/"):]: torch.from_numpy(z[k]) for k in z.files if k.startswith("input/")}


def _update_errors(initial, ours, z):
    """Per blob: (param rel error, update rel error, update error in ulps of the parameter)."""
    out = {}
    for k in z.files:
        if not k.startswith("after2/"):
            continue
        _, layer, i = k.split("/")
        b = z[k].astype(np.float64)
        a = ours[layer][int(i)].astype(np.float64)
        a0 = initial[layer][int(i)].astype(np.float64)
        du_caffe, du_ours = b - a0, a - a0
        err = np.abs(du_ours - du_caffe).max()
        # float32 parameters carry the update with a rounding of half an ulp
        # of the parameter: an update error below a few ulps is no error.
        ulp = float(np.spacing(np.float32(np.abs(a0).max())))
        scale = np.abs(du_caffe).max()
        out[k] = (_rel(a, b), err / scale if scale > 0 else (0.0 if err == 0 else np.inf), err / ulp)
    return out


# fcn8s runs through the CLI in test_feed_cli_replays_caffe_run; fcn32s and
# nyud-fcn32s-color-hha in test_two_sgd_iterations_near_ties below.
_NETS = ["fcn8s-atonce", "fcn16s", "fcn-alexnet", "pascalcontext-fcn8s", "siftflow-fcn8s"]


@pytest.mark.parametrize("name", _NETS)
def test_two_sgd_iterations_match_caffe(name, capsys):
    solver_file = caffe_fixture(f"{name}.solver.prototxt")
    weights = caffe_fixture(f"{name}.caffemodel")
    z = np.load(caffe_fixture(f"{name}.train.npz"))
    caffe_fixture(f"{name}.train.prototxt")
    sp = read_solver(solver_file)
    net = Net(sp.train_net_path, weights=weights, phase="TRAIN")
    initial = {n: [p.detach().numpy().copy() for p in ps] for n, ps in net.params.items()}
    opt = CaffeSGD(param_groups(net), sp)
    inputs = _fixture_inputs(z)
    for it in range(2):
        opt.zero_grad(set_to_none=True)
        net(**inputs)
        net.loss.backward()
        opt.step()
    ours = {n: [p.detach().numpy() for p in ps] for n, ps in net.params.items()}
    errs = _update_errors(initial, ours, z)
    assert len(errs) == sum(len(v) for v in net.params.values())
    worst_p = max(e[0] for e in errs.values())
    worst_u = max(e[1] for e in errs.values())
    worst_ulp = max(e[2] for e in errs.values())
    with capsys.disabled():
        print(f"\n{name}: after2 params worst rel {worst_p:.2e}; update (after2 - initial) worst rel "
              f"{worst_u:.2e}, worst abs error {worst_ulp:.2f} ulp of the parameter")
    assert worst_p < 1e-5
    for k, (p_rel, u_rel, u_ulp) in errs.items():
        # The update within 1e-4 relative, or within 2 ulps of the float32
        # parameter (the resolution at which after2 itself is stored).
        assert u_rel < 1e-4 or u_ulp <= 2.0, (k, u_rel, u_ulp)


# ------------------------------------------------ float32 near ties (fcn32s, nyud)

_GRAD_TOL = 1e-5   # iteration-1 gradients: the conformance bar
_NEAR = 1e-6       # "within float32 rounding": |x| (ReLU) or the max-pool gap <= 1e-6 max|bottom|


def _after2_bad(initial, ours, z) -> list[str]:
    """The after2 blobs outside the strict bar of test_two_sgd_iterations_match_caffe."""
    return sorted(k for k, (p, u, ulp) in _update_errors(initial, ours, z).items()
                  if not (p < 1e-5 and (u < 1e-4 or ulp <= 2.0)))


def _grad_bad(grads, z) -> list[str]:
    """The iteration-1 gradients (``grad/<layer>/<i>``) outside the conformance bar."""
    bad = []
    for k in z.files:
        if k.startswith("grad/"):
            _, layer, i = k.split("/")
            g = grads[layer][int(i)]
            got = np.zeros_like(z[k]) if g is None else g
            if np.abs(got.astype(np.float64) - z[k]).max() > _GRAD_TOL * np.abs(z[k]).max():
                bad.append(k)
    return sorted(bad)


def _max_windows(m, x: torch.Tensor):
    """Caffe's MAX windows of Pooling layer ``m`` over ``x`` (N, C, H, W).

    Returns (values (N, C, oh, ow, kh*kw), -inf outside the image; flat index
    h*W + w of each window element (oh, ow, kh*kw)), elements in Caffe's scan order.
    """
    H, W = x.shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = m.kernel, m.stride, m.pad
    oh, ow = m.out_size(H, W)
    r = torch.arange(oh)[:, None] * sh - ph + torch.arange(kh)  # (oh, kh)
    c = torch.arange(ow)[:, None] * sw - pw + torch.arange(kw)  # (ow, kw)
    valid = (((r >= 0) & (r < H))[:, None, :, None] & ((c >= 0) & (c < W))[None, :, None, :]).reshape(oh, ow, -1)
    flat = (r.clamp(0, H - 1)[:, None, :, None] * W + c.clamp(0, W - 1)[None, :, None, :]).reshape(oh, ow, -1)
    return x.flatten(2)[:, :, flat].masked_fill(~valid, float("-inf")), flat


def _near_ties(m, x: torch.Tensor, g: torch.Tensor) -> list[dict]:
    """The decisions of ReLU / MAX Pooling layer ``m`` that float32 rounding can take either way.

    ``x``: the layer's bottom (N, C, H, W), ``g``: the loss gradient of its top.
    ReLU: inputs with |x| <= _NEAR max|x| (the mask x > 0 may differ from
    Caffe's). MAX: windows whose best and runner-up differ by 0 < gap <= _NEAR
    max|x| (exact ties are excluded: Caffe and PyTorch both keep the first
    maximum in scan order, and the tied values come from identical arithmetic).
    Elements with bit-identical values in one channel (the constant regions of
    conv1_1's pad 100) come from identical arithmetic and round alike, so each
    such group is one decision. Each decision: ``points`` (its toggles for
    :func:`_replay`), ``delta`` (N, C, H, W: how taking it the other way changes
    the gradient reaching ``x``), ``closeness`` (|x| or the gap, / max|x|),
    ``values``.
    """
    x = x.detach()
    mx = float(x.abs().max())
    groups: dict = {}
    if isinstance(m, ReLU):
        s = m.negative_slope
        for e in torch.nonzero(x.abs() <= _NEAR * mx).tolist():
            e = tuple(e)
            v = float(x[e])
            d = groups.setdefault((e[1], v), {"points": [], "delta": torch.zeros_like(x),
                                              "closeness": abs(v) / mx, "values": (v,)})
            d["points"].append(e)
            # passing (x > 0) -> blocked: the gradient loses (1 - s) g; blocked -> passing gains it
            d["delta"][e] += (1.0 - s) * float(g[e]) * (1.0 if v <= 0 else -1.0)
        return list(groups.values())
    vals, flat = _max_windows(m, x)
    a = vals.argmax(-1, keepdim=True)  # the first maximum, as Caffe's `>` scan
    va = vals.gather(-1, a)
    b = vals.scatter(-1, a, float("-inf")).argmax(-1, keepdim=True)
    vb = vals.gather(-1, b)
    gap = (va - vb).squeeze(-1)
    W = x.shape[3]
    for n, c, i, j in torch.nonzero((gap > 0) & (gap <= _NEAR * mx)).tolist():
        fa, fb = int(flat[i, j, a[n, c, i, j, 0]]), int(flat[i, j, b[n, c, i, j, 0]])
        key = (c, float(va[n, c, i, j, 0]), float(vb[n, c, i, j, 0]))
        d = groups.setdefault(key, {"points": [], "delta": torch.zeros_like(x),
                                    "closeness": float(gap[n, c, i, j]) / mx, "values": key[1:]})
        d["points"].append((n, c, i, j, fb // W, fb % W))
        gw = float(g[n, c, i, j])
        d["delta"][n, c, fa // W, fa % W] -= gw
        d["delta"][n, c, fb // W, fb % W] += gw
    return list(groups.values())


def _replay(name: str, toggles: dict | None = None, capture: tuple | None = None) -> dict:
    """Caffe's two SGD iterations on ``name``'s fixture, some float32 decisions taken the other way.

    ``toggles``: {(iteration, layer): [point, ...]}: at iteration 1 or 2, ReLU
    ``layer`` inverts its mask at the points (n, c, h, w); MAX Pooling ``layer``
    passes window (n, c, i, j) the bottom element (h, w) instead of its
    argmax, for points (n, c, i, j, h, w) (forward value and gradient, as
    Caffe does with the element it found largest).
    ``capture``: (iteration, producer layer P): at that iteration, the near
    ties of the ReLU / MAX Pooling layers reading P's top (:func:`_near_ties`),
    each with ``effect``: its change of P's parameter gradients (float64).
    Returns initial / after2 params, iteration-1 gradients, the net, rates, ties.
    """
    toggles = toggles or {}
    z = np.load(caffe_fixture(f"{name}.train.npz"))
    caffe_fixture(f"{name}.train.prototxt")
    sp = read_solver(caffe_fixture(f"{name}.solver.prototxt"))
    net = Net(sp.train_net_path, weights=caffe_fixture(f"{name}.caffemodel"), phase="TRAIN")
    initial = {n: [p.detach().numpy().copy() for p in ps] for n, ps in net.params.items()}
    state = {"it": 0}
    watched = set(l for _, l in toggles)
    seen: dict = {}
    if capture:
        top = net.layer(capture[1]).top_names[0]
        for n in net.layer_names:
            m = net.layer(n)
            if m.bottom_names == [top] and (isinstance(m, ReLU) or (isinstance(m, Pooling) and m.method == "MAX")):
                watched.add(n)
    for n in watched:
        m = net.layer(n)

        def forward(x, inplace=False, _m=m, _orig=m.forward):
            pts = toggles.get((state["it"], _m.name), [])
            if isinstance(_m, ReLU) and pts:
                mask = x > 0
                for e in pts:
                    mask[e] = ~mask[e]
                y = torch.where(mask, x, x * _m.negative_slope)
            else:
                y = _orig(x, False)[0]
                for nn_, c, i, j, h, w in (pts if isinstance(_m, Pooling) else ()):
                    y = y.index_put(tuple(torch.tensor([v]) for v in (nn_, c, i, j)), x[nn_, c, h, w].reshape(1))
            if capture and state["it"] == capture[0] and y.requires_grad:
                seen[_m.name] = [x, None]
                y.register_hook(lambda gr, k=_m.name: seen[k].__setitem__(1, gr.detach()))
            return [y]
        m.forward = forward
    opt = CaffeSGD(param_groups(net), sp)
    inputs = _fixture_inputs(z)
    grads1, ties = None, []
    for it in (1, 2):
        state["it"] = it
        opt.zero_grad(set_to_none=True)
        net(**inputs)
        net.loss.backward(retain_graph=bool(capture and capture[0] == it))
        if it == 1:
            grads1 = {n: [None if p.grad is None else p.grad.numpy().copy() for p in ps]
                      for n, ps in net.params.items()}
        if capture and capture[0] == it:
            params = net.params[capture[1]]
            for lname, (x, g) in seen.items():
                for d in _near_ties(net.layer(lname), x, g):
                    eff = torch.autograd.grad(x, params, d.pop("delta"), retain_graph=True, allow_unused=True)
                    d["effect"] = [np.zeros(p.shape) if e is None else e.double().numpy() for p, e in zip(params, eff)]
                    d["layer"] = lname
                    ties.append(d)
        opt.step()
    rates = {g["name"]: float(np.float32(np.float32(sp.base_lr) * np.float32(g["lr_mult"]))) for g in opt.param_groups}
    return {"initial": initial, "after2": {n: [p.detach().numpy().copy() for p in ps] for n, ps in net.params.items()},
            "grads1": grads1, "net": net, "rates": rates, "ties": ties}


# net -> (iteration, P): the layer whose top carries the decisive float32 near tie.
_NEAR_TIES = {"fcn32s": (2, "conv2_2"), "nyud-fcn32s-color-hha": (1, "conv4_2color")}


@pytest.mark.parametrize("name", sorted(_NEAR_TIES))
def test_two_sgd_iterations_near_ties(name, capsys):
    """Caffe's two iterations, where one float32 rounding decides a branch.

    Each of these fixtures hinges on a decision within float32 rounding of a
    tie, which float32 Caffe (im2col + GEMM sums) and we (other summation
    orders) may take differently; the two choices give gradients that differ
    far beyond the tolerance below that point:

    * fcn32s, iteration 2, pool2: window (c 3, 30, 43) compares conv2_2 at
      rows 60 and 61, column 86 (27.588 both; in float64 row 61 is larger by
      9.5e-6: 5 ulps of the value, 4e-8 of max|conv2_2|). Caffe's float32
      gives the window's gradient to row 60. Ours follows the ulp-level
      differences of iteration 1: with the fcn_repro.ops extension row 60
      wins by 4 ulps, with the pure-PyTorch ops row 61 by 7 (as in float64).
      Taken the other way, conv1_1..conv2_2's second update is off by up
      to 1.5e-2 relative (after2 2.7e-4) while every deeper layer matches.
      The pad-100 constant regions are not the cause: their exact max-pool
      ties are broken alike by Caffe and PyTorch (first in scan order, and
      any element of such a window has the same receptive field), and the
      closest constant-region ReLU input (relu2_2 channel 2, row 1: 139
      elements at +5.7e-5, 2.5e-7 of the max) rounds alike in Caffe.
    * nyud-fcn32s-color-hha, iteration 1, relu4_2color: input (c 5, 13, 14)
      = -3.6e-5, 5.8e-7 of max|x|, that Caffe's float32 puts above 0 (as
      test_conformance's test_train_loss_and_gradients finds); below it every
      colour-trunk gradient is ~1e-2 off, and through iteration 2 the rest
      of the net follows (after2 5e-4).

    The test finds the near ties on the top of the given layer at the given
    iteration (ReLU inputs or max-pool gaps within 1e-6 of the blob's max),
    predicts each one's effect on that layer's gradient by autograd, takes
    the ones that explain the difference from Caffe the other way, and
    requires the replay with them to match Caffe strictly (iteration-1
    gradients 1e-5, after2 as test_two_sgd_iterations_match_caffe). Where our
    rounding already agrees with Caffe's, it takes the closest decisive near
    tie the other way instead and requires Caffe's fixture to reject that:
    either way exactly one of the two choices reproduces Caffe.
    """
    it, producer = _NEAR_TIES[name]
    z = np.load(caffe_fixture(f"{name}.train.npz"))
    nat = _replay(name, capture=(it, producer))
    net, ties = nat["net"], nat["ties"]
    assert ties, (name, "no float32 near tie on the top of", producer, "at iteration", it)
    # Residual of the producer's parameters against Caffe, and its tolerance, in the
    # quantity compared at that iteration: the gradient (1) or after2 (2, which moves
    # by -rate * lr_mult * delta_gradient: the second gradient enters the update linearly).
    res, tol, scale = [], [], []
    for i in range(len(net.params[producer])):
        if it == 1:
            ref = z[f"grad/{producer}/{i}"].astype(np.float64)
            res.append(ref - nat["grads1"][producer][i])
            tol.append(_GRAD_TOL * np.abs(ref).max())
            scale.append(1.0)
        else:
            ref = z[f"after2/{producer}/{i}"].astype(np.float64)
            a0 = nat["initial"][producer][i].astype(np.float64)
            res.append(ref - nat["after2"][producer][i])
            tol.append(max(1e-4 * np.abs(ref - a0).max(), 2.0 * float(np.spacing(np.float32(np.abs(a0).max())))))
            scale.append(-nat["rates"][f"{producer}/{i}"])
    for t in ties:
        t["pred"] = [s * e for s, e in zip(scale, t["effect"])]
        t["decisive"] = max(np.abs(p).max() / tl for p, tl in zip(t["pred"], tol))
    # Take the other way the near ties that explain the residual (greedy, as the builder's
    # gradient test does for ReLUs).
    chosen = []
    for _ in range(3):
        if all(np.abs(r).max() <= tl for r, tl in zip(res, tol)):
            break
        best = min((t for t in ties if t not in chosen),
                   key=lambda t: max(np.abs(r - p).max() / tl for r, p, tl in zip(res, t["pred"], tol)))
        chosen.append(best)
        res = [r - p for r, p in zip(res, best["pred"])]
    assert all(np.abs(r).max() <= tl for r, tl in zip(res, tol)), \
        (name, "differs from Caffe and no float32 near tie explains it")

    def toggles(ts):
        out: dict = {}
        for t in ts:
            out.setdefault((it, t["layer"]), []).extend(t["points"])
        return out

    def bad(run):
        return (_grad_bad(run["grads1"], z), _after2_bad(run["initial"], run["after2"], z))

    if chosen:
        caffe_run, other = _replay(name, toggles(chosen)), nat
        flipped = chosen
    else:
        # Ours rounds as Caffe did: show that the fixture pins the closest decisive tie.
        decisive = [t for t in ties if t["decisive"] > 1.0]
        assert decisive, (name, "matches Caffe, but no near tie on", producer, "matters: nothing to demonstrate")
        flipped = [min(decisive, key=lambda t: t["closeness"])]
        caffe_run, other = nat, _replay(name, toggles(flipped))
    with capsys.disabled():
        kind = "ours differs from Caffe" if chosen else "ours agrees with Caffe"
        for t in flipped:
            print(f"\n{name}: {kind} at iteration {it}, {t['layer']} {t['points'][:3]}"
                  f"{' ...' if len(t['points']) > 3 else ''} ({len(t['points'])} elements): values {t['values']}, "
                  f"{t['closeness']:.2e} of the blob max from the tie; the other way moves {producer} by "
                  f"{t['decisive']:.0f}x the tolerance")
    # Caffe's choice: everything strict.
    assert bad(caffe_run) == ([], []), (name, bad(caffe_run))
    # The other choice: off, and (at the iteration where it is taken) only at or below the producer.
    g_bad, a_bad = bad(other)
    off = g_bad if it == 1 else a_bad
    assert off, (name, "the other choice of the near tie also matches Caffe")
    below = set(net.layer_names[:net.layer_names.index(producer) + 1])
    assert {k.split("/")[1] for k in off} <= below, (name, off)
    assert all(t["closeness"] <= _NEAR for t in flipped)


def test_feed_cli_replays_caffe_run(tmp_path):
    solver = caffe_fixture("fcn8s.solver.prototxt")
    caffe_fixture("fcn8s.train.prototxt")
    feed = caffe_fixture("fcn8s.train.npz")
    weights = caffe_fixture("fcn8s.caffemodel")
    z = np.load(feed)
    initial = load_weights(weights)
    for suffix in (".caffemodel",):
        out = tmp_path / f"after2{suffix}"
        rc = main(["--solver", str(solver), "--weights", str(weights), "--feed", str(feed), "--iters", "2",
                   "--save", str(out), "--device", "cpu", "--no-progress"])
        assert rc == 0
        got = load_weights(out)
        errs = _update_errors(initial, got, z)
        assert max(e[0] for e in errs.values()) < 1e-5
        assert all(u < 1e-4 or ulp <= 2.0 for _, u, ulp in errs.values())


def test_feed_cli_errors(tmp_path, capsys):
    solver = caffe_fixture("fcn8s.solver.prototxt")
    caffe_fixture("fcn8s.train.prototxt")
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"input/data": np.zeros((1, 3, 8, 8), np.float32)})
    assert main(["--solver", str(solver), "--feed", str(bad), "--iters", "1", "--no-progress"]) == 2
    assert "label" in capsys.readouterr().err
    assert main(["--solver", str(solver), "--iters", "1", "--no-progress"]) == 2
    assert "--data" in capsys.readouterr().err
    # the feed is read through fcn_repro.npz: a member holding Python objects is refused, never unpickled
    evil = tmp_path / "evil.npz"
    np.savez(evil, **{"input/data": np.array([{"a": 1}], dtype=object),
                      "input/label": np.zeros((1, 1, 8, 8), np.float32)})
    assert main(["--solver", str(solver), "--feed", str(evil), "--iters", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(evil) in err[0] and "pickles are never loaded" in err[0]


# ------------------------------------------------------------------ surgery

def tiny_nets(d: Path, name: str = "fcn32s", base_lr: float = 1e-6, iter_size: int = 1,
              extra: str = "", dropout_ratio: float = 0.5) -> Path:
    """Reduced-width train/deploy/val prototxts (as `python -m fcn_repro.netspec` writes
    them, Python data layers included) and a solver.prototxt in ``d``."""
    from fcn_repro.caffe import fcn_nets
    from fcn_repro.caffe.prototxt import format_text
    w = fcn_nets.VGG16_FIXTURE_WIDTHS
    d.mkdir(parents=True, exist_ok=True)
    for phase in ("train", "val", "deploy"):
        (d / f"{phase}.prototxt").write_text(format_text(fcn_nets.build_net(
            name, phase, widths=w, input_shape=(8, 8), dropout_ratio=dropout_ratio)))
    (d / "solver.prototxt").write_text(
        'train_net: "train.prototxt"\ntest_net: "val.prototxt"\n'
        f"base_lr: {base_lr}\nmomentum: 0.9\nweight_decay: 0.0005\nlr_policy: \"fixed\"\n"
        f"iter_size: {iter_size}\nmax_iter: 100\ndisplay: 1\naverage_loss: 3\nsnapshot: 0\n"
        'snapshot_prefix: "snapshot/train"\ntest_interval: 999999999\ntest_initialization: false\n'
        + extra)
    return d / "solver.prototxt"


def fake_vgg(net: Net, seed: int = 0) -> dict:
    """A "VGG-16 classifier" for a reduced FCN trunk: convs, fc6/fc7 as InnerProduct
    blobs in Caffe's V1 legacy 4-D shapes (1, 1, out, in), and an fc8 FCN has no use for."""
    rng = np.random.default_rng(seed)
    w = {}
    for name, ps in net.params.items():
        if name.startswith("conv"):
            w[name] = [rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.1 for p in ps]
    fc6 = net.params["fc6"][0]
    c, k = fc6.shape[1], fc6.shape[2]
    w["fc6"] = [rng.standard_normal((1, 1, fc6.shape[0], c * k * k)).astype(np.float32) * 0.05,
                rng.standard_normal((1, 1, 1, fc6.shape[0])).astype(np.float32) * 0.1]
    n7 = net.params["fc7"][0].shape[0]
    w["fc7"] = [rng.standard_normal((1, 1, n7, fc6.shape[0])).astype(np.float32) * 0.1,
                rng.standard_normal((1, 1, 1, n7)).astype(np.float32) * 0.1]
    w["fc8"] = [rng.standard_normal((1, 1, 10, n7)).astype(np.float32),
                np.zeros((1, 1, 1, 10), np.float32)]
    return w


def test_surgery_vgg_to_fcn32s(tmp_path):
    tiny_nets(tmp_path)
    net = Net(tmp_path / "train.prototxt", phase="TRAIN", seed=0)
    vgg = fake_vgg(net)
    with torch.no_grad():  # dirty every parameter: surgery must set them all
        for ps in net.params.values():
            for p in ps:
                p.fill_(7.0)
    rep = surgery(net, init=vgg, seed=0)
    assert rep["interp"] == ["upscore"]
    for name, blobs in vgg.items():
        if name == "fc8":
            continue
        for i, a in enumerate(blobs):
            p = net.params[name][i].detach().numpy()
            # fc -> conv: InnerProduct flattens (C, H, W) in order, so a reshape is exact
            np.testing.assert_array_equal(p, a.reshape(p.shape))
    assert "fc8" in rep["transplant"].unused
    assert {c[0] for c in rep["transplant"].coerced} >= {"fc6", "fc7"}
    for i in range(2):  # score layers: the default constant-0 filler
        assert not net.params["score_fr"][i].detach().any()
    up = net.params["upscore"][0].detach().numpy()
    k = up.shape[-1]
    assert up.shape[:2] == (21, 21) and k == 64
    for c in range(21):
        np.testing.assert_array_equal(up[c, c], bilinear_kernel(k))
    up[np.arange(21), np.arange(21)] = 0
    assert not up.any()
    # FCN-16s from FCN-32s: the new score_pool4 starts at zero, both upsamplings bilinear
    tiny_nets(tmp_path / "16s", "fcn16s")
    net16 = Net(tmp_path / "16s" / "train.prototxt", phase="TRAIN", seed=0)
    w32 = {n: [p.detach().numpy() for p in ps] for n, ps in net.params.items()}
    rep16 = surgery(net16, init=w32, fill=False)
    assert sorted(rep16["interp"]) == ["upscore16", "upscore2"]
    assert "score_pool4" in rep16["transplant"].missing
    assert not net16.params["score_pool4"][0].detach().any()
    np.testing.assert_array_equal(net16.params["score_fr"][0].detach().numpy(), w32["score_fr"][0])
    assert interp_layers(net16, net16.netparam) == ["upscore2", "upscore16"]


# ------------------------------------------------------------- tiny dataset

def make_tiny_voc(root: Path, n_train: int = 5, n_val: int = 2, seed: int = 0) -> Path:
    """A VOC year directory with generated images: coloured rectangles on noise,
    labelled with their class, a 255 border around each (VOC's ignore band)."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    from fcn_repro.data.transforms import save_label_png
    ids = [f"2011_{i:06d}" for i in range(n_train + n_val)]
    for i, ident in enumerate(ids):
        h, w = 30 + 3 * i, 36 + 2 * i
        img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        lab = np.zeros((h, w), np.uint8)
        for _ in range(2):
            c = int(rng.integers(1, 21))
            y0, x0 = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
            y1, x1 = y0 + int(rng.integers(6, 10)), x0 + int(rng.integers(6, 12))
            lab[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = 255
            lab[y0:y1, x0:x1] = c
            img[y0:y1, x0:x1] = (np.array([c * 12, 255 - c * 12, (c * 57) % 256]))
        Image.fromarray(img).save(root / "JPEGImages" / f"{ident}.jpg", quality=95)
        save_label_png(root / "SegmentationClass" / f"{ident}.png", lab)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    voc = make_tiny_voc(d / "VOC")
    solver = tiny_nets(d / "nets")
    net = Net(d / "nets" / "train.prototxt", phase="TRAIN", seed=0)
    vgg = d / "vgg.caffemodel"
    save_weights(vgg, fake_vgg(net))
    # an FCN-32s-shaped starting point (surgery done), for --weights runs
    surgery(net, init=vgg, fill=False)
    rng = np.random.default_rng(1)
    with torch.no_grad():  # non-zero score layers, so every layer gets a gradient
        for p in net.params["score_fr"]:
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.1))
    fcn = d / "fcn32s.caffemodel"
    save_weights(fcn, {n: [p.detach().numpy() for p in ps] for n, ps in net.params.items()})
    return {"dir": d, "voc": voc, "solver": solver, "vgg": vgg, "fcn": fcn}


def test_data_order_shards_like_iter_size(tiny_setup):
    from fcn_repro.data import VOCSegmentation
    ds = VOCSegmentation(tiny_setup["voc"], "train")
    one = DatasetSource(ds, {"data": ("data",)}, seed=5, prefetch=False)
    seq = [one._next_index() for _ in range(12)]
    r0 = DatasetSource(ds, {"data": ("data",)}, seed=5, rank=0, world=2)
    r1 = DatasetSource(ds, {"data": ("data",)}, seed=5, rank=1, world=2, prefetch=False)
    got0, got1 = [], []
    for _ in range(6):
        r0.next()
        got0.append(r0.last_id)
        r1.next()
        got1.append(r1.last_id)
    r0.close()
    assert got0 == [ds.ids[i] for i in seq[0::2]] and got1 == [ds.ids[i] for i in seq[1::2]]
    # FCN's data layer: uniform draws with replacement from Python's random seeded 1337
    import random
    rng = random.Random(1337)
    n = len(ds)
    assert [next(d) for d in [draw_order(n)] for _ in range(20)] == [rng.randint(0, n - 1) for _ in range(20)]
    # seek replays the sequence
    r1.seek(3)
    r1.next()
    assert r1.last_id == ds.ids[seq[7]]


def _run(args):
    rc = main([str(a) for a in args] + ["--device", "cpu", "--no-progress"])
    assert rc == 0


def test_train_cli_end_to_end_snapshot_resume(tiny_setup, tmp_path):
    s = tiny_setup
    common = ["--solver", s["solver"], "--data", s["voc"], "--dataset", "voc", "--split", "train",
              "--val-data", s["voc"], "--val-dataset", "voc", "--val-split", "val"]
    out = tmp_path / "run"
    _run(common + ["--init", s["vgg"], "--iters", 4, "--snapshot-every", 2, "--test-every", 2,
                   "--out", out])
    for it in (2, 4):
        for suffix in (".caffemodel", ".caffemodel.h5", ".solverstate.h5"):
            assert (out / f"train_iter_{it}{suffix}").is_file(), (it, suffix)
    assert not list(out.glob("*.part")) and not list(out.glob(".*.part")) and not list(out.glob(".*.fcnpart"))
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["type"] == "train"]
    tests = [r for r in recs if r["type"] == "test"]
    assert [r["iter"] for r in train] == [0, 1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 and r["images_per_s"] > 0 for r in train)
    assert train[0]["lr"] == pytest.approx(1e-6)
    # smoothed loss: Caffe's mean over the last average_loss (3) iterations
    assert train[3]["smoothed_loss"] == pytest.approx(np.mean([r["loss"] for r in train[1:4]]))
    assert [r["iter"] for r in tests] == [2, 4]
    sc = tests[-1]["scores"]["score"]
    assert 0 <= sc["mean_iu"] <= 1 and sc["images"] == 2
    with Image.open(out / "curve.png") as im:
        assert im.format == "PNG" and im.size[0] > 100
    # The caffemodel and the .h5 snapshot hold the same weights
    a, b = load_weights(out / "train_iter_4.caffemodel"), load_weights(out / "train_iter_4.caffemodel.h5")
    assert all(np.array_equal(x, y) for n in a for x, y in zip(a[n], b[n]))
    # the score layers moved away from their zero init; the upsampling (lr_mult 0) did not move
    assert np.abs(a["score_fr"][0]).max() > 0
    np.testing.assert_array_equal(a["upscore"][0][3, 3], bilinear_kernel(64))

    # Resume from iteration 2: the same iterations 2 and 3, bit for bit
    out2 = tmp_path / "resumed"
    _run(common + ["--resume", out / "train_iter_2.solverstate.h5", "--iters", 2, "--snapshot-every", 2,
                   "--test-every", 0, "--out", out2, "--snapshot-format", "h5"])
    assert not (out2 / "train_iter_4.caffemodel").exists()
    c = load_weights(out2 / "train_iter_4.caffemodel.h5")
    for n in a:
        for x, y in zip(a[n], c[n]):
            np.testing.assert_array_equal(x, y, err_msg=n)
    import h5py
    with h5py.File(out / "train_iter_4.solverstate.h5") as f1, \
            h5py.File(out2 / "train_iter_4.solverstate.h5") as f2:
        assert int(f1["iter"][0]) == int(f2["iter"][0]) == 4
        for k in f1["history"]:
            np.testing.assert_array_equal(f1["history"][k][()], f2["history"][k][()])
    recs2 = [json.loads(line) for line in (out2 / "log.jsonl").read_text().splitlines()]
    losses2 = [r["loss"] for r in recs2 if r["type"] == "train"]
    assert losses2 == [r["loss"] for r in train[2:4]]


def test_train_resume_from_caffes_binary_solverstate(tiny_setup, tmp_path):
    """A state as Caffe writes it (binary .solverstate naming its weights by the
    snapshot prefix's path) resumes like the same state in Caffe's HDF5 layout."""
    import shutil

    import h5py
    from fcn_repro.caffe.caffemodel import SolverStateContents, write_solverstate
    s = tiny_setup
    common = ["--solver", s["solver"], "--data", s["voc"], "--dataset", "voc", "--split", "train",
              "--test-every", 0, "--snapshot-every", 2]
    out = tmp_path / "run"
    _run(common + ["--init", s["vgg"], "--iters", 2, "--out", out, "--snapshot-format", "caffemodel"])
    caffe = tmp_path / "caffe"
    caffe.mkdir()
    shutil.copy(out / "train_iter_2.caffemodel", caffe / "train_iter_2.caffemodel")
    with h5py.File(out / "train_iter_2.solverstate.h5") as f:
        it, cs = int(f["iter"][0]), int(f["current_step"][0])
        hist = [f["history"][str(i)][()] for i in range(len(f["history"]))]
        with h5py.File(caffe / "caffe-layout.solverstate.h5", "w") as g:   # Caffe's keys only
            for k in ("iter", "learned_net", "current_step", "history"):
                f.copy(k, g)
    assert it == 2 and any(np.abs(h).max() > 0 for h in hist)
    write_solverstate(caffe / "train_iter_2.solverstate",
                      SolverStateContents(it, "snapshots/train_iter_2.caffemodel", hist, cs))
    runs = {}
    for name, state in (("binary", "train_iter_2.solverstate"), ("h5", "caffe-layout.solverstate.h5")):
        _run(common + ["--resume", caffe / state, "--iters", 2, "--out", tmp_path / name,
                       "--snapshot-format", "h5"])
        runs[name] = load_weights(tmp_path / name / "train_iter_4.caffemodel.h5")
        recs = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        assert [r["iter"] for r in recs if r["type"] == "train"] == [2, 3]
    for n in runs["h5"]:
        for x, y in zip(runs["h5"][n], runs["binary"][n]):
            np.testing.assert_array_equal(x, y, err_msg=n)


def test_python_data_layer_params(tiny_setup):
    from fcn_repro.caffe.prototxt import parse_prototxt
    p = find_data_layer(parse_prototxt(tiny_setup["dir"] / "nets" / "train.prototxt"), ["data", "label"])
    assert p.layer == "SBDDSegDataLayer" and p.split == "train" and p.seed == 1337
    assert p.blobs == ("data", "label") and p.dataset == "sbd"
    # a param_str that is not a dict literal is an error naming the file, not silently ignored
    bad = parse_prototxt(str(tiny_setup["dir"] / "nets" / "train.prototxt")).copy()
    for lp in bad.getall("layer"):
        if lp.get("type") == "Python":
            lp.sub("python_param").set("param_str", "{'split': ")
    with pytest.raises(ValueError, match="train.prototxt.*neither JSON nor a Python literal"):
        find_data_layer(bad, ["data", "label"], "nets/train.prototxt")


def test_iter_size_averages_accumulated_gradients(tiny_setup, tmp_path):
    """iter_size 2 on images A, B == iter_size 1 on the mean gradient of A and B (Caffe's
    Normalize), checked against a hand-rolled update."""
    s = tiny_setup
    from fcn_repro.data import VOCSegmentation
    ds = VOCSegmentation(s["voc"], "train")
    src = DatasetSource(ds, {"data": ("data",), "label": ("label",)}, seed=3, prefetch=False)
    order = [src._next_index() for _ in range(2)]
    solver = tiny_nets(tmp_path / "nets", dropout_ratio=0)  # deterministic: no Dropout masks
    _run(["--solver", solver, "--data", s["voc"], "--dataset", "voc", "--weights", s["fcn"],
          "--iter-size", 2, "--iters", 1, "--seed", 3, "--save", tmp_path / "a.h5", "--base-lr", 1e-5])
    got = load_weights(tmp_path / "a.h5")
    net = Net(tmp_path / "nets" / "train.prototxt", phase="TRAIN", seed=3)
    net.load_weights(s["fcn"])
    w0 = {n: [p.detach().clone() for p in ps] for n, ps in net.params.items()}
    grads = {}
    for idx in order:
        smp = ds.load(idx)
        net.zero_grad(set_to_none=True)
        net(data=torch.from_numpy(smp.inputs["data"][None]),
            label=torch.from_numpy(smp.labels["label"][None, None].astype(np.float32)))
        net.loss.backward()
        for n, ps in net.params.items():
            for i, p in enumerate(ps):
                g = p.grad.double() if p.grad is not None else torch.zeros_like(p, dtype=torch.float64)
                grads.setdefault((n, i), []).append(g)
    for (n, i), gs in grads.items():
        lr_mult, decay_mult = net.param_specs[n][i]
        diff = (gs[0] + gs[1]) / 2 + 5e-4 * decay_mult * w0[n][i].double()
        expect = w0[n][i].double() - 1e-5 * lr_mult * diff
        upd, ref = got[n][i] - w0[n][i].numpy(), (expect - w0[n][i].double()).numpy()
        if lr_mult == 0:
            assert not upd.any()
        else:
            assert _rel(upd, ref) < 1e-4 or np.abs(upd - ref).max() <= 2 * np.spacing(
                np.float32(np.abs(w0[n][i].numpy()).max())), n


def test_cli_requires_known_inputs(tiny_setup, capsys):
    s = tiny_setup
    rc = main(["--solver", str(s["solver"]), "--data", str(s["dir"] / "nope"), "--dataset", "voc",
               "--no-progress"])
    assert rc == 2 and "nope" in capsys.readouterr().err
    rc = main(["--net", "no-such-net", "--data", str(s["voc"]), "--no-progress"])
    assert rc == 2 and "no-such-net" in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get("FCN_REPRO_TRAIN_SLOW"), reason="set FCN_REPRO_TRAIN_SLOW=1")
def test_tiny_training_learns(tiny_setup, tmp_path):  # pragma: no cover - optional, slow
    s = tiny_setup
    _run(["--solver", s["solver"], "--data", s["voc"], "--dataset", "voc", "--init", s["vgg"],
          "--iters", 60, "--base-lr", 1e-5, "--out", tmp_path / "o"])
    recs = [json.loads(x) for x in (tmp_path / "o" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["type"] == "train"]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_smoke_recipe_on_the_bundled_sample_logs_caffe_lines(tmp_path, capsys):
    """`python -m fcn_repro.train --net sample --iters N --out DIR`: the documented smoke test.
    Not on a terminal, the log holds Caffe's display lines, not progress-bar frames."""
    assert main(["--net", "sample", "--iters", "2", "--out", str(tmp_path / "smoke")]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines.count("Iteration 1, lr = 1e-10") == 1 and "\r" not in cap.out + cap.err
    first = next(ln for ln in lines if ln.startswith("Iteration 0 ("))
    assert first.endswith(f", loss = {json.loads((tmp_path / 'smoke' / 'log.jsonl').read_text().splitlines()[0])['smoothed_loss']:.6g}")
    assert "    Train net output #0: loss = " in cap.out
    assert (tmp_path / "smoke" / "train_iter_2.caffemodel").is_file()
    # display honoured: every 2nd iteration only
    assert main(["--net", "sample", "--iters", "3", "--display", "2", "--out", str(tmp_path / "d2")]) == 0
    out = capsys.readouterr().out
    assert [ln.split(",")[0] for ln in out.splitlines() if ln.endswith("lr = 1e-10")] == ["Iteration 0", "Iteration 2"]


def test_run_setup_library(tmp_path):
    """What the train CLI calls: the solver with overrides, the data source, the input mapping."""
    from fcn_repro import registry
    from fcn_repro.sources import input_map, training_source
    from fcn_repro.trainer import TrainError, solver_with

    solver = caffe_fixture("fcn8s.solver.prototxt")
    caffe_fixture("fcn8s.train.prototxt")
    base = read_solver(solver)
    sp = solver_with(solver, {"max_iter": base.max_iter + 7, "base_lr": None})
    assert sp.max_iter == base.max_iter + 7 and sp.base_lr == base.base_lr   # None: not overridden
    with pytest.raises(TrainError, match="iter_size must be >= 1"):
        solver_with(solver, {"iter_size": 0})
    with pytest.raises(TrainError, match="training net .*none.prototxt.* not found"):
        solver_with(solver, {}, str(tmp_path / "none.prototxt"))
    assert input_map(["data", "label"], None) == {"data": ("data",), "label": ("label",)}
    card = registry.net("nyud-fcn32s-color-hha")
    assert input_map(["color", "hha", "label"], card) == {"color": ("color",), "hha": ("hha",),
                                                          "label": ("label",)}
    net = Net(sp.train_net_path, phase="TRAIN")
    with pytest.raises(TrainError, match="--data DIR"):
        training_source(net, sp.train_net_path)
