"""Image encoders, text encoders and the assembled model."""

from .image import ResNetEncoder, build_image_encoder
from .model import BackboneFactory, FedVLPModel, backbone_state, build_model, model_config_for
from .text import TextEncoder, build_text_encoder

__all__ = [
    "ResNetEncoder",
    "TextEncoder",
    "FedVLPModel",
    "build_image_encoder",
    "build_text_encoder",
    "build_model",
    "model_config_for",
    "BackboneFactory",
    "backbone_state",
]
