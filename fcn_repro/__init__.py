"""fcn_repro: the original Fully Convolutional Networks, Caffe-exact, in PyTorch."""
__version__ = "0.1.0"


def load(name: str, **kwargs):
    """A pretrained zoo net with its weights, preprocessing and class names, in one call.

    ``fcn_repro.load("fcn8s", download=True)``; see :func:`fcn_repro.predict.load`.
    """
    from fcn_repro.predict import load as _load   # lazy: ``import fcn_repro`` stays free of torch

    return _load(name, **kwargs)
