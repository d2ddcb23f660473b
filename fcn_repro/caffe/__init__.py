"""Caffe formats and the Caffe-semantics net builder."""
from fcn_repro.caffe.prototxt import (  # noqa: F401
    Enum, Message, PrototxtError, format_text, parse_prototxt, parse_text, upgrade_net,
    write_prototxt,
)
from fcn_repro.caffe.weights import (  # noqa: F401,E402
    CaffeModelError, WeightsError, load_weights, save_weights, weights_info,
)
from fcn_repro.caffe.net import (  # noqa: F401,E402
    LayerError, Net, NetError, WeightsReport, transplant,
)
