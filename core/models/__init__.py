"""Image encoders, text encoders, the model families and their registry.

:func:`build_model` builds a run's model through the family registry (:mod:`.registry`);
every family's model is a :class:`VLPModel`.
"""

from .backbone import BackboneFactory, backbone_state
from .family import Family
from .image import ResNetEncoder, build_image_encoder
from .model import FedVLPModel, model_config_for
from .protocol import VLPModel
from .registry import build_model, check_run, create_model, family_of, get_family, list_families, register_family
from .text import TextEncoder, build_text_encoder

__all__ = [
    "ResNetEncoder",
    "TextEncoder",
    "FedVLPModel",
    "VLPModel",
    "Family",
    "build_image_encoder",
    "build_text_encoder",
    "build_model",
    "create_model",
    "check_run",
    "family_of",
    "get_family",
    "list_families",
    "register_family",
    "model_config_for",
    "BackboneFactory",
    "backbone_state",
]
