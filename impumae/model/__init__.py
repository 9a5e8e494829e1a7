"""impuTMAE model: generic adapters (built by the kinds, impumae.kinds), the multimodal MAE and the survival model."""
from impumae.model.adapters import InputAdapter, OutputAdapter, patchify, unpatchify
from impumae.model.mae import (Block, Encoded, MAEConfig, MAEOutput, MultimodalMAE, assemble_decoder_tokens,
                               draw_mask, masked_mse)
from impumae.model.survival import SurvivalConfig, SurvivalModel, apply_freeze

__all__ = ["InputAdapter", "OutputAdapter", "patchify", "unpatchify", "Block", "Encoded", "MAEConfig",
           "MAEOutput", "MultimodalMAE", "assemble_decoder_tokens", "draw_mask", "masked_mse",
           "SurvivalConfig", "SurvivalModel", "apply_freeze"]
