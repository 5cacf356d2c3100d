"""Exact constants: coefficients that are part of the model's definition, not of its weights.

Coupling tensors, index maps and reference energies are computed (in float64) from the model
settings. They are registered as non-persistent buffers, so checkpoints do not carry them, and
:class:`ConstantsModule` rebuilds them from their float64 masters whenever the module moves to
another dtype or device: a model trained in float32 and evaluated in float64 then uses float64
coefficients, and stays equivariant to float64 precision.
"""

from __future__ import annotations

import torch
from torch import nn

Tensor = torch.Tensor


class ConstantsModule(nn.Module):
    """``nn.Module`` with :meth:`register_constant` for exact, non-persistent constants."""

    def __init__(self) -> None:
        super().__init__()
        self._constant_masters: dict[str, Tensor] = {}

    def register_constant(self, name: str, value: Tensor) -> None:
        """Register ``value`` (floating values in float64, or integers) as constant ``name``.

        The buffer starts in torch's default dtype (floating values) on the CPU.
        """
        master = value.detach().to("cpu", torch.float64 if value.is_floating_point() else value.dtype, copy=True)
        self._constant_masters[name] = master
        initial = master.to(torch.get_default_dtype()) if master.is_floating_point() else master
        self.register_buffer(name, initial.clone(), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        """After any ``.to()``/``.double()``/``.cuda()``: rebuild constants in their new dtype/device."""
        super()._apply(fn, recurse)
        for name, master in self._constant_masters.items():
            moved = self._buffers[name]
            self._buffers[name] = master.to(device=moved.device, dtype=moved.dtype, copy=True)
        return self
