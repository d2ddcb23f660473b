"""Caffe formats and the Caffe-semantics net builder."""
from fcn_repro.caffe.prototxt import (  # noqa: F401
    Enum, Message, PrototxtError, format_text, parse_prototxt, parse_text, upgrade_net,
    write_prototxt,
)
