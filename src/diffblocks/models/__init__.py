"""Model classes (lazy)."""
from .._lazy import lazy_exports

_EXPORTS = {
    "ModelMixin": ".modeling_utils",
    "AutoModel": ".auto_model",
    "UNet2DConditionModel": ".unet_2d_condition",
    "UNet2DConditionOutput": ".unet_2d_condition",
    "AutoencoderKL": ".autoencoder_kl",
    "AutoencoderKLOutput": ".autoencoder_kl",
    "DecoderOutput": ".autoencoder_kl",
    "DiagonalGaussianDistribution": ".autoencoder_kl",
    "ControlNetModel": ".controlnet",
    "ControlNetOutput": ".controlnet",
    "MultiControlNetModel": ".controlnet",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
