"""Small ModelMixin models used by the foundation tests (and their diffusers twin for parity)."""
import torch

from diffblocks.configuration import ConfigMixin, register_to_config
from diffblocks.models.modeling_utils import ModelMixin


class TinyNet(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, dim: int = 8, depth: int = 3, scale_value: float = 1.0):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(dim, dim) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(dim)
        self.register_buffer("steps", torch.arange(dim), persistent=True)
        self.register_buffer("freqs", torch.linspace(0, 1, dim), persistent=False)

    def _init_non_persistent_buffers(self):
        self.freqs = torch.linspace(0, 1, self.config.dim)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.norm(x) * self.config.scale_value + self.freqs


def make_tiny(seed: int = 0, **kw) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kw)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module, dtype=None):
    # diffblocks' CLIP text encoders keep the `text_model.` level that transformers 5's CLIPTextModel drops
    sa, sb = ({k.removeprefix("text_model.") if not hasattr(m, "text_projection") else k: v
               for k, v in m.state_dict().items()} for m in (a, b))
    assert list(sa) == list(sb)
    for k in sa:
        expected = sa[k] if dtype is None or not sa[k].is_floating_point() else sa[k].to(dtype)
        assert sb[k].dtype == expected.dtype, k
        assert torch.equal(sb[k], expected), k
