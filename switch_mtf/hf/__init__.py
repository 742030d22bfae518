"""Hugging Face SwitchTransformers / T5 checkpoints.

- ``conversion``: the tensor map between Hugging Face and switch_mtf names,
  import and export.
- ``files``: reading and writing safetensors / PyTorch files a piece at a time.
- ``peer``: Hugging Face's model in torch beside ours, for parity checks.
"""
