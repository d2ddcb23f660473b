"""Caffe's SGD solver: update rule, lr policies, solver files, solver state."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from conftest import caffe_fixture
from fcn_repro.solver import (
    CaffeSGD, SmoothedLoss, SolverError, SolverParameter, learning_rate, read_solver,
)


def _sp(**kw):
    return SolverParameter(**kw)


# ------------------------------------------------------------------ lr policies

def test_lr_policies_closed_forms():
    b, g, p = 0.01, 0.5, 0.75
    rates = lambda sp, n: [learning_rate(sp, i)[0] for i in range(n)]  # noqa: E731
    assert rates(_sp(base_lr=b), 3) == pytest.approx([b] * 3, rel=1e-7)
    assert rates(_sp(base_lr=b, lr_policy="step", gamma=g, stepsize=3), 7) == pytest.approx(
        [b, b, b, b * g, b * g, b * g, b * g * g], rel=1e-6)
    assert rates(_sp(base_lr=b, lr_policy="exp", gamma=0.9), 4) == pytest.approx(
        [b * 0.9 ** i for i in range(4)], rel=1e-6)
    assert rates(_sp(base_lr=b, lr_policy="inv", gamma=1e-4, power=p), 3) == pytest.approx(
        [b * (1 + 1e-4 * i) ** -p for i in range(3)], rel=1e-6)
    assert rates(_sp(base_lr=b, lr_policy="poly", power=0.9, max_iter=10), 11) == pytest.approx(
        [b * (1 - i / 10) ** 0.9 for i in range(11)], rel=1e-6, abs=1e-12)
    assert rates(_sp(base_lr=b, lr_policy="sigmoid", gamma=-0.5, stepsize=4), 9) == pytest.approx(
        [b / (1 + math.exp(0.5 * (i - 4))) for i in range(9)], rel=1e-6)


def test_multistep_is_stateful_like_caffe():
    sp = _sp(base_lr=1.0, lr_policy="multistep", gamma=0.1, stepvalue=[3, 5])
    cs, out = 0, []
    for i in range(8):
        r, cs = learning_rate(sp, i, cs)
        out.append(r)
    assert out == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.01, 0.01], rel=1e-6)
    assert cs == 2


# ------------------------------------------------------------ the update rule

def _reference(params, grads_per_iter, mults, sp, iters):
    """Caffe's SGD in float64 numpy, written out from FACTS.md (independent of CaffeSGD)."""
    data = [p.astype(np.float64) for p in params]
    hist = [np.zeros_like(d) for d in data]
    cs = 0
    for it in range(iters):
        if sp.lr_policy == "step":
            rate = sp.base_lr * sp.gamma ** (it // sp.stepsize)
        else:
            rate = sp.base_lr
        for k, (lr_mult, decay_mult) in enumerate(mults):
            diff = sum(g[k].astype(np.float64) for g in grads_per_iter[it]) / sp.iter_size
            if sp.regularization_type == "L1":
                diff = diff + sp.weight_decay * decay_mult * np.sign(data[k])
            else:
                diff = diff + sp.weight_decay * decay_mult * data[k]
            hist[k] = sp.momentum * hist[k] + rate * lr_mult * diff
            data[k] = data[k] - hist[k]
    del cs
    return data, hist


def _run(opt_params, groups_mults, grads_per_iter, sp, iters):
    groups = [{"params": [p], "lr_mult": m[0], "decay_mult": m[1], "name": f"l/{i}"}
              for i, (p, m) in enumerate(zip(opt_params, groups_mults))]
    opt = CaffeSGD(groups, sp)
    for it in range(iters):
        opt.zero_grad(set_to_none=True)
        for g in grads_per_iter[it]:  # iter_size accumulated backward passes
            for p, gk in zip(opt_params, g):
                gt = torch.from_numpy(gk)
                p.grad = gt.clone() if p.grad is None else p.grad + gt
        opt.step()
    return opt


def _problem(seed=0, iters=5, iter_size=1):
    rng = np.random.default_rng(seed)
    shapes = [(4, 3, 3, 3), (4,), (5, 4, 1, 1), (5,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[[rng.standard_normal(s).astype(np.float32) * 10 for s in shapes]
              for _ in range(iter_size)] for _ in range(iters)]
    mults = [(1.0, 1.0), (2.0, 0.0), (0.5, 3.0), (0.0, 1.0)]
    return params, grads, mults


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_update_matches_caffe_formula(reg):
    params, grads, mults = _problem(iters=6, iter_size=3)
    sp = _sp(base_lr=0.01, lr_policy="step", gamma=0.3, stepsize=2, momentum=0.9,
             weight_decay=5e-3, iter_size=3, regularization_type=reg)
    tp = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    opt = _run(tp, mults, grads, sp, 6)
    ref, hist = _reference(params, grads, mults, sp, 6)
    assert opt.iter == 6
    for k in range(len(params)):
        upd_ours = tp[k].detach().numpy().astype(np.float64) - params[k]
        upd_ref = ref[k] - params[k]
        if mults[k][0] == 0:
            assert not upd_ours.any() and not upd_ref.any()  # lr_mult 0 never moves
            continue
        assert _rel(upd_ours, upd_ref) < 1e-5, k
        assert _rel(opt.state[tp[k]]["history"].numpy(), hist[k]) < 1e-5


def test_differs_from_torch_sgd_when_rate_changes():
    params, grads, _ = _problem(iters=4)
    mults = [(1.0, 1.0)] * 4
    sgd_like = dict(base_lr=0.1, momentum=0.9, weight_decay=1e-3)

    def torch_sgd(schedule):
        tp = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
        opt = torch.optim.SGD(tp, lr=0.1, momentum=0.9, weight_decay=1e-3)
        for it in range(4):
            for g in opt.param_groups:
                g["lr"] = schedule(it)
            for p, gk in zip(tp, grads[it][0]):
                p.grad = torch.from_numpy(gk)
            opt.step()
        return [p.detach().numpy() for p in tp]

    # Fixed rate: torch's lr * (m * buf + g) equals Caffe's history update.
    tp = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    _run(tp, mults, grads, _sp(**sgd_like), 4)
    for a, b in zip(tp, torch_sgd(lambda it: 0.1)):
        assert _rel(a.detach().numpy() - 0, b) < 1e-5
    # Step-changing rate: Caffe's history carries the old rate, torch's does not.
    tp = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    _run(tp, mults, grads, _sp(lr_policy="step", gamma=0.1, stepsize=2, **sgd_like), 4)
    theirs = torch_sgd(lambda it: 0.1 * 0.1 ** (it // 2))
    worst = max(_rel(a.detach().numpy() - p, b - p) for a, b, p in zip(tp, theirs, params))
    assert worst > 1e-2


def test_none_grad_is_zero_diff_and_decay_still_applies():
    p = torch.nn.Parameter(torch.ones(3))
    opt = CaffeSGD([{"params": [p], "lr_mult": 1.0, "decay_mult": 1.0}], _sp(base_lr=0.5, weight_decay=0.1))
    opt.step()
    np.testing.assert_allclose(p.detach().numpy(), 1 - 0.5 * 0.1, rtol=1e-6)


def test_clip_gradients_global_norm():
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(1))
    frozen = torch.nn.Parameter(torch.zeros(1))
    opt = CaffeSGD([{"params": [a], "lr_mult": 1.0, "decay_mult": 1.0},
                    {"params": [b], "lr_mult": 1.0, "decay_mult": 1.0},
                    {"params": [frozen], "lr_mult": 0.0, "decay_mult": 1.0}],
                   _sp(base_lr=1.0, clip_gradients=1.0))
    a.grad = torch.tensor([3.0, 0.0])
    b.grad = torch.tensor([4.0])
    frozen.grad = torch.tensor([100.0])  # lr_mult 0: Caffe has no diff here, so it is not in the norm
    opt.step()
    np.testing.assert_allclose(a.detach().numpy(), [-0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(b.detach().numpy(), [-0.8], rtol=1e-6)
    assert frozen.item() == 0


# -------------------------------------------------------------- solver state

@pytest.mark.parametrize("suffix", [".solverstate.h5", ".npz", ".solverstate"])
def test_state_roundtrip_gives_the_same_next_step(tmp_path, suffix):
    params, grads, mults = _problem(iters=5)
    sp = _sp(base_lr=0.01, lr_policy="multistep", gamma=0.5, stepvalue=[1, 3], momentum=0.9,
             weight_decay=5e-4)
    tp = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    opt = _run(tp, mults, grads[:3], sp, 3)
    path = tmp_path / f"s{suffix}"
    opt.save_state(path, learned_net="x.caffemodel", extra={"losses": np.array([1.0, 2.0])})
    saved = [p.detach().clone() for p in tp]
    # continue
    for p, g in zip(tp, grads[3][0]):
        p.grad = torch.from_numpy(g)
    opt.step()
    # resume from the file into fresh parameters holding the saved weights
    tp2 = [torch.nn.Parameter(s.clone()) for s in saved]
    groups = [{"params": [p], "lr_mult": m[0], "decay_mult": m[1], "name": f"l/{i}"}
              for i, (p, m) in enumerate(zip(tp2, mults))]
    opt2 = CaffeSGD(groups, sp)
    info = opt2.load_state(path)
    assert info["learned_net"] == "x.caffemodel"
    if suffix == ".solverstate":        # Caffe's binary message has no place for extras
        assert info["extra"] == {}
    else:
        np.testing.assert_array_equal(info["extra"]["losses"], [1.0, 2.0])
    assert opt2.iter == 3 and opt2.current_step == 1  # passed stepvalue 1, not yet 3
    for p, g in zip(tp2, grads[3][0]):
        p.grad = torch.from_numpy(g)
    opt2.step()
    for a, b in zip(tp, tp2):
        assert torch.equal(a, b)


def test_h5_state_has_caffe_layout(tmp_path):
    p = torch.nn.Parameter(torch.ones(2, 3))
    opt = CaffeSGD([p], _sp(base_lr=0.1))
    p.grad = torch.ones(2, 3)
    opt.step()
    opt.save_state(tmp_path / "a.solverstate.h5", learned_net="a.caffemodel.h5")
    with h5py.File(tmp_path / "a.solverstate.h5", "r") as f:
        assert f["iter"].shape == (1,) and int(f["iter"][0]) == 1
        assert int(f["current_step"][0]) == 0
        assert f["learned_net"][()] == b"a.caffemodel.h5"
        np.testing.assert_allclose(f["history/0"][()], np.full((2, 3), 0.1, np.float32))


def test_state_mismatch_errors(tmp_path):
    a = torch.nn.Parameter(torch.ones(2))
    opt = CaffeSGD([{"params": [a], "lr_mult": 1.0, "decay_mult": 1.0, "name": "conv/0"}], _sp())
    opt.save_state(tmp_path / "s.h5")
    b = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(SolverError, match="shape"):
        CaffeSGD([{"params": [b], "lr_mult": 1.0, "decay_mult": 1.0, "name": "conv/0"}], _sp()).load_state(
            tmp_path / "s.h5")
    c = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(SolverError, match="not the same net"):
        CaffeSGD([{"params": [c], "lr_mult": 1.0, "decay_mult": 1.0, "name": "fc/0"}], _sp()).load_state(
            tmp_path / "s.h5")
    with pytest.raises(SolverError, match="history blobs"):
        CaffeSGD([c, b], _sp()).load_state(tmp_path / "s.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(SolverError, match="junk.h5"):
        CaffeSGD([c], _sp()).load_state(tmp_path / "junk.h5")
    (tmp_path / "junk.solverstate").write_bytes(b"\xff\xff\xff")
    with pytest.raises(SolverError, match=r"junk\.solverstate: byte 0: not a binary Caffe solver state"):
        CaffeSGD([c], _sp()).load_state(tmp_path / "junk.solverstate")
    with pytest.raises(SolverError, match="cannot read"):
        CaffeSGD([c], _sp()).load_state(tmp_path / "missing.solverstate")
    # binary: no parameter names, but the count and shapes are still checked
    opt.save_state(tmp_path / "s.solverstate")
    with pytest.raises(SolverError, match="shape"):
        CaffeSGD([b], _sp()).load_state(tmp_path / "s.solverstate")
    # an HDF5 (or npz) state under a binary-looking name is recognised by its signature
    (tmp_path / "renamed.solverstate").write_bytes((tmp_path / "s.h5").read_bytes())
    CaffeSGD([{"params": [c], "lr_mult": 1.0, "decay_mult": 1.0, "name": "conv/0"}], _sp()).load_state(
        tmp_path / "renamed.solverstate")


# -------------------------------------------------------------- solver files

def test_read_fixture_solver():
    path = caffe_fixture("fcn8s.solver.prototxt")
    sp = read_solver(path)
    assert sp.base_lr == pytest.approx(1e-7) and sp.momentum == pytest.approx(0.9)
    assert sp.weight_decay == pytest.approx(5e-4) and sp.lr_policy == "fixed"
    assert sp.iter_size == 1 and sp.max_iter == 10 and sp.snapshot == 0
    assert sp.train_net_path == str((path.parent / "fcn8s.train.prototxt").resolve())


def test_read_solver_fields_and_errors(tmp_path):
    text = """
net: "nets/train.prototxt"
test_net: "nets/val.prototxt"
test_iter: 736
test_interval: 4000
test_initialization: false
display: 20
average_loss: 20
lr_policy: "multistep"
stepvalue: 10 stepvalue: 20
gamma: 0.1
power: 0.9
stepsize: 5
base_lr: 1e-10
momentum: 0.99
iter_size: 20
max_iter: 100000
weight_decay: 0.0005
regularization_type: "L1"
clip_gradients: 10
snapshot: 4000
snapshot_prefix: "snapshot/train"
"""
    (tmp_path / "solver.prototxt").write_text(text)
    sp = read_solver(tmp_path / "solver.prototxt")
    assert sp.train_net_path == str(tmp_path / "nets" / "train.prototxt")
    assert sp.test_net == [str(tmp_path / "nets" / "val.prototxt")]
    assert (sp.test_iter, sp.test_interval, sp.test_initialization) == ([736], 4000, False)
    assert (sp.display, sp.average_loss, sp.iter_size, sp.max_iter) == (20, 20, 20, 100000)
    assert sp.stepvalue == [10, 20] and sp.gamma == pytest.approx(0.1) and sp.power == pytest.approx(0.9)
    assert sp.base_lr == pytest.approx(1e-10) and sp.momentum == pytest.approx(0.99)
    assert sp.regularization_type == "L1" and sp.clip_gradients == 10 and sp.stepsize == 5
    assert sp.snapshot == 4000 and sp.snapshot_prefix == "snapshot/train"
    (tmp_path / "bad.prototxt").write_text('lr_policy: "cosine"\n')
    with pytest.raises(SolverError, match="bad.prototxt.*cosine"):
        read_solver(tmp_path / "bad.prototxt")
    (tmp_path / "adam.prototxt").write_text('type: "Adam"\n')
    with pytest.raises(SolverError, match="Adam"):
        read_solver(tmp_path / "adam.prototxt")


def test_smoothed_loss_window():
    s = SmoothedLoss(3)
    assert [s.update(x) for x in (1, 2, 3, 4)] == pytest.approx([1, 1.5, 2, 3])
