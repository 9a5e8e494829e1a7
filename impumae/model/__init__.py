"""impuTMAE model: the multimodal MAE (its adapters are built by the kinds, impumae.kinds.adapters) and the survival model."""
from impumae.model.mae import (Block, Encoded, MAEConfig, MAEOutput, MultimodalMAE, assemble_decoder_tokens,
                               draw_mask, masked_mse)
from impumae.model.survival import SurvivalConfig, SurvivalModel, apply_freeze

__all__ = ["Block", "Encoded", "MAEConfig",
           "MAEOutput", "MultimodalMAE", "assemble_decoder_tokens", "draw_mask", "masked_mse",
           "SurvivalConfig", "SurvivalModel", "apply_freeze"]
