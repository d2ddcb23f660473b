"""fcn_repro: the original Fully Convolutional Networks, Caffe-exact, in PyTorch.

The front door::

    import fcn_repro
    fcn_repro.list_nets()                        # every net a name can name ('sample' ships with the package)
    m = fcn_repro.load("fcn8s", download=True)   # a name, a deploy prototxt (+ weights) or a run directory
    report = fcn_repro.evaluate("sample")        # the report: scores per head, per-class IU, the reference
    fast = fcn_repro.optimize(m.net)             # the fast forward of a net (same numbers, less work)
    result = fcn_repro.train("sample", iters=4, out="out/smoke")   # what python -m fcn_repro.train runs

``import fcn_repro`` imports nothing heavy: the error family is here at once;
the net builder (``Net``, torch), the weight and prototxt readers and the
calls above are imported on first use.
"""
from fcn_repro.errors import (CaffeModelError, FcnReproError, HDF5WeightsError, LimitError, OutputError,
                              PrototxtError, WeightsError)

__version__ = "0.1.0"

#: names of fcn_repro.caffe served from here on first use
_CAFFE_NAMES = ("Net", "NetError", "LayerError", "BlobLimitError", "load_weights", "save_weights",
                "weights_info", "parse_prototxt", "write_prototxt")

__all__ = ["__version__", "list_nets", "load", "evaluate", "optimize", "train",
           "FcnReproError", "LimitError", "OutputError", "PrototxtError", "WeightsError",
           "CaffeModelError", "HDF5WeightsError", *_CAFFE_NAMES]


def list_nets() -> list:
    """The names :func:`load`, :func:`evaluate` and :func:`train` take (the registry's nets and the
    bundled ``sample``); ``python -m fcn_repro.zoo`` lists them with their weights and references."""
    from fcn_repro.resolve import list_names   # lazy: ``import fcn_repro`` stays light

    return list_names()


def load(net, weights=None, **kwargs):
    """A net with its weights, preprocessing and class names, in one call.

    ``net``: a name (:func:`list_nets`), a deploy prototxt (give ``weights``)
    or a training run directory. ``fcn_repro.load("fcn8s", download=True)``;
    the options: :func:`fcn_repro.predict.load`.
    """
    from fcn_repro.predict import load as _load   # lazy: ``import fcn_repro`` stays free of torch

    return _load(net, weights, **kwargs)


def evaluate(net="fcn8s", weights=None, **kwargs) -> dict:
    """Evaluate ``net`` (a name, a deploy prototxt or a run directory; ``weights``: a file instead of
    its own) on a dataset and return the report (scores per score blob, per-class IU, the card's
    reference, timing). Options (``data``, ``split``, ``device``, ``limit``, ...):
    :func:`fcn_repro.evaluation.evaluate_set`. With no ``data`` the bundled sample's images are used
    where the net's card has them."""
    from fcn_repro.evaluation import evaluate_set   # lazy: torch

    return evaluate_set(net, weights, **kwargs)


def optimize(net, enabled: bool = True, **options):
    """The fast forward of a :class:`Net` (or of ``load(...).net``), sharing its parameters:
    :func:`fcn_repro.fast.optimize`."""
    from fcn_repro.fast import optimize as _optimize   # lazy: torch

    return _optimize(net, enabled, **options)


def train(net=None, **options) -> dict:
    """Train ``net`` as ``python -m fcn_repro.train`` does (the same options as keywords) and return
    the end-of-run summary: :func:`fcn_repro.training.train`."""
    from fcn_repro.training import train as _train   # lazy: torch

    return _train(net, **options)


#: the front door's calls, kept callable under the names of the tool modules
#: (``import fcn_repro.evaluate`` binds the module to ``fcn_repro.evaluate``:
#: that module forwards a call to the function here, see fcn_repro.cli.front_door)
_CALLS = {"evaluate": evaluate, "train": train}


def __getattr__(name):
    if name in _CAFFE_NAMES:
        from fcn_repro import caffe   # lazy: ``import fcn_repro`` stays free of torch and h5py
        return getattr(caffe, name)
    raise AttributeError(f"module 'fcn_repro' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_CAFFE_NAMES))
